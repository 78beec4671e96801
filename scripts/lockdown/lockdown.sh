#!/usr/bin/env bash
# Vendored from the kiln research notes (shared/env/lockdown.sh, the lockdown simulation described in
# shared/research/ci-environments.md part B) so that CI clones without ../shared can run
# scripts/lockdown-matrix.sh. Keep in sync with the original; do not edit here.
# lockdown.sh - run a command inside a simulation of a locked-down build environment
# (developer shells without subuid/userns/fuse, GitLab Docker-executor jobs,
# Kubernetes/OpenShift restricted pods), without Docker or Kubernetes.
#
#   lockdown.sh [-k] PROFILE -- CMD [ARGS...]   run CMD in PROFILE, from the current directory
#   lockdown.sh --list                           list the profiles
#   lockdown.sh --probe PROFILE                  print what PROFILE allows (one key=value line)
#   lockdown.sh --selftest                       probe every profile and check it does what it says
#
#   -k   keep the scratch state directory (HOME, container storage) and print its path
#
# Environment:
#   LOCKDOWN_USER=tester   the unprivileged account used by the non-root profiles
#                          (created with useradd -m if missing; Debian then gives it subuids)
#   LOCKDOWN_RO_ROOT=1     also make / read-only (Kubernetes readOnlyRootFilesystem); the
#                          scratch state and the current directory stay writable
#   The caller's environment is passed through (BUILDAH_ISOLATION, CI_*, ...); HOME, USER,
#   LOGNAME, XDG_RUNTIME_DIR and TMPDIR are replaced by fresh per-run values.
#
# Run as root on the host.  Nothing global is changed: each run gets its own mount namespace
# (plus pid/uts/ipc namespaces for the container profiles), its own empty HOME and container
# storage under /var/tmp/lockdown.*, removed afterwards.  The network namespace is shared, so
# 127.0.0.1:5000 stays reachable (a CI job reaches its registry over the network the same way).
#
# Building blocks: unshare(1) for namespaces, mount(8) for /dev, /proc, /sys and /etc/sub[ug]id,
# seccomp-exec.py (next to this script) for the seccomp filter, setpriv(1) for uid/gid,
# capability bounding set and no_new_privs.
#
# Host quirk handled for every profile: this VM mounts cgroup v1 *and* a cgroup2 'unified'
# hierarchy ("hybrid"); crun 1.8 refuses that ("cgroups in hybrid mode not supported"), which
# would mask every other result for OCI isolation, so the cgroup2 mount is hidden in the sandbox.
set -euo pipefail

SELF=$(readlink -f "$0")
HERE=$(dirname "$SELF")
HELPER=$HERE/seccomp-exec.py
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
LOCKDOWN_USER=${LOCKDOWN_USER:-tester}

# Docker's default capability set (moby daemon/pkg/oci/caps/defaults.go)
DOCKER_CAPS=chown,dac_override,fsetid,fowner,mknod,net_raw,setgid,setuid,setfcap,setpcap,net_bind_service,sys_chroot,kill,audit_write
# Docker's masked and read-only paths (moby daemon/pkg/oci/defaults.go)
DOCKER_MASKED="/proc/acpi /proc/asound /proc/interrupts /proc/kcore /proc/keys /proc/latency_stats
  /proc/sched_debug /proc/scsi /proc/timer_list /proc/timer_stats /sys/devices/virtual/powercap /sys/firmware"
DOCKER_READONLY="/proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger"

PROFILES="host-root rootless no-subuid no-new-privs no-userns userns-limit0 no-fuse gitlab-docker
  gitlab-docker-user gitlab-docker-unconfined k8s-restricted openshift-restricted"

# profile NAME: sets WHO (root | user | uid:gid), CAPS (all | docker | none), SECCOMP (none |
# userns:EPERM | userns:ENOSPC | docker), NNP (0/1), DEV (host | nofuse | docker | docker+fuse),
# CONTAINER (0/1: new pid/uts/ipc ns, fresh masked /proc, read-only /sys), SUBID (keep | empty), DESC.
profile() {
  WHO=root CAPS=all SECCOMP=none NNP=0 DEV=host CONTAINER=0 SUBID=keep
  case $1 in
  host-root) DESC="baseline: real root on the host, nothing taken away" ;;
  rootless) WHO=user
    DESC="baseline developer shell: unprivileged user with /etc/subuid range, userns, /dev/fuse" ;;
  no-subuid) WHO=user SUBID=empty
    DESC="unprivileged user with no /etc/subuid or /etc/subgid entry (single-uid userns only)" ;;
  no-new-privs) WHO=user NNP=1
    DESC="unprivileged user with subuids and userns, but no_new_privs set, so setuid newuidmap cannot map the range" ;;
  no-userns) WHO=user SECCOMP=userns:EPERM
    DESC="unprivileged user; creating a user namespace fails with EPERM (Debian unprivileged_userns_clone=0, seccomp)" ;;
  userns-limit0) WHO=user SECCOMP=userns:ENOSPC
    DESC="unprivileged user; creating a user namespace fails with ENOSPC (user.max_user_namespaces=0)" ;;
  no-fuse) WHO=user DEV=nofuse
    DESC="unprivileged user with subuids and userns, but no /dev/fuse" ;;
  gitlab-docker) CAPS=docker SECCOMP=docker DEV=docker CONTAINER=1
    DESC="GitLab Docker executor, privileged=false, image runs as root: Docker default caps+seccomp, masked /proc, no /dev/fuse" ;;
  gitlab-docker-user) WHO=user CAPS=docker SECCOMP=docker DEV=docker CONTAINER=1
    DESC="as gitlab-docker, but the image has USER <non-root> with a subuid range (e.g. quay.io/buildah/stable as 'build')" ;;
  gitlab-docker-unconfined) CAPS=docker DEV=docker+fuse CONTAINER=1
    DESC="as gitlab-docker with runner security_opt seccomp:unconfined and devices=[/dev/fuse] (buildah's documented minimum)" ;;
  k8s-restricted) WHO=user CAPS=none SECCOMP=docker NNP=1 DEV=docker CONTAINER=1
    DESC="Kubernetes Pod Security 'restricted': runAsNonRoot, allowPrivilegeEscalation=false, drop ALL, RuntimeDefault seccomp" ;;
  openshift-restricted) WHO=1000680000:0 CAPS=none SECCOMP=docker NNP=1 DEV=docker CONTAINER=1
    DESC="OpenShift restricted-v2 SCC: arbitrary uid without passwd or subuid entry, gid 0, drop ALL, no_new_privs" ;;
  *) echo "lockdown.sh: unknown profile '$1' (try --list)" >&2; exit 2 ;;
  esac
}

die() { echo "lockdown.sh: $*" >&2; exit 2; }

ensure_user() {
  id "$LOCKDOWN_USER" >/dev/null 2>&1 || useradd -m "$LOCKDOWN_USER"
}

# ---------------------------------------------------------------- inside the new namespaces
hide_hybrid_cgroup2() {
  if [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == tmpfs ]] && mountpoint -q /sys/fs/cgroup/unified; then
    umount -l /sys/fs/cgroup/unified
  fi
}

# A /dev like Docker's: tmpfs with null zero full random urandom tty, its own devpts, shm, mqueue.
dev_docker() {
  mount -t tmpfs -o nosuid,strictatime,mode=755,size=65536k tmpfs /dev
  local n
  for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$n"
    mknod -m 666 "/dev/$name" c "$major" "$minor"
  done
  mkdir /dev/pts /dev/shm /dev/mqueue
  mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
  ln -s pts/ptmx /dev/ptmx
  mount -t tmpfs -o nosuid,noexec,nodev,mode=1777 shm /dev/shm
  mount -t mqueue -o nosuid,noexec,nodev mqueue /dev/mqueue
  ln -s /proc/self/fd /dev/fd
  ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
}

# The host's /dev, minus /dev/fuse.
dev_without_fuse() {
  local old=$SCRATCH/hostdev m
  mkdir -p "$old"; mount --rbind /dev "$old"
  mount -t tmpfs -o nosuid,mode=755 tmpfs /dev
  cp -a -x "$old"/. /dev/ 2>/dev/null || true
  rm -f /dev/fuse
  for m in pts shm mqueue hugepages; do
    if mountpoint -q "$old/$m"; then mkdir -p "/dev/$m"; mount --bind "$old/$m" "/dev/$m"; fi
  done
  umount -l "$old"
}

# A fresh /proc for the new pid namespace with Docker's masks, and a read-only /sys.
proc_sys_docker() {
  mount -t proc -o nosuid,noexec,nodev proc /proc
  local p
  for p in $DOCKER_MASKED; do
    if [[ -d $p ]]; then mount -t tmpfs -o ro,nosuid,nodev,noexec tmpfs "$p"
    elif [[ -e $p ]]; then mount --bind /dev/null "$p"; fi
  done
  for p in $DOCKER_READONLY; do
    [[ -e $p ]] && mount --bind "$p" "$p" && mount -o bind,remount,ro,nosuid,nodev,noexec "$p"
  done
  findmnt -R -n -r -o TARGET /sys | sort -r | while read -r p; do
    mount -o bind,remount,ro,nosuid,nodev,noexec "$p" 2>/dev/null || true
  done
}

inner() {  # __inner PROFILE SCRATCH WORKDIR -- CMD...
  local name=$1; SCRATCH=$2; local workdir=$3; shift 4
  profile "$name"
  hide_hybrid_cgroup2

  # who runs the command
  local uid gid pw_name="" home=$SCRATCH/home
  case $WHO in
  root) uid=0 gid=0 ;;
  user) uid=$(id -u "$LOCKDOWN_USER") gid=$(id -g "$LOCKDOWN_USER") pw_name=$LOCKDOWN_USER ;;
  *) uid=${WHO%:*} gid=${WHO#*:} ;;
  esac
  mkdir -p "$home" "$SCRATCH/run" "$SCRATCH/tmp" "$SCRATCH/lib-containers" "$SCRATCH/run-containers"
  chown "$uid:$gid" "$home" "$SCRATCH/run" "$SCRATCH/tmp"
  chmod 700 "$SCRATCH/run"
  if [[ $uid == 0 ]]; then  # rootful container storage lives in /var/lib/containers, /run/containers
    mount --bind "$SCRATCH/lib-containers" /var/lib/containers 2>/dev/null ||
      { mkdir -p /var/lib/containers && mount --bind "$SCRATCH/lib-containers" /var/lib/containers; }
    mkdir -p /run/containers && mount --bind "$SCRATCH/run-containers" /run/containers
  fi

  if [[ $SUBID == empty ]]; then
    : >"$SCRATCH/empty"
    mount --bind "$SCRATCH/empty" /etc/subuid
    mount --bind "$SCRATCH/empty" /etc/subgid
  fi
  case $DEV in
  nofuse) dev_without_fuse ;;
  docker) dev_docker ;;
  docker+fuse) dev_docker; mknod -m 666 /dev/fuse c 10 229 ;;
  esac
  if [[ $CONTAINER == 1 ]]; then
    proc_sys_docker
    hostname "runner-lockdown-project-0-concurrent-0"
  fi
  if [[ ${LOCKDOWN_RO_ROOT:-0} == 1 ]]; then
    mount --bind "$SCRATCH" "$SCRATCH"
    mount --bind "$workdir" "$workdir"
    mount -o bind,remount,ro /
  fi

  # environment: the caller's, with a fresh identity-specific part
  export HOME=$home XDG_RUNTIME_DIR=$SCRATCH/run TMPDIR=$SCRATCH/tmp
  if [[ -n $pw_name ]]; then export USER=$pw_name LOGNAME=$pw_name
  elif [[ $uid == 0 ]]; then export USER=root LOGNAME=root
  else unset USER LOGNAME; fi
  [[ $uid == 0 ]] && unset XDG_RUNTIME_DIR
  unset SUDO_USER SUDO_UID SUDO_GID SUDO_COMMAND MAIL

  # privilege drop: seccomp (loaded while still root, so no_new_privs is not forced),
  # then setpriv for uid/gid/groups, capability bounding set and no_new_privs.
  local chain=() sp=()
  [[ $SECCOMP != none ]] && chain+=("$PY" "$HELPER" "$SECCOMP" --)
  case $CAPS in
  docker) sp+=(--bounding-set=-all,+${DOCKER_CAPS//,/,+} --inh-caps=-all) ;;
  none) sp+=(--bounding-set=-all --inh-caps=-all) ;;
  esac
  if [[ $uid != 0 ]]; then
    sp+=(--reuid="$uid" --regid="$gid")
    if [[ -n $pw_name ]]; then sp+=(--init-groups); else sp+=(--clear-groups); fi
  fi
  [[ $NNP == 1 ]] && sp+=(--no-new-privs)
  ((${#sp[@]})) && chain+=(setpriv "${sp[@]}" --)

  cd "$workdir"
  # not exec: in the container profiles this shell is pid 1 and reaps orphans, like a job's shell
  "${chain[@]}" "$@" && rc=0 || rc=$?
  exit "$rc"
}

# ---------------------------------------------------------------- on the host
run_profile() {  # run_profile KEEP PROFILE CMD...
  local keep=$1 name=$2; shift 2
  profile "$name"
  [[ $(id -u) == 0 ]] || die "must run as root (it builds the sandbox, then drops privileges)"
  [[ $WHO == user ]] && ensure_user
  local ns=(--mount --propagation private) rc
  scratch=$(mktemp -d /var/tmp/lockdown.XXXXXX)   # global: the EXIT trap needs it
  chmod 755 "$scratch"
  ((keep)) || trap 'rm -rf "$scratch"' EXIT       # also on Ctrl-C
  [[ $CONTAINER == 1 ]] && ns+=(--pid --fork --uts --ipc)
  unshare "${ns[@]}" -- "$SELF" __inner "$name" "$scratch" "$PWD" -- "$@" && rc=0 || rc=$?
  ((keep)) && echo "lockdown.sh: state kept in $scratch" >&2
  return "$rc"
}

# One line of key=value facts, measured from inside the profile.
PROBE='
e() { "$@" >/dev/null 2>$T/err && echo ok || { sed -n "1s/.*: //p" $T/err | tr -d . | tr " " _; }; }
T=$(mktemp -d)
st() { sed -n "s/^$1:[[:space:]]*//p" /proc/self/status; }
capeff=$(st CapEff); n=0; v=$((16#$capeff)); while ((v)); do n=$((n + (v & 1))); v=$((v >> 1)); done
me=$(id -un 2>/dev/null || echo "?")
sub=no; grep -qE "^($me|$(id -u)):" /etc/subuid 2>/dev/null && sub=yes
fuse=absent; [[ -c /dev/fuse ]] && { fuse=present; (exec 3<>/dev/fuse) 2>/dev/null && fuse=usable; }
masked=no; grep -qE " /proc/(keys|timer_list|kcore) " /proc/self/mountinfo && masked=yes
echo "uid=$(id -u) gid=$(id -g) caps=$n nnp=$(st NoNewPrivs) seccomp=$(st Seccomp) subuid=$sub fuse=$fuse" \
 "userns=$(e unshare -U true)" "userns_root=$(e unshare -Ur true)" \
 "userns_subuid=$(e unshare -U --map-auto --map-root-user true)" \
 "mountns=$(e unshare -m true)" "userns_mount=$(e unshare -Urm mount -t tmpfs none /mnt)" \
 "userns_proc=$(e unshare -Urmpf mount -t proc proc /proc)" "chroot=$(e chroot / true)" "proc_masked=$masked"
rm -rf $T
'

probe() { cd / && run_profile 0 "$1" bash -c "$PROBE"; }

# expected facts per profile (a subset of the probe's keys)
EXPECT_host_root="uid=0 caps=40 userns=ok mountns=ok fuse=usable proc_masked=no"
EXPECT_rootless="caps=0 subuid=yes userns=ok userns_subuid=ok userns_proc=ok fuse=usable mountns=Operation_not_permitted"
EXPECT_no_subuid="subuid=no userns=ok userns_root=ok userns_subuid=Success fuse=usable"  # "no line matching user in /etc/subuid: Success"
EXPECT_no_new_privs="nnp=1 subuid=yes userns=ok userns_root=ok userns_subuid=Operation_not_permitted fuse=usable"
EXPECT_no_userns="subuid=yes userns=Operation_not_permitted userns_root=Operation_not_permitted userns_subuid=Operation_not_permitted"
EXPECT_userns_limit0="userns=No_space_left_on_device userns_root=No_space_left_on_device"
EXPECT_no_fuse="subuid=yes userns=ok userns_subuid=ok fuse=absent"
EXPECT_gitlab_docker="uid=0 caps=14 nnp=0 seccomp=2 fuse=absent userns=Operation_not_permitted mountns=Operation_not_permitted chroot=ok proc_masked=yes"
EXPECT_gitlab_docker_user="caps=0 nnp=0 seccomp=2 subuid=yes userns=Operation_not_permitted fuse=absent proc_masked=yes"
EXPECT_gitlab_docker_unconfined="uid=0 caps=14 seccomp=0 fuse=usable userns=ok mountns=Operation_not_permitted userns_mount=ok userns_proc=permission_denied proc_masked=yes"
EXPECT_k8s_restricted="caps=0 nnp=1 seccomp=2 userns=Operation_not_permitted fuse=absent chroot=Operation_not_permitted proc_masked=yes"
EXPECT_openshift_restricted="uid=1000680000 gid=0 caps=0 nnp=1 seccomp=2 subuid=no userns=Operation_not_permitted fuse=absent"

selftest() {
  local p line want kv key val got fail total=0 bad=0
  for p in $PROFILES; do
    line=$(probe "$p" 2>&1 | tail -1)
    want=EXPECT_${p//-/_}; fail=""
    for kv in ${!want}; do
      key=${kv%%=*} val=${kv#*=}
      got=$(tr ' ' '\n' <<<"$line" | sed -n "s/^$key=//p")
      [[ $val == "*" || $got == "$val" ]] || fail+=" $key=$got(want $val)"
    done
    total=$((total + 1))
    if [[ -z $fail ]]; then printf 'PASS %-25s %s\n' "$p" "$line"
    else bad=$((bad + 1)); printf 'FAIL %-25s %s\n     mismatches:%s\n' "$p" "$line" "$fail"; fi
  done
  echo "$((total - bad)) passed, $bad failed"
  ((bad == 0))
}

# ---------------------------------------------------------------- main
case ${1:-} in
__inner) shift; inner "$@" ;;
--list) for p in $PROFILES; do profile "$p"; printf '%-26s %s\n' "$p" "$DESC"; done ;;
--probe) [[ -n ${2:-} ]] || die "usage: lockdown.sh --probe PROFILE"; probe "$2" ;;
--selftest) selftest ;;
-h | --help | "") sed -n '2,35p' "$SELF" | sed 's/^# \{0,1\}//' ;;
*)
  keep=0; [[ $1 == -k ]] && { keep=1; shift; }
  name=${1:-}; shift || true
  [[ ${1:-} == -- ]] || die "usage: lockdown.sh [-k] PROFILE -- CMD [ARGS...]"
  shift; (($#)) || die "no command given"
  run_profile "$keep" "$name" "$@"
  ;;
esac
