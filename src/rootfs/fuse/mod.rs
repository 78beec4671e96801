//! kiln's own FUSE overlay (`--storage-driver fuse`), served in-process on threads with
//! fuse-backend-rs' FUSE server and our overlay logic ([`fs::OverlayFs`]; the crate's own
//! OverlayFs loses opaque markers, owners and xattrs on copy-up and ignores the umask).
//!
//! The upper dir is written in the kernel-overlay format, so layers are committed, reused as
//! lowers and mounted by the kernel overlay unchanged. `/dev/fuse` is mounted with mount(2)
//! directly (kiln is uid 0 in its user + mount namespace, so no fusermount is needed), without
//! the `nosuid` that fuse-backend-rs' own mount forces: setuid binaries in RUN steps work. The
//! mount has `allow_other` (steps may run as another user) and `default_permissions` (the
//! kernel checks permissions against the attributes we serve).

mod fs;

pub use fs::OverlayFs;

use super::{RootfsDriver, empty_sibling};
use crate::sys::{RealSyscall, Syscall, Target};
use anyhow::{Context, Result, bail};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseChannel, FuseSession};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Server threads per mount.
const THREADS: usize = 4;
/// Largest request the kernel may send (fuse-backend-rs' channel buffer is 256 pages + header).
const MAX_READ: usize = 256 * 4096;

/// A running FUSE overlay.
struct Running {
    session: FuseSession,
    fs: Arc<Server<Arc<OverlayFs>>>,
    overlay: Arc<OverlayFs>,
    threads: Vec<JoinHandle<()>>,
}

/// The FUSE overlay driver.
#[derive(Default)]
pub struct FuseOverlay {
    running: Mutex<HashMap<PathBuf, Running>>,
    journals: Mutex<HashMap<PathBuf, Vec<PathBuf>>>,
}

impl FuseOverlay {
    /// Mounts the overlay and starts its server threads.
    fn start(&self, lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path, readonly: bool) -> Result<()> {
        let overlay = Arc::new(
            OverlayFs::new(lowers, upper, work, Some(crate::sys::idstate::state_dir(target)))
                .with_context(|| format!("cannot open the layers of the FUSE overlay on {}", target.display()))?,
        );
        // Before the mount: the session resolves the mount point, which would wait for a
        // server that is not running yet.
        let mut session = FuseSession::new(target, "kiln", "kiln", false)
            .map_err(|e| anyhow::anyhow!("cannot set up a FUSE session on {}: {e}", target.display()))?;
        let file = mount_fuse(target, readonly)?;
        session.set_fuse_file(file);
        let server = Arc::new(Server::new(overlay.clone()));
        let mut threads = Vec::new();
        for i in 0..THREADS {
            let ch = match session.new_channel() {
                Ok(c) => c,
                Err(e) => {
                    let _ = super::overlay::umount(target);
                    bail!("cannot open a FUSE channel: {e}");
                }
            };
            let srv = server.clone();
            let t = std::thread::Builder::new()
                .name(format!("kiln-fuse-{i}"))
                .spawn(move || worker(ch, srv))
                .context("cannot start a FUSE server thread")?;
            threads.push(t);
        }
        self.running.lock().unwrap().insert(
            target.to_path_buf(),
            Running {
                session,
                fs: server,
                overlay,
                threads,
            },
        );
        Ok(())
    }
}

/// One server thread: a private umask of 0 (modes arrive with the caller's umask applied),
/// then requests until the filesystem is unmounted or the session wakes us.
fn worker(mut ch: FuseChannel, server: Arc<Server<Arc<OverlayFs>>>) {
    // CLONE_FS: umask (and cwd) become this thread's own, the process umask stays.
    if RealSyscall.unshare(nix::sched::CloneFlags::CLONE_FS).is_ok() {
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    }
    while let Ok(Some((reader, writer))) = ch.get_request() {
        if let Err(e) = server.handle_message(reader, writer.into(), None, None)
            && let fuse_backend_rs::Error::EncodeMessage(io) = &e
            && matches!(io.raw_os_error(), Some(libc::EBADF) | Some(libc::ENODEV))
        {
            break;
        }
    }
}

/// Opens /dev/fuse and mounts it on `target` (no nosuid: setuid binaries keep working where
/// the namespace allows it).
fn mount_fuse(target: &Path, readonly: bool) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse (is the fuse module loaded and /dev/fuse accessible?)")?;
    let opts = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions,allow_other,max_read={}",
        file.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid(),
        MAX_READ
    );
    let mut flags = nix::mount::MsFlags::MS_NOATIME;
    if readonly {
        flags |= nix::mount::MsFlags::MS_RDONLY;
    }
    RealSyscall
        .mount(
            Some("kiln"),
            Target::host(target),
            Some("fuse.kiln"),
            flags,
            Some(opts.as_str()),
        )
        .with_context(|| format!("cannot mount a FUSE filesystem on {}", target.display()))?;
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if let Ok(fl) = fcntl(&file, FcntlArg::F_GETFL) {
        let _ = fcntl(
            &file,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK),
        );
    }
    Ok(file)
}

impl RootfsDriver for FuseOverlay {
    fn name(&self) -> &str {
        "fuse"
    }

    fn mount(&self, lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
        let lowers = if lowers.is_empty() {
            vec![empty_sibling(work)?]
        } else {
            lowers.to_vec()
        };
        self.start(&lowers, upper, work, target, false)
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        let Some(r) = self.running.lock().unwrap().remove(target) else {
            bail!("{} was not mounted by the FUSE driver", target.display());
        };
        let res = super::overlay::umount(target);
        stop(r, target, &self.journals);
        res
    }

    fn changes(&self, target: &Path) -> Option<Vec<PathBuf>> {
        self.journals.lock().unwrap().remove(target)
    }
}

/// Stops the server threads (after the unmount) and keeps the journal.
fn stop(r: Running, target: &Path, journals: &Mutex<HashMap<PathBuf, Vec<PathBuf>>>) {
    let Running {
        session,
        fs,
        overlay,
        threads,
    } = r;
    let _ = session.wake();
    for t in threads {
        let _ = t.join();
    }
    drop(fs);
    drop(session);
    journals.lock().unwrap().insert(target.to_path_buf(), overlay.journal());
}

impl Drop for FuseOverlay {
    fn drop(&mut self) {
        let running: Vec<(PathBuf, Running)> = self.running.lock().unwrap().drain().collect();
        for (target, r) in running {
            let _ = super::overlay::umount(&target);
            stop(r, &target, &self.journals);
        }
    }
}

static READONLY: std::sync::OnceLock<FuseOverlay> = std::sync::OnceLock::new();

/// A read-only FUSE overlay of `lowers` (top first) at `target`, for where the kernel overlay
/// cannot mount (COPY --from). Its scratch upper dir is a sibling of `target`. The server
/// threads end when the mount goes away (the kernel aborts the connection), whoever unmounts.
pub fn mount_readonly(lowers: &[PathBuf], target: &Path) -> Result<()> {
    let ro = READONLY.get_or_init(FuseOverlay::default);
    // Forget mounts that were detached directly (their threads have finished).
    ro.running
        .lock()
        .unwrap()
        .retain(|_, r| !r.threads.iter().all(|t| t.is_finished()));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let upper = target.with_file_name(format!(".{name}.fuse-upper"));
    let work = target.with_file_name(format!(".{name}.fuse-work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let lowers = if lowers.is_empty() {
        vec![empty_sibling(target)?]
    } else {
        lowers.to_vec()
    };
    ro.start(&lowers, &upper, &work, target, true)
}

/// Unmounts a mount made by [`mount_readonly`]; None if `target` is not one.
pub fn unmount_readonly(target: &Path) -> Option<Result<()>> {
    let ro = READONLY.get()?;
    if !ro.running.lock().unwrap().contains_key(target) {
        return None;
    }
    Some(ro.unmount(target))
}

/// Mounts a FUSE overlay in a fresh dir under `dir`, writes, deletes and replaces a directory
/// through it and checks the upper dir (whiteout and opaque marker).
pub(super) fn probe_in(dir: &Path) -> Result<()> {
    // `fuse-probe-<pid>.<random>`: see the overlay probe (owner pid for the dead-owner sweeps).
    let t = tempfile::Builder::new()
        .prefix(&format!("fuse-probe-{}.", std::process::id()))
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a probe dir in {}", dir.display()))?;
    let (l, u, w, m) = (
        t.path().join("l"),
        t.path().join("u"),
        t.path().join("w"),
        t.path().join("m"),
    );
    for d in [&l, &u, &w, &m] {
        std::fs::create_dir(d)?;
    }
    std::fs::write(l.join("f"), b"x")?;
    let drv = FuseOverlay::default();
    drv.mount(std::slice::from_ref(&l), &u, &w, &m)?;
    let r = (|| -> Result<()> {
        std::fs::write(m.join("g"), b"y").context("cannot write through the FUSE overlay")?;
        std::fs::remove_file(m.join("f")).context("cannot delete through the FUSE overlay")?;
        Ok(())
    })();
    drv.unmount(&m)?;
    r?;
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::symlink_metadata(u.join("f")).context("no whiteout was created in the upper dir")?;
    if !md.file_type().is_char_device() {
        bail!("the FUSE overlay did not record a deletion as a whiteout device");
    }
    Ok(())
}
