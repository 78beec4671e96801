//! The sandbox helper process (`kiln __sandbox SPECFILE`): a fresh, single-threaded kiln that
//! sets up the step's namespaces and becomes the parent of its PID 1.

use super::mounts::{self, Generated};
use super::syscall::{RealSyscall, Syscall};
use super::{Network, RunSpec, SeccompChoice, caps, seccomp};
use anyhow::{Context, Result, bail};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// Default PATH of a step whose environment has none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `run` hands to the helper: the spec plus the seccomp filter compiled by the caller
/// (compiling takes tens of milliseconds, so it is done once per process and cached).
#[derive(Debug, Serialize, Deserialize)]
pub struct HelperInput {
    pub spec: RunSpec,
    /// The BPF program (base64 of raw `sock_filter`s); `None` = no filter.
    pub bpf: Option<String>,
    /// Chroot isolation (no namespaces, no mounts; see [`super::chroot`]): the rootfs was
    /// prepared by the caller.
    #[serde(default)]
    pub chroot: bool,
}

/// Reads (and deletes) the input file written by [`super::run`].
pub fn read_spec(path: &Path) -> Result<HelperInput> {
    let text = std::fs::read(path).with_context(|| format!("cannot read the sandbox spec {}", path.display()))?;
    let _ = std::fs::remove_file(path);
    serde_json::from_slice(&text).context("invalid sandbox spec")
}

/// Compiles the seccomp filter `spec` asks for (cached per profile and capability set).
pub fn compiled_filter(spec: &RunSpec) -> Result<Option<std::sync::Arc<Vec<u8>>>> {
    type Cache = std::sync::Mutex<std::collections::HashMap<(SeccompChoice, Vec<String>), std::sync::Arc<Vec<u8>>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    if spec.seccomp == SeccompChoice::Unconfined {
        return Ok(None);
    }
    let mut names = caps::names(&caps::effective(&spec.cap_add, &spec.cap_drop)?);
    names.sort();
    let key = (spec.seccomp.clone(), names);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(b) = cache.lock().unwrap().get(&key) {
        return Ok(Some(b.clone()));
    }
    let bpf = match &spec.seccomp {
        SeccompChoice::Profile(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read seccomp profile {}", p.display()))?;
            let prof = seccomp::parse_profile(&text).with_context(|| format!("in {}", p.display()))?;
            seccomp::compile(&prof, &key.1)?
        }
        _ => seccomp::compile(&seccomp::parse_profile(seccomp::DEFAULT_PROFILE)?, &key.1)?,
    };
    let bpf = std::sync::Arc::new(bpf);
    cache.lock().unwrap().insert(key, bpf.clone());
    Ok(Some(bpf))
}

static CHILD: AtomicI32 = AtomicI32::new(0);
static GOT_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn kill_child(sig: libc::c_int) {
    GOT_SIGNAL.store(sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SIGKILL to PID 1 of the namespace takes every process of the step with it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn loopback_up() -> Result<()> {
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open a socket to configure loopback");
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let r = unsafe {
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req)
    };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(sock) };
    if r != 0 {
        return Err(err).context("cannot bring the loopback interface up");
    }
    Ok(())
}

/// Files generated for the step's /etc.
fn generate(dir: &Path, spec: &RunSpec, hostname: &str) -> Result<Generated> {
    let g = Generated {
        resolv_conf: dir.join("resolv.conf"),
        hosts: dir.join("hosts"),
        hostname: dir.join("hostname"),
    };
    let resolv = match spec.network {
        Network::Host => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        Network::None => String::new(),
    };
    std::fs::write(&g.resolv_conf, resolv)?;
    std::fs::write(&g.hosts, mounts::hosts_file(spec.network, hostname))?;
    std::fs::write(&g.hostname, format!("{hostname}\n"))?;
    for p in [&g.resolv_conf, &g.hosts, &g.hostname] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(g)
}

fn env_has(env: &[String], key: &str) -> bool {
    env.iter().any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
}

fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// Everything the child needs, prepared before the fork.
struct Prepared {
    plan: Vec<mounts::Step>,
    rootfs: PathBuf,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<nix::unistd::Gid>,
    caps: ::caps::CapsHashSet,
    bpf: Option<Vec<u8>>,
    no_new_privs: bool,
    /// Single-uid mode: the socket to hand the ownership-emulation listener to the helper
    /// (see [`super::idemu`]).
    idemu: Option<std::os::fd::RawFd>,
    tty: bool,
    argv: Vec<CString>,
    envp: Vec<CString>,
    path: String,
}

/// Runs the step described by `spec`; returns its exit code (128+signal when killed).
pub fn helper_main(input: HelperInput) -> Result<i32> {
    let spec = input.spec;
    if spec.args.is_empty() {
        bail!("no command to run");
    }
    let chroot = input.chroot;
    let rootfs = spec.rootfs.clone();
    let user_spec = if spec.user.is_empty() { "0" } else { spec.user.as_str() };
    let user = crate::users::resolve_user(&rootfs, user_spec)?;
    let cap_set = caps::effective(&spec.cap_add, &spec.cap_drop)?;
    let bpf = match &input.bpf {
        None => None,
        Some(b64) => {
            use base64::Engine;
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .context("invalid seccomp filter in the spec")?,
            )
        }
    };
    let hostname = if spec.hostname.is_empty() {
        "kiln".to_string()
    } else {
        spec.hostname.clone()
    };
    let gen_dir = tempfile::Builder::new()
        .prefix("kiln-etc-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let generated = if chroot {
        None
    } else {
        Some(generate(gen_dir.path(), &spec, &hostname)?)
    };

    // The working directory, created as root inside the rootfs.
    let cwd = if spec.cwd.is_empty() {
        "/".to_string()
    } else {
        spec.cwd.clone()
    };
    crate::fsutil::Root::open(&rootfs)
        .and_then(|r| r.mkdir_all(&cwd, 0o755))
        .with_context(|| format!("cannot create the working directory {cwd} in the rootfs"))?;

    let mut env = spec.env.clone();
    if !env_has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env_has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !env_has(&env, "HOME") {
        env.push(format!("HOME={}", if user.home.is_empty() { "/" } else { &user.home }));
    }
    // Single-uid user namespace: ownership and ids are emulated for the step (see idemu).
    let idemu_socks = if !chroot && super::idemu::wanted() {
        let mut sv = [0; 2];
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("cannot create a socket pair");
        }
        use std::os::fd::FromRawFd;
        Some(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
    } else {
        None
    };
    let cstr = |s: &str| CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"));
    let prepared = Prepared {
        plan: match &generated {
            Some(g) => mounts::plan(&spec, g, spec.network == Network::None)?,
            None => Vec::new(),
        },
        rootfs: rootfs.clone(),
        cwd: cstr(&cwd)?,
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect(),
        caps: cap_set,
        bpf,
        no_new_privs: spec.no_new_privs,
        idemu: idemu_socks.as_ref().map(|(_, c)| std::os::fd::AsRawFd::as_raw_fd(c)),
        tty: spec.tty,
        argv: spec.args.iter().map(|a| cstr(a)).collect::<Result<_>>()?,
        envp: env.iter().map(|e| cstr(e)).collect::<Result<_>>()?,
        path: env_get(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string(),
    };

    if chroot {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        SECCOMP_ACTIVE.store(
            status
                .lines()
                .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')),
            Ordering::SeqCst,
        );
        return chroot_main(&prepared, gen_dir);
    }
    // The supervisor thread starts before the PID namespace is unshared: a process whose
    // children go to another PID namespace cannot create threads.
    let (_supervisor, idemu_child) = match idemu_socks {
        Some((p, c)) => (
            Some(super::idemu::spawn_supervisor(p, super::idemu::state_dir(&rootfs))?),
            Some(c),
        ),
        None => (None, None),
    };
    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).context("cannot create the step's namespaces (pid, ipc, uts)")?;
    if spec.network == Network::None {
        loopback_up()?;
    }
    RealSyscall.sethostname(&hostname).context("cannot set the hostname")?;

    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // SAFETY: the helper is single-threaded.
    match unsafe { nix::unistd::fork() }.context("cannot fork the step's init process")? {
        nix::unistd::ForkResult::Child => {
            drop(err_r);
            let (code, msg) = child(&prepared);
            let line = format!("{code}:{msg}");
            let _ = nix::unistd::write(&err_w, line.as_bytes());
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(err_w);
            drop(idemu_child);
            CHILD.store(child.as_raw(), Ordering::SeqCst);
            let h = nix::sys::signal::SigHandler::Handler(kill_child);
            for s in [
                nix::sys::signal::SIGINT,
                nix::sys::signal::SIGTERM,
                nix::sys::signal::SIGHUP,
            ] {
                // SAFETY: the handler only calls kill(2).
                unsafe {
                    let _ = nix::sys::signal::signal(s, h);
                }
            }
            let msg = read_all(&err_r);
            drop(gen_dir); // the bind mounts keep the files alive
            let mut code = super::userns::wait_child(child);
            if _supervisor.is_some() {
                let _ = std::fs::remove_dir_all(super::idemu::state_dir(&rootfs));
            }
            let sig = GOT_SIGNAL.load(Ordering::SeqCst);
            if sig != 0 && code == 128 + libc::SIGKILL {
                code = 128 + sig; // stopped because we were told to stop
            }
            if !msg.is_empty() {
                let text = String::from_utf8_lossy(&msg);
                let (c, m) = text.split_once(':').unwrap_or(("125", &text));
                eprintln!("kiln: {m}");
                return Ok(c.parse().unwrap_or(125));
            }
            Ok(code)
        }
    }
}

extern "C" fn kill_group(sig: libc::c_int) {
    GOT_SIGNAL.store(sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // No PID namespace: the step's session (process group) goes.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Chroot isolation: no namespaces at all. The step runs in its own session, chrooted into the
/// prepared rootfs, with Docker's capabilities and a seccomp filter where one can be installed
/// (a runtime's filter is inherited anyway); everything left in its session is killed at the end.
fn chroot_main(p: &Prepared, gen_dir: tempfile::TempDir) -> Result<i32> {
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // SAFETY: the helper is single-threaded.
    match unsafe { nix::unistd::fork() }.context("cannot fork the step's process")? {
        nix::unistd::ForkResult::Child => {
            drop(err_r);
            let (code, msg) = chroot_child(p);
            let line = format!("{code}:{msg}");
            let _ = nix::unistd::write(&err_w, line.as_bytes());
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(err_w);
            CHILD.store(child.as_raw(), Ordering::SeqCst);
            let h = nix::sys::signal::SigHandler::Handler(kill_group);
            for s in [
                nix::sys::signal::SIGINT,
                nix::sys::signal::SIGTERM,
                nix::sys::signal::SIGHUP,
            ] {
                // SAFETY: the handler only calls kill(2).
                unsafe {
                    let _ = nix::sys::signal::signal(s, h);
                }
            }
            let msg = read_all(&err_r);
            drop(gen_dir);
            let mut code = super::userns::wait_child(child);
            // Daemons the step left behind in its session.
            unsafe { libc::kill(-child.as_raw(), libc::SIGKILL) };
            let sig = GOT_SIGNAL.load(Ordering::SeqCst);
            if sig != 0 && code == 128 + libc::SIGKILL {
                code = 128 + sig;
            }
            if !msg.is_empty() {
                let text = String::from_utf8_lossy(&msg);
                let (c, m) = text.split_once(':').unwrap_or(("125", &text));
                eprintln!("kiln: {m}");
                return Ok(c.parse().unwrap_or(125));
            }
            Ok(code)
        }
    }
}

fn chroot_child(p: &Prepared) -> (i32, String) {
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if p.tty {
        // Still its own process group, so the end-of-step kill finds everything.
        let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    } else {
        let _ = nix::unistd::setsid();
    }
    let sys = RealSyscall;
    if let Err(e) = sys.chroot(&p.rootfs) {
        return (125, format!("cannot chroot into {}: {e}", p.rootfs.display()));
    }
    if let Err(e) = nix::unistd::chdir(p.cwd.as_c_str()) {
        return (125, format!("cannot change to the working directory {:?}: {e}", p.cwd));
    }
    let have_admin =
        ::caps::has_cap(None, ::caps::CapSet::Effective, ::caps::Capability::CAP_SYS_ADMIN).unwrap_or(false);
    let inherited_filter = SECCOMP_ACTIVE.load(Ordering::SeqCst);
    let want_filter = p.bpf.is_some() && (have_admin || !inherited_filter);
    if (p.no_new_privs || (want_filter && !have_admin))
        && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0
    {
        return (
            125,
            format!("cannot set no_new_privs: {}", std::io::Error::last_os_error()),
        );
    }
    // Keep only what this process has (no CAP_SYS_ADMIN in a container, for instance).
    let permitted = ::caps::read(None, ::caps::CapSet::Permitted).unwrap_or_default();
    let keep: ::caps::CapsHashSet = p.caps.intersection(&permitted).copied().collect();
    if let Err(e) = caps::drop_bounding(&keep)
        && permitted.contains(&::caps::Capability::CAP_SETPCAP)
    {
        return (125, format!("cannot drop capabilities from the bounding set: {e}"));
    }
    if want_filter
        && let Some(bpf) = &p.bpf
        && let Err(e) = seccomp::install(bpf)
    {
        return (125, format!("cannot install the seccomp filter: {e}"));
    }
    if (!p.groups.is_empty() || p.uid != 0)
        && let Err(e) = nix::unistd::setgroups(&p.groups)
        && !p.groups.is_empty()
    {
        return (125, format!("cannot set supplementary groups {:?}: {e}", p.groups));
    }
    if let Err(e) = nix::unistd::setresgid(p.gid.into(), p.gid.into(), p.gid.into()) {
        return (125, format!("cannot switch to gid {}: {e}", p.gid));
    }
    if let Err(e) = nix::unistd::setresuid(p.uid.into(), p.uid.into(), p.uid.into()) {
        return (125, format!("cannot switch to uid {}: {e}", p.uid));
    }
    if let Err(e) = caps::apply(&keep, p.uid) {
        return (125, format!("cannot set capabilities: {e}"));
    }
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    exec(p)
}

/// Whether this process already runs under a seccomp filter (read before any chroot).
static SECCOMP_ACTIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

/// The step's PID 1 before exec. Returns (exit code, message) only on failure.
fn child(p: &Prepared) -> (i32, String) {
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if !p.tty {
        let _ = nix::unistd::setsid();
    }
    // The step's own mount namespace: pivot_root moves the root of every process in the
    // namespace, and the helper must keep its own view (it removes the generated files).
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNS) {
        return (125, format!("cannot create the step's mount namespace: {e}"));
    }
    let sys = RealSyscall;
    if let Err(e) = mounts::apply(&sys, &p.rootfs, &p.plan) {
        return (125, format!("setting up the step's mounts: {e:#}"));
    }
    if let Err(e) = sys.pivot_root(&p.rootfs) {
        // e.g. a rootfs on the initramfs: chroot is the best we can do.
        if let Err(e2) = sys.chroot(&p.rootfs) {
            return (125, format!("cannot enter the rootfs: pivot_root: {e}; chroot: {e2}"));
        }
    }
    if let Err(e) = nix::unistd::chdir(p.cwd.as_c_str()) {
        return (125, format!("cannot change to the working directory {:?}: {e}", p.cwd));
    }
    if p.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return (
            125,
            format!("cannot set no_new_privs: {}", std::io::Error::last_os_error()),
        );
    }
    if let Err(e) = caps::drop_bounding(&p.caps) {
        return (125, format!("cannot drop capabilities from the bounding set: {e}"));
    }
    if let Some(sock) = p.idemu
        && let Err(e) = super::idemu::install_and_send(sock)
    {
        return (
            125,
            format!("cannot set up ownership emulation (seccomp user notification): {e}"),
        );
    }
    if let Some(bpf) = &p.bpf
        && let Err(e) = seccomp::install(bpf)
    {
        return (125, format!("cannot install the seccomp filter: {e}"));
    }
    if (!p.groups.is_empty() || p.uid != 0)
        && let Err(e) = nix::unistd::setgroups(&p.groups)
        && !p.groups.is_empty()
    {
        return (125, format!("cannot set supplementary groups {:?}: {e}", p.groups));
    }
    if let Err(e) = nix::unistd::setresgid(p.gid.into(), p.gid.into(), p.gid.into()) {
        return (
            125,
            format!(
                "cannot switch to gid {}: {e} (is it mapped in kiln's user namespace?)",
                p.gid
            ),
        );
    }
    if let Err(e) = nix::unistd::setresuid(p.uid.into(), p.uid.into(), p.uid.into()) {
        return (
            125,
            format!(
                "cannot switch to uid {}: {e} (is it mapped in kiln's user namespace?)",
                p.uid
            ),
        );
    }
    if let Err(e) = caps::apply(&p.caps, p.uid) {
        return (125, format!("cannot set capabilities: {e}"));
    }
    // Credentials changed: the parent-death signal was reset.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    exec(p)
}

fn exec(p: &Prepared) -> (i32, String) {
    let name = p.argv[0].to_bytes();
    let shown = String::from_utf8_lossy(name).to_string();
    let fail = |e: nix::errno::Errno, what: &str| -> (i32, String) {
        let code = if e == nix::errno::Errno::ENOENT || e == nix::errno::Errno::ENOTDIR {
            127
        } else {
            126
        };
        (code, format!("exec {what}: {}", e.desc().to_lowercase()))
    };
    // Only 0, 1 and 2 reach the step; the error-report pipe is closed by the exec itself.
    if let Err(e) = crate::fsutil::cloexec_from(3) {
        return (125, format!("{e:#}"));
    }
    if name.contains(&b'/') {
        let e = nix::unistd::execve(&p.argv[0], &p.argv, &p.envp).unwrap_err();
        return fail(e, &shown);
    }
    let mut denied = None;
    for dir in p.path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let Ok(full) = CString::new(format!("{dir}/{shown}")) else {
            continue;
        };
        let e = nix::unistd::execve(&full, &p.argv, &p.envp).unwrap_err();
        match e {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => continue,
            nix::errno::Errno::EACCES => denied = Some(full),
            _ => return fail(e, &full.to_string_lossy()),
        }
    }
    match denied {
        Some(f) => fail(nix::errno::Errno::EACCES, &f.to_string_lossy()),
        None => (127, format!("exec: {shown:?}: executable file not found in $PATH")),
    }
}
