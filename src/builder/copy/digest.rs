//! The cache digest of a COPY/ADD: what it would copy, hashed (never mtimes, never the
//! root's absolute path).

use super::sources::{Item, Kind, open_source, resolve_items};
use super::{CopyRequest, CopySource, Dest};
use crate::digest::Digest;
use crate::dockerfile::Chmod;
use crate::fsutil::Root;
use anyhow::{Context, Result};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Content hash of everything `req` would copy from `src`: relative paths, file bytes, modes,
/// symlink targets, hardlink structure, ownership (for non-context roots), and the request's
/// destination and flags. Never mtimes, never the root's absolute path.
pub fn source_digest(src: &CopySource, req: &CopyRequest) -> Result<Digest> {
    source_digest_cached(src, req, None)
}

/// [`source_digest`] with a stat cache of the build context: files whose stat is unchanged
/// since they were last hashed are not read again (a no-change rebuild reads no content).
pub fn source_digest_cached(
    src: &CopySource,
    req: &CopyRequest,
    stat: Option<&crate::builder::cache::StatCache>,
) -> Result<Digest> {
    let started = std::time::SystemTime::now();
    if let Some(c) = req.chmod.as_deref() {
        Chmod::parse(c)?;
    }
    let items = resolve_items(src, req)?;
    let mut h = Sha256::new();
    hash_request(&mut h, src, req);
    // Regular files to hash, in a stable order; hashed in parallel.
    let files = files_to_hash(src, &items);
    let stat = stat.filter(|_| src.is_context);
    let hash = |(root, p, md, in_context): &(&Root, &Path, &Metadata, bool)| -> Result<[u8; 32]> {
        if let (Some(c), Some(rel), true) = (stat, p.to_str(), *in_context) {
            if let Some(sum) = c.get(rel, md) {
                return Ok(sum);
            }
            let sum = hash_file(root, p, md)?;
            c.put(rel, md, &sum, started);
            return Ok(sum);
        }
        hash_file(root, p, md)
    };
    let sums: Vec<[u8; 32]> = files.par_iter().map(hash).collect::<Result<_>>()?;
    hash_items(&mut h, &items, &mut sums.into_iter())?;
    Digest::parse(&format!("sha256:{}", hex::encode(h.finalize())))
}

/// One length-prefixed field of the digest.
fn put(h: &mut Sha256, s: &[u8]) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s);
}

/// The request itself: destination, sources as written, flags, kind of root.
fn hash_request(h: &mut Sha256, src: &CopySource, req: &CopyRequest) {
    put(h, b"kiln-copy-v1");
    let dest = Dest::of(req);
    put(h, format!("{:?}", (&dest.abs, dest.dir_hint, &req.srcs)).as_bytes());
    let flags = (
        &req.chown,
        &req.chmod,
        &req.exclude,
        req.parents,
        req.link,
        req.is_add,
        &req.checksum,
        req.keep_git_dir,
    );
    put(h, format!("{flags:?}").as_bytes());
    put(h, if src.is_context { b"context" } else { b"root" });
}

/// The regular files of the items, in order, and whether each is the build context's own
/// (only those have a stat cache entry; a git checkout's do not).
fn files_to_hash<'i>(src: &CopySource, items: &'i [Item]) -> Vec<(&'i Root, &'i Path, &'i Metadata, bool)> {
    let mut files = Vec::new();
    for item in items {
        if let Kind::Local {
            root,
            inside,
            md,
            entries,
            ..
        } = &item.kind
        {
            let in_context = src.is_context && item._keep.is_none();
            if md.is_file() {
                files.push((&**root, inside.as_path(), md, in_context));
            }
            files.extend(
                entries
                    .iter()
                    .filter(|e| e.md.is_file())
                    .map(|e| (&**root, e.inside.as_path(), &e.md, in_context)),
            );
        }
    }
    files
}

/// One line per item and entry: relative path, mode, owner (kept owners only), link target,
/// device, hardlink structure, size and content hash (`sums`, in [`files_to_hash`] order).
fn hash_items(h: &mut Sha256, items: &[Item], sums: &mut impl Iterator<Item = [u8; 32]>) -> Result<()> {
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    let mut counter = 0usize;
    for item in items {
        put(h, format!("item {:?} {:?}", item.name, item.parents_rel).as_bytes());
        match &item.kind {
            Kind::Heredoc { content } => put(h, content.as_bytes()),
            Kind::Remote(d) => put(h, format!("url {} {}", d.url, d.digest).as_bytes()),
            Kind::Local {
                root,
                inside,
                md,
                entries,
                keep_owner,
            } => {
                let mut line = |h: &mut Sha256, rel: &Path, path: &Path, md: &Metadata| -> Result<()> {
                    let ft = md.file_type();
                    let mut s = format!("{:?} {:o}", rel, md.mode());
                    if *keep_owner {
                        s.push_str(&format!(" {}:{}", md.uid(), md.gid()));
                    }
                    if ft.is_symlink() {
                        let t = root
                            .readlink(path)
                            .with_context(|| format!("reading symlink {}", root.show(path)))?;
                        s.push_str(&format!(" -> {t:?}"));
                    } else if ft.is_block_device() || ft.is_char_device() {
                        s.push_str(&format!(" dev {}", md.rdev()));
                    } else if ft.is_file() {
                        counter += 1;
                        if md.nlink() > 1 {
                            let first = *inodes.entry((md.dev(), md.ino())).or_insert(counter);
                            s.push_str(&format!(" link {first}"));
                        }
                        let sum = sums.next().context("internal error: file hash list too short")?;
                        s.push_str(&format!(" {} {}", md.len(), hex::encode(sum)));
                    }
                    put(h, s.as_bytes());
                    Ok(())
                };
                line(h, Path::new(""), inside, md)?;
                for e in entries {
                    line(h, &e.rel, &e.inside, &e.md)?;
                }
            }
        }
    }
    Ok(())
}

fn hash_file(root: &Root, p: &Path, md: &Metadata) -> Result<[u8; 32]> {
    let mut f = open_source(root, p, md)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", root.show(p)))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}
