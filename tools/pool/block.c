/* SPDX-License-Identifier: BSD-3-Clause */
/* What the block-volume backends share (logical.c: LVs, disk.c:
 * partitions): libvirt's checks of a new volume before the device is
 * made, the LUKS header written over a new device through libvdisk, and
 * the removal of a device whose volume failed, keeping the failure's
 * message. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "pool.h"

int block_vol_check(const struct vol_def *v, bool prealloc_meta, const struct vol_def *from)
{
    if (v->enc_format && strcmp(v->enc_format, "luks")) {
        pool_set_error("unsupported configuration: storage pool only supports LUKS "
                       "encrypted volumes");
        return -1;
    }
    if (from && prealloc_meta) {
        pool_set_error("unsupported configuration: metadata preallocation is not "
                       "supported for block volumes");
        return -1;
    }
    return 0;
}

int block_vol_luks(const struct vol_def *v, uint64_t size)
{
    vd_opts *o = vd_opts_new();
    char sz[32];
    int r;

    if (!o)
        pool_oom();
    /* whole KiB, as libvirt gives qemu-img the size */
    snprintf(sz, sizeof(sz), "%" PRIu64, (size + 1023) / 1024 * 1024);
    vd_opts_set(o, "size", sz);
    vol_luks_opts(o, v, "");
    vd_error_clear();
    r = vd_create("luks", v->path, o);
    vd_opts_free(o);
    if (r < 0) {
        pool_set_error("cannot create volume '%s': %s", v->name, vd_errmsg());
        return -1;
    }
    return 0;
}

void block_vol_undo(int (*undo)(const struct pool_def *d, const struct vol_def *v),
                    const struct pool_def *d, const struct vol_def *v)
{
    char *why = xstrdup(pool_error_text());

    undo(d, v);
    pool_set_error("%s", why);
    free(why);
}
