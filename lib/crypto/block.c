/* SPDX-License-Identifier: BSD-3-Clause */
/* Sector encryption as dm-crypt and LUKS define it: every 512-byte sector
 * is en/decrypted on its own, with an IV made from its number by the IV
 * generator: plain (32-bit little-endian number), plain64 (64-bit), essiv
 * (the 64-bit number encrypted in ECB by a second cipher keyed with the
 * hash of the key).  Callers run many requests at once (the copy engine's
 * workers, the NBD server's threads); each request borrows its own cipher
 * handle, so the work spreads over every core. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "vdisk/vdisk.h"

/* In cipher.c. */
int vd_cipher_sectors(struct vd_cipher *c, bool enc, void *buf, size_t len, size_t sector_len,
                      int (*ivfn)(void *opaque, uint64_t idx, uint8_t *iv), void *opaque);

static const char *const ivgen_names[VD_IVGEN__MAX] = { "plain", "plain64", "essiv" };

struct vd_blockcrypt {
    struct vd_blockcrypt_params p;
    struct vd_cipher *cipher;
    struct vd_cipher *essiv;       /* essiv only: ECB, keyed by H(key) */
    size_t block_len;
};

/* What an IV callback needs. */
struct iv_ctx {
    struct vd_blockcrypt *bc;
    uint64_t first;
};

int vd_ivgen_parse(const char *name)
{
    for (int i = 0; i < VD_IVGEN__MAX; i++)
        if (!strcmp(ivgen_names[i], name))
            return i;
    return -1;
}

const char *vd_ivgen_name(enum vd_ivgen_alg g) { return ivgen_names[g]; }

/* The IV of sector first + idx. */
static int make_iv(void *opaque, uint64_t idx, uint8_t *iv)
{
    struct iv_ctx *x = opaque;
    struct vd_blockcrypt *bc = x->bc;
    uint64_t s = x->first + idx;
    size_t n = bc->p.ivgen == VD_IVGEN_PLAIN ? 4 : 8;

    memset(iv, 0, bc->block_len);
    if (bc->p.ivgen == VD_IVGEN_PLAIN)
        s &= 0xffffffffu;
    for (size_t i = 0; i < n && i < bc->block_len; i++)
        iv[i] = (uint8_t)(s >> (8 * i));
    if (bc->p.ivgen == VD_IVGEN_ESSIV)
        return vd_cipher_encrypt(bc->essiv, NULL, 0, iv, bc->block_len);
    return 0;
}

/* The ESSIV cipher: ivgen_cipher keyed with the hash of key. */
static int essiv_new(struct vd_blockcrypt *bc, const uint8_t *key, size_t key_len)
{
    const struct vd_blockcrypt_params *p = &bc->p;
    uint8_t salt[VD_HASH_MAX_LEN];
    size_t hl = vd_hash_len(p->ivgen_hash);
    int r;

    if (vd_cipher_block_len(p->ivgen_cipher) != bc->block_len)
        return vd_error(EINVAL, "Cipher block size %zu must match ivgen cipher block size %zu",
                        bc->block_len, vd_cipher_block_len(p->ivgen_cipher));
    if (hl != vd_cipher_key_len(p->ivgen_cipher))
        return vd_error(EINVAL, "Hash size %zu must match ivgen cipher key size %zu", hl,
                        vd_cipher_key_len(p->ivgen_cipher));
    if ((r = vd_hash(p->ivgen_hash, key, key_len, salt)) >= 0)
        r = vd_cipher_new(&bc->essiv, p->ivgen_cipher, VD_MODE_ECB, salt, hl);
    vd_wipe(salt, sizeof(salt));
    return r;
}

int vd_blockcrypt_new(struct vd_blockcrypt **out, const struct vd_blockcrypt_params *p,
                      const uint8_t *key, size_t key_len)
{
    struct vd_blockcrypt *bc = calloc(1, sizeof(*bc));
    int r;

    if (!bc)
        return vd_error(ENOMEM, "out of memory");
    bc->p = *p;
    bc->block_len = vd_cipher_block_len(p->cipher);
    if ((r = vd_cipher_new(&bc->cipher, p->cipher, p->mode, key, key_len)) >= 0 &&
        p->mode != VD_MODE_ECB && p->ivgen == VD_IVGEN_ESSIV)
        r = essiv_new(bc, key, key_len);
    if (r < 0) {
        vd_blockcrypt_free(bc);
        return r;
    }
    *out = bc;
    return 0;
}

void vd_blockcrypt_free(struct vd_blockcrypt *bc)
{
    if (!bc)
        return;
    vd_cipher_free(bc->cipher);
    vd_cipher_free(bc->essiv);
    free(bc);
}

int vd_blockcrypt_encrypt(struct vd_blockcrypt *bc, uint64_t sector, void *buf, size_t len)
{
    struct iv_ctx x = { bc, sector };
    return vd_cipher_sectors(bc->cipher, true, buf, len, VD_CRYPT_SECTOR, make_iv, &x);
}

int vd_blockcrypt_decrypt(struct vd_blockcrypt *bc, uint64_t sector, void *buf, size_t len)
{
    struct iv_ctx x = { bc, sector };
    return vd_cipher_sectors(bc->cipher, false, buf, len, VD_CRYPT_SECTOR, make_iv, &x);
}
