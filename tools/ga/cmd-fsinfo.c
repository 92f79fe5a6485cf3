/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-get-fsinfo: the block-backed mounts (last mounted first) with
 * their usage and the disks under them, found through sysfs: partitions
 * lead to their disk, device-mapper devices to their slaves, and a
 * virtio-blk disk on PCI gets its PCI address.  Other buses (SCSI, IDE,
 * SATA, NVMe, CCW) are listed with an empty disk list. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "cmds.h"

#define MAX_DEPTH 8

/* The PCI address in a sysfs path: the last ".../DDDD:BB:SS.F/" before
 * the virtio node; false when the path has none. */
static bool pci_address(const char *path, unsigned v[4])
{
    const char *virtio = strstr(path, "/virtio"), *p = NULL;

    if (!virtio)
        return false;
    for (const char *q = path; q < virtio; q++)
        if (*q == '/' && sscanf(q + 1, "%x:%x:%x.%x", &v[0], &v[1], &v[2], &v[3]) == 4)
            p = q;
    if (!p)
        return false;
    return sscanf(p + 1, "%x:%x:%x.%x", &v[0], &v[1], &v[2], &v[3]) == 4;
}

/* The disk's ID_SERIAL from the udev database (what libudev reports;
 * nothing when udev does not run). */
static bool udev_serial(const char *name, char *out, size_t size)
{
    char path[PATH_MAX], dev[32], line[512];
    bool found = false;
    FILE *f;

    snprintf(path, sizeof(path), "/sys/block/%s/dev", name);
    f = fopen(path, "r");
    if (!f)
        return false;
    if (!fgets(dev, sizeof(dev), f))
        dev[0] = 0;
    fclose(f);
    dev[strcspn(dev, "\n")] = 0;
    snprintf(path, sizeof(path), "/run/udev/data/b%s", dev);
    f = fopen(path, "r");
    if (!f)
        return false;
    while (!found && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "E:ID_SERIAL=", 12) == 0) {
            line[strcspn(line, "\n")] = 0;
            snprintf(out, size, "%s", line + 12);
            found = out[0] != 0;
        }
    }
    fclose(f);
    return found;
}

/* See cmds.h: the address of a whole disk (sysfs path, name), or NULL. */
vd_json *ga_disk_address(const char *syspath, const char *name)
{
    char serial[256], path[PATH_MAX + 32];
    unsigned v[4];
    vd_json *a, *pci;

    if (!strstr(syspath, "/virtio") || !pci_address(syspath, v))
        return NULL;
    a = vd_json_new_object();
    pci = vd_json_new_object();
    vd_json_set_int(pci, "domain", v[0]);
    vd_json_set_int(pci, "bus", v[1]);
    vd_json_set_int(pci, "slot", v[2]);
    vd_json_set_int(pci, "function", v[3]);
    vd_json_set(a, "pci-controller", pci);
    vd_json_set_str(a, "bus-type", "virtio");
    vd_json_set_int(a, "bus", 0);
    vd_json_set_int(a, "target", 0);
    vd_json_set_int(a, "unit", 0);
    if (udev_serial(name, serial, sizeof(serial)))
        vd_json_set_str(a, "serial", serial);
    snprintf(path, sizeof(path), "/dev/%s", name);
    vd_json_set_str(a, "dev", path);
    return a;
}

/* Walk a block device's sysfs directory: slaves first (device mapper),
 * then the disk itself (a partition's parent directory is its disk). */
static void add_disks(vd_json *list, const char *syspath, int depth)
{
    char slaves[PATH_MAX], real[PATH_MAX], *base;
    struct dirent *de;
    DIR *d;

    if (depth > MAX_DEPTH || !realpath(syspath, real))
        return;
    snprintf(slaves, sizeof(slaves), "%s/slaves", real);
    d = opendir(slaves);
    if (d) {
        bool any = false;
        while ((de = readdir(d))) {
            char sub[PATH_MAX + 300];
            if (de->d_name[0] == '.')
                continue;
            snprintf(sub, sizeof(sub), "%s/%s", slaves, de->d_name);
            add_disks(list, sub, depth + 1);
            any = true;
        }
        closedir(d);
        if (any)
            return;
    }
    snprintf(slaves, sizeof(slaves), "%s/partition", real);
    if (access(slaves, F_OK) == 0 && (base = strrchr(real, '/')))
        *base = 0;                          /* the disk holding the partition */
    base = strrchr(real, '/');
    if (base) {
        vd_json *a = ga_disk_address(real, base + 1);
        if (a)
            vd_json_append(list, a);
    }
}

/* One mount's entry. */
static vd_json *fs_entry(const char *dir, const char *type, unsigned major, unsigned minor)
{
    char sys[64], real[PATH_MAX], *name;
    struct statvfs sv;
    vd_json *o = vd_json_new_object(), *disks = vd_json_new_array();

    snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u", major, minor);
    name = realpath(sys, real) ? strrchr(real, '/') + 1 : sys;
    vd_json_set_str(o, "name", name);
    vd_json_set_str(o, "mountpoint", dir);
    vd_json_set_str(o, "type", type);
    if (statvfs(dir, &sv) == 0) {
        unsigned long long used = sv.f_blocks - sv.f_bfree;
        vd_json_set_uint(o, "used-bytes", used * sv.f_frsize);
        vd_json_set_uint(o, "total-bytes", (used + sv.f_bavail) * sv.f_frsize);
    }
    add_disks(disks, sys, 0);
    vd_json_set(o, "disk", disks);
    return o;
}

/* The /dev names of the entries of dir (a slaves directory), in order. */
static vd_json *dev_names(const char *dir)
{
    vd_json *l = vd_json_new_array();
    struct dirent *de;
    DIR *d = opendir(dir);

    if (!d)
        return l;
    while ((de = readdir(d))) {
        char n[300];
        if (de->d_name[0] == '.')
            continue;
        snprintf(n, sizeof(n), "/dev/%s", de->d_name);
        vd_json_append(l, vd_json_new_string(n));
    }
    closedir(d);
    return l;
}

/* A small sysfs attribute of /sys/block/name/attr; false if none. */
static bool block_attr(const char *name, const char *attr, char *buf, size_t size)
{
    char path[PATH_MAX];
    FILE *f;
    bool ok;

    snprintf(path, sizeof(path), "/sys/block/%s/%s", name, attr);
    f = fopen(path, "r");
    if (!f)
        return false;
    ok = fgets(buf, (int)size, f) != NULL;
    fclose(f);
    if (ok)
        buf[strcspn(buf, "\n")] = 0;
    return ok;
}

/* The entries of one disk: its partitions, then itself (the caller puts
 * them in front, so the list reads latest first as qemu-ga's does). */
static void disk_entries(vd_json *out, const char *name)
{
    char path[PATH_MAX], real[PATH_MAX], buf[256];
    struct dirent *de;
    vd_json *o, *a;
    DIR *d;

    o = vd_json_new_object();
    snprintf(path, sizeof(path), "/dev/%s", name);
    vd_json_set_str(o, "name", path);
    vd_json_set_bool(o, "partition", false);
    snprintf(path, sizeof(path), "/sys/block/%s/slaves", name);
    vd_json_set(o, "dependencies", dev_names(path));
    snprintf(path, sizeof(path), "/sys/block/%s", name);
    if (realpath(path, real) && (a = ga_disk_address(real, name)))
        vd_json_set(o, "address", a);
    if (block_attr(name, "dm/name", buf, sizeof(buf)))
        vd_json_set_str(o, "alias", buf);
    vd_json_append(out, o);
    d = opendir(path);
    if (!d)
        return;
    while ((de = readdir(d))) {
        char part[PATH_MAX + 300];
        vd_json *p, *deps;

        if (strncmp(de->d_name, name, strlen(name)) != 0)
            continue;
        snprintf(part, sizeof(part), "%s/%s/partition", path, de->d_name);
        if (access(part, F_OK) != 0)
            continue;
        p = vd_json_new_object();
        snprintf(part, sizeof(part), "/dev/%s", de->d_name);
        vd_json_set_str(p, "name", part);
        vd_json_set_bool(p, "partition", true);
        deps = vd_json_new_array();
        snprintf(part, sizeof(part), "/dev/%s", name);
        vd_json_append(deps, vd_json_new_string(part));
        vd_json_set(p, "dependencies", deps);
        vd_json_append(out, p);
    }
    closedir(d);
}

/* Move the values of src to the front of dst, last first. */
static void prepend_all(vd_json **dst, vd_json *src)
{
    vd_json *n = vd_json_new_array();
    char *s;

    for (size_t i = vd_json_count(src); i-- > 0;) {
        s = vd_json_to_compact(vd_json_at(src, i));
        if (s)
            vd_json_append(n, vd_json_parse(s, strlen(s)));
        free(s);
    }
    for (size_t i = 0; i < vd_json_count(*dst); i++) {
        s = vd_json_to_compact(vd_json_at(*dst, i));
        if (s)
            vd_json_append(n, vd_json_parse(s, strlen(s)));
        free(s);
    }
    vd_json_free(*dst);
    *dst = n;
}

/* guest-get-disks: the block devices with a size, latest listed first. */
void ga_cmd_get_disks(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    DIR *d = opendir("/sys/block");
    struct dirent *de;

    (void)args;
    if (!d) {
        ga_error(e, "Can't open directory \"/sys/block\": %s", strerror(errno));
        return;
    }
    *ret = vd_json_new_array();
    while ((de = readdir(d))) {
        char size[32];
        vd_json *entries;

        if (de->d_name[0] == '.' || !block_attr(de->d_name, "size", size, sizeof(size)) ||
            strtoull(size, NULL, 10) == 0)
            continue;
        entries = vd_json_new_array();
        disk_entries(entries, de->d_name);
        prepend_all(ret, entries);
        vd_json_free(entries);
    }
    closedir(d);
}

/* guest-get-fsinfo */
void ga_cmd_get_fsinfo(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[8192];
    vd_json *all;

    (void)args;
    if (!f) {
        ga_error(e, "failed to open mtab file: '/proc/self/mountinfo'");
        return;
    }
    all = vd_json_new_array();
    while (fgets(line, sizeof(line), f)) {
        unsigned major, minor;
        char dir[4096], type[256];
        const char *sep;

        if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &major, &minor, dir) != 3)
            continue;
        sep = strstr(line, " - ");
        if (!sep || sscanf(sep + 3, "%255s", type) != 1 || major == 0 ||
            strcmp(type, "rootfs") == 0)
            continue;
        ga_unescape_mount_path(dir);
        vd_json_append(all, fs_entry(dir, type, major, minor));
    }
    fclose(f);
    *ret = vd_json_new_array();
    for (size_t i = vd_json_count(all); i-- > 0;) {
        char *s = vd_json_to_compact(vd_json_at(all, i));
        vd_json *copy = s ? vd_json_parse(s, strlen(s)) : NULL;
        free(s);
        if (copy)
            vd_json_append(*ret, copy);
    }
    vd_json_free(all);
}
