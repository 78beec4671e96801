//! End-to-end `kiln build` tests, run as the unprivileged test user.

mod common;
use common::*;
use std::path::Path;

fn build(root: &Path, ctx: &Path, extra: &[&str]) -> String {
    let out = Kiln::with_root(root).arg("build").args(extra).arg(ctx).output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kiln build failed:\n{text}");
    text
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn run_copy_whiteouts_and_local_output() {
    let s = Scratch::new("build-basic");
    let root = store_with_busybox(&s);
    s.write("ctx/hello.txt", "hello from the context\n");
    s.write("ctx/sub/inner.txt", "inner\n");
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\n\
         RUN echo built > /built && rm /etc/group && mkdir -p /gone && touch /gone/a\n\
         RUN rm -rf /gone && mkdir /gone && echo new > /gone/b\n\
         COPY hello.txt /copied.txt\n\
         COPY sub /dest/\n\
         RUN chown 1000:1000 /built && chmod 4755 /built && ln /copied.txt /hard && mkfifo /fifo\n\
         ENV GREETING=hi\n\
         CMD [\"sh\"]\n",
    );
    let out = s.join("out");
    build(
        &root,
        &s.join("ctx"),
        &["-t", "basic:1", "-o", &format!("type=local,dest={}", out.display())],
    );
    assert_eq!(read(&out.join("built")), "built\n");
    assert!(!out.join("etc/group").exists(), "deleted lower file must be whited out");
    assert!(out.join("etc/passwd").exists());
    assert!(!out.join("gone/a").exists(), "opaque dir must hide the lower contents");
    assert_eq!(read(&out.join("gone/b")), "new\n");
    assert_eq!(read(&out.join("copied.txt")), "hello from the context\n");
    assert_eq!(read(&out.join("dest/inner.txt")), "inner\n");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::symlink_metadata(out.join("built")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755);
    let hard = std::fs::metadata(out.join("hard")).unwrap();
    let copied = std::fs::metadata(out.join("copied.txt")).unwrap();
    assert_eq!(hard.ino(), copied.ino(), "hardlink kept");
    assert!(
        std::fs::symlink_metadata(out.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let inspect = Kiln::with_root(&root).args(["inspect", "basic:1"]).ok();
    assert!(inspect.contains("GREETING=hi"), "{inspect}");
    // The image's layer tar carries the in-container owner, not a host sub-id.
    let oci = s.join("oci");
    Kiln::with_root(&root)
        .args(["push", "basic:1"])
        .arg(format!("oci:{}:basic", oci.display()))
        .ok();
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for b in {}/blobs/sha256/*; do tar tvzf $b 2>/dev/null; done",
            oci.display()
        ))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l.contains("1000/1000") && l.ends_with("built")),
        "{listing}"
    );
}

#[test]
fn rebuild_without_change_is_fully_cached() {
    let s = Scratch::new("build-cache");
    let root = store_with_busybox(&s);
    let mut df = String::from("FROM busybox:latest\n");
    for i in 0..30 {
        if i % 3 == 0 {
            df.push_str(&format!("RUN echo {i} > /f{i}\n"));
        } else if i % 3 == 1 {
            df.push_str(&format!("ENV V{i}={i}\n"));
        } else {
            df.push_str("COPY data.txt /data.txt\n");
        }
    }
    s.write("ctx/Dockerfile", &df);
    s.write("ctx/data.txt", "data\n");
    let first = build(&root, &s.join("ctx"), &["-t", "cached:1", "--progress=plain"]);
    assert!(!first.contains("CACHED"), "{first}");
    let second = build(&root, &s.join("ctx"), &["-t", "cached:1", "--progress=plain"]);
    let fs_steps = 20;
    assert_eq!(second.matches("CACHED").count(), fs_steps, "{second}");
    // A changed context file invalidates the COPY and everything after it.
    s.write("ctx/data.txt", "changed\n");
    let third = build(&root, &s.join("ctx"), &["-t", "cached:1", "--progress=plain"]);
    assert!(third.matches("CACHED").count() < fs_steps, "{third}");
}

#[test]
fn failing_run_names_the_step_and_exit_code() {
    let s = Scratch::new("build-fail");
    let root = store_with_busybox(&s);
    s.write("ctx/Dockerfile", "FROM busybox:latest\nRUN true\nRUN exit 3\n");
    let err = Kiln::with_root(&root).arg("build").arg(s.join("ctx")).fails();
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(err.contains("exit code: 3"), "{err}");
}

#[test]
fn malformed_dockerfile_points_at_line() {
    let s = Scratch::new("build-parse");
    let root = s.join("store");
    s.write("ctx/Dockerfile", "FROM busybox:latest\nRUN true\nFOO bar\n");
    let err = Kiln::with_root(&root).arg("build").arg(s.join("ctx")).fails();
    assert!(err.contains("Dockerfile:3:1"), "{err}");
    assert!(err.to_lowercase().contains("unknown instruction"), "{err}");
}

#[test]
fn multi_stage_copy_from_and_target() {
    let s = Scratch::new("build-multi");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest AS builder\nRUN echo artifact > /artifact\n\
         FROM busybox:latest AS unused\nRUN exit 1\n\
         FROM scratch AS final\nCOPY --from=builder /artifact /artifact\n",
    );
    let out = s.join("out");
    build(
        &root,
        &s.join("ctx"),
        &["--target", "FINAL", "-o", &format!("type=local,dest={}", out.display())],
    );
    assert_eq!(read(&out.join("artifact")), "artifact\n");
    assert!(!out.join("bin").exists());
}

#[test]
fn reproducible_with_timestamp() {
    let s = Scratch::new("build-repro");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\nRUN echo x > /x && touch /y\nCOPY f /f\n",
    );
    s.write("ctx/f", "f\n");
    let id = |n: &str| {
        let f = s.join(n);
        build(
            &root,
            &s.join("ctx"),
            &[
                "--no-cache",
                "--timestamp",
                "1700000000",
                "--iidfile",
                f.to_str().unwrap(),
            ],
        );
        read(&f)
    };
    let a = id("id1");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = id("id2");
    assert_eq!(a, b, "two clean builds with --timestamp must give the same image");
}

#[test]
fn run_step_is_confined() {
    let s = Scratch::new("build-confined");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\n\
         RUN grep -E '^(CapEff|Seccomp):' /proc/self/status > /status\n\
         RUN if mount -t tmpfs none /tmp 2>/dev/null; then echo mounted; else echo denied; fi > /mount\n\
         RUN id -u > /uid && ls / > /rootlist\n",
    );
    let out = s.join("out");
    build(
        &root,
        &s.join("ctx"),
        &["-o", &format!("type=local,dest={}", out.display())],
    );
    let status = read(&out.join("status"));
    assert!(status.contains("CapEff:\t00000000a80425fb"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert_eq!(read(&out.join("mount")), "denied\n");
    assert_eq!(read(&out.join("uid")), "0\n");
    let list = read(&out.join("rootlist"));
    assert!(!list.contains("store"), "{list}");
}

#[test]
fn run_mounts_cache_bind_tmpfs_secret() {
    let s = Scratch::new("build-mounts");
    let root = store_with_busybox(&s);
    s.write("ctx/input.txt", "from the context\n");
    let secret = s.write("secret.txt", "hunter2");
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\n\
         ARG N\n\
         RUN --mount=type=cache,target=/cache,id=c1 echo $N >> /cache/runs && cat /cache/runs > /runs\n\
         RUN --mount=type=bind,source=input.txt,target=/in cat /in > /bound\n\
         RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && mount | grep -q ' /scratch ' && echo tmpfs > /tmpfs\n\
         RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /secret-len\n",
    );
    let out = s.join("out");
    let run = |n: &str| {
        build(
            &root,
            &s.join("ctx"),
            &[
                "--build-arg",
                &format!("N={n}"),
                "--secret",
                &format!("id=tok,src={}", secret.display()),
                "-o",
                &format!("type=local,dest={}", out.display()),
            ],
        )
    };
    run("1");
    run("2");
    // The cache mount persisted between the two builds; nothing of it is in the image.
    assert_eq!(read(&out.join("runs")), "1\n2\n");
    assert!(!out.join("cache").join("runs").exists());
    assert_eq!(read(&out.join("bound")), "from the context\n");
    assert!(!out.join("in").exists(), "bind mount points stay out of the layer");
    assert_eq!(read(&out.join("tmpfs")), "tmpfs\n");
    assert!(!out.join("scratch").join("x").exists());
    assert_eq!(read(&out.join("secret-len")).trim(), "7");
    assert!(
        !out.join("run/secrets/tok").exists(),
        "the secret must not land in a layer"
    );
}

#[test]
fn rawjson_progress_is_one_event_per_line_and_quiet_shows_a_failed_steps_output() {
    let s = Scratch::new("build-rawjson");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\nRUN echo out-line && echo err-line >&2\nENV A=1\n",
    );
    let out = Kiln::with_root(&root)
        .args(["build", "-t", "raw:1", "--progress=rawjson"])
        .arg(s.join("ctx"))
        .output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{err}")))
        .collect();
    let of = |t: &str| events.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    let run = of("step_start")
        .into_iter()
        .find(|e| e["text"].as_str().unwrap_or("").starts_with("RUN"))
        .unwrap_or_else(|| panic!("no RUN step_start: {err}"));
    let step = run["step"].clone();
    let logs: Vec<_> = of("step_log").into_iter().filter(|e| e["step"] == step).collect();
    assert!(
        logs.iter().any(|e| e["line"] == "out-line" && e["stream"] == "stdout")
            && logs.iter().any(|e| e["line"] == "err-line" && e["stream"] == "stderr"),
        "{err}"
    );
    assert!(
        of("step_done")
            .iter()
            .any(|e| e["step"] == step && e["cached"] == false),
        "{err}"
    );
    assert_eq!(of("build_done").len(), 1, "{err}");

    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\nRUN echo quiet-ok\nRUN echo before-failing && exit 3\n",
    );
    let out = Kiln::with_root(&root).args(["build", "-q"]).arg(s.join("ctx")).output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("before-failing"),
        "the failed step's output is shown: {err}"
    );
    assert!(!err.contains("quiet-ok"), "a step that worked stays quiet: {err}");
    assert!(err.contains("exit code: 3"), "{err}");
}
