/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-fsfreeze-* and guest-fstrim: FIFREEZE/FITHAW/FITRIM on the mounted block-backed file
 * systems (those of /proc/self/mountinfo whose device major is not 0),
 * frozen last-mounted first, the hook script run with "freeze" before and
 * "thaw" after.  While anything is frozen the agent refuses the commands
 * that could write (dispatch.c). */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmds.h"

#define MAX_MOUNTS 4096

struct mounts {
    char *dir[MAX_MOUNTS];
    size_t n;
};

/* See cmds.h: undo the \040-style octal escapes of mountinfo paths. */
void ga_unescape_mount_path(char *s)
{
    char *o = s;

    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
            s[3] >= '0' && s[3] <= '7') {
            *o++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
            s += 3;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
}

/* The freezable mounts, in mount order; -1 with e set. */
static int mount_list(struct mounts *m, struct ga_err *e)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[8192];

    m->n = 0;
    if (!f) {
        ga_error(e, "failed to open mtab file: '/proc/self/mountinfo'");
        return -1;
    }
    while (fgets(line, sizeof(line), f) && m->n < MAX_MOUNTS) {
        unsigned id, parent, major, minor;
        char dir[4096], type[256];
        const char *sep;

        if (sscanf(line, "%u %u %u:%u %*s %4095s", &id, &parent, &major, &minor, dir) != 5)
            continue;
        sep = strstr(line, " - ");
        if (!sep || sscanf(sep + 3, "%255s", type) != 1)
            continue;
        if (major == 0 || strcmp(type, "rootfs") == 0)
            continue;
        ga_unescape_mount_path(dir);
        m->dir[m->n] = strdup(dir);
        if (m->dir[m->n])
            m->n++;
    }
    fclose(f);
    return 0;
}

static void mounts_free(struct mounts *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->dir[i]);
    m->n = 0;
}

/* Run the hook with "freeze" or "thaw", as qemu-ga runs it. */
static void run_hook(const char *arg, struct ga_err *e)
{
    const char *hook = ga_state_hook();
    pid_t pid;
    int status;

    if (!hook)
        return;
    if (access(hook, X_OK) != 0) {
        ga_error(e, "can't access fsfreeze hook '%s': %s", hook, strerror(errno));
        return;
    }
    pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        sigset_t mask;

        sigemptyset(&mask);
        sigprocmask(SIG_SETMASK, &mask, NULL);
        setsid();
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(hook, hook, arg, (char *)NULL);
        _exit(EXIT_FAILURE);
    }
    if (pid < 0) {
        ga_error(e, "failed to create child process: %s", strerror(errno));
        return;
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status))
        ga_error(e, "fsfreeze hook has terminated abnormally");
    else if (WEXITSTATUS(status))
        ga_error(e, "fsfreeze hook has failed with status %d", WEXITSTATUS(status));
}

/* guest-fsfreeze-status */
void ga_cmd_fsfreeze_status(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    (void)args;
    (void)e;
    *ret = vd_json_new_string(ga_state_frozen() ? "frozen" : "thawed");
}

/* Is dir named in the mountpoints list (or is there no list)? */
static bool wanted(const vd_json *list, const char *dir)
{
    if (!list)
        return true;
    for (size_t i = 0; i < vd_json_count(list); i++)
        if (strcmp(vd_json_str(vd_json_at(list, i)), dir) == 0)
            return true;
    return false;
}

/* Thaw everything; the number of file systems thawed. */
static int64_t thaw_all(void)
{
    struct ga_err e = { 0 };
    struct mounts m;
    int64_t n = 0;

    if (mount_list(&m, &e) < 0) {
        free(e.desc);
        return 0;
    }
    for (size_t i = 0; i < m.n; i++) {
        int fd = open(m.dir[i], O_RDONLY | O_CLOEXEC), r;
        bool counted = false;

        if (fd < 0)
            continue;
        while ((r = ioctl(fd, FITHAW)) == 0)
            if (!counted) {
                n++;
                counted = true;
            }
        close(fd);
    }
    mounts_free(&m);
    return n;
}

/* Freeze the wanted mounts, last first; the count or -1 with e set. */
static int64_t freeze(const vd_json *list, struct ga_err *e)
{
    struct mounts m;
    int64_t n = 0;

    run_hook("freeze", e);
    if (e->desc || mount_list(&m, e) < 0)
        return -1;
    ga_state_set_frozen(true);
    for (size_t i = m.n; i-- > 0;) {
        int fd;

        if (!wanted(list, m.dir[i]))
            continue;
        fd = open(m.dir[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            ga_error(e, "failed to open %s: %s", m.dir[i], strerror(errno));
            break;
        }
        if (ioctl(fd, FIFREEZE) == 0)
            n++;
        else if (errno != EOPNOTSUPP)
            ga_error(e, "failed to freeze %s: %s", m.dir[i], strerror(errno));
        close(fd);
        if (e->desc)
            break;
    }
    mounts_free(&m);
    if (e->desc) {
        struct ga_err ignored = { 0 };
        thaw_all();
        ga_state_set_frozen(false);
        run_hook("thaw", &ignored);
        free(ignored.desc);
        return -1;
    }
    if (n == 0)
        ga_state_set_frozen(false);
    return n;
}

/* guest-fsfreeze-freeze */
void ga_cmd_fsfreeze_freeze(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    int64_t n;

    (void)args;
    n = freeze(NULL, e);
    if (n >= 0)
        *ret = vd_json_new_int(n);
}

/* guest-fsfreeze-freeze-list */
void ga_cmd_fsfreeze_freeze_list(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    int64_t n = freeze(vd_json_get(args, "mountpoints"), e);

    if (n >= 0)
        *ret = vd_json_new_int(n);
}

/* guest-fsfreeze-thaw */
void ga_cmd_fsfreeze_thaw(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    int64_t n;

    (void)args;
    n = thaw_all();
    ga_state_set_frozen(false);
    run_hook("thaw", e);
    if (!e->desc)
        *ret = vd_json_new_int(n);
}

/* guest-fstrim: FITRIM on every mount, answers listed last-mounted first. */
void ga_cmd_fstrim(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *min = vd_json_get(args, "minimum");
    vd_json *paths;
    struct mounts m;

    if (mount_list(&m, e) < 0)
        return;
    paths = vd_json_new_array();
    for (size_t i = m.n; i-- > 0;) {
        struct fstrim_range r = { 0, UINT64_MAX, min ? (uint64_t)vd_json_int(min) : 0 };
        vd_json *o = vd_json_new_object();
        int fd = open(m.dir[i], O_RDONLY | O_CLOEXEC);
        char msg[300];

        vd_json_set_str(o, "path", m.dir[i]);
        vd_json_append(paths, o);
        if (fd < 0) {
            snprintf(msg, sizeof(msg), "failed to open: %s", strerror(errno));
            vd_json_set_str(o, "error", msg);
            continue;
        }
        if (ioctl(fd, FITRIM, &r) < 0) {
            if (errno == ENOTTY || errno == EOPNOTSUPP)
                snprintf(msg, sizeof(msg), "trim not supported");
            else
                snprintf(msg, sizeof(msg), "failed to trim: %s", strerror(errno));
            vd_json_set_str(o, "error", msg);
        } else {
            vd_json_set_uint(o, "trimmed", r.len);
            vd_json_set_uint(o, "minimum", r.minlen);
        }
        close(fd);
    }
    mounts_free(&m);
    *ret = vd_json_new_object();
    vd_json_set(*ret, "paths", paths);
}

/* See cmds.h. */
void ga_fsfreeze_cleanup(void)
{
    if (ga_state_frozen()) {
        struct ga_err e = { 0 };
        thaw_all();
        ga_state_set_frozen(false);
        run_hook("thaw", &e);
        free(e.desc);
    }
}
