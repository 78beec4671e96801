//! The overlay directory format, in one place: how an overlay upper or lower directory says
//! "deleted" and "replaced", how a layer tar says it, and kiln's own records in those
//! directories. Every reader and writer of the format (the layer writer and unpacker, the
//! kernel-overlay upper cleanup, the copy snapshot, the FUSE overlay, COPY, `fsck --full`)
//! asks this module.
//!
//! - **Whiteout** (a deleted path): in a directory, a character device 0:0 with the deleted
//!   name (the kernel overlay's format); in a layer tar, an entry `.wh.<name>`.
//! - **Opaque directory** (a directory that replaces, not merges with, the lower ones): in a
//!   directory, the xattr `*.overlay.opaque = "y"`; in a layer tar, an entry `.wh..wh..opq`
//!   inside it. Other `.wh..wh.*` names are AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`),
//!   not content.
//! - **Overlay bookkeeping xattrs** (`user.overlay.*`, `trusted.overlay.*`,
//!   `user.fuseoverlayfs.*`): never written into a layer, never restored from one, never
//!   shown by kiln's FUSE overlay, never copied.
//! - **kiln's records** (`user.kiln.*`): the owner a file has in the layer when kiln cannot
//!   `chown` it ([`OWNER_XATTR`]) and a device node kiln could not create ([`DEV_XATTR`]).
//!   Never written into a layer as xattrs: the tar writer turns them into the entry's owner
//!   and type.
//!
//! ## Which opaque xattr names
//! The copies this module replaces disagreed: the layer writer read `user.overlay.opaque`,
//! `trusted.overlay.opaque` and `user.fuseoverlayfs.opaque`; the upper cleanup and the copy
//! snapshot read only the first two; the FUSE overlay only the first. The right set for a
//! *reader* is all three ([`OPAQUE_XATTRS`]): the kernel overlay writes
//! `trusted.overlay.opaque` when mounted without `userxattr` (real root) and
//! `user.overlay.opaque` with it (a user namespace, Linux ≥ 5.11); fuse-overlayfs (the rootless
//! driver of podman and buildah) writes `user.fuseoverlayfs.opaque` without privilege, and a
//! directory it prepared can reach kiln's layer writer (`kiln import DIR`). Only the value `"y"` means opaque (the kernel checks for it; Linux 6.7
//! uses `"x"` on a lower directory for "contains xattr whiteouts", which is not opaque).
//! kiln itself writes only [`OPAQUE_XATTR`] (`user.overlay.opaque`, what the kernel overlay
//! reads in a user namespace). A reader that sees only directories kiln wrote (the FUSE
//! overlay: its lowers are kiln's unpacked layers, whose tar xattrs of these names are
//! dropped, and its upper is its own) may check just [`OPAQUE_XATTR`], one `getxattr`
//! instead of three on its lookup path.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The name prefix of a whiteout entry in a layer tar (`.wh.<deleted name>`).
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The entry that marks its directory opaque in a layer tar.
pub const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
/// The prefix of AUFS bookkeeping entries (`.wh..wh.plnk`, `.wh..wh.aufs`, and the opaque
/// marker [`OPAQUE_WHITEOUT`]).
pub const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// What a `.wh.` name in a layer tar means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarWhiteout<'a> {
    /// `.wh..wh..opq`: the directory it is in is opaque.
    Opaque,
    /// Another `.wh..wh.*` name: AUFS bookkeeping, not content.
    Meta,
    /// `.wh.<name>`: `name` is deleted (it may be empty, `.` or `..`: the caller rejects those).
    Delete(&'a [u8]),
}

/// The meaning of the last path component `name` of a tar entry, when it is a whiteout.
pub fn tar_whiteout(name: &[u8]) -> Option<TarWhiteout<'_>> {
    if name == OPAQUE_WHITEOUT {
        Some(TarWhiteout::Opaque)
    } else if name.starts_with(WHITEOUT_META_PREFIX) {
        Some(TarWhiteout::Meta)
    } else {
        name.strip_prefix(WHITEOUT_PREFIX).map(TarWhiteout::Delete)
    }
}

/// The tar name of the whiteout of `name` (`.wh.<name>`).
pub fn whiteout_name(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(WHITEOUT_PREFIX.len() + name.len());
    v.extend_from_slice(WHITEOUT_PREFIX);
    v.extend_from_slice(name);
    v
}

/// Whether an inode of mode `mode` (with the file type bits) and device number `rdev` is a
/// whiteout: a character device 0:0.
pub fn is_whiteout_mode(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// [`is_whiteout_mode`] of an `lstat` result.
pub fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// The opaque-directory xattr kiln writes (what the kernel overlay reads with `userxattr`).
pub const OPAQUE_XATTR: &str = "user.overlay.opaque";
/// Every xattr name that marks a directory opaque (see the module docs for why these).
pub const OPAQUE_XATTRS: [&str; 3] = [OPAQUE_XATTR, "trusted.overlay.opaque", "user.fuseoverlayfs.opaque"];
/// The value of an opaque-directory xattr that means opaque.
pub const OPAQUE_VALUE: &[u8] = b"y";

/// Whether `name` is one of [`OPAQUE_XATTRS`].
pub fn is_opaque_xattr(name: &[u8]) -> bool {
    OPAQUE_XATTRS.iter().any(|o| o.as_bytes() == name)
}

/// Whether xattr `name` with `value` marks its directory opaque.
pub fn marks_opaque(name: &[u8], value: &[u8]) -> bool {
    value == OPAQUE_VALUE && is_opaque_xattr(name)
}

/// Whether a directory is opaque, asked through `get` (the caller's xattr getter: by path, by
/// fd or inside a root handle; `None` for a missing xattr or an error).
pub fn is_opaque_with(mut get: impl FnMut(&str) -> Option<Vec<u8>>) -> bool {
    OPAQUE_XATTRS.iter().any(|n| get(n).is_some_and(|v| v == OPAQUE_VALUE))
}

/// Whether the directory at `p` is opaque (`p` itself, not followed if it is a symlink).
pub fn is_opaque(p: &Path) -> bool {
    is_opaque_with(|n| xattr::get(p, n).ok().flatten())
}

/// Overlay bookkeeping xattrs: never written into a layer, never restored from one, never
/// shown in a merged view or copied.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.overlay.")
        || name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

/// The prefix of kiln's own xattrs.
pub const KILN_XATTR_PREFIX: &str = "user.kiln.";

/// Where kiln records the owner a file should have in the layer when it cannot `chown` it:
/// `"UID:GID"` in decimal. Written when an unprivileged kiln (isolation `none`, or a
/// single-uid user namespace) unpacks or copies files owned by other ids, and by the FUSE
/// overlay's and RUN's ownership emulation; the tar writer honours it wherever it is present.
/// Never written into a layer.
pub const OWNER_XATTR: &str = "user.kiln.owner";

/// Where kiln records a device node it could not create (single-uid user namespace): the file
/// is an empty regular file with `"c MAJOR MINOR"` or `"b MAJOR MINOR"`; the tar writer writes
/// a device entry. Never written into a layer.
pub const DEV_XATTR: &str = "user.kiln.dev";

/// Whether `name` is one of kiln's own xattrs (`user.kiln.*`).
pub fn is_kiln_xattr(name: &[u8]) -> bool {
    name.starts_with(KILN_XATTR_PREFIX.as_bytes())
}

/// An [`OWNER_XATTR`] value.
pub fn format_owner(uid: u32, gid: u32) -> String {
    format!("{uid}:{gid}")
}

/// Parses an [`OWNER_XATTR`] value: (uid, gid).
pub fn parse_owner(v: &[u8]) -> Option<(u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (u, g) = s.trim().split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// A [`DEV_XATTR`] value.
pub fn format_dev(block: bool, major: u32, minor: u32) -> String {
    format!("{} {major} {minor}", if block { "b" } else { "c" })
}

/// Parses a [`DEV_XATTR`] value: (is a block device, major, minor).
pub fn parse_dev(v: &[u8]) -> Option<(bool, u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut it = s.split_whitespace();
    let block = match it.next()? {
        "c" => false,
        "b" => true,
        _ => return None,
    };
    Some((block, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_whiteout_names() {
        assert_eq!(tar_whiteout(b".wh..wh..opq"), Some(TarWhiteout::Opaque));
        assert_eq!(tar_whiteout(b".wh..wh.plnk"), Some(TarWhiteout::Meta));
        assert_eq!(tar_whiteout(b".wh.passwd"), Some(TarWhiteout::Delete(b"passwd")));
        assert_eq!(tar_whiteout(b".wh."), Some(TarWhiteout::Delete(b"")));
        assert_eq!(tar_whiteout(b"passwd"), None);
        assert_eq!(tar_whiteout(b"x.wh.y"), None);
        assert_eq!(whiteout_name(b"passwd"), b".wh.passwd");
        assert_eq!(
            tar_whiteout(&whiteout_name(b"a")),
            Some(TarWhiteout::Delete(b"a")),
            "round trip"
        );
    }

    #[test]
    fn whiteout_inodes_are_char_devices_0_0() {
        assert!(is_whiteout_mode(libc::S_IFCHR | 0o600, 0));
        assert!(!is_whiteout_mode(libc::S_IFCHR | 0o600, libc::makedev(1, 3)));
        assert!(!is_whiteout_mode(libc::S_IFBLK, 0));
        assert!(!is_whiteout_mode(libc::S_IFREG, 0));
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"").unwrap();
        assert!(!is_whiteout(&fs::symlink_metadata(&f).unwrap()));
        // Creating a 0:0 device needs privilege (or a user namespace): checked where possible.
        let w = std::ffi::CString::new(t.path().join("w").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: `w` is a NUL-terminated path; mknod only creates a node there.
        if unsafe { libc::mknod(w.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0 {
            assert!(is_whiteout(&fs::symlink_metadata(t.path().join("w")).unwrap()));
        }
    }

    #[test]
    fn opaque_xattrs_agree_on_names_and_value() {
        for n in OPAQUE_XATTRS {
            assert!(is_opaque_xattr(n.as_bytes()), "{n}");
            assert!(is_overlay_xattr(n.as_bytes()), "{n} is bookkeeping too");
            assert!(marks_opaque(n.as_bytes(), b"y"));
            assert!(
                !marks_opaque(n.as_bytes(), b"x"),
                "6.7's xwhiteout marker is not opacity"
            );
        }
        assert!(!is_opaque_xattr(b"user.overlay.origin"));
        assert!(!marks_opaque(b"user.kiln.owner", b"y"));
        assert!(is_opaque_with(
            |n| (n == "trusted.overlay.opaque").then(|| b"y".to_vec())
        ));
        assert!(!is_opaque_with(|n| (n == OPAQUE_XATTR).then(|| b"n".to_vec())));
        assert!(!is_opaque_with(|_| None));
        let t = tempfile::tempdir().unwrap();
        assert!(!is_opaque(t.path()));
        if xattr::set(t.path(), OPAQUE_XATTR, b"y").is_ok() {
            assert!(is_opaque(t.path()));
        }
    }

    #[test]
    fn bookkeeping_and_kiln_xattrs() {
        for n in [
            "user.overlay.redirect",
            "trusted.overlay.origin",
            "user.fuseoverlayfs.foo",
        ] {
            assert!(is_overlay_xattr(n.as_bytes()), "{n}");
        }
        for n in [
            "user.mime_type",
            "security.capability",
            "user.kiln.owner",
            "trusted.foo",
        ] {
            assert!(!is_overlay_xattr(n.as_bytes()), "{n}");
        }
        assert!(is_kiln_xattr(OWNER_XATTR.as_bytes()) && is_kiln_xattr(DEV_XATTR.as_bytes()));
        assert!(!is_kiln_xattr(b"user.kilnx"));
    }

    #[test]
    fn owner_and_device_records_round_trip() {
        assert_eq!(parse_owner(format_owner(1000, 42).as_bytes()), Some((1000, 42)));
        assert_eq!(parse_owner(b" 7:8\n"), Some((7, 8)));
        assert_eq!(parse_owner(b"7"), None);
        assert_eq!(parse_owner(b"a:b"), None);
        assert_eq!(parse_dev(format_dev(false, 1, 3).as_bytes()), Some((false, 1, 3)));
        assert_eq!(parse_dev(format_dev(true, 8, 0).as_bytes()), Some((true, 8, 0)));
        assert_eq!(parse_dev(b"x 1 2"), None);
        assert_eq!(parse_dev(b"c 1"), None);
    }
}
