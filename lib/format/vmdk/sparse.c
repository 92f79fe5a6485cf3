/* SPDX-License-Identifier: BSD-3-Clause */
/* Hosted sparse extents (VMDK4 "KDMV"): header checks with QEMU 7.2's
 * messages and limits, the grain directory and its redundant copy, grain
 * tables cached per extent, grains allocated at the end of the file (as
 * QEMU places them), compressed grains with markers (streamOptimized).
 *
 * Invariants:
 *  1. A grain table entry is written only after the grain's bytes are on
 *     disk (whole grain: data, then zeroes or backing data around it; the
 *     file grown and flushed before the entry goes out, so no power loss
 *     leaves an entry pointing past the end of the file or at bytes never
 *     written; streamOptimized extents, written once by convert, skip
 *     that flush).  The entry, then its redundant copy, then a flush (as
 *     QEMU); the directories never change (tables are preallocated).
 *     Each step is named by an event (vmdk_grain_write, vmdk_gt_update,
 *     vmdk_rgt_update) for fault injection.
 *  2. Allocation runs under alloc_lock, one grain at a time; next_grain
 *     only grows.  s->lock guards the grain table cache and is held for
 *     metadata only, never across guest data I/O.
 *  3. Every directory, table and grain offset is checked against the
 *     file before use: tables past the end of the file, into the header
 *     or out of the directory are errors, never reads of other bytes. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "vmdk.h"

static pthread_mutex_t alloc_lock = PTHREAD_MUTEX_INITIALIZER;

/* Read from f, zero-filled past its end. */
static int read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf)
{
    int64_t end = vd_getlength(f);
    uint64_t l;

    if (end < 0)
        return (int)end;
    l = off >= (uint64_t)end ? 0 : VD_MIN(len, (uint64_t)end - off);
    if (l < len)
        memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(f, off, l, buf, 0) : 0;
}

/* Append a zeroed extent to the list. */
struct vmdk_extent *vmdk_new_extent(vd_node *n)
{
    struct vmdk_state *s = n->state;
    struct vmdk_extent *e;

    if (s->n_ext >= VMDK_MAX_EXTENTS) {
        vd_error(EINVAL, "vmdk: more than %u extents", VMDK_MAX_EXTENTS);
        return NULL;
    }
    e = realloc(s->ext, (s->n_ext + 1) * sizeof(*e));
    if (!e) {
        vd_error(ENOMEM, "out of memory");
        return NULL;
    }
    s->ext = e;
    e = &s->ext[s->n_ext];
    memset(e, 0, sizeof(*e));
    return e;
}

/* Account a new extent (the last one) in the disk size. */
int vmdk_commit_extent(vd_node *n, struct vmdk_extent *e)
{
    struct vmdk_state *s = n->state;
    uint64_t bytes, end;

    if (MUL_OVERFLOW(e->sectors, (uint64_t)VMDK_SECTOR, &bytes) ||
        ADD_OVERFLOW(s->size, bytes, &end) || end > (uint64_t)INT64_MAX)
        return vd_error(EFBIG, "Could not refresh total sector count: File too large");
    e->start = s->size;
    s->size = end;
    s->n_ext++;
    return 0;
}

/* A flat extent: sectors of f from offset on. */
int vmdk_add_flat(vd_node *n, vd_node *f, const char *type, uint64_t sectors,
                  uint64_t offset)
{
    struct vmdk_extent *e = vmdk_new_extent(n);

    if (!e)
        return -EINVAL;
    e->file = f;
    e->own_file = true;
    e->flat = true;
    e->sectors = sectors;
    e->flat_offset = offset;
    snprintf(e->type, sizeof(e->type), "%s", type);
    return vmdk_commit_extent(n, e);
}

/* The header fields, host order. */
struct vmdk4_header {
    uint32_t version, flags, gtes;
    uint64_t capacity, granularity, desc_offset, desc_size, rgd_offset, gd_offset,
        grain_offset;
    uint16_t compress;
};

static void decode_header(const uint8_t *h, struct vmdk4_header *hd)
{
    hd->version = vmdk_le32(h + VH4_VERSION);
    hd->flags = vmdk_le32(h + VH4_FLAGS);
    hd->capacity = vmdk_le64(h + VH4_CAPACITY);
    hd->granularity = vmdk_le64(h + VH4_GRANULARITY);
    hd->desc_offset = vmdk_le64(h + VH4_DESC_OFFSET);
    hd->desc_size = vmdk_le64(h + VH4_DESC_SIZE);
    hd->gtes = vmdk_le32(h + VH4_GTES);
    hd->rgd_offset = vmdk_le64(h + VH4_RGD_OFFSET);
    hd->gd_offset = vmdk_le64(h + VH4_GD_OFFSET);
    hd->grain_offset = vmdk_le64(h + VH4_GRAIN_OFFSET);
    hd->compress = (uint16_t)(h[VH4_COMPRESS] | h[VH4_COMPRESS + 1] << 8);
}

/* streamOptimized with the directory at the end: the footer's header
 * replaces the first one (after QEMU's sanity checks). */
static int read_footer(vd_node *f, uint64_t file_len, struct vmdk4_header *hd)
{
    uint8_t b[1536];
    int r;

    if (file_len < sizeof(b))
        return vd_error(EINVAL, "Invalid footer");
    if ((r = vd_pread(f, file_len - sizeof(b), sizeof(b), b, 0)) < 0)
        return vd_error(-r, "Failed to read footer");
    if (vmdk_le32(b + 512) != 0x564d444bu || vmdk_le32(b + 8) != 0 ||
        vmdk_le32(b + 12) != MARKER_FOOTER || vmdk_le64(b + 1024) != 0 ||
        vmdk_le32(b + 1032) != 0 || vmdk_le32(b + 1036) != MARKER_EOS)
        return vd_error(EINVAL, "Invalid footer");
    decode_header(b + 512, hd);
    return 0;
}

/* QEMU's checks of the header, in its order and with its messages. */
static int check_header(vd_node *n, const struct vmdk4_header *hd, uint64_t file_len,
                        uint64_t *gd_entries)
{
    uint32_t entry_sectors = (uint32_t)(hd->gtes * hd->granularity);
    bool compressed = hd->compress == VMDK4_DEFLATE;

    if (hd->version > 3)
        return vd_error(ENOTSUP, "Unsupported VMDK version %" PRIu32, hd->version);
    if (hd->version == 3 && (n->flags & VD_O_RDWR) && !compressed)
        return vd_error(EINVAL, "VMDK version 3 must be read only");
    if (hd->gtes > VMDK_MAX_GTES)
        return vd_error(EINVAL, "L2 table size too big");
    if (entry_sectors == 0)
        return vd_error(EINVAL, "L1 entry size is invalid");
    *gd_entries = hd->capacity / entry_sectors + (hd->capacity % entry_sectors != 0);
    if (file_len / VMDK_SECTOR < hd->grain_offset)
        return vd_error(EINVAL, "File truncated, expecting at least %" PRId64 " bytes",
                        (int64_t)(hd->grain_offset * VMDK_SECTOR));
    if (hd->granularity > VMDK_MAX_GRAIN_SECT)
        return vd_error(EFBIG, "Invalid granularity, image may be corrupt");
    if (*gd_entries > VMDK_MAX_GD_ENTRIES)
        return vd_error(EFBIG, "L1 size too big");
    return 0;
}

/* Checks of vdisk's own: a power-of-two grain, whole grain tables, the
 * directories inside the file and past the header. */
static int check_layout(const struct vmdk4_header *hd, uint64_t gd_entries,
                        uint64_t file_len)
{
    uint64_t gd_bytes = gd_entries * 4;

    if (!is_power_of_2(hd->granularity))
        return vd_error(EINVAL, "vmdk: grain size of %" PRIu64 " sectors is not a power "
                        "of two", hd->granularity);
    if (hd->capacity >= (1ull << 54))
        return vd_error(EFBIG, "vmdk: capacity of %" PRIu64 " sectors is too large",
                        hd->capacity);
    if (!gd_entries)
        return 0;
    if (hd->gd_offset == 0 || hd->gd_offset >= (1ull << 54) ||
        !range_ok(hd->gd_offset * VMDK_SECTOR, gd_bytes, file_len))
        return vd_error(EINVAL, "vmdk: grain directory (%" PRIu64 " entries at sector %"
                        PRIu64 ") lies outside the file", gd_entries, hd->gd_offset);
    if ((hd->flags & VMDK4_FLAG_RGD) &&
        (hd->rgd_offset == 0 || hd->rgd_offset >= (1ull << 54) ||
         !range_ok(hd->rgd_offset * VMDK_SECTOR, gd_bytes, file_len)))
        return vd_error(EINVAL, "vmdk: redundant grain directory (%" PRIu64 " entries at "
                        "sector %" PRIu64 ") lies outside the file", gd_entries,
                        hd->rgd_offset);
    return 0;
}

/* Load a directory of e->gd_entries entries at byte off. */
static int load_dir(struct vmdk_extent *e, uint64_t off, uint32_t **out)
{
    uint8_t *raw;
    uint32_t *d;
    int r;

    if ((r = vd_untrusted_table_check(e->file, (uint64_t)e->gd_entries * 4,
                                      "vmdk grain directory")) < 0)
        return r;
    raw = malloc((size_t)e->gd_entries * 4 + 1);
    d = vd_calloc_array(e->gd_entries, sizeof(uint32_t));
    if (!raw || !d) {
        free(raw);
        free(d);
        return vd_error(ENOMEM, "vmdk: cannot allocate the grain directory");
    }
    r = e->gd_entries ? read_padded(e->file, off, (uint64_t)e->gd_entries * 4, raw) : 0;
    for (uint32_t i = 0; r >= 0 && i < e->gd_entries; i++)
        d[i] = vmdk_le32(raw + 4 * (size_t)i);
    free(raw);
    if (r < 0) {
        free(d);
        return vd_error(-r, "Could not read l1 table from extent '%s'", e->file->filename);
    }
    *out = d;
    return 0;
}

/* Fill an extent from a checked header. */
static int setup_sparse(struct vmdk_extent *e, const struct vmdk4_header *hd,
                        uint64_t gd_entries, uint64_t file_len)
{
    int r;

    e->sectors = hd->capacity;
    e->gd_offset = hd->gd_offset * VMDK_SECTOR;
    e->rgd_offset = (hd->flags & VMDK4_FLAG_RGD) ? hd->rgd_offset * VMDK_SECTOR : 0;
    e->gd_entries = (uint32_t)gd_entries;
    e->gtes = hd->gtes;
    e->grain_sectors = hd->granularity;
    e->compressed = hd->compress == VMDK4_DEFLATE;
    e->has_marker = hd->flags & VMDK4_FLAG_MARKER;
    e->zero_grain = hd->flags & VMDK4_FLAG_ZERO_GRAIN;
    e->version = (int)hd->version;
    e->file_len = file_len;
    e->next_grain = div_round_up(file_len, VMDK_SECTOR);
    e->next_grain = div_round_up(e->next_grain, e->grain_sectors) * e->grain_sectors;
    if ((r = load_dir(e, e->gd_offset, &e->gd)) < 0)
        return r;
    if (e->rgd_offset && (r = load_dir(e, e->rgd_offset, &e->rgd)) < 0)
        return r;
    return 0;
}

/* Open a sparse extent in f (the image file itself when !own); head is
 * f's text from vmdk_read_text when the caller has it (NULL: read here). */
int vmdk_add_sparse(vd_node *n, vd_node *f, bool own, const char *type, int depth,
                    const char *head)
{
    struct vmdk_state *s = n->state;
    int64_t flen = vd_getlength(f);
    uint8_t h[VMDK_SECTOR];
    struct vmdk4_header hd;
    struct vmdk_extent *e;
    uint64_t gd_entries = 0;
    char *text = NULL;
    int r;

    if (!head && (r = vmdk_read_text(f, 0, &text)) < 0)
        return r;
    memcpy(h, head ? head : text, 4);
    free(text);
    text = NULL;
    if (!memcmp(h, "COWD", 4))
        return vmdk_add_cowd(n, f, own, type);
    if (memcmp(h, "KDMV", 4))
        return vd_error(EINVAL, "Image not in VMDK format");
    if ((r = read_padded(f, 0, sizeof(h), h)) < 0)
        return vd_error(EINVAL, "Could not read header from file '%s'", f->filename);
    decode_header(h, &hd);
    if (hd.capacity == 0 && hd.desc_offset) {
        if (hd.desc_offset >= (1ull << 54))
            return vd_error(EINVAL, "vmdk: descriptor offset out of range");
        if ((r = vmdk_read_text(f, hd.desc_offset * VMDK_SECTOR, &text)) < 0)
            return r;
        r = vmdk_open_descriptor(n, text, depth);
        free(text);
        return r;
    }
    if (!s->create_type[0])
        snprintf(s->create_type, sizeof(s->create_type), "monolithicSparse");
    if (hd.gd_offset == VMDK4_GD_AT_END && (r = read_footer(f, (uint64_t)flen, &hd)) < 0)
        return r;
    if ((r = check_header(n, &hd, (uint64_t)flen, &gd_entries)) < 0 ||
        (r = check_layout(&hd, gd_entries, (uint64_t)flen)) < 0)
        return r;
    if (!(e = vmdk_new_extent(n)))
        return -EINVAL;
    e->file = f;
    e->own_file = own;
    snprintf(e->type, sizeof(e->type), "%s", type);
    r = setup_sparse(e, &hd, gd_entries, (uint64_t)flen);
    if (r >= 0)
        r = vmdk_commit_extent(n, e);
    if (r < 0) {
        free(e->gd);
        free(e->rgd);
        return r;
    }
    if (e->compressed)
        snprintf(s->create_type, sizeof(s->create_type), "streamOptimized");
    return 0;
}

/* Free the extents and close the files opened for them. */
void vmdk_free_extents(struct vmdk_state *s)
{
    for (uint32_t i = 0; i < s->n_ext; i++) {
        struct vmdk_extent *e = &s->ext[i];
        free(e->gd);
        free(e->rgd);
        vmdk_se_free(e->se);
        for (unsigned k = 0; k < VMDK_GT_CACHE; k++)
            free(e->cache[k].e);
        if (e->own_file)
            vd_close(e->file);
    }
    free(s->ext);
    s->ext = NULL;
    s->n_ext = 0;
}

/* ---- lookup ---- */

/* The extent holding guest byte off (binary search on start). */
static struct vmdk_extent *find_extent(struct vmdk_state *s, uint64_t off)
{
    uint32_t lo = 0, hi = s->n_ext;

    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->ext[mid].start <= off)
            lo = mid;
        else
            hi = mid;
    }
    return s->n_ext ? &s->ext[lo] : NULL;
}

/* The grain table at sector gts (checked against the file), from the
 * cache or read into it.  s->lock held. */
static int load_gt(struct vmdk_extent *e, uint32_t gdi, uint32_t gts, uint32_t **out)
{
    struct vmdk_gt *c = &e->cache[gdi % VMDK_GT_CACHE];
    uint64_t bytes = (uint64_t)e->gtes * 4;
    uint8_t *raw;
    int r;

    if (c->sector == gts && c->e) {
        *out = c->e;
        return 0;
    }
    if (!range_ok((uint64_t)gts * VMDK_SECTOR, bytes, e->file_len))
        return vd_error(EIO, "vmdk: grain table at sector %" PRIu32 " lies beyond the end "
                        "of '%s'", gts, e->file->filename);
    if (!c->e && !(c->e = vd_calloc_array(e->gtes, 4)))
        return vd_error(ENOMEM, "out of memory");
    if (!(raw = malloc(bytes + 1)))
        return vd_error(ENOMEM, "out of memory");
    c->sector = 0;
    if ((r = vd_pread(e->file, (uint64_t)gts * VMDK_SECTOR, bytes, raw, 0)) < 0) {
        free(raw);
        return r;
    }
    for (uint32_t i = 0; i < e->gtes; i++)
        c->e[i] = vmdk_le32(raw + 4 * (size_t)i);
    free(raw);
    c->sector = gts;
    *out = c->e;
    return 0;
}

/* Kind and host sector of grain g of a sparse extent. s->lock held. */
static int grain_entry(struct vmdk_extent *e, uint64_t g, enum vmdk_map_kind *kind,
                       uint32_t *sector)
{
    uint64_t gdi = g / e->gtes;
    uint32_t *gt = NULL;
    int r;

    if (gdi >= e->gd_entries)
        return vd_error(EIO, "vmdk: grain %" PRIu64 " is outside the grain directory", g);
    if (!e->gd[gdi]) {
        *kind = VMDK_UNALLOC;
        return 0;
    }
    if ((r = load_gt(e, (uint32_t)gdi, e->gd[gdi], &gt)) < 0)
        return r;
    *sector = gt[g % e->gtes];
    *kind = !*sector ? VMDK_UNALLOC
          : (e->zero_grain && *sector == VMDK_GTE_ZEROED) ? VMDK_ZERO : VMDK_DATA;
    return 0;
}

/* Map [off, off+len) of a sparse extent: the first grain's answer,
 * joined with following grains of the same kind (data: contiguous). */
static int map_sparse(struct vmdk_state *s, struct vmdk_extent *e, uint64_t off,
                      uint64_t len, struct vmdk_map *m)
{
    uint64_t gb = e->grain_sectors * VMDK_SECTOR, rel = off - e->start;
    uint64_t g = rel / gb, in = rel % gb;
    enum vmdk_map_kind k;
    uint32_t sec = 0, first = 0;
    int r;

    if (e->se)
        return vmdk_se_map(s, e, off, len, m);
    pthread_mutex_lock(&s->lock);
    r = grain_entry(e, g, &m->kind, &first);
    m->bytes = VD_MIN(len, gb - in);
    for (uint64_t i = 1; r >= 0 && m->bytes < len && i < 8192 && !e->compressed; i++) {
        if (grain_entry(e, g + i, &k, &sec) < 0 || k != m->kind ||
            (k == VMDK_DATA && (uint64_t)sec != (uint64_t)first + i * e->grain_sectors))
            break;
        m->bytes += VD_MIN(len - m->bytes, gb);
    }
    pthread_mutex_unlock(&s->lock);
    vd_error_clear();
    if (r < 0)
        return r;
    m->in = in;
    m->grain_host = (uint64_t)first * VMDK_SECTOR;
    m->host = m->grain_host + in;
    if (m->kind == VMDK_DATA && first < 1)
        return vd_error(EIO, "vmdk: grain %" PRIu64 " lies in the header", g);
    return 0;
}

/* What guest bytes [off, off+len) map to (off inside the disk). */
int vmdk_lookup(vd_node *n, uint64_t off, uint64_t len, struct vmdk_map *m)
{
    struct vmdk_state *s = n->state;
    struct vmdk_extent *e = find_extent(s, off);
    uint64_t end;

    if (!e)
        return vd_error(EIO, "vmdk: no extent at offset %" PRIu64, off);
    end = e->start + e->sectors * VMDK_SECTOR;
    len = VD_MIN(len, end - off);
    m->ext = e;
    if (e->flat) {
        m->kind = VMDK_DATA;
        m->bytes = len;
        m->in = 0;
        if (ADD_OVERFLOW(e->flat_offset, off - e->start, &m->host))
            return vd_error(EIO, "vmdk: flat extent offset overflows");
        m->grain_host = m->host;
        return 0;
    }
    return map_sparse(s, e, off, len, m);
}

/* ---- reads ---- */

/* Read a compressed grain (marker, deflate data) and copy the part
 * m->in.. of m->bytes out of it. */
static int read_compressed(struct vmdk_extent *e, const struct vmdk_map *m, void *buf)
{
    uint64_t gb = e->grain_sectors * VMDK_SECTOR;
    uint8_t *raw = malloc(2 * gb), *out = malloc(gb);
    uLongf out_len = gb;
    uint32_t data_len = (uint32_t)gb;
    const uint8_t *data;
    int r;

    if (!raw || !out) {
        r = vd_error(ENOMEM, "out of memory");
        goto done;
    }
    if ((r = read_padded(e->file, m->grain_host, 2 * gb, raw)) < 0)
        goto done;
    data = raw;
    if (e->has_marker) {
        data_len = vmdk_le32(raw + 8);
        data = raw + 12;
    }
    r = vd_error(EIO, "vmdk: compressed grain at offset %" PRIu64 " is corrupt",
                 m->grain_host);
    if (!data_len || data_len > 2 * gb - (uint64_t)(data - raw))
        goto done;
    if (uncompress(out, &out_len, data, data_len) != Z_OK || m->in + m->bytes > out_len)
        goto done;
    memcpy(buf, out + m->in, m->bytes);
    vd_error_clear();
    r = 0;
done:
    free(raw);
    free(out);
    return r;
}

/* Read the bytes of a data mapping. */
int vmdk_read_grain(vd_node *n, const struct vmdk_map *m, void *buf)
{
    struct vmdk_extent *e = m->ext;
    int64_t flen;

    if (e->compressed)
        return read_compressed(e, m, buf);
    if (!e->flat && m->grain_host >= e->file_len)
        return vd_error(EIO, "vmdk: grain at offset %" PRIu64 " lies beyond the end of '%s'",
                        m->grain_host, e->file->filename);
    if (!e->flat)
        return read_padded(e->file, m->host, m->bytes, buf);
    flen = vd_getlength(e->file);
    if (flen < 0)
        return (int)flen;
    return read_padded(e->file, m->host, m->bytes, buf);
}

/* ---- allocation ---- */

/* Write entry value of grain g into the grain table and its redundant
 * copy, flush, then update the cache (invariant 1: after the grain). */
static int set_gte(vd_node *n, struct vmdk_extent *e, uint64_t g, uint32_t value)
{
    struct vmdk_state *s = n->state;
    uint64_t gdi = g / e->gtes, idx = g % e->gtes;
    uint32_t secs[2] = { e->gd[gdi], e->rgd ? e->rgd[gdi] : 0 };
    uint8_t v[4];
    int r;

    vmdk_put32(v, value);
    if (!secs[0])
        return vd_error(ENOTSUP, "vmdk: grain %" PRIu64 " has no grain table", g);
    for (int i = 0; i < 2; i++) {
        uint64_t at = (uint64_t)secs[i] * VMDK_SECTOR + idx * 4;
        if (!secs[i])
            continue;
        if (!range_ok(at, 4, e->file_len))
            return vd_error(EIO, "vmdk: grain table at sector %" PRIu32 " lies beyond the "
                            "end of the file", secs[i]);
        vd_event(e->file, i ? "vmdk_rgt_update" : "vmdk_gt_update");
        if ((r = vd_pwrite(e->file, at, 4, v, 0)) < 0)
            return r;
    }
    if ((r = vd_flush(e->file)) < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    struct vmdk_gt *c = &e->cache[gdi % VMDK_GT_CACHE];
    if (c->e && c->sector == secs[0])
        c->e[idx] = value;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* The sector for a grain of sectors more: next_grain, if the extent can
 * still address it. alloc_lock held. */
static int take_sectors(struct vmdk_extent *e, uint64_t sectors, uint64_t *out)
{
    if (e->next_grain + sectors > VMDK_EXTENT_MAX_SECT)
        return vd_error(EIO, "vmdk: extent '%s' is full", e->file->filename);
    *out = e->next_grain;
    return 0;
}

/* Grow the file (and its known length) to at least end bytes. */
static int grow_to(struct vmdk_extent *e, uint64_t end)
{
    int r;

    if (end > e->file_len) {
        if ((r = vd_truncate(e->file, end, true, VD_PREALLOC_OFF)) < 0)
            return vd_error_prefix(r, "vmdk: could not grow '%s'", e->file->filename);
        e->file_len = end;
    }
    return 0;
}

/* Write a new grain's bytes at host offset at, growing the known file
 * length, and flush them (invariant 1: before the table entry) unless
 * the extent is streamOptimized, which only convert writes, start to end
 * (an image cut short there is incomplete anyway, as in QEMU). */
static int write_at(struct vmdk_extent *e, uint64_t at, uint64_t len, const void *buf)
{
    int r;

    vd_event(e->file, "vmdk_grain_write");
    if ((r = grow_to(e, at + len)) < 0 || (r = vd_pwrite(e->file, at, len, buf, 0)) < 0)
        return r;
    return e->compressed ? 0 : vd_flush(e->file);
}

/* Allocate the grain under guest bytes [off, off+len) (one grain of an
 * uncompressed sparse extent) and write them; the rest of the grain is
 * zero, or the backing file's bytes unless the grain was zeroed.
 * Returns 1 when someone allocated it meanwhile (write in place then). */
int vmdk_alloc_grain(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    struct vmdk_map m;
    struct vmdk_extent *e;
    uint64_t gb, gstart, sector = 0;
    uint8_t *grain = NULL;
    int r;

    pthread_mutex_lock(&alloc_lock);
    if ((r = vmdk_lookup(n, off, len, &m)) < 0 || m.kind == VMDK_DATA) {
        pthread_mutex_unlock(&alloc_lock);
        return r < 0 ? r : 1;
    }
    e = m.ext;
    gb = e->grain_sectors * VMDK_SECTOR;
    gstart = off - m.in;
    if ((r = take_sectors(e, e->grain_sectors, &sector)) < 0)
        goto out;
    if (!(grain = calloc(1, gb))) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    if (m.kind == VMDK_UNALLOC && n->backing &&
        (r = vmdk_read_backing(n, gstart, VD_MIN(gb, e->start + e->sectors * VMDK_SECTOR -
                                                 gstart), grain)) < 0)
        goto out;
    memcpy(grain + m.in, buf, len);
    if ((r = write_at(e, sector * VMDK_SECTOR, gb, grain)) < 0 ||
        (r = set_gte(n, e, (gstart - e->start) / gb, (uint32_t)sector)) < 0)
        goto out;
    e->next_grain = sector + e->grain_sectors;
out:
    pthread_mutex_unlock(&alloc_lock);
    free(grain);
    return r;
}

/* Mark the grain at guest offset off (grain-aligned) as zeroed; -ENOTSUP
 * unless the extent has the zeroed-grain feature. */
int vmdk_zero_grain(vd_node *n, uint64_t off)
{
    struct vmdk_map m;
    int r;

    pthread_mutex_lock(&alloc_lock);
    if ((r = vmdk_lookup(n, off, 1, &m)) >= 0 && m.kind != VMDK_ZERO)
        r = set_gte(n, m.ext, (off - m.ext->start) / (m.ext->grain_sectors * VMDK_SECTOR),
                    VMDK_GTE_ZEROED);
    pthread_mutex_unlock(&alloc_lock);
    return r;
}

/* The streamOptimized grain under guest bytes [off, off+len): a whole
 * unallocated grain (or the extent's tail) of a compressed extent. */
static int stream_grain(vd_node *n, uint64_t off, uint64_t len, struct vmdk_map *m)
{
    struct vmdk_extent *e;
    uint64_t gb;
    int r;

    if ((r = vmdk_lookup(n, off, len, m)) < 0)
        return r;
    e = m->ext;
    gb = e->grain_sectors * VMDK_SECTOR;
    if (m->kind == VMDK_DATA)
        return vd_error(EIO, "Could not write to allocated cluster for streamOptimized");
    if (m->in || len > gb || (len < gb && off + len != e->start + e->sectors * VMDK_SECTOR) ||
        !e->has_marker)
        return vd_error(EINVAL, "vmdk: streamOptimized images take whole grains only");
    return 0;
}

/* Compress the grain at guest offset off into out (VD_COMPRESS_ROOM(len)
 * bytes): a marker (guest sector, length, deflate data) padded with zeroes
 * to whole sectors, *olen bytes.  No I/O: writers compress in parallel. */
int vmdk_compress_grain(vd_node *n, uint64_t off, uint64_t len, const void *buf,
                        void *out, size_t *olen)
{
    uLongf clen = VD_COMPRESS_ROOM(len) - 12 - VMDK_SECTOR;
    struct vmdk_map m;
    uint8_t *b = out;
    int r;

    if ((r = stream_grain(n, off, len, &m)) < 0)
        return r;
    if (compress(b + 12, &clen, buf, len) != Z_OK || clen == 0)
        return vd_error(EINVAL, "vmdk: cannot compress a grain");
    vmdk_put64(b, off / VMDK_SECTOR);
    vmdk_put32(b + 8, (uint32_t)clen);
    *olen = div_round_up(12 + clen, VMDK_SECTOR) * VMDK_SECTOR;
    memset(b + 12 + clen, 0, *olen - 12 - clen);
    return 0;
}

/* Append a grain compressed by vmdk_compress_grain at the end of its
 * extent, then link it (invariant 1).  The file first grows by a whole
 * grain, as QEMU zeroes the grain it allocates before it writes the
 * shorter compressed one there (the next grain overwrites those zeroes;
 * after the last one they stay). */
int vmdk_store_grain(vd_node *n, uint64_t off, uint64_t len, const void *data, size_t dlen)
{
    struct vmdk_map m;
    struct vmdk_extent *e;
    uint64_t sector = 0;
    int r;

    if (dlen % VMDK_SECTOR || dlen == 0 || dlen > VD_COMPRESS_ROOM(len))
        return vd_error(EINVAL, "vmdk: a compressed grain of %zu bytes", dlen);
    pthread_mutex_lock(&alloc_lock);
    if ((r = stream_grain(n, off, len, &m)) >= 0) {
        e = m.ext;
        if ((r = take_sectors(e, dlen / VMDK_SECTOR, &sector)) >= 0 &&
            (r = grow_to(e, sector * VMDK_SECTOR +
                            VD_MAX(dlen, e->grain_sectors * VMDK_SECTOR))) >= 0 &&
            (r = write_at(e, sector * VMDK_SECTOR, dlen, data)) >= 0 &&
            (r = set_gte(n, e, (off - e->start) / (e->grain_sectors * VMDK_SECTOR),
                         (uint32_t)sector)) >= 0)
            e->next_grain = sector + dlen / VMDK_SECTOR;
    }
    pthread_mutex_unlock(&alloc_lock);
    return r;
}

/* Write one whole grain (or the extent's tail) of a streamOptimized
 * extent: compressed outside the lock (so writers compress in parallel),
 * appended at the end, then linked. */
int vmdk_write_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    uint8_t *b = malloc(VD_COMPRESS_ROOM(len));
    size_t olen = 0;
    int r;

    if (!b)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vmdk_compress_grain(n, off, len, buf, b, &olen)) >= 0)
        r = vmdk_store_grain(n, off, len, b, olen);
    free(b);
    return r;
}
