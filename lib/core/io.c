/* SPDX-License-Identifier: BSD-3-Clause */
/* The I/O dispatch layer: every request to a driver passes here.  It checks
 * ranges with overflow-checked arithmetic, refuses writes on read-only nodes,
 * aligns to the driver's request alignment by read-modify-write, splits at
 * the maximum transfer, protects sector 0 of probed raw images and counts
 * statistics.  Drivers never see an out-of-range request. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "util/checked.h"

#define VD_DEFAULT_MAX_TRANSFER (64u << 20)
#define VD_BOUNCE_CHUNK (1u << 20)
#define VD_ZERO_CHUNK (1u << 20)

/* Cached length of n (drivers report through getlength at open/resize). */
int64_t vd_getlength(vd_node *n)
{
    return n->total_size;
}

/* Ask the driver for the length again and cache it. */
int64_t vd_refresh_length(vd_node *n)
{
    int64_t len = n->drv->getlength ? n->drv->getlength(n)
                : n->file ? vd_refresh_length(n->file) : 0;
    uint64_t rounded;

    if (len < 0)
        return len;
    /* Lengths are whole 512-byte sectors, as in QEMU. */
    if (!round_up_checked((uint64_t)len, 512, &rounded) || rounded > INT64_MAX)
        return vd_error(EFBIG, "image size %lld is too large", (long long)len);
    n->total_size = (int64_t)rounded;
    return n->total_size;
}

/* Is [off, off+len) inside the node? */
static int check_range(vd_node *n, uint64_t off, uint64_t len)
{
    if (!range_ok(off, len, (uint64_t)n->total_size))
        return vd_error(EIO, "request at offset %llu, length %llu is beyond the end "
                        "of '%s' (%lld bytes)", (unsigned long long)off,
                        (unsigned long long)len, n->filename ? n->filename : "",
                        (long long)n->total_size);
    return 0;
}

/* Refuse writes on read-only nodes. */
static int check_writable(vd_node *n)
{
    if (n->read_only)
        return vd_error(EPERM, "'%s' is opened read-only",
                        n->filename ? n->filename : "");
    return 0;
}

/* Largest request the driver accepts, a multiple of its alignment. */
static uint64_t max_transfer(const vd_node *n)
{
    uint64_t m = n->max_transfer ? n->max_transfer : VD_DEFAULT_MAX_TRANSFER;
    uint64_t a = n->request_alignment ? n->request_alignment : 1;
    m = round_down(m, a);
    return m ? m : a;
}

/* Does the request meet the driver's alignment (offset, length, memory)? */
static bool is_request_aligned(const vd_node *n, uint64_t off, uint64_t len,
                               const void *buf)
{
    uint64_t a = n->request_alignment;
    if (a <= 1)
        return true;
    return is_aligned(off, a) && is_aligned(len, a) &&
           (!buf || is_aligned((uintptr_t)buf, a));
}

/* Allocate a buffer aligned for O_DIRECT use. */
static void *bounce_alloc(size_t len)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, len ? len : 4096))
        return NULL;
    return p;
}

/* Aligned read, split at the maximum transfer. */
static int read_split(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    uint64_t max = max_transfer(n);
    while (len) {
        uint64_t l = VD_MIN(len, max);
        int r = n->drv->pread(n, off, l, buf, flags);
        if (r < 0)
            return r;
        off += l;
        len -= l;
        buf = (char *)buf + l;
    }
    return 0;
}

/* Aligned write, split at the maximum transfer. */
static int write_split(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    uint64_t max = max_transfer(n);
    while (len) {
        uint64_t l = VD_MIN(len, max);
        int r = n->drv->pwrite(n, off, l, buf, flags);
        if (r < 0)
            return r;
        off += l;
        len -= l;
        buf = (const char *)buf + l;
    }
    return 0;
}

/* The aligned window [*aoff, *aoff + *alen) around a piece of a request. */
static void align_window(const vd_node *n, uint64_t off, uint64_t len,
                         uint64_t *aoff, uint64_t *alen)
{
    uint64_t a = n->request_alignment, end = off + len;
    *aoff = round_down(off, a);
    *alen = round_down(end + a - 1, a) - *aoff;
}

/* Unaligned read through a bounce buffer, one chunk at a time. */
static int read_bounced(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    uint64_t a = n->request_alignment, chunk = VD_MAX(VD_BOUNCE_CHUNK, a);
    char *bounce = bounce_alloc(chunk + 2 * a);
    int r = 0;

    if (!bounce)
        return vd_error(ENOMEM, "out of memory");
    while (len && r >= 0) {
        uint64_t l = VD_MIN(len, chunk), aoff, alen;
        align_window(n, off, l, &aoff, &alen);
        r = read_split(n, aoff, alen, bounce, flags);
        if (r >= 0)
            memcpy(buf, bounce + (off - aoff), l);
        off += l;
        len -= l;
        buf = (char *)buf + l;
    }
    free(bounce);
    return r;
}

/* Unaligned write by read-modify-write of whole aligned blocks. */
static int write_bounced(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    uint64_t a = n->request_alignment, chunk = VD_MAX(VD_BOUNCE_CHUNK, a);
    char *bounce = bounce_alloc(chunk + 2 * a);
    int r = 0;

    if (!bounce)
        return vd_error(ENOMEM, "out of memory");
    pthread_mutex_lock(&n->rmw_lock);
    while (len && r >= 0) {
        uint64_t l = VD_MIN(len, chunk), aoff, alen;
        align_window(n, off, l, &aoff, &alen);
        if (aoff != off || alen != l)
            r = read_split(n, aoff, alen, bounce, 0);
        if (r >= 0) {
            memcpy(bounce + (off - aoff), buf, l);
            r = write_split(n, aoff, alen, bounce, flags);
        }
        off += l;
        len -= l;
        buf = (const char *)buf + l;
    }
    pthread_mutex_unlock(&n->rmw_lock);
    free(bounce);
    return r;
}

/* Read len bytes at off into buf. */
int vd_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    int r;

    if (!len)
        return 0;
    if ((r = check_range(n, off, len)) < 0)
        return r;
    if (!n->drv->pread)
        return vd_error(ENOTSUP, "driver '%s' cannot read", n->drv->name);
    atomic_fetch_add(&n->st_rd_ops, 1);
    atomic_fetch_add(&n->st_rd_bytes, len);
    if (is_request_aligned(n, off, len, buf))
        return read_split(n, off, len, buf, flags);
    return read_bounced(n, off, len, buf, flags);
}

/* Refuse a write to sector 0 of a probed raw image that would make it
 * probe as another format. */
static int check_probed_raw(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    uint8_t head[512];
    uint64_t l;
    int r;

    if (!n->probed_raw || off >= sizeof(head))
        return 0;
    l = VD_MIN((uint64_t)sizeof(head), (uint64_t)n->total_size);
    memset(head, 0, sizeof(head));
    if ((r = vd_pread(n, 0, l, head, 0)) < 0)
        return r;
    memcpy(head + off, buf, VD_MIN(len, sizeof(head) - off));
    if (vd_probe_changes_format(head, sizeof(head)))
        return vd_error(EPERM, "write to sector 0 of the probed raw image '%s' "
                        "refused: it would change the image's format "
                        "(specify the format explicitly with -f raw)",
                        n->filename ? n->filename : "");
    return 0;
}

/* Write len bytes at off from buf. */
int vd_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    int r;

    if (!len)
        return 0;
    if ((r = check_writable(n)) < 0 || (r = check_range(n, off, len)) < 0)
        return r;
    if (!n->drv->pwrite)
        return vd_error(ENOTSUP, "driver '%s' cannot write", n->drv->name);
    if ((r = check_probed_raw(n, off, len, buf)) < 0)
        return r;
    atomic_fetch_add(&n->st_wr_ops, 1);
    atomic_fetch_add(&n->st_wr_bytes, len);
    if (is_request_aligned(n, off, len, buf))
        return write_split(n, off, len, buf, flags);
    return write_bounced(n, off, len, buf, flags);
}

/* Write zeroes from a zeroed buffer (the fallback of pwrite_zeroes). */
static int write_zero_buffer(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    uint64_t chunk = VD_MIN(len, (uint64_t)VD_ZERO_CHUNK);
    void *zero = bounce_alloc(chunk);
    int r = 0;

    if (!zero)
        return vd_error(ENOMEM, "out of memory");
    memset(zero, 0, chunk);
    while (len && r >= 0) {
        uint64_t l = VD_MIN(len, chunk);
        r = vd_pwrite(n, off, l, zero, flags & VD_REQ_FUA);
        off += l;
        len -= l;
    }
    free(zero);
    return r;
}

/* Aligned zeroing through the driver, split at the maximum transfer;
 * -ENOTSUP when the driver cannot. */
static int zeroes_split(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    uint64_t max = max_transfer(n);
    if (!n->drv->pwrite_zeroes)
        return -ENOTSUP;
    while (len) {
        uint64_t l = VD_MIN(len, max);
        int r = n->drv->pwrite_zeroes(n, off, l, flags);
        if (r < 0)
            return r;
        off += l;
        len -= l;
    }
    return 0;
}

/* Unaligned zeroing as QEMU's block layer does it: the unaligned head
 * and tail written as zeroes (read-modify-write), in that order around
 * the aligned middle, which the driver zeroes itself when it can. */
static int zeroes_unaligned(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    uint64_t a = n->request_alignment, end = off + len;
    uint64_t mid = div_round_up(off, a) * a, mend = round_down(end, a);   /* off < 2^63 */
    int r;

    if (mid >= mend)
        return write_zero_buffer(n, off, len, flags);
    if (mid > off && (r = write_zero_buffer(n, off, mid - off, flags)) < 0)
        return r;
    r = zeroes_split(n, mid, mend - mid, flags);
    if (r == -ENOTSUP)
        r = write_zero_buffer(n, mid, mend - mid, flags);
    if (r >= 0 && end > mend)
        r = write_zero_buffer(n, mend, end - mend, flags);
    return r;
}

/* Make [off, off+len) read as zeroes. */
int vd_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    int r;

    if (!len)
        return 0;
    if ((r = check_writable(n)) < 0 || (r = check_range(n, off, len)) < 0)
        return r;
    atomic_fetch_add(&n->st_zero_ops, 1);
    if (is_request_aligned(n, off, len, NULL)) {
        r = zeroes_split(n, off, len, flags);
        if (r != -ENOTSUP || (flags & VD_REQ_NO_FALLBACK))
            return r == -ENOTSUP ? vd_error(ENOTSUP, "fast zeroing is not supported") : r;
    } else if (flags & VD_REQ_NO_FALLBACK) {
        return vd_error(ENOTSUP, "fast zeroing of an unaligned range is not supported");
    } else {
        return zeroes_unaligned(n, off, len, flags);
    }
    return write_zero_buffer(n, off, len, flags);
}

/* Discard the aligned interior of [off, off+len); advisory. */
int vd_discard(vd_node *n, uint64_t off, uint64_t len)
{
    uint64_t a = VD_MAX(n->request_alignment, 1u), start, end, max;
    int r;

    if ((r = check_writable(n)) < 0 || (r = check_range(n, off, len)) < 0)
        return r;
    if (!n->drv->discard || !round_up_checked(off, a, &start))
        return 0;
    end = round_down(off + len, a);
    atomic_fetch_add(&n->st_discard_ops, 1);
    max = max_transfer(n);
    while (start < end) {
        uint64_t l = VD_MIN(end - start, max);
        if ((r = n->drv->discard(n, start, l)) < 0)
            return r;
        start += l;
    }
    return 0;
}

/* Write one compressed cluster through the driver's hook. */
int vd_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    int r;

    if (!len)
        return 0;
    if ((r = check_writable(n)) < 0 || (r = check_range(n, off, len)) < 0)
        return r;
    if (!n->drv->pwrite_compressed)
        return vd_error(ENOTSUP, "Compression is not supported for this image format ('%s')",
                        n->drv->name);
    atomic_fetch_add(&n->st_wr_ops, 1);
    atomic_fetch_add(&n->st_wr_bytes, len);
    return n->drv->pwrite_compressed(n, off, len, buf);
}

/* Compress one cluster for vd_store_compressed (see vdisk.h). */
int vd_compress_cluster(vd_node *n, uint64_t off, uint64_t len, const void *buf,
                        void *out, size_t *out_len)
{
    int r;

    if ((r = check_writable(n)) < 0 || (r = check_range(n, off, len)) < 0)
        return r;
    if (!len || !n->drv->compress_cluster || !n->drv->store_compressed)
        return -ENOTSUP;
    return n->drv->compress_cluster(n, off, len, buf, out, out_len);
}

/* Store a cluster compressed by vd_compress_cluster. */
int vd_store_compressed(vd_node *n, uint64_t off, uint64_t len, const void *data,
                        size_t data_len)
{
    int r;

    if ((r = check_writable(n)) < 0 || (r = check_range(n, off, len)) < 0)
        return r;
    if (!len || !n->drv->store_compressed)
        return -ENOTSUP;
    atomic_fetch_add(&n->st_wr_ops, 1);
    atomic_fetch_add(&n->st_wr_bytes, len);
    return n->drv->store_compressed(n, off, len, data, data_len);
}

/* The driver's cluster size, 0 when it has none.  A data-only format
 * (raw) without its own answers as its file does (QEMU's raw forwards
 * get_info: over a protocol whose get_info fails, info shows no dirty flag;
 * rbd's gives the object size). */
int64_t vd_node_cluster_size(vd_node *n)
{
    if (n->drv->cluster_size)
        return n->drv->cluster_size(n);
    if (n->drv->data_only && n->file && n->file->drv->cluster_size)
        return n->file->drv->cluster_size(n->file);
    return 0;
}

/* The format takes only compressed writes (see vdisk.h). */
bool vd_node_needs_compressed_writes(vd_node *n)
{
    return n->drv->needs_compressed_writes && n->drv->needs_compressed_writes(n);
}

/* Flush the node, then the nodes below it. */
int vd_flush(vd_node *n)
{
    int r = 0;

    if (!n)
        return 0;
    atomic_fetch_add(&n->st_flush_ops, 1);
    if (n->drv->flush && (r = n->drv->flush(n)) < 0)
        return r;
    if (n->file && (r = vd_flush(n->file)) < 0)
        return r;
    return 0;
}

/* Resize the node (and refresh the cached length). */
int vd_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    int r;

    if ((r = check_writable(n)) < 0)
        return r;
    if (size > INT64_MAX)
        return vd_error(EINVAL, "size %llu is too large", (unsigned long long)size);
    if (!n->drv->truncate)
        return vd_error(ENOTSUP, "Image format driver does not support resize");
    if ((r = n->drv->truncate(n, size, exact, prealloc)) < 0)
        return r;
    return vd_refresh_length(n) < 0 ? -EIO : 0;
}

/* See driver.h. */
int vd_read_backing(vd_node *n, uint64_t off, uint64_t len, void *buf)
{
    int64_t bl = n->backing ? vd_getlength(n->backing) : 0;
    uint64_t l;

    if (bl < 0)
        return (int)bl;
    l = off >= (uint64_t)bl ? 0 : VD_MIN(len, (uint64_t)bl - off);
    memset((char *)buf + l, 0, len - l);
    if (!l)
        return 0;
    vd_event(n->file, "read_backing_aio");
    return vd_pread(n->backing, off, l, buf, 0);
}

/* Host bytes used by the node and everything below it. */
int64_t vd_get_allocated_size(vd_node *n)
{
    if (n->drv->get_allocated_size)
        return n->drv->get_allocated_size(n);
    if (n->file)
        return vd_get_allocated_size(n->file);
    return vd_error(ENOTSUP, "allocated size unknown");
}

/* Default status: protocols hold data at the same offset; formats without
 * a hook hold everything. */
static int default_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                          uint64_t *map, vd_node **file)
{
    *pnum = len;
    if (n->drv->kind == VD_DRV_FORMAT)
        return VD_BS_DATA | VD_BS_ALLOCATED;
    *map = off;
    *file = n;
    return VD_BS_DATA | VD_BS_OFFSET_VALID | VD_BS_ALLOCATED;
}

/* Block status of n itself, following RECURSE answers into the child. */
int vd_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                    uint64_t *map, vd_node **file)
{
    uint64_t m = 0, size = (uint64_t)n->total_size;
    vd_node *f = NULL;
    int r;

    *pnum = 0;
    if (off >= size)
        return VD_BS_EOF;
    len = VD_MIN(len, size - off);
    r = n->drv->block_status ? n->drv->block_status(n, off, len, pnum, &m, &f)
                             : default_status(n, off, len, pnum, &m, &f);
    if (r < 0)
        return r;
    if (*pnum == 0 || *pnum > len)
        return vd_error(EIO, "driver '%s' returned a bad block status length",
                        n->drv->name);
    if ((r & VD_BS_RECURSE) && f) {
        uint64_t p2;
        int r2 = vd_block_status(f, m, *pnum, &p2, &m, &f);
        if (r2 < 0)
            return r2;
        if (p2 == 0) {            /* child shorter than the window: zeroes */
            r2 = VD_BS_ZERO;
            p2 = *pnum;
        }
        *pnum = VD_MIN(*pnum, p2);
        /* Neither data nor zeroes (an NBD hole that may not read as
         * zeroes, an x-dirty-bitmap dirty area) is not allocated, as in QEMU. */
        r = r2 & (VD_BS_DATA | VD_BS_ZERO | VD_BS_OFFSET_VALID | VD_BS_ALLOCATED);
    }
    if (r & (VD_BS_DATA | VD_BS_ZERO))
        r |= VD_BS_ALLOCATED;
    if (off + *pnum == size)
        r |= VD_BS_EOF;
    if (map)
        *map = m;
    if (file)
        *file = f;
    return r & ~VD_BS_RECURSE;
}

/* Block status walking the backing chain. */
int vd_block_status_above(vd_node *n, uint64_t off, uint64_t len,
                          uint64_t *pnum, uint64_t *map, vd_node **file,
                          int *depth)
{
    uint64_t top_size = (uint64_t)n->total_size;
    int d = 0, r;

    *pnum = 0;
    if (off >= top_size)
        return VD_BS_EOF;
    len = VD_MIN(len, top_size - off);
    for (vd_node *cur = n; cur; cur = cur->backing, d++) {
        *depth = d;
        r = vd_block_status(cur, off, len, pnum, map, file);
        if (r < 0)
            return r;
        if (r & VD_BS_EOF && *pnum == 0) {   /* beyond a short backing file */
            *pnum = len;
            return VD_BS_ZERO | (off + len == top_size ? VD_BS_EOF : 0);
        }
        if ((r & VD_BS_ALLOCATED) || !cur->backing) {
            r &= ~VD_BS_EOF;
            if (!(r & VD_BS_ALLOCATED) && cur->drv->supports_backing)
                r |= VD_BS_ZERO;
            return r | (off + *pnum == top_size ? VD_BS_EOF : 0);
        }
        len = *pnum;
    }
    return vd_error(EIO, "block status: empty chain");
}

/* See driver.h. */
int vd_data_extent(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                   uint64_t *map, vd_node **file)
{
    uint64_t size = (uint64_t)n->total_size;
    int r;

    *pnum = 0;
    if (n->drv->struct_size <= offsetof(struct vd_driver, data_extent) ||
        !n->drv->data_extent)
        return -ENOTSUP;
    if (off >= size || len == 0)
        return vd_error(EINVAL, "data extent beyond the end of the image");
    len = VD_MIN(len, size - off);
    r = n->drv->data_extent(n, off, len, pnum, map, file);
    if (r >= 0 && (*pnum == 0 || *pnum > len))
        return vd_error(EIO, "driver '%s' returned a bad data extent length", n->drv->name);
    return r;
}

/* Offloaded copy: the source's layers translate first, then the target's. */
int vd_copy_range(vd_node *src, uint64_t soff, vd_node *dst, uint64_t doff,
                  uint64_t len)
{
    int r;

    if (!len)
        return 0;
    if ((r = check_range(src, soff, len)) < 0 || (r = check_writable(dst)) < 0 ||
        (r = check_range(dst, doff, len)) < 0)
        return r;
    if (src->request_alignment > 1 || dst->request_alignment > 1)
        return -ENOTSUP;
    if (src->drv->copy_range_from)
        return src->drv->copy_range_from(src, soff, dst, doff, len);
    if (dst->drv->copy_range_to)
        return dst->drv->copy_range_to(src, soff, dst, doff, len);
    return -ENOTSUP;
}

/* Pass a named event down to the node that handles it. */
void vd_event(vd_node *n, const char *event)
{
    for (; n; n = n->file) {
        if (n->drv->event) {
            n->drv->event(n, event);
            return;
        }
    }
}
