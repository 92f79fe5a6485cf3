/* SPDX-License-Identifier: BSD-3-Clause */
/* Untrusted-image mode: the checks open.c makes where a node reaches for
 * another file (see untrusted.c). */
#ifndef VD_CORE_UNTRUSTED_H
#define VD_CORE_UNTRUSTED_H

#include "vdisk/driver.h"

/* Refuse the reference named name ("backing file", "file") held by n. */
int vd_untrusted_refuse(const vd_node *n, const char *what, const char *name);
/* The name to show for a child open of name / opts. */
const char *vd_untrusted_child_name(const char *name, const vd_opts *opts);
/* Refuse when file's first bytes probe as a format other than d. */
int vd_untrusted_check_format(vd_node *file, const struct vd_driver *d, const char *name);

#endif
