/* SPDX-License-Identifier: BSD-3-Clause */
/* The "rbd" protocol driver: images in a Ceph cluster through librados and
 * librbd.  Names are rbd:pool[/namespace]/image[@snapshot][:key=value...]
 * with backslash escapes, or the json:/--image-opts keys pool, namespace,
 * image, snapshot, conf, user, key-secret, auth-client-required and a
 * server list.  Requests are cut at object boundaries and all pieces go out
 * at once through librbd's asynchronous calls, so one caller keeps several
 * objects busy and many callers (the copy engine's threads) many more.
 * Every cluster call is bounded: mount, monitor and OSD timeouts get our
 * defaults unless the configuration sets them, and a request that outlives
 * twice the OSD timeout is given up (the node is then dead: later requests
 * fail at once and close leaves the library alone).
 *
 * Connections are shared per process (rbd-conn.c). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

#include "rbd-conn.h"
#include "util/checked.h"
#include "util/iobuf.h"
#include "util/json.h"
#include "vdisk/driver.h"
#include "vdisk/object.h"

#define RBD_PREFIX "rbd:"
#define RBD_MAX_XFER (32u << 20)          /* largest request the core sends */
#define RBD_POOL 16                       /* read buffers kept for reuse */
#define RBD_POOL_MAX_OBJ (8u << 20)       /* ... when objects are this small */
#define RBD_ZERO_BUF (1u << 20)            /* zeroes written as data at once */

/* Zeroes written as data (parts of objects), sent from here. */
static const char zero_buf[RBD_ZERO_BUF];

struct rbd_state {
    struct rbd_conn *conn;
    rados_t cluster;           /* conn's */
    rados_ioctx_t io;
    rbd_image_t image;
    char *image_name, *snap;
    uint64_t obj_size;
    uint64_t timeout;          /* seconds a request may take (0: no bound) */
    atomic_bool dead;          /* a request timed out: the cluster is gone */
    pthread_mutex_t pool_lock; /* guards pool, npool */
    char *pool[RBD_POOL];      /* read buffers of obj_size bytes, for reuse */
    int npool;
    bool pool_init;
    bool diff_ok;              /* diff_layout_ok at open */
    bool have_io, have_image;
};

/* ---- the name ---- */

/* Cut s at the first delim not escaped by a backslash: the token is s,
 * *rest the text after delim (NULL when there is none). */
static char *next_token(char *s, char delim, char **rest)
{
    char *e = s;

    *rest = NULL;
    while (*e && *e != delim) {
        if (*e == '\\' && e[1])
            e++;
        e++;
    }
    if (*e == delim) {
        *e = '\0';
        *rest = e + 1;
    }
    return s;
}

/* Drop the backslash of each escape, in place. */
static void unescape(char *s)
{
    char *out = s;

    for (; *s; s++, out++) {
        if (*s == '\\' && s[1])
            s++;
        *out = *s;
    }
    *out = '\0';
}

/* o[key] = value; -ENOMEM with a message on failure. */
static int put(vd_opts *o, const char *key, const char *value)
{
    return vd_opts_set(o, key, value) < 0 ? vd_error(ENOMEM, "out of memory") : 0;
}

/* The key=value list after the image: conf and id become options, the
 * rest are Ceph settings kept (in order) as a JSON array of strings. */
static int parse_pairs(char *p, vd_opts *o)
{
    vd_json *pairs = NULL;
    char *name, *value, *text;
    int r = 0;

    while (p && r >= 0) {
        name = next_token(p, '=', &p);
        if (!p) {
            r = vd_error(EINVAL, "conf option %s has no value", name);
            break;
        }
        unescape(name);
        value = next_token(p, ':', &p);
        unescape(value);
        if (!strcmp(name, "conf") || !strcmp(name, "id")) {
            r = put(o, !strcmp(name, "conf") ? "conf" : "user", value);
            continue;
        }
        if (!pairs && !(pairs = vd_json_new_array()))
            return vd_error(ENOMEM, "out of memory");
        vd_json_append(pairs, vd_json_new_string(name));
        vd_json_append(pairs, vd_json_new_string(value));
    }
    if (r >= 0 && pairs) {
        if (!(text = vd_json_to_compact(pairs)))
            r = vd_error(ENOMEM, "out of memory");
        else
            r = put(o, RBD_KEYPAIRS, text);
        free(text);
    }
    vd_json_free(pairs);
    return r;
}

/* rbd:pool[/namespace]/image[@snapshot][:key=value...] into options. */
static int parse_name(char *buf, vd_opts *o)
{
    char *p, *rest, *pool, *image, *snap, *ns;
    int r;

    pool = next_token(buf, '/', &p);
    if (!p)
        return vd_error(EINVAL, "Pool name is required");
    unescape(pool);
    if ((r = put(o, "pool", pool)) < 0)
        return r;
    /* The first unescaped '@' (even one in the options, as QEMU) ends the
     * image name; without one, the first unescaped ':' does. */
    image = next_token(p, '@', &rest);
    if (rest) {
        p = rest;
        snap = next_token(p, ':', &p);
        unescape(snap);
        if ((r = put(o, "snapshot", snap)) < 0)
            return r;
    } else {
        image = next_token(p, ':', &p);
    }
    ns = "";
    if (strchr(image, '/')) {
        char *first = next_token(image, '/', &rest);
        if (rest) {             /* an unescaped '/': namespace/image */
            ns = first;
            image = rest;
            unescape(ns);
        }
    }
    unescape(image);
    if ((r = put(o, "namespace", ns)) < 0 || (r = put(o, "image", image)) < 0)
        return r;
    return parse_pairs(p, o);
}

static int vrbd_parse_filename(const char *name, vd_opts *o)
{
    char *buf;
    int r;

    if (strncmp(name, RBD_PREFIX, strlen(RBD_PREFIX)))
        return vd_error(EINVAL, "File name must start with 'rbd:'");
    if (!(buf = strdup(name + strlen(RBD_PREFIX))))
        return vd_error(ENOMEM, "out of memory");
    r = parse_name(buf, o);
    free(buf);
    return r;
}

/* Connect and open the pool (and namespace) that o names. */
static int connect_pool(struct rbd_state *s, const vd_opts *o)
{
    const char *pool = vd_opts_get(o, "pool"), *ns = vd_opts_get(o, "namespace");
    bool exists = false;
    int r;

    if (!pool)
        return vd_error(EINVAL, "Parameter 'pool' is missing");
    if ((r = rbd_conn_get(o, &s->conn)) < 0)
        return r;
    s->cluster = s->conn->cluster;
    s->timeout = s->conn->timeout;
    if ((r = rados_ioctx_create(s->cluster, pool, &s->io)) < 0)
        return vd_error(-r, "error opening pool %s: %s", pool, strerror(-r));
    s->have_io = true;
    if (ns && *ns) {
        if ((r = rbd_namespace_exists(s->io, ns, &exists)) < 0)
            return vd_error(-r, "error checking namespace: %s", strerror(-r));
        if (!exists)
            return vd_error(ENOENT, "namespace '%s' does not exist", ns);
    }
    rados_ioctx_set_namespace(s->io, ns && *ns ? ns : NULL);
    return 0;
}

/* Drop the image and pool handles and the connection. */
static void disconnect(struct rbd_state *s)
{
    /* A dead cluster would block these forever: leave them to exit. */
    if (atomic_load(&s->dead)) {
        if (s->conn)
            rbd_conn_put(s->conn, true);
        s->conn = NULL;
        return;
    }
    if (s->have_image)
        rbd_close(s->image);
    if (s->have_io)
        rados_ioctx_destroy(s->io);
    if (s->conn)
        rbd_conn_put(s->conn, false);
    s->conn = NULL;
    s->have_image = s->have_io = false;
}

/* ---- I/O ---- */

enum rbd_op { OP_READ, OP_WRITE, OP_DISCARD, OP_ZERO, OP_FLUSH };

/* One request's pieces in flight.  The caller waits for them up to the
 * request timeout; when that passes it gives the request up (the node is
 * then dead) and the last piece to finish frees it.  A piece finishing
 * after that must not touch memory the caller has reused: a read lands in
 * the caller's buffer when the piece can hold it (util/iobuf.h), else in a
 * buffer of the piece's own that the caller copies out once all are done
 * (on its own thread, so copies run in parallel); a write sends from
 * memory the piece keeps until it finishes (keep_write_data). */
struct rbd_piece;

struct rbd_req {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int pending;              /* pieces not finished */
    int refs;                 /* pieces not finished + the caller */
    int err;                  /* first failure */
    bool abandoned;
    struct rbd_piece *reads;  /* finished read pieces, for the caller */
};

struct rbd_piece {
    struct rbd_req *rq;
    char *bounce, *dst;       /* reads */
    uint64_t len;
    struct rbd_piece *next;
    struct vd_iobuf *held;    /* the caller's buffer, kept (reads, writes) */
    char *wcopy;              /* writes: our copy of the data otherwise */
};

/* Drop one reference (lock held); frees rq on the last, then unlocks. */
static void req_put(struct rbd_req *rq)
{
    bool last = --rq->refs == 0;

    pthread_mutex_unlock(&rq->lock);
    if (last) {
        pthread_mutex_destroy(&rq->lock);
        pthread_cond_destroy(&rq->cond);
        free(rq);
    }
}

/* Free a piece and what it keeps (a read's bounce buffer, a write's data). */
static void piece_free(struct rbd_piece *p)
{
    free(p->bounce);
    free(p->wcopy);
    vd_iobuf_release(p->held);
    free(p);
}

/* librbd's completion callback. */
static void piece_done(rbd_completion_t c, void *arg)
{
    struct rbd_piece *p = arg;
    struct rbd_req *rq = p->rq;
    ssize_t v = rbd_aio_get_return_value(c);

    rbd_aio_release(c);
    pthread_mutex_lock(&rq->lock);
    if (v < 0 && !rq->err)
        rq->err = (int)v;
    if (p->bounce && !rq->abandoned) {
        p->next = rq->reads;          /* the caller copies and frees it */
        rq->reads = p;
        p = NULL;
    }
    if (--rq->pending == 0)
        pthread_cond_broadcast(&rq->cond);
    if (p)
        piece_free(p);
    req_put(rq);
}

/* A buffer for a read piece of len bytes (at most an object): a kept one
 * when there is one, so big reads do not fault fresh pages in each time. */
static char *bounce_get(struct rbd_state *s, uint64_t len)
{
    char *b = NULL;

    if (s->obj_size > RBD_POOL_MAX_OBJ)
        return malloc(len);
    pthread_mutex_lock(&s->pool_lock);
    if (s->npool)
        b = s->pool[--s->npool];
    pthread_mutex_unlock(&s->pool_lock);
    return b ? b : malloc(s->obj_size);
}

/* Give a read buffer back (kept or freed). */
static void bounce_put(struct rbd_state *s, char *b)
{
    if (b && s->obj_size <= RBD_POOL_MAX_OBJ) {
        pthread_mutex_lock(&s->pool_lock);
        if (s->npool < RBD_POOL) {
            s->pool[s->npool++] = b;
            b = NULL;
        }
        pthread_mutex_unlock(&s->pool_lock);
    }
    free(b);
}

/* Copy the read pieces out (when ok) and give their buffers back. */
static void take_reads(struct rbd_state *s, struct rbd_req *rq, bool ok)
{
    struct rbd_piece *p = rq->reads, *next;

    rq->reads = NULL;
    for (; p; p = next) {
        next = p->next;
        if (ok)
            memcpy(p->dst, p->bounce, p->len);
        bounce_put(s, p->bounce);
        free(p);
    }
}

/* Start one asynchronous piece. */
static int start_piece(struct rbd_state *s, enum rbd_op op, uint64_t off, uint64_t len,
                       char *buf, rbd_completion_t c)
{
    switch (op) {
    case OP_READ:
        return rbd_aio_read(s->image, off, len, buf, c);
    case OP_WRITE:
        return rbd_aio_write(s->image, off, len, buf, c);
    case OP_DISCARD:
        return rbd_aio_discard(s->image, off, len, c);
    case OP_ZERO:
        return rbd_aio_write_zeroes(s->image, off, len, c, 0, 0);
    default:
        return rbd_aio_flush(s->image, c);
    }
}

/* librbd sends a write's data from the caller's memory (zero-copy writes,
 * rbd-conn.c), up to the piece's completion, which may come after the
 * request was given up.  So it gets memory that lives that long: the
 * caller's buffer when it is one a driver may hold (util/iobuf.h), the
 * zeroes of a static buffer, else a copy of ours.  *buf is what to send. */
static int keep_write_data(struct rbd_piece *p, char **buf)
{
    if (*buf == zero_buf)
        return 0;
    if ((p->held = vd_iobuf_hold(*buf, p->len)))
        return 0;
    if (!(p->wcopy = malloc(p->len)))
        return -ENOMEM;
    memcpy(p->wcopy, *buf, p->len);
    *buf = p->wcopy;
    return 0;
}

/* Start a piece of rq: 0 or -errno (nothing left in flight then). */
static int submit(struct rbd_state *s, struct rbd_req *rq, enum rbd_op op, uint64_t off,
                  uint64_t len, char *buf)
{
    struct rbd_piece *p = calloc(1, sizeof(*p));
    rbd_completion_t c;
    int r;

    if (!p)
        return -ENOMEM;
    *p = (struct rbd_piece){ .rq = rq, .dst = buf, .len = len };
    if ((op == OP_READ && !(p->held = vd_iobuf_hold(buf, len)) &&
         !(p->bounce = bounce_get(s, len))) ||
        (op == OP_WRITE && (r = keep_write_data(p, &buf)) < 0)) {
        piece_free(p);
        return -ENOMEM;
    }
    if ((r = rbd_aio_create_completion(p, piece_done, &c)) < 0) {
        bounce_put(s, p->bounce);
        p->bounce = NULL;
        piece_free(p);
        return r;
    }
    pthread_mutex_lock(&rq->lock);
    rq->pending++;
    rq->refs++;
    pthread_mutex_unlock(&rq->lock);
    if ((r = start_piece(s, op, off, len, p->bounce ? p->bounce : buf, c)) < 0) {
        rbd_aio_release(c);
        bounce_put(s, p->bounce);
        p->bounce = NULL;
        piece_free(p);
        pthread_mutex_lock(&rq->lock);
        rq->pending--;
        rq->refs--;
        pthread_mutex_unlock(&rq->lock);
    }
    return r;
}

/* Zeroes over part of an object written from a zero buffer: only whole
 * objects go to librbd's write-zeroes (which may punch them). */
static int submit_zero_buffer(struct rbd_state *s, struct rbd_req *rq, uint64_t off,
                              uint64_t len)
{
    int r = 0;

    while (len && r >= 0) {
        uint64_t l = VD_MIN(len, (uint64_t)RBD_ZERO_BUF);
        r = submit(s, rq, OP_WRITE, off, l, (char *)zero_buf);
        off += l;
        len -= l;
    }
    return r;
}

/* Wait for rq's pieces up to the node's timeout; the first failure. */
static int finish(struct rbd_state *s, struct rbd_req *rq, int submit_err)
{
    struct timespec end;
    int r = 0;

    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (time_t)s->timeout;
    pthread_mutex_lock(&rq->lock);
    while (rq->pending && r == 0)
        r = s->timeout ? pthread_cond_timedwait(&rq->cond, &rq->lock, &end)
                       : pthread_cond_wait(&rq->cond, &rq->lock);
    if (rq->pending) {
        rq->abandoned = true;
        atomic_store(&s->dead, true);
        r = -ETIMEDOUT;
    } else {
        r = submit_err < 0 ? submit_err : rq->err;
        if (r == -ETIMEDOUT)       /* the library gave up on the cluster */
            atomic_store(&s->dead, true);
    }
    /* Pieces finished so far are on the list, later ones free themselves. */
    take_reads(s, rq, r == 0);
    req_put(rq);
    return r;
}

/* Is word one of the comma-separated names in list? */
static bool has_flag(const char *list, const char *word)
{
    size_t n = strlen(word);

    for (const char *p = list; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (!strncmp(p, word, n) && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* A write that timed out may have waited on a full pool: Ceph holds
 * writes to a pool the OSD map marks full until it is not.  Ask the
 * monitor; -EDQUOT when the pool's quota is reached, -ENOSPC when the
 * cluster is out of space, else r. */
static int full_pool_error(rados_t c, rados_ioctx_t io, int r)
{
    const char *cmd[] = { "{\"prefix\": \"osd dump\", \"format\": \"json\"}" };
    char pool[256], *out = NULL, *st = NULL;
    size_t outlen = 0, stlen = 0;
    vd_json *dump, *pools;

    if (r != -ETIMEDOUT || rados_ioctx_get_pool_name(io, pool, sizeof(pool)) < 0 ||
        rados_mon_command(c, cmd, 1, "", 0, &out, &outlen, &st, &stlen) < 0)
        return r;
    dump = vd_json_parse(out, outlen);
    rados_buffer_free(out);
    rados_buffer_free(st);
    pools = dump ? vd_json_get(dump, "pools") : NULL;
    for (size_t i = 0; pools && i < vd_json_count(pools); i++) {
        vd_json *p = vd_json_at(pools, i);
        const char *name = vd_json_str(vd_json_get(p, "pool_name"));
        const char *flags = vd_json_str(vd_json_get(p, "flags_names"));

        if (!name || strcmp(name, pool))
            continue;
        if (has_flag(flags, "full_quota"))
            r = -EDQUOT;
        else if (has_flag(flags, "full"))
            r = -ENOSPC;
        break;
    }
    vd_json_free(dump);
    return r;
}

/* A new request (the caller holds one reference). */
static struct rbd_req *req_new(void)
{
    struct rbd_req *rq = calloc(1, sizeof(*rq));
    pthread_condattr_t a;

    if (!rq)
        return NULL;
    pthread_mutex_init(&rq->lock, NULL);
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&rq->cond, &a);
    pthread_condattr_destroy(&a);
    rq->refs = 1;
    return rq;
}

/* Run op over [off, off+len): one piece per object, all in flight. */
static int run_op(struct rbd_state *s, enum rbd_op op, uint64_t off, uint64_t len, char *buf)
{
    struct rbd_req *rq;
    int r = 0;

    if (atomic_load(&s->dead))
        return -ETIMEDOUT;
    if (!(rq = req_new()))
        return -ENOMEM;
    if (op == OP_FLUSH)
        r = submit(s, rq, op, 0, 0, NULL);
    while (len && r >= 0) {
        uint64_t l = VD_MIN(len, s->obj_size - off % s->obj_size);
        if (op == OP_ZERO && l < s->obj_size)
            r = submit_zero_buffer(s, rq, off, l);
        else
            r = submit(s, rq, op, off, l, buf);
        off += l;
        len -= l;
        if (buf)
            buf += l;
    }
    r = finish(s, rq, r);
    return op == OP_READ ? r : full_pool_error(s->cluster, s->io, r);
}

/* A failed request's message. */
static int io_error(const char *what, uint64_t off, uint64_t len, int r)
{
    return vd_error(-r, "rbd: %s at offset %llu, length %llu failed: %s", what,
                    (unsigned long long)off, (unsigned long long)len, strerror(-r));
}

static int vrbd_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    int r = run_op(n->state, OP_READ, off, len, buf);
    return r < 0 ? io_error("read", off, len, r) : 0;
}

static int vrbd_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct rbd_state *s = n->state;
    int r = run_op(s, OP_WRITE, off, len, (char *)buf);

    if (r >= 0 && (flags & VD_REQ_FUA))
        r = run_op(s, OP_FLUSH, 0, 0, NULL);
    return r < 0 ? io_error("write", off, len, r) : 0;
}

static int vrbd_discard(vd_node *n, uint64_t off, uint64_t len)
{
    int r = run_op(n->state, OP_DISCARD, off, len, NULL);
    return r < 0 ? io_error("discard", off, len, r) : 0;
}

static int rbd_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct rbd_state *s = n->state;
    int r;

    r = run_op(s, OP_ZERO, off, len, NULL);
    if (r >= 0 && (flags & VD_REQ_FUA))
        r = run_op(s, OP_FLUSH, 0, 0, NULL);
    return r < 0 ? io_error("write zeroes", off, len, r) : 0;
}

static int rbd_flush_node(vd_node *n)
{
    int r = run_op(n->state, OP_FLUSH, 0, 0, NULL);

    return r < 0 ? vd_error(-r, "rbd: flush failed: %s", strerror(-r)) : 0;
}

static int64_t rbd_getlength(vd_node *n)
{
    struct rbd_state *s = n->state;
    uint64_t size;
    int r = rbd_get_size(s->image, &size);

    if (r < 0)
        return vd_error(-r, "error getting image size from %s: %s", s->image_name,
                        strerror(-r));
    return size > INT64_MAX ? vd_error(EFBIG, "image too large") : (int64_t)size;
}

static int rbd_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct rbd_state *s = n->state;
    int r;

    if (prealloc)
        return vd_error(ENOTSUP, "Unsupported preallocation mode '%s'",
                        prealloc == 1 ? "metadata" : prealloc == 2 ? "falloc" : "full");
    if ((r = rbd_resize(s->image, size)) < 0)
        return vd_error(-r, "failed to resize rbd image: %s", strerror(-r));
    return 0;
}

/* ---- block status ---- */

struct diff_req {
    uint64_t off, bytes;
    bool exists;
};

#define DIFF_STOP (-9000)    /* a callback ends the walk with a negative value */

/* Extend the first run of allocated (or unallocated) bytes from req->off;
 * stop at the first change. */
static int diff_cb(uint64_t off, size_t len, int exists, void *opaque)
{
    struct diff_req *q = opaque;

    if (!exists)
        return 0;
    if (!q->exists && off > q->off) {
        q->bytes = off - q->off;
        return DIFF_STOP;
    }
    if (q->exists && off > q->off + q->bytes)
        return DIFF_STOP;
    q->bytes += len;
    q->exists = true;
    return 0;
}

/* Does the image have fast-diff, default striping and no parent (librbd
 * before 1.17 reports wrong offsets otherwise for unaligned starts)?
 * Asked once at open: these do not change while the image is open. */
static bool diff_layout_ok(struct rbd_state *s)
{
    rbd_linked_image_spec_t parent;
    rbd_snap_spec_t psnap;
    uint64_t features;
    int r;

    if (rbd_get_features(s->image, &features) < 0 || !(features & RBD_FEATURE_FAST_DIFF) ||
        (features & RBD_FEATURE_STRIPINGV2))
        return false;
    r = rbd_get_parent(s->image, &parent, &psnap);
    if (r == 0) {
        rbd_linked_image_spec_cleanup(&parent);
        rbd_snap_spec_cleanup(&psnap);
    }
    return r == -ENOENT;
}

/* Is the object map's fast-diff usable now (not flagged invalid)? */
static bool fast_diff_ok(struct rbd_state *s)
{
    uint64_t fl;

    return s->diff_ok && rbd_get_flags(s->image, &fl) == 0 &&
           !(fl & RBD_FLAG_FAST_DIFF_INVALID);
}

/* Allocated objects read as data, others as zeroes (whole objects, through
 * the object map); without fast-diff, everything is data. */
static int rbd_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, vd_node **file)
{
    struct rbd_state *s = n->state;
    struct diff_req q;
    uint64_t head, bytes;
    int r;

    *map = off;
    *file = n;
    *pnum = len;
    if (!s->obj_size || !fast_diff_ok(s))
        return VD_BS_DATA | VD_BS_OFFSET_VALID;
    head = off % s->obj_size;
    bytes = len + head;
    q = (struct diff_req){ off - head, 0, false };
    r = rbd_diff_iterate2(s->image, NULL, q.off, bytes, 1, 1, diff_cb, &q);
    if (r < 0 && r != DIFF_STOP)
        return VD_BS_DATA | VD_BS_OFFSET_VALID;
    if (!q.exists && r == 0)
        q.bytes = bytes;
    if (q.bytes <= head || q.bytes > bytes)
        return VD_BS_DATA | VD_BS_OFFSET_VALID;
    *pnum = q.bytes - head;
    return q.exists ? VD_BS_DATA | VD_BS_OFFSET_VALID : VD_BS_ZERO | VD_BS_OFFSET_VALID;
}

/* ---- the node's name ---- */

/* QEMU's strong options of an rbd node: any present one goes in the
 * json: name. */
static const char *const strong_opts[] = {
    "pool", "namespace", "image", "conf", "snapshot", "user",
};

/* The bucket of key in QEMU's 512-bucket dictionary hash (its json: key
 * order). */
static unsigned key_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);

    for (unsigned i = 0; key[i]; i++)
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    return (1103515243u * v + 12345u) % 512;
}

/* QEMU's json: name of the node. */
static char *json_name(const vd_opts *o)
{
    const char *keys[VD_ARRAY_SIZE(strong_opts) + 1 + 2 * RBD_MAX_SERVERS];
    size_t nk = 0;
    vd_json *j;
    char *text, *name = NULL;

    keys[nk++] = "driver";
    for (size_t i = 0; i < VD_ARRAY_SIZE(strong_opts); i++)
        if (vd_opts_has(o, strong_opts[i]))
            keys[nk++] = strong_opts[i];
    for (size_t i = 0; i < vd_opts_count(o) && nk < VD_ARRAY_SIZE(keys); i++)
        if (!strncmp(vd_opts_key(o, i), "server.", 7))
            keys[nk++] = vd_opts_key(o, i);
    /* By bucket; within one, the key put last first (QEMU's buckets are
     * lists that take new keys at their head). */
    for (size_t i = 1; i < nk; i++)
        for (size_t k = i; k > 0 && key_bucket(keys[k]) <= key_bucket(keys[k - 1]); k--) {
            const char *t = keys[k];
            keys[k] = keys[k - 1];
            keys[k - 1] = t;
        }
    if (!(j = vd_json_new_object()))
        return NULL;
    for (size_t i = 0; i < nk; i++)
        vd_json_set_str(j, keys[i], !strcmp(keys[i], "driver") ? "rbd"
                        : vd_opts_get(o, keys[i]));
    if ((text = vd_json_to_compact(j)) && asprintf(&name, "json:%s", text) < 0)
        name = NULL;
    free(text);
    vd_json_free(j);
    return name;
}

/* ---- open / close ---- */

/* Options this driver takes (dotted list keys are taken by prefix). */
static const char *const own_opts[] = {
    "pool", "namespace", "image", "conf", "snapshot", "user", "key-secret",
    "password-secret", RBD_KEYPAIRS, "filename",
};

/* Remove the driver's keys from opts. */
static void consume(vd_opts *o)
{
    for (size_t i = 0; i < VD_ARRAY_SIZE(own_opts); i++)
        vd_opts_del(o, own_opts[i]);
    for (size_t i = vd_opts_count(o); i-- > 0;) {
        const char *k = vd_opts_key(o, i);
        if (!strncmp(k, "server.", 7) || !strncmp(k, "auth-client-required.", 21)) {
            char *dup = strdup(k);
            if (dup)
                vd_opts_del(o, dup);
            free(dup);
        }
    }
}

/* A filename option (--image-opts file.filename=rbd:...) gives its keys
 * as the name would. */
static int merge_filename(vd_opts *o)
{
    const char *fn = vd_opts_get(o, "filename");

    if (!fn)
        return 0;
    return vrbd_parse_filename(fn, o);
}

static int vrbd_open(vd_node *n, vd_opts *opts, int flags)
{
    struct rbd_state *s = n->state;
    rbd_image_info_t info;
    const char *image, *snap;
    int r;

    pthread_mutex_init(&s->pool_lock, NULL);
    s->pool_init = true;
    if ((r = merge_filename(opts)) < 0)
        return r;
    if (vd_opts_has(opts, "key-secret") && vd_opts_has(opts, "password-secret"))
        return vd_error(EINVAL, "Legacy 'password-secret' clashes with 'key-secret'");
    if (!(image = vd_opts_get(opts, "image")))
        return vd_error(EINVAL, "Parameter 'image' is missing");
    snap = vd_opts_get(opts, "snapshot");
    if (snap && !n->read_only)
        return vd_error(EROFS, "rbd snapshots are read-only");
    if (!(s->image_name = strdup(image)) || (snap && !(s->snap = strdup(snap))))
        return vd_error(ENOMEM, "out of memory");
    if ((r = connect_pool(s, opts)) < 0)
        return r;
    r = rbd_open(s->io, image, &s->image, snap);
    if (r < 0) {   /* opening registers a watch: a write a full pool holds */
        r = full_pool_error(s->cluster, s->io, r);
        return vd_error(-r, "error reading header from %s: %s", image, strerror(-r));
    }
    s->have_image = true;
    if ((r = rbd_stat(s->image, &info, sizeof(info))) < 0)
        return vd_error(-r, "error getting image info from %s: %s", image, strerror(-r));
    if (!is_power_of_2(info.obj_size))
        return vd_error(EINVAL, "rbd: object size %llu is not a power of two",
                        (unsigned long long)info.obj_size);
    s->obj_size = info.obj_size;
    s->diff_ok = diff_layout_ok(s);
    n->max_transfer = RBD_MAX_XFER;
    free(n->filename);
    if (!(n->filename = json_name(opts)))
        return vd_error(ENOMEM, "out of memory");
    consume(opts);
    return 0;
}

static void rbd_close_node(vd_node *n)
{
    struct rbd_state *s = n->state;

    disconnect(s);
    free(s->image_name);
    free(s->snap);
    for (int i = 0; i < s->npool; i++)
        free(s->pool[i]);
    if (s->pool_init)
        pthread_mutex_destroy(&s->pool_lock);
}

/* The object size, as QEMU's get_info reports it. */
static int64_t rbd_cluster_size(vd_node *n)
{
    struct rbd_state *s = n->state;
    return (int64_t)s->obj_size;
}

static bool rbd_has_zero_init(vd_node *n)
{
    return true;
}

/* ---- snapshots ---- */

static int rbd_snapshot_list(vd_node *n, struct vd_snapshot_info **out)
{
    struct rbd_state *s = n->state;
    rbd_snap_info_t *snaps = NULL;
    int max = 16, count;

    for (;;) {
        free(snaps);
        if (!(snaps = vd_calloc_array((size_t)max, sizeof(*snaps))))
            return vd_error(ENOMEM, "out of memory");
        count = rbd_snap_list(s->image, snaps, &max);
        if (count != -ERANGE)
            break;
        if (max <= 0 || max > 65536) {
            free(snaps);
            return vd_error(EIO, "rbd: too many snapshots");
        }
    }
    if (count <= 0) {
        if (count == 0)
            rbd_snap_list_end(snaps);
        free(snaps);
        return count ? vd_error(-count, "rbd: cannot list snapshots: %s", strerror(-count)) : 0;
    }
    struct vd_snapshot_info *list = vd_calloc_array((size_t)count, sizeof(*list));
    if (!list) {
        rbd_snap_list_end(snaps);
        free(snaps);
        return vd_error(ENOMEM, "out of memory");
    }
    for (int i = 0; i < count; i++) {
        list[i].id = strdup(snaps[i].name);
        list[i].name = strdup(snaps[i].name);
        list[i].vm_state_size = snaps[i].size;
    }
    rbd_snap_list_end(snaps);
    free(snaps);
    *out = list;
    return count;
}

static int rbd_snapshot_create(vd_node *n, const struct vd_snapshot_info *sn)
{
    struct rbd_state *s = n->state;
    int r;

    if ((r = rbd_snap_create(s->image, sn->name)) < 0)
        return vd_error(-r, "failed to create snap: %s", strerror(-r));
    return 0;
}

static int rbd_snapshot_delete(vd_node *n, const char *id, const char *name)
{
    struct rbd_state *s = n->state;
    const char *which = name ? name : id;
    int r;

    if (id && name && strcmp(id, name))
        return vd_error(EINVAL, "rbd need a valid snapshot name");
    if ((r = rbd_snap_remove(s->image, which)) < 0)
        return vd_error(-r, "Failed to remove the snapshot: %s", strerror(-r));
    return 0;
}

static int rbd_snapshot_goto(vd_node *n, const char *id_or_name)
{
    struct rbd_state *s = n->state;
    int r = rbd_snap_rollback(s->image, id_or_name);

    return r < 0 ? vd_error(-r, "rbd: rollback to '%s' failed: %s", id_or_name,
                            strerror(-r)) : 0;
}

/* ---- create ---- */

static int rbd_create_image(const char *filename, vd_opts *opts)
{
    struct rbd_state s = { 0 };
    vd_opts *o = vd_opts_new();
    uint64_t size = 0, objsize = 0;
    int order = 0, r;

    if (!o)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_opts_get_size(opts, "size", 0, &size)) < 0 ||
        (r = vd_opts_get_size(opts, "cluster_size", 0, &objsize)) < 0)
        goto out;
    if (objsize) {
        if (!is_power_of_2(objsize)) {
            r = vd_error(EINVAL, "obj size needs to be power of 2");
            goto out;
        }
        if (objsize < 4096) {
            r = vd_error(EINVAL, "obj size too small");
            goto out;
        }
        order = __builtin_ctzll(objsize);
    }
    if ((r = vrbd_parse_filename(filename, o)) < 0)
        goto out;
    if (vd_opts_has(o, "snapshot")) {
        r = vd_error(EINVAL, "Can't use snapshot name for image creation");
        goto out;
    }
    if ((r = connect_pool(&s, o)) < 0)
        goto out;
    if ((r = rbd_create(s.io, vd_opts_get(o, "image"), size, &order)) < 0) {
        r = full_pool_error(s.cluster, s.io, r);
        r = vd_error(-r, "error rbd create: %s", strerror(-r));
    }
out:
    disconnect(&s);
    vd_opts_free(o);
    return r;
}

static const struct vd_opt_desc rbd_open_opts[] = {
    { "pool", VD_OPT_STRING, "Ceph pool name", NULL },
    { "namespace", VD_OPT_STRING, "Rados namespace name in the Ceph pool", NULL },
    { "image", VD_OPT_STRING, "Image name in the pool", NULL },
    { "conf", VD_OPT_STRING, "Path to Ceph configuration file", NULL },
    { "snapshot", VD_OPT_STRING, "Ceph snapshot name", NULL },
    { "user", VD_OPT_STRING, "Ceph user name", NULL },
    { "key-secret", VD_OPT_STRING, "ID of secret providing the Ceph key", NULL },
    { "password-secret", VD_OPT_STRING, "ID of secret providing the password", NULL },
    { RBD_KEYPAIRS, VD_OPT_STRING, "Legacy rados key/value option parameters", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_opt_desc rbd_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "cluster_size", VD_OPT_SIZE, "RBD object size", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver rbd_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "rbd",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "rbd",
    .state_size = sizeof(struct rbd_state),
    .open_opts = rbd_open_opts,
    .create_opts = rbd_create_opts,
    .parse_filename = vrbd_parse_filename,
    .open = vrbd_open,
    .close = rbd_close_node,
    .pread = vrbd_pread,
    .pwrite = vrbd_pwrite,
    .pwrite_zeroes = rbd_pwrite_zeroes,
    .discard = vrbd_discard,
    .flush = rbd_flush_node,
    .block_status = rbd_block_status,
    .getlength = rbd_getlength,
    .truncate = rbd_truncate,
    .create = rbd_create_image,
    .cluster_size = rbd_cluster_size,
    .has_zero_init = rbd_has_zero_init,
    .snapshot_list = rbd_snapshot_list,
    .snapshot_create = rbd_snapshot_create,
    .snapshot_goto = rbd_snapshot_goto,
    .snapshot_delete = rbd_snapshot_delete,
};
VD_DRIVER_REGISTER(rbd_driver)
