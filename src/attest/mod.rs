//! Supply-chain attestations: SBOMs, SLSA provenance and cosign-format signatures, attached
//! to an image without changing its manifest or index.
//!
//! - [`sbom`] reads the package databases of an image's final filesystem (from its layers)
//!   and writes SPDX 2.3 or CycloneDX 1.5 JSON; [`provenance`] writes a SLSA v1 statement.
//! - Each becomes an OCI 1.1 artifact (empty config, one layer, `subject` = the image
//!   manifest), stored as a referrer in kiln's store ([`crate::store::referrers`]), pushed
//!   through the referrers API or the `sha256-<hex>` fallback tag
//!   ([`crate::registry::referrers`]), and written into OCI layouts/archives ([`layout`]).
//! - [`sign`] makes cosign signatures (ECDSA P-256 over the simple-signing payload), stored as
//!   cosign does: a manifest at `sha256-<hex>.sig` whose layers are the signed payloads.
//!   Attestations attached at build time are signed too when a key is given, so a policy can
//!   require signed attestations.
//!
//! Level 2 of the layering (beside `layer` and `registry`, which it uses); only the CLI calls it.

pub mod binaries;
pub mod layout;
pub mod licenses;
pub mod materials;
pub mod provenance;
pub mod sbom;
pub mod sign;

use crate::artifact::{
    ANNOTATION_COSIGN_SIGNATURE, ANNOTATION_CREATED, ANNOTATION_PREDICATE_TYPE, ArtifactDescriptor, ArtifactManifest,
    EMPTY_JSON, MT_COSIGN_SIMPLESIGNING, MT_CYCLONEDX, MT_IN_TOTO, MT_SPDX, SLSA_PROVENANCE_V1, signature_manifest,
};
use crate::digest::Digest;
use crate::image::{Image, JsonKind, MT_OCI_MANIFEST};
use crate::registry::referrers::Remote;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The descriptor of an image's manifest in the store (what attestations name as subject).
pub fn subject_of(store: &Store, image: &Image) -> Result<ArtifactDescriptor> {
    let bytes = store.read_json_blob(&image.manifest_digest, JsonKind::Manifest)?;
    let mt = image
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| MT_OCI_MANIFEST.to_string());
    Ok(ArtifactDescriptor::of(&mt, &bytes))
}

/// Stores `payload` as an artifact of `artifact_type` referring to `subject`.
pub fn attach(
    store: &Store,
    subject: &ArtifactDescriptor,
    artifact_type: &str,
    payload: &[u8],
    mut annotations: BTreeMap<String, String>,
    created: Option<&str>,
) -> Result<(ArtifactDescriptor, ArtifactManifest)> {
    store.put_bytes(payload)?;
    store.put_bytes(EMPTY_JSON)?;
    if let Some(c) = created {
        annotations.insert(ANNOTATION_CREATED.to_string(), c.to_string());
    }
    let mut subj = subject.clone();
    subj.annotations.clear();
    subj.artifact_type = None;
    subj.data = None;
    let m = ArtifactManifest::new(
        artifact_type,
        ArtifactDescriptor::of(artifact_type, payload),
        subj,
        annotations,
    );
    let d = store.add_referrer(&m)?;
    Ok((d, m))
}

/// Attaches an SBOM document.
pub fn attach_sbom(
    store: &Store,
    subject: &ArtifactDescriptor,
    format: sbom::Format,
    doc: &[u8],
    created: Option<&str>,
) -> Result<ArtifactDescriptor> {
    Ok(attach(store, subject, format.media_type(), doc, BTreeMap::new(), created)?.0)
}

/// Attaches an in-toto provenance statement.
pub fn attach_provenance(
    store: &Store,
    subject: &ArtifactDescriptor,
    statement: &[u8],
    created: Option<&str>,
) -> Result<ArtifactDescriptor> {
    let mut a = BTreeMap::new();
    a.insert(ANNOTATION_PREDICATE_TYPE.to_string(), SLSA_PROVENANCE_V1.to_string());
    Ok(attach(store, subject, MT_IN_TOTO, statement, a, created)?.0)
}

/// A signature layer for `digest` under `identity`, its payload stored as a blob.
pub fn signature_layer(
    store: &Store,
    digest: &Digest,
    identity: &str,
    key: &sign::PrivateKey,
) -> Result<ArtifactDescriptor> {
    let payload = sign::payload(digest, identity);
    store.put_bytes(&payload)?;
    let mut l = ArtifactDescriptor::of(MT_COSIGN_SIMPLESIGNING, &payload);
    l.annotations
        .insert(ANNOTATION_COSIGN_SIGNATURE.to_string(), key.sign(&payload));
    Ok(l)
}

/// Signs `digest` in the store (added to the signatures already there).
pub fn sign_local(
    store: &Store,
    digest: &Digest,
    identity: &str,
    key: &sign::PrivateKey,
) -> Result<ArtifactDescriptor> {
    let l = signature_layer(store, digest, identity, key)?;
    let mut layers = store.signatures(digest)?.map(|m| m.layers).unwrap_or_default();
    if !layers.contains(&l) {
        layers.push(l.clone());
    }
    let (m, config) = signature_manifest(layers);
    store.put_bytes(&config)?;
    store.set_signatures(digest, &m)?;
    Ok(l)
}

/// Signs `subject` and every attestation attached to it in the store.
pub fn sign_with_attestations(
    store: &Store,
    subject: &Digest,
    identity: &str,
    key: &sign::PrivateKey,
) -> Result<usize> {
    sign_local(store, subject, identity, key)?;
    let mut n = 1;
    for (d, _) in store.referrers(subject)? {
        sign_local(store, &d.digest, identity, key)?;
        n += 1;
    }
    Ok(n)
}

/// What [`push`] did.
#[derive(Debug, Default, Clone)]
pub struct PushReport {
    pub referrers: usize,
    pub signatures: usize,
    /// Whether the registry has the referrers API (else the fallback tag was used).
    pub api: Option<bool>,
}

/// Pushes what the store has attached to `subject` (referrers, their signatures, the
/// subject's signatures) to the repository `remote`, where the subject must be already.
pub fn push(store: &Store, subject: &Digest, remote: &Remote) -> Result<PushReport> {
    let mut rep = PushReport::default();
    for (d, m) in store.referrers(subject)? {
        let via = remote
            .push_artifact(store, &m)
            .with_context(|| format!("pushing attestation {}", d.digest))?;
        rep.api = Some(via == crate::registry::referrers::Via::Api);
        rep.referrers += 1;
        if let Some(s) = store.signatures(&d.digest)? {
            remote.push_signatures(store, &d.digest, &s.layers)?;
            rep.signatures += s.layers.len();
        }
    }
    if let Some(s) = store.signatures(subject)? {
        remote
            .push_signatures(store, subject, &s.layers)
            .context("pushing signatures")?;
        rep.signatures += s.layers.len();
    }
    Ok(rep)
}

/// Where attestations are read from.
pub enum Source<'a> {
    /// kiln's store.
    Local(&'a Store),
    /// A registry repository (blobs are fetched into the store, verified, to be read).
    Remote(&'a Remote, &'a Store),
}

impl Source<'_> {
    fn store(&self) -> &Store {
        match self {
            Source::Local(s) | Source::Remote(_, s) => s,
        }
    }

    /// The referrers of `subject`, with their manifests.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<(ArtifactDescriptor, ArtifactManifest)>> {
        match self {
            Source::Local(s) => s.referrers(subject),
            Source::Remote(r, _) => {
                let (idx, _) = r.referrers(subject)?;
                let mut out = Vec::new();
                for d in idx.manifests {
                    let Some((bytes, _)) = r.get_manifest(d.digest.as_str())? else {
                        continue;
                    };
                    let m: ArtifactManifest = serde_json::from_slice(&bytes)
                        .with_context(|| format!("referrer {} is not a manifest", d.digest))?;
                    if m.subject.as_ref().map(|s| &s.digest) != Some(subject) {
                        continue;
                    }
                    out.push((d, m));
                }
                Ok(out)
            }
        }
    }

    /// The cosign signature manifest of `subject`.
    pub fn signatures(&self, subject: &Digest) -> Result<Option<ArtifactManifest>> {
        match self {
            Source::Local(s) => s.signatures(subject),
            Source::Remote(r, _) => r.signatures(subject),
        }
    }

    /// A (small) blob's bytes, digest-verified.
    pub fn blob(&self, d: &ArtifactDescriptor) -> Result<Vec<u8>> {
        if let Source::Remote(r, s) = self {
            r.fetch_blob(s, d)?;
        }
        self.store().read_blob(&d.digest)
    }
}

/// A valid signature found by [`verify`].
#[derive(Clone, Debug)]
pub struct Verified {
    pub claim: sign::Claim,
}

/// Checks the signatures of `subject`: Ok with the valid ones (at least one), an error
/// naming why each failed otherwise. `repository` (`registry/repo`) must match the signed
/// identity's repository when given.
pub fn verify(
    src: &Source,
    subject: &Digest,
    repository: Option<&str>,
    key: &sign::PublicKey,
) -> Result<Vec<Verified>> {
    let Some(m) = src.signatures(subject)? else {
        bail!("no signatures found for {subject}");
    };
    let mut ok = Vec::new();
    let mut why = Vec::new();
    for l in m.layers.iter().filter(|l| l.media_type == MT_COSIGN_SIMPLESIGNING) {
        let Some(sig) = l.annotations.get(ANNOTATION_COSIGN_SIGNATURE) else {
            why.push(format!("layer {} carries no signature", l.digest));
            continue;
        };
        let payload = match src.blob(l) {
            Ok(p) => p,
            Err(e) => {
                why.push(format!("{e:#}"));
                continue;
            }
        };
        match key
            .verify(&payload, sig)
            .and_then(|()| sign::check_payload(&payload, subject, repository))
        {
            Ok(claim) => ok.push(Verified { claim }),
            Err(e) => why.push(format!("{e:#}")),
        }
    }
    if ok.is_empty() {
        if why.is_empty() {
            bail!("no signatures found for {subject}");
        }
        bail!("no valid signature for {subject}: {}", why.join("; "));
    }
    Ok(ok)
}

/// `kiln verify --policy FILE`: which attestations must be attached (and signed).
///
/// ```json
/// {"require": [{"type": "sbom"}, {"type": "provenance", "signed": true}]}
/// ```
/// `type` is `sbom` (SPDX or CycloneDX), `spdx`, `cyclonedx`, `provenance` (SLSA v1
/// in-toto statement) or an artifact media type.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub require: Vec<Requirement>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    #[serde(rename = "type")]
    pub kind: String,
    /// The attestation must carry a valid signature by the key too.
    #[serde(default)]
    pub signed: bool,
}

impl Requirement {
    fn matches(&self, m: &ArtifactManifest) -> bool {
        let t = m.kind();
        match self.kind.as_str() {
            "sbom" => t == MT_SPDX || t == MT_CYCLONEDX,
            "spdx" => t == MT_SPDX,
            "cyclonedx" => t == MT_CYCLONEDX,
            "provenance" | "slsa" => {
                t == MT_IN_TOTO
                    && m.annotations
                        .get(ANNOTATION_PREDICATE_TYPE)
                        .is_some_and(|p| p == SLSA_PROVENANCE_V1)
            }
            other => t == other,
        }
    }
}

/// Checks `policy` against what is attached to `subject`; returns one line per requirement
/// met, or an error naming the first requirement not met.
pub fn check_policy(
    src: &Source,
    subject: &Digest,
    repository: Option<&str>,
    key: &sign::PublicKey,
    policy: &Policy,
) -> Result<Vec<String>> {
    let refs = src.referrers(subject)?;
    let mut lines = Vec::new();
    for r in &policy.require {
        let found: Vec<&(ArtifactDescriptor, ArtifactManifest)> = refs.iter().filter(|(_, m)| r.matches(m)).collect();
        if found.is_empty() {
            bail!("policy: no {} attestation is attached to {subject}", r.kind);
        }
        if r.signed {
            let signed = found
                .iter()
                .find(|(d, _)| verify(src, &d.digest, repository, key).is_ok());
            match signed {
                Some((d, _)) => lines.push(format!("{}: {} (signed)", r.kind, d.digest)),
                None => bail!(
                    "policy: the {} attestation of {subject} is not signed by the key",
                    r.kind
                ),
            }
        } else {
            lines.push(format!("{}: {}", r.kind, found[0].0.digest));
        }
    }
    Ok(lines)
}

/// A one-word name for an artifact type, for listings.
pub fn kind_name(m: &ArtifactManifest) -> String {
    let t = m.kind();
    match t.as_str() {
        MT_SPDX => "sbom (spdx)".into(),
        MT_CYCLONEDX => "sbom (cyclonedx)".into(),
        MT_IN_TOTO => match m.annotations.get(ANNOTATION_PREDICATE_TYPE) {
            Some(p) if p == SLSA_PROVENANCE_V1 => "provenance (slsa v1)".into(),
            Some(p) => format!("in-toto ({p})"),
            None => "in-toto".into(),
        },
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    #[test]
    fn attach_sign_verify_and_policy_locally() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let img = s
            .write_image(&ImageConfig::empty(), vec![], crate::store::ManifestFormat::Oci)
            .unwrap();
        let subject = subject_of(&s, &img).unwrap();
        s.tag("example.com/app:1", &subject.to_descriptor()).unwrap();
        attach_sbom(
            &s,
            &subject,
            sbom::Format::Spdx,
            b"{\"spdxVersion\":\"SPDX-2.3\"}",
            None,
        )
        .unwrap();
        attach_provenance(&s, &subject, b"{}", Some("1970-01-01T00:00:00Z")).unwrap();
        let key = sign::PrivateKey::generate().unwrap();
        let src = Source::Local(&s);
        assert!(verify(&src, &subject.digest, None, &key.public_key()).is_err());
        let policy: Policy =
            serde_json::from_str(r#"{"require":[{"type":"sbom"},{"type":"provenance","signed":true}]}"#).unwrap();
        let e = check_policy(&src, &subject.digest, None, &key.public_key(), &policy).unwrap_err();
        assert!(format!("{e}").contains("not signed"), "{e}");
        assert_eq!(
            sign_with_attestations(&s, &subject.digest, "example.com/app:1", &key).unwrap(),
            3
        );
        let v = verify(&src, &subject.digest, Some("example.com/app"), &key.public_key()).unwrap();
        assert_eq!(v.len(), 1);
        assert!(verify(&src, &subject.digest, Some("example.com/other"), &key.public_key()).is_err());
        let other = sign::PrivateKey::generate().unwrap().public_key();
        assert!(verify(&src, &subject.digest, None, &other).is_err());
        let lines = check_policy(&src, &subject.digest, None, &key.public_key(), &policy).unwrap();
        assert_eq!(lines.len(), 2);
        let kinds: Vec<String> = src
            .referrers(&subject.digest)
            .unwrap()
            .iter()
            .map(|(_, m)| kind_name(m))
            .collect();
        assert!(kinds.contains(&"provenance (slsa v1)".to_string()), "{kinds:?}");
        // The image itself is untouched.
        assert_eq!(s.resolve("example.com/app:1").unwrap().unwrap().digest, subject.digest);
    }
}
