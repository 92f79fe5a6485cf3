/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-ssh-get/add/remove-authorized-keys: a user's
 * ~/.ssh/authorized_keys, read as lines and written back joined by
 * newlines, owned by the user with modes 0700/0600, as qemu-ga does. */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmds.h"
#include "util/buf.h"

#define MAX_KEYS_FILE (16u << 20)

struct lines {
    char **v;
    size_t n;
};

static void lines_free(struct lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static bool lines_add(struct lines *l, const char *s, size_t len)
{
    char **nv = realloc(l->v, (l->n + 1) * sizeof(*nv));

    if (!nv)
        return false;
    l->v = nv;
    if (!(l->v[l->n] = strndup(s, len)))
        return false;
    l->n++;
    return true;
}

/* The user's entry, or NULL with e set. */
static struct passwd *user(const vd_json *args, struct ga_err *e)
{
    const char *name = vd_json_str(vd_json_get(args, "username"));
    struct passwd *p;

    errno = 0;
    p = getpwnam(name);
    if (!p)
        ga_error(e, "failed to lookup user '%s': %s", name, strerror(errno));
    return p;
}

/* Paths of ~/.ssh and ~/.ssh/authorized_keys. */
static void key_paths(const struct passwd *p, char *dir, char *file, size_t size)
{
    snprintf(dir, size, "%s/.ssh", p->pw_dir);
    snprintf(file, size, "%s/.ssh/authorized_keys", p->pw_dir);
}

/* The file split at newlines (empty pieces kept); -errno when unreadable. */
static int read_keys(const char *path, struct lines *l)
{
    FILE *f = fopen(path, "r");
    struct vd_buf b = { 0 };
    char chunk[4096];
    size_t n;
    int err = 0;

    if (!f)
        return -errno;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len < MAX_KEYS_FILE)
        vd_buf_add(&b, chunk, n);
    if (ferror(f))
        err = -EIO;
    fclose(f);
    if (!err) {
        const char *s = b.p ? b.p : "", *nl;
        for (;;) {
            nl = memchr(s, '\n', b.len - (size_t)(s - (b.p ? b.p : s)));
            if (!lines_add(l, s, nl ? (size_t)(nl - s) : strlen(s))) {
                err = -ENOMEM;
                break;
            }
            if (!nl)
                break;
            s = nl + 1;
        }
    }
    vd_buf_free(&b);
    return err;
}

/* "failed to read ..." for a read_keys() error. */
static void read_error(const char *path, int err, struct ga_err *e)
{
    ga_error(e, "failed to read '%s': Failed to open file \xe2\x80\x9c%s\xe2\x80\x9d: %s",
             path, path, strerror(-err));
}

/* A key qemu-ga accepts: no leading '#', no newline. */
static bool check_keys(const vd_json *keys, struct ga_err *e)
{
    for (size_t i = 0; i < vd_json_count(keys); i++) {
        const char *k = vd_json_str(vd_json_at(keys, i));
        if (k[0] == '#' || strchr(k, '\n')) {
            ga_error(e, "invalid OpenSSH public key: '%s'", k);
            return false;
        }
    }
    return true;
}

/* Write the lines joined by newlines (via a temporary file), then give
 * the file to the user with mode 0600. */
static void write_keys(const char *path, const struct lines *l, const struct passwd *p,
                       struct ga_err *e)
{
    char tmp[4200];
    FILE *f;
    int fd;

    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0 || !(f = fdopen(fd, "w"))) {
        ga_error(e, "failed to write to '%s': Failed to create file \xe2\x80\x9c%s\xe2\x80\x9d: %s",
                 path, tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    for (size_t i = 0; i < l->n; i++)
        fprintf(f, "%s%s", i ? "\n" : "", l->v[i]);
    if (fclose(f) != 0 || rename(tmp, path) < 0) {
        ga_error(e, "failed to write to '%s': %s", path, strerror(errno));
        unlink(tmp);
        return;
    }
    if (chown(path, p->pw_uid, p->pw_gid) < 0)
        ga_error(e, "failed to set ownership of '%s': %s", path, strerror(errno));
    else if (chmod(path, 0600) < 0)
        ga_error(e, "failed to set permissions of '%s': %s", path, strerror(errno));
}

/* ~/.ssh, created for the user when missing. */
static bool make_dir(const char *dir, const struct passwd *p, struct ga_err *e)
{
    struct stat st;

    if (!(stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) && mkdir(dir, 0700) < 0) {
        ga_error(e, "failed to create directory '%s': %s", dir, strerror(errno));
        return false;
    }
    if (chown(dir, p->pw_uid, p->pw_gid) < 0) {
        ga_error(e, "failed to set ownership of directory '%s': %s", dir, strerror(errno));
        return false;
    }
    if (chmod(dir, 0700) < 0) {
        ga_error(e, "failed to set permissions of directory '%s': %s", dir, strerror(errno));
        return false;
    }
    return true;
}

/* guest-ssh-get-authorized-keys: the lines that are neither empty nor
 * comments, last line first as qemu-ga lists them. */
void ga_cmd_ssh_get_keys(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct passwd *p = user(args, e);
    char dir[4096], path[4096];
    struct lines l = { 0 };
    vd_json *keys;
    int err;

    if (!p)
        return;
    key_paths(p, dir, path, sizeof(path));
    if ((err = read_keys(path, &l)) < 0) {
        read_error(path, err, e);
        return;
    }
    keys = vd_json_new_array();
    for (size_t i = l.n; i-- > 0;)
        if (l.v[i][0] && l.v[i][0] != '#')
            vd_json_append(keys, vd_json_new_string(l.v[i]));
    lines_free(&l);
    *ret = vd_json_new_object();
    vd_json_set(*ret, "keys", keys);
}

/* Is s one of the lines? */
static bool has_line(const struct lines *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return true;
    return false;
}

/* guest-ssh-add-authorized-keys */
void ga_cmd_ssh_add_keys(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *keys = vd_json_get(args, "keys");
    bool reset = vd_json_bool(vd_json_get(args, "reset"));
    char dir[4096], path[4096];
    struct lines l = { 0 };
    struct passwd *p;

    (void)ret;
    if (!check_keys(keys, e) || !(p = user(args, e)))
        return;
    key_paths(p, dir, path, sizeof(path));
    if ((reset || read_keys(path, &l) < 0) && (lines_free(&l), !make_dir(dir, p, e)))
        return;
    for (size_t i = 0; i < vd_json_count(keys); i++) {
        const char *k = vd_json_str(vd_json_at(keys, i));
        if (!has_line(&l, k) && !lines_add(&l, k, strlen(k))) {
            ga_error(e, "out of memory");
            lines_free(&l);
            return;
        }
    }
    write_keys(path, &l, p, e);
    lines_free(&l);
}

/* guest-ssh-remove-authorized-keys (no file: nothing to do). */
void ga_cmd_ssh_remove_keys(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *keys = vd_json_get(args, "keys");
    char dir[4096], path[4096];
    struct lines l = { 0 }, kept = { 0 };
    struct passwd *p = user(args, e);
    int err;

    (void)ret;
    if (!p)
        return;
    key_paths(p, dir, path, sizeof(path));
    if ((err = read_keys(path, &l)) < 0) {
        if (err != -ENOENT)
            read_error(path, err, e);
        return;
    }
    for (size_t i = 0; i < l.n; i++) {
        bool drop = false;
        for (size_t k = 0; k < vd_json_count(keys) && !drop; k++)
            drop = strcmp(vd_json_str(vd_json_at(keys, k)), l.v[i]) == 0;
        if (!drop && !lines_add(&kept, l.v[i], strlen(l.v[i])))
            ga_error(e, "out of memory");
    }
    if (!e->desc)
        write_keys(path, &kept, p, e);
    lines_free(&l);
    lines_free(&kept);
}
