/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD server transmission phase: the connection's reader thread and its
 * workers.
 *
 * The reader reads requests ahead into a buffer (many per recv): compact
 * 28-byte headers, or 32-byte extended ones (64-bit lengths, payloads
 * flagged by NBD_CMD_FLAG_PAYLOAD_LEN) once extended headers were
 * negotiated.  It checks each request completely (nbd_validate) and then
 * either
 *   - runs it itself, appending the reply to a batch that goes out in one
 *     write once no complete request is left to read (or the batch is
 *     large): cheap READ/WRITE/BLOCK_STATUS while the export answers fast,
 *     with no thread handoff, no copy of write payloads out of the read
 *     buffer and no allocation per request; or
 *   - hands it to a worker thread (FLUSH, TRIM, WRITE_ZEROES, CACHE, FUA,
 *     large requests, and everything while the export is slow), which
 *     replies on its own.
 * "Slow" is a running average of the cost of READ/WRITE requests, scored
 * against a budget of 20 us plus 1 ns per byte: a page-cache hit is far
 * under it, a disk or network round trip over it, so requests that block
 * run in parallel on the workers and the rest stay on the reader.
 *
 * Invariants: replies are written whole (every chunk of a batch or of a
 * worker's reply in one write under send_lock), so chunks never
 * interleave; the reader sends its batch before it waits for input or for
 * room, so no reply waits on the client; workers hold at most
 * CONN_MAX_INFLIGHT requests and CONN_MAX_INFLIGHT_BYTES of payload, above
 * which the reader stops reading. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "nbd/server-int.h"
#include "nbd/wire.h"
#include "util/checked.h"

/* Read-ahead buffer: a write payload up to IN_PAYLOAD_MAX is read into it
 * whole and written from there. */
#define IN_PAYLOAD_MAX (512u << 10)
#define IN_BUF_SIZE (IN_PAYLOAD_MAX + sizeof(struct nbd_extended_request))
/* The reader's batch of replies is sent once it holds this much. */
#define OUT_FLUSH (256u << 10)
/* Requests larger than this always go to a worker. */
#define INLINE_MAX (1u << 20)
/* Cost score of a request that took exactly its budget. */
#define SLOW_SCORE 1024
/* Budget: SLOW_BASE_NS plus one nanosecond per byte. */
#define SLOW_BASE_NS 20000
/* A worker request keeps buffers up to this for the next one. */
#define SPARE_KEEP (4u << 20)
/* Success rate of VD_REQ_NOWAIT reads: full scale, and the level under
 * which a slow export's READs go straight to the workers, with one in
 * NOWAIT_PROBE still tried to notice when the cache warms up. */
#define NOWAIT_SCALE 1024
#define NOWAIT_LOW (NOWAIT_SCALE / 2)
#define NOWAIT_PROBE 16

/* Monotonic nanoseconds. */
static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Fold the cost of a READ/WRITE of len bytes that took ns into the
 * connection's average (1/8 weight; races between threads only lose a
 * sample).  A sample counts at most 4 budgets, so one request that lost
 * the CPU for a while does not make the export look slow; three that
 * really blocked do. */
static void note_cost(struct vd_nbd_conn *c, uint64_t len, uint64_t ns)
{
    uint64_t score = ns * SLOW_SCORE / (SLOW_BASE_NS + len);
    unsigned old = atomic_load_explicit(&c->slow, memory_order_relaxed);
    int64_t avg = (int64_t)old + ((int64_t)VD_MIN(score, 4u * SLOW_SCORE) - (int64_t)old) / 8;

    atomic_store_explicit(&c->slow, (unsigned)avg, memory_order_relaxed);
}

/* A send failed: the connection is done; wake the reader. */
static int conn_fail(struct vd_nbd_conn *c, int r)
{
    atomic_store(&c->dead, true);
    shutdown(c->fd, SHUT_RDWR);
    return r;
}

/* Send o whole under the send lock and empty it. */
static int send_out(struct vd_nbd_conn *c, struct rbuf *o)
{
    int r = 0;

    if (!o->len)
        return 0;
    if (atomic_load(&c->dead))
        r = -EPIPE;
    else {
        pthread_mutex_lock(&c->send_lock);
        r = conn_write(c, o->p, o->len);
        pthread_mutex_unlock(&c->send_lock);
    }
    o->len = 0;
    return r < 0 ? conn_fail(c, r) : 0;
}

/* Unconsumed bytes in the read-ahead buffer. */
static size_t in_avail(const struct vd_nbd_conn *c)
{
    return c->in_end - c->in_start;
}

/* Read more into the buffer (which has room): what is there already, or,
 * after sending the batch, whatever comes next. */
static int in_fill(struct vd_nbd_conn *c)
{
    ssize_t n = conn_recv(c, c->in + c->in_end, IN_BUF_SIZE - c->in_end, true);
    int r;

    if (n == 0) {
        if ((r = send_out(c, &c->out)) < 0)
            return r;
        n = conn_recv(c, c->in + c->in_end, IN_BUF_SIZE - c->in_end, false);
    }
    if (n < 0)
        return (int)n;
    c->in_end += (size_t)n;
    return 0;
}

/* Have the next n (<= IN_BUF_SIZE) bytes contiguous in the buffer. */
static int in_need(struct vd_nbd_conn *c, size_t n)
{
    int r;

    if (c->in_start + n > IN_BUF_SIZE) {
        memmove(c->in, c->in + c->in_start, in_avail(c));
        c->in_end -= c->in_start;
        c->in_start = 0;
    }
    while (in_avail(c) < n)
        if ((r = in_fill(c)) < 0)
            return r;
    return 0;
}

/* Copy len bytes of input to buf: first the buffered ones, then straight
 * from the socket (after sending the batch); NULL buf drops them. */
static int in_take(struct vd_nbd_conn *c, void *buf, uint64_t len)
{
    size_t k = (size_t)VD_MIN((uint64_t)in_avail(c), len);
    int r;

    if (buf && k)
        memcpy(buf, c->in + c->in_start, k);
    c->in_start += k;
    len -= k;
    if (!len)
        return 0;
    if ((r = send_out(c, &c->out)) < 0)
        return r;
    return buf ? conn_read(c, (char *)buf + k, (size_t)len) : conn_discard(c, len);
}

/* Take a spare request (or a new one) for a worker. */
static struct req *req_get(struct vd_nbd_conn *c)
{
    struct req *q;

    pthread_mutex_lock(&c->lock);
    if ((q = c->spare))
        c->spare = q->next;
    pthread_mutex_unlock(&c->lock);
    return q ? q : calloc(1, sizeof(*q));
}

/* Free q and its buffers. */
static void req_free(struct req *q)
{
    free(q->own);
    free(q->out.p);
    free(q);
}

/* Count a worker request out of flight and keep it as a spare. */
static void req_done(struct vd_nbd_conn *c, struct req *q)
{
    if (q->own_cap > SPARE_KEEP) {
        free(q->own);
        q->own = NULL;
        q->own_cap = 0;
    }
    if (q->out.cap > SPARE_KEEP) {
        free(q->out.p);
        q->out = (struct rbuf){ 0 };
    }
    pthread_mutex_lock(&c->lock);
    c->inflight--;
    c->inflight_bytes -= q->bytes;
    q->next = c->spare;
    c->spare = q;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* Is a READ or WRITE one whose cost says how fast the export is? */
static bool timed(const struct req *q)
{
    return q->type == NBD_CMD_READ || q->type == NBD_CMD_WRITE;
}

/* Worker job: run the request, send its reply, count it out. */
static void run_request(void *opaque)
{
    struct req *q = opaque;
    struct vd_nbd_conn *c = q->c;
    uint64_t t0 = now_ns();
    int r;

    vd_error_clear();
    r = nbd_run(c, q, &q->out);
    if (timed(q))
        note_cost(c, q->len, now_ns() - t0);
    if (r < 0)
        conn_fail(c, r);
    else
        send_out(c, &q->out);
    req_done(c, q);
}

/* Wait for room for bytes more in flight (sending the batch first when
 * there is none); false when the connection died. */
static bool wait_room(struct vd_nbd_conn *c, uint64_t bytes)
{
    bool ok, sent = false;

    pthread_mutex_lock(&c->lock);
    while (c->inflight && (c->inflight >= CONN_MAX_INFLIGHT ||
                           c->inflight_bytes + bytes > CONN_MAX_INFLIGHT_BYTES) &&
           !atomic_load(&c->dead)) {
        if (!sent && c->out.len) {
            pthread_mutex_unlock(&c->lock);
            send_out(c, &c->out);
            sent = true;
            pthread_mutex_lock(&c->lock);
            continue;
        }
        pthread_cond_wait(&c->cond, &c->lock);
    }
    ok = !atomic_load(&c->dead);
    if (ok) {
        c->inflight++;
        c->inflight_bytes += bytes;
    }
    pthread_mutex_unlock(&c->lock);
    return ok;
}

/* Give w's payload buffer room for len bytes. */
static int own_room(struct req *w, size_t len)
{
    void *p;

    if (w->own_cap >= len && w->own)
        return 0;
    if (!(p = realloc(w->own, len ? len : 1)))
        return vd_error(ENOMEM, "out of memory");
    w->own = p;
    w->own_cap = len;
    return 0;
}

/* Hand q (payload, if any, still to be read) to a worker: 0, -errno. */
static int hand_off(struct vd_nbd_conn *c, const struct req *q)
{
    struct req *w = req_get(c);
    uint64_t bytes = timed(q) ? q->len : 0;
    int r;

    if (!w)
        return vd_error(ENOMEM, "out of memory");
    if (!wait_room(c, bytes)) {
        req_free(w);
        return -EPIPE;
    }
    w->c = c;
    w->flags = q->flags;
    w->type = q->type;
    w->cookie = q->cookie;
    w->off = q->off;
    w->len = q->len;
    w->payload = q->payload;
    w->ctx = q->ctx;
    w->rflags = 0;
    w->bytes = bytes;
    w->out.len = 0;
    w->data = NULL;
    if (q->type == NBD_CMD_WRITE) {
        if ((r = own_room(w, q->len)) < 0 || (r = in_take(c, w->own, q->len)) < 0) {
            req_done(c, w);
            return r;
        }
        w->data = w->own;
    }
    if (!c->pool && !(c->pool = vd_threadpool_new(c->srv->workers))) {
        req_done(c, w);
        return vd_error(ENOMEM, "cannot start request threads");
    }
    if (vd_threadpool_submit(c->pool, run_request, w) < 0)
        run_request(w);
    return 0;
}

/* Fold the outcome of a VD_REQ_NOWAIT read into the average (1/8 weight). */
static void note_nowait(struct vd_nbd_conn *c, bool hit)
{
    int d = (hit ? NOWAIT_SCALE : 0) - (int)c->nowait_hits;

    c->nowait_hits = (unsigned)((int)c->nowait_hits + d / 8);
}

/* While the export is slow, is a READ worth trying here?  Only once the
 * export has shown that it answers VD_REQ_NOWAIT (a read said -EAGAIN),
 * and while such reads mostly find their data (a miss costs a failed
 * read before the handoff), or as a probe. */
static bool nowait_worth(struct vd_nbd_conn *c)
{
    if (!c->nowait_works)
        return false;
    return c->nowait_hits >= NOWAIT_LOW || ++c->nowait_tries % NOWAIT_PROBE == 0;
}

/* Should the reader run q itself? */
static bool run_here(struct vd_nbd_conn *c, const struct req *q)
{
    if (timed(q)) {
        if (q->len > INLINE_MAX || (q->flags & NBD_CMD_FLAG_FUA))
            return false;
        if (q->type == NBD_CMD_WRITE && q->len > IN_PAYLOAD_MAX)
            return false;
    } else if (q->type != NBD_CMD_BLOCK_STATUS) {
        return false;
    }
    if (atomic_load_explicit(&c->slow, memory_order_relaxed) < SLOW_SCORE)
        return true;
    return q->type == NBD_CMD_READ && nowait_worth(c);
}

/* Run q on the reader, its payload (if any) read into the buffer.  A
 * READ does not wait for the disk: data not in the cache (-EAGAIN) is
 * read by a worker instead. */
static int run_inline(struct vd_nbd_conn *c, struct req *q)
{
    uint64_t t0;
    int r;

    if (q->type == NBD_CMD_WRITE) {
        if ((r = in_need(c, q->len)) < 0)
            return r;
        q->data = c->in + c->in_start;
    }
    vd_error_clear();
    q->rflags = q->type == NBD_CMD_READ ? VD_REQ_NOWAIT : 0;
    t0 = now_ns();
    r = nbd_run(c, q, &c->out);
    if (q->rflags)
        note_nowait(c, r != -EAGAIN);
    if (r == -EAGAIN && q->rflags) {
        c->nowait_works = true;
        return hand_off(c, q);
    }
    if (timed(q))
        note_cost(c, q->len, now_ns() - t0);
    if (q->type == NBD_CMD_WRITE)
        c->in_start += q->len;
    if (r < 0)
        return conn_fail(c, r);
    return c->out.len >= OUT_FLUSH ? send_out(c, &c->out) : 0;
}

/* Decode a compact request header (28 bytes): only WRITE has a payload. */
static void parse_compact(const uint8_t *h, struct req *q)
{
    q->flags = vd_get_be16(h + 4);
    q->type = vd_get_be16(h + 6);
    q->cookie = vd_get_be64(h + 8);
    q->off = vd_get_be64(h + 16);
    q->len = vd_get_be32(h + 24);
    q->payload = q->type == NBD_CMD_WRITE ? q->len : 0;
}

/* Decode an extended request header (32 bytes): the 64-bit length is the
 * payload's with NBD_CMD_FLAG_PAYLOAD_LEN, else an effect length.  A WRITE
 * without the flag breaks a MUST of the spec; its length can only mean the
 * data behind it (the compact form), so it is read as that rather than
 * taking the data for the next requests. */
static void parse_extended(const uint8_t *h, struct req *q)
{
    q->flags = vd_get_be16(h + 4);
    q->type = vd_get_be16(h + 6);
    q->cookie = vd_get_be64(h + 8);
    q->off = vd_get_be64(h + 16);
    q->len = vd_get_be64(h + 24);
    q->payload = (q->flags & NBD_CMD_FLAG_PAYLOAD_LEN) || q->type == NBD_CMD_WRITE
               ? q->len : 0;
}

/* Refuse a request: drop its payload, then reply with the error. */
static int refuse(struct vd_nbd_conn *c, const struct req *q, uint32_t err,
                  const char *msg)
{
    int r;

    if (q->payload && (r = in_take(c, NULL, q->payload)) < 0)
        return r;
    if ((r = nbd_put_error(c, q, &c->out, err, msg)) < 0)
        return conn_fail(c, r);
    return 0;
}

/* The contexts a BLOCK_STATUS payload names (64-bit effect length, then
 * distinct selected context ids), read from the input: 0 with q->len and
 * q->ctx set, 1 when it is malformed (q->payload: what is left of it to
 * drop), -errno. */
static int read_bs_payload(struct vd_nbd_conn *c, struct req *q)
{
    const uint8_t *p;
    uint64_t n = q->payload;
    uint64_t ctx = 0;
    int r;

    if (n < 12 || n > 8 + 4 * 64 || n % 4)
        return 1;
    if ((r = in_need(c, (size_t)n)) < 0)
        return r;
    p = c->in + c->in_start;
    c->in_start += (size_t)n;
    q->payload = 0;
    for (size_t i = 8; i < n; i += 4) {
        uint32_t id = vd_get_be32(p + i);
        uint64_t bit = id < 64 ? c->meta & (1ull << id) : 0;
        if (!bit || (ctx & bit))
            return 1;
        ctx |= bit;
    }
    q->len = vd_get_be64(p);
    q->ctx = ctx;
    return 0;
}

/* Read the next request header and its BLOCK_STATUS payload, if any: 1
 * with q filled in, 0 at the end of input, 2 when q was refused already,
 * -errno.  A header of the other form than was negotiated, or a payload
 * beyond NBD_MAX_PAYLOAD on an extended connection, leaves the stream
 * undecodable or too costly to skip: the connection ends. */
static int read_request(struct vd_nbd_conn *c, struct req *q)
{
    size_t hl = c->extended ? sizeof(struct nbd_extended_request)
                            : sizeof(struct nbd_request);
    uint32_t magic, want = c->extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC;
    const uint8_t *h;
    int r;

    /* The magic first: a header of the wrong form may be shorter. */
    if ((in_avail(c) < 4 && (r = in_need(c, 4)) < 0) ||
        (vd_get_be32(c->in + c->in_start) == want && in_avail(c) < hl &&
         (r = in_need(c, hl)) < 0))
        return r == -ECONNRESET || atomic_load(&c->srv->shutdown) ? 0 : r;
    h = c->in + c->in_start;
    if ((magic = vd_get_be32(h)) != want)
        return vd_error(EINVAL, "invalid request magic 0x%08x%s", magic,
                        magic == NBD_REQUEST_MAGIC || magic == NBD_EXTENDED_REQUEST_MAGIC
                        ? (c->extended ? " (compact request after extended headers)"
                                       : " (extended request without extended headers)")
                        : "");
    if (c->extended)
        parse_extended(h, q);
    else
        parse_compact(h, q);
    c->in_start += hl;
    q->ctx = CTX_ALL;
    if (c->extended && q->payload > NBD_MAX_PAYLOAD)
        return vd_error(EINVAL, "request payload of %llu bytes is too large",
                        (unsigned long long)q->payload);
    if (q->type == NBD_CMD_BLOCK_STATUS && q->payload) {
        if ((r = read_bs_payload(c, q)) <= 0)
            return r < 0 ? r : 1;
        if ((r = refuse(c, q, NBD_EINVAL, "invalid block status payload")) < 0)
            return r;
        return 2;
    }
    return 1;
}

/* Read and handle one request: 1 to go on, 0 at the end, -errno. */
static int handle_one(struct vd_nbd_conn *c)
{
    struct req q = { .c = c };
    const char *msg;
    uint32_t err;
    int r;

    if ((r = read_request(c, &q)) <= 0)
        return r;
    if (r == 2)
        return 1;
    if (q.type == NBD_CMD_DISC)
        return 0;
    if ((err = nbd_validate(c, &q, &msg)))
        r = refuse(c, &q, err, msg);
    else if (run_here(c, &q))
        r = run_inline(c, &q);
    else
        r = hand_off(c, &q);
    return r < 0 ? r : 1;
}

/* Wait until every request on the workers has replied. */
static void drain(struct vd_nbd_conn *c)
{
    pthread_mutex_lock(&c->lock);
    while (c->inflight)
        pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
}

/* Free the transmission buffers, the workers and the spare requests. */
static void xmit_free(struct vd_nbd_conn *c)
{
    vd_threadpool_free(c->pool);
    c->pool = NULL;
    while (c->spare) {
        struct req *q = c->spare;
        c->spare = q->next;
        req_free(q);
    }
    free(c->in);
    c->in = NULL;
    free(c->out.p);
    c->out = (struct rbuf){ 0 };
}

/* See server-int.h. */
int nbd_transmission(struct vd_nbd_conn *c)
{
    int r;

    c->in_start = c->in_end = 0;
    if (!(c->in = malloc(IN_BUF_SIZE)))
        return vd_error(ENOMEM, "out of memory");
    while ((r = handle_one(c)) > 0 && !atomic_load(&c->dead))
        ;
    send_out(c, &c->out);
    drain(c);
    xmit_free(c);
    if (r == -ECONNRESET || r == -EPIPE || atomic_load(&c->dead))
        r = 0;
    return r;
}
