/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the iscsi driver's names and options: the input is
 * an iscsi:// URL or a json: object of options.  The URL is split into
 * options as the driver does, the portal is then pointed at a closed
 * loopback port (no network beyond it), and the node is opened, so that
 * option checks, CHAP and digest parsing run and the login fails at once.
 * Any outcome but a crash or hang is fine. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "vdisk/opts.h"
#include "vdisk/vdisk.h"

static const struct vd_driver *drv;

/* Load the iscsi module before fuzzing starts, so that libFuzzer sees its
 * coverage counters from the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    drv = vd_driver_find("iscsi");
    if (!drv) {
        fputs("fuzz-iscsi-uri: the iscsi driver is not there (its module not built?)\n", stderr);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text;
    vd_opts *o;
    vd_node *n = NULL;
    int r;

    if (!drv || size > 4096 || !(text = malloc(size + 1)))
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (!(o = vd_opts_new())) {
        free(text);
        return 0;
    }
    if (!strncmp(text, "json:", 5))
        r = vd_opts_parse_json(o, text + 5);
    else
        r = drv->parse_filename(text, o);
    vd_opts_del(o, "driver");
    vd_opts_del(o, "filename");
    if (r == 0 && vd_opts_set(o, "driver", "iscsi") == 0 &&
        vd_opts_set(o, "portal", "127.0.0.1:1") == 0 && vd_opts_set(o, "timeout", "1") == 0) {
        if (vd_open(&n, NULL, NULL, o, VD_O_NO_LOCK) == 0)     /* consumes o */
            vd_close(n);
    } else {
        vd_opts_free(o);
    }
    free(text);
    return 0;
}
