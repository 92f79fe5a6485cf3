/* SPDX-License-Identifier: BSD-3-Clause */
/* The running agent: log, state directory, optional daemon and pid file,
 * the channel (unix-listen or vsock-listen sockets serving one client at a
 * time, a virtio-serial port or a serial line), and the loop that feeds
 * input to the message splitter and writes the answers. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "agent.h"
#include "cmds.h"
#include "stream.h"
#include "vdisk/vdisk.h"

#define READ_CHUNK 4096

static volatile sig_atomic_t quit;
static sigset_t wait_mask;   /* the mask while waiting: SIGTERM/SIGINT open */

struct channel {
    bool listening;     /* a socket that accepts clients */
    bool virtio;
    int listen_fd;      /* -1 unless listening */
    int fd;             /* the client or device, -1 when none */
};

/* SIGTERM/SIGINT end the agent, except while it holds file systems
 * frozen: as qemu-ga, it then stays (an exit could not complete if its
 * files are on a frozen file system, and killing it is likely a mistake). */
static void on_signal(int sig)
{
    if (!ga_state_frozen())
        quit = sig;
}

/* Write all of buf; false on error. */
static bool write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            struct pollfd p = { fd, POLLOUT, 0 };
            if (errno == EAGAIN && poll(&p, 1, 1000) < 0 && errno != EINTR)
                return false;
            continue;
        }
        if (n <= 0)
            return false;
        buf += n;
        len -= (size_t)n;
    }
    return true;
}

/* The message splitter's callback: run the request and answer it. */
static void on_message(void *opaque, vd_json *obj, const char *err)
{
    struct channel *ch = opaque;
    bool sync;
    char *rsp, *line;
    size_t n, len;

    ga_debug("process_event: called");
    if (!err)
        ga_debug("processing command");
    rsp = ga_dispatch(obj, err, &sync);
    if (!rsp)
        return;
    n = strlen(rsp);
    line = malloc(n + 3);
    if (!line) {
        free(rsp);
        return;
    }
    len = 0;
    if (sync)
        line[len++] = '\xff';
    memcpy(line + len, rsp, n);
    len += n;
    line[len++] = '\n';
    ga_debug("sending data, count: %zu", len);
    if (ch->fd >= 0 && !write_all(ch->fd, line, len))
        ga_log("warning", "error sending response");
    free(line);
    free(rsp);
}

/* A listening unix socket at path (an old socket file is replaced). */
static int listen_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        ga_log("critical", "UNIX socket path '%s' is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ga_log("critical", "Failed to create Unix socket: %s", strerror(errno));
        return -1;
    }
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        ga_log("critical", "Failed to bind socket to %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 1) < 0) {
        ga_log("critical", "Failed to listen on socket: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* A listening vsock socket for "<cid>:<port>". */
static int listen_vsock(const char *addr)
{
    struct sockaddr_vm sa = { .svm_family = AF_VSOCK };
    unsigned long cid, port;
    char *end;
    int fd;

    errno = 0;
    cid = strtoul(addr, &end, 10);
    if (errno || end == addr || *end != ':' || cid > UINT32_MAX)
        goto bad;
    port = strtoul(end + 1, &end, 10);
    if (errno || *end || port > UINT32_MAX)
        goto bad;
    sa.svm_cid = (unsigned)cid;
    sa.svm_port = (unsigned)port;
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
        ga_log("critical", "failed to listen on vsock '%s': %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
bad:
    ga_log("critical", "error parsing address '%s'", addr);
    return -1;
}

/* A serial device: opened non-blocking, raw. */
static int open_device(const char *path, bool serial)
{
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | (serial ? O_NOCTTY : 0));
    struct termios tio;

    if (fd < 0) {
        ga_log("critical", "error opening channel '%s': %s", path, strerror(errno));
        return -1;
    }
    if (serial && tcgetattr(fd, &tio) == 0) {
        cfmakeraw(&tio);
        cfsetispeed(&tio, B9600);
        cfsetospeed(&tio, B9600);
        tcsetattr(fd, TCSANOW, &tio);
    }
    return fd;
}

/* Open the channel of the configured method. */
static int channel_open(struct channel *ch, const struct ga_config *c)
{
    *ch = (struct channel){ .listen_fd = -1, .fd = -1 };
    if (strcmp(c->method, "unix-listen") == 0) {
        ch->listening = true;
        ch->listen_fd = listen_unix(c->path);
    } else if (strcmp(c->method, "vsock-listen") == 0) {
        ch->listening = true;
        ch->listen_fd = listen_vsock(c->path);
    } else if (strcmp(c->method, "virtio-serial") == 0) {
        ch->virtio = true;
        ch->fd = open_device(c->path, false);
    } else if (strcmp(c->method, "isa-serial") == 0) {
        ch->fd = open_device(c->path, true);
    } else {
        ga_log("critical", "unsupported channel method/type: %s", c->method);
        return -1;
    }
    if (ch->listen_fd < 0 && ch->fd < 0) {
        ga_log("critical", "failed to create guest agent channel");
        return -1;
    }
    return 0;
}

/* Read what is there; false when the peer went away. */
static bool read_input(struct channel *ch, struct ga_stream *st)
{
    char buf[READ_CHUNK + 1];
    ssize_t n = read(ch->fd, buf, READ_CHUNK);

    if (n < 0)
        return errno == EINTR || errno == EAGAIN;
    if (n == 0) {
        ga_debug("received EOF");
        return false;
    }
    buf[n] = 0;
    ga_debug("read data, count: %zd, data: %s", n, buf);
    ga_stream_feed(st, buf, (size_t)n);
    return true;
}

/* One round of the loop: wait (for the channel and guest-exec children's
 * pipes), then accept or read. */
static void loop_once(struct channel *ch, struct ga_stream *st)
{
    struct pollfd fds[64], p;
    size_t n;
    int r;

    fds[0].fd = ch->fd >= 0 ? ch->fd : ch->listen_fd;
    fds[0].events = POLLIN;
    n = 1 + ga_exec_pollfds(fds + 1, 63);
    r = ppoll(fds, n, ch->fd < 0 || !ch->virtio ? NULL : &(struct timespec){ 1, 0 },
              &wait_mask);
    if (n > 1)
        ga_exec_service();
    p = fds[0];
    if (r <= 0 || !p.revents)
        return;
    if (ch->fd < 0) {
        ch->fd = accept4(ch->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        return;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        if (!read_input(ch, st)) {
            if (ch->listening) {
                close(ch->fd);
                ch->fd = -1;
            } else if (ch->virtio) {
                poll(NULL, 0, 100);    /* host side closed: wait for it */
            } else {
                quit = 1;      /* the serial device is gone */
            }
        }
    }
}

/* Signals that end the agent; others it ignores.  SIGTERM and SIGINT are
 * blocked except inside ppoll(), so one arriving between the loop's check
 * and the wait is not lost. */
static void setup_signals(void)
{
    struct sigaction sa = { .sa_handler = on_signal };
    sigset_t block;

    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
}

/* -d: fork away, new session, pid file (written only here). */
static int daemonize(const char *pidfile, bool logging_to_file)
{
    pid_t pid = fork();
    char buf[32];
    int fd;

    if (pid < 0)
        return -1;
    if (pid > 0)
        _exit(EXIT_SUCCESS);
    setsid();
    fd = open(pidfile, O_CREAT | O_WRONLY | O_CLOEXEC, S_IRUSR | S_IWUSR);
    if (fd < 0 || lockf(fd, F_TLOCK, 0) < 0) {
        ga_log("critical", "Cannot lock pid file, %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (ftruncate(fd, 0) < 0)
        return -1;
    snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (!write_all(fd, buf, strlen(buf)))
        return -1;
    fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (!logging_to_file)
            dup2(fd, 2);
    }
    return 0;
}

/* Disable the blocked commands (and guest-get-devices, as on Linux). */
static void block_commands(const struct ga_config *c)
{
    ga_block_command("guest-get-devices");
    for (size_t i = 0; i < c->blocked.n; i++)
        ga_block_command(c->blocked.v[i]);
    for (size_t i = 0; i < ga_ncommands; i++)
        if (!ga_command_enabled(i))
            ga_debug("disabling command: %s", ga_commands[i].name);
}

/* See agent.h. */
int ga_agent_run(const struct ga_config *c)
{
    struct channel ch;
    struct ga_stream st = { .emit = on_message, .opaque = &ch };
    FILE *lf = NULL;

    if (c->logfile && !(lf = fopen(c->logfile, "a"))) {
        ga_log("critical", "unable to open specified log file: %s", strerror(errno));
        ga_log("critical", "error initializing guest agent");
        return EXIT_SUCCESS;
    }
    ga_log_open(lf, c->verbose);
    if (c->daemonize && daemonize(c->pidfile, lf != NULL) < 0)
        return EXIT_FAILURE;
    if (ga_state_init(c->statedir, c->hook) < 0) {
        ga_log("critical", "unable to create state file at path %s/qga.state", c->statedir);
        ga_log("critical", "failed to load persistent state");
        ga_log("critical", "error initializing guest agent");
        return EXIT_SUCCESS;
    }
    if (ga_state_frozen())
        ga_set_frozen_mode(true);
    ga_debug("Guest agent version %s started", VD_VERSION_STRING);
    block_commands(c);
    setup_signals();
    if (channel_open(&ch, c) < 0) {
        ga_log("critical", "failed to initialize guest agent channel");
        return EXIT_FAILURE;
    }
    while (!quit)
        loop_once(&ch, &st);
    if (quit > 1)
        ga_debug("received signal num %d, quitting", (int)quit);
    ga_fsfreeze_cleanup();
    ga_files_close_all();
    ga_stream_free(&st);
    if (ch.fd >= 0)
        close(ch.fd);
    if (ch.listen_fd >= 0)
        close(ch.listen_fd);
    if (c->daemonize)
        unlink(c->pidfile);
    if (lf)
        fclose(lf);
    return EXIT_SUCCESS;
}
