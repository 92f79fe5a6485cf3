/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: resize (grow with L1 growth and preallocation; shrink by dropping
 * the clusters past the new end) and preallocation of guest ranges
 * (metadata: clusters mapped but not written; falloc/full: the file space
 * allocated too).  Keeps the write-ordering invariants of write.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

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
    while (r >= 0 && gc < last) {
        uint64_t e = VD_MIN(last, (gc / per_slice + 1) * per_slice);
        e = VD_MIN(e, gc + QC_PREALLOC_RUN);
        r = prealloc_run(n, gc, e - gc, mode);
        gc = e;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Drop clusters from new_size on, L2 tables no longer needed and the
 * file tail; lock not held. */
static int shrink(vd_node *n, uint64_t size)
{
    struct qcow2_state *s = n->state;
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    uint64_t from = div_round_up(size, s->cluster_size) * s->cluster_size, keep, end;
    int r = 0;

    if (from < s->size && (r = qcow2_discard(n, from, s->size - from)) < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    if ((r = qcow2_flush_caches(n)) < 0)
        goto out;
    keep = div_round_up(size, per_l1);
    for (uint64_t i = keep; i < s->l1_size && r >= 0; i++) {
        uint64_t l2 = s->l1[i] & QC_OFFSET_MASK;
        uint8_t zero[8] = { 0 };
        if (!l2)
            continue;
        vd_event(n->file, "l1_shrink_write_table");
        if ((r = vd_pwrite(n->file, s->l1_offset + 8 * i, 8, zero, 0)) < 0)
            break;
        s->l1[i] = 0;
        for (uint64_t o = 0; o < s->cluster_size; o += s->l2_slice_size)
            qc_cache_discard(s->l2_cache, l2 + o);
        vd_event(n->file, "l1_shrink_free_l2_clusters");
        r = qcow2_free_clusters(n, l2, s->cluster_size);
    }
    if (r >= 0 && (r = write_size(n, size)) >= 0 && (r = qcow2_flush_caches(n)) >= 0 &&
        (r = vd_flush(n->file)) >= 0 && (r = qcow2_image_end(n, &end)) >= 0 &&
        end < (uint64_t)vd_getlength(n->file)) {
        r = vd_truncate(n->file, end, false, VD_PREALLOC_OFF);
        if (r >= 0)
            s->file_end = end;
        r = 0;                     /* a file that stays longer is fine */
    }
out:
    if (r >= 0)
        s->size = size;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Zero the part of the old last cluster past the old end. */
static int zero_old_tail(vd_node *n, uint64_t old, uint64_t size)
{
    struct qcow2_state *s = n->state;
    uint64_t end = VD_MIN(size, div_round_up(old, s->cluster_size) * s->cluster_size);
    struct qc_map m;
    int r;

    if (end <= old)
        return 0;
    pthread_mutex_lock(&s->lock);
    r = qcow2_get_mapping(n, old, end - old, &m);
    pthread_mutex_unlock(&s->lock);
    if (r < 0 || m.type == QC_UNALLOC || m.type == QC_ZERO)
        return r;
    return qcow2_pwrite_zeroes(n, old, end - old, 0) == -ENOTSUP
           ? vd_error(EIO, "qcow2: cannot zero the old image tail") : 0;
}

/* Grow: L1 table, size field, tail zeroing and preallocation. */
static int grow(vd_node *n, uint64_t size, int prealloc)
{
    struct qcow2_state *s = n->state;
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits), old = s->size;
    int r;

    pthread_mutex_lock(&s->lock);
    r = qcow2_prepare_write(n);
    if (r >= 0)
        r = qcow2_grow_l1(n, div_round_up(size, per_l1));
    if (r >= 0 && (r = write_size(n, size)) >= 0)
        s->size = size;
    pthread_mutex_unlock(&s->lock);
    if (r >= 0)
        r = zero_old_tail(n, old, size);
    if (r >= 0 && s->data_external && prealloc == VD_PREALLOC_OFF && s->data_raw)
        r = vd_truncate(s->data, size, false, VD_PREALLOC_OFF);
    if (r >= 0 && prealloc != VD_PREALLOC_OFF)
        r = qcow2_preallocate(n, old, size, prealloc);
    return r;
}

/* See qcow2.h. */
int qcow2_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct qcow2_state *s = n->state;

    if (s->nb_snapshots)
        return vd_error(ENOTSUP, "Can't resize an image which has snapshots");
    if (size == s->size)
        return 0;
    if (size < s->size) {
        if (prealloc != VD_PREALLOC_OFF)
            return vd_error(ENOTSUP, "Preallocation can't be used for shrinking an image");
        return shrink(n, size);
    }
    return grow(n, size, prealloc);
}
