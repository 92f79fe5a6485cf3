/* SPDX-License-Identifier: BSD-3-Clause */
/* VD_REQ_NOWAIT reads: through raw (with an offset) on the file protocol
 * they return the same bytes as normal reads or -EAGAIN, never anything
 * else; aligned, unaligned and past-the-cache; O_DIRECT always says
 * -EAGAIN; a driver that does not know the flag ignores it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vdisk/vdisk.h"
#include "tap.h"

#define FILE_SIZE (4u << 20)
#define OFFSET 12288

static uint8_t *content;
static int nowait_hits, nowait_misses;

/* Read [off, off+len) with VD_REQ_NOWAIT, then again (as a caller does on
 * -EAGAIN) without; both must match the file. */
static void check_range(vd_node *n, uint64_t off, uint64_t len, uint64_t base)
{
    uint8_t *a = malloc(len), *b = malloc(len);
    int r;

    memset(a, 0xee, len);
    r = vd_pread(n, off, len, a, VD_REQ_NOWAIT);
    CHECK(r == 0 || r == -EAGAIN);
    if (r == 0) {
        nowait_hits++;
        CHECK(!memcmp(a, content + base + off, len));
    } else {
        nowait_misses++;
    }
    CHECK_EQ_INT(vd_pread(n, off, len, b, 0), 0);
    CHECK(!memcmp(b, content + base + off, len));
    free(a);
    free(b);
}

/* Open path through raw with opts ("offset=..." etc.). */
static vd_node *open_raw(const char *path, const char *extra)
{
    char spec[512];
    vd_node *n = NULL;
    vd_opts *o = vd_opts_new();

    snprintf(spec, sizeof(spec), "driver=raw,file.driver=file,file.filename=%s%s",
             path, extra);
    if (vd_opts_parse(o, spec, NULL) < 0 || vd_open(&n, NULL, NULL, o, VD_O_NO_LOCK) < 0) {
        fprintf(stderr, "open %s: %s\n", spec, vd_errmsg());
        return NULL;
    }
    return n;
}

/* Cached and evicted reads of every shape through raw with an offset. */
static void test_file(const char *path, int fd)
{
    vd_node *n = open_raw(path, ",offset=12288");
    uint64_t size = FILE_SIZE - OFFSET;

    CHECK(n != NULL);
    if (!n)
        return;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            /* Out of the page cache: NOWAIT reads may now say -EAGAIN. */
            fdatasync(fd);
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        }
        for (uint64_t off = 0; off < size; off += 65536 * 3)
            check_range(n, off, 4096, OFFSET);
        check_range(n, 1, 4095, OFFSET);              /* unaligned */
        check_range(n, 100000, 300001, OFFSET);
        check_range(n, size - 512, 512, OFFSET);      /* the last bytes */
        check_range(n, 0, size, OFFSET);              /* all of it */
    }
    vd_close(n);
}

/* O_DIRECT files are never read with RWF_NOWAIT. */
static void test_direct(const char *path)
{
    vd_node *n = open_raw(path, ",file.cache.direct=on");
    uint8_t *buf;

    if (!n) {                   /* the file system may refuse O_DIRECT */
        printf("# O_DIRECT not available here\n");
        return;
    }
    buf = aligned_alloc(4096, 4096);
    CHECK_EQ_INT(vd_pread(n, 0, 4096, buf, VD_REQ_NOWAIT), -EAGAIN);
    CHECK_EQ_INT(vd_pread(n, 0, 4096, buf, 0), 0);
    CHECK(!memcmp(buf, content, 4096));
    free(buf);
    vd_close(n);
}

/* A driver that does not know the flag reads as usual. */
static void test_ignored(void)
{
    vd_node *n = NULL;
    uint8_t buf[4096];

    CHECK_EQ_INT(vd_open(&n, "null-co://", "raw", NULL, 0), 0);
    if (!n)
        return;
    memset(buf, 1, sizeof(buf));
    CHECK_EQ_INT(vd_pread(n, 0, sizeof(buf), buf, VD_REQ_NOWAIT), 0);
    vd_close(n);
}

int main(void)
{
    char path[] = "test-nowait-XXXXXX";
    int fd = mkstemp(path);

    CHECK(fd >= 0);
    if (fd < 0)
        return TAP_DONE();
    content = malloc(FILE_SIZE);
    srand(7);
    for (size_t i = 0; i < FILE_SIZE; i++)
        content[i] = (uint8_t)rand();
    CHECK(write(fd, content, FILE_SIZE) == (ssize_t)FILE_SIZE);
    test_file(path, fd);
    if (preadv2(fd, &(struct iovec){ content, 1 }, 1, 0, RWF_NOWAIT) >= 0)
        CHECK(nowait_hits > 0);     /* cached data came without waiting */
    test_direct(path);
    test_ignored();
    printf("# NOWAIT reads: %d from the cache, %d would have blocked\n",
           nowait_hits, nowait_misses);
    close(fd);
    unlink(path);
    free(content);
    return TAP_DONE();
}
