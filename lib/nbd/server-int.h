/* SPDX-License-Identifier: BSD-3-Clause */
/* Declarations shared by the files of the NBD server: the connection and
 * its transport (plain or TLS), option negotiation, transmission (the
 * request loop in server-xmit.c, the commands in server-cmd.c). */
#ifndef VD_NBD_SERVER_INT_H
#define VD_NBD_SERVER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "nbd/nbd-proto.h"
#include "nbd/server.h"
#include "util/threadpool.h"

/* Requests in flight on the worker threads of one connection and their
 * buffered bytes: the reader waits (and so stops reading) above either. */
#define CONN_MAX_INFLIGHT 16
#define CONN_MAX_INFLIGHT_BYTES (64u << 20)
/* Option payloads up to this are read or skipped; longer ones end the
 * connection. */
#define OPT_MAX_SKIP (64u << 20)
/* Option payloads we parse are read whole into memory up to this. */
#define OPT_MAX_READ (1u << 20)

/* Metadata context ids, and the bits of struct req's ctx and the
 * connection's meta for them: base:allocation, qemu:allocation-depth, then
 * qemu:dirty-bitmap:NAME for the export's bitmap i at id CTX_ID_BITMAP + i
 * (at most VD_NBD_MAX_BITMAPS of them, so every id has a bit). */
#define CTX_ID_BASE  0
#define CTX_ID_DEPTH 1
#define CTX_ID_BITMAP 2
#define CTX_BASE  (1ull << CTX_ID_BASE)
#define CTX_DEPTH (1ull << CTX_ID_DEPTH)
#define CTX_ALL   (~0ull)

/* Reply bytes being built: whole chunks are appended, then the lot goes
 * out in one write under the send lock. */
struct rbuf {
    uint8_t *p;
    size_t len, cap;
};

/* One request of the transmission phase, validated before it runs. */
struct req {
    struct req *next;              /* the connection's spare requests */
    struct vd_nbd_conn *c;
    uint16_t flags, type;
    uint64_t cookie, off;          /* off: in the export */
    uint64_t len;                  /* effect length (WRITE: = payload) */
    uint64_t payload;              /* bytes following the header */
    uint64_t ctx;                  /* BLOCK_STATUS: CTX_* bits to answer */
    int rflags;                    /* READ: vd_pread flags (VD_REQ_NOWAIT) */
    uint64_t bytes;                /* buffered bytes counted in flight */
    const void *data;              /* WRITE payload */
    void *own;                     /* payload buffer owned by a worker request */
    size_t own_cap;
    struct rbuf out;               /* a worker request's reply */
};

struct vd_nbd_conn {
    struct vd_nbd_server *srv;
    struct vd_nbd_conn *next;      /* srv->conns list */
    int fd;
    struct vd_nbd_tls_session *tls;
    int64_t deadline_ms;           /* handshake deadline; -1: none */

    /* Negotiated in the handshake.  extended implies structured. */
    bool fixed, no_zeroes, structured, extended;
    uint64_t meta;                 /* selected contexts: bit = context id */
    char *meta_export;             /* export they were selected for */
    const struct vd_nbd_export *exp;

    /* Transmission: the reader's buffers (server-xmit.c). */
    uint8_t *in;                   /* requests read ahead */
    size_t in_start, in_end;       /* unconsumed bytes: in[in_start, in_end) */
    struct rbuf out;               /* replies of requests run by the reader */
    atomic_uint slow;              /* average cost score of READ/WRITE */
    bool nowait_works;             /* a VD_REQ_NOWAIT read said -EAGAIN */
    unsigned nowait_hits;          /* their average success, of NOWAIT_SCALE */
    unsigned nowait_tries;         /* READs seen while it was low */

    /* Transmission: worker threads. */
    pthread_mutex_t send_lock;     /* one write of whole chunks at a time */
    pthread_mutex_t lock;          /* inflight counters, spare requests */
    pthread_cond_t cond;
    int inflight;
    uint64_t inflight_bytes;
    struct req *spare;
    atomic_bool dead;              /* a send failed: stop */
    vd_threadpool *pool;           /* started with the first handoff */
};

/* Transport (server.c). */
int conn_read(struct vd_nbd_conn *c, void *buf, size_t len);
/* Read what is there, at least one byte unless nowait: > 0 bytes, 0 when
 * nowait and nothing is buffered, -ECONNRESET at the end, -errno. */
ssize_t conn_recv(struct vd_nbd_conn *c, void *buf, size_t len, bool nowait);
int conn_write(struct vd_nbd_conn *c, const void *buf, size_t len);
/* Header then data, as one message where the transport allows. */
int conn_write2(struct vd_nbd_conn *c, const void *h, size_t hlen,
                const void *d, size_t dlen);
int conn_discard(struct vd_nbd_conn *c, uint64_t len);
/* Start TLS on the connection (after the STARTTLS reply). */
int conn_start_tls(struct vd_nbd_conn *c);

/* Option negotiation (server-opts.c): 0 with c->exp set to go into
 * transmission, -errno to drop the client. */
int nbd_negotiate(struct vd_nbd_conn *c);

/* Transmission (server-xmit.c): serve requests until the client leaves. */
int nbd_transmission(struct vd_nbd_conn *c);

/* Commands (server-cmd.c). */
/* Room for n more bytes at the end of b (not yet counted in b->len);
 * NULL when memory is short. */
uint8_t *rbuf_room(struct rbuf *b, size_t n);
/* Check a request before anything runs it: 0 or the NBD error, with a
 * message in *msg. */
uint32_t nbd_validate(const struct vd_nbd_conn *c, const struct req *q,
                      const char **msg);
/* Append an error reply to q. */
int nbd_put_error(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                  uint32_t err, const char *msg);
/* Run a valid request and append its whole reply to o: 0, or -errno when
 * not even an error reply could be built (the connection must end), or
 * -EAGAIN (o unchanged) when a READ with VD_REQ_NOWAIT in q->rflags
 * would have blocked. */
int nbd_run(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o);

#endif
