/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-pool's command table and virsh-style option parsing: options by
 * name (--opt value, --opt=value) or, for the positional ones, by place. */
#ifndef VD_POOL_CLI_H
#define VD_POOL_CLI_H

#include "pool.h"

enum opt_type { OPT_BOOL, OPT_STRING };

/* One option of a command; pos: may be given by place. */
struct cmd_opt {
    const char *name;
    enum opt_type type;
    bool required, pos;
    const char *help;
};

#define CMD_MAX_OPTS 32

struct cmd_ctx;

/* One command: its options (name NULL ends them) and handler (exit code). */
struct cmd_def {
    const char *name;
    const char *help;
    struct cmd_opt opts[CMD_MAX_OPTS];
    int (*fn)(struct cmd_ctx *c);
};

/* A parsed command line. */
struct cmd_ctx {
    const struct cmd_def *def;
    const char *val[CMD_MAX_OPTS];
    bool set[CMD_MAX_OPTS];
    struct pool_conn conn;
    const char *uri;
};

/* The value of option name (NULL if not given). */
const char *opt_str(const struct cmd_ctx *c, const char *name);
bool opt_bool(const struct cmd_ctx *c, const char *name);
/* A scaled size option ("10M", "1GiB"); -1 (printed) when malformed. */
int opt_size(const struct cmd_ctx *c, const char *name, uint64_t *out, bool *given);
/* Open the connection and take the lock; -1 (printed). */
int ctx_connect(struct cmd_ctx *c, bool exclusive);

/* A virsh table: column headers, rows of cells; printed aligned. */
struct table {
    size_t ncols, nrows;
    const char **hdr;
    char **cells;                  /* nrows * ncols, malloc'd */
};
void table_init(struct table *t, const char **hdr, size_t ncols);
/* Add a row (ncols strings, copied). */
void table_add(struct table *t, const char **row);
void table_print(struct table *t);
/* virsh's "%.2lf %s" of a byte count (B, KiB, ... EiB), malloc'd. */
char *pretty_size(uint64_t v);

/* Is uri a vdisk+ssh:// one? */
bool remote_uri(const char *uri);
/* Run the parsed command on the remote host of c->uri; the exit code. */
int remote_run(const struct cmd_ctx *c);

/* The command tables (cmd-pool.c, cmd-vol.c), ended by a NULL name. */
extern const struct cmd_def pool_cmds[];
extern const struct cmd_def vol_cmds[];
extern const struct cmd_def secret_cmds[];

#endif
