/* SPDX-License-Identifier: BSD-3-Clause */
/* The raw format: the image is the file's bytes, optionally a window of
 * them (QEMU's offset/size options).  Probes with the lowest score, so it
 * is chosen only when nothing else matches. */
#include <errno.h>
#include <string.h>

#include "util/checked.h"
#include "vdisk/driver.h"

struct raw_state {
    uint64_t offset;               /* start of the window in the file */
    uint64_t size;                 /* window size when has_size */
    bool has_size;
};

/* Lowest score: everything is a raw image. */
static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return 1;
}

/* Check the window against the file length, with QEMU's messages. */
static int check_window(const struct raw_state *s, int64_t file_len)
{
    uint64_t real = (uint64_t)file_len;

    if (s->offset > real)
        return vd_error(EINVAL, "Offset (%llu) cannot be greater than size of the "
                        "containing file (%lld)", (unsigned long long)s->offset,
                        (long long)file_len);
    if (s->has_size && real - s->offset < s->size)
        return vd_error(EINVAL, "The sum of offset (%llu) and size (%llu) has to be "
                        "smaller or equal to the  actual size of the containing file "
                        "(%lld)", (unsigned long long)s->offset,
                        (unsigned long long)s->size, (long long)file_len);
    if (s->has_size && !is_aligned(s->size, 512))
        return vd_error(EINVAL, "Specified size is not multiple of 512");
    return 0;
}

/* Read the offset/size options and check them. */
static int raw_open(vd_node *n, vd_opts *opts, int flags)
{
    struct raw_state *s = n->state;
    int64_t file_len;
    int r;

    if ((r = vd_opts_get_size(opts, "offset", 0, &s->offset)) < 0 ||
        (r = vd_opts_get_size(opts, "size", 0, &s->size)) < 0)
        return r;
    s->has_size = vd_opts_has(opts, "size");
    vd_opts_del(opts, "offset");
    vd_opts_del(opts, "size");
    file_len = vd_getlength(n->file);
    if (file_len < 0)
        return vd_error((int)-file_len, "Could not get the size of '%s'", n->filename);
    return check_window(s, file_len);
}

/* Offset in the file of image offset off (in range: checked by the core). */
static int file_offset(const struct raw_state *s, uint64_t off, uint64_t *out)
{
    if (ADD_OVERFLOW(off, s->offset, out))
        return vd_error(EINVAL, "raw: offset %llu overflows", (unsigned long long)off);
    return 0;
}

/* Offloaded copy from the window: shift into the file. */
static int raw_copy_range_from(vd_node *src, uint64_t soff, vd_node *dst,
                               uint64_t doff, uint64_t len)
{
    uint64_t off;
    int r = file_offset(src->state, soff, &off);
    return r < 0 ? r : vd_copy_range(src->file, off, dst, doff, len);
}

/* Offloaded copy into the window: shift into the file. */
static int raw_copy_range_to(vd_node *src, uint64_t soff, vd_node *dst,
                             uint64_t doff, uint64_t len)
{
    uint64_t off;
    int r = file_offset(dst->state, doff, &off);
    return r < 0 ? r : vd_copy_range(src, soff, dst->file, off, len);
}

/* Read through to the file (QEMU emits read_aio for blkdebug here). */
static int raw_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    uint64_t fo;
    int r = file_offset(n->state, off, &fo);

    if (r < 0)
        return r;
    vd_event(n->file, "read_aio");
    return vd_pread(n->file, fo, len, buf, flags);
}

/* Write through to the file (with the write_aio event). */
static int raw_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    uint64_t fo;
    int r = file_offset(n->state, off, &fo);

    if (r < 0)
        return r;
    vd_event(n->file, "write_aio");
    return vd_pwrite(n->file, fo, len, buf, flags);
}

/* Zero through to the file. */
static int raw_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    uint64_t fo;
    int r = file_offset(n->state, off, &fo);

    return r < 0 ? r : vd_pwrite_zeroes(n->file, fo, len, flags);
}

/* Discard through to the file. */
static int raw_discard(vd_node *n, uint64_t off, uint64_t len)
{
    uint64_t fo;
    int r = file_offset(n->state, off, &fo);

    return r < 0 ? r : vd_discard(n->file, fo, len);
}

/* Everything is where the file has it: let the core ask the file. */
static int raw_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, vd_node **file)
{
    int r = file_offset(n->state, off, map);

    if (r < 0)
        return r;
    *pnum = len;
    *file = n->file;
    return VD_BS_RECURSE | VD_BS_OFFSET_VALID;
}

/* The window size, or what the file has past the offset. */
static int64_t raw_getlength(vd_node *n)
{
    struct raw_state *s = n->state;
    int64_t file_len;

    if (s->has_size)
        return (int64_t)s->size;
    file_len = vd_getlength(n->file);
    if (file_len < 0)
        return file_len;
    return (uint64_t)file_len > s->offset ? file_len - (int64_t)s->offset : 0;
}

/* Resize the file (a fixed-size window cannot be resized). */
static int raw_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct raw_state *s = n->state;
    uint64_t fsize;

    if (s->has_size)
        return vd_error(ENOTSUP, "Cannot resize fixed-size raw disks");
    if (ADD_OVERFLOW(size, s->offset, &fsize) || fsize > INT64_MAX)
        return vd_error(EINVAL, "Disk size too large for the chosen offset");
    return vd_truncate(n->file, fsize, exact, prealloc);
}

/* As the file: zero after create when the file is. */
static bool raw_has_zero_init(vd_node *n)
{
    const struct vd_driver *d = n->file->drv;
    return d->has_zero_init && d->has_zero_init(n->file);
}

/* Create: the file itself, with the protocol's options (size,
 * preallocation, nocow, ...). */
static int raw_create(const char *filename, vd_opts *opts)
{
    return vd_protocol_create(filename, opts);
}

/* A raw image needs exactly its size, rounded up to a sector as QEMU. */
static int raw_measure(vd_opts *opts, vd_node *src, uint64_t size_in,
                       struct vd_measure_info *out)
{
    uint64_t size = size_in;

    if (src) {
        int64_t l = vd_getlength(src);
        if (l < 0)
            return (int)l;
        size = (uint64_t)l;
    }
    if (!round_up_checked(size, 512, &size))
        return vd_error(EINVAL, "Image size is too large");
    memset(out, 0, sizeof(*out));
    out->required = size;
    out->fully_allocated = size;
    return 0;
}

static const struct vd_opt_desc raw_open_opts[] = {
    { "offset", VD_OPT_SIZE, "offset in the disk where the image starts", "0" },
    { "size", VD_OPT_SIZE, "virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

/* -o help text as qemu-img 7.2 prints it. */
static const struct vd_opt_desc raw_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver raw_driver = {
    .data_only = true,
    .copy_range_from = raw_copy_range_from,
    .copy_range_to = raw_copy_range_to,
    .struct_size = sizeof(struct vd_driver),
    .name = "raw",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct raw_state),
    .open_opts = raw_open_opts,
    .create_opts = raw_create_opts,
    .probe = raw_probe,
    .open = raw_open,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .discard = raw_discard,
    .block_status = raw_block_status,
    .getlength = raw_getlength,
    .truncate = raw_truncate,
    .create = raw_create,
    .measure = raw_measure,
    .has_zero_init = raw_has_zero_init,
};
VD_DRIVER_REGISTER(raw_driver)
