//! How a step's root filesystem is assembled from layer directories, and how its changes
//! end up in an "upper" directory in kernel-overlay format (whiteout = char device 0:0, opaque
//! directory = xattr `user.overlay.opaque="y"`), which `crate::layer::commit_dir` turns into a
//! layer.
//!
//! [`RootfsDriver`] is the seam: the kernel overlay ([`KernelOverlay`], `userxattr`, in kiln's
//! user namespace) is the normal driver; [`CopySnapshot`] copies the layers into a plain
//! directory and computes the changes when it is unmounted; [`FuseOverlay`] is kiln's own
//! overlay served over FUSE in-process (same upper format, plus a journal of changed paths).

mod copy;
mod fuse;
mod overlay;

pub use copy::{CopySnapshot, materialise, remove_tree};
pub use fuse::FuseOverlay;
pub use overlay::{KernelOverlay, mount_overlay_readonly};

use crate::events::Reporter;
use crate::fsutil::overlay::{self as ovl_format, is_overlay_xattr};
use crate::fsutil::{Follow, Root};
use crate::store::Store;
use crate::sys::Confinement;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Assembles a root filesystem from read-only lower directories and a writable upper one.
pub trait RootfsDriver: Send + Sync {
    /// Short name for messages (`overlay`, `copy`).
    fn name(&self) -> &str;
    /// Mounts (or materialises) `lowers` (top first) + `upper` at `target`. `work` is an empty
    /// scratch directory on the same filesystem as `upper`. An empty `lowers` means FROM scratch.
    fn mount(&self, lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()>;
    /// Unmounts `target`. Afterwards `upper` holds exactly the changes made under `target`.
    fn unmount(&self, target: &Path) -> Result<()>;
    /// After `unmount`: the paths (relative to the root) the driver saw change, if it keeps a
    /// journal. Every change in `upper` is at or below one of them.
    fn changes(&self, _target: &Path) -> Option<Vec<PathBuf>> {
        None
    }
}

/// The probe result: which driver kiln picks here by default, and why.
#[derive(Clone, Debug)]
pub struct DriverChoice {
    /// The kernel overlay (userxattr) mounts here.
    pub overlay: bool,
    /// Why (not), for the kernel overlay.
    pub reason: String,
    /// The default driver: `overlay`, `fuse` or `copy`.
    pub name: &'static str,
    /// One sentence: why that driver.
    pub why: String,
}

static CHOICE: OnceLock<DriverChoice> = OnceLock::new();
static FUSE_PROBE: OnceLock<Result<(), String>> = OnceLock::new();

/// Probes (once per process) whether kiln's FUSE overlay mounts and works in `dir`.
pub fn probe_fuse(dir: &Path) -> Result<(), String> {
    FUSE_PROBE
        .get_or_init(|| fuse::probe_in(dir).map_err(|e| format!("{e:#}")))
        .clone()
}

/// Probes (once per process) which driver to use by default: the kernel overlay with
/// `userxattr` when a probe mount in `dir` works (except in a single-uid user namespace,
/// `single_uid`, where kiln's FUSE overlay is preferred for ownership emulation), else kiln's
/// FUSE overlay when /dev/fuse can be mounted, else copy-based snapshots.
pub fn probe(dir: &Path, single_uid: bool) -> DriverChoice {
    CHOICE
        .get_or_init(|| {
            match overlay::probe_in(dir).and_then(|()| {
                if kernel_overlay_disabled() {
                    bail!("disabled with KILN_DISABLE_KERNEL_OVERLAY=1")
                }
                Ok(())
            }) {
                Ok(()) if single_uid && probe_fuse(dir).is_ok() => DriverChoice {
                    overlay: true,
                    reason: format!("kernel overlayfs (userxattr) mounts in {}", dir.display()),
                    name: "fuse",
                    why: "single-uid user namespace: kiln's FUSE overlay records the owners of files that RUN \
                      steps create as emulated users (USER, su, setuid), which the kernel overlay cannot"
                        .to_string(),
                },
                Ok(()) => DriverChoice {
                    overlay: true,
                    reason: format!("kernel overlayfs (userxattr) mounts in {}", dir.display()),
                    name: "overlay",
                    why: format!("kernel overlayfs (userxattr) mounts in {}", dir.display()),
                },
                Err(e) => {
                    let reason = format!("kernel overlayfs cannot be used: {e:#}");
                    match probe_fuse(dir) {
                        Ok(()) => DriverChoice {
                            overlay: false,
                            why: format!(
                                "{reason}; kiln's FUSE overlay works (/dev/fuse mounts in the user namespace)"
                            ),
                            reason,
                            name: "fuse",
                        },
                        Err(f) => DriverChoice {
                            overlay: false,
                            why: format!("{reason}; kiln's FUSE overlay cannot be used either: {f}"),
                            reason,
                            name: "copy",
                        },
                    }
                }
            }
        })
        .clone()
}

/// A storage driver the user can force (`--storage-driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDriver {
    /// Kernel overlayfs in the user namespace.
    Overlay,
    /// kiln's FUSE overlay.
    Fuse,
    /// Copy snapshots (also spelled `vfs`, as in Buildah).
    Copy,
}

impl std::str::FromStr for StorageDriver {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<StorageDriver> {
        Ok(match s {
            "overlay" => StorageDriver::Overlay,
            "fuse" => StorageDriver::Fuse,
            "copy" | "vfs" => StorageDriver::Copy,
            other => bail!("unknown storage driver {other:?}: expected overlay, fuse or copy"),
        })
    }
}

impl std::fmt::Display for StorageDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageDriver::Overlay => "overlay",
            StorageDriver::Fuse => "fuse",
            StorageDriver::Copy => "copy",
        })
    }
}

/// Picks the driver for this process: `forced` (`overlay`, `fuse` or `copy`, from
/// `--storage-driver`) or, by default, what [`probe`] finds in the store's tmp dir. What the
/// isolation allows comes from the caller (`sandbox::confinement()`). Says which and why as
/// a debug message.
pub fn choose_driver(
    store: &Store,
    confinement: &Confinement,
    forced: Option<StorageDriver>,
    reporter: &Reporter,
) -> Result<Box<dyn RootfsDriver>> {
    let tmp = store.root().join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    choose_driver_in(&tmp, confinement, forced, reporter)
}

/// Like [`choose_driver`], probing in `dir`.
pub fn choose_driver_in(
    dir: &Path,
    confinement: &Confinement,
    forced: Option<StorageDriver>,
    reporter: &Reporter,
) -> Result<Box<dyn RootfsDriver>> {
    let say = |text: String| reporter.debug("rootfs", || text);
    let rung = confinement.isolation;
    if !confinement.can_mount {
        // Chroot / no-privilege isolation: nothing may be mounted, layers are plain directories.
        if let Some(f) = forced.filter(|f| *f != StorageDriver::Copy) {
            bail!("--storage-driver {f}: isolation {rung} cannot mount anything here; only the copy driver works");
        }
        say(format!(
            "rootfs driver: copy snapshots (isolation {rung}: no mounts allowed)"
        ));
        return Ok(Box::new(CopySnapshot::default()));
    }
    match forced {
        Some(StorageDriver::Copy) => {
            say("rootfs driver: copy snapshots (--storage-driver)".into());
            return Ok(Box::new(CopySnapshot::default()));
        }
        Some(StorageDriver::Fuse) => {
            if let Err(e) = probe_fuse(dir) {
                bail!("--storage-driver fuse: kiln's FUSE overlay does not work here: {e}");
            }
            say("rootfs driver: kiln's FUSE overlay (--storage-driver fuse)".into());
            return Ok(Box::new(FuseOverlay::default()));
        }
        Some(StorageDriver::Overlay) | None => {}
    }
    let c = probe(dir, confinement.single_uid);
    if forced == Some(StorageDriver::Overlay) && !c.overlay {
        bail!("--storage-driver overlay: {}", c.reason);
    }
    say(match c.name {
        "overlay" => format!("rootfs driver: overlay ({})", c.why),
        "fuse" => format!("rootfs driver: kiln's FUSE overlay ({})", c.why),
        _ => format!("rootfs driver: copy snapshots ({}); steps will be slower", c.why),
    });
    Ok(match c.name {
        "overlay" => Box::new(KernelOverlay),
        "fuse" => Box::new(FuseOverlay::default()),
        _ => Box::new(CopySnapshot::default()),
    })
}

/// Mounts a read-only view of `lowers` (top first) at `target` (for COPY --from a stage or an
/// image). Unmount with [`unmount`].
/// Where the kernel overlay cannot mount, kiln's FUSE overlay serves the view.
pub fn mount_readonly(lowers: &[PathBuf], target: &Path) -> Result<()> {
    if kernel_overlay_disabled() {
        return fuse::mount_readonly(lowers, target);
    }
    match mount_overlay_readonly(lowers, target) {
        Ok(()) => Ok(()),
        Err(e) => {
            let dir = target.parent().unwrap_or(Path::new("/"));
            if probe_fuse(dir).is_ok() {
                fuse::mount_readonly(lowers, target)
                    .with_context(|| format!("the kernel overlay failed ({e:#}), and so did the FUSE overlay"))
            } else {
                Err(e)
            }
        }
    }
}

/// Detaches a mount made by this module.
pub fn unmount(target: &Path) -> Result<()> {
    if let Some(r) = fuse::unmount_readonly(target) {
        return r;
    }
    overlay::umount(target)
}

/// Testing aid: `KILN_DISABLE_KERNEL_OVERLAY=1` makes kiln behave as where the kernel overlay
/// cannot be mounted (old kernels, upper dirs on overlayfs).
fn kernel_overlay_disabled() -> bool {
    std::env::var_os("KILN_DISABLE_KERNEL_OVERLAY").is_some_and(|v| v == "1")
}

/// A sibling directory of `p` guaranteed to exist and be empty (for FROM scratch lowers).
pub(crate) fn empty_sibling(p: &Path) -> Result<PathBuf> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "x".into());
    let parent = p.parent().unwrap_or(Path::new("/"));
    let e = parent.join(format!(".{name}.kiln-empty"));
    match std::fs::create_dir(&e) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_dir(&e)
                .with_context(|| format!("cannot read {}", e.display()))?
                .next()
                .is_some()
            {
                bail!("{} should be empty but is not", e.display());
            }
        }
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", e.display())),
    }
    Ok(e)
}

/// Removes the step's mount-point placeholders from `upper`, then the directories that are in
/// `upper` only because a placeholder was created in them (empty, not opaque, same mode and
/// owner as in the lowers, no xattrs of their own), so the layer holds exactly the step's
/// changes. `placeholders` are relative paths, as in `RunOutcome::placeholders`.
pub fn clean_upper(upper: &Path, lowers: &[PathBuf], placeholders: &[PathBuf]) -> Result<()> {
    // Through root handles, following no symlink: the step may have renamed a placeholder's
    // parent away and put a link to a host directory (or the store) in its place.
    let up = Root::open(upper).with_context(|| format!("cannot open the upper dir {}", upper.display()))?;
    let lowers: Vec<Root> = lowers.iter().filter_map(|l| Root::open(l).ok()).collect();
    let mut parents: Vec<PathBuf> = Vec::new();
    for p in placeholders.iter().rev() {
        // A directory that is not empty holds the step's files: it stays (rmdir refuses).
        let _ = up.remove(p);
        let mut cur = p.parent();
        while let Some(c) = cur.filter(|c| !c.as_os_str().is_empty()) {
            if !parents.iter().any(|x| x == c) && !placeholders.iter().any(|x| x == c) {
                parents.push(c.to_path_buf());
            }
            cur = c.parent();
        }
    }
    // deepest first
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for rel in parents {
        let Ok(st) = up.stat(&rel, Follow::Never) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR
            || up.read_dir(&rel, Follow::Never).map(|d| !d.is_empty()).unwrap_or(true)
        {
            continue;
        }
        let own_xattrs = up
            .list_xattrs(&rel)
            .map(|l| l.into_iter().any(|n| !is_overlay_xattr(n.as_encoded_bytes())))
            .unwrap_or(true);
        let opaque = ovl_format::is_opaque_with(|n| up.get_xattr(&rel, n).ok().flatten());
        if own_xattrs || opaque {
            continue;
        }
        let Some(lower) = lowers.iter().find_map(|l| l.stat(&rel, Follow::Never).ok()) else {
            continue;
        };
        if lower.st_mode & libc::S_IFMT == libc::S_IFDIR
            && lower.st_mode == st.st_mode
            && lower.st_uid == st.st_uid
            && lower.st_gid == st.st_gid
        {
            up.remove(&rel)
                .with_context(|| format!("cannot remove {}", up.show(&rel)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_upper_drops_placeholders_and_their_copied_up_parents() {
        let t = tempfile::tempdir().unwrap();
        let (l, u) = (t.path().join("l"), t.path().join("u"));
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::create_dir_all(l.join("var/lib")).unwrap();
        std::fs::create_dir_all(u.join("etc")).unwrap();
        std::fs::write(u.join("etc/hosts"), "").unwrap();
        std::fs::create_dir_all(u.join("var/lib")).unwrap();
        std::fs::write(u.join("var/lib/x"), "").unwrap();
        std::fs::write(u.join("var/lib/real"), "data").unwrap();
        std::fs::create_dir_all(u.join("proc")).unwrap();
        let ph: Vec<PathBuf> = ["etc/hosts", "var/lib/x", "proc"].iter().map(PathBuf::from).collect();
        clean_upper(&u, &[l], &ph).unwrap();
        assert!(!u.join("etc").exists() && !u.join("proc").exists());
        assert!(u.join("var/lib/real").exists() && !u.join("var/lib/x").exists());
    }

    /// A step renamed a placeholder's parent away and put a symlink to a host directory in its
    /// place: cleanup must not delete anything there.
    #[test]
    fn clean_upper_never_follows_a_swapped_in_symlink() {
        let t = tempfile::tempdir().unwrap();
        let (l, u, host) = (t.path().join("l"), t.path().join("u"), t.path().join("host"));
        std::fs::create_dir_all(l.join("mnt")).unwrap();
        std::fs::create_dir_all(host.join("target")).unwrap();
        std::fs::write(host.join("precious"), "x").unwrap();
        std::fs::create_dir_all(&u).unwrap();
        std::os::unix::fs::symlink(&host, u.join("mnt")).unwrap();
        let ph: Vec<PathBuf> = ["mnt/precious", "mnt/target", "mnt"]
            .iter()
            .map(PathBuf::from)
            .collect();
        clean_upper(&u, &[l], &ph).unwrap();
        assert!(host.join("precious").exists() && host.join("target").is_dir());
    }
}
