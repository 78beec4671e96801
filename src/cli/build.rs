//! `kiln build`: flags → `crate::builder::BuildRequest`.

use super::GlobalOpts;
use super::progress::{ProgressMode, Renderer};
use crate::builder::{BuildRequest, OutputSpec, SecretSpec};
use crate::image::Compression;
use crate::store::ManifestFormat;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Build context directory.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// Dockerfile (default: CONTEXT/Dockerfile, else CONTEXT/dockerfile, else
    /// CONTEXT/Containerfile; "-" reads stdin).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name and tag the image (repeatable).
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Set a build-time variable: KEY=VALUE, or KEY to take it from the environment.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use the cache for these stages (repeatable, comma separated).
    #[arg(long = "no-cache-filter", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Always pull base images, even when they are in the store.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub pull: Option<bool>,
    /// Target platform (os/arch[/variant]); only the host platform can run RUN steps.
    #[arg(long)]
    pub platform: Option<String>,
    /// Image format: oci or docker.
    #[arg(long, default_value = "oci")]
    pub format: String,
    /// Add a label to the image (KEY=VALUE, repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Write the image id to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Outputs: type=oci|docker|local|tar,dest=PATH (repeatable).
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Network for RUN steps: host (default) or none.
    #[arg(long, default_value = "host")]
    pub network: String,
    /// Secrets for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// SSH agent sockets for RUN --mount=type=ssh: default or ID=SOCKET.
    #[arg(long = "ssh")]
    pub ssh: Vec<String>,
    /// Clamp file times in new layers and the created times to this Unix time.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub timestamp: Option<i64>,
    /// Layer compression: gzip, zstd or none.
    #[arg(long, default_value = "gzip")]
    pub compression: String,
    /// Compression level (gzip 1-9, zstd 1-19).
    #[arg(long = "compression-level")]
    pub compression_level: Option<u32>,
    /// Verify TLS certificates of registries (loopback registries are plain HTTP anyway).
    #[arg(long = "tls-verify", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Add capabilities to RUN steps.
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop capabilities from RUN steps.
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// seccomp=FILE|unconfined, no-new-privileges.
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Progress output: auto (tty on a terminal, else plain), tty, plain, quiet, or rawjson
    /// (one JSON object per event on stderr; see docs/PROGRESS.md).
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Print only the image id.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print the resolved plan (stages, steps, expanded arguments) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Stages built at the same time (default: number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Storage driver for RUN steps: overlay, fuse or copy (default: overlay if the kernel allows it).
    #[arg(long = "storage-driver")]
    pub storage_driver: Option<String>,
    /// Build and then push the image to its registry (with -t).
    #[arg(long)]
    pub push: bool,
    /// Push RUN/COPY/ADD/WORKDIR results to this registry repository (REPO or type=registry,ref=REPO).
    #[arg(long = "cache-to", value_name = "REPO")]
    pub cache_to: Vec<String>,
    /// Look step results up in this registry repository (repeatable).
    #[arg(long = "cache-from", value_name = "REPO")]
    pub cache_from: Vec<String>,
    /// Attach an SBOM of the image: spdx (default), cyclonedx, or both (spdx,cyclonedx).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "spdx")]
    pub sbom: Option<String>,
    /// Attach SLSA v1 provenance (an in-toto statement; secret values never appear).
    #[arg(long)]
    pub provenance: bool,
    /// Sign the image and its attestations with this cosign-format key ($COSIGN_PASSWORD).
    #[arg(long = "sign-key", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
}

pub fn run(g: &GlobalOpts, a: BuildArgs) -> Result<i32> {
    let store = g.store()?;
    let mut build_args = BTreeMap::new();
    for kv in &a.build_args {
        match kv.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            // `--build-arg K` takes the value from the environment, as Docker does.
            None => match std::env::var(kv) {
                Ok(v) => build_args.insert(kv.clone(), v),
                Err(_) => continue,
            },
        };
    }
    let mut labels = BTreeMap::new();
    for kv in &a.labels {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let format = match a.format.as_str() {
        "oci" => ManifestFormat::Oci,
        "docker" | "v2s2" => ManifestFormat::Docker,
        f => bail!("--format {f}: expected oci or docker"),
    };
    let compression = match a.compression.as_str() {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        "none" | "uncompressed" => Compression::None,
        c => bail!("--compression {c}: expected gzip, zstd or none"),
    };
    let network = match a.network.as_str() {
        "host" | "default" => crate::sandbox::Network::Host,
        "none" => crate::sandbox::Network::None,
        n => bail!("--network {n}: expected host or none"),
    };
    let mode = if a.quiet { ProgressMode::Quiet } else { a.progress };
    let renderer = Arc::new(Renderer::stderr(mode, g.debug));
    let reporter = crate::events::Reporter::new(renderer.clone());
    let mut seccomp = crate::sandbox::SeccompChoice::Default;
    let mut no_new_privs = false;
    for opt in &a.security_opt {
        if let Some(v) = opt.strip_prefix("seccomp=").or_else(|| opt.strip_prefix("seccomp:")) {
            seccomp = if v == "unconfined" {
                crate::sandbox::SeccompChoice::Unconfined
            } else {
                crate::sandbox::SeccompChoice::Profile(PathBuf::from(v))
            };
        } else if opt == "no-new-privileges" || opt == "no-new-privileges=true" {
            no_new_privs = true;
        } else {
            bail!("--security-opt {opt}: expected seccomp=FILE, seccomp=unconfined or no-new-privileges");
        }
    }
    let outputs = a
        .outputs
        .iter()
        .map(|o| OutputSpec::parse(o))
        .collect::<Result<Vec<_>>>()?;
    let secrets = a
        .secrets
        .iter()
        .map(|s| SecretSpec::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let mut ssh = BTreeMap::new();
    for s in &a.ssh {
        let (id, sock) = match s.split_once('=') {
            Some((id, sock)) => (id.to_string(), PathBuf::from(sock)),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK")
                    .with_context(|| format!("--ssh {s}: SSH_AUTH_SOCK is not set"))?;
                (s.clone(), PathBuf::from(sock))
            }
        };
        ssh.insert(id, sock);
    }
    if a.push && a.tags.is_empty() {
        bail!("--push needs a name to push to: add -t REGISTRY/NAME:TAG");
    }
    let context = a.context.clone();
    let dockerfile = find_dockerfile(&context, a.file.as_deref())?;
    let req = BuildRequest {
        source: crate::builder::Source { context, dockerfile },
        frontend: crate::builder::Frontend {
            build_args,
            target: a.target.clone(),
            platform: a.platform.clone(),
            dry_run: a.dry_run,
        },
        cache: crate::builder::CachePolicy {
            no_cache: a.no_cache,
            no_cache_filter: a.no_cache_filter.clone(),
            cache_to: a
                .cache_to
                .iter()
                .map(|r| crate::builder::remote_cache::parse_cache_ref(r))
                .collect::<Result<_>>()?,
            cache_from: a
                .cache_from
                .iter()
                .map(|r| crate::builder::remote_cache::parse_cache_ref(r))
                .collect::<Result<_>>()?,
        },
        run: crate::builder::RunPolicy {
            network,
            secrets,
            ssh,
            cap_add: a.cap_add.clone(),
            cap_drop: a.cap_drop.clone(),
            seccomp,
            no_new_privs,
            storage_driver: a
                .storage_driver
                .as_deref()
                .map(|d| d.parse().context("--storage-driver"))
                .transpose()?,
        },
        output: crate::builder::OutputPolicy {
            tags: a.tags.clone(),
            format,
            labels,
            iidfile: a.iidfile.clone(),
            outputs,
            timestamp: a.timestamp,
            compression,
            compression_level: a.compression_level,
        },
        registry: g.registry_options(a.tls_verify, None),
        pull: a.pull.unwrap_or(false),
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        reporter: reporter.clone(),
    };
    let want = super::attest::BuildAttest {
        sbom: super::attest::parse_sbom_flag(a.sbom.as_deref())?,
        provenance: a.provenance,
        sign_key: a.sign_key.clone(),
    };
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let image = match crate::builder::build(&store, &req)? {
        crate::builder::Outcome::Image(image) => *image,
        crate::builder::Outcome::Plan(text) => {
            print!("{text}");
            return Ok(0);
        }
    };
    if want.wanted() {
        let facts = super::attest::BuildFacts { req: &req, started };
        super::attest::after_build(&store, &image, &want, &facts)?;
    }
    if a.push {
        let opts = g.registry_options(a.tls_verify, None);
        for t in &a.tags {
            let dest = crate::reference::Reference::parse(t)?;
            let say = |m: &str| reporter.info("registry", m);
            let pushed = crate::registry::push(&store, &image, &dest, &opts, Some(format), &say)
                .with_context(|| format!("pushing {dest}"))?;
            super::attest::push_attached(&store, &image, &dest, &opts, &pushed)?;
        }
    }
    if a.quiet {
        println!("{}", image.id());
    }
    Ok(0)
}

/// The Dockerfile a build reads. Without `-f`: `Dockerfile` in the context, else `dockerfile`
/// (BuildKit's dockerui reads the lowercase name when `Dockerfile` cannot be read, moby#10858),
/// else `Containerfile` (Buildah's and podman's name); the first that exists wins. With
/// `-f DIR/Dockerfile` that does not exist, `DIR/dockerfile` is read as BuildKit does.
pub(crate) fn find_dockerfile(context: &std::path::Path, file: Option<&std::path::Path>) -> Result<PathBuf> {
    // `metadata` follows symlinks: a dangling `Dockerfile` link falls through, as a failed
    // read does in BuildKit.
    let exists = |p: &std::path::Path| std::fs::metadata(p).is_ok();
    match file {
        Some(f) if f.as_os_str() == "-" => Ok(f.to_path_buf()),
        Some(f) => {
            if f.file_name().is_some_and(|n| n == "Dockerfile") && !exists(f) {
                let lower = f.with_file_name("dockerfile");
                if exists(&lower) {
                    return Ok(lower);
                }
            }
            Ok(f.to_path_buf())
        }
        None => {
            let names = ["Dockerfile", "dockerfile", "Containerfile"];
            if let Some(p) = names.iter().map(|n| context.join(n)).find(|p| exists(p)) {
                return Ok(p);
            }
            if !context.is_dir() {
                bail!("build context {} is not a directory", context.display());
            }
            bail!(
                "no Dockerfile in {} (looked for {}): name one with -f",
                context.display(),
                names.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::find_dockerfile;
    use std::path::Path;

    #[test]
    fn default_dockerfile_lookup_order() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path();
        let e = format!("{:#}", find_dockerfile(ctx, None).unwrap_err());
        assert!(e.contains("looked for Dockerfile, dockerfile, Containerfile"), "{e}");
        std::fs::write(ctx.join("Containerfile"), "FROM scratch\n").unwrap();
        assert_eq!(find_dockerfile(ctx, None).unwrap(), ctx.join("Containerfile"));
        std::fs::write(ctx.join("dockerfile"), "FROM scratch\n").unwrap();
        assert_eq!(find_dockerfile(ctx, None).unwrap(), ctx.join("dockerfile"));
        // -f DIR/Dockerfile that is missing reads DIR/dockerfile.
        assert_eq!(
            find_dockerfile(ctx, Some(&ctx.join("Dockerfile"))).unwrap(),
            ctx.join("dockerfile")
        );
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        assert_eq!(find_dockerfile(ctx, None).unwrap(), ctx.join("Dockerfile"));
        // A dangling Dockerfile symlink falls through to the next name.
        std::fs::remove_file(ctx.join("Dockerfile")).unwrap();
        std::os::unix::fs::symlink("missing", ctx.join("Dockerfile")).unwrap();
        assert_eq!(find_dockerfile(ctx, None).unwrap(), ctx.join("dockerfile"));
        // An explicit -f is used as given otherwise.
        assert_eq!(find_dockerfile(ctx, Some(Path::new("-"))).unwrap(), Path::new("-"));
        assert_eq!(find_dockerfile(ctx, Some(&ctx.join("x"))).unwrap(), ctx.join("x"));
        let e = format!("{:#}", find_dockerfile(&ctx.join("nope"), None).unwrap_err());
        assert!(e.contains("is not a directory"), "{e}");
    }
}
