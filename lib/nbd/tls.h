/* SPDX-License-Identifier: BSD-3-Clause */
/* TLS for NBD (STARTTLS) with GnuTLS: credentials in QEMU's layout (an
 * x509 directory with ca-cert.pem, server-cert.pem, server-key.pem,
 * client-cert.pem, client-key.pem; or a PSK directory with keys.psk
 * holding "username:hexkey" lines), sessions over a connected socket, and
 * the authz-simple check of the peer's identity. */
#ifndef VD_NBD_TLS_H
#define VD_NBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum vd_nbd_tls_kind { VD_NBD_TLS_X509, VD_NBD_TLS_PSK };

struct vd_nbd_tls;
struct vd_nbd_tls_session;

/* Load credentials from dir.  server: the endpoint; verify_peer: x509
 * peers must present a certificate signed by the CA; username: the PSK
 * identity a client presents (NULL: "qemu"); key_password: decrypts an
 * encrypted x509 private key (NULL: the key is not encrypted). */
int vd_nbd_tls_new(struct vd_nbd_tls **out, enum vd_nbd_tls_kind kind,
                   const char *dir, bool server, bool verify_peer,
                   const char *username, const char *key_password);
/* Require the peer identity (x509 distinguished name or PSK username) to
 * equal identity (authz-simple); NULL: anyone with valid credentials. */
int vd_nbd_tls_set_authz(struct vd_nbd_tls *t, const char *identity);
void vd_nbd_tls_free(struct vd_nbd_tls *t);
bool vd_nbd_tls_is_server(const struct vd_nbd_tls *t);

/* Run the handshake on fd before deadline_ms (monotonic ms, < 0: none);
 * hostname (client, x509) is checked against the server certificate. */
int vd_nbd_tls_start(struct vd_nbd_tls *t, int fd, const char *hostname,
                     int64_t deadline_ms, struct vd_nbd_tls_session **out);
/* > 0 bytes read, 0 at end of stream, -errno. */
ssize_t vd_nbd_tls_recv(struct vd_nbd_tls_session *s, void *buf, size_t len);
/* Send everything: 0 or -errno. */
int vd_nbd_tls_send(struct vd_nbd_tls_session *s, const void *buf, size_t len);
void vd_nbd_tls_cork(struct vd_nbd_tls_session *s);
int vd_nbd_tls_uncork(struct vd_nbd_tls_session *s);
/* Decrypted bytes already buffered? */
bool vd_nbd_tls_pending(struct vd_nbd_tls_session *s);
/* Send close_notify (best effort) and free. */
void vd_nbd_tls_end(struct vd_nbd_tls_session *s);

#endif
