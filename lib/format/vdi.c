/* SPDX-License-Identifier: BSD-3-Clause */
/* The vdi format (VirtualBox Disk Image 1.1): a 512-byte header, a block
 * map of 32-bit little-endian entries and 1 MiB data blocks, dynamic
 * (blocks allocated at the end of the file on first write) or static (all
 * blocks allocated at create).  It behaves as QEMU 7.2's driver: the same
 * header checks and messages, new blocks at the same offsets, the same
 * header and block map bytes, the same check report; plus checks of its
 * own on the layout (header, block map and data must not overlap; the
 * block map and the data read must lie inside the file).  Differencing
 * images, which QEMU refuses, are read with their parent (invariant 4).
 *
 * Invariants:
 *  1. A guest block is linked in the block map only after its whole data
 *     block (the guest bytes, zeroes around them) has been written.
 *  2. Allocations run one at a time (alloc_lock, held across the new
 *     block's data write: it is the only lock held across data I/O, and
 *     readers and in-place writers never take it).  The new block's index
 *     is the header's count of allocated blocks, which is also the index
 *     after the highest one in use; the header goes to disk before the
 *     block map sector, as QEMU writes them, so that a crash between the
 *     two leaves an unused block, never one index given out twice.
 *  3. lock guards the block map and header bytes in memory; it is held
 *     only to read or change them, never across I/O.
 *  4. A differencing image (VirtualBox's type diff or undo with a link
 *     UUID; vdi-parent.c finds its parent) reads a never-written block
 *     (0xffffffff) from its parent and a zero block (0xfffffffe) as
 *     zeroes; a write that allocates a never-written block fills the rest
 *     of it from the parent (copy on write), so the parent is never
 *     written and the child reads the same after the write. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "format/vdi-parent.h"
#include "util/checked.h"
#include "util/json.h"
#include "vdisk/driver.h"

/* ---- on-disk layout ---- */
#define VDI_SIGNATURE       0xbeda107fu
#define VDI_VERSION_1_1     0x00010001u
#define VDI_TYPE_DYNAMIC    1u
#define VDI_TYPE_STATIC     2u
#define VDI_TYPE_UNDO       3u             /* differencing types of VirtualBox */
#define VDI_TYPE_DIFF       4u
#define VDI_SECTOR          512u
#define VDI_HEADER_BYTES    512u           /* the header sector QEMU reads and writes */
#define VDI_PREHEADER_LEN   0x48u          /* text, signature, version */
#define VDI_HEADER_V1_LEN   0x180u         /* header size of version 1.1 */
#define VDI_BLOCK_SIZE      (1u << 20)     /* the only block size QEMU supports */
#define VDI_UNALLOCATED     0xffffffffu    /* never written: reads as zeroes */
#define VDI_DISCARDED       0xfffffffeu    /* discarded: reads as zeroes */
/* QEMU's bounds: the whole block map, rounded up to a sector, fits in an int. */
#define VDI_BLOCKS_MAX      ((0x80000000u - VDI_SECTOR) / 4u)
#define VDI_DISK_SIZE_MAX   ((uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE)
#define VDI_TEXT            "<<< QEMU VM Virtual Disk Image >>>\n"
#define VDI_ENTRIES_PER_SECTOR (VDI_SECTOR / 4u)
/* Blocks one mapping answer may cover (bounds the time lock is held). */
#define VDI_MAX_RUN_BLOCKS  65536u
/* Block map bytes read at a time where the map is not kept in memory. */
#define VDI_MAP_CHUNK       (1u << 20)

/* Header field offsets (little endian). */
enum {
    VH_SIGNATURE = 0x40, VH_VERSION = 0x44, VH_HEADER_SIZE = 0x48, VH_TYPE = 0x4c,
    VH_OFFSET_BMAP = 0x154, VH_OFFSET_DATA = 0x158, VH_SECTOR_SIZE = 0x168,
    VH_DISK_SIZE = 0x170, VH_BLOCK_SIZE = 0x178, VH_BLOCK_EXTRA = 0x17c, VH_BLOCKS = 0x180,
    VH_ALLOCATED = 0x184, VH_UUID_IMAGE = 0x188, VH_UUID_MODIFY = 0x198,
    VH_UUID_LINK = 0x1a8, VH_UUID_PARENT = 0x1b8,
};

/* The header fields that matter, host order. */
struct vdi_header {
    uint32_t signature, version, header_size, type;
    uint32_t offset_bmap, offset_data, sector_size, block_size, block_extra;
    uint32_t blocks, blocks_allocated;
    uint64_t disk_size;
    bool link_uuid, parent_uuid;          /* non-null */
    bool diff;                            /* differencing (invariant 4) */
};

struct vdi_state {
    pthread_mutex_t lock;          /* bmap, hdr, blocks_allocated, max_used, file_len */
    pthread_mutex_t alloc_lock;    /* one allocation at a time (invariant 2) */
    bool locks_ok;
    uint8_t hdr[VDI_HEADER_BYTES]; /* the header as read (disk size rounded up) */
    uint32_t type, offset_bmap, offset_data, blocks, blocks_allocated;
    bool diff;                     /* differencing image (invariant 4) */
    uint64_t disk_size;            /* rounded up to a sector */
    uint8_t *bmap;                 /* whole sectors of the map as on disk */
    uint32_t mapped;               /* entries the guest reaches (cover disk_size) */
    uint32_t loaded;               /* entries in bmap (mapped, rounded up to a sector) */
    uint32_t max_used;             /* highest valid index in use + 1, 0: none */
    uint64_t file_len;             /* length of the image file */
    uint8_t *alloc_buf;            /* one block, for partial allocating writes */
};

/* ---- helpers ---- */

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

/* Does a block map entry name a data block? */
static inline bool is_allocated(uint32_t e) { return e < VDI_DISCARDED; }

/* Read from the file, zero-filled beyond its end (as QEMU reads). */
static int read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf)
{
    uint64_t end = (uint64_t)vd_getlength(f), l;

    l = off >= end ? 0 : VD_MIN(len, end - off);
    if (l < len)
        memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(f, off, l, buf, 0) : 0;
}

/* Entry i of the block map in memory (i < s->loaded). Lock held. */
static inline uint32_t entry_get(const struct vdi_state *s, uint64_t i)
{
    return le32_get(s->bmap + 4 * i);
}

/* Host offset of byte in of data block e (no overflow: e < 2^32). */
static inline uint64_t host_offset(const struct vdi_state *s, uint32_t e, uint64_t in)
{
    return s->offset_data + (uint64_t)e * VDI_BLOCK_SIZE + in;
}

/* Score 100 on the signature, as QEMU (the probe buffer is zero-padded). */
static int vdi_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= VH_SIGNATURE + 4 && le32_get(buf + VH_SIGNATURE) == VDI_SIGNATURE)
        return 100;
    return 0;
}

/* ---- open ---- */

/* True when the 16 bytes at p are not all zero. */
static bool uuid_set(const uint8_t *p)
{
    return !buffer_is_zero(p, 16);
}

/* Decode the header sector. */
static void decode_header(const uint8_t *h, struct vdi_header *hd)
{
    hd->signature = le32_get(h + VH_SIGNATURE);
    hd->version = le32_get(h + VH_VERSION);
    hd->header_size = le32_get(h + VH_HEADER_SIZE);
    hd->type = le32_get(h + VH_TYPE);
    hd->offset_bmap = le32_get(h + VH_OFFSET_BMAP);
    hd->offset_data = le32_get(h + VH_OFFSET_DATA);
    hd->sector_size = le32_get(h + VH_SECTOR_SIZE);
    hd->disk_size = le64_get(h + VH_DISK_SIZE);
    hd->block_size = le32_get(h + VH_BLOCK_SIZE);
    hd->block_extra = le32_get(h + VH_BLOCK_EXTRA);
    hd->blocks = le32_get(h + VH_BLOCKS);
    hd->blocks_allocated = le32_get(h + VH_ALLOCATED);
    hd->link_uuid = uuid_set(h + VH_UUID_LINK);
    hd->parent_uuid = uuid_set(h + VH_UUID_PARENT);
    hd->diff = vdi_is_differencing(h);
}

/* The size checks that come first in QEMU; the disk size is then rounded
 * up to a sector (VirtualBox can write odd sizes). */
static int check_size(struct vdi_header *hd)
{
    if (hd->disk_size > VDI_DISK_SIZE_MAX)
        return vd_error(ENOTSUP, "Unsupported VDI image size (size is 0x%" PRIx64
                        ", max supported is 0x%" PRIx64 ")", hd->disk_size,
                        VDI_DISK_SIZE_MAX);
    hd->disk_size = div_round_up(hd->disk_size, VDI_SECTOR) * VDI_SECTOR;
    return 0;
}

/* The header fields QEMU checks, in its order and with its messages. */
static int check_fields(const struct vdi_header *hd)
{
    uint64_t room = (uint64_t)hd->blocks * hd->block_size;

    if (hd->signature != VDI_SIGNATURE)
        return vd_error(EINVAL, "Image not in VDI format (bad signature %08" PRIx32 ")",
                        hd->signature);
    if (hd->version != VDI_VERSION_1_1)
        return vd_error(ENOTSUP, "unsupported VDI image (version %" PRIu32 ".%" PRIu32 ")",
                        hd->version >> 16, hd->version & 0xffff);
    if (hd->offset_bmap % VDI_SECTOR)
        return vd_error(ENOTSUP, "unsupported VDI image (unaligned block map offset 0x%"
                        PRIx32 ")", hd->offset_bmap);
    if (hd->offset_data % VDI_SECTOR)
        return vd_error(ENOTSUP, "unsupported VDI image (unaligned data offset 0x%" PRIx32
                        ")", hd->offset_data);
    if (hd->sector_size != VDI_SECTOR)
        return vd_error(ENOTSUP, "unsupported VDI image (sector size %" PRIu32
                        " is not %u)", hd->sector_size, VDI_SECTOR);
    if (hd->block_size != VDI_BLOCK_SIZE)
        return vd_error(ENOTSUP, "unsupported VDI image (block size %" PRIu32
                        " is not %u)", hd->block_size, VDI_BLOCK_SIZE);
    if (hd->disk_size > room)
        return vd_error(ENOTSUP, "unsupported VDI image (disk size %" PRIu64 ", image "
                        "bitmap has room for %" PRIu64 ")", hd->disk_size, room);
    if (hd->link_uuid && !hd->diff)
        return vd_error(ENOTSUP, "unsupported VDI image (non-NULL link UUID)");
    if (hd->parent_uuid && !hd->diff)
        return vd_error(ENOTSUP, "unsupported VDI image (non-NULL parent UUID)");
    if (hd->blocks > VDI_BLOCKS_MAX)
        return vd_error(ENOTSUP, "unsupported VDI image (too many blocks %u, max is %u)",
                        hd->blocks, VDI_BLOCKS_MAX);
    return 0;
}

/* Checks beyond QEMU's: a version 1.1 header of known type, no extra
 * bytes before each block (QEMU would read them as data), and header,
 * block map and data in this order without overlapping, the block map
 * inside the file. */
static int check_layout(const struct vdi_header *hd, uint64_t file_len)
{
    uint64_t map_end = (uint64_t)hd->offset_bmap + (uint64_t)hd->blocks * 4;

    if (hd->header_size < VDI_HEADER_V1_LEN)
        return vd_error(ENOTSUP, "unsupported VDI image (header size 0x%" PRIx32
                        " is below 0x%x)", hd->header_size, VDI_HEADER_V1_LEN);
    if (hd->type != VDI_TYPE_DYNAMIC && hd->type != VDI_TYPE_STATIC && !hd->diff)
        return vd_error(ENOTSUP, "unsupported VDI image (image type %" PRIu32 ")", hd->type);
    if (hd->block_extra)
        return vd_error(ENOTSUP, "unsupported VDI image (%" PRIu32 " extra bytes per block)",
                        hd->block_extra);
    if (hd->offset_bmap < VDI_HEADER_BYTES ||
        hd->offset_bmap < (uint64_t)VDI_PREHEADER_LEN + hd->header_size)
        return vd_error(EINVAL, "vdi: block map offset 0x%" PRIx32 " overlaps the header",
                        hd->offset_bmap);
    if (hd->offset_data < map_end)
        return vd_error(EINVAL, "vdi: data offset 0x%" PRIx32 " overlaps the block map "
                        "(0x%" PRIx32 "..0x%" PRIx64 ")", hd->offset_data, hd->offset_bmap,
                        map_end);
    if (map_end > file_len)
        return vd_error(EINVAL, "vdi: block map (%" PRIu32 " entries at 0x%" PRIx32 ") "
                        "extends beyond the end of the file (%" PRIu64 " bytes)",
                        hd->blocks, hd->offset_bmap, file_len);
    return 0;
}

/* Load the sectors of the block map that the guest reaches and note the
 * highest block index they use. */
static int load_bmap(vd_node *n)
{
    struct vdi_state *s = n->state;
    uint64_t bytes;
    int r;

    s->mapped = (uint32_t)div_round_up(s->disk_size, VDI_BLOCK_SIZE);
    bytes = div_round_up((uint64_t)s->mapped * 4, VDI_SECTOR) * VDI_SECTOR;
    s->loaded = (uint32_t)(bytes / 4);
    if ((r = vd_untrusted_table_check(n, bytes, "vdi block map")) < 0)
        return r;
    if (!(s->bmap = malloc(bytes ? bytes : 1)))
        return vd_error(ENOMEM, "vdi: cannot allocate the block map (%" PRIu64 " bytes)",
                        bytes);
    if (bytes && (r = read_padded(n->file, s->offset_bmap, bytes, s->bmap)) < 0)
        return vd_error_prefix(r, "vdi: cannot read the block map");
    for (uint32_t i = 0; i < s->mapped; i++) {
        uint32_t e = entry_get(s, i);
        if (is_allocated(e) && e < s->blocks && e >= s->max_used)
            s->max_used = e + 1;
    }
    return 0;
}

/* Name the parent of a differencing image (a file beside it).  An open
 * that skips backing files goes on without a parent it cannot find. */
static int open_parent(vd_node *n, int flags)
{
    struct vdi_state *s = n->state;
    char *name = NULL;
    int r;

    if (vd_node_untrusted(n))
        /* the parent scan reads the other files of the directory */
        return vd_error(EPERM, "vdi image '%s' is a differencing image, whose parent is "
                        "another file: refused in untrusted mode", n->filename);
    if (strcmp(n->file->drv->name, "file"))
        r = vd_error(ENOTSUP, "vdi: '%s' is a differencing image, whose parent is found "
                     "only beside an image in a local file", n->filename);
    else
        r = vdi_find_parent(n->filename, s->hdr, s->disk_size, &name);
    if ((r == -ENOENT || r == -ENOTSUP) && (flags & VD_O_NO_BACKING)) {
        vd_error_clear();
        return 0;
    }
    if (r < 0)
        return r;
    /* "./" keeps a name such as "nbd:x.vdi" from naming a protocol */
    if (strchr(name, ':')) {
        char *dotted = NULL;
        r = asprintf(&dotted, "./%s", name) < 0 ? vd_error(ENOMEM, "out of memory") : 0;
        free(name);
        name = dotted;
    }
    if (r >= 0)
        r = vd_node_set_backing_name(n, name, "vdi");
    free(name);
    return r;
}

/* Read and check the header, load the block map, name the parent. */
static int vdi_open(vd_node *n, vd_opts *opts, int flags)
{
    struct vdi_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    struct vdi_header hd;
    int r;

    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->alloc_lock, NULL);
    s->locks_ok = true;
    if (file_len < 0)
        return (int)file_len;
    if ((r = read_padded(n->file, 0, VDI_HEADER_BYTES, s->hdr)) < 0)
        return vd_error_prefix(r, "vdi: cannot read the header");
    decode_header(s->hdr, &hd);
    if ((r = check_size(&hd)) < 0 || (r = check_fields(&hd)) < 0 ||
        (r = check_layout(&hd, (uint64_t)file_len)) < 0)
        return r;
    s->type = hd.type;
    s->diff = hd.diff;
    s->offset_bmap = hd.offset_bmap;
    s->offset_data = hd.offset_data;
    s->blocks = hd.blocks;
    s->blocks_allocated = hd.blocks_allocated;
    s->disk_size = hd.disk_size;
    s->file_len = (uint64_t)file_len;
    le64_put(s->hdr + VH_DISK_SIZE, hd.disk_size);   /* QEMU writes it back rounded */
    if ((r = load_bmap(n)) < 0)
        return r;
    return s->diff ? open_parent(n, flags) : 0;
}

/* Free the block map (everything is on disk already). */
static void vdi_close(vd_node *n)
{
    struct vdi_state *s = n->state;

    free(s->bmap);
    free(s->alloc_buf);
    if (s->locks_ok) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->alloc_lock);
    }
}

/* ---- mapping ---- */

/* A run of guest bytes with one kind of mapping. */
struct vdi_run {
    bool data;                     /* in data blocks (else reads as zeroes) */
    bool parent;                   /* never written in a differencing image */
    uint32_t block, entry;         /* first guest block and its map entry */
    uint64_t host;                 /* host offset of the first byte (data) */
    uint64_t bytes;
};

/* Does block map entry e read from the parent (invariant 4)? */
static inline bool from_parent(const struct vdi_state *s, uint32_t e)
{
    return s->diff && e == VDI_UNALLOCATED;
}

/* The run at guest offset off (inside the disk), at most len bytes: blocks
 * that follow are joined while they stay unallocated, or stay allocated
 * at the next host block. */
static void get_run(vd_node *n, uint64_t off, uint64_t len, struct vdi_run *run)
{
    struct vdi_state *s = n->state;
    uint64_t bi = off / VDI_BLOCK_SIZE, in = off % VDI_BLOCK_SIZE, k = 1;

    pthread_mutex_lock(&s->lock);
    run->block = (uint32_t)bi;
    run->entry = entry_get(s, bi);
    run->data = is_allocated(run->entry);
    run->parent = from_parent(s, run->entry);
    run->bytes = VD_MIN(len, VDI_BLOCK_SIZE - in);
    while (run->bytes < len && bi + k < s->mapped && k < VDI_MAX_RUN_BLOCKS) {
        uint32_t e = entry_get(s, bi + k);
        if (is_allocated(e) != run->data || from_parent(s, e) != run->parent ||
            (run->data && (uint64_t)e != (uint64_t)run->entry + k))
            break;
        run->bytes += VD_MIN(len - run->bytes, (uint64_t)VDI_BLOCK_SIZE);
        k++;
    }
    pthread_mutex_unlock(&s->lock);
    run->host = run->data ? host_offset(s, run->entry, in) : 0;
}

/* Refuse data runs whose blocks are out of the image or whose bytes lie
 * beyond the end of the file (QEMU would read zeroes or other blocks). */
static int check_run(vd_node *n, const struct vdi_run *run)
{
    struct vdi_state *s = n->state;
    uint64_t in = run->host - host_offset(s, run->entry, 0);
    uint64_t nblocks = div_round_up(in + run->bytes, VDI_BLOCK_SIZE), file_len;

    if ((uint64_t)run->entry + nblocks > s->blocks)
        return vd_error(EIO, "vdi: block map entry of block %" PRIu32 " is out of range "
                        "(%" PRIu64 " for %" PRIu32 " blocks in image)", run->block,
                        (uint64_t)run->entry + nblocks - 1, s->blocks);
    pthread_mutex_lock(&s->lock);
    file_len = s->file_len;
    pthread_mutex_unlock(&s->lock);
    if (run->host + run->bytes > file_len)
        return vd_error(EIO, "vdi: data of block %" PRIu32 " at 0x%" PRIx64 " lies beyond "
                        "the end of the file (%" PRIu64 " bytes)", run->block, run->host,
                        file_len);
    return 0;
}

/* ---- reads ---- */

/* Read guest bytes from the parent: zeroes past its end, and where a
 * differencing image was opened without it. */
static int read_parent(vd_node *n, uint64_t off, uint64_t len, uint8_t *buf)
{
    int64_t bl = n->backing ? vd_getlength(n->backing) : 0;
    uint64_t l;

    if (bl < 0)
        return (int)bl;
    l = off >= (uint64_t)bl ? 0 : VD_MIN(len, (uint64_t)bl - off);
    memset(buf + l, 0, len - l);
    return l ? vd_pread(n->backing, off, l, buf, 0) : 0;
}

/* Read run by run: the parent for a differencing image's never-written
 * blocks, zeroes for other unallocated blocks, the file for data. */
static int vdi_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    uint8_t *p = buf;
    struct vdi_run run;
    int r;

    while (len) {
        get_run(n, off, len, &run);
        if (run.parent)
            r = read_parent(n, off, run.bytes, p);
        else if (!run.data)
            memset(p, 0, run.bytes), r = 0;
        else if ((r = check_run(n, &run)) >= 0)
            r = vd_pread(n->file, run.host, run.bytes, p, flags);
        if (r < 0)
            return r;
        off += run.bytes;
        len -= run.bytes;
        p += run.bytes;
    }
    return 0;
}

/* ---- writes ---- */

/* May index idx be given to a new block?  It must be in the image and
 * above every index in use (else the header's count is wrong and QEMU
 * would hand out a block twice). */
static int check_new_index(const struct vdi_state *s, uint32_t idx)
{
    if (idx >= s->blocks)
        return vd_error(ENOSPC, "vdi: no free block left in the image (%" PRIu32
                        " of %" PRIu32 " allocated)", idx, s->blocks);
    if (idx < s->max_used)
        return vd_error(EIO, "vdi: the header counts %" PRIu32 " allocated blocks but "
                        "block %" PRIu32 " is in use; the image is corrupt", idx,
                        s->max_used - 1);
    return 0;
}

/* Fill buf (one block) with what guest block bi reads before its first
 * write: the parent's bytes when cow (invariant 4), else zeroes. */
static int block_before(vd_node *n, uint32_t bi, bool cow, uint8_t *buf)
{
    struct vdi_state *s = n->state;
    uint64_t off = (uint64_t)bi * VDI_BLOCK_SIZE;
    uint64_t len = VD_MIN((uint64_t)VDI_BLOCK_SIZE, s->disk_size - off);

    memset(buf + len, 0, VDI_BLOCK_SIZE - len);
    if (!cow) {
        memset(buf, 0, len);
        return 0;
    }
    return read_parent(n, off, len, buf);
}

/* Write the data of a new block at host block idx for guest block bi: the
 * guest bytes at in, around them zeroes or (cow) the parent's bytes.
 * alloc_lock held. */
static int write_new_block(vd_node *n, uint32_t bi, uint32_t idx, bool cow, uint64_t in,
                           uint64_t len, const uint8_t *p, int flags)
{
    struct vdi_state *s = n->state;
    uint64_t host = host_offset(s, idx, 0), end = host + VDI_BLOCK_SIZE;
    int r;

    if (s->file_len < end) {
        if ((r = vd_truncate(n->file, end, true, VD_PREALLOC_OFF)) < 0)
            return vd_error_prefix(r, "vdi: could not grow the image file");
        pthread_mutex_lock(&s->lock);
        s->file_len = end;
        pthread_mutex_unlock(&s->lock);
    }
    if (in == 0 && len == VDI_BLOCK_SIZE)
        return vd_pwrite(n->file, host, len, p, flags);
    if (!s->alloc_buf && !(s->alloc_buf = malloc(VDI_BLOCK_SIZE)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = block_before(n, bi, cow, s->alloc_buf)) < 0)
        return r;
    memcpy(s->alloc_buf + in, p, len);
    return vd_pwrite(n->file, host, VDI_BLOCK_SIZE, s->alloc_buf, flags);
}

/* Link guest block bi to host block idx, then write the header (its count
 * of allocated blocks) and the block map sector (invariant 2).
 * alloc_lock held. */
static int link_block(vd_node *n, uint32_t bi, uint32_t idx, int flags)
{
    struct vdi_state *s = n->state;
    uint8_t h[VDI_HEADER_BYTES], sec[VDI_SECTOR];
    uint64_t sector = bi / VDI_ENTRIES_PER_SECTOR;
    int r;

    pthread_mutex_lock(&s->lock);
    le32_put(s->bmap + 4 * (uint64_t)bi, idx);
    s->blocks_allocated = idx + 1;
    s->max_used = idx + 1;
    le32_put(s->hdr + VH_ALLOCATED, s->blocks_allocated);
    memcpy(h, s->hdr, sizeof(h));
    memcpy(sec, s->bmap + sector * VDI_SECTOR, sizeof(sec));
    pthread_mutex_unlock(&s->lock);
    if ((r = vd_pwrite(n->file, 0, sizeof(h), h, flags)) < 0 ||
        (r = vd_pwrite(n->file, s->offset_bmap + sector * VDI_SECTOR, sizeof(sec), sec,
                       flags)) < 0)
        return vd_error_prefix(r, "vdi: could not update the block map");
    return 0;
}

/* Allocate guest block bi for a write of len bytes at in (one block).
 * Returns 1 when another writer allocated it first (write in place). */
static int alloc_block(vd_node *n, uint32_t bi, uint64_t in, uint64_t len,
                       const uint8_t *p, int flags)
{
    struct vdi_state *s = n->state;
    uint32_t e, idx;
    int r;

    pthread_mutex_lock(&s->alloc_lock);
    pthread_mutex_lock(&s->lock);
    e = entry_get(s, bi);
    idx = s->blocks_allocated;
    r = is_allocated(e) ? 1 : check_new_index(s, idx);
    pthread_mutex_unlock(&s->lock);
    if (r == 0 && (r = write_new_block(n, bi, idx, from_parent(s, e), in, len, p,
                                       flags)) == 0)
        r = link_block(n, bi, idx, flags);
    pthread_mutex_unlock(&s->alloc_lock);
    return r;
}

/* Write in place where blocks are allocated; allocate the others one
 * block at a time, in ascending order (QEMU's layout). */
static int vdi_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    const uint8_t *p = buf;
    struct vdi_run run;
    int r;

    while (len) {
        get_run(n, off, len, &run);
        if (run.data) {
            if ((r = check_run(n, &run)) < 0 ||
                (r = vd_pwrite(n->file, run.host, run.bytes, p, flags)) < 0)
                return r;
        } else {
            uint64_t in = off % VDI_BLOCK_SIZE;
            run.bytes = VD_MIN(len, VDI_BLOCK_SIZE - in);
            if ((r = alloc_block(n, run.block, in, run.bytes, p, flags)) < 0)
                return r;
            if (r == 1)
                continue;          /* allocated meanwhile: map again */
        }
        off += run.bytes;
        len -= run.bytes;
        p += run.bytes;
    }
    return 0;
}

/* ---- block status ---- */

/* Ask the file whether a data range reads as zeroes (what QEMU adds for
 * static images); may shorten *pnum. */
static int file_zero_status(vd_node *n, uint64_t host, uint64_t *pnum)
{
    uint64_t p2 = 0;
    int r = vd_block_status(n->file, host, *pnum, &p2, NULL, NULL);

    if (r < 0)
        return 0;                  /* extra information only */
    if ((r & VD_BS_EOF) && (!p2 || (r & VD_BS_ZERO)))
        return VD_BS_ZERO;
    *pnum = VD_MIN(*pnum, p2);
    return r & VD_BS_ZERO;
}

/* Unallocated blocks read as zeroes, or fall through to the parent
 * (invariant 4); data blocks are where the map says (QEMU's answer, also
 * for entries out of range). */
static int vdi_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, vd_node **file)
{
    struct vdi_state *s = n->state;
    struct vdi_run run;
    int st;

    get_run(n, off, len, &run);
    *pnum = run.bytes;
    if (run.parent)
        return 0;
    if (!run.data)
        return VD_BS_ZERO;
    *pnum = VD_MIN(*pnum, VDI_BLOCK_SIZE - off % VDI_BLOCK_SIZE);   /* one block, as QEMU */
    *map = run.host;
    *file = n->file;
    st = VD_BS_DATA | VD_BS_OFFSET_VALID;
    if (s->type == VDI_TYPE_STATIC)
        st |= file_zero_status(n, run.host, pnum);
    return st;
}

/* The disk size, rounded up to a sector. */
static int64_t vdi_getlength(vd_node *n)
{
    return (int64_t)((struct vdi_state *)n->state)->disk_size;
}

/* Dynamic images read as zeroes when new; static ones as their file. */
static bool vdi_has_zero_init(vd_node *n)
{
    struct vdi_state *s = n->state;
    const struct vd_driver *d = n->file->drv;

    if (s->diff)
        return false;              /* reads the parent */
    if (s->type != VDI_TYPE_STATIC)
        return true;
    return d->has_zero_init && d->has_zero_init(n->file);
}

/* Format-specific info: for a differencing image only (QEMU has none). */
static int vdi_info(vd_node *n, struct vd_json *data)
{
    struct vdi_state *s = n->state;
    char u[37];

    if (!s->diff)
        return 0;
    vd_json_set_str(data, "image-type", "differencing");
    vdi_uuid_str(s->hdr + VH_UUID_LINK, u);
    vd_json_set_str(data, "parent-uuid", u);
    vdi_uuid_str(s->hdr + VH_UUID_PARENT, u);
    vd_json_set_str(data, "parent-modification-uuid", u);
    return 0;
}

/* qemu-img info's cluster_size: the block size. */
static int64_t vdi_cluster_size(vd_node *n)
{
    return VDI_BLOCK_SIZE;
}

/* ---- check ---- */

/* One line of the check report on stderr, as qemu-img prints it. */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

/* What the walk over the block map has seen. */
struct vdi_walk {
    uint8_t *seen;                 /* one bit per host block */
    uint32_t counted;              /* valid allocated entries */
    uint64_t file_len;
};

/* Account entry e of guest block i (QEMU's checks, then the data of
 * blocks the guest reaches must lie inside the file). */
static void check_entry(struct vdi_state *s, struct vdi_walk *w, uint32_t i, uint32_t e,
                        struct vd_check_result *res)
{
    uint64_t guest, end;

    if (!is_allocated(e))
        return;
    if (e >= s->blocks) {
        report("ERROR: block index %" PRIu32 " too large, is %" PRIu32 "\n", i, e);
        res->corruptions++;
        return;
    }
    w->counted++;
    if (w->seen[e / 8] & (1u << (e % 8))) {
        report("ERROR: block index %" PRIu32 " also used by %" PRIu32 "\n", e, e);
        res->corruptions++;
    } else {
        w->seen[e / 8] |= (uint8_t)(1u << (e % 8));
    }
    if (i >= s->mapped)
        return;
    guest = VD_MIN((uint64_t)VDI_BLOCK_SIZE, s->disk_size - (uint64_t)i * VDI_BLOCK_SIZE);
    end = host_offset(s, e, guest);
    if (end > w->file_len) {
        report("ERROR: block %" PRIu32 " (host block %" PRIu32 ") lies beyond the end "
               "of the file\n", i, e);
        res->corruptions++;
    }
}

/* Walk the entries past the ones kept in memory, reading them from the
 * block map a chunk at a time. */
static int check_rest(vd_node *n, struct vdi_walk *w, struct vd_check_result *res)
{
    struct vdi_state *s = n->state;
    uint32_t per = VDI_MAP_CHUNK / 4;
    uint8_t *buf;
    int r = 0;

    if (s->loaded >= s->blocks)
        return 0;
    if (!(buf = malloc(VDI_MAP_CHUNK)))
        return -ENOMEM;
    for (uint32_t i = s->loaded; i < s->blocks && r >= 0; i += per) {
        uint32_t cnt = VD_MIN(per, s->blocks - i);
        r = read_padded(n->file, s->offset_bmap + (uint64_t)i * 4, (uint64_t)cnt * 4, buf);
        for (uint32_t j = 0; r >= 0 && j < cnt; j++)
            check_entry(s, w, i + j, le32_get(buf + 4 * j), res);
    }
    free(buf);
    return r;
}

/* qemu-img check: every entry in range and used once, the header's count
 * right.  Repairs are not supported (as QEMU). */
static int vdi_check(vd_node *n, struct vd_check_result *res, int fix)
{
    struct vdi_state *s = n->state;
    struct vdi_walk w = { .counted = 0 };
    uint32_t inmem = VD_MIN(s->loaded, s->blocks), header_count;
    int r;

    if (fix)
        return -ENOTSUP;
    if (!(w.seen = calloc((size_t)s->blocks / 8 + 1, 1))) {
        res->check_errors++;
        return -ENOMEM;
    }
    pthread_mutex_lock(&s->lock);
    w.file_len = s->file_len;
    header_count = s->blocks_allocated;
    for (uint32_t i = 0; i < inmem; i++)
        check_entry(s, &w, i, entry_get(s, i), res);
    pthread_mutex_unlock(&s->lock);
    r = check_rest(n, &w, res);
    free(w.seen);
    if (r < 0) {
        res->check_errors++;
        return r;
    }
    if (w.counted != header_count) {
        report("ERROR: allocated blocks mismatch, is %" PRIu32 ", should be %" PRIu32 "\n",
               w.counted, header_count);
        res->corruptions++;
    }
    return 0;
}

/* ---- create ---- */

/* Options of the file under the image: everything but vdi's own, and no
 * size (the file starts empty, as in QEMU). */
static vd_opts *proto_opts(vd_opts *o)
{
    vd_opts *p = vd_opts_new();

    if (!p)
        return NULL;
    for (size_t i = 0; i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        if (strcmp(k, "size") && strcmp(k, "static") &&
            vd_opts_set(p, k, vd_opts_value(o, i)) < 0) {
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

/* A random (version 4) UUID stored as VirtualBox does: the first three
 * fields little endian. */
static int put_uuid(uint8_t *p)
{
    uint8_t u[16];
    size_t got = 0;

    while (got < sizeof(u)) {
        ssize_t k = getrandom(u + got, sizeof(u) - got, 0);
        if (k < 0 && errno != EINTR)
            return vd_error(errno, "vdi: cannot generate a UUID");
        got += k > 0 ? (size_t)k : 0;
    }
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    for (int i = 0; i < 4; i++)
        p[i] = u[3 - i];
    p[4] = u[5]; p[5] = u[4];
    p[6] = u[7]; p[7] = u[6];
    memcpy(p + 8, u + 8, 8);
    return 0;
}

/* The header of a new image. */
static int build_header(uint8_t *h, uint64_t size, uint32_t blocks, uint32_t map_bytes,
                        bool is_static)
{
    int r;

    memset(h, 0, VDI_HEADER_BYTES);
    memcpy(h, VDI_TEXT, sizeof(VDI_TEXT) - 1);
    le32_put(h + VH_SIGNATURE, VDI_SIGNATURE);
    le32_put(h + VH_VERSION, VDI_VERSION_1_1);
    le32_put(h + VH_HEADER_SIZE, VDI_HEADER_V1_LEN);
    le32_put(h + VH_TYPE, is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    le32_put(h + VH_OFFSET_BMAP, VDI_HEADER_BYTES);
    le32_put(h + VH_OFFSET_DATA, VDI_HEADER_BYTES + map_bytes);
    le32_put(h + VH_SECTOR_SIZE, VDI_SECTOR);
    le64_put(h + VH_DISK_SIZE, size);
    le32_put(h + VH_BLOCK_SIZE, VDI_BLOCK_SIZE);
    le32_put(h + VH_BLOCKS, blocks);
    le32_put(h + VH_ALLOCATED, is_static ? blocks : 0);
    if ((r = put_uuid(h + VH_UUID_IMAGE)) < 0 || (r = put_uuid(h + VH_UUID_MODIFY)) < 0)
        return r;
    return 0;
}

/* Write the block map of a new image a chunk at a time: every block
 * unallocated, or (static) block i at host block i; the rest of the last
 * sector zero. */
static int write_new_map(vd_node *f, uint32_t blocks, uint32_t map_bytes, bool is_static)
{
    uint8_t *buf = malloc(VD_MIN((uint64_t)map_bytes, (uint64_t)VDI_MAP_CHUNK) + 1);
    int r = 0;

    if (!buf)
        return vd_error(ENOMEM, "Could not allocate bmap");
    for (uint64_t done = 0; done < map_bytes && r >= 0;) {
        uint64_t l = VD_MIN((uint64_t)map_bytes - done, (uint64_t)VDI_MAP_CHUNK);
        for (uint64_t j = 0; j < l; j += 4) {
            uint64_t i = (done + j) / 4;
            le32_put(buf + j, i >= blocks ? 0 : is_static ? (uint32_t)i : VDI_UNALLOCATED);
        }
        if ((r = vd_pwrite(f, VDI_HEADER_BYTES + done, l, buf, 0)) < 0)
            r = vd_error_prefix(r, "Error writing bmap");
        done += l;
    }
    free(buf);
    return r;
}

/* Lay out a new image in the (empty) file f. */
static int write_layout(vd_node *f, uint64_t size, bool is_static)
{
    uint32_t blocks = (uint32_t)div_round_up(size, VDI_BLOCK_SIZE);
    uint32_t map_bytes = (uint32_t)(div_round_up((uint64_t)blocks * 4, VDI_SECTOR) *
                                    VDI_SECTOR);
    uint64_t end = (uint64_t)VDI_HEADER_BYTES + map_bytes;
    uint8_t h[VDI_HEADER_BYTES];
    int r;

    if ((r = build_header(h, size, blocks, map_bytes, is_static)) < 0)
        return r;
    if ((r = vd_truncate(f, end, true, VD_PREALLOC_OFF)) < 0 ||
        (r = vd_pwrite(f, 0, sizeof(h), h, 0)) < 0)
        return vd_error_prefix(r, "Error writing header");
    if ((r = write_new_map(f, blocks, map_bytes, is_static)) < 0)
        return r;
    if (is_static && (r = vd_truncate(f, end + (uint64_t)blocks * VDI_BLOCK_SIZE, true,
                                      VD_PREALLOC_OFF)) < 0)
        return vd_error_prefix(r, "Failed to statically allocate file");
    return 0;
}

/* create: the file first (with its own options), then, as QEMU, the size
 * rounded up to a sector and checked, header and block map written. */
static int vdi_create(const char *filename, vd_opts *opts)
{
    uint64_t size, rounded = 0;
    bool is_static;
    vd_node *f = NULL;
    vd_opts *p;
    int r;

    if ((r = vd_opts_get_bool(opts, "static", false, &is_static)) < 0)
        return r;
    if (!(p = proto_opts(opts)))
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, p);
    vd_opts_free(p);
    if (r < 0 || (r = vd_opts_get_size(opts, "size", 0, &size)) < 0)
        return r;
    if (!round_up_checked(size, VDI_SECTOR, &rounded))
        rounded = size;            /* past any limit anyway */
    if (rounded > VDI_DISK_SIZE_MAX)
        return vd_error(ENOTSUP, "Unsupported VDI image size (size is 0x%" PRIx64
                        ", max supported is 0x%" PRIx64 ")", rounded, VDI_DISK_SIZE_MAX);
    if ((r = vd_open(&f, filename, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) < 0)
        return r;
    r = write_layout(f, rounded, is_static);
    if (r >= 0)
        r = vd_flush(f);
    vd_close(f);
    return r;
}

/* ---- tables ---- */

/* -o help text as qemu-img 7.2 prints it (in its order). */
static const struct vd_opt_desc vdi_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "static", VD_OPT_BOOL, "VDI static (pre-allocated) image", "off" },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver vdi_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "vdi",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct vdi_state),
    .create_opts = vdi_create_opts,
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .pread = vdi_pread,
    .pwrite = vdi_pwrite,
    .block_status = vdi_block_status,
    .getlength = vdi_getlength,
    .create = vdi_create,
    .check = vdi_check,
    .info = vdi_info,
    .has_zero_init = vdi_has_zero_init,
    .cluster_size = vdi_cluster_size,
    .supports_backing = true,
};
VD_DRIVER_REGISTER(vdi_driver)
