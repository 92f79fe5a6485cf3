/* SPDX-License-Identifier: BSD-3-Clause */
/* --object: the QEMU user-creatable objects vdisk-nbd understands:
 * secret, tls-creds-x509, tls-creds-psk and authz-simple, kept by id.
 * Secrets and credentials are also given to libvdisk's registry, where
 * drivers look them up (an nbds:// image's tls-creds, an image's
 * key-secret); a secret also decrypts an x509 key (passwordid=). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto-lib.h"
#include "nbd.h"
#include "vdisk/object.h"

/* A secret's value at most (file= is read up to this). */
#define SECRET_MAX (64u << 10)

#define MAX_OBJECTS 64

struct object {
    char *type, *id;
    vd_opts *props;
};

static struct object objects[MAX_OBJECTS];
static int nobjects;

/* The object with id, or NULL. */
static struct object *find_object(const char *id)
{
    for (int i = 0; i < nobjects; i++)
        if (!strcmp(objects[i].id, id))
            return &objects[i];
    return NULL;
}

/* Properties each type accepts. */
static bool known_prop(const char *type, const char *key)
{
    static const char *const x509[] = { "dir", "endpoint", "verify-peer", "priority",
                                        "sanity-check", "passwordid", NULL };
    static const char *const psk[] = { "dir", "endpoint", "username", "priority",
                                       "verify-peer", NULL };
    static const char *const authz[] = { "identity", NULL };
    static const char *const secret[] = { "data", "file", "format", "keyid", "iv", NULL };
    const char *const *t = !strcmp(type, "tls-creds-x509") ? x509
                         : !strcmp(type, "tls-creds-psk") ? psk
                         : !strcmp(type, "authz-simple") ? authz : secret;

    for (; *t; t++)
        if (!strcmp(*t, key))
            return true;
    return false;
}

/* Check the properties of a new object. */
static int check_object(const char *type, vd_opts *o)
{
    for (size_t i = 0; i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        if (strcmp(k, "qom-type") && strcmp(k, "id") && !known_prop(type, k)) {
            nbd_err("Property '%s.%s' not found", type, k);
            return -1;
        }
    }
    if (!strcmp(type, "secret") && !vd_opts_has(o, "data") && !vd_opts_has(o, "file")) {
        nbd_err("Either 'data' or 'file' must be provided");
        return -1;
    }
    if (!strcmp(type, "authz-simple") && !vd_opts_has(o, "identity")) {
        nbd_err("The 'identity' property must be set");
        return -1;
    }
    return 0;
}

/* Give a secret or TLS credentials to libvdisk's registry too: 0, or -1
 * with the error printed. */
static int register_in_library(const char *type, const char *def)
{
    if (!strcmp(type, "authz-simple"))
        return 0;
    if (vd_object_add(def) < 0)
        return nbd_err("%s", vd_errmsg()), -1;
    return 0;
}

/* See nbd.h: "type,id=ID,key=value,...". */
int nbd_object_add(const char *def)
{
    vd_opts *o = vd_opts_new();
    const char *type, *id;

    if (!o || vd_opts_parse(o, def, "qom-type") < 0) {
        nbd_err("%s", o ? vd_errmsg() : "out of memory");
        vd_opts_free(o);
        return -1;
    }
    type = vd_opts_get(o, "qom-type");
    id = vd_opts_get(o, "id");
    if (!type) {
        nbd_err("Parameter 'qom-type' is missing");
    } else if (strcmp(type, "secret") && strcmp(type, "tls-creds-x509") &&
               strcmp(type, "tls-creds-psk") && strcmp(type, "authz-simple")) {
        nbd_err("Parameter 'qom-type' does not accept value '%s'", type);
    } else if (!id) {
        nbd_err("Parameter 'id' is missing");
    } else if (find_object(id)) {
        nbd_err("attempt to add duplicate property '%s' to object (type 'container')", id);
    } else if (nobjects >= MAX_OBJECTS) {
        nbd_err("too many objects");
    } else if (check_object(type, o) == 0 && register_in_library(type, def) == 0) {
        objects[nobjects].type = strdup(type);
        objects[nobjects].id = strdup(id);
        objects[nobjects].props = o;
        if (objects[nobjects].type && objects[nobjects].id) {
            nobjects++;
            return 0;
        }
        nbd_err("out of memory");
    }
    vd_opts_free(o);
    return -1;
}

/* The identity of authz object id; NULL (printed) when there is none. */
static const char *authz_identity(const char *id)
{
    struct object *ob = find_object(id);

    if (!ob || strcmp(ob->type, "authz-simple")) {
        nbd_err("Failed to get TLS authz: No authz object with id '%s'", id);
        return NULL;
    }
    return vd_opts_get(ob->props, "identity");
}

/* The contents of file, NUL-terminated (at most SECRET_MAX bytes): *len
 * set; NULL with the error printed. */
static char *read_secret_file(const char *file, size_t *len)
{
    FILE *f = fopen(file, "rb");
    char *buf = f ? malloc(SECRET_MAX + 1) : NULL;

    if (!buf) {
        nbd_err("Unable to read %s: %s", file, strerror(f ? ENOMEM : errno));
        if (f)
            fclose(f);
        return NULL;
    }
    *len = fread(buf, 1, SECRET_MAX, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

/* Decode base64 text in place: 0, or -1 with the error printed. */
static int decode_base64(const char *id, char **val, size_t *len)
{
    const struct vd_crypto_lib *l = vd_crypto_lib();
    uint8_t *out;
    size_t n;

    if (!l)
        return nbd_err("%s", vd_errmsg()), -1;
    if (l->base64_decode(*val, *len, &out, &n) < 0) {
        nbd_err("Secret '%s' is not valid base64 data", id);
        return -1;
    }
    free(*val);
    *val = (char *)out;
    *len = strlen(*val);
    return 0;
}

/* The value of secret object id (data= or file=, format raw or base64),
 * malloc'd; NULL with the error printed (QEMU's messages). */
static char *secret_value(const char *id)
{
    struct object *ob = find_object(id);
    const char *data, *file, *format;
    size_t len = 0;
    char *val;

    if (!ob)
        return nbd_err("No secret with id '%s'", id), NULL;
    if (strcmp(ob->type, "secret"))
        return nbd_err("Object with id '%s' is not a secret", id), NULL;
    if (vd_opts_get(ob->props, "keyid"))
        return nbd_err("secret '%s': keyid (an encrypted secret) is not supported", id),
               NULL;
    data = vd_opts_get(ob->props, "data");
    file = vd_opts_get(ob->props, "file");
    format = vd_opts_get(ob->props, "format");
    if (data && !(val = strdup(data)))
        return nbd_err("out of memory"), NULL;
    if (data)
        len = strlen(val);
    else if (!(val = read_secret_file(file, &len)))
        return NULL;
    if (format && !strcmp(format, "base64") && decode_base64(id, &val, &len) < 0) {
        free(val);
        return NULL;
    }
    return val;
}

/* See nbd.h. */
struct vd_nbd_tls *nbd_object_tls(const char *id, bool server, const char *authz_id)
{
    struct object *ob = find_object(id);
    const char *endpoint, *dir, *ident = NULL, *pwid;
    struct vd_nbd_tls *t = NULL;
    char *password = NULL;
    bool verify = true, is_server;

    if (!ob || (strcmp(ob->type, "tls-creds-x509") && strcmp(ob->type, "tls-creds-psk"))) {
        nbd_err("Failed to get TLS creds: No TLS credentials with id '%s'", id);
        return NULL;
    }
    endpoint = vd_opts_get(ob->props, "endpoint");
    is_server = endpoint && !strcmp(endpoint, "server");
    if (endpoint && strcmp(endpoint, "server") && strcmp(endpoint, "client")) {
        nbd_err("Parameter 'endpoint' does not accept value '%s'", endpoint);
        return NULL;
    }
    if (is_server != server) {
        nbd_err("Expecting TLS credentials with a %s endpoint", server ? "server" : "client");
        return NULL;
    }
    if (vd_opts_get_bool(ob->props, "verify-peer", true, &verify) < 0) {
        nbd_err("%s", vd_errmsg());
        return NULL;
    }
    if (!(dir = vd_opts_get(ob->props, "dir"))) {
        nbd_err("Missing 'dir' property value");
        return NULL;
    }
    if (authz_id && !(ident = authz_identity(authz_id)))
        return NULL;
    if ((pwid = vd_opts_get(ob->props, "passwordid")) &&
        !strcmp(ob->type, "tls-creds-x509") && !(password = secret_value(pwid)))
        return NULL;
    if (vd_nbd_tls_new(&t, strcmp(ob->type, "tls-creds-psk") ? VD_NBD_TLS_X509
                       : VD_NBD_TLS_PSK, dir, server, verify,
                       vd_opts_get(ob->props, "username"), password) < 0 ||
        vd_nbd_tls_set_authz(t, ident) < 0) {
        nbd_err("%s", vd_errmsg());       /* QEMU reports these at --object */
        vd_nbd_tls_free(t);
        t = NULL;
    }
    free(password);
    return t;
}
