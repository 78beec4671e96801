//! The remote build cache: `--cache-to REPO` / `--cache-from REPO` keep filesystem-step
//! results in a registry repository, so that many machines (CI runners) share work.
//!
//! Each RUN/COPY/ADD/WORKDIR result is one small OCI manifest tagged `kiln-cache-<key hex>`
//! (the same chained key as the local cache, see [`super::cache`]): its config blob
//! (media type [`MT_CACHE_CONFIG`]) holds the key and the [`Entry`], its only layer (if the
//! step changed anything) is the step's layer blob. Metadata-only steps are never pushed:
//! their keys are computed locally from the instruction text.
//!
//! Lookups: a local miss asks each `--cache-from` repository for the step's tag; a hit pulls
//! the layer blob into the store and records the entry in the local cache. Every step looks
//! up on its own, so a miss does not stop later steps (or other stages) from hitting.
//! Results are pushed to every `--cache-to` repository when the build ends (also when it
//! failed, so the steps that did run are not lost), skipping tags that already exist.
//! A registry that cannot be reached is a warning, never a build failure.

use super::cache::{self, Entry};
use crate::digest::Digest;
use crate::image::{Descriptor, MT_OCI_MANIFEST, Manifest};
use crate::reference::Reference;
use crate::registry::RegistryOptions;
use crate::registry::client::{Body, Client, status_error};
use crate::store::Store;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Media type of the config blob of a cache manifest.
pub const MT_CACHE_CONFIG: &str = "application/vnd.kiln.cache.entry.v1+json";
/// Annotation carrying the cache key on a cache manifest.
pub const ANNOTATION_KEY: &str = "dev.kiln.cache.key";

/// The tag of a step result in a cache repository (75 characters; tags may have 128).
pub fn tag_for(key: &Digest) -> String {
    format!("kiln-cache-{}", key.hex())
}

/// A `--cache-to` / `--cache-from` value: `host/repo[:tag]` or BuildKit's
/// `type=registry,ref=host/repo[:tag]`. Only the repository is used.
pub fn parse_cache_ref(s: &str) -> Result<Reference> {
    let mut reference = s.trim();
    if s.contains('=') {
        let mut found = None;
        for part in s.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k.trim() {
                "type" if v == "registry" => {}
                "type" => bail!("cache {s:?}: only type=registry is supported"),
                "ref" => found = Some(v.trim()),
                // BuildKit options that need no action here.
                "mode" | "ignore-error" | "image-manifest" | "oci-mediatypes" => {}
                other => bail!("cache {s:?}: unknown option {other:?} (expected type=registry,ref=REPO)"),
            }
        }
        reference = found.with_context(|| format!("cache {s:?}: missing ref=REPO"))?;
    }
    Reference::parse(reference).with_context(|| format!("cache repository {reference:?}"))
}

/// The config blob of a cache manifest.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheConfig {
    key: Digest,
    entry: Entry,
}

/// One `--cache-from` or `--cache-to` repository.
struct Repo {
    reference: Reference,
    client: Mutex<Option<Arc<Client>>>,
    /// Set after the first transport or auth failure: the repository is not asked again.
    broken: Mutex<bool>,
}

impl Repo {
    fn new(reference: Reference) -> Repo {
        Repo {
            reference,
            client: Mutex::new(None),
            broken: Mutex::new(false),
        }
    }

    fn name(&self) -> String {
        format!("{}/{}", self.reference.registry, self.reference.repository)
    }

    fn client(&self, opts: &RegistryOptions) -> Result<Arc<Client>> {
        let mut c = self.client.lock().unwrap();
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let client = Arc::new(Client::new(&self.reference.registry, opts)?);
        *c = Some(client.clone());
        Ok(client)
    }
}

/// The remote cache of one build.
pub struct RemoteCache {
    from: Vec<Repo>,
    to: Vec<Repo>,
    opts: RegistryOptions,
    /// Step results to push when the build ends, in the order they were made.
    pending: Mutex<Vec<(Digest, Entry)>>,
}

/// What a remote lookup found.
pub struct Hit {
    pub entry: Entry,
    /// `host/repo` it came from.
    pub source: String,
}

impl RemoteCache {
    /// None when neither `--cache-from` nor `--cache-to` was given.
    pub fn new(from: &[Reference], to: &[Reference], opts: &RegistryOptions) -> Option<RemoteCache> {
        if from.is_empty() && to.is_empty() {
            return None;
        }
        Some(RemoteCache {
            from: from.iter().cloned().map(Repo::new).collect(),
            to: to.iter().cloned().map(Repo::new).collect(),
            opts: RegistryOptions {
                platform: None,
                ..opts.clone()
            },
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Looks `key` up in each `--cache-from` repository in turn; a hit's layer blob is pulled
    /// into the store and the entry recorded in the local cache. Failures are reported with
    /// `warn` (once per repository, which is then left alone) and count as misses.
    pub fn lookup(&self, store: &Store, key: &Digest, warn: &dyn Fn(&str)) -> Option<Hit> {
        for repo in &self.from {
            if *repo.broken.lock().unwrap() {
                continue;
            }
            match self.lookup_in(repo, store, key) {
                Ok(Some(entry)) => {
                    if let Err(e) = cache::store(store, key, &entry) {
                        warn(&format!("recording a remote cache hit locally: {e:#}"));
                    }
                    return Some(Hit {
                        entry,
                        source: repo.name(),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    *repo.broken.lock().unwrap() = true;
                    warn(&format!(
                        "cache {}: {e:#} (not asking it again in this build)",
                        repo.name()
                    ));
                }
            }
        }
        None
    }

    fn lookup_in(&self, repo: &Repo, store: &Store, key: &Digest) -> Result<Option<Entry>> {
        let client = repo.client(&self.opts)?;
        let name = &repo.reference.repository;
        let scopes = vec![format!("repository:{name}:pull")];
        let url = client.url(&format!("{name}/manifests/{}", tag_for(key)));
        let mut resp = client.send("GET", &url, &[("accept", MT_OCI_MANIFEST)], &Body::Empty, &scopes, true)?;
        match resp.status().as_u16() {
            200 => {}
            // A repository that does not exist yet is a miss too.
            404 => return Ok(None),
            _ => return Err(status_error(&client, &mut resp).context("looking up a cache entry")),
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| anyhow!(crate::registry::client::describe(&e)))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).context("the cache manifest is not JSON")?;
        if manifest.config.media_type != MT_CACHE_CONFIG {
            // Someone else's tag: not ours to use.
            return Ok(None);
        }
        if !store.has_blob(&manifest.config.digest) {
            crate::registry::fetch_blob(store, &client, name, &manifest.config, &scopes, &|_| {})
                .context("fetching the cache entry")?;
        }
        let cfg: CacheConfig =
            serde_json::from_slice(&store.read_blob(&manifest.config.digest)?).context("parsing the cache entry")?;
        if &cfg.key != key {
            bail!("tag {} holds the entry of key {}", tag_for(key), cfg.key);
        }
        if let Some((desc, _)) = &cfg.entry.layer {
            if manifest.layers.first().map(|l| &l.digest) != Some(&desc.digest) {
                bail!(
                    "cache manifest {} does not carry its layer {}",
                    tag_for(key),
                    desc.digest
                );
            }
            if !store.has_blob(&desc.digest) {
                crate::registry::fetch_blob(store, &client, name, desc, &scopes, &|_| {})
                    .with_context(|| format!("fetching cached layer {}", desc.digest))?;
            }
        }
        Ok(Some(cfg.entry))
    }

    /// Remembers a filesystem step's result for [`RemoteCache::export`].
    pub fn record(&self, key: &Digest, entry: &Entry) {
        if !self.to.is_empty() {
            self.pending.lock().unwrap().push((key.clone(), entry.clone()));
        }
    }

    /// Pushes every recorded step result to every `--cache-to` repository (tags already
    /// there are skipped). Returns how many entries were pushed; problems are warnings.
    pub fn export(&self, store: &Store, info: &dyn Fn(&str), warn: &dyn Fn(&str)) -> usize {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        let mut seen = HashSet::new();
        let entries: Vec<(Digest, Entry)> = pending.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
        if entries.is_empty() {
            return 0;
        }
        let mut pushed = 0;
        for repo in &self.to {
            let counts = Mutex::new((0usize, 0usize));
            let started = std::time::Instant::now();
            let result = crate::registry::parallel(&entries, 4, &|_| {}, |(key, entry), _| {
                let new = self.push_entry(repo, store, key, entry)?;
                let mut c = counts.lock().unwrap();
                if new {
                    c.0 += 1
                } else {
                    c.1 += 1
                }
                Ok(())
            });
            let (new, had) = *counts.lock().unwrap();
            pushed += new;
            match result {
                Ok(()) => info(&format!(
                    "cache {}: {new} step results pushed, {had} already there ({:.1}s)",
                    repo.name(),
                    started.elapsed().as_secs_f64()
                )),
                Err(e) => warn(&format!("cache {}: pushing step results: {e:#}", repo.name())),
            }
        }
        pushed
    }

    /// Pushes one entry; false when its tag was already there.
    fn push_entry(&self, repo: &Repo, store: &Store, key: &Digest, entry: &Entry) -> Result<bool> {
        let client = repo.client(&self.opts)?;
        let name = &repo.reference.repository;
        let scopes = vec![format!("repository:{name}:pull,push")];
        let tag = tag_for(key);
        let url = client.url(&format!("{name}/manifests/{tag}"));
        let head = client.send(
            "HEAD",
            &url,
            &[("accept", MT_OCI_MANIFEST)],
            &Body::Empty,
            &scopes,
            true,
        )?;
        if head.status().as_u16() == 200 {
            return Ok(false);
        }
        let cfg = serde_json::to_vec(&CacheConfig {
            key: key.clone(),
            entry: entry.clone(),
        })?;
        let cfg_digest = store.put_bytes(&cfg)?;
        let cfg_desc = Descriptor::new(MT_CACHE_CONFIG, cfg_digest, cfg.len() as u64);
        let mut layers = Vec::new();
        if let Some((desc, _)) = &entry.layer {
            crate::registry::push_blob(store, &client, name, desc, &scopes, None)
                .with_context(|| format!("uploading layer {}", desc.digest))?;
            layers.push(desc.clone());
        }
        crate::registry::push_blob(store, &client, name, &cfg_desc, &scopes, None)
            .context("uploading the cache entry")?;
        let mut manifest = Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.to_string()),
            config: cfg_desc,
            layers,
            annotations: Default::default(),
        };
        manifest.annotations.insert(ANNOTATION_KEY.to_string(), key.to_string());
        let body = serde_json::to_vec(&manifest)?;
        let mut resp = client.send(
            "PUT",
            &url,
            &[("content-type", MT_OCI_MANIFEST)],
            &Body::Bytes(body),
            &scopes,
            true,
        )?;
        if !(200..300).contains(&resp.status().as_u16()) {
            return Err(status_error(&client, &mut resp).context(format!("the registry rejected cache manifest {tag}")));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_refs_and_tags() {
        let r = parse_cache_ref("localhost:5000/team/cache").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "team/cache")
        );
        let r = parse_cache_ref("type=registry,ref=q.io/a/b:buildcache,mode=max").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("q.io", "a/b"));
        assert!(parse_cache_ref("type=local,dest=/x").is_err());
        assert!(parse_cache_ref("type=registry").is_err());
        let t = tag_for(&Digest::of(b"k"));
        assert!(t.len() <= 128 && t.starts_with("kiln-cache-"));
        assert!(t[11..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn cache_config_round_trips() {
        let e = Entry {
            layer: Some((
                Descriptor::new(crate::image::MT_OCI_LAYER_GZIP, Digest::of(b"l"), 3),
                Digest::of(b"d"),
            )),
            created: Some("2024-01-01T00:00:00Z".into()),
        };
        let bytes = serde_json::to_vec(&CacheConfig {
            key: Digest::of(b"k"),
            entry: e,
        })
        .unwrap();
        let back: CacheConfig = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.key, Digest::of(b"k"));
        assert_eq!(back.entry.layer.unwrap().1, Digest::of(b"d"));
        assert!(RemoteCache::new(&[], &[], &RegistryOptions::default()).is_none());
    }
}
