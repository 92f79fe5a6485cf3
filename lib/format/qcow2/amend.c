/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2: amending the options of an existing image (qemu-img amend):
 * compat (1.1 <-> 0.10), lazy_refcounts, refcount_bits, size, and the
 * checks on backing_file, backing_fmt, data_file and data_file_raw, in
 * qemu-img 7.2's order and with its messages.
 *
 * Invariants kept (crash safety):
 *  1. The header cluster is rewritten whole with one write, after
 *     everything it will point to or rely on is flushed to the disk.
 *  2. A compat downgrade first turns every zero cluster into an
 *     unallocated one (no backing file) or an allocated cluster written
 *     with zeroes and flushed before the L2 entry points at it; the image
 *     stays a valid v3 image until the header switches to version 2.
 *  3. A refcount width change writes a complete new refcount table and
 *     blocks into free clusters, flushes them, switches the header with
 *     one write, and only then frees the old structures (a crash before
 *     the switch leaks clusters; after it, the old ones leak).
 * Every metadata step is preceded by a vd_event named amend_*. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2/qcow2.h"

#define EXT_HEAD 8u

/* What the -o options ask for. */
struct amend_req {
    uint32_t version;
    uint64_t size;                 /* 0: unchanged */
    const char *backing_file, *backing_fmt, *data_file;
    bool has_backing;              /* backing_file or backing_fmt given */
    bool lazy, data_raw;
    uint32_t refcount_bits;
    bool encrypt;                  /* encrypt.* given: key slots change */
};

/* Progress over the operations of one amend (QEMU's projection). */
struct amend_progress {
    void (*cb)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
    unsigned ops, done_ops;
    uint64_t step;                 /* L1 entries done (downgrade) */
};

/* Report step of total in the current operation. */
static void report(struct amend_progress *p, uint64_t step, uint64_t total)
{
    if (!p->cb || !p->ops || !total)
        return;
    p->cb(p->opaque, p->done_ops * total + step, (uint64_t)p->ops * total);
}

/* ---- the header cluster ---- */

/* A header cluster being assembled. */
struct hbuf {
    uint8_t *b;
    uint64_t pos, cap;
};

/* Append an extension (data padded to 8 bytes); -ENOSPC when full. */
static int hb_ext(struct hbuf *h, uint32_t type, const void *d, uint32_t len)
{
    uint64_t need = EXT_HEAD + ((uint64_t)len + 7) / 8 * 8;

    if (need > h->cap - h->pos)
        return -ENOSPC;
    be32_put(h->b + h->pos, type);
    be32_put(h->b + h->pos + 4, len);
    if (len)
        memcpy(h->b + h->pos + EXT_HEAD, d, len);
    h->pos += need;
    return 0;
}

/* Is an extension of this type written from the state, not copied? */
static bool ext_rebuilt(uint32_t type)
{
    return type == QC_EXT_END || type == QC_EXT_BACKING_FMT || type == QC_EXT_CRYPTO ||
           type == QC_EXT_FEATURES || type == QC_EXT_DATA_FILE;
}

/* Copy the old header's extensions that are kept as they are. */
static int copy_exts(const struct qcow2_state *s, const uint8_t *old, struct hbuf *h)
{
    uint64_t off = s->version >= 3 ? s->header_length : QC_V2_HEADER_LEN;
    uint64_t end = s->cluster_size;
    int r;

    if (s->backing_offset > off)
        end = VD_MIN(end, s->backing_offset);
    while (off + EXT_HEAD <= end) {
        uint32_t type = be32_get(old + off), len = be32_get(old + off + 4);
        if (type == QC_EXT_END || len > end - off - EXT_HEAD)
            break;
        if (!ext_rebuilt(type) && (r = hb_ext(h, type, old + off + EXT_HEAD, len)) < 0)
            return r;
        off += EXT_HEAD + ((uint64_t)len + 7) / 8 * 8;
    }
    return 0;
}

/* The crypto header extension from the state (offset, length). */
static int crypto_ext(const struct qcow2_state *s, struct hbuf *h)
{
    uint8_t d[16];

    be64_put(d, s->crypt_off);
    be64_put(d + 8, s->crypt_len);
    return hb_ext(h, QC_EXT_CRYPTO, d, sizeof(d));
}

/* The fixed part of the header from the state. */
static void put_fixed(const struct qcow2_state *s, const uint8_t *old, struct hbuf *h)
{
    memcpy(h->b, old, QC_V2_HEADER_LEN);
    be32_put(h->b + 4, s->version);
    be32_put(h->b + 32, s->crypt_method);
    be32_put(h->b + 36, s->l1_size);
    be64_put(h->b + 40, s->l1_offset);
    be64_put(h->b + 48, s->reftable_offset);
    be32_put(h->b + 56, s->reftable_clusters);
    h->pos = QC_V2_HEADER_LEN;
    if (s->version < 3)
        return;
    be64_put(h->b + 72, s->incompat);
    be64_put(h->b + 80, s->compat);
    be64_put(h->b + 88, s->autoclear);
    be32_put(h->b + 96, s->refcount_order);
    be32_put(h->b + 100, QC_HEADER_LEN_OUT);
    h->b[104] = s->compression_type;
    h->pos = QC_HEADER_LEN_OUT;
}

/* Build the whole header cluster from the state (old: the cluster on
 * disk, for what is copied). */
static int build_header(const struct qcow2_state *s, const uint8_t *old, struct hbuf *h,
                        const char *backing)
{
    uint64_t blen = backing ? strlen(backing) : 0;
    uint8_t ft[512];
    size_t flen = qcow2_feature_table(NULL);
    int r = 0;

    put_fixed(s, old, h);
    if (backing && s->backing_fmt)
        r = hb_ext(h, QC_EXT_BACKING_FMT, s->backing_fmt, (uint32_t)strlen(s->backing_fmt));
    if (r >= 0 && s->data_file_name)
        r = hb_ext(h, QC_EXT_DATA_FILE, s->data_file_name,
                   (uint32_t)strlen(s->data_file_name));
    if (r >= 0 && s->has_crypto_ext)     /* before the table, as QEMU */
        r = crypto_ext(s, h);
    if (r >= 0 && s->version >= 3 && s->cluster_size > QC_FEATURES_MIN_CLUSTER &&
        flen <= sizeof(ft) &&
        h->pos + EXT_HEAD + flen + EXT_HEAD + blen <= h->cap) {
        qcow2_feature_table(ft);
        r = hb_ext(h, QC_EXT_FEATURES, ft, (uint32_t)flen);
    }
    if (r >= 0)
        r = copy_exts(s, old, h);
    if (r >= 0)
        r = hb_ext(h, QC_EXT_END, NULL, 0);
    if (r < 0 || blen > h->cap - h->pos)
        return vd_error(ENOSPC, "No space left in the file header");
    be64_put(h->b + 8, blen ? h->pos : 0);
    be32_put(h->b + 16, (uint32_t)blen);
    memcpy(h->b + h->pos, backing ? backing : "", blen);
    return 0;
}

/* See qcow2.h. */
int qcow2_amend_write_header(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint8_t *old = malloc(s->cluster_size);
    struct hbuf h = { calloc(1, s->cluster_size), 0, s->cluster_size };
    const char *backing = n->backing_name;
    int r;

    if (!old || !h.b) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    if ((r = qcow2_read_padded(n->file, 0, s->cluster_size, old)) < 0 ||
        (r = build_header(s, old, &h, s->backing_len ? backing : NULL)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        goto out;
    if ((r = vd_pwrite(n->file, 0, s->cluster_size, h.b, 0)) < 0 ||
        (r = vd_flush(n->file)) < 0)
        goto out;
    s->header_length = s->version >= 3 ? QC_HEADER_LEN_OUT : QC_V2_HEADER_LEN;
    s->backing_offset = be64_get(h.b + 8);
out:
    free(old);
    free(h.b);
    if (r < 0)
        vd_error_prefix(r, "Failed to update the image header");
    return r;
}

/* ---- options ---- */

/* compat: 0.10/v2 or 1.1/v3. */
static int parse_compat(const char *v, uint32_t *version)
{
    if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
        *version = 2;
    else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
        *version = 3;
    else
        return vd_error(EINVAL, "Unknown compatibility level %s", v);
    return 0;
}

/* The encryption options: LUKS keyslot changes (crypto.c). */
static int check_encrypt(const struct qcow2_state *s, struct amend_req *q)
{
    if (!s->crypt_method)
        return vd_error(EINVAL, "Can't amend encryption options - encryption not present");
    if (s->crypt_method != 2)
        return vd_error(ENOTSUP, "Only LUKS encryption options can be amended");
    q->encrypt = true;
    return 0;
}

/* The keyslot change the encrypt.* options ask for (as the luks format's
 * options, without the prefix). */
static int amend_encrypt(vd_node *n, const vd_opts *o, bool force)
{
    vd_opts *sub = vd_opts_new();
    int r = sub ? 0 : vd_error(ENOMEM, "out of memory");

    for (size_t i = 0; r >= 0 && i < vd_opts_count(o); i++)
        if (!strncmp(vd_opts_key(o, i), "encrypt.", 8))
            r = vd_opts_set(sub, vd_opts_key(o, i) + 8, vd_opts_value(o, i));
    if (r >= 0) {
        vd_event(n->file, "amend_keyslots");
        r = qcow2_crypto_amend(n, sub, force);
    }
    vd_opts_free(sub);
    return r;
}

/* refcount_bits: a power of two up to 64. */
static int parse_refcount_bits(const vd_opts *o, uint32_t *bits)
{
    uint64_t v;
    int r = vd_opts_get_u64(o, "refcount_bits", *bits, &v);

    if (r < 0)
        return r;
    if (v == 0 || v > 64 || (v & (v - 1)))
        return vd_error(EINVAL, "Refcount width must be a power of two and may not "
                        "exceed 64 bits");
    *bits = (uint32_t)v;
    return 0;
}

/* One option of the table, in QEMU's order of checks. */
static int parse_one(vd_node *n, const vd_opts *o, const char *k, struct amend_req *q)
{
    struct qcow2_state *s = n->state;
    const char *v = vd_opts_get(o, k);

    if (!strncmp(k, "encrypt.", 8))
        return check_encrypt(s, q);
    if (!strcmp(k, "compat"))
        return parse_compat(v, &q->version);
    if (!strcmp(k, "size"))
        return vd_opts_get_size(o, k, 0, &q->size);
    if (!strcmp(k, "backing_file") || !strcmp(k, "backing_fmt")) {
        q->has_backing = true;
        *(k[8] == 'f' && k[9] == 'i' ? &q->backing_file : &q->backing_fmt) = v;
        return 0;
    }
    if (!strcmp(k, "lazy_refcounts"))
        return vd_opts_get_bool(o, k, q->lazy, &q->lazy);
    if (!strcmp(k, "refcount_bits"))
        return parse_refcount_bits(o, &q->refcount_bits);
    if (!strcmp(k, "data_file")) {
        q->data_file = v;
        if (!s->data_external)
            return vd_error(EINVAL, "data-file can only be set for images that use an "
                            "external data file");
        return 0;
    }
    if (!strcmp(k, "data_file_raw")) {
        int r = vd_opts_get_bool(o, k, q->data_raw, &q->data_raw);
        if (r >= 0 && q->data_raw && !s->data_raw)
            return vd_error(EINVAL, "data-file-raw cannot be set on existing images");
        return r;
    }
    return vd_error(EINVAL, "Invalid parameter '%s'", k);
}

/* Read the request from opts, checking each option in table order. */
static int parse_req(vd_node *n, const vd_opts *o, struct amend_req *q)
{
    struct qcow2_state *s = n->state;
    int r;

    *q = (struct amend_req){ .version = s->version, .lazy = s->lazy,
                             .data_raw = s->data_raw,
                             .refcount_bits = s->refcount_bits };
    for (const struct vd_opt_desc *d = qcow2_amend_opts; d->name; d++)
        if (vd_opts_has(o, d->name) && (r = parse_one(n, o, d->name, q)) < 0)
            return r;
    return 0;
}

/* ---- upgrade, lazy refcounts, data file flags ---- */

/* compat 0.10 -> 1.1: a v3 header with no feature bits. */
static int upgrade(vd_node *n, struct amend_progress *p)
{
    struct qcow2_state *s = n->state;
    int r;

    report(p, 0, 2);
    report(p, 1, 2);
    s->version = 3;
    s->incompat = s->compat = s->autoclear = 0;
    s->refcount_order = 4;
    s->compression_type = QC_COMP_ZLIB;
    vd_event(n->file, "amend_upgrade_header");
    if ((r = qcow2_amend_write_header(n)) < 0) {
        s->version = 2;
        return r;
    }
    report(p, 2, 2);
    p->done_ops++;
    return 0;
}

/* Write back the caches and clear the dirty bit. Lock held. */
static int make_clean(vd_node *n)
{
    struct qcow2_state *s = n->state;
    int r;

    if ((r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0)
        return r;
    if (!(s->incompat & QC_INCOMPAT_DIRTY))
        return 0;
    s->incompat &= ~QC_INCOMPAT_DIRTY;
    vd_event(n->file, "amend_mark_clean");
    if ((r = qcow2_write_header_u64(n, QH_INCOMPAT, s->incompat)) < 0)
        return r;
    return vd_flush(n->file);
}

/* Turn lazy refcounts on or off. Lock held. */
static int set_lazy(vd_node *n, bool on, uint32_t new_version)
{
    struct qcow2_state *s = n->state;
    int r;

    if (on && new_version < 3)
        return vd_error(EINVAL, "Lazy refcounts only supported with compatibility level "
                        "1.1 and above (use compat=1.1 or greater)");
    if (!on && (r = make_clean(n)) < 0)
        return vd_error_prefix(r, "Failed to make the image clean");
    s->compat = on ? s->compat | QC_COMPAT_LAZY : s->compat & ~QC_COMPAT_LAZY;
    vd_event(n->file, "amend_lazy_header");
    if ((r = qcow2_amend_write_header(n)) < 0) {
        s->compat ^= QC_COMPAT_LAZY;
        return r;
    }
    s->lazy = on;
    return 0;
}

/* backing_file / backing_fmt may only restate what the image has. */
static int check_backing(vd_node *n, const struct amend_req *q)
{
    struct qcow2_state *s = n->state;
    const char *cur = s->backing_len ? n->backing_name : NULL;

    if (!q->has_backing)
        return 0;
    if ((q->backing_file == NULL) != (cur == NULL) ||
        (cur && strcmp(q->backing_file, cur)) ||
        (q->backing_fmt == NULL) != (s->backing_fmt == NULL) ||
        (s->backing_fmt && strcmp(q->backing_fmt, s->backing_fmt)))
        return vd_error(EINVAL, "Cannot amend the backing file");
    return 0;
}

/* data_file_raw off and a new data_file name; the header is rewritten
 * (as QEMU always does at this point). Lock held. */
static int update_data_file(vd_node *n, const struct amend_req *q)
{
    struct qcow2_state *s = n->state;
    int r;

    s->autoclear = q->data_raw ? s->autoclear | QC_AUTOCLEAR_DATA_RAW
                               : s->autoclear & ~QC_AUTOCLEAR_DATA_RAW;
    if (s->version < 3)
        s->autoclear = 0;
    if (q->data_file) {
        char *dup = *q->data_file ? strdup(q->data_file) : NULL;
        if (*q->data_file && !dup)
            return vd_error(ENOMEM, "out of memory");
        free(s->data_file_name);
        s->data_file_name = dup;
    }
    vd_event(n->file, "amend_header");
    if ((r = qcow2_amend_write_header(n)) < 0)
        return r;
    s->data_raw = s->autoclear & QC_AUTOCLEAR_DATA_RAW;
    return 0;
}

/* ---- downgrade ---- */

/* Refcount of the cluster at host offset off. */
static int refcount_at(vd_node *n, uint64_t off, uint64_t *rc)
{
    struct qcow2_state *s = n->state;

    return qcow2_get_refcount(n, off >> s->cluster_bits, rc);
}

/* Host cluster for a zero cluster: allocated (refcount l2_rc, as many
 * references as the L2 table has) and zeroed on disk. */
static int materialise(vd_node *n, uint64_t entry, uint64_t l2_rc, uint64_t *out)
{
    struct qcow2_state *s = n->state;
    uint64_t host = entry & QC_OFFSET_MASK, rc = 1;
    int r;

    if (!host) {
        vd_event(n->file, "amend_zero_alloc");
        if ((r = qcow2_alloc_clusters(n, 1, &host)) < 0)
            return r;
        if (l2_rc > 1 && (r = qcow2_update_refcount(n, host, s->cluster_size,
                                                    (int64_t)(l2_rc - 1))) < 0)
            return r;
    }
    if ((r = qcow2_overlap_check(n, 0, host, s->cluster_size)) < 0 ||
        (r = qcow2_grow_file(n, n->file, host + s->cluster_size)) < 0)
        return r;
    vd_event(n->file, "amend_zero_write");
    if ((r = vd_pwrite_zeroes(n->file, host, s->cluster_size, 0)) < 0 ||
        (r = refcount_at(n, host, &rc)) < 0)
        return r;
    *out = host | (rc == 1 ? QC_COPIED : 0);
    return 0;
}

/* The v2 form of entry e (a zero cluster or not), via *out; *changed. */
static int expand_entry(vd_node *n, uint64_t e, uint64_t l2_rc, uint64_t *out,
                        bool *changed)
{
    struct qcow2_state *s = n->state;

    *out = e;
    *changed = false;
    if ((e & QC_COMPRESSED) || !(e & QC_ZERO_FLAG))
        return 0;
    *changed = true;
    if (!(e & QC_OFFSET_MASK) && !s->backing_len) {
        *out = 0;
        return 0;
    }
    return materialise(n, e, l2_rc, out);
}

/* Expand the zero clusters of one slice of the active L2 table at gc. */
static int expand_active_slice(vd_node *n, uint64_t gc, uint64_t l2_rc, uint64_t count)
{
    struct qcow2_state *s = n->state;
    uint64_t *slice, *vals = vd_calloc_array(count, 8);
    uint8_t *chg = calloc(count, 1);
    uint32_t idx;
    bool changed, any = false;
    int h = -1, r = 0;

    if (!vals || !chg)
        r = vd_error(ENOMEM, "out of memory");
    if (r < 0 || (r = qcow2_get_l2_slice(n, gc, false, &slice, &idx, &h)) < 0 || !slice)
        goto out;
    for (uint64_t k = 0; k < count && r >= 0; k++) {
        r = expand_entry(n, qc_l2_get(s, slice, idx + (uint32_t)k), l2_rc, &vals[k], &changed);
        chg[k] = changed;
        any |= changed;
    }
    /* The zeroes reach the disk once for the slice, before the entries
     * name their clusters; the refcounts go before the L2 slice. */
    if (r >= 0 && any && (r = vd_flush(n->file)) >= 0 &&
        (r = qc_cache_set_dependency(s->l2_cache, s->rc_cache)) >= 0) {
        for (uint64_t k = 0; k < count; k++)
            if (chg[k])
                qc_l2_set(s, slice, idx + (uint32_t)k, vals[k], 0);
        qc_cache_mark_dirty(s->l2_cache, h);
    }
out:
    if (h >= 0)
        qc_cache_put(s->l2_cache, h);
    free(vals);
    free(chg);
    return r;
}

/* Expand the zero clusters the active L1 table reaches. */
static int expand_active(vd_node *n, struct amend_progress *p, uint64_t total)
{
    struct qcow2_state *s = n->state;
    uint64_t per_slice = s->l2_slice_size / s->l2_entry_size, l2_rc;
    int r = 0;

    for (uint64_t i = 0; i < s->l1_size && r >= 0; i++) {
        uint64_t off = s->l1[i] & QC_OFFSET_MASK;
        if (off && (r = refcount_at(n, off, &l2_rc)) < 0)
            return r;
        for (uint64_t j = 0; off && j < qc_l2_entries(s) && r >= 0; j += per_slice)
            r = expand_active_slice(n, (i << s->l2_bits) + j, l2_rc, per_slice);
        report(p, i + 1, total);
    }
    return r;
}

/* Expand the zero clusters of an inactive L2 table at off (read and
 * written directly; the active pass was flushed before). */
static int expand_inactive_l2(vd_node *n, uint64_t off, uint64_t *t)
{
    struct qcow2_state *s = n->state;
    uint64_t cs = s->cluster_size, l2_rc, e;
    bool changed, any = false;
    int r;

    if (!off || (r = refcount_at(n, off, &l2_rc)) < 0)
        return 0;
    if (off + cs > s->file_end)
        return qcow2_corrupt(n, "L2 table at %#llx beyond the end of the file",
                             (unsigned long long)off);
    if ((r = vd_pread(n->file, off, cs, t, 0)) < 0)
        return r;
    for (uint64_t i = 0; i < cs / 8; i++) {
        if ((r = expand_entry(n, be64_get((uint8_t *)&t[i]), l2_rc, &e, &changed)) < 0)
            return r;
        if (changed)
            be64_put((uint8_t *)&t[i], e);
        any |= changed;
    }
    if (!any)
        return 0;
    if ((r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0 ||
        (r = qcow2_overlap_check(n, QC_OL_INACTIVE_L2, off, cs)) < 0)
        return r;
    qc_cache_discard(s->l2_cache, off);
    vd_event(n->file, "amend_inactive_l2_write");
    return vd_pwrite(n->file, off, cs, t, 0);
}

/* Read a snapshot's L1 table (host order). */
static int read_l1(vd_node *n, const struct qc_snapshot *sn, uint64_t **out)
{
    struct qcow2_state *s = n->state;
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    uint64_t *t;
    int r;

    if (bytes > QC_MAX_L1_BYTES || sn->l1_offset > s->file_end ||
        bytes > s->file_end - sn->l1_offset)
        return vd_error(EINVAL, "Snapshot L1 table is outside the image file");
    if (!(t = vd_calloc_array(sn->l1_size ? sn->l1_size : 1, 8)))
        return vd_error(ENOMEM, "out of memory");
    if (bytes && (r = vd_pread(n->file, sn->l1_offset, bytes, t, 0)) < 0) {
        free(t);
        return r;
    }
    for (uint32_t i = 0; i < sn->l1_size; i++)
        t[i] = be64_get((const uint8_t *)&t[i]);
    *out = t;
    return 0;
}

/* Expand the zero clusters the snapshots' L1 tables reach. */
static int expand_snapshots(vd_node *n, struct amend_progress *p, uint64_t total)
{
    struct qcow2_state *s = n->state;
    uint64_t *t = malloc(s->cluster_size), *l1 = NULL;
    int r = t ? 0 : vd_error(ENOMEM, "out of memory");

    for (uint32_t i = 0; i < s->nb_snapshots && s->snaps && r >= 0; i++) {
        if ((r = read_l1(n, &s->snaps[i], &l1)) < 0)
            break;
        for (uint32_t j = 0; j < s->snaps[i].l1_size && r >= 0; j++) {
            r = expand_inactive_l2(n, l1[j] & QC_OFFSET_MASK, t);
            report(p, ++p->step, total);
        }
        free(l1);
    }
    free(t);
    return r;
}

/* Does any active L2 entry describe a compressed cluster? */
static int has_compressed(vd_node *n, bool *found)
{
    struct qcow2_state *s = n->state;
    uint64_t guest = 0;
    struct qc_map m;
    int r;

    *found = false;
    while (guest < s->size) {
        if ((r = qcow2_get_mapping(n, guest, s->size - guest, &m)) < 0)
            return r;
        if (m.type == QC_COMPRESSED_T) {
            *found = true;
            return 0;
        }
        guest += m.bytes ? m.bytes : s->cluster_size;
    }
    return 0;
}

/* What a v2 image cannot hold, refused as QEMU refuses it. */
static int downgrade_checks(vd_node *n)
{
    struct qcow2_state *s = n->state;

    if (s->refcount_order != 4)
        return vd_error(ENOTSUP, "compat=0.10 requires refcount_bits=16");
    if (s->incompat & QC_INCOMPAT_DATA_FILE)
        return vd_error(ENOTSUP, "Cannot downgrade an image with a data file");
    for (uint32_t i = 0; i < s->nb_snapshots && s->snaps; i++)
        if (s->snaps[i].vm_state_size > UINT32_MAX || s->snaps[i].disk_size != s->size)
            return vd_error(ENOTSUP, "Internal snapshots prevent downgrade of image");
    return 0;
}

/* The zstd compression type goes only when no cluster is compressed. */
static int drop_compression_type(vd_node *n)
{
    struct qcow2_state *s = n->state;
    bool found;
    int r;

    if (!(s->incompat & QC_INCOMPAT_COMPRESSION))
        return 0;
    if ((r = has_compressed(n, &found)) < 0)
        return vd_error(EINVAL, "Failed to check block status");
    if (found)
        return vd_error(ENOTSUP, "Cannot downgrade an image with zstd compression type "
                        "and existing compressed clusters");
    s->incompat &= ~QC_INCOMPAT_COMPRESSION;
    s->compression_type = QC_COMP_ZLIB;
    return 0;
}

/* Zero clusters into data or unallocated clusters, all flushed. */
static int expand_zero_clusters(vd_node *n, struct amend_progress *p)
{
    struct qcow2_state *s = n->state;
    uint64_t total = s->l1_size;
    int r;

    for (uint32_t i = 0; i < s->nb_snapshots && s->snaps; i++)
        total += s->snaps[i].l1_size;
    p->step = s->l1_size;
    if ((r = qcow2_prepare_write(n)) < 0 ||
        (r = expand_active(n, p, total)) < 0 ||
        (r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0 ||
        (r = expand_snapshots(n, p, total)) < 0 ||
        (r = qcow2_flush_caches(n)) < 0 || (r = vd_flush(n->file)) < 0)
        return vd_error_prefix(r, "Failed to turn zero into data clusters");
    return 0;
}

/* compat 1.1 -> 0.10. Lock held. */
static int downgrade(vd_node *n, struct amend_progress *p)
{
    struct qcow2_state *s = n->state;
    int r;

    if ((r = downgrade_checks(n)) < 0)
        return r;
    if ((s->incompat & QC_INCOMPAT_DIRTY) && (r = make_clean(n)) < 0)
        return vd_error_prefix(r, "Failed to make the image clean");
    if (s->incompat & ~QC_INCOMPAT_COMPRESSION)
        return vd_error(ENOTSUP, "Cannot downgrade an image with incompatible features "
                        "%#llx set",
                        (unsigned long long)(s->incompat & ~QC_INCOMPAT_COMPRESSION));
    s->compat = 0;
    s->autoclear = 0;
    s->lazy = false;
    if ((r = expand_zero_clusters(n, p)) < 0 || (r = drop_compression_type(n)) < 0)
        return r;
    s->version = 2;
    vd_event(n->file, "amend_downgrade_header");
    if ((r = qcow2_amend_write_header(n)) < 0) {
        s->version = 3;
        return r;
    }
    p->done_ops++;
    return 0;
}

/* ---- the hook ---- */

/* The changes before the size (under the lock). */
static int amend_locked(vd_node *n, const struct amend_req *q, struct amend_progress *p)
{
    struct qcow2_state *s = n->state;
    int r;

    if (q->version > s->version && (r = upgrade(n, p)) < 0)
        return r;
    if (q->refcount_bits != s->refcount_bits) {
        if (q->version < 3 && q->refcount_bits != 16)
            return vd_error(EINVAL, "Refcount widths other than 16 bits require "
                            "compatibility level 1.1 or above (use compat=1.1 or greater)");
        if ((r = qcow2_change_refcount_order(n, (uint32_t)__builtin_ctz(q->refcount_bits))) < 0)
            return r;
        p->done_ops++;
    }
    if ((r = update_data_file(n, q)) < 0 || (r = check_backing(n, q)) < 0)
        return r;
    if (q->lazy != s->lazy && (r = set_lazy(n, q->lazy, q->version)) < 0)
        return r;
    return 0;
}

/* See qcow2.h: qemu-img amend for qcow2. */
int qcow2_amend(vd_node *n, vd_opts *opts, bool force,
                void (*progress)(void *opaque, uint64_t done, uint64_t total),
                void *opaque)
{
    struct qcow2_state *s = n->state;
    struct amend_progress p = { progress, opaque, 0, 0 };
    struct amend_req q;
    int r;

    if ((r = parse_req(n, opts, &q)) < 0)
        return r;
    if (q.encrypt && (r = amend_encrypt(n, opts, force)) < 0)
        return r;
    p.ops = (q.version != s->version) + (q.refcount_bits != s->refcount_bits);
    pthread_mutex_lock(&s->lock);
    r = amend_locked(n, &q, &p);
    pthread_mutex_unlock(&s->lock);
    if (r >= 0 && q.size && (r = vd_truncate(n, q.size, true, VD_PREALLOC_OFF)) < 0)
        return r;
    if (r >= 0 && q.version < s->version) {
        pthread_mutex_lock(&s->lock);
        r = downgrade(n, &p);
        pthread_mutex_unlock(&s->lock);
    }
    return r;
}

/* The options of amend, in QEMU's order (which is also the order of the
 * checks); -o help sorts them. */
const struct vd_opt_desc qcow2_amend_opts[] = {
    { "encrypt.state", VD_OPT_STRING, "Select new state of affected keyslots "
      "(active/inactive)", NULL },
    { "encrypt.keyslot", VD_OPT_NUMBER, "Select a single keyslot to modify explicitly", NULL },
    { "encrypt.old-secret", VD_OPT_STRING, "Select all keyslots that match this password",
      NULL },
    { "encrypt.new-secret", VD_OPT_STRING, "New secret to set in the matching keyslots. "
      "Empty string to erase", NULL },
    { "encrypt.iter-time", VD_OPT_NUMBER, "Time to spend in PBKDF in milliseconds", NULL },
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
