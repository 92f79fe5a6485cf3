/* SPDX-License-Identifier: BSD-3-Clause */
/* The qcow format, version 1: a 48-byte big-endian header, the backing
 * file name after it, an L1 table of L2 table offsets, L2 tables of data
 * cluster offsets (0: unallocated, read from the backing file; top bit:
 * a zlib-compressed cluster, raw deflate, its byte count in the bits under
 * the top one).  New L2 tables and clusters go at the end of the file,
 * aligned to the cluster size.  Header checks and messages as QEMU 7.2;
 * AES-encrypted images (crypt_method 1) are read, written and created
 * through the crypto layer, with QEMU's key and IVs.
 *
 * Invariants:
 *  1. A cluster is linked (L2 entry) only after its whole contents (guest
 *     bytes, and around them the backing file's bytes, the decompressed
 *     old cluster or zeroes) are written, and flushed when what it
 *     replaces is not zeroes (a backing file, a compressed cluster); a
 *     new L2 table is written (zeroed) before the L1 entry that links it.
 *  2. Allocations run one at a time under alloc_lock, held across their
 *     data writes; file_end (where the next allocation goes) only grows.
 *  3. lock guards the L1 table, the L2 cache, the decompressed-cluster
 *     cache and file_end in memory; it is held across metadata I/O and
 *     compressed-cluster reads, never across uncompressed guest data I/O. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "crypto/crypto.h"
#include "util/checked.h"
#include "util/endian.h"
#include "vdisk/driver.h"

#define Q1_MAGIC          0x514649fbu      /* "QFI\xfb" */
#define Q1_VERSION        1u
#define Q1_HEADER_LEN     48u
#define Q1_CRYPT_NONE     0u
#define Q1_CRYPT_AES      1u
#define Q1_COMPRESSED     (1ull << 63)
#define Q1_NAME_MAX       1023u            /* longest backing name QEMU reads */
#define Q1_L1_BYTES_MAX   (256u << 20)     /* vdisk's cap on the L1 table */
#define Q1_L2_SLOTS       16u
#define Q1_ZLIB_WINDOW    (-12)

/* Header field offsets. */
enum {
    H_MAGIC = 0, H_VERSION = 4, H_BACKING_OFF = 8, H_BACKING_LEN = 16, H_MTIME = 20,
    H_SIZE = 24, H_CLUSTER_BITS = 32, H_L2_BITS = 33, H_CRYPT = 36, H_L1 = 40,
};

struct q1_header {
    uint32_t magic, version, backing_len, mtime, crypt;
    uint64_t backing_off, size, l1_offset;
    uint8_t cluster_bits, l2_bits;
};

struct q1_l2_slot {
    uint64_t offset;               /* 0: empty */
    uint64_t used;                 /* LRU tick */
    uint64_t *t;                   /* host order */
};

struct q1_state {
    pthread_mutex_t lock;          /* invariant 3 */
    pthread_mutex_t alloc_lock;    /* invariant 2 */
    bool locks_ok;
    struct q1_header h;
    uint64_t cluster, l2_entries, l2_bytes, l1_size;
    unsigned l2_shift, l1_shift, csize_shift;
    uint64_t *l1;
    struct q1_l2_slot slots[Q1_L2_SLOTS];
    uint64_t tick;
    uint64_t file_end;             /* bytes in the file */
    uint8_t *zbuf, *zcache;        /* compressed bytes read, decompressed cluster */
    uint64_t zcache_off;           /* entry of the cluster in zcache (0: none) */
    uint8_t *fill;                 /* one cluster of fill (alloc_lock) */
    struct vd_blockcrypt *crypt;   /* AES images opened with their key */
};

enum q1_kind { K_UNALLOC, K_DATA, K_COMPRESSED };

/* A run of guest bytes with one kind of mapping inside one L2 table. */
struct q1_run {
    enum q1_kind kind;
    uint64_t host;                 /* K_DATA: host offset of the first byte */
    uint64_t entry;                /* K_COMPRESSED: the L2 entry */
    uint64_t bytes;
};

/* ---- header ---- */

/* Decode the 48 header bytes. */
static void decode_header(const uint8_t *b, struct q1_header *h)
{
    h->magic = vd_be32(b + H_MAGIC);
    h->version = vd_be32(b + H_VERSION);
    h->backing_off = vd_be64(b + H_BACKING_OFF);
    h->backing_len = vd_be32(b + H_BACKING_LEN);
    h->mtime = vd_be32(b + H_MTIME);
    h->size = vd_be64(b + H_SIZE);
    h->cluster_bits = b[H_CLUSTER_BITS];
    h->l2_bits = b[H_L2_BITS];
    h->crypt = vd_be32(b + H_CRYPT);
    h->l1_offset = vd_be64(b + H_L1);
}

/* Score 100 on the magic and version 1, as QEMU. */
static int q1_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= Q1_HEADER_LEN && vd_be32(buf) == Q1_MAGIC &&
           vd_be32(buf + 4) == Q1_VERSION ? 100 : 0;
}

/* QEMU 7.2's header checks, in its order and with its messages, then
 * vdisk's caps. */
static int check_header(struct q1_state *s)
{
    const struct q1_header *h = &s->h;
    uint64_t span;

    if (h->magic != Q1_MAGIC)
        return vd_error(EINVAL, "Image not in qcow format");
    if (h->version == 2 || h->version == 3)
        return vd_error(ENOTSUP, "qcow (v1) does not support qcow version %" PRIu32 "\n"
                        "Try the 'qcow2' driver instead.", h->version);
    if (h->version != Q1_VERSION)
        return vd_error(ENOTSUP, "qcow (v1) does not support qcow version %" PRIu32,
                        h->version);
    if (h->size <= 1)
        return vd_error(EINVAL, "Image size is too small (must be at least 2 bytes)");
    if (h->cluster_bits < 9 || h->cluster_bits > 16)
        return vd_error(EINVAL, "Cluster size must be between 512 and 64k");
    if (h->l2_bits < 9 - 3 || h->l2_bits > 16 - 3)
        return vd_error(EINVAL, "L2 table size must be between 512 and 64k");
    if (h->crypt > Q1_CRYPT_AES)
        return vd_error(EINVAL, "invalid encryption method in qcow header");
    s->cluster = 1ull << h->cluster_bits;
    s->l2_entries = 1ull << h->l2_bits;
    s->l2_bytes = s->l2_entries * 8;
    s->l2_shift = h->cluster_bits;
    s->l1_shift = h->cluster_bits + h->l2_bits;
    s->csize_shift = 63 - h->cluster_bits;
    span = 1ull << s->l1_shift;
    if (h->size > UINT64_MAX - span)
        return vd_error(EINVAL, "Image too large");
    s->l1_size = (h->size + span - 1) >> s->l1_shift;
    if (s->l1_size > INT32_MAX / 8)
        return vd_error(EINVAL, "Image too large");
    if (h->size > (uint64_t)INT64_MAX)
        return vd_error(EFBIG, "qcow: image size %" PRIu64 " is over vdisk's limit of "
                        "%" PRId64 " bytes", h->size, INT64_MAX);
    if (s->l1_size * 8 > Q1_L1_BYTES_MAX)
        return vd_error(ENOTSUP, "qcow: L1 table of %" PRIu64 " bytes is over vdisk's "
                        "limit of %u bytes", s->l1_size * 8, Q1_L1_BYTES_MAX);
    return 0;
}

/* Is [off, off+len) inside the file?  Lock held or opening. */
static bool in_file(const struct q1_state *s, uint64_t off, uint64_t len)
{
    return range_ok(off, len, s->file_end);
}

/* Read the backing file name the header names (QEMU's length bound, and
 * inside the file). */
static int read_backing_name(vd_node *n)
{
    struct q1_state *s = n->state;
    char name[Q1_NAME_MAX + 1];
    int r;

    if (!s->h.backing_off)
        return 0;
    if (s->h.backing_len > Q1_NAME_MAX)
        return vd_error(EINVAL, "Backing file name too long");
    if (!in_file(s, s->h.backing_off, s->h.backing_len))
        return vd_error(EINVAL, "qcow: backing file name at 0x%" PRIx64 " (%" PRIu32
                        " bytes) is beyond the end of the file", s->h.backing_off,
                        s->h.backing_len);
    if (s->h.backing_len &&
        (r = vd_pread(n->file, s->h.backing_off, s->h.backing_len, name, 0)) < 0)
        return vd_error_prefix(r, "qcow: could not read the backing file name");
    name[s->h.backing_len] = 0;
    if (!name[0])
        return 0;
    return vd_node_set_backing_name(n, name, NULL);
}

/* Read the L1 table (inside the file) into host order. */
static int load_l1(vd_node *n)
{
    struct q1_state *s = n->state;
    uint64_t bytes = s->l1_size * 8;
    int r;

    if ((r = vd_untrusted_table_check(n, bytes, "qcow L1 table")) < 0)
        return r;
    if (!in_file(s, s->h.l1_offset, bytes))
        return vd_error(EINVAL, "qcow: L1 table at 0x%" PRIx64 " (%" PRIu64 " bytes) is "
                        "beyond the end of the file", s->h.l1_offset, bytes);
    if (!(s->l1 = malloc(bytes ? bytes : 8)))
        return vd_error(ENOMEM, "Could not allocate memory for L1 table");
    if ((r = vd_pread(n->file, s->h.l1_offset, bytes, s->l1, 0)) < 0)
        return vd_error_prefix(r, "qcow: could not read the L1 table");
    for (uint64_t i = 0; i < s->l1_size; i++)
        s->l1[i] = vd_be64((const uint8_t *)&s->l1[i]);
    return 0;
}

/* The legacy AES key of an encrypted image (AES-128-CBC, the passphrase
 * cut or zero-padded to 16 bytes, plain64 IVs from the guest sector), as
 * QEMU reads it; an image opened without I/O (info) needs none.  Writing
 * encrypted images is refused. */
static int open_crypt(vd_node *n, vd_opts *opts, int flags)
{
    struct q1_state *s = n->state;
    struct vd_blockcrypt_params p = { VD_CIPHER_AES_128, VD_MODE_CBC, VD_IVGEN_PLAIN64,
                                      VD_CIPHER_AES_128, VD_HASH_SHA256 };
    const char *id = vd_opts_get(opts, "encrypt.key-secret");
    uint8_t key[16] = { 0 }, *pass = NULL;
    size_t pass_len = 0;
    int r;

    if (s->h.crypt != Q1_CRYPT_AES || (flags & VD_O_NO_IO))
        return 0;
    if (!id)
        return vd_error(EINVAL, "Parameter 'encrypt.key-secret' is required for cipher");
    if ((r = vd_secret_get(id, &pass, &pass_len)) < 0)
        return r;
    memcpy(key, pass, VD_MIN(pass_len, sizeof(key)));
    vd_secret_free(pass, pass_len);
    r = vd_blockcrypt_new(&s->crypt, &p, key, sizeof(key));
    vd_wipe(key, sizeof(key));
    return r;
}

/* Read and check the header, name the backing file, read the L1 table. */
static int q1_open(vd_node *n, vd_opts *opts, int flags)
{
    struct q1_state *s = n->state;
    int64_t flen = vd_getlength(n->file);
    uint8_t b[Q1_HEADER_LEN] = { 0 };
    int r;

    (void)opts, (void)flags;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->alloc_lock, NULL);
    s->locks_ok = true;
    if (flen < 0)
        return (int)flen;
    s->file_end = (uint64_t)flen;
    if (flen && (r = vd_pread(n->file, 0, VD_MIN((uint64_t)flen, sizeof(b)), b, 0)) < 0)
        return vd_error_prefix(r, "qcow: cannot read the header");
    decode_header(b, &s->h);
    if ((r = check_header(s)) < 0 || (r = read_backing_name(n)) < 0 ||
        (r = load_l1(n)) < 0 || (r = open_crypt(n, opts, flags)) < 0)
        return r;
    if (!(s->zbuf = malloc(s->cluster)) || !(s->zcache = malloc(s->cluster)))
        return vd_error(ENOMEM, "qcow: out of memory");
    n->request_alignment = 512;
    return 0;
}

/* Free the tables. */
static void q1_close(vd_node *n)
{
    struct q1_state *s = n->state;

    for (unsigned i = 0; i < Q1_L2_SLOTS; i++)
        free(s->slots[i].t);
    free(s->l1);
    free(s->zbuf);
    free(s->zcache);
    free(s->fill);
    vd_blockcrypt_free(s->crypt);
    if (s->locks_ok) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->alloc_lock);
    }
}

/* ---- L2 cache ---- */

/* A slot to fill: an empty one, else the least recently used. */
static struct q1_l2_slot *victim(struct q1_state *s)
{
    struct q1_l2_slot *v = &s->slots[0];

    for (unsigned i = 0; i < Q1_L2_SLOTS; i++) {
        if (!s->slots[i].offset)
            return &s->slots[i];
        if (s->slots[i].used < v->used)
            v = &s->slots[i];
    }
    return v;
}

/* Put table t (taken) for offset off in the cache.  Lock held. */
static void l2_put(struct q1_state *s, uint64_t off, uint64_t *t)
{
    struct q1_l2_slot *v = victim(s);

    free(v->t);
    v->t = t;
    v->offset = off;
    v->used = ++s->tick;
}

/* The L2 table at off, from the cache or the file.  Lock held. */
static int l2_get(vd_node *n, uint64_t off, uint64_t **t)
{
    struct q1_state *s = n->state;
    uint64_t *nt;
    int r;

    for (unsigned i = 0; i < Q1_L2_SLOTS; i++)
        if (s->slots[i].offset == off) {
            s->slots[i].used = ++s->tick;
            *t = s->slots[i].t;
            return 0;
        }
    if (!in_file(s, off, s->l2_bytes))
        return vd_error(EIO, "qcow: L2 table at 0x%" PRIx64 " is beyond the end of the "
                        "file", off);
    if (!(nt = malloc(s->l2_bytes)))
        return vd_error(ENOMEM, "qcow: cannot allocate an L2 table");
    vd_event(n->file, "l2_load");
    if ((r = vd_pread(n->file, off, s->l2_bytes, nt, 0)) < 0) {
        free(nt);
        return vd_error_prefix(r, "qcow: could not read the L2 table at 0x%" PRIx64, off);
    }
    for (uint64_t i = 0; i < s->l2_entries; i++)
        nt[i] = vd_be64((const uint8_t *)&nt[i]);
    l2_put(s, off, nt);
    *t = nt;
    return 0;
}

/* ---- mapping ---- */

/* Kind of an L2 entry. */
static enum q1_kind entry_kind(uint64_t e)
{
    return !e ? K_UNALLOC : (e & Q1_COMPRESSED) ? K_COMPRESSED : K_DATA;
}

/* Extend a run over the entries of t from index i while they keep its
 * kind (data: contiguous in the file; compressed: one cluster).  Lock
 * held. */
static int extend_run(struct q1_state *s, const uint64_t *t, uint64_t i, uint64_t in,
                      uint64_t len, struct q1_run *run)
{
    uint64_t e0 = t[i];

    run->kind = entry_kind(e0);
    run->entry = e0;
    run->bytes = VD_MIN(len, s->cluster - in);
    for (uint64_t k = 0; i + k < s->l2_entries && run->bytes <= len; k++) {
        uint64_t e = t[i + k];
        if (k && (entry_kind(e) != run->kind || run->kind == K_COMPRESSED ||
                  (run->kind == K_DATA && e != e0 + k * s->cluster)))
            break;
        if (run->kind == K_DATA && !in_file(s, e, s->cluster))
            return vd_error(EIO, "qcow: data cluster at 0x%" PRIx64 " is beyond the end "
                            "of the file", e);
        if (k)
            run->bytes += VD_MIN(len - run->bytes, s->cluster);
        if (run->bytes >= len)
            break;
    }
    run->host = run->kind == K_DATA ? e0 + in : 0;
    return 0;
}

/* The run at guest offset off, at most len bytes.  Lock held. */
static int lookup_locked(vd_node *n, uint64_t off, uint64_t len, struct q1_run *run)
{
    struct q1_state *s = n->state;
    uint64_t l1i = off >> s->l1_shift, l2i = (off >> s->l2_shift) & (s->l2_entries - 1);
    uint64_t *t;
    int r;

    if (!s->l1[l1i]) {
        run->kind = K_UNALLOC;
        run->bytes = VD_MIN(len, ((l1i + 1) << s->l1_shift) - off);
        run->host = run->entry = 0;
        return 0;
    }
    if ((r = l2_get(n, s->l1[l1i], &t)) < 0)
        return r;
    return extend_run(s, t, l2i, off & (s->cluster - 1), len, run);
}

/* The run at off, taking the lock. */
static int lookup(vd_node *n, uint64_t off, uint64_t len, struct q1_run *run)
{
    struct q1_state *s = n->state;
    int r;

    pthread_mutex_lock(&s->lock);
    r = lookup_locked(n, off, len, run);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- reads ---- */

/* Inflate a raw deflate stream into exactly one cluster. */
static int inflate_cluster(const uint8_t *src, size_t len, uint8_t *dst, size_t cluster)
{
    z_stream z;
    int r;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, Q1_ZLIB_WINDOW) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cluster;
    r = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    return (r == Z_STREAM_END || r == Z_BUF_ERROR) && z.avail_out == 0 ? 0 : -EIO;
}

/* Decompress the cluster of L2 entry e into s->zcache.  Lock held. */
static int load_compressed(vd_node *n, uint64_t e)
{
    struct q1_state *s = n->state;
    uint64_t off = e & ((1ull << s->csize_shift) - 1);
    uint64_t len = (e >> s->csize_shift) & (s->cluster - 1);
    int r;

    if (s->zcache_off == e)
        return 0;
    s->zcache_off = 0;
    if (!in_file(s, off, len))
        return vd_error(EIO, "qcow: compressed cluster at 0x%" PRIx64 " (%" PRIu64
                        " bytes) is beyond the end of the file", off, len);
    vd_event(n->file, "read_compressed");
    if (len && (r = vd_pread(n->file, off, len, s->zbuf, 0)) < 0)
        return r;
    if (inflate_cluster(s->zbuf, len, s->zcache, s->cluster) < 0)
        return vd_error(EIO, "qcow: compressed cluster at 0x%" PRIx64 " does not "
                        "decompress to one cluster", off);
    s->zcache_off = e;
    return 0;
}

/* Copy bytes of a compressed cluster: guest [off, off+len) in it. */
static int read_compressed(vd_node *n, uint64_t e, uint64_t off, uint64_t len, uint8_t *p)
{
    struct q1_state *s = n->state;
    int r;

    pthread_mutex_lock(&s->lock);
    if ((r = load_compressed(n, e)) >= 0)
        memcpy(p, s->zcache + (off & (s->cluster - 1)), len);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Read guest bytes of data clusters, decrypted in an encrypted image. */
static int read_data(vd_node *n, uint64_t off, uint64_t host, uint64_t len, uint8_t *p,
                     int flags)
{
    struct q1_state *s = n->state;
    int r;

    vd_event(n->file, "read_aio");
    if ((r = vd_pread(n->file, host, len, p, flags)) < 0 || s->h.crypt != Q1_CRYPT_AES)
        return r;
    if (!s->crypt)
        return vd_error(EACCES, "qcow: image opened without its key");
    return vd_blockcrypt_decrypt(s->crypt, off / 512, p, len);
}

/* Read guest bytes. */
static int q1_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    uint8_t *p = buf;
    struct q1_run run;
    int r;

    while (len) {
        if ((r = lookup(n, off, len, &run)) < 0)
            return r;
        if (run.kind == K_UNALLOC)
            r = vd_read_backing(n, off, run.bytes, p);
        else if (run.kind == K_COMPRESSED)
            r = read_compressed(n, run.entry, off, run.bytes, p);
        else
            r = read_data(n, off, run.host, run.bytes, p, flags);
        if (r < 0)
            return r;
        off += run.bytes;
        len -= run.bytes;
        p += run.bytes;
    }
    return 0;
}

/* ---- allocating writes ---- */

/* Reserve bytes at the cluster-aligned end of the file and grow it.
 * alloc_lock held. */
static int reserve(vd_node *n, uint64_t bytes, bool align, uint64_t *host)
{
    struct q1_state *s = n->state;
    uint64_t at = s->file_end, end;
    int r;

    if (align && !round_up_checked(at, s->cluster, &at))
        return vd_error(EFBIG, "qcow: the file is too large");
    if (ADD_OVERFLOW(at, bytes, &end) || end > (uint64_t)INT64_MAX)
        return vd_error(EFBIG, "qcow: the file is too large");
    if ((r = vd_truncate(n->file, end, true, VD_PREALLOC_OFF)) < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    s->file_end = end;
    pthread_mutex_unlock(&s->lock);
    *host = at;
    return 0;
}

/* Write a new, zeroed L2 table for L1 index l1i and link it (invariant
 * 1).  alloc_lock held. */
static int new_l2(vd_node *n, uint64_t l1i)
{
    struct q1_state *s = n->state;
    uint64_t *t = calloc(1, s->l2_bytes), off;
    uint8_t be[8];
    int r;

    if (!t)
        return vd_error(ENOMEM, "qcow: cannot allocate an L2 table");
    vd_event(n->file, "l2_alloc_write");
    if ((r = reserve(n, s->l2_bytes, true, &off)) < 0 ||
        (r = vd_pwrite(n->file, off, s->l2_bytes, t, 0)) < 0) {
        free(t);
        return r;
    }
    vd_put_be64(be, off);
    vd_event(n->file, "l1_update");
    if ((r = vd_pwrite(n->file, s->h.l1_offset + l1i * 8, 8, be, 0)) < 0) {
        free(t);
        return vd_error_prefix(r, "qcow: could not update the L1 table");
    }
    pthread_mutex_lock(&s->lock);
    s->l1[l1i] = off;
    l2_put(s, off, t);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* Set L2 entries [c0, c0+count) (one table) to host, host+cluster, ...
 * (or to e alone when count is 1 and host is 0).  alloc_lock held. */
static int link_clusters(vd_node *n, uint64_t c0, uint64_t count, uint64_t host, uint64_t e)
{
    struct q1_state *s = n->state;
    uint64_t l1i = c0 >> s->h.l2_bits, i0 = c0 & (s->l2_entries - 1), *t;
    uint8_t *be = malloc(count * 8);
    int r;

    if (!be)
        return vd_error(ENOMEM, "qcow: out of memory");
    pthread_mutex_lock(&s->lock);
    if ((r = l2_get(n, s->l1[l1i], &t)) >= 0) {
        for (uint64_t k = 0; k < count; k++)
            vd_put_be64(be + 8 * k, host ? host + k * s->cluster : e);
        vd_event(n->file, "l2_update");
        r = vd_pwrite(n->file, s->l1[l1i] + i0 * 8, count * 8, be, 0);
        if (r >= 0)
            for (uint64_t k = 0; k < count; k++)
                t[i0 + k] = host ? host + k * s->cluster : e;
    }
    pthread_mutex_unlock(&s->lock);
    free(be);
    return r;
}

/* The old contents of guest bytes [a, b) of one cluster for a run of
 * kind k (entry e), into buf.  alloc_lock held. */
static int old_bytes(vd_node *n, enum q1_kind k, uint64_t e, uint64_t a, uint64_t b,
                     uint8_t *buf)
{
    if (k == K_COMPRESSED)
        return read_compressed(n, e, a, b - a, buf);
    vd_event(n->file, "cow_read");
    return vd_read_backing(n, a, b - a, buf);
}

/* Write len guest bytes (from guest offset guest) at host, encrypted in
 * an encrypted image (whole sectors: the request alignment). */
static int write_guest(vd_node *n, uint64_t guest, uint64_t host, uint64_t len,
                       const void *buf)
{
    struct q1_state *s = n->state;
    uint8_t *c;
    int r;

    if (s->h.crypt != Q1_CRYPT_AES)
        return vd_pwrite(n->file, host, len, buf, 0);
    if (!s->crypt)
        return vd_error(EACCES, "qcow: image opened without its key");
    if (!(c = malloc(len)))
        return vd_error(ENOMEM, "qcow: out of memory");
    memcpy(c, buf, len);
    r = vd_blockcrypt_encrypt(s->crypt, guest / 512, c, len);
    if (r >= 0)
        r = vd_pwrite(n->file, host, len, c, 0);
    free(c);
    return r;
}

/* Write guest bytes [off, off+len) at host (cluster-aligned, the first
 * of the run's new clusters), with the old contents around them. */
static int write_new_clusters(vd_node *n, const struct q1_run *run, uint64_t off,
                              uint64_t len, const uint8_t *p, uint64_t host)
{
    struct q1_state *s = n->state;
    uint64_t first = round_down(off, s->cluster);
    uint64_t end = round_down(off + len + s->cluster - 1, s->cluster);
    int r;

    if (!s->fill && !(s->fill = malloc(s->cluster)))
        return vd_error(ENOMEM, "qcow: out of memory");
    if (first < off) {
        if ((r = old_bytes(n, run->kind, run->entry, first, off, s->fill)) < 0 ||
            (r = write_guest(n, first, host, off - first, s->fill)) < 0)
            return r;
    }
    vd_event(n->file, "write_aio");
    if ((r = write_guest(n, off, host + (off - first), len, p)) < 0)
        return r;
    if (off + len < end) {
        uint64_t tail = end - (off + len);
        if ((r = old_bytes(n, run->kind, run->entry, off + len, end, s->fill)) < 0 ||
            (r = write_guest(n, off + len, host + (off + len - first), tail, s->fill)) < 0)
            return r;
    }
    return 0;
}

/* Invariant 1 where the old contents are not zeroes (a backing file, a
 * compressed cluster): the new cluster's data reaches the disk before it
 * is linked, or a crash could make the guest read zeroes instead. */
static int flush_before_link(vd_node *n, enum q1_kind old)
{
    if (old != K_COMPRESSED && !n->backing_name)
        return 0;
    vd_event(n->file, "flush_to_disk");
    return vd_flush(n->file);
}

/* Allocate new clusters for the run at off (not plain data), write p in
 * them and link them.  Returns the bytes written, or 0 when the run
 * changed meanwhile (look it up again). */
static int64_t alloc_write(vd_node *n, uint64_t off, uint64_t len, const uint8_t *p)
{
    struct q1_state *s = n->state;
    uint64_t l1i = off >> s->l1_shift, first, count, host = 0;
    struct q1_run run;
    int r;

    pthread_mutex_lock(&s->alloc_lock);
    if ((r = lookup(n, off, len, &run)) < 0 || run.kind == K_DATA)
        goto out;
    if (!s->l1[l1i] && (r = new_l2(n, l1i)) < 0)
        goto out;
    first = round_down(off, s->cluster);
    count = div_round_up(off + run.bytes - first, s->cluster);
    vd_event(n->file, "cluster_alloc");
    if ((r = reserve(n, count * s->cluster, true, &host)) < 0 ||
        (r = write_new_clusters(n, &run, off, run.bytes, p, host)) < 0 ||
        (r = flush_before_link(n, run.kind)) < 0)
        goto out;
    r = link_clusters(n, first >> s->l2_shift, count, host, 0);
    if (r >= 0 && run.kind == K_COMPRESSED) {
        pthread_mutex_lock(&s->lock);
        s->zcache_off = 0;
        pthread_mutex_unlock(&s->lock);
    }
out:
    pthread_mutex_unlock(&s->alloc_lock);
    if (r < 0)
        return r;
    return run.kind == K_DATA ? 0 : (int64_t)run.bytes;
}

/* Write guest bytes: in place over data clusters, else allocating. */
static int q1_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    const uint8_t *p = buf;
    struct q1_run run;
    int64_t done;
    int r;

    while (len) {
        if ((r = lookup(n, off, len, &run)) < 0)
            return r;
        if (run.kind == K_DATA) {
            vd_event(n->file, "write_aio");
            if ((r = write_guest(n, off, run.host, run.bytes, p)) < 0)
                return r;
            done = (int64_t)run.bytes;
        } else if ((done = alloc_write(n, off, run.bytes, p)) < 0) {
            return (int)done;
        } else if (done == 0) {
            continue;
        }
        off += (uint64_t)done;
        len -= (uint64_t)done;
        p += done;
    }
    return (flags & VD_REQ_FUA) ? vd_flush(n->file) : 0;
}

/* ---- compressed writes ---- */

/* Deflate one cluster into out (room for cluster bytes): its length, or
 * 0 when it does not shrink below a cluster. */
static size_t deflate_cluster(const void *src, size_t len, uint8_t *out, size_t cap)
{
    z_stream z;
    int r;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, Q1_ZLIB_WINDOW, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    r = deflate(&z, Z_FINISH);
    deflateEnd(&z);
    return r == Z_STREAM_END ? cap - z.avail_out : 0;
}

/* Compress one cluster (len bytes at off, the image's tail padded with
 * zeroes) into out (room for VD_COMPRESS_ROOM(len) bytes): its deflate
 * stream, shorter than a cluster, or the whole padded cluster (out_len
 * the cluster size) when it does not shrink.  No I/O, any thread. */
static int q1_compress_cluster(vd_node *n, uint64_t off, uint64_t len, const void *buf,
                               void *out, size_t *out_len)
{
    struct q1_state *s = n->state;
    uint8_t *full = NULL;
    size_t clen;

    (void)off;
    if (s->h.crypt)
        return vd_error(ENOTSUP, "qcow: compression is not supported with encryption");
    if (len < s->cluster) {
        if (!(full = calloc(1, s->cluster)))
            return vd_error(ENOMEM, "qcow: out of memory");
        memcpy(full, buf, len);
        buf = full;
    }
    clen = deflate_cluster(buf, s->cluster, out, s->cluster - 1);
    if (!clen) {
        memcpy(out, buf, s->cluster);
        clen = s->cluster;
    }
    free(full);
    *out_len = clen;
    return 0;
}

/* Write a compressed cluster's bytes uncompressed (over a cluster that
 * is already allocated). */
static int rewrite_plain(vd_node *n, uint64_t off, uint64_t len, const void *data,
                         size_t clen)
{
    struct q1_state *s = n->state;
    uint8_t *c = malloc(s->cluster);
    int r;

    if (!c)
        return vd_error(ENOMEM, "qcow: out of memory");
    r = inflate_cluster(data, clen, c, s->cluster);
    if (r >= 0)
        r = q1_pwrite(n, off, len, c, 0);
    free(c);
    return r;
}

/* Store a cluster from q1_compress_cluster: compressed at the end of the
 * file (unaligned, as QEMU), or uncompressed when it did not shrink or
 * the cluster is already allocated. */
static int q1_store_compressed(vd_node *n, uint64_t off, uint64_t len, const void *data,
                               size_t clen)
{
    struct q1_state *s = n->state;
    uint64_t l1i = off >> s->l1_shift, host;
    struct q1_run run;
    int r;

    if (s->h.crypt)
        return vd_error(ENOTSUP, "qcow: compression is not supported with encryption");
    if (clen >= s->cluster)
        return q1_pwrite(n, off, len, data, 0);
    pthread_mutex_lock(&s->alloc_lock);
    if ((r = lookup(n, off, s->cluster, &run)) < 0)
        goto out;
    if (run.kind != K_UNALLOC) {
        pthread_mutex_unlock(&s->alloc_lock);
        return rewrite_plain(n, off, len, data, clen);
    }
    if ((!s->l1[l1i] && (r = new_l2(n, l1i)) < 0) ||
        (r = reserve(n, clen, false, &host)) < 0)
        goto out;
    if (host + clen > 1ull << s->csize_shift) {
        r = vd_error(EFBIG, "qcow: compressed cluster offset 0x%" PRIx64 " does not fit in "
                     "an L2 entry", host);
        goto out;
    }
    if ((r = vd_pwrite(n->file, host, clen, data, 0)) < 0 ||
        (r = flush_before_link(n, K_UNALLOC)) < 0)
        goto out;
    r = link_clusters(n, off >> s->l2_shift, 1, 0,
                      Q1_COMPRESSED | (uint64_t)clen << s->csize_shift | host);
out:
    pthread_mutex_unlock(&s->alloc_lock);
    return r;
}

/* Write one whole cluster compressed (both steps). */
static int q1_pwrite_compressed(vd_node *n, uint64_t off, uint64_t len, const void *buf)
{
    uint8_t *out = malloc(VD_COMPRESS_ROOM(len) + ((struct q1_state *)n->state)->cluster);
    size_t clen;
    int r;

    if (!out)
        return vd_error(ENOMEM, "qcow: out of memory");
    if ((r = q1_compress_cluster(n, off, len, buf, out, &clen)) >= 0)
        r = q1_store_compressed(n, off, len, out, clen);
    free(out);
    return r;
}

/* ---- status, flush, make_empty ---- */

/* Unallocated runs fall through, compressed ones are data with no
 * offset, data clusters are in the file. */
static int q1_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                           uint64_t *map, vd_node **file)
{
    struct q1_state *s = n->state;
    struct q1_run run;
    int r;

    if ((r = lookup(n, off, len, &run)) < 0)
        return r;
    *pnum = run.bytes;
    if (run.kind == K_UNALLOC)
        return 0;
    if (run.kind == K_COMPRESSED || s->h.crypt)
        return VD_BS_DATA;
    *map = run.host;
    *file = n->file;
    return VD_BS_DATA | VD_BS_OFFSET_VALID;
}

/* Flush the file. */
static int q1_flush(vd_node *n)
{
    vd_event(n->file, "flush_to_disk");
    return vd_flush(n->file);
}

/* Unlink every cluster (commit empties the image): a zeroed L1 table,
 * the file cut after it. */
static int q1_make_empty(vd_node *n)
{
    struct q1_state *s = n->state;
    uint64_t bytes = s->l1_size * 8, end = s->h.l1_offset + bytes;
    uint8_t *z = calloc(1, bytes ? bytes : 1);
    int r;

    if (!z)
        return vd_error(ENOMEM, "qcow: out of memory");
    pthread_mutex_lock(&s->alloc_lock);
    pthread_mutex_lock(&s->lock);
    r = vd_pwrite(n->file, s->h.l1_offset, bytes, z, 0);
    if (r >= 0) {
        memset(s->l1, 0, bytes);
        for (unsigned i = 0; i < Q1_L2_SLOTS; i++) {
            free(s->slots[i].t);
            s->slots[i].t = NULL;
            s->slots[i].offset = 0;
        }
        s->zcache_off = 0;
        if (!round_up_checked(end, 512, &end))
            end = s->file_end;
        if (end < s->file_end && (r = vd_truncate(n->file, end, true, VD_PREALLOC_OFF)) >= 0)
            s->file_end = end;
    }
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&s->alloc_lock);
    free(z);
    return r < 0 ? r : vd_flush(n->file);
}

/* ---- create ---- */

/* What create was asked for. */
struct q1_create {
    uint64_t size;
    const char *backing;
    bool aes;
};

/* Options of the file under the image: everything but qcow's own, and no
 * size (the file starts empty). */
static vd_opts *proto_opts(vd_opts *o)
{
    static const char *const own[] = { "size", "backing_file", "backing_fmt",
                                       "encrypt.format", "encrypt.key-secret",
                                       "encryption", NULL };
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

/* Read and check the options (size rounded up to a sector, as qemu-img). */
static int parse_create(vd_opts *o, struct q1_create *c)
{
    int r;

    if ((r = vd_opts_get_size(o, "size", 0, &c->size)) < 0)
        return r;
    if (!round_up_checked(c->size, 512, &c->size) || c->size > (uint64_t)INT64_MAX / 2)
        return vd_error(EINVAL, "qcow: image size %" PRIu64 " is too large", c->size);
    c->backing = vd_opts_get(o, "backing_file");
    /* QEMU 7.2 creates images too large for its own open; vdisk refuses
     * them (2 MiB of guest a table entry with either layout) */
    if (div_round_up(c->size, 2 * 1024 * 1024) * 8 > Q1_L1_BYTES_MAX)
        return vd_error(EFBIG, "qcow: image size %" PRIu64 " is too large (its L1 table "
                        "would be over the %u bytes vdisk opens)", c->size, Q1_L1_BYTES_MAX);
    if (c->backing && strlen(c->backing) > Q1_NAME_MAX)
        return vd_error(EINVAL, "qcow: backing file name of %zu bytes is over the %u "
                        "bytes QEMU reads", strlen(c->backing), Q1_NAME_MAX);
    return 0;
}

/* The encryption options, checked as QEMU (after the file is made): aes
 * only, with a secret that exists. */
static int parse_crypt(vd_opts *o, struct q1_create *c)
{
    const char *ef = vd_opts_get(o, "encrypt.format"), *enc = vd_opts_get(o, "encryption");
    const char *id = vd_opts_get(o, "encrypt.key-secret");
    uint8_t *pass;
    size_t len;
    int r;

    if (ef && strcmp(ef, "aes"))
        return vd_error(EINVAL, "Unsupported encryption format");
    c->aes = ef || (enc && (!strcmp(enc, "on") || !strcmp(enc, "true")));
    if (!c->aes)
        return id ? vd_error(EINVAL, "Parameter 'encrypt.format' is missing") : 0;
    if (!id)
        return vd_error(EINVAL, "Parameter 'encrypt.key-secret' is required for cipher");
    if ((r = vd_secret_get(id, &pass, &len)) < 0)
        return r;
    vd_secret_free(pass, len);
    return 0;
}

/* Write the header, the backing file name and the zeroed L1 table, as
 * QEMU lays them out: 512-byte clusters and 4096-entry L2 tables with a
 * backing file ("fat:" names none), 4 KiB clusters and 512-entry tables
 * without. */
static int write_layout(vd_node *f, const struct q1_create *c)
{
    bool backing = c->backing != NULL, named = backing && strcmp(c->backing, "fat:");
    size_t nl = named ? strlen(c->backing) : 0;
    unsigned cb = backing ? 9 : 12, l2b = backing ? 12 : 9;
    uint64_t hlen = (Q1_HEADER_LEN + nl + 7) / 8 * 8;
    uint64_t l1 = (c->size + (1ull << (cb + l2b)) - 1) >> (cb + l2b);
    uint64_t total = hlen + div_round_up(l1 * 8, 512) * 512;
    uint8_t *h = calloc(1, hlen);
    int r;

    if (!h)
        return vd_error(ENOMEM, "out of memory");
    vd_put_be32(h + H_MAGIC, Q1_MAGIC);
    vd_put_be32(h + H_VERSION, Q1_VERSION);
    vd_put_be64(h + H_BACKING_OFF, nl ? Q1_HEADER_LEN : 0);
    vd_put_be32(h + H_BACKING_LEN, (uint32_t)nl);
    vd_put_be64(h + H_SIZE, c->size);
    h[H_CLUSTER_BITS] = (uint8_t)cb;
    h[H_L2_BITS] = (uint8_t)l2b;
    vd_put_be32(h + H_CRYPT, c->aes ? Q1_CRYPT_AES : Q1_CRYPT_NONE);
    vd_put_be64(h + H_L1, hlen);
    memcpy(h + Q1_HEADER_LEN, named ? c->backing : "", nl);
    if ((r = vd_truncate(f, total, true, VD_PREALLOC_OFF)) >= 0)
        r = vd_pwrite(f, 0, hlen, h, 0);
    free(h);
    if (r < 0)
        return vd_error_prefix(r, "qcow: could not write the new image");
    return 0;
}

/* Create an image. */
static int q1_create(const char *filename, vd_opts *opts)
{
    struct q1_create c;
    vd_node *f = NULL;
    vd_opts *p;
    int r;

    if ((r = parse_create(opts, &c)) < 0)
        return r;
    if (!(p = proto_opts(opts)))
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, p);
    vd_opts_free(p);
    if (r < 0 || (r = parse_crypt(opts, &c)) < 0)
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
static const struct vd_opt_desc q1_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "backing_file", VD_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VD_OPT_STRING, "Format of the backing image", NULL },
    { "encryption", VD_OPT_BOOL,
      "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
      NULL },
    { "encrypt.format", VD_OPT_STRING, "Encrypt the image, format choices: 'aes'", NULL },
    { "encrypt.key-secret", VD_OPT_STRING,
      "ID of the secret that provides the AES encryption key", NULL },
    { NULL, 0, NULL, NULL },
};

/* ---- info ---- */

/* The virtual size: whole sectors of the header's size, as QEMU. */
static int64_t q1_getlength(vd_node *n)
{
    return (int64_t)round_down(((struct q1_state *)n->state)->h.size, 512);
}

/* qemu-img info's cluster_size. */
static int64_t q1_cluster_size(vd_node *n)
{
    return (int64_t)((struct q1_state *)n->state)->cluster;
}

/* Is the guest data encrypted (info's "encrypted: yes")? */
static bool q1_is_encrypted(vd_node *n)
{
    return ((struct q1_state *)n->state)->h.crypt == Q1_CRYPT_AES;
}

static const struct vd_opt_desc q1_open_opts[] = {
    { "encrypt.key-secret", VD_OPT_STRING, "ID of the secret that provides the AES "
      "encryption key", NULL },
    { NULL, 0, NULL, NULL },
};

/* A new image reads as zeroes (or its backing file). */
static bool q1_has_zero_init(vd_node *n)
{
    (void)n;
    return true;
}

static const struct vd_driver qcow1_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "qcow",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct q1_state),
    .create_opts = q1_create_opts,
    .open_opts = q1_open_opts,
    .is_encrypted = q1_is_encrypted,
    .probe = q1_probe,
    .open = q1_open,
    .close = q1_close,
    .pread = q1_pread,
    .pwrite = q1_pwrite,
    .flush = q1_flush,
    .block_status = q1_block_status,
    .getlength = q1_getlength,
    .create = q1_create,
    .has_zero_init = q1_has_zero_init,
    .cluster_size = q1_cluster_size,
    .supports_backing = true,
    .pwrite_compressed = q1_pwrite_compressed,
    .compress_cluster = q1_compress_cluster,
    .store_compressed = q1_store_compressed,
    .make_empty = q1_make_empty,
};
VD_DRIVER_REGISTER(qcow1_driver)
