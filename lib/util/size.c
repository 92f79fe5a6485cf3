/* SPDX-License-Identifier: BSD-3-Clause */
/* Sizes as qemu-img reads them ("1.5G", "0x200", "64k") and prints them
 * ("1.5 GiB").  The rules were taken from running qemu-img 7.2; see
 * tests/unit/test-size.c for the table of cases checked against it. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/size.h"

/* Multiplier for a suffix character, 0 when c is not a suffix. */
static uint64_t suffix_mul(char c)
{
    switch (c) {
    case 'b': case 'B': return 1;
    case 'k': case 'K': return 1ULL << 10;
    case 'm': case 'M': return 1ULL << 20;
    case 'g': case 'G': return 1ULL << 30;
    case 't': case 'T': return 1ULL << 40;
    case 'p': case 'P': return 1ULL << 50;
    case 'e': case 'E': return 1ULL << 60;
    default: return 0;
    }
}

/* strtoull in a base, with errno folded into the return value. */
static int parse_u64(const char *s, int base, const char **end, uint64_t *v)
{
    char *e;

    errno = 0;
    *v = strtoull(s, &e, base);
    *end = e;
    if (e == s)
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    return 0;
}

/* Parse the ".ddd" fraction at *pp into a 0.64 fixed-point value.
 * As qemu-img: exponents are refused; a fraction that does not parse (or
 * under-flows) is skipped by one character past where parsing stopped; a
 * fraction that rounds to 1.0 counts as zero. */
static int parse_fraction(const char **pp, uint64_t *valf)
{
    const char *f = *pp;
    char *e;
    double d;

    errno = 0;
    d = strtod(f, &e);
    *valf = 0;
    if (e == f || errno == ERANGE || !isfinite(d)) {
        if (*e == '\0')
            return -EINVAL;        /* qemu would read past the end */
        *pp = e + 1;
        return 0;
    }
    if (memchr(f, 'e', (size_t)(e - f)) || memchr(f, 'E', (size_t)(e - f)))
        return -EINVAL;
    if (d > 0 && d < 1.0)
        *valf = (uint64_t)ldexp(d, 64);
    *pp = e;
    return 0;
}

/* val.valf * mul, rounded half up; -ERANGE when above 2^64-1. */
static int scale(uint64_t val, uint64_t valf, uint64_t mul, uint64_t *out)
{
    unsigned __int128 whole = (unsigned __int128)val * mul;
    unsigned __int128 frac = (unsigned __int128)valf * mul;
    unsigned __int128 r = whole + (frac >> 64) + ((uint64_t)frac >> 63);

    if (r >> 64)
        return -ERANGE;
    *out = (uint64_t)r;
    return 0;
}

/* Integer part: decimal, or hex after "0x" (then no fraction allowed). */
static int parse_int_part(const char *s, const char **p, uint64_t *val, bool *hex)
{
    int r = parse_u64(s, 10, p, val);

    if (r < 0)
        return r;
    if (memchr(s, '-', (size_t)(*p - s)))
        return -EINVAL;
    *hex = false;
    if (*val == 0 && (**p == 'x' || **p == 'X')) {
        r = parse_u64(s, 16, p, val);
        if (r < 0)
            return r;
        if (**p == '.')
            return -EINVAL;
        *hex = true;
    }
    return 0;
}

/* See size.h.  *hex_suffix (may be NULL) is set when a hex number carried
 * a multiplier suffix, which qemu-img accepts with a deprecation warning. */
int vd_parse_size_ex(const char *s, char default_suffix, uint64_t *out,
                     bool *hex_suffix)
{
    const char *p;
    uint64_t val, valf = 0, mul;
    bool hex;
    int r;

    if (hex_suffix)
        *hex_suffix = false;
    if (!s)
        return -EINVAL;
    r = parse_int_part(s, &p, &val, &hex);
    if (r < 0)
        return r;
    if (!hex && *p == '.' && parse_fraction(&p, &valf) < 0)
        return -EINVAL;
    mul = suffix_mul(*p);
    if (mul) {
        if (hex && hex_suffix)
            *hex_suffix = true;
        p++;
    } else {
        mul = suffix_mul(default_suffix ? default_suffix : 'B');
        if (!mul)
            return -EINVAL;
    }
    if (*p != '\0')
        return -EINVAL;
    if (mul == 1 && valf != 0)
        return -EINVAL;            /* fractional bytes */
    return scale(val, valf, mul, out);
}

/* See size.h. */
int vd_parse_size(const char *s, char default_suffix, uint64_t *out)
{
    return vd_parse_size_ex(s, default_suffix, out, NULL);
}

/* See size.h: three significant digits, the unit chosen so that the size
 * is at least 1000/1024 of it ("0.977 MiB" for 1000 KiB). */
void vd_size_to_str(uint64_t size, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    int e = 0, i;

    if (!buf || !len)
        return;
    frexp((double)size / (1000.0 / 1024.0), &e);
    i = (e - 1) / 10;
    if (i < 0)
        i = 0;
    if (i > 6)
        i = 6;
    snprintf(buf, len, "%0.3g %s", (double)size / (double)(1ULL << (i * 10)), units[i]);
}
