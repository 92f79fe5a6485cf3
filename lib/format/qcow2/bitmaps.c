/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: persistent dirty bitmaps, kept honest.  This driver does not
 * track guest writes in bitmaps; before its first change to an image that
 * has them it marks every bitmap "in use" in the bitmap directory (the
 * format's way of saying "may be inconsistent") instead of dropping the
 * whole extension through its autoclear bit.  The bitmaps, their tables
 * and their clusters stay valid qcow2 metadata: QEMU shows them as in-use,
 * can remove them, and finds no leaked clusters.  Lock held. */
#include <errno.h>
#include <stdlib.h>

#include "format/qcow2/qcow2.h"

#define BME_FLAG_IN_USE 1u
#define BME_HEADER 24u                 /* fixed part of a directory entry */

/* Set the in-use flag of every entry of the directory dir (len bytes);
 * *changed tells whether any was clear.  -EINVAL when malformed. */
static int set_in_use(uint8_t *dir, uint64_t len, bool *changed)
{
    uint64_t p = 0;

    *changed = false;
    while (p < len) {
        uint64_t name, extra, size;
        uint32_t flags;
        if (len - p < BME_HEADER)
            return vd_error(EINVAL, "qcow2: malformed bitmap directory");
        name = be16_get(dir + p + 18);
        extra = be32_get(dir + p + 20);
        size = BME_HEADER + name + extra;          /* < 2^33: no overflow */
        if (size > len - p)
            return vd_error(EINVAL, "qcow2: malformed bitmap directory");
        flags = be32_get(dir + p + 12);
        if (!(flags & BME_FLAG_IN_USE)) {
            be32_put(dir + p + 12, flags | BME_FLAG_IN_USE);
            *changed = true;
        }
        p += div_round_up(size, 8) * 8;
    }
    return 0;
}

/* See qcow2.h. */
int qcow2_bitmaps_mark_in_use(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t len = s->bitmap_dir_size;
    uint8_t *dir;
    bool changed;
    int r;

    if (!s->has_bitmaps_ext || !len)
        return 0;
    if ((r = vd_untrusted_table_check(n, len, "qcow2 bitmap directory")) < 0)
        return r;
    if (!(dir = malloc(len)))
        return vd_error(ENOMEM, "out of memory");
    r = qcow2_read_padded(n->file, s->bitmap_dir_offset, len, dir);
    if (r >= 0)
        r = set_in_use(dir, len, &changed);
    if (r >= 0 && changed) {
        if ((r = qcow2_overlap_check(n, QC_OL_BITMAP_DIRECTORY, s->bitmap_dir_offset,
                                     len)) >= 0 &&
            (r = vd_pwrite(n->file, s->bitmap_dir_offset, len, dir, 0)) >= 0)
            r = vd_flush(n->file);
    }
    free(dir);
    return r;
}
