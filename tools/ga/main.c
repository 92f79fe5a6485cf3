/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-ga: a guest agent, a drop-in for qemu-ga 7.2.  This file reads the
 * configuration file and the command line (qemu-ga's options, messages and
 * quirks), then runs the agent (agent.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "dispatch.h"
#include "ga.h"
#include "vdisk/vdisk.h"

#define DEFAULT_CONF "/etc/qemu/qemu-ga.conf"
#define DEFAULT_PIDFILE "/var/run/qemu-ga.pid"
#define DEFAULT_STATEDIR "/var/run"
#define DEFAULT_HOOK "/etc/qemu/fsfreeze-hook"
#define VIRTIO_PATH "/dev/virtio-ports/org.qemu.guest_agent.0"
#define ISA_PATH "/dev/ttyS0"

static const char short_opts[] = "hVvdm:p:l:f:F::b:t:Dr";
static const struct option long_opts[] = {
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { "dump-conf", no_argument, NULL, 'D' },
    { "logfile", required_argument, NULL, 'l' },
    { "pidfile", required_argument, NULL, 'f' },
    { "fsfreeze-hook", optional_argument, NULL, 'F' },
    { "verbose", no_argument, NULL, 'v' },
    { "method", required_argument, NULL, 'm' },
    { "path", required_argument, NULL, 'p' },
    { "daemonize", no_argument, NULL, 'd' },
    { "blacklist", required_argument, NULL, 'b' },
    { "block-rpcs", required_argument, NULL, 'b' },
    { "statedir", required_argument, NULL, 't' },
    { "retry-path", no_argument, NULL, 'r' },
    { NULL, 0, NULL, 0 },
};

/* --help, with qemu-ga's layout. */
static void usage(void)
{
    printf(
"Usage: " GA_PROG " [-m <method> -p <path>] [<options>]\n"
GA_PROG " " VD_VERSION_STRING ", a guest agent compatible with qemu-ga 7.2\n"
"\n"
"  -m, --method      transport method: one of unix-listen, virtio-serial,\n"
"                    isa-serial, or vsock-listen (virtio-serial is the default)\n"
"  -p, --path        device/socket path (the default for virtio-serial is:\n"
"                    " VIRTIO_PATH ",\n"
"                    the default for isa-serial is:\n"
"                    " ISA_PATH ").\n"
"                    Socket addresses for vsock-listen are written as\n"
"                    <cid>:<port>.\n"
"  -l, --logfile     set logfile path, logs to stderr by default\n"
"  -f, --pidfile     specify pidfile (default is " DEFAULT_PIDFILE ")\n"
"  -F, --fsfreeze-hook\n"
"                    enable fsfreeze hook. Accepts an optional argument that\n"
"                    specifies script to run on freeze/thaw. Script will be\n"
"                    called with 'freeze'/'thaw' arguments accordingly.\n"
"                    (default is " DEFAULT_HOOK ")\n"
"                    If using -F with an argument, do not follow -F with a\n"
"                    space.\n"
"                    (for example: -F/var/run/fsfreezehook.sh)\n"
"  -t, --statedir    specify dir to store state information (absolute paths\n"
"                    only, default is " DEFAULT_STATEDIR ")\n"
"  -v, --verbose     log extra debugging information\n"
"  -V, --version     print version information and exit\n"
"  -d, --daemonize   become a daemon\n"
"  -b, --block-rpcs  comma-separated list of RPCs to disable (no spaces,\n"
"                    use \"help\" to list available RPCs)\n"
"  -D, --dump-conf   dump a qemu-ga config file based on current config\n"
"                    options / command-line parameters to stdout\n"
"  -r, --retry-path  attempt re-opening path if it's unavailable or closed\n"
"                    due to an error which may be recoverable in the future\n"
"                    (virtio-serial driver re-install, serial device hot\n"
"                    plug/unplug, etc.)\n"
"  -h, --help        display this help and exit\n"
"\n");
}

/* Replace *dst with a copy of s. */
static void set_str(char **dst, const char *s)
{
    free(*dst);
    *dst = strdup(s);
    if (!*dst) {
        fprintf(stderr, "%s: out of memory\n", GA_PROG);
        exit(EXIT_FAILURE);
    }
}

/* -b: "?" or "help" lists the commands and exits. */
static void opt_block(struct ga_config *c, const char *arg)
{
    if (strcmp(arg, "?") == 0 || strcmp(arg, "help") == 0) {
        for (size_t i = 0; i < ga_ncommands; i++)
            printf("%s\n", ga_commands[i].name);
        exit(EXIT_SUCCESS);
    }
    ga_strlist_add_split(&c->blocked, arg);
}

/* One option. */
static void opt(struct ga_config *c, int ch, const char *arg)
{
    switch (ch) {
    case 'm': set_str(&c->method, arg); break;
    case 'p': set_str(&c->path, arg); break;
    case 'l': set_str(&c->logfile, arg); break;
    case 'f': set_str(&c->pidfile, arg); break;
    case 'F': set_str(&c->hook, arg ? arg : DEFAULT_HOOK); break;
    case 't': set_str(&c->statedir, arg); break;
    case 'v': c->verbose = true; break;
    case 'd': c->daemonize = true; break;
    case 'r': c->retry_path = true; break;
    case 'D': c->dumpconf = true; break;
    case 'b': opt_block(c, arg); break;
    case 'V': printf("%s %s\n", GA_PROG, VD_VERSION_STRING); exit(EXIT_SUCCESS);
    case 'h': usage(); exit(EXIT_SUCCESS);
    default:
        printf("Unknown option, try '%s --help' for more information.\n", GA_PROG);
        exit(EXIT_FAILURE);
    }
}

/* Defaults for what neither the file nor the command line set. */
static void defaults(struct ga_config *c)
{
    if (!c->pidfile)
        set_str(&c->pidfile, DEFAULT_PIDFILE);
    if (!c->statedir)
        set_str(&c->statedir, DEFAULT_STATEDIR);
    if (!c->method)
        set_str(&c->method, "virtio-serial");
    if (!c->path) {
        if (strcmp(c->method, "virtio-serial") == 0) {
            set_str(&c->path, VIRTIO_PATH);
        } else if (strcmp(c->method, "isa-serial") == 0) {
            set_str(&c->path, ISA_PATH);
        } else {
            ga_glib_message("CRITICAL", "must specify a path for this channel");
            exit(EXIT_FAILURE);
        }
    }
}

static void config_free(struct ga_config *c)
{
    free(c->method);
    free(c->path);
    free(c->logfile);
    free(c->pidfile);
    free(c->hook);
    free(c->statedir);
    ga_strlist_free(&c->blocked);
}

int main(int argc, char **argv)
{
    struct ga_config c = { 0 };
    const char *conf = getenv("QGA_CONF");
    int ch, rc;

    ga_config_load(&c, conf ? conf : DEFAULT_CONF);
    while ((ch = getopt_long(argc, argv, short_opts, long_opts, NULL)) != -1)
        opt(&c, ch, optarg);
    defaults(&c);
    if (c.dumpconf) {
        char *s = ga_config_dump(&c);
        fputs(s, stdout);
        free(s);
        config_free(&c);
        return EXIT_SUCCESS;
    }
    rc = ga_agent_run(&c);
    config_free(&c);
    return rc;
}
