/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img bitmap: add, remove, clear, enable, disable and merge
 * persistent dirty bitmaps, several operations in command-line order, as
 * qemu-img does: the first failure stops the run, and what the operations
 * before it did is kept (stored when the image is closed). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/bitmap.h"
#include "img.h"
#include "cli.h"

#define BITMAP_MAX_OPS 64

/* One --add/--remove/... action, in command-line order. */
struct bitmap_op {
    const char *name;              /* "add", "merge", ... */
    const char *src;               /* --merge SOURCE */
};

/* Parsed command line of bitmap. */
struct bitmap_args {
    struct bitmap_op ops[BITMAP_MAX_OPS];
    size_t nops;
    const char *fmt, *src_file, *src_fmt;
    uint64_t granularity;
    bool image_opts, has_granularity, add;
};

/* Record an action; -1 (printed) when there are too many. */
static int bitmap_push(struct bitmap_args *ba, const char *name, const char *src)
{
    if (ba->nops == BITMAP_MAX_OPS) {
        img_error("Too many bitmap operations");
        return -1;
    }
    ba->ops[ba->nops].src = src;
    ba->ops[ba->nops++].name = name;
    ba->add |= !strcmp(name, "add");
    return 0;
}

/* Handle one option of bitmap; -1 on error (printed). */
static int bitmap_opt(struct bitmap_args *ba, int c, char **argv)
{
    switch (c) {
    case 'h': img_help();
    case 'b': ba->src_file = optarg; return 0;
    case 'f': ba->fmt = optarg; return 0;
    case 'F': ba->src_fmt = optarg; return 0;
    case 'I': ba->image_opts = true; return 0;
    case 'j': return 0;
    case 'g':
        ba->has_granularity = true;
        return img_cvtnum("granularity", optarg, &ba->granularity);
    case 'A': return bitmap_push(ba, "add", NULL);
    case 'R': return bitmap_push(ba, "remove", NULL);
    case 'C': return bitmap_push(ba, "clear", NULL);
    case 'E': return bitmap_push(ba, "enable", NULL);
    case 'D': return bitmap_push(ba, "disable", NULL);
    case 'M': return bitmap_push(ba, "merge", optarg);
    default: img_getopt_error(c, argv); return -1;
    }
}

/* True when one of the actions is "merge". */
static bool bitmap_has_merge(const struct bitmap_args *ba)
{
    for (size_t i = 0; i < ba->nops; i++)
        if (!strcmp(ba->ops[i].name, "merge"))
            return true;
    return false;
}

/* Check the combination of options as qemu-img does; -1 (printed). */
static int bitmap_check(const struct bitmap_args *ba, int argc)
{
    if (ba->nops == 0) {
        img_error("Need at least one of --add, --remove, --clear, --enable, "
                  "--disable, or --merge");
        return -1;
    }
    if (ba->has_granularity && !ba->add) {
        img_error("granularity only supported with --add");
        return -1;
    }
    if (ba->src_fmt && !ba->src_file) {
        img_error("-F only supported with -b");
        return -1;
    }
    if (ba->src_file && !bitmap_has_merge(ba)) {
        img_error("Merge bitmap source file only supported with --merge");
        return -1;
    }
    if (optind != argc - 2) {
        img_error("Expecting filename and bitmap name");
        return -1;
    }
    return img_check_image_opts_fmt(ba->image_opts, ba->fmt);
}

/* Open name (or an --image-opts string); NULL on error (printed). */
static vd_node *open_image(const char *name, const char *fmt, bool image_opts,
                           bool writable)
{
    struct img_open_args a = {
        .name = name, .fmt = fmt, .image_opts = image_opts, .writable = writable,
    };
    return img_open(&a);
}

/* Run one action on bitmap name of n (src: the -b image, or n). */
static int run_op(const struct bitmap_args *ba, const struct bitmap_op *op, vd_node *n,
                  vd_node *src, const char *name)
{
    const char *o = op->name;

    if (!strcmp(o, "add"))
        return vd_bitmap_add(n, name, ba->has_granularity ? ba->granularity : 0, false);
    if (!strcmp(o, "remove"))
        return vd_bitmap_remove(n, name);
    if (!strcmp(o, "clear"))
        return vd_bitmap_clear(n, name);
    if (!strcmp(o, "enable") || !strcmp(o, "disable"))
        return vd_bitmap_enable(n, name, !strcmp(o, "enable"));
    return vd_bitmap_merge(n, name, src, op->src);
}

/* Run the actions in order; 1 (printed) at the first failure. */
static int run_ops(const struct bitmap_args *ba, vd_node *n, vd_node *src, const char *name)
{
    for (size_t i = 0; i < ba->nops; i++) {
        if (run_op(ba, &ba->ops[i], n, src, name) < 0) {
            img_error("Operation %s on bitmap %s failed: %s", ba->ops[i].name, name,
                      vd_errmsg());
            return 1;
        }
    }
    return 0;
}

/* vdisk-img bitmap (--merge SOURCE | --add | ...)... filename bitmap */
int img_bitmap(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'j' },
        { "image-opts", no_argument, NULL, 'I' },
        { "add", no_argument, NULL, 'A' },
        { "remove", no_argument, NULL, 'R' },
        { "clear", no_argument, NULL, 'C' },
        { "enable", no_argument, NULL, 'E' },
        { "disable", no_argument, NULL, 'D' },
        { "merge", required_argument, NULL, 'M' },
        { NULL, 0, NULL, 0 },
    };
    struct bitmap_args ba = { .nops = 0 };
    vd_node *n, *src = NULL;
    int c, ret;

    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", longopts, NULL)) != -1)
        if (bitmap_opt(&ba, c, argv) < 0)
            return 1;
    if (bitmap_check(&ba, argc) < 0)
        return 1;
    if (!(n = open_image(argv[optind], ba.fmt, ba.image_opts, true)))
        return 1;
    if (ba.src_file && !(src = open_image(ba.src_file, ba.src_fmt, false, false))) {
        vd_close(n);
        return 1;
    }
    ret = run_ops(&ba, n, src ? src : n, argv[optind + 1]);
    if (vd_flush(n) < 0) {
        img_error("%s", vd_errmsg());
        ret = 1;
    }
    vd_close(src);
    vd_close(n);
    return ret;
}

/* ---- convert --bitmaps ---- */

/* See img.h. */
int img_convert_check_bitmaps(vd_node *src, int nsrc, bool skip_broken)
{
    struct vd_bitmap_info *l;
    int count;

    if (nsrc > 1) {
        img_error("Copying bitmaps only possible with single source");
        return -1;
    }
    if (!vd_bitmap_supported(src) || (count = vd_bitmap_list(src, &l)) < 0) {
        img_error("Source lacks bitmap support");
        return -1;
    }
    /* qemu-img looks at them newest first (reverse directory order). */
    for (int i = count - 1; i >= 0 && !skip_broken; i--) {
        if (l[i].in_use) {
            img_error("Cannot copy inconsistent bitmap '%s'", l[i].name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use 'qemu-img bitmap "
                    "--remove' to delete it\n");
            vd_bitmap_list_free(l, count);
            return -1;
        }
    }
    vd_bitmap_list_free(l, count);
    return 0;
}

/* See img.h. */
int img_convert_check_target_bitmaps(vd_node *dst)
{
    if (vd_bitmap_supported(dst))
        return 0;
    img_error("Format driver '%s' does not support bitmaps", vd_node_format(dst));
    return -1;
}

/* Copy one bitmap: add it to dst as it is in src, then its bits. */
static int copy_one(vd_node *src, vd_node *dst, const struct vd_bitmap_info *b)
{
    if (vd_bitmap_add(dst, b->name, b->granularity, !b->enabled) < 0) {
        img_error("Failed to create bitmap %s: %s", b->name, vd_errmsg());
        return -1;
    }
    if (vd_bitmap_merge(dst, b->name, src, b->name) < 0) {
        img_error("Failed to populate bitmap %s: %s", b->name, vd_errmsg());
        return -1;
    }
    return 0;
}

/* Is name one of dst's bitmaps? */
static bool has_bitmap(vd_node *dst, const char *name)
{
    struct vd_bitmap_info *l;
    int count = vd_bitmap_list(dst, &l);
    bool found = false;

    for (int i = 0; i < count && !found; i++)
        found = !strcmp(l[i].name, name);
    if (count >= 0)
        vd_bitmap_list_free(l, count);
    return found;
}

/* qemu-img's first pass, newest first: skip warnings, and the first name
 * the target has already; -1 (printed). */
static int precheck(const struct vd_bitmap_info *l, int count, vd_node *dst, bool skip)
{
    for (int i = count - 1; i >= 0; i--) {
        if (l[i].in_use && skip) {
            img_error("warning: Skipping inconsistent bitmap '%s'", l[i].name);
            continue;
        }
        if (has_bitmap(dst, l[i].name)) {
            img_error("Failed to create bitmap %s: Bitmap already exists: %s", l[i].name,
                      l[i].name);
            return -1;
        }
    }
    return 0;
}

/* See img.h: the target lists them in the source's order. */
int img_convert_copy_bitmaps(vd_node *src, vd_node *dst, bool skip_broken)
{
    struct vd_bitmap_info *l;
    int count, r;

    if ((count = vd_bitmap_list(src, &l)) < 0) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    r = precheck(l, count, dst, skip_broken);
    for (int i = 0; i < count && r == 0; i++)
        if (!(l[i].in_use && skip_broken))
            r = copy_one(src, dst, &l[i]);
    vd_bitmap_list_free(l, count);
    if (r == 0 && vd_flush(dst) < 0) {
        img_error("%s", vd_errmsg());
        r = -1;
    }
    return r;
}
