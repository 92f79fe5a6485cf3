/* SPDX-License-Identifier: BSD-3-Clause */
/* Errors: functions return -errno and leave one thread-local message with
 * context; the tool prints it once. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vdisk/vdisk.h"

#define VD_ERRMSG_MAX 4096

static __thread char errmsg[VD_ERRMSG_MAX];

/* Normalise err to a negative errno (0 becomes -EIO). */
static int neg_errno(int err)
{
    if (err < 0)
        err = -err;
    return err ? -err : -EIO;
}

/* Record a message for this thread and return -err. */
int vd_error(int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
    va_end(ap);
    return neg_errno(err);
}

/* Put "prefix: " in front of the current message and return -err. */
int vd_error_prefix(int err, const char *fmt, ...)
{
    char prefix[VD_ERRMSG_MAX / 2], old[VD_ERRMSG_MAX / 2];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    snprintf(old, sizeof(old), "%s", errmsg);
    if (old[0])
        snprintf(errmsg, sizeof(errmsg), "%s: %s", prefix, old);
    else
        snprintf(errmsg, sizeof(errmsg), "%s: %s", prefix, strerror(-neg_errno(err)));
    return neg_errno(err);
}

/* The last message recorded on this thread. */
const char *vd_errmsg(void)
{
    return errmsg;
}

/* Forget the last message. */
void vd_error_clear(void)
{
    errmsg[0] = '\0';
}
