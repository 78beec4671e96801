# Derives kiln's seccomp/default.json from containers-common's seccomp.json (Apache-2.0),
# aligned with Docker's (moby) default profile semantics.
import json, sys
src = json.load(open(sys.argv[1]))
allow = list(src["syscalls"][1]["names"])
assert src["syscalls"][1]["action"] == "SCMP_ACT_ALLOW"
sys_admin = ["bpf","clone","clone3","fanotify_init","fsconfig","fsmount","fsopen","fspick","lookup_dcookie",
  "mount","mount_setattr","move_mount","open_tree","perf_event_open","quotactl","quotactl_fd",
  "setdomainname","sethostname","setns","syslog","umount","umount2","unshare"]
gated = {
  "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
  "CAP_SYS_BOOT": ["reboot"],
  "CAP_SYS_CHROOT": ["chroot"],
  "CAP_SYS_MODULE": ["delete_module","init_module","finit_module"],
  "CAP_SYS_PACCT": ["acct"],
  "CAP_SYS_PTRACE": ["kcmp","pidfd_getfd","process_madvise","process_vm_readv","process_vm_writev","ptrace"],
  "CAP_SYS_RAWIO": ["iopl","ioperm"],
  "CAP_SYS_TIME": ["settimeofday","stime","clock_settime","clock_settime64"],
  "CAP_SYS_TTY_CONFIG": ["vhangup"],
  "CAP_SYS_NICE": ["get_mempolicy","mbind","set_mempolicy","set_mempolicy_home_node"],
  "CAP_SYSLOG": ["syslog"],
  "CAP_BPF": ["bpf"],
  "CAP_PERFMON": ["perf_event_open"],
}
removed = set(sys_admin) | {n for v in gated.values() for n in v} | {
  "keyctl","add_key","request_key","io_uring_enter","io_uring_register","io_uring_setup","socket","personality",
  "ptrace","process_vm_readv","process_vm_writev"}
allow = sorted(n for n in allow if n not in removed)
# Docker allows these unconditionally too.
for n in ["socketcall","name_to_handle_at","pidfd_open","pidfd_send_signal","rseq","landlock_add_rule",
          "landlock_create_ruleset","landlock_restrict_self","memfd_secret","process_mrelease","futex_waitv",
          "cachestat","fchmodat2","map_shadow_stack","futex_wait","futex_wake","futex_requeue","statmount",
          "listmount","mseal","epoll_pwait2","close_range","faccessat2","openat2","copy_file_range"]:
    if n not in allow: allow.append(n)
allow.sort()
rules = [{"names": allow, "action": "SCMP_ACT_ALLOW"}]
rules += [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
           "args": [{"index": 0, "value": v, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]} for v in [0, 8, 131072, 131080, 4294967295]]
rules += [
  {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
   "comment": "every address family but AF_VSOCK"},
  {"names": ["sync_file_range2","swapcontext"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["ppc64le"]}},
  {"names": ["arm_fadvise64_64","arm_sync_file_range","sync_file_range2","breakpoint","cacheflush","set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm","arm64"]}},
  {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64","x32"]}},
  {"names": ["modify_ldt"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64","x32","x86"]}},
  {"names": ["s390_pci_mmio_read","s390_pci_mmio_write","s390_runtime_instr"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390","s390x"]}},
  {"names": ["riscv_flush_icache"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["riscv64"]}},
  {"names": sys_admin, "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
  {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
   "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
   "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390","s390x"]},
   "comment": "clone without namespace flags"},
  {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
   "args": [{"index": 1, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
   "includes": {"arches": ["s390","s390x"]}, "excludes": {"caps": ["CAP_SYS_ADMIN"]},
   "comment": "s390 parameter ordering for clone is different"},
  {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]},
   "comment": "ENOSYS so that glibc falls back to clone(2)"},
]
for cap, names in gated.items():
    rules.append({"names": names, "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}})
rules.append({"names": ["process_vm_readv","process_vm_writev","ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}})
out = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
       "archMap": src["archMap"] + [{"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": []}],
       "syscalls": rules}
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(len(allow), "allowed;", len(rules), "rules")
