//! `kiln fsck`: verify the store and, with `--repair`, remove what is broken or left over.
//!
//! Checks, in order: the layout files; every blob's content against its name (sha256); every
//! index.json entry (manifest or index present and decodable, config and layers present, as
//! many diff_ids as layers); every build cache entry (decodable, its layer blob present);
//! `layers/` (only directories named by a diff_id, each with a valid completion marker, see
//! [`super::layers`]; with `--full` each is also compared with its blob by the caller's
//! [`LayerCheck`]); `tmp/` and interrupted atomic writes
//! (partial data of processes that are gone).
//!
//! The store is *consistent* when there are no [`Severity::Error`] findings; left-over partial
//! data ([`Severity::Garbage`]) is harmless and reported so that `--repair` can reclaim it.

use super::Store;
use super::gc::{self, CONTEXT_STAT, Exclusive};
use crate::digest::{Digest, HashingReader};
use crate::fsutil::remove::remove_path;
use crate::image::{Descriptor, ImageConfig, Index, JsonKind, MAX_INDEX_DEPTH, Manifest, is_index, is_manifest};
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The store is inconsistent: an image or cache entry cannot be used as recorded.
    Error,
    /// Left-over data that nothing references (removed by `--repair`).
    Garbage,
}

#[derive(Clone, Debug)]
pub struct Problem {
    pub severity: Severity,
    pub what: String,
    /// Removed by `--repair`.
    pub repaired: bool,
}

/// Compares an unpacked layer directory (`layers/<diff_id>`) with its blob: the first
/// difference, or None when they are equal. Checking means unpacking the blob, which is the
/// layer module's job, one level above the store: the caller passes
/// the layer module's `verify::AgainstBlob`.
pub trait LayerCheck: Sync + std::fmt::Debug {
    fn check(&self, store: &Store, diff_id: &Digest, blob: &Descriptor) -> Result<Option<String>>;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct FsckOptions<'a> {
    pub repair: bool,
    /// Skip re-hashing blob contents (only check presence and references).
    pub quick: bool,
    /// `--full`: also compare every unpacked layer with its blob with this check; `repair`
    /// removes the ones that differ, so they are unpacked again from the blob when next needed.
    pub full: Option<&'a dyn LayerCheck>,
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub blobs: usize,
    pub blob_bytes: u64,
    pub images: usize,
    pub cache_entries: usize,
    pub layer_dirs: usize,
    /// tmp/ entries of running kiln processes (left alone).
    pub in_use: usize,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// No errors left (garbage does not count, nor what `--repair` fixed).
    pub fn is_consistent(&self) -> bool {
        !self
            .problems
            .iter()
            .any(|p| p.severity == Severity::Error && !p.repaired)
    }

    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error && !p.repaired)
            .count()
    }

    pub fn garbage(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Garbage && !p.repaired)
            .count()
    }

    fn error(&mut self, what: String) {
        self.problems.push(Problem {
            severity: Severity::Error,
            what,
            repaired: false,
        });
    }
}

fn blob_hexes(store: &Store, rep: &mut FsckReport) -> Result<Vec<(String, PathBuf)>> {
    let dir = store.root().join("blobs/sha256");
    let mut v = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ok_name = name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !ok_name || !is_file {
            rep.problems.push(Problem {
                severity: Severity::Garbage,
                what: format!("{} is not a blob (a stray entry in blobs/sha256)", e.path().display()),
                repaired: false,
            });
            continue;
        }
        v.push((name, e.path()));
    }
    v.sort();
    Ok(v)
}

fn hash_file(p: &Path) -> std::io::Result<(Digest, u64)> {
    let f = fs::File::open(p)?;
    let mut r = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, f));
    std::io::copy(&mut r, &mut std::io::sink())?;
    let (_, d, n) = r.finish();
    Ok((d, n))
}

/// Checks one index.json entry (recursing into indexes); returns problems.
fn check_ref(store: &Store, label: &str, d: &Descriptor, depth: usize, out: &mut Vec<String>) {
    // Depth-checked recursion: at most MAX_INDEX_DEPTH indexes above a manifest.
    if depth > MAX_INDEX_DEPTH {
        out.push(format!("{label}: {}", super::nesting_error(&d.digest)));
        return;
    }
    if !store.has_blob(&d.digest) {
        out.push(format!("{label}: manifest {} is missing", d.digest));
        return;
    }
    let bytes = match store.read_json_blob(&d.digest, JsonKind::Manifest) {
        Ok(b) => b,
        Err(e) => {
            out.push(format!("{label}: {e:#}"));
            return;
        }
    };
    if d.size != 0 && d.size != bytes.len() as u64 {
        out.push(format!(
            "{label}: manifest {} is {} bytes but index.json says {}",
            d.digest,
            bytes.len(),
            d.size
        ));
    }
    let v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            out.push(format!("{label}: manifest {} is not JSON: {e}", d.digest));
            return;
        }
    };
    let mt = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or(&d.media_type)
        .to_string();
    if is_index(&mt) || (!is_manifest(&mt) && v.get("manifests").is_some()) {
        let idx: Index = match serde_json::from_slice(&bytes) {
            Ok(i) => i,
            Err(e) => {
                out.push(format!("{label}: index {} is not a valid image index: {e}", d.digest));
                return;
            }
        };
        // Only the platforms that were fetched are present; at least one must be whole.
        let mut present = 0;
        for m in &idx.manifests {
            if store.has_blob(&m.digest) {
                present += 1;
                check_ref(store, label, m, depth + 1, out);
            }
        }
        if present == 0 && !idx.manifests.is_empty() {
            out.push(format!(
                "{label}: none of the manifests of index {} is in the store",
                d.digest
            ));
        }
        return;
    }
    let m: Manifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            out.push(format!("{label}: {} is not a valid image manifest: {e}", d.digest));
            return;
        }
    };
    let cfg = match store.read_json_blob(&m.config.digest, JsonKind::Config) {
        Ok(b) => match serde_json::from_slice::<ImageConfig>(&b) {
            Ok(c) => Some(c),
            Err(e) => {
                out.push(format!(
                    "{label}: config {} is not a valid image config: {e}",
                    m.config.digest
                ));
                None
            }
        },
        Err(e) => {
            out.push(format!("{label}: config: {e:#}"));
            None
        }
    };
    for l in &m.layers {
        let foreign =
            !l.urls.is_empty() && (l.media_type.contains("foreign") || l.media_type.contains("nondistributable"));
        if !foreign && !store.has_blob(&l.digest) {
            out.push(format!("{label}: layer {} is missing", l.digest));
        }
    }
    if let Some(c) = cfg
        && c.rootfs.diff_ids.len() != m.layers.len()
    {
        out.push(format!(
            "{label}: the manifest has {} layers but the config {} diff_ids",
            m.layers.len(),
            c.rootfs.diff_ids.len()
        ));
    }
}

/// The layer blob of each diff_id the index (host platform) and the build cache know.
fn layer_blobs(store: &Store) -> std::collections::HashMap<Digest, Descriptor> {
    let mut m = std::collections::HashMap::new();
    if let Ok(idx) = store.read_index() {
        for e in &idx.manifests {
            if let Ok(img) = store.load_descriptor(e) {
                for (l, d) in img.manifest.layers.iter().zip(&img.config.rootfs.diff_ids) {
                    if store.has_blob(&l.digest) {
                        m.entry(d.clone()).or_insert_with(|| l.clone());
                    }
                }
            }
        }
    }
    if let Ok(rd) = fs::read_dir(store.cache_dir()) {
        for e in rd.flatten() {
            let Ok(data) = fs::read(e.path()) else { continue };
            if let Ok(c) = serde_json::from_slice::<super::cache::Entry>(&data)
                && let Some((l, d)) = c.layer
                && store.has_blob(&l.digest)
            {
                m.entry(d).or_insert(l);
            }
        }
    }
    m
}

/// Verifies the store; see the module docs. With `repair`, removes partial data of processes
/// that are gone, broken cache entries, corrupt blobs and stray entries (never anything a
/// running kiln uses: see [`super::gc`]).
pub fn fsck(store: &Store, opts: &FsckOptions) -> Result<FsckReport> {
    let mut rep = FsckReport::default();
    let root = store.root();

    // Exclusive use makes every temp entry removable; without it, only dead processes' ones.
    let exclusive = if opts.repair {
        Exclusive::acquire(store, false).ok()
    } else {
        None
    };

    // Layout files.
    match fs::read(root.join("oci-layout")) {
        Ok(b) if serde_json::from_slice::<serde_json::Value>(&b).is_ok() => {}
        Ok(_) => rep.error(format!("{} is not JSON", root.join("oci-layout").display())),
        Err(e) => rep.error(format!("{}: {e}", root.join("oci-layout").display())),
    }
    let index = match store.read_index() {
        Ok(i) => Some(i),
        Err(e) => {
            rep.error(format!("{e:#}"));
            None
        }
    };

    // Blobs: every digest.
    let blobs = blob_hexes(store, &mut rep)?;
    rep.blobs = blobs.len();
    type Hashed = (String, PathBuf, std::io::Result<(Digest, u64)>);
    let results: Vec<Hashed> = if opts.quick {
        Vec::new()
    } else {
        blobs
            .par_iter()
            .map(|(hex, p)| (hex.clone(), p.clone(), hash_file(p)))
            .collect()
    };
    for (hex, p, r) in results {
        match r {
            Ok((d, n)) => {
                rep.blob_bytes += n;
                if d.hex() != hex {
                    let mut prob = Problem {
                        severity: Severity::Error,
                        what: format!("blob sha256:{hex} is corrupt: its content hashes to {d}"),
                        repaired: false,
                    };
                    if opts.repair && fs::remove_file(&p).is_ok() {
                        prob.what.push_str(" (removed; pull or build the image again)");
                        prob.repaired = true;
                    }
                    rep.problems.push(prob);
                }
            }
            Err(e) => rep.error(format!("reading blob sha256:{hex}: {e}")),
        }
    }

    // Refs.
    if let Some(idx) = &index {
        rep.images = idx.manifests.len();
        for e in idx.manifests.iter().filter(|e| !super::referrers::is_attachment(e)) {
            let label = e
                .annotations
                .get(crate::image::ANNOTATION_REF_NAME)
                .or_else(|| e.annotations.get(super::ANNOTATION_KILN_REF_NAME))
                .cloned()
                .unwrap_or_else(|| format!("<none>@{}", e.digest));
            let mut out = Vec::new();
            check_ref(store, &label, e, 0, &mut out);
            for o in out {
                rep.error(o);
            }
        }
    }

    // Build cache entries.
    let cache_dir = store.cache_dir();
    for e in fs::read_dir(&cache_dir)
        .with_context(|| format!("reading {}", cache_dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            continue; // temp files: below
        }
        if name == CONTEXT_STAT && e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue; // COPY's per-context file hashes (a cache of a cache: anything goes)
        }
        let p = e.path();
        if !name.ends_with(".json") {
            rep.problems.push(Problem {
                severity: Severity::Garbage,
                what: format!("{} is not a cache entry", p.display()),
                repaired: opts.repair && remove_path(&p).is_ok(),
            });
            continue;
        }
        rep.cache_entries += 1;
        let broken = match gc::read_cache_entry(&p) {
            Ok(Some((d, _))) if !store.has_blob(&d) => Some(format!("its layer blob {d} is missing")),
            Ok(_) => None,
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(why) = broken {
            let repaired = opts.repair && fs::remove_file(&p).is_ok();
            rep.problems.push(Problem {
                severity: Severity::Error,
                what: format!(
                    "build cache entry {} is broken: {why}{}",
                    p.display(),
                    if repaired { " (removed)" } else { "" }
                ),
                repaired,
            });
        }
    }

    // Unpacked layers: only directories named by a diff_id, each with a valid completion
    // marker (see super::layers); markers without their directory are stale.
    let layers = root.join("layers");
    let mut ready = Vec::new();
    for e in fs::read_dir(&layers)
        .with_context(|| format!("reading {}", layers.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            continue;
        }
        let p = e.path();
        if let Some(hex) = name.strip_suffix(super::layers::MARKER_SUFFIX)
            && Digest::parse(&format!("sha256:{hex}")).is_ok()
        {
            if layers.join(hex).is_dir() {
                continue; // checked with its directory
            }
            rep.problems.push(Problem {
                severity: Severity::Garbage,
                what: format!(
                    "{} is a stale completion marker (its layer directory is gone)",
                    p.display()
                ),
                repaired: opts.repair && super::layers::remove_marker(&p).is_ok(),
            });
            continue;
        }
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
            rep.layer_dirs += 1;
            match store.check_layer(&d) {
                Ok(()) => ready.push(d),
                Err(why) => {
                    let mut prob = Problem {
                        severity: Severity::Error,
                        what: format!(
                            "unpacked layer {} is not trusted: {why}; kiln will not use it",
                            p.display()
                        ),
                        repaired: false,
                    };
                    if opts.repair {
                        discard_for_repair(store, &d, &mut prob);
                    }
                    rep.problems.push(prob);
                }
            }
            continue;
        }
        let repaired = opts.repair && remove_path(&p).is_ok();
        rep.problems.push(Problem {
            severity: Severity::Garbage,
            what: format!("{} is not an unpacked layer (stray entry in layers/)", p.display()),
            repaired,
        });
    }
    if let Some(check) = opts.full {
        let blobs = layer_blobs(store);
        ready.sort();
        for d in ready {
            let p = store.layer_dir(&d);
            let Some(desc) = blobs.get(&d) else {
                rep.problems.push(Problem {
                    severity: Severity::Garbage,
                    what: format!(
                        "unpacked layer {} cannot be verified: no image or build cache entry has a blob with diff_id {d}",
                        p.display()
                    ),
                    repaired: opts.repair && exclusive.is_some() && store.discard_layer(&d).is_ok(),
                });
                continue;
            };
            let diff = match check.check(store, &d, desc) {
                Ok(None) => continue,
                Ok(Some(diff)) => diff,
                Err(e) => format!("cannot compare it with its blob {}: {e:#}", desc.digest),
            };
            let mut prob = Problem {
                severity: Severity::Error,
                what: format!(
                    "unpacked layer {d} ({}) differs from its blob {}: {diff}",
                    p.display(),
                    desc.digest
                ),
                repaired: false,
            };
            if opts.repair {
                if exclusive.is_none() {
                    prob.what.push_str(" (not removed: other kiln processes use the store)");
                } else {
                    discard_for_repair(store, &d, &mut prob);
                }
            }
            rep.problems.push(prob);
        }
    }

    // Partial data.
    for t in gc::temp_entries(store, exclusive.is_some())? {
        if !t.stale {
            rep.in_use += 1;
            continue;
        }
        let owner = match t.owner {
            Some(pid) => format!("left by kiln process {pid}, which is gone"),
            None => "left by an interrupted write".to_string(),
        };
        let mut prob = Problem {
            severity: Severity::Garbage,
            what: format!("partial data {} ({owner})", t.path.display()),
            repaired: false,
        };
        if opts.repair {
            match remove_path(&t.path) {
                Ok(()) => prob.repaired = true,
                Err(e) => prob.what.push_str(&format!(": cannot remove: {e:#}")),
            }
        }
        rep.problems.push(prob);
    }
    drop(exclusive);
    Ok(rep)
}

/// `--repair` of a layer directory that is not what its blob says: removed, so it is unpacked
/// again from the blob when needed; the problem says which happened.
fn discard_for_repair(store: &Store, d: &Digest, prob: &mut Problem) {
    match store.discard_layer(d) {
        Ok(()) => {
            prob.what
                .push_str(" (removed; it is unpacked again from its blob when needed)");
            prob.repaired = true;
        }
        Err(e) => prob.what.push_str(&format!(": cannot remove it: {e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{MT_OCI_LAYER, MT_OCI_MANIFEST};
    use crate::store::ManifestFormat;

    fn setup() -> (tempfile::TempDir, Store, Descriptor, Digest) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let layer = s.put_bytes(b"layer bytes").unwrap();
        let mut cfg = ImageConfig::empty();
        cfg.rootfs.diff_ids.push(Digest::of(b"diff"));
        let img = s
            .write_image(
                &cfg,
                vec![Descriptor::new(MT_OCI_LAYER, layer.clone(), 11)],
                ManifestFormat::Oci,
            )
            .unwrap();
        let bytes = serde_json::to_vec(&img.manifest).unwrap();
        let d = Descriptor::new(MT_OCI_MANIFEST, img.manifest_digest.clone(), bytes.len() as u64);
        s.tag("app:1", &d).unwrap();
        (t, s, d, layer)
    }

    #[test]
    fn clean_store_is_consistent() {
        let (_t, s, _, _) = setup();
        let r = fsck(&s, &FsckOptions::default()).unwrap();
        assert!(r.is_consistent(), "{:?}", r.problems);
        assert_eq!(r.problems.len(), 0, "{:?}", r.problems);
        assert_eq!((r.blobs, r.images), (3, 1));
    }

    #[test]
    fn finds_corruption_missing_blobs_and_broken_cache() {
        let (t, s, _d, layer) = setup();
        fs::write(s.blob_path(&layer), b"tampered").unwrap();
        fs::write(
            s.cache_dir().join(format!("{}.json", "c".repeat(64))),
            br#"{"layer":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"sha256:0000000000000000000000000000000000000000000000000000000000000000"]}"#,
        )
        .unwrap();
        fs::write(s.cache_dir().join(format!("{}.json", "d".repeat(64))), b"{not json").unwrap();
        fs::write(t.path().join("blobs/sha256/junk"), b"").unwrap();
        let r = fsck(&s, &FsckOptions::default()).unwrap();
        assert!(!r.is_consistent());
        let all = format!("{:#?}", r.problems);
        assert!(all.contains("is corrupt"), "{all}");
        assert!(all.contains("its layer blob sha256:0000"), "{all}");
        assert!(all.contains("is not a build cache entry"), "{all}");
        assert!(all.contains("not a blob"), "{all}");
        assert_eq!(r.errors(), 3, "{all}");

        // Repair: the corrupt blob and broken entries go; the image now misses its layer.
        let r = fsck(
            &s,
            &FsckOptions {
                repair: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            r.problems.iter().filter(|p| p.repaired).count() >= 3,
            "{:#?}",
            r.problems
        );
        let r = fsck(&s, &FsckOptions::default()).unwrap();
        let all = format!("{:#?}", r.problems);
        assert!(
            all.contains("docker.io/library/app:1: layer sha256:") && all.contains("is missing"),
            "{all}"
        );
        assert_eq!(r.errors(), 1, "{all}");
    }

    #[test]
    fn partial_data_of_dead_processes_is_garbage() {
        let (t, s, _, _) = setup();
        fs::create_dir_all(t.path().join("tmp/step-999999998.abc/upper/x")).unwrap();
        fs::write(t.path().join("tmp/blob-999999998.q1"), b"half").unwrap();
        fs::create_dir(t.path().join("layers/notadigest")).unwrap();
        let mine = s.tmp_dir("unpack-").unwrap();
        let r = fsck(&s, &FsckOptions::default()).unwrap();
        assert!(r.is_consistent(), "{:?}", r.problems);
        assert_eq!(r.garbage(), 3, "{:#?}", r.problems);
        assert_eq!(r.in_use, 1);
        let r = fsck(
            &s,
            &FsckOptions {
                repair: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.garbage(), 0, "{:#?}", r.problems);
        let left: Vec<_> = fs::read_dir(t.path().join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(left, vec![mine.path().to_path_buf()], "only the live entry stays");
        assert!(!t.path().join("layers/notadigest").exists());
    }

    fn repair() -> FsckOptions<'static> {
        FsckOptions {
            repair: true,
            ..Default::default()
        }
    }

    #[test]
    fn unmarked_layer_dirs_and_stale_markers_are_reported_and_repaired() {
        let (_t, s, _, _) = setup();
        let planted = Digest::of(b"planted");
        fs::create_dir_all(s.layer_dir(&planted)).unwrap();
        fs::write(s.layer_dir(&planted).join("pwned"), b"").unwrap();
        let stale = s.layer_marker(&Digest::of(b"gone"));
        fs::write(&stale, b"{}").unwrap();
        let r = fsck(&s, &FsckOptions::default()).unwrap();
        let all = format!("{:#?}", r.problems);
        assert!(!r.is_consistent(), "{all}");
        assert!(
            all.contains(&planted.hex().to_string()) && all.contains("no completion marker"),
            "{all}"
        );
        assert!(all.contains("stale completion marker"), "{all}");
        let r = fsck(&s, &repair()).unwrap();
        assert!(r.problems.iter().all(|p| p.repaired), "{:#?}", r.problems);
        assert!(!s.layer_dir(&planted).exists() && !stale.exists());
        let r = fsck(&s, &FsckOptions::default()).unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
    }

    #[test]
    fn missing_manifest_is_an_error() {
        let (_t, s, d, _) = setup();
        fs::remove_file(s.blob_path(&d.digest)).unwrap();
        let r = fsck(&s, &FsckOptions::default()).unwrap();
        assert_eq!(r.errors(), 1, "{:#?}", r.problems);
        assert!(r.problems[0].what.contains("manifest") && r.problems[0].what.contains("is missing"));
    }
}
