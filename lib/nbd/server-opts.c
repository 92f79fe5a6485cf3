/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD server handshake: the fixed newstyle greeting and the option haggling
 * (EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO, STRUCTURED_REPLY,
 * LIST_META_CONTEXT, SET_META_CONTEXT, EXTENDED_HEADERS).  Every length
 * a client sends is checked against the payload it came with before
 * anything is parsed; strings are at most NBD_MAX_STRING bytes; payloads
 * are read whole only up to OPT_MAX_READ, skipped up to OPT_MAX_SKIP, and
 * beyond that the client is dropped. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd/server-int.h"
#include "util/checked.h"
#include "nbd/wire.h"

/* Results of one option besides -errno. */
enum { OPT_NEXT, OPT_TRANSMIT, OPT_ABORT };

/* Send one option reply with an optional payload. */
static int opt_reply(struct vd_nbd_conn *c, uint32_t opt, uint32_t type,
                     const void *data, uint32_t len)
{
    uint8_t h[20];

    vd_put_be64(h, NBD_REP_MAGIC);
    vd_put_be32(h + 8, opt);
    vd_put_be32(h + 12, type);
    vd_put_be32(h + 16, len);
    return conn_write2(c, h, sizeof(h), data, len);
}

/* Send an error reply whose payload is a message for humans. */
__attribute__((format(printf, 4, 5)))
static int opt_error(struct vd_nbd_conn *c, uint32_t opt, uint32_t type,
                     const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;
    return opt_reply(c, opt, type, msg, (uint32_t)n);
}

/* Skip an option's payload and answer it with an error. */
__attribute__((format(printf, 5, 6)))
static int opt_skip_error(struct vd_nbd_conn *c, uint32_t opt, uint32_t len,
                          uint32_t type, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    int r;

    if (len > OPT_MAX_SKIP)
        return vd_error(EINVAL, "option %u: payload of %u bytes is too large", opt, len);
    if ((r = conn_discard(c, len)) < 0)
        return r;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return opt_error(c, opt, type, "%s", msg);
}

/* Read an option's whole payload (NUL-terminated) into *out.  1 when it
 * was too large and has been answered with NBD_REP_ERR_TOO_BIG. */
static int opt_read_payload(struct vd_nbd_conn *c, uint32_t opt, uint32_t len,
                            char **out)
{
    char *buf;
    int r;

    *out = NULL;
    if (len > OPT_MAX_READ) {
        r = opt_skip_error(c, opt, len, NBD_REP_ERR_TOO_BIG,
                           "option payload of %u bytes is too large", len);
        return r < 0 ? r : 1;
    }
    if (!(buf = malloc((size_t)len + 1)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = conn_read(c, buf, len)) < 0) {
        free(buf);
        return r;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* The export called name (len bytes, may hold NULs), or NULL. */
static const struct vd_nbd_export *find_export(struct vd_nbd_conn *c,
                                               const char *name, size_t len)
{
    for (int i = 0; i < c->srv->nexports; i++) {
        const struct vd_nbd_export *e = &c->srv->exports[i];
        if (strlen(e->name) == len && !memcmp(e->name, name, len))
            return e;
    }
    return NULL;
}

/* Are metadata contexts selected for export e? */
static bool meta_selected(const struct vd_nbd_conn *c, const struct vd_nbd_export *e)
{
    return c->meta && c->meta_export &&
           !strcmp(c->meta_export, e->name);
}

/* Flags for this client: DF only with structured replies (or extended
 * headers); the BLOCK_STATUS payload form only with extended headers and
 * contexts selected for e. */
static uint16_t client_flags(struct vd_nbd_conn *c, const struct vd_nbd_export *e)
{
    uint16_t f = vd_nbd_export_flags(e);

    if (!c->structured)
        f &= (uint16_t)~NBD_FLAG_SEND_DF;
    if (c->extended && meta_selected(c, e))
        f |= NBD_FLAG_BLOCK_STAT_PAYLOAD;
    return f;
}

/* Forget the selected metadata contexts. */
static void meta_clear(struct vd_nbd_conn *c)
{
    c->meta = 0;
    free(c->meta_export);
    c->meta_export = NULL;
}

/* Contexts selected for another export do not carry over to e. */
static void meta_check_export(struct vd_nbd_conn *c, const struct vd_nbd_export *e)
{
    if (c->meta_export && strcmp(c->meta_export, e->name))
        meta_clear(c);
}

/* NBD_OPT_EXPORT_NAME: errors can only be told by hanging up.  A client
 * that negotiated extended headers must use NBD_OPT_GO instead. */
static int opt_export_name(struct vd_nbd_conn *c, uint32_t len)
{
    const struct vd_nbd_export *e;
    uint8_t reply[8 + 2 + 124];
    char name[NBD_MAX_STRING + 1];
    int r;

    if (c->extended)
        return vd_error(EINVAL, "NBD_OPT_EXPORT_NAME after extended headers were negotiated");
    if (len > NBD_MAX_STRING)
        return vd_error(EINVAL, "export name of %u bytes is too long", len);
    if ((r = conn_read(c, name, len)) < 0)
        return r;
    name[len] = '\0';
    if (!(e = find_export(c, name, len)))
        return vd_error(ENOENT, "export '%s' not present", name);
    memset(reply, 0, sizeof(reply));
    vd_put_be64(reply, e->size);
    vd_put_be16(reply + 8, client_flags(c, e));
    if ((r = conn_write(c, reply, c->no_zeroes ? 10 : sizeof(reply))) < 0)
        return r;
    meta_check_export(c, e);
    c->exp = e;
    return OPT_TRANSMIT;
}

/* NBD_OPT_LIST: one NBD_REP_SERVER per export (name, description). */
static int opt_list(struct vd_nbd_conn *c, uint32_t len)
{
    int r;

    if (len)
        return opt_skip_error(c, NBD_OPT_LIST, len, NBD_REP_ERR_INVALID,
                              "NBD_OPT_LIST must not have a payload");
    for (int i = 0; i < c->srv->nexports; i++) {
        const struct vd_nbd_export *e = &c->srv->exports[i];
        size_t nl = strlen(e->name), dl = e->description ? strlen(e->description) : 0;
        uint8_t buf[4 + 2 * NBD_MAX_STRING];

        nl = VD_MIN(nl, NBD_MAX_STRING);
        dl = VD_MIN(dl, NBD_MAX_STRING);
        vd_put_be32(buf, (uint32_t)nl);
        memcpy(buf + 4, e->name, nl);
        if (dl)
            memcpy(buf + 4 + nl, e->description, dl);
        if ((r = opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, buf,
                           (uint32_t)(4 + nl + dl))) < 0)
            return r;
    }
    return opt_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

/* Send one NBD_REP_INFO with type and payload. */
static int send_info(struct vd_nbd_conn *c, uint32_t opt, uint16_t type,
                     const void *data, size_t len)
{
    uint8_t buf[2 + NBD_MAX_STRING];

    len = VD_MIN(len, NBD_MAX_STRING);
    vd_put_be16(buf, type);
    memcpy(buf + 2, data, len);
    return opt_reply(c, opt, NBD_REP_INFO, buf, (uint32_t)(2 + len));
}

/* The NBD_INFO_BLOCK_SIZE answer, with qemu-nbd's values. */
static int send_block_size(struct vd_nbd_conn *c, uint32_t opt,
                           const struct vd_nbd_export *e, bool asked)
{
    uint32_t align = vd_node_request_alignment(e->node);
    uint32_t min = (asked || opt == NBD_OPT_INFO) && align > 1 ? align : 1;
    uint8_t b[12];

    if (min > 65536)
        min = 65536;
    vd_put_be32(b, min);
    vd_put_be32(b + 4, VD_MAX(min, 4096u));
    vd_put_be32(b + 8, NBD_MAX_PAYLOAD);
    return send_info(c, opt, NBD_INFO_BLOCK_SIZE, b, sizeof(b));
}

/* The replies to a valid NBD_OPT_INFO / NBD_OPT_GO for export e. */
static int send_infos(struct vd_nbd_conn *c, uint32_t opt, const struct vd_nbd_export *e,
                      bool want_name, bool want_desc, bool want_bs)
{
    uint8_t ex[10];
    int r;

    vd_put_be64(ex, e->size);
    vd_put_be16(ex + 8, client_flags(c, e));
    if ((r = send_info(c, opt, NBD_INFO_EXPORT, ex, sizeof(ex))) < 0)
        return r;
    if (want_name && (r = send_info(c, opt, NBD_INFO_NAME, e->name, strlen(e->name))) < 0)
        return r;
    if (want_desc && e->description &&
        (r = send_info(c, opt, NBD_INFO_DESCRIPTION, e->description,
                       strlen(e->description))) < 0)
        return r;
    if ((r = send_block_size(c, opt, e, want_bs)) < 0)
        return r;
    return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_INFO and NBD_OPT_GO: name, then a list of info requests. */
static int opt_info_go(struct vd_nbd_conn *c, uint32_t opt, uint32_t len)
{
    bool want_name = false, want_desc = false, want_bs = false;
    const struct vd_nbd_export *e;
    CLEANUP_FREE char *p = NULL;
    uint32_t nl;
    uint16_t nreq;
    int r;

    if ((r = opt_read_payload(c, opt, len, &p)) != 0)
        return r < 0 ? r : OPT_NEXT;
    if (len < 6 || (nl = vd_get_be32(p)) > len - 6 || nl > NBD_MAX_STRING)
        return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed export name");
    nreq = vd_get_be16(p + 4 + nl);
    if (len != 4 + nl + 2 + 2 * (uint32_t)nreq)
        return opt_error(c, opt, NBD_REP_ERR_INVALID,
                         "option length does not match %u information requests", nreq);
    for (uint32_t i = 0; i < nreq; i++) {
        uint16_t t = vd_get_be16(p + 6 + nl + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
        want_bs |= t == NBD_INFO_BLOCK_SIZE;
    }
    if (!(e = find_export(c, p + 4, nl)))
        return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "export '%.*s' not present",
                         (int)VD_MIN(nl, 256u), p + 4);
    if ((r = send_infos(c, opt, e, want_name, want_desc, want_bs)) < 0)
        return r;
    if (opt == NBD_OPT_INFO)
        return OPT_NEXT;
    meta_check_export(c, e);
    c->exp = e;
    return OPT_TRANSMIT;
}

/* NBD_OPT_STRUCTURED_REPLY. */
static int opt_structured(struct vd_nbd_conn *c, uint32_t len)
{
    if (len)
        return opt_skip_error(c, NBD_OPT_STRUCTURED_REPLY, len, NBD_REP_ERR_INVALID,
                              "NBD_OPT_STRUCTURED_REPLY must not have a payload");
    if (c->extended)
        return opt_error(c, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_EXT_HEADER_REQD,
                         "extended headers already negotiated");
    if (c->structured)
        return opt_error(c, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_INVALID,
                         "structured reply already negotiated");
    c->structured = true;
    return opt_reply(c, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_EXTENDED_HEADERS: 32-byte request and reply headers from the
 * transmission on; they imply (and may follow) structured replies. */
static int opt_extended(struct vd_nbd_conn *c, uint32_t len)
{
    if (len)
        return opt_skip_error(c, NBD_OPT_EXTENDED_HEADERS, len, NBD_REP_ERR_INVALID,
                              "NBD_OPT_EXTENDED_HEADERS must not have a payload");
    if (c->extended)
        return opt_error(c, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_INVALID,
                         "extended headers already negotiated");
    c->extended = c->structured = true;
    return opt_reply(c, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, NULL, 0);
}

/* The context bits query q (ql bytes) names on e, after "qemu:": a LIST
 * may name all of them ("") or all bitmaps ("dirty-bitmap:"). */
static uint64_t meta_match_qemu(const struct vd_nbd_export *e, bool list, const char *q,
                                uint32_t ql)
{
    static const char depth[] = "allocation-depth", bitmap[] = "dirty-bitmap:";
    const uint32_t bl = sizeof(bitmap) - 1;
    uint64_t m = 0;

    if (e->allocation_depth && ((list && ql == 0) ||
        (ql == sizeof(depth) - 1 && !memcmp(q, depth, ql))))
        m |= CTX_DEPTH;
    if (!(list && ql == 0) && (ql < bl || memcmp(q, bitmap, bl)))
        return m;
    /* A name given twice by -B is offered twice; a query selects the first. */
    for (int i = 0; i < e->nbitmaps; i++) {
        const char *name = e->bitmaps[i].name;
        if (list && ql <= bl)
            m |= 1ull << (CTX_ID_BITMAP + i);
        else if (strlen(name) == ql - bl && !memcmp(q + bl, name, ql - bl))
            return m | 1ull << (CTX_ID_BITMAP + i);
    }
    return m;
}

/* The context bits query q (ql bytes) names on e.  A LIST may name a
 * whole namespace ("base:", "qemu:", "qemu:dirty-bitmap:"). */
static uint64_t meta_match(const struct vd_nbd_export *e, bool list, const char *q,
                           uint32_t ql)
{
#define QIS(s) (ql == sizeof(s) - 1 && !memcmp(q, s, ql))
    if (QIS(NBD_META_BASE_ALLOCATION) || (list && QIS("base:")))
        return CTX_BASE;
    if (ql >= 5 && !memcmp(q, "qemu:", 5))
        return meta_match_qemu(e, list, q + 5, ql - 5);
    return 0;
#undef QIS
}

/* Every context e offers. */
static uint64_t meta_all(const struct vd_nbd_export *e)
{
    uint64_t m = CTX_BASE | (e->allocation_depth ? CTX_DEPTH : 0);

    for (int i = 0; i < e->nbitmaps; i++)
        m |= 1ull << (CTX_ID_BITMAP + i);
    return m;
}

/* Send one NBD_REP_META_CONTEXT: id and name (prefix then rest). */
static int send_context(struct vd_nbd_conn *c, uint32_t opt, uint32_t id, const char *prefix,
                        const char *rest)
{
    size_t pl = strlen(prefix), rl = strlen(rest);
    CLEANUP_FREE uint8_t *buf = malloc(4 + pl + rl);

    if (!buf || 4 + pl + rl > 4 + NBD_MAX_STRING)
        return vd_error(ENOMEM, "context name too long");
    vd_put_be32(buf, id);
    memcpy(buf + 4, prefix, pl);
    memcpy(buf + 4 + pl, rest, rl);
    return opt_reply(c, opt, NBD_REP_META_CONTEXT, buf, (uint32_t)(4 + pl + rl));
}

/* Send the contexts of bits m (ids 0 in a LIST reply). */
static int send_contexts(struct vd_nbd_conn *c, uint32_t opt, const struct vd_nbd_export *e,
                         uint64_t m, bool list)
{
    int r = 0;

    if (m & CTX_BASE)
        r = send_context(c, opt, list ? 0 : CTX_ID_BASE, NBD_META_BASE_ALLOCATION, "");
    if (r >= 0 && (m & CTX_DEPTH))
        r = send_context(c, opt, list ? 0 : CTX_ID_DEPTH, NBD_META_QEMU_DEPTH, "");
    for (int i = 0; r >= 0 && i < e->nbitmaps; i++)
        if (m & (1ull << (CTX_ID_BITMAP + i)))
            r = send_context(c, opt, list ? 0 : (uint32_t)(CTX_ID_BITMAP + i),
                             NBD_META_QEMU_BITMAP, e->bitmaps[i].name);
    return r;
}

/* Parse the queries of a meta context option into *m: 0, or 1 when
 * malformed. */
static int meta_parse(const struct vd_nbd_export *e, bool list, const char *p,
                      uint32_t len, uint32_t pos, uint32_t nq, uint64_t *m)
{
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ql;
        if (len - pos < 4)
            return 1;
        ql = vd_get_be32(p + pos);
        pos += 4;
        if (ql > NBD_MAX_STRING || ql > len - pos)
            return 1;
        *m |= meta_match(e, list, p + pos, ql);
        pos += ql;
    }
    if (pos != len)
        return 1;
    if (list && nq == 0)
        *m = meta_all(e);
    return 0;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
static int opt_meta(struct vd_nbd_conn *c, uint32_t opt, uint32_t len)
{
    bool list = opt == NBD_OPT_LIST_META_CONTEXT;
    const struct vd_nbd_export *e;
    CLEANUP_FREE char *p = NULL;
    uint64_t m = 0;
    uint32_t nl, nq;
    int r;

    if ((r = opt_read_payload(c, opt, len, &p)) != 0)
        return r < 0 ? r : OPT_NEXT;
    if (!list)
        meta_clear(c);
    if (!c->structured)
        return opt_error(c, opt, NBD_REP_ERR_INVALID, "structured replies not negotiated");
    if (len < 8 || (nl = vd_get_be32(p)) > len - 8 || nl > NBD_MAX_STRING)
        return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed export name");
    nq = vd_get_be32(p + 4 + nl);
    if (!(e = find_export(c, p + 4, nl)))
        return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "export '%.*s' not present",
                         (int)VD_MIN(nl, 256u), p + 4);
    if (meta_parse(e, list, p, len, 8 + nl, nq, &m))
        return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed context query list");
    if ((r = send_contexts(c, opt, e, m, list)) < 0)
        return r;
    if (!list) {
        c->meta = m;
        if (!(c->meta_export = strdup(e->name)))
            return vd_error(ENOMEM, "out of memory");
    }
    return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_STARTTLS: answer, then run the TLS handshake and forget what
 * was negotiated in plain text. */
static int opt_starttls(struct vd_nbd_conn *c, uint32_t len)
{
    int r;

    if (!c->srv->tls)
        return opt_skip_error(c, NBD_OPT_STARTTLS, len, NBD_REP_ERR_POLICY,
                              "TLS not configured");
    if (c->tls)
        return opt_skip_error(c, NBD_OPT_STARTTLS, len, NBD_REP_ERR_INVALID,
                              "TLS already enabled");
    if (len)
        return opt_skip_error(c, NBD_OPT_STARTTLS, len, NBD_REP_ERR_INVALID,
                              "NBD_OPT_STARTTLS must not have a payload");
    if ((r = opt_reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0)) < 0)
        return r;
    if ((r = conn_start_tls(c)) < 0)
        return r;
    c->structured = c->extended = false;
    meta_clear(c);
    return OPT_NEXT;
}

/* Before STARTTLS on a server that requires TLS, only STARTTLS and ABORT
 * are served; EXPORT_NAME cannot be refused but by hanging up. */
static int opt_before_tls(struct vd_nbd_conn *c, uint32_t opt, uint32_t len)
{
    if (opt == NBD_OPT_EXPORT_NAME)
        return vd_error(EPERM, "option %u refused: TLS is required", opt);
    return opt_skip_error(c, opt, len, NBD_REP_ERR_TLS_REQD,
                          "Option 0x%x not permitted before TLS", opt);
}

/* Handle one option. */
static int handle_option(struct vd_nbd_conn *c, uint32_t opt, uint32_t len)
{
    if (c->srv->tls && !c->tls && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT)
        return opt_before_tls(c, opt, len);
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        return opt_export_name(c, len);
    case NBD_OPT_ABORT:
        if (len <= OPT_MAX_SKIP && conn_discard(c, len) == 0)
            opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
        return OPT_ABORT;
    case NBD_OPT_LIST:
        return opt_list(c, len);
    case NBD_OPT_STARTTLS:
        return opt_starttls(c, len);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return opt_info_go(c, opt, len);
    case NBD_OPT_STRUCTURED_REPLY:
        return opt_structured(c, len);
    case NBD_OPT_EXTENDED_HEADERS:
        return opt_extended(c, len);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return opt_meta(c, opt, len);
    default:
        return opt_skip_error(c, opt, len, NBD_REP_ERR_UNSUP,
                              "Unsupported option %u", opt);
    }
}

/* Why a read in the handshake failed, in qemu-nbd's words (the handshake
 * deadline shuts the channel, which reads as an early end of file). */
static const char *read_reason(int r)
{
    if (r == -ECONNRESET || r == -ETIMEDOUT)
        return "Unexpected end-of-file before all data were read";
    return strerror(-r);
}

/* Send the greeting and read the client's flags. */
static int greet(struct vd_nbd_conn *c)
{
    uint8_t g[18], cf[4];
    uint32_t flags;
    int r;

    vd_put_be64(g, NBD_MAGIC);
    vd_put_be64(g + 8, NBD_OPTS_MAGIC);
    vd_put_be16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if ((r = conn_write(c, g, sizeof(g))) < 0)
        return vd_error(-r, "Failed to send greeting: %s", strerror(-r));
    if ((r = conn_read(c, cf, 4)) < 0)
        return vd_error(-r, "Failed to read flags: %s", read_reason(r));
    flags = vd_get_be32(cf);
    if (flags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
        return vd_error(EINVAL, "Unknown client flags 0x%x received", flags);
    c->fixed = flags & NBD_FLAG_C_FIXED_NEWSTYLE;
    c->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
    return 0;
}

/* Read an option header (magic, option, length), naming the field an
 * early end of input cut, as qemu-nbd does. */
static int read_option_header(struct vd_nbd_conn *c, uint8_t *h)
{
    static const char *const field[] = { "opts magic", "option", "option length" };
    static const size_t end[] = { 8, 12, 16 };
    size_t got = 0;
    int r;

    for (int i = 0; i < 3; i++) {
        if ((r = conn_read(c, h + got, end[i] - got)) < 0)
            return vd_error(-r, "Failed to read %s: %s", field[i], read_reason(r));
        got = end[i];
    }
    return 0;
}

/* See server-int.h. */
int nbd_negotiate(struct vd_nbd_conn *c)
{
    uint8_t h[16];
    int r;

    if ((r = greet(c)) < 0)
        return r;
    for (;;) {
        if ((r = read_option_header(c, h)) < 0)
            return r;
        if (vd_get_be64(h) != NBD_OPTS_MAGIC)
            return vd_error(EINVAL, "Bad magic received");
        r = handle_option(c, vd_get_be32(h + 8), vd_get_be32(h + 12));
        if (r < 0)
            return r;
        if (r == OPT_TRANSMIT)
            return 0;
        if (r == OPT_ABORT)
            return 0;
    }
}
