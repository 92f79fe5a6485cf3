/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img convert: copy one or more images (concatenated) into a new or
 * existing target through the copy engine, with qemu-img convert's options,
 * checks in the same order, messages and exit codes. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "util/checked.h"

#define CONVERT_MAX_WORKERS 16

/* In dd.c: refuse a "driver:" target whose driver cannot create images. */
int img_check_protocol_create(const char *name);
#define CONVERT_MAX_SPARSE (16u << 20)

/* Parsed command line of convert. */
struct convert_args {
    const char *fmt, *out_fmt, *cache, *src_cache;
    const char *backing, *backing_fmt, *snapshot;
    char *options;                  /* accumulated -o */
    bool compress, progress, quiet, no_create, out_of_order, force_share;
    bool image_opts, target_image_opts, target_is_zero, salvage;
    bool bitmaps, skip_broken_bitmaps, copy_range, sparse_given;
    int workers;                    /* -m; 0: the copy engine chooses */
    uint64_t min_sparse, rate;
    char **srcs;                    /* source names (argv slice) */
    int nsrc;
    const char *out;                /* target name, NULL if none given */
};

/* What a running convert holds. */
struct convert_ctx {
    const struct convert_args *ca;
    vd_node **src;
    int nopen;
    uint64_t total;
    vd_node *dst;
};

/* -m: an integer as strtol(base 0) reads it, 1..16. */
static int parse_workers(const char *s, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 0);
    if (errno || end == s || *end || v < 1 || v > CONVERT_MAX_WORKERS) {
        img_error("Invalid number of coroutines. Allowed number of coroutines "
                  "is between 1 and %d", CONVERT_MAX_WORKERS);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* -S: a size, a multiple of 512 up to 16 MiB (0 turns detection off). */
static int parse_sparse(const char *s, uint64_t *out)
{
    uint64_t v;

    if (img_cvtnum("buffer size for sparse output", s, &v) < 0)
        return -1;
    if (v % 512 || v > CONVERT_MAX_SPARSE) {
        img_error("Invalid buffer size for sparse output specified. Valid sizes "
                  "are multiples of 512 up to %u. Select 0 to disable sparse "
                  "detection (fully allocates output).", CONVERT_MAX_SPARSE);
        return -1;
    }
    *out = v;
    return 0;
}

/* -l: "snapshot.id=..,snapshot.name=.." or a bare id/name; checks keys. */
static int check_snapshot_param(const char *s)
{
    vd_opts *o;
    int r = 0;

    if (strncmp(s, "snapshot.", 9))
        return 0;
    if (!(o = vd_opts_new()))
        return -1;
    if (vd_opts_parse(o, s, NULL) < 0) {
        img_error("%s", vd_errmsg());
        r = -1;
    }
    for (size_t i = 0; r == 0 && i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        if (strcmp(k, "snapshot.id") && strcmp(k, "snapshot.name")) {
            img_error("Invalid parameter '%s'", k);
            r = -1;
        }
    }
    vd_opts_free(o);
    if (r < 0)
        img_error("Failed in parsing snapshot param '%s'", s);
    return r;
}

/* Long options of convert; values above 255 name the long-only ones. */
enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_TARGET_IMAGE_OPTS, OPT_SALVAGE,
       OPT_TARGET_IS_ZERO, OPT_BITMAPS, OPT_SKIP_BROKEN };

/* Handle one option letter; -1 on error (printed). */
static int convert_option(struct convert_args *ca, int c, char **argv)
{
    switch (c) {
    case 'h': img_help();
    case 'f': ca->fmt = optarg; break;
    case 'O': ca->out_fmt = optarg; break;
    case 'B': ca->backing = optarg; break;
    case 'F': ca->backing_fmt = optarg; break;
    case 'C': ca->copy_range = true; break;
    case 'c': ca->compress = true; break;
    case 'o': return img_opts_append(&ca->options, optarg);
    case 'l': ca->snapshot = optarg; return check_snapshot_param(optarg);
    case 'S': ca->sparse_given = true; return parse_sparse(optarg, &ca->min_sparse);
    case 'p': ca->progress = true; break;
    case 't': ca->cache = optarg; break;
    case 'T': ca->src_cache = optarg; break;
    case 'q': ca->quiet = true; break;
    case 'n': ca->no_create = true; break;
    case 'm': return parse_workers(optarg, &ca->workers);
    case 'W': ca->out_of_order = true; break;
    case 'U': ca->force_share = true; break;
    case 'r': return img_cvtnum("rate limit", optarg, &ca->rate);
    case OPT_OBJECT: break;              /* --object: no object types yet */
    case OPT_IMAGE_OPTS: ca->image_opts = true; break;
    case OPT_TARGET_IMAGE_OPTS: ca->target_image_opts = true; break;
    case OPT_SALVAGE: ca->salvage = true; break;
    case OPT_TARGET_IS_ZERO: ca->target_is_zero = true; break;
    case OPT_BITMAPS: ca->bitmaps = true; break;
    case OPT_SKIP_BROKEN: ca->skip_broken_bitmaps = true; break;
    default:
        img_getopt_error(c, argv);
        return -1;
    }
    return 0;
}

/* Parse convert's options; -1 on error (printed). */
static int parse_args(int argc, char **argv, struct convert_args *ca)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
        { "salvage", no_argument, NULL, OPT_SALVAGE },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:",
                            longopts, NULL)) != -1)
        if (convert_option(ca, c, argv) < 0)
            return -1;
    ca->nsrc = argc - optind - 1;
    ca->srcs = argv + optind;
    ca->out = ca->nsrc >= 1 ? argv[argc - 1] : NULL;
    if (!ca->out_fmt && !ca->target_image_opts)
        ca->out_fmt = "raw";
    return 0;
}

/* The checks qemu-img makes between parsing and opening; -1 (printed). */
static int check_combinations(const struct convert_args *ca)
{
    const char *e = NULL;

    if (ca->skip_broken_bitmaps && !ca->bitmaps)
        e = "Use of --skip-broken-bitmaps requires --bitmaps";
    else if (ca->compress && ca->copy_range)
        e = "Cannot enable copy offloading when -c is used";
    else if (ca->sparse_given && ca->copy_range)
        e = "Cannot enable copy offloading when -S is used";
    else if (ca->copy_range && ca->salvage)
        e = "Cannot use copy offloading in salvaging mode";
    else if (ca->target_image_opts && !ca->no_create)
        e = "--target-image-opts requires use of -n flag";
    else if (ca->no_create && ca->options)
        e = "-o has no effect when skipping image creation";
    else if (ca->target_is_zero && !ca->no_create)
        e = "--target-is-zero requires use of -n flag";
    if (e)
        img_error("%s", e);
    return e ? -1 : 0;
}

/* "-o help": the target format's create options (and its protocol's). */
static int print_help(const struct convert_args *ca)
{
    const struct vd_driver *p = NULL;

    if (!ca->out_fmt || !vd_driver_find(ca->out_fmt)) {
        img_error("Unknown file format '%s'", ca->out_fmt ? ca->out_fmt : "");
        return 1;
    }
    if (ca->out && !(p = img_protocol_for(ca->out))) {
        img_error("%s", vd_errmsg());
        return 1;
    }
    vd_error_clear();
    if (vd_driver_print_create_opts(ca->out_fmt, p ? vd_driver_name(p) : NULL) < 0) {
        img_error("%s", vd_errmsg());
        return 1;
    }
    return 0;
}

/* Open every source read-only and add up their sizes; -1 (printed). */
static int open_sources(struct convert_ctx *cx)
{
    const struct convert_args *ca = cx->ca;

    cx->src = calloc((size_t)ca->nsrc, sizeof(*cx->src));
    if (!cx->src) {
        img_error("out of memory");
        return -1;
    }
    for (int i = 0; i < ca->nsrc; i++) {
        struct img_open_args a = { .name = ca->srcs[i], .fmt = ca->fmt,
            .image_opts = ca->image_opts, .force_share = ca->force_share,
            .cache = ca->src_cache, .quiet = ca->quiet, .no_share = true };
        int64_t len;

        if (!(cx->src[i] = img_open(&a)))
            return -1;
        cx->nopen++;
        if ((len = vd_getlength(cx->src[i])) < 0) {
            img_error("Could not get size of %s: %s", ca->srcs[i], strerror((int)-len));
            return -1;
        }
        if (ADD_OVERFLOW(cx->total, (uint64_t)len, &cx->total)) {
            img_error("Total size of the input images is too large");
            return -1;
        }
    }
    return 0;
}

/* -l: read the source's internal snapshot; --bitmaps: the source's
 * bitmaps can be copied. */
static int check_source_features(const struct convert_ctx *cx)
{
    const struct convert_args *ca = cx->ca;

    if (ca->snapshot && ca->nsrc > 1) {
        img_error("No support for concatenating multiple snapshot");
        return -1;
    }
    if (ca->snapshot && vd_snapshot_load_param(cx->src[0], ca->snapshot) < 0) {
        img_error("Failed to load snapshot: %s", vd_errmsg());
        return -1;
    }
    if (ca->bitmaps && img_convert_check_bitmaps(cx->src[0], ca->nsrc,
                                                 ca->skip_broken_bitmaps) < 0)
        return -1;
    return 0;
}

/* Does -o encryption=on ask for encryption (as qemu-img reads it)? */
static bool encryption_on(const vd_opts *o)
{
    bool on = false;

    return vd_opts_get_bool(o, "encryption", false, &on) == 0 && on;
}

/* Can the target format take compressed writes? */
static bool compression_supported(const char *fmt)
{
    const struct vd_driver *d = vd_driver_find(fmt);

    return d && d->pwrite_compressed;
}

/* -B/-F as create options ("Backing file not supported ..."); -1 (printed). */
static int add_backing_opts(const struct convert_args *ca, const struct vd_opt_desc *t,
                            vd_opts *o)
{
    bool has_file = false, has_fmt = false;

    for (; t && t->name; t++) {
        has_file |= !strcmp(t->name, "backing_file");
        has_fmt |= !strcmp(t->name, "backing_fmt");
    }
    if (ca->backing && !has_file) {
        img_error("Backing file not supported for file format '%s'", ca->out_fmt);
        return -1;
    }
    if (ca->backing_fmt && !has_fmt) {
        img_error("Backing file format not supported for file format '%s'", ca->out_fmt);
        return -1;
    }
    if (ca->backing)
        vd_opts_set(o, "backing_file", ca->backing);
    if (ca->backing_fmt)
        vd_opts_set(o, "backing_fmt", ca->backing_fmt);
    return 0;
}

/* Build the create options of the target (-o, size, -B/-F); NULL (printed). */
static vd_opts *target_create_opts(const struct convert_ctx *cx, const struct vd_driver *drv)
{
    const struct convert_args *ca = cx->ca;
    struct vd_opt_desc *table = img_create_opt_table(drv, img_protocol_for(ca->out));
    vd_opts *o = vd_opts_new();
    char size[32];

    if (!table || !o) {
        img_error("out of memory");
        goto fail;
    }
    vd_error_clear();
    if ((ca->options && vd_opts_parse(o, ca->options, NULL) < 0) ||
        vd_opts_validate(o, table, ca->out_fmt) < 0) {
        img_error("%s", vd_errmsg());
        goto fail;
    }
    snprintf(size, sizeof(size), "%" PRIu64, cx->total);
    vd_opts_set(o, "size", size);
    if (add_backing_opts(ca, table, o) < 0)
        goto fail;
    free(table);
    return o;
fail:
    free(table);
    vd_opts_free(o);
    return NULL;
}

/* The target's backing file: -B or -o backing_file. */
static const char *target_backing(const struct convert_args *ca, const vd_opts *o)
{
    const char *b = o ? vd_opts_get(o, "backing_file") : NULL;

    return b ? b : ca->backing;
}

/* Checks on the target's backing and compression; 1 = stop with exit 0
 * (qemu-img's own quirk), -1 error (printed), 0 go on. */
static int check_target_setup(const struct convert_ctx *cx, const vd_opts *o)
{
    const struct convert_args *ca = cx->ca;
    const char *backing = target_backing(ca, o);

    if (!ca->no_create && ca->out_fmt && !vd_driver_can_create(vd_driver_find(ca->out_fmt))) {
        img_error("Format driver '%s' does not support image creation", ca->out_fmt);
        return -1;
    }
    if (ca->target_is_zero && backing) {
        /* qemu-img 7.2 prints this and exits with status 0. */
        img_error("Cannot use --target-is-zero when the destination image has "
                  "a backing file");
        return 1;
    }
    if (ca->nsrc > 1 && backing) {
        img_error("Having a backing file for the target makes no sense when "
                  "concatenating multiple input images");
        return -1;
    }
    if (o && vd_opts_get(o, "backing_file") && !vd_opts_get(o, "backing_fmt")) {
        img_error("Use of backing file requires explicit backing format");
        return -1;
    }
    if (ca->compress && (!ca->out_fmt || !compression_supported(ca->out_fmt))) {
        img_error("Compression not supported for this file format");
        return -1;
    }
    if (ca->compress && o && (vd_opts_get(o, "encrypt.format") || encryption_on(o))) {
        img_error("Compression and encryption not supported at the same time");
        return -1;
    }
    return 0;
}

/* Create the target image; -1 (printed). */
static int create_target(const struct convert_ctx *cx, vd_opts *o)
{
    const struct convert_args *ca = cx->ca;

    if (img_check_protocol_create(ca->out) < 0)
        return -1;
    vd_error_clear();
    if (vd_create(ca->out_fmt, ca->out, o) < 0) {
        img_error("%s: error while converting %s: %s", ca->out, ca->out_fmt,
                  vd_errmsg());
        return -1;
    }
    return 0;
}

/* The key secrets among the create options o, which the created target
 * needs to open (as qemu-img passes them on); NULL when none. */
static vd_opts *key_secrets(const vd_opts *o)
{
    static const char *const keys[] = { "key-secret", "encrypt.key-secret" };
    vd_opts *k = NULL;

    for (size_t i = 0; o && i < 2; i++) {
        const char *v = vd_opts_get(o, keys[i]);
        if (v && (k || (k = vd_opts_new())))
            vd_opts_set(k, keys[i], v);
    }
    return k;
}

/* Open the target for writing (o: its create options, or NULL); -1
 * (printed). */
static int open_target(struct convert_ctx *cx, const vd_opts *o)
{
    const struct convert_args *ca = cx->ca;
    vd_opts *keys = key_secrets(o);
    struct img_open_args a = { .name = ca->out, .fmt = ca->out_fmt,
        .image_opts = ca->target_image_opts, .writable = true,
        .cache = ca->cache, .quiet = ca->quiet, .target = true, .extra = keys };
    int64_t len;

    if (img_check_cache(ca->cache, false) < 0)
        return -1;
    if (ca->no_create && img_check_image_opts_fmt(a.image_opts, a.fmt) < 0)
        return -1;
    cx->dst = img_open(&a);
    vd_opts_free(keys);
    if (!cx->dst)
        return -1;
    if (ca->bitmaps && img_convert_check_target_bitmaps(cx->dst) < 0)
        return -1;
    if (ca->no_create) {
        len = vd_getlength(cx->dst);
        if (len < 0) {
            img_error("unable to get output image length: %s", strerror((int)-len));
            return -1;
        }
        if ((uint64_t)len < cx->total) {
            img_error("output file is smaller than input file");
            return -1;
        }
    }
    return 0;
}

/* Does a freshly created target read as zero everywhere? */
static bool fresh_target_zero(vd_node *n)
{
    return n->drv->has_zero_init && n->drv->has_zero_init(n);
}

/* --salvage: print each unreadable sector as a warning. */
static void salvage_warn(void *opaque, const char *msg)
{
    (void)opaque;
    img_error("warning: %s", msg);
}

/* Run the copy engine from the sources into the target; -1 (printed). */
static int run_copy(struct convert_ctx *cx, bool has_backing)
{
    const struct convert_args *ca = cx->ca;
    struct vd_copy_params p = {
        .src = cx->src, .nsrc = (size_t)ca->nsrc, .dst = cx->dst,
        .workers = ca->workers, .out_of_order = ca->out_of_order,
        .min_sparse = ca->min_sparse, .salvage = ca->salvage,
        .unallocated_only = has_backing, .rate_limit = ca->rate,
        .progress = img_progress, .warn = salvage_warn,
        .copy_offload = ca->copy_range,
    };

    if (ca->no_create)
        p.target_is_zero = ca->target_is_zero;
    else
        p.target_is_zero = !has_backing && fresh_target_zero(cx->dst);
    p.compress = ca->compress || vd_node_needs_compressed_writes(cx->dst);
    vd_error_clear();
    if (vd_copy(&p) < 0 || vd_flush(cx->dst) < 0) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    return 0;
}

/* Everything after the command-line checks; returns the exit code. */
static int do_convert(struct convert_ctx *cx)
{
    const struct convert_args *ca = cx->ca;
    const struct vd_driver *drv;
    vd_opts *o = NULL;
    int r, ret = 1;

    if (img_check_cache(ca->src_cache, true) < 0 ||
        img_check_image_opts_fmt(ca->image_opts, ca->fmt) < 0 ||
        open_sources(cx) < 0 || check_source_features(cx) < 0)
        return 1;
    drv = ca->out_fmt ? vd_driver_find(ca->out_fmt) : NULL;
    if (ca->out_fmt && !drv) {
        img_error("Unknown file format '%s'", ca->out_fmt);
        return 1;
    }
    if (!ca->no_create && !(o = target_create_opts(cx, drv)))
        return 1;
    r = check_target_setup(cx, o);
    if (r != 0) {
        vd_opts_free(o);
        return r < 0 ? 1 : 0;
    }
    if ((ca->no_create || create_target(cx, o) == 0) && open_target(cx, o) == 0 &&
        run_copy(cx, target_backing(ca, o) != NULL) == 0 &&
        (!ca->bitmaps ||
         img_convert_copy_bitmaps(cx->src[0], cx->dst, ca->skip_broken_bitmaps) == 0))
        ret = 0;
    vd_opts_free(o);
    return ret;
}

/* Close what a convert opened. */
static void convert_cleanup(struct convert_ctx *cx)
{
    for (int i = 0; i < cx->nopen; i++)
        vd_close(cx->src[i]);
    free(cx->src);
    vd_close(cx->dst);
}

/* vdisk-img convert [options] filename [filename2 [...]] output_filename */
int img_convert(int argc, char **argv)
{
    struct convert_args ca = { .workers = 0, .min_sparse = 4096, .cache = "unsafe" };
    struct convert_ctx cx = { .ca = &ca };
    int ret = 1;

    if (parse_args(argc, argv, &ca) < 0 || check_combinations(&ca) < 0)
        goto out;
    if (ca.options && vd_opts_is_help(ca.options)) {
        ret = print_help(&ca);
        goto out;
    }
    if (ca.nsrc < 1) {
        img_error("Must specify image file name");
        goto out;
    }
    img_progress_init(ca.progress && !ca.quiet);
    ret = do_convert(&cx);
    img_progress_end();
    convert_cleanup(&cx);
out:
    free(ca.options);
    return ret;
}
