/* SPDX-License-Identifier: BSD-3-Clause */
/* vvfat: parse the FAT file system as the guest left it (FAT, root
 * directory, directory clusters) into a list of files and directories.
 * Everything here is guest data: chains are checked for range, loops and
 * cross-links, names for what a host name may hold, sizes against chains,
 * and the totals against the same caps as the scan.  Anything odd is an
 * error: the commit then refuses the change rather than guess. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format/vvfat/vvfat.h"
#include "format/vvfat/parse.h"
#include "util/checked.h"
#include "util/utf8.h"

/* Append an entry; returns its index or a negative error. */
static int64_t tree_add(struct vv_tree *t, const struct vv_entry *e)
{
    if (t->n >= VV_MAX_NODES)
        return vd_error(ENOSPC, "vvfat: more than %u files and directories", VV_MAX_NODES);
    if (t->n == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 64;
        struct vv_entry *p = realloc(t->e, (size_t)cap * sizeof(*p));
        if (!p)
            return vd_error(ENOMEM, "vvfat: out of memory");
        t->e = p;
        t->cap = cap;
    }
    t->e[t->n] = *e;
    return t->n++;
}

/* Is FAT value v an end-of-chain mark? */
static bool is_eoc(const struct vv_geom *g, uint32_t v)
{
    return g->fat_type == 12 ? v >= 0xff8 : g->fat_type == 16 ? v >= 0xfff8 : v >= 0x0ffffff8;
}

/* Walk the chain from first: its length into *count, clusters marked in
 * t->seen; a chain that leaves the disk, loops or meets another is an
 * error. */
static int walk_chain(struct vv_tree *t, const uint8_t *fat, uint32_t first, uint32_t *count)
{
    const struct vv_geom *g = &t->g;
    uint32_t c = first, n = 0;

    while (true) {
        if (c < 2 || c > g->cluster_count + 1)
            return vd_error(EINVAL, "vvfat: cluster chain from %" PRIu32 " reaches cluster %"
                            PRIu32 ", outside the disk", first, c);
        if (t->seen[c])
            return vd_error(EINVAL, "vvfat: cluster %" PRIu32 " belongs to two files (or "
                            "its chain loops)", c);
        t->seen[c] = 1;
        n++;
        uint32_t v = vv_fat_get(fat, g->fat_type, c);
        if (is_eoc(g, v))
            break;
        c = v;
    }
    *count = n;
    return 0;
}

/* The next cluster of c. */
static uint32_t next_cluster(const struct vv_tree *t, const uint8_t *fat, uint32_t c)
{
    return vv_fat_get(fat, t->g.fat_type, c);
}

/* Long-name parts collected before a short entry. */
struct lfn {
    uint16_t u[20 * 13];
    uint8_t sum;
    uint8_t total, expect;       /* parts in all, next ordinal expected */
    bool valid;
};

/* Take one long-name entry d into l. */
static void lfn_take(struct lfn *l, const uint8_t *d)
{
    static const uint8_t pos[13] = { 1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30 };
    uint8_t ord = d[0] & 0x1f;

    if (d[0] & 0x40) {
        l->valid = ord >= 1 && ord <= 20;
        l->total = ord;
        l->expect = ord;
        l->sum = d[13];
    }
    if (!l->valid || ord != l->expect || d[13] != l->sum) {
        l->valid = false;
        return;
    }
    for (int k = 0; k < 13; k++)
        l->u[(ord - 1) * 13 + k] = vv_le16(d + pos[k]);
    l->expect--;
}

/* UTF-8 of the long name in l; -EINVAL when it is not valid UTF-16. */
static int lfn_utf8(const struct lfn *l, char *out, size_t room)
{
    size_t o = 0, n = (size_t)l->total * 13;

    for (size_t i = 0; i < n && l->u[i]; i++) {
        uint32_t cp = l->u[i];
        if (cp >= 0xd800 && cp < 0xdc00) {
            if (i + 1 >= n || l->u[i + 1] < 0xdc00 || l->u[i + 1] >= 0xe000)
                return -EINVAL;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (l->u[++i] - 0xdc00);
        } else if (cp >= 0xdc00 && cp < 0xe000) {
            return -EINVAL;
        }
        if (o + 5 > room)
            return -EINVAL;
        o += vd_utf8_encode(cp, out + o);
    }
    out[o] = 0;
    return o ? 0 : -EINVAL;
}

/* The name of short entry d ("BASE.EXT", lower case where the entry's
 * case bits say). */
static void short_to_name(const uint8_t *d, char *out)
{
    size_t o = 0, bl = 8, el = 3;

    while (bl && d[bl - 1] == ' ')
        bl--;
    while (el && d[8 + el - 1] == ' ')
        el--;
    for (size_t i = 0; i < bl; i++) {
        uint8_t c = i == 0 && d[0] == 0x05 ? 0xe5 : d[i];
        out[o++] = (char)((d[12] & 0x08) && c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    if (el)
        out[o++] = '.';
    for (size_t i = 0; i < el; i++)
        out[o++] = (char)((d[12] & 0x10) && d[8 + i] >= 'A' && d[8 + i] <= 'Z' ? d[8 + i] + 32
                                                                               : d[8 + i]);
    out[o] = 0;
}

/* May name become a host file name? */
static bool host_name_ok(const char *name)
{
    const unsigned char *p = (const unsigned char *)name;
    size_t n = strlen(name);

    if (!n || !strcmp(name, ".") || !strcmp(name, ".."))
        return false;
    while (n) {
        int32_t cp;
        size_t l = vd_utf8_next(p, n, &cp);
        if (cp < 0x20 || cp == '/')
            return false;
        p += l;
        n -= l;
    }
    return true;
}

/* The name of the short entry d, from the long name before it when that
 * belongs to it. */
static int entry_name(const struct lfn *l, const uint8_t *d, char *out, size_t room)
{
    if (l->valid && l->expect == 0 && l->sum == vv_lfn_checksum(d)) {
        if (lfn_utf8(l, out, room) < 0)
            return vd_error(EINVAL, "vvfat: a long file name is not valid UTF-16");
    } else {
        short_to_name(d, out);
    }
    if (!host_name_ok(out))
        return vd_error(EINVAL, "vvfat: the file name '%s' cannot be a host file name", out);
    return 0;
}

/* qsort order of entry indices by name. */
static int cmp_entry(const void *a, const void *b, void *arg)
{
    const struct vv_tree *t = arg;

    return strcmp(t->e[*(const uint32_t *)a].name, t->e[*(const uint32_t *)b].name);
}

/* Refuse two entries of one name among entries [from, t->n). */
static int check_unique(const struct vv_tree *t, uint32_t from)
{
    uint32_t n = t->n - from, *idx = vd_calloc_array(n, sizeof(uint32_t));
    int r = 0;

    if (!idx)
        return vd_error(ENOMEM, "vvfat: out of memory");
    for (uint32_t i = 0; i < n; i++)
        idx[i] = from + i;
    qsort_r(idx, n, sizeof(*idx), cmp_entry, (void *)t);
    for (uint32_t i = 1; i < n && r == 0; i++)
        if (!strcmp(t->e[idx[i]].name, t->e[idx[i - 1]].name))
            r = vd_error(EINVAL, "vvfat: two entries named '%s' in one directory",
                         t->e[idx[i]].name);
    free(idx);
    return r;
}

/* Add the file or directory of short entry d in directory dir. */
static int add_entry(struct vv_tree *t, const uint8_t *fat, uint32_t dir, const uint8_t *d,
                     const char *name)
{
    struct vv_entry e = { 0 };
    uint32_t first = vv_le16(d + 26) | (t->g.fat_type == 32 ? (uint32_t)vv_le16(d + 20) << 16 : 0);
    int64_t idx;
    int r;

    e.parent = dir;
    e.is_dir = d[11] & 0x10;
    e.size = e.is_dir ? 0 : vv_le32(d + 28);
    e.first = first;
    e.mtime = vv_le16(d + 22);
    e.mdate = vv_le16(d + 24);
    if (first && (r = walk_chain(t, fat, first, &e.n_clusters)) < 0)
        return r;
    if (e.is_dir && !first)
        return vd_error(EINVAL, "vvfat: directory '%s' has no cluster", name);
    if (!e.is_dir && (uint64_t)e.n_clusters * t->g.cluster < e.size)
        return vd_error(EINVAL, "vvfat: file '%s' (%" PRIu32 " bytes) is longer than its "
                        "%" PRIu32 " clusters", name, e.size, e.n_clusters);
    if (!(e.name = strdup(name)))
        return vd_error(ENOMEM, "vvfat: out of memory");
    if ((idx = tree_add(t, &e)) < 0) {
        free(e.name);
        return (int)idx;
    }
    return 0;
}

/* Parse the n entries at buf, the contents of directory dir. */
static int parse_entries(struct vv_tree *t, const uint8_t *fat, uint32_t dir,
                         const uint8_t *buf, uint32_t n)
{
    struct lfn l = { .valid = false };
    uint32_t from = t->n;
    char name[20 * 13 * 4 + 16];
    int r;

    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *d = buf + (size_t)i * VV_DIRENT;
        if (d[0] == 0)
            break;
        if (d[0] == 0xe5) {
            l.valid = false;
            continue;
        }
        if (d[11] == 0x0f) {
            lfn_take(&l, d);
            continue;
        }
        if ((d[11] & 0x08) || (d[0] == '.' && (d[1] == ' ' || d[1] == '.'))) {
            l.valid = false;
            continue;                /* volume label, "." and ".." */
        }
        if ((r = entry_name(&l, d, name, sizeof(name))) < 0 ||
            (r = add_entry(t, fat, dir, d, name)) < 0)
            return r;
        l.valid = false;
    }
    return check_unique(t, from);
}

/* Read the clusters of directory entry i into its buffer and parse them. */
static int parse_dir(struct vv_tree *t, const uint8_t *fat, uint32_t i, vv_read_fn rd,
                     void *opaque)
{
    struct vv_entry *e = &t->e[i];
    uint64_t bytes = (uint64_t)e->n_clusters * t->g.cluster;
    uint32_t c = e->first;
    int r;

    if (bytes > (uint64_t)VV_MAX_DIR_ENTS * VV_DIRENT ||
        (t->meta_bytes += bytes) > VV_MAX_META)
        return vd_error(ENOSPC, "vvfat: directory '%s' is larger than FAT allows", e->name);
    if (!(e->dirbuf = malloc(bytes)))
        return vd_error(ENOMEM, "vvfat: out of memory");
    for (uint32_t k = 0; k < e->n_clusters; k++) {
        if ((r = rd(opaque, c, e->dirbuf + (size_t)k * t->g.cluster)) < 0)
            return r;
        c = next_cluster(t, fat, c);
    }
    return parse_entries(t, fat, i, e->dirbuf, (uint32_t)(bytes / VV_DIRENT));
}

/* See vvfat.h. */
int vv_parse_tree(const struct vv_geom *g, const uint8_t *fat, const uint8_t *root,
                  vv_read_fn rd, void *opaque, struct vv_tree **out)
{
    struct vv_tree *t = calloc(1, sizeof(*t));
    struct vv_entry top = { .is_dir = true };
    int r;

    *out = t;
    if (!t)
        return vd_error(ENOMEM, "vvfat: out of memory");
    t->g = *g;
    if (!(t->seen = calloc(g->cluster_count + 2, 1)) || !(top.name = strdup("")))
        return vd_error(ENOMEM, "vvfat: out of memory");
    if ((r = (int)tree_add(t, &top)) < 0) {
        free(top.name);
        return r;
    }
    if (g->root_entries)
        r = parse_entries(t, fat, 0, root, g->root_entries);
    else if ((r = walk_chain(t, fat, 2, &t->e[0].n_clusters)) == 0) {
        t->e[0].first = 2;         /* FAT32: the root's chain (boot sector) */
        r = parse_dir(t, fat, 0, rd, opaque);
    }
    if (r < 0)
        return r;
    for (uint32_t i = 1; i < t->n; i++) {
        uint32_t depth = 0;
        for (uint32_t p = i; p; p = t->e[p].parent)
            depth++;
        if (depth > VV_MAX_DEPTH)
            return vd_error(ELOOP, "vvfat: directories nested deeper than %u levels",
                            VV_MAX_DEPTH);
        if (t->e[i].is_dir && (r = parse_dir(t, fat, i, rd, opaque)) < 0)
            return r;
    }
    return 0;
}

/* See vvfat.h. */
void vv_tree_free(struct vv_tree *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < t->n; i++) {
        free(t->e[i].name);
        free(t->e[i].dirbuf);
    }
    free(t->e);
    free(t->seen);
    free(t);
}
