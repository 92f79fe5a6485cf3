/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD client transport: connect a TCP or Unix socket (or take a passed
 * one), run TLS over it (client-tls.c, in the module vdisk-crypto.so), and
 * move exact byte counts with deadlines.
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

#include "crypto/crypto-lib.h"
#include "nbd/client.h"
#include "vdisk/object.h"
#include "vdisk/vdisk.h"

/* The tick at which blocked socket calls come back to check deadlines. */
#define TICK_MS 1000

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

    if (c->tls)
        return vd_crypto_lib()->client_recv(c->tls, buf, len);
    r = recv(c->fd, buf, len, 0);
    if (r < 0)
        return errno == EWOULDBLOCK || errno == EINTR ? -EAGAIN : -errno;
    return r;
}

/* One send call: bytes, -EAGAIN on a tick, -errno. */
static ssize_t send_some(struct nbdc_conn *c, const void *buf, size_t len)
{
    ssize_t r;

    if (c->tls)
        return vd_crypto_lib()->client_send(c->tls, buf, len);
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
        const struct vd_crypto_lib *l = vd_crypto_lib();
        l->client_cork(c->tls);
        if ((r = nbdc_send(c, hdr, hlen, deadline_ms)) < 0)
            return r;
        if ((r = nbdc_send(c, payload, plen, deadline_ms)) < 0)
            return r;
        while ((r = l->client_uncork(c->tls)) < 0) {
            if (r != -EAGAIN || atomic_load(&c->closing))
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

/* Start TLS on c->fd (the session's code is in the module). */
int nbdc_tls_start(const struct nbdc_config *cfg, struct nbdc_conn *c, int64_t deadline_ms)
{
    const struct vd_crypto_lib *l = vd_crypto_lib();

    return l ? l->client_start(cfg, c->fd, deadline_ms, &c->tls) : -ELIBACC;
}
