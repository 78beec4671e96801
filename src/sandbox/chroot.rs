//! Chroot isolation (rung 3 of the ladder, see [`super::probe`]): root in a container whose
//! runtime forbids `unshare` and `mount`. The step's rootfs is a plain directory (the copy
//! driver's snapshot), so everything a mount would provide is put there as files before the
//! step and taken away afterwards, leaving the rootfs exactly as the step left it:
//!
//! - /dev: the device nodes made with mknod (null, zero, full, random, urandom, tty); no
//!   /dev/pts, /dev/shm is a plain directory;
//! - /proc and /sys: not provided (no mount is allowed; a copy of the host's would be wrong);
//! - /etc/resolv.conf, /etc/hosts, /etc/hostname: written only when the image has none;
//! - `RUN --mount` binds and tmpfs: copied in (a file or tree) and removed after; read-write
//!   binds (cache mounts) are copied back to their source first. Whatever was at the target
//!   is moved aside and put back.
//!
//! Removing the placeholders restores the times of the directories they were made in, so the
//! snapshot comparison sees no change there.

use super::{MountSpec, Network, RunSpec};
use crate::fsutil::resolve_in_root;
use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Device nodes made in the step's /dev: (name, major, minor).
pub const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

enum Undo {
    /// Remove a path kiln created (a tree when it is a directory).
    Remove(PathBuf),
    /// Copy a read-write bind's content back to its source, then remove it.
    CopyBack { placed: PathBuf, src: PathBuf },
    /// Put back what was at a bind target (moved to `aside`).
    Restore { aside: PathBuf, orig: PathBuf },
}

/// What [`prepare`] put into a rootfs; [`Prepared::undo`] takes it away again.
pub struct Prepared {
    undo: Vec<Undo>,
    /// (dir, atime, mtime) of every directory touched, in the order first seen.
    times: Vec<(PathBuf, filetime::FileTime, filetime::FileTime)>,
}

fn remember_dir(times: &mut Vec<(PathBuf, filetime::FileTime, filetime::FileTime)>, dir: &Path) {
    if times.iter().any(|(d, _, _)| d == dir) {
        return;
    }
    if let Ok(md) = std::fs::symlink_metadata(dir) {
        times.push((
            dir.to_path_buf(),
            filetime::FileTime::from_last_access_time(&md),
            filetime::FileTime::from_last_modification_time(&md),
        ));
    }
}

fn mknod(p: &Path, mode: u32, dev: libc::dev_t) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies a file or a tree (owners, modes, symlinks; devices are skipped).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    let ft = md.file_type();
    if ft.is_dir() {
        std::fs::create_dir(dst).with_context(|| format!("cannot create {}", dst.display()))?;
        for e in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
            .with_context(|| format!("cannot create {}", dst.display()))?;
    } else if ft.is_file() {
        std::fs::copy(src, dst).with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    } else {
        return Ok(());
    }
    let _ = std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()));
    if !ft.is_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777));
    }
    Ok(())
}

/// Creates `host` (a path under `root`) and its missing parents; records what to undo.
fn create_with_parents(root: &Path, host: &Path, dir: bool, p: &mut Prepared) -> Result<bool> {
    if std::fs::symlink_metadata(host).is_ok() {
        return Ok(false);
    }
    let rel = host.strip_prefix(root).context("a mount point escapes the rootfs")?;
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let parent = cur.clone();
        cur.push(c);
        if std::fs::symlink_metadata(&cur).is_ok() {
            continue;
        }
        remember_dir(&mut p.times, &parent);
        let last = i + 1 == comps.len();
        if last && !dir {
            std::fs::File::create(&cur).with_context(|| format!("cannot create {}", cur.display()))?;
        } else {
            std::fs::create_dir(&cur).with_context(|| format!("cannot create {}", cur.display()))?;
        }
        p.undo.push(Undo::Remove(cur.clone()));
        if !last {
            // Everything below goes with this directory.
            std::fs::create_dir_all(host.parent().unwrap_or(host)).ok();
            if !dir {
                std::fs::File::create(host).with_context(|| format!("cannot create {}", host.display()))?;
            } else {
                std::fs::create_dir_all(host).with_context(|| format!("cannot create {}", host.display()))?;
            }
            return Ok(true);
        }
    }
    Ok(true)
}

/// Puts /dev nodes, /etc files and the step's mounts into `spec.rootfs` (see the module doc).
pub fn prepare(spec: &RunSpec, hostname: &str) -> Result<Prepared> {
    if spec.network == Network::None {
        bail!(
            "RUN --network=none needs a network namespace, which chroot isolation cannot create here \
             (the container runtime forbids unshare); drop --network=none or allow unshare \
             (--security-opt seccomp=unconfined)"
        );
    }
    let root = &spec.rootfs;
    let mut p = Prepared {
        undo: Vec::new(),
        times: Vec::new(),
    };
    let r = (|| -> Result<()> {
        let dev = resolve_in_root(root, Path::new("/dev"), true)?;
        create_with_parents(root, &dev, true, &mut p)?;
        remember_dir(&mut p.times, &dev);
        for (name, major, minor) in DEVICES {
            let n = dev.join(name);
            if std::fs::symlink_metadata(&n).is_ok() {
                continue;
            }
            mknod(&n, libc::S_IFCHR | 0o666, libc::makedev(major, minor))
                .with_context(|| format!("cannot create the device node /dev/{name} (needs CAP_MKNOD)"))?;
            // mknod applies the umask
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&n, std::fs::Permissions::from_mode(0o666));
            p.undo.push(Undo::Remove(n));
        }
        let shm = dev.join("shm");
        if create_with_parents(root, &shm, true, &mut p)? {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o1777));
        }
        let etc_files = [
            (
                "/etc/resolv.conf",
                std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
            ("/etc/hosts", super::mounts::hosts_file(Network::Host, hostname)),
            ("/etc/hostname", format!("{hostname}\n")),
        ];
        for (path, content) in etc_files {
            let host = resolve_in_root(root, Path::new(path), true)?;
            if create_with_parents(root, &host, false, &mut p)? {
                std::fs::write(&host, content).with_context(|| format!("cannot write {}", host.display()))?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644));
            }
        }
        for m in &spec.mounts {
            let (dest, src, readonly) = match m {
                MountSpec::Bind { src, dest, readonly } => (dest, Some(src), *readonly),
                MountSpec::Tmpfs { dest, .. } => (dest, None, true),
            };
            let host = resolve_in_root(root, Path::new(dest), true)?;
            if std::fs::symlink_metadata(&host).is_ok() {
                let parent = host.parent().unwrap_or(root);
                remember_dir(&mut p.times, parent);
                let aside = parent.join(format!(
                    ".kiln-aside-{}-{}",
                    std::process::id(),
                    host.file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default()
                ));
                std::fs::rename(&host, &aside).with_context(|| format!("cannot move {} aside", host.display()))?;
                p.undo.push(Undo::Restore {
                    aside,
                    orig: host.clone(),
                });
            }
            if let Some(parent) = host.parent() {
                if std::fs::symlink_metadata(parent).is_err() {
                    create_with_parents(root, parent, true, &mut p)?;
                }
                remember_dir(&mut p.times, parent);
            }
            match src {
                Some(src) => copy_tree(src, &host)
                    .with_context(|| format!("cannot place the mount {} (chroot isolation copies it in)", dest))?,
                None => std::fs::create_dir(&host).with_context(|| format!("cannot create {}", host.display()))?,
            }
            match (src, readonly) {
                (Some(src), false) if src.is_dir() => p.undo.push(Undo::CopyBack {
                    placed: host,
                    src: src.clone(),
                }),
                _ => p.undo.push(Undo::Remove(host)),
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        p.undo();
        return Err(e);
    }
    Ok(p)
}

impl Prepared {
    /// Removes what [`prepare`] created, copies cache mounts back, restores what was moved
    /// aside and the times of the directories involved. Best effort: reports the first error.
    pub fn undo(&mut self) -> Option<String> {
        let mut first = None;
        let mut note = |e: String| {
            if first.is_none() {
                first = Some(e);
            }
        };
        for u in std::mem::take(&mut self.undo).into_iter().rev() {
            match u {
                Undo::Remove(p) => {
                    if let Err(e) = remove_any(&p) {
                        note(format!("cannot remove {}: {e}", p.display()));
                    }
                }
                Undo::CopyBack { placed, src } => {
                    let tmp = src.with_file_name(format!(
                        ".{}.kiln-new",
                        src.file_name()
                            .map(|n| n.to_string_lossy().to_string())
                            .unwrap_or_default()
                    ));
                    let _ = remove_any(&tmp);
                    match copy_tree(&placed, &tmp) {
                        Ok(()) => {
                            let _ = remove_any(&src);
                            if let Err(e) = std::fs::rename(&tmp, &src) {
                                note(format!("cannot update the cache {}: {e}", src.display()));
                            }
                        }
                        Err(e) => note(format!("cannot copy the cache back to {}: {e:#}", src.display())),
                    }
                    if let Err(e) = remove_any(&placed) {
                        note(format!("cannot remove {}: {e}", placed.display()));
                    }
                }
                Undo::Restore { aside, orig } => {
                    let _ = remove_any(&orig);
                    if let Err(e) = std::fs::rename(&aside, &orig) {
                        note(format!("cannot put {} back: {e}", orig.display()));
                    }
                }
            }
        }
        for (d, at, mt) in std::mem::take(&mut self.times).into_iter().rev() {
            let _ = filetime::set_symlink_file_times(&d, at, mt);
        }
        first
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.undo.is_empty() || !self.times.is_empty() {
            self.undo();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn prepare_and_undo_leave_the_rootfs_as_it_was() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), "mine\n").unwrap();
        std::fs::create_dir_all(root.join("cache")).unwrap();
        std::fs::write(root.join("cache/old"), "o").unwrap();
        let src = t.path().join("cachesrc");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("c"), "c").unwrap();
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        for d in [&root, &root.join("etc"), &root.join("cache")] {
            filetime::set_file_times(d, old, old).unwrap();
        }
        let spec = RunSpec {
            rootfs: root.clone(),
            args: vec!["true".into()],
            mounts: vec![
                MountSpec::Bind {
                    src: src.clone(),
                    dest: "/cache".into(),
                    readonly: false,
                },
                MountSpec::Tmpfs {
                    dest: "/run/x".into(),
                    size: None,
                    mode: None,
                },
            ],
            ..Default::default()
        };
        let root_is = nix::unistd::geteuid().is_root();
        let mut p = match prepare(&spec, "kiln") {
            Ok(p) => p,
            Err(e) => {
                assert!(!root_is, "{e:#}");
                return; // mknod needs CAP_MKNOD
            }
        };
        assert_eq!(std::fs::read_to_string(root.join("etc/hosts")).unwrap(), "mine\n");
        assert!(root.join("etc/resolv.conf").exists() && root.join("etc/hostname").exists());
        assert_eq!(
            std::fs::symlink_metadata(root.join("dev/null")).unwrap().rdev(),
            libc::makedev(1, 3)
        );
        assert_eq!(std::fs::read_to_string(root.join("cache/c")).unwrap(), "c");
        assert!(!root.join("cache/old").exists() && root.join("run/x").is_dir());
        std::fs::write(root.join("cache/new"), "n").unwrap();
        assert_eq!(p.undo(), None);
        let mut names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["cache", "etc"]);
        assert!(root.join("cache/old").exists() && !root.join("cache/c").exists());
        assert!(!root.join("etc/resolv.conf").exists());
        assert!(src.join("new").exists(), "cache written back");
        for d in [&root, &root.join("etc"), &root.join("cache")] {
            assert_eq!(std::fs::metadata(d).unwrap().mtime(), 1_000_000, "{}", d.display());
        }
    }
}
