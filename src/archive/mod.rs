//! Image archives and layouts: OCI layout directories, oci-archive and docker-archive
//! (`docker save`) tarballs, in both directions, plus `kiln import` of a rootfs.
//!
//! Naming rules (decided here, mirroring the tools people compare with):
//! - `oci:DIR:NAME`, `oci-archive:FILE:NAME`: `org.opencontainers.image.ref.name` is NAME exactly
//!   as given (skopeo's rule, e.g. `oci:dir:latest` → `latest`).
//! - `oci:DIR` without a name: the source reference's *tag* (`app:v1` → `v1`), so that
//!   `umoci unpack --image DIR:v1` and `skopeo inspect oci:DIR:v1` work (umoci only accepts
//!   tag-like names). skopeo itself would write no name at all; buildah the same.
//! - `oci-archive:FILE` without a name (and `kiln save --format oci-archive`): the full
//!   normalised reference (`docker.io/library/app:v1`), as `podman save` does, so that
//!   `kiln load` (and podman load) get the name back.
//! - `docker-archive:FILE[:NAME]`: `RepoTags` holds the familiar form of NAME or of the source
//!   (`app:v1`), as `docker save` writes it.
//! - Loading: `io.containerd.image.name` (Docker 25+ archives) wins; otherwise
//!   `org.opencontainers.image.ref.name` is used when it is a full reference (contains `/`, `:`
//!   or `@`); a bare tag such as `latest` names no repository, so such an image is loaded
//!   without a name (`Loaded image ID: sha256:…`) and can be named with `kiln tag`.

mod load;
mod rootfs;

pub use load::import_archive;
pub use rootfs::{DEFAULT_PATH, ImportOptions, import_rootfs, import_rootfs_with};

use crate::digest::{Digest, HashingWriter};
use crate::image::{ANNOTATION_REF_NAME, Compression, Descriptor, Image, Index, MT_OCI_INDEX, MT_OCI_MANIFEST};
use crate::reference::Reference;
use crate::store::{OCI_LAYOUT_JSON, Store};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Where an image goes to (push / save) or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `oci:DIR[:NAME]` — an OCI image layout directory.
    OciLayout(PathBuf, Option<String>),
    /// `oci-archive:FILE[:NAME]` — a tar of an OCI image layout.
    OciArchive(PathBuf, Option<String>),
    /// `docker-archive:FILE[:NAME]` — the `docker save` format.
    DockerArchive(PathBuf, Option<String>),
}

impl Transport {
    /// Parses `oci:DIR[:NAME]`, `oci-archive:FILE[:NAME]` or `docker-archive:FILE[:NAME]` (the
    /// path ends at the first `:`, as in skopeo). Returns `Ok(None)` for anything else, such as
    /// a registry reference.
    pub fn parse(s: &str) -> Result<Option<Transport>> {
        let (kind, rest) = match s.split_once(':') {
            Some((k @ ("oci" | "oci-archive" | "docker-archive"), rest)) => (k, rest),
            _ => return Ok(None),
        };
        let (path, name) = match rest.split_once(':') {
            Some((p, n)) => (p, Some(n.to_string())),
            None => (rest, None),
        };
        if path.is_empty() {
            bail!("invalid destination {s:?}: the {kind}: transport needs a path ({kind}:PATH[:NAME])");
        }
        if name.as_deref() == Some("") {
            bail!("invalid destination {s:?}: empty name after the path");
        }
        if kind == "docker-archive"
            && let Some(n) = &name
        {
            Reference::parse(n).with_context(|| format!("invalid destination {s:?}"))?;
        }
        let path = PathBuf::from(path);
        Ok(Some(match kind {
            "oci" => Transport::OciLayout(path, name),
            "oci-archive" => Transport::OciArchive(path, name),
            _ => Transport::DockerArchive(path, name),
        }))
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (k, p, n) = match self {
            Transport::OciLayout(p, n) => ("oci", p, n),
            Transport::OciArchive(p, n) => ("oci-archive", p, n),
            Transport::DockerArchive(p, n) => ("docker-archive", p, n),
        };
        write!(f, "{k}:{}", p.display())?;
        if let Some(n) = n {
            write!(f, ":{n}")?;
        }
        Ok(())
    }
}

/// Writes `image` (from `store`) to `dest`. `name` is the normalised reference the image was
/// asked for (used for the default names, see the module docs; may be an id).
pub fn export(store: &Store, image: &Image, name: &str, dest: &Transport) -> Result<()> {
    let source_ref = Reference::parse(name).ok().filter(|_| !name.starts_with("sha256:"));
    match dest {
        Transport::OciLayout(dir, n) => {
            let refname = n.clone().or_else(|| source_ref.as_ref().and_then(|r| r.tag.clone()));
            write_layout_dir(store, image, dir, refname.as_deref())
                .with_context(|| format!("writing the OCI layout {}", dir.display()))
        }
        Transport::OciArchive(path, n) => {
            let refname = n.clone().or_else(|| source_ref.as_ref().map(|r| r.to_string()));
            write_atomically(path, |f| write_oci_archive(store, image, refname.as_deref(), f))
                .with_context(|| format!("writing the oci-archive {}", path.display()))
        }
        Transport::DockerArchive(path, n) => {
            let r = match n {
                Some(n) => Some(Reference::parse(n)?),
                None => source_ref,
            };
            let tag = r.filter(|r| r.tag.is_some()).map(|mut r| {
                r.digest = None;
                r.familiar()
            });
            write_atomically(path, |f| write_docker_archive(store, image, tag.as_deref(), f))
                .with_context(|| format!("writing the docker-archive {}", path.display()))
        }
    }
}

/// Writes an archive through a temp file in the same directory, renamed into place when `f`
/// succeeded (a failed or killed export never leaves a half archive at `path`).
fn write_atomically(path: &Path, f: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    crate::fsutil::replace_file(path, ".kiln-tmp-", crate::fsutil::Durability::File, f)
}

/// The manifest as it goes into an OCI layout: Docker manifests are converted to OCI media
/// types (the config blob stays byte-identical, so the image id does not change). Returns the
/// manifest bytes and descriptor.
fn oci_manifest_bytes(store: &Store, image: &Image) -> Result<(Vec<u8>, Descriptor)> {
    let bytes = crate::store::oci_view_of_manifest(&store.read_blob(&image.manifest_digest)?)?;
    let mut d = Descriptor::new(MT_OCI_MANIFEST, Digest::of(&bytes), bytes.len() as u64);
    d.platform = Some(crate::image::Platform {
        architecture: image.config.architecture.clone(),
        os: image.config.os.clone(),
        variant: image.config.variant.clone(),
        os_version: None,
    });
    Ok((bytes, d))
}

/// The blobs an image consists of besides its manifest: config, then layers (deduplicated).
fn image_blobs(image: &Image) -> Vec<&Descriptor> {
    let mut seen = HashSet::new();
    std::iter::once(&image.manifest.config)
        .chain(image.manifest.layers.iter())
        .filter(|d| seen.insert(d.digest.clone()))
        .collect()
}

fn write_layout_dir(store: &Store, image: &Image, dir: &Path, refname: Option<&str>) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let layout = dir.join("oci-layout");
    match fs::read(&layout) {
        Ok(data) => {
            let v: serde_json::Value = serde_json::from_slice(&data)
                .with_context(|| format!("{} exists but is not an OCI layout file", layout.display()))?;
            if v.get("imageLayoutVersion").is_none() {
                bail!("{} exists but is not an OCI layout file", layout.display());
            }
        }
        Err(_) => crate::fsutil::write_atomic(&layout, OCI_LAYOUT_JSON.as_bytes())?,
    }
    for d in image_blobs(image) {
        let dest = blobs.join(d.digest.hex());
        if dest.is_file() {
            continue;
        }
        let mut src = store.open_blob(&d.digest)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".kiln-tmp-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        io::copy(&mut src, tmp.as_file_mut()).with_context(|| format!("copying blob {}", d.digest))?;
        tmp.as_file().sync_all()?;
        tmp.persist(&dest)
            .map_err(|e| e.error)
            .with_context(|| format!("storing {}", dest.display()))?;
    }
    let (mbytes, mut mdesc) = oci_manifest_bytes(store, image)?;
    let mpath = blobs.join(mdesc.digest.hex());
    if !mpath.is_file() {
        crate::fsutil::write_atomic(&mpath, &mbytes)?;
    }
    let ipath = dir.join("index.json");
    let mut index: Index = match fs::read(&ipath) {
        Ok(data) => serde_json::from_slice(&data)
            .with_context(|| format!("{} is not a valid OCI image index", ipath.display()))?,
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    match refname {
        Some(n) => {
            index.manifests.retain(|e| {
                let en = e.annotations.get(ANNOTATION_REF_NAME);
                en.map(String::as_str) != Some(n) && !(en.is_none() && e.digest == mdesc.digest)
            });
            mdesc.annotations.insert(ANNOTATION_REF_NAME.to_string(), n.to_string());
            index.manifests.push(mdesc);
        }
        None => {
            if !index.manifests.iter().any(|e| e.digest == mdesc.digest) {
                index.manifests.push(mdesc);
            }
        }
    }
    let data = serde_json::to_vec(&index).context("serialising index.json")?;
    crate::fsutil::write_atomic(&ipath, &data)
}

/// A tar header for a regular file in an archive we write (deterministic metadata).
fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn dir_header() -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = file_header(data.len() as u64);
    b.append_data(&mut h, path, data)
        .with_context(|| format!("writing {path} into the archive"))
}

/// Streams a store blob into the archive (never whole in memory).
fn append_blob<W: Write>(b: &mut tar::Builder<W>, store: &Store, d: &Digest, path: &str) -> Result<()> {
    let f = store.open_blob(d)?;
    let size = f.metadata()?.len();
    let mut h = file_header(size);
    b.append_data(&mut h, path, BufReader::with_capacity(256 * 1024, f))
        .with_context(|| format!("writing blob {d} into the archive"))
}

fn write_oci_archive(store: &Store, image: &Image, refname: Option<&str>, out: &mut File) -> Result<()> {
    let mut b = tar::Builder::new(io::BufWriter::with_capacity(256 * 1024, out));
    let (mbytes, mut mdesc) = oci_manifest_bytes(store, image)?;
    if let Some(n) = refname {
        mdesc.annotations.insert(ANNOTATION_REF_NAME.to_string(), n.to_string());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.to_string()),
        manifests: vec![mdesc.clone()],
        annotations: BTreeMap::new(),
    };
    append_bytes(&mut b, "oci-layout", OCI_LAYOUT_JSON.as_bytes())?;
    append_bytes(&mut b, "index.json", &serde_json::to_vec(&index)?)?;
    for p in ["blobs/", "blobs/sha256/"] {
        b.append_data(&mut dir_header(), p, io::empty())?;
    }
    append_bytes(&mut b, &format!("blobs/sha256/{}", mdesc.digest.hex()), &mbytes)?;
    for d in image_blobs(image) {
        append_blob(&mut b, store, &d.digest, &format!("blobs/sha256/{}", d.digest.hex()))?;
    }
    b.into_inner()
        .context("finishing the archive")?
        .flush()
        .context("writing the archive")?;
    Ok(())
}

fn write_docker_archive(store: &Store, image: &Image, repo_tag: Option<&str>, out: &mut File) -> Result<()> {
    let mut b = tar::Builder::new(io::BufWriter::with_capacity(256 * 1024, out));
    let config_name = format!("{}.json", image.id().hex());
    append_bytes(&mut b, &config_name, &store.read_blob(image.id())?)?;
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.manifest.layers.len() {
        bail!(
            "image {} is inconsistent: {} layers but {} diff_ids in its config",
            image.id().short(),
            image.manifest.layers.len(),
            diff_ids.len()
        );
    }
    let mut layer_paths = Vec::new();
    let mut written = HashSet::new();
    for (layer, diff_id) in image.manifest.layers.iter().zip(diff_ids) {
        let path = format!("{}.tar", diff_id.hex());
        layer_paths.push(path.clone());
        if !written.insert(diff_id.clone()) {
            continue;
        }
        let compression = match Compression::of_media_type(&layer.media_type) {
            Some(c) => c,
            None => bail!(
                "layer {} has media type {} which is not a layer",
                layer.digest,
                layer.media_type
            ),
        };
        if compression == Compression::None {
            append_blob(&mut b, store, &layer.digest, &path)?;
            continue;
        }
        // docker-archive layers are uncompressed tars (what `docker save` and skopeo write):
        // decompress into a temp file first, since a tar entry needs its size up front.
        let tmp_dir = store.tmp_dir("docker-archive-")?;
        let tmp_path = tmp_dir.path().join("layer.tar");
        let tmp = File::create(&tmp_path).with_context(|| format!("creating {}", tmp_path.display()))?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, tmp));
        let blob = BufReader::with_capacity(256 * 1024, store.open_blob(&layer.digest)?);
        let mut r = decompress(Box::new(blob), sniff_kind_of(compression))?;
        io::copy(&mut r, &mut w).with_context(|| format!("decompressing layer {}", layer.digest))?;
        let (bw, got, size) = w.finish();
        bw.into_inner().map_err(|e| e.into_error())?;
        if &got != diff_id {
            bail!(
                "layer {} decompresses to {got}, but the image config says its diff_id is {diff_id}",
                layer.digest
            );
        }
        let mut h = file_header(size);
        let f = File::open(&tmp_path)?;
        b.append_data(&mut h, &path, BufReader::with_capacity(256 * 1024, f))
            .with_context(|| format!("writing layer {diff_id} into the archive"))?;
    }
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": repo_tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
        "Layers": layer_paths,
    }]);
    append_bytes(&mut b, "manifest.json", &serde_json::to_vec(&manifest)?)?;
    if let (Some(t), Some(top)) = (repo_tag, diff_ids.last()) {
        let (repo, tag) = t.rsplit_once(':').unwrap_or((t, "latest"));
        let repos = serde_json::json!({ repo: { tag: top.hex() } });
        append_bytes(&mut b, "repositories", &serde_json::to_vec(&repos)?)?;
    }
    b.into_inner()
        .context("finishing the archive")?
        .flush()
        .context("writing the archive")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Compression sniffing and decompression of input streams.

/// Compression formats recognised by their magic bytes: the layer module's (one sniffer).
pub(crate) use crate::layer::ArchiveCompression as Kind;
pub(crate) use crate::layer::sniff;

fn sniff_kind_of(c: Compression) -> Kind {
    match c {
        Compression::None => Kind::Plain,
        Compression::Gzip => Kind::Gzip,
        Compression::Zstd => Kind::Zstd,
    }
}

/// Peeks at the first bytes of a buffered reader to sniff its compression.
pub(crate) fn sniff_reader(r: &mut dyn BufRead) -> Result<Kind> {
    let head = r.fill_buf().context("reading the input")?;
    Ok(sniff(head))
}

/// Wraps `r` in a decoder for `kind`.
pub(crate) fn decompress<'a>(r: Box<dyn BufRead + Send + 'a>, kind: Kind) -> Result<Box<dyn Read + 'a>> {
    // Bounded against decompression bombs (see crate::layer::bomb).
    let (r, n) = crate::layer::bomb::counted(r);
    Ok(Box::new(crate::layer::bomb::bounded(decoder(Box::new(r), kind)?, n)))
}

fn decoder<'a>(r: Box<dyn BufRead + Send + 'a>, kind: Kind) -> Result<Box<dyn Read + 'a>> {
    Ok(match kind {
        Kind::Plain => Box::new(r),
        Kind::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Kind::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r).context("starting zstd decompression")?),
        Kind::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        Kind::Xz => bail!("xz-compressed input is only supported for files (use kiln import FILE)"),
    })
}

/// Opens a possibly compressed file as a decompressed stream (gzip, zstd, bzip2, xz).
pub(crate) fn open_decompressed(path: &Path) -> Result<Box<dyn Read + Send>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let kind = sniff_reader(&mut r)?;
    // Bounded against decompression bombs (see crate::layer::bomb).
    let (r, n) = crate::layer::bomb::counted(r);
    let d: Box<dyn Read + Send> = match kind {
        Kind::Plain => Box::new(r),
        Kind::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Kind::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r).context("starting zstd decompression")?),
        Kind::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        Kind::Xz => Box::new(XzReader::spawn(r)?),
    };
    Ok(Box::new(crate::layer::bomb::bounded(d, n)))
}

/// lzma-rs decompresses into a writer; run it on a thread behind a pipe to get a reader.
struct XzReader {
    pipe: io::PipeReader,
    thread: Option<std::thread::JoinHandle<std::result::Result<(), String>>>,
}

impl XzReader {
    fn spawn<R: BufRead + Send + 'static>(mut r: R) -> Result<XzReader> {
        let (pipe, mut w) = io::pipe().context("creating a pipe for xz decompression")?;
        let thread = std::thread::spawn(move || {
            lzma_rs::xz_decompress(&mut r, &mut w).map_err(|e| format!("xz decompression failed: {e:?}"))
        });
        Ok(XzReader {
            pipe,
            thread: Some(thread),
        })
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(t) = self.thread.take()
        {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Err(_) => return Err(io::Error::other("xz decompression thread panicked")),
            }
        }
        Ok(n)
    }
}

/// Copies exactly `size` bytes of a tar entry, failing on a truncated archive.
pub(crate) fn copy_entry(r: &mut dyn Read, w: &mut dyn Write, size: u64, what: &str) -> Result<()> {
    let n = io::copy(r, w).with_context(|| format!("reading {what}"))?;
    if n != size {
        bail!("the archive is truncated: {what} should have {size} bytes but only {n} are present");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
