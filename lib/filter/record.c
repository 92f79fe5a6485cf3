/* SPDX-License-Identifier: BSD-3-Clause */
/* record: a pass-through filter that appends every change it passes down
 * (write with its data, write-zeroes, discard, truncate), every flush and
 * every named event to a log file, so that a test can rebuild the image as
 * it stood at any point and simulate a power loss there (the model is
 * SQLite's crash test VFS).  Options: image.* (the child, as blkdebug's)
 * and log=PATH.
 *
 * Log format (all numbers little endian): the 8 bytes "VDRECLG1", then
 * records of a 1-byte type and a 4-byte payload length, then the payload:
 *   'W' off:u64 flags:u32 data   a write (flags bit 0: FUA)
 *   'Z' off:u64 len:u64          write zeroes
 *   'D' off:u64 len:u64          discard
 *   'T' size:u64                 truncate
 *   'F'                          flush: everything before is stable
 *   'E' name                     an event (vd_event), for annotation
 * A change is logged after the child completed it, and a flush when it is
 * asked for: a change logged before an 'F' was complete before that flush
 * started. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/driver.h"

#define REC_MAGIC "VDRECLG1"
#define REC_MAX_EVENT 255u

struct rec_state {
    pthread_mutex_t lock;          /* one record at a time */
    int fd;
};

/* Little-endian helpers. */
static void le64_put(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static void le32_put(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

/* Write all of buf to fd. */
static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return vd_error(w < 0 ? errno : EIO, "record: cannot write the log: %s",
                            strerror(w < 0 ? errno : EIO));
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Append one record: type, head (fixed fields) and an optional body. */
static int rec_append(vd_node *n, char type, const void *head, uint32_t hlen,
                      const void *body, uint64_t blen)
{
    struct rec_state *s = n->state;
    uint8_t pre[5];
    int r;

    if (blen > UINT32_MAX - hlen)
        return vd_error(EFBIG, "record: request too large to log");
    pre[0] = (uint8_t)type;
    le32_put(pre + 1, hlen + (uint32_t)blen);
    pthread_mutex_lock(&s->lock);
    r = write_all(s->fd, pre, sizeof(pre));
    if (r >= 0 && hlen)
        r = write_all(s->fd, head, hlen);
    if (r >= 0 && blen)
        r = write_all(s->fd, body, (size_t)blen);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Append a record of two 64-bit fields. */
static int rec_append2(vd_node *n, char type, uint64_t a, uint64_t b)
{
    uint8_t h[16];

    le64_put(h, a);
    le64_put(h + 8, b);
    return rec_append(n, type, h, 16, NULL, 0);
}

/* ---- open/close ---- */

/* Open the child from image.* (driver "file" unless given) or image=NAME. */
static int open_image(vd_node *n, vd_opts *opts, int flags)
{
    vd_opts *io = vd_opts_extract_prefix(opts, "image");
    const char *name = vd_opts_get(opts, "image");
    int r = 0;

    if (!io)
        return vd_error(ENOMEM, "out of memory");
    if (name && !vd_opts_has(io, "filename"))
        r = vd_opts_set(io, "filename", name);
    if (r >= 0 && !vd_opts_has(io, "driver"))
        r = vd_opts_set(io, "driver", "file");
    if (r < 0) {
        vd_opts_free(io);
        return vd_error(ENOMEM, "out of memory");
    }
    if (!vd_opts_get(io, "filename") && !strcmp(vd_opts_get(io, "driver"), "file")) {
        vd_opts_free(io);
        return vd_error(EINVAL, "A block device must be specified for \"image\"");
    }
    r = vd_open_child(&n->file, n, NULL, vd_opts_get(io, "driver"), io, flags);
    vd_opts_del(opts, "image");
    return r;
}

/* Create (truncate) the log and write its magic. */
static int open_log(vd_node *n, const char *path)
{
    struct rec_state *s = n->state;

    s->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (s->fd < 0)
        return vd_error(errno, "record: cannot create the log '%s': %s", path,
                        strerror(errno));
    return write_all(s->fd, REC_MAGIC, 8);
}

/* Open the child, then start the log. */
static int rec_open(vd_node *n, vd_opts *opts, int flags)
{
    struct rec_state *s = n->state;
    const char *log = vd_opts_get(opts, "log");
    int r;

    pthread_mutex_init(&s->lock, NULL);
    s->fd = -1;
    if (!log)
        return vd_error(EINVAL, "record: the option 'log' is required");
    if ((r = open_image(n, opts, flags)) < 0)
        return r;
    r = open_log(n, log);
    vd_opts_del(opts, "log");
    return r;
}

/* Close the log (the core closes the child). */
static void rec_close(vd_node *n)
{
    struct rec_state *s = n->state;

    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    pthread_mutex_destroy(&s->lock);
}

/* ---- pass-through I/O, logged ---- */

static int rec_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    return vd_pread(n->file, off, len, buf, flags);
}

/* Write, then log it with its data. */
static int rec_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    uint8_t h[12];
    int r = vd_pwrite(n->file, off, len, buf, flags);

    if (r < 0)
        return r;
    le64_put(h, off);
    le32_put(h + 8, (flags & VD_REQ_FUA) ? 1u : 0u);
    return rec_append(n, 'W', h, sizeof(h), buf, len);
}

/* Zero, then log it. */
static int rec_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    int r = vd_pwrite_zeroes(n->file, off, len, flags);

    return r < 0 ? r : rec_append2(n, 'Z', off, len);
}

/* Discard, then log it. */
static int rec_discard(vd_node *n, uint64_t off, uint64_t len)
{
    int r = vd_discard(n->file, off, len);

    return r < 0 ? r : rec_append2(n, 'D', off, len);
}

/* Log the flush; the core flushes the child right after. */
static int rec_flush(vd_node *n)
{
    return rec_append(n, 'F', NULL, 0, NULL, 0);
}

/* Resize the child, then log the new size. */
static int rec_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    uint8_t h[8];
    int r = vd_truncate(n->file, size, exact, prealloc);

    if (r < 0)
        return r;
    le64_put(h, size);
    return rec_append(n, 'T', h, sizeof(h), NULL, 0);
}

/* Log an event, then pass it on (to blkdebug below, say). */
static void rec_event(vd_node *n, const char *event)
{
    size_t l = strnlen(event, REC_MAX_EVENT);

    rec_append(n, 'E', event, (uint32_t)l, NULL, 0);
    vd_event(n->file, event);
}

/* Status of the child at the same offset. */
static int rec_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, vd_node **file)
{
    *pnum = len;
    *map = off;
    *file = n->file;
    return VD_BS_RECURSE | VD_BS_OFFSET_VALID;
}

static int64_t rec_getlength(vd_node *n)
{
    return vd_getlength(n->file);
}

static int64_t rec_allocated_size(vd_node *n)
{
    return vd_get_allocated_size(n->file);
}

/* As the child. */
static bool rec_has_zero_init(vd_node *n)
{
    const struct vd_driver *d = n->file->drv;
    return d->has_zero_init && d->has_zero_init(n->file);
}

static const struct vd_opt_desc rec_open_opts[] = {
    { "log", VD_OPT_STRING, "File the writes and flushes are logged to", NULL },
    { "image", VD_OPT_STRING, "The image whose writes are recorded", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver record_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "record",
    .kind = VD_DRV_FILTER,
    .state_size = sizeof(struct rec_state),
    .open_opts = rec_open_opts,
    .open = rec_open,
    .close = rec_close,
    .pread = rec_pread,
    .pwrite = rec_pwrite,
    .pwrite_zeroes = rec_pwrite_zeroes,
    .discard = rec_discard,
    .flush = rec_flush,
    .block_status = rec_block_status,
    .getlength = rec_getlength,
    .get_allocated_size = rec_allocated_size,
    .truncate = rec_truncate,
    .event = rec_event,
    .has_zero_init = rec_has_zero_init,
};
VD_DRIVER_REGISTER(record_driver)
