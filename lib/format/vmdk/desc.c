/* SPDX-License-Identifier: BSD-3-Clause */
/* The vmdk descriptor: the text that names the create type, the CIDs, the
 * parent hint and the extents.  Parsed as QEMU 7.2 parses it (the same
 * keys found the same way, the same extent line syntax and messages),
 * with bounds of vdisk's own: the text read is capped, a descriptor names
 * at most VMDK_MAX_EXTENTS extents, extents must be regular files, and a
 * sparse extent cannot redirect to another descriptor. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "vmdk.h"

#define PROC_MAGIC  0x9fa0
#define SYSFS_MAGIC 0x62656572

/* Read up to VMDK_DESC_MAX bytes of text at off (zeroes past the end of
 * the file), NUL-terminated; QEMU's "too small" check first. */
int vmdk_read_text(vd_node *f, uint64_t off, char **out)
{
    int64_t len = vd_getlength(f);
    uint64_t want, have;
    char *buf;
    int r;

    if (len < 0)
        return vd_error((int)-len, "Could not access file");
    if (len < 4)
        return vd_error(EINVAL, "File is too small, not a valid image");
    want = VD_MIN((uint64_t)len, (uint64_t)VMDK_DESC_MAX);
    if (!(buf = calloc(want + 1, 1)))
        return vd_error(ENOMEM, "out of memory");
    have = off >= (uint64_t)len ? 0 : VD_MIN(want, (uint64_t)len - off);
    if (have && (r = vd_pread(f, off, have, buf, 0)) < 0) {
        free(buf);
        return vd_error(-r, "Could not read from file");
    }
    *out = buf;
    return 0;
}

/* The quoted value after key=" (QEMU finds key anywhere in the text). */
int vmdk_desc_value(const char *desc, const char *key, char *buf, size_t size)
{
    const char *p = strstr(desc, key), *end = desc + strlen(desc), *q;

    if (!p || (size_t)(end - p) <= strlen(key) + 2)
        return -1;
    p += strlen(key) + 2;
    for (q = p; q < end && *q != '"'; q++)
        ;
    if (q == end || (size_t)(q - p) + 1 > size)
        return -1;
    memcpy(buf, p, (size_t)(q - p));
    buf[q - p] = 0;
    return 0;
}

/* QEMU's text probe: comment and blank lines, then "version=1..3". */
bool vmdk_probe_text(const uint8_t *buf, size_t len)
{
    const char *p = (const char *)buf, *end = p + len;

    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n')
                p++;
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ')
                p++;
            if (p < end && *p == '\r')
                p++;
            if (p == end || *p != '\n')
                return false;
            p++;
            continue;
        }
        for (char v = '1'; v <= '3'; v++) {
            char lf[] = "version=X\n", crlf[] = "version=X\r\n";
            lf[8] = crlf[8] = v;
            if ((size_t)(end - p) >= strlen(lf) && !strncmp(p, lf, strlen(lf)))
                return true;
            if ((size_t)(end - p) >= strlen(crlf) && !strncmp(p, crlf, strlen(crlf)))
                return true;
        }
        return false;
    }
    return false;
}

/* The directory part of name (up to its last '/'), "" if none. */
static char *dir_of(const char *name)
{
    const char *s = strrchr(name, '/');
    size_t l = s ? (size_t)(s - name) + 1 : 0;
    char *d = malloc(l + 1);

    if (d) {
        memcpy(d, name, l);
        d[l] = 0;
    }
    return d;
}

/* Extents must be regular files outside /proc and /sys (vdisk's rule:
 * a descriptor must not make the tool read devices or kernel files). */
static int check_extent_path(const char *path)
{
    struct stat st;
    struct statfs sf;

    if (stat(path, &st) < 0)
        return 0;                  /* the open reports it */
    if (!S_ISREG(st.st_mode))
        return vd_error(EINVAL, "vmdk: extent '%s' is not a regular file", path);
    if (statfs(path, &sf) == 0 && (sf.f_type == PROC_MAGIC || sf.f_type == SYSFS_MAGIC))
        return vd_error(EINVAL, "vmdk: extent '%s' is a kernel file", path);
    return 0;
}

/* Open the file an extent line names, relative to the descriptor. */
static int open_extent_file(vd_node *n, const char *fname, vd_node **f)
{
    char *dir = NULL, *path;
    int r;

    if (fname[0] == '/') {
        path = strdup(fname);
    } else {
        if (!(dir = dir_of(n->file->filename)))
            return vd_error(ENOMEM, "out of memory");
        if ((path = malloc(strlen(dir) + strlen(fname) + 1)))
            strcat(strcpy(path, dir), fname);
        free(dir);
    }
    if (!path)
        return vd_error(ENOMEM, "out of memory");
    /* untrusted: vd_open_child refuses before anything learns about path */
    r = vd_node_untrusted(n) ? 0 : check_extent_path(path);
    if (r >= 0)
        r = vd_open_child(f, n, path, "file", NULL, n->flags & (VD_O_RDWR | VD_O_FORCE_SHARE |
                                                               VD_O_NO_LOCK));
    free(path);
    return r;
}

/* One extent line, as QEMU scans it; copied out first so the scan never
 * runs past the line. */
struct ext_line {
    char access[11], type[11], fname[512];
    int64_t sectors, flat_offset;
    int matches;
};

static void scan_line(const char *p, struct ext_line *l)
{
    char line[1024];
    size_t k = 0;

    while (p[k] && p[k] != '\n' && k < sizeof(line) - 1) {
        line[k] = p[k];
        k++;
    }
    line[k] = 0;
    l->flat_offset = -1;
    l->sectors = 0;
    l->matches = sscanf(line, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64,
                        l->access, &l->sectors, l->type, l->fname, &l->flat_offset);
}

/* The "Invalid extent line" error for the line at p. */
static int invalid_line(const char *p)
{
    const char *e = strchr(p, '\n');
    int len = e ? (int)(e - p) : (int)strlen(p);

    return vd_error(EINVAL, "Invalid extent line: %.*s", VD_MIN(len, 1000), p);
}

/* Check a line's fields: 1 to use it, 0 to skip it, <0 invalid. */
static int check_line(const char *p, struct ext_line *l)
{
    bool flat = !strcmp(l->type, "FLAT"), vmfs = !strcmp(l->type, "VMFS");

    if (l->matches < 4 || strcmp(l->access, "RW"))
        return 0;
    if (flat) {
        if (l->matches != 5 || l->flat_offset < 0)
            return invalid_line(p);
    } else if (vmfs) {
        if (l->matches != 4)
            return invalid_line(p);
        l->flat_offset = 0;
    } else if (l->matches != 4) {
        return invalid_line(p);
    }
    if (l->sectors <= 0)
        return 0;
    if (!flat && !vmfs && strcmp(l->type, "SPARSE") && strcmp(l->type, "VMFSSPARSE") &&
        strcmp(l->type, "SESPARSE"))
        return 0;
    return 1;
}

/* Open the extent of one line and add it. */
static int add_line_extent(vd_node *n, struct ext_line *l, int depth)
{
    bool flat = !strcmp(l->type, "FLAT") || !strcmp(l->type, "VMFS");
    vd_node *f = NULL;
    int r;

    if ((flat && (uint64_t)l->flat_offset >= (1ull << 54)) ||
        (uint64_t)l->sectors >= (1ull << 54))
        return vd_error(EINVAL, "vmdk: extent '%s' is too large", l->fname);
    if ((r = open_extent_file(n, l->fname, &f)) < 0)
        return r;
    if (flat)
        r = vmdk_add_flat(n, f, l->type, (uint64_t)l->sectors,
                          (uint64_t)l->flat_offset * VMDK_SECTOR);
    else if (!strcmp(l->type, "SESPARSE"))
        r = vmdk_add_sesparse(n, f, l->type);
    else
        r = vmdk_add_sparse(n, f, true, l->type, depth + 1, NULL);
    if (r < 0)
        vd_close(f);
    return r;
}

/* Open every extent a descriptor names (QEMU's create types only). */
int vmdk_open_descriptor(vd_node *n, const char *desc, int depth)
{
    struct vmdk_state *s = n->state;
    char ct[128];
    struct ext_line l;
    int r;

    if (depth >= VMDK_MAX_DEPTH)
        return vd_error(EINVAL, "vmdk: a sparse extent names another descriptor");
    if (vmdk_desc_value(desc, "createType", ct, sizeof(ct)))
        return vd_error(EINVAL, "invalid VMDK image descriptor");
    if (strcmp(ct, "monolithicFlat") && strcmp(ct, "vmfs") && strcmp(ct, "vmfsSparse") &&
        strcmp(ct, "seSparse") && strcmp(ct, "twoGbMaxExtentSparse") &&
        strcmp(ct, "twoGbMaxExtentFlat"))
        return vd_error(ENOTSUP, "Unsupported image type '%s'", ct);
    snprintf(s->create_type, sizeof(s->create_type), "%s", ct);
    s->desc_offset = 0;
    s->desc_file = true;
    for (const char *p = desc; *p; ) {
        scan_line(p, &l);
        if ((r = check_line(p, &l)) < 0)
            return r;
        if (r == 1) {
            if (s->n_ext >= VMDK_MAX_EXTENTS)
                return vd_error(EINVAL, "vmdk: the descriptor names more than %u extents",
                                VMDK_MAX_EXTENTS);
            if ((r = add_line_extent(n, &l, depth)) < 0)
                return r;
        }
        const char *e = strchr(p, '\n');
        p = e ? e + 1 : p + strlen(p);
    }
    return 0;
}

/* The descriptor bytes QEMU reads for the CIDs, NUL-terminated. */
static int read_desc_area(vd_node *n, char *buf)
{
    struct vmdk_state *s = n->state;
    int64_t len = vd_getlength(n->file);
    uint64_t have;
    int r;

    memset(buf, 0, VMDK_DESC_SIZE + 1);
    if (len < 0)
        return (int)len;
    have = s->desc_offset >= (uint64_t)len ? 0
         : VD_MIN((uint64_t)VMDK_DESC_SIZE, (uint64_t)len - s->desc_offset);
    if (have && (r = vd_pread(n->file, s->desc_offset, have, buf, 0)) < 0)
        return r;
    buf[VMDK_DESC_SIZE - 1] = 0;
    return 0;
}

/* Parse a hex number as scanf's %x does; false when there is none. */
static bool parse_hex(const char *p, uint32_t *out)
{
    unsigned int v;

    if (sscanf(p, "%x", &v) != 1)
        return false;
    *out = v;
    return true;
}

/* An open that fails with EINVAL and no message of its own: QEMU's block
 * layer names the file then. */
static int open_einval(vd_node *n)
{
    return vd_error(EINVAL, "Could not open '%s': Invalid argument", n->filename);
}

/* The CID and parent CID (the first "CID" and "parentCID" in the text). */
int vmdk_read_cids(vd_node *n)
{
    struct vmdk_state *s = n->state;
    char *buf = malloc(VMDK_DESC_SIZE + 1), *p;
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    if ((r = read_desc_area(n, buf)) < 0) {
        free(buf);
        return r;
    }
    r = open_einval(n);
    if ((p = strstr(buf, "CID")) && parse_hex(p + 4, &s->cid) &&
        (p = strstr(buf, "parentCID")) && parse_hex(p + 10, &s->parent_cid)) {
        vd_error_clear();
        r = 0;
    }
    free(buf);
    return r;
}

/* parentFileNameHint="..." names the backing file (format vmdk). */
int vmdk_parent_hint(vd_node *n)
{
    char *buf = malloc(VMDK_DESC_SIZE + 1), *p, *e;
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    if ((r = read_desc_area(n, buf)) < 0)
        goto out;
    if (!(p = strstr(buf, "parentFileNameHint")))
        goto out;
    p += strlen("parentFileNameHint") + 2;
    if (p > buf + VMDK_DESC_SIZE || !(e = strchr(p, '"')) || e - p > 4095) {
        r = open_einval(n);
        goto out;
    }
    *e = 0;
    r = vd_node_set_backing_name(n, p, "vmdk");
out:
    free(buf);
    return r;
}

/* A random CID, written in place of the old one on the first write after
 * open (as QEMU: the text after parentCID is kept). */
int vmdk_update_cid(vd_node *n)
{
    struct vmdk_state *s = n->state;
    char *buf = malloc(VMDK_DESC_SIZE + 1), *tail = NULL, *p, *q;
    uint32_t cid;
    uint64_t wlen = VMDK_DESC_SIZE;
    int r;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    if ((r = read_desc_area(n, buf)) < 0)
        goto out;
    r = vd_error(EINVAL, "vmdk: the descriptor has no parentCID");
    if (!(q = strstr(buf, "parentCID")) || !(tail = strdup(q)))
        goto out;
    if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
        cid = (uint32_t)rand();
    if ((p = strstr(buf, "CID"))) {
        size_t room = VMDK_DESC_SIZE - (size_t)(p + 4 - buf);
        snprintf(p + 4, room, "%" PRIx32 "\n", cid);
        strncat(buf, tail, VMDK_DESC_SIZE - 1 - strlen(buf));
    }
    if (s->desc_file)
        wlen = VD_MIN((uint64_t)VMDK_DESC_SIZE, div_round_up(strlen(buf), VMDK_SECTOR) *
                      VMDK_SECTOR);
    int64_t flen = vd_getlength(n->file);
    r = flen < 0 ? (int)flen : 0;
    if (r >= 0 && (uint64_t)flen < s->desc_offset + wlen)
        r = vd_truncate(n->file, s->desc_offset + wlen, true, VD_PREALLOC_OFF);
    if (r >= 0) {
        vd_event(n->file, "vmdk_desc_update");
        r = vd_pwrite(n->file, s->desc_offset, wlen, buf, 0);
    }
    if (r >= 0)
        r = vd_flush(n->file);
    if (r >= 0)
        s->cid = cid;
out:
    free(tail);
    free(buf);
    return r;
}
