#!/usr/bin/env bash
# Warren demo: a coordinator and three nodes (two behind different home-router NATs, one with
# a public address) in network namespaces on this machine. Needs root: `sudo scripts/demo.sh`.
# Builds the debug binaries, pings across the mesh, prints `warren status`, and keeps the mesh
# up until Enter or Ctrl-C; then everything is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "the demo creates network namespaces: run it as root (sudo scripts/demo.sh)" >&2
    exit 1
fi
. scripts/cargo-env.sh
echo "building the debug binaries (cargo build --workspace --bins)..."
cargo build --workspace --bins
cargo build -p warren-lab --example demo
target_dir="${CARGO_TARGET_DIR:-target}"
demo="$target_dir/debug/examples/demo"
# The demo cleans up after itself; if it is killed hard, its namespaces are swept here.
trap '"$demo" --sweep || true' EXIT
"$demo"
