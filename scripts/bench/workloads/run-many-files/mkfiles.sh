#!/bin/sh
# mkfiles.sh DEST — run inside the image by run-many-files (busybox sh + applets), and natively
# (same busybox) for the lower bound.
# 50,000 small files (100 dirs x 500, one short line each, written by one awk process),
# plus 3 large files: 64 MiB random, 64 MiB text, 32 MiB zeros.
# (make-context.sh rewrites the three sizes below for --smoke.)
set -e
DIRS=100
FILES=500
BIG=67108864
dest=${1:-/data}
awk -v dest="$dest" -v dirs="$DIRS" -v files="$FILES" 'BEGIN {
  for (d = 0; d < dirs; d++) {
    system("mkdir -p " dest "/d" d)
    for (f = 0; f < files; f++) {
      p = dest "/d" d "/f" f ".txt"
      print "dir " d " file " f ": a small payload line" > p
      close(p)
    }
  }
}'
head -c "$BIG" /dev/urandom > "$dest/big-random.bin"
seq 1 20000000 | head -c "$BIG" > "$dest/big-text.txt"
head -c $((BIG / 2)) /dev/zero > "$dest/big-zero.bin"
