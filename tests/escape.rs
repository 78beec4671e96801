//! Issue 13, classes 1 and 2: a hostile Dockerfile or base image must not make kiln create or
//! delete anything outside the step's rootfs. Mount targets (kiln's own and the user's) are
//! resolved through the root handle at mount time; cleanup never follows a symlink the step
//! left. Each case runs for every storage driver, in the userns and the single-uid rung, as the
//! unprivileged test user; the "host" directory is one that user can write, so only kiln's
//! confinement stands between the build and it.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const DRIVERS: [&str; 3] = ["overlay", "fuse", "copy"];
const RUNGS: [&str; 2] = ["userns", "single-uid"];

/// A directory outside every root, writable by the test user, with one file in it.
fn host_dir(s: &Scratch) -> PathBuf {
    let d = s.write("host/precious", "keep me\n");
    d.parent().unwrap().to_path_buf()
}

fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(d)
        .into_iter()
        .map(|p| p.strip_prefix(d).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// Imports the busybox rootfs after `tweak` made it hostile, as `name`.
fn hostile_base(s: &Scratch, root: &Path, name: &str, tweak: impl FnOnce(&Path)) {
    let r = busybox_rootfs(s);
    let copy = s.join(&format!("base-{name}"));
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&r)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    tweak(&copy);
    if is_root() {
        chown_to_test_user(&copy);
    }
    Kiln::with_root(root)
        .arg("import")
        .arg(&copy)
        .arg(format!("{name}:1"))
        .ok();
}

/// Builds `dockerfile` with every driver and rung; returns (label, succeeded, output) per run.
fn build_all(s: &Scratch, root: &Path, dockerfile: &str, files: &[(&str, &str)]) -> Vec<(String, bool, String)> {
    let ctx = s.join("ctx");
    let _ = std::fs::remove_dir_all(&ctx);
    s.write("ctx/Dockerfile", dockerfile);
    for (p, c) in files {
        s.write(&format!("ctx/{p}"), c);
    }
    let mut v = Vec::new();
    for d in DRIVERS {
        for r in RUNGS {
            let out = Kiln::with_root(root)
                .args(["build", "--no-cache", "--storage-driver", d, "--isolation", r])
                .arg(&ctx)
                .output();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            v.push((format!("{d}/{r}"), out.status.success(), text));
        }
    }
    v
}

fn assert_untouched(host: &Path, before: &[String], runs: &[(String, bool, String)], what: &str) {
    let after = listing(host);
    assert_eq!(
        before,
        after.as_slice(),
        "{what}: the host directory changed; runs:\n{}",
        runs.iter()
            .map(|(l, ok, t)| format!("--- {l} ok={ok}\n{t}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(std::fs::read_to_string(host.join("precious")).unwrap(), "keep me\n");
}

fn fsck_ok(root: &Path) {
    Kiln::with_root(root).arg("fsck").ok();
}

/// Class 1: mount targets through magic links and image symlinks.
#[test]
fn mount_targets_never_leave_the_rootfs() {
    let s = Scratch::new("escape-mounts");
    let root = store_with_busybox(&s);
    let host = host_dir(&s);
    let before = listing(&host);
    let h = host.display().to_string();

    // A user mount whose target goes through /proc/self/root (a magic link once /proc is
    // mounted in the step).
    let runs = build_all(
        &s,
        &root,
        &format!("FROM busybox:latest\nRUN --mount=type=tmpfs,target=/proc/self/root{h}/x true\n"),
        &[],
    );
    assert_untouched(&host, &before, &runs, "tmpfs target through /proc/self/root");
    for (l, ok, t) in &runs {
        assert!(
            !ok && t.contains("magic link"),
            "{l}: expected a magic-link refusal:\n{t}"
        );
    }

    // An image whose /sys, /dev and /etc/hosts are symlinks to the host through /proc.
    hostile_base(&s, &root, "magicsys", |r| {
        std::os::unix::fs::symlink(format!("/proc/self/root{h}/sys"), r.join("sys")).unwrap();
    });
    hostile_base(&s, &root, "magicdev", |r| {
        std::os::unix::fs::symlink(format!("/proc/self/root{h}/dev"), r.join("dev")).unwrap();
    });
    hostile_base(&s, &root, "magichosts", |r| {
        std::os::unix::fs::symlink(format!("/proc/self/root{h}/hosts"), r.join("etc/hosts")).unwrap();
    });
    // And plain absolute symlinks to the host dir: resolved inside the rootfs, so they work.
    hostile_base(&s, &root, "abssys", |r| {
        std::os::unix::fs::symlink(format!("{h}/sys"), r.join("sys")).unwrap();
        std::os::unix::fs::symlink(format!("{h}/hosts"), r.join("etc/hosts")).unwrap();
    });
    for base in ["magicsys", "magicdev", "magichosts"] {
        let runs = build_all(&s, &root, &format!("FROM {base}:1\nRUN true\n"), &[]);
        assert_untouched(&host, &before, &runs, base);
        for (l, ok, t) in &runs {
            assert!(
                !ok && t.contains("magic link"),
                "{base} {l}: expected a magic-link refusal:\n{t}"
            );
        }
    }
    let runs = build_all(
        &s,
        &root,
        "FROM abssys:1\nRUN grep -q localhost /etc/hosts && test -d /sys\n",
        &[],
    );
    assert_untouched(&host, &before, &runs, "absolute symlinks");
    for (l, ok, t) in &runs {
        assert!(ok, "abssys {l}: symlinks resolved inside the rootfs should work:\n{t}");
    }

    // A symlink an earlier RUN left inside a cache mount; a later mount target goes through it.
    let runs = build_all(
        &s,
        &root,
        &format!(
            "FROM busybox:latest\n\
             RUN --mount=type=cache,target=/c,id=esc ln -sfn /proc/self/root{h} /c/evil\n\
             RUN --mount=type=cache,target=/c,id=esc --mount=type=tmpfs,target=/c/evil/made true\n"
        ),
        &[],
    );
    assert_untouched(&host, &before, &runs, "symlink inside an earlier cache mount");
    fsck_ok(&root);
}

/// Class 2: cleanup after a step that swapped a placeholder's parent for a symlink.
#[test]
fn cleanup_never_follows_the_steps_symlinks() {
    let s = Scratch::new("escape-cleanup");
    let root = store_with_busybox(&s);
    let host = host_dir(&s);
    // a file named like the placeholder, which a following cleanup would delete
    s.write("host/t", "placeholder name\n");
    let before = listing(&host);
    let h = host.display().to_string();
    let runs = build_all(
        &s,
        &root,
        &format!(
            "FROM busybox:latest\n\
             RUN --mount=type=bind,source=f,target=/m/t sh -c 'mv /m /m.old && ln -s {h} /m'\n"
        ),
        &[("f", "context file\n")],
    );
    assert_untouched(&host, &before, &runs, "bind placeholder parent swapped for a symlink");
    assert_eq!(std::fs::read_to_string(host.join("t")).unwrap(), "placeholder name\n");
    // The same against the store: a symlink to its blobs directory.
    let blobs = root.join("blobs/sha256");
    let blobs_before = listing(&blobs);
    let runs = build_all(
        &s,
        &root,
        &format!(
            "FROM busybox:latest\n\
             RUN --mount=type=tmpfs,target=/m/t sh -c 'mv /m /m.old && ln -s {} /m'\n",
            blobs.display()
        ),
        &[],
    );
    let blobs_after: Vec<String> = listing(&blobs);
    for b in &blobs_before {
        assert!(blobs_after.contains(b), "blob {b} was deleted; runs: {runs:?}");
    }
    fsck_ok(&root);
}

/// The chroot rung (root without namespaces, as in GitLab's Docker executor): nothing is
/// mounted, kiln places /dev nodes, /etc files and mounts into the rootfs itself and takes them
/// away after the step, by (directory fd, name): a hostile image's symlinks are followed inside
/// the rootfs, and a step that swaps a placement's parent for a symlink to a host directory
/// makes kiln delete nothing there. Root only (the rung is root's).
#[test]
fn chroot_rung_keeps_hostile_images_and_steps_inside() {
    if !is_root() {
        eprintln!("skipped: needs root (the chroot rung is root without namespaces)");
        return;
    }
    let s = Scratch::new("escape-chroot");
    let host = host_dir(&s);
    s.write("host/t", "placeholder name\n");
    let before = listing(&host);
    let h = host.display().to_string();
    let store = s.join("store-chroot");
    let k = |args: &[&str]| {
        let out = std::process::Command::new(kiln_bin())
            .arg("--root")
            .arg(&store)
            .args(args)
            .current_dir("/")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let base = busybox_rootfs(&s);
    let hostile = s.join("base-chroot");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&base)
            .arg(&hostile)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink(format!("/proc/self/root{h}/dev"), hostile.join("dev")).unwrap();
    std::os::unix::fs::symlink(format!("{h}/hosts"), hostile.join("etc/hosts")).unwrap();
    let (ok, t) = k(&["import", hostile.to_str().unwrap(), "hostile:1"]);
    assert!(ok, "{t}");
    s.write("ctx/f", "context file\n");
    s.write(
        "ctx/Dockerfile",
        &format!(
            "FROM hostile:1\n\
             RUN test -c /dev/null && grep -q localhost /etc/hosts\n\
             RUN --mount=type=bind,source=f,target=/m/t sh -c 'mv /m /m.old && ln -s {h} /m'\n"
        ),
    );
    let (ok, t) = k(&[
        "--isolation",
        "chroot",
        "build",
        "--no-cache",
        s.join("ctx").to_str().unwrap(),
    ]);
    assert_untouched(&host, &before, &[("chroot".into(), ok, t.clone())], "chroot rung");
    assert!(ok, "the chroot build should work inside the rootfs:\n{t}");
    assert_eq!(std::fs::read_to_string(host.join("t")).unwrap(), "placeholder name\n");
    let (ok, t) = k(&["fsck"]);
    assert!(ok, "{t}");
}
