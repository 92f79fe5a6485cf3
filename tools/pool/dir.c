/* SPDX-License-Identifier: BSD-3-Clause */
/* The dir pool backend: a directory whose files are the volumes.  Volumes
 * are created, probed, resized and copied through libvdisk; wipe, upload
 * and download work on the files' bytes as libvirt's do. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vdisk/vdisk.h"
#include "vdisk/copy.h"
#include "vdisk/driver.h"
#include "util/json.h"
#include "pool.h"

#define DEFAULT_POOL_MODE 0711
#define DEFAULT_VOL_MODE 0600
#define IO_CHUNK (1024 * 1024)

int dir_build(struct pool_def *d, bool overwrite, bool no_overwrite)
{
    mode_t mode = d->perms.mode >= 0 ? (mode_t)d->perms.mode : DEFAULT_POOL_MODE;

    (void)overwrite;
    (void)no_overwrite;
    if (mkdir(d->target_path, mode) < 0 && errno != EEXIST) {
        pool_set_error("cannot create path '%s': %s", d->target_path, strerror(errno));
        return -1;
    }
    if (chmod(d->target_path, mode) < 0 ||
        ((d->perms.owner >= 0 || d->perms.group >= 0) &&
         chown(d->target_path, (uid_t)d->perms.owner, (gid_t)d->perms.group) < 0)) {
        pool_set_error("cannot set permissions of '%s': %s", d->target_path,
                       strerror(errno));
        return -1;
    }
    return 0;
}

int dir_refresh(struct pool_def *d)
{
    struct statvfs sv;
    struct stat st;
    int e = stat(d->target_path, &st) < 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;

    if (e) {
        pool_set_error("cannot open directory '%s': %s", d->target_path, strerror(e));
        return -1;
    }
    if (statvfs(d->target_path, &sv) < 0) {
        pool_set_error("cannot statvfs path '%s': %s", d->target_path, strerror(errno));
        return -1;
    }
    d->capacity = (uint64_t)sv.f_frsize * sv.f_blocks;
    d->available = (uint64_t)sv.f_frsize * sv.f_bavail;
    d->allocation = d->capacity - (uint64_t)sv.f_frsize * sv.f_bfree;
    d->perms.mode = st.st_mode & 0777;
    d->perms.owner = st.st_uid;
    d->perms.group = st.st_gid;
    return 0;
}

int dir_start(struct pool_def *d)
{
    return dir_refresh(d);
}

int dir_stop(struct pool_def *d)
{
    d->capacity = d->allocation = d->available = 0;
    return 0;
}

int dir_delete(struct pool_def *d)
{
    if (rmdir(d->target_path) < 0) {
        pool_set_error("failed to remove pool '%s': %s", d->target_path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Copy stat fields into perms and times. */
static void from_stat(const struct stat *st, struct pool_perms *p, struct timespec *a,
                      struct timespec *m, struct timespec *c)
{
    p->mode = st->st_mode & 0777;
    p->owner = st->st_uid;
    p->group = st->st_gid;
    *a = st->st_atim;
    *m = st->st_mtim;
    *c = st->st_ctim;
}

/* The backing file of v: its path, format and stat. */
static void probe_backing(struct vol_def *v, vd_node *n)
{
    const char *full = vd_node_backing_full_name(n), *fmt = vd_node_backing_format(n);
    struct stat st;

    if (!full || !*full)
        return;
    v->backing_path = xstrdup(full);
    v->backing_format = fmt ? xstrdup(fmt) : NULL;
    if (stat(full, &st) == 0) {
        v->backing_stat = true;
        from_stat(&st, &v->backing_perms, &v->batime, &v->bmtime, &v->bctime);
    }
}

/* What libvirt's probe reports of a qcow2 image: the cluster size always,
 * compat and features only when a feature is on. */
static void probe_qcow2(struct vol_def *v, vd_node *n)
{
    vd_json *data;

    v->cluster_size = (uint64_t)vd_node_cluster_size(n);
    if (!n->drv->info || !(data = vd_json_new_object()))
        return;
    if (n->drv->info(n, data) == 0) {
        vd_json *l = vd_json_get(data, "lazy-refcounts"), *e = vd_json_get(data, "extended-l2");
        vd_json *enc = vd_json_get(data, "encrypt"), *f = enc ? vd_json_get(enc, "format") : NULL;
        v->lazy_refcounts = l && vd_json_bool(l);
        v->extended_l2 = e && vd_json_bool(e);
        if (vd_node_encrypted(n))
            v->enc_format = xstrdup(f && vd_json_str(f) && !strcmp(vd_json_str(f), "luks")
                                    ? "luks" : "qcow");
    }
    vd_json_free(data);
    if (v->lazy_refcounts || v->extended_l2)
        v->compat = xstrdup("1.1");
}

int vol_probe(struct vol_def *v)
{
    struct stat st;
    vd_node *n = NULL;

    if (stat(v->path, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
        return -1;
    if (S_ISDIR(st.st_mode)) {
        /* a subdirectory is a volume of type dir, with no size */
        v->type = "dir";
        v->format = xstrdup("dir");
        from_stat(&st, &v->perms, &v->atime, &v->mtime, &v->ctime_);
        return 0;
    }
    v->type = "file";
    v->physical = (uint64_t)st.st_size;
    v->allocation = (uint64_t)st.st_blocks * 512;
    v->capacity = (uint64_t)st.st_size;
    from_stat(&st, &v->perms, &v->atime, &v->mtime, &v->ctime_);
    free(v->format);
    v->format = NULL;
    if (vd_open(&n, v->path, NULL, NULL,
                VD_O_NO_BACKING | VD_O_FORCE_SHARE | VD_O_NO_IO) == 0) {
        int64_t len = vd_getlength(n);
        if (len >= 0)
            v->capacity = (uint64_t)len;
        v->format = xstrdup(vd_node_format(n));
        if (!strcmp(v->format, "qcow2"))
            probe_qcow2(v, n);
        if (!strcmp(v->format, "luks")) {
            /* libvirt shows a LUKS file as an encrypted raw volume */
            free(v->format);
            v->format = xstrdup("raw");
            v->enc_format = xstrdup("luks");
        }
        probe_backing(v, n);
        vd_close(n);
    }
    vd_error_clear();
    if (v->format && !vol_format_known(v->format)) {
        /* a format libvirt does not know is shown as raw, at its file size */
        free(v->format);
        v->format = NULL;
        v->capacity = (uint64_t)st.st_size;
    }
    if (!v->format)
        v->format = xstrdup("raw");
    return 0;
}

/* qsort by volume name. */
static int vol_cmp(const void *a, const void *b)
{
    return strcmp((*(struct vol_def *const *)a)->name, (*(struct vol_def *const *)b)->name);
}

struct vol_def **dir_vols(const struct pool_def *d, size_t *n)
{
    DIR *dir = opendir(d->target_path);
    struct vol_def **list = NULL;
    struct dirent *e;

    *n = 0;
    while (dir && (e = readdir(dir))) {
        struct vol_def *v;

        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        v = calloc(1, sizeof(*v));
        if (!v)
            pool_oom();
        v->name = xstrdup(e->d_name);
        v->path = xasprintf("%s/%s", d->target_path, e->d_name);
        v->key = xstrdup(v->path);
        if (vol_probe(v) < 0) {
            vol_def_free(v);
            continue;
        }
        list = realloc(list, (*n + 1) * sizeof(*list));
        if (!list)
            pool_oom();
        list[(*n)++] = v;
    }
    if (dir)
        closedir(dir);
    if (*n)
        qsort(list, *n, sizeof(*list), vol_cmp);
    return list;
}

void vols_free(struct vol_def **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        vol_def_free(v[i]);
    free(v);
}

/* A raw volume: the file at capacity, its first allocation bytes allocated. */
static int create_raw(struct vol_def *v, mode_t mode)
{
    int fd = open(v->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    uint64_t alloc = v->allocation < v->capacity ? v->allocation : v->capacity;
    int r = 0;

    if (fd < 0) {
        pool_set_error("cannot create path '%s': %s", v->path, strerror(errno));
        return -1;
    }
    if (ftruncate(fd, (off_t)v->capacity) < 0 ||
        (alloc && (r = posix_fallocate(fd, 0, (off_t)alloc)) != 0)) {
        pool_set_error("cannot allocate %" PRIu64 " bytes in file '%s': %s", alloc, v->path,
                       strerror(r ? r : errno));
        close(fd);
        unlink(v->path);
        return -1;
    }
    if (fsync(fd) < 0) {
        pool_set_error("cannot sync file '%s': %s", v->path, strerror(errno));
        close(fd);
        unlink(v->path);
        return -1;
    }
    close(fd);
    return 0;
}

void vol_luks_opts(vd_opts *o, const struct vol_def *v, const char *prefix)
{
    char k[64], val[160];

    if (*prefix) {
        snprintf(k, sizeof(k), "%sformat", prefix);
        vd_opts_set(o, k, "luks");
    }
    snprintf(k, sizeof(k), "%skey-secret", prefix);
    vd_opts_set(o, k, VOL_KEY_ID);
    if (v->enc_cipher[0]) {
        snprintf(k, sizeof(k), "%scipher-alg", prefix);
        snprintf(val, sizeof(val), "%s-%s", v->enc_cipher[0], v->enc_cipher[1]);
        vd_opts_set(o, k, val);
    }
    const char *const more[][2] = {
        { "cipher-mode", v->enc_cipher[2] }, { "hash-alg", v->enc_cipher[3] },
        { "ivgen-alg", v->enc_ivgen[0] }, { "ivgen-hash-alg", v->enc_ivgen[1] },
    };
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++) {
        if (!more[i][1])
            continue;
        snprintf(k, sizeof(k), "%s%s", prefix, more[i][0]);
        vd_opts_set(o, k, more[i][1]);
    }
}

/* The options of a non-raw image as libvirt passes them to qemu-img. */
static vd_opts *image_opts(const struct vol_def *v, bool prealloc_meta)
{
    vd_opts *o = vd_opts_new();
    char size[32];

    if (!o)
        pool_oom();
    snprintf(size, sizeof(size), "%" PRIu64, (v->capacity + 1023) / 1024 * 1024);
    vd_opts_set(o, "size", size);
    if (!strcmp(v->format, "qcow2")) {
        vd_opts_set(o, "compat", v->compat ? v->compat : "0.10");
        if (v->lazy_refcounts)
            vd_opts_set(o, "lazy_refcounts", "on");
        if (v->extended_l2)
            vd_opts_set(o, "extended_l2", "on");
    }
    if (prealloc_meta)
        vd_opts_set(o, "preallocation", "metadata");
    if (v->enc_format)
        vol_luks_opts(o, v, !strcmp(v->format, "qcow2") ? "encrypt." : "");
    if (v->backing_path) {
        vd_opts_set(o, "backing_file", v->backing_path);
        vd_opts_set(o, "backing_fmt", v->backing_format ? v->backing_format : "raw");
    }
    return o;
}

/* Is v a block volume (an LV, a partition)? */
static bool is_block(const struct vol_def *v)
{
    return v->type && !strcmp(v->type, "block");
}

/* The format libvdisk reads or writes volume v's data as: a block
 * volume's bytes are raw, as libvirt copies them, never probed; an
 * encrypted raw volume is a LUKS file. */
static const char *data_format(const struct vol_def *v)
{
    if (is_block(v) || !v->format || !strcmp(v->format, "none"))
        return "raw";
    if (v->enc_format && !strcmp(v->format, "raw"))
        return "luks";
    return v->format;
}

/* The options that open v through its encryption with secret object id
 * (secret_prepare_vol gave it); o made if NULL. */
static vd_opts *key_opts(vd_opts *o, const struct vol_def *v, const char *id)
{
    if (!o && !(o = vd_opts_new()))
        pool_oom();
    if (v->enc_format && !is_block(v))
        vd_opts_set(o, !strcmp(data_format(v), "luks") ? "key-secret" : "encrypt.key-secret",
                    id);
    return o;
}

int vol_copy_data(const struct vol_def *from, const struct vol_def *v)
{
    vd_node *s = NULL, *t = NULL;
    vd_opts *o = vd_opts_new();
    int64_t slen = 0, tlen = 0;
    int r;

    if (!o)
        pool_oom();
    /* qemu-img convert's default cache mode (unsafe), which libvirt uses
     * for files; a block volume is synced, as libvirt's copy into it is */
    if (!is_block(v))
        vd_opts_set(o, "cache.no-flush", "on");
    o = key_opts(o, v, VOL_KEY_ID);
    vd_error_clear();
    r = vd_open(&s, from->path, data_format(from), key_opts(NULL, from, VOL_SRC_KEY_ID),
                VD_O_FORCE_SHARE);
    if (r == 0)
        r = vd_open(&t, v->path, data_format(v), o, VD_O_RDWR | VD_O_NO_BACKING);
    else
        vd_opts_free(o);
    if (r == 0 && ((slen = vd_getlength(s)) < 0 || (tlen = vd_getlength(t)) < 0))
        r = (int)(slen < 0 ? slen : tlen);
    if (r == 0) {
        /* a block target may be larger than the source (extents, cylinders)
         * and holds old bytes: the source's length is written in full */
        struct vd_copy_params p = {
            .src = &s, .nsrc = 1, .dst = t, .min_sparse = 4096,
            .length = (uint64_t)(slen < tlen ? slen : tlen),
            .target_is_zero = !v->backing_path && !is_block(v), .copy_offload = true,
        };
        r = p.length ? vd_copy(&p) : 0;
        if (r == 0)
            r = vd_flush(t);
    }
    if (r < 0)
        pool_set_error("failed to copy volume: %s", vd_errmsg());
    vd_close(t);
    vd_close(s);
    return r < 0 ? -1 : 0;
}

/* Does libvirt copy from into the raw file v itself (not with qemu-img)?
 * Plain raw files and block volumes into a plain raw file. */
static bool raw_copy(const struct vol_def *v, const struct vol_def *from)
{
    return !strcmp(v->format, "raw") && !v->enc_format &&
           (is_block(from) || (!from->enc_format && !strcmp(data_format(from), "raw")));
}

/* The raw file of a copy, before the data goes in: at its capacity, and
 * preallocated as libvirt's raw copy does (fallocate of the allocation
 * when that is not less than the source's capacity: a clone of a sparse
 * file, or an <allocation> below the source's size, stays sparse).
 * *fill: fallocate is not supported here, the allocation is written
 * after the copy (fill_raw). */
static int create_raw_copy(struct vol_def *v, const struct vol_def *from, bool *fill)
{
    int fd = open(v->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, DEFAULT_VOL_MODE);
    bool alloc = v->allocation && v->allocation >= from->capacity;

    *fill = false;
    if (fd < 0) {
        pool_set_error("Failed to create file '%s': %s", v->path, strerror(errno));
        return -1;
    }
    if (ftruncate(fd, (off_t)v->capacity) < 0) {
        pool_set_error("cannot extend file '%s': %s", v->path, strerror(errno));
        close(fd);
        return -1;
    }
    if (alloc && fallocate(fd, 0, 0, (off_t)v->allocation) < 0) {
        if (errno != ENOSYS && errno != EOPNOTSUPP) {
            pool_set_error("cannot allocate %" PRIu64 " bytes in file '%s': %s",
                           v->allocation, v->path, strerror(errno));
            close(fd);
            return -1;
        }
        *fill = true;
    }
    close(fd);
    return 0;
}

/* Where fallocate is not supported: allocate the first allocation bytes
 * of the copy v by writing them, keeping the data there. */
static int fill_raw(const struct vol_def *v)
{
    int fd = open(v->path, O_WRONLY | O_CLOEXEC), r;

    if (fd < 0 || (r = posix_fallocate(fd, 0, (off_t)v->allocation)) != 0) {
        pool_set_error("cannot fill file '%s': %s", v->path,
                       strerror(fd < 0 ? errno : r));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* Make the image file of v (format via libvdisk, raw directly). */
static int make_image(struct vol_def *v, bool prealloc_meta, const struct vol_def *from)
{
    vd_opts *o;
    int r;

    if (!strcmp(v->format, "raw") && !from && !v->enc_format)
        return create_raw(v, DEFAULT_VOL_MODE);
    o = image_opts(v, prealloc_meta);
    vd_error_clear();
    /* an encrypted raw volume is a LUKS file, as libvirt makes it */
    r = vd_create(v->enc_format && !strcmp(v->format, "raw") ? "luks" : v->format, v->path, o);
    vd_opts_free(o);
    if (r < 0) {
        pool_set_error("cannot create volume '%s': %s", v->name, vd_errmsg());
        return -1;
    }
    return 0;
}

int dir_vol_create(const struct pool_def *d, struct vol_def *v, bool prealloc_meta,
                   const struct vol_def *from)
{
    mode_t mode = v->perms.mode >= 0 ? (mode_t)v->perms.mode : DEFAULT_VOL_MODE;
    struct stat st;
    bool fill;

    free(v->path);
    free(v->key);
    v->path = xasprintf("%s/%s", d->target_path, v->name);
    v->key = xstrdup(v->path);
    if (!v->format)
        v->format = xstrdup("raw");
    if (lstat(v->path, &st) == 0) {
        pool_set_error("Requested operation is not valid: volume target path '%s' already exists",
                       v->path);
        return -1;
    }
    fill = false;
    if ((from && raw_copy(v, from) ? create_raw_copy(v, from, &fill)
                                   : make_image(v, prealloc_meta, from)) < 0) {
        unlink(v->path);           /* no partial volume left behind */
        return -1;
    }
    if ((from && vol_copy_data(from, v) < 0) || (fill && fill_raw(v) < 0) ||
        chmod(v->path, mode) < 0 ||
        ((v->perms.owner >= 0 || v->perms.group >= 0) &&
         chown(v->path, (uid_t)v->perms.owner, (gid_t)v->perms.group) < 0)) {
        if (!from)
            pool_set_error("cannot set permissions of '%s': %s", v->path, strerror(errno));
        unlink(v->path);
        return -1;
    }
    return 0;
}

int dir_vol_delete(const struct vol_def *v)
{
    if (!strcmp(v->type, "dir") ? rmdir(v->path) < 0 : unlink(v->path) < 0) {
        pool_set_error("cannot unlink file '%s': %s", v->path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Fill buf for one pass of algorithm (zero or random). */
static int fill(char *buf, size_t len, bool rnd, int rfd)
{
    if (!rnd) {
        memset(buf, 0, len);
        return 0;
    }
    return read(rfd, buf, len) == (ssize_t)len ? 0 : -1;
}

/* Overwrite the first len bytes of fd with zeroes or random bytes. */
static int overwrite(int fd, uint64_t len, bool rnd)
{
    char *buf = malloc(IO_CHUNK);
    int rfd = rnd ? open("/dev/urandom", O_RDONLY | O_CLOEXEC) : -1;
    int r = buf && (!rnd || rfd >= 0) ? 0 : -1;

    for (uint64_t off = 0; r == 0 && off < len; off += IO_CHUNK) {
        size_t n = len - off < IO_CHUNK ? (size_t)(len - off) : IO_CHUNK;
        if (fill(buf, n, rnd, rfd) < 0 || pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
            r = -1;
    }
    if (r == 0 && fsync(fd) < 0)
        r = -1;
    if (rfd >= 0)
        close(rfd);
    free(buf);
    return r;
}

/* The pattern algorithms: scrub(1) does them, as for libvirt. */
static int wipe_scrub(const struct vol_def *v, const char *alg)
{
    char *scrub = pool_find_program("scrub");
    int status = -1;
    pid_t pid;

    if (!scrub) {
        pool_set_error("Cannot find 'scrub' in path: %s", strerror(ENOENT));
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        execl(scrub, "scrub", "-f", "-p", alg, v->path, (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    free(scrub);
    if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        pool_set_error("internal error: Child process (scrub -f -p %s %s) unexpected exit "
                       "status %d", alg, v->path, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        return -1;
    }
    return 0;
}

int dir_vol_wipe(const struct vol_def *v, const char *alg)
{
    int fd;
    struct stat st;
    int r;

    if (strcmp(alg, "trim") && strcmp(alg, "zero") && strcmp(alg, "random"))
        return wipe_scrub(v, alg);
    fd = open(v->path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        pool_set_error("cannot open volume '%s': %s", v->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!strcmp(alg, "trim"))
        r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, st.st_size);
    else    /* as libvirt, over the bytes the file has allocated */
        r = overwrite(fd, v->allocation, !strcmp(alg, "random"));
    if (r < 0)
        pool_set_error("Failed to wipe vol %s with algorithm %s: %s", v->name, alg,
                       strerror(errno));
    close(fd);
    return r;
}

/* Resize a raw file: truncate, allocating the new range when asked. */
static int resize_raw(struct vol_def *v, uint64_t cap, bool allocate)
{
    int fd = open(v->path, O_WRONLY | O_CLOEXEC), r = 0;

    if (fd < 0)
        r = errno;
    else if (allocate && cap > v->capacity)
        r = posix_fallocate(fd, 0, (off_t)cap);
    if (fd >= 0 && r == 0 && ftruncate(fd, (off_t)cap) < 0)
        r = errno;
    if (fd >= 0)
        close(fd);
    if (r) {
        pool_set_error("failed to resize volume '%s': %s", v->path, strerror(r));
        return -1;
    }
    return 0;
}

/* Resize an image through libvdisk. */
static int resize_image(struct vol_def *v, uint64_t cap, bool allocate)
{
    vd_node *n = NULL;
    vd_opts *o = NULL;
    const char *fmt = v->format;
    int r;

    vd_error_clear();
    if (v->enc_format) {
        /* through the encryption, with the key secret_prepare_vol gave */
        bool raw = !strcmp(v->format, "raw");
        if (!(o = vd_opts_new()))
            pool_oom();
        vd_opts_set(o, raw ? "key-secret" : "encrypt.key-secret", VOL_KEY_ID);
        fmt = raw ? "luks" : v->format;
    }
    r = vd_open(&n, v->path, fmt, o, VD_O_RDWR | VD_O_RESIZE | VD_O_NO_BACKING);
    if (r == 0)
        r = vd_truncate(n, cap, false, allocate ? VD_PREALLOC_FALLOC : VD_PREALLOC_OFF);
    vd_close(n);
    if (r < 0) {
        pool_set_error("failed to resize volume '%s': %s", v->path, vd_errmsg());
        return -1;
    }
    return 0;
}

int dir_vol_resize(const struct pool_def *d, struct vol_def *v, uint64_t cap,
                   bool allocate, bool shrink)
{
    (void)d;
    if (cap < v->allocation) {
        pool_set_error("invalid argument: can't shrink capacity below existing allocation");
        return -1;
    }
    if (cap < v->capacity && !shrink) {
        pool_set_error("invalid argument: Can't shrink capacity below current capacity "
                       "unless shrink flag explicitly specified");
        return -1;
    }
    if (allocate && strcmp(v->format, "raw")) {
        pool_set_error("Operation not supported: preallocate is only supported for raw "
                       "type volume");
        return -1;
    }
    if (!strcmp(v->format, "raw") && !v->enc_format)
        return resize_raw(v, cap, allocate);
    return resize_image(v, cap, allocate);
}

/* Next data range of fd at or after off (sparse copy); false at the end. */
static bool next_data(int fd, uint64_t off, uint64_t end, uint64_t *ds, uint64_t *de)
{
    off_t s = lseek(fd, (off_t)off, SEEK_DATA), e;

    if (s < 0 || (uint64_t)s >= end)
        return false;
    e = lseek(fd, s, SEEK_HOLE);
    *ds = (uint64_t)s;
    *de = e < 0 || (uint64_t)e > end ? end : (uint64_t)e;
    return true;
}

/* Copy [from, to) of in (at in_base + x) to out (at out_base + x). */
static int copy_span(int in, int out, uint64_t in_off, uint64_t out_off, uint64_t len,
                     char *buf)
{
    /* in the kernel first (both regular files), then through buf */
    while (len) {
        loff_t io = (loff_t)in_off, oo = (loff_t)out_off;
        ssize_t r = copy_file_range(in, &io, out, &oo, len, 0);
        if (r <= 0)
            break;
        in_off += (uint64_t)r;
        out_off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    while (len) {
        size_t n = len < IO_CHUNK ? (size_t)len : IO_CHUNK;
        ssize_t r = pread(in, buf, n, (off_t)in_off);
        if (r <= 0)
            return r == 0 ? 1 : -1;
        if (pwrite(out, buf, (size_t)r, (off_t)out_off) != r)
            return -1;
        in_off += (uint64_t)r;
        out_off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

ssize_t read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

bool is_zero(const void *buf, size_t n)
{
    const unsigned char *p = buf;

    return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

/* Write all n bytes of buf to fd (a pipe); -1 on error. */
static int write_all(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t r = write(fd, buf, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Upload from a pipe: up to len bytes (0: to its end) of in into out at
 * out_off; sparse: zero blocks become holes and out ends where the data
 * ends.  -3 when more than len bytes come. */
static int from_pipe(int in, int out, uint64_t out_off, uint64_t len, bool sparse,
                     char *buf)
{
    uint64_t done = 0;
    ssize_t n = 0;

    while (!len || done < len) {
        size_t want = len && len - done < STREAM_BLOCK ? (size_t)(len - done) : STREAM_BLOCK;
        if ((n = read_full(in, buf, want)) <= 0)
            break;
        if (sparse && is_zero(buf, (size_t)n))
            fallocate(out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)(out_off + done), (off_t)n);
        else if (pwrite(out, buf, (size_t)n, (off_t)(out_off + done)) != n)
            return -1;
        done += (uint64_t)n;
    }
    if (n < 0 || (sparse && ftruncate(out, (off_t)(out_off + done)) < 0))
        return -1;
    if (len && done == len && read_full(in, buf, 1) > 0)
        return -3;
    return 0;
}

/* Download to a pipe: [in_off, end) of in, holes sent as zeros. */
static int to_pipe(int in, int out, uint64_t in_off, uint64_t end, char *buf)
{
    while (in_off < end) {
        size_t want = end - in_off < STREAM_BLOCK ? (size_t)(end - in_off) : STREAM_BLOCK;
        ssize_t r = pread(in, buf, want, (off_t)in_off);
        if (r <= 0)
            return r == 0 ? 0 : -1;
        if (write_all(out, buf, (size_t)r) < 0)
            return -1;
        in_off += (uint64_t)r;
    }
    return 0;
}

/* Is fd something pread/pwrite cannot address (a pipe, a socket)? */
static bool is_pipe(int fd)
{
    return lseek(fd, 0, SEEK_CUR) < 0 && errno == ESPIPE;
}

/* Stream len bytes (0: to the end of in) of in at in_off to out at out_off;
 * sparse: holes of in are left as holes in out. */
static int stream(int in, int out, uint64_t in_off, uint64_t out_off, uint64_t len,
                  bool sparse)
{
    struct stat st;
    char *buf;
    uint64_t end, pos = in_off, ds, de;
    int r = 0;

    if (fstat(in, &st) < 0)
        return -1;
    end = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : UINT64_MAX;
    if (len && in_off <= end && len < end - in_off)
        end = in_off + len;
    if (!(buf = malloc(IO_CHUNK)))
        pool_oom();
    if (is_pipe(in) || is_pipe(out)) {
        r = is_pipe(in) ? from_pipe(in, out, out_off, len, sparse, buf)
                        : to_pipe(in, out, in_off, end, buf);
        free(buf);
        return r;
    }
    if (!sparse || !S_ISREG(st.st_mode)) {
        r = copy_span(in, out, in_off, out_off, end - in_off, buf);
        free(buf);
        return r < 0 ? -1 : 0;
    }
    while (r == 0 && next_data(in, pos, end, &ds, &de)) {
        if (ds > pos)
            fallocate(out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)(out_off + pos - in_off), (off_t)(ds - pos));
        r = copy_span(in, out, ds, out_off + ds - in_off, de - ds, buf);
        pos = de;
    }
    free(buf);
    if (r < 0)
        return -1;
    /* a sparse stream ends the target where the data ends, as libvirt's */
    if (ftruncate(out, (off_t)(out_off + end - in_off)) < 0)
        return -1;
    return 0;
}

/* pwrite all n bytes at off (short writes continued); -1 with errno. */
static int pwrite_all(int fd, const char *buf, size_t n, uint64_t off)
{
    while (n) {
        ssize_t r = pwrite(fd, buf, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = ENOSPC;
            return -1;
        }
        buf += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* The size of block device fd and a check of off against it, as
 * libvirt's seek on the device fails past its end; -1 (recorded). */
static int block_seek(const struct vol_def *v, int fd, uint64_t off, uint64_t *size)
{
    off_t s = lseek(fd, 0, SEEK_END);

    if (s < 0 || off > (uint64_t)s) {
        pool_set_error("Unable to seek %s to %" PRIu64 ": %s", v->path, off,
                       strerror(s < 0 ? errno : EINVAL));
        return -1;
    }
    *size = (uint64_t)s;
    return 0;
}

/* Upload into a block volume (an LV, a partition) from off: the input's
 * bytes, its holes written as zeros (a device keeps no holes, with or
 * without --sparse).  -3 when the device ends before the data or more
 * than len bytes come, -1 on other errors (recorded). */
static int upload_block(const struct vol_def *v, int in, int out, uint64_t off,
                        uint64_t len)
{
    char *buf = malloc(STREAM_BLOCK);
    uint64_t size, done = 0;
    ssize_t n = 0;
    int r = 0;

    if (!buf)
        pool_oom();
    if (block_seek(v, out, off, &size) < 0) {
        free(buf);
        return -1;
    }
    while (r == 0 && (!len || done < len)) {
        size_t want = len && len - done < STREAM_BLOCK ? (size_t)(len - done) : STREAM_BLOCK;
        if ((n = read_full(in, buf, want)) <= 0)
            break;
        if (pwrite_all(out, buf, (size_t)n, off + done) < 0) {
            pool_set_error("Unable to write %s: %s", v->path, strerror(errno));
            r = -3;
        }
        done += (uint64_t)n;
    }
    if (r == 0 && n < 0) {
        pool_set_error("cannot read the data to upload: %s", strerror(errno));
        r = -1;
    } else if (r == 0 && len && done == len && read_full(in, buf, 1) > 0) {
        pool_set_error("cannot write to stream: %s", strerror(ENOSPC));
        r = -3;
    } else if (r == 0 && fdatasync(out) < 0) {
        pool_set_error("cannot sync data to '%s': %s", v->path, strerror(errno));
        r = -1;
    }
    free(buf);
    return r;
}

/* Download from a block volume: [off, off + len) of the device (to its
 * end when len is 0 or reaches past it), zeros sent as data. */
static int download_block(const struct vol_def *v, int in, int out, uint64_t off,
                          uint64_t len)
{
    char *buf;
    uint64_t size, end;
    int r;

    if (block_seek(v, in, off, &size) < 0)
        return -1;
    end = len && len < size - off ? off + len : size;
    if (!(buf = malloc(IO_CHUNK)))
        pool_oom();
    r = is_pipe(out) ? to_pipe(in, out, off, end, buf)
                     : copy_span(in, out, off, 0, end - off, buf) < 0 ? -1 : 0;
    free(buf);
    if (r < 0)
        pool_set_error("cannot read volume '%s': %s", v->path, strerror(errno));
    return r;
}

/* Is fd a block device? */
static bool is_blockdev(int fd)
{
    struct stat st;

    return fstat(fd, &st) == 0 && S_ISBLK(st.st_mode);
}

int dir_vol_upload(const struct vol_def *v, const char *file, uint64_t off,
                   uint64_t len, bool sparse)
{
    struct stat st;
    int in = file ? open(file, O_RDONLY | O_CLOEXEC) : 0, out = -1, r = -1;

    if (in < 0) {
        pool_set_error("cannot open %s: %s", file, strerror(errno));
        return -1;
    }
    out = open(v->path, O_WRONLY | O_CLOEXEC);
    if (out >= 0 && is_blockdev(out)) {
        r = upload_block(v, in, out, off, len);
        close(out);
        if (file)
            close(in);
        return r;
    }
    if (out >= 0)
        r = stream(in, out, 0, off, len, sparse);
    if (r == -3)
        pool_set_error("cannot write to stream: %s", strerror(ENOSPC));
    else if (r < 0)
        pool_set_error("cannot write volume '%s': %s", v->path, strerror(errno));
    else if (len && fstat(in, &st) == 0 && (uint64_t)st.st_size > len) {
        /* the stream takes len bytes and refuses the rest */
        pool_set_error("cannot write to stream: %s", strerror(ENOSPC));
        r = -3;
    }
    if (out >= 0)
        close(out);
    if (file)
        close(in);
    return r;
}

/* Open (create) the file a download writes, as virsh does: a new file
 * (*made set, so a failure removes it again), else the old one emptied. */
static int open_download(const char *file, bool *made)
{
    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);

    *made = fd >= 0;
    if (fd < 0 && errno == EEXIST)
        fd = open(file, O_WRONLY | O_TRUNC | O_CLOEXEC);
    return fd;
}

int dir_vol_download(const struct vol_def *v, const char *file, uint64_t off,
                     uint64_t len, bool sparse)
{
    int in = open(v->path, O_RDONLY | O_CLOEXEC), out, r = -1;
    bool made = false;

    if (in < 0) {
        pool_set_error("cannot open volume '%s': %s", v->path, strerror(errno));
        return -1;
    }
    out = file ? open_download(file, &made) : 1;
    if (out < 0) {
        pool_err("cannot create %s", file);
        close(in);
        return -2;
    }
    if (is_blockdev(in))
        r = download_block(v, in, out, off, len);
    else if (stream(in, out, off, 0, len, sparse) == 0)
        r = 0;
    else
        pool_set_error("cannot read volume '%s': %s", v->path, strerror(errno));
    if (file)
        close(out);
    if (r < 0 && made)
        unlink(file);
    close(in);
    return r;
}
