/* SPDX-License-Identifier: BSD-3-Clause */
/* vhdx: guest reads and writes through the BAT.
 *
 * Invariants:
 *  1. Every block with data that the guest can reach lies inside the file
 *     as opened, past the header section, clear of the log, the BAT, the
 *     metadata region and every other such block (vhdx.c checks at open);
 *     blocks added later go past the end of the file.
 *  2. A BAT entry names a block only once the block holds the guest's
 *     data: a new block is the zeroes of a grown file, then the data (and
 *     for a differencing image the parent's bytes around it), flushed, and
 *     only then the entry, journalled through the log (log.h).
 *  3. No metadata changes before the headers carry this session's GUIDs
 *     and the log's GUID (vhdx_start_session); guest data is written in
 *     place, never journalled.
 * Reads of blocks that hold no data give zeroes (ZERO, and NOT_PRESENT,
 * UNDEFINED, UNMAPPED without a parent) or the parent's bytes; a
 * partially present block reads its sector bitmap (set bit: this image,
 * clear: the parent).  Guest data moves with s->lock released when the
 * block is already in place. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/vhdx/vhdx.h"

/* Bytes copied per step when a block is filled around a write. */
#define FILL_STEP (1u << 20)

/* Where a run of guest bytes lies: BAT index, state, file offset. */
struct vhdx_map {
    uint64_t block, idx, host, len, in_block;
    unsigned state;
};

/* Map guest offset off (at most len bytes, within its block). */
static void map_block(const struct vhdx_state *s, uint64_t off, uint64_t len,
                      struct vhdx_map *m)
{
    m->block = off / s->block_size;
    m->in_block = off % s->block_size;
    m->len = VD_MIN(len, s->block_size - m->in_block);
    m->idx = vhdx_payload_index(s, m->block);
    m->state = VHDX_BAT_STATE(s->bat[m->idx]);
    m->host = VHDX_BAT_OFFSET(s->bat[m->idx]) + m->in_block;
}

/* Does a block in state st hold no data of its own (reads fall to the
 * parent, or zeroes)? */
static bool state_absent(unsigned st)
{
    return st == VHDX_PB_NOT_PRESENT || st == VHDX_PB_UNDEFINED ||
           st == VHDX_PB_UNMAPPED || st == VHDX_PB_UNMAPPED_OLD;
}

/* Guest bytes from the parent (zeroes past its end or without one). */
static int read_parent(vd_node *n, uint64_t off, uint64_t len, void *buf)
{
    int64_t pl;
    uint64_t l;

    if (!n->backing) {
        memset(buf, 0, len);
        return 0;
    }
    if ((pl = vd_getlength(n->backing)) < 0)
        return (int)pl;
    l = off >= (uint64_t)pl ? 0 : VD_MIN(len, (uint64_t)pl - off);
    memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(n->backing, off, l, buf, 0) : 0;
}

/* Is bit i of the sector bitmap bytes bm set?  (Least significant bit
 * first.) */
static bool bit_set(const uint8_t *bm, uint64_t i)
{
    return bm[i / 8] & (1u << (i % 8));
}

/* The sector bitmap bytes covering the sectors [first, last] of the chunk
 * of block m->block, read from its bitmap block (lock held). */
static int read_bitmap(vd_node *n, const struct vhdx_map *m, uint64_t first, uint64_t last,
                       uint8_t **out)
{
    struct vhdx_state *s = n->state;
    uint64_t e = s->bat[vhdx_bitmap_index(s, m->block / s->chunk_ratio)];
    uint64_t b0 = first / 8, nbytes = last / 8 - b0 + 1;
    uint8_t *bm;
    int r;

    if (VHDX_BAT_STATE(e) != VHDX_SB_PRESENT)
        return vd_error(EIO, "vhdx: block %llu is partially present but its sector "
                        "bitmap is not", (unsigned long long)m->block);
    if (!(bm = malloc(nbytes)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = vhdx_read_padded(n->file, VHDX_BAT_OFFSET(e) + b0, nbytes, bm)) < 0) {
        free(bm);
        return r;
    }
    *out = bm;
    return 0;
}

/* Shorten m (a partially present run) to the sectors sharing the bit of
 * its first one; *present says which (lock held). */
static int bitmap_run(vd_node *n, struct vhdx_map *m, bool *present)
{
    struct vhdx_state *s = n->state;
    uint64_t spb = s->block_size / s->lss;
    uint64_t base = (m->block % s->chunk_ratio) * spb;
    uint64_t first = base + m->in_block / s->lss;
    uint64_t last = base + (m->in_block + m->len - 1) / s->lss, i = first + 1;
    uint8_t *bm = NULL;
    int r;

    if ((r = read_bitmap(n, m, first, last, &bm)) < 0)
        return r;
    *present = bit_set(bm, first - round_down(first, 8));
    while (i <= last && bit_set(bm, i - round_down(first, 8)) == *present)
        i++;
    free(bm);
    m->len = VD_MIN(m->len, (i - base) * s->lss - m->in_block);
    return 0;
}

/* Read one mapped run (m from map_block under the lock; the partially
 * present case consults the bitmap under it again). */
static int read_run(vd_node *n, uint64_t off, struct vhdx_map *m, void *buf, int flags)
{
    struct vhdx_state *s = n->state;
    bool parent = s->params & VHDX_PARAM_HAS_PARENT, present;
    int r;

    if (m->state == VHDX_PB_FULLY_PRESENT)
        return vd_pread(n->file, m->host, m->len, buf, flags);
    if (m->state == VHDX_PB_ZERO || (!parent && state_absent(m->state))) {
        memset(buf, 0, m->len);
        return 0;
    }
    if (state_absent(m->state))
        return read_parent(n, off, m->len, buf);
    if (m->state != VHDX_PB_PARTIALLY_PRESENT || !parent)
        return vd_error(EIO, "vhdx: block %llu has the state %u, which an image %s parent "
                        "cannot have", (unsigned long long)m->block, m->state,
                        parent ? "with a" : "without a");
    pthread_mutex_lock(&s->lock);
    r = bitmap_run(n, m, &present);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return r;
    return present ? vd_pread(n->file, m->host, m->len, buf, flags)
                   : read_parent(n, off, m->len, buf);
}

/* See vhdx.h: guest read, one run at a time. */
int vhdx_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct vhdx_state *s = n->state;
    char *p = buf;
    int r;

    while (len) {
        struct vhdx_map m;
        pthread_mutex_lock(&s->lock);
        map_block(s, off, len, &m);
        pthread_mutex_unlock(&s->lock);
        if ((r = read_run(n, off, &m, p, flags)) < 0)
            return r;
        off += m.len;
        len -= m.len;
        p += m.len;
    }
    return 0;
}

/* See vhdx.h: a fully present block's bytes lie in the file; a block
 * that holds none reads as zeroes unless a parent has them. */
int vhdx_data_extent(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                     uint64_t *map, vd_node **file)
{
    struct vhdx_state *s = n->state;
    struct vhdx_map m;

    pthread_mutex_lock(&s->lock);
    map_block(s, off, len, &m);
    pthread_mutex_unlock(&s->lock);
    *pnum = m.len;
    if (m.state == VHDX_PB_FULLY_PRESENT) {
        *map = m.host;
        *file = n->file;
        return VD_BS_DATA | VD_BS_OFFSET_VALID;
    }
    if (m.state == VHDX_PB_ZERO ||
        (!(s->params & VHDX_PARAM_HAS_PARENT) && state_absent(m.state)))
        return VD_BS_ZERO;
    return 0;
}

/* ---- writes (lock held) ---- */

/* Grow the file to at least end bytes; the new space reads as zeroes. */
static int grow_file(vd_node *n, uint64_t end)
{
    int64_t flen = vd_getlength(n->file);

    if (flen < 0)
        return (int)flen;
    if ((uint64_t)flen >= end)
        return 0;
    return vd_truncate(n->file, end, true, VD_PREALLOC_OFF);
}

/* Copy the guest's current bytes of block b in [from, to) (relative to
 * the block) to the block's new place at base, in steps. */
static int fill_range(vd_node *n, uint64_t b, uint64_t base, uint64_t from, uint64_t to)
{
    struct vhdx_state *s = n->state;
    CLEANUP_FREE uint8_t *tmp = NULL;
    int r = 0;

    if (from >= to)
        return 0;
    if (!(tmp = malloc(FILL_STEP)))
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t at = from; at < to && r >= 0; at += FILL_STEP) {
        uint64_t l = VD_MIN((uint64_t)FILL_STEP, to - at), done = 0;
        uint64_t goff = b * s->block_size + at;
        while (done < l && r >= 0) {
            struct vhdx_map m;
            map_block(s, goff + done, l - done, &m);
            if (m.state == VHDX_PB_PARTIALLY_PRESENT) {
                bool present;
                if ((r = bitmap_run(n, &m, &present)) < 0)
                    break;
                m.state = present ? VHDX_PB_FULLY_PRESENT : VHDX_PB_NOT_PRESENT;
            }
            r = m.state == VHDX_PB_FULLY_PRESENT
                    ? vd_pread(n->file, m.host, m.len, tmp + done, 0)
                    : read_parent(n, goff + done, m.len, tmp + done);
            done += m.len;
        }
        if (r >= 0)
            r = vd_pwrite(n->file, base + at, l, tmp, 0);
    }
    return r;
}

/* A differencing image's block gets the parent's bytes (and its own
 * present sectors) around the write [in, in+len); other images' new
 * blocks are zeroes already, as QEMU leaves them. */
static int fill_around(vd_node *n, const struct vhdx_map *m, uint64_t base)
{
    struct vhdx_state *s = n->state;
    uint64_t bytes = VD_MIN((uint64_t)s->block_size, s->size - m->block * s->block_size);
    int r;

    if (!(s->params & VHDX_PARAM_HAS_PARENT) || m->state == VHDX_PB_ZERO)
        return 0;
    if ((r = fill_range(n, m->block, base, 0, m->in_block)) < 0)
        return r;
    return fill_range(n, m->block, base, m->in_block + m->len, bytes);
}

/* Journal the new BAT entry of m and keep it in memory. */
static int set_entry(vd_node *n, const struct vhdx_map *m, uint64_t entry)
{
    struct vhdx_state *s = n->state;
    uint8_t le[8];
    struct vhdx_log_update u = { s->bat_offset + m->idx * 8, 8, le };
    int r;

    vhdx_put_le64(le, entry);
    vd_event(n->file, "vhdx_bat_update");
    if ((r = vhdx_log_write(&s->log, &u, 1)) < 0)
        return r;
    s->bat[m->idx] = entry;
    return 0;
}

/* Where a block without data goes: a fresh 1 MiB-aligned place at the
 * end of the file (QEMU's allocation), and past every metadata region
 * the file may not reach yet (invariant 1), grown to hold it. */
static int new_block(vd_node *n, uint64_t *base)
{
    struct vhdx_state *s = n->state;
    int64_t flen = vd_getlength(n->file);
    uint64_t at, end;

    if (flen < 0)
        return (int)flen;
    if (!round_up_checked(VD_MAX((uint64_t)flen, s->alloc_floor), VHDX_MIB, &at) ||
        ADD_OVERFLOW(at, (uint64_t)s->block_size, &end) || end > INT64_MAX)
        return vd_error(EFBIG, "vhdx: no room for another block in the file");
    vd_event(n->file, "vhdx_block_alloc");
    *base = at;
    return grow_file(n, end);
}

/* Write a run into a block that is not fully present: allocate (or, for
 * a partially present block, keep its place), fill around, write, flush,
 * then the BAT entry (invariant 2). */
static int write_alloc(vd_node *n, const struct vhdx_map *m, const void *buf)
{
    struct vhdx_state *s = n->state;
    bool parent = s->params & VHDX_PARAM_HAS_PARENT;
    uint64_t base = 0;
    int r;

    if (m->state == VHDX_PB_PARTIALLY_PRESENT && parent)
        base = m->host - m->in_block;
    else if (!(m->state == VHDX_PB_ZERO || state_absent(m->state)))
        return vd_error(EIO, "vhdx: cannot write block %llu: its state %u is invalid "
                        "here", (unsigned long long)m->block, m->state);
    else if ((r = new_block(n, &base)) < 0)
        return r;
    if ((r = fill_around(n, m, base)) < 0 ||
        (r = vd_pwrite(n->file, base + m->in_block, m->len, buf, 0)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        return r;
    return set_entry(n, m, base | VHDX_PB_FULLY_PRESENT);
}

/* See vhdx.h: guest write, one block at a time. */
int vhdx_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct vhdx_state *s = n->state;
    const char *p = buf;
    int r = 0;

    while (len && r >= 0) {
        struct vhdx_map m;
        pthread_mutex_lock(&s->lock);
        r = vhdx_start_session(n);
        map_block(s, off, len, &m);
        if (r >= 0 && m.state != VHDX_PB_FULLY_PRESENT)
            r = write_alloc(n, &m, p);
        pthread_mutex_unlock(&s->lock);
        if (r >= 0 && m.state == VHDX_PB_FULLY_PRESENT)
            r = vd_pwrite(n->file, m.host, m.len, p, flags & VD_REQ_FUA);
        off += m.len;
        len -= m.len;
        p += m.len;
    }
    return r;
}
