/* SPDX-License-Identifier: BSD-3-Clause */
/* Zero detection of one convert request, with qemu-img 7.2's outcome (see
 * sparse.h).  The rule, in 512-byte sectors:
 *  - a request that is all zero sectors is zero, one with no zero sector
 *    data, whatever their length;
 *  - otherwise it is cut into runs of one kind; a run that ends off an
 *    alignment boundary (align: -S rounded down to a power of two) moves
 *    its end there: a data run grows to the boundary, a zero run shrinks
 *    to it, and a zero run that lies within the block before the boundary
 *    becomes data;
 *  - a data run absorbs the runs after it until a zero run of at least -S
 *    (or of the whole rest, if shorter) follows; zeroes it absorbed at the
 *    very end of the request are given back and start the next run. */
#include <string.h>

#include "sparse.h"
#include "util/checked.h"

#define SECTOR 512u

/* One scan: the zero flags of the sectors and the rule's parameters. */
struct scan {
    const bool *zero;
    uint64_t first;            /* sector of the target where the buffer lands */
    uint64_t min, align;       /* in sectors */
};

/* The run at sector i of [i, n) by the alignment rule: true for data, its
 * length in *len. */
static bool run_at(const struct scan *sc, uint64_t i, uint64_t n, uint64_t *len)
{
    bool zero = sc->zero[i];
    uint64_t j = i + 1, k, tail;

    while (j < n && sc->zero[j] == zero)
        j++;
    k = j - i;
    if (j < n && (tail = (sc->first + j) & (sc->align - 1)) != 0) {
        if (zero && k <= tail)
            zero = false;              /* the data after it rewrites it anyway */
        if (zero)
            k -= tail;
        else
            k = VD_MIN(k + sc->align - tail, n - i);
    }
    *len = k;
    return !zero;
}

/* The run at sector i of [i, n) once a data run has absorbed the short
 * zero runs after it: true for data, its length in *len. */
static bool run_min(const struct scan *sc, uint64_t i, uint64_t n, uint64_t *len)
{
    uint64_t min = VD_MIN(sc->min, n - i), k, at, used;

    if (!run_at(sc, i, n, &k)) {
        *len = k;
        return false;
    }
    used = at = i + k;
    while (at < n) {
        bool data = run_at(sc, at, n, &k);

        at += k;
        if (data)
            used = at;
        else if (k >= min)
            break;
    }
    *len = used - i;
    return true;
}

/* Append a run of kind zero ending at byte e, merged with the last one
 * when of the same kind. */
static void push_run(struct sparse_map *m, bool zero, uint64_t e)
{
    if (m->n && sparse_run_zero(m, m->n - 1) == zero) {
        m->end[m->n - 1] = e;
        return;
    }
    if (m->n == 0)
        m->first_zero = zero;
    m->end[m->n++] = e;
}

/* See sparse.h. */
void sparse_scan(const char *buf, uint64_t len, uint64_t off, uint64_t min,
                 uint64_t align, const struct sparse_known *known, struct sparse_map *m)
{
    uint64_t n = div_round_up(len, SECTOR), k;
    struct scan sc = { m->zero, off / SECTOR, VD_MAX(min / SECTOR, 1),
                       VD_MAX(align / SECTOR, 1) };
    size_t kk = 0, kn = known ? known->n : 0;

    for (uint64_t i = 0; i < n; i++) {
        uint64_t b = i * SECTOR;
        while (kk < kn && known->end[kk] <= b)
            kk++;
        m->zero[i] = (kk < kn && known->start[kk] <= b) ||
                     buffer_is_zero(buf + b, VD_MIN(SECTOR, len - b));
    }
    m->n = 0;
    for (uint64_t i = 0; i < n; i += k) {
        bool data = run_min(&sc, i, n, &k);
        push_run(m, !data, VD_MIN((i + k) * SECTOR, len));
    }
}

/* See sparse.h. */
void sparse_fill_known(char *buf, const struct sparse_map *m, const struct sparse_known *known)
{
    uint64_t run_start = 0;

    for (size_t k = 0; k < m->n; k++) {
        if (!sparse_run_zero(m, k)) {
            for (size_t j = 0; j < known->n; j++) {
                uint64_t s = VD_MAX(known->start[j], run_start);
                uint64_t e = VD_MIN(known->end[j], m->end[k]);
                if (s < e)
                    memset(buf + s, 0, e - s);
            }
        }
        run_start = m->end[k];
    }
}

/* See sparse.h. */
bool sparse_known_add(struct sparse_known *k, uint64_t s, uint64_t e, uint64_t len)
{
    s = div_round_up(s, SECTOR) * SECTOR;
    if (e != len)
        e = round_down(e, SECTOR);
    if (s >= e)
        return true;
    if (k->n && k->end[k->n - 1] == s) {
        k->end[k->n - 1] = e;
        return true;
    }
    if (k->n == SPARSE_KNOWN_MAX)
        return false;
    k->start[k->n] = s;
    k->end[k->n++] = e;
    return true;
}

/* See sparse.h. */
size_t sparse_map_slots(uint64_t len)
{
    return (size_t)div_round_up(len, SECTOR) + 2;
}
