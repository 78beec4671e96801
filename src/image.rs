//! Image metadata types: descriptors, manifests, indexes and the image config.
//!
//! Hand-written serde types rather than oci-spec's: the image config must carry Docker's
//! extra fields (`Healthcheck`, `OnBuild`, `Shell`, `ArgsEscaped`) exactly as BuildKit writes
//! them, and one set of types serves both the OCI and the Docker v2 schema 2 media types.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MT_DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The annotation that names a manifest in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The largest manifest or index kiln reads: 4 MiB, the limit Docker and containerd apply.
/// Real manifests are a few KiB; an index with hundreds of platforms stays far below it.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// The largest image config kiln reads: 8 MiB. A config carries the environment, labels and one
/// `history` entry per build step; configs of images with long histories reach a few MiB, so
/// the cap is twice the manifest cap, and still bounds what one JSON blob can cost.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;

/// How deeply indexes may nest: a manifest is reached through at most this many indexes (an
/// index named in index.json or by a tag counts as one). Real images use one; the limit is
/// shared by loading from the store, `kiln pull`, `kiln load` and `kiln fsck`, and keeps every
/// walk over indexes short (none of them recurses without it).
pub const MAX_INDEX_DEPTH: usize = 4;

/// The kinds of JSON blob that have a size cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonKind {
    /// An image manifest or an index ([`MAX_MANIFEST_SIZE`]).
    Manifest,
    /// An image config ([`MAX_CONFIG_SIZE`]).
    Config,
}

impl JsonKind {
    /// The size cap in bytes.
    pub fn cap(self) -> u64 {
        match self {
            JsonKind::Manifest => MAX_MANIFEST_SIZE,
            JsonKind::Config => MAX_CONFIG_SIZE,
        }
    }

    /// "the 4 MiB limit for manifests and indexes".
    pub fn limit_phrase(self) -> String {
        let what = match self {
            JsonKind::Manifest => "manifests and indexes",
            JsonKind::Config => "image configs",
        };
        format!("the {} MiB limit for {what}", self.cap() >> 20)
    }

    /// The error for `what` (e.g. "manifest sha256:…") being `size` bytes (or more), over the cap.
    pub fn too_big(self, what: &str, size: u64) -> anyhow::Error {
        anyhow::anyhow!("{what} is {size} bytes, more than {}", self.limit_phrase())
    }

    /// The error for `what` having more bytes than the cap (found while reading it; reading
    /// stopped there).
    pub fn over_cap(self, what: &str) -> anyhow::Error {
        anyhow::anyhow!("{what} is larger than {} (reading stopped there)", self.limit_phrase())
    }

    /// An error when a declared `size` is over the cap.
    pub fn check(self, what: &str, size: u64) -> anyhow::Result<()> {
        if size > self.cap() {
            return Err(self.too_big(what, size));
        }
        Ok(())
    }
}

/// Reads `r` to its end, but at most `cap` bytes: `Ok(None)` when there is more (memory stays
/// bounded by `cap`, whatever the source claims about its size).
pub fn read_at_most(r: impl std::io::Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut r.take(cap + 1), &mut buf)?;
    Ok((buf.len() as u64 <= cap).then_some(buf))
}

/// Layer compression as told by a media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or None for a non-layer type.
    pub fn of_media_type(mt: &str) -> Option<Compression> {
        match mt {
            MT_OCI_LAYER | MT_DOCKER_LAYER => Some(Compression::None),
            MT_OCI_LAYER_GZIP | MT_DOCKER_LAYER_GZIP | MT_DOCKER_LAYER_FOREIGN => Some(Compression::Gzip),
            MT_OCI_LAYER_ZSTD => Some(Compression::Zstd),
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
            _ => None,
        }
    }
}

/// Is `mt` an image manifest (OCI or Docker v2s2)?
pub fn is_manifest(mt: &str) -> bool {
    mt == MT_OCI_MANIFEST || mt == MT_DOCKER_MANIFEST
}

/// Is `mt` an index / manifest list?
pub fn is_index(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            urls: Vec::new(),
        }
    }
}

/// An image manifest (OCI or Docker v2 schema 2; same shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Docker's HEALTHCHECK configuration, as BuildKit writes it into the image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// The `config` object of an image config (the container defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Keys like `80/tcp`, values `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

impl ContainerConfig {
    /// The value of environment variable `key`, if set.
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.as_ref()?.iter().rev().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k == key).then_some(v)
        })
    }

    /// Sets `key=value`, replacing an earlier value in place (Docker keeps the position).
    pub fn env_set(&mut self, key: &str, value: &str) {
        let env = self.env.get_or_insert_with(Vec::new);
        let entry = format!("{key}={value}");
        match env
            .iter_mut()
            .find(|kv| kv.split_once('=').map(|(k, _)| k) == Some(key) || kv.as_str() == key)
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

/// The image config blob (OCI image-spec config, with Docker's extra fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

impl ImageConfig {
    /// An empty config for `FROM scratch` / `kiln import`, for the host platform.
    pub fn empty() -> ImageConfig {
        ImageConfig {
            architecture: host_arch().to_string(),
            os: "linux".to_string(),
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: Vec::new(),
            },
            ..Default::default()
        }
    }
}

/// The GOARCH name of the machine kiln runs on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

/// An image in the store: its manifest and parsed config.
#[derive(Clone, Debug)]
pub struct Image {
    /// Digest of the manifest blob.
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

impl Image {
    /// The image id, as Docker shows it: the config digest.
    pub fn id(&self) -> &Digest {
        &self.manifest.config.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_bounded_reads() {
        assert_eq!(MAX_MANIFEST_SIZE, 4 * 1024 * 1024);
        const { assert!(MAX_CONFIG_SIZE >= MAX_MANIFEST_SIZE) };
        let data = [b'x'; 100];
        assert_eq!(read_at_most(&data[..], 100).unwrap().unwrap().len(), 100);
        assert_eq!(read_at_most(&data[..], 99).unwrap(), None);
        // An endless source costs at most cap + 1 bytes.
        assert_eq!(read_at_most(std::io::repeat(0), 1 << 10).unwrap(), None);
        let e = JsonKind::Manifest
            .check("manifest x", MAX_MANIFEST_SIZE + 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest x is 4194305 bytes, more than the 4 MiB limit for manifests and indexes"
        );
        assert!(JsonKind::Config.check("config x", MAX_CONFIG_SIZE).is_ok());
    }

    #[test]
    fn env_set_replaces_in_place() {
        let mut c = ContainerConfig {
            env: Some(vec!["A=1".into(), "B=2".into()]),
            ..Default::default()
        };
        c.env_set("A", "3");
        c.env_set("C", "4");
        assert_eq!(c.env.as_deref().unwrap(), ["A=3", "B=2", "C=4"]);
        assert_eq!(c.env_get("B"), Some("2"));
        assert_eq!(c.env_get("D"), None);
    }

    #[test]
    fn config_round_trips_docker_fields() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Healthcheck":{"Test":["NONE"]},"OnBuild":["RUN x"],"Shell":["/bin/bash","-c"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c: ImageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.config.shell.as_deref().unwrap(), ["/bin/bash", "-c"]);
        let back = serde_json::to_string(&c).unwrap();
        assert!(back.contains("\"OnBuild\":[\"RUN x\"]"));
    }
}
