//! `kiln login [-u USER] [-p PASSWORD | --password-stdin] [--authfile F] REGISTRY` and
//! `kiln logout [--all] [--authfile F] [REGISTRY]`.
//!
//! Credentials are checked against the registry first (`GET /v2/` with its challenge: basic,
//! or a bearer token fetched with them), then written in Docker's format to `--authfile`,
//! `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` — the file
//! every registry command of kiln reads. Other keys of the file are kept, it is replaced
//! atomically and has mode 0600. A credential helper configured for the registry
//! (`credHelpers`, `credsStore`) stores them instead.

use super::GlobalOpts;
use crate::registry::RegistryOptions;
use crate::registry::auth::{AuthConfig, Credentials, auth_file_path};
use crate::registry::client::{Body, Client, status_error};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// Registry host (`registry.example.com`, `localhost:5000`, `docker.io`).
    pub registry: String,
    /// User name.
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password or token (visible to other users in `ps`: prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password or token from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Credentials file (default: $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Verify TLS certificates (false: also allow plain HTTP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// Registry host to forget.
    #[arg(required_unless_present = "all")]
    pub registry: Option<String>,
    /// Forget the credentials of every registry.
    #[arg(short, long)]
    pub all: bool,
    /// Credentials file (default: $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
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

/// The `auths` key Docker writes for a registry.
fn auths_key(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// True when an `auths` key names `registry` (`http://h:5000/`, `h:5000`, `https://index.docker.io/v1/`).
fn key_names(key: &str, registry: &str) -> bool {
    registry_host(key).is_ok_and(|k| k == registry)
}

fn where_to_store(explicit: Option<&Path>) -> Result<PathBuf> {
    auth_file_path(explicit).ok_or_else(|| {
        anyhow!(
            "cannot tell where to store credentials: set HOME, DOCKER_CONFIG or REGISTRY_AUTH_FILE, or give --authfile"
        )
    })
}

/// The auth file as JSON (an empty object when it does not exist yet).
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

fn write_json(path: &Path, map: serde_json::Map<String, serde_json::Value>) -> Result<()> {
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

/// The credential helper configured for `registry` in the auth file, if any.
fn helper_for(path: &Path, registry: &str) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(data) => {
            let cfg = AuthConfig::parse(&data).with_context(|| format!("reading {}", path.display()))?;
            Ok(cfg.helper(registry).map(str::to_string))
        }
        Err(_) => Ok(None),
    }
}

/// Runs `docker-credential-NAME store|erase`.
fn run_helper(name: &str, action: &str, input: &str) -> Result<()> {
    let prog = format!("docker-credential-{name}");
    let mut child = Command::new(&prog)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running credential helper {prog}"))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("running credential helper {prog}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        bail!("credential helper {prog} {action} failed: {}", msg.trim());
    }
    Ok(())
}

fn helper_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// Reads a line from the terminal, without echo when `secret`.
fn prompt(label: &str, secret: bool) -> Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    eprint!("{label}");
    std::io::stderr().flush().ok();
    let saved = if secret { tcgetattr(&stdin).ok() } else { None };
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let res = stdin.read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
        eprintln!();
    }
    res.context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Checks `creds` against `registry`: GET /v2/, answering its challenge with them.
pub fn verify(registry: &str, creds: &Credentials, opts: &RegistryOptions) -> Result<()> {
    let client = Client::with_credentials(registry, opts, Some(creds.clone()))?;
    let url = client.url("");
    let mut resp = client.send("GET", &url, &[], &Body::Empty, &[], true).map_err(|e| {
        let s = format!("{e:#}");
        if s.contains("refused the credentials") {
            anyhow!(
                "{registry} refused the credentials of {}: wrong username or password",
                creds.username
            )
        } else {
            e.context(format!("contacting {registry}"))
        }
    })?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        401 => bail!(
            "{registry} refused the credentials of {}: wrong username or password",
            creds.username
        ),
        _ => Err(status_error(&client, &mut resp).context(format!("checking the credentials with {registry}"))),
    }
}

pub fn login(_g: &GlobalOpts, a: LoginArgs) -> Result<i32> {
    let registry = registry_host(&a.registry)?;
    let tty = std::io::stdin().is_terminal();
    if a.password_stdin && a.password.is_some() {
        bail!("--password and --password-stdin are mutually exclusive");
    }
    if a.password_stdin && a.username.is_none() {
        bail!("--password-stdin needs --username (-u)");
    }
    let username = match &a.username {
        Some(u) => u.clone(),
        None if tty => prompt("Username: ", false)?,
        None => bail!("no user name: give --username (-u)"),
    };
    if username.is_empty() {
        bail!("the user name is empty");
    }
    let password = if a.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from standard input")?;
        s.trim_end_matches(['\r', '\n']).to_string()
    } else if let Some(p) = &a.password {
        eprintln!("kiln: warning: --password is visible to other users of this machine; use --password-stdin");
        p.clone()
    } else if tty {
        prompt("Password: ", true)?
    } else {
        bail!("no password: give --password-stdin (or -p)");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let creds = Credentials { username, password };
    let opts = RegistryOptions {
        tls_verify: a.tls_verify,
        platform: None,
        auth_file: None,
    };
    verify(&registry, &creds, &opts)?;
    let path = where_to_store(a.authfile.as_deref())?;
    if let Some(h) = helper_for(&path, &registry)? {
        let input = serde_json::json!({
            "ServerURL": helper_server(&registry),
            "Username": creds.username,
            "Secret": creds.password,
        });
        run_helper(&h, "store", &input.to_string())?;
    } else {
        let mut map = read_json(&path)?;
        let auths = map
            .entry("auths")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        let Some(auths) = auths.as_object_mut() else {
            bail!("{}: \"auths\" is not a JSON object", path.display());
        };
        auths.retain(|k, _| !key_names(k, &registry));
        let raw = format!("{}:{}", creds.username, creds.password);
        auths.insert(
            auths_key(&registry),
            serde_json::json!({ "auth": base64::engine::general_purpose::STANDARD.encode(raw) }),
        );
        write_json(&path, map)?;
    }
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(_g: &GlobalOpts, a: LogoutArgs) -> Result<i32> {
    let path = where_to_store(a.authfile.as_deref())?;
    let mut map = read_json(&path)?;
    if a.all {
        let n = map
            .get_mut("auths")
            .and_then(|v| v.as_object_mut())
            .map(|m| std::mem::take(m).len())
            .unwrap_or(0);
        if n > 0 {
            write_json(&path, map)?;
        }
        println!("Removed login credentials for all registries");
        return Ok(0);
    }
    let registry = registry_host(a.registry.as_deref().unwrap_or_default())?;
    let mut removed = false;
    if let Some(auths) = map.get_mut("auths").and_then(|v| v.as_object_mut()) {
        let before = auths.len();
        auths.retain(|k, _| !key_names(k, &registry));
        removed = auths.len() != before;
    }
    if removed {
        write_json(&path, map)?;
    }
    if let Some(h) = helper_for(&path, &registry)? {
        match run_helper(&h, "erase", &helper_server(&registry)) {
            Ok(()) => removed = true,
            Err(e) if !removed => return Err(e),
            Err(_) => {}
        }
    }
    if !removed {
        bail!(
            "not logged in to {registry} (no credentials for it in {})",
            path.display()
        );
    }
    println!("Removed login credentials for {registry}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names() {
        assert_eq!(registry_host("localhost:5000").unwrap(), "localhost:5000");
        assert_eq!(registry_host("docker://q.io/team/app").unwrap(), "q.io");
        assert_eq!(registry_host("https://index.docker.io/v1/").unwrap(), "docker.io");
        assert_eq!(registry_host("http://127.0.0.1:5000/").unwrap(), "127.0.0.1:5000");
        assert!(registry_host("").is_err());
        assert!(key_names("http://h:1/", "h:1") && !key_names("h:2", "h:1"));
        assert_eq!(auths_key("docker.io"), "https://index.docker.io/v1/");
    }

    #[test]
    fn keeps_other_keys_and_writes_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/config.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            r#"{"credHelpers":{"x.io":"pass"},"auths":{"http://h:1/":{"auth":"b2xk"}},"psFormat":"x"}"#,
        )
        .unwrap();
        let mut map = read_json(&p).unwrap();
        let auths = map.get_mut("auths").unwrap().as_object_mut().unwrap();
        auths.retain(|k, _| !key_names(k, "h:1"));
        auths.insert("h:1".into(), serde_json::json!({"auth": "bmV3"}));
        write_json(&p, map).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "x");
        assert_eq!(v["credHelpers"]["x.io"], "pass");
        assert_eq!(v["auths"].as_object().unwrap().len(), 1);
        assert_eq!(v["auths"]["h:1"]["auth"], "bmV3");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&p, "[1]").unwrap();
        assert!(read_json(&p).unwrap_err().to_string().contains("not a JSON object"));
    }
}
