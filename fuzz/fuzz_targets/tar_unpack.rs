//! `cargo fuzz run tar_unpack`: unpacking an arbitrary tar stream (as an overlay lower, and
//! applied onto a rootfs) never panics and never creates anything outside the destination.
//! Run it as an unprivileged user: a confinement bug must not be able to hurt the machine.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn base() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kiln-fuzz-tar-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn check(data: &[u8], apply: bool) {
    let b = base();
    let root = b.join("root");
    let _ = std::fs::remove_dir_all(&root);
    let dest = root.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(root.join("secret"), b"s").unwrap();
    if apply {
        let _ = kiln::layer::apply(data, &dest, &kiln::layer::ApplyOptions::default());
    } else {
        let _ = kiln::layer::unpack_to_lower(
            data,
            kiln::image::Compression::None,
            &dest,
            kiln::layer::Ownership::default(),
            &kiln::events::Reporter::silent(),
        );
    }
    assert_eq!(entries(b), ["root"], "an entry escaped the destination");
    assert_eq!(entries(&root), ["dest", "secret"], "an entry escaped the destination");
    assert_eq!(std::fs::read(root.join("secret")).unwrap(), b"s");
}

fuzz_target!(|data: &[u8]| {
    check(data, false);
    check(data, true);
    // The archive sniffer/opener for ADD.
    if let Ok(Some(mut r)) = kiln::layer::open_archive(std::io::Cursor::new(data.to_vec())) {
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    }
});
