/* SPDX-License-Identifier: BSD-3-Clause */
/* Loading modules (protocol drivers, the libxml2 parsers) on first use. */
#ifndef VD_CORE_MODULE_H
#define VD_CORE_MODULE_H

#include <stdbool.h>
#include <stddef.h>

/* Load the module(s) providing the driver or protocol prefix name[0..len)
 * (once each); false if no module provides it. */
bool vd_module_load_for(const char *name, size_t len);
/* Load every module that provides drivers (for listings of all drivers). */
void vd_module_load_all(void);
/* Load module vdisk-NAME.so (once); 0 if it is loaded, else -errno with
 * the reason recorded (not found where modules are looked for, or why it
 * did not load). */
int vd_module_require(const char *name);

#endif
