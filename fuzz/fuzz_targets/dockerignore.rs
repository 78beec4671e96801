//! `cargo +nightly fuzz run dockerignore`: pattern compilation and matching never panic.
//! Input: the .dockerignore text, a NUL, then a path to test.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (patterns, path) = s.split_once('\0').unwrap_or((s, "a/b/c"));
    if let Ok(m) = kiln::dockerfile::IgnoreMatcher::new(patterns) {
        let _ = m.is_excluded(path);
        let _ = m.may_include_below(path);
    }
    let _ = kiln::dockerfile::go_match(patterns, path);
});
