#!/usr/bin/env bash
# Peer suite: QEMU's vfio-user client drives `vfio-migrate serve` devices.
#
#   1. builds QEMU 10.2.2 with its vfio-user client with the kit in
#      ../shared/peers/qemu (found by kits.inc; build.sh, ~4-6 min the first
#      time, then cached in $VFIO_PEER_CACHE/qemu: well under a second);
#   2. prepares the guest kernel with tests/kernel/setup.sh (the kernel
#      test's Debian 6.12 kernel, plus uio and uio_pci_generic; ~1 s when
#      done) and builds the initramfs (tests/peers/qemu/initramfs.sh:
#      busybox, the static guest program tests/peers/qemu/guest.c);
#   3. runs the suite's Rust tests (crates/cli/tests/qemu_guest.rs, ignored
#      in a plain `cargo test`) with VFIO_QEMU, VFIO_QEMU_KERNEL and
#      VFIO_QEMU_INITRD set, appending their output to $PEER_LOG.
#
# When QEMU or the guest kernel cannot be built here it prints
# `SKIPPED: qemu: <why>` and exits 0, except under CI=true, where it exits 1.
# A failing test, or a guest program that does not compile, always fails.
#
# Environment: VFIO_PEER_CACHE (default /var/cache/vfio-migrate-peers),
# VFIO_PEER_KITS (see kits.inc), PEER_LOG (set by test.sh), and those of
# tests/kernel/setup.sh (VFIO_KERNEL_CACHE, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
SUITE=qemu
CACHE=${VFIO_PEER_CACHE:-/var/cache/vfio-migrate-peers}
PEER_LOG=${PEER_LOG:-/dev/null}
# shellcheck source=kits.inc
. tests/peers/kits.inc
kits_find || true
KIT=${kits:-../shared/peers}/qemu
_log_tag=peer-qemu
# shellcheck source=../kernel/lib.sh
source tests/kernel/lib.sh

T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100)); }

skip() {
    if [ "${CI:-}" = true ]; then
        echo "FAILED: $SUITE: $1 (CI=true: the peer suites must run)" >&2
        exit 1
    fi
    echo "SKIPPED: $SUITE: $1"
    exit 0
}

# ---------------------------------------------------------------- QEMU
[ -f "$KIT/build.sh" ] || skip "no QEMU kit at $KIT"
log "building QEMU with $KIT/build.sh into $CACHE/qemu (cached after the first build)"
if ! Q=$(bash "$KIT/build.sh" "$CACHE/qemu" | tail -n 1) || [ ! -x "$Q" ]; then
    skip "QEMU could not be built with $KIT/build.sh (see its messages above)"
fi
log "QEMU: $Q ($("$Q" -version | head -n 1)) at $(elapsed)"

# ---------------------------------------------------------------- guest
klog=$(mktemp)
WORK=$(mktemp -d "${TMPDIR:-/dev/shm}/vfio-peer-qemu.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$klog" "$WORK"' EXIT
if ! tests/kernel/setup.sh >"$klog" 2>&1; then
    tail -n 20 "$klog" >&2
    skip "the guest kernel could not be prepared (tests/kernel/setup.sh)"
fi
log "kernel: $(readlink -f "$KCACHE/current") at $(elapsed)"
tests/peers/qemu/initramfs.sh "$WORK/initramfs.cpio"

# ---------------------------------------------------------------- tests
export VFIO_QEMU=$Q
export VFIO_QEMU_KERNEL=$KCACHE/current/vmlinuz
export VFIO_QEMU_INITRD=$WORK/initramfs.cpio
log "running the QEMU peer tests at $(elapsed)"
cargo test --release --locked -p vfio-migrate --test qemu_guest -- --ignored 2>&1 | tee -a "$PEER_LOG"
log "done in $(elapsed)"
