/* SPDX-License-Identifier: BSD-3-Clause */
/* The state directory, shared with qemu-ga's layout: "qga.state" (a key
 * file whose [global] fd_counter is the next file handle, so handles are
 * not reused across restarts) and "qga.state.isfrozen" (present while the
 * agent holds file systems frozen, so a restarted agent knows). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmds.h"

#define HANDLE_FIRST 1000

static char *state_path, *frozen_path, *hook_path;
static int64_t next_handle = HANDLE_FIRST;

/* Write the counter file. */
static int write_state(void)
{
    FILE *f = fopen(state_path, "w");

    if (!f)
        return -1;
    fprintf(f, "[global]\nfd_counter=%" PRId64 "\n", next_handle);
    return fclose(f) == 0 ? 0 : -1;
}

/* Read fd_counter from an existing state file; 0 if none. */
static void read_state(void)
{
    char line[256];
    FILE *f = fopen(state_path, "r");

    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        long long v;
        if (sscanf(line, "fd_counter=%lld", &v) == 1 && v >= 0 && v < INT64_MAX)
            next_handle = v;
    }
    fclose(f);
}

/* See cmds.h. */
int ga_state_init(const char *statedir, const char *hook)
{
    if (asprintf(&state_path, "%s/qga.state", statedir) < 0 ||
        asprintf(&frozen_path, "%s/qga.state.isfrozen", statedir) < 0)
        return -1;
    hook_path = hook ? strdup(hook) : NULL;
    if (access(state_path, F_OK) == 0)
        read_state();
    else if (write_state() < 0)
        return -1;
    return 0;
}

/* See cmds.h. */
int64_t ga_state_next_handle(struct ga_err *e)
{
    int64_t h = next_handle;

    if (h == INT64_MAX) {
        ga_error(e, "failed to add handle to qmp handle table");
        return -1;
    }
    next_handle++;
    if (write_state() < 0) {
        ga_error(e, "failed to commit persistent state to disk");
        return -1;
    }
    return h;
}

/* See cmds.h. */
bool ga_state_frozen(void)
{
    return frozen_path && access(frozen_path, F_OK) == 0;
}

/* See cmds.h. */
void ga_state_set_frozen(bool frozen)
{
    if (frozen) {
        int fd = open(frozen_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0)
            close(fd);
    } else {
        unlink(frozen_path);
    }
    ga_set_frozen_mode(frozen);
}

/* See cmds.h. */
const char *ga_state_hook(void)
{
    return hook_path;
}
