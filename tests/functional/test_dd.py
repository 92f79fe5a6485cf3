# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img dd: outputs equal qemu-img dd's byte for byte and in allocation
for bs/count/skip combinations (including qemu's count-with-skip sizing and
the "cannot skip" case), read errors, and every operand/option error."""
import os
import subprocess

import pytest

from filemap import allocated_bytes, allocation as file_allocation
from conftest import QEMU_IMG, VDISK_IMG, vimg
from test_cli import differential

MIB = 1 << 20


def vimg_in(work, *args):
    """vdisk-img run inside the test directory."""
    return subprocess.run([VDISK_IMG] + [str(a) for a in args], cwd=work,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def work(tmp_path):
    """Random input, a sparse one, and blkdebug configurations."""
    (tmp_path / "in.raw").write_bytes(os.urandom(MIB))
    with open(tmp_path / "sp.raw", "wb") as f:
        f.truncate(MIB)
        f.seek(8192)
        f.write(b"abc")
    (tmp_path / "rd.conf").write_text('[inject-error]\nevent = "read_aio"\nerrno = "5"\n')
    return tmp_path


def dd_both(work, *operands):
    """Run both programs; return (qemu, vdisk) results with output bytes."""
    res = []
    for prog, out in ((QEMU_IMG, "q.out"), (VDISK_IMG, "v.out")):
        p = subprocess.run([prog, "dd"] + list(operands) + ["of=" + out], cwd=work,
                           capture_output=True, text=True, timeout=300)
        path = work / out
        p.data = path.read_bytes() if path.exists() else None
        p.blocks = file_allocation(path) if path.exists() else None
        res.append(p)
    return res


@pytest.mark.parametrize("ops", [
    ["if=in.raw"], ["if=in.raw", "bs=4k", "count=10", "skip=2"],
    ["if=in.raw", "bs=4k", "skip=2"], ["if=in.raw", "bs=1000", "count=3"],
    ["if=in.raw", "bs=4k", "skip=1000"], ["if=in.raw", "bs=4k", "count=1000"],
    ["if=sp.raw"], ["if=in.raw", "count=0"], ["if=in.raw", "bs=1.5k", "count=2"],
    ["if=in.raw", "skip=1.5k"], ["if=in.raw", "bs=1M", "count=1T"],
    ["if=in.raw", "bs=1G", "count=100000000000"], ["-f", "raw", "if=in.raw", "bs=64k"],
    ["-U", "if=in.raw", "count=7"], ["if=in.raw", "bs=4k", "count=1", "count=2"],
    ["--image-opts", "if=driver=raw,file.filename=in.raw", "count=1"],
])
def test_output_equals_qemu(work, needs_qemu, ops):
    q, v = dd_both(work, *ops)
    assert v.returncode == q.returncode == 0
    assert v.stdout == q.stdout
    assert v.stderr == q.stderr.replace("qemu-img", "vdisk-img").replace("q.out", "v.out")
    assert v.data == q.data and v.blocks == q.blocks


def test_count_skip_content(work):
    p = vimg_in(work, "dd", "if=in.raw", "of=o.raw", "bs=4k", "count=10", "skip=2")
    assert p.returncode == 0
    src = (work / "in.raw").read_bytes()
    # qemu-img sizes the output min(count*bs, size) - skip*bs
    assert (work / "o.raw").read_bytes() == src[8192:40960]


def test_sparse_input_written_in_full(work):
    assert vimg_in(work, "dd", "if=sp.raw", "of=o.raw").returncode == 0
    assert allocated_bytes(work / "o.raw") >= MIB
    assert (work / "o.raw").read_bytes() == (work / "sp.raw").read_bytes()


def test_skip_beyond_end_still_succeeds(work, needs_qemu):
    v = differential("dd", "if=in.raw", "of=o.raw", "bs=4k", "skip=1000", cwd=work)
    assert v.returncode == 0 and "cannot skip to specified offset" in v.stderr
    assert os.path.getsize(work / "o.raw") == 0


@pytest.mark.parametrize("ops", [
    ["bs=0"], ["bs=-1"], ["bs=x"], ["bs=3G"], ["bs=2147483648"], ["count=x"],
    ["count=-1"], ["count=1.5"], ["skip=x"], ["skip=-1"], ["foo=1"], ["bs"],
    ["bs=1k,count=1"], ["bs=1x"], ["extra"],
])
def test_bad_operands_match_qemu(work, needs_qemu, ops):
    v = differential("dd", "if=in.raw", "of=o.raw", *ops, cwd=work)
    assert v.returncode == 1 and v.stderr.startswith("vdisk-img: ")
    assert not (work / "o.raw").exists()


@pytest.mark.parametrize("args", [
    [], ["if=in.raw"], ["of=o.raw"], ["if=missing.raw", "of=o.raw"],
    ["-O", "foo", "if=in.raw", "of=o.raw"], ["-f", "foo", "if=in.raw", "of=o.raw"],
    ["if=in.raw", "of=/nonexistent-dir/o.raw"], ["if=", "of=o.raw"], ["if=in.raw", "of="],
    ["-p", "if=in.raw", "of=o.raw"], ["-q", "if=in.raw", "of=o.raw"],
    ["-o", "x", "if=in.raw", "of=o.raw"], ["--foo", "if=in.raw", "of=o.raw"],
    ["--image-opts", "-f", "raw", "if=driver=raw,file.filename=in.raw", "of=o.raw"],
    ["--image-opts", "if=in.raw", "of=o.raw"],
    ["if=blkdebug:rd.conf:in.raw", "of=o.raw"],
    ["if=in.raw", "of=blkdebug:rd.conf:o.raw"], ["-f"],
])
def test_errors_match_qemu(work, needs_qemu, args):
    v = differential("dd", *args, cwd=work)
    assert v.returncode == 1 and v.stderr.startswith("vdisk-img: ")


def test_read_error_message(work):
    p = vimg_in(work, "dd", "if=blkdebug:rd.conf:in.raw", "of=o.raw")
    assert p.returncode == 1
    assert p.stderr == ("vdisk-img: error while reading from input image file: "
                        "Input/output error\n")
