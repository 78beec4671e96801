//! The build plan: which stages to build for the target, in which order, what each stage is
//! built on, and how ARGs are scoped.
//!
//! # ARG scoping (BuildKit semantics)
//! - **Global (meta) ARGs** are the ARGs before the first FROM. They are resolved once, in
//!   order: a `--build-arg` wins, else the default is expanded against the globals so far (the
//!   predefined platform ARGs included). They are usable in `FROM` lines (image and
//!   `--platform`) and nowhere else unless a stage redeclares them.
//! - **Inside a stage** an ARG is visible only after its declaration. `ARG x` (no default)
//!   takes the `--build-arg` value, else the global value of `x`, else stays unset; `ARG x=d`
//!   takes the `--build-arg`, else `d` expanded with the stage's current ENV/ARGs (a global
//!   value does not override a stage default).
//! - An `ENV` of the same name always wins over an ARG, before or after it.
//! - Declared ARG values are in the environment of later RUN steps but never written into the
//!   image config.
//! - A stage built `FROM` another stage inherits that stage's ENV (through the image config)
//!   and its declared ARGs.
//! - **Predefined ARGs**: `TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM
//!   BUILDOS BUILDARCH BUILDVARIANT` (and `*OSVERSION`, `TARGETSTAGE`) are global ARGs: usable in
//!   FROM at once, inside a stage only after `ARG TARGETPLATFORM` etc. The proxy variables
//!   (`HTTP_PROXY HTTPS_PROXY FTP_PROXY NO_PROXY ALL_PROXY`, any spelling) given as
//!   `--build-arg` are put into every RUN's environment in both spellings without a
//!   declaration, and never into the image ([`Plan::proxy_args`]).
//!
//! [`StageScope`] implements all of this for the executor: feed it the base image's `Env`, the
//! ARGs inherited from a base stage, then every ARG/ENV instruction in order; it expands words
//! (as a [`VarLookup`]) and yields the RUN environment and the config `Env`.

use crate::dockerfile::expand::{NoVars, process_word, process_word_with_matches, process_words};
use crate::dockerfile::{Command, CopyCommand, Dockerfile, FromCommand, Instruction, VarLookup, mount};
use anyhow::{Result, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Options that shape the plan.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// `--build-arg K=V` (an empty value is a value).
    pub build_args: BTreeMap<String, String>,
    /// `--target` stage name (case-insensitive).
    pub target: Option<String>,
    /// `--platform` (`linux/arm64`…); default `linux/<host arch>`.
    pub platform: Option<String>,
}

/// What a stage starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseRef {
    Scratch,
    /// Another stage, by its index in the Dockerfile.
    Stage(usize),
    /// An image reference, variables expanded.
    Image(String),
}

/// One stage of the build.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Position among all FROMs of the Dockerfile (0-based), also for unbuilt stages.
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    pub base: BaseRef,
    /// `FROM --platform=` expanded and normalised (`linux/arm64`), if given.
    pub platform: Option<String>,
    pub from: Instruction,
    /// The instructions after FROM.
    pub instructions: Vec<Instruction>,
    /// ONBUILD triggers of the base *stage*, to run before `instructions` (triggers of a base
    /// *image* come from its config: parse them with `dockerfile::parse_trigger`).
    pub onbuild_triggers: Vec<Instruction>,
    /// Stage indexes this stage needs: its base, `COPY --from`, `RUN --mount from=`, and those
    /// of inherited ONBUILD triggers. Sorted, deduplicated; all smaller than `index`.
    pub deps: Vec<usize>,
    /// ARGs declared in this stage (and inherited from a base stage), for display and cache
    /// keys: the `--build-arg` value, else the global value (for ARGs without default), else
    /// the raw (unexpanded) default; `None` when the ARG has no value.
    pub args_in_scope: BTreeMap<String, Option<String>>,
}

impl Stage {
    /// `name` or `stage-N`, as BuildKit names stages in messages.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

/// The resolved plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The stages needed for the target, in Dockerfile order (the target is last).
    pub stages: Vec<Stage>,
    /// The target's stage index (in Dockerfile numbering, like [`Stage::index`]).
    pub target: usize,
    /// Resolved global ARGs: predefined ones plus the meta ARGs (with build-arg overrides).
    pub global_args: BTreeMap<String, String>,
    /// TARGETPLATFORM, BUILDARCH, …
    pub predefined_args: BTreeMap<String, String>,
    /// Proxy build-args in both spellings, for every RUN environment (never the image).
    pub proxy_args: BTreeMap<String, String>,
    /// The `--build-arg`s as given.
    pub build_args: BTreeMap<String, String>,
    /// Build-args no ARG consumed (Docker warns about them).
    pub unused_build_args: Vec<String>,
    /// The Dockerfile's escape character.
    pub escape: char,
    /// The name of every stage of the Dockerfile (by index), built or not.
    pub stage_names: Vec<Option<String>>,
    /// Every stage of the Dockerfile by index (`all_stages[i].index == i`), planned or not:
    /// an ONBUILD trigger of a base *image* may name a stage the plan did not need.
    pub all_stages: Vec<Stage>,
    /// The target platform (`linux/amd64`).
    pub platform: String,
}

impl Plan {
    /// A stage by Dockerfile index, if it is part of the plan.
    pub fn stage(&self, index: usize) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == index)
    }

    /// The stage to export.
    pub fn target_stage(&self) -> &Stage {
        self.stage(self.target).expect("the target is always planned")
    }

    /// Groups of stage indexes that can be built in parallel: every stage of a group depends
    /// only on stages of earlier groups.
    pub fn parallel_levels(&self) -> Vec<Vec<usize>> {
        let mut level: BTreeMap<usize, usize> = BTreeMap::new();
        for s in &self.stages {
            let l = s
                .deps
                .iter()
                .filter_map(|d| level.get(d))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            level.insert(s.index, l);
        }
        let max = level.values().copied().max().unwrap_or(0);
        (0..=max)
            .map(|l| level.iter().filter(|(_, v)| **v == l).map(|(k, _)| *k).collect())
            .collect()
    }
}

impl Plan {
    /// The value an `ARG name` declaration in stage `stage_index` takes *before* its own
    /// default is considered: the `--build-arg` value if given; otherwise, when every
    /// declaration of `name` in that stage has no default, the global ARG value (meta ARGs and
    /// predefined platform ARGs). `None` means "use the declaration's default (expanded), or
    /// leave it unset". `_current` (the stage's ARGs so far) is accepted for the caller's
    /// convenience. [`StageScope::declare_arg`] implements the full rule with the default.
    pub fn arg_value(&self, stage_index: usize, name: &str, _current: &BTreeMap<String, String>) -> Option<String> {
        if let Some(v) = self.build_args.get(name) {
            return Some(v.clone());
        }
        let stage = self.stage(stage_index)?;
        let mut decls = stage
            .onbuild_triggers
            .iter()
            .chain(stage.instructions.iter())
            .filter_map(|i| match &i.command {
                Command::Arg(kvs) => Some(
                    kvs.iter()
                        .filter(|(k, _)| k == name)
                        .map(|(_, d)| d.is_some())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .peekable();
        decls.peek()?;
        if decls.any(|has_default| has_default) {
            return None;
        }
        self.global_args.get(name).cloned()
    }
}

/// Resolve a `COPY --from=` / `--mount from=` value: a stage name (case-insensitive) or index
/// of the Dockerfile, else an image reference.
pub fn copy_from_ref(plan: &Plan, from: &str) -> BaseRef {
    lookup_stage(&plan.stage_names, from)
        .map(BaseRef::Stage)
        .unwrap_or_else(|| BaseRef::Image(from.to_string()))
}

fn lookup_stage(names: &[Option<String>], from: &str) -> Option<usize> {
    let lower = from.to_ascii_lowercase();
    if let Some(i) = names.iter().rposition(|n| n.as_deref() == Some(lower.as_str())) {
        return Some(i);
    }
    if !from.is_empty() && from.chars().all(|c| c.is_ascii_digit()) {
        return from.parse::<usize>().ok();
    }
    None
}

/// An OCI platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: String,
}

impl Platform {
    /// The host: `linux/<arch>`.
    pub fn host() -> Platform {
        Platform::parse(&format!("linux/{}", crate::image::host_arch())).unwrap_or(Platform {
            os: "linux".into(),
            arch: crate::image::host_arch().into(),
            variant: String::new(),
        })
    }

    /// Parse and normalise `os/arch[/variant]` (`x86_64` → `amd64`, `aarch64` → `arm64`,
    /// `arm64/v8` → `arm64`, `arm` → `arm/v7`); a bare arch means linux.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [a] => ("linux", *a, ""),
            [o, a] => (*o, *a, ""),
            [o, a, v] => (*o, *a, *v),
            _ => bail!("invalid platform {s:?} (expected <os>/<arch>[/<variant>], like linux/arm64)"),
        };
        if os.is_empty() || arch.is_empty() {
            bail!("invalid platform {s:?} (expected <os>/<arch>[/<variant>], like linux/arm64)");
        }
        let os = os.to_ascii_lowercase();
        let (arch, mut variant) = match (arch.to_ascii_lowercase().as_str(), variant.to_ascii_lowercase()) {
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64".to_string(), v),
            ("aarch64" | "arm64", v) => (
                "arm64".to_string(),
                if v == "8" || v == "v8" { String::new() } else { v },
            ),
            ("armhf" | "armel", _) => (
                "arm".to_string(),
                if arch.eq_ignore_ascii_case("armel") {
                    "v6".into()
                } else {
                    "v7".into()
                },
            ),
            ("arm", v) => ("arm".to_string(), if v.is_empty() { "v7".to_string() } else { v }),
            ("i386" | "i686" | "386", v) => ("386".to_string(), v),
            (a, v) => (a.to_string(), v),
        };
        if !variant.is_empty() && variant.chars().all(|c| c.is_ascii_digit()) {
            variant = format!("v{variant}");
        }
        Ok(Platform { os, arch, variant })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.variant.is_empty() {
            write!(f, "{}/{}", self.os, self.arch)
        } else {
            write!(f, "{}/{}/{}", self.os, self.arch, self.variant)
        }
    }
}

const PROXY_ARGS: &[&str] = &["http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"];

fn is_proxy(name: &str) -> bool {
    PROXY_ARGS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The predefined platform ARGs.
pub fn predefined_args(target: &Platform, build: &Platform, target_stage: &str) -> BTreeMap<String, String> {
    [
        ("BUILDPLATFORM", build.to_string()),
        ("BUILDOS", build.os.clone()),
        ("BUILDOSVERSION", String::new()),
        ("BUILDARCH", build.arch.clone()),
        ("BUILDVARIANT", build.variant.clone()),
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
        ("TARGETOSVERSION", String::new()),
        ("TARGETARCH", target.arch.clone()),
        ("TARGETVARIANT", target.variant.clone()),
        ("TARGETSTAGE", target_stage.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Build the plan.
pub fn plan(df: &Dockerfile, opts: &BuildOptions) -> Result<Plan> {
    let escape = df.directives.escape;
    let (meta, raw_stages) = split_stages(df)?;
    let stage_names: Vec<Option<String>> = raw_stages
        .iter()
        .map(|(f, _)| match &f.command {
            Command::From(f) => f.name.clone(),
            _ => None,
        })
        .collect();
    let target = target_index(opts, &stage_names)?;
    // TARGETSTAGE: --target as given, else the last stage's name, else "default" (BuildKit's
    // defaultArgs in dockerfile2llb/platform.go).
    let target_stage_name = match opts.target.clone().or_else(|| stage_names[target].clone()) {
        Some(t) if !t.is_empty() => t,
        _ => "default".to_string(),
    };

    // predefined and global ARGs
    let target_platform = match &opts.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let mut predefined = predefined_args(&target_platform, &Platform::host(), &target_stage_name);
    for (k, v) in predefined.iter_mut() {
        if let Some(o) = opts.build_args.get(k) {
            *v = o.clone();
        }
    }
    let (global, meta_names) = global_args(&meta, opts, &predefined, escape)?;

    // stages: base and dependencies
    let mut stages: Vec<Stage> = Vec::new();
    for (index, (from, body)) in raw_stages.iter().enumerate() {
        stages.push(stage_of(index, from, body, &stage_names, &global, escape)?);
    }
    let dep_sites = link_stages(&mut stages, &stage_names)?;
    let needed = needed_stages(&stages, target, &dep_sites)?;
    let used_args = scope_args(&mut stages, &needed, opts, &global, meta_names);

    let proxy_args: BTreeMap<String, String> = opts
        .build_args
        .iter()
        .filter(|(k, _)| is_proxy(k))
        .flat_map(|(k, v)| [(k.to_ascii_uppercase(), v.clone()), (k.to_ascii_lowercase(), v.clone())])
        .collect();
    let unused_build_args = opts
        .build_args
        .keys()
        .filter(|k| !used_args.contains(*k) && !predefined.contains_key(*k) && !is_proxy(k))
        .cloned()
        .collect();

    Ok(Plan {
        stages: stages.iter().filter(|s| needed.contains(&s.index)).cloned().collect(),
        all_stages: stages,
        target,
        global_args: global,
        predefined_args: predefined,
        proxy_args,
        build_args: opts.build_args.clone(),
        unused_build_args,
        escape,
        stage_names,
        platform: target_platform.to_string(),
    })
}

/// The global ARGs (before the first FROM) and the stages with their instructions.
#[allow(clippy::type_complexity)]
fn split_stages(df: &Dockerfile) -> Result<(Vec<&Instruction>, Vec<(&Instruction, Vec<&Instruction>)>)> {
    let mut meta: Vec<&Instruction> = Vec::new();
    let mut raw_stages: Vec<(&Instruction, Vec<&Instruction>)> = Vec::new();
    for ins in &df.instructions {
        match (&ins.command, raw_stages.last_mut()) {
            (Command::From(_), _) => raw_stages.push((ins, Vec::new())),
            (_, Some((_, body))) => body.push(ins),
            (Command::Arg(_), None) => meta.push(ins),
            (_, None) => bail!(ins.loc.error(format!(
                "{} before the first FROM (only ARG may come before FROM)",
                ins.keyword()
            ))),
        }
    }
    if raw_stages.is_empty() {
        bail!("the Dockerfile has no FROM instruction, so there is no stage to build");
    }
    Ok((meta, raw_stages))
}

/// `--target` (a stage name), else the last stage.
fn target_index(opts: &BuildOptions, stage_names: &[Option<String>]) -> Result<usize> {
    Ok(match &opts.target {
        Some(t) => {
            let lower = t.to_ascii_lowercase();
            stage_names
                .iter()
                .rposition(|n| n.as_deref() == Some(lower.as_str()))
                .ok_or_else(|| {
                    let names: Vec<&str> = stage_names.iter().flatten().map(String::as_str).collect();
                    if let Some(m) = crate::dockerfile::suggest::search(t, &names, true) {
                        return anyhow!("target stage {t:?} could not be found (did you mean {m}?)");
                    }
                    anyhow!(
                        "target stage {t:?} could not be found (the Dockerfile's named stages: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )
                })?
        }
        None => stage_names.len() - 1,
    })
}

/// The global scope: predefined ARGs, then the global ARG declarations with their
/// `--build-arg` values or expanded defaults; and the names declared.
fn global_args(
    meta: &[&Instruction],
    opts: &BuildOptions,
    predefined: &BTreeMap<String, String>,
    escape: char,
) -> Result<(BTreeMap<String, String>, BTreeSet<String>)> {
    let mut global = predefined.clone();
    let mut meta_names = BTreeSet::new();
    for ins in meta {
        let Command::Arg(kvs) = &ins.command else { continue };
        for (k, default) in kvs {
            meta_names.insert(k.clone());
            let value = match (opts.build_args.get(k), default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => Some(process_word(d, &global, escape).map_err(|e| ins.loc.error(e))?),
                (None, None) => None,
            };
            if let Some(v) = value {
                global.insert(k.clone(), v);
            }
        }
    }
    Ok((global, meta_names))
}

/// One stage from its FROM line: base (scratch, an earlier stage or an image) and platform,
/// expanded in the global scope.
fn stage_of(
    index: usize,
    from: &Instruction,
    body: &[&Instruction],
    stage_names: &[Option<String>],
    global: &BTreeMap<String, String>,
    escape: char,
) -> Result<Stage> {
    let Command::From(FromCommand { image, name, platform }) = &from.command else {
        unreachable!()
    };
    let expanded = process_word(image, global, escape).map_err(|e| from.loc.error(e))?;
    if expanded.is_empty() {
        bail!(from.loc.error(format!(
            "base name ({image}) should not be blank (expected an image reference)"
        )));
    }
    let base = if expanded.eq_ignore_ascii_case("scratch") {
        BaseRef::Scratch
    } else if let Some(j) = stage_names[..index]
        .iter()
        .rposition(|n| n.as_deref() == Some(expanded.to_ascii_lowercase().as_str()))
    {
        BaseRef::Stage(j)
    } else {
        BaseRef::Image(expanded)
    };
    let platform = match platform.as_ref().map(|f| f.raw.as_str()) {
        Some(p) => {
            let v = process_word(p, global, escape).map_err(|e| from.loc.error(e))?;
            if v.is_empty() {
                bail!(from.loc.error(format!(
                    "empty platform value from expression {p} (expected <os>/<arch>)"
                )));
            }
            Some(Platform::parse(&v).map_err(|e| from.loc.error(e))?.to_string())
        }
        None => None,
    };
    Ok(Stage {
        index,
        name: name.clone(),
        base,
        platform,
        from: from.clone(),
        instructions: body.iter().map(|i| (*i).clone()).collect(),
        onbuild_triggers: Vec::new(),
        deps: Vec::new(),
        args_in_scope: BTreeMap::new(),
    })
}

/// ONBUILD triggers of base stages and every stage's dependencies (with the `--from` checks
/// BuildKit applies to every stage); returns where each stage names each dependency.
fn link_stages(stages: &mut [Stage], stage_names: &[Option<String>]) -> Result<Vec<Vec<(usize, Instruction)>>> {
    for i in 0..stages.len() {
        if let BaseRef::Stage(j) = stages[i].base {
            let triggers: Vec<Instruction> = stages[j]
                .instructions
                .iter()
                .filter_map(|ins| match &ins.command {
                    Command::Onbuild(t) => Some((**t).clone()),
                    _ => None,
                })
                .collect();
            stages[i].onbuild_triggers = triggers;
        }
    }
    // dependencies (with the --from checks BuildKit applies to every stage)
    let total = stages.len();
    let mut dep_sites: Vec<Vec<(usize, Instruction)>> = vec![Vec::new(); total];
    for s in stages.iter_mut() {
        let mut deps = BTreeSet::new();
        if let BaseRef::Stage(j) = s.base {
            deps.insert(j);
        }
        for ins in s.onbuild_triggers.iter().chain(s.instructions.iter()) {
            for from in from_refs(ins)? {
                if let Some(j) = lookup_stage(stage_names, &from) {
                    if j >= total {
                        bail!(
                            ins.loc
                                .error(format!("invalid stage index {j} (the Dockerfile has {total} stages)"))
                        );
                    }
                    deps.insert(j);
                    dep_sites[s.index].push((j, ins.clone()));
                }
            }
        }
        s.deps = deps.into_iter().collect();
    }
    Ok(dep_sites)
}

/// The stages reachable from the target; a needed stage may only use stages defined before it.
fn needed_stages(stages: &[Stage], target: usize, dep_sites: &[Vec<(usize, Instruction)>]) -> Result<BTreeSet<usize>> {
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if needed.insert(i) {
            todo.extend(stages[i].deps.iter().copied());
        }
    }
    for &i in &needed {
        for (j, ins) in &dep_sites[i] {
            if *j >= i {
                bail!(ins.loc.error(format!(
                    "cannot copy from stage {:?}, it needs to be defined before current stage {:?}",
                    stages[*j].display_name(),
                    stages[i].display_name()
                )));
            }
        }
    }
    Ok(needed)
}

/// Each stage's ARGs in scope (inherited from a base stage, then its own declarations); returns
/// the ARG names the needed stages (and the globals) declare.
fn scope_args(
    stages: &mut [Stage],
    needed: &BTreeSet<usize>,
    opts: &BuildOptions,
    global: &BTreeMap<String, String>,
    meta_names: BTreeSet<String>,
) -> BTreeSet<String> {
    let mut used_args: BTreeSet<String> = meta_names;
    for i in 0..stages.len() {
        let mut scope = match stages[i].base {
            BaseRef::Stage(j) => stages[j].args_in_scope.clone(),
            _ => BTreeMap::new(),
        };
        for ins in stages[i].onbuild_triggers.iter().chain(stages[i].instructions.iter()) {
            if let Command::Arg(kvs) = &ins.command {
                for (k, d) in kvs {
                    if needed.contains(&i) {
                        used_args.insert(k.clone());
                    }
                    let v = match (opts.build_args.get(k), d) {
                        (Some(v), _) => Some(v.clone()),
                        (None, None) => global.get(k).cloned(),
                        (None, Some(d)) => Some(d.clone()),
                    };
                    scope.insert(k.clone(), v);
                }
            }
        }
        stages[i].args_in_scope = scope;
    }
    used_args
}

/// The `--from` values of COPY and RUN --mount in an instruction (ONBUILD triggers are not
/// followed: they run in the child stage).
fn from_refs(ins: &Instruction) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match &ins.command {
        Command::Copy(c) => {
            if let Some(f) = &c.from {
                let literal = process_word(&f.raw, &NoVars, '\\').unwrap_or_default();
                if literal != f.raw {
                    bail!(f.loc.error(
                        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
                    ));
                }
                out.push(f.raw.clone());
            }
        }
        Command::Run(r) => {
            for f in &r.mounts {
                if let Ok(m) = mount::parse_mount(&f.raw)
                    && let Some(from) = m.from
                {
                    out.push(from);
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

/// The variable scope of one stage while it is being built (see the module docs).
#[derive(Clone, Debug)]
pub struct StageScope {
    escape: char,
    /// Image config Env (base image + ENV), in order, keys unique.
    env: Vec<(String, String)>,
    /// Declared ARGs (inherited first), in order, names unique.
    args: Vec<(String, Option<String>)>,
    build_args: BTreeMap<String, String>,
    global_args: BTreeMap<String, String>,
    proxy_args: BTreeMap<String, String>,
}

impl StageScope {
    /// Start a stage: `base_env` is the base image's config `Env` (`K=V`), `inherited_args` the
    /// ARGs of the base stage's scope (empty for an image base).
    pub fn new(plan: &Plan, base_env: &[String], inherited_args: &[(String, Option<String>)]) -> StageScope {
        let mut s = StageScope {
            escape: plan.escape,
            env: Vec::new(),
            args: Vec::new(),
            build_args: plan.build_args.clone(),
            global_args: plan.global_args.clone(),
            proxy_args: plan.proxy_args.clone(),
        };
        for kv in base_env {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            s.put_env(k.to_string(), v.to_string());
        }
        for (k, v) in inherited_args {
            s.put_arg(k.clone(), v.clone());
        }
        s
    }

    fn put_env(&mut self, k: String, v: String) {
        match self.env.iter_mut().find(|(ek, _)| *ek == k) {
            Some(e) => e.1 = v,
            None => self.env.push((k, v)),
        }
    }

    /// Declares `k`; declared again without a value, an earlier value stays (BuildKit adds
    /// only valued ARGs to the stage's environment).
    fn put_arg(&mut self, k: String, v: Option<String>) {
        match self.args.iter_mut().find(|(ak, _)| *ak == k) {
            Some(a) => {
                if v.is_some() {
                    a.1 = v
                }
            }
            None => self.args.push((k, v)),
        }
    }

    /// `ARG name[=default]`: returns the value it got (None = declared but unset).
    pub fn declare_arg(&mut self, name: &str, default: Option<&str>) -> Result<Option<String>> {
        let value = match (self.build_args.get(name), default) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(d)) => Some(process_word(d, self, self.escape)?),
            (None, None) => self.global_args.get(name).cloned(),
        };
        self.put_arg(name.to_string(), value.clone());
        Ok(value)
    }

    /// `ENV k=v ...`: keys and values are expanded against the scope *before* the instruction.
    pub fn apply_env(&mut self, pairs: &[(String, String)]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (k, v) in pairs {
            let k = process_word(k, self, self.escape)?;
            if k.is_empty() {
                bail!("ENV names can not be blank");
            }
            out.push((k, process_word(v, self, self.escape)?));
        }
        for (k, v) in &out {
            self.put_env(k.clone(), v.clone());
        }
        Ok(out)
    }

    /// Apply an ARG or ENV instruction (others are ignored); errors carry the location.
    pub fn apply(&mut self, ins: &Instruction) -> Result<()> {
        match &ins.command {
            Command::Arg(kvs) => {
                for (k, d) in kvs {
                    self.declare_arg(k, d.as_deref()).map_err(|e| ins.loc.error(e))?;
                }
            }
            Command::Env(pairs) => {
                self.apply_env(pairs).map_err(|e| ins.loc.error(e))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The image config `Env` (`K=V`), in order.
    pub fn config_env(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// The declared ARGs with their values (to hand to a child stage, or for cache keys).
    pub fn args(&self) -> &[(String, Option<String>)] {
        &self.args
    }

    /// The environment of a RUN: config Env, then declared ARGs with a value not shadowed by
    /// ENV, then proxy build-args neither declared nor set by ENV.
    pub fn run_env(&self) -> Vec<String> {
        let mut out = self.config_env();
        let has = |k: &str| self.env.iter().any(|(ek, _)| ek == k);
        for (k, v) in &self.args {
            if let Some(v) = v
                && !has(k)
            {
                out.push(format!("{k}={v}"));
            }
        }
        for (k, v) in &self.proxy_args {
            if !has(k) && !self.args.iter().any(|(ak, _)| ak == k) {
                out.push(format!("{k}={v}"));
            }
        }
        out
    }

    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expand one word (single result) in this scope.
    pub fn word(&self, w: &str) -> Result<String> {
        process_word(w, self, self.escape)
    }

    /// Expand one word into fields in this scope.
    pub fn words(&self, w: &str) -> Result<Vec<String>> {
        process_words(w, self, self.escape)
    }

    /// The ARG names (with values) a word uses, for cache keys.
    pub fn used_args(&self, w: &str) -> Vec<(String, String)> {
        let Ok(r) = process_word_with_matches(w, self, self.escape) else {
            return Vec::new();
        };
        r.matched
            .into_iter()
            .filter(|k| !self.env.iter().any(|(ek, _)| ek == k))
            .filter_map(|k| {
                self.args
                    .iter()
                    .find(|(ak, _)| *ak == k)
                    .and_then(|(_, v)| v.clone().map(|v| (k.clone(), v)))
            })
            .collect()
    }
}

impl VarLookup for StageScope {
    fn get(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.env.iter().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.args.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone())
    }
}

impl Plan {
    /// A human-readable rendering for `kiln build --dry-run`: stages, bases, dependencies and
    /// every step with its arguments expanded as far as the Dockerfile alone allows (the base
    /// image's own ENV is not known before pulling it).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "platform: {}", self.platform);
        if !self.global_args.is_empty() {
            let globals: Vec<String> = self
                .global_args
                .iter()
                .filter(|(k, _)| !self.predefined_args.contains_key(*k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !globals.is_empty() {
                let _ = writeln!(out, "global args: {}", globals.join(" "));
            }
        }
        if !self.unused_build_args.is_empty() {
            let _ = writeln!(
                out,
                "warning: build-args not consumed: {}",
                self.unused_build_args.join(", ")
            );
        }
        // Per rendered stage: its ARG scope and WORKDIR, for the stages built on it.
        type Inherited = (Vec<(String, Option<String>)>, String);
        let mut stage_args: BTreeMap<usize, Inherited> = BTreeMap::new();
        for s in &self.stages {
            let base = match &s.base {
                BaseRef::Scratch => "scratch".to_string(),
                BaseRef::Stage(j) => format!(
                    "stage {j} ({})",
                    self.stage(*j).map(|s| s.display_name()).unwrap_or_default()
                ),
                BaseRef::Image(r) => r.clone(),
            };
            let _ = write!(out, "\nstage {} {:?} FROM {base}", s.index, s.display_name());
            if let Some(p) = &s.platform {
                let _ = write!(out, " (platform {p})");
            }
            if !s.deps.is_empty() {
                let _ = write!(out, " needs {:?}", s.deps);
            }
            if s.index == self.target {
                let _ = write!(out, " [target]");
            }
            out.push('\n');
            let (inherited, mut workdir) = match s.base {
                BaseRef::Stage(j) => stage_args.get(&j).cloned().unwrap_or_default(),
                _ => (Vec::new(), String::new()),
            };
            let mut scope = StageScope::new(self, &[], &inherited);
            for (n, ins) in s
                .onbuild_triggers
                .iter()
                .map(|i| (true, i))
                .chain(s.instructions.iter().map(|i| (false, i)))
            {
                let shown = match render_expanded(ins, &mut scope, &mut workdir) {
                    Ok(Some(e)) if e != ins.original => format!("{}\n      => {e}", ins.original),
                    Ok(_) => ins.original.clone(),
                    Err(e) => format!("{}\n      !! {e}", ins.original),
                };
                let prefix = if n { "ONBUILD trigger " } else { "" };
                let _ = writeln!(
                    out,
                    "  {}: {prefix}{}",
                    ins.loc,
                    shown.lines().collect::<Vec<_>>().join("\n    ")
                );
            }
            stage_args.insert(s.index, (scope.args().to_vec(), workdir));
        }
        out
    }
}

/// One instruction with its values as the build will use them: ARG and ENV values, LABELs,
/// WORKDIR as an absolute path (relative to the base image's when it is not known here), COPY
/// flags and paths, and the environment a RUN gets. `workdir` is the stage's so far.
fn render_expanded(ins: &Instruction, scope: &mut StageScope, workdir: &mut String) -> Result<Option<String>> {
    let kw = ins.keyword();
    if let Command::Workdir(w) = &ins.command {
        let w = scope.word(w)?;
        let joined = if w.starts_with('/') || workdir.is_empty() {
            w
        } else {
            format!("{workdir}/{w}")
        };
        let mut parts: Vec<&str> = Vec::new();
        for c in joined.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        *workdir = format!("/{}", parts.join("/"));
        return Ok(Some(format!("{kw} {workdir}")));
    }
    let words = |ws: &[String]| -> Result<String> {
        Ok(ws.iter().map(|w| scope.word(w)).collect::<Result<Vec<_>>>()?.join(" "))
    };
    Ok(match &ins.command {
        Command::Arg(kvs) => {
            let mut shown = Vec::new();
            for (k, d) in kvs {
                match scope.declare_arg(k, d.as_deref())? {
                    Some(v) => shown.push(format!("{k}={v:?}")),
                    None => shown.push(format!("{k} (unset)")),
                }
            }
            Some(format!("{kw} {}", shown.join(" ")))
        }
        Command::Env(pairs) => {
            let set = scope.apply_env(pairs)?;
            let shown: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            Some(format!("{kw} {}", shown.join(" ")))
        }
        Command::Run(_) => Some(format!(
            "{}\n      environment (besides the base image's): {}",
            ins.original,
            scope.run_env().join(" ")
        )),
        Command::Copy(c) | Command::Add(c) => {
            let mut all = c.srcs.clone();
            all.push(c.dest.clone());
            Some(format!("{kw} {}{}", copy_flags(c, scope)?, words(&all)?))
        }
        Command::User(w) | Command::Stopsignal(w) => Some(format!("{kw} {}", scope.word(w)?)),
        Command::Label(kvs) => Some(format!(
            "{kw} {}",
            kvs.iter()
                .map(|(k, v)| Ok(format!("{}={:?}", scope.word(k)?, scope.word(v)?)))
                .collect::<Result<Vec<_>>>()?
                .join(" ")
        )),
        Command::Expose(ws) => {
            let mut ports = Vec::new();
            for w in ws {
                ports.extend(scope.words(w)?);
            }
            Some(format!("{kw} {}", ports.join(" ")))
        }
        Command::Volume(ws) => {
            let mut vols = Vec::new();
            for w in ws {
                vols.extend(scope.words(w)?);
            }
            Some(format!("{kw} {}", vols.join(" ")))
        }
        _ => None,
    })
}

/// The flags of a COPY/ADD as `--name=value ` words, `--chown`, `--chmod` and `--checksum`
/// expanded (as when the step runs; `--from` and `--exclude` are not expanded).
fn copy_flags(c: &CopyCommand, scope: &StageScope) -> Result<String> {
    let mut shown = c.clone();
    for f in [&mut shown.chown, &mut shown.chmod, &mut shown.checksum]
        .into_iter()
        .flatten()
    {
        f.raw = scope.word(&f.raw)?;
    }
    let mut out = String::new();
    for (name, value) in shown.flags_for_key() {
        match value {
            Some(v) => out.push_str(&format!("--{name}={v} ")),
            None => out.push_str(&format!("--{name} ")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
