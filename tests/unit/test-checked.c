/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for lib/util/checked.h: overflow-checked arithmetic, alignment
 * helpers, checked allocation and buffer_is_zero. */
#include <stdint.h>
#include <string.h>

#include "util/checked.h"
#include "tap.h"

/* ADD/SUB/MUL_OVERFLOW at the edges of 64 and 32 bits. */
static void test_overflow(void)
{
    uint64_t r;
    uint32_t r32;
    int64_t s;

    CHECK(!ADD_OVERFLOW(UINT64_MAX - 1, (uint64_t)1, &r) && r == UINT64_MAX);
    CHECK(ADD_OVERFLOW(UINT64_MAX, (uint64_t)1, &r));
    CHECK(SUB_OVERFLOW((uint64_t)0, (uint64_t)1, &r));
    CHECK(!SUB_OVERFLOW((uint64_t)5, (uint64_t)5, &r) && r == 0);
    CHECK(MUL_OVERFLOW((uint64_t)1 << 32, (uint64_t)1 << 32, &r));
    CHECK(!MUL_OVERFLOW((uint64_t)1 << 31, (uint64_t)1 << 32, &r) && r == (uint64_t)1 << 63);
    CHECK(ADD_OVERFLOW(UINT32_MAX, 1u, &r32));
    CHECK(!ADD_OVERFLOW((uint32_t)UINT32_MAX, 1u, &r));   /* wider result: fits */
    CHECK(ADD_OVERFLOW(INT64_MAX, (int64_t)1, &s));
    CHECK(SUB_OVERFLOW(INT64_MIN, (int64_t)1, &s));
    CHECK(MUL_OVERFLOW((int64_t)-1, INT64_MIN, &s));
}

/* Power-of-two, alignment and rounding helpers. */
static void test_align(void)
{
    uint64_t r;

    CHECK(!is_power_of_2(0));
    CHECK(is_power_of_2(1) && is_power_of_2((uint64_t)1 << 63));
    CHECK(!is_power_of_2(3) && !is_power_of_2(UINT64_MAX));
    CHECK(is_aligned(4096, 512) && !is_aligned(4097, 512) && is_aligned(0, 65536));
    CHECK_EQ_INT(round_down(65537, 65536), 65536);
    CHECK(round_up_checked(1, 512, &r) && r == 512);
    CHECK(round_up_checked(512, 512, &r) && r == 512);
    CHECK(round_up_checked(0, 512, &r) && r == 0);
    CHECK(!round_up_checked(UINT64_MAX, 512, &r));
    CHECK(!round_up_checked(UINT64_MAX - 510, 512, &r));
    CHECK(round_up_checked(UINT64_MAX - 511, 512, &r) && r == UINT64_MAX - 511);
    CHECK_EQ_INT(div_round_up(0, 7), 0);
    CHECK_EQ_INT(div_round_up(7, 7), 1);
    CHECK_EQ_INT(div_round_up(8, 7), 2);
    CHECK(div_round_up(UINT64_MAX, 2) == (uint64_t)1 << 63);
    CHECK_EQ_INT(VD_MIN(3, 4), 3);
    CHECK_EQ_INT(VD_MAX(3, 4), 4);
}

/* range_ok with overflowing offsets. */
static void test_range(void)
{
    CHECK(range_ok(0, 0, 0));
    CHECK(range_ok(0, 10, 10));
    CHECK(!range_ok(1, 10, 10));
    CHECK(range_ok(10, 0, 10));
    CHECK(!range_ok(11, 0, 10));
    CHECK(!range_ok(UINT64_MAX, 2, UINT64_MAX));
    CHECK(!range_ok(2, UINT64_MAX, UINT64_MAX));
    CHECK(range_ok(1, UINT64_MAX - 1, UINT64_MAX));
}

/* vd_calloc_array refuses overflowing counts, allows zero. */
static void test_calloc(void)
{
    void *p;

    CHECK(vd_calloc_array(SIZE_MAX / 2, 4) == NULL);
    CHECK(vd_calloc_array((size_t)1 << 40, (size_t)1 << 40) == NULL);
    p = vd_calloc_array(0, 8);
    CHECK(p != NULL);
    free(p);
    p = vd_calloc_array(16, 16);
    CHECK(p && buffer_is_zero(p, 256));
    free(p);
}

/* CLEANUP_FREE frees at scope exit (run under ASan/valgrind to see). */
static void test_cleanup(void)
{
    CLEANUP_FREE char *s = malloc(16);

    CHECK(s != NULL);
}

/* buffer_is_zero at every alignment, length and position of a set byte. */
static void test_zero(void)
{
    static unsigned char buf[512 + 16];
    size_t off, len, pos;
    int bad = 0;

    CHECK(buffer_is_zero(NULL, 0));
    CHECK(buffer_is_zero(buf, sizeof(buf)));
    for (off = 0; off < 16; off++) {
        for (len = 0; len <= 300; len++) {
            if (!buffer_is_zero(buf + off, len))
                bad++;
            for (pos = 0; pos < len; pos += (len > 40 ? 7 : 1)) {
                buf[off + pos] = 0x80;
                if (buffer_is_zero(buf + off, len))
                    bad++;
                buf[off + pos] = 0;
            }
            buf[off + len] = 1;     /* just past the end: must not be seen */
            if (!buffer_is_zero(buf + off, len))
                bad++;
            buf[off + len] = 0;
        }
    }
    CHECK_EQ_INT(bad, 0);
    buf[sizeof(buf) - 1] = 1;
    CHECK(!buffer_is_zero(buf, sizeof(buf)));
    CHECK(buffer_is_zero(buf, sizeof(buf) - 1));
}

int main(void)
{
    test_overflow();
    test_align();
    test_range();
    test_calloc();
    test_cleanup();
    test_zero();
    return TAP_DONE();
}
