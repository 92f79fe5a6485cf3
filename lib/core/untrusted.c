/* SPDX-License-Identifier: BSD-3-Clause */
/* Untrusted-image mode (VD_O_UNTRUSTED): an image may not make the library
 * open anything but its own file, its format must be the one its bytes
 * say, and tables sized by its header are capped.  open.c calls the checks
 * here at the one place each kind of reference is followed; drivers call
 * vd_untrusted_table_check before allocating a table whose size the image
 * gives. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/untrusted.h"
#include "util/checked.h"

/* Is VDISK_UNTRUSTED set to something other than "" or "0"? */
bool vd_untrusted_env(void)
{
    const char *v = getenv("VDISK_UNTRUSTED");

    return v && *v && strcmp(v, "0");
}

/* Is n opened in untrusted mode? */
bool vd_node_untrusted(const vd_node *n)
{
    return n && (n->flags & VD_O_UNTRUSTED);
}

/* Refuse a table of bytes for n past the untrusted-mode cap. */
int vd_untrusted_table_check(const vd_node *n, uint64_t bytes, const char *what)
{
    if (!vd_node_untrusted(n) || bytes <= VD_UNTRUSTED_TABLE_MAX)
        return 0;
    return vd_error(EFBIG, "%s needs %" PRIu64 " bytes, over the %u MiB cap on "
                    "image tables: refused in untrusted mode", what, bytes,
                    VD_UNTRUSTED_TABLE_MAX >> 20);
}

/* " (a json: name)", " (protocol prefix 'nbd:')" or "" for a name. */
static void name_kind(const char *name, char *buf, size_t size)
{
    const char *colon = strchr(name, ':'), *slash = strchr(name, '/');

    buf[0] = 0;
    if (!strncmp(name, "json:", 5))
        snprintf(buf, size, " (a json: name)");
    else if (colon && (!slash || colon < slash) &&
             vd_driver_find_protocol(name, (size_t)(colon - name)))
        snprintf(buf, size, " (protocol prefix '%.*s:')", (int)VD_MIN(colon - name, 32),
                 name);
}

/* Copy name for a message: at most size - 1 bytes, control characters
 * (the image chose them: terminal escapes, newlines) shown as '?'. */
static void printable_name(const char *name, char *buf, size_t size)
{
    size_t i;

    for (i = 0; name[i] && i + 1 < size; i++)
        buf[i] = (unsigned char)name[i] < 0x20 || name[i] == 0x7f ? '?' : name[i];
    buf[i] = 0;
}

/* Refuse the reference named name (what: "backing file", "file") that
 * image n holds. */
int vd_untrusted_refuse(const vd_node *n, const char *what, const char *name)
{
    char kind[64], shown[1025];

    name = name ? name : "";
    name_kind(name, kind, sizeof(kind));
    printable_name(name, shown, sizeof(shown));
    return vd_error(EPERM, "%s image '%s' references %s '%s'%s: refused in "
                    "untrusted mode", n->drv->name, n->filename ? n->filename : "",
                    what, shown, kind);
}

/* The name a child open names: the name, else the options' file name. */
const char *vd_untrusted_child_name(const char *name, const vd_opts *opts)
{
    const char *f;

    if (name)
        return name;
    if ((f = vd_opts_get(opts, "filename")) || (f = vd_opts_get(opts, "file.filename")) ||
        (f = vd_opts_get(opts, "file")) || (f = vd_opts_get(opts, "driver")))
        return f;
    return "(options)";
}

/* With a format given (d) for file: refuse when the first bytes probe as
 * another format than d (raw probes match every format, which then checks
 * its own header). */
int vd_untrusted_check_format(vd_node *file, const struct vd_driver *d, const char *name)
{
    uint8_t buf[VD_PROBE_SIZE];
    int64_t size = vd_getlength(file);
    const struct vd_driver *p;
    size_t len;
    int r;

    if (size < 0)
        return vd_error((int)-size, "Could not get the size of '%s'", file->filename);
    len = (size_t)VD_MIN((uint64_t)size, (uint64_t)VD_PROBE_SIZE);
    memset(buf, 0, sizeof(buf));
    if ((r = vd_pread(file, 0, len, buf, 0)) < 0)
        return vd_error_prefix(r, "Could not read image for determining its format");
    p = vd_probe_format(buf, len, name);
    if (!p || p == d || !strcmp(p->name, "raw"))
        return 0;
    return vd_error(EPERM, "'%s' was given as format '%s' but its contents are '%s': "
                    "format mismatch refused in untrusted mode",
                    name ? name : file->filename, d->name, p->name);
}
