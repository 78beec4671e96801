//! Security: what a RUN step (or `kiln run`'s process) can reach besides its rootfs —
//! inherited file descriptors (only 0, 1 and 2 get through), secrets (never on a disk, even
//! when kiln is killed mid-step) and the build context of bind mounts (.dockerignore applies).

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// kiln as the test user with `victim` open (read-write, not close-on-exec) as fd 7 and
/// fd 100, as a careless parent process would leave them.
fn kiln_with_fds(root: &Path, victim: &Path) -> Command {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(victim).unwrap();
    let mut c = as_user(kiln_bin().to_str().unwrap());
    c.current_dir("/").stdin(Stdio::null()).arg("--root").arg(root);
    let raw = f.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; the file stays open in the parent until spawn.
    unsafe {
        c.pre_exec(move || {
            for target in [7, 100] {
                if libc::dup2(raw, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // Keep the file open for as long as the command lives.
    std::mem::forget(f);
    c
}

/// The fd numbers a `ls /proc/self/fd` printed.
fn fd_list(listing: &str) -> Vec<u32> {
    let mut v: Vec<u32> = listing.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    v.sort();
    v
}

const LEAK: &str = "ls /proc/self/fd; (echo pwned >&7) 2>/dev/null; (echo pwned >&100) 2>/dev/null; true";

#[test]
fn inherited_fds_do_not_reach_run_steps() {
    let s = Scratch::new("escape-fds-build");
    let root = store_with_busybox(&s);
    let victim = s.write("victim.txt", "original\n");
    s.write(
        "ctx/Dockerfile",
        &format!("FROM busybox:latest\nRUN ( {LEAK} ) > /fds\n"),
    );
    let out = s.join("out");
    let res = kiln_with_fds(&root, &victim)
        .arg("build")
        .arg("-o")
        .arg(format!("type=local,dest={}", out.display()))
        .arg(s.join("ctx"))
        .output()
        .unwrap();
    assert!(res.status.success(), "kiln build failed:\n{}", text(&res));
    let fds = fd_list(&read(&out.join("fds")));
    // 0, 1, 2 and the directory ls itself opened (the lowest free number: 3).
    assert_eq!(fds, vec![0, 1, 2, 3], "the RUN step saw other fds: {fds:?}");
    assert_eq!(read(&victim), "original\n", "the step wrote through an inherited fd");
}

#[test]
fn inherited_fds_do_not_reach_kiln_run() {
    let s = Scratch::new("escape-fds-run");
    let root = store_with_busybox(&s);
    let victim = s.write("victim.txt", "original\n");
    let res = kiln_with_fds(&root, &victim)
        .args(["run", "--rm", "busybox:latest", "sh", "-c", LEAK])
        .output()
        .unwrap();
    assert!(res.status.success(), "kiln run failed:\n{}", text(&res));
    let fds = fd_list(&String::from_utf8_lossy(&res.stdout));
    assert_eq!(fds, vec![0, 1, 2, 3], "kiln run's process saw other fds: {fds:?}");
    assert_eq!(read(&victim), "original\n", "the process wrote through an inherited fd");
}

/// Files under `dirs` that contain `marker` (grep, devices and fifos skipped).
fn files_containing(marker: &str, dirs: &[PathBuf]) -> Vec<String> {
    let dirs: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    let out = Command::new("grep")
        .args(["-r", "-l", "-s", "-F", "-D", "skip", "--", marker])
        .args(&dirs)
        .output()
        .expect("running grep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn unique_marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("KILN{what}MARK{}x{nanos:x}", std::process::id())
}

/// A secret's source file where the grep does not look (the marker must be found only where
/// kiln put it): /dev/shm, readable by the test user.
struct ShmFile(PathBuf);

impl ShmFile {
    fn new(content: &str) -> ShmFile {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("kiln-escape-")
            .tempdir_in("/dev/shm")
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = dir.join("secret");
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        ShmFile(p)
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

#[test]
fn secrets_never_reach_the_disk_even_when_kiln_is_killed() {
    let s = Scratch::new("escape-secrets");
    let root = store_with_busybox(&s);
    let file_marker = unique_marker("FILE");
    let env_marker = unique_marker("ENV");
    let src = ShmFile::new(&format!("{file_marker}\n"));
    let home = PathBuf::from("/tmp/kiln-tests/home");
    let places = vec![root.clone(), PathBuf::from("/tmp"), PathBuf::from("/var/tmp"), home];
    let secret_args = |k: Kiln| {
        k.env("KILN_T_SECRET", &env_marker)
            .arg("build")
            .arg("--secret")
            .arg(format!("id=s,src={}", src.0.display()))
            .arg("--secret")
            .arg("id=e,env=KILN_T_SECRET")
    };

    // A completed build: the secret is seen by the step and left nowhere.
    s.write(
        "done/Dockerfile",
        "FROM busybox:latest\n\
         RUN --mount=type=secret,id=s --mount=type=secret,id=e,env=SECRET_E \
         grep -c MARK /run/secrets/s > /file-seen && echo \"$SECRET_E\" | grep -c MARK > /env-seen\n",
    );
    let out = s.join("out");
    secret_args(Kiln::with_root(&root))
        .arg("-t")
        .arg("secret-done")
        .arg("-o")
        .arg(format!("type=local,dest={}", out.display()))
        .arg(s.join("done"))
        .ok();
    assert_eq!(read(&out.join("file-seen")).trim(), "1");
    assert_eq!(read(&out.join("env-seen")).trim(), "1");
    assert!(
        !out.join("run/secrets/s").exists(),
        "the secret's mount point must not land in the image"
    );
    let found = files_containing(&file_marker, &places);
    assert!(found.is_empty(), "the file secret was written to disk: {found:?}");
    let found = files_containing(&env_marker, &places);
    assert!(found.is_empty(), "the env secret was written to disk: {found:?}");

    // A build killed (SIGKILL, every process of it) while the step has the secrets.
    s.write(
        "killed/Dockerfile",
        "FROM busybox:latest\n\
         RUN --mount=type=secret,id=s --mount=type=secret,id=e,env=SECRET_E \
         cat /run/secrets/s && echo STEP-IS-\"RUNNING\" && sleep 30\n",
    );
    let mut cmd = as_user(kiln_bin().to_str().unwrap());
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("KILN_T_SECRET", &env_marker)
        .arg("--root")
        .arg(&root)
        .arg("build")
        .arg("--secret")
        .arg(format!("id=s,src={}", src.0.display()))
        .arg("--secret")
        .arg("id=e,env=KILN_T_SECRET")
        .arg(s.join("killed"))
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let pgid = child.id() as i32;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            // (The step's header shows the command, with the quotes.)
            if line.contains("STEP-IS-RUNNING") {
                let _ = tx.send(());
            }
        }
        seen
    });
    let running = rx.recv_timeout(Duration::from_secs(120)).is_ok();
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let log = reader.join().unwrap();
    assert!(running, "the step did not start:\n{log}");
    assert!(log.contains(&file_marker), "the step did not see the secret:\n{log}");
    // The step's processes die with their helper (parent-death signal, PID namespace).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let ps = Command::new("pgrep")
            .args(["-u", TEST_USER, "-f", "sleep 30"])
            .output()
            .unwrap();
        if ps.stdout.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let found = files_containing(&file_marker, &places);
    assert!(found.is_empty(), "after kill -9, the file secret is on disk: {found:?}");
    let found = files_containing(&env_marker, &places);
    assert!(found.is_empty(), "after kill -9, the env secret is on disk: {found:?}");
}

#[test]
fn run_bind_mount_of_the_context_honours_dockerignore() {
    let s = Scratch::new("escape-bindctx");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/.dockerignore",
        "secret.txt\nsub/hidden.txt\nnope\n!nope/back.txt\n",
    );
    s.write("ctx/keep.txt", "keep\n");
    s.write("ctx/secret.txt", "do not show\n");
    s.write("ctx/sub/keep2.txt", "keep2\n");
    s.write("ctx/sub/hidden.txt", "hidden\n");
    s.write("ctx/nope/gone.txt", "gone\n");
    s.write("ctx/nope/back.txt", "back\n");
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\n\
         RUN --mount=type=bind,target=/ctx ls -a /ctx /ctx/nope > /out\n\
         RUN --mount=type=bind,source=sub,target=/sub ls -a /sub > /out-sub\n\
         RUN --mount=type=bind,target=/ctx,rw ls -a /ctx > /out-rw && cat /ctx/keep.txt >> /out-rw\n\
         RUN --mount=type=bind,target=/ctx (cat /ctx/secret.txt || echo unreadable) > /cat 2>/dev/null\n\
         USER 65534\n\
         RUN --mount=type=bind,target=/ctx cat /ctx/keep.txt /ctx/sub/keep2.txt > /tmp/as-nobody\n",
    );
    let out = s.join("out");
    let res = Kiln::with_root(&root)
        .arg("build")
        .arg("-o")
        .arg(format!("type=local,dest={}", out.display()))
        .arg(s.join("ctx"))
        .output();
    assert!(res.status.success(), "kiln build failed:\n{}", text(&res));
    let listing = read(&out.join("out"));
    assert!(listing.contains("keep.txt"), "{listing}");
    assert!(listing.contains("sub"), "{listing}");
    assert!(listing.contains("back.txt"), "an exception re-includes: {listing}");
    assert!(!listing.contains("secret.txt"), "an ignored file is visible: {listing}");
    assert!(!listing.contains("gone.txt"), "an ignored file is visible: {listing}");
    let sub = read(&out.join("out-sub"));
    assert!(sub.contains("keep2.txt"), "{sub}");
    assert!(!sub.contains("hidden.txt"), "an ignored file is visible: {sub}");
    let rw = read(&out.join("out-rw"));
    assert!(rw.contains("keep.txt") && rw.contains("keep\n"), "{rw}");
    assert!(!rw.contains("secret.txt"), "an ignored file is visible: {rw}");
    assert_eq!(read(&out.join("cat")), "unreadable\n");
    assert_eq!(
        read(&out.join("tmp/as-nobody")),
        "keep\nkeep2\n",
        "readable as another user"
    );
    // An ignored file is not in the context a bind mount can name either.
    s.write(
        "ctx/bad.Dockerfile",
        "FROM busybox:latest\nRUN --mount=type=bind,source=secret.txt,target=/s cat /s\n",
    );
    let res = Kiln::with_root(&root)
        .arg("build")
        .arg("-f")
        .arg(s.join("ctx/bad.Dockerfile"))
        .arg(s.join("ctx"))
        .output();
    assert!(!res.status.success(), "an ignored file was bound:\n{}", text(&res));
    assert!(!text(&res).contains("do not show"), "{}", text(&res));
    // Nothing of the filtered context is left once the build is over.
    let tmp: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !tmp.iter().any(|n| n.to_string_lossy().starts_with("bindctx-")),
        "the filtered context was left behind: {tmp:?}"
    );
}
