/* SPDX-License-Identifier: BSD-3-Clause */
/* Zero detection of one convert request (internal to lib/copy): which parts
 * of a buffer read from the source are written as data and which as zeroes,
 * decided as qemu-img convert decides them so that targets allocate alike. */
#ifndef VD_COPY_SPARSE_H
#define VD_COPY_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The zero and data runs of a buffer: runs alternate, the first is zero
 * when first_zero, run k ends at byte end[k].  zero is scratch space. */
struct sparse_map {
    uint64_t *end;
    size_t n, cap;             /* cap >= sectors of the largest buffer + 2 */
    bool first_zero;
    bool *zero;                /* one flag per 512-byte sector, cap of them */
};

/* Is run k of m a zero run? */
static inline bool sparse_run_zero(const struct sparse_map *m, size_t k)
{
    return m->first_zero == !(k & 1);
}

/* Most ranges of a buffer known to read as zeroes (a job's holes). */
#define SPARSE_KNOWN_MAX 32

/* Byte ranges of a buffer that the source reads as zeroes, known without
 * reading them (holes of the file under the format): ascending, apart,
 * starting on sectors and ending on sectors or at the buffer's end.  Their
 * bytes in the buffer are not read, so they hold garbage until
 * sparse_fill_known. */
struct sparse_known {
    size_t n;
    uint64_t start[SPARSE_KNOWN_MAX], end[SPARSE_KNOWN_MAX];
};

/* Fill m for the len bytes of buf that land at byte off of the target:
 * min is -S (bytes, a multiple of 512, > 0), align the alignment writes
 * are steered to (bytes, a power of two, >= 512).  The sectors of known
 * (may be NULL) count as zero without being looked at. */
void sparse_scan(const char *buf, uint64_t len, uint64_t off, uint64_t min,
                 uint64_t align, const struct sparse_known *known, struct sparse_map *m);

/* Zero the bytes of known that m's data runs write (a short hole that the
 * rule folds into data). */
void sparse_fill_known(char *buf, const struct sparse_map *m, const struct sparse_known *known);

/* Add [s, e) of a len-byte buffer to k, cut inward to whole sectors (e may
 * stay at len); false when k is full. */
bool sparse_known_add(struct sparse_known *k, uint64_t s, uint64_t e, uint64_t len);

/* Slots the end and zero arrays of m need for buffers of up to len bytes. */
size_t sparse_map_slots(uint64_t len);

#endif
