/* SPDX-License-Identifier: BSD-3-Clause */
/* The module vdisk-crypto.so: its table (crypto-lib.h), offered to
 * libvdisk when it is loaded. */
#include "crypto/crypto-lib.h"

static const struct vd_crypto_lib crypto_lib = {
    .struct_size = sizeof(struct vd_crypto_lib),
    .cipher_new = vdcm_cipher_new, .cipher_free = vdcm_cipher_free,
    .cipher_crypt = vdcm_cipher_crypt, .cipher_sectors = vdcm_cipher_sectors,
    .hash = vdcm_hash, .pbkdf2 = vdcm_pbkdf2, .base64_decode = vdcm_base64_decode,
    .tls_new = vdcm_tls_new, .tls_set_authz = vdcm_tls_set_authz, .tls_free = vdcm_tls_free,
    .tls_is_server = vdcm_tls_is_server, .tls_start = vdcm_tls_start,
    .tls_recv = vdcm_tls_recv, .tls_send = vdcm_tls_send, .tls_cork = vdcm_tls_cork,
    .tls_uncork = vdcm_tls_uncork, .tls_pending = vdcm_tls_pending, .tls_end = vdcm_tls_end,
    .client_start = vdcm_client_start, .client_recv = vdcm_client_recv,
    .client_send = vdcm_client_send, .client_cork = vdcm_client_cork,
    .client_uncork = vdcm_client_uncork, .client_bye = vdcm_client_bye,
    .client_free = vdcm_client_free,
};

/* Offer the table to libvdisk when the module is loaded. */
__attribute__((constructor)) static void register_crypto(void)
{
    vd_crypto_lib_register(&crypto_lib);
}
