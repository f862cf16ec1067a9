#!/usr/bin/env bash
# Peer suite: libvfio-user, the reference C implementation of vfio-user.
# Builds its sample server with the kit in ../shared/peers/libvfio-user
# (cached under $VFIO_PEER_CACHE/libvfio-user), then runs the interop
# tests (crates/cli/tests/interop_libvfio_user.rs) against it. See
# README.md here for the contract.
set -euo pipefail
cd "$(dirname "$0")/../.."

suite=libvfio-user
. tests/peers/kits.sh
kits_find || true
kit=$kits/libvfio-user/build.sh
cache=${VFIO_PEER_CACHE:-/var/cache/vfio-migrate-peers}/libvfio-user
log=${PEER_LOG:-/dev/null}

skip() {
    echo "SKIPPED: $suite: $*"
    if [ "${CI:-}" = true ]; then
        echo "$suite: under CI=true the peer must run" >&2
        exit 1
    fi
    exit 0
}

[ -f "$kit" ] || skip "no kit at $kit"
if ! server=$(bash "$kit" "$cache" | tail -1) || [ ! -x "$server" ]; then
    skip "the reference server could not be built (see $cache/kit-build.log)"
fi
echo "$suite: server $server"

export VFIO_LIBVFIO_USER_SERVER=$server
# The interop tests run real processes; a failure exits non-zero here.
status=0
cargo test --release --locked -p vfio-migrate --test interop_libvfio_user -- --ignored 2>&1 |
    tee -a "$log" || status=$?
exit "$status"
