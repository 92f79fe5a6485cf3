/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-exec and guest-exec-status.  The child runs with stdin from
 * /dev/null or a pipe fed with input-data, stdout/stderr to /dev/null or
 * captured (up to 16 MiB each, the rest counted as truncated), only fds
 * 0-2 open, and the given environment (or the agent's).  A child is
 * "exited" once it is reaped and its pipes are drained; that status is
 * reported once, then the pid is forgotten, as qemu-ga does.  The agent's
 * loop services the pipes (ga_exec_pollfds/ga_exec_service). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmds.h"

#define MAX_OUTPUT (16u << 20)
#define MAX_CHILDREN 256

struct capture {
    int fd;                 /* -1 when closed or not captured */
    unsigned char *buf;
    size_t len;
    bool truncated, used;
};

struct child {
    pid_t pid;
    bool reaped;
    int status;
    int in_fd;              /* -1 when done */
    unsigned char *in;
    size_t in_len, in_off;
    struct capture out, err;
};

static struct child *children[MAX_CHILDREN];
static size_t nchildren;

/* Read what a pipe has; close it at EOF or error. */
static void drain(struct capture *c)
{
    unsigned char tmp[65536];

    while (c->fd >= 0) {
        ssize_t n = read(c->fd, tmp, sizeof(tmp));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            close(c->fd);
            c->fd = -1;
            return;
        }
        size_t room = MAX_OUTPUT - c->len, take = (size_t)n < room ? (size_t)n : room;
        if (take) {
            unsigned char *nb = realloc(c->buf, c->len + take);
            if (!nb) {
                c->truncated = true;
                continue;
            }
            c->buf = nb;
            memcpy(c->buf + c->len, tmp, take);
            c->len += take;
        }
        if (take < (size_t)n)
            c->truncated = true;
    }
}

/* Feed input-data; close stdin when all is written (or the child left). */
static void feed(struct child *ch)
{
    while (ch->in_fd >= 0 && ch->in_off < ch->in_len) {
        ssize_t n = write(ch->in_fd, ch->in + ch->in_off, ch->in_len - ch->in_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0)
            break;
        ch->in_off += (size_t)n;
    }
    if (ch->in_fd >= 0) {
        close(ch->in_fd);
        ch->in_fd = -1;
    }
}

/* Make progress on one child. */
static void service(struct child *ch)
{
    feed(ch);
    drain(&ch->out);
    drain(&ch->err);
    if (!ch->reaped) {
        pid_t r = waitpid(ch->pid, &ch->status, WNOHANG);
        if (r == ch->pid || (r < 0 && errno == ECHILD))
            ch->reaped = true;
    }
}

/* See cmds.h. */
size_t ga_exec_pollfds(struct pollfd *p, size_t max)
{
    size_t n = 0;

    for (size_t i = 0; i < nchildren; i++) {
        struct child *ch = children[i];
        if (ch->in_fd >= 0 && n < max)
            p[n++] = (struct pollfd){ ch->in_fd, POLLOUT, 0 };
        if (ch->out.fd >= 0 && n < max)
            p[n++] = (struct pollfd){ ch->out.fd, POLLIN, 0 };
        if (ch->err.fd >= 0 && n < max)
            p[n++] = (struct pollfd){ ch->err.fd, POLLIN, 0 };
    }
    return n;
}

/* See cmds.h. */
void ga_exec_service(void)
{
    for (size_t i = 0; i < nchildren; i++)
        service(children[i]);
}

/* A pipe with the agent's end non-blocking and close-on-exec. */
static int make_pipe(int fds[2], int agent_end)
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -1;
    fcntl(fds[agent_end], F_SETFL, O_NONBLOCK);
    return 0;
}

/* NULL-terminated vector: first (may be NULL) then the strings of list. */
static char **strv(const char *first, const vd_json *list)
{
    size_t n = vd_json_count(list), k = 0;
    char **v = calloc(n + 2, sizeof(*v));

    if (!v)
        return NULL;
    if (first)
        v[k++] = (char *)first;
    for (size_t i = 0; i < n; i++)
        v[k++] = (char *)vd_json_str(vd_json_at(list, i));
    return v;
}

/* In the child: set up fds 0-2 and exec; report errno on errpipe. */
static void __attribute__((noreturn)) child_exec(int in, int out, int err, int errpipe,
                                                 char **argv, char **envp)
{
    int null = open("/dev/null", O_RDWR);
    sigset_t mask;
    int e;

    if (dup2(in >= 0 ? in : null, 0) < 0 || dup2(out >= 0 ? out : null, 1) < 0 ||
        dup2(err >= 0 ? err : null, 2) < 0)
        goto fail;
    for (int fd = 3; fd < 1024; fd++)
        if (fd != errpipe)
            close(fd);
    signal(SIGPIPE, SIG_DFL);
    sigemptyset(&mask);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    if (envp)
        execvpe(argv[0], argv, envp);
    else
        execvp(argv[0], argv);
fail:
    e = errno;
    if (write(errpipe, &e, sizeof(e)) < 0)
        _exit(127);
    _exit(127);
}

/* Fork and exec; the pid or -1 with e set.  fds: in[2], out[2], err[2]. */
static pid_t spawn(char **argv, char **envp, int in[2], int out[2], int err[2],
                   struct ga_err *e)
{
    int ep[2], child_errno = 0;
    pid_t pid;
    ssize_t n;

    if (pipe2(ep, O_CLOEXEC) < 0) {
        ga_error(e, "Guest agent command failed, error was '%s'", strerror(errno));
        return -1;
    }
    pid = fork();
    if (pid == 0)
        child_exec(in[0], out[1], err[1], ep[1], argv, envp);
    close(ep[1]);
    if (pid > 0) {
        while ((n = read(ep[0], &child_errno, sizeof(child_errno))) < 0 && errno == EINTR)
            ;
        if (n == sizeof(child_errno)) {
            waitpid(pid, NULL, 0);
            ga_error(e, "Guest agent command failed, error was 'Failed to execute "
                     "child process \xe2\x80\x9c%s\xe2\x80\x9d (%s)'", argv[0],
                     strerror(child_errno));
            pid = -1;
        }
    } else {
        ga_error(e, "Guest agent command failed, error was 'Failed to fork (%s)'",
                 strerror(errno));
    }
    close(ep[0]);
    return pid;
}

static void close_pair(int p[2])
{
    for (int i = 0; i < 2; i++)
        if (p[i] >= 0)
            close(p[i]);
}

/* guest-exec */
void ga_cmd_exec(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const vd_json *input = vd_json_get(args, "input-data");
    const vd_json *env = vd_json_get(args, "env");
    bool capture = vd_json_bool(vd_json_get(args, "capture-output"));
    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
    unsigned char *data = NULL;
    size_t data_len = 0;
    char **argv = NULL, **envp = NULL;
    struct child *ch = NULL;
    pid_t pid = -1;

    if (input && !(data = ga_base64_decode(vd_json_str(input), &data_len, e)))
        return;
    argv = strv(vd_json_str(vd_json_get(args, "path")), vd_json_get(args, "arg"));
    envp = env ? strv(NULL, env) : NULL;
    ch = calloc(1, sizeof(*ch));
    if (!argv || (env && !envp) || !ch || nchildren >= MAX_CHILDREN ||
        (input && make_pipe(in, 1) < 0) ||
        (capture && (make_pipe(out, 0) < 0 || make_pipe(err, 0) < 0))) {
        ga_error(e, "Guest agent command failed, error was '%s'", strerror(errno ? errno : ENOMEM));
        goto out;
    }
    pid = spawn(argv, envp, in, out, err, e);
    if (pid < 0)
        goto out;
    *ch = (struct child){ .pid = pid, .in_fd = in[1], .in = data, .in_len = data_len,
                          .out = { .fd = out[0], .used = capture },
                          .err = { .fd = err[0], .used = capture } };
    in[1] = out[0] = err[0] = -1;
    data = NULL;
    children[nchildren++] = ch;
    ch = NULL;
    *ret = vd_json_new_object();
    vd_json_set_int(*ret, "pid", pid);
out:
    close_pair(in);
    close_pair(out);
    close_pair(err);
    free(data);
    free(argv);
    free(envp);
    free(ch);
}

/* Add out-data/err-data when there was output. */
static void put_capture(vd_json *o, const struct capture *c, const char *data_key)
{
    char *b64;

    if (!c->len)
        return;
    b64 = ga_base64_encode(c->buf, c->len);
    vd_json_set_str(o, data_key, b64 ? b64 : "");
    free(b64);
}

/* Forget child i. */
static void forget(size_t i)
{
    struct child *ch = children[i];

    free(ch->in);
    free(ch->out.buf);
    free(ch->err.buf);
    if (ch->in_fd >= 0)
        close(ch->in_fd);
    if (ch->out.fd >= 0)
        close(ch->out.fd);
    if (ch->err.fd >= 0)
        close(ch->err.fd);
    free(ch);
    children[i] = children[--nchildren];
}

/* guest-exec-status */
void ga_cmd_exec_status(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    int64_t pid = vd_json_int(vd_json_get(args, "pid"));
    struct child *ch = NULL;
    size_t i;
    bool done;

    for (i = 0; i < nchildren; i++)
        if (children[i]->pid == pid) {
            ch = children[i];
            break;
        }
    if (!ch) {
        ga_error(e, "Invalid parameter 'pid'");
        return;
    }
    service(ch);
    done = ch->reaped && ch->out.fd < 0 && ch->err.fd < 0;
    *ret = vd_json_new_object();
    vd_json_set_bool(*ret, "exited", done);
    if (!done)
        return;
    if (WIFEXITED(ch->status))
        vd_json_set_int(*ret, "exitcode", WEXITSTATUS(ch->status));
    else if (WIFSIGNALED(ch->status))
        vd_json_set_int(*ret, "signal", WTERMSIG(ch->status));
    put_capture(*ret, &ch->out, "out-data");
    put_capture(*ret, &ch->err, "err-data");
    if (ch->out.len)
        vd_json_set_bool(*ret, "out-truncated", ch->out.truncated);
    if (ch->err.len)
        vd_json_set_bool(*ret, "err-truncated", ch->err.truncated);
    forget(i);
}
