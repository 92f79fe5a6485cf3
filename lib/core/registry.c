/* SPDX-License-Identifier: BSD-3-Clause */
/* The driver registry: drivers add themselves at load time with
 * VD_DRIVER_REGISTER; lookups by name, protocol prefix and probing. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/module.h"
#include "util/checked.h"

#define VD_MAX_DRIVERS 64

static const struct vd_driver *drivers[VD_MAX_DRIVERS];
static size_t ndrivers;

/* Drivers registered so far (modules may add more while others look). */
static size_t driver_count(void)
{
    return __atomic_load_n(&ndrivers, __ATOMIC_ACQUIRE);
}

/* Add a driver (called from constructors: before main, or when a module
 * loads, under the module lock). */
void vd_driver_register(const struct vd_driver *d)
{
    size_t n = driver_count();

    if (n < VD_MAX_DRIVERS && d->struct_size <= sizeof(struct vd_driver)) {
        drivers[n] = d;
        __atomic_store_n(&ndrivers, n + 1, __ATOMIC_RELEASE);
    }
}

/* Find a registered driver by name. */
static const struct vd_driver *find_loaded(const char *name)
{
    size_t n = driver_count();

    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(drivers[i]->name, name))
            return drivers[i];
    return NULL;
}

/* Find a driver by name, loading the module that provides it if needed. */
const struct vd_driver *vd_driver_find(const char *name)
{
    const struct vd_driver *d = find_loaded(name);

    if (!d && name && vd_module_load_for(name, strlen(name)))
        d = find_loaded(name);
    return d;
}

/* Does prefix p equal name[0..len)? */
static bool prefix_is(const char *p, const char *name, size_t len)
{
    return p && strlen(p) == len && !strncmp(p, name, len);
}

/* The registered protocol driver whose prefix (or an alias) is name[0..len). */
static const struct vd_driver *find_protocol_loaded(const char *name, size_t len)
{
    size_t n = driver_count();

    for (size_t i = 0; i < n; i++) {
        const struct vd_driver *d = drivers[i];
        if (prefix_is(d->protocol, name, len))
            return d;
        if (d->struct_size <= offsetof(struct vd_driver, protocol_aliases))
            continue;
        for (const char *const *a = d->protocol_aliases; a && *a; a++)
            if (prefix_is(*a, name, len))
                return d;
    }
    return NULL;
}

/* Find the protocol driver for prefix name[0..len), loading its module. */
const struct vd_driver *vd_driver_find_protocol(const char *name, size_t len)
{
    const struct vd_driver *d = find_protocol_loaded(name, len);

    if (!d && vd_module_load_for(name, len))
        d = find_protocol_loaded(name, len);
    return d;
}

/* See vdisk.h. */
const struct vd_driver *vd_protocol_for_name(const char *name)
{
    size_t len = strcspn(name, ":/");
    const struct vd_driver *d;

    if (name[len] != ':')
        return vd_driver_find("file");
    if (!(d = vd_driver_find_protocol(name, len)))
        vd_error(ENOENT, "Unknown protocol '%.*s'", (int)VD_MIN(len, 256), name);
    return d;
}

/* qsort comparator: by driver name. */
static int cmp_driver(const void *a, const void *b)
{
    const struct vd_driver *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Call fn for every driver, sorted by name. */
void vd_driver_foreach(void (*fn)(const struct vd_driver *d, void *opaque), void *opaque)
{
    const struct vd_driver *sorted[VD_MAX_DRIVERS];

    vd_module_load_all();
    size_t n = driver_count();
    memcpy(sorted, drivers, n * sizeof(sorted[0]));
    qsort(sorted, n, sizeof(sorted[0]), cmp_driver);
    for (size_t i = 0; i < n; i++)
        fn(sorted[i], opaque);
}

const char *vd_driver_name(const struct vd_driver *d) { return d->name; }
bool vd_driver_is_format(const struct vd_driver *d) { return d->kind == VD_DRV_FORMAT; }

/* The best-scoring format for the probe buffer; ties go to the first. */
const struct vd_driver *vd_probe_format(const uint8_t *buf, size_t len,
                                        const char *filename)
{
    const struct vd_driver *best = NULL;
    int best_score = 0;
    size_t n = driver_count();

    for (size_t i = 0; i < n; i++) {
        const struct vd_driver *d = drivers[i];
        if (d->kind != VD_DRV_FORMAT || !d->probe)
            continue;
        int score = d->probe(buf, len, filename);
        if (score > best_score) {
            best = d;
            best_score = score;
        }
    }
    return best;
}

/* Type name as qemu-img -o help prints it. */
static const char *opt_type_name(enum vd_opt_type t)
{
    switch (t) {
    case VD_OPT_BOOL: return "bool (on/off)";
    case VD_OPT_NUMBER: return "num";
    case VD_OPT_SIZE: return "size";
    default: return "str";
    }
}

/* Collect table entries (without duplicates) into out; returns the count. */
static size_t collect_opts(const struct vd_opt_desc *t, const struct vd_opt_desc **out,
                           size_t n, size_t max)
{
    for (; t && t->name && n < max; t++) {
        bool dup = false;
        for (size_t i = 0; i < n; i++)
            dup |= !strcmp(out[i]->name, t->name);
        if (!dup)
            out[n++] = t;
    }
    return n;
}

/* qsort comparator: option descriptions by name. */
static int cmp_opt(const void *a, const void *b)
{
    const struct vd_opt_desc *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Print "-o help" for creating with fmt (and protocol proto, may be NULL). */
int vd_driver_print_create_opts(const char *fmt, const char *proto)
{
    const struct vd_driver *d = vd_driver_find(fmt), *p = NULL;
    const struct vd_opt_desc *list[128];
    size_t n;

    if (!d || !d->create)
        return vd_error(ENOTSUP, "Format driver '%s' does not support image creation", fmt);
    if (proto && !(p = vd_driver_find(proto)))
        return vd_error(ENOENT, "Unknown protocol '%s'", proto);
    n = collect_opts(d->create_opts, list, 0, VD_ARRAY_SIZE(list));
    if (p && p != d)
        n = collect_opts(p->create_opts, list, n, VD_ARRAY_SIZE(list));
    qsort(list, n, sizeof(list[0]), cmp_opt);
    if (p)
        printf("Supported options:\n");
    else
        printf("Supported %s options:\n", fmt);
    for (size_t i = 0; i < n; i++) {
        char left[128];
        snprintf(left, sizeof(left), "%s=<%s>", list[i]->name, opt_type_name(list[i]->type));
        printf("  %-22s - %s\n", left, list[i]->help ? list[i]->help : "");
    }
    if (!p)
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    return 0;
}

/* See vdisk.h. */
const struct vd_opt_desc *vd_driver_amend_opts(const struct vd_driver *d)
{
    if (!d || d->struct_size <= offsetof(struct vd_driver, amend))
        return NULL;
    return d->amend ? d->amend_opts : NULL;
}

/* Print "-o help" of amend for d, sorted by name as qemu-img does. */
int vd_driver_print_amend_opts(const struct vd_driver *d)
{
    const struct vd_opt_desc *list[128];
    size_t n;

    if (!vd_driver_amend_opts(d))
        return vd_error(ENOTSUP, "Format driver '%s' does not support option amendment",
                        d ? d->name : "");
    n = collect_opts(d->amend_opts, list, 0, VD_ARRAY_SIZE(list));
    qsort(list, n, sizeof(list[0]), cmp_opt);
    printf("Amend options for '%s':\n", d->name);
    for (size_t i = 0; i < n; i++) {
        char left[128];
        snprintf(left, sizeof(left), "%s=<%s>", list[i]->name, opt_type_name(list[i]->type));
        printf("  %-22s - %s\n", left, list[i]->help ? list[i]->help : "");
    }
    return 0;
}

/* True when buf would probe as a format other than raw. */
bool vd_probe_changes_format(const uint8_t *buf, size_t len)
{
    const struct vd_driver *d = vd_probe_format(buf, len, NULL);
    return d && strcmp(d->name, "raw") != 0;
}

/* See vdisk.h. */
bool vd_driver_can_create(const struct vd_driver *d)
{
    return d && d->create;
}
