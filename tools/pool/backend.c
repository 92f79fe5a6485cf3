/* SPDX-License-Identifier: BSD-3-Clause */
/* The pool types: one table entry per type, naming its backend's
 * operations and the formats pool-capabilities shows, and the command
 * runner the backends that drive other programs (lvm2, parted) share. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool.h"

#define RUN_OUT_MAX (1024 * 1024)
#define RUN_ERR_MAX 4096

/* Glue for the dir type, whose delete needs no pool. */
static int dir_vol_delete_in(const struct pool_def *d, const struct vol_def *v)
{
    (void)d;
    return dir_vol_delete(v);
}

static const char *const file_formats[] = {
    "none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd",
    "ploop", "cow", "qcow", "qcow2", "qed", "vmdk", NULL,
};
static const char *const fs_formats[] = {
    "auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2", "vfat",
    "hfs+", "xfs", "ocfs2", "vmfs", NULL,
};
static const char *const netfs_formats[] = { "auto", "nfs", "glusterfs", "cifs", NULL };
static const char *const lvm_formats[] = { "unknown", "lvm2", NULL };
static const char *const disk_formats[] = {
    "unknown", "dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2", NULL,
};
static const char *const part_formats[] = {
    "none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm", "linux-raid",
    "extended", NULL,
};

const struct pool_backend pool_backends[] = {
    { .type = "dir", .build = dir_build, .start = dir_start, .stop = dir_stop,
      .delete_ = dir_delete, .refresh = dir_refresh, .vols = dir_vols,
      .vol_create = dir_vol_create, .vol_delete = dir_vol_delete_in,
      .vol_resize = dir_vol_resize, .vol_wipe = dir_vol_wipe,
      .vol_upload = dir_vol_upload, .vol_download = dir_vol_download,
      .vol_formats = file_formats, .vol_default_format = "raw" },
    { .type = "fs", .build = fs_build, .start = fs_start, .stop = fs_stop,
      .delete_ = dir_delete, .refresh = dir_refresh, .vols = dir_vols,
      .vol_create = dir_vol_create, .vol_delete = dir_vol_delete_in,
      .vol_resize = dir_vol_resize, .vol_wipe = dir_vol_wipe,
      .vol_upload = dir_vol_upload, .vol_download = dir_vol_download,
      .vol_formats = file_formats, .vol_default_format = "raw",
      .src_formats = fs_formats, .src_default_format = "auto" },
    { .type = "netfs", .build = dir_build, .start = netfs_start, .stop = netfs_stop,
      .delete_ = dir_delete, .refresh = dir_refresh, .vols = dir_vols,
      .vol_create = dir_vol_create, .vol_delete = dir_vol_delete_in,
      .vol_resize = dir_vol_resize, .vol_wipe = dir_vol_wipe,
      .vol_upload = dir_vol_upload, .vol_download = dir_vol_download,
      .vol_formats = file_formats, .vol_default_format = "raw",
      .src_formats = netfs_formats, .src_default_format = "auto" },
    { .type = "logical", .build = lvm_build, .start = lvm_start, .stop = lvm_stop,
      .delete_ = lvm_delete, .refresh = lvm_refresh, .vols = lvm_vols,
      .vol_check = block_vol_check, .vol_create = lvm_vol_create,
      .vol_delete = lvm_vol_delete,
      .vol_wipe = dir_vol_wipe,
      .vol_upload = dir_vol_upload, .vol_download = dir_vol_download,
      .src_formats = lvm_formats, .src_default_format = "lvm2" },
    { .type = "disk", .build = disk_build, .start = disk_start, .stop = disk_stop,
      .delete_ = disk_delete, .refresh = disk_refresh, .vols = disk_vols,
      .vol_check = block_vol_check, .vol_create = disk_vol_create,
      .vol_delete = disk_vol_delete,
      .vol_wipe = dir_vol_wipe, .vol_upload = dir_vol_upload,
      .vol_download = dir_vol_download,
      .vol_formats = part_formats, .vol_default_format = "none",
      .src_formats = disk_formats, .src_default_format = "unknown" },
    { .type = NULL },
};

const struct pool_backend *pool_backend_of(const char *type)
{
    for (const struct pool_backend *b = pool_backends; b->type; b++)
        if (!strcmp(b->type, type))
            return b;
    pool_set_error("this function is not supported by the connection driver: "
                   "storage pool type '%s' is not supported", type);
    return NULL;
}

/* Append what fd has to *buf (up to max bytes kept); false at its end. */
static bool drain(int fd, char *buf, size_t *len, size_t max)
{
    char tmp[4096];
    ssize_t n = read(fd, tmp, sizeof(tmp));

    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return true;
    if (n <= 0)
        return false;
    if (*len < max) {
        size_t k = (size_t)n < max - *len ? (size_t)n : max - *len;
        memcpy(buf + *len, tmp, k);
        *len += k;
    }
    return true;
}

/* Read the child's stdout and stderr to their ends, both at once. */
static void collect(int po, int pe, char *out, size_t *olen, char *err, size_t *elen)
{
    struct pollfd p[2] = { { .fd = po, .events = POLLIN }, { .fd = pe, .events = POLLIN } };

    while (p[0].fd >= 0 || p[1].fd >= 0) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents && !drain(po, out, olen, RUN_OUT_MAX))
            p[0].fd = -1;
        if (p[1].revents && !drain(pe, err, elen, RUN_ERR_MAX - 1))
            p[1].fd = -1;
    }
}

/* "Child process (ARGV...) unexpected exit status N: STDERR" as libvirt
 * words it (the program by the path run, stderr as it came). */
static void child_error(const char *prog, char *const argv[], int status, char *err,
                        size_t elen)
{
    char cmd[1024] = "";

    for (int i = 0; argv[i]; i++)
        snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), "%s%s", i ? " " : "",
                 i ? argv[i] : prog);
    err[elen] = 0;
    pool_set_error("internal error: Child process (%s) unexpected exit status %d%s%s", cmd,
                   status, elen ? ": " : "", err);
}

/* See pool.h. */
char *pool_find_program(const char *prog)
{
    const char *path = getenv("PATH");
    char *copy, *save = NULL, *hit = NULL;

    if (strchr(prog, '/'))
        return xstrdup(prog);
    copy = xstrdup(path ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
    for (char *d = strtok_r(copy, ":", &save); d && !hit; d = strtok_r(NULL, ":", &save)) {
        char *p = xasprintf("%s/%s", d, prog);
        if (access(p, X_OK) == 0)
            hit = p;
        else
            free(p);
    }
    free(copy);
    return hit;
}

/* The full path of prog in $PATH (malloc'd); prog itself if not found. */
static char *which(const char *prog)
{
    char *hit = pool_find_program(prog);

    return hit ? hit : xstrdup(prog);
}

int pool_run(char *const argv[], char **out)
{
    int po[2], pe[2], status = -1;
    char *obuf = malloc(RUN_OUT_MAX + 1), err[RUN_ERR_MAX];
    size_t olen = 0, elen = 0;
    char *prog = which(argv[0]);
    pid_t pid;

    if (!obuf)
        pool_oom();
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
        pool_set_error("cannot run %s: %s", prog, strerror(errno));
        free(obuf);
        free(prog);
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        if (null > 2)
            close(null);
        /* as from libvirtd: device nodes the tools make are private */
        umask(077);
        setenv("LC_ALL", "C", 1);
        execv(prog, argv);
        fprintf(stderr, "cannot execute binary %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    collect(po[0], pe[0], obuf, &olen, err, &elen);
    close(po[0]);
    close(pe[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    obuf[olen] = 0;
    if (!WIFEXITED(status)) {
        child_error(prog, argv, -1, err, elen);
        free(obuf);
        free(prog);
        return -1;
    }
    if (WEXITSTATUS(status))
        child_error(prog, argv, WEXITSTATUS(status), err, elen);
    free(prog);
    if (out)
        *out = obuf;
    else
        free(obuf);
    return WEXITSTATUS(status);
}

void vol_add_extent(struct vol_def *v, const char *dev, uint64_t start, uint64_t end)
{
    v->extents = realloc(v->extents, (v->n_extents + 1) * sizeof(*v->extents));
    if (!v->extents)
        pool_oom();
    v->extents[v->n_extents].dev = xstrdup(dev);
    v->extents[v->n_extents].start = start;
    v->extents[v->n_extents].end = end;
    v->n_extents++;
}

void vol_stat_block(struct vol_def *v)
{
    struct stat st;

    if (stat(v->path, &st) < 0)
        return;
    v->perms.mode = st.st_mode & 07777;
    v->perms.owner = st.st_uid;
    v->perms.group = st.st_gid;
    v->atime = st.st_atim;
    v->mtime = st.st_mtim;
    v->ctime_ = st.st_ctim;
}
