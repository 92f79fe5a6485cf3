/* SPDX-License-Identifier: BSD-3-Clause */
/* The persistent-bitmap API of vdisk/bitmap.h on a qcow2 image: list,
 * add, status as writes set bits, granularity rounding, clear, enable and
 * disable, merge, and the bits surviving close and reopen. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "vdisk/bitmap.h"
#include "vdisk/opts.h"
#include "vdisk/vdisk.h"
#include "tap.h"

#define MiB (1024 * 1024ull)

/* Create a 16 MiB qcow2 image at path and open it read-write. */
static vd_node *fresh(const char *path)
{
    vd_opts *o = vd_opts_new();
    vd_node *n = NULL;

    vd_opts_set(o, "size", "16777216");
    if (vd_create("qcow2", path, o) < 0 || vd_open(&n, path, "qcow2", NULL, VD_O_RDWR) < 0)
        n = NULL;
    vd_opts_free(o);
    return n;
}

/* One status answer: dirty flag and length, or -1 on error. */
static long long status(vd_node *n, const char *name, uint64_t off, uint64_t len, int *dirty)
{
    bool d;
    uint64_t pnum;

    if (vd_bitmap_status(n, name, off, len, &d, &pnum) < 0)
        return -1;
    *dirty = d;
    return (long long)pnum;
}

static void test_status(vd_node *n)
{
    static char buf[4096];
    int d;

    CHECK_EQ_INT(vd_bitmap_add(n, "a", 0, false), 0);
    CHECK_EQ_INT(vd_bitmap_add(n, "off", 4096, true), 0);
    CHECK_EQ_INT(vd_bitmap_add(n, "a", 0, false), -EEXIST);
    CHECK_EQ_INT(vd_bitmap_add(n, "bad", 1000, false), -EINVAL);
    CHECK_EQ_INT(status(n, "a", 0, 16 * MiB, &d), 16 * MiB);
    CHECK_EQ_INT(d, 0);
    CHECK_EQ_INT(vd_pwrite(n, MiB + 10, 100, buf, 0), 0);
    /* 64 KiB granularity: the whole 64 KiB block around the write */
    CHECK_EQ_INT(status(n, "a", 0, 16 * MiB, &d), MiB);
    CHECK_EQ_INT(d, 0);
    CHECK_EQ_INT(status(n, "a", MiB, 16 * MiB, &d), 65536);
    CHECK_EQ_INT(d, 1);
    CHECK_EQ_INT(status(n, "a", MiB + 4096, 8192, &d), 8192);
    CHECK_EQ_INT(d, 1);
    /* disabled: nothing set */
    CHECK_EQ_INT(status(n, "off", 0, 16 * MiB, &d), 16 * MiB);
    CHECK_EQ_INT(d, 0);
    CHECK_EQ_INT(status(n, "nope", 0, 1, &d), -1);
}

static void test_ops(vd_node *n)
{
    struct vd_bitmap_info *l;
    int d, count;

    CHECK_EQ_INT(vd_bitmap_merge(n, "off", n, "a"), 0);
    CHECK_EQ_INT(status(n, "off", MiB, 16 * MiB, &d), 65536);
    CHECK_EQ_INT(d, 1);
    CHECK_EQ_INT(vd_bitmap_clear(n, "a"), 0);
    CHECK_EQ_INT(status(n, "a", 0, 16 * MiB, &d), 16 * MiB);
    CHECK_EQ_INT(vd_bitmap_enable(n, "off", true), 0);
    CHECK_EQ_INT(vd_bitmap_enable(n, "a", false), 0);
    count = vd_bitmap_list(n, &l);
    CHECK_EQ_INT(count, 2);
    if (count == 2) {
        CHECK_EQ_STR(l[0].name, "a");
        CHECK_EQ_INT(l[0].granularity, 65536);
        CHECK_EQ_INT(l[0].enabled, 0);
        CHECK_EQ_INT(l[1].granularity, 4096);
        CHECK_EQ_INT(l[1].enabled, 1);
        vd_bitmap_list_free(l, count);
    }
}

/* After close and reopen (read-only), the stored bits are there. */
static void test_reopen(const char *path)
{
    vd_node *n = NULL;
    int d;

    CHECK_EQ_INT(vd_open(&n, path, "qcow2", NULL, 0), 0);
    if (!n)
        return;
    CHECK_EQ_INT(status(n, "off", 0, 16 * MiB, &d), MiB);
    CHECK_EQ_INT(d, 0);
    CHECK_EQ_INT(status(n, "off", MiB, 16 * MiB, &d), 65536);
    CHECK_EQ_INT(d, 1);
    CHECK_EQ_INT(status(n, "a", 0, 16 * MiB, &d), 16 * MiB);
    CHECK_EQ_INT(d, 0);
    CHECK(vd_bitmap_add(n, "ro", 0, false) < 0);
    vd_close(n);
}

int main(void)
{
    char path[] = "/tmp/vdisk-test-bitmap-XXXXXX";
    int fd = mkstemp(path);
    vd_node *n;

    if (fd < 0)
        return EXIT_FAILURE;
    close(fd);
    n = fresh(path);
    CHECK(n != NULL);
    if (n) {
        test_status(n);
        test_ops(n);
        vd_close(n);
        test_reopen(path);
    }
    unlink(path);
    return TAP_DONE();
}
