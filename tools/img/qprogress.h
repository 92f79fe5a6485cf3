/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img: the -p progress line as qemu-img's commit and rebase print it,
 * step for step: a percentage kept in single precision, printed when it
 * moved more than min_skip since the last line, or reached 0 or 100.
 * (convert and the others use img_progress in common.c.) */
#ifndef VD_IMG_QPROGRESS_H
#define VD_IMG_QPROGRESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>

struct qprogress {
    pthread_mutex_t lock;
    bool enabled;
    float current, last, min_skip;
};

/* Start: with enabled, print "0.00" at once. */
static inline void qprogress_init(struct qprogress *p, bool enabled, float min_skip)
{
    pthread_mutex_init(&p->lock, NULL);
    p->enabled = enabled;
    p->current = p->last = 0;
    p->min_skip = min_skip;
}

/* Advance by delta percent of max (max 0: set to delta) and print when
 * qemu-img would. */
static inline void qprogress_print(struct qprogress *p, float delta, int max)
{
    float cur;

    pthread_mutex_lock(&p->lock);
    cur = max == 0 ? delta : p->current + delta / 100 * (float)max;
    if (cur > 100)
        cur = 100;
    p->current = cur;
    if (p->enabled && (cur > p->last + p->min_skip || cur < p->last - p->min_skip ||
                       cur == 0 || cur == 100)) {
        p->last = cur;
        printf("    (%3.2f/100%%)\r", (double)cur);
        fflush(stdout);
    }
    pthread_mutex_unlock(&p->lock);
}

/* The newline after the last progress line. */
static inline void qprogress_end(struct qprogress *p)
{
    if (p->enabled) {
        putchar('\n');
        fflush(stdout);
    }
    p->enabled = false;
    pthread_mutex_destroy(&p->lock);
}

#endif
