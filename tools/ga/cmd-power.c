/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-shutdown and guest-set-time: both hand the work to the system's
 * tools (/sbin/shutdown, /sbin/hwclock) in a child process, as qemu-ga
 * does, after the same argument checks. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
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
    char *argv[] = { "shutdown", (char *)flag, "+0", "hypervisor initiated shutdown", NULL };
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
