/* SPDX-License-Identifier: BSD-3-Clause */
/* vvfat: the file system as parsed from the guest's FAT (parse.c). */
#ifndef VD_FORMAT_VVFAT_PARSE_H
#define VD_FORMAT_VVFAT_PARSE_H

#include "format/vvfat/vvfat.h"

/* One file or directory; entry 0 is the root.  Parents come before their
 * children (breadth-first). */
struct vv_entry {
    char *name;                    /* host name (UTF-8) */
    uint32_t parent;
    bool is_dir;
    uint32_t size;
    uint32_t first, n_clusters;    /* the chain (first 0: none) */
    uint8_t *dirbuf;               /* directories: the chain's bytes */
    uint16_t mtime, mdate;         /* FAT time and date of the last write */
};

struct vv_tree {
    struct vv_geom g;
    struct vv_entry *e;
    uint32_t n, cap;
    uint8_t *seen;                 /* clusters met so far */
    uint64_t meta_bytes;
};

#endif
