#!/usr/bin/env bash
# Prepare everything needed to boot a Debian 6.12 kernel under QEMU (TCG) with
# the VFIO modules and the kernel's `mtty` sample mdev driver:
#   - apt-get install the host tools (qemu-system-x86, busybox-static, ...)
#   - resolve the newest linux-image-6.12.*-amd64-unsigned known to apt-cache
#   - apt-get download image, headers, kbuild and linux-source packages and
#     unpack them with dpkg-deb -x in scratch space (never touching the host's
#     /boot or /lib/modules)
#   - build mtty.ko from the source's samples/vfio-mdev/mtty.c
#   - keep vmlinuz + the decompressed modules (dependencies first) in
#       ${VFIO_KERNEL_CACHE:-/var/cache/vfio-migrate-kernel}/<abi>/
#     with <cache>/current -> <abi>, and the static guest helpers in <cache>/tools;
#     the modules other suites need (EXTRA_MODULES in lib.sh: uio,
#     uio_pci_generic for the QEMU peer suite) go to <abi>/extra-modules.
# Idempotent: when everything is already in place it takes about a second.
#
# Environment:
#   VFIO_KERNEL_CACHE      cache directory (default /var/cache/vfio-migrate-kernel)
#   VFIO_KERNEL_ABI        pin the kernel ABI, e.g. 6.12.117+deb12 (default: newest
#                          linux-image-6.12.*-amd64-unsigned known to apt-cache)
#   VFIO_KERNEL_SCRATCH    scratch dir for the unpacked packages (default /dev/shm)
#   VFIO_KERNEL_KEEP_DEBS  1 = keep the downloaded .deb files in <cache>/<abi>/debs
#   VFIO_KERNEL_KEEP_OLD   1 = keep cache dirs of other ABIs (default: delete them)
#   VFIO_KERNEL_NO_APT     1 = never run apt-get update/install (fail instead)
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive
_log_tag=kernel-setup
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100)); }

APT_OPTS=(-q -y -o Dpkg::Lock::Timeout=600 -o Acquire::Retries=3)
APT_UPDATED=0
need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (apt-get); re-run as root or install it by hand"
}
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    [ "${VFIO_KERNEL_NO_APT:-0}" = 1 ] && die "apt needed but VFIO_KERNEL_NO_APT=1"
    need_root "apt-get update"
    log "apt-get update"
    if ! apt-get "${APT_OPTS[@]}" update </dev/null >/tmp/vfio-kernel-apt-update.log 2>&1; then
        # A broken third-party source makes apt-get update fail although the
        # Debian lists were refreshed; carry on, later steps fail clearly.
        warn "apt-get update reported errors (continuing):"
        grep -E '^(E|W):' /tmp/vfio-kernel-apt-update.log >&2 || tail -n 5 /tmp/vfio-kernel-apt-update.log >&2
    fi
    APT_UPDATED=1
}

# ---------------------------------------------------------------- host packages
missing=()
for p in "${HOST_PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    log "apt-get install ${missing[*]}"
    # Note: on machines with qemu-utils from backports, installing bookworm's
    # qemu-system-x86 7.2 makes apt remove that qemu-utils; nothing here needs it.
    if ! apt-get "${APT_OPTS[@]}" install --no-install-recommends "${missing[@]}" \
            </dev/null >/tmp/vfio-kernel-apt-install.log 2>&1; then
        tail -n 30 /tmp/vfio-kernel-apt-install.log >&2
        die "apt-get install ${missing[*]} failed (log: /tmp/vfio-kernel-apt-install.log)"
    fi
else
    log "host packages present: ${HOST_PACKAGES[*]}"
fi
for tool in qemu-system-x86_64 busybox cpio pahole xz zstd gcc x86_64-linux-gnu-gcc-12 make modinfo readelf dpkg-deb apt-get flock; do
    command -v "$tool" >/dev/null || die "required tool '$tool' not found after installing packages"
done
is_static_elf "$(command -v busybox)" || die "$(command -v busybox) is not statically linked (install busybox-static)"

# ---------------------------------------------------------------- cache + lock
mkdir -p "$KCACHE" || die "cannot create cache dir $KCACHE (set VFIO_KERNEL_CACHE)"
exec 9>"$KCACHE/.lock"
flock -w 900 9 || die "timed out waiting for the lock on $KCACHE/.lock"

# ---------------------------------------------------------------- resolve kernel
# (set -o pipefail is on: the `|| true` keep a failing apt-cache from ending
# the script silently; callers check for an empty result.)
resolve_abi() {
    { apt-cache pkgnames "linux-image-$KERNEL_SERIES." 2>/dev/null || true; } \
        | sed -nE "s/^linux-image-(${KERNEL_SERIES//./\\.}\.[0-9]+\+deb[0-9]+)-${KERNEL_FLAVOUR}-unsigned\$/\1/p" \
        | sort -V | tail -n 1
}
pkg_version() {
    { apt-cache show --no-all-versions "$1" 2>/dev/null || true; } | awk '/^Version: /{print $2; exit}'
}
ABI=${VFIO_KERNEL_ABI:-}
if [ -z "$ABI" ]; then
    ABI=$(resolve_abi)
    if [ -z "$ABI" ]; then
        apt_update_once
        ABI=$(resolve_abi)
    fi
    if [ -z "$ABI" ]; then
        if [ -f "$KCACHE/current/.complete" ]; then
            ABI=$(basename "$(readlink -f "$KCACHE/current")")
            warn "apt-cache knows no linux-image-$KERNEL_SERIES.*-$KERNEL_FLAVOUR-unsigned; using cached $ABI"
        else
            die "apt-cache knows no linux-image-$KERNEL_SERIES.*-$KERNEL_FLAVOUR-unsigned (is bookworm-security in the apt sources?)"
        fi
    fi
fi
case $ABI in
    "$KERNEL_SERIES".*+deb*) ;;
    *) die "unexpected kernel ABI '$ABI' (expected $KERNEL_SERIES.N+debNN)";;
esac
KREL=$ABI-$KERNEL_FLAVOUR
D=$KCACHE/$ABI
log "kernel: $KREL (cache $D)"

complete_ok() {
    [ -f "$D/.complete" ] && [ -f "$D/vmlinuz" ] && [ -f "$D/modules/load-order" ] || return 1
    [ -f "$D/extra-modules/load-order" ] || return 1
    local m
    while read -r m; do [ -f "$D/modules/$m" ] || return 1; done <"$D/modules/load-order"
    while read -r m; do [ -f "$D/extra-modules/$m" ] || return 1; done <"$D/extra-modules/load-order"
}

if complete_ok; then
    log "kernel $KREL already prepared"
else
    [ -e "$D" ] && { log "removing incomplete $D"; rm -rf "$D"; }
    mkdir -p "$D/mtty" "$D/modules" "$D/extra-modules"

    # Scratch space for the packages and unpacked trees (~600 MB, discarded at
    # the end). tmpfs by default: creating the ~22000 files of the image and
    # headers packages costs ~0.8 ms each on these VMs' disks (~20 s) and
    # nearly nothing on tmpfs. Only the results are kept in the cache (~13 MB).
    SCRATCH_BASE=${VFIO_KERNEL_SCRATCH:-/dev/shm}
    free_kb=$(df -Pk "$SCRATCH_BASE" 2>/dev/null | awk 'NR==2 {print $4}' || true)
    if [ "${free_kb:-0}" -lt 1048576 ] || ! S=$(mktemp -d "$SCRATCH_BASE/vfio-kernel.XXXXXX" 2>/dev/null); then
        warn "$SCRATCH_BASE is unusable or has < 1 GiB free for scratch space; using $KCACHE (slower)"
        S=$(mktemp -d "$KCACHE/scratch.XXXXXX")
    fi
    trap 'rm -rf "$S"' EXIT
    mkdir -p "$S/debs" "$S/root" "$S/src" "$S/mtty"

    # -------------------------------------------------------- download
    PKGVER=$(pkg_version "linux-image-$KREL-unsigned")
    if [ -z "$PKGVER" ]; then
        apt_update_once
        PKGVER=$(pkg_version "linux-image-$KREL-unsigned")
    fi
    [ -n "$PKGVER" ] || die "apt-cache has no package linux-image-$KREL-unsigned"
    SRCPKG="linux-source-$KERNEL_SERIES=$PKGVER"
    if ! apt-cache show "$SRCPKG" >/dev/null 2>&1; then
        warn "linux-source-$KERNEL_SERIES $PKGVER not known to apt; using its candidate version (only mtty.c is taken from it)"
        SRCPKG="linux-source-$KERNEL_SERIES"
    fi
    PKGS=("linux-image-$KREL-unsigned" "linux-headers-$KREL" "linux-headers-$ABI-common"
          "linux-kbuild-$ABI" "$SRCPKG")
    download() {
        # APT::Sandbox::User=root: the _apt user cannot write to our directory.
        (cd "$S/debs" && apt-get -q -o APT::Sandbox::User=root -o Acquire::Retries=3 download "${PKGS[@]}" \
            </dev/null >"$D/download.log" 2>&1)
    }
    log "apt-get download ${PKGS[*]} (~265 MB)"
    if ! download; then
        if [ "$APT_UPDATED" = 0 ] && [ "${VFIO_KERNEL_NO_APT:-0}" != 1 ]; then
            warn "download failed; refreshing apt lists and retrying"
            apt_update_once
            rm -f "$S/debs"/*.deb
            download || { tail -n 20 "$D/download.log" >&2; die "apt-get download failed (log: $D/download.log)"; }
        else
            tail -n 20 "$D/download.log" >&2; die "apt-get download failed (log: $D/download.log)"
        fi
    fi
    log "downloaded $(du -sh "$S/debs" | cut -f1) at $(elapsed)"
    if [ "${VFIO_KERNEL_KEEP_DEBS:-0}" = 1 ]; then
        mkdir -p "$D/debs" && cp "$S"/debs/*.deb "$D/debs/"
    fi

    # -------------------------------------------------------- unpack
    for deb in "$S"/debs/linux-image-*.deb "$S"/debs/linux-headers-*.deb "$S"/debs/linux-kbuild-*.deb; do
        [ -f "$deb" ] || die "missing downloaded package matching $deb"
        dpkg-deb -x "$deb" "$S/root"
    done
    dpkg-deb -x "$S"/debs/linux-source-*.deb "$S/src"
    rm -rf "$S/debs"
    log "unpacked packages at $(elapsed)"
    tarball=$(ls "$S"/src/usr/src/linux-source-*.tar.* 2>/dev/null | head -n 1 || true)
    [ -n "$tarball" ] || die "no linux-source tarball in the linux-source package"
    top=$(basename "${tarball%.tar.*}")
    member=$top/samples/vfio-mdev/mtty.c
    case $tarball in
        # multi-threaded xz (the tarball has many blocks) and stop at the
        # member: ~4 s instead of ~8 s. xz then dies of SIGPIPE: ignore that.
        *.xz) (set +o pipefail; xz -T0 -dc "$tarball" | tar -x -C "$S/src" --occurrence=1 "$member") 2>/dev/null || true ;;
        *)    tar -xf "$tarball" -C "$S/src" "$member" || true ;;
    esac
    [ -f "$S/src/$member" ] || die "$member not found in $tarball"
    cp "$S/src/$member" "$D/mtty/mtty.c"
    rm -rf "$S/src"
    log "extracted $member at $(elapsed)"

    cp "$S/root/boot/vmlinuz-$KREL" "$D/vmlinuz" || die "no /boot/vmlinuz-$KREL in the image package"
    cp "$S/root/boot/config-$KREL" "$D/config" || die "no /boot/config-$KREL in the image package"
    for opt in CONFIG_VFIO CONFIG_VFIO_IOMMU_TYPE1 CONFIG_VFIO_MDEV; do
        grep -qE "^$opt=[ym]\$" "$D/config" || die "$opt is not enabled in the $KREL config"
    done

    # -------------------------------------------------------- headers fix
    # The unpacked headers Makefile is `include /usr/src/linux-headers-<abi>-common/Makefile`
    # (absolute): point it at the unpacked copy.
    HDR=$S/root/usr/src/linux-headers-$KREL
    [ -f "$HDR/Makefile" ] || die "headers not unpacked: $HDR/Makefile missing"
    sed -i -E "s|^include .*/usr/src/(linux-headers-[^/]+-common/Makefile)\$|include $S/root/usr/src/\1|" "$HDR/Makefile"
    grep -q "^include $S/root/usr/src/" "$HDR/Makefile" || die "could not rewrite $HDR/Makefile: $(cat "$HDR/Makefile")"

    # -------------------------------------------------------- build mtty.ko
    cp "$D/mtty/mtty.c" "$S/mtty/mtty.c"
    printf 'obj-m := mtty.o\n' | tee "$S/mtty/Kbuild" >"$D/mtty/Kbuild"
    log "building mtty.ko (make -C linux-headers-$KREL M=... modules)"
    if ! make -C "$HDR" M="$S/mtty" modules >"$D/mtty/build.log" 2>&1 </dev/null; then
        tail -n 40 "$D/mtty/build.log" >&2
        die "building mtty.ko failed (log: $D/mtty/build.log)"
    fi
    [ -f "$S/mtty/mtty.ko" ] || die "make succeeded but mtty.ko is missing (log: $D/mtty/build.log)"
    cp "$S/mtty/mtty.ko" "$D/mtty/mtty.ko"
    log "built mtty.ko at $(elapsed)"

    # -------------------------------------------------------- modules
    # No modules.dep is shipped: resolve dependencies with modinfo, load order
    # is dependencies first.
    MODROOT=$S/root/lib/modules/$KREL
    [ -d "$MODROOT" ] || die "no /lib/modules/$KREL in the image package"
    declare -A MODFILE=()
    while IFS= read -r -d '' f; do
        b=${f##*/}; b=${b%.ko*}; MODFILE[${b//-/_}]=$f
    done < <(find "$MODROOT" -name '*.ko*' -print0)
    MODFILE[mtty]=$D/mtty/mtty.ko
    declare -A SEEN=()
    ORDER=()
    add_module() {
        local name=${1//-/_} f dep deps
        [ -n "${SEEN[$name]:-}" ] && return 0
        SEEN[$name]=1
        f=${MODFILE[$name]:-}
        if [ -z "$f" ]; then
            if grep -qE "/${name//_/[-_]}\.ko\$" "$MODROOT/modules.builtin" 2>/dev/null; then
                return 0   # built into the kernel
            fi
            die "module '$name' not found in the image package"
        fi
        deps=$(modinfo -F depends "$f") || die "modinfo failed on $f"
        for dep in ${deps//,/ }; do add_module "$dep"; done
        ORDER+=("$name")
    }
    # keep_modules DIR: decompress ORDER's modules into DIR, with DIR/load-order.
    keep_modules() {
        local dir=$1 name f
        : >"$dir/load-order.tmp"
        for name in "${ORDER[@]}"; do
            f=${MODFILE[$name]}
            case $f in
                *.ko.xz)  xz -dc "$f"    >"$dir/$name.ko" ;;
                *.ko.zst) zstd -qdc "$f" >"$dir/$name.ko" ;;
                *.ko.gz)  gzip -dc "$f"  >"$dir/$name.ko" ;;
                *.ko)     cp "$f" "$dir/$name.ko" ;;
                *) die "unknown module file type: $f" ;;
            esac
            echo "$name.ko" >>"$dir/load-order.tmp"
        done
        mv "$dir/load-order.tmp" "$dir/load-order"
    }
    for m in vfio vfio_iommu_type1 mdev mtty; do add_module "$m"; done
    keep_modules "$D/modules"
    log "modules (load order): ${ORDER[*]}"
    MAIN_ORDER=("${ORDER[@]}")
    SEEN=() ORDER=()
    for m in "${EXTRA_MODULES[@]}"; do add_module "$m"; done
    keep_modules "$D/extra-modules"
    log "extra modules (load order): ${ORDER[*]}"
    EXTRA_ORDER=("${ORDER[@]}")
    ORDER=("${MAIN_ORDER[@]}")
    rm -rf "$S"
    {
        echo "abi=$ABI"
        echo "krel=$KREL"
        echo "package_version=$PKGVER"
        echo "modules=${ORDER[*]}"
        echo "extra_modules=${EXTRA_ORDER[*]}"
        echo "prepared=$(date -u +%FT%TZ)"
    } >"$D/.complete"
fi

ln -sfn "$ABI" "$KCACHE/current.tmp" && mv -T "$KCACHE/current.tmp" "$KCACHE/current"

if [ "${VFIO_KERNEL_KEEP_OLD:-0}" != 1 ]; then
    for old in "$KCACHE/$KERNEL_SERIES".*+deb*; do
        [ -d "$old" ] && [ "$old" != "$D" ] || continue
        log "removing old kernel cache $old"
        rm -rf "$old"
    done
fi

# ---------------------------------------------------------------- guest helpers
build_helpers "$KCACHE/tools"
log "helpers: $KCACHE/tools/vfio_probe $KCACHE/tools/guest_exit"
log "ready: $KCACHE/current -> $ABI (vmlinuz, modules: $(tr '\n' ' ' <"$D/modules/load-order" | sed 's/ $//')) in $(elapsed)"
