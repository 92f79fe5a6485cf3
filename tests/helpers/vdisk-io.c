/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-io: a tiny qemu-io for tests: open an image read/write through
 * libvdisk and run commands on it:
 *   write BYTE OFF LEN | zero OFF LEN [unmap] | discard OFF LEN |
 *   compress BYTE OFF LEN | truncate SIZE | read BYTE OFF LEN | flush |
 *   sleep MS
 * Usage: vdisk-io [--object SPEC]... [-f FMT] IMAGE CMD ARGS... [-- CMD ARGS...]
 * Exit 0 when every command succeeded, 1 (message on stderr) otherwise. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/object.h"
#include "vdisk/vdisk.h"

/* Number argument (strtoull base 0). */
static uint64_t num(const char *s)
{
    return strtoull(s, NULL, 0);
}

/* A buffer of len bytes of value byte. */
static char *pattern(int byte, uint64_t len)
{
    char *b = malloc(len ? len : 1);
    if (b)
        memset(b, byte, len);
    return b;
}

/* Check that [off, off+len) reads as byte. */
static int verify(vd_node *n, int byte, uint64_t off, uint64_t len)
{
    char *b = malloc(len ? len : 1);
    int r = b ? vd_pread(n, off, len, b, 0) : -ENOMEM;

    for (uint64_t i = 0; r >= 0 && i < len; i++)
        if ((unsigned char)b[i] != byte)
            r = vd_error(EIO, "byte at %llu is 0x%02x, expected 0x%02x",
                         (unsigned long long)(off + i), (unsigned char)b[i], byte);
    free(b);
    return r;
}

/* Run one command; returns the number of arguments used or -1. */
static int run(vd_node *n, char **a, int na)
{
    const char *c = a[0];
    char *b;
    int r = -EINVAL, used = 1;

    if (!strcmp(c, "write") && na >= 4) {
        b = pattern((int)num(a[1]), num(a[3]));
        r = vd_pwrite(n, num(a[2]), num(a[3]), b, 0);
        free(b);
        used = 4;
    } else if (!strcmp(c, "compress") && na >= 4) {
        uint64_t off = num(a[2]), len = num(a[3]), cs = (uint64_t)vd_node_cluster_size(n);
        b = pattern((int)num(a[1]), len);
        for (r = 0; r >= 0 && len; ) {
            uint64_t l = cs && len > cs ? cs : len;
            r = vd_pwrite_compressed(n, off, l, b);
            off += l;
            len -= l;
        }
        free(b);
        used = 4;
    } else if (!strcmp(c, "read") && na >= 4) {
        r = verify(n, (int)num(a[1]), num(a[2]), num(a[3]));
        used = 4;
    } else if (!strcmp(c, "zero") && na >= 3) {
        int unmap = na >= 4 && !strcmp(a[3], "unmap");
        r = vd_pwrite_zeroes(n, num(a[1]), num(a[2]), unmap ? VD_REQ_MAY_UNMAP : 0);
        used = 3 + unmap;
    } else if (!strcmp(c, "discard") && na >= 3) {
        r = vd_discard(n, num(a[1]), num(a[2]));
        used = 3;
    } else if (!strcmp(c, "truncate") && na >= 2) {
        r = vd_truncate(n, num(a[1]), false, VD_PREALLOC_OFF);
        used = 2;
    } else if (!strcmp(c, "flush")) {
        r = vd_flush(n);
    } else if (!strcmp(c, "sleep") && a[1]) {
        usleep((useconds_t)(num(a[1]) * 1000));   /* milliseconds */
        r = 0;
        used = 2;
    } else {
        vd_error(EINVAL, "unknown command or missing arguments: %s", c);
    }
    if (r < 0) {
        fprintf(stderr, "vdisk-io: %s: %s\n", c, vd_errmsg());
        return -1;
    }
    return used;
}

int main(int argc, char **argv)
{
    const char *fmt = NULL;
    vd_node *n = NULL;
    int i = 1, r = 0;

    for (; i + 1 < argc && !strcmp(argv[i], "--object"); i += 2) {
        if (vd_object_add(argv[i + 1]) < 0) {
            fprintf(stderr, "vdisk-io: --object: %s\n", vd_errmsg());
            return 1;
        }
    }
    if (i + 1 < argc && !strcmp(argv[i], "-f")) {
        fmt = argv[i + 1];
        i += 2;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: vdisk-io [-f FMT] IMAGE CMD ARGS... [-- CMD ...]\n");
        return 1;
    }
    if (vd_open(&n, argv[i], fmt, NULL, VD_O_RDWR) < 0) {
        fprintf(stderr, "vdisk-io: %s: %s\n", argv[i], vd_errmsg());
        return 1;
    }
    for (i++; i < argc && r >= 0;) {
        if (!strcmp(argv[i], "--")) {
            i++;
            continue;
        }
        r = run(n, argv + i, argc - i);
        if (r > 0)
            i += r;
    }
    if (r >= 0 && vd_flush(n) < 0) {
        fprintf(stderr, "vdisk-io: flush: %s\n", vd_errmsg());
        r = -1;
    }
    vd_close(n);
    return r < 0 ? 1 : 0;
}
