//! `kiln push IMAGE [DEST] [--tls-verify=false] [--format oci|docker] [--digestfile F]`
//!
//! DEST: `docker://host/repo:tag` or a plain reference (registry), `oci:DIR[:name]`,
//! `oci-archive:FILE[:name]`, `docker-archive:FILE[:name]`. Without DEST, IMAGE's own registry.

use super::GlobalOpts;
use crate::reference::Reference;
use crate::registry;
use crate::store::ManifestFormat;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    Oci,
    Docker,
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Local image (name or id).
    pub image: String,
    /// Destination (default: IMAGE's own registry).
    pub dest: Option<String>,
    /// Verify TLS certificates (false: also allow plain HTTP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Manifest format to push (default: as stored).
    #[arg(long, short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Write the pushed manifest's digest to this file.
    #[arg(long, value_name = "FILE")]
    pub digestfile: Option<PathBuf>,
    /// Credentials file (default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// No progress lines.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(g: &GlobalOpts, a: PushArgs) -> Result<i32> {
    let store = g.store()?;
    let image = store.load_image(&a.image)?;
    let source_name = Reference::parse(&a.image)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| a.image.clone());
    let quiet = a.quiet;
    let display = super::pull::Display::new();
    let progress = |line: &str| {
        if !quiet {
            display.line(line);
        }
    };
    let dest = match &a.dest {
        Some(d) => d.clone(),
        None => match Reference::parse(&a.image) {
            Ok(r) => r.to_string(),
            Err(_) => bail!(
                "{} is not a name with a registry: give a destination (kiln push IMAGE DEST)",
                a.image
            ),
        },
    };
    let digest = if let Some(r) = dest.strip_prefix("docker://") {
        push_registry(g, &store, &image, r, &a, &progress)?
    } else if let Some(t) = crate::archive::Transport::parse(&dest)? {
        if a.format.is_some() {
            bail!("--format applies to registry pushes; an archive keeps the stored manifest format");
        }
        crate::archive::export(&store, &image, &source_name, &t).with_context(|| format!("writing {dest}"))?;
        crate::attest::layout::export(&store, &image, &t).with_context(|| format!("writing {dest}"))?;
        image.manifest_digest.clone()
    } else {
        push_registry(g, &store, &image, &dest, &a, &progress)?
    };
    if let Some(f) = &a.digestfile {
        std::fs::write(f, digest.as_str()).with_context(|| format!("writing {}", f.display()))?;
    }
    if !quiet {
        eprintln!("Pushed {dest}");
    }
    println!("{digest}");
    Ok(0)
}

fn push_registry(
    g: &GlobalOpts,
    store: &crate::store::Store,
    image: &crate::image::Image,
    dest: &str,
    a: &PushArgs,
    progress: &dyn Fn(&str),
) -> Result<crate::digest::Digest> {
    let reference = Reference::parse(dest)?;
    let opts = g.registry_options(a.tls_verify, a.authfile.as_deref());
    let format = a.format.map(|f| match f {
        FormatArg::Oci => ManifestFormat::Oci,
        FormatArg::Docker => ManifestFormat::Docker,
    });
    let pushed = registry::push(store, image, &reference, &opts, format, progress)?;
    super::attest::push_attached(store, image, &reference, &opts, &pushed)?;
    Ok(pushed)
}
