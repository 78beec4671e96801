//! Image management commands: import, images, inspect, tag, rmi, save, load.

use super::GlobalOpts;
use crate::archive::{self, Transport};
use crate::image::{Descriptor, Image};
use crate::reference::Reference;
use crate::store::{ManifestFormat, Store};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `println!` that treats a closed stdout (`kiln images | head -1`) as success, not a panic.
macro_rules! outln {
    ($($t:tt)*) => {
        emit(&format!($($t)*))?
    };
}

fn emit(s: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o
        .write_all(s.as_bytes())
        .and_then(|_| o.write_all(b"\n"))
        .and_then(|_| o.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A rootfs tarball (plain, gzip, zstd, bzip2 or xz) or a directory.
    pub source: PathBuf,
    /// Name for the new image (e.g. mybase:1).
    pub name: String,
    /// Manifest format of the new image.
    #[arg(long, value_enum, default_value_t = super::push::FormatArg::Oci)]
    pub format: super::push::FormatArg,
    /// Comment recorded in the image history.
    #[arg(long, short = 'm')]
    pub message: Option<String>,
    /// Architecture recorded in the image config (default: the host's).
    #[arg(long)]
    pub arch: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// Only print image ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InspectType {
    Manifest,
    Config,
    All,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Image name, id (prefix) or digest.
    pub image: String,
    /// What to print.
    #[arg(long = "type", value_enum, default_value_t = InspectType::All)]
    pub kind: InspectType,
}

#[derive(clap::Args, Debug)]
pub struct TagArgs {
    /// Existing image (name, id or digest).
    pub source: String,
    /// New names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct RmiArgs {
    /// Image names, ids or digests.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove every name of an image given by id, even when it has several.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveFormat {
    OciArchive,
    DockerArchive,
}

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// Image name, id or digest.
    pub image: String,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Archive format (oci-archive keeps the manifest digest; docker-archive is what
    /// `docker load` reads).
    #[arg(long, value_enum, default_value_t = ArchiveFormat::OciArchive)]
    pub format: ArchiveFormat,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// oci-archive or docker-archive file (optionally compressed), or an OCI layout directory.
    #[arg(short, long)]
    pub input: PathBuf,
}

/// The manifest descriptor of an image as stored.
fn descriptor(store: &Store, img: &Image) -> Result<Descriptor> {
    let size = std::fs::metadata(store.blob_path(&img.manifest_digest))
        .with_context(|| format!("manifest {} is missing from the store", img.manifest_digest))?
        .len();
    let mt = img
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| crate::image::MT_OCI_MANIFEST.to_string());
    Ok(Descriptor::new(&mt, img.manifest_digest.clone(), size))
}

/// The descriptor a name/id refers to (the index entry itself, which may be an index).
fn resolve_desc(store: &Store, name: &str) -> Result<Descriptor> {
    store.resolve(name)?.ok_or_else(|| store.not_found(name))
}

fn familiar(name: &str) -> String {
    Reference::parse(name)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| name.to_string())
}

pub fn import(g: &GlobalOpts, a: ImportArgs) -> Result<i32> {
    let name = Reference::parse(&a.name)?.to_string();
    let store = g.store()?;
    let opts = archive::ImportOptions {
        message: a.message,
        arch: a.arch,
        ownership: crate::builder::ownership_here(),
    };
    let format = match a.format {
        super::push::FormatArg::Oci => ManifestFormat::Oci,
        super::push::FormatArg::Docker => ManifestFormat::Docker,
    };
    let img = archive::import_rootfs_with(&store, &a.source, format, &opts)?;
    store.tag(&name, &descriptor(&store, &img)?)?;
    outln!("{}", img.id());
    Ok(0)
}

struct Row {
    name: Option<String>,
    repository: String,
    tag: String,
    image: Image,
    size: u64,
}

fn rows(store: &Store) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for (name, desc) in store.list_all()? {
        let image = match store.load_descriptor(&desc) {
            Ok(i) => i,
            Err(e) => {
                eprintln!(
                    "kiln: warning: skipping {}: {e:#}",
                    name.as_deref().unwrap_or(desc.digest.as_str())
                );
                continue;
            }
        };
        let size = image.manifest.config.size + image.manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let (repository, tag) = match name.as_deref().map(Reference::parse) {
            Some(Ok(r)) => {
                let f = Reference {
                    tag: None,
                    digest: None,
                    ..r.clone()
                }
                .familiar();
                (f, r.tag.clone().unwrap_or_else(|| "<none>".into()))
            }
            _ => ("<none>".into(), "<none>".into()),
        };
        out.push(Row {
            name,
            repository,
            tag,
            image,
            size,
        });
    }
    // Newest first, as docker images does; names break ties.
    out.sort_by(|a, b| {
        b.image
            .config
            .created
            .cmp(&a.image.config.created)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

/// "3 hours ago" for an RFC 3339 time.
fn human_age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| humantime::parse_rfc3339_weak(c.trim_end_matches('Z')).ok()) else {
        return "N/A".into();
    };
    let Ok(age) = std::time::SystemTime::now().duration_since(t) else {
        return "Less than a second ago".into();
    };
    let s = age.as_secs();
    let (n, unit) = match s {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86399 => (s / 3600, "hour"),
        86400..=604_799 => (s / 86400, "day"),
        604_800..=2_591_999 => (s / 604_800, "week"),
        2_592_000..=31_535_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub fn images(g: &GlobalOpts, a: ImagesArgs) -> Result<i32> {
    let store = g.store()?;
    let rows = rows(&store)?;
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            if seen.insert(r.image.id().clone()) {
                outln!("{}", r.image.id().short());
            }
        }
        return Ok(0);
    }
    match a.format {
        ListFormat::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "repository": r.repository,
                        "tag": r.tag,
                        "id": r.image.id(),
                        "digest": r.image.manifest_digest,
                        "created": r.image.config.created,
                        "size": r.size,
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&v)?);
        }
        ListFormat::Table => {
            let mut lines = vec![[
                "REPOSITORY".to_string(),
                "TAG".into(),
                "IMAGE ID".into(),
                "CREATED".into(),
                "SIZE".into(),
            ]];
            for r in &rows {
                lines.push([
                    r.repository.clone(),
                    r.tag.clone(),
                    r.image.id().short().to_string(),
                    human_age(r.image.config.created.as_deref()),
                    crate::fsutil::size::human_decimal(r.size),
                ]);
            }
            let widths: Vec<usize> = (0..5)
                .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
                .collect();
            for l in lines {
                let mut s = String::new();
                for (i, c) in l.iter().enumerate() {
                    if i == 4 {
                        s.push_str(c);
                    } else {
                        s.push_str(&format!("{:w$}   ", c, w = widths[i]));
                    }
                }
                outln!("{}", s.trim_end());
            }
        }
    }
    Ok(0)
}

pub fn inspect(g: &GlobalOpts, a: InspectArgs) -> Result<i32> {
    let store = g.store()?;
    let img = store.load_image(&a.image)?;
    let manifest: serde_json::Value = serde_json::from_slice(&store.read_blob(&img.manifest_digest)?)?;
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(img.id())?)?;
    let out = match a.kind {
        InspectType::Manifest => manifest,
        InspectType::Config => config,
        InspectType::All => {
            let names: Vec<String> = store
                .list()?
                .into_iter()
                .filter(|(_, d)| d.digest == img.manifest_digest)
                .map(|(n, _)| n)
                .collect();
            serde_json::json!({
                "names": names,
                "digest": img.manifest_digest,
                "id": img.id(),
                "manifest": manifest,
                "config": config,
            })
        }
    };
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

pub fn tag(g: &GlobalOpts, a: TagArgs) -> Result<i32> {
    let store = g.store()?;
    let desc = resolve_desc(&store, &a.source)?;
    let parsed: Vec<String> = a
        .names
        .iter()
        .map(|n| Ok(Reference::parse(n)?.to_string()))
        .collect::<Result<_>>()?;
    for n in parsed {
        store.tag(&n, &desc)?;
    }
    Ok(0)
}

pub fn rmi(g: &GlobalOpts, a: RmiArgs) -> Result<i32> {
    let store = g.store()?;
    let mut code = 0;
    for arg in &a.images {
        if let Err(e) = rmi_one(&store, arg, a.force) {
            eprintln!("kiln: error: {e:#}");
            code = 1;
        }
    }
    Ok(code)
}

fn rmi_one(store: &Store, arg: &str, force: bool) -> Result<()> {
    // A name: remove just that name.
    if let Ok(r) = Reference::parse(arg) {
        let name = r.to_string();
        if store.list()?.iter().any(|(n, _)| n == &name) {
            store.untag(&name)?;
            outln!("Untagged: {}", r.familiar());
            return Ok(());
        }
    }
    // An id or digest: remove every name of the image.
    let desc = resolve_desc(store, arg)?;
    let names: Vec<String> = store
        .list_all()?
        .into_iter()
        .filter(|(_, d)| d.digest == desc.digest)
        .filter_map(|(n, _)| n)
        .collect();
    if names.len() > 1 && !force {
        bail!(
            "image {arg} has {} names ({}); remove them one by one or use -f to remove them all",
            names.len(),
            names.iter().map(|n| familiar(n)).collect::<Vec<_>>().join(", ")
        );
    }
    let removed = store.remove_manifest(&desc.digest)?;
    for n in removed {
        outln!("Untagged: {}", familiar(&n));
    }
    outln!("Deleted: {}", desc.digest);
    Ok(())
}

pub fn save(g: &GlobalOpts, a: SaveArgs) -> Result<i32> {
    let store = g.store()?;
    let img = store.load_image(&a.image)?;
    let name = match Reference::parse(&a.image) {
        Ok(r) if store.resolve(&r.to_string())?.is_some() => r.to_string(),
        _ => {
            // Given by id: use the image's only name, if it has exactly one.
            let names: BTreeMap<String, ()> = store
                .list()?
                .into_iter()
                .filter(|(_, d)| d.digest == img.manifest_digest)
                .map(|(n, _)| (n, ()))
                .collect();
            if names.len() == 1 {
                names.into_keys().next().unwrap_or_default()
            } else {
                img.id().to_string()
            }
        }
    };
    let dest = match a.format {
        ArchiveFormat::OciArchive => Transport::OciArchive(a.output.clone(), None),
        ArchiveFormat::DockerArchive => Transport::DockerArchive(a.output.clone(), None),
    };
    archive::export(&store, &img, &name, &dest)?;
    crate::attest::layout::export(&store, &img, &dest)?;
    Ok(0)
}

pub fn load(g: &GlobalOpts, a: LoadArgs) -> Result<i32> {
    let store = g.store()?;
    let loaded = archive::import_archive(&store, &a.input)?;
    for (name, img) in loaded {
        match name {
            Some(n) => outln!("Loaded image: {n}"),
            None => outln!("Loaded image ID: {}", img.id()),
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(crate::fsutil::size::human_decimal(999), "999B");
        assert_eq!(crate::fsutil::size::human_decimal(4_260_000), "4.26MB");
        assert_eq!(crate::fsutil::size::human_decimal(1_000_000), "1MB");
    }

    #[test]
    fn ages() {
        assert_eq!(human_age(None), "N/A");
        let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now() - std::time::Duration::from_secs(7200));
        assert_eq!(human_age(Some(&t.to_string())), "2 hours ago");
    }
}
