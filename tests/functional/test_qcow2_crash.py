# SPDX-License-Identifier: BSD-3-Clause
"""Crash safety of the qcow2 driver, three ways (write.c lists the ordering
invariants under test):

(a) fault injection: every event the driver names (grepped from its
    sources) fails with EIO and ENOSPC, once and always, during allocating
    writes, L1 growth, refcount table growth, zero writes, discard and
    truncate: the workload stops with a message, qemu-img check finds no
    corruption (leaks are fine) and flushed data reads back;
(b) crash replay: the record filter logs every write and flush; the image
    is rebuilt at sampled cuts with the writes after the last flush dropped
    (or a random subset kept, as a disk may) and judged the same way, lazy
    refcount images after vdisk repaired them at a read-write open;
(c) SIGKILL of the workload mid-run, lazy refcounts on and off.

Sectors are judged by crash_replay: each reads as its value at the last
completed flush or as something written after it."""
import json
import os
import random
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run, same_output, vimg
import crash_kit as kit
import crash_replay as cr

from crash_kit import EIO, ENOSPC, LOAD, VDISK_IO, load, progress, rand_ops, script_file, \
    work  # noqa: F401  (work: the scratch directory fixture)

QEMU_IMG = shutil.which("qemu-img")
K, M = 1024, 1 << 20
WORKERS = max(2, min(8, os.cpu_count() or 2))


# Every event the qcow2 driver emits: vd_event calls and the cache's load /
# write-back events.
EVENTS = kit.driver_events("qcow2", (r'qc_cache_(?:new|set_write_event)\([^;]*?"([a-z0-9_]+)"',))


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if not os.path.exists(LOAD):
        pytest.skip("vdisk-crashload is not built")


# ---- helpers ----

def create(path, opts, size):
    vimg("create", "-q", "-f", "qcow2", "-o", opts, path, str(size), check=True)


def json_name(img, log=None, rule=None):
    return kit.json_name("qcow2", img, log, rule)


def qcheck(img):
    p = run([QEMU_IMG, "check", str(img)])
    return p.returncode, p.stdout + p.stderr


def repair(img):
    """Open read-write in vdisk (repairs a dirty image), flush, close."""
    return run([VDISK_IO, str(img), "flush"])


def verify(img, model, started, flushed, lazy=False, what=""):
    """Problems with a crashed/failed image: qemu-img check, dirty bit,
    guest data.  Returns a list of strings (empty: fine)."""
    data = open(img, "rb").read()
    if cr.header_dirty(data):
        if not lazy:
            return ["%s: dirty bit set without lazy refcounts" % what]
        p = repair(img)
        if p.returncode:
            return ["%s: repair at open failed: %s" % (what, p.stderr)]
        rc, out = qcheck(img)
        if rc:
            return ["%s: check after repair: %s" % (what, out)]
        data = open(img, "rb").read()
    else:
        rc, out = qcheck(img)
        if rc not in (0, 3):
            return ["%s: qemu-img check (%d): %s" % (what, rc, out)]
    return ["%s: %s" % (what, b) for b in cr.judge(data, model, started, flushed)]


# ---- scenarios: (create options, size, setup ops, ops under test) ----

def scenarios():
    rng = random.Random(7)
    s = {}
    s["alloc"] = ("cluster_size=4k", 16 * M,
                  ["write 0 65536", "write 5242880 8192", "flush"],
                  ["write 1024 3072", "write 2097152 12288", "flush",
                   "write 4194304 4096", "write 9000448 70144", "flush",
                   "write 5243392 512", "write 13631488 8192"])
    s["l1_growth"] = ("cluster_size=512", 1 * M,
                      ["write 0 32768", "flush"],
                      ["truncate %d" % (64 * M), "write %d 4096" % (60 * M), "flush",
                       "write %d 1536" % (63 * M + 512), "write 512 1024", "flush",
                       "write %d 1024" % (40 * M)])
    # One refcount table cluster covers 2 MB of the file here.
    s["reftable_growth"] = ("cluster_size=512,refcount_bits=64", 16 * M,
                            ["write 0 1572864", "flush"],
                            ["write %d 262144" % (2 * M), "flush",
                             "write %d 262144" % (3 * M), "write %d 262144" % (4 * M),
                             "flush", "write %d 65536" % (6 * M)])
    s["zero"] = ("cluster_size=4k", 4 * M,
                 ["write 0 1048576", "flush"],
                 ["zero 4096 8192", "zero 16384 16384 unmap", "flush", "zero 1536 1024",
                  "zero 65536 262144 unmap", "flush", "write 4096 4096",
                  "zero 2097152 65536"])
    s["discard"] = ("cluster_size=4k", 4 * M,
                    ["write 0 1048576", "flush"],
                    ["discard 8192 16384", "flush", "discard 262144 131072",
                     "write 2097152 16384", "flush", "write 8192 4096",
                     "discard 0 4096"])
    s["truncate"] = ("cluster_size=4k", 4 * M,
                     ["write 0 4194304", "flush"],
                     ["truncate 1048576", "flush", "truncate 8388608",
                      "write 6291456 8192", "flush", "truncate 2097152"])
    s["random"] = ("cluster_size=1k", 2 * M,
                   rand_ops(rng, 20, 2 * M, 8192) + ["flush"],
                   rand_ops(rng, 40, 2 * M, 8192,
                            kinds=("write", "write", "write", "zero", "discard")))
    return s


SCEN = scenarios()


class Prepared:
    """A scenario's image after its setup ops (flushed and closed)."""

    def __init__(self, d, name, lazy=False):
        opts, size, setup, ops = SCEN[name]
        if lazy:
            opts += ",lazy_refcounts=on"
        self.d, self.name, self.lazy, self.size = d, name, lazy, size
        self.base = d / "base.qcow2"
        create(self.base, opts, size)
        self.n_setup = len([o for o in setup if o.strip()])
        p, _, _ = load(str(self.base), script_file(d / "setup.txt", setup))
        assert p.returncode == 0, p.stderr
        self.script = script_file(d / "ops.txt", ops)
        self.ops = cr.parse_script("\n".join(setup)) + \
            cr.parse_script("\n".join(ops), self.n_setup + 1)
        self.first = self.n_setup + 1

    def model(self):
        return cr.Model(self.ops, self.size)

    def fresh(self, name):
        img = self.d / name
        shutil.copyfile(self.base, img)
        return img


# ---- (a) fault injection ----

def fired_events(prep):
    """Events emitted while the ops under test run (from a record log)."""
    img, log = prep.fresh("discover.qcow2"), prep.d / "discover.log"
    p, _, _ = load(json_name(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    fired = {r[1] for r in cr.parse_log(str(log)) if r[0] == "E"}
    return [e for e in EVENTS if e in fired]


def inject_case(prep, event, err, once):
    """Run the ops under test with one failure rule; problems found."""
    tag = "%s-%d-%s" % (event, err, "once" if once else "always")
    img = prep.fresh(tag + ".qcow2")
    rule = {"event": event, "errno": err, "once": once}
    p, started, flushed = load(json_name(img, rule=rule), prep.script, prep.first)
    probs = []
    if p.returncode not in (0, 1) or "Sanitizer" in p.stderr:
        probs.append("%s: workload died (%d): %s" % (tag, p.returncode, p.stderr))
    if p.returncode == 1 and "vdisk-crashload: op" not in p.stderr:
        probs.append("%s: failed without a message: %r" % (tag, p.stderr))
    probs += verify(img, prep.model(), started, flushed, prep.lazy, tag)
    if not probs:
        os.unlink(img)
    return probs, p.returncode == 1


@pytest.mark.parametrize("name", ["alloc", "l1_growth", "reftable_growth", "zero",
                                  "discard", "truncate", "random"])
def test_fault_injection(work, name):
    """Each event the ops fire fails with EIO and ENOSPC, once and always."""
    prep = Prepared(work, name)
    events = fired_events(prep)
    assert events, "no driver events fired"
    cases = [(e, err, once) for e in events for err in (EIO, ENOSPC)
             for once in (True, False)]
    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(lambda c: inject_case(prep, *c), cases))
    probs = [p for r in results for p in r[0]]
    assert not probs, "\n".join(probs[:20])
    assert any(r[1] for r in results), "no injected error ever reached the workload"


def test_events_listed():
    """The driver names events, and blkdebug knows every one of them."""
    assert len(EVENTS) > 20
    bad = []
    for e in EVENTS:
        p = run([VDISK_IO, json_name("/nonexistent", rule={"event": e}), "flush"])
        if "invalid parameter value" in p.stderr:
            bad.append(e)
    assert not bad, bad


# ---- (b) crash replay ----

REPLAY_CUTS = 40


def replay_scenario(tmp_path, name, lazy, ncuts=REPLAY_CUTS, seed=1):
    prep = Prepared(tmp_path, name, lazy)
    img, log = prep.fresh("rec.qcow2"), tmp_path / "rec.log"
    base = open(img, "rb").read()
    p, _, _ = load(json_name(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    rp = cr.Replay(str(log), base)
    rng = random.Random(seed)
    model = prep.model()

    def job(path, started, flushed, what):
        probs = verify(path, model, started, flushed, lazy, what)
        if not probs:
            os.unlink(path)
        return probs

    probs, running = [], []
    with ThreadPoolExecutor(WORKERS) as ex:
        for cut, v, data, started, flushed in rp.images(
                rp.cuts(ncuts, rng), ("drop", "random", "keep"), rng):
            path = tmp_path / ("cut%d-%s.qcow2" % (cut, v))
            path.write_bytes(data)
            running.append(ex.submit(job, path, started, flushed,
                                     "cut %d/%d (%s)" % (cut, len(rp.recs), v)))
            if len(running) >= 2 * WORKERS:
                probs += running.pop(0).result()
        for f in running:
            probs += f.result()
    assert not probs, "\n".join(probs[:20])
    return rp


# (seeds: ones that caught the bugs these tests found)
@pytest.mark.parametrize("name,lazy,seed", [
    ("alloc", False, 1), ("l1_growth", False, 1), ("reftable_growth", False, 1),
    ("zero", False, 1), ("discard", False, 1), ("truncate", False, 1),
    ("random", False, 1), ("alloc", True, 1), ("l1_growth", True, 1),
    ("reftable_growth", True, 1), ("discard", True, 2), ("random", True, 1)])
def test_crash_replay(work, name, lazy, seed):
    """Power loss at sampled points of the recorded writes."""
    rp = replay_scenario(work, name, lazy, seed=seed)
    assert rp.flush_at, "the workload never flushed"


def test_replay_reader_matches_qemu(tmp_path):
    """The test's own qcow2 reader agrees with qemu-img convert."""
    prep = Prepared(tmp_path, "random")
    img = prep.fresh("x.qcow2")
    p, started, flushed = load(str(img), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    raw = tmp_path / "x.raw"
    run([QEMU_IMG, "convert", "-O", "raw", str(img), str(raw)], check=True)
    q = cr.Qcow2Reader(open(img, "rb").read())
    want = bytearray(q.size)
    for gc, host in q.clusters():
        if host is not None:
            want[gc * q.cs:(gc + 1) * q.cs] = q.read(host, q.cs)[:q.size - gc * q.cs]
    assert raw.read_bytes() == bytes(want)
    assert not cr.judge(open(img, "rb").read(), prep.model(), started, started)


def test_dirty_image_repaired_at_open(tmp_path):
    """A dirty lazy-refcount image is repaired by a read-write open (as
    QEMU does) but not by check's own open, which reports what it finds."""
    img = tmp_path / "d.qcow2"
    create(img, "lazy_refcounts=on,cluster_size=4k", 4 * M)
    # Kill the workload after its first flush: the dirty bit is on disk.
    s = script_file(tmp_path / "s.txt", ["write 0 65536", "flush"] +
                    ["write %d 4096" % (i * 8192) for i in range(1, 400)])
    proc = subprocess.Popen([LOAD, str(img), str(s)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("flushed"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert cr.header_dirty(open(img, "rb").read())
    info = json.loads(vimg("info", "--output=json", img, check=True).stdout)
    assert info["dirty-flag"] is True
    # check -r opens without repairing: it reports and repairs as qemu-img.
    v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    shutil.copyfile(img, v)
    shutil.copyfile(img, q)
    pv, pq = vimg("check", "-r", "all", v), run([QEMU_IMG, "check", "-r", "all", str(q)])
    assert pv.returncode == pq.returncode
    assert same_output(pv.stdout, pq.stdout), (pv.stdout, pq.stdout)
    p = repair(img)
    assert p.returncode == 0, p.stderr
    data = open(img, "rb").read()
    assert not cr.header_dirty(data)
    rc, out = qcheck(img)
    assert rc == 0, out
    ops = cr.parse_script(s.read_text())
    assert not cr.judge(data, cr.Model(ops, 4 * M), len(ops), 2)


# ---- (c) SIGKILL ----

KILL_ITERATIONS = 8


@pytest.mark.parametrize("lazy", [False, True])
def test_sigkill(work, lazy):
    """The workload is killed mid-run again and again on one image; each
    time the image checks clean (after vdisk's repair when lazy) and keeps
    everything flushed; the next run opens what the last one left (and
    repairs it when dirty)."""
    rng = random.Random(11 + lazy)
    size = 8 * M
    img = work / "k.qcow2"
    create(img, "cluster_size=4k" + (",lazy_refcounts=on" if lazy else ""), size)
    first, probs, left = 1, [], {}
    deadline = time.monotonic() + 30
    for it in range(KILL_ITERATIONS):
        if time.monotonic() > deadline:
            break
        lines = rand_ops(rng, 300, size, 65536, flush_every=5,
                         kinds=("write",) * 6 + ("zero", "discard"))
        s = script_file(work / ("s%d.txt" % it), lines)
        if os.environ.get("VDISK_CRASH_KEEP"):
            shutil.copyfile(img, work / ("before%d.qcow2" % it))
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
        check = work / ("check%d.qcow2" % it)
        shutil.copyfile(img, check)  # the next run opens the original as left
        probs += verify(check, model, started, flushed, lazy,
                        "iteration %d (ops %d..%d, flushed %d)" % (it, first, started,
                                                                   flushed))
        if probs:
            break
        left = cr.observe(open(check, "rb").read())
        first = max(started, first) + 1
    assert not probs, "\n".join(probs)
