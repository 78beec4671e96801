#!/usr/bin/env bash
# bench.sh — kiln beside Buildah on the same workloads, in one run, and the table of the results.
#
#   scripts/bench.sh [--runs N] [--builder kiln|buildah|both] [--reps N] [--out FILE] [--no-floors] [WORKLOAD...]
#   scripts/bench.sh --smoke          (tiny sizes, 1 run, a few seconds: CI keeps the script working)
#   scripts/bench.sh --table RAW.tsv  (print the table of an earlier run's raw results again)
#
# Workloads (scripts/bench/workloads/NAME: Dockerfile + make-context.sh, contexts generated
# deterministically): copy-big run-many-files many-steps cached-rebuild multi-stage push
# step-overhead (the default set), seed-webapp (only when named: it needs Debian's mirror).
# Every timed build gets fresh storage (except cached-rebuild's rebuilds and step-overhead, which
# measure warm storage on purpose); the builders alternate run by run (kiln first on odd runs,
# Buildah first on even ones) so that drift of this shared machine hits both alike. Wall time is
# the builder process's start to exit; CPU (user+sys) and peak RSS (the largest single process)
# come from /usr/bin/time (Python's getrusage of the children where GNU time is missing).
# Medians, min-max, kiln/Buildah ratios and the issue-8 targets go to a Markdown table:
# docs/PERFORMANCE.md (between its bench markers) for a full run, stdout for --smoke. Buildah
# runs rootless, `bud --layers --isolation chroot --storage-driver overlay`. Both builders pull
# their base images from a loopback registry that this script starts and seeds (busybox from
# busybox-static via `kiln import`; Debian from the tarball of scripts/base-image.sh), so nothing
# here needs the network.
#
# Run as root: builders then run as the unprivileged $BENCH_USER (default tester, see
# scripts/setup.sh), and a full run puts its storage on a journaled ext4 loop mount
# (scripts/bench/prepare-fs.sh: / here is ext4 without a journal, where creates after big deletes
# are 10-30x slower). As another user, builders run as that user on plain $BENCH_DIR.
# Environment: KILN (default: target/release/kiln, built first), BENCH_USER, BENCH_DIR
# (/tmp/kiln-bench; --smoke: a temp dir), BENCH_TIMEOUT (1800 s per call), BENCH_DEBIAN_TAR
# (Debian rootfs tarball for multi-stage; default: the bench user's scripts/base-image.sh cache),
# BENCH_NICE (a nice value for both builders, root only; e.g. -10 on a busy shared machine).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
HERE=$REPO/scripts/bench
DEFAULT_WORKLOADS=(copy-big run-many-files many-steps cached-rebuild multi-stage push step-overhead)
SMOKE_BUILDAH=(copy-big step-overhead) # --smoke runs Buildah only on these (its steps cost ~0.2 s each)
builder=both runs=5 reps=20 smoke=0 out= floors=1 table= workloads=()

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-1}"; }
while (($#)); do
  case $1 in
    --smoke) smoke=1; shift ;;
    --runs) runs=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --builder) builder=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-floors) floors=0; shift ;;
    --table) table=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    -*) echo "bench.sh: unknown option $1" >&2; usage ;;
    *) workloads+=("$1"); shift ;;
  esac
done
[[ $builder =~ ^(kiln|buildah|both)$ ]] || usage
if [ -n "$table" ]; then python3 "$HERE/table.py" "$table"; exit; fi
((${#workloads[@]})) || workloads=("${DEFAULT_WORKLOADS[@]}")
for w in "${workloads[@]}"; do
  [ -f "$HERE/workloads/$w/Dockerfile" ] || { echo "bench.sh: no workload $w (see $HERE/workloads)" >&2; exit 1; }
done
if ((smoke)); then runs=1 reps=3 floors=0; fi

# ---- the kiln binary ----
if [ -z "${KILN:-}" ]; then
  (cd "$REPO" && cargo build --release --quiet) || { echo "bench.sh: cargo build --release failed" >&2; exit 1; }
  KILN=$REPO/target/release/kiln
fi
KILN=$(realpath -m "$KILN")
[ -x "$KILN" ] || { echo "bench.sh: no kiln binary at $KILN" >&2; exit 1; }

# ---- who runs the builders ----
if [ "$(id -u)" = 0 ]; then
  BENCH_USER=${BENCH_USER:-tester}
  if ! id "$BENCH_USER" >/dev/null 2>&1; then
    echo "bench.sh: user $BENCH_USER does not exist (scripts/setup.sh creates it); builders run as root" >&2
    BENCH_USER=root
  fi
else
  BENCH_USER=$(id -un)
fi
UHOME=$(getent passwd "$BENCH_USER" | cut -d: -f6)
have_buildah=0; command -v buildah >/dev/null 2>&1 && have_buildah=1
variants=()
[ "$builder" != buildah ] && variants+=(kiln)
if [ "$builder" != kiln ]; then
  if ((have_buildah)); then variants+=(buildah); else echo "bench.sh: buildah is not installed: kiln only" >&2; fi
fi
((${#variants[@]})) || { echo "bench.sh: nothing to run" >&2; exit 1; }

# ---- the timer: GNU time, else the same figures from Python's getrusage of the children ----
if [ -x /usr/bin/time ] && [ -z "${BENCH_PY_TIMER:-}" ]; then
  timer() { local out=$1; shift; /usr/bin/time -f '%M %U %S' -o "$out" "$@"; }
else
  timer() { # OUT CMD...: writes "maxrss_kb user_s sys_s" to OUT, returns CMD's status
    python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%d %.2f %.2f\n" % (r.ru_maxrss, r.ru_utime, r.ru_stime))
sys.exit(rc if rc >= 0 else 128 - rc)' "$@"
  }
fi

# ---- storage ----
if ((smoke)); then
  BENCH_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-smoke.XXXXXX")
else
  BENCH_DIR=${BENCH_DIR:-/tmp/kiln-bench}
  mkdir -p "$BENCH_DIR"
  if [ "$(id -u)" = 0 ]; then
    "$HERE/prepare-fs.sh" "$BENCH_DIR" >&2 || echo "bench.sh: warning: no dedicated bench fs; timings on / are noisy" >&2
  fi
fi
chmod 1777 "$BENCH_DIR"
stamp=$(date -u +%Y%m%d-%H%M%S)-$$
RUNS=$BENCH_DIR/runs/$stamp LOGS=$BENCH_DIR/logs/$stamp
mkdir -p "$BENCH_DIR"/{ctx,results} "$RUNS" "$LOGS"
chmod 1777 "$RUNS"
RAW=$BENCH_DIR/results/$stamp.tsv
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
REG_PID=
wipe() { # DIR: remove builder storage (kiln's unpacked layers and Buildah's belong to sub-ids)
  [ -e "$1" ] || return 0
  rm -rf "$1" 2>/dev/null && return 0
  as_user "$KILN" unshare -- rm -rf "$1" 2>/dev/null || true
  ((have_buildah)) && as_user buildah unshare rm -rf "$1" 2>/dev/null || true
  rm -rf "$1" 2>/dev/null || true
}
cleanup() { # keeps the script's exit status (the last command of an EXIT trap would set it)
  local rc=$?
  if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
  rm -rf "$BENCH_DIR/registry-$stamp" # the pushed images: gigabytes after a full run
  wipe "$RUNS"
  if ((smoke)); then wipe "$BENCH_DIR"; else fstrim "$BENCH_DIR" 2>/dev/null || true; fi
  exit "$rc"
}
trap cleanup EXIT

user_prefix() { # -> UP: the argv prefix that runs a command as the bench user in a clean environment
  UP=()
  # BENCH_NICE (root only, e.g. -10): both builders get the same raised priority, which shields
  # them from the other jobs of a shared machine (their wake-up latency otherwise dominates the
  # short builds); it changes nothing on an idle machine.
  if [ -n "${BENCH_NICE:-}" ] && [ "$(id -u)" = 0 ]; then UP=(nice -n "$BENCH_NICE"); fi
  if [ "$(id -u)" = 0 ] && [ "$BENCH_USER" != root ]; then
    UP=(setpriv --reuid="$BENCH_USER" --regid="$BENCH_USER" --init-groups)
  fi
  UP+=(env -i HOME="$UHOME" USER="$BENCH_USER" LOGNAME="$BENCH_USER" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
    XDG_DATA_HOME="${R:-$BENCH_DIR}/xdg-data" XDG_CACHE_HOME="${R:-$BENCH_DIR}/xdg-cache")
}
as_user() { # CMD... as the bench user
  user_prefix
  "${UP[@]}" "$@"
}

# ---- a loopback registry with the base images ----
start_registry() {
  local port dir=$BENCH_DIR/registry-$stamp
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  printf 'version: 0.1\nlog: {level: error}\nstorage:\n  filesystem: {rootdirectory: %s}\n  delete: {enabled: true}\nhttp: {addr: 127.0.0.1:%s}\n' \
    "$dir/data" "$port" >"$dir/config.yml"
  command -v docker-registry >/dev/null || { echo "bench.sh: docker-registry is not installed (scripts/setup.sh)" >&2; exit 1; }
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  REG_PID=$!
  REG=localhost:$port
  for _ in $(seq 100); do
    curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench.sh: the registry on $REG did not start (log: $dir/log)" >&2; exit 1
}
seed_images() { # busybox always; debian when a workload needs it and a rootfs tarball exists
  local seed=$BENCH_DIR/seed-$stamp rootfs bb
  mkdir -p "$seed"; chown "$BENCH_USER:" "$seed" 2>/dev/null || true
  rootfs=$seed/busybox-rootfs
  mkdir -p "$rootfs"/{bin,etc,tmp,root}; chmod 1777 "$rootfs/tmp"
  bb=$(command -v busybox || true)
  [ -n "$bb" ] || { echo "bench.sh: busybox (busybox-static) is not installed (scripts/setup.sh)" >&2; exit 1; }
  cp "$bb" "$rootfs/bin/busybox"
  for a in $("$bb" --list); do [ -e "$rootfs/bin/$a" ] || ln -s busybox "$rootfs/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  chown -R "$BENCH_USER:" "$seed" 2>/dev/null || true
  local k=("$KILN" --root "$seed/root")
  as_user "${k[@]}" import "$rootfs" "$REG/busybox:latest" >"$LOGS/seed.log" 2>&1
  as_user "${k[@]}" push --tls-verify=false "$REG/busybox:latest" "docker://$REG/busybox:latest" >>"$LOGS/seed.log" 2>&1
  BUILD_IMAGE=debian:bookworm
  if need_debian; then
    local tar=${BENCH_DEBIAN_TAR:-$UHOME/.cache/kiln/bookworm-minbase.tar}
    if [ -s "$tar" ]; then
      echo "bench.sh: seeding debian:bookworm from $tar" >&2
      as_user "${k[@]}" import "$tar" "$REG/debian:bookworm" >>"$LOGS/seed.log" 2>&1
      as_user "${k[@]}" push --tls-verify=false "$REG/debian:bookworm" "docker://$REG/debian:bookworm" >>"$LOGS/seed.log" 2>&1
    else
      echo "bench.sh: no Debian rootfs tarball ($tar; make one with scripts/base-image.sh):" \
        "multi-stage builds its first stage on busybox" >&2
      BUILD_IMAGE=busybox:latest
    fi
  fi
  wipe "$seed"
}
need_debian() {
  ((smoke)) && return 1
  local w
  for w in "${workloads[@]}"; do [[ $w == multi-stage || $w == seed-webapp ]] && return 0; done
  return 1
}

# ---- contexts: generated once per generator version, read-only for the builders ----
context_for() { # WORKLOAD -> path of its generated context
  local w=$1 c=$BENCH_DIR/ctx/$1 sum gen=$HERE/workloads/$1/make-context.sh
  if ((smoke)); then c+=-smoke; fi
  sum=$(cat "$HERE"/workloads/*/*.sh | sha256sum | cut -c1-16)
  if [ "$(cat "$c.stamp" 2>/dev/null)" != "$sum" ]; then
    rm -rf "$c" "$c.stamp"; mkdir -p "$c"
    BENCH_SMOKE=$smoke "$gen" "$c" >&2
    chmod -R a+rX "$c"; sync -f "$c" 2>/dev/null || true; echo "$sum" >"$c.stamp"
  fi
  echo "$c"
}
build_args() { # WORKLOAD -> BARGS (--build-arg ...)
  BARGS=(--build-arg "BASE_REGISTRY=$REG")
  if [ "$1" = multi-stage ]; then
    if ((smoke)) && [ -f "$HERE/workloads/$1/smoke.args" ]; then
      while read -r a; do [ -n "$a" ] && BARGS+=(--build-arg "$a"); done <"$HERE/workloads/$1/smoke.args"
    else
      BARGS+=(--build-arg "BUILD_IMAGE=$BUILD_IMAGE")
    fi
  fi
  return 0
}

# ---- one builder call, as the bench user, timed ----
builder_argv() { # VARIANT build TAG DOCKERFILE CONTEXT [ARGS...] | VARIANT push TAG DEST  -> CMD
  local v=$1 op=$2; shift 2
  if [ "$v" = kiln ]; then
    case $op in
      build) CMD=("$KILN" --root "$R/root" build -t "$1" -f "$2" "${@:4}" "$3") ;;
      push) CMD=("$KILN" --root "$R/root" push --tls-verify=false "$1" "docker://$2") ;;
    esac
  else
    local g=(--root "$R/root" --runroot "$R/run" --storage-driver overlay)
    case $op in
      build) CMD=(buildah "${g[@]}" bud --layers --isolation chroot --tls-verify=false -t "$1" -f "$2" "${@:4}" "$3") ;;
      push) CMD=(buildah "${g[@]}" push --tls-verify=false "$1" "docker://$2") ;;
    esac
  fi
}
timed() { # PHASE: runs "${CMD[@]}" as the bench user, appends a row to $RAW; returns its status
  local phase=$1 t0 t1 rc=0 rss usr sys log load
  log=$LOGS/$W-$V-$N.$phase.log
  sync -f "$BENCH_DIR" 2>/dev/null || true # no dirty pages of earlier runs (untimed)
  read -r load _ </proc/loadavg
  t0=$EPOCHREALTIME
  user_prefix
  timer "$R/time.$phase" timeout -k 10 "$BENCH_TIMEOUT" "${UP[@]}" "${CMD[@]}" >"$log" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  read -r rss usr sys < <(tail -n1 "$R/time.$phase")
  if [ "$rc" != 0 ]; then
    echo "  FAILED rc=$rc: $W $V $phase run $N (log: $log)" >&2
    tail -n5 "$log" | sed 's/^/    /' >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$W" "$V" "$phase" "$N" "$load" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" \
    "$(awk -v u="${usr:-0}" -v s="${sys:-0}" 'BEGIN{printf "%.2f", u+s}')" "${rss:-0}" "$rc" >>"$RAW"
  return "$rc"
}
new_storage() { # -> R: a fresh dir for one builder's storage
  R=$RUNS/$W-$V-$N
  wipe "$R"; mkdir -p "$R"; chown "$BENCH_USER:" "$R" 2>/dev/null || true
}

run_one() { # W V N: one fresh-storage run of workload W with builder V
  new_storage
  local df=$HERE/workloads/$W/Dockerfile ctx tag=localhost/kiln-bench/$W:latest
  ctx=$(context_for "$W"); build_args "$W"
  case $W in
    cached-rebuild)
      cp -a "$ctx" "$R/ctx"; chown -R "$BENCH_USER:" "$R/ctx" 2>/dev/null || true
      builder_argv "$V" build "$tag" "$df" "$R/ctx" "${BARGS[@]}"
      timed cold || return 0
      timed nochange || true
      touch "$R/ctx/late.txt"; timed touch || true
      echo "edited in run $N" >>"$R/ctx/late.txt"; timed edit || true ;;
    push)
      builder_argv "$V" build "$tag" "$df" "$ctx" "${BARGS[@]}"
      timed build || return 0
      builder_argv "$V" push "$tag" "$REG/kiln-bench-push/$V-$stamp-$N:latest"
      timed push || true ;;
    *)
      builder_argv "$V" build "$tag" "$df" "$ctx" "${BARGS[@]}"
      timed cold || true ;;
  esac
  wipe "$R"
}

step_overhead() { # warm storage per builder; reps x (noop build, RUN true build), --no-cache
  local ctx vs=() v i df=$HERE/workloads/step-overhead
  ctx=$(context_for step-overhead); build_args step-overhead
  for v in "${variants[@]}"; do
    if ((smoke)) && [ "$v" = buildah ] && [[ " ${SMOKE_BUILDAH[*]} " != *" step-overhead "* ]]; then continue; fi
    W=step-overhead V=$v N=0; new_storage
    builder_argv "$v" build localhost/kiln-bench/noop "$df/noop.Dockerfile" "$ctx" "${BARGS[@]}"
    timed warmup && vs+=("$v") # pulls and unpacks the base
  done
  for ((i = 1; i <= reps; i++)); do
    for v in "${vs[@]}"; do
      W=step-overhead V=$v N=0; R=$RUNS/$W-$V-0; N=$i
      builder_argv "$v" build localhost/kiln-bench/noop "$df/noop.Dockerfile" "$ctx" "${BARGS[@]}" --no-cache
      timed noop || true
      builder_argv "$v" build localhost/kiln-bench/run-true "$df/Dockerfile" "$ctx" "${BARGS[@]}" --no-cache
      timed run-true || true
    done
  done
  for v in "${vs[@]}"; do W=step-overhead V=$v N=0; new_storage; done
}

floor() { # NAME CMD...: a physical floor, timed like a builder call (as root or the user, no namespaces)
  local name=$1 t0 t1 rc=0; shift
  sync -f "$BENCH_DIR" 2>/dev/null || true
  t0=$EPOCHREALTIME
  local nice=()
  if [ -n "${BENCH_NICE:-}" ] && [ "$(id -u)" = 0 ]; then nice=(nice -n "$BENCH_NICE"); fi
  timer "$RUNS/time.floor" "${nice[@]}" bash -c "$*" >/dev/null 2>"$LOGS/floor.log" || rc=$?
  t1=$EPOCHREALTIME
  read -r rss usr sys < <(tail -n1 "$RUNS/time.floor")
  printf '%s\tfloor\t%s\t1\t-\t%s\t%s\t%s\t%s\n' "$W" "$name" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" \
    "$(awk -v u="${usr:-0}" -v s="${sys:-0}" 'BEGIN{printf "%.2f", u+s}')" "${rss:-0}" "$rc" >>"$RAW"
}
floors() {
  local ctx d=$RUNS/floor
  if [[ " ${workloads[*]} " == *" copy-big "* ]]; then
    W=copy-big; ctx=$(context_for copy-big)
    floor "cp -a" "rm -rf $d; cp -a $ctx $d; sync -f $d"; rm -rf "$d"
    floor "tar | sha256sum" "tar -C $ctx -cf - . | sha256sum"
    command -v openssl >/dev/null && floor "tar | openssl sha256" "tar -C $ctx -cf - . | openssl dgst -sha256"
    if command -v pigz >/dev/null; then
      floor "tar | pigz -1 -p2" "tar -C $ctx -cf - . | pigz -1 -p2 | sha256sum"
      floor "tar | pigz -6 -p2" "tar -C $ctx -cf - . | pigz -6 -p2 | sha256sum"
    fi
  fi
  if [[ " ${workloads[*]} " == *" run-many-files "* ]]; then
    W=run-many-files; ctx=$(context_for run-many-files)
    floor "mkfiles.sh natively" "rm -rf $d; busybox sh $ctx/mkfiles.sh $d; sync -f $d"; rm -rf "$d"
  fi
}

# ---- go ----
start_registry
seed_images
echo "bench.sh: raw results $RAW, logs $LOGS; builders: ${variants[*]} as $BENCH_USER; registry $REG" >&2
for W in "${workloads[@]}"; do
  [ "$W" = step-overhead ] && continue
  context_for "$W" >/dev/null
  for ((N = 1; N <= runs; N++)); do
    order=("${variants[@]}")
    ((N % 2 == 0)) && ((${#order[@]} == 2)) && order=("${order[1]}" "${order[0]}")
    for V in "${order[@]}"; do
      if ((smoke)) && [ "$V" = buildah ] && [[ " ${SMOKE_BUILDAH[*]} " != *" $W "* ]]; then continue; fi
      echo "[$(date +%T)] $W  $V  run $N/$runs" >&2
      run_one
    done
  done
done
if [[ " ${workloads[*]} " == *" step-overhead "* ]]; then
  echo "[$(date +%T)] step-overhead  ${variants[*]}  $reps reps" >&2
  step_overhead
fi
((floors)) && floors

# ---- the table ----
meta="$(date -u +%Y-%m-%d) on $(nproc) CPUs, $(uname -r)${BENCH_NICE:+, builders at nice $BENCH_NICE}; kiln $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+changes'), $(buildah --version 2>/dev/null | cut -d' ' -f1-3 || echo 'no buildah'); $runs runs, step-overhead $reps reps"
if ((smoke)) || [ -n "$out" ]; then
  python3 "$HERE/table.py" "$RAW" --meta "$meta" | tee ${out:+"$out"}
else
  doc=$REPO/docs/PERFORMANCE.md
  python3 "$HERE/table.py" "$RAW" --meta "$meta" --doc "$doc"
  cp "$RAW" "$HERE/last-run.tsv"
  echo "bench.sh: wrote $doc (raw: scripts/bench/last-run.tsv)" >&2
fi
# A failed builder call is a failed benchmark (CI's --smoke must notice a broken path).
! awk -F'\t' '$2 != "floor" && $9 != 0 {bad=1} END {exit !bad}' "$RAW"
