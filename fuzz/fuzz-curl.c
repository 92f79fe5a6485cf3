/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the http driver: a hostile web server on loopback
 * answers every HEAD with the input's first piece (a 16-bit big-endian
 * length, then the bytes) and every other request with the rest, then
 * closes the connection.  The client opens the URL as raw (size, range
 * support) and reads a few ranges, with no retries and a 1 s timeout.
 * Any outcome but a crash or hang is fine. */
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vdisk/vdisk.h"

struct feed {
    int lfd;
    const uint8_t *head, *get;
    size_t head_len, get_len;
    atomic_bool stop;
};

/* Read the request (up to its blank line, or 1 s); true if it is a HEAD. */
static bool read_request(int fd)
{
    char buf[8192];
    size_t got = 0;
    struct pollfd p = { .fd = fd, .events = POLLIN };

    while (got < sizeof(buf) - 1 && poll(&p, 1, 1000) > 0) {
        ssize_t r = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    return got >= 4 && !memcmp(buf, "HEAD", 4);
}

/* Send all of buf, ignoring a client that has gone. */
static void send_all(int fd, const uint8_t *buf, size_t len)
{
    while (len) {
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        buf += w;
        len -= (size_t)w;
    }
}

/* Answer connections until told to stop. */
static void *serve(void *arg)
{
    struct feed *f = arg;
    struct pollfd p = { .fd = f->lfd, .events = POLLIN };

    while (!atomic_load(&f->stop)) {
        int c;
        if (poll(&p, 1, 20) <= 0 || (c = accept(f->lfd, NULL, NULL)) < 0)
            continue;
        if (read_request(c))
            send_all(c, f->head, f->head_len);
        else
            send_all(c, f->get, f->get_len);
        shutdown(c, SHUT_WR);
        close(c);
    }
    return NULL;
}

/* A listening socket on a free loopback port (made once). */
static int listener(int *port)
{
    static int lfd = -1, lport;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof(a);

    if (lfd < 0) {
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            listen(lfd, 64) < 0 || getsockname(lfd, (struct sockaddr *)&a, &al) < 0)
            abort();
        lport = ntohs(a.sin_port);
    }
    *port = lport;
    return lfd;
}

/* Reads that a format over the node would make. */
static void exercise(vd_node *n)
{
    static uint8_t buf[65536];
    int64_t size = vd_getlength(n);
    uint64_t len = size > 0 ? (uint64_t)size : 0;

    if (!len)
        return;
    vd_pread(n, 0, len < 512 ? len : 512, buf, 0);
    vd_pread(n, len > 4096 ? len - 4096 : 0, len < 4096 ? len : 4096, buf, 0);
    vd_pread(n, 0, len < sizeof(buf) ? len : sizeof(buf), buf, 0);
}

/* One input. */
/* Load the http module before fuzzing starts, so that libFuzzer sees its
 * coverage counters from the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (!vd_driver_find("http")) {
        fputs("fuzz-curl: the http driver is not there (its module not built?)\n", stderr);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct feed f = { 0 };
    char url[64];
    pthread_t t;
    vd_opts *o;
    vd_node *n = NULL;
    int port;

    if (size < 2)
        return 0;
    f.lfd = listener(&port);
    f.head_len = (size_t)data[0] << 8 | data[1];
    if (f.head_len > size - 2)
        f.head_len = size - 2;
    f.head = data + 2;
    f.get = f.head + f.head_len;
    f.get_len = size - 2 - f.head_len;
    if (pthread_create(&t, NULL, serve, &f))
        return 0;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/disk", port);
    if ((o = vd_opts_new())) {
        vd_opts_set(o, "driver", "raw");
        vd_opts_set(o, "file.driver", "http");
        vd_opts_set(o, "file.url", url);
        vd_opts_set(o, "file.timeout", "1");
        vd_opts_set(o, "file.x-retries", "0");
        if (vd_open(&n, NULL, NULL, o, VD_O_NO_LOCK) == 0)
            exercise(n);
        vd_close(n);
    }
    atomic_store(&f.stop, true);
    pthread_join(t, NULL);
    return 0;
}
