# SPDX-License-Identifier: BSD-3-Clause
"""vhdx against qemu-img and qemu-io 7.2.  Images qemu makes and writes
read the same in vdisk; images vdisk makes and writes have qemu's layout
byte for byte (GUIDs, sequence numbers, checksums, the creator string and
the log aside), pass qemu-img check and compare identical in qemu-img;
create, info, map, check and the commands vhdx does not support print what
qemu-img prints.  What qemu-img cannot make comes from vhdx_gen.py, written
from [MS-VHDX]: 4096-byte logical sectors, differencing images, hostile
images (which end with a clear error under a memory and CPU limit)."""
import json
import os
import random
import re
import shutil
import struct
import subprocess

import pytest

from conftest import BUILD, QEMU_IMG, VDISK_IMG, needs_vdisk_format, same_output
import vhdx_gen as gen

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
PRLIMIT = shutil.which("prlimit")
K, M, G = 1 << 10, 1 << 20, 1 << 30
MEM_LIMIT = 1 << 30
CPU_LIMIT = 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("vhdx")


def run(prog, *args, cwd=None):
    return subprocess.run([prog] + [str(a) for a in args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def both(*args, cwd=None):
    """The same command through qemu-img and vdisk-img."""
    return run(QEMU_IMG, *args, cwd=cwd), run(VDISK_IMG, *args, cwd=cwd)


def same_result(q, v):
    assert same_output(v.stdout, q.stdout), (q.stdout, v.stdout)
    assert same_output(v.stderr, q.stderr), (q.stderr, v.stderr)
    assert v.returncode == q.returncode, (q.returncode, v.returncode, v.stderr)


def info_json(prog, img, *opts):
    p = run(prog, "info", "--output=json", *opts, img)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    j.pop("actual-size", None)
    return j


def raw_of(prog, img, out, fmt="vhdx"):
    p = run(prog, "convert", "-f", fmt, "-O", "raw", img, out)
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        return f.read()


def maps(prog, img):
    return [run(prog, "map", "-f", "vhdx", "--output=" + o, img).stdout
            for o in ("json", "human")]


def masked(path):
    """The file without what differs by design between two creators: the
    creator string, both headers (GUIDs, sequence numbers), the log, the
    page 83 GUID."""
    with open(path, "rb") as f:
        b = bytearray(f.read())
    img = gen.Image(path)
    log_len, = struct.unpack_from("<I", b, gen.HEADER_OFFS[img.cur] + 68)
    b[8:64 * K] = bytes(64 * K - 8)
    b[64 * K:192 * K] = bytes(128 * K)
    b[img.log_off:img.log_off + log_len] = bytes(log_len)
    p83 = img.item_offset(gen.GUID_PAGE83)
    b[p83:p83 + 16] = bytes(16)
    return bytes(b)


# ---- qemu-io and vdisk-io commands ----

def qemu_cmd(op):
    w = op.split()
    if w[0] == "write":
        return "write -P %s %s %s" % (w[1], w[2], w[3])
    if w[0] == "zero":
        return "write -z %s%s %s" % ("-u " if "unmap" in w else "", w[1], w[2])
    return op


def qemu_io(img, ops, fmt="vhdx"):
    args = [QEMU_IO, "-f", fmt]
    for op in ops:
        args += ["-c", qemu_cmd(op)]
    p = subprocess.run(args + [str(img)], capture_output=True, text=True)
    out = p.stdout.lower()
    assert p.returncode == 0 and "error" not in out and "failed" not in out, p.stdout + p.stderr


def vdisk_io(img, ops, fmt="vhdx"):
    args = [VDISK_IO, "-f", fmt, str(img)]
    for op in ops:
        args += op.split() + ["--"]
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# ---- create ----

def test_help_lists_vhdx():
    p = run(VDISK_IMG, "--help")
    assert re.search(r"(?m)^Supported formats:.* vhdx( |$)", p.stdout)


def test_create_help(tmp_path):
    same_result(*both("create", "-f", "vhdx", "-o", "help"))


CREATE_OPTS = [
    ("", "20M"),
    ("", "1000"),
    ("", "0"),
    ("subformat=fixed", "10M"),
    ("subformat=fixed,block_state_zero=off", "10M"),
    ("block_state_zero=off", "10M"),
    ("block_size=1M", "10M"),
    ("block_size=8M,log_size=3M", "33M"),
    ("block_size=32M,subformat=fixed,block_state_zero=off", "70M"),
    ("block_size=256M", "1G"),
    ("block_size=512M,log_size=100k", "5M"),
    ("block_size=0,log_size=2M", "101G"),
]


@pytest.mark.parametrize("opts,size", CREATE_OPTS)
def test_create(tmp_path, opts, size):
    """Same message, same layout, same info, map and check."""
    q, v = tmp_path / "q.vhdx", tmp_path / "v.vhdx"
    extra = ["-o", opts] if opts else []
    pq = run(QEMU_IMG, "create", "-f", "vhdx", *extra, q, size)
    pv = run(VDISK_IMG, "create", "-f", "vhdx", *extra, v, size)
    assert pv.stdout == pq.stdout.replace(str(q), str(v)) and pv.returncode == 0, pv.stderr
    assert os.path.getsize(v) == os.path.getsize(q)
    assert masked(v) == masked(q)
    assert info_json(VDISK_IMG, v) == info_json(QEMU_IMG, v)
    assert maps(VDISK_IMG, v) == maps(QEMU_IMG, v)
    same_result(*[run(prog, "check", v) for prog in (QEMU_IMG, VDISK_IMG)])


REFUSED = [
    ["-o", "block_size=3M"],
    ["-o", "block_size=3000000"],
    ["-o", "log_size=5G"],
    ["-o", "log_size=0"],
    ["-o", "subformat=foo"],
    ["-o", "block_state_zero=foo"],
    ["-o", "size=65T"],
    ["-o", "cluster_size=64k"],
    ["-o", "size=10M,block_size=2M"],
    ["-b", "base.vhdx", "-F", "vhdx"],
]


@pytest.mark.parametrize("args", REFUSED, ids=lambda a: a[1])
def test_create_refused(tmp_path, args):
    size = [] if args[-1] == "size=65T" else ["10M"]
    q = run(QEMU_IMG, "create", "-f", "vhdx", *args, tmp_path / "img.vhdx", *size)
    v = run(VDISK_IMG, "create", "-f", "vhdx", *args, tmp_path / "img.vhdx", *size)
    same_result(q, v)


def test_create_too_large(tmp_path):
    q, v = both("create", "-f", "vhdx", tmp_path / "img.vhdx", "65T")
    same_result(q, v)


# ---- images qemu writes ----

QEMU_WRITES = {
    "pattern": ["write 0x11 0 4096", "write 0x22 3145728 102400", "write 0x23 9437184 512"],
    "crossing": ["write 0x33 8384512 8192", "write 0x34 1048064 2099200"],
    "unaligned": ["write 0x66 100 1000", "write 0x67 5000000 12345"],
    "zero": ["write 0x44 0 1048576", "zero 524288 65536", "zero 9437184 2097152 unmap"],
    "discard": ["write 0x55 1048576 1048576", "discard 1048576 524288"],
}
IMAGE_KINDS = [("", "20M"), ("subformat=fixed", "12M"),
               ("subformat=fixed,block_state_zero=off", "12M"),
               ("block_size=1M,block_state_zero=off,log_size=2M", "11M")]


# ---- images vdisk writes ----

def write_both(tmp_path, opts, size, ops):
    """The same image created and written by each side."""
    q, v = tmp_path / "q.vhdx", tmp_path / "v.vhdx"
    extra = ["-o", opts] if opts else []
    assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", *extra, q, size).returncode == 0
    assert run(VDISK_IMG, "create", "-q", "-f", "vhdx", *extra, v, size).returncode == 0
    qemu_io(q, ops)
    vdisk_io(v, ops)
    return q, v


def assert_same_image(q, v):
    """Same layout and bytes, and qemu-img agrees: check clean, compare
    identical, same info."""
    assert masked(q) == masked(v)
    p = run(QEMU_IMG, "compare", "-f", "vhdx", "-F", "vhdx", q, v)
    assert p.returncode == 0, p.stdout + p.stderr
    q_check, v_check = [run(prog, "check", "-f", "vhdx", v) for prog in (QEMU_IMG, VDISK_IMG)]
    assert q_check.returncode == 0, q_check.stdout + q_check.stderr
    same_result(q_check, v_check)
    assert info_json(VDISK_IMG, v) == info_json(QEMU_IMG, v)


def assert_reads_same(tmp_path, img):
    """vdisk reads qemu's image as qemu does: bytes, map, info."""
    assert raw_of(VDISK_IMG, img, tmp_path / "v.raw") == raw_of(QEMU_IMG, img, tmp_path / "q.raw")
    assert maps(VDISK_IMG, img) == maps(QEMU_IMG, img)
    assert run(VDISK_IMG, "compare", img, tmp_path / "q.raw").returncode == 0
    q, v = both("info", img)
    strip = lambda s: re.sub(r"(?m)^disk size: .*\n", "", s)
    assert strip(v.stdout) == strip(q.stdout)
    assert info_json(VDISK_IMG, img, "-f", "vhdx") == info_json(QEMU_IMG, img, "-f", "vhdx")


@pytest.mark.parametrize("ops", sorted(QEMU_WRITES))
@pytest.mark.parametrize("opts,size", IMAGE_KINDS)
def test_writes(tmp_path, opts, size, ops):
    """The same writes by qemu-io and vdisk-io: vdisk reads qemu's image
    as qemu does, and its own has qemu's layout."""
    q, v = write_both(tmp_path, opts, size, QEMU_WRITES[ops])
    assert_reads_same(tmp_path, q)
    assert_same_image(q, v)


def random_ops(seed, size, n=30):
    rnd = random.Random(seed)
    ops = []
    for _ in range(n):
        off = rnd.randrange(size)
        length = rnd.choice([1, 511, 512, 4096, 65536, 3 * M, rnd.randrange(1, 300000)])
        length = max(1, min(length, size - off))
        kind = rnd.choice(["write"] * 6 + ["zero", "zero unmap", "discard"])
        if kind == "write":
            ops.append("write 0x%02x %d %d" % (rnd.randrange(1, 256), off, length))
        elif kind.startswith("zero"):
            ops.append("zero %d %d%s" % (off, length, " unmap" if "unmap" in kind else ""))
        else:
            ops.append("discard %d %d" % (off, length))
    return ops


@pytest.mark.parametrize("seed,opts", [(0, "block_size=1M"),
                                       (1, "subformat=fixed,block_state_zero=off"),
                                       (2, "block_size=32M")])
def test_random_writes(tmp_path, opts, seed):
    q, v = write_both(tmp_path, opts, "13M", [])
    ops = random_ops(seed * 31 + len(opts), 13 * M)
    qemu_io(q, ops)
    vdisk_io(v, ops)
    assert_same_image(q, v)


def test_convert_to_vhdx(tmp_path):
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(21 * M)
        f.seek(3 * M)
        f.write(os.urandom(300 * K))
        f.seek(19 * M + 5)
        f.write(b"\x77" * 4000)
    q, v = tmp_path / "q.vhdx", tmp_path / "v.vhdx"
    assert run(QEMU_IMG, "convert", "-O", "vhdx", src, q).returncode == 0
    assert run(VDISK_IMG, "convert", "-O", "vhdx", src, v).returncode == 0
    assert_same_image(q, v)
    assert run(QEMU_IMG, "compare", src, v).returncode == 0


def test_chunk_boundary(tmp_path):
    """256 MiB blocks and 512-byte sectors: 16 blocks to a chunk, so the
    17th payload entry follows a sector bitmap entry.  Each side reads the
    other's write there (read -P), and both put the block's entry at BAT
    index 17, not 16."""
    q, v = write_both(tmp_path, "block_size=256M", "5G", [])
    at = 16 * 256 * M + 5 * M
    qemu_io(q, ["write 0x41 %d 4096" % at])
    vdisk_io(v, ["write 0x42 %d 4096" % at])
    p = subprocess.run([VDISK_IO, "-f", "vhdx", str(q), "read", "0x41", str(at), "4096"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    qemu_io(v, ["read -P 0x42 %d 4096" % at])
    for img in (q, v):
        i = gen.Image(img)
        assert i.entry(16) == 0 and i.entry(17) & 7 == gen.FULLY_PRESENT
    same_result(*[run(prog, "check", v) for prog in (QEMU_IMG, VDISK_IMG)])


# ---- 4096-byte logical sectors (qemu-img makes 512 only) ----

@pytest.mark.parametrize("opts", ["block_size=1M", ""])
def test_logical_sector_4096(tmp_path, opts):
    """QEMU opens none (ENOTSUP).  vdisk writes one as qemu-io writes the
    same image with 512-byte sectors: switched back to 512, the two
    compare equal in qemu-img, byte for byte."""
    q, v = write_both(tmp_path, opts, "12M", [])
    gen.set_logical_sector(v, 4096)
    p = run(QEMU_IMG, "info", v)
    assert p.returncode == 1 and "Operation not supported" in p.stderr
    ops = ["write 0x31 0 4096", "write 0x32 1044480 8192", "zero 5242880 65536",
           "write 0x33 12578816 4096"]
    qemu_io(q, ops)
    vdisk_io(v, ops)
    assert raw_of(VDISK_IMG, v, tmp_path / "v.raw") == raw_of(QEMU_IMG, q, tmp_path / "q.raw")
    gen.set_logical_sector(v, 512)
    assert_same_image(q, v)


# ---- commands vhdx does not support, check ----

@pytest.mark.parametrize("args", [["resize", "img.vhdx", "40M"],
                                  ["measure", "-O", "vhdx", "--size", "10M"],
                                  ["check", "img.vhdx"],
                                  ["check", "--output=json", "img.vhdx"],
                                  ["check", "-r", "all", "img.vhdx"],
                                  ["info", "img.vhdx"]])
def test_commands(tmp_path, args):
    for d in ("q", "v"):
        (tmp_path / d).mkdir()
        assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", tmp_path / d / "img.vhdx",
                   "20M").returncode == 0
        qemu_io(tmp_path / d / "img.vhdx", ["write 0x12 0 4096"])
    q = run(QEMU_IMG, *args, cwd=tmp_path / "q")
    v = run(VDISK_IMG, *args, cwd=tmp_path / "v")
    if args[0] == "info":
        strip = lambda s: re.sub(r"(?m)^disk size: .*\n", "", s)
        assert strip(v.stdout) == strip(q.stdout)
    else:
        same_result(q, v)


# ---- differencing images (QEMU 7.2 opens none) ----

def differencing(tmp_path, key="relative_path", value="base.vhdx", blocks=None, size="24M"):
    """A parent with a pattern everywhere and a child made differencing by
    vhdx_gen; returns (child, the parent's bytes)."""
    base, child = tmp_path / "base.vhdx", tmp_path / "child.vhdx"
    assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", base,
               size).returncode == 0
    qemu_io(base, ["write 0x5a 0 %s" % (int(size[:-1]) * M)])
    assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", "-o",
               "block_size=1M,block_state_zero=off", child, size).returncode == 0
    gen.make_differencing(child, value, key=key, blocks=blocks)
    return child, raw_of(QEMU_IMG, base, tmp_path / "base.raw")


def test_differencing_reads(tmp_path):
    """Not present blocks read the parent, fully present ones the child,
    partially present ones sector by sector through the bitmap; ZERO
    blocks read zeroes."""
    present = {0, 1, 2, 100, 2047}
    blocks = {1: (gen.FULLY_PRESENT, b"\x11" * M, None),
              3: (gen.PARTIALLY_PRESENT, b"\x22" * M, present),
              20: (gen.FULLY_PRESENT, b"\x33" * M, None)}
    child, parent = differencing(tmp_path, blocks=blocks)
    img = gen.Image(child)
    img.set_entry(img.payload_index(5), 0, gen.ZERO)
    img.save()
    want = bytearray(parent)
    want[M:2 * M] = b"\x11" * M
    want[20 * M:21 * M] = b"\x33" * M
    want[5 * M:6 * M] = bytes(M)
    for s in present:
        want[3 * M + 512 * s:3 * M + 512 * (s + 1)] = b"\x22" * 512
    assert raw_of(VDISK_IMG, child, tmp_path / "c.raw") == bytes(want)
    info = run(VDISK_IMG, "info", child)
    assert "backing file: base.vhdx" in info.stdout, info.stdout
    assert "differencing" in info.stdout, info.stdout
    j = info_json(VDISK_IMG, child)
    assert j["backing-filename"] == "base.vhdx"
    assert j["format-specific"] == {"type": "vhdx", "data": {"subformat": "differencing"}}
    # QEMU refuses them
    assert run(QEMU_IMG, "info", child).returncode != 0


def test_differencing_writes(tmp_path):
    """A write into a not present or partially present block fills the
    rest of the block from the parent."""
    blocks = {3: (gen.PARTIALLY_PRESENT, b"\x22" * M, {0, 7, 2047})}
    child, parent = differencing(tmp_path, blocks=blocks)
    want = bytearray(parent)
    for s in (0, 7, 2047):
        want[3 * M + 512 * s:3 * M + 512 * (s + 1)] = b"\x22" * 512
    ops = ["write 0x44 1000 3000", "write 0x45 3146000 100", "write 0x46 10485760 4096"]
    vdisk_io(child, ops)
    for op in ops:
        _, byte, off, length = op.split()
        want[int(off):int(off) + int(length)] = bytes([int(byte, 16)]) * int(length)
    assert raw_of(VDISK_IMG, child, tmp_path / "c.raw") == bytes(want)
    assert run(VDISK_IMG, "check", child).returncode == 0


@pytest.mark.parametrize("key,value", [("relative_path", ".\\base.vhdx"),
                                       ("absolute_win32_path", "BASE")])
def test_differencing_locator_keys(tmp_path, key, value):
    child, parent = differencing(tmp_path, key=key,
                                 value=value.replace("BASE", str(tmp_path / "base.vhdx")))
    assert raw_of(VDISK_IMG, child, tmp_path / "c.raw") == parent


def test_differencing_locator_fallback(tmp_path):
    """A relative_path naming no file falls back to absolute_win32_path."""
    loc = gen.parent_locator([("relative_path", "gone\\base.vhdx"),
                              ("absolute_win32_path", str(tmp_path / "base.vhdx"))])
    base, child = tmp_path / "base.vhdx", tmp_path / "child.vhdx"
    assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", base, "4M").returncode == 0
    qemu_io(base, ["write 0x5b 0 4M"])
    assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", "-o", "block_state_zero=off", child,
               "4M").returncode == 0
    gen.make_differencing(child, None, locator=loc)
    assert raw_of(VDISK_IMG, child, tmp_path / "c.raw") == b"\x5b" * (4 * M)


def test_differencing_missing_parent(tmp_path):
    child, _ = differencing(tmp_path, value="nothere.vhdx")
    p = run(VDISK_IMG, "info", child)
    assert p.returncode == 0 and "nothere.vhdx" in p.stdout
    p = run(VDISK_IMG, "convert", "-O", "raw", child, tmp_path / "x.raw")
    assert p.returncode == 1 and "nothere.vhdx" in p.stderr


def test_differencing_own_parent(tmp_path):
    """A child naming itself as its parent: the loop is found and refused."""
    child, _ = differencing(tmp_path, value="child.vhdx")
    p = limited([VDISK_IMG, "convert", "-O", "raw", "child.vhdx", "x.raw"], tmp_path)
    assert p.returncode == 1 and "creates an infinite loop" in p.stderr, p.stderr


@pytest.mark.parametrize("where,why", [(1 << 40, "points after end of file"),
                                       (1 * M, "overlaps the image's metadata")])
def test_differencing_bad_bitmap(tmp_path, where, why):
    """A sector bitmap entry of a differencing image past the end of the
    file or over the log is refused at open."""
    blocks = {3: (gen.PARTIALLY_PRESENT, b"\x22" * M, {0})}
    child, _ = differencing(tmp_path, blocks=blocks)
    img = gen.Image(child)
    img.set_entry(img.bitmap_index(0), where, gen.SB_PRESENT)
    img.save()
    p = limited([VDISK_IMG, "info", "child.vhdx"], tmp_path)
    assert p.returncode == 1 and why in p.stderr, p.stderr


def test_open_without_writes_changes_nothing(tmp_path):
    """A read-write open that writes nothing leaves the file as it was
    (no header update before the first change)."""
    img = tmp_path / "q.vhdx"
    assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", img, "10M").returncode == 0
    qemu_io(img, ["write 0x12 0 4096"])
    before = open(img, "rb").read()
    p = subprocess.run([VDISK_IO, "-f", "vhdx", str(img), "read", "0x12", "0", "4096"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert open(img, "rb").read() == before


# ---- hostile images ----

_BASE = {}


def base_image(path):
    """A small qemu image with two written blocks (1 MiB blocks), made
    once per test process."""
    if "bytes" not in _BASE:
        assert run(QEMU_IMG, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", path,
                   "8M").returncode == 0
        qemu_io(path, ["write 0x61 0 4096", "write 0x62 3145728 4096"])
        with open(path, "rb") as f:
            _BASE["bytes"] = f.read()
    with open(path, "wb") as f:
        f.write(_BASE["bytes"])


def edit(fn):
    """Apply fn to the image (gen.Image) and save it."""
    def apply(path):
        img = gen.Image(path)
        fn(img)
        img.save()
    return apply


def bat(index, offset, state):
    return edit(lambda i: i.set_entry(index, offset, state))


def truncate_file(path):
    os.truncate(path, os.path.getsize(path) - 512 * K)


def bad_crc(offs):
    def apply(path):
        with open(path, "r+b") as f:
            for off in offs:
                f.seek(off + 100)
                f.write(b"\x01")
    return apply


HOSTILE = {
    "bat_past_eof": bat(2, 1 << 40, gen.FULLY_PRESENT),
    "bat_end_past_eof": truncate_file,
    "bat_into_header": bat(2, 0, gen.FULLY_PRESENT),
    "bat_into_log": bat(2, 1 * M, gen.FULLY_PRESENT),
    "bat_into_bat": bat(2, 2 * M, gen.FULLY_PRESENT),
    "bat_offset_overflow": bat(2, (1 << 64) - M, gen.FULLY_PRESENT),
    "blocks_same": edit(lambda i: i.set_entry(2, i.entry(0) & ~7, gen.FULLY_PRESENT)),
    "bad_block_state": bat(1, 0, 4),
    "partial_without_parent": edit(lambda i: i.set_entry(3, i.entry(3) & ~7,
                                                         gen.PARTIALLY_PRESENT)),
    "huge_bat_region": edit(lambda i: i.region_field(gen.GUID_BAT, "<I", 24, 0xfff00000)),
    "bat_region_too_small": edit(lambda i: i.region_field(gen.GUID_BAT, "<I", 24, 8)),
    "huge_disk_size": edit(lambda i: i.set_item(gen.GUID_DISK_SIZE, "<Q", 1 << 62)),
    "huge_metadata_region": edit(lambda i: i.region_field(gen.GUID_METADATA, "<I", 24,
                                                          0xffffffff)),
    "block_size_0": edit(lambda i: i.set_item(gen.GUID_FILE_PARAMS, "<I", 0)),
    "block_size_3M": edit(lambda i: i.set_item(gen.GUID_FILE_PARAMS, "<I", 3 * M)),
    "block_size_1G": edit(lambda i: i.set_item(gen.GUID_FILE_PARAMS, "<I", G)),
    "logical_sector_0": edit(lambda i: i.set_item(gen.GUID_LOGICAL, "<I", 0)),
    "regions_overlap": edit(lambda i: i.region_field(gen.GUID_METADATA, "<Q", 16, 2 * M)),
    "region_in_log": edit(lambda i: i.region_field(gen.GUID_BAT, "<Q", 16, 1 * M)),
    "region_in_header": edit(lambda i: i.region_field(gen.GUID_BAT, "<Q", 16, 0)),
    "bad_header_crc": bad_crc([gen.HEADER_OFFS[1]]),
    "both_headers_bad": bad_crc(gen.HEADER_OFFS),
    "bad_region_table_crc": bad_crc([gen.RT_OFFS[0]]),
    "both_region_tables_bad": bad_crc(gen.RT_OFFS),
    "unknown_required_metadata": edit(lambda i: i.add_item(b"\x42" * 16, b"x" * 8, 4,
                                                           64 * K + 256)),
    "unknown_optional_metadata": edit(lambda i: i.add_item(b"\x42" * 16, b"x" * 8, 0,
                                                           64 * K + 256)),
    "unknown_required_region": edit(lambda i: (i.b.__setitem__(
        slice(gen.RT_OFFS[0] + 16 + 64, gen.RT_OFFS[0] + 16 + 96),
        b"\x43" * 16 + struct.pack("<QII", 6 * M, M, 1)),
        struct.pack_into("<I", i.b, gen.RT_OFFS[0] + 8, 3), i.seal_region_tables())),
    "metadata_item_outside": edit(lambda i: struct.pack_into(
        "<I", i.b, i.items()[gen.GUID_DISK_SIZE][0] + 16, 0xfffffff0)),
    "metadata_count_huge": edit(lambda i: struct.pack_into("<H", i.b, i.md_off + 10, 0xffff)),
    "no_metadata_signature": edit(lambda i: i.b.__setitem__(slice(i.md_off, i.md_off + 8),
                                                            b"xxxxxxxx")),
    "log_offset_unaligned": edit(lambda i: i.header_field("<Q", 72, 12345)),
    "missing_disk_size": edit(lambda i: i.b.__setitem__(
        slice(i.items()[gen.GUID_DISK_SIZE][0], i.items()[gen.GUID_DISK_SIZE][0] + 16),
        b"\x44" * 16)),
    "size_not_sector_multiple": edit(lambda i: i.set_item(gen.GUID_DISK_SIZE, "<Q", 8 * M + 1)),
    "short_file": lambda p: os.truncate(p, 100 * K),
    "has_parent_no_locator": edit(lambda i: i.set_item(gen.GUID_FILE_PARAMS, "<II", M, 2)),
}

OPS = {
    "info": ["info", "-f", "vhdx", "img.vhdx"],
    "convert": ["convert", "-f", "vhdx", "-O", "raw", "img.vhdx", "out.raw"],
    "check": ["check", "-f", "vhdx", "img.vhdx"],
}


def limited(args, cwd):
    """Run under a 1 GiB address-space and 20 s CPU limit (prlimit);
    sanitized builds cap allocations through ASan instead."""
    env = dict(os.environ)
    if os.environ.get("VDISK_SANITIZED"):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=%d" % (MEM_LIMIT >> 20)
    elif PRLIMIT:
        args = [PRLIMIT, "--as=%d" % MEM_LIMIT, "--cpu=%d" % CPU_LIMIT, "--"] + args
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env=env)


def hostile(tmp_path, kind, side):
    d = tmp_path / side
    d.mkdir()
    base_image(d / "img.vhdx")
    HOSTILE[kind](d / "img.vhdx")
    return d


# Images both open: the hostile part is not reached or is harmless.
OPENED = {"unknown_optional_metadata", "bad_header_crc", "bad_block_state",
          "partial_without_parent"}
# Images QEMU opens (or opens in part) that vdisk refuses, and why.
REFUSED_BEYOND_QEMU = {
    "bat_into_header": "overlaps the image's metadata",
    "bat_into_log": "overlaps the image's metadata",
    "bat_into_bat": "overlaps the image's metadata",
    "blocks_same": "overlap",
    "huge_disk_size": "64 TiB",
    "region_in_header": "multiple of 1 MiB past the header section",
    "metadata_item_outside": "outside the metadata region",
    "size_not_sector_multiple": "not a multiple of the 512-byte sector",
    "huge_metadata_region": "overlaps the image's metadata",
}
# Damage only one copy, which vdisk (not QEMU) survives.
SURVIVED_BEYOND_QEMU = {"bad_region_table_crc"}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile(tmp_path, kind):
    """No crash, hang or huge allocation; a clear error, nonzero exit."""
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    q = run(QEMU_IMG, *OPS["info"], cwd=qd)
    for op in sorted(OPS):
        try:
            v = limited([VDISK_IMG] + OPS[op], vd)
        except subprocess.TimeoutExpired:
            pytest.fail("vdisk-img %s hangs on %s" % (op, kind))
        assert 0 <= v.returncode < 64, "vdisk-img %s crashed: %s" % (op, v.stderr)
        if op != "info":
            continue
        if kind in OPENED or kind in SURVIVED_BEYOND_QEMU:
            assert v.returncode == 0, v.stderr
        else:
            assert v.returncode == 1 and "Could not open 'img.vhdx': " in v.stderr, v.stderr
            if REFUSED_BEYOND_QEMU.get(kind):
                assert REFUSED_BEYOND_QEMU[kind] in v.stderr, v.stderr
            if kind not in REFUSED_BEYOND_QEMU:
                assert q.returncode != 0, q.stdout


@pytest.mark.parametrize("kind", ["bad_block_state", "partial_without_parent"])
def test_hostile_reads_fail(tmp_path, kind):
    """Blocks QEMU fails to read fail in vdisk too (EIO), without a crash."""
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    q = run(QEMU_IMG, *OPS["convert"], cwd=qd)
    v = limited([VDISK_IMG] + OPS["convert"], vd)
    assert q.returncode == 1 and v.returncode == 1, v.stderr
    assert "Input/output error" in v.stderr or "state" in v.stderr


@pytest.mark.parametrize("kind", ["bat_past_eof", "bat_end_past_eof", "bat_into_header"])
def test_hostile_check(tmp_path, kind):
    """check opens what open refuses and counts the bad entries."""
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    q = run(QEMU_IMG, *OPS["check"], cwd=qd)
    v = limited([VDISK_IMG] + OPS["check"], vd)
    assert v.returncode == 2, v.stderr
    assert "1 errors were found on the image." in v.stdout
    if kind != "bat_into_header":
        same_result(q, v)


def test_hostile_writes(tmp_path):
    """Writes to an image with a bad block state fail cleanly."""
    vd = hostile(tmp_path, "bad_block_state", "v")
    v = limited([VDISK_IO, "-f", "vhdx", "img.vhdx", "write", "0x31", str(M), "4096"], vd)
    assert v.returncode == 1 and "state" in v.stderr, v.stderr
