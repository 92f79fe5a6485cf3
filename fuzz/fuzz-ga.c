/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the guest agent's input path: the byte stream is
 * cut into messages (lexer, resync on errors, size/nesting limits), each
 * message goes through the QMP envelope checks, command lookup and the
 * argument checks of every command, and the answer is rendered.  Only
 * handlers that touch nothing outside the process run (no file opens, no
 * fsfreeze); the others are validated but not executed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "stream.h"

/* Handlers safe to run on fuzzed arguments. */
static bool safe(const char *name)
{
    static const char *const ok[] = {
        "guest-sync", "guest-sync-delimited", "guest-ping", "guest-info",
        "guest-fsfreeze-status", "guest-file-read", "guest-file-write",
        "guest-file-seek", "guest-file-flush", "guest-file-close", NULL,
    };

    for (size_t i = 0; ok[i]; i++)
        if (strcmp(ok[i], name) == 0)
            return true;
    return false;
}

/* Each message: dispatch it and drop the answer. */
static void on_message(void *opaque, vd_json *obj, const char *err)
{
    bool sync;
    char *rsp = ga_dispatch(obj, err, &sync);

    (void)opaque;
    free(rsp);
}

/* One input: fed in pieces whose sizes come from the first byte, so that
 * tokens are split across reads as on a real channel. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ga_stream st = { .emit = on_message };
    size_t chunk;

    ga_set_handler_filter(safe);
    if (size == 0)
        return 0;
    chunk = (size_t)(data[0] % 32) + 1;
    data++;
    size--;
    while (size) {
        size_t n = size < chunk ? size : chunk;
        ga_stream_feed(&st, data, n);
        data += n;
        size -= n;
    }
    ga_stream_free(&st);
    return 0;
}
