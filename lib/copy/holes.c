/* SPDX-License-Identifier: BSD-3-Clause */
/* Known zeroes of a convert request (see holes.h).  Formats that allocate
 * whole blocks leave the parts the guest never wrote as holes of their
 * file; reading them costs the kernel a copy and the zero scan a pass,
 * for bytes known to be zero.  Only where things read as zeroes changes:
 * which bytes are zero, and so every write decision, stays the same. */
#include "holes.h"
#include "util/checked.h"

/* Learn what lies at host of f into hc; false when f cannot tell. */
static bool learn(struct hole_cache *hc, vd_node *f, uint64_t host)
{
    uint64_t pnum = 0, map;
    vd_node *file;
    int r = vd_block_status(f, host, UINT64_MAX - host, &pnum, &map, &file);

    if (r < 0 || pnum == 0) {
        vd_error_clear();
        hc->f = NULL;
        return false;
    }
    *hc = (struct hole_cache){ f, host, host + pnum, (r & VD_BS_ZERO) != 0 };
    return true;
}

/* Add the holes of [host, host+len) of f, at byte at of the request of
 * rlen bytes, to k; false when k is full or f cannot tell. */
static bool file_holes(struct hole_cache *hc, vd_node *f, uint64_t host, uint64_t at,
                       uint64_t len, uint64_t rlen, struct sparse_known *k)
{
    while (len) {
        uint64_t l;
        if (!(hc->f == f && host >= hc->start && host < hc->end) && !learn(hc, f, host))
            return false;
        l = VD_MIN(hc->end - host, len);
        if (hc->zero && !sparse_known_add(k, at, at + l, rlen))
            return false;
        host += l;
        at += l;
        len -= l;
    }
    return true;
}

/* See holes.h. */
void holes_find(vd_node *src, uint64_t soff, uint64_t len, vd_node *hfile, uint64_t host,
                struct hole_cache *hc, struct sparse_known *k)
{
    uint64_t at = 0, pnum, map = 0;
    vd_node *file = NULL;
    bool more = true;

    k->n = 0;
    if (hfile) {
        file_holes(hc, hfile, host, 0, len, len, k);
        return;
    }
    while (more && at < len) {
        int r = vd_data_extent(src, soff + at, len - at, &pnum, &map, &file);
        if (r < 0) {
            vd_error_clear();
            return;
        }
        if (r & VD_BS_ZERO)
            more = sparse_known_add(k, at, at + pnum, len);
        else if ((r & VD_BS_OFFSET_VALID) && file)
            more = file_holes(hc, file, map, at, pnum, len, k);
        at += pnum;
    }
}
