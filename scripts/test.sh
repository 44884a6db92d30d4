#!/usr/bin/env bash
# The full test suite: fetch the models (idempotent), then build and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# A clean CI clone builds once: incremental caches would only take disk.
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi
cargo test --workspace 2>&1
