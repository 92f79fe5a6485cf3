/* SPDX-License-Identifier: BSD-3-Clause */
/* The module vdisk-crypto.so's block ciphers and modes (crypto.h, by
 * way of cipher.c): libgcrypt, and nettle for twofish-192, which
 * libgcrypt lacks.  A libgcrypt handle carries its IV, so it serves one
 * thread at a time: each cipher keeps a small pool of keyed handles and
 * every call borrows one (the pool grows to the number of threads that
 * use it at once). */
#include <errno.h>
#include <gcrypt.h>
#include <nettle/cbc.h>
#include <nettle/ctr.h>
#include <nettle/twofish.h>
#include <nettle/xts.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto-lib.h"
#include "util/checked.h"
#include "vdisk/vdisk.h"

#define POOL_MAX 32

/* libgcrypt's algorithms (0: nettle's twofish-192). */
static const int gcry_algs[VD_CIPHER__MAX] = {
    [VD_CIPHER_AES_128] = GCRY_CIPHER_AES128, [VD_CIPHER_AES_192] = GCRY_CIPHER_AES192,
    [VD_CIPHER_AES_256] = GCRY_CIPHER_AES256, [VD_CIPHER_CAST5_128] = GCRY_CIPHER_CAST5,
    [VD_CIPHER_SERPENT_128] = GCRY_CIPHER_SERPENT128,
    [VD_CIPHER_SERPENT_192] = GCRY_CIPHER_SERPENT192,
    [VD_CIPHER_SERPENT_256] = GCRY_CIPHER_SERPENT256,
    [VD_CIPHER_TWOFISH_128] = GCRY_CIPHER_TWOFISH128, [VD_CIPHER_TWOFISH_192] = 0,
    [VD_CIPHER_TWOFISH_256] = GCRY_CIPHER_TWOFISH,
};
static const int gcry_modes[VD_MODE__MAX] = {
    GCRY_CIPHER_MODE_ECB, GCRY_CIPHER_MODE_CBC, GCRY_CIPHER_MODE_XTS, GCRY_CIPHER_MODE_CTR,
};

struct vd_cipher {
    enum vd_cipher_alg alg;
    enum vd_cipher_mode mode;
    uint8_t key[VD_CIPHER_MAX_KEY];
    size_t key_len;
    pthread_mutex_t lock;
    gcry_cipher_hd_t pool[POOL_MAX];   /* idle keyed handles */
    size_t idle;
    bool nettle;                       /* twofish-192: the contexts below */
    struct twofish_ctx tf[2];          /* key (xts: data key, tweak key) */
};

static pthread_once_t gcry_once = PTHREAD_ONCE_INIT;

/* libgcrypt's one-time initialisation (no secure memory: keys are wiped
 * by us instead). */
static void gcry_init(void)
{
    gcry_check_version(NULL);
    gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
}

/* Initialise libgcrypt once (every entry point that uses it calls this). */
void vdcm_gcry_init(void)
{
    pthread_once(&gcry_once, gcry_init);
}

/* A new handle keyed with c's key. */
static int open_handle(struct vd_cipher *c, gcry_cipher_hd_t *h)
{
    gcry_error_t e = gcry_cipher_open(h, gcry_algs[c->alg], gcry_modes[c->mode], 0);

    if (e)
        return vd_error(ENOTSUP, "Cipher '%s' mode '%s' is not supported",
                        vd_cipher_alg_name(c->alg), vd_cipher_mode_name(c->mode));
    if ((e = gcry_cipher_setkey(*h, c->key, c->key_len))) {
        gcry_cipher_close(*h);
        /* xts refuses equal halves of the key */
        return vd_error(EINVAL, "Cannot initialize cipher: %s", gcry_strerror(e));
    }
    return 0;
}

/* Borrow an idle handle, or open one. */
static int take_handle(struct vd_cipher *c, gcry_cipher_hd_t *h)
{
    pthread_mutex_lock(&c->lock);
    if (c->idle) {
        *h = c->pool[--c->idle];
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    pthread_mutex_unlock(&c->lock);
    return open_handle(c, h);
}

/* Return a handle to the pool (or close it when the pool is full). */
static void give_handle(struct vd_cipher *c, gcry_cipher_hd_t h)
{
    pthread_mutex_lock(&c->lock);
    if (c->idle < POOL_MAX) {
        c->pool[c->idle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (h)
        gcry_cipher_close(h);
}

int vdcm_cipher_new(struct vd_cipher **out, enum vd_cipher_alg a, enum vd_cipher_mode m,
                  const uint8_t *key, size_t key_len)
{
    size_t want = vd_cipher_key_len(a) * (m == VD_MODE_XTS ? 2 : 1);
    struct vd_cipher *c;
    gcry_cipher_hd_t h;
    int r;

    pthread_once(&gcry_once, gcry_init);
    if (m == VD_MODE_XTS && vd_cipher_block_len(a) != 16)
        return vd_error(ENOTSUP, "Cipher '%s' mode '%s' is not supported",
                        vd_cipher_alg_name(a), vd_cipher_mode_name(m));
    if (key_len != want)
        return vd_error(EINVAL, "Cipher key length %zu should be %zu", key_len, want);
    if (!(c = calloc(1, sizeof(*c))))
        return vd_error(ENOMEM, "out of memory");
    c->alg = a;
    c->mode = m;
    memcpy(c->key, key, key_len);
    c->key_len = key_len;
    pthread_mutex_init(&c->lock, NULL);
    if (!gcry_algs[a]) {
        c->nettle = true;
        twofish_set_key(&c->tf[0], vd_cipher_key_len(a), key);
        if (m == VD_MODE_XTS)
            twofish_set_key(&c->tf[1], vd_cipher_key_len(a), key + vd_cipher_key_len(a));
        *out = c;
        return 0;
    }
    if ((r = open_handle(c, &h)) < 0) {
        vdcm_cipher_free(c);
        return r;
    }
    give_handle(c, h);
    *out = c;
    return 0;
}

void vdcm_cipher_free(struct vd_cipher *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->idle; i++)
        gcry_cipher_close(c->pool[i]);
    pthread_mutex_destroy(&c->lock);
    vd_wipe(c, sizeof(*c));
    free(c);
}

/* Set the IV (or counter) of h; ecb takes none. */
static int set_iv(struct vd_cipher *c, gcry_cipher_hd_t h, const uint8_t *iv, size_t iv_len)
{
    gcry_error_t e = 0;

    if (c->mode == VD_MODE_ECB)
        return 0;
    if (!iv || iv_len != vd_cipher_block_len(c->alg))
        return vd_error(EINVAL, "Expected IV size %zu not %zu", vd_cipher_block_len(c->alg), iv_len);
    if (c->mode == VD_MODE_CTR)
        e = gcry_cipher_setctr(h, iv, iv_len);
    else
        e = gcry_cipher_setiv(h, iv, iv_len);
    return e ? vd_error(EINVAL, "Cannot set IV: %s", gcry_strerror(e)) : 0;
}

/* One en/decryption over nettle (the contexts are read-only: no lock). */
static int crypt_nettle(struct vd_cipher *c, bool enc, const uint8_t *iv, void *buf, size_t len)
{
    nettle_cipher_func *f = enc ? (nettle_cipher_func *)twofish_encrypt
                                : (nettle_cipher_func *)twofish_decrypt;
    uint8_t v[TWOFISH_BLOCK_SIZE];
    uint8_t *p = buf;

    if (c->mode != VD_MODE_ECB)
        memcpy(v, iv, sizeof(v));
    switch (c->mode) {
    case VD_MODE_ECB:
        f(&c->tf[0], len, p, p);
        break;
    case VD_MODE_CBC:
        if (enc)
            cbc_encrypt(&c->tf[0], f, TWOFISH_BLOCK_SIZE, v, len, p, p);
        else
            cbc_decrypt(&c->tf[0], f, TWOFISH_BLOCK_SIZE, v, len, p, p);
        break;
    case VD_MODE_CTR:
        ctr_crypt(&c->tf[0], (nettle_cipher_func *)twofish_encrypt, TWOFISH_BLOCK_SIZE, v,
                  len, p, p);
        break;
    default:
        if (enc)
            xts_encrypt_message(&c->tf[0], &c->tf[1], (nettle_cipher_func *)twofish_encrypt,
                                v, len, p, p);
        else
            xts_decrypt_message(&c->tf[0], &c->tf[1], (nettle_cipher_func *)twofish_decrypt,
                                (nettle_cipher_func *)twofish_encrypt, v, len, p, p);
        break;
    }
    vd_wipe(v, sizeof(v));
    return 0;
}

/* One en/decryption through a borrowed handle. */
int vdcm_cipher_crypt(struct vd_cipher *c, bool enc, const uint8_t *iv, size_t iv_len,
                      void *buf, size_t len)
{
    size_t bl = vd_cipher_block_len(c->alg);
    gcry_cipher_hd_t h;
    gcry_error_t e;
    int r;

    if (len % bl || (c->mode == VD_MODE_XTS && !len))
        return vd_error(EINVAL, "Length %zu must be a multiple of block size %zu", len, bl);
    if (c->mode != VD_MODE_ECB && (!iv || iv_len != bl))
        return vd_error(EINVAL, "Expected IV size %zu not %zu", bl, iv_len);
    if (c->nettle)
        return crypt_nettle(c, enc, iv, buf, len);
    if ((r = take_handle(c, &h)) < 0)
        return r;
    if ((r = set_iv(c, h, iv, iv_len)) >= 0) {
        e = enc ? gcry_cipher_encrypt(h, buf, len, NULL, 0)
                : gcry_cipher_decrypt(h, buf, len, NULL, 0);
        if (e)
            r = vd_error(EIO, "Cannot %s data: %s", enc ? "encrypt" : "decrypt",
                         gcry_strerror(e));
    }
    give_handle(c, h);
    return r;
}


/* vd_cipher_sectors over nettle. */
static int sectors_nettle(struct vd_cipher *c, bool enc, void *buf, size_t len,
                          size_t sector_len, int (*ivfn)(void *opaque, uint64_t idx, uint8_t *iv),
                          void *opaque)
{
    uint8_t iv[VD_CIPHER_MAX_BLOCK];
    int r = 0;

    for (size_t off = 0; off < len && r >= 0; off += sector_len) {
        size_t l = VD_MIN(sector_len, len - off);
        if (c->mode != VD_MODE_ECB && (r = ivfn(opaque, off / sector_len, iv)) < 0)
            break;
        r = crypt_nettle(c, enc, iv, (uint8_t *)buf + off, l);
    }
    return r;
}

/* En/decrypt sectors of sector_len bytes in place, each with the IV that
 * ivfn gives for its index (0 for the first), through one borrowed
 * handle; the last may be shorter (whole cipher blocks: cryptsetup's key
 * material of 24-byte keys ends in half a sector). */
int vdcm_cipher_sectors(struct vd_cipher *c, bool enc, void *buf, size_t len,
                        size_t sector_len, vd_sector_iv_fn *ivfn, void *opaque)
{
    size_t bl = vd_cipher_block_len(c->alg);
    uint8_t iv[VD_CIPHER_MAX_BLOCK];
    gcry_cipher_hd_t h;
    gcry_error_t e = 0;
    int r;

    if (len % bl || sector_len % bl)
        return vd_error(EINVAL, "Length %zu must be a multiple of the block size %zu", len, bl);
    if (c->nettle)
        return sectors_nettle(c, enc, buf, len, sector_len, ivfn, opaque);
    if ((r = take_handle(c, &h)) < 0)
        return r;
    for (size_t off = 0; off < len && r >= 0 && !e; off += sector_len) {
        uint8_t *p = (uint8_t *)buf + off;
        size_t l = VD_MIN(sector_len, len - off);
        if (c->mode != VD_MODE_ECB && ((r = ivfn(opaque, off / sector_len, iv)) < 0 ||
                                       (r = set_iv(c, h, iv, bl)) < 0))
            break;
        e = enc ? gcry_cipher_encrypt(h, p, l, NULL, 0) : gcry_cipher_decrypt(h, p, l, NULL, 0);
    }
    if (e)
        r = vd_error(EIO, "Cannot %s data: %s", enc ? "encrypt" : "decrypt", gcry_strerror(e));
    give_handle(c, h);
    return r;
}
