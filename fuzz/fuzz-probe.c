/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz format probing and open: the input is an image file; it is opened
 * with the format probed, read, and its block status walked. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/vdisk.h"

/* Walk block status and read each extent (bounded). */
static void walk(vd_node *n)
{
    static uint8_t buf[65536];
    int64_t size = vd_getlength(n);
    uint64_t off = 0;

    for (int i = 0; size > 0 && off < (uint64_t)size && i < 256; i++) {
        uint64_t pnum = 0, map = 0;
        vd_node *f = NULL;
        int depth = 0;
        int r = vd_block_status_above(n, off, (uint64_t)size - off, &pnum, &map, &f, &depth);
        if (r < 0 || pnum == 0)
            break;
        uint64_t l = pnum < sizeof(buf) ? pnum : sizeof(buf);
        if (vd_pread(n, off, l, buf, 0) < 0)
            break;
        off += pnum;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-image", 0);

    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, NULL, NULL, VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
            walk(n);
            vd_close(n);
        }
    }
    close(fd);
    return 0;
}
