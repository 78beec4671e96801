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
use crate::registry::auth::{
    Credentials, default_auth_file, erase_all_credentials, erase_credentials, registry_host, store_credentials,
};
use crate::registry::client::{Body, Client, status_error};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

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

fn where_to_store(explicit: Option<&Path>) -> Result<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| default_auth_file(&|k| std::env::var_os(k)))
        .ok_or_else(|| {
            anyhow!(
                "cannot tell where to store credentials: set HOME, DOCKER_CONFIG or REGISTRY_AUTH_FILE, or give --authfile"
            )
        })
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

pub fn login(g: &GlobalOpts, a: LoginArgs) -> Result<i32> {
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
    let opts = g.registry_options(a.tls_verify, None);
    verify(&registry, &creds, &opts)?;
    let path = where_to_store(a.authfile.as_deref())?;
    store_credentials(&path, &registry, &creds)?;
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(_g: &GlobalOpts, a: LogoutArgs) -> Result<i32> {
    let path = where_to_store(a.authfile.as_deref())?;
    if a.all {
        erase_all_credentials(&path)?;
        println!("Removed login credentials for all registries");
        return Ok(0);
    }
    let registry = registry_host(a.registry.as_deref().unwrap_or_default())?;
    if !erase_credentials(&path, &registry)? {
        bail!(
            "not logged in to {registry} (no credentials for it in {})",
            path.display()
        );
    }
    println!("Removed login credentials for {registry}");
    Ok(0)
}
