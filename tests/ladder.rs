//! The isolation ladder (issue 9): `kiln info` reports the rung and the facts, `--isolation`
//! forces one, the no-privilege rung builds RUN-free Dockerfiles with the declared owners in
//! the layers and refuses RUN before the build starts, and the chroot rung (root without
//! namespaces) builds the same image as the user-namespace rung. The locked-down environments
//! themselves are exercised by scripts/lockdown-matrix.sh.

mod common;

use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A store with `busybox:latest` imported from a root-owned tarball (the same bytes for every
/// store, so stores built by different rungs can be compared by diff_id).
fn store(s: &Scratch, name: &str) -> PathBuf {
    let tarball = s.join("busybox.tar");
    if !tarball.exists() {
        let rootfs = busybox_rootfs(s);
        std::fs::create_dir_all(rootfs.join("home/nobody")).unwrap();
        // A read-only directory with content: copies made without privilege must still go away.
        std::fs::create_dir_all(rootfs.join("usr/share/ro")).unwrap();
        std::fs::write(rootfs.join("usr/share/ro/file"), "ro").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(rootfs.join("usr/share/ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        let st = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        if is_root() {
            chown_to_test_user(&s.path);
        }
    }
    let root = s.join(name);
    Kiln::with_root(&root)
        .arg("import")
        .arg(&tarball)
        .arg("busybox:latest")
        .ok();
    root
}

fn context(s: &Scratch, name: &str, dockerfile: &str) -> PathBuf {
    s.write(&format!("{name}/Dockerfile"), dockerfile);
    s.write(&format!("{name}/greeting.txt"), "hello\n");
    s.write(&format!("{name}/data/owned.txt"), "owned by 1000\n");
    s.join(name)
}

fn diff_ids(k: Kiln) -> Vec<String> {
    let out = k.ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// (uid, gid) of `want` in the topmost layer of an OCI layout that has it.
fn owner_in_layout(layout: &Path, want: &str) -> Option<(u64, u64)> {
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs").join(d.replace(':', "/"));
    let digest = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&digest)).unwrap()).unwrap();
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
                return Some((e.header().uid().unwrap(), e.header().gid().unwrap()));
            }
        }
    }
    None
}

const NORUN: &str = "FROM busybox:latest AS base
COPY greeting.txt /app/greeting.txt
COPY --chown=1000:1000 data/ /app/data/

FROM busybox:latest
COPY --from=base /app /app
COPY --chown=65534:65534 greeting.txt /home/nobody/
ENV GREETING=hi
";

const WITH_RUN: &str = "FROM busybox:latest AS base
COPY --chown=1000:1000 data/ /app/data/
RUN echo hello > /hello && chown 65534:65534 /hello && test -c /dev/null && echo x > /dev/null

FROM busybox:latest
COPY --from=base /app /app
COPY --from=base /hello /hello
RUN test \"$(stat -c %u:%g /hello)\" = 65534:65534
";

#[test]
fn info_reports_rung_reason_and_facts() {
    let s = Scratch::new("ladder-info");
    let out = Kiln::with_root(&s.join("store"))
        .args(["info", "--format", "json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["isolation"], "userns", "{out}");
    assert_eq!(v["isolationRung"], 1);
    assert!(
        v["isolationReason"].as_str().unwrap().contains("subordinate ids"),
        "{out}"
    );
    assert_eq!(
        v["facts"]["userns_trial"]["unshare"]["tried"],
        serde_json::Value::Null,
        "camelCase keys"
    );
    assert_eq!(v["facts"]["usernsTrial"]["map"]["tried"], true, "{out}");
    assert!(v["facts"]["subuid"].is_array(), "{out}");
    let text = Kiln::with_root(&s.join("store")).arg("info").ok();
    assert!(text.starts_with("isolation:     rung 1 of 4, userns"), "{text}");
    assert!(text.contains("userns trial:") && text.contains("sysctls:"), "{text}");
    // Forced rungs are reported as such.
    let text = Kiln::with_root(&s.join("store"))
        .args(["--isolation", "none", "info"])
        .ok();
    assert!(text.contains("rung 4 of 4, none") && text.contains("forced"), "{text}");
    let text = Kiln::with_root(&s.join("store"))
        .args(["--isolation", "single-uid", "info"])
        .ok();
    assert!(text.contains("rung 2 of 4, single-uid"), "{text}");
    let err = Kiln::with_root(&s.join("store"))
        .args(["--isolation", "bogus", "info"])
        .fails();
    assert!(
        err.contains("expected auto, userns, single-uid, chroot or none"),
        "{err}"
    );
}

#[test]
fn no_privilege_rung_builds_without_run_with_declared_owners() {
    let s = Scratch::new("ladder-none");
    let ctx = context(&s, "ctx", NORUN);
    let auto = store(&s, "store-auto");
    let none = store(&s, "store-none");
    let build = |root: &Path, extra: &[&str]| {
        Kiln::with_root(root)
            .args(extra)
            .args(["build", "--timestamp", "1700000000", "-t", "app"])
            .arg(&ctx)
            .ok()
    };
    build(&auto, &[]);
    let t = std::time::Instant::now();
    build(&none, &["--isolation", "none"]);
    eprintln!("RUN-free build with --isolation none: {:?}", t.elapsed());
    let a = diff_ids(Kiln::with_root(&auto).args(["inspect", "--type", "config", "app"]));
    let n = diff_ids(Kiln::with_root(&none).args(["inspect", "--type", "config", "app"]));
    assert_eq!(a.len(), 3);
    assert_eq!(
        a, n,
        "the no-privilege build must produce the user-namespace build's layers"
    );
    let layout = s.join("out");
    Kiln::with_root(&none)
        .args(["push", "app"])
        .arg(format!("oci:{}:latest", layout.display()))
        .ok();
    assert_eq!(owner_in_layout(&layout, "app/data/owned.txt"), Some((1000, 1000)));
    assert_eq!(
        owner_in_layout(&layout, "home/nobody/greeting.txt"),
        Some((65534, 65534))
    );
    assert_eq!(owner_in_layout(&layout, "app/greeting.txt"), Some((0, 0)));
    // Nothing is left behind in the store's scratch space (read-only directories included).
    let leftovers: Vec<_> = std::fs::read_dir(none.join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn no_privilege_rung_refuses_run_before_the_build_with_the_fix() {
    let s = Scratch::new("ladder-refuse");
    let ctx = context(&s, "ctx", WITH_RUN);
    let root = store(&s, "store");
    let out = Kiln::with_root(&root)
        .args(["--isolation", "none", "build", "-t", "x"])
        .arg(&ctx)
        .fails();
    assert!(
        out.contains("cannot run RUN instructions (Dockerfile:3:1 RUN echo hello"),
        "{out}"
    );
    assert!(out.contains("and 1 more"), "{out}");
    assert!(out.contains("--isolation none was given"), "{out}");
    assert!(!out.contains("#1 ["), "refused before any step ran: {out}");
    // `kiln run` is refused the same way.
    let out = Kiln::with_root(&root)
        .args(["--isolation", "none", "run", "busybox", "true"])
        .fails();
    assert!(out.contains("cannot run RUN"), "{out}");
}

#[test]
fn forcing_a_rung_that_is_not_possible_says_why() {
    let s = Scratch::new("ladder-force");
    let root = store(&s, "store");
    if is_root() {
        // the test user is not root: chroot isolation needs root
        let out = Kiln::with_root(&root)
            .args(["--isolation", "chroot", "run", "busybox", "true"])
            .fails();
        assert!(out.contains("--isolation chroot needs root"), "{out}");
    }
    // single-uid is always possible where user namespaces are
    let out = Kiln::with_root(&root)
        .args(["--isolation", "single-uid", "run", "busybox", "sh", "-c"])
        .arg("id -u; touch /f; chown 1000 /f 2>/dev/null && stat -c %u /f || echo refused")
        .output();
    let text = String::from_utf8_lossy(&out.stdout);
    // The kernel refuses the chown; kiln's ownership emulation records it (see tests/fuse.rs).
    assert_eq!(text, "0\n1000\n", "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn chroot_rung_as_root_builds_the_user_namespace_image() {
    if !is_root() {
        eprintln!("skipped: needs root (the chroot rung is root without namespaces)");
        return;
    }
    let s = Scratch::new("ladder-chroot");
    let ctx = context(&s, "ctx", WITH_RUN);
    let userns = store(&s, "store-userns");
    Kiln::with_root(&userns)
        .args(["build", "--timestamp", "1700000000", "-t", "app"])
        .arg(&ctx)
        .ok();
    let a = diff_ids(Kiln::with_root(&userns).args(["inspect", "--type", "config", "app"]));
    // kiln as root itself, forced down to chroot isolation (no namespaces, copy snapshots).
    let root_store = s.join("store-chroot");
    let k = |args: &[&str]| {
        let out = Command::new(kiln_bin())
            .arg("--root")
            .arg(&root_store)
            .args(args)
            .current_dir("/")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kiln {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    k(&["import", s.join("busybox.tar").to_str().unwrap(), "busybox:latest"]);
    let t = std::time::Instant::now();
    let log = k(&[
        "--isolation",
        "chroot",
        "build",
        "--timestamp",
        "1700000000",
        "-t",
        "app",
        ctx.to_str().unwrap(),
    ]);
    eprintln!("chroot build: {:?}\n{log}", t.elapsed());
    let info = k(&["--isolation", "chroot", "info"]);
    assert!(
        info.contains("rung 3 of 4, chroot") && info.contains("copy snapshots"),
        "{info}"
    );
    let b = diff_ids_of(&k(&["inspect", "--type", "config", "app"]));
    assert_eq!(
        a, b,
        "chroot isolation must build the same layers as the user namespace"
    );
    // The step sees no /proc and the mknod'ed /dev, and leaves nothing behind.
    let out = k(&[
        "--isolation",
        "chroot",
        "run",
        "busybox",
        "sh",
        "-c",
        "test -e /proc/self && echo proc; echo ok > /dev/null && ls /dev",
    ]);
    assert!(!out.contains("proc"), "{out}");
    assert!(out.contains("null") && out.contains("urandom"), "{out}");
}

fn diff_ids_of(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}
