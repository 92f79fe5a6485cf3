/* SPDX-License-Identifier: BSD-3-Clause */
/* QMP dispatch for the agent: request envelope checks, command lookup,
 * argument validation driven by each command's argument table, and the
 * response as qemu-ga 7.2 writes it.
 *
 * Validation visits the schema members in order and stops at the first
 * problem, then reports the first member nobody asked for, with QEMU's
 * messages ("Parameter 'x' is missing", "Invalid parameter type for 'x',
 * expected: integer", "Parameter 'x' is unexpected", ...).  Members of
 * JSON objects are visited, and written, in the order of QEMU's QDict
 * hash table, which is what makes qemu-ga's output order. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "ga.h"
#include "util/buf.h"

#define QDICT_BUCKETS 512

static bool blocked[64];
static bool frozen_mode;
static bool (*handler_filter)(const char *name);

/* See dispatch.h. */
void ga_set_handler_filter(bool (*allow)(const char *name))
{
    handler_filter = allow;
}

/* See dispatch.h. */
void ga_error(struct ga_err *e, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    if (e->desc)
        return;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    e->cls = "GenericError";
    e->desc = s ? s : strdup("out of memory");
}

/* See dispatch.h. */
void ga_error_class(struct ga_err *e, const char *cls, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    if (e->desc)
        return;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    e->cls = cls;
    e->desc = s ? s : strdup("out of memory");
}

/* ---- QDict member order ---- */

/* The bucket QEMU's QDict puts a key in (the TDB hash of the key). */
static unsigned qdict_bucket(const char *key)
{
    const unsigned char *k = (const unsigned char *)key;
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);

    for (unsigned i = 0; k[i]; i++)
        v += (uint32_t)k[i] << (i * 5 % 24);
    return (1103515243u * v + 12345u) % QDICT_BUCKETS;
}

/* Member indexes of obj in QDict iteration order: bucket by bucket, the
 * latest inserted first within a bucket.  Caller frees. */
static size_t *qdict_order(const vd_json *obj, size_t *n)
{
    size_t cnt = vd_json_count(obj), *idx = calloc(cnt ? cnt : 1, sizeof(*idx));
    unsigned *bk = calloc(cnt ? cnt : 1, sizeof(*bk));

    if (!idx || !bk) {
        free(idx);
        free(bk);
        *n = 0;
        return NULL;
    }
    for (size_t i = 0; i < cnt; i++)
        bk[i] = qdict_bucket(vd_json_key_at(obj, i));
    /* insertion sort: bucket ascending, then index descending */
    for (size_t i = 0; i < cnt; i++) {
        size_t j = i, cur = cnt - 1 - i;
        while (j > 0 && bk[idx[j - 1]] > bk[cur]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = cur;
    }
    free(bk);
    *n = cnt;
    return idx;
}

static void put_json(struct vd_buf *b, const vd_json *j);

/* An object in QDict order. */
static void put_object(struct vd_buf *b, const vd_json *j)
{
    size_t n, *ord = qdict_order(j, &n);

    vd_buf_addc(b, '{');
    for (size_t i = 0; i < n; i++) {
        char *k;
        vd_json *key;

        if (i)
            vd_buf_adds(b, ", ");
        key = vd_json_new_string(vd_json_key_at(j, ord[i]));
        k = key ? vd_json_to_compact(key) : NULL;
        vd_buf_adds(b, k ? k : "\"\"");
        free(k);
        vd_json_free(key);
        vd_buf_adds(b, ": ");
        put_json(b, vd_json_at(j, ord[i]));
    }
    vd_buf_addc(b, '}');
    free(ord);
}

/* Any value, compact, as QEMU's JSON writer formats it. */
static void put_json(struct vd_buf *b, const vd_json *j)
{
    char *s;

    switch (vd_json_type(j)) {
    case VD_JSON_OBJECT:
        put_object(b, j);
        return;
    case VD_JSON_ARRAY:
        vd_buf_addc(b, '[');
        for (size_t i = 0; i < vd_json_count(j); i++) {
            if (i)
                vd_buf_adds(b, ", ");
            put_json(b, vd_json_at(j, i));
        }
        vd_buf_addc(b, ']');
        return;
    default:
        s = vd_json_to_compact(j);
        vd_buf_adds(b, s ? s : "null");
        free(s);
    }
}

/* See dispatch.h. */
char *ga_to_json(const vd_json *j)
{
    struct vd_buf b = { 0 };

    put_json(&b, j);
    return vd_buf_steal(&b);
}

/* ---- argument validation ---- */

/* Validation state: the member path for messages ("a[0].b"). */
struct visit {
    struct ga_err *e;
};

static bool check_value(struct visit *v, const char *name, const vd_json *val,
                        enum ga_type t);

/* An int64 value (INT), anything else is the wrong type. */
static bool is_int64(const vd_json *j)
{
    return vd_json_type(j) == VD_JSON_INT;
}

static bool type_error(struct visit *v, const char *name, const char *expected)
{
    ga_error(v->e, "Invalid parameter type for '%s', expected: %s", name, expected);
    return false;
}

/* "name[i]" in a new string. */
static char *elem_name(const char *name, size_t i)
{
    char *s = NULL;

    if (asprintf(&s, "%s[%zu]", name, i) < 0)
        return NULL;
    return s;
}

/* Members of a nested struct (name is its path). */
static bool check_struct(struct visit *v, const char *name, const vd_json *obj,
                         const struct ga_arg *members);

static const struct ga_arg vcpu_members[] = {
    { "logical-id", GA_T_INT, false },
    { "online", GA_T_BOOL, false },
    { "can-offline", GA_T_BOOL, true },
    { NULL, 0, false },
};

static const struct ga_arg memblk_members[] = {
    { "phys-index", GA_T_UINT64, false },
    { "online", GA_T_BOOL, false },
    { "can-offline", GA_T_BOOL, true },
    { NULL, 0, false },
};

/* A list whose elements are strings or structs. */
static bool check_list(struct visit *v, const char *name, const vd_json *val,
                       enum ga_type t)
{
    if (vd_json_type(val) != VD_JSON_ARRAY)
        return type_error(v, name, "array");
    for (size_t i = 0; i < vd_json_count(val); i++) {
        char *en = elem_name(name, i);
        const vd_json *el = vd_json_at(val, i);
        bool ok;

        if (!en) {
            ga_error(v->e, "out of memory");
            return false;
        }
        if (t == GA_T_STRLIST)
            ok = vd_json_type(el) == VD_JSON_STRING || type_error(v, en, "string");
        else if (vd_json_type(el) != VD_JSON_OBJECT)
            ok = type_error(v, en, "object");
        else
            ok = check_struct(v, en, el, t == GA_T_VCPULIST ? vcpu_members : memblk_members);
        free(en);
        if (!ok)
            return false;
    }
    return true;
}

/* One member's value against its type. */
static bool check_value(struct visit *v, const char *name, const vd_json *val,
                        enum ga_type t)
{
    enum vd_json_type jt = vd_json_type(val);

    switch (t) {
    case GA_T_INT:
        return is_int64(val) || type_error(v, name, "integer");
    case GA_T_UINT64:
        return jt == VD_JSON_INT || jt == VD_JSON_UINT || type_error(v, name, "integer");
    case GA_T_STR:
        return jt == VD_JSON_STRING || type_error(v, name, "string");
    case GA_T_BOOL:
        return jt == VD_JSON_BOOL || type_error(v, name, "boolean");
    case GA_T_WHENCE:
        if (jt == VD_JSON_INT || jt == VD_JSON_UINT || jt == VD_JSON_DOUBLE)
            return is_int64(val) || type_error(v, name, "integer");
        if (jt != VD_JSON_STRING)
            return type_error(v, name, "GuestFileWhence");
        if (strcmp(vd_json_str(val), "set") && strcmp(vd_json_str(val), "cur") &&
            strcmp(vd_json_str(val), "end")) {
            ga_error(v->e, "Parameter '%s' does not accept value '%s'", name,
                     vd_json_str(val));
            return false;
        }
        return true;
    default:
        return check_list(v, name, val, t);
    }
}

/* Is key one of the members? */
static bool is_member(const struct ga_arg *members, const char *key)
{
    for (const struct ga_arg *a = members; a && a->name; a++)
        if (strcmp(a->name, key) == 0)
            return true;
    return false;
}

/* Check obj (a JSON object) against members; prefix names nested ones. */
static bool check_members(struct visit *v, const char *prefix, const vd_json *obj,
                          const struct ga_arg *members)
{
    size_t n, *ord;

    for (const struct ga_arg *a = members; a && a->name; a++) {
        const vd_json *val = vd_json_get(obj, a->name);
        char *full = NULL;
        bool ok;

        if (!val && a->optional)
            continue;
        if (asprintf(&full, "%s%s%s", prefix ? prefix : "", prefix ? "." : "",
                     a->name) < 0) {
            ga_error(v->e, "out of memory");
            return false;
        }
        if (!val) {
            ga_error(v->e, "Parameter '%s' is missing", full);
            ok = false;
        } else {
            ok = check_value(v, full, val, a->type);
        }
        free(full);
        if (!ok)
            return false;
    }
    ord = qdict_order(obj, &n);
    for (size_t i = 0; i < n; i++) {
        const char *key = vd_json_key_at(obj, ord[i]);
        if (!is_member(members, key)) {
            ga_error(v->e, "Parameter '%s%s%s' is unexpected", prefix ? prefix : "",
                     prefix ? "." : "", key);
            free(ord);
            return false;
        }
    }
    free(ord);
    return true;
}

static bool check_struct(struct visit *v, const char *name, const vd_json *obj,
                         const struct ga_arg *members)
{
    return check_members(v, name, obj, members);
}

/* ---- commands enabled ---- */

/* Commands qemu-ga keeps enabled while file systems are frozen. */
static const char *const frozen_allowed[] = {
    "guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
    "guest-fsfreeze-status", "guest-fsfreeze-thaw", NULL,
};

static bool allowed_frozen(const char *name)
{
    for (size_t i = 0; frozen_allowed[i]; i++)
        if (strcmp(frozen_allowed[i], name) == 0)
            return true;
    return false;
}

/* See dispatch.h. */
void ga_block_command(const char *name)
{
    for (size_t i = 0; i < ga_ncommands && i < 64; i++)
        if (strcmp(ga_commands[i].name, name) == 0)
            blocked[i] = true;
}

/* See dispatch.h. */
void ga_set_frozen_mode(bool frozen)
{
    frozen_mode = frozen;
}

/* See dispatch.h. */
bool ga_command_enabled(size_t i)
{
    if (i >= 64 || blocked[i])
        return false;
    return !frozen_mode || allowed_frozen(ga_commands[i].name);
}

/* ---- the request envelope ---- */

/* The envelope checks; the command name or NULL with e set. */
static const char *check_envelope(const vd_json *req, struct ga_err *e)
{
    size_t n, *ord;
    const vd_json *ex;

    if (vd_json_type(req) != VD_JSON_OBJECT) {
        ga_error(e, "QMP input must be a JSON object");
        return NULL;
    }
    ord = qdict_order(req, &n);
    for (size_t i = 0; i < n && !e->desc; i++) {
        const char *key = vd_json_key_at(req, ord[i]);
        enum vd_json_type t = vd_json_type(vd_json_at(req, ord[i]));

        if (strcmp(key, "execute") == 0) {
            if (t != VD_JSON_STRING)
                ga_error(e, "QMP input member '%s' must be a string", key);
        } else if (strcmp(key, "arguments") == 0) {
            if (t != VD_JSON_OBJECT)
                ga_error(e, "QMP input member '%s' must be an object", key);
        } else if (strcmp(key, "id") != 0) {
            ga_error(e, "QMP input member '%s' is unexpected", key);
        }
    }
    free(ord);
    if (e->desc)
        return NULL;
    ex = vd_json_get(req, "execute");
    if (!ex) {
        ga_error(e, "QMP input lacks member 'execute'");
        return NULL;
    }
    return vd_json_str(ex);
}

/* The table entry of name, or -1. */
static long find_command(const char *name)
{
    for (size_t i = 0; i < ga_ncommands; i++)
        if (strcmp(ga_commands[i].name, name) == 0)
            return (long)i;
    return -1;
}

/* Run the request; the "return" value, or NULL with e set or no_resp. */
static vd_json *run(const vd_json *req, struct ga_err *e, bool *no_resp, bool *sync)
{
    const char *name = check_envelope(req, e);
    const vd_json *args;
    vd_json *ret = NULL, *empty = NULL;
    struct visit v = { e };
    long i;

    if (!name)
        return NULL;
    i = find_command(name);
    if (i < 0) {
        ga_error_class(e, "CommandNotFound", "The command %s has not been found", name);
        return NULL;
    }
    if (!ga_command_enabled((size_t)i)) {
        bool fz = frozen_mode && !blocked[i];
        ga_error_class(e, "CommandNotFound", "Command %s has been disabled%s", name,
                       fz ? ": the agent is in frozen state" : "");
        return NULL;
    }
    args = vd_json_get(req, "arguments");
    if (!args)
        args = empty = vd_json_new_object();
    if (check_members(&v, NULL, args, ga_commands[i].args)) {
        *sync = strcmp(name, "guest-sync-delimited") == 0;
        if (handler_filter && !handler_filter(name))
            ret = NULL;
        else if (ga_commands[i].fn)
            ga_commands[i].fn(args, &ret, e);
        else
            ga_error(e, "this feature or command is not currently supported");
    }
    vd_json_free(empty);
    if (e->desc) {
        vd_json_free(ret);
        return NULL;
    }
    if (ga_commands[i].no_success_response) {
        vd_json_free(ret);
        *no_resp = true;
        return NULL;
    }
    return ret ? ret : vd_json_new_object();
}

/* {"error": {"class": ..., "desc": ...}} */
static vd_json *error_response(const struct ga_err *e)
{
    vd_json *rsp = vd_json_new_object(), *err = vd_json_new_object();

    if (!rsp || !err) {
        vd_json_free(rsp);
        vd_json_free(err);
        return NULL;
    }
    vd_json_set_str(err, "class", e->cls ? e->cls : "GenericError");
    vd_json_set_str(err, "desc", e->desc ? e->desc : "");
    vd_json_set(rsp, "error", err);
    return rsp;
}

/* Copy of a JSON value (for echoing "id"). */
static vd_json *copy(const vd_json *j)
{
    char *s = vd_json_to_compact(j);
    vd_json *c = s ? vd_json_parse(s, strlen(s)) : NULL;

    free(s);
    return c;
}

/* See dispatch.h. */
char *ga_dispatch(vd_json *req, const char *parse_err, bool *sync)
{
    struct ga_err e = { 0 };
    bool no_resp = false;
    vd_json *ret = NULL, *rsp;
    const vd_json *id;
    char *out;

    *sync = false;
    if (parse_err)
        ga_error(&e, "%s", parse_err);
    else
        ret = run(req, &e, &no_resp, sync);
    if (no_resp) {
        vd_json_free(req);
        return NULL;
    }
    if (e.desc) {
        rsp = error_response(&e);
    } else {
        rsp = vd_json_new_object();
        if (rsp)
            vd_json_set(rsp, "return", ret);
        else
            vd_json_free(ret);
    }
    id = vd_json_type(req) == VD_JSON_OBJECT ? vd_json_get(req, "id") : NULL;
    if (rsp && id)
        vd_json_set(rsp, "id", copy(id));
    out = rsp ? ga_to_json(rsp) : NULL;
    vd_json_free(rsp);
    vd_json_free(req);
    free(e.desc);
    return out;
}
