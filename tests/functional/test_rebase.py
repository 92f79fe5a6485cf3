# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img rebase against qemu-img rebase 7.2 on identical images: the
same messages, -p lines and exit codes, and images that compare identical
with qemu's results, check clean and show the same backing chain."""
import os
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, qimg, vimg, needs_vdisk_format
from chain_helpers import (MB, QEMU_IO, make_chain, run_both, same_images,
                           same_messages)

CHAIN3 = [
    ("b.qcow2", "qcow2", 4 * MB, None, ["write -P 1 0 2M", "write -P 7 3M 64k"]),
    ("m.qcow2", "qcow2", 4 * MB, "b.qcow2",
     ["write -P 2 1M 1M", "write -z 3M 32k", "write -P 1 2200000 1000"]),
    ("t.qcow2", "qcow2", 4 * MB, "m.qcow2", ["write -P 3 3M 100k", "write -P 3 100 1000"]),
]
OTHER = [("n.qcow2", "qcow2", 6 * MB, None, ["write -P 1 0 1M", "write -P 9 1M 3M"]),
         ("n.raw", "raw", 3 * MB, None, ["write -P 2 1M 1M"])]


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def differential(tmp_path, spec, args, top="t.qcow2"):
    """Run rebase on both sides; same output, same images."""
    q, v, qd, vd = run_both(tmp_path, spec, ["rebase"] + args)
    same_messages(q, v)
    same_images(qd, vd, spec, top=top)
    return v


@pytest.mark.parametrize("args", [
    ["-b", "b.qcow2", "-F", "qcow2"],            # drop m: b is in the chain
    ["-b", "m.qcow2", "-F", "qcow2"],            # the same backing again
    ["-b", "", "-F", "qcow2"],                   # flatten
    ["-b", ""],
    ["-b", "n.qcow2", "-F", "qcow2"],            # outside the chain, longer
    ["-b", "n.raw", "-F", "raw"],                # shorter raw backing
    ["-b", "b.qcow2", "-F", "raw"],              # the wrong format: data copied
    ["-b", "b.qcow2"],                           # copies, then fails: no format
    ["-u", "-b", "n.qcow2", "-F", "qcow2"],
    ["-u", "-b", "", "-F", "qcow2"],
    ["-u", "-b", "nope.qcow2", "-F", "qcow2"],
    ["-u", "-b", "n.qcow2"],
    ["-u"],
    ["-U", "-T", "none", "-t", "writeback", "-b", "n.qcow2", "-F", "qcow2"],
    ["-q", "-b", "b.qcow2", "-F", "qcow2"],
    ["-p", "-b", "b.qcow2", "-F", "qcow2"],
    ["-p", "-u", "-b", "b.qcow2", "-F", "qcow2"],
    ["-p", "-b", "", "-F", "qcow2"],
    ["-b", "n.qcow2", "-F", "bogus"],
    ["-b", "nope.qcow2", "-F", "qcow2"],
    ["-t", "bogus", "-b", "n.qcow2", "-F", "qcow2"],
    ["-T", "bogus", "-b", "n.qcow2", "-F", "qcow2"],
    ["-f", "raw", "-b", "n.qcow2", "-F", "qcow2"],
    ["-b", "n.qcow2", "-F", "qcow2", "t.qcow2", "extra"],
    ["-p", "-t", "bogus", "-b", "n.qcow2", "-F", "qcow2"],
])
def test_rebase_differential(tmp_path, args):
    if "extra" not in args:
        args = args + ["t.qcow2"]
    differential(tmp_path, CHAIN3 + OTHER, args)


@pytest.mark.parametrize("size", ["1M", "5M", "7M", "64M", "1G"])
def test_rebase_progress_steps(tmp_path, size):
    """-p prints qemu-img's steps (single precision, 2% minimum step)."""
    spec = [("t.qcow2", "qcow2", size, None, []), ("n.qcow2", "qcow2", size, None, [])]
    differential(tmp_path, spec, ["-p", "-b", "n.qcow2", "-F", "qcow2", "t.qcow2"])


def test_rebase_no_old_backing(tmp_path):
    spec = [("t.qcow2", "qcow2", 4 * MB, None, ["write -P 5 1M 64k"])] + OTHER
    differential(tmp_path, spec, ["-b", "n.qcow2", "-F", "qcow2", "t.qcow2"])


def test_rebase_chain_in_subdir(tmp_path):
    """Relative names are taken from the overlay's directory, not the
    caller's: a name only valid from the cwd fails as in qemu-img."""
    for args in (["-b", "b.qcow2", "-F", "qcow2", "d/t.qcow2"],
                 ["-b", "../n.qcow2", "-F", "qcow2", "d/t.qcow2"],
                 ["-b", "n.qcow2", "-F", "qcow2", "d/t.qcow2"],
                 ["-u", "-b", "n.qcow2", "-F", "qcow2", "d/t.qcow2"]):
        res = []
        for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
            top = tmp_path / args[-2].replace("/", "_") / side
            make_chain(str(top / "d"), CHAIN3)
            make_chain(str(top), OTHER)
            res.append(subprocess.run([prog, "rebase"] + args, capture_output=True,
                                      text=True, cwd=str(top)))
        same_messages(res[0], res[1])
        base = tmp_path / args[-2].replace("/", "_")
        same_images(str(base / "q" / "d"), str(base / "v" / "d"), CHAIN3, top="t.qcow2")


def test_rebase_names_too_long(tmp_path):
    spec = [("t.qcow2", "qcow2", MB, None, []),
            ("s.qcow2", "qcow2", MB, None, [])]
    differential(tmp_path, spec, ["-u", "-b", "x" * 1100, "-F", "qcow2", "t.qcow2"])
    for side in ("q", "v"):
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                        "c.qcow2", "1M"], cwd=str(tmp_path / side), check=True)
    res = [subprocess.run([p, "rebase", "-u", "-b", "x" * 400, "-F", "qcow2", "c.qcow2"],
                          capture_output=True, text=True, cwd=str(tmp_path / s))
           for s, p in (("q", QEMU_IMG), ("v", VDISK_IMG))]
    same_messages(res[0], res[1])
    assert "No space left in the file header" in res[1].stderr


def test_rebase_v2_image(tmp_path):
    """compat=0.10 images keep the backing format extension too."""
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        d = tmp_path / side
        d.mkdir()
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "compat=0.10",
                        "v2.qcow2", "1M"], cwd=str(d), check=True)
        subprocess.run([prog, "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "v2.qcow2"],
                       cwd=str(d), check=True)
    assert (tmp_path / "q" / "v2.qcow2").read_bytes() == \
        (tmp_path / "v" / "v2.qcow2").read_bytes()


def test_rebase_header_bytes_match_qemu(tmp_path):
    """-u writes the header cluster as qemu-img lays it out."""
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        d = tmp_path / side
        make_chain(str(d), CHAIN3)
        subprocess.run([prog, "rebase", "-u", "-b", "some/other.img", "-F", "raw",
                        "t.qcow2"], cwd=str(d), check=True)
    assert (tmp_path / "q" / "t.qcow2").read_bytes()[:65536] == \
        (tmp_path / "v" / "t.qcow2").read_bytes()[:65536]


def test_rebase_compress(tmp_path):
    """-c (an extension: qemu-img 7.2 has none) compresses what it copies:
    the result reads as qemu's uncompressed rebase, checks clean, and the
    copied clusters are compressed."""
    spec = CHAIN3[:1] + [("m.qcow2", "qcow2", 4 * MB, "b.qcow2",
                          ["write -P 2 1M 1M", "write -P 0x41 0 512k"]),
                         ("t.qcow2", "qcow2", 4 * MB, "m.qcow2", ["write -P 3 3M 100k"])]
    res = []
    for side, args in (("q", [QEMU_IMG, "rebase"]), ("v", [VDISK_IMG, "rebase", "-c"])):
        d = tmp_path / side
        make_chain(str(d), spec)
        res.append(subprocess.run(args + ["-b", "", "t.qcow2"], capture_output=True,
                                  text=True, cwd=str(d)))
    assert res[0].returncode == res[1].returncode == 0, res[1].stderr
    qf, vf = tmp_path / "q" / "t.qcow2", tmp_path / "v" / "t.qcow2"
    assert qimg("compare", qf, vf).returncode == 0
    p = qimg("check", vf)
    assert p.returncode == 0 and "compressed clusters" in p.stdout, p.stdout
    assert os.path.getsize(vf) < os.path.getsize(qf)


def test_rebase_compress_refused_on_raw(tmp_path):
    img = tmp_path / "r.raw"
    img.write_bytes(b"\0" * MB)
    p = vimg("rebase", "-c", "-f", "raw", "-b", "", img)
    assert p.returncode == 1
    assert p.stderr == "vdisk-img: Compression not supported for this file format\n"
