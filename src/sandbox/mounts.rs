//! The mount plan of a step: what gets mounted where inside the rootfs (/proc, /dev, /sys,
//! resolv.conf/hosts/hostname, the user's bind and tmpfs mounts, Docker's masked paths), the
//! mount-point placeholders created for it, and its execution through [`Syscall`].

use super::syscall::Syscall;
use super::{MountSpec, Network, RunSpec};
use crate::fsutil::resolve_in_root;
use anyhow::{Context, Result, bail};
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// Devices bound from the host into the step's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Docker's masked paths (made unreadable) and read-only paths.
pub const MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub const READONLY: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Files generated for the step on the host side, bound over /etc/….
#[derive(Clone, Debug)]
pub struct Generated {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub hostname: PathBuf,
}

/// One operation of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Mkdir(PathBuf),
    Touch(PathBuf),
    Symlink(String, PathBuf),
    Mount {
        source: Option<String>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
        /// Alternative mounts tried in order when this one fails (none left: an error).
        fallback: Vec<Step>,
    },
    /// Remounts a bind mount read-only, keeping the flags the kernel locked on it.
    RemountRo(PathBuf),
    /// Makes a mount and all mounts below it read-only (else like `RemountRo`).
    RemountRoRecursive(PathBuf),
    /// Hides a path if it exists (/dev/null over files, a read-only tmpfs over dirs).
    Mask(PathBuf),
    /// Makes a path read-only if it exists (bind onto itself + read-only remount).
    ReadOnly(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Mount points of a step (container paths) and whether each is a directory or a file.
pub fn mount_points(spec: &RunSpec) -> Vec<(String, Kind)> {
    let mut v = vec![
        ("/proc".to_string(), Kind::Dir),
        ("/dev".to_string(), Kind::Dir),
        ("/sys".to_string(), Kind::Dir),
        ("/etc/resolv.conf".to_string(), Kind::File),
        ("/etc/hosts".to_string(), Kind::File),
        ("/etc/hostname".to_string(), Kind::File),
    ];
    for m in &spec.mounts {
        match m {
            MountSpec::Bind { src, dest, .. } => {
                v.push((dest.clone(), if src.is_dir() { Kind::Dir } else { Kind::File }));
            }
            MountSpec::Tmpfs { dest, .. } => v.push((dest.clone(), Kind::Dir)),
        }
    }
    v
}

/// Creates what is missing of the mount points in the rootfs (on the host side, before the
/// step runs) and returns every path it created, relative to the rootfs, parents first.
pub fn create_placeholders(spec: &RunSpec) -> Result<Vec<PathBuf>> {
    let root = &spec.rootfs;
    let mut created = Vec::new();
    for (p, kind) in mount_points(spec) {
        let host = resolve_in_root(root, Path::new(&p), true)?;
        if std::fs::symlink_metadata(&host).is_ok() {
            continue;
        }
        let rel = host
            .strip_prefix(root)
            .with_context(|| format!("{} escapes the rootfs", p))?
            .to_path_buf();
        let mut cur = root.clone();
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            if std::fs::symlink_metadata(&cur).is_ok() {
                continue;
            }
            let last = i + 1 == comps.len();
            let r = if last && kind == Kind::File {
                std::fs::File::create(&cur).map(|_| ())
            } else {
                std::fs::create_dir(&cur)
            };
            r.map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EOVERFLOW) {
                    " (the rootfs holds files owned by ids that are not mapped in kiln's user namespace)"
                } else {
                    ""
                };
                anyhow::anyhow!("cannot create the mount point {}: {e}{hint}", cur.display())
            })?;
            created.push(cur.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    Ok(created)
}

/// After the step: keeps the created leaves, and created directories only while they hold
/// nothing but other placeholders (a RUN may have written real files into them).
pub fn prune_placeholders(root: &Path, created: &[PathBuf]) -> Vec<PathBuf> {
    let mut keep: Vec<PathBuf> = Vec::new();
    for (i, rel) in created.iter().enumerate().rev() {
        let is_parent_of_next = created.get(i + 1).is_some_and(|n| n.parent() == Some(rel.as_path()));
        let p = root.join(rel);
        let md = std::fs::symlink_metadata(&p);
        let keep_it = match md {
            Ok(md) if md.is_dir() && is_parent_of_next => std::fs::read_dir(&p)
                .map(|rd| rd.flatten().all(|e| keep.iter().any(|k| *k == rel.join(e.file_name()))))
                .unwrap_or(false),
            Ok(_) => true,
            Err(_) => false,
        };
        if keep_it {
            keep.push(rel.clone());
        }
    }
    keep.reverse();
    keep
}

fn s(p: &str) -> Option<String> {
    Some(p.to_string())
}

/// Builds the mount plan for `spec` (targets are host paths under `spec.rootfs`).
pub fn plan(spec: &RunSpec, generated: &Generated, new_netns: bool) -> Result<Vec<Step>> {
    let root = &spec.rootfs;
    let at = |p: &str| resolve_in_root(root, Path::new(p), true);
    let rootstr = root.to_string_lossy().to_string();
    let mut v = Vec::new();
    // The rootfs becomes a mount point of its own (pivot_root needs one).
    v.push(Step::Mount {
        source: Some(rootstr),
        target: root.clone(),
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
        data: None,
        fallback: vec![],
    });
    // /proc: fresh for our PID namespace; the host's (recursive bind) if that is refused.
    let proc_ = at("/proc")?;
    v.push(Step::Mkdir(proc_.clone()));
    v.push(Step::Mount {
        source: s("proc"),
        target: proc_.clone(),
        fstype: s("proc"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: None,
        fallback: vec![Step::Mount {
            source: s("/proc"),
            target: proc_,
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
            fallback: vec![],
        }],
    });
    // /dev
    let dev = at("/dev")?;
    v.push(Step::Mkdir(dev.clone()));
    v.push(Step::Mount {
        source: s("tmpfs"),
        target: dev.clone(),
        fstype: s("tmpfs"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        data: s("mode=755,size=65536k"),
        fallback: vec![],
    });
    for d in DEVICES {
        let t = dev.join(d);
        v.push(Step::Touch(t.clone()));
        v.push(Step::Mount {
            source: Some(format!("/dev/{d}")),
            target: t,
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
            // Without a usable host /dev/tty, the step gets a null device there.
            fallback: if d == "tty" {
                vec![Step::Mount {
                    source: s("/dev/null"),
                    target: dev.join(d),
                    fstype: None,
                    flags: MsFlags::MS_BIND,
                    data: None,
                    fallback: vec![],
                }]
            } else {
                vec![]
            },
        });
    }
    let pts = dev.join("pts");
    v.push(Step::Mkdir(pts.clone()));
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let host_pts = Step::Mount {
        source: s("/dev/pts"),
        target: pts.clone(),
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
        data: None,
        fallback: vec![],
    };
    if spec.tty {
        // The step uses kiln's own terminal: its pty must be resolvable under /dev/pts.
        v.push(host_pts);
    } else {
        v.push(Step::Mount {
            source: s("devpts"),
            target: pts.clone(),
            fstype: s("devpts"),
            flags: pts_flags,
            data: s("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            fallback: vec![
                Step::Mount {
                    source: s("devpts"),
                    target: pts.clone(),
                    fstype: s("devpts"),
                    flags: pts_flags,
                    data: s("newinstance,ptmxmode=0666,mode=0620"),
                    fallback: vec![],
                },
                host_pts,
            ],
        });
    }
    v.push(Step::Symlink("pts/ptmx".into(), dev.join("ptmx")));
    let shm = dev.join("shm");
    v.push(Step::Mkdir(shm.clone()));
    v.push(Step::Mount {
        source: s("shm"),
        target: shm,
        fstype: s("tmpfs"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: s("mode=1777,size=65536k"),
        fallback: vec![],
    });
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        v.push(Step::Symlink(target.into(), dev.join(name)));
    }
    // /sys, read-only.
    let sys = at("/sys")?;
    v.push(Step::Mkdir(sys.clone()));
    let rbind_sys = Step::Mount {
        source: s("/sys"),
        target: sys.clone(),
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
        data: None,
        fallback: vec![],
    };
    if new_netns {
        v.push(Step::Mount {
            source: s("sysfs"),
            target: sys.clone(),
            fstype: s("sysfs"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
            data: None,
            fallback: vec![rbind_sys],
        });
    } else {
        v.push(rbind_sys);
    }
    v.push(Step::RemountRoRecursive(sys));
    for p in MASKED {
        v.push(Step::Mask(at(p)?));
    }
    for p in READONLY {
        v.push(Step::ReadOnly(at(p)?));
    }
    // /etc files.
    for (p, src) in [
        ("/etc/resolv.conf", &generated.resolv_conf),
        ("/etc/hosts", &generated.hosts),
        ("/etc/hostname", &generated.hostname),
    ] {
        let t = at(p)?;
        v.push(Step::Touch(t.clone()));
        v.push(Step::Mount {
            source: Some(src.to_string_lossy().to_string()),
            target: t,
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
            fallback: vec![],
        });
    }
    // The caller's mounts.
    for m in &spec.mounts {
        match m {
            MountSpec::Bind { src, dest, readonly } => {
                let t = at(dest)?;
                if !src.exists() {
                    bail!("bind mount source {} does not exist", src.display());
                }
                v.push(if src.is_dir() {
                    Step::Mkdir(t.clone())
                } else {
                    Step::Touch(t.clone())
                });
                v.push(Step::Mount {
                    source: Some(src.to_string_lossy().to_string()),
                    target: t.clone(),
                    fstype: None,
                    flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                    data: None,
                    fallback: vec![],
                });
                if *readonly {
                    v.push(Step::RemountRoRecursive(t));
                }
            }
            MountSpec::Tmpfs { dest, size, mode } => {
                let t = at(dest)?;
                let mut data = format!("mode={:o}", mode.unwrap_or(0o755));
                if let Some(sz) = size {
                    data.push_str(&format!(",size={sz}"));
                }
                v.push(Step::Mkdir(t.clone()));
                v.push(Step::Mount {
                    source: s("tmpfs"),
                    target: t,
                    fstype: s("tmpfs"),
                    flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    data: Some(data),
                    fallback: vec![],
                });
            }
        }
    }
    Ok(v)
}

fn mount_step(sys: &dyn Syscall, step: &Step) -> std::io::Result<()> {
    if let Step::Mount {
        source,
        target,
        fstype,
        flags,
        data,
        ..
    } = step
    {
        sys.mount(source.as_deref(), target, fstype.as_deref(), *flags, data.as_deref())
    } else {
        Ok(())
    }
}

fn remount_ro(sys: &dyn Syscall, t: &Path) -> std::io::Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | sys.locked_flags(t);
    sys.mount(None, t, None, flags, None)
}

/// Executes a plan. Errors name the step.
pub fn apply(sys: &dyn Syscall, steps: &[Step]) -> Result<()> {
    for step in steps {
        apply_one(sys, step)?;
    }
    Ok(())
}

fn apply_one(sys: &dyn Syscall, step: &Step) -> Result<()> {
    match step {
        Step::Mkdir(p) => sys
            .mkdir_all(p)
            .with_context(|| format!("cannot create {}", p.display())),
        Step::Touch(p) => sys.touch(p).with_context(|| format!("cannot create {}", p.display())),
        Step::Symlink(t, l) => sys
            .symlink(t, l)
            .with_context(|| format!("cannot create the symlink {}", l.display())),
        Step::Mount {
            target,
            fallback,
            source,
            fstype,
            ..
        } => {
            let Err(first) = mount_step(sys, step) else {
                return Ok(());
            };
            for f in fallback {
                if mount_step(sys, f).is_ok() {
                    return Ok(());
                }
            }
            Err(first).with_context(|| {
                format!(
                    "cannot mount {} ({}) on {}",
                    source.as_deref().unwrap_or("-"),
                    fstype.as_deref().unwrap_or("bind"),
                    target.display()
                )
            })
        }
        Step::RemountRo(t) => remount_ro(sys, t).with_context(|| format!("cannot make {} read-only", t.display())),
        Step::RemountRoRecursive(t) => sys
            .readonly_recursive(t)
            .or_else(|_| remount_ro(sys, t))
            .with_context(|| format!("cannot make {} read-only", t.display())),
        Step::Mask(p) => {
            if !sys.exists(p) {
                return Ok(());
            }
            let r = if std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
                sys.mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
            } else {
                sys.mount(Some("/dev/null"), p, None, MsFlags::MS_BIND, None)
            };
            r.with_context(|| format!("cannot mask {}", p.display()))
        }
        Step::ReadOnly(p) => {
            if !sys.exists(p) {
                return Ok(());
            }
            let ps = p.to_string_lossy();
            sys.mount(Some(&ps), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
                .and_then(|_| remount_ro(sys, p))
                .with_context(|| format!("cannot make {} read-only", p.display()))
        }
    }
}

/// Contents of the generated /etc/hosts.
pub fn hosts_file(network: Network, hostname: &str) -> String {
    let mut s = match network {
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        Network::None => String::new(),
    };
    if !s
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|n| n == "localhost"))
    {
        s.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::syscall::{Call, RecordingSyscall};
    use super::*;

    fn spec(root: &Path) -> RunSpec {
        RunSpec {
            rootfs: root.to_path_buf(),
            args: vec!["true".into()],
            mounts: vec![
                MountSpec::Tmpfs {
                    dest: "/tmp/t".into(),
                    size: Some(1024),
                    mode: Some(0o1777),
                },
                MountSpec::Bind {
                    src: "/etc".into(),
                    dest: "/mnt/etc".into(),
                    readonly: true,
                },
            ],
            ..RunSpec::default()
        }
    }

    #[test]
    fn placeholders_created_and_pruned() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::os::unix::fs::symlink("../run/resolv.conf", {
            std::fs::create_dir(root.join("etc")).unwrap();
            root.join("etc/resolv.conf")
        })
        .unwrap();
        let sp = spec(&root);
        let created = create_placeholders(&sp).unwrap();
        let names: Vec<String> = created.iter().map(|p| p.to_string_lossy().to_string()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "sys",
                "run",
                "run/resolv.conf",
                "etc/hosts",
                "etc/hostname",
                "tmp",
                "tmp/t",
                "mnt",
                "mnt/etc"
            ]
        );
        assert!(root.join("run/resolv.conf").is_file() && root.join("mnt/etc").is_dir());
        // the step wrote a real file into /tmp: /tmp is no longer a pure placeholder
        std::fs::write(root.join("tmp/real"), "x").unwrap();
        let kept = prune_placeholders(&root, &created);
        let kept: Vec<String> = kept.iter().map(|p| p.to_string_lossy().to_string()).collect();
        assert_eq!(
            kept,
            [
                "dev",
                "sys",
                "run",
                "run/resolv.conf",
                "etc/hosts",
                "etc/hostname",
                "tmp/t",
                "mnt",
                "mnt/etc"
            ]
        );
        // a second run creates nothing
        assert!(create_placeholders(&sp).unwrap().is_empty());
    }

    #[test]
    fn plan_mounts_everything_and_falls_back() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let generated = Generated {
            resolv_conf: "/g/resolv".into(),
            hosts: "/g/hosts".into(),
            hostname: "/g/hostname".into(),
        };
        let sp = spec(&root);
        let steps = plan(&sp, &generated, false).unwrap();
        let sys = RecordingSyscall {
            fail_fstypes: vec!["proc".into(), "devpts".into()],
            ..Default::default()
        };
        apply(&sys, &steps).unwrap();
        let calls = sys.calls.borrow();
        let mounts: Vec<(Option<String>, String, Option<String>)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source, target, fstype, ..
                } => Some((
                    source.clone(),
                    target.strip_prefix(&root).unwrap().to_string_lossy().to_string(),
                    fstype.clone(),
                )),
                _ => None,
            })
            .collect();
        let has = |src: &str, tgt: &str| mounts.iter().any(|(s, t, _)| s.as_deref() == Some(src) && t == tgt);
        assert!(
            has("/proc", "proc"),
            "proc falls back to a bind of the host's: {mounts:?}"
        );
        assert!(has("tmpfs", "dev"));
        assert!(has("/dev/null", "dev/null") && has("/dev/urandom", "dev/urandom"));
        assert!(has("/dev/pts", "dev/pts"), "devpts falls back to the host's");
        assert!(has("shm", "dev/shm"));
        assert!(has("/sys", "sys"));
        assert!(
            has("/g/resolv", "etc/resolv.conf") && has("/g/hosts", "etc/hosts") && has("/g/hostname", "etc/hostname")
        );
        assert!(has("tmpfs", "tmp/t") && has("/etc", "mnt/etc"));
        assert!(has("/dev/null", "proc/kcore"), "kcore is masked");
        // read-only bind mounts are made read-only recursively
        assert!(calls.contains(&Call::ReadonlyRecursive(root.join("mnt/etc"))));
        assert!(calls.contains(&Call::ReadonlyRecursive(root.join("sys"))));
        // plain read-only remounts keep the locked flags
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target.ends_with("proc/sys") && flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_REMOUNT))));
        assert!(calls.contains(&Call::Symlink("pts/ptmx".into(), root.join("dev/ptmx"))));
        // tmpfs options
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Mount { data: Some(d), .. } if d == "mode=1777,size=1024"))
        );
        // the rootfs is bound onto itself first
        assert!(
            matches!(&calls[0], Call::Mount { source: Some(s), target, .. } if Path::new(s) == root && *target == root)
        );
    }

    #[test]
    fn plan_with_netns_uses_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let generated = Generated {
            resolv_conf: "/a".into(),
            hosts: "/b".into(),
            hostname: "/c".into(),
        };
        let steps = plan(
            &RunSpec {
                rootfs: t.path().into(),
                ..Default::default()
            },
            &generated,
            true,
        )
        .unwrap();
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Mount { fstype: Some(f), .. } if f == "sysfs"))
        );
    }

    #[test]
    fn hosts_has_localhost_and_hostname() {
        let h = hosts_file(Network::None, "box");
        assert!(h.contains("127.0.0.1\tlocalhost") && h.ends_with("127.0.1.1\tbox\n"));
    }
}
