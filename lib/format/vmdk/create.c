/* SPDX-License-Identifier: BSD-3-Clause */
/* Creating vmdk images as qemu-img 7.2 does: the same options, checks and
 * messages, the same file names for split and flat extents, the same
 * descriptor text (but for the random CID) and the same sparse layout
 * (redundant directory and tables, then the directory and tables, grains
 * from the next 64 KiB on). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "util/buf.h"
#include "vmdk.h"

#define SPLIT_SIZE 0x80000000ull   /* twoGbMaxExtent* extent size */

/* The create options, in qemu-img 7.2's -o help order. */
const struct vd_opt_desc vmdk_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "adapter_type", VD_OPT_STRING, "Virtual adapter type, can be one of ide (default), "
      "lsilogic, buslogic or legacyESX", NULL },
    { "backing_file", VD_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VD_OPT_STRING, "Must be 'vmdk' if present", NULL },
    { "compat6", VD_OPT_BOOL, "VMDK version 6 image", "off" },
    { "hwversion", VD_OPT_STRING, "VMDK hardware version", "undefined" },
    { "subformat", VD_OPT_STRING, "VMDK flat extent format, can be one of {monolithicSparse "
      "(default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | "
      "streamOptimized} ", NULL },
    { "toolsversion", VD_OPT_STRING, "VMware guest tools version", NULL },
    { "zeroed_grain", VD_OPT_BOOL, "Enable efficient zero writes using the zeroed-grain GTE "
      "feature", NULL },
    { NULL, 0, NULL, NULL },
};

static const char *const subformats[] = { "monolithicSparse", "monolithicFlat",
    "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "streamOptimized", NULL };
static const char *const adapters[] = { "ide", "buslogic", "lsilogic", "legacyESX", NULL };

/* What create was asked for. */
struct vmdk_create {
    uint64_t size;
    const char *subformat, *adapter, *backing, *hw, *tools;
    bool compat6, zeroed, flat, split, compress;
    char *path, *prefix, *postfix;     /* the file name, decomposed */
};

/* Index of s in list, or -1. */
static int lookup(const char *const *list, const char *s)
{
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], s))
            return i;
    return -1;
}

/* Split the file name as QEMU does: directory (through the last '/', else
 * '\\', else ':'), base name before its last '.', and the rest. */
static int decompose(const char *name, struct vmdk_create *c)
{
    const char *p = strrchr(name, '/'), *q;

    if (!*name)
        return vd_error(EINVAL, "No filename provided");
    if (!p)
        p = strrchr(name, '\\');
    if (!p)
        p = strrchr(name, ':');
    p = p ? p + 1 : name;
    q = strrchr(p, '.');
    c->path = strndup(name, (size_t)(p - name));
    c->prefix = strndup(p, q ? (size_t)(q - p) : strlen(p));
    c->postfix = strdup(q ? q : "");
    if (!c->path || !c->prefix || !c->postfix)
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* Read and check the options (QEMU's order and messages). */
static int parse_opts(vd_opts *o, struct vmdk_create *c)
{
    const char *bf = vd_opts_get(o, "backing_fmt");
    int r;

    if (bf && strcmp(bf, "vmdk"))
        return vd_error(EINVAL, "backing_file must be a vmdk image");
    if ((r = vd_opts_get_size(o, "size", 0, &c->size)) < 0)
        return r;
    if (!round_up_checked(c->size, VMDK_SECTOR, &c->size))
        return vd_error(EINVAL, "Image size is too large");
    c->adapter = vd_opts_get(o, "adapter_type");
    c->backing = vd_opts_get(o, "backing_file");
    c->hw = vd_opts_get(o, "hwversion");
    c->tools = vd_opts_get(o, "toolsversion");
    c->subformat = vd_opts_get(o, "subformat");
    if ((r = vd_opts_get_bool(o, "compat6", false, &c->compat6)) < 0 ||
        (r = vd_opts_get_bool(o, "zeroed_grain", false, &c->zeroed)) < 0)
        return r;
    if (c->hw && !strcmp(c->hw, "undefined"))
        c->hw = NULL;
    if (c->adapter && lookup(adapters, c->adapter) < 0)
        return vd_error(EINVAL, "invalid parameter value: %s", c->adapter);
    if (!c->adapter)
        c->adapter = "ide";
    if (c->subformat && lookup(subformats, c->subformat) < 0)
        return vd_error(EINVAL, "invalid parameter value: %s", c->subformat);
    if (!c->subformat)
        c->subformat = "monolithicSparse";
    return 0;
}

/* The checks of the create itself (after the options). */
static int check_combination(struct vmdk_create *c)
{
    if (c->compat6) {
        if (c->hw)
            return vd_error(EINVAL, "compat6 cannot be enabled with hwversion set");
        c->hw = "6";
    }
    if (!c->hw)
        c->hw = "4";
    if (!c->tools)
        c->tools = "2147483647";
    c->split = strstr(c->subformat, "twoGb") != NULL;
    c->flat = !strcmp(c->subformat, "monolithicFlat") ||
              !strcmp(c->subformat, "twoGbMaxExtentFlat");
    c->compress = !strcmp(c->subformat, "streamOptimized");
    if (c->flat && c->backing)
        return vd_error(ENOTSUP, "Flat image can't have backing file");
    if (c->flat && c->zeroed)
        return vd_error(ENOTSUP, "Flat image can't enable zeroed grain");
    return 0;
}

/* The options of the files under the image: all but vmdk's, size 0. */
static vd_opts *proto_opts(vd_opts *o)
{
    vd_opts *p = vd_opts_new();

    for (size_t i = 0; p && i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        bool ours = false;
        for (const struct vd_opt_desc *d = vmdk_create_opts; d->name; d++)
            ours |= !strcmp(d->name, k);
        if (!ours && vd_opts_set(p, k, vd_opts_value(o, i)) < 0) {
            vd_opts_free(p);
            return NULL;
        }
    }
    if (p && vd_opts_set(p, "size", "0") < 0) {
        vd_opts_free(p);
        return NULL;
    }
    return p;
}

/* The sparse header and the two directories of an extent of size bytes. */
static int init_sparse(vd_node *f, uint64_t size, const struct vmdk_create *c)
{
    uint8_t h[VMDK_SECTOR] = { 0 };
    uint64_t cap = size / VMDK_SECTOR, grains = div_round_up(cap, 128);
    uint64_t gt_count = div_round_up(grains, 512), gt_size = 4;
    uint64_t gd_sectors = div_round_up(gt_count * 4, VMDK_SECTOR);
    uint64_t rgd = 21, gd = rgd + gd_sectors + gt_size * gt_count;
    uint64_t grain_off = (gd + gd_sectors + gt_size * gt_count + 127) / 128 * 128;
    uint8_t *dir;
    int r;

    if (gd + gd_sectors + gt_size * gt_count >= VMDK_EXTENT_MAX_SECT)
        return vd_error(EFBIG, "vmdk: the image is too large");
    memcpy(h, "KDMV", 4);
    vmdk_put32(h + VH4_VERSION, c->compress ? 3 : c->zeroed ? 2 : 1);
    vmdk_put32(h + VH4_FLAGS, VMDK4_FLAG_RGD | VMDK4_FLAG_NL_DETECT |
               (c->compress ? VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER : 0) |
               (c->zeroed ? VMDK4_FLAG_ZERO_GRAIN : 0));
    vmdk_put64(h + VH4_CAPACITY, cap);
    vmdk_put64(h + VH4_GRANULARITY, 128);
    vmdk_put64(h + VH4_DESC_OFFSET, 1);
    vmdk_put64(h + VH4_DESC_SIZE, 20);
    vmdk_put32(h + VH4_GTES, 512);
    vmdk_put64(h + VH4_RGD_OFFSET, rgd);
    vmdk_put64(h + VH4_GD_OFFSET, gd);
    vmdk_put64(h + VH4_GRAIN_OFFSET, grain_off);
    memcpy(h + VH4_CHECK, "\n \r\n", 4);
    h[VH4_COMPRESS] = c->compress ? VMDK4_DEFLATE : 0;
    if ((r = vd_truncate(f, grain_off * VMDK_SECTOR, true, VD_PREALLOC_OFF)) < 0 ||
        (r = vd_pwrite(f, 0, VH4_END, h, 0)) < 0)
        return r;
    if (!(dir = calloc(gd_sectors ? gd_sectors : 1, VMDK_SECTOR)))
        return vd_error(ENOMEM, "out of memory");
    for (int pass = 0; pass < 2 && r >= 0; pass++) {
        uint64_t base = pass ? gd : rgd;
        for (uint64_t i = 0; i < gt_count; i++)
            vmdk_put32(dir + 4 * i, (uint32_t)(base + gd_sectors + i * gt_size));
        if (gd_sectors)
            r = vd_pwrite(f, base * VMDK_SECTOR, gd_sectors * VMDK_SECTOR, dir, 0);
    }
    free(dir);
    return r;
}

/* Create one file (protocol options po) and lay out an extent of size
 * bytes in it; *out keeps it open when out is not NULL. */
static int make_file(const char *name, uint64_t size, const struct vmdk_create *c,
                     vd_opts *po, vd_node **out)
{
    vd_opts *p = vd_opts_dup(po);
    vd_node *f = NULL;
    int r;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(name, p);
    vd_opts_free(p);
    if (r < 0 || (r = vd_open(&f, name, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) < 0)
        return r;
    r = c->flat ? vd_truncate(f, size, true, VD_PREALLOC_OFF) : init_sparse(f, size, c);
    if (r >= 0 && out) {
        *out = f;
        return 0;
    }
    vd_close(f);
    return r;
}

/* The parent CID of a backing file (which must be vmdk). */
static int backing_cid(const char *image, const char *backing, uint32_t *cid)
{
    vd_node *b = NULL, *tmp = NULL;
    int r;

    if ((r = vd_open(&tmp, image, "raw", NULL, VD_O_NO_LOCK)) < 0)
        return r;
    r = vd_node_set_backing_name(tmp, backing, NULL);
    if (r >= 0)
        r = vd_open(&b, vd_node_backing_full_name(tmp), NULL, NULL, VD_O_NO_BACKING);
    vd_close(tmp);
    if (r < 0)
        return r;
    if (strcmp(vd_node_format(b), "vmdk")) {
        r = vd_error(EINVAL, "Invalid backing file format: %s. Must be vmdk",
                     vd_node_format(b));
    } else {
        *cid = ((struct vmdk_state *)b->state)->cid;
    }
    vd_close(b);
    return r;
}

/* Name of extent idx (1...): prefix-f001.ext / -s001 / -flat. */
static char *extent_name(const struct vmdk_create *c, int idx, bool with_path)
{
    struct vd_buf b = { 0 };

    if (with_path)
        vd_buf_adds(&b, c->path);
    if (c->split)
        vd_buf_printf(&b, "%s-%c%03d%s", c->prefix, c->flat ? 'f' : 's', idx, c->postfix);
    else
        vd_buf_printf(&b, "%s-flat%s", c->prefix, c->postfix);
    return vd_buf_steal(&b);
}

/* Create the extent files past the first and add their lines. */
static int make_extents(const struct vmdk_create *c, vd_opts *po, struct vd_buf *lines)
{
    uint64_t done = 0, step = c->split ? SPLIT_SIZE : c->size;
    int r = 0;

    for (int idx = 1; done < c->size && r >= 0; idx++) {
        uint64_t cur = VD_MIN(c->size - done, step);
        char *full = extent_name(c, idx, true), *base = extent_name(c, idx, false);
        if (!full || !base)
            r = vd_error(ENOMEM, "out of memory");
        else if ((r = make_file(full, cur, c, po, NULL)) >= 0)
            vd_buf_printf(lines, c->flat ? "RW %" PRIu64 " FLAT \"%s\" 0\n"
                          : "RW %" PRIu64 " SPARSE \"%s\"\n", cur / VMDK_SECTOR, base);
        free(full);
        free(base);
        done += cur;
    }
    return r;
}

/* The descriptor text. */
static char *descriptor(const struct vmdk_create *c, uint32_t pcid, const char *lines)
{
    struct vd_buf b = { 0 };
    uint32_t cid, heads = strcmp(c->adapter, "ide") ? 255 : 16;

    if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
        cid = (uint32_t)rand();
    vd_buf_printf(&b, "# Disk DescriptorFile\nversion=1\nCID=%" PRIx32 "\nparentCID=%"
                  PRIx32 "\ncreateType=\"%s\"\n", cid, pcid, c->subformat);
    if (c->backing)
        vd_buf_printf(&b, "parentFileNameHint=\"%s\"", c->backing);
    vd_buf_printf(&b, "\n# Extent description\n%s\n# The Disk Data Base\n#DDB\n\n"
                  "ddb.virtualHWVersion = \"%s\"\nddb.geometry.cylinders = \"%" PRId64
                  "\"\nddb.geometry.heads = \"%" PRIu32 "\"\nddb.geometry.sectors = \"63\"\n"
                  "ddb.adapterType = \"%s\"\nddb.toolsVersion = \"%s\"\n", lines, c->hw,
                  (int64_t)(c->size / (63ull * heads * VMDK_SECTOR)), heads, c->adapter,
                  c->tools);
    return vd_buf_steal(&b);
}

/* Lay out the image: descriptor file (or the sparse extent holding it),
 * then the other extents, then the descriptor text. */
static int do_create(const char *filename, struct vmdk_create *c, vd_opts *po)
{
    bool mono_sparse = !c->split && !c->flat;
    struct vd_buf lines = { 0 };
    uint32_t pcid = 0xffffffffu;
    vd_node *f = NULL;
    char *desc = NULL, *base;
    int r;

    if ((r = make_file(filename, mono_sparse ? c->size : 0, c, po, &f)) < 0)
        return r;
    if (mono_sparse) {
        base = strrchr(filename, '/') ? strrchr(filename, '/') + 1 : (char *)filename;
        vd_buf_printf(&lines, "RW %" PRIu64 " SPARSE \"%s\"\n", c->size / VMDK_SECTOR, base);
    }
    if (c->backing && (r = backing_cid(filename, c->backing, &pcid)) < 0)
        goto out;
    if (!mono_sparse && (r = make_extents(c, po, &lines)) < 0)
        goto out;
    if (!(desc = descriptor(c, pcid, lines.p ? lines.p : ""))) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    if (!mono_sparse)
        r = vd_truncate(f, strlen(desc), true, VD_PREALLOC_OFF);
    if (r >= 0 && (r = vd_pwrite(f, mono_sparse ? 0x200 : 0, strlen(desc), desc, 0)) < 0)
        r = vd_error_prefix(r, "Could not write description");
    if (r >= 0)
        r = vd_flush(f);
out:
    free(desc);
    vd_buf_free(&lines);
    vd_close(f);
    return r;
}

int vmdk_create(const char *filename, vd_opts *opts)
{
    struct vmdk_create c = { 0 };
    vd_opts *po = NULL;
    int r;

    if ((r = parse_opts(opts, &c)) < 0 || (r = decompose(filename, &c)) < 0 ||
        (r = check_combination(&c)) < 0)
        goto out;
    if (!(po = proto_opts(opts))) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    r = do_create(filename, &c, po);
out:
    vd_opts_free(po);
    free(c.path);
    free(c.prefix);
    free(c.postfix);
    return r;
}
