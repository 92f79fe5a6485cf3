/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-ga, a drop-in for qemu-ga 7.2: shared declarations. */
#ifndef VD_GA_H
#define VD_GA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/json.h"

#define GA_PROG "vdisk-ga"

/* -b / block-rpcs entries, in the order qemu-ga keeps them. */
struct ga_strlist {
    char **v;
    size_t n;
};

struct ga_config {
    bool daemonize, verbose, retry_path, dumpconf;
    char *method, *path, *logfile, *pidfile, *hook, *statedir;
    struct ga_strlist blocked;
};

/* conf.c */
void ga_strlist_add(struct ga_strlist *l, const char *s);
/* Append the ','-split items of s in reverse, as qemu-ga does. */
void ga_strlist_add_split(struct ga_strlist *l, const char *s);
void ga_strlist_free(struct ga_strlist *l);
/* Load path (QGA_CONF or the default); exit(1) with qemu-ga's message. */
void ga_config_load(struct ga_config *c, const char *path);
/* The --dump-conf text, in a new string. */
char *ga_config_dump(const struct ga_config *c);
/* GLib's default message layout: "\n** (process:PID): LEVEL **: time: msg". */
void ga_glib_message(const char *level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* log.c: the running agent's log ("secs.usecs: level: msg"). */
void ga_log_open(FILE *f, bool verbose);
void ga_log(const char *level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define ga_debug(...) ga_log("debug", __VA_ARGS__)

#endif
