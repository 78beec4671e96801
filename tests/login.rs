//! `kiln login` / `kiln logout` against a real `docker-registry` with htpasswd auth, a
//! manifest the registry rejects as invalid, and interop: skopeo and buildah read what kiln
//! pushed.

mod common;

use common::{Kiln, Registry, Scratch, as_user, chown_to_test_user, is_root, kiln_bin, store_with_busybox};
use kiln::digest::Digest;
use kiln::image::*;
use kiln::store::Store;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// kiln as the test user with `stdin` fed to it and extra environment.
fn kiln_with_stdin(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut c = as_user(kiln_bin().to_str().unwrap());
    c.current_dir("/")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A one-layer image named `name` written straight into the store at `root`.
fn small_image(root: &Path, name: &str, annotations: Option<(&str, String)>) -> Digest {
    let store = Store::open(root).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    tar.append_data(&mut h, "hello", &b"hello\n"[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let layer = store.put_bytes(&tar).unwrap();
    let mut config = ImageConfig::empty();
    config.config.cmd = Some(vec!["/hello".into()]);
    config.rootfs.diff_ids.push(Digest::of(&tar));
    config.history.push(History {
        created_by: Some("test".into()),
        ..Default::default()
    });
    let cfg_bytes = serde_json::to_vec(&config).unwrap();
    let cfg = store.put_bytes(&cfg_bytes).unwrap();
    let mut manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: Descriptor::new(MT_OCI_CONFIG, cfg, cfg_bytes.len() as u64),
        layers: vec![Descriptor::new(MT_OCI_LAYER, layer, tar.len() as u64)],
        annotations: Default::default(),
    };
    if let Some((k, v)) = annotations {
        manifest.annotations.insert(k.to_string(), v);
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let d = store.put_bytes(&bytes).unwrap();
    store
        .tag(name, &Descriptor::new(MT_OCI_MANIFEST, d.clone(), bytes.len() as u64))
        .unwrap();
    if is_root() {
        chown_to_test_user(root);
    }
    d
}

#[test]
fn login_checks_the_password_then_push_uses_the_stored_credentials() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let s = Scratch::new("login");
    let root = s.join("store");
    let digest = small_image(&root, "app:1", None);
    let docker_config = s.join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    // Another key that login must keep.
    s.write("docker/config.json", r#"{"psFormat":"table {{.ID}}"}"#);
    let cfg_file = docker_config.join("config.json");
    let dc = docker_config.to_str().unwrap();
    let env = [("DOCKER_CONFIG", dc), ("REGISTRY_AUTH_FILE", "")];
    let root_s = root.to_str().unwrap();

    // Wrong password: one clear line, exit code 1, nothing written.
    let out = kiln_with_stdin(
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        &env,
        "wrong\n",
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "one line: {t}");
    assert!(
        t.contains(&format!(
            "{} refused the credentials of alice: wrong username or password",
            reg.addr
        )),
        "{t}"
    );
    assert!(!std::fs::read_to_string(&cfg_file).unwrap().contains("auths"));

    // Unknown user, given with -p: the same sentence.
    let out = kiln_with_stdin(&["login", "-u", "mallory", "-p", "x", &reg.addr], &env, "");
    assert!(text(&out).contains("wrong username or password"), "{}", text(&out));

    // No credentials yet: push says how to log in.
    let dest = format!("{}/team/app:1", reg.addr);
    let out = kiln_with_stdin(&["--root", root_s, "push", "app:1", &dest], &env, "");
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("kiln login {}", reg.addr)),
        "{}",
        text(&out)
    );

    // Right password: stored in Docker's format, other keys kept, mode 0600.
    let out = kiln_with_stdin(
        &[
            "login",
            "--username",
            "alice",
            "--password-stdin",
            &format!("http://{}/", reg.addr),
        ],
        &env,
        "s3cret\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Login Succeeded");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_file).unwrap()).unwrap();
    assert_eq!(v["psFormat"], "table {{.ID}}");
    use base64::Engine as _;
    let want = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    assert_eq!(v["auths"][reg.addr.as_str()]["auth"], want.as_str(), "{v}");
    let mode = std::fs::metadata(&cfg_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Push (and pull into another store) with the stored credentials.
    let out = kiln_with_stdin(&["--root", root_s, "push", "app:1", &dest], &env, "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest.as_str());
    let other = s.join("other");
    let out = kiln_with_stdin(&["--root", other.to_str().unwrap(), "pull", &dest], &env, "");
    assert!(out.status.success(), "{}", text(&out));

    // $REGISTRY_AUTH_FILE wins over $DOCKER_CONFIG.
    let authfile = s.join("auth/auth.json");
    let af = authfile.to_str().unwrap();
    let env2 = [("DOCKER_CONFIG", dc), ("REGISTRY_AUTH_FILE", af)];
    let out = kiln_with_stdin(
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        &env2,
        "s3cret",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(&authfile).unwrap().contains(&want));

    // Logout forgets them: push is refused again; a second logout says there is nothing to forget.
    let out = kiln_with_stdin(&["logout", &reg.addr], &env, "");
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_file).unwrap()).unwrap();
    assert_eq!(v["psFormat"], "table {{.ID}}");
    assert!(v["auths"].as_object().unwrap().is_empty(), "{v}");
    let out = kiln_with_stdin(&["--root", root_s, "push", "app:1", &dest], &env, "");
    assert!(!out.status.success());
    assert!(text(&out).contains("kiln login"), "{}", text(&out));
    let out = kiln_with_stdin(&["logout", &reg.addr], &env, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!("not logged in to {}", reg.addr)),
        "{}",
        text(&out)
    );
    let out = kiln_with_stdin(&["logout", "--all"], &env2, "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!std::fs::read_to_string(&authfile).unwrap().contains(&want));
}

/// A manifest over the 4 MiB cap (Docker's and containerd's, and docker-registry's own) is
/// refused by kiln when it reads it from the store, before anything is sent: one sentence that
/// names the cap (kiln 0.1 pushed it and relayed the registry's MANIFEST_INVALID).
#[test]
fn an_oversized_manifest_is_refused_before_the_push() {
    let reg = Registry::start(None);
    let s = Scratch::new("manifest-invalid");
    let root = s.join("store");
    small_image(&root, "huge:1", Some(("org.example.blob", "x".repeat(5 << 20))));
    let dest = format!("{}/huge:1", reg.addr);
    let err = Kiln::with_root(&root)
        .args(["push", "huge:1", &dest])
        .env("KILN_RETRY_BASE_MS", "50")
        .fails();
    assert!(
        err.contains("more than the 4 MiB limit for manifests and indexes"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("kiln:")).count(),
        1,
        "one sentence: {err}"
    );
    // Nothing reached the registry.
    let tags = ureq::get(format!("http://{}/v2/huge/tags/list", reg.addr)).call();
    assert!(tags.is_err() || tags.unwrap().status() == 404);
}

fn buildah(root: &Path, args: &[&str]) -> Output {
    let mut c = as_user("buildah");
    c.current_dir("/")
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .stdin(Stdio::null());
    c.output().unwrap()
}

#[test]
fn skopeo_and_buildah_accept_what_kiln_pushed() {
    if !Path::new("/usr/bin/skopeo").exists() || !Path::new("/usr/bin/buildah").exists() {
        eprintln!("SKIPPED: skopeo or buildah is missing (scripts/setup.sh installs them)");
        return;
    }
    let reg = Registry::start(None);
    let s = Scratch::new("interop");
    let root = store_with_busybox(&s);
    let ctx = s.join("ctx");
    s.write(
        "ctx/Dockerfile",
        "FROM busybox\nRUN mkdir -p /data && echo built-by-kiln > /data/msg && chown 1000:1000 /data/msg\nCOPY note.txt /data/\nENV GREETING=hi\nCMD [\"cat\", \"/data/msg\"]\n",
    );
    s.write("ctx/note.txt", "a note\n");
    Kiln::with_root(&root).args(["build", "-t", "interop:1"]).arg(&ctx).ok();
    let bstore: PathBuf = s.join("buildah");
    std::fs::create_dir_all(&bstore).unwrap();
    if is_root() {
        chown_to_test_user(&bstore);
    }
    for (format, tag) in [("oci", "oci"), ("docker", "v2s2")] {
        let dest = format!("{}/interop/app:{tag}", reg.addr);
        let digest = Kiln::with_root(&root)
            .args(["push", "interop:1", &dest, "--format", format])
            .ok();
        let digest = digest.trim();

        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{dest}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], digest, "{v}");
        assert_eq!(v["Layers"].as_array().unwrap().len(), 3, "{v}");
        assert!(v["Env"].as_array().unwrap().iter().any(|e| e == "GREETING=hi"), "{v}");
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{dest}"))
            .output()
            .unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want_mt = if format == "oci" {
            MT_OCI_MANIFEST
        } else {
            MT_DOCKER_MANIFEST
        };
        assert_eq!(raw["mediaType"], want_mt);

        let out = buildah(&bstore, &["pull", "--tls-verify=false", &dest]);
        assert!(out.status.success(), "buildah pull: {}", text(&out));
        let out = buildah(&bstore, &["inspect", "--type", "image", &dest]);
        assert!(out.status.success(), "buildah inspect: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["OCIv1"]["config"]["Cmd"],
            serde_json::json!(["cat", "/data/msg"]),
            "{v}"
        );
        assert_eq!(v["FromImageDigest"], digest, "{v}");
    }
    // buildah unpacked the layers: mount the image in its namespace and read the file back.
    let dest = format!("{}/interop/app:oci", reg.addr);
    let out = buildah(&bstore, &["from", "--name", "ctr", &dest]);
    assert!(out.status.success(), "buildah from: {}", text(&out));
    let script = format!(
        "m=$(buildah --root {r}/storage --runroot {r}/run --storage-driver vfs mount ctr) && cat $m/data/msg $m/data/note.txt && stat -c %u:%g $m/data/msg",
        r = bstore.display()
    );
    let out = as_user("buildah")
        .current_dir("/")
        .args(["unshare", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "buildah unshare: {}", text(&out));
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(got.contains("built-by-kiln") && got.contains("a note"), "{got}");
    assert!(got.contains("1000:1000"), "ownership survives: {got}");
    let _ = buildah(&bstore, &["rm", "--all"]);
    let _ = buildah(&bstore, &["rmi", "--all", "--force"]);
}
