//! The root handle: the one way kiln touches a path inside a root (a step's rootfs, an upper
//! dir, an unpacked layer, a build-context copy).
//!
//! A [`Root`] is a directory fd. Every path given to it is resolved *by the kernel, relative
//! to that fd*, as if the directory were `/`: `..` stops at it, absolute symlink targets restart
//! at it, and procfs magic links (`/proc/self/root`, `/proc/*/cwd`, `/proc/*/fd/*`) are refused.
//! Resolution uses `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` where the kernel has it
//! (Linux ≥ 5.6, and not blocked by a seccomp profile), else a component-by-component walk with
//! `O_PATH | O_NOFOLLOW` that keeps an fd per level (so `..` never goes through a directory
//! that was moved away) and has the same semantics (see [`walk`]).
//!
//! Operations resolve the *parent* and act on the last component with `*at` calls that never
//! follow it, unless the operation says otherwise (`open` and `touch` follow a final symlink,
//! inside the root). Nothing here hands a host path string to a call that follows links:
//! between a check and a use the tree may change (a RUN step, another process), and an fd
//! keeps pointing at what was checked.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// Maximum symlinks followed while resolving one path (Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// How symlinks on the way are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Follow every symlink, final component included, inside the root.
    All,
    /// Follow symlinks in the parent components; the final component is used as it is.
    Parents,
    /// Follow none: a symlink among the parent components is an error (ELOOP); the final
    /// component is used as it is. Cleanup uses this, so that a step that replaced a
    /// directory with a symlink never makes kiln act elsewhere.
    Never,
}

/// Where a path resolved to: the directory holding the final component, and its name
/// (`None` when the path is the root itself or ends in `..`: then `dir` is the object).
pub struct Located {
    pub dir: OwnedFd,
    pub name: Option<CString>,
}

impl Located {
    fn name_ptr(&self) -> *const libc::c_char {
        self.name.as_deref().unwrap_or(c".").as_ptr()
    }
}

/// A directory fd through which every path inside it is reached.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    /// Whether to try openat2 (false: the walk only, as on kernels without it).
    openat2: bool,
    /// For messages only; never used to reach a file.
    path: PathBuf,
}

/// What [`Root::mkdir_all`] and [`Root::touch`] created, as paths relative to the root
/// (symlinks resolved), parents first.
pub type Created = Vec<PathBuf>;

use super::cvt;

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn openat_raw(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned fd is fresh and owned by nobody else.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat_raw(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: `st` is a plain C struct the kernel fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a valid out-pointer for fstatat.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

fn readlinkat_raw(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the buffer is valid for `buf.len()` bytes.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn is_procfs(fd: RawFd) -> bool {
    // SAFETY: `st` is a plain C struct the kernel fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; fstatfs only writes into it.
    unsafe { libc::fstatfs(fd, &mut st) == 0 && st.f_type as i64 == PROC_SUPER_MAGIC }
}

/// A symlink in procfs whose target is absolute or names an object (`net:[…]`, `pipe:[…]`)
/// is a magic link (root, cwd, exe, fd/N, ns/*, map_files/*): following it jumps to an object
/// outside any root. Plain procfs symlinks (`self`, `thread-self`, `mounts`, `net`) are relative.
fn is_magic(target: &[u8]) -> bool {
    target.starts_with(b"/") || target.contains(&b':')
}

fn magic_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the path goes through a procfs magic link (such as /proc/self/root), which could leave the root",
    )
}

/// The `/proc/self/fd/N` path of an fd: the kernel resolves it to exactly that object.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Path components as the walk sees them: `..` kept, `.` and `/` dropped.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

// openat2 availability: 0 unknown, 1 works, 2 missing (ENOSYS, or EPERM from a seccomp profile).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

fn force_walk() -> bool {
    static FORCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCE.get_or_init(|| std::env::var_os("KILN_NO_OPENAT2").is_some_and(|v| v == "1"))
}

/// `openat2(dir, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS [| RESOLVE_NO_SYMLINKS])`.
/// `None`: the kernel cannot do it here (use the walk).
fn openat2_in_root(root: &Root, path: &CStr, flags: libc::c_int, no_symlinks: bool) -> Option<io::Result<OwnedFd>> {
    let dir = root.fd.as_raw_fd();
    if !root.openat2 || OPENAT2.load(Ordering::Relaxed) == 2 {
        return None;
    }
    let mut resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    if no_symlinks {
        resolve |= libc::RESOLVE_NO_SYMLINKS;
    }
    // SAFETY: open_how is a plain C struct; zeroed is its valid default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    for _ in 0..16 {
        // SAFETY: `path` is NUL-terminated and `how` lives across the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            OPENAT2.store(1, Ordering::Relaxed);
            // SAFETY: a fresh fd from the kernel.
            return Some(Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // A rename raced with `..` resolution: the kernel asks to retry.
            Some(libc::EAGAIN) => continue,
            Some(libc::ENOSYS) | Some(libc::EPERM) if OPENAT2.load(Ordering::Relaxed) == 0 => {
                OPENAT2.store(2, Ordering::Relaxed);
                return None;
            }
            // RESOLVE_NO_MAGICLINKS refuses with ELOOP; say why.
            Some(libc::ELOOP) if !no_symlinks => return None, // the walk tells a loop from a magic link
            Some(libc::EXDEV) => return Some(Err(magic_error())),
            _ => return Some(Err(e)),
        }
    }
    None
}

/// The resolving walk: a stack of directory fds below the root (one per level, so `..` pops
/// to the fd that was really walked through, never re-resolving a moved directory).
struct Walk<'a> {
    root: &'a Root,
    stack: Vec<(OsString, OwnedFd)>,
    links: usize,
}

impl<'a> Walk<'a> {
    fn new(root: &'a Root) -> Walk<'a> {
        Walk {
            root,
            stack: Vec::new(),
            links: 0,
        }
    }

    fn top(&self) -> RawFd {
        self.stack
            .last()
            .map(|(_, f)| f.as_raw_fd())
            .unwrap_or(self.root.fd.as_raw_fd())
    }

    fn top_owned(&self) -> io::Result<OwnedFd> {
        match self.stack.last() {
            Some((_, f)) => f.try_clone(),
            None => self.root.fd.try_clone(),
        }
    }

    fn rel(&self) -> PathBuf {
        self.stack.iter().map(|(n, _)| n.as_os_str()).collect()
    }

    /// Handles a symlink met at `name` in the current directory: pushes its target.
    fn symlink(&mut self, name: &CStr, pending: &mut Vec<OsString>) -> io::Result<()> {
        self.links += 1;
        if self.links > MAX_SYMLINKS {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let target = readlinkat_raw(self.top(), name)?;
        if is_procfs(self.top()) && is_magic(&target) {
            return Err(magic_error());
        }
        if target.starts_with(b"/") {
            self.stack.clear();
        }
        let mut t = components(Path::new(OsStr::from_bytes(&target)));
        t.reverse();
        pending.extend(t);
        Ok(())
    }

    /// Resolves `path`. With `create`, missing directories on the way (and the final one when
    /// `create_last_dir`) are made with `mode`, and recorded in `created`.
    fn run(
        &mut self,
        path: &Path,
        follow: Follow,
        create: Option<(libc::mode_t, bool)>,
        created: &mut Created,
    ) -> io::Result<Located> {
        let mut pending = components(path);
        pending.reverse();
        loop {
            let Some(c) = pending.pop() else {
                return Ok(Located {
                    dir: self.top_owned()?,
                    name: None,
                });
            };
            if c == ".." {
                self.stack.pop();
                continue;
            }
            let is_last = pending.is_empty();
            let name = cstr(c.as_bytes())?;
            if is_last && follow != Follow::All && create.is_none_or(|(_, last_dir)| !last_dir) {
                return Ok(Located {
                    dir: self.top_owned()?,
                    name: Some(name),
                });
            }
            let st = match fstatat_raw(self.top(), &name, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let want_dir = match create {
                        Some((_, last_dir)) => !is_last || last_dir,
                        None => false,
                    };
                    if !want_dir {
                        if is_last {
                            return Ok(Located {
                                dir: self.top_owned()?,
                                name: Some(name),
                            });
                        }
                        return Err(e);
                    }
                    let mode = create.map(|(m, _)| m).unwrap_or(0o755);
                    // SAFETY: `name` is NUL-terminated.
                    match cvt(unsafe { libc::mkdirat(self.top(), name.as_ptr(), mode) }) {
                        Ok(_) => created.push(self.rel().join(&c)),
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    pending.push(c);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match st.st_mode & libc::S_IFMT {
                libc::S_IFLNK => {
                    if follow == Follow::Never {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    self.symlink(&name, &mut pending)?;
                }
                libc::S_IFDIR => {
                    if is_last && create.is_none() {
                        return Ok(Located {
                            dir: self.top_owned()?,
                            name: Some(name),
                        });
                    }
                    match openat_raw(
                        self.top(),
                        &name,
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    ) {
                        Ok(fd) => self.stack.push((c, fd)),
                        // Swapped for a symlink or a file since the stat: look again.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                            pending.push(c);
                            self.links += 1;
                            if self.links > MAX_SYMLINKS {
                                return Err(e);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ if is_last && create.is_none_or(|(_, last_dir)| !last_dir) => {
                    return Ok(Located {
                        dir: self.top_owned()?,
                        name: Some(name),
                    });
                }
                _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            }
        }
    }
}

impl Root {
    /// Opens `path` (a trusted host path: kiln's own directory) as a root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = cstr(path.as_os_str().as_bytes())?;
        let fd = openat_raw(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(Root {
            fd,
            openat2: !force_walk(),
            path: path.to_path_buf(),
        })
    }

    /// Like [`Root::open`], resolving with the walk only (tests of the fallback).
    pub fn open_walk_only(path: &Path) -> io::Result<Root> {
        let mut r = Root::open(path)?;
        r.openat2 = false;
        Ok(r)
    }

    /// The host path the root was opened at (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `root/inside` for messages.
    pub fn show(&self, inside: impl AsRef<Path>) -> String {
        let p = inside.as_ref();
        let p = p.strip_prefix("/").unwrap_or(p);
        self.path.join(p).display().to_string()
    }

    /// Where `path` resolves to: the parent directory's fd and the final name.
    pub fn locate(&self, path: impl AsRef<Path>, follow: Follow) -> io::Result<Located> {
        let mut path = path.as_ref().to_path_buf();
        let mut links = 0;
        loop {
            let Some((parent, last)) = split_last(&path) else {
                return Walk::new(self).run(&path, follow, None, &mut Vec::new());
            };
            let parent_c = cstr(parent.as_os_str().as_bytes())?;
            let Some(dir) = openat2_in_root(
                self,
                &parent_c,
                libc::O_PATH | libc::O_DIRECTORY,
                follow == Follow::Never,
            ) else {
                return Walk::new(self).run(&path, follow, None, &mut Vec::new());
            };
            let dir = dir?;
            let name = cstr(last.as_bytes())?;
            let is_link = fstatat_raw(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
            if !is_link || follow != Follow::All {
                return Ok(Located { dir, name: Some(name) });
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = readlinkat_raw(dir.as_raw_fd(), &name)?;
            if is_procfs(dir.as_raw_fd()) && is_magic(&target) {
                return Err(magic_error());
            }
            let target = PathBuf::from(OsString::from_vec(target));
            // openat2 walks `parent/../x` through the real parent, not lexically.
            path = if target.is_absolute() {
                target
            } else {
                parent.join(target)
            };
        }
    }

    /// An `O_PATH` fd of the object at `path` (it must exist).
    pub fn resolve(&self, path: impl AsRef<Path>, follow: Follow) -> io::Result<OwnedFd> {
        let l = self.locate(path, follow)?;
        match &l.name {
            None => Ok(l.dir),
            Some(n) => openat_raw(l.dir.as_raw_fd(), n, libc::O_PATH | libc::O_NOFOLLOW, 0),
        }
    }

    /// Opens `path` with `flags` (`libc::O_*`; `O_CREAT` uses `mode`). The final component is
    /// followed inside the root unless `flags` has `O_NOFOLLOW`.
    pub fn open_with(&self, path: impl AsRef<Path>, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let path = path.as_ref();
        let follow = if flags & libc::O_NOFOLLOW != 0 {
            Follow::Parents
        } else {
            Follow::All
        };
        if follow == Follow::All
            && flags & libc::O_CREAT == 0
            && let Some(r) = openat2_in_root(self, &cstr(path.as_os_str().as_bytes())?, flags, false)
        {
            return r.map(File::from);
        }
        let l = self.locate(path, follow)?;
        let fd = match &l.name {
            None => openat_raw(l.dir.as_raw_fd(), c".", flags, mode)?,
            Some(n) => openat_raw(l.dir.as_raw_fd(), n, flags | libc::O_NOFOLLOW, mode)?,
        };
        Ok(File::from(fd))
    }

    /// Opens an existing file for reading.
    pub fn open_file(&self, path: impl AsRef<Path>) -> io::Result<File> {
        self.open_with(path, libc::O_RDONLY, 0)
    }

    /// Reads a configuration file of the image (/etc/passwd, …): a regular file only, opened
    /// without blocking (a FIFO cannot hang kiln), at most `max` bytes (larger is an error).
    /// `Ok(None)`: there is no such file.
    pub fn read_regular(&self, path: impl AsRef<Path>, max: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let path = path.as_ref();
        // The type is checked on an O_PATH fd before anything is opened for reading: opening
        // a device node (an image's /etc/passwd as `c 10 130`) can have a driver's side effects.
        let fd = match self.resolve(path, Follow::All) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if fstat_fd(fd.as_raw_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let p = cstr(fd_path(fd.as_fd()).as_os_str().as_bytes())?;
        // Reopening /proc/self/fd/N reaches exactly the file that was checked.
        let f = match openat_raw(
            libc::AT_FDCWD,
            &p,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        ) {
            Ok(f) => File::from(f),
            // No /proc here: open by name (O_NOFOLLOW), then check again.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.open_with(path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)?
            }
            Err(e) => return Err(e),
        };
        let md = f.metadata()?;
        if !md.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        if md.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is larger than {} bytes", path.display(), max),
            ));
        }
        let mut out = Vec::with_capacity(md.len() as usize);
        f.take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is larger than {} bytes", path.display(), max),
            ));
        }
        Ok(Some(out))
    }

    /// `lstat` (Follow::Parents) or `stat` (Follow::All) of `path`.
    pub fn stat(&self, path: impl AsRef<Path>, follow: Follow) -> io::Result<libc::stat> {
        let l = self.locate(path, follow)?;
        fstatat_raw(
            l.dir.as_raw_fd(),
            l.name.as_deref().unwrap_or(c"."),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// Whether something (anything, a dangling symlink included) is at `path`.
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.stat(path, Follow::Parents).is_ok()
    }

    /// Makes the directory `path` and its missing parents (symlinks followed inside the root);
    /// returns an `O_PATH` fd of it and what was created.
    pub fn mkdir_all(&self, path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<(OwnedFd, Created)> {
        let path = path.as_ref();
        if let Some(Ok(fd)) = openat2_in_root(
            self,
            &cstr(path.as_os_str().as_bytes())?,
            libc::O_PATH | libc::O_DIRECTORY,
            false,
        ) {
            return Ok((fd, Vec::new()));
        }
        let mut created = Vec::new();
        let l = Walk::new(self).run(path, Follow::All, Some((mode, true)), &mut created)?;
        let fd = match &l.name {
            None => l.dir,
            Some(n) => openat_raw(
                l.dir.as_raw_fd(),
                n,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?,
        };
        Ok((fd, created))
    }

    /// Makes sure something exists at `path` (a final symlink is followed inside the root);
    /// when nothing does, creates an empty file (and missing parent directories).
    /// Returns an `O_PATH` fd of what is there and what was created.
    pub fn touch(&self, path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<(OwnedFd, Created)> {
        let path = path.as_ref();
        if let Some(Ok(fd)) = openat2_in_root(self, &cstr(path.as_os_str().as_bytes())?, libc::O_PATH, false) {
            return Ok((fd, Vec::new()));
        }
        let mut created = Vec::new();
        let mut walk = Walk::new(self);
        let l = walk.run(path, Follow::All, Some((0o755, false)), &mut created)?;
        let Some(name) = &l.name else {
            return Ok((l.dir, created));
        };
        match openat_raw(
            l.dir.as_raw_fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            mode,
        ) {
            Ok(_) => created.push(walk.rel().join(OsStr::from_bytes(name.to_bytes()))),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        Ok((
            openat_raw(l.dir.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?,
            created,
        ))
    }

    /// Removes the entry at `path` (a file, symlink, or empty directory), never following a
    /// symlink anywhere on the way (`Follow::Never`): what moved is left alone.
    pub fn remove(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let l = self.locate(path, Follow::Never)?;
        let Some(name) = &l.name else {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        };
        let st = fstatat_raw(l.dir.as_raw_fd(), name, libc::AT_SYMLINK_NOFOLLOW)?;
        let flag = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        // SAFETY: `name` is NUL-terminated.
        cvt(unsafe { libc::unlinkat(l.dir.as_raw_fd(), name.as_ptr(), flag) }).map(|_| ())
    }

    /// Removes `path` and everything below it, one directory fd at a time (no recursion on
    /// the stack, no symlink followed). A missing path is not an error.
    pub fn remove_all(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let l = match self.locate(path, Follow::Never) {
            Ok(l) => l,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(name) = l.name else {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        };
        remove_tree_at(l.dir.as_fd(), &name)
    }

    /// Renames `from` to `to` (neither final component followed).
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let a = self.locate(from, Follow::Parents)?;
        let b = self.locate(to, Follow::Parents)?;
        // SAFETY: both names are NUL-terminated.
        cvt(unsafe { libc::renameat(a.dir.as_raw_fd(), a.name_ptr(), b.dir.as_raw_fd(), b.name_ptr()) }).map(|_| ())
    }

    /// Creates the symlink `link` → `target` (the target is stored as given).
    pub fn symlink(&self, target: impl AsRef<OsStr>, link: impl AsRef<Path>) -> io::Result<()> {
        let l = self.locate(link, Follow::Parents)?;
        let t = cstr(target.as_ref().as_bytes())?;
        // SAFETY: both strings are NUL-terminated.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), l.dir.as_raw_fd(), l.name_ptr()) }).map(|_| ())
    }

    /// Reads the symlink at `path`.
    pub fn readlink(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        let l = self.locate(path, Follow::Parents)?;
        readlinkat_raw(l.dir.as_raw_fd(), l.name.as_deref().unwrap_or(c"."))
            .map(|b| PathBuf::from(OsString::from_vec(b)))
    }

    /// Creates a hard link `new` to `existing` (neither followed).
    pub fn hardlink(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> io::Result<()> {
        let a = self.locate(existing, Follow::Parents)?;
        let b = self.locate(new, Follow::Parents)?;
        // SAFETY: both names are NUL-terminated.
        cvt(unsafe { libc::linkat(a.dir.as_raw_fd(), a.name_ptr(), b.dir.as_raw_fd(), b.name_ptr(), 0) }).map(|_| ())
    }

    /// Changes the owner of `path` (the final component is never followed).
    pub fn chown(&self, path: impl AsRef<Path>, uid: u32, gid: u32) -> io::Result<()> {
        let l = self.locate(path, Follow::Parents)?;
        // SAFETY: the name is NUL-terminated.
        cvt(unsafe { libc::fchownat(l.dir.as_raw_fd(), l.name_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(|_| ())
    }

    /// Changes the mode of `path`; a symlink there is an error (modes of links do not exist,
    /// and chmod(2) would follow it).
    pub fn chmod(&self, path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<()> {
        let fd = self.resolve(path, Follow::Parents)?;
        chmod_fd(fd.as_fd(), mode)
    }

    /// Sets access and modification times of `path` (never following it).
    pub fn utimens(&self, path: impl AsRef<Path>, atime: libc::timespec, mtime: libc::timespec) -> io::Result<()> {
        let l = self.locate(path, Follow::Parents)?;
        let ts = [atime, mtime];
        // SAFETY: `ts` holds two timespecs as utimensat expects.
        cvt(unsafe { libc::utimensat(l.dir.as_raw_fd(), l.name_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
            .map(|_| ())
    }

    /// Makes a device node, FIFO or socket at `path`.
    pub fn mknod(&self, path: impl AsRef<Path>, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        let l = self.locate(path, Follow::Parents)?;
        // SAFETY: the name is NUL-terminated.
        cvt(unsafe { libc::mknodat(l.dir.as_raw_fd(), l.name_ptr(), mode, dev) }).map(|_| ())
    }

    /// The path xattr calls use for `path` (final component not followed):
    /// `/proc/self/fd/N/name`, N the resolved parent. The l*xattr calls follow the magic link of
    /// the parent (to exactly the directory that was resolved) and never the final name; a
    /// symlink there is refused (its target could be anywhere, and links carry no user xattrs).
    fn xattr_path(&self, path: impl AsRef<Path>) -> io::Result<(Located, PathBuf)> {
        let l = self.locate(path, Follow::Parents)?;
        if let Some(n) = &l.name
            && fstatat_raw(l.dir.as_raw_fd(), n, libc::AT_SYMLINK_NOFOLLOW)?.st_mode & libc::S_IFMT == libc::S_IFLNK
        {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let mut p = fd_path(l.dir.as_fd());
        p.push(OsStr::from_bytes(l.name.as_deref().unwrap_or(c".").to_bytes()));
        Ok((l, p))
    }

    /// The value of xattr `name` of `path` (not followed); `None` when it has none.
    pub fn get_xattr(&self, path: impl AsRef<Path>, name: &str) -> io::Result<Option<Vec<u8>>> {
        let (_l, p) = self.xattr_path(path)?;
        match xattr::get(p, name) {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets xattr `name` of `path` (not followed).
    pub fn set_xattr(&self, path: impl AsRef<Path>, name: &str, value: &[u8]) -> io::Result<()> {
        let (_l, p) = self.xattr_path(path)?;
        xattr::set(p, name, value)
    }

    /// Names of the xattrs of `path` (not followed).
    pub fn list_xattrs(&self, path: impl AsRef<Path>) -> io::Result<Vec<OsString>> {
        let (_l, p) = self.xattr_path(path)?;
        Ok(xattr::list(p)?.collect())
    }

    /// Entries of the directory `path` (symlinks followed inside the root): (name, `d_type`).
    pub fn read_dir(&self, path: impl AsRef<Path>, follow: Follow) -> io::Result<Vec<(OsString, u8)>> {
        let fd = self.resolve(path, follow)?;
        let dir = openat_raw(fd.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        read_dir_fd(dir)
    }

    /// The directory at `path` as a root of its own (symlinks followed inside this root).
    pub fn sub(&self, path: impl AsRef<Path>) -> io::Result<Root> {
        let path = path.as_ref();
        let fd = self.resolve(path, Follow::All)?;
        let st = fstat_fd(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Root {
            fd,
            openat2: self.openat2,
            path: PathBuf::from(self.show(path)),
        })
    }

    /// `std::fs::Metadata` of `path`: of a final symlink itself with `Follow::Parents` (like
    /// `lstat`), of what it points to inside the root with `Follow::All`. Taken with `fstat` on
    /// an `O_PATH` fd, so it describes exactly the object that was resolved.
    /// A path that is one plain name is taken in the root's own directory without any
    /// resolution (`openat(O_PATH | O_NOFOLLOW)` of the name, then `fstat`): walking a
    /// directory opened with [`Root::sub`] costs no path walk per entry.
    pub fn metadata(&self, path: impl AsRef<Path>, follow: Follow) -> io::Result<std::fs::Metadata> {
        let path = path.as_ref();
        if follow != Follow::All
            && let Some(name) = Root::single_name(path)
        {
            let fd = openat_raw(
                self.fd.as_raw_fd(),
                &cstr(name.as_bytes())?,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
            )?;
            return File::from(fd).metadata();
        }
        File::from(self.resolve(path, follow)?).metadata()
    }

    /// Creates a new regular file at `path`, open for writing, with `mode` (before the umask):
    /// `O_CREAT | O_EXCL | O_NOFOLLOW`, so anything already there (a symlink included) is
    /// `EEXIST` and never followed; symlinks among the parents are followed inside the root.
    /// A path that is one plain name is created in the root's own directory directly.
    pub fn create_new(&self, path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<File> {
        let path = path.as_ref();
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        if let Some(name) = Root::single_name(path) {
            return openat_raw(self.fd.as_raw_fd(), &cstr(name.as_bytes())?, flags, mode).map(File::from);
        }
        self.open_with(path, flags, mode)
    }

    /// `Some(name)` when `path` is exactly one normal component (`a`, not `/a`, `a/b`, `..`).
    fn single_name(path: &Path) -> Option<&OsStr> {
        let mut c = path.components();
        match (c.next(), c.next()) {
            (Some(Component::Normal(n)), None) if !path.as_os_str().as_bytes().contains(&b'/') => Some(n),
            _ => None,
        }
    }

    /// The path `path` resolves to, relative to the root (no leading `/`, no `.` or `..`, no
    /// symlink left among its components; the final one is followed with `Follow::All`), like
    /// `realpath` inside the root. A missing final component is kept as it is (a dangling final
    /// symlink gives its target); a missing directory on the way is an error (ENOENT).
    /// The result is a name (for matching, messages, bookkeeping), not a capability: the tree
    /// may change afterwards, so reach the object through the other methods, which resolve
    /// again inside the root.
    pub fn canonical(&self, path: impl AsRef<Path>, follow: Follow) -> io::Result<PathBuf> {
        let mut walk = Walk::new(self);
        let l = walk.run(path.as_ref(), follow, None, &mut Vec::new())?;
        let mut p = walk.rel();
        if let Some(n) = &l.name {
            p.push(OsStr::from_bytes(n.to_bytes()));
        }
        Ok(p)
    }

    /// Reads a file at a host path the user named (a Dockerfile given with `-f`, which may be
    /// anywhere): like [`Root::read_regular`], a regular file only, opened without blocking
    /// (a FIFO cannot hang kiln), at most `max` bytes (larger is an error); symlinks are
    /// followed as the host does, since the path is the user's own. Errors name the path.
    pub fn read_host_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let c = cstr(path.as_os_str().as_bytes())?;
        let f = File::from(openat_raw(
            libc::AT_FDCWD,
            &c,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )?);
        let md = f.metadata()?;
        let too_big = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is larger than {} bytes", path.display(), max),
            )
        };
        if !md.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        if md.len() > max {
            return Err(too_big());
        }
        let mut out = Vec::with_capacity(md.len() as usize);
        f.take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(too_big());
        }
        Ok(out)
    }
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn fstat_fd(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: `st` is a plain C struct the kernel fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; fstat only writes into it.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// chmod of the object an fd (an `O_PATH` one included) refers to; refuses symlinks.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    let st = fstat_fd(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let p = cstr(fd_path(fd).as_os_str().as_bytes())?;
    // SAFETY: `p` is NUL-terminated; /proc/self/fd/N resolves to exactly the fd's object.
    cvt(unsafe { libc::fchmodat(libc::AT_FDCWD, p.as_ptr(), mode, 0) }).map(|_| ())
}

fn read_dir_fd(dir: OwnedFd) -> io::Result<Vec<(OsString, u8)>> {
    let mut d = nix::dir::Dir::from_fd(dir).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let t = match e.file_type() {
            Some(nix::dir::Type::Directory) => libc::DT_DIR,
            Some(nix::dir::Type::Symlink) => libc::DT_LNK,
            Some(nix::dir::Type::File) => libc::DT_REG,
            Some(_) => libc::DT_UNKNOWN + 1, // another kind of file: not a directory
            None => libc::DT_UNKNOWN,
        };
        out.push((OsString::from_vec(n.to_vec()), t));
    }
    Ok(out)
}

/// The one tree remover (see [`super::remove`]), here for the callers of the root handle's API.
pub use super::remove::remove_tree_at;

/// `(parent, last)` of a path with a final normal component; `None` for `/`, `.` or a path
/// ending in `..` (resolved as a whole).
fn split_last(path: &Path) -> Option<(PathBuf, OsString)> {
    match path.components().next_back()? {
        Component::Normal(n) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Some((parent.to_path_buf(), n.to_os_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
