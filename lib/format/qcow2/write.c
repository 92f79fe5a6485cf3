/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: the guest write path (in place, or allocating with copy-on-write)
 * and compressed cluster writes.
 *
 * NOTES ON WRITE ORDERING (the crash-safety invariants of the driver; the
 * code that keeps each one names it):
 *
 *  1. Refcounts before references.  A host cluster's refcount is raised
 *     (in the refcount cache) before any L2 entry names it, and the L2 cache
 *     depends on the refcount cache: no L2 slice reaches the disk before
 *     the refcount blocks it relies on, with a flush of the file between.
 *  2. Data before references.  Guest data and the copied-on-write parts of
 *     a newly allocated cluster are written before its L2 entry changes,
 *     and the L2 cache waits for a flush of the file before it writes the
 *     entry back, so an L2 entry never names a cluster whose contents did
 *     not reach the disk (nor one past the end of the file).  The
 *     copy-on-write parts of a fresh cluster that lies wholly past what the
 *     file held before (file_end; zeroes since the file grew) need no
 *     write when they would be zeroes (plan_run).
 *  3. Tables before pointers.  A new L2 table is written and flushed before
 *     the L1 entry naming it; a new L1 or refcount table and its refcount
 *     blocks are written and flushed before the header names them; a new
 *     refcount block is written and flushed before its table entry.
 *  4. References before frees.  A refcount is lowered only after the L2
 *     entry that held the reference changed, and the refcount cache then
 *     depends on the L2 cache (the lowered count reaches the disk last);
 *     a freed cluster is reused only after that L2 change reached the disk
 *     (qcow2_alloc_clusters writes the dependency first, lazy refcounts
 *     included).
 *  5. Dirty bit first.  With lazy refcounts, invariants 1 and 4 are relaxed;
 *     instead the dirty bit is on disk before the first metadata change,
 *     and cleared only after everything was flushed at close.
 *  6. Autoclear bits this driver does not maintain are cleared on disk
 *     before the first change; persistent bitmaps, which it does not
 *     update, are marked in use (inconsistent) on disk first instead
 *     (bitmaps.c), their autoclear bit kept.
 *  7. One writer per cluster.  A write, zero or discard registers its guest
 *     clusters as in flight; an overlapping one waits.  The metadata lock
 *     is never held across guest data I/O.  Only writes that change no
 *     metadata (in place into clusters the image owns) share clusters with
 *     each other (plan_shared), never with anything else.
 *  8. No blind writes.  Every write into the image file (guest data,
 *     copy-on-write, compressed data, L2 slices, refcount blocks, table
 *     entries, new tables) first passes the metadata-overlap check
 *     (overlap.c, check_run here); a hit marks the image corrupt instead.
 *     An external data file holds no metadata and is flushed, like the
 *     image file, before L2 entries naming its new data are written back.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

#define QC_MAX_RUN 256u            /* clusters planned at once */

/* The plan for one guest cluster of a write. */
struct wclus {
    uint64_t gc;
    uint64_t old_entry, old_bitmap;
    uint64_t host;                 /* host cluster written */
    uint64_t new_bitmap;
    uint64_t lo, hi;               /* the write's bytes in the cluster */
    uint64_t wlo, whi;             /* bytes written to the host cluster */
    bool fresh;                    /* host newly allocated (refcounted) */
    bool update;                   /* the L2 entry changes */
    bool free_old;                 /* drop the old entry's reference after */
    bool zero_first;               /* fresh past the old end, copy-on-write
                                      skipped: zero-allocate it first */
};

/* Mask of subclusters [a, b) of a cluster touches (bytes). */
static uint64_t sc_mask(const struct qcow2_state *s, uint64_t a, uint64_t b)
{
    uint64_t first = a >> s->sc_bits, last = (b - 1) >> s->sc_bits;
    return (last >= 63 ? ~0ull : ((1ull << (last + 1)) - 1)) & ~((1ull << first) - 1);
}

/* Plan an extended-L2 cluster that keeps its host cluster (in place). */
static void plan_ext_inplace(const struct qcow2_state *s, struct wclus *w)
{
    uint64_t touched = sc_mask(s, w->lo, w->hi), alloc = w->old_bitmap & 0xffffffffull;
    uint64_t scs = s->sc_size;

    w->host = w->old_entry & QC_OFFSET_MASK;
    w->wlo = (alloc >> (w->lo >> s->sc_bits)) & 1 ? w->lo : round_down(w->lo, scs);
    w->whi = (alloc >> ((w->hi - 1) >> s->sc_bits)) & 1 ? w->hi
           : round_down(w->hi - 1, scs) + scs;
    w->new_bitmap = (w->old_bitmap | touched) & ~(touched << 32);
    w->update = w->new_bitmap != w->old_bitmap;
}

/* Plan an extended-L2 cluster that gets a new host cluster. */
static void plan_ext_fresh(const struct qcow2_state *s, struct wclus *w, enum qc_type t)
{
    uint64_t touched = sc_mask(s, w->lo, w->hi), need = touched, first, last;

    if (t == QC_COMPRESSED_T)
        need = 0xffffffffull;
    else if (w->old_entry & QC_OFFSET_MASK)
        need |= w->old_bitmap & 0xffffffffull;    /* shared: keep its data */
    first = (uint64_t)__builtin_ctzll(need);
    last = 63 - (uint64_t)__builtin_clzll(need);
    w->wlo = first << s->sc_bits;
    w->whi = (last + 1) << s->sc_bits;
    w->new_bitmap = t == QC_COMPRESSED_T ? need
                  : (need | (w->old_bitmap & 0xffffffff00000000ull)) & ~(need << 32);
    w->fresh = true;
    w->update = true;
    w->free_old = (w->old_entry & (QC_OFFSET_MASK | QC_COMPRESSED)) != 0;
}

/* Decide how cluster w is written (lock held, entry read). */
static int plan_cluster(vd_node *n, struct wclus *w)
{
    struct qcow2_state *s = n->state;
    uint64_t e = w->old_entry, host = e & QC_OFFSET_MASK;
    bool own = (e & QC_COPIED) && !(e & QC_COMPRESSED) &&
               (host || s->data_external);
    enum qc_type t = QC_UNALLOC;

    if (e & QC_COMPRESSED)
        t = QC_COMPRESSED_T;
    if (s->ext_l2) {
        if (own)
            plan_ext_inplace(s, w);
        else
            plan_ext_fresh(s, w, t);
    } else if (own && !(e & QC_ZERO_FLAG)) {
        w->host = host;
        w->wlo = w->lo;
        w->whi = w->hi;
    } else {
        w->host = own ? host : 0;
        w->fresh = !own;
        w->wlo = 0;
        w->whi = s->cluster_size;
        w->update = true;
        w->free_old = !own && (e & (QC_OFFSET_MASK | QC_COMPRESSED));
        /* In a compressed descriptor bit 0 is part of the byte offset. */
        if (s->version < 3 && t != QC_COMPRESSED_T && (e & QC_ZERO_FLAG))
            return qcow2_corrupt(n, "Zero cluster entry found in pre-v3 image");
    }
    if (w->fresh && s->data_external) {
        w->host = w->gc << s->cluster_bits;   /* data file: host = guest offset */
        w->fresh = false;
        w->free_old = false;
    }
    return 0;
}

/* Make the file hold the in-place ranges of planned clusters: an extended
 * L2 cluster that QEMU allocated last may end inside the file, before a
 * free subcluster now written (QEMU's file grows on such a write); the
 * data file holds host = guest offset.  Lock held. */
static int grow_for_inplace(vd_node *n, const struct wclus *w, size_t count)
{
    struct qcow2_state *s = n->state;
    uint64_t end = 0;

    if (s->data_external)
        return qcow2_grow_file(n, s->data, w[count - 1].host + w[count - 1].whi);
    for (size_t k = 0; k < count; k++)
        if (!w[k].fresh && w[k].host)
            end = VD_MAX(end, w[k].host + w[k].whi);
    return end ? qcow2_grow_file(n, n->file, end) : 0;
}

/* Plan the clusters of [off, off+len) (one L2 slice) without allocating;
 * *nfresh counts those that need a new host cluster. */
static int plan_entries(vd_node *n, uint64_t off, uint64_t len, struct wclus *w,
                        size_t count, uint64_t *nfresh)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice;
    uint32_t idx;
    int h, r = 0;

    if ((r = qcow2_get_l2_slice(n, off >> s->cluster_bits, false, &slice, &idx, &h)) < 0)
        return r;
    for (size_t k = 0; k < count; k++) {
        uint64_t cstart;
        memset(&w[k], 0, sizeof(w[k]));
        w[k].gc = (off >> s->cluster_bits) + k;
        cstart = w[k].gc << s->cluster_bits;
        w[k].lo = VD_MAX(off, cstart) - cstart;
        w[k].hi = VD_MIN(off + len, cstart + s->cluster_size) - cstart;
        if (slice) {
            w[k].old_entry = qc_l2_get(s, slice, idx + (uint32_t)k);
            w[k].old_bitmap = qc_l2_get_bitmap(s, slice, idx + (uint32_t)k);
        }
        if ((r = plan_cluster(n, &w[k])) < 0)
            break;
        *nfresh += w[k].fresh;
    }
    qc_cache_put(s->l2_cache, h);
    if (r >= 0)
        r = grow_for_inplace(n, w, count);
    return r;
}

/* Would the copy-on-write parts of planned cluster w read as zeroes (no
 * host data before, and no backing file or a zero cluster)? */
static bool cow_reads_zero(vd_node *n, const struct wclus *w)
{
    return !(w->old_entry & (QC_OFFSET_MASK | QC_COMPRESSED)) &&
           ((w->old_entry & QC_ZERO_FLAG) || !n->backing);
}

/* Make sure the L2 table of the run exists (and is the image's own) before
 * its data clusters are allocated, so it lies in front of them in the file
 * as QEMU places it.  Lock held. */
static int prepare_l2(vd_node *n, const struct wclus *w)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice;
    uint32_t idx;
    int h, r = qcow2_get_l2_slice(n, w->gc, true, &slice, &idx, &h);

    if (r >= 0)
        qc_cache_put(s->l2_cache, h);
    return r;
}

/* Plan clusters [first, first+count) of one L2 slice; allocate the fresh
 * ones contiguously (refcounts first: invariant 1).  On failure no cluster
 * is left marked fresh without its own allocation (unwind_run gives back
 * the rest). */
static int plan_run(vd_node *n, uint64_t off, uint64_t len, struct wclus *w, size_t count)
{
    struct qcow2_state *s = n->state;
    uint64_t nfresh = 0, host = 0, zero_from;
    int r;

    r = plan_entries(n, off, len, w, count, &nfresh);
    if (r >= 0 && nfresh)
        r = prepare_l2(n, &w[0]);
    if (r < 0) {
        for (size_t k = 0; k < count; k++)
            w[k].fresh = false;
        return r;
    }
    if (!nfresh)
        return 0;
    zero_from = s->file_end;
    /* One run for all of them, as QEMU asks (the allocator places any
     * refcount blocks the run needs after it). */
    uint64_t left = 0, end = 0;
    for (size_t k = 0; k < count; k++) {
        if (!w[k].fresh)
            continue;
        if (!left) {
            left = nfresh;
            if ((r = qcow2_alloc_clusters(n, left, &host)) < 0) {
                w[k].fresh = false;
                for (size_t j = k + 1; j < count; j++)
                    w[j].fresh = false;
                return r;
            }
            nfresh -= left;
        }
        w[k].host = host;
        host += s->cluster_size;
        end = VD_MAX(end, host);
        left--;
        /* Past what the file held: it reads as zeroes already (inv. 2). */
        if (!s->ext_l2 && !s->crypt_method && w[k].host >= zero_from &&
            cow_reads_zero(n, &w[k])) {
            w[k].wlo = w[k].lo;
            w[k].whi = w[k].hi;
            w[k].zero_first = w[k].lo > 0 || w[k].hi < s->cluster_size;
        }
    }
    return qcow2_grow_file(n, n->file, end);
}

/* The overlap check of a planned run's host ranges: guest data lands on
 * no metadata (contiguous ranges checked at once).  Lock held. */
static int check_run(vd_node *n, const struct wclus *w, size_t count)
{
    struct qcow2_state *s = n->state;
    int r = 0;

    if (s->data_external)
        return 0;
    for (size_t k = 0; k < count && r >= 0;) {
        uint64_t start = w[k].host + w[k].wlo, end = w[k].host + w[k].whi;
        size_t j = k + 1;
        for (; j < count && w[j].host + w[j].wlo == end; j++)
            end = w[j].host + w[j].whi;
        r = qcow2_overlap_check(n, 0, start, end - start);
        k = j;
    }
    return r;
}

/* Register [off, off+len) as a shared in-place write when every cluster
 * is written in place and no metadata changes (invariant 7): 1 when done,
 * 0 when the write needs the exclusive path.  Lock held. */
static int plan_shared(vd_node *n, uint64_t off, uint64_t len, struct wclus *w, size_t count,
                       struct qc_inflight *f)
{
    struct qcow2_state *s = n->state;
    uint64_t nfresh = 0;
    int r;

    if (!qcow2_inflight_try_shared(n, f, off >> s->cluster_bits,
                                   (off + len - 1) >> s->cluster_bits))
        return 0;
    r = plan_entries(n, off, len, w, count, &nfresh);
    for (size_t k = 0; r >= 0 && k < count; k++)
        if (w[k].fresh || w[k].update || w[k].wlo < w[k].lo || w[k].whi > w[k].hi)
            r = -EAGAIN;
    if (r >= 0)
        return 1;
    qcow2_inflight_end(n, f);
    return r == -EAGAIN ? 0 : r;
}

/* Write guest bytes [guest, guest+len) at host of the data file; in an
 * encrypted image, encrypted (in place when buf is the writer's own copy,
 * own; else in a private copy). */
static int put_data(vd_node *n, uint64_t guest, uint64_t host, uint64_t len, const void *buf,
                    bool own)
{
    struct qcow2_state *s = n->state;
    void *c = (void *)buf;
    int r;

    if (!s->crypt_method)
        return vd_pwrite(s->data, host, len, buf, 0);
    if (!own && !(c = malloc(len)))
        return vd_error(ENOMEM, "out of memory");
    if (!own)
        memcpy(c, buf, len);
    r = qcow2_crypto_encrypt(n, guest, host, c, len);
    if (r >= 0)
        r = vd_pwrite(s->data, host, len, c, 0);
    if (!own)
        free(c);
    return r;
}

/* Write one cluster whose written range extends past the guest data:
 * fill it from the current contents (copy-on-write, invariant 2). */
static int write_cow_cluster(vd_node *n, const struct wclus *w, const char *data)
{
    struct qcow2_state *s = n->state;
    uint64_t base = w->gc << s->cluster_bits, l = w->whi - w->wlo;
    char *buf = malloc(l);
    int r = 0;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    vd_event(n->file, "cow_read");
    if (w->lo > w->wlo)
        r = qcow2_pread(n, base + w->wlo, w->lo - w->wlo, buf, 0);
    if (r >= 0 && w->whi > w->hi)
        r = qcow2_pread(n, base + w->hi, w->whi - w->hi, buf + (w->hi - w->wlo), 0);
    if (r >= 0) {
        memcpy(buf + (w->lo - w->wlo), data, w->hi - w->lo);
        vd_event(n->file, "cow_write");
        r = put_data(n, base + w->wlo, w->host + w->wlo, l, buf, true);
    }
    free(buf);
    return r;
}

/* Allocate (as zeroes) the fresh clusters whose copy-on-write was
 * skipped, before their data lands, as QEMU's zero-copy-on-write does:
 * the file then holds whole clusters, not holes around the data (QEMU
 * takes an image with many holes for a metadata-preallocated one).  Best
 * effort: the ranges read as zeroes either way. */
static void zero_allocate(vd_node *n, const struct wclus *w, size_t count)
{
    struct qcow2_state *s = n->state;

    for (size_t k = 0; k < count;) {
        size_t j = k + 1;
        if (!w[k].zero_first) {
            k++;
            continue;
        }
        while (j < count && w[j].zero_first && w[j].host == w[j - 1].host + s->cluster_size)
            j++;
        vd_pwrite_zeroes(s->data, w[k].host, (j - k) * s->cluster_size, VD_REQ_NO_FALLBACK);
        k = j;
    }
}

/* Write the data of a planned run (lock not held). */
static int write_run_data(vd_node *n, const struct wclus *w, size_t count, const char *buf)
{
    struct qcow2_state *s = n->state;
    int r;

    zero_allocate(n, w, count);
    for (size_t k = 0; k < count;) {
        const char *src = buf + (((w[k].gc << s->cluster_bits) + w[k].lo) -
                                 ((w[0].gc << s->cluster_bits) + w[0].lo));
        size_t j = k + 1;
        uint64_t l;
        if (w[k].wlo < w[k].lo || w[k].whi > w[k].hi) {
            if ((r = write_cow_cluster(n, &w[k], src)) < 0)
                return r;
            k++;
            continue;
        }
        l = w[k].hi - w[k].lo;
        /* Merge following clusters that continue both buffer and host. */
        while (j < count && w[j].wlo == 0 && w[j].lo == 0 && w[j - 1].whi == s->cluster_size &&
               w[j].whi == w[j].hi && w[j].host == w[j - 1].host + s->cluster_size) {
            l += w[j].hi;
            j++;
        }
        vd_event(n->file, "write_aio");
        if ((r = put_data(n, (w[k].gc << s->cluster_bits) + w[k].lo, w[k].host + w[k].lo, l,
                          src, false)) < 0)
            return r;
        k = j;
    }
    return 0;
}

/* Link the written clusters into L2 (invariants 1 and 4); lock held. */
static int link_run(vd_node *n, const struct wclus *w, size_t count)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice;
    uint32_t idx;
    bool any = false, fresh = false;
    int h, r;

    for (size_t k = 0; k < count; k++) {
        any |= w[k].update;
        fresh |= w[k].fresh;
    }
    if (!any)
        return 0;
    if ((r = qcow2_get_l2_slice(n, w[0].gc, true, &slice, &idx, &h)) < 0)
        return r;
    if (fresh && !s->lazy && (r = qc_cache_set_dependency(s->l2_cache, s->rc_cache)) < 0) {
        qc_cache_put(s->l2_cache, h);
        return r;
    }
    /* Invariant 2 across a power loss: the data is stable before the
     * entry that names it (the refcount dependency flushes too, but not
     * with lazy refcounts nor for clusters that keep their host). */
    qc_cache_depends_on_flush(s->l2_cache);
    for (size_t k = 0; k < count; k++) {
        if (!w[k].update)
            continue;
        qc_l2_set(s, slice, idx + (uint32_t)k, w[k].host | QC_COPIED,
                  s->ext_l2 ? w[k].new_bitmap : 0);
    }
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    for (size_t k = 0; k < count; k++)
        if (w[k].free_old && (r = qcow2_free_l2_entry(n, w[k].old_entry)) < 0)
            return r;
    return 0;
}

/* Give back the fresh clusters of a failed run; lock held. */
static void unwind_run(vd_node *n, const struct wclus *w, size_t count)
{
    struct qcow2_state *s = n->state;

    for (size_t k = 0; k < count; k++)
        if (w[k].fresh)
            qcow2_update_refcount(n, w[k].host, s->cluster_size, -1);
}

/* Write [off, off+len) that lies in one L2 slice, at most QC_MAX_RUN
 * clusters; lock held on entry and exit. */
static int write_run(vd_node *n, uint64_t off, uint64_t len, const char *buf)
{
    struct qcow2_state *s = n->state;
    size_t count = (size_t)(((off + len - 1) >> s->cluster_bits) - (off >> s->cluster_bits) + 1);
    struct wclus *w = calloc(count, sizeof(*w));
    struct qc_inflight f;
    int r;

    if (!w)
        return vd_error(ENOMEM, "out of memory");
    if ((r = plan_shared(n, off, len, w, count, &f)) < 0) {
        free(w);
        return r;
    }
    if (r == 0) {
        qcow2_inflight_begin(n, &f, off >> s->cluster_bits, (off + len - 1) >> s->cluster_bits);
        if ((r = plan_run(n, off, len, w, count)) < 0)
            unwind_run(n, w, count);
    }
    if (r >= 0)
        r = check_run(n, w, count);    /* a hit: the image is corrupt now, keep all */
    if (r >= 0) {
        pthread_mutex_unlock(&s->lock);
        r = write_run_data(n, w, count, buf);
        pthread_mutex_lock(&s->lock);
        if (r >= 0)
            r = link_run(n, w, count);
        if (r < 0)
            unwind_run(n, w, count);
    }
    qcow2_inflight_end(n, &f);
    free(w);
    return r;
}

/* Guest write. */
int qcow2_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct qcow2_state *s = n->state;
    uint64_t per_slice = (uint64_t)(s->l2_slice_size / s->l2_entry_size) << s->cluster_bits;
    const char *p = buf;
    int r;

    pthread_mutex_lock(&s->lock);
    r = qcow2_prepare_write(n);
    while (r >= 0 && len) {
        uint64_t end = VD_MIN(off + len, (off / per_slice + 1) * per_slice);
        uint64_t cap = round_down(off, s->cluster_size) + (uint64_t)QC_MAX_RUN * s->cluster_size;
        uint64_t l = VD_MIN(end, cap) - off;
        r = write_run(n, off, l, p);
        off += l;
        len -= l;
        p += l;
    }
    pthread_mutex_unlock(&s->lock);
    if (r >= 0 && (flags & VD_REQ_FUA))
        r = vd_flush(n);
    return r;
}

/* ---- compressed writes ---- */

/* Link a compressed cluster at host [coff, coff+clen) for guest cluster
 * gc; the old entry's reference is dropped after.  Lock held. */
static int link_compressed(vd_node *n, uint64_t gc, uint64_t coff, uint64_t clen)
{
    struct qcow2_state *s = n->state;
    uint64_t nsec = ((coff + clen - 1) >> 9) - (coff >> 9), *slice, old;
    uint32_t idx;
    int h, r;

    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    if (!s->lazy && (r = qc_cache_set_dependency(s->l2_cache, s->rc_cache)) < 0) {
        qc_cache_put(s->l2_cache, h);
        return r;
    }
    qc_cache_depends_on_flush(s->l2_cache);    /* invariant 2 */
    old = qc_l2_get(s, slice, idx);
    vd_event(n->file, "l2_update_compressed");
    qc_l2_set(s, slice, idx, QC_COMPRESSED | (nsec << s->csize_shift) | coff, 0);
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    if (old & (QC_OFFSET_MASK | QC_COMPRESSED))
        return qcow2_free_l2_entry(n, old);
    return 0;
}

/* Store compressed bytes for cluster gc: allocate, write, link. */
static int store_compressed(vd_node *n, uint64_t gc, const void *data, uint64_t clen)
{
    struct qcow2_state *s = n->state;
    struct qc_inflight f;
    uint64_t coff;
    int r;

    pthread_mutex_lock(&s->lock);
    if ((r = qcow2_prepare_write(n)) < 0)
        goto out;
    qcow2_inflight_begin(n, &f, gc, gc);
    r = qcow2_alloc_bytes(n, clen, &coff);
    if (r >= 0)
        r = qcow2_grow_file(n, n->file, coff + clen);
    if (r >= 0)
        r = qcow2_overlap_check(n, 0, coff, clen);
    if (r >= 0) {
        pthread_mutex_unlock(&s->lock);
        vd_event(n->file, "write_compressed");
        r = vd_pwrite(n->file, coff, clen, data, 0);
        pthread_mutex_lock(&s->lock);
        if (r >= 0)
            r = link_compressed(n, gc, coff, clen);
        if (r < 0)
            qcow2_update_refcount(n, coff, clen, -1);
    }
    qcow2_inflight_end(n, &f);
out:
    pthread_mutex_unlock(&s->lock);
    return r;
}

#define QC_SAMPLE 4096

/* Is the cluster plainly incompressible?  Three 4 KiB samples (start,
 * middle, end) that each fail to shrink at all predict that the whole
 * cluster will not fit in cluster_size - 1 either (random or already
 * compressed data); compressing it fully would only burn CPU before
 * storing it uncompressed. */
static bool looks_incompressible(const struct qcow2_state *s, const uint8_t *in)
{
    uint8_t tmp[QC_SAMPLE];
    uint64_t cs = s->cluster_size;

    if (cs < 4 * QC_SAMPLE)
        return false;
    for (int i = 0; i < 3; i++) {
        uint64_t at = i == 0 ? 0 : i == 1 ? cs / 2 : cs - QC_SAMPLE;
        if (qcow2_compress(s->compression_type, in + at, QC_SAMPLE, tmp,
                           QC_SAMPLE - 1) != -ENOSPC)
            return false;
    }
    return true;
}

/* Write one cluster compressed (zlib raw deflate or zstd); stored as a
 * normal cluster when compression does not make it smaller. */
int qcow2_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    struct qcow2_state *s = n->state;
    uint8_t *in = NULL, *out = NULL;
    ssize_t clen;
    int r;

    if (s->data_external)
        return vd_error(ENOTSUP, "Compression is not supported with external data files");
    if (!is_aligned(off, s->cluster_size) ||
        (len != s->cluster_size && off + len != s->size) || len > s->cluster_size)
        return vd_error(EINVAL, "Compressed writes must cover one whole cluster");
    in = calloc(1, s->cluster_size);
    out = malloc(s->cluster_size);
    if (!in || !out) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    memcpy(in, buf, len);
    clen = looks_incompressible(s, in) ? -ENOSPC :
           qcow2_compress(s->compression_type, in, s->cluster_size, out, s->cluster_size - 1);
    if (clen == -ENOSPC)
        r = qcow2_pwrite(n, off, len, buf, 0);
    else if (clen < 0)
        r = (int)clen;
    else
        r = store_compressed(n, off >> s->cluster_bits, out, (uint64_t)clen);
out:
    free(in);
    free(out);
    return r;
}
