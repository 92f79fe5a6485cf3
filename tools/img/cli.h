/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img: command-line helpers private to the subcommands of this tool
 * (option errors worded as qemu-img words them, named size arguments, -o
 * accumulation).  Implemented in common.c; img_help lives in main.c. */
#ifndef VD_IMG_CLI_H
#define VD_IMG_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "img.h"
#include "vdisk/driver.h"

/* Exit code of every usage error. */
#define IMG_EXIT_USAGE 1

/* Print the full --help text to stdout and exit 0. */
void img_help(void) __attribute__((noreturn));

/* "vdisk-img: <msg>" plus the "Try 'vdisk-img --help'" line. */
void img_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Report getopt's ':' / '?' result c for argv as qemu-img does. */
void img_getopt_error(int c, char **argv);
/* Parse a named size ("start offset", "image size"...): qemu's cvtnum. */
int img_cvtnum(const char *what, const char *s, uint64_t *out);
/* Append one -o argument to *acc ("a,b" joined with ','); -1 (printed)
 * on qemu-img's "Invalid option list" or out of memory. */
int img_opts_append(char **acc, const char *arg);
/* "--image-opts and --format are mutually exclusive" check; -1 if both. */
int img_check_image_opts_fmt(bool image_opts, const char *fmt);
/* Validate a -t / -T cache mode; prints "Invalid [source ]cache option". */
int img_check_cache(const char *mode, bool source);
/* The protocol driver that would store filename (default "file"); NULL,
 * with the error set, for an unknown protocol prefix. */
const struct vd_driver *img_protocol_for(const char *filename);
/* fmt's create options then proto's (duplicates dropped), NULL-terminated,
 * malloc'd; NULL when out of memory. */
struct vd_opt_desc *img_create_opt_table(const struct vd_driver *fmt,
                                         const struct vd_driver *proto);

#endif
