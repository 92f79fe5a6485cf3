# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img check: option handling, exit code 63 for formats without a
check, and (once a format with a check hook is registered) the report,
repairs and exit codes 0/2/3 compared with qemu-img on qcow2 images with
leaked and corrupted clusters."""
import shutil
import struct

import pytest

from conftest import qimg, vimg
from test_cli import differential


def has_format(name):
    line = [l for l in vimg("--help").stdout.splitlines()
            if l.startswith("Supported formats:")]
    return bool(line) and name in line[0].split()[2:]


@pytest.fixture
def raw(tmp_path):
    img = tmp_path / "a.raw"
    img.write_bytes(b"\0" * 65536)
    return img


@pytest.mark.parametrize("args", [[], ["--output=json"], ["-q"], ["-f", "raw"],
                                  ["-r", "all", "-f", "raw"], ["-T", "none"]])
def test_raw_not_supported(raw, args):
    p = vimg("check", *args, raw)
    assert p.returncode == 63
    assert p.stdout == ""
    assert p.stderr == "vdisk-img: This image format does not support checks\n"


def test_bad_repair_mode(raw):
    p = vimg("check", "-r", "foo", raw)
    assert p.returncode == 1
    assert p.stderr.startswith("vdisk-img: Unknown option value for -r "
                               "(expecting 'leaks' or 'all'): foo\n")


def test_force_share_with_repair(raw):
    p = vimg("check", "-U", "-r", "all", raw)
    assert p.returncode == 1
    assert "force-share=on can only be used with read-only images" in p.stderr


@pytest.mark.parametrize("args", [
    [], ["--output=json"], ["-q"], ["-r", "foo"], ["-r", "leaks", "-f", "raw"],
    ["-T", "bad"], ["-T", "none", "-f", "raw"], ["--output=xml"],
    ["-U", "-r", "all"], ["-T", "bad", "--output=foo"],
    ["-f", "raw", "--image-opts"], ["-U"],
])
def test_differential_raw(needs_qemu, raw, args):
    differential("check", *args, raw)


def test_differential_missing(needs_qemu, tmp_path):
    differential("check", tmp_path / "nope")
    differential("check", "--image-opts", "driver=raw,file.filename=%s" % (tmp_path / "x"))


def set_refcount(path, cluster, value):
    """Overwrite the 16-bit refcount of a cluster of a fresh qcow2 image."""
    with open(path, "r+b") as f:
        hdr = f.read(104)
        rt = struct.unpack(">Q", hdr[48:56])[0]
        f.seek(rt)
        rb = struct.unpack(">Q", f.read(8))[0]
        f.seek(rb + 2 * cluster)
        f.write(struct.pack(">H", value))


@pytest.fixture
def qcow2(needs_qemu, tmp_path):
    if not has_format("qcow2"):
        pytest.skip("vdisk has no qcow2 driver yet")
    img = tmp_path / "q.qcow2"
    qimg("create", "-q", "-f", "qcow2", img, "64M", check=True)
    return img


def leaky(img):
    """Two leaked clusters (8 and 9) past the used ones."""
    with open(img, "r+b") as f:
        f.truncate(10 * 65536)
    set_refcount(img, 8, 1)
    set_refcount(img, 9, 1)


@pytest.mark.parametrize("args", [[], ["--output=json"], ["-q"]])
def test_differential_qcow2_clean(qcow2, args):
    p = differential("check", *args, qcow2)
    assert p.returncode == 0


@pytest.mark.parametrize("args", [[], ["--output=json"], ["-q"]])
def test_differential_qcow2_leaks(qcow2, args):
    leaky(qcow2)
    p = differential("check", *args, qcow2)
    assert p.returncode == 3


@pytest.mark.parametrize("args", [["-r", "leaks"], ["-r", "all", "--output=json"]])
def test_differential_qcow2_repair_leaks(qcow2, tmp_path, args):
    leaky(qcow2)
    copy = tmp_path / "copy.qcow2"
    differential("check", *args, copy, setup=lambda: shutil.copy(qcow2, copy))


@pytest.mark.parametrize("args", [[], ["--output=json"]])
def test_differential_qcow2_corrupt(qcow2, args):
    set_refcount(qcow2, 0, 0)
    p = differential("check", *args, qcow2)
    assert p.returncode == 2
