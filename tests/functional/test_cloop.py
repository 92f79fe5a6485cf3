# SPDX-License-Identifier: BSD-3-Clause
"""cloop (compressed loopback, version 2.0) against qemu-img 7.2, read-only.
Images come from Debian's cloop-utils (create_compressed_fs): they read
the same in vdisk as in qemu-img and as the input they were made from;
info, map and compare print what qemu-img prints; every command that
writes is refused as by qemu-img.  Hostile images, written by a small
generator (the 128-byte preamble, big-endian block size and count, n+1
big-endian offsets, zlib blocks), end with a clear error under a memory
and CPU limit.

Version 4.0 images (which QEMU 7.2 cannot read, and Debian 12's
extract_compressed_fs only where they keep 2.0's layout) come from
cloop_gen.py, written from the format description: vdisk reads back the
data the generator packed, agrees with extract_compressed_fs on the
images it reads, and prints for them what qemu-img prints for a 2.0
image of the same data."""
import os
import shutil
import struct
import subprocess
import zlib

import pytest

import cloop_gen as cg
from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format
from roformat_helpers import (SANITIZED, both, hostile_convert, limited, same_contents,
                              same_inspection, same_refusals, same_result)

CCFS = shutil.which("create_compressed_fs")
K, M = 1 << 10, 1 << 20
PREAMBLE_V2 = (b"#!/bin/sh\n#V2.0 Format\n"
               b"modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n")


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


def test_cloop_untrusted_caps_the_table(tmp_path):
    """A 24 MiB offsets table opens, but not in untrusted mode (16 MiB cap)."""
    n = 3 * M
    img = image([], n_blocks=n, offsets=[0] * (n + 1))
    name = write(tmp_path, img)
    v = limited([VDISK_IMG, "info", "-f", "cloop", name], tmp_path)
    assert v.returncode == 0, v.stderr
    v = limited([VDISK_IMG, "info", "--untrusted", "-f", "cloop", name], tmp_path)
    assert v.returncode == 1 and "cloop offsets table" in v.stderr, v.stderr


# ---- version 4.0, from cloop_gen ----

ALL = [cg.ZLIB, cg.NONE, cg.XZ, cg.LZ4]
V4_CASES = [  # size, block size, codecs, header last, links, last block padded
    (1 * M, 64 * K, [cg.ZLIB], False, False, True),
    (1 * M + 3 * 512 + 7, 16 * K, ALL, False, True, True),
    (700 * K + 11, 32 * K, ALL, True, True, False),
    (300 * K, 4 * K, [cg.XZ, cg.LZ4], True, True, True),
    (129 * K + 1, 128 * K, [cg.NONE, cg.LZ4], False, False, False),
]


def v4_data(size, seed):
    """input_data with repeated blocks, so the generator writes links."""
    data = bytearray(input_data(size, seed))
    chunk = data[:20 * K]
    for at in range(size // 3, size - len(chunk), size // 3):
        data[at:at + len(chunk)] = chunk
    return bytes(data)


def v4_image(d, data, block_size, codecs, header_last=False, links=True, pad_last=True,
             name="v4.cloop"):
    img, padded = cg.pack(data, block_size, codecs, header_last=header_last, links=links,
                          pad_last=pad_last)
    (d / name).write_bytes(img)
    return name, padded


def vdisk(*args, cwd=None):
    return subprocess.run([VDISK_IMG] + [str(a) for a in args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def v4_reads(d, name, expect):
    """convert gives the packed bytes; compare finds them identical and a
    changed byte different."""
    v = vdisk("convert", "-f", "cloop", "-O", "raw", name, "v.raw", cwd=d)
    assert v.returncode == 0, v.stderr
    assert (d / "v.raw").read_bytes() == expect
    (d / "ref.raw").write_bytes(expect)
    v = vdisk("compare", "-f", "cloop", "-F", "raw", name, "ref.raw", cwd=d)
    assert v.returncode == 0 and "Images are identical." in v.stdout, (v.stdout, v.stderr)
    changed = bytearray(expect)
    changed[len(changed) // 2] ^= 1
    (d / "ref.raw").write_bytes(bytes(changed))
    v = vdisk("compare", "-f", "cloop", "-F", "raw", name, "ref.raw", cwd=d)
    assert v.returncode == 1 and "Content mismatch at offset %d!" % (
        len(changed) // 2 // 512 * 512) in v.stdout, (v.stdout, v.stderr)


@pytest.mark.parametrize("size,block_size,codecs,last,links,pad", V4_CASES)
def test_cloop_v4_reads(tmp_path, size, block_size, codecs, last, links, pad):
    data = v4_data(size, size ^ block_size)
    name, padded = v4_image(tmp_path, data, block_size, codecs, last, links, pad)
    codecs_used = {e >> 60 for e in cg.index_entries((tmp_path / name).read_bytes())[:-1]}
    assert codecs_used == set(codecs) | ({cg.LINK} if links else set()), codecs_used
    v4_reads(tmp_path, name, padded)


def test_cloop_v4_partial_reads(tmp_path):
    """dd windows across and inside blocks of every codec and links."""
    data = v4_data(512 * K, 9)
    name, padded = v4_image(tmp_path, data, 4 * K, ALL, header_last=True)
    for bs, skip, count in ((512, 7, 9), (1536, 5, 3), (64 * K, 3, 2)):
        out = tmp_path / ("dd%d.raw" % bs)
        v = vdisk("dd", "-f", "cloop", "-O", "raw", "bs=%d" % bs, "count=%d" % (skip + count),
                  "if=" + name, "of=" + out.name, cwd=tmp_path)
        assert v.returncode == 0, v.stderr
        assert out.read_bytes()[skip * bs:] == padded[skip * bs:(skip + count) * bs]


def without_names(text):
    """info output without what names the file or its size on disk."""
    return [l for l in text.splitlines()
            if not l.startswith(("image:", "disk size:", '    "filename"', '    "actual-size"'))]


@pytest.mark.parametrize("last", [False, True])
def test_cloop_v4_inspection_as_v2(tmp_path, last):
    """info (human, JSON) and map of a 4.0 image print what qemu-img prints
    for the 2.0 image create_compressed_fs makes of the same data; a 4.0
    header at the start is probed as cloop (qemu-img sees raw bytes: an
    intended difference), one at the end needs -f cloop."""
    data = v4_data(300 * K + 512, 3)
    v2 = ccfs(tmp_path, data, 16 * K, name="v2.cloop")
    name, _ = v4_image(tmp_path, data, 16 * K, ALL, header_last=last)
    fmt = ["-f", "cloop"] if last else []
    for args in (["info"], ["info", "--output=json"]):
        q = run_qemu(args + [v2], tmp_path)
        v = vdisk(*(args + fmt + [name]), cwd=tmp_path)
        assert v.returncode == q.returncode == 0, v.stderr
        assert without_names(v.stdout) == without_names(q.stdout), (q.stdout, v.stdout)
    for args in (["map", "-f", "cloop"], ["map", "--output=json", "-f", "cloop"]):
        q, v = run_qemu(args + [v2], tmp_path), vdisk(*(args + [name]), cwd=tmp_path)
        assert (v.returncode, v.stdout) == (q.returncode, q.stdout), (q, v)
        assert v.stderr.replace("vdisk-img", "qemu-img") == q.stderr


def run_qemu(args, cwd):
    return subprocess.run([QEMU_IMG] + args, capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cloop_v4_refused_for_writing(tmp_path):
    name, _ = v4_image(tmp_path, input_data(64 * K, 1), 16 * K, ALL)
    before = (tmp_path / name).read_bytes()
    for args in (["resize", "-f", "cloop", name, "+1M"], ["check", "-r", "all", name],
                 ["commit", "-f", "cloop", name], ["snapshot", "-c", "s", name]):
        v = vdisk(*args, cwd=tmp_path)
        assert v.returncode != 0 and v.stderr, (args, v.stdout)
    assert (tmp_path / name).read_bytes() == before


def test_cloop_v4_lzo_refused_by_name(tmp_path):
    """LZO blocks (liblzo2 is GPL, so no decoder is linked): a warning
    naming the codec at open, as qemu-img's for dmg's lzfse, and an I/O
    error on reading them; blocks of other codecs still read."""
    blocks = [(cg.ZLIB, zlib.compress(b"a" * 4096)), (cg.LZO, b"\x11\0\0")]
    name = write(tmp_path, cg.build(4096, blocks), "lzo.cloop")
    v = vdisk("info", name, cwd=tmp_path)
    assert v.returncode == 0 and "warning: cloop: the image has lzo-compressed blocks and " \
        "there is no lzo decompressor" in v.stderr, v.stderr
    v = hostile_convert(tmp_path, name, "cloop")
    assert v.returncode == 1 and "error while reading at byte 0: Input/output error" in \
        v.stderr, v.stderr
    v = vdisk("dd", "-f", "cloop", "-O", "raw", "bs=4096", "count=1", "if=" + name,
              "of=first.raw", cwd=tmp_path)
    assert v.returncode == 0 and (tmp_path / "first.raw").read_bytes() == b"a" * 4096


def v4_own_error(d, img, want):
    """vdisk refuses the 4.0 image at open, within the memory and CPU
    limit, with the message want."""
    name = write(d, img, "bad4.cloop")
    v = limited([VDISK_IMG, "info", "-f", "cloop", name], d)
    assert v.returncode == 1 and want in (open_error(v.stderr) or ""), v.stderr
    v = hostile_convert(d, name, "cloop")
    assert v.returncode == 1 and want in v.stderr, v.stderr


def v4_read_error(d, img, at=0):
    """The 4.0 image opens, and reading the block at byte at fails with an
    I/O error (the tool prints errno, as qemu-img), within the limits."""
    name = write(d, img, "bad4.cloop")
    v = limited([VDISK_IMG, "info", "-f", "cloop", name], d)
    assert v.returncode == 0, v.stderr
    v = hostile_convert(d, name, "cloop")
    assert v.returncode == 1 and \
        "error while reading at byte %d: Input/output error" % at in v.stderr, v.stderr


def one_block(codec=cg.ZLIB, block_size=64 * K):
    return [(codec, cg.encode(codec, bytes([7]) * block_size))]


@pytest.mark.parametrize("last", [False, True])
def test_cloop_v4_hostile_zero_block_size(tmp_path, last):
    v4_own_error(tmp_path, cg.build(0, one_block(), header_last=last),
                 "block_size cannot be zero")


@pytest.mark.parametrize("last", [False, True])
def test_cloop_v4_hostile_huge_block_size(tmp_path, last):
    v4_own_error(tmp_path, cg.build(1 << 31, one_block(), header_last=last),
                 "block_size 2147483648 must be 64 MB or less")


@pytest.mark.parametrize("last", [False, True])
def test_cloop_v4_hostile_million_blocks(tmp_path, last):
    v4_own_error(tmp_path, cg.build(64 * K, one_block(), header_last=last, n_blocks=1 << 26),
                 "image requires too many offsets, try increasing block size")


def test_cloop_v4_hostile_index_past_eof(tmp_path):
    v4_own_error(tmp_path, cg.build(64 * K, one_block(), n_blocks=50000000),
                 "offsets table (50000001 entries at 136) extends beyond the end of the file")


def test_cloop_v4_hostile_index_before_start(tmp_path):
    v4_own_error(tmp_path, cg.build(64 * K, one_block(), header_last=True, n_blocks=50000000),
                 "offsets table (50000001 entries before the header at the end) extends "
                 "before the start of the file")


@pytest.mark.parametrize("last", [False, True])
def test_cloop_v4_hostile_data_past_end(tmp_path, last):
    """The end entry at 2^60 - 1: past the file (or the index at its end)."""
    img = cg.build(64 * K, one_block(), header_last=last, end=(1 << 60) - 1)
    v4_own_error(tmp_path, img, "block data ends at 1152921504606846975, beyond")


def test_cloop_v4_hostile_offsets_overflow(tmp_path):
    """Entries whose 60-bit offsets wrap or decrease are refused."""
    img = cg.build(64 * K, one_block() * 2, entries=[300, (1 << 60) - 8, 400])
    v4_own_error(tmp_path, img, "block 1 starts at 1152921504606846968, after the next block")


def test_cloop_v4_hostile_oversized_block(tmp_path):
    """A stored block longer than two maximal blocks (a sparse file)."""
    img = cg.build(64 * K, one_block(), end=200 * M)
    with open(tmp_path / "bad4.cloop", "wb") as f:
        f.write(img)
        f.truncate(200 * M + 8)
    v = limited([VDISK_IMG, "info", "-f", "cloop", "bad4.cloop"], tmp_path)
    want = "block 0 is %d bytes long, more than 134217728" % (200 * M - 152)
    assert v.returncode == 1 and want in v.stderr, v.stderr


@pytest.mark.parametrize("codec,stream", [
    (cg.ZLIB, lambda: zlib.compress(bytes(8 * M), 9)),
    (cg.XZ, lambda: cg.encode(cg.XZ, bytes(8 * M))),
    (cg.LZ4, lambda: cg.lz4_block(bytes(4 * M))),
    (cg.NONE, lambda: bytes(64 * K + 1)),
])
def test_cloop_v4_hostile_decompression_bomb(tmp_path, codec, stream):
    """A block decoding to far more than its 64 KiB: a read error, the
    output bounded by the block."""
    img = cg.build(64 * K, [(codec, stream()), (cg.ZLIB, zlib.compress(bytes(64 * K)))])
    v4_read_error(tmp_path, img)


@pytest.mark.parametrize("codec", [cg.ZLIB, cg.XZ, cg.LZ4])
def test_cloop_v4_hostile_short_block(tmp_path, codec):
    """A block that is not the last decoding to less than a block."""
    blocks = [(codec, cg.encode(codec, bytes(1000))), (cg.ZLIB, zlib.compress(bytes(64 * K)))]
    v4_read_error(tmp_path, cg.build(64 * K, blocks))


@pytest.mark.parametrize("codec", [cg.ZLIB, cg.XZ, cg.LZ4])
def test_cloop_v4_hostile_corrupt_stream(tmp_path, codec):
    good = cg.encode(codec, input_data(64 * K, 4))
    bad = good[:len(good) // 2] + bytes(200) + good[len(good) // 2 + 200:]
    v4_read_error(tmp_path, cg.build(64 * K, [(codec, bad), (codec, good)]))


def test_cloop_v4_hostile_xz_dictionary(tmp_path):
    """An xz block whose header asks for a 4 GiB dictionary: refused by the
    decoder's memory limit, nothing allocated."""
    xz = bytearray(cg.encode(cg.XZ, bytes(64 * K)))
    # the block header after the 12-byte stream header: size, flags, the
    # LZMA2 filter (id 0x21, 1 property byte: the dictionary size), CRC32
    size = (xz[12] + 1) * 4
    assert xz[14:16] == b"\x21\x01"
    xz[16] = 40                                  # 4 GiB - 1
    xz[12 + size - 4:12 + size] = struct.pack("<I", zlib.crc32(xz[12:12 + size - 4]))
    xz = bytes(xz)
    v4_read_error(tmp_path, cg.build(64 * K, [(cg.XZ, xz), (cg.XZ, xz)]))


@pytest.mark.parametrize("links,want", [
    ([(cg.LINK, 0)], "block 0 links to block 0, which is not an earlier block"),
    ([(cg.ZLIB, zlib.compress(bytes(64 * K))), (cg.LINK, 2), (cg.LINK, 1)],
     "block 1 links to block 2, which is not an earlier block"),
    ([(cg.ZLIB, zlib.compress(bytes(64 * K))), (cg.LINK, (1 << 60) - 1)],
     "block 1 links to block 1152921504606846975"),
])
def test_cloop_v4_hostile_links(tmp_path, links, want):
    """Links to themselves, forward (a cycle 1 -> 2 -> 1) or past the index."""
    v4_own_error(tmp_path, cg.build(64 * K, links), want)


def test_cloop_v4_link_chains(tmp_path):
    """A link to a link reads the stored block at the chain's start."""
    a, b = bytes([1]) * 4096, bytes([2]) * 4096
    blocks = [(cg.LZ4, cg.lz4_block(a)), (cg.XZ, cg.encode(cg.XZ, b)), (cg.LINK, 0),
              (cg.LINK, 2), (cg.LINK, 1), (cg.LINK, 3)]
    name = write(tmp_path, cg.build(4096, blocks, header_last=True), "chain.cloop")
    v4_reads(tmp_path, name, a + b + a + a + b + a)


@pytest.mark.parametrize("entries,want", [
    ([7 << 60 | 200, 300], "block 0 has unknown compression type 7"),
    ([0, cg.LINK << 60], "the last index entry is a link"),
])
def test_cloop_v4_hostile_entries(tmp_path, entries, want):
    img = cg.build(64 * K, one_block(), entries=entries)
    v4_own_error(tmp_path, img, want)


def test_cloop_v4_zlib_subset_as_extract_compressed_fs(tmp_path):
    """Debian 12's extract_compressed_fs reads only 2.0's layout, which a
    4.0 image with its header first and only zlib blocks (no links) keeps:
    for those it is the peer, and it, vdisk and the packed data agree (it
    rejects the image once a link is in it)."""
    ecfs = shutil.which("extract_compressed_fs")
    if ecfs is None:
        pytest.skip("extract_compressed_fs (cloop-utils) is not installed")
    data = v4_data(200 * K + 100, 6)
    name, padded = v4_image(tmp_path, data, 8 * K, [cg.ZLIB], links=False)
    p = subprocess.run([ecfs, name, "peer.raw"], cwd=tmp_path, capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "peer.raw").read_bytes() == padded
    v4_reads(tmp_path, name, padded)
    name, _ = v4_image(tmp_path, data, 8 * K, [cg.ZLIB], name="links.cloop")
    p = subprocess.run([ecfs, name, "peer2.raw"], cwd=tmp_path, capture_output=True,
                       timeout=60)
    assert b"corrupt data" in p.stderr
