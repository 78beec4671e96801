//! `kiln fsck --full`: an unpacked layer directory compared with a fresh unpack of its blob.
//! The store cannot do this itself (unpacking is this module's job, one level up), so
//! [`crate::store::fsck`] takes the check as a [`LayerCheck`] and the caller passes
//! [`AgainstBlob`].

use super::{DirWalk, Ownership, effective_owner};
use crate::digest::Digest;
use crate::fsutil::overlay;
use crate::image::{Compression, Descriptor};
use crate::store::Store;
use crate::store::fsck::LayerCheck;
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The [`LayerCheck`] of `kiln fsck --full`: [`verify_against_blob`] with the ownership kiln
/// unpacks layers with here.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgainstBlob {
    pub ownership: Ownership,
}

impl LayerCheck for AgainstBlob {
    fn check(&self, store: &Store, diff_id: &Digest, blob: &Descriptor) -> Result<Option<String>> {
        verify_against_blob(store, diff_id, blob, self.ownership)
    }
}

/// `kiln fsck --full`: compares `layers/<diff_id>` with a fresh unpack of its blob `desc`
/// (unpacked with `ownership`, as kiln unpacks layers here). Returns the first difference, or
/// None when they are equal.
///
/// Why not re-tar the directory and hash it against the diff_id: that reproduces the diff_id
/// only for blobs kiln's own tar writer produced (and only without `--timestamp` clamping);
/// layers pulled from registries were written by other tar writers (other entry order, `./`
/// prefixes, PAX records, mtimes of implicit parents), so their re-tar never matches. An unpack
/// of the blob with kiln's unpacker ([`super::unpack_to_lower`], which also checks the
/// blob against the diff_id) is what the directory must equal for any blob, so the two trees
/// are compared entry by entry: same paths, types, modes, owners (as a layer records them),
/// sizes, contents, link targets, device numbers and xattrs (overlay bookkeeping other than
/// opacity left out). mtimes are not compared (they carry no content and the unpacker restores
/// them anyway).
pub fn verify_against_blob(
    store: &Store,
    diff_id: &Digest,
    desc: &Descriptor,
    ownership: Ownership,
) -> Result<Option<String>> {
    let compression = Compression::of_media_type(&desc.media_type)
        .with_context(|| format!("layer {}: unsupported media type {}", desc.digest, desc.media_type))?;
    let tmp = store.tmp_dir("fsck-")?;
    let fresh = tmp.path().join("layer");
    fs::create_dir(&fresh).with_context(|| format!("creating {}", fresh.display()))?;
    let blob = store.open_blob(&desc.digest)?;
    let got = super::unpack_to_lower(
        std::io::BufReader::with_capacity(1 << 20, blob),
        compression,
        &fresh,
        ownership,
        store.reporter(),
    )
    .with_context(|| format!("unpacking layer {}", desc.digest))?;
    if &got != diff_id {
        bail!("layer blob {} has diff_id {got}, not {diff_id}", desc.digest);
    }
    let r = compare_trees(&store.layer_dir(diff_id), &fresh, ownership);
    // The fresh copy may hold read-only directories.
    let _ = crate::fsutil::remove::remove_path(&fresh);
    r
}

/// Compares two directory trees (see [`verify_against_blob`]); the first difference, named by
/// its path relative to the roots.
pub fn compare_trees(have: &Path, want: &Path, ownership: Ownership) -> Result<Option<String>> {
    let mut a = DirWalk::new(have, &[])?;
    let mut b = DirWalk::new(want, &[])?;
    loop {
        let (ea, eb) = (a.next_entry()?, b.next_entry()?);
        let (ea, eb) = match (ea, eb) {
            (None, None) => return Ok(None),
            (Some(e), None) => return Ok(Some(format!("/{} is not in the blob", show(&e.rel)))),
            (None, Some(e)) => return Ok(Some(format!("/{} is missing", show(&e.rel)))),
            (Some(x), Some(y)) => (x, y),
        };
        if ea.rel != eb.rel {
            return Ok(Some(if ea.rel < eb.rel {
                format!("/{} is not in the blob", show(&ea.rel))
            } else {
                format!("/{} is missing", show(&eb.rel))
            }));
        }
        let pa = have.join(std::ffi::OsStr::from_bytes(&ea.rel));
        let pb = want.join(std::ffi::OsStr::from_bytes(&eb.rel));
        if let Some(d) = entry_difference(&pa, &ea.md, &pb, &eb.md, ownership)? {
            return Ok(Some(format!("/{}: {d}", show(&ea.rel))));
        }
    }
}

fn show(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

fn kind(md: &fs::Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "socket"
    }
}

/// Xattrs as a layer records them: overlay bookkeeping left out except opacity (normalised),
/// the owner record left out (compared through the effective owner).
fn layer_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    let Ok(names) = xattr::list(p) else { return v };
    for n in names {
        let nb = n.as_bytes();
        if nb == overlay::OWNER_XATTR.as_bytes() {
            continue;
        }
        let val = xattr::get(p, &n).ok().flatten().unwrap_or_default();
        if overlay::is_opaque_xattr(nb) {
            if overlay::marks_opaque(nb, &val) {
                v.push((b"opaque".to_vec(), val));
            }
            continue;
        }
        if overlay::is_overlay_xattr(nb) {
            continue;
        }
        v.push((nb.to_vec(), val));
    }
    v.sort();
    v.dedup();
    v
}

fn file_digest(p: &Path) -> Result<Digest> {
    let f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut r = crate::digest::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
    }
    Ok(r.finish().1)
}

fn entry_difference(
    pa: &Path,
    a: &fs::Metadata,
    pb: &Path,
    b: &fs::Metadata,
    ownership: Ownership,
) -> Result<Option<String>> {
    if kind(a) != kind(b) {
        return Ok(Some(format!("is a {}, the blob has a {}", kind(a), kind(b))));
    }
    if !a.is_symlink() && a.mode() & 0o7777 != b.mode() & 0o7777 {
        return Ok(Some(format!(
            "mode {:o}, the blob has {:o}",
            a.mode() & 0o7777,
            b.mode() & 0o7777
        )));
    }
    let (oa, ob) = (effective_owner(pa, a, ownership), effective_owner(pb, b, ownership));
    if oa != ob {
        return Ok(Some(format!("owner {}:{}, the blob has {}:{}", oa.0, oa.1, ob.0, ob.1)));
    }
    if a.is_file() {
        if a.len() != b.len() {
            return Ok(Some(format!("{} bytes, the blob has {}", a.len(), b.len())));
        }
        if file_digest(pa)? != file_digest(pb)? {
            return Ok(Some("its content differs from the blob's".into()));
        }
    }
    if a.is_symlink() {
        let (la, lb) = (
            fs::read_link(pa).with_context(|| format!("reading {}", pa.display()))?,
            fs::read_link(pb).with_context(|| format!("reading {}", pb.display()))?,
        );
        if la != lb {
            return Ok(Some(format!(
                "points to {}, the blob to {}",
                la.display(),
                lb.display()
            )));
        }
    }
    if (a.file_type().is_char_device() || a.file_type().is_block_device()) && a.rdev() != b.rdev() {
        return Ok(Some("device numbers differ from the blob's".into()));
    }
    if !a.is_symlink() && layer_xattrs(pa) != layer_xattrs(pb) {
        return Ok(Some("xattrs differ from the blob's".into()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageConfig, MT_OCI_MANIFEST};
    use crate::store::ManifestFormat;
    use crate::store::fsck::{FsckOptions, fsck};

    /// Unpacks and publishes every layer of `img` (what the builder does before a step).
    fn unpack_layers(s: &Store, img: &crate::image::Image) {
        for (l, d) in img.manifest.layers.iter().zip(&img.config.rootfs.diff_ids) {
            let tmp = s.tmp_dir("unpack-").unwrap();
            let dir = tmp.path().join("layer");
            fs::create_dir(&dir).unwrap();
            let c = Compression::of_media_type(&l.media_type).unwrap();
            let blob = std::io::BufReader::new(s.open_blob(&l.digest).unwrap());
            assert_eq!(
                &super::super::unpack_to_lower(blob, c, &dir, Ownership::Kernel, &crate::events::Reporter::silent())
                    .unwrap(),
                d
            );
            s.publish_layer(&dir, d).unwrap();
        }
    }

    /// A store with an image whose one layer (a real blob) is unpacked: (dir, store, diff_id).
    fn unpacked_image() -> (tempfile::TempDir, Store, Digest) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/conf"), b"hello").unwrap();
        let l = crate::layer::commit_dir(&s, &src, &[], &Default::default(), ManifestFormat::Oci)
            .unwrap()
            .unwrap();
        let mut cfg = ImageConfig::empty();
        cfg.rootfs.diff_ids.push(l.diff_id.clone());
        let img = s.write_image(&cfg, vec![l.descriptor], ManifestFormat::Oci).unwrap();
        let bytes = serde_json::to_vec(&img.manifest).unwrap();
        s.tag(
            "app:1",
            &Descriptor::new(MT_OCI_MANIFEST, img.manifest_digest.clone(), bytes.len() as u64),
        )
        .unwrap();
        unpack_layers(&s, &img);
        assert!(s.layer_ready(&l.diff_id));
        (t, s, l.diff_id)
    }

    #[test]
    fn full_check_finds_layers_changed_after_unpacking() {
        let (_t, s, d) = unpacked_image();
        let full = FsckOptions {
            full: Some(&AgainstBlob::default()),
            ..Default::default()
        };
        let r = fsck(&s, &full).unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        fs::write(s.layer_dir(&d).join("etc/conf"), b"jello").unwrap();
        // The plain check trusts the marker; the full one compares with the blob.
        assert!(fsck(&s, &FsckOptions::default()).unwrap().is_consistent());
        let r = fsck(&s, &full).unwrap();
        let all = format!("{:#?}", r.problems);
        assert_eq!(r.errors(), 1, "{all}");
        assert!(
            all.contains(&d.to_string()) && all.contains("/etc/conf: its content differs"),
            "{all}"
        );
        // An extra file is found too.
        fs::write(s.layer_dir(&d).join("etc/conf"), b"hello").unwrap();
        fs::write(s.layer_dir(&d).join("extra"), b"").unwrap();
        let all = format!("{:#?}", fsck(&s, &full).unwrap().problems);
        assert!(all.contains("/extra is not in the blob"), "{all}");
        let r = fsck(
            &s,
            &FsckOptions {
                full: Some(&AgainstBlob::default()),
                repair: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.is_consistent(), "{:#?}", r.problems);
        assert!(!s.layer_dir(&d).exists() && !s.layer_marker(&d).exists());
        let img = s.load_image("app:1").unwrap();
        unpack_layers(&s, &img);
        assert!(fsck(&s, &full).unwrap().problems.is_empty());
        assert_eq!(fs::read(s.layer_dir(&d).join("etc/conf")).unwrap(), b"hello");
    }

    #[test]
    fn tree_comparison_finds_extra_missing_and_changed_entries() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for r in [&a, &b] {
            fs::create_dir_all(r.join("etc")).unwrap();
            fs::write(r.join("etc/conf"), b"hello").unwrap();
            std::os::unix::fs::symlink("conf", r.join("etc/link")).unwrap();
        }
        assert_eq!(compare_trees(&a, &b, Ownership::Kernel).unwrap(), None);
        fs::write(a.join("etc/conf"), b"jello").unwrap();
        assert!(
            compare_trees(&a, &b, Ownership::Kernel)
                .unwrap()
                .unwrap()
                .contains("/etc/conf: its content differs")
        );
        fs::write(a.join("etc/conf"), b"hello").unwrap();
        fs::write(a.join("pwned"), b"").unwrap();
        assert_eq!(
            compare_trees(&a, &b, Ownership::Kernel).unwrap().unwrap(),
            "/pwned is not in the blob"
        );
        fs::remove_file(a.join("pwned")).unwrap();
        fs::remove_file(a.join("etc/link")).unwrap();
        assert_eq!(
            compare_trees(&a, &b, Ownership::Kernel).unwrap().unwrap(),
            "/etc/link is missing"
        );
    }
}
