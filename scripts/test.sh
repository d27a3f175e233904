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
# One test at a time: lab tests are heavy (real daemons on 2 cores) and timing-sensitive.
cargo test --workspace --no-fail-fast -- --test-threads=1 "$@"
