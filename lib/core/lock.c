/* SPDX-License-Identifier: BSD-3-Clause */
/* QEMU-compatible image locking with open file description (OFD) byte-range
 * locks, so that vdisk and QEMU processes see each other's locks.  Shared
 * (read) locks only: a conflict is "another open file holds a lock on a
 * byte I need to be free", detected with F_OFD_GETLK. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "core/lock.h"

/* Number of permission bits QEMU 7.2 locks. */
#define VD_PERM_BITS 4

/* Take (F_RDLCK) or release (F_UNLCK) one lock byte. */
static int lock_byte(int fd, int byte, short type)
{
    struct flock fl = {
        .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
    };

    while (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Does another open file hold any lock on byte?  1 yes, 0 no, <0 error. */
static int byte_is_locked(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
    };

    while (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return fl.l_type != F_UNLCK;
}

/* Name of one permission bit as QEMU prints it. */
const char *vd_perm_name(uint64_t bit)
{
    switch (bit) {
    case VD_PERM_CONSISTENT_READ: return "consistent read";
    case VD_PERM_WRITE: return "write";
    case VD_PERM_WRITE_UNCHANGED: return "write unchanged";
    case VD_PERM_RESIZE: return "resize";
    default: return "unknown";
    }
}

/* Lock byte base+i when want, else (with unlock) release it. */
static int set_byte(int fd, int byte, bool want, bool unlock)
{
    int r;

    if (want && (r = lock_byte(fd, byte, F_RDLCK)) < 0)
        return vd_error(r, "Failed to lock byte %d: %s", byte, strerror(-r));
    if (!want && unlock && (r = lock_byte(fd, byte, F_UNLCK)) < 0)
        return vd_error(r, "Failed to unlock byte %d: %s", byte, strerror(-r));
    return 0;
}

/* Take the lock bytes for perm and for the permissions not shared. */
int vd_lock_apply(int fd, uint64_t perm, uint64_t shared, bool unlock)
{
    int r;

    for (int i = 0; i < VD_PERM_BITS; i++)
        if ((r = set_byte(fd, VD_LOCK_PERM_BASE + i, perm & (1u << i), unlock)) < 0)
            return r;
    for (int i = 0; i < VD_PERM_BITS; i++)
        if ((r = set_byte(fd, VD_LOCK_SHARED_BASE + i, !(shared & (1u << i)),
                          unlock)) < 0)
            return r;
    return 0;
}

/* Record QEMU's conflict message for one permission. */
static int conflict(const char *what, uint64_t bit, const char *filename)
{
    return vd_error(EAGAIN, "Failed to get %s\"%s\" lock\n"
                    "Is another process using the image [%s]?",
                    what, vd_perm_name(bit), filename ? filename : "");
}

/* Check the lock bytes of others against perm/shared (QEMU's order:
 * permissions we need first, then permissions we do not share). */
int vd_lock_check(int fd, uint64_t perm, uint64_t shared, const char *filename)
{
    int r;

    for (int i = 0; i < VD_PERM_BITS; i++) {
        if (!(perm & (1u << i)))
            continue;
        if ((r = byte_is_locked(fd, VD_LOCK_SHARED_BASE + i)) < 0)
            return vd_error(r, "Failed to get \"%s\" lock: %s",
                            vd_perm_name(1u << i), strerror(-r));
        if (r)
            return conflict("", 1u << i, filename);
    }
    for (int i = 0; i < VD_PERM_BITS; i++) {
        if (shared & (1u << i))
            continue;
        if ((r = byte_is_locked(fd, VD_LOCK_PERM_BASE + i)) < 0)
            return vd_error(r, "Failed to get shared \"%s\" lock: %s",
                            vd_perm_name(1u << i), strerror(-r));
        if (r)
            return conflict("shared ", 1u << i, filename);
    }
    return 0;
}

/* Move from the old lock set to the new one; restore the old on conflict. */
int vd_lock_change(int fd, uint64_t old_perm, uint64_t old_shared,
                   uint64_t perm, uint64_t shared, const char *filename)
{
    int r = vd_lock_apply(fd, old_perm | perm, old_shared & shared, false);

    if (r >= 0)
        r = vd_lock_check(fd, perm, shared, filename);
    if (r < 0) {
        /* Best effort: put back exactly what was held before, keeping the
         * message about the conflict. */
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vd_errmsg());
        vd_lock_apply(fd, old_perm, old_shared, true);
        return vd_error(r, "%s", msg);
    }
    return vd_lock_apply(fd, perm, shared, true);
}
