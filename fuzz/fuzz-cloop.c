/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the cloop driver: the input is a cloop image (version 2.0, or
 * 4.0 with its index at either end); it is opened read-only (format
 * forced), its mapping walked and each extent read (the index checks,
 * links, zlib, xz and lz4 blocks).  Nothing is printed: the warning the
 * driver prints for codecs it cannot decode goes to /dev/null. */
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *null;
    FILE *saved = stderr;
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-cloop", 0);

    if (fd < 0 || (!null && !(null = fopen("/dev/null", "w")))) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    stderr = null;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "cloop", NULL, VD_O_NO_LOCK) == 0) {
            fuzz_walk(n);
            vd_close(n);
        }
    }
    stderr = saved;
    close(fd);
    return 0;
}
