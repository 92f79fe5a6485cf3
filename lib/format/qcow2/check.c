/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 consistency check and repair, reported as qemu-img check does.
 *
 * The walker is self-contained: it parses the header, the refcount table,
 * the snapshot table and the bitmap directory itself and reads every table
 * through the node's file child, so it never depends on the driver's caches.
 * It counts every reference to a host cluster in an in-memory refcount array
 * (same layout as an on-disk refcount block, refcount_bits wide) sized by the
 * file length, then compares it with the on-disk refcounts.
 *
 * Invariants kept by the repair paths:
 *  1. The in-memory array only ever grows by references that reach less than
 *     one cluster past the end of the file, or by clusters the repair itself
 *     allocates; so it stays proportional to the file.
 *  2. A refcount is changed on disk only when the refcount block holding it
 *     exists (refcount > 0); anything else asks for a rebuild.
 *  3. A rebuild writes the new refcount blocks and table into clusters that
 *     are free in the in-memory array, and switches the header to the new
 *     table only after both are written; the old structures then show up as
 *     leaks, which the same run frees.
 *
 * Per-problem lines go to stderr, as QEMU's driver prints them. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "vdisk/driver.h"
#include "check.h"

#define QCOW_MAGIC            0x514649fbu
#define MIN_CLUSTER_BITS      9
#define MAX_CLUSTER_BITS      21

#define INCOMPAT_DIRTY        (UINT64_C(1) << 0)
#define INCOMPAT_CORRUPT      (UINT64_C(1) << 1)
#define INCOMPAT_DATA_FILE    (UINT64_C(1) << 2)
#define INCOMPAT_COMPRESSION  (UINT64_C(1) << 3)
#define INCOMPAT_EXTL2        (UINT64_C(1) << 4)
#define INCOMPAT_KNOWN        UINT64_C(0x1f)
#define AUTOCLEAR_BITMAPS     (UINT64_C(1) << 0)

#define L1E_OFFSET_MASK       UINT64_C(0x00fffffffffffe00)
#define L1E_RESERVED_MASK     UINT64_C(0x7f000000000001ff)
#define L2E_OFFSET_MASK       UINT64_C(0x00fffffffffffe00)
#define L2E_STD_RESERVED_MASK UINT64_C(0x3f000000000001fe)
#define REFT_OFFSET_MASK      UINT64_C(0xfffffffffffffe00)
#define REFT_RESERVED_MASK    UINT64_C(0x1ff)
#define BME_OFFSET_MASK       UINT64_C(0x00fffffffffffe00)
#define BME_RESERVED_MASK     UINT64_C(0xff000000000001fe)
#define OFLAG_COPIED          (UINT64_C(1) << 63)
#define OFLAG_COMPRESSED      (UINT64_C(1) << 62)
#define OFLAG_ZERO            UINT64_C(1)
#define SUBCL_ALL_ALLOC       UINT64_C(0xffffffff)
#define SUBCL_ALL_ZERO        UINT64_C(0xffffffff00000000)

#define EXT_BITMAPS           0x23852875u
#define EXT_CRYPTO            0x0537be77u

/* Caps: the limits QEMU applies to these tables. */
#define MAX_L1_BYTES          (32u << 20)
#define MAX_REFTABLE_BYTES    (8u << 20)
#define MAX_SNAPSHOTS         65536u
#define MAX_SNAPSHOT_EXTRA    1024u
#define MAX_SNAPSHOTS_SIZE    (1024u * MAX_SNAPSHOTS)
#define MAX_BITMAPS           65535u
#define MAX_BITMAP_DIR_SIZE   (64u << 20)
#define MAX_BITMAP_TABLE      (1u << 24)     /* entries */
/* The in-memory refcount array never exceeds this. */
#define MAX_IMRT_BYTES        (UINT64_C(1) << 30)

/* Refcount blocks kept in memory at once (at most this many bytes): the
 * COPIED pass looks up the refcounts of data clusters in L2 order, which
 * jumps between blocks. */
#define RB_SLOTS              16
#define RB_SLOTS_BYTES        (1u << 20)

/* The fix bits of the check hook. */
#define FIX_LEAKS  1
#define FIX_ERRORS 2

enum ctype { CT_UNALLOC, CT_ZERO_PLAIN, CT_ZERO_ALLOC, CT_NORMAL, CT_COMPRESSED };

/* One snapshot table entry, as far as the check needs it. */
struct qsnap {
    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t id_off, name_off;       /* where the strings are in the file */
    uint16_t id_len, name_len;
};

/* Everything one check run knows. */
struct qchk {
    vd_node *n, *file;
    int fix;
    /* header */
    uint32_t version, cluster_bits, refcount_order, hdr_len;
    uint32_t l1_size, rt_clusters, nb_snapshots;
    uint64_t cs, size, l1_offset, rt_offset, snap_offset;
    uint64_t incompat, autoclear;
    bool ext_l2, data_file;
    uint64_t crypt_off, crypt_len;
    uint32_t nb_bitmaps;
    uint64_t bm_dir_size, bm_dir_off;
    /* derived */
    uint32_t l2_esize, rb_shift;
    uint64_t l2_entries, rc_max;
    unsigned csize_shift;
    uint64_t csize_mask, coff_mask;
    /* on-disk refcount table */
    uint64_t *rt, rt_entries;
    /* snapshot table */
    struct qsnap *snaps;
    uint64_t snaps_size;
    /* in-memory refcounts of nb clusters (refblock layout) */
    uint8_t *imrt;
    int64_t nb;
    /* the current refcount block (one of the slots), written back when
     * dirty before another becomes current; only it may be dirty */
    uint8_t *rb;
    uint64_t rb_off;
    bool rb_valid, rb_dirty;
    uint8_t *rb_mem;                 /* rb_nslots blocks */
    uint64_t rb_slot_off[RB_SLOTS];  /* 0: slot empty */
    unsigned rb_nslots;
    uint8_t *l2;                     /* one L2 table */
    bool signalled;
};

/* Print one per-problem line (stderr, as qemu-img check). */
static void __attribute__((format(printf, 1, 2))) report(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* ---- file access ---- */

static uint64_t file_len(const struct qchk *q)
{
    int64_t l = vd_getlength(q->file);
    return l < 0 ? 0 : (uint64_t)l;
}

/* Read [off, off+len); bytes past the end of the file read as zeroes, as
 * QEMU's block layer returns them.  -EIO when the range is not addressable. */
static int read_at(struct qchk *q, uint64_t off, uint64_t len, void *buf)
{
    uint64_t flen = file_len(q), end, part;
    int r;

    if (ADD_OVERFLOW(off, len, &end) || end > INT64_MAX)
        return vd_error(EIO, "qcow2: read at offset %#" PRIx64 " beyond any file",
                        off);
    part = off >= flen ? 0 : VD_MIN(len, flen - off);
    if (part && (r = vd_pread(q->file, off, part, buf, 0)) < 0)
        return r;
    memset((uint8_t *)buf + part, 0, len - part);
    return 0;
}

/* Write [off, off+len), growing the file first when it ends before. */
static int write_at(struct qchk *q, uint64_t off, uint64_t len, const void *buf)
{
    uint64_t end;
    int r;

    if (ADD_OVERFLOW(off, len, &end) || end > INT64_MAX)
        return vd_error(EIO, "qcow2: write at offset %#" PRIx64 " beyond any file",
                        off);
    if (end > file_len(q) &&
        (r = vd_truncate(q->file, end, false, VD_PREALLOC_OFF)) < 0)
        return r;
    for (unsigned i = 0; i < q->rb_nslots; i++) {
        uint64_t so = q->rb_slot_off[i];
        if (so && buf != q->rb_mem + (uint64_t)i * q->cs && so < end && off < so + q->cs) {
            q->rb_slot_off[i] = 0;
            if (q->rb_valid && q->rb_off == so)
                q->rb_valid = false;
        }
    }
    return vd_pwrite(q->file, off, len, buf, 0);
}

/* ---- refcount arrays (in memory and on disk share the layout) ---- */

/* Refcount i of an array in refcount block layout. */
static uint64_t rc_get(const struct qchk *q, const uint8_t *a, uint64_t i)
{
    unsigned order = q->refcount_order, bits = 1u << order;
    uint64_t v = 0;

    if (order < 3) {
        uint64_t bit = i << order;
        return (a[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1);
    }
    a += i * (bits / 8);
    for (unsigned k = 0; k < bits / 8; k++)
        v = v << 8 | a[k];
    return v;
}

/* Set refcount i of an array in refcount block layout (v <= rc_max). */
static void rc_set(const struct qchk *q, uint8_t *a, uint64_t i, uint64_t v)
{
    unsigned order = q->refcount_order, bits = 1u << order;

    if (order < 3) {
        uint64_t bit = i << order;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit & 7));
        a[bit >> 3] = (uint8_t)((a[bit >> 3] & ~mask) | ((v << (bit & 7)) & mask));
        return;
    }
    a += i * (bits / 8);
    for (int k = (int)(bits / 8) - 1; k >= 0; k--, v >>= 8)
        a[k] = (uint8_t)v;
}

/* Bytes of an in-memory array for nb clusters: whole refcount blocks. */
static uint64_t imrt_bytes(const struct qchk *q, int64_t nb)
{
    return div_round_up((uint64_t)nb, UINT64_C(1) << q->rb_shift) * q->cs;
}

/* Grow the in-memory array to cover nb clusters (zeroed). */
static int imrt_grow(struct qchk *q, struct vd_check_result *res, int64_t nb)
{
    uint64_t old = q->imrt ? imrt_bytes(q, q->nb) : 0;
    uint64_t bytes = imrt_bytes(q, VD_MAX(nb, 1));
    uint8_t *p;

    if (nb <= q->nb && q->imrt)
        return 0;
    if (nb > INT_MAX || bytes > MAX_IMRT_BYTES) {
        res->check_errors++;
        return vd_error(EFBIG, "qcow2: image file too large to check (%" PRId64
                        " clusters)", nb);
    }
    if (bytes != old) {
        if (!(p = realloc(q->imrt, bytes))) {
            res->check_errors++;
            return vd_error(ENOMEM, "qcow2: out of memory for %" PRIu64
                            " refcounts", (uint64_t)nb);
        }
        memset(p + old, 0, bytes - old);
        q->imrt = p;
    }
    q->nb = VD_MAX(nb, q->nb);
    return 0;
}

/* Count one reference to every cluster of [off, off+size). */
static int inc_refs(struct qchk *q, struct vd_check_result *res,
                    uint64_t off, uint64_t size)
{
    uint64_t flen = file_len(q), end, first, last;
    int r;

    if (!size)
        return 0;
    /* The last cluster may be partly written: less than a cluster past the
     * end of the file is fine. */
    if (ADD_OVERFLOW(off, size, &end) || (end > flen && end - flen >= q->cs)) {
        report("ERROR: counting reference for region exceeding the end of the "
               "file by one cluster or more: offset 0x%" PRIx64 " size 0x%"
               PRIx64 "\n", off, size);
        res->corruptions++;
        return 0;
    }
    first = off >> q->cluster_bits;
    last = (end - 1) >> q->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        uint64_t v;
        if ((int64_t)k >= q->nb && (r = imrt_grow(q, res, (int64_t)k + 1)) < 0)
            return r;
        v = rc_get(q, q->imrt, k);
        if (v == q->rc_max) {
            report("ERROR: overflow cluster offset=0x%" PRIx64 "\n"
                   "Use qemu-img amend to increase the refcount entry size\n",
                   k << q->cluster_bits);
            res->corruptions++;
            continue;
        }
        rc_set(q, q->imrt, k, v + 1);
    }
    return 0;
}

/* ---- on-disk refcounts ---- */

/* Note a corruption the way the driver signals one (printed once). */
static void signal_corruption(struct qchk *q, uint64_t rb_off, uint64_t idx)
{
    uint8_t b[8];

    if (q->signalled)
        return;
    q->signalled = true;
    if (!q->fix || q->version < 3) {
        report("qcow2: Image is corrupt: Refblock offset %#" PRIx64 " unaligned "
               "(reftable index: %#" PRIx64 "); further non-fatal corruption "
               "events will be suppressed\n", rb_off, idx);
        return;
    }
    report("qcow2: Marking image as corrupt: Refblock offset %#" PRIx64
           " unaligned (reftable index: %#" PRIx64 "); further corruption "
           "events will be suppressed\n", rb_off, idx);
    q->incompat |= INCOMPAT_CORRUPT;
    put_be64(b, q->incompat);
    (void)write_at(q, 72, 8, b);
}

/* Write the cached refcount block back if it changed. */
static int rb_flush(struct qchk *q)
{
    int r;

    if (!q->rb_dirty)
        return 0;
    vd_event(q->file, "refblock_update_part");
    if ((r = write_at(q, q->rb_off, q->cs, q->rb)) < 0)
        return r;
    q->rb_dirty = false;
    return 0;
}

/* Forget every kept refcount block. */
static void rb_forget(struct qchk *q)
{
    q->rb_valid = false;
    memset(q->rb_slot_off, 0, sizeof(q->rb_slot_off));
}

/* Make the refcount block at off the current one (read unless kept). */
static int rb_load(struct qchk *q, uint64_t off)
{
    unsigned slot = (unsigned)((off >> q->cluster_bits) % q->rb_nslots);
    int r;

    if (q->rb_valid && q->rb_off == off)
        return 0;
    if ((r = rb_flush(q)) < 0)
        return r;
    q->rb = q->rb_mem + (uint64_t)slot * q->cs;
    q->rb_off = off;
    q->rb_valid = q->rb_slot_off[slot] == off;
    if (q->rb_valid)
        return 0;
    q->rb_slot_off[slot] = 0;
    vd_event(q->file, "refblock_load");
    if ((r = read_at(q, off, q->cs, q->rb)) < 0)
        return r;
    q->rb_slot_off[slot] = off;
    q->rb_valid = true;
    return 0;
}

/* Where the on-disk refcount of a cluster lives: *rb_off is 0 when no
 * refcount block covers it (refcount 0). */
static int rb_locate(struct qchk *q, uint64_t cluster, uint64_t *rb_off)
{
    uint64_t idx = cluster >> q->rb_shift, off;

    *rb_off = 0;
    if (idx >= q->rt_entries)
        return 0;
    off = q->rt[idx] & REFT_OFFSET_MASK;
    if (off && !is_aligned(off, q->cs)) {
        signal_corruption(q, off, idx);
        return -EIO;
    }
    *rb_off = off;
    return 0;
}

/* The on-disk refcount of a cluster. */
static int disk_refcount(struct qchk *q, uint64_t cluster, uint64_t *val)
{
    uint64_t off;
    int r;

    *val = 0;
    if ((r = rb_locate(q, cluster, &off)) < 0 || !off)
        return r;
    if ((r = rb_load(q, off)) < 0)
        return r;
    *val = rc_get(q, q->rb, cluster & ((UINT64_C(1) << q->rb_shift) - 1));
    return 0;
}

/* Set the on-disk refcount of a cluster whose refcount block exists. */
static int disk_set_refcount(struct qchk *q, uint64_t cluster, uint64_t val)
{
    uint64_t off;
    int r;

    if ((r = rb_locate(q, cluster, &off)) < 0)
        return r;
    if (!off)
        return -EIO;
    if ((r = rb_load(q, off)) < 0)
        return r;
    rc_set(q, q->rb, cluster & ((UINT64_C(1) << q->rb_shift) - 1), val);
    q->rb_dirty = true;
    if (!val)                        /* freed: give the space back */
        (void)vd_discard(q->file, cluster << q->cluster_bits, q->cs);
    return 0;
}

/* ---- header and tables ---- */

/* Check the header fields the walk relies on. */
static int validate_header(struct qchk *q)
{
    uint64_t t;

    if (q->cluster_bits < MIN_CLUSTER_BITS || q->cluster_bits > MAX_CLUSTER_BITS)
        return vd_error(EINVAL, "qcow2: unsupported cluster size: 2^%" PRIu32,
                        q->cluster_bits);
    q->cs = UINT64_C(1) << q->cluster_bits;
    if (q->version >= 3 && (q->hdr_len < 104 || q->hdr_len > q->cs || q->hdr_len % 8))
        return vd_error(EINVAL, "qcow2: invalid header length %" PRIu32, q->hdr_len);
    if (q->refcount_order > 6)
        return vd_error(EINVAL, "qcow2: reference count entry width too large; "
                        "may not exceed 64 bits");
    if (q->incompat & ~INCOMPAT_KNOWN)
        return vd_error(ENOTSUP, "qcow2: unsupported incompatible features %#"
                        PRIx64, q->incompat & ~INCOMPAT_KNOWN);
    if (q->ext_l2 && q->cluster_bits < 14)
        return vd_error(EINVAL, "qcow2: extended L2 entries need clusters of "
                        "at least 16 KiB");
    if ((uint64_t)q->l1_size * 8 > MAX_L1_BYTES)
        return vd_error(EFBIG, "qcow2: active L1 table too large");
    if (!is_aligned(q->l1_offset, q->cs) || q->l1_offset > INT64_MAX - MAX_L1_BYTES)
        return vd_error(EINVAL, "qcow2: invalid L1 table offset");
    t = (uint64_t)q->rt_clusters << q->cluster_bits;
    if (t > MAX_REFTABLE_BYTES)
        return vd_error(EINVAL, "qcow2: reference count table too large");
    if (!is_aligned(q->rt_offset, q->cs) || q->rt_offset > INT64_MAX - t)
        return vd_error(EINVAL, "qcow2: invalid reference count table offset");
    return 0;
}

/* Parse the fixed header fields. */
static int parse_header(struct qchk *q)
{
    uint8_t h[104];
    int r;

    if ((r = read_at(q, 0, sizeof(h), h)) < 0)
        return r;
    if (be32(h) != QCOW_MAGIC)
        return vd_error(EINVAL, "qcow2: image is not in qcow2 format");
    q->version = be32(h + 4);
    if (q->version < 2 || q->version > 3)
        return vd_error(ENOTSUP, "qcow2: unsupported version %" PRIu32, q->version);
    q->cluster_bits = be32(h + 20);
    q->size = be64(h + 24);
    q->l1_size = be32(h + 36);
    q->l1_offset = be64(h + 40);
    q->rt_offset = be64(h + 48);
    q->rt_clusters = be32(h + 56);
    q->nb_snapshots = be32(h + 60);
    q->snap_offset = be64(h + 64);
    q->refcount_order = 4;
    q->hdr_len = 72;
    if (q->version >= 3) {
        q->incompat = be64(h + 72);
        q->autoclear = be64(h + 88);
        q->refcount_order = be32(h + 96);
        q->hdr_len = be32(h + 100);
    }
    q->ext_l2 = q->incompat & INCOMPAT_EXTL2;
    q->data_file = q->incompat & INCOMPAT_DATA_FILE;
    return validate_header(q);
}

/* Derive the table geometry from the header. */
static void derive(struct qchk *q)
{
    q->l2_esize = q->ext_l2 ? 16 : 8;
    q->l2_entries = q->cs / q->l2_esize;
    q->rb_shift = q->cluster_bits + 3 - q->refcount_order;
    q->rc_max = q->refcount_order == 6 ? UINT64_MAX
              : (UINT64_C(1) << (1u << q->refcount_order)) - 1;
    q->csize_shift = 62 - (q->cluster_bits - 8);
    q->csize_mask = (UINT64_C(1) << (q->cluster_bits - 8)) - 1;
    q->coff_mask = (UINT64_C(1) << q->csize_shift) - 1;
}

/* Note one header extension the check cares about. */
static void parse_extension(struct qchk *q, uint32_t type, const uint8_t *d,
                            uint32_t len)
{
    if (type == EXT_BITMAPS && len >= 24 && (q->autoclear & AUTOCLEAR_BITMAPS)) {
        q->nb_bitmaps = be32(d);
        q->bm_dir_size = be64(d + 8);
        q->bm_dir_off = be64(d + 16);
    } else if (type == EXT_CRYPTO && len >= 16) {
        q->crypt_off = be64(d);
        q->crypt_len = be64(d + 8);
    }
}

/* Walk the header extensions in the first cluster. */
static int parse_extensions(struct qchk *q)
{
    CLEANUP_FREE uint8_t *c = malloc(q->cs);
    uint64_t off = q->hdr_len, end = q->cs;
    int r;

    if (!c)
        return vd_error(ENOMEM, "qcow2: out of memory");
    if ((r = read_at(q, 0, q->cs, c)) < 0)
        return r;
    while (off + 8 <= end) {
        uint32_t type = be32(c + off), len = be32(c + off + 4);
        uint64_t padded;
        if (!type || len > end - off - 8)
            break;
        parse_extension(q, type, c + off + 8, len);
        padded = ((uint64_t)len + 7) & ~UINT64_C(7);
        off += 8 + padded;
    }
    if (q->nb_bitmaps > MAX_BITMAPS || q->bm_dir_size > MAX_BITMAP_DIR_SIZE ||
        (q->nb_bitmaps && !is_aligned(q->bm_dir_off, q->cs)))
        return vd_error(EINVAL, "qcow2: invalid bitmaps extension");
    return 0;
}

/* Load the refcount table into memory. */
static int load_reftable(struct qchk *q)
{
    uint64_t bytes = (uint64_t)q->rt_clusters << q->cluster_bits;
    CLEANUP_FREE uint8_t *buf = malloc(bytes ? bytes : 1);
    int r;

    q->rt_entries = bytes / 8;
    q->rt = vd_calloc_array(q->rt_entries, sizeof(uint64_t));
    if (!buf || !q->rt)
        return vd_error(ENOMEM, "qcow2: out of memory for the refcount table");
    vd_event(q->file, "reftable_load");
    if ((r = read_at(q, q->rt_offset, bytes, buf)) < 0)
        return r;
    for (uint64_t i = 0; i < q->rt_entries; i++)
        q->rt[i] = be64(buf + 8 * i);
    return 0;
}

/* Read one snapshot table entry at *off (advanced past it). */
static int read_snapshot(struct qchk *q, uint32_t i, uint64_t *off,
                         uint32_t *extra_size)
{
    struct qsnap *sn = &q->snaps[i];
    uint8_t h[40];
    uint32_t extra;
    int r;

    *off = (*off + 7) & ~UINT64_C(7);
    if ((r = read_at(q, *off, sizeof(h), h)) < 0)
        return r;
    sn->l1_offset = be64(h);
    sn->l1_size = be32(h + 8);
    sn->id_len = be16(h + 12);
    sn->name_len = be16(h + 14);
    extra = *extra_size = be32(h + 36);
    if (extra > MAX_SNAPSHOT_EXTRA)
        return vd_error(EFBIG, "Too much extra metadata in snapshot table "
                        "entry %" PRIu32, i);
    sn->id_off = *off + sizeof(h) + extra;
    sn->name_off = sn->id_off + sn->id_len;
    *off = sn->name_off + sn->name_len;
    if (*off - q->snap_offset > MAX_SNAPSHOTS_SIZE)
        return vd_error(EFBIG, "Snapshot table is too big");
    return 0;
}

/* Read the snapshot table (L1 locations and where the names are). */
static int load_snapshots(struct qchk *q, struct vd_check_result *res)
{
    uint64_t off = q->snap_offset;
    uint32_t extra;
    int r;

    if (!q->nb_snapshots)
        return 0;
    if (q->nb_snapshots > MAX_SNAPSHOTS) {
        res->check_errors++;
        report("ERROR snapshot table too large\nYou can force-remove all %" PRIu32
               " overhanging snapshots with qemu-img check -r all\n",
               q->nb_snapshots - MAX_SNAPSHOTS);
        return vd_error(EFBIG, "qcow2: snapshot table too large");
    }
    if (!is_aligned(q->snap_offset, q->cs) ||
        q->snap_offset > INT64_MAX - MAX_SNAPSHOTS_SIZE) {
        res->check_errors++;
        report("ERROR snapshot table offset invalid\n");
        return vd_error(EINVAL, "qcow2: snapshot table offset invalid");
    }
    if (!(q->snaps = vd_calloc_array(q->nb_snapshots, sizeof(*q->snaps))))
        return vd_error(ENOMEM, "qcow2: out of memory for the snapshot table");
    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        if ((r = read_snapshot(q, i, &off, &extra)) < 0) {
            res->check_errors++;
            report("Failed to read the snapshot table: %s\n", vd_errmsg());
            return r;
        }
        /* Version 3 entries carry at least the large VM state and disk size. */
        if (q->version >= 3 && extra < 16) {
            report("ERROR snapshot table entry %" PRIu32 " is incomplete\n", i);
            res->corruptions++;
        }
    }
    q->snaps_size = off - q->snap_offset;
    return 0;
}

/* Read a string of at most 1023 bytes for a message. */
static void read_name(struct qchk *q, uint64_t off, uint16_t len, char *buf)
{
    len = VD_MIN(len, 1023);
    if (read_at(q, off, len, buf) < 0)
        len = 0;
    buf[len] = '\0';
}

/* ---- L1/L2 walk ---- */

/* What an L2 entry describes. */
static enum ctype cluster_type(const struct qchk *q, uint64_t e)
{
    if (e & OFLAG_COMPRESSED)
        return CT_COMPRESSED;
    if ((e & OFLAG_ZERO) && !q->ext_l2)
        return (e & L2E_OFFSET_MASK) ? CT_ZERO_ALLOC : CT_ZERO_PLAIN;
    if (!(e & L2E_OFFSET_MASK))
        return q->data_file && (e & OFLAG_COPIED) ? CT_NORMAL : CT_UNALLOC;
    return CT_NORMAL;
}

/* Count a compressed cluster. */
static int walk_compressed(struct qchk *q, struct vd_check_result *res, int i,
                           uint64_t e, uint64_t bm, bool frag)
{
    uint64_t coff, nsect, csize;

    if (e & OFLAG_COPIED) {
        report("ERROR: coffset=0x%" PRIx64 ": copied flag must never be set for "
               "compressed clusters\n", e & q->coff_mask);
        e &= ~OFLAG_COPIED;
        res->corruptions++;
    }
    if (q->data_file) {
        report("ERROR compressed cluster %d with data file, entry=0x%" PRIx64 "\n",
               i, e);
        res->corruptions++;
        return 0;
    }
    if (bm) {
        report("ERROR compressed cluster %d with non-zero subcluster allocation "
               "bitmap, entry=0x%" PRIx64 "\n", i, e);
        res->corruptions++;
        return 0;
    }
    coff = e & q->coff_mask;
    nsect = ((e >> q->csize_shift) & q->csize_mask) + 1;
    csize = nsect * 512 - (coff & 511);
    if (frag) {
        res->allocated_clusters++;
        res->compressed_clusters++;
        res->fragmented_clusters++;   /* sub-sector data: always re-read */
    }
    return inc_refs(q, res, coff, csize);
}

/* Turn a misaligned preallocated entry into a plain zero cluster. */
static int repair_prealloc(struct qchk *q, struct vd_check_result *res,
                           uint64_t l2_off, int i)
{
    uint8_t e[16] = { 0 };
    uint64_t at = l2_off + (uint64_t)i * q->l2_esize;
    int r;

    if (q->ext_l2)
        put_be64(e + 8, SUBCL_ALL_ZERO);
    else
        put_be64(e, OFLAG_ZERO);
    memcpy(q->l2 + (uint64_t)i * q->l2_esize, e, q->l2_esize);
    vd_event(q->file, "l2_update");
    if ((r = write_at(q, at, q->l2_esize, e)) < 0 ||
        (r = vd_flush(q->file)) < 0) {
        report("ERROR: Failed to overwrite L2 table entry: %s\n", strerror(-r));
        res->check_errors++;
        return r;
    }
    res->corruptions--;
    res->corruptions_fixed++;
    return 0;
}

/* Check and count a standard (or preallocated zero) cluster.  Returns 1
 * when a repair made the entry unallocated. */
static int walk_standard(struct qchk *q, struct vd_check_result *res,
                         uint64_t l2_off, int i, uint64_t e, uint64_t bm,
                         bool frag, uint64_t *next)
{
    uint64_t off = e & L2E_OFFSET_MASK;

    if ((bm >> 32) & bm) {
        res->corruptions++;
        report("ERROR offset=%" PRIx64 ": Allocated cluster has corrupted "
               "subcluster allocation bitmap\n", off);
    }
    if (!is_aligned(off, q->cs)) {
        bool data = q->ext_l2 ? (bm & SUBCL_ALL_ALLOC) : !(e & OFLAG_ZERO);
        res->corruptions++;
        if (data) {
            report("ERROR offset=%" PRIx64 ": Data cluster is not properly "
                   "aligned; L2 entry corrupted.\n", off);
        } else {
            report("%s offset=%" PRIx64 ": Preallocated cluster is not properly "
                   "aligned; L2 entry corrupted.\n",
                   q->fix & FIX_ERRORS ? "Repairing" : "ERROR", off);
            if ((q->fix & FIX_ERRORS) && repair_prealloc(q, res, l2_off, i) == 0)
                return 1;
        }
    }
    if (frag) {
        res->allocated_clusters++;
        if (*next && off != *next)
            res->fragmented_clusters++;
        *next = off + q->cs;
    }
    if (q->data_file)
        return 0;
    return inc_refs(q, res, off, q->cs);
}

/* Check one L2 table and count what it references. */
static int walk_l2(struct qchk *q, struct vd_check_result *res, uint64_t l2_off,
                   bool frag)
{
    uint64_t next = 0;
    int r;

    vd_event(q->file, "l2_load");
    if ((r = read_at(q, l2_off, q->cs, q->l2)) < 0) {
        report("ERROR: I/O error in check_refcounts_l2\n");
        res->check_errors++;
        return r;
    }
    for (uint64_t i = 0; i < q->l2_entries; i++) {
        const uint8_t *p = q->l2 + i * q->l2_esize;
        uint64_t e = be64(p), bm = q->ext_l2 ? be64(p + 8) : 0;
        enum ctype t = cluster_type(q, e);

        if (t != CT_COMPRESSED && (e & L2E_STD_RESERVED_MASK)) {
            report("ERROR found l2 entry with reserved bits set: %" PRIx64 "\n", e);
            res->corruptions++;
        }
        r = 0;
        if (t == CT_COMPRESSED)
            r = walk_compressed(q, res, (int)i, e, bm, frag);
        else if (t == CT_NORMAL || t == CT_ZERO_ALLOC)
            r = walk_standard(q, res, l2_off, (int)i, e, bm, frag, &next);
        else if (t == CT_UNALLOC && (bm & SUBCL_ALL_ALLOC)) {
            res->corruptions++;
            report("ERROR: Unallocated cluster has non-zero subcluster "
                   "allocation map\n");
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* Read an L1 table of n entries (n * 8 <= MAX_L1_BYTES). */
static int read_l1(struct qchk *q, uint64_t off, uint32_t n, uint64_t **out)
{
    uint64_t *t;
    int r;

    *out = NULL;
    if ((r = vd_untrusted_table_check(q->n, (uint64_t)n * 8, "qcow2 L1 table")) < 0)
        return r;
    if (!(t = vd_calloc_array(n, sizeof(uint64_t))))
        return vd_error(ENOMEM, "qcow2: out of memory for an L1 table");
    if ((r = read_at(q, off, (uint64_t)n * 8, t)) < 0) {
        free(t);
        return r;
    }
    for (uint32_t i = 0; i < n; i++)
        t[i] = be64((const uint8_t *)&t[i]);
    *out = t;
    return 0;
}

/* Check an L1 table and the L2 tables it points to. */
static int walk_l1(struct qchk *q, struct vd_check_result *res, uint64_t l1_off,
                   uint32_t l1_size, bool frag)
{
    CLEANUP_FREE uint64_t *l1 = NULL;
    int r;

    if (!l1_size)
        return 0;
    if ((r = inc_refs(q, res, l1_off, (uint64_t)l1_size * 8)) < 0)
        return r;
    if ((r = read_l1(q, l1_off, l1_size, &l1)) < 0) {
        report("ERROR: I/O error in check_refcounts_l1\n");
        res->check_errors++;
        return r;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2_off = l1[i] & L1E_OFFSET_MASK;
        if (!l1[i])
            continue;
        if (l1[i] & L1E_RESERVED_MASK) {
            report("ERROR found L1 entry with reserved bits set: %" PRIx64 "\n", l1[i]);
            res->corruptions++;
        }
        if ((r = inc_refs(q, res, l2_off, q->cs)) < 0)
            return r;
        if (!is_aligned(l2_off, q->cs)) {
            report("ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; "
                   "L1 entry corrupted\n", l2_off);
            res->corruptions++;
        }
        if ((r = walk_l2(q, res, l2_off, frag)) < 0)
            return r;
    }
    return 0;
}

/* Check every snapshot's L1 table, then count the snapshot table. */
static int walk_snapshots(struct qchk *q, struct vd_check_result *res)
{
    char id[1024], name[1024];
    int r;

    if (q->data_file && q->nb_snapshots) {
        report("ERROR %" PRIu32 " snapshots in image with data file\n",
               q->nb_snapshots);
        res->corruptions++;
    }
    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        const struct qsnap *sn = &q->snaps[i];
        bool bad_off = !is_aligned(sn->l1_offset, q->cs);
        if (bad_off || (uint64_t)sn->l1_size * 8 > MAX_L1_BYTES) {
            read_name(q, sn->id_off, sn->id_len, id);
            read_name(q, sn->name_off, sn->name_len, name);
            if (bad_off)
                report("ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is "
                       "not cluster aligned; snapshot table entry corrupted\n",
                       id, name, sn->l1_offset);
            else
                report("ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is "
                       "too large; snapshot table entry corrupted\n",
                       id, name, sn->l1_size);
            res->corruptions++;
            continue;
        }
        if ((r = walk_l1(q, res, sn->l1_offset, sn->l1_size, false)) < 0)
            return r;
    }
    return inc_refs(q, res, q->snap_offset, q->snaps_size);
}

/* Count the clusters of one bitmap: its table and its data. */
static int walk_bitmap_table(struct qchk *q, struct vd_check_result *res,
                             uint64_t off, uint32_t n)
{
    CLEANUP_FREE uint64_t *t = NULL;
    int r;

    if ((r = inc_refs(q, res, off, (uint64_t)n * 8)) < 0)
        return r;
    if (n > MAX_BITMAP_TABLE || !is_aligned(off, q->cs) ||
        read_l1(q, off, n, &t) < 0) {
        res->corruptions++;
        return 1;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint64_t e = t[i], d = e & BME_OFFSET_MASK;
        if ((e & BME_RESERVED_MASK) || (d && (!is_aligned(d, q->cs) || (e & 1)))) {
            /* QEMU cannot load such a table: the check itself fails. */
            res->corruptions++;
            return vd_error(EINVAL, "qcow2: invalid bitmap table entry 0x%" PRIx64, e);
        }
        if (d && (r = inc_refs(q, res, d, q->cs)) < 0)
            return r;
    }
    return 0;
}

/* Count the bitmap directory and every bitmap it lists. */
static int walk_bitmaps(struct qchk *q, struct vd_check_result *res)
{
    CLEANUP_FREE uint8_t *dir = NULL;
    uint64_t pos = 0;
    int r;

    if (!q->nb_bitmaps)
        return 0;
    if ((r = inc_refs(q, res, q->bm_dir_off, q->bm_dir_size)) < 0 ||
        (r = vd_untrusted_table_check(q->n, q->bm_dir_size, "qcow2 bitmap directory")) < 0)
        return r;
    if (!(dir = malloc(q->bm_dir_size ? q->bm_dir_size : 1)) ||
        read_at(q, q->bm_dir_off, q->bm_dir_size, dir) < 0)
        goto bad;
    for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
        uint64_t len;
        if (q->bm_dir_size - pos < 24)
            goto bad;
        len = 24 + (uint64_t)be32(dir + pos + 20) + be16(dir + pos + 18);
        len = (len + 7) & ~UINT64_C(7);
        if (len > q->bm_dir_size - pos)
            goto bad;
        r = walk_bitmap_table(q, res, be64(dir + pos), be32(dir + pos + 8));
        if (r < 0)
            return r;
        if (r > 0)
            break;
        pos += len;
    }
    return 0;
bad:
    res->corruptions++;
    return vd_error(EINVAL, "qcow2: invalid bitmap directory");
}

/* The refcount table entry i's block is past the end: grow the file so it
 * is inside, and count it.  Returns 1 when that failed (rebuild needed). */
static int repair_outside_refblock(struct qchk *q, struct vd_check_result *res,
                                   uint64_t off)
{
    int r = -EINVAL;

    if (off <= INT64_MAX - q->cs)
        r = vd_truncate(q->file, off + q->cs, false, VD_PREALLOC_OFF);
    if (r >= 0) {
        int64_t nb = (int64_t)div_round_up(file_len(q), q->cs);
        if ((r = imrt_grow(q, res, nb)) < 0)
            return r;
        if ((int64_t)(off >> q->cluster_bits) >= q->nb)
            r = -EINVAL;
    }
    if (r < 0) {
        report("ERROR could not resize image: %s\n", strerror(-r));
        return 1;
    }
    res->corruptions--;
    res->corruptions_fixed++;
    return inc_refs(q, res, off, q->cs);
}

/* Check the refcount table entries and count the refcount blocks. */
static int check_refblocks(struct qchk *q, struct vd_check_result *res,
                           bool *rebuild)
{
    int r;

    for (uint64_t i = 0; i < q->rt_entries; i++) {
        uint64_t off = q->rt[i] & REFT_OFFSET_MASK, c = off >> q->cluster_bits;
        if (q->rt[i] & REFT_RESERVED_MASK) {
            report("ERROR refcount table entry %" PRIu64 " has reserved bits set\n", i);
            res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (!is_aligned(off, q->cs)) {
            report("ERROR refcount block %" PRIu64 " is not cluster aligned; "
                   "refcount table entry corrupted\n", i);
            res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (c >= (uint64_t)q->nb) {
            res->corruptions++;
            report("%s refcount block %" PRIu64 " is outside image\n",
                   q->fix & FIX_ERRORS ? "Repairing" : "ERROR", i);
            if (q->fix & FIX_ERRORS) {
                if ((r = repair_outside_refblock(q, res, off)) < 0)
                    return r;
                if (r > 0)
                    *rebuild = true;
            }
            continue;
        }
        if (!off)
            continue;
        if ((r = inc_refs(q, res, off, q->cs)) < 0)
            return r;
        if (rc_get(q, q->imrt, c) != 1) {
            report("ERROR refcount block %" PRIu64 " refcount=%" PRIu64 "\n",
                   i, rc_get(q, q->imrt, c));
            res->corruptions++;
            *rebuild = true;
        }
    }
    return 0;
}

/* Count every reference in the image into the in-memory array. */
static int calculate(struct qchk *q, struct vd_check_result *res, bool *rebuild)
{
    int r;

    if ((r = inc_refs(q, res, 0, q->cs)) < 0 ||
        (r = walk_l1(q, res, q->l1_offset, q->l1_size, true)) < 0 ||
        (r = walk_snapshots(q, res)) < 0 ||
        (r = inc_refs(q, res, q->rt_offset, q->rt_entries * 8)) < 0 ||
        (r = inc_refs(q, res, q->crypt_off, q->crypt_len)) < 0 ||
        (r = walk_bitmaps(q, res)) < 0)
        return r;
    return check_refblocks(q, res, rebuild);
}

/* Compare the counted references with the on-disk refcounts, repairing
 * what fix allows. */
static int compare(struct qchk *q, struct vd_check_result *res, int fix,
                   bool *rebuild, int64_t *highest)
{
    *highest = 0;
    for (int64_t i = 0; i < q->nb; i++) {
        uint64_t r1, r2 = rc_get(q, q->imrt, (uint64_t)i);
        int64_t *fixed = NULL;
        int r = disk_refcount(q, (uint64_t)i, &r1);

        if (r < 0) {
            report("Can't get refcount for cluster %" PRId64 ": %s\n", i, strerror(-r));
            res->check_errors++;
            continue;
        }
        if (r1 || r2)
            *highest = i;
        if (r1 == r2)
            continue;
        if (!r1)
            *rebuild = true;
        else if (r1 > r2 && (fix & FIX_LEAKS))
            fixed = &res->leaks_fixed;
        else if (r1 < r2 && (fix & FIX_ERRORS))
            fixed = &res->corruptions_fixed;
        report("%s cluster %" PRId64 " refcount=%" PRIu64 " reference=%" PRIu64 "\n",
               fixed ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked", i, r1, r2);
        if (fixed && disk_set_refcount(q, (uint64_t)i, r2) >= 0) {
            (*fixed)++;
            continue;
        }
        if (r1 < r2)
            res->corruptions++;
        else
            res->leaks++;
    }
    if (rb_flush(q) < 0) {
        res->check_errors++;
        return -EIO;
    }
    return 0;
}

/* ---- rebuilding the refcount structure ---- */

/* Allocate n contiguous clusters free in the in-memory array, first fit from
 * *first_free (updated); grows the array past its end when needed. */
static int64_t alloc_clusters(struct qchk *q, struct vd_check_result *res,
                              uint64_t n, int64_t *first_free)
{
    int64_t c = *first_free;
    uint64_t run = 0;
    bool seen_free = false;
    int r;

    for (; c < q->nb && run < n; c++) {
        if (rc_get(q, q->imrt, (uint64_t)c)) {
            run = 0;
            continue;
        }
        if (!seen_free) {
            *first_free = c;
            seen_free = true;
        }
        run++;
    }
    if (run < n && (r = imrt_grow(q, res, c + (int64_t)(n - run))) < 0)
        return r;
    c -= (int64_t)run;
    for (uint64_t k = 0; k < n; k++)
        rc_set(q, q->imrt, (uint64_t)c + k, 1);
    return c;
}

/* The new refcount table being built. */
struct newrt {
    uint64_t *e;
    uint64_t n;
};

/* Make sure the new refcount table has entry idx (whole clusters of it). */
static int newrt_reserve(struct qchk *q, struct newrt *t, uint64_t idx)
{
    uint64_t n = div_round_up((idx + 1) * 8, q->cs) * q->cs / 8;
    uint64_t *p;

    if (idx < t->n)
        return 0;
    if (!(p = realloc(t->e, n * 8)))
        return vd_error(ENOMEM, "ERROR allocating reftable memory");
    memset(p + t->n, 0, (n - t->n) * 8);
    t->e = p;
    t->n = n;
    return 1;
}

/* Give every refcount block with a non-zero entry among clusters
 * [first, end) a home and write it from the in-memory array.  Returns 1
 * when the new refcount table grew, 0 when not, -errno on error. */
static int write_refblocks(struct qchk *q, struct vd_check_result *res,
                           struct newrt *t, int64_t first, int64_t end)
{
    int64_t first_free = 0;
    int grown = 0, r;

    for (int64_t c = first; c < end; c++) {
        uint64_t idx = (uint64_t)c >> q->rb_shift;
        int64_t start = (int64_t)(idx << q->rb_shift);
        if (!rc_get(q, q->imrt, (uint64_t)c))
            continue;
        if (idx >= t->n || !t->e[idx]) {
            int64_t at;
            first_free = VD_MAX(first_free, start);
            if ((at = alloc_clusters(q, res, 1, &first_free)) < 0)
                return (int)at;
            end = VD_MAX(end, at + 1);
            if ((r = newrt_reserve(q, t, idx)) < 0)
                return r;
            grown |= r;
            t->e[idx] = (uint64_t)at << q->cluster_bits;
        }
        vd_event(q->file, "refblock_alloc_write");
        if ((r = write_at(q, t->e[idx], q->cs, q->imrt + idx * q->cs)) < 0) {
            report("ERROR writing refblock: %s\n", strerror(-r));
            return r;
        }
        c = start + (1LL << q->rb_shift) - 1;
    }
    return grown;
}

/* Write the new refcount table and point the header at it. */
static int switch_reftable(struct qchk *q, struct newrt *t, int64_t at,
                           uint64_t clusters)
{
    uint64_t bytes = t->n * 8, off = (uint64_t)at << q->cluster_bits;
    CLEANUP_FREE uint8_t *buf = calloc(1, bytes);
    uint8_t h[12];
    int r;

    if (!buf)
        return vd_error(ENOMEM, "qcow2: out of memory");
    for (uint64_t i = 0; i < t->n; i++)
        put_be64(buf + 8 * i, t->e[i]);
    vd_event(q->file, "reftable_grow");
    if ((r = write_at(q, off, bytes, buf)) < 0 || (r = vd_flush(q->file)) < 0) {
        report("ERROR writing reftable: %s\n", strerror(-r));
        return r;
    }
    put_be64(h, off);
    put_be32(h + 8, (uint32_t)clusters);
    vd_event(q->file, "reftable_update");
    if ((r = write_at(q, 48, sizeof(h), h)) < 0 || (r = vd_flush(q->file)) < 0) {
        report("ERROR setting reftable: %s\n", strerror(-r));
        return r;
    }
    free(q->rt);
    q->rt = t->e;
    q->rt_entries = t->n;
    q->rt_offset = off;
    q->rt_clusters = (uint32_t)clusters;
    t->e = NULL;
    return 0;
}

/* Write fresh refcount blocks and a fresh table from the in-memory array. */
static int rebuild_refcounts(struct qchk *q, struct vd_check_result *res)
{
    struct newrt t = { NULL, 0 };
    int64_t at = -1;
    uint64_t clusters = 0;
    int r;

    report("Rebuilding refcount structure\n");
    if ((r = rb_flush(q)) < 0)
        return r;
    rb_forget(q);
    r = write_refblocks(q, res, &t, 0, q->nb);
    /* Each pass places the table, then rewrites the refcount blocks its
     * clusters fall in; a grown table needs a new place. */
    while (r > 0) {
        int64_t first_free = 0;
        clusters = div_round_up(t.n * 8, q->cs);
        if (clusters > MAX_REFTABLE_BYTES >> q->cluster_bits) {
            r = vd_error(EFBIG, "ERROR reftable too large");
            break;
        }
        if ((at = alloc_clusters(q, res, clusters, &first_free)) < 0) {
            r = (int)at;
            break;
        }
        r = write_refblocks(q, res, &t, at, at + (int64_t)clusters);
    }
    if (r == 0 && at >= 0)
        r = switch_reftable(q, &t, at, clusters);
    free(t.e);
    return r;
}

/* ---- OFLAG_COPIED ---- */

/* Would writing an L2 table at off hit other metadata? */
static bool overlaps_metadata(const struct qchk *q, uint64_t off)
{
    uint64_t c = off >> q->cluster_bits;

    if (!is_aligned(off, q->cs) || c == 0)
        return true;
    if (off >= q->rt_offset && off - q->rt_offset < q->rt_entries * 8)
        return true;
    if (off >= q->l1_offset && off - q->l1_offset < (uint64_t)q->l1_size * 8)
        return true;
    for (uint64_t i = 0; i < q->rt_entries; i++)
        if ((q->rt[i] & REFT_OFFSET_MASK) == off)
            return true;
    return false;
}

/* Check (and maybe set right) the COPIED flags of one L2 table's entries. */
static int check_copied_l2(struct qchk *q, struct vd_check_result *res,
                           uint64_t l2_off, bool repair)
{
    int dirty = 0, r;

    if ((r = read_at(q, l2_off, q->cs, q->l2)) < 0) {
        report("ERROR: Could not read L2 table: %s\n", strerror(-r));
        res->check_errors++;
        return r;
    }
    for (uint64_t j = 0; j < q->l2_entries; j++) {
        uint8_t *p = q->l2 + j * q->l2_esize;
        uint64_t e = be64(p), rc = 1;
        enum ctype t = cluster_type(q, e);
        if (t != CT_NORMAL && t != CT_ZERO_ALLOC)
            continue;
        if (!q->data_file &&
            disk_refcount(q, (e & L2E_OFFSET_MASK) >> q->cluster_bits, &rc) < 0)
            continue;
        if ((rc == 1) == !!(e & OFLAG_COPIED))
            continue;
        res->corruptions++;
        report("%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
               PRIu64 "\n", repair ? "Repairing" : "ERROR", e, rc);
        if (repair) {
            put_be64(p, rc == 1 ? e | OFLAG_COPIED : e & ~OFLAG_COPIED);
            dirty++;
        }
    }
    if (!dirty)
        return 0;
    if (overlaps_metadata(q, l2_off)) {
        report("ERROR: Could not write L2 table; metadata overlap check failed: "
               "%s\n", strerror(EIO));
        res->check_errors++;
        return -EIO;
    }
    vd_event(q->file, "l2_update");
    if ((r = write_at(q, l2_off, q->cs, q->l2)) < 0) {
        report("ERROR: Could not write L2 table: %s\n", strerror(-r));
        res->check_errors++;
        return r;
    }
    res->corruptions -= dirty;
    res->corruptions_fixed += dirty;
    return 0;
}

/* Check that COPIED is set exactly where the refcount is 1 (active L1 and
 * the L2 tables it points to). */
static int check_copied(struct qchk *q, struct vd_check_result *res)
{
    CLEANUP_FREE uint64_t *l1 = NULL;
    bool repair = (q->fix & FIX_ERRORS) ||
                  ((q->fix & FIX_LEAKS) && !res->check_errors &&
                   !res->corruptions && !res->leaks);
    int r;

    if (q->l1_size && (r = read_l1(q, q->l1_offset, q->l1_size, &l1)) < 0) {
        res->check_errors++;
        return r;
    }
    for (uint32_t i = 0; i < q->l1_size; i++) {
        uint64_t e = l1[i], l2_off = e & L1E_OFFSET_MASK, rc;
        if (!l2_off || disk_refcount(q, l2_off >> q->cluster_bits, &rc) < 0)
            continue;
        if ((rc == 1) != !!(e & OFLAG_COPIED)) {
            res->corruptions++;
            report("%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32 " l1_entry=%"
                   PRIx64 " refcount=%" PRIu64 "\n",
                   repair ? "Repairing" : "ERROR", i, e, rc);
            if (repair) {
                uint8_t b[8];
                put_be64(b, rc == 1 ? e | OFLAG_COPIED : e & ~OFLAG_COPIED);
                vd_event(q->file, "l1_update");
                if ((r = write_at(q, q->l1_offset + UINT64_C(8) * i, 8, b)) < 0) {
                    res->check_errors++;
                    return r;
                }
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        if ((r = check_copied_l2(q, res, l2_off, repair)) < 0)
            return r;
    }
    return 0;
}

/* ---- the check ---- */

/* After a rebuild: count again, free the old structures, and account what
 * the rebuild fixed. */
static int after_rebuild(struct qchk *q, struct vd_check_result *res,
                         int64_t *highest)
{
    struct vd_check_result old = *res, saved;
    int64_t fresh = 0;
    bool rebuild = false;
    int r;

    if ((r = rebuild_refcounts(q, res)) < 0)
        return r;
    res->corruptions = 0;
    res->leaks = 0;
    memset(q->imrt, 0, imrt_bytes(q, q->nb));
    if ((r = calculate(q, res, &rebuild)) < 0)
        return r;
    if (q->fix & FIX_LEAKS) {
        saved = *res;
        memset(res, 0, sizeof(*res));
        r = compare(q, res, FIX_LEAKS, &rebuild, highest);
        if (rebuild)
            report("ERROR rebuilt refcount structure is still broken\n");
        fresh = res->leaks;
        *res = saved;
        if (r < 0)
            return r;
    }
    if (res->corruptions < old.corruptions)
        res->corruptions_fixed += old.corruptions - res->corruptions;
    if (res->leaks < old.leaks)
        res->leaks_fixed += old.leaks - res->leaks;
    res->leaks += fresh;
    return 0;
}

/* Count, compare, repair: the refcount part of the check. */
static int check_refcounts(struct qchk *q, struct vd_check_result *res)
{
    struct vd_check_result pre;
    uint64_t vsize;
    int64_t highest = 0;
    bool rebuild = false;
    int r;

    if (!round_up_checked(q->size, 512, &vsize))
        vsize = UINT64_MAX & ~UINT64_C(511);
    res->total_clusters = div_round_up(vsize, q->cs);
    if ((r = imrt_grow(q, res, (int64_t)div_round_up(file_len(q), q->cs))) < 0)
        return r;
    if ((r = calculate(q, res, &rebuild)) < 0)
        return r;
    pre = *res;
    if ((r = compare(q, res, 0, &rebuild, &highest)) < 0)
        return r;
    if (rebuild && (q->fix & FIX_ERRORS)) {
        if ((r = after_rebuild(q, res, &highest)) < 0)
            return r;
    } else if (q->fix) {
        if (rebuild) {
            report("ERROR need to rebuild refcount structures\n");
            res->check_errors++;
            return -EIO;
        }
        if (res->leaks || res->corruptions) {
            *res = pre;
            if ((r = compare(q, res, q->fix, &rebuild, &highest)) < 0)
                return r;
        }
    }
    if ((r = check_copied(q, res)) < 0)
        return r;
    res->image_end_offset = (highest + 1) * (int64_t)q->cs;
    return 0;
}

/* Clear the dirty and corrupt bits after a successful repair. */
static int mark_clean(struct qchk *q)
{
    uint8_t b[8];
    uint64_t v;
    int r;

    if (q->version < 3)
        return 0;
    if ((r = read_at(q, 72, 8, b)) < 0)
        return r;
    v = be64(b);
    if (!(v & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)))
        return 0;
    if ((r = vd_flush(q->file)) < 0)
        return r;
    put_be64(b, v & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT));
    vd_event(q->file, "pwritev");
    if ((r = write_at(q, 72, 8, b)) < 0)
        return r;
    return vd_flush(q->file);
}

/* Add the counters of b to a (and its allocation figures when asked). */
static void add_result(struct vd_check_result *a, const struct vd_check_result *b,
                       bool alloc)
{
    a->corruptions += b->corruptions;
    a->leaks += b->leaks;
    a->check_errors += b->check_errors;
    a->corruptions_fixed += b->corruptions_fixed;
    a->leaks_fixed += b->leaks_fixed;
    if (alloc) {
        a->image_end_offset = b->image_end_offset;
        a->total_clusters = b->total_clusters;
        a->allocated_clusters = b->allocated_clusters;
        a->fragmented_clusters = b->fragmented_clusters;
        a->compressed_clusters = b->compressed_clusters;
    }
}

/* Read the header, extensions, refcount and snapshot tables. */
static int load(struct qchk *q, struct vd_check_result *sres)
{
    int r;

    if ((r = parse_header(q)) < 0) {
        sres->check_errors++;
        return r;
    }
    derive(q);
    if ((r = parse_extensions(q)) < 0 || (r = load_reftable(q)) < 0) {
        sres->check_errors++;
        return r;
    }
    q->rb_nslots = (unsigned)VD_MAX(1u, VD_MIN((uint64_t)RB_SLOTS, RB_SLOTS_BYTES / q->cs));
    if (!(q->rb_mem = vd_calloc_array(q->rb_nslots, q->cs)) || !(q->l2 = malloc(q->cs))) {
        sres->check_errors++;
        return vd_error(ENOMEM, "qcow2: out of memory");
    }
    return load_snapshots(q, sres);
}

/* Free a check run's memory. */
static void release(struct qchk *q)
{
    free(q->rt);
    free(q->snaps);
    free(q->imrt);
    free(q->rb_mem);
    free(q->l2);
}

int qcow2_check(vd_node *n, struct vd_check_result *res, int fix)
{
    struct qchk q = { .n = n, .file = n->file, .fix = fix };
    struct vd_check_result sres = { 0 }, rres = { 0 };
    int r;

    memset(res, 0, sizeof(*res));
    if (!q.file)
        return vd_error(ENOTSUP, "qcow2: no file to check");
    if ((r = load(&q, &sres)) < 0) {
        add_result(res, &sres, false);
        release(&q);
        return r;
    }
    r = check_refcounts(&q, &rres);
    add_result(res, &rres, true);
    add_result(res, &sres, false);
    if (r >= 0 && fix && !res->check_errors && !res->corruptions)
        r = mark_clean(&q);
    if (r >= 0 && fix)
        r = vd_flush(q.file);
    release(&q);
    return r < 0 ? r : 0;
}
