# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img commit against qemu-img commit 7.2 on identical images: the
same messages and exit codes, and images that compare identical with
qemu's results, check clean and show the same backing chain."""
import os
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, qimg, vimg, needs_vdisk_format
from chain_helpers import (MB, QEMU_IO, chain_info, make_chain, run_both,
                           same_images, same_messages)

CHAIN3 = [
    ("b.qcow2", "qcow2", 4 * MB, None, ["write -P 1 0 1M", "write -P 7 3M 64k"]),
    ("m.qcow2", "qcow2", 4 * MB, "b.qcow2", ["write -P 2 1M 1M", "write -z 3M 32k"]),
    ("t.qcow2", "qcow2", 4 * MB, "m.qcow2",
     ["write -P 3 512k 1M", "write -z 3M 64k", "write -P 4 3700000 5000"]),
]


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def differential(tmp_path, spec, args, cwd_sub=None):
    """Run commit on both sides; same output, same images."""
    q, v, qd, vd = run_both(tmp_path, spec, ["commit"] + args, cwd_sub)
    same_messages(q, v)
    same_images(qd, vd, spec, top=spec[-1][0])
    return v, qd, vd


def test_commit_into_immediate_backing(tmp_path):
    """Default: the top's data goes into m, the top is emptied."""
    v, qd, vd = differential(tmp_path, CHAIN3, ["t.qcow2"])
    assert v.stdout == "Image committed.\n"
    assert os.path.getsize(os.path.join(vd, "t.qcow2")) == \
        os.path.getsize(os.path.join(qd, "t.qcow2"))


@pytest.mark.parametrize("base", ["b.qcow2", "m.qcow2", "./b.qcow2", "ABS"])
def test_commit_base(tmp_path, base):
    """-b: the images between top and base go into base; -b implies -d."""
    if base == "ABS":
        base = "../v/b.qcow2"     # resolved relative to the top's directory
        q, v, qd, vd = run_both(tmp_path, CHAIN3, ["commit", "-b", base, "t.qcow2"])
        assert v.returncode == 0, v.stderr
        return
    differential(tmp_path, CHAIN3, ["-b", base, "t.qcow2"])


def test_commit_drop(tmp_path):
    differential(tmp_path, CHAIN3, ["-d", "t.qcow2"])


def test_commit_quiet_rate_cache(tmp_path):
    v, _, _ = differential(tmp_path, CHAIN3, ["-q", "-r", "100M", "-t", "none", "t.qcow2"])
    assert v.stdout == ""


def test_commit_progress(tmp_path):
    """-p: qemu's job reports progress at its own pace; the frame and the
    end are the same."""
    q, v, qd, vd = run_both(tmp_path, CHAIN3, ["commit", "-p", "t.qcow2"])
    assert v.returncode == q.returncode == 0
    # (text mode reads '\r' as a line end)
    assert v.stdout.startswith("    (0.00/100%)\n")
    assert v.stdout.endswith("    (100.00/100%)\nImage committed.\n")
    same_images(qd, vd, CHAIN3, top="t.qcow2")


def test_commit_raw_base(tmp_path):
    spec = [("b.raw", "raw", 4 * MB, None, ["write -P 1 0 1M"]),
            ("t.qcow2", "qcow2", 4 * MB, "b.raw",
             ["write -P 3 512k 1M", "write -z 3M 64k", "write -P 5 0 4096"])]
    differential(tmp_path, spec, ["t.qcow2"])


def test_commit_grows_shorter_base(tmp_path):
    spec = [("b.qcow2", "qcow2", 2 * MB, None, ["write -P 1 0 1M"]),
            ("t.qcow2", "qcow2", 4 * MB, "b.qcow2", ["write -P 3 1M 2M"])]
    differential(tmp_path, spec, ["t.qcow2"])


def test_commit_v2_top(tmp_path):
    """compat=0.10 tops cannot be rebuilt empty: every cluster is dropped."""
    d = tmp_path / "x"
    for side in ("q", "v"):
        make_chain(str(tmp_path / side), CHAIN3[:2])
        sd = str(tmp_path / side)
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "compat=0.10",
                        "-b", "m.qcow2", "-F", "qcow2", "t.qcow2", "4M"], cwd=sd, check=True)
        subprocess.run([QEMU_IO, "-c", "write -P 9 100k 1M", "t.qcow2"], cwd=sd,
                       check=True, capture_output=True)
        prog = QEMU_IMG if side == "q" else VDISK_IMG
        p = subprocess.run([prog, "commit", "t.qcow2"], cwd=sd, capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr
    spec = CHAIN3[:2] + [("t.qcow2", "qcow2", 0, None, [])]
    same_images(str(tmp_path / "q"), str(tmp_path / "v"), spec, top="t.qcow2")
    del d


def test_commit_relative_names_from_elsewhere(tmp_path):
    """Backing names are relative to the images, not to the caller."""
    spec = [(os.path.join("d", n), f, s, b and os.path.join("d", b), c)
            for n, f, s, b, c in CHAIN3]
    for side in ("q", "v"):
        d = tmp_path / side / "d"
        d.mkdir(parents=True)
    # Build in d/ with names relative to d.
    q, v, qd, vd = None, None, None, None
    res = []
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        make_chain(str(tmp_path / side / "d"), CHAIN3)
        res.append(subprocess.run([prog, "commit", "-b", "b.qcow2", "d/t.qcow2"],
                                  capture_output=True, text=True, cwd=str(tmp_path / side)))
    same_messages(res[0], res[1])
    assert res[1].returncode == 0
    same_images(str(tmp_path / "q" / "d"), str(tmp_path / "v" / "d"), CHAIN3, top="t.qcow2")
    del spec, q, v, qd, vd


@pytest.mark.parametrize("args", [
    ["NOBACK"], ["-b", "x.qcow2", "t.qcow2"], ["-b", "t.qcow2", "t.qcow2"],
    ["-f", "raw", "t.qcow2"], ["-f", "foo", "t.qcow2"], ["-p", "NOBACK"],
    ["-b", "qt/b.qcow2", "t.qcow2"], ["missing.qcow2"], ["-t", "bogus", "t.qcow2"],
    ["-f", "qcow2", "--image-opts", "t.qcow2"], ["-r", "x", "t.qcow2"],
])
def test_commit_errors(tmp_path, args):
    spec = CHAIN3 + [("NOBACK", "qcow2", MB, None, [])]
    q, v, qd, vd = run_both(tmp_path, spec, ["commit"] + args)
    same_messages(q, v)
    assert v.returncode == 1
    same_images(qd, vd, spec)


def test_commit_missing_backing(tmp_path):
    spec = [("u.qcow2", "qcow2", MB, None, [])]
    for side in ("q", "v"):
        make_chain(str(tmp_path / side), spec)
        subprocess.run([QEMU_IMG, "rebase", "-u", "-b", "gone.qcow2", "-F", "qcow2",
                        "u.qcow2"], cwd=str(tmp_path / side), check=True)
    res = [subprocess.run([p, "commit", "u.qcow2"], capture_output=True, text=True,
                          cwd=str(tmp_path / s))
           for s, p in (("q", QEMU_IMG), ("v", VDISK_IMG))]
    same_messages(res[0], res[1])


def test_commit_image_opts(tmp_path):
    differential(tmp_path, CHAIN3, ["--image-opts", "driver=qcow2,file.filename=t.qcow2"])


def test_commit_read_only_base(tmp_path):
    """A base the user may not write: qemu-img's error, nothing changed."""
    if os.getuid() != 0 or not os.path.exists("/usr/bin/setpriv"):
        pytest.skip("needs root and setpriv to drop privileges")
    os.chmod(tmp_path, 0o777)
    res = []
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        d = tmp_path / side
        make_chain(str(d), CHAIN3)
        os.chmod(d, 0o777)
        os.chmod(d / "t.qcow2", 0o666)
        os.chmod(d / "m.qcow2", 0o444)
        os.chmod(d / "b.qcow2", 0o444)
        res.append(subprocess.run(["setpriv", "--reuid=65534", "--regid=65534",
                                   "--clear-groups", prog, "commit", "t.qcow2"],
                                  capture_output=True, text=True, cwd=str(d)))
    same_messages(res[0], res[1])
    assert res[1].returncode == 1
    same_images(str(tmp_path / "q"), str(tmp_path / "v"), CHAIN3, top="t.qcow2")


def test_commit_then_qemu_reads_chain(tmp_path):
    """After commit the whole chain reads as before (vs a flat copy)."""
    d = tmp_path / "c"
    make_chain(str(d), CHAIN3)
    flat = tmp_path / "flat.raw"
    qimg("convert", "-O", "raw", d / "t.qcow2", flat, check=True)
    vimg("commit", "-q", d / "t.qcow2", check=True)
    assert qimg("compare", "-F", "raw", d / "t.qcow2", flat).returncode == 0
    assert qimg("compare", "-F", "raw", d / "m.qcow2", flat).returncode == 0
    assert "backing file: m.qcow2" in chain_info(str(d), "t.qcow2")


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("base_fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("cluster", ["512", "64k", "256k", "2M"])
def test_commit_empty_overlay(tmp_path, cluster, base_fmt, depth):
    """An overlay that holds nothing (commit right after a snapshot): the
    image file ends before the layout emptying writes; both images end as
    qemu-img leaves them (same map, check, info and file length)."""
    base = "b." + base_fmt
    spec = [(base, base_fmt, 32 * MB, None, ["write -P 1 0 1M"])]
    if depth == 3:
        spec.append(("m.qcow2", "qcow2", 32 * MB, base, ["write -P 2 1M 64k"]))
    spec.append(("t.qcow2", "qcow2", 32 * MB, spec[-1][0], [], "cluster_size=" + cluster))
    v, qd, vd = differential(tmp_path, spec, ["t.qcow2"])
    assert v.stdout == "Image committed.\n"
    for name, fmt in ((l[0], l[1]) for l in spec):
        assert os.path.getsize(os.path.join(vd, name)) == \
            os.path.getsize(os.path.join(qd, name)), name
        m = [subprocess.run([QEMU_IMG, "map", "--output=json", "-f", fmt, name], cwd=d,
                            capture_output=True, text=True).stdout for d in (qd, vd)]
        assert m[0] == m[1], name


@pytest.mark.parametrize("args", [["-b", "b.raw", "t.qcow2"], ["t.qcow2"]])
def test_commit_through_short_middle(tmp_path, args):
    """The top reads zeroes past a middle image shorter than it: those
    zeroes are the middle layer's, so commit -b writes them into the base
    (the base's old data there must not show through afterwards)."""
    spec = [("b.raw", "raw", 1 * MB, None, ["write -P 0x52 0 1M"]),
            ("m.qcow2", "qcow2", MB // 2, "b.raw", ["write -P 3 0 64k"]),
            ("t.qcow2", "qcow2", 1 * MB, "m.qcow2", ["write -P 4 900k 4k"])]
    differential(tmp_path, spec, args)
