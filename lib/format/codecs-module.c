/* SPDX-License-Identifier: BSD-3-Clause */
/* The decompressors of the module vdisk-codec.so (codecs.h): bzip2
 * streams (libbz2) for dmg, xz streams (liblzma) and lz4 blocks (liblz4)
 * for cloop 4.0, the last two when those libraries were found at build
 * time.  Registers its table when loaded. */
#include <bzlib.h>
#include <errno.h>
#include <stdlib.h>
#ifdef VD_HAVE_XZ
#include <lzma.h>
#endif
#ifdef VD_HAVE_LZ4
#include <lz4.h>
#endif

#include "format/codecs.h"

/* xz streams may ask for a dictionary this large at most (xz -9 needs
 * 65 MiB); a header asking for more is refused, not allocated. */
#define XZ_MEMLIMIT (80ull << 20)

/* See codecs.h. */
static void *bz_start(uint8_t *out, size_t out_len)
{
    bz_stream *b;

    if (out_len > UINT32_MAX || !(b = calloc(1, sizeof(*b))))
        return NULL;
    if (BZ2_bzDecompressInit(b, 0, 0) != BZ_OK) {
        free(b);
        return NULL;
    }
    b->next_out = (char *)out;
    b->avail_out = (unsigned)out_len;
    return b;
}

/* See codecs.h. */
static int bz_feed(void *d, const uint8_t *in, size_t len)
{
    bz_stream *b = d;

    if (len > UINT32_MAX)
        return -1;
    b->next_in = (char *)in;
    b->avail_in = (unsigned)len;
    int br = BZ2_bzDecompress(b);
    if (br == BZ_STREAM_END)
        return 1;
    return br == BZ_OK && (b->avail_out || !b->avail_in) ? 0 : -1;
}

/* See codecs.h. */
static bool bz_end(void *d)
{
    bz_stream *b = d;
    bool full = b->avail_out == 0;

    BZ2_bzDecompressEnd(b);
    free(b);
    return full;
}

#ifdef VD_HAVE_XZ
/* One .xz stream within out_len bytes and the memory limit. */
static int decode_xz(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                     size_t *produced)
{
    uint64_t memlimit = XZ_MEMLIMIT;
    size_t in_pos = 0, out_pos = 0;
    lzma_ret lr = lzma_stream_buffer_decode(&memlimit, 0, NULL, in, &in_pos, in_len, out,
                                            &out_pos, out_len);

    *produced = out_pos;
    return lr == LZMA_OK ? 0 : -EIO;
}
#else
#define decode_xz NULL
#endif

#ifdef VD_HAVE_LZ4
/* One lz4 block (the block format, no frame) within out_len bytes. */
static int decode_lz4(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                      size_t *produced)
{
    int r;

    if (in_len > INT32_MAX || out_len > INT32_MAX)
        return -EIO;
    r = LZ4_decompress_safe((const char *)in, (char *)out, (int)in_len, (int)out_len);
    if (r < 0)
        return -EIO;
    *produced = (size_t)r;
    return 0;
}
#else
#define decode_lz4 NULL
#endif

static const struct vd_codecs codecs = {
    .struct_size = sizeof(struct vd_codecs),
    .bz_start = bz_start, .bz_feed = bz_feed, .bz_end = bz_end,
    .xz = decode_xz, .lz4 = decode_lz4,
};

/* Offer the table to libvdisk when the module is loaded. */
__attribute__((constructor)) static void register_codecs(void)
{
    vd_codecs_register(&codecs);
}
