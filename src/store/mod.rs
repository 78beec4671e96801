//! The local content store.
//!
//! The store root is a valid OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), so
//! `skopeo inspect oci:$ROOT:docker.io/library/debian:latest` and other OCI tools read it
//! directly. Names are `index.json` entries annotated `org.opencontainers.image.ref.name` with the
//! full normalised reference (for Docker v2s2 manifests, see [`Store::tag`] for the OCI view
//! that carries it); entries without a name are unnamed ("dangling") images,
//! e.g. an archive loaded without a name. kiln's own directories sit next to the layout:
//! `tmp/` (blobs being written, scratch dirs), `layers/<diff_id hex>/` (unpacked layers used as
//! overlay lowers, each trusted only with its completion marker `layers/<diff_id hex>.complete`,
//! see [`layers`]), `cache/` (build cache) and `locks/`.
//!
//! Crash safety: a blob is written to a temp file under `tmp/` while it is hashed, verified
//! against the expected digest, fsynced and renamed into `blobs/sha256/`, so a blob at its final
//! path is always complete and correct; stale temp files are harmless. `index.json` is rewritten
//! atomically (temp file, fsync, rename) while holding an exclusive `flock` on
//! `locks/index`, so concurrent kiln processes never lose each other's updates.
//! [`Store::lock`] is a separate, coarse lock (`locks/store`) for whole-store operations such as
//! garbage collection; index updates do not take it, so holding it while tagging cannot deadlock.

use crate::digest::{Digest, HashingWriter};
use crate::image::{
    ANNOTATION_REF_NAME, Compression, Descriptor, Image, ImageConfig, Index, JsonKind, MAX_INDEX_DEPTH,
    MT_DOCKER_CONFIG, MT_DOCKER_LAYER, MT_DOCKER_LAYER_GZIP, MT_DOCKER_MANIFEST, MT_OCI_CONFIG, MT_OCI_INDEX,
    MT_OCI_LAYER, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_ZSTD, MT_OCI_MANIFEST, Manifest, host_arch, is_index, is_manifest,
    read_at_most,
};
use crate::reference::Reference;
use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub mod activity;
pub mod cache;
pub mod fsck;
pub mod gc;
pub mod layers;
pub mod referrers;

/// The content of the `oci-layout` file.
pub const OCI_LAYOUT_JSON: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// Which media types a written manifest uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ManifestFormat {
    /// OCI image manifest and config media types.
    #[default]
    Oci,
    /// Docker image manifest v2 schema 2 media types.
    Docker,
}

impl ManifestFormat {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => MT_OCI_MANIFEST,
            ManifestFormat::Docker => MT_DOCKER_MANIFEST,
        }
    }

    pub fn config_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => MT_OCI_CONFIG,
            ManifestFormat::Docker => MT_DOCKER_CONFIG,
        }
    }

    /// The layer media type for a compression. Docker has no zstd layer type; the OCI one is
    /// used in Docker manifests too, as BuildKit does.
    pub fn layer_media_type(self, c: Compression) -> &'static str {
        match (self, c) {
            (ManifestFormat::Oci, Compression::None) => MT_OCI_LAYER,
            (ManifestFormat::Oci, Compression::Gzip) => MT_OCI_LAYER_GZIP,
            (ManifestFormat::Docker, Compression::None) => MT_DOCKER_LAYER,
            (ManifestFormat::Docker, Compression::Gzip) => MT_DOCKER_LAYER_GZIP,
            (_, Compression::Zstd) => MT_OCI_LAYER_ZSTD,
        }
    }

    /// The format a manifest media type belongs to.
    pub fn of_manifest_media_type(mt: &str) -> ManifestFormat {
        if mt == MT_DOCKER_MANIFEST {
            ManifestFormat::Docker
        } else {
            ManifestFormat::Oci
        }
    }
}

/// Marks an index.json entry that is an OCI-typed copy of a Docker manifest (value: the
/// Docker manifest's digest); see [`Store::tag`].
pub const ANNOTATION_OCI_VIEW_OF: &str = "io.kiln.oci-view-of";
/// The name of a Docker-manifest entry whose OCI view carries the standard ref name.
pub const ANNOTATION_KILN_REF_NAME: &str = "io.kiln.ref.name";

/// A Docker v2s2 manifest rewritten with OCI media types (config and layers unchanged, so the
/// image id and diff_ids stay the same). OCI manifests are returned unchanged.
pub fn oci_view_of_manifest(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut m: Manifest = serde_json::from_slice(bytes).context("parsing a manifest")?;
    if m.media_type.as_deref() != Some(MT_DOCKER_MANIFEST) {
        return Ok(bytes.to_vec());
    }
    m.media_type = Some(MT_OCI_MANIFEST.to_string());
    m.config.media_type = MT_OCI_CONFIG.to_string();
    for l in &mut m.layers {
        if let Some(c) = Compression::of_media_type(&l.media_type) {
            l.media_type = ManifestFormat::Oci.layer_media_type(c).to_string();
        }
    }
    serde_json::to_vec(&m).context("serialising a manifest")
}

/// Opens `path` for reading the way kiln opens every blob, whether of its own store or of a
/// layout or archive given to it: a symlink is refused, not followed (`O_NOFOLLOW`); a FIFO
/// cannot hang the open (`O_NONBLOCK`); devices are never opened (`lstat` first); and `fstat`
/// on the open descriptor must show a regular file. Returns the file and its size. The error
/// says what the path is instead ("it is a symlink to /etc/passwd, not a regular file"); a
/// missing file is an [`io::ErrorKind::NotFound`] error.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = |ft: fs::FileType| -> io::Error {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_symlink() {
            let target = fs::read_link(path)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default();
            format!("a symlink{target}")
        } else if ft.is_fifo() {
            "a FIFO".to_string()
        } else if ft.is_char_device() {
            "a character device".to_string()
        } else if ft.is_block_device() {
            "a block device".to_string()
        } else if ft.is_dir() {
            "a directory".to_string()
        } else if ft.is_socket() {
            "a socket".to_string()
        } else {
            "a special file".to_string()
        };
        io::Error::new(io::ErrorKind::InvalidData, format!("it is {what}, not a regular file"))
    };
    let md = fs::symlink_metadata(path)?;
    if !md.file_type().is_file() {
        return Err(not_regular(md.file_type()));
    }
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        // Replaced by a symlink since the lstat.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(match fs::symlink_metadata(path) {
                Ok(md) => not_regular(md.file_type()),
                Err(_) => e,
            });
        }
        Err(e) => return Err(e),
    };
    let md = f.metadata()?;
    if !md.file_type().is_file() {
        return Err(not_regular(md.file_type()));
    }
    Ok((f, md.len()))
}

/// An open store (cheap to clone; all state is on disk).
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Where the store's notices and warnings go (waiting for a collector, a layer dir that
    /// cannot be removed, what `--keep-storage` could not free). Silent by default.
    reporter: crate::events::Reporter,
}

/// An exclusive lock on the whole store; released when dropped.
pub struct StoreLock {
    _lock: Flock<File>,
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}

fn flock(path: &Path) -> Result<StoreLock> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(StoreLock { _lock: lock })
}

impl Store {
    /// Opens the store at `root`, creating the layout and kiln's directories if missing.
    /// Says nothing; see [`Store::open_reporting`].
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_reporting(root, crate::events::Reporter::silent())
    }

    /// Like [`Store::open`], with the notices and warnings of the store's operations (and of
    /// the open itself: waiting for a garbage collection) sent to `reporter`.
    pub fn open_reporting(root: &Path, reporter: crate::events::Reporter) -> Result<Store> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .context("finding the current directory")?
                .join(root)
        };
        let store = Store { root, reporter };
        for d in ["blobs/sha256", "tmp", "layers", "cache", "locks"] {
            let p = store.root.join(d);
            fs::create_dir_all(&p).with_context(|| format!("creating the store directory {}", p.display()))?;
        }
        // Registered as a user of the store before anything is written (see gc).
        gc::register(&store.root, &store.reporter)?;
        store.clean_stale_tmp();
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            crate::fsutil::write_atomic(&layout, OCI_LAYOUT_JSON.as_bytes())?;
        }
        if !store.index_path().exists() {
            let _g = store.index_lock()?;
            if !store.index_path().exists() {
                store.write_index(&empty_index())?;
            }
        }
        Ok(store)
    }

    /// Removes the temp entries of kiln processes that are gone (see [`gc::sweep_dead_tmp`])
    /// and blob temp files without an owner untouched for a day (a live writer keeps its
    /// file's mtime fresh). Best effort.
    fn clean_stale_tmp(&self) {
        gc::sweep_dead_tmp(&self.root);
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        let day = std::time::Duration::from_secs(24 * 3600);
        for e in rd.flatten() {
            let stale = e.file_name().to_string_lossy().starts_with("blob-")
                && e.metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|a| a > day);
            if stale {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where this store's notices and warnings go.
    pub fn reporter(&self) -> &crate::events::Reporter {
        &self.reporter
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Is the blob present (as a regular file: a symlink in `blobs/sha256` does not count)?
    pub fn has_blob(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(d)).is_ok_and(|m| m.file_type().is_file())
    }

    /// A writer for a new blob: a temp file under `tmp/`, hashed while written. Call
    /// [`BlobWriter::commit`] to verify and publish it; dropping it discards the data.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let tmp = self.root.join("tmp");
        let file = tempfile::Builder::new()
            .prefix(&format!("blob-{}.", std::process::id()))
            .tempfile_in(&tmp)
            .with_context(|| format!("creating a temporary blob file in {}", tmp.display()))?;
        Ok(BlobWriter {
            inner: HashingWriter::new(BufWriter::with_capacity(256 * 1024, file)),
            store: self.clone(),
        })
    }

    /// Stores `data` as a blob and returns its digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.blob_writer()?;
        w.write_all(data).context("writing a blob")?;
        Ok(w.commit(Some(&d))?.0)
    }

    /// Opens a blob for streaming reads (a regular file only, see [`open_regular`]).
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        Ok(self.open_blob_sized(d)?.0)
    }

    /// Opens a blob; returns the file and its size.
    fn open_blob_sized(&self, d: &Digest) -> Result<(File, u64)> {
        let p = self.blob_path(d);
        match open_regular(&p) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("blob {d} is missing from the store at {}", self.root.display()))
            }
            Err(e) => Err(e).with_context(|| {
                format!(
                    "refusing blob {d} of the store at {} (`kiln fsck --repair` removes it)",
                    self.root.display()
                )
            }),
        }
    }

    /// Reads a small (JSON) blob whole, verifying its digest. At most [`JsonKind::Config`]'s
    /// cap (the larger one) is read; [`Store::read_json_blob`] applies a specific one.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        self.read_json_blob(d, JsonKind::Config)
    }

    /// Reads a manifest, index or config blob whole (at most `kind`'s size cap, so memory stays
    /// bounded), verifying its digest.
    pub fn read_json_blob(&self, d: &Digest, kind: JsonKind) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let (f, size) = self.open_blob_sized(d)?;
        let what = || format!("blob {d} in the store");
        kind.check(&what(), size)?;
        let data = read_at_most(f, kind.cap())
            .with_context(|| format!("reading {}", p.display()))?
            .ok_or_else(|| kind.over_cap(&what()))?;
        let got = Digest::of(&data);
        if &got != d {
            bail!(
                "blob {} in the store is corrupt: its content hashes to {got}",
                p.display()
            );
        }
        Ok(data)
    }

    /// Serialises `config` into a config blob and a manifest (media types per `format`, layer
    /// media types converted accordingly) into a manifest blob. Does not name the image.
    pub fn write_image(&self, config: &ImageConfig, layers: Vec<Descriptor>, format: ManifestFormat) -> Result<Image> {
        let config_bytes = serde_json::to_vec(config).context("serialising the image config")?;
        let config_digest = self.put_bytes(&config_bytes)?;
        let config_desc = Descriptor::new(format.config_media_type(), config_digest, config_bytes.len() as u64);
        let (digest, manifest, _) = self.write_manifest(config_desc, layers, format)?;
        Ok(Image {
            manifest_digest: digest,
            manifest,
            config: config.clone(),
        })
    }

    /// Writes a manifest for an existing config blob. Layer media types are converted to
    /// `format`. Returns the manifest digest, the manifest and its descriptor.
    pub fn write_manifest(
        &self,
        config: Descriptor,
        layers: Vec<Descriptor>,
        format: ManifestFormat,
    ) -> Result<(Digest, Manifest, Descriptor)> {
        let mut config = config;
        config.media_type = format.config_media_type().to_string();
        let layers = layers
            .into_iter()
            .map(|mut l| {
                if let Some(c) = Compression::of_media_type(&l.media_type) {
                    // Foreign/non-distributable layers keep their type.
                    if !l.media_type.contains("foreign") && !l.media_type.contains("nondistributable") {
                        l.media_type = format.layer_media_type(c).to_string();
                    }
                }
                l
            })
            .collect();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(format.manifest_media_type().to_string()),
            config,
            layers,
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).context("serialising the manifest")?;
        let digest = self.put_bytes(&bytes)?;
        let desc = Descriptor::new(format.manifest_media_type(), digest.clone(), bytes.len() as u64);
        Ok((digest, manifest, desc))
    }

    /// Loads an image by reference (any form, normalised), full digest (of the manifest or of
    /// the config, i.e. the image id) or image id prefix (at least 4 hex digits). When the
    /// name points at an index, the linux/<host arch> manifest is chosen.
    pub fn load_image(&self, name_or_id: &str) -> Result<Image> {
        let desc = self.resolve(name_or_id)?.ok_or_else(|| self.not_found(name_or_id))?;
        self.load_descriptor(&desc)
            .with_context(|| format!("loading image {name_or_id}"))
    }

    /// The error for an image that is not in the store.
    pub fn not_found(&self, name_or_id: &str) -> anyhow::Error {
        match Reference::parse(name_or_id) {
            Ok(r) if r.to_string() != name_or_id => anyhow::anyhow!(
                "image {name_or_id} ({r}) not found in the store at {}",
                self.root.display()
            ),
            _ => anyhow::anyhow!("image {name_or_id} not found in the store at {}", self.root.display()),
        }
    }

    /// Loads the image a manifest (or index) descriptor points at. Indexes are followed (the
    /// linux/<host arch> entry) at most [`MAX_INDEX_DEPTH`] levels deep, in a loop; the config
    /// must list as many diff_ids as the manifest has layers.
    pub fn load_descriptor(&self, desc: &Descriptor) -> Result<Image> {
        let mut desc = desc.clone();
        let mut depth = 0;
        let manifest = loop {
            let bytes = self.read_json_blob(&desc.digest, JsonKind::Manifest)?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("manifest {} in the store is not JSON", desc.digest))?;
            let mt = v
                .get("mediaType")
                .and_then(|m| m.as_str())
                .unwrap_or(&desc.media_type)
                .to_string();
            if !(is_index(&mt) || (!is_manifest(&mt) && v.get("manifests").is_some())) {
                let manifest: Manifest = serde_json::from_value(v)
                    .with_context(|| format!("manifest {} in the store is not a valid image manifest", desc.digest))?;
                break manifest;
            }
            if depth >= MAX_INDEX_DEPTH {
                bail!("{}", nesting_error(&desc.digest));
            }
            depth += 1;
            let index: Index = serde_json::from_value(v)
                .with_context(|| format!("index {} in the store is not a valid image index", desc.digest))?;
            let child = pick_platform(&index.manifests).with_context(|| {
                format!(
                    "index {} has no manifest for linux/{} among its platforms",
                    desc.digest,
                    host_arch()
                )
            })?;
            desc = child.clone();
        };
        let config_bytes = self.read_json_blob(&manifest.config.digest, JsonKind::Config)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes).with_context(|| {
            format!(
                "config {} in the store is not a valid image config",
                manifest.config.digest
            )
        })?;
        check_diff_ids(&manifest, &config, &desc.digest)?;
        Ok(Image {
            manifest_digest: desc.digest.clone(),
            manifest,
            config,
        })
    }

    /// Finds the index.json descriptor for a name or id (see [`Store::load_image`]). The
    /// descriptor may point at an index (multi-platform image) when one was stored.
    pub fn resolve(&self, name_or_id: &str) -> Result<Option<Descriptor>> {
        let entries = self.entries()?;
        if name_or_id.starts_with("sha256:") {
            let d = Digest::parse(name_or_id)?;
            if let Some(e) = entries.iter().find(|e| e.digest == d) {
                return Ok(Some(strip_name(e)));
            }
            if let Some(e) = self.find_by_id(&entries, |id| id == &d)? {
                return Ok(Some(e));
            }
            // An unnamed manifest blob (e.g. a build without -t).
            if self.has_blob(&d)
                && let Ok(bytes) = self.read_blob(&d)
                && let Ok(m) = serde_json::from_slice::<Manifest>(&bytes)
            {
                let mt = m.media_type.clone().unwrap_or_else(|| MT_OCI_MANIFEST.to_string());
                return Ok(Some(Descriptor::new(&mt, d, bytes.len() as u64)));
            }
            return Ok(None);
        }
        if let Ok(r) = Reference::parse(name_or_id) {
            let name = r.to_string();
            if let Some(e) = entries.iter().find(|e| name_of(e) == Some(&name)) {
                return Ok(Some(strip_name(e)));
            }
        }
        let is_hex = name_or_id.len() >= 4
            && name_or_id.len() <= 64
            && name_or_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if is_hex {
            return self.find_by_id(&entries, |id| id.hex().starts_with(name_or_id));
        }
        Ok(None)
    }

    /// The entry whose image id (config digest) satisfies `pred`; an error when several
    /// different images match (an ambiguous prefix).
    fn find_by_id(&self, entries: &[Descriptor], pred: impl Fn(&Digest) -> bool) -> Result<Option<Descriptor>> {
        let mut found: Option<(Digest, Descriptor)> = None;
        for e in entries {
            let Ok(img) = self.load_descriptor(e) else { continue };
            if pred(img.id()) {
                match &found {
                    Some((id, _)) if id != img.id() => {
                        bail!(
                            "image id prefix is ambiguous: it matches {} and {}",
                            id.short(),
                            img.id().short()
                        )
                    }
                    Some(_) => {}
                    None => found = Some((img.id().clone(), strip_name(e))),
                }
            }
        }
        Ok(found.map(|(_, d)| d))
    }

    /// Names `manifest` with `reference` (normalised). An unnamed entry for the same manifest
    /// is replaced.
    ///
    /// A Docker v2s2 manifest also gets an *OCI view*: a second index.json entry pointing at
    /// an OCI-typed copy of the manifest (same config and layer blobs, annotated
    /// `io.kiln.oci-view-of`). The view carries `org.opencontainers.image.ref.name`; the
    /// original entry carries the name as `io.kiln.ref.name`. skopeo and umoci only accept
    /// OCI-typed entries of an OCI layout, so `skopeo inspect oci:$ROOT:NAME` and `umoci unpack
    /// --image $ROOT:NAME` keep working for pulled Docker images, while kiln itself keeps using
    /// the original manifest (and its digest).
    pub fn tag(&self, reference: &str, manifest: &Descriptor) -> Result<()> {
        let name = Reference::parse(reference)?.to_string();
        let raw = self
            .read_blob(&manifest.digest)
            .with_context(|| format!("cannot name {name}: its manifest is not in the store"))?;
        let is_docker = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(|m| m == MT_DOCKER_MANIFEST)
            })
            .unwrap_or(manifest.media_type == MT_DOCKER_MANIFEST);
        let view = if is_docker {
            let bytes = oci_view_of_manifest(&raw)?;
            let mut d = Descriptor::new(MT_OCI_MANIFEST, self.put_bytes(&bytes)?, bytes.len() as u64);
            d.platform = manifest.platform.clone();
            d.annotations.insert(ANNOTATION_REF_NAME.to_string(), name.clone());
            d.annotations
                .insert(ANNOTATION_OCI_VIEW_OF.to_string(), manifest.digest.to_string());
            Some(d)
        } else {
            None
        };
        self.update_index(|idx| {
            idx.manifests.retain(|e| {
                let n = name_of(e);
                n != Some(&name) && !(n.is_none() && e.digest == manifest.digest)
            });
            let mut d = strip_name(manifest);
            // With an OCI view, the view carries the standard name annotation (one entry per
            // name for other tools) and the original keeps the name in kiln's own annotation.
            let key = if view.is_some() {
                ANNOTATION_KILN_REF_NAME
            } else {
                ANNOTATION_REF_NAME
            };
            d.annotations.insert(key.to_string(), name.clone());
            idx.manifests.push(d);
            idx.manifests.extend(view);
            Ok(())
        })
    }

    /// Records `manifest` as an unnamed image (shown as `<none>` by `kiln images`), unless it
    /// already has an entry.
    pub fn add_unnamed(&self, manifest: &Descriptor) -> Result<()> {
        self.update_index(|idx| {
            if !idx.manifests.iter().any(|e| e.digest == manifest.digest) {
                idx.manifests.push(strip_name(manifest));
            }
            Ok(())
        })
    }

    /// Removes the name `reference`; returns whether it existed.
    pub fn untag(&self, reference: &str) -> Result<bool> {
        let name = Reference::parse(reference)?.to_string();
        let mut removed = false;
        self.update_index(|idx| {
            idx.manifests.retain(|e| {
                let hit = name_of(e) == Some(&name);
                removed |= hit && !e.annotations.contains_key(ANNOTATION_OCI_VIEW_OF);
                !hit
            });
            Ok(())
        })?;
        Ok(removed)
    }

    /// Removes every index entry (named or not) for the manifest `digest`; returns the
    /// names removed.
    pub fn remove_manifest(&self, digest: &Digest) -> Result<Vec<String>> {
        let mut names = Vec::new();
        self.update_index(|idx| {
            idx.manifests.retain(|e| {
                if e.annotations.get(ANNOTATION_OCI_VIEW_OF) == Some(&digest.to_string()) {
                    return false;
                }
                if &e.digest == digest {
                    names.extend(name_of(e).cloned());
                    false
                } else {
                    true
                }
            });
            Ok(())
        })?;
        Ok(names)
    }

    /// Named images: (normalised reference, manifest descriptor without the name annotation).
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>> {
        Ok(self
            .list_all()?
            .into_iter()
            .filter_map(|(n, d)| n.map(|n| (n, d)))
            .collect())
    }

    /// Every index entry, named or not, in index order.
    pub fn list_all(&self) -> Result<Vec<(Option<String>, Descriptor)>> {
        Ok(self
            .entries()?
            .iter()
            .map(|e| (name_of(e).cloned(), strip_name(e)))
            .collect())
    }

    /// index.json entries without the OCI views of Docker manifests (see [`Store::tag`]).
    fn entries(&self) -> Result<Vec<Descriptor>> {
        let mut m = self.read_index()?.manifests;
        m.retain(|e| !e.annotations.contains_key(ANNOTATION_OCI_VIEW_OF) && !referrers::is_attachment(e));
        Ok(m)
    }

    /// A fresh temporary directory under `root/tmp` (removed when dropped), named
    /// `<prefix><pid>.<random>` so that `kiln fsck`/`prune` can tell whether its owner still runs.
    pub fn tmp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("{prefix}{}.", std::process::id()))
            .tempdir_in(&tmp)
            .with_context(|| format!("creating a temporary directory in {}", tmp.display()))
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// An exclusive lock on the whole store (for garbage collection and similar).
    pub fn lock(&self) -> Result<StoreLock> {
        flock(&self.root.join("locks/store"))
    }

    fn index_lock(&self) -> Result<StoreLock> {
        flock(&self.root.join("locks/index"))
    }

    /// Reads index.json (readers need no lock: it is only ever replaced by rename).
    pub fn read_index(&self) -> Result<Index> {
        let p = self.index_path();
        let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&data).with_context(|| format!("{} is not a valid OCI image index", p.display()))
    }

    fn write_index(&self, idx: &Index) -> Result<()> {
        let data = serde_json::to_vec(idx).context("serialising index.json")?;
        crate::fsutil::write_atomic(&self.index_path(), &data)
    }

    /// Read-modify-write of index.json under the index lock.
    fn update_index(&self, f: impl FnOnce(&mut Index) -> Result<()>) -> Result<()> {
        let _g = self.index_lock()?;
        let mut idx = self.read_index()?;
        f(&mut idx)?;
        self.write_index(&idx)
    }
}

fn empty_index() -> Index {
    Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.to_string()),
        manifests: Vec::new(),
        annotations: Default::default(),
    }
}

/// The name of an index entry (standard annotation, or kiln's for Docker manifests that have
/// an OCI view).
fn name_of(e: &Descriptor) -> Option<&String> {
    e.annotations
        .get(ANNOTATION_REF_NAME)
        .or_else(|| e.annotations.get(ANNOTATION_KILN_REF_NAME))
}

/// A copy of an index entry without its ref-name annotation.
fn strip_name(d: &Descriptor) -> Descriptor {
    let mut d = d.clone();
    d.annotations.remove(ANNOTATION_REF_NAME);
    d.annotations.remove(ANNOTATION_KILN_REF_NAME);
    d
}

/// The error for a blob below more than [`MAX_INDEX_DEPTH`] nested indexes.
pub fn nesting_error(index: &Digest) -> String {
    format!(
        "indexes are nested more than {MAX_INDEX_DEPTH} deep at {index} (indexes inside indexes); kiln refuses deeper nesting"
    )
}

/// The config must list one diff_id per manifest layer (each is checked against its layer's
/// content when the layer is unpacked).
pub fn check_diff_ids(manifest: &Manifest, config: &ImageConfig, manifest_digest: &Digest) -> Result<()> {
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        bail!(
            "image config {} lists {} diff_ids but manifest {manifest_digest} has {} layers; they must match one for one",
            manifest.config.digest,
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        );
    }
    Ok(())
}

/// Picks linux/<host arch> from an index's manifests (an entry without a platform is taken
/// when it is the only one).
pub fn pick_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = host_arch();
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| {
            if manifests.len() == 1 && manifests[0].platform.is_none() {
                manifests.first()
            } else {
                None
            }
        })
}

/// A blob being written; see [`Store::blob_writer`].
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    store: Store,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Verifies the content against `expected` (if given), fsyncs it and renames it into
    /// `blobs/sha256/`. On a mismatch nothing is stored and the error names both digests.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let (buf, digest, size) = self.inner.finish();
        let tmp = buf.into_inner().map_err(|e| e.into_error()).context("writing a blob")?;
        if let Some(exp) = expected
            && exp != &digest
        {
            bail!("digest mismatch: expected {exp}, got {digest} ({size} bytes); nothing was stored");
        }
        let dest = self.store.blob_path(&digest);
        if self.store.has_blob(&digest) {
            return Ok((digest, size));
        }
        tmp.as_file().sync_all().context("syncing a blob")?;
        tmp.persist(&dest)
            .map_err(|e| e.error)
            .with_context(|| format!("storing blob {}", dest.display()))?;
        crate::fsutil::sync_dir(dest.parent().unwrap_or(self.store.root()))?;
        Ok((digest, size))
    }
}

#[cfg(test)]
mod tests;
