/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img measure: how much host space an image of the output format
 * needs, for a given virtual size or for converting an existing image;
 * the numbers come from the target driver's measure hook. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"

/* Parsed command line of measure. */
struct measure_args {
    const char *fmt, *out_fmt, *snapshot, *filename;
    char *options;                 /* accumulated -o */
    bool image_opts, force_share, has_size;
    uint64_t size;
    int json;
};

/* Print the result in the chosen form (JSON keys in QEMU's order). */
static void print_result(const struct measure_args *m, const struct vd_measure_info *mi)
{
    vd_json *o;

    if (!m->json) {
        printf("required size: %" PRIu64 "\n", mi->required);
        printf("fully allocated size: %" PRIu64 "\n", mi->fully_allocated);
        if (mi->has_bitmaps)
            printf("bitmaps size: %" PRIu64 "\n", mi->bitmaps);
        return;
    }
    if (!(o = vd_json_new_object()))
        return;
    if (mi->has_bitmaps)
        vd_json_set_uint(o, "bitmaps", mi->bitmaps);
    vd_json_set_uint(o, "required", mi->required);
    vd_json_set_uint(o, "fully-allocated", mi->fully_allocated);
    vd_json_print(o, stdout);
    putchar('\n');
    vd_json_free(o);
}

/* Parse -o into a dict and check it against the target's options. */
static vd_opts *target_opts(const struct measure_args *m, const struct vd_driver *d)
{
    struct vd_opt_desc *table = img_create_opt_table(d, vd_driver_find("file"));
    vd_opts *o = vd_opts_new();
    int r = (table && o) ? 0 : -1;

    if (r == 0 && m->options && (r = vd_opts_parse(o, m->options, NULL)) == 0)
        r = vd_opts_validate(o, table, vd_driver_name(d));
    free(table);
    if (r < 0) {
        img_error("%s", vd_errmsg());
        img_error("Invalid options for file format '%s'", m->out_fmt);
        vd_opts_free(o);
        return NULL;
    }
    return o;
}

/* Open the source image; NULL (error printed) on failure. */
static vd_node *open_source(const struct measure_args *m)
{
    struct img_open_args a = {
        .name = m->filename, .fmt = m->fmt, .image_opts = m->image_opts,
        .force_share = m->force_share,
    };
    vd_node *n = img_open(&a);

    if (n && m->snapshot && vd_snapshot_load_param(n, m->snapshot) < 0) {
        img_error("Failed to load snapshot: %s", vd_errmsg());
        vd_close(n);
        return NULL;
    }
    return n;
}

/* Measure with the target driver d; 0 or -1. */
static int do_measure(const struct measure_args *m, const struct vd_driver *d)
{
    struct vd_measure_info mi = { 0 };
    vd_node *src = NULL;
    vd_opts *opts;
    int r = -1;

    if (m->filename && !(src = open_source(m)))
        return -1;
    if (!(opts = target_opts(m, d)))
        goto out;
    if (!d->measure) {
        img_error("Block driver '%s' does not support size measurement", m->out_fmt);
        goto out;
    }
    vd_error_clear();
    if (d->measure(opts, src, m->size, &mi) < 0) {
        img_error("%s", vd_errmsg());
        goto out;
    }
    print_result(m, &mi);
    r = 0;
out:
    vd_opts_free(opts);
    vd_close(src);
    return r;
}

/* Check the combination of --size and file name as qemu-img does. */
static int check_args(struct measure_args *m, int argc, char **argv)
{
    if (argc - optind > 1) {
        img_error("At most one filename argument is allowed.");
        return -1;
    }
    m->filename = argc - optind == 1 ? argv[optind] : NULL;
    if (!m->filename && (m->image_opts || m->fmt || m->snapshot)) {
        img_error("--image-opts, -f, and -l require a filename argument.");
        return -1;
    }
    if (m->filename && m->has_size) {
        img_error("--size N cannot be used together with a filename.");
        return -1;
    }
    if (!m->filename && !m->has_size) {
        img_error("Either --size N or one filename must be specified.");
        return -1;
    }
    return img_check_image_opts_fmt(m->image_opts, m->fmt);
}

/* Handle one option of measure; -1 on error (printed). */
static int parse_opt(struct measure_args *m, int c, char **argv)
{
    switch (c) {
    case 'h': img_help();
    case 'f': m->fmt = optarg; return 0;
    case 'O': m->out_fmt = optarg; return 0;
    case 'l': m->snapshot = optarg; return 0;
    case 'U': m->force_share = true; return 0;
    case 'I': m->image_opts = true; return 0;
    case 'j': return (m->json = img_parse_output(optarg)) < 0 ? -1 : 0;
    case 'b': return 0;            /* --object: no object types yet */
    case 'o':
        return img_opts_append(&m->options, optarg);
    case 's':
        m->has_size = true;
        return img_parse_size_arg(optarg, &m->size);
    default:
        img_getopt_error(c, argv);
        return -1;
    }
}

/* vdisk-img measure [options] [--size N | filename] */
int img_measure(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, 'I' },
        { "object", required_argument, NULL, 'b' },
        { "output", required_argument, NULL, 'j' },
        { "size", required_argument, NULL, 's' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    struct measure_args m = { .out_fmt = "raw" };
    const struct vd_driver *d;
    int c, r = 1;

    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", longopts, NULL)) != -1)
        if (parse_opt(&m, c, argv) < 0)
            goto out;
    if (check_args(&m, argc, argv) < 0)
        goto out;
    if (!(d = vd_driver_find(m.out_fmt))) {
        img_error("Unknown file format '%s'", m.out_fmt);
        goto out;
    }
    r = do_measure(&m, d) < 0 ? 1 : 0;
out:
    free(m.options);
    return r;
}
