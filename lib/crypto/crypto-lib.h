/* SPDX-License-Identifier: BSD-3-Clause */
/* The code over libgcrypt, nettle and gnutls lives in the module
 * vdisk-crypto.so, loaded on first use, so that a program that never
 * decrypts, derives a key or speaks TLS maps none of those libraries (a
 * dozen shared objects: most of a short vdisk-img run's start-up).
 * libvdisk's functions of crypto.h, nbd/tls.h and the NBD client's TLS
 * call through the table the module registers when it is loaded. */
#ifndef VD_CRYPTO_CRYPTO_LIB_H
#define VD_CRYPTO_CRYPTO_LIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "crypto/crypto.h"
#include "nbd/tls.h"

struct nbdc_config;
/* A client's TLS session and its credentials (lib/nbd/client-tls.c). */
struct nbdc_tls;

typedef int vd_sector_iv_fn(void *opaque, uint64_t idx, uint8_t *iv);

struct vd_crypto_lib {
    size_t struct_size;
    /* crypto.h */
    int (*cipher_new)(struct vd_cipher **out, enum vd_cipher_alg a, enum vd_cipher_mode m,
                      const uint8_t *key, size_t key_len);
    void (*cipher_free)(struct vd_cipher *c);
    int (*cipher_crypt)(struct vd_cipher *c, bool enc, const uint8_t *iv, size_t iv_len,
                        void *buf, size_t len);
    int (*cipher_sectors)(struct vd_cipher *c, bool enc, void *buf, size_t len,
                          size_t sector_len, vd_sector_iv_fn *ivfn, void *opaque);
    int (*hash)(enum vd_hash_alg h, const void *data, size_t len, uint8_t *out);
    int (*pbkdf2)(enum vd_hash_alg h, const uint8_t *pass, size_t pass_len,
                  const uint8_t *salt, size_t salt_len, uint64_t iters, uint8_t *out,
                  size_t out_len);
    /* Base64 text (len bytes) to a malloc'd buffer with a NUL after
     * *out_len bytes: 0, or -1 on bad data or no memory. */
    int (*base64_decode)(const void *in, size_t len, uint8_t **out, size_t *out_len);
    /* nbd/tls.h */
    int (*tls_new)(struct vd_nbd_tls **out, enum vd_nbd_tls_kind kind, const char *dir,
                   bool server, bool verify_peer, const char *username,
                   const char *key_password);
    int (*tls_set_authz)(struct vd_nbd_tls *t, const char *identity);
    void (*tls_free)(struct vd_nbd_tls *t);
    bool (*tls_is_server)(const struct vd_nbd_tls *t);
    int (*tls_start)(struct vd_nbd_tls *t, int fd, const char *hostname, int64_t deadline_ms,
                     struct vd_nbd_tls_session **out);
    ssize_t (*tls_recv)(struct vd_nbd_tls_session *s, void *buf, size_t len);
    int (*tls_send)(struct vd_nbd_tls_session *s, const void *buf, size_t len);
    void (*tls_cork)(struct vd_nbd_tls_session *s);
    int (*tls_uncork)(struct vd_nbd_tls_session *s);
    bool (*tls_pending)(struct vd_nbd_tls_session *s);
    void (*tls_end)(struct vd_nbd_tls_session *s);
    /* The NBD client (client-tls.c): credentials, handshake before
     * deadline_ms and peer check on the connected, non-blocking fd. */
    int (*client_start)(const struct nbdc_config *cfg, int fd, int64_t deadline_ms,
                        struct nbdc_tls **out);
    /* One record call: bytes, 0 at the end (recv), -EAGAIN, -EIO. */
    ssize_t (*client_recv)(struct nbdc_tls *t, void *buf, size_t len);
    ssize_t (*client_send)(struct nbdc_tls *t, const void *buf, size_t len);
    void (*client_cork)(struct nbdc_tls *t);
    /* Flush corked records: 0, -EAGAIN, -EIO. */
    int (*client_uncork)(struct nbdc_tls *t);
    /* close_notify (bye), best effort. */
    void (*client_bye)(struct nbdc_tls *t);
    void (*client_free)(struct nbdc_tls *t);
};

/* The module's table, loading it on first use; NULL with the reason
 * recorded when it cannot be loaded. */
const struct vd_crypto_lib *vd_crypto_lib(void);
/* Called by the module when it is loaded. */
void vd_crypto_lib_register(const struct vd_crypto_lib *l);

/* The module's side (cipher-lib.c, hash-lib.c, nbd/tls.c,
 * nbd/client-tls.c), gathered into its table by crypto-module.c. */
void vdcm_gcry_init(void);
int vdcm_cipher_new(struct vd_cipher **out, enum vd_cipher_alg a, enum vd_cipher_mode m,
                    const uint8_t *key, size_t key_len);
void vdcm_cipher_free(struct vd_cipher *c);
int vdcm_cipher_crypt(struct vd_cipher *c, bool enc, const uint8_t *iv, size_t iv_len,
                      void *buf, size_t len);
int vdcm_cipher_sectors(struct vd_cipher *c, bool enc, void *buf, size_t len,
                        size_t sector_len, vd_sector_iv_fn *ivfn, void *opaque);
int vdcm_hash(enum vd_hash_alg h, const void *data, size_t len, uint8_t *out);
int vdcm_pbkdf2(enum vd_hash_alg h, const uint8_t *pass, size_t pass_len, const uint8_t *salt,
                size_t salt_len, uint64_t iters, uint8_t *out, size_t out_len);
int vdcm_base64_decode(const void *in, size_t len, uint8_t **out, size_t *out_len);
int vdcm_tls_new(struct vd_nbd_tls **out, enum vd_nbd_tls_kind kind, const char *dir,
                 bool server, bool verify_peer, const char *username, const char *key_password);
int vdcm_tls_set_authz(struct vd_nbd_tls *t, const char *identity);
void vdcm_tls_free(struct vd_nbd_tls *t);
bool vdcm_tls_is_server(const struct vd_nbd_tls *t);
int vdcm_tls_start(struct vd_nbd_tls *t, int fd, const char *hostname, int64_t deadline_ms,
                   struct vd_nbd_tls_session **out);
ssize_t vdcm_tls_recv(struct vd_nbd_tls_session *s, void *buf, size_t len);
int vdcm_tls_send(struct vd_nbd_tls_session *s, const void *buf, size_t len);
void vdcm_tls_cork(struct vd_nbd_tls_session *s);
int vdcm_tls_uncork(struct vd_nbd_tls_session *s);
bool vdcm_tls_pending(struct vd_nbd_tls_session *s);
void vdcm_tls_end(struct vd_nbd_tls_session *s);
int vdcm_client_start(const struct nbdc_config *cfg, int fd, int64_t deadline_ms,
                      struct nbdc_tls **out);
ssize_t vdcm_client_recv(struct nbdc_tls *t, void *buf, size_t len);
ssize_t vdcm_client_send(struct nbdc_tls *t, const void *buf, size_t len);
void vdcm_client_cork(struct nbdc_tls *t);
int vdcm_client_uncork(struct nbdc_tls *t);
void vdcm_client_bye(struct nbdc_tls *t);
void vdcm_client_free(struct nbdc_tls *t);

#endif
