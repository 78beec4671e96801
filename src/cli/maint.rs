//! `kiln fsck` and `kiln prune`: store maintenance.

use super::GlobalOpts;
use crate::fsutil::size::{human, parse_size};
use crate::store::fsck::{self, FsckOptions, Severity};
use crate::store::gc::{self, PruneOptions};
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct FsckArgs {
    /// Remove what is broken or left over: partial data of kiln processes that are gone,
    /// broken build cache entries, corrupt blobs, stray files. Never touches what a running
    /// kiln uses.
    #[arg(long)]
    pub repair: bool,
    /// Do not re-hash blob contents (only check that referenced blobs exist).
    #[arg(long)]
    pub quick: bool,
    /// Also compare every unpacked layer (layers/) with its blob, entry by entry; with
    /// --repair, layers that differ are removed (unpacked again from the blob when needed).
    #[arg(long)]
    pub full: bool,
    /// Print nothing but problems.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Also remove the whole build cache (and the layers only it used).
    #[arg(long, short)]
    pub all: bool,
    /// Then remove unpacked layers of no named image (least recently used first) and build
    /// cache entries (oldest first) until the store uses at most SIZE (e.g. 10GB, 512MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub keep_storage: Option<u64>,
    /// Wait for running kiln processes to finish instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// `kiln fsck [--repair]`: exit code 0 when the store is consistent, 1 otherwise.
pub fn fsck(g: &GlobalOpts, a: FsckArgs) -> Result<i32> {
    let store = g.store()?;
    let t = std::time::Instant::now();
    let rep = fsck::fsck(
        &store,
        &FsckOptions {
            repair: a.repair,
            quick: a.quick,
            full: a.full.then_some(&crate::layer::verify::AgainstBlob {
                ownership: crate::builder::ownership_here(),
            }),
        },
    )?;
    for p in &rep.problems {
        let tag = match (p.severity, p.repaired) {
            (_, true) => "repaired",
            (Severity::Error, false) => "error",
            (Severity::Garbage, false) => "garbage",
        };
        println!("{tag}: {}", p.what);
    }
    if !a.quiet {
        println!(
            "checked {} blobs ({}{}), {} index entries, {} build cache entries, {} unpacked layers in {:.1}s",
            rep.blobs,
            human(rep.blob_bytes),
            if a.quick { ", not re-hashed" } else { "" },
            rep.images,
            rep.cache_entries,
            rep.layer_dirs,
            t.elapsed().as_secs_f64()
        );
        if rep.in_use > 0 {
            println!(
                "{} temporary entries belong to running kiln processes (left alone)",
                rep.in_use
            );
        }
        let garbage = rep.garbage();
        if rep.is_consistent() {
            println!(
                "the store at {} is consistent{}",
                store.root().display(),
                if garbage > 0 {
                    format!("; {garbage} left-over entries can be removed with kiln fsck --repair")
                } else {
                    String::new()
                }
            );
        } else {
            println!(
                "the store at {} has {} error(s){}",
                store.root().display(),
                rep.errors(),
                if a.repair {
                    "; remove or pull the affected images again (kiln rmi / kiln pull)"
                } else {
                    "; kiln fsck --repair removes corrupt blobs and broken cache entries"
                }
            );
        }
    }
    Ok(if rep.is_consistent() { 0 } else { 1 })
}

/// `kiln prune [--all] [--keep-storage SIZE]`.
pub fn prune(g: &GlobalOpts, a: PruneArgs) -> Result<i32> {
    let store = g.store()?;
    let names = gc::names(&store)?;
    let rep = gc::prune(
        &store,
        &PruneOptions {
            all: a.all,
            keep_storage: a.keep_storage,
            wait: a.wait,
            dry_run: a.dry_run,
        },
    )?;
    let verb = if a.dry_run { "Would remove" } else { "Removed" };
    for d in &rep.images {
        if !names.contains_key(d) {
            println!("{verb} unnamed image {}", d.short());
        }
    }
    println!(
        "{verb} {} unnamed image(s), {} build cache entr{}, {} blob(s) ({}), {} unpacked layer(s) ({}), {} temporary entr{} ({})",
        rep.images.len(),
        rep.cache_entries,
        if rep.cache_entries == 1 { "y" } else { "ies" },
        rep.blobs,
        human(rep.blob_bytes),
        rep.layers,
        human(rep.layer_bytes),
        rep.tmp_entries,
        if rep.tmp_entries == 1 { "y" } else { "ies" },
        human(rep.tmp_bytes),
    );
    println!(
        "Store size: {} -> {} (reclaimed {})",
        human(rep.size_before),
        human(rep.size_after),
        human(rep.reclaimed())
    );
    Ok(0)
}
