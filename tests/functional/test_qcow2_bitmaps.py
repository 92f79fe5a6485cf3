# SPDX-License-Identifier: BSD-3-Clause
"""Persistent bitmaps kept up to date by vdisk's writes: the bits equal
what qemu sets for the same writes, the bitmaps are in use on disk while
the image is open for writing (a crash leaves them inconsistent), and
stored clean at close."""
import json
import os
import shutil
import signal
import subprocess

import pytest

from conftest import BUILD, qimg, run, vimg, needs_vdisk_format
from test_qcow2 import QEMU_IO, qio, vio
from bitmap_helpers import same_bits


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def with_bitmaps(tmp_path, name="b.qcow2"):
    img = tmp_path / name
    qimg("create", "-q", "-f", "qcow2", img, "64M", check=True)
    qio(img, "write -P 0x11 0 1M")
    qimg("bitmap", "--add", img, "b0", check=True)
    qimg("bitmap", "--add", "-g", "128k", img, "b1", check=True)
    qimg("bitmap", "--disable", img, "b1", check=True)
    return img


def bitmaps(img):
    info = json.loads(qimg("info", "--output=json", "-U", img, check=True).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


@pytest.mark.parametrize("op", ["write 0x22 2000000 4096", "zero 0 65536",
                                "discard 0 1048576", "compress 0x33 4194304 65536"])
def test_write_sets_bits(tmp_path, op):
    """A write by vdisk sets the bits of enabled bitmaps as the same write
    by qemu-io does, and the bitmaps are stored clean (not in use)."""
    img = with_bitmaps(tmp_path)
    ref = with_bitmaps(tmp_path, "ref.qcow2")
    vio(img, op)
    verb, *args = op.split()
    qop = {"write": "write -P %s %s %s", "zero": "write -z %s %s",
           "discard": "discard %s %s", "compress": "write -c -P %s %s %s"}[verb] % tuple(args)
    qio(ref, qop)
    after = bitmaps(img)
    assert after == bitmaps(ref)
    assert all("in-use" not in b["flags"] for b in after)
    same_bits(img, ref, ["b0", "b1"])
    p = qimg("check", img)
    assert p.returncode == 0 and "leaked" not in p.stdout + p.stderr, p.stdout + p.stderr
    # vdisk reports the same as qemu-img
    assert vimg("info", "--output=json", img).stdout == \
        qimg("info", "--output=json", img).stdout
    assert vimg("check", img).stdout == qimg("check", img).stdout
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


LOAD = os.path.join(BUILD, "tests", "helpers", "vdisk-crashload")


def test_crash_leaves_in_use(tmp_path):
    """Killed after its writes (the image never closed): every bitmap is
    in use on disk, qemu-img check says so as for qemu's own crash, and
    qemu refuses to use them."""
    img = with_bitmaps(tmp_path)
    script = tmp_path / "s"
    script.write_text("write 0 65536\nflush\nwrite 1048576 4096\n")
    run([LOAD, "-x", "1", str(img), str(script)], check=True)
    assert all("in-use" in b["flags"] for b in bitmaps(img))
    p = qimg("check", img)
    assert p.returncode == 0, p.stdout + p.stderr
    assert vimg("check", img).stdout == p.stdout
    assert vimg("info", "--output=json", img).stdout == \
        qimg("info", "--output=json", img).stdout
    q = qimg("bitmap", "--clear", img, "b0")
    v = vimg("bitmap", "--clear", img, "b0")
    assert q.returncode == v.returncode == 1
    assert v.stderr.replace("vdisk-img", "qemu-img") == q.stderr


def test_sigkill_during_writes_leaves_in_use(tmp_path):
    img = with_bitmaps(tmp_path)
    script = tmp_path / "s"
    script.write_text("".join("write %d 65536\n" % (i * 65536) for i in range(200)))
    p = subprocess.Popen([LOAD, "-r", "1000", str(img), str(script)],
                         stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("done 20"):
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert all("in-use" in b["flags"] for b in bitmaps(img))
    assert qimg("check", img).returncode == 0
    # vdisk keeps them in use: never trusted again, removable
    vio(img, "write 0x11 0 4096")
    assert all("in-use" in b["flags"] for b in bitmaps(img))
    vimg("bitmap", "--remove", img, "b0", check=True)
    assert [b["name"] for b in bitmaps(img)] == ["b1"]
    assert qimg("check", img).returncode == 0


def test_flush_stores_and_rewrite_marks_again(tmp_path):
    """A flush stores the bitmaps (clean on disk); the next write marks
    them in use again before it changes anything."""
    img = with_bitmaps(tmp_path)
    script = tmp_path / "s"
    script.write_text("write 0 65536\nflush\n")
    run([LOAD, "-x", "1", str(img), str(script)], check=True)
    # killed after the flush: the bitmaps were stored, then no write
    assert all("in-use" not in b["flags"] for b in bitmaps(img))
    ref = with_bitmaps(tmp_path, "ref.qcow2")
    qio(ref, "write -P 1 0 65536")
    same_bits(img, ref, ["b0", "b1"])


def bitmap_tables(img):
    """{name: (table offset, table size)} from the bitmap directory."""
    import struct
    from test_qcow2_bitmaps_hostile import ext_pos
    data = img.read_bytes()
    e = ext_pos(bytearray(data))
    count, dsize, doff = struct.unpack(">I4xQQ", data[e:e + 24])
    out, p = {}, doff
    for _ in range(count):
        toff, tsize, _fl, _t, _g, nl, extra = struct.unpack(">QIIBBHI", data[p:p + 24])
        out[data[p + 24:p + 24 + nl].decode()] = (toff, tsize)
        p += (24 + extra + nl + 7) // 8 * 8
    return out


def test_store_keeps_unchanged_tables(tmp_path):
    """A flush stores only bitmaps whose bits changed: the disabled one
    keeps its table, the enabled one gets a new one, both read back right."""
    img = with_bitmaps(tmp_path)
    qio(img, "write -P 0x22 4M 64k")           # both bitmaps get tables on disk
    before = bitmap_tables(img)
    script = tmp_path / "s"
    script.write_text("write 0 65536\nflush\n")
    run([LOAD, str(img), str(script)], check=True)
    after = bitmap_tables(img)
    assert after["b1"] == before["b1"] and after["b0"] != before["b0"]
    ref = with_bitmaps(tmp_path, "ref.qcow2")
    qio(ref, "write -P 0x22 4M 64k", "write -P 1 0 65536")
    same_bits(img, ref, ["b0", "b1"])
    assert qimg("check", img).returncode == 0
