/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk's crypto layer: block ciphers and modes (libgcrypt), hashes and
 * PBKDF2 (gnutls), sector IV generators, the LUKS anti-forensic splitter
 * and --object secret look-up.  libgcrypt was chosen by measurement
 * (bench/crypto: fastest AES-XTS and the only one of the four libraries
 * with serpent, twofish and cast5 in XTS); gnutls's PBKDF2 is faster than
 * libgcrypt's, so key derivation runs there (hashes: libgcrypt, which
 * has ripemd160).  No cipher is written here.  The code over those
 * libraries is in the module vdisk-crypto.so (crypto-lib.h). */
#ifndef VD_CRYPTO_CRYPTO_H
#define VD_CRYPTO_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum vd_cipher_alg {
    VD_CIPHER_AES_128, VD_CIPHER_AES_192, VD_CIPHER_AES_256, VD_CIPHER_CAST5_128,
    VD_CIPHER_SERPENT_128, VD_CIPHER_SERPENT_192, VD_CIPHER_SERPENT_256,
    VD_CIPHER_TWOFISH_128, VD_CIPHER_TWOFISH_192, VD_CIPHER_TWOFISH_256,
    VD_CIPHER__MAX
};
enum vd_cipher_mode { VD_MODE_ECB, VD_MODE_CBC, VD_MODE_XTS, VD_MODE_CTR, VD_MODE__MAX };
enum vd_ivgen_alg { VD_IVGEN_PLAIN, VD_IVGEN_PLAIN64, VD_IVGEN_ESSIV, VD_IVGEN__MAX };
enum vd_hash_alg {
    VD_HASH_MD5, VD_HASH_SHA1, VD_HASH_SHA224, VD_HASH_SHA256, VD_HASH_SHA384,
    VD_HASH_SHA512, VD_HASH_RIPEMD160, VD_HASH__MAX
};

#define VD_HASH_MAX_LEN 64
#define VD_CIPHER_MAX_KEY 64       /* xts doubles the key */
#define VD_CIPHER_MAX_BLOCK 16

/* Names as QEMU spells them ("aes-256", "xts", "plain64", "sha256");
 * parse returns the enum or -1. */
int vd_cipher_alg_parse(const char *name);
const char *vd_cipher_alg_name(enum vd_cipher_alg a);
int vd_cipher_mode_parse(const char *name);
const char *vd_cipher_mode_name(enum vd_cipher_mode m);
int vd_ivgen_parse(const char *name);
const char *vd_ivgen_name(enum vd_ivgen_alg g);
int vd_hash_parse(const char *name);
const char *vd_hash_name(enum vd_hash_alg h);

/* Key length of the algorithm (for xts the key is twice that). */
size_t vd_cipher_key_len(enum vd_cipher_alg a);
size_t vd_cipher_block_len(enum vd_cipher_alg a);
/* The algorithm of a family ("aes", "serpent", ...) with that key length,
 * or -1. */
int vd_cipher_alg_by_family(const char *family, size_t key_len);
/* The family name of an algorithm: "aes", "cast5", "serpent", "twofish". */
const char *vd_cipher_family(enum vd_cipher_alg a);
size_t vd_hash_len(enum vd_hash_alg h);

/* A keyed cipher in one mode.  Thread-safe: each call takes a handle of
 * its own from a small pool. */
struct vd_cipher;
int vd_cipher_new(struct vd_cipher **out, enum vd_cipher_alg a, enum vd_cipher_mode m,
                  const uint8_t *key, size_t key_len);
void vd_cipher_free(struct vd_cipher *c);
/* En/decrypt len bytes in place (a multiple of the block length; xts: at
 * least one block) with iv (iv_len: the block length; NULL for ecb). */
int vd_cipher_encrypt(struct vd_cipher *c, const uint8_t *iv, size_t iv_len, void *buf,
                      size_t len);
int vd_cipher_decrypt(struct vd_cipher *c, const uint8_t *iv, size_t iv_len, void *buf,
                      size_t len);

/* Hash of data into out (vd_hash_len bytes). */
int vd_hash(enum vd_hash_alg h, const void *data, size_t len, uint8_t *out);
/* PBKDF2 with HMAC over h. */
int vd_pbkdf2(enum vd_hash_alg h, const uint8_t *pass, size_t pass_len, const uint8_t *salt,
              size_t salt_len, uint64_t iters, uint8_t *out, size_t out_len);
/* Iterations of PBKDF2-HMAC-h per second on this machine (> 0), or -errno,
 * deriving one hash length of output: PBKDF2 runs its iterations once per
 * hash length of the output it is asked for. */
int64_t vd_pbkdf2_rate(enum vd_hash_alg h);

/* The LUKS anti-forensic splitter (LUKS1 spec, AFsplit/AFmerge): split
 * block_len bytes of in into stripes * block_len bytes of out, and back. */
int vd_af_split(enum vd_hash_alg h, size_t block_len, uint32_t stripes, const uint8_t *in,
                uint8_t *out);
int vd_af_merge(enum vd_hash_alg h, size_t block_len, uint32_t stripes, const uint8_t *in,
                uint8_t *out);

/* Sector encryption: a cipher, a mode and an IV generator, 512-byte
 * sectors numbered from 0 at the start of the encrypted data. */
struct vd_blockcrypt;
struct vd_blockcrypt_params {
    enum vd_cipher_alg cipher;
    enum vd_cipher_mode mode;
    enum vd_ivgen_alg ivgen;        /* ignored for ecb */
    enum vd_cipher_alg ivgen_cipher; /* essiv only */
    enum vd_hash_alg ivgen_hash;    /* essiv only */
};
#define VD_CRYPT_SECTOR 512u
int vd_blockcrypt_new(struct vd_blockcrypt **out, const struct vd_blockcrypt_params *p,
                      const uint8_t *key, size_t key_len);
void vd_blockcrypt_free(struct vd_blockcrypt *bc);
/* En/decrypt len bytes in place (whole sectors, the last may be a shorter
 * run of cipher blocks), the first being sector number sector.  Thread-safe:
 * concurrent requests run on as many cores. */
int vd_blockcrypt_encrypt(struct vd_blockcrypt *bc, uint64_t sector, void *buf, size_t len);
int vd_blockcrypt_decrypt(struct vd_blockcrypt *bc, uint64_t sector, void *buf, size_t len);

/* Random bytes from the kernel. */
int vd_random(void *buf, size_t len);
/* Zero memory the compiler may not skip (secrets, keys). */
void vd_wipe(void *p, size_t len);

/* The value of --object secret id (data=/file=, format=, keyid=/iv=), in
 * a malloc'd buffer with a NUL after len bytes; release with
 * vd_secret_free.  -errno with QEMU's message (never the secret). */
int vd_secret_get(const char *id, uint8_t **data, size_t *len);
void vd_secret_free(uint8_t *data, size_t len);
/* The value of secret id as a C string (refused when it holds a NUL, with
 * QEMU's message); release with vd_secret_free_text. */
int vd_secret_get_text(const char *id, char **out);
void vd_secret_free_text(char *s);
/* Check that a secret object's properties give a value (at --object). */
struct vd_opts;
int vd_secret_check(const struct vd_opts *o);

#endif
