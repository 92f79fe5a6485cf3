# SPDX-License-Identifier: BSD-3-Clause
"""parallels (expanding images) against qemu-img and qemu-io 7.2: images
vdisk creates, writes and converts to have qemu's bytes on disk; images
qemu writes read the same in vdisk; info, map and check (with -r) print
what qemu-img prints, but for qemu-img 7.2's false leak report on images
with small clusters.  Version 1 headers ("WithoutFreeSpace", BAT in
sectors) and hostile images come from a small generator written from
docs/interop/parallels.txt."""
import os
import shutil
import struct
import subprocess

import pytest

from conftest import BUILD, QEMU_IMG, VDISK_IMG, needs_vdisk_format
from roformat_helpers import (SANITIZED, both, hostile_convert, limited, run, same_contents,
                              same_inspection, same_result)

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
K, M = 1 << 10, 1 << 20
INUSE = 0x746f6e59


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("parallels")


def writes(d, name, ops):
    """The same writes through qemu-io (on name.q) and vdisk-io (name.v):
    ops are (byte, offset, length)."""
    q = subprocess.run([QEMU_IO, "-f", "parallels"] +
                       sum((["-c", "write -P %d %d %d" % op] for op in ops), []) +
                       [name + ".q"], cwd=d, capture_output=True, text=True)
    assert q.returncode == 0 and "error" not in q.stdout.lower(), q.stdout + q.stderr
    args = []
    for b, o, l in ops:
        args += ["--", "write", str(b), str(o), str(l)]
    v = subprocess.run([VDISK_IO, "-f", "parallels", name + ".v"] + args[1:], cwd=d,
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr


def same_bytes(d, a, b):
    assert (d / a).read_bytes() == (d / b).read_bytes()


CREATE = [("10M", None), ("10000001", None), ("64M", "4k"), ("100M", "1000"),
          ("1G", "64k"), ("3M", "2M")]


@pytest.mark.parametrize("size,cluster", CREATE)
def test_parallels_create_as_qemu(tmp_path, size, cluster):
    opts = ["-o", "cluster_size=" + cluster] if cluster else []
    q = run(QEMU_IMG, "create", "-f", "parallels", *opts, "img.q", size, cwd=tmp_path)
    v = run(VDISK_IMG, "create", "-f", "parallels", *opts, "img.v", size, cwd=tmp_path)
    assert v.stdout.replace("img.v", "img.q") == q.stdout and v.returncode == q.returncode
    same_bytes(tmp_path, "img.q", "img.v")
    same_inspection(tmp_path, "img.v", "parallels")


@pytest.mark.parametrize("args", [["-o", "cluster_size=0"], ["-o", "cluster_size=2G"],
                                  ["-o", "cluster_size=512", "img", "2T"],
                                  ["-o", "help"], ["-o", "cluster_size=abc"]])
def test_parallels_create_refusals(tmp_path, args):
    if len(args) == 2 and args[1] != "help":
        args = args + ["img", "10M"]
    same_result(*both("create", "-f", "parallels", *args, cwd=tmp_path))


WRITES = {
    "scattered": [(0x11, 0, 4096), (0x22, 5 * M, M), (0x33, 3 * M, 512),
                  (0x44, 1023 * K, 2048)],
    "backwards": [(i + 1, (9 - i) * M + 512 * i, 4096) for i in range(10)],
    "whole": [(0x55, 0, 10 * M)],
}


@pytest.mark.parametrize("cluster", ["1M", "64k"])
@pytest.mark.parametrize("pattern", sorted(WRITES))
def test_parallels_writes_as_qemu(tmp_path, cluster, pattern):
    """New clusters land where qemu puts them: the same bytes on disk."""
    run(QEMU_IMG, "create", "-q", "-f", "parallels", "-o", "cluster_size=" + cluster,
        "img.q", "10M", cwd=tmp_path)
    shutil.copy(tmp_path / "img.q", tmp_path / "img.v")
    writes(tmp_path, "img", WRITES[pattern])
    same_bytes(tmp_path, "img.q", "img.v")
    same_inspection(tmp_path, "img.v", "parallels")
    same_result(*both("check", "img.v", cwd=tmp_path))
    same_result(*both("compare", "img.q", "img.v", cwd=tmp_path))


@pytest.mark.parametrize("opts", ['"prealloc-mode": "truncate"', '"prealloc-size": "4M"',
                                  '"prealloc-mode": "falloc", "prealloc-size": "1k"'])
def test_parallels_prealloc_options(tmp_path, opts):
    """prealloc-mode and prealloc-size change how the file grows while
    open, not the image left at close."""
    run(QEMU_IMG, "create", "-q", "-f", "parallels", "-o", "cluster_size=64k", "img.q", "10M",
        cwd=tmp_path)
    shutil.copy(tmp_path / "img.q", tmp_path / "img.v")
    name = 'json:{"driver": "parallels", %s, "file": {"driver": "file", "filename": "%s"}}'
    q = subprocess.run([QEMU_IO, "-c", "write -P 3 100k 300k", "-c", "write -P 4 5M 4k",
                        name % (opts, "img.q")], cwd=tmp_path, capture_output=True, text=True)
    assert q.returncode == 0, q.stderr
    v = subprocess.run([VDISK_IO, name % (opts, "img.v"), "write", "3", str(100 * K),
                        str(300 * K), "--", "write", "4", str(5 * M), "4096"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    same_bytes(tmp_path, "img.q", "img.v")


@pytest.mark.parametrize("opt", ["prealloc-mode=bogus", "prealloc-size=abc", "foo=1"])
def test_parallels_bad_open_options(tmp_path, opt):
    run(QEMU_IMG, "create", "-q", "-f", "parallels", "img", "1M", cwd=tmp_path)
    same_result(*both("info", "--image-opts", "driver=parallels,file.filename=img," + opt,
                      cwd=tmp_path))


def test_parallels_convert_both_ways(tmp_path):
    data = bytearray(6 * M)
    data[100:5000] = os.urandom(4900)
    data[3 * M:4 * M + 7] = b"\x5a" * (M + 7)
    (tmp_path / "in.raw").write_bytes(bytes(data))
    for prog, out in ((QEMU_IMG, "c.q"), (VDISK_IMG, "c.v")):
        p = run(prog, "convert", "-f", "raw", "-O", "parallels", "in.raw", out, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    same_bytes(tmp_path, "c.q", "c.v")
    same_contents(tmp_path, "c.q", "parallels", expect=bytes(data))
    same_result(*both("check", "c.v", cwd=tmp_path))


def fresh(d, name="img", cluster="64k", size="4M"):
    """A qemu-written image and its copy: name.q and name.v."""
    run(QEMU_IMG, "create", "-q", "-f", "parallels", "-o", "cluster_size=" + cluster,
        name + ".q", size, cwd=d)
    subprocess.run([QEMU_IO, "-f", "parallels", "-c", "write -P 7 0 200k",
                    "-c", "write -P 9 2M 64k", name + ".q"], cwd=d, capture_output=True)
    shutil.copy(d / (name + ".q"), d / (name + ".v"))


def same_checks(d, name="img"):
    """check, check -r leaks, check -r all: the same reports on copies,
    and the same bytes after each repair."""
    for mode in ([], ["-r", "leaks"], ["-r", "all"]):
        q = run(QEMU_IMG, "check", *mode, name + ".q", cwd=d)
        v = run(VDISK_IMG, "check", *mode, name + ".v", cwd=d)
        same_result(q, subprocess.CompletedProcess(v.args, v.returncode,
                                                   v.stdout.replace(name + ".v", name + ".q"),
                                                   v.stderr.replace(name + ".v", name + ".q")))
        same_bytes(d, name + ".q", name + ".v")


def poke(path, off, fmt, *vals):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, *vals))


def test_parallels_check_unclean(tmp_path):
    """The in-use mark left by a crash: reported, repaired by -r all, and
    a writable open is refused meanwhile."""
    fresh(tmp_path)
    for s in "qv":
        poke(tmp_path / ("img." + s), 44, "<I", INUSE)
    same_result(*both("snapshot", "-c", "s", "img.v", cwd=tmp_path))
    same_result(*both("info", "img.v", cwd=tmp_path))
    same_checks(tmp_path)


def test_parallels_check_cluster_outside_image(tmp_path):
    fresh(tmp_path)
    for s in "qv":
        poke(tmp_path / ("img." + s), 64 + 4 * 10, "<I", 5000)
    same_inspection(tmp_path, "img.v", "parallels")
    same_checks(tmp_path)


def test_parallels_check_leak(tmp_path):
    fresh(tmp_path)
    for s in "qv":
        with open(tmp_path / ("img." + s), "ab") as f:
            f.write(b"\x01" * (300 * K))
    same_checks(tmp_path)


def test_parallels_small_clusters_do_not_leak(tmp_path):
    """qemu-img 7.2 counts the clusters between the BAT and the data offset
    of an image with 4 KiB clusters as leaked (its defect): vdisk reports
    no leak, and repairs nothing."""
    run(QEMU_IMG, "create", "-q", "-f", "parallels", "-o", "cluster_size=4k", "img.v", "64M",
        cwd=tmp_path)
    q, v = both("check", "img.v", cwd=tmp_path)
    assert q.returncode == 3 and "space leaked" in q.stderr
    assert v.returncode == 0 and "No errors were found on the image." in v.stdout, v.stdout
    before = (tmp_path / "img.v").read_bytes()
    v = run(VDISK_IMG, "check", "-r", "all", "img.v", cwd=tmp_path)
    assert v.returncode == 0 and (tmp_path / "img.v").read_bytes() == before


# ---- the generator ----

def header(sectors, tracks, bat, magic=b"WithouFreSpacExt", version=2, data_off=None,
           inuse=0):
    data_off = data_off if data_off is not None else \
        -(-(64 + 4 * bat) // (tracks * 512)) * tracks
    return struct.pack("<16sIIIIIQIIIQ", magic, version, 16, sectors // 512, tracks, bat,
                       sectors, inuse, data_off, 0, 0)


def v1_image(clusters, tracks=8, bat_n=16):
    """A "WithoutFreeSpace" image: BAT entries in sectors; clusters maps
    guest cluster -> data, stored after the BAT in the order given."""
    cl = tracks * 512
    start = -(-(64 + 4 * bat_n) // cl) * tracks
    bat = [0] * bat_n
    body = b""
    for i, (g, data) in enumerate(clusters.items()):
        bat[g] = start + i * tracks
        body += data.ljust(cl, b"\0")
    h = header(bat_n * tracks, tracks, bat_n, magic=b"WithoutFreeSpace", data_off=start)
    h += b"".join(struct.pack("<I", e) for e in bat)
    return h.ljust(start * 512, b"\0") + body


def test_parallels_version1(tmp_path):
    c3, c0 = os.urandom(4096), b"\x42" * 4096
    (tmp_path / "v1.img").write_bytes(v1_image({3: c3, 0: c0}))
    expect = bytearray(16 * 4096)
    expect[0:4096], expect[3 * 4096:4 * 4096] = c0, c3
    same_contents(tmp_path, "v1.img", "parallels", expect=bytes(expect))
    same_inspection(tmp_path, "v1.img", "parallels")
    same_result(*both("check", "v1.img", cwd=tmp_path))
    for s in "qv":
        shutil.copy(tmp_path / "v1.img", tmp_path / ("w." + s))
    writes(tmp_path, "w", [(1, 5 * 4096, 100), (2, 4096 * 3 + 7, 5000), (3, 15 * 4096, 4096)])
    same_bytes(tmp_path, "w.q", "w.v")
    same_result(*both("check", "w.v", cwd=tmp_path))


# ---- hostile images ----

def write(d, img, name="bad.img"):
    (d / name).write_bytes(img)
    return name


def same_open_error(d, name, want):
    q, v = both("info", "-f", "parallels", name, cwd=d)
    same_result(q, v)
    assert q.returncode == 1 and want in q.stderr, q.stderr
    hostile_convert(d, name, "parallels")


def own_open_error(d, name, want, args=()):
    v = limited([VDISK_IMG, "info", *args, "-f", "parallels", name], d)
    assert v.returncode == 1 and want in v.stderr, v.stderr
    hostile_convert(d, name, "parallels")


def ok_image(**kw):
    return header(M, 8, 256, **kw) + bytes(4 * 256) + bytes(4096)


def test_parallels_hostile_bad_magic(tmp_path):
    same_open_error(tmp_path, write(tmp_path, ok_image(magic=b"WithFreeSpace!!!")),
                    "Image not in Parallels format")


def test_parallels_hostile_bad_version(tmp_path):
    same_open_error(tmp_path, write(tmp_path, ok_image(version=3)),
                    "Image not in Parallels format")


def test_parallels_hostile_zero_cluster(tmp_path):
    img = bytearray(ok_image())
    struct.pack_into("<I", img, 28, 0)
    same_open_error(tmp_path, write(tmp_path, bytes(img)),
                    "Invalid image: Zero sectors per track")


def test_parallels_hostile_huge_cluster(tmp_path):
    img = bytearray(ok_image())
    struct.pack_into("<I", img, 28, 1 << 30)
    same_open_error(tmp_path, write(tmp_path, bytes(img)), "Invalid image: Too big cluster")


def test_parallels_hostile_catalog_too_large(tmp_path):
    img = bytearray(ok_image())
    struct.pack_into("<I", img, 32, 0x7fffffff)
    same_open_error(tmp_path, write(tmp_path, bytes(img)), "Catalog too large")


def test_parallels_hostile_bat_past_eof(tmp_path):
    """50 million BAT entries in a small file (qemu-img reads zeroes)."""
    img = bytearray(ok_image())
    struct.pack_into("<I", img, 32, 50000000)
    own_open_error(tmp_path, write(tmp_path, bytes(img)),
                   "BAT (50000000 entries) extends beyond the end of the file")


def test_parallels_hostile_size_overflow(tmp_path):
    img = bytearray(ok_image())
    struct.pack_into("<Q", img, 36, (1 << 64) - 1)
    own_open_error(tmp_path, write(tmp_path, bytes(img)), "is too large")


def test_parallels_hostile_entry_past_eof(tmp_path):
    """A BAT entry far past the end of the file: zeroes, as in qemu-img,
    and check reports it."""
    img = bytearray(ok_image())
    struct.pack_into("<I", img, 64, 0xffffffff)
    name = write(tmp_path, bytes(img))
    same_contents(tmp_path, name, "parallels")
    same_result(*both("check", name, cwd=tmp_path))


def test_parallels_hostile_disk_past_bat(tmp_path):
    """A disk larger than its BAT covers reads zeroes past the BAT, as in
    qemu-img; writing there is an error (qemu-io aborts on an assertion)."""
    name = write(tmp_path, ok_image())
    same_inspection(tmp_path, name, "parallels")
    v = subprocess.run([VDISK_IO, "-f", "parallels", name, "write", "1", str(8 * M), "512"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert v.returncode == 1 and "past the BAT (256 entries)" in v.stderr, v.stderr


def test_parallels_hostile_overlapping_clusters(tmp_path):
    """Two BAT entries naming the same cluster: both read it, as in
    qemu-img; qemu-img 7.2's check finds nothing, vdisk reports the overlap
    (and cannot tell which cluster owns the data: -r leaves it)."""
    fresh(tmp_path)
    poke(tmp_path / "img.q", 64 + 4 * 20, "<I", struct.unpack_from(
        "<I", (tmp_path / "img.q").read_bytes(), 64)[0])
    same_contents(tmp_path, "img.q", "parallels")
    q, v = both("check", "img.q", cwd=tmp_path)
    assert q.returncode == 0
    assert v.returncode == 2 and "ERROR cluster 20 overlaps cluster 0" in v.stderr, v.stderr


def test_parallels_hostile_cluster_in_the_bat(tmp_path):
    """A BAT entry naming sector 1 (inside the BAT): reads return those
    bytes, as in qemu-img; writes there are refused (qemu-io would
    overwrite the BAT); check reports it."""
    img = bytearray(v1_image({1: b"\x11" * 4096}, bat_n=512))
    struct.pack_into("<I", img, 64 + 4 * 5, 1)
    name = write(tmp_path, bytes(img))
    same_contents(tmp_path, name, "parallels")
    v = subprocess.run([VDISK_IO, "-f", "parallels", name, "write", "1", str(5 * 4096), "512"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert v.returncode == 1 and "overlaps the header or the BAT" in v.stderr, v.stderr
    v = run(VDISK_IMG, "check", name, cwd=tmp_path)
    assert v.returncode == 2 and "ERROR cluster 5 overlaps the header or the BAT" in v.stderr


def test_parallels_hostile_truncated(tmp_path):
    fresh(tmp_path, size="1M")
    img = (tmp_path / "img.q").read_bytes()
    name = write(tmp_path, img[:len(img) - 100 * K])
    same_contents(tmp_path, name, "parallels")
    same_result(*both("check", name, cwd=tmp_path))


def test_parallels_untrusted_caps_the_bat(tmp_path):
    """A 20 MiB BAT opens, but not in untrusted mode (16 MiB cap)."""
    n = 5 * M
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.write(header(4096, 8, n, data_off=0))
        f.truncate(64 + 4 * n + 4096)
    v = limited([VDISK_IMG, "info", "-f", "parallels", "big.img"], tmp_path)
    assert v.returncode == 0, v.stderr
    own_open_error(tmp_path, "big.img", "parallels BAT", args=["--untrusted"])
