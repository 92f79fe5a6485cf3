/* SPDX-License-Identifier: BSD-3-Clause */
/* The "nbd" protocol driver: an export on an NBD server as a node.  Names
 * (nbd://, nbd+unix://, nbds://, nbds+unix://, legacy nbd:host:port and
 * nbd:unix:path with :exportname=) become server.* / export / tls-*
 * options; open connects (lib/nbd/client*.c) and maps the driver calls to
 * NBD commands.  When the server allows it (CAN_MULTI_CONN) the node opens
 * more connections on demand, up to x-multi-conn, as concurrent callers
 * find every connection busy. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd/client.h"
#include "nbd/nbd-proto.h"
#include "util/checked.h"
#include "util/uri.h"
#include "vdisk/driver.h"

#define NBD_MAX_CONNS 16
#define NBD_DEFAULT_CONNS 4
/* Largest read/write sent in one request (as QEMU). */
#define NBD_MAX_XFER (32u << 20)
/* Largest block-status request. */
#define NBD_MAX_BS_LEN (1u << 31)
#define NBD_HANDSHAKE_TIMEOUT_MS (60 * 1000)
/* Handshake limit of the extra connections of multi-conn. */
#define NBD_GROW_TIMEOUT_MS (10 * 1000)

struct nbd_state {
    struct nbdc_config cfg;
    struct nbdc_info info;       /* of the first connection */
    struct nbdc_conn *conns[NBD_MAX_CONNS];
    atomic_int nconns;
    int max_conns;
    pthread_mutex_t grow_lock;   /* guards growing, grow_*, max_conns */
    bool lock_init;
    bool growing;                /* a connection is being opened */
    bool grow_started;           /* grow_thread needs joining */
    pthread_t grow_thread;
    atomic_bool closing;         /* cancels a connection being opened */
};

/* ---- names ---- */

/* Set key=value, or record out of memory. */
static int set(vd_opts *o, const char *k, const char *v)
{
    return vd_opts_set(o, k, v) < 0 ? vd_error(ENOMEM, "out of memory") : 0;
}

/* "host:port" (host may be [v6]) of a legacy name into options. */
static int parse_legacy_inet(const char *spec, vd_opts *o)
{
    const char *colon = strrchr(spec, ':');
    char *host;
    int r;

    if (!colon || colon == spec || !colon[1])
        return vd_error(EINVAL, "error parsing address '%s'", spec);
    if (spec[0] == '[' && colon[-1] == ']')
        host = strndup(spec + 1, (size_t)(colon - spec - 2));
    else
        host = strndup(spec, (size_t)(colon - spec));
    if (!host)
        return vd_error(ENOMEM, "out of memory");
    r = set(o, "server.type", "inet");
    if (r >= 0)
        r = set(o, "server.host", host);
    if (r >= 0)
        r = set(o, "server.port", colon + 1);
    free(host);
    return r;
}

/* nbd:host:port[:exportname=x] and nbd:unix:path[:exportname=x]. */
static int parse_legacy(const char *name, vd_opts *o)
{
    char *spec = strdup(name + 4), *en;
    int r = 0;

    if (!spec)
        return vd_error(ENOMEM, "out of memory");
    if ((en = strstr(spec, ":exportname="))) {
        *en = '\0';
        if (en[12])
            r = set(o, "export", en + 12);
    }
    if (r >= 0 && !strncmp(spec, "unix:", 5)) {
        r = set(o, "server.type", "unix");
        if (r >= 0)
            r = set(o, "server.path", spec + 5);
    } else if (r >= 0) {
        r = parse_legacy_inet(spec, o);
    }
    free(spec);
    return r;
}

/* Query parameters an nbds URI may carry, and the options they set. */
static const char *const tls_query[][2] = {
    { "tls-certificates", "x-tls-certificates" },
    { "tls-psk-file", "x-tls-psk-file" },
    { "tls-hostname", "tls-hostname" },
    { "tls-verify-peer", "x-tls-verify-peer" },
    { "tls-creds", "tls-creds" },
};

/* Move the known query parameters of u into o; false on any other one. */
static bool parse_query(const struct vd_uri *u, bool is_unix, bool tls, vd_opts *o)
{
    size_t known = 0, total = 0;
    const char *q = u->query ? u->query : "";

    for (const char *p = q; *p; p++)
        total += *p == '&' || p == q;
    if (is_unix) {
        char *s = vd_uri_query_param(u, "socket");
        if (!s || !*s || vd_opts_set(o, "server.path", s) < 0) {
            free(s);
            return false;
        }
        free(s);
        known++;
    }
    for (size_t i = 0; tls && i < VD_ARRAY_SIZE(tls_query); i++) {
        char *v = vd_uri_query_param(u, tls_query[i][0]);
        if (v && vd_opts_set(o, tls_query[i][1], v) >= 0)
            known++;
        free(v);
    }
    return known == total;
}

/* nbd[s][+tcp|+unix]://[user@]host[:port]/export[?socket=...]. */
static int parse_uri(const char *name, vd_opts *o)
{
    struct vd_uri u;
    bool tls, is_unix, ok;
    char port[16];
    int r;

    if (vd_uri_parse(name, &u) < 0)
        return vd_error(EINVAL, "No valid URL specified");
    tls = !strncmp(u.scheme, "nbds", 4);
    is_unix = strstr(u.scheme, "+unix") != NULL;
    ok = is_unix ? !u.host || !*u.host : u.host && *u.host;
    ok = ok && parse_query(&u, is_unix, tls, o) && u.port != 0;
    if (!ok) {
        vd_uri_free(&u);
        return vd_error(EINVAL, "No valid URL specified");
    }
    snprintf(port, sizeof(port), "%d", u.port > 0 ? u.port : NBD_DEFAULT_PORT);
    r = set(o, "server.type", is_unix ? "unix" : "inet");
    if (r >= 0 && !is_unix && (r = set(o, "server.host", u.host)) >= 0)
        r = set(o, "server.port", port);
    if (r >= 0 && u.path[0] && u.path[1])
        r = set(o, "export", u.path + 1);
    if (r >= 0 && tls)
        r = set(o, "x-tls", "on");
    if (r >= 0 && tls && u.user)
        r = set(o, "x-tls-username", u.user);
    vd_uri_free(&u);
    return r;
}

/* Is name one of our URI schemes followed by "://"? */
static bool is_nbd_uri(const char *name)
{
    static const char *const schemes[] = {
        "nbd://", "nbd+tcp://", "nbd+unix://", "nbds://", "nbds+tcp://", "nbds+unix://",
    };
    for (size_t i = 0; i < VD_ARRAY_SIZE(schemes); i++)
        if (!strncmp(name, schemes[i], strlen(schemes[i])))
            return true;
    return false;
}

/* Turn any NBD name into options. */
static int nbd_parse_filename(const char *name, vd_opts *o)
{
    if (is_nbd_uri(name))
        return parse_uri(name, o);
    if (!strncmp(name, "nbd:", 4))
        return parse_legacy(name, o);
    return vd_error(EINVAL, "No valid URL specified");
}

/* ---- options ---- */

/* A copy of the option, or of def (NULL stays NULL); -ENOMEM via *r. */
static char *opt_dup(const vd_opts *o, const char *k, const char *def, int *r)
{
    const char *v = vd_opts_get(o, k);
    char *s;

    if (!v)
        v = def;
    if (!v)
        return NULL;
    if (!(s = strdup(v)))
        *r = vd_error(ENOMEM, "out of memory");
    return s;
}

/* The legacy flat keys (host, port, path) as server.*. */
static int legacy_keys(vd_opts *o)
{
    const char *host = vd_opts_get(o, "host"), *path = vd_opts_get(o, "path");
    int r = 0;

    if (vd_opts_has(o, "server.type"))
        return 0;
    if (path)
        r = set(o, "server.type", "unix");
    else if (host)
        r = set(o, "server.type", "inet");
    if (r >= 0 && path)
        r = set(o, "server.path", path);
    if (r >= 0 && host)
        r = set(o, "server.host", host);
    if (r >= 0 && vd_opts_get(o, "port"))
        r = set(o, "server.port", vd_opts_get(o, "port"));
    return r;
}

/* Where to connect: server.type and its keys. */
static int config_address(struct nbdc_config *cfg, const vd_opts *o)
{
    const char *type = vd_opts_get(o, "server.type");
    int r = 0;
    uint64_t fd;

    if (!type)
        return vd_error(EINVAL, vd_opts_has(o, "server.path") || vd_opts_has(o, "server.host")
                        ? "Parameter 'type' is missing" : "NBD server address missing");
    if (!strcmp(type, "unix")) {
        cfg->type = NBDC_UNIX;
        if (!(cfg->path = opt_dup(o, "server.path", NULL, &r)) && r >= 0)
            r = vd_error(EINVAL, "Parameter 'path' is missing");
    } else if (!strcmp(type, "inet")) {
        cfg->type = NBDC_INET;
        if (!(cfg->host = opt_dup(o, "server.host", NULL, &r)) && r >= 0)
            r = vd_error(EINVAL, "Parameter 'host' is missing");
        if (r >= 0 && !(cfg->port = opt_dup(o, "server.port", "10809", &r)) && r >= 0)
            r = -ENOMEM;
    } else if (!strcmp(type, "fd")) {
        cfg->type = NBDC_FD;
        if ((r = vd_opts_get_u64(o, "server.str", UINT64_MAX, &fd)) >= 0 && fd > INT32_MAX)
            r = vd_error(EINVAL, "Parameter 'str' is missing or not a file descriptor");
        cfg->fd = (int)fd;
    } else {
        r = vd_error(EINVAL, "Parameter 'type' does not accept value '%s'", type);
    }
    return r;
}

/* TLS settings: tls-creds object, or an nbds name's query parameters. */
static int config_tls(struct nbdc_config *cfg, const vd_opts *o)
{
    bool tls;
    int r = 0;

    if ((r = vd_opts_get_bool(o, "x-tls", false, &tls)) < 0 ||
        (r = vd_opts_get_bool(o, "x-tls-verify-peer", true, &cfg->tls_verify)) < 0)
        return r;
    cfg->tls_creds = opt_dup(o, "tls-creds", NULL, &r);
    cfg->tls_hostname = opt_dup(o, "tls-hostname", NULL, &r);
    cfg->tls_certs_dir = opt_dup(o, "x-tls-certificates", NULL, &r);
    cfg->tls_psk_file = opt_dup(o, "x-tls-psk-file", NULL, &r);
    cfg->tls_username = opt_dup(o, "x-tls-username", NULL, &r);
    cfg->tls = tls || cfg->tls_creds;
    if (r >= 0 && cfg->tls && cfg->type == NBDC_FD && !cfg->tls_hostname && !cfg->tls_psk_file)
        cfg->tls_verify = cfg->tls_verify && cfg->tls_creds;
    return r;
}

/* Check the numeric options QEMU accepts (reconnect-delay, open-timeout)
 * and read ours (x-multi-conn, x-io-timeout). */
static int config_numbers(struct nbdc_config *cfg, const vd_opts *o, int *max_conns)
{
    uint64_t delay, ot, mc, io;
    int r;

    if ((r = vd_opts_get_u64(o, "reconnect-delay", 0, &delay)) < 0 ||
        (r = vd_opts_get_u64(o, "open-timeout", 0, &ot)) < 0 ||
        (r = vd_opts_get_u64(o, "x-multi-conn", NBD_DEFAULT_CONNS, &mc)) < 0 ||
        (r = vd_opts_get_u64(o, "x-io-timeout", 0, &io)) < 0)
        return r;
    if (mc < 1 || mc > NBD_MAX_CONNS)
        return vd_error(EINVAL, "x-multi-conn must be between 1 and %d", NBD_MAX_CONNS);
    if (io > INT32_MAX || ot > INT32_MAX)
        return vd_error(EINVAL, "timeout is too large");
    *max_conns = (int)mc;
    cfg->io_timeout_ms = (int64_t)io * 1000;
    cfg->handshake_timeout_ms = ot ? (int64_t)ot * 1000 : NBD_HANDSHAKE_TIMEOUT_MS;
    return 0;
}

/* Build the connection config from the node's options. */
static int parse_config(struct nbd_state *s, vd_opts *o)
{
    const char *fn = vd_opts_get(o, "filename");
    int r = 0;

    if (fn && !vd_opts_has(o, "server.type") && !vd_opts_has(o, "host") &&
        !vd_opts_has(o, "path") && (r = nbd_parse_filename(fn, o)) < 0)
        return r;
    if ((r = legacy_keys(o)) < 0 || (r = config_address(&s->cfg, o)) < 0)
        return r;
    s->cfg.export = opt_dup(o, "export", "", &r);
    s->cfg.meta_context = opt_dup(o, "x-dirty-bitmap", NULL, &r);
    if (r >= 0 && s->cfg.meta_context && strlen(s->cfg.meta_context) > NBD_MAX_STRING)
        return vd_error(EINVAL, "x-dirty-bitmap is too long");
    if (r < 0 || (r = config_tls(&s->cfg, o)) < 0 ||
        (r = config_numbers(&s->cfg, o, &s->max_conns)) < 0)
        return r;
    return 0;
}

/* QEMU's canonical name of the export (what info and map print). */
static char *canonical_name(const struct nbdc_config *cfg)
{
    const char *e = cfg->export;
    char *out = NULL;
    int r = -1;

    if (cfg->type == NBDC_UNIX)
        r = *e ? asprintf(&out, "nbd+unix:///%s?socket=%s", e, cfg->path)
               : asprintf(&out, "nbd+unix://?socket=%s", cfg->path);
    else if (cfg->type == NBDC_INET)
        r = *e ? asprintf(&out, "nbd://%s:%s/%s", cfg->host, cfg->port, e)
               : asprintf(&out, "nbd://%s:%s", cfg->host, cfg->port);
    else
        r = asprintf(&out, "nbd:fd:%d", cfg->fd);
    return r < 0 ? NULL : out;
}

/* ---- connections ---- */

/* Would conn c serve the same export as the first connection? */
static bool same_export(const struct nbdc_info *a, const struct nbdc_info *b)
{
    return a->size == b->size && a->flags == b->flags && a->structured == b->structured &&
           a->extended == b->extended && a->have_alloc == b->have_alloc &&
           a->min_block == b->min_block && a->max_payload == b->max_payload;
}

/* Background thread: open one more connection and add it to the pool;
 * when the server will not take it, stop growing. */
static void *grow_main(void *arg)
{
    struct nbd_state *s = arg;
    struct nbdc_config cfg = s->cfg;
    struct nbdc_conn *c = NULL;
    int n = atomic_load(&s->nconns);
    bool ok;

    cfg.handshake_timeout_ms = VD_MIN(cfg.handshake_timeout_ms, (int64_t)NBD_GROW_TIMEOUT_MS);
    ok = nbdc_connect(&cfg, &c) == 0 && same_export(&c->info, &s->info);
    pthread_mutex_lock(&s->grow_lock);
    if (ok && !atomic_load(&s->closing)) {
        s->conns[n] = c;
        atomic_store(&s->nconns, n + 1);
        c = NULL;
    } else {
        s->max_conns = n;
    }
    s->growing = false;
    pthread_mutex_unlock(&s->grow_lock);
    nbdc_close(c);
    vd_error_clear();
    return NULL;
}

/* Start opening another connection unless one is on its way. */
static void grow(struct nbd_state *s)
{
    if (pthread_mutex_trylock(&s->grow_lock))
        return;
    if (!s->growing && atomic_load(&s->nconns) < s->max_conns) {
        if (s->grow_started)
            pthread_join(s->grow_thread, NULL);
        s->grow_started = s->growing =
            pthread_create(&s->grow_thread, NULL, grow_main, s) == 0;
    }
    pthread_mutex_unlock(&s->grow_lock);
}

/* The connection with the fewest requests in flight; starts opening
 * another one when all are busy and multi-conn allows. */
static struct nbdc_conn *pick(struct nbd_state *s)
{
    int n = atomic_load(&s->nconns), best = 0;

    for (int i = 1; i < n; i++)
        if (atomic_load(&s->conns[i]->nreqs) < atomic_load(&s->conns[best]->nreqs))
            best = i;
    if (atomic_load(&s->conns[best]->nreqs) > 0 && n < s->max_conns)
        grow(s);
    return s->conns[best];
}

/* ---- driver ---- */

/* Refuse a writable open of a read-only export (QEMU's message). */
static int check_writable(vd_node *n, const struct nbdc_info *i)
{
    if ((i->flags & NBD_FLAG_READ_ONLY) && !n->read_only)
        return vd_error(EACCES, "Could not open image: Permission denied");
    return 0;
}

/* Connect to the export and set the node's limits and name. */
static int nbd_open(vd_node *n, vd_opts *opts, int flags)
{
    struct nbd_state *s = n->state;
    char *name;
    int r;

    pthread_mutex_init(&s->grow_lock, NULL);
    s->lock_init = true;
    s->cfg.cancel = &s->closing;
    if ((r = parse_config(s, opts)) < 0 || (r = nbdc_connect(&s->cfg, &s->conns[0])) < 0)
        return r;
    s->nconns = 1;
    s->info = s->conns[0]->info;
    if ((r = check_writable(n, &s->info)) < 0)
        return r;
    if (!(s->info.flags & NBD_FLAG_CAN_MULTI_CONN))
        s->max_conns = 1;
    n->request_alignment = s->info.min_block ? s->info.min_block : 1;
    n->max_transfer = s->info.max_payload ? VD_MIN(s->info.max_payload, NBD_MAX_XFER)
                                          : NBD_MAX_XFER;
    n->max_transfer = VD_MAX(round_down(n->max_transfer, n->request_alignment),
                             (uint64_t)n->request_alignment);
    if ((name = canonical_name(&s->cfg))) {
        free(n->filename);
        n->filename = name;
    }
    vd_opts_del(opts, "filename");
    return 0;
}

/* Free a config's strings. */
static void free_config(struct nbdc_config *c)
{
    free(c->host);
    free(c->port);
    free(c->path);
    free(c->export);
    free(c->meta_context);
    free(c->tls_creds);
    free(c->tls_certs_dir);
    free(c->tls_psk_file);
    free(c->tls_username);
    free(c->tls_hostname);
}

/* Disconnect every connection. */
static void nbd_close(vd_node *n)
{
    struct nbd_state *s = n->state;

    atomic_store(&s->closing, true);
    if (s->grow_started)
        pthread_join(s->grow_thread, NULL);
    for (int i = 0; i < atomic_load(&s->nconns); i++)
        nbdc_close(s->conns[i]);
    free_config(&s->cfg);
    if (s->lock_init)
        pthread_mutex_destroy(&s->grow_lock);
}

/* The export's size in bytes (the core rounds the node up to sectors;
 * the tail beyond the export reads as zeroes). */
static int64_t nbd_getlength(vd_node *n)
{
    struct nbd_state *s = n->state;
    return (int64_t)s->info.size;
}

/* Bytes of [off, off+len) inside the export. */
static uint64_t in_export(const struct nbd_state *s, uint64_t off, uint64_t len)
{
    return off >= s->info.size ? 0 : VD_MIN(len, s->info.size - off);
}

/* Read; the sector-rounding tail past the export reads as zeroes. */
static int nbd_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct nbd_state *s = n->state;
    uint64_t l = in_export(s, off, len);

    if (l < len)
        memset((char *)buf + l, 0, (size_t)(len - l));
    return l ? nbdc_read(pick(s), off, (uint32_t)l, buf) : 0;
}

/* Flush after a FUA write when the server cannot do FUA itself. */
static int fua_fallback(struct nbd_state *s, int flags)
{
    if (!(flags & VD_REQ_FUA) || (s->info.flags & NBD_FLAG_SEND_FUA) ||
        !(s->info.flags & NBD_FLAG_SEND_FLUSH))
        return 0;
    return nbdc_flush(pick(s));
}

/* The FUA command flag for flags, when the server supports it. */
static uint16_t fua_flag(const struct nbd_state *s, int flags)
{
    return (flags & VD_REQ_FUA) && (s->info.flags & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
}

/* Write; bytes in the rounding tail past the export must be zero. */
static int nbd_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct nbd_state *s = n->state;
    uint64_t l = in_export(s, off, len);
    int r;

    if (l < len && !buffer_is_zero((const char *)buf + l, (size_t)(len - l)))
        return vd_error(EIO, "write beyond the end of the NBD export (%llu bytes)",
                        (unsigned long long)s->info.size);
    if (!l)
        return 0;
    if ((r = nbdc_write(pick(s), off, (uint32_t)l, buf, fua_flag(s, flags))) < 0)
        return r;
    return fua_fallback(s, flags);
}

/* Write zeroes: MAY_UNMAP allows a hole, NO_FALLBACK asks for FAST_ZERO. */
static int nbd_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct nbd_state *s = n->state;
    uint64_t l = in_export(s, off, len);
    uint16_t f = fua_flag(s, flags);
    int r;

    if (!(s->info.flags & NBD_FLAG_SEND_WRITE_ZEROES))
        return -ENOTSUP;
    if (flags & VD_REQ_NO_FALLBACK) {
        if (!(s->info.flags & NBD_FLAG_SEND_FAST_ZERO))
            return -ENOTSUP;
        f |= NBD_CMD_FLAG_FAST_ZERO;
    }
    if (!(flags & VD_REQ_MAY_UNMAP))
        f |= NBD_CMD_FLAG_NO_HOLE;
    if (!l)
        return 0;
    r = nbdc_zero(pick(s), off, (uint32_t)l, f);
    if (r == -ENOTSUP && (flags & VD_REQ_NO_FALLBACK))
        return -ENOTSUP;
    return r < 0 ? r : fua_fallback(s, flags);
}

/* Discard with NBD_CMD_TRIM when the server takes it (advisory). */
static int nbd_discard(vd_node *n, uint64_t off, uint64_t len)
{
    struct nbd_state *s = n->state;
    uint64_t l = in_export(s, off, len);

    if (!(s->info.flags & NBD_FLAG_SEND_TRIM) || !l)
        return 0;
    return nbdc_trim(pick(s), off, (uint32_t)l, 0);
}

/* Flush: with CAN_MULTI_CONN one flush covers every connection. */
static int nbd_flush(vd_node *n)
{
    struct nbd_state *s = n->state;

    if (!(s->info.flags & NBD_FLAG_SEND_FLUSH))
        return 0;
    if (s->info.flags & NBD_FLAG_CAN_MULTI_CONN || atomic_load(&s->nconns) == 1)
        return nbdc_flush(pick(s));
    for (int i = 0; i < atomic_load(&s->nconns); i++) {
        int r = nbdc_flush(s->conns[i]);
        if (r < 0)
            return r;
    }
    return 0;
}

/* base:allocation as DATA/ZERO (or x-dirty-bitmap's context, whose flag 1,
 * dirty, reads as a hole, as in QEMU); offsets map 1:1. */
static int nbd_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, vd_node **file)
{
    struct nbd_state *s = n->state;
    uint64_t a = n->request_alignment, aoff = round_down(off, a), l, got;
    uint32_t state;
    int r;

    *map = off;
    *file = n;
    if (off >= s->info.size) {           /* the rounding tail */
        *pnum = len;
        return VD_BS_ZERO;
    }
    len = VD_MIN(len, s->info.size - off);
    if (!s->info.have_alloc) {
        *pnum = len;
        return VD_BS_DATA | VD_BS_OFFSET_VALID;
    }
    l = VD_MIN(len + (off - aoff), (uint64_t)NBD_MAX_BS_LEN);
    if (aoff + l < s->info.size)
        l = VD_MAX(round_down(l, a), a);
    l = VD_MIN(l, s->info.size - aoff);
    if ((r = nbdc_block_status(pick(s), aoff, (uint32_t)l, &got, &state)) < 0)
        return r;
    *pnum = got > off - aoff ? VD_MIN(got - (off - aoff), len) : VD_MIN(len, a - (off - aoff));
    return VD_BS_OFFSET_VALID | (state & NBD_STATE_HOLE ? 0 : VD_BS_DATA) |
           (state & NBD_STATE_ZERO ? VD_BS_ZERO : 0);
}

static const struct vd_opt_desc nbd_open_opts[] = {
    { "server.type", VD_OPT_STRING, "Transport: inet, unix or fd", NULL },
    { "server.host", VD_OPT_STRING, "Host of an inet server", NULL },
    { "server.port", VD_OPT_STRING, "Port of an inet server", "10809" },
    { "server.path", VD_OPT_STRING, "Unix socket of the server", NULL },
    { "server.str", VD_OPT_STRING, "Connected socket (type fd)", NULL },
    { "host", VD_OPT_STRING, "Legacy: server.host", NULL },
    { "port", VD_OPT_STRING, "Legacy: server.port", NULL },
    { "path", VD_OPT_STRING, "Legacy: server.path", NULL },
    { "export", VD_OPT_STRING, "Export name", "" },
    { "tls-creds", VD_OPT_STRING, "ID of the TLS credentials object", NULL },
    { "tls-hostname", VD_OPT_STRING, "Host name checked in the server certificate", NULL },
    { "reconnect-delay", VD_OPT_NUMBER, "Accepted; connections are not re-established", "0" },
    { "open-timeout", VD_OPT_NUMBER, "Seconds the handshake may take", "0" },
    { "x-dirty-bitmap", VD_OPT_STRING, "Metadata context read as block status "
      "(qemu:dirty-bitmap:NAME: dirty reads as a hole)", NULL },
    { "x-multi-conn", VD_OPT_NUMBER, "Most connections with CAN_MULTI_CONN", "4" },
    { "x-io-timeout", VD_OPT_NUMBER, "Seconds to wait for a reply (0: forever)", "0" },
    { "x-tls", VD_OPT_BOOL, "Require TLS (nbds:// names)", "off" },
    { "x-tls-certificates", VD_OPT_STRING, "X.509 directory (nbds:// names)", NULL },
    { "x-tls-psk-file", VD_OPT_STRING, "PSK keys file (nbds:// names)", NULL },
    { "x-tls-username", VD_OPT_STRING, "PSK user name (nbds:// names)", NULL },
    { "x-tls-verify-peer", VD_OPT_BOOL, "Verify the server certificate", "on" },
    { NULL, 0, NULL, NULL },
};

static const char *const nbd_aliases[] = {
    "nbd+tcp", "nbd+unix", "nbds", "nbds+tcp", "nbds+unix", NULL,
};

static const struct vd_driver nbd_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "nbd",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "nbd",
    .protocol_aliases = nbd_aliases,
    .state_size = sizeof(struct nbd_state),
    .open_opts = nbd_open_opts,
    .parse_filename = nbd_parse_filename,
    .open = nbd_open,
    .close = nbd_close,
    .pread = nbd_pread,
    .pwrite = nbd_pwrite,
    .pwrite_zeroes = nbd_pwrite_zeroes,
    .discard = nbd_discard,
    .flush = nbd_flush,
    .block_status = nbd_block_status,
    .getlength = nbd_getlength,
};

VD_DRIVER_REGISTER(nbd_driver)
