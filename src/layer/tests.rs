use super::*;
use crate::digest::HashingWriter;
use std::ffi::CString;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), mode, dev) },
        0,
        "mknod {}",
        p.display()
    );
}

fn set_mtime(p: &Path, t: i64) {
    let ft = filetime::FileTime::from_unix_time(t, 0);
    filetime::set_symlink_file_times(p, ft, ft).unwrap();
}

/// Writes a layer for `dir` into memory; returns (blob, diff_id).
fn layer_of(dir: &Path, exclude: &[PathBuf], opts: &LayerOptions) -> (Vec<u8>, Digest) {
    let walk = DirWalk::new(dir, exclude).unwrap();
    let (blob, diff_id, _) = compress_tar(walk, opts, Vec::new()).unwrap();
    (blob, diff_id)
}

fn tar_names(tar: &[u8]) -> Vec<(String, tar::EntryType)> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                e.header().entry_type(),
            )
        })
        .collect()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // A single-member reader: the whole stream must be one gzip member (pigz-style).
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

/// An upper dir with one of everything.
fn sample_upper(root: &Path) {
    fs::create_dir(root.join("a")).unwrap();
    fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(root.join("a/f"), b"hello world\n").unwrap();
    fs::set_permissions(root.join("a/f"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::hard_link(root.join("a/f"), root.join("a/h")).unwrap();
    fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("a/f", root.join("l")).unwrap();
    symlink("/nonexistent/abs", root.join("abs")).unwrap();
    mknod(&root.join("p"), libc::S_IFIFO | 0o644, 0);
    mknod(&root.join("gone"), libc::S_IFCHR, 0); // overlay whiteout
    set_mtime(&root.join("gone"), 1_500_000_000);
    fs::create_dir(root.join("o")).unwrap();
    xattr::set(root.join("o"), "user.overlay.opaque", b"y").unwrap();
    fs::write(root.join("o/keep"), b"k").unwrap();
    xattr::set(root.join("a/f"), "user.foo", b"bar").unwrap();
    xattr::set(root.join("a/f"), "user.overlay.origin", b"junk").unwrap();
    // > 100 and > 255 byte paths.
    let long1 = root.join("x".repeat(120));
    fs::create_dir(&long1).unwrap();
    fs::write(long1.join("y".repeat(150)), b"long").unwrap();
    symlink("z".repeat(200), long1.join("ln")).unwrap();
    fs::create_dir(root.join("mnt")).unwrap(); // a mount placeholder, excluded
    fs::write(root.join("big"), vec![7u8; 300_000]).unwrap();
    fs::write(root.join("zeros"), vec![0u8; 64 * 1024]).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(root.join("a/f"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("l"), Some(42), Some(43)).unwrap();
    }
}

#[test]
fn round_trip_upper_to_lower() {
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    fs::create_dir(&upper).unwrap();
    sample_upper(&upper);
    let opts = LayerOptions {
        compression: Compression::Gzip,
        level: None,
        timestamp: None,
        ..Default::default()
    };
    let (blob, diff_id) = layer_of(&upper, &[PathBuf::from("/mnt")], &opts);
    let tar = gunzip(&blob);
    assert_eq!(Digest::of(&tar), diff_id);
    let names = tar_names(&tar);
    let find = |n: &str| names.iter().find(|(p, _)| p == n).map(|(_, k)| *k);
    assert_eq!(find(".wh.gone"), Some(tar::EntryType::Regular));
    assert_eq!(find("gone"), None);
    assert_eq!(find("o/"), Some(tar::EntryType::Directory));
    assert_eq!(find("o/.wh..wh..opq"), Some(tar::EntryType::Regular));
    assert_eq!(find("a/h"), Some(tar::EntryType::Link));
    assert_eq!(find("p"), Some(tar::EntryType::Fifo));
    assert_eq!(find("mnt/"), None);
    // Parents before children, names sorted.
    let pos = |n: &str| names.iter().position(|(p, _)| p == n).unwrap();
    assert!(pos("a/") < pos("a/f") && pos("a/f") < pos("a/h") && pos("a/h") < pos("abs"));
    // Mode fields carry no file-type bits; xattrs are PAX records, overlay ones dropped.
    let mut a = tar::Archive::new(&tar[..]);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let m = e.header().as_bytes()[100..108].to_vec();
        let mode = u32::from_str_radix(std::str::from_utf8(&m).unwrap().trim_end_matches('\0').trim(), 8).unwrap();
        assert!(mode <= 0o7777, "mode field {mode:o}");
        if e.path_bytes().as_ref() == b"a/f" {
            let pax: Vec<(String, Vec<u8>)> = e
                .pax_extensions()
                .unwrap()
                .unwrap()
                .map(|x| {
                    let x = x.unwrap();
                    (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                })
                .collect();
            assert_eq!(pax, vec![("SCHILY.xattr.user.foo".to_string(), b"bar".to_vec())]);
        }
    }

    let dest = t.path().join("lower");
    fs::create_dir(&dest).unwrap();
    let got = unpack_to_lower(
        Cursor::new(&blob),
        Compression::Gzip,
        &dest,
        Ownership::Kernel,
        &crate::events::Reporter::silent(),
    )
    .unwrap();
    assert_eq!(got, diff_id);
    assert_eq!(fs::read(dest.join("a/f")).unwrap(), b"hello world\n");
    assert_eq!(fs::metadata(dest.join("a/f")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(dest.join("a")).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(fs::metadata(dest.join("suid")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(dest.join("a/f")).unwrap().ino(),
        fs::metadata(dest.join("a/h")).unwrap().ino()
    );
    assert_eq!(fs::read_link(dest.join("l")).unwrap(), Path::new("a/f"));
    assert_eq!(fs::read_link(dest.join("abs")).unwrap(), Path::new("/nonexistent/abs"));
    assert!(fs::symlink_metadata(dest.join("p")).unwrap().file_type().is_fifo());
    let wh = fs::symlink_metadata(dest.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!dest.join(".wh.gone").exists());
    assert_eq!(
        xattr::get(dest.join("o"), "user.overlay.opaque").unwrap().as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dest.join("o/.wh..wh..opq").exists());
    assert_eq!(fs::read(dest.join("o/keep")).unwrap(), b"k");
    assert_eq!(
        xattr::get(dest.join("a/f"), "user.foo").unwrap().as_deref(),
        Some(&b"bar"[..])
    );
    assert_eq!(xattr::get(dest.join("a/f"), "user.overlay.origin").unwrap(), None);
    let long1 = dest.join("x".repeat(120));
    assert_eq!(fs::read(long1.join("y".repeat(150))).unwrap(), b"long");
    assert_eq!(fs::read_link(long1.join("ln")).unwrap(), Path::new(&"z".repeat(200)));
    assert!(!dest.join("mnt").exists());
    assert_eq!(fs::read(dest.join("big")).unwrap(), vec![7u8; 300_000]);
    assert_eq!(fs::read(dest.join("zeros")).unwrap(), vec![0u8; 64 * 1024]);
    // mtimes survive (dirs too, set after their contents).
    let mt = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
    assert_eq!(mt(&dest.join("a")), mt(&upper.join("a")));
    assert_eq!(mt(&dest.join("a/f")), mt(&upper.join("a/f")));
    assert_eq!(mt(&dest.join("l")), mt(&upper.join("l")));
    if is_root() {
        let md = fs::metadata(dest.join("a/f")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        let md = fs::symlink_metadata(dest.join("l")).unwrap();
        assert_eq!((md.uid(), md.gid()), (42, 43));
    }

    // And back: the lower dir tars to the same layer (whiteouts and opaque dirs included).
    let (blob2, diff2) = layer_of(&dest, &[], &opts);
    if diff2 != diff_id {
        let dump = |t: &[u8]| -> Vec<String> {
            tar::Archive::new(t)
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let h = e.header();
                    format!(
                        "{} {:?} {:o} {} {} {}",
                        String::from_utf8_lossy(&e.path_bytes()),
                        h.entry_type(),
                        h.mode().unwrap(),
                        h.uid().unwrap(),
                        h.gid().unwrap(),
                        h.mtime().unwrap()
                    )
                })
                .collect()
        };
        let (a, b) = (dump(&tar), dump(&gunzip(&blob2)));
        for (x, y) in a.iter().zip(b.iter()) {
            if x != y {
                eprintln!("{x}\n{y}\n");
            }
        }
    }
    assert_eq!(diff2, diff_id);
    assert_eq!(blob2, blob);
}

#[test]
fn all_compressions_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("u");
    fs::create_dir(&upper).unwrap();
    fs::write(upper.join("f"), vec![b'q'; 1_000_000]).unwrap();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let opts = LayerOptions {
            compression: c,
            level: None,
            timestamp: None,
            ..Default::default()
        };
        let (blob, diff_id) = layer_of(&upper, &[], &opts);
        assert_eq!(sniff_compression(&blob), c);
        let dest = t.path().join(format!("d{c:?}"));
        fs::create_dir(&dest).unwrap();
        assert_eq!(
            unpack_to_lower(
                Cursor::new(&blob),
                c,
                &dest,
                Ownership::Kernel,
                &crate::events::Reporter::silent()
            )
            .unwrap(),
            diff_id
        );
        assert_eq!(fs::read(dest.join("f")).unwrap().len(), 1_000_000);
    }
}

#[test]
fn empty_upper_is_none_and_media_types() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let upper = t.path().join("u");
    fs::create_dir_all(upper.join("mnt")).unwrap();
    let opts = LayerOptions::default();
    assert!(
        commit_dir(&store, &upper, &[PathBuf::from("mnt")], &opts, ManifestFormat::Oci)
            .unwrap()
            .is_none()
    );
    fs::write(upper.join("f"), b"x").unwrap();
    let l = commit_dir(&store, &upper, &[PathBuf::from("mnt")], &opts, ManifestFormat::Docker)
        .unwrap()
        .unwrap();
    assert_eq!(l.descriptor.media_type, MT_DOCKER_LAYER_GZIP);
    let blob = fs::read(store.blob_path(&l.descriptor.digest)).unwrap();
    assert_eq!(Digest::of(&blob), l.descriptor.digest);
    assert_eq!(blob.len() as u64, l.descriptor.size);
    assert_eq!(Digest::of(&gunzip(&blob)), l.diff_id);
    assert_eq!(
        layer_media_type(&ManifestFormat::Docker, Compression::Zstd),
        MT_OCI_LAYER_ZSTD
    );
    assert_eq!(layer_media_type(&ManifestFormat::Oci, Compression::None), MT_OCI_LAYER);
    assert_eq!(
        layer_media_type(&ManifestFormat::Docker, Compression::None),
        MT_DOCKER_LAYER
    );
}

#[test]
fn deterministic_and_clamped() {
    let t = tempfile::tempdir().unwrap();
    let mk = |name: &str, mtime: i64| {
        let d = t.path().join(name);
        fs::create_dir_all(d.join("sub")).unwrap();
        // Created in different orders: directory order must not matter.
        let files: Vec<&str> = if mtime % 2 == 0 {
            vec!["b", "a", "c"]
        } else {
            vec!["c", "a", "b"]
        };
        for f in files {
            fs::write(d.join("sub").join(f), f.repeat(70_000)).unwrap();
            set_mtime(&d.join("sub").join(f), mtime);
        }
        set_mtime(&d.join("sub"), mtime);
        d
    };
    let d1 = mk("one", 2_000_000_000);
    let d2 = mk("two", 2_000_000_001);
    let opts = LayerOptions::default();
    assert_eq!(layer_of(&d1, &[], &opts), layer_of(&d1, &[], &opts));
    assert_ne!(layer_of(&d1, &[], &opts).1, layer_of(&d2, &[], &opts).1);
    let clamp = LayerOptions {
        timestamp: Some(1_000_000_000),
        ..LayerOptions::default()
    };
    let (b1, id1) = layer_of(&d1, &[], &clamp);
    let (b2, id2) = layer_of(&d2, &[], &clamp);
    assert_eq!(id1, id2);
    assert_eq!(b1, b2);
    for (_, e) in tar_names(&gunzip(&b1))
        .iter()
        .zip(tar::Archive::new(&gunzip(&b1)[..]).entries().unwrap())
    {
        assert_eq!(e.unwrap().header().mtime().unwrap(), 1_000_000_000);
    }
    let zs = LayerOptions {
        compression: Compression::Zstd,
        ..clamp
    };
    assert_eq!(layer_of(&d1, &[], &zs), layer_of(&d2, &[], &zs));
}

#[test]
fn gzip_output_independent_of_write_pattern() {
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x3f)
        .collect();
    let run = |chunk: usize| {
        let mut e = Encoder::new(Vec::new(), Compression::Gzip, None).unwrap();
        for c in data.chunks(chunk) {
            e.write_all(c).unwrap();
            e.flush().unwrap();
        }
        e.finish().unwrap()
    };
    let a = run(1000);
    assert_eq!(a, run(300_001));
    assert_eq!(gunzip(&a), data);
}

#[test]
fn apply_whiteouts_delete_and_chown() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path();
    fs::write(dest.join("x"), b"old").unwrap();
    fs::create_dir_all(dest.join("d/deep")).unwrap();
    fs::create_dir_all(dest.join("o/old")).unwrap();
    fs::write(dest.join("o/oldf"), b"").unwrap();
    fs::create_dir_all(dest.join("p")).unwrap();
    fs::write(dest.join("p/oldf"), b"").unwrap();
    let tar = build(&[
        raw(b".wh.x", tar::EntryType::Regular, b"", b""),
        raw(b".wh.d", tar::EntryType::Regular, b"", b""),
        raw(b".wh.missing", tar::EntryType::Regular, b"", b""),
        raw(b"o/", tar::EntryType::Directory, b"", b""),
        raw(b"o/.wh..wh..opq", tar::EntryType::Regular, b"", b""),
        raw(b"o/new", tar::EntryType::Regular, b"", b"n"),
        raw(b"p/new", tar::EntryType::Regular, b"", b"n"),
        raw(b"p/.wh..wh..opq", tar::EntryType::Regular, b"", b""),
    ]);
    let opts = ApplyOptions {
        chown: Some((777, 888)),
        keep_whiteouts_as_files: false,
        ..Default::default()
    };
    apply(Cursor::new(&tar), dest, &opts).unwrap();
    assert!(!dest.join("x").exists());
    assert!(!dest.join("d").exists());
    assert!(!dest.join("o/old").exists() && !dest.join("o/oldf").exists());
    assert_eq!(fs::read(dest.join("o/new")).unwrap(), b"n");
    assert!(!dest.join("p/oldf").exists());
    assert_eq!(fs::read(dest.join("p/new")).unwrap(), b"n");
    assert!(!dest.join("o/.wh..wh..opq").exists());
    if is_root() {
        let md = fs::metadata(dest.join("o/new")).unwrap();
        assert_eq!((md.uid(), md.gid()), (777, 888));
    }
    // keep_whiteouts_as_files writes them as files.
    let d2 = t.path().join("plain");
    fs::create_dir(&d2).unwrap();
    let opts = ApplyOptions {
        chown: None,
        keep_whiteouts_as_files: true,
        ..Default::default()
    };
    apply(Cursor::new(&tar), &d2, &opts).unwrap();
    assert!(d2.join(".wh.x").is_file());
    assert!(d2.join("o/.wh..wh..opq").is_file());
}

// ------------------------------------------------------------------------------------------
// Hostile archives

/// A raw ustar entry with an arbitrary name (the tar crate refuses `..` in names).
fn raw(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn build(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = entries.concat();
    v.extend_from_slice(&[0u8; 1024]);
    v
}

/// Unpacks `tar` into `<tmp>/root/dest` (with a `secret` sibling outside dest); returns
/// the result and the tmp dir, after checking that nothing outside dest changed.
fn hostile(tar: &[u8]) -> (Result<Digest>, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let dest = root.join("dest");
    fs::create_dir_all(&dest).unwrap();
    fs::write(root.join("secret"), b"secret").unwrap();
    let r = unpack_to_lower(
        Cursor::new(tar.to_vec()),
        Compression::None,
        &dest,
        Ownership::Kernel,
        &crate::events::Reporter::silent(),
    );
    let mut outside: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside.sort();
    assert_eq!(outside, vec![std::ffi::OsString::from("root")]);
    let mut inroot: Vec<_> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
    inroot.sort();
    assert_eq!(inroot, vec![std::ffi::OsString::from("dest"), "secret".into()]);
    assert_eq!(fs::read(root.join("secret")).unwrap(), b"secret");
    // With the same tar applied (whiteouts delete), nothing escapes either.
    let dest2 = root.join("dest2");
    fs::create_dir(&dest2).unwrap();
    let _ = apply(Cursor::new(tar.to_vec()), &dest2, &ApplyOptions::default());
    fs::remove_dir_all(&dest2).unwrap();
    assert_eq!(fs::read(root.join("secret")).unwrap(), b"secret");
    (r, t)
}

#[test]
fn hostile_dotdot_and_absolute_are_confined() {
    let tar = build(&[
        raw(b"../evil", tar::EntryType::Regular, b"", b"e"),
        raw(b"../../secret", tar::EntryType::Regular, b"", b"pwned"),
        raw(b"/abs/evil", tar::EntryType::Regular, b"", b"a"),
        raw(b"a/../../../b", tar::EntryType::Regular, b"", b"b"),
    ]);
    let (r, t) = hostile(&tar);
    r.unwrap();
    let dest = t.path().join("root/dest");
    assert_eq!(fs::read(dest.join("evil")).unwrap(), b"e");
    assert_eq!(fs::read(dest.join("secret")).unwrap(), b"pwned");
    assert_eq!(fs::read(dest.join("abs/evil")).unwrap(), b"a");
    assert_eq!(fs::read(dest.join("b")).unwrap(), b"b");
}

#[test]
fn hostile_symlink_parents_are_confined() {
    let tar = build(&[
        raw(b"a", tar::EntryType::Symlink, b"/", b""),
        raw(b"a/etc/x", tar::EntryType::Regular, b"", b"1"),
        raw(b"b", tar::EntryType::Symlink, b"../..", b""),
        raw(b"b/x", tar::EntryType::Regular, b"", b"2"),
        raw(b"b/secret", tar::EntryType::Regular, b"", b"3"),
        raw(b"c", tar::EntryType::Symlink, b"../secret", b""),
        raw(b"c", tar::EntryType::Regular, b"", b"4"), // replaces the symlink, never writes through it
    ]);
    let (r, t) = hostile(&tar);
    r.unwrap();
    let dest = t.path().join("root/dest");
    assert_eq!(fs::read(dest.join("etc/x")).unwrap(), b"1");
    assert_eq!(fs::read(dest.join("x")).unwrap(), b"2");
    assert_eq!(fs::read(dest.join("secret")).unwrap(), b"3");
    assert_eq!(fs::read(dest.join("c")).unwrap(), b"4");
    assert!(fs::symlink_metadata(dest.join("c")).unwrap().is_file());
}

#[test]
fn hostile_hardlinks_stay_inside() {
    // A hardlink to a path outside: resolved under dest, where it does not exist.
    let (r, _t) = hostile(&build(&[raw(b"h", tar::EntryType::Link, b"../../etc/passwd", b"")]));
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("hardlink") && e.contains("does not exist"), "{e}");
    // Through a symlink parent: still inside.
    let (r, t) = hostile(&build(&[
        raw(b"up", tar::EntryType::Symlink, b"../..", b""),
        raw(b"h", tar::EntryType::Link, b"up/secret", b""),
    ]));
    assert!(r.is_err());
    assert!(!t.path().join("root/dest/h").exists());
    // A hardlink to a symlink links the symlink itself, never its (outside) target.
    let (r, t) = hostile(&build(&[
        raw(b"s", tar::EntryType::Symlink, b"../secret", b""),
        raw(b"h", tar::EntryType::Link, b"s", b""),
        raw(b"f", tar::EntryType::Regular, b"", b"ok"),
        raw(b"g", tar::EntryType::Link, b"./f", b""),
    ]));
    r.unwrap();
    let dest = t.path().join("root/dest");
    assert!(fs::symlink_metadata(dest.join("h")).unwrap().file_type().is_symlink());
    assert_eq!(
        fs::metadata(dest.join("g")).unwrap().ino(),
        fs::metadata(dest.join("f")).unwrap().ino()
    );
}

#[test]
fn hostile_whiteout_names_are_rejected() {
    for name in [&b".wh..."[..], b".wh..", b".wh.", b"d/.wh..."] {
        let (r, _t) = hostile(&build(&[raw(name, tar::EntryType::Regular, b"", b"")]));
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("invalid whiteout"), "{e}");
    }
    // A whiteout through a symlink parent only touches dest.
    let (r, t) = hostile(&build(&[
        raw(b"up", tar::EntryType::Symlink, b"..", b""),
        raw(b"up/.wh.secret", tar::EntryType::Regular, b"", b""),
    ]));
    r.unwrap();
    let wh = fs::symlink_metadata(t.path().join("root/dest/secret")).unwrap();
    assert!(wh.file_type().is_char_device());
}

#[test]
fn duplicates_later_wins() {
    let (r, t) = hostile(&build(&[
        raw(b"f", tar::EntryType::Regular, b"", b"first"),
        raw(b"f", tar::EntryType::Regular, b"", b"second"),
        raw(b"d/", tar::EntryType::Directory, b"", b""),
        raw(b"d/x", tar::EntryType::Regular, b"", b"x"),
        raw(b"d", tar::EntryType::Regular, b"", b"now a file"),
        raw(b"e", tar::EntryType::Regular, b"", b"file"),
        raw(b"e/", tar::EntryType::Directory, b"", b""),
        raw(b"e/y", tar::EntryType::Regular, b"", b"y"),
        raw(b"k/", tar::EntryType::Directory, b"", b""),
        raw(b"k/z", tar::EntryType::Regular, b"", b"z"),
        raw(b"k/", tar::EntryType::Directory, b"", b""), // a dir over a dir keeps its contents
    ]));
    r.unwrap();
    let dest = t.path().join("root/dest");
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"second");
    assert_eq!(fs::read(dest.join("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(dest.join("e/y")).unwrap(), b"y");
    assert_eq!(fs::read(dest.join("k/z")).unwrap(), b"z");
}

#[test]
fn truncated_and_garbage_streams_fail() {
    let full = build(&[raw(b"f", tar::EntryType::Regular, b"", &[b'x'; 5000])]);
    let (r, _t) = hostile(&full[..2000]);
    assert!(r.is_err(), "truncated data must fail");
    let (r, _t) = hostile(&full[..300]);
    assert!(r.is_err(), "truncated header must fail");
    let (r, _t) = hostile(&[b'z'; 4096]);
    assert!(r.is_err(), "garbage must fail");
    // A truncated gzip stream fails too.
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("u");
    fs::create_dir(&u).unwrap();
    fs::write(
        u.join("f"),
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let (blob, _) = layer_of(&u, &[], &LayerOptions::default());
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    assert!(
        unpack_to_lower(
            Cursor::new(&blob[..blob.len() / 2]),
            Compression::Gzip,
            &d,
            Ownership::Kernel,
            &crate::events::Reporter::silent()
        )
        .is_err()
    );
    // A stream not in the declared compression fails.
    assert!(
        unpack_to_lower(
            Cursor::new(&full),
            Compression::Gzip,
            &d,
            Ownership::Kernel,
            &crate::events::Reporter::silent()
        )
        .is_err()
    );
}

#[test]
fn diff_id_covers_trailing_padding() {
    let mut tar = build(&[raw(b"f", tar::EntryType::Regular, b"", b"x")]);
    tar.extend_from_slice(&[0u8; 8192]); // GNU tar pads to a 10 KiB record
    let (r, _t) = hostile(&tar);
    assert_eq!(r.unwrap(), Digest::of(&tar));
}

#[test]
fn devices_made_or_counted() {
    let tar = build(&[{
        let mut h = tar::Header::new_ustar();
        h.set_path("null").unwrap();
        h.set_entry_type(tar::EntryType::Char);
        h.set_mode(0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        h.set_cksum();
        h.as_bytes().to_vec()
    }]);
    let t = tempfile::tempdir().unwrap();
    let stats = apply_with_stats(Cursor::new(&tar), t.path(), &ApplyOptions::default()).unwrap();
    match fs::symlink_metadata(t.path().join("null")) {
        Ok(md) => {
            assert!(md.file_type().is_char_device());
            assert_eq!(md.rdev(), libc::makedev(1, 3));
        }
        Err(_) => assert_eq!(stats.skipped_devices, 1),
    }
}

#[test]
fn gnu_pax_sparse_is_a_clear_error() {
    let mut pax = Vec::new();
    for (k, v) in [
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "s"),
    ] {
        let rec = format!(" {k}={v}\n");
        let len = rec.len() + 2;
        pax.extend_from_slice(format!("{len}{rec}").as_bytes());
    }
    let mut x = raw(b"PaxHeaders/s", tar::EntryType::XHeader, b"", &pax);
    x.extend(raw(b"GNUSparseFile.0/s", tar::EntryType::Regular, b"", b""));
    let (r, _t) = hostile(&build(&[x]));
    assert!(format!("{:#}", r.unwrap_err()).contains("sparse"));
}

#[test]
fn deep_and_long_paths() {
    // 300 nested dirs (more than the fds the resolver keeps) and a 255-byte component.
    let mut entries = Vec::new();
    let mut p = String::new();
    let mut paths = Vec::new();
    for i in 0..300 {
        p.push_str(&format!("d{i}/"));
        paths.push(p.clone());
    }
    let name = "n".repeat(255);
    paths.push(format!("{p}{name}"));
    paths.push("d0/back".to_string());
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("u");
    fs::create_dir(&upper).unwrap();
    for q in &paths {
        if q.ends_with('/') {
            fs::create_dir(upper.join(q)).unwrap();
        } else {
            fs::write(upper.join(q), q.as_bytes()).unwrap();
        }
    }
    entries.push(());
    let (blob, diff_id) = layer_of(&upper, &[], &LayerOptions::default());
    let dest = dir.path().join("d");
    fs::create_dir(&dest).unwrap();
    assert_eq!(
        unpack_to_lower(
            Cursor::new(&blob),
            Compression::Gzip,
            &dest,
            Ownership::Kernel,
            &crate::events::Reporter::silent()
        )
        .unwrap(),
        diff_id
    );
    for q in &paths {
        if !q.ends_with('/') {
            assert_eq!(fs::read(dest.join(q)).unwrap(), q.as_bytes());
        }
    }
}

#[test]
fn open_archive_sniffs() {
    let tar = build(&[raw(b"f", tar::EntryType::Regular, b"", b"hello")]);
    let read_all = |r: Box<dyn Read + Send>| {
        let mut v = Vec::new();
        let mut r = r;
        r.read_to_end(&mut v).unwrap();
        v
    };
    // plain
    assert_eq!(read_all(open_archive(Cursor::new(tar.clone())).unwrap().unwrap()), tar);
    // gzip
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    assert_eq!(
        read_all(open_archive(Cursor::new(gz.finish().unwrap())).unwrap().unwrap()),
        tar
    );
    // zstd
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    assert_eq!(read_all(open_archive(Cursor::new(z)).unwrap().unwrap()), tar);
    // bzip2
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&tar).unwrap();
    assert_eq!(
        read_all(open_archive(Cursor::new(bz.finish().unwrap())).unwrap().unwrap()),
        tar
    );
    // xz
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &tar[..], &mut xz).unwrap();
    assert_eq!(read_all(open_archive(Cursor::new(xz)).unwrap().unwrap()), tar);
    // not archives
    assert!(
        open_archive(Cursor::new(b"hello, world\n".repeat(100)))
            .unwrap()
            .is_none()
    );
    assert!(open_archive(Cursor::new(Vec::new())).unwrap().is_none());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"just text, compressed").unwrap();
    assert!(open_archive(Cursor::new(gz.finish().unwrap())).unwrap().is_none());
    assert!(open_archive(Cursor::new(vec![0u8; 2048])).unwrap().is_none());
}

#[test]
fn capability_v3_becomes_v2() {
    let mut v3 = 0x0300_0001u32.to_le_bytes().to_vec();
    v3.extend_from_slice(&[0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // cap_net_bind_service
    v3.extend_from_slice(&1001u32.to_le_bytes());
    let v2 = commit::cap_to_v2(&v3);
    assert_eq!(v2.len(), 20);
    assert_eq!(&v2[..4], &0x0200_0001u32.to_le_bytes());
    assert_eq!(&v2[4..], &v3[4..20]);
    assert_eq!(commit::cap_to_v2(&v2), v2);
}

/// Throughput of commit_dir on a copy of /usr/lib (run with --ignored --nocapture).
#[test]
#[ignore]
fn bench_commit_usr_lib() {
    let src = std::env::var("KILN_BENCH_SRC").unwrap_or_else(|_| "/usr/lib".to_string());
    let t = tempfile::tempdir_in(std::env::var("KILN_BENCH_TMP").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let upper = t.path().join("upper");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&upper)
        .status()
        .unwrap();
    assert!(st.success());
    let mut tar_size = 0;
    let mut runs = vec![(Compression::None, None)];
    let levels = std::env::var("KILN_BENCH_GZIP_LEVELS").unwrap_or_else(|_| "1,6".into());
    runs.extend(
        levels
            .split(',')
            .map(|l| (Compression::Gzip, Some(l.parse::<u32>().unwrap()))),
    );
    runs.push((Compression::Zstd, Some(3)));
    for (c, level) in runs {
        let opts = LayerOptions {
            compression: c,
            level,
            timestamp: None,
            ..Default::default()
        };
        let start = std::time::Instant::now();
        let cpu0 = cpu_time();
        let sink = HashingWriter::new(io::sink());
        let (sink, _diff, size) = compress_tar(DirWalk::new(&upper, &[]).unwrap(), &opts, sink).unwrap();
        let (_, _, out) = sink.finish();
        let wall = start.elapsed().as_secs_f64();
        let cpu = cpu_time() - cpu0;
        tar_size = size;
        println!(
            "{c:?} level {level:?}: tar {:.0} MB -> {:.0} MB ({:.3}) in {wall:.2} s wall = {:.0} MB/s wall, {:.0} MB/s per CPU-s",
            size as f64 / 1e6,
            out as f64 / 1e6,
            out as f64 / size as f64,
            size as f64 / 1e6 / wall,
            size as f64 / 1e6 / cpu
        );
    }
    let dest = t.path().join("lower");
    fs::create_dir(&dest).unwrap();
    let (blob, _) = layer_of(&upper, &[], &LayerOptions::default());
    let start = std::time::Instant::now();
    unpack_to_lower(
        Cursor::new(blob),
        Compression::Gzip,
        &dest,
        Ownership::Kernel,
        &crate::events::Reporter::silent(),
    )
    .unwrap();
    let wall = start.elapsed().as_secs_f64();
    println!(
        "unpack_to_lower (gzip default): {:.0} MB/s wall",
        tar_size as f64 / 1e6 / wall
    );
}

fn cpu_time() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn very_deep_tree_and_huge_names() {
    use super::tarw::{TarEntry, TarWriter};
    let mut tw = TarWriter::new(Vec::new());
    fn e(path: &[u8], kind: tar::EntryType) -> TarEntry<'_> {
        TarEntry {
            path,
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
            size: 0,
            link: None,
            dev: None,
            pax: Default::default(),
        }
    }
    let mut p = Vec::new();
    // 1024 levels keep the unit test quick; 4096 was run by hand (12 s in a debug build, most
    // of it ext4 mkdir).
    let depth: usize = std::env::var("KILN_TEST_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1024);
    for _ in 0..depth {
        p.extend_from_slice(b"d/");
        tw.append(&e(&p, tar::EntryType::Directory), None).unwrap();
    }
    p.extend_from_slice(b"leaf");
    tw.append(&e(&p, tar::EntryType::Regular), None).unwrap();
    tw.append(&e(b"top", tar::EntryType::Regular), None).unwrap();
    let tar = tw.finish().unwrap();
    let t = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let id = unpack_to_lower(
        Cursor::new(&tar),
        Compression::None,
        t.path(),
        Ownership::Kernel,
        &crate::events::Reporter::silent(),
    )
    .unwrap();
    assert_eq!(id, Digest::of(&tar));
    assert!(start.elapsed().as_secs() < 60, "deep tree took {:?}", start.elapsed());
    assert!(t.path().join("top").is_file());
    // Names longer than NAME_MAX are a clear error, not a crash.
    let mut tw = TarWriter::new(Vec::new());
    let long = vec![b'n'; 4096];
    tw.append(&e(&long, tar::EntryType::Regular), None).unwrap();
    let tar = tw.finish().unwrap();
    let (r, _t) = hostile(&tar);
    assert!(format!("{:#}", r.unwrap_err()).to_lowercase().contains("name too long"));
}

/// A real kernel overlay (root only; skipped where mounting is not permitted): changes made
/// through the overlay → commit_dir → unpack_to_lower → mounted again as a lower with
/// `userxattr` shows the same tree.
#[test]
fn kernel_overlay_round_trip() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = t.path().join(n);
        fs::create_dir_all(&p).unwrap();
        p
    };
    let (lower, upper, work, merged) = (d("lower"), d("upper"), d("work"), d("merged"));
    fs::create_dir_all(lower.join("a")).unwrap();
    fs::write(lower.join("a/file1"), b"1").unwrap();
    fs::write(lower.join("a/file2"), b"2").unwrap();
    fs::create_dir_all(lower.join("d/sub")).unwrap();
    fs::write(lower.join("d/x"), b"x").unwrap();
    let mount = |lowers: &str, upper: Option<(&Path, &Path)>, target: &Path| {
        let mut o = format!("userxattr,lowerdir={lowers}");
        if let Some((u, w)) = upper {
            o.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
        }
        std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(target)
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let umount = |target: &Path| {
        assert!(
            std::process::Command::new("umount")
                .arg(target)
                .status()
                .unwrap()
                .success()
        );
    };
    if !mount(lower.to_str().unwrap(), Some((&upper, &work)), &merged) {
        eprintln!("skipped: cannot mount overlay here");
        return;
    }
    fs::remove_file(merged.join("a/file1")).unwrap();
    fs::remove_file(merged.join("a/file2")).unwrap();
    fs::remove_dir_all(merged.join("d")).unwrap();
    fs::create_dir(merged.join("d")).unwrap();
    fs::write(merged.join("d/new"), b"n").unwrap();
    fs::write(merged.join("newfile"), b"nf").unwrap();
    umount(&merged);

    let (blob, diff_id) = layer_of(&upper, &[], &LayerOptions::default());
    let names: Vec<String> = tar_names(&gunzip(&blob)).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec![
            "a/",
            "a/.wh.file1",
            "a/.wh.file2",
            "d/",
            "d/.wh..wh..opq",
            "d/new",
            "newfile"
        ]
    );

    let l2 = d("l2");
    assert_eq!(
        unpack_to_lower(
            Cursor::new(&blob),
            Compression::Gzip,
            &l2,
            Ownership::Kernel,
            &crate::events::Reporter::silent()
        )
        .unwrap(),
        diff_id
    );
    let view = d("view");
    assert!(mount(&format!("{}:{}", l2.display(), lower.display()), None, &view));
    let mut got: Vec<String> = Vec::new();
    for e in ["a", "d", ""] {
        let mut v: Vec<String> = fs::read_dir(view.join(e))
            .unwrap()
            .map(|x| format!("{e}/{}", x.unwrap().file_name().to_string_lossy()))
            .collect();
        v.sort();
        got.extend(v);
    }
    umount(&view);
    assert_eq!(got, vec!["d/new", "/a", "/d", "/newfile"]);
}
