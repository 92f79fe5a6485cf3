/* SPDX-License-Identifier: BSD-3-Clause */
/* Declarations shared by the files of lib/core. */
#ifndef VD_CORE_INTERNAL_H
#define VD_CORE_INTERNAL_H

#include "vdisk/driver.h"

/* Bytes read for format probing. */
#define VD_PROBE_SIZE 2048

const struct vd_driver *vd_probe_format(const uint8_t *buf, size_t len,
                                        const char *filename);
/* Would these first bytes of a probed raw image make it probe as another
 * format? */
bool vd_probe_changes_format(const uint8_t *buf, size_t len);
/* Is n an untrusted format node whose driver open runs on this thread? */
bool vd_untrusted_opening(const vd_node *n);
/* Re-read the length from the driver into the node's cache. */
int64_t vd_refresh_length(vd_node *n);

#endif
