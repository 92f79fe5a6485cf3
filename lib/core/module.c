/* SPDX-License-Identifier: BSD-3-Clause */
/* Code with heavy libraries lives in shared modules loaded when first
 * needed, so that a program opening a local qcow2 maps none of them:
 * protocol drivers over client libraries (libcurl, libssh, libiscsi,
 * librbd, libgfapi), which register with VD_DRIVER_REGISTER when loaded,
 * parsers over libxml2 (vdisk-xml.so: parallels' DiskDescriptor.xml) and
 * decompressors (vdisk-codec.so: libbz2, liblzma, liblz4) and ciphers,
 * hashes and TLS (vdisk-crypto.so: libgcrypt, nettle, gnutls), which
 * register their functions with the code that calls them. */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/module.h"
#include "vdisk/vdisk.h"

#ifndef VD_MODULE_DIR
#define VD_MODULE_DIR "/usr/local/lib/vdisk"
#endif

/* A module and the driver names and protocol prefixes it provides (NULL:
 * none, the module is loaded by name with vd_module_require). */
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
    { "xml", NULL },
    { "codec", NULL },
    { "crypto", NULL },
};

#define NMODULES (sizeof(modules) / sizeof(modules[0]))

static pthread_mutex_t module_lock = PTHREAD_MUTEX_INITIALIZER;
static bool tried[NMODULES], loaded[NMODULES];
/* For vd_module_require's message when module i did not load: the
 * directories looked in, and dlerror's reason for a file that is there
 * but did not load (a library of its own missing). */
static char searched[NMODULES][512], failure[NMODULES][512];

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

/* Try dir/vdisk-NAME.so for module i; true if it loaded. */
static bool load_from(const char *dir, size_t i)
{
    char path[PATH_MAX];
    size_t used = strlen(searched[i]);

    if (!dir || !*dir)
        return false;
    if (snprintf(path, sizeof(path), "%s/vdisk-%s.so", dir, modules[i].name) >= (int)sizeof(path))
        return false;
    if (dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE))
        return true;
    snprintf(searched[i] + used, sizeof(searched[i]) - used, "%s%s", used ? ", " : "", dir);
    if (access(path, F_OK) == 0 && !failure[i][0]) {
        const char *e = dlerror();
        snprintf(failure[i], sizeof(failure[i]), "%s", e ? e : path);
    }
    return false;
}

/* Load module i once: from $VDISK_MODULE_DIR, the build tree's modules/
 * beside this library, the vdisk/ directory beside it (an installed tree
 * moved elsewhere, as under a DESTDIR), or the installed module
 * directory. */
static bool load_module(size_t i)
{
    char dir[PATH_MAX], lib[PATH_MAX];

    pthread_mutex_lock(&module_lock);
    if (!tried[i]) {
        tried[i] = true;
        bool ok = load_from(getenv("VDISK_MODULE_DIR"), i);
        if (!ok && library_dir(lib, sizeof(lib) - 8)) {
            snprintf(dir, sizeof(dir), "%s/modules", lib);
            ok = load_from(dir, i);
            snprintf(dir, sizeof(dir), "%s/vdisk", lib);
            if (!ok && strcmp(dir, VD_MODULE_DIR))
                ok = load_from(dir, i);
        }
        if (!ok)
            ok = load_from(VD_MODULE_DIR, i);
        loaded[i] = ok;
    }
    bool ok = loaded[i];
    pthread_mutex_unlock(&module_lock);
    return ok;
}

/* Does the module provide a driver or prefix equal to name[0..len)? */
static bool module_provides(const struct vd_module *m, const char *name, size_t len)
{
    for (const char *const *d = m->drivers; d && *d; d++)
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
        if (modules[i].drivers)
            load_module(i);
}

int vd_module_require(const char *name)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (!strcmp(modules[i].name, name)) {
            if (load_module(i))
                return 0;
            if (failure[i][0])
                return vd_error(ELIBACC, "cannot load the module vdisk-%s.so: %s", name,
                                failure[i]);
            return vd_error(ENOENT, "the module vdisk-%s.so is not installed (looked in %s)",
                            name, searched[i]);
        }
    return vd_error(ENOENT, "no module named '%s'", name);
}
