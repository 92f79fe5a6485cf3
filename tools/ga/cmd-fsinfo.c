/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-get-fsinfo: the block-backed mounts (last mounted first) with
 * their usage and the disks under them, found through sysfs: partitions
 * lead to their disk, device-mapper devices to their slaves, and a disk
 * behind a PCI storage controller gets its bus type, numbers and PCI
 * address as qemu-ga reads them from the sysfs path. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/nvme_ioctl.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "cmds.h"

#define MAX_DEPTH 8

/* The driver bound to the sysfs device directory path[0..len), or "". */
static void driver_of(const char *path, size_t len, char *out, size_t size)
{
    char link[PATH_MAX + 16], target[PATH_MAX];
    ssize_t n;
    const char *base;

    out[0] = 0;
    if (len >= PATH_MAX)
        return;
    snprintf(link, sizeof(link), "%.*s/driver", (int)len, path);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0)
        return;
    target[n] = 0;
    base = strrchr(target, '/');
    snprintf(out, size, "%s", base ? base + 1 : target);
}

static bool known_driver(const char *d)
{
    static const char *const known[] = { "ata_piix", "sym53c8xx", "virtio-pci", "ahci", "nvme" };

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(d, known[i]) == 0)
            return true;
    return false;
}

/* Walk down the PCI functions of a sysfs path ("/devices/pciDDDD:BB/"
 * then DDDD:BB:SS.F components, bridges first) to the first one bound to
 * a storage driver qemu-ga knows: its address in v and its driver. */
static bool pci_controller(const char *path, unsigned v[4], char *driver, size_t size)
{
    const char *p = strstr(path, "/devices/pci");
    int n = 0;

    if (!p || sscanf(p + 12, "%*x:%*x/%x:%x:%x.%x%n", &v[0], &v[1], &v[2], &v[3], &n) < 4)
        return false;
    p += 12 + n;
    for (;;) {
        driver_of(path, (size_t)(p - path), driver, size);
        if (known_driver(driver))
            return true;
        n = 0;
        if (sscanf(p, "/%x:%x:%x.%x%n", &v[0], &v[1], &v[2], &v[3], &n) != 4 || n == 0)
            return false;
        p += n;
    }
}

/* The rank of host (or ata port) number num among the hostN (ataN)
 * entries of the directory dir[0..len); -1 if it is not there. */
static int host_rank(const char *dir, size_t len, bool ata, unsigned num)
{
    char path[PATH_MAX];
    struct dirent *de;
    int below = 0;
    bool seen = false;
    DIR *d;

    if (len >= sizeof(path))
        return -1;
    snprintf(path, sizeof(path), "%.*s", (int)len, dir);
    d = opendir(path);
    if (!d)
        return -1;
    while ((de = readdir(d))) {
        unsigned k;
        if (sscanf(de->d_name, ata ? "ata%u" : "host%u", &k) != 1)
            continue;
        if (k < num)
            below++;
        seen |= k == num;
    }
    closedir(d);
    return seen ? below : -1;
}

/* Fill the bus type and numbers of a disk at sysfs path under a PCI
 * controller (driver): false when the path does not fit the driver. */
static bool disk_bus(const char *path, const char *driver, vd_json *a)
{
    const char *t = strstr(path, "/target"), *h;
    unsigned tgt[3], host;
    bool has_tgt = t && sscanf(t + 7, "%*u:%*u:%*u/%*u:%u:%u:%u", &tgt[0], &tgt[1], &tgt[2]) == 3;
    bool ata = (h = strstr(path, "/ata")) != NULL;
    int rank = -1;

    if (!ata)
        h = strstr(path, "/host");
    if (h && sscanf(h + (ata ? 4 : 5), "%u", &host) == 1)
        rank = host_rank(path, (size_t)(h - path), ata, host);
    if (strcmp(driver, "ata_piix") == 0) {
        if (!has_tgt || rank < 0)
            return false;
        vd_json_set_str(a, "bus-type", "ide");
        vd_json_set_int(a, "bus", rank);
        vd_json_set_int(a, "unit", tgt[1]);
    } else if (strcmp(driver, "sym53c8xx") == 0) {
        if (!has_tgt)
            return false;
        vd_json_set_str(a, "bus-type", "scsi");
        vd_json_set_int(a, "unit", tgt[1]);
    } else if (strcmp(driver, "virtio-pci") == 0) {
        vd_json_set_str(a, "bus-type", has_tgt ? "scsi" : "virtio");
        vd_json_set_int(a, "unit", has_tgt ? tgt[2] : 0);
    } else if (strcmp(driver, "ahci") == 0) {
        if (!has_tgt || rank < 0)
            return false;
        vd_json_set_str(a, "bus-type", "sata");
        vd_json_set_int(a, "unit", rank);
    } else {
        vd_json_set_str(a, "bus-type", "nvme");
    }
    return true;
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

/* See cmds.h: the address of a whole disk (sysfs path, name) as
 * qemu-ga gives it: the bus from the PCI controller's driver, "unknown"
 * with a PCI address of -1s for other devices (the device node is always
 * known). */
vd_json *ga_disk_address(const char *syspath, const char *name)
{
    char serial[256], path[PATH_MAX + 32], driver[64];
    unsigned v[4];
    vd_json *a, *pci;
    bool known;

    if (strstr(syspath, "/devices/virtual/block/"))
        return NULL;                    /* loop, dm, ...: no address */
    a = vd_json_new_object();
    pci = vd_json_new_object();
    known = pci_controller(syspath, v, driver, sizeof(driver));

    vd_json_set_int(a, "bus", 0);
    vd_json_set_int(a, "target", 0);
    if (!known || !disk_bus(syspath, driver, a)) {
        vd_json_set_str(a, "bus-type", "unknown");
        vd_json_set_int(a, "unit", 0);
        for (int i = 0; i < 4; i++)
            v[i] = UINT_MAX;
    }
    if (!vd_json_get(a, "unit"))
        vd_json_set_int(a, "unit", 0);
    vd_json_set_int(pci, "domain", v[0] == UINT_MAX ? -1 : (int64_t)v[0]);
    vd_json_set_int(pci, "bus", v[1] == UINT_MAX ? -1 : (int64_t)v[1]);
    vd_json_set_int(pci, "slot", v[2] == UINT_MAX ? -1 : (int64_t)v[2]);
    vd_json_set_int(pci, "function", v[3] == UINT_MAX ? -1 : (int64_t)v[3]);
    vd_json_set(a, "pci-controller", pci);
    if (udev_serial(name, serial, sizeof(serial)))
        vd_json_set_str(a, "serial", serial);
    snprintf(path, sizeof(path), "/dev/%s", name);
    vd_json_set_str(a, "dev", path);
    return a;
}

#define NVME_ADMIN_GET_LOG_PAGE 0x02
#define NVME_LOG_SMART 0x02
#define NVME_SMART_LOG_SIZE 512

/* A little-endian 64-bit value at p. */
static uint64_t le64_at(const unsigned char *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The SMART / health log of an NVMe namespace's controller (Get Log Page
 * over the admin passthrough ioctl) as qemu-ga reports it, or NULL. */
static vd_json *nvme_smart(const char *name)
{
    static const struct { const char *key; unsigned off; } wide[] = {
        { "data-units-read", 32 }, { "data-units-written", 48 },
        { "host-read-commands", 64 }, { "host-write-commands", 80 },
        { "controller-busy-time", 96 }, { "power-cycles", 112 },
        { "power-on-hours", 128 }, { "unsafe-shutdowns", 144 },
        { "media-errors", 160 }, { "number-of-error-log-entries", 176 },
    };
    unsigned char log[NVME_SMART_LOG_SIZE] = { 0 };
    struct nvme_admin_cmd cmd = { 0 };
    char dev[300];
    vd_json *o;
    int fd, r;

    snprintf(dev, sizeof(dev), "/dev/%s", name);
    fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    cmd.opcode = NVME_ADMIN_GET_LOG_PAGE;
    cmd.nsid = 0xffffffffu;
    cmd.addr = (uint64_t)(uintptr_t)log;
    cmd.data_len = sizeof(log);
    cmd.cdw10 = NVME_LOG_SMART | ((sizeof(log) / 4 - 1) << 16);
    r = ioctl(fd, NVME_IOCTL_ADMIN_CMD, &cmd);
    close(fd);
    if (r != 0)
        return NULL;
    o = vd_json_new_object();
    vd_json_set_str(o, "type", "nvme");
    vd_json_set_int(o, "critical-warning", log[0]);
    vd_json_set_int(o, "temperature", log[1] | log[2] << 8);
    vd_json_set_int(o, "available-spare", log[3]);
    vd_json_set_int(o, "available-spare-threshold", log[4]);
    vd_json_set_int(o, "percentage-used", log[5]);
    for (size_t i = 0; i < sizeof(wide) / sizeof(wide[0]); i++) {
        char k[64];
        snprintf(k, sizeof(k), "%s-lo", wide[i].key);
        vd_json_set_uint(o, k, le64_at(log + wide[i].off));
        snprintf(k, sizeof(k), "%s-hi", wide[i].key);
        vd_json_set_uint(o, k, le64_at(log + wide[i].off + 8));
    }
    return o;
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
    if (realpath(path, real) && (a = ga_disk_address(real, name))) {
        const char *bus = vd_json_str(vd_json_get(a, "bus-type"));
        vd_json *smart = bus && strcmp(bus, "nvme") == 0 ? nvme_smart(name) : NULL;
        if (smart)
            vd_json_set(o, "smart", smart);
        vd_json_set(o, "address", a);
    }
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
