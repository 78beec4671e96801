#!/usr/bin/env bash
# Runs one BuildKit-corpus case (the shared conformance harness plus build-flag/build-env); invoked by run.sh (environment: BUILDER OUT KEEP
# OFFLINE RUNUSER_NAME CASES HERE [KILN]).  Writes the check.py verdict line to
# $OUT/results/NAME and stdout.
set -uo pipefail
name=$1
case_dir="$CASES/$name"
W="$OUT/work/$name"
result() { echo "$1" | tee "$OUT/results/$name"; }
cleanup() {
  ((KEEP)) && return
  if [[ $(id -u) == 0 ]]; then rm -rf "$W"
  elif [[ $BUILDER == buildah ]]; then buildah unshare rm -rf "$W" 2>/dev/null || rm -rf "$W"
  else rm -rf "$W" 2>/dev/null || buildah unshare rm -rf "$W" 2>/dev/null; fi
}
exp="$case_dir/expect"
if grep -qx 'network' "$exp" && ((OFFLINE)); then result "SKIP $name: needs network"; exit 0; fi

rm -rf "$W"; mkdir -p "$W/ctx"
[[ -d $case_dir/context ]] && cp -a "$case_dir/context/." "$W/ctx/"
cp "$case_dir/Dockerfile" "$W/Dockerfile"
[[ -n ${CORPUS_HTTP:-} ]] && sed -i "s|{http}|$CORPUS_HTTP|g" "$W/Dockerfile"
[[ -f $case_dir/Dockerfile.dockerignore ]] && cp "$case_dir/Dockerfile.dockerignore" "$W/Dockerfile.dockerignore"

# context preparation lines: prep OP ARGS (paths relative to the context)
while read -r kw op a b; do
  [[ $kw == prep ]] || continue
  for p in "$a" "$b"; do [[ $p == *..* ]] && { result "ERROR $name: bad prep path $p"; exit 0; }; done
  case $op in
    chmod)    chmod "$a" "$W/ctx/$b" ;;
    hardlink) ln -f "$W/ctx/$a" "$W/ctx/$b" ;;
    symlink)  ln -sfn "$a" "$W/ctx/$b" ;;
    mkdir)    mkdir -p "$W/ctx/$a" ;;
    mkfifo)   mkfifo "$W/ctx/$a" ;;
    touch)    touch "$W/ctx/$a" ;;
    mksocket) python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$W/ctx/$a" ;;
    *) result "ERROR $name: unknown prep op $op"; exit 0 ;;
  esac || { result "ERROR $name: prep $op $a $b failed"; exit 0; }
done < "$exp"

args=() envs=() pre=()
while IFS= read -r line; do
  case $line in
    "build-arg "*) args+=(--build-arg "${line#build-arg }") ;;
    "target "*) args+=(--target "${line#target }") ;;
    # build-flag FLAG [VALUE]: passed as is; {ctx} is the scratch context, {case} the case's scratch dir
    "build-flag "*) read -r -a fl <<< "${line#build-flag }"
                    for x in "${fl[@]}"; do x=${x//\{ctx\}/$W/ctx}; args+=("${x//\{case\}/$W}"); done ;;
    # build-env K=V: set in the environment of kiln build
    "build-env "*) envs+=("${line#build-env }") ;;
    # prebuild FILE TAG: build the case's FILE (same context, same store) as TAG before the case
    "prebuild "*) read -r pf pt <<< "${line#prebuild }"; cp "$case_dir/$pf" "$W/$pf"
                  [[ -n ${CORPUS_HTTP:-} ]] && sed -i "s|{http}|$CORPUS_HTTP|g" "$W/$pf"
                  pre+=("$pf" "$pt") ;;
  esac
done < "$exp"

tag="localhost/conformance/${name,,}:latest"
R="$W/root" RR="$W/runroot" OCI="$W/oci"
q() { printf '%q ' "$@"; }
{
  echo 'set -u'
  echo 'export HOME=${HOME:-/tmp}'
  if [[ $BUILDER == buildah ]]; then
    drv=${BUILDAH_STORAGE_DRIVER:-overlay}
    b=(buildah --root "$R" --runroot "$RR" --storage-driver "$drv")
    echo "$(q timeout 900 "${b[@]}" bud --isolation chroot --layers --format docker --tls-verify=false "${args[@]}" -t "$tag" -f "$W/Dockerfile" "$W/ctx") > $(q "$W/build.log") 2>&1"
    echo "rc=\$?; echo \$rc > $(q "$W/build.rc")"
    echo "[ \$rc = 0 ] || exit 0"
    echo "$(q timeout 300 "${b[@]}" push --format v2s2 "$tag" "oci:$OCI") > $(q "$W/push.log") 2>&1"
    echo "echo \$? > $(q "$W/push.rc")"
  else
    read -r -a extra <<< "${KILN_BUILD_ARGS:-}"   # e.g. KILN_BUILD_ARGS="--storage-driver fuse"
    for ((i = 0; i < ${#pre[@]}; i += 2)); do
      echo "$(q timeout 900 env "${envs[@]}" "$KILN" build --root "$R" "${extra[@]}" -t "${pre[i+1]}" -f "$W/${pre[i]}" "${args[@]}" "$W/ctx") > $(q "$W/prebuild.log") 2>&1 || { echo 1 > $(q "$W/build.rc"); cp $(q "$W/prebuild.log") $(q "$W/build.log"); exit 0; }"
    done
    echo "$(q timeout 900 env "${envs[@]}" "$KILN" build --root "$R" "${extra[@]}" -t "$tag" -f "$W/Dockerfile" "${args[@]}" "$W/ctx") > $(q "$W/build.log") 2>&1"
    echo "rc=\$?; echo \$rc > $(q "$W/build.rc")"
    echo "[ \$rc = 0 ] || exit 0"
    echo "$(q timeout 300 "$KILN" push --root "$R" "$tag" "oci:$OCI") > $(q "$W/push.log") 2>&1"
    echo "echo \$? > $(q "$W/push.rc")"
  fi
} > "$W/build.sh"

if [[ $(id -u) == 0 ]]; then
  chown -hR "$RUNUSER_NAME:" "$W"
  (cd / && su "$RUNUSER_NAME" -s /bin/bash -c "bash $(q "$W/build.sh")") </dev/null
else
  (cd / && bash "$W/build.sh") </dev/null
fi

rc=$(cat "$W/build.rc" 2>/dev/null || echo 255)
if [[ $rc == 0 ]]; then
  prc=$(cat "$W/push.rc" 2>/dev/null || echo 255)
  if [[ $prc != 0 ]]; then
    result "ERROR $name: export to oci: failed: $(tail -n 2 "$W/push.log" 2>/dev/null | tr '\n' ' ' | cut -c1-300)"
    cleanup; exit 0
  fi
fi
line=$(python3 "$HERE/check.py" --case "$case_dir" --oci "$OCI" --rc "$rc" --log "$W/build.log" --name "$name")
cp "$W/build.log" "$OUT/results/$name.log" 2>/dev/null
result "$line"
cleanup
exit 0
