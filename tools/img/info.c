/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img info: describe an image (and with --backing-chain every image
 * below it) as qemu-img info does, in human form or as QEMU's JSON, whose
 * keys appear in the order QEMU prints them. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "util/size.h"

/* Most images a --backing-chain walk visits (a loop guard, too). */
#define INFO_MAX_CHAIN 256

/* Parsed command line of info. */
struct info_args {
    const char *fmt;
    bool image_opts, force_share, chain;
    int json;
};

/* The "format-specific" object from the driver's info hook, or NULL. */
static vd_json *format_specific(vd_node *n)
{
    vd_json *fs, *data;

    if (!n->drv->info || !(data = vd_json_new_object()))
        return NULL;
    if (n->drv->info(n, data) < 0 || vd_json_count(data) == 0) {
        vd_json_free(data);
        return NULL;
    }
    fs = vd_json_new_object();
    if (!fs) {
        vd_json_free(data);
        return NULL;
    }
    vd_json_set_str(fs, "type", vd_node_format(n));
    vd_json_set(fs, "data", data);
    return fs;
}

/* Collect one image's info as QEMU's ImageInfo, keys in QEMU's order. */
static vd_json *image_info(vd_node *n)
{
    vd_json *o = vd_json_new_object(), *fs, *snaps = NULL;
    const char *bname = vd_node_backing_name(n);
    const char *bfull = vd_node_backing_full_name(n);
    const char *bfmt = vd_node_backing_format(n);
    int64_t len = vd_getlength(n), alloc = vd_get_allocated_size(n);

    if (!o)
        return NULL;
    if (bname && bfmt)
        vd_json_set_str(o, "backing-filename-format", bfmt);
    if (img_snapshots_json(n, &snaps) < 0) {
        img_error("%s", vd_errmsg());
        vd_json_free(o);
        return NULL;
    }
    if (snaps)
        vd_json_set(o, "snapshots", snaps);
    vd_json_set_int(o, "virtual-size", len < 0 ? 0 : len);
    vd_json_set_str(o, "filename", vd_node_filename(n));
    if (vd_node_cluster_size(n) > 0)
        vd_json_set_int(o, "cluster-size", vd_node_cluster_size(n));
    vd_json_set_str(o, "format", vd_node_format(n));
    if (alloc >= 0)
        vd_json_set_int(o, "actual-size", alloc);
    if ((fs = format_specific(n)))
        vd_json_set(o, "format-specific", fs);
    if (bname) {
        vd_json_set_str(o, "full-backing-filename", bfull ? bfull : bname);
        vd_json_set_str(o, "backing-filename", bname);
    }
    if (vd_node_encrypted(n))
        vd_json_set_bool(o, "encrypted", true);
    if (vd_node_cluster_size(n) >= 0)
        vd_json_set_bool(o, "dirty-flag", n->drv->is_dirty && n->drv->is_dirty(n));
    return o;
}

static void dump_value(const vd_json *v, int indent);

/* Print a scalar as QEMU's human dump does. */
static void dump_scalar(const vd_json *v)
{
    switch (vd_json_type(v)) {
    case VD_JSON_STRING:
        fputs(vd_json_str(v), stdout);
        break;
    case VD_JSON_BOOL:
        fputs(vd_json_bool(v) ? "true" : "false", stdout);
        break;
    case VD_JSON_UINT:
        printf("%" PRIu64, (uint64_t)vd_json_int(v));
        break;
    case VD_JSON_NULL:
        fputs("null", stdout);
        break;
    default:
        printf("%" PRId64, vd_json_int(v));
        break;
    }
}

/* True for objects and arrays. */
static bool is_composite(const vd_json *v)
{
    enum vd_json_type t = vd_json_type(v);
    return t == VD_JSON_OBJECT || t == VD_JSON_ARRAY;
}

/* Print "key: value" (key with '-' as ' ') or "key:" and the nested lines. */
static void dump_member(const char *key, const vd_json *v, int indent)
{
    printf("%*s", indent * 4, "");
    for (const char *p = key; *p; p++)
        putchar(*p == '-' ? ' ' : *p);
    if (is_composite(v)) {
        puts(":");
        dump_value(v, indent + 1);
    } else {
        fputs(": ", stdout);
        dump_scalar(v);
        putchar('\n');
    }
}

/* Print an object's members or an array's "[i]:" elements at indent. */
static void dump_value(const vd_json *v, int indent)
{
    size_t n = vd_json_count(v);
    char idx[32];

    for (size_t i = 0; i < n; i++) {
        if (vd_json_type(v) == VD_JSON_OBJECT) {
            dump_member(vd_json_key_at(v, i), vd_json_at(v, i), indent);
        } else {
            snprintf(idx, sizeof(idx), "[%zu]", i);
            dump_member(idx, vd_json_at(v, i), indent);
        }
    }
}

/* The backing file lines of the human output. */
static void print_backing(const vd_json *o)
{
    const char *name = vd_json_str(vd_json_get(o, "backing-filename"));
    const char *full = vd_json_str(vd_json_get(o, "full-backing-filename"));
    const char *fmt = vd_json_str(vd_json_get(o, "backing-filename-format"));

    if (!vd_json_get(o, "backing-filename"))
        return;
    printf("backing file: %s", name);
    if (full && strcmp(full, name))
        printf(" (actual path: %s)", full);
    putchar('\n');
    if (vd_json_get(o, "backing-filename-format"))
        printf("backing file format: %s\n", fmt);
}

/* Print one image's info as qemu-img info's human output. */
static void print_human(const vd_json *o)
{
    const vd_json *fs = vd_json_get(o, "format-specific");
    const vd_json *actual = vd_json_get(o, "actual-size");
    uint64_t vsize = (uint64_t)vd_json_int(vd_json_get(o, "virtual-size"));
    char buf[64];

    printf("image: %s\n", vd_json_str(vd_json_get(o, "filename")));
    printf("file format: %s\n", vd_json_str(vd_json_get(o, "format")));
    vd_size_to_str(vsize, buf, sizeof(buf));
    printf("virtual size: %s (%" PRIu64 " bytes)\n", buf, vsize);
    if (actual) {
        vd_size_to_str((uint64_t)vd_json_int(actual), buf, sizeof(buf));
        printf("disk size: %s\n", buf);
    } else {
        printf("disk size: unavailable\n");
    }
    if (vd_json_get(o, "encrypted"))
        printf("encrypted: yes\n");
    if (vd_json_get(o, "cluster-size"))
        printf("cluster_size: %" PRId64 "\n", vd_json_int(vd_json_get(o, "cluster-size")));
    print_backing(o);
    img_print_snapshots(vd_json_get(o, "snapshots"));
    if (fs) {
        printf("Format specific information:\n");
        dump_value(vd_json_get(fs, "data"), 1);
    }
}

/* Open one image of the chain (the first as the user named it). */
static vd_node *open_link(const struct info_args *ia, const char *name,
                          const char *fmt, bool first)
{
    struct img_open_args a = {
        .name = name, .fmt = fmt, .force_share = ia->force_share,
        .no_backing = true, .image_opts = first && ia->image_opts, .no_io = true,
    };
    return img_open(&a);
}

/* True when name was already visited in this chain. */
static bool seen_before(char **names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(names[i], name))
            return true;
    return false;
}

/* Collect the info of the image (and its chain) into list; 0 or -1. */
static int collect(const struct info_args *ia, const char *filename, vd_json *list)
{
    char *names[INFO_MAX_CHAIN];
    char *name = strdup(filename), *fmt = ia->fmt ? strdup(ia->fmt) : NULL;
    size_t n = 0;
    int ret = 0;

    if (!name) {
        img_error("out of memory");
        return -1;
    }
    while (name && n < INFO_MAX_CHAIN) {
        vd_node *node;
        const char *next, *nfmt;

        if (seen_before(names, n, name)) {
            img_error("Backing file '%s' creates an infinite loop.", name);
            ret = -1;
            break;
        }
        names[n++] = name;      /* names[] owns it from here */
        if (!(node = open_link(ia, name, fmt, n == 1))) {
            name = NULL;
            ret = -1;
            break;
        }
        vd_json *info = image_info(node);
        if (!info) {
            vd_close(node);
            name = NULL;
            ret = -1;
            break;
        }
        vd_json_append(list, info);
        next = ia->chain ? vd_node_backing_full_name(node) : NULL;
        nfmt = vd_node_backing_format(node);
        free(fmt);
        name = next ? strdup(next) : NULL;
        fmt = next && nfmt ? strdup(nfmt) : NULL;
        vd_close(node);
    }
    free(name);                 /* NULL, or not yet in names[] */
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(fmt);
    return ret;
}

/* Print the collected list in the requested form. */
static void print_list(const struct info_args *ia, const vd_json *list)
{
    size_t n = vd_json_count(list);

    if (ia->json) {
        vd_json_print(ia->chain ? list : vd_json_at(list, 0), stdout);
        putchar('\n');
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            putchar('\n');
        print_human(vd_json_at(list, i));
    }
}

/* Parse info's options; returns the optind of the file name or -1. */
static int parse_args(int argc, char **argv, struct info_args *ia)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, 'O' },
        { "backing-chain", no_argument, NULL, 'B' },
        { "object", required_argument, NULL, 'o' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *output = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'f': ia->fmt = optarg; break;
        case 'O': output = optarg; break;
        case 'B': ia->chain = true; break;
        case 'o': break;        /* --object: no object types yet */
        case 'I': ia->image_opts = true; break;
        case 'U': ia->force_share = true; break;
        default: img_getopt_error(c, argv); return -1;
        }
    }
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return -1;
    }
    if (output && (ia->json = img_parse_output(output)) < 0)
        return -1;
    if (img_check_image_opts_fmt(ia->image_opts, ia->fmt) < 0)
        return -1;
    return optind;
}

/* vdisk-img info [options] filename */
int img_info(int argc, char **argv)
{
    struct info_args ia = { 0 };
    vd_json *list;
    int i = parse_args(argc, argv, &ia);

    if (i < 0)
        return 1;
    if (!(list = vd_json_new_array())) {
        img_error("out of memory");
        return 1;
    }
    if (collect(&ia, argv[i], list) < 0) {
        vd_json_free(list);
        return 1;
    }
    print_list(&ia, list);
    vd_json_free(list);
    return 0;
}
