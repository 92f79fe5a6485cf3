# SPDX-License-Identifier: BSD-3-Clause
"""qcow2 internal snapshots, differential with qemu-img: snapshots either
tool takes are listed identically by both (snapshot -l, info, info JSON),
data read from a snapshot (convert -l, snapshot -a, vdisk-nbd -l) is the
data of the moment it was taken, the images pass qemu-img check with no
leaks after every operation, and hostile snapshot tables end in a clear
error, never a crash."""
import json
import os
import shutil
import struct
import subprocess

import pytest

from conftest import QEMU_IMG, needs_vdisk_format, qimg, same_output, vimg
from nbd_helpers import VDISK_NBD, Server

QEMU_IO = shutil.which("qemu-io")
TIMEOUT = 60


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def qio(img, *cmds, fmt="qcow2"):
    args = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run(args + [str(img)], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and "failed" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p.stdout


def check_clean(img):
    """qemu-img check: no errors and no leaks."""
    p = qimg("check", img)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "No errors were found" in p.stdout, p.stdout
    assert "leaked" not in p.stdout, p.stdout


def same_listing(img):
    """snapshot -l, info and info JSON of both tools agree."""
    for args in (["snapshot", "-l"], ["info"], ["info", "--output=json"],
                 ["info", "--backing-chain"]):
        v, q = vimg(*args, img), qimg(*args, img)
        assert v.returncode == q.returncode == 0, v.stderr + q.stderr
        assert same_output(v.stdout, q.stdout), (args, v.stdout, q.stdout)


def new_image(path, size="64M", opts=()):
    args = ["create", "-f", "qcow2"]
    for o in opts:
        args += ["-o", o]
    qimg(*args, path, size, check=True)
    return path


@pytest.fixture
def img(tmp_path):
    """An image with data, compressed data and a hole."""
    p = new_image(tmp_path / "a.qcow2")
    qio(p, "write -P 0x11 0 1M", "write -c -P 0x33 2M 64k", "write -P 0x66 60M 128k")
    return p


def raw_of(img, tmp_path, name, snapshot=None, tool=qimg):
    out = tmp_path / name
    args = ["convert", "-O", "raw"]
    if snapshot:
        args += ["-l", snapshot]
    tool(*args, img, out, check=True)
    return out


def same_file(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


# ---- listing ----

@pytest.mark.parametrize("opts", [(), ("compat=0.10",), ("refcount_bits=2",),
                                  ("cluster_size=4096",), ("extended_l2=on",)])
def test_qemu_snapshots_listed_identically(tmp_path, opts):
    p = new_image(tmp_path / "a.qcow2", "8M", opts)
    qio(p, "write -P 1 0 64k")
    qimg("snapshot", "-c", "first", p, check=True)
    qio(p, "write -P 2 0 64k")
    qimg("snapshot", "-c", "a name longer than sixteen chars", p, check=True)
    qimg("snapshot", "-c", "first", p, check=True)          # duplicate names
    same_listing(p)


def test_no_snapshots_lists_nothing(tmp_path):
    p = new_image(tmp_path / "a.qcow2", "1M")
    assert vimg("snapshot", "-l", p, check=True).stdout == ""
    assert "snapshots" not in json.loads(vimg("info", "--output=json", p, check=True).stdout)


def test_overlay_snapshot_listed_with_backing(tmp_path, img):
    ov = tmp_path / "ov.qcow2"
    qimg("create", "-f", "qcow2", "-b", img, "-F", "qcow2", ov, check=True)
    vimg("snapshot", "-c", "ovsnap", ov, check=True)
    vimg("snapshot", "-c", "base", img, check=True)
    same_listing(ov)
    check_clean(ov)


def patch_entries(path, fields):
    """Patch fields of every snapshot entry: fields(i) -> [(offset, fmt, value)]."""
    with open(path, "r+b") as f:
        f.seek(60)
        nb, off = struct.unpack(">IQ", f.read(12))
        for i in range(nb):
            for o, fmt, v in fields(i):
                f.seek(off + o)
                f.write(struct.pack(fmt, v))
            f.seek(off + 12)
            il, nl = struct.unpack(">HH", f.read(4))
            f.seek(off + 36)
            ex = struct.unpack(">I", f.read(4))[0]
            off = (off + 40 + ex + il + nl + 7) & ~7


def test_unusual_field_values_listed_identically(tmp_path):
    """VM state sizes, clocks, dates and icounts that qemu-img itself never
    writes (savevm does): both tools print them the same way."""
    p = new_image(tmp_path / "a.qcow2", "1M")
    for name in ("a", "b", "c", "d"):
        qimg("snapshot", "-c", name, p, check=True)
    values = [
        [(16, ">I", 1), (24, ">Q", (1 << 64) - 12345), (32, ">I", 123456),
         (40, ">Q", 5 * 1024 ** 3 + 17), (56, ">Q", 987654321)],
        [(24, ">Q", 3723 * 10 ** 9 + 456789012), (56, ">Q", (1 << 64) - 1)],
        [(40, ">Q", (1 << 63) + 7), (56, ">Q", (1 << 63) + 5)],
        [(16, ">I", 0xffffffff), (20, ">I", 999999999), (40, ">Q", 1536)],
    ]
    patch_entries(p, lambda i: values[i])
    same_listing(p)


# ---- snapshots taken by vdisk ----

def test_vdisk_snapshots_read_by_qemu(tmp_path, img):
    vimg("snapshot", "-c", "one", img, check=True)
    check_clean(img)
    qio(img, "write -P 0x22 0 512k", "write -P 0x44 2M 4k")
    vimg("snapshot", "-c", "two", img, check=True)
    check_clean(img)
    same_listing(img)
    ids = [l.split()[0] for l in qimg("snapshot", "-l", img).stdout.splitlines()[2:]]
    assert ids == ["1", "2"]


def test_snapshot_survives_writes(tmp_path, img):
    before = raw_of(img, tmp_path, "before.raw")
    vimg("snapshot", "-c", "one", img, check=True)
    qio(img, "write -P 0x22 0 512k", "write -P 0x44 2M 4k", "write -z 60M 64k")
    vimg("bench", "-w", "-c", "64", "-s", "4k", "-S", "96k", "-f", "qcow2", img, check=True)
    check_clean(img)
    for tool in (vimg, qimg):
        assert same_file(raw_of(img, tmp_path, "s.raw", "one", tool), before)


def test_convert_from_snapshot_both_tools(tmp_path, img):
    qimg("snapshot", "-c", "one", img, check=True)
    qio(img, "write -P 0x22 0 512k")
    vimg("snapshot", "-c", "two", img, check=True)
    qio(img, "write -P 0x77 0 2M")
    for param in ("one", "1", "snapshot.name=two", "snapshot.id=2",
                  "snapshot.id=1,snapshot.name=one"):
        v = raw_of(img, tmp_path, "v.raw", param, vimg)
        q = raw_of(img, tmp_path, "q.raw", param, qimg)
        assert same_file(v, q), param
    vq, qq = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    vimg("convert", "-l", "two", "-O", "qcow2", img, vq, check=True)
    qimg("convert", "-l", "two", "-O", "qcow2", img, qq, check=True)
    assert qimg("compare", vq, qq).returncode == 0


@pytest.mark.parametrize("param", ["nope", "snapshot.id=9", "snapshot.name=one,snapshot.id=2",
                                   "snapshot.foo=1", "foo=bar"])
def test_convert_snapshot_errors(tmp_path, img, param):
    qimg("snapshot", "-c", "one", img, check=True)
    qimg("snapshot", "-c", "two", img, check=True)
    v = vimg("convert", "-l", param, "-O", "raw", img, tmp_path / "v.raw")
    q = qimg("convert", "-l", param, "-O", "raw", img, tmp_path / "q.raw")
    assert v.returncode == q.returncode == 1
    assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)


def test_convert_snapshot_of_raw_and_many_sources(tmp_path, img):
    r = tmp_path / "r.raw"
    qimg("create", "-f", "raw", r, "1M", check=True)
    for args in (["-f", "raw", r], [img, img]):
        v = vimg("convert", "-l", "s", "-O", "raw", *args, tmp_path / "v.raw")
        q = qimg("convert", "-l", "s", "-O", "raw", *args, tmp_path / "q.raw")
        assert v.returncode == q.returncode == 1
        assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)


def test_apply_restores_old_data(tmp_path, img):
    before = raw_of(img, tmp_path, "before.raw")
    vimg("snapshot", "-c", "one", img, check=True)
    qio(img, "write -P 0x22 0 512k", "write -P 0x44 2M 4k", "write -P 0x55 30M 1M")
    vimg("snapshot", "-a", "one", img, check=True)
    check_clean(img)
    assert qimg("compare", "-f", "qcow2", "-F", "raw", img, before).returncode == 0
    # writes after the revert leave the snapshot alone
    qio(img, "write -P 0x99 0 64k")
    check_clean(img)
    assert same_file(raw_of(img, tmp_path, "s.raw", "one"), before)


def test_apply_by_id_then_name(tmp_path, img):
    """-a looks for an id first, then a name, as qemu-img does."""
    qio(img, "write -P 1 0 64k")
    qimg("snapshot", "-c", "x", img, check=True)               # id 1
    qio(img, "write -P 2 0 64k")
    qimg("snapshot", "-c", "1", img, check=True)               # id 2, named "1"
    vimg("snapshot", "-a", "1", img, check=True)
    qio(img, "read -P 1 0 64k")
    vimg("snapshot", "-a", "x", img, check=True)
    qio(img, "read -P 1 0 64k")
    check_clean(img)


def test_apply_qemu_snapshot(tmp_path, img):
    qimg("snapshot", "-c", "q", img, check=True)
    before = raw_of(img, tmp_path, "before.raw")
    qio(img, "write -P 0x22 0 4M")
    vimg("snapshot", "-a", "q", img, check=True)
    check_clean(img)
    assert qimg("compare", "-f", "qcow2", "-F", "raw", img, before).returncode == 0


def test_delete_leaves_no_leaks(tmp_path, img):
    vimg("snapshot", "-c", "one", img, check=True)
    qio(img, "write -P 0x22 0 512k")
    qimg("snapshot", "-c", "two", img, check=True)
    qio(img, "write -P 0x44 0 1M")
    vimg("snapshot", "-c", "three", img, check=True)
    current = raw_of(img, tmp_path, "cur.raw")
    two = raw_of(img, tmp_path, "two.raw", "two")
    vimg("snapshot", "-d", "one", img, check=True)
    check_clean(img)
    same_listing(img)
    vimg("snapshot", "-d", "three", img, check=True)
    check_clean(img)
    assert same_file(raw_of(img, tmp_path, "two2.raw", "two"), two)
    vimg("snapshot", "-d", "two", img, check=True)
    check_clean(img)        # QEMU also checks OFLAG_COPIED: set again
    assert vimg("snapshot", "-l", img, check=True).stdout == ""
    with open(img, "rb") as f:
        f.seek(60)
        assert struct.unpack(">IQ", f.read(12)) == (0, 0)
    assert same_file(raw_of(img, tmp_path, "cur2.raw"), current)
    qio(img, "write -P 0x12 0 64k")
    check_clean(img)


def test_delete_looks_up_names(tmp_path, img):
    """-d takes a name (qemu-img's lookup), the first one that matches."""
    qimg("snapshot", "-c", "x", img, check=True)
    qimg("snapshot", "-c", "x", img, check=True)
    qimg("snapshot", "-c", "1", img, check=True)
    q = tmp_path / "q.qcow2"
    shutil.copy(img, q)
    for name in ("1", "2", "x"):
        v, r = vimg("snapshot", "-d", name, img), qimg("snapshot", "-d", name, q)
        assert v.returncode == r.returncode, name
        assert same_output(v.stderr, r.stderr), (v.stderr, r.stderr)
        assert vimg("snapshot", "-l", img).stdout == qimg("snapshot", "-l", q).stdout
    check_clean(img)


@pytest.mark.parametrize("args", [["-a", "zz"], ["-d", "zz"]])
def test_missing_snapshot_errors(tmp_path, img, args):
    qimg("snapshot", "-c", "one", img, check=True)
    v, q = vimg("snapshot", *args, img), qimg("snapshot", *args, img)
    assert v.returncode == q.returncode == 1
    assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)


def test_new_ids_follow_qemu(tmp_path, img):
    q = tmp_path / "q.qcow2"
    shutil.copy(img, q)
    for tool, p in ((vimg, img), (qimg, q)):
        for name in ("a", "b", "c"):
            tool("snapshot", "-c", name, p, check=True)
        tool("snapshot", "-d", "c", p, check=True)
        tool("snapshot", "-d", "a", p, check=True)
        tool("snapshot", "-c", "d", p, check=True)
    ids = lambda p: [(l[:10].strip(), l[10:27].strip())
                     for l in qimg("snapshot", "-l", p).stdout.splitlines()[2:]]
    assert ids(img) == ids(q) == [("2", "b"), ("3", "d")]


def test_many_snapshots(tmp_path):
    p = new_image(tmp_path / "a.qcow2", "4M")
    for i in range(40):
        qio(p, "write -P %d %d 64k" % (i, (i % 8) * 65536))
        vimg("snapshot", "-c", "s%d" % i, p, check=True)
    check_clean(p)
    same_listing(p)
    for i in range(0, 40, 3):
        vimg("snapshot", "-d", "s%d" % i, p, check=True)
    check_clean(p)
    same_listing(p)


def test_image_opts_and_force_share(tmp_path, img):
    vimg("snapshot", "-c", "one", "--image-opts",
         "driver=qcow2,file.filename=%s" % img, check=True)
    v = vimg("snapshot", "-U", "-l", img, check=True)
    assert v.stdout == qimg("snapshot", "-U", "-l", img).stdout
    v = vimg("snapshot", "-l", "--image-opts", "driver=qcow2,file.filename=%s" % img)
    assert v.stdout == qimg("snapshot", "-l", img).stdout


def test_snapshot_open_option(tmp_path, img):
    """snapshot.id/snapshot.name as a qcow2 open option (read-only)."""
    before = raw_of(img, tmp_path, "before.raw")
    vimg("snapshot", "-c", "one", img, check=True)
    qio(img, "write -P 0x22 0 1M")
    out = tmp_path / "o.raw"
    vimg("convert", "--image-opts", "-O", "raw",
         "driver=qcow2,read-only=on,snapshot.name=one,file.filename=%s" % img, out,
         check=True)
    assert same_file(out, before)


def test_refcount_bits_1(tmp_path):
    """One-bit refcounts cannot share a cluster: refused as qemu-img does."""
    p = new_image(tmp_path / "a.qcow2", "1M", ("refcount_bits=1",))
    qio(p, "write -P 1 0 64k")
    q = tmp_path / "q.qcow2"
    shutil.copy(p, q)
    v = vimg("snapshot", "-c", "x", p)
    check_clean(p)                     # (qemu-img leaks a cluster here)
    r = qimg("snapshot", "-c", "x", q)
    assert v.returncode == r.returncode == 1
    assert same_output(v.stderr, r.stderr), (v.stderr, r.stderr)


def test_data_file_refused(tmp_path):
    p = tmp_path / "d.qcow2"
    qimg("create", "-f", "qcow2", "-o", "data_file=%s" % (tmp_path / "d.raw"), p, "1M",
         check=True)
    v = vimg("snapshot", "-c", "x", p)
    assert v.returncode == 1 and "Could not create snapshot 'x'" in v.stderr
    check_clean(p)


# ---- vdisk-nbd -l ----

def test_nbd_load_snapshot(tmp_path, img):
    before = raw_of(img, tmp_path, "before.raw")
    vimg("snapshot", "-c", "one", img, check=True)
    qio(img, "write -P 0x22 0 1M")
    for param in ("one", "snapshot.id=1"):
        srv = Server(VDISK_NBD, ["-l", param, "-f", "qcow2", img],
                     sock=str(tmp_path / "s.sock"), probe=False)
        try:
            out = tmp_path / "n.raw"
            qimg("convert", "-f", "raw", "-O", "raw", srv.uri(), out, check=True)
            assert same_file(out, before)
        finally:
            srv.stop()


def test_nbd_load_snapshot_read_only(tmp_path, img):
    vimg("snapshot", "-c", "one", img, check=True)
    srv = Server(VDISK_NBD, ["-l", "one", "-f", "qcow2", img],
                 sock=str(tmp_path / "s.sock"), probe=False)
    try:
        p = subprocess.run([QEMU_IO, "-f", "raw", "-c", "write 0 512", srv.uri()],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert "read-only" in (p.stdout + p.stderr).lower() or p.returncode != 0
    finally:
        srv.stop()
    check_clean(img)


def test_nbd_missing_snapshot(tmp_path, img):
    p = subprocess.run([VDISK_NBD, "-l", "nope", "-f", "qcow2", "-k",
                        str(tmp_path / "s.sock"), str(img)],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 1
    assert p.stderr == "vdisk-nbd: Failed to load snapshot: Can't find snapshot\n"


# ---- hostile tables ----

def hostile(tmp_path, header=None, entry=None, truncate=None):
    p = new_image(tmp_path / "h.qcow2", "1M")
    qio(p, "write -P 1 0 64k")
    qimg("snapshot", "-c", "s", p, check=True)
    with open(p, "r+b") as f:
        f.seek(64)
        off = struct.unpack(">Q", f.read(8))[0]
        for o, fmt, v in header or ():
            f.seek(o)
            f.write(struct.pack(fmt, v))
        for o, fmt, v in entry or ():
            f.seek(off + o)
            f.write(struct.pack(fmt, v))
        if truncate is not None:
            f.truncate(off + truncate)
    return p


HOSTILE = {
    "count_too_large": dict(header=[(60, ">I", 70000)]),
    "count_past_eof": dict(header=[(60, ">I", 100000 // 40)]),
    "offset_past_eof": dict(header=[(64, ">Q", 1 << 40)]),
    "offset_unaligned": dict(header=[(64, ">Q", 0x10200)]),
    "offset_overflow": dict(header=[(64, ">Q", (1 << 64) - 0x10000)]),
    "id_length_huge": dict(entry=[(12, ">H", 65535), (14, ">H", 65535)], truncate=4096),
    "extra_too_large": dict(entry=[(36, ">I", 5000)]),
    "extra_huge": dict(entry=[(36, ">I", 0xffffffff)]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_table_clear_error(tmp_path, case):
    p = hostile(tmp_path, **HOSTILE[case])
    for args in (["info"], ["snapshot", "-l"], ["snapshot", "-c", "n"],
                 ["snapshot", "-a", "s"], ["snapshot", "-d", "s"],
                 ["convert", "-l", "s", "-O", "raw"]):
        extra = [tmp_path / "o.raw"] if args[0] == "convert" else []
        v = vimg(*args, p, *extra, timeout=TIMEOUT)
        assert v.returncode == 1, (args, v.stdout, v.stderr)
        assert v.stderr.startswith("vdisk-img: Could not open"), (args, v.stderr)
        assert "snapshot" in v.stderr.lower() or "Snapshot" in v.stderr
    q = qimg("info", p)
    if q.returncode:
        # the message names qemu-img check, as QEMU's does
        v = vimg("info", p).stderr
        assert v.replace("vdisk-img:", "qemu-img:", 1) == q.stderr, (v, q.stderr)
    assert vimg("check", p, timeout=TIMEOUT).returncode >= 0


@pytest.mark.parametrize("entry", [
    [(0, ">Q", 0x12345)],                  # L1 offset unaligned
    [(8, ">I", 0x10000000)],               # L1 too large
    [(0, ">Q", 1 << 50)],                  # L1 past the end of the file
    [(48, ">Q", 1 << 62)],                 # disk size the L1 does not cover
])
def test_hostile_snapshot_l1(tmp_path, entry):
    p = hostile(tmp_path, entry=entry)
    for args in (["snapshot", "-a", "s"], ["snapshot", "-d", "s"],
                 ["convert", "-l", "s", "-O", "raw"]):
        extra = [tmp_path / "o.raw"] if args[0] == "convert" else []
        v = vimg(*args, p, *extra, timeout=TIMEOUT)
        assert v.returncode in (0, 1), (args, v.stderr)
        if v.returncode:
            assert v.stderr.startswith("vdisk-img: "), v.stderr
            assert "\n" == v.stderr[-1] and v.stderr.count("\n") == 1


@pytest.mark.parametrize("param", ["one", "2", "snapshot.name=two", "nope"])
def test_measure_from_snapshot(tmp_path, img, param):
    qimg("snapshot", "-c", "one", img, check=True)
    qio(img, "write -P 0x22 8M 8M")
    vimg("snapshot", "-c", "two", img, check=True)
    qio(img, "write -P 0x23 20M 8M")
    v = vimg("measure", "-O", "qcow2", "-l", param, img)
    q = qimg("measure", "-O", "qcow2", "-l", param, img)
    assert v.returncode == q.returncode
    assert same_output(v.stdout + v.stderr, q.stdout + q.stderr)
