/* SPDX-License-Identifier: BSD-3-Clause */
/* The fs pool backend: a block device (or image file) holding a file
 * system, made by mkfs at build time (after a blkid probe unless
 * --overwrite), mounted on the target at start and unmounted at destroy.
 * Between those, the mounted directory is handled as a dir pool. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool.h"

#define OUT_MAX 4096

int run_cmd(char *const argv[], char *out)
{
    int po[2], pe[2], status = -1;
    char err[OUT_MAX] = "";
    pid_t pid;

    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    if (pid > 0) {
        ssize_t n = read(po[0], out ? out : err, OUT_MAX - 1);
        if (out)
            out[n > 0 ? n : 0] = 0;
        n = read(pe[0], err, OUT_MAX - 1);
        err[n > 0 ? n : 0] = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    close(po[0]);
    close(pe[0]);
    if (pid < 0 || !WIFEXITED(status))
        return -1;
    if (WEXITSTATUS(status)) {
        char cmd[512] = "";
        for (int i = 0; argv[i]; i++)
            snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), "%s%s", i ? " " : "",
                     argv[i]);
        size_t l = strlen(err);
        while (l && err[l - 1] == '\n')
            err[--l] = 0;
        pool_set_error("internal error: Child process (%s) unexpected exit status %d%s%s", cmd,
                       WEXITSTATUS(status), l ? ": " : "", err);
    }
    return WEXITSTATUS(status);
}

/* The file system type blkid finds on dev ("" when none). */
static int probe_fs(const char *dev, char *type)
{
    char *argv[] = { "blkid", "-p", "-o", "value", "-s", "TYPE", (char *)dev, NULL };
    int r = run_cmd(argv, type);
    size_t l;

    if (r == 2) {                  /* nothing found */
        type[0] = 0;
        return 0;
    }
    if (r != 0)
        return -1;
    l = strlen(type);
    while (l && type[l - 1] == '\n')
        type[--l] = 0;
    return 0;
}

/* Is the device there? */
static int check_device(const struct pool_def *d)
{
    struct stat st;

    if (stat(d->src_device, &st) < 0) {
        pool_set_error("cannot access source device '%s': %s", d->src_device,
                       strerror(errno));
        return -1;
    }
    return 0;
}

/* Without --overwrite, refuse a device that already holds a file system. */
static int check_empty(const struct pool_def *d, const char *fmt)
{
    char type[OUT_MAX];

    if (probe_fs(d->src_device, type) < 0)
        return -1;
    if (!type[0])
        return 0;
    if (strcmp(type, fmt))
        pool_set_error("Requested operation is not valid: Format of device '%s' does not "
                       "match the expected format '%s', forced overwrite is necessary",
                       d->src_device, fmt);
    else
        pool_set_error("Requested operation is not valid: Device '%s' already formatted "
                       "using '%s'", d->src_device, type);
    return -1;
}

/* mkfs -t FMT (with the force option ext* and xfs need) DEVICE. */
static int make_fs(const struct pool_def *d, const char *fmt)
{
    char *argv[6] = { "mkfs", "-t", (char *)fmt, NULL, NULL, NULL };
    int i = 3;

    if (!strcmp(fmt, "xfs"))
        argv[i++] = "-f";
    else if (!strncmp(fmt, "ext", 3))
        argv[i++] = "-F";
    argv[i] = d->src_device;
    if (run_cmd(argv, NULL) != 0)
        return -1;
    return 0;
}

int fs_build(struct pool_def *d, bool overwrite, bool no_overwrite)
{
    const char *fmt = d->src_format ? d->src_format : "auto";

    if (dir_build(d, false, false) < 0 || check_device(d) < 0)
        return -1;
    if (!strcmp(fmt, "auto")) {
        pool_set_error("unsupported configuration: No source format specified to build "
                       "the file system on '%s'", d->src_device);
        return -1;
    }
    if (!overwrite && check_empty(d, fmt) < 0)
        return -1;
    (void)no_overwrite;
    return make_fs(d, fmt);
}

bool is_mounted(const char *target)
{
    FILE *f = fopen("/proc/self/mounts", "re");
    char line[4096], dev[1024], mnt[1024];
    bool hit = false;

    while (f && !hit && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%1023s %1023s", dev, mnt) != 2)
            continue;
        hit = !strcmp(mnt, target);
    }
    if (f)
        fclose(f);
    return hit;
}

int fs_start(struct pool_def *d)
{
    const char *fmt = d->src_format ? d->src_format : "auto";
    char *argv[] = { "mount", "-t", (char *)fmt, d->src_device, d->target_path, NULL };

    if (check_device(d) < 0)
        return -1;
    if (!is_mounted(d->target_path) && run_cmd(argv, NULL) != 0)
        return -1;
    return dir_refresh(d);
}

int fs_stop(struct pool_def *d)
{
    char *argv[] = { "umount", d->target_path, NULL };

    if (is_mounted(d->target_path) && run_cmd(argv, NULL) != 0)
        return -1;
    return dir_stop(d);
}
