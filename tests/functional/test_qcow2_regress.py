# SPDX-License-Identifier: BSD-3-Clause
"""qcow2 regressions found by differential runs against qemu-img 7.2: the
same images are built twice with qemu-img/qemu-io, one operation runs with
qemu-img on one copy and vdisk-img on the other, and the results must
agree (exit code and message, data, qemu-img check, qemu-img map)."""
import json
import shutil

import pytest

from conftest import qimg, run, vimg, needs_vdisk_format

QEMU_IO = shutil.which("qemu-io")
KB = 1 << 10


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def qio(img, *cmds):
    args = [QEMU_IO]
    for c in cmds:
        args += ["-c", c]
    run(args + [str(img)], check=True)


def qmap(img):
    return json.loads(qimg("map", "--output=json", img, check=True).stdout)


def differential(tmp_path, setup, act, images):
    """Build the images with setup(dir) in q/ and v/, run act(tool, dir)
    with qemu-img in q/ and vdisk-img in v/; compare the results."""
    side = {}
    for name in ("q", "v"):
        d = tmp_path / name
        d.mkdir()
        setup(d)
        side[name] = act(qimg if name == "q" else vimg, d)
    q, v = side["q"], side["v"]
    assert v.returncode == q.returncode, v.stderr
    assert v.stdout == q.stdout.replace("qemu-img", "vdisk-img")
    assert v.stderr == q.stderr.replace("qemu-img", "vdisk-img")
    for img in images:
        qi, vi = tmp_path / "q" / img, tmp_path / "v" / img
        p = qimg("compare", "-f", "qcow2", "-F", "qcow2", qi, vi)
        assert p.returncode == 0, p.stdout + p.stderr
        p = qimg("check", vi)
        assert p.returncode == 0, p.stdout + p.stderr
        assert qmap(vi) == qmap(qi)


def overlay(d, size, *opts):
    qimg("create", "-q", "-f", "qcow2", *opts, "-b", d / "b.qcow2", "-F", "qcow2",
         d / "t.qcow2", size, check=True)


def commit(tool, d):
    return tool("commit", d / "t.qcow2")


@pytest.mark.parametrize("cluster", [16 * KB, 64 * KB, 2048 * KB])
def test_commit_extl2_free_subcluster_at_eof(tmp_path, cluster):
    """A write into a free subcluster of an extended-L2 cluster that QEMU
    allocated last (the file ends inside it) grows the file."""
    start = 64 * KB                       # 2 KiB of data: the file ends there
    at = (start // cluster) * cluster + cluster // 2 + 4 * KB

    def setup(d):
        qimg("create", "-q", "-f", "qcow2", "-o",
             "cluster_size=%d,extended_l2=on" % cluster, d / "b.qcow2", "4M",
             check=True)
        qio(d / "b.qcow2", "write -P 1 %d 2k" % start)
        overlay(d, "4M", "-o", "cluster_size=%d" % cluster)
        qio(d / "t.qcow2", "write -P 2 %d 4k" % at)

    differential(tmp_path, setup, commit, ["b.qcow2"])
    qio(tmp_path / "v" / "b.qcow2", "read -P 2 %d 4k" % at,
        "read -P 1 %d 2k" % start)


@pytest.mark.parametrize("cluster", [16 * KB, 64 * KB, 2048 * KB])
def test_bench_extl2_free_subcluster_at_eof(tmp_path, cluster):
    """The same through bench -w, straight into the image."""
    start = 64 * KB
    at = (start // cluster) * cluster + cluster // 2 + 4 * KB

    def setup(d):
        qimg("create", "-q", "-f", "qcow2", "-o",
             "cluster_size=%d,extended_l2=on" % cluster, d / "b.qcow2", "4M",
             check=True)
        qio(d / "b.qcow2", "write -P 1 %d 2k" % start)

    def bench(tool, d):
        p = tool("bench", "-w", "-c", "1", "-s", "4k", "-o", at, d / "b.qcow2")
        p.stdout = ""                     # timings differ
        return p

    differential(tmp_path, setup, bench, ["b.qcow2"])


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster", [0, 1, 2, 3])
def test_commit_over_compressed_odd_offset(tmp_path, cluster, compat):
    """Overwriting a compressed cluster whose data starts at an odd byte
    (clusters 1 and 3 here): bit 0 of a compressed descriptor is part of
    the offset, not the zero flag (which a v2 image must not carry)."""
    at = cluster * 64 * KB

    def setup(d):
        qimg("create", "-q", "-f", "qcow2", "-o", "compat=" + compat,
             d / "b.qcow2", "1M", check=True)
        qio(d / "b.qcow2", *["write -c -P %d %dk 64k" % (k + 1, 64 * k)
                             for k in range(4)])
        overlay(d, "1M")
        qio(d / "t.qcow2", "write -P 9 %d 512" % at)

    differential(tmp_path, setup, commit, ["b.qcow2"])
    qio(tmp_path / "v" / "b.qcow2", "read -P 9 %d 512" % at,
        "read -P %d %d %d" % (cluster + 1, at + 512, 64 * KB - 512))
