/* SPDX-License-Identifier: BSD-3-Clause */
/* Exact-length socket reads and writes for the NBD wire protocol. */
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "nbd/wire.h"

/* See wire.h. */
int vd_wire_read(int fd, void *buf, size_t len)
{
    char *p = buf;

    while (len) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -ECONNRESET;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* One write; send() with MSG_NOSIGNAL on sockets, write() otherwise. */
static ssize_t write_once(int fd, const void *buf, size_t len)
{
    ssize_t r = send(fd, buf, len, MSG_NOSIGNAL);

    if (r < 0 && errno == ENOTSOCK)
        r = write(fd, buf, len);
    return r;
}

/* See wire.h. */
int vd_wire_write(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t r = write_once(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* See wire.h. */
int vd_wire_discard(int fd, uint64_t len)
{
    char buf[16384];

    while (len) {
        size_t n = len < sizeof(buf) ? (size_t)len : sizeof(buf);
        int r = vd_wire_read(fd, buf, n);
        if (r < 0)
            return r;
        len -= n;
    }
    return 0;
}

/* See wire.h. */
int64_t vd_wire_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* See wire.h. */
int vd_wire_wait_readable(int fd, int64_t deadline_ms)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };

    for (;;) {
        int timeout = -1, r;
        if (deadline_ms >= 0) {
            int64_t left = deadline_ms - vd_wire_now_ms();
            if (left <= 0)
                return -ETIMEDOUT;
            timeout = left > 60000 ? 60000 : (int)left;
        }
        r = poll(&pfd, 1, timeout);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r > 0)
            return 0;
    }
}
