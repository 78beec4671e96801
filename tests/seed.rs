//! The seed workflow, end to end and rootless: an mmdebstrap Debian base imported with
//! `kiln import`, `kiln build -t python-webapp:v1` of examples/python-webapp (apt-get
//! installs python3-flask from Debian's mirror), `kiln run -p 5000:5000`, and an HTTP GET.

mod common;
use common::*;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn base_tarball() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/base-image.sh");
    let out = as_user("bash")
        .arg(&script)
        .output()
        .expect("running scripts/base-image.sh");
    assert!(
        out.status.success(),
        "scripts/base-image.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn http_get(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn seed_python_webapp_builds_and_answers() {
    let s = Scratch::new("seed");
    let root = s.join("store");
    let base = base_tarball();
    Kiln::with_root(&root)
        .arg("import")
        .arg(&base)
        .arg("debian:bookworm")
        .ok();
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
    let config = Kiln::with_root(&root).args(["inspect", "python-webapp:v1"]).ok();
    assert!(config.contains("5000/tcp"), "{config}");

    // The image's own CMD on port 5000 when that port is free (as the README runs it);
    // otherwise (a registry on :5000 on a dev machine) the same app on a free port.
    let free5000 = std::net::TcpListener::bind("0.0.0.0:5000").is_ok();
    let port = if free5000 {
        5000
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let mut k = Kiln::with_root(&root).args(["run", "--rm", "-p", &format!("{port}:{port}"), "python-webapp:v1"]);
    if !free5000 {
        k = k
            .args(["python3", "-c"])
            .arg(format!("import app; app.app.run(host='0.0.0.0', port={port})"));
    }
    let mut child = k.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answer = None;
    while Instant::now() < deadline {
        if let Some(body) = http_get(&format!("127.0.0.1:{port}")) {
            answer = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let body = answer.expect("the container never answered");
    assert!(body.contains("Docker Image Example"), "{body}");
}
