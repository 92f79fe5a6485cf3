/* SPDX-License-Identifier: BSD-3-Clause */
/* vvfat rw: the commit's journal file, so that a process killed in the
 * middle of applying the guest's changes leaves a directory the next rw
 * open puts back together.
 *
 * While a commit changes the host directory it holds DIR/.vdisk-vvfat-journal
 * open with an exclusive flock and appends a record for each change:
 * a rename (written before the rename is made), a staged file or a new
 * directory (written once it exists), and a commit mark once every new
 * object is in place.  A finished commit removes the file.  One found at
 * open (or at the next commit) with no live holder is recovered: without
 * the commit mark every change is undone, newest first; with it, the old
 * objects still under their temporary names are removed (the guest had
 * deleted or replaced them).  Each undo step checks the file system
 * first, so a record whose change never happened does nothing.
 *
 * The records protect against the process dying, not against power
 * loss: the file is not synced.
 *
 * File: the 8-byte magic, then records of a kind byte, two 16-bit
 * little-endian lengths and the two paths (relative to DIR, no NUL, no
 * "." or ".." component); a torn last record is ignored. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format/vvfat/journal.h"
#include "util/checked.h"

#define JNAME         ".vdisk-vvfat-journal"
#define JMAGIC        "VDVVJRN1"
#define JMAGIC_LEN    8
#define JMAX_BYTES    (256u << 20)     /* a bigger file is not ours */
#define JPATH_MAX     4095u

/* ---- the record format (also the fuzz harness's entry point) ---- */

/* Is p[0..len) a relative path with no empty, "." or ".." component? */
static bool path_ok(const uint8_t *p, size_t len)
{
    size_t start = 0;

    if (len == 0 || len > JPATH_MAX || memchr(p, 0, len) || p[0] == '/')
        return false;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && p[i] != '/')
            continue;
        size_t n = i - start;
        if (n == 0 || (n == 1 && p[start] == '.') ||
            (n == 2 && p[start] == '.' && p[start + 1] == '.'))
            return false;
        start = i + 1;
    }
    return true;
}

static char *dup_path(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, p, len);
        s[len] = 0;
    }
    return s;
}

void vv_jrec_free(struct vv_jrec *rec, size_t n)
{
    for (size_t i = 0; rec && i < n; i++) {
        free(rec[i].from);
        free(rec[i].path);
    }
    free(rec);
}

/* Does a record of this kind carry a from path, a path? */
static bool kind_shape(uint8_t kind, bool *from, bool *path)
{
    *from = kind == VV_J_RENAME;
    *path = kind != VV_J_COMMIT;
    return kind == VV_J_RENAME || kind == VV_J_STAGED || kind == VV_J_MKDIR ||
           kind == VV_J_COMMIT;
}

int vv_journal_parse(const uint8_t *buf, size_t len, struct vv_jrec **out, size_t *n_out)
{
    struct vv_jrec *rec = NULL;
    size_t n = 0, cap = 0, p = JMAGIC_LEN;

    *out = NULL;
    *n_out = 0;
    if (len < JMAGIC_LEN || memcmp(buf, JMAGIC, JMAGIC_LEN))
        return vd_error(EINVAL, "vvfat: the journal file has no valid header");
    while (len - p >= 5) {
        uint8_t kind = buf[p];
        size_t fl = vv_le16(buf + p + 1), pl = vv_le16(buf + p + 3);
        bool want_from, want_path;
        if (!kind_shape(kind, &want_from, &want_path) || (fl != 0) != want_from ||
            (pl != 0) != want_path) {
            vv_jrec_free(rec, n);
            return vd_error(EINVAL, "vvfat: bad record at byte %zu of the journal file", p);
        }
        if (len - p - 5 < fl + pl)
            break;                             /* torn: the process died writing it */
        const uint8_t *f = buf + p + 5, *t = f + fl;
        if ((fl && !path_ok(f, fl)) || (pl && !path_ok(t, pl))) {
            vv_jrec_free(rec, n);
            return vd_error(EINVAL, "vvfat: bad path in the record at byte %zu of the "
                            "journal file", p);
        }
        if (n == cap) {
            size_t c2 = cap ? 2 * cap : 16;
            struct vv_jrec *r2 = reallocarray(rec, c2, sizeof(*rec));
            if (!r2) {
                vv_jrec_free(rec, n);
                return vd_error(ENOMEM, "out of memory");
            }
            rec = r2;
            cap = c2;
        }
        rec[n] = (struct vv_jrec){ kind, fl ? dup_path(f, fl) : NULL, pl ? dup_path(t, pl) : NULL };
        n++;
        if ((fl && !rec[n - 1].from) || (pl && !rec[n - 1].path)) {
            vv_jrec_free(rec, n);
            return vd_error(ENOMEM, "out of memory");
        }
        p += 5 + fl + pl;
    }
    *out = rec;
    *n_out = n;
    return 0;
}

/* ---- recovery ---- */

static bool exists_at(int dfd, const char *path)
{
    struct stat st;

    return fstatat(dfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Is path one of the commit's temporary names (top level)? */
static bool temporary_name(const char *path)
{
    return !strncmp(path, ".vdisk-vvfat-", 13) && !strchr(path, '/') && strcmp(path, JNAME);
}

/* No commit mark: undo every change, newest first. */
static void undo_all(int dfd, const struct vv_jrec *rec, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        const struct vv_jrec *r = &rec[i];
        struct stat st;
        if (r->kind == VV_J_RENAME) {
            if (exists_at(dfd, r->path) && !exists_at(dfd, r->from))
                renameat(dfd, r->path, dfd, r->from);
        } else if (r->kind == VV_J_MKDIR) {
            unlinkat(dfd, r->path, AT_REMOVEDIR);       /* only when empty */
        } else if (r->kind == VV_J_STAGED && temporary_name(r->path) &&
                   fstatat(dfd, r->path, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                   S_ISREG(st.st_mode)) {
            unlinkat(dfd, r->path, 0);
        }
    }
}

/* Commit mark seen: remove what is still under a temporary name (old
 * objects moved aside, in the order they were moved: contents before
 * their directories); one that will not go goes back to its old path
 * when that is free. */
static void finish_commit(int dfd, const struct vv_jrec *rec, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct vv_jrec *r = &rec[i];
        struct stat st;
        if (!r->path || !temporary_name(r->path) ||
            fstatat(dfd, r->path, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (unlinkat(dfd, r->path, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) == 0)
            continue;
        if (r->kind == VV_J_RENAME && !exists_at(dfd, r->from))
            renameat(dfd, r->path, dfd, r->from);
    }
}

/* Read the whole journal from fd and act on it. */
static int recover_fd(const char *dir, int dfd, int fd)
{
    struct stat st;
    struct vv_jrec *rec;
    uint8_t *buf;
    size_t n, got = 0;
    bool committed = false;
    int r;

    if (fstat(fd, &st) < 0)
        return vd_error(errno, "vvfat: cannot read the journal in '%s'", dir);
    if (st.st_size == 0)
        return 0;
    if ((uint64_t)st.st_size > JMAX_BYTES)
        return vd_error(EFBIG, "vvfat: the journal file in '%s' is too large", dir);
    if (!(buf = malloc((size_t)st.st_size)))
        return vd_error(ENOMEM, "out of memory");
    while (got < (size_t)st.st_size) {
        ssize_t k = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    r = vv_journal_parse(buf, got, &rec, &n);
    free(buf);
    if (r < 0)
        return vd_error_prefix(r, "vvfat: cannot recover the interrupted commit in '%s'", dir);
    for (size_t i = 0; i < n; i++)
        committed |= rec[i].kind == VV_J_COMMIT;
    if (committed)
        finish_commit(dfd, rec, n);
    else
        undo_all(dfd, rec, n);
    vv_jrec_free(rec, n);
    return 0;
}

/* ---- the journal file of a commit ---- */

/* Open and lock DIR's journal file (creating it when create), recovering
 * what a dead holder left.  0 with jf->fd < 0 when there is none and
 * create is false. */
static int open_locked(struct vv_journal *jf, const char *dir, bool create)
{
    jf->fd = -1;
    jf->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (jf->dfd < 0)
        return vd_error(errno, "vvfat: cannot open '%s'", dir);
    for (int tries = 0; tries < 100; tries++) {
        struct stat st;
        int fd = openat(jf->dfd, JNAME, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0),
                        0600);
        if (fd < 0) {
            if (errno == ENOENT && !create)
                return 0;
            return vd_error(errno, "vvfat: cannot open the journal file in '%s'", dir);
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            int e = errno;
            close(fd);
            return e == EWOULDBLOCK
                       ? vd_error(EBUSY, "vvfat: another program is applying changes to '%s'",
                                  dir)
                       : vd_error(e, "vvfat: cannot lock the journal file in '%s'", dir);
        }
        if (fstat(fd, &st) == 0 && st.st_nlink > 0 && S_ISREG(st.st_mode)) {
            jf->fd = fd;
            return 0;
        }
        close(fd);                   /* removed by its holder meanwhile: again */
    }
    return vd_error(EBUSY, "vvfat: the journal file in '%s' keeps changing", dir);
}

/* Recover what the journal holds, then start it empty. */
static int reset(struct vv_journal *jf, const char *dir)
{
    int r = recover_fd(dir, jf->dfd, jf->fd);

    if (r < 0)
        return r;
    if (ftruncate(jf->fd, 0) < 0 || pwrite(jf->fd, JMAGIC, JMAGIC_LEN, 0) != JMAGIC_LEN)
        return vd_error(errno ? errno : EIO, "vvfat: cannot write the journal in '%s'", dir);
    jf->off = JMAGIC_LEN;
    return 0;
}

static void close_journal(struct vv_journal *jf)
{
    if (jf->fd >= 0)
        close(jf->fd);
    if (jf->dfd >= 0)
        close(jf->dfd);
    jf->fd = jf->dfd = -1;
}

int vv_journal_begin(struct vv_journal *jf, const char *dir)
{
    int r = open_locked(jf, dir, true);

    if (r == 0)
        r = reset(jf, dir);
    if (r < 0) {
        close_journal(jf);
        return r;
    }
    jf->dir = dir;
    jf->dirlen = strlen(dir);
    while (jf->dirlen > 1 && dir[jf->dirlen - 1] == '/')
        jf->dirlen--;
    return 0;
}

/* path relative to the directory (every path of a commit is under it). */
static const char *relative(const struct vv_journal *jf, const char *path)
{
    if (!path || strncmp(path, jf->dir, jf->dirlen) || path[jf->dirlen] != '/')
        return NULL;
    path += jf->dirlen;
    while (*path == '/')
        path++;
    return path;
}

int vv_journal_log(struct vv_journal *jf, enum vv_jkind kind, const char *from, const char *path)
{
    const char *f = from ? relative(jf, from) : "", *t = path ? relative(jf, path) : "";
    size_t fl, tl;

    if (!f || !t)
        return vd_error(EINVAL, "vvfat: '%s' is outside '%s'", f ? path : from, jf->dir);
    fl = strlen(f);
    tl = strlen(t);
    if (fl > JPATH_MAX || tl > JPATH_MAX)
        return vd_error(ENAMETOOLONG, "vvfat: path too long for the journal");
    uint8_t *rec = malloc(5 + fl + tl);
    if (!rec)
        return vd_error(ENOMEM, "out of memory");
    rec[0] = (uint8_t)kind;
    vv_put16(rec + 1, (uint16_t)fl);
    vv_put16(rec + 3, (uint16_t)tl);
    memcpy(rec + 5, f, fl);
    memcpy(rec + 5 + fl, t, tl);
    ssize_t w = pwrite(jf->fd, rec, 5 + fl + tl, (off_t)jf->off);
    int e = errno;
    free(rec);
    if (w != (ssize_t)(5 + fl + tl))
        return vd_error(w < 0 ? e : ENOSPC, "vvfat: cannot write the journal in '%s'", jf->dir);
    jf->off += 5 + fl + tl;
    return 0;
}

void vv_journal_end(struct vv_journal *jf)
{
    if (jf->fd >= 0)
        unlinkat(jf->dfd, JNAME, 0);
    close_journal(jf);
}

int vv_journal_recover(const char *dir)
{
    struct vv_journal jf = { .fd = -1, .dfd = -1 };
    int r = open_locked(&jf, dir, false);

    if (r == 0 && jf.fd >= 0 && (r = recover_fd(dir, jf.dfd, jf.fd)) == 0)
        unlinkat(jf.dfd, JNAME, 0);
    close_journal(&jf);
    return r;
}

bool vv_journal_pending(const char *dir)
{
    char *p;
    struct stat st;
    bool yes;

    if (asprintf(&p, "%s/" JNAME, dir) < 0)
        return false;
    yes = lstat(p, &st) == 0;
    free(p);
    return yes;
}

bool vv_journal_name(const char *name)
{
    return !strcmp(name, JNAME);
}
