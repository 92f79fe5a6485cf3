# SPDX-License-Identifier: BSD-3-Clause
"""Hostile qed images, one test per kind (after QEMU's CVE-2014-0142..0148
classes): bad cluster and table sizes, huge image sizes and tables, tables
and clusters past the end of the file or on the header, backing file names
out of bounds, backing loops.  Every command ends with a clear error or a
sane result within prlimit --as=1G --cpu=20: no crash, no hang, no huge
allocation; where qemu-img refuses to open the image, vdisk gives its
message."""
import os
import struct
import subprocess

import pytest

from conftest import BUILD, QEMU_IMG, VDISK_IMG, needs_vdisk_format

VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
K, M = 1 << 10, 1 << 20
TIMEOUT = 60
CS = 64 * K


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("qed")


def hdr(cs=CS, ts=4, hs=1, feat=0, compat=0, auto=0, l1=CS, size=16 * M, bo=0, bl=0):
    return struct.pack("<IIIIQQQQQII", 0x00444551, cs, ts, hs, feat, compat, auto, l1, size,
                       bo, bl)


def image(path, file_len=CS * 10, l1e=None, l2=None, name=b"", **kw):
    """A qed image: header (fields in kw), optional backing name at 64, an
    L1 table with entries l1e {index: value}, an L2 table at 5*CS with
    entries l2 (when given, L1[0] points at it unless l1e says else)."""
    d = bytearray(file_len)
    h = hdr(**kw)
    d[:64] = h
    d[64:64 + len(name)] = name
    l1_off = struct.unpack_from("<Q", h, 40)[0]
    entries = dict(l1e or {})
    if l2 is not None:
        entries.setdefault(0, 5 * CS)
        for i, v in l2.items():
            struct.pack_into("<Q", d, 5 * CS + 8 * i, v)
    for i, v in entries.items():
        if l1_off + 8 * i + 8 <= len(d):
            struct.pack_into("<Q", d, l1_off + 8 * i, v)
    path.write_bytes(bytes(d))


def sparse(path, length, **kw):
    """A header in a sparse file of length bytes."""
    with open(path, "wb") as f:
        f.write(hdr(**kw))
        f.truncate(length)


HOSTILE = {
    # kind: (builder, qemu's open error or None, vdisk's message or None)
    "cluster_size_zero": (lambda p: image(p, cs=0), "QED cluster size is invalid", None),
    "cluster_size_odd": (lambda p: image(p, cs=12345), "QED cluster size is invalid", None),
    "cluster_size_huge": (lambda p: image(p, cs=1 << 31), "QED cluster size is invalid", None),
    "table_size_zero": (lambda p: image(p, ts=0), "QED table size is invalid", None),
    "table_size_huge": (lambda p: image(p, ts=1 << 30), "QED table size is invalid", None),
    "image_size_huge": (lambda p: image(p, size=1 << 62), "QED image size is invalid", None),
    "image_size_unaligned": (lambda p: image(p, size=1000), "QED image size is invalid", None),
    "unknown_feature": (lambda p: image(p, feat=0x100), "Unsupported QED features: 100", None),
    "l1_past_eof": (lambda p: image(p, l1=1 << 40), "QED table offset is invalid", None),
    "l1_at_header": (lambda p: image(p, l1=0), "QED table offset is invalid", None),
    "l1_unaligned": (lambda p: image(p, l1=CS + 8), "QED table offset is invalid", None),
    "l1_overflow": (lambda p: image(p, l1=(1 << 64) - CS), "QED table offset is invalid", None),
    "l1_tail_past_eof": (lambda p: image(p, file_len=3 * CS), "QED table offset is invalid",
                         None),
    "header_size_huge": (lambda p: image(p, hs=1 << 31), "QED table offset is invalid", None),
    "truncated": (lambda p: p.write_bytes(hdr()[:40]), "QED table offset is invalid", None),
    "l2_past_eof": (lambda p: image(p, l1e={0: 1 << 40}), None, "L2 table offset"),
    "l2_at_header": (lambda p: image(p, l1e={0: 8}), None, "L2 table offset"),
    "l2_on_l1": (lambda p: image(p, l1e={0: CS, 1: CS}), None, None),
    "data_past_eof": (lambda p: image(p, l2={0: 1 << 40, 1: 6 * CS}), None,
                      "cluster offset"),
    "data_at_header": (lambda p: image(p, hs=2, l1=2 * CS, l2={0: CS}), None,
                       "cluster offset"),
    "data_on_l2": (lambda p: image(p, l2={0: 5 * CS, 1: 5 * CS}), None, None),
    "backing_name_out_of_bounds": (
        lambda p: image(p, feat=1, bo=CS - 4, bl=100, name=b""),
        "QED backing filename offset is invalid", None),
    "backing_name_overflow": (
        lambda p: image(p, feat=1, bo=0xffffffff, bl=0xffffffff),
        "QED backing filename offset is invalid", None),
    "backing_name_too_long": (
        lambda p: image(p, feat=1, bo=64, bl=5000, name=b"x" * 5000),
        "Failed to read backing filename", None),
    "backing_self": (lambda p: image(p, feat=1, bo=64, bl=5, name=b"img.q"), None,
                     "infinite loop"),
    "image_size_over_int64": (lambda p: sparse(p, 192 * M, cs=64 * M, ts=1, l1=64 * M,
                                               size=(1 << 63) + 512),
                              "QED image size is invalid", None),
    "huge_tables_sparse": (lambda p: sparse(p, 3 << 30, cs=64 * M, ts=16, l1=64 * M,
                                            size=1 << 40),
                           None, "over vdisk's limit"),
}

OPS = {
    "info": ["info", "img.q"],
    "map": ["map", "--output=json", "img.q"],
    "check": ["check", "img.q"],
    "convert": ["convert", "-O", "raw", "img.q", "out.raw"],
}
WRITE = [VDISK_IO, "-f", "qed", "img.q", "write", "0x99", "0", "8192", "--",
         "write", "0x98", "3145728", "4096", "--", "zero", "1048576", "65536"]


def limited(args, cwd):
    env = dict(os.environ)
    if os.environ.get("VDISK_SANITIZED"):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=1024"
        prefix = []
    else:
        prefix = ["prlimit", "--as=1073741824", "--cpu=20", "--"]
    return subprocess.run(prefix + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, timeout=TIMEOUT, env=env)


def open_error(stderr):
    for line in stderr.splitlines():
        if "Could not open '" in line and "': " in line:
            return line.split("': ", 1)[1]
    return None


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile(tmp_path, kind):
    build, qemu_reason, vdisk_msg = HOSTILE[kind]
    qd, vd = tmp_path / "q", tmp_path / "v"
    qd.mkdir()
    vd.mkdir()
    build(qd / "img.q")
    build(vd / "img.q")            # (a copy would fill sparse files in)
    seen = ""
    for op in ("info", "map", "check", "convert", "write"):
        args = WRITE if op == "write" else [VDISK_IMG] + OPS[op]
        try:
            v = limited(args, vd)
        except subprocess.TimeoutExpired:
            pytest.fail("vdisk %s hangs on %s" % (op, kind))
        assert 0 <= v.returncode < 64, "vdisk %s crashed: %s" % (op, v.stderr)
        assert "Sanitizer" not in v.stderr and "runtime error" not in v.stderr, v.stderr
        if v.returncode:
            assert v.stderr.strip() or op == "check" and v.stdout.strip(), "no error message"
        seen += v.stderr
        if op != "info" or kind == "huge_tables_sparse":   # qemu reads a 1 GiB table
            continue
        q = subprocess.run([QEMU_IMG] + OPS[op], capture_output=True, text=True, cwd=qd,
                           timeout=TIMEOUT)
        if q.returncode:
            assert v.returncode, (op, q.stderr, v.stdout, v.stderr)
        if op == "info" and qemu_reason:
            assert q.returncode == 1 and qemu_reason in q.stderr, q.stderr
            assert open_error(v.stderr) == open_error(q.stderr), (q.stderr, v.stderr)
    if vdisk_msg:
        assert vdisk_msg in seen, seen
    assert os.path.getsize(vd / "img.q") < 1 << 34


def test_backing_loop_two(tmp_path):
    """a.qed -> b.qed -> a.qed: refused, with qemu-img's message."""
    for me, other in (("a.qed", b"b.qed"), ("b.qed", b"a.qed")):
        image(tmp_path / me, feat=1, bo=64, bl=len(other), name=other)
    p = limited([VDISK_IMG, "info", "--backing-chain", "a.qed"], tmp_path)
    q = subprocess.run([QEMU_IMG, "info", "--backing-chain", "a.qed"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 1 and q.returncode == 1
    assert "infinite loop" in p.stderr, p.stderr


def test_check_bounded_on_sparse_file(tmp_path):
    """A header over a large sparse file: check's cluster bitmap is the
    file's size in clusters, not the image size's; it ends promptly."""
    sparse(tmp_path / "img.q", 1 << 36, cs=4096, ts=1, l1=4096, size=1 << 30)
    v = limited([VDISK_IMG, "check", "img.q"], tmp_path)
    assert v.returncode in (0, 3), v.stderr
