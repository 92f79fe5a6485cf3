/* SPDX-License-Identifier: BSD-3-Clause */
/* The vhdx log ([MS-VHDX] 2.3): metadata updates are journalled here first,
 * so an interrupted update replays to a consistent image.
 *
 * The driver (vhdx.c) owns the headers; this module owns the log region.
 * Order of use:
 *   open:   vhdx_log_open() with the current header's log fields; when it
 *           reports entries to replay, a writable open calls
 *           vhdx_log_replay() and then rewrites both headers with a zero
 *           log GUID; a read-only open fails (as qemu-img does).
 *   write:  before the first metadata update of a writable session the
 *           driver calls vhdx_log_begin() with a fresh GUID and writes the
 *           headers carrying it; every later metadata update (BAT entries,
 *           sector bitmap blocks, metadata region, file growth) goes through
 *           vhdx_log_write(), which journals, flushes, writes in place and
 *           flushes.
 *   close:  vhdx_log_end() (the driver then clears the GUID in the headers).
 * Guest data blocks are written in place, never through the log. */
#ifndef VDISK_VHDX_LOG_H
#define VDISK_VHDX_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/driver.h"

struct vhdx_log {
    vd_node *file;         /* the image file (the format node's child) */
    vd_node *owner;        /* the format node, for vd_event() fault points */
    uint64_t offset;       /* the log region in the file (header fields) */
    uint32_t length;
    uint8_t guid[16];      /* the GUID entries are written under */
    uint64_t sequence;     /* next entry's sequence number */
    uint32_t head;         /* next write position, relative to offset */
    uint32_t tail;         /* oldest entry of the active sequence */
    bool active;           /* vhdx_log_begin() was called */
};

/* One in-place update to journal: len bytes at file offset off (any
 * alignment; the log rounds to 4 KiB sectors by reading around them). */
struct vhdx_log_update {
    uint64_t off;
    uint32_t len;
    const void *buf;
};

/* Find the active sequence of entries written under guid (all zero: no
 * log in use, nothing to replay).  *needs_replay says whether replay is
 * required.  Malformed or hostile log contents are an error only when they
 * belong to the active sequence; an invalid entry ends the scan. */
int vhdx_log_open(struct vhdx_log *log, vd_node *owner, vd_node *file,
                  uint64_t offset, uint32_t length, const uint8_t guid[16],
                  bool *needs_replay);
/* Apply the active sequence in place (extending the file to the entries'
 * last file offset when shorter), flush. */
int vhdx_log_replay(struct vhdx_log *log);
/* Start journalling under guid (the caller stores it in the headers). */
void vhdx_log_begin(struct vhdx_log *log, const uint8_t guid[16]);
/* Journal n updates as one entry, flush, write them in place, flush. */
int vhdx_log_write(struct vhdx_log *log, const struct vhdx_log_update *u, size_t n);
/* Stop journalling (every entry is already applied in place). */
void vhdx_log_end(struct vhdx_log *log);

#endif
