//! RUN steps: the command line (shell/exec form, heredocs), the environment, and
//! `RUN --mount` (cache, bind, tmpfs, secret, ssh), then the sandbox.

use super::step::{ReadOnlyRoot, fs_step};
use super::{Builder, StageState, shell_of};
use crate::dockerfile::mount::{MountKind, RunMount, Sharing, parse_mount_expanding};
use crate::dockerfile::{FlagValue, Instruction, NetworkMode, RunCommand, SecurityMode, ShellOrExec};
use crate::fsutil::{Follow, Root};
use crate::sandbox::{MountSpec, Network, RunSpec};
use anyhow::{Context, Result, bail};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Build args that every RUN sees without declaring them (both spellings), as BuildKit does.
const PROXY_ARGS: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"];

/// The argv of a RUN: shell/exec form, and heredocs as BuildKit runs them — a lone heredoc
/// is the script (a file when it has a shebang); otherwise the heredocs go to the shell.
fn run_argv(
    cmd: &ShellOrExec,
    ins: &Instruction,
    shell: &[String],
    scratch: &Path,
    mounts: &mut Vec<MountSpec>,
) -> Result<Vec<String>> {
    let ShellOrExec::Shell(line) = cmd else {
        return Ok(super::command_argv(cmd, shell));
    };
    if ins.heredocs.is_empty() {
        return Ok(super::command_argv(cmd, shell));
    }
    let lone = ins.heredocs.len() == 1 && is_lone_heredoc(line, &ins.heredocs[0].name);
    if lone {
        let h = &ins.heredocs[0];
        if h.content.starts_with("#!") {
            let path = scratch.join("heredoc-script");
            std::fs::write(&path, &h.content).with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            let dest = format!("/dev/pipes/{}", h.name);
            mounts.push(MountSpec::Bind {
                src: path,
                dest: dest.clone(),
                readonly: true,
            });
            return Ok(vec![dest]);
        }
        let mut v = shell.to_vec();
        v.push(h.content.clone());
        return Ok(v);
    }
    let mut script = line.clone();
    for h in &ins.heredocs {
        script.push('\n');
        script.push_str(&h.content);
        if !h.content.ends_with('\n') && !h.content.is_empty() {
            script.push('\n');
        }
        script.push_str(&h.name);
    }
    let mut v = shell.to_vec();
    v.push(script);
    Ok(v)
}

/// The argv BuildKit records in a RUN's history: as run, except that a lone heredoc with a
/// shebang shows as the shell running `/dev/pipes/NAME`.
fn history_argv(cmd: &ShellOrExec, ins: &Instruction, shell: &[String]) -> Vec<String> {
    if let ShellOrExec::Shell(line) = cmd
        && ins.heredocs.len() == 1
        && is_lone_heredoc(line, &ins.heredocs[0].name)
        && ins.heredocs[0].content.starts_with("#!")
    {
        let mut v = shell.to_vec();
        v.push(format!("/dev/pipes/{}", ins.heredocs[0].name));
        return v;
    }
    let mut none = Vec::new();
    run_argv(cmd, ins, shell, Path::new("/nonexistent"), &mut none).unwrap_or_else(|_| super::command_argv(cmd, shell))
}

/// The RUN sandbox's hostname: `--build-arg BUILDKIT_SANDBOX_HOSTNAME=NAME`, else BuildKit's
/// default, `buildkitsandbox` (frontend/dockerui/config.go, executor/oci).
fn sandbox_hostname(b: &Builder) -> String {
    b.req
        .frontend
        .build_args
        .get("BUILDKIT_SANDBOX_HOSTNAME")
        .filter(|h| !h.is_empty())
        .cloned()
        .unwrap_or_else(|| "buildkitsandbox".to_string())
}

fn is_lone_heredoc(line: &str, name: &str) -> bool {
    let t = line.trim();
    let t = t.strip_prefix("<<").unwrap_or(t);
    let t = t.strip_prefix('-').unwrap_or(t);
    let t = t.trim_matches(|c| c == '"' || c == '\'');
    t == name
}

/// Isolation rung 4 (no privilege, no user namespaces): refuses a plan that has RUN steps
/// before anything is built, with one paragraph naming what is missing and the fixes.
pub fn refuse_run_without_privilege(plan: &crate::plan::Plan) -> Result<()> {
    let rung = crate::sandbox::probe::current();
    if rung.can_run() {
        return Ok(());
    }
    let runs: Vec<&Instruction> = plan
        .stages
        .iter()
        .flat_map(|s| s.onbuild_triggers.iter().chain(s.instructions.iter()))
        .filter(|i| matches!(i.command, crate::dockerfile::Command::Run(_)))
        .collect();
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let what = format!(
        "RUN instructions ({} {}{})",
        first.loc,
        first.original,
        if runs.len() > 1 {
            format!(" and {} more", runs.len() - 1)
        } else {
            String::new()
        }
    );
    bail!(
        "{}",
        crate::sandbox::probe::run_refusal(&crate::sandbox::probe::full_probe(), &what)
    )
}

/// A RUN's environment: image ENV, then ARGs in scope that ENV does not override, then the
/// proxy build args (both spellings).
fn run_env(b: &Builder, state: &StageState) -> Vec<String> {
    let mut env: Vec<String> = state.config.config.env.clone().unwrap_or_default();
    let env_keys: Vec<String> = env
        .iter()
        .map(|kv| kv.split('=').next().unwrap_or("").to_string())
        .collect();
    for (k, v) in &state.args {
        if !env_keys.contains(k) {
            env.push(format!("{k}={v}"));
        }
    }
    for (k, v) in &b.req.frontend.build_args {
        if PROXY_ARGS.contains(&k.to_ascii_uppercase().as_str()) {
            for name in [k.to_ascii_uppercase(), k.to_ascii_lowercase()] {
                if !env.iter().any(|kv| kv.split('=').next() == Some(&name)) {
                    env.push(format!("{name}={v}"));
                }
            }
        }
    }
    env
}

/// The bind mounts' sources: their content digest (an input of the step's cache key), the
/// source of each bind (None: the build context, filtered by .dockerignore when the step
/// runs, see `filtered_context`), and the read-only roots of stage sources (unmounted on drop).
#[allow(clippy::type_complexity)]
fn bind_inputs(
    b: &Builder,
    ins: &Instruction,
    mount_specs: &[RunMount],
) -> Result<(
    Option<crate::digest::Digest>,
    Vec<(RunMount, Option<PathBuf>)>,
    Vec<ReadOnlyRoot>,
)> {
    let mut source_digest = None;
    let mut sources = Vec::new();
    for m in mount_specs {
        if m.kind == MountKind::Bind {
            let (root, is_context) = match &m.from {
                Some(f) => {
                    let st = b.source_state(f, &ins.loc)?;
                    (Some(st), false)
                }
                None => (None, true),
            };
            sources.push((m.clone(), root, is_context));
        }
    }
    let mut ro_roots = Vec::new();
    // The source of each bind; None: the build context, filtered by .dockerignore when the
    // step actually runs (see `filtered_context`).
    let mut bind_roots: Vec<(RunMount, Option<PathBuf>)> = Vec::new();
    for (m, st, is_context) in sources {
        let root = match st {
            Some(st) => {
                let r = ReadOnlyRoot::mount(b, &st)?;
                let p = r.path.clone();
                ro_roots.push(r);
                p
            }
            None => b.req.source.context.clone(),
        };
        let src_rel = m.source.clone().unwrap_or_else(|| "/".to_string());
        // The symlink-free path of the source inside its root (the stage's rootfs is mounted
        // read-only and the context is the user's own: nothing changes it under the build).
        let src = Root::open(&root)
            .and_then(|r| r.canonical(&src_rel, Follow::All).map(|rel| (r, rel)))
            .ok()
            .filter(|(r, rel)| r.exists(rel))
            .map(|(_, rel)| root.join(rel));
        let Some(src) = src else {
            bail!("{}: --mount source {src_rel}: not found", ins.loc);
        };
        let req = super::copy::CopyRequest {
            srcs: vec![src_rel.clone()],
            dest: "/".to_string(),
            workdir: "/".to_string(),
            chown: None,
            chmod: None,
            exclude: Vec::new(),
            parents: false,
            link: false,
            is_add: false,
            checksum: None,
            keep_git_dir: false,
            unpack: None,
            heredocs: Vec::new(),
            ownership: b.layer_opts.ownership,
        };
        let ignore = if is_context { Some(&b.ignore) } else { None };
        let d = super::copy::source_digest(
            &super::copy::CopySource {
                root: &root,
                ignore,
                is_context,
            },
            &req,
        )?;
        source_digest = Some(crate::digest::Digest::of(
            format!(
                "{:?}{}",
                source_digest.as_ref().map(|d: &crate::digest::Digest| d.to_string()),
                d
            )
            .as_bytes(),
        ));
        bind_roots.push((m, (!is_context).then_some(src)));
    }
    Ok((source_digest, bind_roots, ro_roots))
}

/// Executes a RUN instruction.
pub fn run_step(
    b: &Builder,
    state: &mut StageState,
    ins: &Instruction,
    stage_index: usize,
    run: &RunCommand,
) -> Result<bool> {
    let cmd = &run.cmd;
    let vars = state.vars();
    let esc = b.escape;
    let word = |f: &FlagValue| crate::dockerfile::expand::process_word(&f.raw, &vars, esc);
    let word_str = |v: &str| crate::dockerfile::expand::process_word(v, &vars, esc);
    let mut mount_specs = Vec::new();
    for f in &run.mounts {
        mount_specs.push(parse_mount_expanding(&f.raw, &|v: &str| word_str(v)).with_context(|| format!("{}", f.loc))?);
    }
    let mut network = b.req.run.network;
    if let Some(f) = &run.network {
        network = match NetworkMode::parse(&word(f)?).map_err(|e| f.loc.error(e))? {
            NetworkMode::None => Network::None,
            NetworkMode::Host | NetworkMode::Default => Network::Host,
        };
    }
    if let Some(f) = &run.security {
        match SecurityMode::parse(&word(f)?).map_err(|e| f.loc.error(e))? {
            SecurityMode::Sandbox => {}
            SecurityMode::Insecure => bail!(
                "{}: --security=insecure is not supported: kiln runs RUN steps in its rootless sandbox (only --security=sandbox)",
                f.loc
            ),
        }
    }
    let env = run_env(b, state);
    let shell = shell_of(&state.config);
    let created_by = super::history::run(&history_argv(cmd, ins, &shell), &state.arg_decls, &env);
    let heredocs: Vec<_> = ins.heredocs.iter().map(|h| (&h.name, &h.content)).collect();
    let mount_key: Vec<String> = mount_specs
        .iter()
        .map(|m| format!("{:?}:{}:{:?}:{:?}:{:?}", m.kind, m.target, m.source, m.from, m.readonly))
        .collect();
    // Bind mounts from the context or a stage are inputs: their content is part of the key.
    let (source_digest, bind_roots, ro_roots) = bind_inputs(b, ins, &mount_specs)?;
    let key_text = format!(
        "RUN {:?} heredocs {:?} env {:?} mounts {:?} network {:?} user {:?} workdir {:?}",
        cmd_text(cmd),
        heredocs,
        env,
        mount_key,
        network,
        state.config.config.user,
        state.config.config.working_dir
    );
    let user = state.config.config.user.clone().unwrap_or_else(|| "0".to_string());
    let cwd = state
        .config
        .config
        .working_dir
        .clone()
        .unwrap_or_else(|| "/".to_string());
    let volumes: Vec<String> = state
        .config
        .config
        .volumes
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    let cmd = cmd.clone();
    let ins_owned = ins.clone();
    let result = fs_step(
        b,
        state,
        ins,
        stage_index,
        &key_text,
        source_digest.as_ref(),
        created_by,
        |b, root, _st| {
            let scratch = b.store.tmp_dir("run-")?;
            // Declared VOLUMEs exist for the command, as with Docker.
            let rootfs = Root::open(root).with_context(|| format!("opening the rootfs {}", root.display()))?;
            for v in &volumes {
                rootfs
                    .mkdir_all(v, 0o755)
                    .with_context(|| format!("creating VOLUME {v}"))?;
            }
            let mut mounts = Vec::new();
            let argv = run_argv(&cmd, &ins_owned, &shell, scratch.path(), &mut mounts)?;
            let mut env = env.clone();
            // Declared after `scratch`, so released (unmounted) before `scratch` is removed.
            let mut held = Held::default();
            for m in &mount_specs {
                add_mount(b, m, &bind_roots, scratch.path(), &mut mounts, &mut env, &mut held)
                    .with_context(|| format!("{}: --mount type={:?},target={}", ins_owned.loc, m.kind, m.target))?;
            }
            let spec = RunSpec {
                rootfs: root.to_path_buf(),
                args: argv.clone(),
                env,
                cwd: cwd.clone(),
                user: user.clone(),
                network,
                hostname: sandbox_hostname(b),
                mounts,
                seccomp: b.req.run.seccomp.clone(),
                cap_add: b.req.run.cap_add.clone(),
                cap_drop: b.req.run.cap_drop.clone(),
                no_new_privs: b.req.run.no_new_privs,
                stdin: None,
                output: crate::sandbox::Output::Events {
                    reporter: b.progress.reporter().clone(),
                    step: b.progress.current(),
                },
                tty: false,
            };
            let outcome = crate::sandbox::run(&spec)?;
            drop(held);
            if outcome.status != 0 {
                bail!(
                    "process \"{}\" did not complete successfully: exit code: {}",
                    argv.join(" "),
                    outcome.status
                );
            }
            Ok(outcome.placeholders)
        },
    );
    drop(ro_roots);
    result
}

fn cmd_text(cmd: &ShellOrExec) -> String {
    match cmd {
        ShellOrExec::Shell(s) => format!("shell:{s}"),
        ShellOrExec::Exec(v) => format!("exec:{v:?}"),
    }
}

/// What the mounts of one RUN step hold while it runs: cache-mount locks, the secrets'
/// tmpfs and the ssh agent relays.
#[derive(Default)]
struct Held {
    /// Held until the step ends (dropping a `Flock` unlocks it).
    locks: Vec<nix::fcntl::Flock<std::fs::File>>,
    secrets: Option<SecretFs>,
    /// Relay sockets of ssh mounts, served until the step ends.
    ssh: Vec<super::ssh_proxy::SshProxy>,
}

/// Turns one `--mount` into sandbox mounts (and env for secrets/ssh).
fn add_mount(
    b: &Builder,
    m: &RunMount,
    bind_roots: &[(RunMount, Option<PathBuf>)],
    scratch: &Path,
    mounts: &mut Vec<MountSpec>,
    env: &mut Vec<String>,
    held: &mut Held,
) -> Result<()> {
    match m.kind {
        MountKind::Bind => {
            let src = bind_roots
                .iter()
                .find(|(bm, _)| bm.target == m.target && bm.source == m.source && bm.from == m.from)
                .map(|(_, p)| p.clone())
                .context("bind source was not prepared")?;
            let src = match src {
                Some(p) => p,
                None => {
                    let root = filtered_context(b)?;
                    let rel = m.source.clone().unwrap_or_else(|| "/".to_string());
                    let found = Root::open(&root)
                        .and_then(|r| r.canonical(&rel, Follow::All).map(|c| (r, c)))
                        .ok()
                        .filter(|(r, c)| r.exists(c));
                    let Some((_, c)) = found else {
                        bail!("--mount source {rel}: not found in the build context (is it in .dockerignore?)");
                    };
                    root.join(c)
                }
            };
            let readonly = m.readonly;
            let src = if readonly {
                src
            } else {
                // rw binds: writes are discarded, so the step works on a copy.
                let copy = scratch.join(format!("bind-{}", mounts.len()));
                let st = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(&src)
                    .arg(&copy)
                    .status()
                    .context("running cp -a for a rw bind mount")?;
                if !st.success() {
                    bail!("copying {} for a rw bind mount failed", src.display());
                }
                copy
            };
            mounts.push(MountSpec::Bind {
                src,
                dest: m.target.clone(),
                readonly,
            });
        }
        MountKind::Cache => {
            let id = m.id.clone().unwrap_or_else(|| m.target.clone());
            let dir = b
                .store
                .root()
                .join("cache-mounts")
                .join(crate::digest::Digest::of(id.as_bytes()).hex());
            let present = match std::fs::symlink_metadata(&dir) {
                Ok(md) if md.is_dir() => true,
                // Bound by path: never follow a link where kiln's own cache dir should be.
                Ok(_) => bail!("the cache mount {} is not a directory; remove it", dir.display()),
                Err(_) => false,
            };
            if !present {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating cache mount {}", dir.display()))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m.mode.unwrap_or(0o755)))?;
                nix::unistd::chown(&dir, Some(m.uid.unwrap_or(0).into()), Some(m.gid.unwrap_or(0).into()))
                    .with_context(|| format!("chown of cache mount {}", dir.display()))?;
            }
            let mut src = dir.clone();
            if m.sharing != Sharing::Shared {
                let lock = std::fs::File::create(dir.with_extension("lock"))?;
                let got = nix::fcntl::Flock::lock(
                    lock,
                    if m.sharing == Sharing::Locked {
                        nix::fcntl::FlockArg::LockExclusive
                    } else {
                        nix::fcntl::FlockArg::LockExclusiveNonblock
                    },
                );
                match got {
                    Ok(l) => held.locks.push(l),
                    Err(_) if m.sharing == Sharing::Private => {
                        // In use by another build: a private mount gets a fresh directory.
                        src = scratch.join(format!("cache-{}", mounts.len()));
                        std::fs::create_dir(&src)?;
                    }
                    Err((_, e)) => return Err(e).context("locking the cache mount"),
                }
            }
            mounts.push(MountSpec::Bind {
                src,
                dest: m.target.clone(),
                readonly: m.readonly,
            });
        }
        MountKind::Tmpfs => mounts.push(MountSpec::Tmpfs {
            dest: m.target.clone(),
            size: m.size,
            mode: m.mode,
        }),
        MountKind::Secret => {
            let id = m.secret_id();
            let Some(secret) = b.req.run.secrets.iter().find(|s| s.id == id) else {
                if m.required {
                    bail!("secret {id}: not found (it is required: give it with --secret id={id},src=FILE)");
                }
                return Ok(());
            };
            let data = secret.read()?;
            if let Some(var) = &m.env {
                env.push(format!("{var}={}", String::from_utf8_lossy(&data)));
                if m.target.is_empty() {
                    return Ok(());
                }
            }
            // The content goes to a tmpfs only (never to the store's disk): BuildKit's
            // secret files are on a tmpfs as well.
            if held.secrets.is_none() {
                held.secrets = Some(SecretFs::new(scratch)?);
            }
            let fs = held.secrets.as_ref().expect("just set");
            let path = fs.dir.join(format!("secret-{}", mounts.len()));
            fs.write(
                &path,
                &data,
                m.mode.unwrap_or(0o400),
                m.uid.unwrap_or(0),
                m.gid.unwrap_or(0),
            )
            .with_context(|| format!("writing secret {id} to {}", path.display()))?;
            mounts.push(MountSpec::Bind {
                src: path,
                dest: m.target.clone(),
                readonly: true,
            });
        }
        MountKind::Ssh => {
            let id = m.id.clone().unwrap_or_else(|| "default".to_string());
            let Some(sock) = b.req.run.ssh.get(&id) else {
                if m.required {
                    bail!("ssh agent {id} is required but was not given with --ssh {id}");
                }
                return Ok(());
            };
            let socket = scratch.join(format!("ssh-agent-{}.sock", held.ssh.len()));
            let proxy = super::ssh_proxy::SshProxy::start(
                &socket,
                sock,
                m.mode.unwrap_or(0o600),
                m.uid.unwrap_or(0),
                m.gid.unwrap_or(0),
            )
            .with_context(|| format!("RUN --mount=type=ssh,id={id}"))?;
            mounts.push(MountSpec::Bind {
                src: proxy.socket.clone(),
                dest: m.target.clone(),
                readonly: false,
            });
            held.ssh.push(proxy);
            env.push(format!("SSH_AUTH_SOCK={}", m.target));
        }
    }
    Ok(())
}

/// The build context for `RUN --mount=type=bind` (no `from`): what COPY sees, i.e. without
/// what .dockerignore excludes, as BuildKit mounts it. Without ignore patterns that is the
/// context itself; otherwise a filtered copy in the store's tmp (hard links where possible),
/// made once per build and shared by all its RUN steps.
fn filtered_context(b: &Builder) -> Result<PathBuf> {
    if b.ignore.is_empty() {
        return Ok(b.req.source.context.clone());
    }
    let mut slot = b.bind_context.lock().unwrap();
    if let Some(d) = slot.as_ref() {
        return Ok(d.path().to_path_buf());
    }
    let dir = b.store.tmp_dir("bindctx-")?;
    let src = crate::fsutil::Root::open(&b.req.source.context)
        .with_context(|| format!("opening the build context {}", b.req.source.context.display()))?;
    let dst = crate::fsutil::Root::open(dir.path()).with_context(|| format!("opening {}", dir.path().display()))?;
    let mode = src
        .stat("", crate::fsutil::Follow::All)
        .with_context(|| format!("reading {}", b.req.source.context.display()))?
        .st_mode;
    dst.chmod("", mode & 0o7777)
        .with_context(|| format!("chmod of {}", dir.path().display()))?;
    copy_filtered(&src, &dst, Path::new(""), &b.ignore).with_context(|| {
        format!(
            "preparing the build context for RUN bind mounts in {}",
            dir.path().display()
        )
    })?;
    let path = dir.path().to_path_buf();
    *slot = Some(std::sync::Arc::new(dir));
    Ok(path)
}

/// Copies the directory `rel` of `src` into `dst` (which has it already), leaving out what
/// `ignore` excludes (an excluded directory is still entered when an exception may
/// re-include something below it, and kept only when something was). Returns whether
/// anything was placed.
fn copy_filtered(
    src: &crate::fsutil::Root,
    dst: &crate::fsutil::Root,
    rel: &Path,
    ignore: &crate::dockerfile::ignore::IgnoreMatcher,
) -> Result<bool> {
    use crate::fsutil::Follow;
    let mut names = src
        .read_dir(rel, Follow::Parents)
        .with_context(|| format!("reading {}", src.show(rel)))?;
    names.sort();
    let mut placed = false;
    for (name, _) in names {
        let child = rel.join(&name);
        let ctx_rel = child.to_string_lossy().into_owned();
        let st = src
            .stat(&child, Follow::Parents)
            .with_context(|| format!("reading {}", src.show(&child)))?;
        let fmt = st.st_mode & libc::S_IFMT;
        let excluded = ignore.is_excluded(&ctx_rel);
        if fmt == libc::S_IFDIR {
            if excluded && !ignore.may_include_below(&ctx_rel) {
                continue;
            }
            dst.mkdir_all(&child, 0o700)
                .with_context(|| format!("creating {}", dst.show(&child)))?;
            let below = copy_filtered(src, dst, &child, ignore)?;
            if excluded && !below {
                dst.remove(&child)
                    .with_context(|| format!("removing {}", dst.show(&child)))?;
                continue;
            }
            dst.chmod(&child, st.st_mode & 0o7777)
                .with_context(|| format!("chmod of {}", dst.show(&child)))?;
            placed = true;
            continue;
        }
        if excluded {
            continue;
        }
        match fmt {
            libc::S_IFLNK => {
                let target = src
                    .readlink(&child)
                    .with_context(|| format!("reading the symlink {}", src.show(&child)))?;
                dst.symlink(&target, &child)
                    .with_context(|| format!("creating the symlink {}", dst.show(&child)))?;
            }
            libc::S_IFREG => link_or_copy(src, dst, &child, st.st_mode & 0o7777)?,
            libc::S_IFIFO => dst
                .mknod(&child, libc::S_IFIFO | (st.st_mode & 0o7777), 0)
                .with_context(|| format!("creating the fifo {}", dst.show(&child)))?,
            // Sockets and devices are not part of a build context.
            _ => continue,
        }
        placed = true;
    }
    Ok(placed)
}

/// Hard-links the regular file `rel` of `src` into `dst`, or copies it (content and mode)
/// where a link is not possible (another file system, a file kiln does not own).
fn link_or_copy(src: &crate::fsutil::Root, dst: &crate::fsutil::Root, rel: &Path, mode: u32) -> Result<()> {
    use crate::fsutil::Follow;
    use std::os::fd::AsRawFd;
    let a = src
        .locate(rel, Follow::Parents)
        .with_context(|| format!("reading {}", src.show(rel)))?;
    let b = dst
        .locate(rel, Follow::Parents)
        .with_context(|| format!("reading {}", dst.show(rel)))?;
    if let (Some(an), Some(bn)) = (&a.name, &b.name) {
        // SAFETY: both names are NUL-terminated; flags 0: a symlink is never followed.
        let r = unsafe { libc::linkat(a.dir.as_raw_fd(), an.as_ptr(), b.dir.as_raw_fd(), bn.as_ptr(), 0) };
        if r == 0 {
            return Ok(());
        }
    }
    let mut from = src
        .open_with(rel, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)
        .with_context(|| format!("opening {}", src.show(rel)))?;
    let mut to = dst
        .open_with(
            rel,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .with_context(|| format!("creating {}", dst.show(rel)))?;
    std::io::copy(&mut from, &mut to).with_context(|| format!("copying {} to {}", src.show(rel), dst.show(rel)))?;
    to.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod of {}", dst.show(rel)))?;
    Ok(())
}

/// The secrets of one RUN step: a small tmpfs mounted (in kiln's private mount namespace,
/// so it vanishes with kiln even on `kill -9`) on a directory of the step's scratch dir.
/// Without a mount namespace (chroot isolation), a private directory in /dev/shm (a tmpfs)
/// instead; never a directory on a disk. (Chroot isolation then copies the file into the
/// rootfs for the step: see `sandbox::chroot`.)
struct SecretFs {
    dir: PathBuf,
    mounted: bool,
}

fn is_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

impl SecretFs {
    fn new(scratch: &Path) -> Result<SecretFs> {
        let dir = scratch.join("secrets");
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod of {}", dir.display()))?;
        use crate::sys::Syscall as _;
        use nix::mount::MsFlags;
        // Chroot isolation has no mount namespace of its own: no mount there (it would
        // outlive a killed kiln in the host's namespace).
        let own_ns = crate::sandbox::probe::current() != crate::sandbox::probe::Isolation::Chroot;
        let mounted = own_ns
            && crate::sys::RealSyscall
                .mount(
                    Some("tmpfs"),
                    crate::sys::Target::host(&dir),
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("mode=0700,size=64m"),
                )
                .is_ok();
        if mounted {
            return Ok(SecretFs { dir, mounted });
        }
        let _ = std::fs::remove_dir(&dir);
        let shm = Path::new("/dev/shm");
        if !is_tmpfs(shm) {
            bail!(
                "secret mounts need a tmpfs (secrets are never written to disk): cannot mount one \
                 here and /dev/shm is not a tmpfs"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("kiln-secrets-{}.", std::process::id()))
            .tempdir_in(shm)
            .context("creating a secrets directory in /dev/shm")?
            .keep();
        Ok(SecretFs { dir, mounted: false })
    }

    fn write(&self, path: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .context("creating the secret file")?;
        f.write_all(data).context("writing the secret")?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .context("chmod of the secret file")?;
        nix::unistd::fchown(&f, Some(uid.into()), Some(gid.into())).context("chown of the secret file")?;
        Ok(())
    }
}

impl Drop for SecretFs {
    fn drop(&mut self) {
        if self.mounted {
            use crate::sys::Syscall as _;
            let _ = crate::sys::RealSyscall.umount(&self.dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// WORKDIR: creates the directory (and missing parents) inside the rootfs, owned by the
/// stage's USER as BuildKit does.
pub fn make_workdir(root: &Path, path: &str, user: Option<&str>) -> Result<Vec<PathBuf>> {
    // A USER that the image does not know yet leaves the directory to root, as BuildKit does.
    let owner = match user {
        Some(u) if !u.is_empty() => crate::users::resolve_user(root, u).ok().map(|r| (r.uid, r.gid)),
        _ => None,
    };
    let rootfs = Root::open(root).with_context(|| format!("opening the rootfs {}", root.display()))?;
    let (fd, created) = rootfs
        .mkdir_all(path, 0o755)
        .with_context(|| format!("WORKDIR {path}: cannot create it in the rootfs"))?;
    if let Some((uid, gid)) = owner {
        for dir in &created {
            rootfs
                .chown(dir, uid, gid)
                .with_context(|| format!("chown of WORKDIR {}", rootfs.show(dir)))?;
        }
    }
    if !nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
        bail!("WORKDIR {path}: exists and is not a directory");
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filtered_context_leaves_out_what_dockerignore_excludes() {
        let ctx = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        for (p, c) in [
            ("keep.txt", "k"),
            ("secret.txt", "s"),
            ("sub/keep2.txt", "k2"),
            ("sub/hidden.txt", "h"),
            ("nope/gone.txt", "g"),
            ("nope/back.txt", "b"),
            ("all/x", "x"),
        ] {
            let f = ctx.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, c).unwrap();
        }
        std::os::unix::fs::symlink("secret.txt", ctx.path().join("link")).unwrap();
        let ignore =
            crate::dockerfile::ignore::IgnoreMatcher::new("secret.txt\nsub/hidden.txt\nnope\n!nope/back.txt\nall\n")
                .unwrap();
        let src = crate::fsutil::Root::open(ctx.path()).unwrap();
        let dst = crate::fsutil::Root::open(out.path()).unwrap();
        copy_filtered(&src, &dst, Path::new(""), &ignore).unwrap();
        let o = out.path();
        assert_eq!(std::fs::read_to_string(o.join("keep.txt")).unwrap(), "k");
        assert_eq!(std::fs::read_to_string(o.join("sub/keep2.txt")).unwrap(), "k2");
        assert_eq!(std::fs::read_to_string(o.join("nope/back.txt")).unwrap(), "b");
        assert!(!o.join("secret.txt").exists());
        assert!(!o.join("sub/hidden.txt").exists());
        assert!(!o.join("nope/gone.txt").exists());
        assert!(
            std::fs::symlink_metadata(o.join("all")).is_err(),
            "an ignored dir with nothing kept"
        );
        // The symlink is kept as a link (to an ignored file: dangling, as in BuildKit).
        assert_eq!(std::fs::read_link(o.join("link")).unwrap(), Path::new("secret.txt"));
        assert!(!o.join("link").exists());
    }

    #[test]
    fn lone_heredoc() {
        assert!(is_lone_heredoc("<<EOF", "EOF"));
        assert!(is_lone_heredoc("<<-'EOF'", "EOF"));
        assert!(!is_lone_heredoc("<<EOF 3<<IN awk -f -", "EOF"));
    }
}
