/* SPDX-License-Identifier: BSD-3-Clause */
/* Loading protocol driver modules on first use. */
#ifndef VD_CORE_MODULE_H
#define VD_CORE_MODULE_H

#include <stdbool.h>
#include <stddef.h>

/* Load the module(s) providing the driver or protocol prefix name[0..len)
 * (once each); false if no module provides it. */
bool vd_module_load_for(const char *name, size_t len);
/* Load every module (for listings of all drivers). */
void vd_module_load_all(void);

#endif
