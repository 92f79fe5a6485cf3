/* SPDX-License-Identifier: BSD-3-Clause */
/* The vol-* commands, with virsh's lookup rules (by name in --pool, else by
 * key or path in every active pool), messages and output. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "cli.h"

/* A volume found by the lookup, with its pool. */
struct vol_ref {
    struct pool_obj *pool;
    struct vol_def *vol;
};

static void ref_free(struct vol_ref *r)
{
    pool_obj_free(r->pool);
    vol_def_free(r->vol);
}

/* The active pool named by --pool (name or uuid); NULL (printed). */
static struct pool_obj *active_pool(struct cmd_ctx *c, const char *opt)
{
    struct pool_obj *o = pool_lookup(&c->conn, opt_str(c, opt));

    if (o && !o->active) {
        pool_err("pool '%s' is not active", o->def->name);
        pool_obj_free(o);
        return NULL;
    }
    return o;
}

/* The backend of pool o's type (NULL with the error recorded). */
static const struct pool_backend *be(const struct pool_obj *o)
{
    return pool_backend_of(o->def->type);
}

/* Is o a pool whose volumes are files (dir, fs, netfs)? */
static bool file_pool(const struct pool_obj *o)
{
    return !strcmp(o->def->type, "dir") || !strcmp(o->def->type, "fs") ||
           !strcmp(o->def->type, "netfs");
}

/* The volumes of pool o as libvirt shows them now. */
static struct vol_def **list_vols(struct pool_conn *conn, struct pool_obj *o, size_t *n)
{
    const struct pool_backend *b = be(o);
    struct vol_def **v;

    *n = 0;
    if (!b)
        return NULL;
    v = b->vols(o->def, n);

    state_apply_marks(conn, o->def->name, v, *n);
    secret_fill_vols(conn, v, *n);
    return v;
}

/* Take volume id out of the list of pool o (by name, or key/path). */
static struct vol_def *take_vol(struct pool_conn *conn, struct pool_obj *o, const char *id,
                                bool by_name)
{
    size_t n;
    struct vol_def **v = list_vols(conn, o, &n), *hit = NULL;

    for (size_t i = 0; i < n && !hit; i++) {
        if ((by_name && !strcmp(v[i]->name, id)) || !strcmp(v[i]->key, id) ||
            !strcmp(v[i]->path, id)) {
            hit = v[i];
            v[i] = NULL;
        }
    }
    vols_free(v, n);
    return hit;
}

/* Look the volume in option opt up (with --pool if given); -1 (printed). */
static int get_vol_in(struct cmd_ctx *c, const char *opt, const char *popt,
                      struct vol_ref *r, bool exclusive)
{
    const char *id = opt_str(c, opt);

    memset(r, 0, sizeof(*r));
    if (ctx_connect(c, exclusive) < 0)
        return -1;
    if (opt_str(c, popt)) {
        if (!(r->pool = active_pool(c, popt)))
            return -1;
        r->vol = take_vol(&c->conn, r->pool, id, true);
    } else {
        size_t n;
        struct pool_obj **l = pools_load(&c->conn, &n);
        for (size_t i = 0; i < n; i++) {
            if (!r->vol && l[i]->active && (r->vol = take_vol(&c->conn, l[i], id, false))) {
                r->pool = l[i];
                l[i] = NULL;
            }
            pool_obj_free(l[i]);
        }
        free(l);
    }
    if (r->vol)
        return 0;
    if (opt_str(c, popt) || !strcmp(c->def->name, "vol-name") ||
        !strcmp(c->def->name, "vol-pool"))
        pool_err("failed to get vol '%s'", id);
    else
        pool_err("failed to get vol '%s', specifying --%s might help", id, popt);
    pool_err("Storage volume not found: no storage vol with matching path '%s'", id);
    ref_free(r);
    return -1;
}

/* get_vol_in with the pool in --pool. */
static int get_vol(struct cmd_ctx *c, const char *opt, struct vol_ref *r, bool exclusive)
{
    return get_vol_in(c, opt, "pool", r, exclusive);
}

/* Checks of a new volume's name against pool o; -1 (error recorded). */
static int check_new(struct pool_conn *conn, struct pool_obj *o, const char *name,
                     bool copy)
{
    struct vol_def *v;

    if (!o->active) {
        pool_set_error("Requested operation is not valid: storage pool '%s' is not active",
                       o->def->name);
        return -1;
    }
    if (file_pool(o) && strchr(name, '/')) {
        pool_set_error("Requested operation is not valid: volume name '%s' cannot contain '/'",
                       name);
        return -1;
    }
    if ((v = take_vol(conn, o, name, true))) {
        vol_def_free(v);
        if (copy)
            pool_set_error("internal error: storage volume name '%s' already in use.", name);
        else
            pool_set_error("storage volume '%s' exists already", name);
        return -1;
    }
    return 0;
}

/* Keep the pool's live sizes up to date as libvirt does between refreshes:
 * a volume takes (sign 1) or gives back (-1) its allocation a. */
static void account(struct pool_conn *conn, struct pool_obj *o, uint64_t a, int sign)
{
    if (sign > 0) {
        o->def->allocation += a;
        o->def->available = a > o->def->available ? 0 : o->def->available - a;
    } else {
        o->def->allocation = a > o->def->allocation ? 0 : o->def->allocation - a;
        o->def->available += a;
    }
    state_save_live(conn, o->def);
}

/* The allocation of the new volume at path (0 if it cannot be read). */
static uint64_t allocation_of(const char *path)
{
    struct vol_def *p = calloc(1, sizeof(*p));
    uint64_t a = 0;

    if (!p)
        pool_oom();
    p->path = xstrdup(path);
    if (vol_probe(p) == 0)
        a = p->allocation;
    vol_def_free(p);
    return a;
}

/* Is fmt one of the backend's volume formats? */
static bool format_of(const struct pool_backend *b, const char *fmt)
{
    for (int i = 0; b->vol_formats && b->vol_formats[i]; i++)
        if (!strcmp(b->vol_formats[i], fmt))
            return true;
    return false;
}

/* After a change of a pool whose sizes its backend reads (lvm, parted):
 * read them again, as libvirt's refresh after the change does. */
static void resize_pool(struct pool_conn *conn, struct pool_obj *o)
{
    if (be(o)->refresh(o->def) == 0)
        state_save_live(conn, o->def);
}

/* Create v in pool o (optionally from a source volume). */
static int create_in(struct pool_conn *conn, struct pool_obj *o, struct vol_def *v,
                     bool meta, const struct vol_def *from)
{
    const struct pool_backend *b = be(o);

    if (!b || !b->vol_create) {
        pool_set_error("this function is not supported by the connection driver: "
                       "storage pool does not support volume creation");
        return -1;
    }
    if (check_new(conn, o, v->name, from != NULL) < 0)
        return -1;
    if (v->format && b->vol_formats && !format_of(b, v->format)) {
        pool_set_error("unsupported configuration: unknown volume format type %s",
                       v->format);
        return -1;
    }
    if (!file_pool(o))
        v->type = "block";
    if ((b->vol_check && b->vol_check(v, meta, from) < 0) ||
        secret_prepare_vol(conn, v, from) < 0 || b->vol_create(o->def, v, meta, from) < 0)
        return -1;
    if (!file_pool(o)) {
        /* an encrypted LV or partition shows its <encryption> (and a
         * partition its size less the LUKS header) until a refresh */
        if (v->enc_format)
            state_mark_vol(conn, o->def->name, v);
        resize_pool(conn, o);
        return 0;
    }
    if (state_mark_vol(conn, o->def->name, v) < 0) {
        dir_vol_delete(v);
        return -1;
    }
    account(conn, o, allocation_of(v->path), 1);
    return 0;
}

/* Resolve --backing-vol (a volume name in the pool, else a key or path). */
static int set_backing(struct cmd_ctx *c, struct pool_obj *o, struct vol_def *v)
{
    const char *b = opt_str(c, "backing-vol");
    struct vol_def *bv;

    if (!b)
        return 0;
    bv = take_vol(&c->conn, o, b, true);
    v->backing_path = xstrdup(bv ? bv->path : b);
    if (opt_str(c, "backing-vol-format"))
        v->backing_format = xstrdup(opt_str(c, "backing-vol-format"));
    else if (bv && bv->format)
        v->backing_format = xstrdup(bv->format);
    if (!bv && b[0] != '/') {
        pool_err("failed to get vol '%s'", b);
        pool_err("Storage volume not found: no storage vol with matching path '%s'", b);
        return -1;
    }
    vol_def_free(bv);
    return 0;
}

/* vol-create-as --print-xml: the XML virsh would send. */
static void print_create_xml(struct cmd_ctx *c, const struct vol_def *v, bool alloc)
{
    const char *bf = opt_str(c, "backing-vol-format");

    printf("<volume>\n  <name>%s</name>\n  <capacity>%" PRIu64 "</capacity>\n", v->name,
           v->capacity);
    if (alloc)
        printf("  <allocation>%" PRIu64 "</allocation>\n", v->allocation);
    if (v->format)
        printf("  <target>\n    <format type='%s'/>\n  </target>\n", v->format);
    if (v->backing_path) {
        printf("  <backingStore>\n    <path>%s</path>\n", v->backing_path);
        if (bf)
            printf("    <format type='%s'/>\n", bf);
        printf("  </backingStore>\n");
    }
    printf("</volume>\n");
}

static int cmd_create_as(struct cmd_ctx *c)
{
    struct vol_def *v = calloc(1, sizeof(*v));
    struct pool_obj *o;
    bool given;
    int r = -1;

    if (!v)
        pool_oom();
    v->perms.mode = v->perms.owner = v->perms.group = -1;
    v->name = xstrdup(opt_str(c, "name"));
    if (opt_size(c, "capacity", &v->capacity, &given) < 0 ||
        opt_size(c, "allocation", &v->allocation, &given) < 0 ||
        ctx_connect(c, true) < 0 || !(o = pool_lookup(&c->conn, opt_str(c, "pool")))) {
        vol_def_free(v);
        return 1;
    }
    if (!given)
        v->allocation = v->capacity;
    v->has_allocation = given;
    if (opt_str(c, "format"))
        v->format = xstrdup(opt_str(c, "format"));
    if (set_backing(c, o, v) < 0) {
        r = -1;
    } else if (opt_bool(c, "print-xml")) {
        print_create_xml(c, v, given);
        r = 0;
    } else {
        r = create_in(&c->conn, o, v, opt_bool(c, "prealloc-metadata"), NULL);
        if (r == 0)
            printf("Vol %s created\n", v->name);
        else {
            pool_err("Failed to create vol %s", v->name);
            pool_report();
        }
    }
    pool_obj_free(o);
    vol_def_free(v);
    return r ? 1 : 0;
}

static int cmd_create(struct cmd_ctx *c)
{
    const char *file = opt_str(c, "file");
    struct pool_obj *o;
    struct vol_def *v = NULL;
    size_t len;
    char *x;
    int r = -1;

    if (ctx_connect(c, true) < 0 || !(o = pool_lookup(&c->conn, opt_str(c, "pool"))))
        return 1;
    if ((x = pool_read_file(file, &len)) && (v = vol_def_parse(x, len)))
        r = create_in(&c->conn, o, v, opt_bool(c, "prealloc-metadata"), NULL);
    if (r == 0)
        printf("Vol %s created from %s\n", v->name, file);
    else {
        pool_err("Failed to create vol from %s", file);
        pool_report();
    }
    free(x);
    vol_def_free(v);
    pool_obj_free(o);
    return r ? 1 : 0;
}

static int cmd_create_from(struct cmd_ctx *c)
{
    const char *file = opt_str(c, "file");
    struct vol_ref src;
    struct pool_obj *o;
    struct vol_def *v = NULL;
    size_t len;
    char *x = NULL;
    int r = -1;

    if (get_vol_in(c, "vol", "inputpool", &src, true) < 0)
        return 1;
    if (!(o = pool_lookup(&c->conn, opt_str(c, "pool")))) {
        ref_free(&src);
        return 1;
    }
    if ((x = pool_read_file(file, &len)) && (v = vol_def_parse(x, len))) {
        /* qemu-img convert makes the copy as large as its source */
        if (!v->has_capacity || v->capacity < src.vol->capacity ||
            (v->format && strcmp(v->format, "raw")))
            v->capacity = src.vol->capacity;
        /* no <allocation>: all of the (new) capacity, as libvirt takes it */
        if (!v->has_allocation)
            v->allocation = v->capacity;
        r = create_in(&c->conn, o, v, opt_bool(c, "prealloc-metadata"), src.vol);
    }
    if (r == 0)
        printf("Vol %s created from input vol %s\n", v->name, src.vol->name);
    else {
        pool_err("Failed to create vol from %s", file);
        pool_report();
    }
    free(x);
    vol_def_free(v);
    pool_obj_free(o);
    ref_free(&src);
    return r ? 1 : 0;
}

/* A clone's <encryption>: its source's, as virsh passes the source's XML
 * (the same secret, cipher and IV generator). */
static void clone_encryption(struct vol_def *v, const struct vol_def *src)
{
    if (!src->enc_format)
        return;
    v->enc_format = xstrdup(src->enc_format);
    v->enc_secret = src->enc_secret ? xstrdup(src->enc_secret) : NULL;
    for (int i = 0; i < 4; i++)
        v->enc_cipher[i] = src->enc_cipher[i] ? xstrdup(src->enc_cipher[i]) : NULL;
    for (int i = 0; i < 2; i++)
        v->enc_ivgen[i] = src->enc_ivgen[i] ? xstrdup(src->enc_ivgen[i]) : NULL;
}

static int cmd_clone(struct cmd_ctx *c)
{
    struct vol_ref src;
    struct vol_def *v;
    int r;

    if (get_vol(c, "vol", &src, true) < 0)
        return 1;
    v = calloc(1, sizeof(*v));
    if (!v)
        pool_oom();
    v->perms.mode = v->perms.owner = v->perms.group = -1;
    v->name = xstrdup(opt_str(c, "newname"));
    v->capacity = src.vol->capacity;
    /* the source's allocation and permissions, as virsh passes the
     * source's XML; but a sparse LV is cloned whole (libvirt 9.0 clones
     * it sparse and the copy overflows it, see the README) */
    v->allocation = src.vol->allocation;
    v->has_allocation = file_pool(src.pool);
    v->perms.mode = src.vol->perms.mode;
    v->perms.owner = src.vol->perms.owner;
    v->perms.group = src.vol->perms.group;
    v->format = src.vol->format ? xstrdup(src.vol->format) : NULL;
    clone_encryption(v, src.vol);
    r = create_in(&c->conn, src.pool, v, opt_bool(c, "prealloc-metadata"), src.vol);
    if (r == 0)
        printf("Vol %s cloned from %s\n", v->name, src.vol->name);
    else {
        pool_err("Failed to clone vol from %s", src.vol->name);
        pool_report();
    }
    vol_def_free(v);
    ref_free(&src);
    return r ? 1 : 0;
}

/* Run op on the volume and print "Vol NAME <done>" or the failure. */
static int simple_op(struct cmd_ctx *c, int (*op)(struct cmd_ctx *, struct vol_ref *),
                     const char *done, const char *failed)
{
    struct vol_ref r;
    int rc;

    if (get_vol(c, "vol", &r, true) < 0)
        return 1;
    rc = op(c, &r);
    if (rc == 0)
        printf("Vol %s %s\n", r.vol->name, done);
    else {
        pool_err("Failed to %s vol %s", failed, r.vol->name);
        pool_report();
    }
    ref_free(&r);
    return rc ? 1 : 0;
}

static int do_delete(struct cmd_ctx *c, struct vol_ref *r)
{
    const struct pool_backend *b = be(r->pool);

    if (!b || b->vol_delete(r->pool->def, r->vol) < 0)
        return -1;
    state_unmark_vol(&c->conn, r->pool->def->name, r->vol->name);
    if (!file_pool(r->pool)) {
        resize_pool(&c->conn, r->pool);
        return 0;
    }
    account(&c->conn, r->pool, r->vol->allocation, -1);
    return 0;
}

static int cmd_delete(struct cmd_ctx *c)
{
    return simple_op(c, do_delete, "deleted", "delete");
}

static int do_wipe(struct cmd_ctx *c, struct vol_ref *r)
{
    const char *alg = opt_str(c, "algorithm");

    const struct pool_backend *b = be(r->pool);

    return b ? b->vol_wipe(r->vol, alg ? alg : "zero") : -1;
}

/* Algorithms of vol-wipe, as virsh lists them. */
static const char *const wipe_algs[] = {
    "zero", "nnsa", "dod", "bsi", "gutmann", "schneier", "pfitzner7", "pfitzner33",
    "random", "trim", NULL,
};

static int cmd_wipe(struct cmd_ctx *c)
{
    const char *alg = opt_str(c, "algorithm");
    bool ok = !alg;

    for (int i = 0; alg && wipe_algs[i]; i++)
        ok |= !strcmp(alg, wipe_algs[i]);
    if (!ok) {
        pool_err("Unsupported algorithm '%s'", alg);
        return 1;
    }
    return simple_op(c, do_wipe, "wiped", "wipe");
}

/* Print one "Label: value" line of vol-info. */
static void info_size(const char *label, uint64_t v, bool bytes)
{
    char *s;

    if (bytes) {
        printf("%-15s %" PRIu64 " bytes\n", label, v);
        return;
    }
    s = pretty_size(v);
    printf("%-15s %s\n", label, s);
    free(s);
}

static int cmd_info(struct cmd_ctx *c)
{
    struct vol_ref r;

    if (get_vol(c, "vol", &r, false) < 0)
        return 1;
    printf("%-15s %s\n", "Name:", r.vol->name);
    printf("%-15s %s\n", "Type:", r.vol->type);
    info_size("Capacity:", r.vol->capacity, opt_bool(c, "bytes"));
    if (opt_bool(c, "physical"))
        info_size("Physical:", r.vol->physical, opt_bool(c, "bytes"));
    else
        info_size("Allocation:", r.vol->allocation, opt_bool(c, "bytes"));
    ref_free(&r);
    return 0;
}

static int cmd_dumpxml(struct cmd_ctx *c)
{
    struct vol_ref r;
    char *x;

    if (get_vol(c, "vol", &r, false) < 0)
        return 1;
    x = vol_def_format(r.vol);
    fputs(x, stdout);
    free(x);
    ref_free(&r);
    return 0;
}

/* vol-path, vol-key, vol-name, vol-pool: one field. */
static int print_field(struct cmd_ctx *c, int which)
{
    struct vol_ref r;

    if (get_vol(c, "vol", &r, false) < 0)
        return 1;
    if (which == 0)
        printf("%s\n", r.vol->path);
    else if (which == 1)
        printf("%s\n", r.vol->key);
    else if (which == 2)
        printf("%s\n", r.vol->name);
    else
        printf("%s\n", opt_bool(c, "uuid") ? r.pool->def->uuid : r.pool->def->name);
    ref_free(&r);
    return 0;
}

static int cmd_path(struct cmd_ctx *c) { return print_field(c, 0); }
static int cmd_key(struct cmd_ctx *c) { return print_field(c, 1); }
static int cmd_name(struct cmd_ctx *c) { return print_field(c, 2); }
static int cmd_pool(struct cmd_ctx *c) { return print_field(c, 3); }

static int cmd_list(struct cmd_ctx *c)
{
    static const char *hdr[] = { "Name", "Path", "Type", "Capacity", "Allocation" };
    bool det = opt_bool(c, "details");
    struct pool_obj *o;
    struct vol_def **v;
    struct table t;
    size_t n;

    if (ctx_connect(c, false) < 0 || !(o = pool_lookup(&c->conn, opt_str(c, "pool"))))
        return 1;
    if (!o->active) {
        pool_err("Failed to list volumes");
        pool_err("Requested operation is not valid: storage pool '%s' is not active",
                 o->def->name);
        pool_obj_free(o);
        return 1;
    }
    v = list_vols(&c->conn, o, &n);
    table_init(&t, hdr, det ? 5 : 2);
    for (size_t i = 0; i < n; i++) {
        char *cap = pretty_size(v[i]->capacity), *al = pretty_size(v[i]->allocation);
        table_add(&t, (const char *[]){ v[i]->name, v[i]->path, v[i]->type, cap, al });
        free(cap);
        free(al);
    }
    table_print(&t);
    vols_free(v, n);
    pool_obj_free(o);
    return 0;
}

/* A plain unsigned number option (virsh's ULongLong); -1 (printed). */
static int opt_ull(struct cmd_ctx *c, const char *name, uint64_t *out)
{
    const char *s = opt_str(c, name);
    char *end;

    *out = 0;
    if (!s)
        return 0;
    errno = 0;
    *out = strtoull(s, &end, 10);
    if (!*s || *s == '-' || errno || *end) {
        pool_err("Numeric value '%s' for <%s> option is malformed or out of range", s, name);
        return -1;
    }
    return 0;
}

/* --offset and --length of upload and download; -1 (printed). */
static int off_len(struct cmd_ctx *c, uint64_t *off, uint64_t *len)
{
    if (opt_ull(c, "offset", off) < 0 || opt_ull(c, "length", len) < 0)
        return -1;
    return 0;
}

static int cmd_upload(struct cmd_ctx *c)
{
    struct vol_ref r;
    uint64_t off, len;
    int rc;

    if (off_len(c, &off, &len) < 0 || get_vol(c, "vol", &r, false) < 0)
        return 1;
    if (!pool_stream && access(opt_str(c, "file"), R_OK) < 0) {
        pool_err("cannot read %s", opt_str(c, "file"));
        ref_free(&r);
        return 1;
    }
    rc = be(r.pool)->vol_upload(r.vol, pool_stream ? NULL : opt_str(c, "file"), off, len,
                                opt_bool(c, "sparse"));
    if (rc == -3) {
        pool_err("cannot send data to volume %s", r.vol->name);
        pool_report();
    } else if (rc < 0) {
        pool_err("cannot upload to volume %s", r.vol->name);
        pool_report();
    }
    ref_free(&r);
    return rc ? 1 : 0;
}

static int cmd_download(struct cmd_ctx *c)
{
    struct vol_ref r;
    uint64_t off, len;
    int rc;

    if (off_len(c, &off, &len) < 0 || get_vol(c, "vol", &r, false) < 0)
        return 1;
    rc = be(r.pool)->vol_download(r.vol, pool_stream ? NULL : opt_str(c, "file"), off, len,
                                  opt_bool(c, "sparse"));
    if (rc == -1) {
        pool_err("cannot download from volume %s", r.vol->name);
        pool_report();
    }
    ref_free(&r);
    return rc ? 1 : 0;
}

/* The new capacity of vol-resize; -1 (printed). */
static int resize_target(struct cmd_ctx *c, const struct vol_def *v, uint64_t *cap,
                         bool *delta)
{
    const char *s = opt_str(c, "capacity");
    struct cmd_ctx tmp = *c;
    uint64_t n;
    bool g, neg = s[0] == '-';

    *delta = opt_bool(c, "delta") || neg;
    if (neg && !opt_bool(c, "shrink")) {
        pool_err("negative size requires --shrink");
        return -1;
    }
    for (int i = 0; i < CMD_MAX_OPTS && c->def->opts[i].name; i++)
        if (!strcmp(c->def->opts[i].name, "capacity"))
            tmp.val[i] = neg ? s + 1 : s;
    if (opt_size(&tmp, "capacity", &n, &g) < 0)
        return -1;
    if (!*delta)
        *cap = n;
    else if (neg || (opt_bool(c, "shrink") && opt_bool(c, "delta")))
        *cap = n > v->capacity ? 0 : v->capacity - n;
    else
        *cap = v->capacity + n < v->capacity ? UINT64_MAX : v->capacity + n;
    return 0;
}

static int cmd_resize(struct cmd_ctx *c)
{
    const char *s = opt_str(c, "capacity");
    struct vol_ref r;
    uint64_t cap;
    bool delta;
    int rc;

    if (get_vol(c, "vol", &r, true) < 0)
        return 1;
    if (resize_target(c, r.vol, &cap, &delta) < 0) {
        ref_free(&r);
        return 1;
    }
    if (s[0] == '-')
        s++;
    if (!file_pool(r.pool) && cap < r.vol->allocation) {
        pool_set_error("invalid argument: can't shrink capacity below existing allocation");
        rc = -1;
    } else if (!file_pool(r.pool) && cap < r.vol->capacity && !opt_bool(c, "shrink")) {
        pool_set_error("invalid argument: Can't shrink capacity below current capacity "
                       "unless shrink flag explicitly specified");
        rc = -1;
    } else if (!be(r.pool)->vol_resize) {
        pool_set_error("this function is not supported by the connection driver: "
                       "storage pool does not support changing of volume capacity");
        rc = -1;
    } else {
        rc = secret_prepare_vol(&c->conn, r.vol, NULL);
        if (rc == 0)
            rc = be(r.pool)->vol_resize(r.pool->def, r.vol, cap, opt_bool(c, "allocate"),
                                        opt_bool(c, "shrink"));
        if (rc == 0 && !file_pool(r.pool))
            resize_pool(&c->conn, r.pool);
    }
    if (rc == 0)
        printf("Size of volume '%s' successfully changed %s %s\n", r.vol->name,
               delta ? "by" : "to", s);
    else {
        pool_err("Failed to change size of volume '%s' %s %s", r.vol->name,
                 delta ? "by" : "to", s);
        pool_report();
    }
    ref_free(&r);
    return rc ? 1 : 0;
}

#define VOL_ARG { "vol", OPT_STRING, true, true, "vol name, key or path" }
#define POOL_OPT { "pool", OPT_STRING, false, false, "pool name or uuid" }

const struct cmd_def vol_cmds[] = {
    { "vol-clone", "clone a volume.",
      { VOL_ARG, { "newname", OPT_STRING, true, true, "clone name" }, POOL_OPT,
        { "prealloc-metadata", OPT_BOOL, false, false, "preallocate metadata (for qcow2 "
          "instead of full allocation)" },
        { "reflink", OPT_BOOL, false, false, "use btrfs COW lightweight copy" } },
      cmd_clone },
    { "vol-create-as", "create a volume from a set of args",
      { { "pool", OPT_STRING, true, true, "pool name" },
        { "name", OPT_STRING, true, true, "name of the volume" },
        { "capacity", OPT_STRING, true, true, "size of the vol, as scaled integer (default bytes)" },
        { "allocation", OPT_STRING, false, false, "initial allocation size, as scaled integer (default bytes)" },
        { "format", OPT_STRING, false, false, "file format type raw,bochs,qcow,qcow2,qed,vmdk" },
        { "backing-vol", OPT_STRING, false, false, "the backing volume if taking a snapshot" },
        { "backing-vol-format", OPT_STRING, false, false, "format of backing volume if taking a snapshot" },
        { "prealloc-metadata", OPT_BOOL, false, false, "preallocate metadata (for qcow2 instead of full allocation)" },
        { "print-xml", OPT_BOOL, false, false, "print XML document, but don't define/create" } },
      cmd_create_as },
    { "vol-create", "create a vol from an XML file",
      { { "pool", OPT_STRING, true, true, "pool name" },
        { "file", OPT_STRING, true, true, "file containing an XML vol description" },
        { "prealloc-metadata", OPT_BOOL, false, false, "preallocate metadata (for qcow2 instead of full allocation)" },
        { "validate", OPT_BOOL, false, false, "validate the XML against the schema" } },
      cmd_create },
    { "vol-create-from", "create a vol, using another volume as input",
      { { "pool", OPT_STRING, true, true, "pool name" },
        { "file", OPT_STRING, true, true, "file containing an XML vol description" },
        VOL_ARG, { "inputpool", OPT_STRING, false, false, "pool name or uuid of the input volume's pool" },
        { "prealloc-metadata", OPT_BOOL, false, false, "preallocate metadata (for qcow2 instead of full allocation)" },
        { "reflink", OPT_BOOL, false, false, "use btrfs COW lightweight copy" },
        { "validate", OPT_BOOL, false, false, "validate the XML against the schema" } },
      cmd_create_from },
    { "vol-delete", "delete a vol",
      { VOL_ARG, POOL_OPT, { "delete-snapshots", OPT_BOOL, false, false, "delete snapshots associated with volume (must be supported by storage driver)" } },
      cmd_delete },
    { "vol-download", "download volume contents to a file",
      { VOL_ARG, { "file", OPT_STRING, true, true, "file" }, POOL_OPT,
        { "offset", OPT_STRING, false, false, "volume offset to download from" },
        { "length", OPT_STRING, false, false, "amount of data to download" },
        { "sparse", OPT_BOOL, false, false, "preserve sparseness of volume" } },
      cmd_download },
    { "vol-dumpxml", "vol information in XML", { VOL_ARG, POOL_OPT }, cmd_dumpxml },
    { "vol-info", "storage vol information",
      { VOL_ARG, POOL_OPT, { "bytes", OPT_BOOL, false, false, "sizes are represented in bytes rather than pretty units" },
        { "physical", OPT_BOOL, false, false, "return the physical size of the volume in allocation field" } },
      cmd_info },
    { "vol-key", "returns the volume key for a given volume name or path", { VOL_ARG, POOL_OPT },
      cmd_key },
    { "vol-list", "list vols",
      { { "pool", OPT_STRING, true, true, "pool name or uuid" },
        { "details", OPT_BOOL, false, false, "display extended details for volumes" } },
      cmd_list },
    { "vol-name", "returns the volume name for a given volume key or path",
      { { "vol", OPT_STRING, true, true, "volume key or path" } }, cmd_name },
    { "vol-path", "returns the volume path for a given volume name or key", { VOL_ARG, POOL_OPT },
      cmd_path },
    { "vol-pool", "returns the storage pool for a given volume key or path",
      { { "vol", OPT_STRING, true, true, "volume key or path" },
        { "uuid", OPT_BOOL, false, false, "return the pool uuid rather than pool name" } },
      cmd_pool },
    { "vol-resize", "resize a vol",
      { VOL_ARG, { "capacity", OPT_STRING, true, true, "new capacity for the vol, as scaled integer (default bytes)" },
        POOL_OPT, { "allocate", OPT_BOOL, false, false, "allocate the new capacity, rather than leaving it sparse" },
        { "delta", OPT_BOOL, false, false, "use capacity as a delta to current size, rather than the new size" },
        { "shrink", OPT_BOOL, false, false, "allow the resize to shrink the volume" } },
      cmd_resize },
    { "vol-upload", "upload file contents to a volume",
      { VOL_ARG, { "file", OPT_STRING, true, true, "file" }, POOL_OPT,
        { "offset", OPT_STRING, false, false, "volume offset to upload to" },
        { "length", OPT_STRING, false, false, "amount of data to upload" },
        { "sparse", OPT_BOOL, false, false, "preserve sparseness of volume" } },
      cmd_upload },
    { "vol-wipe", "wipe a vol",
      { VOL_ARG, POOL_OPT, { "algorithm", OPT_STRING, false, false, "perform selected wiping algorithm" } },
      cmd_wipe },
    { NULL, NULL, { { 0 } }, NULL },
};
