/* SPDX-License-Identifier: BSD-3-Clause */
/* Decompressors that only some images need, over libbz2, liblzma and
 * liblz4: they live in the module vdisk-codec.so (codecs-module.c), so
 * that libvdisk maps none of those libraries until a dmg's bzip2 chunk or
 * a cloop's xz or lz4 block is read.  The module registers its table when
 * loaded; vd_codecs() loads it on first use. */
#ifndef VD_FORMAT_CODECS_H
#define VD_FORMAT_CODECS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decode one block of in_len bytes into out: 0 when it decodes within
 * out_len bytes (*produced set), -EIO else. */
typedef int vd_block_decoder(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                             size_t *produced);

struct vd_codecs {
    size_t struct_size;
    /* A bzip2 stream fed in pieces into out (out_len bytes): start gives
     * the decoder (NULL: no memory); feed returns 1 at the end of the
     * stream, 0 for more, -1 on bad data or output that does not fit; end
     * frees it and says whether the output was filled exactly. */
    void *(*bz_start)(uint8_t *out, size_t out_len);
    int (*bz_feed)(void *d, const uint8_t *in, size_t len);
    bool (*bz_end)(void *d);
    /* One whole .xz stream, one lz4 block (block format, no frame); NULL
     * when the module was built without the library. */
    vd_block_decoder *xz, *lz4;
};

/* The module's table, loading it on first use; NULL with the reason
 * recorded when it cannot be loaded. */
const struct vd_codecs *vd_codecs(void);
/* Called by the module when it is loaded. */
void vd_codecs_register(const struct vd_codecs *c);

#endif
