/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the disk pool's readers of parted's listings
 * (tools/pool/parted.c): any text as a "unit B print free" listing and as
 * a geometry line; what reads must be a bounded table of ranges that are
 * not inverted, and stay so once cut at a cylinder limit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parted.h"

/* Abort unless every row of t is a range start < end. */
static void check(const struct part_table *t)
{
    if (t->n > PARTED_MAX_PARTS)
        abort();
    for (size_t i = 0; i < t->n; i++)
        if (t->p[i].end <= t->p[i].start)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct part_table t;
    char *text = malloc(size + 1);
    uint64_t cyl = 1, limit = UINT64_MAX;

    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    if (parted_parse_geometry(text, &cyl, &limit) == 0 && (cyl == 0 || limit % cyl))
        abort();
    if (parted_parse_listing(text, &t) == 0) {
        check(&t);
        t.limit = limit;
        parted_clamp_free(&t);
        check(&t);
    }
    free(text);
    return 0;
}
