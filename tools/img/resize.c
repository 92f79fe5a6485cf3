/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img resize: grow or (with --shrink) shrink an image to an absolute
 * size or by a relative "+N" / "-N", with optional preallocation of the new
 * space, with qemu-img's checks and messages. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "cli.h"

/* Parsed command line of resize. */
struct resize_args {
    const char *fmt, *size_arg, *filename;
    bool image_opts, quiet, shrink;
    int prealloc;
    int sign;                      /* +1 / -1 relative, 0 absolute */
    uint64_t size;
};

/* Parse "[+|-]size" with qemu's option-size messages; -1 (printed). */
static int parse_size(struct resize_args *ra)
{
    const char *s = ra->size_arg;
    vd_opts *o = vd_opts_new();
    int r;

    if (*s == '+' || *s == '-') {
        ra->sign = *s == '+' ? 1 : -1;
        s++;
    }
    if (!o) {
        img_error("out of memory");
        return -1;
    }
    vd_error_clear();
    r = vd_opts_set(o, "size", s);
    if (r == 0)
        r = vd_opts_get_size(o, "size", 0, &ra->size);
    vd_opts_free(o);
    if (r < 0) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    return 0;
}

/* The requested size from the current one, as a signed 64-bit value (an
 * overflow gives a non-positive size, which is then refused). */
static int64_t new_size(const struct resize_args *ra, int64_t current)
{
    uint64_t total = ra->size;

    if (ra->sign > 0)
        total = (uint64_t)current + ra->size;
    else if (ra->sign < 0)
        total = (uint64_t)current - ra->size;
    return (int64_t)total;
}

/* Check the new size against the current one; -1 (printed) to refuse. */
static int check_size(const struct resize_args *ra, int64_t total, int64_t current)
{
    if (total <= 0) {
        img_error("New image size must be positive");
        return -1;
    }
    if (ra->prealloc != VD_PREALLOC_OFF && total <= current) {
        img_error("Preallocation can only be used for growing images");
        return -1;
    }
    if (total < current && !ra->shrink) {
        img_error("Use the --shrink option to perform a shrink operation.");
        img_error("warning: Shrinking an image will delete all data beyond "
                  "the shrunken image's end. Before performing such an "
                  "operation, make sure there is no important data there.");
        return -1;
    }
    return 0;
}

/* Open, check and truncate; returns the exit code. */
static int do_resize(const struct resize_args *ra)
{
    struct img_open_args a = {
        .name = ra->filename, .fmt = ra->fmt, .image_opts = ra->image_opts,
        .writable = true, .resize = true,
    };
    vd_node *n = img_open(&a);
    int64_t current, total;
    int ret = 1;

    if (!n)
        return 1;
    if ((current = vd_getlength(n)) < 0) {
        img_error("%s", vd_errmsg());
        goto out;
    }
    total = new_size(ra, current);
    if (check_size(ra, total, current) < 0)
        goto out;
    vd_error_clear();
    if (vd_truncate(n, (uint64_t)total, true, ra->prealloc) < 0) {
        img_error("%s", vd_errmsg());
        goto out;
    }
    if (!ra->quiet)
        printf("Image resized.\n");
    ret = 0;
out:
    vd_close(n);
    return ret;
}

/* Handle one option of resize; -1 on error (printed). */
static int parse_opt(struct resize_args *ra, int c, char **argv)
{
    switch (c) {
    case 'h': img_help();
    case 'f': ra->fmt = optarg; return 0;
    case 'q': ra->quiet = true; return 0;
    case 'I': ra->image_opts = true; return 0;
    case 'S': ra->shrink = true; return 0;
    case 'b': return 0;            /* --object: no object types yet */
    case 'p':
        if ((ra->prealloc = vd_prealloc_parse(optarg)) < 0) {
            img_error("Invalid preallocation mode '%s'", optarg);
            return -1;
        }
        return 0;
    default:
        img_getopt_error(c, argv);
        return -1;
    }
}

/* vdisk-img resize [options] filename [+|-]size */
int img_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'b' },
        { "image-opts", no_argument, NULL, 'I' },
        { "preallocation", required_argument, NULL, 'p' },
        { "shrink", no_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 },
    };
    struct resize_args ra = { .prealloc = VD_PREALLOC_OFF };
    int c;

    if (argc < 3) {
        img_usage_error("Not enough arguments");
        return 1;
    }
    /* The size comes last and may look like an option ("-1G"). */
    ra.size_arg = argv[--argc];
    while ((c = getopt_long(argc, argv, ":f:hq", longopts, NULL)) != -1)
        if (parse_opt(&ra, c, argv) < 0)
            return 1;
    if (optind != argc - 1) {
        img_usage_error("Expecting image file name and size");
        return 1;
    }
    ra.filename = argv[optind];
    if (parse_size(&ra) < 0 || img_check_image_opts_fmt(ra.image_opts, ra.fmt) < 0)
        return 1;
    return do_resize(&ra);
}
