/* SPDX-License-Identifier: BSD-3-Clause */
/* Commands, their argument schemas, and QMP dispatch (see dispatch.c). */
#ifndef VD_GA_DISPATCH_H
#define VD_GA_DISPATCH_H

#include <stdbool.h>

#include "util/json.h"

enum ga_type {
    GA_T_INT,        /* 'int': int64 */
    GA_T_UINT64,     /* 'uint64' */
    GA_T_STR,
    GA_T_BOOL,
    GA_T_STRLIST,    /* ['str'] */
    GA_T_WHENCE,     /* GuestFileWhence: an integer or set/cur/end */
    GA_T_VCPULIST,   /* [GuestLogicalProcessor] */
    GA_T_MEMBLKLIST, /* [GuestMemoryBlock] */
};

struct ga_arg {
    const char *name;
    enum ga_type type;
    bool optional;
};

/* A command failure: class (NULL: GenericError) and message. */
struct ga_err {
    const char *cls;
    char *desc;
};

void ga_error(struct ga_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ga_error_class(struct ga_err *e, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A handler returns its result in *ret (NULL for "{}") or fails with e. */
typedef void ga_handler(const vd_json *args, vd_json **ret, struct ga_err *e);

struct ga_command {
    const char *name;
    ga_handler *fn;
    const struct ga_arg *args;   /* NULL-name terminated, or NULL */
    bool no_success_response;
};

/* The command table in qemu-ga's registration order. */
extern const struct ga_command ga_commands[];
extern const size_t ga_ncommands;

/* Block a command by name (unknown names are ignored). */
void ga_block_command(const char *name);
/* Disable every command not allowed while file systems are frozen, or
 * re-enable them. */
void ga_set_frozen_mode(bool frozen);
bool ga_command_enabled(size_t i);

/* Run only the handlers allow() accepts (the others answer as if they had
 * succeeded with no result); for the fuzz harness, which must not open
 * files or freeze file systems.  NULL: run everything. */
void ga_set_handler_filter(bool (*allow)(const char *name));

/* One request (or a parse error) in, the response text out (a JSON line,
 * without the 0xFF of guest-sync-delimited), NULL when no response.  *sync
 * is set when the request was guest-sync-delimited. */
char *ga_dispatch(vd_json *req, const char *parse_err, bool *sync);

/* Render a value as qemu-ga writes it (object members in QEMU's QDict
 * order). */
char *ga_to_json(const vd_json *j);

#endif
