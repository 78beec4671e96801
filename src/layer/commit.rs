//! Upper dir → deterministic tar stream.

use super::tarw::{TarEntry, TarWriter};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Overlay bookkeeping xattrs: never written into a layer, never restored from one.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.overlay.")
        || name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

/// Where kiln records the owner a file should have in the layer when it cannot `chown` it:
/// `"UID:GID"` in decimal. Written when an unprivileged kiln (isolation `none`) unpacks or
/// copies files owned by other ids, and honoured by [`write_tar`] wherever it is present (the
/// FUSE overlay's ownership emulation uses the same record); never written into a layer.
pub const OWNER_XATTR: &str = "user.kiln.owner";

/// Where kiln records a device node it could not create (single-uid user namespace): the file
/// is an empty regular file with `"c MAJOR MINOR"` or `"b MAJOR MINOR"`; [`write_tar`] writes
/// a device entry. Never written into a layer.
pub const DEV_XATTR: &str = "user.kiln.dev";

/// Parses a [`DEV_XATTR`] record: (is a block device, major, minor).
pub fn parse_dev(v: &[u8]) -> Option<(bool, u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut it = s.split_whitespace();
    let block = match it.next()? {
        "c" => false,
        "b" => true,
        _ => return None,
    };
    Some((block, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

static OWNER_EMULATION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns ownership emulation on for this process (kiln without privilege and without a user
/// namespace): files kiln writes are owned by its own uid on disk; in layers that uid/gid is
/// root and other owners come from [`OWNER_XATTR`].
pub fn set_owner_emulation(on: bool) {
    OWNER_EMULATION.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`set_owner_emulation`] is on.
pub fn owner_emulation() -> bool {
    OWNER_EMULATION.load(std::sync::atomic::Ordering::SeqCst)
}

/// Records that `p` belongs to `uid:gid` in the layer (root: the record is removed, since the
/// builder's own files count as root). Symlinks cannot carry `user.` xattrs: their owner is
/// root in the layer, and this returns Ok.
pub fn record_owner(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    if (uid, gid) == (0, 0) {
        return match xattr::remove(p, OWNER_XATTR) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) && e.raw_os_error() != Some(libc::EPERM) => Err(e),
            _ => Ok(()),
        };
    }
    match xattr::set(p, OWNER_XATTR, format!("{uid}:{gid}").as_bytes()) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && fs::symlink_metadata(p).is_ok_and(|m| m.is_symlink()) => {
            Ok(())
        }
        r => r,
    }
}

/// [`record_owner`] for the object an fd refers to (an `O_PATH` one included): through
/// `/proc/self/fd/N` with the calls that follow it, so the record lands on exactly that object
/// (l*xattr would act on the magic link itself). A symlink carries no record: Ok.
pub fn record_owner_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    if nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) {
        return Ok(());
    }
    let p = crate::fsutil::root::fd_path(fd);
    if (uid, gid) == (0, 0) {
        return match xattr::remove_deref(&p, OWNER_XATTR) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) && e.raw_os_error() != Some(libc::EPERM) => Err(e),
            _ => Ok(()),
        };
    }
    xattr::set_deref(&p, OWNER_XATTR, format!("{uid}:{gid}").as_bytes())
}

/// [`effective_owner`] of the object an fd refers to (see [`record_owner_fd`]).
pub fn effective_owner_fd(fd: BorrowedFd<'_>, md: &fs::Metadata) -> (u32, u32) {
    let is_link = nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
    if !is_link
        && let Ok(Some(v)) = xattr::get_deref(crate::fsutil::root::fd_path(fd), OWNER_XATTR)
        && let Some(o) = parse_owner(&v)
    {
        return o;
    }
    emulated_ids(md.uid(), md.gid())
}

fn parse_owner(v: &[u8]) -> Option<(u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (u, g) = s.trim().split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// The owner `p` has in a layer: the [`OWNER_XATTR`] record, else its owner on disk, with the
/// builder's own ids counted as root when ownership is emulated.
pub fn effective_owner(p: &Path, md: &fs::Metadata) -> (u32, u32) {
    if let Ok(Some(v)) = xattr::get(p, OWNER_XATTR)
        && let Some(o) = parse_owner(&v)
    {
        return o;
    }
    emulated_ids(md.uid(), md.gid())
}

fn emulated_ids(uid: u32, gid: u32) -> (u32, u32) {
    if !owner_emulation() {
        return (uid, gid);
    }
    let (eu, eg) = unsafe { (libc::geteuid(), libc::getegid()) };
    (if uid == eu { 0 } else { uid }, if gid == eg { 0 } else { gid })
}

const OPAQUE_XATTRS: [&str; 3] = [
    "user.overlay.opaque",
    "trusted.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// One path found under the upper dir.
pub struct WalkEntry {
    /// Relative path, '/'-separated, no trailing slash.
    pub rel: Vec<u8>,
    pub md: fs::Metadata,
}

/// A streaming walk of an upper dir: parents before children, names byte-wise sorted within a
/// directory, symlinks never followed. Memory is bounded by the name lists along one path.
pub struct DirWalk {
    root: PathBuf,
    excl: HashSet<Vec<u8>>,
    /// (directory, its remaining sorted names).
    stack: Vec<(Vec<u8>, std::vec::IntoIter<Vec<u8>>)>,
    peeked: Option<WalkEntry>,
}

impl DirWalk {
    /// Starts walking `root`, leaving out `exclude` (relative paths, with their subtrees).
    pub fn new(root: &Path, exclude: &[PathBuf]) -> Result<DirWalk> {
        let md = fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
        if !md.is_dir() {
            anyhow::bail!("{} is not a directory", root.display());
        }
        let excl = exclude
            .iter()
            .map(|p| normalise_rel(p))
            .filter(|p| !p.is_empty())
            .collect();
        let mut w = DirWalk {
            root: root.to_path_buf(),
            excl,
            stack: Vec::new(),
            peeked: None,
        };
        let names = w.list(b"")?;
        w.stack.push((Vec::new(), names));
        w.peeked = w.next_entry()?;
        Ok(w)
    }

    /// True if the dir has no (non-excluded) entries at all.
    pub fn is_empty(&self) -> bool {
        self.peeked.is_none()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn abs(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    fn list(&self, rel: &[u8]) -> Result<std::vec::IntoIter<Vec<u8>>> {
        let dir = self.abs(rel);
        let mut names: Vec<Vec<u8>> = fs::read_dir(&dir)
            .and_then(|rd| {
                rd.map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                    .collect::<io::Result<_>>()
            })
            .with_context(|| format!("listing {}", dir.display()))?;
        names.sort_unstable();
        Ok(names.into_iter())
    }

    /// The next entry in tar order.
    pub fn next_entry(&mut self) -> Result<Option<WalkEntry>> {
        if let Some(e) = self.peeked.take() {
            return Ok(Some(e));
        }
        loop {
            let Some((dir, names)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(name) = names.next() else {
                self.stack.pop();
                continue;
            };
            let mut rel = dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            if self.excl.contains(&rel) {
                continue;
            }
            let p = self.abs(&rel);
            let md = fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
            if md.is_dir() {
                let names = self.list(&rel)?;
                self.stack.push((rel.clone(), names));
            }
            return Ok(Some(WalkEntry { rel, md }));
        }
    }
}

/// Makes `upper` hold exactly what [`write_tar`] writes of `DirWalk::new(upper, exclude)`: removes
/// the excluded paths with everything under them (mount placeholders, and whatever a step left
/// under them) and sockets (not archivable). Run after the commit, before the upper dir is
/// published as the layer's unpacked directory, so that the lower equals the blob. Excluded
/// paths below a symlink or a non-directory in `upper` are not followed (there is nothing of
/// them in `upper` then).
pub fn strip_unarchived(upper: &Path, exclude: &[PathBuf]) -> Result<()> {
    for p in exclude {
        let rel = normalise_rel(p);
        if rel.is_empty() {
            continue;
        }
        let mut cur = upper.to_path_buf();
        let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        let mut reachable = true;
        for c in &comps[..comps.len() - 1] {
            cur.push(OsStr::from_bytes(c));
            if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
                reachable = false;
                break;
            }
        }
        if !reachable {
            continue;
        }
        cur.push(OsStr::from_bytes(comps[comps.len() - 1]));
        if fs::symlink_metadata(&cur).is_ok() {
            crate::store::gc::remove_path(&cur)
                .with_context(|| format!("removing the mount placeholder {} from the layer", cur.display()))?;
        }
    }
    let mut walk = DirWalk::new(upper, &[])?;
    while let Some(e) = walk.next_entry()? {
        if e.md.file_type().is_socket() {
            let p = walk.abs(&e.rel);
            fs::remove_file(&p).with_context(|| format!("removing the socket {} from the layer", p.display()))?;
        }
    }
    Ok(())
}

fn normalise_rel(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for c in p.components() {
        if let Component::Normal(s) = c {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Converts a v3 (namespaced) `security.capability` value to v2, so that the file capability
/// works in any namespace (rootid is dropped). Other values are returned unchanged.
pub(crate) fn cap_to_v2(v: &[u8]) -> Vec<u8> {
    const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    if v.len() == 24 {
        let magic = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        if magic & 0xff00_0000 == VFS_CAP_REVISION_3 {
            let mut out = Vec::with_capacity(20);
            out.extend_from_slice(&(VFS_CAP_REVISION_2 | (magic & 0x00ff_ffff)).to_le_bytes());
            out.extend_from_slice(&v[4..20]);
            return out;
        }
    }
    v.to_vec()
}

/// Reads the xattrs of `p` (not following symlinks) for the tar: sorted, overlay bookkeeping
/// removed, capabilities made portable. Also tells whether the dir is an overlay opaque dir, and
/// the owner recorded in [`OWNER_XATTR`] and the device recorded in [`DEV_XATTR`].
type Xattrs = (
    BTreeMap<String, Vec<u8>>,
    bool,
    Option<(u32, u32)>,
    Option<(bool, u32, u32)>,
);
fn read_xattrs(p: &Path) -> Result<Xattrs> {
    let mut out = BTreeMap::new();
    let mut opaque = false;
    let mut owner = None;
    let mut dev = None;
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok((out, false, None, None)),
        Err(e) => return Err(e).with_context(|| format!("listing the xattrs of {}", p.display())),
    };
    for name in names {
        let nb = name.as_bytes();
        if nb == OWNER_XATTR.as_bytes() {
            if let Ok(Some(v)) = xattr::get(p, &name) {
                owner = parse_owner(&v);
            }
            continue;
        }
        if nb == DEV_XATTR.as_bytes() {
            if let Ok(Some(v)) = xattr::get(p, &name) {
                dev = parse_dev(&v);
            }
            continue;
        }
        if OPAQUE_XATTRS.iter().any(|o| o.as_bytes() == nb) {
            if let Ok(Some(v)) = xattr::get(p, &name)
                && v == b"y"
            {
                opaque = true;
            }
            continue;
        }
        if is_overlay_xattr(nb) {
            continue;
        }
        let Some(v) = xattr::get(p, &name).with_context(|| format!("reading xattr {name:?} of {}", p.display()))?
        else {
            continue;
        };
        let v = if nb == b"security.capability" { cap_to_v2(&v) } else { v };
        let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(nb));
        out.insert(key, v);
    }
    Ok((out, opaque, owner, dev))
}

/// Writes the tar stream of `walk` to `w` (including the end-of-archive blocks). With
/// `timestamp`, every mtime later than it is clamped to it.
pub fn write_tar(mut walk: DirWalk, timestamp: Option<i64>, w: impl Write) -> Result<()> {
    let mut tw = TarWriter::new(w);
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let clamp = |t: i64| -> u64 {
        let t = match timestamp {
            Some(ts) if t > ts => ts,
            _ => t,
        };
        t.max(0) as u64
    };
    while let Some(e) = walk.next_entry()? {
        let md = &e.md;
        let ft = md.file_type();
        let abs = walk.abs(&e.rel);
        let ctx = || format!("archiving {}", abs.display());
        let mtime = clamp(md.mtime());
        let mode = md.mode() & 0o7777;
        let (uid, gid) = emulated_ids(md.uid(), md.gid());
        let (uid, gid) = (uid as u64, gid as u64);
        let base = TarEntry {
            path: &e.rel,
            kind: tar::EntryType::Regular,
            mode,
            uid,
            gid,
            mtime,
            size: 0,
            link: None,
            dev: None,
            pax: BTreeMap::new(),
        };
        if ft.is_char_device() && md.rdev() == 0 {
            // Overlay whiteout → `.wh.<name>` (as Docker's overlay converter writes it).
            let (dir, name) = split_parent(&e.rel);
            let mut p = dir.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(b".wh.");
            p.extend_from_slice(name);
            tw.append(
                &TarEntry {
                    path: &p,
                    mode: 0o600,
                    ..base
                },
                None,
            )
            .with_context(ctx)?;
            continue;
        }
        let (xattrs, opaque, owner, dev) = read_xattrs(&abs)?;
        let base = match owner {
            Some((u, g)) => TarEntry {
                uid: u as u64,
                gid: g as u64,
                ..base
            },
            None => base,
        };
        if ft.is_dir() {
            let mut p = e.rel.clone();
            p.push(b'/');
            tw.append(
                &TarEntry {
                    path: &p,
                    kind: tar::EntryType::Directory,
                    pax: xattrs,
                    ..base
                },
                None,
            )
            .with_context(ctx)?;
            if opaque {
                p.extend_from_slice(b".wh..wh..opq");
                tw.append(
                    &TarEntry {
                        path: &p,
                        mode: mode & 0o777,
                        ..base
                    },
                    None,
                )
                .with_context(ctx)?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&abs).with_context(|| format!("reading symlink {}", abs.display()))?;
            let t = target.as_os_str().as_bytes();
            tw.append(
                &TarEntry {
                    kind: tar::EntryType::Symlink,
                    link: Some(t),
                    pax: xattrs,
                    ..base
                },
                None,
            )
            .with_context(ctx)?;
        } else if ft.is_file()
            && let Some((block, major, minor)) = dev
        {
            // A device node recorded by ownership emulation (see DEV_XATTR).
            tw.append(
                &TarEntry {
                    kind: if block {
                        tar::EntryType::Block
                    } else {
                        tar::EntryType::Char
                    },
                    dev: Some((major, minor)),
                    pax: xattrs,
                    ..base
                },
                None,
            )
            .with_context(ctx)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                let key = (md.dev(), md.ino());
                if let Some(first) = links.get(&key) {
                    tw.append(
                        &TarEntry {
                            kind: tar::EntryType::Link,
                            link: Some(first),
                            ..base
                        },
                        None,
                    )
                    .with_context(ctx)?;
                    continue;
                }
                links.insert(key, e.rel.clone());
            }
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&abs)
                .with_context(|| format!("opening {}", abs.display()))?;
            tw.append(
                &TarEntry {
                    size: md.len(),
                    pax: xattrs,
                    ..base
                },
                Some(&mut f),
            )
            .with_context(ctx)?;
        } else if ft.is_fifo() {
            tw.append(
                &TarEntry {
                    kind: tar::EntryType::Fifo,
                    pax: xattrs,
                    ..base
                },
                None,
            )
            .with_context(ctx)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let rdev = md.rdev();
            let dev = Some((libc::major(rdev), libc::minor(rdev)));
            tw.append(
                &TarEntry {
                    kind,
                    dev,
                    pax: xattrs,
                    ..base
                },
                None,
            )
            .with_context(ctx)?;
        }
        // Sockets are not archivable (Docker and tar skip them too).
    }
    tw.finish().context("finishing the tar stream")?;
    Ok(())
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}
