#!/usr/bin/env bash
# A plain registry on 127.0.0.1:5000 holding busybox:latest (from busybox-static) and
# debian:bookworm (scripts/base-image.sh's mmdebstrap minbase), made offline with kiln itself.
# Tests that pull base images (tests/attest.rs, tests/run_network.rs, tests/buildkit) use it.
# Idempotent: an answering registry is reused, images already in it are kept.
#   scripts/local-registry.sh KILN_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=$(realpath "${1:?usage: scripts/local-registry.sh KILN_BINARY}")
state=${KILN_LOCAL_REGISTRY_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/test-registry}
addr=${KILN_LOCAL_REGISTRY_ADDR:-127.0.0.1:5000}
if ! curl -fs -o /dev/null http://$addr/v2/; then
  command -v docker-registry >/dev/null || { echo "local-registry.sh: docker-registry is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
  mkdir -p "$state/data"
  cat > "$state/config.yml" <<YML
version: 0.1
storage:
  filesystem: {rootdirectory: $state/data}
  delete: {enabled: true}
http: {addr: $addr}
YML
  setsid nohup docker-registry serve "$state/config.yml" > "$state/registry.log" 2>&1 < /dev/null &
  for _ in $(seq 100); do curl -fs -o /dev/null http://$addr/v2/ && break; sleep 0.1; done
  curl -fs -o /dev/null http://$addr/v2/ || { echo "local-registry.sh: the registry did not start:" >&2; cat "$state/registry.log" >&2; exit 1; }
fi
has() { curl -fs "http://$addr/v2/$1/tags/list" | grep -q "\"$2\""; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
store=$work/store
if ! has busybox latest; then
  r=$work/busybox
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root"
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do [[ -e $r/bin/$a ]] || ln -s busybox "$r/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
  "$kiln" --root "$store" import "$r" busybox:latest >/dev/null
  "$kiln" --root "$store" push --tls-verify=false busybox:latest $addr/busybox:latest >/dev/null
fi
if ! has debian bookworm; then
  tar=$(scripts/base-image.sh)
  "$kiln" --root "$store" import "$tar" debian:bookworm >/dev/null
  "$kiln" --root "$store" push --tls-verify=false debian:bookworm $addr/debian:bookworm >/dev/null
fi
echo "local-registry.sh: http://$addr has busybox:latest and debian:bookworm"
