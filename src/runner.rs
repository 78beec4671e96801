//! `kiln run`: an image's ENTRYPOINT/CMD in the sandbox, on a throwaway upper over the
//! image's layers, with the image's config merged with the caller's overrides (command,
//! entrypoint, environment, user, workdir), bind and tmpfs mounts, and published ports.
//!
//! The CLI parses flags into a [`RunRequest`]; everything a `docker run` user relies on
//! (how `-e` overrides the image's ENV, what `--entrypoint ""` means, how `-p` is spelled)
//! is decided here.

use crate::events::Reporter;
use crate::image::ContainerConfig;
use crate::sandbox::{self, MountSpec, Network, RunSpec, SeccompChoice};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// A parsed `-p` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    pub ip: String,
    pub host: u16,
    pub container: u16,
}

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
    pub ports: Vec<PortMap>,
    pub mounts: Vec<MountSpec>,
    pub seccomp: SeccompChoice,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
    pub storage_driver: Option<crate::rootfs::StorageDriver>,
    pub reporter: Reporter,
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
    let any = || "0.0.0.0".to_string();
    Ok(match parts.as_slice() {
        [c] => PortMap {
            ip: any(),
            host: port(c)?,
            container: port(c)?,
        },
        [c, h] => PortMap {
            ip: any(),
            host: port(h)?,
            container: port(c)?,
        },
        [c, h, ip] => PortMap {
            ip: if ip.is_empty() {
                any()
            } else {
                ip.trim_matches(|c| c == '[' || c == ']').to_string()
            },
            host: port(h)?,
            container: port(c)?,
        },
        _ => bail!("-p {s}: expected [IP:]HOST:CONTAINER"),
    })
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

/// Publishes the ports: with host networking the container's port is the host's, so equal
/// ports need nothing and different ones get a forwarder.
fn publish(req: &RunRequest) -> Result<()> {
    if req.network == Network::None && !req.ports.is_empty() {
        let p = &req.ports[0];
        bail!(
            "-p {}:{}: cannot publish a port with --network none",
            p.host,
            p.container
        );
    }
    for p in req.ports.iter().filter(|p| p.host != p.container) {
        start_forwarder(p)?;
    }
    Ok(())
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
    publish(req)?;

    let driver = crate::rootfs::choose_driver(store, &sandbox::confinement(), req.storage_driver, &req.reporter)?;
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
        network: req.network,
        hostname: req.hostname.clone().unwrap_or_default(),
        mounts: req.mounts.clone(),
        seccomp: req.seccomp.clone(),
        cap_add: req.cap_add.clone(),
        cap_drop: req.cap_drop.clone(),
        no_new_privs: req.no_new_privs,
        stdin: None,
        output: crate::sandbox::Output::Inherit,
        tty: req.tty,
    };
    let tc = std::time::Instant::now();
    sandbox::compiled_filter(&spec)?; // compiled once per process (cached)
    let compile = tc.elapsed();
    let t = std::time::Instant::now();
    let outcome = sandbox::run(&spec);
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
        let p = parse_publish("127.0.0.1:8080:80").unwrap();
        assert_eq!((p.ip.as_str(), p.host, p.container), ("127.0.0.1", 8080, 80));
        let p = parse_publish("5000").unwrap();
        assert_eq!((p.ip.as_str(), p.host, p.container), ("0.0.0.0", 5000, 5000));
        let p = parse_publish("[::1]:1:2/tcp").unwrap();
        assert_eq!(p.ip, "::1");
        assert!(parse_publish("1:2/udp").unwrap_err().to_string().contains("only tcp"));
        assert!(
            parse_publish("x:2")
                .unwrap_err()
                .to_string()
                .contains("not a port number")
        );
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
