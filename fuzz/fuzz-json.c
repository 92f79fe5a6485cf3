/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the JSON parser and printers: parse arbitrary bytes
 * (no NUL terminator), and whatever parses must print and re-parse to the
 * same text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"

/* Parse text that we printed; it must parse, and print back to itself
 * from then on (the first round may normalise, e.g. -0.0 prints "-0",
 * which reads back as the integer 0). */
static char *reparse(const char *compact)
{
    vd_json *j = vd_json_parse(compact, strlen(compact));
    char *again;

    if (!j)
        abort();            /* our own output must always parse */
    again = vd_json_to_compact(j);
    vd_json_free(j);
    return again;
}

/* Check the print/parse fixed point. */
static void check_reparse(const char *compact)
{
    char *c2 = reparse(compact), *c3 = c2 ? reparse(c2) : NULL;

    if (c2 && c3 && strcmp(c2, c3) != 0)
        abort();
    free(c2);
    free(c3);
}

/* One input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vd_json *j = vd_json_parse((const char *)data, size);
    char *compact, *pretty;

    if (!j)
        return 0;
    compact = vd_json_to_compact(j);
    pretty = vd_json_to_string(j, true);
    if (compact && !strstr(compact, "inf") && !strstr(compact, "nan"))
        check_reparse(compact);
    free(compact);
    free(pretty);
    vd_json_free(j);
    return 0;
}
