/* SPDX-License-Identifier: BSD-3-Clause */
/* -c/-d: attach an export to the kernel's NBD client (/dev/nbdX) with the
 * NBD ioctls, serving it over a socketpair (the kernel learns the size
 * and flags by ioctl, so there is no handshake), and detach it again. */
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

/* Tell the device about the export and its socket. */
static int configure(int dev, int sock, const struct vd_nbd_export *exp)
{
    if (ioctl(dev, NBD_SET_BLKSIZE, 512UL) < 0 ||
        ioctl(dev, NBD_SET_SIZE_BLOCKS, (unsigned long)(exp->size / 512)) < 0)
        return nbd_err("Failed setting size: %s", strerror(errno)), -1;
    ioctl(dev, NBD_CLEAR_SOCK);
    if (ioctl(dev, NBD_SET_FLAGS, (unsigned long)vd_nbd_export_flags(exp)) < 0 &&
        errno != ENOTTY)
        return nbd_err("Failed setting flags: %s", strerror(errno)), -1;
    if (exp->read_only && ioctl(dev, BLKROSET, &(int){ 1 }) < 0)
        return nbd_err("Failed setting read-only attribute: %s", strerror(errno)), -1;
    if (ioctl(dev, NBD_SET_SOCK, (unsigned long)sock) < 0)
        return nbd_err("Failed to set NBD socket: %s", strerror(errno)), -1;
    return 0;
}

/* See nbd.h: connect, then run NBD_DO_IT until the device is detached. */
int nbd_kernel_connect(const struct nbd_cli *cli, struct vd_nbd_server *srv,
                       const struct vd_nbd_export *exp, vd_node *node)
{
    struct kserver k = { srv, exp, -1 };
    int sv[2], dev;
    pthread_t t;

    if ((dev = open(cli->device, O_RDWR | O_CLOEXEC)) < 0)
        return nbd_err("Failed to open %s: %s", cli->device, strerror(errno)), EXIT_FAILURE;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        nbd_err("socketpair: %s", strerror(errno));
        close(dev);
        return EXIT_FAILURE;
    }
    if (configure(dev, sv[0], exp) < 0) {
        close(sv[0]), close(sv[1]), close(dev);
        return EXIT_FAILURE;
    }
    k.fd = sv[1];
    if (pthread_create(&t, NULL, serve_thread, &k) != 0) {
        close(sv[0]), close(sv[1]), close(dev);
        return nbd_err("cannot start the server thread"), EXIT_FAILURE;
    }
    if (ioctl(dev, NBD_DO_IT) < 0 && errno != EBUSY)
        nbd_err("NBD_DO_IT: %s", strerror(errno));
    ioctl(dev, NBD_CLEAR_QUE);
    ioctl(dev, NBD_CLEAR_SOCK);
    close(sv[0]);
    vd_nbd_server_shutdown(srv);
    pthread_join(t, NULL);
    close(dev);
    return EXIT_SUCCESS;
}

/* See nbd.h. */
int nbd_kernel_disconnect(const char *device)
{
    int dev = open(device, O_RDWR | O_CLOEXEC);

    if (dev < 0)
        return nbd_err("Cannot open %s: %s", device, strerror(errno)), -1;
    if (ioctl(dev, NBD_DISCONNECT) < 0 || ioctl(dev, NBD_CLEAR_SOCK) < 0) {
        nbd_err("Cannot disconnect %s: %s", device, strerror(errno));
        close(dev);
        return -1;
    }
    close(dev);
    printf("%s disconnected\n", device);
    return 0;
}
