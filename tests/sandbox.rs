//! The rootless sandbox, end to end, run as the unprivileged test user: user namespace and id
//! mapping, confinement of a step (capabilities, seccomp, no way out of the rootfs), exit
//! statuses and error messages, the exact changes a step leaves in its upper dir, Ctrl-C, and
//! `kiln run` of an image serving HTTP.

mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// chown -R to the test user *and group* (ids outside kiln's mapping cannot be copied up).
fn own(p: &Path) {
    if is_root() {
        let st = std::process::Command::new("chown")
            .args(["-R", "tester:tester"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// A busybox rootfs plus lib symlinks so the host's /usr can be bound in (python3, setcap).
fn rootfs(s: &Scratch) -> PathBuf {
    let r = busybox_rootfs(s);
    for (l, t) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        let _ = std::os::unix::fs::symlink(t, r.join(l));
    }
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        r.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\nextra:x:2000:user\n",
    )
    .unwrap();
    own(&s.path);
    r
}

/// `kiln run` on plain lower dirs (top first), with the host's /usr bound read-only.
fn run_on(s: &Scratch, lowers: &[&Path], extra: &[&str], cmd: &[&str]) -> Kiln {
    let mut k = Kiln::with_root(&s.join("store")).arg("run");
    for l in lowers {
        k = k.arg("--lower").arg(l);
    }
    k.args(["-v", "/usr:/usr:ro"]).args(extra).arg("--").args(cmd)
}

fn sh(s: &Scratch, r: &Path, script: &str) -> String {
    run_on(s, &[r], &[], &["sh", "-c", script]).ok()
}

#[test]
fn unshare_is_root_with_the_subuid_range() {
    let s = Scratch::new("sb-unshare");
    let out = Kiln::with_root(&s.join("store"))
        .args(["unshare", "--", "id", "-u"])
        .ok();
    assert_eq!(out.trim(), "0");
    let map = Kiln::with_root(&s.join("store"))
        .args(["unshare", "--", "cat", "/proc/self/uid_map"])
        .ok();
    let lines: Vec<Vec<String>> = map
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(lines.len(), 2, "container 0 -> user, 1.. -> subuid range: {map}");
    assert_eq!(lines[1][0], "1");
    assert_eq!(lines[1][2], "65536");
    let root = Kiln::with_root(&s.join("store"))
        .args(["unshare", "--", "sh", "-c", "echo $KILN_ROOT"])
        .ok();
    assert_eq!(root.trim(), s.join("store").to_str().unwrap());
    let info = Kiln::with_root(&s.join("store"))
        .args(["info", "--format", "json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["idMapping"]["kind"], "full");
    assert_eq!(v["rootfsDriver"], "overlay");
    assert_eq!(v["capabilities"], "00000000a80425fb");
}

#[test]
fn single_uid_fallback_says_why_and_still_runs_steps() {
    let s = Scratch::new("sb-single");
    let r = rootfs(&s);
    let out = Kiln::with_root(&s.join("store"))
        .env("KILN_IDMAP_MODE", "single")
        .args(["unshare", "--", "cat", "/proc/self/uid_map"])
        .output();
    assert!(out.status.success());
    let map = String::from_utf8_lossy(&out.stdout);
    assert_eq!(map.lines().count(), 1, "{map}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one notice line: {err}");
    assert!(
        err.contains("single-uid") && err.contains("KILN_IDMAP_MODE=single is set"),
        "{err}"
    );
    let out = run_on(
        &s,
        &[&r],
        &[],
        &[
            "sh",
            "-c",
            "id -u; touch /f && chown 1000 /f 2>/dev/null && stat -c %u /f || echo chown-refused",
        ],
    )
    .env("KILN_IDMAP_MODE", "single")
    .ok();
    // The kernel refuses the chown; kiln's ownership emulation records it (tests/fuse.rs).
    assert_eq!(out, "0\n1000\n");
}

#[test]
fn step_has_docker_caps_seccomp_and_no_way_out() {
    let s = Scratch::new("sb-confine");
    let r = rootfs(&s);
    s.write("secret-marker", "host secret");
    let marker = s.join("secret-marker");
    let status = sh(
        &s,
        &r,
        "grep -E '^(CapEff|CapBnd|CapPrm|Seccomp|NoNewPrivs):' /proc/self/status",
    );
    assert!(status.contains("CapEff:\t00000000a80425fb"), "{status}");
    assert!(status.contains("CapBnd:\t00000000a80425fb"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");

    // Namespaces and mounts are refused; keyctl gets EPERM, clone3 ENOSYS.
    let out = sh(
        &s,
        &r,
        "unshare -U true 2>/dev/null && echo unshare-ok || echo unshare-denied; \
         mkdir -p /mnt; mount -t tmpfs t /mnt 2>/dev/null && echo mount-ok || echo mount-denied",
    );
    assert!(out.contains("unshare-denied") && out.contains("mount-denied"), "{out}");
    let py = "import ctypes; l=ctypes.CDLL(None, use_errno=True); \
              r=l.syscall(250, 0, 0, 0, 0, 0); print('keyctl', r, ctypes.get_errno()); \
              r=l.syscall(435, 0, 0); print('clone3', r, ctypes.get_errno())";
    let out = run_on(&s, &[&r], &[], &["/usr/bin/python3", "-c", py]).ok();
    assert!(out.contains("keyctl -1 1\n"), "keyctl must fail with EPERM: {out}");
    assert!(out.contains("clone3 -1 38\n"), "clone3 must fail with ENOSYS: {out}");

    // No way to the host's files: /proc/1/root, `..`, or a chroot escape.
    let m = marker.to_str().unwrap();
    let out = sh(
        &s,
        &r,
        &format!(
            "cat /proc/1/root{m} 2>/dev/null && echo LEAK1; cd /../../..; cat .{m} 2>/dev/null && echo LEAK2; \
             ls /proc/1/root/ | grep -q kiln-tests && echo LEAK3; echo done"
        ),
    );
    assert_eq!(out.trim(), "done", "{out}");
    let py = format!(
        "import os\nos.mkdir('/x')\nos.chroot('/x')\nos.chdir('../../../../../../..')\nos.chroot('.')\n\
         print('LEAK' if os.path.exists('{m}') else 'confined')"
    );
    let out = run_on(&s, &[&r], &[], &["/usr/bin/python3", "-c", &py]).ok();
    assert_eq!(out.trim(), "confined");

    // cap-drop ALL, seccomp=unconfined, no-new-privileges
    let out = run_on(
        &s,
        &[&r],
        &[
            "--cap-drop",
            "ALL",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "no-new-privileges",
        ],
        &["grep", "-E", "^(CapEff|Seccomp|NoNewPrivs):", "/proc/self/status"],
    )
    .ok();
    assert!(
        out.contains("CapEff:\t0000000000000000") && out.contains("Seccomp:\t0") && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );
}

#[test]
fn user_workdir_env_hostname_and_network_none() {
    let s = Scratch::new("sb-user");
    let r = rootfs(&s);
    let out = run_on(
        &s,
        &[&r],
        &["-u", "user", "-w", "/work/a/b", "-e", "FOO=bar", "--hostname", "box"],
        &[
            "sh",
            "-c",
            "id; pwd; echo $FOO $HOME; hostname; grep CapEff /proc/self/status",
        ],
    )
    .ok();
    assert!(
        out.contains("uid=1000(user) gid=1000(user) groups=1000(user),2000(extra)"),
        "{out}"
    );
    assert!(out.contains("/work/a/b\nbar /home/user\nbox\n"), "{out}");
    assert!(
        out.contains("CapEff:\t0000000000000000"),
        "a non-root USER has no capabilities: {out}"
    );
    let out = run_on(
        &s,
        &[&r],
        &["--network", "none"],
        &["sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate"],
    )
    .ok();
    assert_eq!(out.split_whitespace().next(), Some("lo"), "{out}");
    assert!(!out.contains("eth"), "{out}");
}

#[test]
fn failures_are_reported() {
    let s = Scratch::new("sb-fail");
    let r = rootfs(&s);
    let out = run_on(&s, &[&r], &[], &["sh", "-c", "echo out; exit 3"]).output();
    assert_eq!(out.status.code(), Some(3));
    let out = run_on(&s, &[&r], &[], &["no-such-command"]).output();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found in $PATH"));
    let out = run_on(&s, &[&r], &["-u", "nosuch"], &["true"]).output();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unable to find user nosuch"),
        "{out:?}"
    );
    // An image without a shell.
    let bare = s.join("bare");
    std::fs::create_dir_all(bare.join("etc")).unwrap();
    own(&s.path);
    let out = run_on(&s, &[&bare], &[], &["/bin/sh", "-c", "true"]).output();
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exec /bin/sh: no such file or directory"),
        "{out:?}"
    );
}

fn tree(upper: &Path) -> Vec<String> {
    let out = Kiln::new()
        .args(["unshare", "--", "sh", "-c"])
        .arg(format!("cd {} && find . -mindepth 1 | sort", upper.display()))
        .ok();
    out.lines().map(|l| l.trim_start_matches("./").to_string()).collect()
}

fn check_changes(driver: &str) {
    let s = Scratch::new(&format!("sb-changes-{driver}"));
    let r = rootfs(&s);
    let low = s.join("low");
    for d in ["data", "opaque"] {
        std::fs::create_dir_all(low.join(d)).unwrap();
    }
    std::fs::write(low.join("data/old.txt"), "old").unwrap();
    std::fs::write(low.join("data/keep.txt"), "keep").unwrap();
    std::fs::write(low.join("opaque/a"), "a").unwrap();
    own(&s.path);
    let upper = s.join("upper");
    let script = "set -e; echo hi > /new.txt; rm /data/old.txt; rm -rf /opaque; mkdir /opaque; touch /opaque/c; \
                  touch /own; chown 1000:1000 /own; touch /suid; chmod 4755 /suid; \
                  cp /bin/busybox /capbin; /usr/sbin/setcap cap_net_raw+ep /capbin; \
                  ln /new.txt /hard; mkfifo /fifo";
    run_on(
        &s,
        &[&low, &r],
        &["--storage-driver", driver, "--upper", upper.to_str().unwrap()],
        &["sh", "-c", script],
    )
    .ok();
    assert_eq!(
        tree(&upper),
        [
            "capbin",
            "data",
            "data/old.txt",
            "fifo",
            "hard",
            "new.txt",
            "opaque",
            "opaque/c",
            "own",
            "suid"
        ],
        "driver {driver}"
    );
    let md = |p: &str| std::fs::symlink_metadata(upper.join(p)).unwrap();
    assert!(md("data/old.txt").file_type().is_char_device() && md("data/old.txt").rdev() == 0);
    assert!(md("fifo").file_type().is_fifo());
    assert_eq!(md("hard").ino(), md("new.txt").ino());
    assert_eq!(md("suid").mode() & 0o7777, 0o4755);
    // 1000 in the namespace is subuid base + 999 on the host
    assert_ne!(
        md("own").uid(),
        md("suid").uid(),
        "chown 1000 maps to a subordinate id on the host"
    );
    let out = Kiln::new()
        .args(["unshare", "--", "sh", "-c"])
        .arg(format!(
            "cd {} && stat -c '%u:%g' own && python3 -c \"import os; print(os.getxattr('opaque','user.overlay.opaque')); print(len(os.getxattr('capbin','security.capability')) > 0)\"",
            upper.display()
        ))
        .ok();
    assert_eq!(out, "1000:1000\nb'y'\nTrue\n", "driver {driver}");
}

#[test]
fn upper_holds_exactly_the_changes_overlay() {
    check_changes("overlay");
}

#[test]
fn upper_holds_exactly_the_changes_copy() {
    check_changes("copy");
}

fn kiln_procs_of(marker: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
        {
            v.push(pid);
        }
    }
    v
}

/// Processes whose whole command line is `cmdline` (NUL-separated, NUL-terminated).
fn step_procs(cmdline: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline.as_bytes()) {
            v.push(pid);
        }
    }
    v
}

#[test]
fn ctrl_c_leaves_nothing_behind() {
    let s = Scratch::new("sb-sigint");
    let r = rootfs(&s);
    let store = s.join("store");
    let marker = "4242";
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut c = as_user(kiln_bin().to_str().unwrap());
        c.arg("--root")
            .arg(&store)
            .args(["run", "--lower"])
            .arg(&r)
            .args(["--", "sleep", marker]);
        c.process_group(0).stdin(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let t = Instant::now();
    // The step itself (argv[0] is `sleep`), not kiln, whose own command line holds the same
    // words: a Ctrl-C before the step runs is a different case (nothing is mounted yet).
    while step_procs(&format!("sleep\0{marker}\0")).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Like Ctrl-C on a terminal: SIGINT to the whole process group.
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT).unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
    let t = Instant::now();
    while !kiln_procs_of(marker).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "processes left behind: {:?}",
            kiln_procs_of(marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let tmp: Vec<_> = std::fs::read_dir(store.join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp dirs left behind: {tmp:?}");
    // The files generated for /etc (resolv.conf, hosts, hostname) are gone too.
    let t = Instant::now();
    loop {
        let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("kiln-etc-"))
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .map(|m| m >= started)
                    .unwrap_or(false)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "generated /etc files left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(s.path.to_str().unwrap()), "mounts left behind");
}

/// A kiln killed at any moment of a build (SIGKILL or Ctrl-C to its process group, from the
/// first milliseconds to the middle of a RUN) leaves no process or mount, and once kiln runs
/// again on the store nothing of it is left in tmp/ (probe dirs, step scratch dirs, …).
#[test]
fn killed_at_any_moment_leaves_nothing_once_kiln_runs_again() {
    let s = Scratch::new("sb-kill-any");
    let store = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\nRUN echo one > /one\nRUN sleep 4343\n",
    );
    let ctx = s.join("ctx");
    for (i, delay_ms) in [0u64, 30, 80, 150, 300, 600, 1200].into_iter().enumerate() {
        let sig = if i % 2 == 0 {
            nix::sys::signal::SIGKILL
        } else {
            nix::sys::signal::SIGINT
        };
        let mut child = {
            use std::os::unix::process::CommandExt;
            let mut c = as_user(kiln_bin().to_str().unwrap());
            c.arg("--root").arg(&store).args(["build", "--no-cache"]).arg(&ctx);
            c.process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            c.spawn().unwrap()
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        let _ = child.wait();
        let t = Instant::now();
        let store_arg = store.to_string_lossy().to_string();
        let left = || [kiln_procs_of("4343"), kiln_procs_of(&store_arg)].concat();
        while !left().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{sig} after {delay_ms} ms: processes left behind: {:?}",
                left()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mi.contains(s.path.to_str().unwrap()),
            "{sig} after {delay_ms} ms: mounts left behind"
        );
        // Any kiln command opens the store and sweeps what dead processes left.
        Kiln::with_root(&store).arg("images").ok();
        let tmp: Vec<_> = std::fs::read_dir(store.join("tmp"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            tmp.is_empty(),
            "{sig} after {delay_ms} ms: temp entries left behind: {tmp:?}"
        );
    }
    Kiln::with_root(&store).arg("fsck").ok();
}

#[test]
fn kiln_run_image_serves_http_with_port_forwarding() {
    let s = Scratch::new("sb-http");
    let store = store_with_busybox(&s);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cport = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = format!(
        "mkdir -p /www && echo hello-from-kiln > /www/index.html && exec httpd -f -p 127.0.0.1:{cport} -h /www"
    );
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut c = as_user(kiln_bin().to_str().unwrap());
        c.arg("--root").arg(&store).args([
            "run",
            "--rm",
            "-p",
            &format!("{port}:{cport}"),
            "busybox:latest",
            "sh",
            "-c",
            &script,
        ]);
        c.process_group(0).stdin(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let t = Instant::now();
    let body = loop {
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let mut b = String::new();
            let _ = conn.read_to_string(&mut b);
            if b.contains("200") {
                break b;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no answer on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("hello-from-kiln"), "{body}");
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    let _ = child.wait();
}

/// Per-step overhead of a no-op step (`kiln run ... true` inside kiln's namespace: process
/// start, overlay mount, namespaces, mounts, exec, teardown). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn bench_noop_step() {
    let s = Scratch::new("sb-bench");
    let r = rootfs(&s);
    let store = s.join("store");
    let script = format!(
        "for i in $(seq 20); do s=$(date +%s%N); {k} --root {st} run --lower {r} -- true; e=$(date +%s%N); echo $(( (e-s)/1000 )); done",
        k = kiln_bin().display(),
        st = store.display(),
        r = r.display()
    );
    let out = Kiln::with_root(&store)
        .args(["unshare", "--", "sh", "-c", &script])
        .ok();
    let mut us: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    us.sort();
    println!(
        "no-op step (kiln run true), median of {}: {:.1} ms",
        us.len(),
        us[us.len() / 2] as f64 / 1000.0
    );
}
