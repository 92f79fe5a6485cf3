/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the cloop block codecs (built from
 * lib/format/cloop-codec.c): the input's first byte picks the codec (its
 * low 4 bits, as an index entry's flag), the next two the output room
 * (1 to 1024 sectors of 512 bytes), the rest is one stored block.  A block must decode within its room:
 * what is reported produced never exceeds it, and the bytes past it are
 * never written. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/cloop-codec.h"

#define ROOM_MAX (512u << 10)
#define GUARD 64u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t out[ROOM_MAX + GUARD];
    unsigned codec;
    size_t room, produced = 0;
    int r;

    if (size < 3)
        return 0;
    codec = data[0] & 0xf;
    room = ((size_t)(data[1] | data[2] << 8) % (ROOM_MAX / 512) + 1) * 512;
    memset(out + room, 0xa5, GUARD);
    r = cloop_decode(codec, data + 3, size - 3, out, room, &produced);
    if (produced > room || (r == 0 && !cloop_codec_available(codec)))
        abort();
    for (unsigned i = 0; i < GUARD; i++)
        if (out[room + i] != 0xa5)
            abort();
    (void)cloop_codec_name(codec);
    return 0;
}
