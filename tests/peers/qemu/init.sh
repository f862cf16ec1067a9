#!/bin/sh
# /init of the QEMU peer suite's guest (busybox sh, as root): loads uio and
# uio_pci_generic, runs /bin/qemu_guest (guest.c) and reports its verdict
# through QEMU's isa-debug-exit device: QEMU exits with 33 when every check
# passed, 3 when one failed, 5 when a module did not load.
export PATH=/bin HOME=/
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

verdict() {   # $1 = isa-debug-exit code; QEMU exits with ($1 << 1) | 1
    /bin/guest_exit "$1"
    echo "[init] guest_exit failed; powering off"
    poweroff -f
    sleep 5
}

echo "[init] kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime)s"
# The DMA test gives the vgpu the physical address of a locked page: keep
# compaction from moving it.
echo 0 >/proc/sys/vm/compact_unevictable_allowed
for m in $(cat /lib/modules/load-order); do
    if ! out=$(insmod "/lib/modules/$m" 2>&1); then
        echo "[init] insmod $m failed: $out"
        echo "[init] VERDICT: SETUP-FAILED"
        verdict 2
    fi
done
echo "[init] running /bin/qemu_guest"
/bin/qemu_guest
rc=$?
if [ "$rc" = 0 ]; then
    echo "[init] VERDICT: PASS (uptime $(cut -d' ' -f1 /proc/uptime)s)"
    verdict 16
fi
echo "[init] qemu_guest exited $rc; last kernel messages:"
dmesg | tail -n 40
echo "[init] VERDICT: FAIL"
verdict 1
