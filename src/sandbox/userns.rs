//! Entering kiln's user namespace.
//!
//! `ensure` runs first thing in `main` (while the process is still single-threaded: the
//! kernel refuses `CLONE_NEWUSER` in a threaded process). An unprivileged kiln forks; the
//! child unshares a user and a mount namespace, the parent maps container uid 0 to the user
//! and 1..=65536 to the user's /etc/subuid and /etc/subgid ranges with the setuid helpers
//! `newuidmap`/`newgidmap` (or, where that is impossible, maps only the user's own id and says
//! why), and the child re-executes kiln as uid 0 in the namespace with `KILN_USERNS=1`. The
//! parent only forwards signals and exits with the child's status. Real root only gets a
//! private mount namespace (root without CAP_SYS_ADMIN: a user namespace mapping its own ids).
//!
//! When no namespace can be created, [`ensure_with`] falls back along the isolation ladder
//! (see [`super::probe`]): root continues without namespaces (`chroot`), anyone else without
//! privilege (`none`: builds without RUN). The rung is left in `KILN_RUNG` for the processes
//! kiln starts; `--isolation` forces one.

use crate::events::Reporter;
use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};

use super::idmap::{MappingBlocker, parse_id_map, plan_mapping, run_map_helper};
use super::probe::{self, Isolation};
use crate::sys::{Proc, RealSyscall, Syscall, Target};

pub use super::idmap::{
    ENV_IDMAP, ENV_IDMAP_MODE, IdMapping, IdRange, MAX_SUBIDS, SubIdPlan, find_subid_range, helpers_usable, id_mapping,
    in_initial_userns,
};

/// Marks a process that already runs inside kiln's namespaces.
pub const ENV_USERNS: &str = "KILN_USERNS";

static CHILD: AtomicI32 = AtomicI32::new(0);

/// Runs in the original process after the re-executed child has exited (see
/// [`on_child_exit`]).
static AFTER_CHILD: std::sync::OnceLock<Box<dyn Fn(i32) + Send + Sync>> = std::sync::OnceLock::new();

/// Registers `f(child pid)` to run in the original process once the child that re-executed
/// kiln in the user namespace has exited, however it ended (killed by a signal included), and
/// before the original process exits with its status. The CLI uses it to remove the child's
/// temporary entries in the store (`kiln` killed before it could clean up; see
/// `crate::store::gc::sweep_tmp_of`). Only the first registration counts.
pub fn on_child_exit(f: impl Fn(i32) + Send + Sync + 'static) {
    let _ = AFTER_CHILD.set(Box::new(f));
}

extern "C" fn forward_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let pid = CHILD.load(Ordering::SeqCst);
    // Signals the terminal sends to the whole foreground process group (SI_KERNEL) already
    // reach the child; forward only those sent to us alone (kill, timeout, systemd).
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; null is checked.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    if pid > 0 && !from_kernel {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, sig) };
    }
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        match nix::unistd::write(fd, &data[off..]) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

fn read_msg(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\n") {
                    break;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

fn make_rprivate(sys: &dyn Syscall) -> std::io::Result<()> {
    sys.mount(
        None,
        Target::host(std::path::Path::new("/")),
        None,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None,
    )
}

/// Enters kiln's user and mount namespace (see the module doc), choosing the best rung of
/// the isolation ladder automatically. Returns in the process that should do the work.
pub fn ensure(reporter: &Reporter) -> Result<()> {
    ensure_with(reporter, None)
}

fn set_rung(i: Isolation, why: &str) {
    // SAFETY: called while single-threaded (first thing in main).
    unsafe {
        std::env::set_var(ENV_USERNS, "1");
        std::env::set_var(probe::ENV_RUNG, i.as_str());
        std::env::set_var(probe::ENV_RUNG_WHY, why);
    }
}

/// Like [`ensure`], with the rung forced by `--isolation` (`None` = auto). Falls back along
/// the ladder when a namespace cannot be created: root without namespaces gets `chroot`, an
/// unprivileged user gets `none` (builds without RUN). The original process never returns when
/// it re-executed itself in a user namespace (it exits with the child's status).
pub fn ensure_with(reporter: &Reporter, forced: Option<Isolation>) -> Result<()> {
    if std::env::var(ENV_USERNS).as_deref() == Ok("1") {
        if let Ok(r) = std::env::var(probe::ENV_RUNG)
            && let Ok(Some(_)) = Isolation::parse(&r)
        {
            // Decided by the kiln that started us. Files of ids that cannot be owned here (no
            // privilege; a single mapped id) get their owner recorded for the layer instead.
            return Ok(());
        }
        if nix::unistd::geteuid().is_root() || !in_initial_userns() {
            return Ok(());
        }
    }
    let root = nix::unistd::geteuid().is_root();
    match forced {
        Some(Isolation::None) => {
            set_rung(Isolation::None, "forced with --isolation none");
            return Ok(());
        }
        Some(Isolation::Chroot) => {
            let f = probe::facts();
            if !f.root_can_chroot() {
                bail!(
                    "--isolation chroot needs root with CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID and SYS_CHROOT \
                     (this is uid {} missing {}); run kiln as root in the container (USER root / runAsUser: 0) or \
                     use --isolation auto",
                    f.euid,
                    f.missing_chroot_caps().join(", ")
                );
            }
            set_rung(Isolation::Chroot, "forced with --isolation chroot");
            return Ok(());
        }
        _ => {}
    }
    let mut root_ns_err = None;
    if root && in_initial_userns() && forced != Some(Isolation::SingleUid) {
        match RealSyscall.unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
            Ok(()) => {
                make_rprivate(&RealSyscall).context("cannot make the mounts of kiln's mount namespace private")?;
                reporter.debug("sandbox", || {
                    "running as real root: private mount namespace, no user namespace".into()
                });
                set_rung(
                    Isolation::Userns,
                    "real root with CAP_SYS_ADMIN: a private mount namespace, no user namespace needed",
                );
                // SAFETY: single-threaded (called first in main).
                unsafe { std::env::set_var(ENV_IDMAP, "host") };
                return Ok(());
            }
            Err(e) => root_ns_err = Some(e),
        }
    }
    let failed = enter_userns(reporter, forced == Some(Isolation::SingleUid))?;
    // No user namespace: fall back along the ladder.
    let mut f = probe::facts();
    f.userns_trial = Some(failed);
    if let Some(e) = root_ns_err {
        f.mountns_trial = Some(probe::Trial {
            unshare: probe::StepResult::err(e as i32),
            map: probe::StepResult::default(),
            mount: probe::StepResult::default(),
        });
    }
    let (rung, why) = probe::decide(&f);
    if let Some(want) = forced
        && want != rung
    {
        bail!(
            "--isolation {want} is not possible here: {}. Use --isolation auto (kiln would take {rung}), see kiln info",
            probe::blocker(&f)
        );
    }
    reporter.debug("sandbox", || format!("isolation rung {} ({rung}): {why}", rung.rung()));
    set_rung(rung, &why);
    Ok(())
}

/// Forks a child that unshares a user and a mount namespace, maps it and re-executes kiln
/// there; the parent waits and exits with the child's status. Returns (in the original
/// process, which then continues without namespaces) only when the namespace cannot be
/// created or mapped: the trial says which step failed.
fn enter_userns(reporter: &Reporter, single: bool) -> Result<probe::Trial> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    // CLOEXEC: the re-executed kiln (and so every RUN step) must not inherit them.
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (c2p_r, c2p_w) = nix::unistd::pipe2(cloexec).context("cannot create a pipe")?;
    let (p2c_r, p2c_w) = nix::unistd::pipe2(cloexec).context("cannot create a pipe")?;
    // Prepare everything the child needs before forking (no allocation decisions after).
    let exe = CString::new("/proc/self/exe").unwrap();
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| CString::new("?").unwrap()))
        .collect();
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(k, _)| k != ENV_USERNS && k != ENV_IDMAP && k != probe::ENV_RUNG && k != probe::ENV_RUNG_WHY)
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            e
        })
        .collect();
    env.push(format!("{ENV_USERNS}=1").into_bytes());

    let parent = nix::unistd::getpid();
    let sys = RealSyscall;
    // SAFETY: called first in main, single-threaded.
    match unsafe { nix::unistd::fork() }.context("cannot fork")? {
        nix::unistd::ForkResult::Child => {
            drop(c2p_r);
            drop(p2c_w);
            let r = sys.unshare(nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS);
            if let Err(e) = r {
                // The parent decides what to do (fall back along the ladder).
                write_all(&c2p_w, format!("e{}\n", e as i32).as_bytes());
                // SAFETY: _exit ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(125) };
            }
            write_all(&c2p_w, b"u\n");
            let msg = read_msg(&p2c_r);
            if msg.is_empty() {
                // SAFETY: as above.
                unsafe { libc::_exit(125) };
            }
            let line = String::from_utf8_lossy(msg.strip_suffix(b"\n").unwrap_or(&msg)).to_string();
            if line.starts_with("error:") {
                // SAFETY: as above.
                unsafe { libc::_exit(125) };
            }
            let mut parts = line.splitn(3, '\t');
            let (idmap, rung, why) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            env.push(format!("{ENV_IDMAP}={idmap}").into_bytes());
            env.push(format!("{}={rung}", probe::ENV_RUNG).into_bytes());
            env.push(format!("{}={why}", probe::ENV_RUNG_WHY).into_bytes());
            // A failure from here on is told to the parent, which returns it as the error.
            let fail = |msg: String| -> ! {
                write_all(&c2p_w, format!("f{}\n", msg.replace('\n', " ")).as_bytes());
                // SAFETY: as above.
                unsafe { libc::_exit(125) }
            };
            if let Err(e) = sys.setresgid(0) {
                fail(format!("cannot become gid 0 in the user namespace: {e}"));
            }
            if let Err(e) = sys.setresuid(0) {
                fail(format!("cannot become uid 0 in the user namespace: {e}"));
            }
            let _ = sys.setgroups(&[]); // denied with the single-id map: fine
            // If the waiting parent dies (SIGKILL), stop too; SIGTERM lets a running step clean
            // up. Set after the credential change, which clears it.
            let _ = sys.set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
            if nix::unistd::getppid() != parent {
                // SAFETY: as above.
                unsafe { libc::_exit(125) };
            }
            if let Err(e) = make_rprivate(&sys) {
                fail(format!("cannot make the mounts of kiln's mount namespace private: {e}"));
            }
            let envc: Vec<CString> = env.into_iter().filter_map(|e| CString::new(e).ok()).collect();
            let e = nix::unistd::execve(&exe, &args, &envc).unwrap_err();
            fail(format!("cannot re-execute /proc/self/exe in the user namespace: {e}"))
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(c2p_w);
            drop(p2c_r);
            CHILD.store(child.as_raw(), Ordering::SeqCst);
            install_forwarders();
            let ready = read_msg(&c2p_r);
            if ready.first() != Some(&b'u') {
                // The child could not unshare: no user namespace here.
                let _ = wait_child(child);
                restore_signals();
                let errno = std::str::from_utf8(&ready[1.min(ready.len())..])
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                    .unwrap_or(libc::EPERM);
                return Ok(probe::Trial {
                    unshare: probe::StepResult::err(errno),
                    ..Default::default()
                });
            }
            let proc = Proc::host();
            let pid = child.as_raw() as u32;
            let mapped = if nix::unistd::geteuid().is_root() {
                write_root_maps(&proc, pid, single)
            } else {
                write_maps(&proc, pid, uid, gid, reporter, single)
            };
            let line = match mapped {
                Ok(m) => m.line(),
                Err(errno) => {
                    write_all(&p2c_w, b"error:\n");
                    let _ = wait_child(child);
                    restore_signals();
                    return Ok(probe::Trial {
                        unshare: probe::StepResult::ok(),
                        map: probe::StepResult::err(errno as i32),
                        ..Default::default()
                    });
                }
            };
            write_all(&p2c_w, format!("{}\n", line.replace('\n', " ")).as_bytes());
            drop(p2c_w);
            let code = wait_child(child);
            if let Some(f) = AFTER_CHILD.get() {
                f(child.as_raw());
            }
            // The pipe is close-on-exec: a child that re-executed kiln left nothing in it; one
            // that failed before said why.
            let said = read_msg(&c2p_r);
            if let Some(msg) = said.strip_prefix(b"f") {
                restore_signals();
                bail!("{}", String::from_utf8_lossy(msg).trim_end());
            }
            std::process::exit(code);
        }
    }
}

fn restore_signals() {
    CHILD.store(0, Ordering::SeqCst);
    for s in [
        nix::sys::signal::SIGINT,
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGHUP,
        nix::sys::signal::SIGQUIT,
    ] {
        // SAFETY: restoring the default disposition.
        unsafe {
            let _ = nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl);
        }
    }
}

/// What the parent tells the re-executed child about the mapping it set up (sent as
/// `KILN_IDMAP<TAB>rung<TAB>why`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOutcome {
    /// The value of `KILN_IDMAP`: `full`, `host` or `single:REASON`.
    pub idmap: String,
    pub rung: Isolation,
    pub why: String,
}

impl MapOutcome {
    /// The line the child reads.
    fn line(&self) -> String {
        format!("{}\t{}\t{}", self.idmap, self.rung, self.why)
    }
}

/// The errno of a failed write, EPERM when there is none.
fn errno_of(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EPERM))
}

/// Root without CAP_SYS_ADMIN (a container with seccomp unconfined): maps root's own ids 1:1
/// (CAP_SETUID/CAP_SETGID in the parent namespace allow any mapping), so ownership is real.
fn write_root_maps(proc: &Proc, pid: u32, single: bool) -> Result<MapOutcome, Errno> {
    let count = if single { 1 } else { u32::MAX - 1 };
    proc.write_pid(pid, "uid_map", &format!("0 0 {count}\n"))
        .map_err(errno_of)?;
    if single {
        let _ = proc.write_pid(pid, "setgroups", "deny");
    }
    proc.write_pid(pid, "gid_map", &format!("0 0 {count}\n"))
        .map_err(errno_of)?;
    Ok(if single {
        MapOutcome {
            idmap: "single:forced with --isolation single-uid".into(),
            rung: Isolation::SingleUid,
            why: "forced with --isolation single-uid".into(),
        }
    } else {
        MapOutcome {
            idmap: "full".into(),
            rung: Isolation::Userns,
            why: "root without CAP_SYS_ADMIN (no plain mount namespace), but user namespaces are allowed: a user namespace mapping root's own ids".into(),
        }
    })
}

fn install_forwarders() {
    let act = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::SigAction(forward_signal),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    for s in [
        nix::sys::signal::SIGINT,
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGHUP,
        nix::sys::signal::SIGQUIT,
    ] {
        // SAFETY: the handler only calls kill(2).
        unsafe {
            let _ = nix::sys::signal::sigaction(s, &act);
        }
    }
}

/// Waits for `child` and turns its end into an exit code (128+signal when killed).
pub fn wait_child(child: nix::unistd::Pid) -> i32 {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return c,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

/// Writes the child's id maps (newuidmap/newgidmap with the user's range, else the user's own
/// id only); returns what to tell the child, or the errno of the failed map write (no mapping
/// possible at all, e.g. Ubuntu's AppArmor rule).
fn write_maps(
    proc: &Proc,
    pid: u32,
    uid: u32,
    gid: u32,
    reporter: &Reporter,
    single: bool,
) -> Result<MapOutcome, Errno> {
    let plan = if single {
        Err(MappingBlocker::ForcedByFlag)
    } else {
        plan_mapping(uid, gid)
    };
    let full = match &plan {
        Ok(p) => run_map_helper(&p.newuidmap, pid as i32, uid, p.uid)
            .and_then(|_| run_map_helper(&p.newgidmap, pid as i32, gid, p.gid)),
        Err(reason) => Err(reason.clone()),
    };
    match (full, plan) {
        (Ok(()), Ok(p)) => {
            reporter.debug("sandbox", || {
                format!(
                    "user namespace: uid 0 -> {uid}, 1..{} -> {}..; gid 0 -> {gid}, 1..{} -> {}..",
                    p.uid.1, p.uid.0, p.gid.1, p.gid.0
                )
            });
            Ok(MapOutcome {
                idmap: "full".into(),
                rung: Isolation::Userns,
                why: format!(
                    "user namespace with subordinate ids (uids {}+{}, gids {}+{})",
                    p.uid.0, p.uid.1, p.gid.0, p.gid.1
                ),
            })
        }
        (Err(reason), _) | (Ok(()), Err(reason)) => {
            write_own_id_maps(proc, pid, uid, gid)?;
            let advice = if single {
                "use --isolation auto for a range of ids".to_string()
            } else {
                probe::single_uid_advice(&probe::facts())
            };
            reporter.info(
                "sandbox",
                format!(
                    "notice: single-uid user namespace ({reason}); other users' ownership is emulated \
                     (recorded in the image, not enforced inside RUN). {advice}"
                ),
            );
            Ok(MapOutcome {
                idmap: format!("single:{reason}"),
                rung: Isolation::SingleUid,
                why: format!("single-uid user namespace: {reason}"),
            })
        }
    }
}

/// Maps only the user's own ids to 0 where a map is still unwritten (a helper may have written
/// one before failing on the other); setgroups is denied first, as the kernel requires.
fn write_own_id_maps(proc: &Proc, pid: u32, uid: u32, gid: u32) -> Result<(), Errno> {
    if parse_id_map(&proc.read_pid(pid, "uid_map").unwrap_or_default()).is_empty() {
        proc.write_pid(pid, "uid_map", &format!("0 {uid} 1\n"))
            .map_err(errno_of)?;
    }
    if parse_id_map(&proc.read_pid(pid, "gid_map").unwrap_or_default()).is_empty() {
        let _ = proc.write_pid(pid, "setgroups", "deny");
        proc.write_pid(pid, "gid_map", &format!("0 {gid} 1\n"))
            .map_err(errno_of)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `<base>/<pid>/{uid_map,gid_map,setgroups}`, empty, as procfs has them for a fresh child.
    fn child_proc(pid: u32) -> (tempfile::TempDir, Proc) {
        let t = tempfile::tempdir().unwrap();
        let proc = Proc::at(t.path());
        std::fs::create_dir_all(proc.pid(pid, "")).unwrap();
        for f in ["uid_map", "gid_map", "setgroups"] {
            std::fs::write(proc.pid(pid, f), "").unwrap();
        }
        (t, proc)
    }

    #[test]
    fn root_maps_its_own_ids() {
        let (_t, proc) = child_proc(42);
        let m = write_root_maps(&proc, 42, false).unwrap();
        assert_eq!(proc.read_pid(42, "uid_map").unwrap(), "0 0 4294967294\n");
        assert_eq!(proc.read_pid(42, "gid_map").unwrap(), "0 0 4294967294\n");
        assert_eq!(proc.read_pid(42, "setgroups").unwrap(), "", "setgroups stays allowed");
        assert_eq!((m.idmap.as_str(), m.rung), ("full", Isolation::Userns));
        let (_t, proc) = child_proc(43);
        let m = write_root_maps(&proc, 43, true).unwrap();
        assert_eq!(proc.read_pid(43, "uid_map").unwrap(), "0 0 1\n");
        assert_eq!(proc.read_pid(43, "setgroups").unwrap(), "deny");
        assert_eq!(m.rung, Isolation::SingleUid);
        assert!(
            m.line()
                .starts_with("single:forced with --isolation single-uid\tsingle-uid\t")
        );
    }

    #[test]
    fn single_uid_maps_the_own_id_and_denies_setgroups() {
        let (_t, proc) = child_proc(7);
        let seen = std::sync::Arc::new(crate::events::Recorder::default());
        let m = write_maps(&proc, 7, 1000, 1001, &Reporter::new(seen.clone()), true).unwrap();
        let notices = seen.messages(crate::events::Level::Info);
        assert!(
            notices.len() == 1 && notices[0].contains("single-uid user namespace"),
            "{notices:?}"
        );
        assert_eq!(proc.read_pid(7, "uid_map").unwrap(), "0 1000 1\n");
        assert_eq!(proc.read_pid(7, "gid_map").unwrap(), "0 1001 1\n");
        assert_eq!(proc.read_pid(7, "setgroups").unwrap(), "deny");
        assert_eq!(m.idmap, "single:forced with --isolation single-uid");
        assert_eq!(m.rung, Isolation::SingleUid);
    }

    #[test]
    fn a_map_a_helper_already_wrote_is_kept() {
        let (_t, proc) = child_proc(8);
        std::fs::write(proc.pid(8, "uid_map"), "0 1000 1\n1 100000 65536\n").unwrap();
        write_own_id_maps(&proc, 8, 1000, 1000).unwrap();
        assert_eq!(proc.read_pid(8, "uid_map").unwrap(), "0 1000 1\n1 100000 65536\n");
        assert_eq!(proc.read_pid(8, "gid_map").unwrap(), "0 1000 1\n");
    }

    #[test]
    fn a_refused_map_write_is_its_errno() {
        let t = tempfile::tempdir().unwrap();
        // No <pid> directory: the write fails (ENOENT), as a vanished child's would.
        assert_eq!(write_own_id_maps(&Proc::at(t.path()), 9, 1, 1), Err(Errno::ENOENT));
    }

    #[test]
    fn rprivate_goes_through_the_seam() {
        let sys = crate::sys::RecordingSyscall::default();
        make_rprivate(&sys).unwrap();
        assert!(
            matches!(&sys.calls.borrow()[0], crate::sys::Call::Mount { target, flags, .. }
            if target == std::path::Path::new("/") && flags.contains(nix::mount::MsFlags::MS_PRIVATE))
        );
    }
}
