//! Ownership and identity emulation for RUN steps in a single-uid user namespace.
//!
//! With only one id mapped, the kernel refuses `chown` to any other id (EINVAL) before a
//! filesystem is even asked, refuses `setuid(42)`, and refuses device nodes, so `chown`,
//! `dpkg`, `apt-get` (which drops to `_apt`) and `adduser` fail. No filesystem — kernel overlay
//! or FUSE — can help: an unmapped owner cannot be represented in the kernel at all. So the
//! step's syscalls that need other ids are handed to a supervisor with seccomp user
//! notification (`SECCOMP_RET_USER_NOTIF`, Linux >= 5.0), as fakeroot does with LD_PRELOAD but
//! for static binaries too:
//!
//! - `chown` family: the owner is recorded in the `user.kiln.owner` xattr (see
//!   [`crate::layer::OWNER_XATTR`]) of the file in the step's rootfs (the overlay copies it
//!   up), and the layer tar carries it; `stat` shows the recorded owner.
//! - `set*id`/`setgroups` succeed and are remembered per process (inherited by children), and
//!   `get*id`/`getgroups` report them, so `apt-get`'s privilege drop (with its checks) works.
//! - `mknod` of a device creates an empty file recording the device in `user.kiln.dev`; the
//!   layer tar carries a real device node.
//! - `stat`, `lstat`, `fstat`, `newfstatat` and `statx` report recorded owners.
//!
//! The step still runs with real uid 0 (and the capabilities of the bounding set): this
//! emulates what the image will contain, not a security boundary between users in the step.
//!
//! The filter is installed in the step's PID 1 before it switches user; the listener fd goes
//! to the helper over a socket, where a thread answers. Paths are resolved as the calling
//! process would: the thread (with its own fs_struct) chroots into `/proc/PID/root` and starts
//! from the caller's cwd or dirfd.

use anyhow::{Context, Result};
use libseccomp::{ScmpAction, ScmpFilterContext, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags, ScmpSyscall};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::sys::{RealSyscall, Syscall, idstate};

const DEV_XATTR: &str = crate::layer::DEV_XATTR;
const OWNER_XATTR: &str = crate::layer::OWNER_XATTR;

/// The syscalls handed to the supervisor.
fn notified() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_getuid,
        libc::SYS_getgid,
        libc::SYS_geteuid,
        libc::SYS_getegid,
        libc::SYS_getresuid,
        libc::SYS_getresgid,
        libc::SYS_getgroups,
        libc::SYS_mknodat,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_mknod,
        libc::SYS_stat,
        libc::SYS_lstat,
    ]);
    v
}

/// The notify filter (built with libseccomp, before the fork): the syscalls above go to the
/// listener, everything else (and every foreign architecture) is allowed.
pub fn filter() -> Result<Vec<u8>> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).context("cannot create a seccomp filter")?;
    ctx.set_act_badarch(ScmpAction::Allow)
        .context("cannot set the seccomp filter's foreign-architecture action")?;
    for nr in notified() {
        ctx.add_rule(ScmpAction::Notify, ScmpSyscall::from(nr as i32))
            .with_context(|| format!("seccomp notify rule for syscall {nr} failed"))?;
    }
    super::seccomp::export(&ctx)
}

/// In the step's PID 1, before it switches user: installs the notify filter and sends the
/// listener to the helper over `sock`.
pub fn install_and_send(sys: &dyn Syscall, filter: &[u8], sock: RawFd) -> io::Result<()> {
    let listener = sys.seccomp_listener(filter)?;
    send_fd(sock, listener.as_fd())
}

fn nix_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS, with one byte of data).
fn send_fd(sock: RawFd, fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let fds = [fd.as_raw_fd()];
    sendmsg::<UnixAddr>(
        sock,
        &[io::IoSlice::new(&[0u8])],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(nix_io)?;
    Ok(())
}

/// Receives the fd [`send_fd`] sent (close-on-exec).
fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
    let mut byte = [0u8; 1];
    let mut cbuf = nix::cmsg_space!(RawFd);
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let msg = loop {
        match recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut cbuf), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(nix_io(e)),
            Ok(m) => break m,
        }
    };
    if msg.bytes == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no listener was sent"));
    }
    for c in msg.cmsgs().map_err(nix_io)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: SCM_RIGHTS installed this fd in our table, for us alone.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no fd in the message"))
}

/// Starts the supervisor thread in the helper: it receives the listener from `sock` and
/// answers until the step's last process is gone; emulated ids go to `state` (see
/// [`idstate`]).
/// The thread ends with an error when emulation stopped before the step's end.
pub fn spawn_supervisor(sock: OwnedFd, state: PathBuf) -> Result<std::thread::JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("kiln-idemu".into())
        .spawn(move || {
            // No listener: the init failed before sending it, and says why itself.
            let Ok(listener) = recv_fd(sock.as_raw_fd()) else {
                return Ok(());
            };
            drop(sock);
            Supervisor::new(state)
                .and_then(|mut s| s.serve(listener.as_raw_fd()))
                .context("ownership emulation stopped")
        })
        .context("cannot start the ownership emulation thread")
}

/// Emulated credentials of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ids {
    uid: [u32; 4], // real, effective, saved, fs
    gid: [u32; 4],
    groups: Vec<u32>,
}

const KEEP: u32 = u32::MAX;

impl Ids {
    fn setuid(&mut self, u: u32) {
        if self.uid[1] == 0 {
            self.uid = [u; 4];
        } else {
            self.uid[1] = u;
            self.uid[3] = u;
        }
    }
    fn setgid(&mut self, g: u32) {
        if self.uid[1] == 0 {
            self.gid = [g; 4];
        } else {
            self.gid[1] = g;
            self.gid[3] = g;
        }
    }
    fn setre(ids: &mut [u32; 4], r: u32, e: u32) {
        let old_r = ids[0];
        if r != KEEP {
            ids[0] = r;
        }
        if e != KEEP {
            ids[1] = e;
        }
        if r != KEEP || (e != KEEP && e != old_r) {
            ids[2] = ids[1];
        }
        ids[3] = ids[1];
    }
    fn setres(ids: &mut [u32; 4], r: u32, e: u32, s: u32) {
        if r != KEEP {
            ids[0] = r;
        }
        if e != KEEP {
            ids[1] = e;
        }
        if s != KEEP {
            ids[2] = s;
        }
        ids[3] = ids[1];
    }
}

struct Supervisor {
    /// Emulated credentials by task id; absent = real root.
    ids: HashMap<u32, Ids>,
    /// The thread's real root and cwd, to come back after resolving in a step's root.
    root: OwnedFd,
    cwd: OwnedFd,
    /// See [`idstate`].
    state: PathBuf,
}

use crate::fsutil::cvt;

fn open_path(p: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated; open returns a fresh fd or -1.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A recorded `uid:gid`.
fn parse_owner(v: &[u8]) -> Option<(u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (u, g) = s.trim().split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// The `/proc/self/fd/N` path of an fd (xattr calls on it reach the file itself).
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

// The xattr calls below follow `/proc/self/fd/N` (the `l*` variants would act on the magic
// link itself).

fn get_xattr(fd: &OwnedFd, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(fd_path(fd)).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: `p` and `n` are NUL-terminated; the kernel writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn set_xattr(fd: &OwnedFd, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(fd_path(fd)).unwrap();
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `p` and `n` are NUL-terminated; `value` is valid for `value.len()` bytes and only read.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    })?;
    Ok(())
}

/// Records `uid:gid` as the owner of what `fd` points to (root: the record is removed).
fn record_owner(fd: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    if (uid, gid) == (0, 0) {
        let p = CString::new(fd_path(fd)).unwrap();
        let n = CString::new(OWNER_XATTR).unwrap();
        // SAFETY: `p` and `n` are NUL-terminated.
        return match cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(e),
            _ => Ok(()),
        };
    }
    set_xattr(fd, OWNER_XATTR, format!("{uid}:{gid}").as_bytes())
}

fn fstat(fd: RawFd) -> io::Result<libc::stat64> {
    // SAFETY: `stat64` is a plain C struct: all zeroes is valid.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for fstat64.
    cvt(unsafe { libc::fstat64(fd, &mut st) })?;
    Ok(st)
}

impl Supervisor {
    fn new(state: PathBuf) -> io::Result<Supervisor> {
        // A private fs_struct: chroot and chdir below affect only this thread.
        RealSyscall.unshare(nix::sched::CloneFlags::CLONE_FS).map_err(nix_io)?;
        Ok(Supervisor {
            ids: HashMap::new(),
            root: open_path("/", libc::O_PATH | libc::O_DIRECTORY)?,
            cwd: open_path(".", libc::O_PATH | libc::O_DIRECTORY)?,
            state,
        })
    }

    /// Remembers `pid`'s emulated ids and publishes its fs ids.
    fn set_ids(&mut self, pid: u32, ids: Ids) {
        let (u, g) = (ids.uid[3], ids.gid[3]);
        if self.ids.get(&pid).is_none_or(|old| (old.uid[3], old.gid[3]) != (u, g)) {
            idstate::publish(&self.state, pid, u, g);
        }
        self.ids.insert(pid, ids);
    }

    fn serve(&mut self, listener: RawFd) -> io::Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        // SAFETY: the listener stays open for the whole loop (the caller owns it).
        let fd = unsafe { BorrowedFd::borrow_raw(listener) };
        loop {
            let mut pfd = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut pfd, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(nix_io(e)),
                Ok(_) => {}
            }
            if !pfd[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                // POLLHUP: no task uses the filter any more.
                return Ok(());
            }
            let n = match ScmpNotifReq::receive(listener) {
                Ok(n) => n,
                Err(e) => {
                    // libseccomp reports a failed receive as ECANCELED; errno has the cause.
                    match io::Error::last_os_error().raw_os_error() {
                        // ENOENT: the caller is gone (killed while waiting).
                        Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                        _ => return Err(io::Error::other(e)),
                    }
                }
            };
            let resp = match self.handle(listener, &n) {
                Reply::Continue => ScmpNotifResp::new_continue(n.id, ScmpNotifRespFlags::CONTINUE),
                Reply::Val(v) => ScmpNotifResp::new_val(n.id, v, ScmpNotifRespFlags::empty()),
                Reply::Err(e) => ScmpNotifResp::new_error(n.id, -e, ScmpNotifRespFlags::empty()),
            };
            // An error here: the caller is gone (killed while waiting).
            let _ = resp.respond(listener);
        }
    }

    /// The emulated credentials of `pid`: its own, else those of its thread group or parent
    /// (inherited at clone), else real root.
    fn ids_of(&mut self, pid: u32) -> Ids {
        if let Some(i) = self.ids.get(&pid) {
            return i.clone();
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| -> Option<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
        };
        for p in [field("Tgid:"), field("PPid:")].into_iter().flatten() {
            if p != pid
                && let Some(i) = self.ids.get(&p)
            {
                let i = i.clone();
                self.set_ids(pid, i.clone());
                return i;
            }
        }
        Ids::default()
    }

    fn handle(&mut self, listener: RawFd, n: &ScmpNotifReq) -> Reply {
        let a = n.data.args;
        let pid = n.pid;
        let nr = i32::from(n.data.syscall) as i64;
        let r = match nr {
            libc::SYS_fchownat => self.chown(
                listener,
                n,
                a[0] as i32,
                Some(a[1]),
                a[2] as u32,
                a[3] as u32,
                a[4] as i32,
            ),
            libc::SYS_fchown => self.chown(listener, n, a[0] as i32, None, a[1] as u32, a[2] as u32, 0),
            libc::SYS_getuid => Ok(Reply::Val(self.ids_of(pid).uid[0] as i64)),
            libc::SYS_geteuid => Ok(Reply::Val(self.ids_of(pid).uid[1] as i64)),
            libc::SYS_getgid => Ok(Reply::Val(self.ids_of(pid).gid[0] as i64)),
            libc::SYS_getegid => Ok(Reply::Val(self.ids_of(pid).gid[1] as i64)),
            libc::SYS_getresuid | libc::SYS_getresgid => {
                let i = self.ids_of(pid);
                let v = if nr == libc::SYS_getresuid { i.uid } else { i.gid };
                (|| {
                    for k in 0..3 {
                        write_mem(pid, a[k], &v[k].to_ne_bytes())?;
                    }
                    Ok(Reply::Val(0))
                })()
            }
            libc::SYS_getgroups => {
                let i = self.ids_of(pid);
                let size = a[0] as i32;
                if size == 0 {
                    Ok(Reply::Val(i.groups.len() as i64))
                } else if (size as usize) < i.groups.len() || size < 0 {
                    Ok(Reply::Err(libc::EINVAL))
                } else {
                    let bytes: Vec<u8> = i.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
                    write_mem(pid, a[1], &bytes).map(|_| Reply::Val(i.groups.len() as i64))
                }
            }
            libc::SYS_setgroups => {
                let count = a[0] as usize;
                if count > 65536 {
                    Ok(Reply::Err(libc::EINVAL))
                } else {
                    read_mem(pid, a[1], count * 4).map(|b| {
                        let groups = b
                            .chunks_exact(4)
                            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .collect();
                        let mut i = self.ids_of(pid);
                        i.groups = groups;
                        self.set_ids(pid, i);
                        Reply::Val(0)
                    })
                }
            }
            libc::SYS_setuid | libc::SYS_setgid | libc::SYS_setreuid | libc::SYS_setregid => {
                let mut i = self.ids_of(pid);
                match nr {
                    libc::SYS_setuid => i.setuid(a[0] as u32),
                    libc::SYS_setgid => i.setgid(a[0] as u32),
                    libc::SYS_setreuid => Ids::setre(&mut i.uid, a[0] as u32, a[1] as u32),
                    _ => Ids::setre(&mut i.gid, a[0] as u32, a[1] as u32),
                }
                self.set_ids(pid, i);
                Ok(Reply::Val(0))
            }
            libc::SYS_setresuid | libc::SYS_setresgid => {
                let mut i = self.ids_of(pid);
                let ids = if nr == libc::SYS_setresuid {
                    &mut i.uid
                } else {
                    &mut i.gid
                };
                Ids::setres(ids, a[0] as u32, a[1] as u32, a[2] as u32);
                self.set_ids(pid, i);
                Ok(Reply::Val(0))
            }
            libc::SYS_setfsuid | libc::SYS_setfsgid => {
                let mut i = self.ids_of(pid);
                let ids = if nr == libc::SYS_setfsuid {
                    &mut i.uid
                } else {
                    &mut i.gid
                };
                let old = ids[3];
                if a[0] as u32 != KEEP {
                    ids[3] = a[0] as u32;
                }
                self.set_ids(pid, i);
                Ok(Reply::Val(old as i64))
            }
            libc::SYS_mknodat => self.mknod(listener, n, a[0] as i32, a[1], a[2] as u32, a[3]),
            libc::SYS_newfstatat => self.stat(listener, n, a[0] as i32, Some(a[1]), a[2], a[3] as i32),
            libc::SYS_fstat => self.stat(listener, n, a[0] as i32, None, a[1], libc::AT_EMPTY_PATH),
            libc::SYS_statx => self.statx(listener, n, a[0] as i32, a[1], a[2] as i32, a[4]),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_chown => self.chown(listener, n, libc::AT_FDCWD, Some(a[0]), a[1] as u32, a[2] as u32, 0),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_lchown => self.chown(
                listener,
                n,
                libc::AT_FDCWD,
                Some(a[0]),
                a[1] as u32,
                a[2] as u32,
                libc::AT_SYMLINK_NOFOLLOW,
            ),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_mknod => self.mknod(listener, n, libc::AT_FDCWD, a[0], a[1] as u32, a[2]),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_stat => self.stat(listener, n, libc::AT_FDCWD, Some(a[0]), a[1], 0),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_lstat => self.stat(listener, n, libc::AT_FDCWD, Some(a[0]), a[1], libc::AT_SYMLINK_NOFOLLOW),
            _ => Ok(Reply::Continue),
        };
        match r {
            Ok(r) => r,
            Err(e) => Reply::Err(errno(&e)),
        }
    }

    /// Reads a path argument and checks the caller is still waiting (no TOCTOU on the id).
    fn path_arg(&self, listener: RawFd, n: &ScmpNotifReq, addr: u64) -> io::Result<Vec<u8>> {
        let p = read_cstr(n.pid, addr)?;
        libseccomp::notify_id_valid(listener, n.id).map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))?;
        Ok(p)
    }

    /// Opens (O_PATH) what the caller means by (`dirfd`, `path`, `flags`), resolving in its
    /// root and from its cwd or dirfd.
    fn resolve(&self, pid: u32, dirfd: i32, path: Option<&[u8]>, flags: i32) -> io::Result<OwnedFd> {
        let path = path.unwrap_or(b"");
        if path.is_empty() {
            if flags & libc::AT_EMPTY_PATH == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            let p = if dirfd == libc::AT_FDCWD {
                format!("/proc/{pid}/cwd")
            } else {
                format!("/proc/{pid}/fd/{dirfd}")
            };
            return open_path(&p, libc::O_PATH);
        }
        let root = open_path(&format!("/proc/{pid}/root"), libc::O_PATH | libc::O_DIRECTORY)?;
        let base = if path.starts_with(b"/") {
            None
        } else if dirfd == libc::AT_FDCWD {
            Some(open_path(
                &format!("/proc/{pid}/cwd"),
                libc::O_PATH | libc::O_DIRECTORY,
            )?)
        } else {
            Some(open_path(&format!("/proc/{pid}/fd/{dirfd}"), libc::O_PATH)?)
        };
        let cpath = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut oflags = libc::O_PATH | libc::O_CLOEXEC;
        if flags & libc::AT_SYMLINK_NOFOLLOW != 0 {
            oflags |= libc::O_NOFOLLOW;
        }
        RealSyscall.chroot_fd(root.as_fd())?;
        let r = (|| {
            if let Some(b) = &base {
                nix::unistd::fchdir(b).map_err(nix_io)?;
            }
            // SAFETY: `cpath` is NUL-terminated; open returns a fresh fd or -1.
            let fd = cvt(unsafe { libc::open(cpath.as_ptr(), oflags) })?;
            // SAFETY: the fd was just returned by open and is owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })();
        self.restore();
        r
    }

    /// Opens the parent directory of `path` (as the caller sees it) and returns the last name.
    fn resolve_parent(&self, pid: u32, dirfd: i32, path: &[u8]) -> io::Result<(OwnedFd, Vec<u8>)> {
        let trimmed = {
            let mut p = path;
            while p.len() > 1 && p.ends_with(b"/") {
                p = &p[..p.len() - 1];
            }
            p
        };
        let (dir, name) = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(0) => (&b"/"[..], &trimmed[1..]),
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (&b"."[..], trimmed),
        };
        if name.is_empty() || name == b"." || name == b".." {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok((self.resolve(pid, dirfd, Some(dir), 0)?, name.to_vec()))
    }

    /// Back to the thread's own root and cwd (which were open before any chroot).
    fn restore(&self) {
        let _ = RealSyscall.chroot_fd(self.root.as_fd());
        let _ = nix::unistd::fchdir(&self.cwd);
    }

    #[allow(clippy::too_many_arguments)]
    fn chown(
        &mut self,
        listener: RawFd,
        n: &ScmpNotifReq,
        dirfd: i32,
        path: Option<u64>,
        uid: u32,
        gid: u32,
        flags: i32,
    ) -> io::Result<Reply> {
        let (path, flags) = match path {
            Some(addr) => (Some(self.path_arg(listener, n, addr)?), flags),
            None => (None, libc::AT_EMPTY_PATH),
        };
        let fd = self.resolve(n.pid, dirfd, path.as_deref(), flags)?;
        let st = fstat(fd.as_raw_fd())?;
        let (cu, cg) = get_xattr(&fd, OWNER_XATTR)
            .and_then(|v| parse_owner(&v))
            .unwrap_or((st.st_uid, st.st_gid));
        let nu = if uid == KEEP { cu } else { uid };
        let ng = if gid == KEEP { cg } else { gid };
        // Linux clears set-user-ID (and group-executable set-group-ID) on chown of non-dirs.
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFREG && (uid != KEEP || gid != KEEP) {
            let mut mode = st.st_mode & 0o7777;
            mode &= !libc::S_ISUID;
            if mode & libc::S_IXGRP != 0 {
                mode &= !libc::S_ISGID;
            }
            if mode != st.st_mode & 0o7777 {
                let p = CString::new(fd_path(&fd)).unwrap();
                // SAFETY: `p` is NUL-terminated (the fd's /proc/self/fd path).
                cvt(unsafe { libc::chmod(p.as_ptr(), mode) })?;
            }
        }
        if kind == libc::S_IFLNK {
            // Symlinks cannot carry user xattrs; their owner does not matter in images.
            return Ok(Reply::Val(0));
        }
        record_owner(&fd, nu, ng)?;
        Ok(Reply::Val(0))
    }

    fn mknod(
        &mut self,
        listener: RawFd,
        n: &ScmpNotifReq,
        dirfd: i32,
        path: u64,
        mode: u32,
        dev: u64,
    ) -> io::Result<Reply> {
        let kind = mode & libc::S_IFMT;
        if !(kind == libc::S_IFCHR || kind == libc::S_IFBLK) || dev == 0 {
            return Ok(Reply::Continue);
        }
        let path = self.path_arg(listener, n, path)?;
        let (dir, name) = self.resolve_parent(n.pid, dirfd, &path)?;
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let umask = std::fs::read_to_string(format!("/proc/{}/status", n.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022);
        // SAFETY: `cname` is NUL-terminated and `dir` an open directory fd; returns a fresh fd or -1.
        let fd = cvt(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                cname.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                (mode & 0o7777 & !umask) as libc::c_uint,
            )
        })?;
        // SAFETY: the fd was just returned by openat and is owned by nobody else.
        let f = unsafe { OwnedFd::from_raw_fd(fd) };
        let (maj, min) = (libc::major(dev as libc::dev_t), libc::minor(dev as libc::dev_t));
        let rec = format!("{} {maj} {min}", if kind == libc::S_IFCHR { "c" } else { "b" });
        let r = set_xattr(&f, DEV_XATTR, rec.as_bytes()).and_then(|_| {
            let ids = self.ids_of(n.pid);
            if (ids.uid[3], ids.gid[3]) != (0, 0) {
                record_owner(&f, ids.uid[3], ids.gid[3])?;
            }
            Ok(())
        });
        if let Err(e) = r {
            // SAFETY: `cname` is NUL-terminated and `dir` an open directory fd.
            unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), 0) };
            return Err(e);
        }
        Ok(Reply::Val(0))
    }

    /// The recorded owner and device of what `fd` points to, if any.
    fn recorded(&self, fd: &OwnedFd) -> Recorded {
        let owner = get_xattr(fd, OWNER_XATTR).and_then(|v| parse_owner(&v));
        let dev = get_xattr(fd, DEV_XATTR).and_then(|v| parse_dev(&v));
        (owner, dev)
    }

    fn stat(
        &mut self,
        listener: RawFd,
        n: &ScmpNotifReq,
        dirfd: i32,
        path: Option<u64>,
        buf: u64,
        flags: i32,
    ) -> io::Result<Reply> {
        let path = match path {
            Some(addr) => Some(self.path_arg(listener, n, addr)?),
            None => None,
        };
        if flags & !(libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH | libc::AT_NO_AUTOMOUNT) != 0 {
            return Ok(Reply::Continue);
        }
        let fd = self.resolve(n.pid, dirfd, path.as_deref(), flags)?;
        let (owner, dev) = self.recorded(&fd);
        if owner.is_none() && dev.is_none() {
            return Ok(Reply::Continue);
        }
        // SAFETY: `stat` is a plain C struct: all zeroes is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer for fstat.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        if let Some((u, g)) = owner {
            st.st_uid = u;
            st.st_gid = g;
        }
        if let Some((kind, maj, min)) = dev {
            st.st_mode = (st.st_mode & 0o7777) | kind;
            st.st_rdev = libc::makedev(maj, min);
        }
        // SAFETY: `st` is a live, initialised `stat`; the slice covers exactly its bytes and ends with this borrow.
        let bytes = unsafe {
            std::slice::from_raw_parts(&st as *const libc::stat as *const u8, std::mem::size_of::<libc::stat>())
        };
        write_mem(n.pid, buf, bytes)?;
        Ok(Reply::Val(0))
    }

    fn statx(
        &mut self,
        listener: RawFd,
        n: &ScmpNotifReq,
        dirfd: i32,
        path: u64,
        flags: i32,
        buf: u64,
    ) -> io::Result<Reply> {
        let path = self.path_arg(listener, n, path)?;
        let known = libc::AT_SYMLINK_NOFOLLOW
            | libc::AT_EMPTY_PATH
            | libc::AT_NO_AUTOMOUNT
            | libc::AT_STATX_SYNC_TYPE
            | libc::AT_STATX_FORCE_SYNC
            | libc::AT_STATX_DONT_SYNC;
        if flags & !known != 0 {
            return Ok(Reply::Continue);
        }
        let fd = self.resolve(n.pid, dirfd, Some(&path), flags)?;
        let (owner, dev) = self.recorded(&fd);
        if owner.is_none() && dev.is_none() {
            return Ok(Reply::Continue);
        }
        // SAFETY: `statx` is a plain C struct: all zeroes is valid.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH names the fd itself; `stx` is a valid out-pointer.
        cvt(unsafe {
            libc::statx(
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_ALL,
                &mut stx,
            )
        })?;
        if let Some((u, g)) = owner {
            stx.stx_uid = u;
            stx.stx_gid = g;
        }
        if let Some((kind, maj, min)) = dev {
            stx.stx_mode = ((stx.stx_mode as u32 & 0o7777) | kind) as u16;
            stx.stx_rdev_major = maj;
            stx.stx_rdev_minor = min;
        }
        // SAFETY: `stx` is a live, initialised `statx`; the slice covers exactly its bytes and ends with this borrow.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &stx as *const libc::statx as *const u8,
                std::mem::size_of::<libc::statx>(),
            )
        };
        write_mem(n.pid, buf, bytes)?;
        Ok(Reply::Val(0))
    }
}

/// A recorded owner and a recorded device (S_IFCHR/S_IFBLK, major, minor).
type Recorded = (Option<(u32, u32)>, Option<(u32, u32, u32)>);

enum Reply {
    /// Let the kernel run the syscall as it is.
    Continue,
    Val(i64),
    /// An errno.
    Err(i32),
}

/// Parses a [`DEV_XATTR`] record into (S_IFCHR/S_IFBLK, major, minor).
fn parse_dev(v: &[u8]) -> Option<(u32, u32, u32)> {
    let (block, major, minor) = crate::layer::parse_dev(v)?;
    Some((if block { libc::S_IFBLK } else { libc::S_IFCHR }, major, minor))
}

fn mem(pid: u32, write: bool) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(format!("/proc/{pid}/mem"))
}

fn read_mem(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = mem(pid, false)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr)?;
    Ok(buf)
}

fn write_mem(pid: u32, addr: u64, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    mem(pid, true)?.write_all_at(data, addr)
}

/// Reads a NUL-terminated string (at most PATH_MAX bytes) page by page.
fn read_cstr(pid: u32, addr: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = mem(pid, false)?;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < libc::PATH_MAX as usize {
        let chunk = (4096 - (at % 4096)) as usize;
        let mut buf = vec![0u8; chunk];
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..i]);
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
    Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

/// Whether RUN steps need emulation here: a single-uid user namespace.
pub fn wanted() -> bool {
    super::idmap::single_uid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rules() {
        let mut i = Ids::default();
        Ids::setres(&mut i.gid, 42, 42, 42);
        i.setuid(42);
        assert_eq!(i.uid, [42; 4]);
        assert_eq!(i.gid, [42; 4]);
        let mut j = Ids::default();
        Ids::setre(&mut j.uid, KEEP, 1000);
        assert_eq!(j.uid, [0, 1000, 1000, 1000]);
        Ids::setre(&mut j.uid, KEEP, 0);
        assert_eq!(j.uid[1], 0);
    }

    #[test]
    fn records_parse() {
        assert_eq!(parse_dev(b"c 1 3"), Some((libc::S_IFCHR, 1, 3)));
        assert_eq!(parse_dev(b"b 8 0"), Some((libc::S_IFBLK, 8, 0)));
        assert_eq!(parse_dev(b"x"), None);
        assert_eq!(parse_owner(b"100:101"), Some((100, 101)));
    }

    #[test]
    fn filter_builds_with_every_notified_syscall() {
        let bpf = filter().unwrap();
        let n = bpf.len() / std::mem::size_of::<libc::sock_filter>();
        assert_eq!(bpf.len() % std::mem::size_of::<libc::sock_filter>(), 0);
        // At least an arch check, a load and one test per syscall.
        assert!(n > notified().len() + 2, "{n} instructions");
    }
}
