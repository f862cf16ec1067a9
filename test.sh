#!/usr/bin/env bash
# The project's test command. Installs what the tests need (Debian packages
# and kernel for the real-kernel test), then runs:
#   1. the real-kernel test: a static vfio-migrate migrates the kernel's mtty
#      device inside a Debian 6.12 guest under QEMU TCG (tests/kernel/);
#   2. every Rust test of the workspace (unit, and integration tests that run
#      real device-server processes over UNIX sockets and TCP loopback).
# Set VFIO_SKIP_KERNEL=1 to skip step 1 (e.g. on a machine without apt).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if [ "${VFIO_SKIP_KERNEL:-0}" != 1 ]; then
    echo "== real-kernel test: setup (packages, kernel, mtty.ko)"
    tests/kernel/setup.sh
    echo "== real-kernel test: static vfio-migrate"
    target=x86_64-unknown-linux-gnu
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --target "$target" -p vfio-migrate
    echo "== real-kernel test: migrate mtty inside the guest"
    VFIO_GUEST_QUIET=${VFIO_GUEST_QUIET:-0} \
        tests/kernel/run-guest.sh "target/$target/release/vfio-migrate" tests/kernel/migrate.sh
fi

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --release --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; s += $8 }
     END { printf "all tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
