/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD client transmission phase.  Any number of threads issue requests on
 * one connection: each registers its request (with a fresh cookie) in the
 * in-flight list, sends it whole under send_lock, and sleeps until the
 * reader thread has matched every reply chunk to it by cookie and filled
 * its buffer.
 *
 * Invariants:
 *  1. Only the reader thread completes requests, and it owns a request's
 *     buffer from registration until completion.
 *  2. Once c->dead is set no request is registered; the reader completes
 *     every registered request with the error as it exits.
 *  3. Any violation of the protocol by the server (unknown cookie, bad
 *     magic, a chunk outside its request, oversized lengths) is fatal to
 *     the connection: the stream cannot be trusted any more. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crypto/crypto-lib.h"
#include "nbd/client.h"
#include "nbd/nbd-proto.h"
#include "nbd/wire.h"
#include "util/checked.h"
#include "vdisk/vdisk.h"

/* Largest block-status payload read (descriptors are read in batches and
 * the ones not needed are dropped, so this bounds time, not memory). */
#define MAX_BS_PAYLOAD (64u << 20)
/* Largest error message kept from an error chunk. */
#define MAX_ERR_MSG NBD_MAX_STRING
/* Descriptors read per batch. */
#define BS_BATCH 64

struct nbdc_req {
    uint64_t cookie;
    uint16_t type;
    uint64_t off, len;
    uint8_t *buf;                /* NBD_CMD_READ: where data goes */
    uint64_t got;                /* bytes covered by data/hole chunks */
    bool bs_got;                 /* block status: a descriptor arrived */
    uint64_t bs_len;
    uint32_t bs_state;
    int err;                     /* first error: -errno */
    bool done;
    pthread_cond_t cond;
    struct nbdc_req *next;
};

/* Map an NBD error from the wire to an errno (unknown ones: EINVAL). */
int nbdc_errno(uint32_t e)
{
    switch (e) {
    case NBD_EPERM: return EPERM;
    case NBD_EIO: return EIO;
    case NBD_ENOMEM: return ENOMEM;
    case NBD_ENOSPC: return ENOSPC;
    case NBD_EOVERFLOW: return EOVERFLOW;
    case NBD_ENOTSUP: return ENOTSUP;
    case NBD_ESHUTDOWN: return ESHUTDOWN;
    default: return EINVAL;
    }
}

/* Mark the connection failed (first message wins) and wake the reader by
 * shutting the socket down.  Returns -err. */
static int conn_fail(struct nbdc_conn *c, int err, const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&c->lock);
    if (!c->dead) {
        c->dead = -err;
        va_start(ap, fmt);
        vsnprintf(c->dead_msg, sizeof(c->dead_msg), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&c->lock);
    shutdown(c->fd, SHUT_RDWR);
    return -err;
}

/* The in-flight request with this cookie, or NULL. */
static struct nbdc_req *find_req(struct nbdc_conn *c, uint64_t cookie)
{
    struct nbdc_req *r;

    pthread_mutex_lock(&c->lock);
    for (r = c->inflight; r && r->cookie != cookie; r = r->next)
        ;
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* Unlink and wake a finished request (lock held). */
static void complete_locked(struct nbdc_conn *c, struct nbdc_req *req)
{
    struct nbdc_req **p;

    for (p = &c->inflight; *p && *p != req; p = &(*p)->next)
        ;
    if (*p)
        *p = req->next;
    req->done = true;
    pthread_cond_signal(&req->cond);
}

/* Finish a request after its last reply. */
static int complete(struct nbdc_conn *c, struct nbdc_req *req)
{
    if (!req->err && req->type == NBD_CMD_READ && req->got != req->len)
        return conn_fail(c, EPROTO, "Server's reply to a read of %llu bytes at %llu "
                         "carried %llu bytes", (unsigned long long)req->len,
                         (unsigned long long)req->off, (unsigned long long)req->got);
    if (!req->err && req->type == NBD_CMD_BLOCK_STATUS && !req->bs_got)
        return conn_fail(c, EPROTO, "Server's reply to block status had no extents");
    pthread_mutex_lock(&c->lock);
    complete_locked(c, req);
    pthread_mutex_unlock(&c->lock);
    return 0;
}

/* Receive in the reader: an EOF or timeout becomes the connection error. */
static int rx(struct nbdc_conn *c, void *buf, size_t len)
{
    int r = nbdc_recv(c, buf, len, -1);

    if (r == -ECONNRESET)
        return conn_fail(c, ECONNRESET, "Server closed the connection");
    if (r == -ETIMEDOUT)
        return conn_fail(c, ETIMEDOUT, "Timed out waiting for a reply from the server");
    if (r < 0)
        return conn_fail(c, -r, "Failed to read from the server: %s", strerror(-r));
    return 0;
}

/* Drop len bytes in the reader. */
static int rx_discard(struct nbdc_conn *c, uint64_t len)
{
    char tmp[4096];

    while (len) {
        size_t l = (size_t)VD_MIN(len, (uint64_t)sizeof(tmp));
        int r = rx(c, tmp, l);
        if (r < 0)
            return r;
        len -= l;
    }
    return 0;
}

/* Is [off, off+len) inside the request?  Fails the connection if not. */
static int check_in_req(struct nbdc_conn *c, struct nbdc_req *req, uint64_t off,
                        uint64_t len)
{
    if (off < req->off || !range_ok(off - req->off, len, req->len) || !len)
        return conn_fail(c, EPROTO, "Server sent a chunk at offset %llu, length %llu "
                         "outside the read of %llu bytes at %llu",
                         (unsigned long long)off, (unsigned long long)len,
                         (unsigned long long)req->len, (unsigned long long)req->off);
    return 0;
}

/* NBD_REPLY_TYPE_OFFSET_DATA: data straight into the caller's buffer. */
static int chunk_data(struct nbdc_conn *c, struct nbdc_req *req, uint64_t plen)
{
    uint8_t b[8];
    uint64_t off;
    int r;

    if (plen < 8)
        return conn_fail(c, EPROTO, "Server sent a data chunk of %llu bytes",
                         (unsigned long long)plen);
    if ((r = rx(c, b, 8)) < 0)
        return r;
    off = vd_get_be64(b);
    if ((r = check_in_req(c, req, off, plen - 8)) < 0)
        return r;
    req->got += plen - 8;
    return rx(c, req->buf + (off - req->off), (size_t)(plen - 8));
}

/* NBD_REPLY_TYPE_OFFSET_HOLE: a range of zeroes. */
static int chunk_hole(struct nbdc_conn *c, struct nbdc_req *req, uint64_t plen)
{
    uint8_t b[16];
    uint64_t off, len;
    int r;

    if (plen != 12 && plen != 16)
        return conn_fail(c, EPROTO, "Server sent a hole chunk of %llu bytes",
                         (unsigned long long)plen);
    if ((r = rx(c, b, (size_t)plen)) < 0)
        return r;
    off = vd_get_be64(b);
    len = plen == 12 ? vd_get_be32(b + 8) : vd_get_be64(b + 8);
    if ((r = check_in_req(c, req, off, len)) < 0)
        return r;
    memset(req->buf + (off - req->off), 0, (size_t)len);
    req->got += len;
    return 0;
}

/* Fold one descriptor into the block-status answer: the leading run of
 * descriptors with the same state. */
static void bs_add(struct nbdc_req *req, uint64_t len, uint32_t state, bool *stop)
{
    state &= NBD_STATE_HOLE | NBD_STATE_ZERO;
    if (!req->bs_got) {
        req->bs_got = true;
        req->bs_state = state;
        req->bs_len = len;
    } else if (state == req->bs_state && !ADD_OVERFLOW(req->bs_len, len, &req->bs_len)) {
        return;
    } else {
        *stop = true;
    }
}

/* Read n descriptors of dsize (8 or 16) bytes. */
static int bs_descriptors(struct nbdc_conn *c, struct nbdc_req *req, uint64_t n,
                          size_t dsize)
{
    uint8_t b[BS_BATCH * 16];
    bool stop = req->bs_got;     /* a second chunk for the context: ignored */

    while (n) {
        size_t k = (size_t)VD_MIN(n, (uint64_t)BS_BATCH);
        int r = rx(c, b, k * dsize);
        if (r < 0)
            return r;
        for (size_t i = 0; i < k && !stop; i++) {
            const uint8_t *d = b + i * dsize;
            uint64_t len = dsize == 8 ? vd_get_be32(d) : vd_get_be64(d);
            uint32_t st = dsize == 8 ? vd_get_be32(d + 4) : (uint32_t)vd_get_be64(d + 8);
            if (!len)
                return conn_fail(c, EPROTO, "Server sent a block status extent of length 0");
            bs_add(req, len, st, &stop);
        }
        n -= k;
    }
    return 0;
}

/* NBD_REPLY_TYPE_BLOCK_STATUS(_EXT): descriptors of our context. */
static int chunk_block_status(struct nbdc_conn *c, struct nbdc_req *req, uint16_t type,
                              uint64_t plen)
{
    size_t hsize = c->info.extended ? 8 : 4, dsize = c->info.extended ? 16 : 8;
    uint8_t h[8];
    int r;

    if (req->type != NBD_CMD_BLOCK_STATUS ||
        type != (c->info.extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT : NBD_REPLY_TYPE_BLOCK_STATUS))
        return conn_fail(c, EPROTO, "Server sent a block status chunk to another command");
    if (plen < hsize + dsize || (plen - hsize) % dsize || plen > MAX_BS_PAYLOAD)
        return conn_fail(c, EPROTO, "Server sent a block status chunk of %llu bytes",
                         (unsigned long long)plen);
    if ((r = rx(c, h, hsize)) < 0)
        return r;
    if (c->info.extended && vd_get_be32(h + 4) != (plen - hsize) / dsize)
        return conn_fail(c, EPROTO, "Server's block status descriptor count is wrong");
    if (vd_get_be32(h) != c->info.alloc_id)
        return conn_fail(c, EPROTO, "Server sent block status for context %u that was "
                         "not negotiated", vd_get_be32(h));
    r = bs_descriptors(c, req, (plen - hsize) / dsize, dsize);
    if (r >= 0 && req->bs_got)
        req->bs_len = VD_MIN(req->bs_len, req->len);
    return r;
}

/* NBD_REPLY_TYPE_ERROR(_OFFSET): record the error, drop the message. */
static int chunk_error(struct nbdc_conn *c, struct nbdc_req *req, uint16_t type,
                       uint64_t plen)
{
    uint8_t b[8];
    uint32_t err;
    uint16_t mlen;
    int r;

    if (plen < 6 || plen > 6 + MAX_ERR_MSG + 8)
        return conn_fail(c, EPROTO, "Server sent an error chunk of %llu bytes",
                         (unsigned long long)plen);
    if ((r = rx(c, b, 6)) < 0)
        return r;
    err = vd_get_be32(b);
    mlen = vd_get_be16(b + 4);
    if (!err || (uint64_t)mlen + 6 + (type == NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0) != plen)
        return conn_fail(c, EPROTO, "Server sent a malformed error chunk");
    if ((r = rx_discard(c, mlen)) < 0)
        return r;
    if (type == NBD_REPLY_TYPE_ERROR_OFFSET) {
        if ((r = rx(c, b, 8)) < 0)
            return r;
        if (req->type == NBD_CMD_READ && (r = check_in_req(c, req, vd_get_be64(b), 1)) < 0)
            return r;
    }
    if (!req->err)
        req->err = -nbdc_errno(err);
    return 0;
}

/* Handle one structured (or extended) reply chunk. */
static int handle_chunk(struct nbdc_conn *c, uint16_t flags, uint16_t type,
                        uint64_t cookie, uint64_t plen)
{
    struct nbdc_req *req = find_req(c, cookie);
    int r;

    if (!req)
        return conn_fail(c, EPROTO, "Server sent a reply to unknown cookie %llu",
                         (unsigned long long)cookie);
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        r = plen ? conn_fail(c, EPROTO, "Server sent a none chunk with a payload") : 0;
        break;
    case NBD_REPLY_TYPE_OFFSET_DATA:
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (req->type != NBD_CMD_READ)
            return conn_fail(c, EPROTO, "Server sent read data to another command");
        r = type == NBD_REPLY_TYPE_OFFSET_DATA ? chunk_data(c, req, plen)
                                               : chunk_hole(c, req, plen);
        break;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
    case NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
        r = chunk_block_status(c, req, type, plen);
        break;
    case NBD_REPLY_TYPE_ERROR:
    case NBD_REPLY_TYPE_ERROR_OFFSET:
        r = chunk_error(c, req, type, plen);
        break;
    default:
        if (plen > MAX_ERR_MSG + 16)
            return conn_fail(c, EPROTO, "Server sent an unknown chunk type %u of %llu bytes",
                             type, (unsigned long long)plen);
        if (!req->err)
            req->err = -EIO;     /* unknown types, errors or not, fail the request */
        r = rx_discard(c, plen);
    }
    if (r >= 0 && (flags & NBD_REPLY_FLAG_DONE))
        r = complete(c, req);
    return r;
}

/* A simple reply (16 bytes, magic already read). */
static int handle_simple(struct nbdc_conn *c, const uint8_t *h)
{
    uint32_t err = vd_get_be32(h + 4);
    struct nbdc_req *req = find_req(c, vd_get_be64(h + 8));
    int r;

    if (c->info.extended)
        return conn_fail(c, EPROTO, "Server sent a simple reply after extended headers");
    if (!req)
        return conn_fail(c, EPROTO, "Server sent a reply to unknown cookie %llu",
                         (unsigned long long)vd_get_be64(h + 8));
    if (err)
        req->err = -nbdc_errno(err);
    if (req->type == NBD_CMD_READ && c->info.structured)
        return conn_fail(c, EPROTO, "Server sent a simple reply to a read");
    if (req->type == NBD_CMD_READ && !err) {
        if ((r = rx(c, req->buf, (size_t)req->len)) < 0)
            return r;
        req->got = req->len;
    }
    if (req->type == NBD_CMD_BLOCK_STATUS && !err)
        return conn_fail(c, EPROTO, "Server sent a simple reply to block status");
    return complete(c, req);
}

/* Read and dispatch one reply message. */
static int read_reply(struct nbdc_conn *c)
{
    uint8_t h[32];
    uint32_t magic;
    int r;

    if ((r = rx(c, h, 4)) < 0)
        return r;
    magic = vd_get_be32(h);
    if (magic == NBD_SIMPLE_REPLY_MAGIC) {
        if ((r = rx(c, h + 4, 12)) < 0)
            return r;
        return handle_simple(c, h);
    }
    if (magic == NBD_STRUCTURED_REPLY_MAGIC && c->info.structured && !c->info.extended) {
        if ((r = rx(c, h + 4, 16)) < 0)
            return r;
        return handle_chunk(c, vd_get_be16(h + 4), vd_get_be16(h + 6), vd_get_be64(h + 8),
                            vd_get_be32(h + 16));
    }
    if (magic == NBD_EXTENDED_REPLY_MAGIC && c->info.extended) {
        if ((r = rx(c, h + 4, 28)) < 0)
            return r;
        return handle_chunk(c, vd_get_be16(h + 4), vd_get_be16(h + 6), vd_get_be64(h + 8),
                            vd_get_be64(h + 24));
    }
    return conn_fail(c, EPROTO, "Server sent an unexpected reply magic 0x%08x", magic);
}

/* The reader thread: dispatch replies until the connection fails, then
 * complete everything still in flight with the connection's error. */
static void *reader_main(void *arg)
{
    struct nbdc_conn *c = arg;

    while (read_reply(c) >= 0)
        ;
    pthread_mutex_lock(&c->lock);
    while (c->inflight) {
        if (!c->inflight->err)
            c->inflight->err = c->dead;
        complete_locked(c, c->inflight);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Start the reader thread. */
int nbdc_start_reader(struct nbdc_conn *c)
{
    int e;

    atomic_store(&c->last_rx_ms, nbdc_now_ms());
    if ((e = pthread_create(&c->reader, NULL, reader_main, c)) != 0)
        return vd_error(e, "Cannot start the NBD reader thread: %s", strerror(e));
    c->reader_started = true;
    return 0;
}

/* Encode a request header; returns its size. */
static size_t encode_request(const struct nbdc_conn *c, uint8_t *h, uint16_t flags,
                             uint16_t type, uint64_t cookie, uint64_t off, uint64_t len)
{
    /* With extended headers a write's length is its payload length, which
     * the spec requires the client to flag. */
    if (c->info.extended && type == NBD_CMD_WRITE)
        flags |= NBD_CMD_FLAG_PAYLOAD_LEN;
    vd_put_be32(h, c->info.extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC);
    vd_put_be16(h + 4, flags);
    vd_put_be16(h + 6, type);
    vd_put_be64(h + 8, cookie);
    vd_put_be64(h + 16, off);
    if (c->info.extended) {
        vd_put_be64(h + 24, len);
        return 32;
    }
    vd_put_be32(h + 24, (uint32_t)len);
    return 28;
}

/* Register req, send it (with payload), wait for the reader to finish it. */
static int execute(struct nbdc_conn *c, struct nbdc_req *req, uint16_t flags,
                   const void *payload)
{
    uint8_t h[32];
    size_t hl;
    int r;

    pthread_cond_init(&req->cond, NULL);
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        pthread_mutex_unlock(&c->lock);
        pthread_cond_destroy(&req->cond);
        return vd_error(-c->dead, "%s", c->dead_msg);
    }
    req->cookie = c->next_cookie++;
    req->next = c->inflight;
    c->inflight = req;
    atomic_fetch_add(&c->nreqs, 1);
    pthread_mutex_unlock(&c->lock);

    hl = encode_request(c, h, flags, req->type, req->cookie, req->off, req->len);
    pthread_mutex_lock(&c->send_lock);
    r = nbdc_send2(c, h, hl, payload, payload ? (size_t)req->len : 0, -1);
    pthread_mutex_unlock(&c->send_lock);
    if (r < 0)
        conn_fail(c, -r, "Failed to send a request to the server: %s", strerror(-r));

    pthread_mutex_lock(&c->lock);
    while (!req->done)
        pthread_cond_wait(&req->cond, &c->lock);
    r = req->err;
    pthread_mutex_unlock(&c->lock);
    atomic_fetch_sub(&c->nreqs, 1);
    pthread_cond_destroy(&req->cond);
    if (r < 0 && c->dead && r == c->dead)
        return vd_error(-r, "%s", c->dead_msg);
    return r < 0 ? vd_error(-r, "%s", strerror(-r)) : 0;
}

/* NBD_CMD_READ of len bytes at off into buf. */
int nbdc_read(struct nbdc_conn *c, uint64_t off, uint32_t len, void *buf)
{
    struct nbdc_req req = { .type = NBD_CMD_READ, .off = off, .len = len, .buf = buf };
    return execute(c, &req, 0, NULL);
}

/* NBD_CMD_WRITE of len bytes from buf at off. */
int nbdc_write(struct nbdc_conn *c, uint64_t off, uint32_t len, const void *buf,
               uint16_t flags)
{
    struct nbdc_req req = { .type = NBD_CMD_WRITE, .off = off, .len = len };
    return execute(c, &req, flags, buf);
}

/* NBD_CMD_WRITE_ZEROES. */
int nbdc_zero(struct nbdc_conn *c, uint64_t off, uint32_t len, uint16_t flags)
{
    struct nbdc_req req = { .type = NBD_CMD_WRITE_ZEROES, .off = off, .len = len };
    return execute(c, &req, flags, NULL);
}

/* NBD_CMD_TRIM. */
int nbdc_trim(struct nbdc_conn *c, uint64_t off, uint32_t len, uint16_t flags)
{
    struct nbdc_req req = { .type = NBD_CMD_TRIM, .off = off, .len = len };
    return execute(c, &req, flags, NULL);
}

/* NBD_CMD_FLUSH. */
int nbdc_flush(struct nbdc_conn *c)
{
    struct nbdc_req req = { .type = NBD_CMD_FLUSH };
    return execute(c, &req, 0, NULL);
}

/* NBD_CMD_BLOCK_STATUS for base:allocation. */
int nbdc_block_status(struct nbdc_conn *c, uint64_t off, uint32_t len, uint64_t *pnum,
                      uint32_t *state)
{
    struct nbdc_req req = { .type = NBD_CMD_BLOCK_STATUS, .off = off, .len = len };
    int r = execute(c, &req, 0, NULL);

    if (r < 0)
        return r;
    *pnum = req.bs_len;
    *state = req.bs_state;
    return 0;
}

/* Connect, handshake and start the reader. */
int nbdc_connect(const struct nbdc_config *cfg, struct nbdc_conn **out)
{
    struct nbdc_conn *c = calloc(1, sizeof(*c));
    int r;

    *out = NULL;
    if (!c)
        return vd_error(ENOMEM, "out of memory");
    c->fd = -1;
    c->io_timeout_ms = cfg->io_timeout_ms;
    c->cancel = cfg->cancel;
    c->next_cookie = 1;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    if ((r = nbdc_socket_connect(cfg, c)) < 0 || (r = nbdc_handshake(cfg, c)) < 0 ||
        (r = nbdc_start_reader(c)) < 0) {
        nbdc_close(c);
        return r;
    }
    *out = c;
    return 0;
}

/* Soft disconnect: NBD_CMD_DISC, close TLS, stop the reader, free. */
void nbdc_close(struct nbdc_conn *c)
{
    uint8_t h[32];
    size_t hl;

    if (!c)
        return;
    if (c->reader_started && !c->dead) {
        hl = encode_request(c, h, 0, NBD_CMD_DISC, 0, 0, 0);
        pthread_mutex_lock(&c->send_lock);
        if (nbdc_send(c, h, hl, nbdc_now_ms() + 1000) >= 0 && c->tls)
            vd_crypto_lib()->client_bye(c->tls);
        pthread_mutex_unlock(&c->send_lock);
    }
    atomic_store(&c->closing, true);
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
    if (c->reader_started)
        pthread_join(c->reader, NULL);
    if (c->tls)
        vd_crypto_lib()->client_free(c->tls);
    if (c->fd >= 0)
        close(c->fd);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->send_lock);
    free(c);
}
