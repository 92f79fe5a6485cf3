# SPDX-License-Identifier: BSD-3-Clause
"""What the crash-safety tests of every format share: the events a driver
names, the scratch directory fixture, the workload runner (vdisk-crashload)
and the random workloads it runs.  The judging is crash_replay's."""
import glob
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BUILD, TOP, run
import crash_replay as cr

LOAD = os.path.join(BUILD, "tests", "helpers", "vdisk-crashload")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
EIO, ENOSPC = 5, 28


def driver_events(subdir, extra=()):
    """Every event name the sources under lib/format/SUBDIR emit with
    vd_event, plus those the regular expressions in extra find."""
    names = set()
    for f in glob.glob(os.path.join(TOP, "lib", "format", subdir, "*.c")):
        text = open(f).read()
        for pattern in (r'vd_event\([^;]*?"([a-z0-9_]+)"\)',) + tuple(extra):
            names.update(re.findall(pattern, text))
    return sorted(names)


@pytest.fixture
def work(tmp_path):
    """A scratch directory in memory when /dev/shm has room (these tests
    write hundreds of images; the disk may be busy), else tmp_path;
    VDISK_CRASH_KEEP=1 keeps it."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize < (1 << 30):
            raise OSError
        d = tempfile.mkdtemp(prefix="vdisk-crash-", dir="/dev/shm")
    except OSError:
        yield tmp_path
        return
    try:
        yield pathlib.Path(d)
    finally:
        if not os.environ.get("VDISK_CRASH_KEEP"):     # keep to debug
            shutil.rmtree(d, ignore_errors=True)


def progress(out):
    """(last op started, last op flushed) from vdisk-crashload's output."""
    started = flushed = 0
    for line in out.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == "start":
            started = int(f[1])
        elif len(f) == 2 and f[0] == "flushed":
            flushed = int(f[1])
    return started, flushed


def load(name, script, first=1, timeout=120, fmt=None):
    """Run vdisk-crashload on image name (format fmt, else probed);
    (process, last op started, last op flushed)."""
    argv = [LOAD] + (["-f", fmt] if fmt else []) + ["-k", str(first), name, str(script)]
    p = run(argv, timeout=timeout)
    return (p,) + progress(p.stdout)


def script_file(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def rand_ops(rng, n, size, maxlen, flush_every=6, kinds=("write",)):
    """n random sector-aligned operations in [0, size), flushes between."""
    ops = []
    for _ in range(n):
        ln = rng.randrange(1, maxlen // 512 + 1) * 512
        off = rng.randrange(0, (size - ln) // 512 + 1) * 512
        kind = rng.choice(kinds)
        ops.append("%s %d %d" % (kind, off, ln))
        if rng.randrange(flush_every) == 0:
            ops.append("flush")
    return ops


def json_name(fmt, img, log=None, rule=None):
    """json: name of img as fmt, through blkdebug (rule) and record (log)."""
    import json
    node = {"driver": "file", "filename": str(img)}
    if rule:
        node = {"driver": "blkdebug", "inject-error": [rule], "image": node}
    if log:
        node = {"driver": "record", "log": str(log), "image": node}
    return "json:" + json.dumps({"driver": fmt, "file": node})


def events_listed(events, want, name_for):
    """The driver names the events in want, and blkdebug accepts each."""
    assert set(want) <= set(events), events
    for e in events:
        p = run([VDISK_IO, name_for("/nonexistent", rule={"event": e}), "flush"])
        assert "invalid parameter value" not in p.stderr, e


class Prepared:
    """A scenario's image: made by create(path) as base.EXT in directory d,
    then setup run on it (opened as name_for(path)); ops is the workload
    under test, its ops numbered after the setup's."""

    def __init__(self, d, ext, size, setup, ops, create, name_for=str):
        self.d, self.ext, self.size = d, ext, size
        self.base = d / ("base." + ext)
        create(self.base)
        p, _, _ = load(name_for(self.base), script_file(d / "setup.txt", setup))
        assert p.returncode == 0, p.stderr
        self.script = script_file(d / "ops.txt", ops)
        self.ops = cr.parse_script("\n".join(setup)) + \
            cr.parse_script("\n".join(ops), len(setup) + 1)
        self.first = len(setup) + 1
        self.initial = None

    def model(self):
        return cr.Model(self.ops, self.size, self.initial)

    def fresh(self, name):
        img = self.d / name
        shutil.copyfile(self.base, img)
        return img


def fired_events(prep, events, name_for):
    """The events of events emitted while prep's ops run (from a record
    log), in their order in events."""
    img, log = prep.fresh("discover." + prep.ext), prep.d / "discover.log"
    p, _, _ = load(name_for(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    fired = {r[1] for r in cr.parse_log(str(log)) if r[0] == "E"}
    return [e for e in events if e in fired]


def injection_cases(events, errs=(EIO, ENOSPC)):
    """(event, errno, once) for each event, errno and once/always."""
    return [(e, err, once) for e in events for err in errs for once in (True, False)]


def inject_case(prep, case, name_for, verify, need_message=True):
    """Run prep's workload with case's error injected; (problems, whether
    the workload saw the error)."""
    event, err, once = case
    tag = "%s-%d-%s" % (event, err, "once" if once else "always")
    img = prep.fresh("%s.%s" % (tag, prep.ext))
    rule = {"event": event, "errno": err, "once": once}
    p, started, flushed = load(name_for(img, rule=rule), prep.script, prep.first)
    probs = []
    if p.returncode not in (0, 1) or "Sanitizer" in p.stderr or "bad script" in p.stderr:
        probs.append("%s: workload died (%d): %s" % (tag, p.returncode, p.stderr))
    if need_message and p.returncode == 1 and "vdisk-crashload: op" not in p.stderr:
        probs.append("%s: failed without a message: %r" % (tag, p.stderr))
    probs += verify(img, prep.model(), started, flushed, tag)
    if not probs:
        img.unlink()
    return probs, p.returncode == 1


def fault_injection(prep, cases, name_for, verify, workers=2, need_message=True):
    """Every case of injection_cases judged; fails the test on a problem
    or when no injected error ever reached the workload."""
    with ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda c: inject_case(prep, c, name_for, verify, need_message),
                              cases))
    probs = [p for r in results for p in r[0]]
    assert not probs, "\n".join(probs[:20])
    assert any(r[1] for r in results), "no injected error ever reached the workload"


def record(prep, name_for):
    """Run prep's workload through the record filter; its Replay."""
    img, log = prep.fresh("rec." + prep.ext), prep.d / "rec.log"
    base = open(img, "rb").read()
    p, _, _ = load(name_for(img, log=log), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    rp = cr.Replay(str(log), base)
    assert rp.flush_at, "the workload never flushed"
    return rp


def replay_cuts(rp, prep, ncuts, rng, check, workers=2, seen=None):
    """Judge the image at ncuts sampled cuts of rp (writes after the last
    flush dropped, a random subset kept, all kept) with check(path, model,
    started, flushed, what); seen(data) is called on each image.  Images
    that pass are deleted.  The problems."""
    model, probs, running = prep.model(), [], []

    def job(path, started, flushed, what):
        found = check(path, model, started, flushed, what)
        if not found:
            os.unlink(path)
        return found

    with ThreadPoolExecutor(workers) as ex:
        for cut, v, data, started, flushed in rp.images(rp.cuts(ncuts, rng),
                                                        ("drop", "random", "keep"), rng):
            if seen:
                seen(data)
            path = prep.d / ("cut%d-%s.%s" % (cut, v, prep.ext))
            cr.write_image(path, data)
            running.append(ex.submit(job, path, started, flushed,
                                     "cut %d/%d (%s)" % (cut, len(rp.recs), v)))
            if len(running) >= 2 * workers:        # bound the images on disk
                probs += running.pop(0).result()
        for f in running:
            probs += f.result()
    return probs


def reader_matches_qemu(prep, reader, tmp_path, name_for=str):
    """The test's own reader agrees with qemu-img convert on prep's image
    after its workload, and judges it consistent."""
    img = prep.fresh("x." + prep.ext)
    p, started, _ = load(name_for(img), prep.script, prep.first)
    assert p.returncode == 0, p.stderr
    raw = tmp_path / "x.raw"
    run([shutil.which("qemu-img"), "convert", "-O", "raw", str(img), str(raw)], check=True)
    q = reader(open(img, "rb").read())
    want = bytearray(q.size)
    for gc, host in q.clusters():
        if host is not None:
            want[gc * q.cs:(gc + 1) * q.cs] = q.read(host, q.cs)[:q.size - gc * q.cs]
    assert raw.read_bytes() == bytes(want)
    assert not cr.judge(open(img, "rb").read(), prep.model(), started, started, reader)


def sigkill_rounds(work, img, size, rng, verify, reader, seconds, rounds=6, nops=300,
                   kinds=("write",) * 6 + ("zero",), fmt=None, observe=None):
    """Kill the workload (nops random ops of kinds) mid-run again and again
    on one image; after each kill a copy is judged, and the next run opens
    the killed image itself (its open repairs what it must).  What a copy
    holds is read by observe(data), by default cr.observe with reader.
    The problems."""
    first, probs, left = 1, [], {}
    deadline = time.monotonic() + seconds
    for it in range(rounds):
        if time.monotonic() > deadline:
            break
        lines = rand_ops(rng, nops, size, 65536, flush_every=5, kinds=kinds)
        s = script_file(work / ("s%d.txt" % it), lines)
        proc = subprocess.Popen([LOAD] + (["-f", fmt] if fmt else []) +
                                ["-k", str(first), "-r", "100", str(img), str(s)],
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
        check = work / ("check%d%s" % (it, pathlib.Path(img).suffix))
        shutil.copyfile(img, check)
        probs += verify(check, model, started, flushed,
                        "iteration %d (ops %d..%d, flushed %d)" % (it, first, started, flushed))
        if probs:
            break
        data = open(check, "rb").read()
        left = observe(data) if observe else cr.observe(data, reader)
        first = max(started, first) + 1
    return probs
