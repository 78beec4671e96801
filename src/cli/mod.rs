//! The command line: clap derive types and dispatch. Each subcommand lives in its own file
//! and only turns flags into calls of the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

mod attest;
mod build;
mod images;
mod login;
mod maint;
pub mod progress;
mod pull;
mod push;
mod run;

/// Options every subcommand accepts, before or after the subcommand name.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Storage root (default: $XDG_DATA_HOME/kiln or ~/.local/share/kiln).
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print what kiln decides and why (isolation, storage driver, cache keys).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Isolation rung: auto (the best this place allows), userns, single-uid, chroot (root
    /// without namespaces) or none (no RUN). See `kiln info`.
    #[arg(
        long,
        global = true,
        env = "KILN_ISOLATION",
        value_name = "MODE",
        default_value = "auto"
    )]
    pub isolation: String,
}

impl GlobalOpts {
    /// Where non-build commands send their notices, warnings and debug lines: plain lines on
    /// stderr (`--debug` shows debug lines).
    pub fn reporter(&self) -> crate::events::Reporter {
        let debug = self.debug || std::env::var_os("KILN_DEBUG_REGISTRY").is_some();
        crate::events::Reporter::new(std::sync::Arc::new(progress::Renderer::stderr(
            progress::ProgressMode::Plain,
            debug,
        )))
    }

    /// Registry options from the flags and the environment: the auth file (`--authfile`,
    /// `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG`, `~/.docker/config.json`), GitLab CI's
    /// credentials, and the test knobs `KILN_REGISTRY_IDLE_TIMEOUT` (seconds, fractions
    /// allowed) and `KILN_RETRY_BASE_MS`.
    pub fn registry_options(&self, tls_verify: bool, authfile: Option<&Path>) -> crate::registry::RegistryOptions {
        let env = |k: &str| std::env::var_os(k);
        let mut timing = crate::registry::Timing::default();
        if let Some(idle) = std::env::var("KILN_REGISTRY_IDLE_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
        {
            timing.idle = std::time::Duration::from_secs_f64(idle);
        }
        if let Some(ms) = std::env::var("KILN_RETRY_BASE_MS").ok().and_then(|v| v.parse().ok()) {
            timing.retry_base = std::time::Duration::from_millis(ms);
        }
        crate::registry::RegistryOptions {
            tls_verify,
            platform: None,
            auth: crate::registry::auth::AuthSources::new(authfile, &env),
            timing,
            reporter: self.reporter(),
        }
    }
}

impl GlobalOpts {
    /// The rung forced by `--isolation` (None = auto).
    pub fn forced_isolation(&self) -> Result<Option<crate::sandbox::probe::Isolation>> {
        crate::sandbox::probe::Isolation::parse(&self.isolation)
    }
}

impl GlobalOpts {
    /// The storage root this invocation uses.
    pub fn store_root(&self) -> Result<PathBuf> {
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("kiln"));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
            anyhow::anyhow!("cannot find the storage root: neither --root, KILN_ROOT, XDG_DATA_HOME nor HOME is set")
        })?;
        Ok(PathBuf::from(home).join(".local/share/kiln"))
    }

    /// Opens the store at the storage root; its notices and warnings go to [`Self::reporter`].
    pub fn store(&self) -> Result<crate::store::Store> {
        crate::store::Store::open_reporting(&self.store_root()?, self.reporter())
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Build OCI container images without a daemon and without root"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an image from a Dockerfile.
    Build(Box<build::BuildArgs>),
    /// Pull an image from a registry.
    Pull(pull::PullArgs),
    /// Push an image to a registry, an OCI layout or an archive.
    Push(push::PushArgs),
    /// Check credentials with a registry and store them for later pushes and pulls.
    Login(login::LoginArgs),
    /// Forget stored registry credentials.
    Logout(login::LogoutArgs),
    /// Make a one-layer image from a rootfs tarball or directory.
    Import(images::ImportArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Show an image's manifest and config.
    Inspect(images::InspectArgs),
    /// Add a name to an image.
    Tag(images::TagArgs),
    /// Remove image names (and images left without a name).
    Rmi(images::RmiArgs),
    /// Write an image to an oci-archive or docker-archive file.
    Save(images::SaveArgs),
    /// Load images from an oci-archive or docker-archive file.
    Load(images::LoadArgs),
    /// Run a command in a container made from an image.
    Run(Box<run::RunArgs>),
    /// Run a command (default: a shell) in kiln's user namespace.
    Unshare(run::UnshareArgs),
    /// Show which isolation and storage kiln uses here, and why.
    Info(run::InfoArgs),
    /// Verify the store (every blob digest and reference); --repair removes broken and
    /// left-over data.
    Fsck(maint::FsckArgs),
    /// Remove unnamed images, unused build cache, unreferenced blobs and unpacked layers.
    Prune(maint::PruneArgs),
    /// Make a cosign-format key pair (cosign.key encrypted with $COSIGN_PASSWORD, cosign.pub).
    GenerateKeyPair(attest::GenerateKeyPairArgs),
    /// Sign an image (cosign format, stored as cosign does).
    Sign(attest::SignArgs),
    /// Verify an image's signatures (and, with --policy, its attestations).
    Verify(attest::VerifyArgs),
    /// Print the SBOM attached to an image.
    Sbom(attest::SbomArgs),
    /// List what refers to an image (SBOMs, provenance, signatures).
    Attestations(attest::AttestationsArgs),
    /// Internal: the sandbox helper process (not for users).
    #[command(name = "__sandbox", hide = true)]
    Sandbox(run::SandboxArgs),
}

impl Command {
    /// Commands that must run inside kiln's user namespace (they mount or own files as
    /// other ids). The namespace is entered before any thread starts.
    fn needs_userns(&self) -> bool {
        // A directory import reads owners as the namespace sees them: the user's own files
        // become root's, as `buildah unshare` would show them.
        // fsck/prune remove unpacked layers and step dirs, owned by the subordinate ids.
        matches!(
            self,
            Command::Build(_) | Command::Run(_) | Command::Unshare(_) | Command::Fsck(_) | Command::Prune(_)
        ) || matches!(self, Command::Import(a) if a.source.is_dir())
    }
}

/// Entry point of the binary: parse, enter the namespace if needed, dispatch, report.
pub fn main() -> i32 {
    // Nothing kiln inherited beyond stdin/stdout/stderr reaches what it executes (a RUN step,
    // `kiln run`'s process, a helper program): done first, before anything else opens a fd.
    if let Err(e) = crate::fsutil::cloexec_from(3) {
        eprintln!("kiln: {e:#}");
        return 125;
    }
    let cli = Cli::parse();
    // Decompression bounds (KILN_MAX_LAYER_SIZE, KILN_MAX_COMPRESSION_RATIO,
    // KILN_RATIO_CHECK_AFTER): read here, a bad value is an error.
    match crate::layer::bomb::Limits::from_env(&|k| std::env::var(k).ok()) {
        Ok(l) => crate::layer::bomb::configure(l),
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            return 125;
        }
    }
    if cli.command.needs_userns()
        && let Ok(root) = cli.global.store_root()
    {
        // A kiln killed before it could clean up (SIGINT/SIGTERM/SIGKILL at any moment, e.g.
        // while probing the overlay or before a step's signal handling is in place) leaves
        // its temp entries in tmp/: the original process, which outlives it, removes them.
        crate::sandbox::userns::on_child_exit(move |pid| {
            crate::store::gc::sweep_tmp_of(&root, pid as u32);
        });
    }
    if cli.command.needs_userns()
        && let Err(e) = cli
            .global
            .forced_isolation()
            .and_then(|forced| crate::sandbox::userns::ensure_with(&cli.global.reporter(), forced))
    {
        eprintln!("kiln: {e:#}");
        return 125;
    }
    let result = match cli.command {
        Command::Build(a) => build::run(&cli.global, *a),
        Command::Pull(a) => pull::run(&cli.global, a),
        Command::Push(a) => push::run(&cli.global, a),
        Command::Login(a) => login::login(&cli.global, a),
        Command::Logout(a) => login::logout(&cli.global, a),
        Command::Import(a) => images::import(&cli.global, a),
        Command::Images(a) => images::images(&cli.global, a),
        Command::Inspect(a) => images::inspect(&cli.global, a),
        Command::Tag(a) => images::tag(&cli.global, a),
        Command::Rmi(a) => images::rmi(&cli.global, a),
        Command::Save(a) => images::save(&cli.global, a),
        Command::Load(a) => images::load(&cli.global, a),
        Command::Run(a) => run::run(&cli.global, *a),
        Command::Unshare(a) => run::unshare(&cli.global, a),
        Command::Info(a) => run::info(&cli.global, a),
        Command::Fsck(a) => maint::fsck(&cli.global, a),
        Command::Prune(a) => maint::prune(&cli.global, a),
        Command::GenerateKeyPair(a) => attest::generate_key_pair(&cli.global, a),
        Command::Sign(a) => attest::sign_cmd(&cli.global, a),
        Command::Verify(a) => attest::verify_cmd(&cli.global, a),
        Command::Sbom(a) => attest::sbom_cmd(&cli.global, a),
        Command::Attestations(a) => attest::attestations_cmd(&cli.global, a),
        Command::Sandbox(a) => run::sandbox(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            1
        }
    }
}
