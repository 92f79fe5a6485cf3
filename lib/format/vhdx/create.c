/* SPDX-License-Identifier: BSD-3-Clause */
/* vhdx: image creation as qemu-img 7.2 does it, with its option rules
 * and messages and its layout (see vhdx.h): the log right after the
 * header section, the BAT after it, the metadata region after the BAT,
 * payload blocks 5 MiB further on.  Sector sizes are 512 bytes, as QEMU
 * makes them.  block_state_zero (the default) marks every payload block
 * ZERO, even in a fixed image, whose data area then stays unused. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "format/vhdx/vhdx.h"

/* Blocks the BAT is written in while it is built. */
#define BAT_STEP (1u << 20)
/* Slack QEMU leaves between the metadata region and the first block. */
#define DATA_SLACK (5 * VHDX_MIB)
#define CREATE_LSS 512u

/* Parsed create options and the layout they give. */
struct vhdx_create {
    uint64_t size, log_size;
    uint32_t block_size;
    bool fixed, zero_blocks;
    uint64_t entries, bat_offset, bat_length, md_offset, data_offset;
};

/* See vhdx.h.  QEMU counts in 32 bits: an empty disk wraps to 2^32-1
 * blocks' worth of bitmap entries, and qemu-img gives it that BAT. */
uint64_t vhdx_create_bat_entries(uint64_t size, uint32_t block_size, uint32_t lss)
{
    uint32_t blocks = (uint32_t)div_round_up(size, block_size);
    uint64_t ratio = VHDX_SECTORS_PER_CHUNK * lss / block_size;
    unsigned bits = (unsigned)__builtin_ctzll(ratio);

    return (uint64_t)blocks + ((uint32_t)(blocks - 1) >> bits);
}

/* The block size QEMU picks for a disk size when none is given. */
static uint32_t auto_block_size(uint64_t size)
{
    if (size > (32ull << 40))
        return 64u << 20;
    if (size > (100ull << 30))
        return 32u << 20;
    if (size > (1ull << 30))
        return 16u << 20;
    return 8u << 20;
}

/* The sizes, rounded as QEMU rounds them, then its checks in its order. */
static int parse_sizes(vd_opts *o, struct vhdx_create *c)
{
    uint64_t bs = 0;
    int r;

    if ((r = vd_opts_get_size(o, "size", 0, &c->size)) < 0 ||
        (r = vd_opts_get_size(o, "log_size", VHDX_DEFAULT_LOG, &c->log_size)) < 0 ||
        (r = vd_opts_get_size(o, "block_size", 0, &bs)) < 0)
        return r;
    if (!round_up_checked(c->size, 512, &c->size) ||
        !round_up_checked(c->log_size, VHDX_MIB, &c->log_size) ||
        !round_up_checked(bs, VHDX_MIB, &bs))
        return vd_error(EINVAL, "Image size too large; max of 64TB");
    bs = bs ? VD_MIN(bs, (uint64_t)VHDX_BLOCK_MAX) : auto_block_size(c->size);
    if (c->size > VHDX_MAX_SIZE)
        return vd_error(EINVAL, "Image size too large; max of 64TB");
    if (c->log_size > UINT32_MAX)
        return vd_error(EINVAL, "Log size must be smaller than 4 GB");
    if (c->log_size < VHDX_MIB || c->log_size % VHDX_MIB)
        return vd_error(EINVAL, "Log size must be a multiple of 1 MB");
    if (bs < VHDX_MIB || bs % VHDX_MIB)
        return vd_error(EINVAL, "Block size must be a multiple of 1 MB");
    if (!is_power_of_2(bs))
        return vd_error(EINVAL, "Block size must be a power of two");
    c->block_size = (uint32_t)bs;
    return 0;
}

/* All options, and the layout of the file. */
static int parse_create(vd_opts *o, struct vhdx_create *c)
{
    const char *sub = vd_opts_get(o, "subformat");
    int r;

    memset(c, 0, sizeof(*c));
    if (sub && strcmp(sub, "dynamic") && strcmp(sub, "fixed"))
        return vd_error(EINVAL, "Parameter 'subformat' does not accept value '%s'", sub);
    c->fixed = sub && !strcmp(sub, "fixed");
    if ((r = vd_opts_get_bool(o, "block_state_zero", true, &c->zero_blocks)) < 0 ||
        (r = parse_sizes(o, c)) < 0)
        return r;
    c->entries = vhdx_create_bat_entries(c->size, c->block_size, CREATE_LSS);
    c->bat_length = div_round_up(c->entries * 8, VHDX_MIB) * VHDX_MIB;
    c->bat_offset = VHDX_HEADER_SECTION + c->log_size;
    c->md_offset = c->bat_offset + c->bat_length;
    c->data_offset = c->md_offset + DATA_SLACK;
    return 0;
}

/* The file identifier: signature and creator (UTF-16LE). */
static int write_identifier(vd_node *f)
{
    static const char creator[] = "vdisk v" VD_VERSION_STRING;
    uint8_t buf[8 + 2 * sizeof(creator)] = "vhdxfile";

    for (size_t i = 0; i + 1 < sizeof(creator); i++)
        vhdx_put_le16(buf + 8 + 2 * i, (uint8_t)creator[i]);
    return vd_pwrite(f, 0, 8 + 2 * (sizeof(creator) - 1), buf, 0);
}

/* Both headers: random GUIDs and first sequence number, no log in use;
 * header 2 is current, as in QEMU's images. */
static int write_headers(vd_node *f, const struct vhdx_create *c)
{
    uint8_t h[VHDX_HEADER_SIZE] = "head";
    uint32_t seq;
    int r;

    if (getrandom(&seq, sizeof(seq), 0) != sizeof(seq))
        seq = 1;
    if ((r = vhdx_guid_generate(h + VHH_FILE_WRITE_GUID)) < 0 ||
        (r = vhdx_guid_generate(h + VHH_DATA_WRITE_GUID)) < 0)
        return r;
    vhdx_put_le16(h + VHH_VERSION, 1);
    vhdx_put_le32(h + VHH_LOG_LENGTH, (uint32_t)c->log_size);
    vhdx_put_le64(h + VHH_LOG_OFFSET, VHDX_HEADER_SECTION);
    for (int i = 0; i < 2; i++) {
        vhdx_put_le64(h + VHH_SEQUENCE, (uint64_t)seq + (uint64_t)i);
        vhdx_put_le32(h + VHH_CHECKSUM, 0);
        vhdx_put_le32(h + VHH_CHECKSUM, vhdx_crc32c_skip(h, VHDX_HEADER_SIZE, VHH_CHECKSUM));
        r = vd_pwrite(f, i ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF, VHDX_HEADER_SIZE, h, 0);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The BAT entry QEMU's create gives payload block b. */
static uint64_t initial_entry(const struct vhdx_create *c, uint64_t b)
{
    if (c->zero_blocks)
        return VHDX_PB_ZERO;
    if (c->fixed)
        return (c->data_offset + b * c->block_size) | VHDX_PB_FULLY_PRESENT;
    return VHDX_PB_NOT_PRESENT;
}

/* Write the BAT in steps: payload entries as initial_entry, bitmap
 * entries zero.  Skipped when it would be all zeroes on a zeroed file. */
static int write_bat(vd_node *f, const struct vhdx_create *c)
{
    uint64_t ratio = VHDX_SECTORS_PER_CHUNK * CREATE_LSS / c->block_size;
    uint64_t blocks = div_round_up(c->size, c->block_size);
    CLEANUP_FREE uint8_t *buf = NULL;
    int r = 0;

    if (!c->fixed && !c->zero_blocks)
        return 0;                  /* the file was just created: zeroes */
    if (!(buf = malloc(BAT_STEP)))
        return vd_error(ENOMEM, "Failed to allocate memory for the BAT");
    for (uint64_t at = 0; at < c->bat_length && r >= 0; at += BAT_STEP) {
        memset(buf, 0, BAT_STEP);
        for (uint64_t i = at / 8; i < (at + BAT_STEP) / 8; i++) {
            uint64_t b = i - i / (ratio + 1);
            if (i % (ratio + 1) != ratio && b < blocks)
                vhdx_put_le64(buf + i * 8 - at, initial_entry(c, b));
        }
        r = vd_pwrite(f, c->bat_offset + at, BAT_STEP, buf, 0);
    }
    return r < 0 ? vd_error_prefix(r, "Failed to write the BAT") : 0;
}

/* Both region tables: the BAT and the metadata region. */
static int write_region_tables(vd_node *f, const struct vhdx_create *c)
{
    CLEANUP_FREE uint8_t *t = calloc(1, VHDX_RT_SIZE);
    uint8_t *e = t + VRT_ENTRIES;
    int r;

    if (!t)
        return vd_error(ENOMEM, "out of memory");
    memcpy(t + VRT_SIGNATURE, "regi", 4);
    vhdx_put_le32(t + VRT_COUNT, 2);
    memcpy(e + VRE_GUID, vhdx_guid_bat, 16);
    vhdx_put_le64(e + VRE_OFFSET, c->bat_offset);
    vhdx_put_le32(e + VRE_LENGTH, (uint32_t)c->bat_length);
    e += VRE_SIZE;
    memcpy(e + VRE_GUID, vhdx_guid_metadata, 16);
    vhdx_put_le64(e + VRE_OFFSET, c->md_offset);
    vhdx_put_le32(e + VRE_LENGTH, VHDX_MIB);
    vhdx_put_le32(t + VRT_CHECKSUM, vhdx_crc32c_skip(t, VHDX_RT_SIZE, VRT_CHECKSUM));
    if ((r = vd_pwrite(f, VHDX_RT1_OFF, VHDX_RT_SIZE, t, 0)) < 0)
        return vd_error_prefix(r, "Failed to write first region table");
    if ((r = vd_pwrite(f, VHDX_RT2_OFF, VHDX_RT_SIZE, t, 0)) < 0)
        return vd_error_prefix(r, "Failed to write second region table");
    return 0;
}

/* One metadata table entry at e: item guid at off, len bytes, flags. */
static void put_item(uint8_t *e, const uint8_t *guid, uint32_t off, uint32_t len,
                     uint32_t flags)
{
    memcpy(e + VME_GUID, guid, 16);
    vhdx_put_le32(e + VME_OFFSET, off);
    vhdx_put_le32(e + VME_LENGTH, len);
    vhdx_put_le32(e + VME_FLAGS, flags);
}

/* The metadata region: the table, then the five items from 64 KiB on,
 * packed as QEMU packs them. */
static int write_metadata(vd_node *f, const struct vhdx_create *c)
{
    const uint32_t vd = VHDX_ME_REQUIRED | VHDX_ME_VIRTUAL_DISK, at = VHDX_BLOCK64K;
    CLEANUP_FREE uint8_t *t = calloc(1, VHDX_MD_TABLE_SIZE + 40);
    uint8_t *items = t + VHDX_MD_TABLE_SIZE, *e = t + VMT_ENTRIES;
    int r;

    if (!t)
        return vd_error(ENOMEM, "out of memory");
    memcpy(t + VMT_SIGNATURE, "metadata", 8);
    vhdx_put_le16(t + VMT_COUNT, 5);
    put_item(e, vhdx_guid_file_params, at, 8, VHDX_ME_REQUIRED);
    put_item(e + VME_SIZE, vhdx_guid_disk_size, at + 8, 8, vd);
    put_item(e + 2 * VME_SIZE, vhdx_guid_page83, at + 16, 16, vd);
    put_item(e + 3 * VME_SIZE, vhdx_guid_logical_sector, at + 32, 4, vd);
    put_item(e + 4 * VME_SIZE, vhdx_guid_physical_sector, at + 36, 4, vd);
    vhdx_put_le32(items, c->block_size);
    vhdx_put_le32(items + 4, c->fixed ? VHDX_PARAM_LEAVE_ALLOCATED : 0);
    vhdx_put_le64(items + 8, c->size);
    if ((r = vhdx_guid_generate(items + 16)) < 0)
        return r;
    vhdx_put_le32(items + 32, CREATE_LSS);
    vhdx_put_le32(items + 36, CREATE_LSS);
    if ((r = vd_pwrite(f, c->md_offset, VHDX_MD_TABLE_SIZE + 40, t, 0)) < 0)
        return vd_error_prefix(r, "Failed to initialize metadata");
    return 0;
}

/* Everything: the file's length first (a file node takes no write past
 * its end), then QEMU's order: identifier, headers, BAT, region tables,
 * metadata. */
static int write_image(vd_node *f, const struct vhdx_create *c)
{
    int r;

    if ((r = vd_truncate(f, c->data_offset + (c->fixed ? c->size : 0), true,
                         VD_PREALLOC_OFF)) < 0)
        return r;
    if ((r = write_identifier(f)) < 0)
        return vd_error_prefix(r, "Failed to write file signature");
    if ((r = write_headers(f, c)) < 0)
        return vd_error_prefix(r, "Failed to write image headers");
    if ((r = write_bat(f, c)) < 0 || (r = write_region_tables(f, c)) < 0 ||
        (r = write_metadata(f, c)) < 0)
        return r;
    return vd_flush(f);
}

/* Options of the file itself: everything but the vhdx options. */
static vd_opts *proto_opts(vd_opts *o)
{
    static const char *const keys[] = { "nocow", "extent_size_hint", "preallocation", NULL };
    vd_opts *p = vd_opts_new();

    if (!p)
        return NULL;
    vd_opts_set(p, "size", "0");
    for (int i = 0; keys[i]; i++)
        if (vd_opts_get(o, keys[i]))
            vd_opts_set(p, keys[i], vd_opts_get(o, keys[i]));
    return p;
}

/* See vhdx.h.  As in QEMU the file is created before the options are
 * judged, so a refused option leaves it empty. */
int vhdx_create(const char *filename, vd_opts *opts)
{
    struct vhdx_create c;
    vd_node *f = NULL;
    vd_opts *p = proto_opts(opts);
    int r;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, p);
    vd_opts_free(p);
    if (r < 0 || (r = parse_create(opts, &c)) < 0)
        return r;
    if ((r = vd_open(&f, filename, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) < 0)
        return r;
    r = write_image(f, &c);
    vd_close(f);
    return r;
}
