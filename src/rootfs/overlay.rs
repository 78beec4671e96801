//! Kernel overlayfs with `userxattr` (Linux >= 5.11 in a user namespace).

use super::{RootfsDriver, empty_sibling};
use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
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

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("path {} contains a NUL byte", p.display()))
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

struct Fd(libc::c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

fn fsconfig(fd: &Fd, cmd: libc::c_uint, key: Option<&str>, value: Option<&CString>) -> std::io::Result<()> {
    let k = key.map(|k| CString::new(k).unwrap());
    let kp = k.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
    let vp = value.map_or(std::ptr::null(), |v| v.as_ptr());
    let r = unsafe { libc::syscall(libc::SYS_fsconfig, fd.0, cmd, kp, vp, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Mounts an overlay with the new mount API: one `lowerdir+` per layer (Linux >= 6.8), so the
/// number of layers is not limited by the 4 KiB mount data page.
fn mount_new_api(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<()> {
    let fs = CString::new("overlay").unwrap();
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("fsopen(overlay) failed");
    }
    let fd = Fd(fd as libc::c_int);
    for l in lowers {
        fsconfig(&fd, FSCONFIG_SET_STRING, Some("lowerdir+"), Some(&cstr(l)?))
            .with_context(|| format!("fsconfig lowerdir+={} failed (needs Linux 6.8)", l.display()))?;
    }
    if let Some((u, w)) = upper {
        fsconfig(&fd, FSCONFIG_SET_STRING, Some("upperdir"), Some(&cstr(u)?)).context("fsconfig upperdir failed")?;
        fsconfig(&fd, FSCONFIG_SET_STRING, Some("workdir"), Some(&cstr(w)?)).context("fsconfig workdir failed")?;
        fsconfig(&fd, FSCONFIG_SET_FLAG, Some("volatile"), None).context("fsconfig volatile failed")?;
    }
    fsconfig(&fd, FSCONFIG_SET_FLAG, Some("userxattr"), None).context("fsconfig userxattr failed")?;
    fsconfig(&fd, FSCONFIG_CMD_CREATE, None, None).context("creating the overlay superblock failed")?;
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fd.0, FSMOUNT_CLOEXEC, 0) };
    if m < 0 {
        return Err(std::io::Error::last_os_error()).context("fsmount failed");
    }
    let m = Fd(m as libc::c_int);
    let t = cstr(target)?;
    let empty = CString::new("").unwrap();
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            m.0,
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("move_mount to {} failed", target.display()));
    }
    Ok(())
}

fn mount_overlay(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<()> {
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
        return mount_new_api(lowers, upper, target);
    }
    let flags = if upper.is_none() {
        nix::mount::MsFlags::MS_RDONLY
    } else {
        nix::mount::MsFlags::empty()
    };
    nix::mount::mount(Some("overlay"), target, Some("overlay"), flags, Some(data.as_str())).map_err(|e| {
        let hint = match e {
            nix::errno::Errno::EPERM => " (not uid 0 in kiln's user namespace?)",
            nix::errno::Errno::EINVAL => " (is the upper dir on overlayfs, or tmpfs before Linux 6.6?)",
            _ => "",
        };
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
        mount_overlay(&lowers, Some((upper, work)), target)
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
    mount_overlay(&l, None, target)
}

/// Unmounts `target` (lazily if it is still busy).
pub fn umount(target: &Path) -> Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("cannot unmount {}", target.display())),
        Err(e) => Err(e).with_context(|| format!("cannot unmount {}", target.display())),
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
