/* SPDX-License-Identifier: BSD-3-Clause */
/* Persistent dirty bitmaps: the public calls of vdisk/bitmap.h, each one
 * request to the format driver's bitmap hook.  Merging across images is
 * done here, through the status and set-dirty requests. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/bitmap.h"
#include "vdisk/driver.h"

/* Run one request on n's driver; -ENOTSUP when it keeps no bitmaps. */
static int call(vd_node *n, struct vd_bitmap_req *req)
{
    if (!n->drv->bitmap && req->op == VD_BITMAP_ADD)
        return vd_error(ENOTSUP, "Can't store persistent bitmaps to #block%03d: %s",
                        100 + (int)(getpid() % 900), strerror(ENOTSUP));
    if (!n->drv->bitmap && req->name)
        return vd_error(ENOENT, "Dirty bitmap '%s' not found", req->name);
    if (!n->drv->bitmap)
        return vd_error(ENOTSUP, "The format keeps no persistent bitmaps");
    if (req->name && strlen(req->name) > VD_BITMAP_MAX_NAME && req->op != VD_BITMAP_ADD)
        return vd_error(ENOENT, "Dirty bitmap '%s' not found", req->name);
    return n->drv->bitmap(n, req);
}

/* See vdisk/bitmap.h. */
int vd_bitmap_list(vd_node *n, struct vd_bitmap_info **out)
{
    struct vd_bitmap_req req = { .op = VD_BITMAP_LIST };
    int r = call(n, &req);

    if (r < 0)
        return r;
    *out = req.list;
    return req.count;
}

/* See vdisk/bitmap.h. */
bool vd_bitmap_supported(vd_node *n)
{
    struct vd_bitmap_req req = { .op = VD_BITMAP_SUPPORTED };
    return n->drv->bitmap && n->drv->bitmap(n, &req) == 0;
}

/* See vdisk/bitmap.h. */
void vd_bitmap_list_free(struct vd_bitmap_info *list, int count)
{
    for (int i = 0; list && i < count; i++)
        free(list[i].name);
    free(list);
}

/* See vdisk/bitmap.h. */
int vd_bitmap_add(vd_node *n, const char *name, uint64_t granularity, bool disabled)
{
    struct vd_bitmap_req req = { .op = VD_BITMAP_ADD, .name = name,
                                 .granularity = granularity, .disabled = disabled };
    return call(n, &req);
}

/* One request naming a bitmap. */
static int simple(vd_node *n, enum vd_bitmap_op op, const char *name)
{
    struct vd_bitmap_req req = { .op = op, .name = name };
    return call(n, &req);
}

int vd_bitmap_remove(vd_node *n, const char *name)
{
    return simple(n, VD_BITMAP_REMOVE, name);
}

int vd_bitmap_clear(vd_node *n, const char *name)
{
    return simple(n, VD_BITMAP_CLEAR, name);
}

int vd_bitmap_enable(vd_node *n, const char *name, bool enable)
{
    return simple(n, enable ? VD_BITMAP_ENABLE : VD_BITMAP_DISABLE, name);
}

/* See vdisk/bitmap.h. */
int vd_bitmap_status(vd_node *n, const char *name, uint64_t off, uint64_t len,
                     bool *dirty, uint64_t *pnum)
{
    struct vd_bitmap_req req = { .op = VD_BITMAP_STATUS, .name = name, .off = off,
                                 .len = len };
    int64_t size = vd_getlength(n);
    int r;

    if (size < 0)
        return (int)size;
    if (!len || off >= (uint64_t)size)
        return vd_error(EINVAL, "bitmap status: range outside the image");
    req.len = len = (len < (uint64_t)size - off ? len : (uint64_t)size - off);
    if ((r = call(n, &req)) < 0)
        return r;
    *dirty = req.dirty;
    *pnum = req.pnum;
    return 0;
}

/* See vdisk/bitmap.h: sizes must match, as QEMU requires. */
int vd_bitmap_merge(vd_node *dst, const char *dname, vd_node *src, const char *sname)
{
    int64_t dsize = vd_getlength(dst), ssize = vd_getlength(src);
    uint64_t off = 0;
    int r;

    if (dsize < 0 || ssize < 0)
        return (int)(dsize < 0 ? dsize : ssize);
    if ((r = simple(dst, VD_BITMAP_CHECK_USABLE, dname)) < 0 ||
        (r = simple(src, VD_BITMAP_CHECK_USABLE, sname)) < 0)
        return r;
    if (dsize != ssize)
        return vd_error(EINVAL, "Bitmaps are of different sizes (destination size is %lld, "
                        "source size is %lld) and can't be merged",
                        (long long)dsize, (long long)ssize);
    while (off < (uint64_t)ssize) {
        bool dirty;
        uint64_t pnum;
        if ((r = vd_bitmap_status(src, sname, off, (uint64_t)ssize - off, &dirty, &pnum)) < 0)
            return r;
        if (dirty) {
            struct vd_bitmap_req req = { .op = VD_BITMAP_SET_DIRTY, .name = dname,
                                         .off = off, .len = pnum };
            if ((r = call(dst, &req)) < 0)
                return r;
        }
        off += pnum;
    }
    return 0;
}
