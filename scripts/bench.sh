#!/usr/bin/env bash
# Warren against Nebula 1.6.1 in the NAT lab: throughput (TCP one stream each way, four
# streams, UDP at <= 1% loss), ping RTT, CPU per GB and memory, on a direct (eim+eim) and a
# relayed (sym+sym) pair, printed as a table. Needs root: `sudo scripts/bench.sh`.
# Installs nebula and iperf3 with apt-get when missing, builds Warren in release mode, and
# runs the lab with the release binaries (WARREN_LAB_PROFILE=release). Takes 3-5 minutes;
# the lab's namespaces are removed at the end, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "the bench creates network namespaces: run it as root (sudo scripts/bench.sh)" >&2
    exit 1
fi
missing=()
command -v nebula >/dev/null 2>&1 || missing+=(nebula)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
. scripts/cargo-env.sh
echo "building Warren in release mode (cargo build --release --workspace --bins)..."
cargo build --release --workspace --bins
cargo build --release -p warren-lab --example bench
target_dir="${CARGO_TARGET_DIR:-target}"
bench="$target_dir/release/examples/bench"
export WARREN_LAB_PROFILE=release
# Quieter daemons: debug logging on every packet would be measured too.
export WARREN_LAB_LOG="${WARREN_LAB_LOG:-warn}"
# The bench cleans up after itself; if it is killed hard, its namespaces are swept here.
trap '"$target_dir/release/examples/bench" --sweep >/dev/null 2>&1 || true' EXIT
"$bench" "$@"
