/* SPDX-License-Identifier: BSD-3-Clause */
/* The block codecs of the cloop format: zlib (versions 2.0 and 4.0), and
 * for version 4.0 stored blocks, xz (liblzma) and lz4 block format
 * (liblz4) when those libraries were found at build time, decoded by the
 * module vdisk-codec.so (codecs.h).  LZO blocks are refused by name: the
 * one LZO library (liblzo2) is GPL-licensed, which a BSD library meant to
 * be embedded anywhere cannot take on. */
#include <errno.h>
#include <string.h>
#include <zlib.h>

#include "format/cloop-codec.h"
#include "format/codecs.h"
#include "vdisk/driver.h"

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

/* Was this build made with the library of an xz or lz4 codec? */
static bool built_with(unsigned codec)
{
#ifdef VD_HAVE_XZ
    if (codec == CLOOP_XZ)
        return true;
#endif
#ifdef VD_HAVE_LZ4
    if (codec == CLOOP_LZ4)
        return true;
#endif
    (void)codec;
    return false;
}

/* The decompressor module's function for an xz or lz4 codec, loading the
 * module; NULL (message set) if it cannot be loaded or lacks it. */
static vd_block_decoder *module_fn(unsigned codec)
{
    const struct vd_codecs *c = vd_codecs();
    const char *name = cloop_codec_name(codec);

    if (!c) {
        vd_error_prefix(-ENOTSUP, "cloop: %s-compressed blocks cannot be read", name);
        return NULL;
    }
    if (!(codec == CLOOP_XZ ? c->xz : c->lz4))
        vd_error(ENOTSUP, "cloop: %s-compressed blocks cannot be read: the module "
                 "vdisk-codec.so has no %s decompressor", name, name);
    return codec == CLOOP_XZ ? c->xz : c->lz4;
}

/* See cloop-codec.h: xz and lz4 need their library at build time and the
 * decompressor module (loaded here) at run time. */
bool cloop_codec_available(unsigned codec)
{
    switch (codec) {
    case CLOOP_ZLIB:
    case CLOOP_NONE:
        return true;
    case CLOOP_XZ:
    case CLOOP_LZ4:
        if (built_with(codec) && module_fn(codec))
            return true;
        vd_error_clear();
        return false;
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

/* An xz or lz4 block through the decompressor module; -ENOTSUP (message
 * set) when this build has no decoder or the module cannot be loaded. */
static int decode_module(unsigned codec, const uint8_t *in, size_t in_len, uint8_t *out,
                         size_t out_len, size_t *produced)
{
    vd_block_decoder *fn;

    if (!built_with(codec))
        return vd_error(ENOTSUP, "cloop: %s-compressed blocks cannot be read: this build has "
                        "no %s decompressor", cloop_codec_name(codec), cloop_codec_name(codec));
    if (!(fn = module_fn(codec)))
        return -ENOTSUP;
    return fn(in, in_len, out, out_len, produced);
}

int cloop_decode(unsigned codec, const uint8_t *in, size_t in_len, uint8_t *out,
                 size_t out_len, size_t *produced)
{
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
    case CLOOP_LZ4:
        return decode_module(codec, in, in_len, out, out_len, produced);
    default:
        return vd_error(ENOTSUP, "cloop: %s-compressed blocks cannot be read: this build has "
                        "no %s decompressor", cloop_codec_name(codec), cloop_codec_name(codec));
    }
}
