//! A small blocking client for the registry HTTP API v2: scheme choice (https, or plain http
//! for loopback and insecure registries), auth challenges (basic, bearer tokens cached per
//! scope), bounded retries with backoff, and registry error messages.

use super::RegistryOptions;
use super::Timing;
use super::auth::{Challenge, Credentials, find_credentials, parse_challenge};
use crate::events::Reporter;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use ureq::http;

/// How many times a request is tried on connection errors, 5xx and 429.
pub const TRIES: u32 = 3;

/// The default idle timeout: a registry that sends no byte for this long (while kiln waits for
/// the response headers or reads a body) is given up on, and the request retried.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Uploads may wait longer for their answer (a registry finishing a big blob), but not forever.
const UPLOAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// "2 s", "1.5 s".
pub fn seconds(d: Duration) -> String {
    format!("{} s", (d.as_secs_f64() * 100.0).round() / 100.0)
}

/// Is this a timeout (the registry sent nothing for the idle timeout, or a phase timed out)?
pub fn is_timeout(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => is_timeout_io(io),
        _ => false,
    }
}

/// [`is_timeout`] for an I/O error from a body reader (ureq wraps its errors in io::Error).
pub fn is_timeout_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), TimedOut | WouldBlock)
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<ureq::Error>())
            .is_some_and(is_timeout)
}

pub type Response = http::Response<ureq::Body>;

/// A request body that can be sent again on a retry.
#[derive(Clone, Debug)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of a file from `offset`.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

pub struct Client {
    agent: ureq::Agent,
    /// The registry as named in references (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// `https://registry-1.docker.io`, `http://localhost:5000`.
    base: String,
    creds: Option<Credentials>,
    timing: Timing,
    reporter: Reporter,
    basic: Mutex<bool>,
    tokens: Mutex<HashMap<String, String>>,
}

/// Percent-encodes a query parameter value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One short phrase for a transport error ("connection refused").
pub fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => describe_io(io),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        other => other.to_string(),
    }
}

pub fn describe_io(io: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused => "connection refused".to_string(),
        ConnectionReset => "connection reset by peer".to_string(),
        ConnectionAborted | BrokenPipe => "connection closed by the registry".to_string(),
        UnexpectedEof => "connection closed before the whole response arrived".to_string(),
        TimedOut | WouldBlock => "timed out".to_string(),
        _ if io.to_string().contains("lookup address") => {
            format!("cannot resolve the registry's host name ({io}); is there a network and DNS?")
        }
        _ => {
            // ureq wraps its own errors in io::Error; unwrap them for a clean message.
            if let Some(inner) = io.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>()) {
                return describe(inner);
            }
            io.to_string()
        }
    }
}

fn transient(e: &ureq::Error) -> bool {
    !matches!(
        e,
        ureq::Error::HostNotFound | ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::Tls(_)
    ) && !matches!(e, ureq::Error::Rustls(_))
}

fn retriable_status(s: u16) -> bool {
    s == 429 || s == 408 || (500..600).contains(&s) && s != 501 && s != 505
}

/// The `message` of a registry error body (`{"errors":[{"code":…,"message":…}]}`), else the
/// start of the body.
pub fn error_body_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    struct Es {
        errors: Vec<E>,
    }
    if let Ok(es) = serde_json::from_slice::<Es>(body)
        && !es.errors.is_empty()
    {
        let parts: Vec<String> = es
            .errors
            .iter()
            .map(|e| {
                let mut s = if e.message.is_empty() {
                    e.code.to_lowercase().replace('_', " ")
                } else {
                    e.message.clone()
                };
                if let Some(d) = &e.detail {
                    let d = match d {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    if !d.is_empty() && d != "{}" && d.len() < 300 {
                        s.push_str(&format!(" ({d})"));
                    }
                }
                s
            })
            .collect();
        return Some(parts.join("; "));
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    (!text.is_empty()).then(|| text.chars().take(200).collect())
}

/// kiln's HTTP agent (TLS, user agent, timeouts, no transparent decompression; error statuses
/// come back as responses): the registry client's, and ADD's URL downloads'.
pub fn http_agent(tls_verify: bool, idle: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(!tls_verify)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .accept_encoding(ureq::config::AutoHeaderValue::None)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        // The idle timeout: no byte for this long on any read fails the read.
        .timeout_per_read(Some(idle))
        .max_idle_connections_per_host(8)
        .build()
        .into()
}

impl Client {
    /// A client for `registry`. Loopback registries use plain HTTP; with `tls_verify == false`
    /// https is tried first (without certificate checks), then http, as Docker does for
    /// insecure registries.
    pub fn new(registry: &str, opts: &RegistryOptions) -> Result<Client> {
        let creds = find_credentials(registry, &opts.auth)?;
        Client::with_credentials(registry, opts, creds)
    }

    /// A client that uses `creds` (not the stored ones): `kiln login` checks them with it.
    pub fn with_credentials(registry: &str, opts: &RegistryOptions, creds: Option<Credentials>) -> Result<Client> {
        let agent = http_agent(opts.tls_verify, opts.timing.idle);
        let api_host = if registry == crate::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let loopback = crate::reference::host_is_loopback(registry);
        let mut client = Client {
            agent,
            registry: registry.to_string(),
            base: format!("{}://{api_host}", if loopback { "http" } else { "https" }),
            creds,
            timing: opts.timing,
            reporter: opts.reporter.clone(),
            basic: Mutex::new(false),
            tokens: Mutex::new(HashMap::new()),
        };
        if !loopback && !opts.tls_verify {
            // Ping over https; fall back to http when TLS does not answer.
            let url = format!("{}/v2/", client.base);
            if let Err(e) = client.agent.get(&url).call() {
                let http_url = format!("http://{api_host}/v2/");
                if client.agent.get(&http_url).call().is_ok() {
                    client.base = format!("http://{api_host}");
                } else {
                    client.debug(&format!("ping {url}: {}", describe(&e)));
                }
            }
        }
        if loopback {
            // Plain HTTP by default; a loopback registry that speaks TLS (Go answers plain
            // HTTP with "400 … HTTP request to an HTTPS server") is reached over https.
            let url = format!("{}/v2/", client.base);
            if let Ok(mut resp) = client.agent.get(&url).call()
                && resp.status() == 400
            {
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(4096)
                    .read_to_string()
                    .unwrap_or_default();
                if body.contains("HTTPS") {
                    client.base = format!("https://{api_host}");
                }
            }
        }
        Ok(client)
    }

    /// The sentence for a registry that stalled: "registry HOST sent no data for 2 s while
    /// downloading blob sha256:… (gave up after 3 tries)".
    pub fn stall_error(&self, doing: &str, tries: u32) -> anyhow::Error {
        anyhow!(
            "registry {} sent no data for {} while {doing} (gave up after {tries} {})",
            self.registry,
            seconds(self.timing.idle),
            if tries == 1 { "try" } else { "tries" }
        )
    }

    /// The wait before retry number `attempt`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.timing.backoff(attempt)
    }

    /// A debug line about this registry's requests (shown with `--debug`).
    pub fn debug(&self, msg: &str) {
        self.reporter.debug("registry", || msg.to_string());
    }

    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// `https://host/v2/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.base)
    }

    /// Resolves a `Location` header against the registry base.
    pub fn resolve_location(&self, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            format!("{}/{loc}", self.base)
        }
    }

    fn auth_header(&self, scopes: &[String]) -> Option<String> {
        if let Some(t) = self.tokens.lock().unwrap().get(&scopes.join(" ")) {
            return Some(format!("Bearer {t}"));
        }
        if *self.basic.lock().unwrap() {
            return self.creds.as_ref().map(|c| c.basic_header());
        }
        None
    }

    /// Sends a request with auth (answering 401 challenges once) and, if `retry`, bounded
    /// retries with backoff on connection errors, 5xx and 429. Error statuses are returned
    /// as responses; only transport failures are errors.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body,
        scopes: &[String],
        retry: bool,
    ) -> Result<Response> {
        // A challenge is answered at most twice per request: a token can expire (or be
        // used up by parallel requests) between fetching it and using it.
        let mut answered = 0;
        loop {
            let auth = self.auth_header(scopes);
            let resp = self.send_retrying(method, url, headers, body, auth.as_deref(), retry)?;
            if resp.status() != 401 || answered >= 2 {
                return Ok(resp);
            }
            answered += 1;
            let challenge = resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(parse_challenge)
                .next();
            match challenge {
                Some(Challenge::Bearer { realm, service, scope }) => {
                    let mut want: Vec<String> = scopes.to_vec();
                    if let Some(s) = scope
                        && !want.contains(&s)
                    {
                        want.push(s);
                    }
                    let token = self.fetch_token(&realm, service.as_deref(), &want)?;
                    self.tokens.lock().unwrap().insert(scopes.join(" "), token);
                }
                Some(Challenge::Basic) => {
                    // Retry with basic credentials unless this request already carried them.
                    let sent_basic = auth.as_deref().is_some_and(|a| a.starts_with("Basic "));
                    if self.creds.is_none() || sent_basic {
                        return Ok(resp);
                    }
                    *self.basic.lock().unwrap() = true;
                }
                None => return Ok(resp),
            }
        }
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<String> {
        let mut url = realm.to_string();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(s) = service {
            url.push_str(&format!("{sep}service={}", query_escape(s)));
            sep = '&';
        }
        for s in scopes {
            url.push_str(&format!("{sep}scope={}", query_escape(s)));
            sep = '&';
        }
        let auth = self.creds.as_ref().map(|c| c.basic_header());
        let mut resp = self
            .send_retrying("GET", &url, &[], &Body::Empty, auth.as_deref(), true)
            .with_context(|| format!("getting a token from {realm}"))?;
        let status = resp.status().as_u16();
        let body = error_body(&mut resp);
        if status == 401 || status == 403 {
            let msg = error_body_message(&body).map(|m| format!(": {m}")).unwrap_or_default();
            if self.creds.is_some() {
                bail!(
                    "{} refused the credentials (wrong username or password?){msg}",
                    self.registry
                );
            }
            bail!(
                "{} requires authentication{msg} (try `kiln login {}`)",
                self.registry,
                self.registry
            );
        }
        if !(200..300).contains(&status) {
            let msg = error_body_message(&body).map(|m| format!(": {m}")).unwrap_or_default();
            bail!("getting a token from {realm}: HTTP {status}{msg}");
        }
        #[derive(serde::Deserialize)]
        struct Tok {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Tok =
            serde_json::from_slice(&body).with_context(|| format!("the token answer of {realm} is not JSON"))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("{realm} answered without a token"))
    }

    fn send_retrying(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body,
        auth: Option<&str>,
        retry: bool,
    ) -> Result<Response> {
        let tries = if retry { TRIES } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_once(method, url, headers, body, auth) {
                Ok(resp) if retry && attempt < tries && retriable_status(resp.status().as_u16()) => {}
                Ok(resp) => return Ok(resp),
                Err(SendErr::Other(e)) => return Err(e),
                Err(SendErr::Http(e)) if !retry || attempt >= tries || !transient(&e) => {
                    if is_timeout(&e) {
                        return Err(self.stall_error(&format!("kiln waited for its answer to {method} {url}"), attempt));
                    }
                    let msg = describe(&e);
                    if msg.contains("certificate") || matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_)) {
                        return Err(anyhow!(
                            "{msg} (for a registry with a self-signed certificate use --tls-verify=false)"
                        ));
                    }
                    return Err(anyhow!(msg));
                }
                Err(SendErr::Http(_)) => {}
            }
            std::thread::sleep(self.backoff(attempt));
        }
    }

    fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body,
        auth: Option<&str>,
    ) -> std::result::Result<Response, SendErr> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let res = match body {
            Body::Empty => {
                let req = b.body(()).map_err(|e| SendErr::Other(e.into()))?;
                self.agent.run(req)
            }
            Body::Bytes(v) => {
                let req = b.body(v.as_slice()).map_err(|e| SendErr::Other(e.into()))?;
                let req = self.upload_config(req);
                self.agent.run(req)
            }
            Body::File { path, offset, len } => {
                let mut f = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))
                    .map_err(SendErr::Other)?;
                f.seek(SeekFrom::Start(*offset)).map_err(|e| SendErr::Other(e.into()))?;
                let req = b
                    .header("content-length", len.to_string())
                    .body(ureq::SendBody::from_owned_reader(f.take(*len)))
                    .map_err(|e| SendErr::Other(e.into()))?;
                let req = self.upload_config(req);
                self.agent.run(req)
            }
        };
        res.map_err(SendErr::Http)
    }
}

impl Client {
    /// An upload waits up to [`UPLOAD_ANSWER_TIMEOUT`] (or the idle timeout, if longer) for
    /// the registry's answer: finishing a big blob can take a while.
    fn upload_config<S: ureq::AsSendBody>(&self, req: http::Request<S>) -> http::Request<S> {
        self.agent
            .configure_request(req)
            .timeout_per_read(Some(self.timing.idle.max(UPLOAD_ANSWER_TIMEOUT)))
            .build()
    }
}

enum SendErr {
    Http(ureq::Error),
    Other(anyhow::Error),
}

/// The body of an error answer, read up to 1 MiB (a registry's error JSON is small; what
/// does not arrive is left out of the message).
fn error_body(resp: &mut Response) -> Vec<u8> {
    resp.body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .unwrap_or_default()
}

/// Turns an error status into one sentence, with the registry's own message and a login
/// hint for 401/403 without credentials.
pub fn status_error(client: &Client, resp: &mut Response) -> anyhow::Error {
    let status = resp.status().as_u16();
    let body = error_body(resp);
    let msg = error_body_message(&body);
    match status {
        401 | 403 => {
            let what = if status == 401 {
                "authentication required"
            } else {
                "access denied"
            };
            let msg = msg.map(|m| format!(": {m}")).unwrap_or_default();
            if client.has_credentials() {
                anyhow!(
                    "{what}{msg} (the credentials for {} were not accepted)",
                    client.registry
                )
            } else {
                anyhow!("{what}{msg} (try `kiln login {}`)", client.registry)
            }
        }
        _ => {
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let mut s = match msg {
                Some(m) => format!("HTTP {status}: {m}"),
                None => format!("HTTP {status} {reason}"),
            };
            if status == 405 {
                s.push_str(" (the registry refuses writes here: is it or the repository read-only?)");
            }
            anyhow!(s.trim().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_queries() {
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(query_escape("registry.docker.io"), "registry.docker.io");
    }

    #[test]
    fn error_bodies() {
        let b = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(error_body_message(b).unwrap(), r#"manifest unknown ({"Tag":"x"})"#);
        let b = br#"{"errors":[{"code":"DENIED","message":"","detail":null}]}"#;
        assert_eq!(error_body_message(b).unwrap(), "denied");
        assert_eq!(error_body_message(b"oops\n").unwrap(), "oops");
        assert_eq!(error_body_message(b""), None);
    }

    #[test]
    fn idle_timeout_and_stall_errors() {
        assert_eq!(Timing::default().idle, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        let wrapped = std::io::Error::other(ureq::Error::Timeout(ureq::Timeout::PerRead));
        assert!(is_timeout_io(&wrapped));
        assert!(is_timeout(&ureq::Error::Io(wrapped)));
        assert!(!is_timeout_io(&std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )));
        assert!(!is_timeout(&ureq::Error::HostNotFound));
    }

    #[test]
    fn stalled_answer_fails_with_one_sentence() {
        // A server that accepts the connection and never answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let hold = std::thread::spawn(move || {
            let mut held = Vec::new();
            l.set_nonblocking(true).unwrap();
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < until && held.len() < 8 {
                if let Ok((c, _)) = l.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_per_read(Some(Duration::from_millis(300)))
            .build()
            .into();
        let client = Client {
            agent,
            registry: addr.clone(),
            base: format!("http://{addr}"),
            creds: None,
            timing: Timing {
                idle: Duration::from_millis(300),
                retry_base: Duration::from_millis(10),
            },
            reporter: Reporter::silent(),
            basic: Mutex::new(false),
            tokens: Mutex::new(HashMap::new()),
        };
        let t0 = std::time::Instant::now();
        let err = client
            .send("GET", &client.url("x/manifests/y"), &[], &Body::Empty, &[], false)
            .unwrap_err()
            .to_string();
        assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
        assert!(
            err.starts_with(&format!("registry {addr} sent no data for ")) && err.ends_with("(gave up after 1 try)"),
            "{err}"
        );
        drop(hold);
    }

    #[test]
    fn retry_policy() {
        assert!(retriable_status(500) && retriable_status(503) && retriable_status(429));
        assert!(!retriable_status(404) && !retriable_status(401) && !retriable_status(501));
        let t = Timing::default();
        assert_eq!(t.backoff(1), Duration::from_millis(500));
        assert_eq!(t.backoff(2), Duration::from_secs(1));
        assert_eq!(t.backoff(9), Duration::from_secs(8));
    }
}
