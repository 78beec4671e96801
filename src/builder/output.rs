//! `-o/--output`: oci / docker archives or layouts, the rootfs as a directory or a tar.

use super::{Builder, StageState};
use crate::archive::Transport;
use crate::image::Image;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// An OCI layout directory, or an oci-archive when dest ends in .tar.
    Oci(PathBuf),
    /// A docker-archive (`docker load`).
    Docker(PathBuf),
    /// The final rootfs, as a directory.
    Local(PathBuf),
    /// The final rootfs, as a tar file.
    Tar(PathBuf),
}

impl OutputSpec {
    /// Parses `type=oci,dest=DIR|FILE.tar`, `type=docker,dest=F`, `type=local,dest=D`,
    /// `type=tar,dest=F`, or a bare path (= local).
    pub fn parse(s: &str) -> Result<OutputSpec> {
        if !s.contains('=') {
            return Ok(OutputSpec::Local(PathBuf::from(s)));
        }
        let mut kind = None;
        let mut dest = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v.to_string()),
                Some(("dest", v)) => dest = Some(PathBuf::from(v)),
                _ => bail!("-o {s}: unknown field {part:?} (expected type= and dest=)"),
            }
        }
        let dest = dest.with_context(|| format!("-o {s}: dest= is required"))?;
        Ok(match kind.as_deref() {
            Some("oci") => OutputSpec::Oci(dest),
            Some("docker") => OutputSpec::Docker(dest),
            Some("local") | None => OutputSpec::Local(dest),
            Some("tar") => OutputSpec::Tar(dest),
            Some(t) => bail!("-o {s}: unknown type {t} (expected oci, docker, local or tar)"),
        })
    }
}

pub fn write(b: &Builder, image: &Image, state: &StageState, o: &OutputSpec) -> Result<()> {
    let name = b
        .req
        .output
        .tags
        .first()
        .cloned()
        .unwrap_or_else(|| format!("kiln-build:{}", image.id().short()));
    let name = crate::reference::Reference::parse(&name)?.to_string();
    match o {
        OutputSpec::Oci(dest) => {
            let t = if dest.extension().is_some_and(|e| e == "tar") {
                Transport::OciArchive(dest.clone(), None)
            } else {
                Transport::OciLayout(dest.clone(), None)
            };
            crate::archive::export(b.store, image, &name, &t)
        }
        OutputSpec::Docker(dest) => {
            crate::archive::export(b.store, image, &name, &Transport::DockerArchive(dest.clone(), None))
        }
        OutputSpec::Local(dest) => {
            std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
            apply_layers(b, state, dest)
        }
        OutputSpec::Tar(dest) => {
            let tmp = b.store.tmp_dir("out-")?;
            let root = tmp.path().join("rootfs");
            std::fs::create_dir(&root)?;
            apply_layers(b, state, &root)?;
            let f = std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
            let mut w = std::io::BufWriter::new(f);
            crate::layer::write_tar(
                crate::layer::DirWalk::new(&root, &[])?,
                b.req.output.timestamp,
                b.layer_opts.ownership,
                &mut w,
            )
            .with_context(|| format!("writing {}", dest.display()))?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(())
        }
    }
}

/// Applies every layer of the stage, in order, onto `dest` (whiteouts delete).
fn apply_layers(b: &Builder, state: &StageState, dest: &std::path::Path) -> Result<()> {
    for desc in &state.layers {
        let c = crate::image::Compression::of_media_type(&desc.media_type)
            .with_context(|| format!("layer {}: unsupported media type {}", desc.digest, desc.media_type))?;
        let f = std::fs::File::open(b.store.blob_path(&desc.digest))
            .with_context(|| format!("opening layer {}", desc.digest))?;
        let r = crate::layer::decompress(std::io::BufReader::new(f), c)?;
        crate::layer::apply(
            r,
            dest,
            &crate::layer::ApplyOptions {
                chown: None,
                keep_whiteouts_as_files: false,
                ownership: b.layer_opts.ownership,
                reporter: b.store.reporter().clone(),
            },
        )
        .with_context(|| format!("applying layer {} to {}", desc.digest, dest.display()))?;
    }
    Ok(())
}
