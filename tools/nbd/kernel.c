/* SPDX-License-Identifier: BSD-3-Clause */
/* -c/-d: attach an export to the kernel's NBD client (/dev/nbdX) with the
 * NBD ioctls, serving it over a socketpair (the kernel learns the size
 * and flags by ioctl, so there is no handshake), and detach it again.
 * As qemu-nbd: without -v (or with --fork) -c runs in the background
 * (main.c detaches before the image is opened) and lets its parent exit
 * once the device is set up; the ioctls run in qemu-nbd's order with its
 * messages;
 * -d ignores ioctl errors and always reports the device disconnected. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/nbd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd.h"

struct kserver {
    struct vd_nbd_server *srv;
    const struct vd_nbd_export *exp;
    int fd;
};

/* Server side of the socketpair. */
static void *serve_thread(void *opaque)
{
    struct kserver *k = opaque;

    vd_nbd_server_serve_kernel(k->srv, k->fd, k->exp);
    return NULL;
}

/* Size and flags of the device, after its socket. */
static int configure_size(int dev, const struct vd_nbd_export *exp)
{
    unsigned long flags = vd_nbd_export_flags(exp);

    if (ioctl(dev, NBD_SET_BLKSIZE, 512UL) < 0)
        return nbd_err("Failed setting NBD block size"), -1;
    if (ioctl(dev, NBD_SET_SIZE_BLOCKS, (unsigned long)(exp->size / 512)) < 0)
        return nbd_err("Failed setting size (in blocks)"), -1;
    if (ioctl(dev, NBD_SET_FLAGS, flags) < 0) {
        int ro = exp->read_only;
        if (errno != ENOTTY)
            return nbd_err("Failed setting flags"), -1;
        if (ioctl(dev, BLKROSET, &ro) < 0)
            return nbd_err("Failed setting read-only attribute"), -1;
    }
    return 0;
}

/* Tell the device about the export and its socket, in qemu-nbd's order
 * and with its messages; on failure the device gets its socket back. */
static int configure(int dev, int sock, const struct vd_nbd_export *exp)
{
    if (ioctl(dev, NBD_SET_SOCK, (unsigned long)sock) < 0)
        return nbd_err("Failed to set NBD socket"), -1;
    if (configure_size(dev, exp) < 0) {
        ioctl(dev, NBD_CLEAR_SOCK);
        return -1;
    }
    return 0;
}

/* Open and close the device once, which makes Linux read its partition
 * table (with the module's max_part > 0). */
static void *show_parts(void *opaque)
{
    int fd = open(opaque, O_RDWR | O_CLOEXEC);

    if (fd >= 0)
        close(fd);
    return NULL;
}

/* Start show_parts in the background. */
static void scan_partitions(const char *device)
{
    pthread_attr_t attr;
    pthread_t t;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&t, &attr, show_parts, (void *)device);
    pthread_attr_destroy(&attr);
}

/* NBD_DO_IT until the device is disconnected (EPIPE then is no error),
 * then drop the queue and the socket: 0 or -1. */
static int run_device(int dev)
{
    int r = ioctl(dev, NBD_DO_IT);

    if (r < 0 && errno == EPIPE)
        r = 0;
    ioctl(dev, NBD_CLEAR_QUE);
    ioctl(dev, NBD_CLEAR_SOCK);
    return r < 0 ? -1 : 0;
}

/* See nbd.h: connect, then run NBD_DO_IT until the device is detached. */
int nbd_kernel_connect(const struct nbd_cli *cli, struct vd_nbd_server *srv,
                       const struct vd_nbd_export *exp, vd_node *node)
{
    struct kserver k = { srv, exp, -1 };
    int sv[2], dev, r;
    pthread_t t;

    (void)node;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return nbd_err("socketpair: %s", strerror(errno)), EXIT_FAILURE;
    if ((dev = open(cli->device, O_RDWR | O_CLOEXEC)) < 0) {
        nbd_err("Failed to open %s: %s", cli->device, strerror(errno));
        close(sv[0]), close(sv[1]);
        return EXIT_FAILURE;
    }
    if (configure(dev, sv[0], exp) < 0) {
        close(sv[0]), close(sv[1]), close(dev);
        return EXIT_FAILURE;
    }
    k.fd = sv[1];
    if (pthread_create(&t, NULL, serve_thread, &k) != 0) {
        ioctl(dev, NBD_CLEAR_SOCK);
        close(sv[0]), close(sv[1]), close(dev);
        return nbd_err("cannot start the server thread"), EXIT_FAILURE;
    }
    scan_partitions(cli->device);
    if (cli->pid_file && nbd_write_pid_file(cli->pid_file) < 0) {
        ioctl(dev, NBD_CLEAR_SOCK);
        close(sv[0]);
        vd_nbd_server_shutdown(srv);
        pthread_join(t, NULL);
        close(dev);
        return EXIT_FAILURE;
    }
    if (!cli->verbose || cli->fork)
        nbd_release_parent();
    else
        fprintf(stderr, "NBD device %s is now connected to %s\n", cli->device,
                cli->filename);
    r = run_device(dev);
    close(sv[0]);
    vd_nbd_server_shutdown(srv);
    pthread_join(t, NULL);
    close(dev);
    if (cli->pid_file)
        unlink(cli->pid_file);
    return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* See nbd.h: as qemu-nbd, errors of the ioctls are not reported. */
int nbd_kernel_disconnect(const char *device)
{
    int dev = open(device, O_RDWR | O_CLOEXEC);

    if (dev < 0)
        return nbd_err("Cannot open %s: %s", device, strerror(errno)), -1;
    ioctl(dev, NBD_CLEAR_QUE);
    ioctl(dev, NBD_DISCONNECT);
    ioctl(dev, NBD_CLEAR_SOCK);
    close(dev);
    printf("%s disconnected\n", device);
    return 0;
}
