/* SPDX-License-Identifier: BSD-3-Clause */
/* vpc: Microsoft's Virtual Hard Disk (VHD) image format, fixed and dynamic,
 * as QEMU 7.2 reads and writes it, and differencing (vdisk reads them with
 * their parent, where QEMU reads them without).  vpc.c opens and
 * validates an image, parent.c finds a differencing image's parent, io.c
 * does guest I/O on it, create.c makes new ones.
 *
 * A dynamic image as qemu-img lays it out:
 *     0      copy of the footer (512 bytes)
 *     512    dynamic disk header, "cxsparse" (1024 bytes)
 *     1536   BAT: per block, the big-endian sector number of the block in
 *            the file, or 0xffffffff for a block never written
 *     ...    blocks, each a sector bitmap (bitmap_size bytes) followed by
 *            block_size bytes of guest data
 *     end    the footer
 * A fixed image is the guest data followed by the footer. */
#ifndef VD_FORMAT_VPC_H
#define VD_FORMAT_VPC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "util/checked.h"
#include "util/endian.h"
#include "vdisk/driver.h"

#define VPC_SECTOR 512u
#define VPC_FOOTER_SIZE 512u
#define VPC_HEADER_SIZE 1024u
#define VPC_TYPE_FIXED 2u
#define VPC_TYPE_DYNAMIC 3u
#define VPC_TYPE_DIFF 4u
#define VPC_BAT_FREE 0xffffffffu
/* Largest guest size QEMU accepts: 2040 GiB. */
#define VPC_MAX_SECTORS 0xff000000ull
#define VPC_CHS_MAX_C 65535u
#define VPC_CHS_MAX_H 16u
#define VPC_CHS_MAX_S 255u
#define VPC_MAX_GEOMETRY ((uint64_t)VPC_CHS_MAX_C * VPC_CHS_MAX_H * VPC_CHS_MAX_S)
/* Footer timestamps count seconds from 2000-01-01 00:00:00 UTC. */
#define VPC_EPOCH 946684800

/* Byte offsets of the footer's fields (all big-endian). */
enum {
    VF_COOKIE = 0,          /* "conectix" */
    VF_FEATURES = 8,
    VF_VERSION = 12,
    VF_DATA_OFFSET = 16,    /* the dynamic header, ~0 for fixed images */
    VF_TIMESTAMP = 24,
    VF_CREATOR_APP = 28,    /* "qemu", "vpc ", "win ", ... */
    VF_CREATOR_VER = 32,
    VF_CREATOR_OS = 36,
    VF_ORIG_SIZE = 40,
    VF_CUR_SIZE = 48,
    VF_CYLS = 56,           /* 16-bit; heads and sectors per track 8-bit */
    VF_HEADS = 58,
    VF_SECS = 59,
    VF_TYPE = 60,
    VF_CHECKSUM = 64,
    VF_UUID = 68,
};

/* Byte offsets of the dynamic disk header's fields. */
enum {
    VH_COOKIE = 0,          /* "cxsparse" */
    VH_DATA_OFFSET = 8,
    VH_TABLE_OFFSET = 16,
    VH_VERSION = 24,
    VH_MAX_ENTRIES = 28,
    VH_BLOCK_SIZE = 32,
    VH_CHECKSUM = 36,
};

/* What is known about a block's sector bitmap. */
enum vpc_bitmap_state { VPC_BM_UNKNOWN, VPC_BM_FULL, VPC_BM_PARTIAL };

struct vpc_state {
    pthread_mutex_t lock;          /* guards everything below but size */
    uint8_t footer[VPC_FOOTER_SIZE]; /* as on disk; rewritten after new blocks */
    bool dynamic_io;               /* footer type not fixed: data through the BAT */
    uint64_t size;                 /* guest bytes */
    uint32_t block_size, bitmap_size;
    uint64_t entries;              /* BAT entries on disk (max_table_entries) */
    uint64_t loaded;               /* entries the guest can reach, in bat[] */
    uint32_t *bat;                 /* host order */
    uint8_t *bitmap_state;         /* enum vpc_bitmap_state per loaded entry */
    uint64_t bat_offset, header_offset;
    uint64_t free_offset;          /* where the next block goes */
    bool diff;                     /* differencing: absent sectors read the parent */
    uint8_t parent_uuid[16];       /* differencing: the parent's UUID, as recorded */
    char *parent_name;             /* differencing: the parent's Unicode name */
};

/* ---- vpc.c ---- */
/* Read len bytes at off of f; bytes past the end of f read as zeroes. */
int vpc_read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf);
/* One's complement of the byte sum of buf, skipping the 4-byte checksum
 * field at skip. */
uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t skip);

/* ---- parent.c ---- */
/* For a dynamic image of disk type 4 whose header names a parent: mark it
 * differencing and set n's backing file to the parent (checked unless
 * flags skip backing files).  Other type-4 images stay as QEMU reads them. */
int vpc_open_parent(vd_node *n, int flags);
/* Read guest bytes from the parent: zeroes past its end or without it. */
int vpc_read_parent(vd_node *n, uint64_t off, uint64_t len, void *buf);

/* ---- io.c ---- */
int vpc_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags);
int vpc_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags);
int vpc_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                     uint64_t *map, vd_node **file);

/* ---- create.c ---- */
int vpc_create(const char *filename, vd_opts *opts);

#endif
