/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the rbd driver's name parsing: the input, after
 * "rbd:", is parsed into options (pool, namespace, image, snapshot, conf,
 * user and the JSON list of Ceph settings) as a name on the command line
 * would be.  No cluster is contacted.  Any outcome but a crash is fine. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "vdisk/vdisk.h"

static const struct vd_driver *rbd;

/* Load the rbd module before fuzzing starts, so that libFuzzer sees its
 * coverage counters from the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    rbd = vd_driver_find("rbd");
    if (!rbd || !rbd->parse_filename) {
        fputs("fuzz-rbd-uri: the rbd driver is not there (its module not built?)\n", stderr);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *name;
    vd_opts *o;

    if (!rbd || size > 4096 || !(name = malloc(size + 5)))
        return 0;
    memcpy(name, "rbd:", 4);
    memcpy(name + 4, data, size);
    name[size + 4] = '\0';
    if ((o = vd_opts_new())) {
        if (rbd->parse_filename(name, o) == 0)
            for (size_t i = 0; i < vd_opts_count(o); i++)
                if (!vd_opts_key(o, i) || !vd_opts_value(o, i))
                    abort();
        vd_opts_free(o);
    }
    free(name);
    return 0;
}
