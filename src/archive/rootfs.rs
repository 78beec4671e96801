//! `kiln import`: a rootfs tarball (plain, gzip, zstd, bzip2 or xz) or a directory becomes a
//! one-layer image.
//!
//! A tarball is never unpacked: its entries are re-written, in order, into the layer stream
//! (tar → sha256 = diff_id → gzip → sha256 = digest → blob file), so the tar headers are the
//! truth for ownership, modes, times, xattrs (PAX records) and device numbers, and an
//! unprivileged user can import a rootfs full of root-owned files and devices.
//!
//! Hostile entries: a leading `/` is removed (`/etc/passwd` → `etc/passwd`, as GNU tar and
//! `docker import` treat it: paths are relative to the image root); a path or hard-link target
//! containing `..` is rejected with an error naming the entry, since it can only be an attempt
//! to escape the root. Symlinks are kept as they are, whatever they point at: kiln resolves
//! them inside the container root whenever it follows one.

use super::open_decompressed;
use crate::digest::HashingWriter;
use crate::image::{Compression, Descriptor, History, Image, ImageConfig};
use crate::store::{BlobWriter, ManifestFormat, Store};
use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The PATH Docker gives images that set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Optional settings of `kiln import`.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// History comment (`--message`).
    pub message: Option<String>,
    /// Image architecture (default: the host's).
    pub arch: Option<String>,
    /// How the owners of a directory's files become layer owners.
    pub ownership: crate::layer::Ownership,
}

/// Makes a one-layer image from a rootfs tarball or directory (see the module docs).
pub fn import_rootfs(store: &Store, src: &Path, format: ManifestFormat) -> Result<Image> {
    import_rootfs_with(store, src, format, &ImportOptions::default())
}

type LayerTar = tar::Builder<HashingWriter<crate::layer::Encoder<BlobWriter>>>;

/// [`import_rootfs`] with options.
pub fn import_rootfs_with(store: &Store, src: &Path, format: ManifestFormat, opts: &ImportOptions) -> Result<Image> {
    let md = fs::metadata(src).with_context(|| format!("cannot import {}", src.display()))?;
    let layer_opts = crate::layer::LayerOptions {
        ownership: opts.ownership,
        ..Default::default()
    };
    let (digest, size, diff_id) = if md.is_dir() {
        // A directory is tarred by the layer writer (sorted, hardlinks, xattrs, devices),
        // with owners as kiln's user namespace sees them.
        let layer = crate::layer::commit_dir(store, src, &[], &layer_opts, format)
            .with_context(|| format!("importing the directory {}", src.display()))?
            .with_context(|| format!("importing the directory {}: it is empty", src.display()))?;
        (layer.descriptor.digest, layer.descriptor.size, layer.diff_id)
    } else {
        let enc = crate::layer::Encoder::new(store.blob_writer()?, layer_opts.compression, layer_opts.level)?;
        let mut b: LayerTar = tar::Builder::new(HashingWriter::new(enc));
        copy_tarball(&mut b, src).with_context(|| format!("importing {}", src.display()))?;
        b.finish().context("finishing the layer")?;
        let (enc, diff_id, _) = b.into_inner().context("finishing the layer")?.finish();
        let blob = enc.finish().context("compressing the layer")?;
        let (digest, size) = blob.commit(None)?;
        (digest, size, diff_id)
    };

    let mut cfg = ImageConfig::empty();
    if let Some(a) = &opts.arch {
        cfg.architecture = a.clone();
    }
    let created = created_time();
    cfg.created = Some(created.clone());
    cfg.config.env = Some(vec![DEFAULT_PATH.to_string()]);
    cfg.rootfs.diff_ids = vec![diff_id];
    cfg.history.push(History {
        created: Some(created),
        created_by: Some(format!("kiln import {}", src.display())),
        comment: opts.message.clone(),
        ..Default::default()
    });
    let layer = Descriptor::new(format.layer_media_type(Compression::Gzip), digest, size);
    store.write_image(&cfg, vec![layer], format)
}

/// RFC 3339 UTC time: SOURCE_DATE_EPOCH when set (reproducible imports), else now.
fn created_time() -> String {
    let t = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .unwrap_or_else(std::time::SystemTime::now);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A tar entry path made relative; `None` for the root itself; an error for `..`.
pub(crate) fn clean_import_path(raw: &[u8]) -> Result<Option<PathBuf>> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => bail!(
                "refusing the entry {:?}: it contains '..' and would point outside the image root",
                String::from_utf8_lossy(raw)
            ),
            Component::Prefix(_) => bail!("unsupported path {:?}", String::from_utf8_lossy(raw)),
        }
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

/// Reads exactly `remaining` bytes from `inner`; a short read is an error (truncated input),
/// extra bytes are not read (a file that grew while being archived).
struct Exact<R> {
    inner: R,
    remaining: u64,
    what: String,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ended {} bytes early (truncated input, or the file shrank)",
                    self.what, self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn copy_tarball(b: &mut LayerTar, src: &Path) -> Result<()> {
    let r = open_decompressed(src)?;
    let mut ar = tar::Archive::new(r);
    let what = || {
        format!(
            "reading {} as a tar archive (is it a complete tar file?)",
            src.display()
        )
    };
    let mut count = 0usize;
    for entry in ar.entries().with_context(what)? {
        let mut e = match entry {
            Ok(e) => e,
            Err(e) if count == 0 => bail!("{} is not a tar archive ({e})", src.display()),
            Err(e) => return Err(e).with_context(what),
        };
        count += 1;
        let et = e.header().entry_type();
        if et.is_pax_global_extensions() {
            continue;
        }
        if et.is_gnu_sparse() {
            bail!(
                "{:?} is a GNU sparse file, which OCI layers cannot carry",
                String::from_utf8_lossy(&e.path_bytes())
            );
        }
        let raw = e.path_bytes().into_owned();
        let Some(path) = clean_import_path(&raw)? else { continue };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = e.pax_extensions().with_context(what)? {
            for ext in exts {
                let ext = ext.with_context(what)?;
                let key = ext
                    .key()
                    .map_err(|_| anyhow::anyhow!("a PAX record key is not UTF-8"))?;
                if matches!(key, "path" | "linkpath" | "size") || key.starts_with("GNU.sparse") {
                    continue;
                }
                pax.push((key.to_string(), ext.value_bytes().to_vec()));
            }
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let mut h = e.header().clone();
        let size = e.size();
        let shown = path.display().to_string();
        match et {
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .context("a hard link without a target")?
                    .into_owned();
                let Some(target) = clean_import_path(&target)? else {
                    bail!("hard link {shown} points at the root directory")
                };
                h.set_size(0);
                b.append_link(&mut h, &path, &target)?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name_bytes().context("a symlink without a target")?.into_owned();
                h.set_size(0);
                b.append_link(&mut h, &path, Path::new(OsStr::from_bytes(&target)))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                let data = Exact {
                    inner: &mut e,
                    remaining: size,
                    what: format!("entry {shown}"),
                };
                b.append_data(&mut h, &path, data)
                    .with_context(|| format!("copying entry {shown}"))?;
            }
            tar::EntryType::Directory | tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                h.set_size(0);
                b.append_data(&mut h, &path, io::empty())?;
            }
            other => bail!("entry {shown} has an unsupported tar entry type {other:?}"),
        }
    }
    if count == 0 {
        bail!("{} holds no tar entries (empty or not a tar file)", src.display());
    }
    Ok(())
}
