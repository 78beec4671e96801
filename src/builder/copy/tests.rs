//! COPY/ADD tests: destinations, wildcards, metadata, ownership, links, hostile trees, the
//! cache digest, archives, heredocs, URLs and git sources.
#![allow(clippy::type_complexity)]
use super::remote::{git_checkout, is_git_url, parse_http_date, url_filename};
use super::sources::{Filter, walk};
use super::*;
use anyhow::Result;
use filetime::FileTime;
use sha2::{Digest as _, Sha256};
use std::fs::{self, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

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
    // BuildKit's AllowEmptyWildcard: nothing matched, nothing copied, no destination made.
    run(&f, &req(&["*foo"], "/testdir")).unwrap();
    assert!(!exists(&f, "/testdir"));
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
        ownership: Default::default(),
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
