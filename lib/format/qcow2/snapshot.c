/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: internal snapshots (QEMU's docs/interop/qcow2.txt, "Snapshots").
 * The snapshot table is read at open as hostile input: the count, the
 * offset, every entry's extra data and string lengths are checked, with
 * overflow-checked arithmetic, before anything is allocated or read.
 *
 * The operations keep the write ordering of write.c (invariants 1, 3, 4):
 *
 *   create  raise the refcounts of everything the active L1 reaches and
 *           clear QC_COPIED in the active tables; flush.  Write the L1
 *           copy and the new table to fresh clusters; flush.  Only then
 *           point the header at the new table (count and offset in one
 *           write); flush; free the old table.  A crash leaks, no more.
 *   delete  point the header at a table without the entry first; then
 *           lower the refcounts of what the snapshot reached; flush; then
 *           set QC_COPIED again where an active cluster is not shared.
 *   goto    raise the refcounts of what the snapshot reaches; flush; write
 *           a new active L1 (the snapshot's) to fresh clusters and switch
 *           the header to it (size, L1 size and offset in one write);
 *           flush; then lower the refcounts of what the old L1 reached.
 *   load    (read-only nodes) reads go through the snapshot's L1.
 *
 * Operations wait for in-flight writes and take the metadata lock. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

#define SN_MAX_COUNT    65536u                   /* QEMU's QCOW_MAX_SNAPSHOTS */
#define SN_MAX_EXTRA    1024u                    /* extra data per entry */
#define SN_MAX_TABLE    (1024ull * SN_MAX_COUNT) /* bytes of the whole table */
#define SN_HDR          40u
#define SN_EXTRA_KNOWN  24u                      /* vm state, disk size, icount */
#define SN_NO_ICOUNT    UINT64_MAX
#define QH_SIZE_TO_L1   24u                      /* size, crypt, l1 size, l1 offset */
#define QH_NB_SNAPSHOTS 60u                      /* count, then offset */

/* ---- the table in memory ---- */

/* Free count entries and the array. */
static void free_snaps(struct qc_snapshot *sn, uint32_t count)
{
    for (uint32_t i = 0; sn && i < count; i++) {
        free(sn[i].id);
        free(sn[i].name);
        free(sn[i].extra_unknown);
    }
    free(sn);
}

/* See qcow2.h. */
void qcow2_snapshot_close(vd_node *n)
{
    struct qcow2_state *s = n->state;

    free_snaps(s->snaps, s->snaps ? s->nb_snapshots : 0);
    s->snaps = NULL;
}

/* Index of the snapshot matching id and name (NULL matches any), or -1. */
static int find_snap(const struct qcow2_state *s, const char *id, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if ((!id || !strcmp(s->snaps[i].id, id)) &&
            (!name || !strcmp(s->snaps[i].name, name)))
            return (int)i;
    return -1;
}

/* Fail when the table could not be read at open (check mode). */
static int snaps_usable(vd_node *n)
{
    struct qcow2_state *s = n->state;

    if (s->snap_error[0])
        return vd_error(EIO, "qcow2: %s", s->snap_error);
    return 0;
}

/* ---- reading the table ---- */

/* Decode the extra data of an entry (len bytes at x). */
static int decode_extra(const struct qcow2_state *s, struct qc_snapshot *sn,
                        const uint8_t *x, uint32_t len)
{
    sn->disk_size = s->size;
    sn->icount = SN_NO_ICOUNT;
    if (len >= 8)
        sn->vm_state_size = be64_get(x);
    if (len >= 16)
        sn->disk_size = be64_get(x + 8);
    if (len >= 24)
        sn->icount = be64_get(x + 16);
    if (len <= SN_EXTRA_KNOWN)
        return 0;
    sn->extra_unknown_len = len - SN_EXTRA_KNOWN;
    if (!(sn->extra_unknown = malloc(sn->extra_unknown_len)))
        return vd_error(ENOMEM, "out of memory");
    memcpy(sn->extra_unknown, x + SN_EXTRA_KNOWN, sn->extra_unknown_len);
    return 0;
}

/* Decode the fixed 40 bytes of an entry; returns the extra data size. */
static uint32_t decode_fixed(const uint8_t *h, struct qc_snapshot *sn, uint16_t *id_len,
                             uint16_t *name_len)
{
    sn->l1_offset = be64_get(h);
    sn->l1_size = be32_get(h + 8);
    *id_len = be16_get(h + 12);
    *name_len = be16_get(h + 14);
    sn->date_sec = be32_get(h + 16);
    sn->date_nsec = be32_get(h + 20);
    sn->vm_clock_nsec = be64_get(h + 24);
    sn->vm_state_size = be32_get(h + 32);
    return be32_get(h + 36);
}

/* Read entry i at *off (8-aligned first, advanced past it). */
static int read_entry(vd_node *n, uint32_t i, uint64_t *off, uint64_t file_len,
                      struct qc_snapshot *sn)
{
    struct qcow2_state *s = n->state;
    uint8_t h[SN_HDR], *rest;
    uint16_t id_len, name_len;
    uint64_t rest_len, end;
    uint32_t extra;
    int r;

    *off = (*off + 7) & ~7ull;
    if (*off > file_len || file_len - *off < SN_HDR)
        return vd_error(EINVAL, "Snapshot table entry %u at %#llx is beyond the end of "
                        "the image file", i, (unsigned long long)*off);
    if ((r = vd_pread(n->file, *off, SN_HDR, h, 0)) < 0)
        return vd_error_prefix(r, "Failed to read the snapshot table");
    extra = decode_fixed(h, sn, &id_len, &name_len);
    if (extra > SN_MAX_EXTRA)
        return vd_error(EFBIG, "Too much extra metadata in snapshot table entry %u\n"
                        "You can force-remove this extra metadata with qemu-img check "
                        "-r all", i);
    rest_len = (uint64_t)extra + id_len + name_len;
    end = *off + SN_HDR + rest_len;
    if (end - s->snapshots_offset > SN_MAX_TABLE)
        return vd_error(EFBIG, "Snapshot table is too big");
    if (end > file_len)
        return vd_error(EINVAL, "Snapshot table entry %u at %#llx (%llu bytes) is beyond "
                        "the end of the image file", i, (unsigned long long)*off,
                        (unsigned long long)(end - *off));
    if (!(rest = malloc(rest_len ? rest_len : 1)))
        return vd_error(ENOMEM, "out of memory");
    r = rest_len ? vd_pread(n->file, *off + SN_HDR, rest_len, rest, 0) : 0;
    if (r >= 0)
        r = decode_extra(s, sn, rest, extra);
    if (r >= 0) {
        sn->id = strndup((const char *)rest + extra, id_len);
        sn->name = strndup((const char *)rest + extra + id_len, name_len);
        if (!sn->id || !sn->name)
            r = vd_error(ENOMEM, "out of memory");
    }
    free(rest);
    *off = end;
    return r;
}

/* Read and check the whole table into s->snaps. */
static int read_table(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    uint64_t off = s->snapshots_offset;
    int r = 0;

    if (!s->nb_snapshots)
        return 0;
    if (file_len < 0)
        return (int)file_len;
    if (s->nb_snapshots > SN_MAX_COUNT)
        return vd_error(EFBIG, "Snapshot table too large");
    if (!is_aligned(off, s->cluster_size) || off > INT64_MAX - SN_MAX_TABLE)
        return vd_error(EINVAL, "Snapshot table offset invalid");
    if ((r = vd_untrusted_table_check(n, (uint64_t)s->nb_snapshots * sizeof(*s->snaps),
                                      "qcow2 snapshot table")) < 0)
        return r;
    if (!(s->snaps = vd_calloc_array(s->nb_snapshots, sizeof(*s->snaps))))
        return vd_error(ENOMEM, "out of memory");
    for (uint32_t i = 0; i < s->nb_snapshots && r >= 0; i++)
        r = read_entry(n, i, &off, (uint64_t)file_len, &s->snaps[i]);
    if (r < 0) {
        qcow2_snapshot_close(n);
        return r;
    }
    s->snaps_bytes = off - s->snapshots_offset;
    return 0;
}

/* ---- the L1 table of a snapshot ---- */

/* Check a snapshot's L1 table and read it (host order, >= 1 entry). */
static int read_snap_l1(vd_node *n, const struct qc_snapshot *sn, uint64_t **out)
{
    struct qcow2_state *s = n->state;
    uint64_t bytes = (uint64_t)sn->l1_size * 8, *t;
    int r;

    if (bytes > QC_MAX_L1_BYTES)
        return vd_error(EFBIG, "Snapshot L1 table too large");
    if (!is_aligned(sn->l1_offset, s->cluster_size) || sn->l1_offset > INT64_MAX - bytes)
        return vd_error(EINVAL, "Snapshot L1 table offset invalid");
    if (bytes && (sn->l1_offset < s->cluster_size || sn->l1_offset + bytes > s->file_end))
        return vd_error(EINVAL, "Snapshot L1 table at %#llx (%llu bytes) is outside the "
                        "image file", (unsigned long long)sn->l1_offset,
                        (unsigned long long)bytes);
    if ((r = vd_untrusted_table_check(n, bytes, "qcow2 snapshot L1 table")) < 0)
        return r;
    if (!(t = vd_calloc_array(sn->l1_size ? sn->l1_size : 1, 8)))
        return vd_error(ENOMEM, "out of memory");
    if (bytes && (r = vd_pread(n->file, sn->l1_offset, bytes, t, 0)) < 0) {
        free(t);
        return r;
    }
    for (uint32_t i = 0; i < sn->l1_size; i++)
        t[i] = be64_get((const uint8_t *)&t[i]);
    *out = t;
    return 0;
}

/* ---- walking a tree of tables ---- */

/* Refcount delta for every L2 table and cluster a walk reaches; with
 * fix_copied (the active tables) QC_COPIED is set exactly where the
 * refcount is 1 afterwards. */
struct walk {
    int addend;
    bool fix_copied;
    bool l1_changed;
    uint64_t *ents;                /* one slice of entries, scratch */
};

/* Host range that an L2 entry holds a reference on (len 0: none). */
static int entry_range(vd_node *n, uint64_t e, uint64_t *off, uint64_t *len)
{
    struct qcow2_state *s = n->state;

    *len = 0;
    if (e & QC_COMPRESSED) {
        qc_compressed_range(s, e, off, len);   /* as check.c counts it */
        return 0;
    }
    *off = e & QC_OFFSET_MASK;
    if (!*off)
        return 0;
    if (!is_aligned(*off, s->cluster_size))
        return qcow2_corrupt(n, "Cluster allocation offset %#llx unaligned",
                             (unsigned long long)*off);
    *len = s->cluster_size;
    return 0;
}

/* Entry e with QC_COPIED set exactly when its cluster's refcount is 1. */
static int copied_entry(vd_node *n, uint64_t e, uint64_t *out)
{
    struct qcow2_state *s = n->state;
    uint64_t off = e & QC_OFFSET_MASK, rc;
    int r;

    *out = e;
    if (e & QC_COMPRESSED) {
        *out = e & ~QC_COPIED;
        return 0;
    }
    if (!off)
        return 0;
    if ((r = qcow2_get_refcount(n, off >> s->cluster_bits, &rc)) < 0)
        return r;
    *out = rc == 1 ? e | QC_COPIED : e & ~QC_COPIED;
    return 0;
}

/* Write back the QC_COPIED changes of one slice (new entries in ents). */
static int store_slice(vd_node *n, uint64_t slice_off, const uint64_t *ents)
{
    struct qcow2_state *s = n->state;
    uint32_t per = s->l2_slice_size / s->l2_entry_size;
    bool dirty = false;
    void *t;
    int h;

    if ((h = qc_cache_get(s->l2_cache, slice_off, false, &t)) < 0)
        return h;
    for (uint32_t i = 0; i < per; i++) {
        if (qc_l2_get(s, t, i) == ents[i])
            continue;
        qc_l2_set(s, t, i, ents[i], qc_l2_get_bitmap(s, t, i));
        dirty = true;
    }
    if (dirty)
        qc_cache_mark_dirty(s->l2_cache, h);
    qc_cache_put(s->l2_cache, h);
    return 0;
}

/* Walk one slice of an L2 table. */
static int walk_slice(vd_node *n, uint64_t slice_off, struct walk *w)
{
    struct qcow2_state *s = n->state;
    uint32_t per = s->l2_slice_size / s->l2_entry_size;
    uint64_t off, len;
    void *t;
    int h, r;

    if ((h = qc_cache_get(s->l2_cache, slice_off, false, &t)) < 0)
        return h;
    for (uint32_t i = 0; i < per; i++)
        w->ents[i] = qc_l2_get(s, t, i);
    qc_cache_put(s->l2_cache, h);
    for (uint32_t i = 0; i < per && w->addend; i++) {
        if ((r = entry_range(n, w->ents[i], &off, &len)) < 0 ||
            (len && (r = qcow2_update_refcount(n, off, len, w->addend)) < 0))
            return r;
    }
    if (!w->fix_copied)
        return 0;
    for (uint32_t i = 0; i < per; i++)
        if ((r = copied_entry(n, w->ents[i], &w->ents[i])) < 0)
            return r;
    return store_slice(n, slice_off, w->ents);
}

/* Walk the L2 table of L1 entry i (l1[i] is updated for QC_COPIED). */
static int walk_l2(vd_node *n, uint64_t *l1, uint64_t i, struct walk *w)
{
    struct qcow2_state *s = n->state;
    uint64_t l2 = l1[i] & QC_OFFSET_MASK, rc, want;
    int r;

    if (!l2)
        return 0;
    if (!is_aligned(l2, s->cluster_size) || l2 < s->cluster_size ||
        l2 > s->file_end || s->file_end - l2 < s->cluster_size)
        return qcow2_corrupt(n, "L2 table at %#llx (L1 index %#llx) is invalid",
                             (unsigned long long)l2, (unsigned long long)i);
    for (uint64_t o = 0; o < s->cluster_size; o += s->l2_slice_size)
        if ((r = walk_slice(n, l2 + o, w)) < 0)
            return r;
    if (w->addend && (r = qcow2_update_refcount(n, l2, s->cluster_size, w->addend)) < 0)
        return r;
    if (!w->addend && !w->fix_copied)
        return 0;
    if ((r = qcow2_get_refcount(n, l2 >> s->cluster_bits, &rc)) < 0)
        return r;
    if (rc == 0)                   /* freed: nothing may write its slices back */
        for (uint64_t o = 0; o < s->cluster_size; o += s->l2_slice_size)
            qc_cache_discard(s->l2_cache, l2 + o);
    if (w->fix_copied) {
        want = rc == 1 ? l1[i] | QC_COPIED : l1[i] & ~QC_COPIED;
        w->l1_changed |= want != l1[i];
        l1[i] = want;
    }
    return 0;
}

/* Walk every table an L1 table reaches. */
static int walk_tree(vd_node *n, uint64_t *l1, uint32_t l1_size, int addend,
                     bool fix_copied, bool *l1_changed)
{
    struct qcow2_state *s = n->state;
    struct walk w = { .addend = addend, .fix_copied = fix_copied };
    int r = 0;

    if (!(w.ents = vd_calloc_array(s->l2_slice_size / s->l2_entry_size, 8)))
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = 0; i < l1_size && r >= 0; i++)
        r = walk_l2(n, l1, i, &w);
    free(w.ents);
    if (l1_changed)
        *l1_changed = w.l1_changed;
    return r;
}

/* ---- writing ---- */

/* An L1 table (host order) as on disk, malloc'd; NULL when out of memory. */
static uint8_t *l1_buffer(const uint64_t *l1, uint32_t size)
{
    uint8_t *buf = vd_calloc_array(size ? size : 1, 8);

    for (uint32_t i = 0; buf && i < size; i++)
        be64_put(buf + 8 * i, l1[i]);
    return buf;
}

/* Write an L1 table (host order) at off. */
static int write_l1(vd_node *n, const uint64_t *l1, uint32_t size, uint64_t off)
{
    uint8_t *buf = l1_buffer(l1, size);
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    r = size ? qcow2_overlap_check(n, QC_OL_ACTIVE_L1, off, (uint64_t)size * 8) : 0;
    if (r >= 0 && size)
        r = vd_pwrite(n->file, off, (uint64_t)size * 8, buf, 0);
    free(buf);
    return r;
}

/* Allocate clusters for len bytes and write buf there (len > 0). */
static int alloc_write(vd_node *n, const void *buf, uint64_t len, uint64_t *off)
{
    struct qcow2_state *s = n->state;
    uint64_t count = div_round_up(len, s->cluster_size);
    int r;

    if ((r = qcow2_alloc_clusters(n, count, off)) < 0 ||
        (r = qcow2_grow_file(n, n->file, *off + count * s->cluster_size)) < 0 ||
        (r = qcow2_overlap_check(n, 0, *off, len)) < 0)
        return r;
    return vd_pwrite(n->file, *off, len, buf, 0);
}

/* Bytes of one entry on disk, without the padding after it. */
static uint64_t entry_bytes(const struct qc_snapshot *sn)
{
    return SN_HDR + SN_EXTRA_KNOWN + (uint64_t)sn->extra_unknown_len + strlen(sn->id) +
           strlen(sn->name);
}

/* Encode one entry at p. */
static void encode_entry(const struct qc_snapshot *sn, uint8_t *p)
{
    size_t il = strlen(sn->id), nl = strlen(sn->name);
    uint8_t *x = p + SN_HDR;

    be64_put(p, sn->l1_offset);
    be32_put(p + 8, sn->l1_size);
    be16_put(p + 12, (uint16_t)il);
    be16_put(p + 14, (uint16_t)nl);
    be32_put(p + 16, sn->date_sec);
    be32_put(p + 20, sn->date_nsec);
    be64_put(p + 24, sn->vm_clock_nsec);
    be32_put(p + 32, (uint32_t)sn->vm_state_size);   /* the 64-bit field wins */
    be32_put(p + 36, SN_EXTRA_KNOWN + sn->extra_unknown_len);
    be64_put(x, sn->vm_state_size);
    be64_put(x + 8, sn->disk_size);
    be64_put(x + 16, sn->icount);
    if (sn->extra_unknown_len)
        memcpy(x + SN_EXTRA_KNOWN, sn->extra_unknown, sn->extra_unknown_len);
    x += SN_EXTRA_KNOWN + sn->extra_unknown_len;
    memcpy(x, sn->id, il);
    memcpy(x + il, sn->name, nl);
}

/* Encode a table of count entries into a malloc'd buffer. */
static int encode_table(const struct qc_snapshot *sn, uint32_t count, uint8_t **out,
                        uint64_t *len)
{
    uint64_t total = 0, off = 0;

    for (uint32_t i = 0; i < count; i++) {
        if (strlen(sn[i].id) > UINT16_MAX || strlen(sn[i].name) > UINT16_MAX)
            return vd_error(EINVAL, "snapshot id or name too long");
        total = ((total + 7) & ~7ull) + entry_bytes(&sn[i]);
        if (total > SN_MAX_TABLE)
            return vd_error(EFBIG, "Snapshot table too large");
    }
    if (!(*out = calloc(1, (total + 7) & ~7ull)))
        return vd_error(ENOMEM, "out of memory");
    for (uint32_t i = 0; i < count; i++) {
        off = (off + 7) & ~7ull;
        encode_entry(&sn[i], *out + off);
        off += entry_bytes(&sn[i]);
    }
    *len = total;
    return 0;
}

/* Point the header at a table: count and offset in one write. */
static int switch_table(vd_node *n, uint32_t count, uint64_t off)
{
    uint8_t b[12];

    be32_put(b, count);
    be64_put(b + 4, off);
    return vd_pwrite(n->file, QH_NB_SNAPSHOTS, sizeof(b), b, 0);
}

/* Write table sn (count entries) to fresh clusters, make the header point
 * at it, free the old one.  On success the state owns sn (the old array is
 * freed, not its entries' strings). */
static int install_table(vd_node *n, struct qc_snapshot *sn, uint32_t count)
{
    struct qcow2_state *s = n->state;
    uint64_t len = 0, off = 0, old_off = s->snapshots_offset, old_len = s->snaps_bytes;
    uint32_t old_count = s->nb_snapshots;
    uint8_t *buf = NULL;
    int r;

    if ((r = encode_table(sn, count, &buf, &len)) < 0)
        return r;
    r = len ? alloc_write(n, buf, len, &off) : 0;
    free(buf);
    /* Invariant 3: the table and its refcounts are stable before the
     * header names it. */
    if (r < 0 || (r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0 ||
        (r = switch_table(n, count, off)) < 0 || (r = vd_flush(n->file)) < 0)
        return r;
    free(s->snaps);
    s->snaps = sn;
    s->nb_snapshots = count;
    s->snapshots_offset = off;
    s->snaps_bytes = len;
    if (old_count && old_len)
        return qcow2_free_clusters(n, old_off, old_len);
    return 0;
}

/* Checks shared by the operations that change snapshots. */
static int check_writable(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    if ((r = snaps_usable(n)) < 0)
        return r;
    if (s->snap_loaded)
        return vd_error(EPERM, "qcow2: a snapshot is loaded");
    if (s->data_external)
        return vd_error(ENOTSUP, "qcow2: internal snapshots are not supported with an "
                        "external data file");
    if ((r = qcow2_prepare_write(n)) < 0)
        return r;
    return qcow2_flush_caches(n);
}

/* ---- create ---- */

/* A new id: one above the largest numeric id, as QEMU picks it. */
static char *new_id(const struct qcow2_state *s)
{
    unsigned long long max = 0;
    char *out;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long long v = strtoull(s->snaps[i].id, NULL, 10);
        max = v > max ? v : max;
    }
    if (asprintf(&out, "%llu", max + 1) < 0)
        return NULL;
    return out;
}

/* Share every cluster of the active tables and copy the active L1. */
static int share_active(vd_node *n, uint64_t *l1_off)
{
    struct qcow2_state *s = n->state;
    bool changed = false;
    int r;

    *l1_off = 0;
    if ((r = walk_tree(n, s->l1, s->l1_size, 1, true, &changed)) < 0 ||
        (changed && (r = write_l1(n, s->l1, s->l1_size, s->l1_offset)) < 0) ||
        (r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0)
        return r;
    if (!s->l1_size)
        return 0;
    uint8_t *buf = l1_buffer(s->l1, s->l1_size);
    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    r = alloc_write(n, buf, (uint64_t)s->l1_size * 8, l1_off);
    free(buf);
    return r;
}

/* Does the active L1 name any L2 table? */
static bool has_l2_tables(const struct qcow2_state *s)
{
    for (uint32_t i = 0; i < s->l1_size; i++)
        if (s->l1[i] & QC_OFFSET_MASK)
            return true;
    return false;
}

/* Create, lock held. */
static int create_locked(vd_node *n, const struct vd_snapshot_info *info)
{
    struct qcow2_state *s = n->state;
    struct qc_snapshot sn = { 0 }, *list;
    int r;

    if ((r = check_writable(n)) < 0)
        return r;
    if (s->nb_snapshots >= SN_MAX_COUNT)
        return vd_error(EFBIG, "Too many snapshots");
    if (s->refcount_max < 2 && has_l2_tables(s))
        return vd_error(EINVAL, "qcow2: %u-bit refcounts cannot share clusters",
                        s->refcount_bits);
    sn.id = new_id(s);
    sn.name = strdup(info->name);
    list = vd_calloc_array(s->nb_snapshots + 1, sizeof(*list));
    if (!sn.id || !sn.name || !list) {
        r = vd_error(ENOMEM, "out of memory");
        goto fail;
    }
    sn.l1_size = s->l1_size;
    sn.date_sec = info->date_sec;
    sn.date_nsec = info->date_nsec;
    sn.vm_clock_nsec = info->vm_clock_nsec;
    sn.vm_state_size = info->vm_state_size;
    sn.icount = info->icount;
    sn.disk_size = s->size;
    if ((r = share_active(n, &sn.l1_offset)) < 0)
        goto fail;
    if (s->nb_snapshots)
        memcpy(list, s->snaps, s->nb_snapshots * sizeof(*list));
    list[s->nb_snapshots] = sn;
    if ((r = install_table(n, list, s->nb_snapshots + 1)) < 0)
        goto fail;
    return 0;
fail:
    free(list);
    free(sn.id);
    free(sn.name);
    return r;
}

/* See qcow2.h. */
int qcow2_snapshot_create(vd_node *n, const struct vd_snapshot_info *info)
{
    struct qcow2_state *s = n->state;
    struct qc_inflight f;
    int r;

    pthread_mutex_lock(&s->lock);
    qcow2_inflight_begin(n, &f, 0, UINT64_MAX);
    r = create_locked(n, info);
    qcow2_inflight_end(n, &f);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- delete ---- */

/* Set QC_COPIED again where the active tables no longer share. */
static int refresh_active_copied(vd_node *n)
{
    struct qcow2_state *s = n->state;
    bool changed = false;
    int r;

    /* The lowered refcounts reach the disk before any QC_COPIED relying
     * on them. */
    if ((r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0 ||
        (r = walk_tree(n, s->l1, s->l1_size, 0, true, &changed)) < 0)
        return r;
    if (changed && (r = write_l1(n, s->l1, s->l1_size, s->l1_offset)) < 0)
        return r;
    return qcow2_flush_caches(n);
}

/* Delete entry i, lock held. */
static int delete_index(vd_node *n, uint32_t i)
{
    struct qcow2_state *s = n->state;
    struct qc_snapshot sn = s->snaps[i], *list;
    uint32_t count = s->nb_snapshots - 1;
    uint64_t *l1 = NULL;
    int r;

    if ((r = read_snap_l1(n, &sn, &l1)) < 0)
        return r;
    if (!(list = vd_calloc_array(count ? count : 1, sizeof(*list)))) {
        free(l1);
        return vd_error(ENOMEM, "out of memory");
    }
    memcpy(list, s->snaps, i * sizeof(*list));
    memcpy(list + i, s->snaps + i + 1, (count - i) * sizeof(*list));
    if ((r = install_table(n, list, count)) < 0) {
        free(list);
        free(l1);
        return r;
    }
    /* From here the snapshot is gone: what it alone held leaks until the
     * refcounts below are lowered. */
    r = walk_tree(n, l1, sn.l1_size, -1, false, NULL);
    if (r >= 0 && sn.l1_size)
        r = qcow2_free_clusters(n, sn.l1_offset, (uint64_t)sn.l1_size * 8);
    if (r >= 0)
        r = refresh_active_copied(n);
    free(l1);
    free(sn.id);
    free(sn.name);
    free(sn.extra_unknown);
    return r;
}

/* See qcow2.h. */
int qcow2_snapshot_delete(vd_node *n, const char *id, const char *name)
{
    struct qcow2_state *s = n->state;
    struct qc_inflight f;
    int r, i;

    pthread_mutex_lock(&s->lock);
    qcow2_inflight_begin(n, &f, 0, UINT64_MAX);
    if ((r = check_writable(n)) >= 0) {
        if ((i = find_snap(s, id, name)) < 0)
            r = vd_error(ENOENT, "Can't find the snapshot");
        else
            r = delete_index(n, (uint32_t)i);
    }
    qcow2_inflight_end(n, &f);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- goto ---- */

/* Switch the header to a new active L1 and guest size in one write. */
static int switch_active(vd_node *n, uint64_t size, uint32_t l1_size, uint64_t l1_off)
{
    struct qcow2_state *s = n->state;
    uint8_t b[QH_SIZE_TO_L1];

    be64_put(b, size);
    be32_put(b + 8, s->crypt_method);
    be32_put(b + 12, l1_size);
    be64_put(b + 16, l1_off);
    return vd_pwrite(n->file, QH_SIZE, sizeof(b), b, 0);
}

/* The new active L1: the snapshot's, without QC_COPIED, at least as
 * large as the current one and large enough for the snapshot's size. */
static int new_active_l1(vd_node *n, const struct qc_snapshot *sn, const uint64_t *snl1,
                         uint64_t **out, uint32_t *size)
{
    struct qcow2_state *s = n->state;
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);

    if (sn->disk_size > INT64_MAX ||
        div_round_up(sn->disk_size, per_l1) > VD_MAX(s->l1_size, sn->l1_size))
        return vd_error(EINVAL, "Snapshot '%s' has a disk size of %llu bytes that its "
                        "L1 table does not cover", sn->id,
                        (unsigned long long)sn->disk_size);
    *size = VD_MAX(s->l1_size, sn->l1_size);
    if (!(*out = vd_calloc_array(*size ? *size : 1, 8)))
        return vd_error(ENOMEM, "out of memory");
    for (uint32_t i = 0; i < sn->l1_size; i++)
        (*out)[i] = snl1[i] & ~QC_COPIED;
    return 0;
}

/* Write the new active L1 to fresh clusters and switch the header to it
 * (with the snapshot's size); the state follows. */
static int activate(vd_node *n, const struct qc_snapshot *sn, uint64_t *l1, uint32_t size)
{
    struct qcow2_state *s = n->state;
    uint8_t *buf = l1_buffer(l1, size);
    uint64_t off = 0;
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    r = size ? alloc_write(n, buf, (uint64_t)size * 8, &off) : 0;
    free(buf);
    if (r < 0 || (r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0 ||
        (r = switch_active(n, sn->disk_size, size, off)) < 0 || (r = vd_flush(n->file)) < 0)
        return r;
    s->l1 = l1;
    s->l1_size = size;
    s->l1_offset = off;
    s->size = sn->disk_size;
    return 0;
}

/* Make the tables of the snapshot the active ones, lock held. */
static int goto_locked(vd_node *n, const struct qc_snapshot *sn, uint64_t *snl1)
{
    struct qcow2_state *s = n->state;
    uint64_t *l1, *old = s->l1, old_off = s->l1_offset;
    uint32_t size = 0, old_size = s->l1_size;
    int r;

    if ((r = new_active_l1(n, sn, snl1, &l1, &size)) < 0)
        return r;
    /* Invariants 1 and 3: the references are raised and stable before
     * the new L1 is written and the header switches to it. */
    if ((r = walk_tree(n, snl1, sn->l1_size, 1, false, NULL)) < 0 ||
        (r = activate(n, sn, l1, size)) < 0) {
        free(l1);
        return r;
    }
    /* Invariant 4: the old tables lose their references only now. */
    r = walk_tree(n, old, old_size, -1, false, NULL);
    if (r >= 0 && old_size)
        r = qcow2_free_clusters(n, old_off, (uint64_t)old_size * 8);
    free(old);
    if (r >= 0)
        r = refresh_active_copied(n);
    return r;
}

/* See qcow2.h: by id first, then by name. */
int qcow2_snapshot_goto(vd_node *n, const char *id_or_name)
{
    struct qcow2_state *s = n->state;
    struct qc_inflight f;
    uint64_t *snl1 = NULL;
    int r, i;

    pthread_mutex_lock(&s->lock);
    qcow2_inflight_begin(n, &f, 0, UINT64_MAX);
    if ((r = check_writable(n)) >= 0) {
        if ((i = find_snap(s, id_or_name, NULL)) < 0)
            i = find_snap(s, NULL, id_or_name);
        if (i < 0)
            r = vd_error(ENOENT, "Can't find the snapshot");
        else if ((r = read_snap_l1(n, &s->snaps[i], &snl1)) >= 0)
            r = goto_locked(n, &s->snaps[i], snl1);
    }
    free(snl1);
    qcow2_inflight_end(n, &f);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- load (read-only) and list ---- */

/* Reads use the snapshot's L1 from now on; lock held or no other user. */
static int load_locked(vd_node *n, const char *id, const char *name)
{
    struct qcow2_state *s = n->state;
    uint64_t *l1;
    int r, i;

    if ((r = snaps_usable(n)) < 0)
        return r;
    if (!n->read_only)
        return vd_error(EINVAL, "Device is not readonly");
    if ((i = find_snap(s, id, name)) < 0)
        return vd_error(ENOENT, "Can't find snapshot");
    if ((r = read_snap_l1(n, &s->snaps[i], &l1)) < 0)
        return r;
    free(s->l1);
    s->l1 = l1;
    s->l1_size = s->snaps[i].l1_size;
    s->l1_offset = s->snaps[i].l1_offset;
    s->snap_loaded = true;
    return 0;
}

/* See qcow2.h. */
int qcow2_snapshot_load(vd_node *n, const char *id, const char *name)
{
    struct qcow2_state *s = n->state;
    int r;

    pthread_mutex_lock(&s->lock);
    r = load_locked(n, id, name);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* See qcow2.h. */
int qcow2_snapshot_list(vd_node *n, struct vd_snapshot_info **out)
{
    struct qcow2_state *s = n->state;
    struct vd_snapshot_info *l;
    int r = 0;

    *out = NULL;
    pthread_mutex_lock(&s->lock);
    if ((r = snaps_usable(n)) < 0 || !s->nb_snapshots)
        goto out;
    if (!(l = vd_calloc_array(s->nb_snapshots, sizeof(*l)))) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const struct qc_snapshot *sn = &s->snaps[i];
        l[i] = (struct vd_snapshot_info) {
            .id = strdup(sn->id), .name = strdup(sn->name),
            .vm_state_size = sn->vm_state_size, .date_sec = sn->date_sec,
            .date_nsec = sn->date_nsec, .vm_clock_nsec = sn->vm_clock_nsec,
            .icount = sn->icount, .disk_size = sn->disk_size,
        };
        if (!l[i].id || !l[i].name) {
            vd_snapshot_list_free(l, (int)i + 1);
            r = vd_error(ENOMEM, "out of memory");
            goto out;
        }
    }
    *out = l;
    r = (int)s->nb_snapshots;
out:
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- open ---- */

/* See qcow2.h. */
int qcow2_snapshot_reload(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    qcow2_snapshot_close(n);
    s->snap_error[0] = 0;
    if ((r = read_table(n)) < 0)
        snprintf(s->snap_error, sizeof(s->snap_error), "%s", vd_errmsg());
    return 0;
}

/* See qcow2.h.  A table QEMU refuses fails the open; in check mode
 * (VD_O_CHECK) the image opens and the snapshot operations fail. */
int qcow2_snapshot_open(vd_node *n, vd_opts *opts, int flags)
{
    struct qcow2_state *s = n->state;
    const char *id = vd_opts_get(opts, "snapshot.id");
    const char *name = vd_opts_get(opts, "snapshot.name");
    int r;

    if ((r = read_table(n)) < 0) {
        if (!(flags & VD_O_CHECK))
            return r;
        snprintf(s->snap_error, sizeof(s->snap_error), "%s", vd_errmsg());
    }
    r = id || name ? load_locked(n, id, name) : 0;
    if (r < 0)
        return vd_error_prefix(r, "Failed to load snapshot");
    vd_opts_del(opts, "snapshot.id");
    vd_opts_del(opts, "snapshot.name");
    return 0;
}
