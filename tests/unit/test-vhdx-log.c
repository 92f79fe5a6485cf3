/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for the vhdx log (lib/format/vhdx/log.c) on a plain file: the
 * log region's checks, journalled updates of every shape (unaligned,
 * overlapping, zeroes, past the end of the file), replay of an entry whose
 * updates were lost, and the refusals. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/vhdx/log.h"
#include "tap.h"
#include "util/checked.h"
#include "vdisk/vdisk.h"

#define MIB (1u << 20)
#define LOG_OFF MIB
#define LOG_LEN MIB

static const uint8_t guid[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
static const uint8_t zero_guid[16];
static const uint8_t other_guid[16] = { 9, 9, 9 };
static char path[] = "/tmp/test-vhdx-log-XXXXXX";

/* A fresh 8 MiB file, every byte 0xee, opened read-write. */
static vd_node *fresh(void)
{
    int fd = mkstemp(path);
    static uint8_t buf[MIB];
    vd_node *n = NULL;

    memset(buf, 0xee, sizeof(buf));
    for (int i = 0; fd >= 0 && i < 8; i++)
        if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
            break;
    if (fd >= 0)
        close(fd);
    if (vd_open(&n, path, "file", NULL, VD_O_RDWR | VD_O_NO_LOCK) < 0) {
        fprintf(stderr, "open %s: %s\n", path, vd_errmsg());
        return NULL;
    }
    return n;
}

static void done(vd_node *n)
{
    vd_close(n);
    unlink(path);
    strcpy(path, "/tmp/test-vhdx-log-XXXXXX");
}

/* Do len bytes at off read as byte? */
static bool reads_as(vd_node *n, uint64_t off, uint32_t len, int byte)
{
    uint8_t *b = malloc(len);
    bool ok = b && vd_pread(n, off, len, b, 0) >= 0;

    for (uint32_t i = 0; ok && i < len; i++)
        ok = b[i] == byte;
    free(b);
    return ok;
}

/* The log region's fields are checked; a zero GUID means no log. */
static void test_open_checks(void)
{
    vd_node *n = fresh();
    struct vhdx_log log;
    bool replay = true;

    CHECK(n);
    if (!n)
        return;
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN, zero_guid, &replay) == 0 && !replay);
    CHECK(vhdx_log_open(&log, n, n, 0, LOG_LEN, guid, &replay) == -EINVAL);
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF + 4096, LOG_LEN, guid, &replay) == -EINVAL);
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN + 4096, guid, &replay) == -EINVAL);
    /* A log full of 0xee: nothing valid, nothing to replay. */
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN, guid, &replay) == 0 && !replay);
    /* Past the end of the file: holds nothing; writes refuse it. */
    CHECK(vhdx_log_open(&log, n, n, 64 * MIB, LOG_LEN, guid, &replay) == 0 && !replay);
    vhdx_log_begin(&log, guid);
    CHECK(vhdx_log_write(&log, &(struct vhdx_log_update){ 2 * MIB, 8, "abcdefgh" }, 1) ==
          -EINVAL);
    done(n);
}

/* Updates of every shape land where they should. */
static void test_write_shapes(void)
{
    vd_node *n = fresh();
    struct vhdx_log log;
    bool replay;
    static uint8_t a[5000], b[16], c[16];

    CHECK(n);
    if (!n)
        return;
    memset(a, 0x11, sizeof(a));
    memset(b, 0x22, sizeof(b));
    memset(c, 0x33, sizeof(c));
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN, zero_guid, &replay) == 0);
    CHECK(vhdx_log_write(&log, &(struct vhdx_log_update){ 2 * MIB, 8, b }, 1) == -EINVAL);
    vhdx_log_begin(&log, guid);
    struct vhdx_log_update u[] = {
        { 3 * MIB + 100, sizeof(a), a },       /* unaligned, two sectors */
        { 2 * MIB, 16, b },                    /* overlapping: c wins */
        { 2 * MIB + 8, 16, c },
        { 4 * MIB, 3 * 4096, NULL },           /* zeroes */
        { 9 * MIB + 8, 8, c },                 /* past the end of the file */
        { 5 * MIB, 0, NULL },                  /* empty */
    };
    CHECK_EQ_INT(vhdx_log_write(&log, u, VD_ARRAY_SIZE(u)), 0);
    CHECK(reads_as(n, 3 * MIB, 100, 0xee) && reads_as(n, 3 * MIB + 100, 5000, 0x11) &&
          reads_as(n, 3 * MIB + 5100, 8192 - 5100, 0xee));
    CHECK(reads_as(n, 2 * MIB, 8, 0x22) && reads_as(n, 2 * MIB + 8, 16, 0x33) &&
          reads_as(n, 2 * MIB + 24, 100, 0xee));
    CHECK(reads_as(n, 4 * MIB - 1, 1, 0xee) && reads_as(n, 4 * MIB, 3 * 4096, 0) &&
          reads_as(n, 4 * MIB + 3 * 4096, 1, 0xee));
    CHECK_EQ_INT(vd_getlength(n), 10 * MIB);
    CHECK(reads_as(n, 9 * MIB, 8, 0) && reads_as(n, 9 * MIB + 8, 8, 0x33));
    CHECK(log.head == 0 && log.sequence == 2);
    /* More than the log holds. */
    uint8_t *ones = malloc(LOG_LEN);
    if (ones) {
        memset(ones, 1, LOG_LEN);
        struct vhdx_log_update big = { 2 * MIB, LOG_LEN, ones };
        CHECK_EQ_INT(vhdx_log_write(&log, &big, 1), -ENOSPC);
        free(ones);
    }
    /* Zeroes take one descriptor however long (no data sectors). */
    struct vhdx_log_update zeroes = { 2 * MIB, LOG_LEN, NULL };
    CHECK_EQ_INT(vhdx_log_write(&log, &zeroes, 1), 0);
    CHECK(reads_as(n, 2 * MIB, LOG_LEN, 0));
    struct vhdx_log_update wrap = { UINT64_MAX - 4, 8, b };
    CHECK_EQ_INT(vhdx_log_write(&log, &wrap, 1), -EINVAL);
    vhdx_log_end(&log);
    CHECK(!log.active);
    done(n);
}

/* An entry whose updates never reached the file replays at open. */
static void test_replay_lost_updates(void)
{
    vd_node *n = fresh();
    struct vhdx_log log;
    bool replay = false;
    static uint8_t a[4096], old[4096];

    CHECK(n);
    if (!n)
        return;
    memset(a, 0x44, sizeof(a));
    memset(old, 0xee, sizeof(old));
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN, zero_guid, &replay) == 0);
    vhdx_log_begin(&log, guid);
    for (int i = 0; i < 3; i++) {
        struct vhdx_log_update u[] = { { 2 * MIB + 4096 * i, 4096, a },
                                       { 5 * MIB + 4096 * i, 4096, NULL } };
        CHECK_EQ_INT(vhdx_log_write(&log, u, 2), 0);
    }
    /* Lose the last entry's updates (as a power loss right after the
     * entry's flush would). */
    CHECK(vd_pwrite(n, 2 * MIB + 8192, 4096, old, 0) == 0);
    CHECK(vd_pwrite(n, 5 * MIB + 8192, 4096, old, 0) == 0);
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN, guid, &replay) == 0 && replay);
    CHECK_EQ_INT(log.sequence, 4);
    CHECK_EQ_INT(vhdx_log_replay(&log), 0);
    CHECK(reads_as(n, 2 * MIB, 3 * 4096, 0x44) && reads_as(n, 5 * MIB, 3 * 4096, 0));
    /* Under another GUID the entry is not ours. */
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN, other_guid, &replay) == 0 && !replay);
    /* A damaged entry is not replayed. */
    CHECK(vd_pwrite(n, LOG_OFF + 100, 1, "x", 0) == 0);
    CHECK(vhdx_log_open(&log, n, n, LOG_OFF, LOG_LEN, guid, &replay) == 0 && !replay);
    done(n);
}

int main(void)
{
    test_open_checks();
    test_write_shapes();
    test_replay_lost_updates();
    return TAP_DONE();
}
