/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the vpc driver: the input is a VHD image; it is opened (format
 * forced), its mapping walked and each extent read (BAT, sector bitmaps,
 * fixed footers) and checked, then opened read-write for a few writes (block
 * allocation, footer moves, bitmap filling) and zero writes.  The option
 * force_size_calc is taken from the input's last byte so both size rules
 * are reached.  Differencing images (type 4) reach the parent locator
 * checks; backing files are never opened (VD_O_NO_BACKING): the harness
 * opens no file an input names, it only stats the names. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

/* A few changes through the write paths (the image is a memfd copy). */
static void modify(vd_node *n)
{
    static uint8_t buf[8192];
    int64_t size = vd_getlength(n);

    if (size < (int64_t)sizeof(buf))
        return;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)i;
    vd_pwrite(n, 0, 4096, buf, 0);
    vd_pwrite(n, 700, 100, buf, 0);
    vd_pwrite(n, (uint64_t)size / 2 & ~511ull, sizeof(buf), buf, 0);
    vd_pwrite_zeroes(n, (uint64_t)size - 4096, 4096, 0);
    vd_flush(n);
    fuzz_walk(n);
}

/* Open options: force_size_calc from the last byte of the input. */
static vd_opts *options(const uint8_t *data, size_t size)
{
    vd_opts *o = vd_opts_new();
    uint8_t c = size ? data[size - 1] % 8 : 0;

    if (o && c == 1)
        vd_opts_set(o, "force_size_calc", "chs");
    else if (o && c == 2)
        vd_opts_set(o, "force_size_calc", "current_size");
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-vpc", 0);

    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "vpc", options(data, size), VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
            fuzz_walk(n);
            fuzz_check(n);
            vd_close(n);
            n = NULL;
            if (vd_open(&n, name, "vpc", options(data, size),
                        VD_O_RDWR | VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
                modify(n);
                vd_close(n);
            }
        }
    }
    close(fd);
    return 0;
}
