//! Storage benchmark: the kernel overlay, kiln's FUSE overlay and the fuse-overlayfs binary on
//! the same machine and workloads, plus the commit time of a step that changes 100 files on
//! bases of 5,000 and 50,000 files (FUSE overlay and kernel overlay: the layer is written from
//! the upper dir, O(changes); copy snapshots: the whole base is compared, O(base)).
//!
//! Needs mount rights: run it as root, or unprivileged inside kiln's user namespace:
//!
//! ```text
//! cargo build --release --example fuse_bench
//! target/release/kiln unshare -- target/release/examples/fuse_bench [WORKDIR]
//! ```
//!
//! WORKDIR (default /var/tmp/kiln-fuse-bench) must be on a filesystem with user xattrs (ext4,
//! xfs). Each workload runs on a fresh mount, three times (the best run counts); the lower
//! layer's page cache is warm, so "read 1 GiB" measures the overlay's own cost.

use anyhow::{Context, Result, bail};
use kiln::rootfs::{CopySnapshot, FuseOverlay, KernelOverlay, RootfsDriver};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FILES: usize = 10_000;
const BIG: u64 = 1 << 30;

/// A mounted overlay of one of the three kinds.
enum Kind {
    Kernel,
    Fuse,
    FuseOverlayfs,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Kernel => "kernel overlayfs",
            Kind::Fuse => "kiln FUSE overlay",
            Kind::FuseOverlayfs => "fuse-overlayfs (binary)",
        }
    }
}

struct Mounted {
    target: PathBuf,
    kiln: Option<Box<dyn RootfsDriver>>,
    child: Option<std::process::Child>,
}

impl Mounted {
    fn new(kind: &Kind, lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<Mounted> {
        for d in [upper, work, target] {
            std::fs::create_dir_all(d)?;
        }
        match kind {
            Kind::Kernel | Kind::Fuse => {
                let d: Box<dyn RootfsDriver> = match kind {
                    Kind::Kernel => Box::new(KernelOverlay),
                    _ => Box::new(FuseOverlay::default()),
                };
                d.mount(lowers, upper, work, target)?;
                Ok(Mounted {
                    target: target.to_path_buf(),
                    kiln: Some(d),
                    child: None,
                })
            }
            Kind::FuseOverlayfs => {
                let lower = lowers
                    .iter()
                    .map(|l| l.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":");
                let child = std::process::Command::new("fuse-overlayfs")
                    .arg("-f")
                    .arg("-o")
                    .arg(format!(
                        "lowerdir={lower},upperdir={},workdir={}",
                        upper.display(),
                        work.display()
                    ))
                    .arg(target)
                    .spawn()
                    .context("cannot start fuse-overlayfs (apt-get install fuse-overlayfs)")?;
                let t0 = Instant::now();
                loop {
                    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
                    if mi.contains(&format!(" {} ", target.display())) {
                        break;
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        bail!("fuse-overlayfs did not mount");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(Mounted {
                    target: target.to_path_buf(),
                    kiln: None,
                    child: Some(child),
                })
            }
        }
    }

    fn unmount(mut self) -> Result<()> {
        if let Some(d) = self.kiln.take() {
            d.unmount(&self.target)?;
        }
        if let Some(mut c) = self.child.take() {
            nix::mount::umount2(&self.target, nix::mount::MntFlags::empty()).context("umount fuse-overlayfs")?;
            let _ = c.wait();
        }
        Ok(())
    }
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// 10,000 files of 4 KiB in 100 directories.
fn create_files(root: &Path) -> Result<()> {
    let data = vec![0x5au8; 4096];
    for d in 0..100 {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir(&dir)?;
        for f in 0..FILES / 100 {
            std::fs::File::create(dir.join(format!("f{f:03}")))?.write_all(&data)?;
        }
    }
    Ok(())
}

fn read_all(p: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += k as u64;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare(CLONE_NEWNS): run as root or under `kiln unshare`")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let base = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/var/tmp/kiln-fuse-bench".into()),
    );
    std::fs::create_dir_all(&base)?;
    let lower = base.join("lower");
    if !lower.join("big").exists() {
        eprintln!(
            "preparing the lower layer (1 GiB file, {FILES} files) in {}",
            lower.display()
        );
        fresh(&lower)?;
        let mut f = std::fs::File::create(lower.join("big"))?;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..(BIG >> 20) {
            for c in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf)?;
        }
        std::fs::create_dir(lower.join("many"))?;
        create_files(&lower.join("many"))?;
    }
    let lowers = vec![lower.clone()];
    println!("| overlay | create {FILES} files (4 KiB) | read 1 GiB | rm -rf {FILES} lower files |");
    println!("|---|---|---|---|");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for kind in [Kind::Kernel, Kind::Fuse, Kind::FuseOverlayfs] {
        if !only.is_empty() && !kind.name().contains(only.as_str()) {
            continue;
        }
        // Best of three (the machine may be shared).
        let mut best = [Duration::MAX; 3];
        for _ in 0..3 {
            let run = base.join("run");
            fresh(&run)?;
            let (u, w, m) = (run.join("u"), run.join("w"), run.join("m"));
            let mt = Mounted::new(&kind, &lowers, &u, &w, &m)?;
            let t = Instant::now();
            let new = m.join("new");
            std::fs::create_dir(&new)?;
            create_files(&new)?;
            let create = t.elapsed();
            read_all(&lower.join("big"))?; // the same warm page cache below every overlay
            let t = Instant::now();
            let n = read_all(&m.join("big"))?;
            let read = t.elapsed();
            assert_eq!(n, BIG);
            let t = Instant::now();
            std::fs::remove_dir_all(m.join("many"))?;
            let rm = t.elapsed();
            mt.unmount()?;
            for (b, v) in best.iter_mut().zip([create, read, rm]) {
                *b = (*b).min(v);
            }
            fresh(&run)?;
        }
        let [create, read, rm] = best;
        println!(
            "| {} | {} ({:.0} files/s) | {} ({:.0} MiB/s) | {} |",
            kind.name(),
            secs(create),
            FILES as f64 / create.as_secs_f64(),
            secs(read),
            1024.0 / read.as_secs_f64(),
            secs(rm)
        );
    }
    if std::env::var_os("BENCH_NO_COMMIT").is_some() {
        return Ok(());
    }

    // Commit time: a step changing 100 files on bases of 5,000 and 50,000 files.
    let store = kiln::store::Store::open(&base.join("store"))?;
    let opts = kiln::layer::LayerOptions::default();
    println!();
    println!("| base files | driver | step (mount, change 100 files, unmount) | commit (layer written) |");
    println!("|---|---|---|---|");
    for n in [5_000usize, 50_000] {
        let bl = base.join(format!("base{n}"));
        if !bl.join("done").exists() {
            fresh(&bl)?;
            for d in 0..n / 100 {
                let dir = bl.join(format!("d{d:04}"));
                std::fs::create_dir(&dir)?;
                for f in 0..100 {
                    std::fs::write(dir.join(format!("f{f:03}")), format!("{d} {f}\n"))?;
                }
            }
            std::fs::write(bl.join("done"), "")?;
        }
        for (name, drv) in [
            (
                "kiln FUSE overlay",
                Box::new(FuseOverlay::default()) as Box<dyn RootfsDriver>,
            ),
            ("kernel overlayfs", Box::new(KernelOverlay)),
            ("copy snapshots", Box::new(CopySnapshot::default())),
        ] {
            let run = base.join("run");
            fresh(&run)?;
            let (u, w, m) = (run.join("u"), run.join("w"), run.join("m"));
            for d in [&u, &w, &m] {
                std::fs::create_dir_all(d)?;
            }
            let t = Instant::now();
            drv.mount(std::slice::from_ref(&bl), &u, &w, &m)?;
            for i in 0..50 {
                let p = m.join(format!("d{:04}/f{:03}", (i * 7) % (n / 100), i));
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&p)?
                    .write_all(b"changed\n")?;
                std::fs::write(m.join(format!("d{:04}/new{i}", (i * 13) % (n / 100))), "new\n")?;
            }
            drv.unmount(&m)?;
            let step = t.elapsed();
            let t = Instant::now();
            let layer = kiln::layer::commit_dir(&store, &u, &[], &opts, kiln::store::ManifestFormat::Oci)?;
            let commit = t.elapsed();
            assert!(layer.is_some());
            println!(
                "| {n} | {name} | {:.1} ms | {:.1} ms |",
                step.as_secs_f64() * 1000.0,
                commit.as_secs_f64() * 1000.0
            );
            fresh(&run)?;
        }
    }
    Ok(())
}
