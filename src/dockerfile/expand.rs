//! Shell-word processing as BuildKit's `shell.Lex` does it: variable expansion, quote removal,
//! escapes with the Dockerfile's escape character, and field splitting.
//!
//! # Which instructions expand
//! BuildKit expands variables (from ENV and declared ARGs) in the arguments of `ADD`, `COPY`,
//! `ENV`, `EXPOSE`, `FROM` (global ARGs only), `LABEL`, `STOPSIGNAL`, `USER`, `VOLUME`,
//! `WORKDIR` and in `ARG` default values, plus the `--chown`, `--chmod` and `--checksum` flags
//! of COPY/ADD and the fields of `RUN --mount`. It does **not** expand `ONBUILD` (the trigger is
//! stored as written and expanded when it runs), `RUN`, `CMD`, `ENTRYPOINT`, `SHELL`,
//! `HEALTHCHECK` or `MAINTAINER`: shell forms are handed to the shell, which expands them itself,
//! and exec (JSON) forms are never expanded. `COPY --from` is not expanded at all (a `$` there
//! is an error). Heredoc bodies of COPY/ADD are expanded with [`expand_heredoc`] (quotes kept)
//! unless the delimiter was quoted; RUN heredoc bodies go to the shell untouched.
//!
//! Single-result instructions (ENV and LABEL values, WORKDIR, USER, STOPSIGNAL, ARG defaults,
//! each COPY/ADD source and the destination) use [`process_word`]; `EXPOSE`, `VOLUME` (plain
//! form) and `FROM`-style word lists use [`process_words`], which splits the *expanded* text
//! into fields (unquoted whitespace from a variable's value splits; quoted text never does).
//!
//! # Substitutions
//! `$a`, `${a}`, `${a:-w}` (`w` if unset or empty), `${a-w}` (`w` if unset), `${a:+w}`
//! (`w` if set and non-empty), `${a+w}` (`w` if set), `${a:?msg}` / `${a?msg}` (error when
//! unset/empty resp. unset), `${a#p}` `${a##p}` (remove shortest/longest prefix matching the
//! shell pattern `p`), `${a%p}` `${a%%p}` (suffix), `${a/p/r}` `${a//p/r}` (replace first/all).
//! Patterns know `*`, `?` and `\`-escapes (no bracket expressions). `${}`, `${:x}` and `${{`
//! are "bad substitution" errors. `$1`, `$@`, `$$` etc. name variables that are never set and
//! expand to nothing. A `$` not followed by a name stays a `$`. Inside single quotes nothing is
//! special; inside double quotes `$` expands and the escape character escapes only `"`, `$` and
//! itself. Outside quotes the escape character makes the next character literal.

use anyhow::{Result, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where variable values come from.
pub trait VarLookup {
    fn get(&self, name: &str) -> Option<String>;
}

impl VarLookup for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl VarLookup for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

/// `KEY=VALUE` lists (image config `Env`); the last entry for a key wins.
impl VarLookup for [String] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter().rev().find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v.to_string()),
            None if kv == name => Some(String::new()),
            _ => None,
        })
    }
}

impl VarLookup for Vec<String> {
    fn get(&self, name: &str) -> Option<String> {
        VarLookup::get(self.as_slice(), name)
    }
}

/// `(key, value)` pairs; the last entry for a key wins.
impl VarLookup for [(String, String)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

impl VarLookup for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<String> {
        VarLookup::get(self.as_slice(), name)
    }
}

impl<F: Fn(&str) -> Option<String>> VarLookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// A lookup that never finds anything.
pub struct NoVars;

impl VarLookup for NoVars {
    fn get(&self, _name: &str) -> Option<String> {
        None
    }
}

/// The result of processing one word.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WordResult {
    /// Expanded, quotes removed, one string.
    pub result: String,
    /// Expanded and split into fields.
    pub words: Vec<String>,
    /// Variables that were looked up and found.
    pub matched: BTreeSet<String>,
    /// Variables that were looked up and not found.
    pub unmatched: BTreeSet<String>,
}

/// The lexer, with BuildKit's knobs.
#[derive(Clone, Debug)]
pub struct Lex {
    pub escape: char,
    /// Keep quote characters in the output (they still group).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Quotes are ordinary characters (heredoc bodies).
    pub skip_process_quotes: bool,
    /// Unset variables stay as written (`$x`, `${x:-y}`).
    pub skip_unset_env: bool,
    /// Never fail on `${x?}` (used to collect referenced names).
    collect_only: bool,
}

const MAX_DEPTH: usize = 200;

impl Lex {
    pub fn new(escape: char) -> Lex {
        Lex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
            collect_only: false,
        }
    }

    /// Process `word` against `env`.
    pub fn process(&self, word: &str, env: &dyn VarLookup) -> Result<WordResult> {
        let chars: Vec<char> = word.chars().collect();
        let mut sw = ShellWord {
            lex: self,
            chars: &chars,
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            depth: 0,
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            Ok((result, words)) => Ok(WordResult {
                result,
                words,
                matched: sw.matched,
                unmatched: sw.unmatched,
            }),
            Err(e) => Err(anyhow!("failed to process {:?}: {}", word, e)),
        }
    }
}

/// Expand variables and remove quotes; one result (ENV/LABEL values, WORKDIR, USER, COPY paths…).
pub fn process_word(word: &str, env: &dyn VarLookup, escape: char) -> Result<String> {
    Ok(Lex::new(escape).process(word, env)?.result)
}

/// Expand variables, remove quotes and split into fields (EXPOSE, VOLUME, FROM…).
pub fn process_words(word: &str, env: &dyn VarLookup, escape: char) -> Result<Vec<String>> {
    Ok(Lex::new(escape).process(word, env)?.words)
}

/// [`process_word`] that also reports which variables were used (for cache keys).
pub fn process_word_with_matches(word: &str, env: &dyn VarLookup, escape: char) -> Result<WordResult> {
    Lex::new(escape).process(word, env)
}

/// Expand a COPY/ADD heredoc body whose delimiter was not quoted: `$` substitutions and
/// backslash escapes are processed, quotes are kept as written (BuildKit's raw expansion).
/// BuildKit always uses `\` here, whatever `# escape=` says, so `_escape` is ignored.
pub fn expand_heredoc(content: &str, env: &dyn VarLookup, _escape: char) -> Result<String> {
    let mut lex = Lex::new('\\');
    lex.skip_process_quotes = true;
    Ok(lex.process(content, env)?.result)
}

/// The names of the variables a word references (with the default escape `\`), in order of
/// first appearance, including those inside `${a:-$b}` defaults.
pub fn referenced_vars(word: &str) -> Vec<String> {
    referenced_vars_with_escape(word, '\\')
}

/// [`referenced_vars`] with an explicit escape character.
pub fn referenced_vars_with_escape(word: &str, escape: char) -> Vec<String> {
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let rec = |name: &str| -> Option<String> {
        let mut s = seen.borrow_mut();
        if !s.iter().any(|n| n == name) {
            s.push(name.to_string());
        }
        None
    };
    let mut lex = Lex::new(escape);
    lex.collect_only = true;
    let _ = lex.process(word, &rec);
    seen.into_inner()
}

struct ShellWord<'a> {
    lex: &'a Lex,
    chars: &'a [char],
    pos: usize,
    env: &'a dyn VarLookup,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    depth: usize,
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        for c in s.chars() {
            self.add_char(c);
        }
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v)
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    fn process_stop_on(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<(String, Vec<String>)> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            bail!("substitutions nested more than {MAX_DEPTH} levels deep");
        }
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        r
    }

    fn process_stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            let special = ch == '$' || (!self.lex.skip_process_quotes && (ch == '\'' || ch == '"'));
            if special {
                let tmp = match ch {
                    '$' => self.process_dollar()?,
                    '\'' => self.process_single_quote()?,
                    _ => self.process_double_quote()?,
                };
                result.push_str(&tmp);
                if ch == '$' {
                    words.add_string(&tmp);
                } else {
                    words.add_raw_string(&tmp);
                }
            } else {
                let mut ch = self.next().unwrap_or_default();
                if ch == self.lex.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    match self.next() {
                        None => break,
                        Some(c) => ch = c,
                    }
                    words.add_raw_char(ch);
                } else {
                    words.add_char(ch);
                }
                result.push(ch);
            }
        }
        if let Some(stop) = stop {
            bail!("unexpected end of statement while looking for matching {stop}");
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String> {
        let mut result = String::new();
        let open = self.next().unwrap_or('\'');
        if self.lex.raw_quotes {
            result.push(open);
        }
        loop {
            match self.next() {
                None => bail!("unexpected end of statement while looking for matching single-quote"),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String> {
        let mut result = String::new();
        let open = self.next().unwrap_or('"');
        if self.lex.raw_quotes {
            result.push(open);
        }
        loop {
            match self.peek() {
                None => bail!("unexpected end of statement while looking for matching double-quote"),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                ch = c;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(c) = self.peek() {
                    if !c.is_ascii_digit() {
                        break;
                    }
                    name.push(c);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !(ch.is_alphanumeric() || ch == '_') {
                break;
            }
            name.push(ch);
            self.next();
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String> {
        self.next(); // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next(); // '{'
        match self.peek() {
            None => bail!("syntax error: missing '}}'"),
            Some('{') | Some('}') | Some(':') => bail!("syntax error: bad substitution"),
            _ => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            bail!("syntax error: missing '}}'");
        };
        let mut chs = ch.to_string();
        let mut null_is_unset = false;
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                if ch == ':' {
                    null_is_unset = true;
                    match self.next() {
                        Some(c) => {
                            ch = c;
                            chs.push(c);
                        }
                        None => bail!("syntax error: missing '}}'"),
                    }
                }
                let raw = ch == '#' || ch == '%';
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            bail!("syntax error: missing '}}'");
                        }
                        return Err(e);
                    }
                };
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let set = value.is_some();
                let value = value.unwrap_or_default();
                match ch {
                    '-' => Ok(if !set || (null_is_unset && value.is_empty()) {
                        word
                    } else {
                        value
                    }),
                    '+' => Ok(if !set || (null_is_unset && value.is_empty()) {
                        String::new()
                    } else {
                        word
                    }),
                    '?' => {
                        if self.lex.collect_only {
                            return Ok(value);
                        }
                        if !set {
                            let msg = if word.is_empty() {
                                "is not allowed to be unset".to_string()
                            } else {
                                word
                            };
                            bail!("{name}: {msg}");
                        }
                        if null_is_unset && value.is_empty() {
                            let msg = if word.is_empty() {
                                "is not allowed to be empty".to_string()
                            } else {
                                word
                            };
                            bail!("{name}: {msg}");
                        }
                        Ok(value)
                    }
                    '%' | '#' => {
                        let (greedy, pat) = match word.strip_prefix(ch) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let toks = compile_shell_pattern(&pat)
                            .map_err(|e| anyhow!("invalid pattern ({pat}) in substitution: {e}"))?;
                        if ch == '%' {
                            Ok(trim_suffix(&toks, &value, greedy))
                        } else {
                            Ok(trim_prefix(&toks, &value, greedy))
                        }
                    }
                    _ => bail!("unsupported modifier ({chs}) in substitution"),
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            bail!("syntax error: missing '/' in ${{}}");
                        }
                        return Err(e);
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            bail!("syntax error: missing '}}'");
                        }
                        return Err(e);
                    }
                };
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let toks = compile_shell_pattern(&pattern)
                    .map_err(|e| anyhow!("invalid pattern ({pattern}) in substitution: {e}"))?;
                Ok(replace_pattern(
                    &toks,
                    &value.unwrap_or_default(),
                    &replacement,
                    replace_all,
                ))
            }
            _ => bail!("unsupported modifier ({chs}) in substitution"),
        }
    }
}

/// A token of a `${a#pattern}` shell pattern.
#[derive(Clone, Debug, PartialEq)]
enum PTok {
    Lit(char),
    Any,
    Star,
}

fn compile_shell_pattern(p: &str) -> Result<Vec<PTok>> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => out.push(PTok::Star),
            '?' => out.push(PTok::Any),
            '\\' => {
                // `\}` and `\/` only escape the ${} syntax; the backslash is not part of the pattern
                if matches!(chars.get(i), Some('}') | Some('/')) {
                    continue;
                }
                match chars.get(i) {
                    Some(&n) if n == '*' || n == '?' || n == '\\' => {
                        out.push(PTok::Lit(n));
                        i += 1;
                    }
                    Some(&n) => bail!("invalid escape '\\{n}'"),
                    None => bail!("invalid escape at end of pattern"),
                }
            }
            c => out.push(PTok::Lit(c)),
        }
    }
    Ok(out)
}

/// Does the whole of `s` match `toks`? (NFA simulation, linear in |s|·|toks|.)
fn shell_match(toks: &[PTok], s: &[char]) -> bool {
    let n = toks.len();
    let mut cur = vec![false; n + 1];
    cur[0] = true;
    closure(toks, &mut cur);
    for &c in s {
        let mut nxt = vec![false; n + 1];
        for i in 0..n {
            if !cur[i] {
                continue;
            }
            match toks[i] {
                PTok::Lit(l) if l == c => nxt[i + 1] = true,
                PTok::Any => nxt[i + 1] = true,
                PTok::Star => nxt[i] = true,
                _ => {}
            }
        }
        closure(toks, &mut nxt);
        if !nxt.iter().any(|&b| b) {
            return false;
        }
        cur = nxt;
    }
    cur[n]
}

fn closure(toks: &[PTok], set: &mut [bool]) {
    for i in 0..toks.len() {
        if set[i] && toks[i] == PTok::Star {
            set[i + 1] = true;
        }
    }
}

fn trim_prefix(toks: &[PTok], value: &str, greedy: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut lens: Box<dyn Iterator<Item = usize>> = if greedy {
        Box::new((0..=chars.len()).rev())
    } else {
        Box::new(0..=chars.len())
    };
    match lens.find(|&l| shell_match(toks, &chars[..l])) {
        Some(l) => chars[l..].iter().collect(),
        None => value.to_string(),
    }
}

fn trim_suffix(toks: &[PTok], value: &str, greedy: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    // start index of the suffix: shortest suffix = largest start
    let mut starts: Box<dyn Iterator<Item = usize>> = if greedy {
        Box::new(0..=chars.len())
    } else {
        Box::new((0..=chars.len()).rev())
    };
    match starts.find(|&s| shell_match(toks, &chars[s..])) {
        Some(s) => chars[..s].iter().collect(),
        None => value.to_string(),
    }
}

/// Longest match of `toks` starting at `start`, as an end index.
fn longest_match_at(toks: &[PTok], chars: &[char], start: usize) -> Option<usize> {
    (start..=chars.len())
        .rev()
        .find(|&e| shell_match(toks, &chars[start..e]))
}

fn replace_pattern(toks: &[PTok], value: &str, replacement: &str, all: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut pos = 0;
    let mut prev_end: Option<usize> = None;
    while pos <= chars.len() {
        let mut found = None;
        for s in pos..=chars.len() {
            if let Some(e) = longest_match_at(toks, &chars, s) {
                if e == s && prev_end == Some(s) {
                    continue;
                }
                found = Some((s, e));
                break;
            }
        }
        let Some((s, e)) = found else { break };
        out.extend(&chars[pos..s]);
        out.push_str(replacement);
        prev_end = Some(e);
        if e == s {
            if s < chars.len() {
                out.push(chars[s]);
            }
            pos = s + 1;
        } else {
            pos = e;
        }
        if !all {
            break;
        }
    }
    if pos <= chars.len() {
        out.extend(&chars[pos..]);
    }
    out
}

#[cfg(test)]
#[path = "expand_tests.rs"]
mod tests;
