/* SPDX-License-Identifier: BSD-3-Clause */
/* The vvfat protocol driver: "fat:[floppy:][rw:][12:|16:|32:]DIR" (QEMU's
 * legacy name, plus "fat-type=N:" and "label=TEXT:") or driver=vvfat with
 * dir, fat-type, floppy, label and rw.  Reads come from the tables built
 * at open (build.c), the guest's writes (commit.c) and the host files.
 *
 * Invariant: with rw, lock guards the tables, the overlay index and the
 * node list; reads take it too, as a commit replaces the node list. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/vvfat/journal.h"
#include "format/vvfat/vvfat.h"
#include "util/checked.h"
#include "util/json.h"

/* ---- names ---- */

/* Is the colon-separated token tok (len bytes) equal to word? */
static bool tok_is(const char *tok, size_t len, const char *word)
{
    return strlen(word) == len && !memcmp(tok, word, len);
}

/* Set key to the len bytes at val. */
static int set_opt_n(vd_opts *opts, const char *key, const char *val, size_t len)
{
    char *v = strndup(val, len);
    int r = v ? vd_opts_set(opts, key, v) : -ENOMEM;

    free(v);
    return r;
}

/* One option token of the legacy name (unknown ones are ignored, as QEMU
 * looks only for the words it knows). */
static int parse_token(const char *tok, size_t len, vd_opts *opts)
{
    if (tok_is(tok, len, "floppy"))
        return vd_opts_set(opts, "floppy", "true");
    if (tok_is(tok, len, "rw"))
        return vd_opts_set(opts, "rw", "true");
    if (tok_is(tok, len, "12") || tok_is(tok, len, "16") || tok_is(tok, len, "32"))
        return set_opt_n(opts, "fat-type", tok, len);
    if (len > 9 && !memcmp(tok, "fat-type=", 9))
        return set_opt_n(opts, "fat-type", tok + 9, len - 9);
    if (len >= 6 && !memcmp(tok, "label=", 6))
        return set_opt_n(opts, "label", tok + 6, len - 6);
    return 0;
}

/* "fat:OPT:OPT:DIR": the directory is what follows the last colon. */
static int vvfat_parse_filename(const char *name, vd_opts *opts)
{
    const char *p, *last;
    int r;

    if (strncmp(name, "fat:", 4))
        return vd_error(EINVAL, "vvfat: the name must start with 'fat:'");
    last = strrchr(name, ':');
    if ((r = vd_opts_set(opts, "fat-type", "0")) < 0 ||
        (r = vd_opts_set(opts, "floppy", "false")) < 0 ||
        (r = vd_opts_set(opts, "rw", "false")) < 0)
        return r;
    for (p = name + 4; p < last; ) {
        const char *e = strchr(p, ':');
        if ((r = parse_token(p, (size_t)(e - p), opts)) < 0)
            return r;
        p = e + 1;
    }
    return vd_opts_set(opts, "dir", last + 1);
}

/* Append "key": value (JSON) to the name being built. */
static int name_add(char **out, const char *key, const char *val, bool as_string)
{
    vd_json *j = as_string ? vd_json_new_string(val) : NULL;
    char *jv = j ? vd_json_to_compact(j) : NULL, *t;
    int r;

    vd_json_free(j);
    if (as_string && !jv)
        return -ENOMEM;
    r = asprintf(&t, "%s%s\"%s\": %s", *out, (*out)[6] ? ", " : "", key, jv ? jv : val);
    free(jv);
    if (r < 0)
        return -ENOMEM;
    free(*out);
    *out = t;
    return 0;
}

/* v as QEMU prints it in the name: numbers and booleans bare (a JSON
 * boolean arrives here as "on"/"off"). */
static const char *bare_value(const char *key, const char *v)
{
    if (!strcmp(key, "fat-type"))
        return v[0] && strspn(v, "0123456789") == strlen(v) ? v : NULL;
    if (!strcmp(v, "true") || !strcmp(v, "on"))
        return "true";
    if (!strcmp(v, "false") || !strcmp(v, "off"))
        return "false";
    return NULL;
}

/* The node's name as QEMU prints it: json:{...} of the options given. */
static int make_name(vd_node *n, vd_opts *opts, const char *dir)
{
    static const char *const keys[] = { "fat-type", "dir", "driver", "floppy", "label", "rw" };
    char *out = strdup("json:{");
    int r = 0;

    for (size_t i = 0; out && r == 0 && i < VD_ARRAY_SIZE(keys); i++) {
        const char *v = !strcmp(keys[i], "driver") ? "vvfat" :
                        !strcmp(keys[i], "dir") ? dir : vd_opts_get(opts, keys[i]);
        const char *bare = v && strcmp(keys[i], "dir") ? bare_value(keys[i], v) : NULL;
        if (v)
            r = name_add(&out, keys[i], bare ? bare : v, !bare);
    }
    if (!out || r < 0 || asprintf(&n->filename, "%s}", out) < 0) {
        free(out);
        n->filename = NULL;
        return vd_error(ENOMEM, "out of memory");
    }
    free(out);
    return 0;
}

/* ---- open ---- */

/* Read and check the options into s. */
static int read_opts(vd_node *n, vd_opts *opts, int *fat_type, bool *floppy)
{
    struct vv_state *s = n->state;
    const char *dir = vd_opts_get(opts, "dir"), *label = vd_opts_get(opts, "label");
    uint64_t ft;
    int r;

    if (!dir)
        return vd_error(EINVAL, "vvfat block driver requires a 'dir' option");
    if ((r = vd_opts_get_u64(opts, "fat-type", 0, &ft)) < 0 ||
        (r = vd_opts_get_bool(opts, "floppy", false, floppy)) < 0 ||
        (r = vd_opts_get_bool(opts, "rw", false, &s->rw)) < 0)
        return r;
    if (ft != 0 && ft != 12 && ft != 16 && ft != 32)
        return vd_error(EINVAL, "Valid FAT types are only 12, 16 and 32");
    if (label && strlen(label) > 11)
        return vd_error(EINVAL, "vvfat label cannot be longer than 11 bytes");
    memset(s->label, ' ', 11);
    memcpy(s->label, label ? label : "QEMU VVFAT", label ? strlen(label) : 10);
    if (s->rw && n->read_only)
        return vd_error(EPERM, "Unable to set VVFAT to 'rw' when drive is read-only");
    *fat_type = (int)ft;
    return (s->dir = strdup(dir)) ? 0 : vd_error(ENOMEM, "out of memory");
}

/* Check the options, scan the directory and build the disk. */
static int vvfat_open(vd_node *n, vd_opts *opts, int flags)
{
    struct vv_state *s = n->state;
    bool floppy;
    int fat_type = 0, r;

    (void)flags;
    s->ovl_fd = -1;
    if (pthread_mutex_init(&s->lock, NULL))
        return vd_error(ENOMEM, "vvfat: cannot create a lock");
    s->lock_ok = true;
    if ((r = read_opts(n, opts, &fat_type, &floppy)) < 0 ||
        (r = vv_geom_init(&s->g, fat_type, floppy)) < 0)
        return r;
    free(n->filename);
    n->filename = NULL;
    if ((r = make_name(n, opts, s->dir)) < 0)
        return r;
    vd_opts_del(opts, "filename");
    if (!s->rw && !n->read_only)
        return vd_error(EACCES, "Image is read-only");
    n->request_alignment = VV_SECTOR;
    if (s->rw && (r = vv_journal_recover(s->dir)) < 0)
        return r;
    if (!s->rw && vv_journal_pending(s->dir))
        fprintf(stderr, "%s: warning: vvfat: '%s' holds an unfinished commit of guest changes; "
                "an rw open finishes or undoes it\n", program_invocation_short_name, s->dir);
    return vv_build(s);
}

/* Commit what is pending (unless a flush already failed to and said so),
 * then free everything. */
static void vvfat_close(vd_node *n)
{
    struct vv_state *s = n->state;

    if (s->rw && s->dirty && !s->commit_failed && vv_commit(s) < 0)
        fprintf(stderr, "%s: vvfat: %s\n", program_invocation_short_name, vd_errmsg());
    vv_rw_close(s);
    vv_free_tree(s);
    free(s->dir);
    if (s->lock_ok)
        pthread_mutex_destroy(&s->lock);
}

/* ---- reading ---- */

/* Bytes [in, in+len) of host file node nd at file offset fo; zeroes past
 * its end on the host. */
static int read_host(const struct vv_node *nd, uint64_t fo, uint32_t len, uint8_t *buf)
{
    int fd = open(nd->path, O_RDONLY | O_CLOEXEC);
    ssize_t got = 0;

    if (fd < 0)
        return vd_error(errno, "vvfat: cannot open '%s'", nd->path);
    while ((uint32_t)got < len) {
        ssize_t k = pread(fd, buf + got, len - (size_t)got, (off_t)fo + got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            close(fd);
            return vd_error(e, "vvfat: cannot read '%s'", nd->path);
        }
        if (k == 0)
            break;
        got += k;
    }
    close(fd);
    memset(buf + got, 0, len - (size_t)got);
    return 0;
}

/* See vvfat.h: the overlay, a directory buffer, a host file or zeroes.
 * Without an overlay slot, [in, in+len) may run into the following
 * clusters of the same owner (same_run). */
int vv_read_cluster(struct vv_state *s, uint32_t c, uint32_t in, uint32_t len, uint8_t *buf)
{
    uint32_t owner = s->cl_node[c];
    const struct vv_node *nd;
    uint64_t fo;

    if (s->ovl_slot && s->ovl_slot[c]) {
        off_t at = (off_t)(s->ovl_slot[c] - 1) * s->g.cluster + in;
        if (pread(s->ovl_fd, buf, len, at) != (ssize_t)len)
            return vd_error(EIO, "vvfat: cannot read the write overlay");
        return 0;
    }
    if (!owner) {
        memset(buf, 0, len);
        return 0;
    }
    nd = &s->nodes[owner - 1];
    fo = (uint64_t)s->cl_pos[c] * s->g.cluster + in;
    if (nd->is_dir) {
        memcpy(buf, nd->dirbuf + fo, len);
        return 0;
    }
    if (fo >= nd->size) {
        memset(buf, 0, len);
        return 0;
    }
    if (fo + len > nd->size) {       /* the file's size as listed, not as it grew */
        memset(buf + (nd->size - fo), 0, len - (size_t)(nd->size - fo));
        len = (uint32_t)(nd->size - fo);
    }
    return read_host(nd, fo, len, buf);
}

/* See vvfat.h: the boot sector and its FAT32 backup, the FSInfo sector
 * and its backup, or NULL (zeroes). */
uint8_t *vv_reserved_sector(struct vv_state *s, uint32_t sec)
{
    if (sec == 0 || (s->g.fat_type == 32 && sec == 6))
        return s->boot;
    if (s->g.fat_type == 32 && sec == 1)
        return s->fsinfo;
    if (s->g.fat_type == 32 && sec == 7)
        return s->fsinfo2;
    return NULL;
}

/* How many clusters after c continue c's owner in order (so that one read
 * of the host file covers them); at most 255. */
static uint32_t same_run(const struct vv_state *s, uint32_t c)
{
    uint32_t k = 0, last = s->g.cluster_count + 1;

    if (!s->cl_node[c] || (s->ovl_slot && s->ovl_slot[c]))
        return 0;
    while (k < 255 && c + k + 1 <= last && s->cl_node[c + k + 1] == s->cl_node[c] &&
           s->cl_pos[c + k + 1] == s->cl_pos[c] + k + 1 &&
           !(s->ovl_slot && s->ovl_slot[c + k + 1]))
        k++;
    return k;
}

/* Where disk byte off lies: a table in memory (*mem), a cluster (*cl, *in)
 * or zeroes; *avail bytes from off stay in that piece. */
static void locate(struct vv_state *s, uint64_t off, const uint8_t **mem, uint32_t *cl,
                   uint32_t *in, uint64_t *avail)
{
    const struct vv_geom *g = &s->g;
    uint64_t ps = (uint64_t)g->part_start * VV_SECTOR, p, fat = (uint64_t)g->spf * VV_SECTOR;
    uint64_t rsv = (uint64_t)g->reserved * VV_SECTOR;

    *mem = NULL;
    *cl = 0;
    if (off < ps) {
        *mem = off < VV_SECTOR ? s->mbr + off : NULL;
        *avail = off < VV_SECTOR ? VV_SECTOR - off : ps - off;
        return;
    }
    p = off - ps;
    if (p < rsv) {
        *mem = vv_reserved_sector(s, (uint32_t)(p / VV_SECTOR));
        *mem = *mem ? *mem + p % VV_SECTOR : NULL;
        *avail = VV_SECTOR - p % VV_SECTOR;
    } else if (p < rsv + 2 * fat) {
        uint64_t f = (p - rsv) % fat;
        *mem = s->fat + f;
        *avail = fat - f;
    } else if (p < (uint64_t)g->data_start * VV_SECTOR) {
        uint64_t r = p - (uint64_t)g->root_start * VV_SECTOR;
        *mem = s->root + r;
        *avail = (uint64_t)g->root_entries * VV_DIRENT - r;
    } else {
        uint64_t d = p - (uint64_t)g->data_start * VV_SECTOR;
        uint64_t c = d / s->g.cluster;
        if (c < g->cluster_count) {
            *cl = (uint32_t)c + 2;
            *in = (uint32_t)(d % s->g.cluster);
            *avail = s->g.cluster - *in + (uint64_t)same_run(s, *cl) * s->g.cluster;
        } else {
            *avail = (uint64_t)g->disk_sectors * VV_SECTOR - off;
        }
    }
}

/* Read guest bytes piece by piece. */
static int read_locked(struct vv_state *s, uint64_t off, uint64_t len, uint8_t *p)
{
    while (len) {
        const uint8_t *mem;
        uint32_t cl, in;
        uint64_t avail;
        int r;

        locate(s, off, &mem, &cl, &in, &avail);
        uint32_t l = (uint32_t)VD_MIN(len, avail);
        if (mem)
            memcpy(p, mem, l);
        else if (cl && (r = vv_read_cluster(s, cl, in, l, p)) < 0)
            return r;
        else if (!cl)
            memset(p, 0, l);
        p += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* Read (under the lock when writes can change the layout). */
static int vvfat_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct vv_state *s = n->state;
    int r;

    (void)flags;
    if (!s->rw)
        return read_locked(s, off, len, buf);
    pthread_mutex_lock(&s->lock);
    r = read_locked(s, off, len, buf);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Writes (rw only: the core refuses them on a read-only node). */
static int vvfat_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct vv_state *s = n->state;
    int r;

    (void)flags;
    pthread_mutex_lock(&s->lock);
    r = vv_write(s, off, len, buf);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Zero writes are writes of zeroes. */
static int vvfat_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    uint8_t *z = calloc(1, 64 * 1024);
    int r = z ? 0 : vd_error(ENOMEM, "out of memory");

    while (r == 0 && len) {
        uint64_t l = VD_MIN(len, (uint64_t)64 * 1024);
        r = vvfat_pwrite(n, off, l, z, flags);
        off += l;
        len -= l;
    }
    free(z);
    return r;
}

/* A flush applies the guest's changes to the directory. */
static int vvfat_flush(vd_node *n)
{
    struct vv_state *s = n->state;
    int r = 0;

    if (!s->rw)
        return 0;
    pthread_mutex_lock(&s->lock);
    if (s->dirty)
        r = vv_commit(s);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Everything is data, at no offset of any file (QEMU's answer). */
static int vvfat_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                              uint64_t *map, vd_node **file)
{
    (void)n; (void)off;
    *pnum = len;
    *map = 0;
    *file = NULL;
    return VD_BS_DATA;
}

/* The disk size QEMU gives. */
static int64_t vvfat_getlength(vd_node *n)
{
    struct vv_state *s = n->state;

    return (int64_t)s->g.disk_sectors * VV_SECTOR;
}

/* No cluster size: QEMU's get_info fails, so info has no dirty flag. */
static int64_t vvfat_cluster_size(vd_node *n)
{
    (void)n;
    return -ENOTSUP;
}

static const struct vd_opt_desc vvfat_open_opts[] = {
    { "dir", VD_OPT_STRING, "Host directory to map to the vvfat device", NULL },
    { "fat-type", VD_OPT_NUMBER, "FAT type (12, 16 or 32)", NULL },
    { "floppy", VD_OPT_BOOL, "Create a floppy rather than a hard disk image", NULL },
    { "label", VD_OPT_STRING, "Use a volume label other than QEMU VVFAT", NULL },
    { "rw", VD_OPT_BOOL, "Make the image writable", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver vvfat_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "vvfat",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "fat",
    .state_size = sizeof(struct vv_state),
    .open_opts = vvfat_open_opts,
    .parse_filename = vvfat_parse_filename,
    .open = vvfat_open,
    .close = vvfat_close,
    .pread = vvfat_pread,
    .pwrite = vvfat_pwrite,
    .pwrite_zeroes = vvfat_pwrite_zeroes,
    .flush = vvfat_flush,
    .getlength = vvfat_getlength,
    .block_status = vvfat_block_status,
    .cluster_size = vvfat_cluster_size,
};
VD_DRIVER_REGISTER(vvfat_driver)
