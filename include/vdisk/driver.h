/* SPDX-License-Identifier: BSD-3-Clause */
/* The driver interface: one versioned, append-only table of function
 * pointers per driver, registered with VD_DRIVER_REGISTER.  Drivers never
 * see an out-of-range, misaligned or over-long request: lib/core/io.c checks
 * and splits before calling them. */
#ifndef VDISK_DRIVER_H
#define VDISK_DRIVER_H

#include <pthread.h>
#include <stdatomic.h>

#include "vdisk/vdisk.h"

#ifdef __cplusplus
extern "C" {
#endif

enum vd_driver_kind { VD_DRV_FORMAT, VD_DRV_PROTOCOL, VD_DRV_FILTER };

/* Result of a consistency check (qemu-img check's fields). */
struct vd_check_result {
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;          /* 0: unknown */
    uint64_t total_clusters, allocated_clusters;
    uint64_t fragmented_clusters, compressed_clusters;
};
struct vd_json;
struct vd_bitmap_req;
struct vd_measure_info { uint64_t required, fully_allocated; bool has_bitmaps; uint64_t bitmaps; };

struct vd_driver {
    uint32_t struct_size;          /* sizeof(struct vd_driver) at build time */
    const char *name;              /* "raw", "file", "qcow2", ... */
    enum vd_driver_kind kind;
    const char *protocol;          /* URI scheme / "proto:" prefix, or NULL */
    size_t state_size;             /* bytes of zeroed per-node state */
    const struct vd_opt_desc *open_opts;    /* options the node accepts */
    const struct vd_opt_desc *create_opts;  /* -o options of create */

    /* Score (0..100) that the image is ours from its first bytes/name. */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /* Protocol drivers: turn a name into options (filename=...), optional. */
    int (*parse_filename)(const char *name, vd_opts *opts);

    /* n->file is already open for format drivers (unless drv opens its own
     * children); opts holds the remaining options for this node. */
    int (*open)(vd_node *n, vd_opts *opts, int flags);
    void (*close)(vd_node *n);

    int (*pread)(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags);
    int (*pwrite)(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags);
    int (*pwrite_zeroes)(vd_node *n, uint64_t off, uint64_t len, int flags);
    int (*discard)(vd_node *n, uint64_t off, uint64_t len);
    int (*flush)(vd_node *n);
    int (*block_status)(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                        uint64_t *map, vd_node **file);
    int64_t (*getlength)(vd_node *n);
    int64_t (*get_allocated_size)(vd_node *n);
    int (*truncate)(vd_node *n, uint64_t size, bool exact, int prealloc);

    /* Create the image named filename with options (already validated
     * against create_opts plus "size"). */
    int (*create)(const char *filename, vd_opts *opts);
    /* Sizes for "measure": src may be NULL (then size_in is the size). */
    int (*measure)(vd_opts *opts, vd_node *src, uint64_t size_in,
                   struct vd_measure_info *out);
    /* Format-specific info: fill the "format-specific" data object. */
    int (*info)(vd_node *n, struct vd_json *data);
    int (*check)(vd_node *n, struct vd_check_result *res, int fix);
    /* Fault-injection: called by vd_event before named metadata writes. */
    void (*event)(vd_node *n, const char *event);
    /* Has the node all-zero content right after create/truncate? */
    bool (*has_zero_init)(vd_node *n);
    /* The format stores guest data as is, with no metadata (raw): it shares
     * writes to its file like QEMU's raw; other formats take the metadata
     * locks (write and resize, not shared). */
    bool data_only;
    /* Unallocated ranges fall through to a backing file (and read as zero
     * when there is none). */
    bool supports_backing;
    /* Copy offloading (convert -C): a pass-through layer translates its side
     * of the request and calls vd_copy_range on its child; the bottom layer
     * (file) copies inside the host.  -ENOTSUP when it cannot. */
    int (*copy_range_from)(vd_node *src, uint64_t soff, vd_node *dst,
                           uint64_t doff, uint64_t len);
    int (*copy_range_to)(vd_node *src, uint64_t soff, vd_node *dst,
                         uint64_t doff, uint64_t len);
    /* Write one whole compressed cluster (off cluster-aligned, len the
     * cluster size or the tail of the image); data that does not shrink is
     * stored uncompressed.  NULL: the format cannot compress. */
    int (*pwrite_compressed)(vd_node *n, uint64_t off, uint64_t len, const void *buf);
    /* Cluster size qemu-img info prints at top level (0 / NULL: none;
     * negative: QEMU's get_info fails, so info shows no dirty flag). */
    int64_t (*cluster_size)(vd_node *n);
    /* The image's dirty flag (info's "dirty-flag"). */
    bool (*is_dirty)(vd_node *n);
    /* More URI schemes / prefixes this driver takes (NULL-terminated, may
     * be NULL): "nbd+unix", "nbds", ... */
    const char *const *protocol_aliases;
    /* Rewrite the backing file name (NULL: none) and format (may be NULL)
     * stored in the image, and the node's backing_* fields.  NULL: the
     * format records no backing file. */
    int (*change_backing_file)(vd_node *n, const char *name, const char *fmt);
    /* Make every block unallocated, so reads fall through to the backing
     * file (commit empties the overlay).  NULL: the format cannot. */
    int (*make_empty)(vd_node *n);
    /* Internal snapshots (NULL: the format has none).  snapshot_list
     * returns the count and a malloc'd array (vd_snapshot_list_free);
     * snapshot_create records the current state under sn->name (the driver
     * picks the id); snapshot_goto reverts to the snapshot whose id, else
     * name, is id_or_name; snapshot_delete and snapshot_load name it by id
     * and/or name (NULL: any); snapshot_load makes a read-only node read
     * the snapshot instead of the current state. */
    int (*snapshot_list)(vd_node *n, struct vd_snapshot_info **out);
    int (*snapshot_create)(vd_node *n, const struct vd_snapshot_info *sn);
    int (*snapshot_goto)(vd_node *n, const char *id_or_name);
    int (*snapshot_delete)(vd_node *n, const char *id, const char *name);
    int (*snapshot_load)(vd_node *n, const char *id, const char *name);
    /* The image takes only compressed writes of whole clusters (vmdk
     * streamOptimized: QEMU's needs_compressed_writes).  NULL: false. */
    bool (*needs_compressed_writes)(vd_node *n);
    /* Compressed writes in two steps (NULL: pwrite_compressed only), so that
     * the copy engine compresses on every core while the clusters land in
     * order: compress_cluster turns one cluster (pwrite_compressed's
     * arguments) into the bytes the format stores, into out (room for
     * VD_COMPRESS_ROOM(len) bytes), thread-safe and with no I/O;
     * store_compressed then writes those out_len bytes as that cluster. */
    int (*compress_cluster)(vd_node *n, uint64_t off, uint64_t len, const void *buf,
                            void *out, size_t *out_len);
    int (*store_compressed)(vd_node *n, uint64_t off, uint64_t len, const void *data,
                            size_t data_len);
    /* Persistent dirty bitmaps (vdisk/bitmap.h): one request at a time
     * (struct vd_bitmap_req).  NULL: the format keeps none. */
    int (*bitmap)(vd_node *n, struct vd_bitmap_req *req);
    /* Options "amend" takes (-o help lists them); NULL: no amendment. */
    const struct vd_opt_desc *amend_opts;
    /* Change the options of an open image (qemu-img amend); opts holds
     * only keys of amend_opts, already type-checked.  progress (may be
     * NULL) gets work done and total. */
    int (*amend)(vd_node *n, vd_opts *opts, bool force,
                 void (*progress)(void *opaque, uint64_t done, uint64_t total),
                 void *opaque);
    /* Is the guest data encrypted (info's "encrypted: yes")?  NULL: no. */
    bool (*is_encrypted)(vd_node *n);
    /* Where guest bytes live, for the copy engine only (block_status, which
     * map and info print, is left as QEMU answers): the *pnum bytes from
     * off read as zeroes (VD_BS_ZERO), are stored as they are at *map in
     * *file (VD_BS_OFFSET_VALID), or neither is known (0).  NULL: the copy
     * engine uses block_status's offsets only. */
    int (*data_extent)(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                       uint64_t *map, vd_node **file);
};

#define VD_DRIVER_REGISTER(drv)                                            \
    __attribute__((constructor)) static void vd_register_##drv(void)      \
    { vd_driver_register(&(drv)); }

void vd_driver_register(const struct vd_driver *d);

/* An open node.  Fields are set by lib/core/open.c; drivers may set the
 * limits and backing_* fields in open. */
struct vd_node {
    const struct vd_driver *drv;
    void *state;                   /* drv->state_size zeroed bytes */
    char *filename;                /* the file name (protocol nodes), or the
                                      child's for format nodes */
    vd_node *file;                 /* protocol child of a format/filter node */
    vd_node *backing;              /* backing node, or NULL */
    int flags;                     /* VD_O_* */
    bool read_only;
    bool probed_raw;               /* probed as raw: sector 0 is protected */
    uint32_t request_alignment;    /* power of two, >= 1 */
    uint64_t max_transfer;         /* 0: the core's default cap */
    char *backing_name;            /* as stored in the image */
    char *backing_full_name;       /* resolved, for opening */
    char *backing_format;
    int64_t total_size;            /* cached length; set by the core */
    pthread_mutex_t rmw_lock;      /* serialises read-modify-write */
    vd_node *parent;               /* NULL for the top node */
    _Atomic uint64_t st_rd_ops, st_wr_ops, st_zero_ops, st_discard_ops,
        st_flush_ops, st_rd_bytes, st_wr_bytes;
};

/* n's data_extent over [off, off+len) (clipped to n): flags as it
 * describes them, *pnum > 0; -ENOTSUP when n has none. */
int vd_data_extent(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                   uint64_t *map, vd_node **file);

/* Open a child node (for drivers that open their own, e.g. data-file,
 * or a filter's "image").  Same semantics as vd_open.  The child inherits
 * VD_O_UNTRUSTED; a format node opened with it gets -EPERM (its children
 * are named by its image).  Any open while an untrusted format driver's
 * open runs is refused as well, vd_open included. */
int vd_open_child(vd_node **out, vd_node *parent, const char *name,
                  const char *format, vd_opts *opts, int flags);
/* Create the file under a format image with the protocol driver that name
 * calls for (prefix, URI scheme, or file); opts are the protocol's create
 * options (size, preallocation, ...). */
int vd_protocol_create(const char *name, vd_opts *opts);

/* Largest table (L1, refcount table, BAT, grain directory, block map,
 * snapshot table) an untrusted image may make a driver allocate. */
#define VD_UNTRUSTED_TABLE_MAX (16u << 20)
/* Is n (or the image above it) opened with VD_O_UNTRUSTED? */
bool vd_node_untrusted(const vd_node *n);
/* Call before allocating a table of bytes whose size the image gives:
 * -EFBIG with a message naming what when n is untrusted and bytes is over
 * VD_UNTRUSTED_TABLE_MAX, else 0. */
int vd_untrusted_table_check(const vd_node *n, uint64_t bytes, const char *what);

/* Set n->backing_* from stored name/format, resolving the name against the
 * directory of n's file.  -EPERM (refused in untrusted mode) for a name
 * while an untrusted n is being opened. */
int vd_node_set_backing_name(vd_node *n, const char *name, const char *fmt);

/* Guest bytes [off, off+len) of n's backing file into buf: zeroes past its
 * end or without one; fires "read_backing_aio" on n's file first. */
int vd_read_backing(vd_node *n, uint64_t off, uint64_t len, void *buf);

#ifdef __cplusplus
}
#endif
#endif
