# shellcheck shell=bash
# Shared definitions for tests/kernel/setup.sh and tests/kernel/run-guest.sh.
# Sourced, not executed.
# shellcheck disable=SC2034  # variables are used by the scripts that source this

KERNEL_SERIES=6.12
KERNEL_FLAVOUR=amd64
KCACHE=${VFIO_KERNEL_CACHE:-/var/cache/vfio-migrate-kernel}
KERNEL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Host packages the harness needs (all from Debian bookworm).
#   gcc-12 is the compiler the Debian kernel was built with (the headers'
#   .kernelvariables set CC=x86_64-linux-gnu-gcc-12); gcc/libc6-dev build the
#   static guest helpers; dwarves provides pahole (BTF for the module build);
#   kmod provides modinfo; binutils provides readelf.
HOST_PACKAGES=(qemu-system-x86 busybox-static cpio dwarves xz-utils zstd
               gcc gcc-12 make libc6-dev binutils kmod)

# Modules of the same kernel kept for other suites, in <cache>/<abi>/extra-modules
# with their own load-order (dependencies first). run-guest.sh does not load
# them; tests/peers/qemu.sh puts uio + uio_pci_generic in its guest.
EXTRA_MODULES=(uio uio_pci_generic)

_log_tag=${_log_tag:-kernel}
log()  { printf '[%s] %s\n' "$_log_tag" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$_log_tag" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$_log_tag" "$*" >&2; exit 1; }

# true if $1 is an ELF executable without a program interpreter (static).
is_static_elf() {
    local hdr
    hdr=$(readelf -hlW "$1" 2>/dev/null) || return 1
    grep -q 'Requesting program interpreter' <<<"$hdr" && return 1
    return 0
}

# build_helpers OUTDIR: compile the guest helpers (static) into OUTDIR.
build_helpers() {
    local out=$1 src
    mkdir -p "$out"
    for src in guest_exit vfio_probe; do
        gcc -static -O2 -Wall -Wextra -o "$out/$src.tmp.$$" "$KERNEL_DIR/$src.c" \
            || die "gcc -static failed for $KERNEL_DIR/$src.c (is libc6-dev installed? run tests/kernel/setup.sh)"
        mv -f "$out/$src.tmp.$$" "$out/$src"
    done
}
