/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: persistent dirty bitmaps (the bitmaps extension of
 * docs/interop/qcow2.txt): the directory, read and checked at open; each
 * bitmap's bits, a flat array in memory loaded when first needed; writes
 * set the bits of enabled bitmaps; changed bitmaps are stored at close.
 *
 * Invariants (crash safety):
 *  1. In use before change.  Before the first change to the image (guest
 *     data or bitmaps) every consistent bitmap is loaded and marked in use
 *     on disk (qcow2_bitmaps_mark_in_use, from qcow2_prepare_write): a
 *     crash from then until the store leaves them in use (inconsistent),
 *     never clean and missing writes.
 *  2. Store: new data clusters and tables are written to new clusters,
 *     then the new directory, then refcounts are flushed, and only then
 *     does the header name the new directory (with in_use cleared).  Old
 *     tables and the old directory are freed after.
 *  3. A bitmap found in use at open is inconsistent: never loaded, never
 *     used, kept as is (in use) until removed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/qcow2/qcow2.h"
#include "vdisk/bitmap.h"

#define BME_FLAG_IN_USE 1u
#define BME_FLAG_AUTO 2u
#define BME_RESERVED_FLAGS 0xfffffffcu
#define BME_HEADER 24u                 /* fixed part of a directory entry */
#define BME_TYPE_DIRTY 1u
#define BME_MAX_TABLE 0x8000000u       /* entries of a bitmap table */
#define BME_MAX_PHYS (512ull << 20)    /* bytes of one bitmap */
#define BME_MIN_GRAN_BITS 9u
#define BME_MAX_GRAN_BITS 31u
#define BME_TE_RESERVED 0xff000000000001feull
#define BME_TE_ALL_ONES 1ull
#define QC_MAX_BITMAPS 65535u
#define QC_MAX_BITMAP_DIR (1024u * QC_MAX_BITMAPS)

/* One persistent bitmap. */
struct qc_bitmap {
    char *name;
    uint32_t flags;                /* as in the directory at open */
    uint8_t gran_bits;
    uint64_t table_off;            /* 0: none on disk (added) */
    uint32_t table_size;
    bool inconsistent;             /* in use at open (invariant 3) */
    bool enabled;
    uint8_t *bits;                 /* NULL until loaded */
    uint64_t nbytes;               /* bytes of bits */
    bool modified;                 /* bits changed since open or the last store */
};

/* A bitmap table to free after the store (its bitmap was removed or
 * rewritten). */
struct qc_old_table {
    uint64_t off;
    uint32_t size;
};

struct qc_bitmaps {
    struct qc_bitmap *v;
    uint32_t count;
    struct qc_old_table *old;
    size_t nold;
    bool changed;                  /* something to store at close */
    bool marked;                   /* in use on disk since the last store */
};

/* ---- helpers ---- */

static uint64_t entry_size(uint64_t name_len, uint64_t extra)
{
    return (BME_HEADER + name_len + extra + 7) / 8 * 8;
}

/* Bytes of bits for a disk of size bytes at 2^gb bytes per bit. */
static uint64_t bits_bytes(uint64_t size, unsigned gb)
{
    uint64_t nbits = (size >> gb) + ((size & ((1ull << gb) - 1)) != 0);
    return div_round_up(nbits, 8);
}

static struct qc_bitmap *find(struct qcow2_state *s, const char *name)
{
    for (uint32_t i = 0; s->bm && i < s->bm->count; i++)
        if (!strcmp(s->bm->v[i].name, name))
            return &s->bm->v[i];
    return NULL;
}

/* The node name QEMU would print ("#blockNNN"). */
static int node_no(void)
{
    return 100 + (int)(getpid() % 900);
}

/* QEMU's table entry check. */
static bool table_entry_ok(const struct qcow2_state *s, uint64_t e)
{
    uint64_t off = e & QC_OFFSET_MASK;

    if (e & BME_TE_RESERVED)
        return false;
    return !off || (!(e & BME_TE_ALL_ONES) && is_aligned(off, s->cluster_size));
}

/* ---- directory ---- */

/* Check one directory entry (host order fields) as QEMU does. */
static bool entry_ok(const struct qcow2_state *s, uint64_t toff, uint32_t tsize,
                     uint32_t flags, uint8_t type, uint8_t gb, uint16_t nlen)
{
    uint64_t phys = (uint64_t)tsize * s->cluster_size;

    if (!tsize || !toff || !is_aligned(toff, s->cluster_size) || tsize > BME_MAX_TABLE ||
        gb > BME_MAX_GRAN_BITS || gb < BME_MIN_GRAN_BITS || (flags & BME_RESERVED_FLAGS) ||
        nlen > VD_BITMAP_MAX_NAME || type != BME_TYPE_DIRTY || phys > BME_MAX_PHYS)
        return false;
    /* A consistent bitmap's table covers the disk. */
    return (flags & BME_FLAG_IN_USE) || s->size <= ((phys * 8) << gb);
}

/* Parse the entry at dir[p] (avail bytes left) into b; *esize its size. */
static int parse_entry(struct qcow2_state *s, const uint8_t *e, uint64_t avail,
                       struct qc_bitmap *b, uint64_t *esize)
{
    uint16_t nlen;
    uint32_t extra, flags, size32;

    if (avail < BME_HEADER)
        return vd_error(EINVAL, "Broken bitmap directory");
    nlen = be16_get(e + 18);
    extra = be32_get(e + 20);
    flags = be32_get(e + 12);
    /* QEMU sizes an entry in 32-bit arithmetic: a huge extra size wraps,
     * and then its extra data is what it refuses. */
    size32 = (uint32_t)(BME_HEADER + nlen + (uint64_t)extra);
    *esize = (size32 + 7ull) / 8 * 8;
    if (size32 > INT32_MAX - 7 || *esize > avail)
        return vd_error(EINVAL, "Broken bitmap directory");
    if (extra)
        return vd_error(EINVAL, "Bitmap extra data is not supported");
    if (!entry_ok(s, be64_get(e), be32_get(e + 8), flags, e[16], e[17], nlen))
        return vd_error(EINVAL, "Bitmap '%.*s' doesn't satisfy the constraints", (int)nlen,
                        (const char *)e + BME_HEADER);
    if (!(b->name = strndup((const char *)e + BME_HEADER, nlen)))
        return vd_error(ENOMEM, "out of memory");
    b->table_off = be64_get(e);
    b->table_size = be32_get(e + 8);
    b->flags = flags;
    b->gran_bits = e[17];
    b->inconsistent = flags & BME_FLAG_IN_USE;
    b->enabled = flags & BME_FLAG_AUTO;
    return 0;
}

/* Parse the directory dir (len bytes) into s->bm. */
static int parse_dir(struct qcow2_state *s, const uint8_t *dir, uint64_t len)
{
    uint64_t p = 0, esize = 0;
    int r;

    if (!(s->bm->v = vd_calloc_array(s->bitmap_count, sizeof(*s->bm->v))))
        return vd_error(ENOMEM, "out of memory");
    while (p < len) {
        if (s->bm->count == s->bitmap_count)
            return vd_error(EINVAL, "More bitmaps found than specified in header extension");
        if ((r = parse_entry(s, dir + p, len - p, &s->bm->v[s->bm->count], &esize)) < 0)
            return r;
        s->bm->count++;
        p += esize;
    }
    if (s->bm->count != s->bitmap_count)
        return vd_error(EINVAL, "Less bitmaps found than specified in header extension");
    return 0;
}

/* Free the in-memory bitmaps. */
void qcow2_bitmaps_close(vd_node *n)
{
    struct qcow2_state *s = n->state;

    if (!s->bm)
        return;
    for (uint32_t i = 0; i < s->bm->count; i++) {
        free(s->bm->v[i].name);
        free(s->bm->v[i].bits);
    }
    free(s->bm->v);
    free(s->bm->old);
    free(s->bm);
    s->bm = NULL;
}

static int read_table(vd_node *n, uint64_t off, uint32_t size, uint64_t **out);

/* At open, as QEMU loads a consistent bitmap: its table readable, its
 * entries valid, its size what the disk needs. */
static int check_table(vd_node *n, const struct qc_bitmap *b)
{
    struct qcow2_state *s = n->state;
    uint64_t *t;
    int r;

    if (b->inconsistent)
        return 0;
    if ((r = read_table(n, b->table_off, b->table_size, &t)) < 0)
        return vd_error_prefix(r, "Could not read bitmap_table table from image for "
                               "bitmap '%s'", b->name);
    free(t);
    if (div_round_up(bits_bytes(s->size, b->gran_bits), s->cluster_size) != b->table_size)
        return vd_error(EINVAL, "Could not read bitmap '%s' from image: %s", b->name,
                        strerror(EINVAL));
    return 0;
}

/* See qcow2.h. */
int qcow2_bitmaps_open(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t len = s->bitmap_dir_size;
    uint8_t *dir = NULL;
    int r;

    if (!(s->bm = calloc(1, sizeof(*s->bm))))
        return vd_error(ENOMEM, "out of memory");
    if (!s->has_bitmaps_ext)
        return 0;
    if (!len)
        r = vd_error(EINVAL, "Requested bitmap directory size is zero");
    else if ((r = vd_untrusted_table_check(n, len, "qcow2 bitmap directory")) >= 0 &&
             !(dir = malloc(len)))
        r = vd_error(ENOMEM, "Failed to allocate space for bitmap directory");
    if (r >= 0 && (r = qcow2_read_padded(n->file, s->bitmap_dir_offset, len, dir)) < 0)
        r = vd_error_prefix(r, "Failed to read bitmap directory");
    if (r >= 0)
        r = parse_dir(s, dir, len);
    for (uint32_t i = 0; r >= 0 && i < s->bm->count; i++)
        r = check_table(n, &s->bm->v[i]);
    free(dir);
    if (r < 0)
        qcow2_bitmaps_close(n);
    return r;
}

/* ---- bits ---- */

/* Read the bitmap table of b into host order, each entry checked. */
static int read_table(vd_node *n, uint64_t off, uint32_t size, uint64_t **out)
{
    struct qcow2_state *s = n->state;
    uint64_t *t;
    int r;

    if ((r = vd_untrusted_table_check(n, (uint64_t)size * 8, "qcow2 bitmap table")) < 0)
        return r;
    if (!(t = vd_calloc_array(size, 8)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = qcow2_read_padded(n->file, off, (uint64_t)size * 8, t)) < 0) {
        free(t);
        return r;
    }
    for (uint32_t i = 0; i < size; i++) {
        t[i] = be64_get((const uint8_t *)&t[i]);
        if (!table_entry_ok(s, t[i])) {
            free(t);
            return vd_error(EINVAL, "%s", strerror(EINVAL));
        }
    }
    *out = t;
    return 0;
}

/* Allocate b's (clear) bits for the current disk size. */
static int alloc_bits(vd_node *n, struct qc_bitmap *b)
{
    struct qcow2_state *s = n->state;
    uint64_t nb = bits_bytes(s->size, b->gran_bits);
    int r;

    if (nb > BME_MAX_PHYS)
        return vd_error(EFBIG, "Bitmap '%s' is too big", b->name);
    if ((r = vd_untrusted_table_check(n, nb, "qcow2 bitmap")) < 0)
        return r;
    if (!(b->bits = calloc(1, nb ? nb : 1)))
        return vd_error(ENOMEM, "out of memory");
    b->nbytes = nb;
    return 0;
}

/* Fill b->bits from its data clusters (table t). */
static int read_bits(vd_node *n, struct qc_bitmap *b, const uint64_t *t)
{
    struct qcow2_state *s = n->state;
    uint64_t cs = s->cluster_size;

    for (uint32_t i = 0; i < b->table_size; i++) {
        uint64_t start = (uint64_t)i * cs, cnt = VD_MIN(cs, b->nbytes - start);
        uint64_t off = t[i] & QC_OFFSET_MASK;
        int r;
        if (off && (r = qcow2_read_padded(n->file, off, cnt, b->bits + start)) < 0)
            return r;
        if (!off && (t[i] & BME_TE_ALL_ONES))
            memset(b->bits + start, 0xff, cnt);
    }
    /* Bits past the end of the disk stay clear. */
    if (s->size && ((s->size - 1) >> b->gran_bits) % 8 != 7)
        b->bits[b->nbytes - 1] &= (uint8_t)((2u << (((s->size - 1) >> b->gran_bits) % 8)) - 1);
    return 0;
}

/* Load b's bits from the image (once). */
static int load_bits(vd_node *n, struct qc_bitmap *b)
{
    struct qcow2_state *s = n->state;
    uint64_t *t = NULL;
    int r;

    if (b->bits || b->inconsistent)
        return 0;
    if ((r = alloc_bits(n, b)) < 0)
        return r;
    if (div_round_up(b->nbytes, s->cluster_size) != b->table_size)
        r = vd_error(EINVAL, "Could not read bitmap '%s' from image: %s", b->name,
                     strerror(EINVAL));
    else if ((r = read_table(n, b->table_off, b->table_size, &t)) < 0)
        r = vd_error_prefix(r, "Could not read bitmap_table table from image for bitmap '%s'",
                            b->name);
    else if ((r = read_bits(n, b, t)) < 0)
        r = vd_error_prefix(r, "Could not read bitmap '%s' from image", b->name);
    free(t);
    if (r < 0) {
        free(b->bits);
        b->bits = NULL;
    }
    return r;
}

/* Set (val) or clear the bits covering guest bytes [off, off+len). */
static void set_range(const struct qcow2_state *s, struct qc_bitmap *b, uint64_t off,
                      uint64_t len, bool val)
{
    uint64_t first, last;

    if (!b->bits || !len || off >= s->size)
        return;
    len = VD_MIN(len, s->size - off);
    first = off >> b->gran_bits;
    last = (off + len - 1) >> b->gran_bits;
    for (uint64_t i = first; i <= last; i++) {
        if (i % 8 == 0 && i + 7 <= last) {
            b->bits[i / 8] = val ? 0xff : 0;
            i += 7;
        } else if (val)
            b->bits[i / 8] |= (uint8_t)(1u << (i % 8));
        else
            b->bits[i / 8] &= (uint8_t)~(1u << (i % 8));
    }
}

static bool bit_at(const struct qc_bitmap *b, uint64_t i)
{
    return (b->bits[i / 8] >> (i % 8)) & 1;
}

/* The last bit from i up to last (inclusive) that, with every bit before
 * it from i, equals val: whole bytes of one value are skipped at once. */
static uint64_t run_end(const struct qc_bitmap *b, uint64_t i, uint64_t last, bool val)
{
    const uint8_t same = val ? 0xff : 0;

    while (i < last) {
        if ((i + 1) % 8 == 0 && i + 8 <= last && b->bits[(i + 1) / 8] == same) {
            i += 8;
            continue;
        }
        if (bit_at(b, i + 1) != val)
            break;
        i++;
    }
    return i;
}

/* ---- marking in use (invariant 1) ---- */

/* Set the in-use flag of every entry of the directory dir (len bytes,
 * checked at open); *changed tells whether any was clear. */
static void set_in_use(uint8_t *dir, uint64_t len, bool *changed)
{
    *changed = false;
    for (uint64_t p = 0; p + BME_HEADER <= len;) {
        uint32_t flags = be32_get(dir + p + 12);
        if (!(flags & BME_FLAG_IN_USE)) {
            be32_put(dir + p + 12, flags | BME_FLAG_IN_USE);
            *changed = true;
        }
        p += entry_size(be16_get(dir + p + 18), be32_get(dir + p + 20));
    }
}

/* Write the directory on disk with every entry in use. */
static int mark_dir(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t len = s->bitmap_dir_size;
    uint8_t *dir;
    bool changed = false;
    int r;

    if (!(dir = malloc(len)))
        return vd_error(ENOMEM, "out of memory");
    r = qcow2_read_padded(n->file, s->bitmap_dir_offset, len, dir);
    if (r >= 0)
        set_in_use(dir, len, &changed);
    if (r >= 0 && changed) {
        if ((r = qcow2_overlap_check(n, QC_OL_BITMAP_DIRECTORY, s->bitmap_dir_offset,
                                     len)) >= 0 &&
            (r = vd_pwrite(n->file, s->bitmap_dir_offset, len, dir, 0)) >= 0)
            r = vd_flush(n->file);
    }
    free(dir);
    return r;
}

/* See qcow2.h. */
int qcow2_bitmaps_mark_in_use(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    if (!s->bm || !s->has_bitmaps_ext || !s->bitmap_dir_size || !s->bm->count)
        return 0;
    for (uint32_t i = 0; i < s->bm->count; i++)
        if ((r = load_bits(n, &s->bm->v[i])) < 0)
            return r;
    if ((r = mark_dir(n)) < 0)
        return r;
    s->bm->changed = s->bm->marked = true;
    return 0;
}

/* ---- store (invariant 2) ---- */

/* Allocate and write clusters of len bytes holding buf; *off where. */
static int write_new(vd_node *n, const void *buf, uint64_t len, uint64_t *off)
{
    struct qcow2_state *s = n->state;
    uint64_t cnt = div_round_up(len, s->cluster_size), bytes = cnt << s->cluster_bits;
    uint8_t *pad = NULL;
    int r;

    if ((r = qcow2_alloc_clusters(n, cnt, off)) < 0)
        return r;
    if (bytes != len) {
        if (!(pad = calloc(1, bytes)))
            return vd_error(ENOMEM, "out of memory");
        memcpy(pad, buf, len);
    }
    if ((r = qcow2_grow_file(n, n->file, *off + bytes)) >= 0 &&
        (r = qcow2_overlap_check(n, 0, *off, bytes)) >= 0)
        r = vd_pwrite(n->file, *off, bytes, pad ? pad : buf, 0);
    free(pad);
    if (r < 0)
        qcow2_free_clusters(n, *off, bytes);
    return r;
}

/* Free the data clusters named in t, then the table itself. */
static void free_table(vd_node *n, uint64_t off, uint32_t size, uint64_t *t)
{
    struct qcow2_state *s = n->state;

    for (uint32_t i = 0; i < size; i++)
        if (t[i] & QC_OFFSET_MASK)
            qcow2_free_clusters(n, t[i] & QC_OFFSET_MASK, s->cluster_size);
    if (off && size)
        qcow2_free_clusters(n, off, (uint64_t)size * 8);
}

/* Write b's bits to new clusters and a new table. */
static int store_one(vd_node *n, struct qc_bitmap *b)
{
    struct qcow2_state *s = n->state;
    uint64_t cs = s->cluster_size, tsize = div_round_up(b->nbytes, cs), toff = 0;
    uint64_t *t;
    int r = 0;

    if (tsize > BME_MAX_TABLE || tsize * cs > BME_MAX_PHYS || !tsize)
        return vd_error(EFBIG, "Bitmap '%s' is too big", b->name);
    if (!(t = vd_calloc_array(tsize, 8)))
        return vd_error(ENOMEM, "No memory");
    for (uint64_t i = 0; i < tsize && r >= 0; i++) {
        uint64_t start = i * cs, cnt = VD_MIN(cs, b->nbytes - start);
        if (!buffer_is_zero(b->bits + start, cnt))
            r = write_new(n, b->bits + start, cnt, &t[i]);
    }
    for (uint64_t i = 0; i < tsize && r >= 0; i++)
        be64_put((uint8_t *)&t[i], t[i]);
    if (r >= 0)
        r = write_new(n, t, tsize * 8, &toff);
    for (uint64_t i = 0; i < tsize; i++)
        t[i] = be64_get((const uint8_t *)&t[i]);
    if (r < 0) {
        free_table(n, 0, (uint32_t)tsize, t);
        free(t);
        return vd_error_prefix(r, "Failed to write bitmap '%s' to file", b->name);
    }
    free(t);
    b->table_off = toff;
    b->table_size = (uint32_t)tsize;
    return 0;
}

/* Queue a table to free after the store. */
static int drop_table(struct qcow2_state *s, uint64_t off, uint32_t size)
{
    struct qc_old_table *o;

    if (!off)
        return 0;
    if (!(o = realloc(s->bm->old, (s->bm->nold + 1) * sizeof(*o))))
        return vd_error(ENOMEM, "out of memory");
    s->bm->old = o;
    o[s->bm->nold++] = (struct qc_old_table){ off, size };
    return 0;
}

/* Build the directory; *len its size (0: no bitmaps). */
static int build_dir(struct qcow2_state *s, uint8_t **out, uint64_t *len)
{
    uint64_t total = 0, p = 0;
    uint8_t *d;

    for (uint32_t i = 0; i < s->bm->count; i++)
        total += entry_size(strlen(s->bm->v[i].name), 0);
    *len = total;
    *out = NULL;
    if (!total)
        return 0;
    if (total > QC_MAX_BITMAP_DIR)
        return vd_error(EFBIG, "Bitmap directory is too large");
    if (!(d = calloc(1, total)))
        return vd_error(ENOMEM, "out of memory");
    for (uint32_t i = 0; i < s->bm->count; i++) {
        const struct qc_bitmap *b = &s->bm->v[i];
        uint32_t flags = b->inconsistent ? b->flags : b->enabled ? BME_FLAG_AUTO : 0;
        be64_put(d + p, b->table_off);
        be32_put(d + p + 8, b->table_size);
        be32_put(d + p + 12, flags);
        d[p + 16] = BME_TYPE_DIRTY;
        d[p + 17] = b->gran_bits;
        be16_put(d + p + 18, (uint16_t)strlen(b->name));
        memcpy(d + p + BME_HEADER, b->name, strlen(b->name));
        p += entry_size(strlen(b->name), 0);
    }
    *out = d;
    return 0;
}

/* Copy the header cluster old into h without the bitmaps extension and
 * end marker; *pos where the next extension goes.  Bounds as qcow2.c. */
static int copy_exts(const struct qcow2_state *s, const uint8_t *old, uint8_t *h, uint64_t *pos)
{
    uint64_t off = s->header_length, end = s->cluster_size;

    if (s->backing_offset > off)
        end = VD_MIN(end, s->backing_offset);
    memcpy(h, old, s->header_length);
    *pos = s->header_length;
    while (off + 8 <= end) {
        uint32_t type = be32_get(old + off), len = be32_get(old + off + 4);
        uint64_t sz = 8 + ((uint64_t)len + 7) / 8 * 8;
        if (type == QC_EXT_END || len > end - off - 8)
            break;
        if (type != QC_EXT_BITMAPS) {
            memcpy(h + *pos, old + off, sz);
            *pos += sz;
        }
        off += sz;
    }
    return 0;
}

/* Rewrite the header cluster naming the directory (count 0: no
 * extension, autoclear bit cleared). */
static int write_header(vd_node *n, uint32_t count, uint64_t dlen, uint64_t doff)
{
    struct qcow2_state *s = n->state;
    uint64_t cs = s->cluster_size, pos, ac;
    uint8_t *old = malloc(cs), *h = calloc(1, cs);
    int r;

    if (!old || !h) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    if ((r = qcow2_read_padded(n->file, 0, cs, old)) < 0)
        goto out;
    copy_exts(s, old, h, &pos);
    if (pos + 32 + 8 + s->backing_len > cs) {
        r = vd_error(ENOSPC, "No space left in the file header");
        goto out;
    }
    if (count) {
        be32_put(h + pos, QC_EXT_BITMAPS);
        be32_put(h + pos + 4, 24);
        be32_put(h + pos + 8, count);
        be64_put(h + pos + 16, dlen);
        be64_put(h + pos + 24, doff);
        pos += 32;
    }
    pos += 8;                                  /* end marker: zeroes */
    if (s->backing_len) {
        memcpy(h + pos, old + s->backing_offset, s->backing_len);
        be64_put(h + 8, pos);
    }
    ac = count ? s->autoclear | QC_AUTOCLEAR_BITMAPS : s->autoclear & ~QC_AUTOCLEAR_BITMAPS;
    if (s->version >= 3)
        be64_put(h + QH_AUTOCLEAR, ac);
    vd_event(n->file, "header_update");
    if ((r = vd_pwrite(n->file, 0, cs, h, 0)) < 0 || (r = vd_flush(n->file)) < 0)
        goto out;
    if (s->backing_len)
        s->backing_offset = pos;
    s->autoclear = ac;
    s->has_bitmaps_ext = count != 0;
    s->bitmap_count = count;
    s->bitmap_dir_offset = count ? doff : 0;
    s->bitmap_dir_size = count ? dlen : 0;
out:
    free(old);
    free(h);
    return r;
}

/* Free queued tables (their data clusters too) and the old directory. */
static void free_old(vd_node *n, uint64_t old_doff, uint64_t old_dlen)
{
    struct qcow2_state *s = n->state;

    for (size_t i = 0; i < s->bm->nold; i++) {
        uint64_t *t;
        if (read_table(n, s->bm->old[i].off, s->bm->old[i].size, &t) < 0)
            continue;              /* unreadable: leaked, never a wrong free */
        free_table(n, s->bm->old[i].off, s->bm->old[i].size, t);
        free(t);
    }
    s->bm->nold = 0;
    if (old_dlen)
        qcow2_free_clusters(n, old_doff, old_dlen);
}

/* Store every consistent bitmap and the directory.  Lock held. */
static int store_locked(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t old_doff = s->bitmap_dir_offset, old_dlen = s->bitmap_dir_size;
    uint64_t dlen, doff = 0;
    uint8_t *dir = NULL;
    int r;

    if ((r = qcow2_prepare_write(n)) < 0)
        return r;
    for (uint32_t i = 0; i < s->bm->count; i++) {
        struct qc_bitmap *b = &s->bm->v[i];
        uint64_t off = b->table_off;
        uint32_t size = b->table_size;
        /* Bits as on disk already: the table stays (only the flags change). */
        if (b->inconsistent || (!b->modified && b->table_off))
            continue;
        if ((r = load_bits(n, b)) < 0 || (r = store_one(n, b)) < 0 ||
            (r = drop_table(s, off, size)) < 0)
            return r;
        b->modified = false;
    }
    if ((r = build_dir(s, &dir, &dlen)) < 0)
        return r;
    if (dlen && (r = write_new(n, dir, dlen, &doff)) < 0)
        goto out;
    if ((r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0 ||
        (r = write_header(n, s->bm->count, dlen, doff)) < 0)
        goto out;
    free_old(n, old_doff, old_dlen);
    s->bm->changed = s->bm->marked = false;
out:
    free(dir);
    return r;
}

/* See qcow2.h. */
int qcow2_bitmaps_store(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r = 0;

    if (!s->bm || !s->bm->changed || n->read_only)
        return 0;
    pthread_mutex_lock(&s->lock);
    r = store_locked(n);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        fprintf(stderr, "qcow2: could not store the persistent bitmaps: %s\n",
                vd_errmsg());
    return r;
}

/* ---- write paths ---- */

/* Before a change of guest bytes [off, off+len): bitmaps in use on disk
 * (invariant 1), then the bits of every enabled bitmap set. */
static int note_write(vd_node *n, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    int r = 0;

    if (!s->bm || !s->bm->count)
        return 0;
    pthread_mutex_lock(&s->lock);
    if ((r = qcow2_prepare_write(n)) >= 0 && !s->bm->marked)
        r = qcow2_bitmaps_mark_in_use(n);
    for (uint32_t i = 0; r >= 0 && i < s->bm->count; i++) {
        struct qc_bitmap *b = &s->bm->v[i];
        if (b->enabled && !b->inconsistent) {
            set_range(s, b, off, len, true);
            b->modified = true;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

int qcow2_bm_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    int r = note_write(n, off, len);
    return r < 0 ? r : qcow2_pwrite(n, off, len, buf, flags);
}

int qcow2_bm_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    int r = note_write(n, off, len);
    return r < 0 ? r : qcow2_pwrite_zeroes(n, off, len, flags);
}

int qcow2_bm_discard(vd_node *n, uint64_t off, uint64_t len)
{
    int r = note_write(n, off, len);
    return r < 0 ? r : qcow2_discard(n, off, len);
}

int qcow2_bm_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    int r = note_write(n, off, len);
    return r < 0 ? r : qcow2_pwrite_compressed(n, off, len, buf);
}

/* Resize b's bits for a disk of size bytes (new bits clear). */
static int resize_bits(struct qc_bitmap *b, uint64_t old, uint64_t size)
{
    uint64_t nb = bits_bytes(size, b->gran_bits);
    uint8_t *p;

    if (!b->bits)
        return 0;
    if (nb > BME_MAX_PHYS)
        return vd_error(EFBIG, "Bitmap '%s' is too big", b->name);
    if (!(p = realloc(b->bits, nb ? nb : 1)))
        return vd_error(ENOMEM, "out of memory");
    if (nb > b->nbytes)
        memset(p + b->nbytes, 0, nb - b->nbytes);
    b->bits = p;
    b->nbytes = nb;
    (void)old;
    return 0;
}

/* Clear the bits wholly past a disk of size bytes (was old bytes): the
 * bit a smaller, unaligned end falls in stays, as in QEMU. */
static void clear_from(struct qc_bitmap *b, uint64_t size, uint64_t old)
{
    uint64_t first = div_round_up(size, 1ull << b->gran_bits);
    uint64_t end = div_round_up(old, 1ull << b->gran_bits);

    for (uint64_t i = first; b->bits && i < end; i++)
        b->bits[i / 8] &= (uint8_t)~(1u << (i % 8));
}

/* The first inconsistent bitmap, refused as QEMU refuses it. */
static int refuse_inconsistent(const struct qcow2_state *s)
{
    for (uint32_t i = 0; s->bm && i < s->bm->count; i++)
        if (s->bm->v[i].inconsistent)
            return vd_error(EINVAL, "Bitmap '%s' is inconsistent and cannot be used\n"
                            "Try block-dirty-bitmap-remove to delete this bitmap from disk",
                            s->bm->v[i].name);
    return 0;
}

/* Resize: the bitmaps follow the disk (a grown part is clean, as in
 * QEMU); an inconsistent bitmap refuses it. */
int qcow2_bm_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct qcow2_state *s = n->state;
    uint64_t old = s->size;
    int r = 0;

    if (s->bm && s->bm->count) {
        if ((r = refuse_inconsistent(s)) < 0)
            return r;
        pthread_mutex_lock(&s->lock);
        if ((r = qcow2_prepare_write(n)) >= 0 && !s->bm->marked)
            r = qcow2_bitmaps_mark_in_use(n);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
            return r;
    }
    if ((r = qcow2_truncate(n, size, exact, prealloc)) < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    /* Bits past a smaller end are cleared first, so regrowing reads clean. */
    for (uint32_t i = 0; s->bm && i < s->bm->count; i++) {
        struct qc_bitmap *b = &s->bm->v[i];
        if (size < old)
            clear_from(b, size, old);
        if (r >= 0)
            r = resize_bits(b, old, size);
        b->modified = true;
    }
    if (s->bm && s->bm->count)
        s->bm->changed = true;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Reverting to an internal snapshot would leave the bitmaps wrong: QEMU
 * refuses it while the image has any. */
int qcow2_bm_snapshot_goto(vd_node *n, const char *id_or_name)
{
    struct qcow2_state *s = n->state;

    if (s->bm && s->bm->count)
        return vd_error(EBUSY, "Device has active dirty bitmaps");
    return qcow2_snapshot_goto(n, id_or_name);
}

/* ---- the bitmap hook ---- */

/* A bitmap by name, or "not found". */
static int lookup(struct qcow2_state *s, const char *name, struct qc_bitmap **b)
{
    if (!(*b = find(s, name)))
        return vd_error(ENOENT, "Dirty bitmap '%s' not found", name);
    return 0;
}

/* A bitmap that may be used (exists, consistent), its bits loaded. */
static int usable(vd_node *n, const char *name, struct qc_bitmap **b)
{
    int r;

    if ((r = lookup(n->state, name, b)) < 0)
        return r;
    if ((*b)->inconsistent)
        return vd_error(EINVAL, "Bitmap '%s' is inconsistent and cannot be used\n"
                        "Try block-dirty-bitmap-remove to delete this bitmap from disk", name);
    return load_bits(n, *b);
}

/* A change by the bitmap command: bitmaps in use on disk first. */
static int begin_change(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    if (n->read_only)
        return vd_error(EROFS, "No write access");
    if ((r = qcow2_prepare_write(n)) >= 0 && !s->bm->marked)
        r = qcow2_bitmaps_mark_in_use(n);
    if (r >= 0)
        s->bm->changed = true;
    return r;
}

/* The default granularity: the cluster size, within 4 KiB..64 KiB. */
static uint64_t default_granularity(const struct qcow2_state *s)
{
    return VD_MIN(VD_MAX(s->cluster_size, 4096u), 65536u);
}

/* The checks QEMU makes before a new persistent bitmap. */
static int can_add(struct qcow2_state *s, const char *name, uint64_t g)
{
    const char *why = NULL;
    uint64_t nb = bits_bytes(s->size, (unsigned)__builtin_ctzll(g));
    uint64_t dir = 0;

    for (uint32_t i = 0; i < s->bm->count; i++)
        dir += entry_size(strlen(s->bm->v[i].name), 0);
    if (s->version < 3)
        why = "Cannot store dirty bitmaps in qcow2 v2 files";
    else if (s->bm->count >= QC_MAX_BITMAPS)
        why = "Maximum number of persistent bitmaps is already reached";
    else if (dir + entry_size(strlen(name), 0) > QC_MAX_BITMAP_DIR)
        why = "Not enough space in the bitmap directory";
    else if (g > (1ull << BME_MAX_GRAN_BITS))
        why = "Granularity exceeds maximum (2147483648 bytes)";
    else if (nb > BME_MAX_PHYS || nb > (uint64_t)BME_MAX_TABLE * s->cluster_size)
        why = "Too much space will be occupied by the bitmap. Use larger granularity";
    else if (strlen(name) > VD_BITMAP_MAX_NAME)
        why = "Name length exceeds maximum (1023 characters)";
    if (why)
        return vd_error(EINVAL, "Can't make bitmap '%s' persistent in '#block%03d': %s",
                        name, node_no(), why);
    return 0;
}

/* --add */
static int op_add(vd_node *n, const struct vd_bitmap_req *req)
{
    struct qcow2_state *s = n->state;
    uint64_t g = req->granularity ? (uint32_t)req->granularity : default_granularity(s);
    struct qc_bitmap *v, b = { .enabled = !req->disabled };
    int r;

    if (!req->name[0])
        return vd_error(EINVAL, "Bitmap name cannot be empty");
    if (g < 512 || !is_power_of_2(g))
        return vd_error(EINVAL, "Granularity must be power of 2 and at least 512");
    if ((r = can_add(s, req->name, g)) < 0)
        return r;
    if (find(s, req->name))
        return vd_error(EEXIST, "Bitmap already exists: %s", req->name);
    if ((r = begin_change(n)) < 0)
        return r;
    b.gran_bits = (uint8_t)__builtin_ctzll(g);
    if (!(b.name = strdup(req->name)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = alloc_bits(n, &b)) < 0 ||
        !(v = realloc(s->bm->v, (s->bm->count + 1) * sizeof(*v)))) {
        free(b.name);
        free(b.bits);
        return r < 0 ? r : vd_error(ENOMEM, "out of memory");
    }
    s->bm->v = v;
    v[s->bm->count++] = b;
    return 0;
}

/* --remove */
static int op_remove(vd_node *n, const struct vd_bitmap_req *req)
{
    struct qcow2_state *s = n->state;
    struct qc_bitmap *b;
    uint32_t i;
    int r;

    if ((r = lookup(s, req->name, &b)) < 0 || (r = begin_change(n)) < 0 ||
        (r = drop_table(s, b->table_off, b->table_size)) < 0)
        return r;
    i = (uint32_t)(b - s->bm->v);
    free(b->name);
    free(b->bits);
    memmove(b, b + 1, (s->bm->count - i - 1) * sizeof(*b));
    s->bm->count--;
    return 0;
}

/* --clear, --enable, --disable, and set-dirty (merge). */
static int op_change(vd_node *n, const struct vd_bitmap_req *req)
{
    struct qcow2_state *s = n->state;
    struct qc_bitmap *b;
    int r;

    if ((r = usable(n, req->name, &b)) < 0 || (r = begin_change(n)) < 0)
        return r;
    b->modified = true;
    if (req->op == VD_BITMAP_CLEAR)
        memset(b->bits, 0, b->nbytes);
    else if (req->op == VD_BITMAP_SET_DIRTY)
        set_range(s, b, req->off, req->len, true);
    else
        b->enabled = req->op == VD_BITMAP_ENABLE;
    return 0;
}

/* Dirty status of [off, off+len) (len > 0, inside the disk). */
static int op_status(vd_node *n, struct vd_bitmap_req *req)
{
    struct qcow2_state *s = n->state;
    struct qc_bitmap *b;
    uint64_t i, last, end;
    int r;

    if ((r = usable(n, req->name, &b)) < 0)
        return r;
    if (!req->len || req->off >= s->size)
        return vd_error(EINVAL, "bitmap status: range outside the image");
    end = req->off + VD_MIN(req->len, s->size - req->off);
    i = req->off >> b->gran_bits;
    last = (end - 1) >> b->gran_bits;
    req->dirty = bit_at(b, i);
    i = run_end(b, i, last, req->dirty);
    req->pnum = VD_MIN(end, (i + 1) << b->gran_bits) - req->off;
    return 0;
}

/* The list, in directory order. */
static int op_list(vd_node *n, struct vd_bitmap_req *req)
{
    struct qcow2_state *s = n->state;
    struct vd_bitmap_info *l = vd_calloc_array(s->bm->count, sizeof(*l));

    if (!l)
        return vd_error(ENOMEM, "out of memory");
    for (uint32_t i = 0; i < s->bm->count; i++) {
        const struct qc_bitmap *b = &s->bm->v[i];
        l[i].granularity = 1ull << b->gran_bits;
        l[i].enabled = b->enabled;
        l[i].in_use = b->inconsistent;
        if (!(l[i].name = strdup(b->name))) {
            vd_bitmap_list_free(l, (int)i);
            return vd_error(ENOMEM, "out of memory");
        }
    }
    req->list = l;
    req->count = (int)s->bm->count;
    return 0;
}

/* Dispatch one request.  Lock held. */
static int dispatch(vd_node *n, struct vd_bitmap_req *req)
{
    struct qc_bitmap *b;

    switch (req->op) {
    case VD_BITMAP_LIST: return op_list(n, req);
    case VD_BITMAP_ADD: return op_add(n, req);
    case VD_BITMAP_REMOVE: return op_remove(n, req);
    case VD_BITMAP_CLEAR:
    case VD_BITMAP_ENABLE:
    case VD_BITMAP_DISABLE:
    case VD_BITMAP_SET_DIRTY: return op_change(n, req);
    case VD_BITMAP_STATUS: return op_status(n, req);
    case VD_BITMAP_CHECK_USABLE: return usable(n, req->name, &b);
    case VD_BITMAP_SUPPORTED:
        return ((struct qcow2_state *)n->state)->version >= 3 ? 0 : -ENOTSUP;
    }
    return vd_error(EINVAL, "unknown bitmap request");
}

/* See qcow2.h. */
int qcow2_bitmap_hook(vd_node *n, struct vd_bitmap_req *req)
{
    struct qcow2_state *s = n->state;
    int r;

    if (!s->bm)
        return vd_error(EIO, "qcow2: bitmaps unavailable");
    pthread_mutex_lock(&s->lock);
    r = dispatch(n, req);
    pthread_mutex_unlock(&s->lock);
    return r;
}
