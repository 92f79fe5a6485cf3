/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-nbd -L: a small synchronous NBD client that lists a server's
 * exports (NBD_OPT_LIST, then NBD_OPT_INFO and NBD_OPT_LIST_META_CONTEXT
 * for each) and prints them exactly as qemu-nbd -L does. */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "nbd.h"
#include "nbd/nbd-proto.h"
#include "nbd/wire.h"
#include "util/checked.h"

#define MAX_EXPORTS 4096
#define MAX_CONTEXTS 256
#define REPLY_MAX (1u << 20)

struct client {
    int fd;
    struct vd_nbd_tls_session *tls;
};

struct export_info {
    char *name, *desc;
    uint64_t size;
    uint16_t flags;
    uint32_t min_block, opt_block, max_block;
    char *contexts[MAX_CONTEXTS];
    int ncontexts;
};

/* Read exactly len bytes. */
static int c_read(struct client *c, void *buf, size_t len)
{
    char *p = buf;

    if (!c->tls)
        return vd_wire_read(c->fd, buf, len);
    while (len) {
        ssize_t n = vd_nbd_tls_recv(c->tls, p, len);
        if (n <= 0)
            return n < 0 ? (int)n : -ECONNRESET;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Write exactly len bytes. */
static int c_write(struct client *c, const void *buf, size_t len)
{
    return c->tls ? vd_nbd_tls_send(c->tls, buf, len) : vd_wire_write(c->fd, buf, len);
}

/* Send an option with payload. */
static int send_opt(struct client *c, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    int r;

    vd_put_be64(h, NBD_OPTS_MAGIC);
    vd_put_be32(h + 8, opt);
    vd_put_be32(h + 12, len);
    if ((r = c_write(c, h, sizeof(h))) < 0)
        return r;
    return len ? c_write(c, data, len) : 0;
}

/* Read one option reply: its type, and payload (malloc'd) in *data. */
static int read_reply(struct client *c, uint32_t opt, uint32_t *type, char **data,
                      uint32_t *len)
{
    uint8_t h[20];
    int r;

    *data = NULL;
    if ((r = c_read(c, h, sizeof(h))) < 0)
        return r;
    if (vd_get_be64(h) != NBD_REP_MAGIC || vd_get_be32(h + 8) != opt)
        return vd_error(EINVAL, "Unexpected option reply");
    *type = vd_get_be32(h + 12);
    *len = vd_get_be32(h + 16);
    if (*len > REPLY_MAX)
        return vd_error(EINVAL, "Option reply of %u bytes is too large", *len);
    if (!(*data = malloc(*len + 1)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = c_read(c, *data, *len)) < 0) {
        free(*data);
        *data = NULL;
        return r;
    }
    (*data)[*len] = '\0';
    return 0;
}

/* Connect to the socket or host:port of the command line. */
static int connect_server(const struct nbd_cli *cli, char *what, size_t wsize)
{
    const char *host = cli->bind ? cli->bind : "0.0.0.0";
    const char *port = cli->port ? cli->port : "10809";
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
    int fd = -1, err = ECONNREFUSED;

    if (cli->sockpath) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        snprintf(what, wsize, "%s", cli->sockpath);
        if (strlen(cli->sockpath) >= sizeof(sun.sun_path))
            return -ENAMETOOLONG;
        strcpy(sun.sun_path, cli->sockpath);
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
            err = errno;
            close(fd);
            return -err;
        }
        return fd;
    }
    snprintf(what, wsize, "%s:%s", host, port);
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -EHOSTUNREACH;
    for (ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd < 0 ? -err : fd;
}

/* Greeting, client flags and STARTTLS when tls is set. */
static int handshake(struct client *c, const struct nbd_cli *cli, struct vd_nbd_tls *tls)
{
    uint8_t g[18], cf[4];
    uint32_t type, len;
    char *data;
    int r;

    if ((r = c_read(c, g, sizeof(g))) < 0)
        return vd_error(-r, "Failed to read server greeting");
    if (vd_get_be64(g) != NBD_MAGIC || vd_get_be64(g + 8) != NBD_OPTS_MAGIC)
        return vd_error(EINVAL, "Server does not support the newstyle protocol");
    vd_put_be32(cf, vd_get_be16(g + 16) & (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    if ((r = c_write(c, cf, 4)) < 0)
        return r;
    if (!tls)
        return 0;
    if ((r = send_opt(c, NBD_OPT_STARTTLS, NULL, 0)) < 0 ||
        (r = read_reply(c, NBD_OPT_STARTTLS, &type, &data, &len)) < 0)
        return r;
    free(data);
    if (type != NBD_REP_ACK)
        return vd_error(EINVAL, "Server don't support STARTTLS option");
    return vd_nbd_tls_start(tls, c->fd, cli->tls_hostname ? cli->tls_hostname
                            : cli->sockpath ? NULL : (cli->bind ? cli->bind : "0.0.0.0"),
                            -1, &c->tls);
}

/* NBD_OPT_LIST: the export names and descriptions. */
static int list_names(struct client *c, struct export_info *ex, int *n)
{
    uint32_t type, len, nl;
    char *d;
    int r;

    if ((r = send_opt(c, NBD_OPT_LIST, NULL, 0)) < 0)
        return r;
    for (*n = 0;;) {
        if ((r = read_reply(c, NBD_OPT_LIST, &type, &d, &len)) < 0)
            return r;
        if (type == NBD_REP_ACK) {
            free(d);
            return 0;
        }
        if (type != NBD_REP_SERVER || len < 4 || (nl = vd_get_be32(d)) > len - 4 ||
            *n >= MAX_EXPORTS) {
            free(d);
            return vd_error(EINVAL, type & NBD_REP_FLAG_ERROR
                            ? "Server refused the export list" : "Malformed export list");
        }
        ex[*n].name = strndup(d + 4, nl);
        ex[*n].desc = strdup(d + 4 + nl);
        (*n)++;
        free(d);
    }
}

/* Record one NBD_REP_INFO in ex. */
static void take_info(struct export_info *ex, const char *d, uint32_t len)
{
    uint16_t t = len >= 2 ? vd_get_be16(d) : 0xffff;

    if (t == NBD_INFO_EXPORT && len >= 12) {
        ex->size = vd_get_be64(d + 2);
        ex->flags = vd_get_be16(d + 10);
    } else if (t == NBD_INFO_DESCRIPTION) {
        free(ex->desc);
        ex->desc = strndup(d + 2, len - 2);
    } else if (t == NBD_INFO_BLOCK_SIZE && len >= 14) {
        ex->min_block = vd_get_be32(d + 2);
        ex->opt_block = vd_get_be32(d + 6);
        ex->max_block = vd_get_be32(d + 10);
    }
}

/* Send a request carrying the export name plus a tail. */
static int send_named(struct client *c, uint32_t opt, const char *name,
                      const void *tail, size_t tlen)
{
    size_t nl = strlen(name);
    CLEANUP_FREE uint8_t *buf = malloc(4 + nl + tlen);

    if (!buf)
        return -ENOMEM;
    vd_put_be32(buf, (uint32_t)nl);
    memcpy(buf + 4, name, nl);
    memcpy(buf + 4 + nl, tail, tlen);
    return send_opt(c, opt, buf, (uint32_t)(4 + nl + tlen));
}

/* NBD_OPT_INFO for one export. */
static int export_info(struct client *c, struct export_info *ex)
{
    uint8_t tail[6];
    uint32_t type, len;
    char *d;
    int r;

    vd_put_be16(tail, 2);
    vd_put_be16(tail + 2, NBD_INFO_DESCRIPTION);
    vd_put_be16(tail + 4, NBD_INFO_BLOCK_SIZE);
    if ((r = send_named(c, NBD_OPT_INFO, ex->name, tail, sizeof(tail))) < 0)
        return r;
    for (;;) {
        if ((r = read_reply(c, NBD_OPT_INFO, &type, &d, &len)) < 0)
            return r;
        if (type == NBD_REP_INFO)
            take_info(ex, d, len);
        free(d);
        if (type != NBD_REP_INFO)
            return type == NBD_REP_ACK ? 0
                 : vd_error(EINVAL, "Server refused information on export '%s'", ex->name);
    }
}

/* NBD_OPT_LIST_META_CONTEXT (all contexts) for one export. */
static int export_contexts(struct client *c, struct export_info *ex)
{
    uint8_t tail[4] = { 0 };
    uint32_t type, len;
    char *d;
    int r;

    if ((r = send_named(c, NBD_OPT_LIST_META_CONTEXT, ex->name, tail, 4)) < 0)
        return r;
    for (;;) {
        if ((r = read_reply(c, NBD_OPT_LIST_META_CONTEXT, &type, &d, &len)) < 0)
            return r;
        if (type == NBD_REP_META_CONTEXT && len >= 4 && ex->ncontexts < MAX_CONTEXTS)
            ex->contexts[ex->ncontexts++] = strndup(d + 4, len - 4);
        free(d);
        if (type != NBD_REP_META_CONTEXT)
            return 0;
    }
}

/* Ask for structured replies (needed to list contexts). */
static bool structured(struct client *c)
{
    uint32_t type, len;
    char *d;

    if (send_opt(c, NBD_OPT_STRUCTURED_REPLY, NULL, 0) < 0 ||
        read_reply(c, NBD_OPT_STRUCTURED_REPLY, &type, &d, &len) < 0)
        return false;
    free(d);
    return type == NBD_REP_ACK;
}

/* Print one export as qemu-nbd -L does. */
static void print_export(const struct export_info *ex)
{
    static const char *const names[] = { NULL, "readonly", "flush", "fua", "rotational",
                                         "trim", "zeroes", "df", "multi", "resize",
                                         "cache", "fast-zero" };

    printf(" export: '%s'\n", ex->name);
    if (ex->desc && *ex->desc)
        printf("  description: %s\n", ex->desc);
    printf("  size:  %" PRIu64 "\n", ex->size);
    printf("  flags: 0x%x (", ex->flags);
    for (unsigned i = 1; i < sizeof(names) / sizeof(names[0]); i++)
        if (ex->flags & (1u << i))
            printf(" %s", names[i]);
    printf(" )\n");
    if (ex->min_block) {
        printf("  min block: %u\n", ex->min_block);
        printf("  opt block: %u\n", ex->opt_block);
        printf("  max block: %u\n", ex->max_block);
    }
    if (ex->ncontexts) {
        printf("  available meta contexts: %d\n", ex->ncontexts);
        for (int i = 0; i < ex->ncontexts; i++)
            printf("   %s\n", ex->contexts[i]);
    }
}

/* Query everything and print. */
static int query(struct client *c, struct export_info *ex, int *n)
{
    bool sr;
    int r;

    if ((r = list_names(c, ex, n)) < 0)
        return r;
    sr = structured(c);
    for (int i = 0; i < *n; i++) {
        if ((r = export_info(c, &ex[i])) < 0)
            return r;
        if (sr && (r = export_contexts(c, &ex[i])) < 0)
            return r;
    }
    printf("exports available: %d\n", *n);
    for (int i = 0; i < *n; i++)
        print_export(&ex[i]);
    send_opt(c, NBD_OPT_ABORT, NULL, 0);
    return 0;
}

/* See nbd.h. */
int nbd_list(const struct nbd_cli *cli, struct vd_nbd_tls *tls)
{
    struct client c = { .fd = -1 };
    struct export_info *ex = calloc(MAX_EXPORTS, sizeof(*ex));
    char what[4200];
    int n = 0, r;

    if (!ex)
        return nbd_err("out of memory"), EXIT_FAILURE;
    if ((c.fd = connect_server(cli, what, sizeof(what))) < 0) {
        nbd_err("Failed to connect to '%s': %s", what, strerror(-c.fd));
        free(ex);
        return EXIT_FAILURE;
    }
    vd_error_clear();
    r = handshake(&c, cli, tls);
    if (r >= 0)
        r = query(&c, ex, &n);
    if (r < 0)
        nbd_err("%s", *vd_errmsg() ? vd_errmsg() : strerror(-r));
    for (int i = 0; i < n; i++) {
        free(ex[i].name);
        free(ex[i].desc);
        for (int j = 0; j < ex[i].ncontexts; j++)
            free(ex[i].contexts[j]);
    }
    free(ex);
    if (c.tls)
        vd_nbd_tls_end(c.tls);
    close(c.fd);
    return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
