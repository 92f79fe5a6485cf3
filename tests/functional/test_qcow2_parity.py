# SPDX-License-Identifier: BSD-3-Clause
"""qcow2 parity with qemu-io/qemu-img 7.2 in the small cases where vdisk
once differed: what discard and zero writes leave in the L2 entries (seen
through map, host offsets aside), snapshots that share L2 tables, and the
map depth of ranges past the end of a short backing file."""
import json
import os
import shutil

import pytest

from filemap import allocated_bytes
from conftest import BUILD, qimg, run, vimg, needs_vdisk_format

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
K, M = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def qemu_cmd(op):
    """The qemu-io command for one vdisk-io command."""
    w = op.split()
    if w[0] == "write":
        return "write -P %s %s %s" % (w[1], w[2], w[3])
    if w[0] == "zero":
        return "write -z %s%s %s" % ("-u " if "unmap" in w else "", w[1], w[2])
    if w[0] == "compress":
        return "write -c -P %s %s %s" % (w[1], w[2], w[3])
    return op                      # discard, truncate


def apply_both(v, q, ops):
    args = [VDISK_IO, str(v)]
    for op in ops:
        args += op.split() + ["--"]
    run(args, check=True)
    args = [QEMU_IO, "-d", "unmap"]
    for op in ops:
        args += ["-c", qemu_cmd(op)]
    run(args + [str(q)], check=True)


def layout(img):
    """qemu-img map of img without host offsets."""
    m = json.loads(qimg("map", "--output=json", img, check=True).stdout)
    return [{k: v for k, v in e.items() if k != "offset"} for e in m]


def make_pair(tmp_path, opts, size, backing):
    """The same new image for vdisk and qemu (over a 0xab base)."""
    bargs = []
    if backing:
        base = tmp_path / "base.qcow2"
        qimg("create", "-q", "-f", "qcow2", base, backing, check=True)
        run([QEMU_IO, "-c", "write -P 0xab 0 %d" % backing, str(base)], check=True)
        bargs = ["-b", base, "-F", "qcow2"]
    v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    for tool, img in ((vimg, v), (qimg, q)):
        tool("create", "-q", "-f", "qcow2", "-o", opts, *bargs, img, size, check=True)
    return v, q


def assert_same(v, q):
    p = qimg("check", v)
    assert p.returncode == 0, p.stdout + p.stderr
    p = qimg("compare", v, q)
    assert p.returncode == 0, p.stdout + p.stderr
    assert layout(v) == layout(q)


@pytest.mark.parametrize("opts,backing,ops", [
    # v3 without backing: discarded data clusters get the zero flag
    ("compat=1.1", 0, ["write 0x11 0 %d" % M, "discard %d %d" % (64 * K, 128 * K)]),
    ("preallocation=metadata", 0, ["discard %d %d" % (64 * K, 128 * K)]),
    ("compat=1.1", 0, ["compress 0x22 0 %d" % (64 * K), "discard 0 %d" % (64 * K)]),
    # ... and clusters that already read as zeroes stay as they are
    ("compat=1.1", 0, ["zero 0 %d" % (64 * K), "discard 0 %d" % (64 * K)]),
    ("extended_l2=on", 0, ["zero 0 4096", "discard 0 %d" % (64 * K)]),
    ("extended_l2=on", 0, ["write 0x11 0 %d" % M, "discard %d %d" % (64 * K, 128 * K)]),
    # v2 with a backing file cannot hide it: qemu keeps the data
    ("compat=0.10", 4 * M, ["write 0x11 0 %d" % M, "discard %d %d" % (64 * K, 128 * K)]),
    # 1k clusters over a backing file, partial clusters at both ends
    ("refcount_bits=2,cluster_size=1k", 4 * M,
     ["write 0x11 1000 70000", "discard 1000 200000", "discard %d %d" % (M, 128 * K)]),
])
def test_discard(tmp_path, opts, backing, ops):
    v, q = make_pair(tmp_path, opts, "4M", backing)
    apply_both(v, q, ops)
    assert_same(v, q)


@pytest.mark.parametrize("opts,backing,ops", [
    # a partial unit whose rest reads as zeroes is zeroed whole by flag
    ("compat=1.1", 0, ["zero 1000 3000"]),
    ("compat=1.1", 0, ["zero 1000 100000"]),
    ("extended_l2=on", 0, ["zero 1000 100000"]),
    ("extended_l2=on", 0, ["write 0x11 0 2048", "zero 3000 1000"]),
    ("compat=0.10", 0, ["zero 1000 100000"]),
    # ... not when the rest is data (backing file, or written)
    ("compat=1.1", 4 * M, ["zero 1000 100000"]),
    ("extended_l2=on", 4 * M, ["zero 3000 1000"]),
    ("compat=0.10", 4 * M, ["write 0x11 0 200000", "zero 1000 100000"]),
    # a zero write without unmap keeps the host cluster, with unmap drops it
    ("compat=1.1", 0, ["write 0x11 0 %d" % (4 * M), "zero 0 %d" % (4 * M)]),
    ("compat=1.1", 0, ["write 0x11 0 %d" % (4 * M), "zero 0 %d unmap" % (4 * M)]),
    ("compat=1.1", 0, ["zero 0 %d" % (64 * K)]),
])
def test_zero(tmp_path, opts, backing, ops):
    v, q = make_pair(tmp_path, opts, "4M", backing)
    apply_both(v, q, ops)
    assert_same(v, q)


@pytest.mark.parametrize("opts,op", [
    ("compat=1.1", "zero 0 %d" % (128 * K)),
    ("compat=1.1", "zero 0 %d unmap" % (128 * K)),
    ("compat=1.1", "discard 0 %d" % (128 * K)),
    ("extended_l2=on", "zero 4096 %d" % (128 * K)),
    ("compat=0.10", "discard 0 %d" % (128 * K)),
])
def test_zero_keeps_snapshot(tmp_path, opts, op):
    """Zeroing or discarding clusters whose L2 table a snapshot shares
    copies the table first: the snapshot keeps its data, nothing leaks."""
    v, q = make_pair(tmp_path, opts, "4M", 0)
    for img in (v, q):
        run([QEMU_IO, "-c", "write -P 0x11 0 1M", str(img)], check=True)
        qimg("snapshot", "-c", "s1", img, check=True)
    apply_both(v, q, [op, "write 0x22 1000 100"])
    assert_same(v, q)
    qimg("snapshot", "-a", "s1", v, check=True)
    p = run([QEMU_IO, "-c", "read -P 0x11 0 1M", str(v)])
    assert p.returncode == 0 and "verification failed" not in p.stdout, p.stdout
    p = qimg("check", v)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("sizes", [
    ("1M", "2M"), ("1M", "3M", "2M"), ("2M", "1M", "3M"), ("1000448", "1500160", "3M"),
])
def test_map_depth_past_short_backing(tmp_path, sizes):
    """Past the end of a backing file qemu-img's walk stops at the layer
    above it: the zero range has that layer's depth, not the bottom's."""
    prev = None
    for i, size in enumerate(sizes):
        img = tmp_path / ("l%d.qcow2" % i)
        bargs = ["-b", prev, "-F", "qcow2"] if prev else []
        qimg("create", "-q", "-f", "qcow2", *bargs, img, size, check=True)
        run([QEMU_IO, "-c", "write -P 0x%x %d 64k" % (0x11 * (i + 1), i * 256 * K), str(img)],
            check=True)
        prev = img
    for args in (["--output=json"], []):
        assert vimg("map", *args, prev).stdout == qimg("map", *args, prev).stdout


@pytest.mark.parametrize("opts", ["compat=1.1", "compat=0.10", "cluster_size=4k",
                                  "lazy_refcounts=on", "cluster_size=2M"])
@pytest.mark.parametrize("backing", [None, 4 << 20])
def test_partial_writes_same_file(tmp_path, opts, backing):
    """Writes that cover part of fresh clusters: the image file vdisk
    writes has the same map as qemu's, host offsets included, and as many
    allocated blocks (no holes left around the data, which QEMU would
    take for metadata preallocation)."""
    v, q = make_pair(tmp_path, opts, "8M", backing)
    ops = ["write 0x11 1000 70000", "write 0x22 3000000 4096", "write 0x33 6000000 1",
           "write 0x44 131072 65536", "zero 7000000 100000"]
    apply_both(v, q, ops)
    assert_same(v, q)
    assert qimg("map", "--output=json", v).stdout == qimg("map", "--output=json", q).stdout
    # (one 4 KiB block may differ with a backing file; a hole left around
    # a partial cluster would be tens of KiB)
    assert abs(allocated_bytes(v) - allocated_bytes(q)) <= 4096
