/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: changing the backing file name and format recorded in the header
 * cluster (rebase, commit), and emptying an image (commit leaves the
 * overlay with nothing allocated).
 *
 * The header cluster is rewritten whole, laid out as QEMU lays it out: the
 * fixed header, the backing format extension, the other extensions as they
 * were, the end marker, then the backing file name.  Emptying keeps the
 * write-ordering invariants of write.c: the dirty bit reaches the disk
 * before any table is touched, the old L1 table is zeroed (the image reads
 * as empty from then on) before the new reference count structures are
 * written, and those are flushed before the header points at them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

#define QC_EXT_HEAD 8u                 /* type and length of an extension */

/* A header cluster being assembled. */
struct hdr_buf {
    uint8_t *b;
    uint64_t pos, cap;
};

/* Append an extension (data padded to 8 bytes); -ENOSPC when full. */
static int put_ext(struct hdr_buf *h, uint32_t type, const void *d, uint32_t len)
{
    uint64_t need = QC_EXT_HEAD + ((uint64_t)len + 7) / 8 * 8;

    if (need > h->cap - h->pos)
        return -ENOSPC;
    be32_put(h->b + h->pos, type);
    be32_put(h->b + h->pos + 4, len);
    if (len)
        memcpy(h->b + h->pos + QC_EXT_HEAD, d, len);
    h->pos += need;
    return 0;
}

/* Copy the extensions of the old header cluster, except the backing
 * format (written anew) and the end marker; bounds as qcow2.c parses. */
static int copy_old_exts(const struct qcow2_state *s, const uint8_t *old, struct hdr_buf *h)
{
    uint64_t off = s->header_length, end = s->cluster_size;
    int r;

    if (s->backing_offset > off)
        end = VD_MIN(end, s->backing_offset);
    while (off + QC_EXT_HEAD <= end) {
        uint32_t type = be32_get(old + off), len = be32_get(old + off + 4);
        if (type == QC_EXT_END || len > end - off - QC_EXT_HEAD)
            break;
        if (type != QC_EXT_BACKING_FMT &&
            (r = put_ext(h, type, old + off + QC_EXT_HEAD, len)) < 0)
            return r;
        off += QC_EXT_HEAD + ((uint64_t)len + 7) / 8 * 8;
    }
    return 0;
}

/* Build the new header cluster into h from the old one. */
static int build_header(const struct qcow2_state *s, const uint8_t *old,
                        struct hdr_buf *h, const char *name, const char *fmt)
{
    uint64_t nlen = name ? strlen(name) : 0;
    int r;

    memcpy(h->b, old, s->header_length);
    h->pos = s->header_length;
    if (fmt && (r = put_ext(h, QC_EXT_BACKING_FMT, fmt, (uint32_t)strlen(fmt))) < 0)
        return r;
    if ((r = copy_old_exts(s, old, h)) < 0 || (r = put_ext(h, QC_EXT_END, NULL, 0)) < 0)
        return r;
    if (nlen > h->cap - h->pos)
        return -ENOSPC;
    be64_put(h->b + 8, nlen ? h->pos : 0);
    be32_put(h->b + 16, (uint32_t)nlen);
    if (nlen)
        memcpy(h->b + h->pos, name, nlen);
    return 0;
}

/* Record the new name and format in the state and on the node. */
static int remember_backing(vd_node *n, const char *name, const char *fmt,
                            uint64_t offset)
{
    struct qcow2_state *s = n->state;
    char *f = fmt ? strdup(fmt) : NULL;

    if (fmt && !f)
        return vd_error(ENOMEM, "out of memory");
    free(s->backing_fmt);
    s->backing_fmt = f;
    s->backing_offset = name ? offset : 0;
    s->backing_len = name ? (uint32_t)strlen(name) : 0;
    return vd_node_set_backing_name(n, name, fmt);
}

/* Rewrite the header cluster with the new backing name and format; lock
 * held. */
static int rewrite_header(vd_node *n, const char *name, const char *fmt)
{
    struct qcow2_state *s = n->state;
    uint8_t *old = malloc(s->cluster_size);
    struct hdr_buf h = { calloc(1, s->cluster_size), 0, s->cluster_size };
    int r;

    if (!old || !h.b) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    if ((r = qcow2_read_padded(n->file, 0, s->cluster_size, old)) < 0)
        goto out;
    if ((r = build_header(s, old, &h, name, fmt)) < 0) {
        r = vd_error(ENOSPC, "No space left in the file header");
        goto out;
    }
    vd_event(n->file, "header_update");
    if ((r = vd_pwrite(n->file, 0, s->cluster_size, h.b, 0)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        goto out;
    r = remember_backing(n, name, fmt, be64_get(h.b + 8));
out:
    free(old);
    free(h.b);
    return r;
}

/* Change the backing file name (NULL: none) and format (may be NULL). */
int qcow2_change_backing_file(vd_node *n, const char *name, const char *fmt)
{
    struct qcow2_state *s = n->state;
    int r;

    if (name && !*name)
        name = NULL;
    if (fmt && !*fmt)
        fmt = NULL;
    if (name && strlen(name) > QC_MAX_BACKING_NAME)
        return vd_error(EINVAL, "Backing file name too long");
    if (fmt && strlen(fmt) > QC_MAX_EXT_NAME)
        return vd_error(EINVAL, "Backing file format name too long");
    if (name && s->data_raw)
        return vd_error(EINVAL, "Invalid argument");
    pthread_mutex_lock(&s->lock);
    r = rewrite_header(n, name, fmt);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- emptying ---- */

/* Set or clear the dirty bit on disk (and in the state), flushed. */
static int set_dirty(vd_node *n, bool on)
{
    struct qcow2_state *s = n->state;
    uint64_t v = on ? s->incompat | QC_INCOMPAT_DIRTY : s->incompat & ~QC_INCOMPAT_DIRTY;
    int r;

    if ((r = vd_flush(n->file)) < 0 || (r = qcow2_write_header_u64(n, QH_INCOMPAT, v)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        return r;
    s->incompat = v;
    return 0;
}

/* Make len bytes at off of the image file read as zeroes. */
static int zero_file_range(vd_node *n, uint64_t off, uint64_t len)
{
    return vd_pwrite_zeroes(n->file, off, len, 0);
}

/* Make the image file at least end bytes long. */
static int grow_to(vd_node *n, uint64_t end)
{
    int64_t cur = vd_getlength(n->file);

    if (cur < 0)
        return (int)cur;
    if ((uint64_t)cur >= end)
        return 0;
    return vd_truncate(n->file, end, true, VD_PREALLOC_OFF);
}

/* A refcount block with refcount 1 for clusters [0, count). */
static void fill_refblock(const struct qcow2_state *s, uint8_t *b, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        uint64_t bit = i << s->refcount_order;
        switch (s->refcount_order) {
        case 6: be64_put(b + 8 * i, 1); break;
        case 5: be32_put(b + 4 * i, 1); break;
        case 4: be16_put(b + 2 * i, 1); break;
        case 3: b[i] = 1; break;
        default: b[bit / 8] |= (uint8_t)(1u << (bit % 8)); break;
        }
    }
}

/* Write the new layout: reftable in cluster 1, its one refcount block in
 * cluster 2, a zeroed L1 table from cluster 3; then point the header at
 * them (invariant 3 of write.c: tables before pointers). */
static int write_empty_layout(vd_node *n, uint64_t l1c)
{
    struct qcow2_state *s = n->state;
    uint64_t cs = s->cluster_size;
    uint8_t *b = calloc(1, cs), hdr[20];
    int r;

    if (!b)
        return vd_error(ENOMEM, "out of memory");
    fill_refblock(s, b, 3 + l1c);
    /* An image with nothing allocated may end before the new L1 does. */
    r = grow_to(n, (3 + l1c) * cs);
    if (r >= 0)
        r = zero_file_range(n, 3 * cs, l1c * cs);
    if (r >= 0)
        r = vd_pwrite(n->file, 2 * cs, cs, b, 0);
    if (r >= 0) {
        memset(b, 0, cs);
        be64_put(b, 2 * cs);
        r = vd_pwrite(n->file, cs, cs, b, 0);
    }
    free(b);
    if (r < 0 || (r = vd_flush(n->file)) < 0)
        return r;
    be64_put(hdr, 3 * cs);                     /* l1_table_offset */
    be64_put(hdr + 8, cs);                     /* refcount_table_offset */
    be32_put(hdr + 16, 1);                     /* refcount_table_clusters */
    vd_event(n->file, "header_update");
    if ((r = vd_pwrite(n->file, QH_L1_OFFSET, sizeof(hdr), hdr, 0)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        return r;
    return vd_truncate(n->file, (3 + l1c) * cs, true, VD_PREALLOC_OFF);
}

/* Bring the in-memory state in line with the empty layout. */
static int reset_state(vd_node *n, uint64_t l1c)
{
    struct qcow2_state *s = n->state;
    uint64_t l2 = (uint64_t)qc_cache_capacity(s->l2_cache);
    uint64_t rc = (uint64_t)qc_cache_capacity(s->rc_cache);

    qc_cache_free(s->l2_cache);
    qc_cache_free(s->rc_cache);
    free(s->reftable);
    s->reftable = NULL;
    memset(s->l1, 0, (size_t)s->l1_size * 8);
    s->l1_offset = 3 * s->cluster_size;
    s->reftable_offset = s->cluster_size;
    s->reftable_clusters = 1;
    s->file_end = (3 + l1c) * s->cluster_size;
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    s->needs_repair = false;
    s->l2_cache = qc_cache_new(n->file, s->l2_slice_size, l2, "l2_load");
    s->rc_cache = qc_cache_new(n->file, (uint32_t)s->cluster_size, rc, "refblock_load");
    if (!s->l2_cache || !s->rc_cache)
        return vd_error(ENOMEM, "out of memory");
    qc_cache_set_write_event(s->l2_cache, "l2_update");
    qc_cache_set_write_event(s->rc_cache, "refblock_update_part");
    return qcow2_refcount_init(n);
}

/* Can the image be rebuilt as header + reftable + refblock + L1 only?
 * (v3 for the dirty bit; nothing else may own clusters.) */
static bool can_rebuild(const struct qcow2_state *s, uint64_t l1c)
{
    return s->version >= 3 && s->nb_snapshots == 0 && !s->has_bitmaps_ext &&
           !s->has_crypto_ext && !s->data_external &&
           3 + l1c <= (1ull << s->refblock_bits);
}

/* Empty by rebuilding the metadata from scratch; lock held. */
static int rebuild_empty(vd_node *n, uint64_t l1c)
{
    struct qcow2_state *s = n->state;
    bool keep_dirty;
    int r;

    /* A dirty image's refcounts are rebuilt here anyway. */
    if (!s->needs_repair && (r = qcow2_prepare_write(n)) < 0)
        return r;
    keep_dirty = s->lazy && s->write_prepared;
    if ((r = qcow2_flush_caches(n)) < 0 || (r = set_dirty(n, true)) < 0)
        return r;
    /* From here the image reads as empty; the rest is reference counts. */
    if ((r = zero_file_range(n, s->l1_offset, (uint64_t)s->l1_size * 8)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        return r;
    if ((r = write_empty_layout(n, l1c)) < 0 || (r = reset_state(n, l1c)) < 0)
        return r;
    return keep_dirty ? vd_flush(n->file) : set_dirty(n, false);
}

/* Drop every entry of one L2 slice, then the references they held. */
static int empty_slice(vd_node *n, uint64_t gc, uint64_t *to_free)
{
    struct qcow2_state *s = n->state;
    uint32_t per = s->l2_slice_size / s->l2_entry_size, idx, nfree = 0;
    uint64_t *slice;
    int h, r;

    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    for (uint32_t i = idx; i < per; i++) {
        uint64_t e = qc_l2_get(s, slice, i), b = qc_l2_get_bitmap(s, slice, i);
        if (!e && !b)
            continue;
        qc_l2_set(s, slice, i, 0, 0);
        if (e & (QC_OFFSET_MASK | QC_COMPRESSED))
            to_free[nfree++] = e;
    }
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    for (uint32_t k = 0; k < nfree; k++)        /* invariant 4: after the L2 update */
        if ((r = qcow2_free_l2_entry(n, to_free[k])) < 0)
            return r;
    return 0;
}

/* Empty by dropping every L2 entry (shared L2 tables are copied first, so
 * snapshots keep theirs); lock held. */
static int discard_all(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t per = s->l2_slice_size / s->l2_entry_size;
    uint64_t *to_free = vd_calloc_array(per, sizeof(uint64_t));
    int r = 0;

    if (!to_free)
        return vd_error(ENOMEM, "out of memory");
    if ((r = qcow2_prepare_write(n)) < 0)
        goto out;
    for (uint64_t i = 0; i < s->l1_size && r >= 0; i++) {
        if (!(s->l1[i] & QC_OFFSET_MASK))
            continue;
        for (uint64_t k = 0; k < qc_l2_entries(s) && r >= 0; k += per)
            r = empty_slice(n, (i << s->l2_bits) + k, to_free);
    }
    if (r >= 0)
        r = qcow2_flush_caches(n);
out:
    free(to_free);
    return r;
}

/* Make every cluster of the image unallocated. */
int qcow2_make_empty(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t l1c = div_round_up((uint64_t)s->l1_size * 8, s->cluster_size);
    struct qc_inflight f;
    int r;

    pthread_mutex_lock(&s->lock);
    qcow2_inflight_begin(n, &f, 0, UINT64_MAX);
    if (s->corrupt)
        r = vd_error(EACCES, "qcow2: Image is corrupt; cannot be written");
    else if (s->bad_layout[0])
        r = vd_error(EIO, "qcow2: %s", s->bad_layout);
    else if (can_rebuild(s, l1c))
        r = rebuild_empty(n, l1c);
    else
        r = discard_all(n);
    qcow2_inflight_end(n, &f);
    pthread_mutex_unlock(&s->lock);
    return r;
}
