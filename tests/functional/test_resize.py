# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img resize: absolute and relative sizes, --shrink, preallocation,
read-only and locked images, and every error, compared with qemu-img on
fresh copies of the same image."""
import os
import subprocess

import pytest

from filemap import allocated_bytes
from conftest import QEMU_IMG, VDISK_IMG, run, same_output, vimg
from test_cli import differential, nobody_prefix

MiB = 1 << 20


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "r.raw"
    with open(p, "wb") as f:
        f.truncate(MiB)
    return p


def reset(path, size=MiB):
    def setup():
        with open(path, "wb") as f:
            f.truncate(size)
    return setup


@pytest.mark.parametrize("arg,size", [("2M", 2 * MiB), ("+1M", 2 * MiB),
                                      ("1M", MiB), ("+0", MiB), ("1.5M", 1572864)])
def test_grow(img, arg, size):
    p = vimg("resize", "-f", "raw", img, arg)
    assert p.returncode == 0 and p.stdout == "Image resized.\n"
    assert os.path.getsize(img) == size


def test_shrink_needs_flag(img):
    p = vimg("resize", "-f", "raw", img, "-512k")
    assert p.returncode == 1
    assert p.stderr.startswith("vdisk-img: Use the --shrink option to perform "
                               "a shrink operation.\nvdisk-img: warning: ")
    assert os.path.getsize(img) == MiB
    p = vimg("resize", "-f", "raw", "--shrink", img, "-512k")
    assert p.returncode == 0
    assert os.path.getsize(img) == 512 * 1024


def test_preallocation(img):
    p = vimg("resize", "-f", "raw", "--preallocation=full", "-q", img, "3M")
    assert p.returncode == 0 and p.stdout == ""
    assert allocated_bytes(img) >= 2 * MiB
    p = vimg("resize", "-f", "raw", "--preallocation=bad", img, "4M")
    assert p.stderr == "vdisk-img: Invalid preallocation mode 'bad'\n"


@pytest.mark.parametrize("args", [
    ["2M"], ["+1M"], ["--", "-1M"], ["--shrink", "--", "-512k"], ["512k"],
    ["-q", "3M"], ["-10M"], ["--shrink", "--", "-10M"], ["1x"], ["+1x"],
    ["+"], ["+-1M"], ["0"], ["--shrink", "0"], ["100"], ["--shrink", "100"],
    ["--preallocation=full", "2M"], ["--preallocation=falloc", "3M"],
    ["--preallocation=off", "4M"], ["--preallocation=metadata", "4M"],
    ["--preallocation=bad", "4M"], ["--shrink", "--preallocation=full", "512k"],
    ["--preallocation=full", "+0"], ["--preallocation=full", "512k"],
    ["+8E"], ["8E"], ["15E"], ["16E"], ["18446744073709551615"], ["0x100000"],
    ["1.5M"], ["--shrink", "1.5M"], ["-U", "5M"], ["-Z", "5M"],
])
def test_differential(needs_qemu, img, args):
    differential("resize", "-f", "raw", img, *args, setup=reset(img))
    size_q = os.path.getsize(img)
    reset(img)()
    vimg("resize", "-f", "raw", img, *args)
    assert os.path.getsize(img) == size_q


@pytest.mark.parametrize("args", [
    [], ["x"], ["x", "1M", "2M"], ["-h"],
])
def test_differential_usage(needs_qemu, args):
    p = differential("resize", *args)
    assert p.returncode == 1


def test_differential_probed_raw_warning(needs_qemu, img):
    p = differential("resize", img, "2M", setup=reset(img))
    assert "probing guessed raw" in p.stderr


def test_differential_image_opts(needs_qemu, img):
    differential("resize", "--image-opts", "driver=raw,file.filename=%s" % img,
                 "5M", setup=reset(img))
    differential("resize", "-f", "raw", "--image-opts", img, "5M")
    differential("resize", "-f", "raw", "--image-opts", img, "1x")


def test_differential_missing(needs_qemu, tmp_path):
    differential("resize", tmp_path / "nope", "1M")


def test_read_only_file(needs_qemu, tmp_path):
    prefix = nobody_prefix()
    if prefix is None:
        pytest.skip("cannot drop privileges")
    os.chmod(tmp_path, 0o755)
    ro = tmp_path / "ro.raw"
    reset(ro)()
    os.chmod(ro, 0o444)
    q = run(prefix + [QEMU_IMG, "resize", "-f", "raw", str(ro), "2M"])
    v = run(prefix + [VDISK_IMG, "resize", "-f", "raw", str(ro), "2M"])
    assert "Permission denied" in q.stderr
    assert same_output(v.stderr, q.stderr)
    assert v.returncode == q.returncode == 1
    assert os.path.getsize(ro) == MiB


def test_locked_image(needs_qemu, tmp_path, img):
    """qemu-nbd holds the image open for writing: resize must fail."""
    sock = tmp_path / "nbd.sock"
    try:
        srv = subprocess.Popen(["qemu-nbd", "-f", "raw", "-k", str(sock), str(img)],
                               stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        pytest.skip("qemu-nbd is not installed")
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        if not sock.exists():
            pytest.skip("qemu-nbd did not start")
        p = differential("resize", "-f", "raw", img, "2M")
        assert p.returncode == 1
        assert os.path.getsize(img) == MiB
    finally:
        srv.terminate()
        srv.wait()
