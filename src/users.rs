//! Resolving `USER`/`--chown` specs against an image's /etc/passwd and /etc/group.
//!
//! The files are read through the rootfs' [`Root`]: symlinks resolve inside the image (never
//! to a host file), only a regular file is read (a FIFO cannot hang the build), and a file
//! larger than [`MAX_DB_SIZE`] is an error rather than a silently empty database.

use crate::fsutil::Root;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// The largest /etc/passwd or /etc/group kiln reads.
pub const MAX_DB_SIZE: u64 = 4 << 20;

/// A resolved user: ids and additional groups (the primary gid first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

fn open_root(rootfs: &Path) -> Result<Root> {
    Root::open(rootfs).with_context(|| format!("opening the rootfs {}", rootfs.display()))
}

/// The entries of `file` (/etc/passwd, /etc/group) of the image; none when it does not exist.
fn read_db(root: &Root, file: &str) -> Result<Vec<Vec<String>>> {
    let bytes = match root.read_regular(file, MAX_DB_SIZE) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Vec::new()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            // read_regular's own message names the file: not a regular file, or too large.
            bail!("cannot read the image's {file}: {e} (the limit is {MAX_DB_SIZE} bytes, regular files only)")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read the image's {file}")),
    };
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect())
}

fn lookup_user(passwd: &[Vec<String>], name: &str) -> Option<(u32, u32, String, String)> {
    passwd.iter().find(|f| f.len() >= 4 && f[0] == name).and_then(|f| {
        Some((
            f[2].parse().ok()?,
            f[3].parse().ok()?,
            f[0].clone(),
            f.get(5).cloned().unwrap_or_default(),
        ))
    })
}

fn lookup_group(group: &[Vec<String>], name: &str) -> Option<u32> {
    group
        .iter()
        .find(|f| f.len() >= 3 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
}

/// Resolves `user[:group]` (names or numeric ids) as Docker does for USER: a numeric uid
/// that has no passwd entry is allowed (gid 0); a name must exist.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser> {
    resolve_user_in(&open_root(rootfs)?, spec)
}

/// [`resolve_user`] in a rootfs already opened as a [`Root`].
pub fn resolve_user_in(root: &Root, spec: &str) -> Result<ResolvedUser> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        bail!("invalid user {spec:?}: empty user name");
    }
    let passwd = read_db(root, "/etc/passwd")?;
    let groups_db = read_db(root, "/etc/group")?;
    let (uid, mut gid, name, home) = match user.parse::<u32>() {
        Ok(uid) => match passwd.iter().find(|f| f.len() >= 4 && f[2] == user) {
            Some(f) => (
                uid,
                f[3].parse().unwrap_or(0),
                f[0].clone(),
                f.get(5).cloned().unwrap_or_default(),
            ),
            None => (uid, 0, String::new(), "/".to_string()),
        },
        Err(_) => match lookup_user(&passwd, user) {
            Some(u) => u,
            None => bail!("unable to find user {user}: no matching entries in passwd file"),
        },
    };
    let mut groups = Vec::new();
    match group {
        Some(g) => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => match lookup_group(&groups_db, g) {
                    Some(n) => n,
                    None => bail!("unable to find group {g}: no matching entries in group file"),
                },
            }
        }
        None if !name.is_empty() => {
            // Supplementary groups: every group that lists the user as a member.
            for f in &groups_db {
                if f.len() >= 4
                    && f[3].split(',').any(|m| m == name)
                    && let Ok(n) = f[2].parse::<u32>()
                    && n != gid
                    && !groups.contains(&n)
                {
                    groups.push(n);
                }
            }
        }
        None => {}
    }
    // The primary gid is one of the additional gids too, as Docker and containerd set them
    // since CVE-2023-25173 (`id` shows `groups=0(root),10(wheel)` for root).
    groups.insert(0, gid);
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// Resolves a `--chown=user[:group]` spec. Unlike USER, a missing group defaults to the
/// user's primary group only when the user is given by name; a numeric user without group
/// gets gid = uid, as BuildKit does.
pub fn resolve_chown(rootfs: &Path, spec: &str) -> Result<(u32, u32)> {
    resolve_chown_in(&open_root(rootfs)?, spec)
}

/// [`resolve_chown`] in a rootfs already opened as a [`Root`].
pub fn resolve_chown_in(root: &Root, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(root, "/etc/passwd")?;
    let uid_and_primary = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => match lookup_user(&passwd, user) {
            Some((uid, gid, _, _)) => (uid, gid),
            None => bail!(
                "unable to convert uid/gid chown string to host mapping: can't find uid for user {user}: no such user: {user}"
            ),
        },
    };
    let gid = match group {
        None => uid_and_primary.1,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match lookup_group(&read_db(root, "/etc/group")?, g) {
                Some(n) => n,
                None => bail!(
                    "unable to convert uid/gid chown string to host mapping: can't find gid for group {g}: no such group: {g}"
                ),
            },
        },
    };
    Ok((uid_and_primary.0, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn rootfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            t.path().join("etc/group"),
            "root:x:0:\ndaemon:x:1:\nnobody:x:65534:\nwheel:x:10:app\napp:x:1000:\n",
        )
        .unwrap();
        t
    }

    #[test]
    fn user_forms() {
        let r = rootfs();
        assert_eq!(
            resolve_user(r.path(), "app").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 10],
                home: "/home/app".into()
            }
        );
        assert_eq!(resolve_user(r.path(), "1").unwrap().gid, 1);
        assert_eq!(
            resolve_user(r.path(), "4242").unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 0,
                groups: vec![0],
                home: "/".into()
            }
        );
        assert_eq!(resolve_user(r.path(), "app:nobody").unwrap().gid, 65534);
        assert!(
            resolve_user(r.path(), "ghost")
                .unwrap_err()
                .to_string()
                .contains("unable to find user ghost")
        );
    }

    #[test]
    fn a_fifo_passwd_is_an_error_not_a_hang() {
        let r = rootfs();
        let p = r.path().join("etc/passwd");
        fs::remove_file(&p).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let path = r.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(format!("{:#}", resolve_user(&path, "app").unwrap_err()));
            let _ = tx.send(format!("{:#}", resolve_chown(&path, "app").unwrap_err()));
        });
        for _ in 0..2 {
            let e = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("reading a FIFO /etc/passwd hung");
            assert!(e.contains("/etc/passwd") && e.contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn an_oversized_passwd_is_an_error_naming_the_limit() {
        let r = rootfs();
        let mut big = "app:x:1000:1000::/home/app:/bin/sh\n".to_string();
        big.push_str(&"#".repeat(MAX_DB_SIZE as usize));
        fs::write(r.path().join("etc/passwd"), big).unwrap();
        let e = format!("{:#}", resolve_user(r.path(), "app").unwrap_err());
        assert!(e.contains("/etc/passwd") && e.contains(&MAX_DB_SIZE.to_string()), "{e}");
        // A directory there is not a database either.
        fs::remove_file(r.path().join("etc/passwd")).unwrap();
        fs::create_dir(r.path().join("etc/passwd")).unwrap();
        assert!(format!("{:#}", resolve_chown(r.path(), "app").unwrap_err()).contains("not a regular file"));
    }

    #[test]
    fn passwd_symlinks_resolve_inside_the_image() {
        let r = rootfs();
        let host = tempfile::tempdir().unwrap();
        let evil = host.path().join("passwd");
        fs::write(&evil, "evil:x:4242:4242::/:/bin/sh\n").unwrap();
        fs::write(host.path().join("group"), "evil:x:4242:\n").unwrap();
        fs::remove_file(r.path().join("etc/passwd")).unwrap();
        fs::remove_file(r.path().join("etc/group")).unwrap();
        std::os::unix::fs::symlink(&evil, r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(
            "/proc/self/root".to_string() + host.path().join("group").to_str().unwrap(),
            r.path().join("etc/group"),
        )
        .unwrap();
        let e = format!("{:#}", resolve_user(r.path(), "evil").unwrap_err());
        assert!(e.contains("unable to find user evil"), "{e}");
        assert!(resolve_chown(r.path(), "0:evil").is_err());
        // The same file inside the image is found.
        let inside = r.path().join(evil.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::write(&inside, "evil:x:7:7::/:/bin/sh\n").unwrap();
        assert_eq!(resolve_user(r.path(), "evil").unwrap().uid, 7);
    }

    #[test]
    fn chown_forms() {
        let r = rootfs();
        assert_eq!(resolve_chown(r.path(), "daemon").unwrap(), (1, 1));
        assert_eq!(resolve_chown(r.path(), "1000:nobody").unwrap(), (1000, 65534));
        assert_eq!(resolve_chown(r.path(), "42").unwrap(), (42, 42));
        assert!(resolve_chown(r.path(), "ghost").is_err());
    }
}
