/* SPDX-License-Identifier: BSD-3-Clause */
/* blkdebug: a fault-injection filter in the spirit of QEMU's.  Rules come
 * from a config file ([inject-error] / [set-state] sections) or options
 * (inject-error.N.*, set-state.N.*).  An event (vd_event, or "none" at
 * open) arms the inject-error rules for it; an armed rule fails matching
 * requests with its errno.  vdisk extensions: inject-error.N.nth (fail
 * only from the Nth matching request on) and iotype=all. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/checked.h"
#include "vdisk/driver.h"

#define BD_MAX_RULES 1024          /* cap on rules from options or a file */
#define BD_MAX_CONFIG (1u << 20)   /* cap on the config file size */
#define BD_EVENT_LEN 40

enum bd_iotype { IO_READ, IO_WRITE, IO_WRITE_ZEROES, IO_DISCARD, IO_FLUSH,
                 IO_BLOCK_STATUS, IO__MAX };
#define IO_DEFAULT_MASK ((1u << IO_READ) | (1u << IO_WRITE) | \
                         (1u << IO_WRITE_ZEROES) | (1u << IO_DISCARD) | \
                         (1u << IO_FLUSH))

enum bd_action { ACT_INJECT, ACT_SET_STATE };

struct bd_rule {
    enum bd_action action;
    char event[BD_EVENT_LEN];
    int64_t state;                 /* required state, 0: any */
    int64_t new_state;             /* set-state */
    int err;                       /* inject-error: positive errno */
    int64_t offset;                /* byte the request must cover, -1: any */
    uint32_t iotype_mask;
    uint64_t nth, count;           /* fail from the nth match (1-based) */
    bool once, active, removed;
};

struct bd_state {
    pthread_mutex_t lock;
    struct bd_rule *rules;
    size_t nrules;
    int64_t state;                 /* starts at 1, as QEMU */
};

/* Event names of QEMU 7.2 (BlkdebugEvent), then vdisk's additions. */
static const char *const bd_events[] = {
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table",
    "l1_grow_activate_table", "l2_load", "l2_update", "l2_update_compressed",
    "l2_alloc_cow_read", "l2_alloc_write", "read_aio", "read_backing_aio",
    "read_compressed", "write_aio", "write_compressed", "vmstate_load",
    "vmstate_save", "cow_read", "cow_write", "reftable_load", "reftable_grow",
    "reftable_update", "refblock_load", "refblock_update", "refblock_update_part",
    "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
    "refblock_alloc_write_blocks", "refblock_alloc_write_table",
    "refblock_alloc_switch_table", "cluster_alloc", "cluster_alloc_bytes",
    "cluster_free", "flush_to_os", "flush_to_disk", "pwritev_rmw_head",
    "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
    "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare",
    "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write",
    "cluster_alloc_space", "none",
    /* vdisk's own points, where QEMU has no event name. */
    "header_update", "vmdk_grain_write", "vmdk_gt_update", "vmdk_rgt_update",
    "vmdk_desc_update",
    /* vhdx (lib/format/vhdx): the driver's steps and the log's. */
    "vhdx_session_start", "vhdx_session_end", "vhdx_header_write",
    "vhdx_block_alloc", "vhdx_bat_update", "vhdx_log_replay",
    "vhdx_log_flush_data", "vhdx_log_write_entry", "vhdx_log_flush_entry",
    "vhdx_log_write_update", "vhdx_log_flush_update",
    /* qcow2 amend (lib/format/qcow2/amend*.c). */
    "amend_upgrade_header", "amend_mark_clean", "amend_lazy_header",
    "amend_header", "amend_zero_alloc", "amend_zero_write", "amend_inactive_l2_write",
    "amend_downgrade_header", "amend_refblock_alloc", "amend_reftable_alloc",
    "amend_refblock_write", "amend_reftable_write", "amend_refcount_header",
    "amend_refcount_free_old", "amend_keyslots", "crypt_header", NULL,
};

static const char *const bd_iotypes[] = {
    "read", "write", "write-zeroes", "discard", "flush", "block-status", NULL,
};

/* ---- rule parsing ---- */

/* Index of s in a NULL-terminated table, or -1. */
static int table_index(const char *const *t, const char *s)
{
    for (int i = 0; t[i]; i++)
        if (!strcmp(t[i], s))
            return i;
    return -1;
}

/* Parse a signed number option (state, new_state, sector). */
static int get_i64(const vd_opts *o, const char *key, int64_t def, int64_t *out)
{
    const char *v = vd_opts_get(o, key);
    char *end;
    long long x;

    *out = def;
    if (!v)
        return 0;
    errno = 0;
    x = strtoll(v, &end, 0);
    if (errno || end == v || *end)
        return vd_error(EINVAL, "Parameter '%s' expects a number", key);
    *out = x;
    return 0;
}

/* Fields common to both rule kinds: event (required, a known name) and
 * state. */
static int parse_event(const vd_opts *o, struct bd_rule *r)
{
    const char *ev = vd_opts_get(o, "event");

    if (!ev)
        return vd_error(EINVAL, "Missing event name for rule");
    if (table_index(bd_events, ev) < 0)
        return vd_error(EINVAL, "invalid parameter value: %s", ev);
    snprintf(r->event, sizeof(r->event), "%s", ev);
    return get_i64(o, "state", 0, &r->state);
}

/* iotype: one type, "all" (vdisk), or absent (QEMU's default set). */
static int parse_iotype(const char *v, uint32_t *mask)
{
    int i;

    if (!v) {
        *mask = IO_DEFAULT_MASK;
        return 0;
    }
    if (!strcmp(v, "all")) {
        *mask = (1u << IO__MAX) - 1;
        return 0;
    }
    if ((i = table_index(bd_iotypes, v)) < 0)
        return vd_error(EINVAL, "invalid parameter value: %s", v);
    *mask = 1u << i;
    return 0;
}

/* errno: a positive number, default EIO. */
static int parse_errno(const vd_opts *o, int *out)
{
    int64_t e;
    int r = get_i64(o, "errno", EIO, &e);

    if (r < 0)
        return r;
    if (e <= 0 || e > 4095)
        return vd_error(EINVAL, "Invalid errno %lld in blkdebug rule", (long long)e);
    *out = (int)e;
    return 0;
}

/* sector: the 512-byte sector a request must overlap (-1: any). */
static int parse_sector(const vd_opts *o, int64_t *offset)
{
    int64_t sector;
    int r = get_i64(o, "sector", -1, &sector);

    if (r < 0)
        return r;
    if (sector < -1 || (sector >= 0 && MUL_OVERFLOW(sector, (int64_t)512, offset)))
        return vd_error(EINVAL, "Invalid sector %lld in blkdebug rule", (long long)sector);
    if (sector == -1)
        *offset = -1;
    return 0;
}

static const struct vd_opt_desc inject_fields[] = {
    { "event", VD_OPT_STRING, "event to arm the rule on", NULL },
    { "state", VD_OPT_NUMBER, "state the rule applies in (0: any)", "0" },
    { "errno", VD_OPT_NUMBER, "error to return", "5" },
    { "sector", VD_OPT_NUMBER, "sector the request must touch", "-1" },
    { "once", VD_OPT_BOOL, "fail only one request", "off" },
    { "immediately", VD_OPT_BOOL, "fail at submission (same as not)", "off" },
    { "iotype", VD_OPT_STRING, "request type (read, write, write-zeroes, "
      "discard, flush, block-status, all)", NULL },
    { "nth", VD_OPT_NUMBER, "fail from the nth matching request on", "1" },
    { NULL, 0, NULL, NULL },
};

static const struct vd_opt_desc set_state_fields[] = {
    { "event", VD_OPT_STRING, "event to act on", NULL },
    { "state", VD_OPT_NUMBER, "state the rule applies in (0: any)", "0" },
    { "new_state", VD_OPT_NUMBER, "state to switch to", NULL },
    { NULL, 0, NULL, NULL },
};

/* Fill an inject-error rule from its fields. */
static int parse_inject(const vd_opts *o, struct bd_rule *r)
{
    bool immediately;
    int ret;

    r->action = ACT_INJECT;
    if ((ret = vd_opts_validate(o, inject_fields, "blkdebug")) < 0 ||
        (ret = parse_event(o, r)) < 0 || (ret = parse_errno(o, &r->err)) < 0 ||
        (ret = parse_sector(o, &r->offset)) < 0 ||
        (ret = vd_opts_get_bool(o, "once", false, &r->once)) < 0 ||
        (ret = vd_opts_get_bool(o, "immediately", false, &immediately)) < 0 ||
        (ret = parse_iotype(vd_opts_get(o, "iotype"), &r->iotype_mask)) < 0 ||
        (ret = vd_opts_get_u64(o, "nth", 1, &r->nth)) < 0)
        return ret;
    if (r->nth == 0)
        return vd_error(EINVAL, "blkdebug: nth counts from 1");
    return 0;
}

/* Fill a set-state rule from its fields. */
static int parse_set_state(const vd_opts *o, struct bd_rule *r)
{
    int ret;

    r->action = ACT_SET_STATE;
    if ((ret = vd_opts_validate(o, set_state_fields, "blkdebug")) < 0 ||
        (ret = parse_event(o, r)) < 0 ||
        (ret = get_i64(o, "new_state", 0, &r->new_state)) < 0)
        return ret;
    if (!vd_opts_has(o, "new_state"))
        return vd_error(EINVAL, "Parameter 'new_state' is missing");
    return 0;
}

/* Append a rule parsed from fields o to the state. */
static int add_rule(struct bd_state *s, enum bd_action act, const vd_opts *o)
{
    struct bd_rule *nr, r = { 0 };
    int ret = act == ACT_INJECT ? parse_inject(o, &r) : parse_set_state(o, &r);

    if (ret < 0)
        return ret;
    if (s->nrules >= BD_MAX_RULES)
        return vd_error(EINVAL, "blkdebug: too many rules (at most %d)", BD_MAX_RULES);
    nr = realloc(s->rules, (s->nrules + 1) * sizeof(*nr));
    if (!nr)
        return vd_error(ENOMEM, "out of memory");
    s->rules = nr;
    s->rules[s->nrules++] = r;
    return 0;
}

/* ---- the config file ---- */

/* Strip blanks at both ends of s in place; returns the start. */
static char *strip(char *s)
{
    char *e = s + strlen(s);

    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        *--e = '\0';
    return s;
}

/* Parse `key = "value"` (quotes optional) into sec. */
static int config_pair(char *line, vd_opts *sec, const char *path, int lineno)
{
    char *eq = strchr(line, '='), *k, *v;
    size_t vl;

    if (!eq)
        return vd_error(EINVAL, "%s:%d: syntax error", path, lineno);
    *eq = '\0';
    k = strip(line);
    v = strip(eq + 1);
    vl = strlen(v);
    if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
        v[vl - 1] = '\0';
        v++;
    }
    return vd_opts_set(sec, k, v) < 0 ? vd_error(ENOMEM, "out of memory") : 0;
}

/* Finish the current section (if any) as a rule. */
static int config_flush(struct bd_state *s, vd_opts **sec, int act)
{
    int r = 0;

    if (*sec)
        r = add_rule(s, act, *sec);
    vd_opts_free(*sec);
    *sec = NULL;
    return r;
}

/* Start a section named by a "[name]" line. */
static int config_section(struct bd_state *s, char *line, vd_opts **sec, int *act,
                          const char *path, int lineno)
{
    int r = config_flush(s, sec, *act);

    if (r < 0)
        return r;
    if (!strcmp(line, "[inject-error]"))
        *act = ACT_INJECT;
    else if (!strcmp(line, "[set-state]"))
        *act = ACT_SET_STATE;
    else
        return vd_error(EINVAL, "%s:%d: unknown section %s", path, lineno, line);
    *sec = vd_opts_new();
    return *sec ? 0 : vd_error(ENOMEM, "out of memory");
}

/* Parse the text of a config file line by line. */
static int config_parse(struct bd_state *s, char *text, const char *path)
{
    vd_opts *sec = NULL;
    int act = ACT_INJECT, lineno = 0, r = 0;

    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && r >= 0;
         l = strtok_r(NULL, "\n", &save)) {
        char *line = strip(l);
        lineno++;
        if (!*line || *line == '#')
            continue;
        if (*line == '[')
            r = config_section(s, line, &sec, &act, path, lineno);
        else if (!sec)
            r = vd_error(EINVAL, "%s:%d: option outside a section", path, lineno);
        else
            r = config_pair(line, sec, path, lineno);
    }
    if (r >= 0)
        return config_flush(s, &sec, act);
    vd_opts_free(sec);
    return r;
}

/* Read the whole config file (capped) into a string; caller frees. */
static int config_read(const char *path, char **out)
{
    FILE *f = fopen(path, "re");
    char *buf;
    size_t n;

    if (!f)
        return vd_error(errno, "Could not read blkdebug config file: %s", strerror(errno));
    buf = malloc(BD_MAX_CONFIG + 1);
    if (!buf) {
        fclose(f);
        return vd_error(ENOMEM, "out of memory");
    }
    n = fread(buf, 1, BD_MAX_CONFIG + 1, f);
    fclose(f);
    if (n > BD_MAX_CONFIG) {
        free(buf);
        return vd_error(EFBIG, "blkdebug config file '%s' is too large", path);
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/* Load the rules of a config file. */
static int config_load(struct bd_state *s, const char *path)
{
    char *text = NULL;
    int r = config_read(path, &text);

    if (r >= 0)
        r = config_parse(s, text, path);
    free(text);
    return r;
}

/* ---- rules from options ---- */

/* Does o hold a key starting with prefix? */
static bool has_prefix(const vd_opts *o, const char *prefix)
{
    size_t l = strlen(prefix);

    for (size_t i = 0; i < vd_opts_count(o); i++)
        if (!strncmp(vd_opts_key(o, i), prefix, l))
            return true;
    return false;
}

/* Load list options "name.0.*", "name.1.*", ... (consumed from opts). */
static int load_list(struct bd_state *s, vd_opts *opts, const char *name, int act)
{
    char prefix[64];
    int r = 0;

    for (int i = 0; r >= 0 && i <= BD_MAX_RULES; i++) {
        snprintf(prefix, sizeof(prefix), "%s.%d.", name, i);
        if (!has_prefix(opts, prefix))
            break;
        prefix[strlen(prefix) - 1] = '\0';
        vd_opts *sub = vd_opts_extract_prefix(opts, prefix);
        if (!sub)
            return vd_error(ENOMEM, "out of memory");
        r = add_rule(s, act, sub);
        vd_opts_free(sub);
    }
    if (r >= 0 && has_prefix(opts, name))
        return vd_error(EINVAL, "blkdebug: bad '%s' list (indices must be 0, 1, ...)", name);
    return r;
}

/* ---- events and requests ---- */

/* Apply an event: arm its inject rules (disarming those of earlier events,
 * as QEMU) and run its state transitions. */
static void bd_event(vd_node *n, const char *event)
{
    struct bd_state *s = n->state;
    int64_t new_state;
    bool injected = false;

    pthread_mutex_lock(&s->lock);
    new_state = s->state;
    for (size_t i = 0; i < s->nrules; i++) {
        struct bd_rule *r = &s->rules[i];
        if (r->removed || strcmp(r->event, event) || (r->state && r->state != s->state))
            continue;
        if (r->action == ACT_SET_STATE) {
            new_state = r->new_state;
            continue;
        }
        if (!injected) {
            for (size_t j = 0; j < s->nrules; j++)
                s->rules[j].active = false;
            injected = true;
        }
        r->active = true;
    }
    s->state = new_state;
    pthread_mutex_unlock(&s->lock);
}

/* Does an armed rule match this request? */
static bool rule_matches(const struct bd_rule *r, uint64_t off, uint64_t len,
                         enum bd_iotype type)
{
    if (!r->active || r->removed || r->action != ACT_INJECT ||
        !(r->iotype_mask & (1u << type)))
        return false;
    if (r->offset < 0)
        return true;
    return len && (uint64_t)r->offset >= off && (uint64_t)r->offset - off < len;
}

/* 0, or the injected -errno for a request (with its strerror message). */
static int bd_check(vd_node *n, uint64_t off, uint64_t len, enum bd_iotype type)
{
    struct bd_state *s = n->state;
    int err = 0;

    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nrules && !err; i++) {
        struct bd_rule *r = &s->rules[i];
        if (!rule_matches(r, off, len, type))
            continue;
        if (r->count < UINT64_MAX)
            r->count++;
        if (r->count < r->nth)
            continue;
        err = r->err;
        if (r->once)
            r->removed = true;
    }
    pthread_mutex_unlock(&s->lock);
    return err ? vd_error(err, "%s", strerror(err)) : 0;
}

/* ---- open/close ---- */

/* "blkdebug:[CONFIG]:IMAGE" -> config=CONFIG, x-image=IMAGE. */
static int bd_parse_filename(const char *name, vd_opts *opts)
{
    const char *p, *c;

    if (strncmp(name, "blkdebug:", 9))
        return vd_error(EINVAL, "File name string must start with 'blkdebug:'");
    p = name + 9;
    c = strchr(p, ':');
    if (!c)
        return vd_error(EINVAL, "blkdebug requires both config file and image path");
    if (c != p) {
        char *cfg = strndup(p, (size_t)(c - p));
        int r = cfg ? vd_opts_set(opts, "config", cfg) : -ENOMEM;
        free(cfg);
        if (r < 0)
            return vd_error(ENOMEM, "out of memory");
    }
    return vd_opts_set(opts, "x-image", c + 1) < 0 ? vd_error(ENOMEM, "out of memory") : 0;
}

/* The protocol driver for a plain child name: its "proto:" prefix, a
 * block device, or a file. */
static const char *child_driver(const char *name)
{
    const char *colon = strchr(name, ':'), *slash = strchr(name, '/');
    struct stat st;

    if (colon && (!slash || colon < slash)) {
        char proto[64];
        size_t l = (size_t)(colon - name);
        if (l < sizeof(proto)) {
            memcpy(proto, name, l);
            proto[l] = '\0';
            const struct vd_driver *d = vd_driver_find(proto);
            if (d && d->kind != VD_DRV_FORMAT)
                return d->name;
        }
    }
    if (stat(name, &st) == 0 && S_ISBLK(st.st_mode))
        return "host_device";
    return "file";
}

/* Open the image child: image.* options, or image / x-image as a name.
 * Like QEMU, a plain name opens a protocol node (no format probing). */
static int open_image(vd_node *n, vd_opts *opts, int flags)
{
    vd_opts *io = vd_opts_extract_prefix(opts, "image");
    const char *name = vd_opts_get(opts, "x-image");
    const char *drv;
    int r;

    if (!io)
        return vd_error(ENOMEM, "out of memory");
    if (!name)
        name = vd_opts_get(opts, "image");
    if (name && !vd_opts_has(io, "filename") && vd_opts_set(io, "filename", name) < 0) {
        vd_opts_free(io);
        return vd_error(ENOMEM, "out of memory");
    }
    if (!vd_opts_get(io, "filename") && !vd_opts_get(io, "driver")) {
        vd_opts_free(io);
        return vd_error(EINVAL, "A block device must be specified for \"image\"");
    }
    drv = vd_opts_get(io, "driver");
    if (!drv)
        drv = child_driver(vd_opts_get(io, "filename"));
    r = vd_open_child(&n->file, n, NULL, drv, io, flags);
    vd_opts_del(opts, "x-image");
    vd_opts_del(opts, "image");
    return r;
}

/* Read the align and max-transfer limits. */
static int parse_limits(vd_node *n, vd_opts *opts)
{
    uint64_t align, maxt;
    int r;

    if ((r = vd_opts_get_size(opts, "align", 1, &align)) < 0 ||
        (r = vd_opts_get_size(opts, "max-transfer", 0, &maxt)) < 0)
        return r;
    if (!is_power_of_2(align) || align > (1u << 30))
        return vd_error(EINVAL, "Cannot meet constraints with align %llu",
                        (unsigned long long)align);
    if (maxt && !is_aligned(maxt, align))
        return vd_error(EINVAL, "Cannot meet constraints with max-transfer %llu",
                        (unsigned long long)maxt);
    n->request_alignment = (uint32_t)align;
    n->max_transfer = maxt;
    return 0;
}

/* Load the rules, open the image, then fire the "none" event. */
static int bd_open(vd_node *n, vd_opts *opts, int flags)
{
    struct bd_state *s = n->state;
    const char *cfg = vd_opts_get(opts, "config");
    int r;

    pthread_mutex_init(&s->lock, NULL);
    s->state = 1;
    if ((cfg && (r = config_load(s, cfg)) < 0) ||
        (r = load_list(s, opts, "inject-error", ACT_INJECT)) < 0 ||
        (r = load_list(s, opts, "set-state", ACT_SET_STATE)) < 0 ||
        (r = parse_limits(n, opts)) < 0 || (r = open_image(n, opts, flags)) < 0)
        return r;
    bd_event(n, "none");
    return 0;
}

/* Free the rules (the core closes the image child). */
static void bd_close(vd_node *n)
{
    struct bd_state *s = n->state;

    free(s->rules);
    s->rules = NULL;
    pthread_mutex_destroy(&s->lock);
}

/* ---- pass-through I/O ---- */

/* Read unless a rule fails it. */
static int bd_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    int r = bd_check(n, off, len, IO_READ);
    return r < 0 ? r : vd_pread(n->file, off, len, buf, flags);
}

/* Write unless a rule fails it. */
static int bd_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    int r = bd_check(n, off, len, IO_WRITE);
    return r < 0 ? r : vd_pwrite(n->file, off, len, buf, flags);
}

/* Zero unless a rule fails it. */
static int bd_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    int r = bd_check(n, off, len, IO_WRITE_ZEROES);
    return r < 0 ? r : vd_pwrite_zeroes(n->file, off, len, flags);
}

/* Discard unless a rule fails it. */
static int bd_discard(vd_node *n, uint64_t off, uint64_t len)
{
    int r = bd_check(n, off, len, IO_DISCARD);
    return r < 0 ? r : vd_discard(n->file, off, len);
}

/* Flush (the core flushes the image after us) unless a rule fails it. */
static int bd_flush(vd_node *n)
{
    return bd_check(n, 0, 0, IO_FLUSH);
}

/* Status of the image at the same offset, unless a rule fails it. */
static int bd_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                           uint64_t *map, vd_node **file)
{
    int r = bd_check(n, off, len, IO_BLOCK_STATUS);

    if (r < 0)
        return r;
    *pnum = len;
    *map = off;
    *file = n->file;
    return VD_BS_RECURSE | VD_BS_OFFSET_VALID;
}

/* The image's length. */
static int64_t bd_getlength(vd_node *n)
{
    return vd_getlength(n->file);
}

/* Resize the image. */
static int bd_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    return vd_truncate(n->file, size, exact, prealloc);
}

/* As the image. */
static bool bd_has_zero_init(vd_node *n)
{
    const struct vd_driver *d = n->file->drv;
    return d->has_zero_init && d->has_zero_init(n->file);
}

static const struct vd_opt_desc bd_open_opts[] = {
    { "config", VD_OPT_STRING, "Path to the configuration file", NULL },
    { "x-image", VD_OPT_STRING, "[internal use only, will be removed]", NULL },
    { "image", VD_OPT_STRING, "The image to inject errors into", NULL },
    { "align", VD_OPT_SIZE, "Required alignment in bytes", "1" },
    { "max-transfer", VD_OPT_SIZE, "Maximum transfer size in bytes", "0" },
    { NULL, 0, NULL, NULL },
};

/* The host size of what lies below a filter is not reported (QEMU prints
 * "unavailable"). */
static int64_t blkdebug_allocated_size(vd_node *n)
{
    return -ENOTSUP;
}

static const struct vd_driver blkdebug_driver = {
    .get_allocated_size = blkdebug_allocated_size,
    .struct_size = sizeof(struct vd_driver),
    .name = "blkdebug",
    .kind = VD_DRV_FILTER,
    .protocol = "blkdebug",
    .state_size = sizeof(struct bd_state),
    .open_opts = bd_open_opts,
    .parse_filename = bd_parse_filename,
    .open = bd_open,
    .close = bd_close,
    .pread = bd_pread,
    .pwrite = bd_pwrite,
    .pwrite_zeroes = bd_pwrite_zeroes,
    .discard = bd_discard,
    .flush = bd_flush,
    .block_status = bd_block_status,
    .getlength = bd_getlength,
    .truncate = bd_truncate,
    .event = bd_event,
    .has_zero_init = bd_has_zero_init,
};
VD_DRIVER_REGISTER(blkdebug_driver)
