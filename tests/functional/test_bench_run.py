# SPDX-License-Identifier: BSD-3-Clause
"""bench/run: the W5 group runs every migration workload on a small mixed
image (one run per side, vdisk's outputs checked by qemu-img compare and
check) and skips the vhdx ones with a clear line while vdisk-img cannot
create vhdx."""
import os
import random
import re
import subprocess
import sys


from conftest import BUILD, TOP, vdisk_formats

W5 = ["W5vmdk", "W5vmdk-raw", "W5stream", "W5stream-raw", "W5vhdx", "W5vhdx-raw",
      "W5vpc", "W5vpc-raw", "W5vdi", "W5vdi-raw", "W5qed", "W5qed-raw",
      "W5rs", "W5vq", "W5rx"]
VHDX = {"W5vhdx", "W5vhdx-raw", "W5rx"}
MIB = 1 << 20
MKMIXED = os.path.join(os.path.dirname(TOP), "shared", "bench", "mkmixed")


def small_mixed(path, mib):
    """A stand-in for the benchmark's mixed image when its generator is not
    beside the checkout: per 1 MiB, random data, written zeros, a hole or
    text, in a fixed order."""
    rng = random.Random(5)
    text = (b"a line of compressible text 0123456789\n" * 30000)[:MIB]
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
        for i in range(mib):
            kind = i % 4
            if kind == 2:
                continue
            f.seek(i * MIB)
            f.write(rng.randbytes(MIB) if kind == 0 else bytes(MIB) if kind == 1 else text)


def test_w5_group(tmp_path, needs_qemu):
    env = dict(os.environ, VDISK_BUILDDIR=BUILD, VDISK_BENCH_DATA=str(tmp_path),
               VDISK_BENCH_MIB="8", VDISK_BENCH_RUNS="1", VDISK_BENCH_SETTLE="0")
    if os.path.exists(MKMIXED):
        env["MKMIXED"] = MKMIXED
    else:
        small_mixed(tmp_path / "mixed.raw", 8)
    p = subprocess.run([sys.executable, os.path.join(TOP, "bench", "run"), "W5"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    ids = re.findall(r"^(W\S+) ", p.stdout, re.M)
    assert ids == W5
    vhdx = "vhdx" in vdisk_formats()
    for wid in W5:
        skipped = re.search(r"^%s skipped: vdisk-img cannot write vhdx yet$" % wid,
                            p.stdout, re.M)
        assert bool(skipped) == (wid in VHDX and not vhdx), p.stdout
    ran = re.findall(r"time ratio [0-9.]+, RSS ratio [0-9.]+", p.stdout)
    assert len(ran) == len(W5) - (0 if vhdx else len(VHDX))


def test_w14_group(tmp_path, needs_qemu):
    """W14 makes its dmg (bench/mkdmg) and cloop inputs from the mixed
    image, and each convert's output is checked against it (a wrong
    input or read would fail the verify step and the run)."""
    env = dict(os.environ, VDISK_BUILDDIR=BUILD, VDISK_BENCH_DATA=str(tmp_path),
               VDISK_BENCH_MIB="8", VDISK_BENCH_RUNS="1", VDISK_BENCH_SETTLE="0")
    small_mixed(tmp_path / "mixed.raw", 8)
    p = subprocess.run([sys.executable, os.path.join(TOP, "bench", "run"), "W14"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert re.findall(r"^(W\S+) ", p.stdout, re.M) == ["W14dmg-raw", "W14cloop-raw"]
    assert len(re.findall(r"time ratio [0-9.]+, RSS ratio [0-9.]+", p.stdout)) == 2
    assert len(re.findall(r"lowest: [0-9.]+ s / [0-9.]+ s, time ratio [0-9.]+; "
                          r"CPU s [0-9.]+ / [0-9.]+, CPU ratio [0-9.]+", p.stdout)) == 2
    for fmt in ("dmg", "cloop"):
        info = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt,
                               str(tmp_path / ("w14." + fmt))],
                              capture_output=True, text=True, check=True)
        assert '"virtual-size": %d' % (8 * MIB) in info.stdout
