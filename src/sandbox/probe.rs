//! The isolation ladder: what this place allows, which rung kiln takes, and why.
//!
//! 1. `userns`: a user namespace with a subordinate-id range (or real root with a private mount
//!    namespace): kernel overlay (else FUSE, else copies), full RUN sandbox.
//! 2. `single-uid`: a user namespace that maps only the user's own id (no /etc/subuid line,
//!    no setuid newuidmap, no_new_privs): RUN works; files owned by other ids need the FUSE
//!    overlay's ownership emulation.
//! 3. `chroot`: root without namespaces (GitLab's Docker executor, Kubernetes pods running as
//!    root: the runtime's seccomp profile blocks unshare and mount): layers are plain
//!    directories compared by snapshot, RUN steps `chroot` into a copy of the rootfs with /dev
//!    nodes made by mknod and no /proc.
//! 4. `none`: no privilege at all (non-root, no user namespaces): FROM/COPY/ADD/metadata
//!    builds work (layer tar headers carry the declared owners); a RUN step is refused before
//!    the build starts with a paragraph saying what is missing and what would enable it.
//!
//! [`facts`] reads what the kernel and the runtime say (a few files, well under a millisecond);
//! [`try_userns`] and [`try_mountns`] try the real sequence in a forked child (unshare, write
//! the id maps, mount), a few milliseconds. `userns::ensure` decides once per kiln invocation
//! and leaves the answer in `KILN_RUNG` for the processes it starts; [`current`] reads it.

use super::idmap::{self, IdMapping};
use crate::sys::status_field;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

pub use super::trial::{StepResult, Trial, try_mountns, try_userns};
use std::fmt::Write as _;

/// The chosen rung, set by `userns::ensure` for the process that does the work (and inherited
/// by the sandbox helpers it starts).
pub const ENV_RUNG: &str = "KILN_RUNG";
/// Why that rung (one sentence), alongside [`ENV_RUNG`].
pub const ENV_RUNG_WHY: &str = "KILN_RUNG_WHY";

/// A rung of the ladder (`--isolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    Userns,
    SingleUid,
    Chroot,
    None,
}

impl Isolation {
    /// Parses an `--isolation` value; `auto` is `Ok(None)`.
    pub fn parse(s: &str) -> Result<Option<Isolation>> {
        Ok(Some(match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => return Ok(None),
            "userns" | "user" | "rootless" => Isolation::Userns,
            "single-uid" | "single" => Isolation::SingleUid,
            "chroot" => Isolation::Chroot,
            "none" => Isolation::None,
            other => bail!("--isolation {other}: expected auto, userns, single-uid, chroot or none"),
        }))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Userns => "userns",
            Isolation::SingleUid => "single-uid",
            Isolation::Chroot => "chroot",
            Isolation::None => "none",
        }
    }

    /// The rung number (1 = best).
    pub fn rung(self) -> u8 {
        match self {
            Isolation::Userns => 1,
            Isolation::SingleUid => 2,
            Isolation::Chroot => 3,
            Isolation::None => 4,
        }
    }

    /// Whether kiln may mount here (overlay lowers, the RUN sandbox's /proc, /dev, ...).
    pub fn can_mount(self) -> bool {
        matches!(self, Isolation::Userns | Isolation::SingleUid)
    }

    /// Whether RUN steps can execute here.
    pub fn can_run(self) -> bool {
        self != Isolation::None
    }

    /// One line: what this rung gives.
    pub fn summary(self) -> &'static str {
        match self {
            Isolation::Userns => {
                "user namespace with subordinate ids (or real root): full RUN sandbox, image ownership as declared"
            }
            Isolation::SingleUid => {
                "single-uid user namespace: RUN works with only your own id mapped; owners of other ids are recorded (user.kiln.owner) where ownership emulation covers them"
            }
            Isolation::Chroot => {
                "root without namespaces: RUN chroots into a copy of the rootfs (no /proc, /dev nodes by mknod, no pid/mount isolation); layers by snapshot comparison"
            }
            Isolation::None => {
                "no privilege: FROM/COPY/ADD/metadata builds only, owners written into the layer tar headers; RUN is refused"
            }
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rung this process runs with: what `userns::ensure` chose (from [`ENV_RUNG`]), else
/// derived from the id mapping (library use without `ensure`).
pub fn current() -> Isolation {
    if let Ok(v) = std::env::var(ENV_RUNG)
        && let Ok(Some(i)) = Isolation::parse(&v)
    {
        return i;
    }
    match idmap::id_mapping() {
        IdMapping::SingleUid { .. } => Isolation::SingleUid,
        _ => Isolation::Userns,
    }
}

/// Why [`current`] was chosen (empty when unknown).
pub fn current_reason() -> String {
    std::env::var(ENV_RUNG_WHY).unwrap_or_default()
}

/// What the kernel, the runtime and the system configuration allow (see the module doc).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    /// The user's name, when /etc/passwd knows the uid (OpenShift's arbitrary uids have none).
    pub user: Option<String>,
    /// `CapEff` of /proc/self/status.
    pub cap_eff: u64,
    pub no_new_privs: bool,
    /// 0 = none, 1 = strict, 2 = filter (a container runtime's profile, systemd, ...).
    pub seccomp: u8,
    /// First line of /proc/self/uid_map.
    pub uid_map: String,
    /// Already inside a user namespace (the map is not the initial `0 0 4294967295`).
    pub in_userns: bool,
    pub max_user_namespaces: Option<u64>,
    pub unprivileged_userns_clone: Option<u64>,
    pub apparmor_restrict_unprivileged_userns: Option<u64>,
    /// (start, count) of the user's /etc/subuid and /etc/subgid entries.
    pub subuid: Option<(u32, u32)>,
    pub subgid: Option<(u32, u32)>,
    /// `ok`, or why newuidmap/newgidmap cannot map a range.
    pub newuidmap: String,
    /// `usable`, `absent`, or `present but not usable: ...`.
    pub fuse: String,
    /// /proc has Docker-style over-mounted (masked) paths: a fresh procfs cannot be mounted.
    pub proc_masked: bool,
    /// Container markers found (`/.dockerenv`, `/run/.containerenv`, Kubernetes).
    pub container: Option<String>,
    /// CI markers found (GitLab, GitHub Actions, generic CI).
    pub ci: Option<String>,
    /// The unshare/map/mount trial ([`try_userns`]), when it ran.
    pub userns_trial: Option<Trial>,
    /// Real root only: `unshare(CLONE_NEWNS)` + mount without a user namespace.
    pub mountns_trial: Option<Trial>,
}

const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
const CAP_MKNOD: u32 = 27;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_SYS_ADMIN: u32 = 21;

impl Facts {
    pub fn has_cap(&self, cap: u32) -> bool {
        self.cap_eff & (1u64 << cap) != 0
    }

    pub fn is_root(&self) -> bool {
        self.euid == 0
    }

    /// Root with what the chroot rung needs (Docker's default set has all of it).
    pub fn root_can_chroot(&self) -> bool {
        self.is_root()
            && [
                CAP_CHOWN,
                CAP_DAC_OVERRIDE,
                CAP_FOWNER,
                CAP_SETUID,
                CAP_SETGID,
                CAP_SYS_CHROOT,
            ]
            .iter()
            .all(|c| self.has_cap(*c))
    }

    /// Caps of the chroot rung that are missing, by name.
    pub fn missing_chroot_caps(&self) -> Vec<&'static str> {
        [
            (CAP_CHOWN, "CHOWN"),
            (CAP_DAC_OVERRIDE, "DAC_OVERRIDE"),
            (CAP_FOWNER, "FOWNER"),
            (CAP_MKNOD, "MKNOD"),
            (CAP_SETUID, "SETUID"),
            (CAP_SETGID, "SETGID"),
            (CAP_SYS_CHROOT, "SYS_CHROOT"),
        ]
        .iter()
        .filter(|(c, _)| !self.has_cap(*c))
        .map(|(_, n)| *n)
        .collect()
    }

    pub fn who(&self) -> String {
        self.user.clone().unwrap_or_else(|| self.uid.to_string())
    }

    /// Number of effective capabilities.
    pub fn cap_count(&self) -> u32 {
        self.cap_eff.count_ones()
    }
}

fn read_u64(p: &str) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Reads the facts (files only; no child processes). Well under a millisecond.
pub fn facts() -> Facts {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let euid = nix::unistd::geteuid().as_raw();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let gname = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    let uid_map_text = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let in_userns = !idmap::in_initial_userns();
    let subuid_text = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid_text = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let subuid = idmap::find_subid_range(&subuid_text, user.as_deref(), uid);
    let subgid = idmap::find_subid_range(&subgid_text, user.as_deref(), uid)
        .or_else(|| idmap::find_subid_range(&subgid_text, gname.as_deref(), gid));
    let no_new_privs = status_field(&status, "NoNewPrivs").as_deref() == Some("1");
    let newuidmap = match idmap::helpers_usable() {
        Ok(()) if no_new_privs => {
            "installed, but no_new_privs is set, so setuid helpers cannot gain privileges".to_string()
        }
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let fuse = match std::fs::metadata("/dev/fuse") {
        Err(_) => "absent".to_string(),
        Ok(_) => match std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
            Ok(_) => "usable".to_string(),
            Err(e) => format!("present but not usable: {e}"),
        },
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let proc_masked = mountinfo.lines().any(|l| {
        let mp = l.split(' ').nth(4).unwrap_or("");
        matches!(
            mp,
            "/proc/keys" | "/proc/kcore" | "/proc/timer_list" | "/proc/acpi" | "/proc/scsi"
        )
    });
    let mut container = Vec::new();
    if std::path::Path::new("/.dockerenv").exists() {
        container.push("/.dockerenv");
    }
    if std::path::Path::new("/run/.containerenv").exists() {
        container.push("/run/.containerenv");
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        container.push("KUBERNETES_SERVICE_HOST");
    }
    if proc_masked {
        container.push("masked /proc");
    }
    let ci = [
        ("GITLAB_CI", "GitLab CI"),
        ("GITHUB_ACTIONS", "GitHub Actions"),
        ("CI", "CI"),
    ]
    .iter()
    .find(|(k, _)| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
    .map(|(_, n)| n.to_string());
    Facts {
        uid,
        euid,
        gid,
        user,
        cap_eff: status_field(&status, "CapEff")
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .unwrap_or(0),
        no_new_privs,
        seccomp: status_field(&status, "Seccomp")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        uid_map: uid_map_text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        in_userns,
        max_user_namespaces: read_u64("/proc/sys/user/max_user_namespaces"),
        unprivileged_userns_clone: read_u64("/proc/sys/kernel/unprivileged_userns_clone"),
        apparmor_restrict_unprivileged_userns: read_u64("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        subuid,
        subgid,
        newuidmap,
        fuse,
        proc_masked,
        container: (!container.is_empty()).then(|| container.join(", ")),
        ci,
        userns_trial: None,
        mountns_trial: None,
    }
}

/// Facts plus both trials (for `kiln info`).
pub fn full_probe() -> Facts {
    let mut f = facts();
    f.userns_trial = Some(try_userns());
    if f.is_root() && !f.in_userns {
        f.mountns_trial = Some(try_mountns());
    }
    f
}

/// What `ensure` would pick from `f` (with both trials in it), and why (one sentence).
pub fn decide(f: &Facts) -> (Isolation, String) {
    if f.in_userns {
        let full = idmap::id_mapping();
        return match full {
            IdMapping::SingleUid { reason } => (
                Isolation::SingleUid,
                format!("already in a single-uid user namespace ({reason})"),
            ),
            _ => (
                Isolation::Userns,
                "already in a user namespace with a range of ids".into(),
            ),
        };
    }
    if f.is_root() {
        if f.mountns_trial.as_ref().is_some_and(|t| t.mount.is_ok()) {
            return (
                Isolation::Userns,
                "real root with CAP_SYS_ADMIN: a private mount namespace, no user namespace needed".into(),
            );
        }
        if f.userns_trial.as_ref().is_some_and(|t| t.mount.is_ok()) {
            return (
                Isolation::Userns,
                "root without CAP_SYS_ADMIN, but user namespaces are allowed: a user namespace mapping root's own ids"
                    .into(),
            );
        }
        if f.root_can_chroot() {
            return (
                Isolation::Chroot,
                format!(
                    "root, but neither a mount namespace nor a user namespace can be created ({}): no namespaces",
                    blocker(f)
                ),
            );
        }
        return (
            Isolation::None,
            format!(
                "root without the capabilities chroot isolation needs (missing {}) and without namespaces",
                f.missing_chroot_caps().join(", ")
            ),
        );
    }
    match &f.userns_trial {
        Some(t) if t.map.is_ok() => {
            if f.subuid.is_some() && f.subgid.is_some() && f.newuidmap == "ok" {
                (
                    Isolation::Userns,
                    format!("user namespaces allowed and {} has a subordinate id range", f.who()),
                )
            } else {
                (
                    Isolation::SingleUid,
                    format!("user namespaces allowed, but {}", range_blocker(f)),
                )
            }
        }
        _ => (
            Isolation::None,
            format!("not root and user namespaces are not available ({})", blocker(f)),
        ),
    }
}

/// Why a user namespace cannot be used, from the trial and the facts (one clause).
pub fn blocker(f: &Facts) -> String {
    let Some(t) = &f.userns_trial else {
        return "not probed".into();
    };
    if t.unshare.is_err(libc::ENOSPC) {
        return format!(
            "unshare(CLONE_NEWUSER) -> ENOSPC: user.max_user_namespaces is {}",
            f.max_user_namespaces.map(|v| v.to_string()).unwrap_or("0".into())
        );
    }
    if t.unshare.is_err(libc::EPERM) || t.unshare.is_err(libc::ENOSYS) {
        if f.unprivileged_userns_clone == Some(0) && !f.is_root() {
            return "unshare(CLONE_NEWUSER) -> EPERM: kernel.unprivileged_userns_clone is 0".into();
        }
        if f.seccomp == 2 {
            return format!(
                "unshare(CLONE_NEWUSER) -> {}: a seccomp filter is active (Seccomp: 2){}",
                if t.unshare.is_err(libc::ENOSYS) {
                    "ENOSYS"
                } else {
                    "EPERM"
                },
                if f.container.is_some() {
                    " — the container runtime's default profile"
                } else {
                    ""
                }
            );
        }
        return "unshare(CLONE_NEWUSER) -> EPERM (an LSM or seccomp policy)".into();
    }
    if let Some(e) = t.unshare.errno {
        return format!("unshare(CLONE_NEWUSER) -> {}", StepResult::err(e));
    }
    if !t.map.is_ok() {
        if f.apparmor_restrict_unprivileged_userns == Some(1) {
            return "the namespace is created but writing uid_map fails (EPERM): AppArmor's kernel.apparmor_restrict_unprivileged_userns=1".into();
        }
        return format!("the namespace is created but writing uid_map fails ({})", t.map);
    }
    if !t.mount.is_ok() {
        return format!("mounting inside the user namespace fails ({})", t.mount);
    }
    if let Some(m) = &f.mountns_trial
        && !m.mount.is_ok()
    {
        return format!("unshare(CLONE_NEWNS) as root -> {}", m.unshare);
    }
    "no blocker found".into()
}

/// Why only the own id can be mapped (one clause).
pub fn range_blocker(f: &Facts) -> String {
    if f.subuid.is_none() {
        return format!("{} has no line in /etc/subuid", f.who());
    }
    if f.subgid.is_none() {
        return format!("{} has no line in /etc/subgid", f.who());
    }
    if f.newuidmap != "ok" {
        return f.newuidmap.clone();
    }
    "the subordinate ids could not be mapped".into()
}

/// One paragraph for "RUN cannot work here": what is missing, the evidence, the likely cause,
/// and the fixes from "no admin needed" to "admin needed".
pub fn run_refusal(f: &Facts, what: &str) -> String {
    let mut s = String::new();
    if current_reason().starts_with("forced") {
        return format!(
            "cannot run {what}: --isolation none was given (KILN_ISOLATION or the flag); builds without RUN only. \
             Use --isolation auto to run it ({} would be chosen here: {})",
            decide(f).0,
            decide(f).1
        );
    }
    let _ = writeln!(
        s,
        "cannot run {what} here: this process is not root and may not create user namespaces \
         (isolation rung 4, `none`)."
    );
    let _ = writeln!(
        s,
        "  evidence: uid {}{}, NoNewPrivs {}, Seccomp {}, {}",
        f.uid,
        if f.user.is_none() { " (no passwd entry)" } else { "" },
        f.no_new_privs as u8,
        f.seccomp,
        blocker(f)
    );
    let t = f.userns_trial.clone().unwrap_or_default();
    let (cause, fixes): (&str, Vec<String>) = if t.unshare.is_err(libc::ENOSPC) {
        (
            "user.max_user_namespaces=0 (RHEL 7 default, STIG hardening)",
            vec!["admin: sudo sysctl -w user.max_user_namespaces=15000 (persist it in /etc/sysctl.d/)".into()],
        )
    } else if f.unprivileged_userns_clone == Some(0) {
        (
            "Debian's kernel.unprivileged_userns_clone=0",
            vec!["admin: sudo sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/)".into()],
        )
    } else if t.unshare.is_ok() && !t.map.is_ok() && f.apparmor_restrict_unprivileged_userns == Some(1) {
        (
            "Ubuntu's AppArmor restriction of unprivileged user namespaces",
            vec![
                "admin: an AppArmor profile granting `userns,` to kiln (/etc/apparmor.d/kiln), or".into(),
                "admin: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0".into(),
            ],
        )
    } else if f.seccomp == 2 {
        (
            "the container runtime's default seccomp profile (Docker/GitLab Runner docker executor with \
             privileged = false, Kubernetes RuntimeDefault) blocks unshare(CLONE_NEWUSER)",
            vec![
                "run the job as root (image `USER root`, `docker run --user 0`, Kubernetes `runAsUser: 0`): kiln then \
                 builds with chroot isolation, no namespaces needed"
                    .into(),
                "runner admin: [runners.docker] security_opt = [\"seccomp:unconfined\"] (docker run --security-opt \
                 seccomp=unconfined; Kubernetes securityContext.seccompProfile.type: Unconfined)"
                    .into(),
            ],
        )
    } else {
        (
            "a security policy of this host blocks user namespaces",
            vec!["admin: allow unprivileged user namespaces for kiln".into()],
        )
    };
    let _ = writeln!(s, "  cause:    {cause}");
    let _ = writeln!(s, "  fix one of:");
    let _ = writeln!(
        s,
        "    - remove RUN from the Dockerfile: FROM/COPY/ADD/ENV/LABEL builds need no privilege and work here"
    );
    for fx in fixes {
        let _ = writeln!(s, "    - {fx}");
    }
    let _ = write!(s, "  details: kiln info");
    s
}

/// One paragraph for the single-uid rung: what is missing for a range of ids and the fix.
pub fn single_uid_advice(f: &Facts) -> String {
    let who = f.user.clone().unwrap_or_else(|| "USER".into());
    if f.no_new_privs {
        return "no_new_privs is set (Kubernetes allowPrivilegeEscalation: false, systemd NoNewPrivileges=, \
                setpriv --no-new-privs), so the setuid newuidmap cannot map a range; fix: allow privilege \
                escalation for the job, or run kiln from a shell without no_new_privs"
            .into();
    }
    if f.subuid.is_none() || f.subgid.is_none() {
        return format!(
            "{} has no /etc/subuid or /etc/subgid range; fix (admin): sudo usermod --add-subuids 100000-165535 \
             --add-subgids 100000-165535 {who}",
            f.who()
        );
    }
    if f.newuidmap != "ok" {
        return format!(
            "{}; fix (admin): apt-get install uidmap (or dnf install shadow-utils), and make newuidmap/newgidmap \
             setuid root",
            f.newuidmap
        );
    }
    "the subordinate ids could not be mapped (see kiln --debug)".into()
}

/// The facts as an aligned, human table (for `kiln info`).
pub fn facts_table(f: &Facts) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    v.push((
        "user".into(),
        format!(
            "uid {} (euid {}), gid {}{}",
            f.uid,
            f.euid,
            f.gid,
            f.user
                .as_deref()
                .map(|u| format!(", {u}"))
                .unwrap_or(" (no passwd entry)".into())
        ),
    ));
    v.push((
        "capabilities".into(),
        format!(
            "CapEff {:016x} ({} caps{})",
            f.cap_eff,
            f.cap_count(),
            if f.has_cap(CAP_SYS_ADMIN) {
                ", incl. SYS_ADMIN"
            } else {
                ""
            }
        ),
    ));
    v.push(("no_new_privs".into(), (f.no_new_privs as u8).to_string()));
    v.push((
        "seccomp".into(),
        match f.seccomp {
            0 => "none".into(),
            1 => "strict".into(),
            _ => "filter active (a container runtime's or service manager's profile)".into(),
        },
    ));
    v.push((
        "uid_map".into(),
        format!(
            "{}{}",
            f.uid_map,
            if f.in_userns { " (in a user namespace)" } else { "" }
        ),
    ));
    let opt = |o: Option<u64>| o.map(|v| v.to_string()).unwrap_or("(absent)".into());
    v.push((
        "sysctls".into(),
        format!(
            "user.max_user_namespaces={} kernel.unprivileged_userns_clone={} kernel.apparmor_restrict_unprivileged_userns={}",
            opt(f.max_user_namespaces),
            opt(f.unprivileged_userns_clone),
            opt(f.apparmor_restrict_unprivileged_userns)
        ),
    ));
    let range = |r: Option<(u32, u32)>| r.map(|(s, n)| format!("{s}+{n}")).unwrap_or("none".into());
    v.push((
        "subids".into(),
        format!("/etc/subuid {}, /etc/subgid {}", range(f.subuid), range(f.subgid)),
    ));
    v.push(("newuidmap".into(), f.newuidmap.clone()));
    v.push(("/dev/fuse".into(), f.fuse.clone()));
    v.push((
        "container".into(),
        f.container.clone().unwrap_or("none detected".into()),
    ));
    if let Some(ci) = &f.ci {
        v.push(("ci".into(), ci.clone()));
    }
    if let Some(t) = &f.userns_trial {
        v.push((
            "userns trial".into(),
            format!("unshare {}; map own id {}; mount {}", t.unshare, t.map, t.mount),
        ));
    }
    if let Some(t) = &f.mountns_trial {
        v.push((
            "mountns trial".into(),
            format!("unshare(CLONE_NEWNS) {}; mount {}", t.unshare, t.mount),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Facts {
        Facts {
            uid: 1001,
            euid: 1001,
            gid: 1001,
            user: Some("tester".into()),
            subuid: Some((100000, 65536)),
            subgid: Some((100000, 65536)),
            newuidmap: "ok".into(),
            fuse: "usable".into(),
            ..Default::default()
        }
    }

    fn trial(u: StepResult, m: StepResult, mo: StepResult) -> Option<Trial> {
        Some(Trial {
            unshare: u,
            map: m,
            mount: mo,
        })
    }

    #[test]
    fn ladder_decisions_follow_the_research_table() {
        let ok = StepResult::ok;
        // rootless with subuid
        let mut f = base();
        f.userns_trial = trial(ok(), ok(), ok());
        assert_eq!(decide(&f).0, Isolation::Userns);
        // no subuid line
        f.subuid = None;
        let (i, why) = decide(&f);
        assert_eq!(i, Isolation::SingleUid);
        assert!(why.contains("/etc/subuid"), "{why}");
        assert!(single_uid_advice(&f).contains("usermod --add-subuids 100000-165535"));
        // no_new_privs
        let mut f = base();
        f.no_new_privs = true;
        f.newuidmap = "installed, but no_new_privs is set".into();
        f.userns_trial = trial(ok(), ok(), ok());
        assert_eq!(decide(&f).0, Isolation::SingleUid);
        assert!(single_uid_advice(&f).contains("allowPrivilegeEscalation"));
        // Debian sysctl
        let mut f = base();
        f.unprivileged_userns_clone = Some(0);
        f.userns_trial = trial(
            StepResult::err(libc::EPERM),
            StepResult::default(),
            StepResult::default(),
        );
        assert_eq!(decide(&f).0, Isolation::None);
        let p = run_refusal(&f, "RUN");
        assert!(p.contains("sysctl -w kernel.unprivileged_userns_clone=1"), "{p}");
        // max_user_namespaces=0
        let mut f = base();
        f.max_user_namespaces = Some(0);
        f.userns_trial = trial(
            StepResult::err(libc::ENOSPC),
            StepResult::default(),
            StepResult::default(),
        );
        assert_eq!(decide(&f).0, Isolation::None);
        assert!(run_refusal(&f, "RUN").contains("user.max_user_namespaces=15000"));
        // Ubuntu AppArmor: create ok, map EPERM
        let mut f = base();
        f.apparmor_restrict_unprivileged_userns = Some(1);
        f.userns_trial = trial(ok(), StepResult::err(libc::EPERM), StepResult::default());
        assert_eq!(decide(&f).0, Isolation::None);
        assert!(run_refusal(&f, "RUN").contains("apparmor_restrict_unprivileged_userns=0"));
        // container seccomp, non-root
        let mut f = base();
        f.seccomp = 2;
        f.container = Some("masked /proc".into());
        f.userns_trial = trial(
            StepResult::err(libc::EPERM),
            StepResult::default(),
            StepResult::default(),
        );
        assert_eq!(decide(&f).0, Isolation::None);
        let p = run_refusal(&f, "RUN");
        assert!(
            p.contains("seccomp:unconfined") && p.contains("run the job as root"),
            "{p}"
        );
        // GitLab docker executor as root: 14 caps, seccomp blocks everything
        let mut f = base();
        f.uid = 0;
        f.euid = 0;
        f.seccomp = 2;
        f.cap_eff = 0xa80425fb;
        f.userns_trial = trial(
            StepResult::err(libc::EPERM),
            StepResult::default(),
            StepResult::default(),
        );
        f.mountns_trial = trial(
            StepResult::err(libc::EPERM),
            StepResult::default(),
            StepResult::err(libc::EPERM),
        );
        assert_eq!(decide(&f).0, Isolation::Chroot);
        // same with seccomp unconfined: a userns mapping root
        f.userns_trial = trial(ok(), ok(), ok());
        assert_eq!(decide(&f).0, Isolation::Userns);
        // root with all caps on a host
        f.mountns_trial = trial(ok(), StepResult::default(), ok());
        assert_eq!(decide(&f).0, Isolation::Userns);
        // root with no caps at all
        let mut f = base();
        f.uid = 0;
        f.euid = 0;
        f.userns_trial = trial(
            StepResult::err(libc::EPERM),
            StepResult::default(),
            StepResult::default(),
        );
        f.mountns_trial = trial(
            StepResult::err(libc::EPERM),
            StepResult::default(),
            StepResult::err(libc::EPERM),
        );
        assert_eq!(decide(&f).0, Isolation::None);
    }

    #[test]
    fn isolation_names_round_trip() {
        for i in [
            Isolation::Userns,
            Isolation::SingleUid,
            Isolation::Chroot,
            Isolation::None,
        ] {
            assert_eq!(Isolation::parse(i.as_str()).unwrap(), Some(i));
        }
        assert_eq!(Isolation::parse("auto").unwrap(), None);
        assert!(Isolation::parse("bogus").is_err());
    }

    #[test]
    fn probe_runs_and_reports_the_trial() {
        let f = full_probe();
        assert!(f.userns_trial.as_ref().is_some_and(|t| t.unshare.tried));
        let table = facts_table(&f);
        assert!(table.iter().any(|(k, _)| k == "userns trial"));
    }
}
