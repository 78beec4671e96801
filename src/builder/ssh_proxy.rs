//! `RUN --mount=type=ssh`: a socket of the step's own (with the mount's `mode`, `uid` and `gid`,
//! as BuildKit's forwarded agent socket has) that relays every connection to the agent given
//! with `--ssh`. The agent's own socket is never put in the rootfs.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A relay socket, served by a thread until dropped (the step's end).
pub struct SshProxy {
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SshProxy {
    /// Listens at `socket` (a new path in a directory kiln owns) and relays to `agent`.
    pub fn start(socket: &Path, agent: &Path, mode: u32, uid: u32, gid: u32) -> Result<SshProxy> {
        // The agent must answer now: a missing agent is a clear error before the step runs.
        UnixStream::connect(agent).with_context(|| format!("connecting to the ssh agent at {}", agent.display()))?;
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("creating the ssh agent socket {}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode & 0o7777))
            .with_context(|| format!("chmod of {}", socket.display()))?;
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            socket,
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("chown of the ssh agent socket to {uid}:{gid}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, agent) = (stop.clone(), agent.to_path_buf());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let agent = agent.clone();
                std::thread::spawn(move || relay(client, &agent));
            }
        });
        Ok(SshProxy {
            socket: socket.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

/// Copies both ways between a step's connection and a new connection to the agent.
fn relay(client: UnixStream, agent: &Path) {
    let Ok(upstream) = UnixStream::connect(agent) else {
        return;
    };
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
    let (mut c, mut u) = (client, upstream);
    let _ = std::io::copy(&mut c, &mut u);
    let _ = u.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
