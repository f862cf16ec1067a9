#!/usr/bin/env bash
# Boot the prepared Debian 6.12 kernel under QEMU (TCG) with a busybox
# initramfs, load vfio, vfio_iommu_type1, mdev and mtty, and run a test script.
#
#   run-guest.sh <static-binary> <guest-script.sh> [HOST_FILE[:GUEST_PATH]]...
#
# In the guest: <static-binary> is /bin/vfio-migrate, <guest-script.sh> is
# /test.sh (run with busybox sh), /bin/vfio_probe and /bin/guest_exit are the
# helpers from this directory, extra files land at GUEST_PATH (default
# /data/<basename>). Everything runs as root; /tmp is a tmpfs.
#
# Exit status: 0 if /test.sh exited 0; 1 if it failed; 3 if the guest could not
# set up (module load failed); 124 on timeout; 2 if the guest gave no verdict
# (kernel panic, crash, ...). The serial console is streamed to stdout.
#
# Environment:
#   VFIO_KERNEL_CACHE    cache prepared by setup.sh (default /var/cache/vfio-migrate-kernel)
#   VFIO_GUEST_TIMEOUT   seconds before QEMU is killed (default 240)
#   VFIO_GUEST_MEM       guest memory (default 1G)
#   VFIO_GUEST_SMP       guest CPUs (default 1)
#   VFIO_GUEST_LOG       also save the console log to this file
#   VFIO_GUEST_QUIET     1 = don't stream the console; print it only on failure
#   VFIO_GUEST_VERBOSE   1 = full kernel boot messages (default: kernel `quiet`)
#   VFIO_GUEST_APPEND    extra kernel command-line arguments
set -euo pipefail
export LC_ALL=C
_log_tag=run-guest
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 <static-binary> <guest-script.sh> [HOST_FILE[:GUEST_PATH]]..." >&2; exit 2; }
[ $# -ge 2 ] || usage
BIN=$1 SCRIPT=$2
shift 2

[ -f "$BIN" ] || die "binary not found: $BIN"
[ -f "$SCRIPT" ] || die "guest script not found: $SCRIPT"
is_static_elf "$BIN" || die "$BIN is not a statically linked ELF executable (for Rust: RUSTFLAGS='-C target-feature=+crt-static' cargo build --target x86_64-unknown-linux-gnu)"

TIMEOUT=${VFIO_GUEST_TIMEOUT:-240}
MEM=${VFIO_GUEST_MEM:-1G}
SMP=${VFIO_GUEST_SMP:-1}

[ -d "$KCACHE" ] || die "no kernel cache at $KCACHE: run tests/kernel/setup.sh first"
# Shared lock: setup.sh (exclusive) must not swap the kernel while we boot it.
{ exec 9<>"$KCACHE/.lock"; } 2>/dev/null || { exec 9<"$KCACHE/.lock"; } 2>/dev/null \
    || die "cannot open $KCACHE/.lock: run tests/kernel/setup.sh first"
flock -s -w 900 9 || die "timed out waiting for setup.sh to release $KCACHE/.lock"
KD=$KCACHE/current
[ -f "$KD/.complete" ] && [ -f "$KD/vmlinuz" ] && [ -f "$KD/modules/load-order" ] \
    || die "kernel cache $KD is not ready: run tests/kernel/setup.sh first"
for tool in qemu-system-x86_64 busybox cpio gcc timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found: run tests/kernel/setup.sh first"
done
BUSYBOX=$(command -v busybox)
is_static_elf "$BUSYBOX" || die "$BUSYBOX is not static (install busybox-static)"

# Work dir on tmpfs when possible: file creation on these VMs' disk is slow.
WBASE=${TMPDIR:-/dev/shm}
free_kb=$(df -Pk "$WBASE" 2>/dev/null | awk 'NR==2 {print $4}' || true)
[ "${free_kb:-0}" -ge 262144 ] || WBASE=/tmp
WORK=$(mktemp -d "$WBASE/vfio-guest.XXXXXX" 2>/dev/null || mktemp -d /tmp/vfio-guest.XXXXXX)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
R=$WORK/root

# ---------------------------------------------------------------- initramfs
mkdir -p "$R"/{bin,dev,proc,sys,tmp,run,etc,data,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
    # `busybox --list` includes busybox itself: never link it over the binary.
    [ "$applet" = busybox ] && continue
    [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done
build_helpers "$R/bin"
install -m 0755 "$BIN" "$R/bin/vfio-migrate"
install -m 0755 "$SCRIPT" "$R/test.sh"
while read -r m; do
    cp "$KD/modules/$m" "$R/lib/modules/$m"
done <"$KD/modules/load-order"
cp "$KD/modules/load-order" "$R/lib/modules/load-order"
for spec in "$@"; do
    host=${spec%%:*}
    if [ "$host" = "$spec" ]; then guest=/data/$(basename "$host"); else guest=${spec#*:}; fi
    [ -e "$host" ] || die "extra file not found: $host"
    mkdir -p "$R$(dirname "$guest")"
    cp -a "$host" "$R$guest"
done
# /dev/console must exist before devtmpfs is mounted, or init starts without
# stdout (needs root; /init re-opens the console after mounting devtmpfs anyway).
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"

cat >"$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /root /dev/pts /dev/shm
exec </dev/console >/dev/console 2>&1

verdict() {   # $1 = isa-debug-exit code; QEMU exits with ($1 << 1) | 1
    /bin/guest_exit "$1"
    # Only reached without an isa-debug-exit device.
    echo "[init] guest_exit failed; powering off"
    poweroff -f
    sleep 5
}

echo "[init] kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s), uptime $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /lib/modules/load-order); do
    if ! out=$(insmod "/lib/modules/$m" 2>&1); then
        echo "[init] insmod $m failed: $out"
        dmesg | tail -n 40
        echo "[init] VERDICT: SETUP-FAILED"
        verdict 2
    fi
done
echo "[init] loaded: $(tr '\n' ' ' </lib/modules/load-order)"
echo "[init] running /test.sh"
echo "------------------------------------------------------------ test.sh"
cd /
sh /test.sh
rc=$?
echo "------------------------------------------------------------ end test.sh"
if [ "$rc" = 0 ]; then
    echo "[init] VERDICT: PASS (/test.sh exited 0, uptime $(cut -d' ' -f1 /proc/uptime)s)"
    verdict 16
fi
echo "[init] /test.sh exited $rc; last kernel messages:"
dmesg | tail -n 60
echo "[init] VERDICT: FAIL (/test.sh exited $rc)"
verdict 1
EOF
chmod 0755 "$R/init"
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$WORK/initramfs.cpio" \
    || die "building the initramfs failed"

# ---------------------------------------------------------------- boot
APPEND="console=ttyS0 panic=-1 rdinit=/init"
[ "${VFIO_GUEST_VERBOSE:-0}" = 1 ] || APPEND="$APPEND quiet"
[ -z "${VFIO_GUEST_APPEND:-}" ] || APPEND="$APPEND $VFIO_GUEST_APPEND"
LOG=$WORK/console.log
log "kernel $(basename "$(readlink -f "$KD")"), initramfs $(du -h "$WORK/initramfs.cpio" | cut -f1), timeout ${TIMEOUT}s"
T0=$(date +%s%N)
# -nic none: no network device at all. stdin is /dev/null (CI has none anyway).
# shellcheck disable=SC2054  # the commas belong to qemu options
QEMU=(timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -m "$MEM" -smp "$SMP"
      -nographic -no-reboot -nic none
      -kernel "$KD/vmlinuz" -initrd "$WORK/initramfs.cpio" -append "$APPEND"
      -device isa-debug-exit,iobase=0xf4,iosize=0x04)
# qemu's serial output has CRLF line ends and SeaBIOS's terminal resets: clean
# them (sed -u: unbuffered, so the console streams live).
clean_console() { sed -u 's/\r//g; s/\x1bc/\n/g; s/\x1b\[[0-9;?]*[a-zA-Z]//g'; }
set +e
if [ "${VFIO_GUEST_QUIET:-0}" = 1 ]; then
    "${QEMU[@]}" </dev/null 2>&1 | clean_console >"$LOG"
    RC=${PIPESTATUS[0]}
else
    "${QEMU[@]}" </dev/null 2>&1 | clean_console | tee "$LOG"
    RC=${PIPESTATUS[0]}
fi
set -e
MS=$(( ($(date +%s%N) - T0) / 1000000 ))
SECS="$((MS / 1000)).$((MS % 1000 / 100))s"
[ -z "${VFIO_GUEST_LOG:-}" ] || cp "$LOG" "$VFIO_GUEST_LOG"

show_log() { [ "${VFIO_GUEST_QUIET:-0}" = 1 ] && { echo "----- guest console -----"; cat "$LOG"; echo "----- end guest console -----"; }; return 0; }
case $RC in
    33)  log "PASS: guest test passed (qemu exit 33) in $SECS"; exit 0 ;;
    3)   show_log; log "FAIL: guest test failed (qemu exit 3) in $SECS"; exit 1 ;;
    5)   show_log; log "FAIL: guest setup failed, a module did not load (qemu exit 5) in $SECS"; exit 3 ;;
    124|137) show_log; log "FAIL: timed out after ${TIMEOUT}s (VFIO_GUEST_TIMEOUT)"; exit 124 ;;
    *)   show_log; log "FAIL: guest gave no verdict (qemu exit $RC: kernel panic, crash or qemu error) in $SECS"; exit 2 ;;
esac
