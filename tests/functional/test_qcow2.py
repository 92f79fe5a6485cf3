# SPDX-License-Identifier: BSD-3-Clause
"""qcow2 driver against qemu-img/qemu-io 7.2: images vdisk writes pass
qemu-img check and compare identical with the same operations done by
qemu-io; images qemu writes read identically in vdisk; create, info, map
and measure print what qemu-img prints; fault injection leaves a clean
image."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import BUILD, QEMU_IMG, qimg, run, vimg, needs_vdisk_format

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
MB = 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def qio(img, *cmds):
    args = [QEMU_IO, "-d", "unmap"]
    for c in cmds:
        args += ["-c", c]
    run(args + [str(img)], check=True)


def vio(img, *cmds, check=True):
    args = [VDISK_IO, str(img)]
    for c in cmds:
        args += c.split() + ["--"]
    return run(args, check=check)


def check_clean(img):
    p = qimg("check", img)
    assert p.returncode == 0, p.stdout + p.stderr


# The same operations for qemu-io and vdisk-io.
OPS = [
    ("write -P 0x11 1000 70000", "write 0x11 1000 70000"),
    ("write -z 131072 65536", "zero 131072 65536"),
    ("write -z -u 200000 300000", "zero 200000 300000 unmap"),
    ("discard 1048576 131072", "discard 1048576 131072"),
    ("write -c -P 0x22 2097152 131072", "compress 0x22 2097152 131072"),
    ("write -P 0x33 2100000 5000", "write 0x33 2100000 5000"),
    ("write -P 0x44 3145728 4096", "write 0x44 3145728 4096"),
    ("truncate 6291456", "truncate 6291456"),
    ("write -P 0x55 5000000 1000000", "write 0x55 5000000 1000000"),
]

MATRIX = [
    "compat=1.1", "compat=0.10", "cluster_size=512", "cluster_size=4k,refcount_bits=1",
    "cluster_size=2M", "refcount_bits=64", "refcount_bits=2,cluster_size=1k",
    "extended_l2=on", "extended_l2=on,cluster_size=16k", "compression_type=zstd",
    "lazy_refcounts=on", "preallocation=metadata", "preallocation=falloc",
]


@pytest.mark.parametrize("backing", [False, True])
@pytest.mark.parametrize("opts", MATRIX)
def test_write_matrix(tmp_path, opts, backing):
    """vdisk-io and qemu-io do the same writes: both images check clean and
    compare identical."""
    if backing and "preallocation" in opts:
        opts += ",extended_l2=on,cluster_size=64k"
    base = tmp_path / "base.qcow2"
    bargs = []
    if backing:
        qimg("create", "-q", "-f", "qcow2", base, "4M", check=True)
        qio(base, "write -P 0xab 0 4M")
        bargs = ["-b", base, "-F", "qcow2"]
    v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    vimg("create", "-q", "-f", "qcow2", "-o", opts, *bargs, v, "4M", check=True)
    qimg("create", "-q", "-f", "qcow2", "-o", opts, *bargs, q, "4M", check=True)
    # qemu refuses compressed writes to allocated (preallocated) clusters
    ops = [o for o in OPS if ("preallocation" not in opts and "2M" not in opts)
           or "compress" not in o[1]]
    vio(v, *[o[1] for o in ops])
    qio(q, *[o[0] for o in ops])
    check_clean(v)
    p = qimg("compare", v, q)
    assert p.returncode == 0, p.stdout + p.stderr
    # vdisk reads both identically
    for img in (v, q):
        out = tmp_path / (img.name + ".raw")
        vimg("convert", "-O", "raw", img, out, check=True)
        ref = tmp_path / (img.name + ".qraw")
        qimg("convert", "-O", "raw", img, ref, check=True)
        assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("opts", ["compat=1.1", "compat=0.10", "extended_l2=on",
                                  "cluster_size=4k", "compression_type=zstd"])
def test_read_qemu_written(tmp_path, opts):
    """Images qemu writes (after commit, rebase, resize, snapshot) read the
    same in vdisk; map output is identical."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-o", opts, base, "8M", check=True)
    qio(base, "write -P 0xab 0 1M", "write -c -P 0x12 1M 1M", "write -P 0xab 2M 6M",
        "write -z 3M 64k")
    qimg("create", "-q", "-f", "qcow2", "-o", opts, "-b", base, "-F", "qcow2", top,
         check=True)
    qio(top, "write -P 0xcd 1000 3000", "discard 2M 1M", "write -z 5M 100k")
    qimg("snapshot", "-c", "s1", top, check=True)
    qio(top, "write -P 0xef 64k 64k")
    if "0.10" not in opts:
        qimg("resize", top, "12M", check=True)
    for img in (top, base):
        v, q = tmp_path / "v.raw", tmp_path / "q.raw"
        vimg("convert", "-O", "raw", img, v, check=True)
        qimg("convert", "-O", "raw", img, q, check=True)
        assert v.read_bytes() == q.read_bytes()
        assert vimg("compare", img, q).returncode == 0
        vm = vimg("map", "--output=json", img, check=True).stdout
        qm = qimg("map", "--output=json", img, check=True).stdout
        assert vm == qm
    qimg("commit", top, check=True)
    v, q = tmp_path / "v2.raw", tmp_path / "q2.raw"
    vimg("convert", "-O", "raw", base, v, check=True)
    qimg("convert", "-O", "raw", base, q, check=True)
    assert v.read_bytes() == q.read_bytes()


@pytest.mark.parametrize("opts", ["", "compat=0.10", "cluster_size=4k,preallocation=metadata",
                                  "lazy_refcounts=on,refcount_bits=8,extended_l2=on,"
                                  "compression_type=zstd", "preallocation=full",
                                  "data_file=d.raw,data_file_raw=on",
                                  "nocow=on,preallocation=falloc"])
def test_create_matches(tmp_path, opts):
    """The Formatting line, the image bytes (layout), info and map match."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    extra = ["-o", opts] if opts else []
    pv = subprocess.run([os.path.join(BUILD, "tools", "img", "vdisk-img"), "create", "-f",
                         "qcow2"] + extra + ["img.qcow2", "3M"], cwd=a, capture_output=True,
                        text=True)
    pq = subprocess.run([QEMU_IMG, "create", "-f", "qcow2"] + extra + ["img.qcow2", "3M"],
                        cwd=b, capture_output=True, text=True)
    assert pv.returncode == pq.returncode == 0, pv.stderr + pq.stderr
    assert pv.stdout == pq.stdout
    va, qa = a / "img.qcow2", b / "img.qcow2"
    assert os.path.getsize(va) == os.path.getsize(qa)
    assert subprocess.run([QEMU_IMG, "check", "img.qcow2"], cwd=a).returncode == 0
    for args in (["info"], ["info", "--output=json"], ["map", "--output=json"]):
        vo = subprocess.run([os.path.join(BUILD, "tools", "img", "vdisk-img")] + args +
                            ["img.qcow2"], cwd=a, capture_output=True, text=True).stdout
        qo = subprocess.run([QEMU_IMG] + args + ["img.qcow2"], cwd=a, capture_output=True,
                            text=True).stdout
        if args[0] == "info":   # disk usage may differ by allocation granularity
            vo = "\n".join(l for l in vo.splitlines() if "disk size" not in l
                           and "actual-size" not in l)
            qo = "\n".join(l for l in qo.splitlines() if "disk size" not in l
                           and "actual-size" not in l)
        assert vo == qo


def test_create_help_matches():
    assert vimg("create", "-f", "qcow2", "-o", "help").stdout == \
        qimg("create", "-f", "qcow2", "-o", "help").stdout
    assert vimg("create", "-f", "qcow2", "-o", "help", "x.qcow2").stdout == \
        qimg("create", "-f", "qcow2", "-o", "help", "x.qcow2").stdout


@pytest.mark.parametrize("opts", [
    "cluster_size=1000", "cluster_size=4M", "refcount_bits=3", "compat=0.10,refcount_bits=8",
    "compat=0.10,lazy_refcounts=on", "compat=0.10,compression_type=zstd",
    "compression_type=lz4", "compat=0.10,extended_l2=on", "cluster_size=4k,extended_l2=on",
    "data_file_raw=on", "preallocation=foo", "compat=2", "compat=0.10,data_file=x.raw",
])
def test_create_errors(tmp_path, opts):
    v = vimg("create", "-q", "-f", "qcow2", "-o", opts, tmp_path / "v.qcow2", "1M")
    q = qimg("create", "-q", "-f", "qcow2", "-o", opts, tmp_path / "q.qcow2", "1M")
    assert v.returncode == q.returncode == 1
    assert v.stderr.replace("v.qcow2", "X").replace("vdisk-img", "qemu-img") == \
        q.stderr.replace("q.qcow2", "X")


def test_create_size_from_backing(tmp_path):
    base = tmp_path / "base.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "5M", check=True)
    vimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", tmp_path / "t.qcow2",
         check=True)
    info = json.loads(qimg("info", "--output=json", tmp_path / "t.qcow2").stdout)
    assert info["virtual-size"] == 5 * MB


def measure_source(tmp_path, src):
    """Arguments naming the measure source `src` (built in tmp_path)."""
    raw = tmp_path / "s.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(MB))
        f.seek(3 * MB)
        f.write(os.urandom(100000))
        f.truncate(5 * MB)
    img = tmp_path / ("%s.qcow2" % src)
    if src == "raw":
        return [raw]
    if src == "raw-holes":
        # 4k of data every 60k (holes at file system granularity)
        holes = tmp_path / "h.raw"
        with open(holes, "wb") as f:
            for off in range(0, 8 * MB, 60 * 1024):
                f.seek(off)
                f.write(os.urandom(4096))
            f.truncate(10 * MB + 12345)
        return [holes]
    if src in ("qcow2", "compressed"):
        qimg("convert", *(["-c"] if src == "compressed" else []), "-O", "qcow2", raw, img,
             check=True)
    elif src == "backing":
        base = tmp_path / "base.qcow2"
        qimg("convert", "-O", "qcow2", raw, base, check=True)
        qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img, "6M", check=True)
        qio(img, "write -P 1 1M 70000", "write -z 3M 64k", "write -P 2 5M 4k",
            "write -z 5242880 4096")
    elif src == "extended_l2":
        qimg("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", img, "5M", check=True)
        qio(img, "write -P 1 0 2k", "write -P 1 100k 5k", "write -z 1M 8k",
            "write -P 3 2M 1M", "write -z 2M 4k", "discard 2560k 2k")
    elif src in ("falloc", "metadata"):
        qimg("create", "-q", "-f", "qcow2", "-o", "preallocation=" + src, img, "5M",
             check=True)
        qio(img, "write -P 1 0 2k", "write -P 1 1M 70k", "write -z 2M 128k")
    elif src == "bitmaps":
        qimg("convert", "-O", "qcow2", raw, img, check=True)
        qimg("bitmap", "--add", img, "b1", check=True)
        qimg("bitmap", "--add", "-g", "512", img, "a-longer-bitmap-name", check=True)
    else:
        return src.split()
    return [img]


@pytest.mark.parametrize("opts", ["", "cluster_size=4k", "refcount_bits=1,extended_l2=on",
                                  "preallocation=full", "cluster_size=2M,refcount_bits=64",
                                  "compat=0.10", "backing_file=b.qcow2"])
@pytest.mark.parametrize("src", ["--size 10G", "--size 1", "raw", "qcow2", "compressed",
                                 "backing", "extended_l2", "raw-holes", "falloc", "metadata",
                                 "bitmaps"])
def test_measure_matches(tmp_path, opts, src):
    """Required, fully allocated and bitmaps sizes as qemu-img prints them,
    for new images and for sources whose data only partly fills target
    clusters (holes in the data file count as data unless the source
    looks metadata-preallocated, as in QEMU)."""
    args = measure_source(tmp_path, src)
    o = ["-o", opts] if opts else []
    for fmt in ([], ["--output=json"]):
        v = vimg("measure", "-O", "qcow2", *o, *fmt, *args)
        q = qimg("measure", "-O", "qcow2", *o, *fmt, *args)
        assert (v.returncode, v.stdout) == (q.returncode, q.stdout)


@pytest.mark.parametrize("opts", [
    "compat=v3", "compat=", "compat=1.2,cluster_size=3k", "refcount_bits=8,compat=0.10",
    "refcount_bits=128,compat=xx", "compat=0.10,extended_l2=on,cluster_size=4k",
    "preallocation=bogus", "preallocation=", "compat=0.10,lazy_refcounts=on",
    "compression_type=foo", "data_file_raw=on", "backing_file=x,preallocation=full",
    "encrypt.format=aes", "size=137438953472,cluster_size=512",
    "size=137438953473,cluster_size=512", "size=18446744073709551615",
])
@pytest.mark.parametrize("src", ["--size 1G", "--size 137438953473", "qcow2"])
def test_measure_options_match(tmp_path, opts, src):
    """measure reads -o as QEMU's measure does (not as create does): its own
    messages, ignored create-only options, and the L1 size limit checked
    on -o size (or --size) but never on a source's size."""
    args = measure_source(tmp_path, src)
    v = vimg("measure", "-O", "qcow2", "-o", opts, *args)
    q = qimg("measure", "-O", "qcow2", "-o", opts, *args)
    assert (v.returncode, v.stdout) == (q.returncode, q.stdout)
    assert v.stderr.replace("vdisk-img", "qemu-img") == q.stderr


def test_convert_compressed_roundtrip(tmp_path):
    """Compressed clusters written by vdisk decompress in qemu (zlib, zstd);
    incompressible clusters are stored plain."""
    for ct in ("zlib", "zstd"):
        img = tmp_path / ("c-%s.qcow2" % ct)
        vimg("create", "-q", "-f", "qcow2", "-o", "compression_type=" + ct, img, "1M",
             check=True)
        vio(img, "compress 0x61 0 524288")
        rnd = tmp_path / "rnd"
        rnd.write_bytes(os.urandom(65536))
        check_clean(img)
        qio(img, "read -P 0x61 0 512k", "read -P 0 512k 512k")
        m = json.loads(qimg("map", "--output=json", img).stdout)
        assert m[0]["data"] and "offset" not in m[0]


def test_fault_injection_l2_update(tmp_path):
    """ENOSPC on the L2 write-back: a clean error, and no corruption."""
    img = tmp_path / "f.qcow2"
    vimg("create", "-q", "-f", "qcow2", img, "4M", check=True)
    spec = {"driver": "qcow2", "file": {"driver": "blkdebug", "inject-error": [
        {"event": "l2_update", "errno": 28}], "image": {"driver": "file",
                                                      "filename": str(img)}}}
    p = run([VDISK_IO, "json:" + json.dumps(spec), "write", "0x11", "0", "200000"])
    assert p.returncode == 1 and p.stderr.strip()
    q = qimg("check", img)
    assert q.returncode in (0, 3), q.stdout       # leaks at most
    assert "corruption" not in q.stdout.lower() or "0 errors" in q.stdout


@pytest.mark.parametrize("event", ["refblock_update_part", "cluster_alloc", "write_aio",
                                   "refblock_alloc", "l2_alloc_write", "l1_update"])
def test_fault_injection_events(tmp_path, event):
    img = tmp_path / "f.qcow2"
    vimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "64M", check=True)
    spec = {"driver": "qcow2", "file": {"driver": "blkdebug", "inject-error": [
        {"event": event, "errno": 5}], "image": {"driver": "file", "filename": str(img)}}}
    p = run([VDISK_IO, "json:" + json.dumps(spec), "write", "0x11", "0", "40000000"])
    assert p.returncode in (0, 1)
    q = qimg("check", img)
    assert q.returncode in (0, 3), q.stdout


def test_refcount_table_growth(tmp_path):
    """Small clusters with wide refcounts force refcount table growth."""
    img = tmp_path / "g.qcow2"
    vimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", img,
         "64M", check=True)
    vio(img, "write 0x5a 0 20000000")
    check_clean(img)
    qio(img, "read -P 0x5a 0 20000000")


def test_shrink(tmp_path):
    img = tmp_path / "s.qcow2"
    vimg("create", "-q", "-f", "qcow2", img, "8M", check=True)
    vio(img, "write 0x11 0 8M".replace("8M", str(8 * MB)), "truncate %d" % (3 * MB),
        "truncate %d" % (6 * MB))
    check_clean(img)
    qio(img, "read -P 0x11 0 3M", "read -P 0 3M 3M")


@pytest.mark.parametrize("field,value,msg", [
    (20, (8).to_bytes(4, "big"), "Unsupported cluster size: 2^8"),
    (20, (22).to_bytes(4, "big"), "Unsupported cluster size: 2^22"),
    (96, (7).to_bytes(4, "big"), "Reference count entry width too large"),
    (100, (100).to_bytes(4, "big"), "qcow2 header too short"),
    (4, (4).to_bytes(4, "big"), "Unsupported qcow2 version 4"),
    (72, (1 << 40).to_bytes(8, "big"), "Unsupported qcow2 feature(s)"),
    (36, (0x7fffffff).to_bytes(4, "big"), "Active L1 table too large"),
    (16, (2000).to_bytes(4, "big"), None),
])
def test_hostile_header(tmp_path, field, value, msg):
    img = tmp_path / "h.qcow2"
    qimg("create", "-q", "-u", "-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2", img, "1M",
         check=True)
    with open(img, "r+b") as f:
        f.seek(field)
        f.write(value)
    p = vimg("info", img)
    assert p.returncode == 1 and p.stderr.strip()
    if msg:
        assert msg in p.stderr


def test_cache_clean_interval_keeps_data(tmp_path):
    """cache-clean-interval=1 drops idle cache entries while the image is
    open: unflushed (dirty) tables must survive it and clean ones reload."""
    img = tmp_path / "c.qcow2"
    qimg("create", "-f", "qcow2", img, "64M", check=True)
    name = 'json:{"driver": "qcow2", "cache-clean-interval": 1, ' \
           '"file": {"driver": "file", "filename": "%s"}}' % img
    p = subprocess.run([VDISK_IO, name,
                        "write", "0x5a", "0", "65536", "--",
                        "write", "0x6b", str(32 << 20), "65536", "--",
                        "sleep", "2500", "--",
                        "read", "0x5a", "0", "65536", "--",
                        "write", "0x7c", str(16 << 20), "4096", "--",
                        "sleep", "2500", "--",
                        "read", "0x6b", str(32 << 20), "65536", "--",
                        "read", "0x7c", str(16 << 20), "4096"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    check_clean(img)
    q = run([QEMU_IO, "-c", "read -P 0x5a 0 64k", "-c", "read -P 0x6b 32M 64k",
             "-c", "read -P 0x7c 16M 4k", str(img)])
    assert q.returncode == 0 and "Pattern verification failed" not in q.stdout


@pytest.mark.parametrize("cluster", ["512", "4096", "8192", "65536"])
def test_feature_table_as_qemu(tmp_path, cluster):
    """The header's feature name table is written as qemu-img 7.2 writes
    it: only with clusters larger than 4 KiB, at create and when amend
    rewrites the header (the two files are byte-identical both times)."""
    v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    opts = "cluster_size=" + cluster
    vimg("create", "-q", "-f", "qcow2", "-o", opts, v, "3M", check=True)
    qimg("create", "-q", "-f", "qcow2", "-o", opts, q, "3M", check=True)
    table = b"\x68\x03\xf8\x57" in v.read_bytes()[:int(cluster)]
    assert table == (int(cluster) > 4096)
    assert v.read_bytes() == q.read_bytes()
    vimg("amend", "-f", "qcow2", "-o", "lazy_refcounts=on", v, check=True)
    qimg("amend", "-f", "qcow2", "-o", "lazy_refcounts=on", q, check=True)
    assert v.read_bytes() == q.read_bytes()


@pytest.mark.parametrize("size", ["3145729", "1", "70000"])
def test_create_odd_size_rounded(tmp_path, size):
    """A size that is not whole sectors is stored rounded up to 512, as
    qemu-img stores it: the two files are byte-identical."""
    v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    vimg("create", "-q", "-f", "qcow2", v, size, check=True)
    qimg("create", "-q", "-f", "qcow2", q, size, check=True)
    assert v.read_bytes() == q.read_bytes()
