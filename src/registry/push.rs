//! `kiln push`: blobs the registry has are skipped (HEAD), blobs known from another repository
//! of the same registry are mounted, the rest are uploaded (monolithic below 8 MiB, chunked
//! PATCH above, resumed from the registry's `Range` after a dropped connection), then the
//! manifest is PUT by tag.

use super::client::{Body, Client, TRIES, query_escape, status_error};
use super::pull::header;
use super::{RegistryOptions, parallel};
use crate::digest::Digest;
use crate::image::*;
use crate::reference::Reference;
use crate::store::{ManifestFormat, Store};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;

/// Blobs smaller than this go up in one PUT.
const MONOLITHIC_LIMIT: u64 = 8 << 20;
/// PATCH chunk size for bigger blobs.
const CHUNK: u64 = 16 << 20;
/// Parallel blob uploads.
const WORKERS: usize = 4;

/// Pushes `image` from `store` to `dest` and returns the digest of the pushed manifest.
/// `format` converts the manifest (and config/layer media types) to OCI or Docker v2s2.
pub fn push(
    store: &Store,
    image: &Image,
    dest: &Reference,
    opts: &RegistryOptions,
    format: Option<ManifestFormat>,
    progress: &dyn Fn(&str),
) -> Result<Digest> {
    push_inner(store, image, dest, opts, format, progress).with_context(|| format!("pushing {dest}"))
}

/// Re-expresses `manifest` in the OCI or Docker v2 schema 2 media types. Blobs stay the
/// same bytes; only descriptors' media types change. Docker manifests cannot carry zstd layers.
pub fn convert_manifest(manifest: &Manifest, format: &ManifestFormat) -> Result<Manifest> {
    let mut m = manifest.clone();
    match format {
        ManifestFormat::Oci => {
            m.media_type = Some(MT_OCI_MANIFEST.to_string());
            if m.config.media_type == MT_DOCKER_CONFIG {
                m.config.media_type = MT_OCI_CONFIG.to_string();
            }
            for l in &mut m.layers {
                l.media_type = match l.media_type.as_str() {
                    MT_DOCKER_LAYER_GZIP => MT_OCI_LAYER_GZIP.to_string(),
                    MT_DOCKER_LAYER => MT_OCI_LAYER.to_string(),
                    MT_DOCKER_LAYER_FOREIGN => {
                        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".to_string()
                    }
                    other => other.to_string(),
                };
            }
        }
        ManifestFormat::Docker => {
            m.media_type = Some(MT_DOCKER_MANIFEST.to_string());
            m.annotations.clear();
            if m.config.media_type == MT_OCI_CONFIG {
                m.config.media_type = MT_DOCKER_CONFIG.to_string();
            }
            m.config.annotations.clear();
            for l in &mut m.layers {
                l.media_type = match l.media_type.as_str() {
                    MT_OCI_LAYER_GZIP => MT_DOCKER_LAYER_GZIP.to_string(),
                    MT_OCI_LAYER => MT_DOCKER_LAYER.to_string(),
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                        MT_DOCKER_LAYER_FOREIGN.to_string()
                    }
                    MT_OCI_LAYER_ZSTD => {
                        bail!(
                            "layer {} is zstd-compressed, which Docker v2 schema 2 manifests cannot carry (push with --format oci)",
                            l.digest
                        )
                    }
                    other => other.to_string(),
                };
                l.annotations.clear();
            }
        }
    }
    Ok(m)
}

/// The media type of a stored manifest: its `mediaType`, else told by the config type.
fn stored_media_type(m: &Manifest) -> String {
    match &m.media_type {
        Some(mt) => mt.clone(),
        None if m.config.media_type == MT_DOCKER_CONFIG => MT_DOCKER_MANIFEST.to_string(),
        None => MT_OCI_MANIFEST.to_string(),
    }
}

fn short(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}

/// Blobs that images named in the store hold in other repositories of `dest`'s registry:
/// candidates for a cross-repository mount.
fn mount_sources(store: &Store, dest: &Reference) -> HashMap<Digest, String> {
    let mut out = HashMap::new();
    let Ok(list) = store.list() else { return out };
    for (name, desc) in list {
        let Ok(r) = Reference::parse(&name) else {
            continue;
        };
        if r.registry != dest.registry || r.repository == dest.repository || !is_manifest(&desc.media_type) {
            continue;
        }
        let Ok(bytes) = store.read_blob(&desc.digest) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        for d in m.layers.iter().chain(std::iter::once(&m.config)) {
            out.entry(d.digest.clone()).or_insert_with(|| r.repository.clone());
        }
    }
    out
}

fn push_inner(
    store: &Store,
    image: &Image,
    dest: &Reference,
    opts: &RegistryOptions,
    format: Option<ManifestFormat>,
    progress: &dyn Fn(&str),
) -> Result<Digest> {
    let stored_mt = stored_media_type(&image.manifest);
    let (bytes, media_type) = match &format {
        Some(f) => {
            let target = match f {
                ManifestFormat::Oci => MT_OCI_MANIFEST,
                ManifestFormat::Docker => MT_DOCKER_MANIFEST,
            };
            if target == stored_mt {
                (store.read_blob(&image.manifest_digest)?, stored_mt)
            } else {
                let m = convert_manifest(&image.manifest, f)?;
                (serde_json::to_vec(&m)?, target.to_string())
            }
        }
        None => (store.read_blob(&image.manifest_digest)?, stored_mt),
    };
    let digest = Digest::of(&bytes);
    if let Some(d) = &dest.digest
        && d != &digest
    {
        bail!("the destination names digest {d}, but the manifest to push is {digest}");
    }

    let client = Client::new(&dest.registry, opts)?;
    let repo = dest.repository.as_str();
    let scopes = vec![format!("repository:{repo}:pull,push")];
    let sources = mount_sources(store, dest);

    let mut blobs: Vec<(&str, &Descriptor)> = image.manifest.layers.iter().map(|l| ("blob", l)).collect();
    blobs.push(("config", &image.manifest.config));
    parallel(&blobs, WORKERS, progress, |(kind, desc), progress| {
        if !store.has_blob(&desc.digest) {
            bail!("{kind} {} is missing from the local store", desc.digest);
        }
        let how = push_blob(store, &client, repo, desc, &scopes, sources.get(&desc.digest))
            .with_context(|| format!("uploading {kind} {}", desc.digest))?;
        progress(&format!("Copying {kind} {} {how}", short(&desc.digest)));
        Ok(())
    })?;

    progress("Writing manifest to image destination");
    let reference = dest.tag.clone().unwrap_or_else(|| digest.to_string());
    let url = client.url(&format!("{repo}/manifests/{reference}"));
    let mut resp = client
        .send(
            "PUT",
            &url,
            &[("content-type", &media_type)],
            &Body::Bytes(bytes),
            &scopes,
            true,
        )
        .context("uploading the manifest")?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let e = status_error(&client, &mut resp);
        return Err(e.context("the registry rejected the manifest"));
    }
    if let Some(h) = header(&resp, "docker-content-digest").filter(|h| h.starts_with("sha256:"))
        && h != digest.as_str()
    {
        bail!("the registry stored the manifest as {h}, but kiln sent {digest}");
    }
    Ok(digest)
}

/// Uploads one blob unless the registry has it; returns what happened ("done",
/// "skipped: already exists", "mounted from REPO").
pub(crate) fn push_blob(
    store: &Store,
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    scopes: &[String],
    mount_from: Option<&String>,
) -> Result<String> {
    let url = client.url(&format!("{repo}/blobs/{}", desc.digest));
    let mut head = client.send("HEAD", &url, &[], &Body::Empty, scopes, true)?;
    match head.status().as_u16() {
        200 => return Ok("skipped: already exists".to_string()),
        401 | 403 => return Err(status_error(client, &mut head)),
        _ => {}
    }
    let mut session = None;
    if let Some(from) = mount_from {
        let mount_scopes = vec![scopes[0].clone(), format!("repository:{from}:pull")];
        let url = client.url(&format!(
            "{repo}/blobs/uploads/?mount={}&from={}",
            query_escape(desc.digest.as_str()),
            query_escape(from)
        ));
        let resp = client.send(
            "POST",
            &url,
            &[("content-length", "0")],
            &Body::Empty,
            &mount_scopes,
            true,
        )?;
        match resp.status().as_u16() {
            201 => return Ok(format!("mounted from {from}")),
            202 => session = header(&resp, "location").map(|l| client.resolve_location(&l)),
            _ => {}
        }
    }
    let path = store.blob_path(&desc.digest);
    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size != desc.size {
        bail!("the stored blob has {size} bytes, the manifest declares {}", desc.size);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let location = match session.take() {
            Some(l) => l,
            None => start_upload(client, repo, scopes)?,
        };
        let result = if size < MONOLITHIC_LIMIT {
            let put = with_query(&location, &format!("digest={}", query_escape(desc.digest.as_str())));
            let body = Body::File {
                path: path.clone(),
                offset: 0,
                len: size,
            };
            let headers = [("content-type", "application/octet-stream")];
            finish(client, &put, &headers, &body, scopes, false)
        } else {
            upload_chunked(client, &location, &path, size, &desc.digest, scopes)
        };
        match result {
            Ok(()) => return Ok("done".to_string()),
            Err(e) if attempt >= TRIES || is_fatal(&e) => return Err(e),
            Err(e) => {
                client.debug(&format!("upload of {} failed ({e:#}); starting again", desc.digest));
                std::thread::sleep(client.backoff(attempt));
            }
        }
    }
}

/// Errors that another attempt will not fix.
fn is_fatal(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("try `kiln login")
        || s.contains("were not accepted")
        || s.contains("access denied")
        || s.contains("starting an upload: HTTP 4")
}

fn with_query(url: &str, q: &str) -> String {
    format!("{url}{}{q}", if url.contains('?') { '&' } else { '?' })
}

/// POST /v2/<repo>/blobs/uploads/ → the upload URL.
fn start_upload(client: &Client, repo: &str, scopes: &[String]) -> Result<String> {
    let url = client.url(&format!("{repo}/blobs/uploads/"));
    let mut resp = client.send("POST", &url, &[("content-length", "0")], &Body::Empty, scopes, true)?;
    if resp.status().as_u16() != 202 {
        return Err(status_error(client, &mut resp).context("starting an upload"));
    }
    let loc = header(&resp, "location").ok_or_else(|| anyhow!("the registry started an upload without a Location"))?;
    Ok(client.resolve_location(&loc))
}

/// A PUT that completes an upload (201 expected).
fn finish(
    client: &Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &Body,
    scopes: &[String],
    retry: bool,
) -> Result<()> {
    let mut resp = client.send("PUT", url, headers, body, scopes, retry)?;
    match resp.status().as_u16() {
        201 | 204 | 200 => Ok(()),
        _ => Err(status_error(client, &mut resp)),
    }
}

/// `Range: 0-N` → N+1 bytes received ("0-0" is read as nothing received).
fn parse_range_end(r: &str) -> Option<u64> {
    let r = r.trim().strip_prefix("bytes=").unwrap_or(r.trim());
    let (_, end) = r.split_once('-')?;
    let end: u64 = end.trim().parse().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

/// PATCH the blob in chunks; after a failed chunk ask the registry how much it has (GET on
/// the upload URL → `Range`) and go on from there.
fn upload_chunked(
    client: &Client,
    location: &str,
    path: &std::path::Path,
    size: u64,
    digest: &Digest,
    scopes: &[String],
) -> Result<()> {
    let mut loc = location.to_string();
    let mut offset = 0u64;
    let mut failures = 0;
    while offset < size {
        let len = CHUNK.min(size - offset);
        let range = format!("{offset}-{}", offset + len - 1);
        let headers = [
            ("content-type", "application/octet-stream"),
            ("content-range", range.as_str()),
        ];
        let body = Body::File {
            path: path.to_path_buf(),
            offset,
            len,
        };
        let err = match client.send("PATCH", &loc, &headers, &body, scopes, false) {
            Ok(resp) if resp.status().as_u16() == 202 => {
                if let Some(l) = header(&resp, "location") {
                    loc = client.resolve_location(&l);
                }
                offset = header(&resp, "range")
                    .and_then(|r| parse_range_end(&r))
                    .unwrap_or(offset + len);
                failures = 0;
                continue;
            }
            Ok(mut resp) if (400..500).contains(&resp.status().as_u16()) && resp.status().as_u16() != 416 => {
                return Err(status_error(client, &mut resp).context(format!("uploading bytes {range}")));
            }
            Ok(mut resp) => status_error(client, &mut resp),
            Err(e) => e,
        };
        failures += 1;
        client.debug(&format!("PATCH {range} failed ({err:#}); asking where the upload is"));
        if failures >= TRIES {
            return Err(err.context(format!("uploading bytes {range}")));
        }
        std::thread::sleep(client.backoff(failures));
        // Where is the upload now?
        let mut status = client.send("GET", &loc, &[], &Body::Empty, scopes, true)?;
        if status.status().as_u16() != 204 {
            return Err(status_error(client, &mut status).context("asking the registry how much of the upload arrived"));
        }
        if let Some(l) = header(&status, "location") {
            loc = client.resolve_location(&l);
        }
        offset = header(&status, "range").and_then(|r| parse_range_end(&r)).unwrap_or(0);
        client.debug(&format!("resuming the upload at byte {offset}"));
    }
    let put = with_query(&loc, &format!("digest={}", query_escape(digest.as_str())));
    finish(client, &put, &[("content-length", "0")], &Body::Empty, scopes, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config_mt: &str, layer_mts: &[&str]) -> Manifest {
        let d = Digest::of(b"x");
        Manifest {
            schema_version: 2,
            media_type: None,
            config: Descriptor::new(config_mt, d.clone(), 1),
            layers: layer_mts.iter().map(|mt| Descriptor::new(mt, d.clone(), 1)).collect(),
            annotations: Default::default(),
        }
    }

    #[test]
    fn converts_media_types() {
        let oci = manifest(MT_OCI_CONFIG, &[MT_OCI_LAYER_GZIP, MT_OCI_LAYER]);
        let docker = convert_manifest(&oci, &ManifestFormat::Docker).unwrap();
        assert_eq!(docker.media_type.as_deref(), Some(MT_DOCKER_MANIFEST));
        assert_eq!(docker.config.media_type, MT_DOCKER_CONFIG);
        assert_eq!(docker.layers[0].media_type, MT_DOCKER_LAYER_GZIP);
        assert_eq!(docker.layers[1].media_type, MT_DOCKER_LAYER);
        let back = convert_manifest(&docker, &ManifestFormat::Oci).unwrap();
        assert_eq!(back.media_type.as_deref(), Some(MT_OCI_MANIFEST));
        assert_eq!(back.config.media_type, MT_OCI_CONFIG);
        assert_eq!(back.layers, oci.layers);
        let zstd = manifest(MT_OCI_CONFIG, &[MT_OCI_LAYER_ZSTD]);
        assert!(
            convert_manifest(&zstd, &ManifestFormat::Docker)
                .unwrap_err()
                .to_string()
                .contains("--format oci")
        );
        assert_eq!(stored_media_type(&docker), MT_DOCKER_MANIFEST);
        assert_eq!(stored_media_type(&manifest(MT_DOCKER_CONFIG, &[])), MT_DOCKER_MANIFEST);
        assert_eq!(stored_media_type(&oci), MT_OCI_MANIFEST);
    }

    #[test]
    fn ranges_and_queries() {
        assert_eq!(parse_range_end("0-1023"), Some(1024));
        assert_eq!(parse_range_end("bytes=0-99"), Some(100));
        assert_eq!(parse_range_end("0-0"), Some(0));
        assert_eq!(parse_range_end("junk"), None);
        assert_eq!(
            with_query("http://h/u?_state=x", "digest=d"),
            "http://h/u?_state=x&digest=d"
        );
        assert_eq!(with_query("http://h/u", "digest=d"), "http://h/u?digest=d");
    }
}
