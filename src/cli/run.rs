//! `kiln run`, `kiln unshare`, `kiln info` and the hidden sandbox helper `kiln __sandbox`.

use super::GlobalOpts;
use crate::runner;
use crate::sandbox::{self, MountSpec, Network, SeccompChoice, userns};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;

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
    /// `private` (default, also `bridge`): the container's own network namespace, connected by
    /// pasta or else slirp4netns (`pasta` or `slirp4netns` picks one); `host`: this machine's
    /// network; `none`: loopback only.
    #[arg(long, default_value = "private")]
    pub network: String,
    /// Publish a port: `[IP:]HOST:CONTAINER[/tcp|/udp]`, or `CONTAINER` for a free host port
    /// (printed). With `--network host` equal ports need nothing; different ones get a
    /// userspace TCP forwarder.
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:CONTAINER")]
    pub publish: Vec<String>,
    /// Publish every port the image EXPOSEs to a free host port (printed).
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// A nameserver for the container's /etc/resolv.conf (replaces the host's).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// A search domain for /etc/resolv.conf (`.`: none).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// An option for /etc/resolv.conf (`ndots:2`, ...).
    #[arg(long = "dns-option", value_name = "OPT")]
    pub dns_option: Vec<String>,
    /// Add `NAME:IP` to /etc/hosts (`host-gateway`: the host as the container reaches it).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
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

/// `kiln run`: flags → [`runner::RunRequest`].
pub fn run(g: &GlobalOpts, a: RunArgs) -> Result<i32> {
    let (network, want) = match a.network.as_str() {
        "private" | "bridge" | "default" => (Network::Private, None),
        "pasta" | "slirp4netns" => (Network::Private, Some(a.network.as_str())),
        "host" => (Network::Host, None),
        "none" => (Network::None, None),
        n => bail!("--network {n}: expected private (bridge), pasta, slirp4netns, host or none"),
    };
    let found = sandbox::net::detect(std::env::var_os("PATH").as_deref(), want);
    if want.is_some() && found.backend.is_none() {
        bail!("--network {}: {}", a.network, found.why);
    }
    for d in &a.dns {
        if d.parse::<std::net::IpAddr>().is_err() {
            bail!("--dns {d}: not an IP address");
        }
    }
    let add_hosts = a
        .add_host
        .iter()
        .map(|h| sandbox::net::parse_add_host(h))
        .collect::<Result<Vec<_>>>()?;
    let (seccomp, no_new_privs) = parse_security_opts(&a.security_opt)?;
    let ports = a
        .publish
        .iter()
        .map(|p| runner::parse_publish(p))
        .collect::<Result<Vec<_>>>()?;
    let (image, command) = if a.lower.is_empty() {
        let mut it = a.args.clone().into_iter();
        let Some(img) = it.next() else {
            bail!("kiln run needs an image: kiln run [OPTIONS] IMAGE [CMD...]")
        };
        (Some(img), it.collect::<Vec<_>>())
    } else {
        (None, a.args.clone())
    };
    // `-e KEY` passes the host's value; a KEY the host does not have is left out, as Docker does.
    let env = a
        .env
        .iter()
        .filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e.clone()),
            None => std::env::var(e).ok().map(|v| format!("{e}={v}")),
        })
        .collect();
    let mut mounts = a
        .volume
        .iter()
        .map(|v| runner::parse_volume(v))
        .collect::<Result<Vec<_>>>()?;
    mounts.extend(a.tmpfs.iter().map(|t| MountSpec::Tmpfs {
        dest: t.clone(),
        size: None,
        mode: None,
    }));
    let store = g.store()?;
    let req = runner::RunRequest {
        image,
        lowers: a.lower.clone(),
        upper: a.upper.clone(),
        command,
        entrypoint: a.entrypoint.clone(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        network,
        backend: found.backend,
        backend_why: found.why,
        ports,
        publish_all: a.publish_all,
        dns: a.dns.clone(),
        dns_search: a.dns_search.clone(),
        dns_options: a.dns_option.clone(),
        add_hosts,
        mounts,
        seccomp,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        no_new_privs,
        tty: a.tty || a.interactive,
        storage_driver: a
            .storage_driver
            .as_deref()
            .map(|d| d.parse().context("--storage-driver"))
            .transpose()?,
        reporter: g.reporter(),
    };
    runner::run(&store, &req)
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
    userns::ensure_with(&g.reporter(), g.forced_isolation()?)?;
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
    let run_net = sandbox::net::detect(std::env::var_os("PATH").as_deref(), None);
    let run_net_name = run_net.backend.as_ref().map_or("loopback only", |b| b.name());
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
            "runNetwork": run_net_name,
            "runNetworkReason": run_net.why,
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
    writeln!(o, "run network:   {run_net_name} ({})", run_net.why)?;
    writeln!(o, "facts (where kiln was started):")?;
    for (k, v) in probe::facts_table(&facts) {
        writeln!(o, "  {:<13} {v}", format!("{k}:"))?;
    }
    Ok(0)
}

/// The hidden helper process behind [`sandbox::run`].
pub fn sandbox(a: SandboxArgs) -> Result<i32> {
    let spec = sandbox::read_spec(&a.spec)?;
    let exit = sandbox::helper_main(spec)?;
    if let Some(why) = exit.error {
        // The step's stderr: the build log shows it as the step's output.
        eprintln!("kiln: {why}");
    }
    Ok(exit.code)
}

#[cfg(test)]
mod tests {
    use super::*;

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
