#!/usr/bin/env bash
# The test command: unit tests, integration tests (they run kiln as the unprivileged test
# user when started as root), clippy and rustfmt checks, and a smoke run of scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# The fuzz targets (fuzz/, run by .ci/run's fuzz smoke) call the library too: keep them compiling.
cargo check --manifest-path fuzz/Cargo.toml --bins --quiet
# The base images some tests pull (busybox, debian:bookworm) come from a registry on
# 127.0.0.1:5000, made offline with kiln itself when none answers there.
cargo build --release --quiet
scripts/local-registry.sh target/release/kiln
cargo test --release -- --test-threads=2 "$@"
# BuildKit's frontend tests ported as a corpus (tests/buildkit; needs the local registry of
# ../shared/env/setup.sh; about a minute, two builds at a time). KILN_SKIP_BUILDKIT=1 skips it.
# Its cases pull localhost:5000/busybox: without that registry the corpus is skipped, loudly.
if [[ -z ${KILN_SKIP_BUILDKIT:-} ]]; then
  if curl -fs -o /dev/null http://127.0.0.1:5000/v2/busybox/tags/list; then
    tests/buildkit/run.sh --builder kiln --jobs 2
  else
    echo "test.sh: SKIPPING tests/buildkit: no registry with busybox on 127.0.0.1:5000 (run ../shared/env/setup.sh)" >&2
  fi
fi
# Benchmarks are not tests; this only keeps the driver working (tiny sizes, one run, seconds).
scripts/bench.sh --smoke
# The isolation ladder in every simulated locked-down environment (about a minute; needs root,
# since lockdown.sh builds each sandbox as root and then drops privileges). KILN_SKIP_MATRIX=1 skips it.
if [[ $(id -u) == 0 && -z ${KILN_SKIP_MATRIX:-} ]]; then
  scripts/lockdown-matrix.sh
fi
