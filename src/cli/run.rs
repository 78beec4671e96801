//! `kiln run`, `kiln unshare`, `kiln info` and the hidden sandbox helper `kiln __sandbox`.

use super::GlobalOpts;
use crate::sandbox::{self, MountSpec, Network, RunSpec, SeccompChoice, userns};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `kiln run [OPTIONS] IMAGE [CMD...]`
#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Accepted for Docker compatibility: the container's filesystem is always thrown away.
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (`KEY=VALUE`, or `KEY` to pass the host's value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (`name|uid[:group|gid]`).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// `host` (default) or `none`.
    #[arg(long, default_value = "host")]
    pub network: String,
    /// Publish a port: `[IP:]HOST:CONTAINER[/tcp]`. With host networking equal ports need
    /// nothing; different ports get a userspace TCP forwarder.
    #[arg(short = 'p', long = "publish", value_name = "HOST:CONTAINER")]
    pub publish: Vec<String>,
    /// Override the image's ENTRYPOINT (`""` clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Keep stdin open (the terminal's).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal (uses kiln's own terminal).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Bind mount `SRC:DEST[:ro]`.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DEST[:ro]")]
    pub volume: Vec<String>,
    /// Mount a tmpfs at DIR.
    #[arg(long, value_name = "DIR")]
    pub tmpfs: Vec<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Add a capability (or ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// `seccomp=FILE`, `seccomp=unconfined` or `no-new-privileges`.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Storage driver: overlay, fuse or copy.
    #[arg(long = "storage-driver")]
    pub storage_driver: Option<String>,
    /// Testing: run on these directories (top first) instead of an image.
    #[arg(long = "lower", hide = true)]
    pub lower: Vec<PathBuf>,
    /// Testing: keep the upper directory (the container's changes) here.
    #[arg(long = "upper", hide = true)]
    pub upper: Option<PathBuf>,
    /// The image (omitted with --lower), then the command and its arguments.
    #[arg(allow_hyphen_values = true, value_name = "IMAGE [CMD]...")]
    pub args: Vec<String>,
}

/// `kiln unshare [CMD...]`
#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct UnshareArgs {
    /// The command (default: $SHELL or /bin/sh).
    #[arg(allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// `kiln info`
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// `text` (default) or `json`.
    #[arg(long, default_value = "text")]
    pub format: String,
}

/// `kiln __sandbox SPECFILE`
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    pub spec: PathBuf,
}

/// Parsed `-p` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    pub ip: String,
    pub host: u16,
    pub container: u16,
}

/// Parses `[IP:]HOST:CONTAINER[/tcp]` (or `PORT`, meaning the same port on both sides).
pub fn parse_publish(s: &str) -> Result<PortMap> {
    let (spec, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    if !proto.eq_ignore_ascii_case("tcp") {
        bail!("-p {s}: only tcp ports can be published");
    }
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let port = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("-p {s}: {p:?} is not a port number"))
    };
    Ok(match parts.as_slice() {
        [c] => PortMap {
            ip: "0.0.0.0".into(),
            host: port(c)?,
            container: port(c)?,
        },
        [c, h] => PortMap {
            ip: "0.0.0.0".into(),
            host: port(h)?,
            container: port(c)?,
        },
        [c, h, ip] => PortMap {
            ip: if ip.is_empty() {
                "0.0.0.0".into()
            } else {
                ip.trim_matches(|c| c == '[' || c == ']').to_string()
            },
            host: port(h)?,
            container: port(c)?,
        },
        _ => bail!("-p {s}: expected [IP:]HOST:CONTAINER"),
    })
}

/// Forwards TCP connections from `ip:host` to `127.0.0.1:container` (threads, for the life
/// of the process).
fn start_forwarder(p: &PortMap) -> Result<()> {
    let listener = std::net::TcpListener::bind((p.ip.as_str(), p.host)).with_context(|| {
        format!(
            "cannot listen on {}:{} to forward to port {}",
            p.ip, p.host, p.container
        )
    })?;
    let target = p.container;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let (Ok(mut a_r), Ok(mut u_w)) = (conn.try_clone(), upstream.try_clone()) else {
                    return;
                };
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a_r, &mut u_w);
                    let _ = u_w.shutdown(std::net::Shutdown::Write);
                });
                let (mut u_r, mut a_w) = (upstream, conn);
                let _ = std::io::copy(&mut u_r, &mut a_w);
                let _ = a_w.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    Ok(())
}

fn parse_security_opts(opts: &[String]) -> Result<(SeccompChoice, bool)> {
    let mut seccomp = SeccompChoice::Default;
    let mut nnp = false;
    for opt in opts {
        if let Some(v) = opt.strip_prefix("seccomp=").or_else(|| opt.strip_prefix("seccomp:")) {
            seccomp = if v == "unconfined" {
                SeccompChoice::Unconfined
            } else {
                SeccompChoice::Profile(PathBuf::from(v))
            };
        } else if opt == "no-new-privileges" || opt == "no-new-privileges=true" || opt == "no-new-privileges:true" {
            nnp = true;
        } else {
            bail!("--security-opt {opt}: expected seccomp=FILE, seccomp=unconfined or no-new-privileges");
        }
    }
    Ok((seccomp, nnp))
}

/// `kiln run`: the image's ENTRYPOINT/CMD in the sandbox on a throwaway upper.
pub fn run(g: &GlobalOpts, a: RunArgs) -> Result<i32> {
    let network = match a.network.as_str() {
        "host" | "default" => Network::Host,
        "none" => Network::None,
        n => bail!("--network {n}: expected host or none"),
    };
    let (seccomp, no_new_privs) = parse_security_opts(&a.security_opt)?;
    let ports = a.publish.iter().map(|p| parse_publish(p)).collect::<Result<Vec<_>>>()?;
    let testing = !a.lower.is_empty();
    let (image_name, mut cmd) = if testing {
        (None, a.args.clone())
    } else {
        let mut it = a.args.clone().into_iter();
        let Some(img) = it.next() else {
            bail!("kiln run needs an image: kiln run [OPTIONS] IMAGE [CMD...]")
        };
        (Some(img), it.collect::<Vec<_>>())
    };
    let store = g.store()?;
    let (lowers, config) = match &image_name {
        Some(name) => {
            let image = store.load_image(name)?;
            (
                crate::builder::rootfs_for_image(&store, &image)?,
                image.config.config.clone(),
            )
        }
        None => (a.lower.clone(), crate::image::ContainerConfig::default()),
    };
    let entrypoint = match &a.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    if cmd.is_empty() && a.entrypoint.is_none() {
        cmd = config.cmd.clone().unwrap_or_default();
    }
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        bail!("no command specified: the image has neither ENTRYPOINT nor CMD, and none was given");
    }
    let mut env = config.env.clone().unwrap_or_default();
    for e in &a.env {
        let kv = match e.split_once('=') {
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = kv.split_once('=').map(|(k, _)| k.to_string()).unwrap_or_default();
        env.retain(|x| x.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
        env.push(kv);
    }
    let mut mounts = Vec::new();
    for v in &a.volume {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, dest, ro) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, o] if *o == "ro" || *o == "rw" => (*s, *d, *o == "ro"),
            _ => bail!("-v {v}: expected SRC:DEST[:ro]"),
        };
        let src = std::fs::canonicalize(src).with_context(|| format!("-v {v}: {src} does not exist"))?;
        mounts.push(MountSpec::Bind {
            src,
            dest: dest.to_string(),
            readonly: ro,
        });
    }
    for t in &a.tmpfs {
        mounts.push(MountSpec::Tmpfs {
            dest: t.clone(),
            size: None,
            mode: None,
        });
    }
    for p in &ports {
        if p.host == p.container {
            continue; // host networking: the container's port is the host's
        }
        if network == Network::None {
            bail!(
                "-p {}:{}: cannot publish a port with --network none",
                p.host,
                p.container
            );
        }
        start_forwarder(p)?;
    }
    if network == Network::None && !ports.is_empty() {
        bail!("cannot publish ports with --network none");
    }

    let driver = crate::rootfs::choose_driver(&store, &sandbox::confinement(), a.storage_driver.as_deref(), g.debug)?;
    let tmp = store.tmp_dir("run-")?;
    let upper = match &a.upper {
        Some(u) => {
            std::fs::create_dir_all(u).with_context(|| format!("cannot create {}", u.display()))?;
            u.clone()
        }
        None => tmp.path().join("upper"),
    };
    // work must be on the upper's filesystem
    let work_parent = if a.upper.is_some() {
        upper.parent().unwrap_or(Path::new("/")).to_path_buf()
    } else {
        tmp.path().to_path_buf()
    };
    let work_dir = tempfile::Builder::new()
        .prefix(".kiln-work-")
        .tempdir_in(&work_parent)?;
    let merged = tmp.path().join("merged");
    for d in [&upper, &merged] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let t0 = std::time::Instant::now();
    driver
        .mount(&lowers, &upper, work_dir.path(), &merged)
        .context("cannot mount the container's rootfs")?;
    let spec = RunSpec {
        rootfs: merged.clone(),
        args,
        env,
        cwd: a
            .workdir
            .clone()
            .or(config.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: a.user.clone().or(config.user.clone()).unwrap_or_default(),
        network,
        hostname: a.hostname.clone().unwrap_or_default(),
        mounts,
        seccomp,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        no_new_privs,
        stdin: None,
        output_prefix: String::new(),
        log_to_stderr: false,
        quiet: false,
        live: false,
        tty: a.tty || a.interactive,
    };
    let tc = std::time::Instant::now();
    sandbox::compiled_filter(&spec)?; // compiled once per process (cached)
    let compile = tc.elapsed();
    let t = std::time::Instant::now();
    let outcome = sandbox::run(&spec);
    let ran = t.elapsed();
    let unmounted = driver.unmount(&merged);
    if g.debug {
        eprintln!(
            "kiln: debug: step: sandbox {:.1} ms, rootfs mount+unmount {:.1} ms, seccomp compile {:.1} ms",
            ran.as_secs_f64() * 1000.0,
            (t0.elapsed() - ran - compile).as_secs_f64() * 1000.0,
            compile.as_secs_f64() * 1000.0
        );
    }
    let outcome = outcome?;
    unmounted?;
    if a.upper.is_some() {
        crate::rootfs::clean_upper(&upper, &lowers, &outcome.placeholders)?;
    }
    Ok(outcome.status)
}

/// `kiln unshare`: a command in kiln's user namespace, with `KILN_ROOT` set.
pub fn unshare(g: &GlobalOpts, a: UnshareArgs) -> Result<i32> {
    let mut cmd = a.cmd;
    if cmd.is_empty() {
        cmd.push(
            std::env::var("SHELL")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into()),
        );
    }
    let root = g.store_root()?;
    let st = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("KILN_ROOT", &root)
        .status()
        .with_context(|| format!("cannot run {}", cmd[0]))?;
    Ok(sandbox::exit_code(st))
}

/// Facts probed by the first kiln process, passed to the one re-executed in the namespace.
const ENV_PROBE_FACTS: &str = "KILN_PROBE_FACTS";

/// `kiln info`: what this place allows (the probe's facts), the isolation rung kiln takes,
/// the storage driver, and why.
pub fn info(g: &GlobalOpts, a: InfoArgs) -> Result<i32> {
    use sandbox::probe::{self, Isolation};
    // The facts are those of the place kiln was started in (before any namespace).
    let facts: probe::Facts = match std::env::var(ENV_PROBE_FACTS)
        .ok()
        .and_then(|j| serde_json::from_str(&j).ok())
    {
        Some(f) => f,
        None => {
            let f = probe::full_probe();
            // SAFETY: single-threaded (info runs before anything starts threads).
            unsafe { std::env::set_var(ENV_PROBE_FACTS, serde_json::to_string(&f)?) };
            f
        }
    };
    // Then enter what builds get, to probe storage from there.
    userns::ensure_with(g.debug, g.forced_isolation()?)?;
    let rung = probe::current();
    let why = probe::current_reason();
    let advice = match rung {
        Isolation::Userns => String::new(),
        Isolation::SingleUid => probe::single_uid_advice(&facts),
        Isolation::Chroot => "RUN steps run chrooted in a copy of the rootfs: no /proc, /dev nodes made with mknod, \
                              the container's network, uts and pid namespaces, no isolation from kiln itself (use \
                              it in a disposable container). For full isolation allow unshare: --security-opt \
                              seccomp=unconfined (runner: security_opt = [\"seccomp:unconfined\"])"
            .to_string(),
        Isolation::None => probe::run_refusal(&facts, "RUN"),
    };
    let mapping = userns::id_mapping();
    let ids = match rung {
        Isolation::Chroot => "real root in the container's namespaces (no user or mount namespace)".to_string(),
        Isolation::None => format!(
            "your own uid {} without a user namespace: files of other owners are recorded in {} for the layer tar headers",
            facts.euid,
            crate::layer::OWNER_XATTR
        ),
        _ => mapping.describe(),
    };
    let root = g.store_root()?;
    let (driver, driver_reason, fuse) = if rung.can_mount() {
        let tmp = root.join("tmp");
        let probe_dir = if std::fs::create_dir_all(&tmp).is_ok() {
            tmp
        } else {
            std::env::temp_dir()
        };
        let d = crate::rootfs::probe(&probe_dir, sandbox::idmap::single_uid());
        (d.name, d.why, crate::rootfs::probe_fuse(&probe_dir))
    } else {
        (
            "copy",
            format!("isolation {rung} allows no mounts: layers are plain directories compared by snapshot"),
            Err(format!("isolation {rung} allows no mounts")),
        )
    };
    let profile = sandbox::seccomp::parse_profile(sandbox::seccomp::DEFAULT_PROFILE)?;
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().to_string())
        .unwrap_or_default();
    let caps = sandbox::caps::effective(&[], &[])?;
    let seccomp_ok = sandbox::seccomp::compile(&profile, &sandbox::caps::names(&caps)).map(|b| b.len() / 8);
    let mut seccomp_text = match &seccomp_ok {
        Ok(n) => format!(
            "default profile (Docker format, {} rules, {n} BPF instructions)",
            profile.syscalls.len()
        ),
        Err(e) => format!("unavailable: {e:#}"),
    };
    if rung == Isolation::Chroot && facts.seccomp == 2 && !facts.has_cap(21) {
        seccomp_text = "the container runtime's filter (inherited by every step); kiln adds its own only where it \
                        can without forcing no_new_privs"
            .into();
    }
    if a.format == "json" {
        let v = serde_json::json!({
            "kernel": kernel,
            "store": root,
            "isolation": rung.as_str(),
            "isolationRung": rung.rung(),
            "isolationSummary": rung.summary(),
            "isolationReason": why,
            "isolationAdvice": advice,
            "facts": facts,
            "idMapping": mapping,
            "idMappingDescription": ids,
            "rootfsDriver": driver,
            "rootfsDriverReason": driver_reason,
            "fuseOverlay": match &fuse { Ok(()) => "works".to_string(), Err(e) => e.clone() },
            "seccomp": seccomp_text,
            "capabilities": format!("{:016x}", sandbox::caps::mask(&caps)),
            "cgroups": "not used (kiln sets no resource limits)",
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if a.format != "text" {
        bail!("--format {}: expected text or json", a.format);
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "isolation:     rung {} of 4, {rung}: {}",
        rung.rung(),
        rung.summary()
    )?;
    writeln!(o, "  why:         {why}")?;
    if !advice.is_empty() {
        for (i, l) in advice.lines().enumerate() {
            writeln!(o, "{}{l}", if i == 0 { "  advice:      " } else { "               " })?;
        }
    }
    writeln!(o, "kernel:        {kernel}")?;
    writeln!(o, "store:         {}", root.display())?;
    writeln!(o, "ids:           {ids}")?;
    let shown = match driver {
        "overlay" => "kernel overlay",
        "fuse" => "kiln's FUSE overlay",
        _ => "copy snapshots",
    };
    writeln!(o, "rootfs driver: {shown} ({driver_reason})")?;
    writeln!(
        o,
        "fuse overlay:  {} (--storage-driver fuse)",
        match &fuse {
            Ok(()) => "works here".to_string(),
            Err(e) => format!("unavailable: {e}"),
        }
    )?;
    writeln!(o, "seccomp:       {seccomp_text}")?;
    writeln!(
        o,
        "capabilities:  Docker's default set ({:016x})",
        sandbox::caps::mask(&caps)
    )?;
    writeln!(o, "cgroups:       not used (kiln sets no resource limits)")?;
    writeln!(o, "facts (where kiln was started):")?;
    for (k, v) in probe::facts_table(&facts) {
        writeln!(o, "  {:<13} {v}", format!("{k}:"))?;
    }
    Ok(0)
}

/// The hidden helper process behind [`sandbox::run`].
pub fn sandbox(a: SandboxArgs) -> Result<i32> {
    let spec = sandbox::read_spec(&a.spec)?;
    sandbox::helper_main(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_forms() {
        assert_eq!(
            parse_publish("5000:5000").unwrap(),
            PortMap {
                ip: "0.0.0.0".into(),
                host: 5000,
                container: 5000
            }
        );
        assert_eq!(parse_publish("8080:80/tcp").unwrap().container, 80);
        assert_eq!(parse_publish("127.0.0.1:8080:80").unwrap().ip, "127.0.0.1");
        assert_eq!(parse_publish("53").unwrap().host, 53);
        assert!(parse_publish("53:53/udp").is_err());
        assert!(parse_publish("x:80").is_err());
    }

    #[test]
    fn security_opts() {
        assert_eq!(
            parse_security_opts(&["seccomp=unconfined".into()]).unwrap().0,
            SeccompChoice::Unconfined
        );
        assert!(parse_security_opts(&["no-new-privileges".into()]).unwrap().1);
        assert!(parse_security_opts(&["apparmor=x".into()]).is_err());
    }
}
