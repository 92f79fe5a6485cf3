/* SPDX-License-Identifier: BSD-3-Clause */
/* The "ssh" protocol driver: an image file on an SFTP server, through
 * libssh.  QEMU's names and options (ssh://[user@]host[:port]/path,
 * server.host/port, path, user, host-key-check and the legacy
 * host_key_check string), host keys checked against known_hosts or a
 * fingerprint, public key authentication (ssh-agent, then the default key
 * files, as libssh's automatic method tries them).  Unlike QEMU, which runs
 * one request at a time on one connection, a node keeps a small pool of
 * connections opened on demand, one request on each, and pipelines the
 * reads of a request with libssh's asynchronous SFTP reads.  Every blocking
 * libssh call is bounded by the session timeout. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libssh/libssh.h>
#include <libssh/sftp.h>

#include "util/checked.h"
#include "util/uri.h"
#include "vdisk/driver.h"

#define SSH_DEFAULT_PORT 22
#define SSH_DEFAULT_CONNS 4
#define SSH_MAX_CONNS 16
#define SSH_DEFAULT_TIMEOUT 30        /* seconds per blocking call */
#define SSH_TIMEOUT_MAX 3600
#define SSH_READ_CHUNK (64u << 10)     /* one asynchronous SFTP read */
#define SSH_READ_DEPTH 16              /* reads in flight per connection */
#define SSH_WRITE_CHUNK (64u << 10)    /* one SFTP write */
#define SSH_MAX_XFER (2u << 20)

enum hkc_mode { HKC_NONE, HKC_KNOWN_HOSTS, HKC_HASH };

/* Where and how to connect: the parsed options. */
struct ssh_config {
    char *host, *port_str, *user, *path, *legacy_hkc, *known_hosts, *identity;
    int port;
    enum hkc_mode hkc;
    enum ssh_publickey_hash_type hash_type;
    const char *hash_name;
    char *hash;
    long timeout;
};

/* One SSH session with the image open on it. */
struct ssh_conn {
    ssh_session session;
    sftp_session sftp;
    sftp_file fh;
    bool busy, broken;
    uint64_t deadline_ms;             /* busy: when the request is overdue */
};

struct ssh_state {
    struct ssh_config cfg;
    int open_flags;                   /* O_RDONLY or O_RDWR */
    struct ssh_conn conns[SSH_MAX_CONNS];
    int nconns, max_conns, opening;
    pthread_mutex_t lock;             /* guards conns' busy, nconns, length */
    pthread_cond_t cond;              /* a connection became free */
    bool locks_init, has_fsync, regular;
    pthread_t watchdog;
    pthread_cond_t wd_cond;           /* wakes the watchdog to stop */
    bool wd_started, stopping;
    uint64_t length;
};

/* ---- names ---- */

/* One option; -ENOMEM with a message. */
static int set(vd_opts *o, const char *k, const char *v)
{
    return vd_opts_set(o, k, v) < 0 ? vd_error(ENOMEM, "out of memory") : 0;
}

/* ssh://[user@]host[:port]/path[?host_key_check=...] into options.  A URI
 * that does not parse sets nothing (QEMU then misses 'server'). */
static int ssh_parse_filename(const char *name, vd_opts *o)
{
    struct vd_uri u;
    char port[16], *hkc;
    int r;

    if (vd_uri_parse(name, &u) < 0) {
        vd_error_clear();
        return 0;
    }
    if (!u.scheme || strcmp(u.scheme, "ssh"))
        r = vd_error(EINVAL, "URI scheme must be 'ssh'");
    else if (!u.host || !*u.host)
        r = vd_error(EINVAL, "missing hostname in URI");
    else if (!u.path[0])
        r = vd_error(EINVAL, "missing remote path in URI");
    else {
        snprintf(port, sizeof(port), "%d", u.port > 0 ? u.port : SSH_DEFAULT_PORT);
        r = 0;
        if (u.user && *u.user)
            r = set(o, "user", u.user);
        if (r >= 0 && (r = set(o, "server.host", u.host)) >= 0 &&
            (r = set(o, "server.port", port)) >= 0)
            r = set(o, "path", u.path);
        hkc = vd_uri_query_param(&u, "host_key_check");
        if (r >= 0 && hkc)
            r = set(o, "host_key_check", hkc);
        free(hkc);
    }
    vd_uri_free(&u);
    return r;
}

/* ---- options ---- */

/* The legacy keys host, port and host_key_check as QEMU maps them. */
static int legacy_options(vd_opts *o)
{
    const char *host = vd_opts_get(o, "host"), *port = vd_opts_get(o, "port");
    int r = 0;

    if (host && !vd_opts_has(o, "server.host")) {
        if ((r = set(o, "server.host", host)) >= 0)
            r = set(o, "server.port", port ? port : "22");
    }
    vd_opts_del(o, "host");
    vd_opts_del(o, "port");
    return r;
}

/* A copy of option k into *out (NULL when absent). */
static int opt_dup(const vd_opts *o, const char *k, char **out)
{
    const char *v = vd_opts_get(o, k);

    *out = NULL;
    if (v && !(*out = strdup(v)))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* The hash type named by a host key check (md5, sha1, sha256). */
static bool hash_type(const char *name, size_t len, struct ssh_config *c)
{
    static const struct { const char *name; enum ssh_publickey_hash_type t; } types[] = {
        { "md5", SSH_PUBLICKEY_HASH_MD5 },
        { "sha1", SSH_PUBLICKEY_HASH_SHA1 },
        { "sha256", SSH_PUBLICKEY_HASH_SHA256 },
    };

    for (size_t i = 0; i < VD_ARRAY_SIZE(types); i++)
        if (strlen(types[i].name) == len && !strncmp(name, types[i].name, len)) {
            c->hash_type = types[i].t;
            c->hash_name = types[i].name;
            return true;
        }
    return false;
}

/* The legacy host_key_check string: no, yes, md5:/sha1:/sha256:HASH. */
static int legacy_hkc(struct ssh_config *c, const char *v)
{
    const char *colon = strchr(v, ':');

    if (!strcmp(v, "no"))
        c->hkc = HKC_NONE;
    else if (!strcmp(v, "yes"))
        c->hkc = HKC_KNOWN_HOSTS;
    else if (colon && hash_type(v, (size_t)(colon - v), c)) {
        c->hkc = HKC_HASH;
        if (!(c->hash = strdup(colon + 1)))
            return vd_error(ENOMEM, "out of memory");
    } else
        return vd_error(EINVAL, "unknown host_key_check setting (%s)", v);
    return 0;
}

/* host-key-check.mode/type/hash, or the legacy string. */
static int parse_hkc(struct ssh_config *c, const vd_opts *o)
{
    const char *legacy = vd_opts_get(o, "host_key_check");
    const char *mode = vd_opts_get(o, "host-key-check.mode");
    const char *type = vd_opts_get(o, "host-key-check.type");

    c->hkc = HKC_KNOWN_HOSTS;
    if (legacy) {
        if (!(c->legacy_hkc = strdup(legacy)))
            return vd_error(ENOMEM, "out of memory");
        return legacy_hkc(c, legacy);
    }
    if (!mode) {
        if (vd_opts_has(o, "host-key-check.type") || vd_opts_has(o, "host-key-check.hash"))
            return vd_error(EINVAL, "Parameter 'host-key-check.mode' is missing");
        return 0;
    }
    if (!strcmp(mode, "none"))
        c->hkc = HKC_NONE;
    else if (!strcmp(mode, "known_hosts"))
        c->hkc = HKC_KNOWN_HOSTS;
    else if (!strcmp(mode, "hash"))
        c->hkc = HKC_HASH;
    else
        return vd_error(EINVAL, "Parameter 'mode' does not accept value '%s'", mode);
    if (c->hkc != HKC_HASH)
        return 0;
    if (!type)
        return vd_error(EINVAL, "Parameter 'host-key-check.type' is missing");
    if (!hash_type(type, strlen(type), c))
        return vd_error(EINVAL, "Parameter 'type' does not accept value '%s'", type);
    if (!vd_opts_has(o, "host-key-check.hash"))
        return vd_error(EINVAL, "Parameter 'host-key-check.hash' is missing");
    return opt_dup(o, "host-key-check.hash", &c->hash);
}

/* server.host and server.port (QEMU's messages for missing ones). */
static int parse_server(struct ssh_config *c, const vd_opts *o)
{
    const char *port = vd_opts_get(o, "server.port");
    char *end;
    long v;
    int r;

    if (!vd_opts_has(o, "server.host") && !port)
        return vd_error(EINVAL, "Parameter 'server' is missing");
    if (!vd_opts_has(o, "server.host"))
        return vd_error(EINVAL, "Parameter 'server.host' is missing");
    if (!port)
        return vd_error(EINVAL, "Parameter 'server.port' is missing");
    errno = 0;
    v = strtol(port, &end, 10);
    if (!*port || *end || errno || v < INT_MIN || v > INT_MAX)
        return vd_error(EINVAL, "Use only numeric port value");
    c->port = (int)v;
    if ((r = opt_dup(o, "server.port", &c->port_str)) < 0)
        return r;
    return opt_dup(o, "server.host", &c->host);
}

/* The local user's name, QEMU's default for the remote one. */
static int default_user(char **out)
{
    struct passwd pw, *res = NULL;
    char buf[4096];

    if (getpwuid_r(getuid(), &pw, buf, sizeof(buf), &res) || !res)
        return vd_error(EINVAL, "Can't get user name");
    if (!(*out = strdup(res->pw_name)))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* Numbers of the extension options. */
static int parse_numbers(struct ssh_config *c, const vd_opts *o, int *conns)
{
    uint64_t t, n;
    int r;

    if ((r = vd_opts_get_u64(o, "x-timeout", SSH_DEFAULT_TIMEOUT, &t)) < 0 ||
        (r = vd_opts_get_u64(o, "x-connections", SSH_DEFAULT_CONNS, &n)) < 0)
        return r;
    if (t < 1 || t > SSH_TIMEOUT_MAX)
        return vd_error(EINVAL, "x-timeout must be between 1 and %d", SSH_TIMEOUT_MAX);
    if (n < 1 || n > SSH_MAX_CONNS)
        return vd_error(EINVAL, "x-connections must be between 1 and %d", SSH_MAX_CONNS);
    c->timeout = (long)t;
    *conns = (int)n;
    return 0;
}

/* Options the driver takes; any other one is refused as QEMU does. */
static const char *const known_opts[] = {
    "server.host", "server.port", "path", "user", "host_key_check",
    "host-key-check.mode", "host-key-check.type", "host-key-check.hash",
    "x-timeout", "x-connections", "x-known-hosts", "x-identity-file", "filename",
};

/* Keys every node takes (the core checks them). */
static const char *const common_keys[] = {
    "driver", "node-name", "read-only", "auto-read-only", "force-share", "discard",
    "detect-zeroes", "cache.direct", "cache.no-flush", "backing",
};

/* Is k in the list? */
static bool in_list(const char *k, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, list[i]))
            return true;
    return false;
}

/* Refuse keys that are not ours (QEMU's message). */
static int check_unknown(const vd_opts *o)
{
    for (size_t i = 0; i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        if (!in_list(k, known_opts, VD_ARRAY_SIZE(known_opts)) &&
            !in_list(k, common_keys, VD_ARRAY_SIZE(common_keys)))
            return vd_error(EINVAL, "Parameter '%s' is unexpected", k);
    }
    return 0;
}

/* All the options into c, in QEMU's order of checks. */
static int parse_config(struct ssh_config *c, vd_opts *o, int *conns)
{
    const char *fn = vd_opts_get(o, "filename");
    int r;

    if (fn && !vd_opts_has(o, "server.host") && !vd_opts_has(o, "host") &&
        !vd_opts_has(o, "path") && (r = ssh_parse_filename(fn, o)) < 0)
        return r;
    if ((r = legacy_options(o)) < 0 || (r = check_unknown(o)) < 0 ||
        (r = parse_server(c, o)) < 0)
        return r;
    if (!vd_opts_has(o, "path"))
        return vd_error(EINVAL, "Parameter 'path' is missing");
    if ((r = opt_dup(o, "path", &c->path)) < 0 || (r = opt_dup(o, "user", &c->user)) < 0 ||
        (!c->user && (r = default_user(&c->user)) < 0) || (r = parse_hkc(c, o)) < 0 ||
        (r = opt_dup(o, "x-known-hosts", &c->known_hosts)) < 0 ||
        (r = opt_dup(o, "x-identity-file", &c->identity)) < 0)
        return r;
    return parse_numbers(c, o, conns);
}

static void free_config(struct ssh_config *c)
{
    free(c->host);
    free(c->port_str);
    free(c->user);
    free(c->path);
    free(c->legacy_hkc);
    free(c->known_hosts);
    free(c->identity);
    free(c->hash);
}

/* ---- connecting ---- */

/* "msg: libssh's error (libssh error code: N)", QEMU's form. */
static int session_error(int err, ssh_session s, const char *msg)
{
    return vd_error(err, "%s: %s (libssh error code: %d)", msg, ssh_get_error(s),
                    ssh_get_error_code(s));
}

/* The same with the SFTP status code. */
static int sftp_error_msg(int err, struct ssh_conn *c, const char *msg)
{
    return vd_error(err, "%s: %s (libssh error code: %d, sftp error code: %d)", msg,
                    ssh_get_error(c->session), ssh_get_error_code(c->session),
                    sftp_get_error(c->sftp));
}

/* The value of hex digit ch, or -1. */
static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Does the hex fingerprint check (colons allowed) name the bytes fp? */
static bool fingerprint_matches(const unsigned char *fp, size_t len, const char *check)
{
    for (; len > 0; len--, fp++, check += 2) {
        while (*check == ':')
            check++;
        int hi = hexval(check[0]), lo = hi < 0 ? -1 : hexval(check[1]);
        if (hi < 0 || lo < 0 || (unsigned)(hi * 16 + lo) != *fp)
            return false;
    }
    return *check == '\0';
}

/* Check the server's key against the configured fingerprint. */
static int check_hash(ssh_session s, const struct ssh_config *c)
{
    ssh_key key = NULL;
    unsigned char *h = NULL;
    size_t hl = 0;
    char *hex;
    int r = 0;

    if (ssh_get_server_publickey(s, &key) != SSH_OK)
        return session_error(EINVAL, s, "failed to read remote host key");
    if (ssh_get_publickey_hash(key, c->hash_type, &h, &hl) != SSH_OK) {
        ssh_key_free(key);
        return session_error(EINVAL, s, "failed reading the hash of the server SSH key");
    }
    if (!fingerprint_matches(h, hl, c->hash)) {
        hex = calloc(1, hl * 2 + 1);
        for (size_t i = 0; hex && i < hl; i++)
            snprintf(hex + 2 * i, 3, "%02x", h[i]);
        r = vd_error(EPERM, "remote host %s key fingerprint '%s:%s' does not match "
                     "host_key_check '%s:%s'", ssh_key_type_to_char(ssh_key_type(key)),
                     c->hash_name, hex ? hex : "", c->hash_name, c->hash);
        free(hex);
    }
    ssh_clean_pubkey_hash(&h);
    ssh_key_free(key);
    return r;
}

/* The changed-key message with the server key's SHA256 fingerprint. */
static int key_changed(ssh_session s)
{
    ssh_key key = NULL;
    unsigned char *h = NULL;
    size_t hl = 0;
    char *fp = NULL;
    int r;

    if (ssh_get_server_publickey(s, &key) == SSH_OK &&
        ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &h, &hl) == SSH_OK)
        fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, h, hl);
    if (fp)
        r = vd_error(EPERM, "host key (%s key with fingerprint %s) does not match the one in "
                     "known_hosts; this may be a possible attack",
                     ssh_key_type_to_char(ssh_key_type(key)), fp);
    else
        r = vd_error(EPERM, "host key does not match the one in known_hosts; this may be "
                     "a possible attack");
    ssh_string_free_char(fp);
    ssh_clean_pubkey_hash(&h);
    ssh_key_free(key);
    return r;
}

/* Check the server's key against known_hosts. */
static int check_known_hosts(ssh_session s)
{
    enum ssh_known_hosts_e st = ssh_session_is_known_server(s);

    switch (st) {
    case SSH_KNOWN_HOSTS_OK:
        return 0;
    case SSH_KNOWN_HOSTS_CHANGED:
        return key_changed(s);
    case SSH_KNOWN_HOSTS_OTHER:
        return vd_error(EINVAL, "host key for this server not found, another type exists");
    case SSH_KNOWN_HOSTS_UNKNOWN:
        return vd_error(EINVAL, "no host key was found in known_hosts");
    case SSH_KNOWN_HOSTS_NOT_FOUND:
        return vd_error(ENOENT, "known_hosts file not found");
    case SSH_KNOWN_HOSTS_ERROR:
        return vd_error(EINVAL, "error while checking the host");
    default:
        return vd_error(EINVAL, "error while checking for known server (%d)", (int)st);
    }
}

/* Public key authentication: none first, then agent and key files. */
static int authenticate(ssh_session s)
{
    int r = ssh_userauth_none(s, NULL);

    if (r == SSH_AUTH_ERROR)
        return session_error(EPERM, s, "failed to authenticate using none authentication");
    if (r == SSH_AUTH_SUCCESS)
        return 0;
    if (ssh_userauth_list(s, NULL) & SSH_AUTH_METHOD_PUBLICKEY) {
        r = ssh_userauth_publickey_auto(s, NULL, NULL);
        if (r == SSH_AUTH_ERROR)
            return session_error(EINVAL, s,
                                 "failed to authenticate using publickey authentication");
        if (r == SSH_AUTH_SUCCESS)
            return 0;
    }
    return vd_error(EPERM, "failed to authenticate using publickey authentication and the "
                    "identities held by your ssh-agent");
}

/* Connect fd to address a within timeout seconds; 0 or -errno. */
static int connect_timeout(int fd, const struct addrinfo *a, long timeout)
{
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int flags = fcntl(fd, F_GETFL), err = 0, r;
    socklen_t el = sizeof(err);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
        if (errno != EINPROGRESS)
            return -errno;
        do
            r = poll(&p, 1, (int)(timeout * 1000));
        while (r < 0 && errno == EINTR);
        if (r == 0)
            return -ETIMEDOUT;
        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            return -errno;
        if (err)
            return -err;
    }
    return fcntl(fd, F_SETFL, flags) < 0 ? -errno : 0;
}

/* A TCP connection to the server (QEMU connects the socket itself and
 * gives it to libssh; its messages). */
static int connect_socket(const struct ssh_config *c, int *out)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    int r, err = ECONNREFUSED, fd = -1;

    if ((r = getaddrinfo(c->host, c->port_str, &hints, &res)) != 0)
        return vd_error(EINVAL, "address resolution failed for %s:%s: %s", c->host,
                        c->port_str, gai_strerror(r));
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if ((r = connect_timeout(fd, a, c->timeout)) < 0) {
            err = -r;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return vd_error(err, "Failed to connect to '%s:%s': %s", c->host, c->port_str,
                        strerror(err));
    *out = fd;
    return 0;
}

/* Session options from the configuration. */
static int session_options(ssh_session s, const struct ssh_config *c)
{
    long timeout = c->timeout;
    int port = c->port;
    bool ok;

    ok = ssh_options_set(s, SSH_OPTIONS_HOST, c->host) == 0 &&
         ssh_options_set(s, SSH_OPTIONS_PORT, &port) == 0 &&
         ssh_options_set(s, SSH_OPTIONS_USER, c->user) == 0 &&
         ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout) == 0 &&
         (!c->known_hosts || ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, c->known_hosts) == 0) &&
         (!c->identity || ssh_options_set(s, SSH_OPTIONS_ADD_IDENTITY, c->identity) == 0);
    if (!ok)
        return vd_error(EINVAL, "%s", ssh_get_error(s));
    return 0;
}

/* Connect, check the host, log in and start SFTP on c->session. */
static int connect_session(struct ssh_conn *conn, const struct ssh_config *c)
{
    ssh_session s;
    socket_t fd;
    int r;

    if (!(s = conn->session = ssh_new()))
        return vd_error(ENOMEM, "out of memory");
    if ((r = session_options(s, c)) < 0 || (r = connect_socket(c, &fd)) < 0)
        return r;
    /* From ssh_connect on, the session owns fd and closes it. */
    if (ssh_options_set(s, SSH_OPTIONS_FD, &fd) < 0) {
        close(fd);
        return vd_error(EINVAL, "%s", ssh_get_error(s));
    }
    if (ssh_connect(s) != SSH_OK)
        return vd_error(EINVAL, "%s", ssh_get_error(s));
    if (c->hkc == HKC_KNOWN_HOSTS && (r = check_known_hosts(s)) < 0)
        return r;
    if (c->hkc == HKC_HASH && (r = check_hash(s, c)) < 0)
        return r;
    if ((r = authenticate(s)) < 0)
        return r;
    if (!(conn->sftp = sftp_new(s)))
        return session_error(EINVAL, s, "failed to create sftp handle");
    if (sftp_init(conn->sftp) < 0)
        return sftp_error_msg(EINVAL, conn, "failed to initialize sftp handle");
    return 0;
}

/* Close what c holds. */
static void conn_close(struct ssh_conn *c)
{
    if (c->fh)
        sftp_close(c->fh);
    if (c->sftp)
        sftp_free(c->sftp);
    if (c->session) {
        if (ssh_is_connected(c->session))
            ssh_disconnect(c->session);
        ssh_free(c->session);
    }
    memset(c, 0, sizeof(*c));
}

/* A connection with the image open (flags, mode as open(2)). */
static int conn_open(struct ssh_conn *conn, const struct ssh_config *c, int flags, int mode)
{
    char msg[PATH_MAX + 64];
    int r;

    if ((r = connect_session(conn, c)) < 0)
        return r;
    if (!(conn->fh = sftp_open(conn->sftp, c->path, flags, (mode_t)mode))) {
        snprintf(msg, sizeof(msg), "failed to open remote file '%s'", c->path);
        return sftp_error_msg(EINVAL, conn, msg);
    }
    sftp_file_set_blocking(conn->fh);
    return 0;
}

/* ---- the connection pool ---- */

/* Milliseconds on the monotonic clock. */
static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* libssh 0.10's blocking SFTP calls wait again after the session timeout
 * has passed (a stalled server hangs them): a request running past the
 * timeout gets its socket shut down, which fails it at once. */
static void *watchdog_main(void *arg)
{
    struct ssh_state *s = arg;

    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        struct timespec ts;
        uint64_t now = now_ms();

        for (int i = 0; i < s->nconns; i++) {
            struct ssh_conn *c = &s->conns[i];
            if (c->busy && !c->broken && now > c->deadline_ms && c->session) {
                socket_t fd = ssh_get_fd(c->session);
                if (fd != SSH_INVALID_SOCKET)
                    shutdown(fd, SHUT_RDWR);
                c->broken = true;
            }
        }
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&s->wd_cond, &s->lock, &ts);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Connections not broken (lock held). */
static int live_conns(const struct ssh_state *s)
{
    int live = 0;

    for (int i = 0; i < s->nconns; i++)
        live += !s->conns[i].broken;
    return live;
}

/* Open one more connection into the pool (lock held, dropped meanwhile). */
static struct ssh_conn *grow_pool(struct ssh_state *s)
{
    struct ssh_conn fresh = { 0 };
    int r;

    s->opening++;
    pthread_mutex_unlock(&s->lock);
    r = conn_open(&fresh, &s->cfg, s->open_flags, 0);
    pthread_mutex_lock(&s->lock);
    s->opening--;
    pthread_cond_broadcast(&s->cond);   /* waiters re-count the pool */
    if (r < 0 || s->nconns >= SSH_MAX_CONNS) {
        conn_close(&fresh);
        s->max_conns = live_conns(s) + s->opening;     /* no more tries */
        return NULL;
    }
    s->conns[s->nconns] = fresh;
    return &s->conns[s->nconns++];
}

/* A free connection, opening a new one when all are busy and the pool is
 * not full; NULL with a message when none can be had. */
static struct ssh_conn *acquire(struct ssh_state *s)
{
    struct ssh_conn *c = NULL;

    pthread_mutex_lock(&s->lock);
    while (!c) {
        for (int i = 0; i < s->nconns && !c; i++)
            if (!s->conns[i].busy && !s->conns[i].broken)
                c = &s->conns[i];
        if (c)
            break;
        int live = live_conns(s);
        if (live + s->opening < s->max_conns && s->nconns < SSH_MAX_CONNS) {
            if (!(c = grow_pool(s)) && !live_conns(s) && !s->opening)
                break;                 /* its error stands */
            continue;
        }
        if (!live && !s->opening) {
            vd_error(EIO, "ssh: no connection to %s is left", s->cfg.host);
            break;
        }
        pthread_cond_wait(&s->cond, &s->lock);
    }
    if (c) {
        c->busy = true;
        c->deadline_ms = now_ms() + (uint64_t)s->cfg.timeout * 1000;
    }
    pthread_mutex_unlock(&s->lock);
    return c;
}

/* Give c back; after a failure it is not used again (answers to its
 * requests may still be on the way). */
static void release(struct ssh_state *s, struct ssh_conn *c, bool failed)
{
    pthread_mutex_lock(&s->lock);
    c->busy = false;
    c->broken |= failed;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* ---- reads ---- */

/* Read [off, off+len) one request at a time; zeroes past the end. */
static int read_sync(struct ssh_conn *c, uint64_t off, uint64_t len, char *buf)
{
    if (sftp_seek64(c->fh, off) < 0)
        return sftp_error_msg(EIO, c, "ssh: seek failed");
    while (len) {
        ssize_t n = sftp_read(c->fh, buf, VD_MIN(len, (uint64_t)SSH_READ_CHUNK));
        if (n < 0)
            return sftp_error_msg(EIO, c, "ssh: read failed");
        if (n == 0) {
            memset(buf, 0, len);
            return 0;
        }
        buf += n;
        len -= (uint64_t)n;
    }
    return 0;
}

/* Collect the answer to request id into buf (want bytes); *got bytes came. */
static int read_answer(struct ssh_conn *c, uint32_t id, char *buf, uint32_t want,
                       uint32_t *got)
{
    int n = sftp_async_read(c->fh, buf, want, id);

    if (n == SSH_ERROR || n < 0)
        return -EIO;
    *got = (uint32_t)n;
    return 0;
}

/* Read [off, off+len) with up to SSH_READ_DEPTH requests in flight; chunks
 * answered short are finished one request at a time. */
static int read_pipelined(struct ssh_conn *c, uint64_t off, uint64_t len, char *buf)
{
    uint64_t nchunks = (len + SSH_READ_CHUNK - 1) / SSH_READ_CHUNK, sent = 0, done = 0;
    uint32_t ids[SSH_READ_DEPTH], got[SSH_READ_DEPTH];
    uint64_t short_mask_first = UINT64_MAX;
    int err = 0;

    if (sftp_seek64(c->fh, off) < 0)
        return sftp_error_msg(EIO, c, "ssh: seek failed");
    while (done < nchunks) {
        while (!err && sent < nchunks && sent - done < SSH_READ_DEPTH) {
            uint32_t l = (uint32_t)VD_MIN(len - sent * SSH_READ_CHUNK, (uint64_t)SSH_READ_CHUNK);
            int id = sftp_async_read_begin(c->fh, l);
            if (id < 0) {
                err = -EIO;
                break;
            }
            ids[sent % SSH_READ_DEPTH] = (uint32_t)id;
            sent++;
        }
        if (done == sent)
            break;
        uint64_t k = done % SSH_READ_DEPTH, pos = done * SSH_READ_CHUNK;
        uint32_t l = (uint32_t)VD_MIN(len - pos, (uint64_t)SSH_READ_CHUNK);
        if (read_answer(c, ids[k], buf + pos, l, &got[k]) < 0) {
            err = -EIO;
            break;                     /* the session is unusable */
        }
        if (got[k] < l && short_mask_first == UINT64_MAX)
            short_mask_first = done;
        done++;
    }
    if (err < 0)
        return sftp_error_msg(EIO, c, "ssh: read failed");
    if (short_mask_first != UINT64_MAX) {
        /* Finish from the first short chunk on (rare: end of file). */
        uint64_t pos = short_mask_first * SSH_READ_CHUNK;
        return read_sync(c, off + pos, len - pos, buf + pos);
    }
    return 0;
}

/* Read; past the end of the remote file reads zeroes. */
static int ssh_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct ssh_state *s = n->state;
    struct ssh_conn *c = acquire(s);
    int r;

    if (!c)
        return -EIO;
    r = read_pipelined(c, off, len, buf);
    release(s, c, r < 0);
    return r;
}

/* ---- writes, flush, size ---- */

/* Write all of buf at off on c. */
static int write_all(struct ssh_conn *c, uint64_t off, uint64_t len, const char *buf)
{
    if (sftp_seek64(c->fh, off) < 0)
        return sftp_error_msg(EIO, c, "ssh: seek failed");
    while (len) {
        ssize_t w = sftp_write(c->fh, buf, VD_MIN(len, (uint64_t)SSH_WRITE_CHUNK));
        if (w <= 0)
            return sftp_error_msg(EIO, c, "ssh: write failed");
        buf += w;
        len -= (uint64_t)w;
    }
    return 0;
}

/* Remember that the file now reaches end (at least). */
static void note_end(struct ssh_state *s, uint64_t end)
{
    pthread_mutex_lock(&s->lock);
    if (end > s->length)
        s->length = end;
    pthread_mutex_unlock(&s->lock);
}

static int ssh_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct ssh_state *s = n->state;
    struct ssh_conn *c = acquire(s);
    int r;

    if (!c)
        return -EIO;
    r = write_all(c, off, len, buf);
    release(s, c, r < 0);
    if (r >= 0)
        note_end(s, off + len);
    return r;
}

/* fsync@openssh.com where the server has it; else nothing can be done
 * (QEMU warns; a library does not print). */
static int ssh_flush(vd_node *n)
{
    struct ssh_state *s = n->state;
    struct ssh_conn *c;
    int r = 0;

    if (!s->has_fsync)
        return 0;
    if (!(c = acquire(s)))
        return -EIO;
    if (sftp_fsync(c->fh) < 0)
        r = sftp_error_msg(EIO, c, "ssh: fsync failed");
    release(s, c, r < 0);
    return r;
}

static int64_t ssh_getlength(vd_node *n)
{
    struct ssh_state *s = n->state;
    int64_t l;

    pthread_mutex_lock(&s->lock);
    l = (int64_t)s->length;
    pthread_mutex_unlock(&s->lock);
    return l;
}

/* Grow to size by writing its last byte (QEMU's way); no shrinking. */
static int ssh_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    static const char *const modes[] = { "off", "metadata", "falloc", "full" };
    uint64_t cur = (uint64_t)ssh_getlength(n);

    if (prealloc != VD_PREALLOC_OFF)
        return vd_error(ENOTSUP, "Unsupported preallocation mode '%s'",
                        prealloc >= 0 && prealloc < 4 ? modes[prealloc] : "?");
    if (size < cur)
        return vd_error(ENOTSUP, "ssh driver does not support shrinking files");
    if (size == cur)
        return 0;
    return ssh_pwrite(n, size - 1, 1, "", 0);
}

/* A new regular file reads as zeroes. */
static bool ssh_has_zero_init(vd_node *n)
{
    struct ssh_state *s = n->state;
    return s->regular;
}

/* QEMU's ssh driver has no get_info: info shows no dirty flag. */
static int64_t ssh_cluster_size(vd_node *n)
{
    return -1;
}

/* ---- the node's name ---- */

/* ssh://user@host:port/path[?host_key_check=...], QEMU's exact name. */
static int set_name(vd_node *n, const struct ssh_config *c)
{
    char *name;

    if (asprintf(&name, "ssh://%s@%s:%d%s%s%s", c->user, c->host, c->port, c->path,
                 c->legacy_hkc ? "?host_key_check=" : "",
                 c->legacy_hkc ? c->legacy_hkc : "") < 0)
        return vd_error(ENOMEM, "out of memory");
    free(n->filename);
    n->filename = name;
    return 0;
}

/* ---- open / close / create ---- */

static int ssh_open(vd_node *n, vd_opts *opts, int flags)
{
    struct ssh_state *s = n->state;
    sftp_attributes a;
    int r;

    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_cond_init(&s->wd_cond, NULL);
    s->locks_init = true;
    if ((r = parse_config(&s->cfg, opts, &s->max_conns)) < 0)
        return r;
    s->open_flags = n->read_only ? O_RDONLY : O_RDWR;
    if ((r = conn_open(&s->conns[0], &s->cfg, s->open_flags, 0)) < 0)
        return r;
    s->nconns = 1;
    if (pthread_create(&s->watchdog, NULL, watchdog_main, s))
        return vd_error(EAGAIN, "cannot start the ssh watchdog thread");
    s->wd_started = true;
    if (!(a = sftp_fstat(s->conns[0].fh)))
        return sftp_error_msg(EINVAL, &s->conns[0], "failed to read file attributes");
    s->length = a->size;
    s->regular = a->type == SSH_FILEXFER_TYPE_REGULAR;
    sftp_attributes_free(a);
    s->has_fsync = sftp_extension_supported(s->conns[0].sftp, "fsync@openssh.com", "1");
    n->max_transfer = SSH_MAX_XFER;
    n->request_alignment = 512;       /* QEMU's ssh driver does sector I/O */
    if ((r = set_name(n, &s->cfg)) < 0)
        return r;
    for (size_t i = 0; i < VD_ARRAY_SIZE(known_opts); i++)
        vd_opts_del(opts, known_opts[i]);
    return 0;
}

static void ssh_close(vd_node *n)
{
    struct ssh_state *s = n->state;

    if (s->wd_started) {
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_cond_broadcast(&s->wd_cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->watchdog, NULL);
    }
    for (int i = 0; i < SSH_MAX_CONNS; i++)
        conn_close(&s->conns[i]);
    free_config(&s->cfg);
    if (s->locks_init) {
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        pthread_cond_destroy(&s->wd_cond);
    }
}

/* Create (or empty) the remote file and grow it to size. */
static int ssh_create(const char *filename, vd_opts *opts)
{
    struct ssh_config cfg = { 0 };
    struct ssh_conn conn = { 0 };
    uint64_t size = 0;
    vd_opts *o = vd_opts_new();
    int conns, r;

    if (!o)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_opts_get_size(opts, "size", 0, &size)) >= 0 &&
        (r = ssh_parse_filename(filename, o)) >= 0 &&
        (r = parse_config(&cfg, o, &conns)) >= 0 &&
        (r = conn_open(&conn, &cfg, O_RDWR | O_CREAT | O_TRUNC, 0644)) >= 0 && size > 0 &&
        (r = write_all(&conn, size - 1, 1, "")) >= 0)
        r = 0;
    conn_close(&conn);
    free_config(&cfg);
    vd_opts_free(o);
    return r;
}

static const struct vd_opt_desc ssh_open_opts[] = {
    { "server.host", VD_OPT_STRING, "Host name or address of the SSH server", NULL },
    { "server.port", VD_OPT_STRING, "Port of the SSH server", "22" },
    { "path", VD_OPT_STRING, "Path of the image on the server", NULL },
    { "user", VD_OPT_STRING, "User name on the server", NULL },
    { "host_key_check", VD_OPT_STRING, "Host key check: no, yes, md5:/sha1:/sha256:HASH",
      NULL },
    { "host-key-check.mode", VD_OPT_STRING, "none, known_hosts or hash", "known_hosts" },
    { "host-key-check.type", VD_OPT_STRING, "Hash type: md5, sha1 or sha256", NULL },
    { "host-key-check.hash", VD_OPT_STRING, "The host key's fingerprint (hex)", NULL },
    { "host", VD_OPT_STRING, "Host (legacy)", NULL },
    { "port", VD_OPT_STRING, "Port (legacy)", NULL },
    { "x-timeout", VD_OPT_NUMBER, "Seconds a connection or a request may take", "30" },
    { "x-connections", VD_OPT_NUMBER, "SSH connections opened for parallel requests", "4" },
    { "x-known-hosts", VD_OPT_STRING, "known_hosts file (default: libssh's)", NULL },
    { "x-identity-file", VD_OPT_STRING, "Private key file tried after the agent's", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_opt_desc ssh_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver ssh_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "ssh",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "ssh",
    .state_size = sizeof(struct ssh_state),
    .open_opts = ssh_open_opts,
    .create_opts = ssh_create_opts,
    .parse_filename = ssh_parse_filename,
    .open = ssh_open,
    .close = ssh_close,
    .pread = ssh_pread,
    .pwrite = ssh_pwrite,
    .flush = ssh_flush,
    .getlength = ssh_getlength,
    .truncate = ssh_truncate,
    .create = ssh_create,
    .has_zero_init = ssh_has_zero_init,
    .cluster_size = ssh_cluster_size,
};
VD_DRIVER_REGISTER(ssh_driver)
