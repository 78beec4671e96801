//! OCI 1.1 artifacts and referrers: the manifest shape of an artifact (an image manifest with
//! `artifactType`, the empty config and a `subject`), the referrers index, the referrers tag
//! schema (`sha256-<hex>`) and cosign's signature tag (`sha256-<hex>.sig`).
//!
//! A data-types module at the bottom of the layering (beside `image`): the store, the
//! registry client and `attest` all speak these types.

use crate::digest::Digest;
use crate::image::{MT_OCI_INDEX, MT_OCI_MANIFEST, Platform};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The empty config of artifacts (`{}`), OCI 1.1.
pub const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The bytes of the empty config blob.
pub const EMPTY_JSON: &[u8] = b"{}";
/// An SPDX 2.3 JSON document.
pub const MT_SPDX: &str = "application/spdx+json";
/// A CycloneDX JSON document.
pub const MT_CYCLONEDX: &str = "application/vnd.cyclonedx+json";
/// An in-toto statement (JSON).
pub const MT_IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation naming an in-toto statement's predicate type (as BuildKit writes it).
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
/// The SLSA v1 provenance predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// A cosign signature layer: the simple-signing payload.
pub const MT_COSIGN_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding a cosign signature (base64).
pub const ANNOTATION_COSIGN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// The standard creation-time annotation.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// A descriptor with the OCI 1.1 fields (`artifactType`, `data`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl ArtifactDescriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> ArtifactDescriptor {
        ArtifactDescriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            artifact_type: None,
            platform: None,
            annotations: BTreeMap::new(),
            data: None,
        }
    }

    /// The empty config descriptor (with its two bytes inline, as the spec suggests).
    pub fn empty_config() -> ArtifactDescriptor {
        let mut d = ArtifactDescriptor::new(MT_EMPTY, Digest::of(EMPTY_JSON), EMPTY_JSON.len() as u64);
        d.data = Some("e30=".to_string());
        d
    }

    /// The descriptor of `bytes` as a blob of `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> ArtifactDescriptor {
        ArtifactDescriptor::new(media_type, Digest::of(bytes), bytes.len() as u64)
    }

    /// The plain image descriptor (for the store and push APIs).
    pub fn to_descriptor(&self) -> crate::image::Descriptor {
        let mut d = crate::image::Descriptor::new(&self.media_type, self.digest.clone(), self.size);
        d.annotations = self.annotations.clone();
        d.platform = self.platform.clone();
        d
    }
}

/// An image manifest as OCI 1.1 writes artifacts and signatures: `artifactType`, `subject`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: ArtifactDescriptor,
    #[serde(default)]
    pub layers: Vec<ArtifactDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<ArtifactDescriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ArtifactManifest {
    /// An artifact of `artifact_type` with one layer, referring to `subject`.
    pub fn new(
        artifact_type: &str,
        layer: ArtifactDescriptor,
        subject: ArtifactDescriptor,
        annotations: BTreeMap<String, String>,
    ) -> ArtifactManifest {
        ArtifactManifest {
            schema_version: 2,
            media_type: MT_OCI_MANIFEST.to_string(),
            artifact_type: Some(artifact_type.to_string()),
            config: ArtifactDescriptor::empty_config(),
            layers: vec![layer],
            subject: Some(subject),
            annotations,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The artifact type: `artifactType`, else the config's media type (OCI 1.1's rule).
    pub fn kind(&self) -> String {
        self.artifact_type
            .clone()
            .unwrap_or_else(|| self.config.media_type.clone())
    }

    /// How this manifest appears in a referrers index.
    pub fn referrer_descriptor(&self, bytes: &[u8]) -> ArtifactDescriptor {
        let mut d = ArtifactDescriptor::of(MT_OCI_MANIFEST, bytes);
        d.artifact_type = Some(self.kind());
        d.annotations = self.annotations.clone();
        d
    }
}

/// A referrers index (the answer of `GET /v2/<name>/referrers/<digest>`, or the index at the
/// fallback tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrersIndex {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<ArtifactDescriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ReferrersIndex {
    fn default() -> Self {
        ReferrersIndex {
            schema_version: 2,
            media_type: MT_OCI_INDEX.to_string(),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

impl ReferrersIndex {
    /// Adds (or replaces, by digest) a referrer; keeps the list sorted by digest so that the
    /// same set of referrers always gives the same index.
    pub fn add(&mut self, d: ArtifactDescriptor) {
        self.manifests.retain(|m| m.digest != d.digest);
        self.manifests.push(d);
        self.manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The referrers tag schema's tag for `subject`: `sha256-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// cosign's signature tag for `subject`: `sha256-<hex>.sig`.
pub fn signature_tag(subject: &Digest) -> String {
    format!("sha256-{}.sig", subject.hex())
}

/// The config blob of a cosign signature manifest: a minimal image config whose diff_ids are
/// the signature layers (as cosign writes it).
pub fn signature_config(layers: &[ArtifactDescriptor]) -> Vec<u8> {
    let ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "",
        "config": {},
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap_or_default()
}

/// A cosign signature manifest with `layers` (no subject: cosign finds it by tag).
pub fn signature_manifest(layers: Vec<ArtifactDescriptor>) -> (ArtifactManifest, Vec<u8>) {
    let config = signature_config(&layers);
    let m = ArtifactManifest {
        schema_version: 2,
        media_type: MT_OCI_MANIFEST.to_string(),
        artifact_type: None,
        config: ArtifactDescriptor::of(crate::image::MT_OCI_CONFIG, &config),
        layers,
        subject: None,
        annotations: BTreeMap::new(),
    };
    (m, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let subject = ArtifactDescriptor::of(MT_OCI_MANIFEST, b"m");
        let layer = ArtifactDescriptor::of(MT_SPDX, b"{}");
        let m = ArtifactManifest::new(MT_SPDX, layer, subject.clone(), BTreeMap::new());
        let v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(v["artifactType"], MT_SPDX);
        assert_eq!(v["config"]["mediaType"], MT_EMPTY);
        assert_eq!(
            v["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(v["subject"]["digest"], subject.digest.as_str());
        assert_eq!(
            fallback_tag(&subject.digest),
            format!("sha256-{}", subject.digest.hex())
        );
        let mut idx = ReferrersIndex::default();
        let b = m.to_bytes();
        idx.add(m.referrer_descriptor(&b));
        idx.add(m.referrer_descriptor(&b));
        assert_eq!(idx.manifests.len(), 1);
        assert_eq!(idx.manifests[0].artifact_type.as_deref(), Some(MT_SPDX));
    }
}
