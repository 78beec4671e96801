//! Shared harness for the integration tests: runs the kiln binary as the unprivileged test
//! user (when the test runner is root), in scratch directories that user can write, and
//! starts throwaway registries and base images.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The unprivileged user tests run kiln as when the runner is root (created by scripts/setup.sh).
pub const TEST_USER: &str = "tester";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A scratch dir the test user owns; removed (through `kiln unshare` when needed) on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = std::env::temp_dir().join("kiln-tests");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let path = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&base)
            .unwrap()
            .keep();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            chown_to_test_user(&path);
        }
        Scratch { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// Writes a file (and its parents) owned by the test user.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        if is_root() {
            chown_to_test_user(&self.path);
        }
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("KILN_TEST_KEEP").is_some() {
            return;
        }
        // Unpacked layers belong to sub-ids: only root or the namespace can remove them.
        if std::fs::remove_dir_all(&self.path).is_err() {
            let _ = Kiln::new()
                .args(["unshare", "--", "rm", "-rf"])
                .arg(&self.path)
                .output();
        }
    }
}

pub fn chown_to_test_user(p: &Path) {
    let st = Command::new("chown")
        .args(["-R", &format!("{TEST_USER}:{TEST_USER}")])
        .arg(p)
        .status()
        .expect("chown");
    assert!(st.success(), "chown -R {TEST_USER}:{TEST_USER} {} failed", p.display());
}

/// The kiln binary, copied where the test user can execute it.
pub fn kiln_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
        if !is_root() {
            return src;
        }
        let out = Command::new("id").arg(TEST_USER).output().expect("id");
        assert!(
            out.status.success(),
            "the test user {TEST_USER} does not exist: run scripts/setup.sh as root first (integration tests run kiln unprivileged)"
        );
        let dir = std::env::temp_dir().join(format!("kiln-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("kiln");
        std::fs::copy(&src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        dst
    })
}

/// Runs `program args` as the test user (or as ourselves when not root).
pub fn as_user(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args([
            "-u",
            TEST_USER,
            "--",
            "env",
            "HOME=/tmp/kiln-tests/home",
            "XDG_DATA_HOME=",
            // skopeo and buildah look for auth.json under the runtime dir.
            "XDG_RUNTIME_DIR=/tmp/kiln-tests/home/run",
            program,
        ]);
        std::fs::create_dir_all("/tmp/kiln-tests/home/run").unwrap();
        chown_to_test_user(Path::new("/tmp/kiln-tests/home"));
        c
    } else {
        Command::new(program)
    }
}

/// Runs a command, asserts it succeeded (showing its output if not), returns its stdout.
pub fn command_ok(mut c: Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?} could not start: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kiln invocation builder.
pub struct Kiln {
    cmd: Command,
}

impl Kiln {
    pub fn new() -> Kiln {
        let mut cmd = as_user(kiln_bin().to_str().unwrap());
        cmd.current_dir("/").stdin(Stdio::null());
        Kiln { cmd }
    }

    /// kiln with `--root ROOT` for a store.
    pub fn with_root(root: &Path) -> Kiln {
        let mut k = Kiln::new();
        k.cmd.arg("--root").arg(root);
        k
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Kiln {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, a: I) -> Kiln
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(a);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Kiln {
        self.cmd.env(k, v);
        self
    }

    pub fn output(mut self) -> Output {
        self.cmd.output().expect("running kiln")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(self) -> String {
        let desc = format!("{:?}", self.cmd);
        let out = self.output();
        assert!(
            out.status.success(),
            "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure; returns stdout+stderr.
    pub fn fails(self) -> String {
        let desc = format!("{:?}", self.cmd);
        let out = self.output();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "{desc} succeeded but should have failed:\n{text}"
        );
        text
    }
}

/// A busybox rootfs dir (from busybox-static) owned by the test user.
pub fn busybox_rootfs(scratch: &Scratch) -> PathBuf {
    let r = scratch.join("busybox-rootfs");
    for d in ["bin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is not installed: run scripts/setup.sh");
    std::fs::copy(bb, r.join("bin/busybox")).unwrap();
    let list = Command::new(bb).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let l = r.join("bin").join(applet);
        if !l.exists() {
            std::os::unix::fs::symlink("busybox", l).unwrap();
        }
    }
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    if is_root() {
        chown_to_test_user(&scratch.path);
    }
    r
}

/// A store with `busybox:latest` imported from busybox-static.
pub fn store_with_busybox(scratch: &Scratch) -> PathBuf {
    let rootfs = busybox_rootfs(scratch);
    let root = scratch.join("store");
    Kiln::with_root(&root)
        .arg("import")
        .arg(&rootfs)
        .arg("busybox:latest")
        .ok();
    root
}

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(addr: &str) {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr}");
}

/// bcrypt via libcrypt (libxcrypt supports `$2b$`), for an htpasswd file.
pub fn bcrypt(password: &str) -> String {
    #[link(name = "crypt")]
    unsafe extern "C" {
        fn crypt(key: *const libc::c_char, salt: *const libc::c_char) -> *mut libc::c_char;
    }
    let key = std::ffi::CString::new(password).unwrap();
    let salt = std::ffi::CString::new("$2b$05$abcdefghijklmnopqrstuu").unwrap();
    // SAFETY: both arguments are NUL-terminated; the result is a static buffer copied at once.
    let out = unsafe { crypt(key.as_ptr(), salt.as_ptr()) };
    assert!(!out.is_null(), "crypt() failed");
    let s = unsafe { std::ffi::CStr::from_ptr(out) }.to_string_lossy().into_owned();
    assert!(s.starts_with("$2b$"), "libcrypt has no bcrypt: {s}");
    s
}

/// A throwaway docker-registry; killed (by its pid) on drop.
pub struct Registry {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_with(htpasswd, false, false)
    }

    /// With `tls`, a self-signed certificate for 127.0.0.1 (made with openssl).
    pub fn start_with(htpasswd: Option<(&str, &str)>, tls: bool, readonly: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: {addr}}}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = htpasswd {
            let f = dir.path().join("htpasswd");
            std::fs::write(&f, format!("{u}:{}\n", bcrypt(p))).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                f.display()
            ));
        }
        if readonly {
            cfg = cfg.replace("storage:\n", "storage:\n  maintenance: {readonly: {enabled: true}}\n");
        }
        if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let st = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                    "-days",
                    "2",
                ])
                .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "openssl req failed");
            cfg = cfg.replace(
                &format!("http: {{addr: {addr}}}\n"),
                &format!(
                    "http:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ),
            );
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "docker-registry is not installed: run scripts/setup.sh"
        );
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(&addr);
        Registry { addr, child, _dir: dir }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kiln {
    /// Starts kiln in the background.
    pub fn spawn(mut self) -> std::process::Child {
        self.cmd.spawn().expect("starting kiln")
    }
}
