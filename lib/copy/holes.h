/* SPDX-License-Identifier: BSD-3-Clause */
/* The parts of a convert request that read as zeroes without being read
 * (internal to lib/copy): unallocated blocks a format's data_extent names
 * and holes of the file that holds the data. */
#ifndef VD_COPY_HOLES_H
#define VD_COPY_HOLES_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/driver.h"
#include "sparse.h"

/* What a worker last learnt of a file under the source: [start, end) of
 * f is a hole (zero) or data.  Zeroed: nothing known. */
struct hole_cache {
    vd_node *f;
    uint64_t start, end;
    bool zero;
};

/* Fill k with what of the len bytes at soff of src reads as zeroes.  When
 * hfile is set the bytes lie as they are at host in hfile (block status
 * said so); else src's data_extent is asked.  Whatever cannot be told is
 * left out of k (and read). */
void holes_find(vd_node *src, uint64_t soff, uint64_t len, vd_node *hfile, uint64_t host,
                struct hole_cache *hc, struct sparse_known *k);

#endif
