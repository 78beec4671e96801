//! Kernel overlayfs with `userxattr` (Linux >= 5.11 in a user namespace).

use super::{RootfsDriver, empty_sibling};
use crate::sys::{FsConfig, RealSyscall, Syscall, Target};
use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags};
use std::path::{Path, PathBuf};

/// Name prefix of the probe's temp dir (followed by `<pid>.<random>`).
pub const PROBE_PREFIX: &str = "overlay-probe-";

/// Mount data above this length goes through the new mount API (the page limit is 4 KiB).
const MAX_MOUNT_DATA: usize = 3500;

/// Kernel overlayfs, mounted directly (kiln is uid 0 in its user + mount namespace).
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelOverlay;

/// Escapes a path for an overlay option value (`:` `,` `\` are special).
fn escape(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ':' | ',' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Mounts an overlay with the fd-based mount API: one `lowerdir+` per layer (Linux >= 6.8), so
/// the number of layers is not limited by the 4 KiB mount data page.
fn mount_new_api(sys: &dyn Syscall, lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<()> {
    let s = |p: &Path| p.to_string_lossy().to_string();
    let mut config: Vec<FsConfig> = lowers
        .iter()
        .map(|l| FsConfig::String("lowerdir+".into(), s(l)))
        .collect();
    if let Some((u, w)) = upper {
        config.push(FsConfig::String("upperdir".into(), s(u)));
        config.push(FsConfig::String("workdir".into(), s(w)));
        config.push(FsConfig::Flag("volatile".into()));
    }
    config.push(FsConfig::Flag("userxattr".into()));
    sys.mount_fs("overlay", &config, Target::host(target)).with_context(|| {
        format!(
            "cannot mount an overlay of {} layer(s) on {} with the new mount API (lowerdir+ needs Linux 6.8)",
            lowers.len(),
            target.display()
        )
    })
}

fn mount_overlay(sys: &dyn Syscall, lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<()> {
    let mut data = format!(
        "lowerdir={}",
        lowers.iter().map(|l| escape(l)).collect::<Vec<_>>().join(":")
    );
    if let Some((u, w)) = upper {
        // volatile: no syncfs of the whole upper file system when the overlay is unmounted
        // (each step's unmount otherwise writes back every dirty page of that file system:
        // measured 0.3-0.9 s per COPY of copy-big, 10-17 ms per RUN step). The upper dir is
        // fresh per step and never mounted again; the layer blob is fsynced by the store.
        data.push_str(&format!(",upperdir={},workdir={},volatile", escape(u), escape(w)));
    }
    data.push_str(",userxattr");
    if data.len() > MAX_MOUNT_DATA {
        return mount_new_api(sys, lowers, upper, target);
    }
    let flags = if upper.is_none() {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    sys.mount(
        Some("overlay"),
        Target::host(target),
        Some("overlay"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) => " (not uid 0 in kiln's user namespace?)",
            Some(libc::EINVAL) => " (is the upper dir on overlayfs, or tmpfs before Linux 6.6?)",
            _ => "",
        };
        let e = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
        anyhow::anyhow!(
            "cannot mount an overlay of {} layer(s) on {}: {e}{hint}",
            lowers.len(),
            target.display()
        )
    })
}

impl RootfsDriver for KernelOverlay {
    fn name(&self) -> &str {
        "overlay"
    }

    fn mount(&self, lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
        let lowers = if lowers.is_empty() {
            vec![empty_sibling(work)?]
        } else {
            lowers.to_vec()
        };
        mount_overlay(&RealSyscall, &lowers, Some((upper, work)), target)
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        umount(target)
    }
}

/// A read-only overlay of `lowers` (top first); a single lower gets an empty second one.
pub fn mount_overlay_readonly(lowers: &[PathBuf], target: &Path) -> Result<()> {
    let mut l = lowers.to_vec();
    if l.is_empty() {
        l.push(empty_sibling(target)?);
    }
    if l.len() == 1 {
        l.push(empty_sibling(target)?);
    }
    mount_overlay(&RealSyscall, &l, None, target)
}

/// Unmounts `target` (lazily if it is still busy).
pub fn umount(target: &Path) -> Result<()> {
    umount_with(&RealSyscall, target)
}

fn umount_with(sys: &dyn Syscall, target: &Path) -> Result<()> {
    let errno = |e: std::io::Error| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
    match sys.umount(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => sys
            .umount(target, MntFlags::MNT_DETACH)
            .map_err(errno)
            .with_context(|| format!("cannot unmount {}", target.display())),
        Err(e) => Err(errno(e)).with_context(|| format!("cannot unmount {}", target.display())),
    }
}

/// Mounts a small overlay in a fresh temp dir under `dir`, writes and deletes through it and
/// checks the upper dir got a whiteout. The dir is named `overlay-probe-<pid>.<random>` so
/// that a kiln killed meanwhile leaves an entry recognisably owned by a dead process (removed by
/// the startup sweep in `Store::open`, by the original process after the user-namespace child
/// exits, and by `kiln fsck --repair` / `kiln prune`; see `crate::store::gc::tmp_owner`).
pub(super) fn probe_in(dir: &Path) -> Result<()> {
    let t = tempfile::Builder::new()
        .prefix(&format!("{PROBE_PREFIX}{}.", std::process::id()))
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
    KernelOverlay.mount(std::slice::from_ref(&l), &u, &w, &m)?;
    let r = (|| -> Result<()> {
        std::fs::write(m.join("g"), b"y").context("cannot write through the overlay")?;
        std::fs::remove_file(m.join("f")).context("cannot delete through the overlay")?;
        Ok(())
    })();
    umount(&m)?;
    r?;
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::symlink_metadata(u.join("f")).context("no whiteout was created in the upper dir")?;
    if !md.file_type().is_char_device() {
        bail!("the overlay did not record a deletion as a whiteout device");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};

    #[test]
    fn short_mount_data_uses_mount_and_long_the_new_api() {
        let sys = RecordingSyscall::default();
        let lowers = vec![PathBuf::from("/l/a:b"), PathBuf::from("/l/c")];
        mount_overlay(&sys, &lowers, Some((Path::new("/u"), Path::new("/w"))), Path::new("/m")).unwrap();
        assert!(
            matches!(&sys.calls.borrow()[0], Call::Mount { data: Some(d), flags, .. }
            if d == "lowerdir=/l/a\\:b:/l/c,upperdir=/u,workdir=/w,volatile,userxattr" && flags.is_empty())
        );
        let sys = RecordingSyscall::default();
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/store/layers/{i:064}")))
            .collect();
        mount_overlay(&sys, &many, None, Path::new("/m")).unwrap();
        match &sys.calls.borrow()[0] {
            Call::MountFs { fstype, config, .. } => {
                assert_eq!(fstype, "overlay");
                assert_eq!(config.len(), 201);
                assert_eq!(
                    config[0],
                    FsConfig::String("lowerdir+".into(), many[0].to_string_lossy().into())
                );
                assert_eq!(config[200], FsConfig::Flag("userxattr".into()));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn a_busy_mount_is_detached() {
        let sys = RecordingSyscall::default();
        umount_with(&sys, Path::new("/m")).unwrap();
        assert_eq!(sys.names(), ["umount"]);
    }
}
