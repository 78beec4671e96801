#!/usr/bin/env bash
# Vendors all crates into vendor/ and writes .cargo/config.toml so that
# `cargo build --offline` works without registry access.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cargo
cargo vendor --locked vendor > .cargo/config.toml
echo "vendored into vendor/; .cargo/config.toml points cargo at it (commit neither unless a crate is patched)"
