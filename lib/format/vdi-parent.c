/* SPDX-License-Identifier: BSD-3-Clause */
/* vdi: the directory scan that finds a differencing image's parent (see
 * vdi-parent.h).  Bounded: at most VDI_PARENT_SCAN_MAX entries are looked
 * at, only regular files whose name ends in ".vdi" are opened (never
 * through a symbolic link, so never outside the directory), and only their
 * header sector is read.  The chain above the image is then walked in the
 * same table, so a loop of parents is refused before anything is opened. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format/vdi-parent.h"
#include "util/checked.h"
#include "vdisk/driver.h"

/* The header fields the lookup reads (little endian; the layout is
 * VirtualBox's VDIHEADER1 after the 0x48-byte pre-header). */
enum {
    P_SIGNATURE = 0x40, P_VERSION = 0x44, P_TYPE = 0x4c, P_DISK_SIZE = 0x170,
    P_UUID_IMAGE = 0x188, P_UUID_MODIFY = 0x198, P_UUID_LINK = 0x1a8,
    P_UUID_PARENT_MODIFY = 0x1b8,
};
#define P_SIGNATURE_VALUE 0xbeda107fu
#define P_VERSION_1_1 0x00010001u
#define P_TYPE_UNDO 3u
#define P_TYPE_DIFF 4u

/* What the scan learns of one .vdi file. */
struct ident {
    char *name;
    dev_t dev;
    ino_t ino;
    uint64_t disk_size;
    uint8_t image[16], modify[16], link[16], parent_modify[16];
    bool diff;
};

struct table {
    struct ident *v;
    size_t n, cap;
};

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* See vdi-parent.h. */
bool vdi_is_differencing(const uint8_t *hdr)
{
    uint32_t type = le32(hdr + P_TYPE);

    return (type == P_TYPE_UNDO || type == P_TYPE_DIFF) &&
           !buffer_is_zero(hdr + P_UUID_LINK, 16);
}

/* See vdi-parent.h: the first three fields are stored little endian. */
void vdi_uuid_str(const uint8_t *p, char *out)
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", p[3], p[2], p[1], p[0], p[5], p[4], p[7], p[6],
             p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]);
}

/* Fill id from a header sector. */
static void decode_ident(const uint8_t *h, struct ident *id)
{
    id->disk_size = le64(h + P_DISK_SIZE);
    memcpy(id->image, h + P_UUID_IMAGE, 16);
    memcpy(id->modify, h + P_UUID_MODIFY, 16);
    memcpy(id->link, h + P_UUID_LINK, 16);
    memcpy(id->parent_modify, h + P_UUID_PARENT_MODIFY, 16);
    id->diff = vdi_is_differencing(h);
}

/* Does the name end in ".vdi" (any case)? */
static bool vdi_suffix(const char *name)
{
    size_t l = strlen(name);
    return l > 4 && !strcasecmp(name + l - 4, ".vdi");
}

/* Read the header of the regular file name in dfd into id: 1 when it is a
 * version 1.1 vdi image, 0 to skip it, -errno on failure. */
static int read_ident(int dfd, const char *name, struct ident *id)
{
    uint8_t h[VDI_PARENT_HDR_BYTES];
    struct stat st;
    ssize_t got;
    int fd;

    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
        return 0;
    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return 0;
    }
    got = pread(fd, h, sizeof(h), 0);
    close(fd);
    if (got != (ssize_t)sizeof(h) || le32(h + P_SIGNATURE) != P_SIGNATURE_VALUE ||
        le32(h + P_VERSION) != P_VERSION_1_1)
        return 0;
    decode_ident(h, id);
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    if (!(id->name = strdup(name)))
        return vd_error(ENOMEM, "out of memory");
    return 1;
}

/* Room for one more entry in t. */
static int table_grow(struct table *t)
{
    size_t cap = t->cap ? t->cap * 2 : 16;
    struct ident *v;

    if (t->n < t->cap)
        return 0;
    if (!(v = realloc(t->v, cap * sizeof(*v))))
        return vd_error(ENOMEM, "out of memory");
    t->v = v;
    t->cap = cap;
    return 0;
}

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i].name);
    free(t->v);
}

/* Collect the vdi images among the first VDI_PARENT_SCAN_MAX entries of
 * the directory dir. */
static int scan_dir(const char *dir, struct table *t)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;
    struct dirent *e;
    DIR *d;

    if (dfd < 0 || !(d = fdopendir(dfd))) {
        r = -errno;
        if (dfd >= 0)
            close(dfd);
        return vd_error(-r, "vdi: cannot list '%s' to find the parent image: %s", dir,
                        strerror(-r));
    }
    for (unsigned seen = 0; r >= 0 && seen < VDI_PARENT_SCAN_MAX && (e = readdir(d));
         seen++) {
        if (!vdi_suffix(e->d_name) || (r = table_grow(t)) < 0)
            continue;
        if ((r = read_ident(dirfd(d), e->d_name, &t->v[t->n])) > 0)
            t->n++;
    }
    closedir(d);
    return r < 0 ? r : 0;
}

/* The entries whose creation UUID is uuid and, when modify is not NULL,
 * whose modification UUID is modify: how many, the first two in idx. */
static size_t find_uuid(const struct table *t, const uint8_t *uuid, const uint8_t *modify,
                        size_t idx[2])
{
    size_t n = 0;

    for (size_t i = 0; i < t->n; i++) {
        if (memcmp(t->v[i].image, uuid, 16) || (modify && memcmp(t->v[i].modify, modify, 16)))
            continue;
        if (n < 2)
            idx[n] = i;
        n++;
    }
    return n;
}

/* Is entry e the image itself? */
static bool is_self(const struct ident *e, const struct stat *self)
{
    return e->dev == self->st_dev && e->ino == self->st_ino;
}

/* Walk up from entry i through the parents the table holds: refuse a chain
 * that comes back to the image or to an image already passed.  The walk
 * stops where a parent is missing or ambiguous (opening that image will
 * say so). */
static int check_loop(const struct table *t, size_t i, const struct stat *self,
                      const char *path)
{
    bool *seen = calloc(t->n, sizeof(bool));
    size_t idx[2];
    int r = 0;

    if (!seen)
        return vd_error(ENOMEM, "out of memory");
    for (;;) {
        if (is_self(&t->v[i], self) || seen[i]) {
            r = vd_error(ELOOP, "vdi: the parents of '%s' form a loop (through '%s')", path,
                         t->v[i].name);
            break;
        }
        seen[i] = true;
        if (!t->v[i].diff || find_uuid(t, t->v[i].link, NULL, idx) != 1)
            break;
        i = idx[0];
    }
    free(seen);
    return r;
}

/* Pick the parent in the table: by UUID, then modification UUID (when
 * the child records one).  Returns its index or -errno. */
static ssize_t pick_parent(const struct table *t, const uint8_t *hdr, const char *path,
                           const char *dir, const struct stat *self)
{
    const uint8_t *pm = hdr + P_UUID_PARENT_MODIFY;
    size_t any[2], idx[2], n;
    char u[37], want[37], have[37];

    vdi_uuid_str(hdr + P_UUID_LINK, u);
    n = find_uuid(t, hdr + P_UUID_LINK, NULL, any);
    if (n == 0)
        return vd_error(ENOENT, "vdi: the parent of '%s' (UUID %s) is not among the .vdi "
                        "files in '%s'", path, u, dir);
    for (size_t i = 0; i < n && i < 2; i++)
        if (is_self(&t->v[any[i]], self))
            return vd_error(ELOOP, "vdi: '%s' names itself as its parent (UUID %s)", path, u);
    n = find_uuid(t, hdr + P_UUID_LINK, buffer_is_zero(pm, 16) ? NULL : pm, idx);
    if (n == 0) {
        vdi_uuid_str(pm, want);
        vdi_uuid_str(t->v[any[0]].modify, have);
        return vd_error(EINVAL, "vdi: the parent '%s' of '%s' has changed since the child "
                        "was made (its modification UUID is %s, the child expects %s)",
                        t->v[any[0]].name, path, have, want);
    }
    if (n > 1)
        return vd_error(EINVAL, "vdi: the parent of '%s' (UUID %s) is ambiguous: '%s' and "
                        "'%s' both have it", path, u, t->v[idx[0]].name, t->v[idx[1]].name);
    return (ssize_t)idx[0];
}

/* The parent at entry i must not be larger than the child. */
static int check_size(const struct ident *p, uint64_t disk_size, const char *path)
{
    uint64_t psize = div_round_up(p->disk_size, 512) * 512;

    if (p->disk_size > UINT64_MAX - 511 || psize > disk_size)
        return vd_error(EINVAL, "vdi: the parent '%s' (%" PRIu64 " bytes) is larger than "
                        "its child '%s' (%" PRIu64 " bytes)", p->name, p->disk_size, path,
                        disk_size);
    return 0;
}

/* See vdi-parent.h. */
int vdi_find_parent(const char *path, const uint8_t *hdr, uint64_t disk_size, char **name)
{
    char *copy = strdup(path), *dir;
    struct table t = { 0 };
    struct stat self;
    ssize_t i = -1;
    int r;

    if (!copy)
        return vd_error(ENOMEM, "out of memory");
    dir = dirname(copy);
    if (stat(path, &self) < 0)
        r = vd_error(errno, "vdi: cannot stat '%s': %s", path, strerror(errno));
    else if ((r = scan_dir(dir, &t)) >= 0)
        r = (int)(i = pick_parent(&t, hdr, path, dir, &self));
    if (r >= 0 && (r = check_loop(&t, (size_t)i, &self, path)) >= 0 &&
        (r = check_size(&t.v[i], disk_size, path)) >= 0 && !(*name = strdup(t.v[i].name)))
        r = vd_error(ENOMEM, "out of memory");
    table_free(&t);
    free(copy);
    return r < 0 ? r : 0;
}
