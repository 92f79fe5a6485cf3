/* SPDX-License-Identifier: BSD-3-Clause */
/* Commands over sysfs and procfs: guest-set-vcpus, guest-get-memory-blocks,
 * guest-set-memory-blocks, guest-get-memory-block-info, guest-get-cpustats
 * and guest-get-diskstats. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmds.h"

#define CPU_DIR "/sys/devices/system/cpu"
#define MEM_DIR "/sys/devices/system/memory"

/* The first line of a small sysfs file, newline removed; false if none. */
static bool read_line(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    bool ok;

    if (!f)
        return false;
    ok = fgets(buf, (int)size, f) != NULL;
    fclose(f);
    if (ok)
        buf[strcspn(buf, "\n")] = 0;
    return ok;
}

/* Write s to a sysfs file; 0 or an errno. */
static int write_str(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC), e = 0;

    if (fd < 0)
        return errno;
    if (write(fd, s, strlen(s)) < 0)
        e = errno;
    close(fd);
    return e;
}

/* One vCPU of guest-set-vcpus; false with e set. */
static bool set_vcpu(const vd_json *v, struct ga_err *e)
{
    int64_t id = vd_json_int(vd_json_get(v, "logical-id"));
    bool online = vd_json_bool(vd_json_get(v, "online"));
    char dir[96], path[128], cur[16];
    struct stat st;
    int err;

    snprintf(dir, sizeof(dir), CPU_DIR "/cpu%" PRId64 "/", id);
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        ga_error(e, "open(\"%s\"): %s", dir, strerror(errno ? errno : ENOTDIR));
        return false;
    }
    snprintf(path, sizeof(path), "%sonline", dir);
    if (!read_line(path, cur, sizeof(cur))) {
        if (!online) {
            ga_error(e, "logical processor #%" PRId64 " can't be offlined", id);
            return false;
        }
        return true;
    }
    if ((cur[0] != '0') == online)
        return true;
    err = write_str(path, online ? "1" : "0");
    if (err) {
        ga_error(e, "pwrite(\"%s\"): %s", path, strerror(err));
        return false;
    }
    return true;
}

/* guest-set-vcpus: the number handled before the first failure (the
 * failure itself when it is the first). */
void ga_cmd_set_vcpus(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *list = vd_json_get(args, "vcpus");
    int64_t done = 0;
    struct ga_err first = { 0 };

    for (size_t i = 0; i < vd_json_count(list); i++) {
        if (!set_vcpu(vd_json_at(list, i), &first))
            break;
        done++;
    }
    if (first.desc && done == 0) {
        *e = first;
        return;
    }
    free(first.desc);
    *ret = vd_json_new_int(done);
}

/* guest-get-memory-block-info */
void ga_cmd_get_memory_block_info(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    char buf[64];
    char *end;
    unsigned long long size;

    (void)args;
    if (!read_line(MEM_DIR "/block_size_bytes", buf, sizeof(buf))) {
        ga_error(e, "could not read \"" MEM_DIR "/block_size_bytes\": %s", strerror(errno));
        return;
    }
    errno = 0;
    size = strtoull(buf, &end, 16);
    if (errno || end == buf) {
        ga_error(e, "invalid memory block size '%s'", buf);
        return;
    }
    *ret = vd_json_new_object();
    vd_json_set_uint(*ret, "size", size);
}

/* The index of a "memoryN" entry, -1 for other names. */
static long long memory_index(const char *name)
{
    char *end;
    long long v;

    if (strncmp(name, "memory", 6) != 0 || name[6] < '0' || name[6] > '9')
        return -1;
    v = strtoll(name + 6, &end, 10);
    return *end ? -1 : v;
}

/* guest-get-memory-blocks: in directory order. */
void ga_cmd_get_memory_blocks(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    DIR *d = opendir(MEM_DIR);
    struct dirent *de;

    (void)args;
    if (!d) {
        ga_error(e, "Can't open directory\"" MEM_DIR "\": %s", strerror(errno));
        return;
    }
    *ret = vd_json_new_array();
    while ((de = readdir(d))) {
        long long idx = memory_index(de->d_name);
        char path[300], buf[32];
        vd_json *o;

        if (idx < 0)
            continue;
        o = vd_json_new_object();
        snprintf(path, sizeof(path), MEM_DIR "/%s/state", de->d_name);
        vd_json_set_bool(o, "online", read_line(path, buf, sizeof(buf)) &&
                                      strcmp(buf, "online") == 0);
        snprintf(path, sizeof(path), MEM_DIR "/%s/removable", de->d_name);
        vd_json_set_bool(o, "can-offline", read_line(path, buf, sizeof(buf)) &&
                                           strcmp(buf, "1") == 0);
        vd_json_set_uint(o, "phys-index", (uint64_t)idx);
        vd_json_append(*ret, o);
    }
    closedir(d);
}

/* One block of guest-set-memory-blocks: its response object. */
static vd_json *set_memory_block(const vd_json *b)
{
    uint64_t idx = vd_json_uint(vd_json_get(b, "phys-index"));
    bool online = vd_json_bool(vd_json_get(b, "online"));
    vd_json *o = vd_json_new_object();
    char path[128], cur[32];
    int err = 0;

    snprintf(path, sizeof(path), MEM_DIR "/memory%" PRIu64 "/state", idx);
    if (!read_line(path, cur, sizeof(cur))) {
        err = errno;
        vd_json_set_str(o, "response", err == ENOENT ? "not-found" : "operation-failed");
    } else if ((strcmp(cur, "online") == 0) == online) {
        vd_json_set_str(o, "response", "success");
    } else if ((err = write_str(path, online ? "online" : "offline")) != 0) {
        vd_json_set_str(o, "response", "operation-failed");
    } else {
        vd_json_set_str(o, "response", "success");
    }
    if (err)
        vd_json_set_int(o, "error-code", err);
    vd_json_set_uint(o, "phys-index", idx);
    return o;
}

/* guest-set-memory-blocks */
void ga_cmd_set_memory_blocks(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *list = vd_json_get(args, "mem-blks");

    (void)e;
    *ret = vd_json_new_array();
    for (size_t i = 0; i < vd_json_count(list); i++)
        vd_json_append(*ret, set_memory_block(vd_json_at(list, i)));
}

/* guest-get-cpustats: /proc/stat's per-CPU times in milliseconds. */
void ga_cmd_get_cpustats(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    static const char *const names[] = { "user", "nice", "system", "idle", "iowait",
                                         "irq", "softirq", "steal", "guest", "guestnice" };
    FILE *f = fopen("/proc/stat", "r");
    long tck = sysconf(_SC_CLK_TCK);
    char line[1024];

    (void)args;
    if (!f) {
        ga_error(e, "open(\"/proc/stat\"): %s", strerror(errno));
        return;
    }
    if (tck <= 0)
        tck = 100;
    *ret = vd_json_new_array();
    while (fgets(line, sizeof(line), f)) {
        unsigned long long v[10] = { 0 };
        int cpu, n;
        vd_json *o;

        if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9')
            continue;
        n = sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &cpu,
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
        if (n < 5)
            continue;
        o = vd_json_new_object();
        vd_json_set_str(o, "type", "linux");
        vd_json_set_int(o, "cpu", cpu);
        for (int i = 0; i < n - 1 && i < 10; i++)
            vd_json_set_uint(o, names[i], v[i] * 1000 / (unsigned long long)tck);
        vd_json_append(*ret, o);
    }
    fclose(f);
}

/* guest-get-diskstats: /proc/diskstats, the fields the kernel gives. */
void ga_cmd_get_diskstats(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    static const char *const names[] = {
        "read-ios", "read-merges", "read-sectors", "read-ticks", "write-ios",
        "write-merges", "write-sectors", "write-ticks", "ios-pgr", "total-ticks",
        "weight-ticks", "discard-ios", "discard-merges", "discard-sectors",
        "discard-ticks", "flush-ios", "flush-ticks",
    };
    FILE *f = fopen("/proc/diskstats", "r");
    char line[1024];

    (void)args;
    if (!f) {
        ga_error(e, "open(\"/proc/diskstats\"): %s", strerror(errno));
        return;
    }
    *ret = vd_json_new_array();
    while (fgets(line, sizeof(line), f)) {
        unsigned long long v[17] = { 0 };
        unsigned major, minor;
        char name[128];
        vd_json *o, *st;
        int n = sscanf(line, "%u %u %127s %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
                       "%llu %llu %llu %llu %llu %llu %llu", &major, &minor, name,
                       &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8],
                       &v[9], &v[10], &v[11], &v[12], &v[13], &v[14], &v[15], &v[16]);
        if (n < 14)
            continue;
        o = vd_json_new_object();
        vd_json_set_str(o, "name", name);
        vd_json_set_uint(o, "major", major);
        vd_json_set_uint(o, "minor", minor);
        st = vd_json_new_object();
        for (int i = 0; i < n - 3 && i < 17; i++)
            vd_json_set_uint(st, names[i], v[i]);
        vd_json_set(o, "stats", st);
        vd_json_append(*ret, o);
    }
    fclose(f);
}
