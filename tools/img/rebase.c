/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img rebase: point an image at a new backing file.  Safe mode first
 * copies into the image every sector where the old backing chain and the
 * new one read differently (sectors the image allocates itself are left
 * alone), so that what the guest sees does not change; -u only rewrites
 * the name.  qemu-img rebase's options, checks in its order, messages, exit
 * codes and -p steps; -c (compress what is copied) is an extension. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "chain.h"
#include "qprogress.h"
#include "util/checked.h"

#define REBASE_BUF (2u << 20)          /* bytes compared per step (qemu-img's) */
#define REBASE_SECTOR 512u             /* granularity of the comparison */

/* Parsed command line of rebase. */
struct rebase_args {
    const char *fmt, *backing, *backing_fmt, *cache, *src_cache;
    bool image_opts, force_share, unsafe, progress, quiet, compress;
};

/* A running safe rebase. */
struct rebase_ctx {
    const struct rebase_args *ra;
    vd_node *top, *old, *new_b;    /* new_b: opened here unless prefix */
    vd_node *prefix;               /* the new backing, found in the old chain */
    uint64_t size, old_size, new_size, cs;
    uint8_t *buf_old, *buf_new, *cbuf;
    int64_t last_cluster;          /* -c: the cluster written last */
    struct qprogress qp;
};

/* Parse rebase's options; -1 on error (printed). */
static int rebase_parse(int argc, char **argv, struct rebase_args *ra)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'j' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qUc", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'f': ra->fmt = optarg; break;
        case 'F': ra->backing_fmt = optarg; break;
        case 'b': ra->backing = optarg; break;
        case 'u': ra->unsafe = true; break;
        case 'p': ra->progress = true; break;
        case 't': ra->cache = optarg; break;
        case 'T': ra->src_cache = optarg; break;
        case 'q': ra->quiet = true; break;
        case 'U': ra->force_share = true; break;
        case 'c': ra->compress = true; break;
        case 'I': ra->image_opts = true; break;
        case 'j': break;
        default: img_getopt_error(c, argv); return -1;
        }
    }
    if (ra->quiet)
        ra->progress = false;
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return -1;
    }
    if (!ra->unsafe && !ra->backing) {
        img_usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
        return -1;
    }
    return 0;
}

/* The backing name as a path: relative names are relative to the
 * directory of the image (QEMU's rule).  Caller frees; NULL if no memory. */
static char *backing_path(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    const char *colon = strchr(backing, ':'), *bslash = strchr(backing, '/');
    char *s;

    if (backing[0] == '/' || !slash || (colon && (!bslash || colon < bslash)))
        return strdup(backing);
    if (asprintf(&s, "%.*s%s", (int)(slash - image + 1), image, backing) < 0)
        return NULL;
    return s;
}

/* Open the new backing file read-only (or find it in the old chain);
 * -1 (printed). */
static int open_new_backing(struct rebase_ctx *rc)
{
    const struct rebase_args *ra = rc->ra;
    char *path = backing_path(vd_node_filename(rc->top), ra->backing);
    vd_opts *o = vd_opts_new();
    int flags = ra->force_share ? VD_O_FORCE_SHARE : 0, r = -1;

    if (!path || !o) {
        img_error("Could not open new backing file '%s': %s", ra->backing, strerror(ENOMEM));
        goto out;
    }
    if ((rc->prefix = img_find_backing(rc->top, path))) {
        r = 0;
        goto out;
    }
    if (ra->src_cache)
        img_cache_mode_opts(ra->src_cache, o);
    r = vd_open(&rc->new_b, path, ra->backing_fmt, o, flags);
    o = NULL;
    if (r < 0)
        img_error("Could not open new backing file '%s': %s", ra->backing, vd_errmsg());
out:
    vd_opts_free(o);
    free(path);
    return r < 0 ? -1 : 0;
}

/* Length of the run from off (at most len) that node n allocates itself
 * (*alloc) or leaves to its backing chain (whatever the data reads as);
 * 0 when off lies past its end.  <0 on error. */
static int layer_allocation(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            bool *alloc)
{
    uint64_t done = 0;

    while (done < len) {
        uint64_t p = 0;
        int r = vd_block_status(n, off + done, len - done, &p, NULL, NULL);
        if (r < 0)
            return r;
        if (p == 0)
            break;
        if (done == 0)
            *alloc = r & VD_BS_ALLOCATED;
        else if (*alloc != !!(r & VD_BS_ALLOCATED))
            break;
        done += p;
    }
    *pnum = done;
    if (!done)
        *alloc = false;
    return 0;
}

/* Does a layer from `from` down to (not including) stop allocate off?
 * *pnum: how far that answer holds (at most len).  <0 on error. */
static int allocated_above(vd_node *from, vd_node *stop, uint64_t off, uint64_t len,
                           uint64_t *pnum, bool *alloc)
{
    *alloc = false;
    *pnum = len;
    for (vd_node *n = from; n && n != stop; n = vd_node_backing(n)) {
        uint64_t p = 0;
        bool a;
        int r = layer_allocation(n, off, len, &p, &a);
        if (r < 0)
            return r;
        if (p == 0)                /* beyond a shorter layer */
            continue;
        if (a) {
            *alloc = true;
            *pnum = VD_MIN(p, len);
            return 0;
        }
        len = VD_MIN(len, p);
        *pnum = len;
    }
    return 0;
}

/* Read n bytes at off of a backing file of length size into buf (zeroes
 * past its end or when there is none); *n may shrink to the end of the
 * file, as qemu-img does.  *zero: nothing was read.  <0 on error. */
static int read_side(vd_node *b, uint64_t size, uint64_t off, uint64_t *n, uint8_t *buf,
                     bool *zero)
{
    *zero = !b || off >= size;
    if (*zero) {
        memset(buf, 0, *n);
        return 0;
    }
    if (off + *n > size)
        *n = size - off;
    return vd_pread(b, off, *n, buf, 0);
}

/* Are the first bytes of a and b different?  *pnum: the length of the run
 * of 512-byte sectors that are all equal or all different. */
static bool sectors_differ(const uint8_t *a, const uint8_t *b, uint64_t len, uint64_t *pnum)
{
    uint64_t i = VD_MIN(len, (uint64_t)REBASE_SECTOR);
    bool diff = memcmp(a, b, i) != 0;

    while (i < len) {
        uint64_t l = VD_MIN(len - i, (uint64_t)REBASE_SECTOR);
        if ((memcmp(a + i, b + i, l) != 0) != diff)
            break;
        i += l;
    }
    *pnum = i;
    return diff;
}

/* -c: write the clusters under [off, off+len) compressed, each once, with
 * what the image shows there now (the old chain's data). */
static int write_compressed(struct rebase_ctx *rc, uint64_t off, uint64_t len)
{
    for (uint64_t c = off / rc->cs; c <= (off + len - 1) / rc->cs; c++) {
        uint64_t coff = c * rc->cs, l = VD_MIN(rc->cs, rc->size - coff);
        int r;
        if ((int64_t)c == rc->last_cluster)
            continue;
        rc->last_cluster = (int64_t)c;
        if ((r = vd_pread(rc->top, coff, l, rc->cbuf, 0)) < 0 ||
            (r = vd_pwrite_compressed(rc->top, coff, l, rc->cbuf)) < 0)
            return r;
    }
    return 0;
}

/* Write the differing run [off, off+len) of the old data into the image. */
static int write_diff(struct rebase_ctx *rc, uint64_t off, uint64_t len,
                      const uint8_t *data, bool old_zero)
{
    if (rc->ra->compress)
        return write_compressed(rc, off, len);
    if (old_zero)
        return vd_pwrite_zeroes(rc->top, off, len, 0);
    return vd_pwrite(rc->top, off, len, data, 0);
}

/* Compare one step of n bytes at off and write what differs; *n may
 * shrink.  -1 (printed). */
static int compare_step(struct rebase_ctx *rc, uint64_t off, uint64_t *n)
{
    bool old_zero, new_zero;
    vd_node *nb = rc->prefix ? rc->prefix : rc->new_b;
    int r;

    if ((r = read_side(rc->old, rc->old_size, off, n, rc->buf_old, &old_zero)) < 0) {
        img_error("error while reading from old backing file");
        return -1;
    }
    if ((r = read_side(nb, rc->new_size, off, n, rc->buf_new, &new_zero)) < 0) {
        img_error("error while reading from new backing file");
        return -1;
    }
    for (uint64_t done = 0, p; done < *n; done += p) {
        if (!sectors_differ(rc->buf_old + done, rc->buf_new + done, *n - done, &p))
            continue;
        if ((r = write_diff(rc, off + done, p, rc->buf_old + done, old_zero)) < 0) {
            img_error("Error while writing to COW image: %s", strerror(-r));
            return -1;
        }
    }
    return 0;
}

/* Should the step at off be compared?  *n may shrink; -1 (printed). */
static int step_needed(struct rebase_ctx *rc, uint64_t off, uint64_t *n, bool *needed)
{
    bool alloc;
    uint64_t p = 0;
    int r = layer_allocation(rc->top, off, *n, &p, &alloc);

    if (r >= 0 && p)
        *n = p;

    if (r >= 0 && !alloc && rc->prefix) {
        bool above;
        r = allocated_above(rc->old, rc->prefix, off, *n, n, &above);
        alloc = !above;            /* nothing changed since the new backing */
    }
    if (r < 0) {
        img_error("error while reading image metadata: %s", strerror(-r));
        return -1;
    }
    *needed = !alloc;
    return 0;
}

/* Sizes and buffers of a safe rebase; -1 (printed). */
static int copy_setup(struct rebase_ctx *rc)
{
    vd_node *nb = rc->prefix ? rc->prefix : rc->new_b;
    int64_t cs = vd_node_cluster_size(rc->top);

    rc->size = (uint64_t)vd_getlength(rc->top);
    rc->old_size = rc->old ? (uint64_t)vd_getlength(rc->old) : 0;
    rc->new_size = nb ? (uint64_t)vd_getlength(nb) : 0;
    rc->cs = cs > 0 ? (uint64_t)cs : 65536;
    rc->last_cluster = -1;
    rc->buf_old = malloc(REBASE_BUF);
    rc->buf_new = malloc(REBASE_BUF);
    rc->cbuf = rc->ra->compress ? malloc(rc->cs) : NULL;
    if (!rc->buf_old || !rc->buf_new || (rc->ra->compress && !rc->cbuf)) {
        img_error("out of memory");
        return -1;
    }
    if (rc->ra->compress && !rc->top->drv->pwrite_compressed) {
        img_error("Compression not supported for this file format");
        return -1;
    }
    return 0;
}

/* Copy every sector where old and new backing chains differ; -1 (printed). */
static int rebase_copy(struct rebase_ctx *rc)
{
    float step;

    if (copy_setup(rc) < 0)
        return -1;
    if (!rc->size)
        return 0;
    step = (float)100 / (float)(rc->size / VD_MIN(rc->size, (uint64_t)REBASE_BUF));
    for (uint64_t off = 0, n; off < rc->size; off += n) {
        bool needed;
        n = VD_MIN((uint64_t)REBASE_BUF, rc->size - off);
        if (step_needed(rc, off, &n, &needed) < 0)
            return -1;
        if (!needed)
            continue;
        if (compare_step(rc, off, &n) < 0)
            return -1;
        qprogress_print(&rc->qp, step, 100);
    }
    return 0;
}

/* Record the new backing file; -1 (printed). */
static int rebase_change(const struct rebase_args *ra, vd_node *top)
{
    const char *b = ra->backing ? ra->backing : "";
    const char *shown = ra->backing ? ra->backing : "(null)";   /* printf's NULL */
    int r;

    if (*b && !ra->backing_fmt) {
        img_error("Could not change the backing file to '%s': backing format must "
                  "be specified", b);
        return -1;
    }
    vd_error_clear();
    r = vd_change_backing_file(top, *b ? b : NULL, *b ? ra->backing_fmt : NULL);
    if (r == -ENOSPC)
        img_error("Could not change the backing file to '%s': No space left in the "
                  "file header", shown);
    else if (r < 0)
        img_error("Could not change the backing file to '%s': %s", shown, strerror(-r));
    return r < 0 ? -1 : 0;
}

/* Everything after the command line; -1 (printed). */
static int rebase_run(struct rebase_ctx *rc, const char *name)
{
    const struct rebase_args *ra = rc->ra;
    struct img_open_args a = { .name = name, .fmt = ra->fmt, .image_opts = ra->image_opts,
        .writable = true, .no_backing = ra->unsafe, .cache = ra->cache, .quiet = ra->quiet };

    if (img_check_cache(ra->cache, false) < 0 || img_check_cache(ra->src_cache, true) < 0 ||
        img_check_image_opts_fmt(ra->image_opts, ra->fmt) < 0 || !(rc->top = img_open(&a)))
        return -1;
    if (ra->backing_fmt && !vd_driver_find(ra->backing_fmt)) {
        img_error("Invalid format name: '%s'", ra->backing_fmt);
        return -1;
    }
    if (!ra->unsafe) {
        rc->old = vd_node_backing(rc->top);
        if (*ra->backing && open_new_backing(rc) < 0)
            return -1;
        if (rebase_copy(rc) < 0)
            return -1;
    }
    qprogress_print(&rc->qp, 100, 0);
    return rebase_change(ra, rc->top);
}

/* vdisk-img rebase [options] -b backing_file [-F backing_fmt] filename */
int img_rebase(int argc, char **argv)
{
    struct rebase_args ra = { 0 };
    struct rebase_ctx rc = { .ra = &ra };
    int r;

    if (rebase_parse(argc, argv, &ra) < 0)
        return 1;
    qprogress_init(&rc.qp, ra.progress, 2.f);
    qprogress_print(&rc.qp, 0, 100);
    r = rebase_run(&rc, argv[optind]);
    qprogress_end(&rc.qp);
    free(rc.buf_old);
    free(rc.buf_new);
    free(rc.cbuf);
    vd_close(rc.new_b);
    vd_close(rc.top);
    return r < 0 ? 1 : 0;
}
