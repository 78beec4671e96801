//! Which identity mapping kiln runs with, and which one it could set up: the id maps of
//! /proc/PID/{uid,gid}_map, the user's /etc/subuid and /etc/subgid ranges, and whether
//! newuidmap/newgidmap can map them. Both the ladder ([`super::probe`]) and the namespace entry
//! ([`super::userns`]) read these facts; this module imports neither.
//!
//! The procfs base and the process's ids come in as values ([`Proc`], [`Syscall`]), so the
//! decisions are unit-tested on a temp directory with the recording syscall.

use crate::sys::{Proc, RealSyscall, Syscall};
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Describes the mapping the parent set up: `full` or `single:REASON`.
pub const ENV_IDMAP: &str = "KILN_IDMAP";

/// Set to `single` to force the single-uid mapping (testing, or to avoid subordinate ids).
pub const ENV_IDMAP_MODE: &str = "KILN_IDMAP_MODE";

/// Maximum number of subordinate ids kiln maps (container ids 1..=65536).
pub const MAX_SUBIDS: u32 = 65536;

/// One line of /proc/PID/uid_map: `count` ids starting at `container` map to `host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub count: u32,
}

/// Which identity mapping kiln runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IdMapping {
    /// Container 0 is the user, 1.. are subordinate ids: image ownership works.
    Full {
        uid_ranges: Vec<IdRange>,
        gid_ranges: Vec<IdRange>,
    },
    /// Only the user's own id is mapped (to 0): the kernel refuses other owners; kiln emulates
    /// them (see `sandbox::idemu`).
    SingleUid { reason: String },
    /// Real root in the initial user namespace: no mapping needed.
    Host,
}

impl IdMapping {
    /// One human sentence.
    pub fn describe(&self) -> String {
        match self {
            IdMapping::Full { uid_ranges, gid_ranges } => format!(
                "user namespace with subordinate ids: uids {} / gids {}",
                fmt_ranges(uid_ranges),
                fmt_ranges(gid_ranges)
            ),
            IdMapping::SingleUid { reason } => {
                format!("single-uid user namespace (only your own id is mapped, to 0): {reason}")
            }
            IdMapping::Host => "real root: no user namespace, private mount namespace only".to_string(),
        }
    }
}

fn fmt_ranges(r: &[IdRange]) -> String {
    r.iter()
        .map(|r| format!("{}->{}+{}", r.container, r.host, r.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a full subordinate-id mapping is not possible (one clause each).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingBlocker {
    #[error("{ENV_IDMAP_MODE}=single is set")]
    ForcedByEnv,
    #[error("forced with --isolation single-uid")]
    ForcedByFlag,
    #[error("no range for {0} in /etc/subuid")]
    NoSubuid(String),
    #[error("no range for {0} in /etc/subgid")]
    NoSubgid(String),
    /// `newuidmap` or `newgidmap`.
    #[error("{0} is not installed (package uidmap)")]
    HelperMissing(&'static str),
    #[error("cannot stat {}: {err}", path.display())]
    HelperUnreadable { path: PathBuf, err: String },
    #[error("{} is neither setuid root nor has file capabilities", .0.display())]
    HelperNotPrivileged(PathBuf),
    #[error("no_new_privs is set on this process (NoNewPrivs: 1), so setuid helpers cannot work")]
    NoNewPrivs,
    #[error("cannot run {}: {err}", path.display())]
    HelperNotRun { path: PathBuf, err: String },
    #[error("{} failed: {stderr}", path.display())]
    HelperFailed { path: PathBuf, stderr: String },
}

/// Parses the text of /proc/PID/{uid,gid}_map.
pub fn parse_id_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|f| f.parse::<u64>().ok());
            let (c, h, n) = (it.next()??, it.next()??, it.next()??);
            Some(IdRange {
                container: c as u32,
                host: h as u32,
                count: n.min(u32::MAX as u64) as u32,
            })
        })
        .collect()
}

pub(crate) fn is_initial_map(r: &[IdRange]) -> bool {
    r.len() == 1 && r[0].container == 0 && r[0].host == 0 && r[0].count == u32::MAX
}

/// True when this process is in the initial user namespace (not inside any userns).
pub fn in_initial_userns() -> bool {
    in_initial_userns_in(&Proc::host())
}

/// [`in_initial_userns`] with procfs at `proc`.
pub fn in_initial_userns_in(proc: &Proc) -> bool {
    proc.read_own("uid_map")
        .map(|t| is_initial_map(&parse_id_map(&t)))
        .unwrap_or(true)
}

/// What kiln runs with. Inside the namespace: read from /proc/self/uid_map (plus the reason
/// the parent left in `KILN_IDMAP`). Outside it as a normal user: what `ensure` would set up.
pub fn id_mapping() -> IdMapping {
    id_mapping_with(&RealSyscall, &Proc::host(), std::env::var(ENV_IDMAP).ok().as_deref())
}

/// [`id_mapping`] with the ids from `sys`, procfs at `proc` and `idmap_env` the value of
/// `KILN_IDMAP`.
pub fn id_mapping_with(sys: &dyn Syscall, proc: &Proc, idmap_env: Option<&str>) -> IdMapping {
    let uids = parse_id_map(&proc.read_own("uid_map").unwrap_or_default());
    let gids = parse_id_map(&proc.read_own("gid_map").unwrap_or_default());
    if is_initial_map(&uids) {
        if sys.geteuid() == 0 {
            return IdMapping::Host;
        }
        let (uid, gid) = (sys.getuid(), sys.getgid());
        return match plan_mapping_in(proc, uid, gid) {
            Ok(p) => IdMapping::Full {
                uid_ranges: vec![
                    IdRange {
                        container: 0,
                        host: uid,
                        count: 1,
                    },
                    IdRange {
                        container: 1,
                        host: p.uid.0,
                        count: p.uid.1,
                    },
                ],
                gid_ranges: vec![
                    IdRange {
                        container: 0,
                        host: gid,
                        count: 1,
                    },
                    IdRange {
                        container: 1,
                        host: p.gid.0,
                        count: p.gid.1,
                    },
                ],
            },
            Err(reason) => IdMapping::SingleUid {
                reason: reason.to_string(),
            },
        };
    }
    let total: u64 = uids.iter().map(|r| r.count as u64).sum();
    if total > 1 {
        return IdMapping::Full {
            uid_ranges: uids,
            gid_ranges: gids,
        };
    }
    let reason = idmap_env
        .and_then(|v| v.strip_prefix("single:").map(str::to_string))
        .unwrap_or_else(|| "only one id is mapped in this user namespace".to_string());
    IdMapping::SingleUid { reason }
}

/// Whether this process runs in a single-uid user namespace (or would, outside it).
pub fn single_uid() -> bool {
    matches!(id_mapping(), IdMapping::SingleUid { .. })
}

/// Subordinate id ranges that newuidmap/newgidmap would map: (start, count) for uids and gids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubIdPlan {
    pub uid: (u32, u32),
    pub gid: (u32, u32),
    pub newuidmap: PathBuf,
    pub newgidmap: PathBuf,
}

/// Finds the first `/etc/subuid`-style entry for the user (by name or by numeric id); the
/// count is capped at [`MAX_SUBIDS`].
pub fn find_subid_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let ids = id.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(':');
            let (who, start, count) = (
                f.next()?,
                f.next()?.trim().parse::<u32>().ok()?,
                f.next()?.trim().parse::<u32>().ok()?,
            );
            ((Some(who) == name || who == ids) && count > 0).then_some((start, count.min(MAX_SUBIDS)))
        })
}

fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for d in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn helper_usable(p: &Path) -> Result<(), MappingBlocker> {
    let md = std::fs::metadata(p).map_err(|e| MappingBlocker::HelperUnreadable {
        path: p.to_path_buf(),
        err: e.to_string(),
    })?;
    let setuid = md.permissions().mode() & 0o4000 != 0;
    let has_caps = xattr::get(p, "security.capability").ok().flatten().is_some();
    if !setuid && !has_caps {
        return Err(MappingBlocker::HelperNotPrivileged(p.to_path_buf()));
    }
    Ok(())
}

/// newuidmap and newgidmap, when both are installed and setuid (or file-capped).
fn usable_helpers() -> Result<(PathBuf, PathBuf), MappingBlocker> {
    let nu = find_helper("newuidmap").ok_or(MappingBlocker::HelperMissing("newuidmap"))?;
    let ng = find_helper("newgidmap").ok_or(MappingBlocker::HelperMissing("newgidmap"))?;
    helper_usable(&nu)?;
    helper_usable(&ng)?;
    Ok((nu, ng))
}

/// Whether newuidmap and newgidmap are installed and setuid (or file-capped); the error says
/// what is wrong.
pub fn helpers_usable() -> Result<(), MappingBlocker> {
    usable_helpers().map(|_| ())
}

fn no_new_privs(proc: &Proc) -> bool {
    proc.read_own("status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1'))
        })
        .unwrap_or(false)
}

/// Decides whether a full subordinate-id mapping is possible for `uid`/`gid`; the error is
/// the reason why not.
pub fn plan_mapping(uid: u32, gid: u32) -> Result<SubIdPlan, MappingBlocker> {
    plan_mapping_in(&Proc::host(), uid, gid)
}

fn plan_mapping_in(proc: &Proc, uid: u32, gid: u32) -> Result<SubIdPlan, MappingBlocker> {
    if std::env::var(ENV_IDMAP_MODE).as_deref() == Ok("single") {
        return Err(MappingBlocker::ForcedByEnv);
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    let uname = user.as_ref().map(|u| u.name.clone());
    let gname = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    let who = uname.clone().unwrap_or_else(|| uid.to_string());
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let Some(ur) = find_subid_range(&subuid, uname.as_deref(), uid) else {
        return Err(MappingBlocker::NoSubuid(who));
    };
    // /etc/subgid is keyed by user name (or uid) too, like shadow's newgidmap does.
    let Some(gr) =
        find_subid_range(&subgid, uname.as_deref(), uid).or_else(|| find_subid_range(&subgid, gname.as_deref(), gid))
    else {
        return Err(MappingBlocker::NoSubgid(who));
    };
    let (nu, ng) = usable_helpers()?;
    if no_new_privs(proc) {
        return Err(MappingBlocker::NoNewPrivs);
    }
    Ok(SubIdPlan {
        uid: ur,
        gid: gr,
        newuidmap: nu,
        newgidmap: ng,
    })
}

/// Runs newuidmap/newgidmap for `pid`: container 0 → `id`, 1.. → `range`.
pub(crate) fn run_map_helper(helper: &Path, pid: i32, id: u32, range: (u32, u32)) -> Result<(), MappingBlocker> {
    let out = std::process::Command::new(helper)
        .args([
            pid.to_string(),
            "0".into(),
            id.to_string(),
            "1".into(),
            "1".into(),
            range.0.to_string(),
            range.1.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| MappingBlocker::HelperNotRun {
            path: helper.to_path_buf(),
            err: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        return Err(MappingBlocker::HelperFailed {
            path: helper.to_path_buf(),
            stderr: err,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RecordingSyscall;

    #[test]
    fn subid_lookup_by_name_or_id_and_cap() {
        let t = "# comment\nalice:100000:65536\n1001:200000:1000000\nbob:300000:0\n";
        assert_eq!(find_subid_range(t, Some("alice"), 5), Some((100000, 65536)));
        assert_eq!(find_subid_range(t, Some("carol"), 1001), Some((200000, 65536)));
        assert_eq!(find_subid_range(t, Some("bob"), 7), None);
        assert_eq!(find_subid_range(t, None, 9), None);
    }

    #[test]
    fn id_map_parsing() {
        let m = parse_id_map("         0       1001          1\n         1     100000      65536\n");
        assert_eq!(
            m,
            vec![
                IdRange {
                    container: 0,
                    host: 1001,
                    count: 1
                },
                IdRange {
                    container: 1,
                    host: 100000,
                    count: 65536
                }
            ]
        );
        assert!(is_initial_map(&parse_id_map("0 0 4294967295\n")));
        assert!(!is_initial_map(&m));
    }

    fn fake_proc(uid_map: &str, gid_map: &str) -> (tempfile::TempDir, Proc) {
        let t = tempfile::tempdir().unwrap();
        let proc = Proc::at(t.path());
        std::fs::create_dir_all(proc.own("")).unwrap();
        std::fs::write(proc.own("uid_map"), uid_map).unwrap();
        std::fs::write(proc.own("gid_map"), gid_map).unwrap();
        (t, proc)
    }

    #[test]
    fn mapping_read_from_the_injected_proc() {
        let sys = RecordingSyscall {
            uid: 0,
            euid: 0,
            ..Default::default()
        };
        // Real root in the initial namespace.
        let (_t, proc) = fake_proc("0 0 4294967295\n", "0 0 4294967295\n");
        assert_eq!(id_mapping_with(&sys, &proc, None), IdMapping::Host);
        assert!(in_initial_userns_in(&proc));
        // Inside kiln's namespace with a range.
        let (_t, proc) = fake_proc("0 1000 1\n1 100000 65536\n", "0 1000 1\n1 100000 65536\n");
        assert!(!in_initial_userns_in(&proc));
        match id_mapping_with(&sys, &proc, Some("full")) {
            IdMapping::Full { uid_ranges, gid_ranges } => {
                assert_eq!(uid_ranges.len(), 2);
                assert_eq!(gid_ranges[1].host, 100000);
            }
            m => panic!("{m:?}"),
        }
        // Inside a single-uid namespace: the reason the parent left, else a generic one.
        let (_t, proc) = fake_proc("0 1000 1\n", "0 1000 1\n");
        assert_eq!(
            id_mapping_with(&sys, &proc, Some("single:no range for x in /etc/subuid")),
            IdMapping::SingleUid {
                reason: "no range for x in /etc/subuid".into()
            }
        );
        assert!(matches!(
            id_mapping_with(&sys, &proc, None),
            IdMapping::SingleUid { reason } if reason.contains("only one id")
        ));
        // No uid_map at all (no procfs): the initial namespace.
        let t = tempfile::tempdir().unwrap();
        assert!(in_initial_userns_in(&Proc::at(t.path())));
    }

    #[test]
    fn no_new_privs_read_from_status() {
        let (_t, proc) = fake_proc("", "");
        assert!(!no_new_privs(&proc));
        std::fs::write(proc.own("status"), "Name:\tkiln\nNoNewPrivs:\t1\n").unwrap();
        assert!(no_new_privs(&proc));
    }

    #[test]
    fn blockers_read_as_before() {
        assert_eq!(
            MappingBlocker::HelperMissing("newgidmap").to_string(),
            "newgidmap is not installed (package uidmap)"
        );
        assert_eq!(MappingBlocker::ForcedByEnv.to_string(), "KILN_IDMAP_MODE=single is set");
        assert_eq!(
            MappingBlocker::HelperNotPrivileged("/usr/bin/newuidmap".into()).to_string(),
            "/usr/bin/newuidmap is neither setuid root nor has file capabilities"
        );
    }
}
