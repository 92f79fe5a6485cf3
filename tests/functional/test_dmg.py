# SPDX-License-Identifier: BSD-3-Clause
"""dmg (Apple UDIF) against qemu-img 7.2, read-only, on images from a small
generator written from Apple's UDIF description (dmg_gen.py): zlib, raw,
zero-fill and ignored chunks, one or more partitions, the block tables in
the XML property list or in a binary resource fork.  They read the same in
vdisk as in qemu-img, as the input, and as dmg2img extracts them; info,
map and compare print what qemu-img prints; every command that writes is
refused as by qemu-img.  bzip2 chunks read through libbz2 (Debian's
qemu-img lacks its dmg-bz2 module and fails: the reference there is
dmg2img); lzfse chunks, for which Debian has no library, get qemu-img's
warning naming the codec and a read error.  Hostile images end with a
clear error under a memory and CPU limit."""
import bz2
import os
import random
import shutil
import struct
import subprocess
import zlib

import pytest

import dmg_gen as g
from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format, same_output
from roformat_helpers import (SANITIZED, both, hostile_convert, limited, qemu_stderr,
                              run, same_contents, same_inspection, same_refusals,
                              same_result)

DMG2IMG = shutil.which("dmg2img")
K, M = 1 << 10, 1 << 20
BZ_WARNING = ("qemu-img: warning: dmg-bzip2 module is missing, accessing bzip2 compressed "
              "blocks will result in I/O errors\n")


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("dmg")


def input_data(size, seed):
    """Zeroes, random runs and repeated text, in whole sectors."""
    rnd = random.Random(seed)
    b = bytearray(size)
    for _ in range(12):
        off = rnd.randrange(size)
        n = min(size - off, rnd.randrange(1, 200 * K))
        b[off:off + n] = rnd.randbytes(n) if rnd.randrange(2) else (b"udif %d" % off * n)[:n]
    return bytes(b)


def write(d, img, name="img.dmg"):
    (d / name).write_bytes(img)
    return name


def dmg2img_agrees(d, name, data):
    """dmg2img extracts the same bytes (it reads the property list)."""
    if DMG2IMG is None:
        pytest.skip("dmg2img is not installed")
    p = subprocess.run([DMG2IMG, "-i", name, "-o", "d2i.raw"], cwd=d, capture_output=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert (d / "d2i.raw").read_bytes() == data


KINDS = [[g.ZLIB], [g.RAW], [g.ZLIB, g.RAW, g.ZERO_FILL, g.IGNORE]]
CASES = [(1 * M, 2048, 0), (3 * M + 5 * 512, 2048, 2), (512 * K, 7, 2), (2 * M, 4096, 1)]
if SANITIZED:
    CASES = CASES[:2]


@pytest.mark.parametrize("size,chunk,kinds", CASES)
def test_dmg_reads_as_qemu(tmp_path, size, chunk, kinds):
    data = input_data(size, size + chunk)
    name = write(tmp_path, g.udif([g.chunks_for(data, KINDS[kinds], chunk)]))
    same_contents(tmp_path, name, "dmg", expect=data)
    same_inspection(tmp_path, name, "dmg")
    dmg2img_agrees(tmp_path, name, data)


def test_dmg_partitions(tmp_path):
    """Three block tables, each with its own first sector and data offset."""
    parts = [input_data(n, n) for n in (64 * K, 1 * M, 300 * K)]
    name = write(tmp_path, g.udif([g.chunks_for(p, KINDS[2], 256) for p in parts]))
    data = b"".join(parts)
    same_contents(tmp_path, name, "dmg", expect=data)
    same_inspection(tmp_path, name, "dmg")
    dmg2img_agrees(tmp_path, name, data)


def test_dmg_binary_resource_fork(tmp_path):
    """Block tables in a binary resource fork, chunk offsets relative to
    each table's data offset (dmg2img reads neither)."""
    data = input_data(1 * M, 11)
    parts = [g.chunks_for(data[:256 * K], KINDS[2], 512),
             g.chunks_for(data[256 * K:], KINDS[2], 512)]
    name = write(tmp_path, g.udif(parts, binary_fork=True, relative=True))
    same_contents(tmp_path, name, "dmg", expect=data)
    same_inspection(tmp_path, name, "dmg")


def test_dmg_trailer_not_at_the_end(tmp_path):
    """Bytes after the trailer: both look for it in the same 515 bytes
    (where QEMU does, its file length rounded up to a sector), so both
    find it or both give up, whatever the length."""
    data = input_data(256 * K, 3)
    img = g.udif([g.chunks_for(data, [g.ZLIB], 128)])
    found = 0
    for tail in (1, 3, 100, 211, 300, 420, 500, 511, 700):
        name = write(tmp_path, img + b"\x55" * tail, "t%d.dmg" % tail)
        q, v = both("info", "--output=json", name, cwd=tmp_path)
        same_result(q, v)
        found += q.returncode == 0
    assert 0 < found < 9
    same_contents(tmp_path, "t1.dmg", "dmg", expect=data)


def test_dmg_refused_for_writing(tmp_path):
    data = input_data(256 * K, 5)
    name = write(tmp_path, g.udif([g.chunks_for(data, KINDS[2], 64)]))
    same_refusals(tmp_path, name, "dmg")


def test_dmg_probe_is_by_name(tmp_path):
    """UDIF has no leading magic: without the .dmg suffix both probe raw."""
    data = input_data(128 * K, 6)
    write(tmp_path, g.udif([g.chunks_for(data, [g.ZLIB], 64)]), "img.bin")
    same_result(*both("info", "img.bin", cwd=tmp_path))
    same_result(*both("info", "--output=json", "-f", "dmg", "img.bin", cwd=tmp_path))


def test_dmg_bzip2(tmp_path):
    """bzip2 chunks read through libbz2, as dmg2img reads them; qemu-img
    7.2 from Debian has no dmg-bz2 module: it warns at open and fails to
    read (the reference is wrong there: vdisk reads them)."""
    data = input_data(1 * M, 8)
    name = write(tmp_path, g.udif([g.chunks_for(data, [g.BZIP2, g.ZLIB, g.RAW], 512)]))
    q, v = both("convert", "-f", "dmg", "-O", "raw", name, "out.raw", cwd=tmp_path)
    assert q.returncode == 1 and BZ_WARNING in qemu_stderr(q)
    assert v.returncode == 0 and v.stderr == "", v.stderr
    assert (tmp_path / "out.raw").read_bytes() == data
    dmg2img_agrees(tmp_path, name, data)
    for args in (["info", name], ["map", "--output=json", name]):
        q, v = both(*args, cwd=tmp_path)
        assert same_output(v.stdout, q.stdout) and v.returncode == q.returncode
        assert qemu_stderr(q).replace(BZ_WARNING, "") == v.stderr.replace("vdisk", "qemu")


@pytest.mark.parametrize("kind,codec", [(g.LZFSE, "lzfse"), (g.ADC, "unknown type 80000004")])
def test_dmg_chunk_without_decompressor(tmp_path, kind, codec):
    """lzfse (no library in Debian) and ADC chunks: qemu-img's warning,
    naming the codec, at open; reading them fails; other chunks read."""
    data = input_data(256 * K, 9)
    chunks = g.chunks_for(data, [g.ZLIB], 64)
    chunks[2] = g.Chunk(kind, chunks[2].sector, chunks[2].count, stored=os.urandom(900))
    name = write(tmp_path, g.udif([chunks]))
    q, v = both("info", name, cwd=tmp_path)
    same_result(q, v)
    assert codec in v.stderr and "warning" in v.stderr
    q, v = both("convert", "-f", "dmg", "-O", "raw", name, "out.raw", cwd=tmp_path)
    same_result(q, v)
    assert v.returncode == 1 and "Input/output error" in v.stderr
    q, v = both("dd", "-f", "dmg", "-O", "raw", "bs=64k", "count=1", "if=" + name,
                "of=head.raw", cwd=tmp_path)
    same_result(q, v)
    assert v.returncode == 0
    assert (tmp_path / "head.raw").read_bytes() == data[:64 * K]


# ---- hostile images ----

def open_error(stderr):
    for line in stderr.splitlines():
        if "Could not open '" in line and "': " in line:
            return line.split("': ", 1)[1]
    return ""


def same_open_error(d, name, want):
    q, v = both("info", name, cwd=d)
    same_result(q, v)
    assert q.returncode == 1 and want in qemu_stderr(q), q.stderr
    hostile_convert(d, name, "dmg")


def own_open_error(d, name, want):
    """vdisk refuses the image at open (qemu-img opens it)."""
    v = limited([VDISK_IMG, "info", name], d)
    assert v.returncode == 1 and want in open_error(v.stderr), v.stderr
    hostile_convert(d, name, "dmg")


def entry(kind, sector, count, offset, length):
    return (kind, sector, count, offset, length)


def plist_and_trailer(block, fork_len, sectors):
    """What follows a data fork of fork_len bytes: the property list with
    one block table, and the trailer."""
    xml = g.plist([block])
    return xml + g.koly(fork_len, 0, 0, fork_len, len(xml), sectors)


def crafted(entries, sectors, fork=b"\0" * 4096):
    """An image whose one block table holds the given entries."""
    return fork + plist_and_trailer(g.mish(0, sectors, entries), len(fork), sectors)


def test_dmg_hostile_empty_file(tmp_path):
    """Probed as raw (an empty file is raw), refused when forced."""
    name = write(tmp_path, b"")
    same_result(*both("info", name, cwd=tmp_path))
    q, v = both("info", "-f", "dmg", name, cwd=tmp_path)
    same_result(q, v)
    assert "dmg file must be at least 512 bytes long" in v.stderr


def test_dmg_hostile_short_file(tmp_path):
    """300 bytes: QEMU takes the length rounded up to a sector, finds the
    trailer's magic and zeroes after it."""
    same_open_error(tmp_path, write(tmp_path, b"koly" + bytes(300)), "Invalid argument")


def test_dmg_hostile_no_trailer(tmp_path):
    same_open_error(tmp_path, write(tmp_path, os.urandom(64 * K).replace(b"koly", b"kolz")),
                    "Could not locate UDIF trailer in dmg file")


def test_dmg_hostile_truncated(tmp_path):
    """Cut inside the data fork: the trailer is gone."""
    data = input_data(256 * K, 12)
    img = g.udif([g.chunks_for(data, [g.ZLIB], 64)])
    same_open_error(tmp_path, write(tmp_path, img[:len(img) // 2]),
                    "Could not locate UDIF trailer in dmg file")


def test_dmg_hostile_forks_past_trailer(tmp_path):
    img = bytearray(crafted([entry(g.ZLIB, 0, 1, 0, 10)], 1))
    struct.pack_into(">Q", img, len(img) - 512 + 0xd8, len(img))
    same_open_error(tmp_path, write(tmp_path, bytes(img)), "Invalid argument")


def test_dmg_hostile_sector_count_overflow(tmp_path):
    img = bytearray(crafted([entry(g.ZLIB, 0, 1, 0, 10)], 1))
    struct.pack_into(">Q", img, len(img) - 512 + 0x1ec, (1 << 64) - 1)
    same_open_error(tmp_path, write(tmp_path, bytes(img)), "Invalid argument")


def test_dmg_hostile_chunk_sectors_over_the_limit(tmp_path):
    img = crafted([entry(g.ZLIB, 0, 200000, 0, 100)], 200000)
    same_open_error(tmp_path, write(tmp_path, img),
                    "sector count 200000 for chunk 0 is larger than max (131072)")


def test_dmg_hostile_chunk_length_over_the_limit(tmp_path):
    img = crafted([entry(g.RAW, 0, 8, 0, 10), entry(g.ZLIB, 8, 8, 0, (1 << 40) + 1)], 16)
    same_open_error(tmp_path, write(tmp_path, img),
                    "length 1099511627777 for chunk 1 is larger than max (67108864)")


def test_dmg_hostile_plist_too_large(tmp_path):
    """A property list of 17 MiB (in a sparse file): refused by both."""
    path = tmp_path / "img.dmg"
    with open(path, "wb") as f:
        f.truncate(17 * M + 4096)
        f.seek(17 * M + 4096)
        f.write(g.koly(0, 0, 0, 1024, 17 * M, 8))
    same_open_error(tmp_path, "img.dmg", "Invalid argument")


def test_dmg_hostile_chunk_count_in_the_millions(tmp_path):
    """A block table claiming 10 million chunks holds three: the entries
    are counted from its length, as in qemu-img."""
    fork = zlib.compress(b"\x42" * 4096)
    block = bytearray(g.mish(0, 8, [entry(g.ZLIB, 0, 8, 0, len(fork)),
                                    entry(g.TERMINATOR, 8, 0, 0, 0)]))
    struct.pack_into(">I", block, 200, 10000000)
    name = write(tmp_path, fork + plist_and_trailer(bytes(block), len(fork), 8))
    same_contents(tmp_path, name, "dmg", expect=b"\x42" * 4096)


def test_dmg_hostile_chunk_past_eof(tmp_path):
    img = crafted([entry(g.ZLIB, 0, 8, 1 << 30, 100)], 8)
    own_open_error(tmp_path, write(tmp_path, img), "lies beyond the end of the file")


def test_dmg_hostile_overlapping_chunks(tmp_path):
    fork = zlib.compress(bytes(8 * 512))
    img = crafted([entry(g.ZLIB, 0, 8, 0, len(fork)), entry(g.ZLIB, 4, 8, 0, len(fork))],
                  12, fork=fork)
    own_open_error(tmp_path, write(tmp_path, img), "dmg: chunks overlap at sector 4")


def test_dmg_hostile_sector_wraps(tmp_path):
    img = crafted([entry(g.ZERO_FILL, (1 << 64) - 4, 8, 0, 0)], 8)
    own_open_error(tmp_path, write(tmp_path, img), "wraps around")


def test_dmg_hostile_raw_length_mismatch(tmp_path):
    img = crafted([entry(g.RAW, 0, 8, 0, 100)], 8)
    own_open_error(tmp_path, write(tmp_path, img), "has 100 bytes for 8 sectors")


@pytest.mark.parametrize("codec", ["zlib", "bzip2"])
def test_dmg_hostile_decompression_bomb(tmp_path, codec):
    """A 16-sector chunk whose stream holds 64 MiB: a read error, bounded
    by the chunk's size."""
    bomb = zlib.compress(bytes(64 * M), 9) if codec == "zlib" else bz2.compress(bytes(64 * M))
    kind = g.ZLIB if codec == "zlib" else g.BZIP2
    img = crafted([entry(kind, 0, 16, 0, len(bomb))], 16, fork=bomb)
    name = write(tmp_path, img)
    v = hostile_convert(tmp_path, name, "dmg")
    assert v.returncode == 1 and "Input/output error" in v.stderr, v.stderr
    if codec == "zlib":
        same_result(*both("convert", "-f", "dmg", "-O", "raw", name, "out.raw", cwd=tmp_path))


def test_dmg_hostile_sector_in_no_chunk(tmp_path):
    """The trailer's sector count exceeds the chunks: reading the gap fails
    in both."""
    fork = zlib.compress(b"\x11" * 4096)
    img = crafted([entry(g.ZLIB, 0, 8, 0, len(fork))], 64, fork=fork)
    name = write(tmp_path, img)
    same_result(*both("convert", "-f", "dmg", "-O", "raw", name, "out.raw", cwd=tmp_path))
    hostile_convert(tmp_path, name, "dmg")
