/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the dmg driver: the input is a dmg image; it is opened
 * read-only (format forced), its mapping walked and each extent read
 * (the trailer, the block tables in the property list or resource
 * fork, zlib and bzip2 chunks).  Nothing is printed: the warnings and
 * errors the driver prints as qemu-img does go to /dev/null. */
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
    int fd = memfd_create("fuzz-dmg", 0);

    if (fd < 0 || (!null && !(null = fopen("/dev/null", "w")))) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    stderr = null;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "dmg", NULL, VD_O_NO_LOCK) == 0) {
            fuzz_walk(n);
            vd_close(n);
        }
    }
    stderr = saved;
    close(fd);
    return 0;
}
