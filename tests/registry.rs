//! Registry pull/push against a real `docker-registry` on a loopback port (plain HTTP), with
//! a fault-injecting TCP proxy in front for throttling, dropped connections, 500s and a
//! bearer-token gate. Skips (with a message) only when /usr/bin/docker-registry is missing.

mod common;

use common::{Kiln, Registry, Scratch, chown_to_test_user, free_port, is_root};
use kiln::digest::Digest;
use kiln::image::*;
use kiln::store::{ManifestFormat, Store};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// A fault-injecting TCP proxy.

#[derive(Clone)]
enum Fault {
    /// Server → client at most this many bytes per second.
    Throttle(u64),
    /// Cut the first connection that has sent more than this many bytes upstream.
    CutUploadOnce(u64),
    /// The first N connections get `500 Internal Server Error`.
    Fail500(usize),
    /// Requires `Authorization: Bearer <token>`; tokens come from `/token` (basic creds
    /// checked if given) and each is good for `uses` checked requests (then "expired").
    BearerGate { creds: Option<String>, uses: u32 },
}

struct Proxy {
    addr: String,
    tokens_issued: Arc<AtomicUsize>,
}

fn start_proxy(upstream: &str, fault: Fault) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = upstream.to_string();
    let cut_done = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(AtomicUsize::new(0));
    let tokens: Arc<Mutex<HashMap<String, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let tokens_issued = Arc::new(AtomicUsize::new(0));
    let issued = tokens_issued.clone();
    let self_addr = addr.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let n = conns.fetch_add(1, Ordering::SeqCst);
            let (upstream, fault, cut_done, tokens, issued, self_addr) = (
                upstream.clone(),
                fault.clone(),
                cut_done.clone(),
                tokens.clone(),
                issued.clone(),
                self_addr.clone(),
            );
            std::thread::spawn(move || {
                handle_conn(client, &upstream, fault, n, cut_done, tokens, issued, &self_addr);
            });
        }
    });
    Proxy { addr, tokens_issued }
}

/// Reads an HTTP request head (and its Content-Length body) from `c`.
fn read_request(c: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[allow(clippy::too_many_arguments)]
fn handle_conn(
    mut client: TcpStream,
    upstream: &str,
    fault: Fault,
    n: usize,
    cut_done: Arc<AtomicBool>,
    tokens: Arc<Mutex<HashMap<String, u32>>>,
    issued: Arc<AtomicUsize>,
    self_addr: &str,
) {
    match &fault {
        Fault::Fail500(k) if n < *k => {
            let _ = read_request(&mut client);
            let _ = client
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        Fault::BearerGate { creds, uses } => {
            let mut upstream_conn: Option<TcpStream> = None;
            loop {
                let Some((head, body)) = read_request(&mut client) else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                if path.starts_with("/token") {
                    let ok = match creds {
                        None => true,
                        Some(c) => {
                            use base64::Engine as _;
                            let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(c));
                            header_value(&head, "authorization") == Some(want.as_str())
                        }
                    };
                    let resp = if ok {
                        let t = format!("tok-{}", issued.fetch_add(1, Ordering::SeqCst));
                        tokens.lock().unwrap().insert(t.clone(), *uses);
                        let b = format!("{{\"token\":\"{t}\",\"expires_in\":60}}");
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                            b.len()
                        )
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
                    };
                    if client.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                    continue;
                }
                let token = header_value(&head, "authorization")
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .map(str::to_string);
                let valid = token.is_some_and(|t| {
                    let mut m = tokens.lock().unwrap();
                    match m.get_mut(&t) {
                        Some(left) if *left > 0 => {
                            *left -= 1;
                            true
                        }
                        _ => false,
                    }
                });
                if valid {
                    // Forward this one request and relay its response; the next request on this
                    // connection is checked again.
                    if relay_one(&mut client, &mut upstream_conn, upstream, &head, &body).is_none() {
                        return;
                    }
                    continue;
                }
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|p| p.split("/blobs/").next())
                    .unwrap_or("");
                let repo = repo.split("/manifests/").next().unwrap_or("");
                let challenge = format!(
                    "Bearer realm=\"http://{self_addr}/token\",service=\"kiln-test\",scope=\"repository:{repo}:pull\""
                );
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
                );
                if client.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        }
        _ => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let fault2 = fault.clone();
    // client → server
    let up = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let k = match c2.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
            total += k as u64;
            if let Fault::CutUploadOnce(limit) = fault2
                && total > limit
                && !cut_done.swap(true, Ordering::SeqCst)
            {
                let _ = c2.shutdown(Shutdown::Both);
                let _ = s2.shutdown(Shutdown::Both);
                break;
            }
            if s2.write_all(&buf[..k]).is_err() {
                break;
            }
        }
        let _ = s2.shutdown(Shutdown::Write);
    });
    // server → client
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let k = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        if client.write_all(&buf[..k]).is_err() {
            break;
        }
        total += k as u64;
        if let Fault::Throttle(rate) = fault {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// Sends one request upstream and copies its response (head + Content-Length body) back.
fn relay_one(
    client: &mut TcpStream,
    conn: &mut Option<TcpStream>,
    upstream: &str,
    head: &str,
    body: &[u8],
) -> Option<()> {
    if conn.is_none() {
        *conn = Some(TcpStream::connect(upstream).ok()?);
    }
    let server = conn.as_mut().unwrap();
    server.write_all(head.as_bytes()).ok()?;
    server.write_all(body).ok()?;
    let mut resp = Vec::new();
    let mut byte = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        if server.read(&mut byte).ok()? == 0 {
            return None;
        }
        resp.push(byte[0]);
    }
    let rhead = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = rhead.split_whitespace().nth(1)?.parse().ok()?;
    let is_head = head.starts_with("HEAD ");
    let len: u64 = if is_head || status == 204 || status == 304 {
        0
    } else {
        header_value(&rhead, "content-length")?.parse().ok()?
    };
    client.write_all(&resp).ok()?;
    let mut limited = server.take(len);
    std::io::copy(&mut limited, client).ok()?;
    Some(())
}

// ---------------------------------------------------------------------------------------
// Images made directly in a store.

fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Incompressible bytes (xorshift), so layer sizes are predictable.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes an image with the given (uncompressed tar, compression) layers into the store at
/// `root` and names it `name`. Returns the manifest digest.
fn make_image(root: &Path, name: &str, layers: &[(Vec<u8>, Compression)], format: ManifestFormat) -> Digest {
    let store = Store::open(root).unwrap();
    let mut config = ImageConfig::empty();
    config.config.cmd = Some(vec!["/hello".into()]);
    let mut descs = Vec::new();
    for (tar, c) in layers {
        let blob = match c {
            Compression::None => tar.clone(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(&tar[..], 3).unwrap(),
        };
        let d = store.put_bytes(&blob).unwrap();
        let mt = match c {
            Compression::None => MT_OCI_LAYER,
            Compression::Gzip => MT_OCI_LAYER_GZIP,
            Compression::Zstd => MT_OCI_LAYER_ZSTD,
        };
        descs.push(Descriptor::new(mt, d, blob.len() as u64));
        config.rootfs.diff_ids.push(Digest::of(tar));
        config.history.push(History {
            created_by: Some("test".into()),
            ..Default::default()
        });
    }
    let image = store.write_image(&config, descs, format).unwrap();
    let size = store.read_blob(&image.manifest_digest).unwrap().len() as u64;
    let mt = image.manifest.media_type.clone().unwrap();
    store
        .tag(name, &Descriptor::new(&mt, image.manifest_digest.clone(), size))
        .unwrap();
    if is_root() {
        chown_to_test_user(root);
    }
    image.manifest_digest
}

/// Every blob file in the store hashes to its name (no half-written blob is visible).
fn assert_store_consistent(root: &Path) {
    for e in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            Digest::of(&data).hex(),
            e.file_name().to_str().unwrap(),
            "blob {} does not match its digest",
            e.path().display()
        );
    }
}

fn manifest_of(root: &Path, name: &str) -> (Digest, Manifest) {
    let store = Store::open(root).unwrap();
    let image = store.load_image(name).unwrap();
    (image.manifest_digest, image.manifest)
}

fn skopeo() -> Option<&'static str> {
    Path::new("/usr/bin/skopeo").exists().then_some("/usr/bin/skopeo")
}

fn stores(s: &Scratch) -> (PathBuf, PathBuf) {
    (s.join("src-store"), s.join("dst-store"))
}

// ---------------------------------------------------------------------------------------

#[test]
fn push_then_pull_round_trip_with_all_compressions() {
    let reg = Registry::start(None);
    let s = Scratch::new("reg-roundtrip");
    let (src, dst) = stores(&s);
    let layers = vec![
        (tar_with(&[("hello", b"hello\n")]), Compression::Gzip),
        (tar_with(&[("plain", b"uncompressed\n")]), Compression::None),
        (tar_with(&[("z", &noise(100_000, 7))]), Compression::Zstd),
    ];
    let digest = make_image(&src, "app:1", &layers, ManifestFormat::Oci);
    let dest = format!("{}/team/app:v1", reg.addr);
    let digestfile = s.join("digest");
    let out = Kiln::with_root(&src)
        .args(["push", "app:1", &dest, "--digestfile"])
        .arg(&digestfile)
        .ok();
    assert_eq!(out.trim(), digest.as_str());
    assert_eq!(std::fs::read_to_string(&digestfile).unwrap(), digest.as_str());

    if let Some(sk) = skopeo() {
        let raw = Command::new(sk)
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{dest}"))
            .output()
            .unwrap();
        assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
        assert_eq!(
            Digest::of(&raw.stdout),
            digest,
            "the registry serves exactly the manifest kiln stored"
        );
    }

    // Pushing again skips every blob.
    let again = Kiln::with_root(&src).args(["push", "app:1", &dest]).output();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert_eq!(err.matches("skipped: already exists").count(), 4, "{err}");

    let id = Kiln::with_root(&dst).args(["pull", &dest]).ok();
    let (pulled, manifest) = manifest_of(&dst, &dest);
    assert_eq!(pulled, digest);
    assert_eq!(id.trim(), manifest.config.digest.hex());
    assert_eq!(manifest.layers[2].media_type, MT_OCI_LAYER_ZSTD);
    for l in &manifest.layers {
        assert!(dst.join("blobs/sha256").join(l.digest.hex()).exists());
    }
    assert_store_consistent(&dst);

    // Pulling again: everything already there.
    let again = Kiln::with_root(&dst).args(["pull", &dest]).output();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("skipped: already exists"));

    // A second repository on the same registry: blobs are mounted, not uploaded.
    let other = format!("{}/team/other:v1", reg.addr);
    let out = Kiln::with_root(&dst).args(["push", &dest, &other]).output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("mounted from team/app"), "{err}");
    let (_, m2) = {
        let d3 = s.join("store3");
        Kiln::with_root(&d3).args(["pull", &other]).ok();
        manifest_of(&d3, &other)
    };
    assert_eq!(m2, manifest);
}

#[test]
fn push_format_docker_converts_media_types() {
    let reg = Registry::start(None);
    let s = Scratch::new("reg-format");
    let (src, dst) = stores(&s);
    make_image(
        &src,
        "app:1",
        &[(tar_with(&[("a", b"a")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let dest = format!("docker://{}/conv:docker", reg.addr);
    let digest = Kiln::with_root(&src)
        .args(["push", "app:1", &dest, "--format", "docker"])
        .ok();
    let name = format!("{}/conv:docker", reg.addr);
    Kiln::with_root(&dst).args(["pull", &name]).ok();
    let (d, m) = manifest_of(&dst, &name);
    assert_eq!(d.as_str(), digest.trim());
    assert_eq!(m.media_type.as_deref(), Some(MT_DOCKER_MANIFEST));
    assert_eq!(m.config.media_type, MT_DOCKER_CONFIG);
    assert_eq!(m.layers[0].media_type, MT_DOCKER_LAYER_GZIP);
    // zstd cannot be expressed in a Docker manifest: a clear error.
    make_image(
        &src,
        "z:1",
        &[(tar_with(&[("a", b"a")]), Compression::Zstd)],
        ManifestFormat::Oci,
    );
    let err = Kiln::with_root(&src)
        .args(["push", "z:1", &format!("{}/z:1", reg.addr), "--format", "docker"])
        .fails();
    assert!(err.contains("--format oci"), "{err}");
}

#[test]
fn big_layer_chunked_push_survives_a_cut_connection() {
    let reg = Registry::start(None);
    // Cut the first connection after 12 MiB went upstream: inside the first 16 MiB PATCH.
    let proxy = start_proxy(&reg.addr, Fault::CutUploadOnce(12 << 20));
    let s = Scratch::new("reg-chunked");
    let (src, dst) = stores(&s);
    let big = tar_with(&[("big", &noise(40 << 20, 3))]);
    let digest = make_image(&src, "big:1", &[(big, Compression::None)], ManifestFormat::Oci);
    let dest = format!("{}/big:1", proxy.addr);
    let out = Kiln::with_root(&src)
        .args(["push", "big:1", &dest])
        .env("KILN_RETRY_BASE_MS", "50")
        .env("KILN_DEBUG_REGISTRY", "1")
        .output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest.as_str());
    assert!(
        err.contains("resuming the upload") || err.contains("starting again"),
        "the cut was not noticed: {err}"
    );
    eprintln!("{err}");
    let direct = format!("{}/big:1", reg.addr);
    Kiln::with_root(&dst).args(["pull", &direct]).ok();
    assert_eq!(manifest_of(&dst, &direct).0, digest);
    assert_store_consistent(&dst);
}

#[test]
fn retries_after_500s() {
    let reg = Registry::start(None);
    let s = Scratch::new("reg-500");
    let (src, dst) = stores(&s);
    let digest = make_image(
        &src,
        "app:1",
        &[(tar_with(&[("a", b"a")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let direct = format!("{}/app:1", reg.addr);
    Kiln::with_root(&src).args(["push", "app:1", &direct]).ok();
    let proxy = start_proxy(&reg.addr, Fault::Fail500(2));
    let via = format!("{}/app:1", proxy.addr);
    Kiln::with_root(&dst)
        .args(["pull", &via])
        .env("KILN_RETRY_BASE_MS", "50")
        .ok();
    assert_eq!(manifest_of(&dst, &via).0, digest);
    // Always 500: bounded retries, then one sentence.
    let proxy = start_proxy(&reg.addr, Fault::Fail500(usize::MAX));
    let via = format!("{}/app:1", proxy.addr);
    let err = Kiln::with_root(&dst)
        .args(["pull", &via])
        .env("KILN_RETRY_BASE_MS", "50")
        .fails();
    assert!(
        err.contains(&format!("pulling {via}")) && err.contains("HTTP 500"),
        "{err}"
    );
}

#[test]
fn clear_errors_for_unknown_tags_and_unreachable_registries() {
    let reg = Registry::start(None);
    let s = Scratch::new("reg-errors");
    let root = s.join("store");
    let name = format!("{}/busybox:latest", reg.addr);
    let err = Kiln::with_root(&root).args(["pull", &name]).fails();
    assert!(
        err.contains(&format!(
            "manifest unknown: tag latest not found in {}/busybox",
            reg.addr
        )),
        "{err}"
    );
    let dead = format!("127.0.0.1:{}/busybox:latest", free_port());
    let t = Instant::now();
    let err = Kiln::with_root(&root)
        .args(["pull", &dead])
        .env("KILN_RETRY_BASE_MS", "50")
        .fails();
    assert!(
        err.contains(&format!("pulling {dead}")) && err.contains("connection refused"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "retries must be bounded");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("kiln:")).count(),
        1,
        "one sentence: {err}"
    );
    let err = Kiln::with_root(&root).args(["pull", "Foo"]).fails();
    assert!(err.contains("repository name must be lowercase"), "{err}");
}

#[test]
fn basic_auth_with_htpasswd() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let s = Scratch::new("reg-basic");
    let (src, dst) = stores(&s);
    let digest = make_image(
        &src,
        "app:1",
        &[(tar_with(&[("a", b"a")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let dest = format!("{}/private/app:1", reg.addr);

    let err = Kiln::with_root(&src).args(["push", "app:1", &dest]).fails();
    assert!(err.contains(&format!("try `kiln login {}`", reg.addr)), "{err}");

    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let bad = s.write(
        "bad.json",
        &format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, reg.addr, b64("alice:wrong")),
    );
    let err = Kiln::with_root(&src)
        .args(["push", "app:1", &dest, "--authfile"])
        .arg(&bad)
        .fails();
    assert!(err.contains("were not accepted"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let good = s.write(
        "good.json",
        &format!(
            r#"{{"auths":{{"http://{}/":{{"auth":"{}"}}}}}}"#,
            reg.addr,
            b64("alice:s3cret")
        ),
    );
    let out = Kiln::with_root(&src)
        .args(["push", "app:1", &dest, "--authfile"])
        .arg(&good)
        .ok();
    assert_eq!(out.trim(), digest.as_str());
    Kiln::with_root(&dst)
        .args(["pull", &dest, "--authfile"])
        .arg(&good)
        .ok();
    assert_eq!(manifest_of(&dst, &dest).0, digest);
    let err = Kiln::with_root(&s.join("anon")).args(["pull", &dest]).fails();
    assert!(err.contains("kiln login"), "{err}");
}

#[test]
fn bearer_tokens_are_fetched_and_refreshed() {
    let reg = Registry::start(None);
    // Each token is good for 3 requests, so a push and a pull must refresh it several times.
    let proxy = start_proxy(
        &reg.addr,
        Fault::BearerGate {
            creds: Some("bob:pw".into()),
            uses: 3,
        },
    );
    let s = Scratch::new("reg-bearer");
    let (src, dst) = stores(&s);
    let layers: Vec<_> = (0..4)
        .map(|i| (tar_with(&[("f", &noise(50_000, i + 1))]), Compression::Gzip))
        .collect();
    let digest = make_image(&src, "app:1", &layers, ManifestFormat::Oci);
    let dest = format!("{}/tok/app:1", proxy.addr);

    let err = Kiln::with_root(&src).args(["push", "app:1", &dest]).fails();
    assert!(err.contains("kiln login"), "anonymous token request refused: {err}");

    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
    let file = s.write(
        "auth.json",
        &format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, proxy.addr),
    );
    let out = Kiln::with_root(&src)
        .args(["push", "app:1", &dest, "--authfile"])
        .arg(&file)
        .ok();
    assert_eq!(out.trim(), digest.as_str());
    Kiln::with_root(&dst)
        .args(["pull", &dest, "--authfile"])
        .arg(&file)
        .ok();
    assert_eq!(manifest_of(&dst, &dest).0, digest);
    assert!(
        proxy.tokens_issued.load(Ordering::SeqCst) >= 2,
        "expired tokens were refreshed"
    );
}

/// The pids of `pid` and all its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
            if after.split_whitespace().nth(1).and_then(|x| x.parse::<u32>().ok()) == Some(parent) {
                out.push(p);
            }
        }
        i += 1;
    }
    out
}

#[test]
fn kill_9_during_pull_then_pull_again() {
    let reg = Registry::start(None);
    let s = Scratch::new("reg-kill");
    let (src, dst) = stores(&s);
    let big = tar_with(&[("big", &noise(24 << 20, 11))]);
    let digest = make_image(&src, "big:1", &[(big, Compression::None)], ManifestFormat::Oci);
    let layer = manifest_of(&src, "big:1").1.layers[0].digest.clone();
    Kiln::with_root(&src)
        .args(["push", "big:1", &format!("{}/big:1", reg.addr)])
        .ok();

    // 8 MB/s: the layer takes ~3 s, kill after 1.2 s.
    let proxy = start_proxy(&reg.addr, Fault::Throttle(8 << 20));
    let via = format!("{}/big:1", proxy.addr);
    let child = Kiln::with_root(&dst).args(["pull", &via]).spawn();
    std::thread::sleep(Duration::from_millis(1200));
    let pids = process_tree(child.id());
    for p in pids.iter().rev() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), nix::sys::signal::Signal::SIGKILL);
    }
    let mut child = child;
    let _ = child.wait();
    assert!(
        !dst.join("blobs/sha256").join(layer.hex()).exists(),
        "the kill came too late to test anything"
    );
    assert_store_consistent(&dst);

    Kiln::with_root(&dst).args(["pull", &via]).ok();
    assert_eq!(manifest_of(&dst, &via).0, digest);
    assert_store_consistent(&dst);
}

#[test]
fn pull_picks_the_platform_from_an_index() {
    let Some(sk) = skopeo() else {
        eprintln!("SKIPPED: skopeo is missing (scripts/setup.sh installs it)");
        return;
    };
    let reg = Registry::start(None);
    let s = Scratch::new("reg-index");
    let (src, dst) = stores(&s);
    // Two single-platform images, then an index over them pushed with skopeo from an OCI layout.
    let d_amd = make_image(
        &src,
        "p:amd64",
        &[(tar_with(&[("arch", b"amd64")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let d_arm = make_image(
        &src,
        "p:arm64",
        &[(tar_with(&[("arch", b"arm64")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let store = Store::open(&src).unwrap();
    let entry = |d: &Digest, arch: &str, variant: Option<&str>| {
        let size = store.read_blob(d).unwrap().len() as u64;
        let mut desc = Descriptor::new(MT_OCI_MANIFEST, d.clone(), size);
        desc.platform = Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(String::from),
            os_version: None,
        });
        desc
    };
    let index = Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.into()),
        manifests: vec![entry(&d_amd, "amd64", None), entry(&d_arm, "arm64", Some("v8"))],
        annotations: Default::default(),
    };
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = store.put_bytes(&index_bytes).unwrap();
    store
        .tag(
            "multi:1",
            &Descriptor::new(MT_OCI_INDEX, index_digest.clone(), index_bytes.len() as u64),
        )
        .unwrap();
    let dest = format!("{}/multi:1", reg.addr);
    let out = Command::new(sk)
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:docker.io/library/multi:1", src.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if is_root() {
        chown_to_test_user(&src);
    }

    Kiln::with_root(&dst)
        .args(["pull", &dest, "--platform", "linux/arm64"])
        .ok();
    assert_eq!(manifest_of(&dst, &dest).0, d_arm);
    Kiln::with_root(&dst)
        .args(["pull", &dest, "--platform", "linux/amd64"])
        .ok();
    assert_eq!(manifest_of(&dst, &dest).0, d_amd);
    let err = Kiln::with_root(&dst)
        .args(["pull", &dest, "--platform", "linux/s390x"])
        .fails();
    assert!(
        err.contains("no image for platform linux/s390x (available: linux/amd64, linux/arm64/v8)"),
        "{err}"
    );
    let by_digest = format!("{}/multi@{index_digest}", reg.addr);
    Kiln::with_root(&dst)
        .args(["pull", &by_digest, "--platform", "linux/arm64/v8"])
        .ok();
    assert_eq!(manifest_of(&dst, &by_digest).0, d_arm);
}

#[test]
fn tls_registry_with_self_signed_certificate() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: openssl is missing (needed to make a certificate)");
        return;
    }
    let reg = Registry::start_with(None, true, false);
    let s = Scratch::new("reg-tls");
    let (src, dst) = stores(&s);
    let digest = make_image(
        &src,
        "app:1",
        &[(tar_with(&[("a", b"a")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let dest = format!("{}/secure/app:1", reg.addr);
    let err = Kiln::with_root(&src).args(["push", "app:1", &dest]).fails();
    assert!(err.contains("--tls-verify=false"), "{err}");
    let out = Kiln::with_root(&src)
        .args(["push", "app:1", &dest, "--tls-verify=false"])
        .ok();
    assert_eq!(out.trim(), digest.as_str());
    Kiln::with_root(&dst).args(["pull", &dest, "--tls-verify=false"]).ok();
    assert_eq!(manifest_of(&dst, &dest).0, digest);
}

#[test]
fn credential_helper_supplies_credentials() {
    let reg = Registry::start(Some(("carol", "helper-pw")));
    let s = Scratch::new("reg-helper");
    let (src, _) = stores(&s);
    let digest = make_image(
        &src,
        "app:1",
        &[(tar_with(&[("a", b"a")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let bin = s.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // The helper checks it is asked for our registry, as Docker's helpers are.
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread host\n[ \"$host\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
         echo '{{\"ServerURL\":\"'$host'\",\"Username\":\"carol\",\"Secret\":\"helper-pw\"}}'\n",
        reg.addr
    );
    let helper = bin.join("docker-credential-kilntest");
    std::fs::write(&helper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let auth = s.write(
        "auth.json",
        &format!(r#"{{"credHelpers":{{"{}":"kilntest"}}}}"#, reg.addr),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let dest = format!("{}/helped/app:1", reg.addr);
    let out = Kiln::with_root(&src)
        .args(["push", "app:1", &dest, "--authfile"])
        .arg(&auth)
        .env("PATH", &path)
        .ok();
    assert_eq!(out.trim(), digest.as_str());
}

#[test]
fn push_to_a_read_only_registry_is_refused_clearly() {
    let reg = Registry::start_with(None, false, true);
    let s = Scratch::new("reg-readonly");
    let (src, _) = stores(&s);
    make_image(
        &src,
        "app:1",
        &[(tar_with(&[("a", b"a")]), Compression::Gzip)],
        ManifestFormat::Oci,
    );
    let dest = format!("{}/ro/app:1", reg.addr);
    let t = Instant::now();
    let err = Kiln::with_root(&src)
        .args(["push", "app:1", &dest])
        .env("KILN_RETRY_BASE_MS", "50")
        .fails();
    assert!(
        err.contains(&format!("pushing {dest}")) && err.contains("HTTP 405"),
        "{err}"
    );
    assert!(
        err.contains("Method not allowed") && err.contains("read-only"),
        "the registry's own message is shown: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}
