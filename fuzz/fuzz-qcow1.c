/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the qcow (version 1) driver: the input is a qcow image; it is
 * opened (format forced), its mapping walked and each extent read
 * (L1/L2 lookups, compressed clusters); then opened read-write for a few
 * writes (L2 table and cluster allocation, writes over compressed
 * clusters, a compressed write) on hostile metadata.  Nothing is printed
 * per input. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

/* A few writes: in the first cluster, in the middle, zeroes at the end,
 * a compressed cluster (the image is a memfd copy). */
static void modify(vd_node *n)
{
    static uint8_t buf[65536];
    int64_t size = vd_getlength(n);
    uint64_t mid = (uint64_t)size / 2 & ~511ull;

    if (size < 16384)
        return;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i / 64);
    vd_pwrite(n, 512, 4096, buf, 0);
    vd_pwrite(n, mid, 8192, buf, 0);
    vd_pwrite_zeroes(n, (uint64_t)size - 4096, 4096, 0);
    if (size >= 4 * 65536)
        vd_pwrite_compressed(n, 3 * 65536, (uint64_t)n->drv->cluster_size(n), buf);
    vd_flush(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    static FILE *null;
    FILE *saved = stderr;
    int fd = memfd_create("fuzz-qcow1", 0);

    if (fd < 0 || (!null && !(null = fopen("/dev/null", "w")))) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    stderr = null;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "qcow", NULL, VD_O_NO_LOCK) == 0) {
            fuzz_walk(n);
            vd_close(n);
            n = NULL;
            if (vd_open(&n, name, "qcow", NULL, VD_O_RDWR | VD_O_NO_LOCK) == 0) {
                modify(n);
                fuzz_walk(n);
                vd_close(n);
            }
        }
    }
    stderr = saved;
    close(fd);
    return 0;
}
