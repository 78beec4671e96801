//! OCI 1.1 referrers and cosign signatures on a registry.
//!
//! An artifact is pushed by digest; a registry with the referrers API answers the manifest PUT
//! with `OCI-Subject`, and lists referrers at `GET /v2/<name>/referrers/<digest>`. Any other
//! registry (Docker's registry 2.8, for one) gets the distribution spec's fallback: an index
//! of the referrers at the tag `sha256-<hex>`, read, extended and written back by the client.
//! Signatures follow cosign: a manifest at the tag `sha256-<hex>.sig` whose layers are the
//! signed payloads, extended with each new signature.

use super::client::{Body, Client, status_error};
use super::pull::{MANIFEST_ACCEPT, fetch_blob, header};
use super::{RegistryOptions, push_blob};
use crate::artifact::{
    ArtifactDescriptor, ArtifactManifest, EMPTY_JSON, ReferrersIndex, fallback_tag, signature_manifest, signature_tag,
};
use crate::digest::Digest;
use crate::image::{JsonKind, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, read_at_most};
use crate::reference::Reference;
use crate::store::Store;
use anyhow::{Context, Result, anyhow, bail};

/// One repository of one registry, with the scopes kiln asks for.
pub struct Remote {
    pub client: Client,
    pub repo: String,
    scopes: Vec<String>,
}

/// How the referrers of a subject were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `GET /v2/<name>/referrers/<digest>`.
    Api,
    /// The index at the `sha256-<hex>` tag (or nothing there yet).
    FallbackTag,
}

impl Remote {
    /// Connects to `r`'s repository; `push` asks for push rights too.
    pub fn new(r: &Reference, opts: &RegistryOptions, push: bool) -> Result<Remote> {
        let scope = if push { "pull,push" } else { "pull" };
        Ok(Remote {
            client: Client::new(&r.registry, opts)?,
            repo: r.repository.clone(),
            scopes: vec![format!("repository:{}:{scope}", r.repository)],
        })
    }

    /// GETs a manifest or index by tag or digest: its bytes and media type, None when absent.
    pub fn get_manifest(&self, reference: &str) -> Result<Option<(Vec<u8>, String)>> {
        let url = self.client.url(&format!("{}/manifests/{reference}", self.repo));
        let mut resp = self
            .client
            .send(
                "GET",
                &url,
                &[("accept", MANIFEST_ACCEPT)],
                &Body::Empty,
                &self.scopes,
                true,
            )
            .with_context(|| format!("fetching manifest {reference}"))?;
        match resp.status().as_u16() {
            404 => return Ok(None),
            200..=299 => {}
            _ => return Err(status_error(&self.client, &mut resp)),
        }
        let ct = header(&resp, "content-type").unwrap_or_default();
        let bytes = read_at_most(resp.body_mut().as_reader(), JsonKind::Manifest.cap())
            .with_context(|| format!("reading manifest {reference}"))?
            .ok_or_else(|| JsonKind::Manifest.over_cap(&format!("manifest {reference}")))?;
        if reference.starts_with("sha256:") && Digest::of(&bytes).as_str() != reference {
            bail!("digest mismatch: asked for manifest {reference}, the registry sent another");
        }
        let mt = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| ct.split(';').next().unwrap_or("").trim().to_string());
        Ok(Some((bytes, mt)))
    }

    /// The manifest descriptor a tag or digest points at (an index for a multi-platform image).
    pub fn resolve(&self, reference: &str) -> Result<ArtifactDescriptor> {
        let (bytes, mt) = self.get_manifest(reference)?.ok_or_else(|| {
            anyhow!(
                "manifest unknown: {reference} not found in {}/{}",
                self.client.registry,
                self.repo
            )
        })?;
        let mt = if mt.is_empty() { MT_OCI_MANIFEST.to_string() } else { mt };
        Ok(ArtifactDescriptor::of(&mt, &bytes))
    }

    /// PUTs a manifest at `reference` (tag or digest); returns whether the registry announced
    /// that it processed the subject (`OCI-Subject`: it has the referrers API).
    pub fn put_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<bool> {
        let url = self.client.url(&format!("{}/manifests/{reference}", self.repo));
        let mut resp = self
            .client
            .send(
                "PUT",
                &url,
                &[("content-type", media_type)],
                &Body::Bytes(bytes.to_vec()),
                &self.scopes,
                true,
            )
            .with_context(|| format!("uploading manifest {reference}"))?;
        if !(200..300).contains(&resp.status().as_u16()) {
            let e = status_error(&self.client, &mut resp);
            return Err(e.context(format!("the registry rejected manifest {reference}")));
        }
        Ok(header(&resp, "oci-subject").is_some())
    }

    /// The referrers of `subject`: through the API when the registry has it, else the index at
    /// the fallback tag (empty when there is none).
    pub fn referrers(&self, subject: &Digest) -> Result<(ReferrersIndex, Via)> {
        let url = self.client.url(&format!("{}/referrers/{subject}", self.repo));
        let mut resp = self
            .client
            .send(
                "GET",
                &url,
                &[("accept", MT_OCI_INDEX)],
                &Body::Empty,
                &self.scopes,
                true,
            )
            .context("asking for referrers")?;
        let ct = header(&resp, "content-type").unwrap_or_default();
        if resp.status().as_u16() == 200 && ct.starts_with(MT_OCI_INDEX) {
            let bytes = read_at_most(resp.body_mut().as_reader(), JsonKind::Manifest.cap())
                .context("reading the referrers list")?
                .ok_or_else(|| JsonKind::Manifest.over_cap("the referrers list"))?;
            let idx = serde_json::from_slice(&bytes).context("the registry's referrers list is not an index")?;
            return Ok((idx, Via::Api));
        }
        Ok((self.fallback_index(subject)?, Via::FallbackTag))
    }

    fn fallback_index(&self, subject: &Digest) -> Result<ReferrersIndex> {
        match self.get_manifest(&fallback_tag(subject))? {
            Some((bytes, _)) => serde_json::from_slice(&bytes)
                .with_context(|| format!("the {} tag is not a referrers index", fallback_tag(subject))),
            None => Ok(ReferrersIndex::default()),
        }
    }

    /// Uploads a blob from the store (skipped when the registry has it).
    pub fn push_blob(&self, store: &Store, d: &ArtifactDescriptor) -> Result<()> {
        push_blob(store, &self.client, &self.repo, &d.to_descriptor(), &self.scopes, None)
            .with_context(|| format!("uploading blob {}", d.digest))?;
        Ok(())
    }

    /// Fetches a blob into the store (verified) unless it is there already.
    pub fn fetch_blob(&self, store: &Store, d: &ArtifactDescriptor) -> Result<()> {
        if store.has_blob(&d.digest) {
            return Ok(());
        }
        fetch_blob(
            store,
            &self.client,
            &self.repo,
            &d.to_descriptor(),
            &self.scopes,
            &|_| {},
        )
    }

    /// Pushes an artifact of the store (blobs, then the manifest by digest) and makes it
    /// findable from its subject: by the registry itself (referrers API) or through the
    /// fallback tag's index. Returns how.
    pub fn push_artifact(&self, store: &Store, m: &ArtifactManifest) -> Result<Via> {
        let subject = m.subject.as_ref().context("the artifact has no subject")?;
        store.put_bytes(EMPTY_JSON)?;
        for b in std::iter::once(&m.config).chain(&m.layers) {
            self.push_blob(store, b)?;
        }
        let bytes = m.to_bytes();
        let digest = Digest::of(&bytes);
        if self.put_manifest(digest.as_str(), MT_OCI_MANIFEST, &bytes)? {
            return Ok(Via::Api);
        }
        let mut idx = self.fallback_index(&subject.digest)?;
        let d = m.referrer_descriptor(&bytes);
        if !idx.manifests.contains(&d) {
            idx.add(d);
            self.put_manifest(&fallback_tag(&subject.digest), MT_OCI_INDEX, &idx.to_bytes())?;
        }
        Ok(Via::FallbackTag)
    }

    /// The cosign signature manifest of `subject` on the registry, if any.
    pub fn signatures(&self, subject: &Digest) -> Result<Option<ArtifactManifest>> {
        let tag = signature_tag(subject);
        match self.get_manifest(&tag)? {
            Some((bytes, _)) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("{tag} is not a signature manifest"))?,
            )),
            None => Ok(None),
        }
    }

    /// Adds signature layers (blobs in the store) to `subject`'s signature manifest on the
    /// registry (cosign's `sha256-<hex>.sig` tag), keeping the signatures already there.
    pub fn push_signatures(&self, store: &Store, subject: &Digest, layers: &[ArtifactDescriptor]) -> Result<()> {
        let mut all = match self.signatures(subject)? {
            Some(m) => m.layers,
            None => Vec::new(),
        };
        let before = all.clone();
        for l in layers {
            if !all
                .iter()
                .any(|x| x.digest == l.digest && x.annotations == l.annotations)
            {
                all.push(l.clone());
            }
        }
        if all == before && !before.is_empty() {
            return Ok(());
        }
        for l in layers {
            self.push_blob(store, l)?;
        }
        let (m, config) = signature_manifest(all);
        store.put_bytes(&config)?;
        self.push_blob(store, &m.config)?;
        let tag = signature_tag(subject);
        self.put_manifest(&tag, MT_OCI_MANIFEST, &m.to_bytes())?;
        Ok(())
    }
}

/// Is `mt` an image manifest media type a signature can name?
pub fn is_signable(mt: &str) -> bool {
    mt == MT_OCI_MANIFEST || mt == MT_DOCKER_MANIFEST || crate::image::is_index(mt)
}
