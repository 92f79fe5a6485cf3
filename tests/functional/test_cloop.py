# SPDX-License-Identifier: BSD-3-Clause
"""cloop (compressed loopback, version 2.0) against qemu-img 7.2, read-only.
Images come from Debian's cloop-utils (create_compressed_fs): they read
the same in vdisk as in qemu-img and as the input they were made from;
info, map and compare print what qemu-img prints; every command that
writes is refused as by qemu-img.  Hostile images, written by a small
generator (the 128-byte preamble, big-endian block size and count, n+1
big-endian offsets, zlib blocks), end with a clear error under a memory
and CPU limit."""
import os
import shutil
import struct
import subprocess
import zlib

import pytest

from conftest import VDISK_IMG, needs_vdisk_format
from roformat_helpers import (SANITIZED, both, hostile_convert, limited, same_contents,
                              same_inspection, same_refusals, same_result)

CCFS = shutil.which("create_compressed_fs")
K, M = 1 << 10, 1 << 20
PREAMBLE_V2 = (b"#!/bin/sh\n#V2.0 Format\n"
               b"modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n")
PREAMBLE_V4 = PREAMBLE_V2.replace(b"V2.0", b"V4.0")


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("cloop")


def input_data(size, seed):
    """Zeroes, text, random bytes and runs, so blocks compress unequally."""
    rnd = __import__("random").Random(seed)
    b = bytearray(size)
    for _ in range(8):
        off = rnd.randrange(size)
        n = min(size - off, rnd.randrange(1, 96 * K))
        kind = rnd.randrange(3)
        if kind == 0:
            b[off:off + n] = rnd.randbytes(n)
        elif kind == 1:
            b[off:off + n] = bytes([rnd.randrange(256)]) * n
        else:
            b[off:off + n] = (b"cloop %d " % off * n)[:n]
    return bytes(b)


def ccfs(d, data, block_size, name="img.cloop", level=None):
    """An image made by create_compressed_fs from data."""
    if CCFS is None:
        pytest.skip("create_compressed_fs (cloop-utils) is not installed")
    (d / "in.raw").write_bytes(data)
    args = [CCFS, "-q", "-B", str(block_size)]
    if level is not None:
        args += ["-L", str(level)]
    p = subprocess.run(args + ["in.raw", name], cwd=d, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return name


CASES = [(1 * M, 64 * K, None), (1 * M + 3 * 512, 16 * K, None), (300 * K, 512, None),
         (2 * M, 128 * K, 0), (700 * K, 1 * M, 1)]
if SANITIZED:
    CASES = CASES[:3]


@pytest.mark.parametrize("size,block_size,level", CASES)
def test_cloop_reads_as_qemu(tmp_path, size, block_size, level):
    data = input_data(size, size ^ block_size)
    name = ccfs(tmp_path, data, block_size, level=level)
    padded = data + bytes(-len(data) % block_size)
    same_contents(tmp_path, name, "cloop", expect=padded)
    same_inspection(tmp_path, name, "cloop")


def test_cloop_partial_reads(tmp_path):
    """Reads across block boundaries and inside blocks, through dd skip/count
    windows, give the input's bytes."""
    data = input_data(512 * K, 7)
    name = ccfs(tmp_path, data, 4 * K)
    for bs, skip, count in ((512, 7, 9), (1536, 5, 3), (64 * K, 3, 2)):
        out = tmp_path / ("dd%d.raw" % bs)
        v = subprocess.run([VDISK_IMG, "dd", "-f", "cloop", "-O", "raw", "bs=%d" % bs,
                            "count=%d" % (skip + count), "if=" + name, "of=" + out.name],
                           cwd=tmp_path, capture_output=True, text=True)
        assert v.returncode == 0, v.stderr
        assert out.read_bytes()[skip * bs:] == data[skip * bs:(skip + count) * bs]


def test_cloop_refused_for_writing(tmp_path):
    name = ccfs(tmp_path, input_data(256 * K, 3), 64 * K)
    same_refusals(tmp_path, name, "cloop")


def test_cloop_probe_needs_the_preamble(tmp_path):
    """Without the version 2.0 preamble the image probes as raw, as in
    qemu-img; forced with -f it still opens."""
    name = ccfs(tmp_path, input_data(128 * K, 5), 64 * K)
    img = bytearray((tmp_path / name).read_bytes())
    img[0:9] = b"#!/bin/SH"
    (tmp_path / "noprobe.cloop").write_bytes(bytes(img))
    same_inspection(tmp_path, "noprobe.cloop", "cloop")
    same_result(*both("info", "--output=json", "noprobe.cloop", cwd=tmp_path))


# ---- hostile images, from a generator ----

def image(blocks, block_size=64 * K, n_blocks=None, offsets=None, preamble=PREAMBLE_V2,
          pad=0):
    """A cloop 2.0 image of the given zlib blocks; n_blocks and offsets
    override what the blocks would give."""
    head = preamble.ljust(128, b"\0")
    n = len(blocks) if n_blocks is None else n_blocks
    if offsets is None:
        offsets, at = [], 136 + 8 * (len(blocks) + 1)
        for b in blocks:
            offsets.append(at)
            at += len(b)
        offsets.append(at)
    table = b"".join(struct.pack(">Q", o) for o in offsets)
    return head + struct.pack(">II", block_size, n) + table + b"".join(blocks) + bytes(pad)


def zblocks(count, block_size=64 * K):
    return [zlib.compress(bytes([i + 1]) * block_size) for i in range(count)]


def write(d, img, name="bad.cloop"):
    (d / name).write_bytes(img)
    return name


def open_error(stderr):
    for line in stderr.splitlines():
        if "Could not open '" in line and "': " in line:
            return line.split("': ", 1)[1]
    return None


def same_open_error(d, name, want):
    """Both refuse the image at open with QEMU's message."""
    q, v = both("info", "-f", "cloop", name, cwd=d)
    same_result(q, v)
    assert q.returncode == 1 and want in open_error(q.stderr), q.stderr
    hostile_convert(d, name, "cloop")


def own_open_error(d, name, want):
    """vdisk refuses the image at open (where qemu-img opens it)."""
    v = limited([VDISK_IMG, "info", "-f", "cloop", name], d)
    assert v.returncode == 1, v.stderr
    assert want in (open_error(v.stderr) or ""), v.stderr
    hostile_convert(d, name, "cloop")


def test_cloop_hostile_zero_block_size(tmp_path):
    same_open_error(tmp_path, write(tmp_path, image(zblocks(1), block_size=0)),
                    "block_size cannot be zero")


def test_cloop_hostile_short_file(tmp_path):
    """Shorter than the header: read as zeroes past the end, as in qemu-img."""
    same_open_error(tmp_path, write(tmp_path, PREAMBLE_V2[:100]), "block_size cannot be zero")


def test_cloop_hostile_unaligned_block_size(tmp_path):
    same_open_error(tmp_path, write(tmp_path, image(zblocks(1), block_size=1000)),
                    "block_size 1000 must be a multiple of 512")


def test_cloop_hostile_huge_block_size(tmp_path):
    same_open_error(tmp_path, write(tmp_path, image(zblocks(1), block_size=128 * M)),
                    "block_size 134217728 must be 64 MB or less")


def test_cloop_hostile_block_count_overflow(tmp_path):
    same_open_error(tmp_path, write(tmp_path, image(zblocks(1), n_blocks=0xffffffff)),
                    "n_blocks 4294967295 must be 536870911 or less")


def test_cloop_hostile_million_offsets(tmp_path):
    same_open_error(tmp_path, write(tmp_path, image(zblocks(1), n_blocks=1 << 26)),
                    "image requires too many offsets, try increasing block size")


def test_cloop_hostile_table_past_eof(tmp_path):
    """A count of 50 million blocks in a small file: qemu-img allocates and
    reads the table as zeroes; vdisk refuses before allocating."""
    own_open_error(tmp_path, write(tmp_path, image(zblocks(2), n_blocks=50000000)),
                   "offsets table (50000001 entries at 136) extends beyond the end of the file")


def test_cloop_hostile_offsets_decreasing(tmp_path):
    blocks = zblocks(3)
    offsets = [400, 600, 500, 700]
    same_open_error(tmp_path, write(tmp_path, image(blocks, offsets=offsets)),
                    "offsets not monotonically increasing at index 2, image file is corrupt")


def test_cloop_hostile_oversized_chunk(tmp_path):
    offsets = [200, 200 + (128 * M) + 1]
    same_open_error(tmp_path, write(tmp_path, image(zblocks(1), offsets=offsets)),
                    "invalid compressed block size at index 1, image file is corrupt")


def test_cloop_hostile_truncated(tmp_path):
    img = image(zblocks(4))
    own_open_error(tmp_path, write(tmp_path, img[:-100]), "beyond the end of the file")


def test_cloop_hostile_decompression_bomb(tmp_path):
    """A block whose stream inflates to 64 MiB (a 64 KiB block): a read
    error, as in qemu-img, bounded by the block size."""
    bomb = zlib.compress(bytes(64 * M), 9)
    name = write(tmp_path, image([bomb]))
    q, v = both("convert", "-f", "cloop", "-O", "raw", name, "out.raw", cwd=tmp_path)
    same_result(q, v)
    assert "Input/output error" in v.stderr
    v = hostile_convert(tmp_path, name, "cloop")
    assert v.returncode == 1


def test_cloop_hostile_corrupt_stream(tmp_path):
    blocks = zblocks(2)
    blocks[1] = b"\x78\x9c" + os.urandom(300)
    name = write(tmp_path, image(blocks))
    q, v = both("convert", "-f", "cloop", "-O", "raw", name, "out.raw", cwd=tmp_path)
    same_result(q, v)
    assert "Input/output error" in v.stderr
    v = hostile_convert(tmp_path, name, "cloop")
    assert v.returncode == 1


def test_cloop_version4_refused(tmp_path):
    """Version 4.0 images keep their table elsewhere: refused by name
    (qemu-img reads them as 2.0 and gets garbage)."""
    own_open_error(tmp_path, write(tmp_path, image(zblocks(1), preamble=PREAMBLE_V4)),
                   "version 4.0 images are not supported")


def test_cloop_untrusted_caps_the_table(tmp_path):
    """A 24 MiB offsets table opens, but not in untrusted mode (16 MiB cap)."""
    n = 3 * M
    img = image([], n_blocks=n, offsets=[0] * (n + 1))
    name = write(tmp_path, img)
    v = limited([VDISK_IMG, "info", "-f", "cloop", name], tmp_path)
    assert v.returncode == 0, v.stderr
    v = limited([VDISK_IMG, "info", "--untrusted", "-f", "cloop", name], tmp_path)
    assert v.returncode == 1 and "cloop offsets table" in v.stderr, v.stderr
