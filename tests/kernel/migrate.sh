#!/bin/sh
# Guest-side test (runs as /test.sh inside the VM, busybox sh): migrates the
# kernel's mtty mdev device with /bin/vfio-migrate through the same code
# paths `vfio-migrate migrate` uses for vfio-user devices.
#
#  0. a RUNNING kernel device is not taken as a destination (the kernel
#     cannot say whether it is in use): refused, the source untouched;
#  1. live migration kernel:A -> kernel:B (stopped first, which says it may
#     be overwritten) with PRE_COPY: bytes written into A's port-0 FIFO
#     through BAR0 come out of B's FIFO;
#  2. snapshot A2 -> file: -> fresh instance C, checked the same way;
#  3. errors: a 2-port state into a 1-port instance is refused with a clear
#     message and the source stays RUNNING; asking for ERROR is refused.
set -eu
VM=/bin/vfio-migrate
T=/sys/class/mdev_bus/mtty/mdev_supported_types
A=11111111-0000-4000-8000-00000000000a
B=11111111-0000-4000-8000-00000000000b
A2=11111111-0000-4000-8000-0000000000a2
C=11111111-0000-4000-8000-00000000000c
D=11111111-0000-4000-8000-00000000000d
A3=11111111-0000-4000-8000-0000000000a3
for u in $A $B $A2 $C $A3; do echo $u > $T/mtty-2/create; done
echo $D > $T/mtty-1/create
fail() { echo "kernel-test: FAIL: $*"; exit 1; }
ok() { echo "kernel-test: ok: $*"; }

# Writes the bytes of $2 one at a time into port 0's THR of device $1.
put() {
    s=$2
    while [ -n "$s" ]; do
        c=${s%"${s#?}"}
        s=${s#?}
        $VM device "kernel:$1" write 0 0 "$(printf '%s' "$c" | od -An -tx1 | tr -d ' \n')" >/dev/null
    done
}
# Pops $2 bytes from port 0's RBR of device $1, printed as text.
get() {
    out=""
    i=0
    while [ $i -lt "$2" ]; do
        h=$($VM device "kernel:$1" read 0 0 1)
        out="$out$(printf "\\$(printf '%03o' "0x$h")")"
        i=$((i + 1))
    done
    printf '%s' "$out"
}
lsr() { $VM device "kernel:$1" read 0 5 1; }
state() { $VM device "kernel:$1" state; }

$VM device kernel:$A info
[ "$(state $A)" = RUNNING ] || fail "A starts RUNNING, got $(state $A)"

# 0. a RUNNING destination the kernel cannot vouch for is refused
put $A "hello"
[ $(( 0x$(lsr $A) & 1 )) -eq 1 ] || fail "A's LSR shows no data ready"
if $VM migrate --source kernel:$A --dest kernel:$B > /tmp/m0.out 2>&1; then
    cat /tmp/m0.out; fail "a RUNNING kernel destination was overwritten without --force"
fi
cat /tmp/m0.out
grep -q "set-state STOP" /tmp/m0.out || fail "the refusal does not say how to prepare the destination"
[ "$(state $A)" = RUNNING ] || fail "A is not RUNNING after the refusal: $(state $A)"
[ "$(state $B)" = RUNNING ] || fail "B was touched by the refused migration: $(state $B)"
ok "RUNNING kernel destination refused; source untouched"

# 1. live migration with pre-copy into a destination stopped first
$VM device kernel:$B set-state STOP >/dev/null || fail "stopping B"
$VM migrate --source kernel:$A --dest kernel:$B --precopy on --json > /tmp/m1.json || { cat /tmp/m1.json; fail "migrate A -> B"; }
cat /tmp/m1.json; echo
grep -q '"status": *"ok"' /tmp/m1.json || grep -q '"status":"ok"' /tmp/m1.json || fail "migrate A -> B status"
grep -q '"precopy_iterations": *[1-9]' /tmp/m1.json || grep -q '"precopy_iterations":[1-9]' /tmp/m1.json || fail "no pre-copy round"
[ "$(state $B)" = RUNNING ] || fail "B is not RUNNING after migration: $(state $B)"
[ $(( 0x$(lsr $B) & 1 )) -eq 1 ] || fail "B's LSR shows no data ready"
got=$(get $B 5)
[ "$got" = "hello" ] || fail "B's FIFO holds '$got', expected 'hello'"
ok "live migration kernel:A -> kernel:B carried the FIFO ('$got')"

# 2. snapshot to a file and restore into a fresh instance
put $A2 "snap!"
$VM migrate --source kernel:$A2 --dest file:/tmp/a2.snap --json > /tmp/m2.json || { cat /tmp/m2.json; fail "save A2"; }
$VM inspect file:/tmp/a2.snap || fail "inspect"
$VM device kernel:$C set-state STOP >/dev/null || fail "stopping C"
$VM migrate --source file:/tmp/a2.snap --dest kernel:$C --json > /tmp/m3.json || { cat /tmp/m3.json; fail "restore into C"; }
[ "$(state $C)" = RUNNING ] || fail "C is not RUNNING after restore"
got=$(get $C 5)
[ "$got" = "snap!" ] || fail "C's FIFO holds '$got', expected 'snap!'"
ok "snapshot kernel:A2 -> file -> kernel:C carried the FIFO ('$got')"

# 3a. a 2-port state into a 1-port instance: refused, source stays RUNNING
put $A3 "xy"
if $VM migrate --source kernel:$A3 --dest kernel:$D > /tmp/m4.out 2>&1; then
    cat /tmp/m4.out; fail "2-port -> 1-port migration was accepted"
fi
cat /tmp/m4.out
grep -qi "region\|port\|compatib" /tmp/m4.out || fail "the refusal does not say why"
[ "$(state $A3)" = RUNNING ] || fail "source A3 is not RUNNING after the refused migration: $(state $A3)"
got=$(get $A3 2)
[ "$got" = "xy" ] || fail "A3 lost its FIFO: '$got'"
ok "2-port -> 1-port refused; source RUNNING with its FIFO intact"
# ... and from a snapshot
if $VM migrate --source file:/tmp/a2.snap --dest kernel:$D > /tmp/m5.out 2>&1; then
    cat /tmp/m5.out; fail "2-port snapshot restored into a 1-port instance"
fi
cat /tmp/m5.out
[ "$(state $D)" = RUNNING ] || fail "D is not RUNNING after the refused restore"
ok "2-port snapshot into 1-port instance refused"

# 3b. ERROR cannot be requested
if $VM device kernel:$B set-state ERROR > /tmp/m6.out 2>&1; then
    cat /tmp/m6.out; fail "set-state ERROR was accepted"
fi
cat /tmp/m6.out
grep -q "EINVAL" /tmp/m6.out || fail "set-state ERROR: no EINVAL in the message"
[ "$(state $B)" = RUNNING ] || fail "B left RUNNING after the refused ERROR request"
ok "ERROR refused by the kernel (EINVAL), device still RUNNING"

echo "kernel-test: all passed"
