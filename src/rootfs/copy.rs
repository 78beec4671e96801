//! The last-resort driver: copy the lowers into a plain directory, let the step run there,
//! and when it is "unmounted" compute what changed into the upper directory in overlay
//! format (whiteouts as char 0:0 devices, `user.overlay.opaque=y` on replaced directories).
//!
//! Change detection compares each entry with a snapshot taken right after the copy (inode,
//! birth time, ctime, size, mtime, mode, owner; the walk is parallel): every content,
//! metadata or xattr change moves ctime. Only candidates whose ctime alone moved (same inode,
//! size, mode, owner and mtime: a `chmod` back, a placeholder created and removed, a file
//! rewritten with `touch -r`) are compared with the layer file they were copied from (content
//! and xattrs), so nothing is hashed wholesale after a step.
//!
//! No mounts are involved anywhere, which makes this the driver of the chroot and no-privilege
//! isolation rungs; [`materialise`] gives them read-only views (COPY --from) the same way.

use super::RootfsDriver;
use crate::fsutil::overlay::{self, is_opaque, is_overlay_xattr, is_whiteout};
use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    ino: u64,
    /// Birth time (statx), so a deleted and recreated entry that reuses the inode number is
    /// still seen as new.
    btime: Option<std::time::SystemTime>,
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Snap {
    fn of(md: &std::fs::Metadata) -> Snap {
        Snap {
            ino: md.ino(),
            btime: md.created().ok(),
            ctime: (md.ctime(), md.ctime_nsec()),
            mtime: (md.mtime(), md.mtime_nsec()),
            size: md.size(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
        }
    }
    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

struct State {
    upper: PathBuf,
    snap: HashMap<PathBuf, Snap>,
    children: HashMap<PathBuf, Vec<OsString>>,
    /// Relative path → the lower entry it was copied from.
    sources: HashMap<PathBuf, PathBuf>,
}

/// Copy-based snapshots (no mounts at all).
#[derive(Default)]
pub struct CopySnapshot {
    state: Mutex<HashMap<PathBuf, State>>,
}

impl RootfsDriver for CopySnapshot {
    fn name(&self) -> &str {
        "copy"
    }

    fn mount(&self, lowers: &[PathBuf], upper: &Path, _work: &Path, target: &Path) -> Result<()> {
        std::fs::create_dir_all(upper).with_context(|| format!("cannot create {}", upper.display()))?;
        ensure_empty(upper)?;
        std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
        let mut sources = HashMap::new();
        for l in lowers.iter().rev() {
            apply_lower(l, target, &mut sources)
                .with_context(|| format!("cannot copy layer {} into {}", l.display(), target.display()))?;
        }
        let (snaps, children) = snapshot(target, Path::new(""))?;
        let st = State {
            upper: upper.to_path_buf(),
            snap: snaps.into_iter().collect(),
            children: children.into_iter().collect(),
            sources,
        };
        self.state.lock().unwrap().insert(target.to_path_buf(), st);
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        let st = self
            .state
            .lock()
            .unwrap()
            .remove(target)
            .with_context(|| format!("{} was not set up by the copy driver", target.display()))?;
        let mut d = Differ {
            target,
            st: &st,
            links: HashMap::new(),
        };
        d.diff_dir(Path::new(""))?;
        let root_md = std::fs::symlink_metadata(target)?;
        copy_meta(target, &st.upper, &root_md)?;
        remove_tree(target).with_context(|| format!("cannot remove the snapshot {}", target.display()))?;
        std::fs::create_dir_all(target).ok();
        Ok(())
    }
}

type Snapshot = (Vec<(PathBuf, Snap)>, Vec<(PathBuf, Vec<OsString>)>);

/// Stats every entry under `root/rel` (directories in parallel).
fn snapshot(root: &Path, rel: &Path) -> Result<Snapshot> {
    use rayon::prelude::*;
    let dir = root.join(rel);
    let md = std::fs::symlink_metadata(&dir)?;
    let mut snaps = vec![(rel.to_path_buf(), Snap::of(&md))];
    let mut names = Vec::new();
    let mut subdirs = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        let r = rel.join(e.file_name());
        let md = e.metadata()?;
        names.push(e.file_name());
        if md.is_dir() {
            subdirs.push(r);
        } else {
            snaps.push((r, Snap::of(&md)));
        }
    }
    let mut children = vec![(rel.to_path_buf(), names)];
    let subs: Vec<Result<Snapshot>> = subdirs.par_iter().map(|r| snapshot(root, r)).collect();
    for sub in subs {
        let (a, b) = sub?;
        snaps.extend(a);
        children.extend(b);
    }
    Ok((snaps, children))
}

/// Copies `lowers` (top first) into the empty directory `target`: a read-only view of a
/// stage's filesystem without mounting anything.
pub fn materialise(lowers: &[PathBuf], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    let mut sources = HashMap::new();
    for l in lowers.iter().rev() {
        apply_lower(l, target, &mut sources)
            .with_context(|| format!("cannot copy layer {} into {}", l.display(), target.display()))?;
    }
    Ok(())
}

/// Removes a tree; without privilege, read-only directories in it are made writable first
/// (an image's 0555 directories would otherwise keep their entries).
pub fn remove_tree(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            fn open_up(d: &Path) {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
                if let Ok(rd) = std::fs::read_dir(d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            open_up(&e.path());
                        }
                    }
                }
            }
            open_up(p);
            std::fs::remove_dir_all(p)
        }
        r => r,
    }
}

/// Whether `a` and `b` have the same xattrs (overlay bookkeeping aside).
fn same_xattrs(a: &Path, b: &Path) -> bool {
    let list = |p: &Path| -> Option<Vec<(OsString, Option<Vec<u8>>)>> {
        let mut v: Vec<_> = xattr::list(p)
            .ok()?
            .filter(|n| !is_overlay_xattr(n.as_bytes()))
            .map(|n| {
                let val = xattr::get(p, &n).ok().flatten();
                (n, val)
            })
            .collect();
        v.sort();
        Some(v)
    };
    match (list(a), list(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether two regular files have the same bytes.
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = fa.read(&mut ba) else { return false };
        if n == 0 {
            return fb.read(&mut bb[..1]).is_ok_and(|m| m == 0);
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display())),
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display())),
        Err(_) => Ok(()),
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Copies owner, mode, xattrs (minus overlay bookkeeping) and times of `md` (from `src`) onto `dst`.
fn copy_meta(src: &Path, dst: &Path, md: &std::fs::Metadata) -> Result<()> {
    let c = cpath(dst);
    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
    if unsafe { libc::lchown(c.as_ptr(), md.uid(), md.gid()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(e).with_context(|| format!("cannot chown {} to {}:{}", dst.display(), md.uid(), md.gid()));
    }
    if !md.file_type().is_symlink() {
        let mode = md.mode() & 0o7777;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        if unsafe { libc::chmod(c.as_ptr(), mode) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot chmod {}", dst.display()));
        }
    }
    if let Ok(names) = xattr::list(src) {
        for n in names {
            if is_overlay_xattr(n.as_bytes()) {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &n) {
                let _ = xattr::set(dst, &n, &v);
            }
        }
    }
    let at = filetime::FileTime::from_last_access_time(md);
    let mt = filetime::FileTime::from_last_modification_time(md);
    filetime::set_symlink_file_times(dst, at, mt).with_context(|| format!("cannot set times on {}", dst.display()))?;
    Ok(())
}

/// Creates a non-directory entry `dst` like `src`, reusing a hardlink when the inode was seen.
fn copy_leaf(src: &Path, dst: &Path, md: &std::fs::Metadata, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    if md.nlink() > 1
        && let Some(first) = links.get(&(md.dev(), md.ino()))
    {
        return std::fs::hard_link(first, dst)
            .with_context(|| format!("cannot link {} to {}", dst.display(), first.display()));
    }
    let ft = md.file_type();
    if ft.is_file() {
        std::fs::copy(src, dst).with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    } else if ft.is_symlink() {
        let t = std::fs::read_link(src)?;
        std::os::unix::fs::symlink(&t, dst).with_context(|| format!("cannot create symlink {}", dst.display()))?;
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        let c = cpath(dst);
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        if unsafe { libc::mknod(c.as_ptr(), md.mode(), md.rdev()) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot create {}", dst.display()));
        }
    } else {
        return Ok(()); // sockets are not copied
    }
    copy_meta(src, dst, md)?;
    if md.nlink() > 1 {
        links.insert((md.dev(), md.ino()), dst.to_path_buf());
    }
    Ok(())
}

/// Applies one overlay lower onto `target` (whiteouts delete, opaque dirs clear).
fn apply_lower(lower: &Path, target: &Path, sources: &mut HashMap<PathBuf, PathBuf>) -> Result<()> {
    let mut links = HashMap::new();
    apply_dir(lower, target, Path::new(""), &mut links, sources)
}

fn apply_dir(
    src: &Path,
    dst: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
    sources: &mut HashMap<PathBuf, PathBuf>,
) -> Result<()> {
    for e in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let e = e?;
        let s = e.path();
        let d = dst.join(e.file_name());
        let r = rel.join(e.file_name());
        let md = std::fs::symlink_metadata(&s)?;
        if is_whiteout(&md) {
            remove_any(&d)?;
            sources.remove(&r);
            continue;
        }
        sources.insert(r.clone(), s.clone());
        if md.is_dir() {
            match std::fs::symlink_metadata(&d) {
                Ok(dm) if dm.is_dir() => {
                    if is_opaque(&s) {
                        remove_any(&d)?;
                        std::fs::create_dir(&d)?;
                    }
                }
                Ok(_) => {
                    remove_any(&d)?;
                    std::fs::create_dir(&d)?;
                }
                Err(_) => std::fs::create_dir(&d).with_context(|| format!("cannot create {}", d.display()))?,
            }
            apply_dir(&s, &d, &r, links, sources)?;
            copy_meta(&s, &d, &md)?;
        } else {
            remove_any(&d)?;
            copy_leaf(&s, &d, &md, links)?;
        }
    }
    Ok(())
}

struct Differ<'a> {
    target: &'a Path,
    st: &'a State,
    links: HashMap<(u64, u64), PathBuf>,
}

impl Differ<'_> {
    /// A candidate whose ctime alone moved: unchanged if it still equals the layer entry it
    /// was copied from (content, symlink target, xattrs).
    fn only_ctime_moved(&self, rel: &Path, old: &Snap, now: &Snap, md: &std::fs::Metadata) -> bool {
        let same_stat = Snap {
            ctime: old.ctime,
            ..*now
        } == *old;
        if !same_stat {
            return false;
        }
        let Some(src) = self.st.sources.get(rel) else {
            return false;
        };
        let Ok(smd) = std::fs::symlink_metadata(src) else {
            return false;
        };
        let t = self.target.join(rel);
        if smd.mode() != md.mode() || (!md.is_dir() && smd.size() != md.size()) {
            return false;
        }
        if md.is_file() && !same_content(src, &t) {
            return false;
        }
        if md.file_type().is_symlink() && std::fs::read_link(src).ok() != std::fs::read_link(&t).ok() {
            return false;
        }
        md.file_type().is_symlink() || same_xattrs(src, &t)
    }

    /// Makes sure the upper has the directory `rel` (and its parents), copying metadata.
    fn ensure_upper_dir(&self, rel: &Path) -> Result<()> {
        let u = self.st.upper.join(rel);
        if u.is_dir() || rel.as_os_str().is_empty() {
            return Ok(());
        }
        if let Some(p) = rel.parent() {
            self.ensure_upper_dir(p)?;
        }
        std::fs::create_dir(&u).with_context(|| format!("cannot create {}", u.display()))?;
        let t = self.target.join(rel);
        copy_meta(&t, &u, &std::fs::symlink_metadata(&t)?)
    }

    /// Copies the whole entry `rel` from the target into the upper.
    fn copy_all(&mut self, rel: &Path) -> Result<()> {
        let t = self.target.join(rel);
        let u = self.st.upper.join(rel);
        let md = std::fs::symlink_metadata(&t)?;
        remove_any(&u)?;
        if md.is_dir() {
            std::fs::create_dir(&u).with_context(|| format!("cannot create {}", u.display()))?;
            for e in std::fs::read_dir(&t)? {
                self.copy_all(&rel.join(e?.file_name()))?;
            }
            copy_meta(&t, &u, &md)?;
        } else {
            copy_leaf(&t, &u, &md, &mut self.links)?;
        }
        Ok(())
    }

    /// Returns whether anything under `rel` changed (and writes it to the upper).
    fn diff_dir(&mut self, rel: &Path) -> Result<bool> {
        let dir = self.target.join(rel);
        let mut changed = false;
        let mut present = HashSet::new();
        let mut names: Vec<OsString> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let r = rel.join(&name);
            present.insert(name);
            let md = std::fs::symlink_metadata(self.target.join(&r))?;
            let now = Snap::of(&md);
            match self.st.snap.get(&r) {
                None => {
                    self.ensure_upper_dir(rel)?;
                    self.copy_all(&r)?;
                    changed = true;
                }
                Some(old) if old.kind() != now.kind() || old.ino != now.ino || old.btime != now.btime => {
                    self.ensure_upper_dir(rel)?;
                    self.copy_all(&r)?;
                    if md.is_dir() && old.kind() == libc::S_IFDIR {
                        xattr::set(self.st.upper.join(&r), overlay::OPAQUE_XATTR, overlay::OPAQUE_VALUE)
                            .context("cannot mark a directory opaque")?;
                    }
                    changed = true;
                }
                Some(old) if md.is_dir() => {
                    let sub = self.diff_dir(&r)?;
                    if sub || (*old != now && !self.only_ctime_moved(&r, old, &now, &md)) {
                        self.ensure_upper_dir(&r)?;
                        copy_meta(&self.target.join(&r), &self.st.upper.join(&r), &md)?;
                        changed = true;
                    }
                }
                Some(old) => {
                    if *old != now && !self.only_ctime_moved(&r, old, &now, &md) {
                        self.ensure_upper_dir(rel)?;
                        self.copy_all(&r)?;
                        changed = true;
                    }
                }
            }
        }
        if let Some(before) = self.st.children.get(rel) {
            for name in before {
                if !present.contains(name) {
                    self.ensure_upper_dir(rel)?;
                    let w = self.st.upper.join(rel).join(name);
                    let c = cpath(&w);
                    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open
                    // for it.
                    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                        let e = std::io::Error::last_os_error();
                        return Err(e).with_context(|| {
                            format!(
                                "cannot create the whiteout {} (a deletion needs a 0:0 character device, which                                  only root or a user namespace can make)",
                                w.display()
                            )
                        });
                    }
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}

/// The upper dir must start empty (it receives exactly the step's changes).
fn ensure_empty(p: &Path) -> Result<()> {
    if std::fs::read_dir(p)?.next().is_some() {
        bail!("{} is not empty", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mkwhiteout(p: &Path) -> bool {
        let c = cpath(p);
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) == 0 }
    }

    #[test]
    fn copy_snapshot_records_exact_changes() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, up, tg) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("up"),
            t.path().join("tg"),
        );
        for d in [&l1, &l2, &up] {
            std::fs::create_dir(d).unwrap();
        }
        // bottom layer l2, top layer l1
        std::fs::create_dir_all(l2.join("etc/old")).unwrap();
        std::fs::write(l2.join("etc/old/a"), "a").unwrap();
        std::fs::write(l2.join("etc/keep"), "k").unwrap();
        std::fs::write(l2.join("gone"), "g").unwrap();
        std::fs::write(l2.join("rmme"), "r").unwrap();
        std::fs::create_dir(l2.join("dir")).unwrap();
        std::fs::write(l2.join("dir/x"), "x").unwrap();
        std::fs::create_dir(l1.join("dir")).unwrap();
        std::fs::write(l1.join("dir/y"), "y").unwrap();
        let can_whiteout = mkwhiteout(&l1.join("gone"));
        let drv = CopySnapshot::default();
        drv.mount(&[l1.clone(), l2.clone()], &up, t.path(), &tg).unwrap();
        assert!(tg.join("dir/x").exists() && tg.join("dir/y").exists());
        if can_whiteout {
            assert!(!tg.join("gone").exists());
        }
        // the "step"
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(tg.join("new"), "n").unwrap();
        std::fs::remove_file(tg.join("rmme")).unwrap();
        std::fs::remove_dir_all(tg.join("etc/old")).unwrap();
        std::fs::create_dir(tg.join("etc/old")).unwrap();
        std::fs::write(tg.join("etc/old/b"), "b").unwrap();
        std::fs::set_permissions(tg.join("dir/x"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(tg.join("new"), tg.join("new2")).unwrap();
        drv.unmount(&tg).unwrap();

        let mut got = Vec::new();
        for e in walk(&up) {
            got.push(e.strip_prefix(&up).unwrap().to_string_lossy().to_string());
        }
        got.sort();
        let want = if mkwhiteout(&t.path().join("probe")) {
            vec!["dir", "dir/x", "etc", "etc/old", "etc/old/b", "new", "new2", "rmme"]
        } else {
            return;
        };
        assert_eq!(got, want);
        let md = std::fs::symlink_metadata(up.join("rmme")).unwrap();
        assert!(md.file_type().is_char_device() && md.rdev() == 0);
        assert_eq!(
            xattr::get(up.join("etc/old"), overlay::OPAQUE_XATTR)
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(xattr::get(up.join("dir"), overlay::OPAQUE_XATTR).unwrap(), None);
        assert_eq!(std::fs::metadata(up.join("dir/x")).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::metadata(up.join("new")).unwrap().ino(),
            std::fs::metadata(up.join("new2")).unwrap().ino()
        );
        assert!(!up.join("etc/keep").exists());
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap().path();
            v.push(e.clone());
            if std::fs::symlink_metadata(&e).unwrap().is_dir() {
                v.extend(walk(&e));
            }
        }
        v
    }

    #[test]
    fn ctime_only_candidates_are_compared_with_their_layer() {
        let t = tempfile::tempdir().unwrap();
        let (l, up, tg) = (t.path().join("l"), t.path().join("up"), t.path().join("tg"));
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::write(l.join("etc/same"), "same").unwrap();
        std::fs::write(l.join("etc/sneaky"), "aaaa").unwrap();
        std::fs::write(l.join("etc/moded"), "m").unwrap();
        std::fs::create_dir(&up).unwrap();
        let drv = CopySnapshot::default();
        drv.mount(std::slice::from_ref(&l), &up, t.path(), &tg).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let keep_times = |p: &Path, f: &dyn Fn()| {
            let md = std::fs::symlink_metadata(p).unwrap();
            f();
            filetime::set_symlink_file_times(
                p,
                filetime::FileTime::from_last_access_time(&md),
                filetime::FileTime::from_last_modification_time(&md),
            )
            .unwrap();
        };
        // chmod away and back: only ctime moved, content equal → no change
        let same = tg.join("etc/same");
        std::fs::set_permissions(&same, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&same, std::fs::Permissions::from_mode(0o644)).unwrap();
        // same size, mtime restored, other bytes → a change
        let sneaky = tg.join("etc/sneaky");
        keep_times(&sneaky, &|| std::fs::write(&sneaky, "bbbb").unwrap());
        // a placeholder made and removed in /etc with its times restored → no change
        let etc = tg.join("etc");
        keep_times(&etc, &|| {
            std::fs::write(etc.join("hosts"), "").unwrap();
            std::fs::remove_file(etc.join("hosts")).unwrap();
        });
        // a real mode change
        std::fs::set_permissions(tg.join("etc/moded"), std::fs::Permissions::from_mode(0o600)).unwrap();
        drv.unmount(&tg).unwrap();
        let mut got: Vec<String> = walk(&up)
            .iter()
            .map(|e| e.strip_prefix(&up).unwrap().to_string_lossy().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["etc", "etc/moded", "etc/sneaky"]);
    }

    #[test]
    fn materialise_copies_the_layers_without_mounting() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, tg) = (t.path().join("l1"), t.path().join("l2"), t.path().join("tg"));
        std::fs::create_dir_all(l1.join("a")).unwrap();
        std::fs::create_dir_all(l2.join("a")).unwrap();
        std::fs::write(l2.join("a/x"), "old").unwrap();
        std::fs::write(l1.join("a/x"), "new").unwrap();
        std::fs::write(l2.join("b"), "b").unwrap();
        materialise(&[l1, l2], &tg).unwrap();
        assert_eq!(std::fs::read_to_string(tg.join("a/x")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(tg.join("b")).unwrap(), "b");
    }

    #[test]
    fn empty_check() {
        let t = tempfile::tempdir().unwrap();
        assert!(ensure_empty(t.path()).is_ok());
        std::fs::write(t.path().join("f"), "").unwrap();
        assert!(ensure_empty(t.path()).is_err());
    }
}
