/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-shutdown, guest-set-time and guest-set-user-password hand the
 * work to the system's tools (/sbin/shutdown, /sbin/hwclock, chpasswd) in
 * a child process, as qemu-ga does, after the same argument checks. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmds.h"

#define SHUTDOWN_PATH "/sbin/shutdown"
#define HWCLOCK_PATH "/sbin/hwclock"

/* Run argv in a new session with fds 0-2 on /dev/null; the wait status,
 * or -1 with e set. */
static int run_tool(const char *path, char *const argv[], struct ga_err *e)
{
    int status;
    pid_t pid = fork();

    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        sigset_t mask;

        sigemptyset(&mask);
        sigprocmask(SIG_SETMASK, &mask, NULL);
        setsid();
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(path, argv);
        _exit(EXIT_FAILURE);
    }
    if (pid < 0) {
        ga_error(e, "failed to create child process: %s", strerror(errno));
        return -1;
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            ga_error(e, "failed to wait for child process: %s", strerror(errno));
            return -1;
        }
    }
    if (!WIFEXITED(status)) {
        ga_error(e, "child process has terminated abnormally");
        return -1;
    }
    return WEXITSTATUS(status);
}

/* guest-shutdown: powerdown (the default), halt or reboot. */
void ga_cmd_shutdown(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *m = vd_json_get(args, "mode");
    const char *mode = m ? vd_json_str(m) : "powerdown", *flag;

    (void)ret;
    if (strcmp(mode, "powerdown") == 0)
        flag = "-P";
    else if (strcmp(mode, "halt") == 0)
        flag = "-H";
    else if (strcmp(mode, "reboot") == 0)
        flag = "-r";
    else {
        ga_error(e, "mode is invalid (valid values are: halt|powerdown|reboot");
        return;
    }
    ga_log("info", "guest-shutdown called, mode: %s", mode);
    char *argv[] = { "shutdown", "-h", (char *)flag, "+0", "hypervisor initiated shutdown",
                     NULL };
    int st = run_tool(SHUTDOWN_PATH, argv, e);
    if (st > 0)
        ga_error(e, "child process has failed to shutdown");
}

/* guest-set-time: with a time (ns since the epoch), set the clock and then
 * the RTC from it; without, set the clock from the RTC. */
void ga_cmd_set_time(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *t = vd_json_get(args, "time");
    char *argv[] = { "hwclock", t ? "-w" : "-s", NULL };
    int st;

    (void)ret;
    if (t) {
        int64_t ns = vd_json_int(t);
        struct timeval tv = { .tv_sec = (time_t)(ns / 1000000000),
                              .tv_usec = (suseconds_t)(ns % 1000000000 / 1000) };
        struct tm tm;

        if (!localtime_r(&tv.tv_sec, &tm) || tm.tm_year + 1900 < 1970 ||
            tm.tm_year + 1900 >= 2070) {
            ga_error(e, "Invalid time");
            return;
        }
        if (settimeofday(&tv, NULL) < 0) {
            ga_error(e, "Failed to set time to guest: %s", strerror(errno));
            return;
        }
    }
    st = run_tool(HWCLOCK_PATH, argv, e);
    if (st > 0)
        ga_error(e, "hwclock failed to set hardware clock to system time");
}

/* Feed "user:password\n" to chpasswd (-e for a crypted one); the wait
 * status, or -1 with e set. */
static int run_chpasswd(const char *path, const char *line, bool crypted, struct ga_err *e)
{
    int fds[2], status;
    pid_t pid;

    if (pipe2(fds, O_CLOEXEC) < 0) {
        ga_error(e, "cannot create pipe FDs");
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        sigset_t mask;

        sigemptyset(&mask);
        sigprocmask(SIG_SETMASK, &mask, NULL);
        setsid();
        dup2(fds[0], 0);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        if (crypted)
            execl(path, "chpasswd", "-e", (char *)NULL);
        else
            execl(path, "chpasswd", (char *)NULL);
        _exit(EXIT_FAILURE);
    }
    close(fds[0]);
    if (pid < 0) {
        ga_error(e, "failed to create child process: %s", strerror(errno));
        close(fds[1]);
        return -1;
    }
    for (size_t off = 0, n = strlen(line); off < n;) {
        ssize_t w = write(fds[1], line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            ga_error(e, "cannot write new account password: %s", strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    close(fds[1]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (e->desc)
        return -1;
    if (!WIFEXITED(status)) {
        ga_error(e, "child process has terminated abnormally");
        return -1;
    }
    return WEXITSTATUS(status);
}

/* The first chpasswd in PATH, NULL if none. */
static char *find_chpasswd(void)
{
    const char *path = getenv("PATH");
    char *dirs, *save = NULL, *found = NULL;

    dirs = strdup(path ? path : "/usr/bin:/bin");
    for (char *d = dirs ? strtok_r(dirs, ":", &save) : NULL; d && !found;
         d = strtok_r(NULL, ":", &save)) {
        char *cand = NULL;
        if (asprintf(&cand, "%s/chpasswd", d) >= 0 && access(cand, X_OK) == 0)
            found = cand;
        else
            free(cand);
    }
    free(dirs);
    return found;
}

/* guest-set-user-password */
void ga_cmd_set_user_password(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const char *username = vd_json_str(vd_json_get(args, "username"));
    bool crypted = vd_json_bool(vd_json_get(args, "crypted"));
    char *raw, *line = NULL, *prog = NULL;
    unsigned char *data;
    size_t len;
    int st;

    (void)ret;
    data = ga_base64_decode(vd_json_str(vd_json_get(args, "password")), &len, e);
    if (!data)
        return;
    raw = realloc(data, len + 1);
    if (!raw) {
        free(data);
        ga_error(e, "out of memory");
        return;
    }
    raw[len] = 0;                       /* a C string, as qemu-ga reads it */
    if (strchr(raw, '\n'))
        ga_error(e, "forbidden characters in raw password");
    else if (strchr(username, '\n') || strchr(username, ':'))
        ga_error(e, "forbidden characters in username");
    else if (asprintf(&line, "%s:%s\n", username, raw) < 0)
        ga_error(e, "out of memory");
    else if (!(prog = find_chpasswd()))
        ga_error(e, "cannot find 'passwd' program in PATH");
    else if ((st = run_chpasswd(prog, line, crypted, e)) > 0)
        ga_error(e, "child process has failed to set user password");
    free(prog);
    if (line) {
        memset(line, 0, strlen(line));
        free(line);
    }
    memset(raw, 0, len);
    free(raw);
}
