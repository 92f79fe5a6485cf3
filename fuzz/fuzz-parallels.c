/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the parallels driver: the input is a parallels image; it is
 * opened (format forced), its mapping walked and each extent read, then
 * checked; then opened read-write for a few writes (cluster allocation,
 * BAT updates and the in-use mark on hostile metadata).  Nothing is
 * printed per input: the check report and the driver's warnings go to
 * /dev/null. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "vdisk/opts.h"
#include "fuzz-image.h"

/* A few writes: in the first cluster, in the middle, zeroes at the end
 * (the image is a memfd copy). */
static void modify(vd_node *n)
{
    static uint8_t buf[8192];
    int64_t size = vd_getlength(n);
    uint64_t mid = (uint64_t)size / 2 & ~511ull;

    if (size < (int64_t)sizeof(buf) * 2)
        return;
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
    static FILE *null;
    FILE *saved = stderr;
    int fd = memfd_create("fuzz-parallels", 0);

    if (fd < 0 || (!null && !(null = fopen("/dev/null", "w")))) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    stderr = null;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "parallels", NULL, VD_O_NO_LOCK) == 0) {
            fuzz_walk(n);
            fuzz_check(n);
            vd_close(n);
            n = NULL;
            /* the file grows cluster by cluster, not by 128 MiB (vd_open
             * consumes the options) */
            vd_opts *o = vd_opts_new();
            if (!o || vd_opts_set(o, "prealloc-mode", "truncate") < 0 ||
                vd_opts_set(o, "prealloc-size", "0") < 0)
                vd_opts_free(o);
            else if (vd_open(&n, name, "parallels", o, VD_O_RDWR | VD_O_NO_LOCK) == 0) {
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
