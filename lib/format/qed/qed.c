/* SPDX-License-Identifier: BSD-3-Clause */
/* qed: probe, header checks and open (as QEMU 7.2, with its messages),
 * the table helpers and L2 cache, need-check handling and the driver
 * table.  See qed.h for the invariants. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/qed/qed.h"
#include "util/checked.h"
#include "util/json.h"

/* ---- sizes ---- */

/* See qed.h. */
bool qed_cluster_size_ok(uint64_t c)
{
    return c >= QED_MIN_CLUSTER && c <= QED_MAX_CLUSTER && is_power_of_2(c);
}

/* See qed.h. */
bool qed_table_size_ok(uint64_t t)
{
    return t >= QED_MIN_TABLE && t <= QED_MAX_TABLE && is_power_of_2(t);
}

/* See qed.h: capped where the core's 63-bit sizes end. */
uint64_t qed_max_image_size(uint64_t cluster, uint64_t table)
{
    uint64_t entries = cluster * table / 8, r, cap = (uint64_t)INT64_MAX & ~511ull;

    if (__builtin_mul_overflow(entries, entries, &r) ||
        __builtin_mul_overflow(r, cluster, &r) || r > cap)
        return cap;
    return r;
}

/* See qed.h. */
bool qed_image_size_ok(uint64_t size, uint64_t cluster, uint64_t table)
{
    return size % 512 == 0 && size <= qed_max_image_size(cluster, table);
}

/* See qed.h. */
bool qed_cluster_offset_ok(const struct qed_state *s, uint64_t off)
{
    return !(off & (s->cluster - 1)) && off >= s->header_bytes && off < s->file_size;
}

/* See qed.h. */
bool qed_table_offset_ok(const struct qed_state *s, uint64_t off)
{
    uint64_t last;

    if (!qed_cluster_offset_ok(s, off) ||
        __builtin_add_overflow(off, (uint64_t)(s->h.table_size - 1) * s->cluster, &last))
        return false;
    return qed_cluster_offset_ok(s, last);
}

/* ---- header ---- */

/* Decode the 64 header bytes. */
static void decode_header(const uint8_t *b, struct qed_header *h)
{
    h->magic = qed_le32(b + QH_MAGIC);
    h->cluster_size = qed_le32(b + QH_CLUSTER);
    h->table_size = qed_le32(b + QH_TABLE);
    h->header_size = qed_le32(b + QH_HEADER_SIZE);
    h->features = qed_le64(b + QH_FEATURES);
    h->compat = qed_le64(b + QH_COMPAT);
    h->autoclear = qed_le64(b + QH_AUTOCLEAR);
    h->l1_offset = qed_le64(b + QH_L1);
    h->image_size = qed_le64(b + QH_SIZE);
    h->backing_off = qed_le32(b + QH_BACKING_OFF);
    h->backing_len = qed_le32(b + QH_BACKING_LEN);
}

/* Encode the header fields. */
static void encode_header(const struct qed_header *h, uint8_t *b)
{
    qed_put_le32(b + QH_MAGIC, h->magic);
    qed_put_le32(b + QH_CLUSTER, h->cluster_size);
    qed_put_le32(b + QH_TABLE, h->table_size);
    qed_put_le32(b + QH_HEADER_SIZE, h->header_size);
    qed_put_le64(b + QH_FEATURES, h->features);
    qed_put_le64(b + QH_COMPAT, h->compat);
    qed_put_le64(b + QH_AUTOCLEAR, h->autoclear);
    qed_put_le64(b + QH_L1, h->l1_offset);
    qed_put_le64(b + QH_SIZE, h->image_size);
    qed_put_le32(b + QH_BACKING_OFF, h->backing_off);
    qed_put_le32(b + QH_BACKING_LEN, h->backing_len);
}

/* See qed.h.  Lock held (or no other user of the node). */
int qed_write_header(vd_node *n)
{
    struct qed_state *s = n->state;
    uint8_t b[QED_HEADER_LEN];
    int r;

    encode_header(&s->h, b);
    vd_event(n->file, "header_update");
    if ((r = vd_pwrite(n->file, 0, sizeof(b), b, 0)) < 0)
        return vd_error_prefix(r, "qed: could not write the header");
    return 0;
}

/* Score 100 on the magic, as QEMU. */
static int qed_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return len >= QED_HEADER_LEN && qed_le32(buf) == QED_MAGIC ? 100 : 0;
}

/* The header checks of QEMU 7.2, in its order and with its messages. */
static int check_header(struct qed_state *s, uint64_t file_len)
{
    struct qed_header *h = &s->h;

    if (h->magic != QED_MAGIC)
        return vd_error(EINVAL, "Image not in QED format");
    if (h->features & ~(uint64_t)QED_FEATURES_KNOWN)
        return vd_error(ENOTSUP, "Unsupported QED features: %" PRIx64,
                        h->features & ~(uint64_t)QED_FEATURES_KNOWN);
    if (!qed_cluster_size_ok(h->cluster_size))
        return vd_error(EINVAL, "QED cluster size is invalid");
    s->cluster = h->cluster_size;
    s->file_size = round_down(file_len, s->cluster);
    if (!qed_table_size_ok(h->table_size))
        return vd_error(EINVAL, "QED table size is invalid");
    if (!qed_image_size_ok(h->image_size, h->cluster_size, h->table_size))
        return vd_error(EINVAL, "QED image size is invalid");
    s->header_bytes = (uint64_t)h->header_size * s->cluster;
    s->table_bytes = (uint64_t)h->table_size * s->cluster;
    s->nelems = s->table_bytes / 8;
    if (!qed_table_offset_ok(s, h->l1_offset))
        return vd_error(EINVAL, "QED table offset is invalid");
    if (s->table_bytes > QED_TABLE_BYTES_MAX)
        return vd_error(ENOTSUP, "qed: tables of %" PRIu64 " bytes (cluster size %" PRIu32
                        ", table size %" PRIu32 ") are over vdisk's limit of %u bytes",
                        s->table_bytes, h->cluster_size, h->table_size,
                        QED_TABLE_BYTES_MAX);
    s->l2_shift = (unsigned)__builtin_ctzll(s->cluster);
    s->l1_shift = s->l2_shift + (unsigned)__builtin_ctzll(s->nelems);
    return 0;
}

/* Read the backing file name the header names (QEMU's bounds: inside the
 * header clusters, shorter than its name buffer). */
static int read_backing(vd_node *n)
{
    struct qed_state *s = n->state;
    struct qed_header *h = &s->h;
    char name[QED_NAME_MAX + 1];
    int r;

    if (!(h->features & QED_F_BACKING_FILE))
        return 0;
    if ((uint64_t)h->backing_off + h->backing_len > s->header_bytes)
        return vd_error(EINVAL, "QED backing filename offset is invalid");
    if (h->backing_len > QED_NAME_MAX)
        return vd_error(EINVAL, "Failed to read backing filename");
    if (h->backing_len && (r = vd_pread(n->file, h->backing_off, h->backing_len, name, 0)) < 0)
        return vd_error_prefix(r, "Failed to read backing filename");
    name[h->backing_len] = 0;
    if (!name[0])
        return 0;
    return vd_node_set_backing_name(n, name, (h->features & QED_F_BACKING_RAW) ? "raw" : NULL);
}

/* ---- tables ---- */

/* See qed.h. */
int qed_read_table(vd_node *n, uint64_t off, uint64_t *t)
{
    struct qed_state *s = n->state;
    int r;

    if ((r = vd_pread(n->file, off, s->table_bytes, t, 0)) < 0)
        return vd_error_prefix(r, "qed: could not read the table at 0x%" PRIx64, off);
    for (uint64_t i = 0; i < s->nelems; i++)
        t[i] = qed_le64((const uint8_t *)&t[i]);
    return 0;
}

/* See qed.h. */
int qed_write_entries(vd_node *n, uint64_t off, const uint64_t *t, uint64_t first,
                      uint64_t count)
{
    uint64_t a = first / 64 * 64, b = VD_MIN(div_round_up(first + count, 64) * 64,
                                              ((struct qed_state *)n->state)->nelems);
    uint8_t *buf = malloc((b - a) * 8);
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = a; i < b; i++)
        qed_put_le64(buf + 8 * (i - a), t[i]);
    r = vd_pwrite(n->file, off + a * 8, (b - a) * 8, buf, 0);
    free(buf);
    if (r < 0)
        return vd_error_prefix(r, "qed: could not write the table at 0x%" PRIx64, off);
    return 0;
}

/* A slot to fill: an empty one, else the least recently used. */
static struct qed_l2_slot *victim(struct qed_state *s)
{
    struct qed_l2_slot *v = &s->slots[0];

    for (unsigned i = 0; i < s->nslots; i++) {
        if (!s->slots[i].offset)
            return &s->slots[i];
        if (s->slots[i].used < v->used)
            v = &s->slots[i];
    }
    return v;
}

/* See qed.h. */
void qed_l2_put(vd_node *n, uint64_t off, uint64_t *t)
{
    struct qed_state *s = n->state;
    struct qed_l2_slot *v = victim(s);

    free(v->t);
    v->t = t;
    v->offset = off;
    v->used = ++s->tick;
}

/* See qed.h. */
int qed_l2_get(vd_node *n, uint64_t off, uint64_t **t)
{
    struct qed_state *s = n->state;
    uint64_t *nt;
    int r;

    for (unsigned i = 0; i < s->nslots; i++)
        if (s->slots[i].offset == off) {
            s->slots[i].used = ++s->tick;
            *t = s->slots[i].t;
            return 0;
        }
    if (!qed_table_offset_ok(s, off))
        return vd_error(EIO, "qed: L2 table offset 0x%" PRIx64 " is invalid (past the end "
                        "of the file, in the header or unaligned)", off);
    if (!(nt = malloc(s->table_bytes)))
        return vd_error(ENOMEM, "qed: cannot allocate an L2 table");
    vd_event(n->file, "l2_load");
    if ((r = qed_read_table(n, off, nt)) < 0) {
        free(nt);
        return r;
    }
    qed_l2_put(n, off, nt);
    *t = nt;
    return 0;
}

/* See qed.h. */
void qed_l2_drop_all(vd_node *n)
{
    struct qed_state *s = n->state;

    for (unsigned i = 0; i < s->nslots; i++) {
        free(s->slots[i].t);
        s->slots[i].t = NULL;
        s->slots[i].offset = 0;
    }
}

/* ---- need-check ---- */

/* See qed.h.  Takes alloc_lock and lock. */
int qed_mark_clean(vd_node *n)
{
    struct qed_state *s = n->state;
    int r = 0;

    pthread_mutex_lock(&s->alloc_lock);
    pthread_mutex_lock(&s->lock);
    if (s->h.features & QED_F_NEED_CHECK) {
        vd_event(n->file, "flush_to_disk");
        if ((r = vd_flush(n->file)) >= 0) {
            s->h.features &= ~(uint64_t)QED_F_NEED_CHECK;
            if ((r = qed_write_header(n)) >= 0)
                r = vd_flush(n->file);
            else
                s->h.features |= QED_F_NEED_CHECK;
        }
    }
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&s->alloc_lock);
    return r;
}

/* ---- open / close ---- */

/* Allocate the L1 table and the L2 cache, read the L1 table. */
static int load_tables(vd_node *n)
{
    struct qed_state *s = n->state;
    int r;

    if ((r = vd_untrusted_table_check(n, s->table_bytes, "qed L1 table")) < 0)
        return r;
    s->nslots = (unsigned)VD_MAX((uint64_t)QED_L2_SLOTS_MIN,
                                 VD_MIN((uint64_t)QED_L2_SLOTS_MAX,
                                        QED_L2_CACHE_BYTES / s->table_bytes));
    if (!(s->l1 = malloc(s->table_bytes)) ||
        !(s->slots = calloc(s->nslots, sizeof(*s->slots))))
        return vd_error(ENOMEM, "qed: cannot allocate the L1 table (%" PRIu64 " bytes)",
                        s->table_bytes);
    return qed_read_table(n, s->h.l1_offset, s->l1);
}

/* Writable open: drop unknown autoclear bits and repair an image left
 * with need-check set, as QEMU (not when opened to be checked). */
static int open_writable(vd_node *n, int flags)
{
    struct qed_state *s = n->state;
    struct vd_check_result res = { 0 };
    int r;

    if (s->h.autoclear) {
        s->h.autoclear = 0;
        if ((r = qed_write_header(n)) < 0 || (r = vd_flush(n->file)) < 0)
            return r;
    }
    if ((flags & VD_O_CHECK) || !(s->h.features & QED_F_NEED_CHECK))
        return 0;
    if ((r = qed_check(n, &res, 2)) < 0)
        return r;
    return 0;
}

/* Read and check the header, read the L1 table, name the backing file. */
static int qed_open(vd_node *n, vd_opts *opts, int flags)
{
    struct qed_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    uint8_t b[QED_HEADER_LEN] = { 0 };
    int r;

    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->alloc_lock, NULL);
    s->locks_ok = true;
    if (file_len < 0)
        return (int)file_len;
    /* a shorter file reads as zero-padded (as QEMU's probe and header) */
    if (file_len && (r = vd_pread(n->file, 0, VD_MIN((uint64_t)file_len, sizeof(b)), b, 0)) < 0)
        return vd_error_prefix(r, "qed: cannot read the header");
    decode_header(b, &s->h);
    if ((r = check_header(s, (uint64_t)file_len)) < 0 || (r = read_backing(n)) < 0 ||
        (r = load_tables(n)) < 0)
        return r;
    if (!n->read_only && (r = open_writable(n, flags)) < 0)
        return r;
    return 0;
}

/* Clear need-check (after a flush) and free the tables. */
static void qed_close(vd_node *n)
{
    struct qed_state *s = n->state;

    if (!n->read_only && s->l1 && (s->h.features & QED_F_NEED_CHECK))
        (void)qed_mark_clean(n);
    if (s->slots)
        qed_l2_drop_all(n);
    free(s->slots);
    free(s->l1);
    free(s->fill);
    if (s->locks_ok) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->alloc_lock);
    }
}

/* ---- info ---- */

/* The virtual size. */
static int64_t qed_getlength(vd_node *n)
{
    struct qed_state *s = n->state;
    int64_t v;

    pthread_mutex_lock(&s->lock);
    v = (int64_t)s->h.image_size;
    pthread_mutex_unlock(&s->lock);
    return v;
}

/* qemu-img info's cluster_size. */
static int64_t qed_cluster_size(vd_node *n)
{
    return (int64_t)((struct qed_state *)n->state)->cluster;
}

/* A new image reads as zeroes (or its backing file). */
static bool qed_has_zero_init(vd_node *n)
{
    return true;
}

static const struct vd_driver qed_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "qed",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct qed_state),
    .create_opts = qed_create_opts,
    .probe = qed_probe,
    .open = qed_open,
    .close = qed_close,
    .pread = qed_pread,
    .pwrite = qed_pwrite,
    .pwrite_zeroes = qed_pwrite_zeroes,
    .flush = qed_flush,
    .block_status = qed_block_status,
    .getlength = qed_getlength,
    .truncate = qed_truncate,
    .create = qed_create,
    .check = qed_check,
    .has_zero_init = qed_has_zero_init,
    .cluster_size = qed_cluster_size,
    .supports_backing = true,
    .change_backing_file = qed_change_backing_file,
};
VD_DRIVER_REGISTER(qed_driver)
