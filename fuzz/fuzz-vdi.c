/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the vdi driver: the input is a vdi image; it is opened (format
 * forced), its mapping walked and each extent read, then checked; then
 * opened read-write for a few writes (block allocation, the header and
 * block map updates on hostile metadata).  Nothing is printed per input:
 * the check report goes to /dev/null.  Differencing images reach the
 * parent lookup, which scans the image's directory: here /proc/self/fd,
 * whose entries are symbolic links it skips, so the lookup fails fast
 * and the image opens without its parent (VD_O_NO_BACKING). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

/* A few writes: in the first block, across a block boundary in the
 * middle, at the end (the image is a memfd copy). */
static void modify(vd_node *n)
{
    static uint8_t buf[8192];
    int64_t size = vd_getlength(n);
    uint64_t mid = (uint64_t)size / 2 & ~((1ull << 20) - 1);

    if (size < (int64_t)sizeof(buf) + (1 << 20))
        return;
    mid = mid >= 4096 ? mid - 4096 : 0;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)i;
    vd_pwrite(n, 512, 4096, buf, 0);
    vd_pwrite(n, mid, sizeof(buf), buf, 0);
    vd_pwrite_zeroes(n, (uint64_t)size - 4096, 4096, 0);
    vd_pwrite(n, 0, 512, buf, VD_REQ_FUA);
    vd_flush(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-vdi", 0);

    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "vdi", NULL, VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
            fuzz_walk(n);
            fuzz_check(n);
            vd_close(n);
            n = NULL;
            if (vd_open(&n, name, "vdi", NULL, VD_O_RDWR | VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
                modify(n);
                fuzz_walk(n);
                vd_close(n);
            }
        }
    }
    close(fd);
    return 0;
}
