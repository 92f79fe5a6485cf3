# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img compare: verdicts, offsets, -s strict mode, size mismatches,
-p/-q output and exit codes 0-4 on crafted raw images, each checked against
qemu-img compare run on the same files."""
import os
import subprocess

import pytest

from conftest import VDISK_IMG, qimg, vimg, needs_vdisk_format
from test_cli import differential

MIB = 1 << 20


def vimg_in(work, *args):
    """vdisk-img run inside the test directory."""
    return subprocess.run([VDISK_IMG] + [str(a) for a in args], cwd=work,
                          capture_output=True, text=True, timeout=300)


def mk(path, size, writes=()):
    """A sparse file of size with (offset, bytes) written into it."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in writes:
            f.seek(off)
            f.write(data)


@pytest.fixture
def work(tmp_path):
    mk(tmp_path / "c1.raw", MIB, [(4096, b"\x01" * 4096)])
    mk(tmp_path / "c2.raw", MIB, [(4096, b"\x01" * 4096)])
    mk(tmp_path / "c3.raw", MIB, [(4096, b"\x01" * 4096), (70000, b"\x02")])
    mk(tmp_path / "c4.raw", 2 * MIB, [(4096, b"\x01" * 4096)])
    mk(tmp_path / "c5.raw", 2 * MIB, [(4096, b"\x01" * 4096), (1500000, b"\x03")])
    mk(tmp_path / "c6.raw", MIB, [(4096, b"\x01" * 4096), (8192, bytes(4096))])
    mk(tmp_path / "big1.raw", 8 * MIB, [(0, os.urandom(3 * MIB))])
    data = (tmp_path / "big1.raw").read_bytes()
    mk(tmp_path / "big2.raw", 8 * MIB, [(0, data[:3 * MIB]), (7 * MIB + 5, b"x")])
    (tmp_path / "rd.conf").write_text('[inject-error]\nevent = "read_aio"\nerrno = "5"\n')
    return tmp_path


@pytest.mark.parametrize("args,rc,out", [
    (["c1.raw", "c2.raw"], 0, "Images are identical.\n"),
    (["c1.raw", "c3.raw"], 1, "Content mismatch at offset 69632!\n"),
    (["c3.raw", "c1.raw"], 1, "Content mismatch at offset 69632!\n"),
    (["c1.raw", "c4.raw"], 0, "Warning: Image size mismatch!\nImages are identical.\n"),
    (["c4.raw", "c1.raw"], 0, "Warning: Image size mismatch!\nImages are identical.\n"),
    (["c1.raw", "c5.raw"], 1,
     "Warning: Image size mismatch!\nContent mismatch at offset 1499648!\n"),
    (["c5.raw", "c1.raw"], 1,
     "Warning: Image size mismatch!\nContent mismatch at offset 1499648!\n"),
    (["c3.raw", "c4.raw"], 1, "Content mismatch at offset 69632!\n"),
    (["-s", "c1.raw", "c4.raw"], 1, "Strict mode: Image size mismatch!\n"),
    (["-s", "c1.raw", "c2.raw"], 0, "Images are identical.\n"),
    (["-s", "c1.raw", "c6.raw"], 1, "Strict mode: Offset 8192 block status mismatch!\n"),
    (["c1.raw", "c6.raw"], 0, "Images are identical.\n"),
    (["-q", "c1.raw", "c3.raw"], 1, ""),
    (["-q", "c1.raw", "c4.raw"], 0, ""),
    (["-q", "-s", "c1.raw", "c4.raw"], 1, ""),
    (["-U", "-f", "raw", "-F", "raw", "c1.raw", "c2.raw"], 0, "Images are identical.\n"),
    (["-T", "none", "c1.raw", "c3.raw"], 1, "Content mismatch at offset 69632!\n"),
    (["big1.raw", "big2.raw"], 1, "Content mismatch at offset 7340032!\n"),
    (["big1.raw", "big1.raw"], 0, "Images are identical.\n"),
    (["--image-opts", "driver=raw,file.filename=c1.raw",
      "driver=raw,file.filename=c2.raw"], 0, "Images are identical.\n"),
])
def test_verdicts_match_qemu(work, needs_qemu, args, rc, out):
    v = differential("compare", *args, cwd=work)
    assert v.returncode == rc and v.stdout == out


@pytest.mark.parametrize("args", [
    ["-p", "c1.raw", "c3.raw"], ["-p", "c1.raw", "c2.raw"], ["-p", "c5.raw", "c1.raw"],
    ["-p", "c1.raw", "c4.raw"], ["-p", "-q", "c1.raw", "c3.raw"],
])
def test_progress_output_matches_qemu(work, needs_qemu, args):
    differential("compare", *args, cwd=work)


@pytest.mark.parametrize("args,rc", [
    (["c1.raw", "missing.raw"], 2), (["c1.raw"], 1), ([], 1),
    (["-f", "foo", "c1.raw", "c2.raw"], 2), (["-F", "foo", "c1.raw", "c2.raw"], 2),
    (["-T", "bogus", "c1.raw", "c2.raw"], 2),
    (["--image-opts", "-f", "raw", "driver=raw,file.filename=c1.raw", "c2.raw"], 2),
    (["-x", "c1.raw", "c2.raw"], 1), (["c1.raw", "c2.raw", "c3.raw"], 1), (["-f"], 1),
    (["-q", "c1.raw", "missing.raw"], 2),
    (["blkdebug:rd.conf:c1.raw", "c3.raw"], 4), (["c3.raw", "blkdebug:rd.conf:c1.raw"], 4),
    (["-q", "blkdebug:rd.conf:c1.raw", "c3.raw"], 4),
])
def test_errors_match_qemu(work, needs_qemu, args, rc):
    v = differential("compare", *args, cwd=work)
    assert v.returncode == rc and v.stderr.startswith("vdisk-img: ")


def test_read_error_names_the_file(work):
    p = vimg_in(work, "compare", "c3.raw", "blkdebug:rd.conf:c1.raw")
    assert p.returncode == 4
    assert p.stderr == ("vdisk-img: Error while reading offset 4096 of "
                        "blkdebug:rd.conf:c1.raw: Input/output error\n")


def test_compare_against_converted_copy(work):
    assert vimg("convert", work / "big2.raw", work / "copy.raw").returncode == 0
    assert vimg("compare", work / "big2.raw", work / "copy.raw").returncode == 0
    with open(work / "copy.raw", "r+b") as f:
        f.seek(6 * MIB + 1000)
        f.write(b"!")
    p = vimg("compare", work / "big2.raw", work / "copy.raw")
    assert p.returncode == 1 and p.stdout == "Content mismatch at offset %d!\n" % (
        6 * MIB + 512)


def test_qcow2_allocation_in_strict_mode(work, needs_qemu):
    needs_vdisk_format("qcow2")
    qimg("create", "-f", "qcow2", work / "q1.qcow2", "1M", check=True)
    qimg("create", "-f", "qcow2", work / "q2.qcow2", "1M", check=True)
    for args in (["-s", "q1.qcow2", "q2.qcow2"], ["-s", "q1.qcow2", "c1.raw"],
                 ["q1.qcow2", "c1.raw"], ["q1.qcow2", "q2.qcow2"]):
        differential("compare", *args, cwd=work)
