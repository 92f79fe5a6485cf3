/* SPDX-License-Identifier: BSD-3-Clause */
/* vdi: finding the parent of a differencing image.  VirtualBox links a
 * differencing image to its parent by UUID, not by name: the child's
 * header holds the parent's creation UUID (uuidLinkage, 0x1a8) and the
 * parent's modification UUID at the time the child was made
 * (uuidParentModify, 0x1b8).  vdisk looks for the parent among the .vdi
 * files of the child's directory, as VirtualBox's VDI core checked the
 * link: the parent's creation UUID must be the child's link UUID and, when
 * the child records one, its modification UUID the child's parent
 * modification UUID. */
#ifndef VD_FORMAT_VDI_PARENT_H
#define VD_FORMAT_VDI_PARENT_H

#include <stdbool.h>
#include <stdint.h>

/* Header sector bytes the lookup reads. */
#define VDI_PARENT_HDR_BYTES 512u
/* Directory entries examined at most while looking for a parent. */
#define VDI_PARENT_SCAN_MAX 4096u

/* Does the header sector describe a differencing image (type undo or
 * diff with a link UUID)? */
bool vdi_is_differencing(const uint8_t *hdr);

/* Format the UUID at p (VirtualBox's byte order) as text; out holds 37
 * bytes. */
void vdi_uuid_str(const uint8_t *p, char *out);

/* Find the parent of the differencing image at path (header sector hdr,
 * disk size disk_size) among the .vdi files of its directory: *name gets
 * the parent's file name (malloc'd, no directory part).  Refuses a parent
 * larger than the child, a modification UUID that does not match,
 * several candidates, and parents that lead back to the image (a loop).
 * -ENOENT (with the error set) when no file has the UUID. */
int vdi_find_parent(const char *path, const uint8_t *hdr, uint64_t disk_size,
                    char **name);

#endif
