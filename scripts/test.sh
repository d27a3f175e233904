#!/usr/bin/env bash
# The full test suite: unit and simulation tests, then the NAT lab (needs root).
# Builds the binaries first because the lab runs the real `warren` and `warren-coordinator`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace -- --test-threads=1 "$@"
