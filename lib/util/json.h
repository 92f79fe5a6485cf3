/* SPDX-License-Identifier: BSD-3-Clause */
/* A small JSON value tree: parsed from json: names, built for --output=json
 * and printed exactly as QEMU pretty-prints (4-space indent, ordered keys). */
#ifndef VD_UTIL_JSON_H
#define VD_UTIL_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum vd_json_type { VD_JSON_NULL, VD_JSON_BOOL, VD_JSON_INT, VD_JSON_UINT,
                    VD_JSON_DOUBLE, VD_JSON_STRING, VD_JSON_ARRAY, VD_JSON_OBJECT };

struct vd_json;
typedef struct vd_json vd_json;

vd_json *vd_json_new_object(void);
vd_json *vd_json_new_array(void);
vd_json *vd_json_new_string(const char *s);
vd_json *vd_json_new_int(int64_t v);
vd_json *vd_json_new_uint(uint64_t v);
vd_json *vd_json_new_bool(bool v);
vd_json *vd_json_new_double(double v);
vd_json *vd_json_new_null(void);
void vd_json_free(vd_json *j);

enum vd_json_type vd_json_type(const vd_json *j);
/* Object: append (or replace) key; takes ownership of v. */
void vd_json_set(vd_json *obj, const char *key, vd_json *v);
/* Shorthands. */
void vd_json_set_str(vd_json *obj, const char *key, const char *s);
void vd_json_set_int(vd_json *obj, const char *key, int64_t v);
void vd_json_set_uint(vd_json *obj, const char *key, uint64_t v);
void vd_json_set_bool(vd_json *obj, const char *key, bool v);
/* Array: append; takes ownership. */
void vd_json_append(vd_json *arr, vd_json *v);

/* Accessors (NULL / 0 when absent or wrong type). */
vd_json *vd_json_get(const vd_json *obj, const char *key);
size_t vd_json_count(const vd_json *j);           /* array or object */
vd_json *vd_json_at(const vd_json *j, size_t i);   /* array or object value */
const char *vd_json_key_at(const vd_json *obj, size_t i);
const char *vd_json_str(const vd_json *j);
int64_t vd_json_int(const vd_json *j);
uint64_t vd_json_uint(const vd_json *j);          /* INT >= 0 too */
double vd_json_double(const vd_json *j);          /* INT/UINT converted */
bool vd_json_bool(const vd_json *j);

/* Parse text; NULL and an error message (vd_errmsg) on bad input.  Depth
 * and size are bounded. */
vd_json *vd_json_parse(const char *text, size_t len);
/* The same with other bounds on nesting and text size (QMP streams allow
 * 1024 levels and 64 MiB messages). */
vd_json *vd_json_parse_bounded(const char *text, size_t len, int max_depth, size_t max_len);
/* Print as QEMU's pretty printer does; no trailing newline. */
void vd_json_print(const vd_json *j, FILE *f);
/* Compact one-line form used in "json:{...}" file names; caller frees. */
char *vd_json_to_compact(const vd_json *j);
/* Pretty (as vd_json_print) or compact text in a new string; caller frees. */
char *vd_json_to_string(const vd_json *j, bool pretty);

#endif
