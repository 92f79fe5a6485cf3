/* SPDX-License-Identifier: BSD-3-Clause */
/* nbd/tls.h's functions: the code is in the module vdisk-crypto.so
 * (tls.c), loaded by the first vd_nbd_tls_new; a credentials object or a
 * session exists only once it is loaded. */
#include <errno.h>

#include "crypto/crypto-lib.h"
#include "nbd/tls.h"

/* See tls.h. */
int vd_nbd_tls_new(struct vd_nbd_tls **out, enum vd_nbd_tls_kind kind,
                   const char *dir, bool server, bool verify_peer,
                   const char *username, const char *key_password)
{
    const struct vd_crypto_lib *l = vd_crypto_lib();

    *out = NULL;
    return l ? l->tls_new(out, kind, dir, server, verify_peer, username, key_password)
             : -ELIBACC;
}

/* See tls.h. */
int vd_nbd_tls_set_authz(struct vd_nbd_tls *t, const char *identity)
{
    return vd_crypto_lib()->tls_set_authz(t, identity);
}

/* See tls.h. */
void vd_nbd_tls_free(struct vd_nbd_tls *t)
{
    if (t)
        vd_crypto_lib()->tls_free(t);
}

/* See tls.h. */
bool vd_nbd_tls_is_server(const struct vd_nbd_tls *t)
{
    return vd_crypto_lib()->tls_is_server(t);
}

/* See tls.h. */
int vd_nbd_tls_start(struct vd_nbd_tls *t, int fd, const char *hostname,
                     int64_t deadline_ms, struct vd_nbd_tls_session **out)
{
    return vd_crypto_lib()->tls_start(t, fd, hostname, deadline_ms, out);
}

/* See tls.h. */
ssize_t vd_nbd_tls_recv(struct vd_nbd_tls_session *s, void *buf, size_t len)
{
    return vd_crypto_lib()->tls_recv(s, buf, len);
}

/* See tls.h. */
int vd_nbd_tls_send(struct vd_nbd_tls_session *s, const void *buf, size_t len)
{
    return vd_crypto_lib()->tls_send(s, buf, len);
}

/* See tls.h. */
void vd_nbd_tls_cork(struct vd_nbd_tls_session *s)
{
    vd_crypto_lib()->tls_cork(s);
}

/* See tls.h. */
int vd_nbd_tls_uncork(struct vd_nbd_tls_session *s)
{
    return vd_crypto_lib()->tls_uncork(s);
}

/* See tls.h. */
bool vd_nbd_tls_pending(struct vd_nbd_tls_session *s)
{
    return vd_crypto_lib()->tls_pending(s);
}

/* See tls.h. */
void vd_nbd_tls_end(struct vd_nbd_tls_session *s)
{
    if (s)
        vd_crypto_lib()->tls_end(s);
}
