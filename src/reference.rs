//! Image references with Docker's normalisation rules.
//!
//! `debian` → `docker.io/library/debian:latest`, `user/app` → `docker.io/user/app:latest`,
//! `host:5000/a/b:tag`, `name@sha256:…`, `name:tag@sha256:…`. The first path component is a
//! registry host when it contains a `.` or a `:` or is `localhost`; otherwise the image lives
//! on Docker Hub (`docker.io`; `index.docker.io` is folded into it).

use crate::digest::Digest;
use anyhow::{Result, bail};
use std::fmt;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// A normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/debian`).
    pub repository: String,
    /// Tag; `latest` when the input named neither a tag nor a digest.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `s` as Docker does.
    pub fn parse(s: &str) -> Result<Reference> {
        let fail = |why: &str| -> Result<Reference> { bail!("invalid reference {s:?}: {why}") };
        if s.is_empty() {
            return fail("empty");
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return fail("cannot specify 64-byte hexadecimal strings as a name (use the image id or sha256:…)");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => match Digest::parse(d) {
                Ok(d) => (rest, Some(d)),
                Err(_) => {
                    return fail("invalid digest (expected @sha256:<64 lowercase hex digits>)");
                }
            },
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return fail(
                "invalid tag (allowed: letters, digits, '_', '.', '-'; up to 128 characters, not starting with '.' or '-')",
            );
        }
        if name.is_empty() {
            return fail("empty repository name");
        }
        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry == "index.docker.io" {
            registry = DOCKER_HUB.to_string();
        }
        if !valid_host(&registry) {
            return fail("invalid registry host");
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return fail("repository name must be lowercase");
        }
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if !repository.split('/').all(valid_path_component) {
            return fail(
                "invalid repository name (components are lowercase letters and digits separated by '.', '_', '__' or '-', joined by '/')",
            );
        }
        if registry.len() + 1 + repository.len() > 255 {
            return fail("repository name is longer than 255 characters");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The name without tag and digest: `docker.io/library/debian`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form Docker prints: `debian:latest`, `user/app:v1`, `localhost:5000/busybox:latest`.
    pub fn familiar(&self) -> String {
        let name = if self.registry == DOCKER_HUB {
            // Only official images drop `library/` (as Docker's FamiliarName does): for
            // `library/a/b` the short form `a/b` would mean `docker.io/a/b`.
            match self.repository.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        };
        self.with_suffix(name)
    }

    /// Is the registry on a loopback address (`localhost`, `127.0.0.0/8`, `::1`)? Those are
    /// reached over plain HTTP by default, as Docker does.
    pub fn is_loopback(&self) -> bool {
        host_is_loopback(&self.registry)
    }

    /// The tag or digest to ask the registry for (`latest`, `sha256:…`); a digest wins.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    fn with_suffix(&self, mut s: String) -> String {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_suffix(self.name()))
    }
}

impl std::str::FromStr for Reference {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

/// Is `host` (optionally with `:port`) a loopback registry?
pub fn host_is_loopback(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    if h.eq_ignore_ascii_case("localhost") || h == "::1" {
        return true;
    }
    h.parse::<std::net::Ipv4Addr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn valid_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => ("x", p.strip_prefix(':').map(Some).unwrap_or(Some(""))),
        }
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises() {
        let dd = format!("docker.io/library/debian@{D}");
        let tagdd = format!("r.io/x:t@{D}");
        let famdd = format!("debian@{D}");
        // input, registry, repository, display, tag, digest?, familiar
        type Case<'a> = (String, &'a str, &'a str, &'a str, Option<&'a str>, bool, &'a str);
        let cases: Vec<Case> = vec![
            // input, registry, repository, display, tag, digest?, familiar
            (
                "debian".into(),
                "docker.io",
                "library/debian",
                "docker.io/library/debian:latest",
                Some("latest"),
                false,
                "debian:latest",
            ),
            (
                "debian:bookworm".into(),
                "docker.io",
                "library/debian",
                "docker.io/library/debian:bookworm",
                Some("bookworm"),
                false,
                "debian:bookworm",
            ),
            (
                "user/app".into(),
                "docker.io",
                "user/app",
                "docker.io/user/app:latest",
                Some("latest"),
                false,
                "user/app:latest",
            ),
            (
                "docker.io/debian".into(),
                "docker.io",
                "library/debian",
                "docker.io/library/debian:latest",
                Some("latest"),
                false,
                "debian:latest",
            ),
            (
                "index.docker.io/library/debian:12".into(),
                "docker.io",
                "library/debian",
                "docker.io/library/debian:12",
                Some("12"),
                false,
                "debian:12",
            ),
            (
                "localhost:5000/busybox:latest".into(),
                "localhost:5000",
                "busybox",
                "localhost:5000/busybox:latest",
                Some("latest"),
                false,
                "localhost:5000/busybox:latest",
            ),
            (
                "localhost/conformance/name:latest".into(),
                "localhost",
                "conformance/name",
                "localhost/conformance/name:latest",
                Some("latest"),
                false,
                "localhost/conformance/name:latest",
            ),
            (
                "localhost".into(),
                "docker.io",
                "library/localhost",
                "docker.io/library/localhost:latest",
                Some("latest"),
                false,
                "localhost:latest",
            ),
            (
                "quay.io/a/b/c:v1.2-x_y".into(),
                "quay.io",
                "a/b/c",
                "quay.io/a/b/c:v1.2-x_y",
                Some("v1.2-x_y"),
                false,
                "quay.io/a/b/c:v1.2-x_y",
            ),
            (
                "127.0.0.1:5000/x".into(),
                "127.0.0.1:5000",
                "x",
                "127.0.0.1:5000/x:latest",
                Some("latest"),
                false,
                "127.0.0.1:5000/x:latest",
            ),
            (
                "Registry.Example.com/x".into(),
                "Registry.Example.com",
                "x",
                "Registry.Example.com/x:latest",
                Some("latest"),
                false,
                "Registry.Example.com/x:latest",
            ),
            (
                "host:5000/a__b.c-d--e:t".into(),
                "host:5000",
                "a__b.c-d--e",
                "host:5000/a__b.c-d--e:t",
                Some("t"),
                false,
                "host:5000/a__b.c-d--e:t",
            ),
            (
                format!("debian@{D}"),
                "docker.io",
                "library/debian",
                &dd,
                None,
                true,
                &famdd,
            ),
            (format!("r.io/x:t@{D}"), "r.io", "x", &tagdd, Some("t"), true, &tagdd),
            // Found by fuzzing: `library/` is dropped only for official (one-part) names.
            (
                "library/a/b".into(),
                "docker.io",
                "library/a/b",
                "docker.io/library/a/b:latest",
                Some("latest"),
                false,
                "library/a/b:latest",
            ),
            (
                "[::1]:5000/x:1".into(),
                "[::1]:5000",
                "x",
                "[::1]:5000/x:1",
                Some("1"),
                false,
                "[::1]:5000/x:1",
            ),
        ];
        for (input, reg, repo, display, tag, has_digest, fam) in cases {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, reg, "{input}");
            assert_eq!(r.repository, repo, "{input}");
            assert_eq!(r.to_string(), display, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.is_some(), has_digest, "{input}");
            assert_eq!(r.familiar(), fam, "{input}");
            // Display output parses back to the same reference.
            assert_eq!(Reference::parse(display).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn rejects_invalid() {
        let cases = [
            ("Foo", "invalid reference \"Foo\": repository name must be lowercase"),
            ("docker.io/Library/x", "must be lowercase"),
            ("", "empty"),
            ("a:", "invalid tag"),
            ("a:.x", "invalid tag"),
            ("a:-x", "invalid tag"),
            ("a:has space", "invalid tag"),
            ("a@sha256:abc", "invalid digest"),
            ("a@md5:abc", "invalid digest"),
            ("a//b", "invalid repository name"),
            ("a/b-/c", "invalid repository name"),
            ("a/.b", "invalid repository name"),
            ("a/b...c", "invalid repository name"),
            ("-host.com/x", "invalid registry host"),
            ("host.com:abc/x", "invalid"),
            (":tag", "empty repository name"),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "64-byte",
            ),
        ];
        for (input, want) in cases {
            let err = Reference::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
        let long_tag = format!("a:{}", "x".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        assert!(Reference::parse(&format!("a:{}", "x".repeat(128))).is_ok());
    }

    #[test]
    fn loopback() {
        for (h, want) in [
            ("localhost:5000/x", true),
            ("localhost/x", true),
            ("127.0.0.1:5000/x", true),
            ("127.3.4.5/x", true),
            ("[::1]:5000/x", true),
            ("registry.example.com/x", false),
            ("debian", false),
            ("10.0.0.1:5000/x", false),
        ] {
            assert_eq!(Reference::parse(h).unwrap().is_loopback(), want, "{h}");
        }
    }

    #[test]
    fn tag_or_digest_prefers_digest() {
        let r = Reference::parse(&format!("r.io/x:t@{D}")).unwrap();
        assert_eq!(r.tag_or_digest(), D);
        assert_eq!(Reference::parse("r.io/x").unwrap().tag_or_digest(), "latest");
    }
}
