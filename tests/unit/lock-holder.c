/* SPDX-License-Identifier: BSD-3-Clause */
/* Test helper for tests/functional/test_locking.py (not a test itself). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "vdisk/vdisk.h"
#include "core/lock.h"
/* hold [-w] [-m] [-U] [-n] FILE: open FILE as raw, print "ready", wait for
 * stdin to close.  -m: take the permissions of a metadata format. */
int main(int argc, char **argv)
{
    int flags = 0, meta = 0, i = 1;
    vd_node *n;
    char c;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-w")) flags |= VD_O_RDWR;
        else if (!strcmp(argv[i], "-m")) meta = 1;
        else if (!strcmp(argv[i], "-U")) flags |= VD_O_FORCE_SHARE;
        else if (!strcmp(argv[i], "-n")) flags |= VD_O_NO_LOCK;
    }
    if (i >= argc || vd_open(&n, argv[i], "raw", NULL, flags) < 0 ||
        (meta && vd_file_lock_for_metadata(vd_node_file(n)) < 0)) {
        fprintf(stderr, "%s\n", vd_errmsg());
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    while (read(0, &c, 1) > 0)
        ;
    vd_close(n);
    return 0;
}
