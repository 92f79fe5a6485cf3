/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-pool: entry point.  Global options (-c URI, -h, -v), then one
 * command parsed as virsh parses it; like virsh run with one command, a
 * blank line follows the command's output and errors go to stderr as
 * "error: ..." lines. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/vdisk.h"
#include "cli.h"

/* The command called name in either table. */
static const struct cmd_def *find_cmd(const char *name)
{
    for (const struct cmd_def *d = pool_cmds; d->name; d++)
        if (!strcmp(d->name, name))
            return d;
    for (const struct cmd_def *d = vol_cmds; d->name; d++)
        if (!strcmp(d->name, name))
            return d;
    for (const struct cmd_def *d = secret_cmds; d->name; d++)
        if (!strcmp(d->name, name))
            return d;
    return NULL;
}

/* Index of option name in def, -1 if none. */
static int opt_index(const struct cmd_def *def, const char *name, size_t len)
{
    for (int i = 0; i < CMD_MAX_OPTS && def->opts[i].name; i++)
        if (strlen(def->opts[i].name) == len && !strncmp(def->opts[i].name, name, len))
            return i;
    return -1;
}

/* Next option a bare argument fills, -1 if none: as in virsh, every
 * option taking a value may be given by place, in the declared order. */
static int next_pos(const struct cmd_ctx *c)
{
    for (int i = 0; i < CMD_MAX_OPTS && c->def->opts[i].name; i++)
        if (c->def->opts[i].type == OPT_STRING && !c->set[i])
            return i;
    return -1;
}

/* One "--name[=value]" argument; *i moves past a separate value. */
static int parse_named(struct cmd_ctx *c, int argc, char **argv, int *i)
{
    const char *a = argv[*i] + 2, *eq = strchr(a, '=');
    int k = opt_index(c->def, a, eq ? (size_t)(eq - a) : strlen(a));

    if (k < 0) {
        pool_err("command '%s' doesn't support option --%.*s", c->def->name,
                 (int)(eq ? eq - a : (long)strlen(a)), a);
        return -1;
    }
    if (c->def->opts[k].type == OPT_BOOL) {
        if (eq) {
            pool_err("invalid '=' after option --%s", c->def->opts[k].name);
            return -1;
        }
        c->set[k] = true;
        return 0;
    }
    if (!eq && *i + 1 >= argc) {
        pool_err("expected syntax: --%s <string>", c->def->opts[k].name);
        return -1;
    }
    if (c->set[k]) {
        pool_err("option --%s already seen", c->def->opts[k].name);
        return -1;
    }
    c->val[k] = eq ? eq + 1 : argv[++*i];
    c->set[k] = true;
    return 0;
}

/* Fill c from the command's arguments; -1 (printed). */
static int parse_args(struct cmd_ctx *c, int argc, char **argv)
{
    bool only_data = false;

    for (int i = 0; i < argc; i++) {
        if (!only_data && !strcmp(argv[i], "--")) {
            only_data = true;
        } else if (!only_data && argv[i][0] == '-' && argv[i][1] == '-') {
            if (parse_named(c, argc, argv, &i) < 0)
                return -1;
        } else {
            int k = next_pos(c);
            if (k < 0) {
                pool_err("unexpected data '%s'", argv[i]);
                return -1;
            }
            c->val[k] = argv[i];
            c->set[k] = true;
        }
    }
    for (int i = 0; i < CMD_MAX_OPTS && c->def->opts[i].name; i++) {
        if (c->def->opts[i].required && !c->set[i]) {
            pool_err("command '%s' requires <%s> option", c->def->name,
                     c->def->opts[i].name);
            return -1;
        }
    }
    return 0;
}

/* Synopsis of one command: its options as virsh's help shows them. */
static void print_synopsis(const struct cmd_def *d)
{
    printf("    %-28s %s\n", d->name, d->help);
    printf("        %s", d->name);
    for (int i = 0; i < CMD_MAX_OPTS && d->opts[i].name; i++) {
        const struct cmd_opt *o = &d->opts[i];
        const char *l = o->required ? "" : "[", *r = o->required ? "" : "]";
        if (o->type == OPT_BOOL)
            printf(" [--%s]", o->name);
        else if (o->pos)
            printf(" %s[--%s] <%s>%s", l, o->name, o->name, r);
        else
            printf(" %s--%s <string>%s", l, o->name, r);
    }
    putchar('\n');
}

/* --help: every command and its options. */
static void usage(void)
{
    printf("Usage: %s [-c URI] COMMAND [ARGS]\n\n"
           "  options:\n"
           "    -c | --connect=URI      vdisk:///system, vdisk:///session or\n"
           "                            vdisk+ssh://[user@]host[:port]/system|session\n"
           "    -h | --help             this help\n"
           "    -v | --version          program version\n\n"
           "  Storage Pool (help keyword 'pool'):\n", POOL_PROG);
    for (const struct cmd_def *d = pool_cmds; d->name; d++)
        print_synopsis(d);
    printf("\n  Storage Volume (help keyword 'volume'):\n");
    for (const struct cmd_def *d = vol_cmds; d->name; d++)
        print_synopsis(d);
    printf("\n  Secret (help keyword 'secret'):\n");
    for (const struct cmd_def *d = secret_cmds; d->name; d++)
        print_synopsis(d);
}

int ctx_connect(struct cmd_ctx *c, bool exclusive)
{
    if (c->conn.cfg_dir)
        return 0;
    if (conn_open(&c->conn, c->uri) < 0 || conn_lock(&c->conn, exclusive) < 0) {
        pool_err("failed to connect to the hypervisor");
        pool_report();
        return -1;
    }
    return 0;
}

/* Global options; returns the index of the command, or -1 to exit. */
static int parse_global(int argc, char **argv, const char **uri, int *rc)
{
    int i = 1;

    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-c") || !strcmp(a, "--connect")) {
            if (++i >= argc) {
                pool_err("option '%s' requires an argument", a);
                *rc = 1;
                return -1;
            }
            *uri = argv[i];
        } else if (!strncmp(a, "--connect=", 10)) {
            *uri = a + 10;
        } else if (!strcmp(a, "--stream")) {
            pool_stream = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            *rc = 0;
            return -1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--version")) {
            printf("%s\n", VD_VERSION_STRING);
            *rc = 0;
            return -1;
        } else {
            pool_err("unsupported option '%s'. See --help.", a);
            *rc = 1;
            return -1;
        }
    }
    if (i >= argc) {
        usage();
        *rc = 0;
        return -1;
    }
    return i;
}

int main(int argc, char **argv)
{
    struct cmd_ctx c = {0};
    const char *uri = getenv("VDISK_POOL_DEFAULT_URI");
    int rc = 1, i = parse_global(argc, argv, &uri, &rc);

    if (i < 0)
        return rc;
    c.uri = uri && *uri ? uri : NULL;
    c.conn.lock_fd = -1;
    if (!(c.def = find_cmd(argv[i]))) {
        pool_err("unknown command: '%s'", argv[i]);
        return 1;
    }
    if (parse_args(&c, argc - i - 1, argv + i + 1) < 0)
        return 1;
    if (remote_uri(c.uri))
        return remote_run(&c);
    if (pool_stream && strcmp(c.def->name, "vol-upload") && strcmp(c.def->name, "vol-download"))
        pool_stream_file = opt_str(&c, "file");
    rc = c.def->fn(&c);
    fflush(stdout);
    if (c.conn.cfg_dir)
        conn_close(&c.conn);
    if (!pool_stream)
        putchar('\n');
    return rc;
}
