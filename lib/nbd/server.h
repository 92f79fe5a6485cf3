/* SPDX-License-Identifier: BSD-3-Clause */
/* The NBD server as a library piece: one call serves one client connection
 * from the fixed newstyle handshake to the end of transmission, dispatching
 * requests onto an export's vd_node.  The program around it (vdisk-nbd)
 * owns the sockets; the fuzz harness feeds it over a socketpair. */
#ifndef VD_NBD_SERVER_H
#define VD_NBD_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

struct vd_nbd_tls;                 /* TLS credentials: nbd/tls.h */
struct vd_nbd_conn;

enum vd_nbd_detect_zeroes { VD_NBD_DZ_OFF, VD_NBD_DZ_ON, VD_NBD_DZ_UNMAP };

/* Dirty bitmaps an export may offer, at most. */
#define VD_NBD_MAX_BITMAPS 62

/* A persistent dirty bitmap offered as qemu:dirty-bitmap:NAME; node is the
 * image of the chain that holds it (same offsets as the export's node). */
struct vd_nbd_bitmap {
    const char *name;
    vd_node *node;
};

/* One export: a window [offset, offset + size) of a node. */
struct vd_nbd_export {
    const char *name;              /* "" is the default export */
    const char *description;       /* NULL: none */
    vd_node *node;
    uint64_t offset, size;
    bool read_only;
    bool multi_conn;               /* advertise NBD_FLAG_CAN_MULTI_CONN */
    bool allocation_depth;         /* offer qemu:allocation-depth */
    const struct vd_nbd_bitmap *bitmaps;   /* offer qemu:dirty-bitmap:NAME */
    int nbitmaps;                  /* <= VD_NBD_MAX_BITMAPS */
    bool discard_unmap;            /* TRIM and NO_HOLE-less zeroing unmap */
    enum vd_nbd_detect_zeroes detect_zeroes;
};

struct vd_nbd_server {
    const struct vd_nbd_export *exports;
    int nexports;
    struct vd_nbd_tls *tls;        /* non-NULL: TLS required */
    int handshake_limit_ms;        /* 0: no limit on the handshake */
    int workers;                   /* request threads per connection */
    bool verbose;                  /* report failed negotiations on stderr */

    /* Connections being served (for shutdown). */
    pthread_mutex_t lock;
    struct vd_nbd_conn *conns;
    atomic_bool shutdown;
};

/* Zero srv, set up the lock and defaults; exports/tls are filled in by
 * the caller afterwards. */
void vd_nbd_server_init(struct vd_nbd_server *srv);
void vd_nbd_server_destroy(struct vd_nbd_server *srv);
/* Serve one client on fd until it leaves, then close fd.  0 when the
 * client ended cleanly, -errno (message in vd_errmsg()) otherwise. */
int vd_nbd_server_serve(struct vd_nbd_server *srv, int fd);
/* The same; *transmitted (may be NULL) tells whether the client got past
 * the handshake into transmission (qemu-nbd ends without -t only after
 * such a client leaves). */
int vd_nbd_server_serve_ex(struct vd_nbd_server *srv, int fd, bool *transmitted);
/* Serve exp on fd in the transmission phase directly, with no handshake
 * (the kernel client of /dev/nbdX was told size and flags by ioctl). */
int vd_nbd_server_serve_kernel(struct vd_nbd_server *srv, int fd,
                               const struct vd_nbd_export *exp);
/* Make every connection end: finish requests in flight, then close. */
void vd_nbd_server_shutdown(struct vd_nbd_server *srv);
/* The transmission flags advertised for exp. */
uint16_t vd_nbd_export_flags(const struct vd_nbd_export *exp);

#endif
