/* SPDX-License-Identifier: BSD-3-Clause */
/* The rbd driver's cluster connections.  One rados_t per process for each
 * set of settings that picks the cluster and credentials (user, conf file,
 * name pairs, servers, key, authentication modes), shared by the nodes that
 * name it and reference counted, so creating an image and then opening it,
 * or several nodes on one cluster, connect once (each connection costs about
 * half a second).  One nobody uses stays idle for the next open (at most
 * RBD_MAX_IDLE; the oldest is shut down beyond that) and idle ones are shut
 * down at exit.  A failed connection is never kept, nor one a request gave
 * up on.  Every cluster call is bounded: mount, monitor and OSD timeouts get
 * our defaults unless the configuration sets them. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "crypto/crypto.h"
#include "rbd-conn.h"
#include "util/checked.h"
#include "util/json.h"
#include "vdisk/driver.h"

/* Defaults that bound every cluster call (seconds); the configuration file
 * or name options may change them. */
#define RBD_MOUNT_TIMEOUT "10"
#define RBD_OP_TIMEOUT "30"
#define RBD_MAX_IDLE 4                    /* idle connections kept per process */

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rbd_conn *conns;
static uint64_t idle_clock;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

/* ---- secrets ---- */

/* The secret object id's bytes, as base64 text (how Ceph takes a key). */
static int secret_base64(const char *id, char **out)
{
    uint8_t *val;
    size_t len;
    gnutls_datum_t enc = { NULL, 0 };
    int r = vd_secret_get(id, &val, &len);

    if (r < 0)
        return r;
    gnutls_datum_t raw = { val, (unsigned)len };
    if (gnutls_base64_encode2(&raw, &enc) < 0 ||
        !(*out = strndup((const char *)enc.data, enc.size)))
        r = vd_error(ENOMEM, "out of memory");
    if (enc.data) {
        vd_wipe(enc.data, enc.size);
        gnutls_free(enc.data);
    }
    vd_secret_free(val, len);
    return r;
}

/* ---- connecting ---- */

/* Set Ceph option name=value; QEMU's message on failure. */
static int conf_set(rados_t c, const char *name, const char *value, const char *what)
{
    int r = rados_conf_set(c, name, value);

    if (r < 0)
        return vd_error(-r, "%s%s: %s", what, what[0] == 'i' ? name : "", strerror(-r));
    return 0;
}

/* The Ceph settings from the name ("=keyvalue-pairs"), in order. */
static int set_keypairs(rados_t c, const char *text)
{
    vd_json *j;
    int r = 0;

    if (!text)
        return 0;
    j = vd_json_parse(text, strlen(text));
    if (!j || vd_json_type(j) != VD_JSON_ARRAY || vd_json_count(j) % 2) {
        vd_json_free(j);
        return vd_error(EINVAL, "Invalid =keyvalue-pairs option");
    }
    for (size_t i = 0; i + 1 < vd_json_count(j) && r >= 0; i += 2) {
        const char *k = vd_json_str(vd_json_at(j, i)), *v = vd_json_str(vd_json_at(j, i + 1));
        if (!k || !v)
            r = vd_error(EINVAL, "Invalid =keyvalue-pairs option");
        else if (rados_conf_set(c, k, v) < 0)
            r = vd_error(EINVAL, "invalid conf option %s: %s", k, strerror(ENOENT));
    }
    vd_json_free(j);
    return r;
}

/* Append s to the buffer at *p (room until end); false when it is full. */
static bool append(char **p, char *end, const char *s)
{
    size_t l = strlen(s);

    if ((size_t)(end - *p) <= l)
        return false;
    memcpy(*p, s, l + 1);
    *p += l;
    return true;
}

/* The server list (server.N.host, server.N.port) as a mon_host value. */
static int mon_host(const vd_opts *o, char *buf, size_t size)
{
    char key[48], item[300], *p = buf, *end = buf + size;
    const char *host, *port;

    buf[0] = '\0';
    for (int i = 0; i < RBD_MAX_SERVERS; i++) {
        snprintf(key, sizeof(key), "server.%d.host", i);
        host = vd_opts_get(o, key);
        snprintf(key, sizeof(key), "server.%d.port", i);
        port = vd_opts_get(o, key);
        if (!host && !port)
            break;
        if (!host || !port)
            return vd_error(EINVAL, "Parameter '%s' is missing",
                            host ? "port" : "host");
        snprintf(item, sizeof(item), strchr(host, ':') ? "%s[%s]:%s" : "%s%s:%s",
                 p == buf ? "" : ";", host, port);
        if (!append(&p, end, item))
            return vd_error(EINVAL, "server list too long");
    }
    return 0;
}

/* auth-client-required.N (cephx, none) joined with ';'. */
static int auth_modes(const vd_opts *o, char *buf, size_t size)
{
    char key[48], *p = buf, *end = buf + size;
    const char *v;

    buf[0] = '\0';
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof(key), "auth-client-required.%d", i);
        if (!(v = vd_opts_get(o, key)))
            break;
        if (strcmp(v, "cephx") && strcmp(v, "none"))
            return vd_error(EINVAL, "Parameter 'auth-client-required' does not accept "
                            "value '%s'", v);
        if ((p != buf && !append(&p, end, ";")) || !append(&p, end, v))
            return vd_error(EINVAL, "auth-client-required list too long");
    }
    return 0;
}

/* Key and accepted authentication modes. */
static int set_auth(rados_t c, const vd_opts *o)
{
    const char *id = vd_opts_get(o, "key-secret");
    char modes[128], *key = NULL;
    int r;

    if (!id)
        id = vd_opts_get(o, "password-secret");
    if (id) {
        if ((r = secret_base64(id, &key)) < 0)
            return r;
        r = conf_set(c, "key", key, "Could not set 'key'");
        vd_secret_free_text(key);
        if (r < 0)
            return r;
    }
    if ((r = auth_modes(o, modes, sizeof(modes))) < 0)
        return r;
    if (modes[0])
        return conf_set(c, "auth_client_required", modes,
                        "Could not set 'auth_client_required'");
    return 0;
}

/* Set a timeout to ours when it still has Ceph's built-in value (values set
 * through the library override the configuration file's). */
static void default_timeout(rados_t c, const char *name, const char *builtin,
                            const char *ours)
{
    char buf[32];

    if (rados_conf_get(c, name, buf, sizeof(buf)) == 0 && !strcmp(buf, builtin))
        rados_conf_set(c, name, ours);
}

/* Settings, in QEMU's order: conf file, name pairs, servers,
 * authentication; our timeouts and cache setting go in before the pairs. */
static int configure(rados_t c, const vd_opts *o)
{
    const char *conf = vd_opts_get(o, "conf");
    char hosts[4096];
    int r;

    /* The library's own log lines go to its log file, not stderr. */
    rados_conf_set(c, "log_to_stderr", "false");
    rados_conf_set(c, "err_to_stderr", "false");
    r = rados_conf_read_file(c, conf);
    if (conf && r < 0)
        return vd_error(-r, "error reading conf file %s: %s", conf, strerror(-r));
    default_timeout(c, "client_mount_timeout", "300", RBD_MOUNT_TIMEOUT);
    default_timeout(c, "rados_mon_op_timeout", "0", RBD_OP_TIMEOUT);
    default_timeout(c, "rados_osd_op_timeout", "0", RBD_OP_TIMEOUT);
    /* Each request goes straight to the OSDs (a name may turn the cache
     * on), and write data is sent from the memory rbd.c gives librbd,
     * not copied first (rbd.c keeps that memory as long as librbd may
     * read it, whichever of the two a name picks). */
    rados_conf_set(c, "rbd_cache", "false");
    rados_conf_set(c, "rbd_disable_zero_copy_writes", "false");
    if ((r = set_keypairs(c, vd_opts_get(o, RBD_KEYPAIRS))) < 0 ||
        (r = mon_host(o, hosts, sizeof(hosts))) < 0)
        return r;
    if (hosts[0] && (r = rados_conf_set(c, "mon_host", hosts)) < 0)
        return vd_error(-r, "error setting mon_host: %s", strerror(-r));
    if ((r = set_auth(c, o)) < 0)
        return r;
    return 0;
}

/* A request may take twice the OSD timeout, plus the time to find a new
 * lock owner (0: the OSD timeout is off, so is ours). */
static uint64_t request_timeout(rados_t c)
{
    char buf[32];
    unsigned long long t;

    if (rados_conf_get(c, "rados_osd_op_timeout", buf, sizeof(buf)) < 0 ||
        sscanf(buf, "%llu", &t) != 1)
        return 60;
    return t ? VD_MIN(2 * t + 10, 86400ull) : 0;
}

/* A field of a connection key: its length, then its text. */
static bool key_field(char **key, const char *v)
{
    char *k = NULL;

    if (asprintf(&k, "%s%zu:%s;", *key, v ? strlen(v) : (size_t)0, v ? v : "") < 0)
        return false;
    vd_wipe(*key, strlen(*key));
    free(*key);
    *key = k;
    return true;
}

static void key_free(char *key)
{
    if (key) {
        vd_wipe(key, strlen(key));
        free(key);
    }
}

/* Everything in o that reaches the connection's settings, as one string. */
static int conn_key(const vd_opts *o, char **out)
{
    const char *id = vd_opts_get(o, "key-secret");
    char hosts[4096], modes[128], *secret = NULL, *key = strdup("");
    int r;

    if (!id)
        id = vd_opts_get(o, "password-secret");
    if (!key)
        return vd_error(ENOMEM, "out of memory");
    if ((r = mon_host(o, hosts, sizeof(hosts))) < 0 ||
        (r = auth_modes(o, modes, sizeof(modes))) < 0 ||
        (id && (r = secret_base64(id, &secret)) < 0)) {
        key_free(key);
        return r;
    }
    if (!key_field(&key, vd_opts_get(o, "user")) || !key_field(&key, vd_opts_get(o, "conf")) ||
        !key_field(&key, vd_opts_get(o, RBD_KEYPAIRS)) || !key_field(&key, hosts) ||
        !key_field(&key, secret) || !key_field(&key, modes))
        r = vd_error(ENOMEM, "out of memory");
    if (secret)
        vd_secret_free_text(secret);
    if (r < 0) {
        key_free(key);
        return r;
    }
    *out = key;
    return 0;
}

static void conn_free(struct rbd_conn *k)
{
    key_free(k->key);
    free(k);
}

/* At exit: shut the idle connections down, so librados's threads end
 * before its own static objects go.  A dead connection's threads cannot be
 * stopped (that would block): then the process ends here, with the exit
 * status it was given, before the static objects those threads use are
 * destroyed under them (and before a leak checker stops the world while
 * they still start and stop threads). */
static void exit_handler(int status, void *arg)
{
    struct rbd_conn **pp = &conns, *k;
    bool dead = false;

    (void)arg;
    pthread_mutex_lock(&conn_lock);
    while ((k = *pp)) {
        if (k->refs || k->dead) {
            dead |= k->dead;
            pp = &k->next;
            continue;
        }
        *pp = k->next;
        rados_shutdown(k->cluster);
        conn_free(k);
    }
    pthread_mutex_unlock(&conn_lock);
    if (dead) {
        fflush(NULL);
        _exit(status);
    }
}

static void register_exit(void)
{
    on_exit(exit_handler, NULL);
}

/* A new connection for o (not in the list yet). */
static int conn_new(const vd_opts *o, char *key, struct rbd_conn **out)
{
    struct rbd_conn *k = calloc(1, sizeof(*k));
    int r;

    if (!k)
        return vd_error(ENOMEM, "out of memory");
    if ((r = rados_create(&k->cluster, vd_opts_get(o, "user"))) < 0) {
        free(k);
        return vd_error(-r, "error initializing: %s", strerror(-r));
    }
    if ((r = configure(k->cluster, o)) >= 0) {
        k->timeout = request_timeout(k->cluster);
        if ((r = rados_connect(k->cluster)) < 0)
            r = vd_error(-r, "error connecting: %s", strerror(-r));
    }
    if (r < 0) {
        rados_shutdown(k->cluster);
        free(k);
        return r;
    }
    k->key = key;
    k->refs = 1;
    *out = k;
    return 0;
}

int rbd_conn_get(const vd_opts *o, struct rbd_conn **out)
{
    struct rbd_conn *k;
    char *key;
    int r;

    if ((r = conn_key(o, &key)) < 0)
        return r;
    pthread_mutex_lock(&conn_lock);
    for (k = conns; k && (k->dead || strcmp(k->key, key)); k = k->next)
        ;
    if (k) {
        k->refs++;
        key_free(key);
    } else if ((r = conn_new(o, key, &k)) < 0) {
        key_free(key);
        k = NULL;
    } else {
        k->next = conns;
        conns = k;
        pthread_once(&exit_once, register_exit);
    }
    pthread_mutex_unlock(&conn_lock);
    *out = k;
    return r < 0 ? r : 0;
}

/* Drop a reference.  A connection a request gave up on is marked dead and
 * left to exit (shutting it down would block; it stays in the list, so
 * reachable); an idle one stays for the next open, the oldest beyond
 * RBD_MAX_IDLE shut down. */
void rbd_conn_put(struct rbd_conn *k, bool dead)
{
    struct rbd_conn **pp, **oldest = NULL, *victim = NULL;
    int idle = 0;

    pthread_mutex_lock(&conn_lock);
    k->dead |= dead;
    if (--k->refs == 0)
        k->idle_since = ++idle_clock;
    for (pp = &conns; *pp; pp = &(*pp)->next)
        if (!(*pp)->refs && !(*pp)->dead) {
            idle++;
            if (!oldest || (*pp)->idle_since < (*oldest)->idle_since)
                oldest = pp;
        }
    if (idle > RBD_MAX_IDLE && oldest) {
        victim = *oldest;
        *oldest = victim->next;
    }
    pthread_mutex_unlock(&conn_lock);
    if (victim) {
        rados_shutdown(victim->cluster);
        conn_free(victim);
    }
}
