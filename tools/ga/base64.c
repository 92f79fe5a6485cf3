/* SPDX-License-Identifier: BSD-3-Clause */
/* Base64 (RFC 4648, standard alphabet) for file payloads and exec output.
 * Decoding rejects anything outside the alphabet; padding may be left
 * out, as qemu-ga accepts. */
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

/* See cmds.h. */
unsigned char *ga_base64_decode(const char *s, size_t *len, struct ga_err *e)
{
    size_t n = strlen(s), pad = 0, nq;
    unsigned char *out;

    while (pad < 2 && n > pad && s[n - 1 - pad] == '=')
        pad++;
    nq = n - pad;
    for (size_t i = 0; i < nq; i++)
        if (sextet(s[i]) < 0) {
            ga_error(e, "Base64 data contains invalid characters");
            return NULL;
        }
    if (nq % 4 == 1 || (pad && n % 4)) {
        ga_error(e, "Base64 data contains invalid characters");
        return NULL;
    }
    out = malloc(nq / 4 * 3 + 3);
    if (!out) {
        ga_error(e, "out of memory");
        return NULL;
    }
    *len = 0;
    for (size_t i = 0; i < nq; i += 4) {
        size_t k = nq - i < 4 ? nq - i : 4;
        unsigned v = 0;

        for (size_t j = 0; j < 4; j++)
            v = v << 6 | (j < k ? (unsigned)sextet(s[i + j]) : 0);
        out[(*len)++] = (unsigned char)(v >> 16);
        if (k > 2)
            out[(*len)++] = (unsigned char)(v >> 8);
        if (k > 3)
            out[(*len)++] = (unsigned char)v;
    }
    return out;
}
