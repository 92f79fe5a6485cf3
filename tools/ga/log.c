/* SPDX-License-Identifier: BSD-3-Clause */
/* The running agent's log, in qemu-ga's layout: "secs.usecs: level: msg",
 * debug and info lines only with -v. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "ga.h"

static FILE *log_file;
static bool log_verbose;

/* See ga.h. */
void ga_log_open(FILE *f, bool verbose)
{
    log_file = f;
    log_verbose = verbose;
}

/* See ga.h. */
void ga_log(const char *level, const char *fmt, ...)
{
    struct timeval tv;
    va_list ap;
    FILE *f = log_file ? log_file : stderr;

    if (!fmt || ((strcmp(level, "debug") == 0 || strcmp(level, "info") == 0) && !log_verbose))
        return;
    gettimeofday(&tv, NULL);
    fprintf(f, "%lu.%06lu: %s: ", (unsigned long)tv.tv_sec,
            (unsigned long)tv.tv_usec, level);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fflush(f);
}

