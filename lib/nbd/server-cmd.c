/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD server commands: request validation (command, flags for that
 * command, range with overflow-checked arithmetic, payload size,
 * read-only, contexts) and running one valid request against the export's
 * node, appending its whole reply (every chunk) to a reply buffer.  READ
 * data is read straight into that buffer behind its chunk header, so a
 * reply needs no copy before it is written to the socket.
 *
 * Replies take one of three forms, fixed by the handshake: simple (16-byte
 * header), structured chunks (20 bytes) or, with extended headers, chunks
 * with a 32-byte header that repeats the request's offset and has a 64-bit
 * length; an extended connection never sends a simple reply (success
 * without data is an NBD_REPLY_TYPE_NONE chunk) and reports block status
 * as NBD_REPLY_TYPE_BLOCK_STATUS_EXT (64-bit extent lengths). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nbd/server-int.h"
#include "vdisk/bitmap.h"
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
/* Smallest allocation of a reply buffer. */
#define RBUF_MIN 4096

/* See server-int.h. */
uint8_t *rbuf_room(struct rbuf *b, size_t n)
{
    size_t need, cap;
    uint8_t *p;

    if (ADD_OVERFLOW(b->len, n, &need))
        return NULL;
    if (need <= b->cap)
        return b->p + b->len;
    cap = b->cap < RBUF_MIN ? RBUF_MIN : b->cap;
    while (cap < need)
        if (MUL_OVERFLOW(cap, 2, &cap))
            return NULL;
    if (!(p = realloc(b->p, cap)))
        return NULL;
    b->p = p;
    b->cap = cap;
    return p + b->len;
}

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

/* Write a simple reply header at h. */
static void simple_header(uint8_t *h, uint64_t cookie, uint32_t err)
{
    vd_put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
    vd_put_be32(h + 4, err);
    vd_put_be64(h + 8, cookie);
}

/* Bytes of a chunk header on c: structured or extended. */
static size_t hdr_len(const struct vd_nbd_conn *c)
{
    return c->extended ? sizeof(struct nbd_extended_reply)
                       : sizeof(struct nbd_structured_reply);
}

/* Write the chunk header of q's reply at h for a payload of plen bytes
 * (plen fits 32 bits: payloads are at most NBD_MAX_PAYLOAD plus a chunk's
 * fixed fields). */
static void chunk_header(const struct vd_nbd_conn *c, uint8_t *h, const struct req *q,
                         uint16_t flags, uint16_t type, size_t plen)
{
    vd_put_be32(h, c->extended ? NBD_EXTENDED_REPLY_MAGIC : NBD_STRUCTURED_REPLY_MAGIC);
    vd_put_be16(h + 4, flags);
    vd_put_be16(h + 6, type);
    vd_put_be64(h + 8, q->cookie);
    if (c->extended) {
        vd_put_be64(h + 16, q->off);
        vd_put_be64(h + 24, plen);
    } else {
        vd_put_be32(h + 16, (uint32_t)plen);
    }
}

/* Append one chunk: header, then its payload p. */
static int put_chunk(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                     uint16_t flags, uint16_t type, const void *p, size_t plen)
{
    size_t hl = hdr_len(c);
    uint8_t *h = rbuf_room(o, hl + plen);

    if (!h)
        return -ENOMEM;
    chunk_header(c, h, q, flags, type, plen);
    if (plen)
        memcpy(h + hl, p, plen);
    o->len += hl + plen;
    return 0;
}

/* Append a reply without data: simple, or a final NONE chunk where simple
 * replies are not allowed (extended headers). */
static int put_simple(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                      uint32_t err)
{
    uint8_t *h;

    if (c->extended)
        return put_chunk(c, q, o, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, NULL, 0);
    if (!(h = rbuf_room(o, 16)))
        return -ENOMEM;
    simple_header(h, q->cookie, err);
    o->len += 16;
    return 0;
}

/* See server-int.h: an error chunk with a message, or a simple reply. */
int nbd_put_error(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                  uint32_t err, const char *msg)
{
    uint8_t ph[6 + NBD_MAX_STRING];
    size_t ml = msg ? VD_MIN(strlen(msg), (size_t)NBD_MAX_STRING) : 0;

    if (!c->structured)
        return put_simple(c, q, o, err);
    vd_put_be32(ph, err);
    vd_put_be16(ph + 4, (uint16_t)ml);
    if (ml)
        memcpy(ph + 6, msg, ml);
    return put_chunk(c, q, o, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, ph, 6 + ml);
}

/* Append an error reply that ends q's reply early: 1, or -errno. */
static int put_fail(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                    uint32_t err, const char *msg)
{
    int r = nbd_put_error(c, q, o, err, msg);

    return r < 0 ? r : 1;
}

/* Append the reply to a request with no payload in the answer. */
static int put_status(struct vd_nbd_conn *c, const struct req *q,
                      struct rbuf *o, int r)
{
    if (r < 0)
        return nbd_put_error(c, q, o, nbd_errno(r), vd_errmsg());
    return put_simple(c, q, o, 0);
}

/* Did a read of q fail only because VD_REQ_NOWAIT kept it from waiting? */
static bool nowait_miss(const struct req *q, int r)
{
    return r == -EAGAIN && (q->rflags & VD_REQ_NOWAIT);
}

/* Offset in the node of export offset off (validated in range). */
static uint64_t node_off(const struct vd_nbd_conn *c, uint64_t off)
{
    return c->exp->offset + off;
}

/* Append an OFFSET_DATA chunk for [off, off+len), read into place: 0, or
 * (put_fail) an error chunk instead when the read fails. */
static int put_data(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                    uint64_t off, size_t len, bool last)
{
    size_t hl = hdr_len(c);
    uint8_t *h = rbuf_room(o, hl + 8 + len);
    int r;

    if (!h)
        return put_fail(c, q, o, NBD_ENOMEM, "out of memory");
    if ((r = vd_pread(c->exp->node, node_off(c, off), len, h + hl + 8, q->rflags)) < 0)
        return nowait_miss(q, r) ? r : put_fail(c, q, o, nbd_errno(r), vd_errmsg());
    chunk_header(c, h, q, last ? NBD_REPLY_FLAG_DONE : 0,
                 NBD_REPLY_TYPE_OFFSET_DATA, 8 + len);
    vd_put_be64(h + hl, off);
    o->len += hl + 8 + len;
    return 0;
}

/* Append an OFFSET_HOLE chunk. */
static int put_hole(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                    uint64_t off, uint32_t len, bool last)
{
    uint8_t ph[12];

    vd_put_be64(ph, off);
    vd_put_be32(ph + 8, len);
    return put_chunk(c, q, o, last ? NBD_REPLY_FLAG_DONE : 0,
                     NBD_REPLY_TYPE_OFFSET_HOLE, ph, 12);
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

/* A structured READ split into data and hole chunks; a failed read ends
 * the reply with an error chunk after the chunks before it. */
static int read_sparse(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o)
{
    uint64_t pos = 0;
    int r = 0;

    while (pos < q->len && r == 0) {
        bool hole;
        uint64_t n = next_segment(c, q->off + pos, q->len - pos, &hole);
        bool last = pos + n == q->len;
        if (hole)
            r = put_hole(c, q, o, q->off + pos, (uint32_t)n, last);
        else
            r = put_data(c, q, o, q->off + pos, n, last);
        pos += n;
    }
    return r;
}

/* NBD_CMD_READ. */
static int do_read(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o)
{
    uint8_t *h;
    int r;

    if (c->structured && q->len >= SPARSE_READ_MIN && !(q->flags & NBD_CMD_FLAG_DF))
        return read_sparse(c, q, o);
    if (c->structured && q->len)
        return put_data(c, q, o, q->off, q->len, true);
    if (c->structured)
        return put_chunk(c, q, o, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, NULL, 0);
    if (!(h = rbuf_room(o, 16 + (size_t)q->len)))
        return nbd_put_error(c, q, o, NBD_ENOMEM, "out of memory");
    if ((r = vd_pread(c->exp->node, node_off(c, q->off), q->len, h + 16, q->rflags)) < 0)
        return nowait_miss(q, r) ? r : nbd_put_error(c, q, o, nbd_errno(r), vd_errmsg());
    simple_header(h, q->cookie, 0);
    o->len += 16 + (size_t)q->len;
    return 0;
}

/* VD_REQ_MAY_UNMAP when the export may punch holes. */
static int unmap_flag(const struct vd_nbd_conn *c)
{
    return c->exp->discard_unmap ? VD_REQ_MAY_UNMAP : 0;
}

/* NBD_CMD_WRITE (with detect-zeroes). */
static int do_write(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o)
{
    const struct vd_nbd_export *e = c->exp;
    int fua = q->flags & NBD_CMD_FLAG_FUA ? VD_REQ_FUA : 0, r;

    if (e->detect_zeroes != VD_NBD_DZ_OFF && buffer_is_zero(q->data, q->len)) {
        int f = fua | (e->detect_zeroes == VD_NBD_DZ_UNMAP ? unmap_flag(c) : 0);
        r = vd_pwrite_zeroes(e->node, node_off(c, q->off), q->len, f);
    } else {
        r = vd_pwrite(e->node, node_off(c, q->off), q->len, q->data, fua);
    }
    return put_status(c, q, o, r);
}

/* NBD_CMD_WRITE_ZEROES: FAST_ZERO fails with ENOTSUP rather than write. */
static int do_write_zeroes(struct vd_nbd_conn *c, const struct req *q,
                           struct rbuf *o)
{
    int f = 0, r;

    if (!(q->flags & NBD_CMD_FLAG_NO_HOLE))
        f |= unmap_flag(c);
    if (q->flags & NBD_CMD_FLAG_FAST_ZERO)
        f |= VD_REQ_NO_FALLBACK;
    r = vd_pwrite_zeroes(c->exp->node, node_off(c, q->off), q->len, f);
    if (r >= 0 && (q->flags & NBD_CMD_FLAG_FUA))
        r = vd_flush(c->exp->node);
    return put_status(c, q, o, r);
}

/* NBD_CMD_TRIM: advisory; ignored unless --discard=unmap. */
static int do_trim(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o)
{
    int r = 0;

    if (c->exp->discard_unmap)
        r = vd_discard(c->exp->node, node_off(c, q->off), q->len);
    if (r >= 0 && (q->flags & NBD_CMD_FLAG_FUA))
        r = vd_flush(c->exp->node);
    return put_status(c, q, o, r);
}

/* NBD_CMD_CACHE: read the range ahead, a chunk at a time. */
static int do_cache(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o)
{
    CLEANUP_FREE char *buf = malloc(CACHE_CHUNK);
    uint64_t pos = 0;
    int r = 0;

    if (!buf)
        return nbd_put_error(c, q, o, NBD_ENOMEM, "out of memory");
    while (pos < q->len && r >= 0) {
        uint64_t n = VD_MIN((uint64_t)q->len - pos, (uint64_t)CACHE_CHUNK);
        r = vd_pread(c->exp->node, node_off(c, q->off + pos), n, buf, 0);
        pos += n;
    }
    return put_status(c, q, o, r);
}

/* The status of [off, off+len) of the export in context id: the flags of
 * its first extent in *fl, its length in *pnum (1..len); -errno. */
static int context_status(struct vd_nbd_conn *c, uint32_t id, uint64_t off, uint64_t len,
                          uint32_t *fl, uint64_t *pnum)
{
    int depth, st;

    if (id >= CTX_ID_BITMAP) {
        const struct vd_nbd_bitmap *b = &c->exp->bitmaps[id - CTX_ID_BITMAP];
        bool dirty;
        st = vd_bitmap_status(b->node, b->name, node_off(c, off), len, &dirty, pnum);
        *fl = dirty ? NBD_STATE_DIRTY : 0;
    } else {
        st = vd_block_status_above(c->exp->node, node_off(c, off), len, pnum, NULL, NULL,
                                   &depth);
        if (id == CTX_ID_DEPTH)
            *fl = st & VD_BS_ALLOCATED ? (uint32_t)depth + 1 : 0;
        else
            *fl = (st & VD_BS_DATA ? 0 : NBD_STATE_HOLE) | (st & VD_BS_ZERO ? NBD_STATE_ZERO : 0);
    }
    if (st < 0)
        return st;
    if (*pnum == 0 || *pnum > len)
        return vd_error(EIO, "no block status");
    return 0;
}

/* Bytes of one block status descriptor on c: (length, flags) as 32-bit
 * fields, or as 64-bit ones with extended headers. */
static size_t desc_len(const struct vd_nbd_conn *c)
{
    return c->extended ? 16 : 8;
}

/* Store descriptor (len, fl) at e. */
static void put_desc(const struct vd_nbd_conn *c, uint8_t *e, uint64_t len, uint32_t fl)
{
    if (c->extended) {
        vd_put_be64(e, len);
        vd_put_be64(e + 8, fl);
    } else {
        vd_put_be32(e, (uint32_t)len);
        vd_put_be32(e + 4, fl);
    }
}

/* The length and flags of descriptor e. */
static uint64_t desc_get(const struct vd_nbd_conn *c, const uint8_t *e, uint32_t *fl)
{
    if (c->extended) {
        *fl = (uint32_t)vd_get_be64(e + 8);
        return vd_get_be64(e);
    }
    *fl = vd_get_be32(e + 4);
    return vd_get_be32(e);
}

/* Append (length, flags) for one extent to the n already at o->p + at,
 * merging with the last one when the flags match (merged lengths stay
 * within the request, so they fit a compact descriptor); the new count,
 * or -1 when REQ_ONE stops here, or -ENOMEM. */
static int add_extent(const struct vd_nbd_conn *c, const struct req *q, struct rbuf *o,
                      size_t at, int n, uint64_t len, uint32_t fl)
{
    size_t ds = desc_len(c);
    uint8_t *last = o->p + at + ds * (size_t)(n - 1);
    uint32_t lfl;

    if (n) {
        uint64_t llen = desc_get(c, last, &lfl);
        if (lfl == fl) {
            put_desc(c, last, llen + len, fl);
            return n;
        }
        if (q->flags & NBD_CMD_FLAG_REQ_ONE)
            return -1;
    }
    if (!rbuf_room(o, at + ds * (size_t)(n + 1) - o->len))
        return -ENOMEM;
    put_desc(c, o->p + at + ds * (size_t)n, len, fl);
    return n + 1;
}

/* Extents for a context written at o->p + at (beyond o->len); the count
 * or -errno. */
static int collect_extents(struct vd_nbd_conn *c, const struct req *q,
                           uint32_t id, struct rbuf *o, size_t at)
{
    uint64_t pos = 0;
    int n = 0;

    while (pos < q->len && n < MAX_EXTENTS) {
        uint64_t pnum;
        uint32_t fl;
        int k, st = context_status(c, id, q->off + pos, q->len - pos, &fl, &pnum);
        if (st == -EIO && n)
            break;
        if (st < 0)
            return n ? n : st;
        k = add_extent(c, q, o, at, n, pnum, fl);
        if (k == -1)
            break;
        if (k < 0)
            return k;
        n = k;
        pos += pnum;
    }
    return n;
}

/* Append one status chunk for a context (BLOCK_STATUS, or BLOCK_STATUS_EXT
 * with its descriptor count): 0, or (put_fail) an error chunk instead. */
static int put_extents(struct vd_nbd_conn *c, const struct req *q, uint32_t id,
                       bool last, struct rbuf *o)
{
    size_t fixed = c->extended ? 8 : 4, at = o->len + hdr_len(c) + fixed;
    size_t plen;
    uint8_t *h;
    int n;

    if (!rbuf_room(o, at - o->len + desc_len(c)))
        return put_fail(c, q, o, NBD_ENOMEM, "out of memory");
    n = collect_extents(c, q, id, o, at);
    if (n < 0)
        return put_fail(c, q, o, nbd_errno(n), vd_errmsg());
    if (n == 0)
        return put_fail(c, q, o, NBD_EIO, "no block status");
    plen = fixed + desc_len(c) * (size_t)n;
    h = o->p + o->len;
    chunk_header(c, h, q, last ? NBD_REPLY_FLAG_DONE : 0,
                 c->extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT : NBD_REPLY_TYPE_BLOCK_STATUS,
                 plen);
    h += hdr_len(c);
    vd_put_be32(h, id);
    if (c->extended)
        vd_put_be32(h + 4, (uint32_t)n);
    o->len += hdr_len(c) + plen;
    return 0;
}

/* NBD_CMD_BLOCK_STATUS: one chunk per context asked for (all selected
 * ones, or those the payload named), in id order. */
static int do_block_status(struct vd_nbd_conn *c, const struct req *q,
                           struct rbuf *o)
{
    uint64_t want = c->meta & q->ctx;
    int r = 0;

    for (uint32_t id = 0; r == 0 && id < 64; id++) {
        uint64_t bit = 1ull << id;
        if (want & bit)
            r = put_extents(c, q, id, !(want & ~(bit | (bit - 1))), o);
    }
    return r;
}

/* Run q: 0, 1 when the reply ended with an error chunk, -errno. */
static int run_cmd(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o)
{
    switch (q->type) {
    case NBD_CMD_READ: return do_read(c, q, o);
    case NBD_CMD_WRITE: return do_write(c, q, o);
    case NBD_CMD_FLUSH: return put_status(c, q, o, vd_flush(c->exp->node));
    case NBD_CMD_TRIM: return do_trim(c, q, o);
    case NBD_CMD_CACHE: return do_cache(c, q, o);
    case NBD_CMD_WRITE_ZEROES: return do_write_zeroes(c, q, o);
    case NBD_CMD_BLOCK_STATUS: return do_block_status(c, q, o);
    default: return nbd_put_error(c, q, o, NBD_EINVAL, "invalid command");
    }
}

/* See server-int.h. */
int nbd_run(struct vd_nbd_conn *c, const struct req *q, struct rbuf *o)
{
    size_t start = o->len;
    int r = run_cmd(c, q, o);

    if (nowait_miss(q, r))
        o->len = start;
    return r < 0 ? r : 0;
}

/* Flags each command accepts besides FUA (valid on all).  With extended
 * headers WRITE carries its data as a payload and BLOCK_STATUS may carry
 * a list of context ids as one (NBD_FLAG_BLOCK_STAT_PAYLOAD). */
static uint16_t allowed_flags(const struct vd_nbd_conn *c, uint16_t type)
{
    uint16_t payload = c->extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0;

    switch (type) {
    case NBD_CMD_READ: return c->structured ? NBD_CMD_FLAG_DF : 0;
    case NBD_CMD_WRITE: return payload;
    case NBD_CMD_WRITE_ZEROES: return NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS: return NBD_CMD_FLAG_REQ_ONE | payload;
    default: return 0;
    }
}

/* See server-int.h. */
uint32_t nbd_validate(const struct vd_nbd_conn *c, const struct req *q,
                      const char **msg)
{
    const struct vd_nbd_export *e = c->exp;
    bool writes = q->type == NBD_CMD_WRITE || q->type == NBD_CMD_WRITE_ZEROES ||
                  q->type == NBD_CMD_TRIM;

    *msg = "invalid request";
    if (q->type > NBD_CMD_BLOCK_STATUS || q->type == NBD_CMD_DISC)
        return *msg = "unsupported command", NBD_EINVAL;
    if (q->payload && q->type != NBD_CMD_WRITE)
        return *msg = "this command takes no payload", NBD_EINVAL;
    if (q->flags & ~(NBD_CMD_FLAG_FUA | allowed_flags(c, q->type)))
        return *msg = "unsupported flags for this command", NBD_EINVAL;
    if (writes && e->read_only)
        return *msg = "export is read-only", NBD_EPERM;
    if ((q->type == NBD_CMD_READ || q->type == NBD_CMD_WRITE) &&
        q->len > NBD_MAX_PAYLOAD)
        return *msg = "request length exceeds the maximum payload",
               q->type == NBD_CMD_READ && c->structured ? NBD_EOVERFLOW : NBD_EINVAL;
    if (q->type == NBD_CMD_BLOCK_STATUS && !c->meta)
        return *msg = "no metadata context negotiated", NBD_EINVAL;
    if (q->type == NBD_CMD_BLOCK_STATUS && q->len == 0)
        return *msg = "block status of zero length", NBD_EINVAL;
    if (q->type != NBD_CMD_FLUSH && !range_ok(q->off, q->len, e->size))
        return *msg = "request beyond the end of the export",
               q->type == NBD_CMD_WRITE || q->type == NBD_CMD_WRITE_ZEROES
               ? NBD_ENOSPC : NBD_EINVAL;
    return 0;
}
