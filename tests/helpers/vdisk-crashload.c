/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-crashload: the guest workload of the crash-safety tests.  Runs the
 * operations of a script on an image, one per line:
 *   write OFF LEN | zero OFF LEN [unmap] | discard OFF LEN | truncate SIZE |
 *   flush
 * (OFF and LEN multiples of 512).  Operation K (counted from 1) writes
 * sectors that name themselves: "VDCR", K and the guest sector number (64
 * bits each, little endian), then the low byte of K, so a test can tell
 * which write, if any, each sector of a crashed image holds.
 * It prints "start K" before and "done K" after each operation ("flushed K"
 * after a flush), line-buffered, for a test that kills it; and it names the
 * same points as events ("vdcrash start K", ...) for the record filter's
 * log.  Stops at the first error (message on stderr, exit 1).
 * Usage: vdisk-crashload [-f FMT] [-r REPEAT] [-k FIRST] [-x 1] IMAGE SCRIPT
 * (-k: number of the first operation, default 1; -x 1: exit at the end
 * without closing the image, as if killed there). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/vdisk.h"

#define SECTOR 512u

/* Fill buf (len bytes at guest offset off) with op k's sectors. */
static void fill(char *buf, uint64_t k, uint64_t off, uint64_t len)
{
    for (uint64_t p = 0; p + SECTOR <= len; p += SECTOR) {
        uint64_t sec = (off + p) / SECTOR;
        memset(buf + p, (int)(k & 0xff), SECTOR);
        memcpy(buf + p, "VDCR", 4);
        for (int i = 0; i < 8; i++) {
            buf[p + 4 + i] = (char)(k >> (8 * i));
            buf[p + 12 + i] = (char)(sec >> (8 * i));
        }
    }
}

/* Name point what of op k as an event and on stdout. */
static void mark(vd_node *n, const char *what, uint64_t k)
{
    char ev[64];

    snprintf(ev, sizeof(ev), "vdcrash %s %llu", what, (unsigned long long)k);
    vd_event(n, ev);
    printf("%s %llu\n", what, (unsigned long long)k);
}

/* Run one script line as op k. */
static int run_op(vd_node *n, uint64_t k, const char *line)
{
    char cmd[16], extra[16] = "";
    unsigned long long a = 0, b = 0;
    int nf = sscanf(line, "%15s %llu %llu %15s", cmd, &a, &b, extra);
    char *buf;
    int r;

    if (nf < 1)
        return 0;
    if (!strcmp(cmd, "flush"))
        return vd_flush(n);
    if (!strcmp(cmd, "truncate") && nf >= 2)
        return vd_truncate(n, a, false, VD_PREALLOC_OFF);
    if (nf < 3 || a % SECTOR || b % SECTOR)
        return vd_error(EINVAL, "bad script line: %s", line);
    if (!strcmp(cmd, "zero"))
        return vd_pwrite_zeroes(n, a, b, !strcmp(extra, "unmap") ? VD_REQ_MAY_UNMAP : 0);
    if (!strcmp(cmd, "discard"))
        return vd_discard(n, a, b);
    if (strcmp(cmd, "write"))
        return vd_error(EINVAL, "unknown operation: %s", cmd);
    if (!(buf = malloc(b ? b : 1)))
        return vd_error(ENOMEM, "out of memory");
    fill(buf, k, a, b);
    r = vd_pwrite(n, a, b, buf, 0);
    free(buf);
    return r;
}

/* Run the script repeat times (op numbers keep counting). */
static int run_script(vd_node *n, FILE *f, unsigned long repeat, uint64_t k)
{
    char line[256];

    int r = 0;

    for (unsigned long i = 0; i < repeat && r >= 0; i++) {
        rewind(f);
        while (r >= 0 && fgets(line, sizeof(line), f)) {
            line[strcspn(line, "\n")] = '\0';
            if (!line[0] || line[0] == '#')
                continue;
            mark(n, "start", ++k);
            if ((r = run_op(n, k, line)) < 0)
                fprintf(stderr, "vdisk-crashload: op %llu (%s): %s\n",
                        (unsigned long long)k, line, vd_errmsg());
            else
                mark(n, strncmp(line, "flush", 5) ? "done" : "flushed", k);
        }
    }
    return r;
}

int main(int argc, char **argv)
{
    const char *fmt = NULL;
    unsigned long repeat = 1;
    uint64_t first = 1;
    bool no_close = false;
    vd_node *n = NULL;
    FILE *f;
    int i = 1, r;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (!strcmp(argv[i], "-f"))
            fmt = argv[i + 1];
        else if (!strcmp(argv[i], "-r"))
            repeat = strtoul(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "-k"))
            first = strtoull(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "-x"))
            no_close = atoi(argv[i + 1]) != 0;
        else
            break;
    }
    if (i + 2 != argc) {
        fprintf(stderr, "usage: vdisk-crashload [-f FMT] [-r REPEAT] [-k FIRST] [-x 1] "
                "IMAGE SCRIPT\n");
        return 2;
    }
    if (!(f = fopen(argv[i + 1], "re"))) {
        perror(argv[i + 1]);
        return 2;
    }
    if (vd_open(&n, argv[i], fmt, NULL, VD_O_RDWR) < 0) {
        fprintf(stderr, "vdisk-crashload: %s: %s\n", argv[i], vd_errmsg());
        fclose(f);
        return 1;
    }
    r = run_script(n, f, repeat, first ? first - 1 : 0);
    fclose(f);
    if (no_close)
        _exit(r < 0 ? 1 : 0);
    vd_close(n);
    return r < 0 ? 1 : 0;
}
