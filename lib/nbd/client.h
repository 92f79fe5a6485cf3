/* SPDX-License-Identifier: BSD-3-Clause */
/* The NBD client: one connection to one export (transport with optional
 * TLS, fixed-newstyle handshake, and the transmission phase with a reader
 * thread that matches replies to in-flight requests by cookie).  Used by
 * the "nbd" protocol driver (lib/protocol/nbd.c), which may hold several
 * connections to one export (multi-conn).  Every byte from the server is
 * hostile: lengths, offsets, magics and strings are checked before use. */
#ifndef VD_NBD_CLIENT_H
#define VD_NBD_CLIENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum nbdc_addr_type { NBDC_INET, NBDC_UNIX, NBDC_FD };

/* What to connect to and how. */
struct nbdc_config {
    enum nbdc_addr_type type;
    char *host, *port;           /* NBDC_INET */
    char *path;                  /* NBDC_UNIX */
    int fd;                      /* NBDC_FD: an already connected socket */
    char *export;                /* "" when absent */
    /* TLS: tls is set when it must be used (tls-creds or an nbds scheme). */
    bool tls;
    char *tls_creds;             /* --object id, or NULL */
    char *tls_certs_dir;         /* x509 directory (nbds:// tls-certificates) */
    char *tls_psk_file;          /* keys.psk file (nbds:// tls-psk-file) */
    char *tls_username;          /* PSK identity */
    char *tls_hostname;          /* name checked in the server certificate */
    bool tls_verify;             /* check the server certificate */
    bool no_extended;            /* do not ask for extended headers */
    bool no_meta;                /* do not ask for base:allocation */
    char *meta_context;          /* asked for instead (x-dirty-bitmap); NULL: none */
    int64_t handshake_timeout_ms;   /* > 0 */
    int64_t io_timeout_ms;       /* 0: wait for replies forever */
    const atomic_bool *cancel;   /* set: give up waiting (may be NULL) */
};

/* What the handshake learned about the export. */
struct nbdc_info {
    uint64_t size;
    uint16_t flags;              /* NBD_FLAG_* transmission flags */
    uint32_t min_block, pref_block, max_payload;  /* 0: not advertised */
    bool structured;             /* structured replies negotiated */
    bool extended;               /* extended headers negotiated */
    bool have_alloc;             /* base:allocation (or meta_context) negotiated */
    uint32_t alloc_id;           /* its context id */
    bool oldstyle;
};

struct nbdc_req;
struct nbdc_tls;

/* One connection.  Fields after the handshake are read-only except where
 * noted; `lock` guards the in-flight list and the dead state, `send_lock`
 * serialises whole requests on the socket. */
struct nbdc_conn {
    int fd;
    struct nbdc_tls *tls;          /* TLS session, or NULL (client-tls.c) */
    struct nbdc_info info;
    int64_t io_timeout_ms;
    const atomic_bool *cancel;
    pthread_mutex_t lock, send_lock;
    pthread_t reader;
    bool reader_started;
    struct nbdc_req *inflight;   /* guarded by lock */
    uint64_t next_cookie;        /* guarded by lock */
    int dead;                    /* -errno once the connection failed */
    char dead_msg[256];
    atomic_int nreqs;            /* requests in flight (load balancing) */
    atomic_bool closing;
    bool more;                   /* under send_lock: MSG_MORE on sends */
    _Atomic int64_t last_rx_ms;  /* when the reader last got bytes */
};

/* Connect and run the handshake; *out is a ready connection.  Returns 0 or
 * -errno with a message (qemu's wording where it has one). */
int nbdc_connect(const struct nbdc_config *cfg, struct nbdc_conn **out);
/* Soft-disconnect and free.  NULL is allowed. */
void nbdc_close(struct nbdc_conn *c);

/* Transmission-phase commands; 0 or -errno with a message. */
int nbdc_read(struct nbdc_conn *c, uint64_t off, uint32_t len, void *buf);
int nbdc_write(struct nbdc_conn *c, uint64_t off, uint32_t len, const void *buf,
               uint16_t flags);
int nbdc_zero(struct nbdc_conn *c, uint64_t off, uint32_t len, uint16_t flags);
int nbdc_trim(struct nbdc_conn *c, uint64_t off, uint32_t len, uint16_t flags);
int nbdc_flush(struct nbdc_conn *c);
/* base:allocation of [off, off+len): *pnum bytes (<= len) share the
 * NBD_STATE_* flags in *state. */
int nbdc_block_status(struct nbdc_conn *c, uint64_t off, uint32_t len,
                      uint64_t *pnum, uint32_t *state);

/* ---- shared by the client files (client-*.c) ---- */

/* Transport: exact-length I/O over the socket or TLS session.  deadline_ms
 * < 0 waits while the connection is not closing (and, in the reader, while
 * the I/O timeout has not passed with requests in flight). */
int nbdc_recv(struct nbdc_conn *c, void *buf, size_t len, int64_t deadline_ms);
int nbdc_send(struct nbdc_conn *c, const void *buf, size_t len, int64_t deadline_ms);
int nbdc_send2(struct nbdc_conn *c, const void *hdr, size_t hlen, const void *payload,
               size_t plen, int64_t deadline_ms);
int nbdc_recv_discard(struct nbdc_conn *c, uint64_t len, int64_t deadline_ms);
/* Open the socket named by cfg into c->fd. */
int nbdc_socket_connect(const struct nbdc_config *cfg, struct nbdc_conn *c);
/* Start TLS on c->fd (after NBD_OPT_STARTTLS was acknowledged). */
int nbdc_tls_start(const struct nbdc_config *cfg, struct nbdc_conn *c,
                   int64_t deadline_ms);
/* Option haggling up to the transmission phase. */
int nbdc_handshake(const struct nbdc_config *cfg, struct nbdc_conn *c);
/* Start the reader thread (transmission phase). */
int nbdc_start_reader(struct nbdc_conn *c);
/* CLOCK_MONOTONIC milliseconds. */
int64_t nbdc_now_ms(void);
/* Map an NBD error number from the wire to an errno. */
int nbdc_errno(uint32_t nbd_err);

#endif
