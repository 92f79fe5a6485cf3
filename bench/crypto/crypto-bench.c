/* SPDX-License-Identifier: BSD-3-Clause */
/* The measurement behind lib/crypto's choice of library: AES-XTS-256,
 * AES-CBC-256 (essiv's and legacy qcow's mode), serpent/twofish-XTS in MB/s
 * and PBKDF2-HMAC-SHA256 iterations/s, over gnutls, nettle, libgcrypt and
 * OpenSSL's libcrypto, on one thread.  Run bench/crypto/run. */
#include <gcrypt.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nettle/aes.h>
#include <nettle/cbc.h>
#include <nettle/pbkdf2.h>
#include <nettle/serpent.h>
#include <nettle/twofish.h>
#include <nettle/xts.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECTOR 512
#define BUF (4u << 20)
#define SECONDS 0.5

static unsigned char key[64], iv[16], *buf;

/* Monotonic seconds. */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef void (*enc_fn)(void *ctx, unsigned char *p, size_t len, const unsigned char *tweak);

/* MB/s of fn over buf, one 512-byte sector (one tweak) at a time. */
static double rate(enc_fn fn, void *ctx)
{
    double t0 = now(), t;
    unsigned long long bytes = 0;

    do {
        for (size_t o = 0; o < BUF; o += SECTOR) {
            memcpy(iv, &o, sizeof(o));
            fn(ctx, buf + o, SECTOR, iv);
        }
        bytes += BUF;
        t = now() - t0;
    } while (t < SECONDS);
    return bytes / t / 1e6;
}

/* ---- gnutls ---- */
static void gt_enc(void *ctx, unsigned char *p, size_t len, const unsigned char *tw)
{
    gnutls_cipher_set_iv(ctx, (void *)tw, 16);
    gnutls_cipher_encrypt(ctx, p, len);
}
static double gt_rate(gnutls_cipher_algorithm_t alg, int klen)
{
    gnutls_cipher_hd_t h;
    gnutls_datum_t k = { key, (unsigned)klen }, i = { iv, 16 };
    double r;

    if (gnutls_cipher_init(&h, alg, &k, &i) < 0)
        return -1;
    r = rate(gt_enc, h);
    gnutls_cipher_deinit(h);
    return r;
}

/* ---- nettle ---- */
static void nt_xts_aes(void *ctx, unsigned char *p, size_t len, const unsigned char *tw)
{
    xts_aes256_encrypt_message(ctx, tw, len, p, p);
}
static void nt_cbc_aes(void *ctx, unsigned char *p, size_t len, const unsigned char *tw)
{
    unsigned char v[16];
    memcpy(v, tw, 16);
    cbc_encrypt(ctx, (nettle_cipher_func *)aes256_encrypt, 16, v, len, p, p);
}
struct nt_xts { void *c1, *c2; nettle_cipher_func *f; };
static void nt_xts_gen(void *ctx, unsigned char *p, size_t len, const unsigned char *tw)
{
    struct nt_xts *x = ctx;
    xts_encrypt_message(x->c1, x->c2, x->f, tw, len, p, p);
}

/* ---- libgcrypt ---- */
static void gc_enc(void *ctx, unsigned char *p, size_t len, const unsigned char *tw)
{
    gcry_cipher_setiv(ctx, tw, 16);
    gcry_cipher_encrypt(ctx, p, len, NULL, 0);
}
static double gc_rate(int alg, int mode, int klen)
{
    gcry_cipher_hd_t h;
    double r;

    if (gcry_cipher_open(&h, alg, mode, 0) || gcry_cipher_setkey(h, key, klen))
        return -1;
    r = rate(gc_enc, h);
    gcry_cipher_close(h);
    return r;
}

/* ---- libcrypto ---- */
static void os_enc(void *ctx, unsigned char *p, size_t len, const unsigned char *tw)
{
    int out;
    EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, tw);
    EVP_EncryptUpdate(ctx, p, &out, p, (int)len);
}
static double os_rate(const EVP_CIPHER *c)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    double r;

    if (!c || !EVP_EncryptInit_ex(ctx, c, NULL, key, iv))
        return -1;
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    r = rate(os_enc, ctx);
    EVP_CIPHER_CTX_free(ctx);
    return r;
}

/* ---- PBKDF2-HMAC-SHA256, iterations/s ---- */
#define ITERS 200000u
static double pb_gnutls(void)
{
    gnutls_datum_t k = { (unsigned char *)"password", 8 }, s = { key, 32 };
    unsigned char out[32];
    double t0 = now();
    gnutls_pbkdf2(GNUTLS_MAC_SHA256, &k, &s, ITERS, out, 32);
    return ITERS / (now() - t0);
}
static double pb_nettle(void)
{
    unsigned char out[32];
    double t0 = now();
    pbkdf2_hmac_sha256(8, (const uint8_t *)"password", ITERS, 32, key, 32, out);
    return ITERS / (now() - t0);
}
static double pb_gcrypt(void)
{
    unsigned char out[32];
    double t0 = now();
    gcry_kdf_derive("password", 8, GCRY_KDF_PBKDF2, GCRY_MD_SHA256, key, 32, ITERS, 32, out);
    return ITERS / (now() - t0);
}
static double pb_openssl(void)
{
    unsigned char out[32];
    double t0 = now();
    PKCS5_PBKDF2_HMAC("password", 8, key, 32, ITERS, EVP_sha256(), 32, out);
    return ITERS / (now() - t0);
}

int main(void)
{
    struct aes256_ctx a1, a2;
    struct serpent_ctx s1, s2;
    struct twofish_ctx t1, t2;
    struct xts_aes256_key xk;
    struct nt_xts nx;

    if (!(buf = calloc(1, BUF)))
        return 1;
    for (int i = 0; i < 64; i++)
        key[i] = (unsigned char)(i * 7 + 1);
    gcry_check_version(NULL);
    gnutls_global_init();
    printf("%-22s %10s %10s %10s %10s\n", "MB/s (1 thread)", "gnutls", "nettle", "libgcrypt", "libcrypto");

    xts_aes256_set_encrypt_key(&xk, key);
    printf("%-22s %10.0f %10.0f %10.0f %10.0f\n", "aes-256-xts",
           gt_rate(GNUTLS_CIPHER_AES_256_XTS, 64), rate(nt_xts_aes, &xk),
           gc_rate(GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_XTS, 64), os_rate(EVP_aes_256_xts()));

    aes256_set_encrypt_key(&a1, key);
    printf("%-22s %10.0f %10.0f %10.0f %10.0f\n", "aes-256-cbc (encrypt)",
           gt_rate(GNUTLS_CIPHER_AES_256_CBC, 32), rate(nt_cbc_aes, &a1),
           gc_rate(GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_CBC, 32), os_rate(EVP_aes_256_cbc()));
    (void)a2;

    serpent256_set_key(&s1, key);
    serpent256_set_key(&s2, key + 32);
    nx = (struct nt_xts){ &s1, &s2, (nettle_cipher_func *)serpent_encrypt };
    printf("%-22s %10s %10.0f %10.0f %10s\n", "serpent-256-xts", "-", rate(nt_xts_gen, &nx),
           gc_rate(GCRY_CIPHER_SERPENT256, GCRY_CIPHER_MODE_XTS, 64), "-");

    twofish256_set_key(&t1, key);
    twofish256_set_key(&t2, key + 32);
    nx = (struct nt_xts){ &t1, &t2, (nettle_cipher_func *)twofish_encrypt };
    printf("%-22s %10s %10.0f %10.0f %10s\n", "twofish-256-xts", "-", rate(nt_xts_gen, &nx),
           gc_rate(GCRY_CIPHER_TWOFISH, GCRY_CIPHER_MODE_XTS, 64), "-");

    printf("%-22s %10.0f %10.0f %10.0f %10.0f\n", "pbkdf2-sha256 iter/s",
           pb_gnutls(), pb_nettle(), pb_gcrypt(), pb_openssl());
    free(buf);
    return 0;
}
