# SPDX-License-Identifier: BSD-3-Clause
"""The vdi driver against qemu-img/qemu-io 7.2: images qemu writes read the
same in vdisk; images vdisk creates and writes are byte for byte qemu's
(random UUIDs aside) and pass qemu-img check; info, map and check print the
same; every create option, and what qemu-img refuses, answer the same;
hostile images end with a clear error, never a crash, a hang or a huge
allocation.  Every image is made at run time."""
import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from conftest import BUILD, QEMU_IMG, VDISK_IMG, qimg, run, same_output, vimg, \
    needs_vdisk_format

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
K, M = 1 << 10, 1 << 20
TIMEOUT = 60

# Header fields (little endian) and the UUIDs create makes at random.
H_SIGNATURE, H_VERSION, H_HEADER_SIZE, H_TYPE = 0x40, 0x44, 0x48, 0x4c
H_OFFSET_BMAP, H_OFFSET_DATA, H_SECTOR_SIZE = 0x154, 0x158, 0x168
H_DISK_SIZE, H_BLOCK_SIZE, H_BLOCK_EXTRA = 0x170, 0x178, 0x17c
H_BLOCKS, H_ALLOCATED = 0x180, 0x184
H_UUID_IMAGE, H_UUID_MODIFY, H_UUID_LINK, H_UUID_PARENT = 0x188, 0x198, 0x1a8, 0x1b8
VDI_DISK_SIZE_MAX = 0x1fffff80 * M


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("vdi")


# ---- helpers ----

def qemu_cmd(op):
    """The qemu-io command for one vdisk-io command."""
    w = op.split()
    if w[0] == "write":
        return "write -P %s %s %s" % (w[1], w[2], w[3])
    if w[0] == "zero":
        return "write -z %s%s %s" % ("-u " if "unmap" in w else "", w[1], w[2])
    return op                      # discard


def qio(img, ops):
    args = [QEMU_IO, "-f", "vdi"]
    for op in ops:
        args += ["-c", qemu_cmd(op)]
    run(args + [str(img)], check=True)


def vio(img, ops):
    args = [VDISK_IO, "-f", "vdi", str(img)]
    for op in ops:
        args += op.split() + ["--"]
    run(args, check=True)


def same_bytes(a, b):
    """Do the two files hold the same bytes, the two random UUIDs aside?"""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        first = True
        while True:
            x, y = bytearray(fa.read(M)), bytearray(fb.read(M))
            if first:
                x[H_UUID_IMAGE:H_UUID_LINK] = y[H_UUID_IMAGE:H_UUID_LINK] = bytes(32)
                first = False
            if x != y:
                return False
            if not x:
                return True


def header(path, fmt, off):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def allocated(path):
    return os.stat(path).st_blocks * 512


def poke(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def no_disk_size(text):
    """Human info without the host-dependent disk size."""
    return re.sub(r"(?m)^disk size: .*\n", "", text)


def no_actual_size(text):
    d = json.loads(text)
    for e in d if isinstance(d, list) else [d]:
        e.pop("actual-size", None)
    return d


def assert_same_run(q, v):
    """Same stdout, stderr (up to the program name) and exit code."""
    assert same_output(v.stdout, q.stdout), (q.stdout, v.stdout)
    assert same_output(v.stderr, q.stderr), (q.stderr, v.stderr)
    assert v.returncode == q.returncode, (q.returncode, v.returncode, v.stderr)


def assert_same_reports(img):
    """info, map and check of img print what qemu-img prints."""
    for fmt in ("human", "json"):
        q = qimg("info", "--output=" + fmt, img, check=True).stdout
        v = vimg("info", "--output=" + fmt, img, check=True).stdout
        if fmt == "human":
            assert no_disk_size(v) == no_disk_size(q)
        else:
            assert no_actual_size(v) == no_actual_size(q)
        assert_same_run(qimg("map", "--output=" + fmt, img), vimg("map", "--output=" + fmt, img))
        assert_same_run(qimg("check", "--output=" + fmt, img),
                        vimg("check", "--output=" + fmt, img))


def in_dirs(tmp_path, args, setup=None):
    """Run qemu-img args in tmp/q and vdisk-img args in tmp/v (each with a
    1 MiB base.raw, then setup(dir)); returns both results and dirs."""
    res = []
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        d = tmp_path / side
        d.mkdir()
        run([QEMU_IMG, "create", "-q", "-f", "raw", str(d / "base.raw"), "1M"], check=True)
        if setup:
            setup(d)
        res.append(subprocess.run([prog] + [str(a) for a in args], capture_output=True,
                                  text=True, cwd=d, timeout=TIMEOUT))
    return res[0], res[1], tmp_path / "q", tmp_path / "v"


def raw_of(tool, img, out):
    tool("convert", "-f", "vdi", "-O", "raw", img, out, check=True)
    return open(out, "rb").read()


def pair(tmp_path, size, opts="static=off"):
    """The same new image made by vdisk-img (v) and qemu-img (q)."""
    v, q = tmp_path / "v.vdi", tmp_path / "q.vdi"
    vimg("create", "-q", "-f", "vdi", "-o", opts, v, size, check=True)
    qimg("create", "-q", "-f", "vdi", "-o", opts, q, size, check=True)
    return v, q


def assert_same_image(v, q):
    """vdisk's image is qemu's, byte for byte (UUIDs aside), and clean."""
    assert os.path.getsize(v) == os.path.getsize(q)
    assert same_bytes(v, q)
    p = qimg("check", v)
    assert p.returncode == 0, p.stdout + p.stderr
    p = qimg("compare", v, q)
    assert p.returncode == 0, p.stdout + p.stderr


# Writes, zero writes and discards, as vdisk-io commands (qemu-io's in
# qemu_cmd; S stands for the image size): partial blocks, block
# boundaries, the tail of sizes that are not whole blocks, blocks
# allocated out of order.
OPS = {
    "partial": ["write 0x11 3145728 4096", "write 0x22 0 512", "write 0x33 1000 70000"],
    "across_blocks": ["write 0x11 1048000 2000", "write 0x22 3000000 S-3000000"],
    "out_of_order": ["write 0x11 4194304 1", "write 0x22 0 1", "write 0x33 2097152 65536",
                     "write 0x44 1048576 1048576"],
    "zero_writes": ["write 0x11 0 2097152", "zero 1048576 1048576", "zero 3145728 4096",
                    "zero 4194304 S-4194304 unmap"],
    "discards": ["write 0x11 0 3145728", "discard 0 1048576", "discard 2097152 4096",
                 "write 0x22 1048576 512"],
    "tail": ["write 0x55 S-1192 1192", "write 0x66 4194304 512"],
    "rewrite": ["write 0x11 0 1048576", "write 0x22 512 512", "write 0x33 0 4096"],
}
SIZES = ["5000000", "5M", "4194816"]


def ops_for(name, size):
    """OPS[name] for an image of size bytes."""
    n = {"5M": 5 * M}.get(size) or int(size)
    return [" ".join(str(eval(w, {"S": n})) if "S" in w else w for w in op.split())
            for op in OPS[name]]


# ---- create ----

def test_listed_in_help():
    assert "vdi" in vimg("--help").stdout.split("Supported formats:")[1].split()


@pytest.mark.parametrize("with_file", [False, True])
def test_create_help(tmp_path, with_file):
    args = ["create", "-f", "vdi", "-o", "help"] + ([tmp_path / "x.vdi"] if with_file else [])
    assert_same_run(qimg(*args), vimg(*args))


@pytest.mark.parametrize("static", ["off", "on"])
@pytest.mark.parametrize("size", ["0", "512", "1000", "1M", "5000000", "64M", "129M"])
def test_create_same_bytes(tmp_path, size, static):
    q, v, qd, vd = in_dirs(tmp_path, ["create", "-f", "vdi", "-o", "static=" + static,
                                      "img.vdi", size])
    assert_same_run(q, v)
    assert_same_image(vd / "img.vdi", qd / "img.vdi")
    assert_same_reports(vd / "img.vdi")


def test_create_uuids(tmp_path):
    """Image and modification UUIDs are random version 4 UUIDs stored with
    their first three fields little endian; link and parent are null."""
    seen = set()
    for i in range(2):
        img = tmp_path / ("%d.vdi" % i)
        vimg("create", "-q", "-f", "vdi", img, "1M", check=True)
        raw = open(img, "rb").read()
        for off in (H_UUID_IMAGE, H_UUID_MODIFY):
            u = raw[off:off + 16]
            assert u[7] >> 4 == 4 and u[8] >> 6 == 2, u.hex()
            seen.add(u)
        assert raw[H_UUID_LINK:H_UUID_LINK + 32] == bytes(32)
    assert len(seen) == 4


@pytest.mark.parametrize("args", [
    ["-o", "static=on,preallocation=full", "@", "3M"],
    ["-o", "preallocation=falloc", "@", "3M"],
    ["-o", "preallocation=off,static=off", "@", "3M"],
    ["-o", "preallocation=metadata", "@", "1M"],
    ["-o", "preallocation=bogus", "@", "1M"],
    ["-o", "static=maybe", "@", "1M"],
    ["-o", "static", "@", "1M"],
    ["-o", "static=yes", "@", "2M"],
    ["-o", "cluster_size=1M", "@", "1M"],
    ["-o", "size=3M,static=on", "@"],
    ["-o", "size=3M", "@", "3M"],
    ["-o", "nocow=on", "@", "1M"],
    ["-o", "extent_size_hint=1M", "@", "1M"],
    ["@", "1P"],
    ["@", "%d" % (VDI_DISK_SIZE_MAX + 1)],
    ["@", "-1"],
    ["@"],
    ["-b", "base.raw", "-F", "raw", "@", "1M"],
    ["-o", "backing_file=base.raw", "@", "1M"],
    ["-u", "-b", "base.raw", "-F", "raw", "@"],
])
def test_create_options(tmp_path, args):
    """Each create option and each refusal: same output, exit code, file."""
    q, v, qd, vd = in_dirs(tmp_path, ["create", "-f", "vdi"] +
                           [x.replace("@", "img.vdi") for x in args])
    assert_same_run(q, v)
    qf, vf = qd / "img.vdi", vd / "img.vdi"
    assert qf.exists() == vf.exists()
    if qf.exists() and os.path.getsize(qf) > 0:
        assert_same_image(vf, qf)


def test_create_large(tmp_path):
    """A 100 GiB image (a 400 KiB block map): qemu-img's file, sparse alike."""
    v, q = pair(tmp_path, "100G")
    assert_same_image(v, q)
    assert allocated(v) <= allocated(q) + 64 * K
    assert_same_reports(v)


# ---- qemu writes, vdisk reads ----

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("static", ["off", "on"])
@pytest.mark.parametrize("ops", sorted(OPS))
def test_qemu_written_reads_same(tmp_path, ops, static, size):
    img = tmp_path / "q.vdi"
    qimg("create", "-q", "-f", "vdi", "-o", "static=" + static, img, size, check=True)
    qio(img, ops_for(ops, size))
    assert raw_of(vimg, img, tmp_path / "v.raw") == raw_of(qimg, img, tmp_path / "q.raw")
    assert_same_reports(img)


def test_qemu_random_writes_read_same(tmp_path):
    """Many random writes, zero writes and discards (seeded)."""
    import random
    rnd = random.Random(7)
    size = 24 * M + 3 * 512
    img = tmp_path / "q.vdi"
    qimg("create", "-q", "-f", "vdi", img, size, check=True)
    ops = []
    for i in range(60):
        off = rnd.randrange(0, size // 512) * 512
        length = min(rnd.choice([512, 4096, 65536, 300 * K, M + 512]), size - off)
        kind = rnd.choice(["write", "write", "zero", "discard"])
        ops.append("write 0x%02x %d %d" % (i + 1, off, length) if kind == "write"
                   else "%s %d %d" % (kind, off, length))
    qio(img, ops)
    assert raw_of(vimg, img, tmp_path / "v.raw") == raw_of(qimg, img, tmp_path / "q.raw")
    assert_same_reports(img)
    # ... and the same writes through vdisk make the same image
    v = tmp_path / "v.vdi"
    vimg("create", "-q", "-f", "vdi", v, size, check=True)
    vio(v, ops)
    assert_same_image(v, img)


# ---- vdisk writes, qemu reads ----

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("static", ["off", "on"])
@pytest.mark.parametrize("ops", sorted(OPS))
def test_vdisk_writes_same_image(tmp_path, ops, static, size):
    v, q = pair(tmp_path, size, "static=" + static)
    vio(v, ops_for(ops, size))
    qio(q, ops_for(ops, size))
    assert_same_image(v, q)
    assert_same_reports(v)


@pytest.mark.parametrize("static", ["off", "on"])
def test_convert_from_raw(tmp_path, static):
    """Random data with zero holes (whole blocks, partial blocks, a size
    that is no whole number of blocks): vdisk's convert makes qemu's image;
    back to raw and to qcow2 both ways reads the same."""
    src = tmp_path / "src.raw"
    data = bytearray(os.urandom(7 * M + 1000))
    data[2 * M:4 * M] = bytes(2 * M)
    data[5 * M + 4096:6 * M] = bytes(M - 4096)
    open(src, "wb").write(data)
    v, q = tmp_path / "v.vdi", tmp_path / "q.vdi"
    vimg("convert", "-f", "raw", "-O", "vdi", "-o", "static=" + static, src, v, check=True)
    qimg("convert", "-f", "raw", "-O", "vdi", "-o", "static=" + static, src, q, check=True)
    assert_same_image(v, q)
    assert_same_reports(v)
    assert raw_of(vimg, q, tmp_path / "b.raw")[:len(data)] == bytes(data)
    # vdi -> qcow2 -> vdi with vdisk, checked by qemu
    vimg("convert", "-f", "vdi", "-O", "qcow2", v, tmp_path / "v.qcow2", check=True)
    vimg("convert", "-f", "qcow2", "-O", "vdi", tmp_path / "v.qcow2", tmp_path / "w.vdi",
         check=True)
    qimg("convert", "-f", "vdi", "-O", "qcow2", q, tmp_path / "q.qcow2", check=True)
    for img in ("v.qcow2", "w.vdi"):
        p = qimg("check", tmp_path / img)
        assert p.returncode == 0, p.stdout + p.stderr
        p = qimg("compare", tmp_path / img, src)
        assert p.returncode == 0, p.stdout + p.stderr
    assert_same_run(qimg("compare", v, q), vimg("compare", v, q))
    assert_same_run(qimg("compare", "-s", v, q), vimg("compare", "-s", v, q))


def test_dd(tmp_path):
    src = tmp_path / "src.raw"
    open(src, "wb").write(os.urandom(3 * M) + bytes(M) + os.urandom(512))
    res = {}
    for tool, name in ((vimg, "v"), (qimg, "q")):
        img = tmp_path / (name + ".vdi")
        tool("dd", "-f", "raw", "-O", "vdi", "bs=64k", "count=70", "if=%s" % src,
             "of=%s" % img, check=True)
        out = tmp_path / (name + ".out")
        tool("dd", "-f", "vdi", "-O", "raw", "bs=1M", "if=%s" % img, "of=%s" % out,
             check=True)
        res[name] = open(out, "rb").read()
    assert_same_image(tmp_path / "v.vdi", tmp_path / "q.vdi")
    assert res["v"] == res["q"]


def test_bench_parallel_writes(tmp_path):
    """Many writers allocating at once: a clean image that reads as the
    written pattern everywhere it was written."""
    img = tmp_path / "v.vdi"
    vimg("create", "-q", "-f", "vdi", img, "64M", check=True)
    vimg("bench", "-f", "vdi", "-w", "-d", "32", "-c", "4096", "-s", "16k", "-S", "16k",
         "--pattern=0x5a", img, check=True)
    p = qimg("check", img)
    assert p.returncode == 0, p.stdout + p.stderr
    data = raw_of(qimg, img, tmp_path / "o.raw")
    assert data == b"\x5a" * len(data)
    assert header(img, "<I", H_ALLOCATED) == 64
    vimg("bench", "-f", "vdi", "-d", "16", "-c", "4000", "-s", "16k", img, check=True)


# ---- other commands ----

@pytest.mark.parametrize("args", [
    ["resize", "@", "8M"], ["resize", "-f", "vdi", "@", "+1M"],
    ["resize", "--shrink", "@", "2M"],
    ["measure", "-O", "vdi", "--size", "10M"], ["measure", "-O", "vdi", "@"],
    ["measure", "-f", "vdi", "-O", "qcow2", "@"], ["measure", "-f", "vdi", "-O", "raw", "@"],
    ["amend", "-o", "static=on", "@"], ["check", "-r", "leaks", "@"],
    ["check", "-r", "all", "--output=json", "@"], ["snapshot", "-l", "@"],
    ["snapshot", "-c", "s1", "@"], ["commit", "@"],
    ["rebase", "-u", "-b", "base.raw", "-F", "raw", "@"],
    ["info", "--backing-chain", "@"], ["compare", "@", "@"],
    ["convert", "-c", "-f", "raw", "-O", "vdi", "base.raw", "new.vdi"],
])
def test_commands(tmp_path, args):
    """Commands vdi supports, partly or not at all: qemu-img's answers."""
    def setup(d):
        run([QEMU_IMG, "create", "-q", "-f", "vdi", str(d / "img.vdi"), "4M"], check=True)
        run([QEMU_IO, "-c", "write -P 0x11 1M 4k", str(d / "img.vdi")], check=True)
    q, v, _, _ = in_dirs(tmp_path, [x.replace("@", "img.vdi") for x in args], setup)
    if args[0] == "info":
        q.stdout, v.stdout = no_disk_size(q.stdout), no_disk_size(v.stdout)
    assert_same_run(q, v)


def test_probe(tmp_path):
    """Probed without -f, as qemu-img does."""
    img = tmp_path / "q.vdi"
    qimg("create", "-q", "-f", "vdi", img, "2M", check=True)
    qio(img, ["write 0x42 0 4096"])
    assert no_disk_size(vimg("info", img, check=True).stdout) == \
        no_disk_size(qimg("info", img, check=True).stdout)
    out = tmp_path / "o.raw"
    vimg("convert", "-O", "raw", img, out, check=True)
    assert open(out, "rb").read(4096) == b"\x42" * 4096


# ---- images qemu-img does not make but opens ----

def vbox_image(path, size, entries, text=b"<<< Oracle VM VirtualBox Disk Image >>>\n",
               header_size=0x190, data_off=M, disk_size=None):
    """A dynamic image laid out as VirtualBox lays it out (other header
    text and size, data aligned to 1 MiB); entries: block map values."""
    blocks = (size + M - 1) // M
    h = bytearray(512)
    h[:len(text)] = text
    struct.pack_into("<IIII", h, H_SIGNATURE, 0xbeda107f, 0x00010001, header_size, 1)
    struct.pack_into("<II", h, H_OFFSET_BMAP, 0x200, data_off)
    struct.pack_into("<I", h, H_SECTOR_SIZE, 512)
    used = [e for e in entries if e < 0xfffffffe]
    struct.pack_into("<QIIII", h, H_DISK_SIZE, disk_size or size, M, 0, blocks, len(used))
    h[H_UUID_IMAGE:H_UUID_IMAGE + 32] = os.urandom(32)
    bmap = bytearray(b"\xff" * (blocks * 4))
    for i, e in enumerate(entries):
        struct.pack_into("<I", bmap, 4 * i, e)
    with open(path, "wb") as f:
        f.write(h + bmap)
        f.truncate(data_off + len(used) * M)
        for e in used:
            f.seek(data_off + e * M)
            f.write(bytes([0x10 + e]) * M)


@pytest.mark.parametrize("kind", ["vbox", "discarded", "odd_size"])
def test_foreign_images(tmp_path, kind):
    """VirtualBox's layout, discarded blocks (read as zeroes, written like
    unallocated ones), a disk size that is no whole sector (rounded up,
    and written back rounded by the first allocation)."""
    v, q = tmp_path / "v.vdi", tmp_path / "q.vdi"
    if kind == "vbox":
        vbox_image(v, 6 * M, [1, 0xffffffff, 0, 0xfffffffe])
    elif kind == "discarded":
        vbox_image(v, 4 * M, [0xfffffffe, 0, 0xfffffffe, 0xffffffff], header_size=0x180,
                   data_off=0x400, text=b"<<< QEMU VM Virtual Disk Image >>>\n")
    else:
        vbox_image(v, 3 * M, [0], disk_size=3 * M - 1000)
    shutil.copy(v, q)
    assert raw_of(vimg, v, tmp_path / "v.raw") == raw_of(qimg, q, tmp_path / "q.raw")
    assert_same_reports(v)
    end = os.path.getsize(tmp_path / "v.raw")
    ops = ["write 0x77 1048576 4096", "write 0x78 %d 1000" % (end - 2000), "write 0x79 0 512"]
    vio(v, ops)
    qio(q, ops)
    assert open(v, "rb").read() == open(q, "rb").read()
    assert_same_reports(v)


@pytest.mark.parametrize("field,value,msg", [
    (H_UUID_LINK, b"\x01" * 16, "unsupported VDI image (non-NULL link UUID)"),
    (H_UUID_PARENT, b"\x02" * 16, "unsupported VDI image (non-NULL parent UUID)"),
])
def test_parent_uuid_in_base_image_refused(tmp_path, field, value, msg):
    """A normal (not differencing) image with a link or parent UUID is
    refused as qemu-img 7.2 refuses it (differencing images, of type diff,
    are read with their parent: test_vdi_diff.py)."""
    img = tmp_path / "d.vdi"
    qimg("create", "-q", "-f", "vdi", img, "1M", check=True)
    poke(img, field, value)
    for args in (["info", img], ["check", img], ["convert", "-O", "raw", img,
                                                   tmp_path / "o.raw"]):
        q, v = qimg(*args), vimg(*args)
        assert msg in q.stderr
        assert_same_run(q, v)


# ---- hostile images ----

def base_image(path):
    """8 MiB dynamic image with blocks 0, 1 and 5 written."""
    qimg("create", "-q", "-f", "vdi", path, "8M", check=True)
    qio(path, ["write 0x11 0 4096", "write 0x22 1048576 1048576", "write 0x33 5242880 512"])


def field(fmt, off, v):
    return lambda p: poke(p, off, struct.pack(fmt, v))


def seq(*fns):
    def apply(p):
        for fn in fns:
            fn(p)
    return apply


def cut(size):
    return lambda p: os.truncate(p, size)


BMAP, DATA = 0x200, 0x400       # the base image's block map and data
HOSTILE = {
    "bmap_entry_past_eof": field("<I", BMAP + 4 * 2, 6),
    "bmap_entry_out_of_range": field("<I", BMAP, 0x12345),
    "bmap_entry_huge": field("<I", BMAP + 4, 0xfffffffd),
    "bmap_entries_same_block": field("<I", BMAP + 4 * 5, 0),
    "bmap_all_same_block": lambda p: poke(p, BMAP, struct.pack("<I", 1) * 8),
    "data_offset_in_header": field("<I", H_OFFSET_DATA, 0),
    "data_offset_in_bmap": field("<I", H_OFFSET_DATA, BMAP),
    "data_offset_unaligned": field("<I", H_OFFSET_DATA, DATA + 1),
    "data_offset_huge": field("<I", H_OFFSET_DATA, 0xfffffe00),
    "bmap_offset_zero": field("<I", H_OFFSET_BMAP, 0),
    "bmap_offset_unaligned": field("<I", H_OFFSET_BMAP, BMAP + 4),
    "bmap_offset_past_eof": field("<I", H_OFFSET_BMAP, 0x7fff0000),
    "bmap_offset_after_data": field("<I", H_OFFSET_BMAP, 0x600),
    "disk_size_huge": field("<Q", H_DISK_SIZE, 1 << 62),
    "disk_size_max": field("<Q", H_DISK_SIZE, VDI_DISK_SIZE_MAX),
    "disk_size_beyond_blocks": field("<Q", H_DISK_SIZE, 9 * M),
    "disk_size_all_ones": field("<Q", H_DISK_SIZE, (1 << 64) - 1),
    "blocks_zero": field("<I", H_BLOCKS, 0),
    "blocks_huge": seq(field("<I", H_BLOCKS, 0x1fffff80), field("<I", H_OFFSET_DATA, 1 << 31),
                       field("<Q", H_DISK_SIZE, VDI_DISK_SIZE_MAX)),
    "blocks_huge_small_disk": seq(field("<I", H_BLOCKS, 0x1fffff80),
                                  field("<I", H_OFFSET_DATA, 1 << 31)),
    "blocks_too_many": field("<I", H_BLOCKS, 0x20000000),
    "blocks_allocated_huge": field("<I", H_ALLOCATED, 0xffffffff),
    "blocks_allocated_low": field("<I", H_ALLOCATED, 1),
    "block_size_zero": field("<I", H_BLOCK_SIZE, 0),
    "block_size_absurd": field("<I", H_BLOCK_SIZE, 0xffffffff),
    "block_size_4k": field("<I", H_BLOCK_SIZE, 4096),
    "block_extra": field("<I", H_BLOCK_EXTRA, 512),
    "sector_size_4k": field("<I", H_SECTOR_SIZE, 4096),
    "header_size_zero": field("<I", H_HEADER_SIZE, 0),
    "header_size_huge": field("<I", H_HEADER_SIZE, 0xffffffff),
    "image_type_zero": field("<I", H_TYPE, 0),
    "image_type_undo": field("<I", H_TYPE, 3),
    "version_1_0": field("<I", H_VERSION, 0x00010000),
    "version_2_1": field("<I", H_VERSION, 0x00020001),
    "signature_bad": field("<I", H_SIGNATURE, 0xbeda1070),
    "truncated_in_header": cut(300),
    "truncated_in_bmap": seq(field("<I", H_BLOCKS, 4000), field("<I", H_OFFSET_DATA, 0x4200),
                             cut(0x1000)),
    "truncated_in_data": cut(DATA + M + 4096),
    "truncated_to_bmap": cut(DATA),
}

OPS_HOSTILE = {
    "info": ["info", "-f", "vdi", "img.vdi"],
    "map": ["map", "-f", "vdi", "img.vdi"],
    "check": ["check", "-f", "vdi", "img.vdi"],
    "convert": ["convert", "-f", "vdi", "-O", "raw", "img.vdi", "out.raw"],
}
# Where qemu-img reads a 2 GiB block map of zeroes (and check prints half
# a billion "also used by" lines), it is not run: vdisk refuses the map
# past the end of the file with a message of its own.
PEER_OPS = {"blocks_huge": (), "blocks_huge_small_disk": ()}
# Writes in place (block 1) and allocating (block 3), through vdisk-io.
WRITE = [VDISK_IO, "-f", "vdi", "img.vdi", "write", "0x99", "1048576", "8192", "--",
         "write", "0x98", "3145728", "4096"]


def limited(args, cwd):
    """vdisk under prlimit (1 GiB of address space, 20 s of CPU); sanitized
    builds cap allocations through ASan instead (its shadow memory needs
    more address space than that)."""
    env = dict(os.environ)
    if os.environ.get("VDISK_SANITIZED"):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=1024"
        prefix = []
    else:
        prefix = ["prlimit", "--as=1073741824", "--cpu=20", "--"]
    return subprocess.run(prefix + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, timeout=TIMEOUT, env=env)


def hostile(tmp_path, kind, side):
    d = tmp_path / side
    d.mkdir()
    src = tmp_path / "base.vdi"
    if not src.exists():
        base_image(src)
    shutil.copy(src, d / "img.vdi")
    HOSTILE[kind](d / "img.vdi")
    return d


def open_error(stderr):
    """The reason of a "Could not open 'x': reason" line."""
    for line in stderr.splitlines():
        if "Could not open '" in line and "': " in line:
            return line.split("': ", 1)[1]
    return None


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile(tmp_path, kind):
    """Every command on the image: no crash, no hang, bounded memory; an
    error (message, nonzero exit) wherever qemu-img fails, and qemu-img's
    own message when it refuses to open the image."""
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    for op in ("info", "map", "check", "convert", "write"):
        if op == "write":       # vdisk's own writer, no peer
            args, q = WRITE, None
        elif op not in PEER_OPS.get(kind, OPS_HOSTILE):
            args, q = [VDISK_IMG] + OPS_HOSTILE[op], None
        else:
            args = [VDISK_IMG] + OPS_HOSTILE[op]
            q = subprocess.run([QEMU_IMG] + OPS_HOSTILE[op], capture_output=True,
                               text=True, cwd=qd, timeout=TIMEOUT)
        try:
            v = limited(args, vd)
        except subprocess.TimeoutExpired:
            pytest.fail("vdisk-img %s hangs on %s" % (op, kind))
        assert 0 <= v.returncode < 64, "vdisk-img %s crashed: %s" % (op, v.stderr)
        assert "Sanitizer" not in v.stderr and "runtime error" not in v.stderr, v.stderr
        if v.returncode:
            assert v.stderr.strip(), "no error message"
        if q is None:
            continue
        if q.returncode != 0:
            assert v.returncode != 0, (op, q.stderr, v.stdout, v.stderr)
        reason = open_error(q.stderr)
        if reason:
            assert reason in v.stderr, (q.stderr, v.stderr)
        if op == "check" and q.returncode == 2 and open_error(v.stderr) is None:
            assert v.returncode == 2, (q.stdout + q.stderr, v.stdout + v.stderr)
        if op == "check" and q.returncode == 0 and v.returncode == 0:
            assert_same_run(q, v)
    # whatever vdisk wrote, the file did not grow without bound
    assert os.path.getsize(vd / "img.vdi") < 1 << 34


# Hostile images vdisk refuses (or cannot read) where qemu-img reads
# zeroes or another block: the reasons are vdisk's own.
VDISK_REFUSES = {
    "bmap_entry_past_eof": ("check", 2, "lies beyond the end of the file"),
    "bmap_entry_out_of_range": ("convert", 1, "Input/output error"),
    "data_offset_in_header": ("info", 1, "overlaps the block map"),
    "data_offset_in_bmap": ("info", 1, "overlaps the block map"),
    "bmap_offset_zero": ("info", 1, "overlaps the header"),
    "bmap_offset_after_data": ("info", 1, "overlaps the block map"),
    "blocks_huge_small_disk": ("info", 1, "extends beyond the end of the file"),
    "header_size_zero": ("info", 1, "header size 0x0 is below 0x180"),
    "header_size_huge": ("info", 1, "overlaps the header"),
    "image_type_zero": ("info", 1, "unsupported VDI image (image type 0)"),
    "image_type_undo": ("info", 1, "unsupported VDI image (image type 3)"),
    "block_extra": ("info", 1, "unsupported VDI image (512 extra bytes per block)"),
    "truncated_in_bmap": ("info", 1, "extends beyond the end of the file"),
    "truncated_in_data": ("check", 2, "lies beyond the end of the file"),
}


@pytest.mark.parametrize("kind", sorted(VDISK_REFUSES))
def test_hostile_vdisk_message(tmp_path, kind):
    vd = hostile(tmp_path, kind, "v")
    op, rc, msg = VDISK_REFUSES[kind]
    v = limited([VDISK_IMG] + OPS_HOSTILE[op], vd)
    assert v.returncode == rc and msg in v.stderr, v.stderr
    if rc == 2:
        c = limited([VDISK_IMG] + OPS_HOSTILE["convert"], vd)
        assert c.returncode == 1 and "Input/output error" in c.stderr, c.stderr


def test_hostile_count_blocks_writes(tmp_path):
    """A header that counts fewer blocks than the map uses would make the
    next allocation reuse a block: vdisk refuses that write (qemu-img
    check reports the count)."""
    vd = hostile(tmp_path, "blocks_allocated_low", "v")
    v = limited(WRITE, vd)
    assert v.returncode == 1 and "the image is corrupt" in v.stderr, v.stderr
    data = raw_of(vimg, vd / "img.vdi", tmp_path / "o.raw")
    assert data[M:M + 8192] == b"\x99" * 8192        # the write in place
    assert data[3 * M:4 * M] == bytes(M)               # not the allocating one
    assert header(vd / "img.vdi", "<I", H_ALLOCATED) == 1
