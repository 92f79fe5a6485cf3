/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the NBD server: the input is everything a client
 * sends (handshake, options, requests, payloads), fed over a socketpair to
 * a server exporting a memory node (with two dirty bitmaps, one offered
 * twice); the replies are drained and dropped.
 * Nothing the client sends may crash, hang or leak the server. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd/server.h"
#include "nbd/wire.h"
#include "vdisk/bitmap.h"
#include "vdisk/driver.h"

struct feed {
    int fd;
    const uint8_t *data;
    size_t size;
};

/* Send the input, then end the client's half of the stream. */
static void *writer(void *opaque)
{
    struct feed *f = opaque;

    vd_wire_write(f->fd, f->data, f->size);
    shutdown(f->fd, SHUT_WR);
    return NULL;
}

/* Read and drop replies until the server closes. */
static void *drainer(void *opaque)
{
    struct feed *f = opaque;
    char buf[65536];

    while (read(f->fd, buf, sizeof(buf)) > 0)
        ;
    return NULL;
}

/* A 1 MiB memory disk, registered here so that the harness needs no
 * other driver to be linked in. */
#define MEM_SIZE (1u << 20)
static uint8_t mem[MEM_SIZE];

static int mem_open(vd_node *n, vd_opts *opts, int flags)
{
    vd_opts_del(opts, "filename");
    return 0;
}
static int mem_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    memcpy(buf, mem + off, len);
    return 0;
}
static int mem_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    memcpy(mem + off, buf, len);
    return 0;
}
static int mem_zero(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    memset(mem + off, 0, len);
    return 0;
}
static int mem_discard(vd_node *n, uint64_t off, uint64_t len)
{
    return mem_zero(n, off, len, 0);
}
static int64_t mem_getlength(vd_node *n)
{
    return MEM_SIZE;
}

/* Bitmaps of the memory disk: dirty in every other 64 KiB (b0) or 512 B
 * (any other name), so qemu:dirty-bitmap:NAME answers have many extents. */
static int mem_bitmap(vd_node *n, struct vd_bitmap_req *req)
{
    uint64_t g = strcmp(req->name ? req->name : "", "b0") ? 512 : 65536;

    if (req->op != VD_BITMAP_STATUS)
        return -ENOTSUP;
    req->dirty = (req->off / g) % 2;
    req->pnum = g - req->off % g;
    if (req->pnum > req->len)
        req->pnum = req->len;
    return 0;
}

static const struct vd_driver fuzz_mem = {
    .struct_size = sizeof(struct vd_driver),
    .name = "fuzz-mem",
    .kind = VD_DRV_PROTOCOL,
    .open = mem_open,
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .pwrite_zeroes = mem_zero,
    .discard = mem_discard,
    .getlength = mem_getlength,
    .bitmap = mem_bitmap,
};
VD_DRIVER_REGISTER(fuzz_mem)

/* The node every input is served from. */
static vd_node *mem_node(void)
{
    static vd_node *node;
    vd_opts *o;

    if (node)
        return node;
    o = vd_opts_new();
    vd_opts_set(o, "driver", "fuzz-mem");
    if (vd_open(&node, NULL, NULL, o, VD_O_RDWR | VD_O_NO_LOCK) < 0)
        abort();
    return node;
}

/* One input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vd_nbd_bitmap bms[3] = { { "b0", NULL }, { "b1", NULL }, { "b0", NULL } };
    struct vd_nbd_export exps[2] = {
        { .name = "", .description = "fuzz", .size = 1 << 20, .allocation_depth = true,
          .discard_unmap = true, .detect_zeroes = VD_NBD_DZ_ON, .bitmaps = bms,
          .nbitmaps = 3 },
        { .name = "ro", .offset = 4096, .size = (1 << 20) - 4096, .read_only = true },
    };
    struct vd_nbd_server srv;
    struct feed f;
    pthread_t tw, td;
    int sv[2];

    exps[0].node = exps[1].node = bms[0].node = bms[1].node = bms[2].node = mem_node();
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 0;
    vd_nbd_server_init(&srv);
    srv.exports = exps;
    srv.nexports = 2;
    srv.handshake_limit_ms = 0;
    srv.workers = 2;
    f = (struct feed){ sv[0], data, size };
    pthread_create(&tw, NULL, writer, &f);
    pthread_create(&td, NULL, drainer, &f);
    vd_nbd_server_serve(&srv, sv[1]);      /* closes sv[1] */
    pthread_join(tw, NULL);
    pthread_join(td, NULL);
    close(sv[0]);
    vd_nbd_server_destroy(&srv);
    return 0;
}
