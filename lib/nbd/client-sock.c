/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD client transport: connect a TCP or Unix socket (or take a passed
 * one), run TLS over it with gnutls (X.509 or PSK credentials from an
 * --object or a directory), and move exact byte counts with deadlines.
 * Sockets carry a one-second receive/send timeout so that no call blocks
 * longer than that: the loops here decide whether to keep waiting. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/x509.h>

#include "nbd/client.h"
#include "vdisk/object.h"
#include "vdisk/vdisk.h"

/* The tick at which blocked socket calls come back to check deadlines. */
#define TICK_MS 1000
/* Largest keys.psk file read. */
#define MAX_PSK_FILE (1u << 20)

/* CLOCK_MONOTONIC in milliseconds. */
int64_t nbdc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Should a blocked transfer give up now?  -ETIMEDOUT / -ESHUTDOWN or 0. */
static int check_wait(struct nbdc_conn *c, int64_t deadline_ms)
{
    int64_t now = nbdc_now_ms();

    if (atomic_load(&c->closing) || (c->cancel && atomic_load(c->cancel)))
        return -ESHUTDOWN;
    if (deadline_ms >= 0 && now >= deadline_ms)
        return -ETIMEDOUT;
    if (deadline_ms < 0 && c->io_timeout_ms > 0 && atomic_load(&c->nreqs) > 0 &&
        now - atomic_load(&c->last_rx_ms) > c->io_timeout_ms)
        return -ETIMEDOUT;
    return 0;
}

/* One receive call: bytes, 0 on EOF, -EAGAIN on a tick, -errno. */
static ssize_t recv_some(struct nbdc_conn *c, void *buf, size_t len)
{
    ssize_t r;

    if (c->tls) {
        r = gnutls_record_recv(c->tls, buf, len);
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
            return -EAGAIN;
        if (r == GNUTLS_E_PREMATURE_TERMINATION)
            return 0;
        return r < 0 ? -EIO : r;
    }
    r = recv(c->fd, buf, len, 0);
    if (r < 0)
        return errno == EWOULDBLOCK || errno == EINTR ? -EAGAIN : -errno;
    return r;
}

/* One send call: bytes, -EAGAIN on a tick, -errno. */
static ssize_t send_some(struct nbdc_conn *c, const void *buf, size_t len)
{
    ssize_t r;

    if (c->tls) {
        r = gnutls_record_send(c->tls, buf, len);
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
            return -EAGAIN;
        return r < 0 ? -EIO : r;
    }
    r = send(c->fd, buf, len, MSG_NOSIGNAL | (c->more ? MSG_MORE : 0));
    if (r < 0)
        return errno == EWOULDBLOCK || errno == EINTR ? -EAGAIN : -errno;
    return r;
}

/* Receive exactly len bytes: 0, -ECONNRESET on EOF, -ETIMEDOUT, -errno. */
int nbdc_recv(struct nbdc_conn *c, void *buf, size_t len, int64_t deadline_ms)
{
    while (len) {
        ssize_t r = recv_some(c, buf, len);
        if (r == -EAGAIN) {
            int e = check_wait(c, deadline_ms);
            if (e < 0)
                return e;
            continue;
        }
        if (r == 0)
            return -ECONNRESET;
        if (r < 0)
            return (int)r;
        atomic_store(&c->last_rx_ms, nbdc_now_ms());
        buf = (char *)buf + r;
        len -= (size_t)r;
    }
    return 0;
}

/* Send exactly len bytes: 0, -ETIMEDOUT or -errno. */
int nbdc_send(struct nbdc_conn *c, const void *buf, size_t len, int64_t deadline_ms)
{
    int64_t start = nbdc_now_ms();

    while (len) {
        ssize_t r = send_some(c, buf, len);
        if (r == -EAGAIN) {
            if (atomic_load(&c->closing))
                return -ESHUTDOWN;
            if ((deadline_ms >= 0 && nbdc_now_ms() >= deadline_ms) ||
                (deadline_ms < 0 && c->io_timeout_ms > 0 &&
                 nbdc_now_ms() - start > c->io_timeout_ms))
                return -ETIMEDOUT;
            continue;
        }
        if (r <= 0)
            return r < 0 ? (int)r : -EIO;
        buf = (const char *)buf + r;
        len -= (size_t)r;
    }
    return 0;
}

/* Send a request header and its payload as one message: the header is
 * held back (MSG_MORE / TLS cork) until the payload follows. */
int nbdc_send2(struct nbdc_conn *c, const void *hdr, size_t hlen, const void *payload,
               size_t plen, int64_t deadline_ms)
{
    int r;

    if (!plen)
        return nbdc_send(c, hdr, hlen, deadline_ms);
    if (c->tls) {
        gnutls_record_cork(c->tls);
        if ((r = nbdc_send(c, hdr, hlen, deadline_ms)) < 0)
            return r;
        if ((r = nbdc_send(c, payload, plen, deadline_ms)) < 0)
            return r;
        while ((r = gnutls_record_uncork(c->tls, GNUTLS_RECORD_WAIT)) < 0) {
            if ((r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) || atomic_load(&c->closing))
                return -EIO;
        }
        return 0;
    }
    c->more = true;
    r = nbdc_send(c, hdr, hlen, deadline_ms);
    c->more = false;
    return r < 0 ? r : nbdc_send(c, payload, plen, deadline_ms);
}

/* Receive and drop len bytes. */
int nbdc_recv_discard(struct nbdc_conn *c, uint64_t len, int64_t deadline_ms)
{
    char tmp[4096];

    while (len) {
        size_t l = len < sizeof(tmp) ? (size_t)len : sizeof(tmp);
        int r = nbdc_recv(c, tmp, l, deadline_ms);
        if (r < 0)
            return r;
        len -= l;
    }
    return 0;
}

/* Socket options of every connection: timeouts as ticks, no Nagle. */
static void set_sock_opts(int fd, bool tcp)
{
    struct timeval tv = { .tv_sec = TICK_MS / 1000, .tv_usec = (TICK_MS % 1000) * 1000 };
    int one = 1;

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (tcp) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    }
}

/* Connect a Unix socket at path. */
static int connect_unix(const char *path, int *out)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path))
        return vd_error(ENAMETOOLONG, "UNIX socket path '%s' is too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vd_error(errno, "Failed to create socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return vd_error(e, "Failed to connect to '%s': %s", path, strerror(e));
    }
    *out = fd;
    return 0;
}

/* Connect to host:port, trying each resolved address. */
static int connect_inet(const char *host, const char *port, int *out)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *res, *ai;
    int e = ECONNREFUSED, g;

    if ((g = getaddrinfo(host, port, &hints, &res)) != 0)
        return vd_error(ENOENT, "address resolution failed for %s:%s: %s", host, port,
                        gai_strerror(g));
    for (ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            freeaddrinfo(res);
            *out = fd;
            return 0;
        }
        e = errno;
        close(fd);
    }
    freeaddrinfo(res);
    return vd_error(e, "Failed to connect to '%s:%s': %s", host, port, strerror(e));
}

/* Open the socket named by cfg. */
int nbdc_socket_connect(const struct nbdc_config *cfg, struct nbdc_conn *c)
{
    int r = 0;

    switch (cfg->type) {
    case NBDC_UNIX:
        r = connect_unix(cfg->path, &c->fd);
        break;
    case NBDC_INET:
        r = connect_inet(cfg->host, cfg->port, &c->fd);
        break;
    case NBDC_FD:
        if ((c->fd = dup(cfg->fd)) < 0)
            r = vd_error(errno, "Cannot use file descriptor %d: %s", cfg->fd, strerror(errno));
        break;
    }
    if (r >= 0)
        set_sock_opts(c->fd, cfg->type == NBDC_INET);
    return r;
}

/* ---- TLS ---- */

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
static int load_x509(struct nbdc_conn *c, const char *dir, bool verify)
{
    char *ca = NULL, *cert = NULL, *key = NULL;
    int g, r = 0;

    if (gnutls_certificate_allocate_credentials(&c->x509) < 0)
        return vd_error(ENOMEM, "Cannot allocate credentials");
    if (!dir) {
        if (gnutls_certificate_set_x509_system_trust(c->x509) < 0 && verify)
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
        g = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
        if (g < 0) {
            r = vd_error(EINVAL, "Cannot load CA certificate '%s': %s", ca, gnutls_strerror(g));
            goto out;
        }
    } else if (verify) {
        r = vd_error(ENOENT, "Unable to access credentials %s: %s", ca, strerror(ENOENT));
        goto out;
    }
    if (cred_exists(dir, "client-cert.pem") && cred_exists(dir, "client-key.pem")) {
        g = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
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
static int load_psk(struct nbdc_conn *c, const char *file, const char *user)
{
    gnutls_datum_t key;
    char *hex;
    int g, r;

    if ((r = find_psk_key(file, user, &hex)) < 0)
        return r;
    if (gnutls_psk_allocate_client_credentials(&c->psk) < 0) {
        free(hex);
        return vd_error(ENOMEM, "Cannot allocate credentials");
    }
    key.data = (unsigned char *)hex;
    key.size = (unsigned)strlen(hex);
    g = gnutls_psk_set_client_credentials(c->psk, user, &key, GNUTLS_PSK_KEY_HEX);
    free(hex);
    if (g < 0)
        return vd_error(EINVAL, "Cannot set PSK client credentials: %s", gnutls_strerror(g));
    return 0;
}

/* Load the credentials cfg names: an --object, or nbds:// query files. */
static int load_creds(const struct nbdc_config *cfg, struct nbdc_conn *c, bool *verify)
{
    const vd_opts *o;
    const char *type, *dir, *ep, *user;
    char *file;
    int r;

    *verify = cfg->tls_verify;
    if (!cfg->tls_creds) {
        if (cfg->tls_psk_file)
            return load_psk(c, cfg->tls_psk_file, cfg->tls_username ? cfg->tls_username : "qemu");
        return load_x509(c, cfg->tls_certs_dir, *verify);
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
        return load_x509(c, dir, *verify);
    if (strcmp(type, "tls-creds-psk"))
        return vd_error(EINVAL, "TLS credentials '%s' of type '%s' are not supported",
                        cfg->tls_creds, type);
    user = vd_opts_get(o, "username");
    if (!dir || !(file = path_join(dir, "keys.psk")))
        return vd_error(EINVAL, "TLS credentials '%s' have no directory", cfg->tls_creds);
    r = load_psk(c, file, user ? user : "qemu");
    free(file);
    return r;
}

/* Set up the gnutls session on c->fd with the loaded credentials. */
static int setup_session(const struct nbdc_config *cfg, struct nbdc_conn *c)
{
    const char *prio = c->psk ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : "NORMAL";
    const char *host = cfg->tls_hostname ? cfg->tls_hostname :
                       cfg->type == NBDC_INET ? cfg->host : NULL;
    int g;

    if (gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_NO_SIGNAL) < 0)
        return vd_error(ENOMEM, "Cannot initialize TLS session");
    if ((g = gnutls_priority_set_direct(c->tls, prio, NULL)) < 0)
        return vd_error(EINVAL, "Cannot set TLS priority: %s", gnutls_strerror(g));
    if (c->psk)
        g = gnutls_credentials_set(c->tls, GNUTLS_CRD_PSK, c->psk);
    else
        g = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, c->x509);
    if (g < 0)
        return vd_error(EINVAL, "Cannot set TLS credentials: %s", gnutls_strerror(g));
    if (host && !c->psk)
        gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, host, strlen(host));
    gnutls_transport_set_int(c->tls, c->fd);
    return 0;
}

/* Check the server's certificate against the CA and the host name. */
static int verify_peer(const struct nbdc_config *cfg, struct nbdc_conn *c)
{
    const char *host = cfg->tls_hostname ? cfg->tls_hostname :
                       cfg->type == NBDC_INET ? cfg->host : NULL;
    unsigned status = 0;
    gnutls_datum_t txt;
    int g;

    if (c->psk)
        return 0;
    g = gnutls_certificate_verify_peers3(c->tls, host, &status);
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

/* Start TLS on c->fd: credentials, handshake, peer verification. */
int nbdc_tls_start(const struct nbdc_config *cfg, struct nbdc_conn *c, int64_t deadline_ms)
{
    bool verify;
    int g, r;

    if ((r = load_creds(cfg, c, &verify)) < 0 || (r = setup_session(cfg, c)) < 0)
        return r;
    do {
        g = gnutls_handshake(c->tls);
        if (g < 0 && !gnutls_error_is_fatal(g) && nbdc_now_ms() >= deadline_ms)
            return vd_error(ETIMEDOUT, "TLS handshake timed out");
    } while (g < 0 && !gnutls_error_is_fatal(g));
    if (g < 0)
        return vd_error(EIO, "TLS handshake failed: %s", gnutls_strerror(g));
    return verify ? verify_peer(cfg, c) : 0;
}
