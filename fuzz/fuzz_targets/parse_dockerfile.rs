//! `cargo +nightly fuzz run parse_dockerfile`: the parser and planner never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(df) = kiln::dockerfile::parse_bytes(data, "Dockerfile") {
        let _ = kiln::plan::plan(&df, &kiln::plan::BuildOptions::default());
        for ins in &df.instructions {
            let _ = ins.run_mounts();
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln::dockerfile::parse_trigger(s, '\\');
    }
});
