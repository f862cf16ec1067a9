#!/usr/bin/env bash
# Peer suite: silent network faults between two network namespaces joined
# by a veth pair (crates/cli/tests/netns). Needs root and iproute2 (installed
# here when missing). See tests/peers/README.md for the contract.
set -euo pipefail
cd "$(dirname "$0")/../.."
skip() {
    if [ "${CI:-}" = true ]; then
        echo "netns suite: cannot run under CI: $*" >&2
        exit 1
    fi
    echo "SKIPPED: netns suite: $*"
    exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
if ! command -v ip >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || skip "no ip (iproute2) and no apt-get to install it"
    echo "netns suite: installing iproute2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iproute2 >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iproute2 >/dev/null; } ||
        skip "installing iproute2 failed"
fi
probe="vmprobe$$"
ip netns add "$probe" 2>/dev/null || skip "cannot create a network namespace here"
ip netns del "$probe"
cargo test --release --locked -p vfio-migrate --test netns -- --ignored --test-threads 2 2>&1 | tee -a "$PEER_LOG"
