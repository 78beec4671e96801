//! "Nobody gets out": COPY and USER against hostile base images and stages. Every path inside
//! an image (a step's rootfs, another stage, /etc/passwd) resolves inside that image; nothing
//! on the host is read or written through a link the image planted. Run as the test user.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A busybox rootfs changed by `f`, imported as the image `name`.
fn hostile_image(s: &Scratch, root: &Path, name: &str, f: impl FnOnce(&Path)) {
    let r = busybox_rootfs(s);
    f(&r);
    if is_root() {
        chown_to_test_user(&s.path);
    }
    Kiln::with_root(root).arg("import").arg(&r).arg(name).ok();
    std::fs::remove_dir_all(&r).unwrap();
}

/// `kiln build` of `ctx` (killed after `limit`): (success, output, how long it took).
fn build(root: &Path, ctx: &Path, extra: &[&str], limit: Duration) -> (bool, String, Duration) {
    let mut c = as_user("timeout");
    c.args(["-s", "KILL", &limit.as_secs().to_string()])
        .arg(kiln_bin())
        .arg("--root")
        .arg(root)
        .arg("build")
        .args(extra)
        .arg(ctx)
        .current_dir("/");
    let t = Instant::now();
    let out = c.output().expect("running kiln build");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, t.elapsed())
}

fn context(s: &Scratch, name: &str, dockerfile: &str) -> PathBuf {
    s.write(&format!("{name}/f"), "from the context\n");
    s.write(&format!("{name}/Dockerfile"), dockerfile);
    s.join(name)
}

#[test]
fn copy_through_a_magic_link_destination_stays_in_the_image() {
    let s = Scratch::new("escape-magic");
    let root = s.join("store");
    let outside = s.join("outside");
    std::fs::create_dir(&outside).unwrap();
    if is_root() {
        chown_to_test_user(&outside);
    }
    let target = format!("/proc/self/root{}", outside.display());
    hostile_image(&s, &root, "hostile:magic", |r| {
        std::os::unix::fs::symlink(&target, r.join("app")).unwrap();
        std::os::unix::fs::symlink(&outside, r.join("abs")).unwrap();
    });
    let ctx = context(
        &s,
        "ctx",
        "FROM hostile:magic\nCOPY f /app/f\nCOPY f /app/\nCOPY f /abs/g\nCOPY . /abs/\n",
    );
    let out = s.join("out");
    let (ok, text, _) = build(
        &root,
        &ctx,
        &["-o", &format!("type=local,dest={}", out.display())],
        Duration::from_secs(120),
    );
    let listing: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(listing.is_empty(), "COPY wrote outside the image: {listing:?}\n{text}");
    if ok {
        let inside = out.join(format!("proc/self/root{}", outside.display()).trim_start_matches('/'));
        assert_eq!(std::fs::read_to_string(inside.join("f")).unwrap(), "from the context\n");
        let inside = out.join(outside.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read_to_string(inside.join("g")).unwrap(), "from the context\n");
    } else {
        assert!(
            text.contains("/app") || text.contains("magic link"),
            "unclear error:\n{text}"
        );
    }
}

#[test]
fn a_fifo_passwd_fails_the_build_quickly_naming_it() {
    let s = Scratch::new("escape-fifo");
    let root = s.join("store");
    hostile_image(&s, &root, "hostile:fifo", |r| {
        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&r.join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    });
    for (name, df) in [
        ("chown", "FROM hostile:fifo\nCOPY --chown=nobody f /f\n"),
        ("user", "FROM hostile:fifo\nUSER nobody\nRUN true\n"),
    ] {
        let ctx = context(&s, name, df);
        let (ok, text, took) = build(&root, &ctx, &[], Duration::from_secs(60));
        assert!(!ok, "{name}: the build succeeded:\n{text}");
        assert!(
            took < Duration::from_secs(30),
            "{name}: the build hung on the FIFO ({took:?}):\n{text}"
        );
        assert!(
            text.contains("/etc/passwd") && text.contains("not a regular file"),
            "{name}: the error does not name /etc/passwd:\n{text}"
        );
    }
}

#[test]
fn a_passwd_symlink_to_a_host_file_is_not_read() {
    let s = Scratch::new("escape-passwd");
    let root = s.join("store");
    let host = s.write("host/passwd", "evil:x:4242:4242::/:/bin/sh\n");
    s.write("host/group", "evil:x:4242:\n");
    hostile_image(&s, &root, "hostile:passwd", |r| {
        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(&host, r.join("etc/passwd")).unwrap();
        std::fs::remove_file(r.join("etc/group")).unwrap();
        std::os::unix::fs::symlink(
            format!("/proc/self/root{}", host.with_file_name("group").display()),
            r.join("etc/group"),
        )
        .unwrap();
    });
    for (name, df) in [
        ("user", "FROM hostile:passwd\nUSER evil\nRUN id -u > /uid\n"),
        ("chown", "FROM hostile:passwd\nCOPY --chown=evil f /f\n"),
        ("group", "FROM hostile:passwd\nCOPY --chown=0:evil f /f\n"),
    ] {
        let ctx = context(&s, name, df);
        let (ok, text, _) = build(&root, &ctx, &[], Duration::from_secs(120));
        assert!(!ok, "{name}: evil was resolved from the host file:\n{text}");
        assert!(
            text.contains("evil"),
            "{name}: the error does not name the user:\n{text}"
        );
        assert!(!text.contains("4242"), "{name}: {text}");
    }
}

#[test]
fn copy_from_a_stage_keeps_host_symlinks_as_symlinks() {
    let s = Scratch::new("escape-from");
    let root = store_with_busybox(&s);
    let host = s.write("host/secret", "host secret\n");
    let ctx = context(
        &s,
        "ctx",
        &format!(
            "FROM busybox:latest AS s\n\
             RUN mkdir -p /data/sub && ln -s {h} /data/link && ln -s {d} /data/dir && echo in > /data/sub/x\n\
             FROM busybox:latest\n\
             COPY --from=s /data /copy/\n\
             COPY --from=s /data/link /data/sub /copy2/\n",
            h = host.display(),
            d = host.parent().unwrap().display()
        ),
    );
    let out = s.join("out");
    let (ok, text, _) = build(
        &root,
        &ctx,
        &["-o", &format!("type=local,dest={}", out.display())],
        Duration::from_secs(180),
    );
    // `/data/link` named as a source is followed inside the stage, where it leads nowhere.
    assert!(!ok && text.contains("not found"), "{text}");
    let ctx2 = context(
        &s,
        "ctx2",
        &format!(
            "FROM busybox:latest AS s\n\
             RUN mkdir -p /data/sub && ln -s {h} /data/link && ln -s {d} /data/dir && echo in > /data/sub/x\n\
             FROM busybox:latest\n\
             COPY --from=s /data /copy/\n",
            h = host.display(),
            d = host.parent().unwrap().display()
        ),
    );
    let (ok, text, _) = build(
        &root,
        &ctx2,
        &["-o", &format!("type=local,dest={}", out.display())],
        Duration::from_secs(180),
    );
    assert!(ok, "{text}");
    let link = out.join("copy/link");
    assert!(
        std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
        "{text}"
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), host);
    assert!(
        std::fs::symlink_metadata(out.join("copy/dir"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(out.join("copy/sub/x")).unwrap(), "in\n");
}
