/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD server transmission phase.  A reader thread (the connection's own)
 * reads each request, validates it completely (command, flags for that
 * command, range with overflow-checked arithmetic, payload size, read-only,
 * contexts) and reads its payload; valid requests run on the connection's
 * worker threads and reply under the send lock, so many requests are in
 * flight at once but replies never interleave mid-chunk.  The reader stops
 * reading above CONN_MAX_INFLIGHT requests or CONN_MAX_INFLIGHT_BYTES. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "nbd/server-int.h"
#include "nbd/wire.h"
#include "util/checked.h"

/* Extents per NBD_REPLY_TYPE_BLOCK_STATUS chunk at most. */
#define MAX_EXTENTS 65536
/* Structured reads shorter than this are sent as one data chunk without
 * asking for block status first (hole chunks are an optimisation the spec
 * leaves to the server; for small reads the lookup costs more than the
 * zeroes it saves). */
#define SPARSE_READ_MIN 65536
/* Buffer used by CACHE, which reads and drops. */
#define CACHE_CHUNK (1u << 20)

#define CTX_ID_BASE  0
#define CTX_ID_DEPTH 1

struct req {
    struct vd_nbd_conn *c;
    uint16_t flags, type;
    uint64_t cookie, off;          /* off: in the export */
    uint32_t len;
    uint64_t bytes;                /* buffered bytes counted in flight */
    void *buf;                     /* WRITE payload */
};

/* The NBD error for a -errno from libvdisk. */
static uint32_t nbd_errno(int err)
{
    switch (err < 0 ? -err : err) {
    case 0: return NBD_SUCCESS;
    case EPERM: case EROFS: return NBD_EPERM;
    case EIO: return NBD_EIO;
    case ENOMEM: return NBD_ENOMEM;
    case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EINVAL;
    }
}

/* A send failed: the connection is done; wake the reader. */
static int conn_fail(struct vd_nbd_conn *c, int r)
{
    atomic_store(&c->dead, true);
    shutdown(c->fd, SHUT_RDWR);
    return r;
}

/* Send under the send lock. */
static int send_locked(struct vd_nbd_conn *c, const void *h, size_t hlen,
                       const void *d, size_t dlen)
{
    int r;

    if (atomic_load(&c->dead))
        return -EPIPE;
    pthread_mutex_lock(&c->send_lock);
    r = conn_write2(c, h, hlen, d, dlen);
    pthread_mutex_unlock(&c->send_lock);
    return r < 0 ? conn_fail(c, r) : 0;
}

/* A simple reply, with data (READ) on success. */
static int send_simple(struct vd_nbd_conn *c, uint64_t cookie, uint32_t err,
                       const void *data, size_t dlen)
{
    uint8_t h[16];

    vd_put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
    vd_put_be32(h + 4, err);
    vd_put_be64(h + 8, cookie);
    return send_locked(c, h, sizeof(h), err ? NULL : data, err ? 0 : dlen);
}

/* One structured chunk: header, then ph (fixed part of the payload), then
 * data. */
static int send_chunk(struct vd_nbd_conn *c, uint64_t cookie, uint16_t flags,
                      uint16_t type, const void *ph, size_t phlen,
                      const void *data, size_t dlen)
{
    uint8_t h[20 + 16];

    vd_put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
    vd_put_be16(h + 4, flags);
    vd_put_be16(h + 6, type);
    vd_put_be64(h + 8, cookie);
    vd_put_be32(h + 16, (uint32_t)(phlen + dlen));
    memcpy(h + 20, ph, phlen);
    return send_locked(c, h, 20 + phlen, data, dlen);
}

/* Final error for r: an error chunk with a message, or a simple reply. */
static int send_error(struct vd_nbd_conn *c, const struct req *q, uint32_t err,
                      const char *msg)
{
    uint8_t ph[6];
    size_t ml = msg ? VD_MIN(strlen(msg), (size_t)NBD_MAX_STRING) : 0;

    if (!c->structured)
        return send_simple(c, q->cookie, err, NULL, 0);
    vd_put_be32(ph, err);
    vd_put_be16(ph + 4, (uint16_t)ml);
    return send_chunk(c, q->cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                      ph, sizeof(ph), msg, ml);
}

/* Reply to a request with no payload in the answer: success or error. */
static int send_status(struct vd_nbd_conn *c, const struct req *q, int r)
{
    if (r < 0)
        return send_error(c, q, nbd_errno(r), vd_errmsg());
    return send_simple(c, q->cookie, 0, NULL, 0);
}

/* Offset in the node of export offset off (validated in range). */
static uint64_t node_off(const struct vd_nbd_conn *c, uint64_t off)
{
    return c->exp->offset + off;
}

/* One OFFSET_DATA chunk. */
static int send_data(struct vd_nbd_conn *c, const struct req *q, uint64_t off,
                     const void *data, size_t len, bool last)
{
    uint8_t ph[8];

    vd_put_be64(ph, off);
    return send_chunk(c, q->cookie, last ? NBD_REPLY_FLAG_DONE : 0,
                      NBD_REPLY_TYPE_OFFSET_DATA, ph, 8, data, len);
}

/* One OFFSET_HOLE chunk. */
static int send_hole(struct vd_nbd_conn *c, const struct req *q, uint64_t off,
                     uint32_t len, bool last)
{
    uint8_t ph[12];

    vd_put_be64(ph, off);
    vd_put_be32(ph + 8, len);
    return send_chunk(c, q->cookie, last ? NBD_REPLY_FLAG_DONE : 0,
                      NBD_REPLY_TYPE_OFFSET_HOLE, ph, 12, NULL, 0);
}

/* Is [off, off+len) of the export known to read as zeroes?  *pnum: the
 * bytes from off sharing the answer (all of len on error: data). */
static bool status_zero(struct vd_nbd_conn *c, uint64_t off, uint64_t len,
                        uint64_t *pnum)
{
    int depth, st = vd_block_status_above(c->exp->node, node_off(c, off), len,
                                          pnum, NULL, NULL, &depth);

    if (st < 0 || *pnum == 0 || *pnum > len) {
        *pnum = len;
        return false;
    }
    return st & VD_BS_ZERO;
}

/* The run of same-kind (hole or data) extents starting at off. */
static uint64_t next_segment(struct vd_nbd_conn *c, uint64_t off, uint64_t len,
                             bool *hole)
{
    uint64_t n = 0, pnum;

    *hole = status_zero(c, off, len, &pnum);
    n = pnum;
    while (n < len) {
        if (status_zero(c, off + n, len - n, &pnum) != *hole)
            break;
        n += pnum;
    }
    return n;
}

/* A structured READ split into data and hole chunks. */
static int read_sparse(struct vd_nbd_conn *c, const struct req *q, char *buf)
{
    uint64_t pos = 0;
    int r = 0;

    while (pos < q->len && r == 0) {
        bool hole;
        uint64_t n = next_segment(c, q->off + pos, q->len - pos, &hole);
        bool last = pos + n == q->len;
        if (hole) {
            r = send_hole(c, q, q->off + pos, (uint32_t)n, last);
        } else if ((r = vd_pread(c->exp->node, node_off(c, q->off + pos), n,
                                 buf + pos, 0)) < 0) {
            return send_error(c, q, nbd_errno(r), vd_errmsg());
        } else {
            r = send_data(c, q, q->off + pos, buf + pos, n, last);
        }
        pos += n;
    }
    return r;
}

/* NBD_CMD_READ. */
static int do_read(struct vd_nbd_conn *c, const struct req *q)
{
    CLEANUP_FREE char *buf = malloc(q->len ? q->len : 1);
    int r;

    if (!buf)
        return send_error(c, q, NBD_ENOMEM, "out of memory");
    if (c->structured && q->len >= SPARSE_READ_MIN && !(q->flags & NBD_CMD_FLAG_DF))
        return read_sparse(c, q, buf);
    r = vd_pread(c->exp->node, node_off(c, q->off), q->len, buf, 0);
    if (r < 0)
        return send_error(c, q, nbd_errno(r), vd_errmsg());
    if (!c->structured)
        return send_simple(c, q->cookie, 0, buf, q->len);
    if (!q->len)
        return send_chunk(c, q->cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                          NULL, 0, NULL, 0);
    return send_data(c, q, q->off, buf, q->len, true);
}

/* VD_REQ_MAY_UNMAP when the export may punch holes. */
static int unmap_flag(const struct vd_nbd_conn *c)
{
    return c->exp->discard_unmap ? VD_REQ_MAY_UNMAP : 0;
}

/* NBD_CMD_WRITE (with detect-zeroes). */
static int do_write(struct vd_nbd_conn *c, const struct req *q)
{
    const struct vd_nbd_export *e = c->exp;
    int fua = q->flags & NBD_CMD_FLAG_FUA ? VD_REQ_FUA : 0, r;

    if (e->detect_zeroes != VD_NBD_DZ_OFF && buffer_is_zero(q->buf, q->len)) {
        int f = fua | (e->detect_zeroes == VD_NBD_DZ_UNMAP ? unmap_flag(c) : 0);
        r = vd_pwrite_zeroes(e->node, node_off(c, q->off), q->len, f);
    } else {
        r = vd_pwrite(e->node, node_off(c, q->off), q->len, q->buf, fua);
    }
    return send_status(c, q, r);
}

/* NBD_CMD_WRITE_ZEROES: FAST_ZERO fails with ENOTSUP rather than write. */
static int do_write_zeroes(struct vd_nbd_conn *c, const struct req *q)
{
    int f = 0, r;

    if (!(q->flags & NBD_CMD_FLAG_NO_HOLE))
        f |= unmap_flag(c);
    if (q->flags & NBD_CMD_FLAG_FAST_ZERO)
        f |= VD_REQ_NO_FALLBACK;
    r = vd_pwrite_zeroes(c->exp->node, node_off(c, q->off), q->len, f);
    if (r >= 0 && (q->flags & NBD_CMD_FLAG_FUA))
        r = vd_flush(c->exp->node);
    return send_status(c, q, r);
}

/* NBD_CMD_TRIM: advisory; ignored unless --discard=unmap. */
static int do_trim(struct vd_nbd_conn *c, const struct req *q)
{
    int r = 0;

    if (c->exp->discard_unmap)
        r = vd_discard(c->exp->node, node_off(c, q->off), q->len);
    if (r >= 0 && (q->flags & NBD_CMD_FLAG_FUA))
        r = vd_flush(c->exp->node);
    return send_status(c, q, r);
}

/* NBD_CMD_CACHE: read the range ahead, a chunk at a time. */
static int do_cache(struct vd_nbd_conn *c, const struct req *q)
{
    CLEANUP_FREE char *buf = malloc(CACHE_CHUNK);
    uint64_t pos = 0;
    int r = 0;

    if (!buf)
        return send_error(c, q, NBD_ENOMEM, "out of memory");
    while (pos < q->len && r >= 0) {
        uint64_t n = VD_MIN((uint64_t)q->len - pos, (uint64_t)CACHE_CHUNK);
        r = vd_pread(c->exp->node, node_off(c, q->off + pos), n, buf, 0);
        pos += n;
    }
    return send_status(c, q, r);
}

/* The flags of one extent in a context. */
static uint32_t extent_flags(bool depth_ctx, int st, int depth)
{
    if (depth_ctx)
        return st & VD_BS_ALLOCATED ? (uint32_t)depth + 1 : 0;
    return (st & VD_BS_DATA ? 0 : NBD_STATE_HOLE) | (st & VD_BS_ZERO ? NBD_STATE_ZERO : 0);
}

/* Fill ext (pairs of length, flags) for a context; the count or -errno. */
static int collect_extents(struct vd_nbd_conn *c, const struct req *q,
                           bool depth_ctx, uint8_t *ext)
{
    uint64_t pos = 0;
    int n = 0;

    while (pos < q->len && n < MAX_EXTENTS) {
        uint64_t pnum;
        int depth, st = vd_block_status_above(c->exp->node, node_off(c, q->off + pos),
                                              q->len - pos, &pnum, NULL, NULL, &depth);
        uint32_t fl;
        if (st < 0)
            return n ? n : st;
        if (pnum == 0 || pnum > q->len - pos)
            break;
        fl = extent_flags(depth_ctx, st, depth);
        if (n && vd_get_be32(ext + 8 * (n - 1) + 4) == fl) {
            uint32_t l = vd_get_be32(ext + 8 * (n - 1));
            vd_put_be32(ext + 8 * (n - 1), l + (uint32_t)pnum);
        } else if (n && (q->flags & NBD_CMD_FLAG_REQ_ONE)) {
            break;
        } else {
            vd_put_be32(ext + 8 * n, (uint32_t)pnum);
            vd_put_be32(ext + 8 * n + 4, fl);
            n++;
        }
        pos += pnum;
    }
    return n;
}

/* One BLOCK_STATUS chunk for a context. */
static int send_extents(struct vd_nbd_conn *c, const struct req *q, bool depth_ctx,
                        bool last, uint8_t *ext)
{
    uint8_t ph[4];
    int n = collect_extents(c, q, depth_ctx, ext);

    if (n < 0)
        return send_error(c, q, nbd_errno(n), vd_errmsg());
    if (n == 0)
        return send_error(c, q, NBD_EIO, "no block status");
    vd_put_be32(ph, depth_ctx ? CTX_ID_DEPTH : CTX_ID_BASE);
    return send_chunk(c, q->cookie, last ? NBD_REPLY_FLAG_DONE : 0,
                      NBD_REPLY_TYPE_BLOCK_STATUS, ph, 4, ext, 8 * (size_t)n);
}

/* NBD_CMD_BLOCK_STATUS: one chunk per selected context. */
static int do_block_status(struct vd_nbd_conn *c, const struct req *q)
{
    CLEANUP_FREE uint8_t *ext = malloc(8 * (size_t)MAX_EXTENTS);
    int r = 0;

    if (!ext)
        return send_error(c, q, NBD_ENOMEM, "out of memory");
    if (c->meta_base)
        r = send_extents(c, q, false, !c->meta_depth, ext);
    if (r == 0 && c->meta_depth)
        r = send_extents(c, q, true, true, ext);
    return r;
}

/* Run one validated request and reply. */
static int dispatch(struct vd_nbd_conn *c, const struct req *q)
{
    switch (q->type) {
    case NBD_CMD_READ: return do_read(c, q);
    case NBD_CMD_WRITE: return do_write(c, q);
    case NBD_CMD_FLUSH: return send_status(c, q, vd_flush(c->exp->node));
    case NBD_CMD_TRIM: return do_trim(c, q);
    case NBD_CMD_CACHE: return do_cache(c, q);
    case NBD_CMD_WRITE_ZEROES: return do_write_zeroes(c, q);
    case NBD_CMD_BLOCK_STATUS: return do_block_status(c, q);
    default: return send_error(c, q, NBD_EINVAL, "invalid command");
    }
}

static void count_out(struct vd_nbd_conn *c, uint64_t bytes);

/* Worker job: run the request, free it, count it out of flight. */
static void run_request(void *opaque)
{
    struct req *q = opaque;
    struct vd_nbd_conn *c = q->c;

    vd_error_clear();
    dispatch(c, q);
    count_out(c, q->bytes);
    free(q->buf);
    free(q);
}

/* Flags each command accepts besides FUA (valid on all). */
static uint16_t allowed_flags(const struct vd_nbd_conn *c, uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ: return c->structured ? NBD_CMD_FLAG_DF : 0;
    case NBD_CMD_WRITE_ZEROES: return NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS: return NBD_CMD_FLAG_REQ_ONE;
    default: return 0;
    }
}

/* Check a request before anything runs it: 0 or the NBD error, with a
 * message in *msg. */
static uint32_t validate(const struct vd_nbd_conn *c, const struct req *q,
                         const char **msg)
{
    const struct vd_nbd_export *e = c->exp;
    bool writes = q->type == NBD_CMD_WRITE || q->type == NBD_CMD_WRITE_ZEROES ||
                  q->type == NBD_CMD_TRIM;

    *msg = "invalid request";
    if (q->type > NBD_CMD_BLOCK_STATUS || q->type == NBD_CMD_DISC)
        return *msg = "unsupported command", NBD_EINVAL;
    if (q->flags & ~(NBD_CMD_FLAG_FUA | allowed_flags(c, q->type)))
        return *msg = "unsupported flags for this command", NBD_EINVAL;
    if (writes && e->read_only)
        return *msg = "export is read-only", NBD_EPERM;
    if ((q->type == NBD_CMD_READ || q->type == NBD_CMD_WRITE) &&
        q->len > NBD_MAX_PAYLOAD)
        return *msg = "request length exceeds the maximum payload",
               q->type == NBD_CMD_READ && c->structured ? NBD_EOVERFLOW : NBD_EINVAL;
    if (q->type == NBD_CMD_BLOCK_STATUS && !(c->meta_base || c->meta_depth))
        return *msg = "no metadata context negotiated", NBD_EINVAL;
    if (q->type == NBD_CMD_BLOCK_STATUS && q->len == 0)
        return *msg = "block status of zero length", NBD_EINVAL;
    if (q->type != NBD_CMD_FLUSH && !range_ok(q->off, q->len, e->size))
        return *msg = "request beyond the end of the export",
               q->type == NBD_CMD_WRITE || q->type == NBD_CMD_WRITE_ZEROES
               ? NBD_ENOSPC : NBD_EINVAL;
    return 0;
}

/* Wait for room for bytes more in flight; false when the connection died. */
static bool wait_room(struct vd_nbd_conn *c, uint64_t bytes)
{
    bool ok;

    pthread_mutex_lock(&c->lock);
    while (c->inflight && (c->inflight >= CONN_MAX_INFLIGHT ||
                           c->inflight_bytes + bytes > CONN_MAX_INFLIGHT_BYTES) &&
           !atomic_load(&c->dead))
        pthread_cond_wait(&c->cond, &c->lock);
    ok = !atomic_load(&c->dead);
    if (ok) {
        c->inflight++;
        c->inflight_bytes += bytes;
    }
    pthread_mutex_unlock(&c->lock);
    return ok;
}

/* Wait until every request in flight has replied. */
static void drain(struct vd_nbd_conn *c)
{
    pthread_mutex_lock(&c->lock);
    while (c->inflight)
        pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
}

/* Decode a request header. */
static void parse_request(const uint8_t *h, struct req *q)
{
    q->flags = vd_get_be16(h + 4);
    q->type = vd_get_be16(h + 6);
    q->cookie = vd_get_be64(h + 8);
    q->off = vd_get_be64(h + 16);
    q->len = vd_get_be32(h + 24);
}

/* Refuse a request: drop its write payload, then reply with the error. */
static int refuse(struct vd_nbd_conn *c, const struct req *q, uint32_t err,
                  const char *msg)
{
    int r;

    if (q->type == NBD_CMD_WRITE && (r = conn_discard(c, q->len)) < 0)
        return r;
    return send_error(c, q, err, msg);
}

/* Count a request that will not run out of flight again. */
static void count_out(struct vd_nbd_conn *c, uint64_t bytes)
{
    pthread_mutex_lock(&c->lock);
    c->inflight--;
    c->inflight_bytes -= bytes;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* Read a valid request's payload and hand it to a worker: 1 when the
 * worker owns q, -errno (the caller frees q) otherwise. */
static int submit(struct vd_nbd_conn *c, struct req *q)
{
    int r;

    q->bytes = q->type == NBD_CMD_READ || q->type == NBD_CMD_WRITE ? q->len : 0;
    if (!wait_room(c, q->bytes))
        return -EPIPE;
    if (q->type == NBD_CMD_WRITE) {
        q->buf = malloc(q->len ? q->len : 1);
        r = q->buf ? conn_read(c, q->buf, q->len) : vd_error(ENOMEM, "out of memory");
        if (r < 0) {
            count_out(c, q->bytes);
            return r;
        }
    }
    q->c = c;
    if (vd_threadpool_submit(c->pool, run_request, q) < 0)
        run_request(q);
    return 1;
}

/* Read and handle one request: 1 to go on, 0 at the end, -errno. */
static int handle_one(struct vd_nbd_conn *c)
{
    uint8_t h[28];
    const char *msg;
    struct req *q;
    uint32_t err;
    int r;

    if ((r = conn_read(c, h, sizeof(h))) < 0)
        return r == -ECONNRESET || atomic_load(&c->srv->shutdown) ? 0 : r;
    if (vd_get_be32(h) != NBD_REQUEST_MAGIC)
        return vd_error(EINVAL, "invalid request magic 0x%08x", vd_get_be32(h));
    if (!(q = calloc(1, sizeof(*q))))
        return vd_error(ENOMEM, "out of memory");
    parse_request(h, q);
    if (q->type == NBD_CMD_DISC) {
        free(q);
        return 0;
    }
    if ((err = validate(c, q, &msg))) {
        r = refuse(c, q, err, msg);
        free(q);
        return r < 0 ? r : 1;
    }
    if ((r = submit(c, q)) < 0) {
        free(q->buf);
        free(q);
    }
    return r;
}

/* See server-int.h. */
int nbd_transmission(struct vd_nbd_conn *c)
{
    int r;

    if (!(c->pool = vd_threadpool_new(c->srv->workers)))
        return vd_error(ENOMEM, "cannot start request threads");
    while ((r = handle_one(c)) > 0 && !atomic_load(&c->dead))
        ;
    drain(c);
    vd_threadpool_free(c->pool);
    c->pool = NULL;
    if (r == -ECONNRESET || atomic_load(&c->dead))
        r = 0;
    return r;
}
