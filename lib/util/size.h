/* SPDX-License-Identifier: BSD-3-Clause */
/* Sizes as qemu-img reads and prints them. */
#ifndef VD_UTIL_SIZE_H
#define VD_UTIL_SIZE_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

/* Parse a size: digits with optional decimals and one suffix of
 * b/k/K/M/G/T/P/E (default unit given by default_suffix, e.g. 'B' for
 * bytes).  Rejects negatives, garbage and overflow: -EINVAL / -ERANGE. */
int vd_parse_size(const char *s, char default_suffix, uint64_t *out);
/* The same; *hex_suffix (may be NULL) is set for "0x10k", which qemu-img
 * accepts with "warning: Using a multiplier suffix on hex numbers is
 * deprecated: %s". */
int vd_parse_size_ex(const char *s, char default_suffix, uint64_t *out, bool *hex_suffix);
/* qemu-img's "1 GiB", "1.5 MiB", "192 KiB", "512 B" into buf. */
void vd_size_to_str(uint64_t size, char *buf, size_t len);

#endif
