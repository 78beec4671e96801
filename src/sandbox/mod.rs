//! The sandbox a RUN step (or `kiln run`) executes in.
//!
//! [`run`] is called by the build executor with a mounted rootfs. It creates the mount-point
//! placeholders the step needs, then spawns a fresh kiln process (`kiln __sandbox SPECFILE`,
//! single-threaded) which unshares PID, IPC, UTS (and, with `--network none` or a private
//! network, network) namespaces and forks the step's PID 1; a private network is connected to
//! the outside by pasta or slirp4netns before the step starts (see [`net`]). That process takes its own mount namespace, mounts
//! /proc, /dev, /sys and the /etc files, pivots into the rootfs, switches to the USER, cuts
//! capabilities to Docker's default set, installs the seccomp filter and execs the command.
//! Output is streamed line by line with the step's prefix. Everything the step mounted lives in
//! its mount namespace and vanishes with its last process.

pub mod caps;
pub mod chroot;
mod error;
mod helper;
pub mod idemu;
pub mod idmap;
pub mod mounts;
pub mod net;
pub mod probe;
pub mod seccomp;
mod trial;
pub mod userns;

pub use error::StepError;
pub use helper::{HelperInput, StepExit, compiled_filter, helper_main, read_spec};

/// What the isolation rung this process runs with allows, for the layers below that may not ask
/// the sandbox (the rootfs drivers): see [`crate::sys::Confinement`].
pub fn confinement() -> crate::sys::Confinement {
    let rung = probe::current();
    crate::sys::Confinement {
        isolation: rung.as_str(),
        can_mount: rung.can_mount(),
        single_uid: idmap::single_uid(),
    }
}

use crate::events::{Event, Reporter, Stream};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Networking of a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network (Buildah's chroot isolation does the same).
    #[default]
    Host,
    /// A private network namespace with only loopback, up.
    None,
    /// A private network namespace (loopback up) connected to the outside by pasta or
    /// slirp4netns, with published ports: `kiln run`'s default, Docker's `bridge`. See [`net`].
    Private,
}

/// Which seccomp filter a step gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeccompChoice {
    /// kiln's compiled-in profile (`seccomp/default.json`, Docker's default semantics).
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format (`--security-opt seccomp=FILE`).
    Profile(PathBuf),
}

/// A mount inside the step, in addition to /proc, /dev, /sys and the /etc files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSpec {
    Bind {
        src: PathBuf,
        dest: String,
        readonly: bool,
    },
    Tmpfs {
        dest: String,
        size: Option<u64>,
        mode: Option<u32>,
    },
}

/// Everything the sandbox needs to run one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The mounted merged root directory.
    pub rootfs: PathBuf,
    /// argv; `args[0]` is looked up in the step's `PATH` when it has no slash.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs; HOME, PATH and HOSTNAME are added when missing.
    pub env: Vec<String>,
    /// Working directory inside the rootfs (created when missing); empty means `/`.
    pub cwd: String,
    /// USER spec (`name|uid[:group|gid]`), resolved against the rootfs; empty means root.
    pub user: String,
    pub network: Network,
    /// Empty means `kiln`.
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    pub seccomp: SeccompChoice,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privs: bool,
    /// Fed to the command's stdin (heredocs); `None`: /dev/null (unless `tty`).
    #[serde(skip)]
    pub stdin: Option<Vec<u8>>,
    /// Where the command's output goes (ignored with `tty`).
    #[serde(skip)]
    pub output: Output,
    /// Interactive: stdin/stdout/stderr are the terminal's, no prefixing.
    pub tty: bool,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The exit code; 128+signal when killed.
    pub status: i32,
    /// Paths (relative to the rootfs) created as mount points: exclude them from the layer.
    pub placeholders: Vec<PathBuf>,
}

/// The exit code of a finished child (128+signal when killed).
pub fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Where a sandboxed command's output goes.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// kiln's own stdout and stderr (`kiln run`).
    #[default]
    Inherit,
    /// Every line becomes an [`Event::StepLog`] of build step `step` (the caller renders it).
    Events { reporter: Reporter, step: usize },
}

impl PartialEq for Output {
    fn eq(&self, other: &Output) -> bool {
        match (self, other) {
            (Output::Inherit, Output::Inherit) => true,
            (Output::Events { step: a, .. }, Output::Events { step: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Output {}

/// Turns each line read from `r` into a StepLog event (the last line may lack its newline;
/// invalid UTF-8 is replaced).
fn pump(r: impl std::io::Read, stream: Stream, reporter: Reporter, step: usize) {
    let mut r = std::io::BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
                reporter.emit(Event::StepLog {
                    step,
                    stream,
                    line: text.trim_end_matches('\r').to_string(),
                });
            }
        }
    }
}

const SLOTS: usize = 64;
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicI32 = AtomicI32::new(0);
/// PIDs of running sandbox helpers (for the signal handler, which cannot lock).
static HELPERS: [AtomicI32; SLOTS] = [EMPTY; SLOTS];
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER: std::sync::Once = std::sync::Once::new();

/// True once SIGINT/SIGTERM/SIGHUP arrived while a step was running (the step was stopped).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(sig: libc::c_int) {
    let mut any = false;
    for slot in &HELPERS {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            any = true;
            // SAFETY: kill(2) is async-signal-safe and takes plain integers.
            unsafe { libc::kill(pid, sig) };
        }
    }
    if any {
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        // No step running: behave as if there were no handler.
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

fn install_handler() {
    HANDLER.call_once(|| {
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only uses atomics, kill, signal and raise.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_signal as *const () as usize;
                act.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut act.sa_mask);
                libc::sigaction(s, &act, std::ptr::null_mut());
            }
        }
    });
}

/// Registers a running helper; unregistered on drop.
struct HelperSlot(Option<usize>);

impl HelperSlot {
    fn new(pid: u32) -> HelperSlot {
        for (i, slot) in HELPERS.iter().enumerate() {
            if slot
                .compare_exchange(0, pid as i32, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return HelperSlot(Some(i));
            }
        }
        HelperSlot(None)
    }
}

impl Drop for HelperSlot {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            HELPERS[i].store(0, Ordering::SeqCst);
        }
    }
}

/// Runs `spec.args` in a sandbox on `spec.rootfs` (see the module doc). The caller must be in
/// kiln's namespaces ([`userns::ensure`]) and have mounted the rootfs.
///
/// While a step runs, SIGINT/SIGTERM/SIGHUP stop it (the helper kills the step's PID
/// namespace) and `run` returns normally with status 128+signal, so callers clean up as usual;
/// [`interrupted`] then reports it. With no step running these signals act as by default.
pub fn run(spec: &RunSpec) -> Result<RunOutcome> {
    run_with_net(spec, &net::NetSpec::default())
}

/// [`run`] with a network: with [`Network::Private`] and a backend, the helper's namespace is
/// connected (ports published) before the step starts and disconnected when it ends; `net`
/// also shapes the generated /etc/resolv.conf and /etc/hosts for every network.
pub fn run_with_net(spec: &RunSpec, net: &net::NetSpec) -> Result<RunOutcome> {
    if spec.args.is_empty() {
        anyhow::bail!("no command to run");
    }
    let rung = probe::current();
    if !rung.can_run() {
        anyhow::bail!("{}", probe::run_refusal(&probe::full_probe(), "RUN"));
    }
    let use_chroot = rung == probe::Isolation::Chroot;
    let (created, mut chroot_prep) = if use_chroot {
        let hostname = if spec.hostname.is_empty() {
            "kiln"
        } else {
            &spec.hostname
        };
        (Vec::new(), Some(chroot::prepare(spec, hostname)?))
    } else {
        let c = mounts::create_placeholders(spec)
            .with_context(|| format!("cannot prepare mount points in {}", spec.rootfs.display()))?;
        (c, None)
    };
    let bpf = helper::compiled_filter(spec)?.map(|b| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b.as_slice())
    });
    // A private network is connected once the helper has made its namespace.
    let sync = match &net.backend {
        Some(_) if spec.network == Network::Private && !use_chroot => {
            Some(std::os::unix::net::UnixStream::pair().context("cannot create a socket pair")?)
        }
        _ => None,
    };
    let sync_raw = sync.as_ref().map(|(_, c)| std::os::fd::AsRawFd::as_raw_fd(c));
    // The spec (with the step's environment, secrets included) lives in a memfd, never on
    // disk; the helper inherits it (and only it) and reads it through /proc/self/fd.
    let input = serde_json::to_vec(&HelperInput {
        spec: spec.clone(),
        bpf,
        chroot: use_chroot,
        net: net.clone(),
        net_sync: sync_raw,
    })
    .context("serialising the sandbox spec")?;
    let spec_fd = crate::fsutil::sealed_memfd("kiln-run-spec", &input)?;
    let spec_raw = std::os::fd::AsRawFd::as_raw_fd(&spec_fd);
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__sandbox").arg(format!("/proc/self/fd/{spec_raw}"));
    let events = match (&spec.output, spec.tty) {
        (Output::Events { reporter, step }, false) => Some((reporter.clone(), *step)),
        _ => None,
    };
    if events.is_some() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    cmd.stdin(if spec.tty {
        Stdio::inherit()
    } else if spec.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    // SAFETY: prctl and fcntl are async-signal-safe; the closure touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            use crate::sys::Syscall;
            let _ = crate::sys::RealSyscall.set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            // Only in this child: the spec memfd survives the exec (the helper's main marks it
            // close-on-exec again before the step runs).
            if libc::fcntl(spec_raw, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = sync_raw
                && libc::fcntl(fd, libc::F_SETFD, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    install_handler();
    let mut child = cmd
        .spawn()
        .context("cannot start the sandbox helper (/proc/self/exe __sandbox)")?;
    let _slot = HelperSlot::new(child.id());
    drop(spec_fd);
    // Connect the network (the link is dropped, so stopped, after the step).
    let link = match sync {
        Some((mut ours, theirs)) => {
            drop(theirs);
            let r = connect_network(&mut ours, child.id(), net);
            if r.is_err() {
                drop(ours); // the helper gives up
                let _ = child.wait();
            }
            r?
        }
        None => None,
    };
    let mut threads = Vec::new();
    if let (Some(data), Some(mut w)) = (spec.stdin.clone(), child.stdin.take()) {
        threads.push(std::thread::spawn(move || {
            let _ = w.write_all(&data);
        }));
    }
    if let Some((reporter, step)) = events
        && let (Some(o), Some(e)) = (child.stdout.take(), child.stderr.take())
    {
        let r2 = reporter.clone();
        threads.push(std::thread::spawn(move || pump(o, Stream::Stdout, reporter, step)));
        threads.push(std::thread::spawn(move || pump(e, Stream::Stderr, r2, step)));
    }
    let st = child.wait().context("waiting for the sandbox helper failed")?;
    drop(link);
    for t in threads {
        let _ = t.join();
    }
    if let Some(p) = chroot_prep.as_mut()
        && let Some(e) = p.undo()
    {
        anyhow::bail!("cleaning up after the step: {e}");
    }
    Ok(RunOutcome {
        status: exit_code(st),
        placeholders: mounts::prune_placeholders(&spec.rootfs, &created),
    })
}

/// Waits for the helper's network namespace, connects it and lets the helper go on. `None`
/// when the helper ended first (its exit status says why).
fn connect_network(
    sync: &mut std::os::unix::net::UnixStream,
    pid: u32,
    net: &net::NetSpec,
) -> Result<Option<net::Link>> {
    use std::io::Read;
    let mut b = [0u8; 1];
    if sync.read_exact(&mut b).is_err() || b[0] != b'R' {
        return Ok(None);
    }
    let Some(backend) = &net.backend else {
        return Ok(None);
    };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("cannot open the network namespace of the sandbox helper {pid}"))?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let link = net::connect(backend, &ns.into(), net, &host_resolv)?;
    // The helper may have been stopped meanwhile: then it is gone and this fails, harmlessly.
    let _ = sync.write_all(b"G");
    Ok(Some(link))
}
