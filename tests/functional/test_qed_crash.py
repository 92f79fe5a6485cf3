# SPDX-License-Identifier: BSD-3-Clause
"""Crash safety of qed allocation (lib/format/qed/qed.h invariants: the
need-check bit on disk before a cluster is linked, clusters written before
the table entries naming them, need-check cleared only after a flush),
with the qcow2 crash tools (crash_replay.py, vdisk-crashload):

(a) fault injection: each event the driver names fails with EIO and
    ENOSPC, once and always, during allocating, partial-cluster and
    zero-cluster writes;
(b) crash replay: the record filter logs every write and flush of the
    workload; the image is rebuilt at sampled cuts with the writes after
    the last flush dropped, all kept, or a random subset kept;
(c) SIGKILL of the workload mid-run, again and again on one image.

After each: the image opens; when need-check is clear qemu-img check
finds no corruption; when it is set, check -r repairs what there is; then
qemu-img check passes (leaked clusters aside: qed cannot free them) and
every guest sector reads as its value at the last completed flush or as
something written after it."""
import json
import os
import random
import shutil
import struct

import pytest

from conftest import VDISK_IMG, run, vimg, needs_vdisk_format
import crash_replay as cr
from crash_kit import EIO, ENOSPC, load, rand_ops, script_file, \
    work  # noqa: F401  (work: the scratch directory fixture)
import crash_kit as kit

QEMU_IMG = shutil.which("qemu-img")
M = 1 << 20
WORKERS = 2
NEED_CHECK = 2
SAN = bool(os.environ.get("VDISK_SANITIZED"))


@pytest.fixture(autouse=True)
def _needs_qed():
    needs_vdisk_format("qed")


class QedReader:
    """A minimal, independent reader of qed images (the crash_replay
    reader interface: size, cs, clusters(), read())."""

    def __init__(self, data):
        if data[:4] != b"QED\0":
            raise ValueError("not a qed image")
        self.d = data
        (self.cs, self.ts, _, _, _, _, self.l1, self.size) = \
            struct.unpack_from("<IIIQQQQQ", data, 4)
        self.n = self.cs * self.ts // 8

    def u64(self, off):
        return struct.unpack_from("<Q", self.d, off)[0] if off + 8 <= len(self.d) else 0

    def clusters(self):
        for i in range(self.n):
            l2 = self.u64(self.l1 + 8 * i)
            if not l2:
                continue
            for j in range(self.n):
                e = self.u64(l2 + 8 * j)
                if e:
                    yield i * self.n + j, (None if e == 1 else e)

    def read(self, host, ln):
        b = self.d[host:host + ln]
        return b + bytes(ln - len(b))


EVENTS = kit.driver_events("qed")


def json_name(img, log=None, rule=None):
    return kit.json_name("qed", img, log, rule)


def features(data):
    return struct.unpack_from("<Q", data, 16)[0]


def repaired(img, what):
    """Check (and repair when need-check says so) a crashed image: a list
    of problems."""
    data = open(img, "rb").read()
    if not features(data) & NEED_CHECK:
        p = run([QEMU_IMG, "check", str(img)])
        if p.returncode not in (0, 3):
            return ["%s: need-check clear but qemu-img check (%d): %s" % (
                what, p.returncode, p.stdout + p.stderr)]
        return []
    p = run([VDISK_IMG, "check", "-r", "all", str(img)])
    if p.returncode not in (0, 3):
        return ["%s: check -r (%d): %s" % (what, p.returncode, p.stdout + p.stderr)]
    if features(open(img, "rb").read()) & NEED_CHECK:
        return ["%s: need-check still set after check -r" % what]
    p = run([QEMU_IMG, "check", str(img)])
    if p.returncode not in (0, 3):
        return ["%s: qemu-img check after repair (%d): %s" % (what, p.returncode,
                                                            p.stdout + p.stderr)]
    return []


def verify(img, model, started, flushed, what=""):
    probs = repaired(img, what)
    if probs:
        return probs
    data = open(img, "rb").read()
    return ["%s: %s" % (what, b) for b in cr.judge(data, model, started, flushed, QedReader)]


def scenarios():
    rng = random.Random(5)
    return {
        "alloc": ("cluster_size=4k,table_size=2", 8 * M,
                  ["write 0 65536", "write 3145728 8192", "flush"],
                  ["write 1024 3072", "write 2097152 131072", "flush", "write 4194304 4096",
                   "write 5000192 70144", "flush", "write 3146240 512", "write 7340032 8192"]),
        "zero": ("cluster_size=64k", 4 * M, ["write 0 1048576", "flush"],
                 ["zero 65536 131072", "zero 1536 1024", "flush", "zero 2097152 65536",
                  "write 65536 4096", "flush", "zero 0 65536", "write 3145728 512"]),
        "random": ("cluster_size=4k,table_size=2", 4 * M,
                   rand_ops(rng, 10, 4 * M, 8192) + ["flush"],
                   rand_ops(rng, 30 if not SAN else 15, 4 * M, 140000,
                            kinds=("write", "write", "zero"))),
    }


SCEN = scenarios()


def prepared(d, name):
    """A scenario's image after its setup ops."""
    opts, size, setup, ops = SCEN[name]
    return kit.Prepared(d, "qed", size, setup, ops, lambda path: vimg(
        "create", "-q", "-f", "qed", "-o", opts, path, str(size), check=True))


def test_events_listed():
    """The driver names its allocation steps, and blkdebug knows them."""
    kit.events_listed(EVENTS, {"header_update", "l2_update", "l1_update", "l2_alloc_write",
                               "cow_write", "write_aio"}, json_name)


@pytest.mark.parametrize("name", sorted(SCEN))
def test_fault_injection(work, name):  # noqa: F811
    errs = (EIO,) if SAN else (EIO, ENOSPC)
    kit.fault_injection(prepared(work, name), kit.injection_cases(EVENTS, errs), json_name,
                        verify, WORKERS)


@pytest.mark.parametrize("name", sorted(SCEN))
def test_crash_replay(work, name):  # noqa: F811
    prep = prepared(work, name)
    rp = kit.record(prep, json_name)
    dirty = []
    probs = kit.replay_cuts(rp, prep, 15 if SAN else 30, random.Random(1), verify, WORKERS,
                            seen=lambda data: dirty.append(features(data) & NEED_CHECK))
    assert not probs, "\n".join(probs[:20])
    assert any(dirty), "no cut saw the need-check bit set"


def test_need_check_protocol(work):  # noqa: F811
    """The recorded writes keep invariant 1: the header write that sets
    need-check is followed by a flush before anything else is written; the
    one that clears it comes right after a flush; the image ends clean."""
    prep = prepared(work, "random")
    img, log = prep.fresh("rec.qed"), work / "rec.log"
    p, _, _ = load(json_name(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    recs = [r for r in cr.parse_log(str(log)) if r[0] != "E"]
    bit = False
    sets = clears = 0
    for i, r in enumerate(recs):
        if r[0] != "W" or r[1] != 0 or len(r[3]) < 24:
            continue
        new = bool(features(r[3]) & NEED_CHECK)
        if new and not bit:
            sets += 1
            assert i + 1 < len(recs) and recs[i + 1][0] == "F", (i, recs[i + 1][:2])
        elif bit and not new:
            clears += 1
            assert i > 0 and recs[i - 1][0] == "F", (i, recs[i - 1][:2])
        bit = new
    assert sets and clears and not bit
    assert not features(open(img, "rb").read()) & NEED_CHECK


# ---- over a backing file: copy-on-write fill must survive crashes ----

BACKING_OPS = ["write 1024 3072", "write 2097152 5120", "flush", "zero 65536 4096",
               "write 1049088 512", "zero 8192 131072", "flush", "write 3000320 70144",
               "write 3500544 4096", "zero 2101248 512", "write 1536 512"]


def backed_prep(d):
    """A raw base whose every sector holds op 1, under a qed overlay with
    4 KiB clusters; the ops under test run on the overlay."""
    size = 4 * M
    base = d / "base.raw"
    run([QEMU_IMG, "create", "-q", "-f", "raw", str(base), str(size)], check=True)
    p, _, _ = load("json:" + json.dumps({"driver": "raw", "file": {
        "driver": "file", "filename": str(base)}}),
        script_file(d / "base.txt", ["write 0 %d" % size, "flush"]))
    assert p.returncode == 0, p.stderr
    prep = kit.Prepared(d, "qed", size, [], BACKING_OPS, lambda path: run(
        [QEMU_IMG, "create", "-q", "-f", "qed", "-o", "cluster_size=4k", "-b", str(base),
         "-F", "raw", str(path)], check=True))
    # the ops are numbered from 2: op 1 is the base's fill
    prep.ops = cr.parse_script("\n".join(BACKING_OPS), 2)
    prep.first = 2
    prep.initial = {s: 1 for s in range(size // 512)}
    return prep


def verify_flat(img, model, started, flushed, what=""):
    """As verify, reading the image with its backing file (qemu-img
    convert) and judging every sector."""
    probs = repaired(img, what)
    if probs:
        return probs
    out = str(img) + ".raw"
    p = run([QEMU_IMG, "convert", "-O", "raw", str(img), out])
    if p.returncode:
        return ["%s: convert: %s" % (what, p.stderr)]
    raw = open(out, "rb").read()
    os.unlink(out)
    bad = []
    for sec in range(min(len(raw), model.size) // 512):
        v = cr.sector_value(raw[sec * 512:(sec + 1) * 512], sec)
        ok = model.allowed(sec, started, flushed)
        if v not in ok:
            bad.append("%s: guest sector %d reads as %s, allowed %s" % (
                what, sec, "garbage" if v < 0 else v, sorted(ok)))
            if len(bad) >= 10:
                break
    return bad


def test_backing_fault_injection(work):  # noqa: F811
    kit.fault_injection(backed_prep(work), kit.injection_cases(EVENTS, (EIO,)), json_name,
                        verify_flat, WORKERS, need_message=False)


def test_backing_crash_replay(work):  # noqa: F811
    prep = backed_prep(work)
    rp = kit.record(prep, json_name)
    probs = kit.replay_cuts(rp, prep, 8 if SAN else 14, random.Random(3), verify_flat, WORKERS)
    assert not probs, "\n".join(probs[:20])


def test_reader_matches_qemu(tmp_path):
    """The test's own qed reader agrees with qemu-img convert."""
    kit.reader_matches_qemu(prepared(tmp_path, "random"), QedReader, tmp_path)


def test_sigkill(work):  # noqa: F811
    """The workload killed mid-run again and again on one image."""
    size = 8 * M
    img = work / "k.qed"
    vimg("create", "-q", "-f", "qed", "-o", "cluster_size=4k,table_size=2", img, str(size),
         check=True)
    probs = kit.sigkill_rounds(work, img, size, random.Random(17), verify, QedReader,
                               10 if SAN else 15)
    assert not probs, "\n".join(probs)
