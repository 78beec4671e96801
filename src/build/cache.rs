//! The local build cache: step key → the layer the step produced.
//!
//! A step's key chains the previous step's key with the step's own inputs (expanded
//! instruction, visible ARGs and ENV, content digest of COPY/ADD sources), so a hit means
//! every earlier step matched too. Entries are small JSON files written atomically.

use crate::digest::Digest;
use crate::image::Descriptor;
use crate::store::Store;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What a cached step produced: a layer, or nothing (no filesystem change).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub layer: Option<(Descriptor, Digest)>,
    /// When the step ran; reused on a hit so that a no-change rebuild gives the same image.
    #[serde(default)]
    pub created: Option<String>,
}

/// The next key in a chain: H(parent, description, extra inputs).
pub fn chain(parent: &Digest, description: &str, extra: &[String]) -> Digest {
    let mut buf = Vec::with_capacity(128 + description.len());
    buf.extend_from_slice(parent.as_str().as_bytes());
    buf.push(0);
    buf.extend_from_slice(description.as_bytes());
    for e in extra {
        buf.push(0);
        buf.extend_from_slice(e.as_bytes());
    }
    Digest::of(&buf)
}

fn entry_path(store: &Store, key: &Digest) -> std::path::PathBuf {
    store.cache_dir().join(format!("{}.json", key.hex()))
}

/// The entry for `key`, if present and its layer blob is still in the store.
pub fn lookup(store: &Store, key: &Digest) -> Result<Option<Entry>> {
    let path = entry_path(store, key);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading cache entry {}", path.display())),
    };
    let Ok(entry) = serde_json::from_slice::<Entry>(&data) else {
        // A damaged entry is a miss, not an error; it gets rewritten.
        return Ok(None);
    };
    if let Some((desc, _)) = &entry.layer
        && !store.has_blob(&desc.digest)
    {
        return Ok(None);
    }
    Ok(Some(entry))
}

/// Records the result of a step.
pub fn store(store: &Store, key: &Digest, entry: &Entry) -> Result<()> {
    let dir = store.cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::fsutil::write_atomic(&entry_path(store, key), &serde_json::to_vec(entry)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_input() {
        let p = Digest::of(b"p");
        let a = chain(&p, "RUN x", &[]);
        assert_eq!(a, chain(&p, "RUN x", &[]));
        assert_ne!(a, chain(&p, "RUN y", &[]));
        assert_ne!(a, chain(&Digest::of(b"q"), "RUN x", &[]));
        assert_ne!(a, chain(&p, "RUN x", &["sha256:1".into()]));
    }
}
