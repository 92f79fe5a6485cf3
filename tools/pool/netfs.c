/* SPDX-License-Identifier: BSD-3-Clause */
/* The netfs pool backend: a network file system (<source><host> and <dir>,
 * <format type='nfs|glusterfs|cifs|auto'>) mounted on the target by
 * mount(8) at start and unmounted at destroy, with the source and options
 * libvirt gives mount for each format.  Build makes the target directory
 * (the dir backend's); between start and destroy the mounted directory is
 * handled as a dir pool. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"

/* The mount source for d's format: host:dir (nfs, glusterfs, auto) or
 * //host/share (cifs); malloc'd. */
static char *mount_source(const struct pool_def *d, const char *fmt)
{
    const char *dir = d->src_dir;

    if (!strcmp(fmt, "cifs"))
        return xasprintf("//%s/%s", d->src_host, dir[0] == '/' ? dir + 1 : dir);
    return xasprintf("%s:%s", d->src_host, dir);
}

/* The -o options for d's format (malloc'd, NULL for none): no devices, set-uid
 * or programs from the network file systems, glusterfs's direct I/O, cifs
 * as a guest, nfsvers from <protocol ver=>. */
static char *mount_options(const struct pool_def *d, const char *fmt)
{
    if (!strcmp(fmt, "glusterfs"))
        return xstrdup("direct-io-mode=1");
    if (!strcmp(fmt, "cifs"))
        return xstrdup("nodev,nosuid,noexec,guest");
    if (d->src_proto_ver)
        return xasprintf("nodev,nosuid,noexec,nfsvers=%s", d->src_proto_ver);
    return xstrdup("nodev,nosuid,noexec");
}

/* Is the source described well enough to mount?  -1 (error recorded). */
static int check_source(const struct pool_def *d, const char *fmt)
{
    static const char *const formats[] = { "auto", "nfs", "glusterfs", "cifs", NULL };
    bool known = false;

    for (int i = 0; formats[i]; i++)
        known |= !strcmp(fmt, formats[i]);
    if (!known) {
        pool_set_error("unsupported configuration: unknown network file system format '%s'",
                       fmt);
        return -1;
    }
    if (!d->src_host) {
        pool_set_error("XML error: missing source host");
        return -1;
    }
    if (!d->src_dir || !d->src_dir[0]) {
        pool_set_error("XML error: missing source path");
        return -1;
    }
    return 0;
}

/* After a failed mount: a FUSE file system whose mount helper failed can
 * stay mounted (mount.glusterfs's own unmount races its daemon); unmount
 * it, keeping the mount's error. */
static void unmount_failed(const char *target)
{
    char *um[] = { "umount", (char *)target, NULL };
    char *lazy[] = { "umount", "-l", (char *)target, NULL };
    char *why;

    if (!is_mounted(target))
        return;
    why = xstrdup(pool_error_text());
    for (int i = 0; i < 20 && is_mounted(target) && run_cmd(um, NULL) != 0; i++)
        usleep(100 * 1000);
    if (is_mounted(target))
        run_cmd(lazy, NULL);
    pool_set_error("%s", why);
    free(why);
}

int netfs_start(struct pool_def *d)
{
    const char *fmt = d->src_format ? d->src_format : "auto";
    char *src, *opts, *argv[9];
    int n = 0, r = 0;

    if (check_source(d, fmt) < 0)
        return -1;
    if (is_mounted(d->target_path))
        return dir_refresh(d);
    src = mount_source(d, fmt);
    opts = mount_options(d, fmt);
    argv[n++] = "mount";
    if (strcmp(fmt, "auto")) {
        argv[n++] = "-t";
        argv[n++] = (char *)fmt;
    }
    argv[n++] = src;
    argv[n++] = d->target_path;
    argv[n++] = "-o";
    argv[n++] = opts;
    argv[n] = NULL;
    if (run_cmd(argv, NULL) != 0) {
        unmount_failed(d->target_path);
        r = -1;
    }
    free(src);
    free(opts);
    if (r == 0 && dir_refresh(d) < 0) {
        char *um[] = { "umount", d->target_path, NULL };
        run_cmd(um, NULL);         /* a pool that failed to start leaves nothing mounted */
        r = -1;
    }
    return r;
}

int netfs_stop(struct pool_def *d)
{
    char *argv[] = { "umount", d->target_path, NULL };

    if (is_mounted(d->target_path) && run_cmd(argv, NULL) != 0)
        return -1;
    return dir_stop(d);
}
