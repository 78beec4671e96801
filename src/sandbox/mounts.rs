//! The mount plan of a step: what gets mounted where inside the rootfs (/proc, /dev, /sys,
//! resolv.conf/hosts/hostname, the user's bind and tmpfs mounts, Docker's masked paths), the
//! mount-point placeholders created for it, and its execution through [`Syscall`].

use super::{MountSpec, Network, RunSpec};
use crate::fsutil::{Follow, Root};
use crate::sys::{Syscall, Target};
use anyhow::{Context, Result};
use nix::mount::MsFlags;
use std::os::fd::{AsFd, OwnedFd};
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

/// One operation of the plan. Paths are inside the rootfs.
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
/// step runs, through the root handle: an image symlink is followed inside the rootfs only)
/// and returns every path it created, relative to the rootfs (symlinks resolved), parents
/// first.
pub fn create_placeholders(spec: &RunSpec) -> Result<Vec<PathBuf>> {
    let root = Root::open(&spec.rootfs).with_context(|| format!("cannot open the rootfs {}", spec.rootfs.display()))?;
    let mut created = Vec::new();
    for (p, kind) in mount_points(spec) {
        let made = match kind {
            Kind::Dir => root.mkdir_all(&p, 0o755).map(|(_, m)| m),
            Kind::File => root.touch(&p, 0o644).map(|(_, m)| m),
        };
        let made = made.map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EOVERFLOW) {
                " (the rootfs holds files owned by ids that are not mapped in kiln's user namespace)"
            } else {
                ""
            };
            anyhow::anyhow!("cannot create the mount point {p}: {e}{hint}")
        })?;
        created.extend(made);
    }
    Ok(created)
}

/// After the step: keeps the created leaves, and created directories only while they hold
/// nothing but other placeholders (a RUN may have written real files into them). Paths are
/// looked at without following any symlink (a step may have put one in a placeholder's place).
pub fn prune_placeholders(rootfs: &Path, created: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(root) = Root::open(rootfs) else {
        return Vec::new();
    };
    let mut keep: Vec<PathBuf> = Vec::new();
    for (i, rel) in created.iter().enumerate().rev() {
        let is_parent_of_next = created.get(i + 1).is_some_and(|n| n.parent() == Some(rel.as_path()));
        let keep_it = match root.stat(rel, Follow::Never) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR && is_parent_of_next => root
                .read_dir(rel, Follow::Never)
                .map(|entries| entries.iter().all(|(n, _)| keep.iter().any(|k| *k == rel.join(n))))
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

fn bind(source: &str, target: &str, flags: MsFlags) -> Step {
    Step::Mount {
        source: s(source),
        target: target.into(),
        fstype: None,
        flags,
        data: None,
        fallback: vec![],
    }
}

/// Builds the mount plan for `spec`. Targets are paths inside the rootfs; they are resolved
/// through the root handle only when each step runs (see [`apply`]), so a target that goes
/// through an earlier mount is resolved in that mount.
pub fn plan(spec: &RunSpec, generated: &Generated, new_netns: bool) -> Result<Vec<Step>> {
    let mut v = vec![
        // /proc: fresh for our PID namespace; the host's (recursive bind) if that is refused.
        Step::Mkdir("/proc".into()),
        Step::Mount {
            source: s("proc"),
            target: "/proc".into(),
            fstype: s("proc"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: None,
            fallback: vec![bind("/proc", "/proc", MsFlags::MS_BIND | MsFlags::MS_REC)],
        },
        // /dev
        Step::Mkdir("/dev".into()),
        Step::Mount {
            source: s("tmpfs"),
            target: "/dev".into(),
            fstype: s("tmpfs"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: s("mode=755,size=65536k"),
            fallback: vec![],
        },
    ];
    for d in DEVICES {
        let t = format!("/dev/{d}");
        v.push(Step::Touch(t.clone().into()));
        let mut m = bind(&t, &t, MsFlags::MS_BIND);
        if d == "tty"
            && let Step::Mount { fallback, .. } = &mut m
        {
            // Without a usable host /dev/tty, the step gets a null device there.
            fallback.push(bind("/dev/null", &t, MsFlags::MS_BIND));
        }
        v.push(m);
    }
    v.push(Step::Mkdir("/dev/pts".into()));
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let host_pts = bind("/dev/pts", "/dev/pts", MsFlags::MS_BIND | MsFlags::MS_REC);
    if spec.tty {
        // The step uses kiln's own terminal: its pty must be resolvable under /dev/pts.
        v.push(host_pts);
    } else {
        let devpts = |data: &str| Step::Mount {
            source: s("devpts"),
            target: "/dev/pts".into(),
            fstype: s("devpts"),
            flags: pts_flags,
            data: s(data),
            fallback: vec![],
        };
        let mut m = devpts("newinstance,ptmxmode=0666,mode=0620,gid=5");
        if let Step::Mount { fallback, .. } = &mut m {
            fallback.push(devpts("newinstance,ptmxmode=0666,mode=0620"));
            fallback.push(host_pts);
        }
        v.push(m);
    }
    v.push(Step::Symlink("pts/ptmx".into(), "/dev/ptmx".into()));
    v.push(Step::Mkdir("/dev/shm".into()));
    v.push(Step::Mount {
        source: s("shm"),
        target: "/dev/shm".into(),
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
        v.push(Step::Symlink(target.into(), format!("/dev/{name}").into()));
    }
    // /sys, read-only.
    v.push(Step::Mkdir("/sys".into()));
    let rbind_sys = bind("/sys", "/sys", MsFlags::MS_BIND | MsFlags::MS_REC);
    if new_netns {
        v.push(Step::Mount {
            source: s("sysfs"),
            target: "/sys".into(),
            fstype: s("sysfs"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
            data: None,
            fallback: vec![rbind_sys],
        });
    } else {
        v.push(rbind_sys);
    }
    v.push(Step::RemountRoRecursive("/sys".into()));
    for p in MASKED {
        v.push(Step::Mask(p.into()));
    }
    for p in READONLY {
        v.push(Step::ReadOnly(p.into()));
    }
    // /etc files.
    for (p, src) in [
        ("/etc/resolv.conf", &generated.resolv_conf),
        ("/etc/hosts", &generated.hosts),
        ("/etc/hostname", &generated.hostname),
    ] {
        v.push(Step::Touch(p.into()));
        v.push(bind(&src.to_string_lossy(), p, MsFlags::MS_BIND));
    }
    // The caller's mounts, shallowest first: a mount inside another one's target is resolved
    // (and created) inside that mount, after it exists.
    let mut user: Vec<&MountSpec> = spec.mounts.iter().collect();
    let dest = |m: &MountSpec| match m {
        MountSpec::Bind { dest, .. } | MountSpec::Tmpfs { dest, .. } => dest.clone(),
    };
    user.sort_by_key(|m| {
        Path::new(&dest(m))
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count()
    });
    for m in user {
        match m {
            MountSpec::Bind { src, dest, readonly } => {
                let md = std::fs::metadata(src)
                    .with_context(|| format!("bind mount source {} does not exist", src.display()))?;
                v.push(if md.is_dir() {
                    Step::Mkdir(dest.into())
                } else {
                    Step::Touch(dest.into())
                });
                v.push(bind(&src.to_string_lossy(), dest, MsFlags::MS_BIND | MsFlags::MS_REC));
                if *readonly {
                    v.push(Step::RemountRoRecursive(dest.into()));
                }
            }
            MountSpec::Tmpfs { dest, size, mode } => {
                let mut data = format!("mode={:o}", mode.unwrap_or(0o755));
                if let Some(sz) = size {
                    data.push_str(&format!(",size={sz}"));
                }
                v.push(Step::Mkdir(dest.into()));
                v.push(Step::Mount {
                    source: s("tmpfs"),
                    target: dest.into(),
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

/// The target of a step, resolved inside the rootfs now (after the mounts before it).
fn resolve(root: &Root, p: &Path) -> Result<OwnedFd> {
    root.resolve(p, Follow::All)
        .with_context(|| format!("cannot resolve the mount target {} inside the rootfs", p.display()))
}

fn mount_step(sys: &dyn Syscall, root: &Root, step: &Step) -> Result<()> {
    if let Step::Mount {
        source,
        target,
        fstype,
        flags,
        data,
        ..
    } = step
    {
        let fd = resolve(root, target)?;
        let t = Target {
            fd: Some(fd.as_fd()),
            path: target,
        };
        sys.mount(source.as_deref(), t, fstype.as_deref(), *flags, data.as_deref())?;
    }
    Ok(())
}

fn remount_ro(sys: &dyn Syscall, t: Target<'_>) -> std::io::Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | sys.locked_flags(t);
    sys.mount(None, t, None, flags, None)
}

/// Executes a plan on `rootfs` (a host path of kiln's own): binds the rootfs onto itself
/// (pivot_root needs a mount point), opens the root handle on that mount, then runs each step,
/// resolving its target through the handle at that moment. Errors name the step.
pub fn apply(sys: &dyn Syscall, rootfs: &Path, steps: &[Step]) -> Result<()> {
    let host = rootfs.to_string_lossy();
    sys.mount(
        Some(&host),
        Target::host(rootfs),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .with_context(|| format!("cannot bind the rootfs {host} onto itself"))?;
    let root = Root::open(rootfs).with_context(|| format!("cannot open the rootfs {host}"))?;
    for step in steps {
        apply_one(sys, &root, step)?;
    }
    Ok(())
}

fn apply_one(sys: &dyn Syscall, root: &Root, step: &Step) -> Result<()> {
    match step {
        Step::Mkdir(p) => root
            .mkdir_all(p, 0o755)
            .map(|_| ())
            .with_context(|| format!("cannot create {} in the rootfs", p.display())),
        Step::Touch(p) => root
            .touch(p, 0o644)
            .map(|_| ())
            .with_context(|| format!("cannot create {} in the rootfs", p.display())),
        Step::Symlink(t, l) => match root.symlink(t, l) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                Err(e).with_context(|| format!("cannot create the symlink {}", l.display()))
            }
            _ => Ok(()),
        },
        Step::Mount {
            target,
            fallback,
            source,
            fstype,
            ..
        } => {
            let Err(first) = mount_step(sys, root, step) else {
                return Ok(());
            };
            for f in fallback {
                if mount_step(sys, root, f).is_ok() {
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
        Step::RemountRo(p) => {
            let fd = resolve(root, p)?;
            let t = Target {
                fd: Some(fd.as_fd()),
                path: p,
            };
            remount_ro(sys, t).with_context(|| format!("cannot make {} read-only", p.display()))
        }
        Step::RemountRoRecursive(p) => {
            let fd = resolve(root, p)?;
            let t = Target {
                fd: Some(fd.as_fd()),
                path: p,
            };
            sys.readonly_recursive(t)
                .or_else(|_| remount_ro(sys, t))
                .with_context(|| format!("cannot make {} read-only", p.display()))
        }
        Step::Mask(p) => {
            let fd = match root.resolve(p, Follow::All) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("cannot resolve {} to mask it", p.display())),
            };
            let is_dir = nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            let t = Target {
                fd: Some(fd.as_fd()),
                path: p,
            };
            let r = if is_dir {
                sys.mount(Some("tmpfs"), t, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
            } else {
                sys.mount(Some("/dev/null"), t, None, MsFlags::MS_BIND, None)
            };
            r.with_context(|| format!("cannot mask {}", p.display()))
        }
        Step::ReadOnly(p) => {
            let fd = match root.resolve(p, Follow::All) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot resolve {} to make it read-only", p.display()));
                }
            };
            let t = Target {
                fd: Some(fd.as_fd()),
                path: p,
            };
            let src = t.kernel_path().to_string_lossy().to_string();
            sys.mount(Some(&src), t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
                .with_context(|| format!("cannot make {} read-only", p.display()))?;
            // The fd still names the mount point below the new mount: resolve again.
            let fd = resolve(root, p)?;
            let t = Target {
                fd: Some(fd.as_fd()),
                path: p,
            };
            remount_ro(sys, t).with_context(|| format!("cannot make {} read-only", p.display()))
        }
    }
}

/// Contents of the generated /etc/hosts.
pub fn hosts_file(network: Network, hostname: &str) -> String {
    hosts_file_with(network, hostname, &super::net::NetSpec::default())
}

/// Docker's /etc/hosts of a container with its own network.
const PRIVATE_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                             fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
                             ff02::2\tip6-allrouters\n";

/// Contents of the generated /etc/hosts: the host's with host networking, Docker's defaults
/// in a private network, then the container's hostname (at its own address when known) and
/// the `--add-host` entries.
pub fn hosts_file_with(network: Network, hostname: &str, net: &super::net::NetSpec) -> String {
    let mut s = match network {
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        Network::None => String::new(),
        Network::Private => PRIVATE_HOSTS.to_string(),
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
        let own = net.address.as_deref().filter(|_| network == Network::Private);
        s.push_str(&format!("{}\t{hostname}\n", own.unwrap_or("127.0.1.1")));
    }
    for (name, ip) in &net.add_hosts {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};

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
        std::fs::create_dir_all(root.join("proc/sys")).unwrap();
        std::fs::write(root.join("proc/kcore"), "").unwrap();
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
        apply(&sys, &root, &steps).unwrap();
        let calls = sys.calls.borrow();
        let mounts: Vec<(Option<String>, String, Option<String>)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source, target, fstype, ..
                } => Some((source.clone(), target.to_string_lossy().to_string(), fstype.clone())),
                _ => None,
            })
            .collect();
        let has = |src: &str, tgt: &str| mounts.iter().any(|(s, t, _)| s.as_deref() == Some(src) && t == tgt);
        assert!(
            has("/proc", "/proc"),
            "proc falls back to a bind of the host's: {mounts:?}"
        );
        assert!(has("tmpfs", "/dev"));
        assert!(has("/dev/null", "/dev/null") && has("/dev/urandom", "/dev/urandom"));
        assert!(has("/dev/pts", "/dev/pts"), "devpts falls back to the host's");
        assert!(has("shm", "/dev/shm"));
        assert!(has("/sys", "/sys"));
        assert!(
            has("/g/resolv", "/etc/resolv.conf")
                && has("/g/hosts", "/etc/hosts")
                && has("/g/hostname", "/etc/hostname")
        );
        assert!(has("tmpfs", "/tmp/t") && has("/etc", "/mnt/etc"));
        assert!(has("/dev/null", "/proc/kcore"), "kcore is masked");
        // read-only bind mounts are made read-only recursively
        assert!(calls.contains(&Call::ReadonlyRecursive("/mnt/etc".into())));
        assert!(calls.contains(&Call::ReadonlyRecursive("/sys".into())));
        // plain read-only remounts keep the locked flags
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target.ends_with("proc/sys") && flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_REMOUNT))));
        assert_eq!(
            std::fs::read_link(root.join("dev/ptmx")).unwrap(),
            Path::new("pts/ptmx")
        );
        assert!(root.join("dev/null").is_file() && root.join("etc/hosts").is_file() && root.join("mnt/etc").is_dir());
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

    /// An image whose /sys, /dev or /etc/hosts is a symlink out of the rootfs: the targets
    /// are resolved inside it, nothing outside is made (magic links: tests/escape.rs and
    /// fsutil::root, which need a real procfs inside the root).
    #[test]
    fn hostile_symlinks_in_the_image_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sys")).unwrap();
        std::os::unix::fs::symlink(outside.join("dev"), root.join("dev")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../..".to_string() + &outside.to_string_lossy() + "/hosts",
            root.join("etc/hosts"),
        )
        .unwrap();
        let generated = Generated {
            resolv_conf: "/g/resolv".into(),
            hosts: "/g/hosts".into(),
            hostname: "/g/hostname".into(),
        };
        let sp = spec(&root);
        create_placeholders(&sp).unwrap();
        let steps = plan(&sp, &generated, false).unwrap();
        apply(&RecordingSyscall::default(), &root, &steps).unwrap();
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing made outside the rootfs"
        );
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert!(inside.join("dev/null").is_file() && inside.join("hosts").is_file());
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
        let net = super::super::net::NetSpec {
            address: Some("192.0.2.2".into()),
            add_hosts: vec![("db".into(), "10.0.0.5".into())],
            ..Default::default()
        };
        let h = hosts_file_with(Network::Private, "web", &net);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0"));
        assert!(
            h.ends_with("ff02::2\tip6-allrouters\n192.0.2.2\tweb\n10.0.0.5\tdb\n"),
            "{h}"
        );
    }
}
