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

import pytest

from conftest import run, same_output, vimg
import crash_kit as kit
import crash_replay as cr

from crash_kit import LOAD, VDISK_IO, rand_ops, script_file, \
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
    data = cr.read_image(img)
    if cr.header_dirty(data):
        if not lazy:
            return ["%s: dirty bit set without lazy refcounts" % what]
        p = repair(img)
        if p.returncode:
            return ["%s: repair at open failed: %s" % (what, p.stderr)]
        rc, out = qcheck(img)
        if rc:
            return ["%s: check after repair: %s" % (what, out)]
        data = cr.read_image(img)
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


def prepared(d, name, lazy=False):
    """A scenario's image after its setup ops (flushed and closed)."""
    opts, size, setup, ops = SCEN[name]
    if lazy:
        opts += ",lazy_refcounts=on"
    prep = kit.Prepared(d, "qcow2", size, setup, ops, lambda path: create(path, opts, size))
    prep.lazy = lazy
    return prep


def lazy_verify(lazy):
    """verify for an image made with lazy_refcounts=on (or off)."""
    return lambda img, model, started, flushed, what="": verify(img, model, started,
                                                                 flushed, lazy, what)


# ---- (a) fault injection ----

@pytest.mark.parametrize("name", ["alloc", "l1_growth", "reftable_growth", "zero",
                                  "discard", "truncate", "random"])
def test_fault_injection(work, name):
    """Each event the ops fire fails with EIO and ENOSPC, once and always."""
    prep = prepared(work, name)
    events = kit.fired_events(prep, EVENTS, json_name)
    assert events, "no driver events fired"
    kit.fault_injection(prep, kit.injection_cases(events), json_name, lazy_verify(False),
                        WORKERS)


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
    prep = prepared(tmp_path, name, lazy)
    rp = kit.record(prep, json_name)
    probs = kit.replay_cuts(rp, prep, ncuts, random.Random(seed), lazy_verify(lazy), WORKERS)
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
    kit.reader_matches_qemu(prepared(tmp_path, "random"), cr.Qcow2Reader, tmp_path)


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
    size = 8 * M
    img = work / "k.qcow2"
    create(img, "cluster_size=4k" + (",lazy_refcounts=on" if lazy else ""), size)
    probs = kit.sigkill_rounds(work, img, size, random.Random(11 + lazy), lazy_verify(lazy),
                               None, 30, rounds=KILL_ITERATIONS,
                               kinds=("write",) * 6 + ("zero", "discard"),
                               observe=cr.observe)
    assert not probs, "\n".join(probs)
