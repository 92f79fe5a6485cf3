/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk+ssh:// connections: the command is run on another host by the ssh
 * program, as libvirt's ssh transport runs it, the remote side being
 * vdisk-pool on a local vdisk:/// URI.  Arguments travel single-quoted for
 * the remote shell, so any byte but NUL arrives unchanged; exit status,
 * stdout and stderr come back as they are.  vol-upload and vol-download
 * move the volume data over the connection (the remote's stdin and
 * stdout, in --stream mode); the local file stays on this side. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

#define SSH_FAILED 255             /* ssh's own exit status on its errors */
#define MAX_ARGS 64

/* A parsed vdisk+ssh:// URI. */
struct ssh_uri {
    char *user, *host, *port, *path;
    char *keyfile, *known_hosts, *command, *binary;
    bool no_verify;
};

bool remote_uri(const char *uri)
{
    return uri && !strncmp(uri, "vdisk+ssh://", 12);
}

static void uri_free(struct ssh_uri *u)
{
    free(u->user);
    free(u->host);
    free(u->port);
    free(u->path);
    free(u->keyfile);
    free(u->known_hosts);
    free(u->command);
    free(u->binary);
}

/* Value of a hex digit, -1 if none. */
static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The first n bytes of s with %XX decoded (malloc'd); NULL on a bad or NUL
 * escape. */
static char *unescape(const char *s, size_t n)
{
    char *o = malloc(n + 1), *w = o;

    if (!o)
        pool_oom();
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *w++ = s[i];
            continue;
        }
        int a = i + 1 < n ? hexval(s[i + 1]) : -1, b = i + 2 < n ? hexval(s[i + 2]) : -1;
        int h = a < 0 || b < 0 ? -1 : a * 16 + b;
        if (h <= 0) {
            free(o);
            return NULL;
        }
        *w++ = (char)h;
        i += 2;
    }
    *w = 0;
    return o;
}

/* One "name=value" query parameter into u; -1 (error recorded). */
static int uri_param(struct ssh_uri *u, const char *p, size_t n)
{
    const char *eq = memchr(p, '=', n);
    size_t kl = eq ? (size_t)(eq - p) : n;
    char *v = eq ? unescape(eq + 1, n - kl - 1) : xstrdup("");
    char **slot = NULL;

    if (!v) {
        pool_set_error("invalid escape in URI parameter '%.*s'", (int)n, p);
        return -1;
    }
    if (kl == 7 && !strncmp(p, "keyfile", 7))
        slot = &u->keyfile;
    else if (kl == 11 && !strncmp(p, "known_hosts", 11))
        slot = &u->known_hosts;
    else if (kl == 7 && !strncmp(p, "command", 7))
        slot = &u->command;
    else if (kl == 6 && !strncmp(p, "binary", 6))
        slot = &u->binary;
    else if (kl == 9 && !strncmp(p, "no_verify", 9))
        u->no_verify = strcmp(v, "0") != 0;
    else if (!(kl == 6 && !strncmp(p, "no_tty", 6)) && !(kl == 6 && !strncmp(p, "socket", 6))) {
        pool_set_error("unsupported URI parameter '%.*s'", (int)kl, p);
        free(v);
        return -1;
    }
    if (slot) {
        free(*slot);
        *slot = v;
    } else {
        free(v);
    }
    return 0;
}

/* Is s usable as one ssh argument that ssh must not take for an option? */
static bool safe_word(const char *s)
{
    return s && *s && *s != '-' && !strpbrk(s, " \t\n\r");
}

/* The authority "[user@]host[:port]" of the URI into u; -1 (recorded). */
static int uri_authority(struct ssh_uri *u, const char *a, size_t n)
{
    const char *at = memchr(a, '@', n), *h, *colon = NULL, *end = a + n;

    if (at) {
        u->user = unescape(a, (size_t)(at - a));
        h = at + 1;
    } else {
        h = a;
    }
    if (h < end && *h == '[') {                 /* [IPv6 address] */
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb) {
            pool_set_error("malformed host in URI");
            return -1;
        }
        u->host = unescape(h + 1, (size_t)(rb - h - 1));
        colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
        if (rb + 1 < end && !colon) {
            pool_set_error("malformed host in URI");
            return -1;
        }
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        u->host = unescape(h, (size_t)((colon ? colon : end) - h));
    }
    if (colon) {
        char *e;
        u->port = unescape(colon + 1, (size_t)(end - colon - 1));
        if (!u->port || !*u->port || strtoul(u->port, &e, 10) > 65535 || *e ||
            strspn(u->port, "0123456789") != strlen(u->port)) {
            pool_set_error("invalid port in URI");
            return -1;
        }
    }
    if ((at && !safe_word(u->user)) || !safe_word(u->host)) {
        pool_set_error("invalid %s in URI", at && !safe_word(u->user) ? "user name" : "host");
        return -1;
    }
    return 0;
}

/* Parse vdisk+ssh://[user@]host[:port]/system|session[?params]. */
static int uri_parse(struct ssh_uri *u, const char *uri)
{
    const char *a = uri + 12, *slash = strchr(a, '/'), *q;

    memset(u, 0, sizeof(*u));
    if (!slash) {
        pool_set_error("no connection driver available for %s", uri);
        return -1;
    }
    if (slash == a) {
        pool_set_error("no host in URI %s", uri);
        return -1;
    }
    if (uri_authority(u, a, (size_t)(slash - a)) < 0)
        return -1;
    q = strchr(slash, '?');
    u->path = xasprintf("%.*s", (int)(q ? q - slash : (long)strlen(slash)), slash);
    if (strcmp(u->path, "/system") && strcmp(u->path, "/session")) {
        pool_set_error("no connection driver available for %s", uri);
        return -1;
    }
    while (q && *q) {
        const char *p = q + 1, *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        if (n && uri_param(u, p, n) < 0)
            return -1;
        q = amp;
    }
    return 0;
}

/* s single-quoted for a POSIX shell, appended to *out. */
static void shell_quote(char **out, const char *s)
{
    size_t n = strlen(*out), extra = 3;
    char *w;

    for (const char *p = s; *p; p++)
        extra += *p == '\'' ? 4 : 1;
    if (!(*out = realloc(*out, n + extra + 1)))
        pool_oom();
    w = *out + n;
    *w++ = n ? ' ' : '\'';
    if (n)
        *w++ = '\'';
    for (; *s; s++) {
        if (*s == '\'') {
            memcpy(w, "'\\''", 4);
            w += 4;
        } else {
            *w++ = *s;
        }
    }
    *w++ = '\'';
    *w = 0;
}

/* The remote command line: vdisk-pool -c vdisk:///PATH [--stream] CMD and
 * every option given, by name, quoted for the remote shell (malloc'd). */
static char *remote_line(const struct ssh_uri *u, const struct cmd_ctx *c, bool stream)
{
    char *line = xstrdup(""), *conn = xasprintf("vdisk://%s", u->path);

    shell_quote(&line, u->binary ? u->binary : POOL_PROG);
    shell_quote(&line, "-c");
    shell_quote(&line, conn);
    if (stream)
        shell_quote(&line, "--stream");
    shell_quote(&line, c->def->name);
    for (int i = 0; i < CMD_MAX_OPTS && c->def->opts[i].name; i++) {
        const struct cmd_opt *o = &c->def->opts[i];
        char *name;
        if (!c->set[i])
            continue;
        name = xasprintf("--%s", o->name);
        shell_quote(&line, name);
        free(name);
        if (o->type == OPT_STRING)
            shell_quote(&line, c->val[i]);
    }
    free(conn);
    return line;
}

/* The ssh command line (argv, static strings or u's) for u and line. */
static void ssh_argv(const struct ssh_uri *u, char *line, char **argv)
{
    static char kh[4096];
    int n = 0;

    argv[n++] = u->command ? u->command : "ssh";
    if (u->port) {
        argv[n++] = "-p";
        argv[n++] = u->port;
    }
    if (u->user) {
        argv[n++] = "-l";
        argv[n++] = u->user;
    }
    if (u->keyfile) {
        argv[n++] = "-i";
        argv[n++] = u->keyfile;
    }
    if (u->known_hosts) {
        snprintf(kh, sizeof(kh), "UserKnownHostsFile=%s", u->known_hosts);
        argv[n++] = "-o";
        argv[n++] = kh;
    }
    argv[n++] = "-T";
    argv[n++] = "-e";
    argv[n++] = "none";
    argv[n++] = "-o";
    argv[n++] = "BatchMode=yes";
    if (u->no_verify) {
        argv[n++] = "-o";
        argv[n++] = "StrictHostKeyChecking=no";
    }
    argv[n++] = "--";
    argv[n++] = u->host;
    argv[n++] = line;
    argv[n] = NULL;
}

/* Start argv with stdin from in_fd (-1: ours) and stdout to a new pipe
 * (*out_fd) when out_fd is given. */
static pid_t spawn(char **argv, int in_fd, int *out_fd)
{
    int p[2] = { -1, -1 };
    pid_t pid;

    if (out_fd && pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        if (in_fd >= 0)
            dup2(in_fd, 0);
        if (out_fd)
            dup2(p[1], 1);
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], argv);
        fprintf(stderr, "error: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(SSH_FAILED);
    }
    if (out_fd) {
        close(p[1]);
        *out_fd = p[0];
        if (pid < 0)
            close(p[0]);
    }
    return pid;
}

/* The exit status of pid (SSH_FAILED when killed). */
static int reap(pid_t pid)
{
    int st;

    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return SSH_FAILED;
    return WIFEXITED(st) ? WEXITSTATUS(st) : SSH_FAILED;
}

/* vol-download's local end: the data from fd into file, holes where whole
 * blocks are zero when sparse.  The file is made at the first data, or at
 * the end on success, so a failed remote command leaves none.  The exit
 * code of the remote (1 when this side failed). */
static int receive(int fd, const char *file, bool sparse, pid_t pid)
{
    int out = -1, rc;
    uint64_t total = 0;
    char *buf = malloc(STREAM_BLOCK);
    ssize_t n;
    bool bad = false;

    if (!buf)
        pool_oom();
    while (!bad && (n = read_full(fd, buf, STREAM_BLOCK)) > 0) {
        if (out < 0)
            out = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        bad = out < 0 || (!(sparse && is_zero(buf, (size_t)n)) &&
                          pwrite(out, buf, (size_t)n, (off_t)total) != n);
        total += (uint64_t)n;
    }
    free(buf);
    close(fd);
    rc = reap(pid);
    if (!bad && rc == 0 && out < 0)
        bad = (out = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666)) < 0;
    if (!bad && rc == 0)
        bad = n < 0 || ftruncate(out, (off_t)total) < 0;
    if (bad) {
        pool_err(out < 0 ? "cannot create %s" : "cannot write %s", file);
        rc = 1;
    }
    if (out >= 0)
        close(out);
    return rc;
}

/* Run c on the host of c->uri; the exit code.  A local file the command
 * reads (vol-upload's data, the XML of pool-define, vol-create...) is the
 * remote's stdin; vol-download's data is its stdout. */
int remote_run(const struct cmd_ctx *c)
{
    const char *file = opt_str(c, "file");
    bool down = !strcmp(c->def->name, "vol-download"), up = file && !down;
    struct ssh_uri u;
    char *argv[MAX_ARGS], *line = NULL;
    int rc = 1, in = -1, out = -1;
    bool ran = false;
    pid_t pid = -1;

    fflush(stdout);
    if (uri_parse(&u, c->uri) < 0) {
        pool_err("failed to connect to the hypervisor");
        pool_report();
        goto done;
    }
    if (up && (in = open(file, O_RDONLY | O_CLOEXEC)) < 0) {
        if (!strcmp(c->def->name, "vol-upload"))
            pool_err("cannot read %s", file);
        else
            pool_err("Failed to open file '%s': %s", file, strerror(errno));
        goto done;
    }
    line = remote_line(&u, c, up || down);
    ssh_argv(&u, line, argv);
    signal(SIGPIPE, SIG_IGN);
    pid = spawn(argv, in, down ? &out : NULL);
    if (pid < 0) {
        pool_set_error("cannot run %s: %s", argv[0], strerror(errno));
    } else {
        rc = down ? receive(out, file, opt_bool(c, "sparse"), pid) : reap(pid);
        ran = rc != SSH_FAILED;
        if (rc == SSH_FAILED)
            pool_set_error("cannot reach the remote vdisk-pool on %s", u.host);
    }
    if (rc == SSH_FAILED || pid < 0) {
        pool_err("failed to connect to the hypervisor");
        pool_report();
        rc = 1;
    }
done:
    if (in >= 0)
        close(in);
    /* the remote printed its blank line unless in --stream mode or when it
     * did not run */
    if (up || down || !ran)
        putchar('\n');
    free(line);
    uri_free(&u);
    return rc;
}
