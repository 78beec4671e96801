//! The privileged seam (youki's `Syscall` pattern), at the bottom of the module layering so that
//! both `sandbox` and `rootfs` use it without importing each other.
//!
//! - [`Syscall`]: every privileged call kiln makes — namespaces, ids, groups, `prctl`,
//!   capabilities, seccomp, mounts (classic and the fd-based mount API), `pivot_root`, `chroot`,
//!   `sethostname` — behind one trait. [`RealSyscall`] calls the kernel; [`RecordingSyscall`]
//!   records the calls and answers from its fields, so the logic around them (the mount plan, the
//!   sandbox's privilege drop, the id mapping) is unit-tested without privileges.
//! - [`Proc`]: the procfs base (`/proc`, or a temp dir in tests) for the files the id-mapping
//!   code reads and writes (`uid_map`, `gid_map`, `setgroups`, `status`).
//! - [`idstate`]: the file format in which the ownership-emulation supervisor (sandbox) publishes
//!   the emulated fs ids of a step's processes and the FUSE overlay (rootfs) reads them.
//! - [`Confinement`]: what the isolation this process runs with allows, as a value the caller
//!   passes down (the sandbox decides it, the rootfs drivers obey it).

pub mod idstate;
mod procfs;
mod real;
mod recording;
mod syscall;

pub use procfs::{Proc, status_field};
pub use real::RealSyscall;
pub use recording::{Call, RecordingSyscall};
pub use syscall::{FsConfig, Syscall, Target};

/// What the isolation rung of this process allows, filled by the caller from
/// `sandbox::confinement()` and handed to the rootfs drivers (which may not ask the sandbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// The rung's name (`userns`, `single-uid`, `chroot`, `none`), for messages.
    pub isolation: &'static str,
    /// Whether kiln may mount here (overlay lowers, the RUN sandbox's /proc, /dev, ...).
    pub can_mount: bool,
    /// A single-uid user namespace: only the user's own id is mapped (ownership is emulated).
    pub single_uid: bool,
}
