/* SPDX-License-Identifier: BSD-3-Clause */
/* vhdx: probing, opening and closing, header updates, check.  Open reads
 * the file identifier, picks the current header, consults the log
 * (log.h), then reads the region table, the metadata items and the BAT,
 * validating every field before it becomes an offset, a size or an
 * allocation.  Where QEMU accepts an image vdisk accepts it too, except
 * that vdisk also refuses regions, items and blocks that overlap each
 * other or the header section or lie outside their region or the file,
 * and disks over the format's 64 TiB or not a whole number of sectors.
 * Beyond QEMU it opens images with 4096-byte logical sectors and
 * differencing images, and reads the region table's copy when the first
 * is damaged.
 *
 * A writable session changes nothing until its first write; then both
 * headers get this open's file write GUID, a new data write GUID and a
 * new log GUID (vhdx_start_session), and a clean close clears the log
 * GUID again.  Each header update writes the older header, flushed,
 * with the next sequence number, so one valid header survives a crash. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "format/vhdx/vhdx.h"
#include "util/json.h"

/* GUIDs in their on-disk byte order (first three fields little-endian). */
const uint8_t vhdx_guid_bat[16] = { 0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
                                    0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
const uint8_t vhdx_guid_metadata[16] = { 0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
                                         0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
const uint8_t vhdx_guid_file_params[16] = { 0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,
                                            0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b };
const uint8_t vhdx_guid_disk_size[16] = { 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,
                                          0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 };
const uint8_t vhdx_guid_page83[16] = { 0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45,
                                       0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 };
const uint8_t vhdx_guid_logical_sector[16] = { 0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47,
                                               0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f };
const uint8_t vhdx_guid_physical_sector[16] = { 0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,
                                                0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 };
const uint8_t vhdx_guid_parent_locator[16] = { 0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
                                               0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c };
const uint8_t vhdx_guid_parent_type_vhdx[16] = { 0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a,
                                                 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13 };

/* Most BAT entries vdisk keeps in memory: a 64 TiB disk of 1 MiB blocks
 * with its sector bitmap entries (about 512 MiB of table). */
#define VHDX_MAX_ENTRIES ((VHDX_MAX_SIZE / VHDX_BLOCK_MIN) * 4097 / 4096)

/* Bytes of BAT read per step. */
#define BAT_READ_STEP (1u << 20)

/* Metadata items a disk must have (bits of struct md_items.present). */
enum {
    MD_FILE_PARAMS, MD_DISK_SIZE, MD_PAGE83, MD_LOGICAL, MD_PHYSICAL, MD_PARENT, MD_COUNT
};
#define MD_REQUIRED_ITEMS 0x1fu

/* Where each known metadata item is, relative to the metadata region. */
struct md_items {
    uint32_t off[MD_COUNT], len[MD_COUNT];
    unsigned present;
};

/* Score 100 on the file identifier's signature. */
static int vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return len >= 8 && !memcmp(buf, "vhdxfile", 8) ? 100 : 0;
}

/* See vhdx.h. */
int vhdx_read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf)
{
    int64_t flen = vd_getlength(f);
    uint64_t end = flen > 0 ? (uint64_t)flen : 0, l;

    if (flen < 0)
        return (int)flen;
    l = off >= end ? 0 : VD_MIN(len, end - off);
    if (l < len)
        memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(f, off, l, buf, 0) : 0;
}

/* See vhdx.h. */
int vhdx_guid_generate(uint8_t *g)
{
    size_t got = 0;

    while (got < 16) {
        ssize_t r = getrandom(g + got, 16 - got, 0);
        if (r < 0 && errno != EINTR)
            return vd_error(errno, "vhdx: cannot generate a GUID: %s", strerror(errno));
        got += r > 0 ? (size_t)r : 0;
    }
    g[7] = (uint8_t)((g[7] & 0x0f) | 0x40);      /* version 4 in data3 (LE) */
    g[8] = (uint8_t)((g[8] & 0x3f) | 0x80);
    return 0;
}

/* See vhdx.h. */
uint64_t vhdx_payload_index(const struct vhdx_state *s, uint64_t b)
{
    return b + b / s->chunk_ratio;
}

/* See vhdx.h. */
uint64_t vhdx_bitmap_index(const struct vhdx_state *s, uint64_t c)
{
    return c * (s->chunk_ratio + 1) + s->chunk_ratio;
}

/* ---- metadata ranges ---- */

/* Does [start, start+len) meet a registered range?  Returns it or NULL. */
static const struct vhdx_range *find_overlap(const struct vhdx_state *s, uint64_t start,
                                             uint64_t len)
{
    for (size_t i = 0; i < s->nranges; i++)
        if (start < s->ranges[i].end && s->ranges[i].start < start + len)
            return &s->ranges[i];
    return NULL;
}

/* Register [start, start+len) as metadata after checking that it
 * overlaps nothing registered; what names it in the message. */
static int add_range(struct vhdx_state *s, uint64_t start, uint64_t len, const char *what)
{
    const struct vhdx_range *o;
    struct vhdx_range *nr;
    uint64_t end;

    if (ADD_OVERFLOW(start, len, &end) || end > INT64_MAX)
        return vd_error(EINVAL, "vhdx: the %s at 0x%llx (%llu bytes) lies beyond any file",
                        what, (unsigned long long)start, (unsigned long long)len);
    if (len && (o = find_overlap(s, start, len)))
        return vd_error(EINVAL, "VHDX region %llu-%llu overlaps with region %llu-%llu "
                        "(the %s)", (unsigned long long)start, (unsigned long long)end,
                        (unsigned long long)o->start, (unsigned long long)o->end, what);
    nr = realloc(s->ranges, (s->nranges + 1) * sizeof(*nr));
    if (!nr)
        return vd_error(ENOMEM, "out of memory");
    s->ranges = nr;
    s->ranges[s->nranges++] = (struct vhdx_range){ start, end };
    s->alloc_floor = VD_MAX(s->alloc_floor, end);
    return 0;
}

/* ---- headers ---- */

/* Is the 4 KiB header at h valid (CRC, signature, version 1)? */
static bool header_valid(const uint8_t *h)
{
    return vhdx_crc32c_skip(h, VHDX_HEADER_SIZE, VHH_CHECKSUM) == vhdx_le32(h + VHH_CHECKSUM) &&
           !memcmp(h + VHH_SIGNATURE, "head", 4) && vhdx_le16(h + VHH_VERSION) == 1;
}

/* Read both headers and pick the current one: the valid one, or of two
 * the higher sequence number (equal numbers only when identical). */
static int read_headers(vd_node *n)
{
    struct vhdx_state *s = n->state;
    static const uint64_t where[2] = { VHDX_HEADER1_OFF, VHDX_HEADER2_OFF };
    bool ok[2];
    uint64_t seq[2];
    int r;

    for (int i = 0; i < 2; i++) {
        if ((r = vhdx_read_padded(n->file, where[i], VHDX_HEADER_SIZE, s->hdr[i])) < 0)
            return vd_error_prefix(r, "No valid VHDX header found");
        ok[i] = header_valid(s->hdr[i]);
        seq[i] = vhdx_le64(s->hdr[i] + VHH_SEQUENCE);
    }
    if (!ok[0] && !ok[1])
        return vd_error(EINVAL, "No valid VHDX header found");
    if (ok[0] && ok[1] && seq[0] == seq[1] && memcmp(s->hdr[0], s->hdr[1], 80))
        return vd_error(EINVAL, "No valid VHDX header found: both headers have sequence "
                        "number %llu", (unsigned long long)seq[0]);
    s->cur = ok[0] && (!ok[1] || seq[0] >= seq[1]) ? 0 : 1;
    return 0;
}

/* Write header idx from the current one with the next sequence number,
 * the session's file write GUID, the given data write GUID (NULL: keep)
 * and log GUID, and make it current (QEMU's order: the non-current
 * header first). */
static int write_header(vd_node *n, const uint8_t *data_guid, const uint8_t *log_guid)
{
    struct vhdx_state *s = n->state;
    int idx = 1 - s->cur, r;
    uint8_t *h = s->hdr[idx];

    if (vhdx_le64(s->hdr[s->cur] + VHH_SEQUENCE) == UINT64_MAX)
        return vd_error(EINVAL, "vhdx: the header sequence number is at its maximum; "
                        "the headers cannot be updated");
    memcpy(h, s->hdr[s->cur], VHDX_HEADER_SIZE);
    vhdx_put_le64(h + VHH_SEQUENCE, vhdx_le64(s->hdr[s->cur] + VHH_SEQUENCE) + 1);
    memcpy(h + VHH_FILE_WRITE_GUID, s->session_guid, 16);
    if (data_guid)
        memcpy(h + VHH_DATA_WRITE_GUID, data_guid, 16);
    memcpy(h + VHH_LOG_GUID, log_guid, 16);
    vhdx_put_le32(h + VHH_CHECKSUM, vhdx_crc32c_skip(h, VHDX_HEADER_SIZE, VHH_CHECKSUM));
    vd_event(n->file, "vhdx_header_write");
    r = vd_pwrite(n->file, idx ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF, VHDX_HEADER_SIZE, h, 0);
    if (r >= 0)
        r = vd_flush(n->file);
    if (r < 0)
        return vd_error_prefix(r, "vhdx: cannot update the image header");
    s->cur = idx;
    return 0;
}

/* Update both headers, as the specification asks, so that the older one
 * is valid too. */
static int update_headers(vd_node *n, const uint8_t *data_guid, const uint8_t *log_guid)
{
    int r = write_header(n, data_guid, log_guid);

    return r < 0 ? r : write_header(n, data_guid, log_guid);
}

/* See vhdx.h. */
int vhdx_start_session(vd_node *n)
{
    struct vhdx_state *s = n->state;
    uint8_t data_guid[16], log_guid[16];
    int r;

    if (s->session)
        return 0;
    if ((r = vhdx_guid_generate(data_guid)) < 0 || (r = vhdx_guid_generate(log_guid)) < 0)
        return r;
    vd_event(n->file, "vhdx_session_start");
    vhdx_log_begin(&s->log, log_guid);
    if ((r = update_headers(n, data_guid, log_guid)) < 0) {
        vhdx_log_end(&s->log);
        return r;
    }
    s->session = true;
    return 0;
}

/* End a writable session: the log is applied in place; clear its GUID. */
static int end_session(vd_node *n)
{
    struct vhdx_state *s = n->state;
    static const uint8_t zero[16];
    int r;

    if (!s->session)
        return 0;
    vd_event(n->file, "vhdx_session_end");
    if ((r = vd_flush(n->file)) < 0)
        return r;
    vhdx_log_end(&s->log);
    s->session = false;
    return update_headers(n, NULL, zero);
}

/* ---- the log ---- */

/* QEMU's checks of the log fields of the current header, then the log
 * region is registered as metadata. */
static int check_log_fields(struct vhdx_state *s, uint64_t *off, uint32_t *len)
{
    const uint8_t *h = s->hdr[s->cur];

    *off = vhdx_le64(h + VHH_LOG_OFFSET);
    *len = vhdx_le32(h + VHH_LOG_LENGTH);
    if (*off < VHDX_MIB || *off % VHDX_MIB)
        return vd_error(EINVAL, "vhdx: the log offset 0x%llx is not a nonzero multiple "
                        "of 1 MiB", (unsigned long long)*off);
    if (vhdx_le16(h + VHH_LOG_VERSION) != 0)
        return vd_error(EINVAL, "vhdx: unsupported log version %u",
                        vhdx_le16(h + VHH_LOG_VERSION));
    if (*len % VHDX_MIB)
        return vd_error(EINVAL, "vhdx: the log length %u is not a multiple of 1 MiB", *len);
    return add_range(s, *off, *len, "log");
}

/* Open the log; replay it when it holds updates (writable opens only, as
 * QEMU), then clear its GUID in the headers. */
static int open_log(vd_node *n)
{
    struct vhdx_state *s = n->state;
    static const uint8_t zero[16];
    bool replay = false;
    uint64_t off;
    uint32_t len;
    int r;

    if ((r = check_log_fields(s, &off, &len)) < 0)
        return r;
    if ((r = vhdx_log_open(&s->log, n, n->file, off, len, s->hdr[s->cur] + VHH_LOG_GUID,
                           &replay)) < 0)
        return r;
    if (!replay)
        return 0;
    if (n->read_only)
        return vd_error(EPERM, "VHDX image file '%s' opened read-only, but contains a log "
                        "that needs to be replayed\nTo replay the log, run:\n"
                        "qemu-img check -r all '%s'", n->filename, n->filename);
    vd_event(n->file, "vhdx_log_replay");
    if ((r = vhdx_log_replay(&s->log)) < 0)
        return r;
    s->replayed = true;
    return update_headers(n, NULL, zero);
}

/* ---- region table ---- */

/* Is the region table at t valid (CRC, signature, entry count)? */
static bool region_table_valid(const uint8_t *t)
{
    return vhdx_crc32c_skip(t, VHDX_RT_SIZE, VRT_CHECKSUM) == vhdx_le32(t + VRT_CHECKSUM) &&
           !memcmp(t + VRT_SIGNATURE, "regi", 4) &&
           vhdx_le32(t + VRT_COUNT) <= VHDX_RT_MAX_ENTRIES;
}

/* Take one region table entry: the BAT, the metadata region, or an
 * optional region vdisk does not know. */
static int parse_region(struct vhdx_state *s, const uint8_t *e, unsigned *found)
{
    uint64_t off = vhdx_le64(e + VRE_OFFSET);
    uint32_t len = vhdx_le32(e + VRE_LENGTH);
    bool bat = !memcmp(e + VRE_GUID, vhdx_guid_bat, 16);
    bool md = !memcmp(e + VRE_GUID, vhdx_guid_metadata, 16);
    int r;

    if (off < VHDX_HEADER_SECTION || off % VHDX_MIB)
        return vd_error(EINVAL, "vhdx: a region at 0x%llx is not at a multiple of 1 MiB "
                        "past the header section", (unsigned long long)off);
    if ((r = add_range(s, off, len, bat ? "BAT" : md ? "metadata region" : "region")) < 0)
        return r;
    if ((bat && (*found & 1)) || (md && (*found & 2)))
        return vd_error(EINVAL, "vhdx: the region table names the %s twice",
                        bat ? "BAT" : "metadata region");
    if (bat) {
        s->bat_offset = off;
        s->bat_length = len;
        *found |= 1;
    } else if (md) {
        s->md_offset = off;
        s->md_length = len;
        *found |= 2;
    } else if (vhdx_le32(e + VRE_FLAGS) & VHDX_RE_REQUIRED) {
        return vd_error(ENOTSUP, "vhdx: the image has a required region vdisk does not "
                        "know: %s", strerror(ENOTSUP));
    }
    return 0;
}

/* Read the region table (its copy when the first is damaged) and find
 * the BAT and the metadata region. */
static int read_region_table(vd_node *n)
{
    struct vhdx_state *s = n->state;
    CLEANUP_FREE uint8_t *t = malloc(VHDX_RT_SIZE);
    unsigned found = 0;
    int r;

    if (!t)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vhdx_read_padded(n->file, VHDX_RT1_OFF, VHDX_RT_SIZE, t)) < 0)
        return r;
    if (!region_table_valid(t) &&
        (r = vhdx_read_padded(n->file, VHDX_RT2_OFF, VHDX_RT_SIZE, t)) < 0)
        return r;
    if (!region_table_valid(t))
        return vd_error(EINVAL, "vhdx: no valid region table (bad signature, entry count "
                        "or checksum in both copies)");
    for (uint32_t i = 0; i < vhdx_le32(t + VRT_COUNT); i++)
        if ((r = parse_region(s, t + VRT_ENTRIES + i * VRE_SIZE, &found)) < 0)
            return r;
    if (found != 3)
        return vd_error(EINVAL, "vhdx: the region table lacks the %s",
                        found & 1 ? "metadata region" : "BAT");
    return 0;
}

/* ---- metadata ---- */

/* Which known item GUID g is, or -1. */
static int item_kind(const uint8_t *g)
{
    const uint8_t *known[MD_COUNT] = {
        vhdx_guid_file_params, vhdx_guid_disk_size, vhdx_guid_page83,
        vhdx_guid_logical_sector, vhdx_guid_physical_sector, vhdx_guid_parent_locator,
    };

    for (int i = 0; i < MD_COUNT; i++)
        if (!memcmp(g, known[i], 16))
            return i;
    return -1;
}

/* Take one metadata table entry: it must lie inside the region. */
static int parse_item(const struct vhdx_state *s, const uint8_t *e, struct md_items *it)
{
    uint32_t off = vhdx_le32(e + VME_OFFSET), len = vhdx_le32(e + VME_LENGTH);
    int k = item_kind(e + VME_GUID);

    if (k < 0 && (vhdx_le32(e + VME_FLAGS) & VHDX_ME_REQUIRED))
        return vd_error(ENOTSUP, "vhdx: the image has a required metadata item vdisk "
                        "does not know: %s", strerror(ENOTSUP));
    if (k < 0)
        return 0;
    if (it->present & (1u << k))
        return vd_error(EINVAL, "vhdx: a metadata item appears twice");
    if (!range_ok(off, len, s->md_length))
        return vd_error(EINVAL, "vhdx: a metadata item (%u bytes at %u) lies outside the "
                        "metadata region", len, off);
    it->off[k] = off;
    it->len[k] = len;
    it->present |= 1u << k;
    return 0;
}

/* Read the metadata table and locate the items. */
static int read_md_table(vd_node *n, struct md_items *it)
{
    struct vhdx_state *s = n->state;
    CLEANUP_FREE uint8_t *t = malloc(VHDX_MD_TABLE_SIZE);
    uint16_t count;
    int r;

    if (!t)
        return vd_error(ENOMEM, "out of memory");
    if (s->md_length < VHDX_MD_TABLE_SIZE)
        return vd_error(EINVAL, "vhdx: the metadata region (%llu bytes) is smaller than "
                        "its table", (unsigned long long)s->md_length);
    if ((r = vhdx_read_padded(n->file, s->md_offset, VHDX_MD_TABLE_SIZE, t)) < 0)
        return r;
    count = vhdx_le16(t + VMT_COUNT);
    if (memcmp(t + VMT_SIGNATURE, "metadata", 8))
        return vd_error(EINVAL, "vhdx: the metadata table has no 'metadata' signature");
    if (count > VHDX_MD_MAX_ENTRIES)
        return vd_error(EINVAL, "vhdx: the metadata table has %u entries (at most %u)",
                        count, VHDX_MD_MAX_ENTRIES);
    memset(it, 0, sizeof(*it));
    for (uint16_t i = 0; i < count; i++)
        if ((r = parse_item(s, t + VMT_ENTRIES + i * VME_SIZE, it)) < 0)
            return r;
    if ((it->present & MD_REQUIRED_ITEMS) != MD_REQUIRED_ITEMS)
        return vd_error(ENOTSUP, "vhdx: the image lacks required metadata items: %s",
                        strerror(ENOTSUP));
    return 0;
}

/* Read item k, which must be at least need bytes, into buf. */
static int read_item(vd_node *n, const struct md_items *it, int k, uint32_t need, void *buf)
{
    struct vhdx_state *s = n->state;
    static const char *const names[MD_COUNT] = {
        "file parameters", "virtual disk size", "page 83 data", "logical sector size",
        "physical sector size", "parent locator",
    };

    if (it->len[k] < need)
        return vd_error(EINVAL, "vhdx: the %s item is %u bytes long (%u needed)", names[k],
                        it->len[k], need);
    return vhdx_read_padded(n->file, s->md_offset + it->off[k], need, buf);
}

/* Check the sizes the items give and derive the BAT geometry. */
static int check_geometry(struct vhdx_state *s)
{
    if (s->block_size < VHDX_BLOCK_MIN || s->block_size > VHDX_BLOCK_MAX ||
        !is_power_of_2(s->block_size))
        return vd_error(EINVAL, "vhdx: invalid block size %u (a power of two from 1 MiB "
                        "to 256 MiB)", s->block_size);
    if (s->lss != 512 && s->lss != 4096)
        return vd_error(EINVAL, "vhdx: invalid logical sector size %u (512 or 4096)", s->lss);
    if (s->pss != 512 && s->pss != 4096)
        return vd_error(EINVAL, "vhdx: invalid physical sector size %u (512 or 4096)", s->pss);
    if (s->size > VHDX_MAX_SIZE)
        return vd_error(EFBIG, "vhdx: the virtual disk size %llu is over the format's "
                        "64 TiB", (unsigned long long)s->size);
    if (s->size % s->lss)
        return vd_error(EINVAL, "vhdx: the virtual disk size %llu is not a multiple of the "
                        "%u-byte sector", (unsigned long long)s->size, s->lss);
    s->chunk_ratio = VHDX_SECTORS_PER_CHUNK * s->lss / s->block_size;
    s->blocks = div_round_up(s->size, s->block_size);
    if (s->params & VHDX_PARAM_HAS_PARENT)
        s->entries = div_round_up(s->blocks, s->chunk_ratio) * (s->chunk_ratio + 1);
    else
        s->entries = s->blocks ? vhdx_payload_index(s, s->blocks - 1) + 1 : 0;
    return 0;
}

/* Read the items every disk has. */
static int read_items(vd_node *n, const struct md_items *it)
{
    struct vhdx_state *s = n->state;
    uint8_t b[8];
    int r;

    if ((r = read_item(n, it, MD_FILE_PARAMS, 8, b)) < 0)
        return r;
    s->block_size = vhdx_le32(b);
    s->params = vhdx_le32(b + 4);
    if ((r = read_item(n, it, MD_DISK_SIZE, 8, b)) < 0)
        return r;
    s->size = vhdx_le64(b);
    if ((r = read_item(n, it, MD_PAGE83, 16, s->page83)) < 0 ||
        (r = read_item(n, it, MD_LOGICAL, 4, b)) < 0)
        return r;
    s->lss = vhdx_le32(b);
    if ((r = read_item(n, it, MD_PHYSICAL, 4, b)) < 0)
        return r;
    s->pss = vhdx_le32(b);
    return check_geometry(s);
}

/* A differencing image: its parent locator names the backing file. */
static int read_parent(vd_node *n, const struct md_items *it)
{
    CLEANUP_FREE uint8_t *buf = NULL;
    uint32_t len = it->len[MD_PARENT];
    int r;

    if (!(it->present & (1u << MD_PARENT)))
        return vd_error(EINVAL, "vhdx: the image has a parent but no parent locator");
    if (len > VHDX_MIB)
        return vd_error(EINVAL, "vhdx: the parent locator is %u bytes long (at most 1 MiB)",
                        len);
    if (!(buf = malloc(len ? len : 1)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = read_item(n, it, MD_PARENT, len, buf)) < 0)
        return r;
    return vhdx_parse_parent_locator(n, buf, len);
}

/* ---- BAT ---- */

/* Read the BAT entries the disk uses (the region may be longer), in
 * steps; entries past the end of the file stay zero (NOT_PRESENT). */
static int read_bat(vd_node *n)
{
    struct vhdx_state *s = n->state;
    CLEANUP_FREE uint8_t *raw = NULL;
    int64_t flen = vd_getlength(n->file);
    uint64_t have;
    int r = 0;

    if (flen < 0)
        return (int)flen;
    if (s->entries > s->bat_length / 8)
        return vd_error(EINVAL, "vhdx: the BAT region (%llu bytes) is too small for the "
                        "%llu entries of the disk", (unsigned long long)s->bat_length,
                        (unsigned long long)s->entries);
    if (s->entries > VHDX_MAX_ENTRIES)
        return vd_error(EFBIG, "vhdx: %llu BAT entries are more than vdisk handles",
                        (unsigned long long)s->entries);
    if ((r = vd_untrusted_table_check(n, s->entries * 8, "vhdx BAT")) < 0)
        return r;
    s->bat = vd_calloc_array(s->entries, sizeof(uint64_t));
    raw = malloc(BAT_READ_STEP);
    if (!s->bat || !raw)
        return vd_error(ENOMEM, "vhdx: cannot allocate memory for the BAT");
    have = (uint64_t)flen > s->bat_offset ? ((uint64_t)flen - s->bat_offset) / 8 : 0;
    have = VD_MIN(have, s->entries);
    for (uint64_t i = 0; i < have && r >= 0; i += BAT_READ_STEP / 8) {
        uint64_t cnt = VD_MIN((uint64_t)BAT_READ_STEP / 8, have - i);
        r = vd_pread(n->file, s->bat_offset + i * 8, cnt * 8, raw, 0);
        for (uint64_t j = 0; r >= 0 && j < cnt; j++)
            s->bat[i + j] = vhdx_le64(raw + j * 8);
    }
    return r < 0 ? vd_error_prefix(r, "vhdx: cannot read the BAT") : 0;
}

/* Is BAT index i a sector bitmap entry? */
static bool is_bitmap_entry(const struct vhdx_state *s, uint64_t i)
{
    return i % (s->chunk_ratio + 1) == s->chunk_ratio;
}

/* The problem with BAT entry i, or NULL (msg has room for it): blocks
 * with data must lie inside the file, past the header section, clear of
 * the metadata.  QEMU checks fully present payload blocks only. */
static const char *entry_problem(const struct vhdx_state *s, uint64_t i, uint64_t flen,
                                 char *msg, size_t mlen)
{
    uint64_t e = s->bat[i], off = VHDX_BAT_OFFSET(e), len = VHDX_MIB;
    unsigned st = VHDX_BAT_STATE(e);
    bool bitmap = is_bitmap_entry(s, i);

    if (bitmap ? st != VHDX_SB_PRESENT || !(s->params & VHDX_PARAM_HAS_PARENT)
               : st != VHDX_PB_FULLY_PRESENT && st != VHDX_PB_PARTIALLY_PRESENT)
        return NULL;
    if (!bitmap) {
        uint64_t b = i - i / (s->chunk_ratio + 1);
        len = VD_MIN((uint64_t)s->block_size, s->size - VD_MIN(s->size, b * s->block_size));
    }
    if (off > (uint64_t)INT64_MAX - s->block_size)
        snprintf(msg, mlen, "VHDX BAT entry %llu offset overflow.", (unsigned long long)i);
    else if (off >= flen)
        snprintf(msg, mlen, "VHDX BAT entry %llu start offset %llu points after end of file "
                 "(%llu). Image has probably been truncated.", (unsigned long long)i,
                 (unsigned long long)off, (unsigned long long)flen);
    else if (!range_ok(off, len, flen))
        snprintf(msg, mlen, "VHDX BAT entry %llu end offset %llu points after end of file "
                 "(%llu). Image has probably been truncated.", (unsigned long long)i,
                 (unsigned long long)(off + len - 1), (unsigned long long)flen);
    else if (off < VHDX_HEADER_SECTION || find_overlap(s, off, bitmap ? VHDX_MIB : s->block_size))
        snprintf(msg, mlen, "VHDX BAT entry %llu at offset %llu overlaps the image's "
                 "metadata", (unsigned long long)i, (unsigned long long)off);
    else
        return NULL;
    return msg;
}

/* qsort order of file offsets. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Does payload entry i hold data in the file? */
static bool has_data(const struct vhdx_state *s, uint64_t i)
{
    unsigned st = VHDX_BAT_STATE(s->bat[i]);

    return !is_bitmap_entry(s, i) &&
           (st == VHDX_PB_FULLY_PRESENT || st == VHDX_PB_PARTIALLY_PRESENT);
}

/* Beyond QEMU: no two blocks with data share file space. */
static int check_block_overlaps(const struct vhdx_state *s)
{
    CLEANUP_FREE uint64_t *used = NULL;
    uint64_t nused = 0, k = 0;

    for (uint64_t i = 0; i < s->entries; i++)
        nused += has_data(s, i);
    if (nused < 2)
        return 0;
    if (!(used = vd_calloc_array(nused, sizeof(uint64_t))))
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = 0; i < s->entries; i++)
        if (has_data(s, i))
            used[k++] = VHDX_BAT_OFFSET(s->bat[i]);
    qsort(used, nused, sizeof(*used), cmp_u64);
    for (uint64_t i = 1; i < nused; i++)
        if (used[i] - used[i - 1] < s->block_size)
            return vd_error(EINVAL, "vhdx: the payload blocks at 0x%llx and 0x%llx overlap",
                            (unsigned long long)used[i - 1], (unsigned long long)used[i]);
    return 0;
}

/* Validate every BAT entry; with res (check) count the problems and
 * print them as qemu-img check does (on stderr, after the program's
 * name), else fail on the first. */
static int check_bat(vd_node *n, struct vd_check_result *res)
{
    struct vhdx_state *s = n->state;
    int64_t flen = vd_getlength(n->file);
    char msg[256];

    if (flen < 0)
        return vd_error_prefix((int)flen, "Could not determinate VHDX image file size.");
    for (uint64_t i = 0; i < s->entries; i++) {
        if (!entry_problem(s, i, (uint64_t)flen, msg, sizeof(msg)))
            continue;
        if (!res)
            return vd_error(EINVAL, "%s", msg);
        fprintf(stderr, "%s: %s\n", program_invocation_short_name, msg);
        res->corruptions++;
    }
    if (!res)
        return check_block_overlaps(s);
    if (check_block_overlaps(s) < 0) {
        fprintf(stderr, "%s: %s\n", program_invocation_short_name, vd_errmsg());
        res->corruptions++;
    }
    return 0;
}

/* ---- open and close ---- */

/* The file identifier's signature. */
static int check_signature(vd_node *n)
{
    uint8_t sig[8];
    int r = vhdx_read_padded(n->file, 0, sizeof(sig), sig);

    if (r < 0)
        return r;
    if (memcmp(sig, "vhdxfile", 8))
        return vd_error(EINVAL, "vhdx: no 'vhdxfile' signature: not a vhdx image");
    return 0;
}

/* Everything of open after the log: regions, metadata, BAT, parent. */
static int open_layout(vd_node *n, int flags)
{
    struct vhdx_state *s = n->state;
    struct md_items it;
    int r;

    if ((r = read_region_table(n)) < 0 || (r = read_md_table(n, &it)) < 0 ||
        (r = read_items(n, &it)) < 0 || (r = read_bat(n)) < 0)
        return r;
    if (!(flags & VD_O_CHECK) && (r = check_bat(n, NULL)) < 0)
        return r;
    if (s->params & VHDX_PARAM_HAS_PARENT)
        return read_parent(n, &it);
    return 0;
}

/* Open: signature, headers, log, then the layout (on failure the core
 * closes the node, which frees what was allocated). */
static int vhdx_open(vd_node *n, vd_opts *opts, int flags)
{
    struct vhdx_state *s = n->state;
    int r;

    pthread_mutex_init(&s->lock, NULL);
    if ((r = check_signature(n)) < 0 || (r = vhdx_guid_generate(s->session_guid)) < 0 ||
        (r = add_range(s, 0, VHDX_HEADER_SECTION, "header section")) < 0 ||
        (r = read_headers(n)) < 0 || (r = open_log(n)) < 0)
        return r;
    return open_layout(n, flags);
}

/* Clean close: end the session (log GUID cleared), free. */
static void vhdx_close(vd_node *n)
{
    struct vhdx_state *s = n->state;

    if (s->session && end_session(n) < 0)
        fprintf(stderr, "vhdx: %s\n", vd_errmsg());
    free(s->bat);
    free(s->ranges);
    s->bat = NULL;
    s->ranges = NULL;
    pthread_mutex_destroy(&s->lock);
}

/* The virtual disk size. */
static int64_t vhdx_getlength(vd_node *n)
{
    return (int64_t)((struct vhdx_state *)n->state)->size;
}

/* qemu-img info's cluster_size: the block size. */
static int64_t vhdx_cluster_size(vd_node *n)
{
    return ((struct vhdx_state *)n->state)->block_size;
}

/* As QEMU: a fully present first block means a fixed image, as zeroed as
 * its file; otherwise unwritten blocks read as zeroes. */
static bool vhdx_has_zero_init(vd_node *n)
{
    struct vhdx_state *s = n->state;
    const struct vd_driver *d = n->file->drv;

    if (s->params & VHDX_PARAM_HAS_PARENT)
        return false;
    if (!s->entries || VHDX_BAT_STATE(s->bat[0]) != VHDX_PB_FULLY_PRESENT)
        return true;
    return d->has_zero_init && d->has_zero_init(n->file);
}

/* Check as QEMU: a log replayed at open counts as a fixed corruption,
 * then every BAT entry is checked. */
static int vhdx_check(vd_node *n, struct vd_check_result *res, int fix)
{
    struct vhdx_state *s = n->state;

    if (s->replayed)
        res->corruptions_fixed++;
    return check_bat(n, res);
}

/* qemu-img info shows nothing format-specific for vhdx; vdisk says when
 * the image is a differencing one. */
static int vhdx_info(vd_node *n, struct vd_json *data)
{
    struct vhdx_state *s = n->state;

    if (s->params & VHDX_PARAM_HAS_PARENT)
        vd_json_set_str(data, "subformat", "differencing");
    return 0;
}

/* -o options in the order of qemu-img 7.2's "Formatting" line. */
static const struct vd_opt_desc vhdx_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size; max of 64TB.", NULL },
    { "log_size", VD_OPT_SIZE, "Log size; min 1MB.", "1048576" },
    { "block_size", VD_OPT_SIZE, "Block Size; min 1MB, max 256MB. 0 means auto-calculate "
      "based on image size.", "0" },
    { "subformat", VD_OPT_STRING, "VHDX format type, can be either 'dynamic' or 'fixed'. "
      "Default is 'dynamic'.", NULL },
    { "block_state_zero", VD_OPT_BOOL, "Force use of payload blocks of type 'ZERO'. "
      "Non-standard, but default.  Do not set to 'off' when using 'vdisk-img convert' "
      "with subformat=dynamic.", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver vhdx_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "vhdx",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct vhdx_state),
    .create_opts = vhdx_create_opts,
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .pread = vhdx_pread,
    .pwrite = vhdx_pwrite,
    .data_extent = vhdx_data_extent,
    .getlength = vhdx_getlength,
    .create = vhdx_create,
    .check = vhdx_check,
    .info = vhdx_info,
    .has_zero_init = vhdx_has_zero_init,
    .cluster_size = vhdx_cluster_size,
    .supports_backing = true,
};
VD_DRIVER_REGISTER(vhdx_driver)
