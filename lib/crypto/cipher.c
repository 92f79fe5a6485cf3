/* SPDX-License-Identifier: BSD-3-Clause */
/* Block ciphers and modes with QEMU's algorithm names.  The ciphers
 * themselves are in the module vdisk-crypto.so (cipher-lib.c: libgcrypt,
 * and nettle for twofish-192), loaded by the first vd_cipher_new. */
#include <errno.h>
#include <string.h>

#include "crypto/crypto-lib.h"
#include "vdisk/vdisk.h"

struct alg_desc {
    const char *name, *family;
    size_t key_len, block_len;
};

static const struct alg_desc algs[VD_CIPHER__MAX] = {
    [VD_CIPHER_AES_128] = { "aes-128", "aes", 16, 16 },
    [VD_CIPHER_AES_192] = { "aes-192", "aes", 24, 16 },
    [VD_CIPHER_AES_256] = { "aes-256", "aes", 32, 16 },
    [VD_CIPHER_CAST5_128] = { "cast5-128", "cast5", 16, 8 },
    [VD_CIPHER_SERPENT_128] = { "serpent-128", "serpent", 16, 16 },
    [VD_CIPHER_SERPENT_192] = { "serpent-192", "serpent", 24, 16 },
    [VD_CIPHER_SERPENT_256] = { "serpent-256", "serpent", 32, 16 },
    [VD_CIPHER_TWOFISH_128] = { "twofish-128", "twofish", 16, 16 },
    [VD_CIPHER_TWOFISH_192] = { "twofish-192", "twofish", 24, 16 },
    [VD_CIPHER_TWOFISH_256] = { "twofish-256", "twofish", 32, 16 },
};
static const char *const mode_names[VD_MODE__MAX] = { "ecb", "cbc", "xts", "ctr" };

int vd_cipher_alg_parse(const char *name)
{
    for (int i = 0; i < VD_CIPHER__MAX; i++)
        if (!strcmp(algs[i].name, name))
            return i;
    return -1;
}

const char *vd_cipher_alg_name(enum vd_cipher_alg a) { return algs[a].name; }
const char *vd_cipher_family(enum vd_cipher_alg a) { return algs[a].family; }
size_t vd_cipher_key_len(enum vd_cipher_alg a) { return algs[a].key_len; }
size_t vd_cipher_block_len(enum vd_cipher_alg a) { return algs[a].block_len; }

int vd_cipher_alg_by_family(const char *family, size_t key_len)
{
    for (int i = 0; i < VD_CIPHER__MAX; i++)
        if (!strcmp(algs[i].family, family) && algs[i].key_len == key_len)
            return i;
    return -1;
}

int vd_cipher_mode_parse(const char *name)
{
    for (int i = 0; i < VD_MODE__MAX; i++)
        if (!strcmp(mode_names[i], name))
            return i;
    return -1;
}

const char *vd_cipher_mode_name(enum vd_cipher_mode m) { return mode_names[m]; }

/* See crypto.h. */
int vd_cipher_new(struct vd_cipher **out, enum vd_cipher_alg a, enum vd_cipher_mode m,
                  const uint8_t *key, size_t key_len)
{
    const struct vd_crypto_lib *l = vd_crypto_lib();

    return l ? l->cipher_new(out, a, m, key, key_len) : -ELIBACC;
}

/* See crypto.h (a cipher exists only once the module is loaded). */
void vd_cipher_free(struct vd_cipher *c)
{
    if (c)
        vd_crypto_lib()->cipher_free(c);
}

/* See crypto.h. */
int vd_cipher_encrypt(struct vd_cipher *c, const uint8_t *iv, size_t iv_len, void *buf,
                      size_t len)
{
    return vd_crypto_lib()->cipher_crypt(c, true, iv, iv_len, buf, len);
}

/* See crypto.h. */
int vd_cipher_decrypt(struct vd_cipher *c, const uint8_t *iv, size_t iv_len, void *buf,
                      size_t len)
{
    return vd_crypto_lib()->cipher_crypt(c, false, iv, iv_len, buf, len);
}

/* See block.c. */
int vd_cipher_sectors(struct vd_cipher *c, bool enc, void *buf, size_t len, size_t sector_len,
                      vd_sector_iv_fn *ivfn, void *opaque)
{
    return vd_crypto_lib()->cipher_sectors(c, enc, buf, len, sector_len, ivfn, opaque);
}
