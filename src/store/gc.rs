//! Garbage collection (`kiln prune`): what is reachable from the named images and the build
//! cache, temp entries of dead processes, and the `--keep-storage` budget.
//!
//! Whole-store collection ([`prune`], [`Exclusive`]) needs exclusive use of the store: no other
//! kiln process has it open (see [`super::activity`], whose items are re-exported here).

use super::{ANNOTATION_KILN_REF_NAME, ANNOTATION_REF_NAME, Store};
use crate::digest::Digest;
use crate::fsutil::remove::remove_path;
use crate::fsutil::size::human;
use crate::image::{Descriptor, Index, Manifest, is_index};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::activity::remove_dead_proc_locks;
pub use super::activity::{Exclusive, active_pids, pid_alive, register, sweep_dead_tmp, sweep_tmp_of, tmp_owner};

// ------------------------------------------------------------------------------------------
// Temporary entries

/// A `tmp/` entry (or an atomic-write temp file elsewhere) and whether it can be removed.
#[derive(Clone, Debug)]
pub struct TmpEntry {
    pub path: PathBuf,
    pub owner: Option<u32>,
    /// True when no running kiln process can be using it.
    pub stale: bool,
}

/// `cache/context-stat/`: COPY's per-context file hashes (see [`super::cache::StatCache`]).
pub const CONTEXT_STAT: &str = "context-stat";

/// Entries without an owner pid (from older kiln versions and their overlay probes, or atomic-write
/// temp files) count as stale after this long, or at once under [`Exclusive`].
const UNOWNED_STALE_AFTER: Duration = Duration::from_secs(3600);

fn age(md: &fs::Metadata) -> Duration {
    md.modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

/// Lists `tmp/` entries and the `.tmp-*` files of interrupted atomic writes (store root and
/// `cache/`). `exclusive`: no other kiln process is running, so every entry is stale.
pub fn temp_entries(store: &Store, exclusive: bool) -> Result<Vec<TmpEntry>> {
    let root = store.root();
    let mut out = Vec::new();
    let tmp = root.join("tmp");
    for e in fs::read_dir(&tmp).with_context(|| format!("reading {}", tmp.display()))? {
        let e = e.with_context(|| format!("reading {}", tmp.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = tmp_owner(&name);
        let stale = match owner {
            Some(pid) if pid == std::process::id() => false,
            Some(pid) => exclusive || !pid_alive(root, pid),
            None => exclusive || e.metadata().map(|m| age(&m) > UNOWNED_STALE_AFTER).unwrap_or(false),
        };
        out.push(TmpEntry {
            path: e.path(),
            owner,
            stale,
        });
    }
    for dir in [
        root.to_path_buf(),
        store.cache_dir(),
        store.cache_dir().join(CONTEXT_STAT),
        root.join("layers"),
    ] {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            let stale = exclusive || e.metadata().map(|m| age(&m) > UNOWNED_STALE_AFTER).unwrap_or(false);
            out.push(TmpEntry {
                path: e.path(),
                owner: None,
                stale,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Where [`remove_layer_dir`] moves a layer dir before deleting it: `tmp/gc-<pid>.<hex>`
/// (the part after the dot is the hex diff_id, alphanumeric, so [`tmp_owner`] reads the pid).
pub fn grave_for(store: &Store, dir: &Path) -> PathBuf {
    store.root().join("tmp").join(format!(
        "gc-{}.{}",
        std::process::id(),
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

/// Removes a layer dir crash-safely: its completion marker goes first (so a half-removed
/// directory is never trusted), then it is renamed into `tmp/` and deleted.
pub fn remove_layer_dir(store: &Store, dir: &Path) -> Result<()> {
    super::layers::remove_marker(&super::layers::marker_of(dir))?;
    let grave = grave_for(store, dir);
    fs::rename(dir, &grave).with_context(|| format!("moving {} out of layers/", dir.display()))?;
    remove_path(&grave)
}

/// Completion markers in `layers/` whose directory is gone (see [`super::layers`]).
pub fn stale_markers(store: &Store) -> Result<Vec<PathBuf>> {
    let dir = store.root().join("layers");
    let mut v = Vec::new();
    for e in fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(super::layers::MARKER_SUFFIX) else {
            continue;
        };
        if Digest::parse(&format!("sha256:{hex}")).is_ok() && !dir.join(hex).is_dir() {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

// ------------------------------------------------------------------------------------------
// Reachability

/// What the index and the build cache reference.
#[derive(Default, Debug)]
pub struct Roots {
    /// Blobs reachable from index.json entries with a name (manifests, indexes, configs, layers).
    pub named_blobs: HashSet<Digest>,
    /// Blobs reachable from unnamed index.json entries.
    pub unnamed_blobs: HashSet<Digest>,
    /// diff_ids of layers of named / unnamed images.
    pub named_diff_ids: HashSet<Digest>,
    pub unnamed_diff_ids: HashSet<Digest>,
    /// Build cache entries: file, its layer (blob digest, diff_id), last use.
    pub cache: Vec<CacheRef>,
}

#[derive(Debug, Clone)]
pub struct CacheRef {
    pub path: PathBuf,
    pub layer: Option<(Digest, Digest)>,
    /// False when the entry is unreadable or its layer blob is missing.
    pub valid: bool,
    pub mtime: SystemTime,
    pub size: u64,
}

/// Is an index entry named (by the standard or kiln's annotation)?
pub fn is_named(e: &Descriptor) -> bool {
    e.annotations.contains_key(ANNOTATION_REF_NAME)
        || e.annotations.contains_key(ANNOTATION_KILN_REF_NAME)
        || super::referrers::is_attachment(e)
}

/// Adds everything `d` (a manifest or index) references to `blobs` and `diff_ids`. Missing or
/// undecodable blobs are skipped (fsck reports them).
fn mark(store: &Store, d: &Digest, blobs: &mut HashSet<Digest>, diff_ids: &mut HashSet<Digest>, depth: usize) {
    if depth > 8 || !blobs.insert(d.clone()) {
        return;
    }
    let Ok(bytes) = store.read_blob(d) else { return };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    if is_index(mt) || v.get("manifests").is_some() {
        if let Ok(idx) = serde_json::from_slice::<Index>(&bytes) {
            for m in &idx.manifests {
                mark(store, &m.digest, blobs, diff_ids, depth + 1);
            }
        }
        return;
    }
    let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
        return;
    };
    blobs.insert(m.config.digest.clone());
    for l in &m.layers {
        blobs.insert(l.digest.clone());
    }
    if let Ok(cb) = store.read_blob(&m.config.digest)
        && let Ok(cfg) = serde_json::from_slice::<crate::image::ImageConfig>(&cb)
    {
        diff_ids.extend(cfg.rootfs.diff_ids);
    }
}

/// Reads a build cache entry file: (layer blob digest, diff_id), or None for a step without a
/// layer. An error when it cannot be decoded.
pub fn read_cache_entry(path: &Path) -> Result<Option<(Digest, Digest)>> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let e: super::cache::Entry =
        serde_json::from_slice(&data).with_context(|| format!("{} is not a build cache entry", path.display()))?;
    Ok(e.layer.map(|(d, diff)| (d.digest, diff)))
}

/// Cache entry files (`cache/<64 hex>.json`).
fn cache_files(store: &Store) -> Result<Vec<PathBuf>> {
    let dir = store.cache_dir();
    let mut v = Vec::new();
    for e in fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !name.starts_with('.') {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Computes what the index and the build cache reference.
pub fn roots(store: &Store) -> Result<Roots> {
    let mut r = Roots::default();
    for e in store.read_index()?.manifests {
        if is_named(&e) {
            mark(store, &e.digest, &mut r.named_blobs, &mut r.named_diff_ids, 0);
        } else {
            mark(store, &e.digest, &mut r.unnamed_blobs, &mut r.unnamed_diff_ids, 0);
        }
    }
    for path in cache_files(store)? {
        let md = fs::metadata(&path).with_context(|| format!("inspecting {}", path.display()))?;
        let (layer, valid) = match read_cache_entry(&path) {
            Ok(Some((d, diff))) => {
                let ok = store.has_blob(&d);
                (Some((d, diff)), ok)
            }
            Ok(None) => (None, true),
            Err(_) => (None, false),
        };
        r.cache.push(CacheRef {
            path,
            layer,
            valid,
            mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            size: md.len(),
        });
    }
    Ok(r)
}

// ------------------------------------------------------------------------------------------
// Sizes

/// Disk usage (allocated blocks) of a file or tree, without following symlinks.
pub fn disk_usage(p: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(p) else { return 0 };
    let mut n = md.blocks() * 512;
    if md.is_dir()
        && let Ok(rd) = fs::read_dir(p)
    {
        for e in rd.flatten() {
            n += disk_usage(&e.path());
        }
    }
    n
}

// ------------------------------------------------------------------------------------------
// prune

#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Also remove every build cache entry, and unpacked layers only the cache used.
    pub all: bool,
    /// After the rest, remove unpacked layers of no named image (least recently used first),
    /// then build cache entries (oldest first), until the store uses at most this many bytes.
    pub keep_storage: Option<u64>,
    /// Wait for other kiln processes to finish instead of failing.
    pub wait: bool,
    /// Only report what would be removed.
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub images: Vec<Digest>,
    pub cache_entries: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub layers: usize,
    pub layer_bytes: u64,
    pub tmp_entries: usize,
    pub tmp_bytes: u64,
    pub proc_locks: usize,
    /// Store size before and after (allocated bytes).
    pub size_before: u64,
    pub size_after: u64,
}

impl PruneReport {
    pub fn reclaimed(&self) -> u64 {
        self.size_before.saturating_sub(self.size_after)
    }
}

/// Size of the store as `--keep-storage` counts it: blobs, unpacked layers, cache, tmp.
pub fn store_size(store: &Store) -> u64 {
    ["blobs", "layers", "cache", "tmp"]
        .iter()
        .map(|d| disk_usage(&store.root().join(d)))
        .sum()
}

/// Layer dirs under `layers/`: (diff_id, path, last use).
fn layer_dirs(store: &Store) -> Result<Vec<(Digest, PathBuf, SystemTime)>> {
    let dir = store.root().join("layers");
    let mut v = Vec::new();
    for e in fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
            continue;
        };
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !md.is_dir() {
            continue;
        }
        // Last use: the later of access and modification times (atime moves when a build
        // reads the directory, subject to relatime).
        let used = md
            .accessed()
            .ok()
            .max(md.modified().ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        v.push((d, e.path(), used));
    }
    Ok(v)
}

/// `kiln prune`: see [`PruneOptions`]. Takes exclusive use of the store (see the module docs).
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport> {
    let _x = Exclusive::acquire(store, opts.wait)?;
    let mut rep = PruneReport {
        size_before: store_size(store),
        ..Default::default()
    };
    let dry = opts.dry_run;

    // 1. Partial data of dead processes (everything: nobody else runs).
    for t in temp_entries(store, true)? {
        rep.tmp_entries += 1;
        rep.tmp_bytes += disk_usage(&t.path);
        if !dry {
            remove_path(&t.path)?;
        }
    }
    if !dry {
        rep.proc_locks = remove_dead_proc_locks(store.root())?;
    }

    // 2. Dangling images: unnamed index entries.
    let idx = store.read_index()?;
    let dangling: Vec<Digest> = idx
        .manifests
        .iter()
        .filter(|e| !is_named(e))
        .map(|e| e.digest.clone())
        .collect();
    if !dry && !dangling.is_empty() {
        store.update_index(|idx| {
            idx.manifests.retain(is_named);
            Ok(())
        })?;
    }
    rep.images = dangling;
    if !dry {
        store.remove_orphan_attachments()?;
    }

    // 3. Cache entries: broken ones always, every one with --all.
    let r = roots(store)?;
    let mut cache: Vec<CacheRef> = Vec::new();
    for c in r.cache {
        if opts.all || !c.valid {
            rep.cache_entries += 1;
            if !dry {
                fs::remove_file(&c.path).with_context(|| format!("removing {}", c.path.display()))?;
            }
        } else {
            cache.push(c);
        }
    }

    if opts.all && !dry {
        // COPY's remembered file hashes are only a speed-up.
        let cs = store.cache_dir().join(CONTEXT_STAT);
        if cs.is_dir() {
            remove_path(&cs)?;
        }
    }

    // 4. Unreachable blobs and unused layer dirs.
    let mut live_blobs = r.named_blobs.clone();
    let mut live_layers = r.named_diff_ids.clone();
    for c in &cache {
        if let Some((d, diff)) = &c.layer {
            live_blobs.insert(d.clone());
            live_layers.insert(diff.clone());
        }
    }
    sweep_blobs(store, &live_blobs, dry, &mut rep)?;
    let mut layers = layer_dirs(store)?;
    layers.retain(|(diff, path, _)| {
        if live_layers.contains(diff) {
            return true;
        }
        rep.layers += 1;
        rep.layer_bytes += disk_usage(path);
        if !dry && let Err(e) = remove_layer_dir(store, path) {
            store.reporter().warn("store", format!("{e:#}"));
        }
        false
    });
    for m in stale_markers(store)? {
        if !dry {
            super::layers::remove_marker(&m)?;
        }
    }

    // 5. --keep-storage: least recently used first.
    if let Some(limit) = opts.keep_storage {
        let mut size = if dry {
            rep.size_before
                .saturating_sub(rep.tmp_bytes + rep.blob_bytes + rep.layer_bytes)
        } else {
            store_size(store)
        };
        // Unpacked layers of no named image (the cache's), oldest use first.
        let mut candidates: Vec<_> = layers
            .into_iter()
            .filter(|(diff, _, _)| !r.named_diff_ids.contains(diff))
            .collect();
        candidates.sort_by_key(|(_, _, t)| *t);
        for (_, path, _) in candidates {
            if size <= limit {
                break;
            }
            let n = disk_usage(&path);
            rep.layers += 1;
            rep.layer_bytes += n;
            size = size.saturating_sub(n);
            if !dry {
                remove_layer_dir(store, &path)?;
            }
        }
        // Then cache entries, oldest first, with the layer blobs only they hold.
        cache.sort_by_key(|c| c.mtime);
        let mut refcount: HashMap<Digest, usize> = HashMap::new();
        for c in &cache {
            if let Some((d, _)) = &c.layer {
                *refcount.entry(d.clone()).or_default() += 1;
            }
        }
        for c in &cache {
            if size <= limit {
                break;
            }
            rep.cache_entries += 1;
            size = size.saturating_sub(c.size);
            if !dry {
                fs::remove_file(&c.path).with_context(|| format!("removing {}", c.path.display()))?;
            }
            if let Some((d, diff)) = &c.layer {
                let n = refcount.get_mut(d).expect("counted");
                *n -= 1;
                if *n == 0 && !r.named_blobs.contains(d) {
                    let p = store.blob_path(d);
                    let bytes = fs::symlink_metadata(&p).map(|m| m.blocks() * 512).unwrap_or(0);
                    rep.blobs += 1;
                    rep.blob_bytes += bytes;
                    size = size.saturating_sub(bytes);
                    if !dry {
                        let _ = fs::remove_file(&p);
                    }
                    let ld = store.layer_dir(diff);
                    if !r.named_diff_ids.contains(diff) && ld.is_dir() {
                        let n = disk_usage(&ld);
                        rep.layers += 1;
                        rep.layer_bytes += n;
                        size = size.saturating_sub(n);
                        if !dry {
                            remove_layer_dir(store, &ld)?;
                        }
                    }
                }
            }
        }
        if size > limit {
            store.reporter().info(
                "store",
                format!(
                    "the store still uses {} after pruning: named images are never removed by --keep-storage (remove them with kiln rmi)",
                    human(size)
                ),
            );
        }
    }
    if !dry {
        crate::fsutil::sync_dir(&store.root().join("blobs/sha256"))?;
    }
    rep.size_after = if dry {
        rep.size_before
            .saturating_sub(rep.tmp_bytes + rep.blob_bytes + rep.layer_bytes)
    } else {
        store_size(store)
    };
    Ok(rep)
}

fn sweep_blobs(store: &Store, live: &HashSet<Digest>, dry: bool, rep: &mut PruneReport) -> Result<()> {
    let dir = store.root().join("blobs/sha256");
    for e in fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
            continue; // fsck reports strays
        };
        if live.contains(&d) {
            continue;
        }
        let bytes = e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        rep.blobs += 1;
        rep.blob_bytes += bytes;
        if !dry {
            fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Names of the images in the index (for reports).
pub fn names(store: &Store) -> Result<BTreeMap<Digest, Vec<String>>> {
    let mut m: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for (n, d) in store.list()? {
        m.entry(d.digest).or_default().push(n);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageConfig, MT_OCI_LAYER};
    use crate::store::ManifestFormat;
    use std::io::Write;

    #[test]
    fn tmp_owner_parses_pid_names() {
        assert_eq!(tmp_owner("step-1234.AbC123"), Some(1234));
        assert_eq!(tmp_owner("docker-archive-77.x1"), Some(77));
        assert_eq!(tmp_owner("blob-5.q"), Some(5));
        assert_eq!(tmp_owner("blob-AbC123"), None);
        // Probe dirs carry their owner too (a killed kiln's probe is recognisably dead).
        assert_eq!(tmp_owner("overlay-probe-4321.x1Yz"), Some(4321));
        assert_eq!(tmp_owner("fuse-probe-9.AbC"), Some(9));
        assert_eq!(tmp_owner("overlay-probe-x1Yz"), None);
        assert_eq!(tmp_owner("step-12.a-b"), None);
        assert_eq!(tmp_owner(".tmp-x"), None);
    }

    #[test]
    fn dead_processes_tmp_entries_are_swept_live_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let dead = t.path().join("tmp/overlay-probe-999999997.abc");
        fs::create_dir_all(dead.join("w/work")).unwrap();
        let dead_fuse = t.path().join("tmp/fuse-probe-999999997.abc");
        fs::create_dir_all(dead_fuse.join("u")).unwrap();
        let mine = t.path().join(format!("tmp/overlay-probe-{}.xyz", std::process::id()));
        fs::create_dir(&mine).unwrap();
        let step = t.path().join("tmp/step-999999997.abc");
        fs::create_dir(&step).unwrap();
        // Opening the store sweeps every entry of a dead process; a live one keeps its own.
        Store::open(t.path()).unwrap();
        assert!(!dead.exists() && !dead_fuse.exists() && !step.exists());
        assert!(mine.exists());
        // The original process's sweep after its child exited takes everything of that pid.
        fs::create_dir(&step).unwrap();
        sweep_tmp_of(s.root(), 999_999_997);
        assert!(!step.exists());
        sweep_tmp_of(s.root(), std::process::id());
        assert!(mine.exists(), "never the caller's own entries");
    }

    #[test]
    fn own_entries_are_live_and_dead_pids_stale() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let mine = s.tmp_dir("step-").unwrap();
        // A pid with no lock file never ran kiln here.
        fs::create_dir(t.path().join("tmp/step-999999999.abc")).unwrap();
        fs::write(t.path().join("cache/.tmp-zz"), b"").unwrap();
        let v = temp_entries(&s, false).unwrap();
        let find = |n: &str| v.iter().find(|e| e.path.to_string_lossy().contains(n)).unwrap().clone();
        assert!(!find(mine.path().file_name().unwrap().to_str().unwrap()).stale);
        assert!(find("step-999999999").stale);
        assert!(!find(".tmp-zz").stale, "young unowned files are kept");
        assert!(
            temp_entries(&s, true)
                .unwrap()
                .iter()
                .all(|e| e.stale || e.owner == Some(std::process::id()))
        );
        assert!(pid_alive(s.root(), std::process::id()));
        assert!(!pid_alive(s.root(), 999_999_999));
    }

    fn image_with_layer(s: &Store, content: &[u8], diff: &Digest) -> Descriptor {
        let layer = s.put_bytes(content).unwrap();
        let mut cfg = ImageConfig::empty();
        cfg.rootfs.diff_ids.push(diff.clone());
        let img = s
            .write_image(
                &cfg,
                vec![Descriptor::new(MT_OCI_LAYER, layer, content.len() as u64)],
                ManifestFormat::Oci,
            )
            .unwrap();
        let bytes = serde_json::to_vec(&img.manifest).unwrap();
        Descriptor::new(
            crate::image::MT_OCI_MANIFEST,
            img.manifest_digest.clone(),
            bytes.len() as u64,
        )
    }

    #[test]
    fn prune_keeps_named_removes_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d1 = Digest::of(b"diff1");
        let d2 = Digest::of(b"diff2");
        let named = image_with_layer(&s, b"layer one", &d1);
        s.tag("app:1", &named).unwrap();
        let dangling = image_with_layer(&s, b"layer two", &d2);
        s.add_unnamed(&dangling).unwrap();
        let orphan = s.put_bytes(b"orphan").unwrap();
        let publish = |d: &Digest| {
            let src = t.path().join("tmp").join(format!("src-{}", d.hex()));
            fs::create_dir_all(src.join("etc")).unwrap();
            s.publish_layer(&src, d).unwrap();
        };
        for d in [&d1, &d2] {
            publish(d);
        }
        // A cache entry whose blob is gone, and a valid one.
        let cached = s.put_bytes(b"cached layer").unwrap();
        let entry = |d: &Digest, diff: &Digest| {
            serde_json::to_vec(&crate::store::cache::Entry {
                layer: Some((Descriptor::new(MT_OCI_LAYER, d.clone(), 1), diff.clone())),
                created: None,
            })
            .unwrap()
        };
        let d3 = Digest::of(b"diff3");
        publish(&d3);
        // A marker whose directory is gone is swept too.
        let d4 = Digest::of(b"diff4");
        publish(&d4);
        remove_path(&s.layer_dir(&d4)).unwrap();
        fs::write(
            s.cache_dir().join(format!("{}.json", "a".repeat(64))),
            entry(&cached, &d3),
        )
        .unwrap();
        fs::write(
            s.cache_dir().join(format!("{}.json", "b".repeat(64))),
            entry(&Digest::of(b"gone"), &d2),
        )
        .unwrap();
        fs::create_dir(t.path().join("tmp/unpack-999999999.x")).unwrap();
        fs::create_dir_all(s.cache_dir().join(CONTEXT_STAT)).unwrap();
        fs::write(s.cache_dir().join(CONTEXT_STAT).join("x.json"), b"{}").unwrap();
        let f = crate::store::fsck::fsck(&s, &Default::default()).unwrap();
        assert!(
            f.problems.iter().all(|p| !p.what.contains(CONTEXT_STAT)),
            "{:?}",
            f.problems
        );

        let dry = prune(
            &s,
            &PruneOptions {
                dry_run: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(dry.images.len(), 1);
        assert!(s.has_blob(&orphan), "dry run removes nothing");

        let rep = prune(&s, &PruneOptions::default()).unwrap();
        assert_eq!(rep.images, vec![dangling.digest.clone()]);
        assert_eq!(rep.cache_entries, 1, "the broken cache entry");
        assert_eq!(rep.tmp_entries, 1);
        assert!(!s.has_blob(&orphan));
        assert!(!s.has_blob(&dangling.digest));
        assert!(s.has_blob(&cached), "valid cache entries keep their blobs");
        assert!(s.cache_dir().join(CONTEXT_STAT).is_dir(), "kept without --all");
        assert!(s.layer_dir(&d1).is_dir() && s.layer_dir(&d3).is_dir());
        assert!(!s.layer_dir(&d2).exists());
        assert!(
            !s.layer_marker(&d2).exists() && !s.layer_marker(&d4).exists(),
            "markers go with their dirs"
        );
        assert!(s.layer_ready(&d1) && s.layer_ready(&d3));
        assert_eq!(s.load_image("app:1").unwrap().manifest_digest, named.digest);
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);

        // --keep-storage 0: everything but the named image goes.
        let rep = prune(
            &s,
            &PruneOptions {
                keep_storage: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rep.cache_entries, 1);
        assert!(!s.has_blob(&cached) && !s.layer_dir(&d3).exists());
        assert!(s.layer_dir(&d1).is_dir(), "layers of named images stay");
        assert!(s.load_image("app:1").is_ok());
        let report = crate::store::fsck::fsck(&s, &Default::default()).unwrap();
        assert!(report.is_consistent(), "{:?}", report.problems);
    }

    #[test]
    fn prune_refuses_while_another_process_uses_the_store() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        // Another "process": a child that opens the store and waits.
        let mut child = std::process::Command::new("flock")
            .args(["--shared", "--close"])
            .arg(t.path().join("locks/active"))
            .args(["sleep", "30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        let mut err = String::new();
        // Generous: on a loaded machine `flock` may take seconds to start and lock.
        while t0.elapsed() < Duration::from_secs(30) {
            match prune(&s, &PruneOptions::default()) {
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    err = e.to_string();
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(err.contains("in use by other kiln processes"), "{err}");
        // Our own shared lock is back: a blob write still works, and prune works again.
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"x").unwrap();
        w.commit(None).unwrap();
        // Another test of this process may be forking right now: its child holds a copy of
        // the lock until it execs (close-on-exec), which makes prune refuse for a moment.
        let t1 = std::time::Instant::now();
        loop {
            match prune(&s, &PruneOptions::default()) {
                Ok(_) => break,
                Err(e) if t1.elapsed() < Duration::from_secs(10) && e.to_string().contains("in use") => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("prune after the other process ended: {e:#}"),
            }
        }
    }
}
