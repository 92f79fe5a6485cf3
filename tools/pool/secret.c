/* SPDX-License-Identifier: BSD-3-Clause */
/* Secrets without a daemon: virsh's secret-define, secret-undefine,
 * secret-set-value, secret-get-value, secret-list and secret-dumpxml on
 * libvirt's secret XML.  A secret is UUID.xml and its value UUID.base64
 * (mode 0600) in secrets/ under the configuration directory, or under the
 * run directory for an ephemeral one, written as the pool state is (whole
 * file, fsync, rename, under the state lock).  Volumes with
 * <encryption format='luks'> take their passphrase from here. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vdisk/vdisk.h"
#include "vdisk/object.h"
#include "cli.h"

#define SECRET_MAX (64 * 1024)     /* largest value accepted */

/* The directory of ephemeral or persistent secrets (malloc'd), made. */
static char *secret_dir(const struct pool_conn *c, bool ephemeral)
{
    char *d = xasprintf("%s/secrets", ephemeral ? c->run_dir : c->cfg_dir);

    if (mkdir(d, 0700) < 0 && errno != EEXIST)
        pool_set_error("cannot create directory '%s': %s", d, strerror(errno));
    return d;
}

/* The uuids of the secrets in directory d, sorted (malloc'd); *n set. */
static char **list_uuids(const char *d, size_t *n)
{
    DIR *dir = opendir(d);
    struct dirent *e;
    char **names = NULL, uuid[37];

    *n = 0;
    while (dir && (e = readdir(dir))) {
        char head[37];
        if (strlen(e->d_name) != 40 || strcmp(e->d_name + 36, ".xml"))
            continue;
        snprintf(head, sizeof(head), "%.36s", e->d_name);
        if (pool_uuid_parse(head, uuid) < 0 || strcmp(uuid, head))
            continue;
        if (!(names = realloc(names, (*n + 1) * sizeof(*names))))
            pool_oom();
        names[(*n)++] = xstrdup(uuid);
    }
    if (dir)
        closedir(dir);
    return names;
}

/* Path of uuid's file with suffix ext in whichever directory holds it
 * (the persistent one when neither does); malloc'd. */
static char *secret_file(const struct pool_conn *c, const char *uuid, const char *ext)
{
    for (int eph = 1; eph >= 0; eph--) {
        char *d = secret_dir(c, eph), *x = xasprintf("%s/%s.xml", d, uuid);
        bool here = access(x, F_OK) == 0;
        free(x);
        if (here || !eph) {
            char *p = xasprintf("%s/%s.%s", d, uuid, ext);
            free(d);
            return p;
        }
        free(d);
    }
    return NULL;
}

/* The definition of secret uuid; NULL with virsh's errors recorded. */
static struct secret_def *secret_load(const struct pool_conn *c, const char *uuid)
{
    char *p = secret_file(c, uuid, "xml");
    size_t len;
    char *x = access(p, F_OK) == 0 ? pool_read_file(p, &len) : NULL;
    struct secret_def *s = x ? secret_def_parse(x, len) : NULL;

    if (!x)
        pool_set_error("Secret not found: no secret with matching uuid '%s'", uuid);
    free(x);
    free(p);
    return s;
}

/* --secret as a canonical uuid; -1 (printed as virsh prints it). */
static int secret_arg(struct cmd_ctx *c, char uuid[37])
{
    const char *id = opt_str(c, "secret");

    if (pool_uuid_parse(id, uuid) == 0)
        return 0;
    pool_err("failed to get secret '%s'", id);
    pool_err("uuidstr in virSecretLookupByUUIDString must be a valid UUID");
    return -1;
}

/* Connect and load the secret of --secret; NULL (printed). */
static struct secret_def *get_secret(struct cmd_ctx *c, bool exclusive)
{
    char uuid[37];
    struct secret_def *s;

    if (secret_arg(c, uuid) < 0 || ctx_connect(c, exclusive) < 0)
        return NULL;
    if (!(s = secret_load(&c->conn, uuid))) {
        pool_err("failed to get secret '%s'", opt_str(c, "secret"));
        pool_report();
    }
    return s;
}

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 of n bytes (malloc'd). */
static char *b64_encode(const unsigned char *p, size_t n)
{
    char *o = malloc(n / 3 * 4 + 5), *w = o;

    if (!o)
        pool_oom();
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *w++ = b64chars[v >> 18 & 63];
        *w++ = b64chars[v >> 12 & 63];
        *w++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
        *w++ = i + 2 < n ? b64chars[v & 63] : '=';
    }
    *w = 0;
    return o;
}

/* Bytes of base64 text s (malloc'd, *n set) as glib's decoder (virsh's)
 * reads it: characters outside the alphabet skipped, only whole groups of
 * four kept, '=' padding ending a group short. */
static unsigned char *b64_decode(const char *s, size_t *n)
{
    unsigned char *o = malloc(strlen(s) / 4 * 3 + 3);
    unsigned v = 0;
    int k = 0, pad = 0;

    if (!o)
        pool_oom();
    *n = 0;
    for (; *s; s++) {
        const char *c = *s == '=' ? NULL : strchr(b64chars, *s);
        if (*s != '=' && !c)
            continue;
        pad += *s == '=';
        v = v << 6 | (c ? (unsigned)(c - b64chars) : 0);
        if (++k < 4)
            continue;
        o[(*n)++] = (unsigned char)(v >> 16);
        if (pad < 2)
            o[(*n)++] = (unsigned char)(v >> 8);
        if (pad < 1)
            o[(*n)++] = (unsigned char)v;
        v = 0;
        k = pad = 0;
    }
    return o;
}

char *secret_value_b64(struct pool_conn *c, const char *uuid)
{
    struct secret_def *s = secret_load(c, uuid);
    char *p, *v;
    size_t len;

    if (!s)
        return NULL;
    secret_def_free(s);
    p = secret_file(c, uuid, "base64");
    v = access(p, F_OK) == 0 ? pool_read_file(p, &len) : NULL;
    if (!v)
        pool_set_error("Secret not found: secret '%s' does not have a value", uuid);
    free(p);
    return v;
}

/* Check v's <encryption> (which = "volume" or "inputvol" in messages)
 * and give its passphrase to libvdisk as secret object id; 0 when v is
 * not encrypted. */
static int prepare_key(struct pool_conn *c, const struct vol_def *v, const char *id,
                       bool input)
{
    char *b, *spec;
    int r;

    if (!v->enc_format)
        return 0;
    if (input && strcmp(v->enc_format, "luks")) {
        pool_set_error("unsupported configuration: encryption format of inputvol must be "
                       "LUKS");
        return -1;
    }
    if (strcmp(v->enc_format, "luks")) {
        pool_set_error("unsupported configuration: volume encryption format '%s' is not "
                       "supported, only 'luks'", v->enc_format);
        return -1;
    }
    /* a block volume's format is its partition type: its data is raw */
    if (!(v->type && !strcmp(v->type, "block")) && v->format && strcmp(v->format, "raw") &&
        strcmp(v->format, "qcow2")) {
        pool_set_error("unsupported configuration: volume encryption unsupported with "
                       "format %s", v->format);
        return -1;
    }
    if (v->enc_secret_bad || !v->enc_secret) {
        pool_set_error("invalid argument: A single <secret type='passphrase'...> element is "
                       "expected in encryption description");
        return -1;
    }
    if (!(b = secret_value_b64(c, v->enc_secret)))
        return -1;
    spec = xasprintf("secret,id=%s,format=base64,data=%s", id, b);
    r = vd_object_add(spec);
    if (r < 0)
        pool_set_error("internal error: cannot use secret '%s': %s", v->enc_secret, vd_errmsg());
    free(spec);
    free(b);
    return r < 0 ? -1 : 0;
}

int secret_prepare_vol(struct pool_conn *c, const struct vol_def *v, const struct vol_def *from)
{
    vd_object_clear();
    if (prepare_key(c, v, VOL_KEY_ID, false) < 0)
        return -1;
    /* a block volume is copied as its bytes, never through its encryption:
     * its secret is not needed (libvirt does not look it up) */
    if (!from || (from->type && !strcmp(from->type, "block")))
        return 0;
    return prepare_key(c, from, VOL_SRC_KEY_ID, true);
}

void secret_fill_vols(const struct pool_conn *c, struct vol_def **v, size_t n)
{
    for (int eph = 0; eph < 2; eph++) {
        char *d = secret_dir(c, eph);
        size_t k;
        char **names = list_uuids(d, &k);
        for (size_t i = 0; i < k; i++) {
            struct secret_def *s = NULL;
            for (size_t j = 0; j < n; j++) {
                if (!v[j]->enc_format || v[j]->enc_secret)
                    continue;
                if (!s && !(s = secret_load(c, names[i])))
                    break;
                if (s->usage_type && !strcmp(s->usage_type, "volume") &&
                    !strcmp(s->usage_id, v[j]->path))
                    v[j]->enc_secret = xstrdup(s->uuid);
            }
            secret_def_free(s);
            free(names[i]);
        }
        free(names);
        free(d);
    }
}

/* Can s be defined next to the secrets there are?  -1 (error recorded)
 * when another secret has its usage or it changes a flag of its old self. */
static int check_define(const struct pool_conn *c, const struct secret_def *s)
{
    int r = 0;

    for (int eph = 0; eph < 2 && r == 0; eph++) {
        char *d = secret_dir(c, eph);
        size_t n;
        char **names = list_uuids(d, &n);
        for (size_t i = 0; i < n; i++) {
            struct secret_def *o = r ? NULL : secret_load(c, names[i]);
            bool same = o && !strcmp(o->uuid, s->uuid);
            bool usage = o && o->usage_type && s->usage_type &&
                         !strcmp(o->usage_type, s->usage_type) &&
                         !strcmp(o->usage_id, s->usage_id);
            if (same && o->usage_type && !usage) {
                pool_set_error("internal error: a secret with UUID %s is already defined "
                               "for use with %s", o->uuid, o->usage_id);
                r = -1;
            } else if (!same && usage) {
                pool_set_error("internal error: a secret with UUID %s already defined for "
                               "use with %s", o->uuid, o->usage_id);
                r = -1;
            } else if (same && ((o->priv && !s->priv) || (o->ephemeral && !s->ephemeral))) {
                /* a secret may become private, never public again */
                pool_set_error("internal error: cannot change %s flag on existing secret",
                               o->priv && !s->priv ? "private" : "ephemeral");
                r = -1;
            }
            secret_def_free(o);
            free(names[i]);
        }
        free(names);
        free(d);
    }
    return r;
}

static int cmd_define(struct cmd_ctx *c)
{
    const char *file = opt_str(c, "file");
    struct secret_def *s = NULL;
    size_t len;
    char *x, *p = NULL, *out;
    int r = -1;

    if (ctx_connect(c, true) < 0)
        return 1;
    if ((x = pool_read_file(file, &len)) && (s = secret_def_parse(x, len))) {
        if (check_define(&c->conn, s) == 0) {
            char *d = secret_dir(&c->conn, s->ephemeral);
            p = xasprintf("%s/%s.xml", d, s->uuid);
            free(d);
            out = secret_def_format(s);
            r = atomic_write(p, out, strlen(out));
            free(out);
        }
    }
    if (r == 0)
        printf("Secret %s created\n", s->uuid);
    else {
        pool_err("Failed to set attributes from %s", file);
        pool_report();
    }
    free(p);
    free(x);
    secret_def_free(s);
    return r ? 1 : 0;
}

static int cmd_undefine(struct cmd_ctx *c)
{
    struct secret_def *s = get_secret(c, true);
    char *x, *v;
    int r;

    if (!s)
        return 1;
    x = secret_file(&c->conn, s->uuid, "xml");
    v = secret_file(&c->conn, s->uuid, "base64");
    unlink(v);
    r = unlink(x);
    if (r == 0) {
        printf("Secret %s deleted\n", s->uuid);
    } else {
        pool_err("Failed to delete secret %s", s->uuid);
        pool_err("cannot unlink file '%s': %s", x, strerror(errno));
    }
    free(x);
    free(v);
    secret_def_free(s);
    return r ? 1 : 0;
}

/* virsh's checks of options that exclude each other, in its order;
 * -1 (printed) when two are given. */
static int exclusive_opts(struct cmd_ctx *c)
{
    static const char *const pairs[][2] = {
        { "file", "base64" }, { "plain", "base64" }, { "interactive", "base64" },
        { "interactive", "plain" }, { "interactive", "file" },
    };

    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (opt_bool(c, pairs[i][0]) && opt_bool(c, pairs[i][1])) {
            pool_err("Options --%s and --%s are mutually exclusive", pairs[i][0],
                     pairs[i][1]);
            return -1;
        }
    }
    return 0;
}

/* --interactive: the value typed at the terminal after virsh's prompt,
 * read as virsh reads it (getpass: from the terminal with echo off, or
 * stdin when there is none; the newline dropped, taken as plain bytes). */
static unsigned char *read_interactive(size_t *n)
{
    char *p, *v;

    printf("Enter new value for secret:");
    fflush(stdout);
    if (!(p = getpass(""))) {
        pool_err("Failed to read secret");
        return NULL;
    }
    *n = strlen(p);
    v = xstrdup(p);
    explicit_bzero(p, *n);
    return (unsigned char *)v;
}

/* The new value from --base64, --file (with --plain) or the terminal;
 * NULL (printed).  *n is its length. */
static unsigned char *new_value(struct cmd_ctx *c, size_t *n)
{
    const char *b64 = opt_str(c, "base64"), *file = opt_str(c, "file");
    unsigned char *v;
    char *text;

    if (opt_bool(c, "interactive"))
        return read_interactive(n);
    if (b64) {
        pool_err("Passing secret value as command-line argument is insecure!");
        return b64_decode(b64, n);
    }
    if (!file) {
        pool_err("Input secret value is missing");
        return NULL;
    }
    if (!(text = pool_read_file(file, n))) {
        pool_report();
        return NULL;
    }
    if (opt_bool(c, "plain"))
        return (unsigned char *)text;
    v = b64_decode(text, n);
    free(text);
    return v;
}

static int cmd_set_value(struct cmd_ctx *c)
{
    struct secret_def *s;
    unsigned char *v;
    size_t n;
    char *b, *p;
    int r;

    if (exclusive_opts(c) < 0 || !(s = get_secret(c, true)))
        return 1;
    if (!(v = new_value(c, &n))) {
        secret_def_free(s);
        return 1;
    }
    b = b64_encode(v, n);
    p = secret_file(&c->conn, s->uuid, "base64");
    /* no value at all: libvirt's API refuses it, the old value stays */
    r = n == 0 || n > SECRET_MAX ? -1 : atomic_write(p, b, strlen(b));
    if (n == 0) {
        pool_err("Failed to set secret value");
        pool_err("value in virSecretSetValue must not be NULL");
    } else if (r == 0) {
        printf("Secret value set\n");
    } else {
        pool_err("Failed to set secret value");
    }
    explicit_bzero(v, n);
    free(p);
    free(b);
    free(v);
    secret_def_free(s);
    return r ? 1 : 0;
}

static int cmd_get_value(struct cmd_ctx *c)
{
    struct secret_def *s = get_secret(c, false);
    char *b;

    if (!s)
        return 1;
    if (s->priv) {
        pool_err("Invalid secret: secret is private");
        secret_def_free(s);
        return 1;
    }
    if (!(b = secret_value_b64(&c->conn, s->uuid))) {
        pool_report();
        secret_def_free(s);
        return 1;
    }
    if (opt_bool(c, "plain")) {
        size_t n;
        unsigned char *v = b64_decode(b, &n);
        fwrite(v, 1, n, stdout);
        free(v);
    } else {
        fputs(b, stdout);
    }
    free(b);
    secret_def_free(s);
    return 0;
}

static int cmd_dumpxml(struct cmd_ctx *c)
{
    struct secret_def *s = get_secret(c, false);
    char *x;

    if (!s)
        return 1;
    x = secret_def_format(s);
    fputs(x, stdout);
    free(x);
    secret_def_free(s);
    return 0;
}

/* Does s pass secret-list's filters? */
static bool listed(struct cmd_ctx *c, const struct secret_def *s)
{
    if (opt_bool(c, "ephemeral") != opt_bool(c, "no-ephemeral") &&
        opt_bool(c, "ephemeral") != s->ephemeral)
        return false;
    if (opt_bool(c, "private") != opt_bool(c, "no-private") &&
        opt_bool(c, "private") != s->priv)
        return false;
    return true;
}

/* qsort order of secret-list: by uuid. */
static int secret_cmp(const void *a, const void *b)
{
    return strcmp((*(struct secret_def *const *)a)->uuid, (*(struct secret_def *const *)b)->uuid);
}

static int cmd_list(struct cmd_ctx *c)
{
    static const char *hdr[] = { "UUID", "Usage" };
    struct secret_def **all = NULL;
    size_t n = 0;
    struct table t;

    if (ctx_connect(c, false) < 0)
        return 1;
    for (int eph = 0; eph < 2; eph++) {
        char *d = secret_dir(&c->conn, eph);
        size_t k;
        char **names = list_uuids(d, &k);
        for (size_t i = 0; i < k; i++) {
            struct secret_def *s = secret_load(&c->conn, names[i]);
            if (s && listed(c, s)) {
                if (!(all = realloc(all, (n + 1) * sizeof(*all))))
                    pool_oom();
                all[n++] = s;
            } else {
                secret_def_free(s);
            }
            free(names[i]);
        }
        free(names);
        free(d);
    }
    if (n)
        qsort(all, n, sizeof(*all), secret_cmp);
    table_init(&t, hdr, 2);
    for (size_t i = 0; i < n; i++) {
        char *u = all[i]->usage_type ? xasprintf("%s %s", all[i]->usage_type, all[i]->usage_id)
                                     : xstrdup("Unused");
        table_add(&t, (const char *[]){ all[i]->uuid, u });
        free(u);
        secret_def_free(all[i]);
    }
    free(all);
    table_print(&t);
    return 0;
}

#define SECRET_ARG { "secret", OPT_STRING, true, true, "secret UUID" }

const struct cmd_def secret_cmds[] = {
    { "secret-define", "define or modify a secret from an XML file",
      { { "file", OPT_STRING, true, true, "file containing secret attributes in XML" },
        { "validate", OPT_BOOL, false, false, "validate the XML against the schema" } },
      cmd_define },
    { "secret-dumpxml", "secret attributes in XML", { SECRET_ARG }, cmd_dumpxml },
    { "secret-get-value", "Output a secret value",
      { SECRET_ARG, { "plain", OPT_BOOL, false, false, "get value without converting to base64" } },
      cmd_get_value },
    { "secret-list", "list secrets",
      { { "ephemeral", OPT_BOOL, false, false, "list ephemeral secrets" },
        { "no-ephemeral", OPT_BOOL, false, false, "list non-ephemeral secrets" },
        { "private", OPT_BOOL, false, false, "list private secrets" },
        { "no-private", OPT_BOOL, false, false, "list non-private secrets" } },
      cmd_list },
    { "secret-set-value", "set a secret value",
      { SECRET_ARG, { "base64", OPT_STRING, false, true, "base64-encoded secret value" },
        { "file", OPT_STRING, false, false, "read secret from file" },
        { "plain", OPT_BOOL, false, false, "read the secret from file without converting from base64" },
        { "interactive", OPT_BOOL, false, false, "read the secret from the terminal" } },
      cmd_set_value },
    { "secret-undefine", "undefine a secret", { SECRET_ARG }, cmd_undefine },
    { NULL, NULL, { { 0 } }, NULL },
};
