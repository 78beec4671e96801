//! House rules of the library code (issue 14), checked on every `src/**.rs`:
//! - the library reports through `crate::events`, it never prints: no `println!`, `eprintln!`,
//!   `print!` or `eprint!` outside `src/cli/`, `src/main.rs` and test code;
//! - every `unsafe` (block, fn, impl, trait) in non-test code has a `// SAFETY:` comment (for
//!   an `unsafe fn`, a `# Safety` doc section) saying what invariant holds: on its line or in a
//!   comment that starts within the 3 lines above it;
//! - no source file is over [`MAX_LINES`] lines, test files excepted (split it by job).
//!
//! Test code is a `tests.rs` file (they are all `#[cfg(test)] mod tests;`) or an item under
//! `#[cfg(test)]`. Comments and string literals are not code. Each failure names `file:line`.

use std::path::{Path, PathBuf};

/// Files other sessions were editing when these checks were written: the lead fixes them after
/// merging and then empties these lists. TEMPORARY — do not add to them.
const PRINT_PENDING: &[&str] = &[];

/// Files with `unsafe` that other sessions were editing (see [`PRINT_PENDING`]). TEMPORARY.
const SAFETY_PENDING: &[&str] = &[];

/// Files over [`MAX_LINES`] that other sessions were editing. TEMPORARY.
const SIZE_PENDING: &[&str] = &[];

const MAX_LINES: usize = 1000;

fn pending(list: &[&str], path: &str) -> bool {
    list.iter().any(|p| {
        if p.ends_with('/') {
            path.starts_with(p)
        } else {
            path == *p
        }
    })
}

/// What a byte of a source file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Code,
    Comment,
    Str,
    /// Code under `#[cfg(test)]`.
    Test,
}

/// Classifies every byte of `text`: line and (nested) block comments, string, byte-string and
/// raw-string literals, char literals (told from lifetimes), and code.
fn classify(text: &str) -> Vec<Class> {
    let s = text.as_bytes();
    let mut out = vec![Class::Code; s.len()];
    let mut i = 0;
    let fill = |out: &mut Vec<Class>, a: usize, b: usize, c: Class| {
        for x in &mut out[a..b.min(s.len())] {
            *x = c;
        }
    };
    while i < s.len() {
        let ident_before = i > 0 && (s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        if s[i..].starts_with(b"//") {
            let end = s[i..].iter().position(|&b| b == b'\n').map_or(s.len(), |p| i + p);
            fill(&mut out, i, end, Class::Comment);
            i = end;
        } else if s[i..].starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < s.len() {
                if s[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if s[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            fill(&mut out, i, j, Class::Comment);
            i = j;
        } else if !ident_before && (s[i] == b'r' || s[i..].starts_with(b"br")) && {
            let k = if s[i] == b'r' { i + 1 } else { i + 2 };
            let h = s[k..].iter().take_while(|&&b| b == b'#').count();
            s.get(k + h) == Some(&b'"')
        } {
            let k = if s[i] == b'r' { i + 1 } else { i + 2 };
            let h = s[k..].iter().take_while(|&&b| b == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', h));
            let body = k + h + 1;
            let end = s[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(s.len(), |p| body + p + close.len());
            fill(&mut out, i, end, Class::Str);
            i = end;
        } else if s[i] == b'"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            fill(&mut out, i, j + 1, Class::Str);
            i = j + 1;
        } else if s[i] == b'\'' {
            // 'x', '\n', '\u{..}', b'x' are chars; 'a (no closing quote right after) a lifetime.
            let end = if s.get(i + 1) == Some(&b'\\') {
                s[i + 2..].iter().position(|&b| b == b'\'').map(|p| i + 2 + p + 1)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (s.get(i + 1 + ch) == Some(&b'\'')).then_some(i + 2 + ch)
            };
            match end {
                Some(e) => {
                    fill(&mut out, i, e, Class::Str);
                    i = e;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    mark_test_items(s, &mut out);
    out
}

/// Marks the item after each `#[cfg(test)]` (up to its `;` or its matching `}`) as test code.
fn mark_test_items(s: &[u8], class: &mut [Class]) {
    let attr = b"#[cfg(test)]";
    let mut i = 0;
    while i + attr.len() <= s.len() {
        if class[i] != Class::Code || !s[i..].starts_with(attr) {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + attr.len();
        let mut depth = 0usize;
        while j < s.len() {
            if class[j] == Class::Code {
                match s[j] {
                    b';' if depth == 0 => break,
                    b'{' => depth += 1,
                    b'}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            j += 1;
        }
        let end = (j + 1).min(s.len());
        for c in &mut class[start..end] {
            if *c == Class::Code {
                *c = Class::Test;
            }
        }
        i = end;
    }
}

fn line_of(text: &str, off: usize) -> usize {
    text[..off].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Offsets of `word` in code (not comments, strings or test items), as a whole identifier.
fn code_words(text: &str, class: &[Class], word: &str) -> Vec<usize> {
    let s = text.as_bytes();
    let w = word.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i + w.len() <= s.len() {
        if class[i] == Class::Code
            && s[i..].starts_with(w)
            && (i == 0 || !ident(s[i - 1]))
            && s.get(i + w.len()).is_none_or(|&b| !ident(b))
        {
            out.push(i);
            i += w.len();
        } else {
            i += 1;
        }
    }
    out
}

/// The `src/`-relative paths and texts of every source file, sorted.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
            (format!("src/{rel}"), std::fs::read_to_string(f).unwrap())
        })
        .collect()
}

fn is_test_file(path: &str) -> bool {
    path.ends_with("/tests.rs") || path.contains("/tests/")
}

/// Print macros in library code: one line per use.
fn printing(path: &str, text: &str) -> Vec<String> {
    if path.starts_with("src/cli/") || path == "src/main.rs" || is_test_file(path) {
        return Vec::new();
    }
    let class = classify(text);
    let mut bad = Vec::new();
    for mac in ["println", "eprintln", "print", "eprint"] {
        for off in code_words(text, &class, mac) {
            if text[off + mac.len()..].starts_with('!') {
                bad.push(format!(
                    "{path}:{}: `{mac}!` in library code: report through crate::events::Reporter",
                    line_of(text, off)
                ));
            }
        }
    }
    bad
}

#[test]
fn library_code_does_not_print() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        if pending(PRINT_PENDING, &path) {
            continue;
        }
        bad.extend(printing(&path, &text));
    }
    assert!(bad.is_empty(), "library code prints:\n{}", bad.join("\n"));
}

/// `unsafe` without a SAFETY comment: one line per use.
fn unexplained_unsafe(path: &str, text: &str) -> Vec<String> {
    if is_test_file(path) {
        return Vec::new();
    }
    let class = classify(text);
    let lines: Vec<&str> = text.lines().collect();
    let is_comment = |l: &str| {
        let t = l.trim_start();
        t.starts_with("//") || t.starts_with("/*") || t.starts_with('*')
    };
    let explains = |l: &str| l.contains("SAFETY:") || l.contains("# Safety");
    let mut bad = Vec::new();
    for off in code_words(text, &class, "unsafe") {
        let n = line_of(text, off) - 1; // 0-based
        let line = lines[n];
        // A trailing or leading comment on the line itself.
        if explains(line) {
            continue;
        }
        // A comment (of any length) that reaches one of the 3 lines above: walk up from the
        // closest comment line through its block.
        let mut ok = false;
        let lo = n.saturating_sub(3);
        if let Some(mut k) = (lo..n).rev().find(|&k| is_comment(lines[k])) {
            loop {
                if explains(lines[k]) {
                    ok = true;
                    break;
                }
                if k == 0 || !(is_comment(lines[k - 1]) || lines[k - 1].trim_start().starts_with("#[")) {
                    break;
                }
                k -= 1;
            }
            // Comments between the unsafe and that block (several SAFETY lines, one per
            // statement) count too.
            ok = ok || (k..n).any(|j| explains(lines[j]));
        }
        if !ok {
            bad.push(format!(
                "{path}:{}: `unsafe` without a `// SAFETY:` comment saying what invariant holds",
                n + 1
            ));
        }
    }
    bad
}

#[test]
fn every_unsafe_says_why_it_is_sound() {
    let mut bad = Vec::new();
    let mut total = 0;
    for (path, text) in sources() {
        total += code_words(&text, &classify(&text), "unsafe").len();
        if pending(SAFETY_PENDING, &path) {
            continue;
        }
        bad.extend(unexplained_unsafe(&path, &text));
    }
    assert!(total > 50, "the scan found only {total} unsafe: is it broken?");
    assert!(bad.is_empty(), "{} unexplained unsafe:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn no_source_file_is_over_the_size_limit() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        let n = text.lines().count();
        if n > MAX_LINES && !is_test_file(&path) && !pending(SIZE_PENDING, &path) {
            bad.push(format!("{path}: {n} lines (more than {MAX_LINES}): split it by job"));
        }
    }
    assert!(bad.is_empty(), "files too long:\n{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The checks themselves, on made-up sources.

#[test]
fn print_check_skips_comments_strings_tests_and_the_cli() {
    let src = r##"
// eprintln!("in a comment");
/* println!("block") /* nested */ eprint!() */
fn f() -> &'static str { let c = '"'; "eprintln!(\"in a string\")" }
fn g() { let _ = r#"print!("raw")"#; }
#[cfg(test)]
mod tests {
    fn t() { eprintln!("test {}", '}'); }
}
fn h() { eprintln!("real"); }
#[cfg(test)]
fn only_in_tests() { println!("x"); }
fn k() { print!("also real") }
"##;
    let bad = printing("src/store/gc.rs", src);
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(bad[0].starts_with("src/store/gc.rs:10: `eprintln!`"), "{}", bad[0]);
    assert!(bad[1].starts_with("src/store/gc.rs:13: `print!`"), "{}", bad[1]);
    assert!(printing("src/cli/run.rs", src).is_empty());
    assert!(printing("src/main.rs", src).is_empty());
    assert!(printing("src/layer/tests.rs", src).is_empty());
}

#[test]
fn safety_check_wants_a_comment_near_each_unsafe() {
    let src = r##"
fn a() {
    // SAFETY: fd is open and owned here.
    let r = unsafe { libc::close(fd) };
}
fn b() {
    let r = unsafe { libc::close(fd) };
}
// SAFETY: a long explanation
// over several lines
// that ends here.
#[allow(clippy::x)]
unsafe impl Send for X {}
/// Does things.
///
/// # Safety
/// `p` must be valid.
pub unsafe fn c(p: *const u8) {}
fn d() { let x = "unsafe"; /* unsafe */ }
fn e() {
    // SAFETY: too far away.
    let a = 1;
    let b = 2;
    let c = 3;
    unsafe { f() };
    let s = unsafe { g() }; // SAFETY: g has no preconditions.
}
#[cfg(test)]
mod tests { fn t() { unsafe { libc::close(0) }; } }
"##;
    let bad = unexplained_unsafe("src/fsutil/x.rs", src);
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(bad[0].starts_with("src/fsutil/x.rs:7:"), "{}", bad[0]);
    assert!(bad[1].starts_with("src/fsutil/x.rs:25:"), "{}", bad[1]);
    let dirs = ["src/builder/"];
    assert!(pending(&dirs, "src/builder/run.rs") && !pending(&dirs, "src/builderx.rs"));
}
