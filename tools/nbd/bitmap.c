/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-nbd -B: the persistent dirty bitmaps an export offers as
 * qemu:dirty-bitmap:NAME, found in the image or its backing chain and
 * refused as qemu-nbd refuses them (missing, inconsistent). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nbd.h"
#include "vdisk/bitmap.h"

/* See nbd.h: -B may be given again, each adds a bitmap. */
int nbd_cli_add_bitmap(struct nbd_cli *cli, const char *name)
{
    const char **v;

    if (cli->nbitmaps >= VD_NBD_MAX_BITMAPS) {
        nbd_err("Too many bitmaps (at most %d)", VD_NBD_MAX_BITMAPS);
        return -1;
    }
    if (!(v = realloc(cli->bitmaps, (size_t)(cli->nbitmaps + 1) * sizeof(*v)))) {
        nbd_err("out of memory");
        return -1;
    }
    cli->bitmaps = v;
    v[cli->nbitmaps++] = name;
    return 0;
}

/* Does n hold bitmap name?  1 (consistent), 0 (not there), -1 (in use:
 * inconsistent). */
static int holds(vd_node *n, const char *name)
{
    struct vd_bitmap_info *l;
    int count = vd_bitmap_list(n, &l), r = 0;

    for (int i = 0; i < count && !r; i++)
        if (!strcmp(l[i].name, name))
            r = l[i].in_use ? -1 : 1;
    if (count >= 0)
        vd_bitmap_list_free(l, count);
    return r;
}

/* The image of n's chain that holds bitmap name, the top one first;
 * NULL with the error printed. */
static vd_node *find_holder(vd_node *n, const char *name)
{
    for (; n; n = vd_node_backing(n)) {
        int r = holds(n, name);
        if (r < 0) {
            nbd_err("Bitmap '%s' is inconsistent and cannot be used", name);
            return NULL;
        }
        if (r > 0)
            return n;
    }
    nbd_err("Bitmap '%s' is not found", name);
    return NULL;
}

/* See nbd.h.  The last -B comes first, as in qemu-nbd. */
int nbd_export_bitmaps(const struct nbd_cli *cli, vd_node *n, struct vd_nbd_bitmap **out)
{
    struct vd_nbd_bitmap *v;

    *out = NULL;
    if (!cli->nbitmaps)
        return 0;
    if (!(v = calloc((size_t)cli->nbitmaps, sizeof(*v)))) {
        nbd_err("out of memory");
        return -1;
    }
    for (int i = 0; i < cli->nbitmaps; i++) {
        v[i].name = cli->bitmaps[cli->nbitmaps - 1 - i];
        if (!(v[i].node = find_holder(n, v[i].name))) {
            free(v);
            return -1;
        }
    }
    *out = v;
    return 0;
}
