/* SPDX-License-Identifier: BSD-3-Clause */
/* Opening images: every way of naming an image (file name, "proto:" prefix,
 * URI, json:{...}, --image-opts) becomes one option dictionary; then the
 * protocol node is opened, the format probed by score, the format node and
 * its backing chain opened. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"
#include "core/lock.h"
#include "core/untrusted.h"
#include "util/checked.h"

/* Longest backing chain followed before giving up (loops, bombs). */
#define VD_MAX_CHAIN 64

/* Options every node accepts besides its driver's table. */
static const struct vd_opt_desc common_opts[] = {
    { "driver", VD_OPT_STRING, "Driver name", NULL },
    { "node-name", VD_OPT_STRING, "Node name", NULL },
    { "read-only", VD_OPT_BOOL, "Open read-only", NULL },
    { "auto-read-only", VD_OPT_BOOL, "Fall back to read-only", NULL },
    { "force-share", VD_OPT_BOOL, "Open without locking", NULL },
    { "discard", VD_OPT_STRING, "Discard requests (ignore/unmap)", NULL },
    { "detect-zeroes", VD_OPT_STRING, "Detect zero writes (off/on/unmap)", NULL },
    { "cache.direct", VD_OPT_BOOL, "Bypass the host page cache", NULL },
    { "cache.no-flush", VD_OPT_BOOL, "Ignore flush requests", NULL },
    { "filename", VD_OPT_STRING, "File name", NULL },
    { "backing", VD_OPT_STRING, "Backing node (\"\" or null for none)", NULL },
    { NULL, 0, NULL, NULL },
};

/* Options a format node hands down to its protocol child. */
static const char *const inherited_opts[] = {
    "cache.direct", "cache.no-flush", "discard", "force-share", NULL,
};

static int open_node(vd_node **out, bool file_child, const char *name,
                     const char *fmt, vd_opts *opts, int flags, int depth);

/* The image file at each depth of the backing chain being opened by this
 * thread (entries past the current depth are stale). */
static __thread struct chain_id { dev_t dev; ino_t ino; bool set; } chain_ids[VD_MAX_CHAIN];

/* The untrusted format node whose driver open runs on this thread.  While
 * it is set, every open is that image reaching for another file (a data
 * file, an extent, a parent a driver opens itself): open_node refuses it,
 * so no format driver can forget the check. */
static _Thread_local const vd_node *untrusted_opener;

/* See internal.h. */
bool vd_untrusted_opening(const vd_node *n)
{
    return n && n == untrusted_opener;
}

/* Is key in the NULL-terminated table? */
static bool opt_in_table(const struct vd_opt_desc *t, const char *key)
{
    for (; t && t->name; t++)
        if (!strcmp(t->name, key))
            return true;
    return false;
}

/* Check that every option left in opts is one the node understands. */
static int check_leftover_opts(const vd_node *n, const vd_opts *opts)
{
    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        const char *k = vd_opts_key(opts, i);
        if (opt_in_table(common_opts, k) || opt_in_table(n->drv->open_opts, k))
            continue;
        if (n->drv->kind == VD_DRV_FORMAT)
            return vd_error(EINVAL, "Block format '%s' does not support the option '%s'",
                            n->drv->name, k);
        return vd_error(EINVAL, "Block protocol '%s' doesn't support the option '%s'",
                        n->drv->name, k);
    }
    return 0;
}

/* Allocate an empty node for driver d. */
static vd_node *node_new(const struct vd_driver *d, int flags)
{
    vd_node *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->state = calloc(1, d->state_size ? d->state_size : 1);
    if (!n->state) {
        free(n);
        return NULL;
    }
    n->drv = d;
    n->flags = flags;
    n->read_only = !(flags & VD_O_RDWR);
    n->request_alignment = 1;
    pthread_mutex_init(&n->rmw_lock, NULL);
    return n;
}

/* A format node's name: its file's, or for a file named by a json:
 * object, QEMU's json:{"driver": fmt, "file": {...}}. */
static char *format_node_name(const struct vd_driver *d, const char *file)
{
    char *out;

    if (strncmp(file, "json:{", 6))
        return strdup(file);
    if (asprintf(&out, "json:{\"driver\": \"%s\", \"file\": %s}", d->name, file + 5) < 0)
        return NULL;
    return out;
}

/* Close a node and its children. */
void vd_close(vd_node *n)
{
    if (!n)
        return;
    if (n->drv->close)
        n->drv->close(n);
    vd_close(n->backing);
    vd_close(n->file);
    pthread_mutex_destroy(&n->rmw_lock);
    free(n->filename);
    free(n->backing_name);
    free(n->backing_full_name);
    free(n->backing_format);
    free(n->state);
    free(n);
}

/* The protocol driver for name: its "proto:" prefix or URI scheme, else
 * host_device for block devices, else file.  A name with a colon before
 * any slash names a protocol, as in QEMU: one no driver provides is an
 * error (NULL), not a file name ("./a:b" is the file). */
static const struct vd_driver *protocol_for_name(const char *name)
{
    struct stat st;

    if (name[strcspn(name, ":/")] == ':')
        return vd_protocol_for_name(name);
    if (stat(name, &st) == 0 && S_ISBLK(st.st_mode) && vd_driver_find("host_device"))
        return vd_driver_find("host_device");
    return vd_driver_find("file");
}

/* Merge json:{...} options from name into opts; later explicit keys win. */
static int merge_json_name(const char *name, vd_opts *opts)
{
    vd_opts *j = vd_opts_new();
    int r;

    if (!j)
        return vd_error(ENOMEM, "out of memory");
    r = vd_opts_parse_json(j, name + 5);
    for (size_t i = 0; r >= 0 && i < vd_opts_count(j); i++)
        if (!vd_opts_has(opts, vd_opts_key(j, i)))
            r = vd_opts_set(opts, vd_opts_key(j, i), vd_opts_value(j, i));
    vd_opts_free(j);
    return r;
}

/* Copy inherited options (cache modes, ...) from a parent dict to a child. */
static int inherit_opts(vd_opts *from, vd_opts *to)
{
    for (const char *const *k = inherited_opts; *k; k++) {
        const char *v = vd_opts_get(from, *k);
        if (v && !vd_opts_has(to, *k) && vd_opts_set(to, *k, v) < 0)
            return -ENOMEM;
        vd_opts_del(from, *k);
    }
    return 0;
}

/* Apply read-only / force-share options to the open flags. */
static int node_flags(const vd_opts *opts, int flags, int *out)
{
    bool ro, fs;
    int r;

    if ((r = vd_opts_get_bool(opts, "read-only", false, &ro)) < 0 ||
        (r = vd_opts_get_bool(opts, "force-share", false, &fs)) < 0)
        return r;
    if (ro)
        flags &= ~VD_O_RDWR;
    if (fs) {
        if (flags & VD_O_RDWR)
            return vd_error(EINVAL, "force-share=on can only be used with read-only images");
        flags |= VD_O_FORCE_SHARE;
    }
    *out = flags;
    return 0;
}

/* Run drv->open on a fresh node and fill in its length.  The driver takes
 * the child options it knows ("image.*"); anything left must be known. */
static int run_driver_open(vd_node *n, vd_opts *opts)
{
    const vd_node *saved = untrusted_opener;
    int r = 0;

    if (n->drv->kind == VD_DRV_FORMAT && (n->flags & VD_O_UNTRUSTED))
        untrusted_opener = n;
    if (n->drv->open)
        r = n->drv->open(n, opts, n->flags);
    untrusted_opener = saved;
    if (r < 0)
        return r;
    if ((r = check_leftover_opts(n, opts)) < 0)
        return r;
    if (vd_refresh_length(n) < 0)
        return vd_error(EIO, "Could not get the size of '%s'", n->filename ? n->filename : "");
    if (!is_power_of_2(n->request_alignment))
        return vd_error(EINVAL, "driver '%s' set a bad request alignment", n->drv->name);
    return 0;
}

/* Open a protocol or filter node: the name becomes options via the
 * driver's parser or "filename". */
static int open_protocol(vd_node **out, const struct vd_driver *d,
                         const char *name, vd_opts *opts, int flags)
{
    vd_node *n;
    int r = 0;

    if (name && d->parse_filename)
        r = d->parse_filename(name, opts);
    else if (name && !vd_opts_has(opts, "filename")) {
        size_t pl = d->protocol ? strlen(d->protocol) : 0;
        if (pl && !strncmp(name, d->protocol, pl) && name[pl] == ':')
            name += pl + 1;
        r = vd_opts_set(opts, "filename", name);
    }
    if (r < 0)
        return r;
    if (!(n = node_new(d, flags)))
        return vd_error(ENOMEM, "out of memory");
    const char *fn = vd_opts_get(opts, "filename");
    n->filename = strdup(fn ? fn : (name ? name : d->name));
    vd_opts_del(opts, "driver");
    if (!n->filename || (r = run_driver_open(n, opts)) < 0) {
        r = r < 0 ? r : -ENOMEM;
        vd_close(n);
        return r;
    }
    *out = n;
    return 0;
}

/* Read the first bytes of the protocol node for probing. */
static int read_probe_buf(vd_node *file, uint8_t *buf, size_t *len)
{
    uint64_t size = (uint64_t)vd_getlength(file);
    size_t l = (size_t)VD_MIN(size, (uint64_t)VD_PROBE_SIZE);

    memset(buf, 0, VD_PROBE_SIZE);
    *len = l;
    return vd_pread(file, 0, l, buf, 0);
}

/* Pick the format of an open protocol node by probing; sets *probed_raw. */
static int probe_format(vd_node *file, const char *name, const struct vd_driver **out,
                        bool *probed_raw)
{
    uint8_t buf[VD_PROBE_SIZE];
    size_t len;
    int r = read_probe_buf(file, buf, &len);

    if (r < 0)
        return vd_error_prefix(r, "Could not read image for determining its format");
    /* an empty file is raw whatever its name says (QEMU's rule) */
    *out = len ? vd_probe_format(buf, len, name) : vd_driver_find("raw");
    if (!*out)
        return vd_error(EINVAL, "Could not determine image format");
    *probed_raw = !strcmp((*out)->name, "raw");
    return 0;
}

/* Print QEMU's warning about writable probed raw images. */
static void warn_probed_raw(const char *name)
{
    fprintf(stderr,
            "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
            "         Automatically detecting the format is dangerous for raw images, "
            "write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the restrictions.\n",
            name);
}

/* Open the protocol child of a format node into *file. */
static int open_file_child(vd_node **file, const char *name, vd_opts *opts, int flags,
                           int depth)
{
    vd_opts *fo = vd_opts_extract_prefix(opts, "file");
    const char *fname = vd_opts_get(opts, "file");
    int r;

    if (!fo)
        return vd_error(ENOMEM, "out of memory");
    if (fname) {                 /* file=NAME: a plain name for the child */
        name = NULL;
        r = vd_opts_set(fo, "filename", fname);
        vd_opts_del(opts, "file");
        if (r < 0) {
            vd_opts_free(fo);
            return r;
        }
    } else if (!name) {
        name = vd_opts_get(opts, "filename");
    }
    if ((r = inherit_opts(opts, fo)) < 0) {
        vd_opts_free(fo);
        return r;
    }
    vd_opts_del(opts, "filename");
    return open_node(file, true, name, NULL, fo, flags, depth);
}

/* Refuse a backing file that is one of the images above it (formats that
 * name their parent by locator or UUID can form loops). */
static int check_backing_loop(const vd_node *n, int depth)
{
    struct chain_id *c = &chain_ids[depth];
    struct stat st;

    c->set = stat(n->filename, &st) == 0;
    c->dev = st.st_dev;
    c->ino = st.st_ino;
    if (stat(n->backing_full_name, &st) < 0)
        return 0;                  /* the open reports it */
    for (int i = 0; i <= depth; i++)
        if (chain_ids[i].set && chain_ids[i].dev == st.st_dev && chain_ids[i].ino == st.st_ino)
            return vd_error(ELOOP, "Backing file '%s' creates an infinite loop.",
                            n->backing_full_name);
    return 0;
}

/* Open the backing chain named by the format driver; bo (consumed) holds
 * "backing.*" options, no_backing says the user asked for none. */
static int open_backing(vd_node *n, vd_opts *bo, bool no_backing, int flags, int depth)
{
    int r;

    if (no_backing || (flags & VD_O_NO_BACKING) || !n->backing_full_name ||
        n->probed_raw) {
        vd_opts_free(bo);
        return 0;
    }
    if (depth + 1 >= VD_MAX_CHAIN) {
        vd_opts_free(bo);
        return vd_error(ELOOP, "backing chain of '%s' is too long", n->filename);
    }
    if ((r = check_backing_loop(n, depth)) < 0) {
        vd_opts_free(bo);
        return r;
    }
    r = open_node(&n->backing, false, n->backing_full_name, n->backing_format, bo,
                  flags & ~VD_O_RDWR, depth + 1);
    if (r < 0)
        return vd_error_prefix(r, "Could not open backing file");
    n->backing->parent = n;
    return 0;
}

/* Run the format driver's open, then open the backing chain it names. */
static int open_backing_and_driver(vd_node *n, vd_opts *opts, int flags, int depth)
{
    vd_opts *bo = vd_opts_extract_prefix(opts, "backing");
    const char *b = vd_opts_get(opts, "backing");
    bool no_backing = b && (!*b || !strcmp(b, "null"));
    int r;

    if (!bo)
        return vd_error(ENOMEM, "out of memory");
    vd_opts_del(opts, "backing");
    if ((r = run_driver_open(n, opts)) < 0 ||
        (!n->drv->data_only && (r = vd_file_lock_for_metadata(n->file)) < 0)) {
        vd_opts_free(bo);
        return r;
    }
    /* Untrusted mode: an image naming a backing file is refused whether or
     * not the chain is to be opened (every driver records it here). */
    if ((n->flags & VD_O_UNTRUSTED) && n->backing_name) {
        vd_opts_free(bo);
        return vd_untrusted_refuse(n, "backing file", n->backing_name);
    }
    return open_backing(n, bo, no_backing, flags, depth);
}

/* A parallels disk named by its directory is its DiskDescriptor.xml:
 * the name to open instead (malloc'd), or NULL. */
static char *parallels_dir_name(const struct vd_driver *d, const char *name)
{
    struct stat st;
    char *out;

    if (!d || !name || strcmp(d->name, "parallels") || stat(name, &st) < 0 ||
        !S_ISDIR(st.st_mode) || asprintf(&out, "%s/DiskDescriptor.xml", name) < 0)
        return NULL;
    return out;
}

/* Open a format node: its file child, probing, the driver and backing. */
static int open_format(vd_node **out, const struct vd_driver *d,
                       const char *name, vd_opts *opts, int flags, int depth)
{
    vd_node *n = NULL, *file = NULL;
    bool probed_raw = false;
    char *dir_name = parallels_dir_name(d, name);
    int r;

    r = open_file_child(&file, dir_name ? dir_name : name, opts, flags, depth);
    free(dir_name);
    if (r < 0)
        return r;
    if (!d) {
        if ((r = probe_format(file, name, &d, &probed_raw)) < 0)
            goto fail;
    } else if ((flags & VD_O_UNTRUSTED) && d->kind == VD_DRV_FORMAT &&
               (r = vd_untrusted_check_format(file, d, name)) < 0) {
        goto fail;
    }
    if (d->kind != VD_DRV_FORMAT) {
        r = vd_error(EINVAL, "'%s' is not a format driver", d->name);
        goto fail;
    }
    if (!(n = node_new(d, flags))) {
        r = vd_error(ENOMEM, "out of memory");
        goto fail;
    }
    n->file = file;
    file->parent = n;
    file = NULL;
    n->probed_raw = probed_raw;
    n->filename = format_node_name(d, n->file->filename);
    if (!n->filename) {
        r = vd_error(ENOMEM, "out of memory");
        goto fail;
    }
    vd_opts_del(opts, "driver");
    if (probed_raw && (flags & VD_O_RDWR) && depth == 0)
        warn_probed_raw(name ? name : n->filename);
    if ((r = open_backing_and_driver(n, opts, flags, depth)) < 0)
        goto fail;
    *out = n;
    return 0;
fail:
    vd_close(file);
    vd_close(n);
    return r;
}

/* Does opts hold any "prefix.*" key? */
static bool has_prefix(const vd_opts *opts, const char *prefix)
{
    size_t l = strlen(prefix);
    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        const char *k = vd_opts_key(opts, i);
        if (!strncmp(k, prefix, l) && k[l] == '.')
            return true;
    }
    return false;
}

/* Pick the driver for a node: fmt, "driver", or (for the protocol child of
 * a format node) the protocol named by the file name.  *d stays NULL when
 * the format is to be probed. */
static int pick_driver(const char *name, const char *fmt, const vd_opts *opts,
                       bool file_child, const struct vd_driver **d)
{
    const char *dn = fmt ? fmt : vd_opts_get(opts, "driver");

    *d = NULL;
    if (dn && !(*d = vd_driver_find(dn)))
        return vd_error(EINVAL, "Unknown driver '%s'", dn);
    if (!*d && !name && !vd_opts_has(opts, "filename") && !vd_opts_has(opts, "file") &&
        !has_prefix(opts, "file"))
        return vd_error(EINVAL, "A block device must be specified for \"file\"");
    if (!*d && file_child)
        *d = name ? protocol_for_name(name) : vd_driver_find("file");
    if (file_child && !*d)
        return name ? -ENOENT : vd_error(ENOENT, "No protocol driver for ''");
    return 0;
}

/* Open one node of any kind: format (probing when no driver is named),
 * protocol or filter.  opts (may be NULL) is consumed. */
static int open_node(vd_node **out, bool file_child, const char *name,
                     const char *fmt, vd_opts *opts, int flags, int depth)
{
    const struct vd_driver *d = NULL;
    int r;

    if (untrusted_opener) {
        r = vd_untrusted_refuse(untrusted_opener, "file",
                                vd_untrusted_child_name(name, opts));
        vd_opts_free(opts);
        return r;
    }
    if (!opts && !(opts = vd_opts_new()))
        return vd_error(ENOMEM, "out of memory");
    r = 0;
    if (name && !strncmp(name, "json:", 5)) {
        r = merge_json_name(name, opts);
        name = NULL;
    }
    if (r >= 0)
        r = node_flags(opts, flags, &flags);
    if (r >= 0)
        r = pick_driver(name, fmt, opts, file_child, &d);
    if (r >= 0 && d && d->kind != VD_DRV_FORMAT)
        r = open_protocol(out, d, name, opts, flags);
    else if (r >= 0)
        r = open_format(out, d, name, opts, flags, depth);
    vd_opts_free(opts);
    return r;
}

/* Open an image (see vdisk.h). */
int vd_open(vd_node **out, const char *name, const char *format, vd_opts *opts, int flags)
{
    *out = NULL;
    vd_error_clear();
    return open_node(out, false, name, format, opts, flags, 0);
}

/* Open a child of parent (a driver's own children: filter images,
 * data files). */
int vd_open_child(vd_node **out, vd_node *parent, const char *name,
                  const char *format, vd_opts *opts, int flags)
{
    int r;

    /* A format node's own children come from its image (also those a
     * driver would open after open). */
    if (parent && parent->drv->kind == VD_DRV_FORMAT && (parent->flags & VD_O_UNTRUSTED)) {
        *out = NULL;
        r = vd_untrusted_refuse(parent, "file", vd_untrusted_child_name(name, opts));
        vd_opts_free(opts);
        return r;
    }
    r = open_node(out, false, name, format, opts,
                  flags | (parent ? parent->flags & VD_O_UNTRUSTED : 0), 0);
    if (r >= 0)
        (*out)->parent = parent;
    return r;
}
