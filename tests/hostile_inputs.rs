//! Hostile images, layouts and registries (issue 13, classes 7 and 8): `kiln load` of OCI
//! layouts and oci-archives whose blobs are symlinks or FIFOs, whose manifests are too big,
//! whose indexes nest 1000 deep or whose configs list the wrong number of diff_ids; `kiln pull`
//! from tiny hand-written HTTP servers that send oversized manifests, stall mid-body or never
//! answer. kiln runs as the unprivileged test user; every case must fail quickly with a
//! sentence that names the problem, and leave the store consistent.

mod common;

use common::{Kiln, Registry, Scratch, chown_to_test_user, is_root, store_with_busybox};
use kiln::digest::Digest;
use kiln::image::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Hand-made OCI layouts.

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    fn blob(&self, mt: &str, data: &[u8]) -> Descriptor {
        let d = Digest::of(data);
        std::fs::write(self.path(&d), data).unwrap();
        Descriptor::new(mt, d, data.len() as u64)
    }

    fn json(&self, mt: &str, v: &impl serde::Serialize) -> Descriptor {
        self.blob(mt, &serde_json::to_vec(v).unwrap())
    }

    /// index.json naming `top` `hostile:1`.
    fn index(&self, top: &Descriptor) {
        let mut top = top.clone();
        top.annotations
            .insert(ANNOTATION_REF_NAME.into(), "localhost/hostile:1".into());
        let idx = Index {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.into()),
            manifests: vec![top],
            annotations: Default::default(),
        };
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    }

    /// A config listing `diff_ids` and a manifest with `layers`; returns the manifest.
    fn image(&self, layers: Vec<Descriptor>, diff_ids: Vec<Digest>, annotations: Option<String>) -> Descriptor {
        let mut cfg = ImageConfig::empty();
        cfg.rootfs.diff_ids = diff_ids;
        let config = self.json(MT_OCI_CONFIG, &cfg);
        let mut m = Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            config,
            layers,
            annotations: Default::default(),
        };
        if let Some(a) = annotations {
            m.annotations.insert("padding".into(), a);
        }
        self.json(MT_OCI_MANIFEST, &m)
    }

    /// A well-formed one-layer image (uncompressed layer, diff_id = digest).
    fn good_image(&self, layer: &[u8]) -> (Descriptor, Descriptor) {
        let l = self.blob(MT_OCI_LAYER, layer);
        let m = self.image(vec![l.clone()], vec![l.digest.clone()], None);
        (m, l)
    }
}

fn own(s: &Scratch) {
    if is_root() {
        chown_to_test_user(&s.path);
    }
}

fn load(store: &Path, input: &Path) -> std::process::Output {
    Kiln::with_root(store).args(["load", "-i"]).arg(input).output()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn refused(out: &std::process::Output) -> String {
    let t = text(out);
    assert!(!out.status.success(), "kiln succeeded but should have refused:\n{t}");
    t
}

fn fsck_ok(store: &Path) {
    Kiln::with_root(store).arg("fsck").ok();
}

/// A tar (oci-archive) of `dir`, made with tar(1)-like semantics: symlinks kept as symlinks.
fn archive_of(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// Class 7: hostile layouts and archives.

#[test]
fn layout_blob_symlinks_are_refused() {
    let s = Scratch::new("hostile-symlink");
    // The config blob is a symlink to a file outside the layout with exactly its content (so
    // the digest matches: following it would be accepted), the layer one to /etc/passwd.
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let l = Layout::new(s.join("layout"));
    let (m, layer) = l.good_image(&passwd);
    std::fs::remove_file(l.path(&layer.digest)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", l.path(&layer.digest)).unwrap();
    l.index(&m);
    own(&s);
    let store = s.join("store");
    let err = refused(&load(&store, &l.dir));
    assert!(
        err.contains(&format!("refusing blob {}", layer.digest)) && err.contains("it is a symlink to /etc/passwd"),
        "{err}"
    );
    fsck_ok(&store);

    let l2 = Layout::new(s.join("layout2"));
    let (m2, _) = l2.good_image(b"layer two");
    let raw: Manifest = serde_json::from_slice(&std::fs::read(l2.path(&m2.digest)).unwrap()).unwrap();
    let cfg_path = l2.path(&raw.config.digest);
    let outside = s.join("outside-config.json");
    std::fs::rename(&cfg_path, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &cfg_path).unwrap();
    l2.index(&m2);
    own(&s);
    let err = refused(&load(&store, &l2.dir));
    assert!(
        err.contains(&format!("refusing blob {}", raw.config.digest)) && err.contains("symlink"),
        "{err}"
    );

    // The same as an oci-archive: the symlink is a tar member.
    let ar = s.join("symlink.tar");
    archive_of(&l.dir, &ar);
    own(&s);
    let err = refused(&load(&store, &ar));
    assert!(
        err.contains(&format!("refusing blob {}", layer.digest)) && err.contains("a symlink to /etc/passwd"),
        "{err}"
    );
    fsck_ok(&store);
}

#[test]
fn layout_fifo_blob_is_refused_without_hanging() {
    let s = Scratch::new("hostile-fifo");
    let l = Layout::new(s.join("layout"));
    let (m, layer) = l.good_image(b"some layer");
    let fifo = l.path(&layer.digest);
    std::fs::remove_file(&fifo).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    l.index(&m);
    own(&s);
    let store = s.join("store");
    let t0 = Instant::now();
    let mut child = Kiln::with_root(&store).args(["load", "-i"]).arg(&l.dir).spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        // kiln hangs in open(2) on the FIFO: open it for writing to release it, then fail.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        let _ = child.wait();
        panic!("kiln load hung on a FIFO blob for {:?}", t0.elapsed());
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let out = load(&store, &l.dir);
    let err = refused(&out);
    assert!(
        err.contains(&format!("refusing blob {}", layer.digest)) && err.contains("it is a FIFO"),
        "{err}"
    );
    fsck_ok(&store);
}

#[test]
fn oversized_manifest_is_refused() {
    let s = Scratch::new("hostile-big-manifest");
    let l = Layout::new(s.join("layout"));
    let layer = l.blob(MT_OCI_LAYER, b"layer");
    let m = l.image(
        vec![layer.clone()],
        vec![layer.digest.clone()],
        Some("x".repeat(5 << 20)),
    );
    assert!(m.size > 4 << 20);
    l.index(&m);
    own(&s);
    let store = s.join("store");
    let err = refused(&load(&store, &l.dir));
    assert!(
        err.contains(&m.digest.to_string()) && err.contains("more than the 4 MiB limit for manifests and indexes"),
        "{err}"
    );
    // The same in an oci-archive.
    let ar = s.join("big.tar");
    archive_of(&l.dir, &ar);
    own(&s);
    let err = refused(&load(&store, &ar));
    assert!(
        err.contains("more than the 4 MiB limit for manifests and indexes"),
        "{err}"
    );
    fsck_ok(&store);
}

#[test]
fn index_nested_1000_deep_is_refused() {
    let s = Scratch::new("hostile-nesting");
    let l = Layout::new(s.join("layout"));
    let (mut top, _) = l.good_image(b"layer");
    for _ in 0..1000 {
        let idx = Index {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.into()),
            manifests: vec![top],
            annotations: Default::default(),
        };
        top = l.json(MT_OCI_INDEX, &idx);
    }
    l.index(&top);
    own(&s);
    let store = s.join("store");
    let t0 = Instant::now();
    let out = load(&store, &l.dir);
    let err = refused(&out);
    assert!(err.contains("indexes are nested more than 4 deep"), "{err}");
    assert!(!err.contains("overflow"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let ar = s.join("nested.tar");
    archive_of(&l.dir, &ar);
    own(&s);
    let err = refused(&load(&store, &ar));
    assert!(err.contains("indexes are nested more than 4 deep"), "{err}");
    fsck_ok(&store);
}

#[test]
fn diff_ids_must_match_the_layers() {
    let s = Scratch::new("hostile-diff-ids");
    let l = Layout::new(s.join("layout"));
    let layer = l.blob(MT_OCI_LAYER, b"layer");
    let m = l.image(
        vec![layer.clone()],
        vec![layer.digest.clone(), Digest::of(b"a second one")],
        None,
    );
    l.index(&m);
    own(&s);
    let store = s.join("store");
    let err = refused(&load(&store, &l.dir));
    assert!(
        err.contains("lists 2 diff_ids but manifest") && err.contains("has 1 layers"),
        "{err}"
    );
    fsck_ok(&store);
}

// ---------------------------------------------------------------------------------------
// Class 7 and 8 from the network: a tiny HTTP server on 127.0.0.1.

/// One connection's request: the path.
fn read_request_path(c: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_string();
    line.split_whitespace().nth(1).map(str::to_string)
}

type Handler = dyn Fn(&str, &mut TcpStream, &AtomicU64) + Send + Sync;

/// Serves each connection on its own thread with `handler(path, stream, bytes_sent)`; stops
/// accepting after `lifetime` or when dropped (every thread is bounded by write timeouts and
/// its handler's own limits).
struct Server {
    addr: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Server {
    fn start(lifetime: Duration, handler: Arc<Handler>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + lifetime;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                        let (h, sent) = (handler.clone(), sent2.clone());
                        std::thread::spawn(move || {
                            if let Some(p) = read_request_path(&mut c) {
                                h(&p, &mut c, &sent);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server { addr, stop, sent }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn respond(c: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(body);
}

/// Streams `{"schemaVersion":2,"x":"xxxx…` for up to `limit` bytes, counting what was sent.
fn stream_endless_manifest(c: &mut TcpStream, limit: u64, sent: &AtomicU64) {
    let chunk = vec![b'x'; 64 * 1024];
    let _ = c.write_all(br#"{"schemaVersion":2,"x":""#);
    let mut n = 0;
    while n < limit {
        if c.write_all(&chunk).is_err() {
            return;
        }
        n += chunk.len() as u64;
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

#[test]
fn oversized_manifests_from_a_registry_are_refused() {
    // 1 GiB is what the server would send at most; kiln must stop near 4 MiB.
    const SERVE: u64 = 1 << 30;
    for with_length in [true, false] {
        let handler: Arc<Handler> = Arc::new(move |path: &str, c: &mut TcpStream, sent: &AtomicU64| {
            if path == "/v2/" {
                return respond(c, "200 OK", &[], b"{}");
            }
            let mut head = format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: {MT_OCI_MANIFEST}\r\n");
            if with_length {
                head.push_str(&format!("Content-Length: {}\r\n", SERVE + 24));
            }
            head.push_str("\r\n");
            if c.write_all(head.as_bytes()).is_ok() {
                stream_endless_manifest(c, SERVE, sent);
            }
        });
        let srv = Server::start(Duration::from_secs(60), handler);
        let s = Scratch::new("hostile-registry-big");
        let store = s.join("store");
        let t0 = Instant::now();
        let out = Kiln::with_root(&store)
            .args(["pull", &format!("{}/x:y", srv.addr)])
            .env("KILN_REGISTRY_IDLE_TIMEOUT", "2")
            .env("KILN_RETRY_BASE_MS", "50")
            .output();
        let err = refused(&out);
        assert!(
            err.contains("manifest y from") && err.contains("than the 4 MiB limit for manifests and indexes"),
            "Content-Length sent: {with_length}: {err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
        // Give the server a moment to notice the closed connection.
        std::thread::sleep(Duration::from_millis(300));
        let sent = srv.sent.load(Ordering::Relaxed);
        assert!(
            sent < 64 << 20,
            "kiln read {sent} bytes of an oversized manifest (Content-Length sent: {with_length})"
        );
        fsck_ok(&store);
    }
}

/// A registry serving one image whose config download stalls after half its bytes.
fn stalling_registry(config: Vec<u8>, manifest: Vec<u8>) -> Server {
    let cfg_digest = Digest::of(&config);
    let handler: Arc<Handler> = Arc::new(move |path: &str, c: &mut TcpStream, _: &AtomicU64| {
        if path == "/v2/" {
            respond(c, "200 OK", &[], b"{}");
        } else if path.contains("/manifests/") {
            respond(
                c,
                "200 OK",
                &[
                    ("Content-Type", MT_OCI_MANIFEST.to_string()),
                    ("Content-Length", manifest.len().to_string()),
                ],
                &manifest,
            );
        } else if path.ends_with(cfg_digest.as_str()) {
            let head = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                config.len()
            );
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(&config[..config.len() / 2]);
            let _ = c.flush();
            // Stall (bounded, so the test ends even if kiln never gives up).
            std::thread::sleep(Duration::from_secs(35));
        } else {
            respond(c, "404 Not Found", &[], b"");
        }
    });
    Server::start(Duration::from_secs(90), handler)
}

#[test]
fn stalled_registries_fail_quickly_and_leave_the_store_usable() {
    let s = Scratch::new("hostile-stall");
    let store = store_with_busybox(&s);

    // Headers, then half the config, then silence.
    let mut cfg = ImageConfig::empty();
    cfg.config.labels = Some([("pad".to_string(), "y".repeat(4096))].into());
    let config = serde_json::to_vec(&cfg).unwrap();
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: Descriptor::new(MT_OCI_CONFIG, Digest::of(&config), config.len() as u64),
        layers: vec![],
        annotations: Default::default(),
    })
    .unwrap();
    let srv = stalling_registry(config.clone(), manifest);
    let t0 = Instant::now();
    let out = Kiln::with_root(&store)
        .args(["pull", &format!("{}/x:y", srv.addr)])
        .env("KILN_REGISTRY_IDLE_TIMEOUT", "1")
        .env("KILN_RETRY_BASE_MS", "50")
        .output();
    let took = t0.elapsed();
    let err = refused(&out);
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
    assert!(
        err.contains(&format!(
            "registry {} sent no data for 1 s while downloading blob {} (gave up after 3 tries)",
            srv.addr,
            Digest::of(&config)
        )),
        "{err}"
    );
    fsck_ok(&store);

    // Accepts the connection, never answers.
    let silent: Arc<Handler> = Arc::new(|_: &str, _: &mut TcpStream, _: &AtomicU64| {
        std::thread::sleep(Duration::from_secs(35));
    });
    let srv2 = Server::start(Duration::from_secs(90), silent);
    let t0 = Instant::now();
    let out = Kiln::with_root(&store)
        .args(["pull", &format!("{}/x:y", srv2.addr)])
        .env("KILN_REGISTRY_IDLE_TIMEOUT", "1")
        .env("KILN_RETRY_BASE_MS", "50")
        .output();
    let took = t0.elapsed();
    let err = refused(&out);
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
    assert!(
        err.contains(&format!("registry {} sent no data for 1 s", srv2.addr))
            && err.contains("(gave up after 3 tries)"),
        "{err}"
    );
    fsck_ok(&store);

    // A good registry still works with the same store.
    let reg = Registry::start(None);
    let name = format!("{}/bb:1", reg.addr);
    Kiln::with_root(&store).args(["push", "busybox:latest", &name]).ok();
    Kiln::with_root(&store).args(["rmi", &name]).output();
    let other = s.join("store2");
    Kiln::with_root(&other).args(["pull", &name]).ok();
    Kiln::with_root(&store).args(["pull", &name]).ok();
    fsck_ok(&store);
    fsck_ok(&other);
}
