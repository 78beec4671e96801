//! The ladder's trials: the real unshare + id-map + mount sequence, tried in a forked child
//! (a few milliseconds), through the [`Syscall`] seam. See [`super::probe`] for what they decide.

use crate::sys::{RealSyscall, Syscall, Target};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

/// Result of one step of a trial: `ok`, an errno (`EPERM: Operation not permitted`), or
/// `not tried`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub errno: Option<i32>,
    pub tried: bool,
}

impl StepResult {
    pub fn ok() -> StepResult {
        StepResult {
            errno: None,
            tried: true,
        }
    }
    pub fn err(e: i32) -> StepResult {
        StepResult {
            errno: Some(e),
            tried: true,
        }
    }
    pub fn is_ok(&self) -> bool {
        self.tried && self.errno.is_none()
    }
    pub fn is_err(&self, e: i32) -> bool {
        self.errno == Some(e)
    }
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.tried, self.errno) {
            (false, _) => f.write_str("not tried"),
            (true, None) => f.write_str("ok"),
            (true, Some(e)) => {
                let n = nix::errno::Errno::from_raw(e);
                write!(f, "{n:?}: {}", n.desc())
            }
        }
    }
}

/// The unshare + id-map + mount sequence, tried in a child.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// `unshare(CLONE_NEWUSER)` (or `CLONE_NEWNS` for [`try_mountns`]).
    pub unshare: StepResult,
    /// Writing `setgroups`=deny, `uid_map` and `gid_map` with the own id.
    pub map: StepResult,
    /// `unshare(CLONE_NEWNS)` and mounting a tmpfs.
    pub mount: StepResult,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Writes `data` to a procfs file with raw calls (the trial child of a threaded process must
/// not allocate).
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated; open returns a fresh fd or -1.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `data` is valid for `data.len()` bytes; `fd` is the one just opened.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let e = Errno::last();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if n < 0 { Err(e) } else { Ok(()) }
}

fn mount_tmpfs_trial(sys: &dyn Syscall) -> StepResult {
    if let Err(e) = sys.unshare(CloneFlags::CLONE_NEWNS) {
        return StepResult::err(e as i32);
    }
    let root = Target::host(std::path::Path::new("/"));
    if let Err(e) = sys.mount(None, root, None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None) {
        return StepResult::err(io_errno(e));
    }
    match sys.mount(Some("kiln-probe"), root, Some("tmpfs"), MsFlags::empty(), None) {
        Err(e) => StepResult::err(io_errno(e)),
        Ok(()) => StepResult::ok(),
    }
}

/// Runs `f` in a forked child and returns the three step results it reports.
fn in_child(f: fn(&dyn Syscall, u32, u32) -> [StepResult; 3]) -> Trial {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Trial::default();
    }
    // SAFETY: the child only makes raw syscalls and writes a few bytes before _exit. (fork in
    // a threaded process is fine for that.)
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the read end is ours, closed once.
        unsafe { libc::close(fds[0]) };
        let r = f(&RealSyscall, uid, gid);
        let mut buf = [0u8; 24];
        for (i, s) in r.iter().enumerate() {
            let code: i32 = if !s.tried { -1 } else { s.errno.unwrap_or(0) };
            buf[i * 8..i * 8 + 4].copy_from_slice(&code.to_le_bytes());
        }
        // SAFETY: `buf` is valid for its length; _exit ends the child without unwinding.
        unsafe {
            libc::write(fds[1], buf.as_ptr().cast(), buf.len());
            libc::_exit(0)
        }
    }
    // SAFETY: the write end is ours (the child has its own copy), closed once.
    unsafe { libc::close(fds[1]) };
    let mut buf = [0u8; 24];
    let mut got = 0;
    while pid > 0 && got < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe { libc::read(fds[0], buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            break;
        }
        got += n as usize;
    }
    // SAFETY: the read end is ours, closed once.
    unsafe { libc::close(fds[0]) };
    if pid > 0 {
        let mut st = 0;
        // SAFETY: `st` is a valid out-pointer; `pid` is our child.
        while unsafe { libc::waitpid(pid, &mut st, 0) } < 0 && errno() == libc::EINTR {}
    }
    if got < buf.len() {
        return Trial::default();
    }
    let step = |i: usize| {
        let c = i32::from_le_bytes(buf[i * 8..i * 8 + 4].try_into().unwrap());
        match c {
            -1 => StepResult::default(),
            0 => StepResult::ok(),
            e => StepResult::err(e),
        }
    };
    Trial {
        unshare: step(0),
        map: step(1),
        mount: step(2),
    }
}

/// Tries, in a child: `unshare(CLONE_NEWUSER)`, mapping the own ids (setgroups=deny, uid_map,
/// gid_map), then `unshare(CLONE_NEWNS)` + a tmpfs mount. A few milliseconds.
pub fn try_userns() -> Trial {
    in_child(|sys, uid, gid| {
        let none = StepResult::default();
        if let Err(e) = sys.unshare(CloneFlags::CLONE_NEWUSER) {
            return [StepResult::err(e as i32), none.clone(), none];
        }
        let uid_line = format!("0 {uid} 1\n");
        let gid_line = format!("0 {gid} 1\n");
        let map = write_proc(c"/proc/self/setgroups", b"deny")
            .or_else(|e| if e == Errno::ENOENT { Ok(()) } else { Err(e) })
            .and_then(|_| write_proc(c"/proc/self/uid_map", uid_line.as_bytes()))
            .and_then(|_| write_proc(c"/proc/self/gid_map", gid_line.as_bytes()));
        if let Err(e) = map {
            return [StepResult::ok(), StepResult::err(e as i32), none];
        }
        [StepResult::ok(), StepResult::ok(), mount_tmpfs_trial(sys)]
    })
}

/// Real root: tries `unshare(CLONE_NEWNS)` and a tmpfs mount without a user namespace.
pub fn try_mountns() -> Trial {
    in_child(|sys, _, _| {
        let m = mount_tmpfs_trial(sys);
        let none = StepResult::default();
        if !m.is_ok() && m.errno.is_some() {
            // Tell unshare and mount failures apart.
            let u = match sys.unshare(CloneFlags::CLONE_NEWNS) {
                Err(e) => StepResult::err(e as i32),
                Ok(()) => StepResult::ok(),
            };
            return [u, none, m];
        }
        [StepResult::ok(), none, m]
    })
}
