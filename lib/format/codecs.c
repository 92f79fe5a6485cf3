/* SPDX-License-Identifier: BSD-3-Clause */
/* The table of the decompressor module (codecs.h), loaded on first use. */
#include <errno.h>

#include "core/module.h"
#include "format/codecs.h"
#include "vdisk/vdisk.h"

static const struct vd_codecs *table;

/* See codecs.h. */
void vd_codecs_register(const struct vd_codecs *c)
{
    if (c->struct_size >= sizeof(struct vd_codecs))
        __atomic_store_n(&table, c, __ATOMIC_RELEASE);
}

/* See codecs.h. */
const struct vd_codecs *vd_codecs(void)
{
    const struct vd_codecs *c = __atomic_load_n(&table, __ATOMIC_ACQUIRE);

    if (c)
        return c;
    if (vd_module_require("codec") < 0)
        return NULL;
    if (!(c = __atomic_load_n(&table, __ATOMIC_ACQUIRE)))
        vd_error(ELIBBAD, "the module vdisk-codec.so has no decompressor table");
    return c;
}
