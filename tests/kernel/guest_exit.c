/*
 * guest_exit CODE: make QEMU exit with status (CODE << 1) | 1 by writing CODE
 * to QEMU's isa-debug-exit device (-device isa-debug-exit,iobase=0xf4,iosize=0x04).
 * Runs inside the test guest (static binary, as root). Busybox has no outb.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

#define DEBUG_EXIT_PORT 0xf4

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CODE (0..127)\n", argv[0]);
        return 2;
    }
    long code = strtol(argv[1], NULL, 0);
    if (code < 0 || code > 127) {
        fprintf(stderr, "guest_exit: code out of range: %s\n", argv[1]);
        return 2;
    }
    if (ioperm(DEBUG_EXIT_PORT, 4, 1) != 0) {
        perror("guest_exit: ioperm");
        return 1;
    }
    fflush(NULL);
    outb((unsigned char)code, DEBUG_EXIT_PORT);
    /* Only reached when there is no isa-debug-exit device. */
    fprintf(stderr, "guest_exit: isa-debug-exit device did not stop the VM\n");
    return 1;
}
