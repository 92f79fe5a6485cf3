/* SPDX-License-Identifier: BSD-3-Clause */
/* Persistent dirty bitmaps of an image (qcow2's bitmaps extension): list,
 * add, remove, clear, enable/disable, merge, and the dirty status of a
 * range (what an NBD export's qemu:dirty-bitmap:NAME context shows).
 * Changes are kept in memory and stored when the image is closed. */
#ifndef VDISK_BITMAP_H
#define VDISK_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Longest bitmap name (bytes), as QEMU. */
#define VD_BITMAP_MAX_NAME 1023u

/* One persistent bitmap. */
struct vd_bitmap_info {
    char *name;
    uint64_t granularity;          /* bytes per bit */
    bool enabled;                  /* tracks writes ("auto") */
    bool in_use;                   /* inconsistent: not to be trusted */
};

/* Operations of the driver hook (struct vd_driver.bitmap). */
enum vd_bitmap_op {
    VD_BITMAP_LIST,                /* fills list/count */
    VD_BITMAP_ADD,                 /* name, granularity (0: default), disabled */
    VD_BITMAP_REMOVE,
    VD_BITMAP_CLEAR,
    VD_BITMAP_ENABLE,
    VD_BITMAP_DISABLE,
    VD_BITMAP_STATUS,              /* name, off, len -> dirty, pnum */
    VD_BITMAP_SET_DIRTY,           /* name, off, len (merge) */
    VD_BITMAP_CHECK_USABLE,        /* name: exists and consistent */
    VD_BITMAP_SUPPORTED,           /* 0: this image can keep bitmaps */
};

/* A request to the driver hook. */
struct vd_bitmap_req {
    enum vd_bitmap_op op;
    const char *name;
    uint64_t granularity;
    bool disabled;
    uint64_t off, len;
    bool dirty;                    /* out (STATUS) */
    uint64_t pnum;                 /* out (STATUS) */
    struct vd_bitmap_info *list;   /* out (LIST), vd_bitmap_list_free */
    int count;                     /* out (LIST) */
};

/* The node's persistent bitmaps: returns the count and a malloc'd array
 * in *out (free with vd_bitmap_list_free), or -errno (-ENOTSUP: the
 * format keeps none). */
int vd_bitmap_list(vd_node *n, struct vd_bitmap_info **out);
void vd_bitmap_list_free(struct vd_bitmap_info *list, int count);
/* Can this image keep persistent bitmaps (qcow2 v3)? */
bool vd_bitmap_supported(vd_node *n);
/* Add an empty bitmap (granularity 0: the format's default). */
int vd_bitmap_add(vd_node *n, const char *name, uint64_t granularity, bool disabled);
int vd_bitmap_remove(vd_node *n, const char *name);
int vd_bitmap_clear(vd_node *n, const char *name);
int vd_bitmap_enable(vd_node *n, const char *name, bool enable);
/* Set in bitmap dname of dst every range dirty in sname of src. */
int vd_bitmap_merge(vd_node *dst, const char *dname, vd_node *src, const char *sname);
/* Whether [off, off+len) starts dirty in bitmap name; *pnum is how many
 * bytes from off share that state (at least 1, at most len). */
int vd_bitmap_status(vd_node *n, const char *name, uint64_t off, uint64_t len,
                     bool *dirty, uint64_t *pnum);

#ifdef __cplusplus
}
#endif
#endif
