//! Attestations in OCI layouts and oci-archives (`-o type=oci`, `kiln save`, `kiln push
//! oci:…`): written the way a registry without the referrers API holds them, so the layout
//! mirrors the registry: an index at the ref name `sha256-<hex>` listing the referrers of the
//! image manifest, and cosign's `sha256-<hex>.sig` signature manifests. The image's own entry
//! is not touched. The extra entries carry `io.kiln.attachment-of`, so `kiln load` skips them.
//!
//! A Docker-format image is written into a layout as an OCI copy of its manifest (another
//! digest): its attestations are re-pointed at that copy; its signatures, which name the
//! Docker manifest's digest, are left out.

use super::subject_of;
use crate::archive::Transport;
use crate::artifact::{ArtifactDescriptor, ArtifactManifest, ReferrersIndex, fallback_tag, signature_tag};
use crate::digest::Digest;
use crate::image::{ANNOTATION_REF_NAME, Descriptor, Image, Index, MT_OCI_INDEX, MT_OCI_MANIFEST};
use crate::store::Store;
use crate::store::referrers::{ANNOTATION_ATTACHMENT, ANNOTATION_ATTACHMENT_OF};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

/// What goes into the layout: new index entries (with their manifest bytes) and the store
/// blobs they need.
#[derive(Default)]
struct Plan {
    entries: Vec<(Descriptor, Vec<u8>)>,
    blobs: BTreeSet<Digest>,
    /// Manifest bytes not in the store (re-pointed artifacts, indexes).
    extra: BTreeMap<Digest, Vec<u8>>,
}

fn entry(name: &str, subject: &Digest, kind: &str, mt: &str, bytes: &[u8]) -> Descriptor {
    let mut d = Descriptor::new(mt, Digest::of(bytes), bytes.len() as u64);
    d.annotations.insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
    d.annotations
        .insert(ANNOTATION_ATTACHMENT_OF.to_string(), subject.to_string());
    d.annotations
        .insert(ANNOTATION_ATTACHMENT.to_string(), kind.to_string());
    d
}

fn plan(store: &Store, image: &Image) -> Result<Plan> {
    let mut p = Plan::default();
    let stored = subject_of(store, image)?;
    let view = crate::store::oci_view_of_manifest(&store.read_blob(&image.manifest_digest)?)?;
    let subject = ArtifactDescriptor::of(MT_OCI_MANIFEST, &view);
    let same = subject.digest == stored.digest;
    let mut index = ReferrersIndex::default();
    for (d, m) in store.referrers(&stored.digest)? {
        let (d, m, bytes) = if same {
            let b = m.to_bytes();
            (d, m, b)
        } else {
            let mut m = m.clone();
            m.subject = Some(subject.clone());
            let b = m.to_bytes();
            (m.referrer_descriptor(&b), m, b)
        };
        p.blobs.insert(m.config.digest.clone());
        p.blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
        p.extra.insert(d.digest.clone(), bytes);
        if same && let Some(sig) = store.signatures(&d.digest)? {
            add_signatures(&mut p, &d.digest, &sig);
        }
        index.add(d);
    }
    if !index.manifests.is_empty() {
        let bytes = index.to_bytes();
        p.extra.insert(Digest::of(&bytes), bytes.clone());
        let e = entry(
            &fallback_tag(&subject.digest),
            &subject.digest,
            "referrer",
            MT_OCI_INDEX,
            &bytes,
        );
        p.entries.push((e, bytes));
    }
    if same && let Some(sig) = store.signatures(&subject.digest)? {
        add_signatures(&mut p, &subject.digest, &sig);
    }
    Ok(p)
}

fn add_signatures(p: &mut Plan, subject: &Digest, sig: &ArtifactManifest) {
    let bytes = sig.to_bytes();
    p.blobs.insert(sig.config.digest.clone());
    p.blobs.extend(sig.layers.iter().map(|l| l.digest.clone()));
    p.extra.insert(Digest::of(&bytes), bytes.clone());
    let e = entry(&signature_tag(subject), subject, "signature", MT_OCI_MANIFEST, &bytes);
    p.entries.push((e, bytes));
}

/// Adds the attestations and signatures of `image` to the layout or archive just written at
/// `dest`. Returns how many index entries were added (0: nothing attached, or a
/// docker-archive, which cannot hold them).
pub fn export(store: &Store, image: &Image, dest: &Transport) -> Result<usize> {
    let p = plan(store, image)?;
    if p.entries.is_empty() {
        return Ok(0);
    }
    match dest {
        Transport::OciLayout(dir, _) => {
            write_dir(store, &p, dir).with_context(|| format!("adding attestations to {}", dir.display()))?
        }
        Transport::OciArchive(file, _) => {
            rewrite_archive(store, &p, file).with_context(|| format!("adding attestations to {}", file.display()))?
        }
        Transport::DockerArchive(..) => return Ok(0),
    }
    Ok(p.entries.len())
}

fn merged_index(mut idx: Index, p: &Plan) -> Index {
    let names: BTreeSet<&String> = p
        .entries
        .iter()
        .filter_map(|(e, _)| e.annotations.get(ANNOTATION_REF_NAME))
        .collect();
    idx.manifests.retain(|e| {
        !e.annotations
            .get(ANNOTATION_REF_NAME)
            .is_some_and(|n| names.contains(n))
    });
    idx.manifests.extend(p.entries.iter().map(|(e, _)| e.clone()));
    idx
}

fn write_dir(store: &Store, p: &Plan, dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    for d in &p.blobs {
        let dest = blobs.join(d.hex());
        if !dest.is_file() {
            crate::fsutil::write_atomic(&dest, &store.read_blob(d)?)?;
        }
    }
    for (d, bytes) in &p.extra {
        let dest = blobs.join(d.hex());
        if !dest.is_file() {
            crate::fsutil::write_atomic(&dest, bytes)?;
        }
    }
    let ipath = dir.join("index.json");
    let data = fs::read(&ipath).with_context(|| format!("reading {}", ipath.display()))?;
    let idx: Index = serde_json::from_slice(&data).with_context(|| format!("{} is not an index", ipath.display()))?;
    let idx = merged_index(idx, p);
    crate::fsutil::write_atomic(&ipath, &serde_json::to_vec(&idx)?)
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h
}

/// Copies the archive with index.json replaced and the new blobs appended.
fn rewrite_archive(store: &Store, p: &Plan, file: &Path) -> Result<()> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        let src = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let mut ar = tar::Archive::new(io::BufReader::new(src));
        let mut out = tar::Builder::new(io::BufWriter::new(tmp.as_file_mut()));
        let mut have: BTreeSet<String> = BTreeSet::new();
        let mut index: Option<Index> = None;
        for e in ar.entries()? {
            let mut e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            if path == "index.json" {
                let mut b = Vec::new();
                e.read_to_end(&mut b)?;
                index = Some(serde_json::from_slice(&b).context("the archive's index.json is not an index")?);
                continue;
            }
            have.insert(path.clone());
            let mut h = e.header().clone();
            out.append_data(&mut h, &path, &mut e)?;
        }
        let idx = merged_index(index.context("the archive has no index.json")?, p);
        for d in &p.blobs {
            let path = format!("blobs/sha256/{}", d.hex());
            if have.insert(path.clone()) {
                let b = store.read_blob(d)?;
                out.append_data(&mut header(b.len() as u64), &path, b.as_slice())?;
            }
        }
        for (d, bytes) in &p.extra {
            let path = format!("blobs/sha256/{}", d.hex());
            if have.insert(path.clone()) {
                out.append_data(&mut header(bytes.len() as u64), &path, bytes.as_slice())?;
            }
        }
        let ib = serde_json::to_vec(&idx)?;
        out.append_data(&mut header(ib.len() as u64), "index.json", ib.as_slice())?;
        out.into_inner()?.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", file.display()))?;
    Ok(())
}
