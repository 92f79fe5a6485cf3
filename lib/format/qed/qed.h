/* SPDX-License-Identifier: BSD-3-Clause */
/* The qed format (QEMU Enhanced Disk): a header cluster, an L1 table of
 * L2 table offsets, L2 tables of data cluster offsets, all little-endian
 * 64-bit entries; 0 is unallocated (reads the backing file), 1 a zero
 * cluster.  New clusters are appended at the end of the file.
 *
 * Invariants (crash safety; qed has no refcounts, so a crash may only
 * leak clusters, and the need-check bit says a check must run):
 *  1. The need-check feature bit is on disk (header written and flushed)
 *     before any table entry is written that allocates a cluster.  It is
 *     cleared only after a flush of the file, with no allocation running.
 *  2. A cluster is linked (L2 entry, or L1 entry for a new L2 table) only
 *     after its contents (guest data and copied-on-write fill, or a whole
 *     new L2 table) have been written; the L1 entry of a new L2 table is
 *     written after that table.  With a backing file, new data clusters
 *     are flushed before they are linked (a cluster linked but lost would
 *     read zeroes instead of the backing file's bytes); without one, such
 *     a cluster reads zeroes, which it read before.
 *  3. Allocations run one at a time under alloc_lock, which is held across
 *     their data writes; the next free offset (file_size) only grows.
 *  4. lock guards the header fields, L1 table, L2 cache and file_size in
 *     memory; it is held across metadata I/O (table loads and updates),
 *     never across guest data I/O. */
#ifndef VD_FORMAT_QED_H
#define VD_FORMAT_QED_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vdisk/driver.h"

#define QED_MAGIC            0x00444551u       /* "QED\0" */
#define QED_HEADER_LEN       64u
#define QED_MIN_CLUSTER      4096u
#define QED_MAX_CLUSTER      (64u << 20)
#define QED_MIN_TABLE        1u
#define QED_MAX_TABLE        16u
#define QED_DEFAULT_CLUSTER  65536u
#define QED_DEFAULT_TABLE    4u
#define QED_F_BACKING_FILE   0x01u
#define QED_F_NEED_CHECK     0x02u
#define QED_F_BACKING_RAW    0x04u             /* backing format is raw: no probe */
#define QED_FEATURES_KNOWN   (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_RAW)
#define QED_ENTRY_ZERO       1u                /* an L2 entry: zero cluster */
#define QED_NAME_MAX         4095u             /* longest backing file name QEMU reads */
/* Largest table (table_size clusters) vdisk keeps in memory. */
#define QED_TABLE_BYTES_MAX  (64u << 20)
/* Memory for cached L2 tables (at least QED_L2_SLOTS_MIN tables). */
#define QED_L2_CACHE_BYTES   (32u << 20)
#define QED_L2_SLOTS_MIN     2u
#define QED_L2_SLOTS_MAX     64u

/* Header field offsets. */
enum {
    QH_MAGIC = 0, QH_CLUSTER = 4, QH_TABLE = 8, QH_HEADER_SIZE = 12, QH_FEATURES = 16,
    QH_COMPAT = 24, QH_AUTOCLEAR = 32, QH_L1 = 40, QH_SIZE = 48, QH_BACKING_OFF = 56,
    QH_BACKING_LEN = 60,
};

struct qed_header {
    uint32_t magic, cluster_size, table_size, header_size;
    uint64_t features, compat, autoclear, l1_offset, image_size;
    uint32_t backing_off, backing_len;
};

/* One cached L2 table (entries in host order). */
struct qed_l2_slot {
    uint64_t offset;               /* 0: slot empty */
    uint64_t used;                 /* LRU tick */
    uint64_t *t;
};

struct qed_state {
    pthread_mutex_t lock;          /* invariant 4 */
    pthread_mutex_t alloc_lock;    /* invariant 3 */
    bool locks_ok;
    struct qed_header h;
    uint64_t cluster, table_bytes, nelems, header_bytes;
    unsigned l2_shift, l1_shift;
    uint64_t *l1;                  /* host order */
    struct qed_l2_slot *slots;
    unsigned nslots;
    uint64_t tick;
    uint64_t file_size;            /* end of the last whole cluster: next allocation */
    uint8_t *fill;                 /* one cluster, for copy-on-write fill (alloc_lock) */
};

/* Little-endian access. */
static inline uint32_t qed_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t qed_le64(const uint8_t *p)
{
    return qed_le32(p) | (uint64_t)qed_le32(p + 4) << 32;
}
static inline void qed_put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void qed_put_le64(uint8_t *p, uint64_t v)
{
    qed_put_le32(p, (uint32_t)v);
    qed_put_le32(p + 4, (uint32_t)(v >> 32));
}

/* qed.c */
bool qed_cluster_size_ok(uint64_t c);
bool qed_table_size_ok(uint64_t t);
/* Largest image size, capped at INT64_MAX (QEMU's wraps: see create). */
uint64_t qed_max_image_size(uint64_t cluster, uint64_t table);
bool qed_image_size_ok(uint64_t size, uint64_t cluster, uint64_t table);
/* A data cluster offset: aligned, past the header, before file_size. */
bool qed_cluster_offset_ok(const struct qed_state *s, uint64_t off);
/* A table offset: its table_size clusters all valid cluster offsets. */
bool qed_table_offset_ok(const struct qed_state *s, uint64_t off);
/* Write the header fields (not the rest of the header cluster). */
int qed_write_header(vd_node *n);
/* Read a table (table_bytes) at off into t, converted to host order. */
int qed_read_table(vd_node *n, uint64_t off, uint64_t *t);
/* Write entries [first, first+count) of table t (host order) at off,
 * extended to whole 512-byte sectors. */
int qed_write_entries(vd_node *n, uint64_t off, const uint64_t *t, uint64_t first,
                      uint64_t count);
/* The cached L2 table at off (loaded, validated offset); lock held. */
int qed_l2_get(vd_node *n, uint64_t off, uint64_t **t);
/* Put a new table in the cache (takes t); lock held. */
void qed_l2_put(vd_node *n, uint64_t off, uint64_t *t);
/* Drop every cached table; lock held. */
void qed_l2_drop_all(vd_node *n);
/* Clear need-check after flushing the file (invariant 1). */
int qed_mark_clean(vd_node *n);

/* io.c */
int qed_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags);
int qed_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags);
int qed_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags);
int qed_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                     uint64_t *map, vd_node **file);
int qed_flush(vd_node *n);
int qed_truncate(vd_node *n, uint64_t size, bool exact, int prealloc);
int qed_change_backing_file(vd_node *n, const char *name, const char *fmt);

/* check.c */
int qed_check(vd_node *n, struct vd_check_result *res, int fix);

/* create.c */
int qed_create(const char *filename, vd_opts *opts);
extern const struct vd_opt_desc qed_create_opts[];

#endif
