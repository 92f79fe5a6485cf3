/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-suspend-disk, guest-suspend-ram and guest-suspend-hybrid, tried
 * the way qemu-ga 7.2 tries them: systemd (systemctl), then pm-utils,
 * then a write of "disk" or "mem" to /sys/power/state from a child (the
 * kernel has no hybrid mode there).  The answer comes after the guest
 * wakes up, and only on failure (the commands have no success answer). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmds.h"

#define SYS_POWER_STATE "/sys/power/state"

enum suspend_mode { MODE_DISK, MODE_RAM, MODE_HYBRID };

static const char *const unit_name[] = { "systemd-hibernate", "systemd-suspend",
                                         "systemd-hybrid-sleep" };
static const char *const systemctl_verb[] = { "hibernate", "suspend", "hybrid-sleep" };
static const char *const pm_flag[] = { "--hibernate", "--suspend", "--suspend-hybrid" };
static const char *const pm_tool[] = { "pm-hibernate", "pm-suspend", "pm-suspend-hybrid" };
static const char *const state_word[] = { "disk", "mem", NULL };

/* Reset the signal mask, start a session and point fds 0-2 at /dev/null
 * (in a child before exec or its own work). */
static void child_setup(void)
{
    sigset_t mask;
    int fd = open("/dev/null", O_RDWR);

    sigemptyset(&mask);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    setsid();
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
}

/* Wait for pid: its wait status, or -1 with e set. */
static int wait_child(pid_t pid, struct ga_err *e)
{
    int status;

    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            ga_error(e, "failed to wait for child process: %s", strerror(errno));
            return -1;
        }
    }
    return status;
}

/* Is there an executable name in PATH? */
static bool in_path(const char *name)
{
    const char *path = getenv("PATH");
    char *dirs = strdup(path ? path : "/usr/local/bin:/usr/bin:/bin"), *save = NULL;
    bool found = false;

    for (char *d = dirs ? strtok_r(dirs, ":", &save) : NULL; d && !found;
         d = strtok_r(NULL, ":", &save)) {
        char cand[4096];
        if ((size_t)snprintf(cand, sizeof(cand), "%s/%s", d, name) < sizeof(cand))
            found = access(cand, X_OK) == 0;
    }
    free(dirs);
    return found;
}

/* Run argv (argv[0] looked up in PATH) with its output dropped: its exit
 * status, or -1 when it is not in PATH or cannot be started (e set then). */
static int run_helper(char *const argv[], struct ga_err *e)
{
    pid_t pid;
    int status;

    if (!in_path(argv[0]))
        return -1;
    pid = fork();
    if (pid == 0) {
        child_setup();
        execvp(argv[0], argv);
        _exit(127);
    }
    if (pid < 0) {
        ga_error(e, "failed to create child process, error '%s'", strerror(errno));
        return -1;
    }
    status = wait_child(pid, e);
    if (status < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 0;
}

/* A helper that suspends: false with e set when it failed. */
static bool run_suspend_helper(char *const argv[], const char *shown, struct ga_err *e)
{
    int st = run_helper(argv, e);

    if (st == 0)
        return true;
    if (st == -1 && !e->desc)
        ga_error(e, "the helper program '%s' was not found", shown);
    else if (!e->desc)
        ga_error(e, "the helper program '%s' returned an unexpected exit status code (%d)",
                 shown, st);
    return false;
}

/* systemctl status answers 1 to 3 for a unit that exists but does not
 * run, 4 when there is no such unit. */
static bool systemd_supports(enum suspend_mode m, struct ga_err *e)
{
    char *argv[] = { "systemctl", "status", (char *)unit_name[m], NULL };
    int st = run_helper(argv, e);

    return st > 0 && st < 4;
}

static bool systemd_suspend(enum suspend_mode m, struct ga_err *e)
{
    char *argv[] = { "systemctl", (char *)systemctl_verb[m], NULL }, shown[64];

    snprintf(shown, sizeof(shown), "systemctl %s", systemctl_verb[m]);
    return run_suspend_helper(argv, shown, e);
}

static bool pmutils_supports(enum suspend_mode m, struct ga_err *e)
{
    char *argv[] = { "pm-is-supported", (char *)pm_flag[m], NULL };
    int st = run_helper(argv, e);

    if (st == 0)
        return true;
    if (st > 0)
        ga_error(e, "the helper program '%s' returned an unexpected exit status code (%d)",
                 "pm-is-supported", st);
    return false;
}

static bool pmutils_suspend(enum suspend_mode m, struct ga_err *e)
{
    char *argv[] = { (char *)pm_tool[m], NULL };

    return run_suspend_helper(argv, pm_tool[m], e);
}

/* Does /sys/power/state offer the mode's word? */
static bool sysfs_supports(enum suspend_mode m, struct ga_err *e)
{
    char buf[64];
    ssize_t n;
    int fd;

    if (!state_word[m]) {
        ga_error(e, "unknown guest suspend mode");
        return false;
    }
    fd = open(SYS_POWER_STATE, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = 0;
    return strstr(buf, state_word[m]) != NULL;
}

/* Write the word from a child, which returns when the guest wakes up. */
static bool sysfs_suspend(enum suspend_mode m, struct ga_err *e)
{
    const char *w = state_word[m];
    pid_t pid;
    int st;

    pid = fork();
    if (pid == 0) {
        int fd;
        child_setup();
        fd = open(SYS_POWER_STATE, O_WRONLY);
        if (fd < 0 || write(fd, w, strlen(w)) < 0)
            _exit(EXIT_FAILURE);
        _exit(EXIT_SUCCESS);
    }
    if (pid < 0) {
        ga_error(e, "failed to create child process: %s", strerror(errno));
        return false;
    }
    st = wait_child(pid, e);
    if (st < 0)
        return false;
    if (WEXITSTATUS(st)) {
        ga_error(e, "child process has failed to suspend");
        return false;
    }
    return true;
}

static void clear_error(struct ga_err *e)
{
    free(e->desc);
    e->desc = NULL;
    e->cls = NULL;
}

/* Each way in turn; the first that suspends ends it.  Only the last
 * way's failure is reported, or "not supported" when none offered the
 * mode. */
static void suspend(enum suspend_mode m, struct ga_err *e)
{
    bool offered = false;

    if (systemd_supports(m, e)) {
        offered = true;
        if (systemd_suspend(m, e))
            return;
    }
    clear_error(e);
    if (pmutils_supports(m, e)) {
        offered = true;
        if (pmutils_suspend(m, e))
            return;
    }
    clear_error(e);
    if (sysfs_supports(m, e)) {
        offered = true;
        if (sysfs_suspend(m, e))
            return;
    }
    if (!offered) {
        clear_error(e);
        ga_error(e, "the requested suspend mode is not supported by the guest");
    }
}

void ga_cmd_suspend_disk(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    (void)args;
    (void)ret;
    suspend(MODE_DISK, e);
}

void ga_cmd_suspend_ram(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    (void)args;
    (void)ret;
    suspend(MODE_RAM, e);
}

void ga_cmd_suspend_hybrid(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    (void)args;
    (void)ret;
    suspend(MODE_HYBRID, e);
}
