/* SPDX-License-Identifier: BSD-3-Clause */
/* The rbd driver's cluster connections: one rados_t per process for each
 * set of settings, shared and reference counted (rbd-conn.c). */
#ifndef VDISK_RBD_CONN_H
#define VDISK_RBD_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include <rados/librados.h>

#include "vdisk/object.h"

#define RBD_KEYPAIRS "=keyvalue-pairs"    /* options from the name, as JSON */
#define RBD_MAX_SERVERS 64

/* One shared cluster connection. */
struct rbd_conn {
    char *key;                 /* the settings that chose it (holds the key) */
    rados_t cluster;
    uint64_t timeout;          /* request_timeout of its settings */
    int refs;
    bool dead;                 /* a request gave up on it: never reused */
    uint64_t idle_since;       /* order of going idle */
    struct rbd_conn *next;
};

/* The shared connection for o's settings (its user, conf file, name pairs,
 * servers, key and authentication modes), made on first use. */
int rbd_conn_get(const vd_opts *o, struct rbd_conn **out);

/* Drop a reference; dead: a request gave up on the connection, so it is
 * never reused nor shut down. */
void rbd_conn_put(struct rbd_conn *k, bool dead);

#endif
