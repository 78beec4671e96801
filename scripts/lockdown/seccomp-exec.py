#!/usr/bin/env python3
# Vendored from the kiln research notes (shared/env/seccomp-exec.py, the lockdown simulation described in
# shared/research/ci-environments.md part B) so that CI clones without ../shared can run
# scripts/lockdown-matrix.sh. Keep in sync with the original; do not edit here.
"""seccomp-exec.py POLICY [--no-new-privs] -- CMD [ARGS...]

Load a small seccomp filter (through libseccomp.so.2, via ctypes: nothing to
compile) and exec CMD.  The filter survives exec, setuid and fork, so CMD and
everything it starts are confined.  Used by lockdown.sh; run it as root so the
filter can be loaded without PR_SET_NO_NEW_PRIVS (Docker does not set that bit
either, so setuid helpers such as newuidmap keep working unless asked).

POLICY
  userns:ERRNO   only user-namespace creation fails:
                 unshare(CLONE_NEWUSER) / clone(CLONE_NEWUSER) -> ERRNO,
                 clone3 -> ENOSYS (its flags sit in memory, so seccomp cannot
                 read them; libc and Go then fall back to clone).
                   userns:EPERM   Debian kernel.unprivileged_userns_clone=0,
                                  a seccomp profile that only denies userns
                   userns:ENOSPC  user.max_user_namespaces=0 (RHEL/CentOS 7 style)
  docker         the builder-relevant part of Docker's default profile for a
                 container *without* CAP_SYS_ADMIN (moby profiles/seccomp/
                 default.json): every namespace and mount syscall, the kernel
                 keyring, bpf/perf, modules, kexec, reboot, swap, clock, quota,
                 userfaultfd, open_by_handle_at -> EPERM; clone with any
                 CLONE_NEW* flag -> EPERM; clone3 -> ENOSYS.  Docker's real
                 profile is an allowlist; this denylist reproduces what a
                 container builder runs into, not every corner of it.
"""
import ctypes
import errno
import os
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7          # (arg & datum_a) == datum_b
SCMP_FLTATR_CTL_NNP = 3         # libseccomp sets no_new_privs on load unless told not to


def SCMP_ACT_ERRNO(e):
    return 0x00050000 | (e & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x08000000, 0x10000000, 0x20000000
CLONE_NEWNET = 0x40000000
ALL_NS_FLAGS = [CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET]   # = 0x7E020000, Docker's mask

# Denied outright (EPERM) by the "docker" policy.  Grouped as in Docker's profile.
DOCKER_DENY = [
    # namespaces and mounts: CAP_SYS_ADMIN-gated in Docker's profile
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "sethostname", "setdomainname", "syslog", "quotactl", "quotactl_fd",
    "bpf", "perf_event_open", "fanotify_init", "lookup_dcookie",
    # never allowed to containers
    "keyctl", "add_key", "request_key", "userfaultfd", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "acct", "settimeofday", "clock_settime", "ioperm", "iopl", "open_by_handle_at",
    "kcmp", "pidfd_getfd", "move_pages", "migrate_pages", "mbind", "set_mempolicy",
    "get_mempolicy", "vhangup", "uselib", "ustat", "sysfs", "nfsservctl",
]


def main(argv):
    if "--" not in argv or argv.index("--") < 1:
        sys.exit(__doc__)
    sep = argv.index("--")
    opts, cmd = argv[:sep], argv[sep + 1:]
    policy, nnp = opts[0], "--no-new-privs" in opts[1:]
    if not cmd:
        sys.exit("seccomp-exec: no command")

    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        sys.exit("seccomp-exec: seccomp_init failed")
    lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1 if nnp else 0)

    def rule(name, action, *cmps):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:                      # syscall unknown on this architecture
            return
        arr = (ArgCmp * len(cmps))(*cmps) if cmps else None
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if rc < 0:
            sys.exit(f"seccomp-exec: rule for {name}: {os.strerror(-rc)}")

    def flag_set(flag):                 # clone's flags are argument 0 on x86_64/arm64
        return ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag)

    if policy.startswith("userns:"):
        err = getattr(errno, policy.split(":", 1)[1])
        rule("unshare", SCMP_ACT_ERRNO(err), flag_set(CLONE_NEWUSER))
        rule("clone", SCMP_ACT_ERRNO(err), flag_set(CLONE_NEWUSER))
        rule("clone3", SCMP_ACT_ERRNO(errno.ENOSYS))
    elif policy == "docker":
        for name in DOCKER_DENY:
            rule(name, SCMP_ACT_ERRNO(errno.EPERM))
        for flag in ALL_NS_FLAGS:
            rule("clone", SCMP_ACT_ERRNO(errno.EPERM), flag_set(flag))
        rule("clone3", SCMP_ACT_ERRNO(errno.ENOSYS))
        rule("socket", SCMP_ACT_ERRNO(errno.EPERM),       # AF_VSOCK
             ArgCmp(0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, 40))
    else:
        sys.exit(f"seccomp-exec: unknown policy {policy!r}")

    rc = lib.seccomp_load(ctx)
    if rc < 0:
        sys.exit(f"seccomp-exec: seccomp_load: {os.strerror(-rc)}"
                 " (run as root, or pass --no-new-privs)")
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        sys.exit(f"seccomp-exec: {cmd[0]}: {e.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
