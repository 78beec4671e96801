#!/usr/bin/env bash
# make-context.sh DIR — context for run-many-files: just the generator script.
# BENCH_SMOKE=1 (scripts/bench.sh --smoke): 5 x 20 small files and 64 KiB "large" files.
set -euo pipefail
dir=${1:?usage: make-context.sh DIR}
mkdir -p "$dir"
if [ "${BENCH_SMOKE:-0}" = 1 ]; then
  sed -e 's/^DIRS=.*/DIRS=5/' -e 's/^FILES=.*/FILES=20/' -e 's/^BIG=.*/BIG=65536/' \
    "$(dirname "$0")/mkfiles.sh" >"$dir/mkfiles.sh"
  chmod 0755 "$dir/mkfiles.sh"
else
  install -m 0755 "$(dirname "$0")/mkfiles.sh" "$dir/mkfiles.sh"
fi
touch -d @1700000000 "$dir/mkfiles.sh" "$dir"
