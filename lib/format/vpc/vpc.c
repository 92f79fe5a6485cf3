/* SPDX-License-Identifier: BSD-3-Clause */
/* vpc: probing and opening.  Every field of the footer and the dynamic
 * header is checked in the order QEMU 7.2 checks it, with its messages, so
 * that an image QEMU refuses is refused with the same words; then, beyond
 * QEMU, the blocks the guest can reach must not overlap each other or the
 * metadata (invariant 1 of io.c), and the in-memory BAT is capped. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/vpc/vpc.h"
#include "util/json.h"

/* QEMU's request limits, which decide which header reads fail there. */
#define VPC_QEMU_MAX_LENGTH 0x7fffffffc0000000ull
#define VPC_QEMU_MAX_REQUEST 0x7ffffe00ull
/* QEMU refuses more BAT entries than fit an int-sized allocation. */
#define VPC_QEMU_MAX_ENTRIES ((uint32_t)INT32_MAX / 4)
/* Most BAT entries vdisk keeps in memory (128 MiB of table). */
#define VPC_MAX_LOADED (1ull << 25)
/* BAT entries read per step while scanning the table. */
#define VPC_SCAN_CHUNK 65536u

/* How the guest size is chosen (the force_size_calc open option). */
enum size_calc { CALC_AUTO, CALC_CHS, CALC_CURRENT_SIZE };

/* Score 100 on the footer cookie at offset 0 (a dynamic image's copy); a
 * fixed image keeps its footer at the end only and probes as raw. */
static int vpc_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return len >= 8 && !memcmp(buf, "conectix", 8) ? 100 : 0;
}

/* See vpc.h. */
int vpc_read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf)
{
    int64_t flen = vd_getlength(f);
    uint64_t end = flen > 0 ? (uint64_t)flen : 0, l;

    l = off >= end ? 0 : VD_MIN(len, end - off);
    if (l < len)
        memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(f, off, l, buf, 0) : 0;
}

/* See vpc.h. */
uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t skip)
{
    uint32_t sum = 0;

    for (size_t i = 0; i < len; i++)
        if (i < skip || i >= skip + 4)
            sum += buf[i];
    return ~sum;
}

/* The force_size_calc option: "chs", "current_size" or absent. */
static int parse_size_calc(vd_opts *opts, enum size_calc *calc)
{
    const char *v = vd_opts_get(opts, "force_size_calc");

    *calc = CALC_AUTO;
    if (v && !strcmp(v, "chs"))
        *calc = CALC_CHS;
    else if (v && !strcmp(v, "current_size"))
        *calc = CALC_CURRENT_SIZE;
    else if (v)
        return vd_error(EINVAL, "Invalid size calculation mode: '%s'", v);
    vd_opts_del(opts, "force_size_calc");
    return 0;
}

/* Find the footer: its copy at offset 0 makes the image dynamic, else a
 * fixed image's footer ends the file. */
static int read_footer(vd_node *n, bool *dynamic)
{
    struct vpc_state *s = n->state;
    int64_t flen;
    int r;

    if ((r = vpc_read_padded(n->file, 0, VPC_FOOTER_SIZE, s->footer)) < 0)
        return vd_error_prefix(r, "Unable to read VHD header");
    *dynamic = !memcmp(s->footer + VF_COOKIE, "conectix", 8);
    if (*dynamic)
        return 0;
    flen = vd_getlength(n->file);
    if (flen < (int64_t)VPC_FOOTER_SIZE)
        return vd_error(EINVAL, "File too small for a VHD header");
    if ((r = vpc_read_padded(n->file, (uint64_t)flen - VPC_FOOTER_SIZE, VPC_FOOTER_SIZE,
                             s->footer)) < 0)
        return r;
    if (memcmp(s->footer + VF_COOKIE, "conectix", 8) ||
        vd_be32(s->footer + VF_TYPE) != VPC_TYPE_FIXED)
        return vd_error(EINVAL, "invalid VPC image");
    return 0;
}

/* Creator applications whose images QEMU sizes by the footer's
 * current_size rather than by the CHS geometry: Hyper-V, qemu with
 * force_size, disk2vhd, XenConverter, XenServer. */
static bool sized_by_current_size(const uint8_t *app)
{
    static const char *const apps[] = { "win ", "qem2", "d2v ", "CTXS", "tap" };

    for (size_t i = 0; i < VD_ARRAY_SIZE(apps); i++)
        if (!memcmp(app, apps[i], 4))      /* "tap" with its NUL: 4 bytes */
            return true;
    return false;
}

/* Guest sectors as QEMU counts them: the CHS geometry, unless the creator
 * application, a geometry at its maximum or the option says current_size. */
static uint64_t guest_sectors(const uint8_t *f, enum size_calc calc)
{
    uint64_t chs = (uint64_t)vd_be16(f + VF_CYLS) * f[VF_HEADS] * f[VF_SECS];
    bool use_chs = !sized_by_current_size(f + VF_CREATOR_APP) || calc == CALC_CHS;

    if (!use_chs || chs == VPC_MAX_GEOMETRY || calc == CALC_CURRENT_SIZE)
        return vd_be64(f + VF_CUR_SIZE) / VPC_SECTOR;
    return chs;
}

/* Checksum, then the guest size and its 2040 GiB limit. */
static int check_footer(vd_node *n, enum size_calc calc)
{
    struct vpc_state *s = n->state;
    uint64_t sectors;

    if (vpc_checksum(s->footer, VPC_FOOTER_SIZE, VF_CHECKSUM) !=
        vd_be32(s->footer + VF_CHECKSUM))
        return vd_error(EINVAL, "Incorrect header checksum");
    sectors = guest_sectors(s->footer, calc);
    if (sectors > VPC_MAX_SECTORS)
        return vd_error(EFBIG, "Could not open '%s': %s", n->filename, strerror(EFBIG));
    s->size = sectors * VPC_SECTOR;
    s->dynamic_io = vd_be32(s->footer + VF_TYPE) != VPC_TYPE_FIXED;
    return 0;
}

/* The dynamic header's magic, block size and table size, with QEMU's
 * checks and messages in its order.  The table size checks reproduce
 * QEMU's arithmetic on its signed 32-bit entry count. */
static int parse_header(vd_node *n, const uint8_t *h)
{
    struct vpc_state *s = n->state;
    uint32_t bs = vd_be32(h + VH_BLOCK_SIZE), e = vd_be32(h + VH_MAX_ENTRIES);
    uint64_t covered = (uint64_t)(int64_t)(int32_t)e * bs;   /* wraps as QEMU's */

    if (memcmp(h + VH_COOKIE, "cxsparse", 8))
        return vd_error(EINVAL, "Invalid header magic");
    if (!is_power_of_2(bs) || bs < VPC_SECTOR)
        return vd_error(EINVAL, "Invalid block size %u", bs);
    s->block_size = bs;
    s->bitmap_size = ((bs / (8 * VPC_SECTOR)) + 511) & ~511u;   /* QEMU's formula */
    if (s->size / bs > 0xffffffffu)
        return vd_error(EINVAL, "Too many blocks");
    if (covered < s->size)
        return vd_error(EINVAL, "Page table too small");
    if (e > VPC_QEMU_MAX_ENTRIES)
        return vd_error(EINVAL, "Max Table Entries too large (%d)", (int32_t)e);
    s->entries = e;
    s->bat_offset = vd_be64(h + VH_TABLE_OFFSET);
    if (e * 4ull > VPC_QEMU_MAX_REQUEST || s->bat_offset > VPC_QEMU_MAX_LENGTH - e * 4ull)
        return vd_error(EIO, "Error reading pagetable");
    s->loaded = div_round_up(s->size, bs);
    return 0;
}

/* Read and parse the dynamic header the footer points to. */
static int read_header(vd_node *n)
{
    struct vpc_state *s = n->state;
    uint8_t h[VPC_FOOTER_SIZE];
    int r;

    s->header_offset = vd_be64(s->footer + VF_DATA_OFFSET);
    if (s->header_offset > VPC_QEMU_MAX_LENGTH - sizeof(h))
        return vd_error(EIO, "Error reading dynamic VHD header");
    if ((r = vpc_read_padded(n->file, s->header_offset, sizeof(h), h)) < 0)
        return vd_error_prefix(r, "Error reading dynamic VHD header");
    return parse_header(n, h);
}

/* Does [a, a+al) meet [b, b+bl)?  (Ends are below 2^64 here.) */
static bool overlaps(uint64_t a, uint64_t al, uint64_t b, uint64_t bl)
{
    return a < b + bl && b < a + al;
}

/* Beyond QEMU: the footer copy, the dynamic header and the BAT must not
 * overlap one another, and the BAT the guest uses must fit in memory. */
static int check_metadata_layout(const struct vpc_state *s)
{
    uint64_t bat_len = s->entries * 4;

    if (s->loaded > VPC_MAX_LOADED)
        return vd_error(EFBIG, "vpc: a table of %llu blocks of %u bytes is more than "
                        "vdisk handles (at most %llu blocks)",
                        (unsigned long long)s->loaded, s->block_size,
                        (unsigned long long)VPC_MAX_LOADED);
    if (overlaps(s->header_offset, VPC_HEADER_SIZE, 0, VPC_FOOTER_SIZE))
        return vd_error(EINVAL, "vpc: the dynamic disk header at 0x%llx overlaps the "
                        "footer copy", (unsigned long long)s->header_offset);
    if (bat_len && (overlaps(s->bat_offset, bat_len, 0, VPC_FOOTER_SIZE) ||
                    overlaps(s->bat_offset, bat_len, s->header_offset, VPC_HEADER_SIZE)))
        return vd_error(EINVAL, "vpc: the BAT at 0x%llx overlaps the footer copy or the "
                        "dynamic disk header", (unsigned long long)s->bat_offset);
    return 0;
}

/* End of the block whose BAT entry is e (bitmap and data). */
static uint64_t block_end(const struct vpc_state *s, uint32_t e)
{
    return (uint64_t)e * VPC_SECTOR + s->bitmap_size + s->block_size;
}

/* Read the whole BAT in steps: keep the entries the guest can reach (when
 * s->bat is allocated) and find where the last block ends (QEMU's
 * free_data_block_offset). */
static int scan_bat(vd_node *n)
{
    struct vpc_state *s = n->state;
    uint8_t *chunk = malloc(VPC_SCAN_CHUNK * 4);
    int r = 0;

    if (!chunk)
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = 0; i < s->entries && r >= 0; i += VPC_SCAN_CHUNK) {
        uint64_t cnt = VD_MIN((uint64_t)VPC_SCAN_CHUNK, s->entries - i);
        r = vpc_read_padded(n->file, s->bat_offset + i * 4, cnt * 4, chunk);
        for (uint64_t j = 0; r >= 0 && j < cnt; j++) {
            uint32_t e = vd_be32(chunk + j * 4);
            if (s->bat && i + j < s->loaded)
                s->bat[i + j] = e;
            if (e != VPC_BAT_FREE)
                s->free_offset = VD_MAX(s->free_offset, block_end(s, e));
        }
    }
    free(chunk);
    return r < 0 ? vd_error_prefix(r, "Error reading pagetable") : 0;
}

/* qsort order of BAT entries (block positions). */
static int cmp_entry(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Does the block at entry e meet the footer copy, header or BAT? */
static bool block_hits_metadata(const struct vpc_state *s, uint32_t e)
{
    uint64_t at = (uint64_t)e * VPC_SECTOR, len = block_end(s, e) - at;

    return overlaps(at, len, 0, VPC_FOOTER_SIZE) ||
           overlaps(at, len, s->header_offset, VPC_HEADER_SIZE) ||
           (s->entries && overlaps(at, len, s->bat_offset, s->entries * 4));
}

/* Beyond QEMU (invariant 1 of io.c): the blocks the guest can reach
 * overlap neither the metadata nor one another. */
static int check_blocks(const struct vpc_state *s)
{
    uint32_t *used = vd_calloc_array(s->loaded, sizeof(uint32_t));
    uint64_t nused = 0;
    int r = 0;

    if (!used)
        return vd_error(ENOMEM, "out of memory");
    for (uint64_t i = 0; i < s->loaded && r >= 0; i++) {
        if (s->bat[i] == VPC_BAT_FREE)
            continue;
        if (block_hits_metadata(s, s->bat[i]))
            r = vd_error(EINVAL, "vpc: block %llu at 0x%llx overlaps the image's "
                         "metadata", (unsigned long long)i,
                         (unsigned long long)s->bat[i] * VPC_SECTOR);
        used[nused++] = s->bat[i];
    }
    if (r >= 0 && nused > 1)
        qsort(used, nused, sizeof(*used), cmp_entry);
    for (uint64_t i = 1; r >= 0 && i < nused; i++)
        if (block_end(s, used[i - 1]) > (uint64_t)used[i] * VPC_SECTOR)
            r = vd_error(EINVAL, "vpc: the blocks at 0x%llx and 0x%llx overlap",
                         (unsigned long long)used[i - 1] * VPC_SECTOR,
                         (unsigned long long)used[i] * VPC_SECTOR);
    free(used);
    return r;
}

/* Load and check the BAT of a dynamic image. */
static int open_dynamic(vd_node *n)
{
    struct vpc_state *s = n->state;
    int64_t flen = vd_getlength(n->file);
    int r;

    if ((r = read_header(n)) < 0)
        return r;
    /* Blocks start after the table; a table that does not fit the file
     * fails QEMU's test below before anything is read or allocated. */
    round_up_checked(s->bat_offset + s->entries * 4, VPC_SECTOR, &s->free_offset);
    if ((r = vd_untrusted_table_check(n, s->loaded * 4, "vpc BAT")) < 0)
        return r;
    if (s->free_offset <= (uint64_t)flen && s->loaded <= VPC_MAX_LOADED) {
        s->bat = vd_calloc_array(s->loaded, sizeof(uint32_t));
        s->bitmap_state = vd_calloc_array(s->loaded, 1);
        if (!s->bat || !s->bitmap_state)
            return vd_error(ENOMEM, "Unable to allocate memory for page table");
    }
    if (s->free_offset <= (uint64_t)flen && (r = scan_bat(n)) < 0)
        return r;
    if (s->free_offset > (uint64_t)flen)
        return vd_error(EINVAL, "block-vpc: free_data_block_offset points after the end "
                        "of file. The image has been truncated.");
    if ((r = check_metadata_layout(s)) < 0 || (r = check_blocks(s)) < 0)
        return r;
    /* Never append blocks over a dynamic header that sits past them. */
    s->free_offset = VD_MAX(s->free_offset, div_round_up(s->header_offset + VPC_HEADER_SIZE,
                                                         VPC_SECTOR) * VPC_SECTOR);
    return 0;
}

/* Open: footer, size rules, and for a dynamic image its header and BAT. */
static int vpc_open(vd_node *n, vd_opts *opts, int flags)
{
    struct vpc_state *s = n->state;
    enum size_calc calc;
    bool dynamic;
    int r;

    pthread_mutex_init(&s->lock, NULL);
    if ((r = parse_size_calc(opts, &calc)) < 0 ||
        (r = read_footer(n, &dynamic)) < 0 ||
        (r = check_footer(n, calc)) < 0)
        return r;
    if (!dynamic)
        return 0;
    if ((r = open_dynamic(n)) < 0)
        return r;
    return vd_be32(s->footer + VF_TYPE) == VPC_TYPE_DIFF ? vpc_open_parent(n, flags) : 0;
}

/* Nothing to write back: metadata reaches the disk as it changes. */
static void vpc_close(vd_node *n)
{
    struct vpc_state *s = n->state;

    free(s->bat);
    free(s->bitmap_state);
    free(s->parent_name);
    pthread_mutex_destroy(&s->lock);
}

static int64_t vpc_getlength(vd_node *n)
{
    return (int64_t)((struct vpc_state *)n->state)->size;
}

/* Dynamic images report their block size as qemu-img info's cluster size. */
static int64_t vpc_cluster_size(vd_node *n)
{
    struct vpc_state *s = n->state;

    return s->dynamic_io ? s->block_size : 0;
}

/* Unwritten blocks read as zeroes; a fixed image is as zeroed as its file. */
static bool vpc_has_zero_init(vd_node *n)
{
    struct vpc_state *s = n->state;
    const struct vd_driver *d = n->file->drv;

    if (s->diff)
        return false;              /* reads the parent */
    if (s->dynamic_io)
        return true;
    return d->has_zero_init && d->has_zero_init(n->file);
}

/* Format-specific info: for a differencing image only (QEMU has none). */
static int vpc_info(vd_node *n, struct vd_json *data)
{
    struct vpc_state *s = n->state;
    const uint8_t *u = s->parent_uuid;
    char buf[37];

    if (!s->diff)
        return 0;
    snprintf(buf, sizeof(buf), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
             u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    vd_json_set_str(data, "disk-type", "differencing");
    vd_json_set_str(data, "parent-uuid", buf);
    vd_json_set_str(data, "parent-name", s->parent_name);
    return 0;
}

static const struct vd_opt_desc vpc_open_opts[] = {
    { "force_size_calc", VD_OPT_STRING, "Force disk size calculation to use either CHS "
      "geometry, or use the disk current_size specified in the VHD footer. "
      "{chs, current_size}", NULL },
    { NULL, 0, NULL, NULL },
};

/* -o options in the order qemu-img 7.2 prints its "Formatting" line. */
static const struct vd_opt_desc vpc_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "subformat", VD_OPT_STRING, "Type of virtual hard disk format. Supported formats "
      "are {dynamic (default) | fixed} ", NULL },
    { "force_size", VD_OPT_BOOL, "Force disk size calculation to use the actual size "
      "specified, rather than using the nearest CHS-based calculation", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver vpc_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "vpc",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct vpc_state),
    .open_opts = vpc_open_opts,
    .create_opts = vpc_create_opts,
    .probe = vpc_probe,
    .open = vpc_open,
    .close = vpc_close,
    .pread = vpc_pread,
    .pwrite = vpc_pwrite,
    .block_status = vpc_block_status,
    .getlength = vpc_getlength,
    .create = vpc_create,
    .has_zero_init = vpc_has_zero_init,
    .cluster_size = vpc_cluster_size,
    .info = vpc_info,
    .supports_backing = true,
};
VD_DRIVER_REGISTER(vpc_driver)
