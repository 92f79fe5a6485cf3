/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: the metadata-overlap check.  Before the driver writes anything
 * into the image file (guest data, an L2 slice, a refcount block, a table
 * entry) it makes sure the bytes do not land on metadata of another kind;
 * a corrupted L2 entry or refcount would otherwise let a write destroy the
 * L1 table or a refcount block.  A hit marks the image corrupt and fails
 * the write with EIO.  Which kinds are checked is chosen with the open
 * options overlap-check (none, constant, cached, all; default cached) and
 * overlap-check.<kind> (on/off per kind), with QEMU's names and meaning:
 * "constant" kinds cost nothing to check, "cached" ones scan tables held
 * in memory, and inactive-l2 reads every snapshot's L1 table from disk on
 * each write.  Caller holds the metadata lock. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

/* The kinds, in QEMU's bit order, with their option and report names. */
static const struct {
    const char *opt, *what;
} kinds[QC_OL_KINDS] = {
    { "main-header", "qcow2_header" },
    { "active-l1", "active L1 table" },
    { "active-l2", "active L2 table" },
    { "refcount-table", "refcount table" },
    { "refcount-block", "refcount block" },
    { "snapshot-table", "snapshot table" },
    { "inactive-l1", "inactive L1 table" },
    { "inactive-l2", "inactive L2 table" },
    { "bitmap-directory", "bitmap directory" },
};

#define OL_CONSTANT (QC_OL_MAIN_HEADER | QC_OL_ACTIVE_L1 | QC_OL_REFCOUNT_TABLE | \
                     QC_OL_SNAPSHOT_TABLE | QC_OL_BITMAP_DIRECTORY)
#define OL_CACHED   (OL_CONSTANT | QC_OL_ACTIVE_L2 | QC_OL_REFCOUNT_BLOCK | QC_OL_INACTIVE_L1)
#define OL_ALL      (OL_CACHED | QC_OL_INACTIVE_L2)

/* Does [a, a+alen) meet [b, b+blen)? */
static bool meets(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* The template named by v (overlap-check or overlap-check.template). */
static int template_mask(const char *v, unsigned *mask)
{
    static const struct {
        const char *name;
        unsigned mask;
    } t[] = { { "none", 0 }, { "constant", OL_CONSTANT }, { "cached", OL_CACHED },
              { "all", OL_ALL } };

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (!strcmp(v, t[i].name)) {
            *mask = t[i].mask;
            return 0;
        }
    return vd_error(EINVAL, "Unsupported value '%s' for qcow2 option 'overlap-check'. "
                    "Allowed are any of the following: none, constant, cached, all", v);
}

/* See qcow2.h. */
int qcow2_overlap_opts(vd_node *n, vd_opts *opts)
{
    struct qcow2_state *s = n->state;
    const char *v = vd_opts_get(opts, "overlap-check");
    const char *t = vd_opts_get(opts, "overlap-check.template");
    unsigned mask = OL_CACHED;
    char key[64];
    int r;

    if (v && t && strcmp(v, t))
        return vd_error(EINVAL, "Conflicting values for qcow2 options 'overlap-check' "
                        "('%s') and 'overlap-check.template' ('%s')", v, t);
    if ((v || t) && (r = template_mask(v ? v : t, &mask)) < 0)
        return r;
    for (unsigned i = 0; i < QC_OL_KINDS; i++) {
        bool on;
        snprintf(key, sizeof(key), "overlap-check.%s", kinds[i].opt);
        if ((r = vd_opts_get_bool(opts, key, (mask >> i) & 1, &on)) < 0)
            return r;
        mask = on ? mask | (1u << i) : mask & ~(1u << i);
        vd_opts_del(opts, key);
    }
    vd_opts_del(opts, "overlap-check");
    vd_opts_del(opts, "overlap-check.template");
    s->overlap_checks = mask;
    return 0;
}

/* Does [off, off+len) meet an L2 table named by the L1 table l1? */
static bool meets_l2(const struct qcow2_state *s, const uint64_t *l1, uint64_t entries,
                     uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t l2 = l1[i] & QC_OFFSET_MASK;
        if (l2 && meets(off, len, l2, s->cluster_size))
            return true;
    }
    return false;
}

/* Does [off, off+len) meet a refcount block? */
static bool meets_refblock(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < s->reftable_used; i++) {
        uint64_t b = s->reftable[i] & ~QC_REFT_RESERVED;
        if (b && meets(off, len, b, s->cluster_size))
            return true;
    }
    return false;
}

/* Does [off, off+len) meet a snapshot's L1 table? */
static bool meets_inactive_l1(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (uint32_t i = 0; i < s->nb_snapshots && s->snaps; i++)
        if (meets(off, len, s->snaps[i].l1_offset, (uint64_t)s->snaps[i].l1_size * 8))
            return true;
    return false;
}

/* Does [off, off+len) meet an L2 table of a snapshot?  Reads each
 * snapshot's L1 table (the "all" mode's price); an unreadable one counts
 * as a hit, so nothing is written on a guess. */
static bool meets_inactive_l2(vd_node *n, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    bool hit = false;

    for (uint32_t i = 0; i < s->nb_snapshots && s->snaps && !hit; i++) {
        uint32_t sz = s->snaps[i].l1_size;
        uint64_t *l1 = sz ? vd_calloc_array(sz, 8) : NULL;
        if (!sz)
            continue;
        if (!l1 || vd_pread(n->file, s->snaps[i].l1_offset, (uint64_t)sz * 8, l1, 0) < 0) {
            free(l1);
            return true;
        }
        for (uint32_t k = 0; k < sz; k++)
            l1[k] = be64_get((const uint8_t *)&l1[k]);
        hit = meets_l2(s, l1, sz, off, len);
        free(l1);
    }
    return hit;
}

/* The first kind in mask that [off, off+len) meets, or -1. */
static int first_hit(vd_node *n, unsigned mask, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;

    if ((mask & QC_OL_MAIN_HEADER) && meets(off, len, 0, s->cluster_size))
        return 0;
    if ((mask & QC_OL_ACTIVE_L1) && meets(off, len, s->l1_offset, (uint64_t)s->l1_size * 8))
        return 1;
    if ((mask & QC_OL_ACTIVE_L2) && s->l1 && meets_l2(s, s->l1, s->l1_size, off, len))
        return 2;
    if ((mask & QC_OL_REFCOUNT_TABLE) &&
        meets(off, len, s->reftable_offset, s->reftable_size * 8))
        return 3;
    if ((mask & QC_OL_REFCOUNT_BLOCK) && s->reftable && meets_refblock(s, off, len))
        return 4;
    if ((mask & QC_OL_SNAPSHOT_TABLE) && s->nb_snapshots &&
        meets(off, len, s->snapshots_offset, s->snaps_bytes))
        return 5;
    if ((mask & QC_OL_INACTIVE_L1) && meets_inactive_l1(s, off, len))
        return 6;
    if ((mask & QC_OL_INACTIVE_L2) && meets_inactive_l2(n, off, len))
        return 7;
    if ((mask & QC_OL_BITMAP_DIRECTORY) &&
        meets(off, len, s->bitmap_dir_offset, s->bitmap_dir_size))
        return 8;
    return -1;
}

/* See qcow2.h. */
int qcow2_overlap_check(vd_node *n, unsigned ign, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = n->state;
    unsigned mask = s->overlap_checks & ~ign;
    int k;

    if (!mask || !len)
        return 0;
    if ((k = first_hit(n, mask, off, len)) < 0)
        return 0;
    return qcow2_corrupt(n, "Preventing invalid write on metadata (overlaps with %s)",
                         kinds[k].what);
}

/* See qcow2.h. */
void qcow2_reftable_used_update(struct qcow2_state *s)
{
    uint64_t i = s->reftable_size;

    while (i && !(s->reftable[i - 1] & ~QC_REFT_RESERVED))
        i--;
    s->reftable_used = i;
}
