/* SPDX-License-Identifier: BSD-3-Clause */
/* vvfat: a host directory presented as a disk with an MBR partition table
 * and a FAT12/16/32 file system, laid out as QEMU 7.2 sizes it (504 MiB or
 * 31.5 MiB hard disk, 1.44/2.88 MB floppy, 8 KiB clusters, 512 root
 * entries; FAT32 with 4 KiB clusters, its root directory in clusters).  The tree is scanned once at open (build.c); file data is read
 * from the host files on demand (vvfat.c); with rw, guest changes to the
 * file system are parsed back and applied to the directory (commit.c). */
#ifndef VD_FORMAT_VVFAT_H
#define VD_FORMAT_VVFAT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "vdisk/driver.h"

#define VV_SECTOR        512u
#define VV_DIRENT        32u
#define VV_ROOT_ENTRIES  512u         /* FAT12/16 root directory (QEMU 7.2) */
#define VV_SPC           16u          /* FAT12/16 sectors per cluster (QEMU 7.2) */
#define VV_SPC32         8u           /* FAT32: 4 KiB clusters, so that there are
                                         more than 65524 of them */
#define VV_RESERVED32    32u          /* FAT32 reserved sectors */
#define VV_MAX_NODES     (1u << 20)   /* files and directories */
#define VV_MAX_DIR_ENTS  65536u       /* 32-byte entries in one directory */
#define VV_MAX_META      (64u << 20)  /* bytes of directory clusters held */
#define VV_MAX_DEPTH     128u

/* Disk geometry and FAT layout (sectors relative to the partition unless
 * named disk_). */
struct vv_geom {
    int fat_type;                  /* 12, 16 or 32 */
    bool floppy;
    uint32_t spc, cluster;         /* sectors and bytes per cluster */
    uint32_t reserved;             /* sectors before the first FAT */
    uint32_t root_entries;         /* fixed root directory (0: FAT32) */
    uint32_t cyls, heads, secs;
    uint32_t disk_sectors;         /* the whole disk */
    uint32_t part_start;           /* 0 (floppy) or 63 */
    uint32_t sector_count;         /* sectors of the file system */
    uint32_t spf;                  /* sectors per FAT */
    uint32_t root_start, data_start;
    uint32_t cluster_count;        /* data clusters: 2 .. cluster_count + 1 */
    uint8_t media;
};

/* A file or directory of the tree.  Nodes are in breadth-first order, so
 * the children of a directory are contiguous, and clusters are handed
 * out in node order (first_cluster grows with the index). */
struct vv_node {
    char *name;                    /* host name */
    char *path;                    /* host path (the directory + relative) */
    uint32_t parent;               /* index; the root is its own parent */
    uint32_t first_child, n_children;
    bool is_dir;
    uint64_t size;
    time_t mtime, atime, ctime;
    dev_t dev;
    ino_t ino;
    uint8_t short_name[11];
    bool need_lfn;
    uint32_t first_cluster, n_clusters;
    uint32_t n_entries;            /* directories: 32-byte entries used */
    uint8_t *dirbuf;               /* directories: n_clusters clusters */
};

struct vv_state {
    struct vv_geom g;
    char *dir;                     /* the host directory as given */
    char *root_real;               /* its real path */
    char label[12];
    bool rw;
    struct vv_node *nodes;
    uint32_t n_nodes, cap_nodes;
    uint64_t meta_bytes;
    uint8_t mbr[VV_SECTOR];
    uint8_t boot[VV_SECTOR];
    uint8_t fsinfo[VV_SECTOR];     /* FAT32: the FSInfo sector and its backup */
    uint8_t fsinfo2[VV_SECTOR];
    uint8_t *fat;                  /* spf sectors */
    uint8_t *root;                 /* the fixed root directory (FAT12/16) */
    uint32_t *cl_node;             /* cluster -> owning node + 1, 0: free */
    uint32_t *cl_pos;              /* cluster -> its index in the owner's chain */
    /* rw: guest writes (commit.c) */
    pthread_mutex_t lock;
    bool lock_ok;
    int ovl_fd;                    /* data clusters written by the guest */
    uint32_t *ovl_slot;            /* cluster -> slot + 1 in ovl_fd, 0: none */
    uint32_t ovl_used;             /* slots handed out */
    uint32_t *ovl_free, ovl_nfree; /* slots given back by commits */
    bool dirty;                    /* writes not yet committed */
    bool commit_failed;            /* the last commit failed, no write since */
};

/* Little-endian fields. */
static inline uint16_t vv_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t vv_le32(const uint8_t *p)
{
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void vv_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void vv_put32(uint8_t *p, uint32_t v)
{
    vv_put16(p, (uint16_t)v);
    vv_put16(p + 2, (uint16_t)(v >> 16));
}

/* build.c */
int vv_geom_init(struct vv_geom *g, int fat_type, bool floppy);
int vv_build(struct vv_state *s);
void vv_free_tree(struct vv_state *s);
void vv_fat_set(uint8_t *fat, int fat_type, uint32_t c, uint32_t v);
uint32_t vv_fat_get(const uint8_t *fat, int fat_type, uint32_t c);
uint8_t vv_lfn_checksum(const uint8_t name[11]);

/* vvfat.c: read bytes [in, in+len) of data cluster c as the image has them
 * (len may run on into clusters that continue c's owner in order) */
int vv_read_cluster(struct vv_state *s, uint32_t c, uint32_t in, uint32_t len, uint8_t *buf);

/* vvfat.c: reserved sector sec of the file system in memory, or NULL */
uint8_t *vv_reserved_sector(struct vv_state *s, uint32_t sec);

/* commit.c */
int vv_write(struct vv_state *s, uint64_t off, uint64_t len, const uint8_t *buf);
int vv_commit(struct vv_state *s);
void vv_rw_close(struct vv_state *s);
/* Parse a FAT image (the metadata and clusters through read) into a list
 * of files; used by the commit and by the fuzz harness. */
struct vv_tree;
typedef int (*vv_read_fn)(void *opaque, uint32_t cluster, uint8_t *buf);
int vv_parse_tree(const struct vv_geom *g, const uint8_t *fat, const uint8_t *root,
                  vv_read_fn rd, void *opaque, struct vv_tree **out);
void vv_tree_free(struct vv_tree *t);

#endif
