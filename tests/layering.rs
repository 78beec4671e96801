//! The module layering (README, "Architecture"): a module imports only modules at its own
//! level or below, same-level modules form no cycle, and rootfs and sandbox do not import each
//! other. This test reads every `src/**.rs` and fails naming `file:line` of each reference
//! that breaks a rule.
//!
//! A reference is a path to another top-level module in code or docs: `crate::X`, an item of
//! a `use crate::{X, …}` group (over several lines too), or `super::…::X` with enough `super`s
//! to reach the crate root. Docs count: a lower module's docs do not name a higher module by
//! path either (say "the builder", not its path).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Levels, bottom (0) to top. A new top-level module must be added here (and to the README).
const LEVELS: &[(&str, u32)] = &[
    // 0: data types and filesystem primitives.
    ("digest", 0),
    ("reference", 0),
    ("image", 0),
    ("fsutil", 0),
    ("users", 0),
    ("sys", 0),
    ("events", 0),
    ("artifact", 0),
    // 1: the local content store.
    ("store", 1),
    // 2: what moves layers and images in and out of the store.
    ("layer", 2),
    ("archive", 2),
    ("registry", 2),
    // 2: SBOM, provenance and signatures of an image in the store.
    ("attest", 2),
    // 3: the step's filesystem and its isolation.
    ("rootfs", 3),
    ("sandbox", 3),
    // 4 and 5: the frontend: the parser, then the planner above it.
    ("dockerfile", 4),
    ("plan", 5),
    // 6: executes a plan.
    ("builder", 6),
    // 6: runs an image (`kiln run`) on the builder's view of image layers.
    ("runner", 6),
    // 7: the command line.
    ("cli", 7),
];

/// Same-level pairs that must not import each other in either direction.
const APART: &[(&str, &str)] = &[("rootfs", "sandbox")];

/// One reference from a file to another top-level module.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ref {
    file: String,
    line: usize,
    from: String,
    to: String,
}

/// The module path of a file under src/ (`store/gc.rs` → [store, gc]; `store/mod.rs` → [store]).
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn ident_at(s: &[u8], i: usize) -> &str {
    let mut j = i;
    while j < s.len() && is_ident(s[j]) {
        j += 1;
    }
    std::str::from_utf8(&s[i..j]).unwrap_or("")
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The first path segments of the items of a `{…}` group starting at `open` (the `{`), and
/// their byte offsets.
fn group_heads(s: &[u8], open: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut expect_head = true;
    let mut i = open;
    while i < s.len() {
        match s[i] {
            b'{' => {
                depth += 1;
                expect_head = depth == 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expect_head = true,
            b if expect_head && depth == 1 && is_ident(b) => {
                out.push((i, ident_at(s, i).to_string()));
                expect_head = false;
                i += ident_at(s, i).len();
                continue;
            }
            b if !b.is_ascii_whitespace() && depth == 1 => expect_head = false,
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every reference of `text` (the file `rel` under src/) to a top-level module in `modules`.
fn references(rel: &str, text: &str, modules: &BTreeSet<String>) -> Vec<Ref> {
    let path = module_path(rel);
    let from = path[0].clone();
    let s = text.as_bytes();
    let line_of = |off: usize| text[..off].bytes().filter(|&b| b == b'\n').count() + 1;
    let mut out = Vec::new();
    let mut push = |off: usize, to: &str| {
        if to != from && modules.contains(to) {
            out.push(Ref {
                file: format!("src/{rel}"),
                line: line_of(off),
                from: from.clone(),
                to: to.to_string(),
            });
        }
    };
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !is_ident(s[i - 1]);
        if boundary && s[i..].starts_with(b"crate::") {
            let j = skip_ws(s, i + 7);
            if j < s.len() && s[j] == b'{' {
                for (off, head) in group_heads(s, j) {
                    push(off, &head);
                }
            } else {
                push(j, ident_at(s, j));
            }
            i = j;
            continue;
        }
        if boundary && s[i..].starts_with(b"super::") {
            let mut n = 0;
            let mut j = i;
            while s[j..].starts_with(b"super::") {
                n += 1;
                j += 7;
            }
            // `super` n times from a file at depth d reaches the crate root when n >= d (an
            // inline `mod` only makes the path longer, so this may over-count, never miss).
            if n >= path.len() {
                if s.get(j) == Some(&b'{') {
                    for (off, head) in group_heads(s, j) {
                        push(off, &head);
                    }
                } else {
                    push(j, ident_at(s, j));
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// Checks references against the level table: every violation, one line each.
fn check(refs: &[Ref], levels: &[(&str, u32)], apart: &[(&str, &str)], modules: &BTreeSet<String>) -> Vec<String> {
    let level: BTreeMap<&str, u32> = levels.iter().copied().collect();
    let mut bad = Vec::new();
    for m in modules {
        if !level.contains_key(m.as_str()) {
            bad.push(format!(
                "src/{m}: module `{m}` has no level: add it to LEVELS in tests/layering.rs and to README's architecture"
            ));
        }
    }
    // Same-level edges, for the cycle check: (from, to) → first reference.
    let mut same: BTreeMap<(String, String), &Ref> = BTreeMap::new();
    for r in refs {
        let (Some(&a), Some(&b)) = (level.get(r.from.as_str()), level.get(r.to.as_str())) else {
            continue;
        };
        if b > a {
            bad.push(format!(
                "{}:{}: `{}` (level {a}) imports `{}` (level {b}), a module above it",
                r.file, r.line, r.from, r.to
            ));
        } else if apart
            .iter()
            .any(|&(x, y)| (x == r.from && y == r.to) || (y == r.from && x == r.to))
        {
            bad.push(format!(
                "{}:{}: `{}` imports `{}`: these two must not import each other",
                r.file, r.line, r.from, r.to
            ));
        } else if a == b {
            same.entry((r.from.clone(), r.to.clone())).or_insert(r);
        }
    }
    // Cycles among same-level modules: a depth-first search from each module; a cycle is
    // reported once, from its smallest module.
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in same.keys() {
        graph.entry(a.as_str()).or_default().push(b.as_str());
    }
    let mut seen_cycles = BTreeSet::new();
    for &start in graph.keys() {
        let mut stack = vec![(start, vec![start])];
        while let Some((node, path)) = stack.pop() {
            for &next in graph.get(node).map(Vec::as_slice).unwrap_or(&[]) {
                if next == start {
                    let mut key: Vec<&str> = path.clone();
                    key.sort_unstable();
                    if path.iter().all(|&p| p >= start) && seen_cycles.insert(key) {
                        let mut cyc = path.clone();
                        cyc.push(start);
                        let edges: Vec<String> = cyc
                            .windows(2)
                            .map(|w| {
                                let r = same[&(w[0].to_string(), w[1].to_string())];
                                format!("{} → {} at {}:{}", w[0], w[1], r.file, r.line)
                            })
                            .collect();
                        bad.push(format!("same-level import cycle: {}", edges.join(", ")));
                    }
                } else if !path.contains(&next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
    bad
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn src_follows_the_layering() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() && p.join("mod.rs").is_file() {
            modules.insert(name);
        } else if let Some(m) = name.strip_suffix(".rs")
            && m != "lib"
            && m != "main"
        {
            modules.insert(m.to_string());
        }
    }
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut refs = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        // The crate roots: lib.rs lists the modules, main.rs is the binary (`kiln::…`).
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        refs.extend(references(&rel, &text, &modules));
    }
    assert!(
        refs.len() > 100,
        "the scan found only {} references: is it broken?",
        refs.len()
    );
    let bad = check(&refs, LEVELS, APART, &modules);
    assert!(bad.is_empty(), "the module layering is broken:\n{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The checker itself, on made-up sources.

fn fake(files: &[(&str, &str)]) -> Vec<String> {
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| module_path(p)[0].clone()).collect();
    let refs: Vec<Ref> = files.iter().flat_map(|(p, t)| references(p, t, &modules)).collect();
    check(&refs, LEVELS, APART, &modules)
}

#[test]
fn checker_accepts_downward_imports() {
    let bad = fake(&[
        ("digest.rs", "pub struct Digest;"),
        ("store/mod.rs", "use crate::digest::Digest;\nmod gc;"),
        ("store/gc.rs", "use super::Store; // same module\n"),
        (
            "layer/mod.rs",
            "use crate::{\n    digest::Digest,\n    store::Store,\n};",
        ),
        ("archive/mod.rs", "fn f() { crate::layer::commit(); }"),
        ("builder/mod.rs", "use crate::{layer, store::{self, Store}};"),
    ]);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn checker_names_file_and_line_of_an_upward_import() {
    let bad = fake(&[
        ("store/mod.rs", "mod gc;"),
        (
            "store/gc.rs",
            "use std::fs;\n\nfn f() {\n    let e: crate::builder::cache::Entry = todo!();\n}",
        ),
        ("builder/mod.rs", ""),
    ]);
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(
        bad[0].starts_with("src/store/gc.rs:4: `store` (level 1) imports `builder` (level 6)"),
        "{}",
        bad[0]
    );
}

#[test]
fn checker_reads_use_groups_over_lines_and_super_paths() {
    let bad = fake(&[
        ("layer/mod.rs", "use crate::{\n    digest::Digest,\n    cli::Args,\n};"),
        ("layer/commit.rs", "use super::super::plan::Plan;"),
        ("layer/tar.rs", "use super::Thing; // layer's own"),
        ("cli/mod.rs", ""),
        ("plan/mod.rs", ""),
        ("digest.rs", ""),
    ]);
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(
        bad[0].starts_with("src/layer/mod.rs:3: `layer` (level 2) imports `cli`"),
        "{}",
        bad[0]
    );
    assert!(
        bad[1].starts_with("src/layer/commit.rs:1: `layer` (level 2) imports `plan`"),
        "{}",
        bad[1]
    );
    // `crate::` only as a whole word.
    assert!(fake(&[("layer/mod.rs", "let x = subcrate::cli::y;"), ("cli/mod.rs", "")]).is_empty());
}

#[test]
fn checker_finds_same_level_cycles_and_apart_pairs() {
    let bad = fake(&[
        ("layer/mod.rs", "use crate::archive::x;"),
        ("archive/mod.rs", "\nuse crate::registry::y;"),
        ("registry/mod.rs", "\n\nuse crate::layer::z;"),
    ]);
    assert_eq!(bad.len(), 1, "one cycle, reported once: {bad:#?}");
    assert!(bad[0].contains("same-level import cycle"), "{}", bad[0]);
    assert!(
        bad[0].contains("src/layer/mod.rs:1")
            && bad[0].contains("src/archive/mod.rs:2")
            && bad[0].contains("src/registry/mod.rs:3"),
        "{}",
        bad[0]
    );
    // One direction at the same level is fine...
    assert!(fake(&[("layer/mod.rs", "use crate::archive::x;"), ("archive/mod.rs", "")]).is_empty());
    // ...except for rootfs and sandbox.
    let bad = fake(&[
        ("rootfs/mod.rs", "use crate::sandbox::Syscall;"),
        ("sandbox/mod.rs", ""),
    ]);
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(
        bad[0].starts_with("src/rootfs/mod.rs:1: `rootfs` imports `sandbox`"),
        "{}",
        bad[0]
    );
}

#[test]
fn checker_wants_every_module_in_the_table() {
    let bad = fake(&[("gadget/mod.rs", ""), ("digest.rs", "")]);
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(bad[0].contains("module `gadget` has no level"), "{}", bad[0]);
}
