#!/usr/bin/env bash
# make-context.sh DIR — context for multi-stage: src/ with 2,000 text files of 1-8 KiB (~9 MB), seeded;
# BENCH_SMOKE=1: 20 files.
set -euo pipefail
dir=${1:?usage: make-context.sh DIR}
mkdir -p "$dir/src"
python3 - "$dir/src" "${BENCH_SMOKE:-0}" <<'PY'
import os, random, sys
rng = random.Random(7)
for i in range(20 if sys.argv[2] == "1" else 2000):
    n = rng.randint(1024, 8192) // 16
    lines = ["%08x %s" % (rng.getrandbits(32), "abcdefg"[rng.randrange(7)]) for _ in range(n)]
    p = os.path.join(sys.argv[1], "unit%04d.txt" % i)
    with open(p, "w") as f:
        f.write("\n".join(lines) + "\n")
PY
chmod -R a+rX "$dir"; find "$dir" -exec touch -d @1700000000 {} +
