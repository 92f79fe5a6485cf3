/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img map: the allocation map of an image through its backing chain,
 * from block status, with neighbouring ranges merged as qemu-img merges
 * them; human output lists the data ranges that do not read as zeroes,
 * JSON lists every range. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "img.h"
#include "cli.h"
#include "util/checked.h"

/* One range of the map (qemu-img's MapEntry). */
struct map_entry {
    uint64_t start, length, offset;
    int64_t depth;
    bool present, zero, data, has_offset;
    const char *filename;          /* node holding the data, or NULL */
};

/* Parsed command line of map. */
struct map_args {
    const char *fmt;
    bool image_opts, force_share;
    int json;
    uint64_t start, max_len;
};

/* Depth qemu-img gives a range at off that no layer allocates: its walk
 * goes down while the layer has a backing file that reaches off, so it
 * stops at the bottom or above a backing file that ends at or before off
 * (the range then reads as zeroes of that layer). */
static int64_t unallocated_depth(vd_node *n, uint64_t off)
{
    int64_t d = 0;
    vd_node *b;

    while ((b = vd_node_backing(n))) {
        int64_t blen = vd_getlength(b);
        if (blen >= 0 && off >= (uint64_t)blen)
            break;
        n = b;
        d++;
    }
    return d;
}

/* Print one entry as JSON; first selects the "[" prefix. */
static void dump_json(const struct map_entry *e, bool first)
{
    printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %"
           PRId64 ", \"present\": %s, \"zero\": %s, \"data\": %s",
           first ? "[" : ",\n", e->start, e->length, e->depth,
           e->present ? "true" : "false", e->zero ? "true" : "false",
           e->data ? "true" : "false");
    if (e->has_offset)
        printf(", \"offset\": %" PRIu64, e->offset);
    putchar('}');
}

/* Print one entry as a human line (data that does not read as zeroes
 * only); -1 if a data range is unmappable.  Like qemu-img, the following
 * entry, when it will not be printed either, loses the difference between
 * unallocated, zero and zero data so that more such ranges merge. */
static int dump_human(const struct map_entry *e, struct map_entry *next)
{
    if (e->data && !e->has_offset) {
        img_error("File contains external, encrypted or compressed clusters.");
        return -1;
    }
    if (e->data && !e->zero)
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
               e->start, e->length, e->offset, e->filename ? e->filename : "");
    if (next && (!next->data || next->zero)) {
        next->data = false;
        next->zero = true;
    }
    return 0;
}

/* Can next be appended to curr (qemu-img's merge rule)? */
static bool mergeable(const struct map_entry *curr, const struct map_entry *next)
{
    if (curr->length == 0)
        return false;
    if (curr->zero != next->zero || curr->data != next->data ||
        curr->depth != next->depth || curr->present != next->present ||
        curr->has_offset != next->has_offset || !curr->filename != !next->filename)
        return false;
    if (curr->filename && strcmp(curr->filename, next->filename))
        return false;
    return !curr->has_offset || curr->offset + curr->length == next->offset;
}

/* The layer at depth d below n. */
static vd_node *layer_at(vd_node *n, int64_t d)
{
    while (d-- > 0 && n)
        n = vd_node_backing(n);
    return n;
}

/* An unallocated range whose walk stopped above a backing file that ends
 * before it: qemu-img reports that layer's own offset (an extended L2
 * subcluster of a preallocated cluster has one), which the chain's
 * answer, made up for the short backing file, does not carry. */
static int stopped_layer_offset(vd_node *n, struct map_entry *e, int *st, uint64_t *map,
                                vd_node **file)
{
    vd_node *l = layer_at(n, e->depth), *f = NULL;
    uint64_t pnum = 0, m = 0;
    int r;

    if (!l || !vd_node_backing(l))
        return 0;                  /* the chain's answer is this layer's */
    if ((r = vd_block_status(l, e->start, e->length, &pnum, &m, &f)) < 0)
        return r;
    if (!(r & VD_BS_OFFSET_VALID) || pnum == 0)
        return 0;
    e->length = VD_MIN(e->length, pnum);
    *st |= VD_BS_OFFSET_VALID;
    *map = m;
    *file = f;
    return 0;
}

/* Block status at off (up to len bytes) as a map entry; -errno on error. */
static int get_entry(vd_node *n, uint64_t off, uint64_t len, struct map_entry *e)
{
    uint64_t pnum = 0, map = 0;
    vd_node *file = NULL;
    int depth = -1;
    int r = vd_block_status_above(n, off, len, &pnum, &map, &file, &depth), r2;

    if (r < 0)
        return r;
    if (pnum == 0 || pnum > len)
        return -EIO;
    *e = (struct map_entry) {
        .start = off, .length = pnum,
        .depth = (r & VD_BS_ALLOCATED) && depth >= 0 ? depth : unallocated_depth(n, off),
        .present = (r & VD_BS_ALLOCATED) != 0,
        .zero = r & VD_BS_ZERO, .data = r & VD_BS_DATA,
    };
    if (!(r & VD_BS_ALLOCATED) &&
        (r2 = stopped_layer_offset(n, e, &r, &map, &file)) < 0)
        return r2;
    /* qemu-img's walk answers 0 when no layer says data or zero */
    e->has_offset = (r & VD_BS_OFFSET_VALID) && (r & (VD_BS_DATA | VD_BS_ZERO));
    e->offset = map;
    if (e->has_offset && file)
        e->filename = vd_node_filename(file);
    return 0;
}

/* Print a finished entry in the chosen form; next (NULL after the last)
 * may be adjusted as dump_human says. */
static int dump_entry(const struct map_args *ma, const struct map_entry *e,
                      struct map_entry *next, bool *first)
{
    int r = 0;

    if (ma->json)
        dump_json(e, *first);
    else
        r = dump_human(e, next);
    *first = false;
    return r;
}

/* Walk [start, end) and print the merged ranges; 0 or -1. */
static int map_range(const struct map_args *ma, vd_node *n, uint64_t end)
{
    struct map_entry curr = { .start = ma->start }, next;
    bool first = true;

    for (uint64_t off = ma->start; off < end; off += next.length) {
        int r = get_entry(n, off, end - off, &next);
        if (r < 0) {
            img_error("Could not read file metadata: %s", strerror(-r));
            return -1;
        }
        if (mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && dump_entry(ma, &curr, &next, &first) < 0)
            return -1;
        curr = next;
    }
    return dump_entry(ma, &curr, NULL, &first);
}

/* Open the image and print its map. */
static int do_map(const struct map_args *ma, const char *name)
{
    struct img_open_args a = {
        .name = name, .fmt = ma->fmt, .image_opts = ma->image_opts,
        .force_share = ma->force_share,
    };
    vd_node *n = img_open(&a);
    int64_t len;
    uint64_t end;
    int r;

    if (!n)
        return -1;
    if ((len = vd_getlength(n)) < 0) {
        img_error("Could not get image length: %s", strerror((int)-len));
        vd_close(n);
        return -1;
    }
    end = (uint64_t)len;
    if (ma->max_len < end && ma->start < end - ma->max_len)
        end = ma->start + ma->max_len;
    if (!ma->json)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    r = map_range(ma, n, end);
    if (ma->json && r == 0)
        puts("]");
    vd_close(n);
    return r;
}

/* Parse map's options; returns the optind of the file name or -1. */
static int parse_args(int argc, char **argv, struct map_args *ma)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, 'O' },
        { "object", required_argument, NULL, 'o' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    const char *output = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'f': ma->fmt = optarg; break;
        case 'O': output = optarg; break;
        case 'o': break;        /* --object: no object types yet */
        case 'I': ma->image_opts = true; break;
        case 'U': ma->force_share = true; break;
        case 's':
            if (img_cvtnum("start offset", optarg, &ma->start) < 0)
                return -1;
            break;
        case 'l':
            if (img_cvtnum("max length", optarg, &ma->max_len) < 0)
                return -1;
            break;
        default: img_getopt_error(c, argv); return -1;
        }
    }
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return -1;
    }
    if (output && (ma->json = img_parse_output(output)) < 0)
        return -1;
    if (img_check_image_opts_fmt(ma->image_opts, ma->fmt) < 0)
        return -1;
    return optind;
}

/* vdisk-img map [options] filename */
int img_map(int argc, char **argv)
{
    struct map_args ma = { .max_len = INT64_MAX };
    int i = parse_args(argc, argv, &ma);

    if (i < 0)
        return 1;
    return do_map(&ma, argv[i]) < 0 ? 1 : 0;
}
