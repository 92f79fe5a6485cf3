/* SPDX-License-Identifier: BSD-3-Clause */
/* The bochs format, read-only: the growing "redolog" images bximage
 * writes.  A 512-byte header (magic, type "Redolog", subtype "Growing",
 * version 1 or 2, header size, catalog entries, bitmap and extent bytes,
 * disk size, little endian), a catalog of 32-bit extent numbers from the
 * header size on (0xffffffff: never written), then the extents, each a
 * sector bitmap (bit set: the sector is written) followed by its data.
 * It behaves as QEMU 7.2's driver (the same header checks and messages,
 * unwritten sectors read as zeroes, no mapping offsets, refused for
 * writing) and checks more of its own: the catalog must lie inside the
 * file, and an extent the catalog names outside the file is a read error
 * (QEMU reads zeroes there).  Nothing changes after open: reads run in
 * parallel without a lock. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "vdisk/driver.h"

#define BOCHS_HEADER_BYTES  512u
#define BOCHS_SECTOR        512u
#define BOCHS_MAGIC         "Bochs Virtual HD Image"
#define BOCHS_TYPE          "Redolog"
#define BOCHS_SUBTYPE       "Growing"
#define BOCHS_V1            0x00010000u
#define BOCHS_V2            0x00020000u
#define BOCHS_CATALOG_MAX   0x100000u      /* QEMU's bound: bximage's largest */
#define BOCHS_EXTENT_MAX    0x800000u
#define BOCHS_UNALLOCATED   0xffffffffu

/* Header field offsets. */
enum {
    BH_MAGIC = 0, BH_TYPE = 32, BH_SUBTYPE = 48, BH_VERSION = 64, BH_HEADER = 68,
    BH_CATALOG = 72, BH_BITMAP = 76, BH_EXTENT = 80, BH_DISK_V1 = 84, BH_DISK_V2 = 88,
};

struct bochs_state {
    uint32_t *catalog;             /* extent numbers, host order */
    uint32_t catalog_size, extent_size;
    uint64_t data_offset;          /* where extent 0 starts */
    uint64_t bitmap_blocks, extent_blocks;   /* sectors of each, as QEMU rounds */
    uint64_t disk_size, file_len;
};

static inline uint32_t le32_get(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le64_get(const uint8_t *p)
{
    return le32_get(p) | (uint64_t)le32_get(p + 4) << 32;
}

/* Does the NUL-terminated field at p hold s? */
static bool field_is(const uint8_t *p, const char *s)
{
    return !memcmp(p, s, strlen(s) + 1);
}

/* Magic, type, subtype and version as QEMU takes them. */
static bool header_ok(const uint8_t *h)
{
    uint32_t v = le32_get(h + BH_VERSION);

    return field_is(h + BH_MAGIC, BOCHS_MAGIC) && field_is(h + BH_TYPE, BOCHS_TYPE) &&
           field_is(h + BH_SUBTYPE, BOCHS_SUBTYPE) && (v == BOCHS_V1 || v == BOCHS_V2);
}

/* Score 100 on a growing redolog header, as QEMU. */
static int bochs_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= BH_VERSION + 4 && header_ok(buf) ? 100 : 0;
}

/* ---- open ---- */

/* Sectors of a region of b bytes as QEMU counts them (32-bit wrap: b = 0
 * gives 2^23). */
static uint64_t blocks_of(uint32_t b)
{
    return 1 + (uint32_t)(b - 1) / BOCHS_SECTOR;
}

/* The extent size checks, in QEMU's order and with its messages, then
 * that the catalog covers the disk (which bounds the disk size to 2^43). */
static int check_extent(const struct bochs_state *s)
{
    uint32_t e = s->extent_size;

    if (e < BOCHS_SECTOR)
        return vd_error(EINVAL, "Extent size must be at least 512");
    if (e & (e - 1))
        return vd_error(EINVAL, "Extent size %" PRIu32 " is not a power of two", e);
    if (e > BOCHS_EXTENT_MAX)
        return vd_error(EINVAL, "Extent size %" PRIu32 " is too large", e);
    if (s->catalog_size < div_round_up(s->disk_size / BOCHS_SECTOR, e / BOCHS_SECTOR))
        return vd_error(EINVAL, "Catalog size is too small for this disk size");
    return 0;
}

/* Read the catalog at off (it must lie inside the file). */
static int load_catalog(vd_node *n, uint64_t off)
{
    struct bochs_state *s = n->state;
    uint64_t bytes = (uint64_t)s->catalog_size * 4;
    uint8_t *raw;
    int r;

    if (off > s->file_len || bytes > s->file_len - off)
        return vd_error(EINVAL, "bochs: catalog (%" PRIu32 " entries at %" PRIu64 ") extends "
                        "beyond the end of the file (%" PRIu64 " bytes)", s->catalog_size,
                        off, s->file_len);
    if ((r = vd_untrusted_table_check(n, bytes, "bochs catalog")) < 0)
        return r;
    raw = malloc(bytes ? bytes : 1);
    s->catalog = malloc(bytes ? bytes : 1);
    if (!raw || !s->catalog) {
        free(raw);
        return vd_error(ENOMEM, "Could not allocate memory for catalog");
    }
    r = bytes ? vd_pread(n->file, off, bytes, raw, 0) : 0;
    for (uint32_t i = 0; r >= 0 && i < s->catalog_size; i++)
        s->catalog[i] = le32_get(raw + 4 * (uint64_t)i);
    free(raw);
    return r < 0 ? vd_error_prefix(r, "bochs: cannot read the catalog") : 0;
}

/* Check the header, load the catalog; refuse read-write opens. */
static int bochs_open(vd_node *n, vd_opts *opts, int flags)
{
    struct bochs_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    uint8_t h[BOCHS_HEADER_BYTES] = { 0 };
    uint32_t header_size;
    int r;

    (void)opts; (void)flags;
    if (!n->read_only)
        return vd_error(EACCES, "Image is read-only");
    if (file_len < 0)
        return (int)file_len;
    s->file_len = (uint64_t)file_len;
    if ((r = vd_pread(n->file, 0, VD_MIN(s->file_len, sizeof(h)), h, 0)) < 0)
        return vd_error_prefix(r, "bochs: cannot read the header");
    if (!header_ok(h))
        return vd_error(EINVAL, "Image not in Bochs format");
    s->disk_size = le64_get(h + (le32_get(h + BH_VERSION) == BOCHS_V1 ? BH_DISK_V1
                                                                       : BH_DISK_V2));
    s->disk_size -= s->disk_size % BOCHS_SECTOR;
    s->catalog_size = le32_get(h + BH_CATALOG);
    if (s->catalog_size > BOCHS_CATALOG_MAX)
        return vd_error(EFBIG, "Catalog size is too large");
    header_size = le32_get(h + BH_HEADER);
    s->data_offset = header_size + (uint64_t)s->catalog_size * 4;
    s->bitmap_blocks = blocks_of(le32_get(h + BH_BITMAP));
    s->extent_blocks = blocks_of(le32_get(h + BH_EXTENT));
    s->extent_size = le32_get(h + BH_EXTENT);
    /* QEMU reads the catalog first, as zeroes past the end of the file:
     * its checks come first here so that its messages stay the same */
    if ((r = check_extent(s)) < 0 || (r = load_catalog(n, header_size)) < 0)
        return r;
    n->request_alignment = BOCHS_SECTOR;
    return 0;
}

/* Free the catalog. */
static void bochs_close(vd_node *n)
{
    struct bochs_state *s = n->state;

    free(s->catalog);
}

/* ---- reading ---- */

/* File offset of extent e's bitmap; -EIO when it is not inside the file
 * with its bitmap and data. */
static int extent_offset(const struct bochs_state *s, uint32_t idx, uint64_t *out)
{
    uint64_t per, at, end;

    if (MUL_OVERFLOW(s->extent_blocks + s->bitmap_blocks, (uint64_t)BOCHS_SECTOR, &per) ||
        MUL_OVERFLOW(per, (uint64_t)s->catalog[idx], &at) ||
        ADD_OVERFLOW(at, s->data_offset, &at) ||
        ADD_OVERFLOW(at, s->bitmap_blocks * BOCHS_SECTOR, &end) || end > s->file_len)
        return vd_error(EIO, "bochs: extent %" PRIu32 " of guest extent %" PRIu32 " lies "
                        "beyond the end of the file (%" PRIu64 " bytes)", s->catalog[idx],
                        idx, s->file_len);
    *out = at;
    return 0;
}

/* Read sectors [first, first + count) of one extent, whose bitmap is at
 * bm, into buf: written sectors from the file, others as zeroes. */
static int read_in_extent(vd_node *n, uint64_t bm, uint32_t first, uint32_t count,
                          uint8_t *buf)
{
    struct bochs_state *s = n->state;
    uint8_t bits[BOCHS_EXTENT_MAX / BOCHS_SECTOR / 8];
    uint32_t lo = first / 8, hi = (first + count - 1) / 8;
    int r;

    if ((r = vd_pread(n->file, bm + lo, hi - lo + 1, bits, 0)) < 0)
        return r;
    for (uint32_t i = 0; i < count;) {
        uint32_t sec = first + i, j = i;
        bool set = bits[sec / 8 - lo] >> (sec % 8) & 1;
        while (j < count && (bool)(bits[(first + j) / 8 - lo] >> ((first + j) % 8) & 1) == set)
            j++;
        uint64_t len = (uint64_t)(j - i) * BOCHS_SECTOR;
        uint64_t data = bm + (s->bitmap_blocks + sec) * BOCHS_SECTOR;
        if (!set)
            memset(buf + (uint64_t)i * BOCHS_SECTOR, 0, len);
        else if (data > s->file_len || len > s->file_len - data)
            return vd_error(EIO, "bochs: data of sector %" PRIu32 " of an extent at %" PRIu64
                            " lies beyond the end of the file", sec, bm);
        else if ((r = vd_pread(n->file, data, len, buf + (uint64_t)i * BOCHS_SECTOR, 0)) < 0)
            return r;
        i = j;
    }
    return 0;
}

/* Read whole sectors, extent by extent. */
static int bochs_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct bochs_state *s = n->state;
    uint8_t *p = buf;

    (void)flags;
    while (len) {
        uint32_t idx = (uint32_t)(off / s->extent_size);
        uint32_t in = (uint32_t)(off % s->extent_size);
        uint64_t l = VD_MIN(len, (uint64_t)(s->extent_size - in)), bm = 0;
        int r = 0;

        if (s->catalog[idx] == BOCHS_UNALLOCATED)
            memset(p, 0, l);
        else if ((r = extent_offset(s, idx, &bm)) == 0)
            r = read_in_extent(n, bm, in / BOCHS_SECTOR, (uint32_t)(l / BOCHS_SECTOR), p);
        if (r < 0)
            return r;
        p += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* Guest size: the header's, in whole sectors. */
static int64_t bochs_getlength(vd_node *n)
{
    struct bochs_state *s = n->state;

    return (int64_t)s->disk_size;
}

/* No cluster size: QEMU's get_info fails, so info has no dirty flag. */
static int64_t bochs_cluster_size(vd_node *n)
{
    (void)n;
    return -ENOTSUP;
}

static const struct vd_driver bochs_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "bochs",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct bochs_state),
    .probe = bochs_probe,
    .open = bochs_open,
    .close = bochs_close,
    .pread = bochs_pread,
    .getlength = bochs_getlength,
    .cluster_size = bochs_cluster_size,
};
VD_DRIVER_REGISTER(bochs_driver)
