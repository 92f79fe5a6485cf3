/* SPDX-License-Identifier: BSD-3-Clause */
/* CRC-32C, byte at a time over a table built on first use. */
#include <pthread.h>

#include "format/vhdx/crc32c.h"

#define CRC32C_POLY 0x82f63b78u

static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

/* Fill the table: the CRC of each byte value. */
static void build_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        table[i] = c;
    }
}

/* See crc32c.h. */
uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    pthread_once(&table_once, build_table);
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* See crc32c.h. */
uint32_t vhdx_crc32c_skip(const uint8_t *buf, size_t len, size_t off)
{
    static const uint8_t zero[4];
    uint32_t crc = vhdx_crc32c(0, buf, off);

    crc = vhdx_crc32c(crc, zero, 4);
    return vhdx_crc32c(crc, buf + off + 4, len - off - 4);
}
