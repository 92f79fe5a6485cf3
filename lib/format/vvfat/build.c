/* SPDX-License-Identifier: BSD-3-Clause */
/* vvfat: scan the host directory once and lay out the FAT file system:
 * geometry and boot sectors as QEMU 7.2 picks them, a breadth-first node
 * list (children of a directory contiguous, names sorted), 8.3 names with
 * long-name entries, clusters handed out in node order, the FAT and the
 * directory clusters built in memory.  File data stays on the host.
 *
 * Bounds: at most VV_MAX_NODES nodes, VV_MAX_DIR_ENTS entries a directory,
 * VV_MAX_META bytes of directory clusters, VV_MAX_DEPTH levels; symbolic
 * links are followed only when they stay inside the directory. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "format/vvfat/journal.h"
#include "format/vvfat/vvfat.h"
#include "util/checked.h"
#include "util/utf8.h"

#define VV_VOLUME_ID 0xfabe1afdu

/* ---- geometry ---- */

/* QEMU's sizes: floppy 80/2/18 (FAT12) or 80/2/36; hard disk 64/16/63
 * (FAT12) or 1024/16/63 with the partition at sector 63.  FAT32 (hard
 * disk only: a floppy has too few clusters) gets 4 KiB clusters and 32
 * reserved sectors, where QEMU 7.2 writes a FAT16 boot sector. */
int vv_geom_init(struct vv_geom *g, int fat_type, bool floppy)
{
    uint32_t per_fat_sector, max;

    memset(g, 0, sizeof(*g));
    if (fat_type == 32 && floppy)
        return vd_error(ENOTSUP, "vvfat: a floppy is too small for FAT32");
    g->floppy = floppy;
    if (floppy) {
        g->secs = !fat_type || fat_type == 16 ? 36 : 18;
        g->fat_type = fat_type ? fat_type : 12;
        g->cyls = 80;
        g->heads = 2;
        g->media = 0xf0;
    } else {
        g->fat_type = fat_type ? fat_type : 16;
        g->cyls = g->fat_type == 12 ? 64 : 1024;
        g->heads = 16;
        g->secs = 63;
        g->part_start = 63;
        g->media = 0xf8;
    }
    g->spc = g->fat_type == 32 ? VV_SPC32 : VV_SPC;
    g->cluster = g->spc * VV_SECTOR;
    g->reserved = g->fat_type == 32 ? VV_RESERVED32 : 1;
    g->root_entries = g->fat_type == 32 ? 0 : VV_ROOT_ENTRIES;
    g->disk_sectors = g->cyls * g->heads * g->secs;
    g->sector_count = g->disk_sectors - g->part_start;
    per_fat_sector = 1 + g->cluster * 8 / (uint32_t)g->fat_type;
    g->spf = (g->sector_count + per_fat_sector) / per_fat_sector;
    g->root_start = g->reserved + 2 * g->spf;
    g->data_start = g->root_start + g->root_entries * VV_DIRENT / VV_SECTOR;
    g->cluster_count = (g->sector_count - g->data_start) / g->spc;
    /* the FAT must describe every cluster, and the count decides the type */
    g->cluster_count = VD_MIN(g->cluster_count, g->spf * VV_SECTOR * 8 / (uint32_t)g->fat_type - 2);
    max = g->fat_type == 12 ? 4084u : g->fat_type == 16 ? 65524u : 0x0ffffff5u;
    g->cluster_count = VD_MIN(g->cluster_count, max);
    return 0;
}

/* Cylinder/head/sector of sector lba (ff ff ff past the geometry). */
static void put_chs(uint8_t *p, uint32_t lba, const struct vv_geom *g)
{
    uint32_t sec = lba % g->secs, head = (lba / g->secs) % g->heads;
    uint32_t cyl = lba / g->secs / g->heads;

    if (cyl >= g->cyls) {
        p[0] = p[1] = p[2] = 0xff;
        return;
    }
    p[0] = (uint8_t)head;
    p[1] = (uint8_t)((sec + 1) | ((cyl >> 8) << 6));
    p[2] = (uint8_t)cyl;
}

/* The partition table: one bootable FAT partition from sector 63. */
static void build_mbr(struct vv_state *s)
{
    const struct vv_geom *g = &s->g;
    uint8_t *pe = s->mbr + 0x1be;

    memset(s->mbr, 0, sizeof(s->mbr));
    if (g->floppy)
        return;
    vv_put32(s->mbr + 0x1b8, 0xbe1afdfau);
    pe[0] = 0x80;
    put_chs(pe + 1, g->part_start, g);
    pe[4] = g->fat_type == 12 ? 0x01 : g->fat_type == 16 ? 0x06 : 0x0b;
    put_chs(pe + 5, g->disk_sectors - 1, g);
    vv_put32(pe + 8, g->part_start);
    vv_put32(pe + 12, g->sector_count);
    s->mbr[510] = 0x55;
    s->mbr[511] = 0xaa;
}

/* The extended boot record fields at b: drive, signature, id, label, type. */
static void put_ebr(struct vv_state *s, uint8_t *b, const char *type)
{
    b[0] = s->g.floppy ? 0 : 0x80;
    b[2] = 0x29;
    vv_put32(b + 3, VV_VOLUME_ID);
    memcpy(b + 7, s->label, 11);
    memcpy(b + 18, type, 8);
}

/* The FAT32 fields: FAT size, root cluster 2, FSInfo at sector 1, backup
 * boot sector at 6; and the FSInfo sector (free count, next free). */
static void build_fat32(struct vv_state *s, uint8_t *b)
{
    uint8_t *f = s->fsinfo;

    vv_put32(b + 36, s->g.spf);
    vv_put32(b + 44, 2);
    vv_put16(b + 48, 1);
    vv_put16(b + 50, 6);
    put_ebr(s, b + 64, "FAT32   ");
    memset(f, 0, VV_SECTOR);
    vv_put32(f, 0x41615252u);
    vv_put32(f + 484, 0x61417272u);
    uint64_t used = 0;
    for (uint32_t i = 0; i < s->n_nodes; i++)
        used += s->nodes[i].n_clusters;
    vv_put32(f + 488, (uint32_t)(s->g.cluster_count - used));   /* clusters go in order */
    vv_put32(f + 492, (uint32_t)(2 + used));
    memcpy(s->fsinfo2, f, VV_SECTOR);
    vv_put32(f + 508, 0xaa550000u);
}

/* The FAT boot sector (BPB with the extended FAT12/16 or FAT32 fields). */
static void build_boot(struct vv_state *s)
{
    const struct vv_geom *g = &s->g;
    uint8_t *b = s->boot;
    bool small = g->sector_count <= 0xffff && g->fat_type != 32;

    memset(b, 0, VV_SECTOR);
    memcpy(b, "\xeb\x3e\x90" "MSWIN4.1", 11);
    if (g->fat_type == 32)
        b[1] = 0x58;              /* jump past the longer FAT32 fields */
    vv_put16(b + 11, VV_SECTOR);
    b[13] = (uint8_t)g->spc;
    vv_put16(b + 14, (uint16_t)g->reserved);
    b[16] = 2;
    vv_put16(b + 17, (uint16_t)g->root_entries);
    vv_put16(b + 19, small ? (uint16_t)g->sector_count : 0);
    b[21] = g->media;
    vv_put16(b + 22, g->fat_type == 32 ? 0 : (uint16_t)g->spf);
    vv_put16(b + 24, (uint16_t)g->secs);
    vv_put16(b + 26, (uint16_t)g->heads);
    vv_put32(b + 28, g->part_start);
    vv_put32(b + 32, small ? 0 : g->sector_count);
    if (g->fat_type == 32)
        build_fat32(s, b);
    else
        put_ebr(s, b + 36, g->fat_type == 12 ? "FAT12   " : "FAT16   ");
    b[510] = 0x55;
    b[511] = 0xaa;
}

/* ---- FAT entries ---- */

/* Set FAT entry c to v. */
void vv_fat_set(uint8_t *fat, int fat_type, uint32_t c, uint32_t v)
{
    if (fat_type == 32) {        /* the top four bits are kept */
        vv_put32(fat + 4 * c, (vv_le32(fat + 4 * c) & 0xf0000000u) | (v & 0x0fffffffu));
        return;
    }
    if (fat_type == 16) {
        vv_put16(fat + 2 * c, (uint16_t)v);
        return;
    }
    uint8_t *p = fat + c * 3 / 2;
    if (c & 1) {
        p[0] = (uint8_t)((p[0] & 0x0f) | ((v & 0x0f) << 4));
        p[1] = (uint8_t)(v >> 4);
    } else {
        p[0] = (uint8_t)v;
        p[1] = (uint8_t)((p[1] & 0xf0) | ((v >> 8) & 0x0f));
    }
}

/* FAT entry c. */
uint32_t vv_fat_get(const uint8_t *fat, int fat_type, uint32_t c)
{
    if (fat_type == 32)
        return vv_le32(fat + 4 * c) & 0x0fffffffu;
    if (fat_type == 16)
        return vv_le16(fat + 2 * c);
    const uint8_t *p = fat + c * 3 / 2;
    uint32_t v = p[0] | (uint32_t)p[1] << 8;
    return c & 1 ? v >> 4 : v & 0xfff;
}

/* ---- scanning ---- */

/* Append a node; -ENOSPC past the node cap. */
static int add_node(struct vv_state *s, struct vv_node *nd)
{
    if (s->n_nodes >= VV_MAX_NODES)
        return vd_error(ENOSPC, "vvfat: more than %u files and directories in '%s'",
                        VV_MAX_NODES, s->dir);
    if (s->n_nodes == s->cap_nodes) {
        uint32_t cap = s->cap_nodes ? s->cap_nodes * 2 : 64;
        struct vv_node *p = realloc(s->nodes, (size_t)cap * sizeof(*p));
        if (!p)
            return vd_error(ENOMEM, "vvfat: out of memory");
        s->nodes = p;
        s->cap_nodes = cap;
    }
    s->nodes[s->n_nodes++] = *nd;
    return 0;
}

/* Is path (already resolved) the root or inside it? */
static bool inside_root(const struct vv_state *s, const char *real)
{
    size_t l = strlen(s->root_real);

    if (strncmp(real, s->root_real, l))
        return false;
    return real[l] == 0 || real[l] == '/' || (l == 1 && s->root_real[0] == '/');
}

/* Print a warning about a skipped entry (the scan goes on). */
static void warn_skip(const char *path, const char *why)
{
    fprintf(stderr, "%s: warning: vvfat: skipping '%s': %s\n",
            program_invocation_short_name, path, why);
}

/* Is directory (dev, ino) one of the ancestors of node p (or p)? */
static bool is_ancestor(const struct vv_state *s, uint32_t p, const struct stat *st)
{
    for (;;) {
        const struct vv_node *a = &s->nodes[p];
        if (a->dev == st->st_dev && a->ino == st->st_ino)
            return true;
        if (p == 0)
            return false;
        p = a->parent;
    }
}

/* Does name hold only characters a long name may hold, in valid UTF-8? */
static bool name_fits(const char *name)
{
    const unsigned char *p = (const unsigned char *)name;
    size_t n = strlen(name), units = 0;

    while (n) {
        int32_t cp;
        size_t l = vd_utf8_next(p, n, &cp);
        if (cp < 0x20 || strchr("\"*/:<>?\\|", cp < 0x80 ? (int)cp : 'a'))
            return false;
        units += cp > 0xffff ? 2 : 1;
        p += l;
        n -= l;
    }
    return units >= 1 && units <= 255;
}

/* stat the entry name of directory node p into st; false (with a warning)
 * when it is to be skipped. */
static bool stat_child(struct vv_state *s, uint32_t p, const char *path, struct stat *st)
{
    char *real;
    bool ok;

    if (lstat(path, st) < 0) {
        warn_skip(path, strerror(errno));
        return false;
    }
    if (S_ISLNK(st->st_mode)) {
        real = realpath(path, NULL);
        ok = real && inside_root(s, real);
        free(real);
        if (!ok || stat(path, st) < 0) {
            warn_skip(path, "symbolic link that leads out of the directory or nowhere");
            return false;
        }
    }
    if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode)) {
        warn_skip(path, "neither a regular file nor a directory");
        return false;
    }
    if (S_ISDIR(st->st_mode) && is_ancestor(s, p, st)) {
        warn_skip(path, "directory loop");
        return false;
    }
    return true;
}

/* Add the child name of directory node p. */
static int add_child(struct vv_state *s, uint32_t p, const char *name)
{
    struct vv_node nd = { 0 };
    struct stat st;
    int r = 0;

    if (p == 0 && vv_journal_name(name))
        return 0;                  /* a commit's, not the guest's */
    if (!name_fits(name)) {
        warn_skip(name, "the name cannot be stored in a FAT long name");
        return 0;
    }
    if (asprintf(&nd.path, "%s/%s", s->nodes[p].path, name) < 0)
        return vd_error(ENOMEM, "vvfat: out of memory");
    if (strlen(nd.path) >= PATH_MAX || !stat_child(s, p, nd.path, &st)) {
        if (strlen(nd.path) >= PATH_MAX)
            warn_skip(name, "path too long");
        free(nd.path);
        return 0;
    }
    nd.name = strdup(name);
    nd.parent = p;
    nd.is_dir = S_ISDIR(st.st_mode);
    nd.size = nd.is_dir ? 0 : (uint64_t)st.st_size;
    nd.mtime = st.st_mtime;
    nd.atime = st.st_atime;
    nd.ctime = st.st_ctime;
    nd.dev = st.st_dev;
    nd.ino = st.st_ino;
    if (!nd.name || (r = add_node(s, &nd)) < 0) {
        free(nd.name);
        free(nd.path);
        return nd.name ? r : vd_error(ENOMEM, "vvfat: out of memory");
    }
    return 0;
}

/* qsort order of names. */
static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read the names of directory path (sorted) into *names. */
static int read_names(const char *path, char ***names, size_t *count)
{
    DIR *d = opendir(path);
    struct dirent *e;
    size_t n = 0, cap = 0;
    char **v = NULL;
    int r = 0;

    *names = NULL;
    *count = 0;
    if (!d)
        return vd_error(errno, "Could not read directory %s", path);
    while (r == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (n >= VV_MAX_DIR_ENTS) {
            r = vd_error(ENOSPC, "vvfat: directory '%s' has more than %u entries", path,
                         VV_MAX_DIR_ENTS);
            break;
        }
        if (n == cap) {
            char **t = realloc(v, (cap = cap ? cap * 2 : 32) * sizeof(*v));
            if (!t) {
                r = vd_error(ENOMEM, "vvfat: out of memory");
                break;
            }
            v = t;
        }
        if (!(v[n] = strdup(e->d_name)))
            r = vd_error(ENOMEM, "vvfat: out of memory");
        else
            n++;
    }
    closedir(d);
    if (n)
        qsort(v, n, sizeof(*v), cmp_names);
    *names = v;
    *count = n;
    return r;
}

/* Depth of node i below the root. */
static uint32_t node_depth(const struct vv_state *s, uint32_t i)
{
    uint32_t d = 0;

    for (; i; i = s->nodes[i].parent)
        d++;
    return d;
}

/* Add the children of directory node i. */
static int scan_dir(struct vv_state *s, uint32_t i)
{
    char **names;
    size_t count;
    int r;

    if (node_depth(s, i) >= VV_MAX_DEPTH)
        return vd_error(ELOOP, "vvfat: directory tree deeper than %u levels at '%s'",
                        VV_MAX_DEPTH, s->nodes[i].path);
    r = read_names(s->nodes[i].path, &names, &count);
    s->nodes[i].first_child = s->n_nodes;
    for (size_t k = 0; r == 0 && k < count; k++)
        r = add_child(s, i, names[k]);
    s->nodes[i].n_children = s->n_nodes - s->nodes[i].first_child;
    for (size_t k = 0; k < count; k++)
        free(names[k]);
    free(names);
    return r;
}

/* The root node and breadth-first scan of the tree. */
static int scan_tree(struct vv_state *s)
{
    struct vv_node root = { 0 };
    struct stat st;
    int r = 0;

    if (stat(s->dir, &st) < 0 || !S_ISDIR(st.st_mode) || !(s->root_real = realpath(s->dir, NULL)))
        return vd_error(ENOTDIR, "Could not read directory %s", s->dir);
    root.name = strdup("");
    root.path = strdup(s->dir);
    root.is_dir = true;
    root.dev = st.st_dev;
    root.ino = st.st_ino;
    root.mtime = st.st_mtime;
    if (!root.name || !root.path || (r = add_node(s, &root)) < 0) {
        free(root.name);
        free(root.path);
        return vd_error(ENOMEM, "vvfat: out of memory");
    }
    for (uint32_t i = 0; i < s->n_nodes; i++)
        if (s->nodes[i].is_dir && (r = scan_dir(s, i)) < 0)
            return r;
    return 0;
}

/* ---- short names ---- */

/* May c stand in a short name as it is? */
static bool short_char_ok(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c && strchr("!#$%&'()-@^_`{}~", c));
}

/* Upper-case c, or '_' for a character a short name cannot hold. */
static char short_char(unsigned char c, bool *lossy)
{
    if (short_char_ok(c))
        return (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    *lossy = true;
    return '_';
}

/* The basis of the short name of name: base (up to 8) and extension (up
 * to 3), space padded; *exact when the name is its own short name, *lossy
 * when characters were dropped or replaced. */
static void short_basis(const char *name, uint8_t out[11], size_t *base_len, bool *exact,
                        bool *lossy)
{
    const char *n = name, *dot;
    size_t bl = 0, el = 0;

    *lossy = false;
    memset(out, ' ', 11);
    while (*n == '.' || *n == ' ')
        n++, *lossy = true;
    dot = strrchr(n, '.');
    for (const char *p = n; *p && p != dot; p++) {
        if (*p == ' ' || *p == '.') {
            *lossy = true;
            continue;
        }
        if (bl < 8)
            out[bl++] = (uint8_t)short_char((unsigned char)*p, lossy);
        else
            *lossy = true;
    }
    for (const char *p = dot ? dot + 1 : ""; *p; p++) {
        if (*p == ' ') {
            *lossy = true;
            continue;
        }
        if (el < 3)
            out[8 + el++] = (uint8_t)short_char((unsigned char)*p, lossy);
        else
            *lossy = true;
    }
    if (bl == 0) {
        out[bl++] = '_';
        *lossy = true;
    }
    *base_len = bl;
    *exact = !*lossy;
    for (const char *p = name; *exact && *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *exact = false;
}

/* Open-addressing set of the short names of one directory. */
struct name_set {
    uint8_t (*names)[11];
    bool *used;
    uint32_t mask;
};

/* Hash of a short name. */
static uint32_t name_hash(const uint8_t n[11])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 11; i++)
        h = (h ^ n[i]) * 16777619u;
    return h;
}

/* Insert n; false when it is already there. */
static bool set_insert(struct name_set *ns, const uint8_t n[11])
{
    for (uint32_t h = name_hash(n) & ns->mask;; h = (h + 1) & ns->mask) {
        if (!ns->used[h]) {
            ns->used[h] = true;
            memcpy(ns->names[h], n, 11);
            return true;
        }
        if (!memcmp(ns->names[h], n, 11))
            return false;
    }
}

/* Put "~num" into the base of sn (base_len characters long). */
static void put_tail(uint8_t sn[11], size_t base_len, uint32_t num)
{
    char tail[12];
    int tl = snprintf(tail, sizeof(tail), "~%" PRIu32, num);
    size_t keep = VD_MIN(base_len, (size_t)(8 - tl));

    memset(sn + keep, ' ', 8 - keep);
    memcpy(sn + keep, tail, (size_t)tl);
}

/* Give the children of directory node d unique short names. */
static int assign_short_names(struct vv_state *s, uint32_t d)
{
    struct vv_node *dir = &s->nodes[d];
    struct name_set ns;
    uint32_t size = 64, next_num = 1;
    uint8_t last_basis[11] = { 0 };

    while (size < dir->n_children * 2 + 8)
        size *= 2;
    ns.mask = size - 1;
    ns.names = calloc(size, 11);
    ns.used = calloc(size, 1);
    if (!ns.names || !ns.used) {
        free(ns.names);
        free(ns.used);
        return vd_error(ENOMEM, "vvfat: out of memory");
    }
    set_insert(&ns, (const uint8_t *)".          ");
    set_insert(&ns, (const uint8_t *)"..         ");
    for (uint32_t k = 0; k < dir->n_children; k++) {
        struct vv_node *c = &s->nodes[dir->first_child + k];
        uint8_t basis[11];
        size_t bl;
        bool exact, lossy;

        short_basis(c->name, basis, &bl, &exact, &lossy);
        memcpy(c->short_name, basis, 11);
        c->need_lfn = !exact;
        if (!lossy && set_insert(&ns, c->short_name))
            continue;
        c->need_lfn = true;
        if (memcmp(basis, last_basis, 11))
            next_num = 1;
        memcpy(last_basis, basis, 11);
        do
            put_tail(c->short_name, bl, next_num++);
        while (!set_insert(&ns, c->short_name) && next_num < 10000000);
    }
    free(ns.names);
    free(ns.used);
    return 0;
}

/* ---- long names and entries ---- */

/* UTF-16 units of name into u (room for 255); returns the count. */
static size_t to_utf16(const char *name, uint16_t *u)
{
    const unsigned char *p = (const unsigned char *)name;
    size_t n = strlen(name), k = 0;

    while (n && k < 255) {
        int32_t cp;
        size_t l = vd_utf8_next(p, n, &cp);
        if (cp > 0xffff && k + 2 <= 255) {
            u[k++] = (uint16_t)(0xd800 + ((cp - 0x10000) >> 10));
            u[k++] = (uint16_t)(0xdc00 + ((cp - 0x10000) & 0x3ff));
        } else if (cp >= 0 && cp <= 0xffff) {
            u[k++] = (uint16_t)cp;
        }
        p += l;
        n -= l;
    }
    return k;
}

/* Entries node c takes in its directory. */
static uint32_t entries_of(const struct vv_node *c)
{
    uint16_t u[255];

    return 1 + (c->need_lfn ? (uint32_t)div_round_up(to_utf16(c->name, u), 13) : 0);
}

/* Checksum of a short name, stored in its long-name entries. */
uint8_t vv_lfn_checksum(const uint8_t name[11])
{
    uint8_t sum = 0;

    for (int i = 0; i < 11; i++)
        sum = (uint8_t)(((sum & 1) << 7) + (sum >> 1) + name[i]);
    return sum;
}

/* Write the long-name entries of c at p; returns the bytes written. */
static size_t put_lfn(uint8_t *p, const struct vv_node *c)
{
    static const uint8_t pos[13] = { 1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30 };
    uint16_t u[255];
    size_t len = to_utf16(c->name, u), n = div_round_up(len, 13);
    uint8_t sum = vv_lfn_checksum(c->short_name);

    for (size_t e = 0; e < n; e++) {
        uint8_t *d = p + e * VV_DIRENT;
        size_t seq = n - e;          /* the last part comes first */
        memset(d, 0, VV_DIRENT);
        d[0] = (uint8_t)(seq | (e == 0 ? 0x40 : 0));
        d[11] = 0x0f;
        d[13] = sum;
        for (size_t k = 0; k < 13; k++) {
            size_t i = (seq - 1) * 13 + k;
            uint16_t v = i < len ? u[i] : i == len ? 0 : 0xffff;
            vv_put16(d + pos[k], v);
        }
    }
    return n * VV_DIRENT;
}

/* FAT time (tm_sec/2, min, hour) or date of t, clamped to 1980..2107. */
static uint16_t fat_stamp(time_t t, bool want_time)
{
    struct tm tm;

    if (!localtime_r(&t, &tm) || tm.tm_year < 80)
        return want_time ? 0 : (uint16_t)(1 | 1 << 5);
    if (tm.tm_year > 207)
        return want_time ? (uint16_t)(29 | 59 << 5 | 23 << 11) : (uint16_t)(31 | 12 << 5 | 127 << 9);
    if (want_time)
        return (uint16_t)(tm.tm_sec / 2 | tm.tm_min << 5 | tm.tm_hour << 11);
    return (uint16_t)(tm.tm_mday | (tm.tm_mon + 1) << 5 | (tm.tm_year - 80) << 9);
}

/* Write one short entry at p. */
static void put_short(uint8_t *p, const uint8_t name[11], uint8_t attr, const struct vv_node *c,
                      uint32_t cluster, uint32_t size)
{
    memset(p, 0, VV_DIRENT);
    memcpy(p, name, 11);
    p[11] = attr;
    vv_put16(p + 14, fat_stamp(c->ctime, true));
    vv_put16(p + 16, fat_stamp(c->ctime, false));
    vv_put16(p + 18, fat_stamp(c->atime, false));
    vv_put16(p + 22, fat_stamp(c->mtime, true));
    vv_put16(p + 24, fat_stamp(c->mtime, false));
    vv_put16(p + 20, (uint16_t)(cluster >> 16));
    vv_put16(p + 26, (uint16_t)cluster);
    vv_put32(p + 28, size);
}

/* Fill the entries of directory node d into buf. */
static void fill_dir(struct vv_state *s, uint32_t d, uint8_t *buf)
{
    const struct vv_node *dir = &s->nodes[d];
    uint8_t *p = buf;

    if (d == 0) {
        memset(p, 0, VV_DIRENT);   /* the label, without dates (as QEMU) */
        memcpy(p, s->label, 11);
        p[11] = 0x28;
        p += VV_DIRENT;
    } else {
        put_short(p, (const uint8_t *)".          ", 0x10, dir, dir->first_cluster, 0);
        put_short(p + VV_DIRENT, (const uint8_t *)"..         ", 0x10, dir,
                  dir->parent ? s->nodes[dir->parent].first_cluster : 0, 0);
        p += 2 * VV_DIRENT;
    }
    for (uint32_t k = 0; k < dir->n_children; k++) {
        const struct vv_node *c = &s->nodes[dir->first_child + k];
        if (c->need_lfn)
            p += put_lfn(p, c);
        put_short(p, c->short_name, c->is_dir ? 0x10 : 0x20, c, c->first_cluster,
                  c->is_dir ? 0 : (uint32_t)c->size);
        p += VV_DIRENT;
    }
}

/* ---- layout ---- */

/* Count the entries of each directory (checking the limits). */
static int count_entries(struct vv_state *s)
{
    for (uint32_t d = 0; d < s->n_nodes; d++) {
        struct vv_node *dir = &s->nodes[d];
        uint32_t n = d == 0 ? 1 : 2;
        int r;
        if (!dir->is_dir)
            continue;
        if ((r = assign_short_names(s, d)) < 0)
            return r;
        for (uint32_t k = 0; k < dir->n_children; k++)
            n += entries_of(&s->nodes[dir->first_child + k]);
        if (d == 0 && s->g.root_entries && n > s->g.root_entries)
            return vd_error(ENOSPC, "Could not read directory %s: too many entries in the "
                            "root directory (%" PRIu32 ", at most %" PRIu32 ")", s->dir, n,
                            s->g.root_entries);
        if (n > VV_MAX_DIR_ENTS)
            return vd_error(ENOSPC, "vvfat: directory '%s' needs %" PRIu32 " entries, more "
                            "than FAT allows (%u)", dir->path, n, VV_MAX_DIR_ENTS);
        dir->n_entries = n;
    }
    return 0;
}

/* Hand out clusters in node order; checks the capacity and file sizes. */
static int allocate_clusters(struct vv_state *s)
{
    const struct vv_geom *g = &s->g;
    uint64_t next = 2, need;

    /* FAT32 keeps the root directory in clusters too (from cluster 2) */
    for (uint32_t i = g->root_entries ? 1 : 0; i < s->n_nodes; i++) {
        struct vv_node *c = &s->nodes[i];
        if (!c->is_dir && c->size > UINT32_MAX)
            return vd_error(EFBIG, "vvfat: file '%s' is larger than FAT allows (4 GiB - 1 "
                            "bytes)", c->path);
        need = c->is_dir ? div_round_up((uint64_t)c->n_entries * VV_DIRENT, g->cluster)
                         : div_round_up(c->size, g->cluster);
        if (next + need > (uint64_t)g->cluster_count + 2)
            return vd_error(ENOSPC, "Directory does not fit in FAT%d (capacity %.2f MB)",
                            g->fat_type, (double)g->sector_count / 2000.0);
        c->first_cluster = need ? (uint32_t)next : 0;
        c->n_clusters = (uint32_t)need;
        next += need;
        if (c->is_dir && (s->meta_bytes += need * g->cluster) > VV_MAX_META)
            return vd_error(ENOSPC, "vvfat: the directories of '%s' take more than %u MiB",
                            s->dir, VV_MAX_META >> 20);
    }
    return 0;
}

/* Build the FAT chains and the directory buffers; list the cluster owners. */
static int build_tables(struct vv_state *s)
{
    const struct vv_geom *g = &s->g;
    uint32_t eoc = g->fat_type == 12 ? 0xfff : g->fat_type == 16 ? 0xffff : 0x0fffffff;

    s->fat = calloc(g->spf, VV_SECTOR);
    s->root = calloc(g->root_entries ? g->root_entries : 1, VV_DIRENT);
    s->cl_node = vd_calloc_array(g->cluster_count + 2, sizeof(uint32_t));
    s->cl_pos = vd_calloc_array(g->cluster_count + 2, sizeof(uint32_t));
    if (!s->fat || !s->root || !s->cl_node || !s->cl_pos)
        return vd_error(ENOMEM, "vvfat: out of memory");
    vv_fat_set(s->fat, g->fat_type, 0, (eoc & ~0xffu) | g->media);
    vv_fat_set(s->fat, g->fat_type, 1, eoc);
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        struct vv_node *c = &s->nodes[i];
        for (uint32_t k = 0; k < c->n_clusters; k++) {
            vv_fat_set(s->fat, g->fat_type, c->first_cluster + k,
                       k + 1 < c->n_clusters ? c->first_cluster + k + 1 : eoc);
            s->cl_node[c->first_cluster + k] = i + 1;
            s->cl_pos[c->first_cluster + k] = k;
        }
        if ((i || !g->root_entries) && c->is_dir) {
            if (!(c->dirbuf = calloc(c->n_clusters, g->cluster)))
                return vd_error(ENOMEM, "vvfat: out of memory");
        }
    }
    for (uint32_t i = 0; i < s->n_nodes; i++)
        if (s->nodes[i].is_dir)
            fill_dir(s, i, s->nodes[i].dirbuf ? s->nodes[i].dirbuf : s->root);
    return 0;
}

/* Scan the directory and lay out the whole disk. */
int vv_build(struct vv_state *s)
{
    int r;

    if ((r = scan_tree(s)) < 0 || (r = count_entries(s)) < 0 ||
        (r = allocate_clusters(s)) < 0 || (r = build_tables(s)) < 0)
        return r;
    build_mbr(s);
    build_boot(s);
    return 0;
}

/* Free the tree and tables. */
void vv_free_tree(struct vv_state *s)
{
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        free(s->nodes[i].name);
        free(s->nodes[i].path);
        free(s->nodes[i].dirbuf);
    }
    free(s->nodes);
    free(s->fat);
    free(s->root);
    free(s->cl_node);
    free(s->cl_pos);
    s->cl_node = s->cl_pos = NULL;
    free(s->root_real);
    s->nodes = NULL;
    s->n_nodes = s->cap_nodes = 0;
}
