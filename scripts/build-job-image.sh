#!/usr/bin/env bash
# kiln builds its own CI job image from ci/Dockerfile, then checks it: `kiln run IMAGE
# --version` must print this checkout's version. Slow the first time (the build stage
# installs Debian's rustc-web and compiles kiln in release mode); later runs in the same
# store reuse the step cache and cargo's cache mount.
#   scripts/build-job-image.sh [TAG]          (default TAG: localhost/kiln-job:dev)
# Environment:
#   KILN=PATH           the kiln that builds (default: target/release/kiln, built if missing)
#   KILN_AS=USER        when started as root: run kiln (and scripts/base-image.sh) as USER
#   KILN_JOB_ROOT=DIR   the store to build in (default: /var/tmp/kiln-job-image-$USER); kept
#   PUSH=REF            also push the image to REF, with --cache-to/--cache-from REPO/cache
#   TLS_VERIFY=false    for PUSH to a registry with a self-signed certificate
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/kiln-job:dev}
as=()
user=$(id -un)
if [[ -n ${KILN_AS:-} && $(id -u) == 0 ]]; then
  as=(runuser -u "$KILN_AS" --)
  user=$KILN_AS
fi
KILN=${KILN:-$PWD/target/release/kiln}
if [[ ! -x $KILN ]]; then cargo build --release; fi
root=${KILN_JOB_ROOT:-/var/tmp/kiln-job-image-$user}
"${as[@]}" mkdir -p "$root"
k() { "${as[@]}" "$KILN" --root "$root" "$@"; }

# Crates for the build stage: vendored from this machine's cargo cache when possible (the
# build then needs no crates.io), else the build stage fetches them itself.
if [[ ! -d vendor/ring ]] && command -v cargo >/dev/null; then
  cargo vendor --locked --offline vendor >/dev/null 2>&1 || cargo vendor --locked vendor >/dev/null 2>&1 || rm -rf vendor
  chmod -R a+rX vendor 2>/dev/null || true
  git checkout -q -- vendor/README.md 2>/dev/null || true   # cargo vendor clears the directory
fi

# The Debian base (an mmdebstrap rootfs imported as debian:bookworm): no Docker Hub needed.
if ! k inspect debian:bookworm >/dev/null 2>&1; then
  tar=$("${as[@]}" scripts/base-image.sh)
  # Dated by the tarball, so every store that imports the same tarball gets the same image id
  # (and so the same cache keys: --cache-from then hits across machines).
  SOURCE_DATE_EPOCH=$(stat -c %Y "$tar") k import "$tar" debian:bookworm >/dev/null
fi

cache=()
if [[ -n ${PUSH:-} ]]; then
  repo=${PUSH%@*}; last=${repo##*/}; [[ $last == *:* ]] && repo=${repo%:*}
  cache=(--cache-to "$repo/cache" --cache-from "$repo/cache" --tls-verify="${TLS_VERIFY:-true}")
fi
start=$(date +%s)
k build --progress plain -f ci/Dockerfile -t "$tag" "${cache[@]}" .
echo "built $tag in $(( $(date +%s) - start ))s"

want="kiln $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
got=$(k run --rm "$tag" --version)
if [[ $got != "$want" ]]; then
  echo "FAIL: kiln run $tag --version printed '$got', expected '$want'" >&2
  exit 1
fi
echo "ok: kiln run $tag --version -> $got"
if [[ -n ${PUSH:-} ]]; then
  k push --tls-verify="${TLS_VERIFY:-true}" "$tag" "$PUSH"
fi
