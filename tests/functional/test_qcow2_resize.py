# SPDX-License-Identifier: BSD-3-Clause
"""qcow2 resize against qemu-img 7.2, differentially: the same image is
copied into two directories and the same sequence of commands runs on
both, resizes by vdisk-img in one and by qemu-img in the other.  Every
step must print the same and exit the same; afterwards both copies pass
qemu-img check, info --output=json agrees (disk sizes and snapshot dates
aside), and the active layer and every snapshot read the same in qemu-img
and in vdisk-img.

Covered: v3 images with internal snapshots (grow, shrink, a snapshot's L1
smaller or larger than the active one, snapshot -a back to another size,
qemu-io writes after it), the v2 refusal, unaligned sizes (the old tail is
not zeroed without a backing file, as in qemu), a longer backing file
(the new area reads as zeroes; v2 fails), preallocation, extended L2,
compressed clusters, external data files and the error messages."""
import json
import os
import re
import shutil
import subprocess

import pytest

from filemap import allocated_bytes, allocation as file_allocation
from conftest import QEMU_IMG, VDISK_IMG as _VDISK_IMG, needs_vdisk_format, qimg, same_output, vimg

QEMU_IO = shutil.which("qemu-io")
VDISK_IMG = os.path.abspath(_VDISK_IMG)         # commands run in other directories
TIMEOUT = 120
K, M = 1024, 1 << 20
MASKED_KEYS = {"actual-size", "date-sec", "date-nsec"}


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def run_in(d, prog, *args):
    return subprocess.run([prog] + [str(a) for a in args], cwd=d, capture_output=True,
                          text=True, timeout=TIMEOUT)


def qio_in(d, img, *cmds):
    args = ["-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    p = run_in(d, QEMU_IO, *args, img)
    assert p.returncode == 0 and "failed" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p.stdout


def masked(obj):
    """info JSON without the fields that legitimately differ."""
    if isinstance(obj, dict):
        return {k: masked(v) for k, v in obj.items() if k not in MASKED_KEYS}
    if isinstance(obj, list):
        return [masked(v) for v in obj]
    return obj


class Pair:
    """One image, copied to v/ (changed by vdisk-img) and q/ (by qemu-img).

    setup(d) creates the image (and its backing or data file) in d, with
    names relative to d; it runs once and the directory is copied, so the
    snapshots it takes have the same dates in both."""

    def __init__(self, tmp_path, setup, img="a.qcow2"):
        self.img = img
        self.q, self.v = tmp_path / "q", tmp_path / "v"
        self.q.mkdir()
        setup(self.q)
        shutil.copytree(self.q, self.v)

    def _pair(self, vprog, qprog, args):
        v, q = run_in(self.v, vprog, *args), run_in(self.q, qprog, *args)
        vtext = (v.stdout + v.stderr).replace(str(self.v), "DIR")
        qtext = (q.stdout + q.stderr).replace(str(self.q), "DIR")
        if vprog == VDISK_IMG and qprog == QEMU_IMG:
            assert same_output(v.stdout, q.stdout), (args, q.stdout, v.stdout)
            assert same_output(v.stderr, q.stderr), (args, q.stderr, v.stderr)
        else:
            assert vtext == qtext, (args, qtext, vtext)
        assert v.returncode == q.returncode, (args, q.returncode, v.returncode)
        return v

    def img_cmd(self, tool, *args):
        """A qemu-img command on both copies, by qemu-img (tool "qemu") or
        by the same program as the resizes ("same")."""
        vprog = VDISK_IMG if tool == "same" else QEMU_IMG
        return self._pair(vprog, QEMU_IMG, list(args))

    def io(self, *cmds):
        for d in (self.v, self.q):
            qio_in(d, self.img, *cmds)

    # ---- comparisons ----

    def check_clean(self):
        out = {}
        for d in (self.v, self.q):
            p = run_in(d, QEMU_IMG, "check", "--output=json", self.img)
            assert p.returncode == 0, p.stdout + p.stderr
            res = json.loads(p.stdout)
            for k in ("corruptions", "leaks", "check-errors"):
                assert res.get(k, 0) == 0, (d, p.stdout)
            out[d] = res
        return out[self.v], out[self.q]

    def info(self, prog):
        res = []
        for d in (self.v, self.q):
            p = run_in(d, prog, "info", "--output=json", self.img)
            assert p.returncode == 0, p.stderr
            res.append(masked(json.loads(p.stdout.replace(str(d), "DIR"))))
        return res

    def snapshots(self):
        info = json.loads(run_in(self.q, QEMU_IMG, "info", "--output=json",
                                 self.img).stdout)
        return [s["name"] for s in info.get("snapshots", [])]

    def raw(self, d, prog, snap=None, name="out.raw"):
        args = ["convert", "-O", "raw"] + (["-l", snap] if snap else [])
        p = run_in(d, prog, *args, self.img, name)
        assert p.returncode == 0, p.stderr
        data = (d / name).read_bytes()
        os.unlink(d / name)
        return data

    def compare(self, same_layout=True, contents=True):
        """Both copies clean (with the same clusters used, when
        same_layout), described alike and read alike by both programs,
        active layer and snapshots."""
        vc, qc = self.check_clean()
        if same_layout:
            assert vc == qc
        vi, qi = self.info(QEMU_IMG)
        assert vi == qi
        assert self.info(VDISK_IMG) == [vi, qi]
        for snap in ([None] + self.snapshots()) if contents else []:
            self.same_contents(snap)

    def same_contents(self, snap):
        """qemu-img reads the same from both copies, and so does vdisk-img."""
        ref = self.raw(self.q, QEMU_IMG, snap)
        assert self.raw(self.v, QEMU_IMG, snap) == ref, snap
        assert self.raw(self.v, VDISK_IMG, snap) == ref, snap
        assert self.raw(self.q, VDISK_IMG, snap) == ref, snap


def create(d, size, opts="", img="a.qcow2"):
    args = ["create", "-q", "-f", "qcow2"] + (["-o", opts] if opts else []) + [img, size]
    p = run_in(d, QEMU_IMG, *args)
    assert p.returncode == 0, p.stderr


def rs(pair, *args):
    """resize with options, image name, then the size (last argument)."""
    return pair._pair(VDISK_IMG, QEMU_IMG, ["resize", *args[:-1], pair.img, args[-1]])


def snap_pair(tmp_path, opts="cluster_size=4k", size="3M", data=("write -P 1 0 3M",)):
    def setup(d):
        create(d, size, opts)
        qio_in(d, "a.qcow2", *data)
        assert run_in(d, QEMU_IMG, "snapshot", "-c", "s1", "a.qcow2").returncode == 0
    return Pair(tmp_path, setup)


def header(path):
    """(size, L1 size) from a qcow2 header."""
    with open(path, "rb") as f:
        h = f.read(48)
    return int.from_bytes(h[24:32], "big"), int.from_bytes(h[36:40], "big")


def snapshot_table(path):
    """The snapshot table entries: fixed part and extra data, raw."""
    with open(path, "rb") as f:
        data = f.read()
    count = int.from_bytes(data[60:64], "big")
    off = int.from_bytes(data[64:72], "big")
    entries = []
    for _ in range(count):
        id_len = int.from_bytes(data[off + 12:off + 14], "big")
        name_len = int.from_bytes(data[off + 14:off + 16], "big")
        extra = int.from_bytes(data[off + 36:off + 40], "big")
        end = off + 40 + extra + id_len + name_len
        entries.append(data[off:end])
        off = (end + 7) & ~7
    return entries


# ---- v3 images with internal snapshots ----

@pytest.mark.parametrize("tool", ["qemu", "same"])
def test_shrink_then_apply_larger_snapshot(tmp_path, tool):
    """The snapshot's L1 (2 entries) is larger than what 1M needs; the
    active L1 keeps its size; snapshot -a brings 3M back."""
    p = snap_pair(tmp_path)
    assert rs(p, "--shrink", "1M").stdout == "Image resized.\n"
    assert header(p.v / p.img) == header(p.q / p.img) == (M, 2)
    p.compare()
    p.img_cmd(tool, "snapshot", "-a", "s1", p.img)
    assert header(p.v / p.img)[0] == 3 * M
    p.compare(tool == "qemu")
    p.io("write -P 5 2M 8k", "read -P 1 0 2M", "read -P 5 2M 8k")
    p.compare(tool == "qemu")


@pytest.mark.parametrize("tool", ["qemu", "same"])
def test_grow_then_apply_smaller_snapshot(tmp_path, tool):
    """The snapshot's L1 (1 entry) is smaller than the grown one (4)."""
    p = snap_pair(tmp_path, size="1M", data=("write -P 1 0 1M",))
    rs(p, "8M")
    assert header(p.v / p.img) == header(p.q / p.img) == (8 * M, 4)
    p.io("write -P 2 7M 64k", "write -P 3 512k 4k")
    p.img_cmd(tool, "snapshot", "-c", "s2", p.img)
    p.compare(tool == "qemu")
    p.img_cmd(tool, "snapshot", "-a", "s1", p.img)
    assert header(p.v / p.img)[0] == M
    p.compare(tool == "qemu")
    p.io("write -P 4 256k 64k")
    p.img_cmd(tool, "snapshot", "-a", "s2", p.img)
    assert header(p.v / p.img)[0] == 8 * M
    p.io("read -P 2 7M 64k", "read -P 3 512k 4k", "read -P 0 1M 6M")
    p.compare(tool == "qemu")


@pytest.mark.parametrize("tool", ["qemu", "same"])
def test_resize_sequence_between_snapshots(tmp_path, tool):
    """Shrink, grow, snapshot, shrink below it, apply both ways."""
    p = snap_pair(tmp_path)
    rs(p, "--shrink", "1M")
    rs(p, "5M")
    p.io("write -P 2 4M 512k")
    p.img_cmd(tool, "snapshot", "-c", "s2", p.img)
    rs(p, "--shrink", "-4M")
    p.compare(tool == "qemu")
    for s in ("s1", "s2", "s1"):
        p.img_cmd(tool, "snapshot", "-a", s, p.img)
        p.compare(tool == "qemu")
    p.img_cmd(tool, "snapshot", "-d", "s1", p.img)
    rs(p, "+1M")
    p.compare(tool == "qemu")


def test_snapshot_table_untouched(tmp_path):
    """qemu-img changes nothing in the snapshot table on resize (the
    snapshot keeps its disk size and L1 size)."""
    p = snap_pair(tmp_path)
    before = snapshot_table(p.q / p.img)
    rs(p, "--shrink", "1M")
    rs(p, "16M")
    p.compare()
    assert snapshot_table(p.v / p.img) == snapshot_table(p.q / p.img) == before
    sn = before[0]
    assert int.from_bytes(sn[8:12], "big") == 2                  # L1 size
    assert int.from_bytes(sn[48:56], "big") == 3 * M             # disk size


@pytest.mark.parametrize("args", [["2M"], ["--shrink", "512k"], ["1M"], ["+0"],
                                  ["--preallocation=full", "2M"],
                                  ["--preallocation=metadata", "2M"],
                                  ["--shrink", "--preallocation=falloc", "512k"],
                                  ["1000"], ["--shrink", "1049000"], ["512k"]])
def test_v2_with_snapshots_refused(tmp_path, args):
    p = snap_pair(tmp_path, opts="compat=0.10,cluster_size=4k", size="1M",
                  data=("write -P 1 0 1M",))
    r = rs(p, *args)
    assert r.returncode == 1
    assert header(p.v / p.img) == (M, 1)
    p.compare()


def test_v2_resizes_again_after_delete(tmp_path):
    p = snap_pair(tmp_path, opts="compat=0.10,cluster_size=4k", size="1M",
                  data=("write -P 1 0 1M",))
    assert rs(p, "4M").stderr == "vdisk-img: Can't resize a v2 image which has snapshots\n"
    p.img_cmd("qemu", "snapshot", "-d", "s1", p.img)
    rs(p, "4M")
    rs(p, "--shrink", "512k")
    p.compare()


@pytest.mark.parametrize("opts", ["cluster_size=16k,extended_l2=on",
                                  "cluster_size=512",
                                  "cluster_size=64k,lazy_refcounts=on"])
def test_snapshot_geometries(tmp_path, opts):
    p = snap_pair(tmp_path, opts=opts, size="3M",
                  data=("write -P 1 0 1M", "write -c -P 2 2M 64k", "write -z 1M 64k",
                        "write -P 3 2560k 4k"))
    rs(p, "--shrink", "1536k")
    p.compare()
    p.io("write -P 4 1M 8k")
    rs(p, "6M")
    p.compare()
    p.img_cmd("qemu", "snapshot", "-a", "s1", p.img)
    p.compare()


@pytest.mark.parametrize("mode", ["metadata", "falloc", "full"])
def test_preallocated_grow_with_snapshot(tmp_path, mode):
    p = snap_pair(tmp_path, size="1M", data=("write -P 1 0 1M",))
    rs(p, "--preallocation=" + mode, "3M")
    # (falloc/full: qemu moves the refcount table in front of the new
    # clusters, vdisk does not; only the layout differs)
    p.compare(mode == "metadata")
    p.img_cmd("qemu", "snapshot", "-a", "s1", p.img)
    p.compare(mode == "metadata")


def test_shrink_shared_l2_keeps_snapshot(tmp_path):
    """Clusters past the new end in an L2 table shared with the snapshot:
    the table is copied, the snapshot still reads its data."""
    p = snap_pair(tmp_path, size="4M", data=("write -P 1 0 4M",))
    rs(p, "--shrink", "1M")
    p.compare()
    p.io("read -P 1 0 1M", "write -P 2 0 1M")
    p.img_cmd("qemu", "snapshot", "-a", "s1", p.img)
    p.io("read -P 1 0 4M")
    p.compare()


# ---- unaligned sizes and backing files ----

def test_old_tail_not_zeroed_without_backing(tmp_path):
    """qemu leaves what lies past an unaligned end in the last cluster."""
    p = snap_pair(tmp_path, opts="cluster_size=4k", size="3M")
    p.img_cmd("qemu", "snapshot", "-d", "s1", p.img)
    rs(p, "--shrink", str(M + 512))
    rs(p, "2M")
    p.compare()
    assert p.raw(p.v, QEMU_IMG)[M + 512:M + 4096] == b"\x01" * (4096 - 512)


def overlay_setup(opts, size, base_size="4M"):
    def setup(d):
        create(d, base_size, img="base.qcow2")
        qio_in(d, "base.qcow2", "write -P 7 0 " + base_size)
        create(d, size, "backing_file=base.qcow2,backing_fmt=qcow2," + opts)
        qio_in(d, "a.qcow2", "write -P 3 900k 50k")
    return setup


@pytest.mark.parametrize("opts,size,new", [
    ("cluster_size=64k", "1000k", "4M"), ("cluster_size=64k", "1000k", "1010k"),
    ("cluster_size=64k,extended_l2=on", "1000k", "6M"), ("cluster_size=4k", "1M", "3M"),
    ("compat=0.10", "1000k", "4M"), ("compat=0.10", "1000k", "1010k"),
    ("compat=0.10", "4M", "6M"), ("cluster_size=4k", "6M", "8M"),
])
def test_grow_over_backing(tmp_path, opts, size, new):
    """A longer backing file does not show through the new area (v2: no
    zero clusters, the resize fails as in qemu)."""
    p = Pair(tmp_path, overlay_setup(opts, size))
    rs(p, new)
    p.compare()


def test_grow_over_backing_with_snapshot(tmp_path):
    def setup(d):
        overlay_setup("cluster_size=4k", "1M")(d)
        assert run_in(d, QEMU_IMG, "snapshot", "-c", "s1", "a.qcow2").returncode == 0
    p = Pair(tmp_path, setup)
    rs(p, "--shrink", "512k")
    rs(p, "2M")
    p.compare()
    p.img_cmd("qemu", "snapshot", "-a", "s1", p.img)
    p.compare()


# ---- external data files ----

@pytest.mark.parametrize("raw", ["off", "on"])
def test_data_file_follows(tmp_path, raw):
    def setup(d):
        create(d, "1M", "data_file=a.data,data_file_raw=" + raw)
        qio_in(d, "a.qcow2", "write -P 1 0 1M")
    p = Pair(tmp_path, setup)
    for args in (["3M"], ["--shrink", "512k"], ["--shrink", "300k"], ["3000k"]):
        rs(p, *args)
        assert os.path.getsize(p.v / "a.data") == os.path.getsize(p.q / "a.data")
        vm, qm = (run_in(d, QEMU_IMG, "map", "--output=json", p.img).stdout
                  for d in (p.v, p.q))
        assert vm == qm
        p.compare()


# ---- messages ----

@pytest.mark.parametrize("args", [["1049000"], ["--shrink", "1000"], ["3P"], ["1P"],
                                  ["--shrink", "--preallocation=full", "1M"],
                                  ["--preallocation=full", "1M"], ["1M"], ["+0"]])
def test_errors_and_edges(tmp_path, args):
    p = Pair(tmp_path, lambda d: create(d, "2M"))
    rs(p, *args)
    p.compare(contents=args != ["1P"])


def test_sparse_shrink_is_fast(tmp_path):
    """vdisk skips unallocated L2 tables (qemu 7.2 allocates one for each
    while discarding, which takes minutes here): a 1P image shrinks
    quickly and checks clean."""
    d = tmp_path
    create(d, "1P")
    qio_in(d, "a.qcow2", "write -P 1 0 64k", "write -P 2 100T 64k")
    assert run_in(d, QEMU_IMG, "snapshot", "-c", "s1", "a.qcow2").returncode == 0
    # (no timing asserted: run_in's timeout catches a walk over every table)
    p = run_in(d, VDISK_IMG, "resize", "--shrink", "a.qcow2", "1M")
    assert p.returncode == 0, p.stderr
    c = run_in(d, QEMU_IMG, "check", "a.qcow2")
    assert c.returncode == 0 and "No errors" in c.stdout and "leaked" not in c.stdout
    qio_in(d, "a.qcow2", "read -P 1 0 64k")
    assert run_in(d, QEMU_IMG, "snapshot", "-a", "s1", "a.qcow2").returncode == 0
    qio_in(d, "a.qcow2", "read -P 2 100T 64k")


@pytest.mark.parametrize("mode", ["falloc", "full"])
@pytest.mark.parametrize("how", ["create", "resize"])
def test_prealloc_allocates_like_qemu(tmp_path, mode, how):
    """preallocation=falloc/full allocates the data clusters in the file:
    the same allocated ranges as qemu-img's image, and the same map."""
    imgs = []
    for tool in (vimg, qimg):
        img = tmp_path / ("%s.qcow2" % tool.__name__)
        if how == "create":
            tool("create", "-q", "-f", "qcow2", "-o", "preallocation=" + mode, img, "3M",
                 check=True)
        else:
            tool("create", "-q", "-f", "qcow2", img, "1M", check=True)
            tool("resize", "-q", "--preallocation=" + mode, img, "3M", check=True)
        imgs.append(img)
    v, q = imgs
    assert file_allocation(v) == file_allocation(q)
    assert allocated_bytes(v) >= (3 << 20 if how == "create" else 2 << 20)
    assert qimg("map", "--output=json", v).stdout == qimg("map", "--output=json", q).stdout
