//! Registry credentials (Docker's config.json / `$REGISTRY_AUTH_FILE`, credential helpers,
//! GitLab CI variables) and `WWW-Authenticate` challenges.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::ffi::OsString;
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

/// Where credentials come from: an auth file in Docker's format and GitLab CI's job
/// credentials. The CLI fills it from `--authfile` and the environment
/// ([`default_auth_file`], [`CiCredentials::from_env`]); the library reads no variable.
#[derive(Clone, Debug, Default)]
pub struct AuthSources {
    /// The credentials file.
    pub file: Option<PathBuf>,
    /// The file was named explicitly (`--authfile`): a missing file is then an error.
    pub explicit: bool,
    /// GitLab CI's credentials for its own registry.
    pub ci: Option<CiCredentials>,
}

impl AuthSources {
    /// `explicit`, else the default location that `env` gives ([`default_auth_file`]).
    pub fn new(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<OsString>) -> AuthSources {
        AuthSources {
            file: explicit.map(Path::to_path_buf).or_else(|| default_auth_file(env)),
            explicit: explicit.is_some(),
            ci: CiCredentials::from_env(env),
        }
    }
}

/// The auth file kiln reads and `kiln login` writes when none is named:
/// `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
/// `env` looks a variable up (the CLI passes `std::env::var_os`); empty values count as unset.
pub fn default_auth_file(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = var("REGISTRY_AUTH_FILE") {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = var("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    Some(PathBuf::from(var("HOME")?).join(".docker/config.json"))
}

/// GitLab CI's job credentials: `CI_REGISTRY_USER`/`CI_REGISTRY_PASSWORD` (or `CI_JOB_TOKEN`
/// as `gitlab-ci-token`) for the registry `CI_REGISTRY` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CiCredentials {
    pub registry: String,
    pub credentials: Credentials,
}

impl CiCredentials {
    pub fn from_env(env: &dyn Fn(&str) -> Option<OsString>) -> Option<CiCredentials> {
        let var = |k: &str| env(k).and_then(|v| v.into_string().ok()).filter(|v| !v.is_empty());
        let registry = normalise_key(&var("CI_REGISTRY")?);
        let credentials = match (var("CI_REGISTRY_USER"), var("CI_REGISTRY_PASSWORD")) {
            (Some(username), Some(password)) => Credentials { username, password },
            _ => Credentials {
                username: "gitlab-ci-token".into(),
                password: var("CI_JOB_TOKEN")?,
            },
        };
        Some(CiCredentials { registry, credentials })
    }
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

/// `docker://host/x`, `https://host/v1/`, `host/repo` → `host`; Docker Hub's names → `docker.io`.
pub fn registry_host(arg: &str) -> Result<String> {
    let s = arg.trim();
    let s = ["docker://", "https://", "http://"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or("").to_string();
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('@') {
        bail!("{arg:?} is not a registry host name (expected e.g. registry.example.com or localhost:5000)");
    }
    Ok(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    })
}

/// The registry an `auths` key names (`https://index.docker.io/v1/` → `docker.io`,
/// `http://h:5000/x` → `h:5000`); a key that names none stays as it is.
fn normalise_key(key: &str) -> String {
    registry_host(key).unwrap_or_else(|_| key.to_string())
}

/// The `auths` key and credential-helper server URL Docker uses for a registry.
fn server_url(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
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

/// Runs `docker-credential-NAME ACTION` (`get`, `store`, `erase`) with `input` on stdin and
/// returns its standard output; a failure carries what the helper printed.
fn call_helper(name: &str, action: &str, input: &str) -> Result<Vec<u8>> {
    let prog = format!("docker-credential-{name}");
    let mut child = Command::new(&prog)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running credential helper {prog}"))?;
    child
        .stdin
        .take()
        .context("the credential helper's stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to credential helper {prog}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("running credential helper {prog}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        bail!("credential helper {prog} {action} failed: {}", msg.trim());
    }
    Ok(out.stdout)
}

/// Asks credential helper `name` for the credentials of `registry` (None: it has none).
pub fn helper_get(name: &str, registry: &str) -> Result<Option<Credentials>> {
    let stdout = match call_helper(name, "get", &server_url(registry)) {
        Ok(o) => o,
        Err(e) if format!("{e:#}").to_ascii_lowercase().contains("credentials not found") => return Ok(None),
        Err(e) => return Err(e.context(format!("getting the credentials for {registry}"))),
    };
    #[derive(serde::Deserialize)]
    struct HelperOut {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let h: HelperOut = serde_json::from_slice(&stdout).with_context(|| {
        format!("credential helper docker-credential-{name} printed something that is not its JSON answer")
    })?;
    Ok(Some(Credentials {
        username: h.username,
        password: h.secret,
    }))
}

/// Reads the auth file (None when it does not exist and `explicit` is false).
fn read_auth_config(path: &Path, explicit: bool) -> Result<Option<AuthConfig>> {
    match std::fs::read(path) {
        Ok(data) => Ok(Some(
            AuthConfig::parse(&data).with_context(|| format!("reading auth file {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading auth file {}", path.display())),
    }
}

/// Finds credentials for `registry`: the auth file (`auths`, then credential helpers), then
/// GitLab CI's job credentials when `CI_REGISTRY` names this registry.
pub fn find_credentials(registry: &str, sources: &AuthSources) -> Result<Option<Credentials>> {
    if let Some(path) = &sources.file
        && let Some(cfg) = read_auth_config(path, sources.explicit)?
    {
        if let Some(c) = cfg
            .lookup(registry)
            .with_context(|| format!("reading auth file {}", path.display()))?
        {
            return Ok(Some(c));
        }
        if let Some(h) = cfg.helper(registry)
            && let Some(c) = helper_get(h, registry)?
        {
            return Ok(Some(c));
        }
    }
    Ok(sources
        .ci
        .as_ref()
        .filter(|ci| ci.registry == registry)
        .map(|ci| ci.credentials.clone()))
}

/// The auth file as a JSON object, every key kept (an empty object when it does not exist).
fn read_json(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    match std::fs::read(path) {
        Ok(data) if data.iter().all(u8::is_ascii_whitespace) => Ok(Default::default()),
        Ok(data) => match serde_json::from_slice::<serde_json::Value>(&data) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) | Err(_) => bail!(
                "{} is not a JSON object as Docker's config.json is; fix or remove it",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the auth file atomically, mode 0600 (its directory made 0700 when missing).
fn write_json(path: &Path, map: serde_json::Map<String, serde_json::Value>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let path = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let dir = path.parent().context("the credentials file has no parent directory")?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut data = serde_json::to_vec_pretty(&serde_json::Value::Object(map))?;
    data.push(b'\n');
    // write_atomic's temporary file is created with mode 0600 and renamed over the old file.
    crate::fsutil::write_atomic(&path, &data).with_context(|| format!("writing credentials to {}", path.display()))
}

/// The credential helper the auth file at `path` configures for `registry`, if any.
fn helper_for(path: &Path, registry: &str) -> Result<Option<String>> {
    Ok(read_auth_config(path, false)?.and_then(|cfg| cfg.helper(registry).map(str::to_string)))
}

/// Stores `creds` for `registry` as `docker login` does: through the credential helper the
/// file configures for it, else base64 in the file's `auths` (other keys kept).
pub fn store_credentials(path: &Path, registry: &str, creds: &Credentials) -> Result<()> {
    if let Some(h) = helper_for(path, registry)? {
        let input = serde_json::json!({
            "ServerURL": server_url(registry),
            "Username": creds.username,
            "Secret": creds.password,
        });
        call_helper(&h, "store", &input.to_string())?;
        return Ok(());
    }
    let mut map = read_json(path)?;
    let auths = map
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(auths) = auths.as_object_mut() else {
        bail!("{}: \"auths\" is not a JSON object", path.display());
    };
    auths.retain(|k, _| normalise_key(k) != registry);
    let raw = format!("{}:{}", creds.username, creds.password);
    auths.insert(
        server_url(registry),
        serde_json::json!({ "auth": base64::engine::general_purpose::STANDARD.encode(raw) }),
    );
    write_json(path, map)
}

/// Forgets the credentials of `registry` (the file's `auths` entry and the helper's).
/// Returns false when there were none.
pub fn erase_credentials(path: &Path, registry: &str) -> Result<bool> {
    let mut map = read_json(path)?;
    let mut removed = false;
    if let Some(auths) = map.get_mut("auths").and_then(|v| v.as_object_mut()) {
        let before = auths.len();
        auths.retain(|k, _| normalise_key(k) != registry);
        removed = auths.len() != before;
    }
    if removed {
        write_json(path, map)?;
    }
    if let Some(h) = helper_for(path, registry)? {
        match call_helper(&h, "erase", &server_url(registry)) {
            Ok(_) => removed = true,
            Err(e) if !removed => return Err(e),
            Err(_) => {}
        }
    }
    Ok(removed)
}

/// Forgets every registry's credentials in the file's `auths`.
pub fn erase_all_credentials(path: &Path) -> Result<()> {
    let mut map = read_json(path)?;
    let n = map
        .get_mut("auths")
        .and_then(|v| v.as_object_mut())
        .map(|m| std::mem::take(m).len())
        .unwrap_or(0);
    if n > 0 {
        write_json(path, map)?;
    }
    Ok(())
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
        let no_env = |_: &str| None;
        let named = |p: &Path| AuthSources::new(Some(p), &no_env);
        let c = find_credentials("r.io", &named(&f)).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert!(find_credentials("r.io", &named(&dir.path().join("missing.json"))).is_err());
        let default_missing = AuthSources {
            file: Some(dir.path().join("missing.json")),
            ..Default::default()
        };
        assert_eq!(find_credentials("r.io", &default_missing).unwrap(), None);
        std::fs::write(&f, "not json").unwrap();
        assert!(find_credentials("r.io", &named(&f)).is_err());
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn default_auth_file_order() {
        let f = |pairs| default_auth_file(&env_of(pairs));
        assert_eq!(f(&[("HOME", "/h")]), Some(PathBuf::from("/h/.docker/config.json")));
        assert_eq!(
            f(&[("HOME", "/h"), ("DOCKER_CONFIG", "/d")]),
            Some(PathBuf::from("/d/config.json"))
        );
        assert_eq!(
            f(&[("DOCKER_CONFIG", "/d"), ("REGISTRY_AUTH_FILE", "/a.json")]),
            Some(PathBuf::from("/a.json"))
        );
        assert_eq!(f(&[("HOME", ""), ("DOCKER_CONFIG", "")]), None);
    }

    #[test]
    fn gitlab_ci_credentials() {
        let ci = CiCredentials::from_env(&env_of(&[
            ("CI_REGISTRY", "registry.gitlab.com"),
            ("CI_JOB_TOKEN", "tok"),
        ]))
        .unwrap();
        assert_eq!(ci.credentials.username, "gitlab-ci-token");
        let ci = CiCredentials::from_env(&env_of(&[
            ("CI_REGISTRY", "https://r.io"),
            ("CI_REGISTRY_USER", "u"),
            ("CI_REGISTRY_PASSWORD", "p"),
            ("CI_JOB_TOKEN", "tok"),
        ]))
        .unwrap();
        assert_eq!((ci.registry.as_str(), ci.credentials.username.as_str()), ("r.io", "u"));
        assert_eq!(CiCredentials::from_env(&env_of(&[("CI_JOB_TOKEN", "tok")])), None);
        let sources = AuthSources {
            ci: Some(ci),
            ..Default::default()
        };
        assert_eq!(find_credentials("r.io", &sources).unwrap().unwrap().password, "p");
        assert_eq!(find_credentials("other.io", &sources).unwrap(), None);
    }

    #[test]
    fn store_and_erase_keep_other_keys_and_write_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/config.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            r#"{"credHelpers":{"x.io":"pass"},"auths":{"http://h:1/":{"auth":"b2xk"}},"psFormat":"x"}"#,
        )
        .unwrap();
        let creds = Credentials {
            username: "n".into(),
            password: "ew".into(),
        };
        store_credentials(&p, "h:1", &creds).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "x");
        assert_eq!(v["credHelpers"]["x.io"], "pass");
        assert_eq!(v["auths"].as_object().unwrap().len(), 1);
        assert_eq!(v["auths"]["h:1"]["auth"], "bjpldw==");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(erase_credentials(&p, "h:1").unwrap());
        assert!(!erase_credentials(&p, "h:1").unwrap());
        std::fs::write(&p, "[1]").unwrap();
        assert!(read_json(&p).unwrap_err().to_string().contains("not a JSON object"));
    }

    #[test]
    fn registry_names() {
        assert_eq!(registry_host("localhost:5000").unwrap(), "localhost:5000");
        assert_eq!(registry_host("docker://q.io/team/app").unwrap(), "q.io");
        assert_eq!(registry_host("https://index.docker.io/v1/").unwrap(), "docker.io");
        assert_eq!(registry_host("http://127.0.0.1:5000/").unwrap(), "127.0.0.1:5000");
        assert!(registry_host("").is_err());
        assert_eq!(normalise_key("http://h:1/"), "h:1");
        assert_eq!(server_url("docker.io"), "https://index.docker.io/v1/");
    }
}
