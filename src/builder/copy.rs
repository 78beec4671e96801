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

use crate::digest::Digest;
use crate::dockerfile::ignore::{IgnoreMatcher, go_match};
use crate::fsutil::root::fd_path;
use crate::fsutil::{Follow, Root};
use anyhow::{Context, Result, anyhow, bail};
use filetime::FileTime;
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use xattr::FileExt as _;

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
    /// Heredoc bodies (name, content) for sources named `<<NAME`.
    pub heredocs: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Performs the COPY/ADD described by `req` from `src` into the mounted rootfs `rootfs`.
/// Every path inside the rootfs and inside the source is reached through a [`Root`] (opened
/// once here): symlinks resolve inside their root, never on the host.
pub fn copy_into(rootfs: &Path, src: &CopySource, req: &CopyRequest) -> Result<()> {
    let root = Root::open(rootfs).with_context(|| format!("opening the rootfs {}", rootfs.display()))?;
    let chmod = req.chmod.as_deref().map(parse_chmod).transpose()?;
    let chown = match req.chown.as_deref() {
        Some(spec) => {
            Some(crate::users::resolve_chown_in(&root, spec).with_context(|| format!("resolving --chown={spec}"))?)
        }
        None => None,
    };
    let items = resolve_items(src, req)?;
    let dest = Dest::of(req);
    let dest_is_dir = dest.dir_hint || req.parents || items.len() > 1 || req.srcs.len() > 1;
    let mut cx = Copier {
        root,
        chown,
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

/// Content hash of everything `req` would copy from `src`: relative paths, file bytes, modes,
/// symlink targets, hardlink structure, ownership (for non-context roots), and the request's
/// destination and flags. Never mtimes, never the root's absolute path.
pub fn source_digest(src: &CopySource, req: &CopyRequest) -> Result<Digest> {
    source_digest_cached(src, req, None)
}

/// [`source_digest`] with a stat cache of the build context: files whose stat is unchanged
/// since they were last hashed are not read again (a no-change rebuild reads no content).
pub fn source_digest_cached(
    src: &CopySource,
    req: &CopyRequest,
    stat: Option<&super::cache::StatCache>,
) -> Result<Digest> {
    let started = std::time::SystemTime::now();
    if let Some(c) = req.chmod.as_deref() {
        parse_chmod(c)?;
    }
    let items = resolve_items(src, req)?;
    let mut h = Sha256::new();
    let put = |h: &mut Sha256, s: &[u8]| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    };
    put(&mut h, b"kiln-copy-v1");
    let dest = Dest::of(req);
    put(
        &mut h,
        format!("{:?}", (&dest.abs, dest.dir_hint, &req.srcs)).as_bytes(),
    );
    put(
        &mut h,
        format!(
            "{:?}",
            (
                &req.chown,
                &req.chmod,
                &req.exclude,
                req.parents,
                req.link,
                req.is_add,
                &req.checksum,
                req.keep_git_dir
            )
        )
        .as_bytes(),
    );
    put(&mut h, if src.is_context { b"context" } else { b"root" });

    // Regular files to hash, in a stable order; hashed in parallel.
    let mut files: Vec<(&Root, &Path, &Metadata, bool)> = Vec::new();
    for item in &items {
        if let Kind::Local {
            root,
            inside,
            md,
            entries,
            ..
        } = &item.kind
        {
            // Only the build context's own files have a stat cache entry (not a git checkout).
            let in_context = src.is_context && item._keep.is_none();
            if md.is_file() {
                files.push((root, inside, md, in_context));
            }
            files.extend(
                entries
                    .iter()
                    .filter(|e| e.md.is_file())
                    .map(|e| (&**root, e.inside.as_path(), &e.md, in_context)),
            );
        }
    }
    let stat = stat.filter(|_| src.is_context);
    let hash = |(root, p, md, in_context): &(&Root, &Path, &Metadata, bool)| -> Result<[u8; 32]> {
        if let (Some(c), Some(rel), true) = (stat, p.to_str(), *in_context) {
            if let Some(sum) = c.get(rel, md) {
                return Ok(sum);
            }
            let sum = hash_file(root, p, md)?;
            c.put(rel, md, &sum, started);
            return Ok(sum);
        }
        hash_file(root, p, md)
    };
    let sums: Vec<[u8; 32]> = files.par_iter().map(hash).collect::<Result<_>>()?;
    let mut sums = sums.into_iter();
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    let mut counter = 0usize;
    for item in &items {
        put(
            &mut h,
            format!("item {:?} {:?}", item.name, item.parents_rel).as_bytes(),
        );
        match &item.kind {
            Kind::Heredoc { content } => put(&mut h, content.as_bytes()),
            Kind::Remote(d) => put(&mut h, format!("url {} {}", d.url, d.digest).as_bytes()),
            Kind::Local {
                root,
                inside,
                md,
                entries,
                keep_owner,
            } => {
                let mut line = |h: &mut Sha256, rel: &Path, path: &Path, md: &Metadata| -> Result<()> {
                    let ft = md.file_type();
                    let mut s = format!("{:?} {:o}", rel, md.mode());
                    if *keep_owner {
                        s.push_str(&format!(" {}:{}", md.uid(), md.gid()));
                    }
                    if ft.is_symlink() {
                        let t = root
                            .readlink(path)
                            .with_context(|| format!("reading symlink {}", root.show(path)))?;
                        s.push_str(&format!(" -> {t:?}"));
                    } else if ft.is_block_device() || ft.is_char_device() {
                        s.push_str(&format!(" dev {}", md.rdev()));
                    } else if ft.is_file() {
                        counter += 1;
                        if md.nlink() > 1 {
                            let first = *inodes.entry((md.dev(), md.ino())).or_insert(counter);
                            s.push_str(&format!(" link {first}"));
                        }
                        let sum = sums.next().context("internal error: file hash list too short")?;
                        s.push_str(&format!(" {} {}", md.len(), hex::encode(sum)));
                    }
                    put(h, s.as_bytes());
                    Ok(())
                };
                line(&mut h, Path::new(""), inside, md)?;
                for e in entries {
                    line(&mut h, &e.rel, &e.inside, &e.md)?;
                }
            }
        }
    }
    Digest::parse(&format!("sha256:{}", hex::encode(h.finalize())))
}

fn hash_file(root: &Root, p: &Path, md: &Metadata) -> Result<[u8; 32]> {
    let mut f = open_source(root, p, md)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", root.show(p)))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
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

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

struct Entry {
    /// Path relative to the copied directory.
    rel: PathBuf,
    /// Path inside the source root (symlink-free when walked).
    inside: PathBuf,
    md: Metadata,
}

#[allow(clippy::large_enum_variant)]
enum Kind {
    Heredoc {
        content: String,
    },
    Remote(Arc<Downloaded>),
    Local {
        /// The root the source is read through (the context, a stage, a git checkout).
        root: Arc<Root>,
        /// The source inside `root`, with symlinks followed (inside the root).
        inside: PathBuf,
        md: Metadata,
        /// For a directory: its visible descendants, parents before children.
        entries: Vec<Entry>,
        /// Keep the source's owner (stage/image roots) instead of 0:0.
        keep_owner: bool,
    },
}

struct Item {
    kind: Kind,
    /// The name a file gets inside a destination directory.
    name: String,
    /// `--parents`: the source's path (after the `/./` pivot) kept under the destination,
    /// with the source directory (inside the source root) of each component.
    parents_rel: Option<Vec<(String, PathBuf)>>,
    /// `_git` clones keep a handle on their checkout.
    _keep: Option<Arc<tempfile::TempDir>>,
}

/// Path filters of one walk: .dockerignore (relative to the source root) and --exclude
/// (relative to the copied source).
struct Filter<'a> {
    ignore: Option<&'a IgnoreMatcher>,
    exclude: Option<&'a IgnoreMatcher>,
}

impl Filter<'_> {
    fn ignored(&self, ctx_rel: &str) -> bool {
        !ctx_rel.is_empty() && self.ignore.is_some_and(|m| m.is_excluded(ctx_rel))
    }

    fn excluded(&self, ex_rel: &str) -> bool {
        !ex_rel.is_empty() && self.exclude.is_some_and(|m| m.is_excluded(ex_rel))
    }

    /// Whether a hidden (ignored and/or excluded) directory must still be walked, because an
    /// exception pattern may re-include something below it.
    fn may_include_below(&self, ignored: bool, ctx_rel: &str, excluded: bool, ex_rel: &str) -> bool {
        (!ignored || self.ignore.is_some_and(|m| m.may_include_below(ctx_rel)))
            && (!excluded || self.exclude.is_some_and(|m| m.may_include_below(ex_rel)))
    }
}

fn join_rel(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// A path inside a root as the ignore matcher sees it (relative, `/`-separated).
fn rel_str(inside: &Path) -> String {
    inside.to_string_lossy().into_owned()
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Where `path` resolves inside `root` (symlinks followed inside it); `None` when it does not
/// exist.
fn canon(root: &Root, path: &str) -> Result<Option<PathBuf>> {
    match root.canonical(path, Follow::All) {
        Ok(p) => Ok(Some(p)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("resolving {}", root.show(path))),
    }
}

/// Opens the source file `inside` (a regular file, as `md` says) for reading; the file opened
/// must be the one that was walked.
fn open_source(root: &Root, inside: &Path, md: &Metadata) -> Result<File> {
    let f = root
        .open_with(inside, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)
        .with_context(|| format!("opening {}", root.show(inside)))?;
    let now = f
        .metadata()
        .with_context(|| format!("inspecting {}", root.show(inside)))?;
    if !now.is_file() || now.ino() != md.ino() || now.dev() != md.dev() {
        bail!("{} changed while it was being copied", root.show(inside));
    }
    Ok(f)
}

/// Resolves every source of the request into items (wildcards expanded, symlinks followed,
/// directories walked with .dockerignore and --exclude applied).
fn resolve_items(src: &CopySource, req: &CopyRequest) -> Result<Vec<Item>> {
    let exclude = match req.exclude.is_empty() {
        true => None,
        false => Some(IgnoreMatcher::from_patterns(&req.exclude).context("invalid --exclude pattern")?),
    };
    let filter = Filter {
        ignore: if src.is_context { src.ignore } else { None },
        exclude: exclude.as_ref(),
    };
    let word = if req.is_add { "ADD" } else { "COPY" };
    let mut items = Vec::new();
    let mut local_patterns = 0usize;
    let mut root: Option<Arc<Root>> = None;
    for s in &req.srcs {
        if let Some((name, content)) = heredoc_for(s, req) {
            items.push(Item {
                kind: Kind::Heredoc {
                    content: content.clone(),
                },
                name: name.clone(),
                parents_rel: None,
                _keep: None,
            });
            continue;
        }
        if is_git_url(s) {
            if !req.is_add {
                bail!("{word} does not support git sources ({s}): use ADD");
            }
            let (dir, sub) = git_checkout(s, req.keep_git_dir)?;
            let groot = Arc::new(Root::open(dir.path()).with_context(|| format!("opening the checkout of {s}"))?);
            let missing = || format!("{s}: no directory {sub:?} in the repository");
            let inside = canon(&groot, &sub)?.with_context(missing)?;
            let md = groot.metadata(&inside, Follow::All).with_context(missing)?;
            let f = Filter {
                ignore: None,
                exclude: exclude.as_ref(),
            };
            let mut entries = Vec::new();
            if md.is_dir() {
                walk(&groot, &inside, &f, Path::new(""), "", &mut entries)?;
            }
            let name = inside
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            items.push(Item {
                kind: Kind::Local {
                    root: groot,
                    inside,
                    md,
                    entries,
                    keep_owner: false,
                },
                name,
                parents_rel: None,
                _keep: Some(dir),
            });
            continue;
        }
        if is_http_url(s) {
            if !req.is_add {
                bail!("{word} does not support URLs ({s}): use ADD");
            }
            let d = download(s, req.checksum.as_deref())?;
            items.push(Item {
                name: d.filename.clone(),
                kind: Kind::Remote(d),
                parents_rel: None,
                _keep: None,
            });
            continue;
        }
        if req.checksum.is_some() {
            bail!("ADD --checksum is only supported for HTTP(S) sources, not {s:?}");
        }
        local_patterns += 1;
        let r = match &root {
            Some(r) => r.clone(),
            None => {
                let what = if src.is_context {
                    "the build context"
                } else {
                    "the source stage"
                };
                let r =
                    Arc::new(Root::open(src.root).with_context(|| format!("opening {what} {}", src.root.display()))?);
                root = Some(r.clone());
                r
            }
        };
        items.extend(resolve_local(&r, src, req, s, &filter)?);
    }
    if items.is_empty() && (local_patterns > 0 || req.srcs.is_empty()) {
        bail!(
            "{word} failed: no source files were specified (nothing matched {})",
            req.srcs.join(" ")
        );
    }
    Ok(items)
}

fn heredoc_for<'a>(s: &str, req: &'a CopyRequest) -> Option<&'a (String, String)> {
    if req.heredocs.is_empty() {
        return None;
    }
    let name = match s.strip_prefix("<<") {
        Some(n) => n.strip_prefix('-').unwrap_or(n).trim_matches(|c| c == '"' || c == '\''),
        None => s,
    };
    req.heredocs.iter().find(|(n, _)| n == name)
}

/// A local source path or pattern → its items.
fn resolve_local(root: &Arc<Root>, src: &CopySource, req: &CopyRequest, s: &str, filter: &Filter) -> Result<Vec<Item>> {
    let comps = clean_components(s);
    // --parents: an inner "/./" marks the pivot; what follows it is kept under dest.
    let pivot = match (req.parents, s.find("/./")) {
        (true, Some(i)) => clean_components(&s[..i]).len(),
        _ => 0,
    };
    let wild = comps.iter().position(|c| contains_wildcards(c));
    let mut found: Vec<String> = Vec::new(); // paths relative to the root
    match wild {
        None => {
            let rel = comps.join("/");
            let inside = canon(root, &rel)?;
            let md = inside.as_ref().and_then(|p| root.metadata(p, Follow::Parents).ok());
            let visible = match (&md, &inside) {
                (Some(md), Some(inside)) => {
                    !filter.ignored(&rel_str(inside)) || (md.is_dir() && dir_has_visible(root, inside, filter)?)
                }
                _ => false,
            };
            if !visible {
                bail!("\"/{rel}\": not found");
            }
            found.push(rel);
        }
        Some(w) => {
            let base = comps[..w].join("/");
            if let Some(base_in) = canon(root, &base)?
                && root.metadata(&base_in, Follow::Parents).is_ok_and(|m| m.is_dir())
            {
                let mut matches = Vec::new();
                match_wildcards(root, &base_in, &comps[w..], String::new(), &mut matches)?;
                for m in matches {
                    let Some(inside) = canon(root, &base_in.join(&m).to_string_lossy())? else {
                        continue;
                    };
                    let Ok(md) = root.metadata(&inside, Follow::Parents) else {
                        continue;
                    };
                    let ctx_rel = rel_str(&base_in.join(&m));
                    let visible = !filter.ignored(&ctx_rel) || (md.is_dir() && dir_has_visible(root, &inside, filter)?);
                    if !visible {
                        continue;
                    }
                    if filter.excluded(&m) && !(md.is_dir() && filter.may_include_below(false, "", true, &m)) {
                        continue;
                    }
                    found.push(join_rel(&base, &m));
                }
            }
        }
    }
    let mut items = Vec::new();
    for rel in found {
        let not_found = || format!("\"/{rel}\": not found");
        let inside = canon(root, &rel)?.with_context(not_found)?;
        let md = root.metadata(&inside, Follow::Parents).with_context(not_found)?;
        let mut entries = Vec::new();
        if md.is_dir() {
            walk(root, &inside, filter, Path::new(""), "", &mut entries)?;
        }
        let rcomps = clean_components(&rel);
        let name = rcomps.last().cloned().unwrap_or_else(|| "/".to_string());
        let parents_rel = if req.parents {
            let mut v = Vec::new();
            for i in pivot..rcomps.len() {
                let sub = rcomps[..=i].join("/");
                let p = canon(root, &sub)?.with_context(|| format!("\"/{sub}\": not found"))?;
                v.push((rcomps[i].clone(), p));
            }
            Some(v)
        } else {
            None
        };
        items.push(Item {
            kind: Kind::Local {
                root: root.clone(),
                inside,
                md,
                entries,
                keep_owner: !src.is_context,
            },
            name,
            parents_rel,
            _keep: None,
        });
    }
    Ok(items)
}

/// Go's `containsWildcards`: an unescaped `*`, `?` or `[`.
fn contains_wildcards(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// The directory `dir` (inside `root`) as a root of its own, and its entry names, sorted.
fn open_dir(root: &Root, dir: &Path) -> Result<(Root, Vec<std::ffi::OsString>)> {
    let d = root
        .sub(dir)
        .with_context(|| format!("opening directory {}", root.show(dir)))?;
    let mut names: Vec<_> = d
        .read_dir(".", Follow::Parents)
        .with_context(|| format!("reading directory {}", root.show(dir)))?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort();
    Ok((d, names))
}

/// Matches pattern components below `dir` (not following symlinks on the way, as Go's
/// filepath.Walk does); results are relative to the pattern's base, in lexical order.
fn match_wildcards(root: &Root, dir: &Path, pats: &[String], prefix: String, out: &mut Vec<String>) -> Result<()> {
    let (d, names) = open_dir(root, dir)?;
    for name in names {
        let n = name.to_string_lossy();
        if !go_match(&pats[0], &n).with_context(|| format!("invalid source pattern {:?}", pats.join("/")))? {
            continue;
        }
        let rel = join_rel(&prefix, &n);
        if pats.len() == 1 {
            out.push(rel);
        } else if d.metadata(&name, Follow::Parents).is_ok_and(|m| m.is_dir()) {
            match_wildcards(root, &dir.join(&name), &pats[1..], rel, out)?;
        }
    }
    Ok(())
}

/// Whether a (possibly ignored) directory has any visible descendant.
fn dir_has_visible(root: &Root, dir: &Path, filter: &Filter) -> Result<bool> {
    let mut v = Vec::new();
    walk(root, dir, filter, Path::new(""), "", &mut v)?;
    Ok(!v.is_empty())
}

/// Walks `dir` (inside `root`; pre-order, sorted) into `out`. `ex_rel` is the exclude-relative
/// path of `dir`. Ignored/excluded directories are entered only when an exception pattern may
/// re-include something below them, and kept only when something was.
fn walk(root: &Root, dir: &Path, filter: &Filter, rel: &Path, ex_rel: &str, out: &mut Vec<Entry>) -> Result<()> {
    let (d, names) = open_dir(root, dir)?;
    for name in names {
        let inside = dir.join(&name);
        let md = d
            .metadata(&name, Follow::Parents)
            .with_context(|| format!("reading {}", root.show(&inside)))?;
        if md.file_type().is_socket() {
            continue;
        }
        let n = name.to_string_lossy();
        let e_rel = join_rel(ex_rel, &n);
        let ctx_rel = rel_str(&inside);
        let ignored = filter.ignored(&ctx_rel);
        let excluded = filter.excluded(&e_rel);
        let child_rel = rel.join(&name);
        if !ignored && !excluded {
            let is_dir = md.is_dir();
            out.push(Entry {
                rel: child_rel.clone(),
                inside: inside.clone(),
                md,
            });
            if is_dir {
                walk(root, &inside, filter, &child_rel, &e_rel, out)?;
            }
        } else if md.is_dir() && filter.may_include_below(ignored, &ctx_rel, excluded, &e_rel) {
            // Exceptions (`!dir/keep`) may re-include paths below an ignored/excluded dir.
            let mut sub = Vec::new();
            walk(root, &inside, filter, &child_rel, &e_rel, &mut sub)?;
            if !sub.is_empty() {
                out.push(Entry {
                    rel: child_rel,
                    inside,
                    md,
                });
                out.append(&mut sub);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Copying
// ---------------------------------------------------------------------------------------------

/// Every destination path below is a path inside `root` (the mounted rootfs), reached only
/// through it: symlinks resolve inside the rootfs, whatever the tree holds or comes to hold.
struct Copier {
    root: Root,
    chown: Option<(u32, u32)>,
    chmod: Option<Chmod>,
    /// (dev, ino) of multiply-linked source files → their first copy.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories whose metadata is set last (children first, so mtimes stick):
    /// (destination, source root, source, source metadata, keep owner).
    dir_fixups: Vec<(PathBuf, Arc<Root>, PathBuf, Metadata, bool)>,
}

/// Plain files copied in parallel are handed out in batches of at most this many files of one
/// destination directory (one directory handle per batch).
const BATCH: usize = 64;

fn ts(secs: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// Xattrs that are kiln's or the storage driver's own, never copied.
fn private_xattr(s: &str) -> bool {
    s.starts_with("user.overlay.")
        || s.starts_with("user.kiln.")
        || s.starts_with("trusted.")
        || s.starts_with("user.fuseoverlayfs.")
        || s == "security.selinux"
}

impl Copier {
    /// Owner of directories kiln creates on the way: the --chown user, else root.
    fn created_owner(&self) -> (u32, u32) {
        self.chown.unwrap_or((0, 0))
    }

    fn owner(&self, md: &Metadata, keep_owner: bool) -> (u32, u32) {
        match self.chown {
            Some(o) => o,
            None if keep_owner => (md.uid(), md.gid()),
            None => (0, 0),
        }
    }

    /// The owner a copy of a source entry gets. Without privilege the source's owner is its
    /// recorded one (see layer::OWNER_XATTR), read through an fd of the source (`fd`: `None`
    /// for a symlink, which carries no such record).
    fn owner_of_source(&self, fd: Option<BorrowedFd<'_>>, md: &Metadata, keep_owner: bool) -> (u32, u32) {
        match self.chown {
            None if keep_owner && crate::layer::owner_emulation() => {
                // A symlink has no record: the on-disk owner (mapped) is used.
                match fd {
                    Some(fd) => crate::layer::effective_owner_fd(fd, md),
                    None => crate::layer::effective_owner(Path::new(""), md),
                }
            }
            _ => self.owner(md, keep_owner),
        }
    }

    /// Resolves a container path and creates the missing directories (0755, created owner);
    /// returns the directory's path inside the root (symlinks resolved).
    fn mkdir_all(&self, container_path: &str) -> Result<PathBuf> {
        let (_, created) = self
            .root
            .mkdir_all(container_path, 0o755)
            .with_context(|| format!("creating directory {container_path} in the rootfs"))?;
        let (u, g) = self.created_owner();
        for c in &created {
            self.root
                .chmod(c, 0o755)
                .with_context(|| format!("setting mode 755 on {}", self.root.show(c)))?;
            self.chown_path(c, u, g, false)?;
        }
        self.root
            .canonical(container_path, Follow::All)
            .with_context(|| format!("resolving {container_path} in the rootfs"))
    }

    /// Where a non-directory source named `name` goes: into `target` when it is a directory.
    fn file_target(&self, target: &Path, name: &str) -> PathBuf {
        if self.root.metadata(target, Follow::Parents).is_ok_and(|m| m.is_dir()) {
            target.join(name)
        } else {
            target.to_path_buf()
        }
    }

    fn copy_item(&mut self, req: &CopyRequest, item: &Item, dest: &Dest) -> Result<()> {
        let target = self
            .root
            .canonical(&dest.abs, Follow::All)
            .with_context(|| format!("resolving the destination {} in the rootfs", dest.abs))?;
        match &item.kind {
            Kind::Heredoc { content } => {
                let path = self.file_target(&target, &item.name);
                let mode = self.chmod.as_ref().map_or(0o644, |c| c.apply(0o644, false));
                self.write_new_file(&path, &mut content.as_bytes(), mode, None)
            }
            Kind::Remote(d) => {
                let path = self.file_target(&target, &item.name);
                let mode = self.chmod.as_ref().map_or(0o600, |c| c.apply(0o600, false));
                let mut f =
                    File::open(d.file.path()).with_context(|| format!("reopening the download of {}", d.url))?;
                self.write_new_file(&path, &mut f, mode, d.mtime)
            }
            Kind::Local {
                root,
                inside,
                md,
                entries,
                keep_owner,
            } => {
                let keep_owner = *keep_owner;
                if let Some(parents) = &item.parents_rel {
                    // --parents: recreate the source's directories under dest.
                    let mut cur = target.clone();
                    let n = parents.len();
                    for (i, (comp, src_dir)) in parents.iter().enumerate() {
                        if i + 1 == n && !md.is_dir() {
                            cur = cur.join(comp);
                            break;
                        }
                        let smd = root
                            .metadata(src_dir, Follow::All)
                            .with_context(|| format!("reading {}", root.show(src_dir)))?;
                        cur = self.ensure_dir(root, src_dir, &cur.join(comp), &smd, keep_owner)?;
                    }
                    if md.is_dir() {
                        return self.copy_tree(root, &cur, entries, keep_owner);
                    }
                    return self.copy_entry(root, inside, md, &cur, keep_owner);
                }
                if md.is_dir() {
                    let tdir = match self.root.metadata(&target, Follow::Parents) {
                        Ok(m) if m.is_dir() => target,
                        Ok(_) => bail!(
                            "cannot copy directory {} to {}: it is not a directory",
                            item.name,
                            dest.abs
                        ),
                        Err(_) => self.mkdir_all(&dest.abs)?,
                    };
                    return self.copy_tree(root, &tdir, entries, keep_owner);
                }
                if req.is_add && md.is_file() && self.try_extract(root, inside, md, &dest.abs)? {
                    return Ok(());
                }
                let path = self.file_target(&target, &item.name);
                self.copy_entry(root, inside, md, &path, keep_owner)
            }
        }
    }

    /// ADD of a local archive: extract into dest. Returns false when the file is no archive.
    fn try_extract(&mut self, src: &Root, inside: &Path, md: &Metadata, dest_abs: &str) -> Result<bool> {
        let f = open_source(src, inside, md)?;
        let Some(reader) = crate::layer::open_archive(io::BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("reading {}", src.show(inside)))?
        else {
            return Ok(false);
        };
        let dir = self.mkdir_all(dest_abs)?;
        // The archive goes into the directory that was resolved (its fd), not a host path.
        let dir_fd = self
            .root
            .resolve(&dir, Follow::Parents)
            .with_context(|| format!("opening {dest_abs} in the rootfs"))?;
        let opts = crate::layer::ApplyOptions {
            chown: self.chown,
            keep_whiteouts_as_files: true,
        };
        let name = inside.file_name().unwrap_or_default().display().to_string();
        let mut counted = CountingReader { inner: reader, n: 0 };
        crate::layer::apply(&mut counted, &fd_path(dir_fd.as_fd()), &opts)
            .with_context(|| format!("extracting {name} into {dest_abs}"))?;
        // Like Go's archive/tar (Docker), an archive that ends inside a 512-byte block is
        // broken even when every entry could be read.
        io::copy(&mut counted, &mut io::sink()).with_context(|| format!("reading the end of {name}"))?;
        if counted.n % 512 != 0 {
            bail!(
                "extracting {name}: unexpected end of the archive (truncated tar: {} bytes)",
                counted.n
            );
        }
        Ok(true)
    }

    /// A directory for a copied source directory: created, or an existing one (followed when
    /// it is a symlink to a directory inside the root). Its metadata is set at the end.
    fn ensure_dir(
        &mut self,
        src_root: &Arc<Root>,
        src: &Path,
        path: &Path,
        md: &Metadata,
        keep_owner: bool,
    ) -> Result<PathBuf> {
        let fixup = (
            path.to_path_buf(),
            src_root.clone(),
            src.to_path_buf(),
            md.clone(),
            keep_owner,
        );
        match self.root.metadata(path, Follow::Parents) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.root
                    .mkdir_all(path, 0o755)
                    .with_context(|| format!("creating directory {}", self.root.show(path)))?;
                self.dir_fixups.push(fixup);
                Ok(path.to_path_buf())
            }
            Err(e) => Err(e).with_context(|| format!("inspecting {}", self.root.show(path))),
            Ok(m) if m.is_dir() => {
                self.dir_fixups.push(fixup);
                Ok(path.to_path_buf())
            }
            Ok(m) if m.file_type().is_symlink() => {
                let resolved = self.root.canonical(path, Follow::All).ok();
                match resolved {
                    Some(r) if self.root.metadata(&r, Follow::Parents).is_ok_and(|m| m.is_dir()) => Ok(r),
                    _ => bail!(
                        "cannot copy a directory to {}: it is a symlink to a non-directory",
                        self.root.show(path)
                    ),
                }
            }
            Ok(_) => bail!(
                "cannot copy a directory to {}: it exists and is not a directory",
                self.root.show(path)
            ),
        }
    }

    /// Copies walked entries (of `src_root`) below the target directory `tdir`.
    fn copy_tree(&mut self, src_root: &Arc<Root>, tdir: &Path, entries: &[Entry], keep_owner: bool) -> Result<()> {
        // Actual target of each copied directory (symlinked target dirs are followed safely).
        let mut dirs: HashMap<&Path, PathBuf> = HashMap::new();
        // Plain files (one link) are copied last, in parallel: for a big context the copy is
        // bound by per-file system calls, and both cores help (copy-big: ~1.9x faster). Every
        // directory exists by then; nothing else depends on the order of the files. They are
        // grouped by destination directory, which is opened once per batch.
        let mut groups: Vec<(PathBuf, Vec<&Entry>)> = Vec::new();
        let mut group_of: HashMap<PathBuf, usize> = HashMap::new();
        for e in entries {
            let parent = e.rel.parent().unwrap_or(Path::new(""));
            let pdir = if parent.as_os_str().is_empty() {
                tdir.to_path_buf()
            } else {
                dirs.get(parent)
                    .cloned()
                    .with_context(|| format!("internal error: no target for {}", parent.display()))?
            };
            let name = e.rel.file_name().unwrap_or_default();
            if e.md.is_dir() {
                let real = self.ensure_dir(src_root, &e.inside, &pdir.join(name), &e.md, keep_owner)?;
                dirs.insert(&e.rel, real);
            } else if e.md.is_file() && e.md.nlink() == 1 {
                let i = *group_of.entry(pdir.clone()).or_insert_with(|| {
                    groups.push((pdir, Vec::new()));
                    groups.len() - 1
                });
                groups[i].1.push(e);
            } else {
                self.copy_entry(src_root, &e.inside, &e.md, &pdir.join(name), keep_owner)?;
            }
        }
        let batches: Vec<(&Path, &[&Entry])> = groups
            .iter()
            .flat_map(|(d, files)| files.chunks(BATCH).map(move |c| (d.as_path(), c)))
            .collect();
        let total: usize = groups.iter().map(|(_, f)| f.len()).sum();
        let this = &*self;
        let run = |(dir, files): &(&Path, &[&Entry])| -> Result<()> {
            let d = this
                .root
                .sub(dir)
                .with_context(|| format!("opening directory {}", this.root.show(dir)))?;
            for e in files.iter() {
                let name = e.rel.file_name().unwrap_or_default();
                this.copy_plain_file(src_root, e, &d, dir, name, keep_owner)?;
            }
            Ok(())
        };
        if total < BATCH {
            batches.iter().try_for_each(run)
        } else {
            batches.par_iter().try_for_each(run)
        }
    }

    /// Creates the new regular file `name` in the directory `d` (`dir` inside the rootfs),
    /// replacing a non-directory that is there.
    fn create_in(&self, d: &Root, dir: &Path, name: &std::ffi::OsStr) -> Result<File> {
        let show = || self.root.show(dir.join(name));
        match d.create_new(name, 0o600) {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", show())),
        }
        if d.metadata(name, Follow::Parents).is_ok_and(|m| m.is_dir()) {
            bail!("cannot replace directory {} with a file", show());
        }
        d.remove(name).with_context(|| format!("replacing {}", show()))?;
        d.create_new(name, 0o600)
            .with_context(|| format!("creating {}", show()))
    }

    /// Copies a regular file with a single link into the directory `d` (no shared state: safe
    /// to run in parallel). Its metadata is set through the new file's fd.
    fn copy_plain_file(
        &self,
        src: &Root,
        e: &Entry,
        d: &Root,
        dir: &Path,
        name: &std::ffi::OsStr,
        keep_owner: bool,
    ) -> Result<()> {
        let mut input = open_source(src, &e.inside, &e.md)?;
        let mut out = self.create_in(d, dir, name)?;
        let show = || self.root.show(dir.join(name));
        io::copy(&mut input, &mut out).with_context(|| format!("copying {} to {}", src.show(&e.inside), show()))?;
        self.set_file_meta(&input, &e.md, &out, &show(), keep_owner)
    }

    /// Owner, mode, xattrs and times of a copied regular file, through the fds of the source
    /// and of the copy (in that order: chown clears setuid).
    fn set_file_meta(&self, input: &File, md: &Metadata, out: &File, show: &str, keep_owner: bool) -> Result<()> {
        let (u, g) = self.owner_of_source(Some(input.as_fd()), md, keep_owner);
        self.chown_file(out, show, u, g)?;
        let mut mode = md.mode() & 0o7777;
        if let Some(c) = &self.chmod {
            mode = c.apply(mode, false);
        }
        out.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {show}"))?;
        if let Ok(names) = input.list_xattr() {
            for n in names {
                if private_xattr(&n.to_string_lossy()) {
                    continue;
                }
                if let Ok(Some(v)) = input.get_xattr(&n) {
                    let _ = out.set_xattr(&n, &v);
                }
            }
        }
        filetime::set_file_handle_times(
            out,
            Some(FileTime::from_last_access_time(md)),
            Some(FileTime::from_last_modification_time(md)),
        )
        .with_context(|| format!("setting times of {show}"))
    }

    /// Removes a non-directory at `dst` (a directory there is an error).
    fn clear(&self, dst: &Path) -> Result<()> {
        match self.root.metadata(dst, Follow::Parents) {
            Ok(m) if m.is_dir() => bail!("cannot replace directory {} with a file", self.root.show(dst)),
            Ok(_) => self
                .root
                .remove(dst)
                .with_context(|| format!("replacing {}", self.root.show(dst))),
            Err(_) => Ok(()),
        }
    }

    /// Copies one non-directory entry (file, symlink, fifo, device) `inside` of `src` to `dst`.
    fn copy_entry(&mut self, src: &Root, inside: &Path, md: &Metadata, dst: &Path, keep_owner: bool) -> Result<()> {
        let ft = md.file_type();
        if ft.is_dir() {
            bail!("internal error: copy_entry called for directory {}", src.show(inside));
        }
        if ft.is_socket() {
            return Ok(());
        }
        self.clear(dst)?;
        let show = self.root.show(dst);
        if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = self.links.get(&(md.dev(), md.ino()))
                    && self.root.hardlink(first, dst).is_ok()
                {
                    return Ok(());
                }
                self.links.insert((md.dev(), md.ino()), dst.to_path_buf());
            }
            let mut input = open_source(src, inside, md)?;
            let mut out = self
                .root
                .create_new(dst, 0o600)
                .with_context(|| format!("creating {show}"))?;
            io::copy(&mut input, &mut out).with_context(|| format!("copying {} to {show}", src.show(inside)))?;
            return self.set_file_meta(&input, md, &out, &show, keep_owner);
        } else if ft.is_symlink() {
            let t = src
                .readlink(inside)
                .with_context(|| format!("reading symlink {}", src.show(inside)))?;
            self.root
                .symlink(&t, dst)
                .with_context(|| format!("creating symlink {show}"))?;
        } else if ft.is_fifo() {
            self.root
                .mknod(dst, libc::S_IFIFO | 0o600, 0)
                .with_context(|| format!("creating fifo {show}"))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            self.root
                .mknod(dst, kind | 0o600, md.rdev() as libc::dev_t)
                .with_context(|| format!("creating device node {show}"))?;
        } else {
            bail!("{}: unsupported file type", src.show(inside));
        }
        self.set_meta(src, inside, dst, md, keep_owner)
    }

    /// Owner, mode, xattrs and times of a copied entry that is not a regular file, by path
    /// inside the roots, never following the entry (in that order: chown clears setuid).
    fn set_meta(&self, src: &Root, inside: &Path, dst: &Path, md: &Metadata, keep_owner: bool) -> Result<()> {
        let is_link = md.file_type().is_symlink();
        let show = self.root.show(dst);
        let src_fd = match is_link {
            true => None,
            false => Some(
                src.resolve(inside, Follow::Parents)
                    .with_context(|| format!("opening {}", src.show(inside)))?,
            ),
        };
        let (u, g) = self.owner_of_source(src_fd.as_ref().map(|f| f.as_fd()), md, keep_owner);
        self.chown_path(dst, u, g, is_link)?;
        if !is_link {
            let mut mode = md.mode() & 0o7777;
            if let Some(c) = &self.chmod {
                mode = c.apply(mode, md.is_dir());
            }
            self.root
                .chmod(dst, mode)
                .with_context(|| format!("setting mode {mode:o} on {show}"))?;
            // Symlinks carry no xattrs worth copying (and reading one through its path would
            // follow it).
            if let Ok(names) = src.list_xattrs(inside) {
                for n in names {
                    let Some(n) = n.to_str() else { continue };
                    if private_xattr(n) {
                        continue;
                    }
                    if let Ok(Some(v)) = src.get_xattr(inside, n) {
                        let _ = self.root.set_xattr(dst, n, &v);
                    }
                }
            }
        }
        self.root
            .utimens(dst, ts(md.atime(), md.atime_nsec()), ts(md.mtime(), md.mtime_nsec()))
            .with_context(|| format!("setting times of {show}"))
    }

    fn finish(&mut self) -> Result<()> {
        let fixups = std::mem::take(&mut self.dir_fixups);
        for (path, src_root, src, md, keep_owner) in fixups.iter().rev() {
            self.set_meta(src_root, src, path, md, *keep_owner)?;
        }
        Ok(())
    }

    /// Sets the owner of the new file `out` (`show` names it).
    fn chown_file(&self, out: &File, show: &str, uid: u32, gid: u32) -> Result<()> {
        if crate::layer::owner_emulation() {
            // kiln without privilege: the layer carries the owner (see layer::OWNER_XATTR).
            return crate::layer::record_owner_fd(out.as_fd(), uid, gid)
                .with_context(|| format!("recording the owner {uid}:{gid} of {show}"));
        }
        if let Err(e) = std::os::unix::fs::fchown(out, Some(uid), Some(gid)) {
            if out.metadata().is_ok_and(|m| m.uid() == uid && m.gid() == gid) {
                return Ok(());
            }
            return Err(e).with_context(|| format!("changing the owner of {show} to {uid}:{gid}"));
        }
        Ok(())
    }

    /// Sets the owner of `p` inside the rootfs, never following it.
    fn chown_path(&self, p: &Path, uid: u32, gid: u32, is_link: bool) -> Result<()> {
        let show = || self.root.show(p);
        if crate::layer::owner_emulation() {
            // Symlinks cannot carry the record: their owner is root in the layer.
            if is_link {
                return Ok(());
            }
            let fd = self
                .root
                .resolve(p, Follow::Parents)
                .with_context(|| format!("opening {}", show()))?;
            return crate::layer::record_owner_fd(fd.as_fd(), uid, gid)
                .with_context(|| format!("recording the owner {uid}:{gid} of {}", show()));
        }
        if let Err(e) = self.root.chown(p, uid, gid) {
            if self
                .root
                .metadata(p, Follow::Parents)
                .is_ok_and(|m| m.uid() == uid && m.gid() == gid)
            {
                return Ok(());
            }
            return Err(e).with_context(|| format!("changing the owner of {} to {uid}:{gid}", show()));
        }
        Ok(())
    }

    /// Creates a new regular file (replacing a non-directory) at `path` with content, mode,
    /// the created owner and, when given, the modification time.
    fn write_new_file(&self, path: &Path, content: &mut dyn Read, mode: u32, mtime: Option<FileTime>) -> Result<()> {
        self.clear(path)?;
        let show = self.root.show(path);
        let mut f = self
            .root
            .create_new(path, 0o600)
            .with_context(|| format!("creating {show}"))?;
        io::copy(content, &mut f).with_context(|| format!("writing {show}"))?;
        f.flush().ok();
        let (u, g) = self.created_owner();
        self.chown_file(&f, &show, u, g)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {show}"))?;
        if let Some(t) = mtime {
            filetime::set_file_handle_times(&f, Some(t), Some(t))
                .with_context(|| format!("setting times of {show}"))?;
        }
        Ok(())
    }
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

// ---------------------------------------------------------------------------------------------
// --chmod
// ---------------------------------------------------------------------------------------------

/// A parsed `--chmod`: octal (`755`, `4755`) or symbolic (`u+x,g-w`, `a=rX`, `go=u`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<ChmodClause>),
}

/// One symbolic clause: who (bits u=1, g=2, o=4; 0 = all) and its operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChmodClause {
    who: u8,
    ops: Vec<(char, String)>,
}

/// Parses a `--chmod` value; the error names the value.
pub fn parse_chmod(s: &str) -> Result<Chmod> {
    let bad = |why: &str| anyhow!("invalid --chmod={s}: {why} (expected octal like 755 or symbolic like u+x,g-w)");
    if s.is_empty() {
        return Err(bad("empty value"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        if s.len() > 4 || s.bytes().any(|b| b > b'7') {
            return Err(bad("not an octal mode"));
        }
        return Ok(Chmod::Octal(
            u32::from_str_radix(s, 8).map_err(|_| bad("not an octal mode"))?,
        ));
    }
    let mut clauses = Vec::new();
    for clause in s.split(',') {
        let mut chars = clause.chars().peekable();
        let mut who = 0u8;
        while let Some(&c) = chars.peek() {
            who |= match c {
                'u' => 1,
                'g' => 2,
                'o' => 4,
                'a' => 7,
                _ => break,
            };
            chars.next();
        }
        let mut ops = Vec::new();
        while let Some(op) = chars.next() {
            if !matches!(op, '+' | '-' | '=') {
                return Err(bad(&format!("unexpected {op:?}")));
            }
            let mut perms = String::new();
            while let Some(&c) = chars.peek() {
                if matches!(c, '+' | '-' | '=') {
                    break;
                }
                if !matches!(c, 'r' | 'w' | 'x' | 'X' | 's' | 't' | 'u' | 'g' | 'o') {
                    return Err(bad(&format!("unexpected {c:?}")));
                }
                perms.push(c);
                chars.next();
            }
            if perms.chars().any(|c| matches!(c, 'u' | 'g' | 'o')) && perms.len() != 1 {
                return Err(bad("a permission copy (u, g or o) stands alone"));
            }
            ops.push((op, perms));
        }
        if ops.is_empty() {
            return Err(bad("missing operator"));
        }
        clauses.push(ChmodClause { who, ops });
    }
    Ok(Chmod::Symbolic(clauses))
}

impl Chmod {
    /// The new permission bits (07777) of an entry with permission bits `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let mode = mode & 0o7777;
        match self {
            // A plain rwx mode keeps setuid/setgid/sticky of the source (BuildKit masks 0777).
            Chmod::Octal(v) if *v <= 0o777 => (mode & !0o777) | v,
            Chmod::Octal(v) => *v,
            Chmod::Symbolic(clauses) => {
                let mut m = mode;
                for c in clauses {
                    let who = if c.who == 0 { 7 } else { c.who };
                    let mask = (if who & 1 != 0 { 0o4700 } else { 0 })
                        | (if who & 2 != 0 { 0o2070 } else { 0 })
                        | (if who & 4 != 0 { 0o1007 } else { 0 });
                    for (op, perms) in &c.ops {
                        let mut bits = 0u32;
                        for p in perms.chars() {
                            bits |= match p {
                                'r' => 0o444,
                                'w' => 0o222,
                                'x' => 0o111,
                                'X' if is_dir || m & 0o111 != 0 => 0o111,
                                'X' => 0,
                                's' => 0o6000,
                                't' => 0o1000,
                                'u' => ((m >> 6) & 7) * 0o111,
                                'g' => ((m >> 3) & 7) * 0o111,
                                'o' => (m & 7) * 0o111,
                                _ => 0,
                            };
                        }
                        bits &= mask;
                        match op {
                            '+' => m |= bits,
                            '-' => m &= !bits,
                            _ => m = (m & !(mask & if is_dir { 0o1777 } else { 0o7777 })) | bits,
                        }
                    }
                }
                m
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// ADD of URLs and git repositories
// ---------------------------------------------------------------------------------------------

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// BuildKit's git URL forms: `git://`, `git@host:…`, `ssh://`, or http(s) ending in `.git`
/// (before an optional `#ref[:subdir]`).
fn is_git_url(s: &str) -> bool {
    if s.starts_with("git://") || s.starts_with("git@") || s.starts_with("ssh://") {
        return true;
    }
    if is_http_url(s) {
        let base = s.split('#').next().unwrap_or(s);
        let base = base.split('?').next().unwrap_or(base).trim_end_matches('/');
        return base.ends_with(".git");
    }
    false
}

/// A downloaded ADD URL, kept for the whole process (source_digest and copy_into share it).
struct Downloaded {
    url: String,
    file: tempfile::NamedTempFile,
    filename: String,
    mtime: Option<FileTime>,
    digest: String,
}

type DownloadCache = Mutex<HashMap<String, Arc<Downloaded>>>;

fn download(url: &str, checksum: Option<&str>) -> Result<Arc<Downloaded>> {
    static CACHE: OnceLock<DownloadCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().map_err(|_| anyhow!("download cache poisoned"))?;
    let d = match guard.get(url) {
        Some(d) => d.clone(),
        None => {
            let d = Arc::new(fetch(url)?);
            guard.insert(url.to_string(), d.clone());
            d
        }
    };
    drop(guard);
    crate::attest::materials::record_url(url, &d.digest);
    if let Some(c) = checksum {
        let want = Digest::parse(c).with_context(|| format!("ADD --checksum={c}: expected sha256:<64 hex digits>"))?;
        if want.as_str() != d.digest {
            bail!(
                "ADD {url}: checksum mismatch: expected {want}, downloaded content has {}",
                d.digest
            );
        }
    }
    Ok(d)
}

fn fetch(url: &str) -> Result<Downloaded> {
    let resp = ureq::get(url).call().with_context(|| format!("downloading {url}"))?;
    let mtime = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .map(|secs| FileTime::from_unix_time(secs, 0));
    let mut file = tempfile::NamedTempFile::new().context("creating a temporary file for a download")?;
    let mut reader = resp.into_body().into_reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        file.write_all(&buf[..n])
            .context("writing a download to a temporary file")?;
    }
    file.flush().context("writing a download to a temporary file")?;
    Ok(Downloaded {
        url: url.to_string(),
        file,
        filename: url_filename(url),
        mtime,
        digest: format!("sha256:{}", hex::encode(h.finalize())),
    })
}

/// BuildKit's name for a downloaded file: the URL path's last element, else `__unnamed__`.
fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let base = path.rsplit('/').next().unwrap_or("");
    let decoded = percent_decode(base);
    if decoded.is_empty() || decoded == "." || decoded == ".." {
        "__unnamed__".to_string()
    } else {
        decoded
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses an RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2])? as i64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

type GitCache = Mutex<HashMap<(String, bool), Arc<tempfile::TempDir>>>;

/// Clones `spec` (`URL[#ref[:subdir]]`) once per process; returns the checkout and the subdir.
fn git_checkout(spec: &str, keep_git_dir: bool) -> Result<(Arc<tempfile::TempDir>, String)> {
    static CACHE: OnceLock<GitCache> = OnceLock::new();
    let (url, fragment) = spec.split_once('#').unwrap_or((spec, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().map_err(|_| anyhow!("git cache poisoned"))?;
    let key = (format!("{url}#{reference}"), keep_git_dir);
    if let Some(d) = guard.get(&key) {
        return Ok((d.clone(), subdir.to_string()));
    }
    match std::process::Command::new("git").arg("--version").output() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("ADD {spec}: adding a git repository needs the `git` program, which is not installed")
        }
        Err(e) => return Err(e).context("running git --version"),
        Ok(_) => {}
    }
    let dir = tempfile::Builder::new()
        .prefix("kiln-git-")
        .tempdir()
        .context("creating a directory for a git clone")?;
    let d = dir.path();
    let git = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(d)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running git {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let r = if reference.is_empty() { "HEAD" } else { reference };
    git(&["init", "-q"])?;
    git(&["remote", "add", "origin", url])?;
    if git(&["fetch", "-q", "--depth", "1", "--no-tags", "origin", r]).is_ok() {
        git(&["checkout", "-q", "FETCH_HEAD"])?;
    } else {
        git(&["fetch", "-q", "--tags", "origin"]).with_context(|| format!("ADD {spec}: fetching {url}"))?;
        git(&["checkout", "-q", r]).with_context(|| format!("ADD {spec}: no ref {r:?} in {url}"))?;
    }
    if d.join(".gitmodules").exists() {
        git(&["submodule", "update", "-q", "--init", "--recursive", "--depth", "1"])
            .with_context(|| format!("ADD {spec}: updating submodules"))?;
    }
    if let Ok(o) = std::process::Command::new("git")
        .arg("-C")
        .arg(d)
        .args(["rev-parse", "HEAD"])
        .output()
    {
        crate::attest::materials::record_git(url, reference, &String::from_utf8_lossy(&o.stdout));
    }
    if !keep_git_dir {
        fs::remove_dir_all(d.join(".git")).context("removing .git from a clone")?;
    }
    let dir = Arc::new(dir);
    guard.insert(key, dir.clone());
    Ok((dir, subdir.to_string()))
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Fx {
        ctx: tempfile::TempDir,
        root: tempfile::TempDir,
    }

    fn fx() -> Fx {
        Fx {
            ctx: tempfile::tempdir().unwrap(),
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn put(dir: &Path, rel: &str, content: &str) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
    }

    fn req(srcs: &[&str], dest: &str) -> CopyRequest {
        CopyRequest {
            srcs: srcs.iter().map(|s| s.to_string()).collect(),
            dest: dest.to_string(),
            workdir: "/".to_string(),
            ..Default::default()
        }
    }

    fn ctx_source(f: &Fx) -> CopySource<'_> {
        CopySource {
            root: f.ctx.path(),
            ignore: None,
            is_context: true,
        }
    }

    fn run(f: &Fx, r: &CopyRequest) -> Result<()> {
        copy_into(f.root.path(), &ctx_source(f), r)
    }

    fn read(f: &Fx, p: &str) -> String {
        fs::read_to_string(f.root.path().join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn lmd(f: &Fx, p: &str) -> Metadata {
        fs::symlink_metadata(f.root.path().join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn exists(f: &Fx, p: &str) -> bool {
        fs::symlink_metadata(f.root.path().join(p.trim_start_matches('/'))).is_ok()
    }

    #[test]
    fn dest_forms() {
        // (srcs, dest, workdir, expected files with content, absent paths)
        let cases: &[(&[&str], &str, &str, &[(&str, &str)], &[&str])] = &[
            (&["testfile"], "/nodir", "/", &[("/nodir", "contents0")], &[]),
            (
                &["testfile"],
                "/sample/",
                "/",
                &[("/sample/testfile", "contents0")],
                &[],
            ),
            (&["/testfile"], "/app/.", "/", &[("/app/testfile", "contents0")], &[]),
            (&["testfile"], "", "/w", &[("/w/testfile", "contents0")], &[]),
            (&["testfile"], ".", "/w", &[("/w/testfile", "contents0")], &[]),
            (&["testfile"], "rel", "/w", &[("/w/rel", "contents0")], &[]),
            (&["testfile"], "/subdir", "/subdir", &[("/subdir", "contents0")], &[]),
            (
                &["testfile", "other"],
                "/multi",
                "/",
                &[("/multi/testfile", "contents0"), ("/multi/other", "o")],
                &[],
            ),
            (&["../../testfile"], "/up", "/", &[("/up", "contents0")], &[]),
            (
                &["d"],
                "/newdir",
                "/",
                &[("/newdir/x", "x"), ("/newdir/sub/y", "y")],
                &["/newdir/d"],
            ),
            (&["d/"], "/t/", "/", &[("/t/x", "x")], &["/t/d"]),
            (
                &["."],
                "/all",
                "/",
                &[("/all/testfile", "contents0"), ("/all/d/x", "x")],
                &[],
            ),
            (&["d/sub/y"], "/deep/er/file", "/", &[("/deep/er/file", "y")], &[]),
        ];
        for (srcs, dest, wd, want, absent) in cases {
            let f = fx();
            put(f.ctx.path(), "testfile", "contents0");
            put(f.ctx.path(), "other", "o");
            put(f.ctx.path(), "d/x", "x");
            put(f.ctx.path(), "d/sub/y", "y");
            let mut r = req(srcs, dest);
            r.workdir = wd.to_string();
            run(&f, &r).unwrap_or_else(|e| panic!("{srcs:?} -> {dest}: {e:#}"));
            for (p, c) in *want {
                assert_eq!(&read(&f, p), c, "{srcs:?} -> {dest:?}: {p}");
            }
            for p in *absent {
                assert!(!exists(&f, p), "{srcs:?} -> {dest}: {p} should not exist");
            }
        }
    }

    #[test]
    fn file_into_existing_dir_and_created_dir_modes() {
        let f = fx();
        put(f.ctx.path(), "test_dir/test_file", "test1");
        fs::set_permissions(f.ctx.path().join("test_dir"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::create_dir(f.root.path().join("exists")).unwrap();
        put(f.root.path(), "exists/exists_file", "e");
        if is_root() {
            std::os::unix::fs::chown(f.root.path().join("exists"), Some(1001), Some(1001)).unwrap();
        }
        run(&f, &req(&["test_dir/"], "/exists/")).unwrap();
        run(&f, &req(&["test_dir"], "/test_dir")).unwrap();
        assert_eq!(read(&f, "/exists/test_file"), "test1");
        assert_eq!(read(&f, "/exists/exists_file"), "e");
        // The top-level destination dir is created 0755 (not the source dir's 0555).
        assert_eq!(lmd(&f, "/test_dir").mode() & 0o7777, 0o755);
        if is_root() {
            assert_eq!(lmd(&f, "/exists").uid(), 1001, "existing dest dir keeps its owner");
            assert_eq!(lmd(&f, "/test_dir/test_file").uid(), 0);
        }
    }

    #[test]
    fn subdirs_take_source_metadata_even_when_existing() {
        let f = fx();
        put(f.ctx.path(), "data/usr/test_file", "test1");
        fs::set_permissions(f.ctx.path().join("data/usr"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(f.root.path().join("usr")).unwrap();
        fs::set_permissions(f.root.path().join("usr"), fs::Permissions::from_mode(0o755)).unwrap();
        let mut r = req(&["./data/"], "/");
        r.is_add = true;
        run(&f, &r).unwrap();
        assert_eq!(lmd(&f, "/usr").mode() & 0o7777, 0o700);
        assert_eq!(read(&f, "/usr/test_file"), "test1");
    }

    #[test]
    fn modes_times_special_files_preserved() {
        let f = fx();
        let c = f.ctx.path();
        for (name, mode) in [("private", 0o600), ("exec", 0o755), ("plain", 0o644), ("suid", 0o4755)] {
            put(c, name, name);
            fs::set_permissions(c.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        filetime::set_file_mtime(c.join("plain"), FileTime::from_unix_time(1_000_000, 0)).unwrap();
        fs::create_dir(c.join("dir")).unwrap();
        filetime::set_file_mtime(c.join("dir"), FileTime::from_unix_time(2_000_000, 0)).unwrap();
        nix::unistd::mkfifo(&c.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
        symlink("plain", c.join("link")).unwrap();
        symlink("/nowhere/abs", c.join("dangling")).unwrap();
        fs::hard_link(c.join("plain"), c.join("hard")).unwrap();
        fs::hard_link(c.join("plain"), c.join("dir/hard2")).unwrap();
        filetime::set_file_mtime(c.join("dir"), FileTime::from_unix_time(2_000_000, 0)).unwrap();
        run(&f, &req(&["."], "/out/")).unwrap();
        for (name, mode) in [("private", 0o600), ("exec", 0o755), ("plain", 0o644), ("suid", 0o4755)] {
            assert_eq!(lmd(&f, &format!("/out/{name}")).mode() & 0o7777, mode, "{name}");
        }
        assert_eq!(lmd(&f, "/out/plain").mtime(), 1_000_000);
        assert_eq!(
            lmd(&f, "/out/dir").mtime(),
            2_000_000,
            "dir mtime set after its children"
        );
        assert!(lmd(&f, "/out/fifo").file_type().is_fifo());
        assert_eq!(lmd(&f, "/out/fifo").mode() & 0o777, 0o640);
        assert_eq!(
            fs::read_link(f.root.path().join("out/link")).unwrap(),
            Path::new("plain")
        );
        assert_eq!(
            fs::read_link(f.root.path().join("out/dangling")).unwrap(),
            Path::new("/nowhere/abs")
        );
        let ino = lmd(&f, "/out/plain").ino();
        assert_eq!(lmd(&f, "/out/hard").ino(), ino);
        assert_eq!(lmd(&f, "/out/dir/hard2").ino(), ino);
    }

    #[test]
    fn hardlinks_across_two_copies() {
        // copy-hardlinks-preserved: COPY . . twice keeps the link structure.
        let f = fx();
        put(f.ctx.path(), "subdir/test1.txt", "test1\n");
        fs::hard_link(
            f.ctx.path().join("subdir/test1.txt"),
            f.ctx.path().join("subdir/test2.txt"),
        )
        .unwrap();
        fs::hard_link(f.ctx.path().join("subdir/test2.txt"), f.ctx.path().join("test3.txt")).unwrap();
        run(&f, &req(&["."], ".")).unwrap();
        run(&f, &req(&["."], ".")).unwrap();
        let ino = lmd(&f, "/subdir/test1.txt").ino();
        assert_eq!(lmd(&f, "/subdir/test2.txt").ino(), ino);
        assert_eq!(lmd(&f, "/test3.txt").ino(), ino);
        assert_eq!(read(&f, "/test3.txt"), "test1\n");
    }

    #[test]
    fn wildcards() {
        let names = [
            "index.js",
            "index.ts",
            "index.css",
            "arr[0].txt",
            "*.txt",
            "a.md",
            "foo",
            "dir1/x.go",
            "dir2/y.go",
        ];
        // (pattern(s), dest, expect present under dest, expect absent)
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&["index.?s"], &["index.js", "index.ts"], &["index.css"]),
            (&["arr[[]0].txt"], &["arr[0].txt"], &["*.txt"]),
            (&["*.txt"], &["*.txt", "arr[0].txt"], &["a.md"]),
            (&["[*].txt"], &["*.txt"], &["arr[0].txt"]),
            (&["foo", "nomatch*"], &["foo"], &["a.md"]),
            (&["*foo", "*.md"], &["foo", "a.md"], &[]),
            (&["dir*/*.go"], &["x.go", "y.go"], &["dir1"]),
            (&["dir[12]"], &["x.go", "y.go"], &[]),
            (&["index.[^c]s"], &["index.js", "index.ts"], &["index.css"]),
        ];
        for (pats, present, absent) in cases {
            let f = fx();
            for n in names {
                put(f.ctx.path(), n, n);
            }
            run(&f, &req(pats, "/dest/")).unwrap_or_else(|e| panic!("{pats:?}: {e:#}"));
            for p in *present {
                assert!(exists(&f, &format!("/dest/{p}")), "{pats:?}: /dest/{p} missing");
            }
            for p in *absent {
                assert!(
                    !exists(&f, &format!("/dest/{p}")),
                    "{pats:?}: /dest/{p} should be absent"
                );
            }
        }
    }

    #[test]
    fn missing_sources_fail() {
        let f = fx();
        put(f.ctx.path(), "bar", "b");
        let e = run(&f, &req(&["foo"], "/usr/local/bar")).unwrap_err();
        assert!(format!("{e:#}").contains("\"/foo\": not found"), "{e:#}");
        let e = run(&f, &req(&["*foo"], "/testdir")).unwrap_err();
        assert!(format!("{e:#}").contains("no source files were specified"), "{e:#}");
        assert!(run(&f, &req(&["bar", "nomatch*"], "/")).is_ok());
        let e = run(&f, &req(&["[bad"], "/")).unwrap_err();
        assert!(format!("{e:#}").contains("pattern"), "{e:#}");
    }

    #[test]
    fn symlinked_sources_are_followed_at_top_level() {
        // copy-symlink-to-dir-and-basename, stage-copy-from-symlinks
        let f = fx();
        put(f.ctx.path(), "foo/abc", "bar");
        put(f.ctx.path(), "foo/def", "baz");
        put(f.ctx.path(), "file", "filecontent");
        symlink("foo", f.ctx.path().join("dlink")).unwrap();
        symlink("file", f.ctx.path().join("flink")).unwrap();
        symlink("/foo/../../../file", f.ctx.path().join("escaping")).unwrap();
        run(&f, &req(&["dlink"], "/")).unwrap();
        run(&f, &req(&["flink"], "/")).unwrap();
        run(&f, &req(&["flink"], "target")).unwrap();
        run(&f, &req(&["escaping"], "/esc")).unwrap();
        assert_eq!(read(&f, "/abc"), "bar");
        assert_eq!(read(&f, "/def"), "baz");
        assert!(!exists(&f, "/dlink"));
        assert!(lmd(&f, "/flink").is_file());
        assert_eq!(read(&f, "/flink"), "filecontent");
        assert_eq!(read(&f, "/target"), "filecontent");
        assert_eq!(
            read(&f, "/esc"),
            "filecontent",
            "an escaping link resolves inside the root"
        );
    }

    #[test]
    fn destination_through_symlinks() {
        let f = fx();
        put(f.ctx.path(), "foo", "hello");
        put(f.ctx.path(), "conf", "conf-data");
        put(f.ctx.path(), "file", "data\n");
        let r = f.root.path();
        fs::create_dir(r.join("foo")).unwrap();
        symlink("/foo", r.join("bar")).unwrap();
        fs::create_dir_all(r.join("usr/local/hbase")).unwrap();
        fs::create_dir(r.join("etc")).unwrap();
        symlink("/usr/local/hbase", r.join("etc/hbase")).unwrap();
        symlink("/symlink", r.join("src")).unwrap(); // dangling
        run(&f, &req(&["foo"], "/bar/")).unwrap();
        run(&f, &req(&["conf"], "/etc/hbase")).unwrap();
        run(&f, &req(&["file"], "/src/")).unwrap();
        assert_eq!(read(&f, "/foo/foo"), "hello");
        assert!(lmd(&f, "/bar").file_type().is_symlink());
        assert_eq!(read(&f, "/usr/local/hbase/conf"), "conf-data");
        assert!(lmd(&f, "/etc/hbase").file_type().is_symlink());
        assert!(lmd(&f, "/src").file_type().is_symlink());
        assert_eq!(read(&f, "/symlink/file"), "data\n");
    }

    #[test]
    fn never_writes_outside_the_root() {
        let f = fx();
        let outside = tempfile::tempdir().unwrap();
        put(f.ctx.path(), "x/pwned", "p");
        put(f.ctx.path(), "y", "p");
        let r = f.root.path();
        // A relative link climbing out, an absolute link to the host path.
        let up = format!("{}{}", "../".repeat(20), outside.path().display());
        symlink(&up, r.join("x")).unwrap();
        symlink(outside.path(), r.join("abs")).unwrap();
        fs::create_dir_all(r.join(outside.path().strip_prefix("/").unwrap())).unwrap();
        run(&f, &req(&["x"], "/x")).unwrap();
        run(&f, &req(&["."], "/")).unwrap();
        run(&f, &req(&["y"], "/abs/")).unwrap();
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written to the host dir"
        );
        assert!(r.join(outside.path().strip_prefix("/").unwrap()).join("pwned").exists());
        assert!(r.join(outside.path().strip_prefix("/").unwrap()).join("y").exists());
    }

    #[test]
    fn links_in_the_source_and_the_destination_never_reach_the_host() {
        // A relative link that climbs out of both roots lands on different host files from the
        // source and from the copy: nothing may be read from the first or written to the second.
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let dst = t.path().join("dst/deep/root");
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::create_dir_all(&dst).unwrap();
        let host_a = t.path().join("A");
        let host_b = t.path().join("dst/deep/A");
        fs::write(&host_a, "host secret").unwrap();
        fs::write(&host_b, "host file").unwrap();
        let can_xattr = xattr::set(&host_a, "user.leak", b"1").is_ok();
        symlink("../A", src.join("link")).unwrap();
        symlink(&host_a, src.join("dir/abs")).unwrap();
        symlink(&host_a, src.join("top")).unwrap();
        // In the destination: a magic link and a host path as destinations.
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        symlink(format!("/proc/self/root{}", outside.display()), dst.join("app")).unwrap();
        symlink(&outside, dst.join("abs")).unwrap();
        let source = CopySource {
            root: &src,
            ignore: None,
            is_context: false,
        };
        copy_into(&dst, &source, &req(&["/"], "/")).unwrap();
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("../A"));
        assert_eq!(fs::read_link(dst.join("dir/abs")).unwrap(), host_a);
        if can_xattr {
            assert!(
                xattr::get(&host_b, "user.leak").unwrap().is_none(),
                "host xattr copied onto a host file"
            );
        }
        assert_eq!(fs::read_to_string(&host_b).unwrap(), "host file");
        // A symlink named as the source is followed inside the source root: not found there.
        let e = format!(
            "{:#}",
            copy_into(&dst, &source, &req(&["/top"], "/top-copy")).unwrap_err()
        );
        assert!(e.contains("not found"), "{e}");
        // Destinations through a magic link or a host path stay in the rootfs.
        fs::write(src.join("f"), "data").unwrap();
        for d in ["/app/f", "/app/", "/abs/f"] {
            let _ = copy_into(&dst, &source, &req(&["/f"], d));
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
        let inside = dst.join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read_to_string(inside.join("f")).unwrap(), "data");
    }

    #[test]
    fn a_source_dir_swapped_for_a_symlink_is_not_followed_to_the_host() {
        // Entries are walked first and copied after: a directory replaced in between by a link
        // to a host directory must not bring that directory's files.
        let f = fx();
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("a"), "host secret").unwrap();
        put(f.ctx.path(), "d/sub/a", "a");
        let root = Arc::new(Root::open(f.ctx.path()).unwrap());
        let filter = Filter {
            ignore: None,
            exclude: None,
        };
        let mut entries = Vec::new();
        walk(&root, Path::new("d"), &filter, Path::new(""), "", &mut entries).unwrap();
        fs::rename(f.ctx.path().join("d/sub"), f.ctx.path().join("moved")).unwrap();
        symlink(host.path(), f.ctx.path().join("d/sub")).unwrap();
        let mut cx = Copier {
            root: Root::open(f.root.path()).unwrap(),
            chown: None,
            chmod: None,
            links: HashMap::new(),
            dir_fixups: Vec::new(),
        };
        let e = cx.copy_tree(&root, Path::new(""), &entries, false).unwrap_err();
        assert!(format!("{e:#}").contains("d/sub/a"), "{e:#}");
        assert!(
            fs::read_to_string(f.root.path().join("sub/a"))
                .unwrap_or_default()
                .is_empty()
        );
    }

    fn passwd_root(f: &Fx) {
        put(
            f.root.path(),
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\nuser:x:1000:1000::/home/user:/bin/sh\ndev:x:1001:1001::/:/bin/sh\n",
        );
        put(
            f.root.path(),
            "etc/group",
            "root:x:0:\ndaemon:x:1:\nuser:x:1000:\ndev:x:1001:\nnobody:x:65534:\n",
        );
    }

    #[test]
    fn chown_names_ids_and_created_dirs() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let f = fx();
        passwd_root(&f);
        put(f.ctx.path(), "f", "1");
        put(f.ctx.path(), "foo", "x");
        put(f.ctx.path(), "bar/sub", "");
        put(f.ctx.path(), "context/qux/quxfile", "q");
        let cases: &[(&[&str], &str, &str, &[(&str, u32, u32)])] = &[
            (
                &["."],
                "/dest",
                "user:user",
                &[("/dest", 1000, 1000), ("/dest/f", 1000, 1000)],
            ),
            (&["foo"], "/", "daemon", &[("/foo", 1, 1)]),
            (
                &["bar"],
                "/baz",
                "1000:nobody",
                &[("/baz", 1000, 65534), ("/baz/sub", 1000, 65534)],
            ),
            (&["foo"], "/n", "42", &[("/n", 42, 42)]),
            (
                &["context/qux"],
                "/path/to/qux",
                "dev:dev",
                &[
                    ("/path", 1001, 1001),
                    ("/path/to", 1001, 1001),
                    ("/path/to/qux/quxfile", 1001, 1001),
                ],
            ),
        ];
        for (srcs, dest, spec, want) in cases {
            let mut r = req(srcs, dest);
            r.chown = Some(spec.to_string());
            run(&f, &r).unwrap_or_else(|e| panic!("{spec}: {e:#}"));
            for (p, u, g) in *want {
                let m = lmd(&f, p);
                assert_eq!((m.uid(), m.gid()), (*u, *g), "--chown={spec}: {p}");
            }
        }
        // Without --chown: context files 0:0, created dirs 0:0.
        run(&f, &req(&["foo"], "/plain/dir/")).unwrap();
        assert_eq!(lmd(&f, "/plain/dir/foo").uid(), 0);
        let mut bad = req(&["foo"], "/");
        bad.chown = Some("ghost".into());
        assert!(format!("{:#}", run(&f, &bad).unwrap_err()).contains("ghost"));
    }

    #[test]
    fn from_stage_keeps_ownership() {
        if !is_root() {
            return;
        }
        let f = fx();
        let stage = tempfile::tempdir().unwrap();
        put(stage.path(), "app/bin", "b");
        std::os::unix::fs::chown(stage.path().join("app/bin"), Some(7), Some(8)).unwrap();
        std::os::unix::fs::chown(stage.path().join("app"), Some(5), Some(6)).unwrap();
        let src = CopySource {
            root: stage.path(),
            ignore: None,
            is_context: false,
        };
        copy_into(f.root.path(), &src, &req(&["/"], "/copy/")).unwrap();
        assert_eq!((lmd(&f, "/copy/app/bin").uid(), lmd(&f, "/copy/app/bin").gid()), (7, 8));
        assert_eq!((lmd(&f, "/copy/app").uid(), lmd(&f, "/copy/app").gid()), (5, 6));
        let d1 = source_digest(&src, &req(&["/app"], "/x")).unwrap();
        std::os::unix::fs::chown(stage.path().join("app/bin"), Some(9), Some(8)).unwrap();
        assert_ne!(
            d1,
            source_digest(&src, &req(&["/app"], "/x")).unwrap(),
            "owner is part of a stage digest"
        );
    }

    #[test]
    fn chmod_parse_and_apply() {
        let cases: &[(&str, u32, bool, u32)] = &[
            ("755", 0o644, false, 0o755),
            ("0640", 0o777, false, 0o640),
            ("755", 0o4700, false, 0o4755),
            ("4755", 0o644, false, 0o4755),
            ("u+x", 0o644, false, 0o744),
            ("g-w,o-r", 0o666, false, 0o642),
            ("a=rX", 0o750, true, 0o555),
            ("a=rX", 0o640, false, 0o444),
            ("a=rX", 0o740, false, 0o555),
            ("+x", 0o600, false, 0o711),
            ("go=u", 0o700, false, 0o777),
            ("u=rw,go=r", 0o777, false, 0o644),
            ("u+s", 0o755, false, 0o4755),
            ("o+t", 0o777, true, 0o1777),
        ];
        for (spec, from, dir, want) in cases {
            let c = parse_chmod(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(c.apply(*from, *dir), *want, "--chmod={spec} on {from:o}");
        }
        for bad in ["64a", "", "8", "12345", "u+q", "z+x", "u", "u+ug"] {
            let e = parse_chmod(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn chmod_applies_to_files_and_dirs() {
        let f = fx();
        put(f.ctx.path(), "d/f", "x");
        put(f.ctx.path(), "d/sub/g", "y");
        let mut r = req(&["d"], "/out");
        r.chmod = Some("750".into());
        run(&f, &r).unwrap();
        assert_eq!(lmd(&f, "/out/f").mode() & 0o7777, 0o750);
        assert_eq!(lmd(&f, "/out/sub").mode() & 0o7777, 0o750);
        let mut r = req(&["d/f"], "/sym");
        r.chmod = Some("a=rX,u+w".into());
        run(&f, &r).unwrap();
        assert_eq!(lmd(&f, "/sym").mode() & 0o7777, 0o644);
        let mut r = req(&["d/f"], "/x");
        r.chmod = Some("64a".into());
        assert!(format!("{:#}", run(&f, &r).unwrap_err()).contains("64a"));
    }

    #[test]
    fn exclude_patterns() {
        let f = fx();
        for n in [
            "home.txt",
            "homedir/a.txt",
            "homedir/b.md",
            "homedir/sub/c.txt",
            "other.txt",
            "d/keep.md",
            "d/x.txt",
        ] {
            put(f.ctx.path(), n, n);
        }
        let mut r = req(&["hom*"], "/mydir/");
        r.exclude = vec!["*.txt".into()];
        run(&f, &r).unwrap();
        assert!(!exists(&f, "/mydir/home.txt"));
        assert!(exists(&f, "/mydir/b.md"));
        assert!(!exists(&f, "/mydir/a.txt"), "patterns are relative to the matched dir");
        assert!(exists(&f, "/mydir/sub/c.txt"), "*.txt does not reach into sub dirs");
        let mut r = req(&["d"], "/d2");
        r.exclude = vec!["**/*.txt".into()];
        run(&f, &r).unwrap();
        assert!(exists(&f, "/d2/keep.md"));
        assert!(!exists(&f, "/d2/x.txt"));
        let mut r = req(&["."], "/all");
        r.exclude = vec!["homedir".into(), "!homedir/b.md".into()];
        run(&f, &r).unwrap();
        assert!(exists(&f, "/all/homedir/b.md"));
        assert!(!exists(&f, "/all/homedir/a.txt"));
        assert!(!exists(&f, "/all/homedir/sub"));
        assert!(exists(&f, "/all/other.txt"));
    }

    #[test]
    fn parents_flag() {
        let f = fx();
        put(f.ctx.path(), "x/a.txt", "a");
        put(f.ctx.path(), "y/b/c.txt", "c");
        put(f.ctx.path(), "p/q/r.txt", "r");
        let mut r = req(&["./x/a.txt", "y/b", "p/./q/r.txt"], "/dest/");
        r.parents = true;
        run(&f, &r).unwrap();
        assert_eq!(read(&f, "/dest/x/a.txt"), "a");
        assert_eq!(read(&f, "/dest/y/b/c.txt"), "c");
        assert_eq!(read(&f, "/dest/q/r.txt"), "r");
        let mut r = req(&["*/a.txt"], "/w/");
        r.parents = true;
        run(&f, &r).unwrap();
        assert_eq!(read(&f, "/w/x/a.txt"), "a");
    }

    fn ignore_in(ctx: &Path, text: &str) -> IgnoreMatcher {
        fs::write(ctx.join(".dockerignore"), text).unwrap();
        IgnoreMatcher::load(ctx, &ctx.join("Dockerfile")).unwrap()
    }

    #[test]
    fn dockerignore_hides_files() {
        let f = fx();
        for n in ["foo", "bar", "dir/e", "dir/foo1", "dir/keep/k", "src/x.go"] {
            put(f.ctx.path(), n, n);
        }
        let ig = ignore_in(f.ctx.path(), "bar\ndir\n!dir/e\n");
        let src = CopySource {
            root: f.ctx.path(),
            ignore: Some(&ig),
            is_context: true,
        };
        copy_into(f.root.path(), &src, &req(&["."], "/all/")).unwrap();
        assert!(exists(&f, "/all/foo"));
        assert!(!exists(&f, "/all/bar"));
        assert!(exists(&f, "/all/dir/e"), "re-included below an ignored dir");
        assert!(!exists(&f, "/all/dir/foo1"));
        assert!(!exists(&f, "/all/dir/keep"));
        let e = copy_into(f.root.path(), &src, &req(&["bar"], "/x")).unwrap_err();
        assert!(format!("{e:#}").contains("not found"), "{e:#}");
        assert!(copy_into(f.root.path(), &src, &req(&["dir/foo1"], "/x")).is_err());
        copy_into(f.root.path(), &src, &req(&["dir"], "/d/")).unwrap();
        assert!(exists(&f, "/d/e"));
        assert!(!exists(&f, "/d/foo1"));
        copy_into(f.root.path(), &src, &req(&["ba*", "fo*"], "/w/")).unwrap();
        assert!(!exists(&f, "/w/bar"));
        assert!(exists(&f, "/w/foo"));
        // The digest sees what the copy sees.
        let d1 = source_digest(&src, &req(&["."], "/")).unwrap();
        fs::write(f.ctx.path().join("bar"), "changed").unwrap();
        assert_eq!(
            d1,
            source_digest(&src, &req(&["."], "/")).unwrap(),
            "ignored files do not change the digest"
        );
    }

    #[test]
    fn digest_properties() {
        let a = fx();
        let b = fx();
        for f in [&a, &b] {
            put(f.ctx.path(), "app.py", "print(1)");
            put(f.ctx.path(), "lib/m.py", "x = 1");
            symlink("m.py", f.ctx.path().join("lib/l")).unwrap();
        }
        let r = req(&["."], "/app");
        let da = source_digest(&ctx_source(&a), &r).unwrap();
        assert_eq!(
            da,
            source_digest(&ctx_source(&b), &r).unwrap(),
            "context location does not matter"
        );
        filetime::set_file_mtime(a.ctx.path().join("app.py"), FileTime::from_unix_time(12345, 0)).unwrap();
        assert_eq!(da, source_digest(&ctx_source(&a), &r).unwrap(), "mtimes do not matter");
        fs::set_permissions(a.ctx.path().join("app.py"), fs::Permissions::from_mode(0o755)).unwrap();
        let dm = source_digest(&ctx_source(&a), &r).unwrap();
        assert_ne!(da, dm, "mode matters");
        fs::write(a.ctx.path().join("lib/m.py"), "x = 2").unwrap();
        let dc = source_digest(&ctx_source(&a), &r).unwrap();
        assert_ne!(dm, dc, "content matters");
        fs::remove_file(a.ctx.path().join("lib/l")).unwrap();
        symlink("other", a.ctx.path().join("lib/l")).unwrap();
        let dl = source_digest(&ctx_source(&a), &r).unwrap();
        assert_ne!(dc, dl, "symlink targets matter");
        assert_ne!(
            dl,
            source_digest(&ctx_source(&a), &req(&["."], "/other")).unwrap(),
            "dest matters"
        );
        let mut rc = r.clone();
        rc.chown = Some("1:1".into());
        assert_ne!(dl, source_digest(&ctx_source(&a), &rc).unwrap(), "flags matter");
        assert!(source_digest(&ctx_source(&a), &req(&["nope"], "/")).is_err());
        let mut bad = r.clone();
        bad.chmod = Some("64a".into());
        assert!(source_digest(&ctx_source(&a), &bad).is_err());
    }

    fn tar_bytes(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, content) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_uid(1234);
            h.set_gid(1234);
            h.set_cksum();
            b.append_data(&mut h, name, content.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn add_extracts_archives_copy_does_not() {
        let f = fx();
        let t = tar_bytes(&[("test/foo", "Hi"), ("foo", "content0")]);
        fs::write(f.ctx.path().join("t.tar"), &t).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&t).unwrap();
        fs::write(f.ctx.path().join("t.tar.gz"), gz.finish().unwrap()).unwrap();
        fs::write(f.ctx.path().join("not-a.tar"), "just text").unwrap();
        let add = |srcs: &[&str], dest: &str| {
            let mut r = req(srcs, dest);
            r.is_add = true;
            r
        };
        run(&f, &add(&["t.tar"], "/")).unwrap();
        assert_eq!(read(&f, "/test/foo"), "Hi");
        run(&f, &add(&["t.tar"], "/test.tar")).unwrap();
        assert_eq!(read(&f, "/test.tar/test/foo"), "Hi");
        run(&f, &add(&["t.tar.gz"], "/gz/")).unwrap();
        assert_eq!(read(&f, "/gz/foo"), "content0");
        run(&f, &add(&["*.tar"], "/wild")).unwrap();
        assert_eq!(read(&f, "/wild/foo"), "content0");
        run(&f, &req(&["t.tar.gz"], "/copied/")).unwrap();
        assert!(lmd(&f, "/copied/t.tar.gz").is_file());
        assert!(!exists(&f, "/copied/foo"));
        // Every compression, detected by content whatever the name.
        let zst = zstd::encode_all(&t[..], 3).unwrap();
        fs::write(f.ctx.path().join("z.bin"), zst).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&t).unwrap();
        fs::write(f.ctx.path().join("b.tbz"), bz.finish().unwrap()).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &t[..], &mut xz).unwrap();
        fs::write(f.ctx.path().join("x.txz"), xz).unwrap();
        for (name, dir) in [("z.bin", "/zst"), ("b.tbz", "/bz2"), ("x.txz", "/xz")] {
            run(&f, &add(&[name], dir)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(read(&f, &format!("{dir}/test/foo")), "Hi", "{name}");
        }
        // A truncated archive fails the build (error-broken-tar).
        fs::write(f.ctx.path().join("broken.tar"), &t[..t.len() - 1]).unwrap();
        assert!(run(&f, &add(&["broken.tar"], "/")).is_err(), "truncated tar must fail");
        let mut short = t.clone();
        short.truncate(1536);
        fs::write(f.ctx.path().join("short.tar"), &short).unwrap();
        assert!(
            run(&f, &add(&["short.tar"], "/")).is_err(),
            "tar cut inside a file must fail"
        );
        run(&f, &add(&["not-a.tar"], "/plain")).unwrap();
        assert_eq!(read(&f, "/plain"), "just text");
        if is_root() {
            let mut r = add(&["t.tar"], "/out/");
            r.chown = Some("100:200".into());
            run(&f, &r).unwrap();
            for p in ["/out", "/out/foo", "/out/test/foo"] {
                assert_eq!((lmd(&f, p).uid(), lmd(&f, p).gid()), (100, 200), "{p}");
            }
        }
    }

    #[test]
    fn heredoc_sources() {
        let f = fx();
        let mut r = req(&["<<EOF"], "/etc/motd");
        r.heredocs = vec![("EOF".into(), "hello\n".into())];
        run(&f, &r).unwrap();
        assert_eq!(read(&f, "/etc/motd"), "hello\n");
        assert_eq!(lmd(&f, "/etc/motd").mode() & 0o7777, 0o644);
        let mut r = req(&["<<robots.txt", "<<-two"], "/html/");
        r.heredocs = vec![("robots.txt".into(), "r".into()), ("two".into(), "2".into())];
        r.chmod = Some("600".into());
        run(&f, &r).unwrap();
        assert_eq!(read(&f, "/html/robots.txt"), "r");
        assert_eq!(read(&f, "/html/two"), "2");
        assert_eq!(lmd(&f, "/html/two").mode() & 0o7777, 0o600);
        let d = source_digest(&ctx_source(&f), &r).unwrap();
        r.heredocs[1].1 = "3".into();
        assert_ne!(d, source_digest(&ctx_source(&f), &r).unwrap());
    }

    /// A one-shot HTTP server on loopback answering every request with `body`.
    fn serve(body: &'static [u8]) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body);
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn add_url_downloads() {
        let f = fx();
        let base = serve(b"remote content");
        let mut r = req(&[&format!("{base}/files/data.bin?x=1")], "/dl/");
        r.is_add = true;
        run(&f, &r).unwrap();
        assert_eq!(read(&f, "/dl/data.bin"), "remote content");
        assert_eq!(lmd(&f, "/dl/data.bin").mode() & 0o7777, 0o600);
        assert_eq!(lmd(&f, "/dl/data.bin").mtime(), 784111777);
        let good = format!("sha256:{}", hex::encode(Sha256::digest(b"remote content")));
        let mut r = req(&[&format!("{base}/other")], "/named");
        r.is_add = true;
        r.checksum = Some(good);
        run(&f, &r).unwrap();
        assert_eq!(read(&f, "/named"), "remote content");
        r.checksum = Some(format!("sha256:{}", "0".repeat(64)));
        assert!(format!("{:#}", run(&f, &r).unwrap_err()).contains("checksum mismatch"));
        let c = req(&[&format!("{base}/x")], "/y");
        assert!(run(&f, &c).is_err(), "COPY of a URL is refused");
    }

    #[test]
    fn url_helpers() {
        assert_eq!(url_filename("https://example.com/a/b/file.tar.gz?x=1#y"), "file.tar.gz");
        assert_eq!(url_filename("https://example.com/"), "__unnamed__");
        assert_eq!(url_filename("https://example.com"), "__unnamed__");
        assert_eq!(url_filename("https://example.com/test-%C3%A4.txt"), "test-ä.txt");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse_http_date("garbage"), None);
        for (u, git) in [
            ("https://github.com/moby/buildkit.git#v0.10.1", true),
            ("https://github.com/moby/buildkit.git", true),
            ("git@github.com:moby/buildkit.git", true),
            ("git://host/repo", true),
            ("https://example.com/file.tar", false),
            ("foo.git", false),
        ] {
            assert_eq!(is_git_url(u), git, "{u}");
        }
    }

    #[test]
    fn git_checkout_ref_subdir_and_git_dir() {
        if std::process::Command::new("git").arg("--version").output().is_err() {
            eprintln!("skipping: no git");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo.git");
        fs::create_dir(&repo).unwrap();
        let git = |args: &[&str]| {
            let st = std::process::Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "init.defaultBranch=main",
                ])
                .args(args)
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        };
        git(&["init", "-q"]);
        put(&repo, "README", "v1");
        put(&repo, "sub/inner", "i1");
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "one"]);
        git(&["tag", "v1"]);
        put(&repo, "README", "v2");
        git(&["commit", "-q", "-am", "two"]);
        let url = repo.display().to_string();
        let (d, sub) = git_checkout(&format!("{url}#v1"), false).unwrap();
        assert_eq!(sub, "");
        assert_eq!(fs::read_to_string(d.path().join("README")).unwrap(), "v1");
        assert!(!d.path().join(".git").exists());
        let (d, sub) = git_checkout(&format!("{url}#main:sub"), true).unwrap();
        assert_eq!(sub, "sub");
        assert_eq!(fs::read_to_string(d.path().join("README")).unwrap(), "v2");
        assert!(d.path().join(".git").is_dir(), "--keep-git-dir");
        assert!(git_checkout(&format!("{url}#no-such-ref"), false).is_err());
    }

    #[test]
    fn unicode_and_whitespace_names() {
        let f = fx();
        for n in [
            "test-äöü.txt",
            "test-%C3%A4%C3%B6%C3%BC.txt",
            "test+aou.txt",
            "test dir/test_file6",
        ] {
            put(f.ctx.path(), n, n);
        }
        fs::create_dir(f.root.path().join("test dir")).unwrap();
        run(&f, &req(&["test-äöü.txt"], "/")).unwrap();
        run(&f, &req(&["test-%C3%A4%C3%B6%C3%BC.txt"], "/")).unwrap();
        run(&f, &req(&["test dir/test_file6"], "/test dir/test_file6")).unwrap();
        assert_eq!(read(&f, "/test-äöü.txt"), "test-äöü.txt");
        assert!(exists(&f, "/test-%C3%A4%C3%B6%C3%BC.txt"));
        assert!(lmd(&f, "/test dir/test_file6").is_file());
    }

    #[test]
    fn replacing_a_directory_with_a_file_fails() {
        let f = fx();
        put(f.ctx.path(), "src/x", "file");
        fs::create_dir_all(f.root.path().join("dst/x")).unwrap();
        put(f.root.path(), "dst/x/inner", "i");
        assert!(run(&f, &req(&["src"], "/dst")).is_err());
        put(f.root.path(), "file", "f");
        assert!(run(&f, &req(&["src"], "/file")).is_err(), "dir contents into a file");
    }
}
