/* SPDX-License-Identifier: BSD-3-Clause */
/* Protocol drivers for host files: "file" (regular files), "host_device"
 * (block and character devices) and "host_cdrom".  Data I/O is synchronous
 * pread/pwrite from the caller's thread (the callers supply parallelism);
 * open takes QEMU-compatible image locks (lib/core/lock.c). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/cdrom.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/lock.h"
#include "util/checked.h"
#include "vdisk/driver.h"

/* Largest O_DIRECT alignment probed, and QEMU's "first block" size. */
#define MAX_BLOCKSIZE 4096
/* Chunk of zeroes written by preallocation=full. */
#define PREALLOC_CHUNK (1u << 20)
/* QEMU's default extent size hint for new files. */
#define DEFAULT_EXTENT_HINT (1u << 20)

enum file_kind { KIND_FILE, KIND_HDEV, KIND_CDROM };

struct file_state {
    int fd;
    enum file_kind kind;
    bool regular;                  /* S_ISREG */
    bool is_bdev;                  /* S_ISBLK */
    uint32_t sector;               /* logical block size of a device */
    bool direct;                   /* O_DIRECT (cache.direct=on) */
    bool no_flush;                 /* cache.no-flush=on: flushes do nothing */
    bool unmap;                    /* discard=unmap (the default) */
    bool use_lock;                 /* image locks are taken */
    bool force_share;              /* -U: share every permission */
    uint64_t perm, shared;         /* permissions the lock bytes express */
    pthread_mutex_t write_lock;    /* one buffered write at a time (file_pwrite) */
    bool write_lock_init;
    /* Operations found unsupported, not tried again. */
    atomic_bool no_zero_range, no_punch, no_zeroout, no_nowait;
};

static const struct vd_driver file_driver, hdev_driver, cdrom_driver;

/* Is n opened by one of the drivers of this file? */
static bool is_file_node(const vd_node *n)
{
    return n->drv == &file_driver || n->drv == &hdev_driver || n->drv == &cdrom_driver;
}

/* ---- helpers ---- */

/* Record an I/O error as just its strerror text (the tool adds where). */
static int io_error(int err)
{
    return vd_error(err, "%s", strerror(err));
}

/* fallocate() that retries on EINTR; -errno on failure. */
static int do_fallocate(int fd, int mode, uint64_t off, uint64_t len)
{
    while (fallocate(fd, mode, (off_t)off, (off_t)len) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Is this errno "the operation is not supported here"? */
static bool is_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS ||
           err == ENOTTY || err == EINVAL;
}

/* Length of an open fd: st_size for files, the device size otherwise. */
static int64_t fd_length(int fd, const struct stat *st)
{
    uint64_t size;
    off_t end;

    if (S_ISREG(st->st_mode))
        return st->st_size;
    if (S_ISBLK(st->st_mode) && ioctl(fd, BLKGETSIZE64, &size) == 0)
        return size > INT64_MAX ? -EOVERFLOW : (int64_t)size;
    end = lseek(fd, 0, SEEK_END);
    return end < 0 ? -errno : end;
}

/* Write zeroes to the first block so that O_DIRECT alignment probing of
 * the new file works (as QEMU does); failures are ignored. */
static void allocate_first_block(int fd, uint64_t size)
{
    size_t n = size < MAX_BLOCKSIZE ? 512 : MAX_BLOCKSIZE;
    void *buf;

    n = (size_t)VD_MIN((uint64_t)n, size);
    if (!n || posix_memalign(&buf, MAX_BLOCKSIZE, MAX_BLOCKSIZE))
        return;
    memset(buf, 0, MAX_BLOCKSIZE);
    while (pwrite(fd, buf, n, 0) < 0 && errno == EINTR)
        ;
    free(buf);
}

/* ---- option parsing ---- */

/* Parse an on/off/auto option; auto counts as on (OFD locks always exist
 * on Linux). */
static int parse_locking(const char *v, bool *out)
{
    if (!v || !strcmp(v, "auto") || !strcmp(v, "on")) {
        *out = true;
        return 0;
    }
    if (!strcmp(v, "off")) {
        *out = false;
        return 0;
    }
    return vd_error(EINVAL, "invalid parameter value: %s", v);
}

/* Parse discard=ignore|off|unmap|on (default unmap, as qemu-img). */
static int parse_discard(const char *v, bool *out)
{
    if (!v || !strcmp(v, "unmap") || !strcmp(v, "on"))
        *out = true;
    else if (!strcmp(v, "ignore") || !strcmp(v, "off"))
        *out = false;
    else
        return vd_error(EINVAL, "Invalid discard option");
    return 0;
}

/* Check aio=threads|native|io_uring.  All three are served by the same
 * synchronous pread/pwrite from the caller's threads: native and io_uring
 * are accepted for compatibility and fall back to threads. */
static int parse_aio(const char *v, bool direct)
{
    if (!v || !strcmp(v, "threads") || !strcmp(v, "io_uring"))
        return 0;
    if (strcmp(v, "native"))
        return vd_error(EINVAL, "invalid parameter value: %s", v);
    if (!direct)
        return vd_error(EINVAL, "aio=native was specified, but it requires "
                        "cache.direct=on, which was not specified.");
    return 0;
}

/* Read the open options into the state. */
static int parse_open_opts(struct file_state *s, vd_opts *opts, int flags)
{
    int r;

    if ((r = vd_opts_get_bool(opts, "cache.direct", false, &s->direct)) < 0 ||
        (r = vd_opts_get_bool(opts, "cache.no-flush", false, &s->no_flush)) < 0 ||
        (r = parse_discard(vd_opts_get(opts, "discard"), &s->unmap)) < 0 ||
        (r = parse_aio(vd_opts_get(opts, "aio"), s->direct)) < 0 ||
        (r = parse_locking(vd_opts_get(opts, "locking"), &s->use_lock)) < 0)
        return r;
    if (flags & VD_O_NO_LOCK)
        s->use_lock = false;
    s->force_share = flags & VD_O_FORCE_SHARE;
    return 0;
}

/* ---- opening ---- */

/* open(2) the file with flags derived from the node flags. */
static int open_fd(struct file_state *s, const char *fn, bool rdwr)
{
    int oflags = (rdwr ? O_RDWR : O_RDONLY) | O_CLOEXEC;

    if (s->direct)
        oflags |= O_DIRECT;
    if (s->kind == KIND_CDROM)
        oflags |= O_NONBLOCK;     /* opens even with no medium inserted */
    s->fd = open(fn, oflags);
    if (s->fd < 0) {
        int err = errno == EROFS ? EACCES : errno;
        return vd_error(err, "Could not open '%s': %s", fn, strerror(errno));
    }
    return 0;
}

/* Refuse a file of the wrong type for the driver (QEMU's messages). */
static int check_file_type(struct file_state *s, const char *drv, const char *fn)
{
    struct stat st;

    if (fstat(s->fd, &st) < 0)
        return vd_error(errno, "Could not stat '%s': %s", fn, strerror(errno));
    s->regular = S_ISREG(st.st_mode);
    s->is_bdev = S_ISBLK(st.st_mode);
    s->sector = 512;
    if (s->is_bdev) {
        int ssz = 0;
        if (ioctl(s->fd, BLKSSZGET, &ssz) == 0 && ssz > 0 && is_power_of_2((uint64_t)ssz))
            s->sector = (uint32_t)ssz;
    }
    if (s->kind == KIND_FILE && !s->regular)
        return vd_error(EINVAL, "'%s' driver requires '%s' to be a regular file", drv, fn);
    if (s->kind != KIND_FILE && !s->is_bdev && !S_ISCHR(st.st_mode))
        return vd_error(EINVAL, "'%s' driver requires '%s' to be either a character "
                        "or block device", drv, fn);
    return 0;
}

/* Does an aligned O_DIRECT read of align bytes at offset 0 work? */
static bool direct_read_works(int fd, void *buf, uint32_t align)
{
    ssize_t r;

    do {
        r = pread(fd, buf, align, 0);
    } while (r < 0 && errno == EINTR);
    return r >= 0;
}

/* Find the O_DIRECT request alignment: the device's logical block size,
 * else the smallest of 512..4096 whose aligned read works. */
static int probe_alignment(vd_node *n, struct file_state *s)
{
    void *buf;

    if (s->is_bdev) {
        n->request_alignment = s->sector;
        return 0;
    }
    if (posix_memalign(&buf, MAX_BLOCKSIZE, MAX_BLOCKSIZE))
        return vd_error(ENOMEM, "out of memory");
    for (uint32_t a = 512; a <= MAX_BLOCKSIZE; a *= 2) {
        if (direct_read_works(s->fd, buf, a)) {
            n->request_alignment = a;
            free(buf);
            return 0;
        }
    }
    free(buf);
    return vd_error(EINVAL, "Could not find working O_DIRECT alignment");
}

/* Take the image locks QEMU's qemu-img/qemu-io take on a raw image:
 * consistent read (+ write when writable), sharing everything unless
 * VD_O_NO_SHARE (convert's sources: no other writer or resizer).  Format
 * drivers with metadata narrow this with vd_file_lock_for_metadata(). */
static int lock_on_open(vd_node *n, struct file_state *s)
{
    uint64_t perm = VD_PERM_CONSISTENT_READ, shared = VD_PERM_ALL;
    int r;

    if (!s->use_lock)
        return 0;
    if (!n->read_only)
        perm |= VD_PERM_WRITE;
    if (!n->read_only && (n->flags & VD_O_RESIZE))
        perm |= VD_PERM_RESIZE;
    if (n->flags & VD_O_NO_SHARE)
        shared = VD_PERM_CONSISTENT_READ | VD_PERM_WRITE_UNCHANGED;
    r = vd_lock_change(s->fd, 0, VD_PERM_ALL, perm, shared, n->filename);
    if (r < 0)
        return r;
    s->perm = perm;
    s->shared = shared;
    return 0;
}

/* Common open for the three drivers. */
static int open_common(vd_node *n, vd_opts *opts, int flags, enum file_kind kind)
{
    struct file_state *s = n->state;
    const char *fn = vd_opts_get(opts, "filename");
    int r;

    s->fd = -1;
    s->kind = kind;
    pthread_mutex_init(&s->write_lock, NULL);
    s->write_lock_init = true;
    if (!fn || !*fn)
        return vd_error(EINVAL, "The '%s' block driver requires a file name", n->drv->name);
    if ((r = parse_open_opts(s, opts, flags)) < 0)
        return r;
    if (kind == KIND_CDROM)
        n->read_only = true;
    if ((r = open_fd(s, fn, !n->read_only)) < 0)
        return r;
    if ((r = check_file_type(s, n->drv->name, fn)) < 0 ||
        (s->direct && (r = probe_alignment(n, s)) < 0) ||
        (r = lock_on_open(n, s)) < 0) {
        close(s->fd);
        s->fd = -1;
        return r;
    }
    return 0;
}

/* Open a regular file. */
static int file_open(vd_node *n, vd_opts *opts, int flags)
{
    return open_common(n, opts, flags, KIND_FILE);
}

/* Open a block or character device. */
static int hdev_open(vd_node *n, vd_opts *opts, int flags)
{
    return open_common(n, opts, flags, KIND_HDEV);
}

/* Open a CD-ROM device (always read-only). */
static int cdrom_open(vd_node *n, vd_opts *opts, int flags)
{
    return open_common(n, opts, flags, KIND_CDROM);
}

/* Close the fd, which drops the OFD locks too. */
static void file_close(vd_node *n)
{
    struct file_state *s = n->state;

    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->write_lock_init)
        pthread_mutex_destroy(&s->write_lock);
    s->write_lock_init = false;
}

/* ---- data I/O ---- */

/* VD_REQ_NOWAIT: one preadv2(RWF_NOWAIT) of the whole range from the page
 * cache.  -EAGAIN when it would block, when only part was cached (or the
 * file ends early: the blocking read knows what to do there) and when the
 * file cannot be read that way; the caller then reads without the flag.
 * No message is recorded for -EAGAIN: it asks for a retry, not an error. */
static int file_pread_nowait(struct file_state *s, uint64_t off, uint64_t len, void *buf)
{
    struct iovec iov = { buf, (size_t)len };
    ssize_t r;

    if (!s->regular || s->direct || len > SSIZE_MAX || atomic_load(&s->no_nowait))
        return -EAGAIN;
    do {
        r = preadv2(s->fd, &iov, 1, (off_t)off, RWF_NOWAIT);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EAGAIN && is_unsupported(errno)) {
        atomic_store(&s->no_nowait, true);
        return -EAGAIN;
    }
    if (r < 0)
        return errno == EAGAIN ? -EAGAIN : io_error(errno);
    return (uint64_t)r == len ? 0 : -EAGAIN;
}

/* Read; bytes past the end of the file read as zeroes (short reads at EOF,
 * also an unaligned tail under O_DIRECT). */
static int file_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct file_state *s = n->state;
    char *p = buf;

    if (flags & VD_REQ_NOWAIT)
        return file_pread_nowait(s, off, len, buf);
    while (len) {
        size_t want = (size_t)VD_MIN(len, (uint64_t)SSIZE_MAX);
        ssize_t r = pread(s->fd, p, want, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return io_error(errno);
        if (r == 0)
            break;
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
        if (s->direct && (size_t)r < want)
            break;
    }
    memset(p, 0, len);
    return 0;
}

/* Largest single pwrite into the page cache.  The kernel gives a write
 * page-cache folios as large as the write (1 MiB writes: 1 MiB folios),
 * and in a virtual machine whose free memory goes back to the host, such
 * large blocks are the ones the host took back: each costs a fault there.
 * Writes of 256 KiB take smaller folios: converting a 2 GiB image to raw
 * took 0.25-0.38 s instead of 1.0-1.6 s on such a machine, and the extra
 * system calls (one per 256 KiB) cost nothing measurable. */
#define BUFFERED_WRITE_MAX (256u << 10)

/* Large buffered writes to a regular file run one at a time: a request of
 * at least WRITE_LOCK_MIN bytes is written under the file's write_lock.
 * The kernel runs buffered writes to a file one at a time anyway (the inode
 * lock is held over the page-cache copy), but a writer waiting for that
 * lock spins on its CPU while the holder runs: with the copy engine's eight
 * workers writing 1-2 MiB requests to one file, that spinning took a fifth
 * of a convert's CPU, from the threads receiving the data (rbd -> raw on
 * two cores: 1.7 instead of 2.2 CPU seconds, 10-16% less time).  Waiters on
 * write_lock sleep instead.  Small writes (a server's 4 KiB writes) go
 * straight to the kernel, whose spinning is cheaper than a sleep for such
 * short holds (sleeping cost vdisk-nbd a fifth of its random-write IOPS).
 * O_DIRECT writes and devices are never serialised. */
#define WRITE_LOCK_MIN BUFFERED_WRITE_MAX

static int pwrite_all(struct file_state *s, uint64_t off, uint64_t len, const char *p,
                      uint64_t piece)
{
    while (len) {
        ssize_t r = pwrite(s->fd, p, (size_t)VD_MIN(len, piece), (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return io_error(errno);
        if (r == 0)
            return io_error(ENOSPC);
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

/* Write everything, then fdatasync for FUA. */
static int file_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct file_state *s = n->state;
    bool buffered = s->regular && !s->direct;
    bool serial = buffered && len >= WRITE_LOCK_MIN;
    int r;

    if (serial)
        pthread_mutex_lock(&s->write_lock);
    r = pwrite_all(s, off, len, buf, buffered ? BUFFERED_WRITE_MAX : SSIZE_MAX);
    if (serial)
        pthread_mutex_unlock(&s->write_lock);
    if (r < 0)
        return r;
    if ((flags & VD_REQ_FUA) && !s->no_flush && fdatasync(s->fd) < 0)
        return io_error(errno);
    return 0;
}

/* Try one fallocate mode, remembering in *off_flag when it is unsupported.
 * 0 done, -ENOTSUP not possible, other -errno a real error. */
static int try_fallocate(struct file_state *s, atomic_bool *off_flag, int mode,
                         uint64_t off, uint64_t len)
{
    int r;

    if (atomic_load(off_flag))
        return -ENOTSUP;
    r = do_fallocate(s->fd, mode, off, len);
    if (r < 0 && is_unsupported(-r)) {
        atomic_store(off_flag, true);
        return -ENOTSUP;
    }
    return r;
}

/* BLKZEROOUT on a block device; -ENOTSUP when unsupported. */
static int try_zeroout(struct file_state *s, uint64_t off, uint64_t len)
{
    uint64_t range[2] = { off, len };

    if (atomic_load(&s->no_zeroout))
        return -ENOTSUP;
    while (ioctl(s->fd, BLKZEROOUT, range) < 0) {
        if (errno == EINTR)
            continue;
        if (is_unsupported(errno)) {
            atomic_store(&s->no_zeroout, true);
            return -ENOTSUP;
        }
        return -errno;
    }
    return 0;
}

/* Zero a range without writing a buffer: punch a hole when unmapping is
 * allowed, else zero the range in place; -ENOTSUP lets the core fall back
 * to writing zeroes.  Block devices use BLKZEROOUT, except with
 * NO_FALLBACK (the kernel may itself write zeroes slowly). */
static int file_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct file_state *s = n->state;
    int r = -ENOTSUP;

    if (s->is_bdev && !is_aligned(off | len, s->sector))
        return -ENOTSUP;      /* device ioctls work in whole sectors */
    if ((flags & VD_REQ_MAY_UNMAP) && s->unmap)
        r = try_fallocate(s, &s->no_punch, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          off, len);
    if (r == -ENOTSUP && s->regular)
        r = try_fallocate(s, &s->no_zero_range, FALLOC_FL_ZERO_RANGE, off, len);
    if (r == -ENOTSUP && s->is_bdev && !(flags & VD_REQ_NO_FALLBACK))
        r = try_zeroout(s, off, len);
    if (r == -ENOTSUP)
        return r;
    if (r < 0)
        return io_error(-r);
    if ((flags & VD_REQ_FUA) && !s->no_flush && fdatasync(s->fd) < 0)
        return io_error(errno);
    return 0;
}

/* Offloaded copy between two host files with copy_file_range. */
static int file_copy_range_to(vd_node *src, uint64_t soff, vd_node *dst,
                              uint64_t doff, uint64_t len)
{
    const struct file_state *s = src->state, *d = dst->state;

    if (!is_file_node(src) || !is_file_node(dst) || soff > INT64_MAX ||
        doff > INT64_MAX)
        return -ENOTSUP;
    while (len) {
        loff_t so = (loff_t)soff, dof = (loff_t)doff;
        ssize_t n = copy_file_range(s->fd, &so, d->fd, &dof, VD_MIN(len, (uint64_t)1 << 30), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
                      errno == EINVAL || errno == EBADF))
            return -ENOTSUP;
        if (n < 0)
            return vd_error(errno, "%s", strerror(errno));
        if (n == 0)
            return -ENOTSUP;      /* source shorter than expected: fall back */
        soff += (uint64_t)n;
        doff += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 0;
}

/* Discard: punch a hole (files, and block devices since Linux 4.9), else
 * BLKDISCARD.  Advisory: unsupported discards succeed doing nothing. */
static int file_discard(vd_node *n, uint64_t off, uint64_t len)
{
    struct file_state *s = n->state;
    uint64_t range[2] = { off, len };
    int r;

    if (!s->unmap)
        return 0;
    r = try_fallocate(s, &s->no_punch, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      off, len);
    if (r == -ENOTSUP && s->is_bdev && is_aligned(off | len, s->sector)) {
        r = 0;
        if (ioctl(s->fd, BLKDISCARD, range) < 0)
            r = is_unsupported(errno) ? -ENOTSUP : -errno;
    }
    if (r == -ENOTSUP)
        return 0;
    return r < 0 ? io_error(-r) : 0;
}

/* fdatasync, or nothing with cache.no-flush=on (cache=unsafe). */
static int file_flush(vd_node *n)
{
    struct file_state *s = n->state;

    if (s->no_flush)
        return 0;
    while (fdatasync(s->fd) < 0) {
        if (errno != EINTR)
            return io_error(errno);
    }
    return 0;
}

/* ---- sizes and allocation ---- */

/* Current length of the file or device. */
static int64_t file_getlength(vd_node *n)
{
    struct file_state *s = n->state;
    struct stat st;
    int64_t len;

    if (fstat(s->fd, &st) < 0)
        return vd_error(errno, "Could not stat '%s': %s", n->filename, strerror(errno));
    len = fd_length(s->fd, &st);
    if (len < 0)
        return vd_error((int)-len, "Failed to get size of '%s'", n->filename);
    return len;
}

/* Bytes allocated on the host (0 for devices, as QEMU reports). */
static int64_t file_get_allocated_size(vd_node *n)
{
    struct file_state *s = n->state;
    struct stat st;

    if (fstat(s->fd, &st) < 0)
        return vd_error(errno, "Could not stat '%s': %s", n->filename, strerror(errno));
    return (int64_t)st.st_blocks * 512;
}

/* Round the end of a status extent to the request alignment (data up,
 * holes down) so callers never see a sub-block extent under O_DIRECT. */
static int align_status(const vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                        int ret)
{
    uint64_t a = n->request_alignment, end = off + *pnum, r;

    if (a <= 1 || is_aligned(end, a) || *pnum == len)
        return ret;
    if (ret & VD_BS_DATA) {
        if (!round_up_checked(end, a, &r))
            r = end;
        *pnum = VD_MIN(r - off, len);
        return ret;
    }
    r = round_down(end, a);
    if (r > off) {
        *pnum = r - off;
        return ret;
    }
    *pnum = VD_MIN(a - (off & (a - 1)), len);   /* partly data: say data */
    return VD_BS_DATA | VD_BS_OFFSET_VALID;
}

/* Data and holes from SEEK_DATA/SEEK_HOLE; devices are all data.  The
 * region past the last data is a hole. */
static int file_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                             uint64_t *map, vd_node **file)
{
    struct file_state *s = n->state;
    const int data = VD_BS_DATA | VD_BS_OFFSET_VALID;
    off_t d, h;
    int ret = data;

    *map = off;
    *file = n;
    *pnum = len;
    if (!s->regular)
        return data;
    d = lseek(s->fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
        /* ENXIO: only a hole from off to the end; else unknown: data. */
        return errno == ENXIO ? VD_BS_ZERO | VD_BS_OFFSET_VALID : data;
    }
    if ((uint64_t)d > off) {
        *pnum = VD_MIN((uint64_t)d - off, len);
        ret = VD_BS_ZERO | VD_BS_OFFSET_VALID;
    } else {
        h = lseek(s->fd, (off_t)off, SEEK_HOLE);
        if (h > (off_t)off)
            *pnum = VD_MIN((uint64_t)h - off, len);
    }
    return align_status(n, off, len, pnum, ret);
}

/* Write zeroes from cur to size (preallocation=full), then fsync. */
static int prealloc_full(int fd, uint64_t cur, uint64_t size)
{
    char *buf = calloc(1, PREALLOC_CHUNK);

    if (!buf)
        return vd_error(ENOMEM, "out of memory");
    while (cur < size) {
        ssize_t r = pwrite(fd, buf, (size_t)VD_MIN(size - cur, (uint64_t)PREALLOC_CHUNK),
                           (off_t)cur);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int err = r < 0 ? errno : ENOSPC;
            free(buf);
            return vd_error(err, "Could not write zeros for preallocation: %s",
                            strerror(err));
        }
        cur += (uint64_t)r;
    }
    free(buf);
    if (fsync(fd) < 0)
        return vd_error(errno, "Could not flush file to disk: %s", strerror(errno));
    return 0;
}

/* Resize with ftruncate, then allocate the first block of a new file. */
static int truncate_off(int fd, uint64_t cur, uint64_t size)
{
    if (ftruncate(fd, (off_t)size) < 0)
        return vd_error(errno, "Could not resize file: %s", strerror(errno));
    if (cur == 0 && size > 0)
        allocate_first_block(fd, size);
    return 0;
}

/* Grow with posix_fallocate (preallocation=falloc). */
static int truncate_falloc(int fd, uint64_t cur, uint64_t size)
{
    int r;

    if (size == cur)
        return 0;
    r = posix_fallocate(fd, (off_t)cur, (off_t)(size - cur));
    if (r)
        return vd_error(r, "Could not preallocate new data: %s", strerror(r));
    if (cur == 0)
        allocate_first_block(fd, size);
    return 0;
}

/* Resize a regular file to exactly size with a preallocation mode (QEMU:
 * shrinking only without preallocation). */
static int regular_truncate(int fd, uint64_t size, int prealloc)
{
    struct stat st;
    uint64_t cur;

    if (size > INT64_MAX)
        return vd_error(EFBIG, "File size %llu is too large", (unsigned long long)size);
    if (fstat(fd, &st) < 0)
        return vd_error(errno, "Could not stat file: %s", strerror(errno));
    cur = (uint64_t)st.st_size;
    if (cur > size && prealloc != VD_PREALLOC_OFF)
        return vd_error(ENOTSUP, "Cannot use preallocation for shrinking files");
    switch (prealloc) {
    case VD_PREALLOC_OFF:
        return truncate_off(fd, cur, size);
    case VD_PREALLOC_FALLOC:
        return truncate_falloc(fd, cur, size);
    case VD_PREALLOC_FULL:
        if (ftruncate(fd, (off_t)size) < 0)
            return vd_error(errno, "Could not resize file: %s", strerror(errno));
        return prealloc_full(fd, cur, size);
    default:
        return vd_error(ENOTSUP, "Unsupported preallocation mode: %s",
                        vd_prealloc_name(prealloc));
    }
}

/* Devices cannot be resized: shrinking is allowed only when !exact (the
 * device stays as it is), growing never. */
static int hdev_check_size(uint64_t size, uint64_t cur, bool exact)
{
    if (size != cur && exact)
        return vd_error(ENOTSUP, "Cannot resize device files");
    if (size > cur)
        return vd_error(EINVAL, "Cannot grow device files");
    return 0;
}

/* Take the resize permission (like QEMU's BDRV_O_RESIZE) before changing
 * the length; it is kept afterwards. */
static int lock_for_resize(vd_node *n, struct file_state *s)
{
    int r;

    if (!s->use_lock || (s->perm & VD_PERM_RESIZE))
        return 0;
    r = vd_lock_change(s->fd, s->perm, s->shared, s->perm | VD_PERM_RESIZE, s->shared,
                       n->filename);
    if (r >= 0)
        s->perm |= VD_PERM_RESIZE;
    return r;
}

/* Resize the node. */
static int file_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct file_state *s = n->state;
    int64_t cur = file_getlength(n);
    int r;

    if (cur < 0)
        return (int)cur;
    if (!s->regular) {
        if (prealloc != VD_PREALLOC_OFF)
            return vd_error(ENOTSUP, "Preallocation mode '%s' unsupported for this "
                            "non-regular file", vd_prealloc_name(prealloc));
        return hdev_check_size(size, (uint64_t)cur, exact);
    }
    if ((uint64_t)cur != size && (r = lock_for_resize(n, s)) < 0)
        return r;
    return regular_truncate(s->fd, size, prealloc);
}

/* New files read as zeroes; devices do not. */
static bool file_has_zero_init(vd_node *n)
{
    struct file_state *s = n->state;
    return s->regular;
}

/* ---- creation ---- */

/* Parse preallocation for create: off, falloc or full.  metadata passes
 * here: as in QEMU, the file is created (empty) before the resize refuses
 * the mode. */
static int parse_create_prealloc(const char *v, int *out)
{
    if (!v || !strcmp(v, "off"))
        *out = VD_PREALLOC_OFF;
    else if (!strcmp(v, "falloc"))
        *out = VD_PREALLOC_FALLOC;
    else if (!strcmp(v, "full"))
        *out = VD_PREALLOC_FULL;
    else if (!strcmp(v, "metadata"))
        *out = VD_PREALLOC_METADATA;
    else
        return vd_error(EINVAL, "invalid parameter value: %s", v);
    return 0;
}

/* Set the no-copy-on-write attribute (btrfs); failures are ignored as
 * the attribute is only an optimisation. */
static void set_nocow(int fd)
{
    int attr = 0;

    if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
        attr |= FS_NOCOW_FL;
        (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
    }
}

/* Set the extent size hint (XFS); a failure is only warned about when the
 * user asked for a hint explicitly, as QEMU does. */
static void set_extent_hint(int fd, uint64_t hint, bool explicit)
{
    struct fsxattr attr;
    int r = ioctl(fd, FS_IOC_FSGETXATTR, &attr);

    if (r == 0) {
        attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
        attr.fsx_extsize = (uint32_t)hint;
        r = ioctl(fd, FS_IOC_FSSETXATTR, &attr);
    }
    if (r < 0 && explicit && !is_unsupported(errno))
        fprintf(stderr, "%s: warning: Failed to set extent size hint: %s\n",
                program_invocation_short_name, strerror(errno));
}

/* Create options of the file driver. */
struct create_args {
    uint64_t size, hint;
    int prealloc;
    bool nocow, hint_given;
};

/* Read and check the create options (size rounded up to 512 as QEMU). */
static int parse_create_opts(vd_opts *opts, struct create_args *a)
{
    int r;

    if ((r = vd_opts_get_size(opts, "size", 0, &a->size)) < 0 ||
        (r = vd_opts_get_bool(opts, "nocow", false, &a->nocow)) < 0 ||
        (r = vd_opts_get_size(opts, "extent_size_hint", DEFAULT_EXTENT_HINT, &a->hint)) < 0 ||
        (r = parse_create_prealloc(vd_opts_get(opts, "preallocation"), &a->prealloc)) < 0)
        return r;
    a->hint_given = vd_opts_has(opts, "extent_size_hint");
    if (!round_up_checked(a->size, 512, &a->size) || a->size > INT64_MAX)
        return vd_error(EFBIG, "Image size is too large");
    if (a->hint > UINT32_MAX)
        return vd_error(EINVAL, "Extent size hint is too large");
    return 0;
}

/* "Create" on a device: it must exist, preallocation must be off and the
 * device must be large enough (QEMU's generic fallback). */
static int hdev_create(const char *fn, vd_opts *opts)
{
    const char *pre = vd_opts_get(opts, "preallocation");
    uint64_t size;
    struct stat st;
    int64_t len;
    int fd, r;

    if ((r = vd_opts_get_size(opts, "size", 0, &size)) < 0)
        return r;
    if (pre && strcmp(pre, "off"))
        return vd_error(ENOTSUP, "Unsupported preallocation mode '%s'", pre);
    fd = open(fn, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return vd_error(errno, "Protocol driver 'host_device' does not support image "
                        "creation, and opening the image failed: Could not open "
                        "'%s': %s", fn, strerror(errno));
    if (fstat(fd, &st) < 0 || !(S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode))) {
        close(fd);
        return vd_error(EINVAL, "Protocol driver 'host_device' does not support image "
                        "creation, and opening the image failed: 'host_device' driver "
                        "requires '%s' to be either a character or block device", fn);
    }
    len = fd_length(fd, &st);
    close(fd);
    if (len < 0)
        return vd_error((int)-len, "Failed to get size of '%s'", fn);
    return hdev_check_size(size, (uint64_t)len, false);
}

/* Lock a file being created: write and resize, not sharing resize. */
static int lock_for_create(int fd, const char *fn)
{
    return vd_lock_change(fd, 0, VD_PERM_ALL, VD_PERM_WRITE | VD_PERM_RESIZE,
                          VD_PERM_ALL & ~VD_PERM_RESIZE, fn);
}

/* Create (or truncate and re-create) a regular file. */
static int file_create(const char *fn, vd_opts *opts)
{
    struct create_args a = { 0 };
    struct stat st;
    int fd, r;

    if (stat(fn, &st) == 0 && (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode)))
        return hdev_create(fn, opts);
    if ((r = parse_create_opts(opts, &a)) < 0)
        return r;
    fd = open(fn, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return vd_error(errno, "Could not create '%s': %s", fn, strerror(errno));
    if ((r = lock_for_create(fd, fn)) >= 0 &&
        (r = regular_truncate(fd, 0, VD_PREALLOC_OFF)) >= 0) {
        if (a.nocow)
            set_nocow(fd);
        if (a.hint)
            set_extent_hint(fd, a.hint, a.hint_given);
        r = regular_truncate(fd, a.size, a.prealloc);
    }
    if (close(fd) < 0 && r >= 0)
        r = vd_error(errno, "Could not close the new file: %s", strerror(errno));
    return r;
}

/* ---- probing ---- */

/* host_device matches block and character devices by name. */
static int hdev_probe(const uint8_t *buf, size_t len, const char *filename)
{
    struct stat st;

    if (!filename)
        return 0;
    if (!strncmp(filename, "/dev/cdrom", 10))
        return 50;          /* let host_cdrom win */
    if (stat(filename, &st) == 0 && (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode)))
        return 100;
    return 0;
}

/* host_cdrom matches devices that answer the CD-ROM drive status ioctl. */
static int cdrom_probe(const uint8_t *buf, size_t len, const char *filename)
{
    int fd, r;

    if (!filename || (fd = open(filename, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0)
        return 0;
    r = ioctl(fd, CDROM_DRIVE_STATUS, CDSL_CURRENT);
    close(fd);
    return r >= 0 ? 100 : 0;
}

/* ---- permissions (lock.h) ---- */


/* Change the permissions the file node under n (through filters) holds. */
int vd_file_set_perm(vd_node *n, uint64_t perm, uint64_t shared)
{
    struct file_state *s;
    int r;

    while (n && !is_file_node(n) && n->drv->kind == VD_DRV_FILTER)
        n = n->file;
    if (!n || !is_file_node(n))
        return 0;
    s = n->state;
    if (!s->use_lock)
        return 0;
    if (s->force_share)
        shared = VD_PERM_ALL;
    r = vd_lock_change(s->fd, s->perm, s->shared, perm, shared, n->filename);
    if (r < 0)
        return r;
    s->perm = perm;
    s->shared = shared;
    return 0;
}

/* QEMU's permissions on the file under a metadata format. */
int vd_file_lock_for_metadata(vd_node *file)
{
    uint64_t perm = VD_PERM_CONSISTENT_READ;

    if (file && !file->read_only)
        perm |= VD_PERM_WRITE | VD_PERM_RESIZE;
    return vd_file_set_perm(file, perm, VD_PERM_CONSISTENT_READ | VD_PERM_WRITE_UNCHANGED);
}

/* ---- driver tables ---- */

static const struct vd_opt_desc file_open_opts[] = {
    { "filename", VD_OPT_STRING, "File name of the image", NULL },
    { "aio", VD_OPT_STRING, "host AIO implementation (threads, native, io_uring)", "threads" },
    { "locking", VD_OPT_STRING, "file locking mode (on/off/auto, default: auto)", "auto" },
    { "cache.direct", VD_OPT_BOOL, "Bypass the host page cache (O_DIRECT)", "off" },
    { "cache.no-flush", VD_OPT_BOOL, "Ignore flush requests", "off" },
    { "discard", VD_OPT_STRING, "Discard requests (ignore/unmap)", "unmap" },
    { NULL, 0, NULL, NULL },
};

/* -o help texts as qemu-img 7.2 prints them; def_value stays NULL since
 * qemu-img's "Formatting" line shows none of these unless given. */
static const struct vd_opt_desc file_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "nocow", VD_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)", NULL },
    { "preallocation", VD_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", NULL },
    { "extent_size_hint", VD_OPT_SIZE,
      "Extent size hint for the image file, 0 to disable", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_opt_desc hdev_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "preallocation", VD_OPT_STRING, "Preallocation mode (allowed values: off)", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver file_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "file",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "file",
    .state_size = sizeof(struct file_state),
    .open_opts = file_open_opts,
    .create_opts = file_create_opts,
    .open = file_open,
    .close = file_close,
    .pread = file_pread,
    .pwrite = file_pwrite,
    .pwrite_zeroes = file_pwrite_zeroes,
    .copy_range_to = file_copy_range_to,
    .discard = file_discard,
    .flush = file_flush,
    .block_status = file_block_status,
    .getlength = file_getlength,
    .get_allocated_size = file_get_allocated_size,
    .truncate = file_truncate,
    .create = file_create,
    .has_zero_init = file_has_zero_init,
};
VD_DRIVER_REGISTER(file_driver)

static const struct vd_driver hdev_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "host_device",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "host_device",
    .state_size = sizeof(struct file_state),
    .open_opts = file_open_opts,
    .create_opts = hdev_create_opts,
    .probe = hdev_probe,
    .open = hdev_open,
    .close = file_close,
    .pread = file_pread,
    .pwrite = file_pwrite,
    .pwrite_zeroes = file_pwrite_zeroes,
    .copy_range_to = file_copy_range_to,
    .discard = file_discard,
    .flush = file_flush,
    .block_status = file_block_status,
    .getlength = file_getlength,
    .get_allocated_size = file_get_allocated_size,
    .truncate = file_truncate,
    .create = hdev_create,
    .has_zero_init = file_has_zero_init,
};
VD_DRIVER_REGISTER(hdev_driver)

static const struct vd_driver cdrom_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "host_cdrom",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "host_cdrom",
    .state_size = sizeof(struct file_state),
    .open_opts = file_open_opts,
    .probe = cdrom_probe,
    .open = cdrom_open,
    .close = file_close,
    .pread = file_pread,
    .flush = file_flush,
    .block_status = file_block_status,
    .getlength = file_getlength,
    .get_allocated_size = file_get_allocated_size,
    .has_zero_init = file_has_zero_init,
};
VD_DRIVER_REGISTER(cdrom_driver)
