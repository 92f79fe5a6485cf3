/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: cluster compression.  zlib clusters are raw deflate streams with
 * a 4 KiB window (windowBits -12), as QEMU writes them; zstd clusters are
 * one zstd frame.  Decompression stops once a whole cluster came out: the
 * stored length is rounded up to sectors, so trailing bytes are normal. */
#include <errno.h>
#include <string.h>
#include <zlib.h>

#if defined(__has_include)
#if __has_include(<zstd.h>)
#include <zstd.h>
#define QC_HAVE_ZSTD 1
#endif
#endif

#include "format/qcow2/qcow2.h"

#define QC_ZLIB_WINDOW (-12)

/* Inflate a raw deflate stream into exactly dst_len bytes. */
static int zlib_decompress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    z_stream z;
    int r;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, QC_ZLIB_WINDOW) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    r = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    if ((r == Z_STREAM_END || r == Z_BUF_ERROR) && z.avail_out == 0)
        return 0;
    return -EIO;
}

/* Deflate into dst; -ENOSPC when it does not fit in dst_cap. */
static ssize_t zlib_compress(const void *src, size_t src_len, void *dst, size_t dst_cap)
{
    z_stream z;
    int r;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, QC_ZLIB_WINDOW, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_cap;
    r = deflate(&z, Z_FINISH);
    deflateEnd(&z);
    if (r != Z_STREAM_END)
        return -ENOSPC;
    return (ssize_t)(dst_cap - z.avail_out);
}

#ifdef QC_HAVE_ZSTD
/* Decode one frame until dst_len bytes came out. */
static int zstd_decompress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    ZSTD_DStream *d = ZSTD_createDStream();
    ZSTD_inBuffer in = { src, src_len, 0 };
    ZSTD_outBuffer out = { dst, dst_len, 0 };
    int r = -EIO;

    if (!d)
        return -ENOMEM;
    while (out.pos < out.size) {
        size_t in0 = in.pos, out0 = out.pos;
        size_t z = ZSTD_decompressStream(d, &out, &in);
        if (ZSTD_isError(z) || (z == 0 && out.pos < out.size))
            break;                 /* bad data, or the frame ended early */
        if (in.pos == in0 && out.pos == out0)
            break;                 /* no progress: input exhausted */
    }
    if (out.pos == out.size)
        r = 0;
    ZSTD_freeDStream(d);
    return r;
}

/* Encode one frame; -ENOSPC when it does not fit. */
static ssize_t zstd_compress(const void *src, size_t src_len, void *dst, size_t dst_cap)
{
    size_t z = ZSTD_compress(dst, dst_cap, src, src_len, ZSTD_CLEVEL_DEFAULT);

    if (ZSTD_isError(z))
        return -ENOSPC;            /* too small, or not compressible */
    return (ssize_t)z;
}
#endif

/* See qcow2.h. */
bool qcow2_zstd_available(void)
{
#ifdef QC_HAVE_ZSTD
    return true;
#else
    return false;
#endif
}

/* See qcow2.h. */
int qcow2_decompress(int type, const void *src, size_t src_len, void *dst, size_t dst_len)
{
    if (type == QC_COMP_ZLIB)
        return zlib_decompress(src, src_len, dst, dst_len);
#ifdef QC_HAVE_ZSTD
    if (type == QC_COMP_ZSTD)
        return zstd_decompress(src, src_len, dst, dst_len);
#endif
    return -ENOTSUP;
}

/* See qcow2.h. */
ssize_t qcow2_compress(int type, const void *src, size_t src_len, void *dst, size_t dst_cap)
{
    if (type == QC_COMP_ZLIB)
        return zlib_compress(src, src_len, dst, dst_cap);
#ifdef QC_HAVE_ZSTD
    if (type == QC_COMP_ZSTD)
        return zstd_compress(src, src_len, dst, dst_cap);
#endif
    return vd_error(ENOTSUP, "qcow2: compression type not supported by this build");
}
