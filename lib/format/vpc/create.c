/* SPDX-License-Identifier: BSD-3-Clause */
/* vpc: image creation as qemu-img 7.2 does it.  The size is rounded up to
 * a whole CHS geometry (the VHD specification's algorithm) unless
 * force_size keeps it exact; sizes past what CHS can describe keep the
 * largest geometry and the exact size.  A dynamic image gets 2 MiB blocks
 * and QEMU's layout (see vpc.h); a fixed one is the zeroed data and the
 * footer. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "format/vpc/vpc.h"

/* Block size of the dynamic images qemu-img makes. */
#define VPC_CREATE_BLOCK (2u << 20)

struct vpc_chs {
    uint32_t cyls, heads, secs;
};

static uint64_t chs_sectors(const struct vpc_chs *g)
{
    return (uint64_t)g->cyls * g->heads * g->secs;
}

/* The geometry the VHD specification gives a number of sectors (it may
 * describe fewer); capped at the largest geometry. */
static void chs_for(uint64_t sectors, struct vpc_chs *g)
{
    uint64_t cth;

    sectors = VD_MIN(sectors, VPC_MAX_GEOMETRY);
    if (sectors >= (uint64_t)VPC_CHS_MAX_C * 16 * 63) {
        g->secs = 255;
        g->heads = 16;
        cth = sectors / g->secs;
    } else {
        g->secs = 17;
        cth = sectors / g->secs;
        g->heads = (uint32_t)VD_MAX(div_round_up(cth, 1024), 4u);
        if (cth >= g->heads * 1024ull || g->heads > 16) {
            g->secs = 31;
            g->heads = 16;
            cth = sectors / g->secs;
        }
        if (cth >= g->heads * 1024ull) {
            g->secs = 63;
            g->heads = 16;
            cth = sectors / g->secs;
        }
    }
    g->cyls = (uint32_t)(cth / g->heads);
}

/* The geometry and guest sectors of an image of size bytes (a multiple
 * of 512): the first geometry holding at least that many sectors, or,
 * with force_size or when none does, the largest geometry and the exact
 * size, at most 2040 GiB. */
static int rounded_size(uint64_t size, bool force, struct vpc_chs *g, uint64_t *sectors)
{
    uint64_t want = VD_MIN(VPC_MAX_GEOMETRY, size / VPC_SECTOR);

    *g = (struct vpc_chs){ 0, 0, 0 };
    if (force)
        *g = (struct vpc_chs){ VPC_CHS_MAX_C, VPC_CHS_MAX_H, VPC_CHS_MAX_S };
    for (uint64_t i = 0; !force && want > chs_sectors(g); i++)
        chs_for(want + i, g);
    *sectors = chs_sectors(g);
    if (*sectors == VPC_MAX_GEOMETRY) {
        *sectors = size / VPC_SECTOR;
        if (*sectors > VPC_MAX_SECTORS)
            return vd_error(EFBIG, "Disk size is too large, max size is 2040 GiB");
    }
    return 0;
}

/* Parsed create options. */
struct vpc_create {
    uint64_t size;                 /* bytes, a whole geometry */
    uint64_t sectors;
    struct vpc_chs chs;
    bool fixed, force;
};

/* subformat, force_size and the size (QEMU rounds it up to a sector,
 * then to a geometry). */
static int parse_create(vd_opts *o, struct vpc_create *c)
{
    const char *sub = vd_opts_get(o, "subformat");
    uint64_t size;
    int r;

    memset(c, 0, sizeof(*c));
    if ((r = vd_opts_get_size(o, "size", 0, &size)) < 0 ||
        (r = vd_opts_get_bool(o, "force_size", false, &c->force)) < 0)
        return r;
    if (sub && strcmp(sub, "dynamic") && strcmp(sub, "fixed"))
        return vd_error(EINVAL, "Parameter 'subformat' does not accept value '%s'", sub);
    c->fixed = sub && !strcmp(sub, "fixed");
    if (!round_up_checked(size, VPC_SECTOR, &size) || size > INT64_MAX)
        return vd_error(EFBIG, "Disk size is too large, max size is 2040 GiB");
    if ((r = rounded_size(size, c->force, &c->chs, &c->sectors)) < 0)
        return r;
    c->size = c->sectors * VPC_SECTOR;
    return 0;
}

/* A random (version 4) UUID. */
static int random_uuid(uint8_t *u)
{
    size_t got = 0;

    while (got < 16) {
        ssize_t r = getrandom(u + got, 16 - got, 0);
        if (r < 0 && errno != EINTR)
            return vd_error(errno, "vpc: cannot generate a UUID: %s", strerror(errno));
        got += r > 0 ? (size_t)r : 0;
    }
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    return 0;
}

/* The footer of the new image. */
static int build_footer(const struct vpc_create *c, uint8_t *f)
{
    int r;

    memset(f, 0, VPC_FOOTER_SIZE);
    memcpy(f + VF_COOKIE, "conectix", 8);
    vd_put_be32(f + VF_FEATURES, 2);
    vd_put_be32(f + VF_VERSION, 0x00010000);
    vd_put_be64(f + VF_DATA_OFFSET, c->fixed ? UINT64_MAX : VPC_FOOTER_SIZE);
    vd_put_be32(f + VF_TIMESTAMP, (uint32_t)(time(NULL) - VPC_EPOCH));
    memcpy(f + VF_CREATOR_APP, c->force ? "qem2" : "qemu", 4);
    vd_put_be32(f + VF_CREATOR_VER, 0x00050003);          /* Virtual PC 2007 */
    memcpy(f + VF_CREATOR_OS, "Wi2k", 4);
    vd_put_be64(f + VF_ORIG_SIZE, c->size);
    vd_put_be64(f + VF_CUR_SIZE, c->size);
    vd_put_be16(f + VF_CYLS, (uint16_t)c->chs.cyls);
    f[VF_HEADS] = (uint8_t)c->chs.heads;
    f[VF_SECS] = (uint8_t)c->chs.secs;
    vd_put_be32(f + VF_TYPE, c->fixed ? VPC_TYPE_FIXED : VPC_TYPE_DYNAMIC);
    if ((r = random_uuid(f + VF_UUID)) < 0)
        return r;
    vd_put_be32(f + VF_CHECKSUM, vpc_checksum(f, VPC_FOOTER_SIZE, VF_CHECKSUM));
    return 0;
}

/* The dynamic disk header: no parent, the BAT right after it. */
static void build_header(uint8_t *h, uint64_t entries)
{
    memset(h, 0, VPC_HEADER_SIZE);
    memcpy(h + VH_COOKIE, "cxsparse", 8);
    vd_put_be64(h + VH_DATA_OFFSET, UINT64_MAX);   /* all 64 bits, as MS tools want */
    vd_put_be64(h + VH_TABLE_OFFSET, VPC_FOOTER_SIZE + VPC_HEADER_SIZE);
    vd_put_be32(h + VH_VERSION, 0x00010000);
    vd_put_be32(h + VH_MAX_ENTRIES, (uint32_t)entries);
    vd_put_be32(h + VH_BLOCK_SIZE, VPC_CREATE_BLOCK);
    vd_put_be32(h + VH_CHECKSUM, vpc_checksum(h, VPC_HEADER_SIZE, VH_CHECKSUM));
}

/* Footer copy, header, a BAT with no block, footer: all of the file. */
static int write_dynamic(vd_node *f, const struct vpc_create *c, const uint8_t *footer)
{
    uint64_t entries = div_round_up(c->sectors, VPC_CREATE_BLOCK / VPC_SECTOR);
    uint64_t bat = div_round_up(entries * 4, VPC_SECTOR) * VPC_SECTOR;   /* <= 4 MiB */
    uint64_t len = VPC_FOOTER_SIZE + VPC_HEADER_SIZE + bat + VPC_FOOTER_SIZE;
    uint8_t *buf = malloc(len);
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    memcpy(buf, footer, VPC_FOOTER_SIZE);
    build_header(buf + VPC_FOOTER_SIZE, entries);
    memset(buf + VPC_FOOTER_SIZE + VPC_HEADER_SIZE, 0xff, bat);
    memcpy(buf + len - VPC_FOOTER_SIZE, footer, VPC_FOOTER_SIZE);
    r = vd_truncate(f, len, true, VD_PREALLOC_OFF);
    if (r >= 0)
        r = vd_pwrite(f, 0, len, buf, 0);
    free(buf);
    return r < 0 ? vd_error_prefix(r, "Unable to create or write VHD header") : 0;
}

/* The data (a hole) and the footer behind it. */
static int write_fixed(vd_node *f, const struct vpc_create *c, const uint8_t *footer)
{
    int r = vd_truncate(f, c->size + VPC_FOOTER_SIZE, true, VD_PREALLOC_OFF);

    if (r < 0)
        return r;
    if ((r = vd_pwrite(f, c->size, VPC_FOOTER_SIZE, footer, 0)) < 0)
        return vd_error_prefix(r, "Unable to write VHD header");
    return 0;
}

/* Options of the file itself: QEMU hands the protocol everything but the
 * vpc options, so it is created empty (its preallocation has nothing to
 * preallocate). */
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

/* See vpc.h.  As in QEMU the file is created before the options are
 * judged, so a refused size or subformat leaves it empty. */
int vpc_create(const char *filename, vd_opts *opts)
{
    uint8_t footer[VPC_FOOTER_SIZE];
    struct vpc_create c;
    vd_node *f = NULL;
    vd_opts *p = proto_opts(opts);
    int r;

    if (!p)
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, p);
    vd_opts_free(p);
    if (r < 0 || (r = parse_create(opts, &c)) < 0 || (r = build_footer(&c, footer)) < 0)
        return r;
    if ((r = vd_open(&f, filename, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) < 0)
        return r;
    r = c.fixed ? write_fixed(f, &c, footer) : write_dynamic(f, &c, footer);
    if (r >= 0)
        r = vd_flush(f);
    vd_close(f);
    return r;
}
