/* SPDX-License-Identifier: BSD-3-Clause */
/* qed check, as QEMU 7.2's: every table and data cluster offset valid
 * (aligned, past the header, inside the file) and used once; clusters no
 * table names are leaks.  A repair (any fix mode) clears invalid entries;
 * leaks and clusters used twice stay.  Like QEMU it prints no lines of
 * its own. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qed/qed.h"
#include "util/checked.h"

struct qed_walk {
    vd_node *n;
    struct vd_check_result *res;
    bool fix;
    uint64_t nclusters;
    uint8_t *used;                 /* one bit per cluster of the file */
};

/* Mark count clusters from host offset off used; false when one already
 * was (a corruption). */
static bool mark_used(struct qed_walk *w, uint64_t off, uint64_t count)
{
    struct qed_state *s = w->n->state;
    uint64_t c = off >> s->l2_shift;
    bool ok = true;

    for (uint64_t k = 0; k < count && c + k < w->nclusters; k++) {
        uint64_t i = c + k;
        if (w->used[i / 8] & (1u << (i % 8))) {
            w->res->corruptions++;
            ok = false;
        }
        w->used[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    return ok;
}

/* Account an invalid entry: cleared when fixing. */
static void invalid_entry(struct qed_walk *w, uint64_t *e)
{
    if (w->fix) {
        *e = 0;
        w->res->corruptions_fixed++;
    } else {
        w->res->corruptions++;
    }
}

/* Check the entries of one L2 table; returns how many were invalid. */
static uint64_t check_l2(struct qed_walk *w, uint64_t *t)
{
    struct qed_state *s = w->n->state;
    uint64_t bad = 0, last = 0;

    for (uint64_t i = 0; i < s->nelems; i++) {
        uint64_t e = t[i];
        if (e == 0 || e == QED_ENTRY_ZERO)
            continue;
        w->res->allocated_clusters++;
        if (last && last + s->cluster != e)
            w->res->fragmented_clusters++;
        last = e;
        if (!qed_cluster_offset_ok(s, e)) {
            invalid_entry(w, &t[i]);
            bad++;
            continue;
        }
        mark_used(w, e, 1);
    }
    return bad;
}

/* Check the L2 table the L1 entry at index i names. */
static int check_l1_entry(struct qed_walk *w, uint64_t i, uint64_t *bad_l1, uint64_t *t)
{
    struct qed_state *s = w->n->state;
    uint64_t off = s->l1[i];
    int r;

    if (!qed_table_offset_ok(s, off)) {
        invalid_entry(w, &s->l1[i]);
        (*bad_l1)++;
        return 0;
    }
    if (!mark_used(w, off, s->h.table_size))
        return 0;                  /* a table used twice: skip it */
    if ((r = qed_read_table(w->n, off, t)) < 0) {
        w->res->check_errors++;
        return r;
    }
    if (check_l2(w, t) && w->fix && (r = qed_write_entries(w->n, off, t, 0, s->nelems)) < 0) {
        w->res->check_errors++;
        return r;
    }
    return 0;
}

/* Walk the L1 table and the L2 tables; returns the last error. */
static int walk(struct qed_walk *w)
{
    struct qed_state *s = w->n->state;
    uint64_t bad_l1 = 0, *t = malloc(s->table_bytes);
    int r, last = 0;

    if (!t)
        return vd_error(ENOMEM, "qed: cannot allocate an L2 table");
    mark_used(w, s->h.l1_offset, s->h.table_size);
    for (uint64_t i = 0; i < s->nelems; i++)
        if (s->l1[i] && (r = check_l1_entry(w, i, &bad_l1, t)) < 0)
            last = r;
    free(t);
    if (bad_l1 && w->fix && (r = qed_write_entries(w->n, s->h.l1_offset, s->l1, 0,
                                                   s->nelems)) < 0) {
        w->res->check_errors++;
        last = r;
    }
    return last;
}

/* Count the clusters past the header that nothing uses. */
static void count_leaks(struct qed_walk *w)
{
    struct qed_state *s = w->n->state;

    uint64_t i = s->h.header_size;

    for (; i < w->nclusters && i % 8; i++)
        if (!(w->used[i / 8] & (1u << (i % 8))))
            w->res->leaks++;
    for (; i + 8 <= w->nclusters; i += 8)           /* a byte at a time */
        w->res->leaks += 8 - __builtin_popcount(w->used[i / 8]);
    for (; i < w->nclusters; i++)
        if (!(w->used[i / 8] & (1u << (i % 8))))
            w->res->leaks++;
}

/* See qed.h.  Holds alloc_lock and lock throughout (no I/O runs beside). */
int qed_check(vd_node *n, struct vd_check_result *res, int fix)
{
    struct qed_state *s = n->state;
    struct qed_walk w = { .n = n, .res = res, .fix = fix != 0 };
    int r;

    pthread_mutex_lock(&s->alloc_lock);
    pthread_mutex_lock(&s->lock);
    w.nclusters = s->file_size >> s->l2_shift;
    res->total_clusters = div_round_up(s->h.image_size, s->cluster);
    if (!(w.used = calloc(w.nclusters / 8 + 1, 1))) {
        r = vd_error(ENOMEM, "qed: cannot allocate the cluster bitmap");
        res->check_errors++;
    } else {
        r = walk(&w);
        if (r == 0)
            count_leaks(&w);
    }
    free(w.used);
    if (w.fix)
        qed_l2_drop_all(n);        /* tables may have been rewritten */
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&s->alloc_lock);
    if (r == 0 && w.fix && !res->corruptions && !res->check_errors)
        r = qed_mark_clean(n);
    return r;
}
