/* SPDX-License-Identifier: BSD-3-Clause */
/* The logical pool backend: an LVM volume group driven by the lvm2
 * commands, as libvirt drives them.  Build makes a PV of each source
 * device (after a blkid probe unless --overwrite) and the VG over them;
 * start and destroy activate and deactivate it; volumes are LVs (sparse
 * ones as snapshots with a virtual size, as libvirt makes them).  The
 * pool's and volumes' sizes come from vgs and lvs output, which is parsed
 * with every field checked. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pool.h"

#define LVS_FIELDS "lv_name,origin,uuid,devices,segtype,stripes,seg_size,vg_extent_size," \
    "size,lv_attr"
#define LVS_NFIELDS 10

/* A decimal byte count from lvs/vgs (--units b --nosuffix); -1 if bad. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;

    while (*s == ' ')
        s++;
    if (!*s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    *out = strtoull(s, &end, 10);
    while (*end == ' ')
        end++;
    return errno || *end ? -1 : 0;
}

/* Split line at sep into at most max fields (in place): the count. */
static size_t split(char *line, char sep, char **f, size_t max)
{
    size_t n = 0;

    while (n < max) {
        char *e = strchr(line, sep);
        f[n++] = line;
        if (!e)
            break;
        *e = 0;
        line = e + 1;
    }
    return n;
}

/* Drop leading and trailing blanks of s (in place). */
static char *trim(char *s)
{
    size_t l;

    while (*s == ' ' || *s == '\t')
        s++;
    l = strlen(s);
    while (l && (s[l - 1] == ' ' || s[l - 1] == '\t' || s[l - 1] == '\n'))
        s[--l] = 0;
    return s;
}

static bool pv_line(const char *l, char *pv, char *vg);

/* The "PV VG" pairs pvs lists (vgscan first, as libvirt does); malloc'd
 * text, NULL (error recorded) when pvs fails. */
static char *list_pvs(void)
{
    char *scan[] = { "vgscan", NULL };
    char *pvs[] = { "pvs", "--noheadings", "-o", "pv_name,vg_name", NULL };
    char *out = NULL;

    pool_run(scan, NULL);
    if (pool_run(pvs, &out) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* Does the VG exist, with (when the pool names devices) one of them as a
 * PV?  0, or -1 with libvirt's error. */
static int check_vg(const struct pool_def *d)
{
    char *out = list_pvs(), *save = NULL;
    bool vg = false, dev = d->n_src_devs == 0;

    if (!out)
        return -1;
    for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char pv[4096], name[4096];
        if (!pv_line(l, pv, name) || strcmp(name, d->src_name))
            continue;
        vg = true;
        for (size_t i = 0; i < d->n_src_devs; i++)
            dev |= !strcmp(d->src_devs[i], pv);
    }
    free(out);
    if (!vg) {
        pool_set_error("unsupported configuration: cannot find logical volume group name "
                       "'%s'", d->src_name);
        return -1;
    }
    if (!dev) {
        pool_set_error("unsupported configuration: cannot find any matching source devices "
                       "for logical volume group '%s'", d->src_name);
        return -1;
    }
    return 0;
}

/* vgchange -aly / -aln. */
static int set_active(const struct pool_def *d, bool on)
{
    char *argv[] = { "vgchange", on ? "-aly" : "-aln", d->src_name, NULL };

    return pool_run(argv, NULL) == 0 ? 0 : -1;
}

int lvm_start(struct pool_def *d)
{
    if (check_vg(d) < 0 || set_active(d, true) < 0)
        return -1;
    return lvm_refresh(d);
}

int lvm_stop(struct pool_def *d)
{
    if (set_active(d, false) < 0)
        return -1;
    d->capacity = d->allocation = d->available = 0;
    return 0;
}

/* Without --overwrite a device must carry no signature blkid knows. */
static int check_empty(const char *dev)
{
    char *argv[] = { "blkid", "-p", "-o", "value", "-s", "TYPE", (char *)dev, NULL };
    char *out = NULL;
    int r = pool_run(argv, &out);

    if (r == 2) {                  /* nothing found */
        pool_set_error("%s", "");
        free(out);
        return 0;
    }
    if (r == 0) {
        pool_set_error("Storage pool already built: Device '%s' already formatted "
                       "using '%s'", dev, trim(out));
    }
    free(out);
    return -1;
}

/* Zero the first MiB of dev (old labels and PV headers), then pvcreate. */
static int init_pv(const char *dev)
{
    char *argv[] = { "pvcreate", (char *)dev, NULL };
    static char zero[65536];
    FILE *f = fopen(dev, "r+e");
    bool ok = f != NULL;

    for (int i = 0; ok && i < 16; i++)
        ok = fwrite(zero, 1, sizeof(zero), f) == sizeof(zero);
    if (f && fclose(f) != 0)
        ok = false;
    if (!ok) {
        pool_set_error("cannot open device '%s': %s", dev, strerror(errno));
        return -1;
    }
    return pool_run(argv, NULL) == 0 ? 0 : -1;
}

/* pvremove of the first n source devices (after a failed build). */
static void undo_pvs(const struct pool_def *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *argv[] = { "pvremove", d->src_devs[i], NULL };
        pool_run(argv, NULL);
    }
}

int lvm_build(struct pool_def *d, bool overwrite, bool no_overwrite)
{
    char **argv;
    size_t i;
    int r;

    (void)no_overwrite;
    if (!d->n_src_devs) {
        pool_set_error("XML error: missing storage pool source device name");
        return -1;
    }
    for (i = 0; i < d->n_src_devs; i++) {
        struct stat st;
        if (stat(d->src_devs[i], &st) < 0) {
            pool_set_error("Storage pool probe failed: Failed to create filesystem probe "
                           "for device %s", d->src_devs[i]);
            break;
        }
        if ((!overwrite && check_empty(d->src_devs[i]) < 0) || init_pv(d->src_devs[i]) < 0)
            break;
    }
    if (i < d->n_src_devs) {
        undo_pvs(d, i);
        return -1;
    }
    argv = calloc(d->n_src_devs + 3, sizeof(*argv));
    if (!argv)
        pool_oom();
    argv[0] = "vgcreate";
    argv[1] = d->src_name;
    for (i = 0; i < d->n_src_devs; i++)
        argv[i + 2] = d->src_devs[i];
    r = pool_run(argv, NULL) == 0 ? 0 : -1;
    free(argv);
    if (r < 0) {
        /* keep vgcreate's error, not pvremove's */
        char *why = xstrdup(pool_error_text());
        undo_pvs(d, d->n_src_devs);
        pool_set_error("%s", why);
        free(why);
    }
    return r;
}

int lvm_delete(struct pool_def *d)
{
    char *argv[] = { "vgremove", "-f", d->src_name, NULL };

    if (pool_run(argv, NULL) != 0)
        return -1;
    for (size_t i = 0; i < d->n_src_devs; i++) {
        char *pv[] = { "pvremove", d->src_devs[i], NULL };
        if (pool_run(pv, NULL) != 0)
            return -1;
    }
    return 0;
}

int lvm_refresh(struct pool_def *d)
{
    char *argv[] = { "vgs", "--separator", ":", "--noheadings", "--units", "b",
                     "--unbuffered", "--nosuffix", "--options", "vg_size,vg_free",
                     d->src_name, NULL };
    char *out = NULL, *f[3];
    uint64_t size, avail;

    if (pool_run(argv, &out) != 0) {
        free(out);
        return -1;
    }
    if (split(trim(out), ':', f, 3) != 2 || parse_u64(f[0], &size) < 0 ||
        parse_u64(f[1], &avail) < 0 || avail > size) {
        pool_set_error("internal error: malformed volume group size output from vgs");
        free(out);
        return -1;
    }
    free(out);
    d->capacity = size;
    d->available = avail;
    d->allocation = size - avail;
    return 0;
}

/* The extents of one segment: devices "PV(first extent),..." over
 * stripes stripes of seg bytes in all, extents of ext bytes. */
static void add_extents(struct vol_def *v, char *devices, const char *stripes, uint64_t seg,
                        uint64_t ext)
{
    uint64_t n, first, len;
    char *save = NULL;

    if (parse_u64(stripes, &n) < 0 || n == 0 || n > 4096 || ext == 0)
        return;
    len = seg / n;
    for (char *p = strtok_r(trim(devices), ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        char *open = strrchr(p, '('), *end;
        if (!open || open == p)
            continue;
        errno = 0;
        first = strtoull(open + 1, &end, 10);
        if (errno || strcmp(end, ")") || first > UINT64_MAX / ext ||
            first * ext > UINT64_MAX - len)
            continue;
        *open = 0;
        vol_add_extent(v, p, first * ext, first * ext + len);
    }
}

/* The size of the block device at path; dflt when it cannot be read. */
static uint64_t block_size(const char *path, uint64_t dflt)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    off_t s = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;

    if (fd >= 0)
        close(fd);
    return s > 0 ? (uint64_t)s : dflt;
}

/* The volume of lvs line fields f, or NULL for lines libvirt leaves out:
 * thin pools, and LVs on no devices (thin volumes and their snapshots,
 * which libvirt 9.0's reading of lvs output does not match). */
static struct vol_def *lv_from(const struct pool_def *d, char **f)
{
    const char *name = trim(f[0]), *origin = trim(f[1]), *uuid = trim(f[2]);
    const char *attr = trim(f[9]), *devices = trim(f[3]);
    uint64_t size, seg, ext;
    struct vol_def *v;

    if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") ||
        !*uuid || !*devices || strlen(attr) < 5 || attr[0] == 't' ||
        parse_u64(f[8], &size) < 0 || parse_u64(f[6], &seg) < 0 ||
        parse_u64(f[7], &ext) < 0)
        return NULL;
    v = calloc(1, sizeof(*v));
    if (!v)
        pool_oom();
    v->perms.mode = v->perms.owner = v->perms.group = -1;
    v->backing_perms.mode = v->backing_perms.owner = v->backing_perms.group = -1;
    v->name = xstrdup(name);
    v->key = xstrdup(uuid);
    v->path = xasprintf("%s/%s", d->target_path, name);
    v->type = "block";
    /* a snapshot's (or a sparse volume's) space is its segment; an
     * ordinary LV is fully allocated; the size is the device's */
    v->allocation = *origin || attr[0] == 's' ? seg : size;
    v->capacity = v->physical = block_size(v->path, size);
    if (*origin && *origin != '[' && attr[0] != 'V') {
        struct stat st;
        v->backing_path = xasprintf("%s/%s", d->target_path, origin);
        if (stat(v->backing_path, &st) == 0) {
            /* the origin's node, shown in <backingStore> as libvirt does */
            v->backing_stat = true;
            v->backing_perms.mode = st.st_mode & 07777;
            v->backing_perms.owner = st.st_uid;
            v->backing_perms.group = st.st_gid;
            v->batime = st.st_atim;
            v->bmtime = st.st_mtim;
            v->bctime = st.st_ctim;
        }
    }
    vol_stat_block(v);
    add_extents(v, f[3], f[5], seg, ext);
    return v;
}

/* Is v already in list (an LV with more than one segment)? */
static struct vol_def *find_vol(struct vol_def **list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i]->name, name))
            return list[i];
    return NULL;
}

/* qsort by volume name. */
static int vol_cmp(const void *a, const void *b)
{
    return strcmp((*(struct vol_def *const *)a)->name, (*(struct vol_def *const *)b)->name);
}

struct vol_def **lvm_vols(const struct pool_def *d, size_t *n)
{
    char *argv[] = { "lvs", "--separator", "#", "--noheadings", "--units", "b",
                     "--unbuffered", "--nosuffix", "--options", LVS_FIELDS,
                     d->src_name, NULL };
    char *out = NULL, *save = NULL;
    struct vol_def **list = NULL;

    *n = 0;
    if (pool_run(argv, &out) != 0) {
        free(out);
        return NULL;
    }
    for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char *f[LVS_NFIELDS];
        struct vol_def *v, *had;
        if (split(l, '#', f, LVS_NFIELDS) != LVS_NFIELDS || !(v = lv_from(d, f)))
            continue;
        if ((had = find_vol(list, *n, v->name))) {
            /* a further segment of the same LV: its extents */
            for (size_t i = 0; i < v->n_extents; i++)
                vol_add_extent(had, v->extents[i].dev, v->extents[i].start,
                               v->extents[i].end);
            vol_def_free(v);
            continue;
        }
        list = realloc(list, (*n + 1) * sizeof(*list));
        if (!list)
            pool_oom();
        list[(*n)++] = v;
    }
    free(out);
    if (*n)
        qsort(list, *n, sizeof(*list), vol_cmp);
    return list;
}

/* Give the new LV's node the volume's permissions (mode 0600 unless the
 * XML says otherwise), as libvirt does after lvcreate. */
static int set_perms(const struct pool_def *d, const struct vol_def *v)
{
    char *path = xasprintf("%s/%s", d->target_path, v->name);
    mode_t mode = v->perms.mode >= 0 ? (mode_t)v->perms.mode : 0600;
    int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

    if (fd < 0) {
        pool_set_error("cannot open volume '%s': %s", path, strerror(errno));
        free(path);
        return -1;
    }
    if ((v->perms.owner >= 0 || v->perms.group >= 0) &&
        fchown(fd, (uid_t)v->perms.owner, (gid_t)v->perms.group) < 0) {
        pool_set_error("cannot set file owner '%ld:%ld' for volume '%s': %s", v->perms.owner,
                       v->perms.group, path, strerror(errno));
        r = -1;
    } else if (fchmod(fd, mode) < 0) {
        pool_set_error("cannot set file mode '%s': %s", path, strerror(errno));
        r = -1;
    }
    close(fd);
    free(path);
    return r;
}

/* "NK": bytes rounded up to KiB, as libvirt passes sizes to lvcreate. */
static char *kib(uint64_t bytes)
{
    return xasprintf("%" PRIu64 "K", bytes / 1024 + (bytes % 1024 != 0));
}

/* lvremove of VG/NAME. */
static int remove_lv(const struct pool_def *d, const char *name)
{
    char *path = xasprintf("%s/%s", d->src_name, name);
    char *argv[] = { "lvremove", "-f", path, NULL };
    int r = pool_run(argv, NULL) == 0 ? 0 : -1;

    free(path);
    return r;
}

/* lvcreate of v: capacity bytes, or a sparse volume (a snapshot of a
 * virtual origin, as libvirt makes them) when its allocation differs;
 * an encrypted one gets room for its LUKS header as well. */
static int make_lv(const struct pool_def *d, const struct vol_def *v)
{
    char *cap = kib(v->capacity + (v->enc_format ? LUKS_ROOM : 0)), *alloc = NULL, *argv[16];
    int i = 0, r;

    argv[i++] = "lvcreate";
    argv[i++] = "--name";
    argv[i++] = v->name;
    argv[i++] = "-L";
    if (v->has_allocation && v->allocation != v->capacity) {
        alloc = kib(v->allocation ? v->allocation : 1);
        argv[i++] = alloc;
        argv[i++] = "--type";
        argv[i++] = "snapshot";
        argv[i++] = "--virtualsize";
    }
    argv[i++] = cap;
    argv[i++] = d->src_name;
    argv[i++] = "--yes";
    argv[i] = NULL;
    r = pool_run(argv, NULL) == 0 ? 0 : -1;
    free(cap);
    free(alloc);
    return r;
}

int lvm_vol_create(const struct pool_def *d, struct vol_def *v, bool prealloc_meta,
                   const struct vol_def *from)
{
    (void)prealloc_meta;           /* refused for copies by block_vol_check */
    if (v->backing_path) {
        pool_set_error("this function is not supported by the connection driver: "
                       "logical volumes are copied and snapshotted by lvm only");
        return -1;
    }
    free(v->path);
    v->path = xasprintf("%s/%s", d->target_path, v->name);
    v->type = "block";
    if (make_lv(d, v) < 0)
        return -1;
    /* an encrypted LV is formatted as LUKS over all of it; a copy then
     * goes into the LV as raw bytes, as libvirt writes it (over that
     * header too); the LV goes again when a step fails */
    if ((v->enc_format && block_vol_luks(v, v->capacity) < 0) || set_perms(d, v) < 0 ||
        (from && vol_copy_data(from, v) < 0)) {
        block_vol_undo(lvm_vol_delete, d, v);
        return -1;
    }
    return 0;
}

int lvm_vol_delete(const struct pool_def *d, const struct vol_def *v)
{
    return remove_lv(d, v->name);
}

/* Append text to *x. */
static void add(char **x, const char *fmt, const char *a)
{
    char *line = xasprintf(fmt, a), *n = xasprintf("%s%s", *x, line);

    free(line);
    free(*x);
    *x = n;
}

/* One "PV VG" line of pvs into pv and vg (each under 4096 bytes); false
 * for PVs in no VG and malformed lines. */
static bool pv_line(const char *l, char *pv, char *vg)
{
    return strlen(l) < 4096 && sscanf(l, " %4095s %4095s", pv, vg) == 2;
}

/* The <device> lines of every PV of vg in the pvs output. */
static void add_pvs(char **x, const char *out, const char *vg)
{
    char *copy = xstrdup(out), *save = NULL, pv[4096], name[4096];

    for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        if (pv_line(l, pv, name) && !strcmp(name, vg))
            add(x, "    <device path='%s'/>\n", pv);
    free(copy);
}

char *lvm_find_sources(void)
{
    char *out = list_pvs(), *copy, *save = NULL, *x, *seen, pv[4096], vg[4096];

    if (!out)
        return NULL;
    x = xstrdup("<sources>\n");
    seen = xstrdup("\n");
    copy = xstrdup(out);
    /* one <source> per VG, in the order pvs first names it */
    for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char *key;
        if (!pv_line(l, pv, vg))
            continue;
        key = xasprintf("\n%s\n", vg);
        if (!strstr(seen, key)) {
            add(&seen, "%s\n", vg);
            add(&x, "%s", "  <source>\n");
            add_pvs(&x, out, vg);
            add(&x, "    <name>%s</name>\n", vg);
            add(&x, "%s", "    <format type='lvm2'/>\n  </source>\n");
        }
        free(key);
    }
    add(&x, "%s", "</sources>\n");
    free(copy);
    free(seen);
    free(out);
    return x;
}
