/* SPDX-License-Identifier: BSD-3-Clause */
/* The copy engine behind convert, dd, compare, commit and rebase:
 * N workers, bounded bytes in flight, driven by block status so holes are
 * never read, zero detection, optional out-of-order writes, compression. */
#ifndef VDISK_COPY_H
#define VDISK_COPY_H

#include "vdisk/vdisk.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*vd_progress_fn)(void *opaque, uint64_t done, uint64_t total);

struct vd_copy_params {
    vd_node **src;           /* sources, concatenated in order */
    size_t nsrc;
    uint64_t src_offset;     /* start in the concatenation (dd skip) */
    uint64_t length;         /* bytes to copy; 0 = all from src_offset */
    vd_node *dst;
    uint64_t dst_offset;     /* where in dst the copy lands */
    int workers;             /* -m; 0 = two per processor, at most 8 */
    bool out_of_order;       /* -W */
    uint64_t min_sparse;     /* -S in bytes; 0 = write every zero */
    bool target_is_zero;     /* --target-is-zero or a fresh zero-init target */
    bool no_zero_writes;     /* skip zero ranges entirely (target known zero) */
    bool salvage;            /* --salvage: read errors give zeroes */
    bool unallocated_only;   /* copy only what the top layer allocates (-B) */
    uint64_t chunk;          /* bytes per request; 0 = engine default */
    uint64_t max_in_flight;  /* bytes; 0 = engine default */
    vd_progress_fn progress;
    void *opaque;
    /* Added by the copy engine (append-only from here): */
    uint64_t rate_limit;     /* -r: bytes per second of data written; 0 = none */
    int write_flags;         /* extra VD_REQ_* for data writes */
    /* --salvage: called once per unreadable 512-byte sector with a message
     * "error while reading offset N: <strerror>"; may be NULL. */
    void (*warn)(void *opaque, const char *msg);
    /* -C: copy data ranges inside the host (vd_copy_range) where the nodes
     * allow it, falling back to reads and writes where they do not. */
    bool copy_offload;
    /* -c: write whole target clusters with vd_pwrite_compressed (each
     * worker compresses its own clusters); all-zero clusters are left out
     * on a zero target.  dst_offset must be cluster aligned. */
    bool compress;
    /* commit: copy only what the layers of src[0]'s chain above base
     * allocate (data as data, zero ranges as zero writes); base must be in
     * that chain.  NULL: no such filter. */
    vd_node *base;
};

/* Copy; -errno on the first failure (message names the failing side). */
int vd_copy(const struct vd_copy_params *p);

/* What vd_compare found, in the detail qemu-img compare reports. */
enum vd_compare_kind {
    VD_CMP_IDENTICAL,        /* 0 returned */
    VD_CMP_CONTENT,          /* data differs at offset */
    VD_CMP_SIZE,             /* strict: sizes differ */
    VD_CMP_STATUS,           /* strict: block status differs at offset */
    VD_CMP_ERR_STATUS,       /* block status of node failed (error) */
    VD_CMP_ERR_READ,         /* reading node at offset failed (error) */
};
struct vd_compare_result {
    enum vd_compare_kind kind;
    int node;                /* 0: a, 1: b (the failing or longer one) */
    uint64_t offset;         /* where the difference or failed read is */
    bool size_differs;       /* the two lengths differ */
    bool in_tail;            /* difference lies past the shorter length */
};

struct vd_compare_params {
    vd_node *a, *b;
    bool strict;             /* -s: allocation differences count */
    int workers;
    vd_progress_fn progress;
    void *opaque;
    /* Added by the copy engine (append-only from here): */
    struct vd_compare_result *result;   /* optional: details */
};
/* 0 identical, 1 differ (*first_diff set), -errno on error.  With sizes
 * that differ, the longer tail must be zero unless strict (qemu-img). */
int vd_compare(const struct vd_compare_params *p, uint64_t *first_diff);

#ifdef __cplusplus
}
#endif
#endif
