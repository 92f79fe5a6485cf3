/* SPDX-License-Identifier: BSD-3-Clause */
/* The --object registry (vdisk/object.h): objects are parsed from qemu's
 * "type,id=x,k=v" syntax, checked against their type's properties and kept
 * for the life of the process.  TLS credential directories are checked as
 * QEMU checks them when it creates the object. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "vdisk/object.h"
#include "vdisk/vdisk.h"

#define MAX_OBJECTS 64

struct obj_type {
    const char *name;
    const char *const *props;    /* besides qom-type and id */
};

static const char *const x509_props[] = {
    "dir", "endpoint", "verify-peer", "priority", "sanity-check", "passwordid",
    "loaded", NULL,
};
static const char *const psk_props[] = {
    "dir", "endpoint", "verify-peer", "priority", "username", "loaded", NULL,
};
static const char *const anon_props[] = {
    "dir", "endpoint", "verify-peer", "priority", "loaded", NULL,
};
static const char *const secret_props[] = {
    "data", "file", "format", "keyid", "iv", "loaded", NULL,
};

static const struct obj_type obj_types[] = {
    { "tls-creds-x509", x509_props },
    { "tls-creds-psk", psk_props },
    { "tls-creds-anon", anon_props },
    { "secret", secret_props },
};

static pthread_mutex_t obj_lock = PTHREAD_MUTEX_INITIALIZER;
static vd_opts *objects[MAX_OBJECTS];
static size_t nobjects;

/* The type descriptor of name, or NULL. */
static const struct obj_type *find_type(const char *name)
{
    for (size_t i = 0; i < sizeof(obj_types) / sizeof(obj_types[0]); i++)
        if (!strcmp(obj_types[i].name, name))
            return &obj_types[i];
    return NULL;
}

/* Is key a property of type t? */
static bool has_prop(const struct obj_type *t, const char *key)
{
    if (!strcmp(key, "qom-type") || !strcmp(key, "id"))
        return true;
    for (const char *const *p = t->props; *p; p++)
        if (!strcmp(*p, key))
            return true;
    return false;
}

/* Check that dir/file is readable (qemu's message when not). */
static int check_cred_file(const char *dir, const char *file)
{
    size_t l = strlen(dir) + strlen(file) + 2;
    char *p = malloc(l);
    int r = 0;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    snprintf(p, l, "%s/%s", dir, file);
    if (access(p, R_OK) < 0)
        r = vd_error(errno, "Unable to access credentials %s: %s", p, strerror(errno));
    free(p);
    return r;
}

/* Check the endpoint and the credential files of a tls-creds-* object. */
static int check_tls_creds(const vd_opts *o, const char *type)
{
    const char *ep = vd_opts_get(o, "endpoint"), *dir = vd_opts_get(o, "dir");
    bool server;
    bool verify;
    int r;

    if (ep && strcmp(ep, "client") && strcmp(ep, "server"))
        return vd_error(EINVAL, "Parameter 'endpoint' does not accept value '%s'", ep);
    if ((r = vd_opts_get_bool(o, "verify-peer", true, &verify)) < 0)
        return r;
    server = ep && !strcmp(ep, "server");
    if (!dir)
        return strcmp(type, "tls-creds-anon") ? vd_error(EINVAL, "Parameter 'dir' is missing") : 0;
    if (!strcmp(type, "tls-creds-psk"))
        return check_cred_file(dir, "keys.psk");
    if (!strcmp(type, "tls-creds-x509")) {
        if ((server ? verify : true) && (r = check_cred_file(dir, "ca-cert.pem")) < 0)
            return r;
        if (server && ((r = check_cred_file(dir, "server-cert.pem")) < 0 ||
                       (r = check_cred_file(dir, "server-key.pem")) < 0))
            return r;
    }
    return 0;
}

/* Check the properties of a parsed object. */
static int check_object(const vd_opts *o)
{
    const char *type = vd_opts_get(o, "qom-type");
    const struct obj_type *t;

    if (!type)
        return vd_error(EINVAL, "Parameter 'qom-type' is missing");
    if (!(t = find_type(type)))
        return vd_error(EINVAL, "Parameter 'qom-type' does not accept value '%s'", type);
    if (!vd_opts_get(o, "id"))
        return vd_error(EINVAL, "Parameter 'id' is missing");
    for (size_t i = 0; i < vd_opts_count(o); i++)
        if (!has_prop(t, vd_opts_key(o, i)))
            return vd_error(EINVAL, "Parameter '%s' is unexpected", vd_opts_key(o, i));
    if (!strncmp(type, "tls-creds-", 10))
        return check_tls_creds(o, type);
    if (!strcmp(type, "secret"))
        return vd_secret_check(o);
    return 0;
}

/* Register an object (see vdisk/object.h). */
int vd_object_add(const char *spec)
{
    vd_opts *o = vd_opts_new();
    int r;

    if (!o)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_opts_parse(o, spec, "qom-type")) < 0 || (r = check_object(o)) < 0) {
        vd_opts_free(o);
        return r;
    }
    pthread_mutex_lock(&obj_lock);
    if (vd_object_find(vd_opts_get(o, "id")))
        r = vd_error(EEXIST, "attempt to add duplicate property '%s' to object "
                     "(type 'container')", vd_opts_get(o, "id"));
    else if (nobjects == MAX_OBJECTS)
        r = vd_error(ENOSPC, "too many objects");
    else
        objects[nobjects++] = o;
    pthread_mutex_unlock(&obj_lock);
    if (r < 0)
        vd_opts_free(o);
    return r;
}

/* Look an object up by id. */
const vd_opts *vd_object_find(const char *id)
{
    for (size_t i = 0; id && i < nobjects; i++)
        if (!strcmp(vd_opts_get(objects[i], "id"), id))
            return objects[i];
    return NULL;
}

/* Forget every object. */
void vd_object_clear(void)
{
    pthread_mutex_lock(&obj_lock);
    for (size_t i = 0; i < nobjects; i++)
        vd_opts_free(objects[i]);
    nobjects = 0;
    pthread_mutex_unlock(&obj_lock);
}
