//! [`RecordingSyscall`]: records every call and answers from its fields, for unit tests of the
//! logic around the privileged calls (no namespaces or privileges needed).

use super::syscall::{FsConfig, Syscall, Target};
use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use std::cell::RefCell;
use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Unshare(CloneFlags),
    Setresuid(u32),
    Setresgid(u32),
    Setgroups(Vec<u32>),
    Pdeathsig(Signal),
    NoNewPrivs,
    Setsid,
    SetpgidSelf,
    Chdir(PathBuf),
    /// `set` is the `CapSet`'s name (`Effective`, ...); `caps` sorted names.
    SetCapabilities {
        set: String,
        caps: Vec<String>,
    },
    DropBounding(Capability),
    /// A seccomp filter of that many instructions.
    SeccompFilter(usize),
    /// A seccomp filter with a user-notification listener, of that many instructions.
    SeccompListener(usize),
    Mount {
        source: Option<String>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    MountFs {
        fstype: String,
        config: Vec<FsConfig>,
        target: PathBuf,
    },
    Umount(PathBuf),
    ReadonlyRecursive(PathBuf),
    PivotRoot(PathBuf),
    Chroot(PathBuf),
    /// The fd's path (`/proc/self/fd/N`).
    ChrootFd(PathBuf),
    Sethostname(String),
    LoopbackUp,
}

impl Call {
    /// The call's name as [`RecordingSyscall::fail`] takes it (`mount`, `setresuid`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Call::Unshare(_) => "unshare",
            Call::Setresuid(_) => "setresuid",
            Call::Setresgid(_) => "setresgid",
            Call::Setgroups(_) => "setgroups",
            Call::Pdeathsig(_) => "set_pdeathsig",
            Call::NoNewPrivs => "set_no_new_privs",
            Call::Setsid => "setsid",
            Call::SetpgidSelf => "setpgid_self",
            Call::Chdir(_) => "chdir",
            Call::SetCapabilities { .. } => "set_capabilities",
            Call::DropBounding(_) => "drop_bounding",
            Call::SeccompFilter(_) => "seccomp_filter",
            Call::SeccompListener(_) => "seccomp_listener",
            Call::Mount { .. } => "mount",
            Call::MountFs { .. } => "mount_fs",
            Call::Umount(_) => "umount",
            Call::ReadonlyRecursive(_) => "readonly_recursive",
            Call::PivotRoot(_) => "pivot_root",
            Call::Chroot(_) => "chroot",
            Call::ChrootFd(_) => "chroot_fd",
            Call::Sethostname(_) => "sethostname",
            Call::LoopbackUp => "loopback_up",
        }
    }
}

/// Records calls. Mounts of the filesystem types in `fail_fstypes` and the calls named in
/// `fail` (see [`Call::name`]) fail with EPERM (and are not recorded); the ids and
/// capabilities it reports come from its fields.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
    pub fail_fstypes: Vec<String>,
    pub fail: Vec<&'static str>,
    /// What `getuid`/`geteuid`/`getgid` answer.
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    /// Every capability set reads as this one.
    pub caps: CapsHashSet,
}

impl RecordingSyscall {
    fn record(&self, c: Call) -> io::Result<()> {
        if self.fail.contains(&c.name()) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.calls.borrow_mut().push(c);
        Ok(())
    }

    fn record_nix(&self, c: Call) -> nix::Result<()> {
        self.record(c).map_err(|_| nix::errno::Errno::EPERM)
    }

    /// The names of the recorded calls, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.calls.borrow().iter().map(Call::name).collect()
    }
}

fn bpf_len(bpf: &[u8]) -> usize {
    bpf.len() / std::mem::size_of::<libc::sock_filter>()
}

impl Syscall for RecordingSyscall {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        self.record_nix(Call::Unshare(flags))
    }
    fn getuid(&self) -> u32 {
        self.uid
    }
    fn geteuid(&self) -> u32 {
        self.euid
    }
    fn getgid(&self) -> u32 {
        self.gid
    }
    fn setresuid(&self, uid: u32) -> nix::Result<()> {
        self.record_nix(Call::Setresuid(uid))
    }
    fn setresgid(&self, gid: u32) -> nix::Result<()> {
        self.record_nix(Call::Setresgid(gid))
    }
    fn setgroups(&self, groups: &[u32]) -> nix::Result<()> {
        self.record_nix(Call::Setgroups(groups.to_vec()))
    }
    fn set_pdeathsig(&self, sig: Signal) -> nix::Result<()> {
        self.record_nix(Call::Pdeathsig(sig))
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record(Call::NoNewPrivs)
    }
    fn setsid(&self) -> nix::Result<()> {
        self.record_nix(Call::Setsid)
    }
    fn setpgid_self(&self) -> nix::Result<()> {
        self.record_nix(Call::SetpgidSelf)
    }
    fn chdir(&self, path: &CStr) -> nix::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes()));
        self.record_nix(Call::Chdir(p))
    }
    fn has_capability(&self, _set: CapSet, cap: Capability) -> bool {
        self.caps.contains(&cap)
    }
    fn capabilities(&self, _set: CapSet) -> CapsHashSet {
        self.caps.clone()
    }
    fn set_capabilities(&self, set: CapSet, value: &CapsHashSet) -> io::Result<()> {
        let mut caps: Vec<String> = value.iter().map(|c| c.to_string()).collect();
        caps.sort();
        self.record(Call::SetCapabilities {
            set: format!("{set:?}"),
            caps,
        })
    }
    fn drop_bounding(&self, cap: Capability) -> io::Result<()> {
        self.record(Call::DropBounding(cap))
    }
    fn seccomp_filter(&self, bpf: &[u8]) -> io::Result<()> {
        self.record(Call::SeccompFilter(bpf_len(bpf)))
    }
    fn seccomp_listener(&self, bpf: &[u8]) -> io::Result<OwnedFd> {
        self.record(Call::SeccompListener(bpf_len(bpf)))?;
        // Something to hand back that is an fd of ours.
        Ok(std::fs::File::open("/dev/null")?.into())
    }
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
        self.record(Call::Mount {
            source: source.map(str::to_string),
            target: target.path.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }
    fn mount_fs(&self, fstype: &str, config: &[FsConfig], target: Target<'_>) -> io::Result<()> {
        if self.fail_fstypes.iter().any(|x| x == fstype) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.record(Call::MountFs {
            fstype: fstype.to_string(),
            config: config.to_vec(),
            target: target.path.to_path_buf(),
        })
    }
    fn umount(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
        self.record(Call::Umount(target.to_path_buf()))
    }
    fn locked_flags(&self, _target: Target<'_>) -> MsFlags {
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV
    }
    fn readonly_recursive(&self, target: Target<'_>) -> io::Result<()> {
        self.record(Call::ReadonlyRecursive(target.path.to_path_buf()))
    }
    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.record(Call::PivotRoot(new_root.to_path_buf()))
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chroot(path.to_path_buf()))
    }
    fn chroot_fd(&self, dir: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        self.record(Call::ChrootFd(crate::fsutil::root::fd_path(dir)))
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::Sethostname(name.to_string()))
    }
    fn loopback_up(&self) -> io::Result<()> {
        self.record(Call::LoopbackUp)
    }
}
