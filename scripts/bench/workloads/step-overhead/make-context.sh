#!/usr/bin/env bash
# make-context.sh DIR — step-overhead needs no context files.
set -euo pipefail
mkdir -p "${1:?usage: make-context.sh DIR}"
