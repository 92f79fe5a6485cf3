# SPDX-License-Identifier: BSD-3-Clause
"""bochs (growing "redolog" images) against qemu-img 7.2, read-only.
Images come from Debian's bximage (created empty, or converted from a raw
input): they read the same in vdisk as in qemu-img and as the input; info,
map and compare print what qemu-img prints; every command that writes is
refused as by qemu-img.  A small generator written from the redolog layout
(512-byte header, catalog, extents of a sector bitmap and data) makes
version 1 headers, partly written extents and hostile images, which end
with a clear error under a memory and CPU limit."""
import random
import shutil
import struct
import subprocess

import pytest

from conftest import VDISK_IMG, needs_vdisk_format
from roformat_helpers import (SANITIZED, both, hostile_convert, limited, same_contents,
                              same_inspection, same_refusals, same_result)

BXIMAGE = shutil.which("bximage")
K, M = 1 << 10, 1 << 20
UNALLOCATED = 0xffffffff


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("bochs")


def bximage(d, *args):
    if BXIMAGE is None:
        pytest.skip("bximage is not installed")
    p = subprocess.run([BXIMAGE, "-q"] + list(args), cwd=d, capture_output=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr


def input_data(size, seed):
    """Mostly zeroes, with random and repeated runs (so that bximage writes
    some extents whole, some in part and leaves others out)."""
    rnd = random.Random(seed)
    b = bytearray(size)
    for _ in range(10):
        off = rnd.randrange(0, size, 512)
        n = min(size - off, rnd.randrange(1, 40) * 512)
        b[off:off + n] = rnd.randbytes(n) if rnd.randrange(2) else bytes([0x5a]) * n
    return bytes(b)


SIZES = [1 * M, 3 * M, 4 * M + 64 * K]
if SANITIZED:
    SIZES = SIZES[:2]


@pytest.mark.parametrize("size", SIZES)
def test_bochs_converted_by_bximage(tmp_path, size):
    data = input_data(size, size)
    (tmp_path / "in.raw").write_bytes(data)
    bximage(tmp_path, "-func=convert", "-imgmode=growing", "in.raw", "img.bochs")
    same_contents(tmp_path, "img.bochs", "bochs", expect=data)
    same_inspection(tmp_path, "img.bochs", "bochs")


@pytest.mark.parametrize("size", ["10M", "1G"])
def test_bochs_created_by_bximage(tmp_path, size):
    """Empty growing images: all zeroes, as in qemu-img."""
    bximage(tmp_path, "-func=create", "-hd=" + size, "-imgmode=growing", "img.bochs")
    same_inspection(tmp_path, "img.bochs", "bochs")
    if size == "10M":
        same_contents(tmp_path, "img.bochs", "bochs")
    else:
        same_result(*both("compare", "-f", "bochs", "img.bochs", "img.bochs",
                          cwd=tmp_path))


def test_bochs_refused_for_writing(tmp_path):
    (tmp_path / "in.raw").write_bytes(input_data(1 * M, 9))
    bximage(tmp_path, "-func=convert", "-imgmode=growing", "in.raw", "img.bochs")
    same_refusals(tmp_path, "img.bochs", "bochs")


def test_bochs_sparse_mode_is_not_redolog(tmp_path):
    """bximage's "sparse" mode writes another format: raw to both probes,
    refused by -f bochs with the same message."""
    bximage(tmp_path, "-func=create", "-hd=10M", "-imgmode=sparse", "sp.img")
    same_result(*both("info", "sp.img", cwd=tmp_path))
    same_result(*both("info", "-f", "bochs", "sp.img", cwd=tmp_path))


# ---- the generator ----

def header(disk, catalog, extent, bitmap=None, version=2, magic=b"Bochs Virtual HD Image",
           kind=b"Redolog", subtype=b"Growing", header_size=512):
    h = bytearray(512)
    h[0:len(magic)] = magic
    h[32:32 + len(kind)] = kind
    h[48:48 + len(subtype)] = subtype
    bitmap = extent // 512 // 8 if bitmap is None else bitmap
    struct.pack_into("<IIIII", h, 64, version << 16, header_size, catalog, bitmap, extent)
    struct.pack_into("<Q", h, 84 if version == 1 else 88, disk)
    return bytes(h)


def image(disk, extent, extents, catalog=None, version=2, **kw):
    """A growing image: extents maps guest extent -> (sector bitmap bytes,
    data), stored in the order given."""
    n = catalog if catalog is not None else -(-disk // extent)
    cat = [UNALLOCATED] * min(n, 1 << 16)
    body = b""
    bitmap_bytes = 512 * (1 + (extent // 512 // 8 - 1) // 512)
    for i, (guest, (bits, data)) in enumerate(extents.items()):
        cat[guest] = i
        body += bits.ljust(bitmap_bytes, b"\0") + data.ljust(extent, b"\0")
    table = b"".join(struct.pack("<I", c) for c in cat)
    return header(disk, n, extent, version=version, **kw) + table + body


def bits_for(sectors, written):
    b = bytearray(sectors // 8)
    for s in written:
        b[s // 8] |= 1 << (s % 8)
    return bytes(b)


@pytest.mark.parametrize("version", [1, 2])
def test_bochs_partial_extents(tmp_path, version):
    """Sectors whose bitmap bit is clear read as zeroes; extents stored out
    of guest order; version 1 headers (no time stamp)."""
    ext = 64 * K
    sectors = ext // 512
    rnd = random.Random(version)
    data0, data3 = rnd.randbytes(ext), rnd.randbytes(ext)
    written0, written3 = range(0, sectors, 3), range(5, 40)
    img = image(5 * ext, ext, {3: (bits_for(sectors, written3), data3),
                               0: (bits_for(sectors, written0), data0)}, version=version)
    (tmp_path / "img.bochs").write_bytes(img)
    expect = bytearray(5 * ext)
    for base, data, written in ((0, data0, written0), (3 * ext, data3, written3)):
        for s in written:
            expect[base + s * 512:base + s * 512 + 512] = data[s * 512:s * 512 + 512]
    same_contents(tmp_path, "img.bochs", "bochs", expect=bytes(expect))
    same_inspection(tmp_path, "img.bochs", "bochs")


# ---- hostile images ----

def write(d, img, name="bad.bochs"):
    (d / name).write_bytes(img)
    return name


def open_error(stderr):
    for line in stderr.splitlines():
        if "Could not open '" in line and "': " in line:
            return line.split("': ", 1)[1]
    return ""


def same_open_error(d, name, want):
    q, v = both("info", "-f", "bochs", name, cwd=d)
    same_result(q, v)
    assert q.returncode == 1 and want == open_error(q.stderr), q.stderr
    hostile_convert(d, name, "bochs")


def own_error(d, name, want, cmd="info"):
    """vdisk fails with its own message where qemu-img reads zeroes."""
    if cmd == "info":
        v = limited([VDISK_IMG, "info", "-f", "bochs", name], d)
    else:
        v = hostile_convert(d, name, "bochs")
    assert v.returncode == 1 and want in v.stderr, v.stderr


def one_extent(**kw):
    return image(1 * M, 64 * K, {0: (b"\xff" * 16, b"\x11" * 64 * K)}, **kw)


def test_bochs_hostile_not_growing(tmp_path):
    same_open_error(tmp_path, write(tmp_path, one_extent(subtype=b"Undoable")),
                    "Image not in Bochs format")


def test_bochs_hostile_unknown_version(tmp_path):
    same_open_error(tmp_path, write(tmp_path, one_extent(version=3)),
                    "Image not in Bochs format")


def test_bochs_hostile_catalog_in_the_millions(tmp_path):
    same_open_error(tmp_path, write(tmp_path, one_extent(catalog=0x100001)),
                    "Catalog size is too large")


def test_bochs_hostile_zero_extent_size(tmp_path):
    img = bytearray(one_extent())
    struct.pack_into("<II", img, 76, 0, 0)
    same_open_error(tmp_path, write(tmp_path, bytes(img)), "Extent size must be at least 512")


def test_bochs_hostile_extent_not_power_of_two(tmp_path):
    img = bytearray(one_extent())
    struct.pack_into("<I", img, 80, 3000)
    same_open_error(tmp_path, write(tmp_path, bytes(img)),
                    "Extent size 3000 is not a power of two")


def test_bochs_hostile_huge_extent(tmp_path):
    img = bytearray(one_extent())
    struct.pack_into("<I", img, 80, 1 << 31)
    same_open_error(tmp_path, write(tmp_path, bytes(img)),
                    "Extent size 2147483648 is too large")


def test_bochs_hostile_disk_size_overflow(tmp_path):
    """A disk of 2^64 - 1 bytes that the catalog cannot cover."""
    img = bytearray(one_extent())
    struct.pack_into("<Q", img, 88, (1 << 64) - 1)
    same_open_error(tmp_path, write(tmp_path, bytes(img)),
                    "Catalog size is too small for this disk size")


def test_bochs_hostile_catalog_past_eof(tmp_path):
    """A catalog of 2^20 entries in a 600-byte file (qemu-img reads zeroes)."""
    img = header(64 * K * (1 << 20), 1 << 20, 64 * K) + b"\xff" * 64
    own_error(tmp_path, write(tmp_path, img), "catalog (1048576 entries at 512) extends "
              "beyond the end of the file")


def test_bochs_hostile_header_size_past_eof(tmp_path):
    own_error(tmp_path, write(tmp_path, one_extent(header_size=0xffffffff)),
              "extends beyond the end of the file")


def test_bochs_hostile_extent_number_overflow(tmp_path):
    """A catalog entry of 2^32 - 2 (an extent far past the end of the file):
    a read error, where qemu-img reads zeroes."""
    img = bytearray(one_extent())
    struct.pack_into("<I", img, 512, 0xfffffffe)
    own_error(tmp_path, write(tmp_path, bytes(img)), "Input/output error", cmd="convert")


def test_bochs_hostile_truncated(tmp_path):
    img = one_extent()
    own_error(tmp_path, write(tmp_path, img[:-40 * K]), "Input/output error", cmd="convert")
