/*
 * qemu_guest: runs inside the QEMU guest of tests/peers/qemu.sh (static
 * binary, as root) and exercises the two sample devices that QEMU's
 * vfio-user client attached, as a guest driver would: through sysfs (PCI
 * config space, BARs mapped from resourceN) and uio_pci_generic (the
 * serial's INTx).
 *
 * Prints one line per check ("ok   ..." / "FAIL ..."), "VALUE ..." lines
 * that the host re-checks with the project's own code (crates/cli/tests/
 * qemu_guest.rs), and "RESULT PASS" or "RESULT FAIL <n>" last. Exit
 * status 0 only when every check passed.
 *
 * What it covers (docs/devices.md has the register maps):
 *  - both devices on the bus with their IDs, class, revision, BARs,
 *    interrupt pin and (vgpu) MSI capability;
 *  - vgpu: registers at every documented width (8-byte, 4-byte halves),
 *    refused accesses (1- and 2-byte, no register, read-only, reserved
 *    bits) read as all-ones or change nothing and leave the device
 *    working; BAR2 at both ends through the mapping and DIGEST following
 *    it; the render engine (FRAME, and the page it drew, seen through
 *    BAR2); the DMA engine writing a page of guest RAM; MSI after render
 *    and DMA steps, delivered by QEMU as the message write the guest
 *    programmed (a word in guest RAM);
 *  - serial: scratch, FIFO push/pop/level, line status (DR, OE), IIR,
 *    DIGEST, refused accesses; INTx end to end: uio_pci_generic counts
 *    the guest interrupts (it needs PCI 2.3 INTx masking: Status'
 *    Interrupt Status and Command's INTx Disable).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int failures;

static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    if (!ok)
        failures++;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf(" (%s)\nRESULT FAIL fatal\n", strerror(errno));
    fflush(stdout);
    va_end(ap);
    exit(1);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- hashes
 * The samples' pseudo-random generator (crates/device/samples/src/hash.rs),
 * to check what the engines wrote. The host re-checks the VALUE lines with
 * the Rust functions themselves, so a slip here cannot pass unnoticed. */
#define P1 0x9e3779b185ebca87ULL
#define P3 0x165667b19e3779f9ULL

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t mix3(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t h = P3;
    h = mix64(h ^ a * P1);
    h = mix64(h ^ b * P1);
    return mix64(h ^ c * P1);
}

/* fill_pseudo_random(seed) over n bytes (n a multiple of 8) equals buf. */
static int fill_matches(uint64_t seed, const volatile uint64_t *buf, size_t n)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n / 8; i++) {
        s += P1;
        if (buf[i] != mix64(s))
            return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- sysfs */
struct pcidev {
    char path[300];
    unsigned vendor, device;
};

static unsigned long long read_hex_file(const char *dir, const char *name)
{
    char p[512], buf[64] = "";
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "r");
    if (!f)
        return ~0ULL;
    if (!fgets(buf, sizeof buf, f))
        buf[0] = 0;
    fclose(f);
    return strtoull(buf, NULL, 0);
}

static int find_device(unsigned vendor, unsigned device, struct pcidev *out)
{
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    int found = 0;
    if (!d)
        die("opendir /sys/bus/pci/devices");
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[280];
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%.250s", e->d_name);
        if (read_hex_file(p, "vendor") == vendor && read_hex_file(p, "device") == device) {
            snprintf(out->path, sizeof out->path, "%s", p);
            out->vendor = vendor;
            out->device = device;
            found++;
        }
    }
    closedir(d);
    return found;
}

static int open_in(const struct pcidev *d, const char *name, int flags)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", d->path, name);
    int fd = open(p, flags);
    if (fd < 0)
        die("open %s", p);
    return fd;
}

static uint32_t cfg_read(const struct pcidev *d, unsigned off, int width)
{
    int fd = open_in(d, "config", O_RDONLY);
    uint32_t v = 0;
    if (pread(fd, &v, width, off) != width)
        die("config read %s+%#x", d->path, off);
    close(fd);
    return v;
}

static void cfg_write(const struct pcidev *d, unsigned off, int width, uint32_t v)
{
    int fd = open_in(d, "config", O_WRONLY);
    if (pwrite(fd, &v, width, off) != width)
        die("config write %s+%#x", d->path, off);
    close(fd);
}

static void write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, s, strlen(s)) != (ssize_t)strlen(s))
        die("writing '%s' to %s", s, path);
    close(fd);
}

/* BAR n from the "resource" file: start, size, flags. */
static void bar_info(const struct pcidev *d, int n, uint64_t *start, uint64_t *size,
                     uint64_t *flags)
{
    char p[512], line[256];
    snprintf(p, sizeof p, "%s/resource", d->path);
    FILE *f = fopen(p, "r");
    if (!f)
        die("open %s", p);
    for (int i = 0; i <= n; i++)
        if (!fgets(line, sizeof line, f))
            die("short %s", p);
    fclose(f);
    unsigned long long s, e, fl;
    if (sscanf(line, "%llx %llx %llx", &s, &e, &fl) != 3)
        die("parse %s", p);
    *start = s;
    *size = e ? e - s + 1 : 0;
    *flags = fl;
}

/* Maps `len` bytes of BAR n from byte `off` (page-aligned) through
 * resourceN. Returns the address of BAR offset `off` (a BAR smaller than a
 * page may start inside the page). */
static volatile uint8_t *map_bar(const struct pcidev *d, int n, uint64_t off, size_t len)
{
    uint64_t start, size, flags;
    bar_info(d, n, &start, &size, &flags);
    char name[16];
    snprintf(name, sizeof name, "resource%d", n);
    int fd = open_in(d, name, O_RDWR | O_SYNC);
    uint64_t in_page = start & 4095;
    size_t maplen = (in_page + len + 4095) & ~4095ULL;
    void *p = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
    if (p == MAP_FAILED)
        die("mmap %s/%s at %#llx", d->path, name, (unsigned long long)off);
    close(fd);
    return (volatile uint8_t *)p + in_page;
}

static uint64_t rd(volatile uint8_t *b, unsigned off, int w)
{
    switch (w) {
    case 1: return *(volatile uint8_t *)(b + off);
    case 2: return *(volatile uint16_t *)(b + off);
    case 4: return *(volatile uint32_t *)(b + off);
    default: return *(volatile uint64_t *)(b + off);
    }
}

static void wr(volatile uint8_t *b, unsigned off, int w, uint64_t v)
{
    switch (w) {
    case 1: *(volatile uint8_t *)(b + off) = v; break;
    case 2: *(volatile uint16_t *)(b + off) = v; break;
    case 4: *(volatile uint32_t *)(b + off) = v; break;
    default: *(volatile uint64_t *)(b + off) = v; break;
    }
}

/* A locked page of guest RAM and its physical address (/proc/self/pagemap). */
static volatile uint64_t *ram_page(uint64_t *phys)
{
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED, -1, 0);
    if (p == MAP_FAILED)
        die("mmap a RAM page");
    memset(p, 0, 4096);
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t e = 0;
    if (fd < 0 || pread(fd, &e, 8, ((uintptr_t)p / 4096) * 8) != 8)
        die("pagemap");
    close(fd);
    if (!(e & (1ULL << 63)) || !(e & ((1ULL << 55) - 1)))
        die("page not present or PFN hidden (pagemap entry %#llx)", (unsigned long long)e);
    *phys = (e & ((1ULL << 55) - 1)) * 4096;
    return p;
}

/* Polls until *cond() or `secs` pass; returns whether it held. */
#define WAIT_UNTIL(secs, expr)                                                   \
    ({                                                                           \
        double _t = now();                                                       \
        int _ok;                                                                 \
        while (!(_ok = (expr)) && now() - _t < (secs))                          \
            usleep(1000);                                                        \
        _ok;                                                                     \
    })

/* ---------------------------------------------------------------- vgpu */
enum {
    R_ID = 0x00, R_CONTROL = 0x08, R_RENDER_RATE = 0x10, R_DMA_RATE = 0x18,
    R_DMA_IOVA = 0x20, R_DMA_SIZE = 0x28, R_SEED = 0x30, R_DIGEST = 0x38,
    R_FRAME = 0x40, R_DMA_COUNT = 0x48, R_DMA_ERRORS = 0x50, R_MEM_SIZE = 0x58,
    R_SCRATCH = 0x60,
};
#define ID_VALUE 0x5647505500000001ULL
#define CTL_RENDER 1
#define CTL_DMA 2
#define CTL_IRQ_FRAME 4
#define CTL_IRQ_DMA 8

static void identity(const struct pcidev *d, unsigned class, unsigned pin)
{
    check(read_hex_file(d->path, "class") == class, "%s class %#x", d->path, class);
    check(read_hex_file(d->path, "subsystem_vendor") == 0x1b36 &&
              read_hex_file(d->path, "subsystem_device") == 0x0001,
          "%s subsystem 1b36:0001", d->path);
    check(read_hex_file(d->path, "revision") == 1, "%s revision 1", d->path);
    check(cfg_read(d, 0x3d, 1) == pin, "%s interrupt pin %u", d->path, pin);
}

static void vgpu(const struct pcidev *d)
{
    uint64_t start, size, flags, b2start, b2size, b2flags;
    identity(d, 0x038000, 0);
    bar_info(d, 0, &start, &size, &flags);
    check(size == 4096 && (flags & 0x200) && !(flags & 0x2000) && !(flags & 0x100000),
          "vgpu BAR0: 4 KiB, 32-bit, not prefetchable (flags %#llx)", (unsigned long long)flags);
    bar_info(d, 2, &b2start, &b2size, &b2flags);
    check(b2size >= 4096 && (b2flags & 0x200) && (b2flags & 0x2000) && (b2flags & 0x100000),
          "vgpu BAR2: %llu MiB, 64-bit prefetchable (flags %#llx)",
          (unsigned long long)(b2size >> 20), (unsigned long long)b2flags);
    unsigned cap = cfg_read(d, 0x34, 1);
    check((cfg_read(d, 6, 2) & 0x10) && cap == 0x40 && cfg_read(d, cap, 1) == 0x05 &&
              (cfg_read(d, cap + 2, 2) & 0x008e) == 0x0080,
          "vgpu MSI capability at %#x: 64-bit, one vector", cap);

    char en[320];
    snprintf(en, sizeof en, "%s/enable", d->path);
    write_file(en, "1");
    /* Memory decoding (enable did it) and bus master (for MSI writes). */
    cfg_write(d, 4, 2, cfg_read(d, 4, 2) | 0x6);
    volatile uint8_t *r = map_bar(d, 0, 0, 4096);

    /* Registers at every documented width. */
    check(rd(r, R_ID, 8) == ID_VALUE, "vgpu ID (8 bytes) = %#llx", (unsigned long long)rd(r, R_ID, 8));
    check(rd(r, R_ID, 4) == (uint32_t)ID_VALUE && rd(r, R_ID + 4, 4) == ID_VALUE >> 32,
          "vgpu ID as two 4-byte halves");
    wr(r, R_SCRATCH, 8, 0x1122334455667788ULL);
    check(rd(r, R_SCRATCH, 8) == 0x1122334455667788ULL, "vgpu SCRATCH 8-byte write/read");
    wr(r, R_SCRATCH, 4, 0xdeadbeef);
    wr(r, R_SCRATCH + 4, 4, 0xcafef00d);
    check(rd(r, R_SCRATCH, 8) == 0xcafef00ddeadbeefULL && rd(r, R_SCRATCH + 4, 4) == 0xcafef00d,
          "vgpu SCRATCH 4-byte half writes/reads");
    check(rd(r, R_MEM_SIZE, 8) == b2size, "vgpu MEM_SIZE = BAR2 size");

    /* Refused accesses: QEMU prints an error, a read gives all-ones, a
     * write changes nothing, and the device goes on. */
    check(rd(r, R_ID, 1) == 0xff, "vgpu 1-byte read refused: all-ones");
    check(rd(r, R_ID + 2, 2) == 0xffff, "vgpu 2-byte read refused: all-ones");
    check(rd(r, 0x800, 8) == ~0ULL, "vgpu read where no register is: all-ones");
    wr(r, R_ID, 8, 0);
    wr(r, R_CONTROL, 8, 0x10);
    wr(r, R_SCRATCH, 1, 0x55);
    check(rd(r, R_ID, 8) == ID_VALUE && rd(r, R_CONTROL, 8) == 0 &&
              rd(r, R_SCRATCH, 8) == 0xcafef00ddeadbeefULL,
          "vgpu refused writes changed nothing (read-only ID, reserved CONTROL bit, 1-byte)");

    /* BAR2 at both ends through QEMU's direct mapping; DIGEST follows. */
    volatile uint8_t *lo = map_bar(d, 2, 0, 4096);
    volatile uint8_t *hi = map_bar(d, 2, b2size - 4096, 4096);
    uint64_t dg0 = rd(r, R_DIGEST, 8);
    wr(lo, 0, 8, 0x0123456789abcdefULL);
    wr(hi, 4088, 8, 0xfedcba9876543210ULL);
    wr(hi, 4080, 4, 0xa5a5a5a5);
    wr(hi, 4084, 2, 0x5a5a);
    wr(hi, 4086, 1, 0x77);
    check(rd(lo, 0, 8) == 0x0123456789abcdefULL && rd(hi, 4088, 8) == 0xfedcba9876543210ULL &&
              rd(hi, 4080, 4) == 0xa5a5a5a5 && rd(hi, 4084, 2) == 0x5a5a && rd(hi, 4086, 1) == 0x77,
          "vgpu BAR2 read/write at offset 0 and at its end (%#llx)", (unsigned long long)(b2size - 8));
    uint64_t dg1 = rd(r, R_DIGEST, 8);
    wr(lo, 8, 1, 0x01);
    uint64_t dg2 = rd(r, R_DIGEST, 8);
    check(dg0 != dg1 && dg1 != dg2 && dg2 == rd(r, R_DIGEST, 8),
          "vgpu DIGEST changes with every BAR2 write, stable otherwise (%#llx %#llx %#llx)",
          (unsigned long long)dg0, (unsigned long long)dg1, (unsigned long long)dg2);

    /* Render engine: FRAME advances, the last frame's page shows through BAR2. */
    uint64_t seed = 0x5eed0001, pages = b2size / 4096;
    wr(r, R_SEED, 8, seed);
    wr(r, R_RENDER_RATE, 8, 4096 * 200);
    wr(r, R_CONTROL, 8, CTL_RENDER);
    int ran = WAIT_UNTIL(10, rd(r, R_FRAME, 8) >= 5);
    wr(r, R_CONTROL, 8, 0);
    uint64_t frame = rd(r, R_FRAME, 8);
    check(ran && frame >= 5, "vgpu render engine: FRAME advanced to %llu", (unsigned long long)frame);
    uint64_t page = mix3(seed, frame - 1, 1) % pages;
    uint64_t fill = mix3(seed, frame - 1, 2);
    volatile uint8_t *pg = map_bar(d, 2, page * 4096, 4096);
    check(fill_matches(fill, (volatile uint64_t *)pg, 4096),
          "vgpu render: frame %llu drew page %llu as expected", (unsigned long long)frame - 1,
          (unsigned long long)page);
    printf("VALUE render seed=%llu frame=%llu pages=%llu page=%llu word=%llu\n",
           (unsigned long long)seed, (unsigned long long)frame, (unsigned long long)pages,
           (unsigned long long)page, (unsigned long long)rd(pg, 0, 8));

    /* DMA engine: a page of guest RAM, one 4 KiB block per step. */
    uint64_t phys;
    volatile uint64_t *buf = ram_page(&phys);
    uint64_t dseed = 0x5eed0002;
    wr(r, R_SEED, 8, dseed);
    wr(r, R_DMA_IOVA, 8, phys);
    wr(r, R_DMA_SIZE, 8, 4096);
    wr(r, R_DMA_RATE, 8, 4096 * 100);
    wr(r, R_CONTROL, 8, CTL_DMA);
    ran = WAIT_UNTIL(10, rd(r, R_DMA_COUNT, 8) >= 3);
    wr(r, R_CONTROL, 8, 0);
    uint64_t count = rd(r, R_DMA_COUNT, 8), errors = rd(r, R_DMA_ERRORS, 8);
    check(ran && errors == 0, "vgpu DMA engine: %llu writes to guest RAM at %#llx, %llu errors",
          (unsigned long long)count, (unsigned long long)phys, (unsigned long long)errors);
    check(fill_matches(mix3(dseed, count + errors - 1, 4), buf, 4096),
          "vgpu DMA: the guest sees step %llu's block in its RAM",
          (unsigned long long)(count + errors - 1));
    printf("VALUE dma seed=%llu steps=%llu word=%llu\n", (unsigned long long)dseed,
           (unsigned long long)(count + errors), (unsigned long long)buf[0]);

    /* MSI: the guest programs the message (address = a word of its RAM,
     * data = 0x4d53) and enables it; QEMU then sets up the vector on the
     * server (SET_IRQS) and, for each eventfd signal, performs the
     * message write. The word appears, is cleared, appears again. */
    uint64_t mphys;
    volatile uint32_t *msi = (volatile uint32_t *)ram_page(&mphys);
    cfg_write(d, cap + 4, 4, (uint32_t)(mphys + 256));
    cfg_write(d, cap + 8, 4, (uint32_t)((mphys + 256) >> 32));
    cfg_write(d, cap + 12, 2, 0x4d53);
    cfg_write(d, cap + 2, 2, cfg_read(d, cap + 2, 2) | 1);
    check(cfg_read(d, cap + 2, 2) & 1, "vgpu MSI enabled");
    wr(r, R_RENDER_RATE, 8, 4096 * 50);
    check(!WAIT_UNTIL(0.3, msi[64] != 0), "vgpu: no MSI while CONTROL does not ask for one");
    wr(r, R_CONTROL, 8, CTL_RENDER | CTL_IRQ_FRAME);
    int writes = 0;
    for (int i = 0; i < 3; i++) {
        if (WAIT_UNTIL(10, msi[64] == 0x4d53))
            writes++;
        msi[64] = 0;
    }
    wr(r, R_CONTROL, 8, 0);
    check(writes == 3, "vgpu MSI after render steps: %d of 3 message writes seen", writes);
    usleep(100000);
    msi[64] = 0;
    wr(r, R_DMA_RATE, 8, 4096 * 50);
    wr(r, R_CONTROL, 8, CTL_DMA | CTL_IRQ_DMA);
    int dma_msi = WAIT_UNTIL(10, msi[64] == 0x4d53);
    wr(r, R_CONTROL, 8, 0);
    check(dma_msi, "vgpu MSI after DMA steps");
    printf("VALUE msi frame_writes=%d dma_write=%d\n", writes, dma_msi);
    cfg_write(d, cap + 2, 2, cfg_read(d, cap + 2, 2) & ~1);
    check(rd(r, R_ID, 8) == ID_VALUE, "vgpu still answers after all that");
}

/* ---------------------------------------------------------------- serial */
enum {
    S_DATA = 0, S_IER = 1, S_IIR = 2, S_LCR = 3, S_MCR = 4, S_LSR = 5, S_MSR = 6, S_SCR = 7,
    S_DIGEST = 0x10, S_LEVEL = 0x18,
};

static int uio_open(const struct pcidev *d)
{
    char p[512];
    snprintf(p, sizeof p, "%s/uio", d->path);
    DIR *dir = opendir(p);
    struct dirent *e;
    int fd = -1;
    if (!dir)
        return -1;
    while ((e = readdir(dir)))
        if (!strncmp(e->d_name, "uio", 3)) {
            snprintf(p, sizeof p, "/dev/%s", e->d_name);
            fd = open(p, O_RDWR);
            break;
        }
    closedir(dir);
    return fd;
}

/* Waits for the next uio interrupt; returns the total count or -1. */
static long uio_wait(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    uint32_t n;
    if (poll(&p, 1, ms) != 1 || read(fd, &n, 4) != 4)
        return -1;
    return n;
}

/* uio_pci_generic has no irqcontrol: its handler masks with Command's
 * INTx Disable, and the program unmasks by clearing it in config space. */
static void intx_unmask(const struct pcidev *d)
{
    cfg_write(d, 4, 2, cfg_read(d, 4, 2) & ~0x0400);
}

static long proc_interrupts(const char *name)
{
    FILE *f = fopen("/proc/interrupts", "r");
    char line[512];
    long total = -1;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, name)) {
            char *s = strchr(line, ':');
            total = 0;
            for (char *t = s ? s + 1 : line;;) {
                char *end;
                long v = strtol(t, &end, 10);
                if (end == t)
                    break;
                total += v;
                t = end;
            }
        }
    if (f)
        fclose(f);
    return total;
}

static void serial(const struct pcidev *d)
{
    uint64_t start, size, flags;
    identity(d, 0x070002, 1);
    bar_info(d, 0, &start, &size, &flags);
    check(size == 32 && (flags & 0x200), "serial BAR0: 32 bytes of memory");
    long irq = read_hex_file(d->path, "irq");
    check(irq > 0, "serial INTx routed to guest IRQ %ld", irq);
    check(!(cfg_read(d, 6, 2) & 0x10), "serial: no capability list");

    /* uio_pci_generic binds only if INTx masking works (Command's INTx
     * Disable read back, Status' Interrupt Status). */
    char p[512];
    write_file("/sys/bus/pci/drivers/uio_pci_generic/new_id", "1b36 00f1");
    snprintf(p, sizeof p, "%s/driver/module", d->path);
    char link[256] = "";
    ssize_t n = readlink(p, link, sizeof link - 1);
    check(n > 0 && strstr(link, "uio_pci_generic"), "serial bound to uio_pci_generic");
    int ufd = uio_open(d);
    check(ufd >= 0, "serial /dev/uioN opened");

    volatile uint8_t *r = map_bar(d, 0, 0, 32);
    wr(r, S_SCR, 1, 0x5a);
    int scr1 = rd(r, S_SCR, 1) == 0x5a;
    wr(r, S_SCR, 1, 0xa5);
    check(scr1 && rd(r, S_SCR, 1) == 0xa5, "serial scratch register");
    check(rd(r, S_LSR, 1) == 0x60 && rd(r, S_IIR, 1) == 0x01,
          "serial idle: LSR 0x60 (transmitter empty), IIR 0x01 (none pending)");
    wr(r, S_IIR, 1, 0x01); /* FCR: FIFO on */
    check((rd(r, S_IIR, 1) & 0xc0) == 0xc0, "serial FIFO enabled (IIR bits 6-7)");
    const char *msg = "hello";
    for (const char *c = msg; *c; c++)
        wr(r, S_DATA, 1, *c);
    check(rd(r, S_LEVEL, 4) == 5 && (rd(r, S_LSR, 1) & 1), "serial FIFO level 5, LSR data ready");
    char got[6] = {0};
    for (int i = 0; i < 5; i++)
        got[i] = rd(r, S_DATA, 1);
    check(!strcmp(got, msg) && !(rd(r, S_LSR, 1) & 1) && rd(r, S_DATA, 1) == 0,
          "serial FIFO pops \"%s\", then empty", got);
    for (int i = 0; i < 65; i++)
        wr(r, S_DATA, 1, i);
    int oe = rd(r, S_LSR, 1);
    check((oe & 0x03) == 0x03 && !(rd(r, S_LSR, 1) & 0x02) && rd(r, S_LEVEL, 4) == 64,
          "serial overrun: LSR OE set once (%#x), FIFO keeps 64", oe);
    wr(r, S_IIR, 1, 0x03); /* FCR: clear the FIFO */
    check(rd(r, S_LEVEL, 4) == 0, "serial FCR clears the FIFO");
    wr(r, S_MCR, 1, 0x03);
    check(rd(r, S_MSR, 1) == 0x30, "serial MSR loops MCR back");
    uint64_t dg = rd(r, S_DIGEST, 8);
    wr(r, S_SCR, 1, 0x42);
    uint64_t dg2 = rd(r, S_DIGEST, 8);
    check(dg2 != dg && rd(r, S_DIGEST, 4) == (uint32_t)dg2 && rd(r, S_DIGEST + 4, 4) == dg2 >> 32,
          "serial DIGEST follows the registers (8 bytes, and 4-byte halves)");

    /* Refused: a read gives all-ones; a posted write is dropped. */
    check(rd(r, S_DATA, 8) == ~0ULL, "serial 8-byte read of the byte registers refused: all-ones");
    check(rd(r, S_MSR, 2) == 0xffff, "serial 2-byte read refused: all-ones");
    wr(r, S_LSR, 1, 0);
    wr(r, S_MCR, 4, 0);
    check(rd(r, S_SCR, 1) == 0x42 && rd(r, S_LSR, 1) == 0x60 && rd(r, S_MCR, 1) == 0x03,
          "serial refused writes (read-only LSR, 4-byte MCR) changed nothing");

    /* INTx end to end: data waiting with IER bit 0 raises the line; the
     * guest kernel's uio handler sees Interrupt Status, masks with INTx
     * Disable and counts. */
    if (ufd >= 0) {
        long before = proc_interrupts("uio_pci_generic");
        intx_unmask(d);
        wr(r, S_IER, 1, 0x01);
        check(uio_wait(ufd, 200) < 0, "serial: no interrupt while the FIFO is empty");
        wr(r, S_DATA, 1, 'i');
        long c1 = uio_wait(ufd, 5000);
        check(c1 >= 1, "serial INTx reached the guest (uio count %ld)", c1);
        uint32_t cs = cfg_read(d, 4, 4);
        check((cs & 0x0400) && (cs & 0x00080000),
              "serial: Interrupt Status set, INTx Disable set by the handler (%#x)", cs);
        check(rd(r, S_IIR, 1) == 0xc4 && rd(r, S_DATA, 1) == 'i',
              "serial IIR 0xc4 (data available), data popped");
        check(!(cfg_read(d, 6, 2) & 0x8), "serial: Interrupt Status clear once serviced");
        intx_unmask(d);
        check(uio_wait(ufd, 200) < 0, "serial: no interrupt after servicing");
        wr(r, S_DATA, 1, 'j');
        long c2 = uio_wait(ufd, 5000);
        check(c2 == c1 + 1, "serial second INTx (uio count %ld)", c2);
        rd(r, S_DATA, 1);
        wr(r, S_IER, 1, 0);
        intx_unmask(d);
        long after = proc_interrupts("uio_pci_generic");
        check(after - before >= 2, "/proc/interrupts counts %ld uio_pci_generic interrupts",
              after - before);
        printf("VALUE intx uio_count=%ld proc_delta=%ld\n", c2, after - before);
    }
}

int main(void)
{
    struct pcidev v, s;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int nv = find_device(0x1b36, 0x00f0, &v), ns = find_device(0x1b36, 0x00f1, &s);
    check(nv == 1, "vgpu 1b36:00f0 on the PCI bus (%d found)", nv);
    check(ns == 1, "serial 1b36:00f1 on the PCI bus (%d found)", ns);
    if (nv == 1)
        vgpu(&v);
    if (ns == 1)
        serial(&s);
    if (failures)
        printf("RESULT FAIL %d\n", failures);
    else
        printf("RESULT PASS\n");
    return failures ? 1 : 0;
}
