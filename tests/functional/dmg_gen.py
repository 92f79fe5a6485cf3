# SPDX-License-Identifier: BSD-3-Clause
"""A small UDIF (.dmg) writer for the tests, from Apple's description of
the format: the data fork holds the chunks; each partition's block table
("mish": signature, first sector, sector count, data offset, buffers,
descriptor, checksum, then 40-byte chunk entries: type, comment, sector
number, sector count, compressed offset, compressed length) sits in the
resource fork, either as base64 <data> of a "blkx" entry in the XML
property list or in a binary resource fork; a 512-byte "koly" trailer at
the end names the forks and the disk's sector count.  All numbers are big
endian."""
import base64
import bz2
import struct
import zlib

SECTOR = 512
ZERO_FILL, RAW, IGNORE = 0x00000000, 0x00000001, 0x00000002
ADC, ZLIB, BZIP2, LZFSE = 0x80000004, 0x80000005, 0x80000006, 0x80000007
COMMENT, TERMINATOR = 0x7ffffffe, 0xffffffff


class Chunk:
    """One chunk: type, sectors it covers (relative to its partition) and
    its stored bytes (None: encoded from data by type)."""

    def __init__(self, kind, sector, count, data=b"", stored=None):
        self.kind, self.sector, self.count = kind, sector, count
        self.data, self.stored = data, stored

    def encode(self):
        if self.stored is not None:
            return self.stored
        if self.kind == ZLIB:
            return zlib.compress(self.data, 6)
        if self.kind == BZIP2:
            return bz2.compress(self.data, 9)
        if self.kind == RAW:
            return self.data
        return b""


def chunks_for(data, kinds, chunk_sectors=128, first=0):
    """Split data (whole sectors) into chunks, cycling through kinds; an
    all-zero piece may still be stored as any kind."""
    out, i = [], 0
    for s in range(0, len(data) // SECTOR, chunk_sectors):
        piece = data[s * SECTOR:(s + chunk_sectors) * SECTOR]
        kind = kinds[i % len(kinds)]
        if kind in (ZERO_FILL, IGNORE) and piece.strip(b"\0"):
            kind = ZLIB
        out.append(Chunk(kind, first + s, len(piece) // SECTOR, piece))
        i += 1
    return out


def mish(first_sector, sector_count, entries, data_offset=0):
    """A block table: entries are (type, sector, count, offset, length)."""
    h = struct.pack(">4sIQQQII", b"mish", 1, first_sector, sector_count, data_offset,
                    0x208, 0) + bytes(24)
    h += struct.pack(">II", 2, 32) + bytes(128)          # CRC32 checksum, left zero
    h += struct.pack(">I", len(entries))
    for t, sec, cnt, off, ln in entries:
        h += struct.pack(">IIQQQQ", t, 0, sec, cnt, off, ln)
    return h


def plist(blocks):
    """The XML property list with one blkx entry per block table."""
    items = []
    for i, b in enumerate(blocks):
        b64 = base64.b64encode(b).decode()
        lines = "\n".join("\t\t\t\t" + b64[j:j + 52] for j in range(0, len(b64), 52))
        items.append("\t\t\t<dict>\n\t\t\t\t<key>Attributes</key>\n\t\t\t\t<string>0x0050"
                     "</string>\n\t\t\t\t<key>CFName</key>\n\t\t\t\t<string>part %d</string>\n"
                     "\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n%s\n\t\t\t\t</data>\n"
                     "\t\t\t\t<key>ID</key>\n\t\t\t\t<string>%d</string>\n"
                     "\t\t\t\t<key>Name</key>\n\t\t\t\t<string>part %d</string>\n"
                     "\t\t\t</dict>\n" % (i, lines, i - 1, i))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC '
            '"-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
            '<plist version="1.0">\n<dict>\n\t<key>resource-fork</key>\n\t<dict>\n'
            '\t\t<key>blkx</key>\n\t\t<array>\n' + "".join(items) +
            '\t\t</array>\n\t</dict>\n</dict>\n</plist>\n').encode()


def resource_fork(blocks):
    """A binary resource fork: header (data offset, map offset, data
    length, map length), then each resource as a length and its bytes."""
    body = b"".join(struct.pack(">I", len(b)) + b for b in blocks)
    head = struct.pack(">IIII", 0x100, 0x100 + len(body), len(body), 0).ljust(0x100, b"\0")
    return head + body


def koly(data_len, rsrc_off, rsrc_len, xml_off, xml_len, sectors, data_fork_offset=0):
    k = bytearray(512)
    struct.pack_into(">4sIII", k, 0, b"koly", 4, 512, 1)
    struct.pack_into(">QQQQQ", k, 16, 0, data_fork_offset, data_len, rsrc_off, rsrc_len)
    struct.pack_into(">II", k, 56, 1, 1)
    struct.pack_into(">QQ", k, 0xd8, xml_off, xml_len)
    struct.pack_into(">IQ", k, 0x1e8, 1, sectors)
    return bytes(k)


def udif(partitions, sectors=None, binary_fork=False, tail=b"", raw_blocks=None,
         relative=False):
    """A whole image.  partitions: lists of Chunks, each list a partition
    starting where the previous one ends (or raw_blocks: block tables
    given as bytes, for hostile images).  Chunk offsets are from the start
    of the data fork (as dmg2img reads them), or with relative from the
    block table's data offset (which QEMU adds).  Returns the file's bytes."""
    fork, blocks, first = b"", [], 0
    for chunks in partitions:
        start = len(fork) if relative else 0
        entries = []
        count = max((c.sector + c.count for c in chunks), default=0)
        for c in chunks:
            stored = c.encode()
            entries.append((c.kind, c.sector, c.count, len(fork) - start, len(stored)))
            fork += stored
        entries.append((TERMINATOR, count, 0, len(fork) - start, 0))
        blocks.append(mish(first, count, entries, data_offset=start))
        first += count
    if raw_blocks is not None:
        blocks = raw_blocks
    sectors = first if sectors is None else sectors
    if binary_fork:
        rf = resource_fork(blocks)
        trailer = koly(len(fork), len(fork), len(rf), 0, 0, sectors)
        return fork + rf + tail + trailer
    xml = plist(blocks)
    trailer = koly(len(fork), 0, 0, len(fork), len(xml), sectors)
    return fork + xml + tail + trailer
