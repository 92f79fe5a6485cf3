# SPDX-License-Identifier: BSD-3-Clause
"""Crash safety of qcow (version 1) cluster allocation (lib/format/qcow1.c,
invariant 1: a cluster's data written before its L2 entry, a new L2 table
before its L1 entry), with the shared crash tools (crash_kit, crash_replay,
vdisk-crashload):

(a) fault injection: each event the driver names fails with EIO and
    ENOSPC, once and always, during allocating and partial-cluster writes;
(b) crash replay: the record filter logs every write and flush of the
    workload; the image is rebuilt at sampled cuts with the writes after
    the last flush dropped, all kept, or a random subset kept.

qemu-img 7.2 has no check for qcow; after each, the image opens in
qemu-img and every guest sector reads as its value at the last completed
flush or as something written after it."""
import os
import random
import re
import shutil
import struct

import pytest

from conftest import TOP, needs_vdisk_format, run, vimg
import crash_replay as cr
from crash_kit import EIO, ENOSPC, rand_ops, \
    work  # noqa: F401  (work: the scratch directory fixture)
import crash_kit as kit

QEMU_IMG = shutil.which("qemu-img")
M = 1 << 20
WORKERS = 2
SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))


@pytest.fixture(autouse=True)
def _needs():
    if QEMU_IMG is None:
        pytest.skip("qemu-img is not installed")
    needs_vdisk_format("qcow")


class Qcow1Reader:
    """A minimal, independent qcow version 1 reader (crash_replay's reader
    interface: size, cs, clusters(), read()); no compressed clusters."""

    def __init__(self, data):
        magic, ver = struct.unpack_from(">II", data, 0)
        if magic != 0x514649fb or ver != 1:
            raise ValueError("not qcow version 1")
        self.d = data
        self.size = struct.unpack_from(">Q", data, 24)[0]
        cb, l2b = data[32], data[33]
        self.l1_off = struct.unpack_from(">Q", data, 40)[0]
        self.cs, self.l2_entries = 1 << cb, 1 << l2b
        self.l1_size = -(-self.size // (self.cs * self.l2_entries))

    def u64(self, off):
        return struct.unpack_from(">Q", self.d, off)[0] if off + 8 <= len(self.d) else 0

    def clusters(self):
        for i in range(self.l1_size):
            l2 = self.u64(self.l1_off + 8 * i)
            if not l2:
                continue
            for j in range(self.l2_entries):
                e = self.u64(l2 + 8 * j)
                if e & (1 << 63):
                    raise ValueError("compressed cluster")
                if e:
                    yield i * self.l2_entries + j, e

    def read(self, host, ln):
        b = self.d[host:host + ln]
        return b + bytes(ln - len(b))


EVENTS = sorted(set(re.findall(r'vd_event\([^;]*?"([a-z0-9_]+)"\)',
                               open(os.path.join(TOP, "lib", "format", "qcow1.c")).read())))


def json_name(img, log=None, rule=None):
    return kit.json_name("qcow", img, log, rule)


def verify(img, model, started, flushed, what=""):
    p = run([QEMU_IMG, "info", "-f", "qcow", str(img)])
    if p.returncode:
        return ["%s: qemu-img info (%d): %s" % (what, p.returncode, p.stderr)]
    data = open(img, "rb").read()
    return ["%s: %s" % (what, b) for b in cr.judge(data, model, started, flushed, Qcow1Reader)]


def scenarios():
    rng = random.Random(7)
    return {
        "alloc": (8 * M, ["write 0 65536", "write 3145728 8192", "flush"],
                  ["write 1024 3072", "write 2097152 131072", "flush", "write 4194304 4096",
                   "write 5000192 70144", "flush", "write 3146240 512", "write 7340032 8192"]),
        "random": (8 * M, rand_ops(rng, 8, 8 * M, 8192) + ["flush"],
                   rand_ops(rng, 24, 8 * M, 140000, kinds=("write", "write", "zero"))),
    }


SCEN = scenarios()


def prepared(d, name):
    """A scenario's image after its setup ops."""
    size, setup, ops = SCEN[name]
    return kit.Prepared(d, "qcow", size, setup, ops, lambda path: vimg(
        "create", "-q", "-f", "qcow", path, str(size), check=True), json_name)


def test_events_listed():
    """The driver names its allocation steps, and blkdebug knows them."""
    kit.events_listed(EVENTS, {"cluster_alloc", "l1_update", "l2_update", "l2_alloc_write",
                               "write_aio"}, json_name)


@pytest.mark.parametrize("name", sorted(SCEN))
def test_qcow1_fault_injection(work, name):  # noqa: F811
    errs = (EIO,) if SANITIZED else (EIO, ENOSPC)
    kit.fault_injection(prepared(work, name), kit.injection_cases(EVENTS, errs), json_name,
                        verify, WORKERS)


@pytest.mark.parametrize("name", sorted(SCEN))
def test_qcow1_crash_replay(work, name):  # noqa: F811
    prep = prepared(work, name)
    rp = kit.record(prep, json_name)
    probs = kit.replay_cuts(rp, prep, 10 if SANITIZED else 25, random.Random(1), verify,
                            WORKERS)
    assert not probs, "\n".join(probs[:20])


def test_qcow1_reader_matches_qemu(tmp_path):
    """The test's own reader agrees with qemu-img convert."""
    kit.reader_matches_qemu(prepared(tmp_path, "random"), Qcow1Reader, tmp_path, json_name)
