# SPDX-License-Identifier: BSD-3-Clause
"""Hostile bitmap directories and tables: vdisk gives qemu-img's answer
(or a clear error), never crashes, within 1 GiB of address space and 20 s
of CPU."""
import os
import struct

import pytest

from conftest import VDISK_IMG, qimg, run, needs_vdisk_format
from bitmap_helpers import make, norm

BITMAPS_EXT = 0x23852875


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("qcow2")


def ext_pos(data):
    """Offset of the bitmaps extension's data in the header."""
    hlen = struct.unpack(">I", data[100:104])[0]
    off = hlen
    while off + 8 <= 65536:
        t, ln = struct.unpack(">II", data[off:off + 8])
        if t == 0:
            break
        if t == BITMAPS_EXT:
            return off + 8
        off += 8 + (ln + 7) // 8 * 8
    raise AssertionError("no bitmaps extension")


def patch(img, fn):
    """fn(data, ext, dir) edits the bytearray: ext and dir are offsets."""
    data = bytearray(img.read_bytes())
    e = ext_pos(data)
    d = struct.unpack(">Q", data[e + 16:e + 24])[0]
    fn(data, e, d)
    img.write_bytes(bytes(data))


def vrun(*args):
    """vdisk-img within 1 GiB of address space and 20 s of CPU; sanitized
    builds (VDISK_SANITIZED) cap allocations through ASan instead."""
    if os.environ.get("VDISK_SANITIZED"):
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=1024"
        return run(["prlimit", "--cpu=20", VDISK_IMG] + [str(a) for a in args],
                   timeout=60, env=env)
    return run(["prlimit", "--as=1073741824", "--cpu=20", VDISK_IMG] +
               [str(a) for a in args], timeout=60)


def u8(o, v):
    return lambda d, e, di: d.__setitem__(slice(di + o, di + o + 1), bytes([v]))


def be(o, fmt, v, base="dir"):
    def f(d, e, di):
        at = (di if base == "dir" else e) + o
        d[at:at + struct.calcsize(fmt)] = struct.pack(fmt, v)
    return f


CASES = {
    "gran-8": u8(17, 8),
    "gran-32": u8(17, 32),
    "gran-63": u8(17, 63),
    "type-2": u8(16, 2),
    "reserved-flag": be(12, ">I", 0x10),
    "in-use-gran-40": lambda d, e, di: (u8(17, 40)(d, e, di), be(12, ">I", 3)(d, e, di)),
    "name-past-end": be(18, ">H", 0xffff),
    "name-1024": be(18, ">H", 1024),
    "extra-data": be(20, ">I", 8),
    "extra-huge": be(20, ">I", 0xffffffff),
    "table-size-0": be(8, ">I", 0),
    "table-size-2": be(8, ">I", 2),
    "table-size-huge": be(8, ">I", 0x8000001),
    "table-off-0": be(0, ">Q", 0),
    "table-off-unaligned": be(0, ">Q", 0x10200),
    "table-off-past-end": be(0, ">Q", 1 << 40),
    "count-2": be(0, ">I", 2, "ext"),
    "count-0": be(0, ">I", 0, "ext"),
    "count-65536": be(0, ">I", 65536, "ext"),
    "dir-size-0": be(8, ">Q", 0, "ext"),
    "dir-size-8": be(8, ">Q", 8, "ext"),
    "dir-size-huge": be(8, ">Q", 1 << 40, "ext"),
    "dir-past-end": be(16, ">Q", 1 << 40, "ext"),
    "dir-unaligned": be(16, ">Q", 0x10008, "ext"),
    "table-entry-reserved": None,
    "table-entry-unaligned": None,
    "table-entry-all-ones": None,
    "table-entry-past-end": None,
    "tables-overlap": None,
}


def table_entry(v):
    def f(d, e, di):
        t = struct.unpack(">Q", d[di:di + 8])[0]
        d[t:t + 8] = struct.pack(">Q", v)
    return f


def overlap(d, e, di):
    """Both bitmaps name the first one's table."""
    n0 = struct.unpack(">H", d[di + 18:di + 20])[0]
    second = di + (24 + n0 + 7) // 8 * 8
    d[second:second + 8] = d[di:di + 8]


CASES["table-entry-reserved"] = table_entry(0x2)
CASES["table-entry-unaligned"] = table_entry(0x10200)
CASES["table-entry-all-ones"] = table_entry(0x1)
CASES["table-entry-past-end"] = table_entry(1 << 40)
CASES["tables-overlap"] = overlap


def in_use(f):
    """f on a bitmap marked in use (QEMU reads its table only in check)."""
    def g(d, e, di):
        d[di + 12:di + 16] = struct.pack(">I", 3)
        f(d, e, di)
    return g


CASES["autoclear-cleared"] = lambda d, e, di: d.__setitem__(slice(88, 96), bytes(8))

for _k in ("table-entry-reserved", "table-entry-unaligned", "table-entry-all-ones",
           "table-size-2", "table-off-past-end", "tables-overlap"):
    CASES["in-use-" + _k] = in_use(CASES[_k])


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_directory(tmp_path, case):
    img = make(tmp_path / "h.qcow2", "64M", [["--add", "b0"], ["--add", "b1"]])
    patch(img, CASES[case])
    for cmd in (["info"], ["info", "--output=json"], ["check"], ["check", "--output=json"]):
        v = vrun(*cmd, img)
        q = qimg(*cmd, img)
        assert v.returncode >= 0, v.stderr           # no signal
        assert "Sanitizer" not in v.stderr and "runtime error" not in v.stderr
        assert v.returncode == q.returncode, (cmd, v.stdout + v.stderr, q.stdout + q.stderr)
        assert norm(v.stdout, img) == norm(q.stdout, img), cmd
        assert norm(v.stderr, img) == norm(q.stderr, img), cmd
    # writes and bitmap commands: an error or a sane result, no crash
    for cmd in (["bitmap", "--add", img, "new"], ["bitmap", "--remove", img, "b0"],
                ["bitmap", "--clear", img, "b1"], ["resize", img, "128M"]):
        v = vrun(*cmd)
        assert v.returncode in (0, 1), v.stderr
        assert "Sanitizer" not in v.stderr and "runtime error" not in v.stderr
