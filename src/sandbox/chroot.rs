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
use crate::fsutil::root::{fd_path, remove_tree_at};
use crate::fsutil::{Follow, Root};
use anyhow::{Context, Result, bail};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

/// Everything is held as (directory fd, name): the step may rename or replace paths of the
/// rootfs while it runs, and undoing must act on what kiln made, never on a path a symlink the
/// step planted now leads to.
enum Undo {
    /// Remove an entry kiln created (a tree when it is a directory).
    Remove { dir: OwnedFd, name: CString },
    /// Copy a read-write bind's content back to its source, then remove it.
    CopyBack { dir: OwnedFd, name: CString, src: PathBuf },
    /// Put back what was at a bind target (moved aside in the same directory).
    Restore {
        dir: OwnedFd,
        aside: CString,
        orig: CString,
    },
}

/// What [`prepare`] put into a rootfs; [`Prepared::undo`] takes it away again.
pub struct Prepared {
    undo: Vec<Undo>,
    /// (dir, atime, mtime) of every directory touched, in the order first seen.
    times: Vec<(OwnedFd, (u64, u64), libc::timespec, libc::timespec)>,
}

/// [`crate::fsutil::cvt`] for calls whose result is only success or failure.
fn cvt(r: libc::c_int) -> std::io::Result<()> {
    crate::fsutil::cvt(r).map(drop)
}

fn fstat(fd: BorrowedFd<'_>) -> std::io::Result<libc::stat> {
    // SAFETY: `st` is a plain C struct the kernel fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; fstat only writes into it.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<libc::stat> {
    // SAFETY: as above; `name` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a valid out-pointer.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the fd is fresh.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn remember_dir(p: &mut Prepared, dir: OwnedFd) {
    let Ok(st) = fstat(dir.as_fd()) else { return };
    let id = (st.st_dev, st.st_ino);
    if p.times.iter().any(|(_, i, _, _)| *i == id) {
        return;
    }
    let at = libc::timespec {
        tv_sec: st.st_atime,
        tv_nsec: st.st_atime_nsec,
    };
    let mt = libc::timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec,
    };
    p.times.push((dir, id, at, mt));
}

fn set_times(dir: BorrowedFd<'_>, at: libc::timespec, mt: libc::timespec) -> std::io::Result<()> {
    let path = CString::new(fd_path(dir).as_os_str().as_bytes()).expect("no NUL");
    let ts = [at, mt];
    // SAFETY: /proc/self/fd/N names exactly the directory of the fd.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), ts.as_ptr(), 0) })
}

/// Copies a file or a tree (owners, modes, symlinks; devices and FIFOs are skipped) from
/// `(sdir, sname)` to `(ddir, dname)`, by fds on both sides: no symlink is ever followed.
fn copy_tree_at(sdir: BorrowedFd<'_>, sname: &CStr, ddir: BorrowedFd<'_>, dname: &CStr, depth: usize) -> Result<()> {
    let show = || String::from_utf8_lossy(sname.to_bytes()).to_string();
    if depth > 4096 {
        bail!("{} is nested too deeply to copy", show());
    }
    let st = lstat_at(sdir, sname).with_context(|| format!("cannot read {}", show()))?;
    let (mode, kind) = (st.st_mode & 0o7777, st.st_mode & libc::S_IFMT);
    match kind {
        libc::S_IFDIR => {
            // SAFETY: `dname` is NUL-terminated.
            cvt(unsafe { libc::mkdirat(ddir.as_raw_fd(), dname.as_ptr(), 0o700) })
                .with_context(|| format!("cannot create the directory {}", show()))?;
            let src = openat(sdir, sname, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
            let dst = openat(ddir, dname, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
            let mut d = nix::dir::Dir::from_fd(src.try_clone()?).context("cannot read a directory")?;
            let names: Vec<CString> = d
                .iter()
                .flatten()
                .map(|e| e.file_name().to_owned())
                .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
                .collect();
            for n in names {
                copy_tree_at(src.as_fd(), &n, dst.as_fd(), &n, depth + 1)?;
            }
        }
        libc::S_IFLNK => {
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::readlinkat(sdir.as_raw_fd(), sname.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot read the link {}", show()));
            }
            buf.truncate(n as usize);
            let t = CString::new(buf).context("a link target with a NUL byte")?;
            // SAFETY: both strings are NUL-terminated.
            cvt(unsafe { libc::symlinkat(t.as_ptr(), ddir.as_raw_fd(), dname.as_ptr()) })
                .with_context(|| format!("cannot create the link {}", show()))?;
        }
        libc::S_IFREG => {
            let src = openat(sdir, sname, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)
                .with_context(|| format!("cannot open {}", show()))?;
            let dst = openat(
                ddir,
                dname,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )
            .with_context(|| format!("cannot create {}", show()))?;
            std::io::copy(&mut std::fs::File::from(src), &mut std::fs::File::from(dst))
                .with_context(|| format!("cannot copy {}", show()))?;
        }
        _ => return Ok(()),
    }
    // SAFETY: `dname` is NUL-terminated; AT_SYMLINK_NOFOLLOW acts on the entry itself.
    let _ = unsafe {
        libc::fchownat(
            ddir.as_raw_fd(),
            dname.as_ptr(),
            st.st_uid,
            st.st_gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if kind != libc::S_IFLNK
        && let Ok(fd) = openat(ddir, dname, libc::O_PATH | libc::O_NOFOLLOW, 0)
    {
        let _ = crate::fsutil::root::chmod_fd(fd.as_fd(), mode);
    }
    Ok(())
}

/// (parent fd, name) of a host path of kiln's own (a cache or context dir).
fn host_parent(p: &Path) -> Result<(OwnedFd, CString)> {
    let parent = p.parent().unwrap_or(Path::new("/"));
    let name = p.file_name().context("a mount source has no name")?;
    let dir = Root::open(parent).with_context(|| format!("cannot open {}", parent.display()))?;
    Ok((dir.as_fd().try_clone_to_owned()?, CString::new(name.as_bytes())?))
}

impl Prepared {
    /// Makes `path` (inside the rootfs, symlinks followed inside it) and its missing parents,
    /// recording the directory whose time changes and what to remove afterwards. Returns the
    /// (parent, name) of the object and whether it was created.
    fn create(&mut self, root: &Root, path: &str, dir: bool) -> Result<(OwnedFd, CString, bool)> {
        // The first missing component's directory is the one whose mtime changes.
        let mut prefix = PathBuf::from("/");
        for c in Path::new(path).components().skip(1) {
            prefix.push(c);
            // A link to a missing directory: mkdir_all below makes its target's parents.
            let Ok(l) = root.locate(&prefix, Follow::All) else {
                break;
            };
            if let Some(n) = &l.name
                && lstat_at(l.dir.as_fd(), n).is_err()
            {
                remember_dir(self, l.dir);
                break;
            }
        }
        let made = if dir {
            root.mkdir_all(path, 0o755).map(|(_, m)| m)
        } else {
            root.touch(path, 0o644).map(|(_, m)| m)
        }
        .with_context(|| format!("cannot create {path} in the rootfs"))?;
        // Removing the topmost created entry takes everything below with it.
        if let Some(top) = made.first() {
            let l = root.locate(top, Follow::Never)?;
            let name = l.name.context("created the root?")?;
            self.undo.push(Undo::Remove { dir: l.dir, name });
        }
        let l = root.locate(path, Follow::All)?;
        let name = l.name.context("a mount target is the rootfs itself")?;
        Ok((l.dir, name, !made.is_empty()))
    }
}

/// Puts /dev nodes, /etc files and the step's mounts into `spec.rootfs` (see the module doc).
pub fn prepare(spec: &RunSpec, hostname: &str) -> Result<Prepared> {
    if spec.network != Network::Host {
        bail!(
            "RUN --network=none needs a network namespace, which chroot isolation cannot create here \
             (the container runtime forbids unshare); drop --network=none or allow unshare \
             (--security-opt seccomp=unconfined)"
        );
    }
    let root = Root::open(&spec.rootfs).with_context(|| format!("cannot open the rootfs {}", spec.rootfs.display()))?;
    let mut p = Prepared {
        undo: Vec::new(),
        times: Vec::new(),
    };
    let r = (|| -> Result<()> {
        let (_, _, _) = p.create(&root, "/dev", true)?;
        let dev = root.sub("/dev").context("cannot open /dev in the rootfs")?;
        remember_dir(&mut p, dev.as_fd().try_clone_to_owned()?);
        for (name, major, minor) in DEVICES {
            if dev.exists(name) {
                continue;
            }
            dev.mknod(name, libc::S_IFCHR | 0o666, libc::makedev(major, minor))
                .with_context(|| format!("cannot create the device node /dev/{name} (needs CAP_MKNOD)"))?;
            // mknod applies the umask
            let _ = dev.chmod(name, 0o666);
            p.undo.push(Undo::Remove {
                dir: dev.as_fd().try_clone_to_owned()?,
                name: CString::new(name)?,
            });
        }
        let (shm_dir, shm, made) = p.create(&root, "/dev/shm", true)?;
        if made && let Ok(fd) = openat(shm_dir.as_fd(), &shm, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            let _ = crate::fsutil::root::chmod_fd(fd.as_fd(), 0o1777);
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
            let (dir, name, made) = p.create(&root, path, false)?;
            if made {
                use std::io::Write;
                let f = openat(dir.as_fd(), &name, libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW, 0)
                    .with_context(|| format!("cannot write {path}"))?;
                std::fs::File::from(f)
                    .write_all(content.as_bytes())
                    .with_context(|| format!("cannot write {path}"))?;
                if let Ok(fd) = openat(dir.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                    let _ = crate::fsutil::root::chmod_fd(fd.as_fd(), 0o644);
                }
            }
        }
        for m in &spec.mounts {
            let (dest, src, readonly) = match m {
                MountSpec::Bind { src, dest, readonly } => (dest, Some(src), *readonly),
                MountSpec::Tmpfs { dest, .. } => (dest, None, true),
            };
            let parent = Path::new(dest)
                .parent()
                .unwrap_or(Path::new("/"))
                .to_string_lossy()
                .to_string();
            let dir = if Path::new(&parent) == Path::new("/") {
                root.as_fd().try_clone_to_owned()?
            } else {
                let (pdir, pname, _) = p.create(&root, &parent, true)?;
                openat(
                    pdir.as_fd(),
                    &pname,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .with_context(|| format!("cannot open {parent} in the rootfs"))?
            };
            let name = CString::new(
                Path::new(dest)
                    .file_name()
                    .with_context(|| format!("invalid mount target {dest}"))?
                    .as_bytes(),
            )?;
            remember_dir(&mut p, dir.try_clone()?);
            if lstat_at(dir.as_fd(), &name).is_ok() {
                let aside = CString::new(format!(".kiln-aside-{}-{}", std::process::id(), name.to_string_lossy()))?;
                // SAFETY: both names are NUL-terminated.
                cvt(unsafe { libc::renameat(dir.as_raw_fd(), name.as_ptr(), dir.as_raw_fd(), aside.as_ptr()) })
                    .with_context(|| format!("cannot move {dest} aside"))?;
                p.undo.push(Undo::Restore {
                    dir: dir.try_clone()?,
                    aside,
                    orig: name.clone(),
                });
            }
            match src {
                Some(src) => {
                    let (sdir, sname) = host_parent(src)?;
                    copy_tree_at(sdir.as_fd(), &sname, dir.as_fd(), &name, 0)
                        .with_context(|| format!("cannot place the mount {dest} (chroot isolation copies it in)"))?
                }
                // SAFETY: `name` is NUL-terminated.
                None => cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) })
                    .with_context(|| format!("cannot create {dest}"))?,
            }
            match (src, readonly) {
                (Some(src), false) if src.is_dir() => p.undo.push(Undo::CopyBack {
                    dir,
                    name,
                    src: src.clone(),
                }),
                _ => p.undo.push(Undo::Remove { dir, name }),
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
        let shown = |n: &CStr| n.to_string_lossy().to_string();
        for u in std::mem::take(&mut self.undo).into_iter().rev() {
            match u {
                Undo::Remove { dir, name } => {
                    if let Err(e) = remove_tree_at(dir.as_fd(), &name) {
                        note(format!("cannot remove {}: {e}", shown(&name)));
                    }
                }
                Undo::CopyBack { dir, name, src } => {
                    // The step may have replaced the cache dir itself with a symlink (to `/`, say)
                    // or a FIFO: only a real directory is taken back, else the cache stays as it
                    // was (a symlink copied back would later be bind-mounted, followed, by a
                    // namespace rung).
                    if !lstat_at(dir.as_fd(), &name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
                        note(format!(
                            "the step replaced the cache mount {} with something that is not a directory; the cache keeps its previous content",
                            shown(&name)
                        ));
                        let _ = remove_tree_at(dir.as_fd(), &name);
                        continue;
                    }
                    let tmp = src.with_file_name(format!(
                        ".{}.kiln-new",
                        src.file_name()
                            .map(|n| n.to_string_lossy().to_string())
                            .unwrap_or_default()
                    ));
                    let r = host_parent(&tmp).and_then(|(tdir, tname)| {
                        let _ = remove_tree_at(tdir.as_fd(), &tname);
                        copy_tree_at(dir.as_fd(), &name, tdir.as_fd(), &tname, 0)
                    });
                    // The cache dir keeps its own mode and owner (the step's chmod 0777 or
                    // chown of the mount point does not carry over to the host).
                    if r.is_ok()
                        && let Ok(md) = std::fs::symlink_metadata(&src)
                    {
                        use std::os::unix::fs::{MetadataExt, PermissionsExt};
                        let _ = std::os::unix::fs::lchown(&tmp, Some(md.uid()), Some(md.gid()));
                        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(md.mode() & 0o7777));
                    }
                    match r {
                        Ok(()) => {
                            if let Ok((sdir, sname)) = host_parent(&src) {
                                let _ = remove_tree_at(sdir.as_fd(), &sname);
                            }
                            if let Err(e) = std::fs::rename(&tmp, &src) {
                                note(format!("cannot update the cache {}: {e}", src.display()));
                            }
                        }
                        Err(e) => note(format!("cannot copy the cache back to {}: {e:#}", src.display())),
                    }
                    if let Err(e) = remove_tree_at(dir.as_fd(), &name) {
                        note(format!("cannot remove {}: {e}", shown(&name)));
                    }
                }
                Undo::Restore { dir, aside, orig } => {
                    let _ = remove_tree_at(dir.as_fd(), &orig);
                    if let Err(e) =
                        // SAFETY: both names are NUL-terminated and `dir` is an open directory fd.
                        cvt(unsafe {
                            libc::renameat(dir.as_raw_fd(), aside.as_ptr(), dir.as_raw_fd(), orig.as_ptr())
                        })
                    {
                        note(format!("cannot put {} back: {e}", shown(&orig)));
                    }
                }
            }
        }
        for (d, _, at, mt) in std::mem::take(&mut self.times).into_iter().rev() {
            let _ = set_times(d.as_fd(), at, mt);
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

    /// Hostile image symlinks (/dev, /etc/hosts to a host dir) are followed inside the rootfs;
    /// a step that swaps a placed mount's parent for a symlink to a host dir makes undo delete
    /// nothing there.
    #[test]
    fn hostile_symlinks_and_swaps_stay_inside() {
        if !nix::unistd::geteuid().is_root() {
            return; // mknod needs CAP_MKNOD
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(host.join("m")).unwrap();
        std::fs::write(host.join("m/t"), "precious").unwrap();
        std::os::unix::fs::symlink(&host, root.join("dev")).unwrap();
        std::os::unix::fs::symlink(host.join("hosts"), root.join("etc/hosts")).unwrap();
        let src = t.path().join("f");
        std::fs::write(&src, "ctx").unwrap();
        let spec = RunSpec {
            rootfs: root.clone(),
            args: vec!["true".into()],
            mounts: vec![MountSpec::Bind {
                src,
                dest: "/mnt/t".into(),
                readonly: true,
            }],
            ..Default::default()
        };
        let mut p = prepare(&spec, "kiln").unwrap();
        assert!(
            !host.join("null").exists() && !host.join("hosts").exists(),
            "nothing made outside"
        );
        let inside = root.join(host.strip_prefix("/").unwrap());
        assert!(inside.join("null").exists() && inside.join("hosts").exists());
        // the step: mv /mnt /mnt.old && ln -s HOST/m /mnt
        std::fs::rename(root.join("mnt"), root.join("mnt.old")).unwrap();
        std::os::unix::fs::symlink(host.join("m"), root.join("mnt")).unwrap();
        assert_eq!(p.undo(), None);
        assert_eq!(std::fs::read_to_string(host.join("m/t")).unwrap(), "precious");
        assert!(
            !root.join("mnt.old/t").exists(),
            "kiln's own placement was removed where it went"
        );
    }

    /// A step that replaces its cache mount with a symlink (to `/`) or makes it 0777 does not
    /// turn the host cache dir into that link or that mode.
    #[test]
    fn cache_copy_back_takes_only_a_real_directory() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return; // mknod needs CAP_MKNOD
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let src = t.path().join("cache");
        std::fs::create_dir(&src).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(src.join("kept"), "k").unwrap();
        let spec = RunSpec {
            rootfs: root.clone(),
            args: vec!["true".into()],
            mounts: vec![MountSpec::Bind {
                src: src.clone(),
                dest: "/c".into(),
                readonly: false,
            }],
            ..Default::default()
        };
        let mut p = prepare(&spec, "kiln").unwrap();
        std::fs::remove_dir_all(root.join("c")).unwrap();
        std::os::unix::fs::symlink("/", root.join("c")).unwrap();
        assert!(p.undo().is_some_and(|e| e.contains("not a directory")));
        let md = std::fs::symlink_metadata(&src).unwrap();
        assert!(md.is_dir() && src.join("kept").exists());
        // A real directory comes back, with the cache's own mode.
        let mut p = prepare(&spec, "kiln").unwrap();
        std::fs::write(root.join("c/new"), "n").unwrap();
        std::fs::set_permissions(root.join("c"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(p.undo(), None);
        assert!(src.join("new").exists());
        assert_eq!(std::fs::metadata(&src).unwrap().permissions().mode() & 0o7777, 0o755);
    }
}
