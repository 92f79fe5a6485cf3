/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for lib/util/iobuf.c: a hold finds the buffer holding a
 * range and nothing else, the memory outlives its owner's free while held,
 * and holds from many threads balance. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "util/iobuf.h"
#include "tap.h"

#define LEN (1u << 20)

/* Ranges inside, at the edges of and outside a buffer. */
static void test_lookup(void)
{
    char *a = vd_iobuf_alloc(LEN), *b = vd_iobuf_alloc(4096);
    static char other[64];
    struct vd_iobuf *h, *h2;

    CHECK(a && b && ((uintptr_t)a & 4095) == 0);
    CHECK((h = vd_iobuf_hold(a, LEN)) != NULL);
    vd_iobuf_release(h);
    CHECK((h = vd_iobuf_hold(a + LEN - 1, 1)) != NULL);
    vd_iobuf_release(h);
    CHECK(vd_iobuf_hold(a + 1, LEN) == NULL);
    CHECK(vd_iobuf_hold(a - 1, 2) == NULL);
    CHECK(vd_iobuf_hold(other, sizeof(other)) == NULL);
    CHECK(vd_iobuf_hold((void *)UINTPTR_MAX, 2) == NULL);
    h = vd_iobuf_hold(b, 4096);
    h2 = vd_iobuf_hold(a, 1);
    CHECK(h != NULL && h2 != NULL && h != h2);
    vd_iobuf_release(h);
    vd_iobuf_release(h2);
    vd_iobuf_free(a);
    vd_iobuf_free(b);
    vd_iobuf_free(NULL);
}

/* A held buffer stays readable and writable after its owner freed it,
 * and no new hold finds it. */
static void test_outlives_owner(void)
{
    char *a = vd_iobuf_alloc(LEN);
    struct vd_iobuf *h = vd_iobuf_hold(a + 100, 1000), *h2 = vd_iobuf_hold(a, 10);

    memset(a, 0x5a, LEN);
    vd_iobuf_free(a);
    CHECK(vd_iobuf_hold(a, 1) == NULL);
    CHECK(a[100] == 0x5a && a[LEN - 1] == 0x5a);
    a[5] = 1;               /* (freed memory: the sanitizer build would report it) */
    vd_iobuf_release(h);
    CHECK(a[5] == 1);
    vd_iobuf_release(h2);
}

static char *shared;

/* Take and drop holds many times. */
static void *hammer(void *arg)
{
    for (int i = 0; i < 20000; i++)
        vd_iobuf_release(vd_iobuf_hold(shared + (i % 4096), 64));
    return arg;
}

/* Holds from several threads balance: the owner's free then frees it, and
 * a buffer allocated after finds only itself. */
static void test_threads(void)
{
    pthread_t t[4];
    char *next;
    struct vd_iobuf *h;

    shared = vd_iobuf_alloc(8192);
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, hammer, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    vd_iobuf_free(shared);
    next = vd_iobuf_alloc(8192);
    h = vd_iobuf_hold(next, 8192);
    CHECK(h != NULL);
    vd_iobuf_release(h);
    vd_iobuf_free(next);
}

int main(void)
{
    test_lookup();
    test_outlives_owner();
    test_threads();
    return TAP_DONE();
}
