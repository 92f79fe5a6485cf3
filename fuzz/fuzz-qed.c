/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the qed driver: the input is a qed image; it is opened (format
 * forced, no backing file), its mapping walked and each extent read, then
 * checked; then opened read-write (which repairs an image with need-check
 * set) for a few writes: allocating, partial-cluster, zero clusters, a
 * flush (need-check cleared), a check with repair and a resize.  Nothing
 * is printed per input. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

/* A few writes: at the start, in the middle, zeroes at the end, a repair
 * and a growth of the image (the image is a memfd copy). */
static void modify(vd_node *n)
{
    static uint8_t buf[8192];
    struct vd_check_result res = { 0 };
    int64_t size = vd_getlength(n);
    uint64_t mid = (uint64_t)size / 2 & ~4095ull;

    if (size < (int64_t)sizeof(buf) + 65536)
        return;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)i;
    vd_pwrite(n, 512, 4096, buf, 0);
    vd_pwrite(n, mid, sizeof(buf), buf, 0);
    vd_pwrite_zeroes(n, (uint64_t)size - 65536, 65536, 0);
    vd_flush(n);
    n->drv->check(n, &res, 2);
    vd_truncate(n, (uint64_t)size + 65536, true, VD_PREALLOC_OFF);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-qed", 0);

    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "qed", NULL, VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
            fuzz_walk(n);
            fuzz_check(n);
            vd_close(n);
            n = NULL;
            if (vd_open(&n, name, "qed", NULL, VD_O_RDWR | VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
                modify(n);
                fuzz_walk(n);
                vd_close(n);
            }
        }
    }
    close(fd);
    return 0;
}
