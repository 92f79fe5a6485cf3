/* SPDX-License-Identifier: BSD-3-Clause */
/* UTF-8 decode/encode for the JSON printer and parser (rules in utf8.h,
 * established by feeding file names to qemu-img info --output=json). */
#include "util/utf8.h"

/* See utf8.h. */
int vd_utf8_valid_cp(uint32_t cp)
{
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE)
        return 0;
    return 1;
}

/* Length of a sequence from its lead byte; 0 for a byte that cannot lead. */
static size_t lead_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c < 0xC0 || c >= 0xFE)
        return 0;
    if (c < 0xE0)
        return 2;
    if (c < 0xF0)
        return 3;
    if (c < 0xF8)
        return 4;
    return c < 0xFC ? 5 : 6;
}

/* See utf8.h. */
size_t vd_utf8_next(const unsigned char *s, size_t n, int32_t *cp)
{
    static const uint32_t min_cp[] = { 0, 0, 0x80, 0x800, 0x10000 };
    size_t len = lead_len(s[0]), i;
    uint32_t v;

    *cp = -1;
    if (len == 0)
        return 1;
    if (len == 1) {
        *cp = s[0];
        return 1;
    }
    v = s[0] & (0x7Fu >> len);
    for (i = 1; i < len; i++) {
        if (i >= n || (s[i] & 0xC0) != 0x80)
            return i;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (len == 2 && v == 0)
        *cp = 0;
    else if (len <= 4 && v >= min_cp[len] && vd_utf8_valid_cp(v))
        *cp = (int32_t)v;
    return len;
}

/* See utf8.h. */
size_t vd_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}
