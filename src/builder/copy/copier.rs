//! The copier: writes resolved sources into the mounted rootfs through its root handle, with
//! BuildKit's metadata rules (mode, times, xattrs, hardlinks, ownership, `--chmod`).

use super::sources::{Entry, Item, Kind, open_source};
use super::{CopyRequest, Dest};
use crate::dockerfile::Chmod;
use crate::fsutil::root::fd_path;
use crate::fsutil::{Follow, Root};
use anyhow::{Context, Result, bail};
use filetime::FileTime;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xattr::FileExt as _;

// ---------------------------------------------------------------------------------------------
// Copying
// ---------------------------------------------------------------------------------------------

/// Every destination path below is a path inside `root` (the mounted rootfs), reached only
/// through it: symlinks resolve inside the rootfs, whatever the tree holds or comes to hold.
pub(super) struct Copier {
    pub(super) root: Root,
    pub(super) chown: Option<(u32, u32)>,
    pub(super) chmod: Option<Chmod>,
    /// (dev, ino) of multiply-linked source files → their first copy.
    pub(super) links: HashMap<(u64, u64), PathBuf>,
    /// Directories whose metadata is set last (children first, so mtimes stick):
    /// (destination, source root, source, source metadata, keep owner).
    pub(super) dir_fixups: Vec<(PathBuf, Arc<Root>, PathBuf, Metadata, bool)>,
}

/// Plain files copied in parallel are handed out in batches of at most this many files of one
/// destination directory (one directory handle per batch).
pub(super) const BATCH: usize = 64;

pub(super) fn ts(secs: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// Xattrs that are kiln's or the storage driver's own, never copied.
pub(super) fn private_xattr(s: &str) -> bool {
    s.starts_with("user.overlay.")
        || s.starts_with("user.kiln.")
        || s.starts_with("trusted.")
        || s.starts_with("user.fuseoverlayfs.")
        || s == "security.selinux"
}

impl Copier {
    /// Owner of directories kiln creates on the way: the --chown user, else root.
    fn created_owner(&self) -> (u32, u32) {
        self.chown.unwrap_or((0, 0))
    }

    fn owner(&self, md: &Metadata, keep_owner: bool) -> (u32, u32) {
        match self.chown {
            Some(o) => o,
            None if keep_owner => (md.uid(), md.gid()),
            None => (0, 0),
        }
    }

    /// The owner a copy of a source entry gets. Without privilege the source's owner is its
    /// recorded one (see layer::OWNER_XATTR), read through an fd of the source (`fd`: `None`
    /// for a symlink, which carries no such record).
    fn owner_of_source(&self, fd: Option<BorrowedFd<'_>>, md: &Metadata, keep_owner: bool) -> (u32, u32) {
        match self.chown {
            None if keep_owner && crate::layer::owner_emulation() => {
                // A symlink has no record: the on-disk owner (mapped) is used.
                match fd {
                    Some(fd) => crate::layer::effective_owner_fd(fd, md),
                    None => crate::layer::effective_owner(Path::new(""), md),
                }
            }
            _ => self.owner(md, keep_owner),
        }
    }

    /// Resolves a container path and creates the missing directories (0755, created owner);
    /// returns the directory's path inside the root (symlinks resolved).
    pub(super) fn mkdir_all(&self, container_path: &str) -> Result<PathBuf> {
        let (_, created) = self
            .root
            .mkdir_all(container_path, 0o755)
            .with_context(|| format!("creating directory {container_path} in the rootfs"))?;
        let (u, g) = self.created_owner();
        // An octal --chmod applies to the directories the copy creates too (BuildKit passes
        // the mode to its MkdirAll of the destination).
        let mode = match &self.chmod {
            Some(crate::dockerfile::chmod::Chmod::Octal(m)) => *m,
            _ => 0o755,
        };
        for c in &created {
            self.root
                .chmod(c, mode)
                .with_context(|| format!("setting mode {mode:o} on {}", self.root.show(c)))?;
            self.chown_path(c, u, g, false)?;
        }
        self.root
            .canonical(container_path, Follow::All)
            .with_context(|| format!("resolving {container_path} in the rootfs"))
    }

    /// Where a non-directory source named `name` goes: into `target` when it is a directory.
    fn file_target(&self, target: &Path, name: &str) -> PathBuf {
        if self.root.metadata(target, Follow::Parents).is_ok_and(|m| m.is_dir()) {
            target.join(name)
        } else {
            target.to_path_buf()
        }
    }

    pub(super) fn copy_item(&mut self, req: &CopyRequest, item: &Item, dest: &Dest) -> Result<()> {
        let target = self
            .root
            .canonical(&dest.abs, Follow::All)
            .with_context(|| format!("resolving the destination {} in the rootfs", dest.abs))?;
        match &item.kind {
            Kind::Heredoc { content } => {
                let path = self.file_target(&target, &item.name);
                let mode = self.chmod.as_ref().map_or(0o644, |c| c.apply(0o644, false));
                self.write_new_file(&path, &mut content.as_bytes(), mode, None)
            }
            Kind::Remote(d) => {
                if req.unpack == Some(true) {
                    let f =
                        File::open(d.file.path()).with_context(|| format!("reopening the download of {}", d.url))?;
                    if self.extract_reader(f, &item.name, &dest.abs)? {
                        return Ok(());
                    }
                }
                let path = self.file_target(&target, &item.name);
                let mode = self.chmod.as_ref().map_or(0o600, |c| c.apply(0o600, false));
                let mut f =
                    File::open(d.file.path()).with_context(|| format!("reopening the download of {}", d.url))?;
                self.write_new_file(&path, &mut f, mode, d.mtime)
            }
            Kind::Local {
                root,
                inside,
                md,
                entries,
                keep_owner,
            } => {
                let keep_owner = *keep_owner;
                if let Some(parents) = &item.parents_rel {
                    // --parents: recreate the source's directories under dest.
                    let mut cur = target.clone();
                    let n = parents.len();
                    for (i, (comp, src_dir)) in parents.iter().enumerate() {
                        if i + 1 == n && !md.is_dir() {
                            cur = cur.join(comp);
                            break;
                        }
                        let smd = root
                            .metadata(src_dir, Follow::All)
                            .with_context(|| format!("reading {}", root.show(src_dir)))?;
                        cur = self.ensure_dir(root, src_dir, &cur.join(comp), &smd, keep_owner)?;
                    }
                    if md.is_dir() {
                        return self.copy_tree(root, &cur, entries, keep_owner);
                    }
                    return self.copy_entry(root, inside, md, &cur, keep_owner);
                }
                if md.is_dir() {
                    let tdir = match self.root.metadata(&target, Follow::Parents) {
                        Ok(m) if m.is_dir() => target,
                        Ok(_) => bail!(
                            "cannot copy directory {} to {}: it is not a directory",
                            item.name,
                            dest.abs
                        ),
                        Err(_) => self.mkdir_all(&dest.abs)?,
                    };
                    return self.copy_tree(root, &tdir, entries, keep_owner);
                }
                if req.is_add
                    && req.unpack != Some(false)
                    && md.is_file()
                    && self.try_extract(root, inside, md, &dest.abs)?
                {
                    return Ok(());
                }
                let path = self.file_target(&target, &item.name);
                self.copy_entry(root, inside, md, &path, keep_owner)
            }
        }
    }

    /// ADD of a local archive: extract into dest. Returns false when the file is no archive.
    fn try_extract(&mut self, src: &Root, inside: &Path, md: &Metadata, dest_abs: &str) -> Result<bool> {
        let f = open_source(src, inside, md)?;
        let name = inside.file_name().unwrap_or_default().display().to_string();
        self.extract_reader(f, &name, dest_abs)
            .with_context(|| format!("reading {}", src.show(inside)))
    }

    /// Extracts the archive `f` (tar, maybe compressed) into dest; false when it is no archive.
    fn extract_reader(&mut self, f: File, name: &str, dest_abs: &str) -> Result<bool> {
        let Some(reader) = crate::layer::open_archive(io::BufReader::with_capacity(1 << 20, f))? else {
            return Ok(false);
        };
        let dir = self.mkdir_all(dest_abs)?;
        // The archive goes into the directory that was resolved (its fd), not a host path.
        let dir_fd = self
            .root
            .resolve(&dir, Follow::Parents)
            .with_context(|| format!("opening {dest_abs} in the rootfs"))?;
        let opts = crate::layer::ApplyOptions {
            chown: self.chown,
            keep_whiteouts_as_files: true,
        };
        let mut counted = CountingReader { inner: reader, n: 0 };
        crate::layer::apply(&mut counted, &fd_path(dir_fd.as_fd()), &opts)
            .with_context(|| format!("extracting {name} into {dest_abs}"))?;
        // Like Go's archive/tar (Docker), an archive that ends inside a 512-byte block is
        // broken even when every entry could be read.
        io::copy(&mut counted, &mut io::sink()).with_context(|| format!("reading the end of {name}"))?;
        if counted.n % 512 != 0 {
            bail!(
                "extracting {name}: unexpected end of the archive (truncated tar: {} bytes)",
                counted.n
            );
        }
        Ok(true)
    }

    /// A directory for a copied source directory: created, or an existing one (followed when
    /// it is a symlink to a directory inside the root). Its metadata is set at the end.
    fn ensure_dir(
        &mut self,
        src_root: &Arc<Root>,
        src: &Path,
        path: &Path,
        md: &Metadata,
        keep_owner: bool,
    ) -> Result<PathBuf> {
        let fixup = (
            path.to_path_buf(),
            src_root.clone(),
            src.to_path_buf(),
            md.clone(),
            keep_owner,
        );
        match self.root.metadata(path, Follow::Parents) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.root
                    .mkdir_all(path, 0o755)
                    .with_context(|| format!("creating directory {}", self.root.show(path)))?;
                self.dir_fixups.push(fixup);
                Ok(path.to_path_buf())
            }
            Err(e) => Err(e).with_context(|| format!("inspecting {}", self.root.show(path))),
            Ok(m) if m.is_dir() => {
                self.dir_fixups.push(fixup);
                Ok(path.to_path_buf())
            }
            Ok(m) if m.file_type().is_symlink() => {
                let resolved = self.root.canonical(path, Follow::All).ok();
                match resolved {
                    Some(r) if self.root.metadata(&r, Follow::Parents).is_ok_and(|m| m.is_dir()) => Ok(r),
                    _ => bail!(
                        "cannot copy a directory to {}: it is a symlink to a non-directory",
                        self.root.show(path)
                    ),
                }
            }
            Ok(_) => bail!(
                "cannot copy a directory to {}: it exists and is not a directory",
                self.root.show(path)
            ),
        }
    }

    /// Copies walked entries (of `src_root`) below the target directory `tdir`.
    pub(super) fn copy_tree(
        &mut self,
        src_root: &Arc<Root>,
        tdir: &Path,
        entries: &[Entry],
        keep_owner: bool,
    ) -> Result<()> {
        // Actual target of each copied directory (symlinked target dirs are followed safely).
        let mut dirs: HashMap<&Path, PathBuf> = HashMap::new();
        // Plain files (one link) are copied last, in parallel: for a big context the copy is
        // bound by per-file system calls, and both cores help (copy-big: ~1.9x faster). Every
        // directory exists by then; nothing else depends on the order of the files. They are
        // grouped by destination directory, which is opened once per batch.
        let mut groups: Vec<(PathBuf, Vec<&Entry>)> = Vec::new();
        let mut group_of: HashMap<PathBuf, usize> = HashMap::new();
        for e in entries {
            let parent = e.rel.parent().unwrap_or(Path::new(""));
            let pdir = if parent.as_os_str().is_empty() {
                tdir.to_path_buf()
            } else {
                dirs.get(parent)
                    .cloned()
                    .with_context(|| format!("internal error: no target for {}", parent.display()))?
            };
            let name = e.rel.file_name().unwrap_or_default();
            if e.md.is_dir() {
                let real = self.ensure_dir(src_root, &e.inside, &pdir.join(name), &e.md, keep_owner)?;
                dirs.insert(&e.rel, real);
            } else if e.md.is_file() && e.md.nlink() == 1 {
                let i = *group_of.entry(pdir.clone()).or_insert_with(|| {
                    groups.push((pdir, Vec::new()));
                    groups.len() - 1
                });
                groups[i].1.push(e);
            } else {
                self.copy_entry(src_root, &e.inside, &e.md, &pdir.join(name), keep_owner)?;
            }
        }
        let batches: Vec<(&Path, &[&Entry])> = groups
            .iter()
            .flat_map(|(d, files)| files.chunks(BATCH).map(move |c| (d.as_path(), c)))
            .collect();
        let total: usize = groups.iter().map(|(_, f)| f.len()).sum();
        let this = &*self;
        let run = |(dir, files): &(&Path, &[&Entry])| -> Result<()> {
            let d = this
                .root
                .sub(dir)
                .with_context(|| format!("opening directory {}", this.root.show(dir)))?;
            for e in files.iter() {
                let name = e.rel.file_name().unwrap_or_default();
                this.copy_plain_file(src_root, e, &d, dir, name, keep_owner)?;
            }
            Ok(())
        };
        if total < BATCH {
            batches.iter().try_for_each(run)
        } else {
            batches.par_iter().try_for_each(run)
        }
    }

    /// Creates the new regular file `name` in the directory `d` (`dir` inside the rootfs),
    /// replacing a non-directory that is there.
    fn create_in(&self, d: &Root, dir: &Path, name: &std::ffi::OsStr) -> Result<File> {
        let show = || self.root.show(dir.join(name));
        match d.create_new(name, 0o600) {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", show())),
        }
        if d.metadata(name, Follow::Parents).is_ok_and(|m| m.is_dir()) {
            bail!("cannot replace directory {} with a file", show());
        }
        d.remove(name).with_context(|| format!("replacing {}", show()))?;
        d.create_new(name, 0o600)
            .with_context(|| format!("creating {}", show()))
    }

    /// Copies a regular file with a single link into the directory `d` (no shared state: safe
    /// to run in parallel). Its metadata is set through the new file's fd.
    fn copy_plain_file(
        &self,
        src: &Root,
        e: &Entry,
        d: &Root,
        dir: &Path,
        name: &std::ffi::OsStr,
        keep_owner: bool,
    ) -> Result<()> {
        let mut input = open_source(src, &e.inside, &e.md)?;
        let mut out = self.create_in(d, dir, name)?;
        let show = || self.root.show(dir.join(name));
        io::copy(&mut input, &mut out).with_context(|| format!("copying {} to {}", src.show(&e.inside), show()))?;
        self.set_file_meta(&input, &e.md, &out, &show(), keep_owner)
    }

    /// Owner, mode, xattrs and times of a copied regular file, through the fds of the source
    /// and of the copy (in that order: chown clears setuid).
    fn set_file_meta(&self, input: &File, md: &Metadata, out: &File, show: &str, keep_owner: bool) -> Result<()> {
        let (u, g) = self.owner_of_source(Some(input.as_fd()), md, keep_owner);
        self.chown_file(out, show, u, g)?;
        let mut mode = md.mode() & 0o7777;
        if let Some(c) = &self.chmod {
            mode = c.apply(mode, false);
        }
        out.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {show}"))?;
        if let Ok(names) = input.list_xattr() {
            for n in names {
                if private_xattr(&n.to_string_lossy()) {
                    continue;
                }
                if let Ok(Some(v)) = input.get_xattr(&n) {
                    let _ = out.set_xattr(&n, &v);
                }
            }
        }
        filetime::set_file_handle_times(
            out,
            Some(FileTime::from_last_access_time(md)),
            Some(FileTime::from_last_modification_time(md)),
        )
        .with_context(|| format!("setting times of {show}"))
    }

    /// Removes a non-directory at `dst` (a directory there is an error).
    fn clear(&self, dst: &Path) -> Result<()> {
        match self.root.metadata(dst, Follow::Parents) {
            Ok(m) if m.is_dir() => bail!("cannot replace directory {} with a file", self.root.show(dst)),
            Ok(_) => self
                .root
                .remove(dst)
                .with_context(|| format!("replacing {}", self.root.show(dst))),
            Err(_) => Ok(()),
        }
    }

    /// Copies one non-directory entry (file, symlink, fifo, device) `inside` of `src` to `dst`.
    fn copy_entry(&mut self, src: &Root, inside: &Path, md: &Metadata, dst: &Path, keep_owner: bool) -> Result<()> {
        let ft = md.file_type();
        if ft.is_dir() {
            bail!("internal error: copy_entry called for directory {}", src.show(inside));
        }
        self.clear(dst)?;
        let show = self.root.show(dst);
        if ft.is_socket() {
            // A socket becomes an empty regular file, as BuildKit's fsutil copies it.
            self.root
                .create_new(dst, 0o600)
                .with_context(|| format!("creating {show} (for a socket)"))?;
            return self.set_meta(src, inside, dst, md, keep_owner);
        }
        if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = self.links.get(&(md.dev(), md.ino()))
                    && self.root.hardlink(first, dst).is_ok()
                {
                    return Ok(());
                }
                self.links.insert((md.dev(), md.ino()), dst.to_path_buf());
            }
            let mut input = open_source(src, inside, md)?;
            let mut out = self
                .root
                .create_new(dst, 0o600)
                .with_context(|| format!("creating {show}"))?;
            io::copy(&mut input, &mut out).with_context(|| format!("copying {} to {show}", src.show(inside)))?;
            return self.set_file_meta(&input, md, &out, &show, keep_owner);
        } else if ft.is_symlink() {
            let t = src
                .readlink(inside)
                .with_context(|| format!("reading symlink {}", src.show(inside)))?;
            self.root
                .symlink(&t, dst)
                .with_context(|| format!("creating symlink {show}"))?;
        } else if ft.is_fifo() {
            self.root
                .mknod(dst, libc::S_IFIFO | 0o600, 0)
                .with_context(|| format!("creating fifo {show}"))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            self.root
                .mknod(dst, kind | 0o600, md.rdev() as libc::dev_t)
                .with_context(|| format!("creating device node {show}"))?;
        } else {
            bail!("{}: unsupported file type", src.show(inside));
        }
        self.set_meta(src, inside, dst, md, keep_owner)
    }

    /// Owner, mode, xattrs and times of a copied entry that is not a regular file, by path
    /// inside the roots, never following the entry (in that order: chown clears setuid).
    fn set_meta(&self, src: &Root, inside: &Path, dst: &Path, md: &Metadata, keep_owner: bool) -> Result<()> {
        let is_link = md.file_type().is_symlink();
        let show = self.root.show(dst);
        let src_fd = match is_link {
            true => None,
            false => Some(
                src.resolve(inside, Follow::Parents)
                    .with_context(|| format!("opening {}", src.show(inside)))?,
            ),
        };
        let (u, g) = self.owner_of_source(src_fd.as_ref().map(|f| f.as_fd()), md, keep_owner);
        self.chown_path(dst, u, g, is_link)?;
        if !is_link {
            let mut mode = md.mode() & 0o7777;
            if let Some(c) = &self.chmod {
                mode = c.apply(mode, md.is_dir());
            }
            self.root
                .chmod(dst, mode)
                .with_context(|| format!("setting mode {mode:o} on {show}"))?;
            // Symlinks carry no xattrs worth copying (and reading one through its path would
            // follow it).
            if let Ok(names) = src.list_xattrs(inside) {
                for n in names {
                    let Some(n) = n.to_str() else { continue };
                    if private_xattr(n) {
                        continue;
                    }
                    if let Ok(Some(v)) = src.get_xattr(inside, n) {
                        let _ = self.root.set_xattr(dst, n, &v);
                    }
                }
            }
        }
        self.root
            .utimens(dst, ts(md.atime(), md.atime_nsec()), ts(md.mtime(), md.mtime_nsec()))
            .with_context(|| format!("setting times of {show}"))
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        let fixups = std::mem::take(&mut self.dir_fixups);
        for (path, src_root, src, md, keep_owner) in fixups.iter().rev() {
            self.set_meta(src_root, src, path, md, *keep_owner)?;
        }
        Ok(())
    }

    /// Sets the owner of the new file `out` (`show` names it).
    fn chown_file(&self, out: &File, show: &str, uid: u32, gid: u32) -> Result<()> {
        if crate::layer::owner_emulation() {
            // kiln without privilege: the layer carries the owner (see layer::OWNER_XATTR).
            return crate::layer::record_owner_fd(out.as_fd(), uid, gid)
                .with_context(|| format!("recording the owner {uid}:{gid} of {show}"));
        }
        if let Err(e) = std::os::unix::fs::fchown(out, Some(uid), Some(gid)) {
            if out.metadata().is_ok_and(|m| m.uid() == uid && m.gid() == gid) {
                return Ok(());
            }
            return Err(e).with_context(|| format!("changing the owner of {show} to {uid}:{gid}"));
        }
        Ok(())
    }

    /// Sets the owner of `p` inside the rootfs, never following it.
    fn chown_path(&self, p: &Path, uid: u32, gid: u32, is_link: bool) -> Result<()> {
        let show = || self.root.show(p);
        if crate::layer::owner_emulation() {
            // Symlinks cannot carry the record: their owner is root in the layer.
            if is_link {
                return Ok(());
            }
            let fd = self
                .root
                .resolve(p, Follow::Parents)
                .with_context(|| format!("opening {}", show()))?;
            return crate::layer::record_owner_fd(fd.as_fd(), uid, gid)
                .with_context(|| format!("recording the owner {uid}:{gid} of {}", show()));
        }
        if let Err(e) = self.root.chown(p, uid, gid) {
            if self
                .root
                .metadata(p, Follow::Parents)
                .is_ok_and(|m| m.uid() == uid && m.gid() == gid)
            {
                return Ok(());
            }
            return Err(e).with_context(|| format!("changing the owner of {} to {uid}:{gid}", show()));
        }
        Ok(())
    }

    /// Creates a new regular file (replacing a non-directory) at `path` with content, mode,
    /// the created owner and, when given, the modification time.
    fn write_new_file(&self, path: &Path, content: &mut dyn Read, mode: u32, mtime: Option<FileTime>) -> Result<()> {
        self.clear(path)?;
        let show = self.root.show(path);
        let mut f = self
            .root
            .create_new(path, 0o600)
            .with_context(|| format!("creating {show}"))?;
        io::copy(content, &mut f).with_context(|| format!("writing {show}"))?;
        f.flush().ok();
        let (u, g) = self.created_owner();
        self.chown_file(&f, &show, u, g)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {show}"))?;
        if let Some(t) = mtime {
            filetime::set_file_handle_times(&f, Some(t), Some(t))
                .with_context(|| format!("setting times of {show}"))?;
        }
        Ok(())
    }
}

pub(super) struct CountingReader<R> {
    pub(super) inner: R,
    pub(super) n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}
