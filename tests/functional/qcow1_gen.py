# SPDX-License-Identifier: BSD-3-Clause
"""A small generator of qcow (version 1) images for the hostile-image
tests, written from the format's header layout: a 48-byte big-endian
header, the backing file name, the L1 table, then whatever follows."""
import struct
import zlib

MAGIC = 0x514649fb
COMPRESSED = 1 << 63


def deflate(data):
    """Raw deflate with a 4 KiB window, as QEMU stores a compressed cluster."""
    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    return c.compress(data) + c.flush()


def image(size=1 << 20, cluster_bits=12, l2_bits=9, crypt=0, version=1,
          backing_off=0, backing_len=0, name=b"", l1=(), l1_offset=None,
          l1_entries=None, tail=b""):
    """Header, name, L1 table (entries l1, the rest zero; its length from
    size unless l1_entries says), then tail."""
    hlen = (48 + len(name) + 7) // 8 * 8
    shift = cluster_bits + l2_bits
    n = (size + (1 << shift) - 1) >> shift if l1_entries is None else l1_entries
    h = struct.pack(">IIQIIQBBHIQ", MAGIC, version, backing_off, backing_len, 0, size,
                    cluster_bits, l2_bits, 0, crypt,
                    hlen if l1_offset is None else l1_offset)
    body = bytearray(h + name)
    body += bytes(hlen - len(body))
    table = bytearray((n * 8 + 511) // 512 * 512)
    for i, e in enumerate(l1):
        table[i * 8:i * 8 + 8] = struct.pack(">Q", e)
    return bytes(body + table) + tail


def with_l2(entries, data=b""):
    """A 1 MiB image (4 KiB clusters) whose one L2 table sits at 4096 with
    the given entries, followed by data at 8192."""
    head = image(l1=[4096])
    l2 = bytearray(4096)
    for i, e in enumerate(entries):
        l2[i * 8:i * 8 + 8] = struct.pack(">Q", e)
    return head + bytes(4096 - len(head)) + bytes(l2) + data


def compressed_entry(offset, length, cluster_bits=12):
    return COMPRESSED | length << (63 - cluster_bits) | offset
