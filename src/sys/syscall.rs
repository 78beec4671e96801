//! The [`Syscall`] trait and its argument types.

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A mount point. Inside a rootfs it is an fd of the target, resolved through the root handle
/// at the moment of mounting, and the kernel mounts onto exactly that object (through
/// `/proc/self/fd/N`, runc's answer to CVE-2021-30465); `path` is then the path inside the
/// rootfs, for messages and tests. Without an fd, `path` is a host path of kiln's own.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub fd: Option<BorrowedFd<'a>>,
    pub path: &'a Path,
}

impl<'a> Target<'a> {
    /// A host path of kiln's own (no fd).
    pub fn host(path: &'a Path) -> Target<'a> {
        Target { fd: None, path }
    }

    /// The path to hand to the kernel.
    pub fn kernel_path(&self) -> PathBuf {
        match self.fd {
            Some(fd) => crate::fsutil::root::fd_path(fd),
            None => self.path.to_path_buf(),
        }
    }
}

/// One `fsconfig(2)` call of [`Syscall::mount_fs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsConfig {
    /// `FSCONFIG_SET_FLAG key`.
    Flag(String),
    /// `FSCONFIG_SET_STRING key=value`.
    String(String, String),
}

/// The privileged calls kiln makes (youki's set, where kiln needs it). Errors keep the type the
/// underlying call has (`io::Error` for mounts and seccomp, `Errno` for the nix wrappers), so
/// messages read as they did before the seam existed.
pub trait Syscall {
    // Namespaces.
    /// `unshare(2)`.
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;

    // Identity.
    fn getuid(&self) -> u32;
    fn geteuid(&self) -> u32;
    fn getgid(&self) -> u32;
    /// `setresuid(uid, uid, uid)`.
    fn setresuid(&self, uid: u32) -> nix::Result<()>;
    /// `setresgid(gid, gid, gid)`.
    fn setresgid(&self, gid: u32) -> nix::Result<()>;
    /// `setgroups(2)`.
    fn setgroups(&self, groups: &[u32]) -> nix::Result<()>;

    // Process attributes.
    /// `prctl(PR_SET_PDEATHSIG)`: the signal this process gets when its parent dies.
    fn set_pdeathsig(&self, sig: Signal) -> nix::Result<()>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// `setsid(2)`: a new session (and process group) led by this process.
    fn setsid(&self) -> nix::Result<()>;
    /// `setpgid(0, 0)`: a new process group led by this process.
    fn setpgid_self(&self) -> nix::Result<()>;
    /// `chdir(2)`.
    fn chdir(&self, path: &CStr) -> nix::Result<()>;

    // Capabilities.
    /// Whether `cap` is in the calling thread's `set` (false when it cannot be read).
    fn has_capability(&self, set: CapSet, cap: Capability) -> bool;
    /// The calling thread's `set` (empty when it cannot be read).
    fn capabilities(&self, set: CapSet) -> CapsHashSet;
    /// Replaces the calling thread's `set` with `caps` (the ambient set: cleared, then raised).
    fn set_capabilities(&self, set: CapSet, caps: &CapsHashSet) -> io::Result<()>;
    /// Drops `cap` from the bounding set (`prctl(PR_CAPBSET_DROP)`).
    fn drop_bounding(&self, cap: Capability) -> io::Result<()>;

    // seccomp.
    /// Installs a classic BPF program (raw `sock_filter`s) with `seccomp(2)`, no flags.
    fn seccomp_filter(&self, bpf: &[u8]) -> io::Result<()>;
    /// Like [`seccomp_filter`](Syscall::seccomp_filter) with `SECCOMP_FILTER_FLAG_NEW_LISTENER`:
    /// returns the user-notification listener.
    fn seccomp_listener(&self, bpf: &[u8]) -> io::Result<OwnedFd>;

    // Mounts.
    fn mount(
        &self,
        source: Option<&str>,
        target: Target<'_>,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// A filesystem made with the fd-based mount API: `fsopen(fstype)`, one `fsconfig` per
    /// entry of `config`, `FSCONFIG_CMD_CREATE`, `fsmount`, `move_mount` onto `target`.
    /// The error says which call failed.
    fn mount_fs(&self, fstype: &str, config: &[FsConfig], target: Target<'_>) -> io::Result<()>;
    /// `umount2(2)`.
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// Mount flags of the filesystem at `target` that a bind remount must keep (locked flags).
    fn locked_flags(&self, target: Target<'_>) -> MsFlags;
    /// Makes the mount at `target` and every mount below it read-only (`mount_setattr(2)`).
    fn readonly_recursive(&self, target: Target<'_>) -> io::Result<()>;
    /// Makes `new_root` the root (`pivot_root(".", ".")` from inside it, then detaches the old
    /// root) and changes to `/`.
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    /// `chroot(path)`, then changes to `/`.
    fn chroot(&self, path: &Path) -> io::Result<()>;
    /// `fchdir(dir)`, then `chroot(".")`: the directory of an fd becomes the root (and cwd).
    fn chroot_fd(&self, dir: BorrowedFd<'_>) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;

    // Network.
    /// Brings the loopback interface of this network namespace up (`SIOCSIFFLAGS`).
    fn loopback_up(&self) -> io::Result<()>;
}
