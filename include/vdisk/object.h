/* SPDX-License-Identifier: BSD-3-Clause */
/* User-created objects, as qemu-img/qemu-nbd --object: TLS credentials
 * (tls-creds-x509, tls-creds-psk, tls-creds-anon) and secrets, kept in a
 * process-wide registry that drivers look up by id (the nbd driver's
 * tls-creds option names one). */
#ifndef VDISK_OBJECT_H
#define VDISK_OBJECT_H

#include "vdisk/opts.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parse and register "type,id=x,k=v,..." (qemu's --object syntax).  The
 * properties are checked against the type and TLS credential files must
 * be readable (qemu's messages).  0 or -errno with a message. */
int vd_object_add(const char *spec);
/* The properties of object id (keys "qom-type", "id", ...) or NULL.  The
 * dict stays valid until vd_object_clear(). */
const vd_opts *vd_object_find(const char *id);
/* Forget every object. */
void vd_object_clear(void);

#ifdef __cplusplus
}
#endif
#endif
