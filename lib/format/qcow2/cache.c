/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: a write-back cache of metadata tables (L2 slices, refcount
 * blocks), kept in on-disk byte order.  Entries are found by host offset
 * through a hash and written back in offset order.  A cache may depend on
 * another: none of its entries reaches the file before everything dirty in
 * the other one has, with a flush of the file in between (this is how
 * "refcounts before L2" is kept).  Callers hold the driver's metadata lock.
 *
 * Replacement is scan resistant (the 2Q idea): a table read for the first
 * time joins a small "cold" list and is evicted from there, least recently
 * used first; only a table read again soon after its eviction (its offset
 * is still in a small "ghost" array) joins the "hot" list, which has the
 * rest of the room.  So a walk over every table of a large image (map,
 * convert) keeps a few tables in memory instead of filling the whole cache,
 * and the tables a workload returns to stay.  Finding a victim is O(1). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "format/qcow2/qcow2.h"

enum { L_NONE, L_COLD, L_HOT };

struct qc_entry {
    uint64_t off;                  /* 0: slot unused */
    void *table;                   /* NULL until first used */
    bool dirty;
    int pins;
    time_t used;                   /* last use, for cache-clean-interval */
    int hnext;                     /* next in hash chain, -1 */
    int prev, next;                /* neighbours in its list (or free stack) */
    int list;                      /* L_NONE (free), L_COLD or L_HOT */
};

/* A doubly linked list of entries, most recently used at head. */
struct qc_list {
    int head, tail, count;
};

struct qc_cache {
    vd_node *file;
    uint32_t entry_size;
    int n;
    struct qc_entry *e;
    int *bucket;
    uint32_t nbuckets;             /* power of two */
    uint64_t *ghost;               /* nbuckets offsets of evicted cold tables */
    struct qc_list lists[3];       /* [L_NONE]: unused slots (head only) */
    int cold_max;
    struct qc_cache *depends;
    bool flush_first;              /* flush the file before the next write-back */
    const char *load_event, *write_event;
    int (*check)(void *, uint64_t, uint64_t);
    int (*flush_data)(void *);
    void *hook_ctx;
};

/* Hash bucket of a table offset. */
static uint32_t bucket_of(const struct qc_cache *c, uint64_t off)
{
    return (uint32_t)(((off >> 9) * 0x9e3779b97f4a7c15ull) >> 32) & (c->nbuckets - 1);
}

/* New cache of nentries tables of entry_size bytes on file. */
struct qc_cache *qc_cache_new(vd_node *file, uint32_t entry_size, uint64_t nentries,
                              const char *load_event)
{
    struct qc_cache *c = calloc(1, sizeof(*c));
    uint32_t nb = 16;

    if (!c)
        return NULL;
    if (nentries < 2)
        nentries = 2;
    if (nentries > (1u << 22))
        nentries = 1u << 22;
    while (nb < 2 * nentries)
        nb <<= 1;
    c->file = file;
    c->entry_size = entry_size;
    c->n = (int)nentries;
    c->nbuckets = nb;
    c->load_event = load_event;
    c->cold_max = (int)VD_MAX(nentries / 8, VD_MIN(nentries, 16u));
    c->e = vd_calloc_array(nentries, sizeof(*c->e));
    c->bucket = vd_calloc_array(nb, sizeof(int));
    c->ghost = vd_calloc_array(nb, sizeof(uint64_t));
    if (!c->e || !c->bucket || !c->ghost) {
        qc_cache_free(c);
        return NULL;
    }
    for (uint32_t i = 0; i < nb; i++)
        c->bucket[i] = -1;
    for (int i = 0; i < 3; i++)
        c->lists[i] = (struct qc_list){ -1, -1, 0 };
    for (int i = c->n - 1; i >= 0; i--) {
        c->e[i].hnext = -1;
        c->e[i].next = c->lists[L_NONE].head;
        c->lists[L_NONE].head = i;
    }
    return c;
}

/* Take entry i out of its list. */
static void list_remove(struct qc_cache *c, int i)
{
    struct qc_entry *e = &c->e[i];
    struct qc_list *l = &c->lists[e->list];

    if (e->list == L_NONE) {       /* the free stack: only ever popped */
        l->head = e->next;
        return;
    }
    if (e->prev >= 0)
        c->e[e->prev].next = e->next;
    else
        l->head = e->next;
    if (e->next >= 0)
        c->e[e->next].prev = e->prev;
    else
        l->tail = e->prev;
    l->count--;
}

/* Put entry i at the head (most recently used) of list which. */
static void list_push(struct qc_cache *c, int i, int which)
{
    struct qc_entry *e = &c->e[i];
    struct qc_list *l = &c->lists[which];

    e->list = which;
    e->prev = -1;
    e->next = l->head;
    if (which == L_NONE) {
        l->head = i;
        return;
    }
    if (l->head >= 0)
        c->e[l->head].prev = i;
    else
        l->tail = i;
    l->head = i;
    l->count++;
}

/* Free the cache (dirty entries are lost: flush first). */
void qc_cache_free(struct qc_cache *c)
{
    if (!c)
        return;
    for (int i = 0; c->e && i < c->n; i++)
        free(c->e[i].table);
    free(c->e);
    free(c->bucket);
    free(c->ghost);
    free(c);
}

/* Set the blkdebug event named before each write-back. */
void qc_cache_set_write_event(struct qc_cache *c, const char *ev)
{
    c->write_event = ev;
}

/* Index of the entry caching off, or -1. */
static int lookup(const struct qc_cache *c, uint64_t off)
{
    for (int i = c->bucket[bucket_of(c, off)]; i >= 0; i = c->e[i].hnext)
        if (c->e[i].off == off)
            return i;
    return -1;
}

/* Unlink entry i from its hash chain and mark the slot unused. */
static void unhash(struct qc_cache *c, int i)
{
    int *pp = &c->bucket[bucket_of(c, c->e[i].off)];

    while (*pp >= 0 && *pp != i)
        pp = &c->e[*pp].hnext;
    if (*pp == i)
        *pp = c->e[i].hnext;
    c->e[i].off = 0;
    c->e[i].hnext = -1;
    c->e[i].dirty = false;
    list_remove(c, i);
    list_push(c, i, L_NONE);
}

static int flush_dependency(struct qc_cache *c);

/* Write entry i back to the file. */
static int write_entry(struct qc_cache *c, int i)
{
    struct qc_entry *e = &c->e[i];
    int r;

    if (!e->dirty)
        return 0;
    if (c->depends && (r = flush_dependency(c)) < 0)
        return r;
    if (c->flush_first && c->flush_data && (r = c->flush_data(c->hook_ctx)) < 0)
        return r;
    if (c->flush_first && (r = vd_flush(c->file)) < 0)
        return r;
    c->flush_first = false;
    if (c->check && (r = c->check(c->hook_ctx, e->off, c->entry_size)) < 0)
        return r;
    if (c->write_event)
        vd_event(c->file, c->write_event);
    r = vd_pwrite(c->file, e->off, c->entry_size, e->table, 0);
    if (r < 0)
        return r;
    e->dirty = false;
    return 0;
}

/* Write everything c depends on, flush the file, drop the dependency. */
static int flush_dependency(struct qc_cache *c)
{
    int r = qc_cache_flush(c->depends);

    if (r < 0)
        return r;
    if (c->flush_first && c->flush_data && (r = c->flush_data(c->hook_ctx)) < 0)
        return r;
    if ((r = vd_flush(c->file)) < 0)
        return r;
    c->depends = NULL;
    c->flush_first = false;
    return 0;
}

/* See qcow2.h. */
int qc_cache_write_dependency(struct qc_cache *c)
{
    return c->depends ? flush_dependency(c) : 0;
}

/* See qcow2.h. */
void qc_cache_depends_on_flush(struct qc_cache *c)
{
    c->flush_first = true;
}

/* Make entries of c wait for everything dirty in dep. */
int qc_cache_set_dependency(struct qc_cache *c, struct qc_cache *dep)
{
    int r;

    if (dep->depends && (r = flush_dependency(dep)) < 0)
        return r;
    if (c->depends && c->depends != dep && (r = flush_dependency(c)) < 0)
        return r;
    c->depends = dep;
    return 0;
}

/* Order entries by offset for write-back. */
static int cmp_entry_off(const void *a, const void *b, void *arg)
{
    const struct qc_cache *c = arg;
    uint64_t x = c->e[*(const int *)a].off, y = c->e[*(const int *)b].off;
    return x < y ? -1 : x > y;
}

/* Write back every dirty entry, in offset order. */
int qc_cache_flush(struct qc_cache *c)
{
    int *idx, nd = 0, r = 0;

    if (!c)
        return 0;
    idx = vd_calloc_array((size_t)c->n, sizeof(int));
    if (!idx)
        return vd_error(ENOMEM, "out of memory");
    for (int i = 0; i < c->n; i++)
        if (c->e[i].off && c->e[i].dirty)
            idx[nd++] = i;
    qsort_r(idx, (size_t)nd, sizeof(int), cmp_entry_off, c);
    for (int k = 0; k < nd && r >= 0; k++)
        r = write_entry(c, idx[k]);
    free(idx);
    return r;
}

/* The least recently used unpinned entry of list which, or -1. */
static int lru_unpinned(const struct qc_cache *c, int which)
{
    int i = c->lists[which].tail;

    while (i >= 0 && c->e[i].pins)
        i = c->e[i].prev;
    return i;
}

/* A slot for a new table that goes to list which: an unused one while the
 * list has room, else the least recently used unpinned entry (written back
 * first; a cold one leaves its offset in the ghost array). */
static int find_victim(struct qc_cache *c, int which, int *out)
{
    int best = -1, r;

    if (c->lists[L_NONE].head >= 0 && (which == L_HOT || c->lists[L_COLD].count < c->cold_max)) {
        *out = c->lists[L_NONE].head;
        list_remove(c, *out);
        c->e[*out].list = L_NONE;
        return 0;
    }
    if (which == L_COLD && c->lists[L_COLD].count >= c->cold_max)
        best = lru_unpinned(c, L_COLD);
    /* A dirty table would cost a write and a flush now: grow instead. */
    if (best >= 0 && c->e[best].dirty && c->lists[L_NONE].head >= 0)
        best = c->lists[L_NONE].head;
    if (best < 0)
        best = lru_unpinned(c, L_HOT);
    if (best < 0)
        best = lru_unpinned(c, L_COLD);
    if (best < 0 && c->lists[L_NONE].head >= 0)
        best = c->lists[L_NONE].head;
    if (best < 0)
        return vd_error(ENOSPC, "qcow2: metadata cache is full (too many pinned tables)");
    if (c->e[best].list != L_NONE) {
        if ((r = write_entry(c, best)) < 0)
            return r;
        if (c->e[best].list == L_COLD)
            c->ghost[bucket_of(c, c->e[best].off)] = c->e[best].off;
        unhash(c, best);
    }
    list_remove(c, best);
    c->e[best].list = L_NONE;
    *out = best;
    return 0;
}

/* Fill slot i with the table at off. */
static int load_entry(struct qc_cache *c, int i, uint64_t off, bool fresh)
{
    struct qc_entry *e = &c->e[i];
    int r;

    if (!e->table && posix_memalign(&e->table, 512, c->entry_size))
        return vd_error(ENOMEM, "out of memory");
    if (fresh) {
        memset(e->table, 0, c->entry_size);
    } else {
        if (c->load_event)
            vd_event(c->file, c->load_event);
        if ((r = qcow2_read_padded(c->file, off, c->entry_size, e->table)) < 0)
            return r;
    }
    e->off = off;
    e->dirty = false;
    e->pins = 0;
    e->hnext = c->bucket[bucket_of(c, off)];
    c->bucket[bucket_of(c, off)] = i;
    return 0;
}

/* Which list a table that is not cached joins: hot when it was evicted
 * from the cold list a short while ago. */
static int list_for(struct qc_cache *c, uint64_t off)
{
    uint64_t *g = &c->ghost[bucket_of(c, off)];

    if (*g != off)
        return L_COLD;
    *g = 0;
    return L_HOT;
}

/* See qcow2.h. */
int qc_cache_get(struct qc_cache *c, uint64_t off, bool fresh, void **table)
{
    int i = lookup(c, off), r, which;

    if (i < 0) {
        which = list_for(c, off);
        if ((r = find_victim(c, which, &i)) < 0)
            return r;
        if ((r = load_entry(c, i, off, fresh)) < 0) {
            list_push(c, i, L_NONE);
            return r;
        }
        list_push(c, i, which);
    } else {
        if (fresh)
            memset(c->e[i].table, 0, c->entry_size);
        which = c->e[i].list;
        list_remove(c, i);
        list_push(c, i, which);
    }
    c->e[i].pins++;
    c->e[i].used = time(NULL);
    *table = c->e[i].table;
    return i;
}

/* Unpin. */
void qc_cache_put(struct qc_cache *c, int h)
{
    if (h >= 0 && h < c->n && c->e[h].pins > 0)
        c->e[h].pins--;
}

/* The pinned table h was changed. */
void qc_cache_mark_dirty(struct qc_cache *c, int h)
{
    if (h >= 0 && h < c->n)
        c->e[h].dirty = true;
}

/* Forget the table at off (its cluster was freed). */
void qc_cache_discard(struct qc_cache *c, uint64_t off)
{
    int i = lookup(c, off);

    if (i >= 0 && !c->e[i].pins)
        unhash(c, i);
}

/* Drop clean, unpinned entries unused for secs seconds (freeing memory). */
void qc_cache_clean(struct qc_cache *c, uint64_t secs)
{
    time_t now = time(NULL);

    for (int i = 0; i < c->n; i++) {
        struct qc_entry *e = &c->e[i];
        if (e->off && !e->dirty && !e->pins && (uint64_t)(now - e->used) >= secs) {
            unhash(c, i);
            free(e->table);
            e->table = NULL;
        }
    }
}

/* See qcow2.h. */
void qc_cache_set_hooks(struct qc_cache *c, int (*check)(void *, uint64_t, uint64_t),
                        int (*flush_data)(void *), void *ctx)
{
    c->check = check;
    c->flush_data = flush_data;
    c->hook_ctx = ctx;
}

/* Number of entries the cache holds. */
int qc_cache_capacity(const struct qc_cache *c)
{
    return c->n;
}
