/* SPDX-License-Identifier: BSD-3-Clause */
/* The state store: persistent pool definitions in the configuration
 * directory (NAME.xml, autostart/NAME.xml links), live state of active pools
 * in the run directory (NAME.xml).  Invariants: every file is replaced whole
 * by rename after fsync, so a crash leaves the old or the new file, never a
 * torn one; every change happens under an exclusive flock of the run
 * directory's lock file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pool.h"

/* mkdir -p with mode for the directories created. */
static int mkdirs(const char *path, mode_t mode)
{
    char *p = xstrdup(path);

    for (char *s = p + 1; ; s++) {
        if (*s == '/' || !*s) {
            char c = *s;
            *s = 0;
            if (mkdir(p, mode) < 0 && errno != EEXIST) {
                pool_set_error("cannot create directory '%s': %s", p, strerror(errno));
                free(p);
                return -1;
            }
            *s = c;
            if (!c)
                break;
        }
    }
    free(p);
    return 0;
}

/* The directories of a session connection (XDG, as libvirt's session). */
static void session_dirs(struct pool_conn *c)
{
    const char *cfg = getenv("XDG_CONFIG_HOME"), *run = getenv("XDG_RUNTIME_DIR");
    const char *home = getenv("HOME");

    if (!home)
        home = "/";
    c->cfg_dir = cfg && *cfg ? xasprintf("%s/vdisk/storage", cfg)
                             : xasprintf("%s/.config/vdisk/storage", home);
    c->run_dir = run && *run ? xasprintf("%s/vdisk/storage", run)
                             : xasprintf("%s/.cache/vdisk/run/storage", home);
}

/* Pick the directories for uri (NULL: system for root, else session). */
static int conn_dirs(struct pool_conn *c, const char *uri)
{
    const char *ec = getenv("VDISK_POOL_CONFIG_DIR"), *er = getenv("VDISK_POOL_RUN_DIR");
    bool sys = geteuid() == 0;

    if (uri) {
        const char *p = strstr(uri, ":///");
        if (!p || (strncmp(uri, "vdisk", 5) && strncmp(uri, "qemu", 4)) ||
            (strcmp(p + 4, "system") && strcmp(p + 4, "session"))) {
            pool_set_error("no connection driver available for %s", uri);
            return -1;
        }
        sys = !strcmp(p + 4, "system");
    }
    if (sys) {
        c->cfg_dir = xstrdup("/etc/vdisk/storage");
        c->run_dir = xstrdup("/run/vdisk/storage");
    } else {
        session_dirs(c);
    }
    if (ec && *ec) {
        free(c->cfg_dir);
        c->cfg_dir = xstrdup(ec);
    }
    if (er && *er) {
        free(c->run_dir);
        c->run_dir = xstrdup(er);
    }
    c->autostart_dir = xasprintf("%s/autostart", c->cfg_dir);
    return 0;
}

int conn_open(struct pool_conn *c, const char *uri)
{
    char *lock;

    memset(c, 0, sizeof(*c));
    c->lock_fd = -1;
    if (conn_dirs(c, uri) < 0 || mkdirs(c->cfg_dir, 0700) < 0 ||
        mkdirs(c->autostart_dir, 0700) < 0 || mkdirs(c->run_dir, 0700) < 0)
        return -1;
    lock = xasprintf("%s/.lock", c->run_dir);
    c->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (c->lock_fd < 0)
        pool_set_error("cannot open '%s': %s", lock, strerror(errno));
    free(lock);
    return c->lock_fd < 0 ? -1 : 0;
}

/* Remove the temporary files a killed writer left in dir ("NAME.tmpPID"):
 * only called under the exclusive lock, when no writer is running. */
static void remove_stale(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    while (d && (e = readdir(d))) {
        const char *t = strstr(e->d_name, ".tmp");
        if (!t || e->d_name[0] == '.' || !t[4] || strspn(t + 4, "0123456789") != strlen(t + 4))
            continue;
        char *p = xasprintf("%s/%s", dir, e->d_name);
        unlink(p);
        free(p);
    }
    if (d)
        closedir(d);
}

int conn_lock(struct pool_conn *c, bool exclusive)
{
    while (flock(c->lock_fd, exclusive ? LOCK_EX : LOCK_SH) < 0) {
        if (errno != EINTR) {
            pool_set_error("cannot lock the pool state: %s", strerror(errno));
            return -1;
        }
    }
    if (exclusive) {
        remove_stale(c->cfg_dir);
        remove_stale(c->autostart_dir);
        remove_stale(c->run_dir);
    }
    return 0;
}

void conn_close(struct pool_conn *c)
{
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    free(c->cfg_dir);
    free(c->run_dir);
    free(c->autostart_dir);
}

void make_uuid(char out[37])
{
    unsigned char b[16] = {0};
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);

    if (fd < 0 || read(fd, b, sizeof(b)) != (ssize_t)sizeof(b)) {
        for (size_t i = 0; i < sizeof(b); i++)
            b[i] = (unsigned char)random();
    }
    if (fd >= 0)
        close(fd);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5], b[6],
             b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* fsync the directory holding path. */
static int sync_dir_of(const char *path)
{
    char *d = xstrdup(path), *s = strrchr(d, '/');
    int fd, r = 0;

    if (s)
        *(s == d ? s + 1 : s) = 0;
    fd = open(s ? d : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0)
        r = -1;
    if (fd >= 0)
        close(fd);
    free(d);
    return r;
}

/* Write all of data to fd. */
static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t w = write(fd, data, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

int atomic_write(const char *path, const char *data, size_t len)
{
    char *tmp = xasprintf("%s.tmp%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int r = -1;

    if (fd >= 0 && write_all(fd, data, len) == 0 && fsync(fd) == 0) {
        close(fd);
        fd = -1;
        if (rename(tmp, path) == 0)
            r = sync_dir_of(path) < 0 ? -1 : 0;
    }
    if (r < 0)
        pool_set_error("cannot write '%s': %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return r;
}

/* Path of NAME.xml in dir. */
static char *xml_path(const char *dir, const char *name)
{
    return xasprintf("%s/%s.xml", dir, name);
}

/* Write d's XML into dir/NAME.xml. */
static int save_in(const char *dir, const struct pool_def *d, bool perms)
{
    char *p = xml_path(dir, d->name), *x = pool_def_format(d, perms);
    int r = atomic_write(p, x, strlen(x));

    free(p);
    free(x);
    return r;
}

int state_save_config(struct pool_conn *c, const struct pool_def *d)
{
    struct pool_def tmp = *d;

    tmp.capacity = tmp.allocation = tmp.available = 0;
    return save_in(c->cfg_dir, &tmp, true);
}

int state_save_live(struct pool_conn *c, const struct pool_def *d)
{
    return save_in(c->run_dir, d, true);
}

/* Remove dir/NAME.xml (absent is fine), then sync the directory. */
static int remove_in(const char *dir, const char *name)
{
    char *p = xml_path(dir, name);
    int r = 0;

    if (unlink(p) < 0 && errno != ENOENT) {
        pool_set_error("cannot remove '%s': %s", p, strerror(errno));
        r = -1;
    } else {
        sync_dir_of(p);
    }
    free(p);
    return r;
}

int state_remove_config(struct pool_conn *c, const char *name)
{
    if (remove_in(c->autostart_dir, name) < 0)
        return -1;
    return remove_in(c->cfg_dir, name);
}

int state_remove_live(struct pool_conn *c, const char *name)
{
    return remove_in(c->run_dir, name);
}

int state_set_autostart(struct pool_conn *c, const char *name, bool on)
{
    char *link, *tmp, *target;
    int r = 0;

    if (!on)
        return remove_in(c->autostart_dir, name);
    link = xml_path(c->autostart_dir, name);
    tmp = xasprintf("%s.tmp%ld", link, (long)getpid());
    target = xml_path(c->cfg_dir, name);
    unlink(tmp);
    if (symlink(target, tmp) < 0 || rename(tmp, link) < 0) {
        pool_set_error("Failed to create symlink '%s' to '%s': %s", link, target,
                       strerror(errno));
        unlink(tmp);
        r = -1;
    } else {
        sync_dir_of(link);
    }
    free(link);
    free(tmp);
    free(target);
    return r;
}

/* Is there dir/NAME.xml? */
static bool has_file(const char *dir, const char *name)
{
    char *p = xml_path(dir, name);
    bool r = access(p, F_OK) == 0;

    free(p);
    return r;
}

/* Load dir/FILE as a definition whose name must match the file's. */
static struct pool_def *load_one(const char *dir, const char *file)
{
    char *p = xasprintf("%s/%s", dir, file);
    struct pool_def *d = pool_def_parse_file(p);
    size_t l = strlen(file);

    free(p);
    if (d && (strlen(d->name) + 4 != l || strncmp(d->name, file, l - 4))) {
        pool_def_free(d);
        d = NULL;
    }
    return d;
}

/* Find the object named name in list (n entries). */
static struct pool_obj *find(struct pool_obj **list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i]->def->name, name))
            return list[i];
    return NULL;
}

/* Add the definitions found in dir to *list; live: they are active. */
static void scan(struct pool_conn *c, const char *dir, bool live,
                 struct pool_obj ***list, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    while (d && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        struct pool_def *def;
        struct pool_obj *o;

        if (e->d_name[0] == '.' || l < 5 || strcmp(e->d_name + l - 4, ".xml"))
            continue;
        if (!(def = load_one(dir, e->d_name)))
            continue;
        o = find(*list, *n, def->name);
        if (o) {
            pool_def_free(o->def);
            o->def = def;
            o->active = true;
            continue;
        }
        o = calloc(1, sizeof(*o));
        *list = realloc(*list, (*n + 1) * sizeof(**list));
        if (!o || !*list)
            pool_oom();
        o->def = def;
        o->cfg = live ? NULL : pool_def_copy(def);
        o->active = live;
        o->autostart = !live && has_file(c->autostart_dir, def->name);
        (*list)[(*n)++] = o;
    }
    if (d)
        closedir(d);
}

/* qsort by name. */
static int by_name(const void *a, const void *b)
{
    const struct pool_obj *x = *(struct pool_obj *const *)a;
    const struct pool_obj *y = *(struct pool_obj *const *)b;

    return strcmp(x->def->name, y->def->name);
}

struct pool_obj **pools_load(struct pool_conn *c, size_t *n)
{
    struct pool_obj **list = NULL;

    *n = 0;
    scan(c, c->cfg_dir, false, &list, n);
    scan(c, c->run_dir, true, &list, n);
    if (*n)
        qsort(list, *n, sizeof(*list), by_name);
    return list;
}

void pool_obj_free(struct pool_obj *o)
{
    if (!o)
        return;
    pool_def_free(o->def);
    pool_def_free(o->cfg);
    free(o);
}

void pools_free(struct pool_obj **p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pool_obj_free(p[i]);
    free(p);
}

struct pool_obj *pool_lookup(struct pool_conn *c, const char *id)
{
    size_t n;
    struct pool_obj **list = pools_load(c, &n), *found = NULL;

    for (size_t i = 0; i < n && !found; i++)
        if (!strcmp(list[i]->def->uuid, id))
            found = list[i];
    for (size_t i = 0; i < n && !found; i++)
        if (!strcmp(list[i]->def->name, id))
            found = list[i];
    for (size_t i = 0; i < n; i++)
        if (list[i] != found)
            pool_obj_free(list[i]);
    free(list);
    if (!found) {
        pool_err("failed to get pool '%s'", id);
        pool_err("Storage pool not found: no storage pool with matching name '%s'", id);
    }
    return found;
}

/* The marks directory of a pool. */
static char *marks_dir(struct pool_conn *c, const char *pool)
{
    return xasprintf("%s/%s.new", c->run_dir, pool);
}

/* A cipher or ivgen field in a mark: "." when absent (fields are tokens). */
#define MARK_TOK(s) ((s) ? (s) : ".")

int state_mark_vol(struct pool_conn *c, const char *pool, const struct vol_def *v)
{
    char *d = marks_dir(c, pool), *p = xasprintf("%s/%s", d, v->name);
    char block[64] = "", *txt;
    int r;

    /* a block volume's fifth line: its encryption (not found on the
     * device, which libvirt does not probe) and the LUKS header's room */
    if (v->type && !strcmp(v->type, "block"))
        snprintf(block, sizeof(block), "block %s%" PRIu64 "\n", v->enc_format ? "luks " : "",
                 v->luks_room);
    txt = xasprintf("%s\n%s%s\n%s\n%s %s %s %s %s %s\n%s", v->compat ? v->compat : "",
                    v->lazy_refcounts ? "L" : "", v->extended_l2 ? "E" : "",
                    v->enc_secret ? v->enc_secret : "", MARK_TOK(v->enc_cipher[0]),
                    MARK_TOK(v->enc_cipher[1]), MARK_TOK(v->enc_cipher[2]),
                    MARK_TOK(v->enc_cipher[3]), MARK_TOK(v->enc_ivgen[0]),
                    MARK_TOK(v->enc_ivgen[1]), block);

    if (mkdir(d, 0700) < 0 && errno != EEXIST)
        r = -1;
    else
        r = atomic_write(p, txt, strlen(txt));
    free(d);
    free(p);
    free(txt);
    return r;
}

void state_unmark_vol(struct pool_conn *c, const char *pool, const char *vol)
{
    char *p = xasprintf("%s/%s.new/%s", c->run_dir, pool, vol);

    unlink(p);
    free(p);
}

void state_clear_vols(struct pool_conn *c, const char *pool)
{
    char *d = marks_dir(c, pool);
    DIR *dir = opendir(d);
    struct dirent *e;

    while (dir && (e = readdir(dir))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            char *p = xasprintf("%s/%s", d, e->d_name);
            unlink(p);
            free(p);
        }
    }
    if (dir)
        closedir(dir);
    rmdir(d);
    free(d);
}

/* The cipher and ivgen fields of a mark ("name size mode hash name hash",
 * "." for none) onto v. */
static void apply_cipher_mark(struct vol_def *v, const char *line)
{
    char f[6][64];

    if (sscanf(line, "%63s %63s %63s %63s %63s %63s", f[0], f[1], f[2], f[3], f[4], f[5]) != 6)
        return;
    for (int i = 0; i < 6; i++) {
        char **slot = i < 4 ? &v->enc_cipher[i] : &v->enc_ivgen[i - 4];
        free(*slot);
        *slot = strcmp(f[i], ".") ? xstrdup(f[i]) : NULL;
    }
}

/* A block volume's mark line ("block [luks ]ROOM") onto v. */
static void apply_block_mark(struct vol_def *v, const char *txt)
{
    const char *l = strstr(txt, "\nblock ");
    unsigned long long room;
    char *end;

    if (!l || !v->type || strcmp(v->type, "block"))
        return;
    l += strlen("\nblock ");
    if (!strncmp(l, "luks ", 5)) {
        free(v->enc_format);
        v->enc_format = xstrdup("luks");
        l += 5;
    }
    errno = 0;
    room = strtoull(l, &end, 10);
    if (errno || *end != '\n' || room > v->capacity || room > v->allocation)
        return;
    v->capacity -= room;
    v->allocation -= room;
}

/* Apply one mark file's content to v. */
static void apply_mark(struct vol_def *v, const char *txt)
{
    const char *nl = strchr(txt, '\n'), *nl2 = nl ? strchr(nl + 1, '\n') : NULL;
    char uuid[37], line[37] = "";

    apply_block_mark(v, txt);

    free(v->compat);
    v->compat = nl && nl > txt ? strndup(txt, (size_t)(nl - txt)) : NULL;
    v->cluster_size = 0;
    v->lazy_refcounts = nl && memchr(nl, 'L', (size_t)(nl2 ? nl2 - nl : 1));
    v->extended_l2 = nl && memchr(nl, 'E', (size_t)(nl2 ? nl2 - nl : 1));
    /* the passphrase secret of an encrypted volume, until a refresh */
    if (nl2)
        snprintf(line, sizeof(line), "%.36s", nl2 + 1);
    if (v->enc_format && strlen(line) == 36 && pool_uuid_parse(line, uuid) == 0) {
        free(v->enc_secret);
        v->enc_secret = xstrdup(uuid);
    }
    if (v->enc_format && nl2 && (nl2 = strchr(nl2 + 1, '\n')))
        apply_cipher_mark(v, nl2 + 1);
}

void state_apply_marks(struct pool_conn *c, const char *pool, struct vol_def **v, size_t n)
{
    char *d = marks_dir(c, pool);

    for (size_t i = 0; i < n && access(d, F_OK) == 0; i++) {
        char *p = xasprintf("%s/%s", d, v[i]->name), buf[512];
        FILE *f = fopen(p, "re");
        if (f) {
            size_t l = fread(buf, 1, sizeof(buf) - 1, f);
            buf[l] = 0;
            fclose(f);
            apply_mark(v[i], buf);
        }
        free(p);
    }
    free(d);
}
