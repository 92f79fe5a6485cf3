/* SPDX-License-Identifier: BSD-3-Clause */
/* The pool-* commands and "autostart", with virsh's messages and output. */
#include <inttypes.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The backend of d's type; NULL with the error recorded. */
static const struct pool_backend *backend(const struct pool_def *d)
{
    return pool_backend_of(d->type);
}

/* The backend's build, start and stop for d's type. */
static int be_build(struct pool_def *d, bool overwrite, bool no_overwrite)
{
    const struct pool_backend *b = backend(d);

    return b ? b->build(d, overwrite, no_overwrite) : -1;
}

/* Is d a netfs pool (built as a dir pool, started by mounting)? */
static bool is_netfs(const struct pool_def *d)
{
    return !strcmp(d->type, "netfs");
}

static int be_start(struct pool_def *d)
{
    const struct pool_backend *b = backend(d);

    return b ? b->start(d) : -1;
}

static int be_stop(struct pool_def *d)
{
    const struct pool_backend *b = backend(d);

    return b ? b->stop(d) : -1;
}

/* Does the pool's type have a backend here? */
static bool supported(const struct pool_def *d)
{
    return backend(d) != NULL;
}

/* Connect and look the pool named by option "pool" up; NULL (printed). */
static struct pool_obj *get_pool(struct cmd_ctx *c, bool exclusive)
{
    if (ctx_connect(c, exclusive) < 0)
        return NULL;
    return pool_lookup(&c->conn, opt_str(c, "pool"));
}

/* "Requested operation is not valid: storage pool 'x' is [not|already] active". */
static int check_active(const struct pool_obj *o, bool want)
{
    if (o->active == want)
        return 0;
    pool_set_error("Requested operation is not valid: storage pool '%s' is %s",
                   o->def->name, want ? "not active" : "already active");
    return -1;
}

/* Start o: the backend's start, then the live state. */
static int start_pool(struct pool_conn *conn, struct pool_obj *o)
{
    if (check_active(o, false) < 0 || !supported(o->def) || be_start(o->def) < 0)
        return -1;
    state_clear_vols(conn, o->def->name);
    if (state_save_live(conn, o->def) < 0)
        return -1;
    o->active = true;
    return 0;
}

/* Do a and b mount the same network directory (libvirt refuses that)? */
static bool same_netfs_source(const struct pool_def *a, const struct pool_def *b)
{
    return is_netfs(a) && is_netfs(b) && a->src_host && b->src_host && a->src_dir &&
           b->src_dir && !strcmp(a->src_host, b->src_host) && !strcmp(a->src_dir, b->src_dir);
}

/* A definition from an XML file; refuse a name or uuid clash. */
static struct pool_def *def_from_file(struct cmd_ctx *c, const char *file,
                                      bool *exists_ok)
{
    struct pool_def *d = pool_def_parse_file(file);
    size_t n;
    struct pool_obj **list;

    if (!d)
        return NULL;
    list = pools_load(&c->conn, &n);
    for (size_t i = 0; i < n; i++) {
        struct pool_def *o = list[i]->def;
        if (!strcmp(o->name, d->name) && strcmp(o->uuid, d->uuid)) {
            pool_set_error("operation failed: pool '%s' already exists with uuid %s",
                           d->name, o->uuid);
            pool_def_free(d);
            d = NULL;
            break;
        }
        if (strcmp(o->name, d->name) && !strcmp(o->uuid, d->uuid)) {
            pool_set_error("operation failed: pool '%s' is already defined with uuid %s",
                           o->name, d->uuid);
            pool_def_free(d);
            d = NULL;
            break;
        }
        if (strcmp(o->name, d->name) && same_netfs_source(o, d)) {
            pool_set_error("operation failed: Storage source conflict with pool: '%s'",
                           o->name);
            pool_def_free(d);
            d = NULL;
            break;
        }
        if (!strcmp(o->name, d->name) && exists_ok)
            *exists_ok = list[i]->active;
    }
    pools_free(list, n);
    return d;
}

/* pool-define FILE. */
static int cmd_define_file(struct cmd_ctx *c, const char *file)
{
    struct pool_def *d;
    int r = -1;

    if (ctx_connect(c, true) < 0)
        return 1;
    d = def_from_file(c, file, NULL);
    if (d)
        r = state_save_config(&c->conn, d);
    if (r == 0)
        printf("Pool %s defined from %s\n", d->name, file);
    else {
        pool_err("Failed to define pool from %s", file);
        pool_report();
    }
    pool_def_free(d);
    return r ? 1 : 0;
}

static int cmd_define(struct cmd_ctx *c)
{
    return cmd_define_file(c, opt_str(c, "file"));
}

/* pool-create FILE (transient, started now; --build first). */
static int create_file(struct cmd_ctx *c, const char *file, const char *name_msg)
{
    bool active = false;
    struct pool_def *d;
    struct pool_obj o = {0};
    int r = -1;

    if (ctx_connect(c, true) < 0)
        return 1;
    d = def_from_file(c, file, &active);
    if (d && active)
        pool_set_error("operation failed: pool '%s' is already active", d->name);
    else if (d && supported(d) &&
             (!opt_bool(c, "build") || be_build(d, opt_bool(c, "overwrite"),
                                               opt_bool(c, "no-overwrite")) == 0)) {
        o.def = d;
        r = start_pool(&c->conn, &o);
    }
    if (r == 0) {
        if (name_msg)
            printf("Pool %s created\n", d->name);
        else
            printf("Pool %s created from %s\n", d->name, file);
    } else {
        if (name_msg)
            pool_err("Failed to create pool %s", name_msg);
        else
            pool_err("Failed to create pool from %s", file);
        pool_report();
    }
    pool_def_free(d);
    return r ? 1 : 0;
}

static int cmd_create(struct cmd_ctx *c)
{
    return create_file(c, opt_str(c, "file"), NULL);
}

/* Append printf output with one string argument to *x (virsh writes the
 * option values into the XML as they are, unescaped). */
static void add(char **x, const char *fmt, const char *v)
{
    char *line = xasprintf(fmt, v), *n = xasprintf("%s%s", *x, line);

    free(line);
    free(*x);
    *x = n;
}

/* The <adapter> element of the --adapter-* options, or NULL. */
static char *adapter_xml(struct cmd_ctx *c)
{
    const char *name = opt_str(c, "adapter-name"), *wwnn = opt_str(c, "adapter-wwnn");
    const char *wwpn = opt_str(c, "adapter-wwpn"), *par = opt_str(c, "adapter-parent");
    const char *pwwnn = opt_str(c, "adapter-parent-wwnn");
    const char *pwwpn = opt_str(c, "adapter-parent-wwpn");
    const char *fabric = opt_str(c, "adapter-parent-fabric-wwn");
    char *x, *p;

    /* a wwnn and wwpn pair (an fc_host) before a name (a scsi_host) */
    if (!wwnn || !wwpn)
        return name ? xasprintf("    <adapter type='scsi_host' name='%s'/>\n", name) : NULL;
    /* one way to name the parent: by name, by its wwnn and wwpn, or by fabric */
    if (par)
        p = xasprintf(" parent='%s'", par);
    else if (pwwnn && pwwpn)
        p = xasprintf(" parent_wwnn='%s' parent_wwpn='%s'", pwwnn, pwwpn);
    else if (fabric)
        p = xasprintf(" parent_fabric_wwn='%s'", fabric);
    else
        p = xstrdup("");
    x = xasprintf("    <adapter type='fc_host'%s wwnn='%s' wwpn='%s'/>\n", p, wwnn, wwpn);
    free(p);
    return x;
}

/* The <auth> element of --auth-type, --auth-username and a secret, or NULL. */
static char *auth_xml(struct cmd_ctx *c)
{
    const char *type = opt_str(c, "auth-type"), *user = opt_str(c, "auth-username");
    const char *usage = opt_str(c, "secret-usage"), *uuid = opt_str(c, "secret-uuid");

    if (!type || !user || (!usage && !uuid))
        return NULL;
    return xasprintf("    <auth type='%s' username='%s'>\n      <secret %s='%s'/>\n"
                     "    </auth>\n", type, user, usage ? "usage" : "uuid",
                     usage ? usage : uuid);
}

/* The XML that pool-define-as / pool-create-as build from their options, as
 * virsh's --print-xml shows it: <source> when one of its main options is
 * given (not for --auth-* or --source-protocol-ver alone). */
static char *xml_from_opts(struct cmd_ctx *c)
{
    const char *host = opt_str(c, "source-host"), *path = opt_str(c, "source-path");
    const char *dev = opt_str(c, "source-dev"), *name = opt_str(c, "source-name");
    const char *fmt = opt_str(c, "source-format"), *ini = opt_str(c, "source-initiator");
    const char *ver = opt_str(c, "source-protocol-ver");
    char *x = xstrdup(""), *adapter = adapter_xml(c), *auth = auth_xml(c);

    add(&x, "<pool type='%s'>\n", opt_str(c, "type"));
    add(&x, "  <name>%s</name>\n", opt_str(c, "name"));
    if (host || path || dev || ini || adapter || fmt || name) {
        add(&x, "%s", "  <source>\n");
        if (host)
            add(&x, "    <host name='%s'/>\n", host);
        if (path)
            add(&x, "    <dir path='%s'/>\n", path);
        if (dev)
            add(&x, "    <device path='%s'/>\n", dev);
        if (ini)
            add(&x, "    <initiator>\n      <iqn name='%s'/>\n    </initiator>\n", ini);
        if (adapter)
            add(&x, "%s", adapter);
        if (auth)
            add(&x, "%s", auth);
        if (fmt)
            add(&x, "    <format type='%s'/>\n", fmt);
        if (name)
            add(&x, "    <name>%s</name>\n", name);
        if (ver)
            add(&x, "    <protocol ver='%s'/>\n", ver);
        add(&x, "%s", "  </source>\n");
    }
    if (opt_str(c, "target"))
        add(&x, "  <target>\n    <path>%s</path>\n  </target>\n", opt_str(c, "target"));
    add(&x, "%s", "</pool>\n");
    free(adapter);
    free(auth);
    return x;
}

/* Write the options' XML to a temporary file for the *-file commands. */
static char *temp_xml(struct cmd_ctx *c)
{
    char *x = xml_from_opts(c), *path = xasprintf("%s/.define-as.%ld.xml",
                                                   c->conn.run_dir, (long)getpid());

    if (atomic_write(path, x, strlen(x)) < 0) {
        free(path);
        path = NULL;
    }
    free(x);
    return path;
}

/* pool-define-as / pool-create-as. */
static int define_as(struct cmd_ctx *c, bool create)
{
    char *path;
    struct pool_def *d;
    int r = -1;

    if (opt_str(c, "secret-usage") && opt_str(c, "secret-uuid")) {
        pool_err("Options --secret-usage and --secret-uuid are mutually exclusive");
        return 1;
    }
    if (opt_bool(c, "print-xml")) {
        path = xml_from_opts(c);
        fputs(path, stdout);
        free(path);
        return 0;
    }
    if (ctx_connect(c, true) < 0 || !(path = temp_xml(c)))
        return 1;
    d = def_from_file(c, path, NULL);
    unlink(path);
    free(path);
    if (d && create) {
        pool_def_free(d);
        if (!(path = temp_xml(c)))
            return 1;
        r = create_file(c, path, opt_str(c, "name"));
        unlink(path);
        free(path);
        return r;
    }
    if (d)
        r = state_save_config(&c->conn, d);
    if (r == 0)
        printf("Pool %s defined\n", d->name);
    else {
        pool_err("Failed to %s pool %s", create ? "create" : "define", opt_str(c, "name"));
        pool_report();
    }
    pool_def_free(d);
    return r ? 1 : 0;
}

static int cmd_define_as(struct cmd_ctx *c)
{
    return define_as(c, false);
}

static int cmd_create_as(struct cmd_ctx *c)
{
    return define_as(c, true);
}

/* Print "Pool NAME <done>" or the failure with the recorded reason. */
static int finish(struct pool_obj *o, int r, const char *done, const char *failed)
{
    if (r == 0)
        printf("Pool %s %s\n", o->def->name, done);
    else {
        pool_err("Failed to %s pool %s", failed, o->def->name);
        pool_report();
    }
    pool_obj_free(o);
    return r ? 1 : 0;
}

static int cmd_build(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, true);
    int r = -1;

    if (!o)
        return 1;
    if (opt_bool(c, "overwrite") && opt_bool(c, "no-overwrite"))
        pool_set_error("Options --overwrite and --no-overwrite are mutually exclusive");
    else if (check_active(o, false) == 0 && supported(o->def))
        r = be_build(o->def, opt_bool(c, "overwrite"), opt_bool(c, "no-overwrite"));
    return finish(o, r, "built", "build");
}

static int cmd_start(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, true);
    bool build = opt_bool(c, "build") || opt_bool(c, "overwrite") ||
                 opt_bool(c, "no-overwrite");
    int r = 0;

    if (!o)
        return 1;
    if (build && check_active(o, false) == 0 && supported(o->def))
        r = be_build(o->def, opt_bool(c, "overwrite"), opt_bool(c, "no-overwrite"));
    if (r == 0)
        r = start_pool(&c->conn, o);
    return finish(o, r, "started", "start");
}

static int cmd_destroy(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, true);
    int r = -1;

    if (!o)
        return 1;
    if (check_active(o, true) == 0 && be_stop(o->def) == 0) {
        state_clear_vols(&c->conn, o->def->name);
        r = state_remove_live(&c->conn, o->def->name);
    }
    return finish(o, r, "destroyed", "destroy");
}

static int cmd_delete(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, true);
    int r = -1;

    if (!o)
        return 1;
    if (o->active)
        pool_set_error("Requested operation is not valid: storage pool '%s' is still active",
                       o->def->name);
    else if (supported(o->def))
        r = backend(o->def)->delete_(o->def);
    return finish(o, r, "deleted", "delete");
}

static int cmd_undefine(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, true);
    int r = -1;

    if (!o)
        return 1;
    if (o->active)
        pool_set_error("Requested operation is not valid: storage pool '%s' is still active",
                       o->def->name);
    else if (!o->cfg)
        pool_set_error("Requested operation is not valid: pool '%s' is not persistent",
                       o->def->name);
    else
        r = state_remove_config(&c->conn, o->def->name);
    return finish(o, r, "has been undefined", "undefine");
}

static int cmd_refresh(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, true);
    int r = -1;

    if (!o)
        return 1;
    if (check_active(o, true) == 0 && supported(o->def) &&
        backend(o->def)->refresh(o->def) == 0) {
        state_clear_vols(&c->conn, o->def->name);
        r = state_save_live(&c->conn, o->def);
    }
    if (r < 0 && o->active) {
        /* libvirt stops a pool whose refresh fails */
        state_remove_live(&c->conn, o->def->name);
    }
    return finish(o, r, "refreshed", "refresh");
}

static int cmd_autostart(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, true);
    bool off = opt_bool(c, "disable");
    int r = -1;

    if (!o)
        return 1;
    if (!o->cfg)
        pool_set_error("internal error: pool has no config file");
    else
        r = state_set_autostart(&c->conn, o->def->name, !off);
    if (r == 0)
        printf("Pool %s %s as autostarted\n", o->def->name, off ? "unmarked" : "marked");
    else {
        pool_err("failed to %s pool %s as autostarted", off ? "unmark" : "mark",
                 o->def->name);
        pool_report();
    }
    pool_obj_free(o);
    return r ? 1 : 0;
}

/* Print the live sizes or "Capacity: ..." lines of pool-info. */
static void info_sizes(const struct pool_def *d, bool bytes)
{
    const char *names[] = { "Capacity:", "Allocation:", "Available:" };
    uint64_t v[] = { d->capacity, d->allocation, d->available };

    for (int i = 0; i < 3; i++) {
        if (bytes) {
            printf("%-15s %" PRIu64 "\n", names[i], v[i]);
        } else {
            char *s = pretty_size(v[i]);
            printf("%-15s %s\n", names[i], s);
            free(s);
        }
    }
}

static int cmd_info(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, false);

    if (!o)
        return 1;
    printf("%-15s %s\n", "Name:", o->def->name);
    printf("%-15s %s\n", "UUID:", o->def->uuid);
    printf("%-15s %s\n", "State:", o->active ? "running" : "inactive");
    printf("%-15s %s\n", "Persistent:", o->cfg ? "yes" : "no");
    printf("%-15s %s\n", "Autostart:", o->autostart ? "yes" : "no");
    if (o->active)
        info_sizes(o->def, opt_bool(c, "bytes"));
    pool_obj_free(o);
    return 0;
}

static int cmd_dumpxml(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, false);
    char *x;

    if (!o)
        return 1;
    x = pool_def_format(o->def, true);
    fputs(x, stdout);
    free(x);
    pool_obj_free(o);
    return 0;
}

static int cmd_name(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, false);

    if (!o)
        return 1;
    printf("%s\n", o->def->name);
    pool_obj_free(o);
    return 0;
}

static int cmd_uuid(struct cmd_ctx *c)
{
    struct pool_obj *o = get_pool(c, false);

    if (!o)
        return 1;
    printf("%s\n", o->def->uuid);
    pool_obj_free(o);
    return 0;
}

/* Does o pass pool-list's filters? */
static bool listed(struct cmd_ctx *c, const struct pool_obj *o)
{
    bool all = opt_bool(c, "all"), ina = opt_bool(c, "inactive");
    const char *type = opt_str(c, "type");

    if (!all && !ina && !o->active)
        return false;
    if (ina && !all && o->active)
        return false;
    if (opt_bool(c, "persistent") != opt_bool(c, "transient") &&
        opt_bool(c, "persistent") != (o->cfg != NULL))
        return false;
    if (opt_bool(c, "autostart") != opt_bool(c, "no-autostart") &&
        opt_bool(c, "autostart") != o->autostart)
        return false;
    if (type) {
        char *t = xstrdup(type), *save = NULL;
        bool hit = false;
        for (char *p = strtok_r(t, ",", &save); p; p = strtok_r(NULL, ",", &save))
            hit |= !strcmp(p, o->def->type);
        free(t);
        return hit;
    }
    return true;
}

/* One row of pool-list --details. */
static void details_row(struct table *t, const struct pool_obj *o)
{
    char *s[3] = { NULL, NULL, NULL };
    const char *row[7];

    if (o->active) {
        s[0] = pretty_size(o->def->capacity);
        s[1] = pretty_size(o->def->allocation);
        s[2] = pretty_size(o->def->available);
    }
    row[0] = o->def->name;
    row[1] = o->active ? "running" : "inactive";
    row[2] = o->autostart ? "yes" : "no";
    row[3] = o->cfg ? "yes" : "no";
    for (int i = 0; i < 3; i++)
        row[4 + i] = s[i] ? s[i] : "-";
    table_add(t, row);
    for (int i = 0; i < 3; i++)
        free(s[i]);
}

static int cmd_list(struct cmd_ctx *c)
{
    static const char *hdr[] = { "Name", "State", "Autostart", "Persistent", "Capacity",
                                 "Allocation", "Available" };
    bool det = opt_bool(c, "details"), names = opt_bool(c, "name"), uuids = opt_bool(c, "uuid");
    struct pool_obj **list;
    struct table t;
    size_t n;

    if (ctx_connect(c, false) < 0)
        return 1;
    list = pools_load(&c->conn, &n);
    table_init(&t, hdr, det ? 7 : 3);
    for (size_t i = 0; i < n; i++) {
        const struct pool_obj *o = list[i];
        if (!listed(c, o))
            continue;
        if (uuids && names)
            printf("%-36s %-20s\n", o->def->uuid, o->def->name);
        else if (uuids)
            printf("%s\n", o->def->uuid);
        else if (names)
            printf("%-20s\n", o->def->name);
        else if (det)
            details_row(&t, o);
        else
            table_add(&t, (const char *[]){ o->def->name, o->active ? "active" : "inactive",
                                            o->autostart ? "yes" : "no" });
    }
    if (!uuids && !names)
        table_print(&t);
    else
        free(t.cells);
    pools_free(list, n);
    return 0;
}

/* "vdisk-pool autostart": start every autostart pool not running. */
static int cmd_autostart_all(struct cmd_ctx *c)
{
    struct pool_obj **list;
    size_t n;
    int rc = 0;

    if (ctx_connect(c, true) < 0)
        return 1;
    list = pools_load(&c->conn, &n);
    for (size_t i = 0; i < n; i++) {
        if (!list[i]->autostart || list[i]->active)
            continue;
        if (start_pool(&c->conn, list[i]) == 0) {
            printf("Pool %s started\n", list[i]->def->name);
        } else {
            pool_err("Failed to autostart storage pool '%s'", list[i]->def->name);
            pool_report();
            rc = 1;
        }
    }
    pools_free(list, n);
    return rc;
}

/* One <enum> of pool-capabilities. */
static void print_enum(const char *name, const char *const *vals)
{
    printf("      <enum name='%s'>\n", name);
    for (int i = 0; vals[i]; i++)
        printf("        <value>%s</value>\n", vals[i]);
    printf("      </enum>\n");
}

/* One <pool> of pool-capabilities, from its backend's table entry. */
static void print_pool_caps(const struct pool_backend *b)
{
    printf("  <pool type='%s' supported='yes'>\n", b->type);
    if (b->src_formats) {
        printf("    <poolOptions>\n      <defaultFormat type='%s'/>\n",
               b->src_default_format);
        print_enum("sourceFormatType", b->src_formats);
        printf("    </poolOptions>\n");
    }
    if (b->vol_formats) {
        printf("    <volOptions>\n      <defaultFormat type='%s'/>\n",
               b->vol_default_format);
        print_enum("targetFormatType", b->vol_formats);
        printf("    </volOptions>\n");
    }
    printf("  </pool>\n");
}

static int cmd_capabilities(struct cmd_ctx *c)
{
    static const char *const types[] = { "dir", "fs", "netfs", "logical", "disk", "iscsi",
                                         "iscsi-direct", "scsi", "mpath", "rbd",
                                         "sheepdog", "gluster", "zfs", "vstorage", NULL };

    printf("<storagepoolCapabilities>\n");
    for (int i = 0; types[i]; i++) {
        const struct pool_backend *b = NULL;
        for (const struct pool_backend *p = pool_backends; p->type && !b; p++)
            if (!strcmp(p->type, types[i]))
                b = p;
        if (b)
            print_pool_caps(b);
        else
            printf("  <pool type='%s' supported='no'>\n  </pool>\n", types[i]);
    }
    printf("</storagepoolCapabilities>\n");
    (void)c;
    return 0;
}

/* find-storage-pool-sources(-as): logical pools list the volume groups
 * (libvirt's discovery through pvs); no other type here discovers. */
static int cmd_find_sources(struct cmd_ctx *c)
{
    const char *type = opt_str(c, "type");
    char *x;

    if (ctx_connect(c, false) < 0)
        return 1;
    if (!strcmp(type, "logical")) {
        if (!(x = lvm_find_sources())) {
            pool_err("Failed to find any %s pool sources", type);
            pool_report();
            return 1;
        }
        fputs(x, stdout);
        free(x);
        return 0;
    }
    pool_err("Failed to find any %s pool sources", type);
    pool_err("this function is not supported by the connection driver: pool type '%s' "
             "does not support source discovery", type);
    return 1;
}

#define POOL_ARG { "pool", OPT_STRING, true, true, "pool name or uuid" }
#define BUILD_OPTS { "build", OPT_BOOL, false, false, "build the pool as normal" }, \
    { "overwrite", OPT_BOOL, false, false, "build the pool without checking" }, \
    { "no-overwrite", OPT_BOOL, false, false, "build the pool only if it is empty" }
#define AS_OPTS { "name", OPT_STRING, true, true, "name of the pool" }, \
    { "type", OPT_STRING, true, true, "type of the pool" }, \
    { "print-xml", OPT_BOOL, false, false, "print XML document, but don't define/create" }, \
    { "source-host", OPT_STRING, false, true, "source-host for underlying storage" }, \
    { "source-path", OPT_STRING, false, true, "source path for underlying storage" }, \
    { "source-dev", OPT_STRING, false, true, "source device for underlying storage" }, \
    { "source-name", OPT_STRING, false, true, "source name for underlying storage" }, \
    { "target", OPT_STRING, false, true, "target for underlying storage" }, \
    { "source-format", OPT_STRING, false, false, "format for underlying storage" }, \
    { "auth-type", OPT_STRING, false, false, "auth type to be used for underlying storage" }, \
    { "auth-username", OPT_STRING, false, false, "auth username to be used for underlying storage" }, \
    { "secret-usage", OPT_STRING, false, false, "auth secret usage to be used for underlying storage" }, \
    { "secret-uuid", OPT_STRING, false, false, "auth secret UUID to be used for underlying storage" }, \
    { "adapter-name", OPT_STRING, false, false, "adapter name to be used for underlying storage" }, \
    { "adapter-wwnn", OPT_STRING, false, false, "adapter wwnn to be used for underlying storage" }, \
    { "adapter-wwpn", OPT_STRING, false, false, "adapter wwpn to be used for underlying storage" }, \
    { "adapter-parent", OPT_STRING, false, false, "adapter parent scsi_hostN to be used for underlying vHBA storage" }, \
    { "adapter-parent-wwnn", OPT_STRING, false, false, "adapter parent scsi_hostN wwnn to be used for underlying vHBA storage" }, \
    { "adapter-parent-wwpn", OPT_STRING, false, false, "adapter parent scsi_hostN wwpn to be used for underlying vHBA storage" }, \
    { "adapter-parent-fabric-wwn", OPT_STRING, false, false, "adapter parent scsi_hostN fabric_wwn to be used for underlying vHBA storage" }, \
    { "source-protocol-ver", OPT_STRING, false, false, "nfsvers value for NFS pool mount option" }, \
    { "source-initiator", OPT_STRING, false, false, "initiator iqn for underlying storage" }

const struct cmd_def pool_cmds[] = {
    { "pool-autostart", "autostart a pool",
      { POOL_ARG, { "disable", OPT_BOOL, false, false, "disable autostarting" } },
      cmd_autostart },
    { "pool-build", "build a pool",
      { POOL_ARG, { "overwrite", OPT_BOOL, false, false, "overwrite any existing data" },
        { "no-overwrite", OPT_BOOL, false, false, "do not overwrite any existing data" } },
      cmd_build },
    { "pool-capabilities", "storage pool capabilities", { { 0 } }, cmd_capabilities },
    { "pool-create", "create a pool from an XML file",
      { { "file", OPT_STRING, true, true, "file containing an XML pool description" },
        BUILD_OPTS }, cmd_create },
    { "pool-create-as", "create a pool from a set of args", { AS_OPTS, BUILD_OPTS },
      cmd_create_as },
    { "pool-define", "define an inactive persistent storage pool or modify an existing "
      "persistent one from an XML file",
      { { "file", OPT_STRING, true, true, "file containing an XML pool description" } },
      cmd_define },
    { "pool-define-as", "define a pool from a set of args", { AS_OPTS }, cmd_define_as },
    { "pool-delete", "delete a pool", { POOL_ARG }, cmd_delete },
    { "pool-destroy", "destroy (stop) a pool", { POOL_ARG }, cmd_destroy },
    { "pool-dumpxml", "pool information in XML",
      { POOL_ARG, { "inactive", OPT_BOOL, false, false, "show inactive defined XML" } },
      cmd_dumpxml },
    { "pool-info", "storage pool information",
      { POOL_ARG, { "bytes", OPT_BOOL, false, false, "Return pool info in bytes" } },
      cmd_info },
    { "pool-list", "list pools",
      { { "inactive", OPT_BOOL, false, false, "list inactive pools" },
        { "all", OPT_BOOL, false, false, "list inactive & active pools" },
        { "transient", OPT_BOOL, false, false, "list transient pools" },
        { "persistent", OPT_BOOL, false, false, "list persistent pools" },
        { "autostart", OPT_BOOL, false, false, "list pools with autostart enabled" },
        { "no-autostart", OPT_BOOL, false, false, "list pools with autostart disabled" },
        { "type", OPT_STRING, false, false, "only list pool of specified type(s)" },
        { "details", OPT_BOOL, false, false, "display extended details for pools" },
        { "uuid", OPT_BOOL, false, false, "list UUID of active pools only" },
        { "name", OPT_BOOL, false, false, "list name of active pools only" } },
      cmd_list },
    { "pool-name", "convert a pool UUID to pool name", { POOL_ARG }, cmd_name },
    { "pool-refresh", "refresh a pool", { POOL_ARG }, cmd_refresh },
    { "pool-start", "start a (previously defined) inactive pool",
      { POOL_ARG, BUILD_OPTS }, cmd_start },
    { "pool-undefine", "undefine an inactive pool", { POOL_ARG }, cmd_undefine },
    { "pool-uuid", "convert a pool name to pool UUID", { POOL_ARG }, cmd_uuid },
    { "find-storage-pool-sources", "discover potential storage pool sources",
      { { "type", OPT_STRING, true, true, "type of storage pool sources to discover" },
        { "srcSpec", OPT_STRING, false, true, "optional file of source xml to query for pools" } },
      cmd_find_sources },
    { "find-storage-pool-sources-as", "find potential storage pool sources",
      { { "type", OPT_STRING, true, true, "type of storage pool sources to find" },
        { "host", OPT_STRING, false, false, "optional host to query" },
        { "port", OPT_STRING, false, false, "optional port to query" },
        { "initiator", OPT_STRING, false, false, "optional initiator IQN to use for query" } },
      cmd_find_sources },
    { "autostart", "start every pool marked autostart (at boot)", { { 0 } },
      cmd_autostart_all },
    { NULL, NULL, { { 0 } }, NULL },
};
