/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: the guest-to-host mapping.  The L1 table is in memory (host
 * order); L2 tables are read in slices through the L2 cache.  Every entry
 * is validated when used (alignment, reserved combinations, tables inside
 * the file and clear of the header, L1 and refcount table).  Allocation of
 * L2 tables and growth of the L1 table keep the order: refcounts, then
 * the new table's contents, then the pointer to it (L1 entry or header).
 * Caller holds the metadata lock. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

/* ---- L2 entry access (slices are big endian, as on disk) ---- */

uint64_t qc_l2_get(const struct qcow2_state *s, const uint64_t *slice, uint32_t i)
{
    return be64_get((const uint8_t *)(slice + (s->ext_l2 ? 2 * i : i)));
}

uint64_t qc_l2_get_bitmap(const struct qcow2_state *s, const uint64_t *slice, uint32_t i)
{
    return s->ext_l2 ? be64_get((const uint8_t *)(slice + 2 * i + 1)) : 0;
}

void qc_l2_set(struct qcow2_state *s, uint64_t *slice, uint32_t i, uint64_t entry,
               uint64_t bitmap)
{
    be64_put((uint8_t *)(slice + (s->ext_l2 ? 2 * i : i)), entry);
    if (s->ext_l2)
        be64_put((uint8_t *)(slice + 2 * i + 1), bitmap);
}

/* See qcow2.h: start offset and byte length of compressed data. */
void qc_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *off,
                         uint64_t *len)
{
    uint64_t nsec = ((entry >> s->csize_shift) & s->csize_mask) + 1;

    *off = entry & s->x_mask & ((1ull << 56) - 1);
    *len = nsec * 512 - (*off & 511);
}

/* ---- L1 ---- */

/* Write L1 entry i to disk. */
static int write_l1_entry(vd_node *n, uint64_t i)
{
    struct qcow2_state *s = n->state;
    uint8_t b[8];

    be64_put(b, s->l1[i]);
    vd_event(n->file, "l1_update");
    int r = qcow2_overlap_check(n, QC_OL_ACTIVE_L1, s->l1_offset + 8 * i, 8);
    return r < 0 ? r : vd_pwrite(n->file, s->l1_offset + 8 * i, 8, b, 0);
}

/* Switch the header to a new L1 table: size and offset in one write. */
static int activate_l1(vd_node *n, uint64_t off, uint32_t size)
{
    uint8_t b[12];

    be32_put(b, size);
    be64_put(b + 4, off);
    vd_event(n->file, "l1_grow_activate_table");
    return vd_pwrite(n->file, QH_L1_SIZE, 12, b, 0);
}

/* Write a new L1 table (bytes, on-disk order) at new_off and flush it. */
static int write_new_l1(vd_node *n, uint64_t new_off, const uint8_t *buf, uint64_t bytes)
{
    struct qcow2_state *s = n->state;
    int r;

    if ((r = qcow2_grow_file(n, n->file, new_off + bytes)) < 0 ||
        (r = qc_cache_flush(s->rc_cache)) < 0 ||
        (r = qcow2_overlap_check(n, 0, new_off, bytes)) < 0)
        return r;
    vd_event(n->file, "l1_grow_write_table");
    if ((r = vd_pwrite(n->file, new_off, bytes, buf, 0)) < 0)
        return r;
    return vd_flush(n->file);
}

/* See qcow2.h. */
int qcow2_grow_l1(vd_node *n, uint64_t min_size)
{
    struct qcow2_state *s = n->state;
    uint64_t bytes, new_off, *t, old_off = s->l1_offset, old_bytes;
    uint8_t *buf;
    int r;

    if (min_size <= s->l1_size)
        return 0;
    if (min_size > QC_MAX_L1_BYTES / 8)
        return vd_error(EFBIG, "L1 table size %llu exceeds the limit",
                        (unsigned long long)min_size);
    if (!round_up_checked(min_size * 8, s->cluster_size, &bytes) ||
        !(buf = calloc(1, bytes)))
        return vd_error(ENOMEM, "out of memory");
    if (!(t = vd_calloc_array(min_size, 8))) {
        free(buf);
        return vd_error(ENOMEM, "out of memory");
    }
    memcpy(t, s->l1, (size_t)s->l1_size * 8);
    for (uint64_t i = 0; i < min_size; i++)
        be64_put(buf + 8 * i, t[i]);
    vd_event(n->file, "l1_grow_alloc_table");
    if ((r = qcow2_alloc_clusters(n, bytes / s->cluster_size, &new_off)) < 0) {
        free(buf);
        free(t);
        return r;
    }
    /* Only the entries are written, as QEMU does (the file may end there). */
    r = write_new_l1(n, new_off, buf, min_size * 8);
    if (r >= 0 && (r = activate_l1(n, new_off, (uint32_t)min_size)) >= 0)
        r = vd_flush(n->file);
    else if (r < 0)
        qcow2_update_refcount(n, new_off, bytes, -1);    /* never named: give back */
    free(buf);
    if (r < 0) {
        free(t);
        return r;
    }
    old_bytes = (uint64_t)s->l1_size * 8;
    free(s->l1);
    s->l1 = t;
    s->l1_size = (uint32_t)min_size;
    s->l1_offset = new_off;
    if (old_bytes && old_off)
        return qcow2_free_clusters(n, old_off, old_bytes);
    return 0;
}

/* Validated L2 table offset of L1 entry i (0: unallocated). */
static int l2_offset(vd_node *n, uint64_t i, uint64_t *off)
{
    struct qcow2_state *s = n->state;
    uint64_t e = i < s->l1_size ? s->l1[i] : 0;
    uint64_t l1_end = s->l1_offset + (uint64_t)s->l1_size * 8;
    uint64_t rt_end = s->reftable_offset + s->reftable_size * 8;

    *off = e & QC_OFFSET_MASK;
    if (!*off)
        return 0;
    if (!is_aligned(*off, s->cluster_size))
        return qcow2_corrupt(n, "L2 table offset %#llx unaligned (L1 index: %#llx)",
                             (unsigned long long)*off, (unsigned long long)i);
    if (*off + s->cluster_size > s->file_end)
        return qcow2_corrupt(n, "L2 table at %#llx (L1 index %#llx) beyond end of file",
                             (unsigned long long)*off, (unsigned long long)i);
    if (*off < s->cluster_size || (*off < l1_end && *off + s->cluster_size > s->l1_offset) ||
        (*off < rt_end && *off + s->cluster_size > s->reftable_offset))
        return qcow2_corrupt(n, "L2 table at %#llx (L1 index %#llx) overlaps the header, "
                             "L1 table or refcount table",
                             (unsigned long long)*off, (unsigned long long)i);
    return 0;
}

/* Allocate an L2 table for L1 entry i (copying a shared one). */
static int alloc_l2(vd_node *n, uint64_t i)
{
    struct qcow2_state *s = n->state;
    uint64_t old, new_off, prev;
    uint8_t *buf;
    int r;

    if ((r = l2_offset(n, i, &old)) < 0)
        return r;
    if (!(buf = calloc(1, s->cluster_size)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = qcow2_alloc_clusters(n, 1, &new_off)) < 0)
        goto out;
    if (old) {
        vd_event(n->file, "l2_alloc_cow_read");
        if ((r = qc_cache_flush(s->l2_cache)) < 0 ||
            (r = qcow2_read_padded(n->file, old, s->cluster_size, buf)) < 0)
            goto unwind;
    }
    for (uint64_t o = 0; o < s->cluster_size; o += s->l2_slice_size)
        qc_cache_discard(s->l2_cache, new_off + o);
    if ((r = qcow2_grow_file(n, n->file, new_off + s->cluster_size)) < 0)
        goto unwind;
    /* Refcounts first (invariant 1), and with them the L2 updates that
     * dropped references (invariant 4): new_off may be a cluster freed
     * just now, which no table on disk may still name when it is
     * overwritten.  Lazy refcounts too. */
    if ((r = qc_cache_flush(s->rc_cache)) < 0)
        goto unwind;
    vd_event(n->file, "l2_alloc_write");
    if ((r = qcow2_overlap_check(n, 0, new_off, s->cluster_size)) < 0 ||
        (r = vd_pwrite(n->file, new_off, s->cluster_size, buf, 0)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        goto unwind;
    prev = s->l1[i];
    s->l1[i] = new_off | QC_COPIED;
    if ((r = write_l1_entry(n, i)) < 0) {
        s->l1[i] = prev;           /* the entry on disk is unknown: leak, not free */
        goto out;
    }
    if (old)
        r = qcow2_free_clusters(n, old, s->cluster_size);
    goto out;
unwind:
    qcow2_update_refcount(n, new_off, s->cluster_size, -1);    /* never named */
out:
    free(buf);
    return r;
}

/* See qcow2.h. */
int qcow2_get_l2_slice(vd_node *n, uint64_t gc, bool alloc, uint64_t **slice,
                       uint32_t *idx, int *h)
{
    struct qcow2_state *s = n->state;
    uint64_t l1i = gc >> s->l2_bits, l2i = gc & (qc_l2_entries(s) - 1), off;
    uint64_t per_slice = s->l2_slice_size / s->l2_entry_size;
    void *t;
    int r;

    *slice = NULL;
    *h = -1;
    if (s->bad_layout[0])
        return vd_error(EIO, "qcow2: %s", s->bad_layout);
    if (l1i >= s->l1_size) {
        if (!alloc)
            return 0;
        if ((r = qcow2_grow_l1(n, l1i + 1)) < 0)
            return r;
    }
    if ((r = l2_offset(n, l1i, &off)) < 0)
        return r;
    if (alloc && (!off || !(s->l1[l1i] & QC_COPIED))) {
        if ((r = alloc_l2(n, l1i)) < 0)
            return r;
        off = s->l1[l1i] & QC_OFFSET_MASK;
    }
    if (!off)
        return 0;
    off += (l2i / per_slice) * s->l2_slice_size;
    if ((r = qc_cache_get(s->l2_cache, off, false, &t)) < 0)
        return r;
    *slice = t;
    *idx = (uint32_t)(l2i % per_slice);
    *h = r;
    return 0;
}

/* ---- classification ---- */

/* Type and host cluster offset of subcluster sc of an L2 entry. */
static int classify(vd_node *n, uint64_t entry, uint64_t bitmap, uint32_t sc,
                    uint64_t gc, enum qc_type *t, uint64_t *host)
{
    struct qcow2_state *s = n->state;
    uint64_t off = entry & QC_OFFSET_MASK;
    bool has_host = off || (s->data_external && (entry & QC_COPIED));

    *host = off;
    if (entry & QC_COMPRESSED) {
        if (s->data_external || bitmap)
            return qcow2_corrupt(n, "Invalid compressed cluster entry %#llx (guest "
                                 "cluster %#llx)", (unsigned long long)entry,
                                 (unsigned long long)gc);
        *t = QC_COMPRESSED_T;
        return 0;
    }
    if (has_host && !is_aligned(off, s->cluster_size))
        return qcow2_corrupt(n, "Cluster allocation offset %#llx unaligned (guest "
                             "cluster %#llx)", (unsigned long long)off,
                             (unsigned long long)gc);
    if (s->ext_l2) {
        bool a = bitmap & (1ull << sc), z = bitmap & (1ull << (32 + sc));
        if ((a && z) || (a && !has_host))
            return qcow2_corrupt(n, "Invalid subcluster bitmap %#llx (guest cluster "
                                 "%#llx)", (unsigned long long)bitmap,
                                 (unsigned long long)gc);
        *t = a ? QC_NORMAL : z ? (has_host ? QC_ZERO_ALLOC : QC_ZERO)
                           : (has_host ? QC_UNALLOC_ALLOC : QC_UNALLOC);
        return 0;
    }
    if (entry & QC_ZERO_FLAG) {
        if (s->version < 3)
            return qcow2_corrupt(n, "Zero cluster entry found in pre-v3 image (guest "
                                 "cluster %#llx)", (unsigned long long)gc);
        *t = has_host ? QC_ZERO_ALLOC : QC_ZERO;
        return 0;
    }
    *t = has_host ? QC_NORMAL : QC_UNALLOC;
    return 0;
}

/* Does type t carry a host offset that must continue contiguously? */
static bool type_has_host(enum qc_type t)
{
    return t == QC_NORMAL || t == QC_ZERO_ALLOC || t == QC_UNALLOC_ALLOC;
}

/* Entries of the L2 table, from the one of gc, that one mapping answer
 * may cover: to the end of the span QEMU caches as one entry (the whole
 * table unless l2-cache-entry-size says otherwise), so that block status
 * lengths, and the EOF flag that compare -s sees, are QEMU's. */
static uint64_t span_entries(const struct qcow2_state *s, uint64_t gc)
{
    uint64_t per = (s->status_span ? s->status_span : s->cluster_size) / s->l2_entry_size;

    return per - (gc & (per - 1));
}

/* Classify the (sub)clusters after the first of m, extending m->bytes over
 * those of the same type (and contiguous host data) up to len, across the
 * slices of the same answer span; returns <0 on error. */
static int extend_mapping(vd_node *n, struct qc_map *m, uint64_t off, uint64_t len,
                          uint64_t **slice, uint32_t idx, int *h)
{
    struct qcow2_state *s = n->state;
    uint64_t gc = off >> s->cluster_bits, last = gc + span_entries(s, gc);
    uint64_t per_slice = s->l2_slice_size / s->l2_entry_size, base = gc - idx;
    uint64_t scmask = s->sc_per_cluster - 1;
    int r;

    for (uint64_t u = (off >> s->sc_bits) + 1; m->bytes < len; u++) {
        uint64_t g = u >> (s->cluster_bits - s->sc_bits), e, b, hh;
        enum qc_type t2;
        if (g >= last)
            break;
        if (g - base >= per_slice) {          /* the next slice of the table */
            qc_cache_put(s->l2_cache, *h);
            *h = -1;
            if ((r = qcow2_get_l2_slice(n, g, false, slice, &idx, h)) < 0)
                return r;
            if (!*slice)
                break;
            base = g - idx;
        }
        e = qc_l2_get(s, *slice, (uint32_t)(g - base));
        b = qc_l2_get_bitmap(s, *slice, (uint32_t)(g - base));
        if ((r = classify(n, e, b, (uint32_t)(u & scmask), g, &t2, &hh)) < 0)
            return r;
        if (t2 != m->type)
            break;
        if (type_has_host(t2) && hh + ((u & scmask) << s->sc_bits) != m->host + m->bytes)
            break;
        m->bytes += s->sc_size;
    }
    return 0;
}

/* See qcow2.h. */
int qcow2_get_mapping(vd_node *n, uint64_t off, uint64_t len, struct qc_map *m)
{
    struct qcow2_state *s = n->state;
    uint64_t gc = off >> s->cluster_bits, *slice, u, host;
    uint64_t scmask = s->sc_per_cluster - 1;
    uint32_t idx;
    int h, r;

    memset(m, 0, sizeof(*m));
    if ((r = qcow2_get_l2_slice(n, gc, false, &slice, &idx, &h)) < 0)
        return r;
    if (!slice) {
        uint64_t span = span_entries(s, gc) << s->cluster_bits;
        m->type = QC_UNALLOC;
        m->bytes = VD_MIN(len, span - (off & (s->cluster_size - 1)));
        return 0;
    }
    u = off >> s->sc_bits;
    m->entry = qc_l2_get(s, slice, idx);
    m->bitmap = qc_l2_get_bitmap(s, slice, idx);
    if ((r = classify(n, m->entry, m->bitmap, (uint32_t)(u & scmask), gc, &m->type, &host)) < 0)
        goto out;
    m->host = host + (off & (s->cluster_size - 1));
    m->bytes = ((u + 1) << s->sc_bits) - off;
    if (m->type == QC_COMPRESSED_T)
        m->bytes = (gc + 1) * s->cluster_size - off;
    else
        r = extend_mapping(n, m, off, len, &slice, idx, &h);
out:
    m->bytes = VD_MIN(m->bytes, len);
    if (h >= 0)
        qc_cache_put(s->l2_cache, h);
    return r < 0 ? r : 0;
}
