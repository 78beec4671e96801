//! The emulated-ids state files: the ownership-emulation supervisor of a RUN step
//! (`sandbox::idemu`) publishes the emulated fs ids of the step's processes here, and the
//! filesystem serving the step's rootfs (kiln's FUSE overlay, `rootfs::fuse`) reads them, so
//! that files a process running as an emulated user creates get that user as owner.
//!
//! Format: a directory beside the rootfs ([`state_dir`]) with one file per task id,
//! `<dir>/<pid>` holding `"FSUID FSGID"`.

use super::Proc;
use std::path::{Path, PathBuf};

/// Where the supervisor of a step on `rootfs` publishes emulated fs ids.
pub fn state_dir(rootfs: &Path) -> PathBuf {
    let name = rootfs
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    rootfs.with_file_name(format!(".{name}.kiln-ids"))
}

/// Publishes the emulated fs ids of task `pid` in `dir` (best effort: the step goes on, its
/// files then get the real owner).
pub fn publish(dir: &Path, pid: u32, fsuid: u32, fsgid: u32) {
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join(pid.to_string()), format!("{fsuid} {fsgid}"));
}

/// The emulated (fsuid, fsgid) of process `pid` (a thread id) published in `dir`, following
/// its parents (ids are inherited across fork); None when it runs as real root.
pub fn fs_ids(dir: &Path, pid: u32) -> Option<(u32, u32)> {
    fs_ids_in(&Proc::host(), dir, pid)
}

/// [`fs_ids`] with the parents looked up in `proc`.
pub fn fs_ids_in(proc: &Proc, dir: &Path, pid: u32) -> Option<(u32, u32)> {
    let mut p = pid;
    for _ in 0..64 {
        if let Ok(s) = std::fs::read_to_string(dir.join(p.to_string())) {
            let mut it = s.split_whitespace().map(|v| v.parse::<u32>());
            return match (it.next(), it.next()) {
                (Some(Ok(u)), Some(Ok(g))) if (u, g) != (0, 0) => Some((u, g)),
                _ => None,
            };
        }
        let status = proc.read_pid(p, "status").ok()?;
        let field = |k: &str| -> Option<u32> { super::status_field(&status, k)?.parse().ok() };
        let tgid = field("Tgid")?;
        let next = if tgid != p { tgid } else { field("PPid")? };
        if next <= 1 {
            return None;
        }
        p = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_inherited_from_the_thread_group_and_parents() {
        let t = tempfile::tempdir().unwrap();
        let proc = Proc::at(t.path().join("proc"));
        let dir = state_dir(&t.path().join("root"));
        assert_eq!(dir, t.path().join(".root.kiln-ids"));
        for (pid, tgid, ppid) in [(10, 10, 1), (11, 10, 1), (20, 20, 10), (30, 30, 1)] {
            let d = proc.base().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("status"), format!("Name:\tx\nTgid:\t{tgid}\nPPid:\t{ppid}\n")).unwrap();
        }
        publish(&dir, 10, 100, 101);
        publish(&dir, 30, 0, 0);
        assert_eq!(fs_ids_in(&proc, &dir, 10), Some((100, 101)));
        assert_eq!(fs_ids_in(&proc, &dir, 11), Some((100, 101)), "a thread of 10");
        assert_eq!(fs_ids_in(&proc, &dir, 20), Some((100, 101)), "a child of 10");
        assert_eq!(fs_ids_in(&proc, &dir, 30), None, "root again");
        assert_eq!(fs_ids_in(&proc, &dir, 40), None, "unknown task");
    }
}
