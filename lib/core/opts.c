/* SPDX-License-Identifier: BSD-3-Clause */
/* Option dictionaries (include/vdisk/opts.h): an ordered map of dotted keys
 * to strings, filled from "k=v,k2=v2" strings (QemuOpts syntax, ",," is a
 * literal comma), from json: objects (flattened), and checked against a
 * driver's option table with qemu-img's messages. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "util/buf.h"
#include "util/checked.h"
#include "util/json.h"
#include "util/size.h"

#define OPTS_MAX_ENTRIES 4096

struct opt_entry {
    char *key;
    char *value;
};

struct vd_opts {
    struct opt_entry *e;
    size_t n, cap;
};

/* A new, empty dictionary (NULL when out of memory). */
vd_opts *vd_opts_new(void)
{
    return calloc(1, sizeof(vd_opts));
}

/* Free o and its strings; NULL is allowed. */
void vd_opts_free(vd_opts *o)
{
    size_t i;

    if (!o)
        return;
    for (i = 0; i < o->n; i++) {
        free(o->e[i].key);
        free(o->e[i].value);
    }
    free(o->e);
    free(o);
}

/* Index of key, or -1. */
static ptrdiff_t opts_find(const vd_opts *o, const char *key)
{
    size_t i;

    for (i = 0; o && key && i < o->n; i++)
        if (strcmp(o->e[i].key, key) == 0)
            return (ptrdiff_t)i;
    return -1;
}

/* Room for one more entry. */
static int opts_grow(vd_opts *o)
{
    size_t cap = o->cap ? o->cap * 2 : 8, bytes;
    struct opt_entry *e;

    if (o->n < o->cap)
        return 0;
    if (o->n >= OPTS_MAX_ENTRIES)
        return vd_error(E2BIG, "Too many options");
    if (MUL_OVERFLOW(cap, sizeof(*e), &bytes) || !(e = realloc(o->e, bytes)))
        return vd_error(ENOMEM, "Out of memory");
    o->e = e;
    o->cap = cap;
    return 0;
}

/* Set key to the n bytes at value (replacing in place, keeping order). */
static int opts_setn(vd_opts *o, const char *key, size_t klen, const char *value, size_t vlen)
{
    char *k = strndup(key, klen), *v = strndup(value, vlen);
    ptrdiff_t i;
    int r = 0;

    if (!k || !v) {
        r = vd_error(ENOMEM, "Out of memory");
        goto out;
    }
    i = opts_find(o, k);
    if (i >= 0) {
        free(o->e[i].value);
        o->e[i].value = v;
        v = NULL;
        goto out;
    }
    r = opts_grow(o);
    if (r == 0) {
        o->e[o->n].key = k;
        o->e[o->n++].value = v;
        k = v = NULL;
    }
out:
    free(k);
    free(v);
    return r;
}

/* See opts.h. */
int vd_opts_set(vd_opts *o, const char *key, const char *value)
{
    if (!o || !key || !value)
        return -EINVAL;
    return opts_setn(o, key, strlen(key), value, strlen(value));
}

/* A copy of o (NULL when out of memory). */
vd_opts *vd_opts_dup(const vd_opts *o)
{
    vd_opts *d = vd_opts_new();
    size_t i;

    for (i = 0; d && o && i < o->n; i++) {
        if (vd_opts_set(d, o->e[i].key, o->e[i].value) < 0) {
            vd_opts_free(d);
            return NULL;
        }
    }
    return d;
}

/* Value of key, NULL if absent. */
const char *vd_opts_get(const vd_opts *o, const char *key)
{
    ptrdiff_t i = opts_find(o, key);

    return i < 0 ? NULL : o->e[i].value;
}

/* Is key present? */
bool vd_opts_has(const vd_opts *o, const char *key)
{
    return opts_find(o, key) >= 0;
}

/* Remove entry i, keeping the order of the others. */
static void opts_remove(vd_opts *o, size_t i)
{
    free(o->e[i].key);
    free(o->e[i].value);
    memmove(&o->e[i], &o->e[i + 1], (o->n - i - 1) * sizeof(o->e[0]));
    o->n--;
}

/* See opts.h. */
bool vd_opts_del(vd_opts *o, const char *key)
{
    ptrdiff_t i = opts_find(o, key);

    if (i < 0)
        return false;
    opts_remove(o, (size_t)i);
    return true;
}

/* Number of entries. */
size_t vd_opts_count(const vd_opts *o)
{
    return o ? o->n : 0;
}

/* Key of entry i (NULL past the end). */
const char *vd_opts_key(const vd_opts *o, size_t i)
{
    return o && i < o->n ? o->e[i].key : NULL;
}

/* Value of entry i (NULL past the end). */
const char *vd_opts_value(const vd_opts *o, size_t i)
{
    return o && i < o->n ? o->e[i].value : NULL;
}

/* ---- "k=v,k2=v2" strings ---- */

/* One element of an option string, as the tokenizer found it. */
struct opt_elem {
    const char *key;
    size_t klen;
    bool has_value;     /* "k=v" (or the implied key's value) */
    bool implied;       /* the value belongs to the implied key */
    const char *val;    /* raw, ",," still doubled */
    size_t vlen;
};

/* Length of a value at p: up to a single ',' (",," is part of it). */
static size_t value_len(const char *p)
{
    size_t n = 0;

    while (p[n] && !(p[n] == ',' && p[n + 1] != ','))
        n += p[n] == ',' ? 2 : 1;
    return n;
}

/* Read the element at *pp and advance past it and its ','.  The first
 * element, when it has no '=', belongs to the implied key if any. */
static void next_elem(const char **pp, bool implied, struct opt_elem *el)
{
    const char *p = *pp;
    size_t n = strcspn(p, "=,");

    el->key = p;
    el->klen = n;
    el->implied = implied && p[n] != '=';
    el->has_value = el->implied || p[n] == '=';
    if (el->implied) {
        el->klen = 0;
        el->val = p;
    } else {
        el->val = p + n + (p[n] == '=');
    }
    el->vlen = el->has_value ? value_len(el->val) : 0;
    p = el->has_value ? el->val + el->vlen : p + n;
    *pp = *p == ',' ? p + 1 : p;
}

/* Undouble ",," in a raw value; caller frees. */
static char *unescape_value(const char *v, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    size_t i;

    if (!out)
        return NULL;
    for (i = 0; i < len; i++) {
        *o++ = v[i];
        if (v[i] == ',' && i + 1 < len && v[i + 1] == ',')
            i++;
    }
    *o = '\0';
    return out;
}

/* Store one parsed element into o. */
static int store_elem(vd_opts *o, const struct opt_elem *el, const char *implied_key)
{
    char *v;
    int r;

    if (!el->has_value)
        return opts_setn(o, el->key, el->klen, "on", 2);
    v = unescape_value(el->val, el->vlen);
    if (!v)
        return vd_error(ENOMEM, "Out of memory");
    if (el->implied)
        r = opts_setn(o, implied_key, strlen(implied_key), v, strlen(v));
    else
        r = opts_setn(o, el->key, el->klen, v, strlen(v));
    free(v);
    return r;
}

/* See opts.h.  As QemuOpts: with no implied key, an element without '='
 * is "k=on" (also the first: qemu-img -o lazy_refcounts); a trailing ','
 * is ignored (--image-opts accepts it; see vd_opts_list_valid for -o). */
int vd_opts_parse(vd_opts *o, const char *str, const char *implied_key)
{
    struct opt_elem el;
    const char *p = str;
    bool first = true;
    int r;

    if (!o || !str)
        return -EINVAL;
    while (*p) {
        next_elem(&p, first && implied_key, &el);
        r = store_elem(o, &el, implied_key);
        if (r < 0)
            return r;
        first = false;
    }
    return 0;
}

/* See opts.h: some element is exactly "help" or "?" (not "k=help"). */
bool vd_opts_is_help(const char *str)
{
    struct opt_elem el;
    const char *p = str;

    while (p && *p) {
        next_elem(&p, false, &el);
        if (!el.has_value && ((el.klen == 4 && !memcmp(el.key, "help", 4)) ||
                              (el.klen == 1 && el.key[0] == '?')))
            return true;
    }
    return false;
}

/* qemu-img's check on -o arguments ("Invalid option list: %s"): not
 * empty, no leading ',' and no trailing single ','. */
bool vd_opts_list_valid(const char *str)
{
    size_t i;

    if (!str || !*str || *str == ',')
        return false;
    for (i = 0; str[i]; i++) {
        if (str[i] != ',')
            continue;
        if (str[i + 1] == ',')
            i++;
        else if (str[i + 1] == '\0')
            return false;
    }
    return true;
}

/* Append one value, commas doubled. */
static void add_escaped(struct vd_buf *b, const char *v)
{
    for (; *v; v++) {
        vd_buf_addc(b, *v);
        if (*v == ',')
            vd_buf_addc(b, ',');
    }
}

/* See opts.h. */
char *vd_opts_to_string(const vd_opts *o)
{
    struct vd_buf b = { 0 };
    size_t i;

    for (i = 0; o && i < o->n; i++) {
        if (i)
            vd_buf_addc(&b, ',');
        vd_buf_adds(&b, o->e[i].key);
        vd_buf_addc(&b, '=');
        add_escaped(&b, o->e[i].value);
    }
    return vd_buf_steal(&b);
}

/* ---- json: ---- */

static int flatten(vd_opts *o, const char *prefix, const vd_json *j);

/* Store a scalar as text: booleans on/off, numbers in decimal. */
static int flatten_scalar(vd_opts *o, const char *key, const vd_json *j)
{
    char num[64];

    switch (vd_json_type(j)) {
    case VD_JSON_STRING: return vd_opts_set(o, key, vd_json_str(j));
    case VD_JSON_BOOL: return vd_opts_set(o, key, vd_json_bool(j) ? "on" : "off");
    case VD_JSON_INT: snprintf(num, sizeof(num), "%" PRId64, vd_json_int(j)); break;
    case VD_JSON_UINT: snprintf(num, sizeof(num), "%" PRIu64, vd_json_uint(j)); break;
    case VD_JSON_DOUBLE: snprintf(num, sizeof(num), "%.17g", vd_json_double(j)); break;
    default: return 0;    /* null: no value, as if absent */
    }
    return vd_opts_set(o, key, num);
}

/* Flatten entry i of container j under prefix. */
static int flatten_entry(vd_opts *o, const char *prefix, const vd_json *j, size_t i)
{
    struct vd_buf key = { 0 };
    int r;

    if (prefix) {
        vd_buf_adds(&key, prefix);
        vd_buf_addc(&key, '.');
    }
    if (vd_json_type(j) == VD_JSON_OBJECT)
        vd_buf_adds(&key, vd_json_key_at(j, i));
    else
        vd_buf_printf(&key, "%zu", i);
    if (key.oom) {
        vd_buf_free(&key);
        return vd_error(ENOMEM, "Out of memory");
    }
    r = flatten(o, key.p ? key.p : "", vd_json_at(j, i));
    vd_buf_free(&key);
    return r;
}

/* Flatten j into o: objects as prefix.key, arrays as prefix.N. */
static int flatten(vd_opts *o, const char *prefix, const vd_json *j)
{
    enum vd_json_type t = vd_json_type(j);
    size_t i;
    int r;

    if (t != VD_JSON_OBJECT && t != VD_JSON_ARRAY)
        return flatten_scalar(o, prefix, j);
    for (i = 0; i < vd_json_count(j); i++) {
        r = flatten_entry(o, prefix, j, i);
        if (r < 0)
            return r;
    }
    return 0;
}

/* See opts.h.  Errors: the parser's message, or "Invalid JSON object
 * given" when the text is not an object. */
int vd_opts_parse_json(vd_opts *o, const char *json)
{
    vd_json *j;
    int r;

    if (!o || !json)
        return -EINVAL;
    j = vd_json_parse(json, strlen(json));
    if (!j)
        return -EINVAL;
    if (vd_json_type(j) != VD_JSON_OBJECT)
        r = vd_error(EINVAL, "Invalid JSON object given");
    else
        r = flatten(o, NULL, j);
    vd_json_free(j);
    return r;
}

/* See opts.h ("file" and "file." are the same prefix).  NULL on ENOMEM. */
vd_opts *vd_opts_extract_prefix(vd_opts *o, const char *prefix)
{
    vd_opts *d = vd_opts_new();
    size_t plen = prefix ? strlen(prefix) : 0, i = 0;

    if (plen && prefix[plen - 1] == '.')
        plen--;
    while (d && o && prefix && i < o->n) {
        const char *k = o->e[i].key;
        if (strncmp(k, prefix, plen) != 0 || k[plen] != '.') {
            i++;
            continue;
        }
        if (vd_opts_set(d, k + plen + 1, o->e[i].value) < 0) {
            vd_opts_free(d);
            return NULL;
        }
        opts_remove(o, i);
    }
    return d;
}

/* ---- typed values ---- */

/* See opts.h: on/yes/true/y and off/no/false/n, case-sensitive. */
int vd_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "on", "yes", "true", "y" };
    static const char *const no[] = { "off", "no", "false", "n" };
    size_t i;

    for (i = 0; s && i < VD_ARRAY_SIZE(yes); i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* A number as QemuOpts reads it: strtoull base 0 (so 0x10, 010 octal,
 * leading blanks and "-1" wrapping), the whole string consumed. */
static int parse_number(const char *s, uint64_t *out)
{
    char *end;

    errno = 0;
    *out = strtoull(s, &end, 0);
    if (end == s || *end)
        return -EINVAL;
    return errno == ERANGE ? -ERANGE : 0;
}

/* Check value v of key against type t, with qemu-img's messages. */
static int check_typed(const char *key, const char *v, enum vd_opt_type t, uint64_t *n)
{
    bool b;
    int r;

    switch (t) {
    case VD_OPT_BOOL:
        if (vd_parse_bool(v, &b) < 0)
            return vd_error(EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
        *n = b;
        return 0;
    case VD_OPT_NUMBER:
        r = parse_number(v, n);
        if (r == -ERANGE)
            return vd_error(EINVAL, "Value '%s' is too large for parameter '%s'", v, key);
        return r < 0 ? vd_error(EINVAL, "Parameter '%s' expects a number", key) : 0;
    case VD_OPT_SIZE:
        r = vd_parse_size(v, 'B', n);
        if (r == -ERANGE)
            return vd_error(EINVAL, "Value '%s' is out of range for parameter '%s'", v, key);
        if (r < 0)
            return vd_error(EINVAL, "Parameter '%s' expects a non-negative number below 2^64\n"
                            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                            "tera-, peta-\nand exabytes, respectively.", key);
        return 0;
    default:
        return 0;
    }
}

/* See opts.h. */
int vd_opts_get_bool(const vd_opts *o, const char *key, bool def, bool *out)
{
    const char *v = vd_opts_get(o, key);
    uint64_t n = 0;
    int r;

    *out = def;
    if (!v)
        return 0;
    r = check_typed(key, v, VD_OPT_BOOL, &n);
    if (r == 0)
        *out = n != 0;
    return r;
}

/* See opts.h. */
int vd_opts_get_u64(const vd_opts *o, const char *key, uint64_t def, uint64_t *out)
{
    const char *v = vd_opts_get(o, key);

    *out = def;
    return v ? check_typed(key, v, VD_OPT_NUMBER, out) : 0;
}

/* See opts.h. */
int vd_opts_get_size(const vd_opts *o, const char *key, uint64_t def, uint64_t *out)
{
    const char *v = vd_opts_get(o, key);

    *out = def;
    return v ? check_typed(key, v, VD_OPT_SIZE, out) : 0;
}

/* Table entry for name, NULL if none. */
static const struct vd_opt_desc *desc_find(const struct vd_opt_desc *t, const char *name)
{
    for (; t && t->name; t++)
        if (strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

/* See opts.h.  Entries are checked in order; the first problem wins.
 * "what" is not part of qemu-img's message and is unused. */
int vd_opts_validate(const vd_opts *o, const struct vd_opt_desc *table, const char *what)
{
    const struct vd_opt_desc *d;
    uint64_t n = 0;
    size_t i;
    int r;

    for (i = 0; o && i < o->n; i++) {
        d = desc_find(table, o->e[i].key);
        if (!d && strchr(o->e[i].key, '.'))
            continue;
        if (!d)
            return vd_error(EINVAL, "Invalid parameter '%s'", o->e[i].key);
        r = check_typed(d->name, o->e[i].value, d->type, &n);
        if (r < 0)
            return r;
    }
    return 0;
}
