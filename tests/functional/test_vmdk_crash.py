# SPDX-License-Identifier: BSD-3-Clause
"""Crash safety of vmdk grain allocation (sparse.c, invariant 1: the grain
written and flushed, then its grain table entry, the redundant entry, a
flush), with the qcow2 crash tools (crash_replay.py, vdisk-crashload):

(a) fault injection: each vmdk_* event the driver names fails with EIO and
    ENOSPC, once and always, during allocating writes, partial-grain
    writes and zeroed-grain writes;
(b) crash replay: the record filter logs every write and flush of the
    workload; the image is rebuilt at sampled cuts with the writes after
    the last flush dropped, all kept, or a random subset kept;
(c) SIGKILL of the workload mid-run, again and again on one image.

After each, qemu-img check passes and every guest sector reads as its
value at the last completed flush or as something written after it."""
import glob
import os
import random
import re
import shutil
import struct

import pytest

from conftest import TOP, run, vimg
import crash_replay as cr
from crash_kit import rand_ops, \
    work  # noqa: F401  (work: the scratch directory fixture)
import crash_kit as kit

QEMU_IMG = shutil.which("qemu-img")

M = 1 << 20
EIO, ENOSPC = 5, 28
WORKERS = 2


class VmdkReader:
    """A minimal, independent reader of monolithicSparse images (the
    crash_replay reader interface: size, cs, clusters(), read())."""

    def __init__(self, data):
        if data[:4] != b"KDMV":
            raise ValueError("not a vmdk sparse extent")
        self.d = data
        flags = struct.unpack_from("<I", data, 8)[0]
        cap, gran = struct.unpack_from("<QQ", data, 12)
        self.gtes = struct.unpack_from("<I", data, 44)[0]
        self.gd = struct.unpack_from("<Q", data, 56)[0] * 512
        self.size, self.cs, self.zero_grain = cap * 512, gran * 512, bool(flags & 4)
        self.n_gd = -(-cap // (self.gtes * gran))

    def u32(self, off):
        return struct.unpack_from("<I", self.d, off)[0] if off + 4 <= len(self.d) else 0

    def clusters(self):
        for i in range(self.n_gd):
            gt = self.u32(self.gd + 4 * i) * 512
            if not gt:
                continue
            for j in range(self.gtes):
                e = self.u32(gt + 4 * j)
                if e:
                    yield i * self.gtes + j, (None if self.zero_grain and e == 1 else e * 512)

    def read(self, host, ln):
        b = self.d[host:host + ln]
        return b + bytes(ln - len(b))


def driver_events():
    names = set()
    for f in glob.glob(os.path.join(TOP, "lib", "format", "vmdk", "*.c")):
        names.update(re.findall(r'"(vmdk_[a-z0-9_]+)"', open(f).read()))
    return sorted(names)


EVENTS = driver_events()


def json_name(img, log=None, rule=None):
    return kit.json_name("vmdk", img, log, rule)


def qcheck(img):
    p = run([QEMU_IMG, "check", str(img)])
    return p.returncode, p.stdout + p.stderr


def verify(img, model, started, flushed, what=""):
    rc, out = qcheck(img)
    if rc:
        return ["%s: qemu-img check (%d): %s" % (what, rc, out)]
    data = open(img, "rb").read()
    return ["%s: %s" % (what, b) for b in cr.judge(data, model, started, flushed, VmdkReader)]


def scenarios():
    rng = random.Random(5)
    return {
        "alloc": ("zeroed_grain=off", 8 * M, ["write 0 65536", "write 3145728 8192", "flush"],
                  ["write 1024 3072", "write 2097152 131072", "flush", "write 4194304 4096",
                   "write 5000192 70144", "flush", "write 3146240 512", "write 7340032 8192"]),
        "zero": ("zeroed_grain=on", 4 * M, ["write 0 1048576", "flush"],
                 ["zero 65536 131072", "zero 1536 1024", "flush", "zero 2097152 65536",
                  "write 65536 4096", "flush", "zero 0 65536", "write 3145728 512"]),
        "random": ("zeroed_grain=on", 4 * M, rand_ops(rng, 10, 4 * M, 8192) + ["flush"],
                   rand_ops(rng, 30, 4 * M, 140000, kinds=("write", "write", "zero"))),
    }


SCEN = scenarios()


def prepared(d, name):
    """A scenario's image after its setup ops."""
    opts, size, setup, ops = SCEN[name]
    return kit.Prepared(d, "vmdk", size, setup, ops, lambda path: vimg(
        "create", "-q", "-f", "vmdk", "-o", opts, path, str(size), check=True))


def test_events_listed():
    """The driver names its allocation steps, and blkdebug knows them."""
    kit.events_listed(EVENTS, {"vmdk_grain_write", "vmdk_gt_update", "vmdk_rgt_update"},
                      json_name)


@pytest.mark.parametrize("name", sorted(SCEN))
def test_fault_injection(work, name):  # noqa: F811
    kit.fault_injection(prepared(work, name), kit.injection_cases(EVENTS), json_name, verify,
                        WORKERS)


@pytest.mark.parametrize("name", sorted(SCEN))
def test_crash_replay(work, name):  # noqa: F811
    prep = prepared(work, name)
    rp = kit.record(prep, json_name)
    probs = kit.replay_cuts(rp, prep, 30, random.Random(1), verify, WORKERS)
    assert not probs, "\n".join(probs[:20])


def test_reader_matches_qemu(tmp_path):
    """The test's own vmdk reader agrees with qemu-img convert."""
    kit.reader_matches_qemu(prepared(tmp_path, "random"), VmdkReader, tmp_path)


def test_sigkill(work):  # noqa: F811
    """The workload killed mid-run again and again on one image."""
    size = 8 * M
    img = work / "k.vmdk"
    vimg("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", img, str(size), check=True)
    probs = kit.sigkill_rounds(work, img, size, random.Random(17), verify, VmdkReader, 20)
    assert not probs, "\n".join(probs)
