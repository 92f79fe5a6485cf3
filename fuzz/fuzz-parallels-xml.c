/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the DiskDescriptor.xml parser of parallels disks
 * (lib/format/parallels-xml.c): the input is the descriptor text; it is
 * parsed (libxml2, then the storages and snapshots checked) and freed.
 * No image is opened.  Nothing is printed. */
#include <stdint.h>
#include <stdlib.h>

#include "format/parallels-xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct prl_xml x;

    prl_xml_parse((const char *)data, size, &x);
    for (uint32_t i = 0; i < x.n; i++)
        free(x.st[i].file);
    return 0;
}
