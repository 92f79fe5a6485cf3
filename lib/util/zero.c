/* SPDX-License-Identifier: BSD-3-Clause */
/* buffer_is_zero: the hot test behind sparse copies and zero detection.
 * Bytes up to an 8-byte boundary, then 64 bytes per step as words. */
#include <stdint.h>
#include <string.h>

#include "util/checked.h"

typedef uint64_t __attribute__((may_alias)) vd_word;

/* True when the len bytes at p are all zero (byte at a time). */
static bool bytes_zero(const unsigned char *p, size_t len)
{
    while (len--)
        if (*p++)
            return false;
    return true;
}

/* True when n words at w are zero; 8 words ORed per step. */
static bool words_zero(const vd_word *w, size_t n)
{
    for (; n >= 8; n -= 8, w += 8)
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return false;
    for (; n; n--, w++)
        if (*w)
            return false;
    return true;
}

/* See checked.h. */
bool buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t head, words;

    if (len == 0)
        return true;
    if (!p)
        return false;
    head = (8 - ((uintptr_t)p & 7)) & 7;
    if (head >= len)
        return bytes_zero(p, len);
    if (!bytes_zero(p, head))
        return false;
    p += head;
    len -= head;
    words = len / 8;
    if (!words_zero((const vd_word *)(const void *)p, words))
        return false;
    return bytes_zero(p + words * 8, len % 8);
}
