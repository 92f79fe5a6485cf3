/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: image creation (every -o option of qemu-img 7.2, with its
 * messages), size measurement (QEMU's formulas), resize and
 * preallocation.  A new image is laid out as QEMU lays it out: header,
 * refcount table, one refcount block, then the L1 table. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

/* Parsed create options. */
struct qc_create {
    uint64_t size, cluster_size;
    uint32_t cluster_bits, refcount_order, version;
    int prealloc, compression;
    bool lazy, ext_l2, data_raw;
    const char *backing, *backing_fmt, *data_file;
};

/* Feature name table entries written into every v3 header. */
static const struct { uint8_t type, bit; const char *name; } qc_features[] = {
    { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" }, { 0, 2, "external data file" },
    { 0, 3, "compression type" }, { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" }, { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
};

/* ---- option parsing ---- */

/* compat: 0.10/v2 or 1.1/v3. */
static int parse_compat(const char *v, uint32_t *version)
{
    if (!v || !strcmp(v, "1.1") || !strcmp(v, "v3"))
        *version = 3;
    else if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
        *version = 2;
    else
        return vd_error(EINVAL, "Parameter 'version' does not accept value '%s'", v);
    return 0;
}

/* cluster_size and refcount_bits. */
static int parse_geometry(vd_opts *o, struct qc_create *c)
{
    uint64_t cs, rb;
    int r;

    if ((r = vd_opts_get_size(o, "cluster_size", 65536, &cs)) < 0 ||
        (r = vd_opts_get_u64(o, "refcount_bits", 16, &rb)) < 0)
        return r;
    if (cs < 512 || cs > (2u << 20) || !is_power_of_2(cs))
        return vd_error(EINVAL, "Cluster size must be a power of two between 512 and 2048k");
    if (!rb || rb > 64 || !is_power_of_2(rb))
        return vd_error(EINVAL, "Refcount width must be a power of two and may not exceed "
                        "64 bits");
    c->cluster_size = cs;
    c->cluster_bits = (uint32_t)__builtin_ctzll(cs);
    c->refcount_order = (uint32_t)__builtin_ctzll(rb);
    return 0;
}

/* Options that need v3, with QEMU's messages. */
static int check_v2_limits(const struct qc_create *c)
{
    static const char tail[] = "only supported with compatibility level 1.1 and above "
                               "(use version=v3 or greater)";
    if (c->version >= 3)
        return 0;
    if (c->refcount_order != 4)
        return vd_error(EINVAL, "Different refcount widths than 16 bits require "
                        "compatibility level 1.1 or above (use version=v3 or greater)");
    if (c->lazy)
        return vd_error(EINVAL, "Lazy refcounts %s", tail);
    if (c->compression != QC_COMP_ZLIB)
        return vd_error(EINVAL, "Non-zlib compression type is %s", tail);
    if (c->ext_l2)
        return vd_error(EINVAL, "Extended L2 entries are %s", tail);
    if (c->data_file)
        return vd_error(EINVAL, "External data files are %s", tail);
    return 0;
}

/* compression_type and preallocation names. */
static int parse_names(vd_opts *o, struct qc_create *c)
{
    const char *ct = vd_opts_get(o, "compression_type");
    const char *pa = vd_opts_get(o, "preallocation");

    if (!ct || !strcmp(ct, "zlib"))
        c->compression = QC_COMP_ZLIB;
    else if (!strcmp(ct, "zstd") && qcow2_zstd_available())
        c->compression = QC_COMP_ZSTD;
    else
        return vd_error(EINVAL, "Parameter 'compression-type' does not accept value '%s'", ct);
    c->prealloc = VD_PREALLOC_OFF;
    if (pa && (c->prealloc = vd_prealloc_parse(pa)) < 0)
        return vd_error(EINVAL, "Parameter 'preallocation' does not accept value '%s'", pa);
    return 0;
}

/* Encryption is not implemented: say so clearly. */
static int check_encryption(vd_opts *o)
{
    bool enc = false;
    int r;

    if ((r = vd_opts_get_bool(o, "encryption", false, &enc)) < 0)
        return r;
    for (size_t i = 0; i < vd_opts_count(o); i++)
        if (!strncmp(vd_opts_key(o, i), "encrypt.", 8))
            enc = true;
    if (enc)
        return vd_error(ENOTSUP, "qcow2 encryption (encryption, encrypt.*) is not yet "
                        "supported by vdisk");
    return 0;
}

/* All create options, checked in QEMU's order. */
static int parse_create(vd_opts *o, struct qc_create *c)
{
    int r;

    memset(c, 0, sizeof(*c));
    if ((r = vd_opts_get_size(o, "size", 0, &c->size)) < 0 ||
        (r = check_encryption(o)) < 0 ||
        (r = parse_compat(vd_opts_get(o, "compat"), &c->version)) < 0 ||
        (r = parse_geometry(o, c)) < 0 ||
        (r = parse_names(o, c)) < 0 ||
        (r = vd_opts_get_bool(o, "lazy_refcounts", false, &c->lazy)) < 0 ||
        (r = vd_opts_get_bool(o, "extended_l2", false, &c->ext_l2)) < 0 ||
        (r = vd_opts_get_bool(o, "data_file_raw", false, &c->data_raw)) < 0)
        return r;
    c->backing = vd_opts_get(o, "backing_file");
    c->backing_fmt = vd_opts_get(o, "backing_fmt");
    c->data_file = vd_opts_get(o, "data_file");
    if ((r = check_v2_limits(c)) < 0)
        return r;
    if (c->ext_l2 && c->cluster_size < 16384)
        return vd_error(EINVAL, "Extended L2 entries are only supported with cluster sizes "
                        "of at least 16384 bytes");
    if (c->data_raw && !c->data_file)
        return vd_error(EINVAL, "data-file-raw requires data-file");
    if (c->data_raw && c->backing)
        return vd_error(EINVAL, "Backing file and data-file-raw cannot be used at the same time");
    if (c->backing && c->prealloc != VD_PREALLOC_OFF && !c->ext_l2)
        return vd_error(EINVAL, "Backing file and preallocation can only be used at the "
                        "same time if extended_l2 is on");
    if (c->backing && strlen(c->backing) > QC_MAX_BACKING_NAME)
        return vd_error(EINVAL, "Backing file name too long");
    if (c->size > INT64_MAX)
        return vd_error(EFBIG, "Image size too large");
    return 0;
}

/* ---- the first clusters ---- */

/* Append one header extension at *pos; false when it does not fit. */
static bool put_ext(uint8_t *h, size_t cap, size_t *pos, uint32_t type, const void *d,
                    size_t len)
{
    size_t total = 8 + (len + 7) / 8 * 8;

    if (*pos + total > cap)
        return false;
    be32_put(h + *pos, type);
    be32_put(h + *pos + 4, (uint32_t)len);
    memcpy(h + *pos + 8, d, len);
    *pos += total;
    return true;
}

/* Feature name table bytes. */
static void feature_table(uint8_t *t)
{
    for (size_t i = 0; i < VD_ARRAY_SIZE(qc_features); i++) {
        t[48 * i] = qc_features[i].type;
        t[48 * i + 1] = qc_features[i].bit;
        strncpy((char *)t + 48 * i + 2, qc_features[i].name, 46);
    }
}

/* Fill the header cluster. */
static int build_header(const struct qc_create *c, uint8_t *h, uint64_t l1_size)
{
    uint8_t ft[48 * VD_ARRAY_SIZE(qc_features)] = { 0 };
    size_t pos = c->version >= 3 ? QC_HEADER_LEN_OUT : QC_V2_HEADER_LEN;
    uint64_t incompat = (c->ext_l2 ? QC_INCOMPAT_EXTL2 : 0) |
                        (c->compression ? QC_INCOMPAT_COMPRESSION : 0) |
                        (c->data_file ? QC_INCOMPAT_DATA_FILE : 0);
    bool ok = true;

    be32_put(h, QC_MAGIC);
    be32_put(h + 4, c->version);
    be32_put(h + 20, c->cluster_bits);
    be64_put(h + 24, c->size);
    be32_put(h + 36, (uint32_t)l1_size);
    be64_put(h + 40, l1_size ? 3 * c->cluster_size : 0);
    be64_put(h + 48, c->cluster_size);
    be32_put(h + 56, 1);
    if (c->version >= 3) {
        be64_put(h + 72, incompat);
        be64_put(h + 80, c->lazy ? QC_COMPAT_LAZY : 0);
        be64_put(h + 88, c->data_raw ? QC_AUTOCLEAR_DATA_RAW : 0);
        be32_put(h + 96, c->refcount_order);
        be32_put(h + 100, QC_HEADER_LEN_OUT);
        h[104] = (uint8_t)c->compression;
    }
    if (c->backing && c->backing_fmt)
        ok &= put_ext(h, c->cluster_size, &pos, QC_EXT_BACKING_FMT, c->backing_fmt,
                      strlen(c->backing_fmt));
    if (c->data_file)
        ok &= put_ext(h, c->cluster_size, &pos, QC_EXT_DATA_FILE, c->data_file,
                      strlen(c->data_file));
    if (c->version >= 3) {
        /* As QEMU: the table is left out when it would not fit. */
        size_t room = c->cluster_size - 8 - (c->backing ? strlen(c->backing) : 0);
        feature_table(ft);
        if (pos + 8 + sizeof(ft) <= room)
            put_ext(h, c->cluster_size, &pos, QC_EXT_FEATURES, ft, sizeof(ft));
    }
    ok &= pos + 8 <= c->cluster_size;
    pos += 8;                      /* end of extensions */
    if (c->backing) {
        size_t bl = strlen(c->backing);
        ok &= pos + bl <= c->cluster_size;
        if (ok) {
            be64_put(h + 8, pos);
            be32_put(h + 16, (uint32_t)bl);
            memcpy(h + pos, c->backing, bl);
        }
    }
    return ok ? 0 : vd_error(EINVAL, "qcow2: header extensions do not fit in one cluster");
}

/* Refcount block for clusters [0, n). */
static void set_refcounts(const struct qc_create *c, uint8_t *b, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t bit = i << c->refcount_order;
        if (c->refcount_order >= 3) {
            uint64_t bytes = 1ull << (c->refcount_order - 3);
            b[bit / 8 + bytes - 1] = 1;                 /* big endian 1 */
        } else {
            b[bit / 8] |= (uint8_t)(1u << (bit % 8));
        }
    }
}

/* Write header, refcount table, refcount block and L1 table. */
static int write_layout(vd_node *f, const struct qc_create *c)
{
    uint64_t cs = c->cluster_size, per_l1 = 1ull << (c->cluster_bits * 2 - (c->ext_l2 ? 4 : 3));
    uint64_t l1_size = div_round_up(c->size, per_l1), l1_cl = div_round_up(l1_size * 8, cs);
    uint64_t used = 3 + l1_cl;
    uint8_t *buf;
    int r;

    if (l1_size * 8 > QC_MAX_L1_BYTES)
        return vd_error(EFBIG, "Image size too large for this cluster size");
    if (used > (cs * 8) >> c->refcount_order)
        return vd_error(EFBIG, "Image size too large for this cluster size");
    if (!(buf = calloc(3, cs)))
        return vd_error(ENOMEM, "out of memory");
    r = build_header(c, buf, l1_size);
    if (r >= 0) {
        be64_put(buf + cs, 2 * cs);                    /* refcount table[0] */
        set_refcounts(c, buf + 2 * cs, used);
        r = vd_truncate(f, 3 * cs + l1_size * 8, true, VD_PREALLOC_OFF);
    }
    if (r >= 0)
        r = vd_pwrite(f, 0, 3 * cs, buf, 0);
    free(buf);
    if (r >= 0 && l1_size && !(buf = calloc(1, l1_size * 8)))
        return vd_error(ENOMEM, "out of memory");
    if (r >= 0 && l1_size) {
        r = vd_pwrite(f, 3 * cs, l1_size * 8, buf, 0);
        free(buf);
    }
    return r;
}

/* Options for the protocol-level file (and the data file). */
static vd_opts *proto_opts(vd_opts *o)
{
    vd_opts *p = vd_opts_new();
    static const char *const keys[] = { "nocow", "extent_size_hint", NULL };

    if (!p)
        return NULL;
    vd_opts_set(p, "size", "0");
    for (int i = 0; keys[i]; i++)
        if (vd_opts_get(o, keys[i]))
            vd_opts_set(p, keys[i], vd_opts_get(o, keys[i]));
    return p;
}

/* Create the external data file, sized as the image. */
static int create_data_file(const char *image, const struct qc_create *c)
{
    vd_opts *p = vd_opts_new();
    char sz[32];
    int r;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    snprintf(sz, sizeof(sz), "%llu", (unsigned long long)c->size);
    vd_opts_set(p, "size", sz);
    r = vd_protocol_create(c->data_file, p);
    vd_opts_free(p);
    return r < 0 ? vd_error_prefix(r, "Could not create data file") : 0;
}

/* Open the new image and preallocate it. */
static int prealloc_new(const char *filename, const struct qc_create *c)
{
    vd_node *n = NULL;
    int r = vd_open(&n, filename, "qcow2", NULL, VD_O_RDWR | VD_O_NO_BACKING | VD_O_CREATE);

    if (r < 0)
        return r;
    r = qcow2_preallocate(n, 0, c->size, c->data_raw && c->prealloc == VD_PREALLOC_OFF
                                         ? VD_PREALLOC_METADATA : c->prealloc);
    if (r >= 0)
        r = vd_flush(n);
    vd_close(n);
    return r;
}

/* See qcow2.h. */
int qcow2_create(const char *filename, vd_opts *opts)
{
    struct qc_create c;
    vd_node *f = NULL;
    vd_opts *p;
    int r;

    if ((r = parse_create(opts, &c)) < 0)
        return r;
    if (c.backing && !c.backing_fmt)
        c.backing_fmt = NULL;
    if (!(p = proto_opts(opts)))
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, p);
    vd_opts_free(p);
    if (r < 0)
        return r;
    if (c.data_file && (r = create_data_file(filename, &c)) < 0)
        return r;
    if ((r = vd_open(&f, filename, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) < 0)
        return r;
    r = write_layout(f, &c);
    if (r >= 0)
        r = vd_flush(f);
    vd_close(f);
    if (r >= 0 && (c.prealloc != VD_PREALLOC_OFF || c.data_raw))
        r = prealloc_new(filename, &c);
    return r;
}

/* ---- measure ---- */

/* Refcount table and block bytes to count `clusters` clusters and
 * themselves (the fixed point QEMU computes). */
static uint64_t refcount_meta(uint64_t clusters, uint64_t cs, uint32_t order)
{
    uint64_t per_block = (cs * 8) >> order, per_table = cs / 8, t = 0, b = 0, last, cur = 0;

    do {
        last = cur;
        b = div_round_up(clusters + t + b, per_block);
        t = div_round_up(b, per_table);
        cur = clusters + b + t;
    } while (cur != last);
    return (b + t) * cs;
}

/* See qcow2.h. */
uint64_t qcow2_prealloc_size(uint64_t size, uint64_t cs, uint32_t order, bool ext_l2)
{
    uint64_t esz = ext_l2 ? 16 : 8, aligned = div_round_up(size, cs) * cs;
    uint64_t meta = cs, l2e, l1e;

    l2e = div_round_up(aligned / cs, cs / esz) * (cs / esz);
    meta += l2e * esz;
    l1e = div_round_up(l2e * esz / cs, cs / 8) * (cs / 8);
    meta += l1e * 8;
    meta += refcount_meta((meta + aligned) / cs, cs, order);
    return meta + aligned;
}

/* Guest bytes a copy of src needs, cluster-rounded (QEMU's walk). */
static int source_required(vd_node *src, uint64_t cs, uint64_t ssize, uint64_t *req)
{
    uint64_t off = 0, pnum;

    *req = 0;
    while (off < ssize) {
        uint64_t map;
        vd_node *f;
        int depth;
        int r = vd_block_status_above(src, off, ssize - off, &pnum, &map, &f, &depth);
        if (r < 0)
            return r;
        if (!pnum)
            break;
        if (!(r & VD_BS_ZERO) && (r & VD_BS_DATA) && (r & VD_BS_ALLOCATED)) {
            pnum = div_round_up(off + pnum, cs) * cs - off;
            *req += off % cs + pnum;
        }
        off += pnum;
    }
    return 0;
}

/* See qcow2.h. */
int qcow2_measure(vd_opts *opts, vd_node *src, uint64_t size_in, struct vd_measure_info *out)
{
    struct qc_create c;
    uint64_t vsize, req = 0;
    int r;

    if ((r = parse_create(opts, &c)) < 0)
        return r;
    memset(out, 0, sizeof(*out));
    if (src) {
        int64_t l = vd_getlength(src);
        if (l < 0)
            return (int)l;
        vsize = div_round_up((uint64_t)l, c.cluster_size) * c.cluster_size;
        if (c.backing)
            req = vsize;
        else if ((r = source_required(src, c.cluster_size, (uint64_t)l, &req)) < 0)
            return r;
        out->has_bitmaps = src->drv == &qcow2_driver;
    } else {
        vsize = div_round_up(size_in, c.cluster_size) * c.cluster_size;
    }
    if (c.prealloc == VD_PREALLOC_FULL || c.prealloc == VD_PREALLOC_FALLOC)
        req = vsize;
    out->fully_allocated = qcow2_prealloc_size(vsize, c.cluster_size, c.refcount_order,
                                               c.ext_l2);
    out->required = out->fully_allocated - vsize + req;
    return 0;
}
