/* SPDX-License-Identifier: BSD-3-Clause */
/* The informational commands: guest-sync*, guest-ping, guest-info,
 * guest-get-time, -host-name, -timezone, -osinfo, -users, -vcpus. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <utmpx.h>

#include "cmds.h"
#include "vdisk/vdisk.h"

/* guest-sync and guest-sync-delimited: echo the id. */
void ga_cmd_sync(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    (void)e;
    *ret = vd_json_new_int(vd_json_int(vd_json_get(args, "id")));
}

/* guest-ping */
void ga_cmd_ping(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    (void)args;
    (void)ret;
    (void)e;
}

/* guest-info: the commands, latest registered first. */
void ga_cmd_info(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    vd_json *list = vd_json_new_array();

    (void)args;
    (void)e;
    for (size_t i = ga_ncommands; i-- > 0;) {
        vd_json *c = vd_json_new_object();
        vd_json_set_bool(c, "enabled", ga_command_enabled(i));
        vd_json_set_str(c, "name", ga_commands[i].name);
        vd_json_set_bool(c, "success-response", !ga_commands[i].no_success_response);
        vd_json_append(list, c);
    }
    *ret = vd_json_new_object();
    vd_json_set_str(*ret, "version", VD_VERSION_STRING);
    vd_json_set(*ret, "supported_commands", list);
}

/* guest-get-time: nanoseconds since the epoch. */
void ga_cmd_get_time(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct timespec ts;

    (void)args;
    if (clock_gettime(CLOCK_REALTIME, &ts) < 0) {
        ga_error(e, "Failed to get time: %s", strerror(errno));
        return;
    }
    *ret = vd_json_new_int((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
}

/* guest-get-host-name */
void ga_cmd_get_host_name(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    char name[256];

    (void)args;
    if (gethostname(name, sizeof(name)) < 0) {
        ga_error(e, "%s", strerror(errno));
        return;
    }
    name[sizeof(name) - 1] = 0;
    *ret = vd_json_new_object();
    vd_json_set_str(*ret, "host-name", name);
}

/* guest-get-timezone: the zone's abbreviation and UTC offset now. */
void ga_cmd_get_timezone(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    time_t now = time(NULL);
    struct tm tm;

    (void)args;
    tzset();
    if (!localtime_r(&now, &tm)) {
        ga_error(e, "Failed to get local time");
        return;
    }
    *ret = vd_json_new_object();
    if (tm.tm_zone)
        vd_json_set_str(*ret, "zone", tm.tm_zone);
    vd_json_set_int(*ret, "offset", tm.tm_gmtoff);
}

/* Unquote an os-release value (shell-style single or double quotes). */
static char *unquote(const char *v)
{
    size_t n = strlen(v);
    char *o = malloc(n + 1), *q = o;
    char quote = 0;

    if (!o)
        return NULL;
    for (const char *p = v; *p; p++) {
        if (!quote && (*p == '"' || *p == '\'')) {
            quote = *p;
        } else if (quote && *p == quote) {
            quote = 0;
        } else if (*p == '\\' && quote != '\'' && p[1]) {
            *q++ = *++p;
        } else {
            *q++ = *p;
        }
    }
    *q = 0;
    return o;
}

/* Add os-release's key as member name when present. */
static void osrelease_member(vd_json *obj, FILE *f, const char *key, const char *name)
{
    char line[1024];
    size_t kl = strlen(key);

    rewind(f);
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, key, kl) == 0 && line[kl] == '=') {
            char *v = unquote(line + kl + 1);
            if (v)
                vd_json_set_str(obj, name, v);
            free(v);
        }
    }
}

/* guest-get-osinfo: uname(2) and os-release. */
void ga_cmd_get_osinfo(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    static const char *const keys[][2] = {
        { "ID", "id" }, { "NAME", "name" }, { "PRETTY_NAME", "pretty-name" },
        { "VERSION", "version" }, { "VERSION_ID", "version-id" },
        { "VARIANT", "variant" }, { "VARIANT_ID", "variant-id" },
    };
    struct utsname u;
    FILE *f;

    (void)args;
    (void)e;
    *ret = vd_json_new_object();
    if (uname(&u) == 0) {
        vd_json_set_str(*ret, "kernel-release", u.release);
        vd_json_set_str(*ret, "kernel-version", u.version);
        vd_json_set_str(*ret, "machine", u.machine);
    }
    f = fopen("/etc/os-release", "r");
    if (!f)
        f = fopen("/usr/lib/os-release", "r");
    if (!f)
        return;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        osrelease_member(*ret, f, keys[i][0], keys[i][1]);
    fclose(f);
}

/* guest-get-users: logged-in users (utmp), each with its first login. */
void ga_cmd_get_users(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct utmpx *u;

    (void)args;
    (void)e;
    *ret = vd_json_new_array();
    setutxent();
    while ((u = getutxent())) {
        char user[sizeof(u->ut_user) + 1];
        double t = (double)u->ut_tv.tv_sec + (double)u->ut_tv.tv_usec / 1e6;
        vd_json *found = NULL, *o;

        if (u->ut_type != USER_PROCESS)
            continue;
        memcpy(user, u->ut_user, sizeof(u->ut_user));
        user[sizeof(u->ut_user)] = 0;
        for (size_t i = 0; i < vd_json_count(*ret); i++)
            if (!strcmp(vd_json_str(vd_json_get(vd_json_at(*ret, i), "user")), user))
                found = vd_json_at(*ret, i);
        if (found) {
            if (t < vd_json_double(vd_json_get(found, "login-time")))
                vd_json_set(found, "login-time", vd_json_new_double(t));
            continue;
        }
        o = vd_json_new_object();
        vd_json_set_str(o, "user", user);
        vd_json_set(o, "login-time", vd_json_new_double(t));
        vd_json_append(*ret, o);
    }
    endutxent();
}

/* guest-get-vcpus: every configured CPU, listed last first. */
void ga_cmd_get_vcpus(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    long n = sysconf(_SC_NPROCESSORS_CONF);

    (void)args;
    if (n < 1) {
        ga_error(e, "sysconf(_SC_NPROCESSORS_CONF): %s", strerror(errno));
        return;
    }
    *ret = vd_json_new_array();
    for (long i = n; i-- > 0;) {
        char path[96], c = '1';
        bool can_offline;
        FILE *f;
        vd_json *o = vd_json_new_object();

        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%ld/online", i);
        f = fopen(path, "r");
        can_offline = f != NULL;
        if (f) {
            if (fread(&c, 1, 1, f) != 1)
                c = '1';
            fclose(f);
        }
        vd_json_set_bool(o, "online", c != '0');
        vd_json_set_bool(o, "can-offline", can_offline);
        vd_json_set_int(o, "logical-id", i);
        vd_json_append(*ret, o);
    }
}
