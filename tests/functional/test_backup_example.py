# SPDX-License-Identifier: BSD-3-Clause
"""scripts/nbd-incremental-backup end to end, once with vdisk (vdisk-img,
vdisk-nbd -B) and once with qemu (qemu-img, qemu-nbd -B) on copies of one
image: a full backup of the running export with nbdcopy, random writes
through the export, an incremental backup of the dirty ranges into a qcow2
overlay of the full backup, a second round against a new bitmap; each
restored chain compares identical to the live image, and both runs find
the same dirty ranges."""
import os
import random
import shutil

import pytest

from conftest import TOP, VDISK_IMG, qimg, run
from nbd_helpers import ENV, VDISK_NBD, Server

SCRIPT = os.path.join(TOP, "scripts", "nbd-incremental-backup")
QEMU_NBD = shutil.which("qemu-nbd")
SEED = 20261203


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_NBD is None or shutil.which("nbdcopy") is None:
        pytest.skip("qemu-nbd or nbdcopy is not installed")
    pytest.importorskip("nbd")
    if not os.path.exists(VDISK_NBD):
        pytest.skip("vdisk-nbd not built")


def backup(tool, server, *args):
    env = dict(ENV, VDISK_IMG=tool, VDISK_NBD=server)
    p = run(["/usr/bin/python3", SCRIPT] + [str(a) for a in args], env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return [tuple(map(int, line.split())) for line in p.stdout.splitlines()]


def random_writes(uri, rnd, size, count):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    for _ in range(count):
        n = rnd.choice([512, 4096, 65536, 300000])
        off = rnd.randrange(0, size - n) // 512 * 512
        if rnd.random() < 0.2:
            h.zero(n, off)
        else:
            h.pwrite(bytes([rnd.randrange(1, 256)]) * n, off)
    h.flush()
    h.shutdown()


def one_run(tmp_path, tool, server_prog, img):
    """Full + two incrementals against img; the dirty ranges of each."""
    rnd = random.Random(SEED)
    size = 64 << 20
    ranges = []
    run([tool, "bitmap", "--add", img, "inc0"], check=True)
    backing = tmp_path / "full.raw"
    for rnd_no, bitmap in enumerate(["inc0", "inc1"]):
        s = Server(server_prog, ["-t", "-f", "qcow2", "-B", bitmap, img],
                   sock=str(tmp_path / ("s%d" % rnd_no)))
        try:
            if rnd_no == 0:
                backup(tool, server_prog, "full", s.uri(), backing)
            random_writes(s.uri(), rnd, size, 40)
            overlay = tmp_path / ("incr%d.qcow2" % (rnd_no + 1))
            ranges.append(backup(tool, server_prog, "incremental", s.uri(), bitmap, backing,
                                 overlay))
            assert backup(tool, server_prog, "dirty", s.uri(), bitmap) == ranges[-1]
        finally:
            assert s.stop() == 0, s.stderr
        # The restored chain reads as the live image.
        p = qimg("compare", "-f", "qcow2", "-F", "qcow2", overlay, img)
        assert p.returncode == 0, p.stdout + p.stderr
        # Next round: a new bitmap from now, the old one dropped.
        run([tool, "bitmap", "--add", img, "inc%d" % (rnd_no + 1)], check=True)
        run([tool, "bitmap", "--remove", img, bitmap], check=True)
        backing = overlay
    return ranges


def test_incremental_backup_script(tmp_path):
    base = tmp_path / "base.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "64M", check=True)
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 8M", "-c", "write -P 9 40M 2M",
         str(base)], check=True)
    got = []
    for name, tool, prog in [("v", VDISK_IMG, VDISK_NBD), ("q", "qemu-img", QEMU_NBD)]:
        d = tmp_path / name
        d.mkdir()
        img = d / "disk.qcow2"
        shutil.copy(base, img)
        got.append(one_run(d, tool, prog, img))
    assert got[0] == got[1]
    assert all(r for r in got[0])          # every round found dirty ranges
