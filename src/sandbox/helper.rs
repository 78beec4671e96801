//! The sandbox helper process (`kiln __sandbox SPECFILE`): a fresh, single-threaded kiln that
//! sets up the step's namespaces and becomes the parent of its PID 1.

use super::error::StepError;
use super::mounts::{self, Generated};
use super::{Network, RunSpec, SeccompChoice, caps, seccomp};
use crate::sys::{RealSyscall, Syscall};
use anyhow::{Context, Result, bail};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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
    /// The private network's link, ports and /etc inputs (see [`super::net`]).
    #[serde(default)]
    pub net: super::net::NetSpec,
    /// A private network to be connected by the caller: the helper's end of a socket pair on
    /// which it says `R` once its network namespace exists and waits for `G` (the link is up)
    /// before the step starts; anything else (the caller failed) ends the helper.
    #[serde(default)]
    pub net_sync: Option<i32>,
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

/// Files generated for the step's /etc.
fn generate(dir: &Path, spec: &RunSpec, net: &super::net::NetSpec, hostname: &str) -> Result<Generated> {
    let g = Generated {
        resolv_conf: dir.join("resolv.conf"),
        hosts: dir.join("hosts"),
        hostname: dir.join("hostname"),
    };
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&g.resolv_conf, super::net::resolv_conf(&host, spec.network, net))?;
    std::fs::write(&g.hosts, mounts::hosts_file_with(spec.network, hostname, net))?;
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

/// How the step's init gets into its root: the one difference between the isolation rungs
/// that can run a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Its own mount namespace, the mount plan, `pivot_root` (`chroot` where that fails); the
    /// helper already unshared PID, IPC and UTS namespaces.
    Namespaces,
    /// Chroot isolation (no namespaces, no mounts; see [`super::chroot`]): `chroot` into the
    /// rootfs the caller prepared, in its own session. `inherited_filter`: a seccomp filter
    /// (the container runtime's) was already active when the helper started.
    Chroot { inherited_filter: bool },
}

/// Everything the step's init needs, prepared before the fork.
struct Prepared {
    entry: Entry,
    plan: Vec<mounts::Step>,
    rootfs: PathBuf,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    caps: ::caps::CapsHashSet,
    bpf: Option<Vec<u8>>,
    no_new_privs: bool,
    /// Single-uid mode: the ownership-emulation notify filter and the socket that hands its
    /// listener to the helper (see [`super::idemu`]).
    idemu: Option<(Vec<u8>, std::os::fd::RawFd)>,
    tty: bool,
    argv: Vec<CString>,
    envp: Vec<CString>,
    path: String,
}

/// Whether this process already runs under a seccomp filter (`Seccomp: 2`).
fn seccomp_active() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2'))
}

/// Runs the step described by `spec`; returns its exit code (128+signal when killed).
/// How the step's helper ended: the exit code, and when the step could not be started
/// (exec failed, the workdir or user could not be entered…), why — the helper's caller prints
/// it to the step's stderr, where the build log shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct StepExit {
    pub code: i32,
    pub error: Option<String>,
}

pub fn helper_main(input: HelperInput) -> Result<StepExit> {
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
        Some(generate(gen_dir.path(), &spec, &input.net, &hostname)?)
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
    let idemu = if !chroot && super::idemu::wanted() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (p, c) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .context("cannot create a socket pair")?;
        Some((super::idemu::filter()?, p, c))
    } else {
        None
    };
    let cstr = |s: &str| CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"));
    let prepared = Prepared {
        entry: if chroot {
            Entry::Chroot {
                inherited_filter: seccomp_active(),
            }
        } else {
            Entry::Namespaces
        },
        plan: match &generated {
            Some(g) => mounts::plan(&spec, g, spec.network != Network::Host)?,
            None => Vec::new(),
        },
        rootfs: rootfs.clone(),
        cwd: cstr(&cwd)?,
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
        caps: cap_set,
        bpf,
        no_new_privs: spec.no_new_privs,
        idemu: idemu.as_ref().map(|(f, _, c)| (f.clone(), c.as_raw_fd())),
        tty: spec.tty,
        argv: spec.args.iter().map(|a| cstr(a)).collect::<Result<_>>()?,
        envp: env.iter().map(|e| cstr(e)).collect::<Result<_>>()?,
        path: env_get(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string(),
    };

    let sys = RealSyscall;
    let (supervisor, idemu_child) = match idemu {
        // The supervisor thread starts before the PID namespace is unshared: a process whose
        // children go to another PID namespace cannot create threads.
        Some((_, p, c)) => (
            Some(super::idemu::spawn_supervisor(
                p,
                crate::sys::idstate::state_dir(&rootfs),
            )?),
            Some(c),
        ),
        None => (None, None),
    };
    if !chroot {
        let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        if spec.network != Network::Host {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        sys.unshare(flags)
            .context("cannot create the step's namespaces (pid, ipc, uts, net)")?;
        if spec.network != Network::Host {
            sys.loopback_up().context("cannot bring the loopback interface up")?;
        }
        sys.sethostname(&hostname).context("cannot set the hostname")?;
        if let Some(fd) = input.net_sync
            && !await_link(fd)
        {
            // The caller could not connect the network and says why.
            return Ok(StepExit { code: 125, error: None });
        }
    }
    let mut exit = run_init(&prepared, gen_dir, idemu_child)?;
    if let Some(handle) = supervisor {
        let _ = std::fs::remove_dir_all(crate::sys::idstate::state_dir(&rootfs));
        // A supervisor that stopped early (it is left serving otherwise: it ends with the
        // step's last process) says why with the step's own result.
        if handle.is_finished()
            && let Ok(Err(e)) = handle.join()
        {
            let why = format!("{e:#}");
            exit.error = Some(match exit.error.take() {
                Some(first) => format!("{first}; {why}"),
                None => why,
            });
        }
    }
    Ok(exit)
}

/// Tells the caller the network namespace exists, then waits until it is connected (see
/// [`HelperInput::net_sync`]); false when the caller gave up.
fn await_link(fd: i32) -> bool {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is the socket the caller made inheritable for this process and named in the
    // spec; nothing else in this process owns it, and the stream closes it on drop.
    let mut sync = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    let mut b = [0u8; 1];
    sync.write_all(b"R").is_ok() && sync.read_exact(&mut b).is_ok() && b[0] == b'G'
}

static CHILD: AtomicI32 = AtomicI32::new(0);
static GOT_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Chroot isolation (no PID namespace): stopping the step kills its process group too.
static KILL_GROUP: AtomicBool = AtomicBool::new(false);

extern "C" fn kill_step(sig: libc::c_int) {
    GOT_SIGNAL.store(sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // With a PID namespace, SIGKILL to its PID 1 takes every process of the step with it;
        // without one, the step's session (process group) goes.
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe {
            if KILL_GROUP.load(Ordering::SeqCst) {
                libc::kill(-pid, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Forks the step's init (PID 1 of the step's PID namespace, or the leader of its session in
/// chroot isolation), forwards SIGINT/SIGTERM/SIGHUP as a kill of the step and returns its exit
/// code; a setup failure the init reports is printed and becomes its code.
/// `idemu_child` (the step's end of the ownership-emulation socket) is closed in the helper
/// once the init has its copy, so the supervisor sees the end if the init fails before sending.
fn run_init(p: &Prepared, gen_dir: tempfile::TempDir, idemu_child: Option<OwnedFd>) -> Result<StepExit> {
    let chroot = matches!(p.entry, Entry::Chroot { .. });
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // SAFETY: the helper is single-threaded but for the ownership-emulation supervisor, which
    // holds no lock the child needs; the child only sets itself up and execs (or _exits).
    match unsafe { nix::unistd::fork() }.context("cannot fork the step's init process")? {
        nix::unistd::ForkResult::Child => {
            drop(err_r);
            let e = step_init(&RealSyscall, p);
            let code = e.exit_code();
            let _ = nix::unistd::write(&err_w, format!("{code}:{e}").as_bytes());
            // SAFETY: _exit ends the forked child without running the helper's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(err_w);
            drop(idemu_child);
            CHILD.store(child.as_raw(), Ordering::SeqCst);
            KILL_GROUP.store(chroot, Ordering::SeqCst);
            let h = nix::sys::signal::SigHandler::Handler(kill_step);
            for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
                // SAFETY: the handler only uses atomics and kill(2).
                unsafe {
                    let _ = nix::sys::signal::signal(s, h);
                }
            }
            let msg = read_all(&err_r);
            drop(gen_dir); // the bind mounts keep the files alive
            let mut code = super::userns::wait_child(child);
            if chroot {
                // Daemons the step left behind in its session.
                // SAFETY: kill(2) with plain integers.
                unsafe { libc::kill(-child.as_raw(), libc::SIGKILL) };
            }
            let sig = GOT_SIGNAL.load(Ordering::SeqCst);
            if sig != 0 && code == 128 + libc::SIGKILL {
                code = 128 + sig; // stopped because we were told to stop
            }
            if !msg.is_empty() {
                let text = String::from_utf8_lossy(&msg);
                let (c, m) = text.split_once(':').unwrap_or(("125", &text));
                return Ok(StepExit {
                    code: c.parse().unwrap_or(125),
                    error: Some(m.to_string()),
                });
            }
            Ok(StepExit { code, error: None })
        }
    }
}

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

/// The step's init: [`enter`], then exec. Returns only on failure.
fn step_init(sys: &dyn Syscall, p: &Prepared) -> StepError {
    match enter(sys, p) {
        Err(e) => e,
        Ok(()) => exec(p),
    }
}

/// The step's init before exec, for both entries: its session, its root and working
/// directory, then the privilege drop in the order that works — no_new_privs, the bounding
/// set, the ownership-emulation and seccomp filters (while CAP_SYS_ADMIN is held), groups, gid,
/// uid, the remaining capabilities — and the parent-death signal again (credential changes
/// reset it).
fn enter(sys: &dyn Syscall, p: &Prepared) -> Result<(), StepError> {
    let _ = sys.set_pdeathsig(Signal::SIGKILL);
    match p.entry {
        // Still its own process group, so the end-of-step kill finds everything.
        Entry::Chroot { .. } if p.tty => drop(sys.setpgid_self()),
        _ if p.tty => {}
        _ => drop(sys.setsid()),
    }
    match p.entry {
        Entry::Namespaces => {
            // The step's own mount namespace: pivot_root moves the root of every process in the
            // namespace, and the helper must keep its own view (it removes the generated files).
            sys.unshare(CloneFlags::CLONE_NEWNS)
                .map_err(StepError::MountNamespace)?;
            mounts::apply(sys, &p.rootfs, &p.plan).map_err(StepError::Mounts)?;
            if let Err(pivot) = sys.pivot_root(&p.rootfs) {
                // e.g. a rootfs on the initramfs: chroot is the best we can do.
                sys.chroot(&p.rootfs)
                    .map_err(|chroot| StepError::EnterRootfs { pivot, chroot })?;
            }
        }
        Entry::Chroot { .. } => sys.chroot(&p.rootfs).map_err(|err| StepError::Chroot {
            path: p.rootfs.clone(),
            err,
        })?,
    }
    sys.chdir(&p.cwd).map_err(|err| StepError::Workdir {
        cwd: p.cwd.clone(),
        err,
    })?;
    // What may be dropped and installed here. In kiln's namespaces the helper holds every
    // capability; in chroot isolation only what the runtime left it (no CAP_SYS_ADMIN in a
    // container, for instance), and a filter without CAP_SYS_ADMIN needs no_new_privs.
    let (keep, bounding_fatal, want_filter, nnp, hint) = match p.entry {
        Entry::Namespaces => (
            p.caps.clone(),
            true,
            p.bpf.is_some(),
            p.no_new_privs,
            " (is it mapped in kiln's user namespace?)",
        ),
        Entry::Chroot { inherited_filter } => {
            let have_admin = sys.has_capability(::caps::CapSet::Effective, ::caps::Capability::CAP_SYS_ADMIN);
            let want_filter = p.bpf.is_some() && (have_admin || !inherited_filter);
            let permitted = sys.capabilities(::caps::CapSet::Permitted);
            (
                p.caps.intersection(&permitted).copied().collect(),
                permitted.contains(&::caps::Capability::CAP_SETPCAP),
                want_filter,
                p.no_new_privs || (want_filter && !have_admin),
                "",
            )
        }
    };
    if nnp {
        sys.set_no_new_privs().map_err(StepError::NoNewPrivs)?;
    }
    if let Err(e) = caps::drop_bounding(sys, &keep)
        && bounding_fatal
    {
        return Err(StepError::Bounding(e));
    }
    if let Some((filter, sock)) = &p.idemu {
        super::idemu::install_and_send(sys, filter, *sock).map_err(StepError::OwnershipEmulation)?;
    }
    if want_filter && let Some(bpf) = &p.bpf {
        sys.seccomp_filter(bpf).map_err(StepError::Seccomp)?;
    }
    if (!p.groups.is_empty() || p.uid != 0)
        && let Err(err) = sys.setgroups(&p.groups)
        && !p.groups.is_empty()
    {
        return Err(StepError::Groups {
            groups: p.groups.clone(),
            err,
        });
    }
    sys.setresgid(p.gid)
        .map_err(|err| StepError::Gid { gid: p.gid, err, hint })?;
    sys.setresuid(p.uid)
        .map_err(|err| StepError::Uid { uid: p.uid, err, hint })?;
    caps::apply(sys, &keep, p.uid).map_err(StepError::Capabilities)?;
    // Credentials changed: the parent-death signal was reset.
    let _ = sys.set_pdeathsig(Signal::SIGKILL);
    Ok(())
}

fn exec(p: &Prepared) -> StepError {
    let name = p.argv[0].to_bytes();
    let shown = String::from_utf8_lossy(name).to_string();
    let fail = |errno: nix::errno::Errno, what: &str| StepError::Exec {
        what: what.to_string(),
        errno,
    };
    // Only 0, 1 and 2 reach the step; the error-report pipe is closed by the exec itself.
    if let Err(e) = crate::fsutil::cloexec_from(3) {
        return StepError::Fds(e);
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
        None => StepError::NotFound(shown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};

    fn prepared(entry: Entry, rootfs: &Path) -> Prepared {
        Prepared {
            entry,
            plan: Vec::new(),
            rootfs: rootfs.to_path_buf(),
            cwd: CString::new("/work").unwrap(),
            uid: 1000,
            gid: 1001,
            groups: vec![1001, 27],
            caps: caps::effective(&[], &[]).unwrap(),
            bpf: Some(vec![0u8; 8 * 3]),
            no_new_privs: false,
            idemu: None,
            tty: false,
            argv: vec![CString::new("true").unwrap()],
            envp: Vec::new(),
            path: DEFAULT_PATH.into(),
        }
    }

    /// The calls after the bounding set is cut (its length depends on the kernel).
    fn drop_sequence(sys: &RecordingSyscall) -> Vec<&'static str> {
        let mut n = sys.names();
        n.retain(|c| *c != "drop_bounding");
        n
    }

    #[test]
    fn namespaces_entry_drops_privileges_in_order() {
        let t = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall::default();
        let mut p = prepared(Entry::Namespaces, t.path());
        p.no_new_privs = true;
        enter(&sys, &p).unwrap();
        assert_eq!(
            drop_sequence(&sys),
            [
                "set_pdeathsig",
                "setsid",
                "unshare",
                "mount", // the rootfs bound onto itself
                "pivot_root",
                "chdir",
                "set_no_new_privs",
                "seccomp_filter",
                "setgroups",
                "setresgid",
                "setresuid",
                "set_capabilities",
                "set_capabilities",
                "set_capabilities",
                "set_capabilities",
                "set_pdeathsig"
            ]
        );
        let calls = sys.calls.borrow();
        assert!(calls.contains(&Call::Unshare(CloneFlags::CLONE_NEWNS)));
        assert!(calls.contains(&Call::Chdir("/work".into())));
        assert!(calls.contains(&Call::Setgroups(vec![1001, 27])));
        assert!(calls.contains(&Call::SeccompFilter(3)));
        // USER 1000 keeps no capability.
        assert!(
            calls
                .iter()
                .all(|c| !matches!(c, Call::SetCapabilities { caps, .. } if !caps.is_empty()))
        );
        // CAP_SYS_ADMIN is not in Docker's set: it leaves the bounding set.
        assert!(calls.contains(&Call::DropBounding(::caps::Capability::CAP_SYS_ADMIN)));
        assert!(!calls.contains(&Call::DropBounding(::caps::Capability::CAP_CHOWN)));
    }

    #[test]
    fn namespaces_entry_falls_back_to_chroot_and_names_failures() {
        let t = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall {
            fail: vec!["pivot_root"],
            ..Default::default()
        };
        enter(&sys, &prepared(Entry::Namespaces, t.path())).unwrap();
        assert!(sys.calls.borrow().contains(&Call::Chroot(t.path().to_path_buf())));
        let sys = RecordingSyscall {
            fail: vec!["setresuid"],
            ..Default::default()
        };
        let e = enter(&sys, &prepared(Entry::Namespaces, t.path())).unwrap_err();
        assert_eq!(e.exit_code(), 125);
        assert_eq!(
            e.to_string(),
            "cannot switch to uid 1000: EPERM: Operation not permitted (is it mapped in kiln's user namespace?)"
        );
    }

    #[test]
    fn chroot_entry_keeps_what_the_runtime_left() {
        use ::caps::Capability::*;
        let t = tempfile::tempdir().unwrap();
        // Root in a container: Docker's set, no CAP_SYS_ADMIN, the runtime's filter active.
        let docker: ::caps::CapsHashSet = [CAP_CHOWN, CAP_SETUID, CAP_SETGID, CAP_SETPCAP].into_iter().collect();
        let sys = RecordingSyscall {
            caps: docker.clone(),
            ..Default::default()
        };
        let mut p = prepared(Entry::Chroot { inherited_filter: true }, t.path());
        p.uid = 0;
        p.tty = true;
        enter(&sys, &p).unwrap();
        let names = drop_sequence(&sys);
        assert_eq!(&names[..4], ["set_pdeathsig", "setpgid_self", "chroot", "chdir"]);
        assert!(
            !names.contains(&"seccomp_filter"),
            "the runtime's filter stays the only one"
        );
        assert!(!names.contains(&"set_no_new_privs") && !names.contains(&"unshare"));
        // uid 0 keeps Docker's set as far as it was permitted.
        let calls = sys.calls.borrow();
        assert!(calls.contains(&Call::SetCapabilities {
            set: "Effective".into(),
            caps: vec![
                "CAP_CHOWN".into(),
                "CAP_SETGID".into(),
                "CAP_SETPCAP".into(),
                "CAP_SETUID".into()
            ],
        }));
        drop(calls);
        // Without an inherited filter, the filter needs no_new_privs (no CAP_SYS_ADMIN).
        let sys = RecordingSyscall {
            caps: docker,
            ..Default::default()
        };
        enter(
            &sys,
            &prepared(
                Entry::Chroot {
                    inherited_filter: false,
                },
                t.path(),
            ),
        )
        .unwrap();
        let names = drop_sequence(&sys);
        let at = |n: &str| names.iter().position(|c| *c == n).unwrap();
        assert!(at("set_no_new_privs") < at("seccomp_filter") && at("seccomp_filter") < at("setresuid"));
        assert_eq!(&names[..2], ["set_pdeathsig", "setsid"]);
    }
}
