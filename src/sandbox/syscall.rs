//! The privileged calls the sandbox makes, behind one trait (youki's pattern): the real
//! implementation calls the kernel, the recording one lets the mount plan be unit-tested
//! without namespaces.

use nix::mount::{MntFlags, MsFlags};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
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

impl Target<'_> {
    /// The path to hand to the kernel.
    pub fn kernel_path(&self) -> PathBuf {
        match self.fd {
            Some(fd) => crate::fsutil::root::fd_path(fd),
            None => self.path.to_path_buf(),
        }
    }
}

/// Privileged operations used while building a step's root.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: Target<'_>,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// Mount flags of the filesystem at `target` that a bind remount must keep (locked flags).
    fn locked_flags(&self, target: Target<'_>) -> MsFlags;
    /// Makes the mount at `target` and every mount below it read-only (mount_setattr(2)).
    fn readonly_recursive(&self, target: Target<'_>) -> io::Result<()>;
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    fn chroot(&self, path: &Path) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
}

fn nix_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The kernel.
pub struct RealSyscall;

impl Syscall for RealSyscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: Target<'_>,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, &target.kernel_path(), fstype, flags, data).map_err(nix_io)
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
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const MOUNT_ATTR_RDONLY: u64 = 1;
        let (dirfd, c, flags) = match target.fd {
            Some(fd) => (fd.as_raw_fd(), c"".to_owned(), libc::AT_EMPTY_PATH),
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
    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(nix_io)
    }
}

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    ReadonlyRecursive(PathBuf),
    PivotRoot(PathBuf),
    Chroot(PathBuf),
    Sethostname(String),
}

/// Records calls; mounts of the filesystem types in `fail_fstypes` fail with EPERM.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: std::cell::RefCell<Vec<Call>>,
    pub fail_fstypes: Vec<String>,
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: Target<'_>,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        if fstype.is_some_and(|f| self.fail_fstypes.iter().any(|x| x == f)) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.calls.borrow_mut().push(Call::Mount {
            source: source.map(str::to_string),
            target: target.path.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn umount(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Umount(target.to_path_buf()));
        Ok(())
    }
    fn locked_flags(&self, _target: Target<'_>) -> MsFlags {
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV
    }
    fn readonly_recursive(&self, target: Target<'_>) -> io::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::ReadonlyRecursive(target.path.to_path_buf()));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::PivotRoot(new_root.to_path_buf()));
        Ok(())
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Chroot(path.to_path_buf()));
        Ok(())
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Sethostname(name.to_string()));
        Ok(())
    }
}
