#!/usr/bin/env bash
# The full test suite: fetch the models (idempotent), then build and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace 2>&1
