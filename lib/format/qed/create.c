/* SPDX-License-Identifier: BSD-3-Clause */
/* qed create, as QEMU 7.2: the file first, then the sizes checked with
 * its messages, then a header cluster (header, backing file name) and a
 * zeroed L1 table right after it. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format/qed/qed.h"
#include "util/checked.h"

/* What create was asked for. */
struct qed_create {
    uint64_t size, cluster, table;
    const char *backing, *backing_fmt;
};

/* Options of the file under the image: everything but qed's own, and no
 * size (the file starts empty). */
static vd_opts *proto_opts(vd_opts *o)
{
    static const char *const own[] = { "size", "backing_file", "backing_fmt",
                                       "cluster_size", "table_size", NULL };
    vd_opts *p = vd_opts_new();

    if (!p)
        return NULL;
    for (size_t i = 0; i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        bool skip = false;
        for (int j = 0; own[j]; j++)
            skip |= !strcmp(k, own[j]);
        if (!skip && vd_opts_set(p, k, vd_opts_value(o, i)) < 0) {
            vd_opts_free(p);
            return NULL;
        }
    }
    if (vd_opts_set(p, "size", "0") < 0) {
        vd_opts_free(p);
        return NULL;
    }
    return p;
}

/* Read the options (size rounded up to a sector, as qemu-img). */
static int parse(vd_opts *o, struct qed_create *c)
{
    int r;

    if ((r = vd_opts_get_size(o, "size", 0, &c->size)) < 0 ||
        (r = vd_opts_get_size(o, "cluster_size", QED_DEFAULT_CLUSTER, &c->cluster)) < 0 ||
        (r = vd_opts_get_size(o, "table_size", QED_DEFAULT_TABLE, &c->table)) < 0)
        return r;
    if (!round_up_checked(c->size, 512, &c->size))
        c->size = UINT64_MAX;
    c->backing = vd_opts_get(o, "backing_file");
    c->backing_fmt = vd_opts_get(o, "backing_fmt");
    return 0;
}

/* QEMU's checks and messages.  Its limit wraps to 0 for the largest
 * cluster and table sizes (refusing every size); vdisk takes the true
 * limit. */
static int validate(const struct qed_create *c)
{
    uint64_t max;

    if (!qed_cluster_size_ok(c->cluster))
        return vd_error(EINVAL, "QED cluster size must be within range [%u, %u] and power "
                        "of 2", QED_MIN_CLUSTER, QED_MAX_CLUSTER);
    if (!qed_table_size_ok(c->table))
        return vd_error(EINVAL, "QED table size must be within range [%u, %u] and power "
                        "of 2", QED_MIN_TABLE, QED_MAX_TABLE);
    max = qed_max_image_size(c->cluster, c->table);
    if (!qed_image_size_ok(c->size, c->cluster, c->table))
        return vd_error(EINVAL, "QED image size must be a non-zero multiple of cluster "
                        "size and less than %" PRIu64 " bytes", max);
    if (c->cluster * c->table > QED_TABLE_BYTES_MAX)
        return vd_error(ENOTSUP, "qed: tables of %" PRIu64 " bytes are over vdisk's "
                        "limit of %u bytes", c->cluster * c->table, QED_TABLE_BYTES_MAX);
    if (c->backing && (strlen(c->backing) > QED_NAME_MAX ||
                       QED_HEADER_LEN + strlen(c->backing) > c->cluster))
        return vd_error(EINVAL, "qed: backing file name of %zu bytes does not fit in the "
                        "header cluster", strlen(c->backing));
    return 0;
}

/* Write the header, the backing file name and the zeroed L1 table. */
static int write_layout(vd_node *f, const struct qed_create *c)
{
    size_t nl = c->backing ? strlen(c->backing) : 0;
    uint8_t *h = calloc(1, QED_HEADER_LEN + nl);
    uint64_t feat = 0;
    int r;

    if (!h)
        return vd_error(ENOMEM, "out of memory");
    if (nl)
        feat |= QED_F_BACKING_FILE;
    if (nl && c->backing_fmt && !strcmp(c->backing_fmt, "raw"))
        feat |= QED_F_BACKING_RAW;
    qed_put_le32(h + QH_MAGIC, QED_MAGIC);
    qed_put_le32(h + QH_CLUSTER, (uint32_t)c->cluster);
    qed_put_le32(h + QH_TABLE, (uint32_t)c->table);
    qed_put_le32(h + QH_HEADER_SIZE, 1);
    qed_put_le64(h + QH_FEATURES, feat);
    qed_put_le64(h + QH_L1, c->cluster);
    qed_put_le64(h + QH_SIZE, c->size);
    qed_put_le32(h + QH_BACKING_OFF, nl ? QED_HEADER_LEN : 0);
    qed_put_le32(h + QH_BACKING_LEN, (uint32_t)nl);
    memcpy(h + QED_HEADER_LEN, c->backing ? c->backing : "", nl);
    if ((r = vd_truncate(f, c->cluster * (1 + c->table), true, VD_PREALLOC_OFF)) >= 0)
        r = vd_pwrite(f, 0, QED_HEADER_LEN + nl, h, 0);
    free(h);
    if (r < 0)
        return vd_error_prefix(r, "qed: could not write the new image");
    return 0;
}

/* See qed.h. */
int qed_create(const char *filename, vd_opts *opts)
{
    struct qed_create c;
    vd_node *f = NULL;
    vd_opts *p;
    int r;

    if ((r = parse(opts, &c)) < 0)
        return r;
    if (!(p = proto_opts(opts)))
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, p);
    vd_opts_free(p);
    if (r < 0 || (r = validate(&c)) < 0)
        return r;
    if ((r = vd_open(&f, filename, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) < 0)
        return r;
    r = write_layout(f, &c);
    if (r >= 0)
        r = vd_flush(f);
    vd_close(f);
    return r;
}

/* In QEMU 7.2's order ("Formatting" line); -o help sorts them. */
const struct vd_opt_desc qed_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "backing_file", VD_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VD_OPT_STRING, "Image format of the base image", NULL },
    { "cluster_size", VD_OPT_SIZE, "Cluster size (in bytes)", "65536" },
    { "table_size", VD_OPT_SIZE, "L1/L2 table size (in clusters)", NULL },
    { NULL, 0, NULL, NULL },
};
