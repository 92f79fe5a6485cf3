/* SPDX-License-Identifier: BSD-3-Clause */
/* Declarations shared by the files of the NBD server: the connection and
 * its transport (plain or TLS), option negotiation, transmission. */
#ifndef VD_NBD_SERVER_INT_H
#define VD_NBD_SERVER_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "nbd/nbd-proto.h"
#include "nbd/server.h"
#include "util/threadpool.h"

/* Requests in flight on one connection and their buffered bytes: the
 * reader waits (and so stops reading) above either. */
#define CONN_MAX_INFLIGHT 16
#define CONN_MAX_INFLIGHT_BYTES (64u << 20)
/* Option payloads up to this are read or skipped; longer ones end the
 * connection. */
#define OPT_MAX_SKIP (64u << 20)
/* Option payloads we parse are read whole into memory up to this. */
#define OPT_MAX_READ (1u << 20)

struct vd_nbd_conn {
    struct vd_nbd_server *srv;
    struct vd_nbd_conn *next;      /* srv->conns list */
    int fd;
    struct vd_nbd_tls_session *tls;
    int64_t deadline_ms;           /* handshake deadline; -1: none */

    /* Negotiated in the handshake. */
    bool fixed, no_zeroes, structured;
    bool meta_base, meta_depth;    /* selected contexts */
    char *meta_export;             /* export they were selected for */
    const struct vd_nbd_export *exp;

    /* Transmission. */
    pthread_mutex_t send_lock;     /* one reply chunk at a time */
    pthread_mutex_t lock;          /* inflight counters */
    pthread_cond_t cond;
    int inflight;
    uint64_t inflight_bytes;
    atomic_bool dead;              /* a send failed: stop */
    vd_threadpool *pool;
};

/* Transport (server.c). */
int conn_read(struct vd_nbd_conn *c, void *buf, size_t len);
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

/* Transmission (server-cmd.c): serve requests until the client leaves. */
int nbd_transmission(struct vd_nbd_conn *c);

#endif
