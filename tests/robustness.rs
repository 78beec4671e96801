//! Robustness: `kill -9` at random points of pull, build (and its layer commits) and push; many
//! kiln processes on one store at once; hostile archives through `kiln load`, `kiln import`
//! and `ADD`; hostile build contexts; what a RUN step cannot reach. Every test ends with
//! `kiln fsck` on the store. Run as the unprivileged test user (see tests/common).
//!
//! `KILN_ROBUST_POINTS=N` changes the number of kill points per operation (default 10).

mod common;
use common::*;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// Helpers

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kiln fsck` must say the store is consistent (exit 0); returns its output.
fn fsck_ok(root: &Path) -> String {
    let out = Kiln::with_root(root).arg("fsck").output();
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("is consistent"),
        "kiln fsck found problems in {}:\n{t}",
        root.display()
    );
    t
}

/// kiln as the test user in its own process group (so that the whole tree can be killed).
fn kiln_group(root: &Path, args: &[&str]) -> Command {
    let mut c = as_user(kiln_bin().to_str().unwrap());
    c.arg("--root").arg(root).args(args);
    c.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    c
}

/// Processes (other than us) whose command line contains `marker`.
fn procs_with(marker: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                v.push((pid, cmd));
            }
        }
    }
    v
}

/// Mount points of any process that mention `path`.
fn mounts_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        if let Ok(mi) = std::fs::read_to_string(e.path().join("mountinfo")) {
            for l in mi.lines().filter(|l| l.contains(&p)) {
                v.push(format!("{}: {l}", e.file_name().to_string_lossy()));
            }
        }
    }
    v
}

/// Runs `cmd`, SIGKILLs its whole process group after `delay` (if still running), and checks
/// that no process mentioning `markers` nor mount under `scratch` is left. Returns whether
/// the command finished by itself.
fn run_and_kill(mut cmd: Command, delay: Duration, scratch: &Path, markers: &[&str]) -> bool {
    let mut child: Child = cmd.spawn().expect("starting kiln");
    let t = Instant::now();
    let mut finished = false;
    while t.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !finished {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
    }
    let _ = child.wait();
    let t = Instant::now();
    loop {
        let left: Vec<_> = markers.iter().flat_map(|m| procs_with(m)).collect();
        let mounts = mounts_under(scratch);
        if left.is_empty() && mounts.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "left behind after kill -9: processes {left:?}, mounts {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    finished
}

fn points() -> usize {
    std::env::var("KILN_ROBUST_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A store with busybox and `big:1` (three ~6 MB random layers on top), and the registry
/// holding `big:1`.
fn big_image(s: &Scratch) -> (PathBuf, Registry, String) {
    let root = store_with_busybox(s);
    s.write(
        "big/Dockerfile",
        "FROM busybox\n\
         RUN head -c 6000000 /dev/urandom > /r1\n\
         RUN head -c 6000000 /dev/urandom > /r2\n\
         RUN head -c 6000000 /dev/urandom > /r3\n",
    );
    Kiln::with_root(&root)
        .args(["build", "-t", "big:1"])
        .arg(s.join("big"))
        .ok();
    let reg = Registry::start(None);
    let dest = format!("{}/robust/big:1", reg.addr);
    Kiln::with_root(&root).args(["push", "big:1", &dest]).ok();
    (root, reg, dest)
}

// ------------------------------------------------------------------------------------------
// Crash consistency

#[test]
fn kill_9_during_pull_and_push_leaves_a_consistent_store() {
    let s = Scratch::new("rb-pullpush");
    let (root, reg, src) = big_image(&s);
    let n = points();
    let mut finished = 0;
    for i in 0..n {
        let delay = Duration::from_millis(10 + 25 * i as u64);
        // Pull into a fresh store each time, so that every point interrupts real work.
        let dst = s.join(&format!("pull-{i}"));
        let cmd = kiln_group(&dst, &["pull", &src]);
        finished += run_and_kill(cmd, delay, &s.path, &[dst.to_str().unwrap()]) as usize;
        if dst.join("index.json").exists() {
            fsck_ok(&dst);
        }
        // The killed pull's partial data (if it got that far) is garbage for --repair; what
        // follows checks that the completed pull adds none of its own.
        if dst.exists() {
            Kiln::with_root(&dst).args(["fsck", "--repair"]).ok();
        }
        Kiln::with_root(&dst).args(["pull", &src]).ok();
        let t = fsck_ok(&dst);
        assert!(!t.contains("garbage"), "a completed pull left partial data:\n{t}");

        // Push under a new tag, killed; then the same push again.
        let dest = format!("{}/robust/push:{i}", reg.addr);
        let cmd = kiln_group(&root, &["push", "big:1", &dest]);
        run_and_kill(cmd, delay, &s.path, &[&dest]);
        fsck_ok(&root);
        Kiln::with_root(&root).args(["push", "big:1", &dest]).ok();
        let check = s.join(&format!("check-{i}"));
        Kiln::with_root(&check).args(["pull", &dest]).ok();
        fsck_ok(&check);
    }
    eprintln!("pull/push: {finished} of {n} pulls finished before their kill point");
    assert!(
        finished < n,
        "every pull finished before the kill: the test killed nothing"
    );
}

#[test]
fn kill_9_during_build_and_commit_leaves_a_consistent_store() {
    let s = Scratch::new("rb-build");
    let root = store_with_busybox(&s);
    s.write("ctx/a.txt", "a\n");
    s.write("ctx/b/c.txt", "c\n");
    // 0.317 marks the step processes (they live in the sandbox's pid namespace).
    s.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         COPY a.txt /a\n\
         RUN sleep 0.317; head -c 3000000 /dev/urandom > /r1\n\
         COPY b /b\n\
         RUN sleep 0.317; head -c 3000000 /dev/urandom > /r2 && rm /a\n\
         RUN sleep 0.317; mkdir -p /d && for i in $(seq 1 300); do echo $i > /d/f$i; done\n\
         RUN sleep 0.317; rm -rf /d/f1* && ln -s /b/c.txt /link\n",
    );
    let ctx = s.join("ctx");
    let n = points();
    let mut finished = 0;
    for i in 0..n {
        let tag = format!("app:{i}");
        let args = ["build", "--no-cache", "-t", &tag, ctx.to_str().unwrap()];
        let delay = Duration::from_millis(100 + 250 * i as u64);
        let cmd = kiln_group(&root, &args);
        finished += run_and_kill(cmd, delay, &s.path, &["sleep 0.317", ctx.to_str().unwrap()]) as usize;
        let t = fsck_ok(&root);
        if i % 2 == 0 {
            // Partial data of the killed build is reported, and --repair removes it.
            let r = Kiln::with_root(&root).args(["fsck", "--repair"]).ok();
            assert!(!r.contains("error:"), "{r}");
            let t2 = fsck_ok(&root);
            assert!(!t2.contains("garbage:"), "repair left garbage:\n{t2}");
            let _ = t;
        }
        // The same command again succeeds.
        Kiln::with_root(&root).args(args).ok();
        let out = Kiln::with_root(&root)
            .args([
                "run",
                "--rm",
                &tag,
                "sh",
                "-c",
                "ls /d | wc -l; cat /b/c.txt; test -e /a || echo no-a",
            ])
            .output();
        let t = text(&out);
        assert!(
            out.status.success() && t.contains("189") && t.contains("c\n") && t.contains("no-a"),
            "{t}"
        );
    }
    let tmp: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    Kiln::with_root(&root).args(["fsck", "--repair"]).ok();
    let t = fsck_ok(&root);
    assert!(!t.contains("garbage:"), "{t}\n(tmp was {tmp:?})");
    eprintln!("build: {finished} of {n} builds finished before their kill point");
    assert!(
        finished < n,
        "every build finished before the kill: the test killed nothing"
    );
    // prune keeps the named images working.
    Kiln::with_root(&root).args(["prune", "--all"]).ok();
    fsck_ok(&root);
    Kiln::with_root(&root)
        .args(["run", "--rm", "app:0", "cat", "/b/c.txt"])
        .ok();
}

// ------------------------------------------------------------------------------------------
// Concurrency

#[test]
fn four_builds_and_four_pulls_at_once_twice() {
    let s = Scratch::new("rb-conc");
    let (src_root, reg, _) = big_image(&s);
    // A second image sharing big:1's layers, plus one of its own.
    s.write(
        "big2/Dockerfile",
        "FROM big:1\nRUN head -c 2000000 /dev/urandom > /r4\n",
    );
    Kiln::with_root(&src_root)
        .args(["build", "-t", "big:2"])
        .arg(s.join("big2"))
        .ok();
    let b2 = format!("{}/robust/big:2", reg.addr);
    Kiln::with_root(&src_root).args(["push", "big:2", &b2]).ok();
    let b1 = format!("{}/robust/big:1", reg.addr);

    let root = store_with_busybox(&s);
    for i in 0..4 {
        s.write(&format!("ctx{i}/f"), &format!("file {i}\n"));
        s.write(
            &format!("ctx{i}/Dockerfile"),
            &format!(
                "FROM busybox\n\
                 RUN echo shared > /shared && head -c 1000000 /dev/zero > /zeros\n\
                 COPY f /f\n\
                 RUN echo {i} > /mine && sleep 0.2\n"
            ),
        );
    }
    for round in 0..2 {
        let t = Instant::now();
        let mut kids = Vec::new();
        for i in 0..4 {
            let ctx = s.join(&format!("ctx{i}"));
            let tag = format!("c{i}:r{round}");
            // The second round rebuilds from scratch: the same steps race again.
            let mut args = vec!["build", "-t", &tag, ctx.to_str().unwrap()];
            if round == 1 {
                args.push("--no-cache");
            }
            let mut c = kiln_group(&root, &args);
            c.stdout(Stdio::piped());
            kids.push((format!("build {i}"), c.spawn().unwrap()));
            let img = if i % 2 == 0 { &b1 } else { &b2 };
            let mut c = kiln_group(&root, &["pull", img]);
            c.stdout(Stdio::piped());
            kids.push((format!("pull {img}"), c.spawn().unwrap()));
        }
        for (what, k) in kids {
            let out = k.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {what} failed:\n{}", text(&out));
        }
        eprintln!("round {round}: 4 builds + 4 pulls in {:.1}s", t.elapsed().as_secs_f64());
        let f = fsck_ok(&root);
        assert!(!f.contains("garbage:"), "{f}");
        for i in 0..4 {
            let out = Kiln::with_root(&root)
                .args([
                    "run",
                    "--rm",
                    &format!("c{i}:r{round}"),
                    "cat",
                    "/mine",
                    "/shared",
                    "/f",
                ])
                .ok();
            assert_eq!(out, format!("{i}\nshared\nfile {i}\n"));
        }
    }
    let imgs = Kiln::with_root(&root).arg("images").ok();
    assert!(imgs.contains("robust/big") && imgs.contains("c3"), "{imgs}");
}

// ------------------------------------------------------------------------------------------
// Hostile archives: kiln load (a base layer), kiln import, ADD

/// A raw ustar entry with an arbitrary name and link (the tar crate refuses `..`).
fn raw(name: &[u8], kind: tar::EntryType, link: &[u8], mode: u32, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    raw(name.as_bytes(), tar::EntryType::Regular, b"", 0o644, data)
}

/// A PAX header carrying `path` (for names longer than ustar allows), then the entry.
fn pax_path(path: &[u8], kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut rec = Vec::new();
    let body_len = b" path=".len() + path.len() + 1;
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len = len.to_string().len() + body_len;
    }
    rec.extend_from_slice(format!("{len} path=").as_bytes());
    rec.extend_from_slice(path);
    rec.push(b'\n');
    let mut v = raw(b"PaxHeader", tar::EntryType::XHeader, b"", 0o644, &rec);
    v.extend(raw(b"placeholder", kind, b"", 0o755, data));
    v
}

/// A GNU sparse entry (old format, type 'S') of `real` bytes holding one 4 KiB data block at
/// its end.
fn gnu_sparse(name: &str, real: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(4096);
    {
        let g = h.as_gnu_mut().unwrap();
        // 12-byte numeric fields in GNU base-256 (0x80, then big-endian), which every
        // reader must accept for values past 8 GiB.
        let oct = |v: u64, w: usize| {
            let mut f = vec![0u8; w];
            f[0] = 0x80;
            f[w - 8..].copy_from_slice(&v.to_be_bytes());
            f
        };
        g.realsize.copy_from_slice(&oct(real, 12));
        g.sparse[0].offset.copy_from_slice(&oct(real - 4096, 12));
        g.sparse[0].numbytes.copy_from_slice(&oct(4096, 12));
    }
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend(std::iter::repeat_n(b'x', 4096));
    v
}

fn end(mut v: Vec<u8>) -> Vec<u8> {
    v.extend_from_slice(&[0u8; 1024]);
    v
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// A docker-archive holding one image `name` whose only layer is `layer` (raw, as given).
fn docker_archive(name: &str, layer: &[u8], gz: bool) -> Vec<u8> {
    let diff_id = if gz {
        let mut d = flate2::read::MultiGzDecoder::new(layer);
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut d, &mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut h, &buf[..n]);
        }
        hex::encode(sha2::Digest::finalize(h))
    } else {
        sha256_hex(layer)
    };
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    );
    let manifest = format!(r#"[{{"Config":"config.json","RepoTags":["{name}"],"Layers":["layer.tar"]}}]"#);
    let mut b = tar::Builder::new(Vec::new());
    for (n, d) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", config.as_bytes()),
        ("layer.tar", layer),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, n, d).unwrap();
    }
    b.into_inner().unwrap()
}

/// What happened to one hostile input on one path.
struct Outcome {
    ok: bool,
    secs: f64,
    msg: String,
}

fn outcome(out: &std::process::Output, t: Instant) -> Outcome {
    let t2 = text(out);
    assert_ne!(out.status.code(), Some(101), "kiln panicked:\n{t2}");
    let msg = t2
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((n, rest)) if n.starts_with('#') => rest,
            _ => l,
        })
        .filter(|l| l.contains("error") || l.contains("warning") || l.starts_with("OUT:"))
        .collect::<Vec<_>>()
        .join(" | ");
    Outcome {
        ok: out.status.success(),
        secs: t.elapsed().as_secs_f64(),
        msg: msg.chars().take(300).collect(),
    }
}

/// The host-side tripwires: nothing may appear in or change under `outside`.
fn check_outside(outside: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"], "something was written outside the rootfs");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "host secret\n"
    );
}

#[test]
fn hostile_archives_through_load_import_and_add() {
    let s = Scratch::new("rb-hostile");
    let root = store_with_busybox(&s);
    let outside = s.join("outside");
    s.write("outside/secret", "host secret\n");
    let o = outside.to_str().unwrap().trim_start_matches('/').to_string();
    let abs = format!("/{o}");
    let up = "../".repeat(12);
    use tar::EntryType as T;

    let deep: Vec<u8> = {
        let p = "d/".repeat(4096) + "bottom";
        end(pax_path(p.as_bytes(), T::Regular, b"deep\n"))
    };
    let long_name = end(pax_path(&vec![b'n'; 4096], T::Regular, b"x"));
    let many: Vec<u8> = {
        let mut v = Vec::with_capacity(100_000 * 512);
        for i in 0..100_000 {
            v.extend(raw(
                format!("m/{:03}/{i}", i % 100).as_bytes(),
                T::Regular,
                b"",
                0o644,
                b"",
            ));
        }
        end(v)
    };
    let bomb: Vec<u8> = {
        // 3 GiB of zeros in one file: ~3 MB of gzip.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut h = tar::Header::new_gnu();
        h.set_path("zeros").unwrap();
        h.set_size(3 << 30);
        h.set_mode(0o644);
        h.set_cksum();
        e.write_all(h.as_bytes()).unwrap();
        let chunk = vec![0u8; 4 << 20];
        for _ in 0..(3 << 30) / chunk.len() {
            e.write_all(&chunk).unwrap();
        }
        e.write_all(&[0u8; 1024]).unwrap();
        e.finish().unwrap()
    };
    let full = end(file("ok.txt", b"fine\n"));
    let truncated = full[..700].to_vec();

    // (name, tar bytes (gzip when the name ends with .gz), check inside the image)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            end(file(&format!("{up}{o}/pwned"), b"x")),
            "echo OUT:$(find / -xdev -name 'pwned*' 2>/dev/null | tr '\\n' ' ')",
        ),
        (
            "absolute",
            end(file(&format!("{abs}/pwned"), b"x")),
            "echo OUT:$(find / -xdev -name 'pwned*' 2>/dev/null | tr '\\n' ' ')",
        ),
        (
            "symlink-then-write",
            end([
                raw(b"esc", T::Symlink, abs.as_bytes(), 0o777, b""),
                file("esc/pwned", b"x"),
                raw(b"up", T::Symlink, up.as_bytes(), 0o777, b""),
                file(&format!("up/{o}/pwned2"), b"x"),
            ]
            .concat()),
            "echo OUT:$(find / -xdev -name 'pwned*' 2>/dev/null | tr '\\n' ' ')",
        ),
        (
            "hardlink-outside",
            end([
                raw(b"hl", T::Link, format!("{abs}/secret").as_bytes(), 0o644, b""),
                file("hl", b"overwritten"),
            ]
            .concat()),
            "echo OUT:$(cat /hl 2>&1)",
        ),
        (
            "hardlink-dotdot",
            end(raw(b"hl2", T::Link, format!("{up}{o}/secret").as_bytes(), 0o644, b"")),
            "echo OUT:$(cat /hl2 2>&1)",
        ),
        (
            "whiteout-dotdot",
            end(file(".wh...", b"")),
            "echo OUT:$(ls -A / | wc -l)-entries",
        ),
        (
            "whiteout-dotdot-nested",
            end([raw(b"w/", T::Directory, b"", 0o755, b""), file("w/.wh...", b"")].concat()),
            "echo OUT:$(ls -A / | wc -l)-entries",
        ),
        (
            "devices",
            end([
                raw(b"null", T::Char, b"", 0o666, b""),
                raw(b"sda", T::Block, b"", 0o660, b""),
                raw(b"fifo", T::Fifo, b"", 0o644, b""),
            ]
            .concat()),
            "echo OUT:$(ls -l /null /sda /fifo 2>&1 | cut -c1-10 | tr '\\n' ' ')",
        ),
        (
            "setuid",
            end(raw(b"suid", T::Regular, b"", 0o4755, b"#!/bin/sh\nid -u\n")),
            "echo OUT:$(ls -l /suid | cut -c1-10)",
        ),
        (
            "sparse-10G",
            end(gnu_sparse("sparse", 10 << 30)),
            "echo OUT:$(du -k /sparse | cut -f1)KiB-used-$(stat -c %s /sparse)-bytes",
        ),
        ("entries-100k", many, "echo OUT:$(find /m -type f | wc -l)-files"),
        ("deep-4096", deep, "echo OUT:$(find / -xdev -name bottom | wc -l)-found"),
        ("name-4096", long_name, "true"),
        (
            "duplicates",
            end([file("dup", b"first\n"), file("dup", b"second\n")].concat()),
            "echo OUT:$(cat /dup)",
        ),
        ("truncated", truncated, "true"),
        ("gzip-bomb.gz", bomb, "true"),
    ];

    let mut table = Vec::new();
    let mut results = Vec::new();
    let only = std::env::var("KILN_ROBUST_ONLY").ok();
    for (i, (name, data, check)) in cases.iter().enumerate() {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let gz = name.ends_with(".gz");
        let ext = if gz { "tar.gz" } else { "tar" };
        let tarf = s.join(&format!("in/{name}.{ext}"));
        std::fs::create_dir_all(tarf.parent().unwrap()).unwrap();
        std::fs::write(&tarf, data).unwrap();
        chown_to_test_user(&s.path);

        // 1. kiln import (a rootfs tarball → a one-layer image).
        let t = Instant::now();
        let imp = outcome(
            &Kiln::with_root(&root)
                .arg("import")
                .arg(&tarf)
                .arg(format!("imp{i}:1"))
                .output(),
            t,
        );
        check_outside(&outside);

        // 2. kiln load of a docker-archive whose layer is the raw input, then FROM it
        // (the layer is unpacked as an overlay lower).
        let arch = s.join(&format!("in/{name}.docker.tar"));
        std::fs::write(&arch, docker_archive(&format!("raw{i}:1"), data, gz)).unwrap();
        chown_to_test_user(&s.path);
        let t = Instant::now();
        let mut load = outcome(&Kiln::with_root(&root).arg("load").arg("-i").arg(&arch).output(), t);
        if load.ok {
            let ctx = s.join(&format!("from{i}"));
            s.write(
                &format!("from{i}/Dockerfile"),
                &format!("FROM busybox AS bb\nFROM raw{i}:1\nCOPY --from=bb / /\nRUN {check}\n"),
            );
            let t = Instant::now();
            let out = Kiln::with_root(&root)
                .args(["build", "--progress=plain"])
                .arg(&ctx)
                .output();
            load = outcome(&out, t);
        }
        check_outside(&outside);

        // 3. ADD of the local archive in a build. The 10 GiB sparse file costs ~70 s there
        // (the layer commit hashes and compresses 10 GiB of zeros: OCI layers have no holes),
        // so CI runs it only with KILN_ROBUST_FULL=1.
        if *name == "sparse-10G" && std::env::var_os("KILN_ROBUST_FULL").is_none() {
            check_outside(&outside);
            for (how, o) in [("import", &imp), ("load+FROM", &load)] {
                table.push(format!(
                    "| {name} | {how} | {} | {:.1}s | {} |",
                    if o.ok { "accepted" } else { "refused" },
                    o.secs,
                    o.msg.replace('|', "/")
                ));
            }
            continue;
        }
        s.write(
            &format!("add{i}/Dockerfile"),
            &format!("FROM busybox\nADD in.{ext} /\nRUN {check}\n"),
        );
        std::fs::copy(&tarf, s.join(&format!("add{i}/in.{ext}"))).unwrap();
        chown_to_test_user(&s.path);
        let t = Instant::now();
        let out = Kiln::with_root(&root)
            .args(["build", "--progress=plain"])
            .arg(s.join(&format!("add{i}")))
            .output();
        let add = outcome(&out, t);
        check_outside(&outside);

        for (how, o) in [("import", &imp), ("load+FROM", &load), ("ADD", &add)] {
            assert!(o.secs < 120.0, "{name} via {how} took {:.0}s", o.secs);
            table.push(format!(
                "| {name} | {how} | {} | {:.1}s | {} |",
                if o.ok { "accepted" } else { "refused" },
                o.secs,
                o.msg.replace('|', "/")
            ));
        }
        results.push((name.to_string(), imp, load, add));
    }
    eprintln!("| input | path | result | time | messages |\n|---|---|---|---|---|");
    for l in &table {
        eprintln!("{l}");
    }
    // Expectations that must hold whatever the path.
    for (name, imp, load, add) in &results {
        match name.as_str() {
            "truncated" | "gzip-bomb.gz" => {
                assert!(!imp.ok && !load.ok && !add.ok, "{name} must be refused everywhere")
            }
            // import only re-writes tar headers; the name cannot exist in a filesystem.
            "name-4096" => assert!(!load.ok && !add.ok, "{name} must be refused when unpacked"),
            "duplicates" => assert!(add.ok && add.msg.contains("OUT:second"), "{}", add.msg),
            _ => {}
        }
    }
    // The store survived all of it.
    fsck_ok(&root);
    Kiln::with_root(&root).args(["prune"]).ok();
    fsck_ok(&root);
    // Disk use stayed bounded (the sparse file is holes, the bomb was refused).
    let du = Command::new("du").arg("-sk").arg(&s.path).output().unwrap();
    let kb: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kb < 2_000_000, "the scratch dir uses {kb} KiB");
}

// ------------------------------------------------------------------------------------------
// Hostile build contexts

fn build_out(root: &Path, ctx: &Path, extra: &[&str]) -> (bool, String) {
    let out = Kiln::with_root(root)
        .args(["build", "--progress=plain"])
        .args(extra)
        .arg(ctx)
        .output();
    (out.status.success(), text(&out))
}

#[test]
fn hostile_contexts() {
    let s = Scratch::new("rb-ctx");
    let root = store_with_busybox(&s);
    s.write("outside/secret", "host secret\n");
    let secret = s.join("outside/secret");

    // A symlink pointing outside the context is copied as a symlink, never followed.
    s.write(
        "c1/Dockerfile",
        "FROM busybox\nCOPY . /ctx/\nRUN readlink /ctx/link; cat /ctx/link 2>&1 || echo OUT:dangling\n",
    );
    std::os::unix::fs::symlink(&secret, s.join("c1/link")).unwrap();
    std::os::unix::fs::symlink("../outside", s.join("c1/dirlink")).unwrap();
    chown_to_test_user(&s.path);
    let (ok, t) = build_out(&root, &s.join("c1"), &[]);
    assert!(ok, "{t}");
    assert!(
        t.contains(secret.to_str().unwrap()) && t.contains("OUT:dangling") && !t.contains("host secret"),
        "{t}"
    );
    // A source *through* the symlink is not followed out either.
    s.write("c1/Dockerfile", "FROM busybox\nCOPY dirlink/secret /x\n");
    let (ok, t) = build_out(&root, &s.join("c1"), &[]);
    assert!(!ok, "COPY through a symlink out of the context must fail:\n{t}");

    // COPY ../x: refused or confined to the context.
    s.write("c2/Dockerfile", "FROM busybox\nCOPY ../outside/secret /x\nRUN cat /x\n");
    let (ok, t) = build_out(&root, &s.join("c2"), &[]);
    assert!(!t.contains("host secret"), "COPY ../ read outside the context:\n{t}");
    eprintln!(
        "COPY ../outside/secret: {}",
        if ok { "accepted (confined)" } else { "refused" }
    );

    // .dockerignore excluding everything: COPY . copies nothing, the build works.
    s.write("c3/Dockerfile", "FROM busybox\nCOPY . /ctx/\nRUN ls -A /ctx | wc -l\n");
    s.write("c3/.dockerignore", "*\n**\n");
    s.write("c3/file", "x");
    let (ok, t) = build_out(&root, &s.join("c3"), &[]);
    assert!(ok, "{t}");
    assert!(
        t.lines().any(|l| l.trim_end().ends_with(" 0") || l.trim() == "0"),
        "{t}"
    );
    fsck_ok(&root);
}

/// Peak RSS (KiB) of the processes whose command line contains `marker`, sampled until `child`
/// exits.
fn peak_rss_while(mut child: Child, marker: &str) -> (std::process::ExitStatus, u64) {
    let mut peak = 0u64;
    loop {
        for (pid, _) in procs_with(marker) {
            if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(l) = st.lines().find(|l| l.starts_with("VmHWM:"))
            {
                let kb: u64 = l.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0);
                peak = peak.max(kb);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            return (st, peak);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn context_of_200k_files_streams_with_bounded_memory() {
    let n: usize = std::env::var("KILN_ROBUST_CONTEXT_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let s = Scratch::new("rb-bigctx");
    let root = store_with_busybox(&s);
    let ctx = s.join("bigctx");
    for d in 0..(n / 1000).max(1) {
        let dir = ctx.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000.min(n) {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    s.write(
        "bigctx/Dockerfile",
        "FROM busybox\nCOPY . /ctx/\nRUN find /ctx -type f | wc -l\n",
    );
    chown_to_test_user(&s.path);
    let t = Instant::now();
    let child = kiln_group(
        &root,
        &["build", "--progress=plain", "-t", "big-ctx:1", ctx.to_str().unwrap()],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let (st, rss) = peak_rss_while(child, ctx.to_str().unwrap());
    eprintln!(
        "context of {n} files: built in {:.1}s, peak RSS {} MiB",
        t.elapsed().as_secs_f64(),
        rss / 1024
    );
    assert!(st.success(), "build of a {n}-file context failed");
    // Bounded: well under what holding every path and header would take at 1,000,000 files.
    assert!(rss < 400 * 1024, "peak RSS {rss} KiB for {n} files");
    let out = Kiln::with_root(&root)
        .args(["run", "--rm", "big-ctx:1", "sh", "-c", "find /ctx -type f | wc -l"])
        .ok();
    assert_eq!(
        out.trim(),
        (n + 1).to_string(),
        "every file (and the Dockerfile) copied"
    );
}

// ------------------------------------------------------------------------------------------
// RUN confinement (beyond tests/sandbox.rs: /proc/1/root, `..`, chroot, keyctl, mount, unshare)

#[test]
fn run_steps_cannot_reach_the_store_home_kiln_or_other_builds() {
    let s = Scratch::new("rb-confine");
    let root = store_with_busybox(&s);
    let store = root.to_str().unwrap().to_string();
    // Build A holds a marker file in its rootfs while B looks for it.
    s.write(
        "a/Dockerfile",
        "FROM busybox\nRUN echo a > /marker-of-build-a-5150 && sleep 3\n",
    );
    let a = kiln_group(&root, &["build", s.join("a").to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let script = format!(
        "ls {store} >/dev/null 2>&1 && echo LEAK-store; \
         ls /tmp/kiln-tests/home >/dev/null 2>&1 && echo LEAK-home; \
         find / -xdev -name 'marker-of-build-a-5150' 2>/dev/null | grep -q . && echo LEAK-other-build; \
         for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' ' | grep -q -e __sandb[o]x -e kiln-bi[n] && echo LEAK-kiln-visible-$p; done; \
         echo pids=$(ls -d /proc/[0-9]* | wc -l); \
         mount -o remount,rw /proc/sys 2>/dev/null && echo LEAK-remount-proc-sys; \
         mount -o remount,ro / 2>/dev/null && echo LEAK-remount-root; \
         mount --bind / /mnt 2>/dev/null && echo LEAK-bind; \
         echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo LEAK-sysctl; \
         cat /proc/self/uid_map; \
         mkdir /s && cp /bin/busybox /s/busybox && chown 0:0 /s/busybox && chmod 4755 /s/busybox; \
         su -s /bin/sh nobody -c 'echo SUID-euid=$(/s/busybox id -u); /s/busybox grep -E \"^(Uid|CapEff)\" /proc/self/status' 2>&1; \
         echo done"
    );
    s.write(
        "b/Dockerfile",
        &format!("FROM busybox\nRUN {}\n", script.replace('\n', " ")),
    );
    let (ok, t) = build_out(&root, &s.join("b"), &[]);
    let a = a.wait_with_output().unwrap();
    assert!(a.status.success(), "build a: {}", text(&a));
    assert!(ok && t.contains("done"), "{t}");
    // (The step's command line is echoed too: look at output lines only.)
    let leaks: Vec<_> = t
        .lines()
        .filter(|l| l.split_once(' ').is_some_and(|(_, rest)| rest.starts_with("LEAK")))
        .collect();
    assert!(leaks.is_empty(), "{leaks:?} in:\n{t}");
    assert!(t.contains("SUID-euid="), "{t}");
    // The step's root is the namespace's root: uid 0 maps to an unprivileged host id.
    let words = |l: &str| -> Vec<String> {
        l.split_whitespace()
            .filter(|w| !w.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let map = t
        .lines()
        .map(words)
        .find(|w| w.len() == 3 && w[0] == "0" && w.iter().all(|x| x.parse::<u64>().is_ok()))
        .unwrap_or_else(|| panic!("no uid_map line in:\n{t}"));
    let host: u32 = map[1].parse().unwrap();
    assert_ne!(host, 0, "container root is host root: {map:?}");
    // A setuid-root binary run by nobody gets at most the namespace's root, which is `host`.
    eprintln!("setuid check output:\n{t}");
    fsck_ok(&root);
}
