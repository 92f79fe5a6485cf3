/* SPDX-License-Identifier: BSD-3-Clause */
/* RFC 3986 URI parsing for protocol drivers (nbd://, ssh://, iscsi://...).
 * Absolute URIs only; every component is checked against the RFC's
 * character classes, percent escapes must be well formed (and not %00),
 * IPv6 literals are checked with inet_pton, ports must be 0..65535. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "util/uri.h"

/* RFC 3986 "unreserved". */
static bool is_unreserved(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* RFC 3986 "sub-delims". */
static bool is_sub_delim(char c)
{
    return c && strchr("!$&'()*+,;=", c) != NULL;
}

/* Value of a hex digit, -1 otherwise. */
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

/* True when s[0..len) uses only unreserved, sub-delims, the characters in
 * extra, and well-formed %HH escapes. */
static bool chars_ok(const char *s, size_t len, const char *extra)
{
    size_t i;

    for (i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            if (len - i < 3 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
                return false;
            i += 2;
        } else if (!is_unreserved(c) && !is_sub_delim(c) && !(c && strchr(extra, c))) {
            return false;
        }
    }
    return true;
}

/* See uri.h: %HH decoding; NULL on a bad escape, %00 or no memory. */
char *vd_uri_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;   /* len < SIZE_MAX: s exists */
    size_t i;

    if (!out)
        return NULL;
    for (i = 0; i < len; i++) {
        if (s[i] != '%') {
            if (s[i] == '\0')
                goto bad;
            *o++ = s[i];
            continue;
        }
        if (len - i < 3 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
            goto bad;
        *o = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
        if (*o++ == '\0')
            goto bad;
        i += 2;
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* Record the standard message for malformed input. */
static int bad_uri(const char *what)
{
    return vd_error(EINVAL, "Invalid URI: %s", what);
}

/* Decode s[0..len) into *out after a character-class check. */
static int decode_part(const char *s, size_t len, const char *extra, char **out,
                       const char *what)
{
    if (!chars_ok(s, len, extra))
        return bad_uri(what);
    *out = vd_uri_decode(s, len);
    return *out ? 0 : bad_uri(what);
}

/* Scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) followed by ':'. */
static int parse_scheme(const char **pp, struct vd_uri *u)
{
    const char *s = *pp, *p = s;

    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        return bad_uri("missing scheme");
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
           (*p >= '0' && *p <= '9') || *p == '+' || *p == '-' || *p == '.')
        p++;
    if (*p != ':')
        return bad_uri("missing scheme");
    u->scheme = strndup(s, (size_t)(p - s));
    if (!u->scheme)
        return vd_error(ENOMEM, "Out of memory");
    *pp = p + 1;
    return 0;
}

/* Userinfo "user[:password]" of length len at s. */
static int parse_userinfo(const char *s, size_t len, struct vd_uri *u)
{
    const char *colon = memchr(s, ':', len);
    size_t ulen = colon ? (size_t)(colon - s) : len;

    if (decode_part(s, ulen, "", &u->user, "bad user name") < 0)
        return -EINVAL;
    if (colon)
        return decode_part(colon + 1, len - ulen - 1, ":", &u->password, "bad password");
    return 0;
}

/* Port digits after ':'; empty means absent (RFC 3986 allows "host:"). */
static int parse_port(const char *s, size_t len, struct vd_uri *u)
{
    long v = 0;
    size_t i;

    if (len == 0)
        return 0;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return bad_uri("bad port number");
        v = v * 10 + (s[i] - '0');
        if (v > 65535)
            return bad_uri("port number out of range");
    }
    u->port = (int)v;
    return 0;
}

/* "[v6]" host; *rest is set after ']'.  Zone IDs (%25...) are allowed. */
static int parse_ipv6(const char *s, size_t len, struct vd_uri *u, size_t *rest)
{
    const char *close = memchr(s, ']', len);
    struct in6_addr a;
    char tmp[INET6_ADDRSTRLEN + 1];
    size_t n, addr_len;
    const char *zone;

    if (!close)
        return bad_uri("missing ']' after IPv6 address");
    n = (size_t)(close - s - 1);
    zone = memchr(s + 1, '%', n);
    addr_len = zone ? (size_t)(zone - s - 1) : n;
    if (addr_len == 0 || addr_len >= sizeof(tmp))
        return bad_uri("bad IPv6 address");
    memcpy(tmp, s + 1, addr_len);
    tmp[addr_len] = '\0';
    if (inet_pton(AF_INET6, tmp, &a) != 1)
        return bad_uri("bad IPv6 address");
    if (zone && (n - addr_len < 4 || memcmp(zone, "%25", 3) != 0))
        return bad_uri("bad IPv6 zone");
    if (decode_part(s + 1, n, ":", &u->host, "bad IPv6 address") < 0)
        return -EINVAL;
    *rest = (size_t)(close - s) + 1;
    return 0;
}

/* host[:port] of length len at s. */
static int parse_hostport(const char *s, size_t len, struct vd_uri *u)
{
    size_t hlen = 0;
    const char *colon;

    if (len && s[0] == '[') {
        if (parse_ipv6(s, len, u, &hlen) < 0)
            return -EINVAL;
        if (hlen < len && s[hlen] != ':')
            return bad_uri("junk after IPv6 address");
        return hlen < len ? parse_port(s + hlen + 1, len - hlen - 1, u) : 0;
    }
    colon = memchr(s, ':', len);
    hlen = colon ? (size_t)(colon - s) : len;
    if (decode_part(s, hlen, "", &u->host, "bad host name") < 0)
        return -EINVAL;
    return colon ? parse_port(colon + 1, len - hlen - 1, u) : 0;
}

/* Authority after "//" up to the next '/', '?', '#' or the end. */
static int parse_authority(const char **pp, struct vd_uri *u)
{
    const char *s = *pp;
    size_t len = strcspn(s, "/?#");
    const char *at = NULL;
    size_t i;

    for (i = 0; i < len; i++)
        if (s[i] == '@')
            at = s + i;
    if (at && parse_userinfo(s, (size_t)(at - s), u) < 0)
        return -EINVAL;
    if (at && memchr(s, '@', (size_t)(at - s)))
        return bad_uri("'@' in user information");
    i = at ? (size_t)(at - s) + 1 : 0;
    if (parse_hostport(s + i, len - i, u) < 0)
        return -EINVAL;
    *pp = s + len;
    return 0;
}

/* Path, then "?query" and "#fragment". */
static int parse_tail(const char *p, struct vd_uri *u)
{
    size_t len = strcspn(p, "?#");
    const char *q;

    if (decode_part(p, len, ":@/", &u->path, "bad path") < 0)
        return -EINVAL;
    p += len;
    if (*p == '?') {
        q = ++p;
        len = strcspn(p, "#");
        if (!chars_ok(q, len, ":@/?") || !(u->query = strndup(q, len)))
            return bad_uri("bad query");
        p += len;
    }
    if (*p == '#') {
        len = strlen(++p);
        if (!chars_ok(p, len, ":@/?") || !(u->fragment = strndup(p, len)))
            return bad_uri("bad fragment");
    }
    return 0;
}

/* See uri.h. */
int vd_uri_parse(const char *s, struct vd_uri *u)
{
    const char *p = s;

    if (!u)
        return -EINVAL;
    memset(u, 0, sizeof(*u));
    u->port = -1;
    if (!s)
        return bad_uri("empty");
    if (parse_scheme(&p, u) < 0)
        goto fail;
    if (p[0] == '/' && p[1] == '/') {
        p += 2;
        if (parse_authority(&p, u) < 0)
            goto fail;
    }
    if (parse_tail(p, u) < 0)
        goto fail;
    return 0;
fail:
    vd_uri_free(u);
    return -EINVAL;
}

/* See uri.h. */
void vd_uri_free(struct vd_uri *u)
{
    if (!u)
        return;
    free(u->scheme);
    free(u->user);
    free(u->password);
    free(u->host);
    free(u->path);
    free(u->query);
    free(u->fragment);
    memset(u, 0, sizeof(*u));
    u->port = -1;
}

/* Does the query element [s, s+len) have the key name?  *val is its value. */
static bool param_match(const char *s, size_t len, const char *name,
                        const char **val, size_t *vlen)
{
    const char *eq = memchr(s, '=', len);
    size_t klen = eq ? (size_t)(eq - s) : len;
    char *key = vd_uri_decode(s, klen);
    bool match = key && strcmp(key, name) == 0;

    free(key);
    *val = eq ? eq + 1 : s + len;
    *vlen = eq ? len - klen - 1 : 0;
    return match;
}

/* See uri.h: parameters are separated by '&' or ';'; the first match wins;
 * a parameter without '=' has the empty value. */
char *vd_uri_query_param(const struct vd_uri *u, const char *name)
{
    const char *p, *val;
    size_t len, vlen;

    if (!u || !u->query || !name)
        return NULL;
    for (p = u->query;; p += len + 1) {
        len = strcspn(p, "&;");
        if (param_match(p, len, name, &val, &vlen))
            return vd_uri_decode(val, vlen);
        if (p[len] == '\0')
            return NULL;
    }
}
