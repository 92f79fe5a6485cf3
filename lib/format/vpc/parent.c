/* SPDX-License-Identifier: BSD-3-Clause */
/* vpc: the parent of a differencing image (disk type 4).  QEMU 7.2 opens
 * such an image as a dynamic one without a parent; vdisk reads it with
 * its parent as the backing file.  The dynamic header names the parent
 * in up to eight parent locators and in its Unicode name; vdisk takes the
 * first of these that exists: a relative Windows path (W2ru, UTF-16LE,
 * resolved against the image's directory), an absolute one (W2ku), a Mac
 * OS X file URL (MacX, UTF-8), then the Unicode name (UTF-16BE) beside the
 * image.  Every locator's offset and length is checked before it is read
 * (inside the file, at most VPC_LOCATOR_MAX bytes, overlapping neither the
 * metadata nor another locator).  The parent must be a regular file
 * outside /proc and /sys, and must not be the image itself.
 *
 * As Hyper-V, vdisk refuses a parent whose UUID is not the one the child
 * records; a parent modified after the child was made (its file's
 * modification time is not the child's parent time stamp) is opened with
 * a warning, as Virtual PC warned. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "format/vpc/vpc.h"
#include "util/utf8.h"

#define PROC_MAGIC  0x9fa0
#define SYSFS_MAGIC 0x62656572
/* Longest parent locator read (bytes). */
#define VPC_LOCATOR_MAX 8192u
#define VPC_LOCATORS 8
/* Platform codes of the locators vdisk reads. */
#define PLAT_W2RU 0x57327275u       /* "W2ru" */
#define PLAT_W2KU 0x57326b75u       /* "W2ku" */
#define PLAT_MACX 0x4d616358u       /* "MacX" */

/* Fields of the dynamic header past the ones vpc.c reads. */
enum {
    VH_PARENT_UUID = 40, VH_PARENT_TS = 56, VH_PARENT_NAME = 64,
    VH_PARENT_NAME_LEN = 512, VH_LOCATORS = 576, VH_LOCATOR_SIZE = 24,
};

/* One parent locator entry as stored. */
struct locator {
    uint32_t code, len;
    uint64_t off;
};

/* The names the header gives, in the order they are tried. */
struct candidates {
    char *name[VPC_LOCATORS + 1];
    const char *kind[VPC_LOCATORS + 1];
    int n;
};

/* Decode UTF-16 (big or little endian) of len bytes up to a NUL into a
 * new UTF-8 string; NULL when invalid (unpaired surrogates) or out of
 * memory. */
static char *utf16_to_utf8(const uint8_t *p, size_t len, bool be)
{
    char *out = malloc(len / 2 * 3 + 1), *o = out;

    for (size_t i = 0; out && i + 1 < len; i += 2) {
        uint32_t u = be ? (uint32_t)p[i] << 8 | p[i + 1] : (uint32_t)p[i + 1] << 8 | p[i];
        if (u == 0)
            break;
        if (u >= 0xd800 && u < 0xdc00 && i + 3 < len) {
            uint32_t l = be ? (uint32_t)p[i + 2] << 8 | p[i + 3]
                            : (uint32_t)p[i + 3] << 8 | p[i + 2];
            if (l < 0xdc00 || l >= 0xe000)
                goto bad;
            u = 0x10000 + ((u - 0xd800) << 10) + (l - 0xdc00);
            i += 2;
        } else if (u >= 0xd800 && u < 0xe000) {
            goto bad;
        }
        o += vd_utf8_encode(u, o);
    }
    if (out)
        *o = 0;
    return out;
bad:
    free(out);
    return NULL;
}

/* Value of the hex digit c, or -1. */
static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
        return (c | 0x20) - 'a' + 10;
    return -1;
}

/* Decode a MacX locator: a UTF-8 "file://" URL (host empty or localhost)
 * with %XX escapes; NULL when it is not one. */
static char *url_to_path(const uint8_t *p, size_t len)
{
    static const char *const prefixes[] = { "file://localhost/", "file:///" };
    size_t l = strnlen((const char *)p, len), skip = 0;
    char *out, *o;

    for (size_t i = 0; i < VD_ARRAY_SIZE(prefixes) && !skip; i++)
        if (l >= strlen(prefixes[i]) && !memcmp(p, prefixes[i], strlen(prefixes[i])))
            skip = strlen(prefixes[i]) - 1;          /* keep the '/' */
    if (!skip || !(out = malloc(l - skip + 1)))
        return NULL;
    o = out;
    for (size_t i = skip; i < l; i++) {
        int hi = i + 2 < l && p[i] == '%' ? hexval(p[i + 1]) : -1;
        int lo = hi >= 0 ? hexval(p[i + 2]) : -1;
        if (lo >= 0 && (hi || lo)) {
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else {
            *o++ = (char)p[i];
        }
    }
    *o = 0;
    return out;
}

/* Windows separators to '/', without leading "./"; NULL for a path on a
 * drive letter or a UNC share, which cannot name a file here.  A name
 * whose first component has a ':' keeps "./" so that it is not taken
 * for a protocol prefix ("nbd:..."). */
static char *unix_path(char *s)
{
    char *colon, *slash, *out;

    if (!s)
        return NULL;
    for (char *c = s; *c; c++)
        if (*c == '\\')
            *c = '/';
    while (!strncmp(s, "./", 2))
        memmove(s, s + 2, strlen(s + 2) + 1);
    if ((s[0] && s[1] == ':') || !strncmp(s, "//", 2) || !*s) {
        free(s);
        return NULL;
    }
    colon = strchr(s, ':');
    slash = strchr(s, '/');
    if (!colon || (slash && slash < colon))
        return s;
    if (asprintf(&out, "./%s", s) < 0)
        out = NULL;
    free(s);
    return out;
}

/* Does [a, a+al) meet [b, b+bl)?  (Ends checked below 2^64.) */
static bool meets(uint64_t a, uint64_t al, uint64_t b, uint64_t bl)
{
    return al && bl && a < b + bl && b < a + al;
}

/* Check locator i (entry bytes e) against the file and the metadata. */
static int check_locator(const struct vpc_state *s, int i, const uint8_t *e, uint64_t flen,
                         struct locator *loc)
{
    loc->code = vd_be32(e);
    loc->len = vd_be32(e + 8);
    loc->off = vd_be64(e + 16);
    if (!loc->code || !loc->len)
        return 0;
    if (loc->len > VPC_LOCATOR_MAX)
        return vd_error(EINVAL, "vpc: parent locator %d is %u bytes long (at most %u)", i,
                        loc->len, VPC_LOCATOR_MAX);
    if (loc->off > flen || loc->len > flen - loc->off)
        return vd_error(EINVAL, "vpc: parent locator %d (%u bytes at 0x%llx) lies beyond "
                        "the end of the file", i, loc->len, (unsigned long long)loc->off);
    if (meets(loc->off, loc->len, 0, VPC_FOOTER_SIZE) ||
        meets(loc->off, loc->len, s->header_offset, VPC_HEADER_SIZE) ||
        meets(loc->off, loc->len, s->bat_offset, s->entries * 4))
        return vd_error(EINVAL, "vpc: parent locator %d at 0x%llx overlaps the image's "
                        "metadata", i, (unsigned long long)loc->off);
    return 0;
}

/* Read and decode one locator into a path (NULL: not one vdisk reads). */
static int read_locator(vd_node *n, const struct locator *loc, char **path)
{
    uint8_t *buf;
    int r;

    *path = NULL;
    if (loc->code != PLAT_W2RU && loc->code != PLAT_W2KU && loc->code != PLAT_MACX)
        return 0;
    if (!(buf = malloc(loc->len)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_pread(n->file, loc->off, loc->len, buf, 0)) < 0) {
        free(buf);
        return vd_error_prefix(r, "vpc: cannot read a parent locator");
    }
    if (loc->code == PLAT_MACX)
        *path = url_to_path(buf, loc->len);
    else
        *path = unix_path(utf16_to_utf8(buf, loc->len, false));
    free(buf);
    return 0;
}

/* Append a name to the candidates (owned from here; NULL ignored). */
static void add(struct candidates *c, char *name, const char *kind)
{
    if (!name)
        return;
    c->name[c->n] = name;
    c->kind[c->n++] = kind;
}

/* Rank of a platform code in the order names are tried. */
static int rank(uint32_t code)
{
    return code == PLAT_W2RU ? 0 : code == PLAT_W2KU ? 1 : code == PLAT_MACX ? 2 : 3;
}

/* Check the eight locators, then collect the names in order of
 * preference. */
static int collect(vd_node *n, const uint8_t *h, struct candidates *c)
{
    struct vpc_state *s = n->state;
    struct locator loc[VPC_LOCATORS];
    int64_t flen = vd_getlength(n->file);
    int r = 0;

    if (flen < 0)
        return (int)flen;
    for (int i = 0; i < VPC_LOCATORS && r >= 0; i++) {
        r = check_locator(s, i, h + VH_LOCATORS + i * VH_LOCATOR_SIZE, (uint64_t)flen,
                          &loc[i]);
        for (int j = 0; r >= 0 && j < i; j++)
            if (loc[i].code && loc[j].code && meets(loc[i].off, loc[i].len, loc[j].off,
                                                    loc[j].len))
                r = vd_error(EINVAL, "vpc: parent locators %d and %d overlap", j, i);
    }
    for (int k = 0; k < 3 && r >= 0; k++)
        for (int i = 0; i < VPC_LOCATORS && r >= 0; i++) {
            char *p;
            if (!loc[i].code || !loc[i].len || rank(loc[i].code) != k)
                continue;
            if ((r = read_locator(n, &loc[i], &p)) >= 0)
                add(c, p, k == 0 ? "relative" : "absolute");
        }
    if (r >= 0)
        add(c, unix_path(utf16_to_utf8(h + VH_PARENT_NAME, VH_PARENT_NAME_LEN, true)),
            "name");
    return r;
}

/* May path be opened as the parent of n?  1 yes, 0 it does not exist. */
static int check_parent_path(vd_node *n, const char *path, const char *kind)
{
    struct stat st, self;
    struct statfs sf;

    if (stat(path, &st) < 0)
        return 0;
    if (!S_ISREG(st.st_mode))
        return vd_error(EINVAL, "vpc: the parent '%s' (%s locator) is not a regular file",
                        path, kind);
    if (statfs(path, &sf) == 0 && (sf.f_type == PROC_MAGIC || sf.f_type == SYSFS_MAGIC))
        return vd_error(EINVAL, "vpc: the parent '%s' (%s locator) is a kernel file", path,
                        kind);
    if (stat(n->filename, &self) == 0 && self.st_dev == st.st_dev && self.st_ino == st.st_ino)
        return vd_error(ELOOP, "vpc: '%s' names itself as its parent", n->filename);
    return 1;
}

/* The error for a parent none of the names finds. */
static int not_found(vd_node *n, const struct candidates *c)
{
    char tried[1024] = "";

    for (int i = 0; i < c->n; i++) {
        size_t l = strlen(tried);
        snprintf(tried + l, sizeof(tried) - l, "%s'%s'", i ? ", " : "", c->name[i]);
    }
    return vd_error(ENOENT, "vpc: the parent of '%s' was not found (tried %s)", n->filename,
                    tried);
}

/* Set n's backing file to the first candidate that exists (or, for an open
 * without backing files, to the first one). */
static int choose(vd_node *n, const struct candidates *c, int flags)
{
    int r;

    for (int i = 0; i < c->n; i++) {
        if ((r = vd_node_set_backing_name(n, c->name[i], "vpc")) < 0 ||
            (r = check_parent_path(n, n->backing_full_name, c->kind[i])) != 0)
            return r;
    }
    if (flags & VD_O_NO_BACKING)
        return vd_node_set_backing_name(n, c->name[0], "vpc");
    vd_node_set_backing_name(n, NULL, NULL);
    return not_found(n, c);
}

/* Read the footer of the parent file at path into f. */
static int read_parent_footer(const char *path, uint8_t *f, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC), r = 0;

    if (fd < 0)
        return vd_error(errno, "vpc: cannot open the parent '%s': %s", path, strerror(errno));
    if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode) || st->st_size < VPC_FOOTER_SIZE ||
        pread(fd, f, VPC_FOOTER_SIZE, 0) != VPC_FOOTER_SIZE ||
        (memcmp(f, "conectix", 8) &&
         pread(fd, f, VPC_FOOTER_SIZE, st->st_size - VPC_FOOTER_SIZE) != VPC_FOOTER_SIZE) ||
        memcmp(f, "conectix", 8))
        r = vd_error(EINVAL, "vpc: the parent '%s' is not a VHD image", path);
    close(fd);
    return r;
}

/* The parent's UUID must be the child's record of it (else refused, as
 * Hyper-V does), its size no larger; a time stamp that differs from the
 * parent file's modification time is only a warning. */
static int check_parent(vd_node *n, const uint8_t *h)
{
    struct vpc_state *s = n->state;
    uint8_t f[VPC_FOOTER_SIZE];
    struct stat st;
    int r;

    if ((r = read_parent_footer(n->backing_full_name, f, &st)) < 0)
        return r;
    if (memcmp(f + VF_UUID, h + VH_PARENT_UUID, 16))
        return vd_error(EINVAL, "vpc: the parent '%s' is not the image '%s' was made from "
                        "(its UUID differs from the parent UUID in the child)",
                        n->backing_full_name, n->filename);
    if (vd_be64(f + VF_CUR_SIZE) > vd_be64(s->footer + VF_CUR_SIZE))
        return vd_error(EINVAL, "vpc: the parent '%s' (%llu bytes) is larger than its child "
                        "'%s' (%llu bytes)", n->backing_full_name,
                        (unsigned long long)vd_be64(f + VF_CUR_SIZE), n->filename,
                        (unsigned long long)vd_be64(s->footer + VF_CUR_SIZE));
    if ((uint32_t)(st.st_mtime - VPC_EPOCH) != vd_be32(h + VH_PARENT_TS))
        fprintf(stderr, "%s: warning: vpc: the parent '%s' was modified after '%s' was "
                "made (its time stamp differs from the child's record)\n",
                program_invocation_short_name, n->backing_full_name, n->filename);
    return 0;
}

/* Keep what info reports: the parent's UUID and Unicode name. */
static int keep_header_fields(vd_node *n, const uint8_t *h)
{
    struct vpc_state *s = n->state;

    memcpy(s->parent_uuid, h + VH_PARENT_UUID, 16);
    s->parent_name = utf16_to_utf8(h + VH_PARENT_NAME, VH_PARENT_NAME_LEN, true);
    if (!s->parent_name && !(s->parent_name = strdup("")))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* See vpc.h. */
int vpc_open_parent(vd_node *n, int flags)
{
    struct vpc_state *s = n->state;
    uint8_t h[VPC_HEADER_SIZE];
    struct candidates c = { .n = 0 };
    int r;

    if ((r = vpc_read_padded(n->file, s->header_offset, sizeof(h), h)) < 0)
        return vd_error_prefix(r, "Error reading dynamic VHD header");
    if ((r = collect(n, h, &c)) >= 0 && c.n > 0) {
        s->diff = true;
        if (s->bitmap_size == 0)
            r = vd_error(ENOTSUP, "vpc: differencing images with blocks of %u bytes (no "
                         "sector bitmap) are not supported", s->block_size);
        if (r >= 0)
            r = keep_header_fields(n, h);
        if (r >= 0)
            r = choose(n, &c, flags);
        if (r >= 0 && !(flags & VD_O_NO_BACKING))
            r = check_parent(n, h);
    }
    for (int i = 0; i < c.n; i++)
        free(c.name[i]);
    return r < 0 ? r : 0;
}

/* See vpc.h. */
int vpc_read_parent(vd_node *n, uint64_t off, uint64_t len, void *buf)
{
    int64_t bl = n->backing ? vd_getlength(n->backing) : 0;
    uint64_t l;

    if (bl < 0)
        return (int)bl;
    l = off >= (uint64_t)bl ? 0 : VD_MIN(len, (uint64_t)bl - off);
    memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(n->backing, off, l, buf, 0) : 0;
}
