/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the vmdk driver: the input is a sparse extent with its descriptor
 * embedded (monolithicSparse, streamOptimized), a lone VMDK3 "COWD"
 * extent, or an seSparse extent (then written to a scratch file named by
 * a descriptor of its own, as only descriptors name seSparse extents); it
 * is opened (format forced, no backing), its mapping walked and each
 * extent read, then checked; then opened read-write for a few writes
 * (grain allocation, the grain table and directory updates on hostile
 * metadata; refused for seSparse).  Nothing is printed per input: the
 * check report goes to /dev/null. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

/* A few writes: in the first grain, across a grain boundary in the
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

/* Open, walk and check name, then open it read-write and write. */
static void exercise(const char *name)
{
    vd_node *n = NULL;

    if (vd_open(&n, name, "vmdk", NULL, VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
        fuzz_walk(n);
        fuzz_check(n);
        vd_close(n);
        n = NULL;
        if (vd_open(&n, name, "vmdk", NULL, VD_O_RDWR | VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
            modify(n);
            fuzz_walk(n);
            vd_close(n);
        }
    }
}

/* Write len bytes to path; true on success. */
static bool put_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(data, 1, len, f) == len;

    if (f && fclose(f))
        ok = false;
    return ok;
}

/* An seSparse extent: a scratch directory with the extent and a
 * descriptor naming it. */
static void exercise_sesparse(const uint8_t *data, size_t size)
{
    static const char desc[] = "# Disk DescriptorFile\nversion=1\nCID=1\n"
        "parentCID=ffffffff\ncreateType=\"seSparse\"\nRW 1 SESPARSE \"e.vmdk\"\n";
    char dir[] = "/tmp/fuzz-vmdk-XXXXXX", ext[64], dsc[64];

    if (!mkdtemp(dir))
        return;
    snprintf(ext, sizeof(ext), "%s/e.vmdk", dir);
    snprintf(dsc, sizeof(dsc), "%s/d.vmdk", dir);
    if (put_file(ext, data, size) && put_file(dsc, desc, sizeof(desc) - 1))
        exercise(dsc);
    unlink(ext);
    unlink(dsc);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    int fd;

    if (size >= 8 && !memcmp(data, "\xbe\xba\xfe\xca\0\0\0\0", 8)) {
        exercise_sesparse(data, size);
        return 0;
    }
    if ((fd = memfd_create("fuzz-vmdk", 0)) < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        exercise(name);
    }
    close(fd);
    return 0;
}
