# SPDX-License-Identifier: BSD-3-Clause
"""The qcow2 metadata-overlap check: an image whose L2 entry (or refcount)
sends a guest write onto metadata.  vdisk must refuse the write with EIO,
mark the image corrupt and leave the metadata untouched, as qemu-io does on
an identical copy (same kind named in the message).  The overlap-check
options choose the kinds checked, with qemu's names and values."""
import json
import shutil
import struct

import pytest

from conftest import qimg, run, needs_vdisk_format
from test_qcow2 import VDISK_IO
from test_qcow2_check import COPIED, MASK56, QEMU_IO, Qcow2


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def qio(img, *cmds, opts=None):
    args = [QEMU_IO]
    for c in cmds:
        args += ["-c", c]
    if opts:
        args += ["--image-opts", "driver=qcow2,file.filename=%s,%s" % (img, opts)]
    else:
        args += [str(img)]
    return run(args)


def vio(img, *cmds, opts=None):
    name = str(img)
    if opts:
        spec = {"driver": "qcow2", "file": {"driver": "file", "filename": name}}
        for kv in opts.split(","):
            k, v = kv.split("=")
            spec[k] = v
        name = "json:" + json.dumps(spec)
    args = [VDISK_IO, name]
    for c in cmds:
        args += c.split() + ["--"]
    return run(args)


def base_image(tmp_path, name="img.qcow2", snapshot=False):
    """1 GiB image, guest clusters 0 and 1 written (one L2 table), a
    second L2 table for the second half; optionally a snapshot taken and
    guest cluster 0 rewritten after it (so the snapshot's L2 is inactive)."""
    img = tmp_path / name
    qimg("create", "-q", "-f", "qcow2", img, "1G", check=True)
    assert qio(img, "write -P 0x11 0 128k", "write -P 0x22 768M 64k").returncode == 0
    if snapshot:
        qimg("snapshot", "-c", "s1", img, check=True)
        assert qio(img, "write -P 0x33 0 4k").returncode == 0
    return img


def l2_entry_pos(q, gc):
    """File offset of the active L2 entry of guest cluster gc."""
    per = q.cs // 8
    return q.l2_off(gc // per) + 8 * (gc % per)


def bitmap_dir(q):
    """Offset of the bitmap directory from the header extension."""
    pos = struct.unpack(">I", q.rd(100, 4))[0]
    while True:
        typ, ln = struct.unpack(">II", q.rd(pos, 8))
        if typ == 0:
            raise AssertionError("no bitmaps extension")
        if typ == 0x23852875:
            return struct.unpack(">Q", q.rd(pos + 8 + 16, 8))[0]
        pos += 8 + ((ln + 7) & ~7)


def target(q, kind):
    """Host offset of metadata of this kind in image q."""
    if kind == "active L1 table":
        return q.l1_off
    if kind == "refcount table":
        return q.rt_off
    if kind == "refcount block":
        return q.u64(q.rt_off) & MASK56
    if kind == "active L2 table":
        return q.l2_off((768 << 20) // (q.cs * (q.cs // 8)))
    if kind == "snapshot table":
        return q.snap_off
    if kind == "inactive L1 table":
        return q.u64(q.snap_off)
    if kind == "inactive L2 table":
        snap_l1 = q.u64(q.snap_off)
        return q.u64(snap_l1) & MASK56
    if kind == "bitmap directory":
        return bitmap_dir(q)
    raise AssertionError(kind)


def aim(img, kind):
    """Point guest cluster 1 (in place: COPIED) at the metadata; return its
    offset and the bytes there before any write."""
    q = Qcow2(img)
    off = target(q, kind)
    assert off and off % 512 == 0
    aligned = off & ~(q.cs - 1)
    q.w64(l2_entry_pos(q, 1), aligned | COPIED)
    return aligned, q.rd(aligned, q.cs)


def twin(tmp_path, img):
    """A copy of img in its own directory (for qemu-io)."""
    d = tmp_path / "q"
    d.mkdir(exist_ok=True)
    return shutil.copy(img, d / img.name)


def is_corrupt(img):
    info = json.loads(qimg("info", "--output=json", "-U", img).stdout)
    return info["format-specific"]["data"].get("corrupt", False)


KINDS = ["active L1 table", "refcount table", "refcount block", "active L2 table",
         "snapshot table", "inactive L1 table", "bitmap directory"]


@pytest.mark.parametrize("kind", KINDS)
def test_write_onto_metadata_refused(tmp_path, kind):
    img = base_image(tmp_path, snapshot=kind in ("snapshot table", "inactive L1 table"))
    if kind == "bitmap directory":
        qimg("bitmap", "--add", img, "b0", check=True)
    qimg_copy = twin(tmp_path, img)
    off, before = aim(img, kind)
    aim(qimg_copy, kind)
    v = vio(img, "write 0x55 65536 4096")
    q = qio(qimg_copy, "write -P 0x55 64k 4k")
    msg = "Preventing invalid write on metadata (overlaps with %s)" % kind
    assert v.returncode != 0
    assert msg in v.stderr, v.stderr
    assert msg in q.stdout + q.stderr, q.stdout + q.stderr
    if kind == "bitmap directory":
        # the one bitmap was marked in use (flags byte 15) before the write
        before = before[:15] + bytes([before[15] | 1]) + before[16:]
    assert Qcow2(img).rd(off, len(before)) == before
    assert is_corrupt(img) and is_corrupt(qimg_copy)
    # a corrupt image is not written again
    v2 = vio(img, "write 0x66 0 4096")
    assert v2.returncode != 0 and "corrupt" in v2.stderr.lower()


def test_inactive_l2_only_with_all(tmp_path):
    """inactive-l2 is outside the default ("cached") set: checked with
    overlap-check=all or overlap-check.inactive-l2=on, as in qemu."""
    img = base_image(tmp_path, snapshot=True)
    pristine = tmp_path / "pristine.qcow2"
    shutil.copy(img, pristine)
    off, before = aim(img, "inactive L2 table")
    for opts in ("overlap-check=all", "overlap-check.inactive-l2=on"):
        shutil.copy(pristine, img)
        aim(img, "inactive L2 table")
        qcopy = twin(tmp_path, img)
        v = vio(img, "write 0x55 65536 4096", opts=opts)
        q = qio(qcopy, "write -P 0x55 64k 4k", opts=opts)
        msg = "Preventing invalid write on metadata (overlaps with inactive L2 table)"
        assert v.returncode != 0 and msg in v.stderr, v.stderr
        assert msg in q.stdout + q.stderr
        assert Qcow2(img).rd(off, len(before)) == before
    # default: not checked, the write lands (qemu does the same)
    shutil.copy(pristine, img)
    aim(img, "inactive L2 table")
    assert vio(img, "write 0x55 65536 4096").returncode == 0
    assert Qcow2(img).rd(off, 4096) == b"\x55" * 4096


@pytest.mark.parametrize("opts", ["overlap-check=none", "overlap-check.active-l1=off",
                                  "overlap-check=constant,overlap-check.active-l1=off"])
def test_checks_switched_off(tmp_path, opts):
    """With the kind switched off the write lands, as in qemu-io."""
    img = base_image(tmp_path)
    qcopy = twin(tmp_path, img)
    off, _ = aim(img, "active L1 table")
    aim(qcopy, "active L1 table")
    assert vio(img, "write 0x55 65536 4096", opts=opts).returncode == 0
    assert qio(qcopy, "write -P 0x55 64k 4k", opts=opts).returncode == 0
    assert Qcow2(img).rd(off, 4096) == Qcow2(qcopy).rd(off, 4096) == b"\x55" * 4096


@pytest.mark.parametrize("opts,err", [
    ("overlap-check=some", "Unsupported value 'some' for qcow2 option 'overlap-check'. "
     "Allowed are any of the following: none, constant, cached, all"),
    ("overlap-check=all,overlap-check.template=none",
     "Conflicting values for qcow2 options 'overlap-check' ('all') and "
     "'overlap-check.template' ('none')"),
])
def test_bad_overlap_options(tmp_path, opts, err):
    img = base_image(tmp_path)
    v = vio(img, "read 0 512", opts=opts)
    q = qio(img, "read 0 512", opts=opts)
    assert v.returncode != 0 and err in v.stderr, v.stderr
    assert err in q.stdout + q.stderr, q.stdout + q.stderr


def test_refcount_says_metadata_free(tmp_path):
    """A refcount of 0 on the L1 table's cluster makes the allocator hand
    it out for guest data: the check stops the write before it lands."""
    img = tmp_path / "img.qcow2"
    qimg("create", "-q", "-f", "qcow2", img, "64M", check=True)
    q = Qcow2(img)
    l1_cluster = q.l1_off // q.cs
    before = q.rd(q.l1_off, q.cs)
    q.set_refcount(l1_cluster, 0)
    qcopy = twin(tmp_path, img)
    v = vio(img, "write 0x55 0 4096")
    qq = qio(qcopy, "write -P 0x55 0 4k")
    assert v.returncode != 0
    assert "Preventing invalid write on metadata (overlaps with active L1 table)" in v.stderr
    assert "Preventing invalid write on metadata" in qq.stdout + qq.stderr
    assert Qcow2(img).rd(q.l1_off, len(before)) == before
    assert is_corrupt(img)
    # check still reports the problem, and repairs refcounts
    p = qimg("check", img)
    assert p.returncode != 0


def test_l2_table_on_refcount_block(tmp_path):
    """An L1 entry naming a refcount block as an L2 table: the metadata
    write-backs are checked too (the refcount cache's write of that block
    now meets an active L2 table), with the same report as qemu's."""
    img = base_image(tmp_path)
    q = Qcow2(img)
    rb = q.u64(q.rt_off) & MASK56
    q.w64(q.l1_off, rb | COPIED)
    before = q.rd(rb, q.cs)
    qcopy = twin(tmp_path, img)
    v = vio(img, "write 0x55 6553600 4096")
    qq = qio(qcopy, "write -P 0x55 6553600 4k")
    qmsg = [l for l in (qq.stdout + qq.stderr).splitlines() if "Preventing" in l]
    assert qmsg, qq.stdout + qq.stderr
    assert qmsg[0].split("Preventing")[1] in v.stderr, v.stderr
    assert v.returncode != 0 and is_corrupt(img)
    assert Qcow2(img).rd(rb, q.cs) == before
