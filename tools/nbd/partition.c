/* SPDX-License-Identifier: BSD-3-Clause */
/* -P: find a partition in an image's MBR (primary 1-4, logical 5+ through
 * the chain of extended boot records) or GPT.  The table is hostile input:
 * every entry is checked against the image size with overflow-checked
 * arithmetic, entry sizes and counts are capped and the EBR chain is
 * bounded. */
#include <errno.h>
#include <string.h>

#include "nbd.h"
#include "util/checked.h"

#define SECTOR 512u
#define MAX_LOGICAL 128
#define GPT_MAX_ENTRIES 1024

/* Little-endian loads. */
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p)
{
    return le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* Read one sector. */
static int read_sector(vd_node *n, uint64_t lba, uint8_t *buf)
{
    uint64_t off;

    if (MUL_OVERFLOW(lba, (uint64_t)SECTOR, &off) ||
        !range_ok(off, SECTOR, (uint64_t)vd_getlength(n)))
        return vd_error(EINVAL, "partition table sector %llu is beyond the image",
                        (unsigned long long)lba);
    return vd_pread(n, off, SECTOR, buf, 0);
}

/* A window of sectors [start, start + count), checked against the image. */
static int window(vd_node *n, uint64_t start, uint64_t count, uint64_t *off, uint64_t *size)
{
    uint64_t o, s;

    if (count == 0)
        return vd_error(ENOENT, "partition is empty");
    if (MUL_OVERFLOW(start, (uint64_t)SECTOR, &o) || MUL_OVERFLOW(count, (uint64_t)SECTOR, &s) ||
        !range_ok(o, s, (uint64_t)vd_getlength(n)))
        return vd_error(EINVAL, "partition lies beyond the end of the image");
    *off = o;
    *size = s;
    return 0;
}

static bool is_extended(uint8_t type)
{
    return type == 0x05 || type == 0x0f || type == 0x85;
}

/* Logical partition number part (5+) through the EBR chain from ext_lba. */
static int find_logical(vd_node *n, uint64_t ext_lba, int part, uint64_t *off, uint64_t *size)
{
    uint8_t ebr[SECTOR];
    uint64_t cur = ext_lba;
    int r;

    for (int num = 5; num < 5 + MAX_LOGICAL; num++) {
        const uint8_t *e0 = ebr + 446, *e1 = ebr + 462;
        uint64_t start;
        if ((r = read_sector(n, cur, ebr)) < 0)
            return r;
        if (ebr[510] != 0x55 || ebr[511] != 0xaa)
            break;
        if (num == part) {
            if (ADD_OVERFLOW(cur, (uint64_t)le32(e0 + 8), &start))
                return vd_error(EINVAL, "bad logical partition");
            return window(n, start, le32(e0 + 12), off, size);
        }
        if (!is_extended(e1[4]) || le32(e1 + 8) == 0)
            break;
        cur = ext_lba + le32(e1 + 8);
    }
    return vd_error(ENOENT, "no partition %d", part);
}

/* GPT: partition number part from the header in LBA 1. */
static int find_gpt(vd_node *n, int part, uint64_t *off, uint64_t *size)
{
    uint8_t hdr[SECTOR], sec[SECTOR];
    uint64_t lba, pos;
    uint32_t count, esize;
    int r;

    if ((r = read_sector(n, 1, hdr)) < 0)
        return r;
    if (memcmp(hdr, "EFI PART", 8))
        return vd_error(EINVAL, "protective MBR without a GPT header");
    lba = le64(hdr + 72);
    count = le32(hdr + 80);
    esize = le32(hdr + 84);
    if (esize < 128 || esize > SECTOR || SECTOR % esize || count > GPT_MAX_ENTRIES)
        return vd_error(EINVAL, "unsupported GPT entry layout");
    if ((uint32_t)part > count)
        return vd_error(ENOENT, "no partition %d", part);
    pos = (uint64_t)(part - 1) * esize;
    if ((r = read_sector(n, lba + pos / SECTOR, sec)) < 0)
        return r;
    {
        const uint8_t *e = sec + pos % SECTOR, zero[16] = { 0 };
        uint64_t first = le64(e + 32), last = le64(e + 40);
        if (!memcmp(e, zero, 16) || last < first)
            return vd_error(ENOENT, "no partition %d", part);
        return window(n, first, last - first + 1, off, size);
    }
}

/* See nbd.h. */
int nbd_find_partition(vd_node *n, int part, uint64_t *off, uint64_t *size)
{
    uint8_t mbr[SECTOR];
    int r;

    if ((r = read_sector(n, 0, mbr)) < 0)
        return r;
    if (mbr[510] != 0x55 || mbr[511] != 0xaa)
        return vd_error(EINVAL, "no partition table");
    for (int i = 0; i < 4; i++)
        if (mbr[446 + 16 * i + 4] == 0xee)
            return find_gpt(n, part, off, size);
    if (part <= 4) {
        const uint8_t *e = mbr + 446 + 16 * (part - 1);
        if (e[4] == 0 || is_extended(e[4]))
            return vd_error(ENOENT, "no partition %d", part);
        return window(n, le32(e + 8), le32(e + 12), off, size);
    }
    for (int i = 0; i < 4; i++) {
        const uint8_t *e = mbr + 446 + 16 * i;
        if (is_extended(e[4]))
            return find_logical(n, le32(e + 8), part, off, size);
    }
    return vd_error(ENOENT, "no partition %d", part);
}
