/* SPDX-License-Identifier: BSD-3-Clause */
/* The null protocol ("null-co", alias "null-aio"): a device of a given
 * size that discards writes and reads without touching storage, with an
 * optional latency.  For benchmarks of everything above the storage. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "vdisk/driver.h"

#define NULL_DEFAULT_SIZE (1ull << 30)   /* QEMU's default: 1 GiB */

struct null_state {
    uint64_t size;
    uint64_t latency_ns;
    bool read_zeroes;
};

/* Accept only "null-co://" / "null-aio://" as a file name, as QEMU. */
static int parse_name(const char *name, vd_opts *opts, const char *drv)
{
    char want[32];

    snprintf(want, sizeof(want), "%s://", drv);
    if (strcmp(name, want))
        return vd_error(EINVAL, "The only allowed filename for this driver is '%s'", want);
    return 0;
}

/* Name parser of null-co. */
static int null_co_parse_filename(const char *name, vd_opts *opts)
{
    return parse_name(name, opts, "null-co");
}

/* Name parser of null-aio. */
static int null_aio_parse_filename(const char *name, vd_opts *opts)
{
    return parse_name(name, opts, "null-aio");
}

/* Read size, latency-ns and read-zeroes (default off, as QEMU 7.2). */
static int null_open(vd_node *n, vd_opts *opts, int flags)
{
    struct null_state *s = n->state;
    int r;

    if ((r = vd_opts_get_size(opts, "size", NULL_DEFAULT_SIZE, &s->size)) < 0 ||
        (r = vd_opts_get_u64(opts, "latency-ns", 0, &s->latency_ns)) < 0 ||
        (r = vd_opts_get_bool(opts, "read-zeroes", false, &s->read_zeroes)) < 0)
        return r;
    if (s->size > INT64_MAX)
        return vd_error(EINVAL, "size %llu is too large", (unsigned long long)s->size);
    vd_opts_del(opts, "filename");
    return 0;
}

/* Sleep for the configured latency. */
static void null_delay(const struct null_state *s)
{
    struct timespec ts = {
        .tv_sec = (time_t)(s->latency_ns / 1000000000u),
        .tv_nsec = (long)(s->latency_ns % 1000000000u),
    };

    if (s->latency_ns)
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
}

/* Reads return zeroes.  QEMU leaves the buffer untouched unless
 * read-zeroes=on; vdisk always clears it so that no stale memory can reach
 * a reader (an NBD client, say). */
static int null_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    null_delay(n->state);
    memset(buf, 0, len);
    return 0;
}

/* Writes are dropped. */
static int null_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    null_delay(n->state);
    return 0;
}

/* Zeroing is dropped. */
static int null_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    null_delay(n->state);
    return 0;
}

/* Flush has nothing to do (but costs the latency). */
static int null_flush(vd_node *n)
{
    null_delay(n->state);
    return 0;
}

/* QEMU's answer: offset valid in this node, zero only with read-zeroes
 * (otherwise neither data nor zero, i.e. unallocated). */
static int null_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                             uint64_t *map, vd_node **file)
{
    const struct null_state *s = n->state;

    *pnum = len;
    *map = off;
    *file = n;
    return VD_BS_OFFSET_VALID | (s->read_zeroes ? VD_BS_ZERO : 0);
}

/* The configured size. */
static int64_t null_getlength(vd_node *n)
{
    const struct null_state *s = n->state;
    return (int64_t)s->size;
}

/* Nothing is allocated on the host. */
static int64_t null_get_allocated_size(vd_node *n)
{
    return 0;
}

static const struct vd_opt_desc null_open_opts[] = {
    { "size", VD_OPT_SIZE, "size of the null block", "1G" },
    { "latency-ns", VD_OPT_NUMBER, "nanoseconds (approximated) to wait before "
      "completing request", "0" },
    { "read-zeroes", VD_OPT_BOOL, "return zeroes when read", "off" },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver null_co_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "null-co",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "null-co",
    .state_size = sizeof(struct null_state),
    .open_opts = null_open_opts,
    .parse_filename = null_co_parse_filename,
    .open = null_open,
    .pread = null_pread,
    .pwrite = null_pwrite,
    .pwrite_zeroes = null_pwrite_zeroes,
    .flush = null_flush,
    .block_status = null_block_status,
    .getlength = null_getlength,
    .get_allocated_size = null_get_allocated_size,
};
VD_DRIVER_REGISTER(null_co_driver)

static const struct vd_driver null_aio_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "null-aio",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "null-aio",
    .state_size = sizeof(struct null_state),
    .open_opts = null_open_opts,
    .parse_filename = null_aio_parse_filename,
    .open = null_open,
    .pread = null_pread,
    .pwrite = null_pwrite,
    .pwrite_zeroes = null_pwrite_zeroes,
    .flush = null_flush,
    .block_status = null_block_status,
    .getlength = null_getlength,
    .get_allocated_size = null_get_allocated_size,
};
VD_DRIVER_REGISTER(null_aio_driver)
