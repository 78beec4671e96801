//! [`RealSyscall`]: the kernel.
//!
//! Some of these run in a child forked from a threaded process (the ladder probe, the step's
//! PID 1): the paths without an fd go to the kernel without an allocation (nix copies short
//! paths to the stack).

use super::syscall::{FsConfig, Syscall, Target};
use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealSyscall;

fn nix_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn caps_io(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`; returns the syscall's value.
fn seccomp_set_filter(bpf: &[u8], flags: libc::c_ulong) -> io::Result<libc::c_long> {
    let len = bpf.len() / std::mem::size_of::<libc::sock_filter>();
    let prog = libc::sock_fprog {
        len: u16::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: bpf.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `len` whole `sock_filter`s of `bpf`, which outlives the call;
    // the kernel copies the program and does not write through the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

impl Syscall for RealSyscall {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn getuid(&self) -> u32 {
        nix::unistd::getuid().as_raw()
    }
    fn geteuid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }
    fn getgid(&self) -> u32 {
        nix::unistd::getgid().as_raw()
    }
    fn setresuid(&self, uid: u32) -> nix::Result<()> {
        nix::unistd::setresuid(uid.into(), uid.into(), uid.into())
    }
    fn setresgid(&self, gid: u32) -> nix::Result<()> {
        nix::unistd::setresgid(gid.into(), gid.into(), gid.into())
    }
    fn setgroups(&self, groups: &[u32]) -> nix::Result<()> {
        let g: Vec<nix::unistd::Gid> = groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&g)
    }

    fn set_pdeathsig(&self, sig: Signal) -> nix::Result<()> {
        nix::sys::prctl::set_pdeathsig(sig)
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn setsid(&self) -> nix::Result<()> {
        nix::unistd::setsid().map(|_| ())
    }
    fn setpgid_self(&self) -> nix::Result<()> {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
    }
    fn chdir(&self, path: &CStr) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn has_capability(&self, set: CapSet, cap: Capability) -> bool {
        caps::has_cap(None, set, cap).unwrap_or(false)
    }
    fn capabilities(&self, set: CapSet) -> CapsHashSet {
        caps::read(None, set).unwrap_or_default()
    }
    fn set_capabilities(&self, set: CapSet, value: &CapsHashSet) -> io::Result<()> {
        if value.is_empty() {
            caps::clear(None, set).map_err(caps_io)
        } else {
            caps::set(None, set, value).map_err(caps_io)
        }
    }
    fn drop_bounding(&self, cap: Capability) -> io::Result<()> {
        caps::drop(None, CapSet::Bounding, cap).map_err(caps_io)
    }

    fn seccomp_filter(&self, bpf: &[u8]) -> io::Result<()> {
        seccomp_set_filter(bpf, 0).map(|_| ())
    }
    fn seccomp_listener(&self, bpf: &[u8]) -> io::Result<OwnedFd> {
        let fd = seccomp_set_filter(bpf, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
        // SAFETY: with NEW_LISTENER, seccomp(2) returns a fresh fd that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    fn mount(
        &self,
        source: Option<&str>,
        target: Target<'_>,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        match target.fd {
            Some(_) => nix::mount::mount(source, &target.kernel_path(), fstype, flags, data),
            None => nix::mount::mount(source, target.path, fstype, flags, data),
        }
        .map_err(nix_io)
    }
    fn mount_fs(&self, fstype: &str, config: &[FsConfig], target: Target<'_>) -> io::Result<()> {
        use rustix::mount as m;
        let fail = |what: String| {
            move |e: rustix::io::Errno| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    MountApiError {
                        call: what,
                        err: io::Error::from(e),
                    },
                )
            }
        };
        let fs = m::fsopen(fstype, m::FsOpenFlags::FSOPEN_CLOEXEC).map_err(fail(format!("fsopen({fstype})")))?;
        for c in config {
            match c {
                FsConfig::Flag(k) => m::fsconfig_set_flag(&fs, k.as_str()).map_err(fail(format!("fsconfig {k}")))?,
                FsConfig::String(k, v) => {
                    m::fsconfig_set_string(&fs, k.as_str(), v.as_str()).map_err(fail(format!("fsconfig {k}={v}")))?
                }
            }
        }
        m::fsconfig_create(&fs).map_err(fail("creating the superblock".into()))?;
        let mnt = m::fsmount(&fs, m::FsMountFlags::FSMOUNT_CLOEXEC, m::MountAttrFlags::empty())
            .map_err(fail("fsmount".into()))?;
        let to = format!("move_mount to {}", target.path.display());
        match target.fd {
            Some(fd) => m::move_mount(
                &mnt,
                "",
                fd,
                "",
                m::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | m::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
            ),
            None => m::move_mount(
                &mnt,
                "",
                rustix::fs::CWD,
                target.path,
                m::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            ),
        }
        .map_err(fail(to))
    }
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(nix_io)
    }
    fn locked_flags(&self, target: Target<'_>) -> MsFlags {
        use nix::sys::statvfs::FsFlags;
        let st = match target.fd {
            Some(fd) => nix::sys::statvfs::fstatvfs(fd),
            None => nix::sys::statvfs::statvfs(target.path),
        };
        let Ok(s) = st else {
            return MsFlags::empty();
        };
        let f = s.flags();
        let mut m = MsFlags::empty();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(a) {
                m |= b;
            }
        }
        m
    }
    fn readonly_recursive(&self, target: Target<'_>) -> io::Result<()> {
        // struct mount_attr (linux/mount.h); neither nix nor rustix wraps mount_setattr(2).
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const MOUNT_ATTR_RDONLY: u64 = 1;
        let (dirfd, c, flags) = match target.fd {
            Some(fd) => (fd.as_fd().as_raw_fd(), c"".to_owned(), libc::AT_EMPTY_PATH),
            None => (
                libc::AT_FDCWD,
                std::ffi::CString::new(target.path.as_os_str().as_encoded_bytes())?,
                libc::AT_SYMLINK_NOFOLLOW,
            ),
        };
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: `c` is NUL-terminated and `attr` is a valid `struct mount_attr` of the size
        // passed; both outlive the call, which only reads them. `dirfd` is open (borrowed).
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                dirfd,
                c.as_ptr(),
                libc::AT_RECURSIVE | flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        nix::unistd::chdir(new_root).map_err(nix_io)?;
        nix::unistd::pivot_root(".", ".").map_err(nix_io)?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(nix_io)?;
        nix::unistd::chdir("/").map_err(nix_io)
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chroot(path).map_err(nix_io)?;
        nix::unistd::chdir("/").map_err(nix_io)
    }
    fn chroot_fd(&self, dir: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        nix::unistd::fchdir(dir).map_err(nix_io)?;
        nix::unistd::chroot(".").map_err(nix_io)
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(nix_io)
    }
    fn loopback_up(&self) -> io::Result<()> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
        let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(nix_io)?;
        // SAFETY: `ifreq` is a plain C struct (integers and arrays): all zeroes is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`, which `req` is; `sock` is open.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Which call of [`Syscall::mount_fs`] failed (the `io::Error`'s inner error; its
/// `raw_os_error` is gone, the kind is kept).
#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {err}")]
pub struct MountApiError {
    pub call: String,
    pub err: io::Error,
}
