use super::*;
use crate::image::{MT_DOCKER_LAYER, MT_DOCKER_LAYER_GZIP, MT_OCI_LAYER_GZIP};
use crate::store::ManifestFormat;
use std::os::unix::fs::symlink;

fn store() -> (tempfile::TempDir, Store) {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(&t.path().join("store")).unwrap();
    (t, s)
}

/// (path, type, uid, link target, data) of a tar entry.
type EntryInfo = (String, tar::EntryType, u64, Option<String>, Vec<u8>);

/// Entries of a layer blob.
fn layer_entries(store: &Store, d: &Descriptor) -> Vec<EntryInfo> {
    let r = open_decompressed(&store.blob_path(&d.digest)).unwrap();
    let mut ar = tar::Archive::new(r);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().entry_type(),
                e.header().uid().unwrap(),
                e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
                data,
            )
        })
        .collect()
}

fn tiny_tree(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::hard_link(dir.join("bin/tool"), dir.join("bin/tool2")).unwrap();
    symlink("tool", dir.join("bin/sh")).unwrap();
    symlink("/etc/../../outside", dir.join("etc/escape")).unwrap();
    fs::write(dir.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
}

fn tiny_image(t: &Path, s: &Store) -> Image {
    let tree = t.join("tree");
    tiny_tree(&tree);
    let img = import_rootfs(s, &tree, ManifestFormat::Oci).unwrap();
    let desc = Descriptor::new(
        MT_OCI_MANIFEST,
        img.manifest_digest.clone(),
        s.read_blob(&img.manifest_digest).unwrap().len() as u64,
    );
    s.tag("app:v1", &desc).unwrap();
    img
}

#[test]
fn transport_parse() {
    assert_eq!(Transport::parse("docker.io/library/busybox").unwrap(), None);
    assert_eq!(Transport::parse("localhost:5000/x:1").unwrap(), None);
    assert_eq!(
        Transport::parse("oci:./dir").unwrap(),
        Some(Transport::OciLayout("./dir".into(), None))
    );
    assert_eq!(
        Transport::parse("oci:dir:docker.io/library/a:b").unwrap(),
        Some(Transport::OciLayout("dir".into(), Some("docker.io/library/a:b".into())))
    );
    assert_eq!(
        Transport::parse("oci-archive:/x.tar:latest").unwrap(),
        Some(Transport::OciArchive("/x.tar".into(), Some("latest".into())))
    );
    assert_eq!(
        Transport::parse("docker-archive:y.tar:app:v1").unwrap(),
        Some(Transport::DockerArchive("y.tar".into(), Some("app:v1".into())))
    );
    assert!(Transport::parse("oci:").is_err());
    assert!(Transport::parse("docker-archive:y.tar:Not Valid").is_err());
    assert_eq!(Transport::parse("oci:d:n").unwrap().unwrap().to_string(), "oci:d:n");
}

#[test]
fn import_dir_is_deterministic_and_complete() {
    let (t, s) = store();
    let tree = t.path().join("tree");
    tiny_tree(&tree);
    let a = import_rootfs(&s, &tree, ManifestFormat::Oci).unwrap();
    let b = import_rootfs(&s, &tree, ManifestFormat::Docker).unwrap();
    assert_eq!(
        a.config.rootfs.diff_ids, b.config.rootfs.diff_ids,
        "same tree, same diff_id"
    );
    assert_eq!(a.manifest.layers[0].media_type, MT_OCI_LAYER_GZIP);
    assert_eq!(b.manifest.layers[0].media_type, MT_DOCKER_LAYER_GZIP);
    assert_eq!(a.config.config.env.as_deref().unwrap(), [DEFAULT_PATH]);
    assert!(
        a.config.history[0]
            .created_by
            .as_deref()
            .unwrap()
            .starts_with("kiln import")
    );
    let entries = layer_entries(&s, &a.manifest.layers[0]);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "bin/",
            "bin/sh",
            "bin/tool",
            "bin/tool2",
            "etc/",
            "etc/escape",
            "etc/passwd"
        ]
    );
    let tool2 = &entries[3];
    assert_eq!(tool2.1, tar::EntryType::Link);
    assert_eq!(tool2.3.as_deref(), Some("bin/tool"));
    assert_eq!(entries[1].1, tar::EntryType::Symlink);
    assert_eq!(
        entries[5].3.as_deref(),
        Some("/etc/../../outside"),
        "symlink targets are kept verbatim"
    );
    // The diff_id is the digest of the uncompressed tar.
    let mut raw = Vec::new();
    open_decompressed(&s.blob_path(&a.manifest.layers[0].digest))
        .unwrap()
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(Digest::of(&raw), a.config.rootfs.diff_ids[0]);
}

/// Writes a tar with Python-free hand-made headers: each (path, type, uid, data).
fn write_tar(path: &Path, entries: &[(&str, tar::EntryType, u64, &[u8])], raw_names: bool) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, uid, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(*uid);
        h.set_gid(*uid);
        if *kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        if raw_names {
            // Bypass the tar crate's own '..' checks to produce hostile input.
            let n = name.as_bytes();
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        } else {
            b.append_data(&mut h, name, *data).unwrap();
        }
    }
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[test]
fn import_tarball_keeps_ownership_and_devices() {
    let (t, s) = store();
    let tarball = t.path().join("rootfs.tar");
    write_tar(
        &tarball,
        &[
            ("./", tar::EntryType::Directory, 0, b""),
            ("./home/", tar::EntryType::Directory, 1000, b""),
            ("./home/user.txt", tar::EntryType::Regular, 1000, b"mine"),
            ("./dev/null", tar::EntryType::Char, 0, b""),
        ],
        false,
    );
    // Also gzip- and zstd-compressed.
    let gz = t.path().join("rootfs.tar.gz");
    let mut e = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
    e.write_all(&fs::read(&tarball).unwrap()).unwrap();
    e.finish().unwrap();
    let zst = t.path().join("rootfs.tar.zst");
    fs::write(&zst, zstd::encode_all(&fs::read(&tarball).unwrap()[..], 3).unwrap()).unwrap();
    let plain = import_rootfs(&s, &tarball, ManifestFormat::Oci).unwrap();
    for p in [&gz, &zst] {
        let img = import_rootfs(&s, p, ManifestFormat::Oci).unwrap();
        assert_eq!(
            img.config.rootfs.diff_ids,
            plain.config.rootfs.diff_ids,
            "{}",
            p.display()
        );
    }
    let entries = layer_entries(&s, &plain.manifest.layers[0]);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["home", "home/user.txt", "dev/null"]);
    assert_eq!(entries[1].2, 1000);
    assert_eq!(entries[1].4, b"mine");
    assert_eq!(entries[2].1, tar::EntryType::Char);
}

#[test]
fn import_rejects_dotdot_and_relativises_absolute() {
    let (t, s) = store();
    let evil = t.path().join("evil.tar");
    write_tar(&evil, &[("../x", tar::EntryType::Regular, 0, b"x")], true);
    let err = format!("{:#}", import_rootfs(&s, &evil, ManifestFormat::Oci).unwrap_err());
    assert!(err.contains("..") && err.contains("outside"), "{err}");
    let nested = t.path().join("nested.tar");
    write_tar(&nested, &[("a/../../x", tar::EntryType::Regular, 0, b"x")], true);
    assert!(import_rootfs(&s, &nested, ManifestFormat::Oci).is_err());
    let abs = t.path().join("abs.tar");
    write_tar(
        &abs,
        &[
            ("/abs", tar::EntryType::Regular, 0, b"x"),
            ("/etc/x", tar::EntryType::Regular, 0, b"y"),
        ],
        true,
    );
    let img = import_rootfs(&s, &abs, ManifestFormat::Oci).unwrap();
    let names: Vec<String> = layer_entries(&s, &img.manifest.layers[0])
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, ["abs", "etc/x"]);
    // Nothing was written outside the store.
    assert!(!t.path().join("x").exists());
}

#[test]
fn import_rejects_junk_and_truncated_input() {
    let (t, s) = store();
    let junk = t.path().join("junk.tar");
    fs::write(&junk, vec![b'z'; 2000]).unwrap();
    let err = format!("{:#}", import_rootfs(&s, &junk, ManifestFormat::Oci).unwrap_err());
    assert!(err.contains("tar"), "{err}");
    let empty = t.path().join("empty.tar");
    fs::write(&empty, b"").unwrap();
    let err = format!("{:#}", import_rootfs(&s, &empty, ManifestFormat::Oci).unwrap_err());
    assert!(err.contains("no tar entries"), "{err}");
    let trunc = t.path().join("trunc.tar");
    write_tar(
        &trunc,
        &[("big", tar::EntryType::Regular, 0, &vec![7u8; 100_000])],
        false,
    );
    let data = fs::read(&trunc).unwrap();
    fs::write(&trunc, &data[..50_000]).unwrap();
    let err = format!("{:#}", import_rootfs(&s, &trunc, ManifestFormat::Oci).unwrap_err());
    assert!(err.contains("truncated") || err.contains("early"), "{err}");
    let missing = t.path().join("nope.tar");
    let err = format!("{:#}", import_rootfs(&s, &missing, ManifestFormat::Oci).unwrap_err());
    assert!(err.contains("nope.tar"), "{err}");
    // Nothing half-written is left in the blob directory: only complete blobs.
    for e in fs::read_dir(s.root().join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let d = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).unwrap();
        s.read_blob(&d).unwrap();
    }
}

fn assert_same_image(a: &Image, b: &Image) {
    assert_eq!(a.id(), b.id(), "image id (config digest) survives the round trip");
    assert_eq!(a.config.rootfs.diff_ids, b.config.rootfs.diff_ids);
}

#[test]
fn round_trip_oci_layout() {
    let (t, s) = store();
    let img = tiny_image(t.path(), &s);
    let dir = t.path().join("layout");
    export(
        &s,
        &img,
        "docker.io/library/app:v1",
        &Transport::OciLayout(dir.clone(), None),
    )
    .unwrap();
    export(
        &s,
        &img,
        "docker.io/library/app:v1",
        &Transport::OciLayout(dir.clone(), Some("other".into())),
    )
    .unwrap();
    let idx: Index = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = idx
        .manifests
        .iter()
        .map(|m| m.annotations[ANNOTATION_REF_NAME].as_str())
        .collect();
    assert_eq!(
        names,
        ["v1", "other"],
        "default name is the source tag; explicit names are kept as given"
    );
    // Re-export replaces instead of duplicating.
    export(
        &s,
        &img,
        "docker.io/library/app:v1",
        &Transport::OciLayout(dir.clone(), None),
    )
    .unwrap();
    let idx: Index = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx.manifests.len(), 2);
    let (_t2, s2) = store();
    let loaded = import_archive(&s2, &dir).unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(loaded.iter().all(|(n, _)| n.is_none()), "bare tags name no repository");
    assert_same_image(&loaded[0].1, &img);
    assert_eq!(loaded[0].1.manifest_digest, img.manifest_digest);
    assert_eq!(s2.list_all().unwrap().len(), 1, "one unnamed entry per manifest");
    // A full reference as the name comes back as the name.
    let dir2 = t.path().join("layout2");
    export(
        &s,
        &img,
        "x",
        &Transport::OciLayout(dir2.clone(), Some("localhost:5000/app:v2".into())),
    )
    .unwrap();
    let loaded = import_archive(&s2, &dir2).unwrap();
    assert_eq!(loaded[0].0.as_deref(), Some("localhost:5000/app:v2"));
    assert_eq!(s2.load_image("localhost:5000/app:v2").unwrap().id(), img.id());
}

#[test]
fn round_trip_oci_archive_and_docker_format_conversion() {
    let (t, s) = store();
    let tree = t.path().join("tree");
    tiny_tree(&tree);
    let img = import_rootfs(&s, &tree, ManifestFormat::Docker).unwrap();
    let file = t.path().join("img.tar");
    export(
        &s,
        &img,
        "docker.io/library/app:v1",
        &Transport::OciArchive(file.clone(), None),
    )
    .unwrap();
    let (_t2, s2) = store();
    let loaded = import_archive(&s2, &file).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].0.as_deref(), Some("docker.io/library/app:v1"));
    let back = &loaded[0].1;
    assert_same_image(back, &img);
    // Docker manifests are converted to OCI inside OCI layouts.
    assert_eq!(back.manifest.media_type.as_deref(), Some(MT_OCI_MANIFEST));
    assert_eq!(back.manifest.layers[0].media_type, MT_OCI_LAYER_GZIP);
    assert_eq!(back.manifest.layers[0].digest, img.manifest.layers[0].digest);
    // No temp file left next to the archive.
    let stray: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".kiln-tmp")
        })
        .collect();
    assert!(stray.is_empty());
}

#[test]
fn round_trip_docker_archive() {
    let (t, s) = store();
    let img = tiny_image(t.path(), &s);
    let file = t.path().join("docker.tar");
    export(
        &s,
        &img,
        "docker.io/library/app:v1",
        &Transport::DockerArchive(file.clone(), None),
    )
    .unwrap();
    // The docker save layout.
    let mut ar = tar::Archive::new(File::open(&file).unwrap());
    let mut names = Vec::new();
    let mut manifest = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if p == "manifest.json" {
            e.read_to_end(&mut manifest).unwrap();
        }
        names.push(p);
    }
    let diff = img.config.rootfs.diff_ids[0].hex().to_string();
    assert!(names.contains(&format!("{}.json", img.id().hex())), "{names:?}");
    assert!(names.contains(&format!("{diff}.tar")), "{names:?}");
    assert!(names.contains(&"repositories".to_string()));
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m[0]["RepoTags"][0], "app:v1");
    assert_eq!(m[0]["Layers"][0], format!("{diff}.tar"));
    let (_t2, s2) = store();
    let loaded = import_archive(&s2, &file).unwrap();
    assert_eq!(loaded[0].0.as_deref(), Some("docker.io/library/app:v1"));
    let back = &loaded[0].1;
    assert_same_image(back, &img);
    // Layers arrive uncompressed (as docker save writes them): digest == diff_id.
    assert_eq!(back.manifest.layers[0].media_type, MT_DOCKER_LAYER);
    assert_eq!(back.manifest.layers[0].digest, back.config.rootfs.diff_ids[0]);
    assert_eq!(s2.load_image("app:v1").unwrap().id(), img.id());
    // A gzipped docker save loads too.
    let gz = t.path().join("docker.tar.gz");
    let mut e = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
    e.write_all(&fs::read(&file).unwrap()).unwrap();
    e.finish().unwrap();
    let (_t3, s3) = store();
    assert_same_image(&import_archive(&s3, &gz).unwrap()[0].1, &img);
    // Docker archives with explicit name, and with gzip-compressed layer files.
    let named = t.path().join("named.tar");
    export(
        &s,
        &img,
        "x",
        &Transport::DockerArchive(named.clone(), Some("localhost:5000/n:2".into())),
    )
    .unwrap();
    let loaded = import_archive(&s3, &named).unwrap();
    assert_eq!(loaded[0].0.as_deref(), Some("localhost:5000/n:2"));
}

#[test]
fn docker_archive_with_gzip_layers_keeps_them() {
    let (t, s) = store();
    let img = tiny_image(t.path(), &s);
    let layer = &img.manifest.layers[0];
    let config = s.read_blob(img.id()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = file_header(config.len() as u64);
    b.append_data(&mut h, "cfg.json", &config[..]).unwrap();
    let blob = fs::read(s.blob_path(&layer.digest)).unwrap();
    let mut h = file_header(blob.len() as u64);
    b.append_data(&mut h, "abc/layer.tar", &blob[..]).unwrap();
    let m = serde_json::json!([{"Config": "cfg.json", "RepoTags": null, "Layers": ["abc/layer.tar"]}]);
    let m = serde_json::to_vec(&m).unwrap();
    let mut h = file_header(m.len() as u64);
    b.append_data(&mut h, "manifest.json", &m[..]).unwrap();
    let file = t.path().join("gz-layers.tar");
    fs::write(&file, b.into_inner().unwrap()).unwrap();
    let (_t2, s2) = store();
    let loaded = import_archive(&s2, &file).unwrap();
    assert_eq!(loaded[0].0, None);
    let back = &loaded[0].1;
    assert_same_image(back, &img);
    assert_eq!(back.manifest.layers[0].media_type, MT_DOCKER_LAYER_GZIP);
    assert_eq!(
        back.manifest.layers[0].digest, layer.digest,
        "the gzip blob is kept as it is"
    );
    // Unnamed images are findable by id prefix.
    assert_eq!(s2.load_image(img.id().short()).unwrap().id(), img.id());
}

#[test]
fn bad_archives_are_clear_errors() {
    let (t, s) = store();
    let img = tiny_image(t.path(), &s);
    let file = t.path().join("img.tar");
    export(
        &s,
        &img,
        "docker.io/library/app:v1",
        &Transport::OciArchive(file.clone(), None),
    )
    .unwrap();
    let data = fs::read(&file).unwrap();

    let (_t2, s2) = store();
    let junk = t.path().join("junk.tar");
    fs::write(&junk, b"this is not a tar archive at all").unwrap();
    let err = format!("{:#}", import_archive(&s2, &junk).unwrap_err());
    assert!(
        err.contains("neither an oci-archive nor a docker-archive") || err.contains("tar"),
        "{err}"
    );

    let trunc = t.path().join("trunc.tar");
    fs::write(&trunc, &data[..data.len() / 2]).unwrap();
    let err = format!("{:#}", import_archive(&s2, &trunc).unwrap_err());
    assert!(
        err.contains("truncated") || err.contains("incomplete") || err.contains("neither"),
        "{err}"
    );

    // A corrupted layer blob: digest mismatch, and the bad blob is not stored.
    let mut bad = data.clone();
    let layer_hex = img.manifest.layers[0].digest.hex().to_string();
    let pos = bad
        .windows(layer_hex.len())
        .rposition(|w| w == layer_hex.as_bytes())
        .unwrap();
    // The data starts at the next 512-byte boundary after the header.
    let data_start = (pos / 512 + 1) * 512;
    bad[data_start + 100] ^= 0xff;
    let badf = t.path().join("bad.tar");
    fs::write(&badf, &bad).unwrap();
    let (_t3, s3) = store();
    let err = format!("{:#}", import_archive(&s3, &badf).unwrap_err());
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!s3.has_blob(&img.manifest.layers[0].digest));
    assert!(s3.list_all().unwrap().is_empty());

    let dir = t.path().join("plain-dir");
    fs::create_dir(&dir).unwrap();
    let err = format!("{:#}", import_archive(&s2, &dir).unwrap_err());
    assert!(err.contains("not an OCI image layout"), "{err}");
}

#[test]
fn layout_blobs_must_have_their_declared_size() {
    let t = tempfile::tempdir().unwrap();
    let (_t, s) = store();
    let img = import_rootfs(
        &s,
        &{
            let d = t.path().join("tree");
            tiny_tree(&d);
            d
        },
        ManifestFormat::Oci,
    )
    .unwrap();
    let dir = t.path().join("layout");
    export(
        &s,
        &img,
        "docker.io/library/app:v1",
        &Transport::OciLayout(dir.clone(), None),
    )
    .unwrap();
    // The layer blob grows (a descriptor that lies about the size): refused before reading.
    let layer = &img.manifest.layers[0].digest;
    let p = dir.join("blobs/sha256").join(layer.hex());
    let mut data = fs::read(&p).unwrap();
    data.extend_from_slice(b"trailing garbage");
    fs::write(&p, &data).unwrap();
    let (_t2, s2) = store();
    let err = format!("{:#}", import_archive(&s2, &dir).unwrap_err());
    assert!(
        err.contains(&format!("blob {layer} of the layout")) && err.contains("but its descriptor says"),
        "{err}"
    );
    // A symlinked blobs/sha256 directory is refused too.
    let dir2 = t.path().join("layout2");
    fs::create_dir_all(dir2.join("blobs")).unwrap();
    fs::copy(dir.join("oci-layout"), dir2.join("oci-layout")).unwrap();
    fs::copy(dir.join("index.json"), dir2.join("index.json")).unwrap();
    symlink(dir.join("blobs/sha256"), dir2.join("blobs/sha256")).unwrap();
    let err = format!("{:#}", import_archive(&s2, &dir2).unwrap_err());
    assert!(err.contains("is not a directory (a symlink?)"), "{err}");
}
