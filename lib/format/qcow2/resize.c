/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: resize, and preallocation of guest ranges (metadata: clusters
 * mapped but not written; falloc/full: the file space allocated too).
 *
 * As qemu-img 7.2 does: v3 images with internal snapshots resize (each
 * snapshot keeps its own disk size and L1 table and the snapshot table is
 * not touched; snapshot -a brings the snapshot's size back), v2 ones
 * refuse.  A shrink makes the clusters past the new end unallocated
 * (copying an L2 table shared with a snapshot first), clears the L1
 * entries past it (the L1 table keeps its size) and cuts the file.  A grow
 * grows the L1 table and zeroes the new area only where a longer backing
 * file would show through.  The header's size is written last.  Keeps the
 * write-ordering invariants of write.c: 1 and 4 through the caches (a
 * lowered refcount reaches the disk after the entry that held it), 3 in
 * qcow2_get_l2_slice and qcow2_grow_l1, 8 (overlap check) before the one
 * direct metadata write here, the cleared L1 entries. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"
#include "util/checked.h"

#define QC_PREALLOC_RUN 256u

/* Write the virtual size into the header. */
static int write_size(vd_node *n, uint64_t size)
{
    return qcow2_write_header_u64(n, QH_SIZE, size);
}

/* Map the unallocated clusters of [gc, gc+count) (one L2 slice) to new
 * host clusters; lock held. */
static int prealloc_run(vd_node *n, uint64_t gc, uint64_t count, int mode)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice, need = 0, host = 0, end;
    uint32_t idx;
    int h, r;

    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    for (uint64_t k = 0; k < count; k++)
        if (!(qc_l2_get(s, slice, idx + (uint32_t)k) & (QC_OFFSET_MASK | QC_COMPRESSED)))
            need++;
    qc_cache_put(s->l2_cache, h);
    if (!need)
        return 0;
    if (!s->data_external && (r = qcow2_alloc_clusters(n, need, &host)) < 0)
        return r;
    end = s->data_external ? (gc + count) << s->cluster_bits : host + need * s->cluster_size;
    if (mode == VD_PREALLOC_METADATA)
        r = qcow2_grow_file(n, s->data, end);
    else if ((int64_t)end > vd_getlength(s->data))
        r = vd_truncate(s->data, end, true, mode);
    if (r < 0)
        return r;
    if (!s->data_external && end > s->file_end)
        s->file_end = end;
    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    if (!s->data_external && !s->lazy &&
        (r = qc_cache_set_dependency(s->l2_cache, s->rc_cache)) < 0) {
        qc_cache_put(s->l2_cache, h);
        return r;
    }
    for (uint64_t k = 0; k < count; k++) {
        uint32_t i = idx + (uint32_t)k;
        uint64_t e = qc_l2_get(s, slice, i);
        if (e & (QC_OFFSET_MASK | QC_COMPRESSED))
            continue;
        if (s->data_external) {
            host = (gc + k) << s->cluster_bits;
            qc_l2_set(s, slice, i, host | QC_COPIED,
                      s->ext_l2 && s->data_raw ? 0xffffffffull : 0);
        } else {
            /* Subclusters stay unallocated: the backing file shows through. */
            qc_l2_set(s, slice, i, host | QC_COPIED, 0);
            host += s->cluster_size;
        }
    }
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    return 0;
}

/* See qcow2.h. */
int qcow2_preallocate(vd_node *n, uint64_t from, uint64_t to, int mode)
{
    struct qcow2_state *s = n->state;
    uint64_t per_slice = s->l2_slice_size / s->l2_entry_size;
    uint64_t gc = from >> s->cluster_bits, last = div_round_up(to, s->cluster_size);
    int r = 0;

    if (mode == VD_PREALLOC_OFF || to <= from)
        return 0;
    pthread_mutex_lock(&s->lock);
    r = qcow2_prepare_write(n);
    /* falloc/full preallocate what the file grows by: no growing ahead */
    s->exact_growth = mode != VD_PREALLOC_METADATA;
    if (s->exact_growth)
        qcow2_trim_grown_tail(n);
    while (r >= 0 && gc < last) {
        uint64_t e = VD_MIN(last, (gc / per_slice + 1) * per_slice);
        e = VD_MIN(e, gc + QC_PREALLOC_RUN);
        r = prealloc_run(n, gc, e - gc, mode);
        gc = e;
    }
    s->exact_growth = false;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- shrink ---- */

/* Is any entry of [idx, idx+count) of the slice set? */
static bool run_in_use(const struct qcow2_state *s, const uint64_t *slice, uint32_t idx,
                       uint64_t count)
{
    for (uint64_t k = 0; k < count; k++)
        if (qc_l2_get(s, slice, idx + (uint32_t)k) ||
            qc_l2_get_bitmap(s, slice, idx + (uint32_t)k))
            return true;
    return false;
}

/* Pin the slice holding guest clusters [gc, gc+count) to drop them;
 * *slice stays NULL when none of them is set.  An L2 table shared with a
 * snapshot is copied first, so the snapshot keeps its entries.  Lock held. */
static int drop_slice(vd_node *n, uint64_t gc, uint64_t count, uint64_t **slice,
                      uint32_t *idx, int *h)
{
    struct qcow2_state *s = n->state;
    bool used;
    int r;

    if ((r = qcow2_get_l2_slice(n, gc, false, slice, idx, h)) < 0 || !*slice)
        return r;
    used = run_in_use(s, *slice, *idx, count);
    if (used && (s->l1[gc >> s->l2_bits] & QC_COPIED))
        return 0;
    qc_cache_put(s->l2_cache, *h);
    *slice = NULL;
    return used ? qcow2_get_l2_slice(n, gc, true, slice, idx, h) : 0;
}

/* Make guest clusters [gc, gc+count) (one L2 slice, at most
 * QC_PREALLOC_RUN) unallocated, not zero even over a backing file, as
 * qemu's shrink does.  Lock held. */
static int drop_run(vd_node *n, uint64_t gc, uint64_t count)
{
    struct qcow2_state *s = n->state;
    uint64_t old[QC_PREALLOC_RUN], *slice;
    unsigned nold = 0;
    uint32_t idx;
    int h, r;

    if ((r = drop_slice(n, gc, count, &slice, &idx, &h)) < 0 || !slice)
        return r;
    for (uint64_t k = 0; k < count; k++) {
        uint32_t i = idx + (uint32_t)k;
        uint64_t e = qc_l2_get(s, slice, i);
        if (!e && !qc_l2_get_bitmap(s, slice, i))
            continue;
        qc_l2_set(s, slice, i, 0, 0);
        old[nold++] = e;
    }
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    return qcow2_release_entries(n, old, nold);
}

/* Drop guest clusters [first, last), skipping L1 entries without an L2
 * table.  Lock held. */
static int drop_clusters(vd_node *n, uint64_t first, uint64_t last)
{
    struct qcow2_state *s = n->state;
    uint64_t per_slice = s->l2_slice_size / s->l2_entry_size, gc = first;
    int r = 0;

    while (r >= 0 && gc < last && (gc >> s->l2_bits) < s->l1_size) {
        uint64_t e;
        if (!(s->l1[gc >> s->l2_bits] & QC_OFFSET_MASK)) {
            gc = ((gc >> s->l2_bits) + 1) << s->l2_bits;
            continue;
        }
        e = VD_MIN(last, (gc / per_slice + 1) * per_slice);
        e = VD_MIN(e, gc + QC_PREALLOC_RUN);
        r = drop_run(n, gc, e - gc);
        gc = e;
    }
    return r;
}

/* Clear the L1 entries from keep on (the table keeps its size) and free
 * the L2 tables they named; each free reaches the disk after the cleared
 * entry (the refcount cache waits for a flush).  Lock held. */
static int drop_l2_tables(vd_node *n, uint64_t keep)
{
    struct qcow2_state *s = n->state;
    int r = qcow2_flush_caches(n);

    for (uint64_t i = keep; i < s->l1_size && r >= 0; i++) {
        uint64_t l2 = s->l1[i] & QC_OFFSET_MASK;
        uint8_t zero[8] = { 0 };
        if (!l2)
            continue;
        vd_event(n->file, "l1_shrink_write_table");
        if ((r = qcow2_overlap_check(n, QC_OL_ACTIVE_L1, s->l1_offset + 8 * i, 8)) < 0 ||
            (r = vd_pwrite(n->file, s->l1_offset + 8 * i, 8, zero, 0)) < 0)
            break;
        s->l1[i] = 0;
        for (uint64_t o = 0; o < s->cluster_size; o += s->l2_slice_size)
            qc_cache_discard(s->l2_cache, l2 + o);
        vd_event(n->file, "l1_shrink_free_l2_clusters");
        r = qcow2_free_clusters(n, l2, s->cluster_size);
    }
    return r;
}

/* Cut the image file after its last used cluster; a file that stays
 * longer is fine (qemu only warns).  Lock held. */
static int cut_file(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t end;
    int r;

    if ((r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0)
        return r;
    if (qcow2_image_end(n, &end) < 0 || end >= (uint64_t)vd_getlength(n->file))
        return 0;
    if (vd_truncate(n->file, end, false, VD_PREALLOC_OFF) >= 0)
        s->file_end = end;
    return 0;
}

/* Record the new size: the data file follows (qemu truncates it with
 * preallocation off), then the header.  Lock held. */
static int set_size(vd_node *n, uint64_t size, bool exact, bool data_too)
{
    struct qcow2_state *s = n->state;
    int r;

    if (data_too && s->data_external && (r = vd_truncate(s->data, size, exact,
                                                          VD_PREALLOC_OFF)) < 0)
        return r;
    if ((r = qcow2_flush_caches(n)) < 0 || (r = write_size(n, size)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        return vd_error(r, "Failed to update the image size: %s", strerror(-r));
    s->size = size;
    return 0;
}

/* Shrink to size: drop the clusters from the first one wholly past it,
 * then the L2 tables past it, cut the file, write the size.  Guest writes
 * past size wait meanwhile. */
static int shrink(vd_node *n, uint64_t size, bool exact)
{
    struct qcow2_state *s = n->state;
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    uint64_t first = div_round_up(size, s->cluster_size);
    uint64_t last = div_round_up(s->size, s->cluster_size);
    struct qc_inflight f;
    int r;

    pthread_mutex_lock(&s->lock);
    qcow2_inflight_begin(n, &f, first, UINT64_MAX);
    if ((r = qcow2_prepare_write(n)) >= 0 && (r = drop_clusters(n, first, last)) < 0)
        r = vd_error(r, "Failed to discard cropped clusters: %s", strerror(-r));
    if (r >= 0 && (r = drop_l2_tables(n, div_round_up(size, per_l1))) < 0)
        r = vd_error(r, "Failed to reduce the number of L2 tables: %s", strerror(-r));
    if (r >= 0 && (r = cut_file(n)) >= 0)
        r = set_size(n, size, exact, true);
    qcow2_inflight_end(n, &f);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- grow ---- */

/* With a backing file longer than the old size, make [old, size) read as
 * zeroes instead of the backing data: zero (sub)clusters from the first
 * whole one, written zeroes before it (qemu's rule; v2 images have no zero
 * clusters and fail).  s->size is size already. */
static int zero_new_area(vd_node *n, uint64_t old, uint64_t size)
{
    struct qcow2_state *s = n->state;
    int64_t blen = n->backing ? vd_getlength(n->backing) : 0;
    uint64_t start, head;
    void *zero;
    int r = 0;

    if (blen < 0)
        return vd_error_prefix((int)blen, "Could not get backing file size");
    if ((uint64_t)blen <= old)
        return 0;
    if (!round_up_checked(old, s->sc_size, &start))
        return vd_error(EFBIG, "image size too large");
    if (size > start && (r = qcow2_pwrite_zeroes(n, start, size - start, 0)) < 0)
        return vd_error(r, "Failed to zero out new clusters: %s", strerror(-r));
    head = VD_MIN(start, size) - old;
    if (!head)
        return 0;
    if (!(zero = calloc(1, head)))
        return vd_error(ENOMEM, "out of memory");
    r = qcow2_pwrite(n, old, head, zero, 0);
    free(zero);
    return r < 0 ? vd_error(r, "Failed to zero out the new area: %s", strerror(-r)) : 0;
}

/* Grow the L1 table to cover size. */
static int grow_l1(vd_node *n, uint64_t size)
{
    struct qcow2_state *s = n->state;
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    int r;

    pthread_mutex_lock(&s->lock);
    if ((r = qcow2_prepare_write(n)) >= 0 && (r = qcow2_grow_l1(n, div_round_up(size, per_l1))) < 0)
        r = vd_error(r, "Failed to grow the L1 table: %s", strerror(-r));
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Grow: L1 table, preallocation (metadata at least over a raw data file,
 * whose clusters must all be mapped), zeroes over a backing file, size. */
static int grow(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct qcow2_state *s = n->state;
    uint64_t old = s->size;
    int r;

    if ((r = grow_l1(n, size)) < 0)
        return r;
    if (s->data_raw && prealloc == VD_PREALLOC_OFF)
        prealloc = VD_PREALLOC_METADATA;
    if ((r = qcow2_preallocate(n, old, size, prealloc)) < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    s->size = size;                /* for the zero writes of the new area */
    pthread_mutex_unlock(&s->lock);
    r = zero_new_area(n, old, size);
    pthread_mutex_lock(&s->lock);
    if (r < 0)
        s->size = old;
    else
        r = set_size(n, size, exact, prealloc == VD_PREALLOC_OFF);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* See qcow2.h. */
int qcow2_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct qcow2_state *s = n->state;

    if (!is_aligned(size, 512))
        return vd_error(EINVAL, "The new size must be a multiple of 512");
    /* The snapshot table's disk size is optional before v3. */
    if (s->nb_snapshots && s->version < 3)
        return vd_error(ENOTSUP, "Can't resize a v2 image which has snapshots");
    if (size < s->size) {
        if (prealloc != VD_PREALLOC_OFF)
            return vd_error(EINVAL, "Preallocation can't be used for shrinking an image");
        return shrink(n, size, exact);
    }
    return grow(n, size, exact, prealloc);
}
