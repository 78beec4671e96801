//! Source resolution: heredocs, URLs and git sources (through [`super::remote`]), local paths
//! and wildcards (Go `filepath.Match` per component), symlinks followed inside the source root,
//! directories walked with `.dockerignore` and `--exclude` applied.

use super::remote::{Downloaded, download, git_checkout, is_git_url, is_http_url};
use super::{CopyRequest, CopySource, clean_components};
use crate::dockerfile::ignore::{IgnoreMatcher, go_match};
use crate::fsutil::{Follow, Root};
use anyhow::{Context, Result, bail};
use std::fs::{File, Metadata};
use std::io::{self};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

pub(super) struct Entry {
    /// Path relative to the copied directory.
    pub(super) rel: PathBuf,
    /// Path inside the source root (symlink-free when walked).
    pub(super) inside: PathBuf,
    pub(super) md: Metadata,
}

#[allow(clippy::large_enum_variant)]
pub(super) enum Kind {
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

pub(super) struct Item {
    pub(super) kind: Kind,
    /// The name a file gets inside a destination directory.
    pub(super) name: String,
    /// `--parents`: the source's path (after the `/./` pivot) kept under the destination,
    /// with the source directory (inside the source root) of each component.
    pub(super) parents_rel: Option<Vec<(String, PathBuf)>>,
    /// `_git` clones keep a handle on their checkout.
    pub(super) _keep: Option<Arc<tempfile::TempDir>>,
}

/// Path filters of one walk: .dockerignore (relative to the source root) and --exclude
/// (relative to the copied source).
pub(super) struct Filter<'a> {
    pub(super) ignore: Option<&'a IgnoreMatcher>,
    pub(super) exclude: Option<&'a IgnoreMatcher>,
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

pub(super) fn join_rel(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// A path inside a root as the ignore matcher sees it (relative, `/`-separated).
pub(super) fn rel_str(inside: &Path) -> String {
    inside.to_string_lossy().into_owned()
}

pub(super) fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Where `path` resolves inside `root` (symlinks followed inside it); `None` when it does not
/// exist.
pub(super) fn canon(root: &Root, path: &str) -> Result<Option<PathBuf>> {
    match root.canonical(path, Follow::All) {
        Ok(p) => Ok(Some(p)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("resolving {}", root.show(path))),
    }
}

/// Opens the source file `inside` (a regular file, as `md` says) for reading; the file opened
/// must be the one that was walked.
pub(super) fn open_source(root: &Root, inside: &Path, md: &Metadata) -> Result<File> {
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
pub(super) fn resolve_items(src: &CopySource, req: &CopyRequest) -> Result<Vec<Item>> {
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
            items.push(git_item(s, req, exclude.as_ref())?);
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
    // A wildcard that matches nothing copies nothing and succeeds: BuildKit sets
    // AllowEmptyWildcard for COPY and ADD (dockerfile2llb/convert_copy.go), and creates no
    // destination then. (A plain path that is missing already failed in resolve_local.)
    Ok(items)
}

/// ADD of a git repository: its checkout (or the named subdirectory), walked.
fn git_item(s: &str, req: &CopyRequest, exclude: Option<&IgnoreMatcher>) -> Result<Item> {
    let (dir, sub) = git_checkout(s, req.keep_git_dir)?;
    let groot = Arc::new(Root::open(dir.path()).with_context(|| format!("opening the checkout of {s}"))?);
    let missing = || format!("{s}: no directory {sub:?} in the repository");
    let inside = canon(&groot, &sub)?.with_context(missing)?;
    let md = groot.metadata(&inside, Follow::All).with_context(missing)?;
    let f = Filter { ignore: None, exclude };
    let mut entries = Vec::new();
    if md.is_dir() {
        walk(&groot, &inside, &f, Path::new(""), "", &mut entries)?;
    }
    let name = inside
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Item {
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
    })
}

pub(super) fn heredoc_for<'a>(s: &str, req: &'a CopyRequest) -> Option<&'a (String, String)> {
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
pub(super) fn resolve_local(
    root: &Arc<Root>,
    src: &CopySource,
    req: &CopyRequest,
    s: &str,
    filter: &Filter,
) -> Result<Vec<Item>> {
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
                // After a --parents pivot the rest is an include pattern (BuildKit's
                // IncludePatterns), where `**` spans any number of directories; before it
                // (and without --parents) each component is a Go filepath.Match pattern.
                let globstar_from = if req.parents && pivot > 0 {
                    pivot.saturating_sub(w)
                } else {
                    usize::MAX
                };
                match_wildcards(root, &base_in, &comps[w..], globstar_from, String::new(), &mut matches)?;
                matches.sort();
                matches.dedup();
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
pub(super) fn contains_wildcards(s: &str) -> bool {
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
pub(super) fn open_dir(root: &Root, dir: &Path) -> Result<(Root, Vec<std::ffi::OsString>)> {
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
/// From component `globstar_from` on, a `**` component matches zero or more directories
/// (patternmatcher's rule for include patterns); results may then repeat.
pub(super) fn match_wildcards(
    root: &Root,
    dir: &Path,
    pats: &[String],
    globstar_from: usize,
    prefix: String,
    out: &mut Vec<String>,
) -> Result<()> {
    let (d, names) = open_dir(root, dir)?;
    if globstar_from == 0 && pats[0] == "**" {
        if pats.len() > 1 {
            // Zero directories: the rest of the pattern right here.
            match_wildcards(root, dir, &pats[1..], 0, prefix.clone(), out)?;
        }
        for name in names {
            let rel = join_rel(&prefix, &name.to_string_lossy());
            if pats.len() == 1 {
                out.push(rel);
            } else if d.metadata(&name, Follow::Parents).is_ok_and(|m| m.is_dir()) {
                // One directory more, still under the `**`.
                match_wildcards(root, &dir.join(&name), pats, 0, rel, out)?;
            }
        }
        return Ok(());
    }
    for name in names {
        let n = name.to_string_lossy();
        if !go_match(&pats[0], &n).with_context(|| format!("invalid source pattern {:?}", pats.join("/")))? {
            continue;
        }
        let rel = join_rel(&prefix, &n);
        if pats.len() == 1 {
            out.push(rel);
        } else if d.metadata(&name, Follow::Parents).is_ok_and(|m| m.is_dir()) {
            match_wildcards(
                root,
                &dir.join(&name),
                &pats[1..],
                globstar_from.saturating_sub(1),
                rel,
                out,
            )?;
        }
    }
    Ok(())
}

/// Whether a (possibly ignored) directory has any visible descendant.
pub(super) fn dir_has_visible(root: &Root, dir: &Path, filter: &Filter) -> Result<bool> {
    let mut v = Vec::new();
    walk(root, dir, filter, Path::new(""), "", &mut v)?;
    Ok(!v.is_empty())
}

/// Walks `dir` (inside `root`; pre-order, sorted) into `out`. `ex_rel` is the exclude-relative
/// path of `dir`. Ignored/excluded directories are entered only when an exception pattern may
/// re-include something below them, and kept only when something was.
pub(super) fn walk(
    root: &Root,
    dir: &Path,
    filter: &Filter,
    rel: &Path,
    ex_rel: &str,
    out: &mut Vec<Entry>,
) -> Result<()> {
    let (d, names) = open_dir(root, dir)?;
    for name in names {
        let inside = dir.join(&name);
        let md = d
            .metadata(&name, Follow::Parents)
            .with_context(|| format!("reading {}", root.show(&inside)))?;
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
