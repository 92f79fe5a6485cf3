/* SPDX-License-Identifier: BSD-3-Clause */
/* TLS for NBD with GnuTLS, in the module vdisk-crypto.so: credentials
 * laid out as QEMU's tls-creds-x509 and tls-creds-psk objects expect them,
 * the handshake with a deadline, peer verification and the authz-simple
 * identity check. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "crypto/crypto-lib.h"
#include "nbd/wire.h"
#include "vdisk/vdisk.h"

#define PRIO_X509 "NORMAL"
#define PRIO_PSK "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"

struct vd_nbd_tls {
    enum vd_nbd_tls_kind kind;
    bool server, verify_peer;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
    char *authz;                   /* required peer identity, or NULL */
};

struct vd_nbd_tls_session {
    gnutls_session_t s;
};

/* dir/name into buf; false when it does not fit. */
static bool path_in(char *buf, size_t size, const char *dir, const char *name)
{
    int n = snprintf(buf, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size;
}

/* Does dir/name exist? */
static bool have_file(const char *dir, const char *name)
{
    char p[4096];
    return path_in(p, sizeof(p), dir, name) && access(p, R_OK) == 0;
}

/* Load the x509 files of dir for the endpoint; password (may be NULL)
 * decrypts the private key. */
static int load_x509(struct vd_nbd_tls *t, const char *dir, const char *password)
{
    const char *cert = t->server ? "server-cert.pem" : "client-cert.pem";
    const char *key = t->server ? "server-key.pem" : "client-key.pem";
    char ca[4096], cp[4096], kp[4096], crl[4096];
    int r;

    if (gnutls_certificate_allocate_credentials(&t->x509) < 0)
        return vd_error(ENOMEM, "Cannot allocate credentials");
    if (!path_in(ca, sizeof(ca), dir, "ca-cert.pem") || !path_in(cp, sizeof(cp), dir, cert) ||
        !path_in(kp, sizeof(kp), dir, key) || !path_in(crl, sizeof(crl), dir, "ca-crl.pem"))
        return vd_error(ENAMETOOLONG, "TLS credentials directory name is too long");
    if ((r = gnutls_certificate_set_x509_trust_file(t->x509, ca, GNUTLS_X509_FMT_PEM)) < 0)
        return vd_error(EINVAL, "Cannot load CA certificate '%s': %s", ca, gnutls_strerror(r));
    if (have_file(dir, "ca-crl.pem") &&
        (r = gnutls_certificate_set_x509_crl_file(t->x509, crl, GNUTLS_X509_FMT_PEM)) < 0)
        return vd_error(EINVAL, "Cannot load CRL '%s': %s", crl, gnutls_strerror(r));
    if (!t->server && !have_file(dir, cert))
        return 0;                  /* a client may go without a certificate */
    if ((r = gnutls_certificate_set_x509_key_file2(t->x509, cp, kp, GNUTLS_X509_FMT_PEM,
                                                   password, 0)) < 0)
        return vd_error(EINVAL, "Cannot load certificate '%s' & key '%s': %s", cp, kp,
                        gnutls_strerror(r));
    return 0;
}

/* The hex key of username in a keys.psk file, or NULL. */
static char *psk_lookup(const char *path, const char *username)
{
    FILE *f = fopen(path, "r");
    char line[1024], *key = NULL;
    size_t ul = strlen(username);

    if (!f)
        return NULL;
    while (!key && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!strncmp(line, username, ul) && line[ul] == ':')
            key = strdup(line + ul + 1);
    }
    fclose(f);
    return key;
}

/* Load the PSK file of dir for the endpoint. */
static int load_psk(struct vd_nbd_tls *t, const char *dir, const char *username)
{
    gnutls_datum_t d;
    char path[4096], *key;
    int r;

    if (!path_in(path, sizeof(path), dir, "keys.psk"))
        return vd_error(ENAMETOOLONG, "TLS credentials directory name is too long");
    if (t->server) {
        if (access(path, R_OK) < 0)
            return vd_error(errno, "Cannot read PSK file '%s'", path);
        if (gnutls_psk_allocate_server_credentials(&t->psk_server) < 0)
            return vd_error(ENOMEM, "Cannot allocate credentials");
        if ((r = gnutls_psk_set_server_credentials_file(t->psk_server, path)) < 0)
            return vd_error(EINVAL, "Cannot set PSK file '%s': %s", path, gnutls_strerror(r));
        return 0;
    }
    username = username ? username : "qemu";
    if (!(key = psk_lookup(path, username)))
        return vd_error(ENOENT, "Username %s not found in PSK file %s", username, path);
    if (gnutls_psk_allocate_client_credentials(&t->psk_client) < 0) {
        free(key);
        return vd_error(ENOMEM, "Cannot allocate credentials");
    }
    d.data = (unsigned char *)key;
    d.size = (unsigned)strlen(key);
    r = gnutls_psk_set_client_credentials(t->psk_client, username, &d, GNUTLS_PSK_KEY_HEX);
    free(key);
    return r < 0 ? vd_error(EINVAL, "Cannot set PSK client credentials: %s",
                            gnutls_strerror(r)) : 0;
}

/* See tls.h (called through tls-load.c). */
int vdcm_tls_new(struct vd_nbd_tls **out, enum vd_nbd_tls_kind kind,
                   const char *dir, bool server, bool verify_peer,
                   const char *username, const char *key_password)
{
    struct vd_nbd_tls *t = calloc(1, sizeof(*t));
    int r;

    *out = NULL;
    if (!t)
        return vd_error(ENOMEM, "out of memory");
    t->kind = kind;
    t->server = server;
    t->verify_peer = verify_peer;
    r = kind == VD_NBD_TLS_X509 ? load_x509(t, dir, key_password)
                                : load_psk(t, dir, username);
    if (r < 0) {
        vdcm_tls_free(t);
        return r;
    }
    *out = t;
    return 0;
}

/* See tls.h (called through tls-load.c). */
int vdcm_tls_set_authz(struct vd_nbd_tls *t, const char *identity)
{
    free(t->authz);
    t->authz = identity ? strdup(identity) : NULL;
    return identity && !t->authz ? vd_error(ENOMEM, "out of memory") : 0;
}

/* See tls.h (called through tls-load.c). */
void vdcm_tls_free(struct vd_nbd_tls *t)
{
    if (!t)
        return;
    if (t->x509)
        gnutls_certificate_free_credentials(t->x509);
    if (t->psk_server)
        gnutls_psk_free_server_credentials(t->psk_server);
    if (t->psk_client)
        gnutls_psk_free_client_credentials(t->psk_client);
    free(t->authz);
    free(t);
}

/* See tls.h (called through tls-load.c). */
bool vdcm_tls_is_server(const struct vd_nbd_tls *t)
{
    return t->server;
}

/* Set priorities and credentials on a new session. */
static int session_setup(struct vd_nbd_tls *t, gnutls_session_t s, const char *hostname)
{
    int r;

    if (t->kind == VD_NBD_TLS_X509) {
        r = gnutls_priority_set_direct(s, PRIO_X509, NULL);
        if (r >= 0)
            r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, t->x509);
        if (r >= 0 && t->server && t->verify_peer)
            gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
    } else {
        r = gnutls_priority_set_direct(s, PRIO_PSK, NULL);
        if (r >= 0)
            r = gnutls_credentials_set(s, GNUTLS_CRD_PSK, t->server
                                       ? (void *)t->psk_server : (void *)t->psk_client);
    }
    if (r >= 0 && !t->server && hostname)
        r = gnutls_server_name_set(s, GNUTLS_NAME_DNS, hostname, strlen(hostname));
    return r < 0 ? vd_error(EINVAL, "Cannot set up TLS session: %s", gnutls_strerror(r)) : 0;
}

/* Check the peer's certificate chain (and name, for clients). */
static int verify_x509(struct vd_nbd_tls *t, gnutls_session_t s, const char *hostname)
{
    unsigned status = 0;
    int r;

    if (!t->verify_peer)
        return 0;
    r = gnutls_certificate_verify_peers3(s, t->server ? NULL : hostname, &status);
    if (r < 0)
        return vd_error(EPERM, "Cannot verify peer certificate: %s", gnutls_strerror(r));
    if (status) {
        gnutls_datum_t out;
        if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0) {
            vd_error(EPERM, "Peer certificate is not valid: %s", out.data);
            gnutls_free(out.data);
            return -EPERM;
        }
        return vd_error(EPERM, "Peer certificate is not valid");
    }
    return 0;
}

/* The distinguished name of the peer's certificate into dn. */
static int peer_dn(gnutls_session_t s, char *dn, size_t size)
{
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(s, &n);
    gnutls_x509_crt_t crt;
    int r;

    if (!certs || !n)
        return vd_error(EPERM, "No certificate peer identity");
    if (gnutls_x509_crt_init(&crt) < 0)
        return vd_error(ENOMEM, "out of memory");
    r = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER);
    if (r >= 0)
        r = gnutls_x509_crt_get_dn(crt, dn, &size);
    gnutls_x509_crt_deinit(crt);
    return r < 0 ? vd_error(EPERM, "Cannot read peer certificate: %s", gnutls_strerror(r)) : 0;
}

/* authz-simple: the peer's identity must be the one allowed. */
static int check_authz(struct vd_nbd_tls *t, gnutls_session_t s)
{
    char dn[1024];
    const char *id;
    int r;

    if (!t->server || !t->authz)
        return 0;
    if (t->kind == VD_NBD_TLS_PSK) {
        id = gnutls_psk_server_get_username(s);
        if (!id)
            return vd_error(EPERM, "No PSK username");
    } else {
        if ((r = peer_dn(s, dn, sizeof(dn))) < 0)
            return r;
        id = dn;
    }
    if (strcmp(id, t->authz))
        return vd_error(EPERM, "TLS peer identity '%s' is not authorized", id);
    return 0;
}

/* Handshake until done, an error or the deadline. */
static int handshake(gnutls_session_t s, int64_t deadline_ms)
{
    int r;

    if (deadline_ms >= 0) {
        int64_t left = deadline_ms - vd_wire_now_ms();
        gnutls_handshake_set_timeout(s, left > 0 ? (unsigned)left : 1);
    }
    do {
        r = gnutls_handshake(s);
    } while (r < 0 && !gnutls_error_is_fatal(r));
    return r < 0 ? vd_error(r == GNUTLS_E_TIMEDOUT ? ETIMEDOUT : ECONNRESET,
                            "TLS handshake failed: %s", gnutls_strerror(r)) : 0;
}

/* See tls.h (called through tls-load.c). */
int vdcm_tls_start(struct vd_nbd_tls *t, int fd, const char *hostname,
                     int64_t deadline_ms, struct vd_nbd_tls_session **out)
{
    struct vd_nbd_tls_session *ts = calloc(1, sizeof(*ts));
    int r;

    *out = NULL;
    if (!ts)
        return vd_error(ENOMEM, "out of memory");
    if (!t->server && t->kind == VD_NBD_TLS_X509 && t->verify_peer && !hostname) {
        free(ts);
        return vd_error(EINVAL, "No hostname for certificate validation");
    }
    if (gnutls_init(&ts->s, (t->server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_SIGNAL) < 0) {
        free(ts);
        return vd_error(ENOMEM, "Cannot start a TLS session");
    }
    gnutls_transport_set_int(ts->s, fd);
    if ((r = session_setup(t, ts->s, hostname)) < 0 ||
        (r = handshake(ts->s, deadline_ms)) < 0 ||
        (t->kind == VD_NBD_TLS_X509 && (r = verify_x509(t, ts->s, hostname)) < 0) ||
        (r = check_authz(t, ts->s)) < 0) {
        gnutls_deinit(ts->s);
        free(ts);
        return r;
    }
    *out = ts;
    return 0;
}

/* See tls.h (called through tls-load.c). */
ssize_t vdcm_tls_recv(struct vd_nbd_tls_session *ts, void *buf, size_t len)
{
    ssize_t r;

    do {
        r = gnutls_record_recv(ts->s, buf, len);
    } while (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
        return 0;
    return r < 0 ? vd_error(EIO, "TLS read failed: %s", gnutls_strerror((int)r)) : r;
}

/* See tls.h (called through tls-load.c). */
int vdcm_tls_send(struct vd_nbd_tls_session *ts, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t r = gnutls_record_send(ts->s, p, len);
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
            continue;
        if (r < 0)
            return vd_error(EIO, "TLS write failed: %s", gnutls_strerror((int)r));
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* See tls.h (called through tls-load.c). */
void vdcm_tls_cork(struct vd_nbd_tls_session *ts)
{
    gnutls_record_cork(ts->s);
}

/* See tls.h (called through tls-load.c). */
int vdcm_tls_uncork(struct vd_nbd_tls_session *ts)
{
    int r = gnutls_record_uncork(ts->s, GNUTLS_RECORD_WAIT);
    return r < 0 ? vd_error(EIO, "TLS write failed: %s", gnutls_strerror(r)) : 0;
}

/* See tls.h (called through tls-load.c). */
bool vdcm_tls_pending(struct vd_nbd_tls_session *ts)
{
    return gnutls_record_check_pending(ts->s) > 0;
}

/* See tls.h (called through tls-load.c). */
void vdcm_tls_end(struct vd_nbd_tls_session *ts)
{
    if (!ts)
        return;
    gnutls_bye(ts->s, GNUTLS_SHUT_WR);
    gnutls_deinit(ts->s);
    free(ts);
}
