//! Tar stream → directory, confined to the destination. One entry writer, three whiteout
//! policies: `Lower` (overlay format: char 0:0 and `user.overlay.opaque`), `Apply` (delete)
//! and `Plain` (whiteouts are ordinary files).
//!
//! Every path is resolved component by component from an `O_PATH` fd of the destination with
//! `openat(O_NOFOLLOW)`; symlinks met on the way are followed *inside* the destination (an
//! absolute target restarts at the destination, `..` stops at it), like
//! `openat2(RESOLVE_IN_ROOT)`. The final component is never followed: it is removed and
//! recreated with `*at` calls on the parent fd.

use super::Ownership;
use crate::fsutil::overlay::{self, TarWhiteout, is_overlay_xattr};
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Overlay lower: `.wh.x` → char 0:0 `x`, `.wh..wh..opq` → `user.overlay.opaque=y`.
    Lower,
    /// Onto a rootfs: `.wh.x` deletes `x`, `.wh..wh..opq` deletes what was there before.
    Apply,
    /// Whiteouts are written as plain files.
    Plain,
}

/// What an unpack did, for warnings and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Device nodes the kernel refused to create (EPERM in a user namespace).
    pub skipped_devices: u64,
    /// Entries of a type kiln does not restore (e.g. global PAX headers) or `.wh..wh.` metadata.
    pub skipped_other: u64,
    /// xattrs that could not be set (not permitted or not supported here).
    pub skipped_xattrs: u64,
    /// Ownership not restored because kiln is not running as (namespaced) root.
    pub unowned: u64,
}

impl UnpackStats {
    /// The warnings this unpack deserves (what could not be restored in `dest`), sent to
    /// `reporter`.
    pub(super) fn report(&self, dest: &Path, reporter: &crate::events::Reporter) {
        for w in self.warnings(dest) {
            reporter.warn("layer", w);
        }
    }

    pub(super) fn warnings(&self, dest: &Path) -> Vec<String> {
        let mut out = Vec::new();
        if self.skipped_devices > 0 {
            out.push(format!(
                "{} device node(s) not created in {} (mknod is not permitted in a user namespace)",
                self.skipped_devices,
                dest.display()
            ));
        }
        if self.skipped_xattrs > 0 {
            out.push(format!(
                "{} extended attribute(s) could not be set in {}",
                self.skipped_xattrs,
                dest.display()
            ));
        }
        out
    }
}

// ------------------------------------------------------------------------------------------
// libc wrappers

use crate::fsutil::cvt;

fn cstring(b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| anyhow::anyhow!("archive path {:?} contains a NUL byte", String::from_utf8_lossy(b)))
}

fn open_dir_path(dirfd: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the new
    // fd is checked (cvt) before it gets an owner.
    let fd = cvt(unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
    // closed once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dirfd: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: a C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; `st` is
    // a writable `stat` the call fills.
    cvt(unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: a C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `st` is a writable `stat` the call fills.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn readlink_at(dirfd: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; `buf`
    // is writable for `buf.len()` bytes, the most the call writes.
    let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn is_type(st: &libc::stat, t: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == t
}

fn proc_path(dirfd: RawFd, name: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{dirfd}"));
    if !name.is_empty() {
        p.push(std::ffi::OsStr::from_bytes(name));
    }
    p
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ------------------------------------------------------------------------------------------
// Confined path resolution

/// Directory fds kept open along the current path (deeper levels are re-opened on demand).
const KEEP_FDS: usize = 64;
const MAX_SYMLINKS: usize = 40;

/// Resolves directories under a root fd, caching the last resolved chain of real directories.
struct Resolver {
    root: OwnedFd,
    /// Real (symlink-free) directories below the root; the last one always has its fd.
    stack: Vec<(Vec<u8>, Option<OwnedFd>)>,
}

impl Resolver {
    fn new(root: &Path) -> Result<Resolver> {
        let c = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str()))?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })
            .with_context(|| format!("opening {}", root.display()))?;
        Ok(Resolver {
            // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it
            // is closed once.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            stack: Vec::new(),
        })
    }

    fn top(&self) -> RawFd {
        match self.stack.last() {
            Some((_, Some(fd))) => fd.as_raw_fd(),
            _ => self.root.as_raw_fd(),
        }
    }

    /// Forget cached directories (after something was removed).
    fn invalidate(&mut self) {
        self.stack.clear();
    }

    fn push(&mut self, name: Vec<u8>, fd: OwnedFd) {
        // Levels below KEEP_FDS and every KEEP_FDS-th level keep their fd, so that going up
        // re-opens at most KEEP_FDS directories even in a 4096-deep tree.
        let prev = self.stack.len().wrapping_sub(1);
        if self.stack.len() > KEEP_FDS
            && !prev.is_multiple_of(KEEP_FDS)
            && let Some(last) = self.stack.last_mut()
        {
            last.1 = None;
        }
        self.stack.push((name, Some(fd)));
    }

    /// Cuts the chain to `n` levels; levels without an fd are handed back to `pending`.
    fn truncate(&mut self, n: usize, pending: &mut Vec<Vec<u8>>) {
        self.stack.truncate(n);
        let keep = self
            .stack
            .iter()
            .rposition(|(_, f)| f.is_some())
            .map(|i| i + 1)
            .unwrap_or(0);
        for (name, _) in self.stack.drain(keep..).rev() {
            pending.push(name);
        }
    }

    /// The directory at `comps` (normalised, relative to the root), creating missing ones when
    /// `create`. Ok(None): it does not exist (and `create` is false). The fd is valid until
    /// the next call.
    fn dir(&mut self, comps: &[&[u8]], create: bool) -> Result<Option<RawFd>> {
        let common = self
            .stack
            .iter()
            .zip(comps)
            .take_while(|((n, _), c)| n.as_slice() == **c)
            .count();
        let mut pending: Vec<Vec<u8>> = comps[common..].iter().rev().map(|c| c.to_vec()).collect();
        self.truncate(common, &mut pending);
        let mut links = 0;
        while let Some(c) = pending.pop() {
            if c == b".." {
                let n = self.stack.len().saturating_sub(1);
                self.truncate(n, &mut pending);
                continue;
            }
            if c.is_empty() || c == b"." {
                continue;
            }
            let name = cstring(&c)?;
            match open_dir_path(self.top(), &name) {
                Ok(fd) => self.push(c, fd),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if !create {
                        return Ok(None);
                    }
                    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open
                    // for it.
                    match cvt(unsafe { libc::mkdirat(self.top(), name.as_ptr(), 0o755) }) {
                        Ok(_) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e).with_context(|| format!("creating directory {}", show(&c))),
                    }
                    let fd =
                        open_dir_path(self.top(), &name).with_context(|| format!("opening directory {}", show(&c)))?;
                    self.push(c, fd);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                    let st = lstat_at(self.top(), &name).with_context(|| format!("inspecting {}", show(&c)))?;
                    if !is_type(&st, libc::S_IFLNK) {
                        bail!("{} is not a directory", show(&c));
                    }
                    links += 1;
                    if links > MAX_SYMLINKS {
                        bail!("too many levels of symbolic links at {}", show(&c));
                    }
                    let target =
                        readlink_at(self.top(), &name).with_context(|| format!("reading symlink {}", show(&c)))?;
                    if target.starts_with(b"/") {
                        self.stack.clear();
                    }
                    for t in target.split(|&b| b == b'/').rev() {
                        pending.push(t.to_vec());
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("opening directory {}", show(&c))),
            }
        }
        Ok(Some(self.top()))
    }
}

/// Splits an archive path into normalised components: empty and `.` dropped, `..` applied but
/// never above the root (a `../evil` entry lands at `evil`), absolute paths made relative.
fn normalise(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Entry writer

struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker {
    res: Resolver,
    mode: Mode,
    chown: Option<(u32, u32)>,
    euid: u32,
    ownership: Ownership,
    stats: UnpackStats,
    /// (parent dev, parent ino, name) of entries written by this archive (Apply mode: opaque
    /// dirs keep them).
    created: HashSet<(u64, u64, Vec<u8>)>,
    /// Directories whose mode and mtime are set at the end.
    dirs: Vec<(Vec<u8>, u32, (i64, i64))>,
}

pub(super) fn unpack(
    r: &mut dyn Read,
    dest: &Path,
    mode: Mode,
    chown: Option<(u32, u32)>,
    ownership: Ownership,
) -> Result<UnpackStats> {
    let mut u = Unpacker {
        res: Resolver::new(dest)?,
        mode,
        chown,
        // SAFETY: geteuid has no preconditions and cannot fail.
        euid: unsafe { libc::geteuid() },
        ownership,
        stats: UnpackStats::default(),
        created: HashSet::new(),
        dirs: Vec::new(),
    };
    if mode == Mode::Lower {
        // A layer root is 0755 unless the archive says otherwise ("./" entry).
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::fchmodat(u.res.root.as_raw_fd(), c".".as_ptr(), 0o755, 0) })
            .with_context(|| format!("setting the mode of {}", dest.display()))?;
    }
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the next archive entry (truncated or corrupt stream?)")?;
        let path = entry.path_bytes().into_owned();
        u.entry(&mut entry, &path)
            .with_context(|| format!("extracting {:?}", show(&path)))?;
        u.stats.entries += 1;
    }
    u.finish_dirs()?;
    Ok(u.stats)
}

fn parse_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: String = frac.chars().take(9).collect();
    while nanos.len() < 9 {
        nanos.push('0');
    }
    let n: i64 = nanos.parse().ok()?;
    Some((secs, if secs < 0 && n > 0 { -n } else { n }))
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, path: &[u8]) -> Result<()> {
        let kind = entry.header().entry_type();
        let hdr = entry.header();
        let mut meta = Meta {
            uid: hdr.uid().unwrap_or(0) as u32,
            gid: hdr.gid().unwrap_or(0) as u32,
            mode: hdr.mode().unwrap_or(0o644) & 0o7777,
            mtime: (hdr.mtime().unwrap_or(0) as i64, 0),
            xattrs: Vec::new(),
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let dev = (
            hdr.device_major().ok().flatten().unwrap_or(0),
            hdr.device_minor().ok().flatten().unwrap_or(0),
        );
        if let Some(pax) = entry.pax_extensions().context("reading PAX headers")? {
            for ext in pax {
                let ext = ext.context("reading a PAX record")?;
                let key = ext.key_bytes();
                let v = ext.value_bytes();
                if key.starts_with(b"GNU.sparse.") {
                    bail!("PAX GNU sparse files (format 1.0) are not supported; repack the archive without --sparse");
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs.push((name.to_vec(), v.to_vec()));
                } else if key == b"uid" {
                    meta.uid = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .context("bad PAX uid")?;
                } else if key == b"gid" {
                    meta.gid = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .context("bad PAX gid")?;
                } else if key == b"mtime" {
                    meta.mtime = parse_time(v).context("bad PAX mtime")?;
                }
            }
        }
        if let Some((uid, gid)) = self.chown {
            meta.uid = uid;
            meta.gid = gid;
        }
        use tar::EntryType as T;
        if matches!(kind, T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink) {
            self.stats.skipped_other += 1;
            return Ok(());
        }
        let comps = normalise(path);
        let Some((&last, parent)) = comps.split_last() else {
            // The archive's root ("./"): only a layer's root takes its metadata.
            if kind == T::Directory && self.mode == Mode::Lower {
                let root = self.res.root.as_raw_fd();
                self.set_owner(root, c".", &meta, true)?;
                self.set_xattrs_at(root, b"", &meta, true)?;
                self.dirs.push((Vec::new(), meta.mode, meta.mtime));
            }
            return Ok(());
        };

        // Whiteouts.
        if self.mode != Mode::Plain
            && let Some(w) = overlay::tar_whiteout(last)
        {
            return self.whiteout(parent, last, w, meta.mtime);
        }

        // The hardlink target is resolved first (its fd is duplicated: the resolver's fd
        // changes with the next call).
        let link_target = if kind == T::Link {
            let l = link.as_deref().context("hardlink entry without a target")?;
            let tc = normalise(l);
            let Some((&tlast, tparent)) = tc.split_last() else {
                bail!("hardlink to the root directory")
            };
            let tfd = self
                .res
                .dir(tparent, false)?
                .with_context(|| format!("hardlink target {:?} does not exist", show(l)))?;
            // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no
            // memory of ours.
            let dup = cvt(unsafe { libc::fcntl(tfd, libc::F_DUPFD_CLOEXEC, 0) })?;
            // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it
            // is closed once.
            Some((unsafe { OwnedFd::from_raw_fd(dup) }, cstring(tlast)?, l.to_vec()))
        } else {
            None
        };

        let pfd = self.res.dir(parent, true)?.expect("created");
        let name = cstring(last)?;
        // What is there now: a directory stays for a directory entry; anything else goes.
        match lstat_at(pfd, &name) {
            Ok(st) => {
                let is_dir = is_type(&st, libc::S_IFDIR);
                if !(is_dir && kind == T::Directory) {
                    self.remove(pfd, last, is_dir)?;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("inspecting the existing entry"),
        }
        let pfd = self.res.dir(parent, true)?.expect("created");
        if self.mode == Mode::Apply {
            let st = fstat(pfd)?;
            self.created.insert((st.st_dev, st.st_ino, last.to_vec()));
        }
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it; the new fd is checked (cvt) before it gets an owner.
                let fd = cvt(unsafe {
                    libc::openat(
                        pfd,
                        name.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        0o600,
                    )
                })
                .context("creating the file")?;
                // SAFETY: the fd was just returned by a successful call (checked) and has no other owner,
                // so it is closed once.
                let mut f = unsafe { File::from_raw_fd(fd) };
                copy_sparse(entry, &mut f).context("writing the file")?;
                self.set_owner(f.as_raw_fd(), c"", &meta, false)?;
                // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no
                // memory of ours.
                cvt(unsafe { libc::fchmod(f.as_raw_fd(), meta.mode) }).context("setting the mode")?;
                self.set_xattrs_fd(&f, &meta)?;
                let ts = libc::timespec {
                    tv_sec: meta.mtime.0 as libc::time_t,
                    tv_nsec: meta.mtime.1 as libc::c_long,
                };
                // SAFETY: the fd is open for the call and the times point to a live array of two timespecs.
                cvt(unsafe { libc::futimens(f.as_raw_fd(), [ts, ts].as_ptr()) }).context("setting the mtime")?;
            }
            T::Directory => {
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                match cvt(unsafe { libc::mkdirat(pfd, name.as_ptr(), 0o700) }) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e).context("creating the directory"),
                }
                self.set_owner(pfd, &name, &meta, true)?;
                self.set_xattrs_at(pfd, last, &meta, true)?;
                self.dirs.push((comps.join(&b'/'), meta.mode, meta.mtime));
            }
            T::Symlink => {
                let target = cstring(link.as_deref().context("symlink entry without a target")?)?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), pfd, name.as_ptr()) }).context("creating the symlink")?;
                self.set_owner(pfd, &name, &meta, true)?;
                self.set_xattrs_at(pfd, last, &meta, false)?;
                set_times(pfd, &name, meta.mtime, libc::AT_SYMLINK_NOFOLLOW).context("setting the mtime")?;
            }
            T::Link => {
                let (tfd, tname, tpath) = link_target.expect("resolved above");
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::linkat(tfd.as_raw_fd(), tname.as_ptr(), pfd, name.as_ptr(), 0) })
                    .with_context(|| format!("creating a hardlink to {:?}", show(&tpath)))?;
            }
            T::Fifo | T::Char | T::Block => {
                let (fmt, rdev) = match kind {
                    T::Fifo => (libc::S_IFIFO, 0),
                    T::Char => (libc::S_IFCHR, libc::makedev(dev.0, dev.1)),
                    _ => (libc::S_IFBLK, libc::makedev(dev.0, dev.1)),
                };
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                match cvt(unsafe { libc::mknodat(pfd, name.as_ptr(), fmt | (meta.mode & 0o777), rdev) }) {
                    Ok(_) => {}
                    Err(e)
                        if e.raw_os_error() == Some(libc::EPERM) && kind != T::Fifo && self.ownership.is_emulated() =>
                    {
                        // Ownership emulation: an empty file records the device for layers.
                        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are
                        // open for it; the new fd is checked (cvt) before it gets an owner.
                        let fd = cvt(unsafe {
                            libc::openat(
                                pfd,
                                name.as_ptr(),
                                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                                0o600,
                            )
                        })
                        .context("creating the file that records a device node")?;
                        // SAFETY: the fd was just returned by a successful call (checked) and has no other
                        // owner, so it is closed once.
                        let f = unsafe { File::from_raw_fd(fd) };
                        let rec = overlay::format_dev(kind != T::Char, dev.0, dev.1);
                        xattr_set_fd(f.as_raw_fd(), super::DEV_XATTR.as_bytes(), rec.as_bytes())
                            .with_context(|| format!("recording a device node in {}", super::DEV_XATTR))?;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) && kind != T::Fifo => {
                        self.stats.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(e).context("creating the special file"),
                }
                self.set_owner(pfd, &name, &meta, true)?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::fchmodat(pfd, name.as_ptr(), meta.mode, 0) }).context("setting the mode")?;
                self.set_xattrs_at(pfd, last, &meta, false)?;
                set_times(pfd, &name, meta.mtime, libc::AT_SYMLINK_NOFOLLOW).context("setting the mtime")?;
            }
            other => {
                // Unknown types (e.g. GNU volume headers, Solaris ACLs) are not restored.
                let _ = other;
                self.stats.skipped_other += 1;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: &[&[u8]], last: &[u8], w: TarWhiteout<'_>, mtime: (i64, i64)) -> Result<()> {
        if w == TarWhiteout::Opaque {
            let Some(pfd) = self.res.dir(parent, self.mode == Mode::Lower)? else {
                return Ok(());
            };
            match self.mode {
                Mode::Lower => {
                    let d = reopen_dir(pfd)?;
                    xattr_set_fd(d.as_raw_fd(), overlay::OPAQUE_XATTR.as_bytes(), overlay::OPAQUE_VALUE)
                        .with_context(|| format!("marking the directory opaque ({})", overlay::OPAQUE_XATTR))?;
                }
                Mode::Apply => {
                    // Remove what was there before this archive.
                    let st = fstat(pfd)?;
                    let names: Vec<Vec<u8>> = std::fs::read_dir(proc_path(pfd, b""))
                        .context("listing an opaque directory")?
                        .map(|e| e.map(|e| std::os::unix::ffi::OsStrExt::as_bytes(e.file_name().as_os_str()).to_vec()))
                        .collect::<io::Result<_>>()
                        .context("listing an opaque directory")?;
                    let mut victims = Vec::new();
                    for n in names {
                        if !self.created.contains(&(st.st_dev, st.st_ino, n.clone())) {
                            victims.push(n);
                        }
                    }
                    let pfd = self.res.dir(parent, false)?.context("opaque directory vanished")?;
                    // SAFETY: `pfd` is an open directory fd borrowed for the call; the duplicate
                    // F_DUPFD_CLOEXEC returns is checked by cvt and owned by nothing else, so the OwnedFd
                    // closes it exactly once.
                    let dup = unsafe { OwnedFd::from_raw_fd(cvt(libc::fcntl(pfd, libc::F_DUPFD_CLOEXEC, 0))?) };
                    for n in victims {
                        let st = lstat_at(dup.as_raw_fd(), &cstring(&n)?)?;
                        self.remove(dup.as_raw_fd(), &n, is_type(&st, libc::S_IFDIR))?;
                    }
                }
                Mode::Plain => unreachable!(),
            }
            return Ok(());
        }
        let target = match w {
            TarWhiteout::Delete(t) => t,
            TarWhiteout::Opaque => unreachable!("handled above"),
            TarWhiteout::Meta => {
                // AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
                self.stats.skipped_other += 1;
                return Ok(());
            }
        };
        if target.is_empty() || target == b"." || target == b".." {
            bail!("invalid whiteout name {:?}", show(last));
        }
        let tname = cstring(target)?;
        match self.mode {
            Mode::Lower => {
                let pfd = self.res.dir(parent, true)?.expect("created");
                if let Ok(st) = lstat_at(pfd, &tname) {
                    self.remove(pfd, target, is_type(&st, libc::S_IFDIR))?;
                }
                let pfd = self.res.dir(parent, true)?.expect("created");
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::mknodat(pfd, tname.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) })
                    .context("creating an overlay whiteout (char device 0:0)")?;
                set_times(pfd, &tname, mtime, libc::AT_SYMLINK_NOFOLLOW).context("setting the mtime of a whiteout")?;
            }
            Mode::Apply => {
                let Some(pfd) = self.res.dir(parent, false)? else {
                    return Ok(());
                };
                if let Ok(st) = lstat_at(pfd, &tname) {
                    self.remove(pfd, target, is_type(&st, libc::S_IFDIR))?;
                }
            }
            Mode::Plain => unreachable!(),
        }
        Ok(())
    }

    /// Removes `name` in `dirfd` (recursively for a directory, never following symlinks).
    fn remove(&mut self, dirfd: RawFd, name: &[u8], is_dir: bool) -> Result<()> {
        if is_dir {
            self.res.invalidate();
            // SAFETY: `dirfd` is open for the duration of the call.
            let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dirfd) };
            crate::fsutil::root::remove_tree_at(dir, &cstring(name)?)
                .with_context(|| format!("removing directory {}", show(name)))?;
        } else {
            let c = cstring(name)?;
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::unlinkat(dirfd, c.as_ptr(), 0) }).with_context(|| format!("removing {}", show(name)))?;
        }
        Ok(())
    }

    /// lchown; `name` empty = the fd itself.
    fn set_owner(&mut self, dirfd: RawFd, name: &CStr, m: &Meta, _nofollow: bool) -> Result<()> {
        if self.euid != 0 {
            // Like GNU tar as a non-root user: files are owned by the extracting user. With
            // ownership emulation (kiln without privilege), the owner is recorded for layers.
            self.stats.unowned += 1;
            if self.ownership.is_emulated() && (m.uid, m.gid) != (0, 0) {
                let r = if name.is_empty() {
                    xattr_set_fd(
                        dirfd,
                        super::OWNER_XATTR.as_bytes(),
                        overlay::format_owner(m.uid, m.gid).as_bytes(),
                    )
                } else {
                    super::record_owner(&proc_path(dirfd, name.to_bytes()), m.uid, m.gid)
                };
                r.with_context(|| format!("recording owner {}:{} in {}", m.uid, m.gid, super::OWNER_XATTR))?;
            }
            return Ok(());
        }
        let flags = if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            libc::AT_SYMLINK_NOFOLLOW
        };
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        match cvt(unsafe { libc::fchownat(dirfd, name.as_ptr(), m.uid, m.gid, flags) }) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.ownership.is_emulated() => {
                // Single-uid user namespace: the owner is recorded for layers instead.
                self.stats.unowned += 1;
                let r = if name.is_empty() {
                    xattr_set_fd(
                        dirfd,
                        super::OWNER_XATTR.as_bytes(),
                        overlay::format_owner(m.uid, m.gid).as_bytes(),
                    )
                } else {
                    super::record_owner(&proc_path(dirfd, name.to_bytes()), m.uid, m.gid)
                };
                r.with_context(|| format!("recording owner {}:{} in {}", m.uid, m.gid, super::OWNER_XATTR))
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => bail!(
                "cannot set owner {}:{}: the id is not mapped in this user namespace (kiln needs a subuid/subgid range covering it, see /etc/subuid)",
                m.uid,
                m.gid
            ),
            Err(e) => Err(e).with_context(|| format!("setting owner {}:{}", m.uid, m.gid)),
        }
    }

    fn xattr_error(&mut self, name: &[u8], e: io::Error, regular: bool) -> Result<()> {
        let errno = e.raw_os_error().unwrap_or(0);
        let ignorable = match errno {
            libc::ENOTSUP => true,
            libc::EPERM | libc::EACCES => {
                self.euid != 0
                    || (name.starts_with(b"trusted.") || name.starts_with(b"security."))
                        && name != b"security.capability"
                    || (name.starts_with(b"user.") && !regular)
            }
            _ => false,
        };
        if ignorable {
            self.stats.skipped_xattrs += 1;
            Ok(())
        } else {
            Err(e).with_context(|| format!("setting xattr {}", show(name)))
        }
    }

    fn set_xattrs_fd(&mut self, f: &File, m: &Meta) -> Result<()> {
        for (k, v) in &m.xattrs {
            if is_overlay_xattr(k) {
                continue;
            }
            if let Err(e) = xattr_set_fd(f.as_raw_fd(), k, v) {
                self.xattr_error(k, e, true)?;
            }
        }
        Ok(())
    }

    /// xattrs of `name` in `dirfd` (not following it); `name` empty = the dir itself.
    fn set_xattrs_at(&mut self, dirfd: RawFd, name: &[u8], m: &Meta, is_dir: bool) -> Result<()> {
        if m.xattrs.is_empty() {
            return Ok(());
        }
        let p = proc_path(dirfd, name);
        for (k, v) in &m.xattrs {
            if is_overlay_xattr(k) {
                continue;
            }
            let key = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(k);
            let r = if name.is_empty() {
                let d = reopen_dir(dirfd)?;
                xattr_set_fd(d.as_raw_fd(), k, v)
            } else {
                xattr::set(&p, key, v)
            };
            if let Err(e) = r {
                self.xattr_error(k, e, is_dir)?;
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, mode, mtime) in dirs.iter().rev() {
            let comps = normalise(path);
            let (fd, name) = match comps.split_last() {
                None => (self.res.root.as_raw_fd(), c".".to_owned()),
                Some((&last, parent)) => match self.res.dir(parent, false)? {
                    Some(fd) => (fd, cstring(last)?),
                    None => continue,
                },
            };
            match lstat_at(fd, &name) {
                Ok(st) if is_type(&st, libc::S_IFDIR) => {}
                _ => continue,
            }
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::fchmodat(fd, name.as_ptr(), *mode, 0) })
                .with_context(|| format!("setting the mode of directory {:?}", show(path)))?;
            set_times(fd, &name, *mtime, libc::AT_SYMLINK_NOFOLLOW)
                .with_context(|| format!("setting the mtime of directory {:?}", show(path)))?;
        }
        Ok(())
    }
}

fn reopen_dir(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the new
    // fd is checked (cvt) before it gets an owner.
    let r = cvt(unsafe { libc::openat(fd, c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })
        .context("opening a directory")?;
    // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
    // closed once.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn xattr_set_fd(fd: RawFd, name: &[u8], value: &[u8]) -> io::Result<()> {
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fd` is open for the call, the name is a NUL-terminated C string and the value pointer and
    // length come from one live slice; the kernel only reads them.
    cvt(unsafe { libc::fsetxattr(fd, n.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), 0) })?;
    Ok(())
}

fn set_times(dirfd: RawFd, name: &CStr, (secs, nanos): (i64, i64), flags: libc::c_int) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
    // times point to a live array of two timespecs.
    cvt(unsafe { libc::utimensat(dirfd, name.as_ptr(), times.as_ptr(), flags) })?;
    Ok(())
}

static ZERO: [u8; 4096] = [0u8; 4096];

/// Copies `r` into `f`, leaving holes for whole zero blocks (a sparse archive entry, or any
/// file full of zeros, costs no disk space). Returns the byte count.
fn copy_sparse(r: &mut impl Read, f: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut skip = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        let mut run_start: Option<usize> = None;
        let mut off = 0;
        while off < n {
            let end = (off + 4096).min(n);
            let chunk = &data[off..end];
            if chunk.len() == 4096 && chunk == &ZERO[..] {
                if let Some(s) = run_start.take() {
                    f.write_all(&data[s..off])?;
                }
                skip += 4096;
            } else if run_start.is_none() {
                if skip > 0 {
                    f.seek(SeekFrom::Current(skip as i64))?;
                    skip = 0;
                }
                run_start = Some(off);
            }
            off = end;
        }
        if let Some(s) = run_start {
            f.write_all(&data[s..n])?;
        }
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    if skip > 0 {
        f.set_len(total)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_confines() {
        assert_eq!(normalise(b"../../evil"), vec![&b"evil"[..]]);
        assert_eq!(normalise(b"/abs/x"), vec![&b"abs"[..], &b"x"[..]]);
        assert_eq!(normalise(b"./a/./b/../c/"), vec![&b"a"[..], &b"c"[..]]);
        assert!(normalise(b"./").is_empty());
    }

    #[test]
    fn pax_time() {
        assert_eq!(parse_time(b"1700000000.5"), Some((1700000000, 500_000_000)));
        assert_eq!(parse_time(b"12"), Some((12, 0)));
        assert_eq!(parse_time(b"x"), None);
    }
}
