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
import signal
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import TOP, run, vimg
import crash_replay as cr
from crash_kit import LOAD, load, progress, rand_ops, script_file, \
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


class Prepared:
    """A scenario's image after its setup ops."""

    def __init__(self, d, name):
        opts, size, setup, ops = SCEN[name]
        self.d, self.size = d, size
        self.base = d / "base.vmdk"
        vimg("create", "-q", "-f", "vmdk", "-o", opts, self.base, str(size), check=True)
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
    assert {"vmdk_grain_write", "vmdk_gt_update", "vmdk_rgt_update"} <= set(EVENTS)
    for e in EVENTS:
        p = run([os.path.join(os.path.dirname(LOAD), "vdisk-io"),
                 json_name("/nonexistent", rule={"event": e}), "flush"])
        assert "invalid parameter value" not in p.stderr, e


def inject_case(prep, event, err, once):
    tag = "%s-%d-%s" % (event, err, "once" if once else "always")
    img = prep.fresh(tag + ".vmdk")
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
    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(lambda c: inject_case(prep, *c), cases))
    probs = [p for r in results for p in r[0]]
    assert not probs, "\n".join(probs[:20])
    assert any(r[1] for r in results), "no injected error ever reached the workload"


@pytest.mark.parametrize("name", sorted(SCEN))
def test_crash_replay(work, name):  # noqa: F811
    prep = Prepared(work, name)
    img, log = prep.fresh("rec.vmdk"), work / "rec.log"
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
        for cut, v, data, started, flushed in rp.images(rp.cuts(30, rng),
                                                        ("drop", "random", "keep"), rng):
            path = work / ("cut%d-%s.vmdk" % (cut, v))
            path.write_bytes(data)
            running.append(ex.submit(job, path, started, flushed,
                                     "cut %d/%d (%s)" % (cut, len(rp.recs), v)))
        for f in running:
            probs += f.result()
    assert not probs, "\n".join(probs[:20])


def test_reader_matches_qemu(tmp_path):
    """The test's own vmdk reader agrees with qemu-img convert."""
    prep = Prepared(tmp_path, "random")
    img = prep.fresh("x.vmdk")
    p, started, _ = load(str(img), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    raw = tmp_path / "x.raw"
    run([QEMU_IMG, "convert", "-O", "raw", str(img), str(raw)], check=True)
    q = VmdkReader(open(img, "rb").read())
    want = bytearray(q.size)
    for gc, host in q.clusters():
        if host is not None:
            want[gc * q.cs:(gc + 1) * q.cs] = q.read(host, q.cs)[:q.size - gc * q.cs]
    assert raw.read_bytes() == bytes(want)
    assert not cr.judge(open(img, "rb").read(), prep.model(), started, started, VmdkReader)


def test_sigkill(work):  # noqa: F811
    """The workload killed mid-run again and again on one image."""
    rng = random.Random(17)
    size = 8 * M
    img = work / "k.vmdk"
    vimg("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", img, str(size), check=True)
    first, probs, left = 1, [], {}
    deadline = time.monotonic() + 20
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
        check = work / ("check%d.vmdk" % it)
        shutil.copyfile(img, check)
        probs += verify(check, model, started, flushed,
                        "iteration %d (ops %d..%d, flushed %d)" % (it, first, started, flushed))
        if probs:
            break
        left = cr.observe(open(check, "rb").read(), VmdkReader)
        first = max(started, first) + 1
    assert not probs, "\n".join(probs)
