#!/usr/bin/env bash
# Builds the offline Debian base image once and caches it: an unprivileged
# `mmdebstrap --mode=unshare --variant=minbase bookworm` rootfs tarball, which
# `kiln import` turns into debian:bookworm. Run as the user who will build.
#   scripts/base-image.sh [OUT.tar]     (default: $XDG_CACHE_HOME/kiln/bookworm-minbase.tar)
set -euo pipefail
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kiln
out=${1:-$cache/bookworm-minbase.tar}
if [[ -s $out ]]; then echo "$out"; exit 0; fi
mkdir -p "$(dirname "$out")"
tmp="$out.partial.$$"
trap 'rm -f "$tmp"' EXIT
mirror=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mmdebstrap --quiet --mode=unshare --variant=minbase --format=tar bookworm "$tmp" "$mirror" >&2
mv "$tmp" "$out"
trap - EXIT
echo "$out"
