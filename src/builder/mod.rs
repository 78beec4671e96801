//! The build executor: runs a [`crate::plan::Plan`] stage by stage, one function per
//! instruction kind, with a step cache, and commits the result to the store.
//!
//! Every stage keeps an [`StageState`]: the image config being built, its layers and the
//! unpacked layer directories that serve as overlay lowers. A RUN/COPY/ADD step mounts an
//! overlay of those lowers with a fresh upper dir, acts on the merged view (sandboxed for
//! RUN, directly for COPY/ADD), and commits the upper dir as the step's layer; the upper dir
//! then becomes the next step's lowest-but-one lower, so nothing is unpacked twice.

pub mod cache;
pub mod copy;
mod history;
mod output;
mod progress;
pub mod remote_cache;
mod run;
mod ssh_proxy;
mod step;

pub use output::OutputSpec;

use crate::digest::Digest;
use crate::dockerfile::{self, Command, Instruction, ShellOrExec};
use crate::image::{Compression, Descriptor, History, Image, ImageConfig};
use crate::layer::LayerOptions;
use crate::plan::{self, BaseRef, Plan};
use crate::reference::Reference;
use crate::sandbox::{Network, SeccompChoice};
use crate::store::{ManifestFormat, Store};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Default PATH for images that do not set one (BuildKit's DefaultPathEnv for Linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A `--secret id=ID,src=FILE|env=VAR` given to the build.
#[derive(Clone, Debug)]
pub struct SecretSpec {
    pub id: String,
    pub source: SecretSource,
}

#[derive(Clone, Debug)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl SecretSpec {
    pub fn parse(s: &str) -> Result<SecretSpec> {
        let mut id = None;
        let mut source = None;
        for part in s.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "id" => id = Some(v.to_string()),
                "src" | "source" => source = Some(SecretSource::File(PathBuf::from(v))),
                "env" => source = Some(SecretSource::Env(v.to_string())),
                "type" if v == "file" || v == "env" => {}
                _ => bail!("--secret {s}: unknown field {k:?} (expected id=, src= or env=)"),
            }
        }
        let id = id.with_context(|| format!("--secret {s}: missing id="))?;
        // Docker: with neither src nor env, an env var named like the id, else a file.
        let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
        Ok(SecretSpec { id, source })
    }

    /// The secret's bytes.
    pub fn read(&self) -> Result<Vec<u8>> {
        match &self.source {
            SecretSource::File(p) => {
                std::fs::read(p).with_context(|| format!("reading secret {} from {}", self.id, p.display()))
            }
            SecretSource::Env(v) => std::env::var(v)
                .map(String::into_bytes)
                .with_context(|| format!("secret {}: environment variable {v} is not set", self.id)),
        }
    }
}

/// Everything `kiln build` was asked to do, by concern.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub source: Source,
    pub frontend: Frontend,
    pub cache: CachePolicy,
    pub run: RunPolicy,
    pub output: OutputPolicy,
    /// How base images are pulled and the remote cache reached.
    pub registry: crate::registry::RegistryOptions,
    /// Pull base images even when the store has them (`--pull`).
    pub pull: bool,
    /// Independent stages built at once (`--jobs`).
    pub jobs: usize,
    /// Where steps, RUN output, warnings and the summary are reported.
    pub reporter: crate::events::Reporter,
}

/// What is built: the context directory and the Dockerfile (`-` for stdin).
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
}

/// How the Dockerfile is read into a plan.
#[derive(Clone, Debug, Default)]
pub struct Frontend {
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to build (default: the last).
    pub target: Option<String>,
    /// `--platform` (`os/arch[/variant]`); default the host's.
    pub platform: Option<String>,
    /// Print the resolved plan and stop.
    pub dry_run: bool,
}

/// Which step results may come from a cache, and which caches are shared.
#[derive(Clone, Debug, Default)]
pub struct CachePolicy {
    pub no_cache: bool,
    /// Stages (names or indexes) whose steps are always run (`--no-cache-filter`).
    pub no_cache_filter: Vec<String>,
    /// Registry repositories to push step results to (`--cache-to`).
    pub cache_to: Vec<Reference>,
    /// Registry repositories to look step results up in (`--cache-from`).
    pub cache_from: Vec<Reference>,
}

/// What RUN steps get.
#[derive(Clone, Debug, Default)]
pub struct RunPolicy {
    pub network: Network,
    pub secrets: Vec<SecretSpec>,
    pub ssh: BTreeMap<String, PathBuf>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub seccomp: SeccompChoice,
    pub no_new_privs: bool,
    /// `--storage-driver`: forced, or chosen by probing (None).
    pub storage_driver: Option<crate::rootfs::StorageDriver>,
}

/// What the build produces and where it goes.
#[derive(Clone, Debug)]
pub struct OutputPolicy {
    pub tags: Vec<String>,
    pub format: ManifestFormat,
    pub labels: BTreeMap<String, String>,
    pub iidfile: Option<PathBuf>,
    pub outputs: Vec<OutputSpec>,
    /// `--timestamp` / SOURCE_DATE_EPOCH: the created time and the clamp of file times.
    pub timestamp: Option<i64>,
    pub compression: Compression,
    pub compression_level: Option<u32>,
}

/// The state of one stage while it is built.
#[derive(Clone, Debug)]
pub struct StageState {
    pub config: ImageConfig,
    /// Layer descriptors, bottom first (diff ids are in `config.rootfs`).
    pub layers: Vec<Descriptor>,
    /// Cache chain key of the last step.
    pub key: Digest,
    /// ARG values visible in this stage (declared with ARG, or inherited from the base stage).
    pub args: BTreeMap<String, String>,
    /// CMD was set in this stage (ENTRYPOINT resets an inherited CMD only).
    pub cmd_set: bool,
    /// The ARG declarations so far (the base stage's first), in order, one per name (the
    /// last value): BuildKit writes them into a RUN's history text (`RUN |2 a=1 b=2 …`).
    pub arg_decls: Vec<(String, Option<String>)>,
}

impl StageState {
    /// The variables a word sees: ARGs, overridden by ENV (as Docker does).
    pub fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.args.clone();
        for kv in self.config.config.env.iter().flatten() {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            vars.insert(k.to_string(), v.to_string());
        }
        vars
    }
}

/// A build in progress: the request, the plan and finished stages.
pub struct Builder<'a> {
    pub store: &'a Store,
    pub req: &'a BuildRequest,
    pub plan: Plan,
    pub escape: char,
    pub ignore: dockerfile::ignore::IgnoreMatcher,
    pub progress: progress::Steps,
    pub layer_opts: LayerOptions,
    pub driver: Box<dyn crate::rootfs::RootfsDriver>,
    /// Stages by index: each slot is locked while its stage builds, so a stage that several
    /// others need is built once even when they run in parallel.
    done: Mutex<HashMap<usize, Arc<Mutex<Option<StageState>>>>>,
    /// Images named by `COPY --from=IMAGE` / `--mount from=IMAGE`, by reference.
    images: Mutex<HashMap<String, StageState>>,
    /// Created-time string used for history and the config.
    created: String,
    /// `--cache-from` / `--cache-to` repositories.
    pub remote: Option<remote_cache::RemoteCache>,
    /// The build context as RUN bind mounts see it (.dockerignore applied), made at the first
    /// such mount and removed with the build (a killed build's copy is the store's tmp data
    /// of a dead process, collected by fsck/prune).
    bind_context: Mutex<Option<Arc<tempfile::TempDir>>>,
}

/// Builds the image described by `req`. Returns None for `--dry-run`.
/// What a build produced: the image, or with `--dry-run` the resolved plan (for the caller to print).
#[derive(Debug)]
pub enum Outcome {
    Image(Box<Image>),
    Plan(String),
}

pub fn build(store: &Store, req: &BuildRequest) -> Result<Outcome> {
    let started = Instant::now();
    let (text, df_name) = read_dockerfile(req)?;
    let df = dockerfile::parse(&text, &df_name)?;
    let plan_opts = plan::BuildOptions {
        build_args: req.frontend.build_args.clone(),
        target: req.frontend.target.clone(),
        platform: req.frontend.platform.clone(),
    };
    let plan = plan::plan(&df, &plan_opts)?;
    // SOURCE_DATE_EPOCH as a build arg (or a global ARG default) is the build's epoch, as in
    // BuildKit (dockerfile2llb: getBuildArgValue(…, "SOURCE_DATE_EPOCH")); --timestamp wins.
    let with_epoch;
    let req = match (req.output.timestamp, source_date_epoch(&plan)?) {
        (None, Some(t)) => {
            let mut r = req.clone();
            r.output.timestamp = Some(t);
            with_epoch = r;
            &with_epoch
        }
        _ => req,
    };
    let ignore = if req.source.dockerfile.as_os_str() == "-" {
        dockerfile::ignore::IgnoreMatcher::load(&req.source.context, &req.source.context.join("Dockerfile"))?
    } else {
        dockerfile::ignore::IgnoreMatcher::load(&req.source.context, &req.source.dockerfile)?
    };
    if req.frontend.dry_run {
        return Ok(Outcome::Plan(plan.render()));
    }
    if !req.source.context.is_dir() {
        bail!("build context {} is not a directory", req.source.context.display());
    }
    run::refuse_run_without_privilege(&plan)?;
    let created = match req.output.timestamp {
        Some(t) => rfc3339(t),
        None => humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let driver = crate::rootfs::choose_driver(
        store,
        &crate::sandbox::confinement(),
        req.run.storage_driver,
        &req.reporter,
    )?;
    let b = Builder {
        store,
        req,
        escape: df.directives.escape,
        plan,
        ignore,
        progress: progress::Steps::new(req.reporter.clone()),
        layer_opts: LayerOptions {
            compression: req.output.compression,
            level: req.output.compression_level,
            timestamp: req.output.timestamp,
            ownership: ownership_here(),
        },
        driver,
        done: Mutex::new(HashMap::new()),
        images: Mutex::new(HashMap::new()),
        created,
        remote: remote_cache::RemoteCache::new(&req.cache.cache_from, &req.cache.cache_to, &req.registry),
        bind_context: Mutex::new(None),
    };
    for unused in &b.plan.unused_build_args {
        b.progress
            .warn(&format!("build argument {unused} was given but not used by any stage"));
    }
    let target = b.plan.target;
    let state = b.stage(target);
    if let Some(rc) = &b.remote {
        // Also after a failure: the steps that did run are worth sharing.
        rc.export(store, &|m| req.reporter.info("build", m), &|m| {
            req.reporter.warn("build", m)
        });
    }
    let image = b.commit_image(state?)?;
    b.progress.summary(&image, &req.output.tags, started.elapsed());
    Ok(Outcome::Image(Box::new(image)))
}

/// The largest Dockerfile kiln reads.
pub const MAX_DOCKERFILE_SIZE: u64 = 32 << 20;

fn read_dockerfile(req: &BuildRequest) -> Result<(String, String)> {
    if req.source.dockerfile.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), MAX_DOCKERFILE_SIZE + 1),
            &mut s,
        )
        .context("reading the Dockerfile from stdin")?;
        if s.len() as u64 > MAX_DOCKERFILE_SIZE {
            bail!("the Dockerfile on stdin is larger than {MAX_DOCKERFILE_SIZE} bytes");
        }
        return Ok((s, "Dockerfile".to_string()));
    }
    let name = req
        .source
        .dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A regular file only (a FIFO cannot hang the build), of a bounded size.
    let bytes = crate::fsutil::Root::read_host_regular(&req.source.dockerfile, MAX_DOCKERFILE_SIZE)
        .with_context(|| format!("reading Dockerfile {}", req.source.dockerfile.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}: the file is not UTF-8 text (invalid byte at offset {}): is it a Dockerfile?",
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.contains('\0') {
        bail!("{name}: the file contains NUL bytes: is it a Dockerfile?");
    }
    Ok((text, name))
}

/// The `SOURCE_DATE_EPOCH` build arg or global ARG, if set (an empty value is unset).
fn source_date_epoch(plan: &Plan) -> Result<Option<i64>> {
    let v = plan
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .or_else(|| plan.global_args.get("SOURCE_DATE_EPOCH"));
    match v.map(|s| s.trim()) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("invalid SOURCE_DATE_EPOCH: {s}")),
    }
}

/// RFC 3339 time of a Unix timestamp.
pub fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl<'a> Builder<'a> {
    /// The finished state of stage `index`, building it (and what it needs) first.
    pub fn stage(&self, index: usize) -> Result<StageState> {
        let slot = self.done.lock().unwrap().entry(index).or_default().clone();
        let mut guard = slot.lock().unwrap();
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let state = self.progress.nested(|| self.build_stage(index))?;
        *guard = Some(state.clone());
        Ok(state)
    }

    /// Builds the stages `index` needs in parallel (up to --jobs at once), then `index`.
    fn build_stage(&self, index: usize) -> Result<StageState> {
        // A stage the plan did not need can still be named by an ONBUILD trigger of a base
        // image (known only once the image is pulled): it is built from `all_stages`, as
        // BuildKit resolves trigger dependencies after the base image's config.
        let stage = match self.plan.stage(index) {
            Some(s) => s.clone(),
            None => self
                .plan
                .all_stages
                .get(index)
                .cloned()
                .with_context(|| format!("the Dockerfile has no stage {index}"))?,
        };
        let deps = stage.deps.clone();
        if self.req.jobs > 1 && deps.len() > 1 {
            for chunk in deps.chunks(self.req.jobs) {
                std::thread::scope(|scope| -> Result<()> {
                    let handles: Vec<_> = chunk.iter().map(|&d| scope.spawn(move || self.stage(d))).collect();
                    for h in handles {
                        h.join()
                            .map_err(|_| anyhow::anyhow!("a stage builder thread panicked"))??;
                    }
                    Ok(())
                })?;
            }
        }
        let mut state = match &stage.base {
            BaseRef::Scratch => self.scratch_state(),
            BaseRef::Stage(i) => {
                let mut s = self.stage(*i)?;
                s.cmd_set = false;
                s
            }
            BaseRef::Image(r) => self.image_state(r, &stage.from)?,
        };
        // ARGs: a stage sees global ARGs only once it redeclares them; stage-to-stage
        // inheritance keeps the parent's ARG values.
        if !matches!(stage.base, BaseRef::Stage(_)) {
            state.args.clear();
            state.arg_decls.clear();
        }
        state.key = cache::chain(&state.key, &format!("stage {index} platform {:?}", stage.platform), &[]);
        let total = stage.instructions.len();
        let stage_label = stage.name.clone().unwrap_or_else(|| format!("stage-{index}"));
        // ONBUILD triggers of the base (an image or an earlier stage) run first, then are cleared.
        if !matches!(stage.base, BaseRef::Scratch)
            && let Some(triggers) = state.config.config.on_build.take()
        {
            for (i, t) in triggers.iter().enumerate() {
                let ins = dockerfile::parse_onbuild_trigger(t, &stage.from.loc)
                    .with_context(|| format!("{}: ONBUILD trigger {t:?} of the base image", stage.from.loc))?;
                self.progress
                    .start(&stage_label, i + 1, triggers.len(), &format!("ONBUILD {t}"));
                let t0 = Instant::now();
                let cached = step::execute(self, &mut state, &ins, index).inspect_err(|e| self.progress.failed(e))?;
                self.progress.done(cached, t0.elapsed());
            }
        }
        for (i, ins) in stage.instructions.iter().enumerate() {
            self.progress.start(&stage_label, i + 1, total, &ins.original);
            let t = Instant::now();
            let cached = step::execute(self, &mut state, ins, index)
                .with_context(|| format!("{}: {}", ins.loc, ins.original))
                .inspect_err(|e| self.progress.failed(e))?;
            self.progress.done(cached, t.elapsed());
        }
        Ok(state)
    }

    fn scratch_state(&self) -> StageState {
        let mut config = ImageConfig::empty();
        if let Some(p) = &self.plan_platform() {
            config.os = p.0.clone();
            config.architecture = p.1.clone();
            config.variant = p.2.clone();
        }
        config.config.env = Some(vec![format!("PATH={DEFAULT_PATH}")]);
        // BuildKit's emptyImage: a scratch stage works in "/".
        config.config.working_dir = Some("/".to_string());
        StageState {
            config,
            layers: Vec::new(),
            key: cache::chain(&Digest::of(b"scratch"), "scratch", &[]),
            args: BTreeMap::new(),
            cmd_set: false,
            arg_decls: Vec::new(),
        }
    }

    fn plan_platform(&self) -> Option<(String, String, Option<String>)> {
        let p = self.req.frontend.platform.as_deref()?;
        let mut parts = p.split('/');
        let os = parts.next()?.to_string();
        let arch = parts.next()?.to_string();
        let variant = parts.next().map(str::to_string);
        Some((os, arch, variant))
    }

    /// State for `FROM image` (pulled when missing or with --pull).
    fn image_state(&self, reference: &str, from: &Instruction) -> Result<StageState> {
        let image = self
            .get_image(reference)
            .with_context(|| format!("{}: FROM {reference}", from.loc))?;
        let mut config = image.config.clone();
        if config.config.env_get("PATH").is_none() {
            config.config.env_set("PATH", DEFAULT_PATH);
        }
        Ok(StageState {
            key: cache::chain(&Digest::of(b"image"), image.id().as_str(), &[]),
            config,
            layers: image.manifest.layers.clone(),
            args: BTreeMap::new(),
            cmd_set: false,
            arg_decls: Vec::new(),
        })
    }

    /// An image from the store, pulled first when missing (or always with --pull).
    pub fn get_image(&self, reference: &str) -> Result<Image> {
        let parsed = Reference::parse(reference)?;
        if !self.req.pull
            && let Ok(img) = self.store.load_image(&parsed.to_string())
        {
            return Ok(img);
        }
        let opts = crate::registry::RegistryOptions {
            platform: self.req.frontend.platform.clone(),
            ..self.req.registry.clone()
        };
        let reporter = self.progress.reporter();
        let say = |m: &str| reporter.info("registry", m);
        crate::registry::pull(self.store, &parsed, &opts, &say).with_context(|| format!("pulling {parsed}"))
    }

    /// The state of `COPY --from=NAME` / `--mount from=NAME`: a stage (name or index) or an image.
    pub fn source_state(&self, name: &str, loc: &dockerfile::Loc) -> Result<StageState> {
        match plan::copy_from_ref(&self.plan, name) {
            BaseRef::Stage(i) => self.stage(i),
            BaseRef::Scratch => Ok(self.scratch_state()),
            BaseRef::Image(r) => {
                if let Some(s) = self.images.lock().unwrap().get(&r) {
                    return Ok(s.clone());
                }
                let img = self.get_image(&r).with_context(|| format!("{loc}: --from={name}"))?;
                let st = StageState {
                    key: cache::chain(&Digest::of(b"image"), img.id().as_str(), &[]),
                    config: img.config.clone(),
                    layers: img.manifest.layers.clone(),
                    args: BTreeMap::new(),
                    cmd_set: false,
                    arg_decls: Vec::new(),
                };
                self.images.lock().unwrap().insert(r, st.clone());
                Ok(st)
            }
        }
    }

    /// Unpacked lower dirs for a stage's layers, top first.
    pub fn lowers(&self, state: &StageState) -> Result<Vec<PathBuf>> {
        lowers_for(
            self.store,
            &state.layers,
            &state.config.rootfs.diff_ids,
            self.layer_opts.ownership,
        )
    }

    /// Writes the final image: labels from the command line, created time, tags, outputs.
    fn commit_image(&self, mut state: StageState) -> Result<Image> {
        if !self.req.output.labels.is_empty() {
            let labels = state.config.config.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &self.req.output.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        // The newest step's time (every step's, when all were cached), or --timestamp.
        state.config.created = match self.req.output.timestamp {
            Some(_) => Some(self.created.clone()),
            None => state
                .config
                .history
                .iter()
                .filter_map(|h| h.created.clone())
                .max()
                .or(Some(self.created.clone())),
        };
        let image = self
            .store
            .write_image(&state.config, state.layers.clone(), self.req.output.format)?;
        for t in &self.req.output.tags {
            let r = Reference::parse(t).with_context(|| format!("-t {t}"))?;
            let desc = Descriptor::new(
                image
                    .manifest
                    .media_type
                    .as_deref()
                    .unwrap_or(crate::image::MT_OCI_MANIFEST),
                image.manifest_digest.clone(),
                self.store.read_blob(&image.manifest_digest)?.len() as u64,
            );
            self.store.tag(&r.to_string(), &desc)?;
        }
        if let Some(p) = &self.req.output.iidfile {
            std::fs::write(p, image.id().as_str()).with_context(|| format!("writing --iidfile {}", p.display()))?;
        }
        for o in &self.req.output.outputs {
            output::write(self, &image, &state, o)?;
        }
        Ok(image)
    }

    /// A history entry for a step.
    pub fn history(&self, created_by: String, empty_layer: bool) -> History {
        History {
            created: Some(self.created.clone()),
            created_by: Some(created_by),
            comment: Some("buildkit.dockerfile.v0".to_string()),
            empty_layer: empty_layer.then_some(true),
            author: None,
        }
    }
}

/// Makes sure every layer of an image is unpacked in the store; returns the lower dirs,
/// top first. Layers are unpacked once per diff_id (into a temp dir, then renamed, so a
/// killed kiln never leaves a half-unpacked layer behind) and shared by every build.
pub fn lowers_for(
    store: &Store,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    ownership: crate::layer::Ownership,
) -> Result<Vec<PathBuf>> {
    if layers.len() != diff_ids.len() {
        bail!(
            "image has {} layers but {} diff_ids in its config",
            layers.len(),
            diff_ids.len()
        );
    }
    let mut dirs = Vec::with_capacity(layers.len());
    for (desc, diff_id) in layers.iter().zip(diff_ids) {
        dirs.push(ensure_unpacked(store, desc, diff_id, ownership)?);
    }
    dirs.reverse();
    // The same layer twice (two steps with identical changes) would make overlayfs refuse
    // the mount (ELOOP). The topmost copy already decides every path the layer holds, so
    // dropping the lower copies changes nothing.
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    Ok(dirs)
}

/// The lower dirs of an image (top first), unpacking layers that are not yet unpacked.
pub fn rootfs_for_image(store: &Store, image: &Image) -> Result<Vec<PathBuf>> {
    lowers_for(
        store,
        &image.manifest.layers,
        &image.config.rootfs.diff_ids,
        ownership_here(),
    )
}

/// How owners are kept where this process runs, from the isolation rung it entered: emulated
/// in a single-uid user namespace and without privilege and namespaces (rung `none` as a
/// non-root user), by the kernel otherwise. (It belongs with the rung, in
/// `sandbox::probe::Isolation`, once that file is free to change.)
pub fn ownership_here() -> crate::layer::Ownership {
    use crate::sandbox::probe::{Isolation, current};
    match current() {
        Isolation::SingleUid => crate::layer::Ownership::emulated(),
        Isolation::None if !nix::unistd::geteuid().is_root() => crate::layer::Ownership::emulated(),
        _ => crate::layer::Ownership::Kernel,
    }
}

fn ensure_unpacked(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    ownership: crate::layer::Ownership,
) -> Result<PathBuf> {
    let dir = store.layer_dir(diff_id);
    // Only a directory kiln completed (valid marker) is used; anything else there is replaced
    // by a fresh unpack of the blob when publishing.
    if store.layer_ready(diff_id) {
        return Ok(dir);
    }
    let compression = Compression::of_media_type(&desc.media_type)
        .with_context(|| format!("layer {}: unsupported media type {}", desc.digest, desc.media_type))?;
    let tmp = store.tmp_dir("unpack-")?;
    let target = tmp.path().join("layer");
    std::fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
    let blob = std::fs::File::open(store.blob_path(&desc.digest))
        .with_context(|| format!("opening layer blob {}", desc.digest))?;
    let got = crate::layer::unpack_to_lower(
        std::io::BufReader::with_capacity(1 << 20, blob),
        compression,
        &target,
        ownership,
        store.reporter(),
    )
    .with_context(|| format!("unpacking layer {}", desc.digest))?;
    if &got != diff_id {
        bail!(
            "layer {}: content has diff_id {got}, but the image config says {diff_id}",
            desc.digest
        );
    }
    publish_layer_dir(store, &target, diff_id)?;
    Ok(dir)
}

/// Moves a finished layer dir into place under `layers/` and marks it complete (see
/// [`crate::store::layers`]); another process may have won the race, in which case ours is
/// simply dropped.
pub fn publish_layer_dir(store: &Store, src: &Path, diff_id: &Digest) -> Result<()> {
    store.publish_layer(src, diff_id)
}

/// The argv of a shell- or exec-form command, with the stage's SHELL for shell form.
pub fn command_argv(cmd: &ShellOrExec, shell: &[String]) -> Vec<String> {
    match cmd {
        ShellOrExec::Exec(v) => v.clone(),
        ShellOrExec::Shell(s) => {
            let mut v = shell.to_vec();
            v.push(s.clone());
            v
        }
    }
}

/// The stage's SHELL (default `/bin/sh -c`).
pub fn shell_of(config: &ImageConfig) -> Vec<String> {
    config
        .config
        .shell
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()])
}

/// True when the instruction changes the filesystem (and so produces a layer).
pub fn is_fs_step(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Run(_) | Command::Copy { .. } | Command::Add { .. } | Command::Workdir(_)
    )
}
