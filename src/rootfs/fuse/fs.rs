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

/// Overlay bookkeeping xattrs: hidden from the merged view, never copied up.
use crate::fsutil::overlay::is_overlay_xattr as is_private_xattr;

mod ops;
mod raw;
use raw::*;

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
