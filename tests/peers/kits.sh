# Sourced by the peer suites: finds the peer kits (../shared/peers beside
# the project, as the kits' READMEs assume) and sets $kits. Override with
# VFIO_PEER_KITS=DIR.
kits_find() {
    local d
    for d in "${VFIO_PEER_KITS:-}" ../shared/peers "$(cd .. && pwd)/shared/peers" /work/shared/peers; do
        if [ -n "$d" ] && [ -d "$d" ]; then
            kits=$(cd "$d" && pwd)
            return 0
        fi
    done
    kits=""
    return 1
}
