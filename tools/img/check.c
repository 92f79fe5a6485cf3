/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img check: run the format driver's consistency check (optionally
 * repairing) and report it as qemu-img does, with its exit codes: 0 clean,
 * 1 check failed, 2 corruptions, 3 leaks only, 63 no check support. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"

/* The fix argument of the driver's check hook (QEMU's BDRV_FIX_*). */
#define CHECK_FIX_LEAKS  1
#define CHECK_FIX_ERRORS 2

/* Exit code when the format has no check. */
#define CHECK_EXIT_NOTSUP 63

/* Parsed command line of check. */
struct check_args {
    const char *fmt, *cache;
    bool image_opts, force_share, quiet;
    int json, fix;
};

/* Print the report as QEMU's ImageCheck JSON (keys in QEMU's order). */
static void print_json(vd_node *n, const struct vd_check_result *r)
{
    vd_json *o = vd_json_new_object();

    if (!o)
        return;
    if (r->image_end_offset)
        vd_json_set_int(o, "image-end-offset", r->image_end_offset);
    if (r->compressed_clusters)
        vd_json_set_uint(o, "compressed-clusters", r->compressed_clusters);
    if (r->total_clusters)
        vd_json_set_uint(o, "total-clusters", r->total_clusters);
    if (r->corruptions)
        vd_json_set_int(o, "corruptions", r->corruptions);
    if (r->corruptions_fixed)
        vd_json_set_int(o, "corruptions-fixed", r->corruptions_fixed);
    vd_json_set_int(o, "check-errors", r->check_errors);
    if (r->leaks)
        vd_json_set_int(o, "leaks", r->leaks);
    if (r->leaks_fixed)
        vd_json_set_int(o, "leaks-fixed", r->leaks_fixed);
    if (r->allocated_clusters)
        vd_json_set_uint(o, "allocated-clusters", r->allocated_clusters);
    vd_json_set_str(o, "filename", vd_node_filename(n));
    vd_json_set_str(o, "format", vd_node_format(n));
    if (r->fragmented_clusters)
        vd_json_set_uint(o, "fragmented-clusters", r->fragmented_clusters);
    vd_json_print(o, stdout);
    putchar('\n');
    vd_json_free(o);
}

/* The problem summary of the human report. */
static void print_problems(const struct vd_check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
        return;
    }
    if (r->corruptions)
        printf("\n%" PRId64 " errors were found on the image.\n"
               "Data may be corrupted, or further writes to the image may "
               "corrupt it.\n", r->corruptions);
    if (r->leaks)
        printf("\n%" PRId64 " leaked clusters were found on the image.\n"
               "This means waste of disk space, but no harm to data.\n",
               r->leaks);
    if (r->check_errors)
        printf("\n%" PRId64 " internal errors have occurred during the check.\n",
               r->check_errors);
}

/* Print the report as qemu-img check's human output. */
static void print_human(const struct vd_check_result *r)
{
    print_problems(r);
    if (r->total_clusters && r->allocated_clusters) {
        double alloc = r->allocated_clusters;
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               alloc * 100.0 / (double)r->total_clusters,
               (double)r->fragmented_clusters * 100.0 / alloc,
               (double)r->compressed_clusters * 100.0 / alloc);
    }
    if (r->image_end_offset > 0)
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
}

/* Run the hook; on a repair, report it and check again as qemu-img does. */
static int run_check(const struct check_args *ca, vd_node *n,
                     struct vd_check_result *r)
{
    int64_t leaks_fixed, corruptions_fixed;
    int ret;

    memset(r, 0, sizeof(*r));
    vd_error_clear();
    ret = n->drv->check(n, r, ca->fix);
    if (ret < 0 || !(r->leaks_fixed || r->corruptions_fixed))
        return ret;
    leaks_fixed = r->leaks_fixed;
    corruptions_fixed = r->corruptions_fixed;
    if (!ca->json && !ca->quiet)
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRId64 " leaked clusters\n"
               "    %" PRId64 " corruptions\n\n"
               "Double checking the fixed image now...\n",
               leaks_fixed, corruptions_fixed);
    memset(r, 0, sizeof(*r));
    ret = n->drv->check(n, r, 0);
    r->leaks_fixed = leaks_fixed;
    r->corruptions_fixed = corruptions_fixed;
    return ret;
}

/* The exit code for a finished check (qemu-img's). */
static int exit_code(const struct vd_check_result *r)
{
    if (r->check_errors)
        return 1;
    if (r->corruptions)
        return 2;
    if (r->leaks)
        return 3;
    return 0;
}

/* Check an open image; returns the exit code. */
static int check_node(const struct check_args *ca, vd_node *n)
{
    struct vd_check_result r;
    int ret;

    if (!n->drv->check) {
        img_error("This image format does not support checks");
        return CHECK_EXIT_NOTSUP;
    }
    ret = run_check(ca, n, &r);
    if (ret == -ENOTSUP) {
        img_error("This image format does not support checks");
        return CHECK_EXIT_NOTSUP;
    }
    if (ret < 0) {
        img_error("Check failed: %s", strerror(-ret));
        return 1;
    }
    if (!ca->quiet) {
        if (ca->json)
            print_json(n, &r);
        else
            print_human(&r);
    }
    if (r.check_errors) {
        fflush(stdout);
        img_error("Check failed");
    }
    return exit_code(&r);
}

/* Handle one option of check; -1 on error (printed). */
static int parse_opt(struct check_args *ca, int c, char **argv, const char **output)
{
    switch (c) {
    case 'h': img_help();
    case 'f': ca->fmt = optarg; return 0;
    case 'T': ca->cache = optarg; return 0;
    case 'q': ca->quiet = true; return 0;
    case 'U': ca->force_share = true; return 0;
    case 'I': ca->image_opts = true; return 0;
    case 'O': *output = optarg; return 0;
    case 'b': return 0;            /* --object: no object types yet */
    case 'r':
        if (!strcmp(optarg, "leaks")) {
            ca->fix = CHECK_FIX_LEAKS;
        } else if (!strcmp(optarg, "all")) {
            ca->fix = CHECK_FIX_LEAKS | CHECK_FIX_ERRORS;
        } else {
            img_usage_error("Unknown option value for -r (expecting 'leaks' "
                            "or 'all'): %s", optarg);
            return -1;
        }
        return 0;
    default:
        img_getopt_error(c, argv);
        return -1;
    }
}

/* Parse check's command line; returns the optind of the file name or -1. */
static int parse_args(int argc, char **argv, struct check_args *ca)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, 'O' },
        { "object", required_argument, NULL, 'b' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *output = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1)
        if (parse_opt(ca, c, argv, &output) < 0)
            return -1;
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return -1;
    }
    if (output && (ca->json = img_parse_output(output)) < 0)
        return -1;
    if (img_check_cache(ca->cache, true) < 0 ||
        img_check_image_opts_fmt(ca->image_opts, ca->fmt) < 0)
        return -1;
    return optind;
}

/* vdisk-img check [options] filename */
int img_check(int argc, char **argv)
{
    struct check_args ca = { 0 };
    struct img_open_args a = { 0 };
    vd_node *n;
    int i = parse_args(argc, argv, &ca), ret;

    if (i < 0)
        return 1;
    a.name = argv[i];
    a.fmt = ca.fmt;
    a.image_opts = ca.image_opts;
    a.force_share = ca.force_share;
    a.writable = ca.fix != 0;
    a.check = true;
    a.cache = ca.cache;
    if (!(n = img_open(&a)))
        return 1;
    ret = check_node(&ca, n);
    vd_close(n);
    return ret;
}
