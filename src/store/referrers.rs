//! Attachments in the store: OCI 1.1 referrers (SBOMs, provenance) and cosign signature
//! manifests of the images the store holds.
//!
//! They are `index.json` entries like images, so the store stays a valid OCI layout that other
//! tools read, but they carry `io.kiln.attachment-of` (the subject manifest's digest) and
//! `io.kiln.attachment` (`referrer` or `signature`), and, for referrers, the artifact type in
//! `io.kiln.artifact-type` (index.json descriptors of older tools drop `artifactType`).
//! `kiln images` and name lookups skip them; garbage collection keeps them while their subject
//! is reachable from a named image and removes them with it ([`orphans`]).

use super::Store;
use crate::artifact::{ArtifactDescriptor, ArtifactManifest};
use crate::digest::Digest;
use crate::image::{Descriptor, Index, JsonKind, MAX_INDEX_DEPTH, MT_OCI_MANIFEST, is_index};
use anyhow::{Context, Result};
use std::collections::HashSet;

/// The subject manifest digest of an attachment entry.
pub const ANNOTATION_ATTACHMENT_OF: &str = "io.kiln.attachment-of";
/// `referrer` or `signature`.
pub const ANNOTATION_ATTACHMENT: &str = "io.kiln.attachment";
/// A referrer's artifact type.
pub const ANNOTATION_ARTIFACT_TYPE: &str = "io.kiln.artifact-type";

/// Is this index entry an attachment (not an image)?
pub fn is_attachment(e: &Descriptor) -> bool {
    e.annotations.contains_key(ANNOTATION_ATTACHMENT_OF)
}

fn entry(subject: &Digest, kind: &str, artifact_type: Option<&str>, bytes: &[u8]) -> Descriptor {
    let mut d = Descriptor::new(MT_OCI_MANIFEST, Digest::of(bytes), bytes.len() as u64);
    d.annotations
        .insert(ANNOTATION_ATTACHMENT_OF.to_string(), subject.to_string());
    d.annotations
        .insert(ANNOTATION_ATTACHMENT.to_string(), kind.to_string());
    if let Some(t) = artifact_type {
        d.annotations
            .insert(ANNOTATION_ARTIFACT_TYPE.to_string(), t.to_string());
    }
    d
}

impl Store {
    /// Stores an artifact manifest (its blobs must be stored already) as a referrer of its
    /// subject. Returns its descriptor as a referrers index lists it.
    pub fn add_referrer(&self, m: &ArtifactManifest) -> Result<ArtifactDescriptor> {
        let subject = m
            .subject
            .as_ref()
            .context("an artifact without a subject cannot be attached")?;
        let bytes = m.to_bytes();
        self.put_bytes(&bytes)?;
        let e = entry(&subject.digest, "referrer", Some(&m.kind()), &bytes);
        self.update_index(|idx| {
            if !idx.manifests.iter().any(|x| x.digest == e.digest && is_attachment(x)) {
                idx.manifests.push(e);
            }
            Ok(())
        })?;
        Ok(m.referrer_descriptor(&bytes))
    }

    /// The referrers of `subject` in the store, sorted by digest.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<(ArtifactDescriptor, ArtifactManifest)>> {
        let mut out = Vec::new();
        for e in self.attachments(subject, "referrer")? {
            let bytes = self.read_json_blob(&e.digest, JsonKind::Manifest)?;
            let m: ArtifactManifest = serde_json::from_slice(&bytes)
                .with_context(|| format!("attachment {} in the store is not a manifest", e.digest))?;
            out.push((m.referrer_descriptor(&bytes), m));
        }
        out.sort_by(|a, b| a.0.digest.cmp(&b.0.digest));
        out.dedup_by(|a, b| a.0.digest == b.0.digest);
        Ok(out)
    }

    /// The cosign signature manifest of `subject` in the store, if any.
    pub fn signatures(&self, subject: &Digest) -> Result<Option<ArtifactManifest>> {
        let Some(e) = self.attachments(subject, "signature")?.into_iter().next() else {
            return Ok(None);
        };
        let bytes = self.read_json_blob(&e.digest, JsonKind::Manifest)?;
        Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("signature manifest {} in the store is not a manifest", e.digest)
        })?))
    }

    /// Replaces the signature manifest of `subject` (its blobs must be stored already).
    pub fn set_signatures(&self, subject: &Digest, m: &ArtifactManifest) -> Result<()> {
        let bytes = m.to_bytes();
        self.put_bytes(&bytes)?;
        let e = entry(subject, "signature", None, &bytes);
        self.update_index(|idx| {
            idx.manifests.retain(|x| {
                !(x.annotations.get(ANNOTATION_ATTACHMENT_OF) == Some(&subject.to_string())
                    && x.annotations.get(ANNOTATION_ATTACHMENT).map(String::as_str) == Some("signature"))
            });
            idx.manifests.push(e);
            Ok(())
        })
    }

    fn attachments(&self, subject: &Digest, kind: &str) -> Result<Vec<Descriptor>> {
        let s = subject.to_string();
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .filter(|e| {
                e.annotations.get(ANNOTATION_ATTACHMENT_OF) == Some(&s)
                    && e.annotations.get(ANNOTATION_ATTACHMENT).map(String::as_str) == Some(kind)
            })
            .collect())
    }

    /// Removes the attachments whose subject is gone (see [`orphans`]); returns their digests.
    pub fn remove_orphan_attachments(&self) -> Result<Vec<Digest>> {
        let idx = self.read_index()?;
        let gone = orphans(self, &idx);
        if !gone.is_empty() {
            let set: HashSet<&Digest> = gone.iter().collect();
            self.update_index(|idx| {
                idx.manifests.retain(|e| !(is_attachment(e) && set.contains(&e.digest)));
                Ok(())
            })?;
        }
        Ok(gone)
    }
}

/// Attachments of `idx` whose subject is not reachable from a named image entry (directly, as
/// a platform manifest of a named index, or as another surviving attachment: a signature of
/// an SBOM).
pub fn orphans(store: &Store, idx: &Index) -> Vec<Digest> {
    let mut live: HashSet<Digest> = HashSet::new();
    for e in idx
        .manifests
        .iter()
        .filter(|e| !is_attachment(e) && super::gc::is_named(e))
    {
        let mut todo = vec![(e.digest.clone(), e.media_type.clone(), 0)];
        while let Some((d, mt, depth)) = todo.pop() {
            if !live.insert(d.clone()) || depth >= MAX_INDEX_DEPTH {
                continue;
            }
            if is_index(&mt)
                && let Ok(b) = store.read_json_blob(&d, JsonKind::Manifest)
                && let Ok(i) = serde_json::from_slice::<Index>(&b)
            {
                todo.extend(i.manifests.into_iter().map(|m| (m.digest, m.media_type, depth + 1)));
            }
        }
    }
    let attachments: Vec<&Descriptor> = idx.manifests.iter().filter(|e| is_attachment(e)).collect();
    loop {
        let before = live.len();
        for a in &attachments {
            let subject = a
                .annotations
                .get(ANNOTATION_ATTACHMENT_OF)
                .and_then(|s| Digest::parse(s).ok());
            if subject.is_some_and(|s| live.contains(&s)) {
                live.insert(a.digest.clone());
            }
        }
        if live.len() == before {
            break;
        }
    }
    let mut out: Vec<Digest> = attachments
        .iter()
        .filter(|a| !live.contains(&a.digest))
        .map(|a| a.digest.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::MT_SPDX;
    use crate::image::ImageConfig;

    #[test]
    fn referrers_signatures_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let img = s
            .write_image(&ImageConfig::empty(), vec![], crate::store::ManifestFormat::Oci)
            .unwrap();
        let subject_bytes = s.read_blob(&img.manifest_digest).unwrap();
        let subject = ArtifactDescriptor::of(MT_OCI_MANIFEST, &subject_bytes);
        s.tag("app:1", &subject.to_descriptor()).unwrap();
        s.put_bytes(crate::artifact::EMPTY_JSON).unwrap();
        let sbom = br#"{"spdxVersion":"SPDX-2.3"}"#;
        s.put_bytes(sbom).unwrap();
        let m = ArtifactManifest::new(
            MT_SPDX,
            ArtifactDescriptor::of(MT_SPDX, sbom),
            subject.clone(),
            Default::default(),
        );
        let d = s.add_referrer(&m).unwrap();
        s.add_referrer(&m).unwrap();
        let r = s.referrers(&subject.digest).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, d);
        // Not an image: not listed, not resolvable by name.
        assert_eq!(s.list().unwrap().len(), 1);
        let (sig, _) = crate::artifact::signature_manifest(vec![]);
        s.set_signatures(&d.digest, &sig).unwrap();
        s.set_signatures(&d.digest, &sig).unwrap();
        assert!(s.signatures(&d.digest).unwrap().is_some());
        assert!(orphans(&s, &s.read_index().unwrap()).is_empty());
        s.untag("app:1").unwrap();
        let gone = s.remove_orphan_attachments().unwrap();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert!(s.referrers(&subject.digest).unwrap().is_empty());
    }
}
