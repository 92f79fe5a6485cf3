/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: declarations shared by the files of the driver (on-disk layout
 * from QEMU's docs/interop/qcow2.txt, the per-node state, and the
 * functions each subsystem offers the others). */
#ifndef VD_QCOW2_H
#define VD_QCOW2_H

#include <pthread.h>
#include <stdint.h>

#include "util/checked.h"
#include "vdisk/driver.h"

/* ---- on-disk constants ---- */
#define QC_MAGIC            0x514649fbu          /* "QFI\xfb" */
#define QC_V2_HEADER_LEN    72u
#define QC_V3_HEADER_LEN    104u
#define QC_HEADER_LEN_OUT   112u                 /* what we write for v3 */
#define QC_MIN_CLUSTER_BITS 9u
#define QC_MAX_CLUSTER_BITS 21u
#define QC_MAX_BACKING_NAME 1023u
#define QC_MAX_L1_BYTES     (32u << 20)          /* QEMU's cap on the L1 table */
#define QC_MAX_REFTABLE_BYTES (8u << 20)         /* QEMU's cap on the refcount table */
#define QC_MAX_EXT_NAME     1023u

/* Header field offsets (all big endian). */
#define QH_SIZE             24
#define QH_L1_SIZE          36
#define QH_L1_OFFSET        40
#define QH_REFTABLE_OFFSET  48
#define QH_INCOMPAT         72
#define QH_COMPAT           80
#define QH_AUTOCLEAR        88

/* Feature bits. */
#define QC_INCOMPAT_DIRTY       (1ull << 0)
#define QC_INCOMPAT_CORRUPT     (1ull << 1)
#define QC_INCOMPAT_DATA_FILE   (1ull << 2)
#define QC_INCOMPAT_COMPRESSION (1ull << 3)
#define QC_INCOMPAT_EXTL2       (1ull << 4)
#define QC_INCOMPAT_KNOWN       0x1full
#define QC_COMPAT_LAZY          (1ull << 0)
#define QC_AUTOCLEAR_BITMAPS    (1ull << 0)
#define QC_AUTOCLEAR_DATA_RAW   (1ull << 1)

/* Header extension types. */
#define QC_EXT_END          0x00000000u
#define QC_EXT_BACKING_FMT  0xe2792acau
#define QC_EXT_FEATURES     0x6803f857u
/* The feature name table is written only with clusters larger than this
 * (as QEMU 7.2: at 4 KiB and below it would crowd out the backing name). */
#define QC_FEATURES_MIN_CLUSTER 4096u
#define QC_EXT_BITMAPS      0x23852875u
#define QC_EXT_CRYPTO       0x0537be77u
#define QC_EXT_DATA_FILE    0x44415441u

/* Table entries. */
#define QC_OFFSET_MASK      0x00fffffffffffe00ull  /* bits 9-55 */
#define QC_L1_RESERVED      0x7f000000000001ffull
#define QC_COPIED           (1ull << 63)
#define QC_COMPRESSED       (1ull << 62)
#define QC_ZERO_FLAG        1ull
#define QC_REFT_RESERVED    0x1ffull

enum { QC_COMP_ZLIB = 0, QC_COMP_ZSTD = 1 };

/* What one guest (sub)cluster maps to. */
enum qc_type {
    QC_UNALLOC,          /* read from backing (or zeroes) */
    QC_UNALLOC_ALLOC,    /* ext L2: host cluster exists, subcluster unallocated */
    QC_ZERO,             /* reads as zeroes, no host cluster */
    QC_ZERO_ALLOC,       /* reads as zeroes, host cluster preallocated */
    QC_NORMAL,           /* data in the host cluster */
    QC_COMPRESSED_T,     /* compressed cluster */
};

/* Kinds of metadata for the overlap check (overlap.c), in QEMU's order. */
enum {
    QC_OL_MAIN_HEADER = 1u << 0,
    QC_OL_ACTIVE_L1 = 1u << 1,
    QC_OL_ACTIVE_L2 = 1u << 2,
    QC_OL_REFCOUNT_TABLE = 1u << 3,
    QC_OL_REFCOUNT_BLOCK = 1u << 4,
    QC_OL_SNAPSHOT_TABLE = 1u << 5,
    QC_OL_INACTIVE_L1 = 1u << 6,
    QC_OL_INACTIVE_L2 = 1u << 7,
    QC_OL_BITMAP_DIRECTORY = 1u << 8,
    QC_OL_KINDS = 9,
};

/* ---- metadata cache (cache.c) ---- */
struct qc_cache;

/* One write in flight that allocates or fills guest clusters
 * [first, last]; overlapping writers wait for it (queued, each on its own
 * condition, and handed the range when it is free). */
struct qc_inflight {
    uint64_t first, last;
    struct qc_inflight *next;
    pthread_cond_t cond;           /* while queued */
    bool granted;
    bool shared;                   /* in-place write: overlaps other shared ones */
};

struct qcow2_state {
    pthread_mutex_t lock;          /* all metadata below; never held across
                                      guest data I/O */
    struct qc_inflight *inflight;
    struct qc_inflight *inflight_waiters;  /* queued, oldest first */

    /* Header, as read (host byte order). */
    uint32_t version, cluster_bits, crypt_method, l1_size, reftable_clusters;
    uint32_t nb_snapshots, refcount_order, header_length;
    uint64_t size, l1_offset, reftable_offset, snapshots_offset;
    uint64_t incompat, compat, autoclear;
    uint64_t backing_offset;
    uint32_t backing_len;
    uint8_t compression_type;

    /* Derived geometry. */
    uint64_t cluster_size;
    bool ext_l2;
    uint32_t l2_entry_size;        /* 8, or 16 with extended L2 */
    uint32_t l2_bits;              /* log2 of L2 entries per cluster */
    uint64_t sc_size;              /* subcluster size (cluster size without ext L2) */
    uint32_t sc_bits, sc_per_cluster;
    uint32_t refcount_bits;
    uint32_t refblock_bits;        /* log2 of refcounts per block */
    uint64_t refcount_max;

    /* Tables in memory. */
    uint64_t *l1;                  /* l1_size entries, host order */
    uint64_t *reftable;            /* reftable_size entries, host order */
    uint64_t reftable_size;
    uint64_t reftable_used;        /* entries up to the last nonzero one */
    struct qc_cache *l2_cache, *rc_cache;
    uint32_t l2_slice_size;        /* bytes per L2 cache entry */
    uint32_t status_span;          /* bytes of L2 table one mapping answer may cover
                                    * (QEMU's L2 cache entry: the cluster unless set) */
    uint64_t free_cluster_index;   /* where the search for free clusters starts */
    uint64_t file_end;             /* bytes the file is known to have */
    uint64_t grown_to;             /* file length after growing it ahead of
                                      file_end (cut back at close), 0: none */
    bool exact_growth;             /* grow the image file only as needed */

    /* Header extensions kept for info and rewrites. */
    char *backing_fmt, *data_file_name;
    bool has_bitmaps_ext, has_crypto_ext;
    uint64_t crypt_off, crypt_len;      /* the crypto header extension */
    struct vd_blockcrypt *crypt;        /* data cipher (NULL: none or no key) */
    struct luks_header *luks_h;         /* encrypt.format=luks: its header */
    uint8_t *luks_mk;                   /* its master key (writable opens: amend) */
    struct luks_algs *luks_a;
    uint64_t bitmap_dir_offset, bitmap_dir_size;
    uint32_t bitmap_count;         /* from the bitmaps extension */
    struct qc_bitmaps *bm;         /* persistent bitmaps (bitmaps.c) */
    unsigned overlap_checks;       /* QC_OL_* kinds checked before writes */

    vd_node *data;                 /* external data file (or n->file) */
    bool data_external, data_raw;
    bool lazy;                     /* lazy refcounts in force */
    bool write_prepared;           /* autoclear/dirty handled */
    bool corrupt;
    uint8_t prealloc_seen;         /* QEMU's metadata preallocation test, once
                                      per open: 0 not yet, 1 no, 2 yes */
    char bad_layout[160];          /* why every access fails, "" if fine */
    bool needs_repair;             /* opened dirty: refcounts untrusted */
    uint64_t free_byte_offset;     /* next byte for compressed data, 0: none */
    uint64_t max_compressed_off;   /* bound of compressed cluster offsets */
    uint64_t x_mask;               /* compressed descriptor: offset mask */
    uint32_t csize_shift;          /* compressed descriptor: sector count shift */
    uint64_t csize_mask;

    /* Internal snapshots (snapshot.c): the table as read at open. */
    struct qc_snapshot *snaps;     /* nb_snapshots entries */
    uint64_t snaps_bytes;          /* bytes of the table on disk */
    char snap_error[200];          /* why the table is unusable, "" if fine */
    bool snap_loaded;              /* reads come from a snapshot's L1 */
    /* cache-clean-interval: a thread drops cache entries unused that long. */
    uint32_t clean_interval;
    bool cleaner_running, cleaner_stop, cleaner_cond_ok;
    pthread_t cleaner;
    pthread_cond_t cleaner_cond;
};

/* One snapshot table entry (host order). */
struct qc_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id, *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec, vm_state_size, disk_size, icount;
    uint8_t *extra_unknown;        /* extra data past the known fields, kept */
    uint32_t extra_unknown_len;
};

/* ---- helpers ---- */
static inline uint64_t be64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}
static inline uint32_t be32_get(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint16_t be16_get(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void be64_put(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}
static inline void be32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void be16_put(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static inline uint64_t qc_offset_in_cluster(const struct qcow2_state *s, uint64_t off)
{
    return off & (s->cluster_size - 1);
}
static inline uint64_t qc_l2_entries(const struct qcow2_state *s) { return 1ull << s->l2_bits; }

/* ---- qcow2.c ---- */
/* Record a corruption: message, corrupt bit when writable; returns -EIO. */
int qcow2_corrupt(vd_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write one 64-bit header field at byte offset off. */
int qcow2_write_header_u64(vd_node *n, unsigned off, uint64_t v);
/* Before the first write: clear unknown autoclear bits, set the dirty bit
 * for lazy refcounts.  Lock held. */
int qcow2_prepare_write(vd_node *n);
/* Write back both caches in dependency order. Lock held. */
int qcow2_flush_caches(vd_node *n);
/* Pread from the file that zero-fills beyond its end (as QEMU reads). */
int qcow2_read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf);

/* Encryption (crypto.c): at open, the LUKS header (or legacy AES) and,
 * unless VD_O_NO_IO, the key from encrypt.key-secret; decrypt data read
 * from host (guest: its guest offset); the info's "encrypt" object. */
int qcow2_crypto_open(vd_node *n, vd_opts *opts, int flags);
void qcow2_crypto_close(vd_node *n);
int qcow2_crypto_decrypt(vd_node *n, uint64_t guest, uint64_t host, void *buf, uint64_t len);
/* Change LUKS key slots (amend's encrypt.* options, prefix removed). */
int qcow2_crypto_amend(vd_node *n, vd_opts *o, bool force);
/* Encrypt len bytes in place before they are written at host. */
int qcow2_crypto_encrypt(vd_node *n, uint64_t guest, uint64_t host, void *buf, uint64_t len);
struct vd_json;
void qcow2_crypto_info(vd_node *n, struct vd_json *d);
/* The encryption a new image asks for (create and measure). */
struct qc_crypt_create {
    uint32_t method;               /* 0: none, 1: aes, 2: luks */
    uint64_t payload;              /* luks: bytes of its header and key material */
};
/* Parse encryption and encrypt.* as QEMU does (the key secret must exist). */
int qcow2_crypto_parse_create(vd_opts *o, struct qc_crypt_create *cc);
/* Encrypt the new image n (opened without encryption): the LUKS header in
 * new clusters, then the image header naming it. */
int qcow2_crypto_setup(vd_node *n, vd_opts *o, const struct qc_crypt_create *cc);
/* Cut what qcow2_grow_file added past file_end (nothing else changed the
 * length since). Lock held or no other user. */
void qcow2_trim_grown_tail(vd_node *n);
/* Make sure the file is at least end bytes long (the image file grows
 * ahead unless exact_growth). Lock held. */
int qcow2_grow_file(vd_node *n, vd_node *f, uint64_t end);
/* check.c (declared in check.h): fix bit 1 leaks, bit 2 all errors. */
int qcow2_check(vd_node *n, struct vd_check_result *res, int fix);

/* ---- cache.c ---- */
struct qc_cache *qc_cache_new(vd_node *file, uint32_t entry_size, uint64_t nentries,
                              const char *load_event);
void qc_cache_free(struct qc_cache *c);
/* Get the table at off (entry_size bytes, big endian as on disk), reading
 * it unless fresh (then it is zero-filled).  Returns a handle (>= 0): the
 * entry stays pinned until qc_cache_put. */
int qc_cache_get(struct qc_cache *c, uint64_t off, bool fresh, void **table);
void qc_cache_put(struct qc_cache *c, int h);
void qc_cache_mark_dirty(struct qc_cache *c, int h);
/* Entries of c are written only after everything in dep is (with a flush
 * of the file between). */
int qc_cache_set_dependency(struct qc_cache *c, struct qc_cache *dep);
/* Entries of c are written only after a flush of the file (what they
 * will point to, written just before, must be stable first). */
void qc_cache_depends_on_flush(struct qc_cache *c);
/* Write back (and flush) what c depends on now, if anything. */
int qc_cache_write_dependency(struct qc_cache *c);
int qc_cache_flush(struct qc_cache *c);
/* Forget a cached table (its cluster is freed); no write-back. */
void qc_cache_discard(struct qc_cache *c, uint64_t off);
/* Drop clean entries unused for longer than secs seconds. */
void qc_cache_clean(struct qc_cache *c, uint64_t secs);
/* Number of entries the cache holds. */
int qc_cache_capacity(const struct qc_cache *c);
/* Hooks run before each write-back: check(ctx, off, len) may refuse it
 * (the overlap check); flush_data(ctx) runs where the cache flushes its
 * file first, for data the entries will point to that lives elsewhere
 * (an external data file).  Either may be NULL. */
void qc_cache_set_hooks(struct qc_cache *c, int (*check)(void *, uint64_t, uint64_t),
                        int (*flush_data)(void *), void *ctx);
/* Set the event named before each write-back. */
void qc_cache_set_write_event(struct qc_cache *c, const char *ev);

/* ---- refcount.c ---- */
int qcow2_refcount_init(vd_node *n);
/* Refcount of a host cluster (0 when no refcount block covers it). */
int qcow2_get_refcount(vd_node *n, uint64_t cluster, uint64_t *rc);
/* Add delta to the refcounts of the clusters of [off, off+len). */
int qcow2_update_refcount(vd_node *n, uint64_t off, uint64_t len, int64_t delta);
/* Allocate count contiguous clusters; returns the host offset in *off. */
int qcow2_alloc_clusters(vd_node *n, uint64_t count, uint64_t *off);
/* Allocate the free clusters at host offset off, up to count of them and
 * up to the first one in use; *got says how many. */
int qcow2_alloc_clusters_at(vd_node *n, uint64_t off, uint64_t count, uint64_t *got);
/* Write a new refcount table, with the refcount blocks it needs, at
 * cluster start (only free clusters from there on), covering itself and
 * extra clusters after it (exact: no room to spare in the table); block
 * new_off, when not 0, becomes entry new_i.  *end is the first cluster
 * after the area. */
int qcow2_refcount_area(vd_node *n, uint64_t start, uint64_t extra, bool exact,
                        uint64_t new_i, uint64_t new_off, uint64_t *end);
/* Allocate len bytes (< one cluster) for compressed data, packed. */
int qcow2_alloc_bytes(vd_node *n, uint64_t len, uint64_t *off);
/* Drop one reference of the clusters of [off, off+len). */
int qcow2_free_clusters(vd_node *n, uint64_t off, uint64_t len);
/* Drop the reference held by an L2 entry (normal or compressed). */
int qcow2_free_l2_entry(vd_node *n, uint64_t entry);
/* (io.c) Drop the references of entries e[0..count) after their L2
 * change; host clusters nothing uses any more are discarded in the image
 * file (a crash before the L2 change reaches the disk loses only data the
 * caller deletes). Lock held. */
int qcow2_release_entries(vd_node *n, const uint64_t *e, size_t count);
/* Highest allocated cluster + 1, in bytes. */
int qcow2_image_end(vd_node *n, uint64_t *end);

/* ---- cluster.c ---- */
struct qc_map {
    enum qc_type type;
    uint64_t host;                 /* host offset of the guest offset asked */
    uint64_t entry, bitmap;        /* raw L2 entry (and ext L2 bitmap) */
    uint64_t bytes;                /* bytes from the offset with this mapping */
};
/* Mapping of guest offset off, for up to len bytes. Lock held. */
int qcow2_get_mapping(vd_node *n, uint64_t off, uint64_t len, struct qc_map *m);
/* Pin the L2 slice holding guest cluster gc (allocating the L2 table when
 * alloc); *slice and *idx name the entry; *h is the cache handle to put,
 * or -1 (and *slice NULL) when the L2 table is unallocated. */
int qcow2_get_l2_slice(vd_node *n, uint64_t gc, bool alloc, uint64_t **slice,
                       uint32_t *idx, int *h);
/* Entry accessors for a pinned slice (index in entries, not words). */
uint64_t qc_l2_get(const struct qcow2_state *s, const uint64_t *slice, uint32_t i);
uint64_t qc_l2_get_bitmap(const struct qcow2_state *s, const uint64_t *slice, uint32_t i);
void qc_l2_set(struct qcow2_state *s, uint64_t *slice, uint32_t i, uint64_t entry,
               uint64_t bitmap);
/* Grow the L1 table to hold at least min_size entries. Lock held. */
int qcow2_grow_l1(vd_node *n, uint64_t min_size);
/* Decode a compressed descriptor. */
void qc_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *off,
                         uint64_t *len);

/* ---- io.c ---- */
int qcow2_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags);
int qcow2_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags);
int qcow2_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags);
int qcow2_discard(vd_node *n, uint64_t off, uint64_t len);
int qcow2_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                       uint64_t *map, vd_node **file);
/* Does the image look metadata-preallocated by QEMU's test (computed at
 * the first use after open, then cached)?  Takes the lock. */
bool qcow2_looks_preallocated(vd_node *n);
int qcow2_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf);
/* Wait until no in-flight write overlaps guest clusters [first, last], then
 * register one. Lock held. */
void qcow2_inflight_begin(vd_node *n, struct qc_inflight *f, uint64_t first, uint64_t last);
void qcow2_inflight_end(vd_node *n, struct qc_inflight *f);
/* Register a shared in-place write (see write.c, invariant 7) unless an
 * exclusive one holds or waits for part of [first, last]. Lock held. */
bool qcow2_inflight_try_shared(vd_node *n, struct qc_inflight *f, uint64_t first,
                               uint64_t last);

/* ---- compress.c ---- */
/* Decompress src into exactly dst_len bytes. */
int qcow2_decompress(int type, const void *src, size_t src_len, void *dst, size_t dst_len);
/* Compress src into dst (at most dst_cap); returns the size, or -ENOSPC
 * when it does not fit. */
ssize_t qcow2_compress(int type, const void *src, size_t src_len, void *dst, size_t dst_cap);
bool qcow2_zstd_available(void);

/* ---- create.c ---- */
int qcow2_create(const char *filename, vd_opts *opts);
int qcow2_measure(vd_opts *opts, vd_node *src, uint64_t size_in,
                  struct vd_measure_info *out);
int qcow2_truncate(vd_node *n, uint64_t size, bool exact, int prealloc);
/* Metadata bytes for a fully allocated image (QEMU's prealloc size). */
uint64_t qcow2_prealloc_size(uint64_t size, uint64_t cluster_size, uint32_t refcount_order,
                             bool ext_l2);
/* Preallocate [from, to) of the guest (metadata, falloc or full). */
int qcow2_preallocate(vd_node *n, uint64_t from, uint64_t to, int mode);
/* The feature name table extension's bytes into t (when not NULL); returns
 * its length. */
size_t qcow2_feature_table(uint8_t *t);

/* ---- amend.c, amend_refcount.c ---- */
extern const struct vd_opt_desc qcow2_amend_opts[];
/* Rewrite the header cluster from the state with one write (flushed
 * before and after); callers name the step with vd_event first. Lock
 * held. */
int qcow2_amend_write_header(vd_node *n);
/* Switch to 2^order-bit refcounts (new structures, one header write, old
 * ones freed). Lock held. */
int qcow2_change_refcount_order(vd_node *n, uint32_t order);
int qcow2_amend(vd_node *n, vd_opts *opts, bool force,
                void (*progress)(void *opaque, uint64_t done, uint64_t total),
                void *opaque);

/* ---- bitmaps.c ---- */
/* Before the first change: load every consistent bitmap and mark it in
 * use on disk (stored, in_use cleared, at close). Lock held. */
int qcow2_bitmaps_mark_in_use(vd_node *n);
/* At open: read and check the bitmap directory. */
int qcow2_bitmaps_open(vd_node *n);
/* At close: store what changed (writable nodes), then free. */
int qcow2_bitmaps_store(vd_node *n);
void qcow2_bitmaps_close(vd_node *n);
/* The driver's bitmap hook (vdisk/bitmap.h). */
int qcow2_bitmap_hook(vd_node *n, struct vd_bitmap_req *req);
/* Write paths that set the bits of enabled bitmaps, then do the change. */
int qcow2_bm_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags);
int qcow2_bm_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags);
int qcow2_bm_discard(vd_node *n, uint64_t off, uint64_t len);
int qcow2_bm_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf);
int qcow2_bm_truncate(vd_node *n, uint64_t size, bool exact, int prealloc);
int qcow2_bm_snapshot_goto(vd_node *n, const char *id_or_name);

/* ---- overlap.c ---- */
/* Read the overlap-check options (and remove them from opts). */
int qcow2_overlap_opts(vd_node *n, vd_opts *opts);
/* Refuse a write of [off, off+len) to the image file that meets metadata
 * of a checked kind not in ign (QC_OL_* bits): the image is marked
 * corrupt and -EIO returned.  Lock held. */
int qcow2_overlap_check(vd_node *n, unsigned ign, uint64_t off, uint64_t len);
/* Recount reftable_used after the refcount table changed. */
void qcow2_reftable_used_update(struct qcow2_state *s);

/* ---- snapshot.c ---- */
/* At open: read the snapshot table; the options snapshot.id/snapshot.name
 * (read-only nodes) make reads use that snapshot. */
int qcow2_snapshot_open(vd_node *n, vd_opts *opts, int flags);
void qcow2_snapshot_close(vd_node *n);
/* Read the snapshot table again (after a repair rewrote the header); an
 * unreadable one is remembered in snap_error. */
int qcow2_snapshot_reload(vd_node *n);
int qcow2_snapshot_list(vd_node *n, struct vd_snapshot_info **out);
int qcow2_snapshot_create(vd_node *n, const struct vd_snapshot_info *sn);
int qcow2_snapshot_goto(vd_node *n, const char *id_or_name);
int qcow2_snapshot_delete(vd_node *n, const char *id, const char *name);
int qcow2_snapshot_load(vd_node *n, const char *id, const char *name);

/* ---- backing.c ---- */
int qcow2_change_backing_file(vd_node *n, const char *name, const char *fmt);
int qcow2_make_empty(vd_node *n);

extern const struct vd_driver qcow2_driver;

#endif
