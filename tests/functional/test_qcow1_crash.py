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
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import TOP, needs_vdisk_format, run, vimg
import crash_replay as cr
from crash_kit import EIO, ENOSPC, LOAD, load, rand_ops, script_file, \
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


class Prepared:
    """A scenario's image after its setup ops."""

    def __init__(self, d, name):
        size, setup, ops = SCEN[name]
        self.d, self.size = d, size
        self.base = d / "base.qcow"
        vimg("create", "-q", "-f", "qcow", self.base, str(size), check=True)
        p, _, _ = load(json_name(self.base), script_file(d / "setup.txt", setup))
        assert p.returncode == 0, p.stderr
        self.script = script_file(d / "ops.txt", ops)
        self.ops = cr.parse_script("\n".join(setup)) + \
            cr.parse_script("\n".join(ops), len(setup) + 1)
        self.first = len(setup) + 1

    def model(self):
        return cr.Model(self.ops, self.size)

    def fresh(self, name):
        img = self.d / name
        shutil.copyfile(self.base, img)
        return img


def test_events_listed():
    """The driver names its allocation steps, and blkdebug knows them."""
    assert {"cluster_alloc", "l1_update", "l2_update", "l2_alloc_write",
            "write_aio"} <= set(EVENTS)
    for e in EVENTS:
        p = run([kit.VDISK_IO, json_name("/nonexistent", rule={"event": e}), "flush"])
        assert "invalid parameter value" not in p.stderr, e


def inject_case(prep, event, err, once):
    tag = "%s-%d-%s" % (event, err, "once" if once else "always")
    img = prep.fresh(tag + ".qcow")
    rule = {"event": event, "errno": err, "once": once}
    p, started, flushed = load(json_name(img, rule=rule), prep.script, prep.first)
    probs = []
    if p.returncode not in (0, 1) or "Sanitizer" in p.stderr:
        probs.append("%s: workload died (%d): %s" % (tag, p.returncode, p.stderr))
    if p.returncode == 1 and "vdisk-crashload: op" not in p.stderr:
        probs.append("%s: failed without a message: %r" % (tag, p.stderr))
    probs += verify(img, prep.model(), started, flushed, tag)
    return probs, p.returncode == 1


@pytest.mark.parametrize("name", sorted(SCEN))
def test_qcow1_fault_injection(work, name):  # noqa: F811
    prep = Prepared(work, name)
    errs = (EIO,) if SANITIZED else (EIO, ENOSPC)
    cases = [(e, err, once) for e in EVENTS for err in errs for once in (True, False)]
    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(lambda c: inject_case(prep, *c), cases))
    probs = [p for r in results for p in r[0]]
    assert not probs, "\n".join(probs[:20])
    assert any(r[1] for r in results), "no injected error ever reached the workload"


@pytest.mark.parametrize("name", sorted(SCEN))
def test_qcow1_crash_replay(work, name):  # noqa: F811
    prep = Prepared(work, name)
    img, log = prep.fresh("rec.qcow"), work / "rec.log"
    base = open(img, "rb").read()
    p, _, _ = load(json_name(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    rp = cr.Replay(str(log), base)
    assert rp.flush_at, "the workload never flushed"
    rng, model = random.Random(1), prep.model()

    def job(path, started, flushed, what):
        probs = verify(path, model, started, flushed, what)
        if not probs:
            os.unlink(path)
        return probs

    probs, running = [], []
    with ThreadPoolExecutor(WORKERS) as ex:
        for cut, v, data, started, flushed in rp.images(rp.cuts(10 if SANITIZED else 25, rng),
                                                        ("drop", "random", "keep"), rng):
            path = work / ("cut%d-%s.qcow" % (cut, v))
            path.write_bytes(data)
            running.append(ex.submit(job, path, started, flushed,
                                     "cut %d/%d (%s)" % (cut, len(rp.recs), v)))
        for f in running:
            probs += f.result()
    assert not probs, "\n".join(probs[:20])


def test_qcow1_reader_matches_qemu(tmp_path):
    """The test's own reader agrees with qemu-img convert."""
    prep = Prepared(tmp_path, "random")
    img = prep.fresh("x.qcow")
    p, started, _ = load(json_name(img), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    raw = tmp_path / "x.raw"
    run([QEMU_IMG, "convert", "-O", "raw", str(img), str(raw)], check=True)
    q = Qcow1Reader(open(img, "rb").read())
    want = bytearray(q.size)
    for gc, host in q.clusters():
        want[gc * q.cs:(gc + 1) * q.cs] = q.read(host, q.cs)[:q.size - gc * q.cs]
    assert raw.read_bytes() == bytes(want)
    assert not cr.judge(open(img, "rb").read(), prep.model(), started, started, Qcow1Reader)
