/*
 * vfio_probe: end-to-end check of the VFIO + mdev + mtty chain inside the test
 * guest. Creates an mtty mdev, opens it through the legacy VFIO container/group
 * API and asks for its migration capabilities (VFIO v2 migration).
 *
 *   vfio_probe [UUID [MDEV_TYPE]]     defaults: a fixed UUID, mtty-2
 *
 * Exit status 0 only if the migration flags are STOP_COPY|P2P|PRE_COPY (7).
 * The ioctl numbers are defined here because Debian bookworm's
 * /usr/include/linux/vfio.h (6.1) lacks the PRE_COPY definitions.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define VFIO_TYPE ';' /* 0x3b */
#define VFIO_BASE 100
#define VIO(nr) _IO(VFIO_TYPE, VFIO_BASE + (nr))

#define VFIO_GET_API_VERSION        VIO(0)
#define VFIO_CHECK_EXTENSION        VIO(1)
#define VFIO_SET_IOMMU              VIO(2)
#define VFIO_GROUP_GET_STATUS       VIO(3)
#define VFIO_GROUP_SET_CONTAINER    VIO(4)
#define VFIO_GROUP_GET_DEVICE_FD    VIO(6)
#define VFIO_DEVICE_GET_INFO        VIO(7)
#define VFIO_DEVICE_FEATURE         VIO(17) /* _IO(';', 117) */

#define VFIO_API_VERSION            0
#define VFIO_TYPE1v2_IOMMU          3
#define VFIO_GROUP_FLAGS_VIABLE     (1u << 0)

#define VFIO_DEVICE_FEATURE_GET     (1u << 16)
#define VFIO_DEVICE_FEATURE_MIGRATION        1
#define VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE 2
#define VFIO_MIGRATION_STOP_COPY    (1ull << 0)
#define VFIO_MIGRATION_P2P          (1ull << 1)
#define VFIO_MIGRATION_PRE_COPY     (1ull << 2)

struct group_status { uint32_t argsz, flags; };
struct device_info { uint32_t argsz, flags, num_regions, num_irqs, cap_offset, pad; };
struct feature_migration { uint32_t argsz, flags; uint64_t mig_flags; };
struct feature_state { uint32_t argsz, flags; uint32_t device_state; int32_t data_fd; };

static const char *state_name(uint32_t s)
{
    static const char *n[] = { "ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING",
                               "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P" };
    return s < sizeof n / sizeof n[0] ? n[s] : "?";
}

static int write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, s, strlen(s));
    int e = errno;
    close(fd);
    errno = e;
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

#define FAIL(...) do { fprintf(stderr, "vfio_probe: FAIL: " __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

int main(int argc, char **argv)
{
    const char *uuid = argc > 1 ? argv[1] : "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
    const char *type = argc > 2 ? argv[2] : "mtty-2";
    char path[PATH_MAX], link[PATH_MAX];
    struct stat st;
    int created = 0;

    snprintf(path, sizeof path, "/sys/bus/mdev/devices/%s", uuid);
    if (stat(path, &st) != 0) {
        char create[PATH_MAX];
        snprintf(create, sizeof create,
                 "/sys/class/mdev_bus/mtty/mdev_supported_types/%s/create", type);
        if (write_file(create, uuid) != 0)
            FAIL("create mdev %s via %s: %s", uuid, create, strerror(errno));
        created = 1;
        printf("vfio_probe: created %s mdev %s\n", type, uuid);
    }

    int container = open("/dev/vfio/vfio", O_RDWR);
    if (container < 0)
        FAIL("open /dev/vfio/vfio: %s", strerror(errno));
    int api = ioctl(container, VFIO_GET_API_VERSION);
    if (api != VFIO_API_VERSION)
        FAIL("VFIO_GET_API_VERSION = %d", api);
    if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1)
        FAIL("container lacks VFIO_TYPE1v2_IOMMU");

    snprintf(path, sizeof path, "/sys/bus/mdev/devices/%s/iommu_group", uuid);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        FAIL("readlink %s: %s", path, strerror(errno));
    link[n] = 0;
    const char *grp = strrchr(link, '/') ? strrchr(link, '/') + 1 : link;
    snprintf(path, sizeof path, "/dev/vfio/%.200s", grp);
    int group = open(path, O_RDWR);
    if (group < 0)
        FAIL("open %s: %s", path, strerror(errno));

    struct group_status gs = { .argsz = sizeof gs };
    if (ioctl(group, VFIO_GROUP_GET_STATUS, &gs) != 0)
        FAIL("VFIO_GROUP_GET_STATUS: %s", strerror(errno));
    if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE))
        FAIL("group %s not viable (flags 0x%x)", grp, gs.flags);
    if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) != 0)
        FAIL("VFIO_GROUP_SET_CONTAINER: %s", strerror(errno));
    if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) != 0)
        FAIL("VFIO_SET_IOMMU(TYPE1v2): %s", strerror(errno));

    int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, uuid);
    if (dev < 0)
        FAIL("VFIO_GROUP_GET_DEVICE_FD(%s): %s", uuid, strerror(errno));

    struct device_info di = { .argsz = sizeof di };
    if (ioctl(dev, VFIO_DEVICE_GET_INFO, &di) != 0)
        FAIL("VFIO_DEVICE_GET_INFO: %s", strerror(errno));
    printf("vfio_probe: group %s device fd %d: flags 0x%x regions %u irqs %u\n",
           grp, dev, di.flags, di.num_regions, di.num_irqs);

    struct feature_migration fm = {
        .argsz = sizeof fm,
        .flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
    };
    if (ioctl(dev, VFIO_DEVICE_FEATURE, &fm) != 0)
        FAIL("VFIO_DEVICE_FEATURE(GET|MIGRATION): %s", strerror(errno));

    struct feature_state fs = {
        .argsz = sizeof fs,
        .flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    };
    if (ioctl(dev, VFIO_DEVICE_FEATURE, &fs) != 0)
        FAIL("VFIO_DEVICE_FEATURE(GET|MIG_DEVICE_STATE): %s", strerror(errno));
    printf("vfio_probe: device state %u (%s)\n", fs.device_state, state_name(fs.device_state));

    uint64_t f = fm.mig_flags;
    printf("vfio_probe: migration flags 0x%llx (%s%s%s)\n", (unsigned long long)f,
           f & VFIO_MIGRATION_STOP_COPY ? "STOP_COPY " : "",
           f & VFIO_MIGRATION_P2P ? "P2P " : "",
           f & VFIO_MIGRATION_PRE_COPY ? "PRE_COPY" : "");

    close(dev);
    close(group);
    close(container);
    if (created) {
        snprintf(path, sizeof path, "/sys/bus/mdev/devices/%s/remove", uuid);
        if (write_file(path, "1") != 0)
            fprintf(stderr, "vfio_probe: warning: remove %s: %s\n", uuid, strerror(errno));
    }

    const uint64_t want = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
    if (f != want)
        FAIL("migration flags 0x%llx, expected 0x%llx", (unsigned long long)f, (unsigned long long)want);
    printf("vfio_probe: OK\n");
    return 0;
}
