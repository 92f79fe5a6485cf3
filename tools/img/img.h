/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img: shared declarations of the subcommands (one file each) and the
 * helpers they share (common.c). */
#ifndef VD_IMG_H
#define VD_IMG_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"
#include "vdisk/copy.h"
#include "util/json.h"

#define IMG_PROG "vdisk-img"

/* Each subcommand: argv[0] is the subcommand name; returns the exit code. */
int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_map(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_check(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_dd(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_bench(int argc, char **argv);
int img_amend(int argc, char **argv);
int img_snapshot(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_bitmap(int argc, char **argv);
/* convert --bitmaps (bitmap.c), each -1 after printing qemu-img's error:
 * the source can be copied from (one source, bitmaps supported, none in
 * use unless skipped); the target keeps bitmaps; copy them after the data. */
int img_convert_check_bitmaps(vd_node *src, int nsrc, bool skip_broken);
int img_convert_check_target_bitmaps(vd_node *dst);
int img_convert_copy_bitmaps(vd_node *src, vd_node *dst, bool skip_broken);

/* Print "vdisk-img: <message>\n" to stderr. */
void img_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "vdisk-img: <prefix>: <vd_errmsg()>" for a failed libvdisk call. */
void img_error_last(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* How to open an image from the command line. */
struct img_open_args {
    const char *name;       /* file name / URI / json: / --image-opts string */
    const char *fmt;        /* -f, or NULL */
    bool image_opts;        /* name is an option string */
    bool writable;
    bool resize;            /* take the resize lock at open (resize) */
    bool no_share;          /* others may not write meanwhile (convert's sources) */
    bool force_share;       /* -U */
    bool no_backing;
    bool check;             /* check: no repair of a dirty image at open */
    bool no_io;             /* metadata only (info): no key for encrypted images */
    const vd_opts *extra;   /* more open options (a created target's key secret), or NULL */
    const char *cache;      /* -t / -T cache mode, or NULL */
    bool quiet;
    bool target;            /* an image this run creates or writes as output
                               (convert, dd): never opened as untrusted */
};
/* --untrusted or VDISK_UNTRUSTED: every image but targets is opened with
 * VD_O_UNTRUSTED (set by main.c before the subcommand runs). */
extern bool img_untrusted;
/* Open and print qemu-img's error on failure ("Could not open 'x': ...").
 * Returns NULL on failure. */
vd_node *img_open(const struct img_open_args *a);
/* Apply a cache mode ("none", "writeback", ...) to an option dict as
 * cache.direct / cache.no-flush; -EINVAL on an unknown mode. */
int img_cache_mode_opts(const char *mode, vd_opts *opts);

/* Progress as qemu-img -p prints it: "    (12.34/100%)\r". */
void img_progress_init(bool enabled);
void img_progress(void *opaque, uint64_t done, uint64_t total);
void img_progress_end(void);

/* Parse a size argument as qemu-img does; prints the qemu-img error. */
int img_parse_size_arg(const char *s, uint64_t *out);

/* --output argument: 0 human, 1 json, -1 (error printed) otherwise. */
int img_parse_output(const char *s);

/* snapshot.c: the snapshots of n as info's JSON "snapshots" array (*out
 * NULL when there are none); returns the count or -errno. */
int img_snapshots_json(vd_node *n, vd_json **out);
/* Print "Snapshot list:" and the table of such an array (nothing when
 * list is NULL or empty). */
void img_print_snapshots(const vd_json *list);

#endif
