//! kiln's built images interoperate: skopeo copies them into a registry and kiln pulls
//! them back with the same digest; umoci unpacks them to the same files and owners as
//! kiln's own `-o type=local`.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn dockerfile(s: &Scratch) {
    s.write("ctx/app.txt", "app\n");
    s.write(
        "ctx/Dockerfile",
        "FROM busybox:latest\n\
         RUN mkdir -p /srv/data && echo x > /srv/data/x && chown -R 1000:1001 /srv && chmod 0750 /srv/data\n\
         COPY --chown=33:33 app.txt /srv/app.txt\n\
         RUN ln -s /srv/app.txt /link && rm /bin/vi\n\
         CMD [\"sh\"]\n",
    );
}

fn manifest_digest(root: &Path, name: &str) -> String {
    let out = Kiln::with_root(root).args(["inspect", name]).ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["digest"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no digest in inspect output: {v}"))
}

#[test]
fn pushed_by_skopeo_and_pulled_back_keeps_the_digest() {
    let s = Scratch::new("interop-reg");
    let root = store_with_busybox(&s);
    dockerfile(&s);
    Kiln::with_root(&root)
        .args(["build", "-t", "app:1"])
        .arg(s.join("ctx"))
        .ok();
    let built = manifest_digest(&root, "app:1");
    let layout = s.join("layout");
    Kiln::with_root(&root)
        .args(["push", "app:1"])
        .arg(format!("oci:{}:app", layout.display()))
        .ok();
    let reg = Registry::start(None);
    let mut c = as_user("/usr/bin/skopeo");
    c.args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:app", layout.display()))
        .arg(format!("docker://{}/interop/app:1", reg.addr));
    command_ok(c);
    let fresh = s.join("fresh");
    Kiln::with_root(&fresh)
        .arg("pull")
        .arg(format!("{}/interop/app:1", reg.addr))
        .ok();
    let pulled = manifest_digest(&fresh, &format!("{}/interop/app:1", reg.addr));
    assert_eq!(built, pulled, "the image kiln pulls back must be byte-identical");
}

/// (type, mode, size, uid, gid) of every entry under `root`, owners as the container sees them.
fn tree(root: &Path, owner: &dyn Fn(&Path, &std::fs::Metadata) -> (u32, u32)) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let kind = if md.is_dir() {
                "d"
            } else if md.file_type().is_symlink() {
                "l"
            } else {
                "f"
            };
            let size = if md.is_file() { md.len() } else { 0 };
            let (u, g) = owner(&p, &md);
            // Permission bits of symlinks mean nothing; umoci --rootless adds u+rw(x) so that
            // the unprivileged user can manage the tree: compare group/other bits and type.
            let mode = if kind == "l" { 0 } else { md.mode() & 0o077 };
            out.insert(rel, format!("{kind} {mode:o} {size} {u}:{g}"));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Decodes umoci's `user.rootlesscontainers` xattr (protobuf: 1=uid, 2=gid varints).
fn rootless_owner(p: &Path) -> (u32, u32) {
    let Ok(Some(v)) = xattr::get(p, "user.rootlesscontainers") else {
        return (0, 0);
    };
    let (mut uid, mut gid, mut i) = (0u32, 0u32, 0usize);
    while i < v.len() {
        let field = v[i] >> 3;
        i += 1;
        let mut val: u64 = 0;
        let mut shift = 0;
        while i < v.len() {
            let b = v[i];
            i += 1;
            val |= ((b & 0x7f) as u64) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        match field {
            1 => uid = val as u32,
            2 => gid = val as u32,
            _ => {}
        }
    }
    (uid, gid)
}

fn sub_start(file: &str, name: &str) -> u32 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| *n == name)
        .and_then(|(_, r)| r.split(':').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn umoci_unpack_matches_local_output() {
    let s = Scratch::new("interop-umoci");
    let root = store_with_busybox(&s);
    dockerfile(&s);
    let local = s.join("local");
    Kiln::with_root(&root)
        .args(["build", "-t", "app:1", "-o"])
        .arg(format!("type=local,dest={}", local.display()))
        .arg(s.join("ctx"))
        .ok();
    let layout = s.join("layout");
    Kiln::with_root(&root)
        .args(["push", "app:1"])
        .arg(format!("oci:{}:app", layout.display()))
        .ok();
    let bundle = s.join("bundle");
    let mut c = as_user("/usr/bin/umoci");
    c.args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:app", layout.display()))
        .arg(&bundle);
    command_ok(c);
    // kiln's local output was written inside its user namespace: host ids are the user's
    // own uid for container root and the /etc/subuid range for the rest.
    let (me, mygid) = if is_root() {
        let md = std::fs::metadata(&s.path).unwrap();
        (md.uid(), md.gid())
    } else {
        (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
    };
    let user = if is_root() {
        TEST_USER.to_string()
    } else {
        std::env::var("USER").unwrap_or_default()
    };
    let (su, sg) = (sub_start("/etc/subuid", &user), sub_start("/etc/subgid", &user));
    let from_host = |md: &std::fs::Metadata| {
        let u = if md.uid() == me { 0 } else { md.uid() - su + 1 };
        let g = if md.gid() == mygid { 0 } else { md.gid() - sg + 1 };
        (u, g)
    };
    let kiln_tree = tree(&local, &|_, md| from_host(md));
    let umoci_tree = tree(&bundle.join("rootfs"), &|p, _| rootless_owner(p));
    assert!(kiln_tree.contains_key("srv/app.txt"));
    assert_eq!(kiln_tree.get("srv/app.txt").unwrap(), "f 44 4 33:33");
    assert_eq!(
        kiln_tree.get("srv/data").unwrap().split(' ').next_back().unwrap(),
        "1000:1001"
    );
    assert!(!kiln_tree.contains_key("bin/vi"));
    let diff: Vec<_> = kiln_tree
        .iter()
        .filter(|(k, v)| umoci_tree.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: kiln {v} umoci {:?}", umoci_tree.get(k)))
        .chain(
            umoci_tree
                .keys()
                .filter(|k| !kiln_tree.contains_key(*k))
                .map(|k| format!("{k}: only in umoci")),
        )
        .collect();
    assert!(
        diff.is_empty(),
        "kiln -o type=local and umoci unpack differ:\n{}",
        diff.join("\n")
    );
}
