/* SPDX-License-Identifier: BSD-3-Clause */
/* A fixed pool of worker threads running submitted jobs. */
#ifndef VD_UTIL_THREADPOOL_H
#define VD_UTIL_THREADPOOL_H

typedef struct vd_threadpool vd_threadpool;

vd_threadpool *vd_threadpool_new(int nthreads);
/* Queue fn(arg); returns 0 or -ENOMEM. */
int vd_threadpool_submit(vd_threadpool *tp, void (*fn)(void *), void *arg);
/* Wait until every queued job has finished. */
void vd_threadpool_wait(vd_threadpool *tp);
/* Wait, stop and free. */
void vd_threadpool_free(vd_threadpool *tp);

#endif
