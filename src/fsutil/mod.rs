//! Filesystem helpers shared by every stage: the root handle (every path inside a root goes
//! through it, see [`root`]), the overlay directory format ([`overlay`]: whiteouts, opaque
//! directories, kiln's xattrs), atomic file writes.

pub mod overlay;
pub mod remove;
pub mod root;
pub mod size;
pub use root::{Follow, Root};

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::Path;

/// A libc call's `int` result as an `io::Result`: negative is the thread's `errno`. The one
/// errno check of the crate's raw calls.
pub fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename,
/// then fsync of the directory. Readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    replace_file(path, ".tmp-", Durability::FileAndDir, |f| {
        f.write_all(data).with_context(|| format!("writing {}", path.display()))
    })
}

/// What [`replace_file`] syncs before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Nothing: after a crash the file may be missing or empty (for data that is rewritten
    /// when it is unreadable, like cache entries).
    None,
    /// The file's content, before the rename.
    File,
    /// The content, and the directory after the rename.
    FileAndDir,
}

/// The one atomic write: `fill` writes a temp file (`<prefix>…`) in `path`'s directory, which
/// is renamed onto `path` when `fill` succeeded; a failed or killed writer never leaves a half
/// file at `path`.
pub fn replace_file(
    path: &Path,
    prefix: &str,
    durability: Durability,
    fill: impl FnOnce(&mut fs::File) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    fill(tmp.as_file_mut())?;
    if durability != Durability::None {
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", path.display()))?;
    if durability == Durability::FileAndDir {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Marks every file descriptor from `first` up close-on-exec, so that nothing kiln inherited
/// or opened reaches a program it executes. `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`
/// (Linux ≥ 5.11); where that is missing or refused (seccomp), every fd listed in
/// /proc/self/fd gets `FD_CLOEXEC` with fcntl. CLOEXEC rather than close: a descriptor kiln
/// still needs until the exec (the sandbox's error-report pipe) stays usable. The fallback
/// allocates: after a fork, call it only in a single-threaded process (the sandbox helper).
pub fn cloexec_from(first: std::os::fd::RawFd) -> Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes fd flags here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let fds: Vec<libc::c_int> = fs::read_dir("/proc/self/fd")
        .context("listing /proc/self/fd to mark inherited descriptors close-on-exec")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only read and change descriptor flags; a fd that was the
        // directory listing (now closed) fails with EBADF, which is fine.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFD);
            if fl >= 0 && fl & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// An anonymous in-memory file (`memfd_create`, close-on-exec) holding `data`, sealed
/// against any change: for data that must never be written to a disk (a sandbox spec with
/// secret environment variables). Readable through `/proc/self/fd/N` by whoever holds the fd.
pub fn sealed_memfd(name: &str, data: &[u8]) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let cname = std::ffi::CString::new(name).context("memfd name contains a NUL byte")?;
    // SAFETY: `cname` is NUL-terminated; the fd returned is fresh.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("memfd_create({name})"));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut f = fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    f.write_all(data).with_context(|| format!("writing memfd {name}"))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS only changes the memfd's seals.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("sealing memfd {name}"));
    }
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
    }
}
