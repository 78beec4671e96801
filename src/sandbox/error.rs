//! The sandbox's typed errors. Library callers see them through anyhow (`?` converts); the
//! step's init reports a [`StepError`] to the helper, which exits with its code.

use nix::errno::Errno;
use std::ffi::CString;
use std::io;
use std::path::PathBuf;

/// Why the step's process could not be set up (exit code 125) or its command not be started
/// (126: not executable, 127: not found).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot create the step's mount namespace: {0}")]
    MountNamespace(Errno),
    #[error("setting up the step's mounts: {0:#}")]
    Mounts(anyhow::Error),
    #[error("cannot enter the rootfs: pivot_root: {pivot}; chroot: {chroot}")]
    EnterRootfs { pivot: io::Error, chroot: io::Error },
    #[error("cannot chroot into {}: {err}", path.display())]
    Chroot { path: PathBuf, err: io::Error },
    #[error("cannot change to the working directory {cwd:?}: {err}")]
    Workdir { cwd: CString, err: Errno },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(io::Error),
    #[error("cannot drop capabilities from the bounding set: {0}")]
    Bounding(io::Error),
    #[error("cannot set up ownership emulation (seccomp user notification): {0}")]
    OwnershipEmulation(io::Error),
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(io::Error),
    #[error("cannot set supplementary groups {groups:?}: {err}")]
    Groups { groups: Vec<u32>, err: Errno },
    /// `hint`: what to check, in a clause (empty for none).
    #[error("cannot switch to gid {gid}: {err}{hint}")]
    Gid { gid: u32, err: Errno, hint: &'static str },
    #[error("cannot switch to uid {uid}: {err}{hint}")]
    Uid { uid: u32, err: Errno, hint: &'static str },
    #[error("cannot set capabilities: {0}")]
    Capabilities(io::Error),
    #[error("{0:#}")]
    Fds(anyhow::Error),
    #[error("exec {what}: {}", .errno.desc().to_lowercase())]
    Exec { what: String, errno: Errno },
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
}

impl StepError {
    /// The exit status the step reports (Docker's: 125 setup, 126 not executable, 127 not found).
    pub fn exit_code(&self) -> i32 {
        match self {
            StepError::Exec {
                errno: Errno::ENOENT | Errno::ENOTDIR,
                ..
            } => 127,
            StepError::Exec { .. } => 126,
            StepError::NotFound(_) => 127,
            _ => 125,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = StepError::NotFound("nope".into());
        assert_eq!(e.exit_code(), 127);
        assert_eq!(e.to_string(), "exec: \"nope\": executable file not found in $PATH");
        let e = StepError::Exec {
            what: "/bin/x".into(),
            errno: Errno::EACCES,
        };
        assert_eq!(
            (e.exit_code(), e.to_string().as_str()),
            (126, "exec /bin/x: permission denied")
        );
        let e = StepError::Uid {
            uid: 42,
            err: Errno::EINVAL,
            hint: " (is it mapped in kiln's user namespace?)",
        };
        assert_eq!(e.exit_code(), 125);
        assert_eq!(
            e.to_string(),
            "cannot switch to uid 42: EINVAL: Invalid argument (is it mapped in kiln's user namespace?)"
        );
    }
}
