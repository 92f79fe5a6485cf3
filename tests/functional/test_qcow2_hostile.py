# SPDX-License-Identifier: BSD-3-Clause
"""Hostile qcow2 images: one per kind of damage a crafted file can carry
(tables pointing into each other, past the end of the file, unaligned;
absurd table sizes; bad header fields).  vdisk-img info, map, check and
convert must each end with a clear error or a check report: never a crash
(negative return code), never a hang (timeout), never a huge allocation
(run under a 1 GiB address-space limit), and nonzero where qemu-img's is.
Where qemu-img refuses to open the image, vdisk-img says the same thing."""
import os
import resource
import shutil
import struct
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format
from test_qcow2_check import COPIED, QEMU_IO, Qcow2, make

MEM_LIMIT = 1 << 30
TIMEOUT = 60


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def run_limited(args, cwd):
    """Run with memory capped at MEM_LIMIT.  AddressSanitizer reserves far
    more address space than that, so sanitized builds (VDISK_SANITIZED set
    by scripts/check) cap single allocations through ASan instead, and a
    failed allocation returns NULL as it would under the limit."""
    if os.environ.get("VDISK_SANITIZED"):
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=%d" % (MEM_LIMIT >> 20)
        return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                              cwd=cwd, timeout=TIMEOUT, env=env)
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, timeout=TIMEOUT, preexec_fn=limit_memory)


def run_peer(args, cwd):
    """The reference runs without the memory cap: the cap is about vdisk's
    allocations, and qemu-img's threads sometimes cannot start under it."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, timeout=TIMEOUT)


def pack(fmt, off, v):
    return lambda q: q.wr(off, struct.pack(fmt, v))


def seq(*fns):
    def apply(q):
        for fn in fns:
            fn(q)
    return apply


# Layout of the base image (see test_qcow2_check.make): clusters 0 header,
# 1 refcount table, 2 refcount block, 3 L1, 4 L2, 5-7 data.
HOSTILE = {
    "l1_entry_is_header": lambda q: q.w64(q.l1_off, COPIED),
    "l1_entry_into_reftable": lambda q: q.w64(q.l1_off, COPIED | q.rt_off),
    "l1_entry_past_eof": lambda q: q.w64(q.l1_off, COPIED | 0x100000000),
    "l1_entry_unaligned": lambda q: q.w64(q.l1_off, COPIED | 0x40200),
    "l2_entry_into_l1": lambda q: q.w64(0x40000, COPIED | q.l1_off),
    "l2_entry_into_itself": lambda q: q.w64(0x40000, COPIED | 0x40000),
    "l2_entry_past_eof": lambda q: q.w64(0x40000, COPIED | 0xff00000000),
    "l2_entry_unaligned": lambda q: q.w64(0x40000, COPIED | 0x50200),
    "l2_all_same_cluster": lambda q: q.wr(0x40000, struct.pack(">Q", COPIED | 0x50000)
                                          * 8192),
    "compressed_huge": lambda q: q.w64(0x40000, (1 << 62) | ((1 << 61) - 1)),
    "reftable_entry_into_l1": lambda q: q.w64(q.rt_off, q.l1_off),
    "reftable_entry_past_eof": lambda q: q.w64(q.rt_off, 0x1000000000),
    "reftable_entry_unaligned": lambda q: q.w64(q.rt_off, 0x20200),
    "reftable_all_same_block": lambda q: q.wr(q.rt_off, struct.pack(">Q", 0x20000) * 64),
    "l1_offset_past_eof": pack(">Q", 40, 0x10000000),
    "l1_offset_huge": pack(">Q", 40, 0x0ffffffffff0000),
    "l1_offset_unaligned": pack(">Q", 40, 0x30200),
    "l1_size_huge": pack(">I", 36, 0x7fffffff),
    "l1_size_zero": pack(">I", 36, 0),
    "reftable_clusters_huge": pack(">I", 56, 0x7fffffff),
    "reftable_offset_past_eof": pack(">Q", 48, 0x10000000),
    "reftable_offset_unaligned": pack(">Q", 48, 0x10200),
    "header_length_short": pack(">I", 100, 50),
    "header_length_huge": pack(">I", 100, 0xffffff00),
    "backing_name_too_long": seq(pack(">Q", 8, 0x200), pack(">I", 16, 2000)),
    "backing_name_past_cluster": seq(pack(">Q", 8, 0xfff0), pack(">I", 16, 100)),
    "refcount_order_7": pack(">I", 96, 7),
    "cluster_bits_8": pack(">I", 20, 8),
    "cluster_bits_22": pack(">I", 20, 22),
    "cluster_bits_63": pack(">I", 20, 63),
    "snapshots_huge_count": seq(pack(">I", 60, 0x7fffffff), pack(">Q", 64, 0x80000)),
    "snapshots_offset_past_eof": seq(pack(">I", 60, 1), pack(">Q", 64, 0x1000000000)),
    "unknown_incompatible_bit": pack(">Q", 72, 1 << 40),
    "extension_length_overflow": lambda q: q.wr(104, struct.pack(">II", 0x12345678,
                                                                 0xfffffff0)),
    "virtual_size_huge": pack(">Q", 24, 1 << 62),
    "version_4": pack(">I", 4, 4),
}

OPS = {
    "info": ["info", "img.qcow2"],
    "map": ["map", "img.qcow2"],
    "check": ["check", "img.qcow2"],
    "convert": ["convert", "-O", "raw", "img.qcow2", "out.raw"],
}


def hostile(tmp_path, kind, side):
    d = tmp_path / side
    d.mkdir()
    src = tmp_path / "base.qcow2"
    if not src.exists():
        make(src)
    shutil.copy(src, d / "img.qcow2")
    HOSTILE[kind](Qcow2(d / "img.qcow2"))
    return d


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile(tmp_path, kind, op):
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    q = run_peer([QEMU_IMG] + OPS[op], qd)
    try:
        v = run_limited([VDISK_IMG] + OPS[op], vd)
    except subprocess.TimeoutExpired:
        pytest.fail("vdisk-img %s hangs on %s" % (op, kind))
    assert v.returncode >= 0, "vdisk-img %s crashed: %s" % (op, v.stderr)
    assert v.returncode < 64, v.stderr
    if q.returncode != 0:
        assert v.returncode != 0, (q.stderr, v.stdout, v.stderr)
        assert v.stderr.strip(), "no error message"
    if op == "check" and q.returncode in (0, 2, 3):
        # A check that reports must report the same class of result.
        assert v.returncode == q.returncode, (q.stdout + q.stderr,
                                              v.stdout + v.stderr)


def open_error(stderr):
    """The reason of qemu-img's "Could not open 'x': reason" line."""
    for line in stderr.splitlines():
        if "Could not open '" in line and "': " in line:
            return line.split("': ", 1)[1]
    return None


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_open_message(tmp_path, kind):
    qd, vd = hostile(tmp_path, kind, "q"), hostile(tmp_path, kind, "v")
    q = run_peer([QEMU_IMG, "info", "img.qcow2"], qd)
    reason = open_error(q.stderr)
    if q.returncode == 0 or reason is None:
        pytest.skip("qemu-img opens this image")
    v = run_limited([VDISK_IMG, "info", "img.qcow2"], vd)
    assert v.returncode == 1
    assert reason in v.stderr, (q.stderr, v.stderr)


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_repair(tmp_path, kind, mode):
    """Repair on hostile images: bounded, no crash; a repair that claims
    success leaves an image qemu-img finds clean."""
    vd, qd = hostile(tmp_path, kind, "v"), hostile(tmp_path, kind, "q")
    qemu_opens = run_peer([QEMU_IMG, "info", "img.qcow2"], qd).returncode == 0
    try:
        v = run_limited([VDISK_IMG, "check", "-r", mode, "img.qcow2"], vd)
    except subprocess.TimeoutExpired:
        pytest.fail("vdisk-img check -r %s hangs on %s" % (mode, kind))
    assert 0 <= v.returncode < 64, v.stderr
    if v.returncode == 0 and qemu_opens:
        after = run_peer([QEMU_IMG, "check", "img.qcow2"], vd)
        assert after.returncode == 0, after.stdout + after.stderr
    # Growing the file to take in a refcount block past its end is what
    # qemu-img does too (sparse); nothing beyond that.
    assert os.path.getsize(vd / "img.qcow2") < 1 << 40
