//! `kiln load`: oci-archive, docker-archive (also compressed, e.g. `docker save | gzip`) and
//! OCI layout directories into the store, streaming and verifying every digest.

use super::{Kind, copy_entry, decompress, open_decompressed, sniff_reader};
use crate::digest::{Digest, HashingWriter};
use crate::image::{
    ANNOTATION_REF_NAME, Descriptor, Image, ImageConfig, Index, JsonKind, MAX_INDEX_DEPTH, Manifest, is_index,
    read_at_most,
};
use crate::reference::Reference;
use crate::store::{ManifestFormat, Store, nesting_error, open_regular};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path};

/// Annotation Docker 25+ and containerd put on index entries: the full image name.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Small metadata files are kept in memory up to this size.
const MAX_METADATA: u64 = 32 << 20;

/// Loads every image of an oci-archive, docker-archive or OCI layout directory into the store
/// and names it (see the module docs of [`crate::archive`] for the naming rules). Returns
/// (normalised name, image) pairs; an image without a name appears once with `None`.
pub fn import_archive(store: &Store, src: &Path) -> Result<Vec<(Option<String>, Image)>> {
    let md = fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if md.is_dir() {
        return import_layout_dir(store, src);
    }
    let mut ar = Archive::default();
    ar.read(store, src)?;
    if let Some(index) = ar.small.get("index.json") {
        JsonKind::Manifest.check(&format!("index.json in {}", src.display()), index.len() as u64)?;
        let mut index: Index = serde_json::from_slice(index)
            .with_context(|| format!("index.json in {} is not a valid OCI image index", src.display()))?;
        index.manifests.retain(|e| !crate::store::referrers::is_attachment(e));
        return import_index(store, &index, &format!("the archive {}", src.display()));
    }
    if let Some(manifest) = ar.small.get("manifest.json") {
        return ar.import_docker(store, manifest, src);
    }
    bail!(
        "{} is neither an oci-archive nor a docker-archive: it contains no index.json or manifest.json{}",
        src.display(),
        if ar.entries == 0 {
            " (it holds no tar entries at all; is it a tar file?)"
        } else {
            ""
        }
    )
}

#[derive(Default)]
struct Archive {
    /// Metadata files (index.json, manifest.json, `<id>.json` configs) by path.
    small: HashMap<String, Vec<u8>>,
    /// Everything else, streamed into the store: path → (digest, size).
    stored: HashMap<String, (Digest, u64)>,
    /// Symlinks between archive members: path → target path.
    links: HashMap<String, String>,
    entries: usize,
}

/// An archive path without `./` and `/` prefixes; None for paths with `..`.
fn clean(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// Like [`clean`], but resolves `..` lexically (for symlink targets inside the archive);
/// None when it climbs above the archive root.
fn clean_lexical(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

impl Archive {
    fn read(&mut self, store: &Store, src: &Path) -> Result<()> {
        let r = open_decompressed(src)?;
        let mut tar = tar::Archive::new(r);
        let what = || format!("reading the archive {} (is it a complete tar file?)", src.display());
        for entry in tar.entries().with_context(what)? {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) if self.entries == 0 => bail!("{} is not a tar archive ({e})", src.display()),
                Err(e) => return Err(e).with_context(what),
            };
            self.entries += 1;
            let kind = entry.header().entry_type();
            if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous)
                && let Ok(p) = entry.path()
                && let Some(p) = clean(&p)
                && let Some(hex) = p.strip_prefix("blobs/sha256/")
                && !hex.is_empty()
            {
                // A blob must be the data itself, never a link (to a file outside or to
                // another member), a FIFO or a device.
                let what = match kind {
                    tar::EntryType::Symlink => match entry.link_name() {
                        Ok(Some(t)) => format!("a symlink to {}", t.display()),
                        _ => "a symlink".to_string(),
                    },
                    tar::EntryType::Link => "a hard link".to_string(),
                    tar::EntryType::Fifo => "a FIFO".to_string(),
                    tar::EntryType::Char => "a character device".to_string(),
                    tar::EntryType::Block => "a block device".to_string(),
                    tar::EntryType::Directory => "a directory".to_string(),
                    _ => format!("a tar entry of type {kind:?}"),
                };
                bail!(
                    "refusing blob sha256:{hex} in the archive {}: it is {what}, not a regular file",
                    src.display()
                );
            }
            if entry.header().entry_type() == tar::EntryType::Symlink
                && let (Ok(p), Ok(Some(target))) = (entry.path(), entry.link_name())
            {
                // skopeo writes legacy `<id>/layer.tar` as symlinks to `<hex>.tar`.
                let joined = p.parent().unwrap_or(Path::new("")).join(target);
                if let (Some(from), Some(to)) = (clean(&p), clean_lexical(&joined)) {
                    self.links.insert(from, to);
                }
                continue;
            }
            if entry.header().entry_type() != tar::EntryType::Regular
                && entry.header().entry_type() != tar::EntryType::Continuous
            {
                continue;
            }
            let path = entry.path().with_context(what)?.into_owned();
            let Some(path) = clean(&path) else {
                bail!(
                    "the archive {} contains a path with '..': {}",
                    src.display(),
                    path.display()
                )
            };
            let size = entry.size();
            let what_entry = format!("{path} in {}", src.display());
            let in_blobs = path.strip_prefix("blobs/sha256/");
            let is_meta = in_blobs.is_none()
                && size <= MAX_METADATA
                && (path.ends_with(".json") || path == "oci-layout" || path == "repositories");
            if is_meta {
                if path == "index.json" || path == "manifest.json" {
                    JsonKind::Manifest.check(&what_entry, size)?;
                }
                let mut data = Vec::with_capacity(size as usize);
                copy_entry(&mut entry, &mut data, size, &what_entry)?;
                self.small.insert(path, data);
                continue;
            }
            let expected = match in_blobs {
                Some(hex) => Some(
                    Digest::parse(&format!("sha256:{hex}"))
                        .with_context(|| format!("{what_entry}: not a sha256 blob name"))?,
                ),
                None => None,
            };
            if let Some(d) = &expected
                && store.has_blob(d)
            {
                // Already stored; the tar reader skips the data.
                self.stored.insert(path, (d.clone(), size));
                continue;
            }
            let mut w = store.blob_writer()?;
            copy_entry(&mut entry, &mut w, size, &what_entry)?;
            let (d, n) = w
                .commit(expected.as_ref())
                .with_context(|| format!("{what_entry} is corrupt"))?;
            self.stored.insert(path, (d, n));
        }
        Ok(())
    }

    /// An archive path with member symlinks resolved (a few hops at most).
    fn follow(&self, path: &str) -> String {
        let mut p = clean(Path::new(path)).unwrap_or_default();
        for _ in 0..8 {
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        p
    }

    /// The bytes of a metadata file: from memory or, for `blobs/sha256/…` paths, the store.
    fn meta(&self, store: &Store, path: &str) -> Result<Vec<u8>> {
        let path = self.follow(path);
        if let Some(d) = self.small.get(&path) {
            return Ok(d.clone());
        }
        match self.stored.get(&path) {
            Some((d, _)) => store.read_blob(d),
            None => bail!("the archive is incomplete: {path} is missing"),
        }
    }

    fn import_docker(&self, store: &Store, manifest: &[u8], src: &Path) -> Result<Vec<(Option<String>, Image)>> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Item {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let items: Vec<Item> = serde_json::from_slice(manifest)
            .with_context(|| format!("manifest.json in {} is not a docker-archive manifest", src.display()))?;
        let mut out = Vec::new();
        for item in items {
            let config_bytes = self.meta(store, &item.config)?;
            JsonKind::Config.check(
                &format!("the config {} in {}", item.config, src.display()),
                config_bytes.len() as u64,
            )?;
            let config: ImageConfig = serde_json::from_slice(&config_bytes)
                .with_context(|| format!("{} in {} is not an image config", item.config, src.display()))?;
            let config_digest = store.put_bytes(&config_bytes)?;
            if config.rootfs.diff_ids.len() != item.layers.len() {
                bail!(
                    "{} in {} lists {} layers but its config has {} diff_ids",
                    item.config,
                    src.display(),
                    item.layers.len(),
                    config.rootfs.diff_ids.len()
                );
            }
            let mut layers = Vec::new();
            for (path, want) in item.layers.iter().zip(&config.rootfs.diff_ids) {
                let cleaned = self.follow(path);
                let Some((digest, size)) = self.stored.get(&cleaned) else {
                    bail!("the archive {} is incomplete: layer {path} is missing", src.display())
                };
                let desc = describe_layer(store, digest, *size, want)
                    .with_context(|| format!("layer {path} in {}", src.display()))?;
                layers.push(desc);
            }
            let config_desc = Descriptor::new(
                ManifestFormat::Docker.config_media_type(),
                config_digest,
                config_bytes.len() as u64,
            );
            let (digest, manifest, desc) = store.write_manifest(config_desc, layers, ManifestFormat::Docker)?;
            let image = Image {
                manifest_digest: digest,
                manifest,
                config,
            };
            let tags = item.repo_tags.unwrap_or_default();
            if tags.is_empty() {
                store.add_unnamed(&desc)?;
                out.push((None, image.clone()));
            }
            for t in tags {
                let name = Reference::parse(&t)
                    .with_context(|| format!("RepoTags in {} has an invalid name", src.display()))?
                    .to_string();
                store.tag(&name, &desc)?;
                out.push((Some(name), image.clone()));
            }
        }
        Ok(out)
    }
}

/// Works out a docker-archive layer's media type and checks its diff_id. Uncompressed, gzip
/// and zstd blobs are kept as they are; bzip2/xz layers are stored decompressed.
fn describe_layer(store: &Store, digest: &Digest, size: u64, want: &Digest) -> Result<Descriptor> {
    let mut r = BufReader::with_capacity(256 * 1024, store.open_blob(digest)?);
    let kind = sniff_reader(&mut r)?;
    let fmt = ManifestFormat::Docker;
    use crate::image::Compression as C;
    let (mt, diff_id, digest, size) = match kind {
        Kind::Plain => (fmt.layer_media_type(C::None), digest.clone(), digest.clone(), size),
        Kind::Gzip | Kind::Zstd => {
            let mut d = decompress(Box::new(r), kind)?;
            let mut h = HashingWriter::new(io::sink());
            io::copy(&mut d, &mut h).context("decompressing")?;
            let c = if kind == Kind::Gzip { C::Gzip } else { C::Zstd };
            (fmt.layer_media_type(c), h.finish().1, digest.clone(), size)
        }
        Kind::Bzip2 | Kind::Xz => {
            let mut d: Box<dyn io::Read> = if kind == Kind::Xz {
                open_decompressed(&store.blob_path(digest))?
            } else {
                decompress(Box::new(r), kind)?
            };
            let mut w = HashingWriter::new(store.blob_writer()?);
            io::copy(&mut d, &mut w).context("decompressing")?;
            let (mut bw, diff_id, _) = w.finish();
            bw.flush()?;
            let (d2, n) = bw.commit(None)?;
            (fmt.layer_media_type(C::None), diff_id, d2, n)
        }
    };
    if &diff_id != want {
        bail!("its content hashes to diff_id {diff_id}, but the image config says {want}");
    }
    Ok(Descriptor::new(mt, digest, size))
}

/// The name an index entry carries, normalised; None for bare tags (see the module docs).
fn entry_name(e: &Descriptor) -> Option<String> {
    if let Some(n) = e.annotations.get(ANNOTATION_CONTAINERD_NAME)
        && let Ok(r) = Reference::parse(n)
    {
        return Some(r.to_string());
    }
    let n = e.annotations.get(ANNOTATION_REF_NAME)?;
    if !n.contains(['/', ':', '@']) {
        return None;
    }
    Reference::parse(n).ok().map(|r| r.to_string())
}

/// Checks that everything an index entry references is in the store, then names it.
fn import_index(store: &Store, index: &Index, what: &str) -> Result<Vec<(Option<String>, Image)>> {
    if index.manifests.is_empty() {
        bail!("{what} contains no images (its index.json lists no manifests)");
    }
    let mut out = Vec::new();
    for e in &index.manifests {
        check_complete(store, e, what)?;
        let image = store
            .load_descriptor(e)
            .with_context(|| format!("loading {} from {what}", e.digest))?;
        let mut desc = e.clone();
        desc.annotations.clear();
        match entry_name(e) {
            Some(n) => {
                store.tag(&n, &desc)?;
                out.push((Some(n), image));
            }
            None => {
                store.add_unnamed(&desc)?;
                out.push((None, image));
            }
        }
    }
    Ok(out)
}

/// Every blob reachable from `d` must be in the store, manifests and configs within their
/// size caps (declared and actual). Indexes are followed in a loop, at most
/// [`MAX_INDEX_DEPTH`] deep.
fn check_complete(store: &Store, d: &Descriptor, what: &str) -> Result<()> {
    let mut d = d.clone();
    for depth in 0.. {
        let name = format!("manifest {} in {what}", d.digest);
        JsonKind::Manifest.check(&name, d.size)?;
        if !store.has_blob(&d.digest) {
            bail!("{what} is incomplete: manifest {} is missing", d.digest);
        }
        let bytes = store
            .read_json_blob(&d.digest, JsonKind::Manifest)
            .with_context(|| format!("reading {name}"))?;
        if bytes.len() as u64 != d.size {
            bail!("{name} is {} bytes, but its descriptor says {}", bytes.len(), d.size);
        }
        if is_index(&d.media_type) {
            if depth >= MAX_INDEX_DEPTH {
                bail!("{what}: {}", nesting_error(&d.digest));
            }
            let idx: Index = serde_json::from_slice(&bytes).with_context(|| format!("index {} in {what}", d.digest))?;
            match crate::store::pick_platform(&idx.manifests) {
                Some(child) => d = child.clone(),
                None => return Ok(()),
            }
            continue;
        }
        let m: Manifest = serde_json::from_slice(&bytes).with_context(|| format!("manifest {} in {what}", d.digest))?;
        JsonKind::Config.check(&format!("config {} in {what}", m.config.digest), m.config.size)?;
        for b in std::iter::once(&m.config).chain(&m.layers) {
            if !store.has_blob(&b.digest) {
                bail!(
                    "{what} is incomplete: blob {} of manifest {} is missing",
                    b.digest,
                    d.digest
                );
            }
        }
        break;
    }
    Ok(())
}

/// Copies the blobs an OCI layout directory's images reference into the store (verified).
/// Every blob is opened with [`open_regular`] (no symlinks, FIFOs or devices), must have the
/// size its descriptor declares (manifests, indexes and configs within their caps) and is read
/// no further than that; indexes are followed in a loop, at most [`MAX_INDEX_DEPTH`] deep.
fn import_layout_dir(store: &Store, dir: &Path) -> Result<Vec<(Option<String>, Image)>> {
    let ipath = dir.join("index.json");
    if !dir.join("oci-layout").is_file() || !ipath.is_file() {
        bail!(
            "{} is a directory but not an OCI image layout (no oci-layout and index.json)",
            dir.display()
        );
    }
    let what = format!("the layout {}", dir.display());
    let index_name = format!("index.json of {what}");
    let (f, size) = open_regular(&ipath).with_context(|| format!("refusing {index_name}"))?;
    JsonKind::Manifest.check(&index_name, size)?;
    let index_bytes = read_at_most(f, JsonKind::Manifest.cap())
        .with_context(|| format!("reading {}", ipath.display()))?
        .ok_or_else(|| JsonKind::Manifest.over_cap(&index_name))?;
    let mut index: Index = serde_json::from_slice(&index_bytes)
        .with_context(|| format!("{} is not a valid OCI image index", ipath.display()))?;
    index.manifests.retain(|e| !crate::store::referrers::is_attachment(e));
    let blobs = dir.join("blobs/sha256");
    for d in [dir.join("blobs"), blobs.clone()] {
        if fs::symlink_metadata(&d).is_ok_and(|m| !m.is_dir()) {
            bail!("refusing {what}: {} is not a directory (a symlink?)", d.display());
        }
    }
    let copy = |d: &Descriptor, kind: Option<JsonKind>| -> Result<()> {
        let name = format!("blob {} of {what}", d.digest);
        if let Some(k) = kind {
            k.check(&name, d.size)?;
        }
        if store.has_blob(&d.digest) {
            return Ok(());
        }
        let p = blobs.join(d.digest.hex());
        let (f, size) = match open_regular(&p) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("{what} is incomplete: blob {} is missing", d.digest)
            }
            Err(e) => return Err(e).with_context(|| format!("refusing {name} ({})", p.display())),
        };
        if size != d.size {
            bail!("{name} is {size} bytes, but its descriptor says {}", d.size);
        }
        let mut w = store.blob_writer()?;
        let n = io::copy(&mut f.take(d.size), &mut w).with_context(|| format!("copying {}", p.display()))?;
        if n != d.size {
            bail!("{name} shrank while it was read ({n} of {} bytes)", d.size);
        }
        w.commit(Some(&d.digest))
            .with_context(|| format!("blob {} is corrupt", p.display()))?;
        Ok(())
    };
    for e in &index.manifests {
        let mut d = e.clone();
        let mut depth = 0;
        loop {
            copy(&d, Some(JsonKind::Manifest))?;
            let bytes = store.read_json_blob(&d.digest, JsonKind::Manifest)?;
            if is_index(&d.media_type) {
                if depth >= MAX_INDEX_DEPTH {
                    bail!("refusing {what}: {}", nesting_error(&d.digest));
                }
                depth += 1;
                let idx: Index = serde_json::from_slice(&bytes)
                    .with_context(|| format!("index {} of {what} is not a valid image index", d.digest))?;
                let child = crate::store::pick_platform(&idx.manifests).with_context(|| {
                    format!(
                        "index {} of {what} has no manifest for linux/{}",
                        d.digest,
                        crate::image::host_arch()
                    )
                })?;
                d = child.clone();
                continue;
            }
            let m: Manifest = serde_json::from_slice(&bytes)
                .with_context(|| format!("manifest {} of {what} is not a valid image manifest", d.digest))?;
            copy(&m.config, Some(JsonKind::Config))?;
            for l in &m.layers {
                copy(l, None)?;
            }
            break;
        }
    }
    import_index(store, &index, &what)
}
