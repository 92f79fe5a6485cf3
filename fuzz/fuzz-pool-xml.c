/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for vdisk-pool's XML readers: arbitrary bytes as a pool,
 * as a volume and as a secret definition; whatever parses must print, and
 * the printed XML must parse and print back to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

/* Pool: parse, print, re-parse, print: the two prints must match. */
static void check_pool(const char *data, size_t size)
{
    struct pool_def *d = pool_def_parse(data, size), *d2;
    char *x, *x2;

    if (!d)
        return;
    x = pool_def_format(d, true);
    d2 = pool_def_parse(x, strlen(x));
    if (!d2)
        abort();
    x2 = pool_def_format(d2, true);
    if (strcmp(x, x2))
        abort();
    free(x);
    free(x2);
    pool_def_free(d);
    pool_def_free(d2);
}

/* Volume: parse, and print what parsed. */
static void check_vol(const char *data, size_t size)
{
    struct vol_def *v = vol_def_parse(data, size);
    char *x;

    if (!v)
        return;
    v->type = "file";
    if (!v->key)
        v->key = xstrdup("k");
    if (!v->path)
        v->path = xstrdup("p");
    x = vol_def_format(v);
    free(x);
    vol_def_free(v);
}

/* Secret: parse, print, re-parse, print: the two prints must match. */
static void check_secret(const char *data, size_t size)
{
    struct secret_def *s = secret_def_parse(data, size), *s2;
    char *x, *x2;

    if (!s)
        return;
    x = secret_def_format(s);
    s2 = secret_def_parse(x, strlen(x));
    if (!s2)
        abort();
    x2 = secret_def_format(s2);
    if (strcmp(x, x2))
        abort();
    free(x);
    free(x2);
    secret_def_free(s);
    secret_def_free(s2);
}

/* One input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_pool((const char *)data, size);
    check_vol((const char *)data, size);
    check_secret((const char *)data, size);
    return 0;
}
