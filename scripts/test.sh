#!/usr/bin/env bash
# The full test suite: unit and simulation tests, then the NAT lab (needs root: run it as
# `sudo scripts/test.sh`). Builds the binaries first because the lab runs the real `warren`
# and `warren-coordinator` from target/debug. Extra arguments go to the test binaries, e.g.
# `sudo scripts/test.sh pair_eim` runs only the tests whose names contain "pair_eim".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo-env.sh
if [ "$(id -u)" != 0 ]; then
    echo "warning: not root — the NAT lab tests (package warren-lab) will fail; use sudo" >&2
fi
cargo build --workspace --bins
# The lab's measurements (time to first ping, coordinator bytes, throughput) are collected
# here and printed at the end, since cargo hides the output of passing tests.
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
export WARREN_LAB_REPORT="$target_dir/warren-lab-results.txt"
mkdir -p "$target_dir"
: > "$WARREN_LAB_REPORT"
print_report() {
    if [ -s "$WARREN_LAB_REPORT" ]; then
        echo
        echo "NAT lab results ($WARREN_LAB_REPORT):"
        cat "$WARREN_LAB_REPORT"
    fi
}
trap print_report EXIT
# One test at a time: lab tests are heavy (real daemons on 2 cores) and timing-sensitive.
cargo test --workspace --no-fail-fast -- --test-threads=1 "$@"
