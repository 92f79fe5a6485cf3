/* SPDX-License-Identifier: BSD-3-Clause */
/* Protocol drivers with heavy client libraries (libcurl, libssh, libiscsi,
 * librbd, libgfapi) live in shared modules loaded when a name first needs
 * one, so that a program opening a local qcow2 maps none of them.  A module
 * registers its drivers with VD_DRIVER_REGISTER when loaded. */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/module.h"

#ifndef VD_MODULE_DIR
#define VD_MODULE_DIR "/usr/local/lib/vdisk"
#endif

/* A module and the driver names and protocol prefixes it provides. */
struct vd_module {
    const char *name;
    const char *const *drivers;
};

static const struct vd_module modules[] = {
    { "curl", (const char *const[]){ "http", "https", "ftp", "ftps", NULL } },
    { "ssh", (const char *const[]){ "ssh", NULL } },
    { "iscsi", (const char *const[]){ "iscsi", NULL } },
    { "rbd", (const char *const[]){ "rbd", NULL } },
    { "gluster", (const char *const[]){ "gluster", "gluster+tcp", "gluster+unix",
                                        "gluster+rdma", NULL } },
};

#define NMODULES (sizeof(modules) / sizeof(modules[0]))

static pthread_mutex_t module_lock = PTHREAD_MUTEX_INITIALIZER;
static bool tried[NMODULES];

/* The directory this library was loaded from, into buf; false if unknown. */
static bool library_dir(char *buf, size_t size)
{
    Dl_info info;

    if (!dladdr((void *)library_dir, &info) || !info.dli_fname)
        return false;
    const char *slash = strrchr(info.dli_fname, '/');
    if (!slash || (size_t)(slash - info.dli_fname) >= size)
        return false;
    memcpy(buf, info.dli_fname, (size_t)(slash - info.dli_fname));
    buf[slash - info.dli_fname] = 0;
    return true;
}

/* Try dir/vdisk-NAME.so; true if it loaded. */
static bool load_from(const char *dir, const char *name)
{
    char path[PATH_MAX];

    if (!dir || !*dir)
        return false;
    if (snprintf(path, sizeof(path), "%s/vdisk-%s.so", dir, name) >= (int)sizeof(path))
        return false;
    return dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) != NULL;
}

/* Load module i once: from $VDISK_MODULE_DIR, the build tree's modules/
 * beside this library, or the installed module directory. */
static void load_module(size_t i)
{
    char dir[PATH_MAX];

    pthread_mutex_lock(&module_lock);
    if (!tried[i]) {
        tried[i] = true;
        bool ok = load_from(getenv("VDISK_MODULE_DIR"), modules[i].name);
        if (!ok && library_dir(dir, sizeof(dir) - 8)) {
            strcat(dir, "/modules");
            ok = load_from(dir, modules[i].name);
        }
        if (!ok)
            load_from(VD_MODULE_DIR, modules[i].name);
    }
    pthread_mutex_unlock(&module_lock);
}

/* Does the module provide a driver or prefix equal to name[0..len)? */
static bool module_provides(const struct vd_module *m, const char *name, size_t len)
{
    for (const char *const *d = m->drivers; *d; d++)
        if (strlen(*d) == len && !strncmp(*d, name, len))
            return true;
    return false;
}

bool vd_module_load_for(const char *name, size_t len)
{
    bool any = false;

    for (size_t i = 0; name && i < NMODULES; i++)
        if (module_provides(&modules[i], name, len)) {
            load_module(i);
            any = true;
        }
    return any;
}

void vd_module_load_all(void)
{
    for (size_t i = 0; i < NMODULES; i++)
        load_module(i);
}
