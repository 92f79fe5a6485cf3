# SPDX-License-Identifier: BSD-3-Clause
"""A small cloop version 4.0 writer for the tests, from the format's
description: a 136-byte header (a 128-byte shell-script preamble with
"V4.0" at byte 11, then the block size and block count, 32-bit big
endian) and an index of n+1 64-bit big-endian entries, either both at the
start of the file (header, index, blocks) or at its end (blocks, index,
header).  An entry's top 4 bits name the block's compression (0 zlib,
1 none, 2 xz, 3 lz4, 4 lzo, 15 link) and its low 60 bits the block's file
offset; the last entry is where the data ends.  A link entry stores no
bytes and names an earlier block whose data it repeats.  lz4 blocks use
LZ4's block format (no frame), written here from its description."""
import lzma
import struct
import zlib

ZLIB, NONE, XZ, LZ4, LZO, LINK = 0, 1, 2, 3, 4, 15
PREAMBLE_V4 = (b"#!/bin/sh\n#V4.0 Format\n"
               b"modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n")
HEADER = 136


def _lz4_len(n):
    """The extra length bytes after a nibble of 15."""
    out = bytearray()
    n -= 15
    while n >= 255:
        out.append(255)
        n -= 255
    out.append(n)
    return bytes(out)


def lz4_block(data):
    """LZ4 block format: sequences of (token, literals, 2-byte offset,
    match length), greedy matches found through a 4-byte hash; the last 5
    bytes are literals and no match starts in the last 12."""
    out, table, lit, i, n = bytearray(), {}, 0, 0, len(data)
    while i + 12 <= n:
        key = data[i:i + 4]
        cand = table.get(key)
        table[key] = i
        if cand is None or i - cand > 65535 or data[cand:cand + 4] != key:
            i += 1
            continue
        m = 4
        while i + m < n - 5 and data[cand + m] == data[i + m]:
            m += 1
        litlen, mlen = i - lit, m - 4
        out.append((min(litlen, 15) << 4) | min(mlen, 15))
        if litlen >= 15:
            out += _lz4_len(litlen)
        out += data[lit:i]
        out += struct.pack("<H", i - cand)
        if mlen >= 15:
            out += _lz4_len(mlen)
        i += m
        lit = i
    litlen = n - lit
    out.append(min(litlen, 15) << 4)
    if litlen >= 15:
        out += _lz4_len(litlen)
    out += data[lit:]
    return bytes(out)


def encode(codec, data):
    if codec == ZLIB:
        return zlib.compress(data, 6)
    if codec == XZ:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=1)
    if codec == LZ4:
        return lz4_block(data)
    return data


def build(block_size, blocks, header_last=False, n_blocks=None, entries=None, end=None,
          preamble=PREAMBLE_V4):
    """An image of blocks: each (codec, stored bytes), or (LINK, block
    number).  n_blocks, entries (the n+1 index values) and end (the last
    entry) override what the blocks give, for hostile images."""
    n = len(blocks) if n_blocks is None else n_blocks
    index_len = 8 * ((len(blocks) if entries is None else len(entries) - 1) + 1)
    at = 0 if header_last else HEADER + index_len
    data, vals = b"", []
    for codec, stored in blocks:
        if codec == LINK:
            vals.append(LINK << 60 | stored)
            continue
        vals.append(codec << 60 | (at + len(data)))
        data += stored
    vals.append(at + len(data) if end is None else end)
    if entries is not None:
        vals = entries
    head = preamble.ljust(128, b"\0") + struct.pack(">II", block_size, n)
    index = b"".join(struct.pack(">Q", v) for v in vals)
    return data + index + head if header_last else head + index + data


def pack(data, block_size, codecs, header_last=False, links=True, pad_last=True):
    """An image holding data: blocks take the codecs in turn, a block equal
    to an earlier one is a link (with links), and the last block is padded
    to a whole block (with pad_last) or stored short.  Returns the image and
    the bytes it reads as (data padded to whole blocks)."""
    blocks, seen = [], {}
    for i, at in enumerate(range(0, len(data), block_size)):
        piece = data[at:at + block_size]
        if pad_last:
            piece = piece.ljust(block_size, b"\0")
        if links and piece in seen:
            blocks.append((LINK, seen[piece]))
            continue
        seen.setdefault(piece, i)
        codec = codecs[i % len(codecs)]
        blocks.append((codec, encode(codec, piece)))
    padded = data + bytes(-len(data) % block_size)
    return build(block_size, blocks, header_last=header_last), padded


def index_entries(img):
    """The n+1 index values of an image this module wrote."""
    first = img[11:15] == b"V4.0"
    head = img[:HEADER] if first else img[-HEADER:]
    n = struct.unpack(">I", head[132:136])[0]
    at = HEADER if first else len(img) - HEADER - 8 * (n + 1)
    return list(struct.unpack(">%dQ" % (n + 1), img[at:at + 8 * (n + 1)]))
