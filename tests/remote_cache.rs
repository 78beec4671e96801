//! `kiln build --cache-to/--cache-from`: two fresh stores ("two CI runners") build the same
//! Dockerfile against one loopback registry; the second runs no RUN step.

mod common;

use common::{Kiln, Registry, Scratch, store_with_busybox};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

/// GET http://ADDR/PATH on the registry (plain HTTP/1.0), returning the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn cache_tags(addr: &str, repo: &str) -> Vec<String> {
    let body = http_get(addr, &format!("/v2/{repo}/tags/list"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Step number → (instruction, "CACHED" | "DONE") from plain progress output.
fn steps(log: &str) -> BTreeMap<u32, (String, String)> {
    let mut out: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix('#') else { continue };
        let Some((n, tail)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        if tail.starts_with('[') {
            let ins = tail.split_once("] ").map(|(_, i)| i.to_string()).unwrap_or_default();
            out.entry(n).or_default().0 = ins;
        } else if tail == "CACHED" || tail.starts_with("DONE") {
            out.entry(n).or_default().1 = tail.split(' ').next().unwrap().to_string();
        }
    }
    out
}

fn is_fs(ins: &str) -> bool {
    ["RUN ", "COPY ", "ADD ", "WORKDIR "].iter().any(|k| ins.starts_with(k))
}

fn build(root: &Path, ctx: &Path, cache: &str, iid: &Path) -> String {
    let out = Kiln::with_root(root)
        .args([
            "build",
            "--progress",
            "plain",
            "--cache-to",
            cache,
            "--cache-from",
            cache,
            "--iidfile",
        ])
        .arg(iid)
        .args(["-t", "app:1"])
        .arg(ctx)
        .output();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "build failed:\n{log}");
    log
}

#[test]
fn a_second_machine_runs_no_run_step() {
    let reg = Registry::start(None);
    let s = Scratch::new("remote-cache");
    // The base image comes from the registry, so both stores see the same image id.
    let seed = store_with_busybox(&s);
    let base = format!("{}/base/busybox:1", reg.addr);
    Kiln::with_root(&seed).args(["push", "busybox:latest", &base]).ok();

    let ctx = s.join("ctx");
    // "RAN:""x" prints RAN:x, which the instruction text itself does not contain.
    s.write(
        "ctx/Dockerfile",
        &format!(
            "FROM {base} AS other\nRUN echo \"RAN:\"\"other\" && echo other > /o\n\n\
             FROM {base}\nRUN echo \"RAN:\"\"one\" && echo one > /one\nWORKDIR /work\nRUN echo \"RAN:\"\"nochange\"\n\
             ENV X=1\nLABEL l=v\nCOPY a.txt /a.txt\nRUN echo \"RAN:\"\"two\" && cat /a.txt > /two && echo $X >> /two\n\
             COPY --from=other /o /o\nCMD [\"cat\", \"/two\"]\n"
        ),
    );
    s.write("ctx/a.txt", "first\n");
    let cache = format!("{}/team/cache", reg.addr);

    // Machine A: everything runs, 7 filesystem steps are pushed, metadata steps are not.
    let (root_a, iid_a) = (s.join("a"), s.join("iid-a"));
    let log = build(&root_a, &ctx, &cache, &iid_a);
    for r in ["RAN:other", "RAN:one", "RAN:nochange", "RAN:two"] {
        assert!(log.contains(r), "{r} did not run on the first machine:\n{log}");
    }
    let tags = cache_tags(&reg.addr, "team/cache");
    assert_eq!(tags.len(), 7, "one tag per RUN/COPY/WORKDIR step: {tags:?}\n{log}");
    assert!(
        tags.iter().all(|t| t.starts_with("kiln-cache-") && t.len() == 75),
        "{tags:?}"
    );
    assert!(log.contains("7 step results pushed"), "{log}");

    // Machine B: a fresh store; every filesystem step comes from the registry.
    let (root_b, iid_b) = (s.join("b"), s.join("iid-b"));
    let log = build(&root_b, &ctx, &cache, &iid_b);
    for r in ["RAN:other", "RAN:one", "RAN:nochange", "RAN:two"] {
        assert!(!log.contains(r), "a RUN step ran on the second machine ({r}):\n{log}");
    }
    let st = steps(&log);
    let fs: Vec<_> = st.values().filter(|(i, _)| is_fs(i)).collect();
    assert_eq!(fs.len(), 7, "{st:?}");
    assert!(
        fs.iter().all(|(_, r)| r == "CACHED"),
        "every fs step CACHED: {st:?}\n{log}"
    );
    assert!(log.contains(&format!("using cache from {cache}")), "{log}");
    assert!(log.contains("0 step results pushed, 7 already there"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&iid_a).unwrap(),
        std::fs::read_to_string(&iid_b).unwrap(),
        "the same image on both machines"
    );
    let out = Kiln::with_root(&root_b).args(["run", "--rm", "app:1"]).ok();
    assert_eq!(out, "first\n1\n");

    // Machine C: a changed COPY source. Steps before it and the independent stage still hit;
    // the COPY and what depends on it run.
    s.write("ctx/a.txt", "second\n");
    let (root_c, iid_c) = (s.join("c"), s.join("iid-c"));
    let log = build(&root_c, &ctx, &cache, &iid_c);
    for r in ["RAN:other", "RAN:one", "RAN:nochange"] {
        assert!(!log.contains(r), "{r} ran although its result is in the cache:\n{log}");
    }
    assert!(log.contains("RAN:two"), "{log}");
    let out = Kiln::with_root(&root_c).args(["run", "--rm", "app:1"]).ok();
    assert_eq!(out, "second\n1\n");
    assert_eq!(cache_tags(&reg.addr, "team/cache").len(), 10, "3 new results pushed");
}

#[test]
fn an_unreachable_cache_is_a_warning() {
    let s = Scratch::new("remote-cache-down");
    let root = store_with_busybox(&s);
    s.write(
        "ctx/Dockerfile",
        "FROM busybox\nRUN echo \"RAN:\"\"x\" && echo x > /x\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = format!("127.0.0.1:{port}/cache");
    let out = Kiln::with_root(&root)
        .args([
            "build",
            "--progress",
            "plain",
            "--cache-from",
            &cache,
            "--cache-to",
            &cache,
        ])
        .arg(s.join("ctx"))
        .env("KILN_RETRY_BASE_MS", "20")
        .output();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("RAN:x"), "{log}");
    assert!(
        log.contains(&format!("WARNING: cache 127.0.0.1:{port}/cache")) && log.contains("connection refused"),
        "{log}"
    );
}
