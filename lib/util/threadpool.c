/* SPDX-License-Identifier: BSD-3-Clause */
/* A fixed pool of worker threads fed from one FIFO job queue.  Memory is
 * bounded: submit blocks while MAX_QUEUED jobs wait, except when called
 * from one of the pool's own workers (which could otherwise deadlock). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "util/threadpool.h"

#define MAX_THREADS 256
#define MAX_QUEUED 4096

struct job {
    struct job *next;
    void (*fn)(void *);
    void *arg;
};

struct vd_threadpool {
    pthread_mutex_t lock;
    pthread_cond_t work;      /* a job was queued, or stop */
    pthread_cond_t idle;      /* a job finished */
    pthread_cond_t room;      /* the queue shrank */
    struct job *head, *tail;
    size_t queued;            /* jobs in the queue */
    size_t running;           /* jobs being run */
    bool stop;
    int nthreads;
    pthread_t threads[];
};

/* The pool whose worker this thread is (NULL elsewhere). */
static __thread vd_threadpool *current_pool;

/* Take the next job, waiting for one; NULL when stopping and drained. */
static struct job *take_job(vd_threadpool *tp)
{
    struct job *j;

    while (!tp->head && !tp->stop)
        pthread_cond_wait(&tp->work, &tp->lock);
    j = tp->head;
    if (!j)
        return NULL;
    tp->head = j->next;
    if (!tp->head)
        tp->tail = NULL;
    tp->queued--;
    tp->running++;
    pthread_cond_signal(&tp->room);
    return j;
}

/* Worker loop: run jobs until the pool stops. */
static void *worker(void *opaque)
{
    vd_threadpool *tp = opaque;
    struct job *j;

    current_pool = tp;
    pthread_mutex_lock(&tp->lock);
    while ((j = take_job(tp))) {
        pthread_mutex_unlock(&tp->lock);
        j->fn(j->arg);
        free(j);
        pthread_mutex_lock(&tp->lock);
        tp->running--;
        if (!tp->head && !tp->running)
            pthread_cond_broadcast(&tp->idle);
    }
    pthread_mutex_unlock(&tp->lock);
    return NULL;
}

/* Initialise the lock and condition variables; false on failure. */
static bool init_sync(vd_threadpool *tp)
{
    if (pthread_mutex_init(&tp->lock, NULL))
        return false;
    if (pthread_cond_init(&tp->work, NULL) || pthread_cond_init(&tp->idle, NULL) ||
        pthread_cond_init(&tp->room, NULL))
        return false;   /* leaks nothing that needs freeing on Linux */
    return true;
}

/* See threadpool.h: nthreads is clamped to 1..256.  NULL when no thread
 * could be started or memory is short. */
vd_threadpool *vd_threadpool_new(int nthreads)
{
    vd_threadpool *tp;
    int n = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;

    tp = calloc(1, sizeof(*tp) + (size_t)n * sizeof(pthread_t));
    if (!tp || !init_sync(tp)) {
        free(tp);
        return NULL;
    }
    for (tp->nthreads = 0; tp->nthreads < n; tp->nthreads++)
        if (pthread_create(&tp->threads[tp->nthreads], NULL, worker, tp))
            break;
    if (tp->nthreads == 0) {
        vd_threadpool_free(tp);
        return NULL;
    }
    return tp;
}

/* See threadpool.h. */
int vd_threadpool_submit(vd_threadpool *tp, void (*fn)(void *), void *arg)
{
    struct job *j;

    if (!tp || !fn)
        return -EINVAL;
    j = malloc(sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->next = NULL;
    j->fn = fn;
    j->arg = arg;
    pthread_mutex_lock(&tp->lock);
    while (tp->queued >= MAX_QUEUED && current_pool != tp)
        pthread_cond_wait(&tp->room, &tp->lock);
    if (tp->tail)
        tp->tail->next = j;
    else
        tp->head = j;
    tp->tail = j;
    tp->queued++;
    pthread_cond_signal(&tp->work);
    pthread_mutex_unlock(&tp->lock);
    return 0;
}

/* See threadpool.h.  Must not be called from a job of the same pool. */
void vd_threadpool_wait(vd_threadpool *tp)
{
    if (!tp)
        return;
    pthread_mutex_lock(&tp->lock);
    while (tp->head || tp->running)
        pthread_cond_wait(&tp->idle, &tp->lock);
    pthread_mutex_unlock(&tp->lock);
}

/* See threadpool.h. */
void vd_threadpool_free(vd_threadpool *tp)
{
    int i;

    if (!tp)
        return;
    vd_threadpool_wait(tp);
    pthread_mutex_lock(&tp->lock);
    tp->stop = true;
    pthread_cond_broadcast(&tp->work);
    pthread_mutex_unlock(&tp->lock);
    for (i = 0; i < tp->nthreads; i++)
        pthread_join(tp->threads[i], NULL);
    pthread_cond_destroy(&tp->work);
    pthread_cond_destroy(&tp->idle);
    pthread_cond_destroy(&tp->room);
    pthread_mutex_destroy(&tp->lock);
    free(tp);
}
