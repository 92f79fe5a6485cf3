# SPDX-License-Identifier: BSD-3-Clause
"""vpc (VHD) against qemu-img and qemu-io 7.2.  Images qemu makes and
writes read the same in vdisk; images vdisk makes and writes have qemu's
layout byte for byte (timestamp, UUID and checksum aside) and compare
identical in qemu-img; create, info, map and the commands vpc does not
support print what qemu-img prints.  Footers of other creator
applications come from a small generator written from Microsoft's "Virtual
Hard Disk Image Format Specification", to test which size QEMU takes.
Hostile images end with a clear error under a memory and CPU limit."""
import json
import os
import random
import re
import shutil
import struct
import subprocess

import pytest

from conftest import BUILD, QEMU_IMG, VDISK_IMG, needs_vdisk_format, same_output

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
    needs_vdisk_format("vpc")


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


# ---- a VHD generator, from the specification ----

FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
UNUSED = 0xffffffff
QEMU_GEOMETRY = (302, 4, 17)          # what qemu-img gives 10 MiB: 10514432 bytes
MAX_GEOMETRY = (65535, 16, 255)


def checksum(b, at):
    """One's complement of the byte sum, the 4-byte field at `at` left out."""
    return ~(sum(b) - sum(b[at:at + 4])) & 0xffffffff


def footer(size, chs=QEMU_GEOMETRY, app=b"qemu", disk_type=DYNAMIC, data_offset=512,
           bad_checksum=False):
    """A hard disk footer: cookie, features, version, data offset, time
    stamp, creator application/version/OS, original and current size,
    geometry, disk type, checksum, UUID."""
    f = bytearray(512)
    struct.pack_into(">8sIIQI4sI4sQQHBBI", f, 0, b"conectix", 2, 0x10000, data_offset,
                     0, app, 0x50003, b"Wi2k", size, size, *chs, disk_type)
    f[68:84] = bytes(range(16))              # a fixed UUID: sides built alike
    struct.pack_into(">I", f, 64, checksum(f, 64) ^ (1 if bad_checksum else 0))
    return bytes(f)


def dyn_header(entries, block_size=2 * M, table_offset=1536):
    """A dynamic disk header without a parent."""
    h = bytearray(1024)
    struct.pack_into(">8sQQIII", h, 0, b"cxsparse", (1 << 64) - 1, table_offset, 0x10000,
                     entries, block_size)
    struct.pack_into(">I", h, 36, checksum(h, 36))
    return bytes(h)


def bitmap_size(block_size):
    return (block_size // 4096 + 511) // 512 * 512


def dynamic_image(path, foot, entries, block_size=2 * M, blocks=None, header=None):
    """Footer copy, header, BAT, the given blocks ({index: (bitmap, data)}
    appended in index order), footer.  Returns the offsets of the blocks."""
    blocks = blocks or {}
    bat_len = (entries * 4 + 511) // 512 * 512
    bat = bytearray(b"\xff" * bat_len)
    body, at, where = bytearray(), 1536 + bat_len, {}
    for i in sorted(blocks):
        bm, data = blocks[i]
        struct.pack_into(">I", bat, i * 4, at // 512)
        where[i] = at
        body += bm.ljust(bitmap_size(block_size), b"\0") + data.ljust(block_size, b"\0")
        at += bitmap_size(block_size) + block_size
    with open(path, "wb") as f:
        f.write(foot + (header or dyn_header(entries, block_size)) + bat + body + foot)
    return where


def fixed_image(path, foot, data_len):
    with open(path, "wb") as f:
        f.truncate(data_len)
        f.seek(data_len)
        f.write(foot)


def masked(path):
    """The file with the footers' time stamp, checksum and UUID zeroed."""
    with open(path, "rb") as f:
        b = bytearray(f.read())
    for off in (0, len(b) - 512):
        if off >= 0 and b[off:off + 8] == b"conectix":
            b[off + 24:off + 28] = bytes(4)
            b[off + 64:off + 84] = bytes(20)
    return bytes(b)


def info_json(prog, img, *opts):
    p = run(prog, "info", "--output=json", *opts, img)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    j.pop("actual-size", None)
    return j


def raw_of(prog, img, out, fmt="vpc"):
    p = run(prog, "convert", "-f", fmt, "-O", "raw", img, out)
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        return f.read()


def maps(prog, img):
    return [run(prog, "map", "-f", "vpc", "--output=" + o, img).stdout
            for o in ("json", "human")]


# ---- qemu-io and vdisk-io commands ----

def qemu_cmd(op):
    w = op.split()
    if w[0] == "write":
        return "write -P %s %s %s" % (w[1], w[2], w[3])
    if w[0] == "zero":
        return "write -z %s%s %s" % ("-u " if "unmap" in w else "", w[1], w[2])
    return op


def qemu_io(img, ops, fmt="vpc"):
    args = [QEMU_IO, "-f", fmt]
    for op in ops:
        args += ["-c", qemu_cmd(op)]
    p = subprocess.run(args + [str(img)], capture_output=True, text=True)
    assert p.returncode == 0 and "error" not in p.stdout.lower(), p.stdout + p.stderr


def vdisk_io(img, ops, fmt="vpc"):
    args = [VDISK_IO, "-f", fmt, str(img)]
    for op in ops:
        args += op.split() + ["--"]
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# ---- create ----

def test_help_lists_vpc():
    p = run(VDISK_IMG, "--help")
    assert "vpc" in p.stdout.split("Supported formats:")[1].split()


@pytest.mark.parametrize("with_file", [False, True])
def test_create_help(tmp_path, with_file):
    args = ["create", "-f", "vpc", "-o", "help"] + (["x.vhd"] if with_file else [])
    same_result(*both(*args, cwd=tmp_path))


CREATE_OPTS = ["", "subformat=dynamic", "subformat=fixed", "force_size=on", "force_size=off",
               "subformat=fixed,force_size=on", "force_size", "nocow=on,subformat=fixed",
               "preallocation=full", "preallocation=falloc,subformat=fixed",
               "extent_size_hint=1M,force_size=on"]
SMALL_SIZES = ["0", "1", "511", "512", "1M", "10M", "7654321", "100M"]


def create_pair(tmp_path, opts, size):
    """Create x.vhd in q/ with qemu-img and in v/ with vdisk-img: same
    messages and exit code; returns the two paths."""
    res, paths = [], []
    for prog, side in ((QEMU_IMG, "q"), (VDISK_IMG, "v")):
        d = tmp_path / side
        d.mkdir()
        res.append(run(prog, "create", "-f", "vpc", *(["-o", opts] if opts else []),
                       "x.vhd", size, cwd=d))
        paths.append(d / "x.vhd")
    same_result(*res)
    return paths


def same_info_and_map(q, v):
    """qemu-img sees the two images alike (file names aside), and vdisk-img
    sees them as qemu-img does (a fixed image of size 0 is its footer
    alone, which both take for a dynamic image's and refuse)."""
    for prog in (QEMU_IMG, VDISK_IMG):
        rq, rv = [run(prog, "info", "--output=json", "-f", "vpc", i) for i in (q, v)]
        assert rv.returncode == rq.returncode
        if rq.returncode:
            assert rv.stderr == rq.stderr.replace(str(q), str(v))
            continue
        jq, jv = json.loads(rq.stdout), json.loads(rv.stdout)
        for j in (jq, jv):
            j.pop("actual-size")
            j.pop("filename")
        assert jq == jv
        assert maps(prog, v) == [m.replace(str(q), str(v)) for m in maps(prog, q)]
    q, v = both("info", "-f", "vpc", q)
    q.stdout, v.stdout = [re.sub(r"(?m)^disk size: .*\n", "", s) for s in (q.stdout, v.stdout)]
    same_result(q, v)


@pytest.mark.parametrize("size", SMALL_SIZES)
@pytest.mark.parametrize("opts", CREATE_OPTS)
def test_create(tmp_path, opts, size):
    q, v = create_pair(tmp_path, opts, size)
    assert masked(q) == masked(v)
    same_info_and_map(q, v)


@pytest.mark.parametrize("size", ["127G", "128G", "136899993600", "2040G"])
@pytest.mark.parametrize("opts", ["", "force_size=on", "subformat=fixed",
                                  "subformat=fixed,force_size=on"])
def test_create_large(tmp_path, opts, size):
    """Past what CHS describes QEMU keeps the exact size (fixed images are
    sparse; only their footers and length are compared)."""
    q, v = create_pair(tmp_path, opts, size)
    assert os.path.getsize(q) == os.path.getsize(v)
    if "fixed" in opts:
        with open(q, "rb") as fq, open(v, "rb") as fv:
            fq.seek(-512, 2)
            fv.seek(-512, 2)
            bq, bv = bytearray(fq.read()), bytearray(fv.read())
        for b in (bq, bv):
            b[24:28], b[64:84] = bytes(4), bytes(20)
        assert bq == bv
    else:
        assert masked(q) == masked(v)
    assert info_json(VDISK_IMG, v, "-f", "vpc")["virtual-size"] == \
        info_json(QEMU_IMG, q, "-f", "vpc")["virtual-size"]


def geometry_sizes():
    """Sizes around every switch of the CHS algorithm, and a spread."""
    spt17, spt31, spt63 = 65535 * 16 * 17, 65535 * 16 * 31, 65535 * 16 * 63
    top = 65535 * 16 * 255
    sizes = set()
    for sectors in (68, 1024 * 4 * 17, 1024 * 16 * 17, spt17, spt31, 1024 * 16 * 31,
                    1024 * 16 * 63, spt63, top):
        for d in (-4081, -1, 0, 1, 17, 4080):
            if sectors + d > 0:
                sizes.add((sectors + d) * 512)
    rnd = random.Random(7)
    for _ in range(12):
        sizes.add(rnd.randrange(1, top * 512))
    return sorted(sizes)


@pytest.mark.parametrize("force", [False, True])
def test_create_geometry(tmp_path, force):
    """qemu-img's rounding to a geometry, at every boundary of the
    specification's algorithm: the same virtual size and footer."""
    opts = ["-o", "force_size=on"] if force else []
    for size in geometry_sizes():
        q, v = tmp_path / "q.vhd", tmp_path / "v.vhd"
        for prog, img in ((QEMU_IMG, q), (VDISK_IMG, v)):
            p = run(prog, "create", "-q", "-f", "vpc", *opts, img, size)
            assert p.returncode == 0, p.stderr
        assert masked(q)[:512] == masked(v)[:512], size
        assert masked(q) == masked(v), size


REFUSED = [
    ["-o", "subformat=bogus", "x.vhd", "1M"],
    ["-o", "subformat=Fixed", "x.vhd", "1M"],
    ["-o", "force_size=maybe", "x.vhd", "1M"],
    ["-o", "cluster_size=4k", "x.vhd", "1M"],
    ["-o", "preallocation=metadata", "x.vhd", "1M"],
    ["-o", "preallocation=bogus", "x.vhd", "1M"],
    ["-o", "backing_file=b.vhd", "x.vhd", "1M"],
    ["-b", "b.vhd", "-F", "vpc", "x.vhd", "1M"],
    ["x.vhd"],
    ["x.vhd", "2041G"],
    ["-o", "force_size=on", "x.vhd", "2041G"],
    ["-o", "subformat=fixed", "x.vhd", "3T"],
    ["x.vhd", "9223372036854775807"],
    ["-o", "force_size=on,subformat=fixed", "x.vhd", "9223372036854775296"],
    ["x.vhd", "9E"],
    ["x.vhd", "-1"],
]


@pytest.mark.parametrize("args", REFUSED, ids=lambda a: "_".join(a))
def test_create_refused(tmp_path, args):
    """Same message, exit code, and (as QEMU creates the file before it
    judges the size and subformat) the same file left behind."""
    qd, vd = tmp_path / "q", tmp_path / "v"
    qd.mkdir()
    vd.mkdir()
    q = run(QEMU_IMG, "create", "-f", "vpc", *args, cwd=qd)
    v = run(VDISK_IMG, "create", "-f", "vpc", *args, cwd=vd)
    same_result(q, v)
    assert q.returncode != 0
    assert os.path.exists(qd / "x.vhd") == os.path.exists(vd / "x.vhd")
    if os.path.exists(qd / "x.vhd"):
        assert os.path.getsize(qd / "x.vhd") == os.path.getsize(vd / "x.vhd")


# ---- size rules of other creator applications ----

APPS = [b"vpc ", b"qemu", b"qem2", b"win ", b"d2v ", b"d2v\0", b"CTXS", b"tap\0", b"tap ",
        b"MSFT", bytes(4)]


@pytest.mark.parametrize("calc", [None, "chs", "current_size"])
@pytest.mark.parametrize("chs", [QEMU_GEOMETRY, MAX_GEOMETRY, (0, 0, 0)],
                         ids=["chs-10M", "chs-max", "chs-0"])
@pytest.mark.parametrize("app", APPS, ids=lambda a: a.decode().replace("\0", "0").strip())
@pytest.mark.parametrize("disk_type", [DYNAMIC, FIXED])
def test_size_rules(tmp_path, disk_type, app, chs, calc):
    """CHS geometry or current_size, by creator application, maximum
    geometry and the force_size_calc option; the guest size decides what
    the image reads too."""
    img = tmp_path / "a.vhd"
    foot = footer(20 * M, chs, app, disk_type, 512 if disk_type == DYNAMIC else (1 << 64) - 1)
    if disk_type == DYNAMIC:
        dynamic_image(img, foot, 10, blocks={0: (b"\xff" * 512, b"\x5a" * 4096)})
    else:
        fixed_image(img, foot, 20 * M)
    opts = "driver=vpc,file.filename=%s" % img + (",force_size_calc=" + calc if calc else "")
    q = run(QEMU_IMG, "info", "--output=json", "--image-opts", opts)
    v = run(VDISK_IMG, "info", "--output=json", "--image-opts", opts)
    assert q.returncode == v.returncode == 0, (q.stderr, v.stderr)
    jq, jv = json.loads(q.stdout), json.loads(v.stdout)
    assert jv["virtual-size"] == jq["virtual-size"]
    assert jv.get("cluster-size") == jq.get("cluster-size")
    q = run(QEMU_IMG, "convert", "--image-opts", opts, "-O", "raw", tmp_path / "q.raw")
    v = run(VDISK_IMG, "convert", "--image-opts", opts, "-O", "raw", tmp_path / "v.raw")
    assert q.returncode == v.returncode == 0, (q.stderr, v.stderr)
    assert (tmp_path / "q.raw").read_bytes() == (tmp_path / "v.raw").read_bytes()


def test_size_calc_invalid(tmp_path):
    img = tmp_path / "a.vhd"
    dynamic_image(img, footer(10514432), 6)
    for opt in ("force_size_calc=bogus", "force_size=on"):
        same_result(*both("info", "--image-opts", "driver=vpc,%s,file.filename=%s" % (opt, img)))


@pytest.mark.parametrize("disk_type", [0, 1, FIXED, DIFFERENCING, 5, 0xffffffff])
def test_disk_types(tmp_path, disk_type):
    """QEMU 7.2 opens any disk type in a footer at offset 0 as a dynamic
    image (a differencing image without its parent: unwritten blocks read
    as zeroes), except that a fixed type reads the file at the guest
    offset; a footer at the end must say fixed."""
    img = tmp_path / "a.vhd"
    dynamic_image(img, footer(10514432, disk_type=disk_type), 6,
                  blocks={1: (b"\xff" * 512, b"\x42" * 8192)})
    assert info_json(VDISK_IMG, img, "-f", "vpc") == info_json(QEMU_IMG, img, "-f", "vpc")
    assert maps(VDISK_IMG, img) == maps(QEMU_IMG, img)
    assert raw_of(VDISK_IMG, img, tmp_path / "v.raw") == raw_of(QEMU_IMG, img, tmp_path / "q.raw")
    end = tmp_path / "end.vhd"
    fixed_image(end, footer(10514432, disk_type=disk_type, data_offset=(1 << 64) - 1), 4096)
    same_result(*both("info", "-f", "vpc", end))


@pytest.mark.parametrize("where", ["copy", "fixed"])
def test_bad_checksum(tmp_path, where):
    img = tmp_path / "a.vhd"
    if where == "copy":
        dynamic_image(img, footer(10514432, bad_checksum=True), 6)
    else:
        fixed_image(img, footer(10514432, disk_type=FIXED, bad_checksum=True), 10514432)
    q, v = both("info", "-f", "vpc", img)
    same_result(q, v)
    assert "Incorrect header checksum" in v.stderr


# ---- images qemu writes, read by vdisk ----

QEMU_WRITES = {
    "empty": [],
    "pattern": ["write 0x11 0 4096", "write 0x22 3145728 102400", "write 0x23 9437184 512"],
    "crossing": ["write 0x33 2096128 4096", "write 0x34 4193280 2099200"],
    "unaligned": ["write 0x66 100 1000", "write 0x67 5000000 12345"],
    "zero": ["write 0x44 0 1048576", "zero 524288 65536", "zero 6291456 2097152 unmap"],
    "discard": ["write 0x55 1048576 1048576", "discard 1048576 524288"],
}
IMAGE_KINDS = [("", "10M"), ("subformat=fixed", "10M"), ("force_size=on", "10485761"),
               ("subformat=fixed,force_size=on", "12345678"), ("", "10000001")]


@pytest.mark.parametrize("ops", sorted(QEMU_WRITES))
@pytest.mark.parametrize("opts,size", IMAGE_KINDS)
def test_qemu_image_reads(tmp_path, opts, size, ops):
    img = tmp_path / "q.vhd"
    p = run(QEMU_IMG, "create", "-q", "-f", "vpc", *(["-o", opts] if opts else []), img, size)
    assert p.returncode == 0, p.stderr
    qemu_io(img, QEMU_WRITES[ops])
    assert raw_of(VDISK_IMG, img, tmp_path / "v.raw") == raw_of(QEMU_IMG, img, tmp_path / "q.raw")
    assert maps(VDISK_IMG, img) == maps(QEMU_IMG, img)
    for fmt in ([], ["-f", "vpc"]):
        q, v = both("info", *fmt, img)
        strip = lambda s: re.sub(r"(?m)^disk size: .*\n", "", s)
        assert strip(v.stdout) == strip(q.stdout)
        assert info_json(VDISK_IMG, img, *fmt) == info_json(QEMU_IMG, img, *fmt)


# ---- images vdisk writes ----

def write_both(tmp_path, opts, size, ops):
    """The same image created and written by each side."""
    q, v = tmp_path / "q.vhd", tmp_path / "v.vhd"
    extra = ["-o", opts] if opts else []
    assert run(QEMU_IMG, "create", "-q", "-f", "vpc", *extra, q, size).returncode == 0
    assert run(VDISK_IMG, "create", "-q", "-f", "vpc", *extra, v, size).returncode == 0
    qemu_io(q, ops)
    vdisk_io(v, ops)
    return q, v


def assert_same_image(q, v):
    """Same bytes and layout, and qemu-img agrees: compare identical; check
    unsupported for vpc as in vdisk-img."""
    assert masked(q) == masked(v)
    p = run(QEMU_IMG, "compare", "-f", "vpc", "-F", "vpc", q, v)
    assert p.returncode == 0, p.stdout + p.stderr
    assert maps(QEMU_IMG, v) == [m.replace(str(q), str(v)) for m in maps(QEMU_IMG, q)]
    same_result(*[run(prog, "check", "-f", "vpc", v) for prog in (QEMU_IMG, VDISK_IMG)])


@pytest.mark.parametrize("ops", sorted(QEMU_WRITES))
@pytest.mark.parametrize("opts,size", IMAGE_KINDS)
def test_vdisk_writes(tmp_path, opts, size, ops):
    assert_same_image(*write_both(tmp_path, opts, size, QEMU_WRITES[ops]))


def random_ops(seed, size, n=40):
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


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("opts", ["", "subformat=fixed", "force_size=on"])
def test_random_writes(tmp_path, opts, seed):
    q, v = write_both(tmp_path, opts, "24M", [])
    size = info_json(QEMU_IMG, q, "-f", "vpc")["virtual-size"]
    ops = random_ops(seed * 31 + len(opts), size)
    qemu_io(q, ops)
    vdisk_io(v, ops)
    assert_same_image(q, v)
    assert raw_of(VDISK_IMG, v, tmp_path / "v.raw") == raw_of(QEMU_IMG, q, tmp_path / "q.raw")


# ---- sector bitmaps (beyond QEMU) ----

def test_partial_bitmap(tmp_path):
    """Sectors whose bitmap bit is clear read as zeroes (the spec; QEMU
    ignores the bitmap and reads what the block holds).  vdisk's first
    write to such a block zeroes them before setting every bit as QEMU
    does, after which both read the same."""
    img = tmp_path / "a.vhd"
    bm = bytearray(512)
    bm[0] = 0xf0                                   # sectors 0-3 present
    bm[2] = 0x80                                   # sector 16 present
    dynamic_image(img, footer(10514432), 6, blocks={0: (bytes(bm), b"\xee" * (2 * M))})
    data = raw_of(VDISK_IMG, img, tmp_path / "v.raw")
    assert data[:2048] == b"\xee" * 2048 and data[2048:8192] == bytes(6144)
    assert data[8192:8704] == b"\xee" * 512 and data[8704:2 * M] == bytes(2 * M - 8704)
    m = json.loads(run(VDISK_IMG, "map", "--output=json", img).stdout)
    assert [(e["start"], e["length"], e["data"]) for e in m] == \
        [(0, 2048, True), (2048, 6144, False), (8192, 512, True), (8704, 10514432 - 8704, False)]
    vdisk_io(img, ["write 0x11 3000 100"])
    with open(img, "rb") as f:
        f.seek(1536 + 512)
        assert f.read(512) == b"\xff" * 512
    data = raw_of(VDISK_IMG, img, tmp_path / "v.raw")
    assert data == raw_of(QEMU_IMG, img, tmp_path / "q.raw")
    assert data[3000:3100] == b"\x11" * 100 and data[2048:3000] == bytes(952)
    assert data[:2048] == b"\xee" * 2048 and data[8192:8704] == b"\xee" * 512


def test_small_blocks(tmp_path):
    """Blocks under 4 KiB have no bitmap in QEMU's arithmetic; such images
    read and grow as QEMU reads and grows them."""
    img, q = tmp_path / "v.vhd", tmp_path / "q.vhd"
    dynamic_image(img, footer(10514432), 20536 // 2, block_size=1024,
                  blocks={3: (b"", b"\x77" * 1024)})
    shutil.copy(img, q)
    ops = ["write 0x12 5000 3000", "write 0x13 0 1"]
    qemu_io(q, ops)
    vdisk_io(img, ops)
    assert masked(img) == masked(q)
    assert maps(VDISK_IMG, img) == [m.replace(str(q), str(img)) for m in maps(QEMU_IMG, q)]


# ---- conversions and the other commands ----

def source(tmp_path, fmt):
    src = tmp_path / ("src." + fmt)
    assert run(QEMU_IMG, "create", "-q", "-f", fmt, src, "9M").returncode == 0
    qemu_io(src, ["write 0x5a 1048576 3145728", "write 0x07 8388608 102400",
                  "write 0x01 8489000 7"], fmt=fmt)
    return src


@pytest.mark.parametrize("opts", ["", "subformat=fixed", "force_size=on",
                                  "subformat=fixed,force_size=on"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_to_vpc(tmp_path, fmt, opts):
    src = source(tmp_path, fmt)
    q, v = tmp_path / "q.vhd", tmp_path / "v.vhd"
    extra = ["-o", opts] if opts else []
    for prog, out in ((QEMU_IMG, q), (VDISK_IMG, v)):
        p = run(prog, "convert", "-f", fmt, "-O", "vpc", *extra, src, out)
        assert p.returncode == 0, p.stderr
    assert masked(q) == masked(v)
    p = run(QEMU_IMG, "compare", "-f", fmt, "-F", "vpc", src, v)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("opts", ["", "subformat=fixed"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_from_vpc(tmp_path, fmt, opts):
    img = tmp_path / "a.vhd"
    p = run(QEMU_IMG, "convert", "-O", "vpc", *(["-o", opts] if opts else []),
            source(tmp_path, "raw"), img)
    assert p.returncode == 0, p.stderr
    q, v = tmp_path / ("q." + fmt), tmp_path / ("v." + fmt)
    for prog, out in ((QEMU_IMG, q), (VDISK_IMG, v)):
        p = run(prog, "convert", "-f", "vpc", "-O", fmt, img, out)
        assert p.returncode == 0, p.stderr
    same_result(*both("compare", "-f", fmt, "-F", fmt, q, v))
    assert run(QEMU_IMG, "map", "--output=json", v).stdout == \
        run(QEMU_IMG, "map", "--output=json", q).stdout.replace(str(q), str(v))


UNSUPPORTED = [
    ["check", "a.vhd"], ["check", "--output=json", "a.vhd"], ["check", "-r", "all", "a.vhd"],
    ["measure", "-O", "vpc", "a.vhd"], ["measure", "-O", "vpc", "--size", "1G"],
    ["resize", "a.vhd", "20M"], ["resize", "a.vhd", "1M"], ["resize", "-f", "vpc", "a.vhd", "+1M"],
    ["amend", "-o", "size=20M", "a.vhd"], ["amend", "-f", "vpc", "-o", "subformat=fixed", "a.vhd"],
    ["snapshot", "-l", "a.vhd"], ["snapshot", "-c", "s1", "a.vhd"], ["commit", "a.vhd"],
    ["rebase", "-u", "-b", "x", "-F", "raw", "a.vhd"], ["convert", "-c", "-O", "vpc", "a.vhd", "c.vhd"],
    ["info", "--backing-chain", "a.vhd"], ["compare", "a.vhd", "a.vhd"],
    ["compare", "-s", "a.vhd", "src.raw"], ["compare", "a.vhd", "src.raw"],
    ["create", "-f", "qcow2", "-b", "a.vhd", "-F", "vpc", "o.qcow2"],
]


@pytest.mark.parametrize("args", UNSUPPORTED, ids=lambda a: "_".join(a))
def test_commands(tmp_path, args):
    """What vpc lacks (check, measure, resize, amend, snapshots, backing
    files, compression) is refused as qemu-img refuses it; compare and a
    vpc backing file work."""
    res = []
    for side in ("q", "v"):
        d = tmp_path / side
        d.mkdir()
        shutil.copy(source(tmp_path, "raw"), d / "src.raw")
        assert run(QEMU_IMG, "convert", "-O", "vpc", "src.raw", "a.vhd", cwd=d).returncode == 0
        res.append(run(QEMU_IMG if side == "q" else VDISK_IMG, *args, cwd=d))
    q, v = res
    q.stdout = re.sub(r"(?m)^disk size: .*\n", "", q.stdout)
    v.stdout = re.sub(r"(?m)^disk size: .*\n", "", v.stdout)
    same_result(q, v)


def test_dd_and_bench(tmp_path):
    src = tmp_path / "a.vhd"
    assert run(QEMU_IMG, "convert", "-O", "vpc", "-o", "force_size=on",
               source(tmp_path, "raw"), src).returncode == 0
    q, v = tmp_path / "q.vhd", tmp_path / "v.vhd"
    for prog, out in ((QEMU_IMG, q), (VDISK_IMG, v)):
        p = run(prog, "dd", "-f", "vpc", "-O", "vpc", "bs=64k", "count=90",
                "if=%s" % src, "of=%s" % out)
        assert p.returncode == 0, p.stderr
    assert masked(q) == masked(v)
    bq, bv = tmp_path / "bq.vhd", tmp_path / "bv.vhd"
    for prog, img in ((QEMU_IMG, bq), (VDISK_IMG, bv)):
        shutil.copy(src, img)
        p = run(prog, "bench", "-w", "-c", "300", "-s", "64k", "-S", "128k", "-f", "vpc", img)
        assert p.returncode == 0, p.stderr
    p = run(QEMU_IMG, "compare", bq, bv)
    assert p.returncode == 0, p.stdout
    p = run(VDISK_IMG, "bench", "-c", "300", "-s", "4k", "-f", "vpc", bv)
    assert p.returncode == 0, p.stderr


# ---- hostile images ----

def base_dynamic(path, **kw):
    """A 10 MiB dynamic image with blocks 0 and 2 written."""
    return dynamic_image(path, footer(10514432), 6,
                         blocks={0: (b"\xff" * 512, b"\x11" * 4096),
                                 2: (b"\xff" * 512, b"\x22" * 4096)}, **kw)


def patch(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def set_bat(i, v):
    return lambda p: patch(p, 1536 + 4 * i, struct.pack(">I", v))


def set_header(**fields):
    """Rewrite dynamic header fields (with a valid checksum)."""
    layout = {"table_offset": (16, ">Q"), "entries": (28, ">I"), "block_size": (32, ">I")}

    def apply(p):
        with open(p, "r+b") as f:
            f.seek(512)
            h = bytearray(f.read(1024))
            for k, v in fields.items():
                struct.pack_into(layout[k][1], h, layout[k][0], v)
            struct.pack_into(">I", h, 36, checksum(h, 36))
            f.seek(512)
            f.write(h)
    return apply


def set_footer(**fields):
    """Rewrite footer fields of the copy at 0 (checksum kept valid)."""
    layout = {"data_offset": (16, ">Q"), "current_size": (48, ">Q"), "app": (28, "4s"),
              "chs": (56, ">HBB")}

    def apply(p):
        with open(p, "r+b") as f:
            f2 = bytearray(f.read(512))
            for k, v in fields.items():
                struct.pack_into(layout[k][1], f2, layout[k][0], *(v if k == "chs" else (v,)))
            struct.pack_into(">I", f2, 64, checksum(f2, 64))
            f.seek(0)
            f.write(f2)
    return apply


def truncate_to(n):
    def apply(p):
        with open(p, "r+b") as f:
            f.truncate(n)
    return apply


def big_table(p):
    """200 GiB of 4 KiB blocks from "win ": a 200 MiB BAT of zeroes (QEMU
    takes them for blocks at offset 0) in a sparse file."""
    entries = 200 * G // 4096
    with open(p, "wb") as f:
        f.write(footer(200 * G, app=b"win ") + dyn_header(entries, 4096))
        f.truncate(1536 + entries * 4 + 8192)


def fixed_short(p):
    """A fixed image whose file ends long before its guest size."""
    with open(p, "wb") as f:
        f.write(b"\x5a" * 4096 + footer(10514432, disk_type=FIXED, data_offset=(1 << 64) - 1))


def header_over_footer(p):
    """The dynamic header at 256, inside the footer copy."""
    with open(p, "r+b") as f:
        b = bytearray(f.read())
    b[256:256 + 1024] = dyn_header(6, table_offset=1536)
    struct.pack_into(">Q", b, 16, 256)
    struct.pack_into(">I", b, 64, checksum(b[:512], 64))
    with open(p, "wb") as f:
        f.write(b)


# Where block 0 of base_dynamic sits: 1536 + 512 (BAT) = sector 4.
HOSTILE = {
    "bat_past_eof": set_bat(1, 0x100000),
    "bat_far_past_eof": set_bat(1, 0xfffffffe),
    "bat_into_footer_copy": set_bat(1, 0),
    "bat_into_header": set_bat(1, 1),
    "bat_into_bat": set_bat(1, 3),
    "bat_at_trailing_footer": set_bat(1, 8198),
    "blocks_same": set_bat(1, 4),
    "blocks_overlap": set_bat(1, 5),
    "entries_huge": set_header(entries=0xffffffff),
    "entries_int_max": set_header(entries=0x7fffffff),
    "entries_above_qemu_cap": set_header(entries=0x20000000),
    "entries_read_too_big": set_header(entries=0x1fffffff),
    "entries_past_eof": set_header(entries=0x10000000),
    "entries_zero": set_header(entries=0),
    "entries_too_few": set_header(entries=5),
    "block_size_zero": set_header(block_size=0),
    "block_size_3": set_header(block_size=3),
    "block_size_256": set_header(block_size=256),
    "block_size_not_pow2": set_header(block_size=0x80200000),
    "block_size_2g": set_header(block_size=1 << 31),
    "block_size_4k_table_too_small": set_header(block_size=4096),
    "too_many_blocks_for_vdisk": big_table,
    "size_over_2040g": set_footer(app=b"win ", current_size=2041 * G),
    "table_offset_huge": set_header(table_offset=1 << 62),
    "table_offset_past_eof": set_header(table_offset=1 << 30),
    "table_offset_zero": set_header(table_offset=0),
    "table_offset_in_footer": set_header(table_offset=448),
    "table_offset_in_header": set_header(table_offset=1024),
    "data_offset_all_ones": set_footer(data_offset=(1 << 64) - 1),
    "data_offset_huge": set_footer(data_offset=1 << 62),
    "data_offset_past_eof": set_footer(data_offset=1 << 30),
    "header_in_footer_copy": header_over_footer,
    "bad_checksum": lambda p: patch(p, 64, b"\0\0\0\0"),
    "bad_header_magic": lambda p: patch(p, 512, b"cxsparsE"),
    "truncated_empty": truncate_to(0),
    "truncated_3": truncate_to(3),
    "truncated_cookie": truncate_to(8),
    "truncated_header": truncate_to(600),
    "truncated_bat": truncate_to(1600),
    "truncated_block": truncate_to(4000),
    "truncated_trailing_footer": truncate_to(2048 + 2 * (512 + 2 * M)),
    "slack_after_footer": truncate_to(2048 + 2 * (512 + 2 * M) + 512 + M),
    "fixed_short_file": fixed_short,
}

OPS = {
    "info": ["info", "-f", "vpc", "img.vhd"],
    "map": ["map", "-f", "vpc", "img.vhd"],
    "convert": ["convert", "-f", "vpc", "-O", "raw", "img.vhd", "out.raw"],
}


def limited(args, cwd):
    """Run under a 1 GiB address-space and 20 s CPU limit (prlimit).
    AddressSanitizer reserves more address space than that, so sanitized
    builds cap single allocations through ASan instead."""
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
    base_dynamic(d / "img.vhd")
    HOSTILE[kind](d / "img.vhd")
    return d


def open_error(stderr):
    for line in stderr.splitlines():
        if "Could not open '" in line and "': " in line:
            return line.split("': ", 1)[1]
    return None


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile(tmp_path, kind, op):
    """No crash, hang or huge allocation; where qemu-img refuses the image
    vdisk-img refuses it with the same words."""
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    # qemu-img maps and copies that one (200 GiB of blocks all at offset
    # 0) for minutes; it opens it, vdisk refuses it.
    q = run(QEMU_IMG, *(OPS[op] if kind != "too_many_blocks_for_vdisk" else OPS["info"]),
            cwd=qd)
    try:
        v = limited([VDISK_IMG] + OPS[op], vd)
    except subprocess.TimeoutExpired:
        pytest.fail("vdisk-img %s hangs on %s" % (op, kind))
    assert 0 <= v.returncode < 64, "vdisk-img %s crashed: %s" % (op, v.stderr)
    if q.returncode != 0:
        assert v.returncode != 0, v.stdout
        if open_error(q.stderr):
            assert open_error(v.stderr) == open_error(q.stderr), (q.stderr, v.stderr)
    elif v.returncode != 0:
        # Refused beyond QEMU: a block the guest reaches overlaps metadata
        # or another block, or the table is too large to keep in memory.
        assert re.search(r"vpc: .*(overlap|more than vdisk handles)", v.stderr), v.stderr
    else:
        strip = lambda s: re.sub(r"(?m)^disk size: .*\n", "", s)
        assert strip(v.stdout) == strip(q.stdout)


# Images QEMU opens but vdisk refuses (beyond QEMU), and why.
REFUSED_BEYOND_QEMU = {
    "bat_into_footer_copy": "overlaps the image's metadata",
    "bat_into_header": "overlaps the image's metadata",
    "bat_into_bat": "overlaps the image's metadata",
    "blocks_same": "overlap",
    "blocks_overlap": "overlap",
    "table_offset_in_footer": "overlaps the footer copy or the dynamic disk header",
    "table_offset_in_header": "overlaps the footer copy or the dynamic disk header",
    "header_in_footer_copy": "overlaps the footer copy",
    "too_many_blocks_for_vdisk": "more than vdisk handles",
}


@pytest.mark.parametrize("kind", sorted(REFUSED_BEYOND_QEMU))
def test_hostile_refused(tmp_path, kind):
    vd = hostile(tmp_path, kind, "v")
    v = limited([VDISK_IMG, "info", "-f", "vpc", "img.vhd"], vd)
    assert v.returncode == 1
    assert REFUSED_BEYOND_QEMU[kind] in v.stderr, v.stderr


@pytest.mark.parametrize("kind", ["truncated_trailing_footer", "slack_after_footer",
                                  "fixed_short_file"])
def test_hostile_writes(tmp_path, kind):
    """Odd images both open take writes as qemu-io writes them: the same
    bytes after (a short fixed image grows, so its footer is no longer
    at its end and neither opens it again)."""
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    if run(QEMU_IMG, "info", "-f", "vpc", qd / "img.vhd").returncode != 0:
        pytest.skip("qemu-img does not open this image")
    ops = ["write 0x31 0 4096", "write 0x32 4194304 100", "write 0x33 10000000 65536"]
    qemu_io(qd / "img.vhd", ops)
    v = limited([VDISK_IO, "-f", "vpc", "img.vhd"] + " -- ".join(ops).split(), vd)
    assert v.returncode == 0, v.stderr
    assert masked(vd / "img.vhd") == masked(qd / "img.vhd")
