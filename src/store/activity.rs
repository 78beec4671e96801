//! Who is using the store: every kiln process that opens it registers itself (see [`register`]):
//! - a *shared* `flock` on `locks/active`, held until the process exits;
//! - an *exclusive* `flock` on `locks/proc-<pid>`, held until the process exits.
//!
//! Temporary entries under `tmp/` carry the pid of the process that made them
//! (`<prefix><pid>.<random>`, see [`tmp_owner`]). An entry belongs to a live process exactly when
//! that process's `locks/proc-<pid>` is locked; the kernel drops the lock when the process dies,
//! even by `kill -9`, so a crashed kiln's partial data is recognisable and nothing a running
//! kiln holds is ever taken for garbage (flocks work across pid namespaces; pid reuse can only
//! make a dead entry look alive, never the opposite).
//!
//! Whole-store collection ([`super::gc::prune`], [`Exclusive`]) converts this process's shared lock on
//! `locks/active` to an exclusive one: that succeeds only when no other kiln process has the
//! store open, and new ones wait in [`register`] until the collection is over. So blobs, cache
//! entries and unpacked layers that a running build is about to reference (or uses as overlay
//! lowers) are never removed.

use super::Store;
use crate::fsutil::remove::remove_path;
use anyhow::{Context, Result, bail};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct Held {
    root: PathBuf,
    active: File,
    _proc: File,
}

static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn flock_raw(f: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: the fd is open (owned by `f`, borrowed for the call); flock takes only integers.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn would_block(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EWOULDBLOCK)
}

fn open_lock(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))
}

fn proc_lock_path(root: &Path, pid: u32) -> PathBuf {
    root.join("locks").join(format!("proc-{pid}"))
}

/// Registers this process as a user of the store at `root` (idempotent per process and root).
/// Waits while a `kiln prune` or `kiln fsck --repair` holds the store.
pub fn register(root: &Path, reporter: &crate::events::Reporter) -> Result<()> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if held.iter().any(|h| h.root == root) {
        return Ok(());
    }
    let active_path = root.join("locks/active");
    let active = open_lock(&active_path)?;
    if let Err(e) = flock_raw(&active, libc::LOCK_SH | libc::LOCK_NB) {
        if !would_block(&e) {
            return Err(e).with_context(|| format!("locking {}", active_path.display()));
        }
        reporter.info(
            "store",
            format!(
                "waiting for a garbage collection (kiln prune / kiln fsck --repair) of {} to finish",
                root.display()
            ),
        );
        flock_raw(&active, libc::LOCK_SH).with_context(|| format!("locking {}", active_path.display()))?;
    }
    let path = proc_lock_path(root, std::process::id());
    // A collector may unlink a dead owner's lock file while we open it: retry until the file
    // we locked is the one at the path.
    let proc_lock = loop {
        let f = open_lock(&path)?;
        flock_raw(&f, libc::LOCK_EX).with_context(|| format!("locking {}", path.display()))?;
        let same = match (f.metadata(), fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            break f;
        }
    };
    held.push(Held {
        root: root.to_path_buf(),
        active,
        _proc: proc_lock,
    });
    drop(held);
    // Keep locks/ small on busy CI machines: forget dead processes now and then.
    if let Ok(rd) = fs::read_dir(root.join("locks"))
        && rd.filter(|e| e.is_ok()).count() > 256
    {
        let _ = remove_dead_proc_locks(root);
    }
    Ok(())
}

/// The pid that created a `tmp/` entry, from its name `<prefix><pid>.<random>`.
pub fn tmp_owner(name: &str) -> Option<u32> {
    let (head, rand) = name.rsplit_once('.')?;
    if rand.is_empty() || !rand.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let digits = head.rsplit_once('-').map_or(head, |(_, d)| d);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Removes the `tmp/` entries of the kiln process `pid`, which has exited (called by the
/// original process once its user-namespace child is gone: the sandbox's `on_child_exit`
/// hook). Best effort and silent: entries it cannot remove
/// (files of subordinate ids, seen from outside the namespace) are left for `kiln fsck
/// --repair` / `kiln prune`. Does nothing when a live process holds `pid`'s lock again.
pub fn sweep_tmp_of(root: &Path, pid: u32) {
    if pid == std::process::id() || pid_alive(root, pid) {
        return;
    }
    let Ok(rd) = fs::read_dir(root.join("tmp")) else {
        return;
    };
    for e in rd.flatten() {
        if tmp_owner(&e.file_name().to_string_lossy()) == Some(pid) {
            let _ = remove_path(&e.path());
        }
    }
}

/// Removes every `tmp/` entry whose owner (the pid in its name, see [`tmp_owner`]) is a kiln
/// process that is gone: run whenever a store is opened, so a kiln killed at any moment (a
/// probe dir, a step's scratch dir, a half-written blob, a filtered context) leaves nothing once
/// kiln runs again. Liveness is the owner's lock (`locks/proc-<pid>`), so a live process of
/// another pid namespace keeps its entries. Best effort: entries of subordinate ids that this
/// process cannot remove are left for `kiln fsck --repair` / `kiln prune`.
pub fn sweep_dead_tmp(root: &Path) {
    let Ok(rd) = fs::read_dir(root.join("tmp")) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = tmp_owner(&name)
            && !pid_alive(root, pid)
        {
            let _ = remove_path(&e.path());
        }
    }
}

/// Is the kiln process `pid` (of any pid namespace sharing this store) still running?
pub fn pid_alive(root: &Path, pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(f) = File::open(proc_lock_path(root, pid)) else {
        // Never registered (or already collected): nothing of it can still be running.
        return false;
    };
    match flock_raw(&f, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(()) => false,
        Err(e) => would_block(&e),
    }
}

/// Pids of the other kiln processes that have the store open.
pub fn active_pids(root: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir(root.join("locks"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("proc-")?.parse().ok())
        .filter(|&p| p != std::process::id() && pid_alive(root, p))
        .collect();
    v.sort_unstable();
    v
}

/// Removes the `locks/proc-<pid>` files of processes that are gone; returns how many.
pub(super) fn remove_dead_proc_locks(root: &Path) -> Result<usize> {
    let mut n = 0;
    let dir = root.join("locks");
    for e in fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.strip_prefix("proc-")?.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(f) = File::open(e.path()) else { continue };
        // Unlink while holding the lock, so that a process registering with the same pid
        // notices (it re-checks the inode) and makes a fresh file.
        if flock_raw(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok() && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Exclusive use of the store: no other kiln process has it open, and new ones wait until this
/// is dropped. Also holds [`Store::lock`].
pub struct Exclusive {
    root: PathBuf,
    _store_lock: super::StoreLock,
}

impl Exclusive {
    /// Takes exclusive use of the store, or fails naming the processes that use it.
    /// With `wait`, blocks until they are done instead.
    pub fn acquire(store: &Store, wait: bool) -> Result<Exclusive> {
        register(store.root(), store.reporter())?;
        let store_lock = store.lock()?;
        let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let h = held
            .iter()
            .find(|h| h.root == store.root())
            .context("the store is not registered")?;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        if let Err(e) = flock_raw(&h.active, op) {
            // The conversion may have dropped our shared lock: take it back.
            let _ = flock_raw(&h.active, libc::LOCK_SH);
            if would_block(&e) {
                let pids = active_pids(store.root());
                bail!(
                    "the store {} is in use by other kiln processes (pids {}); wait for them to finish or pass --wait",
                    store.root().display(),
                    if pids.is_empty() {
                        "unknown".to_string()
                    } else {
                        pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
                    }
                );
            }
            return Err(e).context("locking locks/active");
        }
        Ok(Exclusive {
            root: store.root().to_path_buf(),
            _store_lock: store_lock,
        })
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.iter().find(|h| h.root == self.root) {
            let _ = flock_raw(&h.active, libc::LOCK_SH);
        }
    }
}
