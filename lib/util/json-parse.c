/* SPDX-License-Identifier: BSD-3-Clause */
/* JSON parser for json: file names and option strings.  Hostile input is
 * expected: text size and nesting depth are capped, every byte is bounds
 * checked (no NUL terminator needed), and errors carry QEMU's messages
 * ("JSON parse error, premature EOI", "... duplicate key", ...).  Accepts
 * QEMU's extension of single-quoted strings. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "util/buf.h"
#include "util/json-int.h"
#include "util/utf8.h"

#define JSON_MAX_DEPTH 64
#define JSON_MAX_TEXT (16u << 20)
/* QEMU formats the part of a parse error after "JSON parse error, " into
 * 1024 bytes, so a long token is cut off (closing quote and all) there. */
#define DETAIL_MAX 1024

struct parser {
    const char *p, *end;
    int depth;
    bool failed;
    int max_depth;
};

/* Record the first error (later ones are consequences). */
static vd_json *fail(struct parser *ps, const char *msg)
{
    if (!ps->failed)
        vd_error(EINVAL, "JSON parse error, %s", msg);
    ps->failed = true;
    return NULL;
}

/* "WHAT 'TOKEN'" for the n bytes at start, cut off as QEMU cuts it. */
static vd_json *fail_token(struct parser *ps, const char *what, const char *start, size_t n)
{
    char detail[DETAIL_MAX];

    if (!ps->failed) {
        snprintf(detail, sizeof(detail), "%s '%.*s'", what,
                 (int)(n > DETAIL_MAX ? DETAIL_MAX : n), start);
        vd_error(EINVAL, "JSON parse error, %s", detail);
    }
    ps->failed = true;
    return NULL;
}

/* "stray 'TOKEN'" for a token from start through the offending byte. */
static vd_json *fail_stray(struct parser *ps, const char *start, const char *bad)
{
    return fail_token(ps, "stray", start, (size_t)((bad < ps->end ? bad + 1 : ps->end) - start));
}

/* Skip JSON white space. */
static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' ||
                               *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

/* Value of one hex digit, -1 otherwise. */
static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Read XXXX after "\u" at p; -1 when not four hex digits. */
static int32_t read_u16(const struct parser *ps, const char *p)
{
    int32_t v = 0;

    if (ps->end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* "\uXXXX is not a valid Unicode character", quoting the escape at p up to
 * and including its first non-hex character (as QEMU does). */
static bool bad_unicode(struct parser *ps, const char *p)
{
    size_t avail = (size_t)(ps->end - p), n = 2;

    while (n < 6 && n < avail && hexval(p[n]) >= 0)
        n++;
    if (n < 6 && n < avail)
        n++;
    if (!ps->failed)
        vd_error(EINVAL, "JSON parse error, %.*s is not a valid Unicode character", (int)n, p);
    ps->failed = true;
    return false;
}

/* Decode a \u escape (with a following low surrogate if needed) at ps->p,
 * which points at the backslash; appends UTF-8 to b. */
static bool parse_u_escape(struct parser *ps, struct vd_buf *b)
{
    const char *esc = ps->p;
    int32_t hi = read_u16(ps, esc + 2), lo;
    uint32_t cp;
    char out[4];

    if (hi < 0)
        return bad_unicode(ps, esc);
    ps->p += 6;
    cp = (uint32_t)hi;
    if (hi >= 0xD800 && hi <= 0xDBFF) {
        if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
            return bad_unicode(ps, esc);
        lo = read_u16(ps, ps->p + 2);
        if (lo < 0xDC00 || lo > 0xDFFF)
            return bad_unicode(ps, esc);
        ps->p += 6;
        cp = 0x10000 + (((uint32_t)hi - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
    }
    if (!vd_utf8_valid_cp(cp))
        return bad_unicode(ps, esc);
    if (cp == 0)
        return vd_buf_add(b, "\xC0\x80", 2) == 0;  /* modified UTF-8, as QEMU */
    return vd_buf_add(b, out, vd_utf8_encode(cp, out)) == 0;
}

/* Decode the escape at ps->p (a backslash) into b. */
static bool parse_escape(struct parser *ps, struct vd_buf *b)
{
    static const char from[] = "\"\\/'bfnrt", to[] = "\"\\/'\b\f\n\r\t";
    const char *k;

    if (ps->end - ps->p < 2) {
        fail(ps, "premature EOI");
        return false;
    }
    if (ps->p[1] == 'u')
        return parse_u_escape(ps, b);
    k = ps->p[1] ? strchr(from, ps->p[1]) : NULL;
    if (!k) {
        fail(ps, "invalid escape sequence in string");
        return false;
    }
    ps->p += 2;
    return vd_buf_addc(b, to[k - from]) == 0;
}

/* Copy one raw character (validated UTF-8) into b. */
static bool parse_raw_char(struct parser *ps, struct vd_buf *b, const char *start)
{
    const unsigned char *u = (const unsigned char *)ps->p;
    int32_t cp;
    size_t k;

    if (*u < 0x20) {
        fail_stray(ps, start, ps->p);
        return false;
    }
    k = vd_utf8_next(u, (size_t)(ps->end - ps->p), &cp);
    if (cp < 0) {
        fail(ps, "invalid UTF-8 sequence in string");
        return false;
    }
    ps->p += k;
    return vd_buf_add(b, u, k) == 0;
}

/* Parse a quoted string at ps->p into a new C string. */
static char *parse_string(struct parser *ps)
{
    const char *start = ps->p;
    char quote = *ps->p++;
    struct vd_buf b = { 0 };
    bool ok = true;

    while (ok) {
        if (ps->p >= ps->end) {
            fail_stray(ps, start, ps->end);
            ok = false;
        } else if (*ps->p == quote) {
            ps->p++;
            break;
        } else if (*ps->p == '\\') {
            ok = parse_escape(ps, &b);
        } else {
            ok = parse_raw_char(ps, &b, start);
        }
    }
    if (!ok || b.oom) {
        if (b.oom)
            fail(ps, "out of memory");
        vd_buf_free(&b);
        return NULL;
    }
    return vd_buf_steal(&b);
}

/* Advance over digits; returns how many. */
static size_t skip_digits(struct parser *ps)
{
    size_t n = 0;

    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        ps->p++;
        n++;
    }
    return n;
}

/* Scan a number token per the JSON grammar; *real when it has a fraction
 * or exponent.  False (with the stray message) when malformed. */
static bool scan_number(struct parser *ps, const char *start, bool *real)
{
    *real = false;
    if (ps->p < ps->end && *ps->p == '-')
        ps->p++;
    if (ps->p < ps->end && *ps->p == '0') {
        ps->p++;
    } else if (skip_digits(ps) == 0) {
        return fail_stray(ps, start, ps->p), false;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        *real = true;
        if (skip_digits(ps) == 0)
            return fail_stray(ps, start, ps->p), false;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        *real = true;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (skip_digits(ps) == 0)
            return fail_stray(ps, start, ps->p), false;
    }
    if (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
        return fail_stray(ps, start, ps->p), false;   /* "01" */
    return true;
}

/* Convert a scanned number: int64, else uint64, else double (as QEMU). */
static vd_json *number_value(const char *tok, bool real)
{
    char *e;

    if (!real) {
        errno = 0;
        if (tok[0] == '-') {
            long long v = strtoll(tok, &e, 10);
            if (errno == 0)
                return vd_json_new_int(v);
        } else {
            unsigned long long v = strtoull(tok, &e, 10);
            if (errno == 0)
                return v <= INT64_MAX ? vd_json_new_int((int64_t)v) : vd_json_new_uint(v);
        }
    }
    return vd_json_new_double(strtod(tok, &e));
}

/* Parse a number at ps->p. */
static vd_json *parse_number(struct parser *ps)
{
    const char *start = ps->p;
    bool real;
    char *tok;
    vd_json *v;

    if (!scan_number(ps, start, &real))
        return NULL;
    tok = strndup(start, (size_t)(ps->p - start));
    if (!tok)
        return fail(ps, "out of memory");
    v = number_value(tok, real);
    free(tok);
    return v ? v : fail(ps, "out of memory");
}

/* Parse true, false or null. */
static vd_json *parse_keyword(struct parser *ps)
{
    const char *start = ps->p;
    size_t n;

    while (ps->p < ps->end && ((*ps->p >= 'a' && *ps->p <= 'z') ||
                               (*ps->p >= 'A' && *ps->p <= 'Z')))
        ps->p++;
    n = (size_t)(ps->p - start);
    if (n == 4 && !memcmp(start, "true", 4))
        return vd_json_new_bool(true);
    if (n == 5 && !memcmp(start, "false", 5))
        return vd_json_new_bool(false);
    if (n == 4 && !memcmp(start, "null", 4))
        return vd_json_new_null();
    return fail_token(ps, "invalid keyword", start, n);
}

static vd_json *parse_value(struct parser *ps);

/* Compare two key pointers (for the duplicate check). */
static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* True when obj has a key twice (O(n log n) on a sorted copy). */
static bool has_duplicate(const vd_json *obj)
{
    size_t n = obj->u.c.n, i;
    char **k;
    bool dup = false;

    if (n < 2)
        return false;
    k = malloc(n * sizeof(*k));    /* n * sizeof(ptr) fits: keys[] exists */
    if (!k)
        return true;
    memcpy(k, obj->u.c.keys, n * sizeof(*k));
    qsort(k, n, sizeof(*k), cmp_keys);
    for (i = 1; i < n && !dup; i++)
        dup = strcmp(k[i - 1], k[i]) == 0;
    free(k);
    return dup;
}

/* Parse "key": value into obj. */
static bool parse_member(struct parser *ps, vd_json *obj)
{
    char *key;
    vd_json *v;

    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, "premature EOI"), false;
    if (*ps->p != '"' && *ps->p != '\'')
        return fail(ps, *ps->p == '}' ? "expecting value" : "key is not a string in object"), false;
    key = parse_string(ps);
    if (!key)
        return false;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != ':') {
        free(key);
        return fail(ps, ps->p >= ps->end ? "premature EOI" : "missing : in object pair"), false;
    }
    ps->p++;
    v = parse_value(ps);
    if (!v || vd_json_push(obj, key, v) < 0) {
        free(key);
        vd_json_free(v);
        return v ? (fail(ps, "out of memory"), false) : false;
    }
    return true;
}

/* After an element: true to continue (','), false at close or error. */
static bool next_element(struct parser *ps, char close, const char *what, bool *done)
{
    skip_ws(ps);
    *done = false;
    if (ps->p >= ps->end)
        return fail(ps, "premature EOI"), false;
    if (*ps->p == ',') {
        ps->p++;
        return true;
    }
    if (*ps->p == close) {
        ps->p++;
        *done = true;
        return false;
    }
    if (!ps->failed)
        vd_error(EINVAL, "JSON parse error, expected separator in %s", what);
    ps->failed = true;
    return false;
}

/* Parse an object; ps->p is at '{'. */
static vd_json *parse_object(struct parser *ps)
{
    vd_json *obj = vd_json_new_object();
    bool done = false;

    if (!obj)
        return fail(ps, "out of memory");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return obj;
    }
    while (parse_member(ps, obj) && next_element(ps, '}', "dict", &done))
        ;
    if (done && has_duplicate(obj)) {
        fail(ps, "duplicate key");
        done = false;
    }
    if (!done) {
        vd_json_free(obj);
        return NULL;
    }
    return obj;
}

/* Parse one array element into arr. */
static bool parse_element(struct parser *ps, vd_json *arr)
{
    vd_json *v = parse_value(ps);

    if (!v)
        return false;
    if (vd_json_push(arr, NULL, v) < 0) {
        vd_json_free(v);
        return fail(ps, "out of memory"), false;
    }
    return true;
}

/* Parse an array; ps->p is at '['. */
static vd_json *parse_array(struct parser *ps)
{
    vd_json *arr = vd_json_new_array();
    bool done = false;

    if (!arr)
        return fail(ps, "out of memory");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return arr;
    }
    while (parse_element(ps, arr) && next_element(ps, ']', "array", &done))
        ;
    if (!done) {
        vd_json_free(arr);
        return NULL;
    }
    return arr;
}

/* Parse a container with the depth bound. */
static vd_json *parse_nested(struct parser *ps)
{
    vd_json *v;

    if (ps->depth >= ps->max_depth) {
        if (!ps->failed)
            vd_error(EINVAL, "JSON nesting depth limit exceeded");
        ps->failed = true;
        return NULL;
    }
    ps->depth++;
    v = *ps->p == '{' ? parse_object(ps) : parse_array(ps);
    ps->depth--;
    return v;
}

/* Parse any value at ps->p (after white space). */
static vd_json *parse_value(struct parser *ps)
{
    char c, *s;
    vd_json *v;

    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, "premature EOI");
    c = *ps->p;
    if (c == '{' || c == '[')
        return parse_nested(ps);
    if (c == '"' || c == '\'') {
        s = parse_string(ps);
        if (!s)
            return NULL;
        v = vd_json_new_string(s);
        free(s);
        return v ? v : fail(ps, "out of memory");
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number(ps);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return parse_keyword(ps);
    if (c == '}' || c == ']' || c == ',' || c == ':')
        return fail(ps, "expecting value");
    return fail_stray(ps, ps->p, ps->p);
}

/* See json.h. */
vd_json *vd_json_parse(const char *text, size_t len)
{
    return vd_json_parse_bounded(text, len, JSON_MAX_DEPTH, JSON_MAX_TEXT);
}

/* See json.h. */
vd_json *vd_json_parse_bounded(const char *text, size_t len, int max_depth, size_t max_len)
{
    struct parser ps = { text, text + len, 0, false, max_depth };
    vd_json *v;

    if (!text || len > max_len) {
        vd_error(EINVAL, "JSON text too large");
        return NULL;
    }
    skip_ws(&ps);
    if (ps.p >= ps.end) {
        vd_error(EINVAL, "Expecting a JSON value");
        return NULL;
    }
    v = parse_value(&ps);
    if (!v)
        return NULL;
    skip_ws(&ps);
    if (ps.p < ps.end) {
        vd_json_free(v);
        vd_error(EINVAL, "Expecting at most one JSON value");
        return NULL;
    }
    return v;
}
