//! The scanner (BuildKit's `parser` package, below the instruction layer): parser directives at
//! the top of the file, physical lines joined into logical lines (escape-aware continuations,
//! comment and empty lines inside an instruction), and heredoc bodies after the line that
//! announces them. It knows nothing of keywords and flags; positions in a joined line map back
//! to physical (line, column) through [`Logical::locate`].

use super::expand::{Lex, NoVars};
use super::{Directives, Heredoc, Loc};
use anyhow::Result;

/// One logical line: an instruction's text with its continuation lines joined.
pub(super) struct Logical {
    /// The joined text (continuation escapes removed).
    pub text: String,
    /// Where the instruction starts (its first non-blank character).
    pub loc: Loc,
    /// The last physical line it occupies.
    pub end_line: usize,
    /// (offset in `text`, line number, column of that offset), one per physical line.
    segs: Vec<(usize, usize, usize)>,
}

impl Logical {
    /// The physical position of byte offset `off` of [`Logical::text`].
    pub fn locate(&self, off: usize) -> Loc {
        let mut best = self.segs[0];
        for s in &self.segs {
            if s.0 <= off {
                best = *s;
            } else {
                break;
            }
        }
        let (o, line, col) = best;
        let end = off.min(self.text.len());
        let chars = self.text.get(o..end).map(|s| s.chars().count()).unwrap_or(0);
        Loc {
            file: self.loc.file.clone(),
            line,
            col: col + chars,
        }
    }
}

/// Reads a Dockerfile's physical lines into logical lines and heredoc bodies.
pub(super) struct Scanner<'a> {
    lines: Vec<&'a str>,
    /// Index of the next physical line to read (= lines consumed so far).
    next: usize,
    file: &'a str,
    directives: Directives,
    directives_done: bool,
    seen_directives: Vec<String>,
    warnings: Vec<String>,
}

impl<'a> Scanner<'a> {
    /// `directives_allowed` is false for an ONBUILD trigger expression.
    pub fn new(text: &'a str, file: &'a str, default_escape: char, directives_allowed: bool) -> Scanner<'a> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Scanner {
            lines: text.split_inclusive('\n').collect(),
            next: 0,
            file,
            directives: Directives {
                escape: default_escape,
                ..Directives::default()
            },
            directives_done: !directives_allowed,
            seen_directives: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The escape character in effect (`# escape=` may change it at the top of the file).
    pub fn escape(&self) -> char {
        self.directives.escape
    }

    /// How many physical lines have been read.
    pub fn lines_read(&self) -> usize {
        self.next
    }

    /// The directives and the non-fatal findings, once every line is read.
    pub fn finish(self) -> (Directives, Vec<String>) {
        (self.directives, self.warnings)
    }

    fn loc(&self, line: usize, col: usize) -> Loc {
        Loc {
            file: self.file.to_string(),
            line,
            col,
        }
    }

    /// The next logical line, or None at the end of the text.
    pub fn next_logical(&mut self) -> Result<Option<Logical>> {
        while self.next < self.lines.len() {
            let raw = trim_newline(self.lines[self.next]);
            let line_no = self.next + 1;
            self.next += 1;
            let left = raw.trim_start();
            let lead_chars = raw[..raw.len() - left.len()].chars().count();
            if !self.directives_done {
                self.directive(left, line_no)?;
            }
            let processed = if is_comment(left) { "" } else { left };
            let (first, eol) = trim_continuation(processed, self.escape());
            if eol && first.is_empty() {
                continue;
            }
            let mut logical = Logical {
                text: first.to_string(),
                loc: self.loc(line_no, lead_chars + 1),
                end_line: line_no,
                segs: vec![(0, line_no, lead_chars + 1)],
            };
            if !eol {
                self.continuation(&mut logical);
            }
            self.directives_done = true;
            logical.end_line = self.next.max(line_no);
            return Ok(Some(logical));
        }
        Ok(None)
    }

    /// Appends continuation lines to `logical` until a line ends without the escape.
    fn continuation(&mut self, logical: &mut Logical) {
        let mut has_empty_continuation = false;
        let mut eol = false;
        while !eol && self.next < self.lines.len() {
            let raw = trim_newline(self.lines[self.next]);
            let line_no = self.next + 1;
            self.next += 1;
            if is_comment(raw) {
                continue;
            }
            if raw.trim_start().is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (c, e) = trim_continuation(raw, self.escape());
            logical.segs.push((logical.text.len(), line_no, 1));
            logical.text.push_str(c);
            eol = e;
        }
        if has_empty_continuation {
            self.warnings.push(format!(
                "{}: empty continuation line found (this will become an error in a future Docker release)",
                logical.loc
            ));
        }
    }

    /// A parser directive line at the top of the file (anything else ends the directives).
    fn directive(&mut self, left: &str, line_no: usize) -> Result<()> {
        let Some((name, value)) = parse_directive_line(left) else {
            self.directives_done = true;
            return Ok(());
        };
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            self.directives_done = true;
            return Ok(());
        }
        let at = self.loc(line_no, 1);
        if self.seen_directives.contains(&name) {
            return Err(at.error(format!("only one {name} parser directive can be used")));
        }
        self.seen_directives.push(name.clone());
        match name.as_str() {
            "escape" => {
                self.directives.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return Err(at.error(format!("invalid escape token '{value}' does not match ` or \\"))),
                }
            }
            "syntax" => {
                check_syntax(&value).map_err(|m| at.error(m))?;
                self.directives.syntax = Some(value);
            }
            _ => self.directives.check = Some(value),
        }
        Ok(())
    }

    /// Reads the bodies of the heredocs that `line` announces (in order), from the lines that
    /// follow it. `at` is the instruction's location, for the unterminated-heredoc error.
    pub fn heredoc_bodies(&mut self, line: &str, at: &Loc) -> Result<Vec<Heredoc>> {
        let mut out = Vec::new();
        for (name, expand, strip_tabs, fd) in heredocs_in_line(line) {
            let mut content = String::new();
            let mut terminated = false;
            while self.next < self.lines.len() {
                let l = self.lines[self.next];
                self.next += 1;
                let mut candidate = trim_newline(l);
                if strip_tabs {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == name {
                    terminated = true;
                    break;
                }
                content.push_str(l);
            }
            if !terminated {
                return Err(at.error(format!(
                    "unterminated heredoc <<{name} (expected a line containing only {name} before the end of the file)"
                )));
            }
            if strip_tabs {
                content = strip_leading_tabs(&content);
            }
            out.push(Heredoc {
                name,
                content,
                expand,
                strip_tabs,
                fd,
            });
        }
        Ok(out)
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(s: &str) -> bool {
    s.trim_start().starts_with('#')
}

/// `# name = value` directive syntax (`^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`).
fn parse_directive_line(line: &str) -> Option<(String, String)> {
    let is_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c');
    let rest = line.strip_prefix('#')?;
    let rest = rest.trim_start_matches(is_ws);
    let name_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let name = &rest[..name_len];
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let rest = rest[name_len..].trim_start_matches(is_ws);
    let rest = rest.strip_prefix('=')?;
    let value = rest.trim_matches(is_ws);
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

/// Strip a line-continuation escape at the end: `(line, is_end_of_line)`.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape) {
        if before.is_empty() {
            return ("", false);
        }
        if !before.ends_with(escape) {
            return (before, false);
        }
    }
    (line, true)
}

/// `# syntax=`: kiln implements docker/dockerfile:1 itself; other frontends are refused.
fn check_syntax(value: &str) -> std::result::Result<(), String> {
    let v = value.split('@').next().unwrap_or(value);
    let (name, tag) = match v.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (v, None),
    };
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let known = matches!(name, "docker/dockerfile" | "docker/dockerfile-upstream");
    let tag_ok = match tag {
        None => true,
        Some(t) => {
            let t = t.strip_suffix("-labs").unwrap_or(t);
            matches!(t, "latest" | "labs" | "experimental" | "master" | "1") || t.starts_with("1.")
        }
    };
    if known && tag_ok {
        Ok(())
    } else {
        Err(format!(
            "unsupported frontend in `# syntax={value}`: kiln builds Dockerfiles itself and implements docker/dockerfile:1 (expected `# syntax=docker/dockerfile:1` or no syntax line)"
        ))
    }
}

/// Recognise a heredoc word: `<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`. Returns
/// `(name, expand, strip_tabs, fd)`.
pub fn parse_heredoc_word(word: &str) -> Option<(String, bool, bool, u32)> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let fd: u32 = word[..digits].parse().unwrap_or(0);
    let mut lex = Lex::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process(rest, &NoVars).ok()?.words;
    if words.len() != 1 {
        return None;
    }
    lex.raw_quotes = true;
    let raw = lex.process(rest, &NoVars).ok()?.words;
    if raw.len() != 1 {
        return None;
    }
    let count = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = count(&words[0]) == count(&raw[0]);
    Some((words[0].clone(), expand, chomp, fd))
}

/// The heredocs announced on a logical line (in order).
fn heredocs_in_line(line: &str) -> Vec<(String, bool, bool, u32)> {
    let mut lex = Lex::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    let words = match lex.process(line, &NoVars) {
        Ok(r) => r.words,
        Err(_) => return Vec::new(),
    };
    words.iter().filter_map(|w| parse_heredoc_word(w)).collect()
}

fn strip_leading_tabs(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}
