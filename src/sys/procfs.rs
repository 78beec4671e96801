//! [`Proc`]: where procfs is, injected so that code reading and writing its files can be
//! unit-tested on a temp directory laid out like it.

use std::io;
use std::path::{Path, PathBuf};

/// A procfs base: `/proc` for the real thing, a temp dir in tests (`<base>/self/uid_map`,
/// `<base>/<pid>/gid_map`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    base: PathBuf,
}

impl Default for Proc {
    fn default() -> Proc {
        Proc::host()
    }
}

impl Proc {
    /// The host's `/proc`.
    pub fn host() -> Proc {
        Proc {
            base: PathBuf::from("/proc"),
        }
    }

    /// A procfs laid out under `base`.
    pub fn at(base: impl Into<PathBuf>) -> Proc {
        Proc { base: base.into() }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<base>/self/<name>`.
    pub fn own(&self, name: &str) -> PathBuf {
        self.base.join("self").join(name)
    }

    /// `<base>/<pid>/<name>`.
    pub fn pid(&self, pid: u32, name: &str) -> PathBuf {
        self.base.join(pid.to_string()).join(name)
    }

    /// Reads `<base>/self/<name>`.
    pub fn read_own(&self, name: &str) -> io::Result<String> {
        std::fs::read_to_string(self.own(name))
    }

    /// Reads `<base>/<pid>/<name>`.
    pub fn read_pid(&self, pid: u32, name: &str) -> io::Result<String> {
        std::fs::read_to_string(self.pid(pid, name))
    }

    /// Writes `data` to `<base>/<pid>/<name>` (an existing file: procfs files cannot be created).
    pub fn write_pid(&self, pid: u32, name: &str, data: &str) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(self.pid(pid, name))?;
        f.write_all(data.as_bytes())
    }

    /// A `Key:\tvalue` field of `<base>/<pid>/status` (`None` when missing or unreadable).
    pub fn status_field(&self, pid: u32, key: &str) -> Option<String> {
        status_field(&self.read_pid(pid, "status").ok()?, key)
    }
}

/// A `Key:\tvalue` field of a /proc/PID/status text, trimmed.
pub fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
}
