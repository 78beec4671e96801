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

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use super::probe::{self, Isolation};

/// Marks a process that already runs inside kiln's namespaces.
pub const ENV_USERNS: &str = "KILN_USERNS";
/// Describes the mapping the parent set up: `full` or `single:REASON`.
pub const ENV_IDMAP: &str = "KILN_IDMAP";

/// Set to `single` to force the single-uid mapping (testing, or to avoid subordinate ids).
pub const ENV_IDMAP_MODE: &str = "KILN_IDMAP_MODE";

/// Maximum number of subordinate ids kiln maps (container ids 1..=65536).
pub const MAX_SUBIDS: u32 = 65536;

/// One line of /proc/PID/uid_map: `count` ids starting at `container` map to `host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub count: u32,
}

/// Which identity mapping kiln runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IdMapping {
    /// Container 0 is the user, 1.. are subordinate ids: image ownership works.
    Full {
        uid_ranges: Vec<IdRange>,
        gid_ranges: Vec<IdRange>,
    },
    /// Only the user's own id is mapped (to 0): the kernel refuses other owners; kiln emulates
    /// them (see `sandbox::idemu`).
    SingleUid { reason: String },
    /// Real root in the initial user namespace: no mapping needed.
    Host,
}

impl IdMapping {
    /// One human sentence.
    pub fn describe(&self) -> String {
        match self {
            IdMapping::Full { uid_ranges, gid_ranges } => format!(
                "user namespace with subordinate ids: uids {} / gids {}",
                fmt_ranges(uid_ranges),
                fmt_ranges(gid_ranges)
            ),
            IdMapping::SingleUid { reason } => {
                format!("single-uid user namespace (only your own id is mapped, to 0): {reason}")
            }
            IdMapping::Host => "real root: no user namespace, private mount namespace only".to_string(),
        }
    }
}

fn fmt_ranges(r: &[IdRange]) -> String {
    r.iter()
        .map(|r| format!("{}->{}+{}", r.container, r.host, r.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses the text of /proc/PID/{uid,gid}_map.
pub fn parse_id_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|f| f.parse::<u64>().ok());
            let (c, h, n) = (it.next()??, it.next()??, it.next()??);
            Some(IdRange {
                container: c as u32,
                host: h as u32,
                count: n.min(u32::MAX as u64) as u32,
            })
        })
        .collect()
}

fn is_initial_map(r: &[IdRange]) -> bool {
    r.len() == 1 && r[0].container == 0 && r[0].host == 0 && r[0].count == u32::MAX
}

/// True when this process is in the initial user namespace (not inside any userns).
pub fn in_initial_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|t| is_initial_map(&parse_id_map(&t)))
        .unwrap_or(true)
}

/// What kiln runs with. Inside the namespace: read from /proc/self/uid_map (plus the reason
/// the parent left in `KILN_IDMAP`). Outside it as a normal user: what `ensure` would set up.
pub fn id_mapping() -> IdMapping {
    let uids = parse_id_map(&std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default());
    let gids = parse_id_map(&std::fs::read_to_string("/proc/self/gid_map").unwrap_or_default());
    if is_initial_map(&uids) {
        if nix::unistd::geteuid().is_root() {
            return IdMapping::Host;
        }
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        return match plan_mapping(uid, gid) {
            Ok(p) => IdMapping::Full {
                uid_ranges: vec![
                    IdRange {
                        container: 0,
                        host: uid,
                        count: 1,
                    },
                    IdRange {
                        container: 1,
                        host: p.uid.0,
                        count: p.uid.1,
                    },
                ],
                gid_ranges: vec![
                    IdRange {
                        container: 0,
                        host: gid,
                        count: 1,
                    },
                    IdRange {
                        container: 1,
                        host: p.gid.0,
                        count: p.gid.1,
                    },
                ],
            },
            Err(reason) => IdMapping::SingleUid { reason },
        };
    }
    let total: u64 = uids.iter().map(|r| r.count as u64).sum();
    if total > 1 {
        return IdMapping::Full {
            uid_ranges: uids,
            gid_ranges: gids,
        };
    }
    let reason = std::env::var(ENV_IDMAP)
        .ok()
        .and_then(|v| v.strip_prefix("single:").map(str::to_string))
        .unwrap_or_else(|| "only one id is mapped in this user namespace".to_string());
    IdMapping::SingleUid { reason }
}

/// Subordinate id ranges that newuidmap/newgidmap would map: (start, count) for uids and gids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubIdPlan {
    pub uid: (u32, u32),
    pub gid: (u32, u32),
    pub newuidmap: PathBuf,
    pub newgidmap: PathBuf,
}

/// Finds the first `/etc/subuid`-style entry for the user (by name or by numeric id); the
/// count is capped at [`MAX_SUBIDS`].
pub fn find_subid_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let ids = id.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(':');
            let (who, start, count) = (
                f.next()?,
                f.next()?.trim().parse::<u32>().ok()?,
                f.next()?.trim().parse::<u32>().ok()?,
            );
            ((Some(who) == name || who == ids) && count > 0).then_some((start, count.min(MAX_SUBIDS)))
        })
}

fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for d in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn helper_usable(p: &Path) -> Result<(), String> {
    let md = std::fs::metadata(p).map_err(|e| format!("cannot stat {}: {e}", p.display()))?;
    let setuid = md.permissions().mode() & 0o4000 != 0;
    let has_caps = xattr::get(p, "security.capability").ok().flatten().is_some();
    if !setuid && !has_caps {
        return Err(format!(
            "{} is neither setuid root nor has file capabilities",
            p.display()
        ));
    }
    Ok(())
}

/// Whether newuidmap and newgidmap are installed and setuid (or file-capped); the error says
/// what is wrong.
pub fn helpers_usable() -> Result<(), String> {
    let Some(nu) = find_helper("newuidmap") else {
        return Err("newuidmap is not installed (package uidmap)".to_string());
    };
    let Some(ng) = find_helper("newgidmap") else {
        return Err("newgidmap is not installed (package uidmap)".to_string());
    };
    helper_usable(&nu)?;
    helper_usable(&ng)
}

fn no_new_privs() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1'))
        })
        .unwrap_or(false)
}

/// Decides whether a full subordinate-id mapping is possible for `uid`/`gid`; the error is
/// the reason (one clause) why not.
pub fn plan_mapping(uid: u32, gid: u32) -> Result<SubIdPlan, String> {
    if std::env::var(ENV_IDMAP_MODE).as_deref() == Ok("single") {
        return Err(format!("{ENV_IDMAP_MODE}=single is set"));
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    let uname = user.as_ref().map(|u| u.name.clone());
    let gname = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    let who = uname.clone().unwrap_or_else(|| uid.to_string());
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let Some(ur) = find_subid_range(&subuid, uname.as_deref(), uid) else {
        return Err(format!("no range for {who} in /etc/subuid"));
    };
    // /etc/subgid is keyed by user name (or uid) too, like shadow's newgidmap does.
    let Some(gr) =
        find_subid_range(&subgid, uname.as_deref(), uid).or_else(|| find_subid_range(&subgid, gname.as_deref(), gid))
    else {
        return Err(format!("no range for {who} in /etc/subgid"));
    };
    let Some(nu) = find_helper("newuidmap") else {
        return Err("newuidmap is not installed (package uidmap)".to_string());
    };
    let Some(ng) = find_helper("newgidmap") else {
        return Err("newgidmap is not installed (package uidmap)".to_string());
    };
    helper_usable(&nu)?;
    helper_usable(&ng)?;
    if no_new_privs() {
        return Err("no_new_privs is set on this process (NoNewPrivs: 1), so setuid helpers cannot work".to_string());
    }
    Ok(SubIdPlan {
        uid: ur,
        gid: gr,
        newuidmap: nu,
        newgidmap: ng,
    })
}

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
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    if pid > 0 && !from_kernel {
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

fn make_rprivate() -> nix::Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Enters kiln's user and mount namespace (see the module doc), choosing the best rung of
/// the isolation ladder automatically. Returns in the process that should do the work.
pub fn ensure(debug: bool) -> Result<()> {
    ensure_with(debug, None)
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
pub fn ensure_with(debug: bool, forced: Option<Isolation>) -> Result<()> {
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
        match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
            Ok(()) => {
                make_rprivate().context("cannot make the mounts of kiln's mount namespace private")?;
                if debug {
                    eprintln!("kiln: debug: running as real root: private mount namespace, no user namespace");
                }
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
    let failed = enter_userns(debug, forced == Some(Isolation::SingleUid))?;
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
    if debug {
        eprintln!("kiln: debug: isolation rung {} ({rung}): {why}", rung.rung());
    }
    set_rung(rung, &why);
    Ok(())
}

/// Forks a child that unshares a user and a mount namespace, maps it and re-executes kiln
/// there; the parent waits and exits with the child's status. Returns (in the original
/// process, which then continues without namespaces) only when the namespace cannot be
/// created or mapped: the trial says which step failed.
fn enter_userns(debug: bool, single: bool) -> Result<probe::Trial> {
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
    // SAFETY: called first in main, single-threaded.
    match unsafe { nix::unistd::fork() }.context("cannot fork")? {
        nix::unistd::ForkResult::Child => {
            drop(c2p_r);
            drop(p2c_w);
            let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS);
            if let Err(e) = r {
                // The parent decides what to do (fall back along the ladder).
                write_all(&c2p_w, format!("e{}\n", e as i32).as_bytes());
                unsafe { libc::_exit(125) };
            }
            write_all(&c2p_w, b"u\n");
            let msg = read_msg(&p2c_r);
            if msg.is_empty() {
                unsafe { libc::_exit(125) };
            }
            let line = String::from_utf8_lossy(msg.strip_suffix(b"\n").unwrap_or(&msg)).to_string();
            if line.starts_with("error:") {
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
            if let Err(e) = nix::unistd::setresgid(0.into(), 0.into(), 0.into()) {
                eprintln!("kiln: cannot become gid 0 in the user namespace: {e}");
                unsafe { libc::_exit(125) };
            }
            if let Err(e) = nix::unistd::setresuid(0.into(), 0.into(), 0.into()) {
                eprintln!("kiln: cannot become uid 0 in the user namespace: {e}");
                unsafe { libc::_exit(125) };
            }
            let _ = nix::unistd::setgroups(&[]); // denied with the single-id map: fine
            // If the waiting parent dies (SIGKILL), stop too; SIGTERM lets a running step clean
            // up. Set after the credential change, which clears it.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
            if nix::unistd::getppid() != parent {
                unsafe { libc::_exit(125) };
            }
            if let Err(e) = make_rprivate() {
                eprintln!("kiln: cannot make the mounts of kiln's mount namespace private: {e}");
                unsafe { libc::_exit(125) };
            }
            let envc: Vec<CString> = env.into_iter().filter_map(|e| CString::new(e).ok()).collect();
            let e = nix::unistd::execve(&exe, &args, &envc).unwrap_err();
            eprintln!("kiln: cannot re-execute /proc/self/exe in the user namespace: {e}");
            unsafe { libc::_exit(125) }
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
            let mapped = if nix::unistd::geteuid().is_root() {
                write_root_maps(child.as_raw(), single)
            } else {
                write_maps(child.as_raw(), uid, gid, debug, single)
            };
            let line = match mapped {
                Ok(m) => m,
                Err(errno) => {
                    write_all(&p2c_w, b"error:\n");
                    let _ = wait_child(child);
                    restore_signals();
                    return Ok(probe::Trial {
                        unshare: probe::StepResult::ok(),
                        map: probe::StepResult::err(errno),
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

/// Root without CAP_SYS_ADMIN (a container with seccomp unconfined): maps root's own ids 1:1
/// (CAP_SETUID/CAP_SETGID in the parent namespace allow any mapping), so ownership is real.
fn write_root_maps(pid: i32, single: bool) -> Result<String, i32> {
    let count = if single { 1 } else { u32::MAX - 1 };
    let write = |f: &str, v: String| -> Result<(), i32> {
        std::fs::write(format!("/proc/{pid}/{f}"), v).map_err(|e| e.raw_os_error().unwrap_or(libc::EPERM))
    };
    write("uid_map", format!("0 0 {count}\n"))?;
    if single {
        let _ = write("setgroups", "deny".into());
    }
    write("gid_map", format!("0 0 {count}\n"))?;
    let (idmap, rung, why) = if single {
        (
            "single:forced with --isolation single-uid",
            Isolation::SingleUid,
            "forced with --isolation single-uid",
        )
    } else {
        (
            "full",
            Isolation::Userns,
            "root without CAP_SYS_ADMIN (no plain mount namespace), but user namespaces are allowed: a user namespace mapping root's own ids",
        )
    };
    Ok(format!("{idmap}\t{rung}\t{why}"))
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

fn run_map_helper(helper: &Path, pid: i32, id: u32, range: (u32, u32)) -> Result<(), String> {
    let out = std::process::Command::new(helper)
        .args([
            pid.to_string(),
            "0".into(),
            id.to_string(),
            "1".into(),
            "1".into(),
            range.0.to_string(),
            range.1.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", helper.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        return Err(format!("{} failed: {err}", helper.display()));
    }
    Ok(())
}

/// Writes the child's id maps; returns `KILN_IDMAP<TAB>rung<TAB>why` for the child, or the
/// errno of the failed map write (no mapping possible at all, e.g. Ubuntu's AppArmor rule).
fn write_maps(pid: i32, uid: u32, gid: u32, debug: bool, single: bool) -> Result<String, i32> {
    let plan = if single {
        Err("forced with --isolation single-uid".to_string())
    } else {
        plan_mapping(uid, gid)
    };
    let full = match &plan {
        Ok(p) => {
            run_map_helper(&p.newuidmap, pid, uid, p.uid).and_then(|_| run_map_helper(&p.newgidmap, pid, gid, p.gid))
        }
        Err(reason) => Err(reason.clone()),
    };
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EPERM);
    match full {
        Ok(()) => {
            let p = plan.as_ref().unwrap();
            if debug {
                eprintln!(
                    "kiln: debug: user namespace: uid 0 -> {uid}, 1..{} -> {}..; gid 0 -> {gid}, 1..{} -> {}..",
                    p.uid.1, p.uid.0, p.gid.1, p.gid.0
                );
            }
            Ok(format!(
                "full\t{}\tuser namespace with subordinate ids (uids {}+{}, gids {}+{})",
                Isolation::Userns,
                p.uid.0,
                p.uid.1,
                p.gid.0,
                p.gid.1
            ))
        }
        Err(reason) => {
            let uid_map = parse_id_map(&std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default());
            if uid_map.is_empty() {
                std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n")).map_err(errno)?;
            }
            let gid_map = parse_id_map(&std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap_or_default());
            if gid_map.is_empty() {
                let _ = std::fs::write(format!("/proc/{pid}/setgroups"), "deny");
                std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n")).map_err(errno)?;
            }
            let advice = if single {
                "use --isolation auto for a range of ids".to_string()
            } else {
                probe::single_uid_advice(&probe::facts())
            };
            eprintln!(
                "kiln: notice: single-uid user namespace ({reason}); other users' ownership is emulated \
                 (recorded in the image, not enforced inside RUN). {advice}"
            );
            Ok(format!(
                "single:{reason}\t{}\tsingle-uid user namespace: {reason}",
                Isolation::SingleUid
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lookup_by_name_or_id_and_cap() {
        let t = "# comment\nalice:100000:65536\n1001:200000:1000000\nbob:300000:0\n";
        assert_eq!(find_subid_range(t, Some("alice"), 5), Some((100000, 65536)));
        assert_eq!(find_subid_range(t, Some("carol"), 1001), Some((200000, 65536)));
        assert_eq!(find_subid_range(t, Some("bob"), 7), None);
        assert_eq!(find_subid_range(t, None, 9), None);
    }

    #[test]
    fn id_map_parsing() {
        let m = parse_id_map("         0       1001          1\n         1     100000      65536\n");
        assert_eq!(
            m,
            vec![
                IdRange {
                    container: 0,
                    host: 1001,
                    count: 1
                },
                IdRange {
                    container: 1,
                    host: 100000,
                    count: 65536
                }
            ]
        );
        assert!(is_initial_map(&parse_id_map("0 0 4294967295\n")));
        assert!(!is_initial_map(&m));
    }
}
