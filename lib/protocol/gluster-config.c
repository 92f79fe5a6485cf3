/* SPDX-License-Identifier: BSD-3-Clause */
/* Names and options of the gluster driver: the URL forms
 * gluster[+tcp|+unix|+rdma]://[host[:port]]/volume/path[?socket=...], the
 * JSON form (volume, path, server.N.type/host/port/path), debug, logfile,
 * with QEMU 7.2's checks and messages, and the json: name QEMU gives a node
 * opened by options. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/gluster-config.h"
#include "util/checked.h"
#include "util/json.h"
#include "util/uri.h"
#include "vdisk/vdisk.h"

/* ---- configuration ---- */

/* Every entry, counted or not (a failed parse leaves one half made). */
void gl_free_config(struct gl_config *c)
{
    for (size_t i = 0; i < GL_MAX_SERVERS; i++) {
        free(c->servers[i].host);
        free(c->servers[i].port);
        free(c->servers[i].socket);
    }
    free(c->volume);
    free(c->path);
    free(c->logfile);
    memset(c, 0, sizeof(*c));
}

/* Copy [s, s+len) into a new string. */
static char *dup_n(const char *s, size_t len)
{
    char *p = malloc(len + 1);

    if (p) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

/* "/volume/path": leading slashes, the volume up to the next slash, more
 * slashes, then the path (which may not be empty). */
static int split_volume_path(const char *p, struct gl_config *c)
{
    size_t vlen;

    p += strspn(p, "/");
    vlen = strcspn(p, "/");
    if (!vlen)
        return -EINVAL;
    if (!(c->volume = dup_n(p, vlen)))
        return -ENOMEM;
    p += vlen;
    p += strspn(p, "/");
    if (!*p)
        return -EINVAL;
    return (c->path = strdup(p)) ? 0 : -ENOMEM;
}

/* Count query elements ('&' or ';' separated, empty ones skipped); the
 * first one's key and value. */
static size_t query_params(const char *q, char **key, char **val)
{
    size_t n = 0;

    *key = *val = NULL;
    while (q && *q) {
        size_t len = strcspn(q, "&;");
        if (len) {
            if (!n++) {
                const char *eq = memchr(q, '=', len);
                size_t kl = eq ? (size_t)(eq - q) : len;
                *key = vd_uri_decode(q, kl);
                *val = eq ? vd_uri_decode(eq + 1, len - kl - 1) : strdup("");
            }
        }
        q += len;
        if (*q)
            q++;
    }
    return n;
}

/* The transport of a scheme: 0 tcp, 1 unix, 2 rdma (tcp), -1 unknown. */
static int scheme_transport(const char *scheme)
{
    if (!strcmp(scheme, "gluster") || !strcmp(scheme, "gluster+tcp"))
        return 0;
    if (!strcmp(scheme, "gluster+unix"))
        return 1;
    if (!strcmp(scheme, "gluster+rdma"))
        return 2;
    return -1;
}

/* The server of a URL, inet or unix. */
static int uri_server(const struct vd_uri *u, int transport, struct gl_server *s)
{
    char *key, *val, port[16];
    size_t n = query_params(u->query, &key, &val);
    int r = -EINVAL;

    if (transport == 1) {
        if (n == 1 && key && val && !strcmp(key, "socket") && (!u->host || !*u->host) &&
            u->port < 0) {
            s->type = GL_UNIX;
            s->socket = val;
            val = NULL;
            r = 0;
        }
    } else if (n == 0) {
        s->type = GL_INET;
        /* an IPv6 literal keeps its brackets, as QEMU passes it on */
        if (u->host && *u->host && strchr(u->host, ':'))
            r = asprintf(&s->host, "[%s]", u->host) < 0 ? -ENOMEM : 0;
        else
            r = (s->host = strdup(u->host && *u->host ? u->host : "localhost")) ? 0 : -ENOMEM;
        snprintf(port, sizeof(port), "%d", u->port > 0 ? u->port : 24007);
        if (r == 0 && !(s->port = strdup(port)))
            r = -ENOMEM;
    }
    free(key);
    free(val);
    return r;
}

/* gluster[+transport]://[host[:port]]/volume/path[?socket=...]; -EINVAL
 * without a message when malformed. */
static int parse_uri(const char *name, struct gl_config *c)
{
    struct vd_uri u;
    int transport, r;

    if (vd_uri_parse(name, &u) < 0) {
        vd_error_clear();
        return -EINVAL;
    }
    transport = scheme_transport(u.scheme);
    r = transport < 0 || u.fragment ? -EINVAL : split_volume_path(u.path, c);
    if (r == 0 && (r = uri_server(&u, transport, &c->servers[0])) == 0)
        c->nservers = 1;
    vd_uri_free(&u);
    c->rdma = r == 0 && transport == 2;
    return r;
}

/* QEMU's error for a bad URL. */
static int uri_error(const char *name)
{
    return vd_error(EINVAL, "invalid URI %s\n" GL_URI_USAGE, name);
}

/* QEMU's error for a missing JSON-form key, with the server index hint
 * (index < 0: none) and its usage line. */
static int json_error(const char *key, long index)
{
    char hint[64] = "";

    if (index >= 0)
        snprintf(hint, sizeof(hint), "\nhint: check in 'server' array index '%ld'", index);
    return vd_error(EINVAL, "Parameter '%s' is missing%s\n" GL_JSON_USAGE, key, hint);
}

/* Value of server.i.key, NULL if absent. */
static const char *server_opt(const vd_opts *o, size_t i, const char *key)
{
    char k[64];

    snprintf(k, sizeof(k), "server.%zu.%s", i, key);
    return vd_opts_get(o, k);
}

/* Is port a number 0..65535 (QEMU's inet port check)? */
static bool port_valid(const char *p)
{
    char *end;
    unsigned long v;

    if (!*p || strspn(p, "0123456789") != strlen(p))
        return false;
    errno = 0;
    v = strtoul(p, &end, 10);
    return !errno && v <= 65535;
}

/* One server.i.* entry. */
static int json_server(const vd_opts *o, size_t i, struct gl_server *s)
{
    const char *type = server_opt(o, i, "type"), *host, *port, *path;

    if (!type)
        return json_error("type", (long)i);
    if (!strcmp(type, "unix")) {
        path = server_opt(o, i, "path");
        if (!path)
            path = server_opt(o, i, "socket");
        if (!path)
            return json_error("path", (long)i);
        s->type = GL_UNIX;
        return (s->socket = strdup(path)) ? 0 : vd_error(ENOMEM, "out of memory");
    }
    if (strcmp(type, "inet") && strcmp(type, "tcp"))
        return vd_error(EINVAL, "Parameter 'type' may be 'inet' or 'unix'\nhint: check in "
                        "'server' array index '%zu'\n" GL_JSON_USAGE, i);
    if (!(host = server_opt(o, i, "host")))
        return json_error("host", (long)i);
    if (!(port = server_opt(o, i, "port")))
        return json_error("port", (long)i);
    if (!port_valid(port))
        return vd_error(EINVAL, "'%s' is not a valid port number", port);
    if (server_opt(o, i, "to"))
        return vd_error(EINVAL, "Parameter 'to' not supported\n" GL_JSON_USAGE);
    if (server_opt(o, i, "ipv4") || server_opt(o, i, "ipv6"))
        return vd_error(EINVAL, "Parameters 'ipv4/ipv6' not supported\n" GL_JSON_USAGE);
    s->type = GL_INET;
    if (!(s->host = strdup(host)) || !(s->port = strdup(port)))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* volume, path and the server list from the options. */
static int parse_json(const vd_opts *o, struct gl_config *c)
{
    const char *volume = vd_opts_get(o, "volume"), *path = vd_opts_get(o, "path");
    int r;

    if (!server_opt(o, 0, "type") && !server_opt(o, 0, "host") && !server_opt(o, 0, "port") &&
        !server_opt(o, 0, "path") && !server_opt(o, 0, "socket"))
        return json_error("server", -1);
    if (!volume)
        return json_error("volume", -1);
    if (!path)
        return json_error("path", -1);
    if (!(c->volume = strdup(volume)) || !(c->path = strdup(path)))
        return vd_error(ENOMEM, "out of memory");
    for (size_t i = 0; i < GL_MAX_SERVERS; i++) {
        if (i > 0 && !server_opt(o, i, "type") && !server_opt(o, i, "host") &&
            !server_opt(o, i, "port") && !server_opt(o, i, "path") &&
            !server_opt(o, i, "socket"))
            break;
        if ((r = json_server(o, i, &c->servers[i])) < 0)
            return r;
        c->nservers = i + 1;
    }
    return 0;
}

/* debug, logfile and x-timeout, common to both forms. */
static int parse_common(const vd_opts *o, struct gl_config *c)
{
    const char *d = vd_opts_get(o, "debug"), *log = vd_opts_get(o, "logfile");
    long long v;
    char *end;
    int r;

    c->debug = GL_DEFAULT_DEBUG;
    if (d) {
        errno = 0;
        v = strtoll(d, &end, 10);
        if (!*d || *end || errno)
            return vd_error(EINVAL, "Parameter 'debug' expects a number");
        c->debug = v < 0 ? 0 : v > GL_DEBUG_MAX ? GL_DEBUG_MAX : (uint64_t)v;
    }
    if (log && !(c->logfile = strdup(log)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_opts_get_u64(o, "x-timeout", GL_DEFAULT_TIMEOUT, &c->timeout)) < 0)
        return r;
    if (c->timeout < GL_TIMEOUT_MIN || c->timeout > GL_TIMEOUT_MAX)
        return vd_error(EINVAL, "x-timeout must be between %d and %d seconds",
                        GL_TIMEOUT_MIN, GL_TIMEOUT_MAX);
    return 0;
}

/* The whole configuration: a URL in filename wins over the other keys. */
int gl_parse_config(const vd_opts *o, struct gl_config *c)
{
    const char *fn = vd_opts_get(o, "filename");
    int r;

    if (fn) {
        if ((r = parse_uri(fn, c)) < 0)
            return r == -ENOMEM ? vd_error(ENOMEM, "out of memory") : uri_error(fn);
        c->from_uri = true;
    } else if ((r = parse_json(o, c)) < 0) {
        return r;
    }
    return parse_common(o, c);
}

/* The key naming a volume on a server list. */
char *gl_conn_key(const struct gl_config *c)
{
    size_t len = strlen(c->volume) + 2;
    char *k, *p;

    for (size_t i = 0; i < c->nservers; i++) {
        const struct gl_server *s = &c->servers[i];
        len += 8 + (s->type == GL_UNIX ? strlen(s->socket)
                                       : strlen(s->host) + strlen(s->port) + 1);
    }
    if (!(k = malloc(len)))
        return NULL;
    p = k + sprintf(k, "%s", c->volume);
    for (size_t i = 0; i < c->nservers; i++) {
        const struct gl_server *s = &c->servers[i];
        p += s->type == GL_UNIX ? sprintf(p, "\nunix:%s", s->socket)
                                : sprintf(p, "\ntcp:%s:%s", s->host, s->port);
    }
    return k;
}


/* QEMU prints a json: name's keys in the order of its dictionary's hash
 * buckets (512 of them); this is that bucket for key. */
static unsigned key_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);

    for (unsigned i = 0; key[i]; i++)
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    return (1103515243u * v + 12345u) % 512;
}

/* Options that name the image (QEMU's strong options). */
static bool strong_key(const char *k)
{
    static const char *const keys[] = {
        "volume", "path", "type", "host", "port", "to", "ipv4", "ipv6", "socket",
    };
    if (!strncmp(k, "server.", 7))
        return true;
    for (size_t i = 0; i < VD_ARRAY_SIZE(keys); i++)
        if (!strcmp(k, keys[i]))
            return true;
    return false;
}

/* The json: name QEMU gives a node opened by options. */
char *gl_json_name(const vd_opts *o)
{
    size_t n = vd_opts_count(o), nk = 0;
    const char **keys = calloc(n + 1, sizeof(*keys));
    vd_json *j = NULL;
    char *text = NULL, *name = NULL;

    if (!keys)
        return NULL;
    keys[nk++] = "driver";
    for (size_t i = 0; i < n; i++)
        if (strong_key(vd_opts_key(o, i)))
            keys[nk++] = vd_opts_key(o, i);
    for (size_t i = 1; i < nk; i++)          /* insertion sort by bucket */
        for (size_t k = i; k > 0 && key_bucket(keys[k]) < key_bucket(keys[k - 1]); k--) {
            const char *t = keys[k];
            keys[k] = keys[k - 1];
            keys[k - 1] = t;
        }
    if ((j = vd_json_new_object())) {
        for (size_t i = 0; i < nk; i++)
            vd_json_set_str(j, keys[i], !strcmp(keys[i], "driver") ? "gluster"
                                                                   : vd_opts_get(o, keys[i]));
        if ((text = vd_json_to_compact(j)) && asprintf(&name, "json:%s", text) < 0)
            name = NULL;
    }
    free(text);
    vd_json_free(j);
    free(keys);
    return name;
}
