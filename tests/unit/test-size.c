/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for lib/util/size.c.  Every expected value in these tables was
 * produced by qemu-img 7.2 (create -o size=..., and info on null-co images
 * of each size for the printed form). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "util/size.h"
#include "tap.h"

struct parse_case {
    const char *in;
    int ret;            /* 0, -EINVAL or -ERANGE */
    uint64_t val;
    bool hex_suffix;
};

static const struct parse_case parse_cases[] = {
    { "0", 0, 0, false }, { "1", 0, 1, false }, { "1k", 0, 1024, false },
    { "1K", 0, 1024, false }, { "1.5G", 0, 1610612736ULL, false },
    { "1e3", -EINVAL, 0, false }, { "0x10", 0, 16, false },
    { "-1", -EINVAL, 0, false }, { "-0", -EINVAL, 0, false }, { " -1", -EINVAL, 0, false },
    { "16E", -ERANGE, 0, false }, { "17E", -ERANGE, 0, false },
    { "1kb", -EINVAL, 0, false }, { "1KB", -EINVAL, 0, false },
    { "", -EINVAL, 0, false }, { " ", -EINVAL, 0, false }, { " 1", 0, 1, false },
    { "1 ", -EINVAL, 0, false }, { "1\t", -EINVAL, 0, false },
    { "1T", 0, 1099511627776ULL, false }, { "2P", 0, 2251799813685248ULL, false },
    { "1.5", -EINVAL, 0, false }, { "0.5", -EINVAL, 0, false },
    { "999999999999999999999", -ERANGE, 0, false },
    { "18446744073709551615", 0, UINT64_MAX, false },
    { "18446744073709551616", -ERANGE, 0, false },
    { "9223372036854775808", 0, 9223372036854775808ULL, false },
    { "1.5k", 0, 1536, false }, { "1b", 0, 1, false }, { "1B", 0, 1, false },
    { "0.5k", 0, 512, false }, { "1.0", 0, 1, false }, { "1.", 0, 1, false },
    { "1.000", 0, 1, false }, { "0.0", 0, 0, false }, { "1.0b", 0, 1, false },
    { ".5k", -EINVAL, 0, false }, { "1m", 0, 1048576, false }, { "1g", 0, 1073741824ULL, false },
    { "1t", 0, 1099511627776ULL, false }, { "1p", 0, 1125899906842624ULL, false },
    { "1e", 0, 1152921504606846976ULL, false }, { "1E", 0, 1152921504606846976ULL, false },
    { "8E", 0, 9223372036854775808ULL, false },
    { "7.99E", 0, 9211842821808707328ULL, false },
    { "1.5E", 0, 1729382256910270464ULL, false }, { "1.5e", 0, 1729382256910270464ULL, false },
    { "1k5", -EINVAL, 0, false }, { "+1", 0, 1, false }, { "1 k", -EINVAL, 0, false },
    { "1kk", -EINVAL, 0, false }, { "1.00000000001k", 0, 1024, false },
    { "0.0001k", 0, 0, false }, { "1.5b", -EINVAL, 0, false }, { "1.5B", -EINVAL, 0, false },
    { "00012", 0, 12, false }, { "010", 0, 10, false }, { "1,5", -EINVAL, 0, false },
    { "1x", -EINVAL, 0, false }, { "inf", -EINVAL, 0, false }, { "nan", -EINVAL, 0, false },
    { "1.25k", 0, 1280, false }, { "1.1k", 0, 1126, false }, { "1.001k", 0, 1025, false },
    { "0x10k", 0, 16384, true }, { "0x1.5k", -EINVAL, 0, false }, { "0x1e", 0, 30, false },
    { "0x10b", 0, 267, false }, { "0X10", 0, 16, false }, { "0x", -EINVAL, 0, false },
    { "0xg", -EINVAL, 0, false }, { "0x1p", 0, 1125899906842624ULL, true },
    { "0x 10", -EINVAL, 0, false }, { "  0x10", 0, 16, false },
    { "0xffffffffffffffff", 0, UINT64_MAX, false },
    { "0x10000000000000000", -ERANGE, 0, false },
    { "1.5e1", -EINVAL, 0, false }, { "1.5e1k", -EINVAL, 0, false }, { "1.5E3", -EINVAL, 0, false },
    { "1e-3k", -EINVAL, 0, false }, { "1.5x", -EINVAL, 0, false }, { "1.-5k", -EINVAL, 0, false },
    { "1.+5k", -EINVAL, 0, false }, { "1. 5k", -EINVAL, 0, false }, { "1.0x10k", -EINVAL, 0, false },
    { "1..5k", -EINVAL, 0, false }, { "1.5.k", -EINVAL, 0, false },
    { "0.9999999999999999999999k", 0, 0, false },          /* fraction rounds to 1.0 */
    { "1.99999999999999999999999999k", 0, 1024, false },
    { "1.99999999999999999999", 0, 1, false },
    { "15.9999999999999999E", 0, UINT64_MAX - 127, false },
    { "7.9999999999999999E", 0, 9223372036854775680ULL, false },
    { "7.999999999999999E", 0, 9223372036854774656ULL, false },
    { "3.14159265358979323846264338327950288419716939937510k", 0, 3217, false },
    { "00.5k", 0, 512, false }, { "0x0.5k", -EINVAL, 0, false }, { "1K2", -EINVAL, 0, false },
    { "4294967296.5k", 0, 4398046511616ULL, false },
    { "17592186044415.999k", 0, 18014398509481983ULL, false },
    { "0.49999999999999k", 0, 512, false },
    { "0.00048828125k", 0, 1, false },                    /* exactly 0.5 rounds up */
    { "0.0004882812499k", 0, 0, false },
    { "0x1.k", -EINVAL, 0, false }, { ".k", -EINVAL, 0, false }, { "1.k", 0, 1024, false },
    { "0.k", 0, 0, false }, { "1-", -EINVAL, 0, false },
    { "1.5 ", -EINVAL, 0, false }, { "2.5M", 0, 2621440, false },
};

struct str_case {
    uint64_t size;
    const char *str;
};

static const struct str_case str_cases[] = {
    { 0ULL, "0 B" },
    { 512ULL, "512 B" },
    { 1024ULL, "1 KiB" },
    { 1536ULL, "1.5 KiB" },
    { 5120ULL, "5 KiB" },
    { 6144ULL, "6 KiB" },
    { 10240ULL, "10 KiB" },
    { 79872ULL, "78 KiB" },
    { 1023488ULL, "1e+03 KiB" },
    { 1024000ULL, "0.977 MiB" },
    { 1047552ULL, "0.999 MiB" },
    { 1048576ULL, "1 MiB" },
    { 2097152ULL, "2 MiB" },
    { 5127168ULL, "4.89 MiB" },
    { 32033280ULL, "30.5 MiB" },
    { 123457024ULL, "118 MiB" },
    { 150563840ULL, "144 MiB" },
    { 167512576ULL, "160 MiB" },
    { 174272000ULL, "166 MiB" },
    { 516841984ULL, "493 MiB" },
    { 1048576000ULL, "0.977 GiB" },
    { 1073741824ULL, "1 GiB" },
    { 5000000000ULL, "4.66 GiB" },
    { 68719476736ULL, "64 GiB" },
    { 211455568384ULL, "197 GiB" },
    { 274877906944ULL, "256 GiB" },
    { 1099511627776ULL, "1 TiB" },
    { 6293531751424ULL, "5.72 TiB" },
    { 6968139299840ULL, "6.34 TiB" },
    { 7534406173184ULL, "6.85 TiB" },
    { 47850912926720ULL, "43.5 TiB" },
    { 92673220737536ULL, "84.3 TiB" },
    { 118221226107904ULL, "108 TiB" },
    { 140737488355840ULL, "128 TiB" },
    { 146461188624896ULL, "133 TiB" },
    { 562949953421824ULL, "512 TiB" },
    { 1048441520911360ULL, "954 TiB" },
    { 1125899906842624ULL, "1 PiB" },
    { 1820733572544512ULL, "1.62 PiB" },
    { 1926404313137152ULL, "1.71 PiB" },
    { 4940790565516800ULL, "4.39 PiB" },
    { 9007199254740992ULL, "8 PiB" },
    { 10290658585044992ULL, "9.14 PiB" },
    { 467137341702140928ULL, "415 PiB" },
    { 1141007483877895680ULL, "0.99 EiB" },
    { 1152921504606846976ULL, "1 EiB" },
    { 4611686018427387904ULL, "4 EiB" },
    { 999ULL, "999 B" }, { 1000ULL, "0.977 KiB" }, { 1ULL, "1 B" },
    { 9223372036854775807ULL, "8 EiB" }, { UINT64_MAX, "16 EiB" },
};

/* The parse table, plus the hex-suffix flag. */
static void test_parse(void)
{
    size_t i;

    for (i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
        const struct parse_case *c = &parse_cases[i];
        uint64_t v = 12345;
        bool hex = false;
        int r = vd_parse_size_ex(c->in, 'B', &v, &hex);

        if (r != c->ret || (r == 0 && (v != c->val || hex != c->hex_suffix)))
            fprintf(stderr, "case \"%s\": got %d/%llu\n", c->in, r, (unsigned long long)v);
        CHECK_EQ_INT(r, c->ret);
        if (c->ret == 0) {
            CHECK(v == c->val);
            CHECK(hex == c->hex_suffix);
        }
    }
}

/* A long fraction that under-flows strtod: qemu-img skips one character
 * (here the suffix) and yields 1; at the end of the string it is invalid. */
static void test_underflow(void)
{
    char buf[512];
    uint64_t v;

    snprintf(buf, sizeof(buf), "1.%0400dk", 1);
    CHECK_EQ_INT(vd_parse_size(buf, 'B', &v), 0);
    CHECK_EQ_INT(v, 1);
    snprintf(buf, sizeof(buf), "1.%0400d", 1);
    CHECK_EQ_INT(vd_parse_size(buf, 'B', &v), -EINVAL);
}

/* Default units other than bytes; NULL input. */
static void test_default_suffix(void)
{
    uint64_t v;

    CHECK_EQ_INT(vd_parse_size("2", 'M', &v), 0);
    CHECK_EQ_INT(v, 2097152);
    CHECK_EQ_INT(vd_parse_size("1.5", 'M', &v), 0);
    CHECK_EQ_INT(v, 1572864);
    CHECK_EQ_INT(vd_parse_size("2k", 'M', &v), 0);
    CHECK_EQ_INT(v, 2048);
    CHECK_EQ_INT(vd_parse_size("2", 0, &v), 0);
    CHECK_EQ_INT(v, 2);
    CHECK_EQ_INT(vd_parse_size("2", 'x', &v), -EINVAL);
    CHECK_EQ_INT(vd_parse_size(NULL, 'B', &v), -EINVAL);
}

/* The printed form, and truncation into a small buffer. */
static void test_to_str(void)
{
    char buf[32];
    size_t i;

    for (i = 0; i < sizeof(str_cases) / sizeof(str_cases[0]); i++) {
        vd_size_to_str(str_cases[i].size, buf, sizeof(buf));
        CHECK_EQ_STR(buf, str_cases[i].str);
    }
    vd_size_to_str(1536, buf, 4);
    CHECK_EQ_STR(buf, "1.5");
    vd_size_to_str(1536, NULL, 0);
}

int main(void)
{
    test_parse();
    test_underflow();
    test_default_suffix();
    test_to_str();
    return TAP_DONE();
}
