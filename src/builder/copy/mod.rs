//! COPY and ADD with Docker/BuildKit semantics.
//!
//! [`copy_into`] performs one COPY/ADD instruction into a mounted (merged) rootfs with plain
//! file-system calls; the overlay underneath records the changes. [`source_digest`] hashes
//! everything the same instruction would copy, for the build cache.
//!
//! The rules follow BuildKit's file op (`tonistiigi/fsutil/copy`):
//! - a source path is relative to its root (`/x`, `../x` → `x`), symlinks on the way (and a
//!   symlink named as the source itself) are followed inside the root;
//! - wildcards (`*`, `?`, `[..]`, `\` escapes) match per path component like Go's
//!   `filepath.Match`; a pattern that matches nothing is fine as long as the instruction as a
//!   whole matched something;
//! - a file goes to `dest` (or `dest/<name>` when `dest` is a directory or must be one: a
//!   trailing `/` or `/.`, several sources, `--parents`); a directory's *contents* are copied
//!   into `dest` (created 0755 when missing), sub-directories with their own metadata;
//! - missing parent dirs of `dest` are created 0755, owned by the `--chown` user or root;
//! - copied entries keep their mode (incl. setuid), mtime, symlink targets, hardlinks, fifos,
//!   xattrs; ownership becomes `--chown`, else 0:0 for the build context, else is kept;
//! - ADD extracts local tar archives (any compression, detected by content) into `dest`,
//!   downloads `http(s)://` URLs (mode 0600, `--checksum`), clones git URLs.

mod copier;
mod digest;
mod remote;
mod sources;

use crate::dockerfile::Chmod;
use crate::dockerfile::ignore::IgnoreMatcher;
use crate::fsutil::Root;
use anyhow::{Context, Result};
use copier::Copier;
pub use digest::{source_digest, source_digest_cached};
use sources::resolve_items;
use std::collections::HashMap;
use std::path::Path;

/// Where COPY/ADD reads from.
pub struct CopySource<'a> {
    /// The build context dir, or a stage's / image's rootfs (merged, read-only).
    pub root: &'a Path,
    /// `.dockerignore` of the context (None for other roots).
    pub ignore: Option<&'a IgnoreMatcher>,
    /// True for the build context: copied files become 0:0 unless `--chown`.
    pub is_context: bool,
}

/// One expanded COPY/ADD instruction.
#[derive(Clone, Debug, Default)]
pub struct CopyRequest {
    /// Source paths/patterns relative to the source root; URLs / git URLs for ADD; `<<NAME`
    /// for a heredoc.
    pub srcs: Vec<String>,
    /// Destination, absolute or relative to `workdir`.
    pub dest: String,
    /// The stage's WORKDIR (absolute).
    pub workdir: String,
    /// Raw `--chown` spec (`user[:group]`, resolved in the destination rootfs).
    pub chown: Option<String>,
    /// Raw `--chmod` (octal or symbolic).
    pub chmod: Option<String>,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    pub parents: bool,
    pub link: bool,
    pub is_add: bool,
    /// ADD `--checksum=sha256:…`.
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    /// ADD `--unpack[=BOOL]`: None extracts local archives only (the default); true also
    /// extracts downloaded ones; false copies archives as they are.
    pub unpack: Option<bool>,
    /// Heredoc bodies (name, content) for sources named `<<NAME`.
    pub heredocs: Vec<(String, String)>,
    /// Whether owners are set or recorded (see [`crate::layer::Ownership`]).
    pub ownership: crate::layer::Ownership,
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Performs the COPY/ADD described by `req` from `src` into the mounted rootfs `rootfs`.
/// Every path inside the rootfs and inside the source is reached through a [`Root`] (opened
/// once here): symlinks resolve inside their root, never on the host.
pub fn copy_into(rootfs: &Path, src: &CopySource, req: &CopyRequest) -> Result<()> {
    let root = Root::open(rootfs).with_context(|| format!("opening the rootfs {}", rootfs.display()))?;
    let chmod = req.chmod.as_deref().map(Chmod::parse).transpose()?;
    let chown = match req.chown.as_deref() {
        Some(spec) => {
            Some(crate::users::resolve_chown_in(&root, spec).with_context(|| format!("resolving --chown={spec}"))?)
        }
        None => None,
    };
    let items = resolve_items(src, req)?;
    let dest = Dest::of(req);
    if items.is_empty() && !req.parents {
        // An empty wildcard: BuildKit returns before it creates the destination (with
        // --parents it creates the destination directory first).
        return Ok(());
    }
    let dest_is_dir = dest.dir_hint || req.parents || items.len() > 1 || req.srcs.len() > 1;
    let mut cx = Copier {
        root,
        chown,
        ownership: req.ownership,
        chmod,
        links: HashMap::new(),
        dir_fixups: Vec::new(),
    };
    let ensure = if dest_is_dir {
        dest.abs.clone()
    } else {
        parent_of(&dest.abs)
    };
    cx.mkdir_all(&ensure)?;
    for item in &items {
        cx.copy_item(req, item, &dest)?;
    }
    cx.finish()
}

// ---------------------------------------------------------------------------------------------
// Destination
// ---------------------------------------------------------------------------------------------

struct Dest {
    /// Clean absolute container path.
    abs: String,
    /// The destination names a directory: empty, `.`, or ends with `/` or `/.`.
    dir_hint: bool,
}

impl Dest {
    fn of(req: &CopyRequest) -> Dest {
        let d = req.dest.as_str();
        let dir_hint = d.is_empty() || d == "." || d.ends_with('/') || d.ends_with("/.");
        let joined = if d.starts_with('/') {
            d.to_string()
        } else {
            format!("{}/{}", req.workdir, d)
        };
        Dest {
            abs: format!("/{}", clean_components(&joined).join("/")),
            dir_hint,
        }
    }
}

/// Lexically cleans a path, rooted: `/a/../b/./c` and `../../b/c` both give `[b, c]`.
fn clean_components(p: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

fn parent_of(abs: &str) -> String {
    let comps = clean_components(abs);
    format!("/{}", comps[..comps.len().saturating_sub(1)].join("/"))
}

#[cfg(test)]
mod tests;
