/* SPDX-License-Identifier: BSD-3-Clause */
/* vvfat rw: guest writes and their mapping back to the host directory.
 *
 * Writes to the FAT and the root directory change the tables in memory;
 * writes to data clusters go to an unlinked overlay file (a slot per
 * cluster, so memory stays bounded); writes that change the partition
 * table, the boot sector or the sectors past the last cluster cannot be
 * mapped to files and are refused.  A flush (and the close) commits:
 * the file system is parsed as the guest left it (parse.c), matched with
 * the tree the host has (by first cluster, then by path), and the
 * differences are applied in journaled phases (see "applying the plan"
 * below): a host error midway undoes what was done, so the directory
 * either takes all of the guest's changes or none, and no temporary name
 * stays.  A file system that does not parse is refused with an error and
 * nothing on the host changes; a failed commit is retried at the next
 * flush.
 *
 * Invariants (under the lock of vvfat.c): cl_node/cl_pos describe the
 * tree the host has; an overlay slot of a cluster overrides them; after
 * a commit every cluster the tree owns reads from the host or a directory
 * buffer, and only free clusters keep their slots. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "format/vvfat/journal.h"
#include "format/vvfat/parse.h"
#include "format/vvfat/vvfat.h"
#include "util/checked.h"

/* ---- writes ---- */

/* Create the overlay file and its index on the first data write. */
static int overlay_init(struct vv_state *s)
{
    const char *tmp = getenv("TMPDIR");
    char *path;

    if (s->ovl_slot)
        return 0;
    if (asprintf(&path, "%s/vdisk-vvfat-XXXXXX", tmp && *tmp ? tmp : "/tmp") < 0)
        return vd_error(ENOMEM, "out of memory");
    s->ovl_fd = mkstemp(path);
    if (s->ovl_fd >= 0)
        unlink(path);
    free(path);
    if (s->ovl_fd < 0)
        return vd_error(errno, "vvfat: cannot create the write overlay");
    s->ovl_slot = vd_calloc_array(s->g.cluster_count + 2, sizeof(uint32_t));
    s->ovl_free = vd_calloc_array(s->g.cluster_count + 2, sizeof(uint32_t));
    if (!s->ovl_slot || !s->ovl_free)
        return vd_error(ENOMEM, "vvfat: out of memory");
    return 0;
}

/* Write len bytes at in of cluster c to the overlay (a new slot starts as
 * the cluster's current contents). */
static int write_cluster(struct vv_state *s, uint32_t c, uint32_t in, uint32_t len,
                         const uint8_t *buf)
{
    uint8_t *whole = NULL;
    int r;

    if ((r = overlay_init(s)) < 0)
        return r;
    if (!s->ovl_slot[c]) {
        uint32_t slot = s->ovl_nfree ? s->ovl_free[--s->ovl_nfree] : ++s->ovl_used;
        if (len < s->g.cluster) {
            if (!(whole = malloc(s->g.cluster)))
                return vd_error(ENOMEM, "out of memory");
            if ((r = vv_read_cluster(s, c, 0, s->g.cluster, whole)) < 0 ||
                pwrite(s->ovl_fd, whole, s->g.cluster, (off_t)(slot - 1) * s->g.cluster) !=
                    s->g.cluster) {
                free(whole);
                s->ovl_free[s->ovl_nfree++] = slot;
                return r < 0 ? r : vd_error(EIO, "vvfat: cannot write the overlay");
            }
            free(whole);
        }
        s->ovl_slot[c] = slot;
    }
    if (pwrite(s->ovl_fd, buf, len, (off_t)(s->ovl_slot[c] - 1) * s->g.cluster + in) !=
        (ssize_t)len)
        return vd_error(EIO, "vvfat: cannot write the overlay");
    return 0;
}

/* A write to bytes that hold no file system data: allowed only when it
 * changes nothing. */
static int write_fixed(const uint8_t *cur, const uint8_t *buf, uint64_t len, uint64_t off)
{
    bool same = cur ? !memcmp(cur, buf, len) : buffer_is_zero(buf, len);

    if (same)
        return 0;
    return vd_error(EPERM, "vvfat: the write at byte %" PRIu64 " changes the partition table, "
                    "the boot sector or space outside the file system, which cannot be "
                    "mapped to the directory", off);
}

/* See vvfat.h: one piece at a time, as the disk is laid out. */
int vv_write(struct vv_state *s, uint64_t off, uint64_t len, const uint8_t *buf)
{
    const struct vv_geom *g = &s->g;
    uint64_t ps = (uint64_t)g->part_start * VV_SECTOR, fat = (uint64_t)g->spf * VV_SECTOR;
    uint64_t rsv = (uint64_t)g->reserved * VV_SECTOR;
    int r = 0;

    while (r == 0 && len) {
        uint64_t l, p = off - ps;
        if (off < ps) {
            l = VD_MIN(len, off < VV_SECTOR ? VV_SECTOR - off : ps - off);
            r = write_fixed(off < VV_SECTOR ? s->mbr + off : NULL, buf, l, off);
        } else if (p < rsv) {
            uint8_t *sec = vv_reserved_sector(s, (uint32_t)(p / VV_SECTOR));
            l = VD_MIN(len, VV_SECTOR - p % VV_SECTOR);
            if (sec == s->fsinfo || sec == s->fsinfo2)   /* free-cluster hints: the guest's */
                memcpy(sec + p % VV_SECTOR, buf, l);
            else
                r = write_fixed(sec ? sec + p % VV_SECTOR : NULL, buf, l, off);
        } else if (p < rsv + 2 * fat) {
            uint64_t f = (p - rsv) % fat;
            l = VD_MIN(len, fat - f);
            memcpy(s->fat + f, buf, l);
        } else if (p < (uint64_t)g->data_start * VV_SECTOR) {
            uint64_t rt = p - (uint64_t)g->root_start * VV_SECTOR;
            l = VD_MIN(len, (uint64_t)g->root_entries * VV_DIRENT - rt);
            memcpy(s->root + rt, buf, l);
        } else {
            uint64_t d = p - (uint64_t)g->data_start * VV_SECTOR, c = d / s->g.cluster;
            if (c < g->cluster_count) {
                l = VD_MIN(len, s->g.cluster - d % s->g.cluster);
                r = write_cluster(s, (uint32_t)c + 2, (uint32_t)(d % s->g.cluster), (uint32_t)l,
                                  buf);
            } else {
                l = len;
                r = write_fixed(NULL, buf, l, off);
            }
        }
        s->dirty = true;
        s->commit_failed = false;
        off += l;
        buf += l;
        len -= l;
    }
    return r;
}

/* ---- the commit ---- */

/* What happens to each entry of the guest's tree, and to each old node. */
struct plan {
    struct vv_tree *t;
    int64_t *match;                /* entry -> old node, -1: new */
    bool *old_kept;                /* old node -> matched */
    bool *changed;                 /* entry: contents to be written */
    char **path;                   /* entry: host path */
    char **tmp;                    /* entry: temporary name (contents or moved) */
};

/* Reader for vv_parse_tree: one whole cluster of the image. */
static int read_whole(void *opaque, uint32_t c, uint8_t *buf)
{
    struct vv_state *s = opaque;

    return vv_read_cluster(s, c, 0, s->g.cluster, buf);
}

/* Host path of entry i (its parent's path + its name). */
static int entry_path(struct vv_state *s, struct plan *pl, uint32_t i)
{
    const struct vv_entry *e = &pl->t->e[i];

    if (i == 0)
        pl->path[0] = strdup(s->dir);
    else if (asprintf(&pl->path[i], "%s/%s", pl->path[e->parent], e->name) < 0)
        pl->path[i] = NULL;
    return pl->path[i] ? 0 : vd_error(ENOMEM, "out of memory");
}

/* Old node with host path path, or -1 (binary search on sorted). */
static int64_t find_old(const struct vv_state *s, const uint32_t *sorted, const char *path)
{
    uint32_t lo = 0, hi = s->n_nodes;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->nodes[sorted[mid]].path, path);
        if (!c)
            return sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* qsort_r order of old nodes by path. */
static int cmp_old(const void *a, const void *b, void *arg)
{
    const struct vv_state *s = arg;

    return strcmp(s->nodes[*(const uint32_t *)a].path, s->nodes[*(const uint32_t *)b].path);
}

/* Does entry e still have old node k's contents, cluster for cluster? */
static bool same_contents(const struct vv_state *s, const struct vv_entry *e, uint32_t k,
                          const uint8_t *fat)
{
    uint32_t c = e->first;

    if (e->size != s->nodes[k].size)
        return false;
    for (uint32_t i = 0; c && i < e->n_clusters; i++) {
        if (s->cl_node[c] != k + 1 || s->cl_pos[c] != i || (s->ovl_slot && s->ovl_slot[c]))
            return false;
        c = vv_fat_get(fat, s->g.fat_type, c);
    }
    return true;
}

/* Match entry i to an old node: by its first cluster, else by path. */
static void match_entry(struct vv_state *s, struct plan *pl, const uint32_t *sorted, uint32_t i)
{
    const struct vv_entry *e = &pl->t->e[i];
    int64_t k = -1;

    if (i == 0) {
        k = 0;
    } else if (e->first && s->cl_node[e->first] && s->cl_pos[e->first] == 0 &&
               !pl->old_kept[s->cl_node[e->first] - 1]) {
        k = s->cl_node[e->first] - 1;
    }
    if (k < 0 || s->nodes[k].is_dir != e->is_dir) {
        k = find_old(s, sorted, pl->path[i]);
        if (k >= 0 && (pl->old_kept[k] || s->nodes[k].is_dir != e->is_dir))
            k = -1;
    }
    pl->match[i] = k;
    if (k >= 0)
        pl->old_kept[k] = true;
    pl->changed[i] = !e->is_dir && (k < 0 || !same_contents(s, e, (uint32_t)k, s->fat));
}

/* Build the plan: paths, matches, what changed. */
static int make_plan(struct vv_state *s, struct plan *pl)
{
    uint32_t n = pl->t->n, *sorted = vd_calloc_array(s->n_nodes, sizeof(uint32_t));
    int r = 0;

    pl->match = vd_calloc_array(n, sizeof(int64_t));
    pl->old_kept = vd_calloc_array(s->n_nodes, sizeof(bool));
    pl->changed = vd_calloc_array(n, sizeof(bool));
    pl->path = vd_calloc_array(n, sizeof(char *));
    pl->tmp = vd_calloc_array(n, sizeof(char *));
    if (!sorted || !pl->match || !pl->old_kept || !pl->changed || !pl->path || !pl->tmp) {
        free(sorted);
        return vd_error(ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < s->n_nodes; i++)
        sorted[i] = i;
    qsort_r(sorted, s->n_nodes, sizeof(*sorted), cmp_old, s);
    for (uint32_t i = 0; r == 0 && i < n; i++)
        if ((r = entry_path(s, pl, i)) == 0)
            match_entry(s, pl, sorted, i);
    free(sorted);
    return r;
}

/* Give the host file of entry e the entry's modification time (FAT keeps
 * local time in 2-second steps); an invalid date leaves the time alone. */
static void set_mtime(const char *path, const struct vv_entry *e)
{
    struct tm tm = { .tm_isdst = -1 };
    struct timespec ts[2];

    tm.tm_year = 80 + (e->mdate >> 9);
    tm.tm_mon = ((e->mdate >> 5) & 15) - 1;
    tm.tm_mday = e->mdate & 31;
    tm.tm_hour = e->mtime >> 11;
    tm.tm_min = (e->mtime >> 5) & 63;
    tm.tm_sec = (e->mtime & 31) * 2;
    if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 59)
        return;
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = mktime(&tm);
    ts[1].tv_nsec = 0;
    if (ts[1].tv_sec != (time_t)-1)
        utimensat(AT_FDCWD, path, ts, 0);
}

/* ---- applying the plan: a journal of host changes, undone on failure ----
 *
 * The host directory changes in phases.  (1) Stage: the contents of
 * new and changed files go to temporary files.  (2) Move aside, deepest
 * first: every old object that is renamed, replaced or deleted gets a
 * temporary name in the top directory.  (3) Put in place, parents first:
 * staged files and moved objects are renamed to their new paths (never
 * over an existing name), new directories made.  Each step is journaled;
 * a host error in any of them (permission denied, no space, a file gone)
 * undoes the journal backwards, so the directory is as it was and no
 * temporary name stays.  Only then (4) are the old objects the guest
 * deleted or replaced removed; one that cannot be removed is renamed back
 * to its old path (its data is kept) and named in the error. */

enum jkind { J_STAGED, J_RENAME, J_MKDIR };

/* One host change: a staged file (path), a rename (from -> path) or a
 * directory made (path). */
struct jop {
    enum jkind kind;
    char *from, *path;
};

struct journal {
    struct jop *op;
    size_t n, cap;
    struct vv_journal disk;        /* the same changes in the directory's file */
};

/* Append a change (taking the strings); ENOMEM leaves them to the caller. */
static int journal_add(struct journal *j, enum jkind kind, char *from, char *path)
{
    if (j->n == j->cap) {
        size_t cap = j->cap ? 2 * j->cap : 64;
        struct jop *op = reallocarray(j->op, cap, sizeof(*op));
        if (!op)
            return vd_error(ENOMEM, "out of memory");
        j->op = op;
        j->cap = cap;
    }
    j->op[j->n++] = (struct jop){ kind, from, path };
    return 0;
}

/* Undo the journal backwards (best effort: each step is the inverse of
 * one that succeeded, in the reverse order). */
static void journal_undo(struct journal *j)
{
    for (size_t i = j->n; i-- > 0;) {
        struct jop *op = &j->op[i];
        if (op->kind == J_STAGED)
            unlink(op->path);
        else if (op->kind == J_RENAME)
            rename(op->path, op->from);
        else
            rmdir(op->path);
    }
}

static void journal_free(struct journal *j)
{
    for (size_t i = 0; i < j->n; i++) {
        free(j->op[i].from);
        free(j->op[i].path);
    }
    free(j->op);
}

/* rename that never replaces an existing name. */
static int rename_new(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* a file system without RENAME_NOREPLACE: check, then rename */
    struct stat st;
    if (lstat(to, &st) == 0) {
        errno = EEXIST;
        return -1;
    }
    return rename(from, to);
}

/* Rename from to a path and journal it (the journal owns both strings). */
static int journal_rename(struct journal *j, const char *from, const char *to)
{
    char *f = strdup(from), *t = strdup(to);

    if (!f || !t) {
        free(f);
        free(t);
        return vd_error(ENOMEM, "out of memory");
    }
    int r = vv_journal_log(&j->disk, VV_J_RENAME, from, to);
    if (r < 0) {
        free(f);
        free(t);
        return r;
    }
    if (rename_new(from, to) < 0) {
        int e = errno;
        free(f);
        free(t);
        return vd_error(e, "vvfat: cannot rename '%s' to '%s'", from, to);
    }
    if (journal_add(j, J_RENAME, f, t) < 0) {
        rename(to, from);
        free(f);
        free(t);
        return -ENOMEM;
    }
    return 0;
}

/* Copy file entry i's contents from the image to the open file fd. */
static int copy_out(struct vv_state *s, struct plan *pl, uint32_t i, int fd)
{
    const struct vv_entry *e = &pl->t->e[i];
    uint8_t *buf = malloc(s->g.cluster);
    uint32_t c = e->first, left = e->size;
    int r = 0;

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    while (r == 0 && left) {
        uint32_t l = VD_MIN(left, s->g.cluster);
        ssize_t w;
        if ((r = vv_read_cluster(s, c, 0, l, buf)) < 0)
            break;
        if ((w = write(fd, buf, l)) != (ssize_t)l)
            r = vd_error(w < 0 ? errno : ENOSPC, "vvfat: cannot write '%s'", pl->path[i]);
        left -= l;
        c = vv_fat_get(s->fat, s->g.fat_type, c);
    }
    if (r == 0 && fchmod(fd, 0644) < 0)
        r = vd_error(errno, "vvfat: cannot set the mode of '%s'", pl->path[i]);
    free(buf);
    return r;
}

/* Write the contents of file entry i to a new temporary file (pl->tmp[i],
 * journaled so that a failure removes it). */
static int stage_contents(struct vv_state *s, struct plan *pl, struct journal *j, uint32_t i)
{
    char *tmp;
    int fd, r;

    if (asprintf(&tmp, "%s/.vdisk-vvfat-XXXXXX", s->dir) < 0)
        return vd_error(ENOMEM, "out of memory");
    if ((fd = mkstemp(tmp)) < 0) {
        r = vd_error(errno, "vvfat: cannot create a file in '%s' for '%s'", s->dir,
                     pl->path[i]);
        free(tmp);
        return r;
    }
    if ((r = vv_journal_log(&j->disk, VV_J_STAGED, NULL, tmp)) < 0 ||
        journal_add(j, J_STAGED, NULL, tmp) < 0) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return r < 0 ? r : -ENOMEM;
    }
    pl->tmp[i] = tmp;                /* the journal owns it */
    r = copy_out(s, pl, i, fd);
    if (close(fd) < 0 && r == 0)
        r = vd_error(errno, "vvfat: cannot write '%s'", pl->path[i]);
    return r;
}

/* Must old node k leave its path?  Deleted, renamed or replaced (a file
 * whose contents changed: the old one stays until the end). */
static bool must_move(const struct vv_state *s, const struct plan *pl, uint32_t k,
                      const int64_t *entry_of)
{
    int64_t i = entry_of[k];

    return i < 0 || pl->changed[i] || strcmp(s->nodes[k].path, pl->path[i]);
}

/* Move the old objects that must leave their paths aside, deepest first,
 * so that the old paths of the others stay valid meanwhile. */
static int move_aside(struct vv_state *s, struct plan *pl, struct journal *j,
                      const int64_t *entry_of, const uint32_t *depth_of, char **aside,
                      uint32_t depth)
{
    for (uint32_t k = 1; k < s->n_nodes; k++) {
        int r;
        if (depth_of[k] != depth || !must_move(s, pl, k, entry_of))
            continue;
        if (asprintf(&aside[k], "%s/.vdisk-vvfat-mv-%ld-%" PRIu32, s->dir, (long)getpid(),
                     k) < 0) {
            aside[k] = NULL;
            return vd_error(ENOMEM, "out of memory");
        }
        if ((r = journal_rename(j, s->nodes[k].path, aside[k])) < 0) {
            free(aside[k]);
            aside[k] = NULL;
            return r;
        }
    }
    return 0;
}

/* Put each entry in place, parents first: staged contents, moved objects,
 * new directories. */
static int put_in_place(struct vv_state *s, struct plan *pl, struct journal *j, char **aside)
{
    for (uint32_t i = 1; i < pl->t->n; i++) {
        const struct vv_entry *e = &pl->t->e[i];
        int64_t k = pl->match[i];
        const char *from = pl->changed[i] ? pl->tmp[i] : k > 0 ? aside[k] : NULL;
        char *path;
        int r;
        if (from) {
            if ((r = journal_rename(j, from, pl->path[i])) < 0)
                return r;
        } else if (e->is_dir && k < 0) {
            if (mkdir(pl->path[i], 0755) < 0)
                return vd_error(errno, "vvfat: cannot create directory '%s'", pl->path[i]);
            if ((r = vv_journal_log(&j->disk, VV_J_MKDIR, NULL, pl->path[i])) < 0) {
                rmdir(pl->path[i]);
                return r;
            }
            if (!(path = strdup(pl->path[i])) || journal_add(j, J_MKDIR, NULL, path) < 0) {
                rmdir(pl->path[i]);
                free(path);
                return vd_error(ENOMEM, "out of memory");
            }
        }
    }
    return 0;
}

/* After the commit point: remove the old objects the guest deleted or
 * replaced (moved aside before).  One that cannot be removed goes back to
 * its old path when that is free (else keeps its temporary name), and the
 * first such failure is returned. */
static int remove_aside(struct vv_state *s, struct plan *pl, char **aside,
                        const int64_t *entry_of)
{
    int r = 0;

    for (uint32_t k = s->n_nodes; k-- > 1;) {
        int64_t i = entry_of[k];
        const struct vv_node *o = &s->nodes[k];
        if (!aside[k] || (i >= 0 && !pl->changed[i]))
            continue;                /* not moved, or moved to its new path */
        if ((o->is_dir ? rmdir(aside[k]) : unlink(aside[k])) == 0)
            continue;
        int e = errno;
        bool back = rename_new(aside[k], o->path) == 0;
        if (r == 0)
            r = vd_error(e, "vvfat: cannot remove '%s' (deleted by the guest); it is left "
                         "as '%s'", o->path, back ? o->path : aside[k]);
    }
    return r;
}

/* Apply the plan to the host directory (see the notes above): 0, a
 * negative errno with the directory unchanged, or (*after set) an error
 * from the last phase, with the guest's changes in place. */
static int apply_plan(struct vv_state *s, struct plan *pl, bool *after)
{
    int64_t *entry_of = vd_calloc_array(s->n_nodes, sizeof(int64_t));
    uint32_t *depth_of = vd_calloc_array(s->n_nodes, sizeof(uint32_t));
    char **aside = vd_calloc_array(s->n_nodes, sizeof(char *));
    struct journal j = { 0 };
    uint32_t max_depth = 0;
    int r = 0;

    *after = false;
    if (!entry_of || !depth_of || !aside) {
        free(entry_of);
        free(depth_of);
        free(aside);
        return vd_error(ENOMEM, "out of memory");
    }
    for (uint32_t k = 0; k < s->n_nodes; k++) {   /* parents come first */
        entry_of[k] = -1;
        depth_of[k] = k ? depth_of[s->nodes[k].parent] + 1 : 0;
        max_depth = VD_MAX(max_depth, depth_of[k]);
    }
    for (uint32_t i = 0; i < pl->t->n; i++)
        if (pl->match[i] >= 0)
            entry_of[pl->match[i]] = i;
    r = vv_journal_begin(&j.disk, s->dir);
    for (uint32_t i = 1; r == 0 && i < pl->t->n; i++)
        if (pl->changed[i])
            r = stage_contents(s, pl, &j, i);
    for (uint32_t d = max_depth; r == 0 && d >= 1; d--)
        r = move_aside(s, pl, &j, entry_of, depth_of, aside, d);
    if (r == 0)
        r = put_in_place(s, pl, &j, aside);
    if (r == 0)
        r = vv_journal_log(&j.disk, VV_J_COMMIT, NULL, NULL);
    if (r < 0) {
        journal_undo(&j);
    } else {
        for (uint32_t i = 1; i < pl->t->n; i++)
            if (pl->changed[i])
                set_mtime(pl->path[i], &pl->t->e[i]);
        r = remove_aside(s, pl, aside, entry_of);
        *after = r < 0;
    }
    vv_journal_end(&j.disk);
    for (uint32_t i = 0; i < pl->t->n; i++)
        pl->tmp[i] = NULL;           /* owned by the journal */
    journal_free(&j);
    for (uint32_t k = 0; k < s->n_nodes; k++)
        free(aside[k]);
    free(aside);
    free(depth_of);
    free(entry_of);
    return r;
}

/* Make the guest's tree the host tree: nodes, cluster owners, directory
 * buffers; overlay slots of owned clusters are freed. */
static int adopt_tree(struct vv_state *s, struct plan *pl)
{
    struct vv_tree *t = pl->t;
    struct vv_node *nodes = vd_calloc_array(t->n, sizeof(*nodes));

    if (!nodes)
        return vd_error(ENOMEM, "out of memory");
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        free(s->nodes[i].name);
        free(s->nodes[i].path);
        free(s->nodes[i].dirbuf);
    }
    free(s->nodes);
    memset(s->cl_node, 0, (s->g.cluster_count + 2) * sizeof(uint32_t));
    for (uint32_t i = 0; i < t->n; i++) {
        struct vv_entry *e = &t->e[i];
        struct vv_node *nd = &nodes[i];
        uint32_t c = e->first;
        nd->name = e->name;
        nd->path = pl->path[i];
        nd->parent = e->parent;
        nd->is_dir = e->is_dir;
        nd->size = e->size;
        nd->first_cluster = e->first;
        nd->n_clusters = e->n_clusters;
        nd->dirbuf = e->dirbuf;
        e->name = NULL;
        e->dirbuf = NULL;
        pl->path[i] = NULL;
        for (uint32_t k = 0; c && k < e->n_clusters; k++) {
            s->cl_node[c] = i + 1;
            s->cl_pos[c] = k;
            if (s->ovl_slot && s->ovl_slot[c]) {
                s->ovl_free[s->ovl_nfree++] = s->ovl_slot[c];
                s->ovl_slot[c] = 0;
            }
            c = vv_fat_get(s->fat, s->g.fat_type, c);
        }
    }
    s->nodes = nodes;
    s->n_nodes = s->cap_nodes = t->n;
    return 0;
}

/* Free a plan. */
static void plan_free(struct plan *pl)
{
    for (uint32_t i = 0; pl->t && pl->path && i < pl->t->n; i++)
        free(pl->path[i]);
    free(pl->match);
    free(pl->old_kept);
    free(pl->changed);
    free(pl->path);
    free(pl->tmp);
    vv_tree_free(pl->t);
}

/* See vvfat.h.  A failure before the host changed leaves the commit to be
 * retried at the next flush; one in the last phase (an old object that
 * could not be removed) is reported once, the guest's tree adopted. */
int vv_commit(struct vv_state *s)
{
    struct plan pl = { 0 };
    bool after = false;
    int r, late = 0;

    r = vv_parse_tree(&s->g, s->fat, s->root, read_whole, s, &pl.t);
    if (r == 0)
        r = make_plan(s, &pl);
    if (r == 0 && (r = apply_plan(s, &pl, &after)) < 0 && after) {
        late = r;
        r = 0;
    }
    if (r == 0)
        r = adopt_tree(s, &pl);
    if (r == 0)
        s->dirty = false;
    s->commit_failed = r < 0;
    plan_free(&pl);
    if (r == 0 && late < 0)
        r = late;
    return r < 0 ? vd_error_prefix(r, "vvfat: cannot apply the guest's changes to '%s'",
                                   s->dir) : 0;
}

/* See vvfat.h. */
void vv_rw_close(struct vv_state *s)
{
    if (s->ovl_fd >= 0)
        close(s->ovl_fd);
    free(s->ovl_slot);
    free(s->ovl_free);
}
