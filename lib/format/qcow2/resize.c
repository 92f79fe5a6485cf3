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

/* ---- preallocation ----
 *
 * Laid out as QEMU lays it out.  Metadata: the guest range is mapped in
 * calls of at most INT_MAX bytes, each L2 table allocated before the data
 * it maps; within a call, data continues where the previous run ended
 * when those clusters are free, else the call ends and the next one
 * allocates anew.  Falloc and full: a refcount area at the end of the
 * image covers the new clusters, which follow it in one piece; the L2
 * tables come from wherever free clusters are.  With an external data
 * file the host offsets are the guest offsets. */

#define QC_CALL_BYTES 0x7fffffffull   /* guest bytes of one metadata call */
#define QC_RUN_BYTES  0x7ffffe00ull   /* host bytes of one allocation */
#define QC_NO_HOST    UINT64_MAX

/* What preallocation does with an L2 entry. */
enum pa_kind {
    PA_FRESH,                      /* no host cluster: map a new one */
    PA_KEEP,                       /* its own host cluster: keep, continue after it */
    PA_OTHER,                      /* compressed or shared: keep, start anew */
};

/* Kind of an L2 entry. */
static enum pa_kind entry_kind(uint64_t e)
{
    if (e & QC_COMPRESSED)
        return PA_OTHER;
    if (!(e & QC_OFFSET_MASK))
        return PA_FRESH;
    return e & QC_COPIED ? PA_KEEP : PA_OTHER;
}

/* Point the fresh entries of guest clusters [gc, gc+count) (one slice) at
 * host clusters from host on, in order; the host cluster of an entry
 * that is no longer fresh is given back.  Lock held. */
static int map_run(vd_node *n, uint64_t gc, uint64_t count, uint64_t host)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice;
    uint32_t idx;
    int h, r;

    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    if (!s->lazy && (r = qc_cache_set_dependency(s->l2_cache, s->rc_cache)) < 0) {
        qc_cache_put(s->l2_cache, h);
        return r;
    }
    for (uint64_t k = 0; k < count && r >= 0; k++) {
        uint32_t i = idx + (uint32_t)k;
        uint64_t off = host + (k << s->cluster_bits);
        if (entry_kind(qc_l2_get(s, slice, i)) != PA_FRESH)
            r = qcow2_free_clusters(n, off, s->cluster_size);
        else    /* the subclusters keep their state (unallocated ones read
                 * from the backing file), as QEMU's preallocation does */
            qc_l2_set(s, slice, i, off | QC_COPIED, qc_l2_get_bitmap(s, slice, i));
    }
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    return r;
}

/* map_run over as many slices as [gc, gc+count) spans.  Lock held. */
static int map_clusters(vd_node *n, uint64_t gc, uint64_t count, uint64_t host)
{
    struct qcow2_state *s = n->state;
    uint64_t per_slice = s->l2_slice_size / s->l2_entry_size;
    int r = 0;

    while (count && r >= 0) {
        uint64_t k = VD_MIN(count, per_slice - gc % per_slice);
        r = map_run(n, gc, k, host);
        gc += k;
        host += k << s->cluster_bits;
        count -= k;
    }
    return r;
}

/* Kind of the entry of guest cluster gc, and how many entries from it (up
 * to max, its L2 table allocated) go together: fresh ones, kept ones
 * contiguous in the file, or one other.  *host: the first's host offset. */
static int scan_entries(vd_node *n, uint64_t gc, uint64_t max, enum pa_kind *kind,
                        uint64_t *count, uint64_t *host)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice, per_slice = s->l2_slice_size / s->l2_entry_size;
    uint32_t idx;
    int h, r;

    *count = *host = 0;
    *kind = PA_FRESH;
    while (*count < max) {
        uint64_t avail, k;
        if ((r = qcow2_get_l2_slice(n, gc + *count, true, &slice, &idx, &h)) < 0)
            return r;
        avail = VD_MIN(max - *count, per_slice - idx);
        for (k = 0; k < avail; k++) {
            uint64_t e = qc_l2_get(s, slice, idx + (uint32_t)k);
            if (!*count && !k) {
                *kind = entry_kind(e);
                *host = e & QC_OFFSET_MASK;
            } else if (entry_kind(e) != *kind || *kind == PA_OTHER ||
                       (*kind == PA_KEEP &&
                        (e & QC_OFFSET_MASK) != *host + ((*count + k) << s->cluster_bits))) {
                break;
            }
        }
        qc_cache_put(s->l2_cache, h);
        *count += k;
        if (k < avail)
            break;
    }
    return 0;
}

/* The L2 entry (and bitmap) of guest cluster gc, its table allocated.
 * Lock held. */
static int get_entry(vd_node *n, uint64_t gc, uint64_t *e, uint64_t *bm)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice;
    uint32_t idx;
    int h, r;

    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    *e = qc_l2_get(s, slice, idx);
    *bm = qc_l2_get_bitmap(s, slice, idx);
    qc_cache_put(s->l2_cache, h);
    return 0;
}

/* Bytes [lo, hi) of guest cluster gc as they read while its entry is e
 * (bitmap bm): from its host cluster, from the backing file, or zeroes. */
static int read_old(vd_node *n, uint64_t gc, uint64_t e, uint64_t bm, uint64_t lo,
                    uint64_t hi, uint8_t *buf)
{
    struct qcow2_state *s = n->state;
    uint64_t g = (gc << s->cluster_bits) + lo, sc = lo >> s->sc_bits;
    int64_t blen = n->backing ? vd_getlength(n->backing) : 0;
    bool zero = s->ext_l2 ? (bm >> (32 + sc)) & 1 : e & QC_ZERO_FLAG;

    memset(buf, 0, hi - lo);
    if (e & QC_OFFSET_MASK)
        return qcow2_read_padded(s->data, (e & QC_OFFSET_MASK) + lo, hi - lo, buf);
    if (blen < 0)
        return (int)blen;
    if (zero || g >= (uint64_t)blen)
        return 0;
    return vd_pread(n->backing, g, VD_MIN(hi - lo, (uint64_t)blen - g), buf, 0);
}

/* Copy-on-write of bytes [lo, hi) of guest cluster gc (entry e, bitmap
 * bm) into its new host cluster host, as QEMU writes the parts of a
 * newly mapped cluster around the range it maps.  Lock held. */
static int cow_part(vd_node *n, uint64_t gc, uint64_t e, uint64_t bm, uint64_t host,
                    uint64_t lo, uint64_t hi)
{
    uint8_t *buf;
    int r;

    if (lo >= hi)
        return 0;
    if (!(buf = malloc(hi - lo)))
        return vd_error(ENOMEM, "out of memory");
    r = read_old(n, gc, e, bm, lo, hi, buf);
    if (r >= 0)
        r = qcow2_grow_file(n, n->file, host + hi);
    if (r >= 0)
        r = qcow2_overlap_check(n, 0, host + lo, hi - lo);
    if (r >= 0)
        r = vd_pwrite(n->file, host + lo, hi - lo, buf, 0);
    free(buf);
    return r;
}

/* The copy-on-write parts of count fresh guest clusters from gc, newly
 * at host, mapped for guest bytes [pos, end): the head of the first from
 * its subcluster's start, the tail of the last to its subcluster's end.
 * Lock held. */
static int cow_fresh(vd_node *n, uint64_t gc, uint64_t count, uint64_t host, uint64_t pos,
                     uint64_t end)
{
    struct qcow2_state *s = n->state;
    uint64_t head = qc_offset_in_cluster(s, pos), tail = qc_offset_in_cluster(s, end);
    uint64_t last = host + ((count - 1) << s->cluster_bits), e, bm;
    int r;

    if (head && ((r = get_entry(n, gc, &e, &bm)) < 0 ||
                 (r = cow_part(n, gc, e, bm, host, round_down(head, s->sc_size), head)) < 0))
        return r;
    if (!tail)
        return 0;
    if ((r = get_entry(n, gc + count - 1, &e, &bm)) < 0)
        return r;
    return cow_part(n, gc + count - 1, e, bm, last, tail,
                    div_round_up(tail, s->sc_size) * s->sc_size);
}

/* New host clusters for count fresh entries: after *cont when those are
 * free (*count may shrink; 0: none are), else anywhere. */
static int alloc_fresh(vd_node *n, uint64_t cont, uint64_t *count, uint64_t *host)
{
    struct qcow2_state *s = n->state;

    if (cont == QC_NO_HOST)
        return qcow2_alloc_clusters(n, *count, host);
    *host = round_down(cont, s->cluster_size);
    return qcow2_alloc_clusters_at(n, *host, *count, count);
}

/* One step of a metadata call ending at guest byte call_end, at guest
 * byte pos; *cont is the host byte that would continue the call's data
 * (QC_NO_HOST before any).  *done: guest bytes handled, 0 when the call
 * must end here.  Lock held. */
static int meta_step(vd_node *n, uint64_t pos, uint64_t call_end, uint64_t *cont,
                     uint64_t *done)
{
    struct qcow2_state *s = n->state;
    uint64_t gc = pos >> s->cluster_bits, oic = qc_offset_in_cluster(s, pos), k, host;
    uint64_t max = div_round_up(oic + (call_end - pos), s->cluster_size);
    enum pa_kind kind;
    int r;

    *done = 0;
    max = VD_MIN(max, qc_l2_entries(s) - (gc & (qc_l2_entries(s) - 1)));
    max = VD_MIN(max, QC_RUN_BYTES >> s->cluster_bits);
    if ((r = scan_entries(n, gc, max, &kind, &k, &host)) < 0)
        return r;
    if (kind == PA_KEEP && *cont != QC_NO_HOST && host != round_down(*cont, s->cluster_size))
        return 0;
    if (kind == PA_FRESH && ((r = alloc_fresh(n, *cont, &k, &host)) < 0 || !k))
        return r;
    *done = VD_MIN(call_end - pos, (k << s->cluster_bits) - oic);
    *cont = kind == PA_OTHER ? QC_NO_HOST : host + oic + *done;
    if (kind != PA_FRESH)
        return 0;
    /* The file grows to the last byte mapped, as QEMU grows it (the
     * copy-on-write may add to that).  Clusters allocated but not mapped
     * after a failure are leaked. */
    if ((r = qcow2_grow_file(n, n->file, host + oic + *done)) < 0 ||
        (r = cow_fresh(n, gc, k, host, pos, pos + *done)) < 0)
        return r;
    return map_clusters(n, gc, k, host);
}

/* Metadata preallocation of guest bytes [from, to) in the image file.
 * Lock held. */
static int prealloc_metadata(vd_node *n, uint64_t from, uint64_t to)
{
    struct qcow2_state *s = n->state;
    uint64_t call_max = round_down(QC_CALL_BYTES, s->cluster_size);
    uint64_t pos = from, call_end = from, cont = QC_NO_HOST, done;
    int r;

    while (pos < to) {
        bool fresh_call = pos == call_end;
        if (fresh_call) {
            call_end = pos + VD_MIN(to - pos, call_max);
            cont = QC_NO_HOST;
        }
        if ((r = meta_step(n, pos, call_end, &cont, &done)) < 0)
            return r;
        if (!done && fresh_call)
            return vd_error(EIO, "qcow2: preallocation makes no progress");
        call_end = done ? call_end : pos;
        pos += done;
    }
    return 0;
}

/* Point guest cluster gc (entry bitmap bm kept) at host cluster host,
 * giving up its old host cluster old.  Lock held. */
static int relocate(vd_node *n, uint64_t gc, uint64_t bm, uint64_t host, uint64_t old)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice;
    uint32_t idx;
    int h, r;

    if ((r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    if (!s->lazy && (r = qc_cache_set_dependency(s->l2_cache, s->rc_cache)) < 0) {
        qc_cache_put(s->l2_cache, h);
        return r;
    }
    qc_l2_set(s, slice, idx, host | QC_COPIED, bm);
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    return qcow2_free_clusters(n, old, s->cluster_size);
}

/* Falloc of a first guest cluster gc whose bytes before oic are old, at
 * new host cluster host: those bytes are copied in (from its old host
 * cluster, the backing file or zeroes) and a plain old host cluster is
 * given up for the new one, as QEMU does; a compressed or shared one
 * stays (map_clusters gives the new cluster back).  Returns 1 when gc is
 * mapped now.  Lock held. */
static int falloc_head(vd_node *n, uint64_t gc, uint64_t host, uint64_t oic)
{
    uint64_t e, bm;
    int r;

    if ((r = get_entry(n, gc, &e, &bm)) < 0 || entry_kind(e) == PA_OTHER)
        return r;
    if ((r = cow_part(n, gc, e, bm, host, 0, oic)) < 0 || entry_kind(e) == PA_FRESH)
        return r;
    r = relocate(n, gc, bm, host, e & QC_OFFSET_MASK);
    return r < 0 ? r : 1;
}

/* First cluster after everything in use (QEMU's end of the image for a
 * refcount area): the last one with a refcount, else the file's end. */
static int used_end(vd_node *n, uint64_t *cl)
{
    struct qcow2_state *s = n->state;
    int64_t len = vd_getlength(n->file);
    uint64_t end;
    int r;

    if ((r = qcow2_image_end(n, &end)) < 0)
        return r;
    if (!end && len < 0)
        return (int)len;
    if (!end && !round_up_checked((uint64_t)len, s->cluster_size, &end))
        return vd_error(EFBIG, "qcow2: image file too large");
    *cl = end >> s->cluster_bits;
    return 0;
}

/* The file space of count new clusters from cluster start, as mode says;
 * given back on failure.  Lock held. */
static int falloc_data(vd_node *n, uint64_t start, uint64_t count, int mode)
{
    struct qcow2_state *s = n->state;
    uint64_t got = 0, end = (start + count) << s->cluster_bits;
    int r = qcow2_alloc_clusters_at(n, start << s->cluster_bits, count, &got);

    if (r >= 0 && got != count)
        r = vd_error(EIO, "Failed to allocate data clusters");
    if (r >= 0 && (int64_t)end > vd_getlength(n->file) &&
        (r = vd_truncate(n->file, end, false, mode)) < 0)
        r = vd_error_prefix(r, "Failed to resize underlying file");
    if (r < 0) {
        qcow2_free_clusters(n, start << s->cluster_bits, got << s->cluster_bits);
        return r;
    }
    if (end > s->file_end)
        s->file_end = end;
    return 0;
}

/* Falloc or full preallocation of guest bytes [from, to) in the image
 * file: a refcount area at the end of what is in use, for the new data
 * clusters and L2 tables (one more for a head or tail), then the data in
 * one piece after it.  Lock held. */
static int prealloc_falloc(vd_node *n, uint64_t from, uint64_t to, int mode)
{
    struct qcow2_state *s = n->state;
    uint64_t first = from >> s->cluster_bits, last = div_round_up(to, s->cluster_size);
    uint64_t end = 0, start, count = last - first, l2s, oic = qc_offset_in_cluster(s, from);
    int r;

    if ((r = used_end(n, &end)) < 0)
        return r;
    l2s = div_round_up(count, qc_l2_entries(s)) + 1;
    if ((r = qcow2_refcount_area(n, end, count + l2s, true, 0, 0, &start)) < 0)
        return vd_error_prefix(r, "Failed to resize refcount structures");
    if ((r = falloc_data(n, start, count, mode)) < 0)
        return r;
    if (oic && (r = falloc_head(n, first, start << s->cluster_bits, oic)) > 0) {
        first++;
        start++;
        count--;
    }
    if (r < 0 || (r = map_clusters(n, first, count, start << s->cluster_bits)) < 0)
        return vd_error_prefix(r, "Failed to update L2 tables");
    return 0;
}

/* Map the unallocated clusters of [gc, gc+count) (one L2 slice) of an
 * image with an external data file (host offset = guest offset); the
 * data file grows as mode says.  Lock held. */
static int prealloc_external_run(vd_node *n, uint64_t gc, uint64_t count, int mode)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice, end = (gc + count) << s->cluster_bits;
    uint32_t idx;
    int h, r = 0;

    if (mode == VD_PREALLOC_METADATA)
        r = qcow2_grow_file(n, s->data, end);
    else if ((int64_t)end > vd_getlength(s->data))
        r = vd_truncate(s->data, end, true, mode);
    if (r < 0 || (r = qcow2_get_l2_slice(n, gc, true, &slice, &idx, &h)) < 0)
        return r;
    for (uint64_t k = 0; k < count; k++) {
        uint32_t i = idx + (uint32_t)k;
        if (qc_l2_get(s, slice, i) & (QC_OFFSET_MASK | QC_COMPRESSED))
            continue;
        qc_l2_set(s, slice, i, ((gc + k) << s->cluster_bits) | QC_COPIED,
                  s->ext_l2 && s->data_raw ? 0xffffffffull : 0);
    }
    qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    return 0;
}

/* Preallocation of guest bytes [from, to) with an external data file.
 * Lock held. */
static int prealloc_external(vd_node *n, uint64_t from, uint64_t to, int mode)
{
    struct qcow2_state *s = n->state;
    uint64_t per_slice = s->l2_slice_size / s->l2_entry_size;
    uint64_t gc = from >> s->cluster_bits, last = div_round_up(to, s->cluster_size);
    int r = 0;

    while (r >= 0 && gc < last) {
        uint64_t e = VD_MIN(last, (gc / per_slice + 1) * per_slice);
        e = VD_MIN(e, gc + QC_PREALLOC_RUN);
        r = prealloc_external_run(n, gc, e - gc, mode);
        gc = e;
    }
    return r;
}

/* See qcow2.h. */
int qcow2_preallocate(vd_node *n, uint64_t from, uint64_t to, int mode)
{
    struct qcow2_state *s = n->state;
    int r = 0;

    if (mode == VD_PREALLOC_OFF || to <= from)
        return 0;
    pthread_mutex_lock(&s->lock);
    r = qcow2_prepare_write(n);
    /* falloc/full preallocate what the file grows by: no growing ahead */
    s->exact_growth = mode != VD_PREALLOC_METADATA;
    if (s->exact_growth)
        qcow2_trim_grown_tail(n);
    if (r >= 0 && s->data_external)
        r = prealloc_external(n, from, to, mode);
    else if (r >= 0 && mode == VD_PREALLOC_METADATA)
        r = prealloc_metadata(n, from, to);
    else if (r >= 0)
        r = prealloc_falloc(n, from, to, mode);
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
