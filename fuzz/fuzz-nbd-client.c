/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the NBD client: the input is everything a hostile
 * server sends (in pieces, see serve()), played over a socketpair (then
 * EOF) while the client opens
 * the export and issues a fixed sequence of requests (block status, reads,
 * a write, zeroes, trim, flush).  Cookies count from 1, so seeds can carry
 * well-formed replies.  Any outcome but a crash or hang is fine. */
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vdisk/vdisk.h"

struct feed {
    int fd;
    const uint8_t *data;
    size_t size;
};

/* Wait up to 100 ms for bytes from the client and drop them. */
static void drain_some(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    char sink[4096];

    if (poll(&p, 1, 100) > 0)
        (void)!recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
}

/* Send all of buf; false when the client has gone. */
static bool send_all(int fd, const uint8_t *buf, size_t len)
{
    while (len) {
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        buf += w;
        len -= (size_t)w;
    }
    return true;
}

/* The "server": the input is pieces, each a 16-bit big-endian length and
 * that many bytes; before each piece after the first it waits (briefly)
 * for the client to say something, so replies can follow requests.  Then
 * EOF, and requests are drained until the client closes. */
static void *serve(void *arg)
{
    struct feed *f = arg;
    const uint8_t *p = f->data, *end = f->data + f->size;
    char sink[4096];
    bool first = true;

    while (end - p >= 2) {
        size_t len = (size_t)p[0] << 8 | p[1];
        p += 2;
        if (len > (size_t)(end - p))
            len = (size_t)(end - p);
        if (!first)
            drain_some(f->fd);
        first = false;
        if (!send_all(f->fd, p, len))
            break;
        p += len;
    }
    shutdown(f->fd, SHUT_WR);
    while (recv(f->fd, sink, sizeof(sink), 0) > 0)
        ;
    return NULL;
}

/* The client's requests once the export is open. */
static void exercise(vd_node *n)
{
    static uint8_t buf[16384];
    int64_t size = vd_getlength(n);
    uint64_t len = size > 0 ? (uint64_t)size : 0, pnum, map;
    vd_node *file;

    if (!len)
        return;
    vd_block_status(n, 0, len, &pnum, &map, &file);
    vd_pread(n, 0, len < sizeof(buf) ? len : sizeof(buf), buf, 0);
    vd_pread(n, len > 512 ? len - 512 : 0, len < 512 ? len : 512, buf, 0);
    vd_pwrite(n, 0, len < 512 ? len : 512, buf, VD_REQ_FUA);
    vd_pwrite_zeroes(n, 0, len < 4096 ? len : 4096, VD_REQ_MAY_UNMAP);
    vd_discard(n, 0, len < 4096 ? len : 4096);
    vd_flush(n);
}

/* One input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    struct feed f = { .data = data, .size = size };
    pthread_t t;
    vd_opts *o;
    vd_node *n = NULL;
    char fd[16];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    f.fd = sv[0];
    if (pthread_create(&t, NULL, serve, &f)) {
        close(sv[0]);
        close(sv[1]);
        return 0;
    }
    snprintf(fd, sizeof(fd), "%d", sv[1]);
    if ((o = vd_opts_new())) {
        vd_opts_set(o, "driver", "nbd");
        vd_opts_set(o, "server.type", "fd");
        vd_opts_set(o, "server.str", fd);
        vd_opts_set(o, "x-multi-conn", "1");
        vd_opts_set(o, "open-timeout", "5");
        vd_opts_set(o, "x-io-timeout", "5");
        if (vd_open(&n, NULL, NULL, o, VD_O_RDWR | VD_O_NO_LOCK) == 0)
            exercise(n);
        vd_close(n);
    }
    close(sv[1]);                /* the client holds a dup; ends the drain */
    pthread_join(t, NULL);
    close(sv[0]);
    return 0;
}
