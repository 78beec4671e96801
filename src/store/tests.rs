use super::*;
use crate::image::MT_OCI_LAYER_GZIP;

fn tiny_image(store: &Store, format: ManifestFormat) -> Image {
    let layer = store.put_bytes(b"not really a layer").unwrap();
    let mut cfg = ImageConfig::empty();
    cfg.rootfs.diff_ids.push(layer.clone());
    store
        .write_image(&cfg, vec![Descriptor::new(MT_OCI_LAYER_GZIP, layer, 18)], format)
        .unwrap()
}

fn desc(img: &Image) -> Descriptor {
    let bytes = serde_json::to_vec(&img.manifest).unwrap();
    Descriptor::new(
        img.manifest.media_type.as_deref().unwrap(),
        img.manifest_digest.clone(),
        bytes.len() as u64,
    )
}

#[test]
fn open_creates_layout() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    assert_eq!(
        fs::read_to_string(t.path().join("oci-layout")).unwrap(),
        OCI_LAYOUT_JSON
    );
    assert!(s.read_index().unwrap().manifests.is_empty());
    assert!(t.path().join("blobs/sha256").is_dir());
    Store::open(t.path()).unwrap();
}

#[test]
fn blob_mismatch_stores_nothing() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let wrong = Digest::of(b"something else");
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"hello").unwrap();
    let err = w.commit(Some(&wrong)).unwrap_err().to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!s.has_blob(&Digest::of(b"hello")));
    assert!(!s.has_blob(&wrong));
    assert_eq!(
        fs::read_dir(t.path().join("tmp")).unwrap().count(),
        0,
        "temp file left behind"
    );
    assert_eq!(fs::read_dir(t.path().join("blobs/sha256")).unwrap().count(), 0);
}

#[test]
fn blob_commit_and_drop() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"hello").unwrap();
    let (d, n) = w.commit(Some(&Digest::of(b"hello"))).unwrap();
    assert_eq!(n, 5);
    assert_eq!(s.read_blob(&d).unwrap(), b"hello");
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"discarded").unwrap();
    drop(w);
    assert!(!s.has_blob(&Digest::of(b"discarded")));
    assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    // Corruption is detected on read.
    fs::write(s.blob_path(&d), b"jello").unwrap();
    assert!(s.read_blob(&d).unwrap_err().to_string().contains("corrupt"));
}

#[test]
fn tag_untag_and_normalisation() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let img = tiny_image(&s, ManifestFormat::Oci);
    s.tag("busybox", &desc(&img)).unwrap();
    s.tag("docker.io/library/busybox:v1", &desc(&img)).unwrap();
    let names: Vec<String> = s.list().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["docker.io/library/busybox:latest", "docker.io/library/busybox:v1"]
    );
    // Any spelling of the same reference finds it.
    for n in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox:latest",
    ] {
        assert_eq!(s.load_image(n).unwrap().manifest_digest, img.manifest_digest, "{n}");
    }
    // Retagging replaces, not duplicates.
    s.tag("busybox:latest", &desc(&img)).unwrap();
    assert_eq!(s.list().unwrap().len(), 2);
    // The index is valid JSON with the annotation and the OCI media type.
    let raw: serde_json::Value = serde_json::from_slice(&fs::read(t.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(raw["mediaType"], MT_OCI_INDEX);
    assert_eq!(
        raw["manifests"][0]["annotations"][ANNOTATION_REF_NAME],
        "docker.io/library/busybox:v1"
    );
    assert!(s.untag("busybox:v1").unwrap());
    assert!(!s.untag("busybox:v1").unwrap());
    assert_eq!(s.list().unwrap().len(), 1);
    let err = s.load_image("nope").unwrap_err().to_string();
    assert!(
        err.contains("image nope (docker.io/library/nope:latest) not found in the store at"),
        "{err}"
    );
    // No stray temp files from the atomic index writes.
    assert!(
        fs::read_dir(t.path())
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp"))
    );
}

#[test]
fn load_by_id_prefix_and_digests() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let img = tiny_image(&s, ManifestFormat::Docker);
    assert_eq!(img.manifest.media_type.as_deref(), Some(MT_DOCKER_MANIFEST));
    assert_eq!(img.manifest.layers[0].media_type, MT_DOCKER_LAYER_GZIP);
    assert_eq!(img.manifest.config.media_type, MT_DOCKER_CONFIG);
    s.tag("app:v1", &desc(&img)).unwrap();
    let id = img.id().clone();
    assert_eq!(s.load_image(id.short()).unwrap().manifest_digest, img.manifest_digest);
    assert_eq!(
        s.load_image(&id.hex()[..4]).unwrap().manifest_digest,
        img.manifest_digest
    );
    assert_eq!(s.load_image(id.as_str()).unwrap().manifest_digest, img.manifest_digest);
    assert_eq!(s.load_image(img.manifest_digest.as_str()).unwrap().config, img.config);
    assert!(s.load_image("0000000000ff").is_err() || id.hex().starts_with("0000000000ff"));
}

#[test]
fn docker_manifests_get_an_oci_view() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let img = tiny_image(&s, ManifestFormat::Docker);
    s.tag("app:v1", &desc(&img)).unwrap();
    s.tag("app:v1", &desc(&img)).unwrap();
    let raw = s.read_index().unwrap().manifests;
    assert_eq!(raw.len(), 2, "the Docker manifest and its OCI view");
    let view = raw.iter().find(|e| e.media_type == MT_OCI_MANIFEST).unwrap();
    assert_eq!(view.annotations[ANNOTATION_REF_NAME], "docker.io/library/app:v1");
    let orig = raw.iter().find(|e| e.media_type == MT_DOCKER_MANIFEST).unwrap();
    assert!(
        !orig.annotations.contains_key(ANNOTATION_REF_NAME),
        "one standard name per image"
    );
    assert_eq!(orig.annotations[ANNOTATION_KILN_REF_NAME], "docker.io/library/app:v1");
    let vm: Manifest = serde_json::from_slice(&s.read_blob(&view.digest).unwrap()).unwrap();
    assert_eq!(vm.config.digest, *img.id());
    assert_eq!(vm.layers[0].media_type, MT_OCI_LAYER_GZIP);
    // kiln itself sees one image, with the original manifest.
    assert_eq!(s.list().unwrap().len(), 1);
    assert_eq!(s.load_image("app:v1").unwrap().manifest_digest, img.manifest_digest);
    assert!(s.untag("app:v1").unwrap());
    assert!(s.read_index().unwrap().manifests.is_empty());
    s.tag("app:v1", &desc(&img)).unwrap();
    assert_eq!(
        s.remove_manifest(&img.manifest_digest).unwrap(),
        ["docker.io/library/app:v1"]
    );
    assert!(s.read_index().unwrap().manifests.is_empty());
    // Tagging a manifest that is not in the store is an error.
    let bogus = Descriptor::new(MT_OCI_MANIFEST, Digest::of(b"nothing"), 7);
    assert!(s.tag("x:1", &bogus).is_err());
}

#[test]
fn load_picks_platform_from_index() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let img = tiny_image(&s, ManifestFormat::Oci);
    let mut other = ImageConfig::empty();
    other.architecture = "s390x-not-here".into();
    let img2 = s.write_image(&other, vec![], ManifestFormat::Oci).unwrap();
    let mut d1 = desc(&img);
    d1.platform = Some(crate::image::Platform {
        architecture: host_arch().into(),
        os: "linux".into(),
        variant: None,
        os_version: None,
    });
    let mut d2 = desc(&img2);
    d2.platform = Some(crate::image::Platform {
        architecture: "s390x-not-here".into(),
        os: "linux".into(),
        variant: None,
        os_version: None,
    });
    let idx = Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.into()),
        manifests: vec![d2, d1],
        annotations: Default::default(),
    };
    let bytes = serde_json::to_vec(&idx).unwrap();
    let id = s.put_bytes(&bytes).unwrap();
    s.tag("multi:1", &Descriptor::new(MT_OCI_INDEX, id, bytes.len() as u64))
        .unwrap();
    assert_eq!(s.load_image("multi:1").unwrap().manifest_digest, img.manifest_digest);
}

#[test]
fn symlink_and_fifo_blobs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(&t.path().join("store")).unwrap();
    let d = s.put_bytes(b"{}").unwrap();
    // A symlink to a file with the right content outside the store is still refused.
    let outside = t.path().join("outside");
    fs::write(&outside, b"{}").unwrap();
    fs::remove_file(s.blob_path(&d)).unwrap();
    std::os::unix::fs::symlink(&outside, s.blob_path(&d)).unwrap();
    assert!(!s.has_blob(&d));
    let err = format!("{:#}", s.read_blob(&d).unwrap_err());
    assert!(
        err.contains(&format!("refusing blob {d}")) && err.contains("it is a symlink to"),
        "{err}"
    );
    assert!(s.open_blob(&d).is_err());
    // A FIFO neither hangs nor is read.
    fs::remove_file(s.blob_path(&d)).unwrap();
    nix::unistd::mkfifo(&s.blob_path(&d), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = format!("{:#}", s.read_blob(&d).unwrap_err());
    assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
    // Publishing the real blob replaces the FIFO.
    fs::remove_file(s.blob_path(&d)).unwrap();
    assert_eq!(s.put_bytes(b"{}").unwrap(), d);
    assert_eq!(s.read_blob(&d).unwrap(), b"{}");
}

#[test]
fn oversized_json_blobs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let big = vec![b' '; (crate::image::MAX_MANIFEST_SIZE + 1) as usize];
    let d = s.put_bytes(&big).unwrap();
    let err = s.read_json_blob(&d, JsonKind::Manifest).unwrap_err().to_string();
    assert!(
        err.contains("more than the 4 MiB limit for manifests and indexes"),
        "{err}"
    );
    assert_eq!(s.read_json_blob(&d, JsonKind::Config).unwrap().len(), big.len());
}

#[test]
fn deep_indexes_and_diff_id_mismatches_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let img = tiny_image(&s, ManifestFormat::Oci);
    let wrap = |child: Descriptor| {
        let idx = Index {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.into()),
            manifests: vec![child],
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&idx).unwrap();
        Descriptor::new(MT_OCI_INDEX, s.put_bytes(&bytes).unwrap(), bytes.len() as u64)
    };
    let mut top = desc(&img);
    for _ in 0..MAX_INDEX_DEPTH {
        top = wrap(top);
    }
    // MAX_INDEX_DEPTH indexes are fine, one more is not; 1000 neither overflow nor load.
    assert_eq!(s.load_descriptor(&top).unwrap().manifest_digest, img.manifest_digest);
    top = wrap(top);
    let err = s.load_descriptor(&top).unwrap_err().to_string();
    assert!(err.contains("indexes are nested more than 4 deep"), "{err}");
    for _ in 0..1000 {
        top = wrap(top);
    }
    assert!(s.load_descriptor(&top).is_err());

    let mut cfg = ImageConfig::empty();
    cfg.rootfs.diff_ids = vec![Digest::of(b"a"), Digest::of(b"b")];
    let layer = s.put_bytes(b"a").unwrap();
    let bad = s
        .write_image(&cfg, vec![Descriptor::new(MT_OCI_LAYER, layer, 1)], ManifestFormat::Oci)
        .unwrap();
    let err = s.load_descriptor(&desc(&bad)).unwrap_err().to_string();
    assert!(
        err.contains("lists 2 diff_ids but manifest") && err.contains("has 1 layers"),
        "{err}"
    );
}

#[test]
fn concurrent_tagging_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let img = tiny_image(&s, ManifestFormat::Oci);
    let d = desc(&img);
    std::thread::scope(|sc| {
        for i in 0..4 {
            let s = Store::open(t.path()).unwrap();
            let d = d.clone();
            sc.spawn(move || {
                for j in 0..10 {
                    s.tag(&format!("app:t{i}-{j}"), &d).unwrap();
                }
            });
        }
    });
    assert_eq!(s.list().unwrap().len(), 40);
}
