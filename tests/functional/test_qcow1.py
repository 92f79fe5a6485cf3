# SPDX-License-Identifier: BSD-3-Clause
"""qcow (version 1) against qemu-img and qemu-io 7.2: create lays out
qemu-img's bytes; images qemu writes (plain, over a backing file,
compressed by convert -c) read the same in vdisk, with the same info and
map; images vdisk writes read the same in qemu-img; check, resize and
measure are refused as qemu-img refuses them.  AES-encrypted images are
read, written and created with their key.  Hostile images come from qcow1_gen.py."""
import os
import shutil
import subprocess

import pytest

from conftest import BUILD, QEMU_IMG, VDISK_IMG, needs_vdisk_format
from qcow1_gen import compressed_entry, deflate, image, with_l2
from roformat_helpers import (SANITIZED, both, hostile_convert, run, same_contents,
                              same_inspection, same_result)

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
K, M = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow")


def qemu_io(d, name, cmds, fmt="qcow"):
    q = subprocess.run([QEMU_IO, "-f", fmt] + sum((["-c", c] for c in cmds), []) + [name],
                       cwd=d, capture_output=True, text=True)
    assert q.returncode == 0 and "error" not in q.stdout.lower(), q.stdout + q.stderr


def vdisk_io(d, name, cmds):
    args = []
    for c in cmds:
        args += ["--"] + c.split()
    v = subprocess.run([VDISK_IO, "-f", "qcow", name] + args[1:], cwd=d,
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr


def pattern_file(path, size, pieces):
    """A raw file of size bytes with (byte, offset, length) pieces."""
    b = bytearray(size)
    for byte, off, ln in pieces:
        b[off:off + ln] = bytes([byte]) * ln
    path.write_bytes(bytes(b))
    return bytes(b)


CREATE = [("1M", False), ("100M", False), ("10000001", False), ("3G", False),
          ("10M", True), ("1G", True)]


@pytest.mark.parametrize("size,backing", CREATE)
def test_qcow1_create_as_qemu(tmp_path, size, backing):
    opts = []
    if backing:
        run(QEMU_IMG, "create", "-q", "-f", "raw", "base.raw", "4M", cwd=tmp_path)
        opts = ["-b", "base.raw", "-F", "raw"]
    q, v = both("create", "-f", "qcow", *opts, "img", size, cwd=tmp_path)
    assert q.returncode == 0
    os.rename(tmp_path / "img", tmp_path / "img.v")
    run(QEMU_IMG, "create", "-q", "-f", "qcow", *opts, "img", size, cwd=tmp_path)
    same_result(q, v)
    assert (tmp_path / "img").read_bytes() == (tmp_path / "img.v").read_bytes()
    same_inspection(tmp_path, "img.v", "qcow")


def test_qcow1_create_options_as_qemu(tmp_path):
    same_result(*both("create", "-f", "qcow", "-o", "help", cwd=tmp_path))
    # no size and no backing file; a backing file gives the size
    same_result(*both("create", "-f", "qcow", "x.img", cwd=tmp_path))
    run(QEMU_IMG, "create", "-q", "-f", "raw", "base.raw", "3M", cwd=tmp_path)
    for name in ("q.img", "v.img"):
        prog = QEMU_IMG if name == "q.img" else VDISK_IMG
        r = run(prog, "create", "-f", "qcow", "-b", "base.raw", "-F", "raw", name,
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "q.img").read_bytes() == (tmp_path / "v.img").read_bytes()
    # backing_fmt missing or wrong; -u with a missing backing file
    for args in (["-b", "base.raw", "n.img"], ["-b", "base.raw", "-F", "qcow2", "n.img"],
                 ["-u", "-b", "nonexist", "-F", "raw", "n.img", "1M"]):
        same_result(*both("create", "-f", "qcow", *args, cwd=tmp_path))
        same_result(*both("info", "n.img", cwd=tmp_path))
        if (tmp_path / "n.img").exists():
            (tmp_path / "n.img").unlink()


def test_qcow1_create_too_large(tmp_path):
    """qemu-img 7.2 creates qcow images it cannot open ("Image too large",
    an L1 table of 4 GiB and more: 1P, 4E); vdisk refuses to create them.
    (Only 4E goes through qemu-img here: it writes a 1P image's 4 GiB L1
    table 512 bytes at a time.)"""
    q = run(QEMU_IMG, "create", "-q", "-f", "qcow", "q.img", "4E", cwd=tmp_path)
    assert q.returncode == 0
    assert run(QEMU_IMG, "info", "q.img", cwd=tmp_path).returncode == 1
    for size in ("1P", "4E", "65T"):
        v = run(VDISK_IMG, "create", "-q", "-f", "qcow", "v.img", size, cwd=tmp_path)
        assert v.returncode == 1 and "is too large" in v.stderr, v.stderr
        assert not (tmp_path / "v.img").exists()
    v = run(VDISK_IMG, "create", "-q", "-f", "qcow", "v.img", "16T", cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    same_result(*both("info", "--output=json", "v.img", cwd=tmp_path))


WRITES = [["write -P 0x11 0 4k", "write -P 0x22 9k 3000", "write -P 0x33 3M 1M",
           "write -P 0x44 5000 100"],
          ["write -P 0x55 2M 512", "write -P 0x66 8M 64k", "write -z 100k 64k",
           "write -P 0x77 1M 300k"]]


def expected(size, base, cmds):
    """The guest bytes after qemu-io commands cmds over base bytes."""
    b = bytearray(base.ljust(size, b"\0")[:size])
    for c in cmds:
        w = c.split()
        z = w[1] == "-z"
        byte = 0 if z else int(w[2], 0)
        off, ln = (parse(w[2]), parse(w[3])) if z else (parse(w[3]), parse(w[4]))
        b[off:off + ln] = bytes([byte]) * ln
    return bytes(b)


def parse(s):
    mult = {"k": K, "M": M}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def vdisk_cmds(cmds):
    out = []
    for c in cmds:
        w = c.split()
        if w[1] == "-z":
            out.append("zero %d %d" % (parse(w[2]), parse(w[3])))
        else:
            out.append("write %d %d %d" % (int(w[2], 0), parse(w[3]), parse(w[4])))
    return out


@pytest.mark.parametrize("backing", [False, True])
@pytest.mark.parametrize("which", range(len(WRITES)))
def test_qcow1_qemu_and_vdisk_writes_agree(tmp_path, backing, which):
    """The same writes through qemu-io and vdisk-io give the same bytes on
    disk and read the same in both programs; info and map of the image
    qemu wrote are qemu-img's."""
    size = 12 * M
    base = b""
    opts = []
    if backing:
        base = pattern_file(tmp_path / "base.raw", 10 * M,
                            [(0xa1, 0, 3 * M), (0xb2, 7 * M, 3 * M)])
        opts = ["-b", "base.raw", "-F", "raw"]
    for name in ("q.img", "v.img"):
        run(QEMU_IMG, "create", "-q", "-f", "qcow", *opts, name, str(size), cwd=tmp_path)
    cmds = WRITES[which]
    qemu_io(tmp_path, "q.img", cmds)
    vdisk_io(tmp_path, "v.img", vdisk_cmds(cmds))
    want = expected(size, base, cmds)
    same_contents(tmp_path, "q.img", "qcow", expect=want)
    same_contents(tmp_path, "v.img", "qcow", expect=want)
    same_inspection(tmp_path, "q.img", "qcow")
    same_result(*both("compare", "q.img", "v.img", cwd=tmp_path))
    # new L2 tables and clusters land where qemu puts them
    assert (tmp_path / "q.img").read_bytes() == (tmp_path / "v.img").read_bytes()
    r = run(QEMU_IMG, "compare", "-f", "qcow", "-F", "raw", "v.img", "v.raw", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(QEMU_IMG, "info", "--output=json", "v.img", cwd=tmp_path)
    assert r.returncode == 0 and '"format": "qcow"' in r.stdout


def test_qcow1_compressed_clusters_read(tmp_path):
    """convert -c -O qcow: qemu-img 7.2 exits 1 after writing a complete
    image (a defect of the reference: the image itself is right); vdisk
    reads its compressed clusters, and a write into one keeps the rest of
    the cluster."""
    data = pattern_file(tmp_path / "src.raw", 4 * M,
                        [(0x5a, 0, 1 * M), (0x11, 2 * M + 100, 5000)])
    data = bytearray(data)
    data[3 * M:3 * M + 64 * K] = os.urandom(64 * K)
    (tmp_path / "src.raw").write_bytes(bytes(data))
    q = run(QEMU_IMG, "convert", "-c", "-O", "qcow", "src.raw", "c.img", cwd=tmp_path)
    assert q.returncode in (0, 1), q.stderr
    assert run(QEMU_IMG, "compare", "src.raw", "c.img", cwd=tmp_path).returncode == 0
    same_contents(tmp_path, "c.img", "qcow", expect=bytes(data))
    for args in (["info", "c.img"], ["info", "--output=json", "c.img"],
                 ["map", "c.img"], ["map", "--output=json", "c.img"]):
        same_result(*both(*args, cwd=tmp_path))
    vdisk_io(tmp_path, "c.img", ["write 119 4096 512", "write 120 2097152 200"])
    data[4096:4096 + 512] = bytes([119]) * 512
    data[2 * M:2 * M + 200] = bytes([120]) * 200
    same_contents(tmp_path, "c.img", "qcow", expect=bytes(data))


def test_qcow1_convert_both_ways(tmp_path):
    """vdisk converts raw to qcow (plain and -c) and back; qemu-img reads
    both images as the source, and vdisk's -c exits 0."""
    data = pattern_file(tmp_path / "src.raw", 6 * M + 512,
                        [(0x42, 0, 1 * M), (0x43, 5 * M + 7, 9000)])
    data = bytearray(data)
    data[2 * M:2 * M + 128 * K] = os.urandom(128 * K)
    (tmp_path / "src.raw").write_bytes(bytes(data))
    for extra, name in (([], "p.img"), (["-c"], "c.img")):
        v = run(VDISK_IMG, "convert", *extra, "-O", "qcow", "src.raw", name, cwd=tmp_path)
        assert v.returncode == 0, v.stderr
        r = run(QEMU_IMG, "compare", "-f", "qcow", "-F", "raw", name, "src.raw",
                cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        v = run(VDISK_IMG, "convert", "-O", "raw", name, name + ".raw", cwd=tmp_path)
        assert v.returncode == 0, v.stderr
        assert (tmp_path / (name + ".raw")).read_bytes() == bytes(data)
    assert (tmp_path / "c.img").stat().st_size < (tmp_path / "p.img").stat().st_size
    same_result(*both("map", "--output=json", "p.img", cwd=tmp_path))


def test_qcow1_compressed_writes(tmp_path):
    """vdisk's compressed writes (a new cluster, over a compressed one,
    over a plain one, one that does not shrink, the tail of the image)
    read the same through qemu-img and qemu-io's compressed writes."""
    size = 1 * M + 1536
    run(QEMU_IMG, "create", "-q", "-f", "qcow", "v.img", str(size), cwd=tmp_path)
    vdisk_io(tmp_path, "v.img", ["write 65 40960 4096", "compress 49 0 4096",
                                 "compress 50 0 4096", "compress 51 40960 4096",
                                 "compress 52 8192 4096", "compress 53 1048576 1536"])
    run(QEMU_IMG, "create", "-q", "-f", "qcow", "q.img", str(size), cwd=tmp_path)
    qemu_io(tmp_path, "q.img", ["write -c -P 52 8192 4096", "write -P 50 0 4096",
                                "write -P 51 40960 4096", "write -c -P 53 1048576 1536"])
    same_result(*both("compare", "v.img", "q.img", cwd=tmp_path))
    assert run(QEMU_IMG, "compare", "v.img", "q.img", cwd=tmp_path).returncode == 0
    same_result(*both("map", "--output=json", "v.img", cwd=tmp_path))
    same_result(*both("map", "--output=json", "q.img", cwd=tmp_path))


def test_qcow1_commit_empties_the_overlay(tmp_path):
    base = pattern_file(tmp_path / "base.raw", 4 * M, [(0x10, 0, 4 * M)])
    for d in ("q", "v"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "base.raw").write_bytes(base)
        run(QEMU_IMG, "create", "-q", "-f", "qcow", "-b", "base.raw", "-F", "raw", "o.img",
            cwd=tmp_path / d)
        qemu_io(tmp_path / d, "o.img", ["write -P 0x99 1000 70000"])
    q = run(QEMU_IMG, "commit", "o.img", cwd=tmp_path / "q")
    v = run(VDISK_IMG, "commit", "o.img", cwd=tmp_path / "v")
    same_result(q, v)
    for f in ("base.raw",):
        assert (tmp_path / "q" / f).read_bytes() == (tmp_path / "v" / f).read_bytes()
    same_result(*both("map", "--output=json", "o.img", cwd=tmp_path / "v"))
    r = run(QEMU_IMG, "map", "--output=json", "o.img", cwd=tmp_path / "q")
    assert r.stdout == run(VDISK_IMG, "map", "--output=json", "o.img",
                           cwd=tmp_path / "v").stdout


def test_qcow1_refusals_as_qemu(tmp_path):
    """check, resize and measure are not supported for qcow, as qemu-img."""
    run(QEMU_IMG, "create", "-q", "-f", "qcow", "img", "10M", cwd=tmp_path)
    before = (tmp_path / "img").read_bytes()
    for args in (["check", "img"], ["check", "--output=json", "img"],
                 ["check", "-r", "all", "img"], ["resize", "img", "20M"],
                 ["resize", "img", "5M"], ["measure", "-O", "qcow", "--size", "1G"],
                 ["measure", "-O", "qcow", "img"], ["snapshot", "-c", "s", "img"],
                 ["amend", "-o", "size=20M", "img"], ["rebase", "-u", "-b", "x", "img"],
                 ["rebase", "-b", "", "img"]):
        q, v = both(*args, cwd=tmp_path)
        same_result(q, v)
        assert q.returncode != 0
    assert (tmp_path / "img").read_bytes() == before


def test_qcow1_encrypted_read(tmp_path):
    """An AES-encrypted image (crypt_method 1) made and written by qemu:
    info (no key needed), map and contents with the key as qemu-img's;
    without the key, qemu-img's message."""
    (tmp_path / "key").write_text("passw0rd")
    obj = ["--object", "secret,id=s0,file=key"]
    opts = "driver=qcow,file.filename=enc.img,encrypt.key-secret=s0"
    q = run(QEMU_IMG, "create", "-q", "-f", "qcow", *obj,
            "-o", "encrypt.format=aes,encrypt.key-secret=s0", "enc.img", "4M", cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    q = subprocess.run([QEMU_IO, *obj, "--image-opts", opts, "-c", "write -P 0x5a 4096 70000",
                        "-c", "write -P 0x33 3M 512"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert q.returncode == 0, q.stderr
    for args in (["info", "enc.img"], ["info", "--output=json", "enc.img"],
                 ["map", "enc.img"], ["convert", "-O", "raw", "enc.img", "x.raw"],
                 ["map", "--output=json", *obj, "--image-opts", opts],
                 ["map", *obj, "--image-opts", opts]):
        same_result(*both(*args, cwd=tmp_path))
    want = bytearray(4 * M)
    want[4096:4096 + 70000] = b"\x5a" * 70000
    want[3 * M:3 * M + 512] = b"\x33" * 512
    for prog, out in ((QEMU_IMG, "q.raw"), (VDISK_IMG, "v.raw")):
        r = run(prog, "convert", *obj, "--image-opts", opts, "-O", "raw", out, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / out).read_bytes() == bytes(want)


def test_qcow1_encrypted_create_and_write(tmp_path):
    """vdisk creates AES-encrypted images with qemu-img's bytes and options'
    checks; what vdisk writes (convert into one, then writes over its
    clusters and into new partial clusters) qemu reads with the key."""
    (tmp_path / "key").write_text("passw0rd")
    obj = ["--object", "secret,id=s0,file=key"]
    for o in ("encrypt.format=aes", "encryption=on,encrypt.key-secret=s0",
              "encrypt.format=luks,encrypt.key-secret=s0",
              "encrypt.format=aes,encrypt.key-secret=nope", "encrypt.key-secret=s0"):
        q, v = both("create", "-f", "qcow", *obj, "-o", o, "n.img", "3M", cwd=tmp_path)
        same_result(q, v)
        if q.returncode == 0:
            os.rename(tmp_path / "n.img", tmp_path / "v.img")
            run(QEMU_IMG, "create", "-q", "-f", "qcow", *obj, "-o", o, "n.img", "3M",
                cwd=tmp_path)
            assert (tmp_path / "n.img").read_bytes() == (tmp_path / "v.img").read_bytes()
    data = pattern_file(tmp_path / "src.raw", 3 * M, [(0x21, 0, 5000), (0x22, 1 * M, 70000)])
    aes = "encrypt.format=aes,encrypt.key-secret=s0"
    v = run(VDISK_IMG, "convert", *obj, "-O", "qcow", "-o", aes, "src.raw", "e.img",
            cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    opts = "driver=qcow,file.filename=e.img,encrypt.key-secret=s0"
    assert run(QEMU_IMG, "compare", *obj, "--image-opts", opts,
               "driver=raw,file.filename=src.raw", cwd=tmp_path).returncode == 0
    # over its clusters and into new ones, in place of the first image
    pattern_file(tmp_path / "src2.raw", 3 * M, [(0x23, 0, 4096), (0x24, 2 * M + 512, 1024)])
    v = run(VDISK_IMG, "convert", "-n", *obj, "--target-image-opts", "src2.raw", opts,
            cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    q = subprocess.run([QEMU_IO, *obj, "--image-opts", opts, "-c", "read -P 0x23 0 4096",
                        "-c", "read -P 0 4096 1M", "-c", "read -P 0x24 2097664 1024",
                        "-c", "read -P 0 2098688 512"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert q.returncode == 0 and "fail" not in q.stdout.lower(), q.stdout + q.stderr
    v = run(VDISK_IMG, "convert", "-c", *obj, "-O", "qcow", "-o", aes, "src.raw", "c.img",
            cwd=tmp_path)
    assert v.returncode == 1


def test_qcow1_untrusted_refuses_the_backing_file(tmp_path):
    (tmp_path / "secret.raw").write_bytes(b"top secret".ljust(4096, b"\0"))
    run(QEMU_IMG, "create", "-q", "-f", "qcow", "-b", "secret.raw", "-F", "raw", "o.img",
        cwd=tmp_path)
    v = run(VDISK_IMG, "convert", "-O", "raw", "o.img", "out.raw", cwd=tmp_path)
    assert v.returncode == 0 and (tmp_path / "out.raw").read_bytes()[:10] == b"top secret"
    (tmp_path / "out.raw").unlink()
    v = run(VDISK_IMG, "--untrusted", "convert", "-O", "raw", "o.img", "out.raw",
            cwd=tmp_path)
    assert v.returncode == 1 and "refused in untrusted mode" in v.stderr, v.stderr
    assert not (tmp_path / "out.raw").exists()


# Hostile images qemu-img refuses: vdisk refuses them with its message.
REFUSED_AS_QEMU = {
    "cluster-bits-small": dict(cluster_bits=8),
    "cluster-bits-large": dict(cluster_bits=17),
    "l2-bits-small": dict(l2_bits=5),
    "l2-bits-large": dict(l2_bits=14),
    "size-zero": dict(size=0),
    "size-overflow": dict(size=(1 << 64) - 1, l1_entries=1),
    "size-huge-l1": dict(size=1 << 60, cluster_bits=16, l2_bits=13, l1_entries=1),
    "crypt-method-unknown": dict(crypt=2),
    "backing-name-too-long": dict(backing_off=48, backing_len=2000),
}


@pytest.mark.parametrize("kind", sorted(REFUSED_AS_QEMU))
def test_qcow1_hostile_refused_as_qemu(tmp_path, kind):
    (tmp_path / "h.img").write_bytes(image(**REFUSED_AS_QEMU[kind]))
    for args in (["info", "h.img"], ["convert", "-O", "raw", "h.img", "o.raw"]):
        q, v = both(*args, cwd=tmp_path)
        same_result(q, v)
        assert q.returncode == 1
    assert hostile_convert(tmp_path, "h.img", "qcow").returncode == 1


@pytest.mark.parametrize("keep", [47, 48, 600])
def test_qcow1_probe_as_qemu(tmp_path, keep):
    """A whole header with the magic and version 1 probes as qcow; a file
    cut inside the header probes as raw, as in QEMU."""
    (tmp_path / "h.img").write_bytes(image(size=M)[:keep])
    for args in (["info", "h.img"], ["info", "--output=json", "h.img"]):
        same_result(*both(*args, cwd=tmp_path))


@pytest.mark.parametrize("version", [0, 2, 5])
def test_qcow1_hostile_version(tmp_path, version):
    (tmp_path / "h.img").write_bytes(image(version=version))
    same_result(*both("info", "-f", "qcow", "h.img", cwd=tmp_path))


# Offsets past the end of the file: QEMU 7.2 reads zeroes there (or, for
# the backing file name, an empty name); vdisk refuses them with a message
# naming the table and offset.
PAST_EOF = {
    "l1-table": (image(l1_offset=1 << 40), "L1 table at 0x10000000000"),
    "backing-name": (image(backing_off=1 << 40, backing_len=10), "backing file name at"),
    "l2-table": (image(l1=[1 << 40]), None),
    "data-cluster": (with_l2([1 << 40]), None),
    "compressed-cluster": (with_l2([compressed_entry(1 << 40, 100)]), None),
}


@pytest.mark.parametrize("kind", sorted(PAST_EOF))
def test_qcow1_hostile_past_eof(tmp_path, kind):
    data, msg = PAST_EOF[kind]
    (tmp_path / "h.img").write_bytes(data)
    v = hostile_convert(tmp_path, "h.img", "qcow")
    assert v.returncode == 1 and v.stderr.count("\n") == 1, v.stderr
    if msg:
        assert msg in v.stderr and "beyond the end of the file" in v.stderr
    if msg is None:
        v = run(VDISK_IMG, "info", "h.img", cwd=tmp_path)
        assert v.returncode == 0     # the header is sound; the table is not
        v = run(VDISK_IMG, "compare", "-f", "qcow", "h.img", "h.img", cwd=tmp_path)
        assert v.returncode != 0


@pytest.mark.parametrize("size", [2, 1000, 3 * M + 7])
def test_qcow1_size_not_whole_sectors(tmp_path, size):
    """The virtual size is the header's size rounded down to sectors."""
    (tmp_path / "h.img").write_bytes(image(size=size))
    same_inspection(tmp_path, "h.img", "qcow")
    same_result(*both("convert", "-O", "raw", "h.img", "o.raw", cwd=tmp_path))


def test_qcow1_hostile_l1_over_the_cap(tmp_path):
    """A 256 TiB image's 1 GiB L1 table (within QEMU's limit) is over
    vdisk's cap: refused before anything is allocated; a smaller one in an
    untrusted image is over the untrusted cap."""
    (tmp_path / "h.img").write_bytes(image(size=1 << 48, l1_entries=1))
    v = hostile_convert(tmp_path, "h.img", "qcow")
    assert v.returncode == 1 and "L1 table of 1073741824 bytes is over vdisk's limit" \
        in v.stderr, v.stderr
    (tmp_path / "u.img").write_bytes(image(size=1 << 44, l1_entries=1))
    v = run(VDISK_IMG, "info", "--untrusted", "u.img", cwd=tmp_path)
    assert v.returncode == 1 and "qcow L1 table" in v.stderr, v.stderr


def test_qcow1_hostile_compressed_bomb(tmp_path):
    """A compressed cluster that inflates to 16 MiB: reading it stops at
    one cluster (as QEMU: the cluster reads the first 4 KiB)."""
    bomb = deflate(bytes(16 * M))[:4095]
    (tmp_path / "h.img").write_bytes(with_l2([compressed_entry(8192, len(bomb))], bomb))
    v = hostile_convert(tmp_path, "h.img", "qcow")
    assert v.returncode == 0, v.stderr
    same_contents(tmp_path, "h.img", "qcow", expect=bytes(M))


def test_qcow1_hostile_compressed_short(tmp_path):
    """A compressed cluster that inflates to less than a cluster is an I/O
    error in both."""
    short = deflate(b"\x01" * 100)
    (tmp_path / "h.img").write_bytes(with_l2([compressed_entry(8192, len(short))], short))
    same_result(*both("convert", "-O", "raw", "h.img", "o.raw", cwd=tmp_path))
    assert hostile_convert(tmp_path, "h.img", "qcow").returncode == 1


def test_qcow1_hostile_garbage_stream(tmp_path):
    junk = bytes((i * 7 + 3) & 0xff for i in range(3000))
    (tmp_path / "h.img").write_bytes(with_l2([compressed_entry(8192, len(junk))], junk))
    assert hostile_convert(tmp_path, "h.img", "qcow").returncode == 1


def test_qcow1_hostile_writes(tmp_path):
    """Writes into an image whose tables point past the end of the file
    fail cleanly, the image unchanged."""
    for i, data in enumerate((image(l1=[1 << 40]), with_l2([1 << 40]))):
        name = "h%d.img" % i
        (tmp_path / name).write_bytes(data)
        v = subprocess.run([VDISK_IO, "-f", "qcow", name, "write", "1", "0", "4096"],
                           cwd=tmp_path, capture_output=True, text=True)
        assert v.returncode == 1 and "beyond the end of the file" in v.stderr, v.stderr
        assert (tmp_path / name).read_bytes() == data
