/* SPDX-License-Identifier: BSD-3-Clause */
/* Going into the background as qemu-nbd does for --fork and for -c
 * without -v: fork before the image is opened (so no thread of a driver
 * is lost in the child); the parent copies the child's stderr to its own
 * until the child is serving, then exits 1 if any message came (the child
 * failed), else 0. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbd.h"

/* The child's stderr to restore when it lets the parent go (-v); -1:
 * /dev/null. */
static int saved_stderr = -1;

/* Parent: relay the pipe to stderr until it closes, then exit. */
static void __attribute__((noreturn)) relay(int fd)
{
    char buf[1024];
    bool errors = false;
    ssize_t n;

    while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
        if (n <= 0)
            continue;
        errors = true;
        if (write(STDERR_FILENO, buf, (size_t)n) < 0)
            break;
    }
    _exit(errors ? EXIT_FAILURE : EXIT_SUCCESS);
}

/* See nbd.h. */
int nbd_detach(bool keep_stderr)
{
    int p[2], null;
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) < 0 || (pid = fork()) < 0)
        return nbd_err("Failed to fork: %s", strerror(errno)), -1;
    if (pid > 0) {
        close(p[1]);
        relay(p[0]);
    }
    close(p[0]);
    setsid();
    if (keep_stderr)
        saved_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    if ((null = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        close(null);
    }
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    return 0;
}

/* See nbd.h. */
void nbd_release_parent(void)
{
    if (saved_stderr >= 0) {
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
        saved_stderr = -1;
    } else {
        dup2(STDOUT_FILENO, STDERR_FILENO);     /* /dev/null after detach */
    }
}
