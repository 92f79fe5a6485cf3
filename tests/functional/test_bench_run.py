# SPDX-License-Identifier: BSD-3-Clause
"""bench/run: the W5 group runs every migration workload on a small mixed
image (one run per side, vdisk's outputs checked by qemu-img compare and
check) and skips the vhdx ones with a clear line while vdisk-img cannot
create vhdx."""
import os
import re
import subprocess
import sys

import pytest

from conftest import BUILD, TOP, vdisk_formats

W5 = ["W5vmdk", "W5vmdk-raw", "W5stream", "W5stream-raw", "W5vhdx", "W5vhdx-raw",
      "W5vpc", "W5vpc-raw", "W5vdi", "W5vdi-raw", "W5qed", "W5qed-raw",
      "W5rs", "W5vq", "W5rx"]
VHDX = {"W5vhdx", "W5vhdx-raw", "W5rx"}
MKMIXED = os.path.join(os.path.dirname(TOP), "shared", "bench", "mkmixed")


def test_w5_group(tmp_path, needs_qemu):
    if not os.path.exists(MKMIXED):
        pytest.skip("%s not found" % MKMIXED)
    env = dict(os.environ, VDISK_BUILDDIR=BUILD, VDISK_BENCH_DATA=str(tmp_path),
               VDISK_BENCH_MIB="8", VDISK_BENCH_RUNS="1", MKMIXED=MKMIXED)
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
