use super::*;
use std::os::unix::fs::symlink;

/// Runs a test with openat2 and with the walk (as on kernels without openat2).
fn both(f: impl Fn(fn(&Path) -> io::Result<Root>)) {
    f(Root::open);
    f(Root::open_walk_only);
}

fn real(fd: &OwnedFd) -> PathBuf {
    std::fs::read_link(fd_path(fd.as_fd())).unwrap()
}

#[test]
fn resolves_inside_the_root() {
    both(|open| {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/", root.join("a/up")).unwrap();
        symlink("../../../../etc", root.join("a/b/esc")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "mine").unwrap();
        let r = open(&root).unwrap();
        assert_eq!(real(&r.resolve("/a/up/a/b", Follow::All).unwrap()), root.join("a/b"));
        let text = std::io::read_to_string(r.open_file("a/b/esc/passwd").unwrap()).unwrap();
        assert_eq!(text, "mine");
        assert_eq!(real(&r.resolve("../../a", Follow::All).unwrap()), root.join("a"));
        assert_eq!(real(&r.resolve("/a/rel", Follow::All).unwrap()), root.join("a/b"));
        // not following the last component: the link itself
        let st = r.stat("/a/rel", Follow::Parents).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        // Follow::Never refuses any link among the parents
        assert_eq!(
            r.locate("/a/rel/x", Follow::Never).err().unwrap().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert!(r.locate("/a/rel", Follow::Never).is_ok());
    });
}

#[test]
fn loops_and_magic_links_are_refused() {
    both(|open| {
        let t = tempfile::tempdir().unwrap();
        symlink("l2", t.path().join("l1")).unwrap();
        symlink("l1", t.path().join("l2")).unwrap();
        let r = open(t.path()).unwrap();
        assert!(r.resolve("/l1/x", Follow::All).is_err());
        // a root that contains procfs (as a step's rootfs does once /proc is mounted)
        let h = open(Path::new("/")).unwrap();
        let e = h.mkdir_all("/proc/self/root/tmp/kiln-magic-test", 0o755).unwrap_err();
        assert!(
            e.to_string().contains("magic link") || e.raw_os_error() == Some(libc::ELOOP),
            "{e}"
        );
        assert!(!Path::new("/tmp/kiln-magic-test").exists());
        // plain procfs links are fine
        assert!(h.resolve("/proc/self/status", Follow::All).is_ok());
    });
}

#[test]
fn mkdir_all_and_touch_follow_links_inside_and_report_what_they_made() {
    both(|open| {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("sys")).unwrap();
        symlink("../run/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        let r = open(&root).unwrap();
        let (_, made) = r.mkdir_all("/sys/x/y", 0o755).unwrap();
        assert!(root.join(outside.strip_prefix("/").unwrap()).join("x/y").is_dir());
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing made outside"
        );
        assert_eq!(made.len(), made.iter().filter(|p| !p.is_absolute()).count());
        let (_, made) = r.touch("/etc/resolv.conf", 0o644).unwrap();
        assert_eq!(made, [PathBuf::from("run"), PathBuf::from("run/resolv.conf")]);
        assert!(root.join("run/resolv.conf").is_file());
        let (_, made) = r.touch("/etc/resolv.conf", 0o644).unwrap();
        assert!(made.is_empty());
    });
}

#[test]
fn remove_never_follows() {
    both(|open| {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        symlink(&outside, root.join("link")).unwrap();
        let r = open(&root).unwrap();
        assert!(r.remove("/link/keep").is_err());
        r.remove_all("/link").unwrap(); // removes the link only
        assert!(outside.join("keep").exists() && !root.join("link").exists());
        std::fs::write(root.join("d/e/f"), "x").unwrap();
        symlink(&outside, root.join("d/e/out")).unwrap();
        r.remove_all("/d").unwrap();
        assert!(!root.join("d").exists() && outside.join("keep").exists());
        r.remove_all("/nothing").unwrap();
    });
}

#[test]
fn read_regular_refuses_fifos_and_big_files() {
    both(|open| {
        let t = tempfile::tempdir().unwrap();
        let r = open(t.path()).unwrap();
        nix::unistd::mkfifo(&t.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(r.read_regular("/fifo", 100).is_err());
        std::fs::write(t.path().join("big"), vec![b'x'; 200]).unwrap();
        assert!(r.read_regular("/big", 100).is_err());
        assert_eq!(r.read_regular("/big", 200).unwrap().unwrap().len(), 200);
        assert!(r.read_regular("/none", 100).unwrap().is_none());
    });
}

#[test]
fn metadata_and_canonical_stay_inside() {
    both(|open| {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "12345").unwrap();
        symlink("/a/b", root.join("ab")).unwrap();
        symlink("../../../../a/b/f", root.join("a/up")).unwrap();
        symlink(t.path(), root.join("host")).unwrap();
        symlink("/nowhere/x", root.join("dangling")).unwrap();
        let r = open(&root).unwrap();
        assert!(r.metadata("ab", Follow::Parents).unwrap().file_type().is_symlink());
        assert!(r.metadata("ab", Follow::All).unwrap().is_dir());
        assert_eq!(r.metadata("/a/up", Follow::All).unwrap().len(), 5);
        assert!(
            r.metadata("/host/r", Follow::All).is_err(),
            "the host path is not inside"
        );
        assert_eq!(r.canonical("/ab/f", Follow::All).unwrap(), PathBuf::from("a/b/f"));
        assert_eq!(r.canonical("a/up", Follow::All).unwrap(), PathBuf::from("a/b/f"));
        assert_eq!(r.canonical("a/up", Follow::Parents).unwrap(), PathBuf::from("a/up"));
        assert_eq!(r.canonical("/ab/../x", Follow::All).unwrap(), PathBuf::from("a/x"));
        assert_eq!(r.canonical("/ab/../../../x", Follow::All).unwrap(), PathBuf::from("x"));
        assert_eq!(r.canonical("/", Follow::All).unwrap(), PathBuf::new());
        assert_eq!(
            r.canonical("dangling", Follow::All).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        std::fs::create_dir(root.join("nowhere")).unwrap();
        assert_eq!(
            r.canonical("dangling", Follow::All).unwrap(),
            PathBuf::from("nowhere/x")
        );
        let h = t.path();
        std::fs::create_dir_all(root.join(h.strip_prefix("/").unwrap())).unwrap();
        assert_eq!(r.canonical("/host", Follow::All).unwrap(), h.strip_prefix("/").unwrap());
    });
}

#[test]
fn create_new_never_follows_and_single_names_stay_in_the_directory() {
    both(|open| {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(&outside, "keep").unwrap();
        symlink(&outside, root.join("d/link")).unwrap();
        symlink("/d", root.join("dl")).unwrap();
        let r = open(&root).unwrap();
        use std::io::Write;
        r.create_new("/dl/new", 0o644).unwrap().write_all(b"n").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("d/new")).unwrap(), "n");
        let d = r.sub("d").unwrap();
        assert_eq!(
            d.create_new("link", 0o644).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(
            r.create_new("/dl/link", 0o644).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        d.create_new("f", 0o600).unwrap();
        assert!(root.join("d/f").is_file());
        assert!(d.metadata("link", Follow::Parents).unwrap().file_type().is_symlink());
        assert!(d.metadata("f", Follow::Parents).unwrap().is_file());
        assert!(d.metadata("none", Follow::Parents).is_err());
        assert_eq!(Root::single_name(Path::new("a")), Some(OsStr::new("a")));
        for p in ["/a", "a/b", "..", ".", "a/", ""] {
            assert_eq!(Root::single_name(Path::new(p)), None, "{p}");
        }
    });
}

#[test]
fn read_host_regular_refuses_fifos_and_big_files() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let e = Root::read_host_regular(&fifo, 100).unwrap_err();
    assert!(e.to_string().contains("is not a regular file"), "{e}");
    let big = t.path().join("big");
    std::fs::write(&big, vec![b'x'; 200]).unwrap();
    assert!(
        Root::read_host_regular(&big, 100)
            .unwrap_err()
            .to_string()
            .contains("larger than 100")
    );
    symlink(&big, t.path().join("link")).unwrap();
    assert_eq!(Root::read_host_regular(&t.path().join("link"), 200).unwrap().len(), 200);
    assert_eq!(
        Root::read_host_regular(&t.path().join("none"), 1).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn xattrs_land_on_the_object_itself() {
    both(|open| {
        let t = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        std::fs::create_dir_all(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("f"), "x").unwrap();
        symlink("f", t.path().join("l")).unwrap();
        let r = open(t.path()).unwrap();
        if r.set_xattr("/d", "user.kiln.test", b"1").is_err() {
            return; // no user xattrs on this filesystem
        }
        r.set_xattr("/f", "user.kiln.test", b"2").unwrap();
        assert_eq!(xattr::get(t.path().join("d"), "user.kiln.test").unwrap().unwrap(), b"1");
        assert_eq!(r.get_xattr("/d", "user.kiln.test").unwrap().unwrap(), b"1");
        assert_eq!(r.get_xattr("/f", "user.kiln.test").unwrap().unwrap(), b"2");
        assert!(r.list_xattrs("/d").unwrap().iter().any(|n| n == "user.kiln.test"));
        assert_eq!(r.get_xattr("/d", "user.kiln.none").unwrap(), None);
        assert!(
            r.set_xattr("/l", "user.kiln.test", b"3").is_err(),
            "never through a link"
        );
        assert_eq!(xattr::get(t.path().join("f"), "user.kiln.test").unwrap().unwrap(), b"2");
    });
}
