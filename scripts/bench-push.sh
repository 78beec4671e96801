#!/usr/bin/env bash
# Push benchmark: kiln push vs buildah push of the same ~400 MB image (4 layers of 100 MB of
# random bytes, so gzip cannot shrink them) to a loopback docker-registry. Every push goes to a
# fresh, empty registry (no blob is skipped or mounted); the two tools alternate run by run.
# Prints each time, the medians and the ratio kiln/buildah (below 1: kiln is faster).
#   scripts/bench-push.sh [RUNS]      (default 3)
# KILN=PATH (default target/release/kiln); as root, the builders run as $KILN_AS (default
# tester), rootless. buildah uses --storage-driver vfs and its own temporary root.
# What each push does: kiln uploads the gzip blobs its store already holds; buildah's store
# keeps layers unpacked, so `buildah push` re-creates (tar + gzip) each layer while uploading.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
runs=${1:-3}
KILN=${KILN:-$PWD/target/release/kiln}
[[ -x $KILN ]] || cargo build --release
as=()
if [[ $(id -u) == 0 ]]; then as=(runuser -u "${KILN_AS:-tester}" --); fi
work=/var/tmp/kiln-bench-push-$$
mkdir "$work"
chmod 755 "$work"
[[ ${#as[@]} -gt 0 ]] && chown "${KILN_AS:-tester}:" "$work"
reg_pid=
cleanup() {
  [[ -n $reg_pid ]] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null
  "${as[@]}" "$KILN" unshare -- rm -rf "$work/kiln" 2>/dev/null || true
  "${as[@]}" buildah unshare rm -rf "$work/buildah" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
bah() { "${as[@]}" buildah --root "$work/buildah/storage" --runroot "$work/buildah/run" --storage-driver vfs "$@"; }

ctx=$work/ctx
mkdir -p "$ctx"
printf 'FROM scratch\n' > "$work/Dockerfile"
for i in 1 2 3 4; do
  head -c 100M /dev/urandom > "$ctx/part$i"
  printf 'COPY part%s /part%s\n' "$i" "$i" >> "$work/Dockerfile"
done
cp "$work/Dockerfile" "$ctx/Dockerfile"
[[ ${#as[@]} -gt 0 ]] && chown -R "${KILN_AS:-tester}:" "$ctx"
img=localhost/bench-push:1
echo "preparing: kiln build of $(du -sh "$ctx" | cut -f1) in 4 layers, then buildah pull of the same image" >&2
"${as[@]}" "$KILN" --root "$work/kiln" build -q -t "$img" "$ctx" >/dev/null
# buildah names an oci: pull after the directory; push it by id.
bid=$(bah pull -q "oci:$work/kiln:$img")
size=$(python3 - "$work/kiln" "$img" <<'PY'
import json, sys
root, name = sys.argv[1], sys.argv[2]
for m in json.load(open(f"{root}/index.json"))["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name", "").endswith(name):
        man = json.load(open(f"{root}/blobs/sha256/{m['digest'].split(':')[1]}"))
        print(sum(l["size"] for l in man["layers"]))
        break
PY
)

start_registry() {
  local dir=$work/registry
  rm -rf "$dir"; mkdir -p "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nlog: {level: error}\nstorage:\n  filesystem: {rootdirectory: %s}\nhttp: {addr: 127.0.0.1:%s}\n' \
    "$dir/data" "$port" > "$dir/config.yml"
  /usr/bin/docker-registry serve "$dir/config.yml" >/dev/null 2>&1 &
  reg_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.05; done
  echo "registry did not start" >&2; exit 1
}
stop_registry() { kill "$reg_pid"; wait "$reg_pid" 2>/dev/null || true; reg_pid=; }

time_push() { # TOOL -> seconds
  local t0 t1
  start_registry
  t0=$(date +%s.%N)
  if [[ $1 == kiln ]]; then
    "${as[@]}" "$KILN" --root "$work/kiln" push -q "$img" "127.0.0.1:$port/bench:kiln" >/dev/null
  else
    bah push -q --tls-verify=false "$bid" "docker://127.0.0.1:$port/bench:buildah" >/dev/null
  fi
  t1=$(date +%s.%N)
  # The registry must serve what was pushed.
  skopeo inspect --tls-verify=false --raw "docker://127.0.0.1:$port/bench:$1" >/dev/null
  stop_registry
  echo "$t1 - $t0" | bc
}

declare -a tk tb
for r in $(seq "$runs"); do
  if (( r % 2 )); then order=(kiln buildah); else order=(buildah kiln); fi
  for tool in "${order[@]}"; do
    t=$(time_push "$tool")
    printf 'run %d %-7s %6.2fs\n' "$r" "$tool" "$t"
    if [[ $tool == kiln ]]; then tk+=("$t"); else tb+=("$t"); fi
  done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mk=$(median "${tk[@]}"); mb=$(median "${tb[@]}")
printf 'image: %.0f MB compressed, 4 layers; %d runs each\n' "$(echo "$size/1000000" | bc -l)" "$runs"
printf 'median kiln push    %6.2fs (%.0f MB/s)\n' "$mk" "$(echo "$size/1000000/$mk" | bc -l)"
printf 'median buildah push %6.2fs (%.0f MB/s)\n' "$mb" "$(echo "$size/1000000/$mb" | bc -l)"
printf 'ratio kiln/buildah  %6.2f\n' "$(echo "$mk/$mb" | bc -l)"
