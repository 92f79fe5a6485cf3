/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: guest reads, block status, zero writes and discards, and the
 * in-flight list that serialises writers of the same guest clusters.
 * Guest data is read and written with the metadata lock released; the
 * allocating write path is in write.c, whose header lists the ordering
 * invariants every metadata change keeps. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

/* ---- in-flight writes ---- */

/* Does f conflict with a write in flight (shared ones only conflict with
 * exclusive ones)? */
static bool inflight_busy(const struct qcow2_state *s, const struct qc_inflight *f)
{
    for (const struct qc_inflight *p = s->inflight; p; p = p->next)
        if (p->first <= f->last && f->first <= p->last && !(p->shared && f->shared))
            return true;
    return false;
}

/* See qcow2.h. */
bool qcow2_inflight_try_shared(vd_node *n, struct qc_inflight *f, uint64_t first,
                               uint64_t last)
{
    struct qcow2_state *s = n->state;

    f->first = first;
    f->last = last;
    f->shared = true;
    for (const struct qc_inflight *p = s->inflight_waiters; p; p = p->next)
        if (p->first <= last && first <= p->last)
            return false;          /* queued writers go first */
    if (inflight_busy(s, f))
        return false;
    f->next = s->inflight;
    s->inflight = f;
    return true;
}

/* See qcow2.h.  A waiter sleeps on its own condition until a finishing
 * writer registers its range for it (so a finish wakes only the writers it
 * lets go, never all of them). */
void qcow2_inflight_begin(vd_node *n, struct qc_inflight *f, uint64_t first, uint64_t last)
{
    struct qcow2_state *s = n->state;
    struct qc_inflight **pp;

    f->first = first;
    f->last = last;
    f->shared = false;
    if (!inflight_busy(s, f)) {
        f->next = s->inflight;
        s->inflight = f;
        return;
    }
    pthread_cond_init(&f->cond, NULL);
    f->granted = false;
    f->next = NULL;
    for (pp = &s->inflight_waiters; *pp; pp = &(*pp)->next)
        ;
    *pp = f;
    while (!f->granted)
        pthread_cond_wait(&f->cond, &s->lock);
    pthread_cond_destroy(&f->cond);
}

/* See qcow2.h. */
void qcow2_inflight_end(vd_node *n, struct qc_inflight *f)
{
    struct qcow2_state *s = n->state;

    for (struct qc_inflight **pp = &s->inflight; *pp; pp = &(*pp)->next) {
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    }
    /* Hand the freed range to the waiters it unblocks, oldest first. */
    for (struct qc_inflight **pp = &s->inflight_waiters; *pp;) {
        struct qc_inflight *w = *pp;
        if (inflight_busy(s, w)) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->next = s->inflight;
        s->inflight = w;
        w->granted = true;
        pthread_cond_signal(&w->cond);
    }
}

/* ---- reads ---- */

/* Read from the backing file; zeroes past its end or without one. */
static int read_backing(vd_node *n, uint64_t off, uint64_t len, void *buf)
{
    int64_t bl = n->backing ? vd_getlength(n->backing) : 0;
    uint64_t l = bl > 0 && off < (uint64_t)bl ? VD_MIN(len, (uint64_t)bl - off) : 0;

    if (l < len)
        memset((char *)buf + l, 0, len - l);
    if (!l)
        return 0;
    vd_event(n->file, "read_backing_aio");
    return vd_pread(n->backing, off, l, buf, 0);
}

/* Read part [off, off+len) of a compressed guest cluster. */
static int read_compressed(vd_node *n, uint64_t entry, uint64_t off, uint64_t len, void *buf)
{
    struct qcow2_state *s = n->state;
    uint64_t coff, clen;
    uint8_t *in, *out;
    int r;

    qc_compressed_range(s, entry, &coff, &clen);
    in = malloc(clen);
    out = malloc(s->cluster_size);
    if (!in || !out) {
        r = vd_error(ENOMEM, "out of memory");
        goto done;
    }
    vd_event(n->file, "read_compressed");
    if ((r = qcow2_read_padded(n->file, coff, clen, in)) < 0)
        goto done;
    r = qcow2_decompress(s->compression_type, in, clen, out, s->cluster_size);
    if (r < 0) {
        r = vd_error(EIO, "qcow2: could not decompress the cluster at guest offset %#llx "
                     "(host %#llx)", (unsigned long long)(off & ~(s->cluster_size - 1)),
                     (unsigned long long)coff);
        goto done;
    }
    memcpy(buf, out + (off & (s->cluster_size - 1)), len);
    r = 0;
done:
    free(in);
    free(out);
    return r;
}

/* Mapping of off under the lock. */
static int locked_mapping(vd_node *n, uint64_t off, uint64_t len, struct qc_map *m)
{
    struct qcow2_state *s = n->state;
    int r;

    pthread_mutex_lock(&s->lock);
    r = qcow2_get_mapping(n, off, len, m);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Guest read (also the COW source of write.c). */
int qcow2_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct qcow2_state *s = n->state;
    char *p = buf;
    int r;

    while (len) {
        struct qc_map m;
        if ((r = locked_mapping(n, off, len, &m)) < 0)
            return r;
        switch (m.type) {
        case QC_UNALLOC:
        case QC_UNALLOC_ALLOC:
            r = read_backing(n, off, m.bytes, p);
            break;
        case QC_ZERO:
        case QC_ZERO_ALLOC:
            memset(p, 0, m.bytes);
            r = 0;
            break;
        case QC_NORMAL:
            vd_event(n->file, "read_aio");
            r = qcow2_read_padded(s->data, m.host, m.bytes, p);
            break;
        case QC_COMPRESSED_T:
            r = read_compressed(n, m.entry, off, m.bytes, p);
            break;
        }
        if (r < 0)
            return r;
        off += m.bytes;
        len -= m.bytes;
        p += m.bytes;
    }
    return 0;
}

/* ---- block status ---- */

/* Ask the data file whether a data range reads as zeroes (QEMU adds that
 * to a format's answer); may shorten *pnum. */
static int data_zero_status(vd_node *n, uint64_t host, uint64_t *pnum)
{
    struct qcow2_state *s = n->state;
    uint64_t p2 = 0;
    int r = vd_block_status(s->data, host, *pnum, &p2, NULL, NULL);

    if (r < 0)
        return 0;                  /* extra information only */
    if ((r & VD_BS_EOF) && (!p2 || (r & VD_BS_ZERO)))
        return VD_BS_ZERO;
    *pnum = VD_MIN(*pnum, p2);
    return r & VD_BS_ZERO;
}

/* Status of one mapping run, as QEMU's qcow2 reports it. */
int qcow2_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                       uint64_t *map, vd_node **file)
{
    struct qcow2_state *s = n->state;
    struct qc_map m;
    int r = locked_mapping(n, off, len, &m), st = 0;

    if (r < 0)
        return r;
    *pnum = m.bytes;
    if (m.type == QC_NORMAL || m.type == QC_ZERO_ALLOC || m.type == QC_UNALLOC_ALLOC) {
        *map = m.host;
        *file = s->data;
        st |= VD_BS_OFFSET_VALID;
    }
    if (m.type == QC_ZERO || m.type == QC_ZERO_ALLOC)
        st |= VD_BS_ZERO;
    else if (m.type == QC_NORMAL || m.type == QC_COMPRESSED_T)
        st |= VD_BS_DATA;
    if (m.type == QC_NORMAL && (!s->data_external || s->data_raw))
        st |= data_zero_status(n, m.host, pnum);
    return st;
}

/* ---- zero writes and discards ---- */

/* Whole clusters (or subclusters) [first unit, last unit] of one slice
 * made to read as zeroes (zero) or dropped (discard); old references are
 * freed after the L2 update and freed host clusters discarded below. */
struct zop {
    bool discard, unmap;
};

/* New entry and bitmap for zeroing subclusters mask of a cluster. */
static void zero_entry(vd_node *n, const struct zop *z, uint64_t e, uint64_t b,
                       uint64_t mask, uint64_t *ne, uint64_t *nb, bool *free_old)
{
    struct qcow2_state *s = n->state;
    bool whole = mask == (s->ext_l2 ? 0xffffffffull : 1);
    bool shared = (e & QC_OFFSET_MASK) && !(e & QC_COPIED);
    bool want_zero = !z->discard || (s->version >= 3 && n->backing);

    *free_old = false;
    if (!s->ext_l2) {
        bool drop = z->unmap || z->discard || (e & QC_COMPRESSED) || shared;
        *free_old = drop && (e & (QC_OFFSET_MASK | QC_COMPRESSED));
        *ne = drop ? (want_zero ? QC_ZERO_FLAG : 0)
                   : ((e & (QC_OFFSET_MASK | QC_COPIED)) | QC_ZERO_FLAG);
        if (!(e & QC_OFFSET_MASK) && !want_zero)
            *ne = 0;
        *nb = 0;
        return;
    }
    if (whole && (z->unmap || z->discard || (e & QC_COMPRESSED) || shared)) {
        *free_old = (e & (QC_OFFSET_MASK | QC_COMPRESSED)) != 0;
        *ne = 0;
        *nb = want_zero ? 0xffffffff00000000ull : 0;
        return;
    }
    *ne = e;
    *nb = (b & ~mask) | (want_zero ? mask << 32 : 0);
    if (!want_zero)
        *nb &= ~(mask << 32);
}

/* Apply a zero/discard to the units of guest cluster range within one L2
 * slice.  Lock held; [ustart, uend) in subcluster units. */
static int zero_run(vd_node *n, const struct zop *z, uint64_t ustart, uint64_t uend)
{
    struct qcow2_state *s = n->state;
    uint32_t shift = s->cluster_bits - s->sc_bits;
    uint64_t gc = ustart >> shift, *slice;
    uint64_t to_free[64];
    int nfree = 0, h, r;
    uint32_t idx;

    if ((r = qcow2_get_l2_slice(n, gc, false, &slice, &idx, &h)) < 0)
        return r;
    /* (a backing file named but not opened, as convert -B opens its
     * target, still shows through unallocated clusters) */
    if (!slice && (z->discard ? !(s->version >= 3 && n->backing)
                              : !(n->backing || n->backing_name)))
        return 0;                  /* unallocated and reads as wanted */
    if (!slice) {
        if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
            return r;
    }
    for (uint64_t u = ustart; u < uend && nfree < 64;) {
        uint64_t g = u >> shift, cend = (g + 1) << shift, hi = VD_MIN(uend, cend);
        uint64_t mask = 0, e, b, ne, nb;
        uint32_t i = (uint32_t)(idx + (g - gc));
        bool fr;
        for (uint64_t k = u; k < hi; k++)
            mask |= 1ull << (k & (s->sc_per_cluster - 1));
        e = qc_l2_get(s, slice, i);
        b = qc_l2_get_bitmap(s, slice, i);
        if (s->ext_l2 && (e & QC_COMPRESSED) && hi - u != (1ull << shift)) {
            r = -ENOTSUP;          /* part of a compressed cluster: write zeroes */
            break;
        }
        zero_entry(n, z, e, b, s->ext_l2 ? mask : 1, &ne, &nb, &fr);
        if (ne != e || nb != b) {
            qc_l2_set(s, slice, i, ne, nb);
            qc_cache_mark_dirty(s->l2_cache, h);
            if (fr)
                to_free[nfree++] = e;
        }
        u = hi;
    }
    qc_cache_put(s->l2_cache, h);
    for (int k = 0; k < nfree; k++) {
        int r2 = qcow2_free_l2_entry(n, to_free[k]);
        uint64_t host = to_free[k] & QC_OFFSET_MASK, rc = 1;
        if (r2 < 0)
            return r2;
        if (!(to_free[k] & QC_COMPRESSED) && host && !s->data_external &&
            qcow2_get_refcount(n, host >> s->cluster_bits, &rc) == 0 && rc == 0)
            vd_discard(n->file, host, s->cluster_size);
    }
    return r;
}

/* Zero or discard the whole units of [off, off+len) (unit-aligned). */
static int zero_units(vd_node *n, const struct zop *z, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    uint64_t u = off >> s->sc_bits, uend = (off + len) >> s->sc_bits;
    uint64_t per_slice = (uint64_t)(s->l2_slice_size / s->l2_entry_size)
                         << (s->cluster_bits - s->sc_bits);
    int r = 0;

    pthread_mutex_lock(&s->lock);
    if ((r = qcow2_prepare_write(n)) < 0)
        goto out;
    while (u < uend && r >= 0) {
        uint64_t e = VD_MIN(uend, (u / per_slice + 1) * per_slice);
        uint64_t cap = u + (64ull << (s->cluster_bits - s->sc_bits));
        struct qc_inflight f;
        e = VD_MIN(e, cap);
        qcow2_inflight_begin(n, &f, u >> (s->cluster_bits - s->sc_bits),
                             (e - 1) >> (s->cluster_bits - s->sc_bits));
        r = zero_run(n, z, u, e);
        qcow2_inflight_end(n, &f);
        u = e;
    }
out:
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Make [off, off+len) read as zeroes: flags on whole (sub)clusters,
 * written zeroes for the unaligned ends; -ENOTSUP lets the core write
 * zeroes instead. */
int qcow2_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct qcow2_state *s = n->state;
    uint64_t unit = s->sc_size, a, b, end = off + len;
    struct zop z = { .discard = false, .unmap = flags & VD_REQ_MAY_UNMAP };
    void *zero;
    int r = 0;

    if (s->version < 3 || s->data_raw) {
        if (n->backing || s->data_raw)
            return -ENOTSUP;
        z.discard = true;          /* v2 without backing: unallocated reads zero */
    }
    if (!round_up_checked(off, unit, &a))
        return -ENOTSUP;
    b = round_down(end, unit);
    if (end == s->size && b < end)
        b += unit;                 /* the tail of the last unit is not guest data */
    if (a >= b || ((a > off || end > b) && (flags & VD_REQ_NO_FALLBACK)))
        return -ENOTSUP;
    if (!(zero = calloc(1, unit)))
        return vd_error(ENOMEM, "out of memory");
    if (a > off)
        r = qcow2_pwrite(n, off, a - off, zero, 0);
    if (r >= 0)
        r = zero_units(n, &z, a, b - a);
    if (r >= 0 && end > b)
        r = qcow2_pwrite(n, b, end - b, zero, 0);
    free(zero);
    return r;
}

/* Drop whole clusters: unallocated, or zero when a v3 image has a backing
 * file (so the backing data does not show through). */
int qcow2_discard(vd_node *n, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    uint64_t a, b, end = off + len;
    struct zop z = { .discard = true, .unmap = true };

    if (!round_up_checked(off, s->cluster_size, &a))
        return 0;
    b = round_down(end, s->cluster_size);
    if (end == s->size && b < end)
        b += s->cluster_size;      /* the last, partial cluster of the image */
    if (a >= b)
        return 0;
    return zero_units(n, &z, a, b - a);
}
