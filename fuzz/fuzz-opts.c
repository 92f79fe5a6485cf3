/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for option strings: vd_opts_parse (with and without an
 * implied key), vd_opts_parse_json, the typed getters, validation, and the
 * to_string/parse round trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/opts.h"

static const struct vd_opt_desc table[] = {
    { "size", VD_OPT_SIZE, "size", NULL },
    { "flag", VD_OPT_BOOL, "flag", "off" },
    { "n", VD_OPT_NUMBER, "n", NULL },
    { "s", VD_OPT_STRING, "s", NULL },
    { NULL, VD_OPT_STRING, NULL, NULL },
};

/* True when no key holds ',' or '=' (those cannot be rendered back). */
static bool keys_renderable(const vd_opts *o)
{
    for (size_t i = 0; i < vd_opts_count(o); i++)
        if (strpbrk(vd_opts_key(o, i), ",="))
            return false;
    return true;
}

/* Exercise every reader of a filled dictionary. */
static void use(vd_opts *o)
{
    vd_opts *child, *again;
    uint64_t n;
    bool b;
    char *s;

    vd_opts_get_size(o, "size", 0, &n);
    vd_opts_get_bool(o, "flag", false, &b);
    vd_opts_get_u64(o, "n", 0, &n);
    vd_opts_validate(o, table, "fuzz");
    child = vd_opts_extract_prefix(o, "file");
    vd_opts_free(child);
    s = vd_opts_to_string(o);
    again = vd_opts_new();
    if (s && again && keys_renderable(o) && vd_opts_parse(again, s, NULL) == 0 && vd_opts_count(again) > vd_opts_count(o))
        abort();            /* rendering must not invent entries */
    vd_opts_free(again);
    free(s);
}

/* One input: as an option string, with an implied key, and as json:. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *str = malloc(size + 1);
    vd_opts *o;

    if (!str)
        return 0;
    memcpy(str, data, size);
    str[size] = '\0';
    vd_opts_is_help(str);
    vd_opts_list_valid(str);
    o = vd_opts_new();
    if (o && vd_opts_parse(o, str, NULL) == 0)
        use(o);
    vd_opts_free(o);
    o = vd_opts_new();
    if (o && vd_opts_parse(o, str, "file") == 0)
        use(o);
    vd_opts_free(o);
    o = vd_opts_new();
    if (o && vd_opts_parse_json(o, str) == 0)
        use(o);
    vd_opts_free(o);
    free(str);
    return 0;
}
