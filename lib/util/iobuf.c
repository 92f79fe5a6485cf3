/* SPDX-License-Identifier: BSD-3-Clause */
/* I/O buffers a driver may keep past a request (see iobuf.h).  The live
 * buffers are a list under one lock: a copy has a few dozen at most, and a
 * lookup is a walk of it per request piece. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "util/checked.h"
#include "util/iobuf.h"

struct vd_iobuf {
    char *base;
    size_t len;
    int refs;                 /* the owner's (until freed) + the holders' */
    bool freed;               /* the owner is done: no new holders */
    struct vd_iobuf *next;
};

static pthread_mutex_t iobuf_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vd_iobuf *iobufs;

/* Unlink b (lock held). */
static void unlink_locked(struct vd_iobuf *b)
{
    for (struct vd_iobuf **pp = &iobufs; *pp; pp = &(*pp)->next)
        if (*pp == b) {
            *pp = b->next;
            return;
        }
}

/* Drop one reference (lock held); true when it was the last. */
static bool put_locked(struct vd_iobuf *b)
{
    if (--b->refs)
        return false;
    unlink_locked(b);
    return true;
}

/* Free a buffer nobody references. */
static void destroy(struct vd_iobuf *b)
{
    free(b->base);
    free(b);
}

void *vd_iobuf_alloc(size_t len)
{
    struct vd_iobuf *b = calloc(1, sizeof(*b));
    void *p = NULL;

    if (!b || posix_memalign(&p, 4096, len ? len : 1)) {
        free(b);
        return NULL;
    }
    *b = (struct vd_iobuf){ p, len, 1, false, NULL };
    pthread_mutex_lock(&iobuf_lock);
    b->next = iobufs;
    iobufs = b;
    pthread_mutex_unlock(&iobuf_lock);
    return p;
}

/* The live buffer whose memory starts at p (lock held), or NULL. */
static struct vd_iobuf *find_base_locked(const void *p)
{
    for (struct vd_iobuf *b = iobufs; b; b = b->next)
        if (b->base == p && !b->freed)
            return b;
    return NULL;
}

void vd_iobuf_free(void *p)
{
    struct vd_iobuf *b;
    bool last = false;

    if (!p)
        return;
    pthread_mutex_lock(&iobuf_lock);
    b = find_base_locked(p);
    if (b) {
        b->freed = true;
        last = put_locked(b);
    }
    pthread_mutex_unlock(&iobuf_lock);
    if (!b)
        abort();              /* not from vd_iobuf_alloc: a caller's bug */
    if (last)
        destroy(b);
}

struct vd_iobuf *vd_iobuf_hold(const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p, e;
    struct vd_iobuf *found = NULL;

    if (ADD_OVERFLOW(a, len, &e))
        return NULL;
    pthread_mutex_lock(&iobuf_lock);
    for (struct vd_iobuf *b = iobufs; b; b = b->next) {
        uintptr_t s = (uintptr_t)b->base;
        if (!b->freed && a >= s && e <= s + b->len) {
            found = b;
            b->refs++;
            break;
        }
    }
    pthread_mutex_unlock(&iobuf_lock);
    return found;
}

void vd_iobuf_release(struct vd_iobuf *b)
{
    bool last;

    if (!b)
        return;
    pthread_mutex_lock(&iobuf_lock);
    last = put_locked(b);
    pthread_mutex_unlock(&iobuf_lock);
    if (last)
        destroy(b);
}
