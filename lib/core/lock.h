/* SPDX-License-Identifier: BSD-3-Clause */
/* Image locking compatible with QEMU's file-posix driver: OFD byte-range
 * read locks on byte 100+i for each permission i held and on byte 200+i for
 * each permission i not shared with other users of the image. */
#ifndef VD_CORE_LOCK_H
#define VD_CORE_LOCK_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/driver.h"

/* Permission bits, numbered as QEMU's BLK_PERM_* (bit i <-> bytes 100+i,
 * 200+i).  QEMU 7.2 has no GRAPH_MOD bit any more. */
#define VD_PERM_CONSISTENT_READ 0x1u
#define VD_PERM_WRITE           0x2u
#define VD_PERM_WRITE_UNCHANGED 0x4u
#define VD_PERM_RESIZE          0x8u
#define VD_PERM_ALL             0xfu

#define VD_LOCK_PERM_BASE   100
#define VD_LOCK_SHARED_BASE 200

/* Take the lock bytes for perm (held) and ~shared (not shared); with
 * unlock, also release the bytes these sets do not need. */
int vd_lock_apply(int fd, uint64_t perm, uint64_t shared, bool unlock);
/* Check that no other open file holds a lock conflicting with perm/shared;
 * -EAGAIN and QEMU's message ("Failed to get \"write\" lock\nIs another
 * process using the image [name]?") on conflict. */
int vd_lock_check(int fd, uint64_t perm, uint64_t shared, const char *filename);
/* Move the locks held on fd from (old_perm, old_shared) to (perm, shared):
 * take the union, check for conflicts, then drop what is no longer needed.
 * On conflict the old locks are restored and -EAGAIN returned. */
int vd_lock_change(int fd, uint64_t old_perm, uint64_t old_shared,
                   uint64_t perm, uint64_t shared, const char *filename);
/* Name of one permission bit as QEMU prints it ("consistent read"). */
const char *vd_perm_name(uint64_t bit);

/* Change the permissions a file/host_device node (or the file node under
 * a chain of filters starting at n) holds.  0 and nothing done for nodes
 * opened without locking, or that hold no lock.  Implemented by
 * lib/protocol/file.c. */
int vd_file_set_perm(vd_node *n, uint64_t perm, uint64_t shared);
/* The permissions QEMU takes on the file under a metadata format (qcow2,
 * vmdk, ...): consistent read (+ write and resize when writable), sharing
 * only consistent read and write-unchanged.  Call after opening a format
 * other than raw; a no-op for -U (force-share) and unlocked opens. */
int vd_file_lock_for_metadata(vd_node *file);

#endif
