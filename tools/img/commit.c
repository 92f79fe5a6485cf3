/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img commit: copy what an overlay (and, with -b, the images between
 * it and the base) allocates into the base through the copy engine, then
 * empty the overlay unless -d or -b; qemu-img commit's options, checks in
 * its order, messages and exit codes. */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "chain.h"
#include "qprogress.h"

/* Parsed command line of commit. */
struct commit_args {
    const char *fmt, *cache, *base;
    bool image_opts, progress, quiet, drop;
    uint64_t rate;
};

/* Parse commit's options; -1 on error (printed). */
static int commit_parse(int argc, char **argv, struct commit_args *ca)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'j' },
        { "image-opts", no_argument, NULL, 'I' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'f': ca->fmt = optarg; break;
        case 't': ca->cache = optarg; break;
        case 'b': ca->base = optarg; ca->drop = true; break;   /* -b implies -d */
        case 'd': ca->drop = true; break;
        case 'p': ca->progress = true; break;
        case 'q': ca->quiet = true; break;
        case 'I': ca->image_opts = true; break;
        case 'j': break;
        case 'r':
            if (img_cvtnum("rate limit", optarg, &ca->rate) < 0)
                return -1;
            break;
        default: img_getopt_error(c, argv); return -1;
        }
    }
    if (ca->quiet)
        ca->progress = false;
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return -1;
    }
    if (img_check_image_opts_fmt(ca->image_opts, ca->fmt) < 0 ||
        img_check_cache(ca->cache, false) < 0)
        return -1;
    return 0;
}

/* Canonical path of name, relative names taken from the directory of
 * image (NULL when it does not resolve). */
static char *resolve_in_dir(const char *image, const char *name)
{
    char *copy, *joined = NULL, *out;

    if (name[0] == '/' || !image || !strchr(image, '/'))
        return realpath(name, NULL);
    if (!(copy = strdup(image)))
        return NULL;
    if (asprintf(&joined, "%s/%s", dirname(copy), name) < 0)
        joined = NULL;
    free(copy);
    out = joined ? realpath(joined, NULL) : NULL;
    free(joined);
    return out;
}

/* Does the backing file b of n answer to the name given with -b?  The name
 * as stored, or the same file once both are resolved (qemu-img's rule:
 * relative names are taken from the directory of n). */
static bool backing_matches(vd_node *n, vd_node *b, const char *name)
{
    const char *stored = vd_node_backing_name(n);
    char *want, *have;
    bool same;

    if (stored && !strcmp(stored, name))
        return true;
    want = resolve_in_dir(vd_node_filename(n), name);
    have = realpath(vd_node_filename(b), NULL);
    same = want && have && !strcmp(want, have);
    free(want);
    free(have);
    return same;
}

/* See chain.h. */
vd_node *img_find_backing(vd_node *top, const char *name)
{
    for (vd_node *n = top; vd_node_backing(n); n = vd_node_backing(n))
        if (backing_matches(n, vd_node_backing(n), name))
            return vd_node_backing(n);
    return NULL;
}

/* The node of the chain below top named by -b, or the immediate backing
 * file; NULL after printing qemu-img's error. */
static vd_node *find_base(vd_node *top, const struct commit_args *ca, const char *name)
{
    vd_node *b;

    if (!ca->base) {
        if (!vd_node_backing(top))
            img_error("Image does not have a backing file");
        return vd_node_backing(top);
    }
    if (!(b = img_find_backing(top, ca->base)))
        img_error("Did not find '%s' in the backing chain of '%s'", ca->base, name);
    return b;
}

/* The key secrets the user gave the base (backing.[...]key-secret or
 * backing.[...]encrypt.key-secret in --image-opts or json:, one
 * "backing." per level below top) into o, for its reopening. */
static void base_key_opts(const char *name, bool image_opts, vd_node *top, vd_node *base,
                          vd_opts *o)
{
    static const char *const keys[] = { "encrypt.key-secret", "key-secret" };
    vd_opts *t = vd_opts_new();
    char key[256] = "";
    int r = -1;

    if (!t)
        return;
    if (image_opts)
        r = vd_opts_parse(t, name, NULL);
    else if (!strncmp(name, "json:", 5))
        r = vd_opts_parse_json(t, name + 5);
    for (vd_node *n = top; r >= 0 && n && n != base; n = vd_node_backing(n))
        if (strlen(key) + 9 >= sizeof(key))
            r = -1;
        else
            strcat(key, "backing.");
    for (size_t i = 0; r >= 0 && i < 2; i++) {
        size_t l = strlen(key);
        const char *v;
        snprintf(key + l, sizeof(key) - l, "%s", keys[i]);
        if ((v = vd_opts_get(t, key)))
            vd_opts_set(o, keys[i], v);
        key[l] = 0;
    }
    vd_opts_free(t);
}

/* Replace the read-only base in the chain by the same image opened
 * read-write (resizable when it must grow), with the key secrets the
 * user gave it; NULL after printing. */
static vd_node *reopen_base_rw(vd_node *base, const struct commit_args *ca, bool grow,
                               const char *top_name, vd_node *top)
{
    vd_node *parent = base->parent, *rw = NULL;
    char *name = strdup(vd_node_filename(base));
    char *fmt = strdup(vd_node_format(base));
    bool probed = base->probed_raw;
    vd_opts *o = vd_opts_new();
    int r;

    if (!name || !fmt || !o) {
        img_error("out of memory");
        goto out;
    }
    if (ca->cache)
        img_cache_mode_opts(ca->cache, o);
    base_key_opts(top_name, ca->image_opts, top, base, o);
    parent->backing = NULL;
    vd_close(base);
    r = vd_open(&rw, name, fmt, o, VD_O_RDWR | (grow ? VD_O_RESIZE : 0));
    o = NULL;
    if (r < 0) {
        img_error("%s", vd_errmsg());
        goto out;
    }
    rw->probed_raw = probed;
    rw->parent = parent;
    parent->backing = rw;
out:
    vd_opts_free(o);
    free(name);
    free(fmt);
    return rw;
}

/* The copy engine's progress as qemu-img's block job reports it. */
static void commit_progress(void *opaque, uint64_t done, uint64_t total)
{
    qprogress_print(opaque, total ? (float)done / (float)total * 100.f : 100.f, 0);
}

/* Copy what lies above base into it; -1 (printed). */
static int commit_copy(vd_node *top, vd_node *base, const struct commit_args *ca,
                       struct qprogress *qp)
{
    struct vd_copy_params p = {
        .src = &top, .nsrc = 1, .dst = base, .base = base,
        .rate_limit = ca->rate, .progress = commit_progress, .opaque = qp,
    };

    vd_error_clear();
    if (vd_copy(&p) < 0 || vd_flush(base) < 0) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    return 0;
}

/* Everything after opening the image; -1 (printed). */
static int commit_run(vd_node *top, const struct commit_args *ca, const char *name,
                      struct qprogress *qp)
{
    vd_node *base = find_base(top, ca, name);
    int64_t tlen = vd_getlength(top), blen;

    if (!base)
        return -1;
    blen = vd_getlength(base);
    if (!(base = reopen_base_rw(base, ca, blen < tlen, name, top)))
        return -1;
    if (blen < tlen && vd_truncate(base, (uint64_t)tlen, false, VD_PREALLOC_OFF) < 0) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    if (commit_copy(top, base, ca, qp) < 0)
        return -1;
    qprogress_print(qp, 100.f, 0);
    /* As qemu-img: a format that cannot be emptied is left as it is. */
    if (!ca->drop && vd_make_empty(top) < 0 && top->drv->make_empty) {
        img_error("%s", vd_errmsg());
        return -1;
    }
    return 0;
}

/* vdisk-img commit [options] filename */
int img_commit(int argc, char **argv)
{
    struct commit_args ca = { 0 };
    struct img_open_args a = { 0 };
    struct qprogress qp;
    vd_node *top;
    int r;

    if (commit_parse(argc, argv, &ca) < 0)
        return 1;
    a = (struct img_open_args){ .name = argv[optind], .fmt = ca.fmt,
        .image_opts = ca.image_opts, .writable = true, .cache = ca.cache,
        .quiet = ca.quiet };
    if (!(top = img_open(&a)))
        return 1;
    qprogress_init(&qp, ca.progress, 1.f);
    qprogress_print(&qp, 0.f, 100);
    r = commit_run(top, &ca, argv[optind], &qp);
    qprogress_end(&qp);
    vd_close(top);
    if (r < 0)
        return 1;
    if (!ca.quiet)
        printf("Image committed.\n");
    return 0;
}
