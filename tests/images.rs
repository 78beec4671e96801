//! Image management end to end, as the unprivileged user: import, images, inspect, tag,
//! rmi, save/load, export to OCI layouts and archives, and interop with skopeo and umoci.

mod common;
use common::*;
use std::process::Command;

fn tool(name: &str) -> Command {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{name} is not installed: run scripts/setup.sh"
    );
    as_user(&path)
}

#[test]
fn import_list_tag_rmi() {
    let s = Scratch::new("images");
    let root = store_with_busybox(&s);
    let list = Kiln::with_root(&root).arg("images").ok();
    assert!(list.contains("busybox") && list.contains("latest"), "{list}");
    let json = Kiln::with_root(&root).args(["images", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&json).expect("images --format json is JSON");
    assert!(v.to_string().contains("busybox"), "{v}");
    // --root after the subcommand works too.
    Kiln::new()
        .args(["tag", "busybox:latest", "mybase:1"])
        .arg("--root")
        .arg(&root)
        .ok();
    let inspect = Kiln::with_root(&root).args(["inspect", "mybase:1"]).ok();
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect prints JSON");
    assert!(v.to_string().contains("diff_ids"), "{v}");
    Kiln::with_root(&root).args(["rmi", "mybase:1"]).ok();
    let err = Kiln::with_root(&root).args(["inspect", "mybase:1"]).fails();
    assert!(err.contains("not found"), "{err}");
    Kiln::with_root(&root).args(["inspect", "busybox"]).ok();
}

#[test]
fn store_is_an_oci_layout_and_exports_interoperate() {
    let s = Scratch::new("interop");
    let root = store_with_busybox(&s);
    // The store itself is readable by skopeo.
    command_ok({
        let mut c = tool("skopeo");
        c.arg("inspect")
            .arg(format!("oci:{}:docker.io/library/busybox:latest", root.display()));
        c
    });
    let layout = s.join("layout");
    let oarch = s.join("img-oci.tar");
    let darch = s.join("img-docker.tar");
    Kiln::with_root(&root)
        .args(["push", "busybox:latest"])
        .arg(format!("oci:{}:bb", layout.display()))
        .ok();
    Kiln::with_root(&root)
        .args(["push", "busybox:latest"])
        .arg(format!("oci-archive:{}", oarch.display()))
        .ok();
    Kiln::with_root(&root)
        .args(["save", "busybox:latest", "--format", "docker-archive", "-o"])
        .arg(&darch)
        .ok();
    for r in [
        format!("oci:{}:bb", layout.display()),
        format!("oci-archive:{}", oarch.display()),
        format!("docker-archive:{}", darch.display()),
    ] {
        let out = command_ok({
            let mut c = tool("skopeo");
            c.arg("inspect").arg(&r);
            c
        });
        assert!(out.contains("Layers"), "{out}");
    }
    // umoci unpacks kiln's layout rootless.
    let bundle = s.join("bundle");
    command_ok({
        let mut c = tool("umoci");
        c.args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:bb", layout.display()))
            .arg(&bundle);
        c
    });
    assert!(bundle.join("rootfs/bin/busybox").exists());
    // load both archives into a fresh store.
    for a in [&oarch, &darch] {
        let fresh = s.join(&format!("fresh-{}", a.file_name().unwrap().to_string_lossy()));
        Kiln::with_root(&fresh).args(["load", "-i"]).arg(a).ok();
        let list = Kiln::with_root(&fresh).arg("images").ok();
        assert!(list.lines().count() >= 2, "{list}");
    }
    // An image that skopeo wrote into an OCI layout loads into kiln.
    let sk = s.join("skopeo-layout");
    command_ok({
        let mut c = tool("skopeo");
        c.arg("copy")
            .arg(format!("oci:{}:bb", layout.display()))
            .arg(format!("oci:{}:copied", sk.display()));
        c
    });
    let fresh = s.join("fresh-layout");
    Kiln::with_root(&fresh).args(["load", "-i"]).arg(&sk).ok();
}

#[test]
fn bad_archives_fail_cleanly() {
    let s = Scratch::new("bad-archives");
    let root = s.join("store");
    let junk = s.write("junk.tar", "this is not a tar archive at all");
    let err = Kiln::with_root(&root).arg("import").arg(&junk).arg("junk:1").fails();
    assert!(!err.is_empty());
    let err = Kiln::with_root(&root).args(["load", "-i"]).arg(&junk).fails();
    assert!(!err.is_empty());
    let missing = Kiln::with_root(&root)
        .arg("import")
        .arg(s.join("nope.tar"))
        .arg("x:1")
        .fails();
    assert!(missing.contains("nope.tar"), "{missing}");
    // A hostile tarball never writes outside the store, and import keeps it as a layer.
    let evil = s.join("evil.tar");
    let st = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import tarfile,io\nt=tarfile.open('{}','w')\nfor n in ['../escape','/abs-escape']:\n  i=tarfile.TarInfo(n); d=b'x'; i.size=1; t.addfile(i,io.BytesIO(d))\nt.close()",
            evil.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    if is_root() {
        chown_to_test_user(&s.path);
    }
    let _ = Kiln::with_root(&root).arg("import").arg(&evil).arg("evil:1").output();
    assert!(!s.path.parent().unwrap().join("escape").exists());
    assert!(!std::path::Path::new("/abs-escape").exists());
}

#[test]
fn full_disk_fails_cleanly_and_leaves_a_consistent_store() {
    let s = Scratch::new("full-disk");
    // 24 MB that gzip cannot shrink, on an 8 MB tmpfs mounted in kiln's own namespace.
    let big = s.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut data = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(big.join("random.bin"), &data).unwrap();
    let tarball = s.join("big.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&big)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(s.join("small.txt"), "small\n").unwrap();
    let small = s.join("small.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&s.path)
        .arg("-cf")
        .arg(&small)
        .arg("small.txt")
        .status()
        .unwrap();
    assert!(st.success());
    if is_root() {
        chown_to_test_user(&s.path);
    }
    let root = s.join("tiny-store");
    std::fs::create_dir_all(&root).unwrap();
    if is_root() {
        chown_to_test_user(&root);
    }
    let kiln = kiln_bin().display().to_string();
    let script = format!(
        "mount -t tmpfs -o size=8m none {root} || exit 99\n\
         {kiln} --root {root} import {small} small:1 || exit 98\n\
         {kiln} --root {root} import {big} big:1 2> {root}/../err.txt && exit 97\n\
         {kiln} --root {root} images > {root}/../images.txt || exit 96\n\
         ls {root}/blobs/sha256 > {root}/../blobs.txt\n\
         rm -rf {root}/tmp/*\n\
         {kiln} --root {root} import {small} small:2 || exit 95\n",
        root = root.display(),
        small = small.display(),
        big = tarball.display(),
    );
    let out = Kiln::new().args(["unshare", "--", "sh", "-c", &script]).output();
    let err = std::fs::read_to_string(s.join("err.txt")).unwrap_or_default();
    assert!(
        out.status.success(),
        "status {:?}\n{}{}\nimport error: {err}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        err.contains("No space left on device"),
        "the error should say why: {err}"
    );
    let images = std::fs::read_to_string(s.join("images.txt")).unwrap();
    assert!(images.contains("small") && !images.contains("big"), "{images}");
    // Every blob that is visible is complete: the names are digests of their content, and
    // the failed import added none (small:1 has a layer, a config and a manifest).
    let blobs = std::fs::read_to_string(s.join("blobs.txt")).unwrap();
    assert_eq!(blobs.lines().count(), 3, "{blobs}");
}
