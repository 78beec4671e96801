//! kiln's FUSE overlay (`--storage-driver fuse`) and ownership emulation in a single-uid user
//! namespace: the upper dir is in the kernel-overlay format (whiteouts, opaque dirs, copy-up
//! keeping owner/mode/xattrs), builds give the same layers as the kernel overlay, and a
//! single-uid build records the owners that `chown`, `USER`, `adduser`-style edits and `mknod`
//! ask for. The lockdown profiles (no-subuid, no-new-privs) are exercised by
//! scripts/lockdown-matrix.sh.

mod common;
use common::*;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(p, name).ok().flatten()
}

/// `kiln run` on explicit layer dirs with the FUSE driver; returns stdout.
fn run_on(s: &Scratch, lowers: &[&Path], upper: &Path, script: &str, extra: &[&str]) -> String {
    let mut k = Kiln::with_root(&s.join("store")).args(extra).arg("run");
    k = k.args(["--storage-driver", "fuse"]);
    for l in lowers {
        k = k.arg("--lower").arg(l);
    }
    k.arg("--upper").arg(upper).args(["sh", "-c", script]).ok()
}

#[test]
fn fuse_upper_dir_is_in_kernel_overlay_format() {
    let s = Scratch::new("fuse-format");
    let bb = busybox_rootfs(&s);
    // A second, upper lower layer with content to delete, replace and copy up.
    let l1 = s.join("l1");
    std::fs::create_dir_all(l1.join("etc")).unwrap();
    std::fs::create_dir_all(l1.join("old/sub")).unwrap();
    std::fs::create_dir_all(l1.join("dir")).unwrap();
    std::fs::write(l1.join("etc/a"), "a\n").unwrap();
    std::fs::write(l1.join("etc/b"), "b\n").unwrap();
    std::fs::write(l1.join("old/sub/x"), "x\n").unwrap();
    std::fs::write(l1.join("dir/f"), "f\n").unwrap();
    xattr::set(l1.join("etc/a"), "user.keep", b"me").unwrap();
    if is_root() {
        chown_to_test_user(&s.path);
    }
    // A lower file owned by container uid 1000 (a subordinate id).
    Kiln::with_root(&s.join("store"))
        .args(["unshare", "--", "chown", "1000:1001"])
        .arg(l1.join("etc/a"))
        .ok();
    let up = s.join("upper");
    let out = run_on(
        &s,
        &[&l1, &bb],
        &up,
        "set -e
         echo more >> /etc/a; stat -c 'a %u:%g %a' /etc/a
         rm /etc/b
         rm -rf /old; mkdir /old; echo n > /old/n
         umask 022; touch /t; mkdir /td; stat -c 'modes %a' /t /td
         ln /t /t2; stat -c 'links %h' /t
         mv /dir /dir2; cat /dir2/f
         mv /t2 /t3
         ln -s /etc/a /sym
         chmod 4755 /t
         grep ' / / ' /proc/self/mountinfo | grep -q nosuid && echo NOSUID || echo suid-ok
         ls /old",
        &[],
    );
    assert!(out.contains("a 1000:1001 644"), "{out}");
    assert!(out.contains("modes 644\nmodes 755"), "{out}");
    assert!(out.contains("links 2"), "{out}");
    assert!(
        out.contains("suid-ok"),
        "setuid must not be disabled on the FUSE rootfs: {out}"
    );
    assert!(
        out.trim_end().ends_with('n'),
        "only the new content in the replaced dir: {out}"
    );

    // Whiteouts for deleted lower entries.
    for w in ["etc/b", "dir"] {
        let md = std::fs::symlink_metadata(up.join(w)).unwrap();
        assert!(
            md.file_type().is_char_device() && md.rdev() == 0,
            "{w} must be a whiteout"
        );
    }
    // The recreated dir is opaque and holds only the new file.
    assert_eq!(
        xattr_of(&up.join("old"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(up.join("old/n").exists() && !up.join("old/sub").exists());
    // Copy-up kept the xattr and the content.
    assert_eq!(xattr_of(&up.join("etc/a"), "user.keep").as_deref(), Some(&b"me"[..]));
    assert_eq!(std::fs::read_to_string(up.join("etc/a")).unwrap(), "a\nmore\n");
    // The copied dir, the renamed hardlink and the setuid bit.
    assert_eq!(std::fs::read_to_string(up.join("dir2/f")).unwrap(), "f\n");
    let (t, t3) = (
        std::fs::metadata(up.join("t")).unwrap(),
        std::fs::metadata(up.join("t3")).unwrap(),
    );
    assert_eq!(t.ino(), t3.ino(), "hardlinks stay hardlinks in the upper dir");
    assert_eq!(t.mode() & 0o7777, 0o4755);
    assert!(!up.join("t2").exists());
    assert_eq!(std::fs::read_link(up.join("sym")).unwrap(), PathBuf::from("/etc/a"));
    // No overlay bookkeeping is visible inside: the merged view hides user.overlay.*.
    let inside = run_on(
        &s,
        &[&up, &l1, &bb],
        &s.join("upper2"),
        "ls /old; cat /etc/a; test ! -e /etc/b && echo gone",
        &[],
    );
    assert_eq!(inside, "n\na\nmore\ngone\n");
}

const DOCKERFILE: &str = "FROM busybox:latest
RUN mkdir -p /srv/data /srv/old && echo a > /srv/data/a && echo b > /srv/old/b && ln -s a /srv/data/link
RUN set -e; rm /srv/data/a; rm -rf /srv/old; mkdir /srv/old; echo new > /srv/old/c; \\
    echo more >> /etc/passwd; chmod 700 /srv/data; ln /srv/old/c /srv/old/hard; \\
    chown 1000:1000 /srv/old/c; mkdir -p /home/app && chown -R 1000:1000 /home/app && \\
    echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd
USER 1000:1000
RUN touch /home/app/made-by-app && mkdir /home/app/dir && test \"$(stat -c %u:%g /srv/old/c)\" = 1000:1000
";

fn build_diff_ids(root: &Path, ctx: &Path, extra: &[&str], build: &[&str]) -> (Vec<String>, String) {
    let out = Kiln::with_root(root)
        .args(extra)
        .args(["build", "--progress", "plain", "--timestamp", "1700000000", "-t", "app"])
        .args(build)
        .arg(ctx)
        .ok();
    let cfg = Kiln::with_root(root).args(["inspect", "--type", "config", "app"]).ok();
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let ids = v["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    (ids, out)
}

#[test]
fn fuse_and_kernel_overlay_give_the_same_layers() {
    let s = Scratch::new("fuse-same");
    let root = store_with_busybox(&s);
    s.write("ctx/Dockerfile", DOCKERFILE);
    let (kernel, _) = build_diff_ids(
        &root,
        &s.join("ctx"),
        &[],
        &["--no-cache", "--storage-driver", "overlay"],
    );
    let (fuse, _) = build_diff_ids(&root, &s.join("ctx"), &[], &["--no-cache", "--storage-driver", "fuse"]);
    assert_eq!(kernel.len(), 4);
    assert_eq!(
        kernel, fuse,
        "the FUSE overlay must record exactly the kernel overlay's changes"
    );
}

/// (uid, gid, entry type, device) of a layer entry.
type Entry = (u64, u64, tar::EntryType, Option<(u32, u32)>);

/// (uid, gid, entry type, device) of `want` in the topmost layer of an OCI layout that has it.
fn entry_in_layout(layout: &Path, want: &str) -> Option<Entry> {
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(idx["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    for l in m["layers"].as_array().unwrap().iter().rev() {
        let mut raw = Vec::new();
        std::fs::File::open(blob(l["digest"].as_str().unwrap()))
            .unwrap()
            .read_to_end(&mut raw)
            .unwrap();
        let dec: Box<dyn Read> = if raw.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&raw[..]))
        } else {
            Box::new(&raw[..])
        };
        let mut ar = tar::Archive::new(dec);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
            if p.trim_end_matches('/') == want {
                let h = e.header();
                let dev = match (h.device_major(), h.device_minor()) {
                    (Ok(Some(a)), Ok(Some(b))) => Some((a, b)),
                    _ => None,
                };
                return Some((h.uid().unwrap(), h.gid().unwrap(), h.entry_type(), dev));
            }
        }
    }
    None
}

#[test]
fn single_uid_build_records_owners_like_a_subuid_build() {
    let s = Scratch::new("fuse-single");
    let full = store_with_busybox(&s);
    s.write("ctx/Dockerfile", DOCKERFILE);
    let (want, _) = build_diff_ids(&full, &s.join("ctx"), &[], &[]);
    // The same build with only one id mapped: chown, USER and /etc/passwd edits are emulated.
    let single = s.join("store-single");
    let rootfs = s.join("busybox-rootfs");
    Kiln::with_root(&single)
        .arg("import")
        .arg(&rootfs)
        .arg("busybox:latest")
        .ok();
    let info = Kiln::with_root(&single)
        .args(["--isolation", "single-uid", "info"])
        .ok();
    assert!(
        info.contains("rootfs driver: kiln's FUSE overlay (single-uid"),
        "{info}"
    );
    let (got, log) = build_diff_ids(&single, &s.join("ctx"), &["--isolation", "single-uid"], &[]);
    assert_eq!(
        want, got,
        "single-uid layers must equal the subuid build's, owners included:\n{log}"
    );
}

#[test]
fn single_uid_emulates_stat_ids_and_device_nodes() {
    let s = Scratch::new("fuse-emu");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest
RUN touch /x && chown 100:101 /x && stat -c 'x=%u:%g' /x && chown -h 7 /bin/sh \
 && mknod /null2 c 1 3 && ls -l /null2 && su nobody -s /bin/sh -c 'id -u; touch /tmp/by-nobody' \
 && chown 0:0 /x && stat -c 'x2=%u:%g' /x
",
    );
    let out = Kiln::with_root(&root)
        .args(["--isolation", "single-uid", "build", "--progress", "plain", "-t", "emu"])
        .arg(s.join("ctx"))
        .ok();
    let log = format!("{out}{}", std::fs::read_to_string(s.join("ctx/Dockerfile")).unwrap());
    let layout = s.join("oci");
    Kiln::with_root(&root)
        .args(["--isolation", "single-uid", "push", "emu"])
        .arg(format!("oci:{}:latest", layout.display()))
        .ok();
    let x = entry_in_layout(&layout, "x").expect("x in the layer");
    assert_eq!((x.0, x.1), (0, 0), "chown back to root clears the record: {log}");
    let n = entry_in_layout(&layout, "null2").expect("null2 in the layer");
    assert_eq!(n.2, tar::EntryType::Char);
    assert_eq!(n.3, Some((1, 3)));
    let b = entry_in_layout(&layout, "tmp/by-nobody").expect("tmp/by-nobody in the layer");
    assert_eq!((b.0, b.1), (65534, 65534), "created by an emulated user");
}

#[test]
fn single_uid_step_output_shows_emulated_ids() {
    let s = Scratch::new("fuse-emu-out");
    let root = store_with_busybox(&s);
    let out = Kiln::with_root(&root)
        .args(["--isolation", "single-uid", "run", "--rm", "busybox:latest", "sh", "-c"])
        .arg(
            "touch /x && chown 100:101 /x && stat -c %u:%g /x && mknod /n c 1 3 && stat -c '%t:%T %F' /n \
             && su nobody -s /bin/sh -c 'id -u; id -g'",
        )
        .ok();
    assert_eq!(out, "100:101\n1:3 character special file\n65534\n65534\n");
}

/// Benchmark wrapper: `cargo test --release --test fuse -- --ignored bench --nocapture` runs
/// examples/fuse_bench.rs under `kiln unshare` (see that file for the workloads).
#[test]
#[ignore]
fn bench() {
    let s = Scratch::new("fuse-bench");
    let st = std::process::Command::new("cargo")
        .args(["build", "--release", "--example", "fuse_bench"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(st.success());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/fuse_bench");
    let bin = s.join("fuse_bench");
    std::fs::copy(&src, &bin).unwrap();
    if is_root() {
        chown_to_test_user(&s.path);
    }
    let out = Kiln::with_root(&s.join("store"))
        .args(["unshare", "--"])
        .arg(&bin)
        .arg(s.join("work"))
        .ok();
    println!("{out}");
}
