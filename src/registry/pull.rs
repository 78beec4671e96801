//! `kiln pull`: manifest (or index → platform manifest), config and layer blobs streamed into
//! the store, every digest verified, then the reference tagged.

use super::client::{Body, Client, Response, TRIES, describe_io, is_timeout_io, status_error};
use super::platform::{PlatformSpec, select};
use super::{RegistryOptions, parallel};
use crate::digest::Digest;
use crate::image::*;
use crate::reference::Reference;
use crate::store::Store;
use anyhow::{Context, Result, anyhow, bail};
use std::io::{Read, Write};

pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// How often a running download reports its byte count.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// Parallel blob downloads.
const WORKERS: usize = 4;

/// Pulls `reference` into `store` and returns the stored image. `progress` gets one line per
/// event ("Copying blob sha256:… done").
pub fn pull(store: &Store, reference: &Reference, opts: &RegistryOptions, progress: &dyn Fn(&str)) -> Result<Image> {
    pull_inner(store, reference, opts, progress).with_context(|| format!("pulling {reference}"))
}

/// A fetched manifest or index: its bytes, media type and verified digest.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// The media type of a manifest body: the Content-Type, else its `mediaType`, else guessed
/// from its shape.
fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> Result<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).context("the manifest is not JSON")?;
    if probe.schema_version == Some(1) {
        bail!("the registry only offers a Docker schema 1 manifest, which kiln does not support");
    }
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| is_manifest(c) || is_index(c));
    if let Some(ct) = ct {
        return Ok(ct);
    }
    if let Some(mt) = probe.media_type.filter(|m| is_manifest(m) || is_index(m)) {
        return Ok(mt);
    }
    if probe.manifests.is_some() {
        return Ok(MT_OCI_INDEX.to_string());
    }
    if probe.config.is_some() {
        return Ok(MT_OCI_MANIFEST.to_string());
    }
    bail!(
        "the registry answered with something that is not an image manifest ({})",
        content_type.unwrap_or("no content type")
    )
}

/// GETs `/v2/<repo>/manifests/<tag or digest>` and verifies its digest.
pub(crate) fn fetch_manifest(client: &Client, repo: &str, reference: &str, scopes: &[String]) -> Result<Fetched> {
    let url = client.url(&format!("{repo}/manifests/{reference}"));
    let kind = JsonKind::Manifest;
    let name = format!("manifest {reference} from {}/{repo}", client.registry);
    let mut attempt = 0;
    let (bytes, content_type, header_digest) = loop {
        attempt += 1;
        let mut resp = client
            .send("GET", &url, &[("accept", MANIFEST_ACCEPT)], &Body::Empty, scopes, true)
            .with_context(|| format!("fetching manifest {reference}"))?;
        let status = resp.status().as_u16();
        if status == 404 {
            let what = if reference.starts_with("sha256:") {
                "manifest"
            } else {
                "tag"
            };
            bail!(
                "manifest unknown: {what} {reference} not found in {}/{repo}",
                client.registry
            );
        }
        if !(200..300).contains(&status) {
            return Err(status_error(client, &mut resp));
        }
        // Refused before reading when the registry says so; the read stops at the cap anyway
        // (Content-Length may be absent or lie).
        if let Some(len) = header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok()) {
            kind.check(&format!("{name} (by its Content-Length)"), len)?;
        }
        let content_type = header(&resp, "content-type");
        let header_digest = header(&resp, "docker-content-digest");
        match read_at_most(resp.body_mut().as_reader(), kind.cap()) {
            Ok(Some(b)) => break (b, content_type, header_digest),
            Ok(None) => return Err(kind.over_cap(&name)),
            Err(e) if attempt < TRIES => {
                client.debug(&format!("{url}: {}", describe_io(&e)));
            }
            Err(e) if is_timeout_io(&e) => {
                return Err(client.stall_error(&format!("downloading manifest {reference}"), attempt));
            }
            Err(e) => {
                return Err(anyhow!("{} (gave up after {attempt} tries)", describe_io(&e)))
                    .with_context(|| format!("downloading manifest {reference}"));
            }
        }
        std::thread::sleep(client.backoff(attempt));
    };
    let digest = Digest::of(&bytes);
    if reference.starts_with("sha256:") {
        if digest.as_str() != reference {
            bail!("digest mismatch: asked for manifest {reference}, the registry sent {digest}");
        }
    } else if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:"))
        && h != digest.as_str()
    {
        bail!("digest mismatch: the registry says manifest {h}, its content hashes to {digest}");
    }
    let media_type = manifest_media_type(content_type.as_deref(), &bytes)?;
    Ok(Fetched {
        bytes,
        media_type,
        digest,
    })
}

pub(crate) fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn short(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}

fn pull_inner(store: &Store, reference: &Reference, opts: &RegistryOptions, progress: &dyn Fn(&str)) -> Result<Image> {
    let platform = PlatformSpec::parse(opts.platform.as_deref())?;
    let client = Client::new(&reference.registry, opts)?;
    let repo = &reference.repository;
    let scopes = vec![format!("repository:{repo}:pull")];
    let wanted = reference.tag_or_digest();
    let mut fetched = fetch_manifest(&client, repo, &wanted, &scopes)?;
    if is_index(&fetched.media_type) {
        let index: Index = serde_json::from_slice(&fetched.bytes).context("parsing the image index")?;
        let chosen = select(&index, &platform)
            .with_context(|| format!("choosing a platform from the index of {reference}"))?
            .clone();
        progress(&format!("Selected {platform} manifest {}", short(&chosen.digest)));
        fetched = fetch_manifest(&client, repo, chosen.digest.as_str(), &scopes)?;
        if !is_manifest(&fetched.media_type) {
            bail!(
                "the index entry for {platform} is a {}, not an image manifest",
                fetched.media_type
            );
        }
    }
    let manifest: Manifest = serde_json::from_slice(&fetched.bytes).context("parsing the image manifest")?;

    // The config first (small), so a platform mismatch shows early.
    let config_desc = &manifest.config;
    JsonKind::Config.check(&format!("image config {}", config_desc.digest), config_desc.size)?;
    if store.has_blob(&config_desc.digest) {
        progress(&format!(
            "Copying config {} skipped: already exists",
            short(&config_desc.digest)
        ));
    } else {
        fetch_blob(store, &client, repo, config_desc, &scopes, progress)
            .with_context(|| format!("fetching config {}", config_desc.digest))?;
        progress(&format!("Copying config {} done", short(&config_desc.digest)));
    }
    let config: ImageConfig = serde_json::from_slice(&store.read_json_blob(&config_desc.digest, JsonKind::Config)?)
        .with_context(|| format!("parsing image config {}", config_desc.digest))?;
    if opts.platform.is_some() && (config.os != platform.os || config.architecture != platform.architecture) {
        progress(&format!(
            "Warning: the image is for {}/{}, not the requested {platform}",
            config.os, config.architecture
        ));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        bail!(
            "the image config lists {} layers but the manifest {}",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        );
    }
    for l in &manifest.layers {
        if Compression::of_media_type(&l.media_type).is_none() {
            bail!(
                "layer {} has media type {:?}, which kiln cannot unpack",
                l.digest,
                l.media_type
            );
        }
    }

    parallel(&manifest.layers, WORKERS, progress, |layer, progress| {
        if store.has_blob(&layer.digest) {
            progress(&format!(
                "Copying blob {} skipped: already exists",
                short(&layer.digest)
            ));
            return Ok(());
        }
        fetch_blob(store, &client, repo, layer, &scopes, progress)
            .with_context(|| format!("fetching blob {}", layer.digest))?;
        progress(&format!("Copying blob {} done", short(&layer.digest)));
        Ok(())
    })?;

    progress("Writing manifest to image destination");
    let stored = store.put_bytes(&fetched.bytes)?;
    if stored != fetched.digest {
        bail!("the store computed {stored} for manifest {}", fetched.digest);
    }
    let desc = Descriptor::new(&fetched.media_type, fetched.digest.clone(), fetched.bytes.len() as u64);
    store
        .tag(&reference.to_string(), &desc)
        .with_context(|| format!("tagging {reference}"))?;
    store.load_image(&reference.to_string())
}

enum CopyErr {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Streams one blob into the store, verifying size and digest; a dropped connection is
/// retried (from the start) up to [`TRIES`] times.
pub(crate) fn fetch_blob(
    store: &Store,
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    scopes: &[String],
    progress: &dyn Fn(&str),
) -> Result<()> {
    let url = client.url(&format!("{repo}/blobs/{}", desc.digest));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut resp = client.send("GET", &url, &[], &Body::Empty, scopes, true)?;
        let status = resp.status().as_u16();
        if status == 404 {
            bail!("blob unknown: {} is not in {}/{repo}", desc.digest, client.registry);
        }
        if !(200..300).contains(&status) {
            return Err(status_error(client, &mut resp));
        }
        if let Some(len) = header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok())
            && len > desc.size
        {
            bail!(
                "the registry announces {len} bytes (Content-Length), more than the {} bytes the manifest declares",
                desc.size
            );
        }
        let mut writer = store.blob_writer()?;
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut last_report = std::time::Instant::now();
        let result = loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(CopyErr::Read(e)),
            };
            total += n as u64;
            if total > desc.size {
                bail!(
                    "the registry sent more than the {} bytes the manifest declares",
                    desc.size
                );
            }
            if let Err(e) = writer.write_all(&buf[..n]) {
                break Err(CopyErr::Write(e));
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = std::time::Instant::now();
                progress(&format!(
                    "Copying blob {} {} / {}",
                    short(&desc.digest),
                    mib(total),
                    mib(desc.size)
                ));
            }
        };
        match result {
            Ok(()) if total == desc.size => {
                writer.commit(Some(&desc.digest))?;
                return Ok(());
            }
            Ok(()) if attempt >= TRIES => {
                bail!("the registry sent {total} of {} bytes", desc.size);
            }
            Err(CopyErr::Write(e)) => return Err(e).context("writing the blob into the store"),
            Err(CopyErr::Read(e)) if attempt >= TRIES && is_timeout_io(&e) => {
                return Err(client.stall_error(&format!("downloading blob {}", desc.digest), attempt));
            }
            Err(CopyErr::Read(e)) if attempt >= TRIES => bail!("{}", describe_io(&e)),
            _ => {}
        }
        drop(writer);
        std::thread::sleep(client.backoff(attempt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_detection() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_media_type(None, idx).unwrap(), MT_OCI_INDEX);
        assert_eq!(
            manifest_media_type(Some("application/vnd.docker.distribution.manifest.list.v2+json"), idx).unwrap(),
            MT_DOCKER_LIST
        );
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#;
        assert_eq!(
            manifest_media_type(Some("application/json; charset=utf-8"), m).unwrap(),
            MT_DOCKER_MANIFEST
        );
        let m = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(manifest_media_type(Some(MT_OCI_MANIFEST), m).unwrap(), MT_OCI_MANIFEST);
        assert_eq!(manifest_media_type(None, m).unwrap(), MT_OCI_MANIFEST);
        assert!(
            manifest_media_type(None, br#"{"schemaVersion":1,"fsLayers":[]}"#)
                .unwrap_err()
                .to_string()
                .contains("schema 1")
        );
        assert!(manifest_media_type(None, b"<html>").is_err());
        assert!(manifest_media_type(None, b"{}").is_err());
    }
}
