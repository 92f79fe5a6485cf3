/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the gluster driver's names and options (built from
 * lib/protocol/gluster-config.c, without libgfapi): the input's first byte
 * picks the form, the rest is a gluster URL, a json: object or a
 * "key=value,..." list.  Whatever parses must give a complete
 * configuration, a connection key and a json: name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/gluster-config.h"
#include "vdisk/vdisk.h"

/* Every server of a parsed configuration is complete. */
static void check(const struct gl_config *c)
{
    /* the JSON form may name an empty volume or path, as QEMU's */
    if (!c->volume || !c->path || (c->from_uri && (!*c->volume || !*c->path)) || !c->nservers ||
        c->nservers > GL_MAX_SERVERS || c->debug > GL_DEBUG_MAX)
        abort();
    for (size_t i = 0; i < c->nservers; i++) {
        const struct gl_server *s = &c->servers[i];
        if (s->type == GL_UNIX ? !s->socket : !s->host || !s->port)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gl_config c = { 0 };
    vd_opts *o;
    char *s, *key, *name;
    int r = 0;

    if (size < 1 || !(o = vd_opts_new()))
        return 0;
    if (!(s = malloc(size))) {
        vd_opts_free(o);
        return 0;
    }
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    switch (data[0] % 3) {
    case 0:
        r = vd_opts_set(o, "filename", s);
        break;
    case 1:
        r = vd_opts_parse_json(o, s);
        break;
    default:
        r = vd_opts_parse(o, s, NULL);
        break;
    }
    if (r >= 0 && gl_parse_config(o, &c) >= 0) {
        check(&c);
        key = gl_conn_key(&c);
        name = c.from_uri ? NULL : gl_json_name(o);
        free(key);
        free(name);
    }
    gl_free_config(&c);
    vd_error_clear();
    vd_opts_free(o);
    free(s);
    return 0;
}
