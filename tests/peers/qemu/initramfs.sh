#!/usr/bin/env bash
# Builds the QEMU peer suite's initramfs: busybox, /init (init.sh),
# /bin/qemu_guest (guest.c, static), /bin/guest_exit (tests/kernel), and
# uio + uio_pci_generic from the kernel cache that tests/kernel/setup.sh
# prepared (<cache>/current/extra-modules).
#
#   initramfs.sh OUT.cpio
set -euo pipefail
export LC_ALL=C
_log_tag=qemu-initramfs
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../kernel/lib.sh
source "$HERE/../../kernel/lib.sh"

[ $# = 1 ] || die "usage: $0 OUT.cpio"
OUT=$1
KD=$KCACHE/current
[ -f "$KD/extra-modules/load-order" ] || die "no $KD/extra-modules: run tests/kernel/setup.sh first"
BUSYBOX=$(command -v busybox) || die "busybox not found: run tests/kernel/setup.sh first"
is_static_elf "$BUSYBOX" || die "$BUSYBOX is not static (install busybox-static)"

W=$(mktemp -d "${TMPDIR:-/dev/shm}/vfio-qemu-initramfs.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$W"' EXIT
R=$W/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done
gcc -static -O2 -Wall -Wextra -Werror -o "$R/bin/qemu_guest" "$HERE/guest.c" \
    || die "gcc -static failed for $HERE/guest.c (is libc6-dev installed?)"
gcc -static -O2 -Wall -Wextra -o "$R/bin/guest_exit" "$KERNEL_DIR/guest_exit.c" \
    || die "gcc -static failed for $KERNEL_DIR/guest_exit.c"
while read -r m; do
    cp "$KD/extra-modules/$m" "$R/lib/modules/$m"
done <"$KD/extra-modules/load-order"
cp "$KD/extra-modules/load-order" "$R/lib/modules/load-order"
install -m 0755 "$HERE/init.sh" "$R/init"
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$OUT.tmp" \
    || die "building the initramfs failed"
mv -f "$OUT.tmp" "$OUT"
log "$OUT: $(du -h "$OUT" | cut -f1), kernel $(basename "$(readlink -f "$KD")"), modules $(tr '\n' ' ' <"$KD/extra-modules/load-order")"
