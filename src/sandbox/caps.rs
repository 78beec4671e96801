//! Capabilities: Docker's default set, `--cap-add`/`--cap-drop`, and applying them in the
//! sandboxed child in the order that works (see research §4).

use crate::sys::Syscall;
use anyhow::{Result, bail};
use caps::{CapSet, Capability};

/// Docker's default capability set (`CapEff = 00000000a80425fb`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn normalise(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    if up == "ALL" || up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

fn parse(name: &str) -> Result<Capability> {
    let n = normalise(name);
    match n.parse::<Capability>() {
        Ok(c) => Ok(c),
        Err(_) => bail!("unknown capability {name:?}"),
    }
}

/// The effective set for a step: Docker's defaults with `add`/`drop` applied (names with or
/// without `CAP_`, any case, `ALL`). As in Docker, `--cap-drop ALL` keeps only what is added.
pub fn effective(add: &[String], drop: &[String]) -> Result<caps::CapsHashSet> {
    let all = |v: &[String]| v.iter().any(|c| normalise(c) == "ALL");
    let mut set: caps::CapsHashSet = if all(drop) {
        caps::CapsHashSet::new()
    } else if all(add) {
        caps::all().into_iter().collect()
    } else {
        DEFAULT_CAPS.iter().map(|c| parse(c)).collect::<Result<_>>()?
    };
    for c in add.iter().filter(|c| normalise(c) != "ALL") {
        set.insert(parse(c)?);
    }
    if !all(drop) {
        for c in drop {
            set.remove(&parse(c)?);
        }
    }
    Ok(set)
}

/// Names (`CAP_…`) of a set, for the seccomp profile's `caps` conditions.
pub fn names(set: &caps::CapsHashSet) -> Vec<String> {
    set.iter().map(|c| c.to_string()).collect()
}

/// Cuts the bounding set to `keep` (needs CAP_SETPCAP). Caps the kernel does not know are skipped.
pub fn drop_bounding(sys: &dyn Syscall, keep: &caps::CapsHashSet) -> std::io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .unwrap_or(40);
    for c in caps::all() {
        if !keep.contains(&c) && c.index() <= last {
            sys.drop_bounding(c)?;
        }
    }
    Ok(())
}

/// Sets the process's capabilities after the uid switch: uid 0 keeps `keep` in effective and
/// permitted; any other uid keeps nothing (as Docker does for `USER n`). Inheritable and
/// ambient are cleared.
pub fn apply(sys: &dyn Syscall, keep: &caps::CapsHashSet, uid: u32) -> std::io::Result<()> {
    let none = caps::CapsHashSet::new();
    sys.set_capabilities(CapSet::Ambient, &none)?;
    sys.set_capabilities(CapSet::Inheritable, &none)?;
    let set: caps::CapsHashSet = if uid == 0 {
        keep.iter().copied().collect()
    } else {
        Default::default()
    };
    sys.set_capabilities(CapSet::Effective, &set)?;
    sys.set_capabilities(CapSet::Permitted, &set)?;
    Ok(())
}

/// The bitmask of a set (as /proc/PID/status prints it).
pub fn mask(set: &caps::CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_mask() {
        assert_eq!(mask(&effective(&[], &[]).unwrap()), 0xa80425fb);
    }

    #[test]
    fn add_drop_all() {
        let s = effective(&["sys_admin".into()], &["CAP_NET_RAW".into()]).unwrap();
        assert!(s.contains(&Capability::CAP_SYS_ADMIN) && !s.contains(&Capability::CAP_NET_RAW));
        let s = effective(&["chown".into()], &["ALL".into()]).unwrap();
        assert_eq!(s.len(), 1);
        let s = effective(&["ALL".into()], &["chown".into()]).unwrap();
        assert!(s.contains(&Capability::CAP_SYS_ADMIN) && !s.contains(&Capability::CAP_CHOWN));
        assert!(effective(&["bogus".into()], &[]).is_err());
    }
}
