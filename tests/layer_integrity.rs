//! Unpacked layers (`layers/<diff_id>`, the overlay lowers) must equal their blobs (issue 13,
//! class 3): foreign directories are not used, changes after unpacking are found by
//! `kiln fsck --full`, and nothing a step's commit leaves out of the blob stays in the lower.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (diff_ids, layer blob digests) of an image, bottom first.
fn layers_of(root: &Path, image: &str) -> (Vec<String>, Vec<String>) {
    let json = |kind: &str| -> serde_json::Value {
        let out = Kiln::with_root(root).args(["inspect", "--type", kind, image]).ok();
        serde_json::from_str(&out).unwrap()
    };
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    let diff_ids = strs(&json("config")["rootfs"]["diff_ids"]);
    let m = json("manifest");
    let blobs = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (diff_ids, blobs)
}

fn hex(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

fn layer_dir(root: &Path, diff_id: &str) -> PathBuf {
    root.join("layers").join(hex(diff_id))
}

fn build(root: &Path, ctx: &Path, extra: &[&str]) -> std::process::Output {
    Kiln::with_root(root)
        .arg("build")
        .args(["--progress", "plain"])
        .args(extra)
        .arg(ctx)
        .output()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every path under `dir`, relative, without a trailing slash.
fn dir_entries(dir: &Path) -> BTreeSet<String> {
    let out = Command::new("find")
        .arg(".")
        .arg("-mindepth")
        .arg("1")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "find in {}", dir.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

/// Every path `tar tf` lists in a (gzip) layer blob, normalised like [`dir_entries`].
fn blob_entries(root: &Path, blob: &str) -> BTreeSet<String> {
    let out = Command::new("tar")
        .arg("tzf")
        .arg(root.join("blobs/sha256").join(hex(blob)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar tzf {blob}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// (a) A directory planted at `layers/<diff_id>` before the first use (a copy of the real
/// rootfs plus `pwned`, owned by kiln's user, as a crash or another tool could leave it) is
/// reported by fsck and never used: the build sees the blob's content.
#[test]
fn planted_layer_dir_is_reported_and_not_used() {
    let s = Scratch::new("li-planted");
    let root = store_with_busybox(&s);
    let (diff_ids, _) = layers_of(&root, "busybox");
    assert_eq!(diff_ids.len(), 1);
    let planted = layer_dir(&root, &diff_ids[0]);
    assert!(!planted.exists(), "import does not unpack");
    let st = Command::new("cp")
        .arg("-a")
        .arg(s.join("busybox-rootfs"))
        .arg(&planted)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(planted.join("pwned"), "").unwrap();
    if is_root() {
        chown_to_test_user(&planted);
    }
    let out = Kiln::with_root(&root).arg("fsck").output();
    let t = text(&out);
    assert!(!out.status.success(), "fsck must report the planted dir:\n{t}");
    assert!(t.contains(hex(&diff_ids[0])) && t.contains("not trusted"), "{t}");

    s.write("ctx/Dockerfile", "FROM busybox\nRUN test ! -e /pwned\n");
    let out = build(&root, &s.join("ctx"), &["-t", "app"]);
    assert!(out.status.success(), "the build used the planted dir:\n{}", text(&out));
    assert!(!planted.join("pwned").exists());
    let out = Kiln::with_root(&root).args(["fsck", "--full"]).output();
    assert!(out.status.success(), "{}", text(&out));
}

/// (b) A file changed in an unpacked layer after unpacking is found by `kiln fsck --full`
/// (which names the layer), not necessarily by plain fsck; `--full --repair` removes the layer
/// and the next build unpacks it again from the blob.
#[test]
fn fsck_full_finds_and_repairs_a_modified_layer() {
    let s = Scratch::new("li-modified");
    let root = store_with_busybox(&s);
    s.write("ctx/Dockerfile", "FROM busybox\nRUN echo built > /built\n");
    let out = build(&root, &s.join("ctx"), &["-t", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let (diff_ids, _) = layers_of(&root, "app");
    assert_eq!(diff_ids.len(), 2);
    let base = layer_dir(&root, &diff_ids[0]);
    let ok = Kiln::with_root(&root).args(["fsck", "--full"]).output();
    assert!(ok.status.success(), "{}", text(&ok));

    // Tamper with the base layer's /etc/passwd and the step's /built.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(base.join("etc/passwd"))
        .unwrap();
    f.write_all(b"pwned::0:0::/:/bin/sh\n").unwrap();
    drop(f);
    std::fs::write(layer_dir(&root, &diff_ids[1]).join("built"), "tampered\n").unwrap();

    let plain = Kiln::with_root(&root).arg("fsck").output();
    eprintln!("plain fsck (trusts the markers):\n{}", text(&plain));
    let full = Kiln::with_root(&root).args(["fsck", "--full"]).output();
    let t = text(&full);
    assert!(!full.status.success(), "fsck --full missed the change:\n{t}");
    assert!(t.contains(&diff_ids[0]) && t.contains("/etc/passwd"), "{t}");
    assert!(t.contains(&diff_ids[1]) && t.contains("/built"), "{t}");

    let rep = Kiln::with_root(&root).args(["fsck", "--full", "--repair"]).output();
    assert!(rep.status.success(), "{}", text(&rep));
    assert!(!base.exists());
    s.write(
        "ctx2/Dockerfile",
        "FROM app\nRUN ! grep -q pwned /etc/passwd && grep -qx built /built\n",
    );
    let out = build(&root, &s.join("ctx2"), &["--no-cache", "-t", "app2"]);
    assert!(out.status.success(), "{}", text(&out));
    let ok = Kiln::with_root(&root).args(["fsck", "--full"]).output();
    assert!(ok.status.success(), "{}", text(&ok));
}

/// (c) A RUN step that writes under a mount placeholder (it unmounts its tmpfs at /m, then
/// writes into the placeholder dir kiln made in the upper dir): the commit leaves /m out of the
/// blob, and the published `layers/<diff_id>` must not keep it either.
#[test]
fn published_upper_dir_holds_exactly_the_blob() {
    let s = Scratch::new("li-placeholder");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=tmpfs,target=/m umount /m && mkdir /m/sub && echo leak > /m/sub/leak && echo ok > /real\n",
    );
    let out = build(&root, &s.join("ctx"), &["--cap-add", "SYS_ADMIN", "-t", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let (diff_ids, blobs) = layers_of(&root, "app");
    assert_eq!(diff_ids.len(), 2);
    let dir = layer_dir(&root, &diff_ids[1]);
    let have = dir_entries(&dir);
    let want = blob_entries(&root, &blobs[1]);
    assert!(
        want.contains("real") && !want.iter().any(|e| e.starts_with("m")),
        "{want:?}"
    );
    let extra: Vec<_> = have.difference(&want).collect();
    assert!(
        extra.is_empty(),
        "layers/{} has entries its blob lacks: {extra:?}",
        hex(&diff_ids[1])
    );
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "entries of the blob missing from the dir: {missing:?}"
    );
    // The next step does not see the leak either.
    s.write("ctx2/Dockerfile", "FROM app\nRUN test ! -e /m && test -e /real\n");
    let out = build(&root, &s.join("ctx2"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let ok = Kiln::with_root(&root).args(["fsck", "--full"]).output();
    assert!(ok.status.success(), "{}", text(&ok));
}
