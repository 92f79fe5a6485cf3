/* SPDX-License-Identifier: BSD-3-Clause */
/* The table of the crypto module (crypto-lib.h), loaded on first use. */
#include <errno.h>

#include "core/module.h"
#include "crypto/crypto-lib.h"
#include "vdisk/vdisk.h"

static const struct vd_crypto_lib *table;

/* See crypto-lib.h. */
void vd_crypto_lib_register(const struct vd_crypto_lib *l)
{
    if (l->struct_size >= sizeof(struct vd_crypto_lib))
        __atomic_store_n(&table, l, __ATOMIC_RELEASE);
}

/* See crypto-lib.h. */
const struct vd_crypto_lib *vd_crypto_lib(void)
{
    const struct vd_crypto_lib *l = __atomic_load_n(&table, __ATOMIC_ACQUIRE);

    if (l)
        return l;
    if (vd_module_require("crypto") < 0)
        return NULL;
    if (!(l = __atomic_load_n(&table, __ATOMIC_ACQUIRE)))
        vd_error(ELIBBAD, "the module vdisk-crypto.so has no crypto table");
    return l;
}
