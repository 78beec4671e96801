//! `kiln run` with Docker's network semantics (issue 17), as the unprivileged test user: the
//! container's own network namespace connected by pasta, `-p` for any host and container port
//! (tcp and udp), `-p CONTAINER` and `-P` picking free ports, the gateway to the host's
//! loopback, `--network none`, clear errors, and nothing left after Ctrl-C.
//!
//! Base images come from the local registry on 127.0.0.1:5000 (busybox:latest and
//! debian:bookworm, made by the machine's setup), pulled and tagged under their short names.
//! pasta (package passt) and a /dev/net/tun the test user can open are required, as
//! scripts/setup.sh provides.

mod common;
use common::*;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY: &str = "127.0.0.1:5000";

/// A store holding `names` (e.g. `busybox:latest`) pulled from the local registry.
fn store_with(s: &Scratch, names: &[&str]) -> PathBuf {
    let root = s.join("store");
    for n in names {
        let remote = format!("{REGISTRY}/{n}");
        Kiln::with_root(&root).args(["pull", &remote]).ok();
        Kiln::with_root(&root).args(["tag", &remote, n]).ok();
    }
    root
}

fn require_pasta() {
    let info = Kiln::new().arg("info").ok();
    assert!(
        info.contains("run network:   pasta"),
        "kiln run has no pasta here (run scripts/setup.sh as root: it installs passt and opens /dev/net/tun):\n{info}"
    );
}

/// A background `kiln run`, stopped like Ctrl-C on a terminal (SIGINT to its process group)
/// when dropped, a failed assertion included.
struct Running(Option<Child>);

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }
}

/// `kiln --root ROOT run ARGS...` in the background, in its own process group, stderr piped
/// into a channel of lines.
fn spawn_run(root: &Path, args: &[&str]) -> (Running, std::sync::mpsc::Receiver<String>) {
    use std::os::unix::process::CommandExt;
    let mut c = as_user(kiln_bin().to_str().unwrap());
    c.arg("--root").arg(root).arg("run").args(args);
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("kiln: {l}");
            let _ = tx.send(l);
        }
    });
    (Running(Some(child)), rx)
}

/// Stops a background kiln like Ctrl-C on a terminal (SIGINT to its process group).
fn stop(mut child: Child) {
    let pg = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pg, nix::sys::signal::SIGINT);
    let t = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if t.elapsed() > Duration::from_secs(15) {
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::SIGKILL);
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /` on 127.0.0.1:port until it answers 200 (30 s); the whole answer.
fn http_get(port: u16) -> String {
    let t = Instant::now();
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = c.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut b = String::new();
            let _ = c.read_to_string(&mut b);
            if b.contains(" 200 ") {
                return b;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(30), "nothing answers on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve_www(port: u16, text: &str) -> String {
    format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www")
}

/// Busybox httpd serving on port 80 inside the container (a port the test user could never
/// bind on the host) answers on the published HOSTPORT.
#[test]
fn httpd_on_port_80_answers_on_the_published_host_port() {
    require_pasta();
    let s = Scratch::new("net-80");
    let root = store_with(&s, &["busybox:latest"]);
    let host = free_port();
    let (child, _) = spawn_run(
        &root,
        &[
            "--rm",
            "-p",
            &format!("{host}:80"),
            "busybox:latest",
            "sh",
            "-c",
            &serve_www(80, "port-80-inside"),
        ],
    );
    let body = http_get(host);
    drop(child);
    assert!(body.contains("port-80-inside"), "{body}");
}

/// The host already listens on the container's port numbers (80 when the test runs as root,
/// and a high port): no conflict, each published port reaches the container.
#[test]
fn host_listeners_on_the_container_ports_do_not_conflict() {
    require_pasta();
    let s = Scratch::new("net-noconflict");
    let root = store_with(&s, &["busybox:latest"]);
    let _host80 = if is_root() {
        Some(TcpListener::bind("0.0.0.0:80").expect("the test needs port 80 free on the host"))
    } else {
        None
    };
    let high = TcpListener::bind("0.0.0.0:0").unwrap();
    let c2 = high.local_addr().unwrap().port();
    let (h1, h2) = (free_port(), free_port());
    let script = format!(
        "mkdir -p /www && echo from-the-container > /www/index.html && httpd -p 80 -h /www && exec httpd -f -p {c2} -h /www"
    );
    let (child, _) = spawn_run(
        &root,
        &[
            "-p",
            &format!("{h1}:80"),
            "-p",
            &format!("{h2}:{c2}"),
            "busybox:latest",
            "sh",
            "-c",
            &script,
        ],
    );
    let (b1, b2) = (http_get(h1), http_get(h2));
    drop(child);
    assert!(
        b1.contains("from-the-container") && b2.contains("from-the-container"),
        "{b1}\n{b2}"
    );
}

/// The seed image (examples/python-webapp, built FROM debian:bookworm; its RUN installs
/// python3-flask from Debian's mirror, with host networking as builds have) published as
/// `-p 127.0.0.1:P:5000`, while the local registry holds the host's port 5000.
#[test]
fn seed_image_answers_on_a_loopback_published_port() {
    require_pasta();
    let s = Scratch::new("net-seed");
    let root = store_with(&s, &["debian:bookworm"]);
    let ctx = s.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-webapp");
    for f in ["Dockerfile", "app.py"] {
        std::fs::copy(example.join(f), ctx.join(f)).unwrap();
    }
    if is_root() {
        chown_to_test_user(&ctx);
    }
    Kiln::with_root(&root)
        .args(["build", "-t", "python-webapp:v1"])
        .arg(&ctx)
        .ok();
    let p = free_port();
    let (child, _) = spawn_run(
        &root,
        &["--rm", "-p", &format!("127.0.0.1:{p}:5000"), "python-webapp:v1"],
    );
    let t = Instant::now();
    let body = loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", p)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = c.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut b = String::new();
            let _ = c.read_to_string(&mut b);
            if b.contains("Docker Image Example") {
                break b;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the web app never answered on {p}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(child);
    assert!(body.contains("200 OK"), "{body}");
}

/// The container reaches a server on the host's loopback through the gateway address pasta
/// gives it: the test finds that address as the container sees it, the `default via` of its
/// routing table (`ip route`), and `--add-host NAME:host-gateway` names the same address.
#[test]
fn outbound_reaches_the_hosts_loopback_through_the_gateway() {
    require_pasta();
    let s = Scratch::new("net-out");
    let root = store_with(&s, &["busybox:latest"]);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in server.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\nhello-from-the-host\n");
        }
    });
    // (wget, not `nc </dev/null`: the Debian 12 pasta loses the answer to a connection the
    // container half-closes at once.)
    let script = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); echo gateway=$gw; \
         grep -q \"^$gw[[:space:]]*host.test$\" /etc/hosts && echo add-host=ok; \
         timeout 20 wget -q -O- http://$gw:{port}/"
    );
    let out = Kiln::with_root(&root)
        .args([
            "run",
            "--rm",
            "--add-host",
            "host.test:host-gateway",
            "busybox:latest",
            "sh",
            "-c",
            &script,
        ])
        .ok();
    assert!(out.contains("hello-from-the-host"), "{out}");
    assert!(out.contains("add-host=ok"), "{out}");
    let gw = out.lines().find_map(|l| l.strip_prefix("gateway=")).unwrap_or("");
    assert!(gw.parse::<std::net::Ipv4Addr>().is_ok(), "no gateway: {out}");
}

/// `-P` publishes every EXPOSEd port to a free host port and prints it as `docker port` does
/// (`80/tcp -> 0.0.0.0:PORT`); so does `-p CONTAINER`.
#[test]
fn publish_all_picks_free_ports_and_prints_them() {
    require_pasta();
    let s = Scratch::new("net-pall");
    let root = store_with(&s, &["busybox:latest"]);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\n\
         RUN mkdir /www && echo exposed-and-published > /www/index.html\n\
         EXPOSE 80\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
    );
    Kiln::with_root(&root)
        .args(["build", "-t", "exposed:1"])
        .arg(s.join("ctx"))
        .ok();
    for flags in [vec!["-P"], vec!["-p", "80"]] {
        let mut args = flags.clone();
        args.extend(["--rm", "exposed:1"]);
        let (child, lines) = spawn_run(&root, &args);
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{flags:?}: no port printed"));
        let port: u16 = line
            .strip_prefix("80/tcp -> 0.0.0.0:")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{flags:?}: unexpected line {line:?}"));
        let body = http_get(port);
        drop(child);
        assert!(body.contains("exposed-and-published"), "{body}");
    }
}

/// A UDP port published with `-p HOST:CONTAINER/udp`: an echo server in the container answers
/// a datagram sent to the host port. (The busybox of the local registry is Debian's
/// busybox-static, whose `nc` has no `-u`; the server is Perl's IO::Socket, which
/// debian:bookworm's perl-base has.)
#[test]
fn udp_port_is_published() {
    require_pasta();
    let s = Scratch::new("net-udp");
    let root = store_with(&s, &["debian:bookworm"]);
    let host = free_udp_port();
    let script = "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 9999, Proto => 'udp') or die \"bind: $!\"; \
                  while (1) { $s->recv(my $m, 512); $s->send(\"pong:$m\"); }";
    let (child, _) = spawn_run(
        &root,
        &[
            "--rm",
            "-p",
            &format!("{host}:9999/udp"),
            "debian:bookworm",
            "perl",
            "-e",
            script,
        ],
    );
    // The host's own address on its default route (learnt by connecting a UDP socket, which
    // sends nothing): the Debian 12 pasta loses answers to datagrams from the host's loopback.
    let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("198.51.100.1:9").unwrap();
    let me = probe.local_addr().unwrap().ip();
    let sock = UdpSocket::bind((me, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let t = Instant::now();
    let answer = loop {
        let _ = sock.send_to(b"ping", (me, host));
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no UDP answer on {host}");
    };
    drop(child);
    assert_eq!(answer, "pong:ping");
}

/// Names resolve in the container as on the host, through the resolv.conf kiln writes: the
/// host's own resolvers where they are reachable (pasta's DNS forwarder, which would hide
/// their answers, runs only for loopback resolvers), else the forwarder's address.
#[test]
fn names_resolve_as_on_the_host() {
    require_pasta();
    let name = "deb.debian.org";
    let host = Command::new("getent").args(["hosts", name]).output().unwrap();
    if !host.status.success() {
        assert!(std::env::var_os("CI").is_none(), "the CI machine cannot resolve {name}");
        eprintln!("\n!!!!! SKIPPED: this machine cannot resolve {name} !!!!!\n");
        return;
    }
    let s = Scratch::new("net-dns");
    let root = store_with(&s, &["busybox:latest"]);
    let out = Kiln::with_root(&root)
        .args(["run", "--rm", "busybox:latest", "sh", "-c"])
        .arg(format!("cat /etc/resolv.conf; timeout 20 nslookup {name}; echo rc=$?"))
        .ok();
    assert!(out.contains("rc=0"), "{name} did not resolve in the container:\n{out}");
}

/// `--network none`: loopback only, no route anywhere.
#[test]
fn network_none_has_no_route() {
    let s = Scratch::new("net-none");
    let root = store_with(&s, &["busybox:latest"]);
    let out = Kiln::with_root(&root)
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "busybox:latest",
            "sh",
            "-c",
            "echo routes=$(tail -n +2 /proc/net/route | wc -l); echo links=$(ls /sys/class/net); \
             nc 192.0.2.1 80 </dev/null 2>&1; echo nc=$?",
        ])
        .ok();
    assert!(out.contains("routes=0"), "{out}");
    assert!(out.contains("links=lo\n"), "{out}");
    assert!(!out.contains("nc=0"), "{out}");
}

/// Errors name what is wrong: a host port in use, a privileged host port, a malformed spec.
#[test]
fn publish_errors_are_clear() {
    require_pasta();
    let s = Scratch::new("net-err");
    let root = store_with(&s, &["busybox:latest"]);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = taken.local_addr().unwrap().port();
    let e = Kiln::with_root(&root)
        .args(["run", "-p", &format!("127.0.0.1:{p}:80"), "busybox:latest", "true"])
        .fails();
    assert!(
        e.contains(&format!("127.0.0.1:{p}/tcp")) && e.contains("already uses it"),
        "{e}"
    );
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if start > 80 {
        let e = Kiln::with_root(&root)
            .args(["run", "-p", "80:80", "busybox:latest", "true"])
            .fails();
        assert!(e.contains("net.ipv4.ip_unprivileged_port_start"), "{e}");
    }
    for (spec, says) in [
        ("80/sctp", "not a protocol"),
        ("x:80", "not a port number"),
        ("1:2:3:4", "expected"),
    ] {
        let e = Kiln::with_root(&root)
            .args(["run", "-p", spec, "busybox:latest", "true"])
            .fails();
        assert!(e.contains(says), "-p {spec}: {e}");
    }
}

/// The processes whose command line contains `needle`.
fn procs_with(needle: &str) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push((pid, c));
            }
        }
    }
    v
}

/// The kiln process itself (the child of `runuser` when the tests run as root).
fn kiln_pid(child: &Child) -> i32 {
    if !is_root() {
        return child.id() as i32;
    }
    let t = Instant::now();
    loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap_or_default();
        if let Some(p) = children.split_whitespace().next() {
            return p.parse().unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "kiln did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGINT to kiln alone (not its process group: pasta must be stopped by kiln) while the
/// container serves: kiln ends, and no pasta, container process or listener is left.
#[test]
fn ctrl_c_leaves_no_process_or_forwarder() {
    require_pasta();
    let s = Scratch::new("net-sigint");
    let root = store_with(&s, &["busybox:latest"]);
    let host = free_port();
    let marker = format!("marker-{host}");
    let (mut child, _) = spawn_run(
        &root,
        &[
            "--rm",
            "-p",
            &format!("{host}:80"),
            "busybox:latest",
            "sh",
            "-c",
            &serve_www(80, &marker),
        ],
    );
    http_get(host);
    let pasta = procs_with(&format!("-t {host}:80"));
    assert!(!pasta.is_empty(), "no pasta process publishes {host}");
    assert!(!procs_with(&marker).is_empty());
    let kiln = kiln_pid(child.child());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(kiln), nix::sys::signal::SIGINT).unwrap();
    let t = Instant::now();
    while child.child().try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "kiln did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = || [procs_with(&format!("-t {host}:80")), procs_with(&marker)].concat();
    while !left().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "left behind: {:?}", left());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        TcpStream::connect(("127.0.0.1", host)).is_err(),
        "port {host} still listens"
    );
}
