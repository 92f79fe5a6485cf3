/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-pool's error reporting (virsh's "error: " lines on stderr, with the
 * detail of the failure recorded by the layer that saw it) and allocation
 * helpers that exit on out of memory. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

static char err_detail[2048];

bool pool_stream;
const char *pool_stream_file;

void pool_err(const char *fmt, ...)
{
    va_list ap;

    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void pool_set_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err_detail, sizeof(err_detail), fmt, ap);
    va_end(ap);
}

const char *pool_error_text(void)
{
    return err_detail;
}

void pool_report(void)
{
    if (err_detail[0])
        pool_err("%s", err_detail);
    err_detail[0] = 0;
}

void pool_oom(void)
{
    fputs("error: out of memory\n", stderr);
    exit(1);
}

char *xstrdup(const char *s)
{
    char *d = strdup(s);

    if (!d)
        pool_oom();
    return d;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int r;

    va_start(ap, fmt);
    r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0)
        pool_oom();
    return s;
}

