/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the URI parser: arbitrary text must parse or be
 * refused cleanly, and parsed query strings must be searchable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/uri.h"

/* One input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const params[] = { "socket", "", "a", "host_key_check" };
    char *s = malloc(size + 1), *v;
    struct vd_uri u;

    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (vd_uri_parse(s, &u) == 0) {
        if (u.port < -1 || u.port > 65535 || !u.scheme || !u.path)
            abort();
        for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
            v = vd_uri_query_param(&u, params[i]);
            free(v);
        }
        vd_uri_free(&u);
    }
    v = vd_uri_decode(s, size);
    free(v);
    free(s);
    return 0;
}
