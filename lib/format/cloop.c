/* SPDX-License-Identifier: BSD-3-Clause */
/* The cloop format (compressed loopback, version 2.0), read-only: a
 * 128-byte shell-script preamble, the block size and block count (32-bit
 * big endian), then n+1 big-endian 64-bit file offsets; block i is the
 * zlib stream from offset i to offset i+1 and inflates to exactly one
 * block.  It behaves as QEMU 7.2's driver (the same header checks and
 * messages, no mapping offsets, refused for writing) and checks more of
 * its own: the offsets table and the last block must lie inside the file.
 *
 * Invariant: lock guards only the one-block cache (cache_block, cache);
 * blocks are read and inflated outside it, so reads run in parallel. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

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
#define CLOOP_MAGIC_V4 "#!/bin/sh\n#V4.0 Format\n"

struct cloop_state {
    pthread_mutex_t lock;          /* the cache (see the invariant) */
    bool lock_ok;
    uint32_t block_size, n_blocks;
    uint64_t *offsets;             /* n_blocks + 1, host order */
    uint64_t max_compressed;       /* largest compressed block */
    uint32_t cache_block;          /* block in cache, or CLOOP_NO_BLOCK */
    uint8_t *cache;                /* one inflated block */
};

static inline uint32_t be32_get(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64_get(const uint8_t *p)
{
    return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

/* Score 2 on the version 2.0 preamble, as QEMU (only what the buffer has). */
static int cloop_probe(const uint8_t *buf, size_t len, const char *filename)
{
    size_t l = VD_MIN(len, strlen(CLOOP_MAGIC_V2));

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

/* Check the offsets in order (QEMU's checks and messages), then that the
 * last block ends inside the file. */
static int check_offsets(struct cloop_state *s, uint64_t file_len)
{
    for (uint32_t i = 1; i <= s->n_blocks; i++) {
        if (s->offsets[i] < s->offsets[i - 1])
            return vd_error(EINVAL, "offsets not monotonically increasing at index %" PRIu32
                            ", image file is corrupt", i);
        uint64_t size = s->offsets[i] - s->offsets[i - 1];
        if (size > 2ull * CLOOP_MAX_BLOCK)
            return vd_error(EINVAL, "invalid compressed block size at index %" PRIu32
                            ", image file is corrupt", i);
        s->max_compressed = VD_MAX(s->max_compressed, size);
    }
    if (s->offsets[s->n_blocks] > file_len)
        return vd_error(EINVAL, "cloop: block data ends at %" PRIu64 ", beyond the end of "
                        "the file (%" PRIu64 " bytes)", s->offsets[s->n_blocks], file_len);
    return 0;
}

/* Read and decode the offsets table (it must lie inside the file). */
static int load_offsets(vd_node *n, uint64_t file_len)
{
    struct cloop_state *s = n->state;
    uint64_t bytes = ((uint64_t)s->n_blocks + 1) * 8;
    uint8_t *raw;
    int r;

    if (CLOOP_OFFSETS_OFF + bytes > file_len)
        return vd_error(EINVAL, "cloop: offsets table (%" PRIu64 " entries at %u) extends "
                        "beyond the end of the file (%" PRIu64 " bytes)",
                        (uint64_t)s->n_blocks + 1, CLOOP_OFFSETS_OFF, file_len);
    if ((r = vd_untrusted_table_check(n, bytes, "cloop offsets table")) < 0)
        return r;
    raw = malloc(bytes);
    s->offsets = malloc(bytes);
    if (!raw || !s->offsets) {
        free(raw);
        return vd_error(ENOMEM, "Could not allocate offsets table");
    }
    r = vd_pread(n->file, CLOOP_OFFSETS_OFF, bytes, raw, 0);
    for (uint64_t i = 0; r >= 0 && i <= s->n_blocks; i++)
        s->offsets[i] = be64_get(raw + 8 * i);
    free(raw);
    return r < 0 ? vd_error_prefix(r, "cloop: cannot read the offsets table") : 0;
}

/* Check the header and load the offsets; refuse read-write opens. */
static int cloop_open(vd_node *n, vd_opts *opts, int flags)
{
    struct cloop_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    uint8_t pre[CLOOP_OFFSETS_OFF];
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
    /* a short file reads as zeroes past its end, as in QEMU */
    memset(pre, 0, sizeof(pre));
    if (file_len && (r = vd_pread(n->file, 0, VD_MIN((uint64_t)file_len, sizeof(pre)), pre,
                                  0)) < 0)
        return vd_error_prefix(r, "cloop: cannot read the header");
    if (!memcmp(pre, CLOOP_MAGIC_V4, strlen(CLOOP_MAGIC_V4)))
        return vd_error(ENOTSUP, "cloop: version 4.0 images are not supported (only 2.0)");
    s->block_size = be32_get(pre + CLOOP_HEADER_OFF);
    s->n_blocks = be32_get(pre + CLOOP_HEADER_OFF + 4);
    if ((r = check_header(s->block_size, s->n_blocks)) < 0 ||
        (r = load_offsets(n, (uint64_t)file_len)) < 0 ||
        (r = check_offsets(s, (uint64_t)file_len)) < 0)
        return r;
    if (!(s->cache = malloc(s->block_size)))
        return vd_error(ENOMEM, "cloop: cannot allocate a block buffer");
    return 0;
}

/* Free the tables. */
static void cloop_close(vd_node *n)
{
    struct cloop_state *s = n->state;

    free(s->offsets);
    free(s->cache);
    if (s->lock_ok)
        pthread_mutex_destroy(&s->lock);
}

/* ---- reading ---- */

/* Inflate in (in_len bytes) into out, which must come out exactly
 * out_len bytes long. */
static int inflate_exact(const uint8_t *in, uint64_t in_len, uint8_t *out, uint32_t out_len)
{
    z_stream z = { 0 };
    int zr;

    if (inflateInit(&z) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = out_len;
    zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    return zr == Z_STREAM_END && z.total_out == out_len ? 0 : -EIO;
}

/* Read and inflate block b into out (block_size bytes). */
static int load_block(vd_node *n, uint32_t b, uint8_t *out)
{
    struct cloop_state *s = n->state;
    uint64_t len = s->offsets[b + 1] - s->offsets[b];
    uint8_t *in = malloc(len ? len : 1);
    int r;

    if (!in)
        return vd_error(ENOMEM, "cloop: cannot allocate %" PRIu64 " bytes for block %" PRIu32,
                        len, b);
    r = vd_pread(n->file, s->offsets[b], len, in, 0);
    if (r >= 0 && inflate_exact(in, len, out, s->block_size) < 0)
        r = vd_error(EIO, "cloop: block %" PRIu32 " (%" PRIu64 " bytes at %" PRIu64 ") does "
                     "not inflate to %" PRIu32 " bytes", b, len, s->offsets[b], s->block_size);
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
