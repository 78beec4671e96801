//! An instruction's argument text, below the keyword: leading `--flag` words, BuildKit's
//! quote-aware word split, JSON (exec) form vs shell form, and `name=value` pairs. Errors carry
//! the byte offset in the logical line where known, so the caller can locate them.

use super::ShellOrExec;

/// A parse error message plus where in the joined instruction line it happened.
pub(super) struct PErr {
    pub msg: String,
    pub at: Option<usize>,
}

impl From<String> for PErr {
    fn from(msg: String) -> Self {
        PErr { msg, at: None }
    }
}

pub(super) fn perr<T>(msg: impl Into<String>) -> std::result::Result<T, PErr> {
    Err(PErr {
        msg: msg.into(),
        at: None,
    })
}

pub(super) type PResult<T> = std::result::Result<T, PErr>;

/// Go's `strings.TrimSpace`-like split on the first run of `[\t\v\f\r ]`.
pub(super) fn split_first_ws(s: &str) -> (&str, &str) {
    let is_ws = |c: char| matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ');
    match s.find(is_ws) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(is_ws)),
        None => (s, ""),
    }
}

pub(super) fn split_ws_words(s: &str) -> Vec<String> {
    s.split(['\t', '\x0b', '\x0c', '\r', ' '])
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Leading `--flag` words (quotes removed); returns (rest, flags with their byte offsets).
pub(super) fn extract_flags(line: &str) -> (&str, Vec<(String, usize)>) {
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
pub(super) fn parse_words(rest: &str, escape: char) -> Vec<String> {
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

pub(super) enum MaybeJson {
    Json(Vec<String>),
    Text(String),
}

const NOT_STRING_ARRAY: &str = "when using JSON array syntax, arrays must be comprised of strings only";

pub(super) fn parse_maybe_json(rest: &str) -> PResult<MaybeJson> {
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

pub(super) fn shell_or_exec(rest: &str) -> PResult<ShellOrExec> {
    Ok(match parse_maybe_json(rest)? {
        MaybeJson::Json(v) => ShellOrExec::Exec(v),
        MaybeJson::Text(s) => ShellOrExec::Shell(s),
    })
}

/// JSON list or whitespace-separated words (ADD, COPY, VOLUME).
pub(super) fn json_or_words(rest: &str) -> PResult<(Vec<String>, bool)> {
    Ok(match parse_maybe_json(rest)? {
        MaybeJson::Json(v) => (v, true),
        MaybeJson::Text(s) => (split_ws_words(&s), false),
    })
}

/// `ENV`/`LABEL` pairs, both the legacy `KEY value` and the `k=v ...` forms.
pub(super) fn parse_name_val(rest: &str, key: &str, escape: char) -> PResult<Vec<(String, String)>> {
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
