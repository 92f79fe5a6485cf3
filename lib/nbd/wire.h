/* SPDX-License-Identifier: BSD-3-Clause */
/* Socket helpers shared by the NBD server and client: move exactly n bytes
 * (retrying on EINTR and short transfers), optionally before a deadline,
 * and big-endian field access for building and parsing wire messages. */
#ifndef VD_NBD_WIRE_H
#define VD_NBD_WIRE_H

#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Read exactly len bytes.  0, -ECONNRESET on end of file, -errno. */
int vd_wire_read(int fd, void *buf, size_t len);
/* Write exactly len bytes (no SIGPIPE).  0 or -errno. */
int vd_wire_write(int fd, const void *buf, size_t len);
/* Read and drop len bytes.  0 or as vd_wire_read. */
int vd_wire_discard(int fd, uint64_t len);
/* Wait until fd is readable or deadline_ms (CLOCK_MONOTONIC milliseconds,
 * < 0: none) passes: 0, -ETIMEDOUT or -errno. */
int vd_wire_wait_readable(int fd, int64_t deadline_ms);
/* CLOCK_MONOTONIC now, in milliseconds. */
int64_t vd_wire_now_ms(void);

/* Big-endian loads and stores at any alignment. */
static inline uint16_t vd_get_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return be16toh(v);
}
static inline uint32_t vd_get_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return be32toh(v);
}
static inline uint64_t vd_get_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return be64toh(v);
}
static inline void vd_put_be16(void *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, sizeof(v));
}
static inline void vd_put_be32(void *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, sizeof(v));
}
static inline void vd_put_be64(void *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof(v));
}

#endif
