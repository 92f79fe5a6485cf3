/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img dd: copy part of an image (bs, count, skip, if, of operands)
 * into a newly created image, as qemu-img dd does: the output is written in
 * full (no sparse detection) through the copy engine. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "util/size.h"

/* Parsed command line of dd. */
struct dd_args {
    const char *fmt, *out_fmt, *in, *out;
    bool image_opts, force_share;
    uint64_t bs, count, skip;
    bool has_count, has_skip;
};

/* bs=: a size from 1 to INT_MAX. */
static int parse_bs(const char *s, uint64_t *out)
{
    uint64_t v;
    int r = vd_parse_size(s, 'B', &v);

    if (r < 0 && r != -ERANGE) {
        img_error("Invalid bs specified. You may use k, M, G, T, P or E suffixes for");
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if (r < 0 || v < 1 || v > INT_MAX) {
        img_error("Invalid bs specified. Must be between 1 and %d.", INT_MAX);
        return -1;
    }
    *out = v;
    return 0;
}

/* One "key=value" operand; -1 on error (printed). */
static int dd_operand(struct dd_args *da, const char *arg)
{
    const char *eq = strchr(arg, '=');
    size_t klen = eq ? (size_t)(eq - arg) : 0;
    const char *v = eq ? eq + 1 : NULL;

#define KEY_IS(k) (eq && klen == strlen(k) && !strncmp(arg, k, klen))
    if (KEY_IS("bs"))
        return parse_bs(v, &da->bs);
    if (KEY_IS("count")) {
        da->has_count = true;
        return img_cvtnum("count", v, &da->count);
    }
    if (KEY_IS("skip")) {
        da->has_skip = true;
        return img_cvtnum("skip", v, &da->skip);
    }
    if (KEY_IS("if")) {
        da->in = v;
        return 0;
    }
    if (KEY_IS("of")) {
        da->out = v;
        return 0;
    }
#undef KEY_IS
    img_error("unrecognized operand %.*s", (int)(eq ? klen : strlen(arg)), arg);
    return -1;
}

/* Parse dd's options and operands; -1 on error (printed). */
static int parse_args(int argc, char **argv, struct dd_args *da)
{
    enum { OPT_IMAGE_OPTS = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'f': da->fmt = optarg; break;
        case 'O': da->out_fmt = optarg; break;
        case 'U': da->force_share = true; break;
        case OPT_IMAGE_OPTS: da->image_opts = true; break;
        default:
            img_getopt_error(c, argv);
            return -1;
        }
    }
    for (int i = optind; i < argc; i++)
        if (dd_operand(da, argv[i]) < 0)
            return -1;
    if (!da->in || !da->out) {
        img_error("Must specify both input and output files");
        return -1;
    }
    return 0;
}

/* Bytes to read from the input: its size, cut to count blocks. */
static uint64_t input_end(const struct dd_args *da, uint64_t size)
{
    uint64_t n;

    if (da->has_count && !__builtin_mul_overflow(da->count, da->bs, &n) &&
        n <= INT64_MAX && n < size)
        return n;
    return size;
}

/* Where reading starts; *ok false when skip lies beyond the end. */
static uint64_t input_start(const struct dd_args *da, uint64_t end, bool *ok)
{
    uint64_t n;

    *ok = true;
    if (!da->has_skip)
        return 0;
    if (__builtin_mul_overflow(da->skip, da->bs, &n) || n > INT64_MAX || n > end) {
        *ok = false;
        return end;
    }
    return n;
}

/* A "driver:" prefix naming a driver that cannot create images is refused
 * before anything else; -1 (printed). */
int img_check_protocol_create(const char *name);
int img_check_protocol_create(const char *name)
{
    size_t n = strcspn(name, ":/");
    char drv[64];
    const struct vd_driver *d;

    if (!vd_protocol_for_name(name)) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    if (name[n] != ':' || n == 0 || n >= sizeof(drv))
        return 0;
    memcpy(drv, name, n);
    drv[n] = '\0';
    d = vd_driver_find(drv);
    if (!d || d->kind == VD_DRV_FORMAT || d->create)
        return 0;
    img_error("Protocol driver '%s' does not support image creation", drv);
    return -1;
}

/* Create the output image of size bytes; -1 (printed). */
static int create_output(const struct dd_args *da, uint64_t size)
{
    vd_opts *o;
    char buf[32];
    int r;

    if (!vd_driver_can_create(vd_driver_find(da->out_fmt))) {
        img_error("Format driver '%s' does not support image creation", da->out_fmt);
        return -1;
    }
    if (img_check_protocol_create(da->out) < 0)
        return -1;
    if (!(o = vd_opts_new())) {
        img_error("out of memory");
        return -1;
    }
    snprintf(buf, sizeof(buf), "%" PRIu64, size);
    vd_opts_set(o, "size", buf);
    vd_error_clear();
    r = vd_create(da->out_fmt, da->out, o);
    vd_opts_free(o);
    if (r < 0) {
        img_error("%s: error while creating output image: %s", da->out, vd_errmsg());
        return -1;
    }
    return 0;
}

/* Copy [start, end) of the input to the start of the output; -1 (printed). */
static int dd_copy(vd_node *in, vd_node *out, uint64_t start, uint64_t end)
{
    struct vd_copy_params p = { .src = &in, .nsrc = 1, .src_offset = start,
                                .length = end - start, .dst = out,
                                .min_sparse = 0 };
    int r;

    if (end <= start)
        return 0;
    vd_error_clear();
    r = vd_copy(&p);
    if (r < 0) {
        bool rd = !strncmp(vd_errmsg(), "error while reading", 19);
        img_error("error while %s: %s",
                  rd ? "reading from input image file" : "writing to output image file",
                  strerror(-r));
        return -1;
    }
    return 0;
}

/* Open the input, create and open the output, copy; returns the exit code. */
static int do_dd(const struct dd_args *da)
{
    struct img_open_args ia = { .name = da->in, .fmt = da->fmt,
        .image_opts = da->image_opts, .force_share = da->force_share };
    struct img_open_args oa = { .name = da->out, .fmt = da->out_fmt,
        .writable = true, .no_backing = true, .target = true };
    vd_node *in = NULL, *out = NULL;
    uint64_t start, end;
    int64_t size;
    bool ok;
    int ret = 1;

    if (img_check_image_opts_fmt(da->image_opts, da->fmt) < 0 || !(in = img_open(&ia)))
        return 1;
    if (!vd_driver_find(da->out_fmt)) {
        img_error("Unknown file format");
        goto out;
    }
    if ((size = vd_getlength(in)) < 0) {
        img_error("Failed to get size for '%s'", da->in);
        goto out;
    }
    end = input_end(da, (uint64_t)size);
    start = input_start(da, end, &ok);
    if (create_output(da, end - start) < 0 || !(out = img_open(&oa)))
        goto out;
    if (!ok)    /* qemu-img reports this and still succeeds */
        img_error("%s: cannot skip to specified offset", da->in);
    if (dd_copy(in, out, start, end) < 0)
        goto out;
    if (vd_flush(out) < 0) {
        img_error("error while writing to output image file: %s", vd_errmsg());
        goto out;
    }
    ret = 0;
out:
    vd_close(out);
    vd_close(in);
    return ret;
}

/* vdisk-img dd [-f fmt] [-O fmt] [-U] [--image-opts] bs= count= skip= if= of= */
int img_dd(int argc, char **argv)
{
    struct dd_args da = { .out_fmt = "raw", .bs = 512 };

    if (parse_args(argc, argv, &da) < 0)
        return 1;
    return do_dd(&da);
}
