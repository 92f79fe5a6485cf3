/* SPDX-License-Identifier: BSD-3-Clause */
/* vpc: guest reads, writes and block status.  A fixed image's data is its
 * file at the guest offset.  A dynamic image maps each block through the
 * BAT; guest data is read and written with s->lock released, metadata
 * changes under it.
 *
 * Invariants:
 *  1. Every block the guest can reach lies inside the file as opened and
 *     overlaps neither another such block nor the footer copy, the
 *     dynamic header or the BAT (vpc.c checks it at open).
 *  2. free_offset is past every block and all the metadata.  A new block
 *     goes there, written in QEMU's order, each write made stable before
 *     the next: its bitmap (all ones), the footer just behind the block,
 *     then its BAT entry, so the BAT never names space the file lacks.
 *  3. A sector whose bitmap bit is clear reads as zeroes, or in a
 *     differencing image (parent.c) from the parent, as do unwritten
 *     blocks.  QEMU sets every bit of a block on its first write; before a
 *     bitmap with clear bits becomes all ones, the clear sectors the write
 *     does not cover are zeroed, or in a differencing image filled with the
 *     parent's bytes (copy on write), so they still read the same.  A new
 *     block of a differencing image starts with a clear bitmap. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/vpc/vpc.h"

/* Where a run of guest bytes lives: in the file at host, or nowhere
 * (reads as zeroes). */
struct vpc_map {
    uint64_t host, len;
    bool present;
};

/* Is bit i (sector i of its block) of a sector bitmap set?  The first
 * sector is the most significant bit of the first byte. */
static bool bit_set(const uint8_t *bm, uint64_t i)
{
    return bm[i / 8] & (0x80u >> (i % 8));
}

/* Grow the file to at least end bytes (QEMU's writes past the end of the
 * file extend it). */
static int grow_file(vd_node *n, uint64_t end)
{
    int64_t flen = vd_getlength(n->file);

    if (flen < 0)
        return (int)flen;
    if ((uint64_t)flen >= end)
        return 0;
    return vd_truncate(n->file, end, true, VD_PREALLOC_OFF);
}

/* Write and make stable (QEMU's bdrv_pwrite_sync). */
static int write_sync(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    int r = vd_pwrite(n->file, off, len, buf, 0);

    return r < 0 ? r : vd_flush(n->file);
}

/* ---- fixed images ---- */

/* Read the file at the guest offset; past its end, zeroes. */
static int read_fixed(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    if (range_ok(off, len, (uint64_t)vd_getlength(n->file)))
        return vd_pread(n->file, off, len, buf, flags);
    return vpc_read_padded(n->file, off, len, buf);
}

/* Write the file at the guest offset, growing it when it is short. */
static int write_fixed(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct vpc_state *s = n->state;
    int r = 0;

    if ((uint64_t)vd_getlength(n->file) < off + len) {   /* off + len <= size */
        pthread_mutex_lock(&s->lock);
        r = grow_file(n, off + len);
        pthread_mutex_unlock(&s->lock);
    }
    return r < 0 ? r : vd_pwrite(n->file, off, len, buf, flags & VD_REQ_FUA);
}

/* Status as QEMU gives it: data at the same offset in the file, and zero
 * where the file reads as zeroes (holes, past its end). */
static int status_fixed(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                        uint64_t *map, vd_node **file)
{
    uint64_t fnum = 0;
    int r = vd_block_status(n->file, off, len, &fnum, NULL, NULL);

    *map = off;
    *file = n->file;
    *pnum = len;
    if (r < 0)
        return VD_BS_DATA | VD_BS_OFFSET_VALID;
    if ((r & VD_BS_EOF) && (fnum == 0 || (r & VD_BS_ZERO)))
        return VD_BS_DATA | VD_BS_ZERO | VD_BS_OFFSET_VALID;
    *pnum = fnum;
    return VD_BS_DATA | VD_BS_OFFSET_VALID | (r & VD_BS_ZERO);
}

/* ---- dynamic images: sector bitmaps (lock held) ---- */

/* File offset of the bitmap of block idx (allocated). */
static uint64_t bitmap_offset(const struct vpc_state *s, uint64_t idx)
{
    return (uint64_t)s->bat[idx] * VPC_SECTOR;
}

/* Read the whole bitmap of block idx into a new buffer. */
static int read_bitmap(vd_node *n, uint64_t idx, uint8_t **out)
{
    struct vpc_state *s = n->state;
    uint8_t *bm = malloc(s->bitmap_size);
    int r;

    if (!bm)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vpc_read_padded(n->file, bitmap_offset(s, idx), s->bitmap_size, bm)) < 0) {
        free(bm);
        return r;
    }
    *out = bm;
    return 0;
}

/* Whether every sector of block idx is present (learnt once per block). */
static int bitmap_state(vd_node *n, uint64_t idx, enum vpc_bitmap_state *st)
{
    struct vpc_state *s = n->state;
    uint64_t spb = s->block_size / VPC_SECTOR, i = 0;
    uint8_t *bm;
    int r;

    if (s->bitmap_state[idx] == VPC_BM_UNKNOWN && s->bitmap_size == 0)
        s->bitmap_state[idx] = VPC_BM_FULL;     /* blocks under 4 KiB: no bitmap */
    if (s->bitmap_state[idx] == VPC_BM_UNKNOWN) {
        if ((r = read_bitmap(n, idx, &bm)) < 0)
            return r;
        while (i < spb && bit_set(bm, i))
            i++;
        free(bm);
        s->bitmap_state[idx] = i == spb ? VPC_BM_FULL : VPC_BM_PARTIAL;
    }
    *st = s->bitmap_state[idx];
    return 0;
}

/* The run of sectors sharing the bit of the one at in_block (a byte
 * offset in block idx), at most avail bytes: its length and bit. */
static int bitmap_run(vd_node *n, uint64_t idx, uint64_t in_block, uint64_t avail,
                      struct vpc_map *m)
{
    struct vpc_state *s = n->state;
    uint64_t first = in_block / VPC_SECTOR, last = (in_block + avail - 1) / VPC_SECTOR;
    uint64_t b0 = first / 8, nbytes = last / 8 - b0 + 1, i = first + 1;
    uint8_t *bm = malloc(nbytes);
    int r;

    if (!bm)
        return vd_error(ENOMEM, "out of memory");
    r = vpc_read_padded(n->file, bitmap_offset(s, idx) + b0, nbytes, bm);
    if (r >= 0) {
        m->present = bit_set(bm, first - b0 * 8);
        while (i <= last && bit_set(bm, i - b0 * 8) == m->present)
            i++;
        m->len = VD_MIN(avail, i * VPC_SECTOR - in_block);
    }
    free(bm);
    return r;
}

/* Map guest offset off (at most len bytes, within its block). */
static int map_dynamic(vd_node *n, uint64_t off, uint64_t len, struct vpc_map *m)
{
    struct vpc_state *s = n->state;
    uint64_t idx = off / s->block_size, in_block = off % s->block_size;
    enum vpc_bitmap_state st;
    int r;

    m->len = VD_MIN(len, s->block_size - in_block);
    m->present = false;
    m->host = 0;
    if (s->bat[idx] == VPC_BAT_FREE)
        return 0;
    m->host = bitmap_offset(s, idx) + s->bitmap_size + in_block;
    if ((r = bitmap_state(n, idx, &st)) < 0)
        return r;
    if (st == VPC_BM_FULL) {
        m->present = true;
        return 0;
    }
    return bitmap_run(n, idx, in_block, m->len, m);
}

/* ---- dynamic images: allocation (lock held) ---- */

/* Append a block for BAT entry idx at free_offset (invariant 2). */
static int alloc_block(vd_node *n, uint64_t idx)
{
    struct vpc_state *s = n->state;
    uint64_t at = s->free_offset, end = at + s->bitmap_size + s->block_size;
    uint8_t entry[4], *ones;
    int r;

    if (at / VPC_SECTOR >= VPC_BAT_FREE || end > INT64_MAX - VPC_FOOTER_SIZE)
        return vd_error(EFBIG, "vpc: no room for block %llu: the image file would pass "
                        "the 2 TiB the BAT can address", (unsigned long long)idx);
    if (!(ones = malloc(s->bitmap_size ? s->bitmap_size : 1)))
        return vd_error(ENOMEM, "out of memory");
    memset(ones, s->diff ? 0 : 0xff, s->bitmap_size);
    vd_put_be32(entry, (uint32_t)(at / VPC_SECTOR));
    if ((r = grow_file(n, end + VPC_FOOTER_SIZE)) >= 0 &&
        (r = write_sync(n, at, s->bitmap_size, ones)) >= 0 &&
        (r = write_sync(n, end, VPC_FOOTER_SIZE, s->footer)) >= 0)
        r = write_sync(n, s->bat_offset + idx * 4, 4, entry);
    free(ones);
    if (r < 0)
        return r;
    s->bat[idx] = (uint32_t)(at / VPC_SECTOR);
    s->bitmap_state[idx] = s->diff ? VPC_BM_PARTIAL : VPC_BM_FULL;
    s->free_offset = end;
    return 0;
}

/* Is sector i absent from bitmap bm and outside the covered sectors
 * [c0, c1)? */
static bool absent_uncovered(const uint8_t *bm, uint64_t i, uint64_t c0, uint64_t c1)
{
    return !bit_set(bm, i) && (i < c0 || i >= c1);
}

/* Give the absent sectors [i, j) of block idx (data at file offset data)
 * what they read: zeroes, or the parent's bytes (invariant 3). */
static int fill_absent(vd_node *n, uint64_t idx, uint64_t data, uint64_t i, uint64_t j)
{
    struct vpc_state *s = n->state;
    uint64_t guest = idx * s->block_size, chunk = 1u << 20;
    uint8_t *buf;
    int r = 0;

    if (!s->diff)
        return vd_pwrite_zeroes(n->file, data + i * VPC_SECTOR, (j - i) * VPC_SECTOR, 0);
    if (!(buf = malloc(VD_MIN(chunk, (j - i) * VPC_SECTOR))))
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t at = i * VPC_SECTOR; r >= 0 && at < j * VPC_SECTOR; at += chunk) {
        uint64_t l = VD_MIN(chunk, j * VPC_SECTOR - at);
        if ((r = vpc_read_parent(n, guest + at, l, buf)) >= 0)
            r = vd_pwrite(n->file, data + at, l, buf, 0);
    }
    free(buf);
    return r;
}

/* Make every sector of block idx present before a write of len bytes at
 * in_block: fill the absent ones the write does not cover whole, then set
 * all bits as QEMU does (invariant 3). */
static int fill_bitmap(vd_node *n, uint64_t idx, uint64_t in_block, uint64_t len)
{
    struct vpc_state *s = n->state;
    uint64_t spb = s->block_size / VPC_SECTOR, data = bitmap_offset(s, idx) + s->bitmap_size;
    uint64_t c0 = div_round_up(in_block, VPC_SECTOR), c1 = (in_block + len) / VPC_SECTOR;
    uint8_t *bm;
    int r;

    if ((r = read_bitmap(n, idx, &bm)) < 0)
        return r;
    for (uint64_t i = 0, j; r >= 0 && i < spb; i = VD_MAX(j, i + 1)) {
        for (j = i; j < spb && absent_uncovered(bm, j, c0, c1); j++)
            ;
        if (j > i)
            r = fill_absent(n, idx, data, i, j);
    }
    memset(bm, 0xff, s->bitmap_size);
    if (r >= 0)
        r = write_sync(n, bitmap_offset(s, idx), s->bitmap_size, bm);
    free(bm);
    if (r >= 0)
        s->bitmap_state[idx] = VPC_BM_FULL;
    return r;
}

/* Where a write of len bytes at guest offset off (within one block)
 * lands, allocating the block first. */
static int prepare_write(vd_node *n, uint64_t off, uint64_t len, uint64_t *host)
{
    struct vpc_state *s = n->state;
    uint64_t idx = off / s->block_size, in_block = off % s->block_size;
    enum vpc_bitmap_state st;
    int r;

    if (s->bat[idx] == VPC_BAT_FREE && (r = alloc_block(n, idx)) < 0)
        return r;
    if ((r = bitmap_state(n, idx, &st)) < 0)
        return r;
    if (st == VPC_BM_PARTIAL && (r = fill_bitmap(n, idx, in_block, len)) < 0)
        return r;
    *host = bitmap_offset(s, idx) + s->bitmap_size + in_block;
    return 0;
}

/* ---- the driver's hooks ---- */

/* Guest read: absent sectors and unwritten blocks read as zeroes. */
int vpc_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct vpc_state *s = n->state;
    char *p = buf;
    int r;

    if (!s->dynamic_io)
        return read_fixed(n, off, len, buf, flags);
    while (len) {
        struct vpc_map m;
        pthread_mutex_lock(&s->lock);
        r = map_dynamic(n, off, len, &m);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
            return r;
        if (m.present)
            r = vd_pread(n->file, m.host, m.len, p, flags);
        else if (s->diff)
            r = vpc_read_parent(n, off, m.len, p);
        else
            memset(p, 0, m.len);
        if (r < 0)
            return r;
        off += m.len;
        len -= m.len;
        p += m.len;
    }
    return 0;
}

/* Guest write, one block at a time. */
int vpc_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct vpc_state *s = n->state;
    const char *p = buf;
    int r;

    if (!s->dynamic_io)
        return write_fixed(n, off, len, buf, flags);
    while (len) {
        uint64_t l = VD_MIN(len, s->block_size - off % s->block_size), host;
        pthread_mutex_lock(&s->lock);
        r = prepare_write(n, off, l, &host);
        pthread_mutex_unlock(&s->lock);
        if (r < 0 || (r = vd_pwrite(n->file, host, l, p, flags & VD_REQ_FUA)) < 0)
            return r;
        off += l;
        len -= l;
        p += l;
    }
    return 0;
}

/* Block status as QEMU reports it: a present run is data at its place in
 * the file (never more than one block, there is a bitmap between two);
 * unwritten blocks and absent sectors read as zeroes, consecutive ones
 * merged. */
int vpc_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                     uint64_t *map, vd_node **file)
{
    struct vpc_state *s = n->state;
    struct vpc_map m;
    uint64_t done;
    int r;

    if (!s->dynamic_io)
        return status_fixed(n, off, len, pnum, map, file);
    pthread_mutex_lock(&s->lock);
    r = map_dynamic(n, off, len, &m);
    for (done = m.len; r >= 0 && !m.present && done < len; done += m.len) {
        struct vpc_map next;
        if ((r = map_dynamic(n, off + done, len - done, &next)) < 0 || next.present)
            break;
        m.len = next.len;
    }
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return r;
    if (!m.present) {
        *pnum = done;
        return s->diff ? 0 : VD_BS_ZERO;   /* the parent's, or zeroes */
    }
    *pnum = m.len;
    *map = m.host;
    *file = n->file;
    return VD_BS_DATA | VD_BS_OFFSET_VALID;
}
