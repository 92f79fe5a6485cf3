# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img check on qcow2, differential against qemu-img check: the same
stdout, stderr (per-problem lines) and exit code, human and JSON, on clean
images of every layout qemu-img writes and on images damaged on purpose;
then -r leaks / -r all repairs, verified by qemu-img check (clean) and
qemu-img compare against a pristine copy (data intact).

Each side works on its own copy with the same file name (in its own
directory), so file names in the output match."""
import os
import shutil
import struct
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format, same_output

QEMU_IO = shutil.which("qemu-io")
MASK56 = (1 << 56) - 512
COPIED = 1 << 63


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


class Qcow2:
    """Just enough qcow2 parsing to damage an image on purpose."""

    def __init__(self, path):
        self.path = str(path)
        h = self.rd(0, 104)
        (_, self.version, _, _, self.cluster_bits, self.size, _, self.l1_size,
         self.l1_off, self.rt_off, self.rt_clusters, self.nb_snapshots,
         self.snap_off) = struct.unpack(">IIQIIQIIQQIIQ", h[:72])
        self.cs = 1 << self.cluster_bits
        self.refcount_bits = 16
        if self.version >= 3:
            self.refcount_bits = 1 << struct.unpack(">I", h[96:100])[0]

    def rd(self, off, n):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n)

    def wr(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def u64(self, off):
        return struct.unpack(">Q", self.rd(off, 8))[0]

    def w64(self, off, v):
        self.wr(off, struct.pack(">Q", v))

    def w32(self, off, v):
        self.wr(off, struct.pack(">I", v))

    def l1(self, i):
        return self.u64(self.l1_off + 8 * i)

    def l2_off(self, i=0):
        return self.l1(i) & MASK56

    def _refcount_pos(self, cluster):
        per = self.cs * 8 // self.refcount_bits
        rb = self.u64(self.rt_off + 8 * (cluster // per)) & ~(self.cs - 1)
        return rb, (cluster % per) * self.refcount_bits

    def set_refcount(self, cluster, v):
        rb, bit = self._refcount_pos(cluster)
        n = self.refcount_bits
        if n >= 8:
            self.wr(rb + bit // 8, v.to_bytes(n // 8, "big"))
            return
        b = self.rd(rb + bit // 8, 1)[0]
        mask = ((1 << n) - 1) << (bit % 8)
        self.wr(rb + bit // 8, bytes([(b & ~mask) | ((v << (bit % 8)) & mask)]))

    def grow(self, clusters):
        with open(self.path, "r+b") as f:
            f.truncate(os.path.getsize(self.path) + clusters * self.cs)


def sh(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, (args, p.stderr)


def make(path, opts="", size="64M", writes=((1, 0, "128k"), (2, "32M", "64k"))):
    """A qemu-img image with some data: clusters 0 header, 1 refcount table,
    2 refcount block, 3 L1, 4 L2, 5-6 data at 0, 7 data at 32M (64k)."""
    args = [QEMU_IMG, "create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    sh(*args, path, size)
    for pat, off, length in writes:
        sh(QEMU_IO, "-c", "write -P %d %s %s" % (pat, off, length), path)
    return path


# ---- images ----

def img_clean(d):
    return make(d / "img.qcow2")


def img_opts(opts, **kw):
    return lambda d: make(d / "img.qcow2", opts, **kw)


def img_compressed(d):
    make(d / "src.qcow2")
    sh(QEMU_IMG, "convert", "-c", "-O", "qcow2", d / "src.qcow2", d / "img.qcow2")
    return d / "img.qcow2"


def img_snapshots(d):
    p = make(d / "img.qcow2")
    sh(QEMU_IMG, "snapshot", "-c", "s1", p)
    sh(QEMU_IO, "-c", "write -P 7 0 64k", p)
    sh(QEMU_IMG, "snapshot", "-c", "s2", p)
    return p


def img_backing(d):
    make(d / "base.qcow2")
    p = d / "img.qcow2"
    sh(QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p)
    sh(QEMU_IO, "-c", "write -P 9 1M 64k", p)
    return p


def img_bitmaps(d):
    p = make(d / "img.qcow2")
    sh(QEMU_IMG, "bitmap", "--add", p, "b0")
    sh(QEMU_IMG, "bitmap", "--add", p, "b1")
    return p


def img_fragmented(d):
    return make(d / "img.qcow2", size="2G",
                writes=((1, 0, "64k"), (2, "1G", "64k"), (3, "64k", "64k"),
                        (4, 1 << 30 | 65536, "64k")))


CLEAN = {
    "default": img_clean,
    "empty": lambda d: make(d / "img.qcow2", writes=()),
    "cs512": img_opts("cluster_size=512"),
    "cs4k": img_opts("cluster_size=4k"),
    "cs2M": img_opts("cluster_size=2M"),
    "v2": img_opts("compat=0.10"),
    "extended_l2": img_opts("extended_l2=on"),
    "compressed": img_compressed,
    "snapshots": img_snapshots,
    "backing": img_backing,
    "bitmaps": img_bitmaps,
    "fragmented": img_fragmented,
    "lazy_refcounts": img_opts("lazy_refcounts=on"),
}
for _o in range(7):
    CLEAN["refcount_bits%d" % (1 << _o)] = img_opts("refcount_bits=%d" % (1 << _o))


def damaged(base, fn):
    """An image made by base, then changed by fn(Qcow2)."""
    def make_damaged(d):
        p = base(d)
        fn(Qcow2(p))
        return p
    return make_damaged


def leak_tail(q):
    q.grow(3)
    q.set_refcount(9, 1)


def rc_zero_first_data(q):
    q.set_refcount((q.u64(q.l2_off()) & MASK56) // q.cs, 0)


# name: (image, data stays intact after -r all)
DAMAGED = {
    "leak_bump": (damaged(img_clean, lambda q: q.set_refcount(5, 2)), True),
    "leak_tail": (damaged(img_clean, leak_tail), True),
    "leak_header": (damaged(img_clean, lambda q: q.set_refcount(0, 3)), True),
    "refcount_too_low": (damaged(img_snapshots, lambda q: q.set_refcount(5, 1)), True),
    "refcount_zero_data": (damaged(img_clean, lambda q: q.set_refcount(5, 0)), True),
    "refcount_zero_l2": (damaged(img_clean, lambda q: q.set_refcount(4, 0)), True),
    "refcount_zero_header": (damaged(img_clean, lambda q: q.set_refcount(0, 0)), True),
    "refcount_zero_all": (damaged(img_clean, lambda q: [q.set_refcount(i, 0)
                                                        for i in range(8)]), True),
    "l2_past_eof": (damaged(img_clean, lambda q: q.w64(q.l1_off, COPIED | 0x100000)),
                    False),
    "l2_unaligned": (damaged(img_clean, lambda q: q.w64(q.l1_off, COPIED | 0x40200)),
                     False),
    "data_past_eof": (damaged(img_clean, lambda q: q.w64(0x40000, COPIED | 0x500000)),
                      False),
    "data_unaligned": (damaged(img_clean, lambda q: q.w64(0x40000, COPIED | 0x50200)),
                       False),
    "prealloc_unaligned": (damaged(img_clean,
                                   lambda q: q.w64(0x40000, COPIED | 0x50201)), False),
    "l1_overlaps_reftable": (damaged(img_clean,
                                     lambda q: q.w64(q.l1_off, COPIED | q.rt_off)), False),
    "copied_missing_l1": (damaged(img_clean, lambda q: q.w64(q.l1_off, 0x40000)), True),
    "copied_missing_l2": (damaged(img_clean, lambda q: q.w64(0x40000, 0x50000)), True),
    "copied_extra_snapshot": (damaged(img_snapshots, lambda q: q.w64(
        q.l1_off, q.l1(0) | COPIED)), True),
    "refblock_outside": (damaged(img_clean, lambda q: q.w64(q.rt_off, 0x200000)), True),
    "refblock_shared": (damaged(img_clean, lambda q: q.w64(q.rt_off + 8, 0x20000)), True),
    "refblock_unaligned": (damaged(img_clean, lambda q: q.w64(q.rt_off, 0x20200)), True),
    "refblock_reserved_bits": (damaged(img_clean, lambda q: q.w64(q.rt_off, 0x20001)),
                               True),
    "l2_is_l1": (damaged(img_clean, lambda q: q.w64(q.l1_off, COPIED | q.l1_off)), False),
    "l1_reserved_bits": (damaged(img_clean, lambda q: q.w64(
        q.l1_off, COPIED | 1 << 60 | 0x40000)), True),
    "l2_reserved_bits": (damaged(img_clean, lambda q: q.w64(0x40000, COPIED | 0x50100)),
                         True),
    "dirty_bit": (damaged(img_clean, lambda q: q.w64(72, 1)), True),
    "compressed_copied": (damaged(img_compressed, lambda q: q.w64(
        q.l2_off(), q.u64(q.l2_off()) | COPIED)), True),
    "compressed_refcount_zero": (damaged(img_compressed, lambda q: q.set_refcount(
        (q.u64(q.l2_off()) & ((1 << 54) - 1)) // q.cs, 0)), True),
    "refcount1_overflow": (damaged(img_opts("refcount_bits=1"), lambda q: q.w64(
        q.l1_off + 8, q.l1(0))), False),
    "snapshot_l1_unaligned": (damaged(img_snapshots, lambda q: q.w64(
        q.snap_off, q.u64(q.snap_off) + 0x200)), False),
    "v2_leak": (damaged(img_opts("compat=0.10"), lambda q: q.set_refcount(0, 2)), True),
    "v2_refcount_zero": (damaged(img_opts("compat=0.10"), lambda q: q.set_refcount(4, 0)),
                         True),
    "extl2_bitmap_conflict": (damaged(img_opts("extended_l2=on"), lambda q: q.w64(
        q.l2_off() + 8, q.u64(q.l2_off() + 8) | 1 << 32)), False),
    "extl2_unallocated_bitmap": (damaged(img_opts("extended_l2=on"), lambda q: q.w64(
        q.l2_off() + 16 * 100 + 8, 1)), False),
}
for _o in (0, 3, 6):
    DAMAGED["refcount_bits%d_zero" % (1 << _o)] = (damaged(
        img_opts("refcount_bits=%d" % (1 << _o)), rc_zero_first_data), True)
    DAMAGED["refcount_bits%d_leak" % (1 << _o)] = (damaged(
        img_opts("refcount_bits=%d" % (1 << _o)), lambda q: q.set_refcount(0, 1) or
        leak_tail(q)), True)

# qemu-img 7.2 gives up on these repairs (its metadata overlap check trips
# on the broken structures); vdisk rebuilds the refcounts instead.
REPAIR_BETTER = {"refblock_unaligned", "refblock_reserved_bits", "l2_is_l1"}

# Opening bitmaps read-write makes QEMU move the bitmap directory, so the
# image layout after a repair differs by design.
LAYOUT_MOVES = {"bitmaps"}


def pair(tmp_path, maker):
    """The same image in q/ (for qemu-img) and v/ (for vdisk-img)."""
    src = tmp_path / "src"
    src.mkdir()
    maker(src)
    for side in ("q", "v", "pristine"):
        shutil.copytree(src, tmp_path / side)
    return tmp_path / "q", tmp_path / "v"


def run_in(args, cwd, timeout=120):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def check(tool, d, *args):
    return run_in([tool, "check"] + list(args) + ["img.qcow2"], d)


def assert_same(q, v, both_qemu=False):
    """v (vdisk-img, or qemu-img on vdisk's copy) printed what q did."""
    same = (lambda a, b: a == b) if both_qemu else same_output
    assert v.returncode == q.returncode, (q.stdout + q.stderr, v.stdout + v.stderr)
    assert same(v.stdout, q.stdout), (q.stdout, v.stdout)
    assert same(v.stderr, q.stderr), (q.stderr, v.stderr)


@pytest.mark.parametrize("args", [[], ["--output=json"], ["-q"]])
@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean(tmp_path, name, args):
    qd, vd = pair(tmp_path, CLEAN[name])
    q, v = check(QEMU_IMG, qd, *args), check(VDISK_IMG, vd, *args)
    assert_same(q, v)
    assert v.returncode == 0


@pytest.mark.parametrize("args", [[], ["--output=json"]])
@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged(tmp_path, name, args):
    qd, vd = pair(tmp_path, DAMAGED[name][0])
    q, v = check(QEMU_IMG, qd, *args), check(VDISK_IMG, vd, *args)
    assert_same(q, v)
    # A check without -r changes nothing.
    assert (qd / "img.qcow2").read_bytes() == (vd / "img.qcow2").read_bytes()


def data_intact(tmp_path, d):
    p = run_in([QEMU_IMG, "compare", "-f", "qcow2", "-F", "qcow2",
                tmp_path / "pristine" / "img.qcow2", "img.qcow2"], d)
    return p.returncode == 0


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_repair(tmp_path, name, mode):
    maker, intact = DAMAGED[name]
    qd, vd = pair(tmp_path, maker)
    q, v = check(QEMU_IMG, qd, "-r", mode), check(VDISK_IMG, vd, "-r", mode)
    after_v = check(QEMU_IMG, vd)
    if mode == "all" and name in REPAIR_BETTER:
        assert q.returncode != 0 and v.returncode == 0, v.stderr
        assert after_v.returncode == 0, after_v.stdout + after_v.stderr
        return
    assert_same(q, v)
    # The repaired images check the same with qemu-img.
    after_q = check(QEMU_IMG, qd)
    assert_same(after_q, after_v, both_qemu=True)
    if v.returncode == 0 and mode == "all":
        assert after_v.returncode == 0
    if intact and v.returncode == 0:
        assert data_intact(tmp_path, vd)


@pytest.mark.parametrize("name", ["default", "compressed", "snapshots",
                                  "extended_l2", "refcount_bits1", "bitmaps"])
def test_repair_clean_is_noop(tmp_path, name):
    qd, vd = pair(tmp_path, CLEAN[name])
    v = check(VDISK_IMG, vd, "-r", "all")
    assert v.returncode == 0 and v.stderr == ""
    if name not in LAYOUT_MOVES:
        q = check(QEMU_IMG, qd, "-r", "all")
        assert_same(q, v)
    assert data_intact(tmp_path, vd)


def test_repair_json_reports_fixed(tmp_path):
    qd, vd = pair(tmp_path, DAMAGED["leak_tail"][0])
    q = check(QEMU_IMG, qd, "-r", "leaks", "--output=json")
    v = check(VDISK_IMG, vd, "-r", "leaks", "--output=json")
    assert_same(q, v)
    assert '"leaks-fixed": 1' in v.stdout


def test_big_sparse_image_is_fast(tmp_path):
    """1 TiB with every L2 table preallocated: 16M host clusters to compare."""
    d = tmp_path / "v"
    d.mkdir()
    sh(QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
       d / "img.qcow2", "1T")
    v = run_in([VDISK_IMG, "check", "img.qcow2"], d, timeout=60)
    q = run_in([QEMU_IMG, "check", "img.qcow2"], d, timeout=120)
    assert_same(q, v)
