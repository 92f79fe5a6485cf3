/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the bochs driver: the input is a bochs image; it is opened
 * read-only (format forced), its mapping walked and each extent read
 * (the catalog checks, extent bitmaps).  Nothing is printed. */
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-bochs", 0);

    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "bochs", NULL, VD_O_NO_LOCK) == 0) {
            fuzz_walk(n);
            vd_close(n);
        }
    }
    close(fd);
    return 0;
}
