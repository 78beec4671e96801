//! `cargo +nightly fuzz run expand_word`: shell-word expansion never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let env: BTreeMap<String, String> = [("a".to_string(), "x y".to_string()), ("e".to_string(), String::new())]
        .into_iter()
        .collect();
    for esc in ['\\', '`'] {
        let _ = kiln::dockerfile::process_word(s, &env, esc);
        let _ = kiln::dockerfile::process_words(s, &env, esc);
    }
    let _ = kiln::dockerfile::expand::expand_heredoc(s, &env, '\\');
    let _ = kiln::dockerfile::referenced_vars(s);
});
