/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: changing the refcount width (amend -o refcount_bits=N).
 *
 * New refcount blocks and a new refcount table are allocated with the
 * current (old-width) structures, as QEMU places them: passes over the
 * new blocks in index order allocate one cluster for each block whose
 * range holds a cluster in use, then the table, until a pass allocates
 * nothing.  Then (crash-safe ordering):
 *  1. the new blocks, filled from the current refcounts, and the new
 *     table are written and flushed; the old structures still rule (a
 *     crash leaves the new ones as leaks);
 *  2. one header write switches width, table offset and size;
 *  3. the old blocks and table are freed under the new structures (a
 *     crash before that leaves them as leaks).
 * Caller holds the metadata lock. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

/* The new structures being built. */
struct new_rc {
    uint32_t order;
    uint64_t per_block_bits;       /* log2 of refcounts per new block */
    uint64_t *table;               /* host order */
    uint64_t size;                 /* entries of table (whole clusters) */
    uint64_t table_off, table_entries;  /* allocated on disk, 0: none */
};

/* Clusters the current refcount table describes. */
static uint64_t covered_clusters(const struct qcow2_state *s)
{
    return s->reftable_size << s->refblock_bits;
}

/* The first cluster from c on that an old refcount block covers (c when
 * its block is allocated): the clusters between have refcount 0. */
static uint64_t skip_unallocated(const struct qcow2_state *s, uint64_t c)
{
    uint64_t i = c >> s->refblock_bits;

    while (i < s->reftable_size && !(s->reftable[i] & ~QC_REFT_RESERVED))
        i++;
    return i == c >> s->refblock_bits ? c : i << s->refblock_bits;
}

/* Store refcount i of a block of 2^order-bit entries. */
static void put_rc(uint8_t *b, uint32_t order, uint64_t i, uint64_t v)
{
    if (order >= 3) {
        uint32_t bytes = 1u << (order - 3);
        for (uint32_t k = 0; k < bytes; k++, v >>= 8)
            b[i * bytes + bytes - 1 - k] = (uint8_t)v;
        return;
    }
    uint64_t bit = i << order;
    uint8_t mask = (uint8_t)(((1u << (1u << order)) - 1) << (bit % 8));
    b[bit / 8] = (uint8_t)((b[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
}

/* Does any cluster of new block i's range have a nonzero refcount? */
static int block_in_use(vd_node *n, const struct new_rc *nr, uint64_t i, bool *used)
{
    struct qcow2_state *s = n->state;
    uint64_t first = i << nr->per_block_bits, end = covered_clusters(s), rc;
    uint64_t last = VD_MIN(end, first + (1ull << nr->per_block_bits));
    int r;

    *used = false;
    for (uint64_t c = skip_unallocated(s, first); c < last; c = skip_unallocated(s, c + 1)) {
        if ((r = qcow2_get_refcount(n, c, &rc)) < 0)
            return r;
        if (rc) {
            *used = true;
            return 0;
        }
    }
    return 0;
}

/* Make the new table hold index i (whole clusters of entries). */
static int table_reserve(struct qcow2_state *s, struct new_rc *nr, uint64_t i)
{
    uint64_t per = s->cluster_size / 8, size, *t;

    if (i < nr->size)
        return 0;
    size = (i / per + 1) * per;
    if (size * 8 > QC_MAX_REFTABLE_BYTES)
        return vd_error(EFBIG, "qcow2: new refcount table too large");
    if (!(t = realloc(nr->table, size * 8)))
        return vd_error(ENOMEM, "out of memory");
    memset(t + nr->size, 0, (size - nr->size) * 8);
    nr->table = t;
    nr->size = size;
    return 0;
}

/* One pass: allocate the blocks the new table lacks; *allocated. */
static int alloc_pass(vd_node *n, struct new_rc *nr, bool *allocated)
{
    struct qcow2_state *s = n->state;
    bool used;
    int r;

    *allocated = false;
    for (uint64_t i = 0; (i << nr->per_block_bits) < covered_clusters(s); i++) {
        uint64_t next = skip_unallocated(s, i << nr->per_block_bits) >> nr->per_block_bits;
        if (next > i) {             /* no old block covers these new ones */
            i = next - 1;
            continue;
        }
        if (i < nr->size && nr->table[i])
            continue;
        if ((r = block_in_use(n, nr, i, &used)) < 0)
            return r;
        if (!used)
            continue;
        if ((r = table_reserve(s, nr, i)) < 0)
            return r;
        vd_event(n->file, "amend_refblock_alloc");
        if ((r = qcow2_alloc_clusters(n, 1, &nr->table[i])) < 0)
            return r;
        *allocated = true;
    }
    return 0;
}

/* Allocate (again) the new table after a pass that allocated blocks. */
static int alloc_table(vd_node *n, struct new_rc *nr)
{
    struct qcow2_state *s = n->state;
    uint64_t clusters = nr->size * 8 / s->cluster_size;
    int r;

    if (nr->table_off && (r = qcow2_free_clusters(n, nr->table_off,
                                                  nr->table_entries * 8)) < 0)
        return r;
    nr->table_off = 0;
    vd_event(n->file, "amend_reftable_alloc");
    if ((r = qcow2_alloc_clusters(n, clusters, &nr->table_off)) < 0)
        return r;
    nr->table_entries = nr->size;
    return 0;
}

/* Refuse a width some refcount does not fit in (before any change). */
static int check_fits(vd_node *n, uint32_t order)
{
    struct qcow2_state *s = n->state;
    uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1, rc;
    int r;

    for (uint64_t c = skip_unallocated(s, 0); c < covered_clusters(s);
         c = skip_unallocated(s, c + 1)) {
        if ((r = qcow2_get_refcount(n, c, &rc)) < 0)
            return r;
        if (rc > max)
            return vd_error(EINVAL, "Cannot decrease refcount entry width to %u bits: "
                            "Cluster at offset %#" PRIx64 " has a refcount of %" PRIu64,
                            1u << order, c << s->cluster_bits, rc);
    }
    return 0;
}

/* Fill and write new block i. */
static int write_block(vd_node *n, const struct new_rc *nr, uint64_t i, uint8_t *b)
{
    struct qcow2_state *s = n->state;
    uint64_t first = i << nr->per_block_bits, end = covered_clusters(s), rc;
    uint64_t count = 1ull << nr->per_block_bits, off = nr->table[i];
    int r;

    memset(b, 0, s->cluster_size);
    for (uint64_t c = skip_unallocated(s, first); c < first + count && c < end;
         c = skip_unallocated(s, c + 1)) {
        if ((r = qcow2_get_refcount(n, c, &rc)) < 0)
            return r;
        put_rc(b, nr->order, c - first, rc);
    }
    if ((r = qcow2_overlap_check(n, 0, off, s->cluster_size)) < 0 ||
        (r = qcow2_grow_file(n, n->file, off + s->cluster_size)) < 0)
        return r;
    vd_event(n->file, "amend_refblock_write");
    return vd_pwrite(n->file, off, s->cluster_size, b, 0);
}

/* Write the new table (big endian, whole clusters). */
static int write_table(vd_node *n, const struct new_rc *nr)
{
    uint64_t bytes = nr->size * 8;
    uint8_t *b = malloc(bytes);
    int r;

    if (!b)
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = 0; i < nr->size; i++)
        be64_put(b + 8 * i, nr->table[i]);
    if ((r = qcow2_overlap_check(n, 0, nr->table_off, bytes)) >= 0 &&
        (r = qcow2_grow_file(n, n->file, nr->table_off + bytes)) >= 0) {
        vd_event(n->file, "amend_reftable_write");
        r = vd_pwrite(n->file, nr->table_off, bytes, b, 0);
    }
    free(b);
    return r;
}

/* Step 1: allocate and write everything new, flushed. */
static int build_new(vd_node *n, struct new_rc *nr)
{
    struct qcow2_state *s = n->state;
    bool allocated;
    uint8_t *b;
    int r;

    do {
        if ((r = alloc_pass(n, nr, &allocated)) < 0)
            return r;
        if (allocated && (r = alloc_table(n, nr)) < 0)
            return r;
    } while (allocated);
    if (!(b = malloc(s->cluster_size)))
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = 0; i < nr->size && r >= 0; i++)
        if (nr->table[i])
            r = write_block(n, nr, i, b);
    free(b);
    if (r >= 0)
        r = write_table(n, nr);
    if (r >= 0 && (r = qcow2_flush_caches(n)) >= 0)
        r = vd_flush(n->file);
    return r;
}

/* Give back what step 1 allocated (after a failure before the switch). */
static void undo_new(vd_node *n, const struct new_rc *nr)
{
    struct qcow2_state *s = n->state;

    for (uint64_t i = 0; i < nr->size; i++)
        if (nr->table[i])
            qcow2_free_clusters(n, nr->table[i], s->cluster_size);
    if (nr->table_off)
        qcow2_free_clusters(n, nr->table_off, nr->table_entries * 8);
}

/* Step 2: one header write; the state follows. */
static int switch_header(vd_node *n, struct new_rc *nr)
{
    struct qcow2_state *s = n->state;
    uint32_t old_order = s->refcount_order, old_clusters = s->reftable_clusters;
    uint64_t old_off = s->reftable_offset;
    int r;

    s->refcount_order = nr->order;
    s->reftable_offset = nr->table_off;
    s->reftable_clusters = (uint32_t)(nr->size * 8 / s->cluster_size);
    vd_event(n->file, "amend_refcount_header");
    if ((r = qcow2_amend_write_header(n)) < 0) {
        s->refcount_order = old_order;
        s->reftable_offset = old_off;
        s->reftable_clusters = old_clusters;
    }
    return r;
}

/* After the switch: the state uses the new structures. */
static void adopt_new(struct qcow2_state *s, struct new_rc *nr)
{
    s->refcount_bits = 1u << nr->order;
    s->refblock_bits = s->cluster_bits + 3 - nr->order;
    s->refcount_max = nr->order == 6 ? UINT64_MAX : (1ull << s->refcount_bits) - 1;
    s->reftable = nr->table;
    s->reftable_size = nr->size;
    nr->table = NULL;
    qcow2_reftable_used_update(s);
    s->free_cluster_index = 0;
}

/* Step 3: free the old blocks and table under the new structures. */
static int free_old(vd_node *n, const uint64_t *old, uint64_t old_size, uint64_t old_off,
                    uint32_t old_clusters)
{
    struct qcow2_state *s = n->state;
    int r = 0;

    vd_event(n->file, "amend_refcount_free_old");
    for (uint64_t i = 0; i < old_size && r >= 0; i++)
        if (old[i] & ~QC_REFT_RESERVED)
            r = qcow2_free_clusters(n, old[i] & ~QC_REFT_RESERVED, s->cluster_size);
    if (r >= 0)
        r = qcow2_free_clusters(n, old_off, (uint64_t)old_clusters << s->cluster_bits);
    if (r >= 0 && (r = qcow2_flush_caches(n)) >= 0)
        r = vd_flush(n->file);
    return r;
}

/* Drop the old blocks from the refcount cache (written back already). */
static void forget_old(struct qcow2_state *s, const uint64_t *old, uint64_t old_size)
{
    for (uint64_t i = 0; i < old_size; i++)
        if (old[i] & ~QC_REFT_RESERVED)
            qc_cache_discard(s->rc_cache, old[i] & ~QC_REFT_RESERVED);
}

/* See qcow2.h. */
int qcow2_change_refcount_order(vd_node *n, uint32_t order)
{
    struct qcow2_state *s = n->state;
    struct new_rc nr = { .order = order,
                         .per_block_bits = s->cluster_bits + 3 - order };
    uint64_t *old, old_size, old_off = 0;
    uint32_t old_clusters = 0;
    int r;

    if ((r = qcow2_prepare_write(n)) < 0 || (r = check_fits(n, order)) < 0)
        return r;
    if ((r = build_new(n, &nr)) >= 0) {
        old_off = s->reftable_offset;       /* the old table may have moved */
        old_clusters = s->reftable_clusters;
        r = switch_header(n, &nr);
    }
    if (r < 0) {
        undo_new(n, &nr);
        free(nr.table);
        return r;
    }
    old = s->reftable;
    old_size = s->reftable_size;
    forget_old(s, old, old_size);
    adopt_new(s, &nr);
    r = free_old(n, old, old_size, old_off, old_clusters);
    free(old);
    return r;
}
