/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: reference counts of host clusters and their allocation.  The
 * refcount table lives in memory (host order) and on disk; refcount blocks
 * go through the refcount cache.  Ordering kept here (see io.c for the
 * whole list): a new refcount block reaches the disk before the table
 * entry that points to it; a grown table and its blocks reach the disk
 * before the header points to the table; a decreased refcount reaches the
 * disk only after the L2 update that dropped the reference (cache
 * dependency on the L2 cache).  Caller holds the metadata lock. */
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

/* Put a new refcount block for the (all free) range i at the first cluster
 * of that range: it describes itself. */
static int alloc_refblock_in_place(vd_node *n, uint64_t i)
{
    struct qcow2_state *s = n->state;
    uint64_t cl = i << s->refblock_bits, off, end;
    void *b;
    int h, r;

    if (i == 0 || MUL_OVERFLOW(cl, s->cluster_size, &off) || (off & ~QC_OFFSET_MASK))
        return qcow2_corrupt(n, "no refcount block for reftable index %#llx",
                             (unsigned long long)i);
    vd_event(n->file, "refblock_alloc");
    end = off + s->cluster_size;
    if ((r = qcow2_grow_file(n, n->file, end)) < 0)
        return r;
    if ((h = qc_cache_get(s->rc_cache, off, true, &b)) < 0)
        return h;
    rb_set(s, b, 0, 1);
    vd_event(n->file, "refblock_alloc_write");
    r = qcow2_overlap_check(n, QC_OL_REFCOUNT_BLOCK, off, s->cluster_size);
    if (r >= 0)
        r = vd_pwrite(n->file, off, s->cluster_size, b, 0);
    qc_cache_put(s->rc_cache, h);
    if (r < 0 || (r = vd_flush(n->file)) < 0)
        return r;
    return set_reftable_entry(n, i, off);
}

/* Sizes for a grown refcount table placed, with the refcount blocks for
 * itself, at cluster a0 (range first_new): *nb blocks, *nt table clusters,
 * *entries table entries. */
static int plan_reftable(struct qcow2_state *s, uint64_t a0, uint64_t first_new,
                         uint64_t *nb, uint64_t *nt, uint64_t *entries)
{
    uint64_t b = 1, t = 1, per_cl = s->cluster_size / 8;

    for (int iter = 0; iter < 64; iter++) {
        uint64_t last = (a0 + b + t - 1) >> s->refblock_bits;
        uint64_t want = VD_MAX(last + 1, s->reftable_size + s->reftable_size / 2);
        uint64_t nb2 = last - first_new + 1, nt2 = div_round_up(want, per_cl);
        if (nb2 == b && nt2 == t) {
            *nb = b;
            *nt = t;
            *entries = t * per_cl;
            if (t * s->cluster_size > QC_MAX_REFTABLE_BYTES)
                return vd_error(EFBIG, "qcow2: refcount table would grow too large");
            return 0;
        }
        b = nb2;
        t = nt2;
    }
    return vd_error(EIO, "qcow2: cannot plan refcount table growth");
}

/* Write the new refcount blocks at a0.. (covering the new area). */
static int write_new_refblocks(vd_node *n, uint64_t a0, uint64_t first_new, uint64_t nb,
                               uint64_t nt)
{
    struct qcow2_state *s = n->state;
    uint8_t *b = calloc(1, s->cluster_size);
    uint64_t per = 1ull << s->refblock_bits;
    int r = 0;

    if (!b)
        return vd_error(ENOMEM, "out of memory");
    vd_event(n->file, "refblock_alloc_write_blocks");
    for (uint64_t k = 0; k < nb && r >= 0; k++) {
        uint64_t base = (first_new + k) * per;
        memset(b, 0, s->cluster_size);
        for (uint64_t c = a0; c < a0 + nb + nt; c++)
            if (c >= base && c < base + per)
                rb_set(s, b, c - base, 1);
        qc_cache_discard(s->rc_cache, (a0 + k) << s->cluster_bits);
        r = qcow2_overlap_check(n, QC_OL_REFCOUNT_BLOCK, (a0 + k) << s->cluster_bits,
                                s->cluster_size);
        if (r >= 0)
            r = vd_pwrite(n->file, (a0 + k) << s->cluster_bits, s->cluster_size, b, 0);
    }
    free(b);
    return r;
}

/* Write the new table (old entries plus the new blocks) at table_off. */
static int write_new_reftable(vd_node *n, uint64_t *t, uint64_t entries, uint64_t table_off)
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
    return r;
}

/* Point the header at the new table: offset and cluster count in one write. */
static int switch_reftable(vd_node *n, uint64_t off, uint32_t clusters)
{
    uint8_t b[12];

    be64_put(b, off);
    be32_put(b + 8, clusters);
    vd_event(n->file, "refblock_alloc_switch_table");
    return vd_pwrite(n->file, QH_REFTABLE_OFFSET, 12, b, 0);
}

/* Grow the refcount table so that index need exists.  The new table and
 * the blocks describing it go to a fresh area (all free: beyond what the
 * old table covers). */
static int grow_reftable(vd_node *n, uint64_t need)
{
    struct qcow2_state *s = n->state;
    uint64_t first_new = VD_MAX(need, s->reftable_size);
    uint64_t a0 = first_new << s->refblock_bits, nb = 0, nt = 0, entries = 0, *t;
    uint64_t old_off = s->reftable_offset, old_size = s->reftable_size;
    int r;

    vd_event(n->file, "reftable_grow");
    if ((r = plan_reftable(s, a0, first_new, &nb, &nt, &entries)) < 0)
        return r;
    if (((a0 + nb + nt) << s->cluster_bits) & ~QC_OFFSET_MASK)
        return vd_error(EFBIG, "qcow2: image file too large");
    if ((r = qc_cache_flush(s->rc_cache)) < 0 ||
        (r = qcow2_grow_file(n, n->file, (a0 + nb + nt) << s->cluster_bits)) < 0 ||
        (r = write_new_refblocks(n, a0, first_new, nb, nt)) < 0)
        return r;
    if (!(t = vd_calloc_array(entries, 8)))
        return vd_error(ENOMEM, "out of memory");
    memcpy(t, s->reftable, old_size * 8);
    for (uint64_t k = 0; k < nb; k++)
        t[first_new + k] = (a0 + k) << s->cluster_bits;
    r = write_new_reftable(n, t, entries, (a0 + nb) << s->cluster_bits);
    if (r >= 0)
        r = vd_flush(n->file);
    if (r >= 0)
        r = switch_reftable(n, (a0 + nb) << s->cluster_bits, (uint32_t)nt);
    if (r >= 0)
        r = vd_flush(n->file);
    if (r < 0) {
        free(t);
        return r;
    }
    free(s->reftable);
    s->reftable = t;
    s->reftable_size = entries;
    s->reftable_offset = (a0 + nb) << s->cluster_bits;
    s->reftable_clusters = (uint32_t)nt;
    qcow2_reftable_used_update(s);
    return qcow2_update_refcount(n, old_off, old_size * 8, -1);
}

/* Make sure a refcount block covers cluster cl. */
static int ensure_refblock(vd_node *n, uint64_t cl)
{
    struct qcow2_state *s = n->state;
    uint64_t i = cl >> s->refblock_bits, off;
    int r;

    if (i >= s->reftable_size)
        return grow_reftable(n, i);
    if ((r = refblock_offset(n, i, &off)) < 0 || off)
        return r;
    return alloc_refblock_in_place(n, i);
}

/* Apply delta to the refcounts of clusters [first, last]. */
static int update_range(vd_node *n, uint64_t first, uint64_t last, int64_t delta)
{
    struct qcow2_state *s = n->state;
    uint64_t per = 1ull << s->refblock_bits;

    for (uint64_t cl = first; cl <= last;) {
        uint64_t bo, blk_end = (cl | (per - 1));
        void *b;
        int h, r;
        if (delta > 0 && (r = ensure_refblock(n, cl)) < 0)
            return r;
        if ((r = refblock_offset(n, cl >> s->refblock_bits, &bo)) < 0)
            return r;
        if (!bo)
            return qcow2_corrupt(n, "freeing cluster %#llx which has no refcount block",
                                 (unsigned long long)cl);
        if ((h = qc_cache_get(s->rc_cache, bo, false, &b)) < 0)
            return h;
        vd_event(n->file, "refblock_update");
        for (; cl <= last && cl <= blk_end; cl++) {
            uint64_t v = rb_get(s, b, cl & (per - 1)), nv = v + (uint64_t)delta;
            if ((delta < 0 && v < (uint64_t)-delta) ||
                (delta > 0 && (nv < v || nv > s->refcount_max))) {
                qc_cache_put(s->rc_cache, h);
                return delta < 0 ? qcow2_corrupt(n, "refcount of cluster %#llx would drop "
                                                 "below zero", (unsigned long long)cl)
                                 : vd_error(ERANGE, "qcow2: refcount overflow");
            }
            rb_set(s, b, cl & (per - 1), nv);
            if (nv == 0 && cl < s->free_cluster_index)
                s->free_cluster_index = cl;
        }
        qc_cache_mark_dirty(s->rc_cache, h);
        qc_cache_put(s->rc_cache, h);
    }
    return 0;
}

/* See qcow2.h. */
int qcow2_update_refcount(vd_node *n, uint64_t off, uint64_t len, int64_t delta)
{
    struct qcow2_state *s = n->state;
    int r;

    if (!len)
        return 0;
    /* Invariant 4; kept with lazy refcounts too, so that a freed cluster
     * is not reused while a table on disk still names it. */
    if (delta < 0 && (r = qc_cache_set_dependency(s->rc_cache, s->l2_cache)) < 0)
        return r;
    return update_range(n, off >> s->cluster_bits, (off + len - 1) >> s->cluster_bits, delta);
}

/* First run of count free clusters at or after *start; *first_free is
 * the first free cluster seen (a shorter run may come before the one
 * found). */
static int find_free(vd_node *n, uint64_t count, uint64_t *start, uint64_t *first_free)
{
    struct qcow2_state *s = n->state;
    uint64_t cl = *start, run = 0, rc;
    int r;

    *first_free = UINT64_MAX;
    while (run < count) {
        if (((cl + 1) << s->cluster_bits) > QC_OFFSET_MASK + 1)
            return vd_error(EFBIG, "qcow2: image file is full");
        if ((r = qcow2_get_refcount(n, cl + run, &rc)) < 0)
            return r;
        if (rc) {
            cl += run + 1;
            run = 0;
        } else {
            *first_free = VD_MIN(*first_free, cl + run);
            run++;
        }
    }
    *start = cl;
    return 0;
}

/* See qcow2.h. */
int qcow2_alloc_clusters(vd_node *n, uint64_t count, uint64_t *off)
{
    struct qcow2_state *s = n->state;
    uint64_t cl;
    int r;

    vd_event(n->file, "cluster_alloc");
    /* Invariant 4: a cluster freed since the L2 tables were last written
     * may still be named on disk; write them before it is reused. */
    if ((r = qc_cache_write_dependency(s->rc_cache)) < 0)
        return r;
    for (int tries = 0; tries < 4096; tries++) {
        uint64_t before = s->reftable_size, first, last, first_free;
        uint64_t index = s->free_cluster_index;
        cl = VD_MAX(index, 1);
        if ((r = find_free(n, count, &cl, &first_free)) < 0)
            return r;
        /* Blocks for the run may land inside it: look again if any appear. */
        first = cl >> s->refblock_bits;
        last = (cl + count - 1) >> s->refblock_bits;
        bool changed = false;
        for (uint64_t i = first; i <= last; i++) {
            uint64_t bo = 0;
            if ((r = refblock_offset(n, i, &bo)) < 0)
                return r;
            if (!bo) {
                if ((r = ensure_refblock(n, i << s->refblock_bits)) < 0)
                    return r;
                changed = true;
            }
        }
        if (changed || s->reftable_size != before)
            continue;
        if ((r = update_range(n, cl, cl + count - 1, 1)) < 0)
            return r;
        /* Nothing below first_free is free: the scan saw it all used
         * (keeps later scans from walking the used part again). */
        if (s->free_cluster_index == index)
            s->free_cluster_index = first_free == cl ? cl + count : first_free;
        *off = cl << s->cluster_bits;
        return 0;
    }
    return vd_error(EIO, "qcow2: cluster allocation does not converge");
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
