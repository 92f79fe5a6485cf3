/* SPDX-License-Identifier: BSD-3-Clause */
/* TEMPORARY stand-in for the vhdx log (log.h) until the real log.c lands:
 * it finds nothing to replay and writes updates in place, unjournalled. */
#include <string.h>

#include "format/vhdx/log.h"

int vhdx_log_open(struct vhdx_log *log, vd_node *owner, vd_node *file,
                  uint64_t offset, uint32_t length, const uint8_t guid[16],
                  bool *needs_replay)
{
    memset(log, 0, sizeof(*log));
    log->owner = owner;
    log->file = file;
    log->offset = offset;
    log->length = length;
    *needs_replay = false;
    return 0;
}

int vhdx_log_replay(struct vhdx_log *log)
{
    return 0;
}

void vhdx_log_begin(struct vhdx_log *log, const uint8_t guid[16])
{
    memcpy(log->guid, guid, 16);
    log->active = true;
}

int vhdx_log_write(struct vhdx_log *log, const struct vhdx_log_update *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int r = vd_pwrite(log->file, u[i].off, u[i].len, u[i].buf, 0);
        if (r < 0)
            return r;
    }
    return vd_flush(log->file);
}

void vhdx_log_end(struct vhdx_log *log)
{
    log->active = false;
}
