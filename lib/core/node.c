/* SPDX-License-Identifier: BSD-3-Clause */
/* Node accessors, image creation and small shared enums. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/untrusted.h"

const char *vd_node_filename(const vd_node *n) { return n->filename; }
const char *vd_node_format(const vd_node *n) { return n->drv->name; }
vd_node *vd_node_file(const vd_node *n) { return n->file; }
vd_node *vd_node_backing(const vd_node *n) { return n->backing; }
bool vd_node_read_only(const vd_node *n) { return n->read_only; }
bool vd_node_probed_raw(const vd_node *n) { return n->probed_raw; }
bool vd_node_encrypted(vd_node *n) { return n->drv->is_encrypted && n->drv->is_encrypted(n); }
uint32_t vd_node_request_alignment(const vd_node *n) { return n->request_alignment; }
const char *vd_node_backing_name(const vd_node *n) { return n->backing_name; }
const char *vd_node_backing_full_name(const vd_node *n) { return n->backing_full_name; }
const char *vd_node_backing_format(const vd_node *n) { return n->backing_format; }

/* Copy the node's I/O counters. */
void vd_node_stats(const vd_node *n, struct vd_stats *st)
{
    st->rd_ops = n->st_rd_ops;
    st->wr_ops = n->st_wr_ops;
    st->zero_ops = n->st_zero_ops;
    st->discard_ops = n->st_discard_ops;
    st->flush_ops = n->st_flush_ops;
    st->rd_bytes = n->st_rd_bytes;
    st->wr_bytes = n->st_wr_bytes;
}

static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full" };

/* Parse a preallocation mode name. */
int vd_prealloc_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (s && !strcmp(s, prealloc_names[i]))
            return i;
    return vd_error(EINVAL, "Invalid parameter '%s'", s ? s : "");
}

/* Name of a preallocation mode. */
const char *vd_prealloc_name(int mode)
{
    return mode >= 0 && mode < 4 ? prealloc_names[mode] : "?";
}

/* Resolve a backing name against the directory of the image's file, as
 * QEMU does for relative names (protocol names and json: stay as they are). */
static char *resolve_backing(const char *image, const char *name)
{
    char *copy, *dir, *out;
    const char *colon = strchr(name, ':'), *slash = strchr(name, '/');

    if (name[0] == '/' || (colon && (!slash || colon < slash)) || !image)
        return strdup(name);
    if (!(copy = strdup(image)))
        return NULL;
    dir = dirname(copy);
    if (!strcmp(dir, ".") && !strchr(image, '/'))
        out = strdup(name);
    else if (asprintf(&out, "%s/%s", dir, name) < 0)
        out = NULL;
    free(copy);
    return out;
}

/* Record the backing file name (and format) stored in n's image.  An
 * untrusted image being opened is refused here, before the driver does
 * anything with the name (the core checks again after open). */
int vd_node_set_backing_name(vd_node *n, const char *name, const char *fmt)
{
    if (name && *name && vd_untrusted_opening(n))
        return vd_untrusted_refuse(n, "backing file", name);
    free(n->backing_name);
    free(n->backing_full_name);
    free(n->backing_format);
    n->backing_name = n->backing_full_name = n->backing_format = NULL;
    if (!name || !*name)
        return 0;
    n->backing_name = strdup(name);
    n->backing_full_name = resolve_backing(n->filename, name);
    n->backing_format = fmt && *fmt ? strdup(fmt) : NULL;
    if (!n->backing_name || !n->backing_full_name || (fmt && *fmt && !n->backing_format))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* Change the backing file recorded in n's image (see vdisk.h). */
int vd_change_backing_file(vd_node *n, const char *name, const char *fmt)
{
    if (n->read_only)
        return vd_error(EPERM, "'%s' is opened read-only", n->filename ? n->filename : "");
    if (fmt && *fmt && !(name && *name))
        return vd_error(EINVAL, "a backing format needs a backing file");
    if (!n->drv->change_backing_file)
        return vd_error(ENOTSUP, "Operation not supported");
    return n->drv->change_backing_file(n, name && *name ? name : NULL,
                                       fmt && *fmt ? fmt : NULL);
}

/* Amend the image's format options (see vdisk.h). */
int vd_amend(vd_node *n, vd_opts *opts, bool force,
             void (*progress)(void *opaque, uint64_t done, uint64_t total),
             void *opaque)
{
    if (n->read_only)
        return vd_error(EPERM, "'%s' is opened read-only", n->filename ? n->filename : "");
    if (!vd_driver_amend_opts(n->drv))
        return vd_error(ENOTSUP, "Format driver '%s' does not support option amendment",
                        n->drv->name);
    return n->drv->amend(n, opts, force, progress, opaque);
}

/* Make every block of n unallocated (see vdisk.h). */
int vd_make_empty(vd_node *n)
{
    if (n->read_only)
        return vd_error(EPERM, "'%s' is opened read-only", n->filename ? n->filename : "");
    if (!n->drv->make_empty)
        return vd_error(ENOTSUP, "%s does not support emptying nodes", n->drv->name);
    return n->drv->make_empty(n);
}

/* Create the protocol-level file of an image. */
int vd_protocol_create(const char *name, vd_opts *opts)
{
    const struct vd_driver *d = vd_protocol_for_name(name);

    if (!d)
        return -ENOENT;
    if (!d->create)
        return vd_error(ENOTSUP, "Protocol driver '%s' does not support image creation",
                        d ? d->name : "?");
    if (d->protocol && !strncmp(name, d->protocol, strlen(d->protocol)) &&
        name[strlen(d->protocol)] == ':' && !d->parse_filename)
        name += strlen(d->protocol) + 1;
    return d->create(name, opts);
}

/* Create an image of format fmt. */
int vd_create(const char *fmt, const char *name, vd_opts *opts)
{
    const struct vd_driver *d = vd_driver_find(fmt);
    int r;

    if (!d || (d->kind == VD_DRV_FORMAT && !d->probe && !d->create))
        return vd_error(EINVAL, "Unknown file format '%s'", fmt);
    if (!d->create)
        return vd_error(ENOTSUP, "Format driver '%s' does not support image creation", fmt);
    if (d->kind == VD_DRV_FORMAT) {
        const struct vd_driver *p = vd_protocol_for_name(name);
        if (!p)
            return -ENOENT;
        /* Unknown options must be known to the format or its protocol. */
        for (size_t i = 0; i < vd_opts_count(opts); i++) {
            const char *k = vd_opts_key(opts, i);
            bool ok = false;
            for (const struct vd_opt_desc *t = d->create_opts; t && t->name; t++)
                ok |= !strcmp(t->name, k);
            for (const struct vd_opt_desc *t = p ? p->create_opts : NULL; t && t->name; t++)
                ok |= !strcmp(t->name, k);
            if (!ok)
                return vd_error(EINVAL, "Invalid parameter '%s'", k);
        }
        return d->create(name, opts);
    }
    if ((r = vd_opts_validate(opts, d->create_opts, d->name)) < 0)
        return r;
    return d->create(name, opts);
}

/* ---- internal snapshots ---- */

/* The node whose snapshots n's are: n, or for a data-only format (raw)
 * without its own, its file when that has them (QEMU's snapshot fallback:
 * raw over rbd lists and takes rbd snapshots). */
static vd_node *snapshot_node(vd_node *n, size_t op)
{
    if (n->drv->data_only && n->file &&
        *(void *const *)((const char *)n->file->drv + op))
        return n->file;
    return n;
}
#define SNAPSHOT_NODE(n, fn) snapshot_node(n, offsetof(struct vd_driver, fn))

/* The snapshots of n (see vdisk.h). */
int vd_snapshot_list(vd_node *n, struct vd_snapshot_info **out)
{
    *out = NULL;
    n = SNAPSHOT_NODE(n, snapshot_list);
    if (!n->drv->snapshot_list)
        return 0;
    return n->drv->snapshot_list(n, out);
}

/* Free a list from vd_snapshot_list. */
void vd_snapshot_list_free(struct vd_snapshot_info *list, int count)
{
    for (int i = 0; list && i < count; i++) {
        free(list[i].id);
        free(list[i].name);
    }
    free(list);
}

/* Take a snapshot (see vdisk.h). */
int vd_snapshot_create(vd_node *n, const struct vd_snapshot_info *sn)
{
    if (!n->drv->snapshot_create)
        n = SNAPSHOT_NODE(n, snapshot_create);
    if (n->read_only)
        return vd_error(EPERM, "'%s' is opened read-only", n->filename ? n->filename : "");
    if (!n->drv->snapshot_create)
        return vd_error(ENOTSUP, "Block format '%s' used by device '' does not support "
                        "internal snapshots", n->drv->name);
    if (!sn->name || strlen(sn->name) > UINT16_MAX)
        return vd_error(EINVAL, "snapshot name too long");
    return n->drv->snapshot_create(n, sn);
}

/* Revert to a snapshot; the guest size may change with it. */
int vd_snapshot_goto(vd_node *n, const char *id_or_name)
{
    int r;

    if (!n->drv->snapshot_goto && SNAPSHOT_NODE(n, snapshot_goto) != n) {
        if (n->read_only)
            return vd_error(EPERM, "'%s' is opened read-only", n->filename ? n->filename : "");
        if ((r = vd_snapshot_goto(n->file, id_or_name)) < 0)
            return r;
        return vd_refresh_length(n) < 0 ? -EIO : 0;
    }

    if (n->read_only)
        return vd_error(EPERM, "'%s' is opened read-only", n->filename ? n->filename : "");
    if (!n->drv->snapshot_goto)
        return vd_error(ENOTSUP, "Block driver does not support snapshots");
    if ((r = n->drv->snapshot_goto(n, id_or_name)) < 0)
        return r;
    return vd_refresh_length(n) < 0 ? -EIO : 0;
}

/* Delete a snapshot (see vdisk.h). */
int vd_snapshot_delete(vd_node *n, const char *id, const char *name)
{
    if (!n->drv->snapshot_delete)
        n = SNAPSHOT_NODE(n, snapshot_delete);
    if (n->read_only)
        return vd_error(EPERM, "'%s' is opened read-only", n->filename ? n->filename : "");
    if (!n->drv->snapshot_delete)
        return vd_error(ENOTSUP, "Block format '%s' used by device '' does not support "
                        "internal snapshots", n->drv->name);
    if (!id && !name)
        return vd_error(EINVAL, "snapshot id or name required");
    return n->drv->snapshot_delete(n, id, name);
}

/* Read a snapshot instead of the current state (see vdisk.h). */
int vd_snapshot_load(vd_node *n, const char *id, const char *name)
{
    int r;

    if (!n->drv->snapshot_load)
        return vd_error(ENOTSUP, "Block format '%s' used by device '' does not support "
                        "temporarily loading internal snapshots", n->drv->name);
    if (!n->read_only)
        return vd_error(EINVAL, "Device is not readonly");
    if (!id && !name)
        return vd_error(EINVAL, "snapshot id or name required");
    if ((r = n->drv->snapshot_load(n, id, name)) < 0)
        return r;
    return vd_refresh_length(n) < 0 ? -EIO : 0;
}

/* vd_snapshot_load from "snapshot.id=..,snapshot.name=.." or an id/name. */
int vd_snapshot_load_param(vd_node *n, const char *param)
{
    vd_opts *o;
    int r;

    if (strncmp(param, "snapshot.", 9)) {
        r = vd_snapshot_load(n, param, NULL);
        return r == -ENOENT ? vd_snapshot_load(n, NULL, param) : r;
    }
    if (!(o = vd_opts_new()))
        return vd_error(ENOMEM, "out of memory");
    r = vd_opts_parse(o, param, NULL);
    for (size_t i = 0; r >= 0 && i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        if (strcmp(k, "snapshot.id") && strcmp(k, "snapshot.name"))
            r = vd_error(EINVAL, "Invalid parameter '%s'", k);
    }
    if (r >= 0)
        r = vd_snapshot_load(n, vd_opts_get(o, "snapshot.id"),
                             vd_opts_get(o, "snapshot.name"));
    vd_opts_free(o);
    return r;
}
