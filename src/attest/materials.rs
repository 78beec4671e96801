//! Sources a build fetched from outside its context, recorded as the builder fetches them
//! (`ADD <url>` downloads with their sha256, `ADD <git url>` checkouts with their commit), for
//! the provenance's `resolvedDependencies`. Process-wide: a kiln process runs one build.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// A fetched source: its URI and one digest (`sha256` or `gitCommit`) as (algorithm, value).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Material {
    pub uri: String,
    pub algorithm: String,
    pub value: String,
}

static SEEN: Mutex<BTreeSet<Material>> = Mutex::new(BTreeSet::new());

fn record(uri: &str, algorithm: &str, value: &str) {
    let m = Material {
        uri: uri.to_string(),
        algorithm: algorithm.to_string(),
        value: value.to_string(),
    };
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).insert(m);
}

/// An `ADD https://…` download and its content digest (`sha256:<hex>` or bare hex).
pub fn record_url(url: &str, digest: &str) {
    record(url, "sha256", digest.strip_prefix("sha256:").unwrap_or(digest));
}

/// An `ADD <git url>#ref` checkout and the commit it resolved to.
pub fn record_git(url: &str, reference: &str, commit: &str) {
    let uri = if reference.is_empty() || reference == "HEAD" {
        format!("git+{url}")
    } else {
        format!("git+{url}@{reference}")
    };
    record(&uri, "gitCommit", commit.trim());
}

/// Everything recorded so far, sorted.
pub fn recorded() -> Vec<Material> {
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
}
