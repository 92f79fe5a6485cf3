/* SPDX-License-Identifier: BSD-3-Clause */
/* CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), the checksum of
 * every vhdx header, region table and log entry.  Table driven. */
#ifndef VD_FORMAT_VHDX_CRC32C_H
#define VD_FORMAT_VHDX_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC-32C: start with crc = 0 for a fresh one; the result of
 * one call is the crc argument of the next (chaining over pieces). */
uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len);
/* CRC-32C of len bytes of buf with the 4-byte field at off read as
 * zeroes (how vhdx structures checksum themselves). */
uint32_t vhdx_crc32c_skip(const uint8_t *buf, size_t len, size_t off);

#endif
