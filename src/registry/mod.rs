//! Docker Registry HTTP API v2 / OCI distribution: pull and push.
//!
//! Blocking `ureq` client; auth per `WWW-Authenticate` (anonymous, basic, bearer tokens cached
//! per scope) with credentials from `$REGISTRY_AUTH_FILE` / Docker's config.json / credential
//! helpers; plain HTTP for loopback registries and `--tls-verify=false`; bounded retries with
//! backoff; blobs streamed straight into the store (pull) or from it (push), every digest
//! verified.

pub mod auth;
pub mod client;
pub mod platform;
mod pull;
mod push;
pub mod referrers;

pub(crate) use pull::fetch_blob;
pub use pull::pull;
pub(crate) use push::push_blob;
pub use push::{convert_manifest, push};

use anyhow::Result;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How kiln talks to a registry. The CLI fills it from flags and the environment
/// (`cli::registry_options`); the library reads no environment variable.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Verify TLS certificates; when false, https is tried without checks, then plain http.
    pub tls_verify: bool,
    /// `os/arch[/variant]` to pick from an index; default `linux/<host arch>`.
    pub platform: Option<String>,
    /// Where credentials come from.
    pub auth: auth::AuthSources,
    /// Timeouts and retry pacing.
    pub timing: Timing,
    /// Debug lines about requests, retries and resumed uploads go here.
    pub reporter: crate::events::Reporter,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: true,
            platform: None,
            auth: auth::AuthSources::default(),
            timing: Timing::default(),
            reporter: crate::events::Reporter::silent(),
        }
    }
}

/// How long kiln waits for a registry and how it paces retries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// A registry that sends no byte for this long (while kiln waits for the response headers
    /// or reads a body) is given up on and the request retried. It restarts with each byte
    /// that arrives, so a slow but moving download is never cut; a stalled one fails after
    /// about `idle × TRIES` with "registry … sent no data for … (gave up after 3 tries)".
    pub idle: Duration,
    /// The first retry waits this long; each further one twice as long (capped at 8 s).
    pub retry_base: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            idle: client::DEFAULT_IDLE_TIMEOUT,
            retry_base: Duration::from_millis(500),
        }
    }
}

impl Timing {
    /// The wait before retry number `attempt` (1-based): base, 2×base, 4×base … ≤ 8 s.
    pub fn backoff(&self, attempt: u32) -> Duration {
        (self.retry_base * (1u32 << attempt.saturating_sub(1).min(4))).min(Duration::from_secs(8))
    }
}

/// Runs `f` over `items` on up to `workers` threads; stops handing out work after the first
/// error and returns it. Progress lines that `f` reports are passed to `progress` on the
/// calling thread (so `progress` need not be `Sync`).
pub(crate) fn parallel<T: Sync>(
    items: &[T],
    workers: usize,
    progress: &dyn Fn(&str),
    f: impl Fn(&T, &dyn Fn(&str)) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err = Mutex::new(None);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()).max(1) {
            let tx = tx.clone();
            let (next, failed, first_err, f) = (&next, &failed, &first_err, &f);
            s.spawn(move || {
                let report = |line: &str| {
                    let _ = tx.send(line.to_string());
                };
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(item, &report) {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e);
                    }
                }
            });
        }
        drop(tx);
        for line in rx {
            progress(&line);
        }
    });
    match first_err.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_all_and_reports_errors() {
        let seen = Mutex::new(Vec::new());
        let lines = std::cell::RefCell::new(Vec::new());
        parallel(
            &[1, 2, 3, 4, 5],
            3,
            &|l| lines.borrow_mut().push(l.to_string()),
            |i, report| {
                seen.lock().unwrap().push(*i);
                report(&format!("item {i}"));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(lines.borrow().len(), 5);
        let mut v = seen.into_inner().unwrap();
        v.sort();
        assert_eq!(v, [1, 2, 3, 4, 5]);
        let err = parallel(&[1, 2, 3], 2, &|_| {}, |i, _| {
            if *i == 2 { anyhow::bail!("two failed") } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "two failed");
        parallel::<u8>(&[], 4, &|_| {}, |_, _| unreachable!()).unwrap();
    }
}
