#!/bin/sh
# Guest-side smoke test (runs as /test.sh inside the VM, busybox sh).
# Checks the VFIO + mdev + mtty chain end to end with /bin/vfio_probe:
# creates an mtty-2 mdev, opens it through the VFIO container/group API and
# requires migration flags STOP_COPY|P2P|PRE_COPY (7).
set -e
echo "smoke: kernel $(uname -r)"
test -c /dev/vfio/vfio || { echo "smoke: /dev/vfio/vfio missing"; exit 1; }
echo "smoke: mtty types: $(ls /sys/class/mdev_bus/mtty/mdev_supported_types/ | tr '\n' ' ')"
test -x /bin/vfio-migrate || { echo "smoke: /bin/vfio-migrate missing"; exit 1; }
/bin/vfio_probe
echo "smoke: OK"
