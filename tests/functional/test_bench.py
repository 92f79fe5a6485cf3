# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img bench: the announcement lines and every option check as
qemu-img bench prints them (run times masked), writes landing with the
pattern at offset/step, flush intervals, and failing requests."""
import re
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, vimg

MIB = 1 << 20


def masked(text):
    return re.sub(r"in [0-9.]+ seconds", "in X seconds", text)


def bench_both(work, *args):
    """Run bench with both programs; assert the same output and exit code."""
    if QEMU_IMG is None:
        pytest.skip("qemu-img is not installed")
    res = []
    for prog in (QEMU_IMG, VDISK_IMG):
        res.append(subprocess.run([prog, "bench"] + [str(a) for a in args], cwd=work,
                                  capture_output=True, text=True, timeout=120))
    q, v = res
    assert masked(v.stdout) == masked(q.stdout)
    assert v.stderr == q.stderr.replace("qemu-img", "vdisk-img")
    assert v.returncode == q.returncode
    return v


@pytest.fixture
def work(tmp_path):
    with open(tmp_path / "b.raw", "wb") as f:
        f.truncate(64 * MIB)
    with open(tmp_path / "tiny.raw", "wb") as f:
        f.truncate(1024)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["-c", "1000", "-d", "4", "-s", "4k"], ["-f", "raw", "-c", "100"],
    ["-q", "-c", "100"], ["-c", "0"], ["-s", "0", "-c", "10"], ["-S", "0", "-c", "10"],
    ["-c", "10", "-s", "1.5k"], ["-c", "10", "-o", "0x1000"], ["-c", "10", "-s", "1000"],
    ["-f", "raw", "-c", "2000", "-S", "1M"], ["-f", "raw", "-c", "10", "-d", "100000"],
    ["-c", "10", "-i", "threads"], ["-c", "10", "-i", "io_uring"],
    ["-c", "10", "-n", "-t", "none"], ["-U", "-c", "10"],
    ["-f", "raw", "-w", "-c", "10", "-d", "2", "--flush-interval=4"],
    ["-f", "raw", "-w", "-c", "10", "-d", "2", "--flush-interval=4", "--no-drain"],
    ["-f", "raw", "-w", "-c", "10", "-d", "2", "--flush-interval=0"],
    ["-f", "raw", "-w", "-c", "100", "--no-drain"],
    ["-w", "-c", "100", "--pattern=0x10"],
])
def test_runs_match_qemu(work, args):
    v = bench_both(work, *args, "b.raw")
    assert v.returncode == 0 and "Run completed in " in v.stdout


@pytest.mark.parametrize("args", [
    ["-c", "-1"], ["-c", "x"], ["-c", "1k"], ["-c", "3000000000"], ["-d", "x"],
    ["-d", "-1"], ["-d", "1k"], ["-d", "2147483648"], ["-s", "x"], ["-s", "3G"],
    ["-S", "x"], ["-S", "-1"], ["-S", "3G"], ["-o", "x"], ["-o", "-1"],
    ["-o", "18446744073709551615"], ["--pattern=x"], ["--pattern=256"],
    ["--pattern=-1"], ["--flush-interval=x"], ["-c", "100", "--flush-interval=10"],
    ["-w", "-c", "100", "--flush-interval=10"],
    ["-w", "-c", "10", "-d", "4", "--flush-interval=2", "--no-drain"],
    ["-t", "bogus"], ["-i", "bogus"], ["-c", "10", "-i", "native"], ["-c", "10", "-n"],
    ["-w", "-U", "-c", "10"], ["-c"], ["-x"], ["-f", "foo"],
    ["--image-opts", "-f", "raw"],
])
def test_errors_match_qemu(work, args):
    v = bench_both(work, *args, "b.raw")
    assert v.returncode == 1 and v.stderr.startswith("vdisk-img: ")


@pytest.mark.parametrize("args", [
    [], ["b.raw", "extra"], ["missing.raw"], ["-f", "raw", "-c", "10", "tiny.raw"],
    ["-c", "10", "-o", "64M", "b.raw"], ["-c", "10", "-o", "63M", "-s", "2M", "b.raw"],
])
def test_bad_targets_match_qemu(work, args):
    v = bench_both(work, *args)
    assert v.returncode == 1


def test_depth_zero_is_refused(work):
    # qemu-img waits forever here; vdisk-img refuses instead
    p = vimg("bench", "-d", "0", work / "b.raw", timeout=30)
    assert p.returncode == 1
    assert p.stderr == "vdisk-img: Invalid queue depth specified\n"


def test_writes_land_with_pattern(work):
    p = vimg("bench", "-f", "raw", "-w", "-c", "100", "-d", "8", "-s", "4k",
             "-S", "8k", "-o", "1M", "--pattern=0xab", work / "b.raw")
    assert p.returncode == 0, p.stderr
    data = (work / "b.raw").read_bytes()
    for i in range(100):
        off = MIB + i * 8192
        assert data[off:off + 4096] == b"\xab" * 4096
        assert data[off + 4096:off + 8192] == bytes(4096)
    assert data[MIB + 100 * 8192:MIB + 100 * 8192 + 4096] == bytes(4096)


def test_writes_wrap_at_end(work):
    p = vimg("bench", "-f", "raw", "-w", "-c", "10", "-s", "512", "-S", "512",
             "--pattern=7", work / "tiny.raw")
    assert p.returncode == 0, p.stderr
    assert (work / "tiny.raw").read_bytes() == b"\x07" * 1024


def test_flush_interval_with_depth(work):
    p = vimg("bench", "-f", "raw", "-w", "-c", "1000", "-d", "16", "--flush-interval=16",
             "--pattern=1", work / "b.raw")
    assert p.returncode == 0
    assert p.stdout.splitlines()[1] == "Sending flush every 16 requests"
    assert (work / "b.raw").read_bytes()[:4096000] == b"\x01" * 4096000


def test_read_only_by_default(work):
    before = (work / "b.raw").read_bytes()[:4096]
    assert vimg("bench", "-c", "50", work / "b.raw").returncode == 0
    assert (work / "b.raw").read_bytes()[:4096] == before
