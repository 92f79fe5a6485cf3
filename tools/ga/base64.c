/* SPDX-License-Identifier: BSD-3-Clause */
/* Base64 (RFC 4648, standard alphabet) for file payloads and exec output.
 * Decoding rejects anything outside the alphabet and '=', and is as
 * lenient as qemu-ga's about where '=' appears. */
#include <stdlib.h>
#include <string.h>

#include "cmds.h"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* See cmds.h. */
char *ga_base64_encode(const unsigned char *p, size_t n)
{
    char *out = malloc(n / 3 * 4 + 5), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        size_t k = n - i < 3 ? n - i : 3;

        if (k > 1)
            v |= (unsigned)p[i + 1] << 8;
        if (k > 2)
            v |= p[i + 2];
        *o++ = alphabet[v >> 18 & 63];
        *o++ = alphabet[v >> 12 & 63];
        *o++ = k > 1 ? alphabet[v >> 6 & 63] : '=';
        *o++ = k > 2 ? alphabet[v & 63] : '=';
    }
    *o = 0;
    return out;
}

/* Value of one alphabet character, -1 otherwise. */
static int sextet(char c)
{
    const char *p = c ? strchr(alphabet, c) : NULL;

    return p ? (int)(p - alphabet) : -1;
}

/* See cmds.h: every character must be of the alphabet or '='; then
 * groups of four decode to three bytes, fewer when the group's last one
 * or two characters are '=' ('=' otherwise counts as zero bits), and a
 * trailing incomplete group is dropped -- the way qemu-ga decodes. */
unsigned char *ga_base64_decode(const char *s, size_t *len, struct ga_err *e)
{
    size_t n = strlen(s), i = 0;
    unsigned char *out, *o;
    unsigned v = 0;
    char last0 = 0, last1 = 0;

    for (size_t k = 0; k < n; k++)
        if (s[k] != '=' && sextet(s[k]) < 0) {
            ga_error(e, "Base64 data contains invalid characters");
            return NULL;
        }
    out = o = malloc(n / 4 * 3 + 1);
    if (!out) {
        ga_error(e, "out of memory");
        return NULL;
    }
    for (size_t k = 0; k < n; k++) {
        last1 = last0;
        last0 = s[k];
        v = v << 6 | (s[k] == '=' ? 0u : (unsigned)sextet(s[k]));
        if (++i == 4) {
            *o++ = (unsigned char)(v >> 16);
            if (last1 != '=')
                *o++ = (unsigned char)(v >> 8);
            if (last0 != '=')
                *o++ = (unsigned char)v;
            i = 0;
            v = 0;
        }
    }
    *len = (size_t)(o - out);
    return out;
}
