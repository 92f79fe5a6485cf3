/* SPDX-License-Identifier: BSD-3-Clause */
/* The agent's input stream cut into JSON messages as QEMU's QMP reader
 * cuts it (see stream.c). */
#ifndef VD_GA_STREAM_H
#define VD_GA_STREAM_H

#include <stddef.h>

#include "util/buf.h"
#include "util/json.h"

/* Called once per message: obj (owned by the callee) or err (a message,
 * valid during the call), never both. */
typedef void ga_stream_emit(void *opaque, vd_json *obj, const char *err);

struct ga_stream {
    ga_stream_emit *emit;
    void *opaque;
    int state;                 /* lexer state, 0 = between tokens */
    struct vd_buf tok;         /* the token being read */
    struct vd_buf msg;         /* the tokens of the message so far */
    long braces, brackets;
    size_t ntokens;
};

void ga_stream_feed(struct ga_stream *st, const void *data, size_t len);
/* Free the buffers and reset to the start state. */
void ga_stream_free(struct ga_stream *st);

#endif
