/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img amend: change the format options of an existing image (qcow2:
 * compat, lazy_refcounts, refcount_bits, size, ...), with qemu-img 7.2's
 * command line, checks, messages and exit codes. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "qprogress.h"

/* Parsed command line of amend. */
struct amend_args {
    const char *fmt, *cache;
    char *options;
    bool image_opts, progress, quiet, force;
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
        case 'p': aa->progress = true; break;
        case 'q': aa->quiet = true; break;
        case 'F': aa->force = true; break;
        case 'j': break;
        default: img_getopt_error(c, argv); return -1;
        }
    }
    if (!aa->options) {
        img_usage_error("Must specify options (-o)");
        return -1;
    }
    if (aa->quiet)
        aa->progress = false;
    return 0;
}

/* "-o help" for the format named fmt; returns the exit code. */
static int amend_help(const char *fmt)
{
    const struct vd_driver *d = vd_driver_find(fmt);

    if (!d || !vd_driver_is_format(d)) {
        img_error("Unknown file format '%s'", fmt);
        return 1;
    }
    if (vd_driver_print_amend_opts(d) < 0) {
        img_error("%s", vd_errmsg());
        return 1;
    }
    return 0;
}

/* Is name an option of table? */
static bool table_has(const struct vd_opt_desc *t, const char *name)
{
    for (; t && t->name; t++)
        if (!strcmp(t->name, name))
            return true;
    return false;
}

/* Parse -o into opts against the driver's amend options; -1 (printed) on
 * an unknown or ill-typed option, with qemu-img's hint for options that
 * only create takes. */
static int amend_opts(const struct vd_driver *d, const char *str, vd_opts *opts)
{
    const struct vd_opt_desc *t = vd_driver_amend_opts(d);

    vd_error_clear();
    if (vd_opts_parse(opts, str, NULL) < 0) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        const char *k = vd_opts_key(opts, i);
        if (table_has(t, k))
            continue;
        img_error("Invalid parameter '%s'", k);
        if (table_has(d->create_opts, k))
            fprintf(stderr, "This option is only supported for image creation\n");
        return -1;
    }
    if (vd_opts_validate(opts, t, vd_driver_name(d)) < 0) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    return 0;
}

/* Progress callback of the driver: done of total work. */
static void amend_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct qprogress *p = opaque;

    qprogress_print(p, total ? (float)((double)done * 100.0 / (double)total) : 0, 0);
}

/* Print the driver's error, with qemu-img's hint where it gives one. */
static void amend_error(void)
{
    const char *m = vd_errmsg();

    img_error("%s", m);
    if (!strcmp(m, "Cannot amend the backing file"))
        fprintf(stderr, "You can use '%s rebase' instead.\n", IMG_PROG);
}

/* Amend the open image n; returns the exit code. */
static int amend_image(vd_node *n, const struct amend_args *aa)
{
    const struct vd_driver *d = vd_driver_find(vd_node_format(n));
    struct qprogress p;
    vd_opts *opts;
    int r;

    if (vd_opts_is_help(aa->options))
        return amend_help(vd_node_format(n));
    if (!vd_driver_amend_opts(d)) {
        img_error("Format driver '%s' does not support option amendment",
                  vd_node_format(n));
        return 1;
    }
    if (!(opts = vd_opts_new())) {
        img_error("out of memory");
        return 1;
    }
    if (amend_opts(d, aa->options, opts) < 0) {
        vd_opts_free(opts);
        return 1;
    }
    qprogress_init(&p, aa->progress, 1.0f);
    qprogress_print(&p, 0, 0);
    vd_error_clear();
    r = vd_amend(n, opts, aa->force, amend_progress, &p);
    if (r >= 0)
        qprogress_print(&p, 100, 0);
    qprogress_end(&p);
    vd_opts_free(opts);
    if (r < 0) {
        amend_error();
        return 1;
    }
    return 0;
}

/* vdisk-img amend [options] -o options filename */
int img_amend(int argc, char **argv)
{
    struct amend_args aa = { 0 };
    struct img_open_args oa = { .writable = true };
    vd_node *n;
    int ret = 1;

    if (amend_parse(argc, argv, &aa) < 0)
        goto out;
    if (aa.fmt && vd_opts_is_help(aa.options)) {
        ret = amend_help(aa.fmt);
        goto out;
    }
    if (optind != argc - 1) {
        img_error("Expecting one image file name");
        goto out;
    }
    if (img_check_cache(aa.cache, false) < 0 ||
        img_check_image_opts_fmt(aa.image_opts, aa.fmt) < 0)
        goto out;
    oa.name = argv[optind];
    oa.fmt = aa.fmt;
    oa.image_opts = aa.image_opts;
    oa.cache = aa.cache;
    oa.quiet = aa.quiet;
    n = img_open(&oa);
    if (n) {
        ret = amend_image(n, &aa);
        vd_close(n);
    }
out:
    free(aa.options);
    return ret;
}
