/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-nbd's listener: the Unix or TCP sockets, --fork and --pid-file,
 * one thread per client (at most -e at a time; more wait in the backlog,
 * as with qemu-nbd), and a clean exit on SIGTERM/SIGINT/SIGHUP or, without
 * -t, when the last client leaves. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "nbd.h"

#define MAX_LISTEN 16

static int sig_pipe[2] = { -1, -1 };      /* signals and client exits */

struct listener {
    int fds[MAX_LISTEN];
    int nfds;
    struct vd_nbd_server *srv;
    pthread_mutex_t lock;
    pthread_cond_t done;
    int clients;                          /* being served */
    bool served;                          /* one got past its handshake */
    bool verbose;
    bool bound_unix;                      /* unlink the socket at exit */
};

/* Wake the main loop (async-signal-safe). */
static void wake(char c)
{
    ssize_t r = write(sig_pipe[1], &c, 1);
    (void)r;
}

/* SIGTERM, SIGINT, SIGHUP: shut down. */
static void on_signal(int sig)
{
    (void)sig;
    wake('s');
}

/* Install the handlers and the wake-up pipe. */
static int setup_signals(void)
{
    struct sigaction sa;

    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return nbd_err("pipe: %s", strerror(errno)), -1;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Listen on a Unix socket at path. */
static int listen_unix(struct listener *l, const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path))
        return nbd_err("UNIX socket path '%s' is too long", path), -1;
    strcpy(sun.sun_path, path);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return nbd_err("Failed to create socket: %s", strerror(errno)), -1;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 128) < 0) {
        nbd_err("Failed to bind socket to %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    l->fds[l->nfds++] = fd;
    l->bound_unix = true;
    return 0;
}

/* Bind one address; -errno. */
static int bind_one(struct listener *l, const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    int one = 1, e;

    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
        e = errno;
        close(fd);
        return -e;
    }
    l->fds[l->nfds++] = fd;
    return 0;
}

/* Listen on every address of host:port. */
static int listen_tcp(struct listener *l, const char *host, const char *port)
{
    struct addrinfo hints = { .ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res, *ai;
    int r, err = 0;

    if ((r = getaddrinfo(host, port, &hints, &res)) != 0)
        return nbd_err("address resolution failed for %s:%s: %s", host, port,
                       gai_strerror(r)), -1;
    for (ai = res; ai && l->nfds < MAX_LISTEN; ai = ai->ai_next)
        if ((r = bind_one(l, ai)) < 0)
            err = -r;
    freeaddrinfo(res);
    if (l->nfds == 0) {
        if (err == EADDRINUSE)
            nbd_err("Failed to find an available port: %s", strerror(err));
        else
            nbd_err("Failed to bind socket: %s", strerror(err ? err : EINVAL));
        return -1;
    }
    return 0;
}

/* See nbd.h. */
int nbd_write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");

    if (!f)
        return nbd_err("Could not create '%s': %s", path, strerror(errno)), -1;
    fprintf(f, "%d\n", (int)getpid());
    if (fclose(f) != 0)
        return nbd_err("Could not write '%s': %s", path, strerror(errno)), -1;
    return 0;
}

struct client {
    struct listener *l;
    int fd;
};

/* Client thread: serve, then count the client out and wake the loop. */
static void *client_thread(void *opaque)
{
    struct client *cl = opaque;
    struct listener *l = cl->l;
    bool transmitted;
    int r;

    vd_error_clear();
    r = vd_nbd_server_serve_ex(l->srv, cl->fd, &transmitted);
    if (r < 0)
        nbd_err("option negotiation failed: %s", vd_errmsg());
    free(cl);
    pthread_mutex_lock(&l->lock);
    l->served |= transmitted;
    l->clients--;
    pthread_cond_broadcast(&l->done);
    pthread_mutex_unlock(&l->lock);
    wake('c');
    return NULL;
}

/* Accept one client on fd and start its thread. */
static void accept_client(struct listener *l, int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), one = 1;
    struct client *cl;
    pthread_attr_t attr;
    pthread_t t;

    if (fd < 0)
        return;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!(cl = malloc(sizeof(*cl)))) {
        close(fd);
        return;
    }
    cl->l = l;
    cl->fd = fd;
    pthread_mutex_lock(&l->lock);
    l->clients++;
    pthread_mutex_unlock(&l->lock);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, client_thread, cl) != 0) {
        pthread_mutex_lock(&l->lock);
        l->clients--;
        pthread_mutex_unlock(&l->lock);
        close(fd);
        free(cl);
    }
    pthread_attr_destroy(&attr);
}

/* Clients being served now; *served: whether one got past its handshake. */
static int client_count(struct listener *l, bool *served)
{
    int n;

    pthread_mutex_lock(&l->lock);
    n = l->clients;
    *served = l->served;
    pthread_mutex_unlock(&l->lock);
    return n;
}

/* Drain the wake-up pipe; true when a signal asked to stop. */
static bool drain_wakeups(void)
{
    char buf[64];
    bool stop = false;
    ssize_t n;

    while ((n = read(sig_pipe[0], buf, sizeof(buf))) > 0)
        stop |= memchr(buf, 's', (size_t)n) != NULL;
    return stop;
}

/* Poll the listeners (while there is room for a client) and the pipe.
 * Without -t, end when the last client leaves after one that got past its
 * handshake (a client that fails or aborts negotiation does not count, as
 * with qemu-nbd). */
static void main_loop(struct listener *l, const struct nbd_cli *cli)
{
    for (;;) {
        struct pollfd pfd[MAX_LISTEN + 1];
        bool served;
        int n = 0, clients = client_count(l, &served);
        bool room = cli->shared == 0 || clients < cli->shared;

        if (!cli->persistent && served && clients == 0)
            return;
        pfd[n++] = (struct pollfd){ .fd = sig_pipe[0], .events = POLLIN };
        for (int i = 0; room && i < l->nfds; i++)
            pfd[n++] = (struct pollfd){ .fd = l->fds[i], .events = POLLIN };
        if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR)
            return;
        if ((pfd[0].revents & POLLIN) && drain_wakeups())
            return;
        for (int i = 1; i < n; i++) {
            if (pfd[i].revents & POLLIN) {
                accept_client(l, pfd[i].fd);
                break;                     /* re-check room first */
            }
        }
    }
}

/* Stop every client and wait for their threads. */
static void stop_clients(struct listener *l)
{
    vd_nbd_server_shutdown(l->srv);
    pthread_mutex_lock(&l->lock);
    while (l->clients)
        pthread_cond_wait(&l->done, &l->lock);
    pthread_mutex_unlock(&l->lock);
}

/* Open the sockets the command line asks for. */
static int open_listeners(struct listener *l, const struct nbd_cli *cli)
{
    if (cli->sockpath)
        return listen_unix(l, cli->sockpath);
    return listen_tcp(l, cli->bind ? cli->bind : "0.0.0.0",
                      cli->port ? cli->port : "10809");
}

/* See nbd.h. */
int nbd_serve(const struct nbd_cli *cli, struct vd_nbd_server *srv, vd_node *node)
{
    struct listener l = { .srv = srv, .verbose = cli->verbose };
    int r = EXIT_FAILURE;

    pthread_mutex_init(&l.lock, NULL);
    pthread_cond_init(&l.done, NULL);
    if (setup_signals() < 0 || open_listeners(&l, cli) < 0)
        goto out;
    if (cli->pid_file && nbd_write_pid_file(cli->pid_file) < 0)
        goto out;
    if (cli->fork)
        nbd_release_parent();            /* main.c detached before the open */
    main_loop(&l, cli);
    for (int i = 0; i < l.nfds; i++)
        close(l.fds[i]);
    l.nfds = 0;
    stop_clients(&l);
    r = EXIT_SUCCESS;
out:
    for (int i = 0; i < l.nfds; i++)
        close(l.fds[i]);
    if (l.bound_unix)
        unlink(cli->sockpath);
    if (cli->pid_file && r == EXIT_SUCCESS)
        unlink(cli->pid_file);
    pthread_cond_destroy(&l.done);
    pthread_mutex_destroy(&l.lock);
    return r;
}
