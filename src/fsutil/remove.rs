//! Removing directory trees: one remover for the store's scratch and layer directories, the
//! root handle's `remove_all`, the unpacker's whiteouts and the sandbox's mount targets.
//!
//! Trees come from images and RUN steps, so they can be deeper than `PATH_MAX` and than the
//! fd limit allows directory fds, hold directories without write, read or search permission
//! (an image's 0555 directories, an overlay work dir's 000) and symlinks anywhere. The remover
//! walks with `*at` calls holding one directory fd at a time, never follows a symlink, opens
//! up (chmod 0700) directories it cannot empty or enter, and goes back up through `..` only
//! after checking that `..` is the directory it came down from (same device and inode): a
//! directory moved away during the removal stops it instead of taking it outside the tree.

use anyhow::{Context, Result};
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::cvt;

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a valid, writable `stat`.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn identity(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; a bad fd is reported as EBADF.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

fn open_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated; openat does not keep the pointer.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the subdirectory `name` of `dir`; one without read or search permission is opened up
/// first (it is about to be removed anyway).
fn enter(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    match open_dir(dir, name) {
        Err(e) if is_errno(&e, libc::EACCES) => {
            // SAFETY: `name` is NUL-terminated. fchmodat without AT_SYMLINK_NOFOLLOW follows a
            // symlink, but `name` was just opened with O_NOFOLLOW|O_DIRECTORY and refused for
            // permission, so it is a directory; a concurrent swap for a symlink is caught by
            // the O_NOFOLLOW open that follows.
            cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), 0o700, 0) })?;
            open_dir(dir, name)
        }
        r => r,
    }
}

fn open_up(dir: RawFd) -> io::Result<()> {
    // SAFETY: fchmod on an fd this function's caller holds open; no memory is passed.
    cvt(unsafe { libc::fchmod(dir, 0o700) }).map(|_| ())
}

/// `unlinkat(dir, name, flags)`, opening `dir` up once when it refuses for lack of write
/// permission. A name that is already gone is fine.
fn unlink(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    let once = || {
        // SAFETY: `name` is NUL-terminated; unlinkat never follows the last component.
        cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(|_| ())
    };
    match once() {
        Err(e) if is_errno(&e, libc::EACCES) || is_errno(&e, libc::EPERM) => {
            if open_up(dir).is_err() {
                return Err(e);
            }
            once()
        }
        r => r,
    }
    .or_else(|e| if is_errno(&e, libc::ENOENT) { Ok(()) } else { Err(e) })
}

/// The names in the directory `fd` (not `.` and `..`), with whether each is a directory (as
/// `readdir` says; `lstat` where it does not know).
fn entries(fd: &OwnedFd) -> io::Result<Vec<(CString, bool)>> {
    let mut d = match nix::dir::Dir::from_fd(fd.try_clone()?) {
        Ok(d) => d,
        Err(nix::errno::Errno::EACCES) => {
            open_up(fd.as_raw_fd())?;
            nix::dir::Dir::from_fd(fd.try_clone()?).map_err(io::Error::from)?
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io::Error::from)?;
        let n = e.file_name();
        if n.to_bytes() == b"." || n.to_bytes() == b".." {
            continue;
        }
        let is_dir = match e.file_type() {
            Some(nix::dir::Type::Directory) => true,
            Some(_) => false,
            None => lstat_at(fd.as_raw_fd(), n).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
        };
        out.push((n.to_owned(), is_dir));
    }
    Ok(out)
}

/// One directory on the way down: its name in its parent, its identity, and the
/// subdirectories still to be emptied.
struct Level {
    name: CString,
    id: (u64, u64),
    pending: Vec<CString>,
}

/// Unlinks the non-directories and empty subdirectories of `fd`; returns the subdirectories
/// left (not empty).
fn clear(fd: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut left = Vec::new();
    for (n, is_dir) in entries(fd)? {
        if is_dir {
            // SAFETY: `n` is NUL-terminated; AT_REMOVEDIR removes only an empty directory.
            match cvt(unsafe { libc::unlinkat(fd.as_raw_fd(), n.as_ptr(), libc::AT_REMOVEDIR) }) {
                Ok(_) => {}
                Err(e) if is_errno(&e, libc::ENOENT) => {}
                Err(_) => left.push(n),
            }
        } else {
            unlink(fd.as_raw_fd(), &n, 0)?;
        }
    }
    Ok(left)
}

/// Removes `name` in `dir` and, when it is a directory, everything below it (see the module
/// docs). A missing `name` is not an error.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let st = match lstat_at(dir.as_raw_fd(), name) {
        Ok(st) => st,
        Err(e) if is_errno(&e, libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlink(dir.as_raw_fd(), name, 0);
    }
    let mut cur = enter(dir.as_raw_fd(), name)?;
    let mut stack = vec![Level {
        name: name.to_owned(),
        id: identity(cur.as_raw_fd())?,
        pending: clear(&cur)?,
    }];
    loop {
        let top = stack.last_mut().expect("non-empty until the top is removed");
        if let Some(sub) = top.pending.pop() {
            let child = match enter(cur.as_raw_fd(), &sub) {
                Ok(c) => c,
                Err(e) if is_errno(&e, libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let id = identity(child.as_raw_fd())?;
            let pending = clear(&child)?;
            stack.push(Level { name: sub, id, pending });
            cur = child;
            continue;
        }
        // `cur` is empty: remove it from its parent.
        let done = stack.pop().expect("non-empty");
        let Some(parent) = stack.last() else {
            drop(cur);
            return unlink(dir.as_raw_fd(), &done.name, libc::AT_REMOVEDIR);
        };
        let up = open_dir(cur.as_raw_fd(), c"..")?;
        if identity(up.as_raw_fd())? != parent.id {
            return Err(io::Error::other(
                "a directory was moved while its tree was being removed",
            ));
        }
        drop(cur);
        cur = up;
        unlink(cur.as_raw_fd(), &done.name, libc::AT_REMOVEDIR)?;
    }
}

/// Removes a file or a whole directory tree at a host path (`p` itself is not followed if it
/// is a symlink). A missing path is not an error.
pub fn remove_path(p: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", p.display())),
    };
    if !md.is_dir() {
        return fs::remove_file(p).with_context(|| format!("removing {}", p.display()));
    }
    // The common case (a writable tree of reasonable depth) in one call.
    if fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    let (parent, name) = match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => (if d.as_os_str().is_empty() { Path::new(".") } else { d }, n),
        _ => anyhow::bail!("cannot remove {}: it has no parent directory", p.display()),
    };
    let pfd = fs::File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
    let name = CString::new(name.as_bytes()).with_context(|| format!("removing {}", p.display()))?;
    remove_tree_at(pfd.as_fd(), &name).with_context(|| {
        format!(
            "removing {} (files owned by other ids can only be removed inside kiln's user namespace)",
            p.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removes_deep_and_read_only_trees() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("tree");
        // Deeper than PATH_MAX and than a 1024-fd limit: built with relative paths from inside.
        fs::create_dir(&top).unwrap();
        let mut cur = fs::File::open(&top).unwrap();
        let dd = c"dd";
        for i in 0..1500 {
            // SAFETY: `dd` is NUL-terminated; `cur` is an open directory.
            assert_eq!(unsafe { libc::mkdirat(cur.as_raw_fd(), dd.as_ptr(), 0o755) }, 0);
            cur = fs::File::from(open_dir(cur.as_raw_fd(), dd).unwrap());
            if i % 500 == 0 {
                let f = c"file";
                // SAFETY: `f` is NUL-terminated; the fd is closed right away.
                let fd = unsafe { libc::openat(cur.as_raw_fd(), f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
                assert!(fd >= 0);
                // SAFETY: `fd` was just opened here.
                unsafe { libc::close(fd) };
            }
        }
        drop(cur);
        fs::create_dir_all(top.join("ro/sub")).unwrap();
        fs::write(top.join("ro/sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/", top.join("ro/link")).unwrap();
        fs::set_permissions(top.join("ro/sub"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(top.join("ro"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_path(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn never_follows_symlinks_and_missing_is_fine() {
        let t = tempfile::tempdir().unwrap();
        let keep = t.path().join("keep");
        fs::create_dir(&keep).unwrap();
        fs::write(keep.join("precious"), b"x").unwrap();
        let tree = t.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&keep, tree.join("a/b/out")).unwrap();
        std::os::unix::fs::symlink(&keep, t.path().join("link")).unwrap();
        let base = fs::File::open(t.path()).unwrap();
        remove_tree_at(base.as_fd(), c"link").unwrap();
        remove_tree_at(base.as_fd(), c"tree").unwrap();
        remove_tree_at(base.as_fd(), c"gone").unwrap();
        remove_path(&t.path().join("gone")).unwrap();
        assert!(keep.join("precious").is_file());
        assert!(!tree.exists() && fs::symlink_metadata(t.path().join("link")).is_err());
        // A file is removed as such.
        remove_path(&keep.join("precious")).unwrap();
        assert!(!keep.join("precious").exists());
    }

    #[test]
    fn wide_trees_of_non_empty_directories() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("w");
        for i in 0..200 {
            fs::create_dir_all(top.join(format!("d{i}/e"))).unwrap();
            fs::write(top.join(format!("d{i}/e/f")), b"").unwrap();
        }
        fs::set_permissions(top.join("d7"), fs::Permissions::from_mode(0o555)).unwrap();
        let base = fs::File::open(t.path()).unwrap();
        remove_tree_at(base.as_fd(), c"w").unwrap();
        assert!(!top.exists());
    }
}
