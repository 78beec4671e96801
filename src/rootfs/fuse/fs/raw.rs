//! The system calls and `stat` helpers under the overlay logic: thin wrappers that turn
//! libc results into `io::Result`s, and the in-kernel copy used by copy-up.

use crate::fsutil::overlay;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub(super) fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

pub(super) use crate::fsutil::cvt;

pub(super) fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| err(libc::EINVAL))
}

pub(super) fn stat_at(dirfd: RawFd, rel: &CStr) -> io::Result<libc::stat64> {
    // SAFETY: a C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; `st` is
    // a writable `stat64` the call fills.
    cvt(unsafe { libc::fstatat64(dirfd, rel.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub(super) fn fstat(fd: RawFd) -> io::Result<libc::stat64> {
    // SAFETY: a C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `st` is a writable `stat64` the call fills.
    cvt(unsafe { libc::fstat64(fd, &mut st) })?;
    Ok(st)
}

pub(super) fn is_whiteout(st: &libc::stat64) -> bool {
    overlay::is_whiteout_mode(st.st_mode, st.st_rdev)
}

pub(super) fn is_dir(st: &libc::stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(super) fn absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent == b"." {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

pub(super) fn dt_of(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        _ => libc::DT_UNKNOWN,
    }
}

pub(super) fn st_atime(st: &libc::stat64) -> libc::timespec {
    libc::timespec {
        tv_sec: st.st_atime,
        tv_nsec: st.st_atime_nsec,
    }
}

pub(super) fn st_mtime(st: &libc::stat64) -> libc::timespec {
    libc::timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec,
    }
}

pub(super) fn set_times_at(dirfd: RawFd, name: &CStr, st: &libc::stat64) -> io::Result<()> {
    let ts = [st_atime(st), st_mtime(st)];
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
    // times point to a live array of two timespecs.
    cvt(unsafe { libc::utimensat(dirfd, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

pub(super) fn readlink_at(dirfd: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; `buf`
    // is writable for `buf.len()` bytes, the most the call writes.
    let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Copies `len` bytes (in-kernel when possible: reflink or copy_file_range).
pub(super) fn copy_data(src: &File, dst: &File, len: u64) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both fds are open (borrowed Files); FICLONE takes the source fd as an integer and touches no
    // memory of ours.
    if len > 0 && unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(());
    }
    let mut done = 0u64;
    while done < len {
        // SAFETY: both fds are open (borrowed Files) and the offset pointers are null (the files' own
        // offsets are used), so the call touches no memory of ours.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                (len - done).min(1 << 30) as usize,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV) | Some(libc::ENOSYS) | Some(libc::EINVAL)
            ) && done == 0
            {
                let mut s = src;
                let mut d = dst;
                io::copy(&mut s, &mut d)?;
                return Ok(());
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(())
}
