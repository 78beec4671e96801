//! Ownership as a value: whether the kernel keeps the owners a layer records, or kiln
//! emulates them (umoci's `MapOptions` / rootless unpack idea). The caller decides it once,
//! from the id mapping it runs with, and passes it in the options of commit
//! ([`super::LayerOptions`]), unpack ([`super::unpack_to_lower`], [`super::ApplyOptions`])
//! and COPY; nothing in the library reads a process-global flag.

use crate::fsutil::overlay::{OWNER_XATTR, format_owner, parse_owner};
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How the owners of files kiln writes relate to the owners in layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ownership {
    /// The kernel keeps owners: what `lstat` says is the owner in the layer (root, a user
    /// namespace with a subordinate id range, or root without namespaces). An unprivileged
    /// process that cannot `chown` keeps its own ids, like GNU tar.
    #[default]
    Kernel,
    /// Only kiln's own ids exist here (a single-uid user namespace, or no privilege and no
    /// namespace): files are owned by `uid:gid` on disk, which count as root in layers; other
    /// owners are recorded in [`OWNER_XATTR`] and device nodes in
    /// [`crate::fsutil::overlay::DEV_XATTR`].
    Emulated {
        /// The uid that stands for root (kiln's effective uid).
        uid: u32,
        /// The gid that stands for root (kiln's effective gid).
        gid: u32,
    },
}

impl Ownership {
    /// [`Ownership::Emulated`] with this process's effective ids.
    pub fn emulated() -> Ownership {
        Ownership::Emulated {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Whether owners are emulated.
    pub fn is_emulated(self) -> bool {
        matches!(self, Ownership::Emulated { .. })
    }

    /// The owner a file owned by `uid:gid` on disk has in a layer (without a record).
    pub fn layer_ids(self, uid: u32, gid: u32) -> (u32, u32) {
        match self {
            Ownership::Kernel => (uid, gid),
            Ownership::Emulated { uid: eu, gid: eg } => {
                (if uid == eu { 0 } else { uid }, if gid == eg { 0 } else { gid })
            }
        }
    }
}

/// Records that `p` belongs to `uid:gid` in the layer (root: the record is removed, since the
/// builder's own files count as root). Symlinks cannot carry `user.` xattrs: their owner is
/// root in the layer, and this returns Ok.
pub fn record_owner(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    if (uid, gid) == (0, 0) {
        return match xattr::remove(p, OWNER_XATTR) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) && e.raw_os_error() != Some(libc::EPERM) => Err(e),
            _ => Ok(()),
        };
    }
    match xattr::set(p, OWNER_XATTR, format_owner(uid, gid).as_bytes()) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && fs::symlink_metadata(p).is_ok_and(|m| m.is_symlink()) => {
            Ok(())
        }
        r => r,
    }
}

/// [`record_owner`] for the object an fd refers to (an `O_PATH` one included): through
/// `/proc/self/fd/N` with the calls that follow it, so the record lands on exactly that object
/// (l*xattr would act on the magic link itself). A symlink carries no record: Ok.
pub fn record_owner_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    if nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) {
        return Ok(());
    }
    let p = crate::fsutil::root::fd_path(fd);
    if (uid, gid) == (0, 0) {
        return match xattr::remove_deref(&p, OWNER_XATTR) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) && e.raw_os_error() != Some(libc::EPERM) => Err(e),
            _ => Ok(()),
        };
    }
    xattr::set_deref(&p, OWNER_XATTR, format_owner(uid, gid).as_bytes())
}

/// [`effective_owner`] of the object an fd refers to (see [`record_owner_fd`]).
pub fn effective_owner_fd(fd: BorrowedFd<'_>, md: &fs::Metadata, ownership: Ownership) -> (u32, u32) {
    let is_link = nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
    if !is_link
        && let Ok(Some(v)) = xattr::get_deref(crate::fsutil::root::fd_path(fd), OWNER_XATTR)
        && let Some(o) = parse_owner(&v)
    {
        return o;
    }
    ownership.layer_ids(md.uid(), md.gid())
}

/// The owner `p` has in a layer: the [`OWNER_XATTR`] record, else its owner on disk as
/// `ownership` maps it.
pub fn effective_owner(p: &Path, md: &fs::Metadata, ownership: Ownership) -> (u32, u32) {
    if let Ok(Some(v)) = xattr::get(p, OWNER_XATTR)
        && let Some(o) = parse_owner(&v)
    {
        return o;
    }
    ownership.layer_ids(md.uid(), md.gid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ownership_keeps_ids_emulated_maps_own_ids_to_root() {
        assert_eq!(Ownership::Kernel.layer_ids(1000, 100), (1000, 100));
        let e = Ownership::Emulated { uid: 1000, gid: 100 };
        assert!(e.is_emulated() && !Ownership::Kernel.is_emulated());
        assert_eq!(e.layer_ids(1000, 100), (0, 0));
        assert_eq!(e.layer_ids(1000, 5), (0, 5));
        assert_eq!(e.layer_ids(33, 100), (33, 0));
        assert_eq!(Ownership::default(), Ownership::Kernel);
    }

    #[test]
    fn the_record_wins_over_the_disk_owner() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"").unwrap();
        let md = fs::symlink_metadata(&f).unwrap();
        let own = Ownership::Emulated {
            uid: md.uid(),
            gid: md.gid(),
        };
        assert_eq!(effective_owner(&f, &md, own), (0, 0));
        assert_eq!(effective_owner(&f, &md, Ownership::Kernel), (md.uid(), md.gid()));
        if record_owner(&f, 7, 8).is_ok() && xattr::get(&f, OWNER_XATTR).is_ok_and(|v| v.is_some()) {
            assert_eq!(effective_owner(&f, &md, Ownership::Kernel), (7, 8));
            let fd = fs::File::open(&f).unwrap();
            use std::os::fd::AsFd;
            assert_eq!(effective_owner_fd(fd.as_fd(), &md, own), (7, 8));
            record_owner(&f, 0, 0).unwrap();
            assert_eq!(effective_owner(&f, &md, own), (0, 0));
        }
    }
}
