/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img compare: are two images the same to a guest?  The work is
 * vd_compare's; this file prints qemu-img compare's verdicts and maps them
 * to its exit codes (0 same, 1 differ, 2 open/usage, 3 block status, 4 read). */
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "cli.h"

enum { CMP_EXIT_SAME, CMP_EXIT_DIFFER, CMP_EXIT_OPEN, CMP_EXIT_STATUS, CMP_EXIT_READ };

/* Parsed command line of compare. */
struct compare_args {
    const char *fmt[2], *name[2], *cache;
    bool progress, quiet, strict, force_share, image_opts;
};

/* Parse compare's options; -1 on a usage error (printed, exit 1). */
static int parse_args(int argc, char **argv, struct compare_args *ca)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'f': ca->fmt[0] = optarg; break;
        case 'F': ca->fmt[1] = optarg; break;
        case 'T': ca->cache = optarg; break;
        case 'p': ca->progress = true; break;
        case 'q': ca->quiet = true; break;
        case 's': ca->strict = true; break;
        case 'U': ca->force_share = true; break;
        case OPT_OBJECT: break;          /* --object: no object types yet */
        case OPT_IMAGE_OPTS: ca->image_opts = true; break;
        default:
            img_getopt_error(c, argv);
            return -1;
        }
    }
    if (optind != argc - 2) {
        img_usage_error("Expecting two image file names");
        return -1;
    }
    ca->name[0] = argv[optind];
    ca->name[1] = argv[optind + 1];
    return 0;
}

/* Open image i of the command line; NULL (printed) on error. */
static vd_node *open_one(const struct compare_args *ca, int i)
{
    struct img_open_args a = { .name = ca->name[i], .fmt = ca->fmt[i],
        .image_opts = ca->image_opts, .force_share = ca->force_share,
        .cache = ca->cache, .quiet = ca->quiet };

    if (img_check_image_opts_fmt(ca->image_opts, ca->fmt[i]) < 0)
        return NULL;
    return img_open(&a);
}

/* A result line on stdout unless -q. */
static void say(const struct compare_args *ca, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(const struct compare_args *ca, const char *fmt, ...)
{
    va_list ap;

    if (ca->quiet)
        return;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

/* Progress of a comparison: qemu-img warns about differing sizes right
 * when the common part is done, between the progress lines. */
struct cmp_progress {
    const struct compare_args *ca;
    uint64_t minlen;
    bool size_differs, warned;
};

/* Print the size warning once (when due). */
static void size_warning(struct cmp_progress *cp)
{
    if (cp->size_differs && !cp->ca->strict && !cp->warned) {
        say(cp->ca, "Warning: Image size mismatch!\n");
        cp->warned = true;
    }
}

/* vd_progress_fn: the -p line, and the size warning at the common end. */
static void compare_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct cmp_progress *cp = opaque;

    img_progress(NULL, done, total);
    if (done >= cp->minlen && done < total)
        size_warning(cp);
}

/* Did the comparison get past the shorter image's end? */
static bool reached_tail(int r, const struct vd_compare_result *res, uint64_t minlen)
{
    if (r == 0)
        return true;
    if (r == 1)
        return res->in_tail;
    return res->offset >= minlen;
}

/* Print the verdict of vd_compare's return r; returns the exit code. */
static int report(struct cmp_progress *cp, int r, const struct vd_compare_result *res)
{
    const struct compare_args *ca = cp->ca;

    if (reached_tail(r, res, cp->minlen))
        size_warning(cp);
    if (r < 0 && res->kind == VD_CMP_ERR_STATUS) {
        img_error("Sector allocation test failed for %s", ca->name[res->node]);
        return CMP_EXIT_STATUS;
    }
    if (r < 0) {
        img_error("Error while reading offset %" PRIu64 " of %s: %s", res->offset,
                  ca->name[res->node], strerror(-r));
        return CMP_EXIT_READ;
    }
    if (r == 0) {
        say(ca, "Images are identical.\n");
        return CMP_EXIT_SAME;
    }
    if (res->kind == VD_CMP_SIZE)
        say(ca, "Strict mode: Image size mismatch!\n");
    else if (res->kind == VD_CMP_STATUS)
        say(ca, "Strict mode: Offset %" PRIu64 " block status mismatch!\n", res->offset);
    else
        say(ca, "Content mismatch at offset %" PRIu64 "!\n", res->offset);
    return CMP_EXIT_DIFFER;
}

/* Compare the two open images; returns the exit code. */
static int run_compare(const struct compare_args *ca, vd_node *a, vd_node *b)
{
    struct vd_compare_result res = { 0 };
    struct cmp_progress cp = { .ca = ca };
    struct vd_compare_params p = { .a = a, .b = b, .strict = ca->strict,
        .progress = compare_progress, .opaque = &cp, .result = &res };
    int64_t la = vd_getlength(a), lb = vd_getlength(b);
    uint64_t diff = 0;
    int r, ret;

    if (la < 0 || lb < 0) {
        img_error("Can't get size of %s: %s", ca->name[la < 0 ? 0 : 1],
                  strerror((int)-(la < 0 ? la : lb)));
        return CMP_EXIT_READ;
    }
    cp.minlen = (uint64_t)(la < lb ? la : lb);
    cp.size_differs = la != lb;
    img_progress_init(ca->progress && !ca->quiet);
    r = vd_compare(&p, &diff);
    ret = report(&cp, r, &res);
    img_progress_end();
    return ret;
}

/* vdisk-img compare [options] filename1 filename2 */
int img_compare(int argc, char **argv)
{
    struct compare_args ca = { 0 };
    vd_node *a = NULL, *b = NULL;
    int ret = CMP_EXIT_OPEN;

    if (parse_args(argc, argv, &ca) < 0)
        return 1;
    if (img_check_cache(ca.cache, true) < 0)
        return CMP_EXIT_OPEN;
    if ((a = open_one(&ca, 0)) && (b = open_one(&ca, 1)))
        ret = run_compare(&ca, a, b);
    fflush(stdout);
    vd_close(b);
    vd_close(a);
    return ret;
}
