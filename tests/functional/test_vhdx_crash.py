# SPDX-License-Identifier: BSD-3-Clause
"""Crash safety of the vhdx driver and its log (lib/format/vhdx/log.c keeps
the write-ordering invariants under test), three ways, on images qemu-img
creates:

(a) fault injection: every event the driver and the log name (grepped from
    their sources) fails with EIO and ENOSPC, once and always, during
    allocating writes, zero writes and discards;
(b) crash replay: the record filter logs every write and flush; the image
    is rebuilt at sampled cuts with the writes after the last flush dropped,
    all kept, or a random subset kept (as a disk may);
(c) SIGKILL of the workload mid-run, again and again on one image.

Each crashed image is judged the same way: vdisk replays its log at a
read-write open; qemu-img check then finds no error; every guest sector
reads as its value at the last completed flush or as something written
after it (crash_replay's model); and QEMU's own replay of the crashed
image reads the same as vdisk's."""
import os
import pathlib
import random
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run
import crash_replay as cr
import vhdx_log_gen as g

from crash_kit import LOAD, VDISK_IO, \
    work  # noqa: F401  (work: the scratch directory fixture)
import crash_kit as kit

QEMU_IMG = shutil.which("qemu-img")
K, M = 1024, 1 << 20
EIO, ENOSPC = 5, 28
WORKERS = 2
SECTOR = 512


EVENTS = kit.driver_events("vhdx")      # the driver's and its log's
LOG_EVENTS = ["vhdx_log_flush_data", "vhdx_log_write_entry", "vhdx_log_flush_entry",
              "vhdx_log_write_update", "vhdx_log_flush_update"]


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if not os.path.exists(LOAD):
        pytest.skip("vdisk-crashload is not built")


# ---- helpers ----

def create(path, size):
    run([QEMU_IMG, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", str(path),
         str(size)], check=True)


def json_name(img, log=None, rule=None):
    return kit.json_name("vhdx", img, log, rule)


def load(name, script, first=1, timeout=120):
    return kit.load(name, script, first, timeout, fmt="vhdx")


def judge(data, model, started, flushed):
    """Guest sectors of a (replayed) image that read as nothing allowed."""
    r = g.Reader(data)
    size = min(r.vsize, model.size)
    bad, seen = [], set()

    def check(s, val):
        if s * SECTOR >= size or len(bad) >= 10:
            return
        ok = model.allowed(s, started, flushed)
        if val not in ok:
            bad.append("guest sector %d (offset %#x) reads as %s, allowed %s" % (
                s, s * SECTOR, "garbage" if val < 0 else
                ("zeroes" if val == 0 else "op %d" % val), sorted(ok)))

    spb = r.block_size // SECTOR
    for b, host in r.blocks():
        blk = r.read(host, r.block_size)
        for i in range(spb):
            s = b * spb + i
            seen.add(s)
            check(s, cr.sector_value(blk[i * SECTOR:(i + 1) * SECTOR], s))
    for s in model.hist:
        if s not in seen:
            check(s, 0)
    return bad


def verify(img, model, started, flushed, what):
    """Problems of a crashed image: vdisk's replay, qemu-img check, guest
    data, and QEMU's replay of the same image.  A list (empty: fine)."""
    q = pathlib.Path(str(img) + ".q")
    shutil.copyfile(img, q)
    dirty = g.log_guid(open(img, "rb").read()) not in (None, bytes(16))
    p = run([VDISK_IO, str(img), "flush"])
    if p.returncode or "Sanitizer" in p.stderr:
        return ["%s: vdisk's open%s failed: %s" % (what, " (replay)" if dirty else "",
                                                   p.stderr)]
    data = open(img, "rb").read()
    # (a read-only open: it fails while the log needs a replay)
    c = run([QEMU_IMG, "check", str(img)])
    if c.returncode:
        return ["%s: qemu-img check (%d) after vdisk's open: %s" % (
            what, c.returncode, c.stdout + c.stderr)]
    probs = ["%s: %s" % (what, b) for b in judge(data, model, started, flushed)]
    pq = run([QEMU_IMG, "check", "-r", "all", str(q)]) if dirty else None
    if pq is None:
        pass
    elif pq.returncode:
        probs.append("%s: qemu's replay failed: %s" % (what, pq.stdout + pq.stderr))
    else:
        c = run([QEMU_IMG, "compare", "-q", str(q), str(img)])
        if c.returncode:
            probs.append("%s: QEMU's replay reads differently from vdisk's" % what)
    if not probs:
        q.unlink()
    return probs


def rand_ops(rng, n, size, maxlen, flush_every=5, kinds=("write",)):
    return kit.rand_ops(rng, n, size, maxlen, flush_every, kinds)


# ---- scenarios: (size, setup ops, ops under test) ----

def scenarios():
    rng = random.Random(5)
    s = {}
    s["alloc"] = (16 * M, ["write 0 65536", "flush"],
                  ["write 1024 3072", "write %d 12288" % (2 * M), "flush",
                   "write %d 4096" % (4 * M + 512), "write %d 70144" % (9 * M - 4096),
                   "flush", "write %d 512" % (5 * M), "write %d 8192" % (13 * M)])
    s["zero_discard"] = (8 * M, ["write 0 %d" % (3 * M), "flush"],
                         ["zero 4096 8192", "zero %d %d unmap" % (M, M), "flush",
                          "discard %d %d" % (2 * M, M), "write %d 4096" % (5 * M),
                          "flush", "zero %d 65536" % (6 * M), "write 512 1024"])
    s["random"] = (8 * M, rand_ops(rng, 10, 8 * M, 8192) + ["flush"],
                   rand_ops(rng, 24, 8 * M, 16384,
                            kinds=("write", "write", "write", "zero", "discard")))
    return s


SCEN = scenarios()


def prepared(d, name):
    """A scenario's image after its setup ops (flushed and closed)."""
    size, setup, ops = SCEN[name]
    return kit.Prepared(d, "vhdx", size, setup, ops, lambda path: create(path, size))


# ---- (a) fault injection ----

@pytest.mark.parametrize("name", ["alloc", "zero_discard"])
def test_fault_injection(work, name):
    """Each event the ops fire fails with EIO (once and always) and ENOSPC
    (once)."""
    prep = prepared(work, name)
    events = kit.fired_events(prep, EVENTS, json_name)
    assert set(LOG_EVENTS) <= set(events), events
    cases = [(e, err, once) for e in events
             for err, once in ((EIO, True), (EIO, False), (ENOSPC, True))]
    kit.fault_injection(prep, cases, json_name, verify, WORKERS)


def test_events_listed():
    """The log names its steps, and blkdebug knows every vhdx event."""
    assert set(LOG_EVENTS) <= set(EVENTS)
    bad = []
    for e in EVENTS:
        p = run([VDISK_IO, json_name("/nonexistent", rule={"event": e}), "flush"])
        if "invalid parameter value" in p.stderr:
            bad.append(e)
    assert not bad, bad


# ---- (b) crash replay ----

REPLAY_CUTS = 12


@pytest.mark.parametrize("name,seed", [("alloc", 1), ("random", 2)])
def test_crash_replay(work, name, seed):
    """Power loss at sampled points of the recorded writes."""
    prep = prepared(work, name)
    rp = kit.record(prep, json_name)
    dirty = []
    probs = kit.replay_cuts(rp, prep, REPLAY_CUTS, random.Random(seed), verify, WORKERS,
                            seen=lambda data: dirty.append(
                                g.log_guid(data) not in (None, bytes(16))))
    assert not probs, "\n".join(probs[:20])
    assert any(dirty), "no cut left a log to replay"


def test_replay_of_every_log_step(work):
    """A cut right after each step of one journalled update (entry written,
    flushed, update written, flushed): the log replays to the same guest
    data whichever step the power loss follows, in vdisk and QEMU."""
    prep = prepared(work, "alloc")
    img, log = prep.fresh("rec.vhdx"), work / "rec.log"
    base = open(img, "rb").read()
    p, _, _ = load(json_name(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    rp = cr.Replay(str(log), base)
    steps = [i + 1 for i, r in enumerate(rp.recs) if r[0] == "E" and r[1] in LOG_EVENTS]
    steps = steps[:2 * len(LOG_EVENTS)]        # the first two updates
    cuts = sorted(set(c + d for c in steps for d in (1, 2) if c + d <= len(rp.recs)))
    jobs = []
    for cut, v, data, started, flushed in rp.images(cuts, ("keep",), random.Random(3)):
        path = work / ("step%d.vhdx" % cut)
        path.write_bytes(data)
        jobs.append((path, started, flushed, "cut %d" % cut))
    model = prep.model()
    with ThreadPoolExecutor(WORKERS) as ex:
        probs = [p for r in ex.map(lambda j: verify(j[0], model, *j[1:]), jobs) for p in r]
    assert not probs, "\n".join(probs[:20])


# ---- (c) SIGKILL ----

KILL_ITERATIONS = 8


def test_sigkill(work):
    """The workload is killed mid-run again and again on one image; each
    time the image replays, checks clean and keeps everything flushed; the
    next run opens (and replays) what the last one left."""
    size = 8 * M
    img = work / "k.vhdx"
    create(img, size)
    probs = kit.sigkill_rounds(work, img, size, random.Random(17), verify, None, 25,
                               rounds=KILL_ITERATIONS, nops=200,
                               kinds=("write",) * 6 + ("zero", "discard"), fmt="vhdx",
                               observe=observe)
    assert not probs, "\n".join(probs)


def observe(data):
    """{guest sector: value} of the sectors of a replayed image that do not
    read as zeroes."""
    r = g.Reader(data)
    spb, vals = r.block_size // SECTOR, {}
    for b, host in r.blocks():
        blk = r.read(host, r.block_size)
        for i in range(spb):
            s = b * spb + i
            v = cr.sector_value(blk[i * SECTOR:(i + 1) * SECTOR], s)
            if v and s * SECTOR < r.vsize:
                vals[s] = v
    return vals
