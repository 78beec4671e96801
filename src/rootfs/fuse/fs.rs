//! The overlay logic served over FUSE: a merged view of read-only lower directories and a
//! writable upper directory, with the semantics (and the on-disk upper format) of kernel
//! overlayfs with `userxattr`:
//!
//! - a deleted lower entry becomes a whiteout (char device 0:0) in the upper dir;
//! - a directory created where a lower one was deleted carries `user.overlay.opaque=y`;
//! - copy-up keeps owner, mode, times and xattrs (overlay bookkeeping xattrs excepted);
//! - renaming a directory that has lower content fails with EXDEV (as overlayfs without
//!   `redirect_dir`, which userxattr mounts cannot use), so `mv` falls back to copying;
//! - hardlinks made in the upper dir are real hardlinks; lower hardlinks are broken by
//!   copy-up (as overlayfs without `index`).
//!
//! One node per merged path. Each node knows the layer its current version lives in (0 =
//! upper) and, for directories, the layers whose entries merge into it (top first). The
//! kernel applies the umask before sending modes (FUSE_DONT_MASK is not negotiated); the
//! worker threads run with a private `umask(0)` (see `super::worker`), so the process umask
//! is never touched. Every change is recorded in a journal of relative paths.

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader, ZeroCopyWriter,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::fsutil::overlay;

/// The opaque-directory marker this overlay reads and writes. Only kiln's own name: the
/// lowers are kiln's unpacked layers and the upper is this overlay's own, so no other name can
/// be there (see [`crate::fsutil::overlay`]), and a lookup costs one `getxattr`, not three.
const OPAQUE_XATTR: &[u8] = overlay::OPAQUE_XATTR.as_bytes();
/// How long the kernel may cache entries and attributes: everything changes through us.
const TTL: Duration = Duration::from_secs(86400);
const ROOT: u64 = 1;

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| err(libc::EINVAL))
}

fn stat_at(dirfd: RawFd, rel: &CStr) -> io::Result<libc::stat64> {
    // SAFETY: a C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; `st` is
    // a writable `stat64` the call fills.
    cvt(unsafe { libc::fstatat64(dirfd, rel.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat64> {
    // SAFETY: a C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `st` is a writable `stat64` the call fills.
    cvt(unsafe { libc::fstat64(fd, &mut st) })?;
    Ok(st)
}

fn is_whiteout(st: &libc::stat64) -> bool {
    overlay::is_whiteout_mode(st.st_mode, st.st_rdev)
}

fn is_dir(st: &libc::stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Overlay bookkeeping xattrs: hidden from the merged view, never copied up.
use crate::fsutil::overlay::is_overlay_xattr as is_private_xattr;

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent == b"." {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

/// One layer directory: an `O_PATH` fd for `*at` calls and its path for xattr calls.
pub struct Layer {
    fd: OwnedFd,
    path: PathBuf,
}

impl Layer {
    pub fn open(path: &Path) -> io::Result<Layer> {
        let c = cstring(path.as_os_str().as_bytes())?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        Ok(Layer {
            // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it
            // is closed once.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    fn abs(&self, rel: &[u8]) -> io::Result<CString> {
        let mut p = self.path.as_os_str().as_bytes().to_vec();
        if rel != b"." {
            p.push(b'/');
            p.extend_from_slice(rel);
        }
        cstring(&p)
    }
}

struct Node {
    parent: u64,
    name: Vec<u8>,
    /// `S_IFMT` bits.
    kind: u32,
    /// Layer of the current version: 0 = upper.
    layer: usize,
    /// Directories: the layers merged into this one, top first (starts with `layer`).
    dirs: Vec<usize>,
    /// The inode number shown (the first one seen, kept across copy-up).
    ino: u64,
    nlookup: u64,
    children: HashMap<Vec<u8>, u64>,
    /// Other names of this node (hardlinks made through the mount): (parent, name).
    links: Vec<(u64, Vec<u8>)>,
    unlinked: bool,
}

enum Handle {
    /// An open file and its node.
    File(u64, Arc<File>),
    Dir(Arc<Vec<(Vec<u8>, u64, u32)>>),
}

struct Inner {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    journal: BTreeSet<Vec<u8>>,
    tmp_seq: u64,
}

impl Inner {
    fn node(&self, ino: u64) -> io::Result<&Node> {
        self.nodes.get(&ino).ok_or_else(|| err(libc::ENOENT))
    }
    fn node_mut(&mut self, ino: u64) -> io::Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or_else(|| err(libc::ENOENT))
    }
    /// The node's path relative to the layer roots (`.` for the root).
    fn rel(&self, ino: u64) -> io::Result<Vec<u8>> {
        let mut names: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = self.node(cur)?;
            if n.unlinked {
                return Err(err(libc::ENOENT));
            }
            names.push(&n.name);
            cur = n.parent;
        }
        if names.is_empty() {
            return Ok(b".".to_vec());
        }
        names.reverse();
        Ok(names.join(&b'/'))
    }
    fn add_handle(&mut self, h: Handle) -> u64 {
        self.next_fh += 1;
        self.handles.insert(self.next_fh, h);
        self.next_fh
    }
}

/// The overlay filesystem (see the module docs).
pub struct OverlayFs {
    /// Index 0 is the upper dir, then the lowers, top first.
    layers: Vec<Layer>,
    /// Scratch dir on the upper's filesystem (copy-up goes through it).
    work: Layer,
    inner: Mutex<Inner>,
    /// Where the step's ownership emulation publishes emulated ids (single-uid mode, see
    /// `crate::sys::idstate`): new entries of an emulated user record it as owner.
    ids_dir: Option<PathBuf>,
}

impl OverlayFs {
    /// `lowers` top first; `work` must be on the same filesystem as `upper`.
    pub fn new(lowers: &[PathBuf], upper: &Path, work: &Path, ids_dir: Option<PathBuf>) -> io::Result<OverlayFs> {
        let mut layers = vec![Layer::open(upper)?];
        for l in lowers {
            layers.push(Layer::open(l)?);
        }
        let work = Layer::open(work)?;
        let fs = OverlayFs {
            layers,
            work,
            ids_dir,
            inner: Mutex::new(Inner {
                nodes: HashMap::new(),
                next_ino: ROOT + 1,
                handles: HashMap::new(),
                next_fh: 0,
                journal: BTreeSet::new(),
                tmp_seq: 0,
            }),
        };
        // The root merges every layer down to the first opaque one.
        let mut dirs = vec![0];
        if !fs.is_opaque(0, b".") {
            for i in 1..fs.layers.len() {
                dirs.push(i);
                if fs.is_opaque(i, b".") {
                    break;
                }
            }
        }
        let st = fstat(fs.layers[0].fd())?;
        fs.inner.lock().unwrap().nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: Vec::new(),
                kind: libc::S_IFDIR,
                layer: 0,
                dirs,
                ino: st.st_ino,
                nlookup: 2,
                children: HashMap::new(),
                links: Vec::new(),
                unlinked: false,
            },
        );
        Ok(fs)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The changed paths recorded so far (relative to the root, sorted).
    pub fn journal(&self) -> Vec<PathBuf> {
        self.lock()
            .journal
            .iter()
            .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
            .collect()
    }

    fn is_opaque(&self, layer: usize, rel: &[u8]) -> bool {
        matches!(self.get_xattr(layer, rel, OPAQUE_XATTR), Ok(Some(v)) if v == overlay::OPAQUE_VALUE)
    }

    fn get_xattr(&self, layer: usize, rel: &[u8], name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let p = self.layers[layer].abs(rel)?;
        let n = cstring(name)?;
        let mut buf = vec![0u8; 256];
        loop {
            let r =
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it; `buf` is writable for `buf.len()` bytes, the most the call writes.
                unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if r >= 0 {
                buf.truncate(r as usize);
                return Ok(Some(buf));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
                Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
                _ => return Err(e),
            }
        }
    }

    fn list_xattrs(&self, layer: usize, rel: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let p = self.layers[layer].abs(rel)?;
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it;
            // `buf` is writable for `buf.len()` bytes, the most the call writes.
            let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
            if r >= 0 {
                buf.truncate(r as usize);
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
                _ => return Err(e),
            }
        }
        Ok(buf
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| n.to_vec())
            .collect())
    }

    fn set_xattr(&self, layer: usize, rel: &[u8], name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        let p = self.layers[layer].abs(rel)?;
        let n = cstring(name)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // value pointer and length come from one live slice.
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr() as *const libc::c_void,
                value.len(),
                flags,
            )
        })?;
        Ok(())
    }

    /// The attributes of a node as shown (its own inode number).
    fn attr(&self, inner: &Inner, ino: u64) -> io::Result<libc::stat64> {
        let n = inner.node(ino)?;
        let rel = inner.rel(ino)?;
        let mut st = stat_at(self.layers[n.layer].fd(), &cstring(&rel)?)?;
        st.st_ino = n.ino;
        Ok(st)
    }

    fn entry(&self, inner: &mut Inner, ino: u64) -> io::Result<Entry> {
        let st = self.attr(inner, ino)?;
        inner.node_mut(ino)?.nlookup += 1;
        Ok(Entry {
            inode: ino,
            generation: 0,
            attr: st,
            attr_flags: 0,
            attr_timeout: TTL,
            entry_timeout: TTL,
        })
    }

    /// Finds `name` in directory `parent` (merged view), creating its node on first sight.
    fn find(&self, inner: &mut Inner, parent: u64, name: &[u8]) -> io::Result<Option<u64>> {
        let p = inner.node(parent)?;
        if p.kind != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        if let Some(&c) = p.children.get(name) {
            return Ok(Some(c));
        }
        let dirs = p.dirs.clone();
        let rel = join(&inner.rel(parent)?, name);
        let crel = cstring(&rel)?;
        let mut found = None;
        for (i, &l) in dirs.iter().enumerate() {
            match stat_at(self.layers[l].fd(), &crel) {
                Ok(st) if is_whiteout(&st) => return Ok(None),
                Ok(st) => {
                    found = Some((i, l, st));
                    break;
                }
                Err(e) if absent(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        let Some((i, l, st)) = found else {
            return Ok(None);
        };
        let kind = st.st_mode & libc::S_IFMT;
        let mut nd = Vec::new();
        if kind == libc::S_IFDIR {
            nd.push(l);
            if !self.is_opaque(l, &rel) {
                for &m in &dirs[i + 1..] {
                    match stat_at(self.layers[m].fd(), &crel) {
                        Ok(st) if is_dir(&st) => {
                            nd.push(m);
                            if self.is_opaque(m, &rel) {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(e) if absent(&e) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let ino = inner.next_ino;
        inner.next_ino += 1;
        inner.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_vec(),
                kind,
                layer: l,
                dirs: nd,
                ino: st.st_ino,
                nlookup: 0,
                children: HashMap::new(),
                links: Vec::new(),
                unlinked: false,
            },
        );
        inner.node_mut(parent)?.children.insert(name.to_vec(), ino);
        Ok(Some(ino))
    }

    /// True if a lower layer merged into the directory `parent` shows an entry at `rel`.
    fn lower_has(&self, inner: &Inner, parent: u64, rel: &CStr) -> io::Result<bool> {
        for &l in inner.node(parent)?.dirs.iter().filter(|&&l| l != 0) {
            match stat_at(self.layers[l].fd(), rel) {
                Ok(st) => return Ok(!is_whiteout(&st)),
                Err(e) if absent(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Makes sure `ino` (and its parents) exist in the upper dir.
    fn copy_up(&self, inner: &mut Inner, ino: u64) -> io::Result<()> {
        let n = inner.node(ino)?;
        if n.layer == 0 {
            return Ok(());
        }
        let (parent, src_layer, kind) = (n.parent, n.layer, n.kind);
        self.copy_up(inner, parent)?;
        let rel = inner.rel(ino)?;
        let crel = cstring(&rel)?;
        let src = &self.layers[src_layer];
        let up = self.layers[0].fd();
        let st = stat_at(src.fd(), &crel)?;
        match kind {
            libc::S_IFDIR => {
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                match cvt(unsafe { libc::mkdirat(up, crel.as_ptr(), st.st_mode & 0o7777) }) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::fchownat(up, crel.as_ptr(), st.st_uid, st.st_gid, libc::AT_SYMLINK_NOFOLLOW) })?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::fchmodat(up, crel.as_ptr(), st.st_mode & 0o7777, 0) })?;
                self.copy_xattrs(src_layer, &rel, 0, &rel)?;
                set_times_at(up, &crel, &st)?;
            }
            libc::S_IFLNK => {
                let target = readlink_at(src.fd(), &crel)?;
                let t = cstring(&target)?;
                let tmp = self.tmp_name(inner);
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::symlinkat(t.as_ptr(), self.work.fd(), tmp.as_ptr()) })?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe {
                    libc::fchownat(
                        self.work.fd(),
                        tmp.as_ptr(),
                        st.st_uid,
                        st.st_gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
                set_times_at(self.work.fd(), &tmp, &st)?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::renameat(self.work.fd(), tmp.as_ptr(), up, crel.as_ptr()) })?;
            }
            libc::S_IFREG => {
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it; the new fd is checked (cvt) before it gets an owner.
                let sfd = cvt(unsafe {
                    libc::openat(
                        src.fd(),
                        crel.as_ptr(),
                        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                })?;
                // SAFETY: the fd was just returned by a successful call (checked) and has no other owner,
                // so it is closed once.
                let sfile = unsafe { File::from_raw_fd(sfd) };
                let tmp = self.tmp_name(inner);
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it; the new fd is checked (cvt) before it gets an owner.
                let dfd = cvt(unsafe {
                    libc::openat(
                        self.work.fd(),
                        tmp.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o600,
                    )
                })?;
                // SAFETY: the fd was just returned by a successful call (checked) and has no other owner,
                // so it is closed once.
                let dfile = unsafe { File::from_raw_fd(dfd) };
                let r = (|| -> io::Result<()> {
                    copy_data(&sfile, &dfile, st.st_size as u64)?;
                    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads
                    // no memory of ours.
                    cvt(unsafe { libc::fchown(dfd, st.st_uid, st.st_gid) })?;
                    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads
                    // no memory of ours.
                    cvt(unsafe { libc::fchmod(dfd, st.st_mode & 0o7777) })?;
                    let tmp_rel = tmp.as_bytes();
                    self.copy_xattrs_to_work(src_layer, &rel, tmp_rel)?;
                    let ts = [st_atime(&st), st_mtime(&st)];
                    // SAFETY: the fd is open for the call and the times point to a live array of two
                    // timespecs.
                    cvt(unsafe { libc::futimens(dfd, ts.as_ptr()) })?;
                    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open
                    // for it.
                    cvt(unsafe { libc::renameat(self.work.fd(), tmp.as_ptr(), up, crel.as_ptr()) })?;
                    Ok(())
                })();
                if r.is_err() {
                    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open
                    // for it.
                    unsafe { libc::unlinkat(self.work.fd(), tmp.as_ptr(), 0) };
                }
                r?;
            }
            _ => {
                // fifos, sockets (device nodes cannot be created in a user namespace).
                let tmp = self.tmp_name(inner);
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::mknodat(self.work.fd(), tmp.as_ptr(), st.st_mode, st.st_rdev) })?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe {
                    libc::fchownat(
                        self.work.fd(),
                        tmp.as_ptr(),
                        st.st_uid,
                        st.st_gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::fchmodat(self.work.fd(), tmp.as_ptr(), st.st_mode & 0o7777, 0) })?;
                self.copy_xattrs_to_work(src_layer, &rel, tmp.as_bytes())?;
                set_times_at(self.work.fd(), &tmp, &st)?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::renameat(self.work.fd(), tmp.as_ptr(), up, crel.as_ptr()) })?;
            }
        }
        let n = inner.node_mut(ino)?;
        n.layer = 0;
        if kind == libc::S_IFDIR {
            n.dirs.insert(0, 0);
        }
        inner.journal.insert(rel);
        Ok(())
    }

    fn tmp_name(&self, inner: &mut Inner) -> CString {
        inner.tmp_seq += 1;
        CString::new(format!("copyup-{}-{}", std::process::id(), inner.tmp_seq)).unwrap()
    }

    fn copy_xattrs(&self, from: usize, rel: &[u8], to: usize, to_rel: &[u8]) -> io::Result<()> {
        for name in self.list_xattrs(from, rel)? {
            if is_private_xattr(&name) {
                continue;
            }
            if let Some(v) = self.get_xattr(from, rel, &name)?
                && let Err(e) = self.set_xattr(to, to_rel, &name, &v, 0)
                && !matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP))
            {
                return Err(e);
            }
        }
        Ok(())
    }

    fn copy_xattrs_to_work(&self, from: usize, rel: &[u8], tmp: &[u8]) -> io::Result<()> {
        let names = self.list_xattrs(from, rel)?;
        if names.is_empty() {
            return Ok(());
        }
        let p = self.work.abs(tmp)?;
        for name in names {
            if is_private_xattr(&name) {
                continue;
            }
            if let Some(v) = self.get_xattr(from, rel, &name)? {
                let n = cstring(&name)?;
                let r =
                    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open
                    // for it; the value pointer and length come from one live slice.
                    unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), v.as_ptr() as *const libc::c_void, v.len(), 0) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if !matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Prepares `parent/name` in the upper dir for a new entry: copies the parent up and
    /// removes a whiteout there. Returns (relative path, whether a lower entry is hidden).
    fn prepare_new(&self, inner: &mut Inner, parent: u64, name: &[u8]) -> io::Result<(Vec<u8>, bool)> {
        if self.find(inner, parent, name)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        self.copy_up(inner, parent)?;
        let rel = join(&inner.rel(parent)?, name);
        let crel = cstring(&rel)?;
        let up = self.layers[0].fd();
        if let Ok(st) = stat_at(up, &crel)
            && is_whiteout(&st)
        {
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::unlinkat(up, crel.as_ptr(), 0) })?;
        }
        let hides = self.lower_has(inner, parent, &crel)?;
        Ok((rel, hides))
    }

    /// Gives a new upper entry the caller's ownership (the group of a setgid parent).
    fn own(&self, inner: &Inner, ctx: &Context, parent: u64, crel: &CStr) -> io::Result<()> {
        let prel = cstring(&inner.rel(parent)?)?;
        let pst = stat_at(self.layers[0].fd(), &prel)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            ctx.gid
        };
        let st = stat_at(self.layers[0].fd(), crel)?;
        if st.st_uid != ctx.uid || st.st_gid != gid {
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe {
                libc::fchownat(
                    self.layers[0].fd(),
                    crel.as_ptr(),
                    ctx.uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        // Ownership emulation: the caller runs as an emulated user.
        if let Some(dir) = &self.ids_dir
            && st.st_mode & libc::S_IFMT != libc::S_IFLNK
            && dir.exists()
            && let Some((u, g)) = crate::sys::idstate::fs_ids(dir, ctx.pid as u32)
        {
            let g = if pst.st_mode & libc::S_ISGID != 0 {
                self.get_xattr(0, prel.to_bytes(), overlay::OWNER_XATTR.as_bytes())?
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.split_once(':').and_then(|(_, g)| g.trim().parse().ok()))
                    .unwrap_or(pst.st_gid)
            } else {
                g
            };
            let v = format!("{u}:{g}");
            self.set_xattr(0, crel.to_bytes(), overlay::OWNER_XATTR.as_bytes(), v.as_bytes(), 0)?;
        }
        Ok(())
    }

    /// Registers a node created in the upper dir and returns its entry.
    fn new_node(&self, inner: &mut Inner, parent: u64, name: &[u8], rel: Vec<u8>) -> io::Result<Entry> {
        let st = stat_at(self.layers[0].fd(), &cstring(&rel)?)?;
        let kind = st.st_mode & libc::S_IFMT;
        let ino = inner.next_ino;
        inner.next_ino += 1;
        inner.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_vec(),
                kind,
                layer: 0,
                dirs: if kind == libc::S_IFDIR { vec![0] } else { Vec::new() },
                ino: st.st_ino,
                nlookup: 0,
                children: HashMap::new(),
                links: Vec::new(),
                unlinked: false,
            },
        );
        inner.node_mut(parent)?.children.insert(name.to_vec(), ino);
        inner.journal.insert(rel);
        self.entry(inner, ino)
    }

    /// The merged entries of a directory: (name, inode number, DT_* type).
    fn merged_entries(&self, inner: &Inner, ino: u64) -> io::Result<Vec<(Vec<u8>, u64, u32)>> {
        let n = inner.node(ino)?;
        let rel = inner.rel(ino)?;
        let crel = cstring(&rel)?;
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for &l in &n.dirs {
            let lfd = self.layers[l].fd();
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it;
            // the new fd is checked (cvt) before it gets an owner.
            let dfd = match cvt(unsafe {
                libc::openat(
                    lfd,
                    crel.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            }) {
                Ok(fd) => fd,
                Err(e) if absent(&e) => continue,
                Err(e) => return Err(e),
            };
            // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it
            // is closed once.
            let dir = nix::dir::Dir::from_fd(unsafe { OwnedFd::from_raw_fd(dfd) }).map_err(|e| err(e as i32))?;
            let dirfd = dir.as_raw_fd();
            let mut dir = dir;
            for e in dir.iter() {
                let e = e.map_err(|e| err(e as i32))?;
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." || !seen.insert(name.to_vec()) {
                    continue;
                }
                let dtype = match e.file_type() {
                    Some(nix::dir::Type::Directory) => libc::DT_DIR,
                    Some(nix::dir::Type::File) => libc::DT_REG,
                    Some(nix::dir::Type::Symlink) => libc::DT_LNK,
                    Some(nix::dir::Type::Fifo) => libc::DT_FIFO,
                    Some(nix::dir::Type::Socket) => libc::DT_SOCK,
                    Some(nix::dir::Type::BlockDevice) => libc::DT_BLK,
                    Some(nix::dir::Type::CharacterDevice) | None => {
                        let st = stat_at(dirfd, e.file_name())?;
                        if is_whiteout(&st) {
                            continue;
                        }
                        dt_of(st.st_mode)
                    }
                };
                let shown = n
                    .children
                    .get(name)
                    .and_then(|c| inner.nodes.get(c))
                    .map(|c| c.ino)
                    .unwrap_or(e.ino());
                out.push((name.to_vec(), shown, dtype as u32));
            }
        }
        Ok(out)
    }

    fn handle_file(&self, fh: u64) -> io::Result<Arc<File>> {
        match self.lock().handles.get(&fh) {
            Some(Handle::File(_, f)) => Ok(f.clone()),
            _ => Err(err(libc::EBADF)),
        }
    }

    /// Removes a merged-empty upper directory's whiteouts so that it can be removed or
    /// replaced.
    fn clear_whiteouts(&self, crel: &CStr) -> io::Result<()> {
        let up = self.layers[0].fd();
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let dfd = match cvt(unsafe {
            libc::openat(
                up,
                crel.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        }) {
            Ok(fd) => fd,
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
        // closed once.
        let mut dir = nix::dir::Dir::from_fd(unsafe { OwnedFd::from_raw_fd(dfd) }).map_err(|e| err(e as i32))?;
        let dirfd = dir.as_raw_fd();
        let names: Vec<CString> = dir
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for n in names {
            let st = stat_at(dirfd, &n)?;
            if !is_whiteout(&st) {
                return Err(err(libc::ENOTEMPTY));
            }
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::unlinkat(dirfd, n.as_ptr(), 0) })?;
        }
        Ok(())
    }

    fn remove(&self, parent: u64, name: &CStr, dir: bool) -> io::Result<()> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let name = name.to_bytes();
        let ino = self.find(inner, parent, name)?.ok_or_else(|| err(libc::ENOENT))?;
        let kind = inner.node(ino)?.kind;
        if dir && kind != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        if !dir && kind == libc::S_IFDIR {
            return Err(err(libc::EISDIR));
        }
        if dir && !self.merged_entries(inner, ino)?.is_empty() {
            return Err(err(libc::ENOTEMPTY));
        }
        self.copy_up(inner, parent)?;
        let rel = join(&inner.rel(parent)?, name);
        let crel = cstring(&rel)?;
        let up = self.layers[0].fd();
        if inner.node(ino)?.layer == 0 {
            if dir {
                self.clear_whiteouts(&crel)?;
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::unlinkat(up, crel.as_ptr(), libc::AT_REMOVEDIR) })?;
            } else {
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::unlinkat(up, crel.as_ptr(), 0) })?;
            }
        }
        if self.lower_has(inner, parent, &crel)? {
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::mknodat(up, crel.as_ptr(), libc::S_IFCHR, 0) })?;
        }
        self.detach(inner, parent, name, ino);
        inner.journal.insert(rel);
        Ok(())
    }

    /// Forgets the name `parent/name` of `ino`; the node stays reachable by another link.
    fn detach(&self, inner: &mut Inner, parent: u64, name: &[u8], ino: u64) {
        if let Some(p) = inner.nodes.get_mut(&parent) {
            p.children.remove(name);
        }
        let drop_now = match inner.nodes.get_mut(&ino) {
            Some(n) => {
                if n.parent == parent && n.name == name {
                    match n.links.pop() {
                        Some((p, nm)) => {
                            n.parent = p;
                            n.name = nm;
                        }
                        None => n.unlinked = true,
                    }
                } else {
                    n.links.retain(|(p, nm)| !(*p == parent && nm == name));
                }
                n.unlinked && n.nlookup == 0
            }
            None => false,
        };
        if drop_now {
            inner.nodes.remove(&ino);
        }
    }

    fn do_rename(&self, olddir: u64, oldname: &[u8], newdir: u64, newname: &[u8], flags: u32) -> io::Result<()> {
        if flags & !(libc::RENAME_NOREPLACE) != 0 {
            // RENAME_EXCHANGE / RENAME_WHITEOUT
            return Err(err(libc::EINVAL));
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        let src = self.find(inner, olddir, oldname)?.ok_or_else(|| err(libc::ENOENT))?;
        let dst = self.find(inner, newdir, newname)?;
        if dst == Some(src) {
            return Ok(());
        }
        if dst.is_some() && flags & libc::RENAME_NOREPLACE != 0 {
            return Err(err(libc::EEXIST));
        }
        let (skind, sdirs) = {
            let n = inner.node(src)?;
            (n.kind, n.dirs.clone())
        };
        let src_is_dir = skind == libc::S_IFDIR;
        if src_is_dir && sdirs != [0] {
            // A directory with lower content: userspace copies (as with overlayfs without
            // redirect_dir).
            return Err(err(libc::EXDEV));
        }
        if let Some(d) = dst {
            let dk = inner.node(d)?.kind;
            if dk == libc::S_IFDIR {
                if !src_is_dir {
                    return Err(err(libc::EISDIR));
                }
                if !self.merged_entries(inner, d)?.is_empty() {
                    return Err(err(libc::ENOTEMPTY));
                }
            } else if src_is_dir {
                return Err(err(libc::ENOTDIR));
            }
        }
        // Moving a directory into its own subtree.
        if src_is_dir {
            let mut cur = newdir;
            loop {
                if cur == src {
                    return Err(err(libc::EINVAL));
                }
                if cur == ROOT {
                    break;
                }
                cur = inner.node(cur)?.parent;
            }
        }
        self.copy_up(inner, olddir)?;
        self.copy_up(inner, newdir)?;
        self.copy_up(inner, src)?;
        let src_rel = join(&inner.rel(olddir)?, oldname);
        let dst_rel = join(&inner.rel(newdir)?, newname);
        let (csrc, cdst) = (cstring(&src_rel)?, cstring(&dst_rel)?);
        let up = self.layers[0].fd();
        let dst_lower = self.lower_has(inner, newdir, &cdst)?;
        let src_lower = self.lower_has(inner, olddir, &csrc)?;
        match stat_at(up, &cdst) {
            Ok(st) if is_whiteout(&st) => {
                // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for
                // it.
                cvt(unsafe { libc::unlinkat(up, cdst.as_ptr(), 0) })?;
            }
            Ok(st) if is_dir(&st) => self.clear_whiteouts(&cdst)?,
            _ => {}
        }
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::renameat(up, csrc.as_ptr(), up, cdst.as_ptr()) })?;
        if src_is_dir && dst_lower {
            self.set_xattr(0, &dst_rel, OPAQUE_XATTR, b"y", 0)?;
        }
        if src_lower {
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::mknodat(up, csrc.as_ptr(), libc::S_IFCHR, 0) })?;
        }
        if let Some(d) = dst {
            self.detach(inner, newdir, newname, d);
        }
        if let Some(p) = inner.nodes.get_mut(&olddir) {
            p.children.remove(oldname);
        }
        {
            let n = inner.node_mut(src)?;
            if n.parent == olddir && n.name == oldname {
                n.parent = newdir;
                n.name = newname.to_vec();
            } else if let Some(l) = n.links.iter_mut().find(|(p, nm)| *p == olddir && nm == oldname) {
                *l = (newdir, newname.to_vec());
            }
        }
        inner.node_mut(newdir)?.children.insert(newname.to_vec(), src);
        inner.journal.insert(src_rel);
        inner.journal.insert(dst_rel);
        Ok(())
    }
}

fn dt_of(mode: u32) -> u8 {
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

fn st_atime(st: &libc::stat64) -> libc::timespec {
    libc::timespec {
        tv_sec: st.st_atime,
        tv_nsec: st.st_atime_nsec,
    }
}

fn st_mtime(st: &libc::stat64) -> libc::timespec {
    libc::timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec,
    }
}

fn set_times_at(dirfd: RawFd, name: &CStr, st: &libc::stat64) -> io::Result<()> {
    let ts = [st_atime(st), st_mtime(st)];
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
    // times point to a live array of two timespecs.
    cvt(unsafe { libc::utimensat(dirfd, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

fn readlink_at(dirfd: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
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
fn copy_data(src: &File, dst: &File, len: u64) -> io::Result<()> {
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

impl FileSystem for OverlayFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let want = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::CACHE_SYMLINKS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO;
        Ok(capable & want)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match self.find(inner, parent, name.to_bytes())? {
            Some(ino) => self.entry(inner, ino),
            None => Ok(Entry {
                inode: 0,
                generation: 0,
                // SAFETY: a C struct of integers: all-zero bytes are a valid value.
                attr: unsafe { std::mem::zeroed() },
                attr_flags: 0,
                attr_timeout: TTL,
                entry_timeout: TTL,
            }),
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        let mut inner = self.lock();
        if let Some(n) = inner.nodes.get_mut(&inode) {
            n.nlookup = n.nlookup.saturating_sub(count);
            if n.nlookup == 0 && n.unlinked {
                inner.nodes.remove(&inode);
            }
        }
    }

    fn getattr(&self, _ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<(libc::stat64, Duration)> {
        let inner = self.lock();
        let by_path = if handle.is_none() && !inner.node(inode)?.unlinked {
            Some(self.attr(&inner, inode))
        } else {
            None
        };
        match by_path {
            Some(Ok(st)) => Ok((st, TTL)),
            other => {
                // Open but deleted or replaced: the attributes of the open file.
                let Some(f) = open_file(&inner, inode, handle) else {
                    return match other {
                        Some(Err(e)) => Err(e),
                        _ => Err(err(libc::ENOENT)),
                    };
                };
                let mut st = fstat(f.as_raw_fd())?;
                st.st_ino = inner.node(inode).map(|n| n.ino).unwrap_or(st.st_ino);
                Ok((st, TTL))
            }
        }
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: libc::stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.node(inode)?.unlinked {
            let f = open_file(inner, inode, handle).ok_or_else(|| err(libc::ENOENT))?;
            let mut st = setattr_fd(&f, &attr, valid)?;
            st.st_ino = inner.node(inode)?.ino;
            return Ok((st, TTL));
        }
        self.copy_up(inner, inode)?;
        let rel = inner.rel(inode)?;
        let crel = cstring(&rel)?;
        let up = self.layers[0].fd();
        let file = open_file(inner, inode, handle);
        let kind = inner.node(inode)?.kind;
        if valid.contains(SetattrValid::UID) || valid.contains(SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::fchownat(up, crel.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
        }
        if valid.contains(SetattrValid::MODE) && kind != libc::S_IFLNK {
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::fchmodat(up, crel.as_ptr(), attr.st_mode & 0o7777, 0) })?;
        }
        if valid.contains(SetattrValid::SIZE) {
            match &file {
                Some(f) if !is_readonly(f) => {
                    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads
                    // no memory of ours.
                    cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), attr.st_size) })?;
                }
                _ => {
                    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open
                    // for it; the new fd is checked (cvt) before it gets an owner.
                    let fd = cvt(unsafe {
                        libc::openat(up, crel.as_ptr(), libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    })?;
                    // SAFETY: the fd was just returned by a successful call (checked) and has no other
                    // owner, so it is closed once.
                    let f = unsafe { File::from_raw_fd(fd) };
                    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads
                    // no memory of ours.
                    cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), attr.st_size) })?;
                }
            }
        }
        let times = [
            SetattrValid::ATIME,
            SetattrValid::MTIME,
            SetattrValid::ATIME_NOW,
            SetattrValid::MTIME_NOW,
        ];
        if times.iter().any(|t| valid.contains(*t)) {
            let omit = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            };
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            };
            let a = if valid.contains(SetattrValid::ATIME_NOW) {
                now
            } else if valid.contains(SetattrValid::ATIME) {
                st_atime(&attr)
            } else {
                omit
            };
            let m = if valid.contains(SetattrValid::MTIME_NOW) {
                now
            } else if valid.contains(SetattrValid::MTIME) {
                st_mtime(&attr)
            } else {
                omit
            };
            let ts = [a, m];
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it;
            // the times point to a live array of two timespecs.
            cvt(unsafe { libc::utimensat(up, crel.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
        }
        inner.journal.insert(rel);
        Ok((self.attr(inner, inode)?, TTL))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let inner = self.lock();
        let n = inner.node(inode)?;
        readlink_at(self.layers[n.layer].fd(), &cstring(&inner.rel(inode)?)?)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, _) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::symlinkat(linkname.as_ptr(), self.layers[0].fd(), crel.as_ptr()) })?;
        self.own(inner, ctx, parent, &crel)?;
        self.new_node(inner, parent, name.to_bytes(), rel)
    }

    fn mknod(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, rdev: u32, _umask: u32) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, _) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::mknodat(self.layers[0].fd(), crel.as_ptr(), mode, rdev as libc::dev_t) })?;
        self.own(inner, ctx, parent, &crel)?;
        self.new_node(inner, parent, name.to_bytes(), rel)
    }

    fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, _umask: u32) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, hides) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::mkdirat(self.layers[0].fd(), crel.as_ptr(), mode & 0o7777) })?;
        if hides {
            self.set_xattr(0, &rel, OPAQUE_XATTR, b"y", 0)?;
        }
        self.own(inner, ctx, parent, &crel)?;
        self.new_node(inner, parent, name.to_bytes(), rel)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.do_rename(olddir, oldname.to_bytes(), newdir, newname.to_bytes(), flags)
    }

    fn link(&self, _ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.node(inode)?.kind == libc::S_IFDIR {
            return Err(err(libc::EPERM));
        }
        self.copy_up(inner, inode)?;
        let src = cstring(&inner.rel(inode)?)?;
        let (rel, _) = self.prepare_new(inner, newparent, newname.to_bytes())?;
        let crel = cstring(&rel)?;
        let up = self.layers[0].fd();
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::linkat(up, src.as_ptr(), up, crel.as_ptr(), 0) })?;
        // The kernel expects the linked inode back: one node, one more name.
        let name = newname.to_bytes().to_vec();
        inner.node_mut(newparent)?.children.insert(name.clone(), inode);
        inner.node_mut(inode)?.links.push((newparent, name));
        inner.journal.insert(rel);
        self.entry(inner, inode)
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let flags = flags as i32;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if write {
            self.copy_up(inner, inode)?;
        }
        let n = inner.node(inode)?;
        let layer = n.layer;
        let rel = inner.rel(inode)?;
        let clean = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_APPEND);
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe {
            libc::openat(
                self.layers[layer].fd(),
                cstring(&rel)?.as_ptr(),
                clean | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
        // closed once.
        let f = unsafe { File::from_raw_fd(fd) };
        let st = fstat(fd)?;
        if write {
            inner.journal.insert(rel);
        }
        let fh = inner.add_handle(Handle::File(inode, Arc::new(f)));
        let opts = if st.st_nlink <= 1 && !write {
            OpenOptions::KEEP_CACHE
        } else {
            OpenOptions::empty()
        };
        Ok((Some(fh), opts, None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, _) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        let flags = (args.flags as i32) & !(libc::O_NOCTTY | libc::O_APPEND);
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe {
            libc::openat(
                self.layers[0].fd(),
                crel.as_ptr(),
                flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                args.mode & 0o7777,
            )
        })?;
        // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
        // closed once.
        let f = unsafe { File::from_raw_fd(fd) };
        self.own(inner, ctx, parent, &crel)?;
        let e = self.new_node(inner, parent, name.to_bytes(), rel)?;
        let fh = inner.add_handle(Handle::File(e.inode, Arc::new(f)));
        Ok((e, Some(fh), OpenOptions::empty(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let f = self.handle_file(handle)?;
        // SAFETY: the fd stays owned by the handle's File `f`, alive for this call; the second File over it
        // is in ManuallyDrop, so it is never closed twice.
        let mut f = ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) });
        w.write_from(&mut *f, size as usize, offset)
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        let f = self.handle_file(handle)?;
        // SAFETY: the fd stays owned by the handle's File `f`, alive for this call; the second File over it
        // is in ManuallyDrop, so it is never closed twice.
        let mut f = ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) });
        r.read_to(&mut *f, size as usize, offset)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        // Nothing to do on close (writes are not buffered here): ENOSYS tells the kernel to stop
        // sending FLUSH, one round trip less per close().
        Err(err(libc::ENOSYS))
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let f = self.handle_file(handle)?;
        if datasync { f.sync_data() } else { f.sync_all() }
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let f = self.handle_file(handle)?;
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::fallocate64(f.as_raw_fd(), mode as i32, offset as i64, length as i64) })?;
        Ok(())
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.lock().handles.remove(&handle);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<libc::statvfs64> {
        // SAFETY: a C struct of integers: all-zero bytes are a valid value.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe {
            libc::openat(
                self.layers[0].fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
        // closed once.
        let f = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the fd is open (owned by `f`) and `st` is a writable `statvfs64` the call fills.
        cvt(unsafe { libc::fstatvfs64(f.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    fn setxattr(&self, _ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        if is_private_xattr(name.to_bytes()) {
            return Err(err(libc::EPERM));
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        self.copy_up(inner, inode)?;
        let rel = inner.rel(inode)?;
        self.set_xattr(0, &rel, name.to_bytes(), value, flags as i32)?;
        inner.journal.insert(rel);
        Ok(())
    }

    fn getxattr(&self, _ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        if is_private_xattr(name.to_bytes()) {
            return Err(err(libc::ENODATA));
        }
        let inner = self.lock();
        let layer = inner.node(inode)?.layer;
        let rel = inner.rel(inode)?;
        let v = self
            .get_xattr(layer, &rel, name.to_bytes())?
            .ok_or_else(|| err(libc::ENODATA))?;
        if size == 0 {
            Ok(GetxattrReply::Count(v.len() as u32))
        } else if v.len() > size as usize {
            Err(err(libc::ERANGE))
        } else {
            Ok(GetxattrReply::Value(v))
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let inner = self.lock();
        let layer = inner.node(inode)?.layer;
        let rel = inner.rel(inode)?;
        let mut buf = Vec::new();
        for n in self.list_xattrs(layer, &rel)? {
            if !is_private_xattr(&n) {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
        }
        if size == 0 {
            Ok(ListxattrReply::Count(buf.len() as u32))
        } else if buf.len() > size as usize {
            Err(err(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(buf))
        }
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if is_private_xattr(name.to_bytes()) {
            return Err(err(libc::ENODATA));
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        self.copy_up(inner, inode)?;
        let rel = inner.rel(inode)?;
        let p = self.layers[0].abs(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) })?;
        inner.journal.insert(rel);
        Ok(())
    }

    fn opendir(&self, _ctx: &Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let n = inner.node(inode)?;
        let parent_ino = inner.nodes.get(&n.parent).map(|p| p.ino).unwrap_or(n.ino);
        let mut list = vec![
            (b".".to_vec(), n.ino, libc::DT_DIR as u32),
            (b"..".to_vec(), parent_ino, libc::DT_DIR as u32),
        ];
        list.extend(self.merged_entries(inner, inode)?);
        let fh = inner.add_handle(Handle::Dir(Arc::new(list)));
        Ok((Some(fh), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let list = match self.lock().handles.get(&handle) {
            Some(Handle::Dir(l)) => l.clone(),
            _ => return Err(err(libc::EBADF)),
        };
        for (i, (name, ino, dtype)) in list.iter().enumerate().skip(offset as usize) {
            let n = add_entry(DirEntry {
                ino: *ino,
                offset: i as u64 + 1,
                type_: *dtype,
                name,
            })?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// readdir plus a lookup of every entry (saves `rm -rf`, `find` and `ls -l` one round trip
    /// per entry).
    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let list = match self.lock().handles.get(&handle) {
            Some(Handle::Dir(l)) => l.clone(),
            _ => return Err(err(libc::EBADF)),
        };
        for (i, (name, ino, dtype)) in list.iter().enumerate().skip(offset as usize) {
            let d = DirEntry {
                ino: *ino,
                offset: i as u64 + 1,
                type_: *dtype,
                name,
            };
            // "." and "..": no lookup (nodeid 0 is skipped by the kernel).
            let entry = if name == b"." || name == b".." {
                None
            } else {
                let mut inner = self.lock();
                let inner = &mut *inner;
                match self.find(inner, inode, name) {
                    Ok(Some(c)) => self.entry(inner, c).ok(),
                    _ => None,
                }
            };
            let looked_up = entry.as_ref().map(|e| e.inode);
            let e = entry.unwrap_or(Entry {
                inode: 0,
                generation: 0,
                // SAFETY: a C struct of integers: all-zero bytes are a valid value.
                attr: unsafe { std::mem::zeroed() },
                attr_flags: 0,
                attr_timeout: Duration::ZERO,
                entry_timeout: Duration::ZERO,
            });
            let n = add_entry(d, e)?;
            if n == 0 {
                // Not sent: the lookup did not happen.
                if let Some(c) = looked_up {
                    self.forget(_ctx, c, 1);
                }
                break;
            }
        }
        Ok(())
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.lock().handles.remove(&handle);
        Ok(())
    }

    fn access(&self, _ctx: &Context, _inode: u64, _mask: u32) -> io::Result<()> {
        Ok(())
    }
}

/// An open file of node `ino`: the request's handle, or any open handle of the node.
fn open_file(inner: &Inner, ino: u64, handle: Option<u64>) -> Option<Arc<File>> {
    if let Some(fh) = handle
        && let Some(Handle::File(_, f)) = inner.handles.get(&fh)
    {
        return Some(f.clone());
    }
    inner.handles.values().find_map(|h| match h {
        Handle::File(i, f) if *i == ino => Some(f.clone()),
        _ => None,
    })
}

/// setattr on an open file whose name is gone.
fn setattr_fd(f: &File, attr: &libc::stat64, valid: SetattrValid) -> io::Result<libc::stat64> {
    let fd = f.as_raw_fd();
    if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
        let uid = if valid.contains(SetattrValid::UID) {
            attr.st_uid
        } else {
            u32::MAX
        };
        let gid = if valid.contains(SetattrValid::GID) {
            attr.st_gid
        } else {
            u32::MAX
        };
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::fchown(fd, uid, gid) })?;
    }
    if valid.contains(SetattrValid::MODE) {
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::fchmod(fd, attr.st_mode & 0o7777) })?;
    }
    if valid.contains(SetattrValid::SIZE) {
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::ftruncate64(fd, attr.st_size) })?;
    }
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    let pick = |set_now: SetattrValid, set: SetattrValid, t: libc::timespec| {
        if valid.contains(set_now) {
            now
        } else if valid.contains(set) {
            t
        } else {
            omit
        }
    };
    let ts = [
        pick(SetattrValid::ATIME_NOW, SetattrValid::ATIME, st_atime(attr)),
        pick(SetattrValid::MTIME_NOW, SetattrValid::MTIME, st_mtime(attr)),
    ];
    if ts.iter().any(|t| t.tv_nsec != libc::UTIME_OMIT) {
        // SAFETY: the fd is open for the call and the times point to a live array of two timespecs.
        cvt(unsafe { libc::futimens(fd, ts.as_ptr()) })?;
    }
    fstat(fd)
}

fn is_readonly(f: &File) -> bool {
    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
    // ours.
    let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE == libc::O_RDONLY
}
