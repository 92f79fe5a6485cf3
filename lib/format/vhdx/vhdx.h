/* SPDX-License-Identifier: BSD-3-Clause */
/* vhdx: Microsoft's Hyper-V virtual disk format ([MS-VHDX]), dynamic,
 * fixed and differencing, as QEMU 7.2 reads and writes it.  vhdx.c opens
 * and validates an image, io.c does guest I/O, create.c makes new images,
 * parent.c reads a differencing image's parent locator, log.c keeps the
 * metadata log (log.h).
 *
 * A file as qemu-img lays it out (all fields little-endian):
 *     0        file identifier: "vhdxfile", creator (UTF-16)
 *     64 KiB   header 1, 128 KiB header 2 (4 KiB each, CRC-32C; the one
 *              with the higher sequence number is current)
 *     192 KiB  region table, 256 KiB its copy (64 KiB each, CRC-32C):
 *              where the BAT and the metadata region are
 *     1 MiB    the log (log_size)
 *     then     the BAT (1 MiB multiple), the metadata region (1 MiB),
 *              5 MiB of slack, then payload blocks at 1 MiB multiples
 * The BAT holds one 64-bit entry per payload block and, after every
 * chunk_ratio of them, one for the sector bitmap block of that chunk:
 * state in bits 0-2, file offset in MiB in bits 20-63. */
#ifndef VD_FORMAT_VHDX_H
#define VD_FORMAT_VHDX_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "format/vhdx/crc32c.h"
#include "format/vhdx/log.h"
#include "util/checked.h"
#include "vdisk/driver.h"

#define VHDX_MIB (1ull << 20)
#define VHDX_HEADER_SECTION (1 * VHDX_MIB)
#define VHDX_BLOCK64K (64u * 1024)
#define VHDX_HEADER1_OFF (1 * VHDX_BLOCK64K)
#define VHDX_HEADER2_OFF (2 * VHDX_BLOCK64K)
#define VHDX_RT1_OFF (3 * VHDX_BLOCK64K)
#define VHDX_RT2_OFF (4 * VHDX_BLOCK64K)
#define VHDX_HEADER_SIZE 4096u          /* what a header's CRC covers */
#define VHDX_RT_SIZE VHDX_BLOCK64K      /* what a region table's CRC covers */
#define VHDX_RT_MAX_ENTRIES 2047u
#define VHDX_MD_TABLE_SIZE VHDX_BLOCK64K
#define VHDX_MD_MAX_ENTRIES 2047u
#define VHDX_BLOCK_MIN (1u << 20)
#define VHDX_BLOCK_MAX (256u << 20)
#define VHDX_MAX_SIZE (64ull << 40)     /* 64 TiB */
#define VHDX_SECTORS_PER_CHUNK (1ull << 23)
#define VHDX_DEFAULT_LOG (1u << 20)

/* Header fields (byte offsets). */
enum {
    VHH_SIGNATURE = 0,      /* "head" */
    VHH_CHECKSUM = 4,
    VHH_SEQUENCE = 8,
    VHH_FILE_WRITE_GUID = 16,
    VHH_DATA_WRITE_GUID = 32,
    VHH_LOG_GUID = 48,
    VHH_LOG_VERSION = 64,
    VHH_VERSION = 66,
    VHH_LOG_LENGTH = 68,
    VHH_LOG_OFFSET = 72,
};

/* Region table: a 16-byte header, then 32-byte entries. */
enum {
    VRT_SIGNATURE = 0,      /* "regi" */
    VRT_CHECKSUM = 4,
    VRT_COUNT = 8,
    VRT_ENTRIES = 16,
    VRE_GUID = 0,
    VRE_OFFSET = 16,
    VRE_LENGTH = 24,
    VRE_FLAGS = 28,
    VRE_SIZE = 32,
};
#define VHDX_RE_REQUIRED 1u

/* Metadata table: a 32-byte header, then 32-byte entries. */
enum {
    VMT_SIGNATURE = 0,      /* "metadata" */
    VMT_COUNT = 10,
    VMT_ENTRIES = 32,
    VME_GUID = 0,
    VME_OFFSET = 16,
    VME_LENGTH = 20,
    VME_FLAGS = 24,
    VME_SIZE = 32,
};
#define VHDX_ME_USER 1u
#define VHDX_ME_VIRTUAL_DISK 2u
#define VHDX_ME_REQUIRED 4u

/* File parameters' flags. */
#define VHDX_PARAM_LEAVE_ALLOCATED 1u
#define VHDX_PARAM_HAS_PARENT 2u

/* BAT entry states. */
enum {
    VHDX_PB_NOT_PRESENT = 0,
    VHDX_PB_UNDEFINED = 1,
    VHDX_PB_ZERO = 2,
    VHDX_PB_UNMAPPED = 3,
    VHDX_PB_UNMAPPED_OLD = 5,       /* the value of drafts before 1.0 */
    VHDX_PB_FULLY_PRESENT = 6,
    VHDX_PB_PARTIALLY_PRESENT = 7,
    VHDX_SB_PRESENT = 6,
};
#define VHDX_BAT_STATE(e) ((unsigned)((e) & 7))
#define VHDX_BAT_OFFSET(e) ((e) & ~(VHDX_MIB - 1))

/* Well-known GUIDs, as their 16 bytes on disk. */
extern const uint8_t vhdx_guid_bat[16], vhdx_guid_metadata[16];
extern const uint8_t vhdx_guid_file_params[16], vhdx_guid_disk_size[16],
    vhdx_guid_page83[16], vhdx_guid_logical_sector[16],
    vhdx_guid_physical_sector[16], vhdx_guid_parent_locator[16],
    vhdx_guid_parent_type_vhdx[16];

/* One byte range of the file that metadata owns [start, end). */
struct vhdx_range {
    uint64_t start, end;
};

struct vhdx_state {
    pthread_mutex_t lock;          /* guards everything below but the sizes */
    uint8_t hdr[2][VHDX_HEADER_SIZE];   /* both headers as on disk */
    int cur;                       /* index of the current header */
    uint8_t session_guid[16];      /* file write GUID of this open */
    bool session;                  /* headers carry our GUIDs, log begun */
    bool replayed;                 /* the log was replayed at open */
    struct vhdx_log log;

    uint64_t size;                 /* virtual disk bytes */
    uint32_t block_size, lss, pss; /* logical, physical sector size */
    uint32_t params;               /* VHDX_PARAM_* */
    uint64_t chunk_ratio;          /* payload blocks per sector bitmap */
    uint64_t blocks;               /* payload blocks of the disk */
    uint64_t entries;              /* BAT entries the disk uses */
    uint64_t *bat;                 /* host order */
    uint64_t bat_offset, bat_length;
    uint64_t md_offset, md_length;
    uint8_t page83[16];
    struct vhdx_range *ranges;     /* metadata ranges, for overlap checks */
    size_t nranges;
    uint64_t alloc_floor;          /* new blocks go at or past this (the end
                                      of every metadata range) */
};

/* ---- little-endian fields ---- */
static inline uint16_t vhdx_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t vhdx_le32(const uint8_t *p)
{
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t vhdx_le64(const uint8_t *p)
{
    return vhdx_le32(p) | (uint64_t)vhdx_le32(p + 4) << 32;
}
static inline void vhdx_put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void vhdx_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void vhdx_put_le64(uint8_t *p, uint64_t v)
{
    vhdx_put_le32(p, (uint32_t)v);
    vhdx_put_le32(p + 4, (uint32_t)(v >> 32));
}

/* ---- vhdx.c ---- */
/* Read len bytes at off of f; bytes past the end of f read as zeroes. */
int vhdx_read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf);
/* A random (version 4) GUID. */
int vhdx_guid_generate(uint8_t *g);
/* BAT index of payload block b / of the sector bitmap of chunk c. */
uint64_t vhdx_payload_index(const struct vhdx_state *s, uint64_t b);
uint64_t vhdx_bitmap_index(const struct vhdx_state *s, uint64_t c);
/* Before the first change of a writable session: fresh GUIDs in both
 * headers, the log begun (lock held). */
int vhdx_start_session(vd_node *n);

/* ---- io.c ---- */
int vhdx_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags);
int vhdx_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags);
/* The driver's data_extent (driver.h). */
int vhdx_data_extent(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                     uint64_t *map, vd_node **file);

/* ---- create.c ---- */
int vhdx_create(const char *filename, vd_opts *opts);
/* BAT entries of a disk as QEMU counts them at create (32-bit, wrapping
 * for an empty disk as QEMU's does). */
uint64_t vhdx_create_bat_entries(uint64_t size, uint32_t block_size, uint32_t lss);

/* ---- parent.c ---- */
/* Parse the parent locator item (len bytes at buf) of a differencing
 * image and set the node's backing file from it. */
int vhdx_parse_parent_locator(vd_node *n, const uint8_t *buf, uint32_t len);

#endif
