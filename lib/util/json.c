/* SPDX-License-Identifier: BSD-3-Clause */
/* The vd_json value tree and its printers.  The pretty printer reproduces
 * QEMU's --output=json layout (4-space indent, "key": value, empty
 * containers as "[" newline indent "]"), and its string escaping (\uXXXX in
 * upper case for control and non-ASCII characters, \uFFFD for bad UTF-8). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/checked.h"
#include "util/json.h"
#include "util/json-int.h"
#include "util/utf8.h"

/* Allocate a value of type t. */
static vd_json *json_alloc(enum vd_json_type t)
{
    vd_json *j = calloc(1, sizeof(*j));

    if (j)
        j->type = t;
    return j;
}

/* An empty object (NULL when out of memory, as every constructor). */
vd_json *vd_json_new_object(void) { return json_alloc(VD_JSON_OBJECT); }
/* An empty array. */
vd_json *vd_json_new_array(void) { return json_alloc(VD_JSON_ARRAY); }
/* The null value. */
vd_json *vd_json_new_null(void) { return json_alloc(VD_JSON_NULL); }

/* A string value holding a copy of s (NULL s is the empty string). */
vd_json *vd_json_new_string(const char *s)
{
    vd_json *j = json_alloc(VD_JSON_STRING);

    if (j && !(j->u.s = strdup(s ? s : ""))) {
        free(j);
        return NULL;
    }
    return j;
}

/* A signed integer value. */
vd_json *vd_json_new_int(int64_t v)
{
    vd_json *j = json_alloc(VD_JSON_INT);

    if (j)
        j->u.i = v;
    return j;
}

/* An unsigned integer value (printed unsigned). */
vd_json *vd_json_new_uint(uint64_t v)
{
    vd_json *j = json_alloc(VD_JSON_UINT);

    if (j)
        j->u.u = v;
    return j;
}

/* A boolean value. */
vd_json *vd_json_new_bool(bool v)
{
    vd_json *j = json_alloc(VD_JSON_BOOL);

    if (j)
        j->u.b = v;
    return j;
}

/* A floating-point value. */
vd_json *vd_json_new_double(double v)
{
    vd_json *j = json_alloc(VD_JSON_DOUBLE);

    if (j)
        j->u.d = v;
    return j;
}

/* Free a value and everything below it (depth is bounded by the parser). */
void vd_json_free(vd_json *j)
{
    size_t i;

    if (!j)
        return;
    if (j->type == VD_JSON_STRING)
        free(j->u.s);
    if (j->type == VD_JSON_ARRAY || j->type == VD_JSON_OBJECT) {
        for (i = 0; i < j->u.c.n; i++) {
            vd_json_free(j->u.c.vals[i]);
            if (j->u.c.keys)
                free(j->u.c.keys[i]);
        }
        free(j->u.c.vals);
        free(j->u.c.keys);
    }
    free(j);
}

/* Type of j; VD_JSON_NULL for a NULL pointer. */
enum vd_json_type vd_json_type(const vd_json *j)
{
    return j ? j->type : VD_JSON_NULL;
}

/* Grow a container so one more entry fits. */
static int container_grow(vd_json *c)
{
    size_t cap = c->u.c.cap ? c->u.c.cap : 4, bytes;
    vd_json **vals;
    char **keys;

    if (c->u.c.n < c->u.c.cap)
        return 0;
    if (c->u.c.cap && MUL_OVERFLOW(cap, 2, &cap))
        return -ENOMEM;
    if (MUL_OVERFLOW(cap, sizeof(*vals), &bytes))
        return -ENOMEM;
    vals = realloc(c->u.c.vals, bytes);
    if (!vals)
        return -ENOMEM;
    c->u.c.vals = vals;
    if (c->type == VD_JSON_OBJECT) {
        keys = realloc(c->u.c.keys, bytes);
        if (!keys)
            return -ENOMEM;
        c->u.c.keys = keys;
    }
    c->u.c.cap = cap;
    return 0;
}

/* See json-int.h: append without looking for an existing key. */
int vd_json_push(vd_json *c, char *key, vd_json *v)
{
    if (container_grow(c) < 0)
        return -ENOMEM;
    if (c->type == VD_JSON_OBJECT)
        c->u.c.keys[c->u.c.n] = key;
    c->u.c.vals[c->u.c.n++] = v;
    return 0;
}

/* Index of key in obj, or -1. */
static ptrdiff_t object_find(const vd_json *obj, const char *key)
{
    size_t i;

    for (i = 0; i < obj->u.c.n; i++)
        if (strcmp(obj->u.c.keys[i], key) == 0)
            return (ptrdiff_t)i;
    return -1;
}

/* See json.h.  On allocation failure v is freed and obj is unchanged. */
void vd_json_set(vd_json *obj, const char *key, vd_json *v)
{
    ptrdiff_t i;
    char *k;

    if (!obj || obj->type != VD_JSON_OBJECT || !key || !v) {
        vd_json_free(v);
        return;
    }
    i = object_find(obj, key);
    if (i >= 0) {
        vd_json_free(obj->u.c.vals[i]);
        obj->u.c.vals[i] = v;
        return;
    }
    k = strdup(key);
    if (!k || vd_json_push(obj, k, v) < 0) {
        free(k);
        vd_json_free(v);
    }
}

/* obj[key] = a copy of string s. */
void vd_json_set_str(vd_json *obj, const char *key, const char *s)
{
    vd_json_set(obj, key, vd_json_new_string(s));
}

/* obj[key] = signed integer v. */
void vd_json_set_int(vd_json *obj, const char *key, int64_t v)
{
    vd_json_set(obj, key, vd_json_new_int(v));
}

/* obj[key] = unsigned integer v. */
void vd_json_set_uint(vd_json *obj, const char *key, uint64_t v)
{
    vd_json_set(obj, key, vd_json_new_uint(v));
}

/* obj[key] = boolean v. */
void vd_json_set_bool(vd_json *obj, const char *key, bool v)
{
    vd_json_set(obj, key, vd_json_new_bool(v));
}

/* See json.h.  On allocation failure v is freed. */
void vd_json_append(vd_json *arr, vd_json *v)
{
    if (!arr || arr->type != VD_JSON_ARRAY || !v || vd_json_push(arr, NULL, v) < 0)
        vd_json_free(v);
}

/* Value of key in obj, NULL when absent. */
vd_json *vd_json_get(const vd_json *obj, const char *key)
{
    ptrdiff_t i;

    if (!obj || obj->type != VD_JSON_OBJECT || !key)
        return NULL;
    i = object_find(obj, key);
    return i < 0 ? NULL : obj->u.c.vals[i];
}

/* Number of entries of an array or object (0 otherwise). */
size_t vd_json_count(const vd_json *j)
{
    if (!j || (j->type != VD_JSON_ARRAY && j->type != VD_JSON_OBJECT))
        return 0;
    return j->u.c.n;
}

/* Entry i of an array or object. */
vd_json *vd_json_at(const vd_json *j, size_t i)
{
    return i < vd_json_count(j) ? j->u.c.vals[i] : NULL;
}

/* Key i of an object. */
const char *vd_json_key_at(const vd_json *obj, size_t i)
{
    if (!obj || obj->type != VD_JSON_OBJECT || i >= obj->u.c.n)
        return NULL;
    return obj->u.c.keys[i];
}

/* The string of a string value. */
const char *vd_json_str(const vd_json *j)
{
    return j && j->type == VD_JSON_STRING ? j->u.s : NULL;
}

/* An integer value as int64 (UINT above INT64_MAX and others give 0). */
int64_t vd_json_int(const vd_json *j)
{
    if (j && j->type == VD_JSON_INT)
        return j->u.i;
    if (j && j->type == VD_JSON_UINT && j->u.u <= INT64_MAX)
        return (int64_t)j->u.u;
    return 0;
}

/* An unsigned value (INT below 0 and others give 0). */
uint64_t vd_json_uint(const vd_json *j)
{
    if (j && j->type == VD_JSON_UINT)
        return j->u.u;
    if (j && j->type == VD_JSON_INT && j->u.i >= 0)
        return (uint64_t)j->u.i;
    return 0;
}

/* A double value (integers are converted). */
double vd_json_double(const vd_json *j)
{
    if (j && j->type == VD_JSON_DOUBLE)
        return j->u.d;
    if (j && j->type == VD_JSON_INT)
        return (double)j->u.i;
    if (j && j->type == VD_JSON_UINT)
        return (double)j->u.u;
    return 0;
}

/* A boolean value. */
bool vd_json_bool(const vd_json *j)
{
    return j && j->type == VD_JSON_BOOL && j->u.b;
}

/* ---- printing ---- */

/* Append \uXXXX for one UTF-16 unit. */
static void put_u16(struct vd_buf *b, unsigned v)
{
    vd_buf_printf(b, "\\u%04X", v);
}

/* Append the escape for code point cp (-1: invalid input). */
static void put_escaped_cp(struct vd_buf *b, int32_t cp)
{
    static const char named[] = "\b\f\n\r\t", letters[] = "bfnrt";
    const char *n;

    if (cp == '"' || cp == '\\') {
        vd_buf_addc(b, '\\');
        vd_buf_addc(b, (char)cp);
    } else if (cp > 0 && cp < 0x20 && (n = strchr(named, cp))) {
        vd_buf_addc(b, '\\');
        vd_buf_addc(b, letters[n - named]);
    } else if (cp < 0) {
        put_u16(b, 0xFFFD);
    } else if (cp >= 0x10000) {
        put_u16(b, 0xD800 + ((unsigned)(cp - 0x10000) >> 10));
        put_u16(b, 0xDC00 + ((unsigned)(cp - 0x10000) & 0x3FF));
    } else if (cp < 0x20 || cp >= 0x7F) {
        put_u16(b, (unsigned)cp);
    } else {
        vd_buf_addc(b, (char)cp);
    }
}

/* See json-int.h: append s as a quoted JSON string, QEMU-style. */
void vd_json_quote(struct vd_buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), k;
    int32_t cp;

    vd_buf_addc(b, '"');
    while (n) {
        k = vd_utf8_next(p, n, &cp);
        put_escaped_cp(b, cp);
        p += k;
        n -= k;
    }
    vd_buf_addc(b, '"');
}

/* Append a newline and 4 spaces per level. */
static void put_indent(struct vd_buf *b, int level)
{
    vd_buf_addc(b, '\n');
    for (int i = 0; i < level; i++)
        vd_buf_adds(b, "    ");
}

static void put_value(struct vd_buf *b, const vd_json *j, int level, bool pretty);

/* Append an array or object; level < 0 means compact. */
static void put_container(struct vd_buf *b, const vd_json *j, int level, bool pretty)
{
    bool obj = j->type == VD_JSON_OBJECT;
    size_t i;

    vd_buf_addc(b, obj ? '{' : '[');
    for (i = 0; i < j->u.c.n; i++) {
        if (i)
            vd_buf_adds(b, pretty ? "," : ", ");
        if (pretty)
            put_indent(b, level + 1);
        if (obj) {
            vd_json_quote(b, j->u.c.keys[i]);
            vd_buf_adds(b, ": ");
        }
        put_value(b, j->u.c.vals[i], level + 1, pretty);
    }
    if (pretty)
        put_indent(b, level);
    vd_buf_addc(b, obj ? '}' : ']');
}

/* Append any value. */
static void put_value(struct vd_buf *b, const vd_json *j, int level, bool pretty)
{
    switch (vd_json_type(j)) {
    case VD_JSON_NULL: vd_buf_adds(b, "null"); break;
    case VD_JSON_BOOL: vd_buf_adds(b, j->u.b ? "true" : "false"); break;
    case VD_JSON_INT: vd_buf_printf(b, "%" PRId64, j->u.i); break;
    case VD_JSON_UINT: vd_buf_printf(b, "%" PRIu64, j->u.u); break;
    case VD_JSON_DOUBLE: vd_buf_printf(b, "%.17g", j->u.d); break;
    case VD_JSON_STRING: vd_json_quote(b, j->u.s); break;
    case VD_JSON_ARRAY:
    case VD_JSON_OBJECT: put_container(b, j, level, pretty); break;
    }
}

/* Render j pretty (QEMU layout) or compact into a new string. */
char *vd_json_to_string(const vd_json *j, bool pretty)
{
    struct vd_buf b = { 0 };

    put_value(&b, j, 0, pretty);
    return vd_buf_steal(&b);
}

/* See json.h. */
void vd_json_print(const vd_json *j, FILE *f)
{
    char *s = vd_json_to_string(j, true);

    if (s)
        fputs(s, f);
    free(s);
}

/* See json.h: {"a": 1, "b": [1, 2]} as QEMU writes json: file names. */
char *vd_json_to_compact(const vd_json *j)
{
    return vd_json_to_string(j, false);
}
