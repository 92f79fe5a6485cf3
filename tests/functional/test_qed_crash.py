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
import signal
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import VDISK_IMG, run, vimg, needs_vdisk_format
import crash_replay as cr
from crash_kit import EIO, ENOSPC, LOAD, load, progress, rand_ops, script_file, \
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


class Prepared:
    """A scenario's image after its setup ops."""

    def __init__(self, d, name):
        opts, size, setup, ops = SCEN[name]
        self.d, self.size = d, size
        self.base = d / "base.qed"
        vimg("create", "-q", "-f", "qed", "-o", opts, self.base, str(size), check=True)
        n_setup = len(setup)
        p, _, _ = load(str(self.base), script_file(d / "setup.txt", setup))
        assert p.returncode == 0, p.stderr
        self.script = script_file(d / "ops.txt", ops)
        self.ops = cr.parse_script("\n".join(setup)) + \
            cr.parse_script("\n".join(ops), n_setup + 1)
        self.first = n_setup + 1

    def model(self):
        return cr.Model(self.ops, self.size)

    def fresh(self, name):
        img = self.d / name
        shutil.copyfile(self.base, img)
        return img


def test_events_listed():
    """The driver names its allocation steps, and blkdebug knows them."""
    assert {"header_update", "l2_update", "l1_update", "l2_alloc_write", "cow_write",
            "write_aio"} <= set(EVENTS)
    for e in EVENTS:
        p = run([os.path.join(os.path.dirname(LOAD), "vdisk-io"),
                 json_name("/nonexistent", rule={"event": e}), "flush"])
        assert "invalid parameter value" not in p.stderr, e


def inject_case(prep, event, err, once):
    tag = "%s-%d-%s" % (event, err, "once" if once else "always")
    img = prep.fresh(tag + ".qed")
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
def test_fault_injection(work, name):  # noqa: F811
    prep = Prepared(work, name)
    cases = [(e, err, once) for e in EVENTS for err in (EIO, ENOSPC) for once in (True, False)]
    if SAN:
        cases = [c for c in cases if c[1] == EIO]
    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(lambda c: inject_case(prep, *c), cases))
    probs = [p for r in results for p in r[0]]
    assert not probs, "\n".join(probs[:20])
    assert any(r[1] for r in results), "no injected error ever reached the workload"


@pytest.mark.parametrize("name", sorted(SCEN))
def test_crash_replay(work, name):  # noqa: F811
    prep = Prepared(work, name)
    img, log = prep.fresh("rec.qed"), work / "rec.log"
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

    probs, running, dirty = [], [], 0
    with ThreadPoolExecutor(WORKERS) as ex:
        for cut, v, data, started, flushed in rp.images(rp.cuts(15 if SAN else 30, rng),
                                                        ("drop", "random", "keep"), rng):
            dirty += bool(features(data) & NEED_CHECK)
            path = work / ("cut%d-%s.qed" % (cut, v))
            path.write_bytes(data)
            running.append(ex.submit(job, path, started, flushed,
                                     "cut %d/%d (%s)" % (cut, len(rp.recs), v)))
        for f in running:
            probs += f.result()
    assert not probs, "\n".join(probs[:20])
    assert dirty, "no cut saw the need-check bit set"


def test_need_check_protocol(work):  # noqa: F811
    """The recorded writes keep invariant 1: the header write that sets
    need-check is followed by a flush before anything else is written; the
    one that clears it comes right after a flush; the image ends clean."""
    prep = Prepared(work, "random")
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


class BackedPrep:
    """A raw base whose every sector holds op 1, under a qed overlay with
    4 KiB clusters; the ops under test run on the overlay."""

    def __init__(self, d):
        self.d, self.size = d, 4 * M
        base = d / "base.raw"
        run([QEMU_IMG, "create", "-q", "-f", "raw", str(base), str(self.size)], check=True)
        p, _, _ = load("json:" + json.dumps({"driver": "raw", "file": {
            "driver": "file", "filename": str(base)}}),
            script_file(d / "base.txt", ["write 0 %d" % self.size, "flush"]))
        assert p.returncode == 0, p.stderr
        self.base = d / "top.qed"
        run([QEMU_IMG, "create", "-q", "-f", "qed", "-o", "cluster_size=4k", "-b", str(base),
             "-F", "raw", str(self.base)], check=True)
        self.script = script_file(d / "ops.txt", BACKING_OPS)
        self.first = 2
        self.ops = cr.parse_script("\n".join(BACKING_OPS), 2)
        self.initial = {s: 1 for s in range(self.size // 512)}

    def model(self):
        return cr.Model(self.ops, self.size, self.initial)

    def fresh(self, name):
        img = self.d / name
        shutil.copyfile(self.base, img)
        return img


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
    prep = BackedPrep(work)
    cases = [(e, err, once) for e in EVENTS for err in (EIO,) for once in (True, False)]

    def case(c):
        event, err, once = c
        tag = "%s-%d-%s" % (event, err, "once" if once else "always")
        img = prep.fresh(tag + ".qed")
        rule = {"event": event, "errno": err, "once": once}
        p, started, flushed = load(json_name(img, rule=rule), prep.script, prep.first)
        probs = []
        if p.returncode not in (0, 1) or "Sanitizer" in p.stderr or "bad script" in p.stderr:
            probs.append("%s: workload died (%d): %s" % (tag, p.returncode, p.stderr))
        return probs + verify_flat(img, prep.model(), started, flushed, tag), p.returncode == 1

    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(case, cases))
    probs = [p for r in results for p in r[0]]
    assert not probs, "\n".join(probs[:20])
    assert any(r[1] for r in results)


def test_backing_crash_replay(work):  # noqa: F811
    prep = BackedPrep(work)
    img, log = prep.fresh("rec.qed"), work / "rec.log"
    base = open(img, "rb").read()
    p, _, _ = load(json_name(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    rp = cr.Replay(str(log), base)
    rng, model = random.Random(3), prep.model()
    probs, running = [], []
    with ThreadPoolExecutor(WORKERS) as ex:
        for cut, v, data, started, flushed in rp.images(rp.cuts(8 if SAN else 14, rng),
                                                        ("drop", "random", "keep"), rng):
            path = work / ("cut%d-%s.qed" % (cut, v))
            path.write_bytes(data)
            running.append(ex.submit(verify_flat, path, model, started, flushed,
                                     "cut %d/%d (%s)" % (cut, len(rp.recs), v)))
        for f in running:
            probs += f.result()
    assert not probs, "\n".join(probs[:20])


def test_reader_matches_qemu(tmp_path):
    """The test's own qed reader agrees with qemu-img convert."""
    prep = Prepared(tmp_path, "random")
    img = prep.fresh("x.qed")
    p, started, _ = load(str(img), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    raw = tmp_path / "x.raw"
    run([QEMU_IMG, "convert", "-O", "raw", str(img), str(raw)], check=True)
    q = QedReader(open(img, "rb").read())
    want = bytearray(q.size)
    for gc, host in q.clusters():
        if host is not None:
            want[gc * q.cs:(gc + 1) * q.cs] = q.read(host, q.cs)[:q.size - gc * q.cs]
    assert raw.read_bytes() == bytes(want)
    assert not cr.judge(open(img, "rb").read(), prep.model(), started, started, QedReader)


def test_sigkill(work):  # noqa: F811
    """The workload killed mid-run again and again on one image."""
    rng = random.Random(17)
    size = 8 * M
    img = work / "k.qed"
    vimg("create", "-q", "-f", "qed", "-o", "cluster_size=4k,table_size=2", img, str(size),
         check=True)
    first, probs, left = 1, [], {}
    deadline = time.monotonic() + (10 if SAN else 15)
    for it in range(6):
        if time.monotonic() > deadline:
            break
        lines = rand_ops(rng, 300, size, 65536, flush_every=5,
                         kinds=("write",) * 6 + ("zero",))
        s = script_file(work / ("s%d.txt" % it), lines)
        proc = subprocess.Popen([LOAD, "-k", str(first), "-r", "100", str(img), str(s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode in (-signal.SIGKILL, 0), err
        started, flushed = progress(out)
        one = cr.parse_script("\n".join(lines))
        ops = [(first + i,) + one[i % len(one)][1:]
               for i in range(max(0, started - first + 1))]
        model = cr.Model(ops, size, left)
        check = work / ("check%d.qed" % it)
        shutil.copyfile(img, check)
        probs += verify(check, model, started, flushed,
                        "iteration %d (ops %d..%d, flushed %d)" % (it, first, started, flushed))
        if probs:
            break
        # the next run opens the killed image itself: its open repairs it
        left = cr.observe(open(check, "rb").read(), QedReader)
        first = max(started, first) + 1
    assert not probs, "\n".join(probs)
