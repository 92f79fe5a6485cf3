/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for vd_parse_size and vd_size_to_str: any string must
 * parse or be refused cleanly; any value must print into a small buffer. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/size.h"

/* One input: parse with each default unit, print what came out. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char units[] = { 'B', 'k', 'M', 0, 'x' };
    char *s = malloc(size + 1), buf[32];
    uint64_t v = 0;
    bool hex;

    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    for (size_t i = 0; i < sizeof(units); i++)
        if (vd_parse_size_ex(s, units[i], &v, &hex) == 0)
            vd_size_to_str(v, buf, sizeof(buf));
    if (size >= 8) {
        memcpy(&v, data, 8);
        vd_size_to_str(v, buf, (size_t)data[0] % sizeof(buf));
    }
    free(s);
    return 0;
}
