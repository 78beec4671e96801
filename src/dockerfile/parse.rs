//! The line scanner and instruction parser (BuildKit `parser` + `instructions` packages).

use super::expand::{Lex, NoVars};
use super::{
    Command, Directives, Dockerfile, Flag, HealthcheckSpec, Heredoc, Instruction, KEYWORDS, Loc, ShellOrExec,
    parse_go_duration,
};
use anyhow::Result;

/// A parse error message plus where in the joined instruction line it happened.
struct PErr {
    msg: String,
    at: Option<usize>,
}

impl From<String> for PErr {
    fn from(msg: String) -> Self {
        PErr { msg, at: None }
    }
}

fn perr<T>(msg: impl Into<String>) -> std::result::Result<T, PErr> {
    Err(PErr {
        msg: msg.into(),
        at: None,
    })
}

type PResult<T> = std::result::Result<T, PErr>;

/// Maps byte offsets of a joined logical line back to physical (line, col).
struct Segments {
    /// (offset in joined line, line number, column of that offset)
    segs: Vec<(usize, usize, usize)>,
}

impl Segments {
    fn locate(&self, joined: &str, off: usize) -> (usize, usize) {
        let mut best = self.segs[0];
        for s in &self.segs {
            if s.0 <= off {
                best = *s;
            } else {
                break;
            }
        }
        let (o, line, col) = best;
        let end = off.min(joined.len());
        let chars = joined.get(o..end).map(|s| s.chars().count()).unwrap_or(0);
        (line, col + chars)
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

/// Go's `strings.TrimSpace`-like split on the first run of `[\t\v\f\r ]`.
fn split_first_ws(s: &str) -> (&str, &str) {
    let is_ws = |c: char| matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ');
    match s.find(is_ws) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(is_ws)),
        None => (s, ""),
    }
}

fn split_ws_words(s: &str) -> Vec<String> {
    s.split(['\t', '\x0b', '\x0c', '\r', ' '])
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Leading `--flag` words (quotes removed); returns (rest, flags with their byte offsets).
fn extract_flags(line: &str) -> (&str, Vec<(String, usize)>) {
    let b: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].1.is_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            return ("", words);
        }
        if !(b[i].1 == '-' && i + 1 < b.len() && b[i + 1].1 == '-') {
            return (&line[b[i].0..], words);
        }
        let start = b[i].0;
        let mut word = String::new();
        let mut blank_ok = false;
        let mut quote: Option<char> = None;
        while i < b.len() {
            let ch = b[i].1;
            if let Some(q) = quote {
                if ch == q {
                    quote = None;
                } else if ch == '\\' {
                    if i + 1 == b.len() {
                        i += 1;
                        break;
                    }
                    i += 1;
                    word.push(b[i].1);
                } else {
                    word.push(ch);
                }
                i += 1;
                continue;
            }
            if ch.is_whitespace() {
                break;
            }
            if ch == '\'' || ch == '"' {
                quote = Some(ch);
                blank_ok = true;
                i += 1;
                continue;
            }
            if ch == '\\' {
                if i + 1 == b.len() {
                    i += 1;
                    continue;
                }
                i += 1;
            }
            word.push(b[i].1);
            i += 1;
        }
        if word == "--" {
            let rest_start = if i < b.len() { b[i].0 } else { line.len() };
            return (&line[rest_start..], words);
        }
        if blank_ok || !word.is_empty() {
            words.push((word, start));
        }
    }
}

/// BuildKit's `parseWords`: quote-aware split that keeps quotes and escapes in the words.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // in quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

enum MaybeJson {
    Json(Vec<String>),
    Text(String),
}

const NOT_STRING_ARRAY: &str = "when using JSON array syntax, arrays must be comprised of strings only";

fn parse_maybe_json(rest: &str) -> PResult<MaybeJson> {
    let t = rest.trim_start();
    if t.starts_with('[')
        && let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(t)
    {
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            match it {
                serde_json::Value::String(s) => out.push(s),
                _ => return perr(NOT_STRING_ARRAY),
            }
        }
        return Ok(MaybeJson::Json(out));
    }
    Ok(MaybeJson::Text(rest.to_string()))
}

fn shell_or_exec(rest: &str) -> PResult<ShellOrExec> {
    Ok(match parse_maybe_json(rest)? {
        MaybeJson::Json(v) => ShellOrExec::Exec(v),
        MaybeJson::Text(s) => ShellOrExec::Shell(s),
    })
}

/// JSON list or whitespace-separated words (ADD, COPY, VOLUME).
fn json_or_words(rest: &str) -> PResult<(Vec<String>, bool)> {
    Ok(match parse_maybe_json(rest)? {
        MaybeJson::Json(v) => (v, true),
        MaybeJson::Text(s) => (split_ws_words(&s), false),
    })
}

/// `ENV`/`LABEL` pairs, both the legacy `KEY value` and the `k=v ...` forms.
fn parse_name_val(rest: &str, key: &str, escape: char) -> PResult<Vec<(String, String)>> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return perr(format!(
            "{key} requires at least one argument (expected {key} <name>=<value> ...)"
        ));
    }
    if !words[0].contains('=') {
        let (k, v) = split_first_ws(rest);
        if v.is_empty() {
            return perr(format!(
                "{key} must have two arguments (expected {key} <name>=<value> or {key} <name> <value>)"
            ));
        }
        return Ok(vec![(k.to_string(), v.to_string())]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return perr(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            ));
        };
        if k.is_empty() {
            return perr(format!("{key} names can not be blank"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    Str,
    Multi,
}

fn allowed_flags(keyword: &str) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::*;
    match keyword {
        "FROM" => &[("platform", Str)],
        "RUN" => &[("mount", Multi), ("network", Str), ("security", Str)],
        "COPY" => &[
            ("from", Str),
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("parents", Bool),
            ("exclude", Multi),
        ],
        "ADD" => &[
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("keep-git-dir", Bool),
            ("checksum", Str),
            ("exclude", Multi),
            ("unpack", Bool),
        ],
        "HEALTHCHECK" => &[
            ("interval", Str),
            ("timeout", Str),
            ("start-period", Str),
            ("start-interval", Str),
            ("retries", Str),
        ],
        _ => &[],
    }
}

fn owners_of(flag: &str) -> Vec<&'static str> {
    ["FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"]
        .into_iter()
        .filter(|k| allowed_flags(k).iter().any(|(n, _)| *n == flag))
        .collect()
}

fn accepts(keyword: &str) -> String {
    let a = allowed_flags(keyword);
    if a.is_empty() {
        format!("{keyword} takes no flags")
    } else {
        format!(
            "{keyword} accepts {}",
            a.iter().map(|(n, _)| format!("--{n}")).collect::<Vec<_>>().join(", ")
        )
    }
}

fn check_flags(keyword: &str, raw: &[(String, usize)]) -> PResult<Vec<(String, Option<String>, usize)>> {
    let allowed = allowed_flags(keyword);
    let mut out: Vec<(String, Option<String>, usize)> = Vec::new();
    for (word, off) in raw {
        let at = Some(*off);
        let body = word.strip_prefix("--").unwrap_or(word);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        let Some(&(_, kind)) = allowed.iter().find(|(n, _)| *n == name) else {
            let owners = owners_of(&name);
            let msg = if owners.is_empty() {
                format!("unknown flag: --{name} ({})", accepts(keyword))
            } else {
                format!(
                    "flag --{name} is not valid for {keyword}, only for {} ({})",
                    owners.join(", "),
                    accepts(keyword)
                )
            };
            return Err(PErr { msg, at });
        };
        if kind != FlagKind::Multi && out.iter().any(|(n, _, _)| *n == name) {
            return Err(PErr {
                msg: format!("duplicate flag specified: --{name}"),
                at,
            });
        }
        match kind {
            FlagKind::Bool => match value.as_deref().map(|v| v.to_ascii_lowercase()) {
                None => {}
                Some(v) if v == "true" || v == "false" => {}
                Some(v) if v.is_empty() => {
                    return Err(PErr {
                        msg: format!("missing a value on flag: --{name} (expected --{name} or --{name}=true|false)"),
                        at,
                    });
                }
                Some(v) => {
                    return Err(PErr {
                        msg: format!("expecting boolean value for flag --{name}, not: {v}"),
                        at,
                    });
                }
            },
            FlagKind::Str | FlagKind::Multi => {
                if value.is_none() {
                    return Err(PErr {
                        msg: format!("missing a value on flag: --{name} (expected --{name}=<value>)"),
                        at,
                    });
                }
            }
        }
        out.push((name, value, *off));
    }
    Ok(out)
}

fn validate_flag_values(keyword: &str, flags: &[(String, Option<String>, usize)]) -> PResult<()> {
    for (name, value, off) in flags {
        let v = value.as_deref().unwrap_or("");
        let at = Some(*off);
        let literal = !v.contains('$');
        match (keyword, name.as_str()) {
            ("COPY" | "ADD", "chmod") if literal => {
                super::Chmod::parse(v).map_err(|e| PErr { msg: e.to_string(), at })?;
            }
            ("COPY" | "ADD", "chown") if v.is_empty() => {
                return Err(PErr {
                    msg: "--chown needs a value (expected --chown=<user>[:<group>])".into(),
                    at,
                });
            }
            ("COPY", "from") if v.is_empty() => {
                return Err(PErr {
                    msg: "--from needs a value (expected --from=<stage name|index|image>)".into(),
                    at,
                });
            }
            ("RUN", "network") if literal && !matches!(v, "default" | "none" | "host") => {
                return Err(PErr {
                    msg: format!("unsupported network mode {v:?} (expected default, none or host)"),
                    at,
                });
            }
            ("RUN", "security") if literal && !matches!(v, "sandbox" | "insecure") => {
                return Err(PErr {
                    msg: format!("unsupported security mode {v:?} (expected sandbox or insecure)"),
                    at,
                });
            }
            ("RUN", "mount") if literal => {
                super::mount::parse_mount(v).map_err(|e| PErr { msg: e.to_string(), at })?;
            }
            ("FROM", "platform") if v.is_empty() => {
                return Err(PErr {
                    msg: "--platform needs a value (expected --platform=<os>/<arch>)".into(),
                    at,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_duration_flag(flags: &[(String, Option<String>, usize)], name: &str) -> PResult<Option<std::time::Duration>> {
    let Some((_, Some(v), off)) = flags.iter().find(|(n, _, _)| n == name) else {
        return Ok(None);
    };
    if v.is_empty() {
        return Ok(None);
    }
    let d = parse_go_duration(v).map_err(|e| PErr {
        msg: format!("--{name}: {e}"),
        at: Some(*off),
    })?;
    if d.is_zero() {
        return Ok(None);
    }
    if d < std::time::Duration::from_millis(1) {
        return Err(PErr {
            msg: format!("Interval {name:?} cannot be less than 1ms"),
            at: Some(*off),
        });
    }
    Ok(Some(d))
}

fn suggest(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_uppercase();
    let sorted = |s: &str| {
        let mut v: Vec<char> = s.chars().collect();
        v.sort_unstable();
        v
    };
    KEYWORDS.iter().copied().find(|k| {
        let d = edit_distance(k, &w);
        w.len() >= 3 && (d <= 1 || (d <= 2 && (w.len() >= 6 || sorted(k) == sorted(&w))))
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if b.len() > 64 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parsed instruction without heredocs and location (those are added by the caller).
struct Parsed {
    keyword: String,
    flags: Vec<(String, Option<String>, usize)>,
    command: Command,
    /// For ONBUILD: where the trigger text starts in the line, and the trigger's flag offsets.
    trigger_offset: usize,
    trigger_flag_offsets: Vec<usize>,
}

/// Parse one logical line into an instruction. `base` is the byte offset of `line` inside the
/// joined line (non-zero for ONBUILD triggers).
fn parse_line(line: &str, base: usize, escape: char, nested: bool) -> PResult<Parsed> {
    let lead = line.len() - line.trim_start().len();
    let trimmed = line.trim();
    let (cmd, rest) = split_first_ws(trimmed);
    let rest_off = base + lead + (trimmed.len() - rest.len());
    let keyword = cmd.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        let hint = suggest(cmd).map(|k| format!("did you mean {k}? ")).unwrap_or_default();
        let shown: String = cmd.chars().take(60).collect();
        return Err(PErr {
            msg: format!(
                "unknown instruction: {shown} ({hint}expected one of {})",
                KEYWORDS.join(", ")
            ),
            at: Some(base + lead),
        });
    }
    let (args_str, raw_flags) = extract_flags(rest);
    let raw_flags: Vec<(String, usize)> = raw_flags.into_iter().map(|(w, o)| (w, o + rest_off)).collect();
    let args_off = rest_off + (rest.len() - args_str.len());
    let args = args_str.trim();
    let kw = keyword.as_str();

    // HEALTHCHECK NONE takes (and ignores) no flag parsing in BuildKit; everything else checks
    let flags = check_flags(kw, &raw_flags)?;
    validate_flag_values(kw, &flags)?;

    let need_one = |what: &str| -> PResult<String> {
        if args.is_empty() {
            perr(format!("{kw} requires exactly one argument (expected {kw} {what})"))
        } else {
            Ok(args.to_string())
        }
    };
    let mut trigger_offset = 0;
    let mut trigger_flag_offsets = Vec::new();
    let command = match kw {
        "FROM" => {
            let words = split_ws_words(args);
            let name = match words.len() {
                1 => None,
                3 if words[1].eq_ignore_ascii_case("as") => {
                    let n = words[2].to_ascii_lowercase();
                    let mut cs = n.chars();
                    let ok = cs.next().is_some_and(|c| c.is_ascii_lowercase())
                        && cs.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
                    if !ok {
                        return perr(format!(
                            "invalid name for build stage: {:?}, name can't start with a number or contain symbols (expected a name matching [a-z][a-z0-9-_.]*)",
                            words[2]
                        ));
                    }
                    Some(n)
                }
                _ => {
                    return perr(
                        "FROM requires either one or three arguments (expected FROM [--platform=<platform>] <image> [AS <name>])",
                    );
                }
            };
            Command::From {
                image: words[0].clone(),
                name,
            }
        }
        "RUN" => Command::Run(shell_or_exec(args)?),
        "CMD" => Command::Cmd(shell_or_exec(args)?),
        "ENTRYPOINT" => Command::Entrypoint(shell_or_exec(args)?),
        "SHELL" => match parse_maybe_json(args)? {
            MaybeJson::Json(v) if v.is_empty() => {
                return perr("SHELL requires at least one argument (expected SHELL [\"executable\", \"parameters\"])");
            }
            MaybeJson::Json(v) => Command::Shell(v),
            MaybeJson::Text(_) => {
                return perr(
                    "SHELL requires the arguments to be in JSON form (expected SHELL [\"executable\", \"parameters\"])",
                );
            }
        },
        "LABEL" => Command::Label(parse_name_val(args, "LABEL", escape)?),
        "ENV" => Command::Env(parse_name_val(args, "ENV", escape)?),
        "MAINTAINER" => Command::Maintainer(need_one("<name>")?),
        "USER" => Command::User(need_one("<user>[:<group>]")?),
        "WORKDIR" => Command::Workdir(need_one("<path>")?),
        "STOPSIGNAL" => Command::Stopsignal(need_one("<signal>")?),
        "EXPOSE" => {
            let w = split_ws_words(args);
            if w.is_empty() {
                return perr("EXPOSE requires at least one argument (expected EXPOSE <port>[/<protocol>] ...)");
            }
            Command::Expose(w)
        }
        "VOLUME" => {
            let (w, _) = json_or_words(args)?;
            if w.is_empty() {
                return perr(
                    "VOLUME requires at least one argument (expected VOLUME <path> ... or VOLUME [\"<path>\", ...])",
                );
            }
            if w.iter().any(|v| v.trim().is_empty()) {
                return perr("VOLUME specified can not be an empty string");
            }
            Command::Volume(w.into_iter().map(|v| v.trim().to_string()).collect())
        }
        "ADD" | "COPY" => {
            let (mut w, _) = json_or_words(args)?;
            if w.len() < 2 {
                return perr(format!(
                    "{kw} requires at least two arguments, but only {} provided. Destination could not be determined (expected {kw} <src>... <dest>)",
                    if w.is_empty() { "none was" } else { "one was" }
                ));
            }
            let dest = w.pop().unwrap_or_default();
            if parse_heredoc_word(&dest).is_some() {
                return perr(format!("{kw} cannot accept a heredoc as a destination"));
            }
            if kw == "ADD" {
                Command::Add { srcs: w, dest }
            } else {
                Command::Copy { srcs: w, dest }
            }
        }
        "ARG" => {
            let words = parse_words(args, escape);
            if words.is_empty() {
                return perr("ARG requires at least one argument (expected ARG <name>[=<default>] ...)");
            }
            let mut out = Vec::new();
            for w in words {
                match w.split_once('=') {
                    Some(("", _)) => return perr("ARG names can not be blank"),
                    Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                    None => out.push((w, None)),
                }
            }
            Command::Arg(out)
        }
        "ONBUILD" => {
            if args.is_empty() {
                return perr("ONBUILD requires at least one argument (expected ONBUILD <instruction>)");
            }
            if nested {
                return perr("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
            }
            let (inner_kw, _) = split_first_ws(args);
            match inner_kw.to_ascii_uppercase().as_str() {
                "ONBUILD" => return perr("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
                k @ ("MAINTAINER" | "FROM") => return perr(format!("{k} isn't allowed as an ONBUILD trigger")),
                _ => {}
            }
            trigger_offset = args_off + (args_str.len() - args_str.trim_start().len());
            let inner = parse_line(args, trigger_offset, escape, true)?;
            trigger_flag_offsets = inner.flags.iter().map(|(_, _, off)| *off).collect();
            // location/heredocs are filled in by the caller
            Command::Onbuild(Box::new(Instruction {
                loc: Loc::default(),
                end_line: 0,
                keyword: inner.keyword,
                original: args.to_string(),
                flags: inner
                    .flags
                    .into_iter()
                    .map(|(name, value, _)| Flag {
                        name,
                        value,
                        loc: Loc::default(),
                    })
                    .collect(),
                command: inner.command,
                heredocs: Vec::new(),
            }))
        }
        "HEALTHCHECK" => {
            if args.is_empty() {
                return perr(
                    "HEALTHCHECK requires at least one argument (expected HEALTHCHECK [options] CMD <command> or HEALTHCHECK NONE)",
                );
            }
            let sep = args.find(char::is_whitespace).unwrap_or(args.len());
            let typ = args[..sep].to_ascii_uppercase();
            let cmd_text = args[sep..].trim_start();
            match typ.as_str() {
                "NONE" => {
                    if !cmd_text.is_empty() {
                        return perr("HEALTHCHECK NONE takes no arguments");
                    }
                    Command::Healthcheck(None)
                }
                "CMD" => {
                    let test = shell_or_exec(cmd_text)?;
                    let empty = match &test {
                        ShellOrExec::Shell(s) => s.is_empty(),
                        ShellOrExec::Exec(v) => v.is_empty(),
                    };
                    if empty {
                        return perr("Missing command after HEALTHCHECK CMD (expected HEALTHCHECK CMD <command>)");
                    }
                    let retries = match flags.iter().find(|(n, _, _)| n == "retries") {
                        Some((_, Some(v), off)) if !v.is_empty() => {
                            let r: i64 = v.parse().map_err(|_| PErr {
                                msg: format!("--retries: invalid number {v:?} (expected a non-negative integer)"),
                                at: Some(*off),
                            })?;
                            if r < 0 {
                                return Err(PErr {
                                    msg: format!("--retries cannot be negative ({r})"),
                                    at: Some(*off),
                                });
                            }
                            u32::try_from(r).ok().filter(|&r| r > 0)
                        }
                        _ => None,
                    };
                    Command::Healthcheck(Some(HealthcheckSpec {
                        test,
                        interval: parse_duration_flag(&flags, "interval")?,
                        timeout: parse_duration_flag(&flags, "timeout")?,
                        start_period: parse_duration_flag(&flags, "start-period")?,
                        start_interval: parse_duration_flag(&flags, "start-interval")?,
                        retries,
                    }))
                }
                other => return perr(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)")),
            }
        }
        _ => unreachable!("keyword checked against KEYWORDS"),
    };
    Ok(Parsed {
        keyword,
        flags,
        command,
        trigger_offset,
        trigger_flag_offsets,
    })
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

fn can_contain_heredoc(cmd: &Command) -> bool {
    match cmd {
        Command::Run(ShellOrExec::Shell(_)) | Command::Copy { .. } | Command::Add { .. } => true,
        Command::Onbuild(inner) => can_contain_heredoc(&inner.command),
        _ => false,
    }
}

fn strip_leading_tabs(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}

/// Parse one ONBUILD trigger expression as stored in an image config (`"RUN echo hi"`).
/// Heredoc bodies appended to the expression (BuildKit stores them that way) are honoured.
pub fn parse_trigger(expression: &str, escape: char) -> Result<Instruction> {
    let df = parse_lines(expression, "ONBUILD", escape, false)?;
    let mut it = df.instructions.into_iter();
    match (it.next(), it.next()) {
        (Some(i), None) => {
            if matches!(i.keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                anyhow::bail!("ONBUILD: {} isn't allowed as an ONBUILD trigger", i.keyword);
            }
            Ok(i)
        }
        _ => anyhow::bail!("ONBUILD: the trigger {expression:?} must be a single instruction"),
    }
}

/// [`parse_trigger`] for a trigger inherited from a base image's config: errors and the
/// instruction's location point at `loc` (the stage's FROM line).
pub fn parse_onbuild_trigger(expression: &str, loc: &Loc) -> Result<Instruction> {
    let mut ins =
        parse_trigger(expression, '\\').map_err(|e| loc.error(format!("ONBUILD trigger {expression:?}: {e}")))?;
    fn relocate(ins: &mut Instruction, loc: &Loc) {
        ins.loc = loc.clone();
        ins.end_line = loc.line;
        for f in &mut ins.flags {
            f.loc = loc.clone();
        }
    }
    relocate(&mut ins, loc);
    Ok(ins)
}

pub(super) fn parse_text(text: &str, file_name: &str) -> Result<Dockerfile> {
    let df = parse_lines(text, file_name, '\\', true)?;
    // structure: only ARG may precede the first FROM, and there must be a FROM
    let loc1 = || Loc {
        file: file_name.to_string(),
        line: 1,
        col: 1,
    };
    if df.instructions.is_empty() {
        return Err(loc1().error("file with no instructions (expected at least a FROM instruction)"));
    }
    for ins in &df.instructions {
        match ins.keyword.as_str() {
            "FROM" => return Ok(df),
            "ARG" => continue,
            k => {
                return Err(ins.loc.error(format!(
                    "{k} before the first FROM: no build stage in current context (only ARG may come before FROM)"
                )));
            }
        }
    }
    let last = df.instructions.last().map(|i| i.loc.clone()).unwrap_or_else(loc1);
    Err(last.error("dockerfile contains no stages to build (expected a FROM instruction after the ARGs)"))
}

fn parse_lines(text: &str, file_name: &str, default_escape: char, directives_allowed: bool) -> Result<Dockerfile> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut directives = Directives {
        escape: default_escape,
        ..Directives::default()
    };
    let mut directives_done = !directives_allowed;
    let mut seen_directives: Vec<String> = Vec::new();
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let loc_at = |line: usize, col: usize| Loc {
        file: file_name.to_string(),
        line,
        col,
    };
    let mut i = 0;
    while i < lines.len() {
        let raw = trim_newline(lines[i]);
        let line_no = i + 1;
        i += 1;
        let left = raw.trim_start();
        let lead_chars = raw[..raw.len() - left.len()].chars().count();
        if !directives_done {
            match parse_directive_line(left) {
                Some((name, value)) if matches!(name.as_str(), "escape" | "syntax" | "check") => {
                    if seen_directives.contains(&name) {
                        return Err(loc_at(line_no, 1).error(format!("only one {name} parser directive can be used")));
                    }
                    seen_directives.push(name.clone());
                    match name.as_str() {
                        "escape" => {
                            directives.escape = match value.as_str() {
                                "\\" => '\\',
                                "`" => '`',
                                _ => {
                                    return Err(loc_at(line_no, 1)
                                        .error(format!("invalid escape token '{value}' does not match ` or \\")));
                                }
                            }
                        }
                        "syntax" => {
                            check_syntax(&value).map_err(|m| loc_at(line_no, 1).error(m))?;
                            directives.syntax = Some(value);
                        }
                        _ => directives.check = Some(value),
                    }
                }
                _ => directives_done = true,
            }
        }
        let escape = directives.escape;
        let processed = if is_comment(left) { "" } else { left };
        let (first, mut eol) = trim_continuation(processed, escape);
        if eol && first.is_empty() {
            continue;
        }
        let start_line = line_no;
        let start_col = lead_chars + 1;
        let mut joined = first.to_string();
        let mut segs = Segments {
            segs: vec![(0, start_line, start_col)],
        };
        let mut has_empty_continuation = false;
        while !eol && i < lines.len() {
            let raw2 = trim_newline(lines[i]);
            let no2 = i + 1;
            i += 1;
            if is_comment(raw2) {
                continue;
            }
            if raw2.trim_start().is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (c, e) = trim_continuation(raw2, escape);
            segs.segs.push((joined.len(), no2, 1));
            joined.push_str(c);
            eol = e;
        }
        directives_done = true;
        let end_line = i.max(start_line);
        let instr_loc = loc_at(start_line, start_col);
        if has_empty_continuation {
            warnings.push(format!(
                "{instr_loc}: empty continuation line found (this will become an error in a future Docker release)"
            ));
        }
        let parsed = parse_line(&joined, 0, escape, false).map_err(|e| {
            let loc = match e.at {
                Some(off) => {
                    let (l, c) = segs.locate(&joined, off);
                    loc_at(l, c)
                }
                None => instr_loc.clone(),
            };
            loc.error(e.msg)
        })?;
        let flag_loc = |off: usize| {
            let (l, c) = segs.locate(&joined, off);
            loc_at(l, c)
        };
        let flags: Vec<Flag> = parsed
            .flags
            .iter()
            .map(|(n, v, off)| Flag {
                name: n.clone(),
                value: v.clone(),
                loc: flag_loc(*off),
            })
            .collect();
        let mut instr = Instruction {
            loc: instr_loc.clone(),
            end_line,
            keyword: parsed.keyword,
            original: joined.trim().to_string(),
            flags,
            command: parsed.command,
            heredocs: Vec::new(),
        };
        if can_contain_heredoc(&instr.command) && joined.contains("<<") {
            for (name, expand, strip_tabs, fd) in heredocs_in_line(&joined) {
                let mut content = String::new();
                let mut terminated = false;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
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
                    return Err(instr_loc.error(format!(
                        "unterminated heredoc <<{name} (expected a line containing only {name} before the end of the file)"
                    )));
                }
                if strip_tabs {
                    content = strip_leading_tabs(&content);
                }
                instr.heredocs.push(Heredoc {
                    name,
                    content,
                    expand,
                    strip_tabs,
                    fd,
                });
            }
            instr.end_line = i.max(start_line);
        }
        if let Command::Onbuild(inner) = &mut instr.command {
            let (l, c) = segs.locate(&joined, parsed.trigger_offset);
            inner.loc = loc_at(l, c);
            inner.end_line = instr.end_line;
            for (f, off) in inner.flags.iter_mut().zip(&parsed.trigger_flag_offsets) {
                f.loc = flag_loc(*off);
            }
            inner.heredocs = instr.heredocs.clone();
            for h in &instr.heredocs {
                inner.original.push('\n');
                inner.original.push_str(&h.content);
                inner.original.push_str(&h.name);
            }
        }
        instructions.push(instr);
    }
    Ok(Dockerfile {
        directives,
        instructions,
        warnings,
    })
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
