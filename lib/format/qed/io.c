/* SPDX-License-Identifier: BSD-3-Clause */
/* qed guest I/O: mapping runs through the L1/L2 tables, reads, writes in
 * place or allocating at the end of the file (with copy-on-write fill
 * from the backing file), zero clusters, flush with need-check clearing,
 * resize and backing file change.  See qed.h for the invariants. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format/qed/qed.h"
#include "util/checked.h"

enum qed_kind { QR_UNALLOC, QR_ZERO, QR_DATA };

/* A run of guest bytes with one kind of mapping, inside one L2 table. */
struct qed_run {
    enum qed_kind kind;
    uint64_t host;                 /* QR_DATA: host offset of the first byte */
    uint64_t bytes;
};

/* Kind of an L2 entry. */
static inline enum qed_kind entry_kind(uint64_t e)
{
    return e == 0 ? QR_UNALLOC : e == QED_ENTRY_ZERO ? QR_ZERO : QR_DATA;
}

/* Extend a run over the entries of table t after index i while they keep
 * its kind (and, for data, follow on in the file).  Lock held. */
static int extend_run(vd_node *n, const uint64_t *t, uint64_t i, uint64_t in,
                      uint64_t len, struct qed_run *run)
{
    struct qed_state *s = n->state;
    uint64_t e0 = t[i];

    run->kind = entry_kind(e0);
    run->bytes = VD_MIN(len, s->cluster - in);
    for (uint64_t k = 0; i + k < s->nelems; k++) {
        uint64_t e = t[i + k];
        if (k && (entry_kind(e) != run->kind ||
                  (run->kind == QR_DATA && e != e0 + k * s->cluster)))
            break;
        if (run->kind == QR_DATA && !qed_cluster_offset_ok(s, e))
            return vd_error(EIO, "qed: cluster offset 0x%" PRIx64 " is invalid (past the "
                            "end of the file, in the header or unaligned)", e);
        if (k)
            run->bytes += VD_MIN(len - run->bytes, s->cluster);
        if (run->bytes >= len)
            break;
    }
    run->host = run->kind == QR_DATA ? e0 + in : 0;
    return 0;
}

/* The run at guest offset off (inside the image), at most len bytes.
 * Lock held. */
static int lookup_locked(vd_node *n, uint64_t off, uint64_t len, struct qed_run *run)
{
    struct qed_state *s = n->state;
    uint64_t l1i = off >> s->l1_shift, l2i = (off >> s->l2_shift) & (s->nelems - 1);
    uint64_t in = off & (s->cluster - 1), span, *t;
    int r;

    if (!s->l1[l1i]) {
        span = ((l1i + 1) << s->l1_shift) - off;
        run->kind = QR_UNALLOC;
        run->bytes = VD_MIN(len, span);
        run->host = 0;
        return 0;
    }
    if ((r = qed_l2_get(n, s->l1[l1i], &t)) < 0)
        return r;
    return extend_run(n, t, l2i, in, len, run);
}

/* The run at off, taking the lock. */
static int lookup(vd_node *n, uint64_t off, uint64_t len, struct qed_run *run)
{
    struct qed_state *s = n->state;
    int r;

    pthread_mutex_lock(&s->lock);
    r = lookup_locked(n, off, len, run);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- reads ---- */

/* See qed.h. */
int qed_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    uint8_t *p = buf;
    struct qed_run run;
    int r;

    while (len) {
        if ((r = lookup(n, off, len, &run)) < 0)
            return r;
        if (run.kind == QR_UNALLOC)
            r = vd_read_backing(n, off, run.bytes, p);
        else if (run.kind == QR_ZERO)
            memset(p, 0, run.bytes), r = 0;
        else
            vd_event(n->file, "read_aio"), r = vd_pread(n->file, run.host, run.bytes, p, flags);
        if (r < 0)
            return r;
        off += run.bytes;
        len -= run.bytes;
        p += run.bytes;
    }
    return 0;
}

/* ---- allocating writes ---- */

/* Grow the file to at least end bytes (new space reads as zeroes).
 * alloc_lock held. */
static int grow_file(vd_node *n, uint64_t end)
{
    int64_t flen = vd_getlength(n->file);

    if (flen < 0)
        return (int)flen;
    if ((uint64_t)flen >= end)
        return 0;
    return vd_truncate(n->file, end, true, VD_PREALLOC_OFF);
}

/* Put need-check on disk before the first allocation (invariant 1).
 * alloc_lock held. */
static int set_need_check(vd_node *n)
{
    struct qed_state *s = n->state;
    int r = 0;

    pthread_mutex_lock(&s->lock);
    if (!(s->h.features & QED_F_NEED_CHECK)) {
        s->h.features |= QED_F_NEED_CHECK;
        if ((r = qed_write_header(n)) >= 0)
            r = vd_flush(n->file);
        if (r < 0)
            s->h.features &= ~(uint64_t)QED_F_NEED_CHECK;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Write the fill of a new cluster around the guest bytes: [a, b) of the
 * guest, at host h, from the backing file or zeroes.  alloc_lock held. */
static int write_fill(vd_node *n, uint64_t a, uint64_t b, uint64_t h, bool cow)
{
    struct qed_state *s = n->state;
    int r;

    if (a >= b)
        return 0;
    if (!s->fill && !(s->fill = malloc(s->cluster)))
        return vd_error(ENOMEM, "qed: out of memory");
    if (cow) {
        vd_event(n->file, "cow_read");
        if ((r = vd_read_backing(n, a, b - a, s->fill)) < 0)
            return r;
    } else {
        memset(s->fill, 0, b - a);
    }
    vd_event(n->file, "cow_write");
    return vd_pwrite(n->file, h, b - a, s->fill, 0);
}

/* Write guest bytes [off, off+len) into new clusters at host, with fill
 * around them (invariant 2).  alloc_lock held. */
static int write_new_clusters(vd_node *n, uint64_t off, uint64_t len, const uint8_t *p,
                              uint64_t host, bool cow)
{
    struct qed_state *s = n->state;
    uint64_t first = round_down(off, s->cluster);
    uint64_t end = round_down(off + len + s->cluster - 1, s->cluster);
    int r;

    if ((r = write_fill(n, first, off, host, cow)) < 0)
        return r;
    vd_event(n->file, "write_aio");
    if ((r = vd_pwrite(n->file, host + (off - first), len, p, 0)) < 0)
        return r;
    return write_fill(n, off + len, end, host + (off + len - first), cow);
}

/* Link clusters [c0, c0+count) of the guest to host (data) or to zero
 * clusters (host 0) in a new L2 table at the end of the file, then the L1
 * entry.  Lock held. */
static int link_new_table(vd_node *n, uint64_t c0, uint64_t count, uint64_t host)
{
    struct qed_state *s = n->state;
    uint64_t l1i = c0 / s->nelems, i0 = c0 % s->nelems, off = s->file_size;
    uint64_t *t = calloc(s->nelems, 8);
    int r;

    if (!t)
        return vd_error(ENOMEM, "qed: cannot allocate an L2 table");
    for (uint64_t k = 0; k < count; k++)
        t[i0 + k] = host ? host + k * s->cluster : QED_ENTRY_ZERO;
    s->file_size += s->table_bytes;
    vd_event(n->file, "l2_alloc_write");
    if ((r = grow_file(n, s->file_size)) < 0 ||
        (r = qed_write_entries(n, off, t, 0, s->nelems)) < 0) {
        free(t);
        return r;
    }
    s->l1[l1i] = off;
    vd_event(n->file, "l1_update");
    if ((r = qed_write_entries(n, s->h.l1_offset, s->l1, l1i, 1)) < 0) {
        s->l1[l1i] = 0;
        free(t);
        return r;
    }
    qed_l2_put(n, off, t);
    return 0;
}

/* Link guest clusters [c0, c0+count) (one L2 table) to host, or to zero
 * clusters when host is 0.  Lock held. */
static int link_clusters(vd_node *n, uint64_t c0, uint64_t count, uint64_t host)
{
    struct qed_state *s = n->state;
    uint64_t l1i = c0 / s->nelems, i0 = c0 % s->nelems, *t, *old;
    int r;

    if (!s->l1[l1i])
        return link_new_table(n, c0, count, host);
    if ((r = qed_l2_get(n, s->l1[l1i], &t)) < 0)
        return r;
    if (!(old = malloc(count * 8)))
        return vd_error(ENOMEM, "qed: out of memory");
    memcpy(old, t + i0, count * 8);
    for (uint64_t k = 0; k < count; k++)
        t[i0 + k] = host ? host + k * s->cluster : QED_ENTRY_ZERO;
    vd_event(n->file, "l2_update");
    if ((r = qed_write_entries(n, s->l1[l1i], t, i0, count)) < 0)
        memcpy(t + i0, old, count * 8);
    free(old);
    return r;
}

/* Allocate for the run at off (not data): write p (NULL: make zero
 * clusters of whole clusters) and link it.  Returns the bytes done, or 0
 * when the run became data meanwhile (write again in place). */
static int64_t alloc_write(vd_node *n, uint64_t off, uint64_t len, const uint8_t *p)
{
    struct qed_state *s = n->state;
    struct qed_run run;
    uint64_t first, count, host = 0;
    int r;

    pthread_mutex_lock(&s->alloc_lock);
    if ((r = lookup(n, off, len, &run)) < 0 || run.kind == QR_DATA ||
        (!p && run.kind == QR_ZERO) || (r = set_need_check(n)) < 0)
        goto out;
    len = run.bytes;
    first = round_down(off, s->cluster);
    count = div_round_up(off + len - first, s->cluster);
    if (p) {
        pthread_mutex_lock(&s->lock);
        host = s->file_size;
        s->file_size += count * s->cluster;
        pthread_mutex_unlock(&s->lock);
        vd_event(n->file, "cluster_alloc");
        if ((r = grow_file(n, host + count * s->cluster)) < 0 ||
            (r = write_new_clusters(n, off, len, p, host,
                                    run.kind == QR_UNALLOC && n->backing)) < 0)
            goto out;
        /* invariant 2 over a backing file: a linked cluster whose data a
         * crash lost would read zeroes, not the backing file's bytes */
        if (n->backing_name) {
            vd_event(n->file, "flush_to_disk");
            if ((r = vd_flush(n->file)) < 0)
                goto out;
        }
    }
    pthread_mutex_lock(&s->lock);
    r = link_clusters(n, first >> s->l2_shift, count, host);
    pthread_mutex_unlock(&s->lock);
out:
    pthread_mutex_unlock(&s->alloc_lock);
    if (r < 0)
        return r;
    return run.kind == QR_DATA ? 0 : (int64_t)run.bytes;
}

/* ---- writes ---- */

/* See qed.h: in place where clusters are allocated, else allocating. */
int qed_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    const uint8_t *p = buf;
    struct qed_run run;
    int64_t done;
    int r;

    while (len) {
        if ((r = lookup(n, off, len, &run)) < 0)
            return r;
        if (run.kind == QR_DATA) {
            vd_event(n->file, "write_aio");
            if ((r = vd_pwrite(n->file, run.host, run.bytes, p, flags)) < 0)
                return r;
            done = (int64_t)run.bytes;
        } else if ((done = alloc_write(n, off, run.bytes, p)) < 0) {
            return (int)done;
        } else if (done == 0) {
            continue;
        }
        off += (uint64_t)done;
        len -= (uint64_t)done;
        p += done;
    }
    return (flags & VD_REQ_FUA) ? vd_flush(n->file) : 0;
}

/* Write zeroes over a data run in place (as QEMU). */
static int zero_in_place(vd_node *n, uint64_t host, uint64_t len)
{
    uint64_t chunk = VD_MIN(len, (uint64_t)1 << 20);
    uint8_t *z = calloc(1, chunk);
    int r = 0;

    if (!z)
        return vd_error(ENOMEM, "qed: out of memory");
    for (uint64_t d = 0; d < len && r >= 0; d += chunk)
        r = vd_pwrite(n->file, host + d, VD_MIN(chunk, len - d), z, 0);
    free(z);
    return r;
}

/* Write len bytes of zeroes at guest offset off as data. */
static int write_zero_data(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    uint64_t chunk = VD_MIN(len, (uint64_t)1 << 20);
    uint8_t *z;
    int r = 0;

    if (!len)
        return 0;
    if (!(z = calloc(1, chunk)))
        return vd_error(ENOMEM, "qed: out of memory");
    for (uint64_t d = 0; d < len && r >= 0; d += chunk)
        r = qed_pwrite(n, off + d, VD_MIN(chunk, len - d), z, flags);
    free(z);
    return r;
}

/* Zero whole clusters [off, off+len): data clusters in place, the others
 * become zero clusters. */
static int zero_clusters(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct qed_run run;
    int64_t done;
    int r;

    while (len) {
        if ((r = lookup(n, off, len, &run)) < 0)
            return r;
        if (run.kind == QR_DATA) {
            if (flags & VD_REQ_NO_FALLBACK)
                return -ENOTSUP;
            if ((r = zero_in_place(n, run.host, run.bytes)) < 0)
                return r;
            done = (int64_t)run.bytes;
        } else if (run.kind == QR_ZERO) {
            done = (int64_t)run.bytes;
        } else if ((done = alloc_write(n, off, run.bytes, NULL)) < 0) {
            return (int)done;
        } else if (done == 0) {
            continue;
        }
        off += (uint64_t)done;
        len -= (uint64_t)done;
    }
    return 0;
}

/* See qed.h: as QEMU's block layer splits it, the unaligned head and tail
 * written as zeroes, the whole clusters between made zero clusters. */
int qed_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct qed_state *s = n->state;
    uint64_t a = round_down(off + s->cluster - 1, s->cluster);
    uint64_t b = round_down(off + len, s->cluster);
    int r;

    if (a >= b) {                  /* no whole cluster */
        if (flags & VD_REQ_NO_FALLBACK)
            return -ENOTSUP;
        r = write_zero_data(n, off, len, flags & VD_REQ_FUA);
        return r;
    }
    if ((a != off || b != off + len) && (flags & VD_REQ_NO_FALLBACK))
        return -ENOTSUP;
    if ((r = write_zero_data(n, off, a - off, 0)) < 0 ||
        (r = zero_clusters(n, a, b - a, flags)) < 0 ||
        (r = write_zero_data(n, b, off + len - b, 0)) < 0)
        return r;
    return (flags & VD_REQ_FUA) ? vd_flush(n->file) : 0;
}

/* ---- status, flush ---- */

/* See qed.h: unallocated runs fall through, zero clusters read zeroes,
 * data clusters are in the file. */
int qed_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                     uint64_t *map, vd_node **file)
{
    struct qed_run run;
    int r;

    if ((r = lookup(n, off, len, &run)) < 0)
        return r;
    *pnum = run.bytes;
    if (run.kind == QR_UNALLOC)
        return 0;
    if (run.kind == QR_ZERO)
        return VD_BS_ZERO;
    *map = run.host;
    *file = n->file;
    return VD_BS_DATA | VD_BS_OFFSET_VALID;
}

/* See qed.h: flush the file, then clear need-check (invariant 1). */
int qed_flush(vd_node *n)
{
    struct qed_state *s = n->state;
    bool dirty;

    pthread_mutex_lock(&s->lock);
    dirty = s->h.features & QED_F_NEED_CHECK;
    pthread_mutex_unlock(&s->lock);
    if (!dirty || n->read_only) {
        vd_event(n->file, "flush_to_disk");
        return vd_flush(n->file);
    }
    return qed_mark_clean(n);
}

/* ---- resize, backing file ---- */

/* See qed.h: grow only, no preallocation (QEMU's checks and messages). */
int qed_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct qed_state *s = n->state;
    uint64_t old;
    int r;

    if (prealloc != VD_PREALLOC_OFF)
        return vd_error(ENOTSUP, "Unsupported preallocation mode '%s'",
                        vd_prealloc_name(prealloc));
    if (!qed_image_size_ok(size, s->cluster, s->h.table_size))
        return vd_error(EINVAL, "Invalid image size specified");
    pthread_mutex_lock(&s->lock);
    old = s->h.image_size;
    if (size < old) {
        pthread_mutex_unlock(&s->lock);
        return vd_error(ENOTSUP, "Shrinking images is currently not supported");
    }
    s->h.image_size = size;
    if ((r = qed_write_header(n)) < 0)
        s->h.image_size = old;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* See qed.h: the name goes right after the header, inside the header
 * clusters; a raw backing file is recorded as not to be probed. */
int qed_change_backing_file(vd_node *n, const char *name, const char *fmt)
{
    struct qed_state *s = n->state;
    size_t nl = name ? strlen(name) : 0;
    struct qed_header old = s->h;
    int r;

    if (nl > QED_NAME_MAX || QED_HEADER_LEN + nl > s->header_bytes)
        return vd_error(ENOSPC, "qed: backing file name of %zu bytes does not fit in the "
                        "header", nl);
    pthread_mutex_lock(&s->lock);
    s->h.features &= ~(uint64_t)(QED_F_BACKING_FILE | QED_F_BACKING_RAW);
    s->h.backing_off = s->h.backing_len = 0;
    if (nl) {
        s->h.features |= QED_F_BACKING_FILE;
        if (fmt && !strcmp(fmt, "raw"))
            s->h.features |= QED_F_BACKING_RAW;
        s->h.backing_off = QED_HEADER_LEN;
        s->h.backing_len = (uint32_t)nl;
        r = vd_pwrite(n->file, QED_HEADER_LEN, nl, name, 0);
    } else {
        r = 0;
    }
    if (r >= 0)
        r = qed_write_header(n);
    if (r < 0)
        s->h = old;
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return vd_error_prefix(r, "qed: could not change the backing file");
    return vd_node_set_backing_name(n, name, fmt);
}
