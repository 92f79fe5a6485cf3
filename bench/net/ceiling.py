# SPDX-License-Identifier: BSD-3-Clause
"""The server's ceiling for the network benches (bench/net/iscsi, rbd,
gluster): how fast a plain client that only moves the bytes (no image
format, no target file) reads or writes on the same server, so a convert's
time can be set beside what any client could reach on this machine.

The plain clients are Debian's: iscsi-perf (libiscsi-bin; reads, output
discarded) and fio with its rbd and gfapi_async engines.  Each tries a few
queue depths and request sizes (the GRID lists below) and the best rate is
kept.  The ceiling time is the bytes a convert has to move (the allocated
extents it reads, the nonzero data it writes) over that rate, so it leaves
out connecting and tearing down; `ceiling T s` is therefore a bound from
below on every client, qemu-img and vdisk-img included.

VDISK_BENCH_CEILING=0 skips the ceiling; VDISK_BENCH_CEIL_SECONDS (default
5) is how long each iscsi-perf setting runs."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

ENABLED = os.environ.get("VDISK_BENCH_CEILING", "1") != "0"
SECONDS = int(os.environ.get("VDISK_BENCH_CEIL_SECONDS", "5"))
FIO = shutil.which("fio")
ISCSI_PERF = shutil.which("iscsi-perf")
MIB = 1 << 20
GIB = 1 << 30

# (sessions, requests in flight per session, request bytes)
ISCSI_GRID = [(1, 8, 256 << 10), (1, 32, 256 << 10), (1, 8, 512 << 10), (1, 32, 512 << 10),
              (1, 8, 1 << 20), (1, 32, 1 << 20), (1, 8, 2 << 20), (4, 8, 512 << 10)]
# (iodepth, request bytes) for fio's rbd and gfapi_async engines
FIO_GRID = [(16, 4 << 20), (32, 1 << 20), (8, 1 << 20), (32, 256 << 10)]


def warm(path):
    """Read a server's backing file into the page cache, so every timed run
    and every ceiling try starts with it cached (a `bench/run` elsewhere on
    the machine drops the cache; a cold file reads at the disk's speed)."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def data_bytes(path):
    """Bytes in the allocated extents of a local file (SEEK_DATA/SEEK_HOLE):
    what a reader that skips holes has to move."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end, off, total = os.fstat(fd).st_size, 0, 0
        while off < end:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            off = os.lseek(fd, start, os.SEEK_HOLE)
            total += off - start
        return total
    finally:
        os.close(fd)


def nonzero_bytes(path, unit=64 << 10):
    """Bytes in the nonzero units of a local file (holes and written zeros
    left out): what a convert writes to a fresh target."""
    zero = bytes(unit)
    total = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(unit)
            if not b:
                return total
            if b != zero[:len(b)]:
                total += len(b)


def _run(argv, env=None, timeout=600):
    """Run argv; (wall s, CPU s, stdout).  Fails loudly."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError("%s: no end after %d s" % (" ".join(argv), timeout))
    wall = time.monotonic() - start
    # communicate() reaped it: its CPU is in this process's children total
    if proc.returncode:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), proc.returncode,
                                                   err.decode(errors="replace")[-2000:]))
    return wall, out.decode(errors="replace")


def _children_cpu():
    r = os.times()
    return r.children_user + r.children_system


def fio(engine_args, rw, depth, bs, env=None):
    """One fio job over the whole file or image; (bytes/s, bytes, io s,
    wall s, CPU s)."""
    argv = [FIO, "--name=ceiling", "--rw=" + rw, "--bs=%d" % bs, "--iodepth=%d" % depth,
            "--output-format=json"] + engine_args
    cpu0 = _children_cpu()
    wall, out = _run(argv, env=env)
    cpu = _children_cpu() - cpu0
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read" if rw == "read" else "write"]
    nbytes, io_s = side["io_bytes"], side["runtime"] / 1000.0
    if nbytes <= 0 or io_s <= 0:
        raise RuntimeError("fio moved nothing: %s" % " ".join(argv))
    return nbytes / io_s, nbytes, io_s, wall, cpu


def best_fio(what, engine_args, rw, env=None, before=None, last_args=()):
    """fio over FIO_GRID; the best result as a dict, and a line per try
    (last_args are added to the last try's arguments)."""
    best = None
    for i, (depth, bs) in enumerate(FIO_GRID):
        if before:
            before()
        args = engine_args + (list(last_args) if i == len(FIO_GRID) - 1 else [])
        rate, nbytes, io_s, wall, cpu = fio(args, rw, depth, bs, env)
        print("     ceiling try %s %s iodepth %d bs %d KiB: %.1f MiB/s (%d MiB in %.2f s, "
              "wall %.2f s, CPU %.2f s)" % (what, rw, depth, bs >> 10, rate / MIB,
                                            nbytes >> 20, io_s, wall, cpu), flush=True)
        if best is None or rate > best["rate"]:
            best = {"rate": rate, "how": "fio %s %s iodepth %d bs %d KiB" % (what, rw, depth,
                                                                              bs >> 10),
                    "cpu_per_gib": cpu * GIB / nbytes, "wall": wall, "nbytes": nbytes}
    return best


PERF_AVG = re.compile(r"iops average (\d+)")


def iscsi_perf(url, sessions, depth, req, block_size=512, seconds=None):
    """`sessions` iscsi-perf processes reading the LUN sequentially (each
    wraps round at its end) for `seconds`; (bytes/s, CPU s per GiB)."""
    seconds = seconds or SECONDS
    blocks = req // block_size
    argv = [ISCSI_PERF, "-t", str(seconds), "-m", str(depth), "-b", str(blocks), url]
    cpu0 = _children_cpu()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True) for _ in range(sessions)]
    rate = 0.0
    failed = None
    for p in procs:
        try:
            out, err = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        m = PERF_AVG.findall(out.decode(errors="replace"))
        if p.returncode or not m:
            failed = "iscsi-perf failed (%s): %s" % (p.returncode,
                                                    (out + err).decode(errors="replace")[-500:])
            continue
        # the last average is the whole run's
        rate += int(m[-1]) * blocks * block_size
    if failed:
        raise RuntimeError(failed)
    cpu = _children_cpu() - cpu0
    return rate, cpu * GIB / max(1.0, rate * seconds)


def best_iscsi(url, block_size=512, before=None):
    """iscsi-perf over ISCSI_GRID; the best as a dict, a line per try."""
    best = None
    for sessions, depth, req in ISCSI_GRID:
        if before:
            before()
        rate, cpu_gib = iscsi_perf(url, sessions, depth, req, block_size)
        print("     ceiling try iscsi-perf %d session(s) x %d in flight, %d KiB READ(16): "
              "%.1f MiB/s (CPU %.2f s/GiB)" % (sessions, depth, req >> 10, rate / MIB, cpu_gib),
              flush=True)
        if best is None or rate > best["rate"]:
            best = {"rate": rate, "cpu_per_gib": cpu_gib,
                    "how": "iscsi-perf %d session(s) x %d in flight, %d KiB READ(16)"
                           % (sessions, depth, req >> 10)}
    return best


def report(best, need, peer_s, vdisk_s):
    """Print the ceiling beside the two programs' medians."""
    t = need / best["rate"]
    print("     ceiling %.3f s (%d MiB to move at %.1f MiB/s; best of %s; CPU %.2f s/GiB) | "
          "qemu-img/ceiling %.2f, vdisk-img/ceiling %.2f"
          % (t, need >> 20, best["rate"] / MIB, best["how"], best["cpu_per_gib"],
             peer_s / t, vdisk_s / t), flush=True)
    if "wall" in best:
        print("     (that fio process, connecting and closing included: %.3f s wall for "
              "%d MiB)" % (best["wall"], best["nbytes"] >> 20), flush=True)
    return t


PROGRESS_DONE = b"(100.00/100%)"


def until_copied(argv):
    """Run a convert with -p added; (s until it printed 100%, s until it
    exited): the difference is what it does after the copy (flush, close,
    a library's teardown)."""
    argv = argv[:2] + ["-p"] + argv[2:]
    start = time.monotonic()
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errf, bufsize=0)
        seen, done_at = b"", None
        while True:
            chunk = proc.stdout.read(256)
            if not chunk:
                break
            seen = (seen + chunk)[-64:]
            if done_at is None and PROGRESS_DONE in seen:
                done_at = time.monotonic() - start
        proc.wait()
        end = time.monotonic() - start
        errf.seek(0)
        err = errf.read()
    if proc.returncode or done_at is None:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), proc.returncode,
                                                   err.decode(errors="replace")[-2000:]))
    return done_at, end
