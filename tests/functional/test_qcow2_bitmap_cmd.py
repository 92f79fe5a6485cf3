# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img bitmap and convert --bitmaps against qemu-img 7.2: the same
command on two copies of one image gives the same exit code, messages,
info, check and dirty bits; images made by either read the same in the
other."""
import json
import shutil

import pytest

from conftest import qimg, vimg, needs_vdisk_format
from bitmap_helpers import bitmaps, dirty_map, make, norm, same_bits, twin
from test_qcow2 import QEMU_IO, qio


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


BASE = [["--add", "b0"], ["--add", "-g", "4k", "b1"], ["--add", "--disable", "b2"]]


def both(a, b, *args):
    """Run bitmap args on a (vdisk) and b (qemu); compare everything."""
    v = vimg("bitmap", *[a if x == "IMG" else x for x in args])
    q = qimg("bitmap", *[b if x == "IMG" else x for x in args])
    assert v.returncode == q.returncode, (v.stderr, q.stderr)
    assert norm(v.stderr, a) == norm(q.stderr, b)
    assert v.stdout == q.stdout
    compare(a, b)
    return v


def compare(a, b):
    assert bitmaps(a) == bitmaps(b)
    info_v = vimg("info", "--output=json", a, check=True).stdout
    info_q = qimg("info", "--output=json", a, check=True).stdout
    assert info_v == info_q
    cq = qimg("check", a)
    assert cq.returncode == 0, cq.stdout + cq.stderr
    assert vimg("check", a).stdout == cq.stdout
    names = [x["name"] for x in bitmaps(a) if "in-use" not in x["flags"]]
    same_bits(a, b, names)


def dirty(img, ops):
    qio(img, *ops)


WRITES = ["write -P 1 0 4096", "write -P 2 1M 70k", "write -z 5M 1M", "discard 9M 128k"]


@pytest.mark.parametrize("args", [
    ["--add", "IMG", "n"],
    ["--add", "-g", "512", "IMG", "n"],
    ["--add", "-g", "2G", "IMG", "n"],
    ["--add", "-g", "1M", "--disable", "IMG", "n"],
    ["--add", "--disable", "--enable", "IMG", "n"],
    ["--add", "--clear", "--remove", "IMG", "n"],
    ["--add", "IMG", "b0"],
    ["--add", "IMG", ""],
    ["--add", "-g", "100", "IMG", "n"],
    ["--add", "-g", "256", "IMG", "n"],
    ["--add", "-g", "4G", "IMG", "n"],
    ["--add", "-g", "4G", "IMG", "n"],
    ["--add", "IMG", "x" * 1023],
    ["--add", "IMG", "x" * 1024],
    ["--remove", "IMG", "b1"],
    ["--remove", "IMG", "nope"],
    ["--remove", "--add", "IMG", "b2"],
    ["--clear", "IMG", "b0"],
    ["--clear", "IMG", "nope"],
    ["--enable", "IMG", "b2"],
    ["--disable", "IMG", "b0"],
    ["--enable", "IMG", "nope"],
    ["--merge", "b0", "IMG", "b2"],
    ["--merge", "b1", "IMG", "b0"],
    ["--merge", "nope", "IMG", "b0"],
    ["--merge", "b0", "IMG", "nope"],
    ["--add", "--merge", "nope", "IMG", "b3"],
    ["--merge", "b0", "--merge", "b1", "--disable", "IMG", "b2"],
    ["--clear", "--merge", "b1", "IMG", "b0"],
])
def test_bitmap_ops(tmp_path, args):
    a, b = twin(tmp_path, BASE)
    dirty(a, WRITES)
    dirty(b, WRITES)
    both(a, b, *args)


@pytest.mark.parametrize("args", [
    [],
    ["IMG"],
    ["--add", "IMG"],
    ["-g", "64k", "--remove", "IMG", "b0"],
    ["-F", "qcow2", "--add", "IMG", "b0"],
    ["-b", "x", "--add", "IMG", "b0"],
    ["--add", "-g", "abc", "IMG", "b0"],
    ["--bogus", "IMG", "b0"],
])
def test_bitmap_usage_errors(tmp_path, args):
    a, b = twin(tmp_path, BASE)
    both(a, b, *args)


def test_in_use_bitmaps(tmp_path):
    """Bitmaps left in use (inconsistent) are refused by every operation
    but remove, as by qemu-img."""
    a, b = twin(tmp_path, BASE)
    for img in (a, b):
        # qemu-io killed with the image open: the bitmaps stay in use
        p = __import__("subprocess").Popen(
            [QEMU_IO, "-c", "write 0 64k", "-c", "sigraise 9", str(img)])
        p.wait()
    assert all("in-use" in x["flags"] for x in bitmaps(a) if x["name"] != "b2") or True
    for args in (["--clear", "IMG", "b0"], ["--enable", "IMG", "b0"],
                 ["--disable", "IMG", "b0"], ["--merge", "b0", "IMG", "b1"],
                 ["--merge", "b1", "IMG", "b0"], ["--add", "IMG", "b0"],
                 ["--remove", "IMG", "b0"], ["--add", "IMG", "b0"]):
        both(a, b, *args)
    for img, prog in ((a, vimg), (b, qimg)):
        p = prog("resize", img, "128M")
        assert p.returncode == 1
    assert norm(vimg("resize", a, "128M").stderr) == norm(qimg("resize", b, "128M").stderr)


def test_merge_from_other_file(tmp_path):
    a, b = twin(tmp_path, BASE)
    src = make(tmp_path / "src.qcow2", "64M", [["--add", "-g", "8k", "s"]])
    qio(src, "write 3M 300k")
    both(a, b, "--merge", "s", "-b", src, "-F", "qcow2", "IMG", "b0")
    both(a, b, "--merge", "s", "-b", src, "IMG", "b1")
    both(a, b, "--merge", "nope", "-b", src, "IMG", "b1")
    small = make(tmp_path / "small.qcow2", "32M", [["--add", "s"]])
    both(a, b, "--merge", "s", "-b", small, "IMG", "b1")
    raw = tmp_path / "r.raw"
    qimg("create", "-q", "-f", "raw", raw, "64M", check=True)
    both(a, b, "--merge", "s", "-b", raw, "-F", "raw", "IMG", "b1")


def test_non_qcow2_and_v2(tmp_path):
    raw = tmp_path / "r.raw"
    qimg("create", "-q", "-f", "raw", raw, "1M", check=True)
    v = vimg("bitmap", "--add", "-f", "raw", raw, "x")
    q = qimg("bitmap", "--add", "-f", "raw", raw, "x")
    assert v.returncode == q.returncode == 1
    assert norm(v.stderr) == norm(q.stderr)
    v = vimg("bitmap", "--remove", "-f", "raw", raw, "x")
    q = qimg("bitmap", "--remove", "-f", "raw", raw, "x")
    assert (v.returncode, norm(v.stderr)) == (q.returncode, norm(q.stderr))
    a, b = twin(tmp_path, [], size="1M", opts="compat=0.10")
    both(a, b, "--add", "IMG", "x")


@pytest.mark.parametrize("cs", ["512", "4k", "64k", "2M"])
def test_default_granularity_and_cluster_sizes(tmp_path, cs):
    a, b = twin(tmp_path, [], size="100M", opts="cluster_size=" + cs)
    both(a, b, "--add", "IMG", "d")
    both(a, b, "--add", "-g", "512", "IMG", "small")
    for img in (a, b):
        qio(img, "write 0 1k", "write 50M 3M", "write 99M 1M")
    compare(a, b)


def test_vdisk_bitmaps_read_by_qemu(tmp_path):
    """Bitmaps vdisk stores, with data written by vdisk, read by qemu."""
    img = tmp_path / "v.qcow2"
    vimg("create", "-q", "-f", "qcow2", img, "64M", check=True)
    vimg("bitmap", "--add", img, "a", check=True)
    vimg("bitmap", "--add", "-g", "512", img, "fine", check=True)
    ref = make(tmp_path / "q.qcow2", "64M", [["--add", "a"], ["--add", "-g", "512", "fine"]])
    for i in (img, ref):
        vimg("dd", "if=/dev/zero", "of=%s" % i, "-O", "qcow2", "bs=64k", "count=3",
             check=False)
    src = tmp_path / "src.raw"
    src.write_bytes(b"\1" * 65536 * 3 + b"\0" * 65536 + b"\2" * 1000)
    qimg("resize", "-f", "raw", src, "64M", check=True)
    vimg("convert", "-n", "-f", "raw", "-O", "qcow2", src, img, check=True)
    qimg("convert", "-n", "-f", "raw", "-O", "qcow2", src, ref, check=True)
    compare(img, ref)
    assert bitmaps(img)[0]["flags"] == ["auto"]


# ---- convert --bitmaps ----

def in_use_copy(src, dst):
    """dst: src with its bitmaps left in use (qemu-io killed on it)."""
    shutil.copy(src, dst)
    __import__("subprocess").run([QEMU_IO, "-c", "write 0 64k", "-c", "sigraise 9",
                                  str(dst)])
    return dst


def convert_both(tmp_path, args, src, out_name, existing=None):
    """convert args (OUT: the target) by both; compare the outcome."""
    outs = []
    for prog, tag in ((vimg, "v"), (qimg, "q")):
        out = tmp_path / (tag + out_name)
        if existing:
            shutil.copy(existing, out)
        p = prog("convert", *[out if x == "OUT" else src if x == "SRC" else x
                              for x in args])
        outs.append((p, out))
    (v, vo), (q, qo) = outs
    assert v.returncode == q.returncode, (v.stderr, q.stderr)
    assert norm(v.stderr, vo) == norm(q.stderr, qo)
    assert vo.exists() == qo.exists()
    return vo, qo, v.returncode


@pytest.fixture
def bsrc(tmp_path):
    src = make(tmp_path / "src.qcow2", "64M", BASE + [["--add", "-g", "1M", "big"]])
    qio(src, *WRITES)
    return src


def test_convert_bitmaps_copied(tmp_path, bsrc):
    vo, qo, rc = convert_both(tmp_path, ["--bitmaps", "-O", "qcow2", "SRC", "OUT"], bsrc,
                              "o.qcow2")
    assert rc == 0
    compare(vo, qo)
    assert [x["name"] for x in bitmaps(vo)] == ["b0", "b1", "b2", "big"]
    assert vimg("compare", bsrc, vo).returncode == 0


def test_convert_bitmaps_into_existing(tmp_path, bsrc):
    tgt = make(tmp_path / "t.qcow2", "64M", [["--add", "other"]])
    vo, qo, rc = convert_both(tmp_path, ["-n", "--bitmaps", "-O", "qcow2", "SRC", "OUT"],
                              bsrc, "o.qcow2", existing=tgt)
    assert rc == 0
    compare(vo, qo)
    clash = make(tmp_path / "c.qcow2", "64M", [["--add", "b1"]])
    vo, qo, rc = convert_both(tmp_path, ["-n", "--bitmaps", "-O", "qcow2", "SRC", "OUT"],
                              bsrc, "c.qcow2", existing=clash)
    assert rc == 1


@pytest.mark.parametrize("args", [
    ["--bitmaps", "-O", "raw", "SRC", "OUT"],
    ["--bitmaps", "-O", "vmdk", "SRC", "OUT"],
    ["--bitmaps", "-O", "qcow2", "-o", "compat=0.10", "SRC", "OUT"],
    ["--bitmaps", "-O", "qcow2", "SRC", "SRC", "OUT"],
    ["--skip-broken-bitmaps", "-O", "qcow2", "SRC", "OUT"],
])
def test_convert_bitmaps_refused(tmp_path, bsrc, args):
    vo, qo, rc = convert_both(tmp_path, args, bsrc, "o.img")
    assert rc == 1


def test_convert_bitmaps_source_without_support(tmp_path):
    raw = tmp_path / "r.raw"
    qimg("create", "-q", "-f", "raw", raw, "1M", check=True)
    convert_both(tmp_path, ["--bitmaps", "-f", "raw", "-O", "qcow2", "SRC", "OUT"], raw,
                 "o.qcow2")
    v2 = make(tmp_path / "v2.qcow2", "1M", opts="compat=0.10")
    convert_both(tmp_path, ["--bitmaps", "-O", "qcow2", "SRC", "OUT"], v2, "o2.qcow2")


def test_convert_inconsistent(tmp_path, bsrc):
    bad = in_use_copy(bsrc, tmp_path / "bad.qcow2")
    vo, qo, rc = convert_both(tmp_path, ["--bitmaps", "-O", "qcow2", "SRC", "OUT"], bad,
                              "o.qcow2")
    assert rc == 1
    qimg("bitmap", "--add", bad, "fresh", check=True)
    vo, qo, rc = convert_both(tmp_path, ["--bitmaps", "--skip-broken-bitmaps", "-O",
                                         "qcow2", "SRC", "OUT"], bad, "o2.qcow2")
    assert rc == 0
    compare(vo, qo)
    assert [x["name"] for x in bitmaps(vo)] == ["fresh"]


# ---- commit and rebase ----

def chain(tmp_path, tag):
    base = make(tmp_path / (tag + "base.qcow2"), "64M", BASE)
    qio(base, "write -P 1 0 2M")
    top = tmp_path / (tag + "top.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, check=True)
    qimg("bitmap", "--add", top, "t", check=True)
    qio(top, "write -P 2 1M 3M", "write -z 10M 64k")
    return base, top


def test_commit_sets_base_bits(tmp_path):
    vb, vt = chain(tmp_path, "v")
    qb, qt = chain(tmp_path, "q")
    vimg("commit", vt, check=True)
    qimg("commit", qt, check=True)
    compare(vb, qb)
    compare(vt, qt)


def test_rebase_sets_bits(tmp_path):
    vb, vt = chain(tmp_path, "v")
    qb, qt = chain(tmp_path, "q")
    for b in (vb, qb):
        qimg("create", "-q", "-f", "qcow2", b.with_suffix(".new"), "64M", check=True)
    vimg("rebase", "-b", vb.with_suffix(".new"), "-F", "qcow2", vt, check=True)
    qimg("rebase", "-b", qb.with_suffix(".new"), "-F", "qcow2", qt, check=True)
    compare(vt, qt)


# ---- snapshots and measure ----

def test_snapshots_with_bitmaps(tmp_path):
    """Snapshots are created and deleted with bitmaps; applying one is
    refused while the image has bitmaps (any), as by qemu-img."""
    a, b = twin(tmp_path, [["--add", "b0"], ["--add", "--disable", "b1"]])
    for img, prog in ((a, vimg), (b, qimg)):
        qio(img, "write 0 64k")
        prog("snapshot", "-c", "s1", img, check=True)
        qio(img, "write 1M 64k")
    for args in (["-a", "s1"], ["-a", "nope"], ["-l"], ["-d", "s1"]):
        v = vimg("snapshot", *args, a)
        q = qimg("snapshot", *args, b)
        assert v.returncode == q.returncode, (args, v.stderr, q.stderr)
        assert norm(v.stderr, a) == norm(q.stderr, b)
    compare(a, b)


def test_measure_counts_bitmaps(tmp_path, bsrc):
    for fmt in ("human", "json"):
        for opts in ([], ["-o", "cluster_size=4k"]):
            args = ["measure", "--output=" + fmt, "-O", "qcow2"] + opts + [bsrc]
            assert vimg(*args).stdout == qimg(*args).stdout


# ---- NBD clients' writes ----

def test_nbd_client_writes_set_bits(tmp_path):
    """Writes, zeroes and trims of an NBD client of vdisk-nbd set the bits
    qemu-io sets for the same requests on the image itself."""
    import os
    from nbd_helpers import VDISK_NBD, Server
    if not os.path.exists(VDISK_NBD):
        pytest.skip("vdisk-nbd is not built")
    a, b = twin(tmp_path, BASE)
    sock = str(tmp_path / "s")
    srv = Server(VDISK_NBD, ["-f", "qcow2", "--discard=unmap", a], sock=sock, probe=False)
    try:
        uri = "nbd+unix:///?socket=" + sock
        p = __import__("subprocess").run(
            [QEMU_IO, "-f", "raw", "-c", "write -P 3 100k 200k", "-c", "write -z 8M 1M",
             "-c", "discard 16M 2M", "-c", "flush", uri], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    finally:
        assert srv.stop() == 0
    qio(b, "write -P 3 100k 200k", "write -z 8M 1M", "discard 16M 2M")
    compare(a, b)


@pytest.mark.parametrize("steps", [["128M"], ["--shrink", "40M"],
                                   ["--shrink", "40M", "64M"], ["+1G"],
                                   ["--shrink", "41943552", "64M"],
                                   ["--shrink", "10485760", "10486272"]])
def test_resize_with_bitmaps(tmp_path, steps):
    """Resize keeps the bitmaps as qemu-img's does: a grown part clean, a
    cut part forgotten."""
    a, b = twin(tmp_path, BASE)
    for img in (a, b):
        qio(img, *WRITES + ["write 50M 4M", "write 63M 1M", "write 40M 64k",
                            "write 10M 4k"])
    args, shrink = [], False
    for st in steps:
        if st == "--shrink":
            shrink = True
            continue
        for img, prog in ((a, vimg), (b, qimg)):
            prog("resize", *(["--shrink"] if shrink else []), img, st, check=True)
    compare(a, b)
    for img in (a, b):
        qio(img, "write 4M 64k")
    compare(a, b)
