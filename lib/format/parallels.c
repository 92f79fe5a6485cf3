/* SPDX-License-Identifier: BSD-3-Clause */
/* The parallels format (expanding images, docs/interop/parallels.txt): a
 * 64-byte header (magic "WithoutFreeSpace" with BAT entries in sectors or
 * "WithouFreSpacExt" with entries in clusters, version 2, sectors per
 * cluster, BAT entries, disk sectors, the in-use mark, data offset), the
 * BAT of 32-bit little-endian entries after it (0: unallocated, reads as
 * zeroes), clusters after the data offset.  It behaves as QEMU 7.2's
 * driver: the same header checks and messages, new clusters at the end of
 * the data in write order, the in-use mark set while open for writing and
 * cleared (and the file cut to the end of the data) at close, the same
 * check report and repairs; but the data offset counts as used by check,
 * so images with small clusters do not report a leak (QEMU's defect).
 *
 * Invariants:
 *  1. A cluster's BAT entry is written only after its data.
 *  2. alloc_lock serialises allocations (held across the new cluster's
 *     data write); lock guards the BAT and data_end in memory, never held
 *     across I/O.
 *  3. data_end (sectors) is past every cluster the BAT names and past the
 *     header and BAT: new clusters go there. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "vdisk/driver.h"
#include "format/parallels-xml.h"

#define PRL_SECTOR          512u
#define PRL_HEADER_BYTES    64u
#define PRL_MAGIC           "WithoutFreeSpace"
#define PRL_MAGIC2          "WithouFreSpacExt"
#define PRL_VERSION         2u
#define PRL_INUSE           0x746f6e59u
#define PRL_DEFAULT_CLUSTER (1u << 20)
#define PRL_PREALLOC_SIZE   (128u << 20)   /* QEMU's default prealloc-size */
#define PRL_MAX_BAT         (INT32_MAX / 4)
#define PRL_MAX_RUN         65536u         /* clusters one mapping answer looks at */

/* Header field offsets (little endian). */
enum { PH_VERSION = 16, PH_HEADS = 20, PH_CYLS = 24, PH_TRACKS = 28, PH_BAT = 32,
       PH_SECTORS = 36, PH_INUSE = 44, PH_DATA_OFF = 48, PH_FLAGS = 52, PH_EXT = 56 };

struct prl_state {
    pthread_mutex_t lock, alloc_lock;
    bool locks_ok;
    uint8_t *header;               /* header and BAT as on disk */
    uint64_t header_bytes;         /* 64 + 4 * bat_size */
    uint32_t bat_size, tracks, off_mult;
    uint64_t cluster, sectors;
    uint64_t data_end;             /* sectors (invariant 3) */
    uint64_t data_off;             /* sectors, from the header (0: after the BAT) */
    bool unclean;                  /* opened with the in-use mark set */
    bool writable;
    bool prealloc_falloc;          /* grow the file by fallocate, not truncate */
    uint64_t prealloc;             /* bytes the file grows by past a new cluster */
    uint64_t zeroed_end;           /* the file is zeroes from data_end up to here */
    struct prl_xml *xml;           /* a DiskDescriptor.xml was opened (parallels-xml.c) */
};

static inline uint32_t le32_get(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le64_get(const uint8_t *p)
{
    return le32_get(p) | (uint64_t)le32_get(p + 4) << 32;
}
static inline void le32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void le64_put(uint8_t *p, uint64_t v)
{
    le32_put(p, (uint32_t)v);
    le32_put(p + 4, (uint32_t)(v >> 32));
}

/* BAT entry i (lock held or no writers). */
static inline uint32_t bat_get(const struct prl_state *s, uint32_t i)
{
    return le32_get(s->header + PRL_HEADER_BYTES + 4 * (uint64_t)i);
}

/* Host sector of cluster i's entry (0: unallocated). */
static inline uint64_t bat_sector(const struct prl_state *s, uint32_t i)
{
    return (uint64_t)bat_get(s, i) * s->off_mult;
}

/* End of the header and BAT sectors: no cluster may start before it. */
static uint64_t meta_end(const struct prl_state *s)
{
    return div_round_up(s->header_bytes, PRL_SECTOR) * PRL_SECTOR;
}

/* Score 100 on either magic with version 2, as QEMU. */
static int prl_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < PRL_HEADER_BYTES || le32_get(buf + PH_VERSION) != PRL_VERSION)
        return 0;
    return !memcmp(buf, PRL_MAGIC, 16) || !memcmp(buf, PRL_MAGIC2, 16) ? 100 : 0;
}

/* ---- open and close ---- */

/* The header checks QEMU makes, with its messages. */
static int check_header(vd_node *n, const uint8_t *h)
{
    struct prl_state *s = n->state;

    if (!memcmp(h, PRL_MAGIC, 16)) {
        s->off_mult = 1;
        s->sectors = le64_get(h + PH_SECTORS) & 0xffffffffu;
    } else if (!memcmp(h, PRL_MAGIC2, 16)) {
        s->off_mult = le32_get(h + PH_TRACKS);
        s->sectors = le64_get(h + PH_SECTORS);
    } else {
        return vd_error(EINVAL, "Image not in Parallels format");
    }
    if (le32_get(h + PH_VERSION) != PRL_VERSION)
        return vd_error(EINVAL, "Image not in Parallels format");
    s->tracks = le32_get(h + PH_TRACKS);
    if (s->tracks == 0)
        return vd_error(EINVAL, "Invalid image: Zero sectors per track");
    if (s->tracks > INT32_MAX / 513)
        return vd_error(EFBIG, "Invalid image: Too big cluster");
    s->cluster = (uint64_t)s->tracks * PRL_SECTOR;
    s->bat_size = le32_get(h + PH_BAT);
    if (s->bat_size > PRL_MAX_BAT)
        return vd_error(EFBIG, "Catalog too large");
    if (s->sectors > INT64_MAX / PRL_SECTOR)
        return vd_error(EFBIG, "parallels: disk size of %" PRIu64 " sectors is too large",
                        s->sectors);
    return 0;
}

/* Load the header and BAT (inside the file), and find the end of data. */
static int load_bat(vd_node *n, uint64_t file_len)
{
    struct prl_state *s = n->state;
    int r;

    s->header_bytes = PRL_HEADER_BYTES + 4 * (uint64_t)s->bat_size;
    if (s->header_bytes > file_len)
        return vd_error(EINVAL, "parallels: BAT (%" PRIu32 " entries) extends beyond the end "
                        "of the file (%" PRIu64 " bytes)", s->bat_size, file_len);
    if ((r = vd_untrusted_table_check(n, s->header_bytes, "parallels BAT")) < 0)
        return r;
    if (!(s->header = malloc(s->header_bytes)))
        return vd_error(ENOMEM, "parallels: cannot allocate the BAT");
    if ((r = vd_pread(n->file, 0, s->header_bytes, s->header, 0)) < 0)
        return vd_error_prefix(r, "parallels: cannot read the BAT");
    s->data_off = le32_get(s->header + PH_DATA_OFF);
    s->data_end = s->data_off ? s->data_off : div_round_up(s->header_bytes, PRL_SECTOR);
    for (uint32_t i = 0; i < s->bat_size; i++) {
        uint64_t sec = bat_sector(s, i);
        if (sec >= s->data_end)
            s->data_end = sec + s->tracks;
    }
    return 0;
}

/* Write the header sector(s) holding bytes [0, 64). */
static int write_header(vd_node *n)
{
    struct prl_state *s = n->state;

    return vd_pwrite(n->file, 0, PRL_HEADER_BYTES, s->header, 0);
}

/* QEMU's prealloc-mode (falloc, truncate) and prealloc-size options: how
 * the file grows ahead of new clusters (it is cut back at close). */
static int read_prealloc_opts(vd_node *n, vd_opts *opts)
{
    struct prl_state *s = n->state;
    const char *mode = vd_opts_get(opts, "prealloc-mode");
    int r;

    if ((r = vd_opts_get_size(opts, "prealloc-size", PRL_PREALLOC_SIZE, &s->prealloc)) < 0)
        return r;
    if (mode && strcmp(mode, "falloc") && strcmp(mode, "truncate"))
        return vd_error(EINVAL, "invalid parameter value: %s", mode);
    s->prealloc_falloc = !mode || !strcmp(mode, "falloc");
    s->prealloc = VD_MAX(s->prealloc / PRL_SECTOR, s->tracks) * PRL_SECTOR;
    vd_opts_del(opts, "prealloc-mode");
    vd_opts_del(opts, "prealloc-size");
    return 0;
}

/* Check the header, load the BAT; a writable open sets the in-use mark. */
static int prl_open(vd_node *n, vd_opts *opts, int flags)
{
    struct prl_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    uint8_t h[PRL_HEADER_BYTES] = { 0 };
    int r;

    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->alloc_lock, NULL);
    s->locks_ok = true;
    if (file_len < 0)
        return (int)file_len;
    if (file_len && (r = vd_pread(n->file, 0, VD_MIN((uint64_t)file_len, sizeof(h)), h, 0)) < 0)
        return vd_error_prefix(r, "parallels: cannot read the header");
    if (prl_xml_detect(h, sizeof(h)))
        return prl_xml_open(n, &s->xml);
    if ((r = check_header(n, h)) < 0 || (r = read_prealloc_opts(n, opts)) < 0 ||
        (r = load_bat(n, (uint64_t)file_len)) < 0)
        return r;
    s->unclean = le32_get(h + PH_INUSE) == PRL_INUSE;
    if (s->unclean && !n->read_only && !(flags & VD_O_CHECK))
        return vd_error(EACCES, "parallels: Image was not closed correctly; cannot be "
                        "opened read/write");
    if (le64_get(h + PH_EXT) && !n->read_only) {
        fprintf(stderr, "%s: warning: Format Extension ignored in RW mode\n",
                program_invocation_short_name);
        le64_put(s->header + PH_EXT, 0);
    }
    if (!n->read_only) {
        le32_put(s->header + PH_INUSE, PRL_INUSE);
        if ((r = write_header(n)) < 0 || (r = vd_flush(n->file)) < 0)
            return vd_error_prefix(r, "parallels: cannot mark the image in use");
        s->writable = true;
    }
    n->request_alignment = PRL_SECTOR;
    return 0;
}

/* A writable image: clear the in-use mark, cut the file at the end of the
 * data, as QEMU (errors ignored, as there; also after a check that did not
 * repair the mark, as there). */
static void prl_close(vd_node *n)
{
    struct prl_state *s = n->state;

    prl_xml_free(s->xml);
    if (s->writable) {
        le32_put(s->header + PH_INUSE, 0);
        if (write_header(n) == 0)
            vd_truncate(n->file, s->data_end * PRL_SECTOR, true, VD_PREALLOC_OFF);
        vd_flush(n->file);
    }
    free(s->header);
    if (s->locks_ok) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->alloc_lock);
    }
}

/* ---- I/O ---- */

/* Host byte offset of guest byte off, 0 when its cluster is unallocated
 * (also past the BAT, when the header's disk size exceeds it, as QEMU). */
static uint64_t host_of(struct prl_state *s, uint64_t off)
{
    uint64_t i = off / s->cluster;
    uint64_t sec;

    if (i >= s->bat_size)
        return 0;
    pthread_mutex_lock(&s->lock);
    sec = bat_sector(s, i);
    pthread_mutex_unlock(&s->lock);
    return sec ? sec * PRL_SECTOR + off % s->cluster : 0;
}

/* Read from the file, zeroes past its end (as QEMU reads). */
static int read_padded(vd_node *n, uint64_t off, uint64_t len, uint8_t *buf)
{
    uint64_t end = (uint64_t)vd_getlength(n->file);
    uint64_t l = off >= end ? 0 : VD_MIN(len, end - off);

    memset(buf + l, 0, len - l);
    return l ? vd_pread(n->file, off, l, buf, 0) : 0;
}

/* Read guest bytes cluster by cluster. */
static int prl_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct prl_state *s = n->state;
    uint8_t *p = buf;

    (void)flags;
    if (s->xml)
        return prl_xml_pread(s->xml, off, len, buf);
    while (len) {
        uint64_t l = VD_MIN(len, s->cluster - off % s->cluster), host = host_of(s, off);
        int r = 0;
        if (!host)
            memset(p, 0, l);
        else if ((r = read_padded(n, host, l, p)) < 0)
            return r;
        p += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* Write BAT entry i to disk (its sector). */
static int write_bat_entry(vd_node *n, uint32_t i)
{
    struct prl_state *s = n->state;
    uint64_t at = PRL_HEADER_BYTES + 4 * (uint64_t)i;
    uint8_t e[4];

    pthread_mutex_lock(&s->lock);
    memcpy(e, s->header + at, 4);
    pthread_mutex_unlock(&s->lock);
    return vd_pwrite(n->file, at, 4, e, 0);
}

/* Make [host, end) of the file zeroes: bytes left past the end of the
 * data (a crash, another writer's preallocation) are zeroed; a file too
 * short grows past end by the preallocation size, which stays known
 * zeroes.  alloc_lock held. */
static int zero_cluster(vd_node *n, uint64_t host, uint64_t end)
{
    struct prl_state *s = n->state;
    int64_t flen = vd_getlength(n->file);
    uint64_t grown;
    int r = 0;

    if (flen < 0)
        return (int)flen;
    if (end <= s->zeroed_end)
        return 0;
    if (host < (uint64_t)flen)
        r = vd_pwrite_zeroes(n->file, host, VD_MIN(end, (uint64_t)flen) - host, 0);
    if (r < 0 || end <= (uint64_t)flen)
        return r;
    grown = end + s->prealloc;
    if (!s->prealloc_falloc ||
        vd_truncate(n->file, grown, false, VD_PREALLOC_FALLOC) < 0) {
        vd_error_clear();
        if ((r = vd_truncate(n->file, grown, false, VD_PREALLOC_OFF)) < 0)
            return r;
    }
    s->zeroed_end = grown;
    return 0;
}

/* Allocate guest cluster i at the end of the data and write l bytes at in
 * there (the rest of the cluster reads as zeroes); invariants 1 to 3. */
static int alloc_cluster(vd_node *n, uint32_t i, uint64_t in, uint64_t l, const uint8_t *p,
                         int flags)
{
    struct prl_state *s = n->state;
    uint64_t host, end;
    int r;

    if (i >= s->bat_size)           /* QEMU asserts here */
        return vd_error(EIO, "parallels: cluster %" PRIu32 " is past the BAT (%" PRIu32
                        " entries)", i, s->bat_size);
    pthread_mutex_lock(&s->alloc_lock);
    if (bat_sector(s, i)) {                  /* allocated meanwhile */
        pthread_mutex_unlock(&s->alloc_lock);
        return vd_pwrite(n->file, host_of(s, i * s->cluster + in), l, p, flags);
    }
    host = s->data_end * PRL_SECTOR;
    end = host + s->cluster;
    if ((uint64_t)s->data_end / s->off_mult > UINT32_MAX) {
        pthread_mutex_unlock(&s->alloc_lock);
        return vd_error(EFBIG, "parallels: the image file is full");
    }
    r = zero_cluster(n, host, end);
    if (r >= 0)
        r = vd_pwrite(n->file, host + in, l, p, flags);
    if (r >= 0) {
        pthread_mutex_lock(&s->lock);
        le32_put(s->header + PRL_HEADER_BYTES + 4 * (uint64_t)i,
                 (uint32_t)(s->data_end / s->off_mult));
        s->data_end += s->tracks;
        pthread_mutex_unlock(&s->lock);
        r = write_bat_entry(n, i);
    }
    pthread_mutex_unlock(&s->alloc_lock);
    return r < 0 ? vd_error_prefix(r, "parallels: cannot allocate a cluster") : 0;
}

/* Write guest bytes cluster by cluster, allocating as needed. */
static int prl_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct prl_state *s = n->state;
    const uint8_t *p = buf;

    if (s->xml)
        return prl_xml_pwrite(s->xml, off, len, buf);
    while (len) {
        uint64_t in = off % s->cluster, l = VD_MIN(len, s->cluster - in);
        uint64_t host = host_of(s, off);
        uint64_t ci = off / s->cluster;
        if (host && host - in < meta_end(s))
            return vd_error(EIO, "parallels: cluster %" PRIu64 " overlaps the header or the "
                            "BAT: not written", ci);
        int r = host ? vd_pwrite(n->file, host, l, p, flags)
                     : alloc_cluster(n, ci > UINT32_MAX ? UINT32_MAX : (uint32_t)ci, in, l,
                                     p, flags);
        if (r < 0)
            return r;
        p += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* Flush the file (the BAT is written as clusters are allocated). */
static int prl_flush(vd_node *n)
{
    struct prl_state *s = n->state;

    if (s->xml)
        return prl_xml_flush(s->xml);
    return vd_flush(n->file);
}

/* Runs of clusters contiguous in the file are data; unallocated ones
 * are not allocated (zeroes, no backing file).  One answer covers at most
 * PRL_MAX_RUN clusters, and everything past the BAT at once. */
static int prl_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, vd_node **file)
{
    struct prl_state *s = n->state;

    if (s->xml)
        return prl_xml_block_status(s->xml, off, len, pnum, map, file);
    uint64_t first = host_of(s, off), done = VD_MIN(len, s->cluster - off % s->cluster);

    if (off / s->cluster >= s->bat_size) {
        *pnum = len;
        return 0;
    }
    for (uint32_t k = 0; done < len && k < PRL_MAX_RUN; k++) {
        uint64_t h = host_of(s, off + done);
        if ((first == 0) != (h == 0) || (first && h != first + done))
            break;
        done += VD_MIN(len - done, s->cluster);
    }
    *pnum = done;
    if (!first)
        return 0;
    *map = first;
    *file = n->file;
    return VD_BS_DATA | VD_BS_OFFSET_VALID;
}

/* Guest size: the header's sectors. */
static int64_t prl_getlength(vd_node *n)
{
    const struct prl_xml *x = ((struct prl_state *)n->state)->xml;

    if (x)
        return (int64_t)(x->sectors * PRL_SECTOR);
    return (int64_t)(((struct prl_state *)n->state)->sectors * PRL_SECTOR);
}

/* QEMU's get_info fails for parallels: no cluster size or dirty flag. */
static int64_t prl_cluster_size(vd_node *n)
{
    (void)n;
    return -ENOTSUP;
}

/* New images read as zeroes. */
static bool prl_has_zero_init(vd_node *n)
{
    (void)n;
    return true;
}

/* ---- check ---- */

/* qsort comparator: (host offset, cluster) pairs by offset. */
static int cmp_pair(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Checks QEMU 7.2 lacks: clusters in the header or BAT, clusters sharing
 * bytes of the file (reported, not repaired: which one holds the data is
 * unknown).  Lock held. */
static int check_overlaps(struct prl_state *s, struct vd_check_result *res)
{
    uint64_t *pairs = malloc(2 * sizeof(uint64_t) * (s->bat_size ? s->bat_size : 1)), n = 0;

    if (!pairs)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->bat_size; i++) {
        uint64_t off = bat_sector(s, i) * PRL_SECTOR;
        if (!off)
            continue;
        if (off < meta_end(s)) {
            fprintf(stderr, "ERROR cluster %" PRIu32 " overlaps the header or the BAT\n", i);
            res->corruptions++;
        }
        pairs[2 * n] = off;
        pairs[2 * n++ + 1] = i;
    }
    qsort(pairs, n, 2 * sizeof(uint64_t), cmp_pair);
    for (uint64_t k = 1; k < n; k++)
        if (pairs[2 * k] < pairs[2 * (k - 1)] + s->cluster) {
            fprintf(stderr, "ERROR cluster %" PRIu64 " overlaps cluster %" PRIu64 "\n",
                    pairs[2 * k + 1], pairs[2 * (k - 1) + 1]);
            res->corruptions++;
        }
    free(pairs);
    return 0;
}

/* Where clusters may start: the data offset, else after the BAT. */
static uint64_t data_start(const struct prl_state *s)
{
    return s->data_off ? s->data_off * PRL_SECTOR
                       : div_round_up(s->header_bytes, PRL_SECTOR) * PRL_SECTOR;
}

/* "Repairing" or "ERROR", as QEMU starts its report lines. */
static const char *verb(int fix, int flag)
{
    return fix & flag ? "Repairing" : "ERROR";
}

/* Walk the BAT as QEMU does: entries past the end of the file are
 * corruptions (zeroed when repairing); count allocated and fragmented
 * clusters; return the highest cluster offset. */
static uint64_t check_bat(struct prl_state *s, uint64_t size, struct vd_check_result *res,
                          int fix, bool *dirty)
{
    uint64_t high = 0, prev = 0;

    for (uint32_t i = 0; i < s->bat_size; i++) {
        uint64_t off = bat_sector(s, i) * PRL_SECTOR;
        if (!off) {
            prev = 0;
            continue;
        }
        if (off > size) {
            fprintf(stderr, "%s cluster %" PRIu32 " is outside image\n", verb(fix, 2), i);
            res->corruptions++;
            if (fix & 2) {
                le32_put(s->header + PRL_HEADER_BYTES + 4 * (uint64_t)i, 0);
                res->corruptions_fixed++;
                *dirty = true;
                prev = 0;
                continue;
            }
        }
        res->allocated_clusters++;
        high = VD_MAX(high, off);
        if (prev && prev + s->cluster != off)
            res->fragmented_clusters++;
        prev = off;
    }
    return high;
}


/* qemu-img check (and -r): the in-use mark, the BAT, space leaked after
 * the data.  The end of the data is never before the data offset. */
static int prl_check(vd_node *n, struct vd_check_result *res, int fix)
{
    struct prl_state *s = n->state;
    int64_t size = vd_getlength(n->file);
    uint64_t high, end;
    bool dirty = false;
    int r = 0;

    if (s->xml)
        return vd_error(ENOTSUP, "parallels: check the images of a DiskDescriptor.xml one by one");

    if (size < 0) {
        res->check_errors++;
        return (int)size;
    }
    pthread_mutex_lock(&s->alloc_lock);
    pthread_mutex_lock(&s->lock);
    if (s->unclean) {
        fprintf(stderr, "%s image was not closed correctly\n", verb(fix, 2));
        res->corruptions++;
        if (fix & 2) {
            res->corruptions_fixed++;
            s->unclean = false;              /* close clears the mark */
        }
    }
    res->total_clusters = s->bat_size;
    high = check_bat(s, (uint64_t)size, res, fix, &dirty);
    r = check_overlaps(s, res);
    pthread_mutex_unlock(&s->lock);
    if (r >= 0 && dirty && (r = vd_pwrite(n->file, 0, s->header_bytes, s->header, 0)) >= 0)
        r = vd_flush(n->file);
    if (r < 0) {
        res->check_errors++;
        goto out;
    }
    end = VD_MAX(high + s->cluster, data_start(s));
    res->image_end_offset = (int64_t)end;
    if ((uint64_t)size > end) {
        int64_t count = (int64_t)div_round_up((uint64_t)size - end, s->cluster);
        fprintf(stderr, "%s space leaked at the end of the image %" PRIu64 "\n",
                verb(fix, 1), (uint64_t)size - end);
        res->leaks += count;
        if (fix & 1) {
            if ((r = vd_truncate(n->file, end, true, VD_PREALLOC_OFF)) < 0) {
                res->check_errors++;
                goto out;
            }
            res->leaks_fixed += count;
        }
    }
out:
    pthread_mutex_unlock(&s->alloc_lock);
    return r;
}

/* ---- create ---- */

/* The file's options: everything but ours. */
static vd_opts *proto_opts(vd_opts *o)
{
    vd_opts *p = vd_opts_new();

    for (size_t i = 0; p && i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        if (strcmp(k, "cluster_size") && vd_opts_set(p, k, vd_opts_value(o, i)) < 0) {
            vd_opts_free(p);
            return NULL;
        }
    }
    return p;
}

/* Header and empty BAT as QEMU writes them (16 heads, 32 sectors a
 * track for the geometry; data after the BAT, rounded up to a cluster). */
static int write_new(vd_node *f, uint64_t size, uint64_t cluster)
{
    uint64_t sectors = size / PRL_SECTOR, bat = div_round_up(sectors, cluster / PRL_SECTOR);
    uint64_t data = div_round_up(PRL_HEADER_BYTES + 4 * bat, cluster) * cluster;
    uint8_t h[PRL_HEADER_BYTES] = { 0 };
    int r;

    memcpy(h, PRL_MAGIC2, 16);
    le32_put(h + PH_VERSION, PRL_VERSION);
    le32_put(h + PH_HEADS, 16);
    le32_put(h + PH_CYLS, (uint32_t)(sectors / 16 / 32));
    le32_put(h + PH_TRACKS, (uint32_t)(cluster / PRL_SECTOR));
    le32_put(h + PH_BAT, (uint32_t)bat);
    le64_put(h + PH_SECTORS, sectors);
    le32_put(h + PH_DATA_OFF, (uint32_t)(data / PRL_SECTOR));
    r = vd_truncate(f, 0, true, VD_PREALLOC_OFF);
    if (r >= 0)
        r = vd_truncate(f, data, true, VD_PREALLOC_OFF);
    if (r >= 0)
        r = vd_pwrite(f, 0, sizeof(h), h, 0);
    return r < 0 ? vd_error_prefix(r, "Failed to create Parallels image") : 0;
}

/* create: the file (its own options), then header and BAT. */
static int prl_create(const char *filename, vd_opts *opts)
{
    uint64_t size, cluster;
    vd_node *f = NULL;
    vd_opts *p;
    int r;

    if ((r = vd_opts_get_size(opts, "size", 0, &size)) < 0 ||
        (r = vd_opts_get_size(opts, "cluster_size", PRL_DEFAULT_CLUSTER, &cluster)) < 0)
        return r;
    /* both rounded up to a sector, as QEMU does */
    if (size > UINT64_MAX - PRL_SECTOR || cluster > UINT64_MAX - PRL_SECTOR)
        return vd_error(E2BIG, "Image size is too large for this cluster size");
    size = div_round_up(size, PRL_SECTOR) * PRL_SECTOR;
    cluster = div_round_up(cluster, PRL_SECTOR) * PRL_SECTOR;
    if (!cluster || size / cluster >= (1ull << 32))
        return vd_error(E2BIG, "Image size is too large for this cluster size");
    if (cluster > (uint64_t)INT32_MAX / 513 * PRL_SECTOR)
        return vd_error(EINVAL, "Cluster size is too large");
    if (!(p = proto_opts(opts)))
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, p);
    vd_opts_free(p);
    if (r < 0 || (r = vd_open(&f, filename, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) < 0)
        return r;
    r = write_new(f, size, cluster);
    if (r >= 0)
        r = vd_flush(f);
    vd_close(f);
    return r;
}

static const struct vd_opt_desc prl_open_opts[] = {
    { "prealloc-size", VD_OPT_SIZE, "Preallocation size on image expansion", "128M" },
    { "prealloc-mode", VD_OPT_STRING,
      "Preallocation mode on image expansion (allowed values: falloc, truncate)", "falloc" },
    { NULL, 0, NULL, NULL },
};

/* -o help text as qemu-img 7.2 prints it. */
static const struct vd_opt_desc prl_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "cluster_size", VD_OPT_SIZE, "Parallels image cluster size", "1048576" },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver prl_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "parallels",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct prl_state),
    .open_opts = prl_open_opts,
    .create_opts = prl_create_opts,
    .probe = prl_probe,
    .open = prl_open,
    .close = prl_close,
    .pread = prl_pread,
    .pwrite = prl_pwrite,
    .flush = prl_flush,
    .block_status = prl_block_status,
    .getlength = prl_getlength,
    .create = prl_create,
    .check = prl_check,
    .cluster_size = prl_cluster_size,
    .has_zero_init = prl_has_zero_init,
    .supports_backing = true,      /* unallocated clusters read as zeroes */
};
VD_DRIVER_REGISTER(prl_driver)
