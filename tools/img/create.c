/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img create: make a new image with the format driver's create hook,
 * after checking the options as qemu-img does and printing its
 * "Formatting 'name', fmt=... size=..." line. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "util/size.h"

/* Parsed command line of create. */
struct create_args {
    const char *fmt, *filename, *size_arg;
    const char *backing, *backing_fmt;
    char *options;                 /* accumulated -o */
    bool quiet, unsafe;
};

/* Everything a create needs once the command line is understood. */
struct create_ctx {
    const struct create_args *ca;
    const struct vd_driver *drv;
    struct vd_opt_desc *table;     /* format + protocol create options */
    vd_opts *opts;
};

/* True when table has an option called name. */
static bool table_has(const struct vd_opt_desc *t, const char *name)
{
    for (; t && t->name; t++)
        if (!strcmp(t->name, name))
            return true;
    return false;
}

/* "-o help": print the options of the format (and the file's protocol). */
static int print_help(const struct create_args *ca)
{
    const struct vd_driver *p = NULL;

    if (!vd_driver_find(ca->fmt)) {
        img_error("Unknown file format '%s'", ca->fmt);
        return 1;
    }
    if (ca->filename && !(p = img_protocol_for(ca->filename))) {
        img_error("%s", vd_errmsg());
        return 1;
    }
    vd_error_clear();
    if (vd_driver_print_create_opts(ca->fmt, p ? vd_driver_name(p) : NULL) < 0) {
        img_error("%s", vd_errmsg());
        return 1;
    }
    return 0;
}

/* Print one value the way QEMU's option printer does. */
static void print_value(const struct vd_opt_desc *d, const char *v, bool set)
{
    uint64_t n;

    if ((d->type == VD_OPT_SIZE || d->type == VD_OPT_NUMBER) && set &&
        vd_parse_size(v, 'B', &n) == 0) {
        printf("%" PRIu64, n);
        return;
    }
    if (d->type != VD_OPT_STRING) {
        fputs(v, stdout);
        return;
    }
    for (; *v; v++) {
        if (*v == ',')
            putchar(',');
        putchar(*v);
    }
}

/* "Formatting 'name', fmt=raw size=N ...": set options and defaults in the
 * order of the merged option table. */
static void print_formatting(const struct create_ctx *c)
{
    printf("Formatting '%s', fmt=%s", c->ca->filename, c->ca->fmt);
    for (const struct vd_opt_desc *d = c->table; d->name; d++) {
        const char *v = vd_opts_get(c->opts, d->name);
        if (!v && !d->def_value)
            continue;
        printf(" %s=", d->name);
        print_value(d, v ? v : d->def_value, v != NULL);
    }
    putchar('\n');
    fflush(stdout);
}

/* Put the backing file options into the dict, refusing formats without. */
static int set_backing(struct create_ctx *c)
{
    const struct create_args *ca = c->ca;

    if (ca->backing) {
        if (!table_has(c->drv->create_opts, "backing_file")) {
            img_error("%s: Backing file not supported for file format '%s'",
                      ca->filename, ca->fmt);
            return -1;
        }
        vd_opts_set(c->opts, "backing_file", ca->backing);
    }
    if (ca->backing_fmt) {
        if (!table_has(c->drv->create_opts, "backing_fmt")) {
            img_error("%s: Backing file format not supported for file format '%s'",
                      ca->filename, ca->fmt);
            return -1;
        }
        vd_opts_set(c->opts, "backing_fmt", ca->backing_fmt);
    }
    return 0;
}

/* The backing name as the new image will resolve it: relative names are
 * taken from the image's directory (protocol names stay as they are). */
static char *full_backing_name(const char *image, const char *name)
{
    const char *slash = strrchr(image, '/'), *colon = strchr(name, ':');
    char *out;

    if (name[0] == '/' || !slash || (colon && (!strchr(name, '/') || colon < strchr(name, '/'))))
        return strdup(name);
    if (asprintf(&out, "%.*s/%s", (int)(slash - image), image, name) < 0)
        return NULL;
    return out;
}

/* Open the backing file as qemu-img create does (its whole chain, shared,
 * with -F's format or probed): it must open and -F must be given; without
 * a size, the image takes the backing file's.  -1 (printed) on error. */
static int open_backing(struct create_ctx *c, const char *backing, const char *bfmt)
{
    const char *name = c->ca->filename;
    char *full = full_backing_name(name, backing), buf[32];
    vd_node *n = NULL;
    int64_t len = 0;
    int r;

    if (!full) {
        img_error("%s: out of memory", name);
        return -1;
    }
    vd_error_clear();
    r = vd_open(&n, full, bfmt, NULL, VD_O_FORCE_SHARE | VD_O_NO_IO);   /* no key needed */
    free(full);
    if (r < 0 || (len = vd_getlength(n)) < 0) {
        fprintf(stderr, "%s: %s: %s\nCould not open backing image.\n", IMG_PROG, name,
                vd_errmsg());
        vd_close(n);
        return -1;
    }
    if (!bfmt) {
        fprintf(stderr, "%s: %s: Backing file specified without backing format\n"
                "Detected format of %s.", IMG_PROG, name, vd_node_format(n));
        vd_close(n);
        return -1;
    }
    vd_close(n);
    if (vd_opts_has(c->opts, "size"))
        return 0;
    snprintf(buf, sizeof(buf), "%" PRId64, len);
    return vd_opts_set(c->opts, "size", buf);
}

/* qemu-img's checks of the backing file: not the image itself, not empty,
 * opened unless -u (and -F is needed either way).  -1 (printed) on error. */
static int check_backing(struct create_ctx *c)
{
    const char *name = c->ca->filename, *b = vd_opts_get(c->opts, "backing_file");
    const char *bf = vd_opts_get(c->opts, "backing_fmt");

    if (!b)
        return 0;
    if (!strcmp(b, name)) {
        img_error("%s: Error: Trying to create an image with the same filename as the "
                  "backing file", name);
        return -1;
    }
    if (!*b) {
        img_error("%s: Expected backing file name, got empty string", name);
        return -1;
    }
    if (!c->ca->unsafe)
        return open_backing(c, b, bf);
    if (!bf) {
        img_error("%s: Backing file specified without backing format", name);
        return -1;
    }
    return 0;
}

/* Settle the "size" option: argument or -o size= (the backing file's
 * comes later, in check_backing). */
static int set_size(struct create_ctx *c)
{
    const struct create_args *ca = c->ca;
    uint64_t size;
    char buf[32];

    if (ca->size_arg) {
        if (vd_opts_has(c->opts, "size")) {
            img_error("%s: The image size must be specified only once", ca->filename);
            return -1;
        }
        if (img_parse_size_arg(ca->size_arg, &size) < 0)
            return -1;
        snprintf(buf, sizeof(buf), "%" PRIu64, size);
        return vd_opts_set(c->opts, "size", buf);
    }
    return 0;
}

/* Without any size once the backing file is settled: qemu-img's error. */
static int need_size(struct create_ctx *c)
{
    if (vd_opts_has(c->opts, "size"))
        return 0;
    img_error("%s: Image creation needs a size parameter", c->ca->filename);
    return -1;
}

/* Parse and check -o against the merged table; -1 (printed) on error. */
static int parse_options(struct create_ctx *c)
{
    const struct create_args *ca = c->ca;

    vd_error_clear();
    if (ca->options && vd_opts_parse(c->opts, ca->options, NULL) < 0) {
        img_error("%s: %s", ca->filename, vd_errmsg());
        return -1;
    }
    if (vd_opts_validate(c->opts, c->table, ca->fmt) < 0) {
        img_error("%s: %s", ca->filename, vd_errmsg());
        return -1;
    }
    return 0;
}

/* Create the image; returns the exit code. */
static int do_create(const struct create_args *ca)
{
    struct create_ctx c = { .ca = ca };
    int ret = 1;

    if (!(c.drv = vd_driver_find(ca->fmt))) {
        img_error("%s: Unknown file format '%s'", ca->filename, ca->fmt);
        return 1;
    }
    if (!vd_driver_can_create(c.drv)) {
        img_error("%s: Format driver '%s' does not support image creation",
                  ca->filename, ca->fmt);
        return 1;
    }
    const struct vd_driver *proto = img_protocol_for(ca->filename);
    if (!proto) {
        img_error("%s: %s", ca->filename, vd_errmsg());
        return 1;
    }
    /* A protocol that cannot write (http, ftp, ...) is refused first, as
     * qemu-img does. */
    if (proto && !proto->create && !proto->pwrite) {
        img_error("%s: Protocol driver '%s' does not support image creation",
                  ca->filename, proto->name);
        return 1;
    }
    c.table = img_create_opt_table(c.drv, proto);
    c.opts = vd_opts_new();
    if (!c.table || !c.opts) {
        img_error("%s: out of memory", ca->filename);
        goto out;
    }
    if (parse_options(&c) < 0 || set_backing(&c) < 0 || set_size(&c) < 0 ||
        check_backing(&c) < 0 || need_size(&c) < 0)
        goto out;
    if (!ca->quiet)
        print_formatting(&c);
    vd_error_clear();
    int r = vd_create(ca->fmt, ca->filename, c.opts);
    if (r == -EFBIG) {
        img_error("%s: The image size is too large for file format '%s'",
                  ca->filename, ca->fmt);
        goto out;
    }
    if (r < 0) {
        img_error("%s: %s", ca->filename, vd_errmsg());
        goto out;
    }
    ret = 0;
out:
    vd_opts_free(c.opts);
    free(c.table);
    return ret;
}

/* Parse create's options; -1 on error (printed). */
static int parse_args(int argc, char **argv, struct create_args *ca)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'F': ca->backing_fmt = optarg; break;
        case 'b': ca->backing = optarg; break;
        case 'f': ca->fmt = optarg; break;
        case 'q': ca->quiet = true; break;
        case 'u': ca->unsafe = true; break;
        case 'j': break;        /* --object: no object types yet */
        case 'o':
            if (img_opts_append(&ca->options, optarg) < 0)
                return -1;
            break;
        default:
            img_getopt_error(c, argv);
            return -1;
        }
    }
    return 0;
}

/* Take the file name and size arguments; -1 on a usage error (printed). */
static int take_operands(int argc, char **argv, struct create_args *ca)
{
    if (optind < argc)
        ca->filename = argv[optind++];
    if (ca->options && vd_opts_is_help(ca->options))
        return 0;
    if (!ca->filename) {
        img_usage_error("Expecting image file name");
        return -1;
    }
    if (optind < argc) {
        uint64_t size;
        ca->size_arg = argv[optind++];
        if (img_parse_size_arg(ca->size_arg, &size) < 0)
            return -1;
    }
    if (optind != argc) {
        img_usage_error("Unexpected argument: %s", argv[optind]);
        return -1;
    }
    return 0;
}

/* vdisk-img create [options] filename [size] */
int img_create(int argc, char **argv)
{
    struct create_args ca = { .fmt = "raw" };
    int ret = 1;

    if (parse_args(argc, argv, &ca) < 0 || take_operands(argc, argv, &ca) < 0)
        goto out;
    if (ca.options && vd_opts_is_help(ca.options))
        ret = print_help(&ca);
    else
        ret = do_create(&ca);
out:
    free(ca.options);
    return ret;
}
