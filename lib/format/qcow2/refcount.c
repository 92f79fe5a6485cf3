/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: reference counts of host clusters and their allocation.  The
 * refcount table lives in memory (host order) and on disk; refcount blocks
 * go through the refcount cache.  Ordering kept here (see io.c for the
 * whole list): a new refcount block reaches the disk before the table
 * entry that points to it; a grown table and its blocks reach the disk
 * before the header points to the table; a decreased refcount reaches the
 * disk only after the L2 update that dropped the reference (cache
 * dependency on the L2 cache).  Caller holds the metadata lock.
 *
 * Placement follows QEMU's, so that images match qemu-img's cluster for
 * cluster:
 *  1. A run of clusters is the first free run from free_cluster_index,
 *     which then moves past it (and back to a cluster freed below it).
 *     When counting the run places a refcount block, the count is taken
 *     back and the search starts again from the run's start.
 *  2. A range of clusters without a refcount block gets one at the next
 *     free cluster (so after the run being counted); outside the range it
 *     describes, that block is counted by its own range's block first.
 *  3. A block past the end of the refcount table makes a refcount area: a
 *     new table, with blocks for the ranges it starts in, placed at the
 *     first range boundary after what is in use; the old table is freed.
 *     Preallocation (falloc, full) makes one at the end of the image for
 *     the clusters it is about to add (qcow2_refcount_area). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

/* Refcount i of a block in on-disk order. */
static uint64_t rb_get(const struct qcow2_state *s, const uint8_t *b, uint64_t i)
{
    switch (s->refcount_order) {
    case 6: return be64_get(b + 8 * i);
    case 5: return be32_get(b + 4 * i);
    case 4: return be16_get(b + 2 * i);
    case 3: return b[i];
    default: {
        uint64_t bit = i << s->refcount_order;
        return (b[bit / 8] >> (bit % 8)) & ((1u << s->refcount_bits) - 1);
    }
    }
}

/* Set refcount i of a block (v fits refcount_bits). */
static void rb_set(const struct qcow2_state *s, uint8_t *b, uint64_t i, uint64_t v)
{
    switch (s->refcount_order) {
    case 6: be64_put(b + 8 * i, v); break;
    case 5: be32_put(b + 4 * i, (uint32_t)v); break;
    case 4: be16_put(b + 2 * i, (uint16_t)v); break;
    case 3: b[i] = (uint8_t)v; break;
    default: {
        uint64_t bit = i << s->refcount_order;
        uint8_t mask = (uint8_t)(((1u << s->refcount_bits) - 1) << (bit % 8));
        b[bit / 8] = (uint8_t)((b[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
        break;
    }
    }
}

/* Load the refcount table. */
int qcow2_refcount_init(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t entries = (uint64_t)s->reftable_clusters << (s->cluster_bits - 3);
    int r;

    if ((r = vd_untrusted_table_check(n, entries * 8, "qcow2 refcount table")) < 0)
        return r;
    s->reftable = vd_calloc_array(entries, 8);
    if (!s->reftable)
        return vd_error(ENOMEM, "out of memory");
    if ((r = qcow2_read_padded(n->file, s->reftable_offset, entries * 8, s->reftable)) < 0)
        return r;
    for (uint64_t i = 0; i < entries; i++)
        s->reftable[i] = be64_get((const uint8_t *)&s->reftable[i]);
    s->reftable_size = entries;
    qcow2_reftable_used_update(s);
    return 0;
}

/* Does [off, off+len) overlap the header, L1 table or refcount table? */
static bool overlaps_fixed(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    uint64_t l1_end = s->l1_offset + (uint64_t)s->l1_size * 8;
    uint64_t rt_end = s->reftable_offset + s->reftable_size * 8;

    return off < s->cluster_size ||
           (s->l1_size && off < l1_end && off + len > s->l1_offset) ||
           (off < rt_end && off + len > s->reftable_offset);
}

/* Validated offset of refcount block i (0 when unallocated). */
static int refblock_offset(vd_node *n, uint64_t i, uint64_t *off)
{
    struct qcow2_state *s = n->state;
    uint64_t e = i < s->reftable_size ? s->reftable[i] : 0;

    *off = e & ~QC_REFT_RESERVED;
    if (!*off)
        return 0;
    if (!is_aligned(e, s->cluster_size))
        return qcow2_corrupt(n, "Refblock offset %#llx unaligned (reftable index: %#llx)",
                             (unsigned long long)e, (unsigned long long)i);
    if (*off >= s->file_end || overlaps_fixed(s, *off, s->cluster_size))
        return qcow2_corrupt(n, "Refblock at %#llx (reftable index %#llx) is %s",
                             (unsigned long long)*off, (unsigned long long)i,
                             *off >= s->file_end ? "beyond the end of the file"
                                                 : "overlapping other metadata");
    return 0;
}

/* See qcow2.h. */
int qcow2_get_refcount(vd_node *n, uint64_t cluster, uint64_t *rc)
{
    struct qcow2_state *s = n->state;
    uint64_t bo;
    void *b;
    int h, r;

    *rc = 0;
    if ((r = refblock_offset(n, cluster >> s->refblock_bits, &bo)) < 0 || !bo)
        return r;
    if ((h = qc_cache_get(s->rc_cache, bo, false, &b)) < 0)
        return h;
    *rc = rb_get(s, b, cluster & ((1ull << s->refblock_bits) - 1));
    qc_cache_put(s->rc_cache, h);
    return 0;
}

/* Write 8 bytes of the refcount table at index i (in memory and disk). */
static int set_reftable_entry(vd_node *n, uint64_t i, uint64_t v)
{
    struct qcow2_state *s = n->state;
    int r;

    uint8_t b[8];

    vd_event(n->file, "refblock_alloc_hookup");
    be64_put(b, v);
    if ((r = qcow2_overlap_check(n, QC_OL_REFCOUNT_TABLE, s->reftable_offset + 8 * i, 8)) < 0 ||
        (r = vd_pwrite(n->file, s->reftable_offset + 8 * i, 8, b, 0)) < 0)
        return r;
    s->reftable[i] = v;
    if (i >= s->reftable_used)
        s->reftable_used = i + 1;
    return 0;
}

/* ---- the search for free clusters (placement rule 1) ---- */

/* The first run of count free clusters from free_cluster_index on; the
 * index moves past the run at once, before its refcounts are set. */
static int find_free_run(vd_node *n, uint64_t count, uint64_t *first)
{
    struct qcow2_state *s = n->state;
    uint64_t limit = (QC_OFFSET_MASK + 1) >> s->cluster_bits, run = 0, rc;
    int r;

    if (!count)
        return vd_error(EINVAL, "qcow2: empty cluster allocation");
    while (run < count) {
        uint64_t cl = s->free_cluster_index;
        if (cl >= limit)
            return vd_error(EFBIG, "qcow2: image file is full");
        s->free_cluster_index = cl + 1;
        if ((r = qcow2_get_refcount(n, cl, &rc)) < 0)
            return r;
        run = rc ? 0 : run + 1;
    }
    *first = s->free_cluster_index - count;
    return 0;
}

/* ---- new refcount blocks (placement rules 2 and 3) ---- */

static int update_range(vd_node *n, uint64_t first, uint64_t last, int64_t delta);

/* Write the new, empty refcount block of range i at cluster cl (counting
 * itself when it lies in range i) and flush it. */
static int write_new_refblock(vd_node *n, uint64_t i, uint64_t cl)
{
    struct qcow2_state *s = n->state;
    uint64_t off = cl << s->cluster_bits;
    void *b;
    int h, r;

    if ((r = qcow2_grow_file(n, n->file, off + s->cluster_size)) < 0)
        return r;
    if ((h = qc_cache_get(s->rc_cache, off, true, &b)) < 0)
        return h;
    if (cl >> s->refblock_bits == i)
        rb_set(s, b, cl & ((1ull << s->refblock_bits) - 1), 1);
    vd_event(n->file, "refblock_alloc_write");
    r = qcow2_overlap_check(n, QC_OL_REFCOUNT_BLOCK, off, s->cluster_size);
    if (r >= 0)
        r = vd_pwrite(n->file, off, s->cluster_size, b, 0);
    qc_cache_put(s->rc_cache, h);
    if (r >= 0 && (r = vd_flush(n->file)) >= 0)
        return 0;
    qc_cache_discard(s->rc_cache, off);     /* never named: not a refcount block */
    return r;
}

/* Give the range of cluster cl a refcount block when it has none.  Returns
 * -EAGAIN when it placed one: clusters the caller found free may not be
 * any more, its search starts again. */
static int alloc_refblock(vd_node *n, uint64_t cl)
{
    struct qcow2_state *s = n->state;
    uint64_t i = cl >> s->refblock_bits, per = 1ull << s->refblock_bits, bo, nb, end;
    int r;

    if ((r = refblock_offset(n, i, &bo)) < 0 || bo)
        return r;
    vd_event(n->file, "refblock_alloc");
    if ((r = find_free_run(n, 1, &nb)) < 0)
        return r;
    if (nb == 0)
        return qcow2_corrupt(n, "Preventing invalid allocation of refcount block at "
                             "offset 0");
    /* Rule 2: outside range i, the block is counted by its own range's. */
    if (nb >> s->refblock_bits != i &&
        ((r = update_range(n, nb, nb, 1)) < 0 || (r = qc_cache_flush(s->rc_cache)) < 0))
        return r;
    if ((r = write_new_refblock(n, i, nb)) < 0)
        return r;
    if (i < s->reftable_size)
        r = set_reftable_entry(n, i, nb << s->cluster_bits);
    else    /* rule 3 */
        r = qcow2_refcount_area(n, div_round_up(VD_MAX(cl, nb) + 1, per) * per, 0, false, i,
                                nb << s->cluster_bits, &end);
    return r < 0 ? r : -EAGAIN;
}

/* ---- refcount areas: a new table with the blocks it needs (rule 3) ---- */

/* Refcount blocks that count `clusters` clusters and themselves and their
 * table (a fixed point); generous: with room for half the table again. */
static uint64_t area_blocks(const struct qcow2_state *s, uint64_t clusters, bool generous)
{
    uint64_t per_block = 1ull << s->refblock_bits, per_table = s->cluster_size / 8;
    uint64_t t = 0, b = 0, cur = 0, last;

    do {
        last = cur;
        b = div_round_up(clusters + t + b, per_block);
        t = div_round_up(b, per_table);
        cur = clusters + b + t;
        if (cur == last && generous) {
            clusters += div_round_up(t, 2);
            cur = 0;
            generous = false;
        }
    } while (cur != last);
    return b;
}

/* Forget the cached new blocks [start, start+count) of an area that was
 * never switched to. */
static void forget_area_blocks(struct qcow2_state *s, uint64_t start, uint64_t count)
{
    for (uint64_t k = 0; k < count; k++)
        qc_cache_discard(s->rc_cache, (start + k) << s->cluster_bits);
}

/* Set refcount 1 for clusters [lo, hi) of range i, whose block is at bo
 * (fresh: a new, empty one).  They must be free. */
static int count_area_part(vd_node *n, uint64_t i, uint64_t bo, bool fresh, uint64_t lo,
                           uint64_t hi)
{
    struct qcow2_state *s = n->state;
    uint64_t per = 1ull << s->refblock_bits;
    bool used = false;
    void *b;
    int h;

    if ((h = qc_cache_get(s->rc_cache, bo, fresh, &b)) < 0)
        return h;
    for (uint64_t c = lo; c < hi && !used; c++)
        used = rb_get(s, b, c - i * per) != 0;
    for (uint64_t c = lo; c < hi && !used; c++)
        rb_set(s, b, c - i * per, 1);
    if (!used)
        qc_cache_mark_dirty(s->rc_cache, h);
    qc_cache_put(s->rc_cache, h);
    return used ? qcow2_corrupt(n, "refcount area at cluster %#llx is in use",
                                (unsigned long long)lo) : 0;
}

/* Fill the blocks of ranges [first, total) for an area of clusters
 * [start, end): existing blocks kept, missing ones placed from start on
 * (entered in t), every cluster of the area counted once; written and
 * flushed. */
static int fill_area_blocks(vd_node *n, uint64_t *t, uint64_t first, uint64_t total,
                            uint64_t start, uint64_t end)
{
    struct qcow2_state *s = n->state;
    uint64_t per = 1ull << s->refblock_bits, next = start;
    int r;

    if ((r = qcow2_grow_file(n, n->file, end << s->cluster_bits)) < 0)
        return r;
    for (uint64_t i = first; i < total; i++) {
        uint64_t bo, lo = VD_MAX(start, i * per), hi = VD_MIN(end, (i + 1) * per);
        bool fresh = !(t[i] & ~QC_REFT_RESERVED);
        if (fresh)
            t[i] = bo = next++ << s->cluster_bits;
        else if ((r = refblock_offset(n, i, &bo)) < 0)
            return r;
        if ((fresh || lo < hi) &&
            (r = count_area_part(n, i, bo, fresh, lo, VD_MAX(lo, hi))) < 0)
            return r;
    }
    vd_event(n->file, "refblock_alloc_write_blocks");
    return qc_cache_flush(s->rc_cache);
}

/* Write the new table (entries, on-disk order) at table_off and flush. */
static int write_new_reftable(vd_node *n, const uint64_t *t, uint64_t entries,
                              uint64_t table_off)
{
    uint8_t *buf = vd_calloc_array(entries, 8);
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = 0; i < entries; i++)
        be64_put(buf + 8 * i, t[i]);
    vd_event(n->file, "refblock_alloc_write_table");
    r = qcow2_overlap_check(n, 0, table_off, entries * 8);
    if (r >= 0)
        r = vd_pwrite(n->file, table_off, entries * 8, buf, 0);
    free(buf);
    return r < 0 ? r : vd_flush(n->file);
}

/* Point the header at the new table (offset and cluster count in one
 * write) and flush. */
static int switch_reftable(vd_node *n, uint64_t off, uint32_t clusters)
{
    uint8_t b[12];
    int r;

    be64_put(b, off);
    be32_put(b + 8, clusters);
    vd_event(n->file, "refblock_alloc_switch_table");
    if ((r = vd_pwrite(n->file, QH_REFTABLE_OFFSET, 12, b, 0)) < 0)
        return r;
    return vd_flush(n->file);
}

/* Entries of the table of an area: the blocks, maybe half again, whole
 * clusters, never fewer than the old table uses. */
static int area_entries(const struct qcow2_state *s, uint64_t blocks, bool exact,
                        uint64_t *entries)
{
    uint64_t per_cl = s->cluster_size / 8;

    *entries = exact ? blocks : blocks + div_round_up(blocks, 2);
    *entries = div_round_up(VD_MAX(*entries, s->reftable_used), per_cl) * per_cl;
    if (*entries > QC_MAX_REFTABLE_BYTES / 8)
        return vd_error(EFBIG, "qcow2: refcount table would grow too large");
    return 0;
}

/* The new table t is on disk: use it, free the old one. */
static int take_reftable(vd_node *n, uint64_t *t, uint64_t entries, uint64_t off)
{
    struct qcow2_state *s = n->state;
    uint64_t old_off = s->reftable_offset, old_size = s->reftable_size;

    free(s->reftable);
    s->reftable = t;
    s->reftable_size = entries;
    s->reftable_offset = off;
    s->reftable_clusters = (uint32_t)(entries * 8 / s->cluster_size);
    qcow2_reftable_used_update(s);
    return qcow2_update_refcount(n, old_off, old_size * 8, -1);
}

/* See qcow2.h. */
int qcow2_refcount_area(vd_node *n, uint64_t start, uint64_t extra, bool exact,
                        uint64_t new_i, uint64_t new_off, uint64_t *end)
{
    struct qcow2_state *s = n->state;
    uint64_t limit = (QC_OFFSET_MASK + 1) >> s->cluster_bits, first = start >> s->refblock_bits;
    uint64_t total, entries, nnew = 0, table, *t;
    int r;

    vd_event(n->file, "reftable_grow");
    if (ADD_OVERFLOW(start, extra, &total) || total >= limit)
        return vd_error(EFBIG, "qcow2: image file too large");
    total = area_blocks(s, total, !exact);
    if ((r = area_entries(s, total, exact, &entries)) < 0)
        return r;
    if (new_off && new_i >= total)
        return vd_error(EIO, "qcow2: refcount block index %#llx outside the new table",
                        (unsigned long long)new_i);
    if (!(t = vd_calloc_array(entries, 8)))
        return vd_error(ENOMEM, "out of memory");
    memcpy(t, s->reftable, s->reftable_used * 8);
    if (new_off)
        t[new_i] = new_off;
    for (uint64_t i = first; i < total; i++)
        nnew += !(t[i] & ~QC_REFT_RESERVED);
    table = start + nnew;
    *end = table + entries * 8 / s->cluster_size;
    r = *end >= limit ? vd_error(EFBIG, "qcow2: image file too large") : 0;
    if (r >= 0)
        r = fill_area_blocks(n, t, first, total, start, *end);
    if (r >= 0)
        r = write_new_reftable(n, t, entries, table << s->cluster_bits);
    if (r >= 0)
        r = switch_reftable(n, table << s->cluster_bits,
                            (uint32_t)(entries * 8 / s->cluster_size));
    if (r < 0) {
        forget_area_blocks(s, start, nnew);
        free(t);
        return r;
    }
    return take_reftable(n, t, entries, table << s->cluster_bits);
}

/* ---- refcount updates ---- */

/* Apply delta to clusters *cl.. up to last or the end of their refcount
 * block (an increase first gives the range a block: -EAGAIN when it had
 * none); *cl moves past the clusters done. */
static int update_block(vd_node *n, uint64_t *cl, uint64_t last, int64_t delta)
{
    struct qcow2_state *s = n->state;
    uint64_t per = 1ull << s->refblock_bits, c = *cl, blk_end = c | (per - 1), bo;
    int bad = 0, h, r;
    void *b;

    if (delta > 0 && (r = alloc_refblock(n, c)) < 0)
        return r;
    if ((r = refblock_offset(n, c >> s->refblock_bits, &bo)) < 0)
        return r;
    if (!bo)
        return qcow2_corrupt(n, "freeing cluster %#llx which has no refcount block",
                             (unsigned long long)c);
    if ((h = qc_cache_get(s->rc_cache, bo, false, &b)) < 0)
        return h;
    vd_event(n->file, "refblock_update");
    for (; c <= last && c <= blk_end; c++) {
        uint64_t v = rb_get(s, b, c & (per - 1)), nv = v + (uint64_t)delta;
        if ((bad = delta < 0 ? v < (uint64_t)-delta : nv < v || nv > s->refcount_max))
            break;
        rb_set(s, b, c & (per - 1), nv);
        if (nv == 0 && c < s->free_cluster_index)
            s->free_cluster_index = c;
    }
    if (c != *cl)
        qc_cache_mark_dirty(s->rc_cache, h);
    qc_cache_put(s->rc_cache, h);
    *cl = c;
    if (bad && delta < 0)
        return qcow2_corrupt(n, "refcount of cluster %#llx would drop below zero",
                             (unsigned long long)c);
    return bad ? vd_error(ERANGE, "qcow2: refcount overflow") : 0;
}

/* Apply delta to the refcounts of clusters [first, last].  An increase
 * that fails or places a refcount block (-EAGAIN) is taken back, and the
 * search for free clusters starts again at first (rule 1). */
static int update_range(vd_node *n, uint64_t first, uint64_t last, int64_t delta)
{
    struct qcow2_state *s = n->state;
    uint64_t cl = first;
    int r = 0;

    while (cl <= last && r >= 0)
        r = update_block(n, &cl, last, delta);
    if (r >= 0 || delta < 0)
        return r;
    if (r == -EAGAIN && s->free_cluster_index > first)
        s->free_cluster_index = first;
    if (cl > first)
        update_range(n, first, cl - 1, -delta);
    return r;
}

/* Tries of an allocation of count clusters: each retry covers one more
 * range of the run, which stays where it was found. */
static uint64_t alloc_tries(const struct qcow2_state *s, uint64_t count)
{
    return (count >> s->refblock_bits) + 16;
}

/* See qcow2.h. */
int qcow2_update_refcount(vd_node *n, uint64_t off, uint64_t len, int64_t delta)
{
    struct qcow2_state *s = n->state;
    uint64_t first = off >> s->cluster_bits, last, tries;
    int r;

    if (!len)
        return 0;
    /* Invariant 4; kept with lazy refcounts too, so that a freed cluster
     * is not reused while a table on disk still names it. */
    if (delta < 0 && (r = qc_cache_set_dependency(s->rc_cache, s->l2_cache)) < 0)
        return r;
    last = (off + len - 1) >> s->cluster_bits;
    tries = alloc_tries(s, last - first + 1);
    do
        r = update_range(n, first, last, delta);
    while (r == -EAGAIN && --tries);
    return r == -EAGAIN ? vd_error(EIO, "qcow2: refcount update does not converge") : r;
}

/* See qcow2.h: rule 1, then a retry whenever a refcount block was placed. */
int qcow2_alloc_clusters(vd_node *n, uint64_t count, uint64_t *off)
{
    struct qcow2_state *s = n->state;
    uint64_t cl = 0, tries = alloc_tries(s, count);
    int r;

    vd_event(n->file, "cluster_alloc");
    /* Invariant 4: a cluster freed since the L2 tables were last written
     * may still be named on disk; write them before it is reused. */
    if ((r = qc_cache_write_dependency(s->rc_cache)) < 0)
        return r;
    do {
        if ((r = find_free_run(n, count, &cl)) < 0)
            return r;
        r = update_range(n, cl, cl + count - 1, 1);
    } while (r == -EAGAIN && --tries);
    if (r < 0)
        return r == -EAGAIN ? vd_error(EIO, "qcow2: cluster allocation does not converge") : r;
    *off = cl << s->cluster_bits;
    return 0;
}

/* See qcow2.h. */
int qcow2_alloc_clusters_at(vd_node *n, uint64_t off, uint64_t count, uint64_t *got)
{
    struct qcow2_state *s = n->state;
    uint64_t cl = off >> s->cluster_bits, k, rc, tries = alloc_tries(s, count);
    int r;

    *got = 0;
    if (cl + count < cl || cl + count > ((QC_OFFSET_MASK + 1) >> s->cluster_bits))
        return vd_error(EFBIG, "qcow2: image file is full");
    if ((r = qc_cache_write_dependency(s->rc_cache)) < 0)
        return r;
    do {
        for (k = 0; k < count; k++) {
            if ((r = qcow2_get_refcount(n, cl + k, &rc)) < 0)
                return r;
            if (rc)
                break;
        }
        r = k ? update_range(n, cl, cl + k - 1, 1) : 0;
    } while (r == -EAGAIN && --tries);
    if (r < 0)
        return r == -EAGAIN ? vd_error(EIO, "qcow2: cluster allocation does not converge") : r;
    *got = k;
    return 0;
}

/* See qcow2.h: compressed data is packed after the previous one when it
 * fits in the same cluster. */
int qcow2_alloc_bytes(vd_node *n, uint64_t len, uint64_t *off)
{
    struct qcow2_state *s = n->state;
    uint64_t fb = s->free_byte_offset, rc;
    int r;

    vd_event(n->file, "cluster_alloc_bytes");
    if (fb && (qcow2_get_refcount(n, fb >> s->cluster_bits, &rc) < 0 || rc == 0 ||
               rc >= s->refcount_max))
        fb = 0;
    if (fb && qc_offset_in_cluster(s, fb) + len <= s->cluster_size) {
        if ((r = update_range(n, fb >> s->cluster_bits, fb >> s->cluster_bits, 1)) < 0)
            return r;
        *off = fb;
    } else {
        uint64_t nc;
        if ((r = qcow2_alloc_clusters(n, 1, &nc)) < 0)
            return r;
        *off = nc;
        /* A fresh cluster right after the partly used one: let the data
         * span both (the descriptor allows it), as qemu packs them. */
        if (fb && nc == fb - qc_offset_in_cluster(s, fb) + s->cluster_size) {
            if ((r = update_range(n, fb >> s->cluster_bits, fb >> s->cluster_bits, 1)) < 0)
                return r;
            *off = fb;
        }
    }
    s->free_byte_offset = *off + len;
    if (!qc_offset_in_cluster(s, s->free_byte_offset))
        s->free_byte_offset = 0;
    return 0;
}

/* See qcow2.h. */
int qcow2_free_clusters(vd_node *n, uint64_t off, uint64_t len)
{
    vd_event(n->file, "cluster_free");
    return qcow2_update_refcount(n, off, len, -1);
}

/* See qcow2.h. */
int qcow2_free_l2_entry(vd_node *n, uint64_t entry)
{
    struct qcow2_state *s = n->state;
    uint64_t off, len;

    if (entry & QC_COMPRESSED) {
        qc_compressed_range(s, entry, &off, &len);
        return qcow2_free_clusters(n, off, len);   /* [off, off+len) as referenced */
    }
    off = entry & QC_OFFSET_MASK;
    if (!off || s->data_external)
        return 0;
    return qcow2_free_clusters(n, off, s->cluster_size);
}

/* See qcow2.h. */
int qcow2_image_end(vd_node *n, uint64_t *end)
{
    struct qcow2_state *s = n->state;
    uint64_t per = 1ull << s->refblock_bits, rc;
    int r;

    *end = 0;
    for (uint64_t i = s->reftable_size; i-- > 0;) {
        uint64_t bo;
        if ((r = refblock_offset(n, i, &bo)) < 0)
            return r;
        if (!bo)
            continue;
        for (uint64_t k = per; k-- > 0;) {
            if ((r = qcow2_get_refcount(n, i * per + k, &rc)) < 0)
                return r;
            if (rc) {
                *end = (i * per + k + 1) << s->cluster_bits;
                return 0;
            }
        }
    }
    return 0;
}
