/* SPDX-License-Identifier: BSD-3-Clause */
/* The block codecs of the cloop format: each decodes one stored block
 * into at most one block of output, so no stream can inflate past it. */
#ifndef VD_FORMAT_CLOOP_CODEC_H
#define VD_FORMAT_CLOOP_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The compression types of a version 4.0 index entry (its top 4 bits). */
enum cloop_codec {
    CLOOP_ZLIB = 0,
    CLOOP_NONE = 1,
    CLOOP_XZ = 2,
    CLOOP_LZ4 = 3,
    CLOOP_LZO = 4,
    CLOOP_LINK = 15,
};

/* The codec's name for messages ("zlib", "xz", ...; "unknown" else). */
const char *cloop_codec_name(unsigned codec);

/* Can this build decode the codec?  (For xz and lz4, loads the
 * decompressor module and says whether it loaded.) */
bool cloop_codec_available(unsigned codec);

/* Decode in (in_len bytes) of the given codec into out (room for out_len
 * bytes) and store the bytes produced in *produced.  0 when the stream is
 * whole and fits; -EIO when it is corrupt or larger than out_len; -ENOTSUP
 * when this build has no decoder for the codec (message set). */
int cloop_decode(unsigned codec, const uint8_t *in, size_t in_len, uint8_t *out,
                 size_t out_len, size_t *produced);

#endif
