#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a short time (default 15 s; FUZZ_SECS=N to
# change). Works on the stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the nightly flags
# cargo-fuzz passes (-Zsanitizer=address). Installs cargo-fuzz if missing.
# Targets that unpack archives run as the unprivileged test user when started as root, so that
# a confinement bug cannot write over the machine.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${FUZZ_SECS:-15}"
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz build -O
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN="target/$TRIPLE/release"
TARGETS="$(cargo fuzz list)"
status=0
for t in $TARGETS; do
    corpus="corpus/$t"
    mkdir -p "$corpus" "artifacts/$t"
    run=("$BIN/$t" -max_total_time="$SECS" -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" "$corpus")
    if [ -d "seeds/$t" ]; then run+=("seeds/$t"); fi
    if [ "$t" = tar_unpack ] && [ "$(id -u)" = 0 ] && id tester >/dev/null 2>&1; then
        work="$(mktemp -d /tmp/kiln-fuzz.XXXXXX)"
        cp "$BIN/$t" "$work/" && cp -r "$corpus" "$work/corpus" && cp -r "seeds/$t" "$work/seeds" 2>/dev/null || true
        mkdir -p "$work/artifacts"
        chown -R tester "$work"
        chmod 755 "$work"
        run=("runuser" -u tester -- "$work/$t" -max_total_time="$SECS" -rss_limit_mb=2048 -artifact_prefix="$work/artifacts/" "$work/corpus")
        if [ -d "$work/seeds" ]; then run+=("$work/seeds"); fi
    fi
    log="$(mktemp)"
    if "${run[@]}" >"$log" 2>&1; then
        execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
        [ -n "$execs" ] || execs="$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')"
        echo "fuzz $t: ${execs:-?} executions in ${SECS}s, no crash"
    else
        echo "fuzz $t: FAILED"; tail -40 "$log"; status=1
    fi
    rm -f "$log"
done
exit $status
