/* SPDX-License-Identifier: BSD-3-Clause */
/* The vmdk driver's shared state: a disk is a list of extents (flat files
 * or hosted sparse extents with a grain directory and grain tables), named
 * by a descriptor that is either embedded in a sparse extent or a text
 * file of its own.  Split by subsystem: desc.c (descriptor text),
 * sparse.c (sparse extent headers, grain lookup and allocation, compressed
 * grains), esx.c (COWD and seSparse extents), create.c (create), vmdk.c
 * (the driver table). */
#ifndef VD_FORMAT_VMDK_H
#define VD_FORMAT_VMDK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "util/checked.h"
#include "vdisk/driver.h"

#define VMDK_SECTOR          512u
#define VMDK4_MAGIC          0x4b444d56u   /* "KDMV" read big endian */
#define VMDK3_MAGIC          0x434f5744u   /* "COWD" */
#define VMDK_DESC_SIZE       (20u * VMDK_SECTOR)  /* descriptor bytes read for CIDs */
#define VMDK_DESC_MAX        ((1u << 20) - 1)     /* descriptor file bytes read */
#define VMDK_MAX_EXTENTS     1024u         /* extents one descriptor may name */
#define VMDK_MAX_GD_ENTRIES  (32u << 20)   /* QEMU's cap on the grain directory */
#define VMDK_MAX_GTES        512u          /* QEMU's cap on entries per grain table */
#define VMDK_MAX_GRAIN_SECT  0x200000u     /* QEMU's cap on the grain size (sectors) */
#define VMDK_EXTENT_MAX_SECT (1ull << 32)  /* grain sectors fit in a 32-bit entry */
#define VMDK_GTE_ZEROED      1u
#define VMDK_GT_CACHE        64u           /* grain tables kept per extent */
#define VMDK_MAX_DEPTH       2             /* embedded descriptor -> extents, no further */

/* Header flags and fields (offsets in the sector after the magic). */
#define VMDK4_FLAG_NL_DETECT (1u << 0)
#define VMDK4_FLAG_RGD       (1u << 1)
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK4_FLAG_COMPRESS  (1u << 16)
#define VMDK4_FLAG_MARKER    (1u << 17)
#define VMDK4_GD_AT_END      UINT64_MAX
#define VMDK4_DEFLATE        1u

enum { VH4_MAGIC = 0, VH4_VERSION = 4, VH4_FLAGS = 8, VH4_CAPACITY = 12,
       VH4_GRANULARITY = 20, VH4_DESC_OFFSET = 28, VH4_DESC_SIZE = 36,
       VH4_GTES = 44, VH4_RGD_OFFSET = 48, VH4_GD_OFFSET = 56, VH4_GRAIN_OFFSET = 64,
       VH4_FILLER = 72, VH4_CHECK = 73, VH4_COMPRESS = 77, VH4_END = 79 };

enum { MARKER_EOS = 0, MARKER_GT = 1, MARKER_GD = 2, MARKER_FOOTER = 3 };

/* A grain table held in memory (entries host order). */
struct vmdk_gt {
    uint32_t sector;               /* where it lies (0: slot empty) */
    uint32_t *e;
};

struct vmdk_extent {
    vd_node *file;                 /* the extent's file */
    bool own_file;                 /* opened here (else it is n->file) */
    bool flat, compressed, has_marker, zero_grain;
    char type[12];                 /* the descriptor's type word, "" if none */
    int version;
    uint64_t sectors;              /* guest sectors it holds */
    uint64_t start;                /* first guest byte */
    uint64_t flat_offset;          /* flat: bytes into its file */
    /* sparse */
    uint64_t grain_sectors, gd_offset, rgd_offset;   /* offsets in bytes */
    uint32_t gtes, gd_entries;
    uint32_t *gd, *rgd;
    struct vmdk_gt cache[VMDK_GT_CACHE];
    uint64_t next_grain;           /* sector where the next grain goes */
    uint64_t file_len;
    struct vmdk_se *se;            /* seSparse extents' own state (esx.c) */
};

struct vmdk_state {
    pthread_mutex_t lock;          /* grain tables, next_grain, cid_updated */
    bool lock_ok;
    struct vmdk_extent *ext;
    uint32_t n_ext;
    uint64_t desc_offset;          /* of the descriptor in n->file */
    bool desc_file;                /* the descriptor is a file of its own */
    uint32_t cid, parent_cid;
    bool cid_updated, cid_checked;
    char create_type[64];
    uint64_t size;
};

/* What a guest offset maps to. */
enum vmdk_map_kind { VMDK_UNALLOC, VMDK_ZERO, VMDK_DATA };
struct vmdk_map {
    enum vmdk_map_kind kind;
    struct vmdk_extent *ext;
    uint64_t host;                 /* byte in ext->file (grain start + in) */
    uint64_t bytes;                /* bytes that share this answer */
    uint64_t grain_host;           /* the grain's first byte (compressed: marker) */
    uint64_t in;                   /* offset inside the grain */
};

static inline uint32_t vmdk_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t vmdk_le64(const uint8_t *p)
{
    return vmdk_le32(p) | (uint64_t)vmdk_le32(p + 4) << 32;
}
static inline void vmdk_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void vmdk_put64(uint8_t *p, uint64_t v)
{
    vmdk_put32(p, (uint32_t)v);
    vmdk_put32(p + 4, (uint32_t)(v >> 32));
}

/* desc.c */
int vmdk_read_text(vd_node *f, uint64_t off, char **out);
int vmdk_desc_value(const char *desc, const char *key, char *buf, size_t size);
int vmdk_open_descriptor(vd_node *n, const char *desc, int depth);
int vmdk_read_cids(vd_node *n);
int vmdk_parent_hint(vd_node *n);
int vmdk_update_cid(vd_node *n);
bool vmdk_probe_text(const uint8_t *buf, size_t len);

/* sparse.c */
int vmdk_add_sparse(vd_node *n, vd_node *f, bool own, const char *type, int depth,
                    const char *head);
int vmdk_add_flat(vd_node *n, vd_node *f, const char *type, uint64_t sectors,
                  uint64_t offset);
struct vmdk_extent *vmdk_new_extent(vd_node *n);
int vmdk_commit_extent(vd_node *n, struct vmdk_extent *e);
int vmdk_lookup(vd_node *n, uint64_t off, uint64_t len, struct vmdk_map *m);
int vmdk_read_grain(vd_node *n, const struct vmdk_map *m, void *buf);
int vmdk_alloc_grain(vd_node *n, uint64_t off, uint64_t len, const void *buf);
int vmdk_zero_grain(vd_node *n, uint64_t off);
int vmdk_read_backing(vd_node *n, uint64_t off, uint64_t len, void *buf);
int vmdk_write_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf);
int vmdk_compress_grain(vd_node *n, uint64_t off, uint64_t len, const void *buf,
                        void *out, size_t *olen);
int vmdk_store_grain(vd_node *n, uint64_t off, uint64_t len, const void *data, size_t dlen);
void vmdk_free_extents(struct vmdk_state *s);

/* esx.c: VMDK3 (COWD) and seSparse extents */
struct vmdk_se;
int vmdk_add_cowd(vd_node *n, vd_node *f, bool own, const char *type);
int vmdk_add_sesparse(vd_node *n, vd_node *f, const char *type);
int vmdk_se_map(struct vmdk_state *s, struct vmdk_extent *e, uint64_t off, uint64_t len,
                struct vmdk_map *m);
void vmdk_se_free(struct vmdk_se *se);

/* create.c */
int vmdk_create(const char *filename, vd_opts *opts);

extern const struct vd_opt_desc vmdk_create_opts[];

#endif
