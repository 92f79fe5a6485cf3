/* SPDX-License-Identifier: BSD-3-Clause */
/* The vmdk format (VMware Virtual Disk 5.0 as QEMU 7.2 reads and writes
 * it): probe, open (a sparse extent with its embedded descriptor, or a
 * descriptor file naming extents), guest I/O over the extent list, block
 * status, info, check.  The extents live in sparse.c, the descriptor in
 * desc.c, create in create.c (measure is refused, as by qemu-img 7.2). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"
#include "vmdk.h"

/* Score 100 on the sparse magics or QEMU's descriptor text. */
static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len < 4)
        return 0;
    if (!memcmp(buf, "KDMV", 4) || !memcmp(buf, "COWD", 4))
        return 100;
    return vmdk_probe_text(buf, len) ? 100 : 0;
}

/* Open the extents: the file is a sparse extent or a descriptor. */
static int open_extents(vd_node *n)
{
    struct vmdk_state *s = n->state;
    char *text = NULL;
    int r;

    if ((r = vmdk_read_text(n->file, 0, &text)) < 0)
        return r;
    if (!memcmp(text, "KDMV", 4) || !memcmp(text, "COWD", 4)) {
        r = vmdk_add_sparse(n, n->file, false, "", 0, text);   /* read once */
        if (!s->desc_file)
            s->desc_offset = 0x200;
    } else {
        r = vmdk_open_descriptor(n, text, 0);
    }
    free(text);
    return r;
}

/* Open: extents, parent hint, CIDs (QEMU's order). */
static int vmdk_open(vd_node *n, vd_opts *opts, int flags)
{
    struct vmdk_state *s = n->state;
    int r;

    pthread_mutex_init(&s->lock, NULL);
    s->lock_ok = true;
    if ((r = open_extents(n)) < 0 || (r = vmdk_parent_hint(n)) < 0 ||
        (r = vmdk_read_cids(n)) < 0)
        return r;
    if (s->n_ext == 0)
        return 0;                  /* a disk of size 0, as QEMU opens it */
    return 0;
}

static void vmdk_close(vd_node *n)
{
    struct vmdk_state *s = n->state;

    vmdk_free_extents(s);
    if (s->lock_ok)
        pthread_mutex_destroy(&s->lock);
}

static int64_t vmdk_getlength(vd_node *n)
{
    return (int64_t)((struct vmdk_state *)n->state)->size;
}

/* ---- backing ---- */

/* QEMU reads the backing file only while its CID is the parent CID. */
static int check_parent_cid(vd_node *n)
{
    struct vmdk_state *s = n->state, *ps;

    if (s->cid_checked || !n->backing)
        return 0;
    if (strcmp(n->backing->drv->name, "vmdk"))
        return vd_error(EINVAL, "Invalid argument");
    ps = n->backing->state;
    if (ps->cid != s->parent_cid)
        return vd_error(EINVAL, "Invalid argument");
    s->cid_checked = true;
    return 0;
}

/* Read guest bytes from the backing file (zeroes past its end). */
int vmdk_read_backing(vd_node *n, uint64_t off, uint64_t len, void *buf)
{
    int64_t bl;
    uint64_t l;
    int r;

    if ((r = check_parent_cid(n)) < 0)
        return r;
    bl = vd_getlength(n->backing);
    if (bl < 0)
        return (int)bl;
    l = off >= (uint64_t)bl ? 0 : VD_MIN(len, (uint64_t)bl - off);
    memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(n->backing, off, l, buf, 0) : 0;
}

/* ---- I/O ---- */

static int vmdk_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    uint8_t *p = buf;
    struct vmdk_map m;
    int r;

    while (len) {
        if ((r = vmdk_lookup(n, off, len, &m)) < 0)
            return r;
        if (m.kind == VMDK_DATA)
            r = vmdk_read_grain(n, &m, p);
        else if (m.kind == VMDK_UNALLOC && n->backing)
            r = vmdk_read_backing(n, off, m.bytes, p);
        else
            memset(p, 0, m.bytes), r = 0;
        if (r < 0)
            return r;
        off += m.bytes;
        len -= m.bytes;
        p += m.bytes;
    }
    return 0;
}

/* A new CID on the first write after open (as QEMU). */
static int note_write(vd_node *n)
{
    struct vmdk_state *s = n->state;
    int r = 0;

    pthread_mutex_lock(&s->lock);
    if (!s->cid_updated && (r = vmdk_update_cid(n)) >= 0)
        s->cid_updated = true;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Write one mapping's worth of bytes. */
static int write_piece(vd_node *n, uint64_t off, struct vmdk_map *m, const void *p)
{
    int r;

    if (m->ext->se)
        return vd_error(ENOTSUP, "No write support for seSparse images available");
    if (m->ext->compressed)
        return vmdk_write_compressed(n, off, m->bytes, p);
    if (m->kind == VMDK_DATA) {
        if (!m->ext->flat && m->grain_host >= m->ext->file_len)
            return vd_error(EIO, "vmdk: grain at offset %" PRIu64 " lies beyond the end "
                            "of the file", m->grain_host);
        return vd_pwrite(m->ext->file, m->host, m->bytes, p, 0);
    }
    m->bytes = VD_MIN(m->bytes, m->ext->grain_sectors * VMDK_SECTOR - m->in);
    r = vmdk_alloc_grain(n, off, m->bytes, p);
    return r == 1 ? 1 : r;
}

static int vmdk_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    const uint8_t *p = buf;
    struct vmdk_map m;
    int r;

    while (len) {
        if ((r = vmdk_lookup(n, off, len, &m)) < 0)
            return r;
        if (m.ext->compressed)
            m.bytes = VD_MIN(len, m.ext->grain_sectors * VMDK_SECTOR - m.in);
        if ((r = write_piece(n, off, &m, p)) < 0)
            return r;
        if (r == 1)
            continue;
        if ((r = note_write(n)) < 0)
            return r;
        off += m.bytes;
        len -= m.bytes;
        p += m.bytes;
    }
    if (flags & VD_REQ_FUA)
        return n->drv->flush(n);
    return 0;
}

/* Zeroed grains where the extent has the feature and the range covers
 * whole grains; -ENOTSUP otherwise (the core writes zeroes then). */
static int vmdk_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct vmdk_map m;
    uint64_t o = off, l = len;
    int r;

    while (l) {                    /* dry run first, as QEMU */
        if ((r = vmdk_lookup(n, o, l, &m)) < 0)
            return r;
        uint64_t gb = m.ext->grain_sectors * VMDK_SECTOR;
        if (m.ext->flat || !m.ext->zero_grain || m.in || l < gb)
            return -ENOTSUP;
        o += gb;
        l -= gb;
    }
    while (len) {
        if ((r = vmdk_lookup(n, off, len, &m)) < 0 || (r = vmdk_zero_grain(n, off)) < 0 ||
            (r = note_write(n)) < 0)
            return r;
        off += m.ext->grain_sectors * VMDK_SECTOR;
        len -= m.ext->grain_sectors * VMDK_SECTOR;
    }
    return 0;
}

static int vmdk_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    return vmdk_pwrite(n, off, len, buf, 0);
}

/* Is guest byte off in a compressed (streamOptimized) extent?  1 yes, 0
 * no, <0 on error. */
static int in_compressed(vd_node *n, uint64_t off, uint64_t len)
{
    struct vmdk_map m;
    int r = vmdk_lookup(n, off, len, &m);

    return r < 0 ? r : m.ext->compressed;
}

/* compress_cluster: a grain of a streamOptimized extent; other extents
 * store compressed writes as they are (as QEMU), so the bytes are kept. */
static int vmdk_compress_cluster(vd_node *n, uint64_t off, uint64_t len, const void *buf,
                                 void *out, size_t *olen)
{
    int r = in_compressed(n, off, len);

    if (r != 0)
        return r < 0 ? r : vmdk_compress_grain(n, off, len, buf, out, olen);
    memcpy(out, buf, len);
    *olen = len;
    return 0;
}

/* store_compressed: what vmdk_compress_cluster made. */
static int vmdk_store_compressed(vd_node *n, uint64_t off, uint64_t len, const void *data,
                                 size_t dlen)
{
    int r = in_compressed(n, off, len);

    if (r == 0)
        return dlen == len ? vmdk_pwrite(n, off, len, data, 0)
                           : vd_error(EINVAL, "vmdk: %zu bytes for a %" PRIu64 "-byte "
                                      "uncompressed write", dlen, len);
    if (r > 0 && (r = vmdk_store_grain(n, off, len, data, dlen)) >= 0)
        r = note_write(n);
    return r;
}

static int vmdk_flush(vd_node *n)
{
    struct vmdk_state *s = n->state;
    int r;

    for (uint32_t i = 0; i < s->n_ext; i++)
        if (s->ext[i].own_file && (r = vd_flush(s->ext[i].file)) < 0)
            return r;
    return vd_flush(n->file);
}

/* Does a flat extent's file read zeroes at host? (QEMU adds what the
 * file says to data answers of flat extents); may shorten *pnum. */
static int file_zero(vd_node *f, uint64_t host, uint64_t *pnum)
{
    uint64_t p2 = 0;
    int r = vd_block_status(f, host, *pnum, &p2, NULL, NULL);

    if (r < 0) {
        vd_error_clear();
        return 0;
    }
    if ((r & VD_BS_EOF) && (!p2 || (r & VD_BS_ZERO)))
        return VD_BS_ZERO;
    *pnum = VD_MIN(*pnum, p2);
    return r & VD_BS_ZERO;
}

/* Data, zeroed grains, unallocated (backing) as QEMU answers; flat
 * extents ask their file. */
static int vmdk_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                             uint64_t *map, vd_node **file)
{
    struct vmdk_map m;
    int r;

    if ((r = vmdk_lookup(n, off, len, &m)) < 0)
        return r;
    *pnum = m.bytes;
    if (m.kind == VMDK_UNALLOC)
        return 0;
    if (m.kind == VMDK_ZERO)
        return VD_BS_ZERO;
    if (!m.ext->flat)    /* one grain per answer, as QEMU (convert's requests) */
        *pnum = VD_MIN(m.bytes, m.ext->grain_sectors * VMDK_SECTOR - m.in);
    if (m.ext->compressed)
        return VD_BS_DATA;
    *map = m.host;
    *file = m.ext->file;
    return VD_BS_DATA | VD_BS_OFFSET_VALID | (m.ext->flat ? file_zero(m.ext->file, m.host, pnum) : 0);
}

/* Sparse extents read zeroes when new; flat ones as their files. */
static bool vmdk_has_zero_init(vd_node *n)
{
    struct vmdk_state *s = n->state;

    for (uint32_t i = 0; i < s->n_ext; i++) {
        vd_node *f = s->ext[i].file;
        if (s->ext[i].flat && !(f->drv->has_zero_init && f->drv->has_zero_init(f)))
            return false;
    }
    return true;
}

/* The descriptor's file and every extent file of its own. */
static int64_t vmdk_allocated(vd_node *n)
{
    struct vmdk_state *s = n->state;
    int64_t t = vd_get_allocated_size(n->file), r;

    for (uint32_t i = 0; t >= 0 && i < s->n_ext; i++) {
        if (!s->ext[i].own_file)
            continue;
        if ((r = vd_get_allocated_size(s->ext[i].file)) < 0)
            return r;
        t += r;
    }
    return t;
}

/* Are two extents of one kind for QEMU (flat, compressed, grain size)? */
static bool same_kind(const struct vmdk_extent *a, const struct vmdk_extent *b)
{
    return a->flat == b->flat && a->compressed == b->compressed &&
           (a->flat || a->grain_sectors == b->grain_sectors);
}

/* info's cluster_size: the grain size of sparse extents all alike; 0 for
 * flat ones; -ENOTSUP when they differ (QEMU's get_info fails then). */
static int64_t vmdk_cluster_size(vd_node *n)
{
    struct vmdk_state *s = n->state;

    for (uint32_t i = 1; i < s->n_ext; i++)
        if (!same_kind(&s->ext[0], &s->ext[i]))
            return -ENOTSUP;
    if (!s->n_ext || s->ext[0].flat)
        return 0;
    return (int64_t)(s->ext[0].grain_sectors * VMDK_SECTOR);
}

/* Format-specific info: CIDs, create type, one object per extent. */
static int vmdk_info(vd_node *n, struct vd_json *d)
{
    struct vmdk_state *s = n->state;
    vd_json *list = vd_json_new_array();

    if (!list)
        return -ENOMEM;
    vd_json_set_uint(d, "cid", s->cid);
    vd_json_set_uint(d, "parent-cid", s->parent_cid);
    vd_json_set_str(d, "create-type", s->create_type);
    for (uint32_t i = 0; i < s->n_ext; i++) {
        struct vmdk_extent *e = &s->ext[i];
        vd_json *o = vd_json_new_object();
        if (!o)
            break;
        if (e->compressed)
            vd_json_set_bool(o, "compressed", true);
        vd_json_set_int(o, "virtual-size", (int64_t)(e->sectors * VMDK_SECTOR));
        vd_json_set_str(o, "filename", e->file->filename);
        if (!e->flat)
            vd_json_set_int(o, "cluster-size", (int64_t)(e->grain_sectors * VMDK_SECTOR));
        vd_json_set_str(o, "format", e->type);
        vd_json_append(list, o);
    }
    vd_json_set(d, "extents", list);
    return 0;
}

/* qemu-img check: every grain that maps data must start inside its file;
 * the first problem ends the walk (a table that cannot be read fails the
 * check with EPERM, QEMU's -1).  No repairs (as QEMU). */
static int vmdk_check(vd_node *n, struct vd_check_result *res, int fix)
{
    struct vmdk_state *s = n->state;
    struct vmdk_map m;
    int r;

    if (fix)
        return -ENOTSUP;
    for (uint64_t off = 0; off < s->size; off += m.bytes) {
        if ((r = vmdk_lookup(n, off, s->size - off, &m)) < 0) {
            fprintf(stderr, "ERROR: could not get cluster_offset for sector %" PRIu64 "\n",
                    off / VMDK_SECTOR);
            vd_error_clear();
            return -EPERM;
        }
        if (m.kind == VMDK_DATA && !m.ext->flat && m.grain_host >= m.ext->file_len) {
            fprintf(stderr, "ERROR: cluster offset for sector %" PRIu64 " points after EOF\n",
                    off / VMDK_SECTOR);
            res->corruptions++;
            return -EINVAL;
        }
        if (m.ext->flat)
            m.bytes = m.ext->start + m.ext->sectors * VMDK_SECTOR - off;
    }
    return 0;
}

/* streamOptimized takes whole compressed grains only. */
static bool vmdk_needs_compressed(vd_node *n)
{
    struct vmdk_state *s = n->state;

    return s->n_ext && s->ext[0].compressed;
}

static const struct vd_driver vmdk_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "vmdk",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct vmdk_state),
    .create_opts = vmdk_create_opts,
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .pread = vmdk_pread,
    .pwrite = vmdk_pwrite,
    .pwrite_zeroes = vmdk_pwrite_zeroes,
    .flush = vmdk_flush,
    .block_status = vmdk_block_status,
    .getlength = vmdk_getlength,
    .get_allocated_size = vmdk_allocated,
    .create = vmdk_create,
    .info = vmdk_info,
    .check = vmdk_check,
    .has_zero_init = vmdk_has_zero_init,
    .supports_backing = true,
    .pwrite_compressed = vmdk_pwrite_compressed,
    .cluster_size = vmdk_cluster_size,
    .needs_compressed_writes = vmdk_needs_compressed,
    .compress_cluster = vmdk_compress_cluster,
    .store_compressed = vmdk_store_compressed,
};
VD_DRIVER_REGISTER(vmdk_driver)
