//! ADD's remote sources: HTTP(S) downloads (on the registry's HTTP agent) and git clones,
//! each fetched once per process.

use crate::digest::Digest;
use anyhow::{Context, Result, anyhow, bail};
use filetime::FileTime;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::{self};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

pub(super) fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// BuildKit's git URL forms: `git://`, `git@host:…`, `ssh://`, or http(s) ending in `.git`
/// (before an optional `#ref[:subdir]`).
pub(super) fn is_git_url(s: &str) -> bool {
    if s.starts_with("git://") || s.starts_with("git@") || s.starts_with("ssh://") {
        return true;
    }
    if is_http_url(s) {
        let base = s.split('#').next().unwrap_or(s);
        let base = base.split('?').next().unwrap_or(base).trim_end_matches('/');
        return base.ends_with(".git");
    }
    false
}

/// A downloaded ADD URL, kept for the whole process (source_digest and copy_into share it).
pub(super) struct Downloaded {
    pub(super) url: String,
    pub(super) file: tempfile::NamedTempFile,
    pub(super) filename: String,
    pub(super) mtime: Option<FileTime>,
    pub(super) digest: String,
}

pub(super) type DownloadCache = Mutex<HashMap<String, Arc<Downloaded>>>;

pub(super) fn download(url: &str, checksum: Option<&str>) -> Result<Arc<Downloaded>> {
    static CACHE: OnceLock<DownloadCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().map_err(|_| anyhow!("download cache poisoned"))?;
    let d = match guard.get(url) {
        Some(d) => d.clone(),
        None => {
            let d = Arc::new(fetch(url)?);
            guard.insert(url.to_string(), d.clone());
            d
        }
    };
    drop(guard);
    crate::attest::materials::record_url(url, &d.digest);
    if let Some(c) = checksum {
        let want = Digest::parse(c).with_context(|| format!("ADD --checksum={c}: expected sha256:<64 hex digits>"))?;
        if want.as_str() != d.digest {
            bail!(
                "ADD {url}: checksum mismatch: expected {want}, downloaded content has {}",
                d.digest
            );
        }
    }
    Ok(d)
}

pub(super) fn fetch(url: &str) -> Result<Downloaded> {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    let agent =
        AGENT.get_or_init(|| crate::registry::client::http_agent(true, crate::registry::Timing::default().idle));
    let resp = agent.get(url).call().with_context(|| format!("downloading {url}"))?;
    if !resp.status().is_success() {
        bail!("downloading {url}: http status: {}", resp.status().as_u16());
    }
    let mtime = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .map(|secs| FileTime::from_unix_time(secs, 0));
    let mut file = tempfile::NamedTempFile::new().context("creating a temporary file for a download")?;
    let mut reader = resp.into_body().into_reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        file.write_all(&buf[..n])
            .context("writing a download to a temporary file")?;
    }
    file.flush().context("writing a download to a temporary file")?;
    Ok(Downloaded {
        url: url.to_string(),
        file,
        filename: url_filename(url),
        mtime,
        digest: format!("sha256:{}", hex::encode(h.finalize())),
    })
}

/// BuildKit's name for a downloaded file: the URL path's last element, else `__unnamed__`.
pub(super) fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let base = path.rsplit('/').next().unwrap_or("");
    let decoded = percent_decode(base);
    if decoded.is_empty() || decoded == "." || decoded == ".." {
        "__unnamed__".to_string()
    } else {
        decoded
    }
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses an RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
pub(super) fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2])? as i64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

pub(super) type GitCache = Mutex<HashMap<(String, bool), Arc<tempfile::TempDir>>>;

/// Clones `spec` (`URL[#ref[:subdir]]`) once per process; returns the checkout and the subdir.
pub(super) fn git_checkout(spec: &str, keep_git_dir: bool) -> Result<(Arc<tempfile::TempDir>, String)> {
    static CACHE: OnceLock<GitCache> = OnceLock::new();
    let (url, fragment) = spec.split_once('#').unwrap_or((spec, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().map_err(|_| anyhow!("git cache poisoned"))?;
    let key = (format!("{url}#{reference}"), keep_git_dir);
    if let Some(d) = guard.get(&key) {
        return Ok((d.clone(), subdir.to_string()));
    }
    match std::process::Command::new("git").arg("--version").output() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("ADD {spec}: adding a git repository needs the `git` program, which is not installed")
        }
        Err(e) => return Err(e).context("running git --version"),
        Ok(_) => {}
    }
    let dir = tempfile::Builder::new()
        .prefix("kiln-git-")
        .tempdir()
        .context("creating a directory for a git clone")?;
    let d = dir.path();
    let git = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(d)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running git {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let r = if reference.is_empty() { "HEAD" } else { reference };
    git(&["init", "-q"])?;
    git(&["remote", "add", "origin", url])?;
    if git(&["fetch", "-q", "--depth", "1", "--no-tags", "origin", r]).is_ok() {
        git(&["checkout", "-q", "FETCH_HEAD"])?;
    } else {
        git(&["fetch", "-q", "--tags", "origin"]).with_context(|| format!("ADD {spec}: fetching {url}"))?;
        git(&["checkout", "-q", r]).with_context(|| format!("ADD {spec}: no ref {r:?} in {url}"))?;
    }
    if d.join(".gitmodules").exists() {
        git(&["submodule", "update", "-q", "--init", "--recursive", "--depth", "1"])
            .with_context(|| format!("ADD {spec}: updating submodules"))?;
    }
    if let Ok(o) = std::process::Command::new("git")
        .arg("-C")
        .arg(d)
        .args(["rev-parse", "HEAD"])
        .output()
    {
        crate::attest::materials::record_git(url, reference, &String::from_utf8_lossy(&o.stdout));
    }
    if !keep_git_dir {
        fs::remove_dir_all(d.join(".git")).context("removing .git from a clone")?;
    }
    let dir = Arc::new(dir);
    guard.insert(key, dir.clone());
    Ok((dir, subdir.to_string()))
}
