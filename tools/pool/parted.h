/* SPDX-License-Identifier: BSD-3-Clause */
/* A partition table as parted lists it (parted.c reads the listings). */
#ifndef VD_POOL_PARTED_H
#define VD_POOL_PARTED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PARTED_SECTOR 512
#define PARTED_MAX_PARTS 256

enum part_kind { PART_PRIMARY, PART_EXTENDED, PART_LOGICAL, PART_FREE, PART_FREE_LOGICAL };

/* One line of parted's listing: a partition or a free extent. */
struct part {
    enum part_kind kind;
    unsigned num;
    uint64_t start, end;           /* bytes, end exclusive */
};

/* A partition table as parted shows it. */
struct part_table {
    char label[32];
    uint64_t cyl;                  /* bytes per cylinder (dos alignment) */
    uint64_t limit;                /* dos: end of the last whole cylinder */
    size_t n;
    struct part p[PARTED_MAX_PARTS];
};

/* Read parted's "unit B print free" text (changed in place) into t:
 * 0, or -1 when a row is malformed or there are too many. */
int parted_parse_listing(char *text, struct part_table *t);
/* Bytes per cylinder and the end of the last whole cylinder from the
 * "BIOS cylinder,head,sector geometry" line: 0 or -1. */
int parted_parse_geometry(const char *text, uint64_t *cyl, uint64_t *limit);
/* Cut the free extents of a dos table at t->limit. */
void parted_clamp_free(struct part_table *t);

#endif
