/* SPDX-License-Identifier: BSD-3-Clause */
/* The module vdisk-crypto.so's hashes over libgcrypt, PBKDF2 over gnutls
 * (faster; libgcrypt for ripemd160, which gnutls lacks) and base64
 * decoding (gnutls), for hash.c and secret.c. */
#include <errno.h>
#include <gcrypt.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto-lib.h"
#include "vdisk/vdisk.h"

struct hash_lib {
    int md;                        /* libgcrypt's */
    gnutls_mac_algorithm_t mac;
};

static const struct hash_lib hashes[VD_HASH__MAX] = {
    [VD_HASH_MD5] = { GCRY_MD_MD5, GNUTLS_MAC_MD5 },
    [VD_HASH_SHA1] = { GCRY_MD_SHA1, GNUTLS_MAC_SHA1 },
    [VD_HASH_SHA224] = { GCRY_MD_SHA224, GNUTLS_MAC_SHA224 },
    [VD_HASH_SHA256] = { GCRY_MD_SHA256, GNUTLS_MAC_SHA256 },
    [VD_HASH_SHA384] = { GCRY_MD_SHA384, GNUTLS_MAC_SHA384 },
    [VD_HASH_SHA512] = { GCRY_MD_SHA512, GNUTLS_MAC_SHA512 },
    [VD_HASH_RIPEMD160] = { GCRY_MD_RMD160, GNUTLS_MAC_RMD160 },
};

/* See crypto-lib.h. */
int vdcm_hash(enum vd_hash_alg h, const void *data, size_t len, uint8_t *out)
{
    vdcm_gcry_init();
    gcry_md_hash_buffer(hashes[h].md, out, data, len);
    return 0;
}

/* See crypto-lib.h. */
int vdcm_pbkdf2(enum vd_hash_alg h, const uint8_t *pass, size_t pass_len, const uint8_t *salt,
                size_t salt_len, uint64_t iters, uint8_t *out, size_t out_len)
{
    gnutls_datum_t k = { (unsigned char *)pass, (unsigned)pass_len };
    gnutls_datum_t s = { (unsigned char *)salt, (unsigned)salt_len };

    if (!iters || iters > UINT32_MAX || pass_len > UINT32_MAX || salt_len > UINT32_MAX)
        return vd_error(EINVAL, "PBKDF2 iterations %llu out of range",
                        (unsigned long long)iters);
    if (gnutls_pbkdf2(hashes[h].mac, &k, &s, (unsigned)iters, out, out_len) >= 0)
        return 0;
    /* gnutls has no ripemd160 */
    vdcm_gcry_init();
    if (gcry_kdf_derive(pass, pass_len, GCRY_KDF_PBKDF2, hashes[h].md, salt, salt_len,
                        (unsigned long)iters, out_len, out))
        return vd_error(ENOTSUP, "PBKDF2 with hash '%s' is not supported", vd_hash_name(h));
    return 0;
}

/* See crypto-lib.h. */
int vdcm_base64_decode(const void *in, size_t len, uint8_t **out, size_t *out_len)
{
    gnutls_datum_t i = { (unsigned char *)in, (unsigned)len }, o = { NULL, 0 };
    uint8_t *p = NULL;

    if (len > UINT32_MAX || gnutls_base64_decode2(&i, &o) < 0 ||
        !(p = malloc((size_t)o.size + 1))) {
        if (o.data) {
            vd_wipe(o.data, o.size);
            gnutls_free(o.data);
        }
        return -1;
    }
    if (o.size)
        memcpy(p, o.data, o.size);
    p[o.size] = 0;
    vd_wipe(o.data, o.size);
    gnutls_free(o.data);
    *out = p;
    *out_len = o.size;
    return 0;
}
