/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img: helpers shared by every subcommand: error printing in
 * qemu-img's words, opening images from command-line arguments, cache
 * modes, sizes, --output and the -p progress line (also on SIGUSR1). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "cli.h"
#include "util/size.h"
#include "vdisk/driver.h"

/* Print "vdisk-img: " + the formatted message + newline to stderr. */
static void img_verror(const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", IMG_PROG);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

/* Print "vdisk-img: <message>\n" to stderr. */
void img_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    img_verror(fmt, ap);
    va_end(ap);
}

/* Print "vdisk-img: <prefix>: <vd_errmsg()>" for a failed libvdisk call. */
void img_error_last(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", IMG_PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ": %s\n", vd_errmsg());
}

/* An error in the command line: the message plus the hint to --help. */
void img_usage_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    img_verror(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information\n", IMG_PROG);
}

/* getopt returned '?' (unknown option) or ':' (missing argument). */
void img_getopt_error(int c, char **argv)
{
    const char *arg = argv[optind - 1];

    if (c == ':')
        img_usage_error("missing argument for option '%s'", arg);
    else
        img_usage_error("unrecognized option '%s'", arg);
}

/* qemu's cvtnum: a size in bytes, at most INT64_MAX, errors named by what. */
int img_cvtnum(const char *what, const char *s, uint64_t *out)
{
    uint64_t v;
    int r = vd_parse_size(s, 'B', &v);

    if (r == -ERANGE || (r == 0 && v > INT64_MAX)) {
        img_error("Invalid %s specified. Must be between 0 and %" PRId64 ".",
                  what, INT64_MAX);
        return -1;
    }
    if (r < 0) {
        img_error("Invalid %s specified. You may use k, M, G, T, P or E "
                  "suffixes for", what);
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
        return -1;
    }
    *out = v;
    return 0;
}

/* Parse a size argument as qemu-img does; prints the qemu-img error. */
int img_parse_size_arg(const char *s, uint64_t *out)
{
    return img_cvtnum("image size", s, out);
}

/* --output argument: 0 human, 1 json, -1 (error printed) otherwise. */
int img_parse_output(const char *s)
{
    if (!strcmp(s, "human"))
        return 0;
    if (!strcmp(s, "json"))
        return 1;
    img_error("--output must be used with human or json as argument.");
    return -1;
}

/* A -o list must be non-empty, not start with ',' and not end in an odd
 * run of commas (an even run is escaped commas). */
static bool valid_option_list(const char *s)
{
    size_t len = strlen(s), i = len;

    if (len == 0 || s[0] == ',')
        return false;
    while (i > 0 && s[i - 1] == ',')
        i--;
    return (len - i) % 2 == 0;
}

/* Accumulate -o arguments: qemu-img joins them with ','.  -1 (printed)
 * on an invalid list or when out of memory. */
int img_opts_append(char **acc, const char *arg)
{
    char *s;

    if (!valid_option_list(arg)) {
        img_error("Invalid option list: %s", arg);
        return -1;
    }
    if (!*acc) {
        s = strdup(arg);
    } else if (asprintf(&s, "%s,%s", *acc, arg) < 0) {
        s = NULL;
    }
    if (!s) {
        img_error("out of memory");
        return -1;
    }
    free(*acc);
    *acc = s;
    return 0;
}

/* --image-opts names the format inside the option string: -f is refused. */
int img_check_image_opts_fmt(bool image_opts, const char *fmt)
{
    if (image_opts && fmt) {
        img_error("--image-opts and --format are mutually exclusive");
        return -1;
    }
    return 0;
}

/* The cache modes qemu-img knows, as (direct, no-flush) pairs. */
static const struct { const char *name; bool direct, no_flush; } cache_modes[] = {
    { "none", true, false },
    { "off", true, false },
    { "writeback", false, false },
    { "writethrough", false, false },
    { "directsync", true, false },
    { "unsafe", false, true },
};

/* Apply a cache mode to an option dict as cache.direct / cache.no-flush. */
int img_cache_mode_opts(const char *mode, vd_opts *opts)
{
    for (size_t i = 0; i < sizeof(cache_modes) / sizeof(cache_modes[0]); i++) {
        if (strcmp(mode, cache_modes[i].name))
            continue;
        if (opts) {
            vd_opts_set(opts, "cache.direct", cache_modes[i].direct ? "on" : "off");
            vd_opts_set(opts, "cache.no-flush", cache_modes[i].no_flush ? "on" : "off");
        }
        return 0;
    }
    return -EINVAL;
}

/* Validate a -t (cache) or -T (source cache) argument, printing qemu's error. */
int img_check_cache(const char *mode, bool source)
{
    if (!mode || img_cache_mode_opts(mode, NULL) == 0)
        return 0;
    img_error("Invalid %scache option: %s", source ? "source " : "", mode);
    return -1;
}

/* Build the option dict of an --image-opts string; NULL (error printed). */
static vd_opts *img_parse_image_opts(const char *str)
{
    size_t n = strcspn(str, ",=");
    vd_opts *o;

    if (str[n] != '=') {
        /* A leading bare word is taken by QEMU as a node reference. */
        img_error("Could not open '%s': Cannot find device='%.*s' nor "
                  "node-name='%.*s'", str, (int)n, str, (int)n, str);
        return NULL;
    }
    if (!(o = vd_opts_new())) {
        img_error("Could not open '%s': %s", str, strerror(ENOMEM));
        return NULL;
    }
    if (vd_opts_parse(o, str, NULL) == 0)
        return o;
    vd_opts_free(o);
    img_error("Could not open '%s': %s", str, vd_errmsg());
    return NULL;
}

bool img_untrusted;

/* The VD_O_* flags for an open request. */
static int img_open_flags(const struct img_open_args *a)
{
    int flags = img_untrusted && !a->target ? VD_O_UNTRUSTED : 0;

    if (a->writable)
        flags |= VD_O_RDWR | (a->resize ? VD_O_RESIZE : 0);
    if (a->force_share)
        flags |= VD_O_FORCE_SHARE;
    else if (a->no_share)
        flags |= VD_O_NO_SHARE;
    if (a->no_backing)
        flags |= VD_O_NO_BACKING;
    if (a->check)
        flags |= VD_O_CHECK;
    if (a->no_io)
        flags |= VD_O_NO_IO;
    return flags;
}

/* Open and print qemu-img's error on failure ("Could not open 'x': ..."). */
vd_node *img_open(const struct img_open_args *a)
{
    vd_opts *opts = NULL;
    vd_node *n = NULL;
    int r;

    if (a->writable && a->force_share) {
        img_error("Could not open '%s': force-share=on can only be used "
                  "with read-only images", a->name);
        return NULL;
    }
    opts = a->image_opts ? img_parse_image_opts(a->name) : vd_opts_new();
    if (!opts)
        return NULL;
    for (size_t i = 0; a->extra && i < vd_opts_count(a->extra); i++)
        if (vd_opts_set(opts, vd_opts_key(a->extra, i), vd_opts_value(a->extra, i)) < 0) {
            img_error("Could not open '%s': %s", a->name, strerror(ENOMEM));
            vd_opts_free(opts);
            return NULL;
        }
    if (a->cache && img_cache_mode_opts(a->cache, opts) < 0) {
        img_error("Invalid cache option: %s", a->cache);
        vd_opts_free(opts);
        return NULL;
    }
    vd_error_clear();
    if (a->image_opts)
        r = vd_open(&n, NULL, NULL, opts, img_open_flags(a));
    else
        r = vd_open(&n, a->name, a->fmt, opts, img_open_flags(a));
    if (r < 0) {
        img_error("Could not open '%s': %s", a->name, vd_errmsg());
        return NULL;
    }
    /* lib/core prints QEMU's warning for writable probed raw images. */
    return n;
}

/* ---- progress ---- */

static struct {
    pthread_mutex_t lock;
    bool enabled;             /* -p: print every step with '\r' */
    double last;              /* last percentage printed, < 0 before any */
} progress = { PTHREAD_MUTEX_INITIALIZER, false, -1.0 };
static volatile sig_atomic_t progress_requested;

/* SIGUSR1: print the state at the next update (as qemu-img does). */
static void img_progress_signal(int sig)
{
    (void)sig;
    progress_requested = 1;
}

/* Print the progress line; the caller holds progress.lock. */
static void img_progress_print(double pct, char end)
{
    printf("    (%3.2f/100%%)%c", pct, end);
    fflush(stdout);
}

/* Progress as qemu-img -p prints it: "    (12.34/100%)\r". */
void img_progress_init(bool enabled)
{
    struct sigaction sa;

    pthread_mutex_lock(&progress.lock);
    progress.enabled = enabled;
    progress.last = -1.0;
    if (enabled) {
        img_progress_print(0.0, '\r');
        progress.last = 0.0;
    } else {
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = img_progress_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        sigaction(SIGUSR1, &sa, NULL);
    }
    pthread_mutex_unlock(&progress.lock);
}

/* One update: done of total bytes; prints per 1% step and at 100%. */
void img_progress(void *opaque, uint64_t done, uint64_t total)
{
    double pct = total ? (double)done * 100.0 / (double)total : 100.0;

    (void)opaque;
    if (pct > 100.0)
        pct = 100.0;
    pthread_mutex_lock(&progress.lock);
    if (progress.enabled) {
        if (progress.last < 0 || pct - progress.last >= 1.0 || pct >= 100.0) {
            img_progress_print(pct, '\r');
            progress.last = pct;
        }
    } else if (progress_requested) {
        progress_requested = 0;
        img_progress_print(pct, '\n');
    }
    pthread_mutex_unlock(&progress.lock);
}

/* End of a progress display: the final newline after -p output. */
void img_progress_end(void)
{
    pthread_mutex_lock(&progress.lock);
    if (progress.enabled) {
        putchar('\n');
        fflush(stdout);
    }
    progress.enabled = false;
    pthread_mutex_unlock(&progress.lock);
}

/* ---- create options of a format and its protocol ---- */

/* The protocol driver that would store filename ("nbd://", "file:"...). */
const struct vd_driver *img_protocol_for(const char *filename)
{
    return filename ? vd_protocol_for_name(filename) : vd_driver_find("file");
}

/* Number of entries of an option table. */
static size_t opt_table_len(const struct vd_opt_desc *t)
{
    size_t n = 0;

    while (t && t[n].name)
        n++;
    return n;
}

/* True when table t[0..n) has an entry called name. */
static bool opt_table_has(const struct vd_opt_desc *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, name))
            return true;
    return false;
}

/* The create options of fmt followed by those of proto not already there
 * (QEMU's merged list, whose order the "Formatting" line follows).
 * Returns a NULL-terminated malloc'd table, or NULL when out of memory. */
struct vd_opt_desc *img_create_opt_table(const struct vd_driver *fmt,
                                         const struct vd_driver *proto)
{
    const struct vd_opt_desc *a = fmt ? fmt->create_opts : NULL;
    const struct vd_opt_desc *b = proto && proto != fmt ? proto->create_opts : NULL;
    size_t na = opt_table_len(a), nb = opt_table_len(b), n = 0;
    struct vd_opt_desc *t = calloc(na + nb + 1, sizeof(*t));

    if (!t)
        return NULL;
    for (size_t i = 0; i < na; i++)
        if (!opt_table_has(t, n, a[i].name))
            t[n++] = a[i];
    for (size_t i = 0; i < nb; i++)
        if (!opt_table_has(t, n, b[i].name))
            t[n++] = b[i];
    return t;
}
