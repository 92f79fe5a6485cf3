/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 consistency check and repair (qemu-img check's qcow2 part).  The
 * walker reads the on-disk structures itself through the node's file child,
 * so it shares no state with the rest of the driver. */
#ifndef VD_QCOW2_CHECK_H
#define VD_QCOW2_CHECK_H

#include "vdisk/driver.h"

/* The driver's check hook.  fix: bit 0 repairs leaks, bit 1 all errors.
 * Per-problem lines go to stderr as qemu-img prints them; the counts go to
 * res.  Returns 0 or -errno (the message is left for vd_errmsg()).
 * After a repair the driver must drop any cached L1/L2/refcount metadata
 * of n: the repair writes straight to n->file. */
int qcow2_check(vd_node *n, struct vd_check_result *res, int fix);

#endif
