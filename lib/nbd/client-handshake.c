/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD client handshake: oldstyle or (fixed) newstyle negotiation, then
 * STARTTLS, EXTENDED_HEADERS or STRUCTURED_REPLY, SET_META_CONTEXT
 * base:allocation and NBD_OPT_GO with a block-size request, falling back to
 * NBD_OPT_EXPORT_NAME for servers without GO.  Every reply is bounded:
 * option replies over OPT_REPLY_MAX bytes and reply streams longer than
 * MAX_OPT_REPLIES end the handshake with an error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd/client.h"
#include "nbd/nbd-proto.h"
#include "nbd/wire.h"
#include "util/checked.h"
#include "vdisk/vdisk.h"

#define OPT_REPLY_MAX (NBD_MAX_STRING + 64)
#define MAX_OPT_REPLIES 1024
#define MAX_MIN_BLOCK (64u * 1024)

/* One option reply: type and payload (NUL-terminated, freed by caller). */
struct opt_reply {
    uint32_t type;
    uint32_t len;
    char *data;
};

/* Send option opt with len bytes of data. */
static int send_option(struct nbdc_conn *c, uint32_t opt, const void *data,
                       uint32_t len, int64_t deadline)
{
    uint8_t h[16];
    int r;

    vd_put_be64(h, NBD_OPTS_MAGIC);
    vd_put_be32(h + 8, opt);
    vd_put_be32(h + 12, len);
    if ((r = nbdc_send(c, h, sizeof(h), deadline)) < 0 ||
        (len && (r = nbdc_send(c, data, len, deadline)) < 0))
        return vd_error(-r, "Failed to send option %u to the server: %s", opt, strerror(-r));
    return 0;
}

/* Message for a failed read during the handshake. */
static int recv_error(int r)
{
    if (r == -ECONNRESET)
        return vd_error(ECONNRESET, "Server closed the connection during the handshake");
    if (r == -ETIMEDOUT)
        return vd_error(ETIMEDOUT, "Timed out waiting for the server during the handshake");
    return vd_error(-r, "Failed to read the handshake from the server: %s", strerror(-r));
}

/* Read the reply to option opt. */
static int recv_option_reply(struct nbdc_conn *c, uint32_t opt, struct opt_reply *rep,
                             int64_t deadline)
{
    uint8_t h[20];
    int r;

    rep->data = NULL;
    if ((r = nbdc_recv(c, h, sizeof(h), deadline)) < 0)
        return recv_error(r);
    if (vd_get_be64(h) != NBD_REP_MAGIC)
        return vd_error(EPROTO, "Unexpected option reply magic 0x%llx from the server",
                        (unsigned long long)vd_get_be64(h));
    if (vd_get_be32(h + 8) != opt)
        return vd_error(EPROTO, "Server replied to option %u while option %u was pending",
                        vd_get_be32(h + 8), opt);
    rep->type = vd_get_be32(h + 12);
    rep->len = vd_get_be32(h + 16);
    if (rep->len > OPT_REPLY_MAX)
        return vd_error(EPROTO, "Server sent an option reply of %u bytes (at most %u allowed)",
                        rep->len, OPT_REPLY_MAX);
    if (!(rep->data = malloc(rep->len + 1)))
        return vd_error(ENOMEM, "out of memory");
    rep->data[rep->len] = '\0';
    if ((r = nbdc_recv(c, rep->data, rep->len, deadline)) < 0) {
        free(rep->data);
        rep->data = NULL;
        return recv_error(r);
    }
    return 0;
}

/* A printable copy of an error reply's message: NULs and controls become
 * '?', so a hostile server cannot write escapes to the terminal. */
static void sanitize(char *s, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            s[i] = '?';
}

/* The name of an option, for messages. */
static const char *opt_name(uint32_t opt)
{
    switch (opt) {
    case NBD_OPT_STARTTLS: return "starttls";
    case NBD_OPT_GO: return "go";
    case NBD_OPT_STRUCTURED_REPLY: return "structured reply";
    case NBD_OPT_SET_META_CONTEXT: return "set meta context";
    case NBD_OPT_EXTENDED_HEADERS: return "extended headers";
    default: return "<unknown>";
    }
}

/* Error for an error reply (qemu's wording), with the server's text. */
static int option_error(uint32_t opt, struct opt_reply *rep)
{
    char what[200];
    int err = EINVAL;

    switch (rep->type) {
    case NBD_REP_ERR_UNKNOWN:
        snprintf(what, sizeof(what), "Requested export not available");
        err = ENOENT;
        break;
    case NBD_REP_ERR_POLICY:
        snprintf(what, sizeof(what), "Denied by server for option %u (%s)", opt, opt_name(opt));
        err = EPERM;
        break;
    case NBD_REP_ERR_TLS_REQD:
        snprintf(what, sizeof(what), "TLS negotiation required before option %u (%s)\n"
                 "Did you forget a valid tls-creds?", opt, opt_name(opt));
        err = EPERM;
        break;
    case NBD_REP_ERR_SHUTDOWN:
        snprintf(what, sizeof(what), "Server shutting down before option %u (%s)",
                 opt, opt_name(opt));
        err = ESHUTDOWN;
        break;
    default:
        snprintf(what, sizeof(what), "Server rejected option %u (%s) with error 0x%x",
                 opt, opt_name(opt), rep->type);
    }
    if (!rep->len)
        return vd_error(err, "%s", what);
    sanitize(rep->data, rep->len);
    return vd_error(err, "%s\nserver reported: %s", what, rep->data);
}

/* Send an option without data and expect ACK.  1 acked, 0 refused with
 * ERR_UNSUP/POLICY/INVALID (not fatal), -errno otherwise. */
static int simple_option(struct nbdc_conn *c, uint32_t opt, int64_t deadline)
{
    struct opt_reply rep;
    int r;

    if ((r = send_option(c, opt, NULL, 0, deadline)) < 0 ||
        (r = recv_option_reply(c, opt, &rep, deadline)) < 0)
        return r;
    if (rep.type == NBD_REP_ACK)
        r = rep.len ? vd_error(EPROTO, "Server sent an ACK with a payload") : 1;
    else if (rep.type & NBD_REP_FLAG_ERROR)
        r = rep.type == NBD_REP_ERR_SHUTDOWN ? option_error(opt, &rep) : 0;
    else
        r = vd_error(EPROTO, "Unexpected reply type %u to option %u", rep.type, opt);
    free(rep.data);
    return r;
}

/* Negotiate STARTTLS and run the TLS handshake. */
static int start_tls(const struct nbdc_config *cfg, struct nbdc_conn *c, int64_t deadline)
{
    int r = simple_option(c, NBD_OPT_STARTTLS, deadline);

    if (r < 0)
        return r;
    if (r == 0)
        return vd_error(ENOTSUP, "Server don't support STARTTLS option");
    return nbdc_tls_start(cfg, c, deadline);
}

/* Build "32-bit name length, name" + extra into a new buffer. */
static uint8_t *name_payload(const char *name, size_t extra, uint32_t *len)
{
    size_t nl = strlen(name);
    uint8_t *p = malloc(4 + nl + extra);

    if (!p)
        return NULL;
    vd_put_be32(p, (uint32_t)nl);
    memcpy(p + 4, name, nl);
    *len = (uint32_t)(4 + nl + extra);
    return p;
}

/* Handle one reply to SET_META_CONTEXT for context q; 1 when it was the
 * last. */
static int meta_reply(struct nbdc_conn *c, const char *q, struct opt_reply *rep)
{
    if (rep->type == NBD_REP_ACK)
        return 1;
    if (rep->type & NBD_REP_FLAG_ERROR)
        return 1;                /* no metadata: block status says "all data" */
    if (rep->type != NBD_REP_META_CONTEXT || rep->len < 4)
        return vd_error(EPROTO, "Unexpected reply type %u to set meta context", rep->type);
    if (rep->len - 4 == strlen(q) && !memcmp(rep->data + 4, q, rep->len - 4)) {
        c->info.have_alloc = true;
        c->info.alloc_id = vd_get_be32(rep->data);
    }
    return 0;
}

/* Ask for the base:allocation metadata context of the export (or the one
 * x-dirty-bitmap names, whose dirty flag then reads as a hole). */
static int set_meta_context(const struct nbdc_config *cfg, struct nbdc_conn *c,
                            int64_t deadline)
{
    const char *q = cfg->meta_context ? cfg->meta_context : NBD_META_BASE_ALLOCATION;
    size_t nl = strlen(cfg->export), ql = strlen(q);
    uint32_t len;
    uint8_t *p = name_payload(cfg->export, 8 + ql, &len);
    struct opt_reply rep;
    int r;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    vd_put_be32(p + 4 + nl, 1);
    vd_put_be32(p + 8 + nl, (uint32_t)ql);
    memcpy(p + 12 + nl, q, ql);
    r = send_option(c, NBD_OPT_SET_META_CONTEXT, p, len, deadline);
    free(p);
    for (int i = 0; r >= 0 && i < MAX_OPT_REPLIES; i++) {
        if ((r = recv_option_reply(c, NBD_OPT_SET_META_CONTEXT, &rep, deadline)) < 0)
            return r;
        r = meta_reply(c, q, &rep);
        free(rep.data);
        if (r)
            return r < 0 ? r : 0;
    }
    return r < 0 ? r : vd_error(EPROTO, "Server sent too many meta context replies");
}

/* Check the block sizes the server advertised. */
static int check_block_sizes(const struct nbdc_info *i)
{
    if (!is_power_of_2(i->min_block) || i->min_block > MAX_MIN_BLOCK)
        return vd_error(EPROTO, "Server advertised an invalid minimum block size %u",
                        i->min_block);
    if (!is_power_of_2(i->pref_block) || i->pref_block < i->min_block)
        return vd_error(EPROTO, "Server advertised an invalid preferred block size %u",
                        i->pref_block);
    if (i->max_payload < i->min_block ||
        (i->max_payload != UINT32_MAX && i->max_payload % i->min_block))
        return vd_error(EPROTO, "Server advertised an invalid maximum block size %u",
                        i->max_payload);
    return 0;
}

/* Handle one NBD_REP_INFO reply to GO. */
static int go_info(struct nbdc_conn *c, struct opt_reply *rep, bool *have_export)
{
    const uint8_t *d = (const uint8_t *)rep->data;
    uint16_t type;

    if (rep->len < 2)
        return vd_error(EPROTO, "Server sent a truncated info reply");
    type = vd_get_be16(d);
    if (type == NBD_INFO_EXPORT) {
        if (rep->len != 12)
            return vd_error(EPROTO, "Server sent an export info of %u bytes", rep->len);
        c->info.size = vd_get_be64(d + 2);
        c->info.flags = vd_get_be16(d + 10);
        *have_export = true;
    } else if (type == NBD_INFO_BLOCK_SIZE) {
        if (rep->len != 14)
            return vd_error(EPROTO, "Server sent a block size info of %u bytes", rep->len);
        c->info.min_block = vd_get_be32(d + 2);
        c->info.pref_block = vd_get_be32(d + 6);
        c->info.max_payload = vd_get_be32(d + 10);
        return check_block_sizes(&c->info);
    }
    return 0;
}

/* NBD_OPT_GO with a block-size request.  1 done, 0 server lacks GO. */
static int opt_go(const struct nbdc_config *cfg, struct nbdc_conn *c, int64_t deadline)
{
    size_t nl = strlen(cfg->export);
    uint32_t len;
    uint8_t *p = name_payload(cfg->export, 4, &len);
    struct opt_reply rep;
    bool have_export = false;
    int r;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    vd_put_be16(p + 4 + nl, 1);
    vd_put_be16(p + 6 + nl, NBD_INFO_BLOCK_SIZE);
    r = send_option(c, NBD_OPT_GO, p, len, deadline);
    free(p);
    for (int i = 0; r >= 0 && i < MAX_OPT_REPLIES; i++) {
        if ((r = recv_option_reply(c, NBD_OPT_GO, &rep, deadline)) < 0)
            return r;
        if (rep.type == NBD_REP_INFO)
            r = go_info(c, &rep, &have_export);
        else if (rep.type == NBD_REP_ACK)
            r = have_export ? 1 : vd_error(EPROTO, "Server finished GO without export info");
        else if (rep.type == NBD_REP_ERR_UNSUP)
            r = 0;
        else if (rep.type & NBD_REP_FLAG_ERROR)
            r = option_error(NBD_OPT_GO, &rep);
        else
            r = vd_error(EPROTO, "Unexpected reply type %u to option go", rep.type);
        free(rep.data);
        if (r != 0 || rep.type == NBD_REP_ERR_UNSUP)
            return r;
    }
    return r < 0 ? r : vd_error(EPROTO, "Server sent too many replies to option go");
}

/* NBD_OPT_EXPORT_NAME: the old way to enter transmission. */
static int opt_export_name(const struct nbdc_config *cfg, struct nbdc_conn *c,
                           bool no_zeroes, int64_t deadline)
{
    uint8_t d[10 + 124];
    size_t want = no_zeroes ? 10 : sizeof(d);
    int r;

    if ((r = send_option(c, NBD_OPT_EXPORT_NAME, cfg->export,
                         (uint32_t)strlen(cfg->export), deadline)) < 0)
        return r;
    if ((r = nbdc_recv(c, d, want, deadline)) < 0)
        return r == -ECONNRESET ? vd_error(ENOENT, "Requested export not available")
                                : recv_error(r);
    c->info.size = vd_get_be64(d);
    c->info.flags = vd_get_be16(d + 8);
    return 0;
}

/* Oldstyle negotiation: size and flags follow the magic. */
static int oldstyle(const struct nbdc_config *cfg, struct nbdc_conn *c, int64_t deadline)
{
    uint8_t d[8 + 4 + 124];
    int r;

    if (cfg->tls)
        return vd_error(ENOTSUP, "Server does not support STARTTLS");
    if (*cfg->export)
        return vd_error(EINVAL, "Server does not support non-empty export names");
    if ((r = nbdc_recv(c, d, sizeof(d), deadline)) < 0)
        return recv_error(r);
    c->info.size = vd_get_be64(d);
    c->info.flags = (uint16_t)vd_get_be32(d + 8);
    c->info.oldstyle = true;
    return 0;
}

/* The export lacks the context x-dirty-bitmap named: say goodbye with
 * NBD_OPT_ABORT (its reply read, whatever it is) and fail as QEMU does. */
static int abort_option_phase(struct nbdc_conn *c, int64_t deadline)
{
    struct opt_reply rep = { 0 };

    if (send_option(c, NBD_OPT_ABORT, NULL, 0, deadline) == 0 &&
        recv_option_reply(c, NBD_OPT_ABORT, &rep, deadline) == 0)
        free(rep.data);
    return vd_error(EINVAL, "Could not open image: Invalid argument");
}

/* Options after the (optional) TLS upgrade, ending in transmission. */
static int haggle(const struct nbdc_config *cfg, struct nbdc_conn *c, bool no_zeroes,
                  int64_t deadline)
{
    int r;

    if (!cfg->no_extended && (r = simple_option(c, NBD_OPT_EXTENDED_HEADERS, deadline)) != 0) {
        if (r < 0)
            return r;
        c->info.extended = c->info.structured = true;
    }
    if (!c->info.structured && (r = simple_option(c, NBD_OPT_STRUCTURED_REPLY, deadline)) != 0) {
        if (r < 0)
            return r;
        c->info.structured = true;
    }
    if (c->info.structured && !cfg->no_meta && (r = set_meta_context(cfg, c, deadline)) < 0)
        return r;
    /* A context asked for by name must be there, as in QEMU (its words). */
    if (cfg->meta_context && !c->info.have_alloc)
        return abort_option_phase(c, deadline);
    if ((r = opt_go(cfg, c, deadline)) != 0)
        return r < 0 ? r : 0;
    return opt_export_name(cfg, c, no_zeroes, deadline);
}

/* Newstyle negotiation after the two magics. */
static int newstyle(const struct nbdc_config *cfg, struct nbdc_conn *c, int64_t deadline)
{
    uint8_t b[4];
    uint16_t hflags;
    uint32_t cflags = 0;
    int r;

    if ((r = nbdc_recv(c, b, 2, deadline)) < 0)
        return recv_error(r);
    hflags = vd_get_be16(b);
    if (hflags & NBD_FLAG_FIXED_NEWSTYLE)
        cflags |= NBD_FLAG_C_FIXED_NEWSTYLE;
    if (hflags & NBD_FLAG_NO_ZEROES)
        cflags |= NBD_FLAG_C_NO_ZEROES;
    vd_put_be32(b, cflags);
    if ((r = nbdc_send(c, b, 4, deadline)) < 0)
        return vd_error(-r, "Failed to send client flags: %s", strerror(-r));
    if (!(hflags & NBD_FLAG_FIXED_NEWSTYLE)) {
        if (cfg->tls)
            return vd_error(ENOTSUP, "Server does not support STARTTLS");
        return opt_export_name(cfg, c, cflags & NBD_FLAG_C_NO_ZEROES, deadline);
    }
    if (cfg->tls && (r = start_tls(cfg, c, deadline)) < 0)
        return r;
    return haggle(cfg, c, cflags & NBD_FLAG_C_NO_ZEROES, deadline);
}

/* Run the whole handshake on a connected socket. */
int nbdc_handshake(const struct nbdc_config *cfg, struct nbdc_conn *c)
{
    int64_t deadline = nbdc_now_ms() + cfg->handshake_timeout_ms;
    uint8_t m[16];
    int r;

    if ((r = nbdc_recv(c, m, sizeof(m), deadline)) < 0)
        return recv_error(r);
    if (vd_get_be64(m) != NBD_MAGIC)
        return vd_error(EPROTO, "Server sent an unexpected magic 0x%llx (not an NBD server?)",
                        (unsigned long long)vd_get_be64(m));
    if (vd_get_be64(m + 8) == NBD_OLD_MAGIC)
        r = oldstyle(cfg, c, deadline);
    else if (vd_get_be64(m + 8) == NBD_OPTS_MAGIC)
        r = newstyle(cfg, c, deadline);
    else
        r = vd_error(EPROTO, "Server sent an unexpected second magic 0x%llx",
                     (unsigned long long)vd_get_be64(m + 8));
    if (r < 0)
        return r;
    if (!(c->info.flags & NBD_FLAG_HAS_FLAGS))
        c->info.flags = 0;
    if (c->info.size > INT64_MAX)
        return vd_error(EPROTO, "Server advertised an export size %llu that is too large",
                        (unsigned long long)c->info.size);
    return 0;
}
