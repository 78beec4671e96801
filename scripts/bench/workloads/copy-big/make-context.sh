#!/usr/bin/env bash
# make-context.sh DIR — deterministic build context for copy-big:
# 20,000 files (19,950 small 256 B..24 KiB + 50 large 2..4 MiB), ~405 MB total,
# about half the bytes incompressible (PRNG) and half text-like (gzip ~3x).
# Same seed => byte-identical files, modes and mtimes on every machine.
# BENCH_SMOKE=1 (scripts/bench.sh --smoke): 200 files, ~1.5 MB, same shape.
set -euo pipefail
dir=${1:?usage: make-context.sh DIR}
mkdir -p "$dir"
python3 - "$dir" "${BENCH_SMOKE:-0}" <<'PY'
import os, random, sys
root = sys.argv[1]
smoke = sys.argv[2] == "1"
rng = random.Random(20240601)
MTIME = 1700000000
# text-like pool: random "words" from a 4,000-word vocabulary, with newlines
letters = "abcdefghijklmnopqrstuvwxyz"
vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(4000)]
words = rng.choices(vocab, k=40_000 if smoke else 1_600_000)
pool = bytearray()
for i in range(0, len(words), 12):
    pool += (" ".join(words[i:i + 12]) + "\n").encode()
pool = bytes(pool)                      # ~10 MB
n_small, n_large = (199, 1) if smoke else (19950, 50)
large_at = set(rng.sample(range(n_small + n_large), n_large))
total = 0
for i in range(n_small + n_large):
    d = os.path.join(root, "mod%02d" % (i // 1000), "pkg%02d" % ((i // 100) % 10))
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    size = rng.randint(2 << 16, 4 << 16) if smoke and i in large_at else rng.randint(2 << 20, 4 << 20) if i in large_at else rng.randint(256, 24576)
    if rng.random() < 0.5:
        data = rng.randbytes(size)                       # incompressible
        name = "blob%05d.bin" % i
    else:
        off = rng.randrange(0, len(pool) - size)
        data = pool[off:off + size]                      # compressible
        name = "text%05d.txt" % i
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, 0o755 if i % 97 == 0 else 0o644)
    os.utime(p, (MTIME, MTIME))
    total += size
for dp, dns, fns in os.walk(root, topdown=False):
    os.chmod(dp, 0o755)
    os.utime(dp, (MTIME, MTIME))
print("copy-big context: %d files, %.1f MB" % (n_small + n_large, total / 1e6), file=sys.stderr)
PY
