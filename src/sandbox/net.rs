//! The network of a container in its own network namespace (`kiln run`'s default, Docker's
//! `bridge` and rootless Podman's `pasta`): what connects the namespace to the outside, the
//! published ports, and the generated /etc/resolv.conf and /etc/hosts.
//!
//! The sandbox helper unshares the network namespace (owned by kiln's user namespace, so the
//! container's root may bind port 80), brings loopback up and waits; [`super::run`] then opens
//! the namespace and starts [`Link`]: pasta (package `passt`), which copies the host's address
//! and routes into the namespace, maps the gateway address to the host's loopback, forwards DNS
//! sent to [`PASTA_DNS`] to the host's resolver and publishes the `-p` ports; or slirp4netns
//! (10.0.2.0/24, gateway 10.0.2.2, DNS 10.0.2.3) where pasta is missing. The link process is a
//! child of kiln with a parent-death signal and is killed when the container ends, so nothing
//! is left behind.

use super::Network;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The address the container's resolv.conf names when the host's resolvers are on its loopback
/// (systemd-resolved's 127.0.0.53): pasta forwards DNS queries sent there to the host's first
/// resolver (`--dns-forward`).
pub const PASTA_DNS: &str = "169.254.1.1";
/// slirp4netns' fixed addresses.
pub const SLIRP_GATEWAY: &str = "10.0.2.2";
pub const SLIRP_DNS: &str = "10.0.2.3";
pub const SLIRP_GUEST: &str = "10.0.2.100";
/// How long pasta or slirp4netns may take to connect the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A published port: `ip:host` on the host to `container` in the container's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The host address to listen on (`0.0.0.0`: every address).
    pub ip: String,
    /// The host port; 0 until a free one is picked ([`pick_free_ports`]).
    pub host: u16,
    pub container: u16,
    pub proto: Proto,
}

impl std::fmt::Display for Publish {
    /// As `docker port` prints it: `80/tcp -> 0.0.0.0:32768`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = if self.ip.contains(':') {
            format!("[{}]", self.ip)
        } else {
            self.ip.clone()
        };
        write!(f, "{}/{} -> {ip}:{}", self.container, self.proto.as_str(), self.host)
    }
}

/// What connects a private network namespace to the outside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// pasta (Debian package `passt`), at this path.
    Pasta(PathBuf),
    /// slirp4netns, at this path.
    Slirp4netns(PathBuf),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Pasta(_) => "pasta",
            Backend::Slirp4netns(_) => "slirp4netns",
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Backend::Pasta(p) | Backend::Slirp4netns(p) => p,
        }
    }
}

/// The network of a container with [`Network::Private`], plus the /etc files' inputs (which
/// apply to every network).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// What connects the namespace (None: loopback only).
    pub backend: Option<Backend>,
    /// Published ports (host ports already picked).
    pub publish: Vec<Publish>,
    /// `--dns`: nameservers replacing the host's.
    pub dns: Vec<String>,
    /// `--dns-search`: search domains replacing the host's.
    pub dns_search: Vec<String>,
    /// `--dns-option`: options replacing the host's.
    pub dns_options: Vec<String>,
    /// `--add-host NAME:IP` entries (`host-gateway` already replaced by [`gateway`]).
    pub add_hosts: Vec<(String, String)>,
    /// The container's own address (for its hostname's line in /etc/hosts), when known.
    pub address: Option<String>,
}

/// Which backend `kiln run` uses here, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub backend: Option<Backend>,
    pub why: String,
}

fn find_in(path_var: Option<&OsStr>, name: &str) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = match path_var {
        Some(p) if !p.is_empty() => std::env::split_paths(p).collect(),
        _ => ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Finds pasta (preferred) or slirp4netns in `path_var` (the caller's `PATH`), or the one
/// `want` names (`pasta`, `slirp4netns`). Both need a usable /dev/net/tun.
pub fn detect(path_var: Option<&OsStr>, want: Option<&str>) -> Detection {
    let tun = nix::unistd::access(
        "/dev/net/tun",
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    );
    let candidates: &[&str] = match want {
        Some("pasta") => &["pasta"],
        Some("slirp4netns") => &["slirp4netns"],
        _ => &["pasta", "slirp4netns"],
    };
    let found = candidates.iter().find_map(|n| find_in(path_var, n).map(|p| (*n, p)));
    match (found, tun) {
        (None, _) => Detection {
            backend: None,
            why: format!(
                "{} not found: containers get loopback only and -p needs --network host (install the package passt)",
                candidates.join(" or ")
            ),
        },
        (Some((n, _)), Err(e)) => Detection {
            backend: None,
            why: format!(
                "{n} needs /dev/net/tun, which this user cannot open ({e}): containers get loopback only \
                 (as root: chmod 666 /dev/net/tun, as distributions ship it)"
            ),
        },
        (Some((n, p)), Ok(())) => Detection {
            why: format!("{} connects each container's own network namespace", p.display()),
            backend: Some(if n == "pasta" {
                Backend::Pasta(p)
            } else {
                Backend::Slirp4netns(p)
            }),
        },
    }
}

/// The host's IPv4 default gateway and the address of its interface, from
/// `/proc/net/route` (pasta copies both into the namespace).
pub fn host_route(proc_net_route: &str) -> Option<(String, String)> {
    for l in proc_net_route.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            let gw = std::net::Ipv4Addr::from(gw.to_le_bytes());
            let addr = nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
                (i.interface_name == f[0])
                    .then(|| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip().to_string())))
                    .flatten()
            });
            return Some((gw.to_string(), addr.unwrap_or_default()));
        }
    }
    None
}

/// The address `host-gateway` (`--add-host NAME:host-gateway`) stands for: the host as the
/// container reaches it.
pub fn gateway(network: Network, backend: Option<&Backend>) -> Result<String> {
    match (network, backend) {
        (Network::Host, _) => Ok("127.0.0.1".into()),
        (Network::Private, Some(Backend::Slirp4netns(_))) => Ok(SLIRP_GATEWAY.into()),
        (Network::Private, Some(Backend::Pasta(_))) => {
            let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
            host_route(&route)
                .map(|(gw, _)| gw)
                .context("host-gateway: the host has no IPv4 default route for pasta to map")
        }
        _ => bail!("host-gateway: the container has no network to reach the host by (--network none)"),
    }
}

/// The container's own address, when known before it starts.
pub fn address(backend: Option<&Backend>) -> Option<String> {
    match backend? {
        Backend::Slirp4netns(_) => Some(SLIRP_GUEST.into()),
        Backend::Pasta(_) => host_route(&std::fs::read_to_string("/proc/net/route").ok()?)
            .map(|(_, a)| a)
            .filter(|a| !a.is_empty()),
    }
}

/// Parses `--add-host NAME:IP` (or `NAME=IP`); IPv6 may be bracketed.
pub fn parse_add_host(s: &str) -> Result<(String, String)> {
    let (name, ip) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .with_context(|| format!("--add-host {s}: expected NAME:IP"))?;
    let ip = ip.trim_matches(|c| c == '[' || c == ']');
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("--add-host {s}: {name:?} is not a host name");
    }
    if ip != "host-gateway" && ip.parse::<IpAddr>().is_err() {
        bail!("--add-host {s}: {ip:?} is not an IP address (or host-gateway)");
    }
    Ok((name.to_string(), ip.to_string()))
}

fn is_loopback(ns: &str) -> bool {
    ns.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Whether a private namespace needs the backend's DNS forwarder: no `--dns` and every
/// nameserver of the host's resolv.conf (`host`) on its loopback, unreachable from there.
/// Only then: pasta's forwarder also rewrites the source of the answers of the host's first
/// resolver, so with it a container that queries that resolver directly gets no answer.
pub fn needs_dns_forwarder(host: &str, spec: &NetSpec) -> bool {
    spec.dns.is_empty()
        && !host
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .filter_map(|r| r.split_whitespace().next())
            .any(|ns| !is_loopback(ns))
}

/// The container's /etc/resolv.conf from the host's (`host`), as Docker makes it: `--dns`,
/// `--dns-search` and `--dns-option` replace the host's lines of that kind; in a private
/// namespace the host's loopback resolvers (unreachable from there) are dropped, and if none
/// is left the backend's DNS forwarder takes their place. `--network none` gets an empty file
/// unless servers are given.
pub fn resolv_conf(host: &str, network: Network, spec: &NetSpec) -> String {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut options = Vec::new();
    let mut other = Vec::new();
    if network != Network::None {
        for l in host.lines() {
            let mut w = l.split_whitespace();
            match w.next() {
                Some("nameserver") => servers.extend(w.next().map(str::to_string)),
                Some("search") | Some("domain") => search = w.map(str::to_string).collect(),
                Some("options") => options.extend(w.map(str::to_string)),
                Some(_) => other.push(l.to_string()),
                None => {}
            }
        }
    }
    if network == Network::Private {
        let forward = needs_dns_forwarder(host, spec);
        servers.retain(|s| !is_loopback(s));
        if forward {
            match &spec.backend {
                Some(Backend::Pasta(_)) => servers.push(PASTA_DNS.into()),
                Some(Backend::Slirp4netns(_)) => servers.push(SLIRP_DNS.into()),
                None => {}
            }
        }
    }
    if !spec.dns.is_empty() {
        servers = spec.dns.clone();
    }
    if !spec.dns_search.is_empty() {
        search = spec.dns_search.iter().filter(|s| *s != ".").cloned().collect();
    }
    if !spec.dns_options.is_empty() {
        options = spec.dns_options.clone();
    }
    let mut out = String::new();
    if network == Network::Host && spec.dns.is_empty() && spec.dns_search.is_empty() && spec.dns_options.is_empty() {
        return host.to_string();
    }
    for l in other.iter().filter(|l| l.trim_start().starts_with('#')) {
        out.push_str(l);
        out.push('\n');
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Picks a free host port for every `-p CONTAINER` and `-P` entry (host port 0), by binding
/// port 0 on its address and letting it go.
pub fn pick_free_ports(publish: &mut [Publish]) -> Result<()> {
    for p in publish.iter_mut().filter(|p| p.host == 0) {
        let ip: IpAddr =
            p.ip.parse()
                .with_context(|| format!("-p: {:?} is not an IP address", p.ip))?;
        let port = match p.proto {
            Proto::Tcp => std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()),
            Proto::Udp => std::net::UdpSocket::bind((ip, 0)).and_then(|l| l.local_addr()),
        }
        .with_context(|| format!("cannot find a free {} port on {ip}", p.proto.as_str()))?
        .port();
        p.host = port;
    }
    Ok(())
}

/// Checks that every host port can be taken now, so that the error names the port: one in use
/// by another process, one below `net.ipv4.ip_unprivileged_port_start` for an unprivileged
/// user, an address the host does not have.
pub fn check_host_ports(publish: &[Publish]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for p in publish {
        if !seen.insert((p.host, p.proto, p.ip.clone())) {
            bail!("-p: host port {}/{} is published twice", p.host, p.proto.as_str());
        }
        let ip: IpAddr =
            p.ip.parse()
                .with_context(|| format!("-p: {:?} is not an IP address", p.ip))?;
        let r = match p.proto {
            Proto::Tcp => std::net::TcpListener::bind((ip, p.host)).map(drop),
            Proto::Udp => std::net::UdpSocket::bind((ip, p.host)).map(drop),
        };
        let Err(e) = r else { continue };
        let what = format!("host port {}:{}/{}", p.ip, p.host, p.proto.as_str());
        match e.raw_os_error() {
            Some(libc::EADDRINUSE) => bail!(
                "cannot publish {what} (to container port {}): another process already uses it; pick another host \
                 port (-p OTHER:{}) or -p {} for a free one",
                p.container,
                p.container,
                p.container
            ),
            Some(libc::EACCES) => {
                let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "1024".into());
                bail!(
                    "cannot publish {what}: ports below {start} need privileges on the host \
                     (net.ipv4.ip_unprivileged_port_start = {start}); use a host port >= {start} (-p 8080:{}), or \
                     as root allow it: sysctl -w net.ipv4.ip_unprivileged_port_start={}",
                    p.container,
                    p.host
                )
            }
            Some(libc::EADDRNOTAVAIL) => bail!("cannot publish {what}: the host has no address {}", p.ip),
            _ => return Err(e).with_context(|| format!("cannot publish {what}")),
        }
    }
    Ok(())
}

/// pasta's arguments: the namespace (an fd of ours), the ports, no port forwarding from the
/// namespace to the host, DNS forwarding where [`needs_dns_forwarder`], readiness through the
/// pid file.
pub fn pasta_args(netns: &str, pid_file: &str, publish: &[Publish], dns_forward: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--quiet",
        "--foreground",
        "--config-net",
        "--netns",
        netns,
        "--netns-only",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for proto in [Proto::Tcp, Proto::Udp] {
        let flag = if proto == Proto::Tcp { "-t" } else { "-u" };
        let mut any = false;
        for p in publish.iter().filter(|p| p.proto == proto) {
            any = true;
            let addr = if p.ip == "0.0.0.0" || p.ip == "::" {
                String::new()
            } else {
                format!("{}/", p.ip)
            };
            a.extend([flag.to_string(), format!("{addr}{}:{}", p.host, p.container)]);
        }
        if !any {
            a.extend([flag.to_string(), "none".into()]);
        }
    }
    a.extend(["-T", "none", "-U", "none"].map(String::from));
    if dns_forward {
        a.extend(["--dns-forward", PASTA_DNS].map(String::from));
    }
    a.extend(["--pid".to_string(), pid_file.to_string()]);
    a
}

/// The running pasta or slirp4netns of one container: killed (and reaped) on drop.
pub struct Link {
    child: Child,
    /// slirp4netns: the write end of its `--exit-fd` and its API socket's directory.
    _exit: Option<OwnedFd>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")
}

/// Starts `cmd` with `keep` inherited (the rest stays close-on-exec) and a parent-death signal,
/// so the link dies with the kiln thread that started it.
fn spawn_kept(cmd: &mut Command, keep: Vec<i32>) -> std::io::Result<Child> {
    // SAFETY: prctl and fcntl are async-signal-safe; the closure touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            use crate::sys::Syscall;
            let _ = crate::sys::RealSyscall.set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            for fd in &keep {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Reads what a pipe brings until `want` bytes, EOF or the deadline.
fn read_ready(fd: &OwnedFd, deadline: Instant) -> Vec<u8> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return got,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return got,
            Ok(_) => {}
        }
        let mut buf = [0u8; 64];
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return got,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.contains(&b'\n') || got.len() >= 8 {
                    return got;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return got,
        }
    }
}

/// What a link process said on stderr, without syslog noise, for an error message.
fn stderr_text(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s.lines()
        .filter(|l| !l.contains("syslog") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Drains a link's stderr for its whole life (it must never block on a full pipe).
fn drain_stderr(child: &mut Child) {
    if let Some(mut e) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut e, &mut std::io::sink());
        });
    }
}

/// Connects the network namespace `netns` (an open fd of it) to the outside with `backend`,
/// publishing `net`'s ports; returns once the namespace is configured and the ports listen.
/// `host_resolv` is the host's resolv.conf, as the container's was made from.
pub fn connect(backend: &Backend, netns: &OwnedFd, net: &NetSpec, host_resolv: &str) -> Result<Link> {
    let publish = &net.publish;
    let ns_path = format!("/proc/self/fd/{}", netns.as_raw_fd());
    match backend {
        Backend::Pasta(bin) => {
            // Readiness: pasta writes its pid to the pid file (our pipe) once it is set up.
            let (ready_r, ready_w) = pipe()?;
            let pid_path = format!("/proc/self/fd/{}", ready_w.as_raw_fd());
            let mut cmd = Command::new(bin);
            cmd.args(pasta_args(
                &ns_path,
                &pid_path,
                publish,
                needs_dns_forwarder(host_resolv, net),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
            let mut child = spawn_kept(&mut cmd, vec![netns.as_raw_fd(), ready_w.as_raw_fd()])
                .with_context(|| format!("cannot start {}", bin.display()))?;
            drop(ready_w);
            let got = read_ready(&ready_r, Instant::now() + READY_TIMEOUT);
            if got.is_empty() {
                let _ = child.kill();
                let _ = child.wait();
                let said = stderr_text(&mut child);
                bail!(
                    "pasta could not connect the container's network{}",
                    if said.is_empty() {
                        " (it gave no reason)".to_string()
                    } else {
                        format!(": {said}")
                    }
                );
            }
            drain_stderr(&mut child);
            Ok(Link {
                child,
                _exit: None,
                _dir: None,
            })
        }
        Backend::Slirp4netns(bin) => {
            let (ready_r, ready_w) = pipe()?;
            let (exit_r, exit_w) = pipe()?;
            let dir = tempfile::Builder::new()
                .prefix("kiln-slirp-")
                .tempdir()
                .context("cannot create a temp dir")?;
            let api = dir.path().join("api.sock");
            let mut cmd = Command::new(bin);
            cmd.arg("--configure")
                .arg("--mtu=65520")
                .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
                .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
                .arg("--api-socket")
                .arg(&api)
                .arg("--netns-type=path")
                .arg(&ns_path)
                .arg("tap0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = spawn_kept(
                &mut cmd,
                vec![netns.as_raw_fd(), ready_w.as_raw_fd(), exit_r.as_raw_fd()],
            )
            .with_context(|| format!("cannot start {}", bin.display()))?;
            drop((ready_w, exit_r));
            let got = read_ready(&ready_r, Instant::now() + READY_TIMEOUT);
            if got.is_empty() {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "slirp4netns could not connect the container's network: {}",
                    stderr_text(&mut child)
                );
            }
            drain_stderr(&mut child);
            let link = Link {
                child,
                _exit: Some(exit_w),
                _dir: Some(dir),
            };
            for p in publish {
                slirp_forward(&api, p)?;
            }
            Ok(link)
        }
    }
}

/// Publishes one port through slirp4netns' API socket.
fn slirp_forward(api: &Path, p: &Publish) -> Result<()> {
    let req = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {"proto": p.proto.as_str(), "host_addr": p.ip, "host_port": p.host, "guest_port": p.container}
    });
    let mut s = std::os::unix::net::UnixStream::connect(api)
        .with_context(|| format!("cannot reach slirp4netns' API socket {}", api.display()))?;
    s.write_all(req.to_string().as_bytes())
        .context("writing to slirp4netns' API socket")?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .context("reading slirp4netns' API socket")?;
    if answer.contains("\"error\"") {
        bail!("cannot publish {p}: slirp4netns says {answer}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pasta() -> NetSpec {
        NetSpec {
            backend: Some(Backend::Pasta("/usr/bin/pasta".into())),
            ..Default::default()
        }
    }

    #[test]
    fn resolv_conf_drops_loopback_resolvers_in_a_private_namespace() {
        let resolved = "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        assert_eq!(
            resolv_conf(resolved, Network::Private, &pasta()),
            "# systemd-resolved\nnameserver 169.254.1.1\nsearch lan\noptions edns0 trust-ad\n"
        );
        let slirp = NetSpec {
            backend: Some(Backend::Slirp4netns("/x".into())),
            ..Default::default()
        };
        assert!(resolv_conf(resolved, Network::Private, &slirp).contains("nameserver 10.0.2.3\n"));
        // Upstream servers are kept as they are.
        let plain = "nameserver 127.0.0.1\nnameserver 10.1.1.1\nnameserver ::1\n";
        assert_eq!(resolv_conf(plain, Network::Private, &pasta()), "nameserver 10.1.1.1\n");
        // The host's file, unchanged, with host networking.
        assert_eq!(resolv_conf(resolved, Network::Host, &NetSpec::default()), resolved);
        assert_eq!(resolv_conf(resolved, Network::None, &NetSpec::default()), "");
    }

    #[test]
    fn the_dns_forwarder_only_stands_in_for_loopback_resolvers() {
        let spec = pasta();
        assert!(needs_dns_forwarder("nameserver 127.0.0.53\noptions edns0\n", &spec));
        assert!(needs_dns_forwarder("# no servers\n", &spec));
        assert!(!needs_dns_forwarder("nameserver 10.255.255.53\n", &spec));
        assert!(!needs_dns_forwarder(
            "nameserver 127.0.0.1\nnameserver 10.1.1.1\n",
            &spec
        ));
        let given = NetSpec {
            dns: vec!["9.9.9.9".into()],
            ..pasta()
        };
        assert!(!needs_dns_forwarder("nameserver 127.0.0.53\n", &given));
        // The file the container gets names the forwarder exactly when pasta runs it.
        for host in ["nameserver 127.0.0.53\n", "nameserver 10.255.255.53\n"] {
            assert_eq!(
                resolv_conf(host, Network::Private, &spec).contains(PASTA_DNS),
                needs_dns_forwarder(host, &spec),
                "{host}"
            );
        }
    }

    #[test]
    fn dns_flags_replace_the_hosts_lines() {
        let spec = NetSpec {
            dns: vec!["9.9.9.9".into()],
            dns_search: vec!["example.com".into()],
            dns_options: vec!["ndots:2".into()],
            ..pasta()
        };
        let host = "nameserver 1.1.1.1\nsearch lan\noptions edns0\n";
        for net in [Network::Private, Network::Host, Network::None] {
            assert_eq!(
                resolv_conf(host, net, &spec),
                "nameserver 9.9.9.9\nsearch example.com\noptions ndots:2\n"
            );
        }
    }

    #[test]
    fn add_host_specs() {
        assert_eq!(parse_add_host("db:10.0.0.5").unwrap(), ("db".into(), "10.0.0.5".into()));
        assert_eq!(parse_add_host("v6:[::1]").unwrap(), ("v6".into(), "::1".into()));
        assert_eq!(parse_add_host("v6:fe80::1").unwrap().1, "fe80::1");
        assert_eq!(parse_add_host("gw=host-gateway").unwrap().1, "host-gateway");
        assert!(parse_add_host("nohost").is_err());
        assert!(parse_add_host("a:b").unwrap_err().to_string().contains("not an IP"));
    }

    #[test]
    fn pasta_gets_explicit_ports_only() {
        let p = |ip: &str, host, container, proto| Publish {
            ip: ip.into(),
            host,
            container,
            proto,
        };
        let a = pasta_args(
            "/proc/self/fd/5",
            "/proc/self/fd/6",
            &[
                p("0.0.0.0", 8080, 80, Proto::Tcp),
                p("127.0.0.1", 9000, 5000, Proto::Tcp),
                p("0.0.0.0", 5353, 53, Proto::Udp),
            ],
            false,
        );
        let s = a.join(" ");
        assert!(
            s.contains("-t 8080:80 -t 127.0.0.1/9000:5000 -u 5353:53 -T none -U none"),
            "{s}"
        );
        assert!(s.contains("--netns /proc/self/fd/5 --netns-only") && s.ends_with("--pid /proc/self/fd/6"));
        assert!(!s.contains("--dns-forward"), "{s}");
        let s = pasta_args("n", "p", &[], true).join(" ");
        assert!(s.contains("-t none -u none"), "{s}");
        assert!(s.contains(&format!("--dns-forward {PASTA_DNS} --pid p")), "{s}");
    }

    #[test]
    fn route_and_display() {
        let route = "Iface\tDestination\tGateway \tFlags\n\
                     lo\t0000A8C0\t00000000\t0001\n\
                     nosuch0\t00000000\t010200C0\t0003\n";
        assert_eq!(host_route(route).unwrap().0, "192.0.2.1");
        assert_eq!(host_route("Iface\n"), None);
        let p = Publish {
            ip: "::1".into(),
            host: 1,
            container: 2,
            proto: Proto::Udp,
        };
        assert_eq!(p.to_string(), "2/udp -> [::1]:1");
    }

    #[test]
    fn host_port_errors_name_the_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let taken = Publish {
            ip: "127.0.0.1".into(),
            host: port,
            container: 80,
            proto: Proto::Tcp,
        };
        let e = check_host_ports(std::slice::from_ref(&taken)).unwrap_err().to_string();
        assert!(
            e.contains(&format!("127.0.0.1:{port}/tcp")) && e.contains("already uses it"),
            "{e}"
        );
        let mut free = vec![Publish { host: 0, ..taken }];
        pick_free_ports(&mut free).unwrap();
        assert_ne!(free[0].host, 0);
        check_host_ports(&free).unwrap();
    }
}
