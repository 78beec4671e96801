//! Registry credentials (Docker's config.json / `$REGISTRY_AUTH_FILE`, credential helpers,
//! GitLab CI variables) and `WWW-Authenticate` challenges.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A user name and password (or token) for basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// An authentication challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. Unknown schemes
/// give None.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    } else {
        None
    }
}

/// `key=value` or `key="quoted, value"` pairs separated by commas; keys lowercased.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            break;
        }
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

/// The auth file kiln reads: `explicit`, else `$REGISTRY_AUTH_FILE`, else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn auth_file_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|p| !p.is_empty())?;
    Some(PathBuf::from(home).join(".docker/config.json"))
}

/// Docker's config.json (only the parts kiln reads).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    #[serde(default)]
    pub auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    pub cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    pub creds_store: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct AuthEntry {
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `http://h:5000/x` → `h:5000`.
fn normalise_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    if k == "index.docker.io" || k == "registry-1.docker.io" {
        "docker.io".to_string()
    } else {
        k.to_string()
    }
}

impl AuthConfig {
    pub fn parse(data: &[u8]) -> Result<AuthConfig> {
        Ok(serde_json::from_slice(data)?)
    }

    /// The stored credentials for `registry` (`docker.io`, `host:5000`), from `auths`.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>> {
        let entry = self.auths.get(registry).or_else(|| {
            self.auths
                .iter()
                .find(|(k, _)| normalise_key(k) == registry)
                .map(|(_, v)| v)
        });
        let Some(e) = entry else { return Ok(None) };
        if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .with_context(|| format!("the \"auth\" entry for {registry} is not valid base64"))?;
            let raw =
                String::from_utf8(raw).with_context(|| format!("the \"auth\" entry for {registry} is not UTF-8"))?;
            let Some((u, p)) = raw.split_once(':') else {
                bail!("the \"auth\" entry for {registry} is not base64 of user:password");
            };
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        match (&e.username, &e.password) {
            (Some(u), Some(p)) => Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            })),
            _ => Ok(None),
        }
    }

    /// The credential helper for `registry`, if any (`credHelpers` first, then `credsStore`).
    pub fn helper(&self, registry: &str) -> Option<&str> {
        self.cred_helpers
            .iter()
            .find(|(k, _)| k.as_str() == registry || normalise_key(k) == registry)
            .map(|(_, v)| v.as_str())
            .or(self.creds_store.as_deref())
            .filter(|h| !h.is_empty())
    }
}

/// Runs `docker-credential-NAME get` with the server URL on stdin.
pub fn run_helper(name: &str, registry: &str) -> Result<Option<Credentials>> {
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let prog = format!("docker-credential-{name}");
    let mut child = Command::new(&prog)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running credential helper {prog}"))?;
    child.stdin.take().expect("piped").write_all(server.as_bytes())?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("running credential helper {prog}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if msg.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        bail!("credential helper {prog} failed for {registry}: {}", msg.trim());
    }
    #[derive(serde::Deserialize)]
    struct HelperOut {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let h: HelperOut = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("credential helper {prog} printed something that is not its JSON answer"))?;
    Ok(Some(Credentials {
        username: h.username,
        password: h.secret,
    }))
}

/// Finds credentials for `registry`: the auth file (`auths`, then credential helpers), then
/// GitLab CI's `CI_REGISTRY_USER`/`CI_REGISTRY_PASSWORD` (or `CI_JOB_TOKEN`) for `CI_REGISTRY`.
pub fn find_credentials(registry: &str, auth_file: Option<&Path>) -> Result<Option<Credentials>> {
    if let Some(path) = auth_file_path(auth_file) {
        match std::fs::read(&path) {
            Ok(data) => {
                let cfg = AuthConfig::parse(&data).with_context(|| format!("reading auth file {}", path.display()))?;
                if let Some(c) = cfg
                    .lookup(registry)
                    .with_context(|| format!("reading auth file {}", path.display()))?
                {
                    return Ok(Some(c));
                }
                if let Some(h) = cfg.helper(registry)
                    && let Some(c) = run_helper(h, registry)?
                {
                    return Ok(Some(c));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && auth_file.is_none() => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading auth file {}", path.display()));
            }
        }
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(ci) = env("CI_REGISTRY")
        && normalise_key(&ci) == registry
    {
        if let (Some(u), Some(p)) = (env("CI_REGISTRY_USER"), env("CI_REGISTRY_PASSWORD")) {
            return Ok(Some(Credentials {
                username: u,
                password: p,
            }));
        }
        if let Some(t) = env("CI_JOB_TOKEN") {
            return Ok(Some(Credentials {
                username: "gitlab-ci-token".into(),
                password: t,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/debian:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer  realm = "https://x/t" , error="invalid_token""#),
            Some(Challenge::Bearer {
                realm: "https://x/t".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm=https://x/token,service=reg"#).unwrap(),
            Challenge::Bearer {
                realm: "https://x/token".into(),
                service: Some("reg".into()),
                scope: None
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Basic"), Some(Challenge::Basic));
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None, "realm is required");
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn auth_file() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let json = format!(
            r#"{{"auths": {{
                "localhost:5000": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "http://other.io/v2/": {{"auth": "{}"}},
                "empty.io": {{}},
                "bad.io": {{"auth": "%%%"}}
              }},
              "credHelpers": {{"gcr.io": "gcloud"}},
              "credsStore": "desktop"}}"#,
            b64("alice:pa:ss"),
            b64("bob:hub"),
            b64("carol:o")
        );
        let cfg = AuthConfig::parse(json.as_bytes()).unwrap();
        let c = cfg.lookup("localhost:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "pa:ss"));
        assert_eq!(cfg.lookup("docker.io").unwrap().unwrap().username, "bob");
        assert_eq!(cfg.lookup("other.io").unwrap().unwrap().username, "carol");
        assert_eq!(cfg.lookup("nowhere.io").unwrap(), None);
        assert_eq!(cfg.lookup("empty.io").unwrap(), None);
        assert!(cfg.lookup("bad.io").unwrap_err().to_string().contains("base64"));
        assert_eq!(cfg.helper("gcr.io"), Some("gcloud"));
        assert_eq!(cfg.helper("quay.io"), Some("desktop"));
        assert_eq!(c.basic_header(), format!("Basic {}", b64("alice:pa:ss")));
        assert!(!format!("{c:?}").contains("pa:ss"), "Debug must not print the password");
    }

    #[test]
    fn find_credentials_reads_explicit_file_and_helper() {
        let dir = tempfile::tempdir().unwrap();
        // A fake credential helper on PATH is process-global; test the file path only.
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths":{"r.io":{"auth":"dTpw"}}}"#).unwrap();
        let c = find_credentials("r.io", Some(&f)).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert!(find_credentials("r.io", Some(&dir.path().join("missing.json"))).is_err());
        std::fs::write(&f, "not json").unwrap();
        assert!(find_credentials("r.io", Some(&f)).is_err());
    }
}
