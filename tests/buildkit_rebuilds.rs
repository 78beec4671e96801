//! BuildKit frontend tests that need more than one build of a changing context, or the default
//! Dockerfile lookup (no `-f`), which the corpus harness (tests/buildkit) does not do: ported
//! here, run as the unprivileged test user. Each test names its origin in
//! moby/buildkit frontend/dockerfile (docs/CONFORMANCE.md lists them).

mod common;
use common::*;
use std::path::Path;

/// `kiln build` of `ctx` (no -f) exported to a fresh local directory, which is returned.
fn build_local(s: &Scratch, root: &Path, ctx: &Path, out: &str) -> std::path::PathBuf {
    let dest = s.join(out);
    Kiln::with_root(root)
        .arg("build")
        .arg("-o")
        .arg(format!("type=local,dest={}", dest.display()))
        .arg(ctx)
        .ok();
    dest
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// dockerfile_core_test.go testContextChangeDirToFile: a context path that was a directory in
/// one build and is a file in the next is copied as the file (no stale cache of the dir).
#[test]
fn context_change_dir_to_file() {
    let s = Scratch::new("bk-dir-to-file");
    let root = store_with_busybox(&s);
    s.write("ctx1/Dockerfile", "FROM scratch\nCOPY foo /\n");
    s.write("ctx1/foo/bar", "contents");
    let first = build_local(&s, &root, &s.join("ctx1"), "out1");
    assert_eq!(read(&first.join("bar")), "contents");
    s.write("ctx2/Dockerfile", "FROM scratch\nCOPY foo /\n");
    s.write("ctx2/foo", "contents2");
    let second = build_local(&s, &root, &s.join("ctx2"), "out2");
    assert_eq!(read(&second.join("foo")), "contents2");
}

/// dockerfile_copy_test.go testCopyWildcardCache: a change to a file only a later COPY reads
/// keeps the RUN before it cached; a change to a file the wildcard COPY matched does not.
#[test]
fn copy_wildcard_cache() {
    let s = Scratch::new("bk-wildcard-cache");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest AS base\nCOPY foo* files/\nRUN cat /dev/urandom | head -c 100 | sha256sum > unique\nCOPY bar files/\nFROM scratch\nCOPY --from=base unique /\n",
    );
    s.write("ctx/foo1", "foo1-data");
    s.write("ctx/foo2", "foo2-data");
    s.write("ctx/bar", "bar-data");
    let ctx = s.join("ctx");
    let first = read(&build_local(&s, &root, &ctx, "out1").join("unique"));
    s.write("ctx/bar", "bar-data-mod");
    let second = read(&build_local(&s, &root, &ctx, "out2").join("unique"));
    assert_eq!(first, second, "changing bar (copied after the RUN) re-ran the RUN");
    s.write("ctx/foo2", "foo2-data-mod");
    let third = read(&build_local(&s, &root, &ctx, "out3").join("unique"));
    assert_ne!(first, third, "changing foo2 (matched by foo*) kept the RUN cached");
}

/// dockerfile_core_test.go testSymlinkedDockerfile: the default `Dockerfile` may be a symlink
/// to another file of the context.
#[test]
fn symlinked_dockerfile() {
    let s = Scratch::new("bk-symlinked-df");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile.web",
        "FROM scratch\nENV foo bar\nCOPY Dockerfile.web /\n",
    );
    std::os::unix::fs::symlink("Dockerfile.web", s.join("ctx/Dockerfile")).unwrap();
    if is_root() {
        chown_to_test_user(&s.join("ctx"));
    }
    let out = build_local(&s, &root, &s.join("ctx"), "out");
    assert!(read(&out.join("Dockerfile.web")).contains("ENV foo bar"));
}

/// dockerfile_core_test.go testDockerfileLowercase (moby/moby#10858): with no `-f`, a context
/// holding only a lowercase `dockerfile` builds from it; with both, `Dockerfile` wins; and
/// `Containerfile` (Buildah's, podman's name) is read when neither is there.
#[test]
fn dockerfile_lowercase() {
    let s = Scratch::new("bk-df-lowercase");
    let root = store_with_busybox(&s);
    s.write("lower/dockerfile", "FROM scratch\nCOPY dockerfile /lower\n");
    s.write("both/dockerfile", "FROM scratch\nCOPY dockerfile /lower\n");
    s.write("both/Dockerfile", "FROM scratch\nCOPY Dockerfile /upper\n");
    s.write("cf/Containerfile", "FROM scratch\nCOPY Containerfile /cf\n");
    s.write("none/foo", "x");
    if is_root() {
        chown_to_test_user(&s.join("lower"));
        chown_to_test_user(&s.join("both"));
        chown_to_test_user(&s.join("cf"));
        chown_to_test_user(&s.join("none"));
    }
    let out = build_local(&s, &root, &s.join("lower"), "out-lower");
    assert!(read(&out.join("lower")).contains("COPY dockerfile"));
    let out = build_local(&s, &root, &s.join("both"), "out-both");
    assert!(read(&out.join("upper")).contains("COPY Dockerfile"));
    assert!(
        !out.join("lower").exists(),
        "with Dockerfile and dockerfile, Dockerfile is read"
    );
    let out = build_local(&s, &root, &s.join("cf"), "out-cf");
    assert!(read(&out.join("cf")).contains("COPY Containerfile"));
    let out = Kiln::with_root(&root).arg("build").arg(s.join("none")).output();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("looked for Dockerfile, dockerfile, Containerfile"),
        "{err}"
    );
}

/// dockerfile_ssh_test.go testSSHSocketParams: the agent socket in the step has the mount's
/// mode, uid and gid (BuildKit gives the step a socket of its own that forwards to the agent;
/// the test gives it a key, here it is an ssh-agent started for the test).
#[test]
fn ssh_socket_params() {
    let s = Scratch::new("bk-ssh-params");
    let root = store_with_busybox(&s);
    let sock = s.join("agent.sock");
    // ssh-agent forks and prints its pid; the guard kills it however the test ends.
    let out = as_user("ssh-agent")
        .arg("-s")
        .arg("-a")
        .arg(&sock)
        .output()
        .expect("ssh-agent (openssh-client) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid: i32 = text
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("ssh-agent printed no pid: {text}"));
    struct Agent(i32);
    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGTERM);
        }
    }
    let _agent = Agent(pid);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\nRUN --mount=type=ssh,mode=741,uid=100,gid=102 [ \"$(stat -c \"%u %g %f\" $SSH_AUTH_SOCK)\" = \"100 102 c1e1\" ]\n",
    );
    let out = Kiln::with_root(&root)
        .arg("build")
        .arg("--ssh")
        .arg(format!("default={}", sock.display()))
        .arg(s.join("ctx"))
        .output();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
