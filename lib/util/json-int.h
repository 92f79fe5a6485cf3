/* SPDX-License-Identifier: BSD-3-Clause */
/* Internals shared by json.c (tree, printer) and json-parse.c. */
#ifndef VD_UTIL_JSON_INT_H
#define VD_UTIL_JSON_INT_H

#include <stddef.h>

#include "util/buf.h"
#include "util/json.h"

struct vd_json {
    enum vd_json_type type;
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double d;
        char *s;
        struct {
            size_t n, cap;
            char **keys;      /* objects only */
            vd_json **vals;
        } c;
    } u;
};

/* Append to an array (key NULL) or object (key owned) without checking
 * for duplicates; -ENOMEM leaves key and v to the caller. */
int vd_json_push(vd_json *c, char *key, vd_json *v);
/* Append s to b as a quoted, escaped JSON string. */
void vd_json_quote(struct vd_buf *b, const char *s);

#endif
