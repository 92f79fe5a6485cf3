/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img amend: the command line is parsed and checked exactly as
 * qemu-img does; the operation needs a driver hook libvdisk does not have
 * yet, so after opening the image it answers with qemu-img's own error for
 * a format without the feature (raw). */
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

/* ---- amend ---- */

/* Parsed command line of amend. */
struct amend_args {
    const char *fmt, *cache;
    char *options;
    bool image_opts;
};

/* Parse amend's options; -1 on error (printed). */
static int amend_parse(int argc, char **argv, struct amend_args *aa)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'j' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force", no_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'o':
            if (img_opts_append(&aa->options, optarg) < 0)
                return -1;
            break;
        case 'f': aa->fmt = optarg; break;
        case 't': aa->cache = optarg; break;
        case 'I': aa->image_opts = true; break;
        case 'p': case 'q': case 'j': case 'F': break;
        default: img_getopt_error(c, argv); return -1;
        }
    }
    if (!aa->options) {
        img_usage_error("Must specify options (-o)");
        return -1;
    }
    return 0;
}

/* The answer of a format driver without option amendment. */
static int amend_refuse(const char *fmt)
{
    if (!vd_driver_find(fmt)) {
        img_error("Unknown file format '%s'", fmt);
        return 1;
    }
    img_error("Format driver '%s' does not support option amendment", fmt);
    return 1;
}

/* vdisk-img amend [options] -o options filename */
int img_amend(int argc, char **argv)
{
    struct amend_args aa = { 0 };
    vd_node *n;
    int ret = 1;

    if (amend_parse(argc, argv, &aa) < 0)
        goto out;
    if (optind != argc - 1) {
        if (aa.fmt && vd_opts_is_help(aa.options) && optind == argc)
            ret = amend_refuse(aa.fmt);
        else
            img_error("Expecting one image file name");
        goto out;
    }
    if (img_check_cache(aa.cache, false) < 0 ||
        img_check_image_opts_fmt(aa.image_opts, aa.fmt) < 0)
        goto out;
    n = open_image(argv[optind], aa.fmt, aa.image_opts, true, false, aa.cache);
    if (n) {
        ret = amend_refuse(vd_node_format(n));
        vd_close(n);
    }
out:
    free(aa.options);
    return ret;
}
