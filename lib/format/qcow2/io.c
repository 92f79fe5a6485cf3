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
            r = vd_read_backing(n, off, m.bytes, p);
            break;
        case QC_ZERO:
        case QC_ZERO_ALLOC:
            memset(p, 0, m.bytes);
            r = 0;
            break;
        case QC_NORMAL:
            vd_event(n->file, "read_aio");
            r = qcow2_read_padded(s->data, m.host, m.bytes, p);
            if (r >= 0 && s->crypt_method)
                r = qcow2_crypto_decrypt(n, off, m.host, p, m.bytes);
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

/* QEMU's test for a metadata-preallocated image: at least max(10/9 of the
 * image file's allocated clusters, that + 2) clusters of the file have a
 * refcount; false on any error.  Lock held. */
static bool detect_preallocation(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int64_t len = vd_getlength(n->file), alloc = vd_get_allocated_size(n->file);
    uint64_t real, threshold, end, count = 0, rc;

    if (len < 0 || alloc < 0)
        return false;
    real = (uint64_t)alloc / s->cluster_size;   /* < 2^55: no overflow below */
    threshold = VD_MAX(real * 10 / 9, real + 2);
    end = div_round_up((uint64_t)len, s->cluster_size);
    for (uint64_t i = 0; i < end && count < threshold; i++) {
        if (qcow2_get_refcount(n, i, &rc) < 0)
            return false;
        count += rc != 0;
    }
    return count >= threshold;
}

/* See qcow2.h.  Like QEMU, the answer is computed at the first use after
 * open and kept, whatever writes change later. */
bool qcow2_looks_preallocated(vd_node *n)
{
    struct qcow2_state *s = n->state;
    bool r;

    pthread_mutex_lock(&s->lock);
    if (!s->prealloc_seen)
        s->prealloc_seen = detect_preallocation(n) ? 2 : 1;
    r = s->prealloc_seen == 2;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Ask the data file whether a data range reads as zeroes (what QEMU adds
 * to a format's answer that asks for it); may shorten *pnum. */
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

/* Status of one mapping run, as QEMU 7.2's qcow2 reports it: the data
 * file is asked about zeroes under data clusters only when the image
 * looks metadata-preallocated (with or without data_file_raw). */
int qcow2_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                       uint64_t *map, vd_node **file)
{
    struct qcow2_state *s = n->state;
    struct qc_map m;
    bool prealloc = qcow2_looks_preallocated(n);   /* at the first call, as QEMU */
    int r = locked_mapping(n, off, len, &m), st = 0;

    if (r < 0)
        return r;
    *pnum = m.bytes;
    if ((m.type == QC_NORMAL || m.type == QC_ZERO_ALLOC || m.type == QC_UNALLOC_ALLOC) &&
        !s->crypt_method) {          /* QEMU gives no offset of encrypted data */
        *map = m.host;
        *file = s->data;
        st |= VD_BS_OFFSET_VALID;
    }
    if (m.type == QC_ZERO || m.type == QC_ZERO_ALLOC)
        st |= VD_BS_ZERO;
    else if (m.type == QC_NORMAL || m.type == QC_COMPRESSED_T)
        st |= VD_BS_DATA;
    if (m.type == QC_NORMAL && prealloc && !s->crypt_method)
        st |= data_zero_status(n, m.host, pnum);
    return st;
}

/* ---- zero writes and discards ---- */

/* A zero write or discard on whole (sub)clusters follows QEMU 7.2's rules:
 * - discard: a cluster that holds host data, or any cluster when a backing
 *   file would show through, reads as zeroes afterwards (v2: becomes
 *   unallocated); other clusters are left as they are;
 * - zero write: the zero flag (extended L2: the zero bits) is set, keeping
 *   the host cluster unless it is compressed or MAY_UNMAP lets it go;
 * - only_unwritten (the widened zero write of a partial unit): nothing
 *   changes, and -ENOTSUP is returned, unless the unit is unallocated or
 *   already zero.
 * Old references are freed after the L2 update; host clusters whose
 * refcount drops to 0 are then discarded in the image file. */
struct zop {
    bool discard, unmap, only_unwritten;
};

#define QC_BITMAP_ALL_ZEROES 0xffffffff00000000ull

/* Does the image have a backing file (opened, or only named: a target
 * that convert -B opens without it still shows it through)? */
static bool has_backing(const vd_node *n)
{
    return n->backing || n->backing_name;
}

/* Does L2 entry e hold host data (normal, zero-allocated or compressed)?
 * In an external data file offset 0 is valid; COPIED tells it apart. */
static bool entry_allocated(const struct qcow2_state *s, uint64_t e)
{
    return (e & QC_COMPRESSED) || (e & QC_OFFSET_MASK) ||
           (s->data_external && (e & QC_COPIED));
}

/* Are the units mask of a cluster unallocated or zero (no data)? */
static bool units_unwritten(const struct qcow2_state *s, uint64_t e, uint64_t b,
                            uint64_t mask)
{
    if (e & QC_COMPRESSED)
        return false;
    if (s->ext_l2)
        return !(b & mask);
    return (e & QC_ZERO_FLAG) || !entry_allocated(s, e);
}

/* New entry and bitmap of a whole cluster a guest discard drops. */
static void discard_entry(vd_node *n, uint64_t e, uint64_t b, uint64_t *ne, uint64_t *nb,
                          bool *free_old)
{
    struct qcow2_state *s = n->state;

    *free_old = entry_allocated(s, e);
    *ne = e;
    *nb = b;
    if (!*free_old && !has_backing(n))
        return;                    /* reads as zeroes already */
    *ne = !s->ext_l2 && s->version >= 3 ? QC_ZERO_FLAG : 0;
    *nb = s->ext_l2 ? QC_BITMAP_ALL_ZEROES : 0;
}

/* New entry and bitmap for zeroing the units mask of a cluster (all of
 * them: whole; some subclusters: partial, never compressed). */
static void zero_entry(vd_node *n, const struct zop *z, uint64_t e, uint64_t b,
                       uint64_t mask, uint64_t *ne, uint64_t *nb, bool *free_old)
{
    struct qcow2_state *s = n->state;
    bool whole = mask == (s->ext_l2 ? 0xffffffffull : 1);

    *free_old = whole && ((e & QC_COMPRESSED) || (z->unmap && entry_allocated(s, e)));
    *ne = *free_old ? 0 : e;
    if (!s->ext_l2) {
        *ne |= QC_ZERO_FLAG;
        *nb = 0;
    } else {
        *nb = whole ? QC_BITMAP_ALL_ZEROES : (b | mask << 32) & ~mask;
    }
}

/* Change one cluster's entry for the units mask; -ENOTSUP when it cannot
 * be done with flags.  Sets *fr to the entry to free, or 0. */
static int zero_cluster(vd_node *n, const struct zop *z, uint64_t *slice, uint32_t i,
                        uint64_t mask, bool *dirty, uint64_t *fr)
{
    struct qcow2_state *s = n->state;
    uint64_t e = qc_l2_get(s, slice, i), b = qc_l2_get_bitmap(s, slice, i), ne, nb;
    bool whole = mask == (s->ext_l2 ? 0xffffffffull : 1), free_old;

    *fr = 0;
    if (z->only_unwritten && !units_unwritten(s, e, b, mask))
        return -ENOTSUP;           /* the caller writes zeroes */
    if (!whole && (e & QC_COMPRESSED))
        return -ENOTSUP;           /* part of a compressed cluster */
    if (z->discard)
        discard_entry(n, e, b, &ne, &nb, &free_old);
    else
        zero_entry(n, z, e, b, mask, &ne, &nb, &free_old);
    if (ne == e && nb == b)
        return 0;
    qc_l2_set(s, slice, i, ne, nb);
    *dirty = true;
    if (free_old)
        *fr = e;
    return 0;
}

/* See qcow2.h. */
int qcow2_release_entries(vd_node *n, const uint64_t *to_free, size_t nfree)
{
    struct qcow2_state *s = n->state;

    for (size_t k = 0; k < nfree; k++) {
        uint64_t host = to_free[k] & QC_OFFSET_MASK, rc = 1;
        int r = qcow2_free_l2_entry(n, to_free[k]);
        if (r < 0)
            return r;
        if (!(to_free[k] & QC_COMPRESSED) && host && !s->data_external &&
            qcow2_get_refcount(n, host >> s->cluster_bits, &rc) == 0 && rc == 0)
            vd_discard(n->file, host, s->cluster_size);
    }
    return 0;
}

/* Is the L2 table of guest cluster gc allocated? */
static bool l2_allocated(const struct qcow2_state *s, uint64_t gc)
{
    uint64_t l1i = gc >> s->l2_bits;

    return l1i < s->l1_size && (s->l1[l1i] & QC_OFFSET_MASK);
}

/* Apply a zero/discard to the units of guest cluster range within one L2
 * slice (at most 64 clusters).  Lock held; [ustart, uend) in subcluster
 * units. */
static int zero_run(vd_node *n, const struct zop *z, uint64_t ustart, uint64_t uend)
{
    struct qcow2_state *s = n->state;
    uint32_t shift = s->cluster_bits - s->sc_bits;
    uint64_t gc = ustart >> shift, *slice;
    uint64_t to_free[64];
    int nfree = 0, h, r;
    uint32_t idx;
    bool dirty = false;

    if (z->discard && !has_backing(n) && !l2_allocated(s, gc))
        return 0;                  /* unallocated, and stays so */
    /* (allocating also copies an L2 table a snapshot shares) */
    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    for (uint64_t u = ustart; u < uend && nfree < 64 && r >= 0;) {
        uint64_t g = u >> shift, hi = VD_MIN(uend, (g + 1) << shift), mask = 0;
        for (uint64_t k = u; k < hi; k++)
            mask |= 1ull << (k & (s->sc_per_cluster - 1));
        r = zero_cluster(n, z, slice, (uint32_t)(idx + (g - gc)), s->ext_l2 ? mask : 1,
                         &dirty, &to_free[nfree]);
        if (r >= 0 && to_free[nfree])
            nfree++;
        u = hi;
    }
    if (dirty)
        qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    if (nfree) {
        int r2 = qcow2_release_entries(n, to_free, (size_t)nfree);
        if (r2 < 0)
            return r2;
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

/* Does [off, off+len) of the guest (through the backing chain, clamped to
 * the image size) read as zeroes? */
static bool reads_zero(vd_node *n, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    uint64_t pnum;
    int depth, r;

    len = off < s->size ? VD_MIN(len, s->size - off) : 0;
    while (len) {
        r = vd_block_status_above(n, off, len, &pnum, NULL, NULL, &depth);
        if (r < 0 || !(r & VD_BS_ZERO) || pnum == 0 || pnum > len)
            return false;
        off += pnum;
        len -= pnum;
    }
    return true;
}

/* Zero [off, end), part of one unit: the whole unit is zeroed by flags
 * when z allows flags, the rest of the unit reads as zeroes and the unit
 * holds no data (as QEMU does); otherwise zeroes are written, or -ENOTSUP
 * returned with no_fallback. */
static int zero_partial(vd_node *n, const struct zop *z, uint64_t off, uint64_t end,
                        bool no_fallback)
{
    struct qcow2_state *s = n->state;
    uint64_t us = round_down(off, s->sc_size), ue = VD_MIN(us + s->sc_size, s->size);
    void *zero;
    int r = -ENOTSUP;

    if (z && reads_zero(n, us, off - us) && reads_zero(n, end, ue - end)) {
        struct zop zu = *z;
        zu.only_unwritten = true;
        r = zero_units(n, &zu, us, s->sc_size);
    }
    if (r != -ENOTSUP || no_fallback)
        return r;
    if (!(zero = calloc(1, end - off)))
        return vd_error(ENOMEM, "out of memory");
    r = qcow2_pwrite(n, off, end - off, zero, 0);
    free(zero);
    return r;
}

/* Make [off, off+len) read as zeroes: flags on whole (sub)clusters (the
 * last unit of the image counts as whole), partial units as zero_partial
 * does; -ENOTSUP lets the core write zeroes instead. */
int qcow2_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct qcow2_state *s = n->state;
    uint64_t unit = s->sc_size, a, b, end = off + len;
    struct zop z = { .discard = false, .unmap = flags & VD_REQ_MAY_UNMAP };
    const struct zop *zp = &z;
    bool no_fallback = flags & VD_REQ_NO_FALLBACK;
    int r = 0;

    if (s->data_raw)
        return -ENOTSUP;
    if (s->version < 3) {
        z.discard = true;          /* v2 without backing: unallocated reads zero */
        if (has_backing(n))
            zp = NULL;             /* v2 cannot hide the backing file */
    }
    if (!round_up_checked(off, unit, &a) || !round_up_checked(end, unit, &b))
        return -ENOTSUP;
    if (end < s->size)
        b = round_down(end, unit);
    if (a > off)
        r = zero_partial(n, zp, off, VD_MIN(a, end), no_fallback);
    if (r >= 0 && a < b)
        r = zp ? zero_units(n, zp, a, b - a) : -ENOTSUP;
    if (r >= 0 && b < end && a <= b)
        r = zero_partial(n, zp, b, end, no_fallback);
    return r;
}

/* Discard the whole clusters of [off, off+len) (the last, partial one of
 * the image too); partial clusters are left alone. */
static int discard_clusters(vd_node *n, const struct zop *z, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    uint64_t a, b, end = off + len;

    if (!round_up_checked(off, s->cluster_size, &a))
        return 0;
    b = round_down(end, s->cluster_size);
    if (end == s->size && b < end)
        b += s->cluster_size;      /* the last, partial cluster of the image */
    if (a >= b)
        return 0;
    return zero_units(n, z, a, b - a);
}

/* Guest discard.  A v2 image with a backing file cannot make clusters read
 * as zeroes, so it keeps its data (as QEMU does). */
int qcow2_discard(vd_node *n, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    struct zop z = { .discard = true, .unmap = true };

    if (s->version < 3 && has_backing(n))
        return 0;
    return discard_clusters(n, &z, off, len);
}
