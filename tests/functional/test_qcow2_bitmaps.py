# SPDX-License-Identifier: BSD-3-Clause
"""Persistent bitmaps, which vdisk keeps but does not update: its first
write marks each bitmap in use (inconsistent) in place of dropping the
whole extension, so qemu-img still lists them, check finds no leaks, and
they can be removed."""
import json
import shutil

import pytest

from conftest import qimg, run, vimg, needs_vdisk_format
from test_qcow2 import QEMU_IO, qio, vio


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def with_bitmaps(tmp_path):
    img = tmp_path / "b.qcow2"
    qimg("create", "-q", "-f", "qcow2", img, "64M", check=True)
    qio(img, "write -P 0x11 0 1M")
    qimg("bitmap", "--add", img, "b0", check=True)
    qimg("bitmap", "--add", "-g", "128k", img, "b1", check=True)
    qimg("bitmap", "--disable", img, "b1", check=True)
    return img


def bitmaps(img):
    info = json.loads(qimg("info", "--output=json", img, check=True).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


@pytest.mark.parametrize("op", ["write 0x22 2000000 4096", "zero 0 65536",
                                "discard 0 1048576", "compress 0x33 4194304 65536"])
def test_write_marks_bitmaps_in_use(tmp_path, op):
    img = with_bitmaps(tmp_path)
    before = bitmaps(img)
    assert before and all("in-use" not in b["flags"] for b in before)
    vio(img, op)
    after = bitmaps(img)
    assert [b["name"] for b in after] == ["b0", "b1"]
    assert all("in-use" in b["flags"] for b in after)
    assert [b["granularity"] for b in after] == [b["granularity"] for b in before]
    p = qimg("check", img)
    assert p.returncode == 0 and "leaked" not in p.stdout + p.stderr, p.stdout + p.stderr
    assert "inconsistent" not in p.stderr
    # vdisk reports the same as qemu-img
    assert vimg("info", "--output=json", img).stdout == \
        qimg("info", "--output=json", img).stdout
    assert vimg("check", img).stdout == qimg("check", img).stdout
    # qemu can still remove them, and the image stays clean
    qimg("bitmap", "--remove", img, "b0", check=True)
    assert [b["name"] for b in bitmaps(img)] == ["b1"]
    assert qimg("check", img).returncode == 0


def test_read_only_use_changes_nothing(tmp_path):
    img = with_bitmaps(tmp_path)
    pristine = tmp_path / "p.qcow2"
    shutil.copy(img, pristine)
    vimg("convert", "-O", "raw", img, tmp_path / "out.raw", check=True)
    vimg("check", img, check=True)
    vimg("map", img, check=True)
    assert img.read_bytes() == pristine.read_bytes()


def test_clean_data_after_marking(tmp_path):
    """The data vdisk wrote reads back in qemu, and qemu writes on."""
    img = with_bitmaps(tmp_path)
    vio(img, "write 0x44 65536 65536")
    p = run([QEMU_IO, "-c", "read -P 0x44 64k 64k", "-c", "read -P 0x11 0 64k",
             "-c", "write -P 0x55 2M 64k", str(img)])
    assert p.returncode == 0 and "fail" not in (p.stdout + p.stderr).lower(), p.stdout
    assert qimg("check", img).returncode == 0
