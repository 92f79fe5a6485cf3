/* SPDX-License-Identifier: BSD-3-Clause */
/* The block codecs of the cloop format: zlib (versions 2.0 and 4.0), and
 * for version 4.0 stored blocks, xz (liblzma) and lz4 block format
 * (liblz4) when those libraries were found at build time.  LZO blocks are
 * refused by name: the one LZO library (liblzo2) is GPL-licensed, which a
 * BSD library meant to be embedded anywhere cannot take on. */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#if __has_include(<lzma.h>)
#include <lzma.h>
#define HAVE_XZ 1
#endif
#if __has_include(<lz4.h>)
#include <lz4.h>
#define HAVE_LZ4 1
#endif

#include "format/cloop-codec.h"
#include "vdisk/driver.h"

/* xz streams may ask for a dictionary this large at most (xz -9 needs
 * 65 MiB); a header asking for more is refused, not allocated. */
#define CLOOP_XZ_MEMLIMIT (80ull << 20)

const char *cloop_codec_name(unsigned codec)
{
    switch (codec) {
    case CLOOP_ZLIB: return "zlib";
    case CLOOP_NONE: return "none";
    case CLOOP_XZ: return "xz";
    case CLOOP_LZ4: return "lz4";
    case CLOOP_LZO: return "lzo";
    case CLOOP_LINK: return "link";
    default: return "unknown";
    }
}

bool cloop_codec_available(unsigned codec)
{
    switch (codec) {
    case CLOOP_ZLIB:
    case CLOOP_NONE:
        return true;
#ifdef HAVE_XZ
    case CLOOP_XZ:
        return true;
#endif
#ifdef HAVE_LZ4
    case CLOOP_LZ4:
        return true;
#endif
    default:
        return false;
    }
}

/* One zlib stream, to its end, within out_len bytes. */
static int decode_zlib(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                       size_t *produced)
{
    z_stream z = { 0 };
    int zr;

    if (in_len > UINT32_MAX || out_len > UINT32_MAX)
        return -EIO;
    if (inflateInit(&z) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    zr = inflate(&z, Z_FINISH);
    *produced = z.total_out;
    inflateEnd(&z);
    return zr == Z_STREAM_END ? 0 : -EIO;
}

/* One .xz stream within out_len bytes and the memory limit. */
static int decode_xz(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                     size_t *produced)
{
#ifdef HAVE_XZ
    uint64_t memlimit = CLOOP_XZ_MEMLIMIT;
    size_t in_pos = 0, out_pos = 0;
    lzma_ret lr = lzma_stream_buffer_decode(&memlimit, 0, NULL, in, &in_pos, in_len, out,
                                            &out_pos, out_len);

    *produced = out_pos;
    return lr == LZMA_OK ? 0 : -EIO;
#else
    (void)in; (void)in_len; (void)out; (void)out_len; (void)produced;
    return -ENOTSUP;
#endif
}

/* One lz4 block (the block format, no frame) within out_len bytes. */
static int decode_lz4(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                      size_t *produced)
{
#ifdef HAVE_LZ4
    int r;

    if (in_len > INT32_MAX || out_len > INT32_MAX)
        return -EIO;
    r = LZ4_decompress_safe((const char *)in, (char *)out, (int)in_len, (int)out_len);
    if (r < 0)
        return -EIO;
    *produced = (size_t)r;
    return 0;
#else
    (void)in; (void)in_len; (void)out; (void)out_len; (void)produced;
    return -ENOTSUP;
#endif
}

int cloop_decode(unsigned codec, const uint8_t *in, size_t in_len, uint8_t *out,
                 size_t out_len, size_t *produced)
{
    int r;

    *produced = 0;
    switch (codec) {
    case CLOOP_ZLIB:
        return decode_zlib(in, in_len, out, out_len, produced);
    case CLOOP_NONE:
        if (in_len > out_len)
            return -EIO;
        memcpy(out, in, in_len);
        *produced = in_len;
        return 0;
    case CLOOP_XZ:
        r = decode_xz(in, in_len, out, out_len, produced);
        break;
    case CLOOP_LZ4:
        r = decode_lz4(in, in_len, out, out_len, produced);
        break;
    default:
        r = -ENOTSUP;
        break;
    }
    if (r == -ENOTSUP)
        return vd_error(ENOTSUP, "cloop: %s-compressed blocks cannot be read: this build has "
                        "no %s decompressor", cloop_codec_name(codec), cloop_codec_name(codec));
    return r;
}
