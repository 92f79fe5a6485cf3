/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img bitmap: the command line
 * is parsed and checked exactly as qemu-img does; the operations need
 * driver hooks libvdisk does not have yet, so after opening the image they
 * answer with qemu-img's own error for a format without the feature (raw). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"

/* Open name (or an --image-opts string) with the given flags; NULL on error. */
static vd_node *open_image(const char *name, const char *fmt, bool image_opts,
                           bool writable, bool force_share, const char *cache)
{
    struct img_open_args a = {
        .name = name, .fmt = fmt, .image_opts = image_opts,
        .writable = writable, .force_share = force_share, .cache = cache,
    };
    return img_open(&a);
}

/* ---- bitmap ---- */

#define BITMAP_MAX_OPS 64

/* One --add/--remove/... action, in command-line order. */
struct bitmap_op {
    const char *name;              /* "add", "merge", ... */
};

/* Parsed command line of bitmap. */
struct bitmap_args {
    struct bitmap_op ops[BITMAP_MAX_OPS];
    size_t nops;
    const char *fmt, *src_file, *src_fmt;
    bool image_opts, has_granularity, add;
};

/* Record an action; -1 (printed) when there are too many. */
static int bitmap_push(struct bitmap_args *ba, const char *name)
{
    if (ba->nops == BITMAP_MAX_OPS) {
        img_error("Too many bitmap operations");
        return -1;
    }
    ba->ops[ba->nops++].name = name;
    ba->add |= !strcmp(name, "add");
    return 0;
}

/* Handle one option of bitmap; -1 on error (printed). */
static int bitmap_opt(struct bitmap_args *ba, int c, char **argv)
{
    uint64_t g;

    switch (c) {
    case 'h': img_help();
    case 'b': ba->src_file = optarg; return 0;
    case 'f': ba->fmt = optarg; return 0;
    case 'F': ba->src_fmt = optarg; return 0;
    case 'I': ba->image_opts = true; return 0;
    case 'j': return 0;
    case 'g':
        ba->has_granularity = true;
        return img_cvtnum("granularity", optarg, &g);
    case 'A': return bitmap_push(ba, "add");
    case 'R': return bitmap_push(ba, "remove");
    case 'C': return bitmap_push(ba, "clear");
    case 'E': return bitmap_push(ba, "enable");
    case 'D': return bitmap_push(ba, "disable");
    case 'M': return bitmap_push(ba, "merge");
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

/* The first action fails: no driver stores persistent bitmaps yet. */
static int bitmap_refuse(const struct bitmap_args *ba, const char *bitmap)
{
    const char *op = ba->ops[0].name;

    if (!strcmp(op, "add"))
        img_error("Operation add on bitmap %s failed: Can't store persistent "
                  "bitmaps to #block%03d: %s", bitmap, 100 + (int)(getpid() % 900),
                  strerror(ENOTSUP));
    else
        img_error("Operation %s on bitmap %s failed: Dirty bitmap '%s' not found",
                  op, bitmap, bitmap);
    return 1;
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
    vd_node *n;
    int c, ret;

    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", longopts, NULL)) != -1)
        if (bitmap_opt(&ba, c, argv) < 0)
            return 1;
    if (bitmap_check(&ba, argc) < 0)
        return 1;
    n = open_image(argv[optind], ba.fmt, ba.image_opts, true, false, NULL);
    if (!n)
        return 1;
    ret = bitmap_refuse(&ba, argv[optind + 1]);
    vd_close(n);
    return ret;
}
