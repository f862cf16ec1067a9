#!/usr/bin/env bash
# The project's test command. Installs what the tests need (Debian packages,
# a Debian kernel, the reference peers), then runs:
#   1. the real-kernel test: a static vfio-migrate migrates the kernel's mtty
#      device inside a Debian 6.12 guest under QEMU TCG (tests/kernel/);
#   2. every Rust test of the workspace (unit tests, and integration tests
#      that run real device-server processes over UNIX sockets and TCP
#      loopback);
#   3. the peer suites (tests/peers/*.sh): tests against real third-party
#      peers (libvfio-user's reference server, QEMU's vfio-user client),
#      built from the kits in ../shared/peers and cached. In step 2 they
#      are ignored; each suite builds its peer and runs them. A suite whose
#      peer cannot be built here says so and its tests count as skipped —
#      except under CI=true, where a peer that cannot be built fails the run.
# Set VFIO_SKIP_KERNEL=1 to skip step 1, VFIO_SKIP_PEERS=1 to skip step 3
# (their tests then count as skipped).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export VFIO_PEER_CACHE=${VFIO_PEER_CACHE:-/var/cache/vfio-migrate-peers}

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
peerlog=$(mktemp)
trap 'rm -f "$log" "$peerlog"' EXIT
cargo test --workspace --release --locked 2>&1 | tee "$log"

if [ "${VFIO_SKIP_PEERS:-0}" != 1 ]; then
    for suite in tests/peers/*.sh; do
        [ -e "$suite" ] || continue
        echo "== peer suite: $suite"
        # Each suite appends its cargo test output to $PEER_LOG; it exits
        # non-zero on a failed test, or (under CI) on a peer it cannot build.
        PEER_LOG=$peerlog bash "$suite"
    done
fi

# One closing line for the whole run (cargo prints one per test binary).
# Peer tests were ignored in the main run and ran in the peer suites: each
# counts once, as passed or failed there, or as skipped if no suite ran it.
awk '/^test result:/ { if (FILENAME == ARGV[1]) { p += $4; f += $6; s += $8 }
                       else { pp += $4; pf += $6 } }
     END { printf "all tests: %d passed, %d failed, %d skipped\n", p + pp, f + pf, s - pp - pf }' \
    "$log" "$peerlog"
