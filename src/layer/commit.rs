//! Upper dir → deterministic tar stream.

use super::owner::Ownership;
use super::tarw::{TarEntry, TarWriter};
use crate::fsutil::overlay::{self, DEV_XATTR, OWNER_XATTR, is_overlay_xattr, parse_dev, parse_owner};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

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
            crate::fsutil::remove::remove_path(&cur)
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
        if overlay::is_opaque_xattr(nb) {
            if let Ok(Some(v)) = xattr::get(p, &name)
                && overlay::marks_opaque(nb, &v)
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
/// `timestamp`, every mtime later than it is clamped to it; `ownership` maps on-disk owners
/// without an [`OWNER_XATTR`] record to layer owners.
pub fn write_tar(mut walk: DirWalk, timestamp: Option<i64>, ownership: Ownership, w: impl Write) -> Result<()> {
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
        let (uid, gid) = ownership.layer_ids(md.uid(), md.gid());
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
        if overlay::is_whiteout(md) {
            // Overlay whiteout → `.wh.<name>` (as Docker's overlay converter writes it).
            let (dir, name) = split_parent(&e.rel);
            let mut p = dir.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&overlay::whiteout_name(name));
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
                p.extend_from_slice(overlay::OPAQUE_WHITEOUT);
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
