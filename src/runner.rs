//! `kiln run`: an image's ENTRYPOINT/CMD in the sandbox, on a throwaway upper over the
//! image's layers, with the image's config merged with the caller's overrides (command,
//! entrypoint, environment, user, workdir), bind and tmpfs mounts, and published ports.
//!
//! The CLI parses flags into a [`RunRequest`]; everything a `docker run` user relies on
//! (how `-e` overrides the image's ENV, what `--entrypoint ""` means, how `-p` is spelled)
//! is decided here.
//!
//! Networking is Docker's: the container gets its own network namespace (see
//! [`crate::sandbox::net`]) connected by pasta or slirp4netns, `-p [IP:]HOST:CONTAINER[/udp]`
//! publishes any host port to any container port, `-p CONTAINER` and `-P` pick free host
//! ports (reported as `docker port` prints them); `--network host` shares the host's network
//! (ports are the host's: a different host port gets a userspace TCP forwarder), `--network
//! none` gives loopback only.

use crate::events::Reporter;
use crate::image::ContainerConfig;
use crate::sandbox::net::{self, Backend, NetSpec, Proto};
use crate::sandbox::{self, MountSpec, Network, RunSpec, SeccompChoice};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// A parsed `-p` value (host port 0: a free one is picked).
pub type PortMap = net::Publish;

/// What to run and how.
#[derive(Debug)]
pub struct RunRequest {
    /// The image (None: run on `lowers`, for tests).
    pub image: Option<String>,
    /// Testing: these directories (top first) instead of an image's layers.
    pub lowers: Vec<PathBuf>,
    /// Testing: keep the container's changes in this directory.
    pub upper: Option<PathBuf>,
    /// The command (replaces the image's CMD when not empty).
    pub command: Vec<String>,
    /// `Some("")` clears the image's ENTRYPOINT; `Some(x)` replaces it (and its CMD).
    pub entrypoint: Option<String>,
    /// `KEY=VALUE` overrides of the image's environment, in order.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub network: Network,
    /// What connects a private network (None: loopback only, `backend_why` says why).
    pub backend: Option<Backend>,
    pub backend_why: String,
    pub ports: Vec<PortMap>,
    /// `-P`: every port the image EXPOSEs, to a free host port.
    pub publish_all: bool,
    /// `--dns`, `--dns-search`, `--dns-option`.
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// `--add-host NAME:IP` (IP may be `host-gateway`), parsed by [`net::parse_add_host`].
    pub add_hosts: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub seccomp: SeccompChoice,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
    pub storage_driver: Option<String>,
    pub debug: bool,
    pub reporter: Reporter,
}

/// Parses `[IP:]HOST:CONTAINER[/tcp|/udp]`, `[IP:]:CONTAINER` or `CONTAINER` (the last two: a
/// free host port, picked when the container starts).
pub fn parse_publish(s: &str) -> Result<PortMap> {
    let (spec, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => bail!("-p {s}: {proto:?} is not a protocol (tcp or udp)"),
    };
    // An IPv6 address is bracketed: [::1]:8080:80.
    let (ip, rest) = match spec.strip_prefix('[') {
        Some(r) => {
            let (ip, rest) = r
                .split_once("]:")
                .with_context(|| format!("-p {s}: expected [IPv6]:HOST:CONTAINER"))?;
            (Some(ip.to_string()), rest)
        }
        None => (None, spec),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let port = |p: &str, zero_ok: bool| -> Result<u16> {
        match p.parse::<u16>() {
            Ok(0) if !zero_ok => bail!("-p {s}: port 0 is not a port to publish"),
            Ok(n) => Ok(n),
            Err(_) => bail!("-p {s}: {p:?} is not a port number (1-65535)"),
        }
    };
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, 0, port(c, false)?),
        (None, [h, c]) => (None, if h.is_empty() { 0 } else { port(h, false)? }, port(c, false)?),
        (None, [ip, h, c]) => (
            Some(ip.to_string()),
            if h.is_empty() { 0 } else { port(h, false)? },
            port(c, false)?,
        ),
        (Some(ip), [h, c]) => (
            Some(ip),
            if h.is_empty() { 0 } else { port(h, false)? },
            port(c, false)?,
        ),
        _ => bail!("-p {s}: expected [IP:]HOST:CONTAINER[/tcp|/udp] or CONTAINER"),
    };
    let ip = ip.filter(|i| !i.is_empty()).unwrap_or_else(|| "0.0.0.0".to_string());
    if ip.parse::<std::net::IpAddr>().is_err() {
        bail!("-p {s}: {ip:?} is not an IP address");
    }
    Ok(PortMap {
        ip,
        host,
        container,
        proto,
    })
}

/// The image's EXPOSEd ports (`80/tcp`, `53/udp`, `8080`) not already in `ports`, each to a
/// free host port (`-P`).
pub fn exposed_ports(config: &ContainerConfig, ports: &[PortMap]) -> Vec<PortMap> {
    let mut out = Vec::new();
    for key in config.exposed_ports.iter().flat_map(|m| m.keys()) {
        let (n, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let proto = if proto.eq_ignore_ascii_case("udp") {
            Proto::Udp
        } else {
            Proto::Tcp
        };
        let Ok(container) = n.parse::<u16>() else { continue };
        if !ports.iter().any(|p| p.container == container && p.proto == proto) {
            out.push(PortMap {
                ip: "0.0.0.0".into(),
                host: 0,
                container,
                proto,
            });
        }
    }
    out
}

/// Parses `-v SRC:DEST[:ro|rw]`; SRC must exist (it is resolved now, once).
pub fn parse_volume(v: &str) -> Result<MountSpec> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dest, readonly) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, o] if *o == "ro" || *o == "rw" => (*s, *d, *o == "ro"),
        _ => bail!("-v {v}: expected SRC:DEST[:ro]"),
    };
    let src = std::fs::canonicalize(src).with_context(|| format!("-v {v}: {src} does not exist"))?;
    Ok(MountSpec::Bind {
        src,
        dest: dest.to_string(),
        readonly,
    })
}

/// The image's environment with `overrides` (`KEY=VALUE`) applied: a key given again
/// replaces the image's value and moves to the end, as Docker does.
pub fn merge_env(image_env: &[String], overrides: &[String]) -> Vec<String> {
    let key = |kv: &str| {
        kv.split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| kv.to_string())
    };
    let mut env = image_env.to_vec();
    for kv in overrides {
        let k = key(kv);
        env.retain(|x| key(x) != k);
        env.push(kv.clone());
    }
    env
}

/// The argv: ENTRYPOINT (or `--entrypoint`) followed by CMD (or the given command). A new
/// entrypoint drops the image's CMD, as in Docker.
pub fn argv(config: &ContainerConfig, entrypoint: Option<&str>, command: &[String]) -> Result<Vec<String>> {
    let entry = match entrypoint {
        Some("") => Vec::new(),
        Some(e) => vec![e.to_string()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if command.is_empty() && entrypoint.is_none() {
        config.cmd.clone().unwrap_or_default()
    } else {
        command.to_vec()
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        bail!("no command specified: the image has neither ENTRYPOINT nor CMD, and none was given");
    }
    Ok(args)
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

/// Publishes the ports with host networking: the container's port is the host's, so equal
/// ports need nothing and different ones get a forwarder (TCP only).
fn publish_on_host(ports: &mut [PortMap]) -> Result<()> {
    for p in ports.iter_mut() {
        if p.host == 0 {
            p.host = p.container;
        }
        if p.host == p.container {
            continue;
        }
        if p.proto == Proto::Udp {
            bail!(
                "-p {}:{}/udp: with --network host the container's ports are the host's, and kiln forwards only \
                 tcp; publish the same port or drop --network host",
                p.host,
                p.container
            );
        }
        start_forwarder(p)?;
    }
    Ok(())
}

/// The network the container gets, its ports (free ones picked and every host port checked),
/// and the /etc inputs; `picked` are the ports whose host port kiln chose (to be reported).
fn plan_network(req: &RunRequest, config: &ContainerConfig) -> Result<(Network, NetSpec, Vec<PortMap>)> {
    let mut network = req.network;
    if network == Network::Private && sandbox::probe::current() == sandbox::probe::Isolation::Chroot {
        req.reporter.warn(
            "run",
            "chroot isolation cannot create a network namespace here: the container shares this machine's network",
        );
        network = Network::Host;
    }
    let mut ports = req.ports.clone();
    if req.publish_all {
        let more = exposed_ports(config, &ports);
        ports.extend(more);
    }
    let backend = match network {
        Network::Private => req.backend.clone(),
        _ => None,
    };
    let mut picked = Vec::new();
    match network {
        Network::None if !ports.is_empty() => {
            bail!("-p {}: cannot publish a port with --network none", ports[0].container)
        }
        Network::None => {}
        Network::Host => publish_on_host(&mut ports)?,
        Network::Private => {
            if backend.is_none() {
                if !ports.is_empty() {
                    bail!(
                        "-p {}: publishing a port needs pasta or slirp4netns ({}); or use --network host",
                        ports[0].container,
                        req.backend_why
                    );
                }
                req.reporter
                    .warn("run", format!("the container has loopback only: {}", req.backend_why));
            }
            let unpicked: Vec<bool> = ports.iter().map(|p| p.host == 0).collect();
            net::pick_free_ports(&mut ports)?;
            net::check_host_ports(&ports)?;
            picked = ports
                .iter()
                .zip(unpicked)
                .filter(|(_, u)| *u)
                .map(|(p, _)| p.clone())
                .collect();
        }
    }
    let add_hosts = req
        .add_hosts
        .iter()
        .map(|(name, ip)| {
            Ok((
                name.clone(),
                if ip == "host-gateway" {
                    net::gateway(network, backend.as_ref())?
                } else {
                    ip.clone()
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = NetSpec {
        address: net::address(backend.as_ref()),
        backend,
        publish: if network == Network::Private { ports } else { Vec::new() },
        dns: req.dns.clone(),
        dns_search: req.dns_search.clone(),
        dns_options: req.dns_options.clone(),
        add_hosts,
    };
    Ok((network, spec, picked))
}

/// Runs the request; returns the container's exit status.
pub fn run(store: &Store, req: &RunRequest) -> Result<i32> {
    let (lowers, config) = match &req.image {
        Some(name) => {
            let image = store.load_image(name)?;
            (
                crate::builder::rootfs_for_image(store, &image)?,
                image.config.config.clone(),
            )
        }
        None => (req.lowers.clone(), ContainerConfig::default()),
    };
    let args = argv(&config, req.entrypoint.as_deref(), &req.command)?;
    let env = merge_env(&config.env.clone().unwrap_or_default(), &req.env);
    let (network, net_spec, picked) = plan_network(req, &config)?;
    for p in &picked {
        req.reporter.info("run", p.to_string());
    }
    req.reporter.debug("run", || match &net_spec.backend {
        Some(b) => format!("network: own namespace, connected by {}", b.path().display()),
        None => format!("network: {network:?}"),
    });

    let driver =
        crate::rootfs::choose_driver(store, &sandbox::confinement(), req.storage_driver.as_deref(), req.debug)?;
    let tmp = store.tmp_dir("run-")?;
    let upper = match &req.upper {
        Some(u) => {
            std::fs::create_dir_all(u).with_context(|| format!("cannot create {}", u.display()))?;
            u.clone()
        }
        None => tmp.path().join("upper"),
    };
    // The work dir must be on the upper's filesystem.
    let work_parent = if req.upper.is_some() {
        upper.parent().unwrap_or(Path::new("/")).to_path_buf()
    } else {
        tmp.path().to_path_buf()
    };
    let work_dir = tempfile::Builder::new()
        .prefix(".kiln-work-")
        .tempdir_in(&work_parent)
        .with_context(|| format!("creating a work directory in {}", work_parent.display()))?;
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
        cwd: req
            .workdir
            .clone()
            .or(config.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: req.user.clone().or(config.user.clone()).unwrap_or_default(),
        network,
        hostname: req.hostname.clone().unwrap_or_default(),
        mounts: req.mounts.clone(),
        seccomp: req.seccomp.clone(),
        cap_add: req.cap_add.clone(),
        cap_drop: req.cap_drop.clone(),
        no_new_privs: req.no_new_privs,
        stdin: None,
        output_prefix: String::new(),
        log_to_stderr: false,
        quiet: false,
        live: false,
        tty: req.tty,
    };
    let tc = std::time::Instant::now();
    sandbox::compiled_filter(&spec)?; // compiled once per process (cached)
    let compile = tc.elapsed();
    let t = std::time::Instant::now();
    let outcome = sandbox::run_with_net(&spec, &net_spec);
    let ran = t.elapsed();
    let unmounted = driver.unmount(&merged);
    req.reporter.debug("run", || {
        format!(
            "sandbox {:.1} ms, rootfs mount+unmount {:.1} ms, seccomp compile {:.1} ms",
            ran.as_secs_f64() * 1000.0,
            (t0.elapsed() - ran - compile).as_secs_f64() * 1000.0,
            compile.as_secs_f64() * 1000.0
        )
    });
    let outcome = outcome?;
    unmounted?;
    if req.upper.is_some() {
        crate::rootfs::clean_upper(&upper, &lowers, &outcome.placeholders)?;
    }
    Ok(outcome.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs() {
        let t = |s: &str| {
            let p = parse_publish(s).unwrap();
            (p.ip, p.host, p.container, p.proto)
        };
        assert_eq!(t("127.0.0.1:8080:80"), ("127.0.0.1".into(), 8080, 80, Proto::Tcp));
        assert_eq!(t("8080:80/udp"), ("0.0.0.0".into(), 8080, 80, Proto::Udp));
        // -p CONTAINER and -p IP::CONTAINER: a free host port.
        assert_eq!(t("5000"), ("0.0.0.0".into(), 0, 5000, Proto::Tcp));
        assert_eq!(t("127.0.0.1::5000"), ("127.0.0.1".into(), 0, 5000, Proto::Tcp));
        assert_eq!(t("[::1]:1:2/tcp"), ("::1".into(), 1, 2, Proto::Tcp));
        let e = |s: &str| parse_publish(s).unwrap_err().to_string();
        assert!(e("1:2/sctp").contains("not a protocol"));
        assert!(e("x:2").contains("not a port number"));
        assert!(e("70000").contains("not a port number"));
        assert!(e("0").contains("port 0"));
        assert!(e("a.b:1:2").contains("not an IP address"));
        assert!(e("1:2:3:4").contains("expected"));
    }

    #[test]
    fn publish_all_takes_the_exposed_ports() {
        let cfg = ContainerConfig {
            exposed_ports: Some(
                ["80/tcp", "53/udp", "8080"]
                    .iter()
                    .map(|k| (k.to_string(), serde_json::json!({})))
                    .collect(),
            ),
            ..Default::default()
        };
        let given = vec![parse_publish("9000:8080").unwrap()];
        let more = exposed_ports(&cfg, &given);
        let got: Vec<(u16, Proto, u16)> = more.iter().map(|p| (p.container, p.proto, p.host)).collect();
        assert_eq!(got, vec![(53, Proto::Udp, 0), (80, Proto::Tcp, 0)]);
    }

    #[test]
    fn env_overrides_replace_and_move_last() {
        let image = vec!["PATH=/bin".to_string(), "A=1".to_string(), "B=2".to_string()];
        assert_eq!(
            merge_env(&image, &["A=9".to_string(), "C=3".to_string()]),
            vec!["PATH=/bin", "B=2", "A=9", "C=3"]
        );
    }

    #[test]
    fn entrypoint_and_cmd() {
        let cfg = ContainerConfig {
            entrypoint: Some(vec!["/init".into()]),
            cmd: Some(vec!["serve".into()]),
            ..Default::default()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&cfg, None, &[]).unwrap(), s(&["/init", "serve"]));
        assert_eq!(argv(&cfg, None, &s(&["sh"])).unwrap(), s(&["/init", "sh"]));
        assert_eq!(argv(&cfg, Some(""), &s(&["sh"])).unwrap(), s(&["sh"]));
        assert_eq!(argv(&cfg, Some("/bin/x"), &[]).unwrap(), s(&["/bin/x"]));
        assert!(argv(&ContainerConfig::default(), None, &[]).is_err());
    }
}
