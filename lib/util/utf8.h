/* SPDX-License-Identifier: BSD-3-Clause */
/* UTF-8 decoding with the validity rules QEMU's JSON code applies:
 * overlong forms, surrogates, noncharacters and code points above U+10FFFF
 * are invalid, except that C0 80 (modified UTF-8) is U+0000. */
#ifndef VD_UTIL_UTF8_H
#define VD_UTIL_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Decode the sequence at s (n > 0 bytes available).  Returns the number of
 * bytes it takes (>= 1); *cp is the code point or -1 when invalid. */
size_t vd_utf8_next(const unsigned char *s, size_t n, int32_t *cp);
/* Is cp a code point QEMU accepts (not a surrogate or noncharacter)? */
int vd_utf8_valid_cp(uint32_t cp);
/* Encode cp (<= 0x10FFFF) into out (4 bytes); returns the length. */
size_t vd_utf8_encode(uint32_t cp, char *out);

#endif
