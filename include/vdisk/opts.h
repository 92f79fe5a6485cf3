/* SPDX-License-Identifier: BSD-3-Clause */
/* Option dictionaries: every way to name an image or pass options becomes one
 * flat, ordered map of dotted keys to string values (QEMU's convention). */
#ifndef VDISK_OPTS_H
#define VDISK_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vd_opts vd_opts;

enum vd_opt_type { VD_OPT_STRING, VD_OPT_BOOL, VD_OPT_NUMBER, VD_OPT_SIZE };

/* One entry of a driver's option table; tables end with a NULL name. */
struct vd_opt_desc {
    const char *name;
    enum vd_opt_type type;
    const char *help;
    const char *def_value;   /* printed by -o help, may be NULL */
};

vd_opts *vd_opts_new(void);
void vd_opts_free(vd_opts *o);
vd_opts *vd_opts_dup(const vd_opts *o);
/* Set (replace) key=value. */
int vd_opts_set(vd_opts *o, const char *key, const char *value);
/* NULL if absent. */
const char *vd_opts_get(const vd_opts *o, const char *key);
bool vd_opts_has(const vd_opts *o, const char *key);
/* Remove key; returns true if it was there. */
bool vd_opts_del(vd_opts *o, const char *key);
size_t vd_opts_count(const vd_opts *o);
const char *vd_opts_key(const vd_opts *o, size_t i);
const char *vd_opts_value(const vd_opts *o, size_t i);

/* Parse "k=v,k2=v2" (",," escapes a comma in values) into o.  A first
 * element without '=' is the value of implied_key (if non-NULL); any other
 * element without '=' is "k=on" (bools), as qemu-img -o lazy_refcounts.
 * A trailing ',' is ignored. Later keys win. */
int vd_opts_parse(vd_opts *o, const char *str, const char *implied_key);
/* True when str is "help" or "?" (or contains "help" as a whole key). */
bool vd_opts_is_help(const char *str);
/* qemu-img's check of a -o argument: false for "", a leading ',' or a
 * trailing single ',' (the tool then says "Invalid option list: %s"). */
bool vd_opts_list_valid(const char *str);
/* Parse a JSON object (text after "json:") into o, nested keys joined
 * with '.', arrays as key.0, key.1, ...; booleans "on"/"off". */
int vd_opts_parse_json(vd_opts *o, const char *json);
/* Move every "prefix.rest" entry into a new dict as "rest". */
vd_opts *vd_opts_extract_prefix(vd_opts *o, const char *prefix);
/* Typed getters: absent -> *out = def, 0; ill-typed -> error message naming
 * key and -EINVAL. */
int vd_opts_get_bool(const vd_opts *o, const char *key, bool def, bool *out);
int vd_opts_get_u64(const vd_opts *o, const char *key, uint64_t def, uint64_t *out);
int vd_opts_get_size(const vd_opts *o, const char *key, uint64_t def, uint64_t *out);
/* Check every key of o (not containing '.') is in table and well typed;
 * "what" names the driver in the message ("Invalid parameter 'x'"). */
int vd_opts_validate(const vd_opts *o, const struct vd_opt_desc *table, const char *what);
/* Render back to "k=v,k2=v2" (commas in values doubled); caller frees. */
char *vd_opts_to_string(const vd_opts *o);

/* Parse a boolean option value as QEMU does: on/off, yes/no, true/false. */
int vd_parse_bool(const char *s, bool *out);

#ifdef __cplusplus
}
#endif
#endif
