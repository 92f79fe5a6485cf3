/* SPDX-License-Identifier: BSD-3-Clause */
/* What the image-format harnesses share: walk an open image's mapping
 * reading each extent, and run its check with the report silenced (a
 * harness prints nothing per input). */
#ifndef VDISK_FUZZ_IMAGE_H
#define VDISK_FUZZ_IMAGE_H

#include <stdio.h>

#include "vdisk/driver.h"

/* Walk block status from the start, reading each extent (bounded: 512
 * extents, 128 KiB of each). */
static inline void fuzz_walk(vd_node *n)
{
    static uint8_t buf[1 << 17];
    int64_t size = vd_getlength(n);
    uint64_t off = 0;

    for (int i = 0; size > 0 && off < (uint64_t)size && i < 512; i++) {
        uint64_t pnum = 0, map = 0;
        vd_node *f = NULL;
        int r = vd_block_status(n, off, (uint64_t)size - off, &pnum, &map, &f);
        if (r < 0 || pnum == 0)
            break;
        uint64_t l = pnum < sizeof(buf) ? pnum : sizeof(buf);
        vd_pread(n, off, l, buf, 0);
        off += pnum;
    }
}

/* Run the driver's check as vdisk-img check does, its report sent to
 * /dev/null. */
static inline void fuzz_check(vd_node *n)
{
    static FILE *null;
    struct vd_check_result res = { 0 };
    FILE *saved = stderr;

    if (!n->drv->check || (!null && !(null = fopen("/dev/null", "w"))))
        return;
    stderr = null;
    n->drv->check(n, &res, 0);
    stderr = saved;
}

#endif
