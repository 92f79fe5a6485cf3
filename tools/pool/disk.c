/* SPDX-License-Identifier: BSD-3-Clause */
/* The disk pool backend: a partition table on a block device, driven by
 * parted as libvirt drives it.  Build writes the label (dos, gpt, and
 * parted's other labels), volumes are partitions placed in the smallest
 * free extent that fits (cylinder aligned on dos labels, logical ones
 * inside the extended partition once four slots are used), named as the
 * kernel names them (sda1, loop0p1).  The table is read from parted's
 * "unit B print free" listing, every number checked. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pool.h"

#define WIPE_BYTES (1024 * 1024)

#include "parted.h"

static int read_geometry(const char *dev, uint64_t *cyl, uint64_t *limit);

/* Run parted DEV unit B print free and read it into t; -1 (recorded). */
static int read_table(const char *dev, struct part_table *t)
{
    char *argv[] = { "parted", "-s", (char *)dev, "unit", "B", "print", "free", NULL };
    char *out = NULL;
    int r;

    if (pool_run(argv, &out) != 0) {
        free(out);
        return -1;
    }
    r = parted_parse_listing(out, t);
    free(out);
    if (r < 0) {
        pool_set_error("internal error: cannot parse the partition table of '%s'", dev);
        return -1;
    }
    if (read_geometry(dev, &t->cyl, &t->limit) < 0)
        return -1;
    if (!strcmp(t->label, "msdos"))
        parted_clamp_free(t);
    return 0;
}

/* Bytes per cylinder of dev's BIOS geometry (parted's "unit chs print"). */
static int read_geometry(const char *dev, uint64_t *cyl, uint64_t *limit)
{
    char *argv[] = { "parted", "-s", (char *)dev, "unit", "chs", "print", NULL };
    char *out = NULL;
    int r;

    if (pool_run(argv, &out) != 0) {
        free(out);
        return -1;
    }
    r = parted_parse_geometry(out, cyl, limit);
    free(out);
    if (r < 0)
        pool_set_error("internal error: Failed to create disk pool geometry");
    return r;
}

/* The label parted writes for pool format fmt. */
static const char *parted_label(const char *fmt)
{
    return !strcmp(fmt, "dos") || !strcmp(fmt, "unknown") ? "msdos" : fmt;
}

/* The format a label parted shows has in pool XML. */
static const char *pool_label(const char *label)
{
    return !strcmp(label, "msdos") ? "dos" : label;
}

/* The type blkid finds on dev: 0 with type ("" when none), -1 on error. */
static int probe(const char *dev, char **type)
{
    char *argv[] = { "blkid", "-p", "-o", "value", "-s", "PTTYPE", (char *)dev, NULL };
    char *argv2[] = { "blkid", "-p", "-o", "value", "-s", "TYPE", (char *)dev, NULL };
    char *out = NULL;
    int r = pool_run(argv, &out);
    size_t l;

    if (r == 0 && out[0] == 0) {
        free(out);
        out = NULL;
        r = pool_run(argv2, &out);
    }
    if (r == 2) {
        pool_set_error("%s", "");
        free(out);
        *type = xstrdup("");
        return 0;
    }
    if (r != 0) {
        free(out);
        return -1;
    }
    l = strlen(out);
    while (l && out[l - 1] == '\n')
        out[--l] = 0;
    *type = out;
    return 0;
}

/* libvirt's check of a device against the pool's format: for build
 * (writing) the device must be empty; for start it must hold the label. */
static int check_label(const char *dev, const char *fmt, bool writing)
{
    char *type;
    const char *want = parted_label(fmt);
    bool match;

    if (probe(dev, &type) < 0)
        return -1;
    match = !strcmp(pool_label(type), fmt) || !strcmp(type, want);
    if (!type[0] && writing) {
        free(type);
        return 0;
    }
    if (!type[0])
        pool_set_error("Storage pool probe failed: Device '%s' is unrecognized, requires "
                       "build", dev);
    else if (writing && match)
        pool_set_error("Storage pool already built: Device '%s' already formatted "
                       "using '%s'", dev, type);
    else if (writing)
        pool_set_error("Storage pool already built: Format of device '%s' does not match "
                       "the expected format '%s', forced overwrite is necessary", dev, fmt);
    else if (!match)
        pool_set_error("Requested operation is not valid: Format of device '%s' does not "
                       "match the expected format '%s'", dev, fmt);
    free(type);
    return !writing && match ? 0 : -1;
}

/* Zero the first and last MiB of dev, where old labels live. */
static int wipe_table(const char *dev)
{
    static char zero[WIPE_BYTES];
    int fd = open(dev, O_WRONLY | O_CLOEXEC);
    off_t size;
    int r = -1;

    if (fd < 0) {
        pool_set_error("cannot open device '%s': %s", dev, strerror(errno));
        return -1;
    }
    size = lseek(fd, 0, SEEK_END);
    if (size >= 0 && pwrite(fd, zero, size < WIPE_BYTES ? (size_t)size : WIPE_BYTES, 0) >= 0 &&
        (size <= WIPE_BYTES || pwrite(fd, zero, WIPE_BYTES, size - WIPE_BYTES) >= 0) &&
        fsync(fd) == 0)
        r = 0;
    if (r < 0)
        pool_set_error("cannot wipe device '%s': %s", dev, strerror(errno));
    close(fd);
    return r;
}

/* Is the source device there? */
static int check_device(const struct pool_def *d)
{
    if (access(d->src_device, F_OK) < 0) {
        pool_set_error("invalid argument: device path '%s' doesn't exist", d->src_device);
        return -1;
    }
    return 0;
}

int disk_build(struct pool_def *d, bool overwrite, bool no_overwrite)
{
    char *argv[] = { "parted", d->src_device, "mklabel", "--script", NULL, NULL };

    (void)no_overwrite;
    if (access(d->src_device, F_OK) < 0) {
        pool_set_error("Storage pool probe failed: Failed to create filesystem probe for "
                       "device %s", d->src_device);
        return -1;
    }
    if (!overwrite && check_label(d->src_device, d->src_format, true) < 0)
        return -1;
    if (wipe_table(d->src_device) < 0)
        return -1;
    argv[4] = (char *)parted_label(d->src_format);
    return pool_run(argv, NULL) == 0 ? 0 : -1;
}

int disk_start(struct pool_def *d)
{
    if (!strcmp(d->src_format, "unknown")) {
        free(d->src_format);
        d->src_format = xstrdup("dos");
    }
    if (check_device(d) < 0 || check_label(d->src_device, d->src_format, false) < 0)
        return -1;
    return disk_refresh(d);
}

int disk_stop(struct pool_def *d)
{
    d->capacity = d->allocation = d->available = 0;
    free(d->free_ext);
    d->free_ext = NULL;
    d->n_free_ext = 0;
    return 0;
}

int disk_delete(struct pool_def *d)
{
    return wipe_table(d->src_device);
}

/* The device path of partition num of dev: dev + N, or dev + pN when the
 * device's name ends with a digit (as the kernel names them). */
static char *part_path(const char *dev, unsigned num)
{
    size_t l = strlen(dev);

    return xasprintf("%s%s%u", dev, l && isdigit((unsigned char)dev[l - 1]) ? "p" : "", num);
}

/* The size of the block device at path (0 if it cannot be opened). */
static uint64_t dev_size(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    off_t s = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;

    if (fd >= 0)
        close(fd);
    return s > 0 ? (uint64_t)s : 0;
}

/* The volume of partition p. */
static struct vol_def *part_vol(const struct pool_def *d, const struct part *p)
{
    struct vol_def *v = calloc(1, sizeof(*v));
    const char *base;

    if (!v)
        pool_oom();
    v->perms.mode = v->perms.owner = v->perms.group = -1;
    v->backing_perms.mode = v->backing_perms.owner = v->backing_perms.group = -1;
    v->path = part_path(d->src_device, p->num);
    base = strrchr(v->path, '/');
    v->name = xstrdup(base ? base + 1 : v->path);
    v->key = xstrdup(v->path);
    v->type = "block";
    if (p->kind == PART_EXTENDED) {
        v->capacity = p->end - p->start;
        v->allocation = 0;
        /* as libvirt reads the table back: the partition type is not shown */
        v->format = xstrdup("none");
    } else {
        v->capacity = dev_size(v->path);
        v->allocation = v->capacity;
        v->format = xstrdup("none");
    }
    /* the node's own size (an extended partition's is the kernel's stub) */
    v->physical = p->kind == PART_EXTENDED ? dev_size(v->path) : v->allocation;
    vol_stat_block(v);
    vol_add_extent(v, d->src_device, p->start, p->end);
    return v;
}

/* Record a free extent in the live pool definition. */
static void add_free(struct pool_def *d, uint64_t start, uint64_t end)
{
    d->free_ext = realloc(d->free_ext, (d->n_free_ext + 1) * sizeof(*d->free_ext));
    if (!d->free_ext)
        pool_oom();
    d->free_ext[d->n_free_ext].start = start;
    d->free_ext[d->n_free_ext].end = end;
    d->n_free_ext++;
}

/* Volumes and sizes of the table t (d's sizes updated when given). */
static struct vol_def **table_vols(struct pool_def *d, const struct pool_def *cd,
                                   const struct part_table *t, size_t *n)
{
    struct vol_def **list = calloc(t->n + 1, sizeof(*list)), *ext = NULL;
    uint64_t cap = 0, alloc = 0, avail = 0;

    if (!list)
        pool_oom();
    *n = 0;
    if (d) {
        free(d->free_ext);
        d->free_ext = NULL;
        d->n_free_ext = 0;
    }
    for (size_t i = 0; i < t->n; i++) {
        const struct part *p = &t->p[i];
        uint64_t start = p->start ? p->start : PARTED_SECTOR;
        if (p->end > cap)
            cap = p->end;
        if (p->kind == PART_FREE || p->kind == PART_FREE_LOGICAL) {
            avail += p->end > start ? p->end - start : 0;
            if (d)
                add_free(d, start, p->end);
            continue;
        }
        list[*n] = part_vol(cd, p);
        if (p->kind == PART_EXTENDED)
            ext = list[*n];
        else
            alloc += list[*n]->allocation;
        if (p->kind == PART_LOGICAL && ext)
            ext->allocation += list[*n]->allocation;
        (*n)++;
    }
    if (d) {
        d->capacity = cap;
        d->allocation = alloc;
        d->available = avail;
    }
    return list;
}

int disk_refresh(struct pool_def *d)
{
    struct part_table t;
    struct vol_def **v;
    size_t n;

    if (check_device(d) < 0 || read_table(d->src_device, &t) < 0)
        return -1;
    v = table_vols(d, d, &t, &n);
    vols_free(v, n);
    return 0;
}

struct vol_def **disk_vols(const struct pool_def *d, size_t *n)
{
    struct part_table t;

    *n = 0;
    if (read_table(d->src_device, &t) < 0)
        return NULL;
    return table_vols(NULL, d, &t, n);
}

/* The kind of partition a new volume gets: logical once the four slots
 * of a dos label hold primaries and the extended one. */
static enum part_kind new_kind(const struct pool_def *d, const struct part_table *t)
{
    int used = 0;

    if (strcmp(d->src_format, "dos"))
        return PART_PRIMARY;
    for (size_t i = 0; i < t->n; i++)
        used += t->p[i].kind == PART_PRIMARY || t->p[i].kind == PART_EXTENDED;
    return used >= 4 ? PART_LOGICAL : PART_PRIMARY;
}

/* Does t have an extended partition? */
static bool has_extended(const struct part_table *t)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->p[i].kind == PART_EXTENDED)
            return true;
    return false;
}

/* parted's partition type argument ("primary ext2", "logical ...",
 * "extended", or "primary" on other labels); NULL (recorded) if none. */
static char *part_type(const struct pool_def *d, const struct vol_def *v,
                       const struct part_table *t, enum part_kind kind)
{
    static const char *const names[] = { "none", "linux", "fat16", "fat32", "linux-swap",
                                         "linux-lvm", "linux-raid", "extended", NULL };
    static const char *const fs[] = { "ext2", "ext2", "fat16", "fat32", "linux-swap",
                                      "ext2", "ext2", "extended" };
    const char *fmt = v->format ? v->format : "none", *p = NULL;

    if (strcmp(d->src_format, "dos"))
        return xstrdup("primary");
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], fmt))
            p = fs[i];
    if (!p) {
        pool_set_error("internal error: Invalid partition type");
        return NULL;
    }
    if (!strcmp(fmt, "extended")) {
        if (has_extended(t)) {
            pool_set_error("internal error: extended partition already exists");
            return NULL;
        }
        return xstrdup(p);
    }
    if (kind == PART_LOGICAL && !has_extended(t)) {
        pool_set_error("internal error: no extended partition found and no primary "
                       "partition available");
        return NULL;
    }
    return xasprintf("%s %s", kind == PART_LOGICAL ? "logical" : "primary", p);
}

/* Where the new partition goes: the smallest free extent of the right
 * kind that fits, with libvirt's cylinder rounding on dos labels. */
static int place(const struct pool_def *d, const struct part_table *t, enum part_kind kind,
                 uint64_t size, uint64_t *start, uint64_t *end)
{
    bool dos = !strcmp(d->src_format, "dos");
    uint64_t cyl = t->cyl ? t->cyl : PARTED_SECTOR, extra = cyl - size % cyl;
    uint64_t best = 0, need_best = 0;
    int hit = -1;

    for (size_t i = 0; i < t->n; i++) {
        const struct part *p = &t->p[i];
        uint64_t s = p->start ? p->start : PARTED_SECTOR, have, need = size;
        if ((p->kind != PART_FREE && p->kind != PART_FREE_LOGICAL) || p->end <= s)
            continue;
        have = p->end - s;
        if (dos) {
            if (need > UINT64_MAX - extra - cyl)
                continue;
            need += extra;
            if (s % cyl > extra)
                need += cyl;
            if (kind == PART_LOGICAL)
                have = have > PARTED_SECTOR ? have - PARTED_SECTOR : 0;
        }
        if (have <= need || (best && have >= best))
            continue;
        if ((kind == PART_LOGICAL) != (p->kind == PART_FREE_LOGICAL))
            continue;
        best = have;
        need_best = need;
        hit = (int)i;
    }
    if (hit < 0) {
        pool_set_error("internal error: no large enough free extent");
        return -1;
    }
    *start = t->p[hit].start ? t->p[hit].start : PARTED_SECTOR;
    if (kind == PART_LOGICAL)
        *start += PARTED_SECTOR;
    *end = *start + need_best;
    if (dos)
        *end -= *start % cyl;
    *end -= 1;
    return 0;
}

/* The partition of t that starts at start (after a mkpart), or NULL. */
static const struct part *find_new(const struct part_table *t, uint64_t start)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->p[i].kind != PART_FREE && t->p[i].kind != PART_FREE_LOGICAL &&
            t->p[i].start <= start && start < t->p[i].end && t->p[i].kind != PART_EXTENDED)
            return &t->p[i];
    for (size_t i = 0; i < t->n; i++)
        if (t->p[i].kind == PART_EXTENDED && t->p[i].start == start)
            return &t->p[i];
    return NULL;
}

/* parted DEV rm --script N. */
static int remove_part(const struct pool_def *d, unsigned num)
{
    char n[16], *argv[] = { "parted", d->src_device, "rm", "--script", n, NULL };

    snprintf(n, sizeof(n), "%u", num);
    return pool_run(argv, NULL) == 0 ? 0 : -1;
}

/* The mode libvirt gives a partition it copied into (0600 unless the
 * volume's XML says otherwise). */
static int chmod_new(const struct vol_def *v)
{
    mode_t mode = v->perms.mode >= 0 ? (mode_t)v->perms.mode : 0600;

    if (chmod(v->path, mode) < 0) {
        pool_set_error("cannot set mode of '%s' to %04o: %s", v->path, (unsigned)mode,
                       strerror(errno));
        return -1;
    }
    return 0;
}

int disk_vol_create(const struct pool_def *d, struct vol_def *v, bool prealloc_meta,
                    const struct vol_def *from)
{
    struct part_table t;
    enum part_kind kind;
    char *type, s[32], e[32];
    char *argv[] = { "parted", d->src_device, "mkpart", "--script", NULL, s, e, NULL };
    const struct part *p;
    uint64_t start, end;
    char *path, *name;
    int r;

    (void)prealloc_meta;           /* refused for copies by block_vol_check */
    if (read_table(d->src_device, &t) < 0)
        return -1;
    kind = new_kind(d, &t);
    if (!(type = part_type(d, v, &t, kind)))
        return -1;
    /* an encrypted partition gets room for its LUKS header */
    if (place(d, &t, kind, v->capacity + (v->enc_format ? LUKS_ROOM : 0), &start, &end) < 0) {
        free(type);
        return -1;
    }
    argv[4] = type;
    snprintf(s, sizeof(s), "%" PRIu64 "B", start);
    snprintf(e, sizeof(e), "%" PRIu64 "B", end);
    r = pool_run(argv, NULL);
    free(type);
    if (r != 0 || read_table(d->src_device, &t) < 0)
        return -1;
    if (!(p = find_new(&t, start))) {
        pool_set_error("internal error: the new partition is not in the table");
        return -1;
    }
    path = part_path(d->src_device, p->num);
    name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (strcmp(name, v->name)) {
        pool_set_error("invalid argument: invalid partition name '%s', expected '%s'",
                       v->name, name);
        remove_part(d, p->num);
        free(path);
        return -1;
    }
    free(v->path);
    v->path = path;
    v->type = "block";
    /* an encrypted one is formatted as LUKS, shown without the header's
     * room until a refresh, as libvirt does; a copy goes into the
     * partition as raw bytes (over that header too), which then gets
     * libvirt's default mode; the partition goes when a step fails */
    if (v->enc_format) {
        v->capacity = v->allocation = p->end - p->start - LUKS_ROOM;
        v->luks_room = LUKS_ROOM;
    }
    if ((v->enc_format && block_vol_luks(v, v->capacity) < 0) ||
        (from && (vol_copy_data(from, v) < 0 || chmod_new(v) < 0))) {
        block_vol_undo(disk_vol_delete, d, v);
        return -1;
    }
    return 0;
}

int disk_vol_delete(const struct pool_def *d, const struct vol_def *v)
{
    const char *base = strrchr(v->path, '/'), *src = strrchr(d->src_device, '/');
    const char *num;
    char *end;
    unsigned long n;

    base = base ? base + 1 : v->path;
    src = src ? src + 1 : d->src_device;
    if (strncmp(base, src, strlen(src))) {
        pool_set_error("internal error: Volume path '%s' did not start with parent pool "
                       "source device name.", base);
        return -1;
    }
    num = base + strlen(src);
    if (*num == 'p' && isdigit((unsigned char)src[strlen(src) - 1]))
        num++;
    n = strtoul(num, &end, 10);
    if (!*num || *end || n == 0 || n > 4096) {
        pool_set_error("internal error: cannot parse partition number from target '%s'",
                       base);
        return -1;
    }
    return remove_part(d, (unsigned)n);
}
