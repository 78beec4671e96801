//! The FUSE operations of [`OverlayFs`]: fuse-backend-rs' `FileSystem` trait, each request
//! turned into calls of the overlay logic in the parent module.

use super::raw::*;
use super::*;

impl FileSystem for OverlayFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let want = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::CACHE_SYMLINKS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO;
        Ok(capable & want)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match self.find(inner, parent, name.to_bytes())? {
            Some(ino) => self.entry(inner, ino),
            None => Ok(Entry {
                inode: 0,
                generation: 0,
                // SAFETY: a C struct of integers: all-zero bytes are a valid value.
                attr: unsafe { std::mem::zeroed() },
                attr_flags: 0,
                attr_timeout: TTL,
                entry_timeout: TTL,
            }),
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        let mut inner = self.lock();
        if let Some(n) = inner.nodes.get_mut(&inode) {
            n.nlookup = n.nlookup.saturating_sub(count);
            if n.nlookup == 0 && n.unlinked {
                inner.nodes.remove(&inode);
            }
        }
    }

    fn getattr(&self, _ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<(libc::stat64, Duration)> {
        let inner = self.lock();
        let by_path = if handle.is_none() && !inner.node(inode)?.unlinked {
            Some(self.attr(&inner, inode))
        } else {
            None
        };
        match by_path {
            Some(Ok(st)) => Ok((st, TTL)),
            other => {
                // Open but deleted or replaced: the attributes of the open file.
                let Some(f) = open_file(&inner, inode, handle) else {
                    return match other {
                        Some(Err(e)) => Err(e),
                        _ => Err(err(libc::ENOENT)),
                    };
                };
                let mut st = fstat(f.as_raw_fd())?;
                st.st_ino = inner.node(inode).map(|n| n.ino).unwrap_or(st.st_ino);
                Ok((st, TTL))
            }
        }
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: libc::stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.node(inode)?.unlinked {
            let f = open_file(inner, inode, handle).ok_or_else(|| err(libc::ENOENT))?;
            let mut st = setattr_fd(&f, &attr, valid)?;
            st.st_ino = inner.node(inode)?.ino;
            return Ok((st, TTL));
        }
        self.copy_up(inner, inode)?;
        let rel = inner.rel(inode)?;
        let crel = cstring(&rel)?;
        let up = self.layers[0].fd();
        let file = open_file(inner, inode, handle);
        let kind = inner.node(inode)?.kind;
        if valid.contains(SetattrValid::UID) || valid.contains(SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::fchownat(up, crel.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
        }
        if valid.contains(SetattrValid::MODE) && kind != libc::S_IFLNK {
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
            cvt(unsafe { libc::fchmodat(up, crel.as_ptr(), attr.st_mode & 0o7777, 0) })?;
        }
        if valid.contains(SetattrValid::SIZE) {
            match &file {
                Some(f) if !is_readonly(f) => {
                    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads
                    // no memory of ours.
                    cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), attr.st_size) })?;
                }
                _ => {
                    // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open
                    // for it; the new fd is checked (cvt) before it gets an owner.
                    let fd = cvt(unsafe {
                        libc::openat(up, crel.as_ptr(), libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    })?;
                    // SAFETY: the fd was just returned by a successful call (checked) and has no other
                    // owner, so it is closed once.
                    let f = unsafe { File::from_raw_fd(fd) };
                    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads
                    // no memory of ours.
                    cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), attr.st_size) })?;
                }
            }
        }
        let times = [
            SetattrValid::ATIME,
            SetattrValid::MTIME,
            SetattrValid::ATIME_NOW,
            SetattrValid::MTIME_NOW,
        ];
        if times.iter().any(|t| valid.contains(*t)) {
            let omit = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            };
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            };
            let a = if valid.contains(SetattrValid::ATIME_NOW) {
                now
            } else if valid.contains(SetattrValid::ATIME) {
                st_atime(&attr)
            } else {
                omit
            };
            let m = if valid.contains(SetattrValid::MTIME_NOW) {
                now
            } else if valid.contains(SetattrValid::MTIME) {
                st_mtime(&attr)
            } else {
                omit
            };
            let ts = [a, m];
            // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it;
            // the times point to a live array of two timespecs.
            cvt(unsafe { libc::utimensat(up, crel.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
        }
        inner.journal.insert(rel);
        Ok((self.attr(inner, inode)?, TTL))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let inner = self.lock();
        let n = inner.node(inode)?;
        readlink_at(self.layers[n.layer].fd(), &cstring(&inner.rel(inode)?)?)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, _) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::symlinkat(linkname.as_ptr(), self.layers[0].fd(), crel.as_ptr()) })?;
        self.own(inner, ctx, parent, &crel)?;
        self.new_node(inner, parent, name.to_bytes(), rel)
    }

    fn mknod(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, rdev: u32, _umask: u32) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, _) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::mknodat(self.layers[0].fd(), crel.as_ptr(), mode, rdev as libc::dev_t) })?;
        self.own(inner, ctx, parent, &crel)?;
        self.new_node(inner, parent, name.to_bytes(), rel)
    }

    fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, _umask: u32) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, hides) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::mkdirat(self.layers[0].fd(), crel.as_ptr(), mode & 0o7777) })?;
        if hides {
            self.set_xattr(0, &rel, OPAQUE_XATTR, b"y", 0)?;
        }
        self.own(inner, ctx, parent, &crel)?;
        self.new_node(inner, parent, name.to_bytes(), rel)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.do_rename(olddir, oldname.to_bytes(), newdir, newname.to_bytes(), flags)
    }

    fn link(&self, _ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.node(inode)?.kind == libc::S_IFDIR {
            return Err(err(libc::EPERM));
        }
        self.copy_up(inner, inode)?;
        let src = cstring(&inner.rel(inode)?)?;
        let (rel, _) = self.prepare_new(inner, newparent, newname.to_bytes())?;
        let crel = cstring(&rel)?;
        let up = self.layers[0].fd();
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::linkat(up, src.as_ptr(), up, crel.as_ptr(), 0) })?;
        // The kernel expects the linked inode back: one node, one more name.
        let name = newname.to_bytes().to_vec();
        inner.node_mut(newparent)?.children.insert(name.clone(), inode);
        inner.node_mut(inode)?.links.push((newparent, name));
        inner.journal.insert(rel);
        self.entry(inner, inode)
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let flags = flags as i32;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if write {
            self.copy_up(inner, inode)?;
        }
        let n = inner.node(inode)?;
        let layer = n.layer;
        let rel = inner.rel(inode)?;
        let clean = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_APPEND);
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe {
            libc::openat(
                self.layers[layer].fd(),
                cstring(&rel)?.as_ptr(),
                clean | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
        // closed once.
        let f = unsafe { File::from_raw_fd(fd) };
        let st = fstat(fd)?;
        if write {
            inner.journal.insert(rel);
        }
        let fh = inner.add_handle(Handle::File(inode, Arc::new(f)));
        let opts = if st.st_nlink <= 1 && !write {
            OpenOptions::KEEP_CACHE
        } else {
            OpenOptions::empty()
        };
        Ok((Some(fh), opts, None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (rel, _) = self.prepare_new(inner, parent, name.to_bytes())?;
        let crel = cstring(&rel)?;
        let flags = (args.flags as i32) & !(libc::O_NOCTTY | libc::O_APPEND);
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe {
            libc::openat(
                self.layers[0].fd(),
                crel.as_ptr(),
                flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                args.mode & 0o7777,
            )
        })?;
        // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
        // closed once.
        let f = unsafe { File::from_raw_fd(fd) };
        self.own(inner, ctx, parent, &crel)?;
        let e = self.new_node(inner, parent, name.to_bytes(), rel)?;
        let fh = inner.add_handle(Handle::File(e.inode, Arc::new(f)));
        Ok((e, Some(fh), OpenOptions::empty(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let f = self.handle_file(handle)?;
        // SAFETY: the fd stays owned by the handle's File `f`, alive for this call; the second File over it
        // is in ManuallyDrop, so it is never closed twice.
        let mut f = ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) });
        w.write_from(&mut *f, size as usize, offset)
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        let f = self.handle_file(handle)?;
        // SAFETY: the fd stays owned by the handle's File `f`, alive for this call; the second File over it
        // is in ManuallyDrop, so it is never closed twice.
        let mut f = ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) });
        r.read_to(&mut *f, size as usize, offset)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        // Nothing to do on close (writes are not buffered here): ENOSYS tells the kernel to stop
        // sending FLUSH, one round trip less per close().
        Err(err(libc::ENOSYS))
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let f = self.handle_file(handle)?;
        if datasync { f.sync_data() } else { f.sync_all() }
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let f = self.handle_file(handle)?;
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::fallocate64(f.as_raw_fd(), mode as i32, offset as i64, length as i64) })?;
        Ok(())
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.lock().handles.remove(&handle);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<libc::statvfs64> {
        // SAFETY: a C struct of integers: all-zero bytes are a valid value.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it; the
        // new fd is checked (cvt) before it gets an owner.
        let fd = cvt(unsafe {
            libc::openat(
                self.layers[0].fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the fd was just returned by a successful call (checked) and has no other owner, so it is
        // closed once.
        let f = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the fd is open (owned by `f`) and `st` is a writable `statvfs64` the call fills.
        cvt(unsafe { libc::fstatvfs64(f.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    fn setxattr(&self, _ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        if is_private_xattr(name.to_bytes()) {
            return Err(err(libc::EPERM));
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        self.copy_up(inner, inode)?;
        let rel = inner.rel(inode)?;
        self.set_xattr(0, &rel, name.to_bytes(), value, flags as i32)?;
        inner.journal.insert(rel);
        Ok(())
    }

    fn getxattr(&self, _ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        if is_private_xattr(name.to_bytes()) {
            return Err(err(libc::ENODATA));
        }
        let inner = self.lock();
        let layer = inner.node(inode)?.layer;
        let rel = inner.rel(inode)?;
        let v = self
            .get_xattr(layer, &rel, name.to_bytes())?
            .ok_or_else(|| err(libc::ENODATA))?;
        if size == 0 {
            Ok(GetxattrReply::Count(v.len() as u32))
        } else if v.len() > size as usize {
            Err(err(libc::ERANGE))
        } else {
            Ok(GetxattrReply::Value(v))
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let inner = self.lock();
        let layer = inner.node(inode)?.layer;
        let rel = inner.rel(inode)?;
        let mut buf = Vec::new();
        for n in self.list_xattrs(layer, &rel)? {
            if !is_private_xattr(&n) {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
        }
        if size == 0 {
            Ok(ListxattrReply::Count(buf.len() as u32))
        } else if buf.len() > size as usize {
            Err(err(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(buf))
        }
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if is_private_xattr(name.to_bytes()) {
            return Err(err(libc::ENODATA));
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        self.copy_up(inner, inode)?;
        let rel = inner.rel(inode)?;
        let p = self.layers[0].abs(&rel)?;
        // SAFETY: paths are NUL-terminated C strings alive across the call and the fds are open for it.
        cvt(unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) })?;
        inner.journal.insert(rel);
        Ok(())
    }

    fn opendir(&self, _ctx: &Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let n = inner.node(inode)?;
        let parent_ino = inner.nodes.get(&n.parent).map(|p| p.ino).unwrap_or(n.ino);
        let mut list = vec![
            (b".".to_vec(), n.ino, libc::DT_DIR as u32),
            (b"..".to_vec(), parent_ino, libc::DT_DIR as u32),
        ];
        list.extend(self.merged_entries(inner, inode)?);
        let fh = inner.add_handle(Handle::Dir(Arc::new(list)));
        Ok((Some(fh), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let list = match self.lock().handles.get(&handle) {
            Some(Handle::Dir(l)) => l.clone(),
            _ => return Err(err(libc::EBADF)),
        };
        for (i, (name, ino, dtype)) in list.iter().enumerate().skip(offset as usize) {
            let n = add_entry(DirEntry {
                ino: *ino,
                offset: i as u64 + 1,
                type_: *dtype,
                name,
            })?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// readdir plus a lookup of every entry (saves `rm -rf`, `find` and `ls -l` one round trip
    /// per entry).
    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let list = match self.lock().handles.get(&handle) {
            Some(Handle::Dir(l)) => l.clone(),
            _ => return Err(err(libc::EBADF)),
        };
        for (i, (name, ino, dtype)) in list.iter().enumerate().skip(offset as usize) {
            let d = DirEntry {
                ino: *ino,
                offset: i as u64 + 1,
                type_: *dtype,
                name,
            };
            // "." and "..": no lookup (nodeid 0 is skipped by the kernel).
            let entry = if name == b"." || name == b".." {
                None
            } else {
                let mut inner = self.lock();
                let inner = &mut *inner;
                match self.find(inner, inode, name) {
                    Ok(Some(c)) => self.entry(inner, c).ok(),
                    _ => None,
                }
            };
            let looked_up = entry.as_ref().map(|e| e.inode);
            let e = entry.unwrap_or(Entry {
                inode: 0,
                generation: 0,
                // SAFETY: a C struct of integers: all-zero bytes are a valid value.
                attr: unsafe { std::mem::zeroed() },
                attr_flags: 0,
                attr_timeout: Duration::ZERO,
                entry_timeout: Duration::ZERO,
            });
            let n = add_entry(d, e)?;
            if n == 0 {
                // Not sent: the lookup did not happen.
                if let Some(c) = looked_up {
                    self.forget(_ctx, c, 1);
                }
                break;
            }
        }
        Ok(())
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.lock().handles.remove(&handle);
        Ok(())
    }

    fn access(&self, _ctx: &Context, _inode: u64, _mask: u32) -> io::Result<()> {
        Ok(())
    }
}

/// An open file of node `ino`: the request's handle, or any open handle of the node.
pub(super) fn open_file(inner: &Inner, ino: u64, handle: Option<u64>) -> Option<Arc<File>> {
    if let Some(fh) = handle
        && let Some(Handle::File(_, f)) = inner.handles.get(&fh)
    {
        return Some(f.clone());
    }
    inner.handles.values().find_map(|h| match h {
        Handle::File(i, f) if *i == ino => Some(f.clone()),
        _ => None,
    })
}

/// setattr on an open file whose name is gone.
pub(super) fn setattr_fd(f: &File, attr: &libc::stat64, valid: SetattrValid) -> io::Result<libc::stat64> {
    let fd = f.as_raw_fd();
    if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
        let uid = if valid.contains(SetattrValid::UID) {
            attr.st_uid
        } else {
            u32::MAX
        };
        let gid = if valid.contains(SetattrValid::GID) {
            attr.st_gid
        } else {
            u32::MAX
        };
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::fchown(fd, uid, gid) })?;
    }
    if valid.contains(SetattrValid::MODE) {
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::fchmod(fd, attr.st_mode & 0o7777) })?;
    }
    if valid.contains(SetattrValid::SIZE) {
        // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
        // ours.
        cvt(unsafe { libc::ftruncate64(fd, attr.st_size) })?;
    }
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    let pick = |set_now: SetattrValid, set: SetattrValid, t: libc::timespec| {
        if valid.contains(set_now) {
            now
        } else if valid.contains(set) {
            t
        } else {
            omit
        }
    };
    let ts = [
        pick(SetattrValid::ATIME_NOW, SetattrValid::ATIME, st_atime(attr)),
        pick(SetattrValid::MTIME_NOW, SetattrValid::MTIME, st_mtime(attr)),
    ];
    if ts.iter().any(|t| t.tv_nsec != libc::UTIME_OMIT) {
        // SAFETY: the fd is open for the call and the times point to a live array of two timespecs.
        cvt(unsafe { libc::futimens(fd, ts.as_ptr()) })?;
    }
    fstat(fd)
}

pub(super) fn is_readonly(f: &File) -> bool {
    // SAFETY: the fd is open for the call (owned here or by a live handle); the call reads no memory of
    // ours.
    let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE == libc::O_RDONLY
}
