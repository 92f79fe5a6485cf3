/* SPDX-License-Identifier: BSD-3-Clause */
/* Overflow-checked arithmetic and alignment helpers.  Every number read from
 * an image or the wire passes through these before it becomes an offset, a
 * size or an allocation. */
#ifndef VD_UTIL_CHECKED_H
#define VD_UTIL_CHECKED_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* True on overflow; *r is the wrapped result then. */
#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow((a), (b), (r))
#define SUB_OVERFLOW(a, b, r) __builtin_sub_overflow((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow((a), (b), (r))

#define VD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define VD_MAX(a, b) ((a) > (b) ? (a) : (b))
#define VD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline bool is_power_of_2(uint64_t v) { return v && !(v & (v - 1)); }
/* align must be a power of two. */
static inline bool is_aligned(uint64_t v, uint64_t align) { return !(v & (align - 1)); }
static inline uint64_t round_down(uint64_t v, uint64_t align) { return v & ~(align - 1); }
/* Round up; false when the result does not fit in 64 bits. */
static inline bool round_up_checked(uint64_t v, uint64_t align, uint64_t *r)
{
    uint64_t t;
    if (ADD_OVERFLOW(v, align - 1, &t))
        return false;
    *r = t & ~(align - 1);
    return true;
}
static inline uint64_t div_round_up(uint64_t n, uint64_t d) { return n / d + (n % d != 0); }

/* True when [off, off+len) lies inside [0, size) without overflow. */
static inline bool range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    uint64_t end;
    return !ADD_OVERFLOW(off, len, &end) && end <= size;
}

/* Is the buffer all zero bytes? */
bool buffer_is_zero(const void *buf, size_t len);

/* Allocation of n elements of size sz with overflow check; NULL on error. */
static inline void *vd_calloc_array(size_t n, size_t sz)
{
    size_t t;
    if (MUL_OVERFLOW(n, sz, &t))
        return NULL;
    return calloc(n ? n : 1, sz ? sz : 1);
}

/* Scope cleanup helpers. */
static inline void vd_freep(void *p) { free(*(void **)p); }
#define CLEANUP_FREE __attribute__((cleanup(vd_freep)))

#endif
