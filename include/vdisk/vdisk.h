/* SPDX-License-Identifier: BSD-3-Clause */
/* libvdisk public API: open images as node graphs and do byte-based I/O on
 * them.  Every function returns 0 (or a count) on success and -errno on
 * failure, leaving a message for vd_errmsg(). */
#ifndef VDISK_VDISK_H
#define VDISK_VDISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vdisk/opts.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VD_VERSION_STRING "0.1.0"

typedef struct vd_node vd_node;

/* ---- errors (lib/core/error.c) ---- */
/* Record a message (printf-style) for this thread and return -err. */
int vd_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with "prefix: " (printf-style). Returns -err. */
int vd_error_prefix(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message recorded on this thread ("" if none). */
const char *vd_errmsg(void);
void vd_error_clear(void);

/* ---- open flags ---- */
#define VD_O_RDWR         0x0001 /* open for writing */
#define VD_O_NO_BACKING   0x0002 /* do not open backing files */
#define VD_O_FORCE_SHARE  0x0004 /* -U: read-only, take no lock */
#define VD_O_NO_PROBE     0x0008 /* format must be given */
#define VD_O_NO_LOCK      0x0010 /* take no image lock */
#define VD_O_CREATE       0x0020 /* internal: node opened right after create */
#define VD_O_RESIZE       0x0040 /* with VD_O_RDWR: take the resize lock at open */
#define VD_O_NO_SHARE     0x0080 /* let no one else write or resize meanwhile */
#define VD_O_CHECK        0x0100 /* opened to be checked: no repair at open */
/* The image is untrusted: it may not name other files (backing files, data
 * files, extents; json: and protocol names included), its format must be
 * the one its bytes say when one is given, and tables sized by its header
 * are capped (VD_UNTRUSTED_TABLE_MAX).  Every node opened below inherits
 * it.  See lib/core/untrusted.c. */
#define VD_O_UNTRUSTED    0x0200
/* Opened to read metadata only (info): no guest data I/O, so an encrypted
 * image needs no key. */
#define VD_O_NO_IO        0x0400

/* ---- I/O flags ---- */
#define VD_REQ_FUA        0x0001 /* pwrite: data on stable storage on return */
#define VD_REQ_MAY_UNMAP  0x0002 /* pwrite_zeroes: may punch a hole */
#define VD_REQ_NO_FALLBACK 0x0004 /* pwrite_zeroes: fail with -ENOTSUP unless fast */
#define VD_REQ_NOWAIT     0x0008 /* pread: fail with -EAGAIN instead of blocking on uncached data */

/* ---- block status ---- */
#define VD_BS_DATA          0x01 /* reads return data (not known zero) */
#define VD_BS_ZERO          0x02 /* reads return zeroes */
#define VD_BS_OFFSET_VALID  0x04 /* *map is the offset in *file */
#define VD_BS_ALLOCATED     0x08 /* allocated in this layer (not backing) */
#define VD_BS_RECURSE       0x10 /* driver only: ask *file at *map for DATA/ZERO */
#define VD_BS_EOF           0x20 /* range reaches the end of the node */

/* Open an image.  name may be a file name, "protocol:..." prefix, URI or
 * "json:{...}"; it may be NULL when opts carry "driver"/"filename"
 * (--image-opts).  format (may be NULL: probe) names the format driver.
 * opts (may be NULL) is consumed: options for this node, dotted keys for
 * children ("file.xxx", "backing.xxx"). */
int vd_open(vd_node **out, const char *name, const char *format,
            vd_opts *opts, int flags);
/* True when the environment asks for untrusted mode: VDISK_UNTRUSTED set
 * to any non-empty value other than "0". */
bool vd_untrusted_env(void);
/* Close a node and all its children. NULL is allowed. */
void vd_close(vd_node *n);

/* Create an image: format driver "fmt", file name, options (size= etc.). */
int vd_create(const char *fmt, const char *name, vd_opts *opts);

int vd_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags);
int vd_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags);
int vd_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags);
int vd_discard(vd_node *n, uint64_t off, uint64_t len);
/* Write one compressed cluster: off aligned to the format's cluster size,
 * len the cluster size (or what is left of the image).  -ENOTSUP when the
 * format cannot compress. */
int vd_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf);
/* vd_pwrite_compressed in two steps, for formats that offer them (else
 * -ENOTSUP): compress a cluster into out (room for VD_COMPRESS_ROOM(len)
 * bytes; no I/O, callable from any thread), then store those bytes. */
#define VD_COMPRESS_ROOM(len) (2 * (len) + 4096)
int vd_compress_cluster(vd_node *n, uint64_t off, uint64_t len, const void *buf,
                        void *out, size_t *out_len);
int vd_store_compressed(vd_node *n, uint64_t off, uint64_t len, const void *data,
                        size_t data_len);
/* The format's cluster size (qemu-img info's cluster_size), 0 if none. */
int64_t vd_node_cluster_size(vd_node *n);
/* Does the image take only compressed writes (convert then writes as -c)? */
bool vd_node_needs_compressed_writes(vd_node *n);
int vd_flush(vd_node *n);
/* Returns size in bytes or -errno. */
int64_t vd_getlength(vd_node *n);
/* Bytes the image takes on the host (all files), or -errno (-ENOTSUP). */
int64_t vd_get_allocated_size(vd_node *n);
/* Resize; prealloc is one of VD_PREALLOC_*. */
int vd_truncate(vd_node *n, uint64_t size, bool exact, int prealloc);

/* Block status of n itself: *pnum bytes from off share the returned VD_BS_*
 * flags (>= 0).  *map and *file are set when VD_BS_OFFSET_VALID. */
int vd_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                    uint64_t *map, vd_node **file);
/* Block status through the backing chain: *depth is the chain depth of the
 * layer that holds the data (0 = n) when something in the chain allocates
 * it; when nothing does, the flags lack VD_BS_ALLOCATED and *depth is the
 * depth of the bottom layer (as qemu-img map reports it). */
int vd_block_status_above(vd_node *n, uint64_t off, uint64_t len,
                          uint64_t *pnum, uint64_t *map, vd_node **file,
                          int *depth);

/* Copy len bytes from src at soff to dst at doff inside the host, without
 * passing through this process (copy_file_range); -ENOTSUP when the nodes
 * cannot, and the caller then reads and writes. */
int vd_copy_range(vd_node *src, uint64_t soff, vd_node *dst, uint64_t doff,
                  uint64_t len);

/* Record a new backing file name (NULL or "": none) and format (may be
 * NULL) in n's image; the data is not touched (rebase, commit).  -ENOTSUP
 * when the format has no backing files. */
int vd_change_backing_file(vd_node *n, const char *name, const char *fmt);
/* Make every block of n unallocated, so that reads fall through to its
 * backing file (commit).  -ENOTSUP when the format cannot. */
int vd_make_empty(vd_node *n);

/* Amend the image's format options (qemu-img amend): opts are the -o
 * options, checked against the driver's amend table by the caller;
 * progress (may be NULL) gets work done and total.  -ENOTSUP when the
 * format cannot. */
int vd_amend(vd_node *n, vd_opts *opts, bool force,
             void (*progress)(void *opaque, uint64_t done, uint64_t total),
             void *opaque);

/* ---- internal snapshots (lib/core/node.c) ---- */
/* One internal snapshot, as qemu-img snapshot -l shows it. */
struct vd_snapshot_info {
    char *id, *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;               /* UINT64_MAX: not recorded */
    uint64_t disk_size;            /* guest size when it was taken */
};
/* The snapshots of n: returns the count (0 for formats without any) and a
 * malloc'd array in *out (NULL when 0); free with vd_snapshot_list_free. */
int vd_snapshot_list(vd_node *n, struct vd_snapshot_info **out);
void vd_snapshot_list_free(struct vd_snapshot_info *list, int count);
/* Take a snapshot named sn->name with sn's date, clock and VM state size
 * (the id is chosen by the driver). */
int vd_snapshot_create(vd_node *n, const struct vd_snapshot_info *sn);
/* Revert n to the snapshot with id (else name) id_or_name; -ENOENT. */
int vd_snapshot_goto(vd_node *n, const char *id_or_name);
/* Delete the snapshot matching id and name (either may be NULL); -ENOENT. */
int vd_snapshot_delete(vd_node *n, const char *id, const char *name);
/* Make the read-only node n read the snapshot matching id and name
 * (either may be NULL) instead of its current state; -ENOENT. */
int vd_snapshot_load(vd_node *n, const char *id, const char *name);
/* vd_snapshot_load from a qemu-img -l / qemu-nbd -l parameter:
 * "snapshot.id=ID,snapshot.name=NAME" (either key may be left out), or an
 * id or name (tried as an id first). */
int vd_snapshot_load_param(vd_node *n, const char *param);

/* Notify the graph below n of a named event (fault injection points). */
void vd_event(vd_node *n, const char *event);

/* ---- node accessors ---- */
const char *vd_node_filename(const vd_node *n);
const char *vd_node_format(const vd_node *n);     /* driver name */
vd_node *vd_node_file(const vd_node *n);          /* protocol child */
vd_node *vd_node_backing(const vd_node *n);
bool vd_node_read_only(const vd_node *n);
bool vd_node_probed_raw(const vd_node *n);
/* Is the image's guest data encrypted? */
bool vd_node_encrypted(vd_node *n);
uint32_t vd_node_request_alignment(const vd_node *n);
/* The backing file name recorded in the image (NULL if none), as stored and
 * as resolved against the image's directory, and its format (may be NULL). */
const char *vd_node_backing_name(const vd_node *n);
const char *vd_node_backing_full_name(const vd_node *n);
const char *vd_node_backing_format(const vd_node *n);

struct vd_stats {
    uint64_t rd_ops, wr_ops, zero_ops, discard_ops, flush_ops;
    uint64_t rd_bytes, wr_bytes;
};
void vd_node_stats(const vd_node *n, struct vd_stats *st);

/* ---- preallocation modes ---- */
enum { VD_PREALLOC_OFF, VD_PREALLOC_METADATA, VD_PREALLOC_FALLOC, VD_PREALLOC_FULL };
/* Parse "off"/"metadata"/"falloc"/"full"; -EINVAL on anything else. */
int vd_prealloc_parse(const char *s);
const char *vd_prealloc_name(int mode);

/* ---- drivers ---- */
/* Look up a driver by name (format, protocol or filter); NULL if none. */
const struct vd_driver *vd_driver_find(const char *name);
/* The protocol driver for the prefix name[0..len) ("nbd", "http"...). */
const struct vd_driver *vd_driver_find_protocol(const char *name, size_t len);
/* The protocol a file name names, as QEMU reads names: a colon before any
 * slash ends a "proto:" prefix or URI scheme, whose driver is returned;
 * a name without one is a file (the file driver).  NULL, with the error
 * "Unknown protocol 'X'", for a prefix no driver provides ("./a:b" names
 * the file a:b). */
const struct vd_driver *vd_protocol_for_name(const char *name);
/* Call fn for every registered driver, sorted by name. */
void vd_driver_foreach(void (*fn)(const struct vd_driver *d, void *opaque), void *opaque);
const char *vd_driver_name(const struct vd_driver *d);
bool vd_driver_is_format(const struct vd_driver *d);
/* Print "-o help" for creating with driver d (and its protocol) to stdout. */
int vd_driver_print_create_opts(const char *fmt, const char *proto);
/* The options "amend" takes with driver d (NULL: it cannot amend). */
const struct vd_opt_desc *vd_driver_amend_opts(const struct vd_driver *d);
/* Print "-o help" of amend for d to stdout ("Amend options for ..."). */
int vd_driver_print_amend_opts(const struct vd_driver *d);
/* Can the format driver create images (read-only formats cannot)? */
bool vd_driver_can_create(const struct vd_driver *d);

#ifdef __cplusplus
}
#endif
#endif
