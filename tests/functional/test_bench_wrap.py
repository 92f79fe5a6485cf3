# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img bench sends the requests qemu-img 7.2 bench sends when the
offset/step pattern runs past the end of the image: the offset after a
request is (offset + step) modulo the image size, so the pattern wraps
around (not back to 0), and a request that then runs past the end fails
as in qemu.  The offsets are taken from strace of both programs on a raw
image (in order with one request in flight, as a multiset with more);
the announcement and summary lines and the exit codes must match too."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG

STRACE = shutil.which("strace")
K, M = 1024, 1 << 20
CALLS = "pread64,pwrite64,preadv,pwritev"
CALL = re.compile(r"^(\d+\.\d+) p(read|write)(?:64|v)\(\d+<([^>]*)>, .*, (\d+)\) = ")


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if STRACE is None:
        pytest.skip("strace is not installed")


def masked(text):
    return re.sub(r"in [0-9.]+ seconds", "in X seconds", text)


def traced(prog, img, args, tmp_path):
    """Run bench under strace; its result and the (op, offset) of every
    read or write of img, in the order they started."""
    prefix = tmp_path / ("trace-" + os.path.basename(prog))
    p = subprocess.run([STRACE, "-f", "-ff", "-ttt", "-y", "-qq", "-o", str(prefix),
                        "-e", "trace=" + CALLS,
                        prog, "bench", *[str(a) for a in args], str(img)],
                       capture_output=True, text=True, timeout=120,
                       # LeakSanitizer cannot run under ptrace.
                       env=dict(os.environ, ASAN_OPTIONS=os.environ.get(
                           "ASAN_OPTIONS", "") + ":detect_leaks=0"))
    calls = []
    for f in tmp_path.glob(prefix.name + ".*"):
        for line in f.read_text().splitlines():
            m = CALL.match(line)
            if m and os.path.realpath(m.group(3)) == os.path.realpath(img):
                calls.append((float(m.group(1)), m.group(2), int(m.group(4))))
        f.unlink()
    calls.sort()
    return p, [(op, off) for _, op, off in calls]


def both(tmp_path, size, args):
    """bench by both programs on fresh images of size bytes."""
    res = []
    for prog in (QEMU_IMG, VDISK_IMG):
        img = tmp_path / "w.raw"
        with open(img, "wb") as f:
            f.truncate(size)
        res.append(traced(prog, img, ["-f", "raw"] + args, tmp_path))
    (q, qoffs), (v, voffs) = res
    assert masked(v.stdout) == masked(q.stdout)
    assert v.stderr == q.stderr.replace("qemu-img", "vdisk-img")
    assert v.returncode == q.returncode
    return v, qoffs, voffs


def expected(offset, step, size, count):
    offs = []
    for _ in range(count):
        offs.append(offset)
        offset = (offset + step) % size
    return offs


@pytest.mark.parametrize("rw", [[], ["-w", "--pattern=0x5a"]])
@pytest.mark.parametrize("size,args", [
    (M, ["-c", "100", "-o", "8192", "-S", "12k", "-s", "4k"]),      # the reported case
    (M, ["-c", "50", "-o", str(M - 4 * K), "-S", "8k", "-s", "4k"]),
    (M, ["-c", "20", "-o", "4096", "-S", "1536k", "-s", "4k"]),     # step > size
    (M, ["-c", "30", "-S", "3M", "-s", "4k"]),                       # step a multiple
    (1000448, ["-c", "300", "-o", "512", "-S", "4k", "-s", "512"]),  # odd size
    (64 * K, ["-c", "40", "-S", "24k", "-s", "8k", "-o", "0"]),
])
def test_wrapping_offsets_in_order(tmp_path, rw, size, args):
    v, qoffs, voffs = both(tmp_path, size, ["-d", "1"] + rw + args)
    assert v.returncode == 0, v.stderr
    assert "Run completed in " in v.stdout
    assert qoffs, "no %s calls of qemu-img on the image traced" % CALLS
    assert voffs == qoffs
    opt = dict(zip(args[::2], args[1::2]))
    assert [o for _, o in voffs] == expected(int(opt.get("-o", "0")),
                                              parse(opt["-S"]), size, int(opt["-c"]))


def parse(s):
    return int(s[:-1]) * {"k": K, "M": M}[s[-1]] if s[-1] in "kM" else int(s)


@pytest.mark.parametrize("depth", ["4", "16"])
def test_wrapping_offsets_in_parallel(tmp_path, depth):
    v, qoffs, voffs = both(tmp_path, M, ["-d", depth, "-w", "-c", "200", "-o", "8192",
                                         "-S", "12k", "-s", "4k"])
    assert v.returncode == 0, v.stderr
    assert sorted(voffs) == sorted(qoffs)
    assert sorted(o for _, o in voffs) == sorted(expected(8192, 12288, M, 200))


@pytest.mark.parametrize("args", [
    ["-c", "2000", "-S", "1000", "-s", "4k"],        # wraps into the last 4k
    ["-c", "10", "-o", str(M - 2 * K), "-s", "4k"],  # the first request runs past
])
def test_request_past_end_fails_as_in_qemu(tmp_path, args):
    v, qoffs, voffs = both(tmp_path, M, ["-d", "1"] + args)
    assert v.returncode == 1
    assert v.stderr == "vdisk-img: Failed request: Input/output error\n"
    assert voffs == qoffs


def test_summary_lines(tmp_path):
    v, _, _ = both(tmp_path, M, ["-c", "100", "-o", "8192", "-S", "12k", "-s", "4k"])
    assert masked(v.stdout) == (
        "Sending 100 read requests, 4096 bytes each, 64 in parallel "
        "(starting at offset 8192, step size 12288)\n"
        "Run completed in X seconds.\n")
    assert re.search(r"Run completed in \d+\.\d{3} seconds\.\n$", v.stdout)
