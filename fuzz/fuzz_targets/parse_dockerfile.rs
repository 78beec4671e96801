//! `cargo +nightly fuzz run parse_dockerfile`: the parser and planner never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(df) = kiln::dockerfile::parse_bytes(data, "Dockerfile") {
        let _ = kiln::plan::plan(&df, &kiln::plan::BuildOptions::default());
        for ins in &df.instructions {
            if let kiln::dockerfile::Command::Run(run) = &ins.command {
                for m in &run.mounts {
                    let _ = kiln::dockerfile::mount::parse_mount(&m.raw);
                }
            }
            if let kiln::dockerfile::Command::Copy(c) | kiln::dockerfile::Command::Add(c) = &ins.command
                && let Some(chmod) = &c.chmod
            {
                let _ = kiln::dockerfile::Chmod::parse(&chmod.raw).map(|m| m.apply(0o644, false));
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln::dockerfile::parse_trigger(s, '\\');
    }
});
