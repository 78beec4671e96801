//! `.dockerignore` handling with the semantics of moby/patternmatcher, and Go's
//! `filepath.Match` for COPY/ADD wildcards.
//!
//! Reading a `.dockerignore` (like `dockerignore.ReadAll`): a UTF-8 BOM is dropped, lines
//! starting with `#` are comments, lines are trimmed, empty lines skipped, a leading `!` makes
//! an exception, the pattern is path-cleaned (`./a//b/../c` → `a/c`) and a leading `/` removed.
//!
//! Matching (like `PatternMatcher.MatchesOrParentMatches`): patterns apply in order, the last one
//! that matches decides; a pattern matches a path if it matches the whole path or any of its
//! parent directories. `*` matches any run of non-`/` characters, `?` one non-`/` character,
//! `[a-z]`/`[^a-z]` a character class, `\` escapes, `**` any number of directories (also none),
//! and a trailing `**` anything.

use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Lit(char),
    /// `?`: one character except `/`
    Any,
    /// `*`: any run of characters except `/`
    Star,
    /// `**` followed by more pattern: empty, or anything ending in `/`
    DoubleStarDir,
    /// `**` at the end: anything
    DoubleStarEnd,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Parse a `[...]` class starting after the `[`; returns the token and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Result<(Tok, usize)> {
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match chars.get(i) {
            None => bail!("syntax error in pattern: unterminated character class"),
            Some(']') if !ranges.is_empty() => return Ok((Tok::Class { negated, ranges }, i + 1)),
            _ => {}
        }
        let (lo, ni) = class_char(chars, i)?;
        i = ni;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, ni) = class_char(chars, i + 1)?;
            hi = h;
            i = ni;
            if hi < lo {
                bail!("syntax error in pattern: bad range {lo}-{hi}");
            }
        }
        ranges.push((lo, hi));
    }
}

fn class_char(chars: &[char], i: usize) -> Result<(char, usize)> {
    match chars.get(i) {
        None | Some('-') | Some(']') => bail!("syntax error in pattern: bad character class"),
        Some('\\') => match chars.get(i + 1) {
            Some(&c) => Ok((c, i + 2)),
            None => bail!("syntax error in pattern: trailing backslash"),
        },
        Some(&c) => Ok((c, i + 1)),
    }
}

/// Compile a Go `filepath.Match` pattern (no `**`).
fn compile_go(pattern: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                out.push(Tok::Star);
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                i += 1;
            }
            '[' => {
                let (t, ni) = parse_class(&chars, i + 1)?;
                out.push(t);
                i = ni;
            }
            '\\' => match chars.get(i + 1) {
                Some(&c) => {
                    out.push(Tok::Lit(c));
                    i += 2;
                }
                None => bail!("syntax error in pattern: trailing backslash"),
            },
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Compile a .dockerignore pattern (patternmatcher rules: `**`, trailing `\` is literal).
fn compile_ignore(pattern: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    out.push(Tok::DoubleStarEnd);
                } else {
                    out.push(Tok::DoubleStarDir);
                }
            }
            '*' => {
                out.push(Tok::Star);
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                i += 1;
            }
            '[' => {
                let (t, ni) = parse_class(&chars, i + 1)?;
                out.push(t);
                i = ni;
            }
            '\\' => match chars.get(i + 1) {
                Some(&c) => {
                    out.push(Tok::Lit(c));
                    i += 2;
                }
                None => {
                    out.push(Tok::Lit('\\'));
                    i += 1;
                }
            },
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// NFA simulation: states 0..=n are "before token i"; state n+1+i is "inside `**/` token i".
fn tok_match(toks: &[Tok], s: &str) -> bool {
    let n = toks.len();
    let mut cur = vec![false; 2 * n + 2];
    cur[0] = true;
    eps(toks, &mut cur);
    for c in s.chars() {
        let mut nxt = vec![false; 2 * n + 2];
        let mut any = false;
        for i in 0..n {
            let at = cur[i];
            let inside = cur[n + 1 + i];
            if !at && !inside {
                continue;
            }
            match &toks[i] {
                Tok::DoubleStarDir => {
                    nxt[n + 1 + i] = true;
                    if c == '/' {
                        nxt[i + 1] = true;
                    }
                    any = true;
                }
                _ if !at => {}
                Tok::Lit(l) => {
                    if *l == c {
                        nxt[i + 1] = true;
                        any = true;
                    }
                }
                Tok::Any => {
                    if c != '/' {
                        nxt[i + 1] = true;
                        any = true;
                    }
                }
                Tok::Star => {
                    if c != '/' {
                        nxt[i] = true;
                        any = true;
                    }
                }
                Tok::DoubleStarEnd => {
                    nxt[i] = true;
                    any = true;
                }
                Tok::Class { negated, ranges } => {
                    let inr = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                    if inr != *negated && c != '/' {
                        nxt[i + 1] = true;
                        any = true;
                    }
                }
            }
        }
        if !any {
            return false;
        }
        eps(toks, &mut nxt);
        cur = nxt;
    }
    cur[n]
}

fn eps(toks: &[Tok], set: &mut [bool]) {
    for i in 0..toks.len() {
        if set[i] && matches!(toks[i], Tok::Star | Tok::DoubleStarDir | Tok::DoubleStarEnd) {
            set[i + 1] = true;
        }
    }
}

/// Go's `filepath.Match(pattern, name)` on `/`-separated paths: `*` and `?` never match `/`,
/// `[...]` classes with ranges and `^` negation, `\` escapes. A malformed pattern is an error
/// (`syntax error in pattern`), as in Go.
pub fn go_match(pattern: &str, name: &str) -> Result<bool> {
    let toks = compile_go(pattern).with_context(|| format!("invalid pattern {pattern:?}"))?;
    Ok(tok_match(&toks, name))
}

/// Does the pattern contain wildcard characters (so COPY must match it against a directory)?
pub fn has_wildcards(pattern: &str) -> bool {
    pattern.chars().any(|c| matches!(c, '*' | '?' | '[' | '\\'))
}

/// Clean a slash path like Go's `path.Clean`: `a//b/./c/../d` → `a/b/d`; empty → `.`.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// One `.dockerignore` pattern.
#[derive(Clone, Debug)]
pub struct IgnorePattern {
    /// The cleaned pattern, without the `!`.
    pub pattern: String,
    /// `!pattern`: re-include.
    pub exception: bool,
    toks: Vec<Tok>,
}

/// The largest `.dockerignore` kiln reads.
pub const MAX_IGNORE_SIZE: u64 = 32 << 20;

/// A compiled `.dockerignore`.
#[derive(Clone, Debug, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<IgnorePattern>,
}

/// Split a `.dockerignore` file into patterns (dockerignore.ReadAll).
pub fn read_patterns(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut p = String::new();
        if !pattern.is_empty() {
            p = clean_path(pattern);
            if p.len() > 1 && p.starts_with('/') {
                p.remove(0);
            }
        }
        out.push(if invert { format!("!{p}") } else { p });
    }
    out
}

impl IgnoreMatcher {
    /// Compile the text of a `.dockerignore`.
    pub fn new(patterns_text: &str) -> Result<Self> {
        Self::from_patterns(&read_patterns(patterns_text))
    }

    /// Compile already-split patterns (`!` prefix for exceptions).
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<Self> {
        let mut out = Vec::new();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean_path(p);
            let mut exception = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    bail!("illegal exclusion pattern: \"!\" (an exception needs a pattern after the '!')");
                }
                exception = true;
                p = rest.to_string();
            }
            let toks = compile_ignore(&p).map_err(|e| anyhow!("invalid .dockerignore pattern {p:?}: {e}"))?;
            out.push(IgnorePattern {
                pattern: p,
                exception,
                toks,
            });
        }
        Ok(IgnoreMatcher { patterns: out })
    }

    /// Load the ignore file for a build: `<dockerfile>.dockerignore` next to the Dockerfile wins
    /// over `<context>/.dockerignore`; neither present = nothing ignored. Either must be a
    /// regular file of at most [`MAX_IGNORE_SIZE`] bytes (a FIFO cannot hang the build); the
    /// context's one is read inside the context (a symlink there does not lead out of it).
    pub fn load(context_dir: &Path, dockerfile_path: &Path) -> Result<Self> {
        use crate::fsutil::Root;
        let mut specific = dockerfile_path.as_os_str().to_owned();
        specific.push(".dockerignore");
        let specific = std::path::PathBuf::from(specific);
        let general = context_dir.join(".dockerignore");
        let missing =
            |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR);
        let found = match Root::read_host_regular(&specific, MAX_IGNORE_SIZE) {
            Ok(b) => Some((b, &specific)),
            Err(e) if missing(&e) => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", specific.display())),
        };
        let found = match found {
            Some(f) => Some(f),
            // No context directory at all (a build from stdin): nothing to ignore.
            None => match Root::open(context_dir) {
                Err(e) if missing(&e) => None,
                r => r
                    .and_then(|r| r.read_regular(".dockerignore", MAX_IGNORE_SIZE))
                    .with_context(|| format!("cannot read {}", general.display()))?
                    .map(|b| (b, &general)),
            },
        };
        match found {
            Some((bytes, path)) => {
                let text = String::from_utf8_lossy(&bytes);
                Self::new(&text).with_context(|| format!("reading {}", path.display()))
            }
            None => Ok(IgnoreMatcher::default()),
        }
    }

    pub fn patterns(&self) -> &[IgnorePattern] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Are there `!` exceptions (so an excluded directory may still have included children)?
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Is `rel_path` (relative to the context, `/`-separated; leading `./` or `/` allowed)
    /// excluded from the build context?
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let mut path = clean_path(rel_path);
        if path.starts_with('/') {
            path.remove(0);
        }
        if path.is_empty() || path == "." {
            return false;
        }
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pat in &self.patterns {
            if pat.exception != matched {
                continue;
            }
            let mut m = tok_match(&pat.toks, &path);
            if !m && !parents.is_empty() {
                let mut prefix = String::new();
                for (i, dir) in parents.iter().enumerate() {
                    if i > 0 {
                        prefix.push('/');
                    }
                    prefix.push_str(dir);
                    if tok_match(&pat.toks, &prefix) {
                        m = true;
                        break;
                    }
                }
            }
            if m {
                matched = !pat.exception;
            }
        }
        matched
    }

    /// When the directory `dir` is excluded, may something below it still be included by an
    /// exception? (Conservative: true when an exception pattern could reach below `dir`.) A
    /// context walker skips an excluded directory only when this is false.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let mut d = clean_path(dir);
        if d.starts_with('/') {
            d.remove(0);
        }
        let dir_slash = format!("{d}/");
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            let lit: String = p
                .pattern
                .chars()
                .take_while(|c| !matches!(c, '*' | '?' | '[' | '\\'))
                .collect();
            lit.starts_with(&dir_slash) || dir_slash.starts_with(&lit) || d == "."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_match_table() {
        // (pattern, name, expected) — cases from Go's filepath.Match documentation and tests
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("*x", "xxx", true),
            ("index.?s", "index.js", true),
            ("index.?s", "index.css", false),
            ("arr[[]0].txt", "arr[0].txt", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(go_match(p, n).unwrap(), *want, "{p} vs {n}");
        }
        for bad in [
            "[]a]", "[-]", "[x-]", "[a-b-c]", "[", "[^", "[^bc", "a[", "\\", "[\\", "[a-\\", "[z-a]",
        ] {
            assert!(go_match(bad, "x").is_err(), "{bad} should be a bad pattern");
        }
    }

    #[test]
    fn clean() {
        for (i, o) in [
            ("./foo", "foo"),
            ("dir1//foo", "dir1/foo"),
            ("./dir1/../foo2", "foo2"),
            ("/a/b/", "/a/b"),
            ("", "."),
            ("..", ".."),
            ("a/../..", ".."),
            ("/..", "/"),
        ] {
            assert_eq!(clean_path(i), o, "{i}");
        }
    }

    fn m(text: &str) -> IgnoreMatcher {
        IgnoreMatcher::new(text).unwrap()
    }

    #[test]
    fn ignore_semantics() {
        let im = m("# comment\n*.md\n!README*.md\nREADME-secret.md\n/abs\n./dot\n");
        assert!(im.is_excluded("a.md"));
        assert!(!im.is_excluded("README.md"));
        assert!(im.is_excluded("README-secret.md"));
        assert!(!im.is_excluded("sub/a.md"), "* does not cross directories");
        assert!(im.is_excluded("abs"));
        assert!(im.is_excluded("abs/child"), "parent dir match excludes children");
        assert!(im.is_excluded("dot"));
        assert!(!im.is_excluded("# comment"));

        let im = m("**/*.cc\n!**/keep.cc\ndir/**\n");
        assert!(im.is_excluded("a.cc") && im.is_excluded("x/y/a.cc"));
        assert!(!im.is_excluded("x/keep.cc"));
        assert!(im.is_excluded("dir/a") && im.is_excluded("dir/a/b"));
        assert!(!im.is_excluded("dir2/a"));

        let im = m("*\n!src\nsrc/etc\n**/*.in\n");
        assert!(im.is_excluded("Makefile"));
        assert!(!im.is_excluded("src/cmd/Makefile"));
        assert!(im.is_excluded("src/etc/x"));
        assert!(im.is_excluded("src/a.in"));
        assert!(im.may_include_below("."));

        let im = m("dir\n!dir/e*\n!dir/dir/foo\n");
        assert!(im.is_excluded("dir/foo1"));
        assert!(!im.is_excluded("dir/e"));
        assert!(!im.is_excluded("dir/e-dir/foo"));
        assert!(!im.is_excluded("dir/dir/foo"));
        assert!(im.is_excluded("dir/dir/f1"));
        assert!(im.may_include_below("dir"));
        assert!(!im.may_include_below("other"));
    }

    #[test]
    fn bom_and_cleaning() {
        let im = m("\u{feff}./Dockerfile\n");
        assert!(im.is_excluded("Dockerfile"));
        let im = m("./foo\ndir1//foo\n./dir1/../foo2");
        assert!(im.is_excluded("foo") && im.is_excluded("dir1/foo") && im.is_excluded("foo2"));
        assert!(im.is_excluded("./foo") && im.is_excluded("/foo"));
    }

    #[test]
    fn bad_exclusion() {
        let err = IgnoreMatcher::new("!\n").unwrap_err().to_string();
        assert!(err.contains("exclusion"), "{err}");
        assert!(IgnoreMatcher::new("a[\n").is_err());
        assert!(IgnoreMatcher::new("trailing\\\n").is_ok());
    }

    #[test]
    fn double_star_forms() {
        let im = m("**foo\n");
        assert!(im.is_excluded("foo") && im.is_excluded("x/foo"));
        assert!(!im.is_excluded("xfoo"));
        let im = m("**\n");
        assert!(im.is_excluded("anything/at/all"));
        let im = m("a/**/b\n");
        assert!(im.is_excluded("a/b") && im.is_excluded("a/x/y/b"));
        assert!(!im.is_excluded("a/xb"));
    }

    #[test]
    fn load_refuses_fifos_and_stays_in_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(dir.path().join("host-ignore"), "secret\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("host-ignore"), ctx.join(".dockerignore")).unwrap();
        let im = IgnoreMatcher::load(&ctx, &ctx.join("Dockerfile")).unwrap();
        assert!(!im.is_excluded("secret"), "a link out of the context is not followed");
        std::fs::remove_file(ctx.join(".dockerignore")).unwrap();
        nix::unistd::mkfifo(
            &ctx.join(".dockerignore"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = format!("{:#}", IgnoreMatcher::load(&ctx, &ctx.join("Dockerfile")).unwrap_err());
        assert!(e.contains(".dockerignore") && e.contains("not a regular file"), "{e}");
        nix::unistd::mkfifo(
            &ctx.join("Dockerfile.dockerignore"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = format!("{:#}", IgnoreMatcher::load(&ctx, &ctx.join("Dockerfile")).unwrap_err());
        assert!(
            e.contains("Dockerfile.dockerignore") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn load_prefers_dockerfile_specific() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "general\n").unwrap();
        let df = dir.path().join("Dockerfile");
        let im = IgnoreMatcher::load(dir.path(), &df).unwrap();
        assert!(im.is_excluded("general"));
        std::fs::write(dir.path().join("Dockerfile.dockerignore"), "specific\n").unwrap();
        let im = IgnoreMatcher::load(dir.path(), &df).unwrap();
        assert!(im.is_excluded("specific") && !im.is_excluded("general"));
        let empty = tempfile::tempdir().unwrap();
        assert!(
            IgnoreMatcher::load(empty.path(), &empty.path().join("Dockerfile"))
                .unwrap()
                .is_empty()
        );
    }
}
