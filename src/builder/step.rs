//! One function per instruction kind. Metadata instructions only change the config;
//! RUN/COPY/ADD/WORKDIR change the filesystem through [`FsStep`], which handles the cache,
//! the overlay mount and the layer commit.

use super::{Builder, StageState, cache, command_argv, shell_of};
use crate::digest::Digest;
use crate::dockerfile::expand::{process_word, process_words};
use crate::dockerfile::{Command, CopyCommand, FlagValue, Instruction, ShellOrExec};
use crate::image::HealthConfig;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Executes one instruction on `state`. Returns true when the step was a cache hit.
pub fn execute(b: &Builder, state: &mut StageState, ins: &Instruction, stage_index: usize) -> Result<bool> {
    match &ins.command {
        Command::From(_) => bail!("FROM inside a stage"),
        Command::Arg(decls) => {
            let text = arg_step(b, state, decls)?;
            meta(b, state, ins, Some(text))
        }
        Command::Workdir(w) => workdir_step(b, state, ins, stage_index, w),
        Command::Run(run) => super::run::run_step(b, state, ins, stage_index, run),
        Command::Copy(c) => copy_step(b, state, ins, stage_index, c, false),
        Command::Add(c) => copy_step(b, state, ins, stage_index, c, true),
        _ => {
            let text = config_step(b, state, ins)?;
            meta(b, state, ins, text)
        }
    }
}

/// ARG, as BuildKit's dispatchArg: each declared name takes its `--build-arg` value; else,
/// declared without a default, the global value (meta ARG or predefined); else its default,
/// expanded (an error such as `${X:?msg}` fails the build). Declared with no value at all, an
/// earlier value (from this stage or its base stage) stays. Returns the history text.
fn arg_step(b: &Builder, state: &mut StageState, decls: &[(String, Option<String>)]) -> Result<String> {
    let esc = b.escape;
    let mut texts = Vec::with_capacity(decls.len());
    for (name, default) in decls {
        let value = match (b.plan.build_args.get(name), default) {
            (Some(v), _) => Some(v.clone()),
            (None, None) => b.plan.global_args.get(name).cloned(),
            (None, Some(d)) => Some(process_word(d, &state.vars(), esc).with_context(|| format!("ARG {name}"))?),
        };
        if let Some(v) = &value {
            state.args.insert(name.clone(), v.clone());
            texts.push(format!("{name}={v}"));
        } else {
            texts.push(name.clone());
        }
        super::history::declare_arg(&mut state.arg_decls, name, value);
    }
    Ok(format!("ARG {}", texts.join(" ")))
}

/// An instruction that only changes the image config (ENV, LABEL, CMD, …). Returns the
/// history text BuildKit writes for it (None: no history entry, as for ONBUILD).
fn config_step(b: &Builder, state: &mut StageState, ins: &Instruction) -> Result<Option<String>> {
    use super::history::{go_list, go_quote_list};
    let esc = b.escape;
    let vars = state.vars();
    let word = |w: &str| process_word(w, &vars, esc);
    let words = |w: &str| process_words(w, &vars, esc);
    match &ins.command {
        Command::Env(pairs) => {
            // Every pair expands against the environment before the instruction, as BuildKit
            // does (`ENV abc=bye def=$abc` gives def the old value of abc).
            let mut expanded = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                expanded.push((word(k)?, word(v)?));
            }
            let text: Vec<String> = expanded.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for (k, v) in expanded {
                state.config.config.env_set(&k, &v);
            }
            Ok(Some(format!("ENV {}", text.join(" "))))
        }
        Command::Label(pairs) => {
            let mut text = Vec::new();
            for (k, v) in pairs {
                let k = word(k)?;
                let v = word(v)?;
                text.push(format!("{k}={v}"));
                state
                    .config
                    .config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, v);
            }
            Ok(Some(format!("LABEL {}", text.join(" "))))
        }
        Command::Maintainer(m) => {
            state.config.author = Some(m.clone());
            Ok(Some(format!("MAINTAINER {m}")))
        }
        Command::Expose(ports) => {
            // BuildKit sorts the words as written, then expands each.
            let mut raw = ports.clone();
            raw.sort();
            let mut list = Vec::new();
            for p in &raw {
                list.extend(words(p)?);
            }
            let mut specs = Vec::new();
            for p in list {
                specs.extend(expand_port(&p)?);
            }
            let exposed = state.config.config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for port in &specs {
                exposed.insert(port.clone(), serde_json::json!({}));
            }
            Ok(Some(format!("EXPOSE {}", go_list(&specs))))
        }
        Command::Volume(vols) => {
            let mut list = Vec::new();
            for v in vols {
                list.extend(words(v)?);
            }
            if list.iter().any(|v| v.trim().is_empty()) || list.is_empty() {
                bail!("VOLUME specified can not be an empty string");
            }
            let text = format!("VOLUME {}", go_list(&list));
            let volumes = state.config.config.volumes.get_or_insert_with(BTreeMap::new);
            for v in list {
                volumes.insert(v, serde_json::json!({}));
            }
            Ok(Some(text))
        }
        Command::User(u) => {
            let u = word(u)?;
            state.config.config.user = Some(u.clone());
            Ok(Some(format!("USER {u}")))
        }
        Command::Stopsignal(s) => {
            let s = word(s)?;
            state.config.config.stop_signal = Some(s.clone());
            Ok(Some(format!("STOPSIGNAL {s}")))
        }
        Command::Shell(v) => {
            state.config.config.shell = Some(v.clone());
            Ok(Some(format!("SHELL {}", go_list(v))))
        }
        Command::Cmd(c) => {
            let argv = command_argv(c, &shell_of(&state.config));
            let text = format!("CMD {}", go_quote_list(&argv));
            state.config.config.cmd = Some(argv);
            state.cmd_set = true;
            Ok(Some(text))
        }
        Command::Entrypoint(c) => {
            let argv = command_argv(c, &shell_of(&state.config));
            let text = format!("ENTRYPOINT {}", go_quote_list(&argv));
            // `ENTRYPOINT []` / `ENTRYPOINT ""` clears it.
            let empty = matches!(c, ShellOrExec::Exec(v) if v.is_empty())
                || matches!(c, ShellOrExec::Shell(s) if s.trim().is_empty());
            state.config.config.entrypoint = if empty { None } else { Some(argv) };
            if !state.cmd_set {
                state.config.config.cmd = None;
            }
            Ok(Some(text))
        }
        Command::Healthcheck(spec) => {
            let h = healthcheck(spec.as_ref());
            let text = super::history::healthcheck(&h);
            state.config.config.healthcheck = Some(h);
            Ok(Some(text))
        }
        Command::Onbuild(inner) => {
            let text = inner.original.clone();
            state.config.config.on_build.get_or_insert_with(Vec::new).push(text);
            Ok(None)
        }
        other => bail!("internal error: {} is not a config instruction", other.keyword()),
    }
}

/// WORKDIR: the config's working directory, created in the rootfs (a layer when it is new).
fn workdir_step(b: &Builder, state: &mut StageState, ins: &Instruction, stage_index: usize, w: &str) -> Result<bool> {
    let esc = b.escape;
    let vars = state.vars();
    let w = process_word(w, &vars, esc)?;
    let current = state
        .config
        .config
        .working_dir
        .clone()
        .unwrap_or_else(|| "/".to_string());
    let path = clean_path(&if w.starts_with('/') {
        w
    } else {
        format!("{}/{}", current.trim_end_matches('/'), w)
    });
    state.config.config.working_dir = Some(path.clone());
    let user = state.config.config.user.clone();
    let created_by = format!("WORKDIR {path}");
    if path == "/" {
        // BuildKit makes no filesystem step for the root: an empty-layer entry.
        return meta(b, state, ins, Some(created_by));
    }
    fs_step(
        b,
        state,
        ins,
        stage_index,
        &format!("WORKDIR {path} user={user:?}"),
        None,
        created_by,
        |_b, root, _st| super::run::make_workdir(root, &path, user.as_deref()),
    )
}

/// A metadata-only step: history entry (empty layer) and the cache chain.
fn meta(b: &Builder, state: &mut StageState, ins: &Instruction, history: Option<String>) -> Result<bool> {
    let desc = describe(ins, state);
    state.key = cache::chain(&state.key, &desc, &[]);
    if let Some(text) = history {
        // Metadata steps take the time of the step before them, so that cached rebuilds
        // reproduce the same config.
        let mut h = b.history(text, true);
        if b.req.output.timestamp.is_none()
            && let Some(t) = state.config.history.last().and_then(|h| h.created.clone())
        {
            h.created = Some(t);
        }
        state.config.history.push(h);
    }
    Ok(false)
}

/// The cache description of an instruction: its text with the variables it can see.
fn describe(ins: &Instruction, state: &StageState) -> String {
    let args: Vec<String> = state.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} | args {:?} | env {:?}", ins.original, args, state.config.config.env)
}

/// Runs a filesystem step with caching: `key_text` (plus `source`) identifies the step's
/// inputs; on a miss, `act` runs on the mounted rootfs and the upper dir becomes the layer.
#[allow(clippy::too_many_arguments)]
pub fn fs_step(
    b: &Builder,
    state: &mut StageState,
    _ins: &Instruction,
    stage_index: usize,
    key_text: &str,
    source: Option<&Digest>,
    created_by: String,
    act: impl FnOnce(&Builder, &Path, &StageState) -> Result<Vec<PathBuf>>,
) -> Result<bool> {
    let key = cache::chain(
        &state.key,
        key_text,
        &source.map(|d| d.as_str().to_string()).into_iter().collect::<Vec<_>>(),
    );
    let stage_name = b
        .plan
        .stages
        .iter()
        .find(|s| s.index == stage_index)
        .and_then(|s| s.name.clone());
    let use_cache = !b.req.cache.no_cache
        && !b
            .req
            .cache
            .no_cache_filter
            .iter()
            .any(|f| Some(f.to_lowercase()) == stage_name || f == &stage_index.to_string());
    let mut hit = if use_cache { cache::lookup(b.store, &key)? } else { None };
    if use_cache
        && hit.is_none()
        && let Some(rc) = &b.remote
    {
        hit = rc.lookup(b.store, &key, &|m| b.progress.warn(m)).map(|h| {
            b.progress.info(&format!("using cache from {}", h.source));
            h.entry
        });
    }
    if let Some(hit) = hit {
        if let Some(rc) = &b.remote {
            rc.record(&key, &hit);
        }
        let mut h = b.history(created_by, false);
        if b.req.output.timestamp.is_none() && hit.created.is_some() {
            h.created = hit.created;
        }
        apply_layer(state, hit.layer, h, key);
        return Ok(true);
    }
    let t0 = std::time::Instant::now();
    let lowers = b.lowers(state)?;
    let work = b.store.tmp_dir("step-")?;
    let upper = work.path().join("upper");
    let workdir = work.path().join("work");
    let merged = work.path().join("merged");
    for d in [&upper, &workdir, &merged] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    b.driver
        .mount(&lowers, &upper, &workdir, &merged)
        .context("mounting the step's rootfs")?;
    let t_mount = t0.elapsed();
    let result = act(b, &merged, state);
    let t_act = t0.elapsed();
    let unmounted = b.driver.unmount(&merged).context("unmounting the step's rootfs");
    let placeholders = result?;
    unmounted?;
    // Mount placeholders and directories copied up only to hold them are not changes.
    crate::rootfs::clean_upper(&upper, &lowers, &placeholders)?;
    let t_clean = t0.elapsed();
    let layer = Some(commit_layer(b, &upper, &placeholders)?);
    let t_commit = t0.elapsed();
    if let Some(l) = &layer {
        // The upper dir becomes the layer's lower: it must hold exactly what the blob holds.
        crate::layer::strip_unarchived(&upper, &placeholders)?;
        super::publish_layer_dir(b.store, &upper, &l.diff_id)?;
    }
    // Where a step's time goes (docs/PERFORMANCE.md uses this).
    let step = b.progress.current();
    b.progress.reporter().debug("build", || {
        format!(
            "#{step} timing: lowers+mount {:?}, act {:?}, unmount+clean {:?}, commit {:?}, publish {:?}",
            t_mount,
            t_act - t_mount,
            t_clean - t_act,
            t_commit - t_clean,
            t0.elapsed() - t_commit
        )
    });
    let entry = cache::Entry {
        layer: layer.map(|l| (l.descriptor, l.diff_id)),
        created: Some(b.created.clone()),
    };
    cache::store(b.store, &key, &entry)?;
    if let Some(rc) = &b.remote {
        rc.record(&key, &entry);
    }
    apply_layer(state, entry.layer, b.history(created_by, false), key);
    Ok(false)
}

/// The upper dir as a layer; a step that changed nothing still makes one (an empty tar), as
/// BuildKit does for every RUN, COPY, ADD and WORKDIR.
fn commit_layer(b: &Builder, upper: &Path, placeholders: &[PathBuf]) -> Result<crate::layer::CommittedLayer> {
    if let Some(l) = crate::layer::commit_dir(b.store, upper, placeholders, &b.layer_opts, b.req.output.format)? {
        return Ok(l);
    }
    let walk = crate::layer::DirWalk::new(upper, placeholders)?;
    let blob = b.store.blob_writer().context("opening a blob writer in the store")?;
    let (blob, diff_id, _) = crate::layer::compress_tar(walk, &b.layer_opts, blob).context("writing an empty layer")?;
    let (digest, size) = blob.commit(None).context("committing the layer blob to the store")?;
    let media_type = crate::layer::layer_media_type(&b.req.output.format, b.layer_opts.compression);
    Ok(crate::layer::CommittedLayer {
        descriptor: crate::image::Descriptor::new(media_type, digest, size),
        diff_id,
    })
}

fn apply_layer(
    state: &mut StageState,
    layer: Option<(crate::image::Descriptor, Digest)>,
    mut history: crate::image::History,
    key: Digest,
) {
    match layer {
        Some((desc, diff_id)) => {
            state.layers.push(desc);
            state.config.rootfs.diff_ids.push(diff_id);
        }
        None => history.empty_layer = Some(true),
    }
    state.config.history.push(history);
    state.key = key;
}

fn copy_step(
    b: &Builder,
    state: &mut StageState,
    ins: &Instruction,
    stage_index: usize,
    c: &CopyCommand,
    is_add: bool,
) -> Result<bool> {
    use super::copy::CopySource;
    let (req, from) = copy_request(b, state, ins, c, is_add)?;
    let (source_root_state, is_context) = match &from {
        Some(name) => (Some(b.source_state(name, &ins.loc)?), false),
        None => (None, true),
    };
    // COPY --from reads a read-only overlay of the source stage's layers.
    let src_mount = match &source_root_state {
        Some(st) => Some(ReadOnlyRoot::mount(b, st)?),
        None => None,
    };
    let src_root: PathBuf = match &src_mount {
        Some(m) => m.path.clone(),
        None => b.req.source.context.clone(),
    };
    let ignore = if is_context { Some(&b.ignore) } else { None };
    let source = CopySource {
        root: &src_root,
        ignore,
        is_context,
    };
    let t_hash = std::time::Instant::now();
    // The build context's stat cache: unchanged files are not read again (see StatCache).
    let stat = is_context.then(|| cache::StatCache::for_context(b.store, &b.req.source.context));
    let digest = super::copy::source_digest_cached(&source, &req, stat.as_deref())?;
    if let Some(Err(e)) = stat.as_ref().map(|s| s.save()) {
        // Only a cache: the next build hashes the files again.
        b.progress
            .warn(&format!("could not save the context stat cache: {e:#}"));
    }
    let step = b.progress.current();
    b.progress.reporter().debug("build", || {
        format!("#{step} timing: source digest {:?}", t_hash.elapsed())
    });
    let key_text = format!(
        "{} {:?} -> {:?} flags {:?}",
        ins.keyword(),
        req.srcs,
        req.dest,
        c.flags_for_key()
    );
    let created_by = copy_created_by(&req, is_add);
    let ignore_owned = if is_context { Some(b.ignore.clone()) } else { None };
    let result = fs_step(
        b,
        state,
        ins,
        stage_index,
        &key_text,
        Some(&digest),
        created_by,
        |_b, root, _st| {
            let source = CopySource {
                root: &src_root,
                ignore: ignore_owned.as_ref(),
                is_context,
            };
            super::copy::copy_into(root, &source, &req)?;
            Ok(Vec::new())
        },
    );
    drop(src_mount);
    result
}

/// BuildKit's history text of a COPY/ADD: the flags that change content, the sources (paths
/// first, then heredocs as `<<NAME`) and the destination, expanded.
fn copy_created_by(req: &super::copy::CopyRequest, is_add: bool) -> String {
    let mut t = String::from(if is_add { "ADD" } else { "COPY" });
    if req.parents {
        t.push_str(" --parents");
    }
    if let Some(c) = &req.chown {
        t.push_str(&format!(" --chown={c}"));
    }
    if let Some(c) = &req.chmod {
        t.push_str(&format!(" --chmod={c}"));
    }
    for s in req.srcs.iter().filter(|s| !s.starts_with("<<")) {
        t.push_str(&format!(" {s}"));
    }
    for (name, _) in &req.heredocs {
        t.push_str(&format!(" <<{name}"));
    }
    t.push_str(&format!(" {} # buildkit", req.dest));
    t
}

/// The COPY/ADD with its words and flags expanded in the stage's scope, and its `--from`.
fn copy_request(
    b: &Builder,
    state: &StageState,
    ins: &Instruction,
    c: &CopyCommand,
    is_add: bool,
) -> Result<(super::copy::CopyRequest, Option<String>)> {
    let vars = state.vars();
    let esc = b.escape;
    let word = |f: &FlagValue| process_word(&f.raw, &vars, esc);
    let opt = |f: &Option<FlagValue>| f.as_ref().map(word).transpose();
    let unpack = match &c.unpack {
        None => None,
        Some(u) => Some(match word(u)?.as_str() {
            "" | "true" | "1" | "True" | "TRUE" | "t" | "T" => true,
            "false" | "0" | "False" | "FALSE" | "f" | "F" => false,
            v => bail!("{}: invalid value for --unpack: {v:?} (expected true or false)", u.loc),
        }),
    };
    let mut req = super::copy::CopyRequest {
        srcs: Vec::new(),
        dest: process_word(&c.dest, &vars, esc)?,
        workdir: state
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_string()),
        chown: opt(&c.chown)?,
        chmod: opt(&c.chmod)?,
        exclude: c.exclude.iter().map(word).collect::<Result<_>>()?,
        parents: c.parents,
        link: c.link,
        is_add,
        checksum: opt(&c.checksum)?,
        keep_git_dir: c.keep_git_dir,
        unpack,
        heredocs: Vec::new(),
        ownership: b.layer_opts.ownership,
    };
    for h in &ins.heredocs {
        let content = if h.expand {
            process_word_heredoc(&h.content, &vars, esc)?
        } else {
            h.content.clone()
        };
        req.heredocs.push((h.name.clone(), content));
    }
    for s in &c.srcs {
        if s.starts_with("<<") {
            req.srcs.push(s.clone());
        } else {
            // One source per word: the parser already split shell form; JSON form keeps spaces.
            req.srcs.push(process_word(s, &vars, esc)?);
        }
    }
    Ok((req, opt(&c.from)?))
}

/// Heredoc bodies expand variables but keep quotes and newlines literally.
fn process_word_heredoc(content: &str, vars: &BTreeMap<String, String>, esc: char) -> Result<String> {
    crate::dockerfile::expand::expand_heredoc(content, vars, esc)
}

/// A read-only view of another stage's (or image's) filesystem, unmounted on drop.
pub struct ReadOnlyRoot {
    pub path: PathBuf,
    _dir: Option<tempfile::TempDir>,
    mounted: bool,
}

impl ReadOnlyRoot {
    pub fn mount(b: &Builder, st: &StageState) -> Result<ReadOnlyRoot> {
        let lowers = b.lowers(st)?;
        let dir = b.store.tmp_dir("from-")?;
        let path = dir.path().join("root");
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        if lowers.is_empty() {
            return Ok(ReadOnlyRoot {
                path,
                _dir: Some(dir),
                mounted: false,
            });
        }
        if !crate::sandbox::probe::current().can_mount() {
            // Chroot / no-privilege isolation: a copy instead of a mount.
            crate::rootfs::materialise(&lowers, &path)?;
            return Ok(ReadOnlyRoot {
                path,
                _dir: Some(dir),
                mounted: false,
            });
        }
        crate::rootfs::mount_readonly(&lowers, &path)?;
        Ok(ReadOnlyRoot {
            path,
            _dir: Some(dir),
            mounted: true,
        })
    }
}

impl Drop for ReadOnlyRoot {
    fn drop(&mut self) {
        if self.mounted {
            use crate::sys::Syscall;
            let _ = crate::sys::RealSyscall.umount(&self.path, nix::mount::MntFlags::MNT_DETACH);
        } else {
            // A copy (chroot / no-privilege isolation) may hold read-only directories.
            let _ = crate::rootfs::remove_tree(&self.path);
        }
    }
}

/// Expands `80`, `80/TCP`, `8000-8002/udp` into `port/proto` keys (protocol lower-cased).
pub fn expand_port(spec: &str) -> Result<Vec<String>> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        bail!("invalid proto: {proto}");
    }
    // An IP prefix (`127.0.0.1:80`) is accepted by Docker and ignored.
    let ports = ports.rsplit(':').next().unwrap_or(ports);
    let (lo, hi) = match ports.split_once('-') {
        Some((a, z)) => (parse_port(a)?, parse_port(z)?),
        None => {
            let p = parse_port(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        bail!("invalid port range: {ports}");
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

fn parse_port(s: &str) -> Result<u16> {
    s.parse::<u16>()
        .with_context(|| format!("invalid port {s:?}: expected a number from 0 to 65535"))
}

/// Lexically cleans an absolute path (`/a/./b/../c/` → `/a/c`).
pub fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// HEALTHCHECK as Docker writes it: the parser already validated the flags; zero durations
/// and retries mean "default" and are left out.
fn healthcheck(spec: Option<&crate::dockerfile::HealthcheckSpec>) -> HealthConfig {
    let Some(spec) = spec else {
        return HealthConfig {
            test: Some(vec!["NONE".to_string()]),
            ..Default::default()
        };
    };
    let nanos = |d: Option<std::time::Duration>| d.map(|d| d.as_nanos() as i64).filter(|&n| n != 0);
    HealthConfig {
        test: Some(spec.test_vector()),
        interval: nanos(spec.interval),
        timeout: nanos(spec.timeout),
        start_period: nanos(spec.start_period),
        start_interval: nanos(spec.start_interval),
        retries: spec.retries.map(i64::from).filter(|&r| r != 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(expand_port("80").unwrap(), ["80/tcp"]);
        assert_eq!(expand_port("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(expand_port("8000-8002").unwrap(), ["8000/tcp", "8001/tcp", "8002/tcp"]);
        assert!(expand_port("80/foo").is_err());
        assert!(expand_port("x").is_err());
        assert!(expand_port("9-1").is_err());
    }

    #[test]
    fn clean() {
        assert_eq!(clean_path("/a/./b/../c/"), "/a/c");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("/"), "/");
    }
}
