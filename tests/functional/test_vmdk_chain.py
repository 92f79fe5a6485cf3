# SPDX-License-Identifier: BSD-3-Clause
"""vmdk overlays in backing chains against qemu-img 7.2: rebase (refused
by QEMU for vmdk, after a safe rebase has copied data into the overlay),
commit of vmdk overlays into vmdk bases and of qcow2 overlays into vmdk
bases (QEMU cannot empty a vmdk overlay and says nothing), and create -b
with every kind of base, size or none, relative or absolute names.  Each
scenario runs in two directories, one per tool; the results are compared
by qemu-img (compare, info --backing-chain, check, map)."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, same_output, needs_vdisk_format

QEMU_IO = shutil.which("qemu-io")
TIMEOUT = 60


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("vmdk")


def sh(args, cwd, prog=QEMU_IMG):
    return subprocess.run([prog] + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, timeout=TIMEOUT)


def qio(cwd, img, *cmds):
    args = [QEMU_IO]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run(args + [img], capture_output=True, text=True, cwd=cwd, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr


def assert_same_run(q, v):
    assert same_output(v.stdout, q.stdout), (q.stdout, v.stdout)
    assert same_output(v.stderr, q.stderr), (q.stderr, v.stderr)
    assert v.returncode == q.returncode, (q.returncode, v.returncode, v.stderr)


def chain(d, base_sub=None):
    """base.vmdk (vmdk data) <- mid.vmdk <- top.vmdk, plus other bases."""
    if base_sub == "streamOptimized":
        raw = d / "b.raw"
        with open(raw, "wb") as f:
            f.write(b"\x11" * (1 << 20) + bytes(3 << 20))
        sh(["convert", "-q", "-O", "vmdk", "-o", "subformat=" + base_sub, raw, "base.vmdk"], d)
    else:
        sh(["create", "-q", "-f", "vmdk"] + (["-o", "subformat=" + base_sub] if base_sub
                                             else []) + ["base.vmdk", "4M"], d)
        qio(d, "base.vmdk", "write -P 0x11 0 1M", "write -P 0x12 3M 64k")
    sh(["create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "mid.vmdk"], d)
    qio(d, "mid.vmdk", "write -P 0x21 512k 128k")
    sh(["create", "-q", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", "top.vmdk"], d)
    qio(d, "top.vmdk", "write -P 0x31 600k 4k", "write -P 0x32 2M 70k")
    sh(["create", "-q", "-f", "vmdk", "other.vmdk", "4M"], d)
    qio(d, "other.vmdk", "write -P 0x41 0 2M")
    sh(["create", "-q", "-f", "qcow2", "other.qcow2", "4M"], d)
    sh(["create", "-q", "-f", "qcow2", "-b", "base.vmdk", "-F", "vmdk", "over.qcow2"], d)
    qio(d, "over.qcow2", "write -P 0x51 1M 1M")


_TEMPLATES = {}


@pytest.fixture
def tpl(tmp_path_factory):
    """tpl(key, setup): a directory set up once per test process (images
    made by qemu-img are costly under load), copied by the tests."""
    def get(key, setup):
        if key not in _TEMPLATES:
            d = tmp_path_factory.mktemp("tpl")
            setup(d)
            _TEMPLATES[key] = d
        return _TEMPLATES[key]
    return get


def both(tmp_path, template, args):
    """Copy template to tmp/q and tmp/v, run qemu-img args in q and
    vdisk-img args in v."""
    res = []
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        d = tmp_path / side
        shutil.copytree(template, d)
        res.append(sh(args, d, prog))
    return res[0], res[1], tmp_path / "q", tmp_path / "v"


def no_cids(text):
    """info --backing-chain JSON without the random CIDs, sizes on disk
    and the directory names."""
    d = json.loads(text)
    for e in d:
        e.pop("actual-size", None)
        spec = e.get("format-specific", {}).get("data", {})
        spec.pop("cid", None)
        spec.pop("parent-cid", None)
    return json.loads(json.dumps(d).replace("/q/", "/X/").replace("/v/", "/X/"))


def assert_same_images(qd, vd, names):
    """Each image reads the same in both directories (as qemu-img reads
    it, errors included), and info, check and map agree."""
    for n in names:
        c = sh(["compare", "-q", qd / n, vd / n], qd)
        qr = sh(["convert", "-O", "raw", n, "r.raw"], qd)
        vr = sh(["convert", "-O", "raw", n, "r.raw"], vd)
        assert qr.returncode == vr.returncode, (n, qr.stderr, vr.stderr)
        if qr.returncode == 0:
            assert c.returncode == 0, (n, c.stdout, c.stderr)
        for args in (["info", "--output=json", "--backing-chain", n], ["check", n]):
            q, v = sh(args, qd), sh(args, vd)
            assert q.returncode == v.returncode, (args, q.stderr, v.stderr)
            if args[0] == "info" and q.returncode == 0:
                assert no_cids(q.stdout) == no_cids(v.stdout)
            elif args[0] == "check":
                assert q.stdout == v.stdout
        q, v = sh(["map", "--output=json", n], qd), sh(["map", "--output=json", n], vd)
        assert q.stdout.replace("/q/", "/") == v.stdout.replace("/v/", "/"), n
        # vdisk itself reads what qemu reads
        vv = sh(["convert", "-O", "raw", n, "vr.raw"], vd, VDISK_IMG)
        assert vv.returncode == qr.returncode, (n, vv.stderr)
        if vv.returncode == 0:
            assert open(vd / "vr.raw", "rb").read() == open(qd / "r.raw", "rb").read(), n


def touched(args):
    """The images a commit can change, or read through what it changed."""
    if "over.qcow2" in args:
        return ["base.vmdk", "over.qcow2"]
    return ["base.vmdk", "mid.vmdk", "top.vmdk"]


@pytest.mark.parametrize("args", [
    ["rebase", "-u", "-b", "other.vmdk", "-F", "vmdk", "top.vmdk"],
    ["rebase", "-b", "other.vmdk", "-F", "vmdk", "top.vmdk"],
    ["rebase", "-b", "base.vmdk", "-F", "vmdk", "top.vmdk"],
    ["rebase", "-u", "-b", "", "top.vmdk"],
    ["rebase", "-b", "", "top.vmdk"],
    ["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "top.vmdk"],
    ["rebase", "-b", "other.qcow2", "-F", "qcow2", "mid.vmdk"],
    ["rebase", "-u", "-b", "other.vmdk", "-F", "vmdk", "over.qcow2"],
    ["rebase", "-b", "other.vmdk", "-F", "vmdk", "over.qcow2"],
])
def test_rebase(tmp_path, tpl, args):
    """QEMU 7.2's vmdk cannot record a new parent: the same refusal, and a
    safe rebase leaves the same copied data in the overlay."""
    q, v, qd, vd = both(tmp_path, tpl("chain", chain), args)
    assert_same_run(q, v)
    assert_same_images(qd, vd, [args[-1]])


@pytest.mark.parametrize("args", [
    ["commit", "top.vmdk"],
    ["commit", "-d", "top.vmdk"],
    ["commit", "mid.vmdk"],
    ["commit", "-b", "base.vmdk", "top.vmdk"],
    ["commit", "-b", "mid.vmdk", "top.vmdk"],
    ["commit", "over.qcow2"],
    ["commit", "-f", "vmdk", "base.vmdk"],
])
def test_commit(tmp_path, tpl, args):
    """Commit into vmdk bases: the same data lands in the base, the
    overlay stays as QEMU leaves it (not emptied), the same messages."""
    q, v, qd, vd = both(tmp_path, tpl("chain", chain), args)
    assert_same_run(q, v)
    assert_same_images(qd, vd, touched(args))


@pytest.mark.parametrize("base_sub", ["monolithicFlat", "twoGbMaxExtentSparse",
                                      "streamOptimized"])
@pytest.mark.parametrize("args", [["commit", "mid.vmdk"], ["commit", "over.qcow2"]])
def test_commit_into_subformats(tmp_path, tpl, base_sub, args):
    """Commit into flat, split and streamOptimized vmdk bases.  QEMU
    refuses to rewrite a streamOptimized grain: both fail, with the same
    image left; the messages differ (QEMU's driver prints one line per
    failed request, then "Block job failed"; vdisk names the offset)."""
    q, v, qd, vd = both(tmp_path, tpl(base_sub, lambda d: chain(d, base_sub)), args)
    if base_sub == "streamOptimized" and args[1] == "mid.vmdk":
        assert q.returncode == v.returncode == 1, (q.stderr, v.stderr)
        assert "Could not write to allocated cluster for streamOptimized" in q.stderr
    else:
        assert_same_run(q, v)
    assert_same_images(qd, vd, touched(args))


def bases(d):
    sh(["create", "-q", "-f", "vmdk", "b.vmdk", "4M"], d)
    sh(["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "bf.vmdk", "4M"], d)
    sh(["create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", "bs.vmdk", "4M"], d)
    sh(["create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "b2.vmdk", "4M"], d)
    sh(["create", "-q", "-f", "qcow2", "b.qcow2", "4M"], d)
    sh(["create", "-q", "-f", "raw", "b.raw", "4M"], d)
    sh(["create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", "m.qcow2",
        "4M"], d)
    # a vmdk with a parent, and one whose parent is missing
    sh(["create", "-q", "-f", "vmdk", "-b", "b.vmdk", "-F", "vmdk", "mv.vmdk"], d)
    data = open(d / "mv.vmdk", "rb").read().replace(b'"b.vmdk"', b'"x.vmdk"', 1)
    open(d / "mv2.vmdk", "wb").write(data)
    os.mkdir(d / "sub")


CREATE_CASES = [
    (b, f, size, sub)
    for b in ["b.vmdk", "bf.vmdk", "bs.vmdk", "b2.vmdk", "b.qcow2", "b.raw", "gone.vmdk",
              "m.qcow2", "ABS"]
    for f in ["vmdk", "qcow2", None]
    for size in [None, "8M"]
    for sub in [None, "twoGbMaxExtentSparse"]
    if (sub is None or b in ("b.vmdk", "bs.vmdk")) and (size is None or f == "vmdk")
]


@pytest.mark.parametrize("b,f,size,sub", CREATE_CASES)
def test_create_backing(tmp_path, tpl, b, f, size, sub):
    """create -f vmdk -b: every base format, with and without -F and a
    size: the same messages, the same descriptor (parentCID aside)."""
    def args(d):
        name = str(d / "b.vmdk") if b == "ABS" else b
        a = ["create", "-f", "vmdk", "-b", name]
        a += ["-F", f] if f else []
        a += ["-o", "subformat=" + sub] if sub else []
        return a + ["o.vmdk"] + ([size] if size else [])
    res = []
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        d = tmp_path / side
        shutil.copytree(tpl("bases", bases), d)
        res.append(sh(args(d), d, prog))
    q, v = res
    if b == "ABS":
        q = subprocess.CompletedProcess(q.args, q.returncode,
                                        q.stdout.replace("/q/", "/X/"), q.stderr)
        v = subprocess.CompletedProcess(v.args, v.returncode,
                                        v.stdout.replace("/v/", "/X/"), v.stderr)
    assert_same_run(q, v)
    qd, vd = tmp_path / "q", tmp_path / "v"
    assert sorted(os.listdir(qd)) == sorted(os.listdir(vd))
    if q.returncode == 0:
        assert_same_images(qd, vd, ["o.vmdk"])


@pytest.mark.parametrize("args", [
    ["create", "-f", "vmdk", "-b", "../b.vmdk", "-F", "vmdk", "sub/o.vmdk"],
    ["create", "-f", "vmdk", "-b", "b.vmdk", "-F", "vmdk", "sub/o.vmdk", "4M"],
    ["create", "-f", "vmdk", "-o", "backing_file=../b.vmdk,backing_fmt=vmdk", "sub/o.vmdk"],
    ["create", "-f", "vmdk", "-o", "backing_file=../b.vmdk", "sub/o.vmdk"],
    ["create", "-f", "vmdk", "-u", "-b", "x.vmdk", "o.vmdk", "4M"],
    ["create", "-f", "vmdk", "-u", "-b", "x.vmdk", "-F", "vmdk", "o.vmdk", "4M"],
    ["create", "-f", "vmdk", "-b", "o.vmdk", "-F", "vmdk", "o.vmdk", "4M"],
    ["create", "-f", "vmdk", "-b", "", "-F", "vmdk", "o.vmdk", "4M"],
    ["create", "-f", "vmdk", "-b", "mv.vmdk", "-F", "vmdk", "sub/o.vmdk"],
    ["create", "-f", "vmdk", "-b", "mv2.vmdk", "-F", "vmdk", "o.vmdk"],
    ["create", "-f", "vmdk", "-u", "-b", "mv2.vmdk", "-F", "vmdk", "o.vmdk", "1M"],
])
def test_create_backing_names(tmp_path, tpl, args):
    q, v, qd, vd = both(tmp_path, tpl("bases", bases), args)
    assert_same_run(q, v)
    for d in ("", "sub"):
        assert sorted(os.listdir(qd / d)) == sorted(os.listdir(vd / d))
    if q.returncode == 0:
        assert_same_images(qd / "sub", vd / "sub", ["o.vmdk"])
