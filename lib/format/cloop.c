/* SPDX-License-Identifier: BSD-3-Clause */
/* The cloop format (compressed loopback), read-only, versions 2.0 and 4.0.
 *
 * Version 2.0: a 128-byte shell-script preamble, the block size and block
 * count (32-bit big endian), then n+1 big-endian 64-bit file offsets;
 * block i is the zlib stream from offset i to offset i+1 and inflates to
 * exactly one block.  It behaves as QEMU 7.2's driver (the same header
 * checks and messages, no mapping offsets, refused for writing) and checks
 * more of its own: the offsets table and the last block must lie inside
 * the file.
 *
 * Version 4.0 ("V4.0" at byte 11 of the preamble; QEMU cannot read it):
 * the same 136-byte header and n+1 index entries, either at the start of
 * the file (header, index, blocks) or at its end (blocks, index, header
 * last).  Each entry is big endian; its top 4 bits are the block's
 * compression (0 zlib, 1 none, 2 xz, 3 lz4, 4 lzo, 15 a link) and the low
 * 60 bits the block's file offset; the last entry marks where the data
 * ends.  A link block stores no bytes: its low bits are the number of an
 * earlier block whose data it repeats.  A stored block's bytes run from
 * its offset to the offset of the next entry that is not a link.  Every
 * block decodes to exactly one block, except the last, which may be
 * shorter (the rest reads as zeroes).
 *
 * Invariant: lock guards only the one-block cache (cache_block, cache);
 * blocks are read and decoded outside it, so reads run in parallel. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/cloop-codec.h"
#include "util/checked.h"
#include "vdisk/driver.h"

#define CLOOP_HEADER_OFF   128u            /* block size, block count */
#define CLOOP_OFFSETS_OFF  136u            /* the offsets table */
#define CLOOP_MAX_BLOCK    (64u << 20)     /* QEMU's bound on the block size */
#define CLOOP_MAX_OFFSETS  (512u << 20)    /* QEMU's bound on the table bytes */
#define CLOOP_NO_BLOCK     UINT32_MAX
/* The start of the preamble QEMU's probe looks for. */
#define CLOOP_MAGIC_V2 "#!/bin/sh\n#V2.0 Format\n" \
    "modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
#define CLOOP_SIG_OFF      11u             /* "V2.0" / "V4.0" in the preamble */
#define CLOOP_SIG_V4       "V4.0"
#define ENTRY_CODEC(e)     ((unsigned)((e) >> 60))
#define ENTRY_VALUE(e)     ((e) & 0x0fffffffffffffffull)

struct cloop_state {
    pthread_mutex_t lock;          /* the cache (see the invariant) */
    bool lock_ok;
    bool v4;                       /* version 4.0 (else 2.0) */
    uint64_t tail_at;              /* 4.0: where a header at the end starts */
    uint32_t block_size, n_blocks;
    uint64_t *offsets;             /* n_blocks + 1 entries, host order; in
                                    * 4.0 codec bits above the offset */
    uint32_t *lens;                /* stored bytes of each block */
    uint32_t cache_block;          /* block in cache, or CLOOP_NO_BLOCK */
    uint8_t *cache;                /* one decoded block */
};

static inline uint32_t be32_get(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64_get(const uint8_t *p)
{
    return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

/* Does this 136-byte header carry the version 4.0 signature? */
static bool is_v4(const uint8_t *hdr)
{
    return !memcmp(hdr + CLOOP_SIG_OFF, CLOOP_SIG_V4, strlen(CLOOP_SIG_V4));
}

/* Score 2 on the version 2.0 preamble, as QEMU (only what the buffer has),
 * and on a version 4.0 header at the start, which QEMU does not know. */
static int cloop_probe(const uint8_t *buf, size_t len, const char *filename)
{
    size_t l = VD_MIN(len, strlen(CLOOP_MAGIC_V2));

    if (len >= CLOOP_OFFSETS_OFF && !memcmp(buf, "#!/bin/sh\n#", CLOOP_SIG_OFF) &&
        is_v4(buf))
        return 2;
    return l && !memcmp(buf, CLOOP_MAGIC_V2, l) ? 2 : 0;
}

/* ---- open ---- */

/* Block size and count as QEMU checks them, with its messages. */
static int check_header(uint32_t bs, uint32_t n)
{
    if (bs % 512)
        return vd_error(EINVAL, "block_size %" PRIu32 " must be a multiple of 512", bs);
    if (bs == 0)
        return vd_error(EINVAL, "block_size cannot be zero");
    if (bs > CLOOP_MAX_BLOCK)
        return vd_error(EINVAL, "block_size %" PRIu32 " must be %u MB or less", bs,
                        CLOOP_MAX_BLOCK >> 20);
    if (n > (UINT32_MAX - 1) / 8)
        return vd_error(EINVAL, "n_blocks %" PRIu32 " must be %u or less", n,
                        (UINT32_MAX - 1) / 8);
    if (((uint64_t)n + 1) * 8 > CLOOP_MAX_OFFSETS)
        return vd_error(EINVAL, "image requires too many offsets, try increasing block size");
    return 0;
}

/* Version 2.0: check the offsets in order (QEMU's checks and messages),
 * then that the last block ends inside the file; note each block's length. */
static int check_offsets_v2(struct cloop_state *s, uint64_t file_len)
{
    for (uint32_t i = 1; i <= s->n_blocks; i++) {
        if (s->offsets[i] < s->offsets[i - 1])
            return vd_error(EINVAL, "offsets not monotonically increasing at index %" PRIu32
                            ", image file is corrupt", i);
        uint64_t size = s->offsets[i] - s->offsets[i - 1];
        if (size > 2ull * CLOOP_MAX_BLOCK)
            return vd_error(EINVAL, "invalid compressed block size at index %" PRIu32
                            ", image file is corrupt", i);
        s->lens[i - 1] = (uint32_t)size;
    }
    if (s->offsets[s->n_blocks] > file_len)
        return vd_error(EINVAL, "cloop: block data ends at %" PRIu64 ", beyond the end of "
                        "the file (%" PRIu64 " bytes)", s->offsets[s->n_blocks], file_len);
    return 0;
}

/* Version 4.0, stored blocks: walking back from the end entry, each
 * stored block runs to the next stored block's offset; the data must end
 * by data_end (the file's end, or the index when it is at the end). */
static int build_stored_v4(struct cloop_state *s, uint64_t data_end)
{
    uint64_t end = ENTRY_VALUE(s->offsets[s->n_blocks]);

    if (ENTRY_CODEC(s->offsets[s->n_blocks]) == CLOOP_LINK)
        return vd_error(EINVAL, "cloop: the last index entry is a link, not the end of the "
                        "data");
    if (end > data_end)
        return vd_error(EINVAL, "cloop: block data ends at %" PRIu64 ", beyond %" PRIu64
                        " (the end of the data)", end, data_end);
    for (uint32_t i = s->n_blocks; i-- > 0;) {
        uint64_t e = s->offsets[i], off = ENTRY_VALUE(e);
        unsigned codec = ENTRY_CODEC(e);
        if (codec == CLOOP_LINK)
            continue;
        if (codec > CLOOP_LZO)
            return vd_error(EINVAL, "cloop: block %" PRIu32 " has unknown compression type "
                            "%u", i, codec);
        if (off > end)
            return vd_error(EINVAL, "cloop: block %" PRIu32 " starts at %" PRIu64 ", after "
                            "the next block (at %" PRIu64 ")", i, off, end);
        if (end - off > 2ull * CLOOP_MAX_BLOCK)
            return vd_error(EINVAL, "cloop: block %" PRIu32 " is %" PRIu64 " bytes long, "
                            "more than %u", i, end - off, 2u * CLOOP_MAX_BLOCK);
        s->lens[i] = (uint32_t)(end - off);
        end = off;
    }
    return 0;
}

/* Version 4.0, links: each takes the entry and length of an earlier block
 * (already resolved, so chains end at a stored block and cannot loop). */
static int build_links_v4(struct cloop_state *s)
{
    for (uint32_t i = 0; i < s->n_blocks; i++) {
        uint64_t e = s->offsets[i], t = ENTRY_VALUE(e);
        if (ENTRY_CODEC(e) != CLOOP_LINK)
            continue;
        if (t >= i)
            return vd_error(EINVAL, "cloop: block %" PRIu32 " links to block %" PRIu64
                            ", which is not an earlier block", i, t);
        s->offsets[i] = s->offsets[t];
        s->lens[i] = s->lens[t];
    }
    return 0;
}

/* Read and decode the n+1 index entries at table_off. */
static int load_offsets(vd_node *n, uint64_t table_off)
{
    struct cloop_state *s = n->state;
    uint64_t bytes = ((uint64_t)s->n_blocks + 1) * 8;
    int r;

    if ((r = vd_untrusted_table_check(n, bytes, "cloop offsets table")) < 0)
        return r;
    s->offsets = malloc(bytes);
    s->lens = vd_calloc_array(s->n_blocks, sizeof(*s->lens));
    if (!s->offsets || !s->lens)
        return vd_error(ENOMEM, "Could not allocate offsets table");
    r = vd_pread(n->file, table_off, bytes, s->offsets, 0);
    for (uint64_t i = 0; r >= 0 && i <= s->n_blocks; i++)   /* in place */
        s->offsets[i] = be64_get((const uint8_t *)&s->offsets[i]);
    return r < 0 ? vd_error_prefix(r, "cloop: cannot read the offsets table") : 0;
}

/* Version 2.0, or 4.0 with the header first: the index follows it. */
static int open_header_first(vd_node *n, uint64_t file_len)
{
    struct cloop_state *s = n->state;
    uint64_t bytes = ((uint64_t)s->n_blocks + 1) * 8;
    int r;

    if (CLOOP_OFFSETS_OFF + bytes > file_len)
        return vd_error(EINVAL, "cloop: offsets table (%" PRIu64 " entries at %u) extends "
                        "beyond the end of the file (%" PRIu64 " bytes)",
                        (uint64_t)s->n_blocks + 1, CLOOP_OFFSETS_OFF, file_len);
    if ((r = load_offsets(n, CLOOP_OFFSETS_OFF)) < 0)
        return r;
    if (!s->v4)
        return check_offsets_v2(s, file_len);
    if ((r = build_stored_v4(s, file_len)) < 0)
        return r;
    return build_links_v4(s);
}

/* Version 4.0 with the header last: the index ends where it starts. */
static int open_header_last(vd_node *n)
{
    struct cloop_state *s = n->state;
    uint64_t bytes = ((uint64_t)s->n_blocks + 1) * 8, table_off;
    int r;

    if (SUB_OVERFLOW(s->tail_at, bytes, &table_off))
        return vd_error(EINVAL, "cloop: offsets table (%" PRIu64 " entries before the header "
                        "at the end) extends before the start of the file",
                        (uint64_t)s->n_blocks + 1);
    if ((r = load_offsets(n, table_off)) < 0 || (r = build_stored_v4(s, table_off)) < 0)
        return r;
    return build_links_v4(s);
}

/* The file's length in bytes (vd_getlength rounds up to sectors). */
static int64_t exact_file_length(vd_node *n)
{
    return n->file->drv->getlength ? n->file->drv->getlength(n->file)
                                   : vd_getlength(n->file);
}

/* Read the last 136 bytes of the file into hdr when they are a version
 * 4.0 header (1), else leave hdr alone (0). */
static int read_tail(vd_node *n, uint8_t *hdr)
{
    struct cloop_state *s = n->state;
    uint8_t tail[CLOOP_OFFSETS_OFF];
    int64_t len = exact_file_length(n);
    int r;

    if (len < 0)
        return (int)len;
    if ((uint64_t)len < CLOOP_OFFSETS_OFF + 8)
        return 0;
    if ((r = vd_pread(n->file, (uint64_t)len - sizeof(tail), sizeof(tail), tail, 0)) < 0)
        return vd_error_prefix(r, "cloop: cannot read the header at the end");
    if (!is_v4(tail))
        return 0;
    memcpy(hdr, tail, sizeof(tail));
    s->tail_at = (uint64_t)len - sizeof(tail);
    return 1;
}

/* Read the header at the start, or a version 4.0 header at the end; a
 * short file reads as zeroes past its end, as in QEMU.  *last is set when
 * the header was the one at the end. */
static int read_header(vd_node *n, uint64_t file_len, bool *last)
{
    struct cloop_state *s = n->state;
    uint8_t hdr[CLOOP_OFFSETS_OFF];
    int r;

    memset(hdr, 0, sizeof(hdr));
    if (file_len && (r = vd_pread(n->file, 0, VD_MIN(file_len, sizeof(hdr)), hdr, 0)) < 0)
        return vd_error_prefix(r, "cloop: cannot read the header");
    *last = false;
    if (!memcmp(hdr, "#!/bin/sh\n#V2.0", CLOOP_SIG_OFF + 4) || is_v4(hdr)) {
        s->v4 = is_v4(hdr);
    } else if ((r = read_tail(n, hdr)) < 0) {
        return r;
    } else if (r > 0) {
        s->v4 = *last = true;
    }
    s->block_size = be32_get(hdr + CLOOP_HEADER_OFF);
    s->n_blocks = be32_get(hdr + CLOOP_HEADER_OFF + 4);
    return 0;
}

/* Warn once at open, naming the codec, when blocks use one this build
 * cannot decode (as QEMU warns of a missing dmg module): reading those
 * blocks fails with an I/O error. */
static void warn_missing_codecs(struct cloop_state *s)
{
    bool seen[CLOOP_LZO + 1] = { false };

    for (uint32_t i = 0; i < s->n_blocks; i++) {
        unsigned c = ENTRY_CODEC(s->offsets[i]);
        if (c <= CLOOP_LZO && !seen[c] && !cloop_codec_available(c))
            fprintf(stderr, "%s: warning: cloop: the image has %s-compressed blocks and there "
                    "is no %s decompressor, reading them will result in I/O errors\n",
                    program_invocation_short_name, cloop_codec_name(c), cloop_codec_name(c));
        if (c <= CLOOP_LZO)
            seen[c] = true;
    }
}

/* Check the header and load the offsets; refuse read-write opens. */
static int cloop_open(vd_node *n, vd_opts *opts, int flags)
{
    struct cloop_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    bool last = false;
    int r;

    (void)opts; (void)flags;
    s->cache_block = CLOOP_NO_BLOCK;
    if (pthread_mutex_init(&s->lock, NULL))
        return vd_error(ENOMEM, "cloop: cannot create a lock");
    s->lock_ok = true;
    if (!n->read_only)
        return vd_error(EACCES, "Image is read-only");
    if (file_len < 0)
        return (int)file_len;
    if ((r = read_header(n, (uint64_t)file_len, &last)) < 0 ||
        (r = check_header(s->block_size, s->n_blocks)) < 0)
        return r;
    r = last ? open_header_last(n)
             : open_header_first(n, (uint64_t)file_len);
    if (r < 0)
        return r;
    if (!(s->cache = malloc(s->block_size)))
        return vd_error(ENOMEM, "cloop: cannot allocate a block buffer");
    if (s->v4)
        warn_missing_codecs(s);
    return 0;
}

/* Free the tables. */
static void cloop_close(vd_node *n)
{
    struct cloop_state *s = n->state;

    free(s->offsets);
    free(s->lens);
    free(s->cache);
    if (s->lock_ok)
        pthread_mutex_destroy(&s->lock);
}

/* ---- reading ---- */

/* Read and decode block b into out (block_size bytes).  Version 2.0
 * blocks inflate to exactly one block (as in QEMU); in 4.0 the last block
 * may come out shorter and is padded with zeroes. */
static int load_block(vd_node *n, uint32_t b, uint8_t *out)
{
    struct cloop_state *s = n->state;
    uint64_t off = ENTRY_VALUE(s->offsets[b]);
    unsigned codec = s->v4 ? ENTRY_CODEC(s->offsets[b]) : CLOOP_ZLIB;
    uint32_t len = s->lens[b];
    uint8_t *in = malloc(len ? len : 1);
    bool partial_ok = s->v4 && b == s->n_blocks - 1;
    size_t got = 0;
    int r;

    if (!in)
        return vd_error(ENOMEM, "cloop: cannot allocate %" PRIu32 " bytes for block %" PRIu32,
                        len, b);
    r = vd_pread(n->file, off, len, in, 0);
    if (r >= 0 && (r = cloop_decode(codec, in, len, out, s->block_size, &got)) == -ENOTSUP)
        r = -EIO;                 /* the message names the codec */
    else if (r == -EIO)
        r = vd_error(EIO, "cloop: block %" PRIu32 " (%s, %" PRIu32 " bytes at %" PRIu64 ") "
                     "does not decode to %" PRIu32 " bytes", b, cloop_codec_name(codec), len,
                     off, s->block_size);
    if (r >= 0 && got != s->block_size) {
        if (partial_ok)
            memset(out + got, 0, s->block_size - got);
        else
            r = vd_error(EIO, "cloop: block %" PRIu32 " (%s, %" PRIu32 " bytes at %" PRIu64
                         ") decodes to %zu bytes, not %" PRIu32, b, cloop_codec_name(codec),
                         len, off, got, s->block_size);
    }
    free(in);
    return r < 0 ? r : 0;
}

/* Copy len bytes at in of block b to buf, through the one-block cache. */
static int read_block(vd_node *n, uint32_t b, uint32_t in, uint32_t len, uint8_t *buf)
{
    struct cloop_state *s = n->state;
    uint8_t *blk;
    int r;

    if (in == 0 && len == s->block_size)
        return load_block(n, b, buf);        /* the whole block: no copy */
    pthread_mutex_lock(&s->lock);
    if (s->cache_block == b) {
        memcpy(buf, s->cache + in, len);
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    pthread_mutex_unlock(&s->lock);
    if (!(blk = malloc(s->block_size)))
        return vd_error(ENOMEM, "cloop: cannot allocate a block buffer");
    if ((r = load_block(n, b, blk)) == 0) {
        memcpy(buf, blk + in, len);
        pthread_mutex_lock(&s->lock);
        uint8_t *old = s->cache;
        s->cache = blk;
        s->cache_block = b;
        blk = old;
        pthread_mutex_unlock(&s->lock);
    }
    free(blk);
    return r;
}

/* Read guest bytes block by block. */
static int cloop_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct cloop_state *s = n->state;
    uint8_t *p = buf;

    (void)flags;
    while (len) {
        uint32_t b = (uint32_t)(off / s->block_size), in = (uint32_t)(off % s->block_size);
        uint32_t l = (uint32_t)VD_MIN(len, (uint64_t)(s->block_size - in));
        int r = read_block(n, b, in, l, p);
        if (r < 0)
            return r;
        p += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* Guest size: the blocks. */
static int64_t cloop_getlength(vd_node *n)
{
    struct cloop_state *s = n->state;

    return (int64_t)s->n_blocks * s->block_size;
}

/* No cluster size: QEMU's get_info fails, so info has no dirty flag. */
static int64_t cloop_cluster_size(vd_node *n)
{
    (void)n;
    return -ENOTSUP;
}

static const struct vd_driver cloop_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "cloop",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct cloop_state),
    .probe = cloop_probe,
    .open = cloop_open,
    .close = cloop_close,
    .pread = cloop_pread,
    .getlength = cloop_getlength,
    .cluster_size = cloop_cluster_size,
};
VD_DRIVER_REGISTER(cloop_driver)
