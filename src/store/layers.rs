//! Unpacked layers (`layers/<diff_id hex>/`, used as overlay lowers): completion markers and
//! publishing. (Their verification against the layer blob, `fsck --full`, unpacks the blob:
//! that is the layer module's job: its `verify` module.)
//!
//! ## Completion marker
//! A layer directory is trusted only when kiln itself completed it: after the directory is
//! renamed into `layers/`, kiln writes `layers/<diff_id hex>.complete` (next to the directory,
//! never inside it: the directory is an overlay lower, so anything in it would appear in
//! containers). The marker is JSON `{"diff_id", "ino", "born"}`: the diff_id, the inode
//! number and the birth time (where the filesystem keeps one) of the directory it completed. It is valid when it is a regular file owned by kiln's
//! (effective) user, names the same diff_id, records the inode (and birth time) the directory has now, and the
//! directory is owned by the same user as the marker. A directory without a valid marker (a
//! crash between rename and marker, an older kiln, or a directory someone else planted, or one
//! copied with new inodes) is never used: kiln moves it away and unpacks the blob again.
//!
//! The marker is written without fsync (temp file + rename): after a power loss a layer may
//! lose its marker (it is then unpacked again), and `kiln fsck --full` finds layer contents
//! that did not reach the disk.
//!
//! Publishing (rename + marker) and discarding happen under `locks/layers`, so a process never
//! takes another's freshly renamed, not yet marked directory for a foreign one.

use super::Store;
use super::gc;
use crate::digest::Digest;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// File name suffix of a completion marker: `layers/<diff_id hex>.complete`.
pub const MARKER_SUFFIX: &str = ".complete";

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Marker {
    diff_id: Digest,
    ino: u64,
    /// The directory's birth time (statx btime, ns), where the filesystem keeps one: an inode
    /// number alone is reused by a directory created after this one was removed.
    #[serde(default)]
    born: Option<u128>,
}

/// Birth time of a directory in ns since the epoch (None where the filesystem has none).
fn born(md: &fs::Metadata) -> Option<u128> {
    md.created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
}

impl Store {
    /// The completion marker of `layers/<diff_id hex>` (see the module docs).
    pub fn layer_marker(&self, diff_id: &Digest) -> PathBuf {
        self.root()
            .join("layers")
            .join(format!("{}{MARKER_SUFFIX}", diff_id.hex()))
    }

    /// Ok when `layers/<diff_id>` exists and kiln completed it; else why not.
    pub fn check_layer(&self, diff_id: &Digest) -> std::result::Result<(), String> {
        let dir = self.layer_dir(diff_id);
        let dmd = match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Err("it is not a directory".into()),
            Err(e) => return Err(format!("it cannot be read: {e}")),
        };
        let mp = self.layer_marker(diff_id);
        let mmd = match fs::symlink_metadata(&mp) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(format!("its completion marker {} is not a file", mp.display())),
            Err(_) => return Err("it has no completion marker (kiln did not complete it)".into()),
        };
        let euid = nix::unistd::geteuid().as_raw();
        if mmd.uid() != euid {
            return Err(format!(
                "its completion marker is owned by uid {}, not by kiln's uid {euid}",
                mmd.uid()
            ));
        }
        if dmd.uid() != mmd.uid() {
            return Err(format!("it is owned by uid {}, not by kiln's uid {euid}", dmd.uid()));
        }
        let m: Marker = fs::read(&mp)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| "its completion marker is not valid".to_string())?;
        if &m.diff_id != diff_id {
            return Err(format!("its completion marker is for {}", m.diff_id));
        }
        if m.ino != dmd.ino() {
            return Err("its completion marker was written for another directory (inode differs)".into());
        }
        if m.born.is_some() && m.born != born(&dmd) {
            return Err(
                "its completion marker was written for another directory (same inode number, other birth time)".into(),
            );
        }
        Ok(())
    }

    /// True when `layers/<diff_id>` can be used as a lower (see [`Store::check_layer`]).
    pub fn layer_ready(&self, diff_id: &Digest) -> bool {
        self.check_layer(diff_id).is_ok()
    }

    fn layers_lock(&self) -> Result<super::StoreLock> {
        super::flock(&self.root().join("locks/layers"))
    }

    /// Moves the finished layer directory `src` to `layers/<diff_id>` and marks it complete.
    /// When a valid layer is already there (another process won the race), `src` is left for
    /// the caller to drop; anything else there (no valid marker) is moved away first.
    pub fn publish_layer(&self, src: &Path, diff_id: &Digest) -> Result<()> {
        let dir = self.layer_dir(diff_id);
        let _g = self.layers_lock()?;
        if self.layer_ready(diff_id) {
            return Ok(());
        }
        self.discard_layer_locked(diff_id)?;
        fs::rename(src, &dir).with_context(|| format!("moving unpacked layer into {}", dir.display()))?;
        let md = fs::symlink_metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
        let data = serde_json::to_vec(&Marker {
            diff_id: diff_id.clone(),
            ino: md.ino(),
            born: born(&md),
        })
        .context("serialising a layer marker")?;
        // Not synced (as before this helper existed).
        let mp = self.layer_marker(diff_id);
        crate::fsutil::replace_file(&mp, ".tmp-", crate::fsutil::Durability::None, |f| {
            std::io::Write::write_all(f, &data).context("writing a layer marker")
        })
    }

    /// Removes `layers/<diff_id>` and its marker (the marker first), whatever state they are in.
    pub fn discard_layer(&self, diff_id: &Digest) -> Result<()> {
        let _g = self.layers_lock()?;
        self.discard_layer_locked(diff_id)
    }

    fn discard_layer_locked(&self, diff_id: &Digest) -> Result<()> {
        remove_marker(&self.layer_marker(diff_id))?;
        let dir = self.layer_dir(diff_id);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        let grave = gc::grave_for(self, &dir);
        fs::rename(&dir, &grave).with_context(|| {
            format!(
                "moving the untrusted layer directory {} out of layers/ (is it another user's?)",
                dir.display()
            )
        })?;
        // layers/ is free now. What cannot be removed here (files of other ids, seen from
        // outside the namespace) is this process's tmp entry: the next kiln to open the store
        // sweeps it, and `kiln fsck --repair` reports it, so there is nothing to warn about.
        let _ = crate::fsutil::remove::remove_path(&grave);
        Ok(())
    }
}

/// Removes a completion marker (missing is fine).
pub fn remove_marker(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// The marker path of a layer directory path (`layers/<hex>` → `layers/<hex>.complete`).
pub fn marker_of(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_os_string();
    s.push(MARKER_SUFFIX);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_src(s: &Store, name: &str) -> PathBuf {
        let p = s.root().join("tmp").join(name);
        fs::create_dir_all(p.join("etc")).unwrap();
        fs::write(p.join("etc/conf"), b"hello").unwrap();
        p
    }

    #[test]
    fn published_layers_carry_a_valid_marker() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"diff");
        assert!(!s.layer_ready(&d));
        s.publish_layer(&layer_src(&s, "a"), &d).unwrap();
        assert!(s.layer_ready(&d), "{:?}", s.check_layer(&d));
        assert!(t.path().join(format!("layers/{}.complete", d.hex())).is_file());
        assert!(!s.layer_dir(&d).join(".complete").exists(), "nothing inside the lower");
        // A second publisher loses the race and leaves its directory alone.
        let b = layer_src(&s, "b");
        s.publish_layer(&b, &d).unwrap();
        assert!(b.is_dir() && s.layer_ready(&d));
        // Discarding removes the marker and the directory.
        s.discard_layer(&d).unwrap();
        assert!(!s.layer_dir(&d).exists() && !s.layer_marker(&d).exists());
    }

    #[test]
    fn planted_or_unmarked_directories_are_not_trusted_and_get_replaced() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"diff");
        // Planted before first use, with an extra file.
        fs::create_dir_all(s.layer_dir(&d)).unwrap();
        fs::write(s.layer_dir(&d).join("pwned"), b"").unwrap();
        let why = s.check_layer(&d).unwrap_err();
        assert!(why.contains("no completion marker"), "{why}");
        // A copied marker does not help: it names another directory (inode).
        let other = Digest::of(b"other");
        s.publish_layer(&layer_src(&s, "o"), &other).unwrap();
        let m = fs::read(s.layer_marker(&other)).unwrap();
        let forged = String::from_utf8(m).unwrap().replace(other.hex(), d.hex());
        fs::write(s.layer_marker(&d), forged).unwrap();
        let why = s.check_layer(&d).unwrap_err();
        assert!(why.contains("inode"), "{why}");
        // Publishing replaces it with the real content.
        s.publish_layer(&layer_src(&s, "a"), &d).unwrap();
        assert!(s.layer_ready(&d));
        assert!(!s.layer_dir(&d).join("pwned").exists());
        assert!(s.layer_dir(&d).join("etc/conf").is_file());
        // A marker whose directory was swapped for another is invalid too.
        crate::fsutil::remove::remove_path(&s.layer_dir(&d)).unwrap();
        fs::create_dir(s.layer_dir(&d)).unwrap();
        assert!(!s.layer_ready(&d));
        assert!(fs::read(s.layer_marker(&d)).is_ok());
    }
}
