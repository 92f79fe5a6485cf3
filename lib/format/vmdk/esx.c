/* SPDX-License-Identifier: BSD-3-Clause */
/* ESX extents QEMU 7.2 reads but does not create: VMDK3 "COWD" sparse
 * extents (vmfsSparse; 32-bit grain tables of 4096 entries, so the VMDK4
 * lookup and allocation in sparse.c serve them once the header is read)
 * and seSparse extents (64-bit directory and table entries with type bits;
 * read-only, as in QEMU).  Header checks carry QEMU's messages; the
 * directory must lie inside the file and every table or grain offset is
 * checked before use (vdisk's rules, as for VMDK4). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmdk.h"

#define COWD_GTES        4096u
#define SE_CONST_MAGIC   0xcafebabeull
#define SE_VOL_MAGIC     0xcafecafeull
#define SE_VERSION       0x200000001ull
#define SE_GRAIN_SECT    8u             /* the only grain size QEMU reads */
#define SE_GT_SECT       64u            /* the only table size QEMU reads */
#define SE_GTES          (SE_GT_SECT * VMDK_SECTOR / 8)
#define SE_GDE_ALLOC     0x1000000000000000ull
#define SE_TYPE_MASK     0xf000000000000000ull

/* The seSparse extent's own state (e->se). */
struct vmdk_se {
    uint64_t gt_base;              /* sector of the first grain table */
    uint64_t grain_base;           /* sector of the first grain */
    uint64_t *gd;                  /* directory entries, host order */
    uint32_t gd_entries;
    uint64_t gt_sector;            /* sector of the cached table (0: none) */
    uint64_t *gt;                  /* the cached table */
};

/* Read len bytes at off of f, zero-filled past its end. */
static int read_zfill(vd_node *f, uint64_t off, uint64_t len, void *buf)
{
    int64_t end = vd_getlength(f);
    uint64_t l;

    if (end < 0)
        return (int)end;
    l = off >= (uint64_t)end ? 0 : VD_MIN(len, (uint64_t)end - off);
    memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(f, off, l, buf, 0) : 0;
}

/* A directory of count entries of size bytes each at byte off, which must
 * lie inside the file; returned raw (little endian). */
static int read_dir(vd_node *f, uint64_t off_sect, uint64_t count, unsigned size,
                    uint64_t file_len, uint8_t **out)
{
    uint64_t bytes = count * size;
    uint8_t *raw;
    int r;

    if (off_sect >= (1ull << 54))      /* a negative offset for QEMU */
        return vd_error(EIO, "Could not read l1 table from extent '%s': Input/output error",
                        f->filename);
    if (!range_ok(off_sect * VMDK_SECTOR, bytes, file_len))
        return vd_error(EINVAL, "vmdk: grain directory (%" PRIu64 " entries at sector %"
                        PRIu64 ") lies outside the file", count, off_sect);
    if (!(raw = malloc(bytes ? bytes : 1)))
        return vd_error(ENOMEM, "vmdk: cannot allocate the grain directory");
    if (bytes && (r = vd_pread(f, off_sect * VMDK_SECTOR, bytes, raw, 0)) < 0) {
        free(raw);
        return vd_error(-r, "Could not read l1 table from extent '%s'", f->filename);
    }
    *out = raw;
    return 0;
}

/* ---- COWD ---- */

/* The VMDK3 header fields QEMU uses (after the magic). */
struct cowd_header {
    uint32_t sectors, granularity, gd_sector, gd_entries;
};

/* QEMU's limits, then vdisk's: a power-of-two grain. */
static int cowd_check(const struct cowd_header *h)
{
    if (h->granularity > VMDK_MAX_GRAIN_SECT)
        return vd_error(EFBIG, "Invalid granularity, image may be corrupt");
    if (h->gd_entries > VMDK_MAX_GD_ENTRIES)
        return vd_error(EFBIG, "L1 size too big");
    if (!is_power_of_2(h->granularity))
        return vd_error(EINVAL, "vmdk: grain size of %" PRIu32 " sectors is not a power "
                        "of two", h->granularity);
    return 0;
}

/* Fill e from a checked COWD header and load its directory. */
static int cowd_setup(struct vmdk_extent *e, const struct cowd_header *h, uint64_t flen)
{
    uint8_t *raw = NULL;
    int r;

    e->sectors = h->sectors;
    e->grain_sectors = h->granularity;
    e->gtes = COWD_GTES;
    e->gd_entries = h->gd_entries;
    e->gd_offset = (uint64_t)h->gd_sector * VMDK_SECTOR;
    e->file_len = flen;
    e->next_grain = div_round_up(div_round_up(flen, VMDK_SECTOR), h->granularity) *
                    h->granularity;
    if ((r = read_dir(e->file, h->gd_sector, h->gd_entries, 4, flen, &raw)) < 0)
        return r;
    if (!(e->gd = vd_calloc_array(h->gd_entries, sizeof(uint32_t)))) {
        free(raw);
        return vd_error(ENOMEM, "vmdk: cannot allocate the grain directory");
    }
    for (uint32_t i = 0; i < h->gd_entries; i++)
        e->gd[i] = vmdk_le32(raw + 4 * (size_t)i);
    free(raw);
    return 0;
}

/* Open a COWD extent in f (the image file itself when !own). */
int vmdk_add_cowd(vd_node *n, vd_node *f, bool own, const char *type)
{
    uint8_t b[4 + 40];
    struct cowd_header h;
    struct vmdk_extent *e;
    int64_t flen = vd_getlength(f);
    int r;

    if (flen < 0)
        return (int)flen;
    if ((r = read_zfill(f, 0, sizeof(b), b)) < 0)
        return vd_error(-r, "Could not read header from file '%s'", f->filename);
    h.sectors = vmdk_le32(b + 12);
    h.granularity = vmdk_le32(b + 16);
    h.gd_sector = vmdk_le32(b + 20);
    h.gd_entries = vmdk_le32(b + 24);
    if ((r = cowd_check(&h)) < 0 || !(e = vmdk_new_extent(n)))
        return r < 0 ? r : -EINVAL;
    e->file = f;
    e->own_file = own;
    snprintf(e->type, sizeof(e->type), "%s", type);
    r = cowd_setup(e, &h, (uint64_t)flen);
    if (r >= 0)
        r = vmdk_commit_extent(n, e);
    if (r < 0) {
        free(e->gd);
        e->gd = NULL;
    }
    return r;
}

/* ---- seSparse ---- */

/* The constant header's fields, in file order. */
enum { SE_MAGIC, SE_VER, SE_CAP, SE_GRAIN, SE_GTSIZE, SE_FLAGS, SE_RES1, SE_RES4 = 9,
       SE_VOL_OFF, SE_GD_OFF = 16, SE_GD_SIZE, SE_GT_OFF, SE_GRAINS_OFF = 24, SE_FIELDS = 26 };

/* QEMU's strict checks of the constant header, with its messages. */
static int se_check_const(const uint64_t *v, const uint8_t *pad, size_t padlen)
{
    if (v[SE_MAGIC] != SE_CONST_MAGIC)
        return vd_error(EINVAL, "Bad const header magic: 0x%016" PRIx64, v[SE_MAGIC]);
    if (v[SE_VER] != SE_VERSION)
        return vd_error(ENOTSUP, "Unsupported version: 0x%016" PRIx64, v[SE_VER]);
    if (v[SE_GRAIN] != SE_GRAIN_SECT)
        return vd_error(ENOTSUP, "Unsupported grain size: %" PRIu64, v[SE_GRAIN]);
    if (v[SE_GTSIZE] != SE_GT_SECT)
        return vd_error(ENOTSUP, "Unsupported grain table size: %" PRIu64, v[SE_GTSIZE]);
    if (v[SE_FLAGS])
        return vd_error(ENOTSUP, "Unsupported flags: 0x%016" PRIx64, v[SE_FLAGS]);
    if (v[SE_RES1] || v[SE_RES1 + 1] || v[SE_RES1 + 2] || v[SE_RES4])
        return vd_error(ENOTSUP, "Unsupported reserved bits: 0x%016" PRIx64 " 0x%016" PRIx64
                        " 0x%016" PRIx64 " 0x%016" PRIx64, v[SE_RES1], v[SE_RES1 + 1],
                        v[SE_RES1 + 2], v[SE_RES4]);
    if (!buffer_is_zero(pad, padlen))
        return vd_error(ENOTSUP, "Unsupported non-zero const header padding");
    return 0;
}

/* The volatile header at sector vol (QEMU's checks and messages). */
static int se_check_volatile(vd_node *f, uint64_t vol)
{
    uint8_t b[VMDK_SECTOR];
    int r;

    if (vol >= (1ull << 54))           /* a negative offset for QEMU */
        return vd_error(EIO, "Could not read volatile header from file '%s': Input/output "
                        "error", f->filename);
    if ((r = read_zfill(f, vol * VMDK_SECTOR, sizeof(b), b)) < 0)
        return vd_error(-r, "Could not read volatile header from file '%s'", f->filename);
    if (vmdk_le64(b) != SE_VOL_MAGIC)
        return vd_error(EINVAL, "Bad volatile header magic: 0x%016" PRIx64, vmdk_le64(b));
    if (vmdk_le64(b + 24))
        return vd_error(ENOTSUP, "Image is dirty, Replaying journal not supported");
    if (!buffer_is_zero(b + 32, sizeof(b) - 32))
        return vd_error(ENOTSUP, "Unsupported non-zero volatile header padding");
    return 0;
}

/* Directory size in entries (QEMU's cap), table and grain bases. */
static int se_layout(const uint64_t *v, struct vmdk_se *se, uint64_t *entries)
{
    if (v[SE_GD_SIZE] > (uint64_t)VMDK_MAX_GD_ENTRIES / (VMDK_SECTOR / 8))
        return vd_error(EFBIG, "L1 size too big");
    *entries = v[SE_GD_SIZE] * (VMDK_SECTOR / 8);
    if (v[SE_GT_OFF] >= (1ull << 54) || v[SE_GRAINS_OFF] >= (1ull << 54))
        return vd_error(EINVAL, "vmdk: seSparse grain tables or grains lie outside the file");
    se->gt_base = v[SE_GT_OFF];
    se->grain_base = v[SE_GRAINS_OFF];
    return 0;
}

/* Load the 64-bit directory into se. */
static int se_load_dir(vd_node *f, const uint64_t *v, struct vmdk_se *se, uint64_t flen)
{
    uint64_t entries = 0;
    uint8_t *raw = NULL;
    int r;

    if ((r = se_layout(v, se, &entries)) < 0 ||
        (r = read_dir(f, v[SE_GD_OFF], entries, 8, flen, &raw)) < 0)
        return r;
    if (!(se->gd = vd_calloc_array(entries, sizeof(uint64_t)))) {
        free(raw);
        return vd_error(ENOMEM, "vmdk: cannot allocate the grain directory");
    }
    for (uint64_t i = 0; i < entries; i++)
        se->gd[i] = vmdk_le64(raw + 8 * i);
    se->gd_entries = (uint32_t)entries;
    free(raw);
    return 0;
}

/* Read and check both headers and the directory; the capacity and the
 * file's length out. */
static int se_open(vd_node *f, struct vmdk_se *se, uint64_t *capacity, uint64_t *file_len)
{
    uint8_t b[VMDK_SECTOR];
    uint64_t v[SE_FIELDS];
    int64_t flen = vd_getlength(f);
    int r;

    if (flen < 0)
        return (int)flen;
    *file_len = (uint64_t)flen;
    if ((r = read_zfill(f, 0, sizeof(b), b)) < 0)
        return vd_error(-r, "Could not read const header from file '%s'", f->filename);
    for (int i = 0; i < SE_FIELDS; i++)
        v[i] = vmdk_le64(b + 8 * i);
    if ((r = se_check_const(v, b + 8 * SE_FIELDS, sizeof(b) - 8 * SE_FIELDS)) < 0 ||
        (r = se_check_volatile(f, v[SE_VOL_OFF])) < 0)
        return r;
    *capacity = v[SE_CAP];
    return se_load_dir(f, v, se, (uint64_t)flen);
}

/* Open an seSparse extent (read-only: QEMU's refusal on read-write). */
int vmdk_add_sesparse(vd_node *n, vd_node *f, const char *type)
{
    struct vmdk_se *se;
    struct vmdk_extent *e;
    uint64_t cap = 0, flen = 0;
    int r;

    if (n->flags & VD_O_RDWR)
        return vd_error(EACCES, "No write support for seSparse images available");
    if (!(se = calloc(1, sizeof(*se))))
        return vd_error(ENOMEM, "out of memory");
    if ((r = se_open(f, se, &cap, &flen)) < 0 || !(e = vmdk_new_extent(n))) {
        vmdk_se_free(se);
        return r < 0 ? r : -EINVAL;
    }
    e->file = f;
    e->own_file = true;
    e->se = se;
    e->sectors = cap;
    e->grain_sectors = SE_GRAIN_SECT;
    e->gtes = SE_GTES;
    e->file_len = flen;
    snprintf(e->type, sizeof(e->type), "%s", type);
    if ((r = vmdk_commit_extent(n, e)) < 0) {
        vmdk_se_free(se);
        e->se = NULL;
    }
    return r;
}

void vmdk_se_free(struct vmdk_se *se)
{
    if (se) {
        free(se->gd);
        free(se->gt);
        free(se);
    }
}

/* The sector of grain table gdi, 0 when unallocated. s->lock held. */
static int se_table(const struct vmdk_se *se, uint64_t gdi, uint64_t *sector)
{
    uint64_t d;

    if (gdi >= se->gd_entries)
        return vd_error(EIO, "vmdk: grain %" PRIu64 " is outside the grain directory",
                        gdi * SE_GTES);
    d = se->gd[gdi];
    *sector = 0;
    if (!d)
        return 0;
    if ((d & 0xffffffff00000000ull) != SE_GDE_ALLOC)
        return vd_error(EIO, "vmdk: bad seSparse grain directory entry 0x%016" PRIx64, d);
    *sector = se->gt_base + (d & 0xffffffffu) * SE_GT_SECT;
    if (*sector > 0xffffffffu)
        return vd_error(EIO, "vmdk: seSparse grain table %" PRIu64 " lies too far", gdi);
    return 0;
}

/* Load the table at sector into the one-table cache. s->lock held. */
static int se_load_gt(struct vmdk_extent *e, uint64_t sector)
{
    struct vmdk_se *se = e->se;
    uint64_t bytes = (uint64_t)SE_GTES * 8;
    uint8_t *raw;
    int r;

    if (se->gt_sector == sector && se->gt)
        return 0;
    if (!range_ok(sector * VMDK_SECTOR, bytes, e->file_len))
        return vd_error(EIO, "vmdk: grain table at sector %" PRIu64 " lies beyond the end "
                        "of '%s'", sector, e->file->filename);
    if (!se->gt && !(se->gt = vd_calloc_array(SE_GTES, sizeof(uint64_t))))
        return vd_error(ENOMEM, "out of memory");
    if (!(raw = malloc(bytes)))
        return vd_error(ENOMEM, "out of memory");
    se->gt_sector = 0;
    if ((r = vd_pread(e->file, sector * VMDK_SECTOR, bytes, raw, 0)) >= 0) {
        for (uint32_t i = 0; i < SE_GTES; i++)
            se->gt[i] = vmdk_le64(raw + 8 * (size_t)i);
        se->gt_sector = sector;
    }
    free(raw);
    return r;
}

/* Decode a table entry: kind and, for data, the grain's host sector. */
static int se_decode(const struct vmdk_se *se, uint64_t v, enum vmdk_map_kind *kind,
                     uint64_t *sector)
{
    uint64_t idx, off;

    switch (v & SE_TYPE_MASK) {
    case 0:
        *kind = VMDK_UNALLOC;
        return v ? vd_error(EIO, "vmdk: bad seSparse grain table entry 0x%016" PRIx64, v)
                 : 0;
    case 1ull << 60:               /* unmapped: reads as zeroes, as in QEMU */
    case 2ull << 60:
        *kind = VMDK_ZERO;
        return 0;
    case 3ull << 60:
        idx = ((v & 0x0fff000000000000ull) >> 48) | ((v & 0x0000ffffffffffffull) << 12);
        if (MUL_OVERFLOW(idx, (uint64_t)SE_GRAIN_SECT, &off) ||
            ADD_OVERFLOW(off, se->grain_base, sector) || *sector >= (1ull << 54))
            return vd_error(EIO, "vmdk: seSparse grain %" PRIu64 " lies too far", idx);
        *kind = VMDK_DATA;
        return 0;
    default:
        return vd_error(EIO, "vmdk: bad seSparse grain table entry 0x%016" PRIx64, v);
    }
}

/* Kind and host sector of grain g. s->lock held. */
static int se_grain(struct vmdk_extent *e, uint64_t g, enum vmdk_map_kind *kind,
                    uint64_t *sector)
{
    uint64_t gts = 0;
    int r;

    if ((r = se_table(e->se, g / SE_GTES, &gts)) < 0)
        return r;
    if (!gts) {
        *kind = VMDK_UNALLOC;
        return 0;
    }
    if ((r = se_load_gt(e, gts)) < 0)
        return r;
    return se_decode(e->se, e->se->gt[g % SE_GTES], kind, sector);
}

/* Map [off, off+len) of an seSparse extent as map_sparse does for the
 * others: the first grain's answer joined with like grains after it. */
int vmdk_se_map(struct vmdk_state *s, struct vmdk_extent *e, uint64_t off, uint64_t len,
                struct vmdk_map *m)
{
    uint64_t gb = (uint64_t)SE_GRAIN_SECT * VMDK_SECTOR, rel = off - e->start;
    uint64_t g = rel / gb, in = rel % gb, first = 0, sec = 0;
    enum vmdk_map_kind k;
    int r;

    pthread_mutex_lock(&s->lock);
    r = se_grain(e, g, &m->kind, &first);
    m->bytes = VD_MIN(len, gb - in);
    for (uint64_t i = 1; r >= 0 && m->bytes < len && i < 8192; i++) {
        if (se_grain(e, g + i, &k, &sec) < 0 || k != m->kind ||
            (k == VMDK_DATA && sec != first + i * SE_GRAIN_SECT))
            break;
        m->bytes += VD_MIN(len - m->bytes, gb);
    }
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return r;
    vd_error_clear();
    m->in = in;
    m->grain_host = first * VMDK_SECTOR;
    m->host = m->grain_host + in;
    if (m->kind == VMDK_DATA && first < 1)
        return vd_error(EIO, "vmdk: grain %" PRIu64 " lies in the header", g);
    return 0;
}
