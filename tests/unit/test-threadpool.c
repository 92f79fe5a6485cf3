/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for lib/util/threadpool.c: every job runs exactly once, wait
 * really waits, the queue bound does not deadlock, jobs may submit jobs. */
#include <stdatomic.h>
#include <unistd.h>

#include "util/threadpool.h"
#include "tap.h"

static atomic_int counter;
static atomic_int concurrent, max_concurrent;

/* Count one run. */
static void job_count(void *arg)
{
    atomic_fetch_add(&counter, 1);
}

/* Add the job's index to a per-job slot (detects double runs). */
static void job_slot(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
}

/* Sleep a little while tracking how many run at once. */
static void job_slow(void *arg)
{
    int now = atomic_fetch_add(&concurrent, 1) + 1, seen = atomic_load(&max_concurrent);

    while (now > seen && !atomic_compare_exchange_weak(&max_concurrent, &seen, now))
        ;
    usleep(20000);
    atomic_fetch_sub(&concurrent, 1);
    atomic_fetch_add(&counter, 1);
}

/* A job that queues ten more on its own pool. */
static void job_spawn(void *arg)
{
    for (int i = 0; i < 10; i++)
        vd_threadpool_submit(arg, job_count, NULL);
}

/* Many tiny jobs (more than the queue bound), each run exactly once. */
static void test_many(void)
{
    static atomic_int slots[20000];
    vd_threadpool *tp = vd_threadpool_new(4);
    int i, bad = 0;

    CHECK(tp != NULL);
    for (i = 0; i < 20000; i++)
        CHECK_EQ_INT(vd_threadpool_submit(tp, job_slot, &slots[i]), 0);
    vd_threadpool_wait(tp);
    for (i = 0; i < 20000; i++)
        bad += atomic_load(&slots[i]) != 1;
    CHECK_EQ_INT(bad, 0);
    vd_threadpool_free(tp);
}

/* Jobs run in parallel, and wait returns only after the last finishes. */
static void test_parallel_wait(void)
{
    vd_threadpool *tp = vd_threadpool_new(4);

    atomic_store(&counter, 0);
    for (int i = 0; i < 8; i++)
        vd_threadpool_submit(tp, job_slow, NULL);
    vd_threadpool_wait(tp);
    CHECK_EQ_INT(atomic_load(&counter), 8);
    CHECK(atomic_load(&max_concurrent) >= 2);
    CHECK(atomic_load(&max_concurrent) <= 4);
    vd_threadpool_wait(tp);                 /* idle wait returns at once */
    vd_threadpool_free(tp);
}

/* Jobs submitting jobs, including past the queue bound, and free draining. */
static void test_nested(void)
{
    vd_threadpool *tp = vd_threadpool_new(1);

    atomic_store(&counter, 0);
    for (int i = 0; i < 1000; i++)
        vd_threadpool_submit(tp, job_spawn, tp);
    vd_threadpool_free(tp);                 /* waits for all 11000 */
    CHECK_EQ_INT(atomic_load(&counter), 10000);
}

/* Odd arguments. */
static void test_args(void)
{
    vd_threadpool *tp = vd_threadpool_new(0);   /* clamped to 1 */

    CHECK(tp != NULL);
    CHECK(vd_threadpool_submit(tp, NULL, NULL) < 0);
    CHECK(vd_threadpool_submit(NULL, job_count, NULL) < 0);
    vd_threadpool_free(tp);
    vd_threadpool_free(NULL);
    vd_threadpool_wait(NULL);
}

int main(void)
{
    test_many();
    test_parallel_wait();
    test_nested();
    test_args();
    return TAP_DONE();
}
