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
    struct qc_crypt_create crypt;
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

/* All create options, checked in QEMU's order. */
static int parse_create(vd_opts *o, struct qc_create *c)
{
    int r;

    memset(c, 0, sizeof(*c));
    if ((r = vd_opts_get_size(o, "size", 0, &c->size)) < 0 ||
        (r = qcow2_crypto_parse_create(o, &c->crypt)) < 0 ||
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
    if (c->size > INT64_MAX - 511)
        return vd_error(EFBIG, "Image size too large");
    c->size = div_round_up(c->size, 512) * 512;   /* whole sectors, as QEMU stores it */
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

/* See qcow2.h. */
size_t qcow2_feature_table(uint8_t *t)
{
    if (t)
        feature_table(t);
    return 48 * VD_ARRAY_SIZE(qc_features);
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
    if (c->version >= 3 && c->cluster_size > QC_FEATURES_MIN_CLUSTER) {
        /* As QEMU: left out too when it would not fit. */
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

/* L1 entries of a new image. */
static uint64_t new_l1_size(const struct qc_create *c)
{
    uint64_t per_l1 = 1ull << (c->cluster_bits * 2 - (c->ext_l2 ? 4 : 3));

    return div_round_up(c->size, per_l1);
}

/* Does the L1 table fit in the range of the first refcount block, after
 * header, refcount table and that block?  Else it is allocated as QEMU
 * allocates it (place_l1). */
static bool l1_fits(const struct qc_create *c)
{
    uint64_t l1_cl = div_round_up(new_l1_size(c) * 8, c->cluster_size);

    return 3 + l1_cl <= (c->cluster_size * 8) >> c->refcount_order;
}

/* Write header, refcount table, refcount block and L1 table (without L1
 * table and size when it does not fit). */
static int write_layout(vd_node *f, const struct qc_create *c)
{
    uint64_t cs = c->cluster_size, l1_size = l1_fits(c) ? new_l1_size(c) : 0;
    uint64_t used = 3 + div_round_up(l1_size * 8, cs);
    struct qc_create hc = *c;
    uint8_t *buf;
    int r;

    if (new_l1_size(c) * 8 > QC_MAX_L1_BYTES)
        return vd_error(EFBIG, "Image size too large for this cluster size");
    if (!l1_size)
        hc.size = 0;               /* place_l1 sets it */
    if (!(buf = calloc(3, cs)))
        return vd_error(ENOMEM, "out of memory");
    r = build_header(&hc, buf, l1_size);
    if (r >= 0) {
        be64_put(buf + cs, 2 * cs);                    /* refcount table[0] */
        set_refcounts(c, buf + 2 * cs, used);
        r = vd_truncate(f, 3 * cs + l1_size * 8, false, VD_PREALLOC_OFF);
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

/* An L1 table too large for the first refcount block's range: allocate
 * it in the new image as QEMU does (refcount blocks follow it), then
 * record the size. */
static int place_l1(const char *filename, const struct qc_create *c)
{
    struct qcow2_state *s;
    vd_node *n = NULL;
    int r = vd_open(&n, filename, "qcow2", NULL, VD_O_RDWR | VD_O_NO_BACKING | VD_O_CREATE);

    if (r < 0)
        return r;
    s = n->state;
    pthread_mutex_lock(&s->lock);
    if ((r = qcow2_prepare_write(n)) >= 0 && (r = qcow2_grow_l1(n, new_l1_size(c))) >= 0 &&
        (r = qcow2_flush_caches(n)) >= 0 && (r = qcow2_write_header_u64(n, QH_SIZE, c->size)) >= 0)
        s->size = c->size;
    pthread_mutex_unlock(&s->lock);
    if (r >= 0)
        r = vd_flush(n);
    vd_close(n);
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

/* Create the external data file.  As QEMU: empty when the image is
 * preallocated (data_file_raw implies metadata), so that preallocation
 * grows it with its own mode; else sized as the image, as QEMU's plain
 * truncate leaves it. */
static int create_data_file(const char *image, const struct qc_create *c)
{
    vd_opts *p = vd_opts_new();
    bool grown_later = c->prealloc != VD_PREALLOC_OFF || c->data_raw;
    char sz[32];
    int r;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    snprintf(sz, sizeof(sz), "%llu", grown_later ? 0ull : (unsigned long long)c->size);
    vd_opts_set(p, "size", sz);
    r = vd_protocol_create(c->data_file, p);
    vd_opts_free(p);
    return r < 0 ? vd_error_prefix(r, "Could not create data file") : 0;
}

/* Write len zero bytes at off of f (real data, as a copy-on-write does). */
static int write_zero_data(vd_node *f, uint64_t off, uint64_t len)
{
    void *z = calloc(1, len);
    int r;

    if (!z)
        return vd_error(ENOMEM, "out of memory");
    r = vd_pwrite(f, off, len, z, 0);
    free(z);
    return r;
}

/* The tail write into a data file comes before any grow and extends the
 * file itself.  vdisk grows the file first, which writes its first block
 * when it was empty (QEMU's new-file rule): punch that block again, as
 * QEMU's extending write leaves it a hole (4096: the file driver's first
 * block). */
static int data_file_tail(vd_node *d, uint64_t size, uint64_t tail)
{
    int64_t cur = vd_getlength(d);
    uint64_t first = VD_MIN(round_down(size, 4096), 4096), end;
    int r = cur < 0 ? (int)cur : 0;

    if (ADD_OVERFLOW(size, tail, &end) || end > INT64_MAX)
        return vd_error(EFBIG, "Image size too large");
    if (r >= 0 && (uint64_t)cur < end)
        r = vd_truncate(d, end, false, VD_PREALLOC_OFF);
    if (r >= 0)
        r = write_zero_data(d, size, tail);
    if (r >= 0 && cur == 0 && first)
        r = vd_discard(d, 0, first);
    return r;
}

/* QEMU maps the clusters of any preallocation with a data file like a
 * guest write of [0, size): the copy-on-write writes zeroes from the
 * guest end to the end of its subcluster, before the data file is grown
 * (host offsets are guest offsets), so the grow then finds it long enough
 * and preallocates nothing.  (Metadata preallocation in the image file
 * writes its copy-on-write parts itself: qcow2_preallocate.) */
static int write_cow_tail(vd_node *n, uint64_t size)
{
    struct qcow2_state *s = n->state;
    uint64_t tail = is_aligned(size, s->sc_size) ? 0 : s->sc_size - (size & (s->sc_size - 1));

    if (!tail || size == 0 || !s->data_external)
        return 0;
    return data_file_tail(s->data, size, tail);
}

/* Open the new image and preallocate it (data_file_raw alone implies
 * metadata preallocation, as in QEMU). */
static int prealloc_new(const char *filename, const struct qc_create *c)
{
    int mode = c->data_raw && c->prealloc == VD_PREALLOC_OFF ? VD_PREALLOC_METADATA
                                                            : c->prealloc;
    vd_node *n = NULL;
    int r = vd_open(&n, filename, "qcow2", NULL, VD_O_RDWR | VD_O_NO_BACKING | VD_O_CREATE);

    if (r < 0)
        return r;
    r = write_cow_tail(n, c->size);
    if (r >= 0)
        r = qcow2_preallocate(n, 0, c->size, mode);
    if (r >= 0)
        r = vd_flush(n);
    vd_close(n);
    return r;
}

/* Encrypt the new image last, as QEMU does (after any preallocation:
 * preallocated clusters then hold zeroes in clear, as QEMU leaves them). */
static int encrypt_new(const char *filename, vd_opts *opts, const struct qc_create *c)
{
    vd_node *n = NULL;
    int r = vd_open(&n, filename, "qcow2", NULL, VD_O_RDWR | VD_O_NO_BACKING | VD_O_CREATE);

    if (r < 0)
        return r;
    r = qcow2_crypto_setup(n, opts, &c->crypt);
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
    if (r >= 0 && !l1_fits(&c))
        r = place_l1(filename, &c);
    if (r >= 0 && (c.prealloc != VD_PREALLOC_OFF || c.data_raw))
        r = prealloc_new(filename, &c);
    if (r >= 0 && c.crypt.method)
        r = encrypt_new(filename, opts, &c);
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

/* Guest bytes a copy of src needs (QEMU's walk): every target cluster
 * that any allocated, non-zero data extent of the chain touches counts
 * whole; zero and unallocated extents count nothing. */
static int source_required(vd_node *src, uint64_t cs, uint64_t ssize, uint64_t *req)
{
    uint64_t off = 0, pnum, end;
    int depth, r = 0;

    *req = 0;
    while (off < ssize) {
        r = vd_block_status_above(src, off, ssize - off, &pnum, NULL, NULL, &depth);
        if (r < 0 || !pnum)
            break;
        if (!(r & VD_BS_ZERO) && (r & VD_BS_DATA) && (r & VD_BS_ALLOCATED)) {
            end = div_round_up(off + pnum, cs) * cs;   /* off + pnum <= ssize < 2^63 */
            *req += end - round_down(off, cs);
            pnum = end - off;
        }
        off += pnum;
    }
    return r < 0 ? r : 0;
}

/* What measure reads of -o.  QEMU's measure parses these few itself, in
 * this order and with these messages (not create's), and ignores the
 * other create options. */
struct qc_measure_opts {
    uint64_t size, cluster_size;
    uint32_t version, refcount_order;
    int prealloc;
    bool ext_l2, backing;
    uint64_t luks;                 /* LUKS header bytes (whole clusters) */
};

/* extended_l2 and cluster_size (at least 16k with extended L2). */
static int measure_geometry(vd_opts *o, struct qc_measure_opts *m)
{
    uint64_t cs;
    int r;

    if ((r = vd_opts_get_bool(o, "extended_l2", false, &m->ext_l2)) < 0 ||
        (r = vd_opts_get_size(o, "cluster_size", 65536, &cs)) < 0)
        return r;
    if (cs < 512 || cs > (2u << 20) || !is_power_of_2(cs))
        return vd_error(EINVAL, "Cluster size must be a power of two between 512 and 2048k");
    if (m->ext_l2 && cs < 16384)
        return vd_error(EINVAL, "Extended L2 entries are only supported with cluster sizes "
                        "of at least 16384 bytes");
    m->cluster_size = cs;
    return 0;
}

/* compat (only "0.10" and "1.1" here), then refcount_bits against it. */
static int measure_version(vd_opts *o, struct qc_measure_opts *m)
{
    const char *v = vd_opts_get(o, "compat");
    uint64_t rb;
    int r;

    if (!v || !strcmp(v, "1.1"))
        m->version = 3;
    else if (!strcmp(v, "0.10"))
        m->version = 2;
    else
        return vd_error(EINVAL, "Invalid compatibility level: '%s'", v);
    if ((r = vd_opts_get_u64(o, "refcount_bits", 16, &rb)) < 0)
        return r;
    if (rb > 64 || !is_power_of_2(rb))
        return vd_error(EINVAL, "Refcount width must be a power of two and may not exceed "
                        "64 bits");
    if (m->version < 3 && rb != 16)
        return vd_error(EINVAL, "Different refcount widths than 16 bits require "
                        "compatibility level 1.1 or above (use compat=1.1 or greater)");
    m->refcount_order = (uint32_t)__builtin_ctzll(rb);
    return 0;
}

/* preallocation, backing_file, and LUKS (its header, in whole clusters,
 * counts in both numbers; legacy aes changes nothing). */
static int measure_misc(vd_opts *o, struct qc_measure_opts *m)
{
    const char *pa = vd_opts_get(o, "preallocation"), *ef = vd_opts_get(o, "encrypt.format");
    struct qc_crypt_create cc;
    int r;

    m->prealloc = VD_PREALLOC_OFF;
    if (pa && (m->prealloc = vd_prealloc_parse(pa)) < 0)
        return vd_error(EINVAL, "invalid parameter value: %s", pa);
    m->backing = vd_opts_get(o, "backing_file") != NULL;
    if (!ef || strcmp(ef, "luks"))
        return 0;
    if ((r = qcow2_crypto_parse_create(o, &cc)) < 0)
        return r;
    m->luks = cc.payload;
    return 0;
}

/* The size to check: --size without a source, else -o size.  QEMU rounds
 * it up to a cluster with wrap-around (a size within a cluster of 2^64
 * becomes 0), then refuses more L2 tables than a 32 MiB L1 table holds. */
static int measure_size(vd_opts *o, uint64_t size_in, bool has_src,
                        struct qc_measure_opts *m)
{
    uint64_t esz = m->ext_l2 ? 16 : 8, l2_tables;
    int r;

    m->size = size_in;
    if (has_src && (r = vd_opts_get_size(o, "size", 0, &m->size)) < 0)
        return r;
    if (!round_up_checked(m->size, m->cluster_size, &m->size))
        m->size = 0;
    l2_tables = div_round_up(m->size / m->cluster_size, m->cluster_size / esz);
    if (l2_tables > (32u << 20) / 8)
        return vd_error(EFBIG, "The image size is too large (try using a larger cluster "
                        "size)");
    return 0;
}

/* All of -o as QEMU's measure reads it. */
static int parse_measure(vd_opts *o, uint64_t size_in, bool has_src,
                         struct qc_measure_opts *m)
{
    int r;

    memset(m, 0, sizeof(*m));
    if ((r = measure_geometry(o, m)) < 0 || (r = measure_version(o, m)) < 0 ||
        (r = measure_misc(o, m)) < 0)
        return r;
    m->luks = div_round_up(m->luks, m->cluster_size) * m->cluster_size;
    return measure_size(o, size_in, has_src, m);
}

/* A walk over the source's bitmap directory, summing QEMU's estimate of
 * what the bitmaps take in the target. */
struct bm_walk {
    const uint8_t *dir;
    uint64_t dsize, len, cs;       /* directory bytes, bitmap length, target cluster */
    uint64_t dir_bytes, total;     /* target directory bytes; bitmaps and tables */
    bool overflow;
};

/* Account the entry at p: its bitmap fully allocated plus its table, and
 * its directory entry (without extra data).  Returns the entry's size in
 * the source directory; 0 when malformed or the sum overflows (flagged). */
static uint64_t bitmap_entry(struct bm_walk *w, uint64_t p)
{
    uint64_t nlen, xlen, bits, clusters, bytes;

    if (w->dsize - p < 24)
        return 0;
    nlen = be16_get(w->dir + p + 18);
    xlen = be32_get(w->dir + p + 20);
    if (24 + nlen + xlen > w->dsize - p)
        return 0;
    bits = div_round_up(w->len, 1ull << VD_MIN(w->dir[p + 17], 63u));
    clusters = div_round_up(div_round_up(bits, 8), w->cs);   /* < 2^61 / cs */
    bytes = clusters * w->cs + div_round_up(clusters * 8, w->cs) * w->cs;
    if ((w->overflow = ADD_OVERFLOW(w->total, bytes, &w->total)))
        return 0;
    w->dir_bytes += (24 + nlen + 7) / 8 * 8;  /* < 64 KiB per entry */
    return (24 + nlen + xlen + 7) / 8 * 8;
}

/* Space the source's persistent bitmaps need in the target (QEMU's
 * estimate): each bitmap fully allocated, its table, and the directory;
 * a bitmap spans the source's length rounded up to 512 bytes. */
static int bitmaps_size(vd_node *src, uint64_t cs, uint64_t *out)
{
    struct qcow2_state *s = src->state;
    struct bm_walk w = { .dsize = s->bitmap_dir_size, .cs = cs };
    int64_t l = vd_getlength(src);
    uint8_t *dir;
    uint64_t p = 0, esize = 1;
    int r;

    *out = 0;
    if (!s->has_bitmaps_ext || !w.dsize)
        return 0;
    if (l < 0)
        return (int)l;
    w.len = div_round_up((uint64_t)l, 512) * 512;
    if (!(dir = malloc(w.dsize)))
        return vd_error(ENOMEM, "out of memory");
    w.dir = dir;
    r = qcow2_read_padded(src->file, s->bitmap_dir_offset, w.dsize, dir);
    for (; r >= 0 && p < w.dsize && esize; p += esize)
        esize = bitmap_entry(&w, p);
    free(dir);
    if (r < 0)
        return r;
    if (w.overflow || ADD_OVERFLOW(w.total, div_round_up(w.dir_bytes, cs) * cs, out))
        return vd_error(EFBIG, "bitmaps size too large");
    return 0;
}

/* Whether both ends keep persistent bitmaps: a v3 target and a v3 qcow2
 * source. */
static bool bitmaps_supported(const struct qc_measure_opts *m, vd_node *src)
{
    return m->version >= 3 && src->drv == &qcow2_driver &&
           ((struct qcow2_state *)src->state)->version >= 3;
}

/* Data bytes of the target: the source's, or all with a backing file
 * (the chain may share nothing) or full/falloc preallocation. */
static int data_required(const struct qc_measure_opts *m, vd_node *src, uint64_t ssize,
                         uint64_t vsize, uint64_t *req)
{
    *req = 0;
    if (m->prealloc == VD_PREALLOC_FULL || m->prealloc == VD_PREALLOC_FALLOC ||
        (src && m->backing)) {
        *req = vsize;
        return 0;
    }
    return src ? source_required(src, m->cluster_size, ssize, req) : 0;
}

/* See qcow2.h. */
int qcow2_measure(vd_opts *opts, vd_node *src, uint64_t size_in, struct vd_measure_info *out)
{
    struct qc_measure_opts m;
    uint64_t vsize, ssize = 0, req;
    int r;

    if ((r = parse_measure(opts, size_in, src != NULL, &m)) < 0)
        return r;
    memset(out, 0, sizeof(*out));
    vsize = m.size;
    if (src) {
        int64_t l = vd_getlength(src);
        if (l < 0)
            return (int)l;
        ssize = (uint64_t)l;
        vsize = div_round_up(ssize, m.cluster_size) * m.cluster_size;  /* ssize < 2^63 */
    }
    if ((r = data_required(&m, src, ssize, vsize, &req)) < 0)
        return r;
    if (src && (out->has_bitmaps = bitmaps_supported(&m, src)) &&
        (r = bitmaps_size(src, m.cluster_size, &out->bitmaps)) < 0)
        return r;
    out->fully_allocated = qcow2_prealloc_size(vsize, m.cluster_size, m.refcount_order,
                                               m.ext_l2);
    out->required = out->fully_allocated - vsize + req + m.luks;
    out->fully_allocated += m.luks;
    return 0;
}
