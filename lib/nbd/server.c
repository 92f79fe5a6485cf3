/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD server connections: their life from accept to close, the transport
 * under them (plain socket or TLS, with the handshake deadline), and the
 * transmission flags of an export. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "nbd/server-int.h"
#include "nbd/tls.h"
#include "nbd/wire.h"

/* See server.h. */
void vd_nbd_server_init(struct vd_nbd_server *srv)
{
    memset(srv, 0, sizeof(*srv));
    pthread_mutex_init(&srv->lock, NULL);
    srv->workers = 16;
    srv->handshake_limit_ms = 10000;
    atomic_store(&srv->shutdown, false);
}

/* See server.h. */
void vd_nbd_server_destroy(struct vd_nbd_server *srv)
{
    pthread_mutex_destroy(&srv->lock);
}

/* See server.h: stop reading from every client; replies still go out. */
void vd_nbd_server_shutdown(struct vd_nbd_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    atomic_store(&srv->shutdown, true);
    for (struct vd_nbd_conn *c = srv->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RD);
    pthread_mutex_unlock(&srv->lock);
}

/* Add c to the server's list; false when the server is shutting down. */
static bool conn_register(struct vd_nbd_conn *c)
{
    struct vd_nbd_server *srv = c->srv;
    bool ok;

    pthread_mutex_lock(&srv->lock);
    ok = !atomic_load(&srv->shutdown);
    if (ok) {
        c->next = srv->conns;
        srv->conns = c;
    }
    pthread_mutex_unlock(&srv->lock);
    return ok;
}

/* Remove c from the server's list. */
static void conn_unregister(struct vd_nbd_conn *c)
{
    struct vd_nbd_server *srv = c->srv;

    pthread_mutex_lock(&srv->lock);
    for (struct vd_nbd_conn **p = &srv->conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&srv->lock);
}

/* A new connection on fd. */
static struct vd_nbd_conn *conn_new(struct vd_nbd_server *srv, int fd)
{
    struct vd_nbd_conn *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->srv = srv;
    c->fd = fd;
    c->deadline_ms = srv->handshake_limit_ms > 0
                   ? vd_wire_now_ms() + srv->handshake_limit_ms : -1;
    pthread_mutex_init(&c->send_lock, NULL);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    atomic_store(&c->dead, false);
    return c;
}

/* End TLS, close the socket and free the connection. */
static void conn_free(struct vd_nbd_conn *c)
{
    if (c->tls)
        vd_nbd_tls_end(c->tls);
    close(c->fd);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->send_lock);
    free(c->meta_export);
    free(c);
}

/* See server.h. */
int vd_nbd_server_serve(struct vd_nbd_server *srv, int fd)
{
    return vd_nbd_server_serve_ex(srv, fd, NULL);
}

/* See server.h. */
int vd_nbd_server_serve_ex(struct vd_nbd_server *srv, int fd, bool *transmitted)
{
    struct vd_nbd_conn *c = conn_new(srv, fd);
    int r;

    if (transmitted)
        *transmitted = false;
    if (!c) {
        close(fd);
        return vd_error(ENOMEM, "out of memory");
    }
    if (!conn_register(c)) {
        conn_free(c);
        return vd_error(ESHUTDOWN, "server is shutting down");
    }
    r = nbd_negotiate(c);
    if (r == 0 && c->exp) {
        c->deadline_ms = -1;
        if (transmitted)
            *transmitted = true;
        r = nbd_transmission(c);
    }
    conn_unregister(c);
    conn_free(c);
    return r;
}

/* See server.h. */
int vd_nbd_server_serve_kernel(struct vd_nbd_server *srv, int fd,
                               const struct vd_nbd_export *exp)
{
    struct vd_nbd_conn *c = conn_new(srv, fd);
    int r;

    if (!c) {
        close(fd);
        return vd_error(ENOMEM, "out of memory");
    }
    c->deadline_ms = -1;
    c->exp = exp;
    if (!conn_register(c)) {
        conn_free(c);
        return vd_error(ESHUTDOWN, "server is shutting down");
    }
    r = nbd_transmission(c);
    conn_unregister(c);
    conn_free(c);
    return r;
}

/* Wait for input within the handshake deadline (TLS may have it buffered). */
static int conn_wait(struct vd_nbd_conn *c)
{
    if (c->deadline_ms < 0 || (c->tls && vd_nbd_tls_pending(c->tls)))
        return 0;
    return vd_wire_wait_readable(c->fd, c->deadline_ms);
}

/* One read() from fd that is not a socket (a pipe in tests). */
static ssize_t conn_read_some(int fd, void *buf, size_t len)
{
    ssize_t n;

    do {
        n = read(fd, buf, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    return n == 0 ? -ECONNRESET : n;
}

/* Read exactly len bytes. */
int conn_read(struct vd_nbd_conn *c, void *buf, size_t len)
{
    char *p = buf;
    int r;

    if (!c->tls && c->deadline_ms < 0)
        return vd_wire_read(c->fd, buf, len);
    while (len) {
        ssize_t n;
        if ((r = conn_wait(c)) < 0)
            return r;
        if (c->tls) {
            n = vd_nbd_tls_recv(c->tls, p, len);
        } else {
            n = read(c->fd, p, len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                n = -errno;
        }
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -ECONNRESET;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* See server-int.h. */
ssize_t conn_recv(struct vd_nbd_conn *c, void *buf, size_t len, bool nowait)
{
    ssize_t n;

    if (c->tls) {
        if (nowait && !vd_nbd_tls_pending(c->tls))
            return 0;
        n = vd_nbd_tls_recv(c->tls, buf, len);
        return n == 0 ? -ECONNRESET : n;
    }
    do {
        n = recv(c->fd, buf, len, nowait ? MSG_DONTWAIT : 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno == ENOTSOCK)
        return nowait ? 0 : conn_read_some(c->fd, buf, len);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    return n == 0 ? -ECONNRESET : n;
}

/* Write exactly len bytes. */
int conn_write(struct vd_nbd_conn *c, const void *buf, size_t len)
{
    if (c->tls)
        return vd_nbd_tls_send(c->tls, buf, len);
    return vd_wire_write(c->fd, buf, len);
}

/* writev() both pieces fully. */
static int writev_all(int fd, const void *h, size_t hlen, const void *d, size_t dlen)
{
    struct iovec iov[2] = { { (void *)h, hlen }, { (void *)d, dlen } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };

    while (iov[0].iov_len + iov[1].iov_len) {
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        for (int i = 0; i < 2 && n > 0; i++) {
            size_t k = (size_t)n < iov[i].iov_len ? (size_t)n : iov[i].iov_len;
            iov[i].iov_base = (char *)iov[i].iov_base + k;
            iov[i].iov_len -= k;
            n -= (ssize_t)k;
        }
        if (iov[0].iov_len == 0) {
            msg.msg_iov = &iov[1];
            msg.msg_iovlen = 1;
        }
    }
    return 0;
}

/* See server-int.h. */
int conn_write2(struct vd_nbd_conn *c, const void *h, size_t hlen,
                const void *d, size_t dlen)
{
    int r;

    if (!dlen)
        return conn_write(c, h, hlen);
    if (!c->tls) {
        r = writev_all(c->fd, h, hlen, d, dlen);
        return r == -ENOTSOCK ? (conn_write(c, h, hlen) ?: conn_write(c, d, dlen)) : r;
    }
    vd_nbd_tls_cork(c->tls);
    r = vd_nbd_tls_send(c->tls, h, hlen);
    if (r == 0)
        r = vd_nbd_tls_send(c->tls, d, dlen);
    if (vd_nbd_tls_uncork(c->tls) < 0 && r == 0)
        r = -EIO;
    return r;
}

/* Read and drop len bytes. */
int conn_discard(struct vd_nbd_conn *c, uint64_t len)
{
    char buf[16384];

    while (len) {
        size_t n = len < sizeof(buf) ? (size_t)len : sizeof(buf);
        int r = conn_read(c, buf, n);
        if (r < 0)
            return r;
        len -= n;
    }
    return 0;
}

/* See server-int.h. */
int conn_start_tls(struct vd_nbd_conn *c)
{
    return vd_nbd_tls_start(c->srv->tls, c->fd, NULL, c->deadline_ms, &c->tls);
}

/* See server.h: the flags qemu-nbd advertises for the same export. */
uint16_t vd_nbd_export_flags(const struct vd_nbd_export *exp)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_SEND_DF | NBD_FLAG_SEND_CACHE;

    if (exp->read_only)
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
             NBD_FLAG_SEND_FAST_ZERO;
    if (exp->multi_conn)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
}
