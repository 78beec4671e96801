//! The SBOM of an image's final filesystem, from the package databases it holds.
//!
//! The layers are read as tar streams, in order, with whiteouts and opaque directories
//! applied, without unpacking anything: only the files package managers write are kept
//! (dpkg's `var/lib/dpkg/status` and `status.d/`, apk's `lib/apk/db/installed`, Python's
//! `*.dist-info/METADATA` and `*.egg-info[/PKG-INFO]`, npm's `node_modules/**/package.json`,
//! Debian copyright files for licences, os-release for the distribution), and executables'
//! embedded build info (Go, cargo-auditable) is read as they stream past.
//!
//! Output: SPDX 2.3 JSON or CycloneDX 1.5 JSON, packages sorted, ids and the document
//! namespace / serial number derived from the content, timestamps from the image's `created`
//! (which `--timestamp`/SOURCE_DATE_EPOCH sets), so the same image gives the same bytes.

use super::binaries;
use super::licenses;
use crate::digest::Digest;
use crate::image::{Compression, Image};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

/// SBOM formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Spdx,
    CycloneDx,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s.to_ascii_lowercase().as_str() {
            "spdx" | "spdx-json" | "spdx+json" => Ok(Format::Spdx),
            "cyclonedx" | "cyclonedx-json" | "cdx" => Ok(Format::CycloneDx),
            _ => bail!("unknown SBOM format {s:?} (expected spdx or cyclonedx)"),
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Spdx => crate::artifact::MT_SPDX,
            Format::CycloneDx => crate::artifact::MT_CYCLONEDX,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Spdx => "spdx",
            Format::CycloneDx => "cyclonedx",
        }
    }
}

/// Where a package comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ecosystem {
    Deb,
    Apk,
    Python,
    Npm,
    Go,
    Cargo,
}

impl Ecosystem {
    fn label(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Apk => "apk",
            Ecosystem::Python => "pypi",
            Ecosystem::Npm => "npm",
            Ecosystem::Go => "golang",
            Ecosystem::Cargo => "cargo",
        }
    }
}

/// One package found in the image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub purl: String,
    pub ecosystem: Ecosystem,
    pub name: String,
    pub version: String,
    /// The licence as the database declares it (raw).
    pub license: Option<String>,
    /// Where it was found (a path in the image, without a leading slash).
    pub location: String,
    pub supplier: Option<String>,
}

/// purl percent-encoding: everything but unreserved characters.
fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Encodes a purl name that may contain `/` (Go module paths): each segment on its own.
fn enc_path(s: &str) -> String {
    s.split('/').map(enc).collect::<Vec<_>>().join("/")
}

impl Package {
    pub fn new(eco: Ecosystem, name: &str, version: &str, location: &str) -> Package {
        let purl = match eco {
            Ecosystem::Python => {
                let mut n = String::new();
                for c in name.to_ascii_lowercase().chars() {
                    let c = if matches!(c, '_' | '.') { '-' } else { c };
                    if !(c == '-' && n.ends_with('-')) {
                        n.push(c);
                    }
                }
                format!("pkg:pypi/{}@{}", enc(&n), enc(version))
            }
            Ecosystem::Npm => match name.strip_prefix('@').and_then(|n| n.split_once('/')) {
                Some((scope, n)) => format!("pkg:npm/%40{}/{}@{}", enc(scope), enc(n), enc(version)),
                None => format!("pkg:npm/{}@{}", enc(name), enc(version)),
            },
            Ecosystem::Go => format!("pkg:golang/{}@{}", enc_path(name), enc(version)),
            Ecosystem::Cargo => format!("pkg:cargo/{}@{}", enc(name), enc(version)),
            // Set by the database readers, which know the distribution.
            Ecosystem::Deb | Ecosystem::Apk => String::new(),
        };
        Package {
            purl,
            ecosystem: eco,
            name: name.to_string(),
            version: version.to_string(),
            license: None,
            location: location.to_string(),
            supplier: None,
        }
    }
}

/// What an SBOM describes.
#[derive(Clone, Debug)]
pub struct Subject {
    /// The image name (`registry/app:1`), or the digest when it has none.
    pub name: String,
    /// The manifest digest.
    pub digest: Digest,
    /// RFC 3339 time the document claims; the image's `created`, else the Unix epoch.
    pub created: String,
}

/// Interesting file contents of the final filesystem, by path.
#[derive(Default)]
struct Files {
    /// path → content, for database files.
    text: BTreeMap<String, Vec<u8>>,
    /// path → packages, for binaries (read while streaming).
    bins: BTreeMap<String, Vec<Package>>,
}

impl Files {
    fn remove_prefix(&mut self, dir: &str) {
        let p = format!("{dir}/");
        self.text.retain(|k, _| !(k == dir || k.starts_with(&p)));
        self.bins.retain(|k, _| !(k == dir || k.starts_with(&p)));
    }
}

/// Largest database file kept (dpkg status of a big image is a few MiB).
const MAX_TEXT: u64 = 64 << 20;
/// Largest executable whose build info is read.
const MAX_BINARY: u64 = 256 << 20;

fn interesting(path: &str, size: u64) -> bool {
    if size > MAX_TEXT {
        return false;
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    if matches!(
        path,
        "var/lib/dpkg/status" | "lib/apk/db/installed" | "etc/os-release" | "usr/lib/os-release"
    ) || path.starts_with("var/lib/dpkg/status.d/")
    {
        return true;
    }
    if path.starts_with("usr/share/doc/") && name == "copyright" && path.matches('/').count() == 4 {
        return size <= 1 << 20;
    }
    if (name == "METADATA" && path.contains(".dist-info/")) || (name == "PKG-INFO" && path.contains(".egg-info/")) {
        return true;
    }
    if name.ends_with(".egg-info") {
        return true;
    }
    if name == "package.json" {
        let parts: Vec<&str> = path.split('/').collect();
        let n = parts.len();
        return (n >= 3 && parts[n - 3] == "node_modules" && !parts[n - 2].starts_with('@'))
            || (n >= 4 && parts[n - 4] == "node_modules" && parts[n - 3].starts_with('@'));
    }
    false
}

fn clean(p: &std::path::Path) -> String {
    let s = p.to_string_lossy();
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// Reads the final filesystem's package files from the image's layers.
fn read_layers(store: &Store, image: &Image) -> Result<Files> {
    let mut files = Files::default();
    for l in &image.manifest.layers {
        let c = Compression::of_media_type(&l.media_type)
            .with_context(|| format!("layer {}: unsupported media type {}", l.digest, l.media_type))?;
        let f = store.open_blob(&l.digest)?;
        let r = crate::layer::decompress(std::io::BufReader::with_capacity(256 * 1024, f), c)?;
        let mut ar = tar::Archive::new(r);
        let mut layer = Files::default();
        let mut whiteouts: Vec<String> = Vec::new();
        let mut opaque: Vec<String> = Vec::new();
        let mut replaced: Vec<String> = Vec::new();
        for e in ar.entries().with_context(|| format!("reading layer {}", l.digest))? {
            let mut e = e.with_context(|| format!("reading layer {}", l.digest))?;
            let path = clean(&e.path().with_context(|| format!("layer {}: bad path", l.digest))?);
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n.to_string()),
                None => (String::new(), path.clone()),
            };
            if name == ".wh..wh..opq" {
                opaque.push(dir);
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                whiteouts.push(if dir.is_empty() {
                    gone.to_string()
                } else {
                    format!("{dir}/{gone}")
                });
                continue;
            }
            // A non-directory written at a path replaces what lower layers had there
            // (a directory entry merges with the lower one).
            let t = e.header().entry_type();
            if !t.is_dir() {
                replaced.push(path.clone());
            }
            if !t.is_file() {
                continue;
            }
            let size = e.header().size().unwrap_or(0);
            let mode = e.header().mode().unwrap_or(0);
            if interesting(&path, size) {
                let mut buf = Vec::new();
                (&mut e).take(MAX_TEXT).read_to_end(&mut buf)?;
                layer.text.insert(path, buf);
            } else if mode & 0o111 != 0 && (1024..=MAX_BINARY).contains(&size) {
                let mut head = [0u8; 4];
                if e.read_exact(&mut head).is_ok() && &head == b"\x7fELF" {
                    let mut buf = head.to_vec();
                    (&mut e).take(MAX_BINARY).read_to_end(&mut buf)?;
                    let pkgs = binaries::scan(&path, &buf);
                    if !pkgs.is_empty() {
                        layer.bins.insert(path, pkgs);
                    }
                }
            }
        }
        for d in opaque {
            // Keep the directory, drop its lower contents.
            let p = format!("{d}/");
            files.text.retain(|k, _| !k.starts_with(&p));
            files.bins.retain(|k, _| !k.starts_with(&p));
        }
        for w in whiteouts.iter().chain(replaced.iter()) {
            files.remove_prefix(w);
        }
        files.text.append(&mut layer.text);
        files.bins.append(&mut layer.bins);
    }
    Ok(files)
}

/// RFC 822-style stanzas ("Key: value", continuation lines indented), separated by blank lines.
fn stanzas(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(k) = &last
                && let Some(v) = cur.get_mut(k)
            {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_string();
            // Repeated keys (Classifier) are joined with newlines.
            cur.entry(k.clone())
                .and_modify(|x| {
                    x.push('\n');
                    x.push_str(v.trim());
                })
                .or_insert_with(|| v.trim().to_string());
            last = Some(k);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn os_release(files: &Files) -> (String, String) {
    let text = files
        .text
        .get("etc/os-release")
        .or_else(|| files.text.get("usr/lib/os-release"))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let mut id = String::new();
    let mut ver = String::new();
    for l in text.lines() {
        if let Some((k, v)) = l.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "ID" => id = v,
                "VERSION_ID" => ver = v,
                _ => {}
            }
        }
    }
    (id, ver)
}

/// The `License:` names of a machine-readable Debian copyright file.
fn debian_licenses(text: &str) -> Vec<String> {
    if !text.lines().next().unwrap_or("").starts_with("Format:") {
        return Vec::new();
    }
    let mut out: BTreeSet<String> = BTreeSet::new();
    for st in stanzas(text) {
        if let Some(l) = st.get("License") {
            let first = l.lines().next().unwrap_or("").trim();
            if !first.is_empty() {
                out.insert(first.to_string());
            }
        }
    }
    out.into_iter().collect()
}

fn dpkg(files: &Files, distro: &(String, String), out: &mut Vec<Package>) {
    let ns = if distro.0.is_empty() {
        "debian".to_string()
    } else {
        distro.0.clone()
    };
    let qual_distro = if distro.1.is_empty() {
        String::new()
    } else {
        format!("&distro={}-{}", enc(&ns), enc(&distro.1))
    };
    for (path, data) in &files.text {
        if !(path == "var/lib/dpkg/status" || path.starts_with("var/lib/dpkg/status.d/")) {
            continue;
        }
        for st in stanzas(&String::from_utf8_lossy(data)) {
            let (Some(name), Some(version)) = (st.get("Package"), st.get("Version")) else {
                continue;
            };
            let installed = st
                .get("Status")
                .is_some_and(|s| s.split_whitespace().nth(2) == Some("installed"));
            if path == "var/lib/dpkg/status" && !installed {
                continue;
            }
            let arch = st.get("Architecture").cloned().unwrap_or_default();
            let mut p = Package::new(Ecosystem::Deb, name, version, path);
            p.purl = format!(
                "pkg:deb/{}/{}@{}?arch={}{qual_distro}",
                enc(&ns),
                enc(name),
                enc(version),
                enc(&arch)
            );
            if let Some(src) = st.get("Source") {
                let s = src.split_whitespace().next().unwrap_or("");
                if !s.is_empty() && s != name {
                    p.purl.push_str(&format!("&upstream={}", enc(s)));
                }
            }
            p.supplier = st.get("Maintainer").cloned();
            let cr = format!("usr/share/doc/{name}/copyright");
            if let Some(text) = files.text.get(&cr) {
                let l = debian_licenses(&String::from_utf8_lossy(text));
                if !l.is_empty() {
                    p.license = Some(l.join(", "));
                }
            }
            out.push(p);
        }
    }
}

fn apk(files: &Files, distro: &(String, String), out: &mut Vec<Package>) {
    let Some(data) = files.text.get("lib/apk/db/installed") else {
        return;
    };
    let ns = if distro.0.is_empty() {
        "alpine".to_string()
    } else {
        distro.0.clone()
    };
    let text = String::from_utf8_lossy(data);
    let mut cur: BTreeMap<char, String> = BTreeMap::new();
    let flush = |cur: &mut BTreeMap<char, String>, out: &mut Vec<Package>| {
        if let (Some(n), Some(v)) = (cur.get(&'P'), cur.get(&'V')) {
            let mut p = Package::new(Ecosystem::Apk, n, v, "lib/apk/db/installed");
            let arch = cur.get(&'A').cloned().unwrap_or_default();
            p.purl = format!("pkg:apk/{}/{}@{}?arch={}", enc(&ns), enc(n), enc(v), enc(&arch));
            if !distro.1.is_empty() {
                p.purl.push_str(&format!("&distro={}-{}", enc(&ns), enc(&distro.1)));
            }
            p.license = cur.get(&'L').cloned();
            p.supplier = cur.get(&'m').cloned();
            out.push(p);
        }
        cur.clear();
    };
    for line in text.lines() {
        if line.is_empty() {
            flush(&mut cur, out);
            continue;
        }
        let mut ch = line.chars();
        if let (Some(k), Some(':')) = (ch.next(), ch.next()) {
            cur.entry(k).or_insert_with(|| ch.as_str().to_string());
        }
    }
    flush(&mut cur, out);
}

fn python(files: &Files, out: &mut Vec<Package>) {
    for (path, data) in &files.text {
        let name = path.rsplit('/').next().unwrap_or("");
        let is_meta = (name == "METADATA" && path.contains(".dist-info/"))
            || (name == "PKG-INFO" && path.contains(".egg-info/"))
            || name.ends_with(".egg-info");
        if !is_meta {
            continue;
        }
        let text = String::from_utf8_lossy(data);
        let head = text.split("\n\n").next().unwrap_or("");
        let Some(st) = stanzas(head).into_iter().next() else {
            continue;
        };
        let (Some(n), Some(v)) = (st.get("Name"), st.get("Version")) else {
            continue;
        };
        let mut p = Package::new(Ecosystem::Python, n, v, path);
        p.license = st
            .get("License-Expression")
            .cloned()
            .or_else(|| {
                st.get("Classifier").and_then(|c| {
                    let l: Vec<&str> = c.lines().filter(|l| l.starts_with("License ::")).collect();
                    (!l.is_empty()).then(|| l.join(" AND "))
                })
            })
            .or_else(|| {
                st.get("License")
                    .filter(|l| l.len() < 100 && !l.contains('\n'))
                    .cloned()
            });
        p.supplier = st.get("Author").cloned();
        out.push(p);
    }
}

fn npm(files: &Files, out: &mut Vec<Package>) {
    for (path, data) in &files.text {
        if !path.ends_with("/package.json") {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            continue;
        };
        let (Some(n), Some(ver)) = (
            v.get("name").and_then(|x| x.as_str()),
            v.get("version").and_then(|x| x.as_str()),
        ) else {
            continue;
        };
        let mut p = Package::new(Ecosystem::Npm, n, ver, path);
        p.license = match v.get("license") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("type").and_then(|t| t.as_str()).map(str::to_string),
            _ => v.get("licenses").and_then(|l| l.as_array()).map(|a| {
                a.iter()
                    .filter_map(|x| x.get("type").and_then(|t| t.as_str()))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            }),
        };
        out.push(p);
    }
}

/// Every package in the image, sorted and deduplicated.
pub fn packages(store: &Store, image: &Image) -> Result<Vec<Package>> {
    let files = read_layers(store, image)?;
    let distro = os_release(&files);
    let mut out = Vec::new();
    dpkg(&files, &distro, &mut out);
    apk(&files, &distro, &mut out);
    python(&files, &mut out);
    npm(&files, &mut out);
    for pkgs in files.bins.values() {
        out.extend(pkgs.iter().cloned());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Builds the SBOM document of `image`.
pub fn generate(store: &Store, image: &Image, subject: &Subject, format: Format) -> Result<Vec<u8>> {
    let pkgs = packages(store, image)?;
    let doc = match format {
        Format::Spdx => spdx(&pkgs, subject),
        Format::CycloneDx => cyclonedx(&pkgs, subject),
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).context("serialising the SBOM")?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn short_hash(s: &str) -> String {
    Digest::of(s.as_bytes()).hex()[..16].to_string()
}

fn tool() -> String {
    format!("kiln-{}", env!("CARGO_PKG_VERSION"))
}

fn image_purl(subject: &Subject) -> String {
    let name = subject
        .name
        .rsplit('/')
        .next()
        .unwrap_or(&subject.name)
        .split([':', '@'])
        .next()
        .unwrap_or("image");
    let mut p = format!("pkg:oci/{}@{}", enc(name), enc(subject.digest.as_str()));
    if let Ok(r) = crate::reference::Reference::parse(&subject.name) {
        p.push_str(&format!(
            "?repository_url={}",
            enc(&format!("{}/{}", r.registry, r.repository))
        ));
    }
    p
}

fn spdx(pkgs: &[Package], subject: &Subject) -> Value {
    let root_id = "SPDXRef-Image".to_string();
    let mut packages = vec![json!({
        "SPDXID": root_id,
        "name": subject.name,
        "versionInfo": subject.digest.as_str(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "CONTAINER",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": image_purl(subject),
        }],
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": root_id,
    })];
    let mut seen = BTreeSet::new();
    for p in pkgs {
        let mut id = format!(
            "SPDXRef-Package-{}-{}",
            p.ecosystem.label(),
            short_hash(&format!("{}|{}", p.purl, p.location))
        );
        while !seen.insert(id.clone()) {
            id.push('x');
        }
        let declared = p.license.as_deref().and_then(licenses::expression);
        let mut v = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("found in /{}", p.location),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": p.purl,
            }],
        });
        if declared.is_none()
            && let Some(raw) = &p.license
        {
            v["licenseComments"] = json!(format!("declared: {raw}"));
        }
        if let Some(s) = &p.supplier {
            let s = s.replace('\n', " ");
            v["supplier"] = json!(if s.contains('@') || s.contains('<') {
                format!("Person: {s}")
            } else {
                format!("Organization: {s}")
            });
        }
        packages.push(v);
        relationships.push(json!({
            "spdxElementId": root_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let content_id = short_hash(&serde_json::to_string(&packages).unwrap_or_default());
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": subject.name,
        "documentNamespace": format!("https://kiln.invalid/spdx/{}/{content_id}", subject.digest.hex()),
        "creationInfo": {
            "created": subject.created,
            "creators": [format!("Tool: {}", tool())],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// A UUID (version 5 layout) from a hash, so the serial number is reproducible.
fn uuid_of(s: &str) -> String {
    let h = Digest::of(s.as_bytes());
    let mut b = hex::decode(&h.hex()[..32]).unwrap_or_else(|_| vec![0; 16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

fn cyclonedx(pkgs: &[Package], subject: &Subject) -> Value {
    let mut components = Vec::new();
    let mut seen = BTreeSet::new();
    for p in pkgs {
        let mut r = format!("{}#{}", p.purl, p.location);
        while !seen.insert(r.clone()) {
            r.push('x');
        }
        let mut c = json!({
            "type": "library",
            "bom-ref": r,
            "name": p.name,
            "version": p.version,
            "purl": p.purl,
            "properties": [{"name": "kiln:location", "value": format!("/{}", p.location)}],
        });
        if let Some(raw) = &p.license {
            c["licenses"] = match licenses::expression(raw) {
                Some(e) if !e.contains(' ') => json!([{"license": {"id": e}}]),
                Some(e) => json!([{"expression": e}]),
                None => json!([{"license": {"name": raw}}]),
            };
        }
        if let Some(s) = &p.supplier {
            c["publisher"] = json!(s.replace('\n', " "));
        }
        components.push(c);
    }
    let serial = uuid_of(&format!(
        "{}{}",
        subject.digest,
        serde_json::to_string(&components).unwrap_or_default()
    ));
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{serial}"),
        "version": 1,
        "metadata": {
            "timestamp": subject.created,
            "tools": {"components": [{"type": "application", "name": "kiln", "version": env!("CARGO_PKG_VERSION")}]},
            "component": {
                "type": "container",
                "bom-ref": image_purl(subject),
                "name": subject.name,
                "version": subject.digest.as_str(),
                "purl": image_purl(subject),
            },
        },
        "components": components,
    })
}

/// The packages an SBOM document (either format) lists: (name, version, purl).
pub fn list(doc: &[u8]) -> Result<Vec<(String, String, String)>> {
    let v: Value = serde_json::from_slice(doc).context("the SBOM is not JSON")?;
    let mut out = Vec::new();
    if let Some(ps) = v.get("packages").and_then(|p| p.as_array()) {
        for p in ps {
            let purl = p
                .get("externalRefs")
                .and_then(|r| r.as_array())
                .and_then(|r| r.iter().find(|x| x["referenceType"] == "purl"))
                .and_then(|x| x["referenceLocator"].as_str())
                .unwrap_or("");
            out.push((
                p["name"].as_str().unwrap_or("").to_string(),
                p["versionInfo"].as_str().unwrap_or("").to_string(),
                purl.to_string(),
            ));
        }
    } else if let Some(cs) = v.get("components").and_then(|p| p.as_array()) {
        for c in cs {
            out.push((
                c["name"].as_str().unwrap_or("").to_string(),
                c["version"].as_str().unwrap_or("").to_string(),
                c["purl"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Descriptor, ImageConfig};

    fn layer(store: &Store, files: &[(&str, &[u8], u32)]) -> (Descriptor, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, *data).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let d = store.put_bytes(&bytes).unwrap();
        (
            Descriptor::new(crate::image::MT_OCI_LAYER, d.clone(), bytes.len() as u64),
            d,
        )
    }

    const STATUS: &str = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u4\nMaintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\nDescription: GNU C Library\n multi-line\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n";

    fn image(store: &Store, layers: Vec<(Descriptor, Digest)>) -> Image {
        let mut cfg = ImageConfig::empty();
        cfg.rootfs.diff_ids = layers.iter().map(|l| l.1.clone()).collect();
        store
            .write_image(
                &cfg,
                layers.into_iter().map(|l| l.0).collect(),
                crate::store::ManifestFormat::Oci,
            )
            .unwrap()
    }

    #[test]
    fn finds_packages_across_layers_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let l1 = layer(
            &s,
            &[
                ("etc/os-release", b"ID=debian\nVERSION_ID=\"12\"\n", 0o644),
                ("var/lib/dpkg/status", STATUS.as_bytes(), 0o644),
                (
                    "usr/share/doc/bash/copyright",
                    b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-3+\n\nFiles: x\nLicense: GPL-3+\n",
                    0o644,
                ),
                (
                    "usr/lib/python3/dist-packages/old-1.0.dist-info/METADATA",
                    b"Metadata-Version: 2.1\nName: old\nVersion: 1.0\n",
                    0o644,
                ),
            ],
        );
        let l2 = layer(
            &s,
            &[
                ("usr/lib/python3/dist-packages/.wh.old-1.0.dist-info", b"", 0o644),
                (
                    "usr/local/lib/python3.11/site-packages/Flask_Login-0.6.3.dist-info/METADATA",
                    b"Metadata-Version: 2.1\nName: Flask_Login\nVersion: 0.6.3\nClassifier: License :: OSI Approved :: MIT License\n\nbody\n",
                    0o644,
                ),
                (
                    "app/node_modules/@scope/left-pad/package.json",
                    br#"{"name":"@scope/left-pad","version":"1.3.0","license":"WTFPL"}"#,
                    0o644,
                ),
                ("app/node_modules/@scope/left-pad/lib/package.json", br#"{"name":"x","version":"9"}"#, 0o644),
            ],
        );
        let img = image(&s, vec![l1, l2]);
        let p = packages(&s, &img).unwrap();
        let purls: Vec<&str> = p.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(
            purls,
            [
                "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12",
                "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc",
                "pkg:npm/%40scope/left-pad@1.3.0",
                "pkg:pypi/flask-login@0.6.3",
            ]
        );
        assert_eq!(p[0].license.as_deref(), Some("GPL-3+"));
        assert_eq!(p[3].license.as_deref(), Some("License :: OSI Approved :: MIT License"));
        let subject = Subject {
            name: "registry.example/app:1".into(),
            digest: img.manifest_digest.clone(),
            created: "1970-01-01T00:00:00Z".into(),
        };
        let a = generate(&s, &img, &subject, Format::Spdx).unwrap();
        let b = generate(&s, &img, &subject, Format::Spdx).unwrap();
        assert_eq!(a, b, "reproducible");
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["packages"].as_array().unwrap().len(), 5);
        assert!(String::from_utf8_lossy(&a).contains("\"licenseDeclared\": \"GPL-3.0-or-later\""));
        let listed = list(&a).unwrap();
        assert!(listed.iter().any(|(n, v, _)| n == "Flask_Login" && v == "0.6.3"));
        let c = generate(&s, &img, &subject, Format::CycloneDx).unwrap();
        let v: Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["specVersion"], "1.5");
        assert_eq!(v["components"].as_array().unwrap().len(), 4);
        assert_eq!(list(&c).unwrap().len(), 4);
    }
}
