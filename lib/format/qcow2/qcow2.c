/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: probing, opening (every header field and extension validated as
 * hostile input), header updates, flush, close, info and the driver table.
 * The other subsystems: cache.c (metadata cache), refcount.c (host cluster
 * allocation), cluster.c (L1/L2 mapping), io.c (guest I/O and the write
 * ordering invariants), compress.c, create.c (create, measure, resize). */
#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "format/qcow2/check.h"
#include "format/qcow2/qcow2.h"
#include "util/json.h"

#define QC_DEFAULT_L2_CACHE_MAX (32u << 20)
#define QC_MAX_SNAPSHOTS 65536u
#define QC_MAX_BITMAPS 65535u
#define QC_MAX_BITMAP_DIR (1024u * QC_MAX_BITMAPS)
#define QC_DEFAULT_SLICE 4096u
#define QC_GROW_AHEAD (32ull << 20)

/* Score 100 on the magic with a version of at least 2 (1 is qcow). */
static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 8 && be32_get(buf) == QC_MAGIC && be32_get(buf + 4) >= 2)
        return 100;
    return 0;
}

/* See qcow2.h. */
int qcow2_read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf)
{
    uint64_t end = (uint64_t)vd_getlength(f), l;

    l = off >= end ? 0 : VD_MIN(len, end - off);
    if (l < len)
        memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(f, off, l, buf, 0) : 0;
}

/* See qcow2.h. */
int qcow2_grow_file(vd_node *n, vd_node *f, uint64_t end)
{
    struct qcow2_state *s = n->state;
    int64_t cur = vd_getlength(f);
    uint64_t ahead = end;
    int r = 0;

    if (cur < 0 || (uint64_t)cur < end) {
        /* The image file grows QC_GROW_AHEAD at a time (one resize per
         * many allocations); qcow2_close cuts the unused tail. */
        if (f == n->file && !s->exact_growth && round_up_checked(end, QC_GROW_AHEAD, &ahead) &&
            ahead > end &&
            ahead <= INT64_MAX && vd_truncate(f, ahead, true, VD_PREALLOC_OFF) >= 0)
            s->grown_to = ahead;
        else if ((r = vd_truncate(f, end, true, VD_PREALLOC_OFF)) < 0)
            return vd_error_prefix(r, "qcow2: could not grow the image file to %llu bytes",
                                   (unsigned long long)end);
    }
    if (f == n->file && end > s->file_end)
        s->file_end = end;
    return 0;
}

/* See qcow2.h. */
void qcow2_trim_grown_tail(vd_node *n)
{
    struct qcow2_state *s = n->state;

    if (s->grown_to && (uint64_t)vd_getlength(n->file) == s->grown_to &&
        s->file_end < s->grown_to)
        vd_truncate(n->file, s->file_end, true, VD_PREALLOC_OFF);
    s->grown_to = 0;
}

/* See qcow2.h. */
int qcow2_write_header_u64(vd_node *n, unsigned off, uint64_t v)
{
    uint8_t b[8];

    be64_put(b, v);
    return vd_pwrite(n->file, off, 8, b, 0);
}

/* Set the corrupt bit in the header (writable v3 images only). */
static void mark_corrupt(vd_node *n)
{
    struct qcow2_state *s = n->state;

    if (n->read_only || s->version < 3 || s->corrupt)
        return;
    s->corrupt = true;
    s->incompat |= QC_INCOMPAT_CORRUPT;
    if (qcow2_write_header_u64(n, QH_INCOMPAT, s->incompat) == 0)
        vd_flush(n->file);
}

/* See qcow2.h. */
int qcow2_corrupt(vd_node *n, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    mark_corrupt(n);
    if (!n->read_only && ((struct qcow2_state *)n->state)->version >= 3)
        return vd_error(EIO, "Marking image as corrupt: %s; further corruption events "
                        "will be suppressed", msg);
    return vd_error(EIO, "Image is corrupt: %s", msg);
}

/* ---- header parsing ---- */

/* Geometry derived from cluster_bits, refcount_order and features. */
static void derive_geometry(struct qcow2_state *s)
{
    s->cluster_size = 1ull << s->cluster_bits;
    s->ext_l2 = s->incompat & QC_INCOMPAT_EXTL2;
    s->l2_entry_size = s->ext_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->ext_l2 ? 4 : 3);
    s->sc_per_cluster = s->ext_l2 ? 32 : 1;
    s->sc_bits = s->cluster_bits - (s->ext_l2 ? 5 : 0);
    s->sc_size = 1ull << s->sc_bits;
    s->refcount_bits = 1u << s->refcount_order;
    s->refblock_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_max = s->refcount_order == 6 ? UINT64_MAX
                    : (1ull << s->refcount_bits) - 1;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->x_mask = (1ull << s->csize_shift) - 1;
}

/* Decode the fixed header fields from buf (at least 104 bytes). */
static void decode_header(struct qcow2_state *s, const uint8_t *h)
{
    s->version = be32_get(h + 4);
    s->backing_offset = be64_get(h + 8);
    s->backing_len = be32_get(h + 16);
    s->cluster_bits = be32_get(h + 20);
    s->size = be64_get(h + 24);
    s->crypt_method = be32_get(h + 32);
    s->l1_size = be32_get(h + 36);
    s->l1_offset = be64_get(h + 40);
    s->reftable_offset = be64_get(h + 48);
    s->reftable_clusters = be32_get(h + 56);
    s->nb_snapshots = be32_get(h + 60);
    s->snapshots_offset = be64_get(h + 64);
    if (s->version >= 3) {
        s->incompat = be64_get(h + 72);
        s->compat = be64_get(h + 80);
        s->autoclear = be64_get(h + 88);
        s->refcount_order = be32_get(h + 96);
        s->header_length = be32_get(h + 100);
    } else {
        s->refcount_order = 4;
        s->header_length = QC_V2_HEADER_LEN;
    }
}

/* Name of an unknown incompatible feature from the image's table. */
static void feature_names(const uint8_t *tbl, size_t len, uint64_t bits, char *out,
                          size_t outlen)
{
    size_t used = 0;

    out[0] = 0;
    for (int b = 0; b < 64; b++) {
        char name[64];
        if (!(bits & (1ull << b)))
            continue;
        snprintf(name, sizeof(name), "Unknown incompatible feature: %llx",
                 (unsigned long long)(1ull << b));
        for (size_t i = 0; tbl && i + 48 <= len; i += 48)
            if (tbl[i] == 0 && tbl[i + 1] == b)
                snprintf(name, sizeof(name), "%.46s", (const char *)tbl + i + 2);
        used += (size_t)snprintf(out + used, outlen > used ? outlen - used : 0, "%s%s",
                                 used ? ", " : "", name);
        if (used >= outlen)
            break;
    }
}

/* Version, cluster size, header length, refcount order. */
static int check_basic_fields(const struct qcow2_state *s, uint64_t file_len)
{
    if (s->version != 2 && s->version != 3)
        return vd_error(ENOTSUP, "Unsupported qcow2 version %u", s->version);
    if (s->cluster_bits < QC_MIN_CLUSTER_BITS || s->cluster_bits > QC_MAX_CLUSTER_BITS)
        return vd_error(EINVAL, "Unsupported cluster size: 2^%u", s->cluster_bits);
    if (s->version >= 3) {
        if (s->header_length < QC_V3_HEADER_LEN)
            return vd_error(EINVAL, "qcow2 header too short");
        if (s->header_length % 8)
            return vd_error(EINVAL, "qcow2 header length is not a multiple of 8");
        if (s->header_length > (1u << s->cluster_bits))
            return vd_error(EINVAL, "qcow2 header exceeds cluster size");
        if (s->refcount_order > 6)
            return vd_error(EINVAL, "Reference count entry width too large; may not "
                            "exceed 64 bits");
    }
    if (s->backing_offset > (1ull << s->cluster_bits))
        return vd_error(EINVAL, "Invalid backing file offset");
    if ((s->incompat & QC_INCOMPAT_EXTL2) && s->cluster_bits < 14)
        return vd_error(EINVAL, "Extended L2 entries are only supported with cluster "
                        "sizes of at least 16384 bytes");
    return 0;
}

/* Check a table as QEMU does (size cap, alignment, no overflow), then
 * that it lies inside the file. */
static int check_table(const struct qcow2_state *s, uint64_t off, uint64_t entries,
                       uint64_t esize, uint64_t max_bytes, uint64_t file_len,
                       const char *what)
{
    uint64_t bytes = entries * esize, end;

    if (entries > max_bytes / esize)
        return vd_error(EFBIG, "%s too large", what);
    if ((uint64_t)INT64_MAX - bytes < off || !is_aligned(off, s->cluster_size))
        return vd_error(EINVAL, "%s offset invalid", what);
    end = off + bytes;
    if (entries && (off < s->cluster_size || end > file_len))
        return vd_error(EINVAL, "%s at 0x%llx (%llu bytes) is outside the image file",
                        what, (unsigned long long)off, (unsigned long long)bytes);
    return 0;
}

/* Refcount table, snapshot table, L1 table and size, in QEMU's order. */
static int check_tables(struct qcow2_state *s, uint64_t file_len)
{
    uint64_t need, per_l1;
    int r;

    if ((r = check_table(s, s->reftable_offset, (uint64_t)s->reftable_clusters <<
                         (s->cluster_bits - 3), 8, QC_MAX_REFTABLE_BYTES, UINT64_MAX,
                         "Reference count table")) < 0)
        return r;
    if (s->reftable_clusters == 0)
        return vd_error(EINVAL, "Image does not contain a reference count table");
    if ((r = check_table(s, s->snapshots_offset, s->nb_snapshots, 40,
                         1024ull * QC_MAX_SNAPSHOTS, UINT64_MAX, "Snapshot table")) < 0 ||
        (r = check_table(s, s->l1_offset, s->l1_size, 8, QC_MAX_L1_BYTES, UINT64_MAX,
                         "Active L1 table")) < 0)
        return r;
    per_l1 = 1ull << (s->l2_bits + s->cluster_bits);   /* guest bytes per L1 entry */
    need = div_round_up(s->size, per_l1);
    if (need > INT32_MAX)
        return vd_error(EFBIG, "Image is too big");
    if (need > s->l1_size)
        return vd_error(EINVAL, "L1 table is too small");
    /* Beyond QEMU: tables outside the file make every access fail (the
     * image still opens, so that check can report on it). */
    if ((r = check_table(s, s->reftable_offset, (uint64_t)s->reftable_clusters <<
                         (s->cluster_bits - 3), 8, QC_MAX_REFTABLE_BYTES, file_len,
                         "Reference count table")) < 0 ||
        (r = check_table(s, s->l1_offset, s->l1_size, 8, QC_MAX_L1_BYTES, file_len,
                         "Active L1 table")) < 0)
        snprintf(s->bad_layout, sizeof(s->bad_layout), "%s", vd_errmsg());
    if (s->backing_offset) {
        if (s->backing_offset > s->cluster_size)
            return vd_error(EINVAL, "Invalid backing file offset");
        if (s->backing_len > VD_MIN((uint64_t)QC_MAX_BACKING_NAME,
                                    s->cluster_size - s->backing_offset))
            return vd_error(EINVAL, "Backing file name too long");
    }
    return 0;
}

/* Incompatible features, corrupt bit, compression type, encryption. */
static int check_features(vd_node *n, const uint8_t *ftbl, size_t flen,
                          const uint8_t *h)
{
    struct qcow2_state *s = n->state;
    uint64_t unknown = s->incompat & ~QC_INCOMPAT_KNOWN;
    char names[512];

    if (unknown) {
        feature_names(ftbl, flen, unknown, names, sizeof(names));
        return vd_error(ENOTSUP, "Unsupported qcow2 feature(s): %s", names);
    }
    if ((s->incompat & QC_INCOMPAT_CORRUPT) && !n->read_only)
        return vd_error(EACCES, "qcow2: Image is corrupt; cannot be opened read/write");
    s->corrupt = s->incompat & QC_INCOMPAT_CORRUPT;
    s->compression_type = s->header_length > 104 ? h[104] : 0;
    if (s->compression_type > QC_COMP_ZSTD)
        return vd_error(ENOTSUP, "qcow2: unknown compression type: %u", s->compression_type);
    if (s->incompat & QC_INCOMPAT_COMPRESSION) {
        if (s->compression_type == QC_COMP_ZLIB)
            return vd_error(EINVAL, "qcow2: Compression type incompatible feature bit "
                            "must not be set");
    } else if (s->compression_type != QC_COMP_ZLIB) {
        return vd_error(EINVAL, "qcow2: Compression type incompatible feature bit must be set");
    }
    if ((s->autoclear & QC_AUTOCLEAR_DATA_RAW) && !(s->incompat & QC_INCOMPAT_DATA_FILE))
        return vd_error(EINVAL, "data-file-raw requires a data file");
    return 0;
}

/* Copy a string extension (not NUL-terminated on disk). */
static int ext_string(const uint8_t *d, uint32_t len, char **out, const char *what)
{
    if (len > QC_MAX_EXT_NAME)
        return vd_error(EINVAL, "ERROR: %s: len=%u too large", what, len);
    free(*out);
    *out = strndup((const char *)d, len);
    if (!*out)
        return vd_error(ENOMEM, "out of memory");
    if (strlen(*out) != len)
        return vd_error(EINVAL, "ERROR: %s contains a NUL byte", what);
    return 0;
}

/* Remember where the bitmaps extension points (for info); checked. */
static int ext_bitmaps(struct qcow2_state *s, const uint8_t *d, uint32_t len,
                       uint64_t file_len)
{
    uint32_t nb;
    uint64_t dsize, doff;

    if (len != 24)
        return vd_error(EINVAL, "bitmaps_ext: Invalid extension length");
    if (!(s->autoclear & QC_AUTOCLEAR_BITMAPS)) {
        /* Inconsistent: ignored, with QEMU's warning (nothing to return). */
        fprintf(stderr, "%s: warning: a program lacking bitmap support modified this "
                "file, so all bitmaps are now considered inconsistent\nSome clusters may "
                "be leaked, run 'qemu-img check -r' on the image file to fix.",  /* no newline, as QEMU */
                program_invocation_short_name);
        return 0;
    }
    nb = be32_get(d);
    dsize = be64_get(d + 8);
    doff = be64_get(d + 16);
    (void)file_len;                /* a directory past the end reads as zeroes */
    if (be32_get(d + 4))
        return vd_error(EINVAL, "bitmaps_ext: Reserved field is not zero");
    if (nb > QC_MAX_BITMAPS)
        return vd_error(EINVAL, "bitmaps_ext: Image has %u bitmaps, exceeding the QEMU "
                        "supported maximum of %u", nb, QC_MAX_BITMAPS);
    if (nb == 0)
        return vd_error(EINVAL, "found bitmaps extension with zero bitmaps");
    if (!is_aligned(doff, s->cluster_size))
        return vd_error(EINVAL, "bitmaps_ext: invalid bitmap directory offset");
    if (dsize > QC_MAX_BITMAP_DIR)
        return vd_error(EINVAL, "bitmaps_ext: bitmap directory size (%llu) exceeds the "
                        "maximum supported size (%u)", (unsigned long long)dsize,
                        QC_MAX_BITMAP_DIR);
    s->has_bitmaps_ext = true;
    s->bitmap_count = nb;
    s->bitmap_dir_offset = doff;
    s->bitmap_dir_size = dsize;
    return 0;
}

/* Walk the header extensions in the first cluster. */
static int parse_extensions(vd_node *n, const uint8_t *c, uint64_t file_len,
                            const uint8_t **ftbl, size_t *flen)
{
    struct qcow2_state *s = n->state;
    uint64_t off = s->header_length;
    uint64_t end = s->backing_offset && s->backing_offset > off ? s->backing_offset
                                                                 : s->cluster_size;
    int r;

    end = VD_MIN(end, s->cluster_size);
    while (off + 8 <= end) {
        uint32_t type = be32_get(c + off), len = be32_get(c + off + 4);
        const uint8_t *d = c + off + 8;
        if (type == QC_EXT_END)
            return 0;
        if (len > end - off - 8)
            return vd_error(EINVAL, "qcow2: header extension 0x%x: len=%u too large",
                            type, len);
        r = 0;
        if (type == QC_EXT_BACKING_FMT)
            r = ext_string(d, len, &s->backing_fmt, "ext_backing_format");
        else if (type == QC_EXT_DATA_FILE)
            r = ext_string(d, len, &s->data_file_name, "ext_data_file");
        else if (type == QC_EXT_FEATURES) {
            *ftbl = d;
            *flen = len;
        } else if (type == QC_EXT_BITMAPS)
            r = ext_bitmaps(s, d, len, file_len);
        else if (type == QC_EXT_CRYPTO && len >= 16) {
            s->has_crypto_ext = true;
            s->crypt_off = be64_get(d);
            s->crypt_len = be64_get(d + 8);
        }
        if (r < 0)
            return r;
        off += 8 + ((uint64_t)len + 7) / 8 * 8;
    }
    return 0;
}

/* Read the backing file name and record it on the node. */
static int read_backing(vd_node *n, const uint8_t *c)
{
    struct qcow2_state *s = n->state;
    char *name;
    int r;

    if (!s->backing_offset || !s->backing_len)
        return 0;
    if (s->incompat & QC_INCOMPAT_DATA_FILE && s->autoclear & QC_AUTOCLEAR_DATA_RAW)
        return vd_error(EINVAL, "qcow2: a raw external data file conflicts with a "
                        "backing file");
    name = strndup((const char *)c + s->backing_offset, s->backing_len);
    if (!name)
        return vd_error(ENOMEM, "out of memory");
    r = vd_node_set_backing_name(n, name, s->backing_fmt);
    free(name);
    return r;
}

/* Load a table of 64-bit big-endian entries into host order. */
static int load_table(vd_node *n, uint64_t off, uint64_t entries, uint64_t **out)
{
    uint64_t *t;
    int r;

    if ((r = vd_untrusted_table_check(n, entries * 8, "qcow2 L1 table")) < 0)
        return r;
    if (!(t = vd_calloc_array(entries ? entries : 1, 8)))
        return vd_error(ENOMEM, "out of memory");
    if (entries && (r = qcow2_read_padded(n->file, off, entries * 8, t)) < 0) {
        free(t);
        return r;
    }
    for (uint64_t i = 0; i < entries; i++)
        t[i] = be64_get((const uint8_t *)&t[i]);
    *out = t;
    return 0;
}

/* ---- caches ---- */

/* Sizes of the two caches from the options (QEMU's rules). */
static int cache_sizes(vd_node *n, vd_opts *opts, uint64_t *l2, uint64_t *rc,
                       uint64_t *slice)
{
    struct qcow2_state *s = n->state;
    bool has_l2 = vd_opts_has(opts, "l2-cache-size");
    bool has_rc = vd_opts_has(opts, "refcount-cache-size");
    bool has_all = vd_opts_has(opts, "cache-size");
    uint64_t all, need, min_rc = 4 * s->cluster_size;
    int r;

    if ((r = vd_opts_get_size(opts, "l2-cache-size", 0, l2)) < 0 ||
        (r = vd_opts_get_size(opts, "refcount-cache-size", min_rc, rc)) < 0 ||
        (r = vd_opts_get_size(opts, "cache-size", 0, &all)) < 0 ||
        (r = vd_opts_get_size(opts, "l2-cache-entry-size",
                              VD_MIN((uint64_t)QC_DEFAULT_SLICE, s->cluster_size), slice)) < 0)
        return r;
    if (has_l2 && has_rc && has_all)
        return vd_error(EINVAL, "cache-size, l2-cache-size and refcount-cache-size may "
                        "not be set at the same time");
    if (*slice < 512 || *slice > s->cluster_size || !is_power_of_2(*slice))
        return vd_error(EINVAL, "L2 cache entry size must be a power of two between "
                        "512 and the cluster size (%llu)",
                        (unsigned long long)s->cluster_size);
    need = div_round_up(s->size, s->cluster_size) * s->l2_entry_size;
    need = VD_MAX(need, 2 * *slice);
    if (has_all) {
        if (!has_l2 && !has_rc) {
            *l2 = VD_MIN(all > min_rc ? all - min_rc : 0, need);
            *rc = all > *l2 ? all - *l2 : 0;
        } else if (has_l2) {
            if (all < *l2)
                return vd_error(EINVAL, "l2-cache-size may not exceed cache-size");
            *rc = all - *l2;
        } else {
            if (all < *rc)
                return vd_error(EINVAL, "refcount-cache-size may not exceed cache-size");
            *l2 = all - *rc;
        }
    } else if (!has_l2) {
        *l2 = VD_MIN((uint64_t)QC_DEFAULT_L2_CACHE_MAX, need);
    }
    *l2 = VD_MAX(*l2, 2 * *slice);
    *rc = VD_MAX(*rc, min_rc);
    return 0;
}

static int start_cleaner(struct qcow2_state *s);

/* L2 cache write-back: nothing but L2 tables may be overwritten. */
static int l2_write_check(void *ctx, uint64_t off, uint64_t len)
{
    return qcow2_overlap_check(ctx, QC_OL_ACTIVE_L2, off, len);
}

/* Refcount cache write-back: nothing but refcount blocks may be overwritten. */
static int rb_write_check(void *ctx, uint64_t off, uint64_t len)
{
    return qcow2_overlap_check(ctx, QC_OL_REFCOUNT_BLOCK, off, len);
}

/* Before L2 entries that name new data reach the disk: make an external
 * data file stable too (invariant 2 of write.c). */
static int flush_data_file(void *ctx)
{
    vd_node *n = ctx;
    struct qcow2_state *s = n->state;

    return s->data_external && s->data ? vd_flush(s->data) : 0;
}

/* Events and hooks of freshly made caches. */
static int setup_caches(vd_node *n)
{
    struct qcow2_state *s = n->state;

    if (!s->l2_cache || !s->rc_cache)
        return vd_error(ENOMEM, "out of memory");
    qc_cache_set_write_event(s->l2_cache, "l2_update");
    qc_cache_set_write_event(s->rc_cache, "refblock_update_part");
    qc_cache_set_hooks(s->l2_cache, l2_write_check, flush_data_file, n);
    qc_cache_set_hooks(s->rc_cache, rb_write_check, NULL, n);
    return 0;
}

/* Create the L2 and refcount caches. */
static int open_caches(vd_node *n, vd_opts *opts)
{
    struct qcow2_state *s = n->state;
    uint64_t l2, rc, slice, interval;
    int r;

    if ((r = cache_sizes(n, opts, &l2, &rc, &slice)) < 0 ||
        (r = vd_opts_get_u64(opts, "cache-clean-interval", 600, &interval)) < 0)
        return r;
    if (interval > UINT32_MAX)
        return vd_error(EINVAL, "Cache clean interval too big");
    s->l2_slice_size = (uint32_t)slice;
    s->status_span = vd_opts_has(opts, "l2-cache-entry-size") ? (uint32_t)slice
                                                                : (uint32_t)s->cluster_size;
    s->clean_interval = (uint32_t)interval;
    s->l2_cache = qc_cache_new(n->file, (uint32_t)slice, l2 / slice, "l2_load");
    s->rc_cache = qc_cache_new(n->file, (uint32_t)s->cluster_size, rc / s->cluster_size,
                               "refblock_load");
    if ((r = setup_caches(n)) < 0)
        return r;
    return start_cleaner(s);
}

/* Cleaner thread: every interval, drop cache entries unused that long. */
static void *cleaner_main(void *opaque)
{
    struct qcow2_state *s = opaque;
    struct timespec t;

    pthread_mutex_lock(&s->lock);
    while (!s->cleaner_stop) {
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_sec += s->clean_interval;
        if (pthread_cond_timedwait(&s->cleaner_cond, &s->lock, &t) == ETIMEDOUT &&
            !s->cleaner_stop) {
            qc_cache_clean(s->l2_cache, s->clean_interval);
            qc_cache_clean(s->rc_cache, s->clean_interval);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Start the cleaner when cache-clean-interval is not 0. */
static int start_cleaner(struct qcow2_state *s)
{
    pthread_cond_init(&s->cleaner_cond, NULL);
    s->cleaner_cond_ok = true;
    if (!s->clean_interval)
        return 0;
    if (pthread_create(&s->cleaner, NULL, cleaner_main, s))
        return vd_error(EAGAIN, "qcow2: cannot start the cache cleaner thread");
    s->cleaner_running = true;
    return 0;
}

/* Stop the cleaner thread (before the caches go). */
static void stop_cleaner(struct qcow2_state *s)
{
    if (s->cleaner_running) {
        pthread_mutex_lock(&s->lock);
        s->cleaner_stop = true;
        pthread_cond_signal(&s->cleaner_cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->cleaner, NULL);
        s->cleaner_running = false;
    }
}

/* ---- data file ---- */

/* Resolve name against the directory of the image file. */
static char *resolve_relative(const char *image, const char *name)
{
    char *copy, *out;

    if (name[0] == '/' || !strchr(image, '/'))
        return strdup(name);
    if (!(copy = strdup(image)))
        return NULL;
    if (asprintf(&out, "%s/%s", dirname(copy), name) < 0)
        out = NULL;
    free(copy);
    return out;
}

/* Open the external data file (option "data-file" or the header's name). */
static int open_data_file(vd_node *n, vd_opts *opts, int flags)
{
    struct qcow2_state *s = n->state;
    vd_opts *dopts = vd_opts_extract_prefix(opts, "data-file");
    const char *name = vd_opts_get(opts, "data-file");
    char *full = NULL;
    int r;

    if (!dopts)
        return vd_error(ENOMEM, "out of memory");
    if (!(s->incompat & QC_INCOMPAT_DATA_FILE)) {
        bool given = name || vd_opts_count(dopts);
        vd_opts_free(dopts);
        if (given)
            return vd_error(EINVAL, "'data-file' can only be set for images with an "
                            "external data file");
        s->data = n->file;
        return 0;
    }
    if (!name && !vd_opts_count(dopts) && !s->data_file_name) {
        vd_opts_free(dopts);
        return vd_error(EINVAL, "Could not open data file: Missing data-file or "
                        "external data file name");
    }
    if (!name && !vd_opts_count(dopts))
        name = full = resolve_relative(n->filename, s->data_file_name);
    r = vd_open_child(&s->data, n, name, vd_opts_has(dopts, "driver") ? NULL : "raw",
                      dopts, (flags & ~VD_O_NO_BACKING) | VD_O_NO_PROBE);
    vd_opts_del(opts, "data-file");
    free(full);
    if (r < 0)
        return vd_error_prefix(r, "Could not open data file");
    s->data_external = true;
    s->data_raw = s->autoclear & QC_AUTOCLEAR_DATA_RAW;
    return 0;
}

/* ---- open ---- */

/* Read the whole first cluster (zero-filled past the end of the file). */
static int read_header_cluster(vd_node *n, uint8_t **out)
{
    struct qcow2_state *s = n->state;
    uint8_t h[QC_V3_HEADER_LEN];
    int r;

    if (vd_getlength(n->file) < (int64_t)QC_V2_HEADER_LEN)
        return vd_error(EINVAL, "Image is not in qcow2 format");
    if ((r = qcow2_read_padded(n->file, 0, sizeof(h), h)) < 0)
        return vd_error_prefix(r, "Could not read qcow2 header");
    if (be32_get(h) != QC_MAGIC)
        return vd_error(EINVAL, "Image is not in qcow2 format");
    decode_header(s, h);
    if ((r = check_basic_fields(s, 0)) < 0)
        return r;
    if (!(*out = malloc(1u << s->cluster_bits)))
        return vd_error(ENOMEM, "out of memory");
    return qcow2_read_padded(n->file, 0, 1u << s->cluster_bits, *out);
}

/* Open-time options besides the cache sizes. */
static int open_misc_opts(vd_node *n, vd_opts *opts)
{
    struct qcow2_state *s = n->state;
    bool lazy;
    int r;

    if ((r = vd_opts_get_bool(opts, "lazy-refcounts", s->compat & QC_COMPAT_LAZY, &lazy)) < 0)
        return r;
    if (lazy && s->version < 3)
        return vd_error(EINVAL, "Lazy refcounts require a qcow2 image with at least "
                        "qemu 1.1 compatibility level");
    s->lazy = lazy;
    return qcow2_overlap_opts(n, opts);
}

/* Remove the options this driver consumed. */
static void drop_known_opts(vd_opts *opts)
{
    static const char *const keys[] = {
        "l2-cache-size", "refcount-cache-size", "cache-size", "l2-cache-entry-size",
        "cache-clean-interval", "lazy-refcounts", "encrypt.key-secret", NULL,
    };
    for (int i = 0; keys[i]; i++)
        vd_opts_del(opts, keys[i]);
}

static int qcow2_check_hook(vd_node *n, struct vd_check_result *res, int fix);

/* A dirty image (lazy refcounts, not closed cleanly) opened read-write:
 * rebuild its refcounts and clear the dirty bit before anything else, as
 * QEMU does; "check" opens (VD_O_CHECK) leave that to the check itself. */
static int repair_dirty(vd_node *n)
{
    struct vd_check_result res;
    int r = qcow2_check_hook(n, &res, 3);

    if (r < 0)
        return vd_error_prefix(r, "Could not repair dirty image");
    if (res.check_errors || res.corruptions)
        return vd_error(EIO, "Could not repair dirty image");
    return 0;
}

/* Parse and validate everything; load L1 and refcount tables. */
static int qcow2_open(vd_node *n, vd_opts *opts, int flags)
{
    struct qcow2_state *s = n->state;
    const uint8_t *ftbl = NULL;
    size_t flen = 0;
    uint8_t *c = NULL;
    int64_t file_len = vd_getlength(n->file);
    int r;

    pthread_mutex_init(&s->lock, NULL);
    if (file_len < 0)
        return (int)file_len;
    s->file_end = (uint64_t)file_len;
    if ((r = read_header_cluster(n, &c)) < 0)
        goto out;
    derive_geometry(s);
    if ((r = check_basic_fields(s, (uint64_t)file_len)) < 0 ||
        (r = parse_extensions(n, c, (uint64_t)file_len, &ftbl, &flen)) < 0 ||
        (r = check_features(n, ftbl, flen, c)) < 0 ||
        (r = check_tables(s, (uint64_t)file_len)) < 0 ||
        (r = read_backing(n, c)) < 0 ||
        (r = open_misc_opts(n, opts)) < 0 ||
        (r = qcow2_crypto_open(n, opts, flags)) < 0 ||
        (r = open_caches(n, opts)) < 0)
        goto out;
    drop_known_opts(opts);
    if ((r = load_table(n, s->l1_offset, s->l1_size, &s->l1)) < 0 ||
        (r = qcow2_refcount_init(n)) < 0 ||
        (r = open_data_file(n, opts, flags)) < 0 ||
        (r = qcow2_snapshot_open(n, opts, flags)) < 0 ||
        (r = qcow2_bitmaps_open(n)) < 0)
        goto out;
    s->needs_repair = (s->incompat & QC_INCOMPAT_DIRTY) && !n->read_only;
    r = s->needs_repair && !(flags & VD_O_CHECK) ? repair_dirty(n) : 0;
out:
    free(c);
    return r;
}

/* ---- writes to the header ---- */

/* See qcow2.h. */
int qcow2_prepare_write(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint64_t keep = s->autoclear & (QC_AUTOCLEAR_DATA_RAW |
                                    (s->has_bitmaps_ext ? QC_AUTOCLEAR_BITMAPS : 0));
    int r;

    if (s->write_prepared)
        return 0;
    if (s->corrupt)
        return vd_error(EACCES, "qcow2: Image is corrupt; cannot be written");
    if (s->bad_layout[0])
        return vd_error(EIO, "qcow2: %s", s->bad_layout);
    if (s->needs_repair)
        return vd_error(ENOTSUP, "qcow2: the image is dirty (lazy refcounts); repair "
                        "it with 'check -r all' before writing to it");
    if ((r = qcow2_bitmaps_mark_in_use(n)) < 0)
        return vd_error_prefix(r, "qcow2: could not mark the persistent bitmaps in use");
    if (s->version >= 3 && s->autoclear != keep) {
        /* Unknown autoclear bits (and the bitmaps bit of a bitmaps
         * extension this driver could not read) are cleared before
         * anything else changes. */
        if ((r = qcow2_write_header_u64(n, QH_AUTOCLEAR, keep)) < 0 ||
            (r = vd_flush(n->file)) < 0)
            return r;
        s->autoclear = keep;
    }
    if (s->lazy && !(s->incompat & QC_INCOMPAT_DIRTY)) {
        if ((r = qcow2_write_header_u64(n, QH_INCOMPAT, s->incompat | QC_INCOMPAT_DIRTY)) < 0 ||
            (r = vd_flush(n->file)) < 0)
            return r;
        s->incompat |= QC_INCOMPAT_DIRTY;
    }
    s->write_prepared = true;
    return 0;
}

/* See qcow2.h: L2 entries go after the refcounts they rely on unless
 * refcounts are lazy (the dependency is set where clusters are linked). */
int qcow2_flush_caches(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    if ((r = qc_cache_flush(s->l2_cache)) < 0 || (r = qc_cache_flush(s->rc_cache)) < 0)
        return r;
    return 0;
}

/* Write back metadata; the core flushes the file after. */
static int qcow2_flush(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    if (n->read_only)
        return 0;
    if ((r = qcow2_bitmaps_store(n)) < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    r = qcow2_flush_caches(n);
    pthread_mutex_unlock(&s->lock);
    if (r >= 0 && s->data_external)
        r = vd_flush(s->data);
    return r;
}

/* Clear the dirty bit after everything reached the disk. */
static int mark_clean(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    if (!(s->incompat & QC_INCOMPAT_DIRTY))
        return 0;
    if ((r = vd_flush(n->file)) < 0)
        return r;
    s->incompat &= ~QC_INCOMPAT_DIRTY;
    if ((r = qcow2_write_header_u64(n, QH_INCOMPAT, s->incompat)) < 0)
        return r;
    return vd_flush(n->file);
}

/* Write back and free everything. */
static void qcow2_close(vd_node *n)
{
    struct qcow2_state *s = n->state;

    stop_cleaner(s);
    if (!n->read_only && s->l2_cache && s->rc_cache) {
        int r = qcow2_bitmaps_store(n);
        if (r >= 0)
            r = qcow2_flush_caches(n);
        if (r >= 0 && s->data_external)
            r = vd_flush(s->data);
        if (r >= 0)
            qcow2_trim_grown_tail(n);
        if (r >= 0 && s->write_prepared)
            mark_clean(n);
    }
    qcow2_crypto_close(n);
    qc_cache_free(s->l2_cache);
    qc_cache_free(s->rc_cache);
    if (s->data_external)
        vd_close(s->data);
    free(s->l1);
    free(s->reftable);
    free(s->backing_fmt);
    free(s->data_file_name);
    qcow2_snapshot_close(n);
    qcow2_bitmaps_close(n);
    pthread_mutex_destroy(&s->lock);
    if (s->cleaner_cond_ok)
        pthread_cond_destroy(&s->cleaner_cond);
}

static int64_t qcow2_getlength(vd_node *n)
{
    return (int64_t)((struct qcow2_state *)n->state)->size;
}

/* Host bytes of the image file and an external data file. */
static int64_t qcow2_get_allocated_size(vd_node *n)
{
    return vd_get_allocated_size(n->file);    /* an external data file not counted, as QEMU */
}

/* New images read as zeroes unless they have a backing file or a data file
 * that is not known to. */
static bool qcow2_has_zero_init(vd_node *n)
{
    struct qcow2_state *s = n->state;
    const struct vd_driver *d;

    if (!s->data_external)
        return true;
    d = s->data->drv;
    return d->has_zero_init && d->has_zero_init(s->data);
}

/* ---- info ---- */

/* Flags of a bitmap directory entry as QEMU names them. */
static vd_json *bitmap_flags(uint32_t f)
{
    vd_json *a = vd_json_new_array();

    if (a && (f & 1))
        vd_json_append(a, vd_json_new_string("in-use"));
    if (a && (f & 2))
        vd_json_append(a, vd_json_new_string("auto"));
    return a;
}

/* Bitmap list from the directory (best effort: NULL when unreadable). */
static vd_json *bitmaps_info(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint8_t ext[24], *dir = NULL;
    vd_json *list = NULL;
    uint64_t off = s->header_length, dsize;

    /* Find the extension again in the header cluster. */
    while (off + 8 <= s->cluster_size) {
        uint8_t h[8];
        if (qcow2_read_padded(n->file, off, 8, h) < 0 || be32_get(h) == QC_EXT_END)
            return NULL;
        if (be32_get(h) == QC_EXT_BITMAPS)
            break;
        off += 8 + ((uint64_t)be32_get(h + 4) + 7) / 8 * 8;
    }
    if (off + 32 > s->cluster_size || qcow2_read_padded(n->file, off + 8, 24, ext) < 0)
        return NULL;
    dsize = be64_get(ext + 8);
    if (!(dir = malloc(dsize ? dsize : 1)) ||
        qcow2_read_padded(n->file, be64_get(ext + 16), dsize, dir) < 0 ||
        !(list = vd_json_new_array())) {
        free(dir);
        return NULL;
    }
    for (uint64_t p = 0, i = 0; i < be32_get(ext) && p + 24 <= dsize; i++) {
        uint32_t nlen = be16_get(dir + p + 18), xlen = be32_get(dir + p + 20);
        uint64_t esize = 24 + (uint64_t)xlen + nlen;
        vd_json *b;
        char *name;
        if (p + esize > dsize || !(b = vd_json_new_object()))
            break;
        name = strndup((char *)dir + p + 24 + xlen, nlen);
        vd_json_set(b, "flags", bitmap_flags(be32_get(dir + p + 12)));
        vd_json_set_str(b, "name", name ? name : "");
        vd_json_set_uint(b, "granularity", 1ull << (dir[p + 17] & 63));
        free(name);
        vd_json_append(list, b);
        p += (esize + 7) / 8 * 8;
    }
    free(dir);
    return list;
}

/* Format-specific info in the key order qemu-img 7.2 prints. */
static int qcow2_info(vd_node *n, struct vd_json *d)
{
    struct qcow2_state *s = n->state;
    vd_json *bm;

    vd_json_set_str(d, "compat", s->version >= 3 ? "1.1" : "0.10");
    vd_json_set_str(d, "compression-type",
                    s->compression_type == QC_COMP_ZSTD ? "zstd" : "zlib");
    if (s->version >= 3)
        vd_json_set_bool(d, "lazy-refcounts", s->compat & QC_COMPAT_LAZY);
    if (s->has_bitmaps_ext && (bm = bitmaps_info(n)))
        vd_json_set(d, "bitmaps", bm);
    vd_json_set_int(d, "refcount-bits", s->refcount_bits);
    qcow2_crypto_info(n, d);
    if (s->data_file_name)
        vd_json_set_str(d, "data-file", s->data_file_name);
    if (s->incompat & QC_INCOMPAT_DATA_FILE)
        vd_json_set_bool(d, "data-file-raw", s->autoclear & QC_AUTOCLEAR_DATA_RAW);
    if (s->version >= 3) {
        vd_json_set_bool(d, "corrupt", s->incompat & QC_INCOMPAT_CORRUPT);
        vd_json_set_bool(d, "extended-l2", s->ext_l2);
    }
    return 0;
}

/* Reload what a repair may have changed on disk: header fields, L1 and
 * refcount tables; cached tables are dropped. Lock held. */
static int reload_metadata(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint8_t h[QC_V3_HEADER_LEN];
    uint64_t l2 = (uint64_t)qc_cache_capacity(s->l2_cache);
    uint64_t rc = (uint64_t)qc_cache_capacity(s->rc_cache);
    int r;

    if ((r = qcow2_read_padded(n->file, 0, sizeof(h), h)) < 0)
        return r;
    s->l1_size = be32_get(h + 36);
    s->l1_offset = be64_get(h + 40);
    s->reftable_offset = be64_get(h + 48);
    s->reftable_clusters = be32_get(h + 56);
    s->nb_snapshots = be32_get(h + 60);
    s->snapshots_offset = be64_get(h + 64);
    if (s->version >= 3)
        s->incompat = be64_get(h + 72);
    qc_cache_free(s->l2_cache);
    qc_cache_free(s->rc_cache);
    free(s->l1);
    free(s->reftable);
    s->l1 = s->reftable = NULL;
    s->l2_cache = qc_cache_new(n->file, s->l2_slice_size, l2, "l2_load");
    s->rc_cache = qc_cache_new(n->file, (uint32_t)s->cluster_size, rc, "refblock_load");
    if ((r = setup_caches(n)) < 0)
        return r;
    s->file_end = (uint64_t)vd_getlength(n->file);
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    if ((r = load_table(n, s->l1_offset, s->l1_size, &s->l1)) < 0 ||
        (r = qcow2_refcount_init(n)) < 0 || (r = qcow2_snapshot_reload(n)) < 0)
        return r;
    s->needs_repair = false;
    s->corrupt = s->incompat & QC_INCOMPAT_CORRUPT;
    return 0;
}

/* check hook: write back our caches, run the independent walker
 * (check.c), and after a repair reload the metadata it rewrote. */
static int qcow2_check_hook(vd_node *n, struct vd_check_result *res, int fix)
{
    struct qcow2_state *s = n->state;
    int r = 0, r2;

    pthread_mutex_lock(&s->lock);
    if (!n->read_only)
        r = qcow2_flush_caches(n);
    if (r >= 0)
        r = qcow2_check(n, res, fix);
    if (fix && !n->read_only && (r2 = reload_metadata(n)) < 0 && r >= 0)
        r = r2;
    pthread_mutex_unlock(&s->lock);
    return r;
}

static int64_t qcow2_cluster_size(vd_node *n)
{
    return (int64_t)((struct qcow2_state *)n->state)->cluster_size;
}

static bool qcow2_is_dirty(vd_node *n)
{
    return ((struct qcow2_state *)n->state)->incompat & QC_INCOMPAT_DIRTY;
}

/* ---- tables ---- */

/* The guest data is encrypted (luks or legacy aes). */
static bool qcow2_is_encrypted(vd_node *n)
{
    return ((struct qcow2_state *)n->state)->crypt_method != 0;
}

static const struct vd_opt_desc qcow2_open_opts[] = {
    { "l2-cache-size", VD_OPT_SIZE, "Maximum L2 table cache size", NULL },
    { "l2-cache-entry-size", VD_OPT_SIZE, "Size of each entry in the L2 cache", NULL },
    { "refcount-cache-size", VD_OPT_SIZE, "Maximum refcount block cache size", NULL },
    { "cache-size", VD_OPT_SIZE, "Maximum combined metadata (L2 tables and refcount "
      "blocks) cache size", NULL },
    { "cache-clean-interval", VD_OPT_NUMBER, "Clean unused cache entries after this "
      "time (in seconds)", NULL },
    { "lazy-refcounts", VD_OPT_BOOL, "Postpone refcount updates", NULL },
    { "encrypt.key-secret", VD_OPT_STRING, "ID of secret providing qcow2 AES key or LUKS "
      "passphrase", NULL },
    { "data-file", VD_OPT_STRING, "External data file", NULL },
    { "pass-discard-request", VD_OPT_BOOL, "Pass guest discard requests to the layer below", NULL },
    { "pass-discard-snapshot", VD_OPT_BOOL, "Generate discard requests when snapshot "
      "related space is freed", NULL },
    { "pass-discard-other", VD_OPT_BOOL, "Generate discard requests when other clusters "
      "are freed", NULL },
    { "overlap-check", VD_OPT_STRING, "Selects which overlap checks to perform from a "
      "range of templates (none, constant, cached, all)", NULL },
    { "overlap-check.template", VD_OPT_STRING, "Selects which overlap checks to perform "
      "from a range of templates (none, constant, cached, all)", NULL },
    { "overlap-check.main-header", VD_OPT_BOOL, "Check for unintended writes into the "
      "main qcow2 header", NULL },
    { "overlap-check.active-l1", VD_OPT_BOOL, "Check for unintended writes into the "
      "active L1 table", NULL },
    { "overlap-check.active-l2", VD_OPT_BOOL, "Check for unintended writes into an "
      "active L2 table", NULL },
    { "overlap-check.refcount-table", VD_OPT_BOOL, "Check for unintended writes into the "
      "refcount table", NULL },
    { "overlap-check.refcount-block", VD_OPT_BOOL, "Check for unintended writes into a "
      "refcount block", NULL },
    { "overlap-check.snapshot-table", VD_OPT_BOOL, "Check for unintended writes into the "
      "snapshot table", NULL },
    { "overlap-check.inactive-l1", VD_OPT_BOOL, "Check for unintended writes into an "
      "inactive L1 table", NULL },
    { "overlap-check.inactive-l2", VD_OPT_BOOL, "Check for unintended writes into an "
      "inactive L2 table", NULL },
    { "overlap-check.bitmap-directory", VD_OPT_BOOL, "Check for unintended writes into "
      "the bitmap directory", NULL },
    { "snapshot.id", VD_OPT_STRING, "Read this internal snapshot (read-only)", NULL },
    { "snapshot.name", VD_OPT_STRING, "Read this internal snapshot (read-only)", NULL },
    { NULL, 0, NULL, NULL },
};

/* -o options in the order qemu-img 7.2 prints its "Formatting" line; -o
 * help sorts them. */
static const struct vd_opt_desc qcow2_create_opts[] = {
    { "encryption", VD_OPT_BOOL, "Encrypt the image with format 'aes'. (Deprecated in "
      "favor of encrypt.format=aes)", NULL },
    { "encrypt.format", VD_OPT_STRING, "Encrypt the image, format choices: 'aes', 'luks'", NULL },
    { "encrypt.key-secret", VD_OPT_STRING, "ID of secret providing qcow AES key or LUKS "
      "passphrase", NULL },
    { "encrypt.cipher-alg", VD_OPT_STRING, "Name of encryption cipher algorithm", NULL },
    { "encrypt.cipher-mode", VD_OPT_STRING, "Name of encryption cipher mode", NULL },
    { "encrypt.ivgen-alg", VD_OPT_STRING, "Name of IV generator algorithm", NULL },
    { "encrypt.ivgen-hash-alg", VD_OPT_STRING, "Name of IV generator hash algorithm", NULL },
    { "encrypt.hash-alg", VD_OPT_STRING, "Name of encryption hash algorithm", NULL },
    { "encrypt.iter-time", VD_OPT_NUMBER, "Time to spend in PBKDF in milliseconds", NULL },
    { "cluster_size", VD_OPT_SIZE, "qcow2 cluster size", "65536" },
    { "extended_l2", VD_OPT_BOOL, "Extended L2 tables", "off" },
    { "preallocation", VD_OPT_STRING, "Preallocation mode (allowed values: off, "
      "metadata, falloc, full)", NULL },
    { "compression_type", VD_OPT_STRING, "Compression method used for image cluster "
      "compression", "zlib" },
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "compat", VD_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "backing_file", VD_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VD_OPT_STRING, "Image format of the base image", NULL },
    { "data_file", VD_OPT_STRING, "File name of an external data file", NULL },
    { "data_file_raw", VD_OPT_BOOL, "The external data file must stay valid as a raw "
      "image", NULL },
    { "lazy_refcounts", VD_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", VD_OPT_NUMBER, "Width of a reference count entry in bits", "16" },
    { NULL, 0, NULL, NULL },
};

const struct vd_driver qcow2_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "qcow2",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct qcow2_state),
    .open_opts = qcow2_open_opts,
    .create_opts = qcow2_create_opts,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .pread = qcow2_pread,
    .is_encrypted = qcow2_is_encrypted,
    .pwrite = qcow2_bm_pwrite,
    .pwrite_zeroes = qcow2_bm_pwrite_zeroes,
    .discard = qcow2_bm_discard,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status,
    .getlength = qcow2_getlength,
    .get_allocated_size = qcow2_get_allocated_size,
    .truncate = qcow2_bm_truncate,
    .create = qcow2_create,
    .measure = qcow2_measure,
    .info = qcow2_info,
    .check = qcow2_check_hook,
    .has_zero_init = qcow2_has_zero_init,
    .supports_backing = true,
    .pwrite_compressed = qcow2_bm_pwrite_compressed,
    .cluster_size = qcow2_cluster_size,
    .is_dirty = qcow2_is_dirty,
    .change_backing_file = qcow2_change_backing_file,
    .make_empty = qcow2_make_empty,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_goto = qcow2_bm_snapshot_goto,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_load = qcow2_snapshot_load,
    .bitmap = qcow2_bitmap_hook,
    .amend_opts = qcow2_amend_opts,
    .amend = qcow2_amend,
};
VD_DRIVER_REGISTER(qcow2_driver)
