/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img: finding an image in a backing chain by the name a user gives
 * (commit -b, rebase -b), shared by commit.c and rebase.c. */
#ifndef VD_IMG_CHAIN_H
#define VD_IMG_CHAIN_H

#include "vdisk/vdisk.h"

/* The node below top whose image name names: the backing name as stored,
 * or the same file once both are resolved (relative names from the
 * directory of the image that refers to it), as qemu-img matches them.
 * NULL when no image of the chain answers to it. */
vd_node *img_find_backing(vd_node *top, const char *name);

#endif
