# Sourced by the scripts: make `cargo` usable under sudo, where root's PATH usually lacks the
# invoking user's ~/.cargo/bin and rustup would look for toolchains in /root.
if ! command -v cargo >/dev/null 2>&1 && [ -n "${SUDO_USER:-}" ]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}"
    export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
    export PATH="$CARGO_HOME/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found on PATH (install Rust from https://rustup.rs)" >&2
    exit 1
fi
