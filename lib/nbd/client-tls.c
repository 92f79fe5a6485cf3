/* SPDX-License-Identifier: BSD-3-Clause */
/* The NBD client's TLS with gnutls, in the module vdisk-crypto.so: X.509
 * or PSK credentials from an --object or the nbds:// query's files, the
 * handshake with a deadline, the server's certificate checked, and the
 * record calls client-sock.c makes on its non-blocking socket. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "crypto/crypto-lib.h"
#include "nbd/client.h"
#include "vdisk/object.h"
#include "vdisk/vdisk.h"

/* Largest keys.psk file read. */
#define MAX_PSK_FILE (1u << 20)

struct nbdc_tls {
    gnutls_session_t s;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_client_credentials_t psk;
};

/* dir/file into a new string. */
static char *path_join(const char *dir, const char *file)
{
    size_t l = strlen(dir) + strlen(file) + 2;
    char *p = malloc(l);
    if (p)
        snprintf(p, l, "%s/%s", dir, file);
    return p;
}

/* Does dir/file exist and is it readable? */
static bool cred_exists(const char *dir, const char *file)
{
    char *p = path_join(dir, file);
    bool ok = p && access(p, R_OK) == 0;
    free(p);
    return ok;
}

/* Load X.509 client credentials from dir (qemu's file names). */
static int load_x509(struct nbdc_tls *t, const char *dir, bool verify)
{
    char *ca = NULL, *cert = NULL, *key = NULL;
    int g, r = 0;

    if (gnutls_certificate_allocate_credentials(&t->x509) < 0)
        return vd_error(ENOMEM, "Cannot allocate credentials");
    if (!dir) {
        if (gnutls_certificate_set_x509_system_trust(t->x509) < 0 && verify)
            return vd_error(EINVAL, "Cannot load the system's trusted CA certificates");
        return 0;
    }
    ca = path_join(dir, "ca-cert.pem");
    cert = path_join(dir, "client-cert.pem");
    key = path_join(dir, "client-key.pem");
    if (!ca || !cert || !key) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    if (cred_exists(dir, "ca-cert.pem")) {
        g = gnutls_certificate_set_x509_trust_file(t->x509, ca, GNUTLS_X509_FMT_PEM);
        if (g < 0) {
            r = vd_error(EINVAL, "Cannot load CA certificate '%s': %s", ca, gnutls_strerror(g));
            goto out;
        }
    } else if (verify) {
        r = vd_error(ENOENT, "Unable to access credentials %s: %s", ca, strerror(ENOENT));
        goto out;
    }
    if (cred_exists(dir, "client-cert.pem") && cred_exists(dir, "client-key.pem")) {
        g = gnutls_certificate_set_x509_key_file(t->x509, cert, key, GNUTLS_X509_FMT_PEM);
        if (g < 0)
            r = vd_error(EINVAL, "Cannot load certificate '%s' & key '%s': %s", cert, key,
                         gnutls_strerror(g));
    }
out:
    free(ca);
    free(cert);
    free(key);
    return r;
}

/* Find username's hex key in a keys.psk file ("user:hexkey" lines). */
static int find_psk_key(const char *file, const char *user, char **hexkey)
{
    FILE *f = fopen(file, "re");
    char line[1024];
    size_t ul = strlen(user), total = 0;

    if (!f)
        return vd_error(errno, "Unable to access credentials %s: %s", file, strerror(errno));
    *hexkey = NULL;
    while (!*hexkey && total < MAX_PSK_FILE && fgets(line, sizeof(line), f)) {
        total += strlen(line);
        line[strcspn(line, "\r\n")] = '\0';
        if (!strncmp(line, user, ul) && line[ul] == ':')
            *hexkey = strdup(line + ul + 1);
    }
    fclose(f);
    if (!*hexkey)
        return vd_error(ENOENT, "Username %s not found in %s", user, file);
    return 0;
}

/* Load PSK client credentials for user from file. */
static int load_psk(struct nbdc_tls *t, const char *file, const char *user)
{
    gnutls_datum_t key;
    char *hex;
    int g, r;

    if ((r = find_psk_key(file, user, &hex)) < 0)
        return r;
    if (gnutls_psk_allocate_client_credentials(&t->psk) < 0) {
        free(hex);
        return vd_error(ENOMEM, "Cannot allocate credentials");
    }
    key.data = (unsigned char *)hex;
    key.size = (unsigned)strlen(hex);
    g = gnutls_psk_set_client_credentials(t->psk, user, &key, GNUTLS_PSK_KEY_HEX);
    free(hex);
    if (g < 0)
        return vd_error(EINVAL, "Cannot set PSK client credentials: %s", gnutls_strerror(g));
    return 0;
}

/* Load the credentials cfg names: an --object, or nbds:// query files. */
static int load_creds(const struct nbdc_config *cfg, struct nbdc_tls *t, bool *verify)
{
    const vd_opts *o;
    const char *type, *dir, *ep, *user;
    char *file;
    int r;

    *verify = cfg->tls_verify;
    if (!cfg->tls_creds) {
        if (cfg->tls_psk_file)
            return load_psk(t, cfg->tls_psk_file, cfg->tls_username ? cfg->tls_username : "qemu");
        return load_x509(t, cfg->tls_certs_dir, *verify);
    }
    if (!(o = vd_object_find(cfg->tls_creds)))
        return vd_error(ENOENT, "No TLS credentials with id '%s'", cfg->tls_creds);
    type = vd_opts_get(o, "qom-type");
    dir = vd_opts_get(o, "dir");
    ep = vd_opts_get(o, "endpoint");
    if (ep && strcmp(ep, "client"))
        return vd_error(EINVAL, "Expecting TLS credentials with a client endpoint");
    if ((r = vd_opts_get_bool(o, "verify-peer", true, verify)) < 0)
        return r;
    if (!strcmp(type, "tls-creds-x509"))
        return load_x509(t, dir, *verify);
    if (strcmp(type, "tls-creds-psk"))
        return vd_error(EINVAL, "TLS credentials '%s' of type '%s' are not supported",
                        cfg->tls_creds, type);
    user = vd_opts_get(o, "username");
    if (!dir || !(file = path_join(dir, "keys.psk")))
        return vd_error(EINVAL, "TLS credentials '%s' have no directory", cfg->tls_creds);
    r = load_psk(t, file, user ? user : "qemu");
    free(file);
    return r;
}

/* Set up the gnutls session on fd with the loaded credentials. */
static int setup_session(const struct nbdc_config *cfg, struct nbdc_tls *t, int fd)
{
    const char *prio = t->psk ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : "NORMAL";
    const char *host = cfg->tls_hostname ? cfg->tls_hostname :
                       cfg->type == NBDC_INET ? cfg->host : NULL;
    int g;

    if (gnutls_init(&t->s, GNUTLS_CLIENT | GNUTLS_NO_SIGNAL) < 0)
        return vd_error(ENOMEM, "Cannot initialize TLS session");
    if ((g = gnutls_priority_set_direct(t->s, prio, NULL)) < 0)
        return vd_error(EINVAL, "Cannot set TLS priority: %s", gnutls_strerror(g));
    if (t->psk)
        g = gnutls_credentials_set(t->s, GNUTLS_CRD_PSK, t->psk);
    else
        g = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, t->x509);
    if (g < 0)
        return vd_error(EINVAL, "Cannot set TLS credentials: %s", gnutls_strerror(g));
    if (host && !t->psk)
        gnutls_server_name_set(t->s, GNUTLS_NAME_DNS, host, strlen(host));
    gnutls_transport_set_int(t->s, fd);
    return 0;
}

/* Check the server's certificate against the CA and the host name. */
static int verify_peer(const struct nbdc_config *cfg, struct nbdc_tls *t)
{
    const char *host = cfg->tls_hostname ? cfg->tls_hostname :
                       cfg->type == NBDC_INET ? cfg->host : NULL;
    unsigned status = 0;
    gnutls_datum_t txt;
    int g;

    if (t->psk)
        return 0;
    g = gnutls_certificate_verify_peers3(t->s, host, &status);
    if (g < 0)
        return vd_error(EACCES, "Cannot verify the server certificate: %s",
                        gnutls_strerror(g));
    if (!status)
        return 0;
    if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &txt, 0) < 0)
        return vd_error(EACCES, "The server certificate is not trusted");
    g = vd_error(EACCES, "Certificate does not pass verification: %s", txt.data);
    gnutls_free(txt.data);
    return g;
}

/* Start TLS on fd: credentials, handshake, peer verification. */
static int start(const struct nbdc_config *cfg, struct nbdc_tls *t, int fd, int64_t deadline_ms)
{
    bool verify;
    int g, r;

    if ((r = load_creds(cfg, t, &verify)) < 0 || (r = setup_session(cfg, t, fd)) < 0)
        return r;
    do {
        g = gnutls_handshake(t->s);
        if (g < 0 && !gnutls_error_is_fatal(g) && nbdc_now_ms() >= deadline_ms)
            return vd_error(ETIMEDOUT, "TLS handshake timed out");
    } while (g < 0 && !gnutls_error_is_fatal(g));
    if (g < 0)
        return vd_error(EIO, "TLS handshake failed: %s", gnutls_strerror(g));
    return verify ? verify_peer(cfg, t) : 0;
}

/* See crypto-lib.h. */
int vdcm_client_start(const struct nbdc_config *cfg, int fd, int64_t deadline_ms,
                      struct nbdc_tls **out)
{
    struct nbdc_tls *t = calloc(1, sizeof(*t));
    int r;

    *out = NULL;
    if (!t)
        return vd_error(ENOMEM, "out of memory");
    if ((r = start(cfg, t, fd, deadline_ms)) < 0) {
        vdcm_client_free(t);
        return r;
    }
    *out = t;
    return 0;
}

/* See crypto-lib.h. */
ssize_t vdcm_client_recv(struct nbdc_tls *t, void *buf, size_t len)
{
    ssize_t r = gnutls_record_recv(t->s, buf, len);

    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
        return -EAGAIN;
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
        return 0;
    return r < 0 ? -EIO : r;
}

/* See crypto-lib.h. */
ssize_t vdcm_client_send(struct nbdc_tls *t, const void *buf, size_t len)
{
    ssize_t r = gnutls_record_send(t->s, buf, len);

    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
        return -EAGAIN;
    return r < 0 ? -EIO : r;
}

/* See crypto-lib.h. */
void vdcm_client_cork(struct nbdc_tls *t)
{
    gnutls_record_cork(t->s);
}

/* See crypto-lib.h. */
int vdcm_client_uncork(struct nbdc_tls *t)
{
    int r = gnutls_record_uncork(t->s, GNUTLS_RECORD_WAIT);

    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
        return -EAGAIN;
    return r < 0 ? -EIO : 0;
}

/* See crypto-lib.h. */
void vdcm_client_bye(struct nbdc_tls *t)
{
    gnutls_bye(t->s, GNUTLS_SHUT_WR);
}

/* See crypto-lib.h. */
void vdcm_client_free(struct nbdc_tls *t)
{
    if (!t)
        return;
    if (t->s)
        gnutls_deinit(t->s);
    if (t->x509)
        gnutls_certificate_free_credentials(t->x509);
    if (t->psk)
        gnutls_psk_free_client_credentials(t->psk);
    free(t);
}
