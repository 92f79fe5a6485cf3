# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-nbd -B NAME against qemu-nbd -B NAME on the same images: the
errors (missing, inconsistent bitmaps), the qemu:dirty-bitmap:NAME contexts
LIST/SET_META_CONTEXT offer, block status from the bitmap as nbdinfo
--map, libnbd (REQ_ONE, unaligned ranges) and qemu-img/vdisk-img map with
x-dirty-bitmap read it, the same dirty ranges after the same writes through
each server, and block status of a bitmap with extended headers and 64-bit
lengths."""
import os
import shutil
import struct

import pytest

from bitmap_helpers import dirty_map, make
from conftest import VDISK_IMG, qimg, run as crun
from nbd_helpers import VDISK_NBD, Server, run

pytestmark = pytest.mark.skipif(not os.path.exists(VDISK_NBD), reason="vdisk-nbd not built")
QEMU_NBD = shutil.which("qemu-nbd")
NBDINFO = shutil.which("nbdinfo")
SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_NBD is None or NBDINFO is None:
        pytest.skip("qemu-nbd or nbdinfo is not installed")


def qio(img, *cmds):
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    crun(args + [str(img)], check=True)


def image(tmp_path, name="d.qcow2", size="64M", gran=None):
    """b1 (enabled), b2 (disabled) with dirty areas, b3 clean."""
    g = ["-g", str(gran)] if gran else []
    img = make(tmp_path / name, size, [["--add", *g, "b1"], ["--add", "--disable", *g, "b2"]])
    qio(img, "write 1M 64k", "write 5000k 3M", "write 30M 512")
    qimg("bitmap", "--add", img, "b3", check=True)
    qimg("bitmap", "--enable", img, "b2", check=True)
    qio(img, "write 20M 1M", "write 63M 4k")
    qimg("bitmap", "--disable", img, "b2", check=True)
    return img


class Pair:
    """The same arguments served by vdisk-nbd and by qemu-nbd (-t), each
    on its own copy of the image (the last argument)."""

    def __init__(self, tmp_path, args):
        self.servers = []
        img = args[-1]
        copy = tmp_path / ("copy-" + img.name)
        shutil.copy(img, copy)
        try:
            for i, (prog, path) in enumerate([(VDISK_NBD, img), (QEMU_NBD, copy)]):
                self.servers.append(Server(prog, ["-t"] + list(args[:-1]) + [path],
                                           sock=str(tmp_path / ("s%d" % i))))
        except AssertionError:
            for s in self.servers:
                s.stop()
            raise

    def stop(self):
        for s in self.servers:
            assert s.stop() == 0, s.stderr

    def same(self, fn):
        """fn(server) gives the same on both; that value."""
        v, q = (fn(s) for s in self.servers)
        assert v == q
        return v


@pytest.fixture
def pair(tmp_path):
    made = []

    def start(*args):
        p = Pair(tmp_path, args)
        made.append(p)
        return p
    yield start
    for p in made:
        p.stop()


# ---- errors ----

@pytest.mark.parametrize("case", ["missing", "inconsistent", "inconsistent-ro", "second-missing",
                                  "raw", "empty", "list"])
def test_errors_as_qemu_nbd(tmp_path, case):
    img = image(tmp_path)
    args = {"missing": ["-B", "nope"], "second-missing": ["-B", "b1", "-B", "nope"],
            "inconsistent": ["-B", "b1"], "inconsistent-ro": ["-r", "-B", "b2", "-B", "b1"],
            "empty": ["-B", ""], "raw": ["-f", "raw", "-B", "b1"],
            "list": ["-L", "-B", "b1"]}[case]
    if case.startswith("inconsistent"):
        data = bytearray(img.read_bytes())
        # b1's entry comes first in the directory: set its in_use flag.
        from test_qcow2_bitmaps_hostile import ext_pos
        e = ext_pos(data)
        d = struct.unpack(">Q", data[e + 16:e + 24])[0]
        data[d + 15] |= 1
        img.write_bytes(bytes(data))
    if "-f" not in args:
        args = ["-f", "qcow2"] + args
    sock = str(tmp_path / "s")
    v = run([VDISK_NBD, "-k", sock] + args + ([] if case == "list" else [img]), timeout=30)
    q = run([QEMU_NBD, "-k", sock] + args + ([] if case == "list" else [img]), timeout=30)
    assert (v.returncode, v.stdout) == (q.returncode, q.stdout) and q.returncode == 1
    assert v.stderr.replace("vdisk-nbd", "qemu-nbd") == q.stderr


# ---- contexts ----

LIST_QUERIES = [[], ["qemu:"], ["qemu:dirty-bitmap:"], ["qemu:dirty-bitmap:b1"],
                ["base:"], ["qemu:dirty-bitmap:b"], ["qemu:dirty-bitmap:nope", "base:allocation"],
                ["qemu:allocation-depth"]]


def list_contexts(server):
    import nbd
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(server.uri())
    out = []
    for q in LIST_QUERIES:
        h.clear_meta_contexts()
        for x in q:
            h.add_meta_context(x)
        got = []
        h.opt_list_meta_context(lambda name: got.append(name))
        out.append(got)
    h.opt_abort()
    return out


@pytest.mark.parametrize("args", [["-B", "b1"], ["-B", "b1", "-B", "b2"], ["-A", "-B", "b1", "-B", "b1"],
                                  ["-r", "-B", "b3", "-B", "b2", "-B", "b1"]])
def test_contexts_listed(tmp_path, pair, args):
    pytest.importorskip("nbd")
    img = image(tmp_path)
    p = pair("-f", "qcow2", *args, img)
    got = p.same(list_contexts)
    assert any(x.startswith("qemu:dirty-bitmap:") for x in got[0])


# ---- block status ----

def nbdinfo_map(ctx):
    def f(server):
        r = run([NBDINFO, "--map=" + ctx, server.uri()])
        return r.returncode, r.stdout, r.stderr.replace(server.sock, "SOCK")
    return f


MAPS = [(None, "64M"), (512, "64M"), (2 << 20, "65M"), (65536, "67109376")]


@pytest.mark.parametrize("gran,size", MAPS[1:3] if SANITIZED else MAPS)
def test_nbdinfo_map(tmp_path, pair, gran, size):
    img = image(tmp_path, size=size, gran=gran)
    p = pair("-f", "qcow2", "-A", "-B", "b1", "-B", "b2", "-B", "b3", img)
    for ctx in ["qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b2", "qemu:dirty-bitmap:b3",
                "qemu:dirty-bitmap:nope", "base:allocation", "qemu:allocation-depth"]:
        rc, out, _ = p.same(nbdinfo_map(ctx))
    rc, out, _ = p.same(nbdinfo_map("qemu:dirty-bitmap:b1"))
    assert rc == 0 and " dirty" in out


def libnbd_status(server):
    """Block status of both contexts over assorted ranges and flags."""
    import nbd
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.add_meta_context("qemu:dirty-bitmap:b1")
    h.connect_uri(server.uri())
    size = h.get_size()
    out = []

    def cb(ctx, off, ents, err):
        out.append((ctx, off, list(ents)))
        return 0
    for off, n, fl in [(0, size, 0), (1 << 20, 4 << 20, 0), ((1 << 20) + 512, 4 << 20, 0),
                       ((1 << 20) + 512, 4 << 20, nbd.CMD_FLAG_REQ_ONE),
                       (0, size, nbd.CMD_FLAG_REQ_ONE), (5000 << 10, 1, 0),
                       (size - 4096, 4096, 0), (30 << 20, 1 << 20, nbd.CMD_FLAG_REQ_ONE)]:
        h.block_status(n, off, cb, fl)
        out.append("--")
    h.shutdown()
    return out


def test_libnbd_block_status(tmp_path, pair):
    pytest.importorskip("nbd")
    img = image(tmp_path)
    p = pair("-f", "qcow2", "-r", "-B", "b1", img)
    got = p.same(libnbd_status)
    assert ("qemu:dirty-bitmap:b1", 1 << 20, [65536, 1, 3997696, 0, 131072, 1]) in got
    assert ("qemu:dirty-bitmap:b1", (1 << 20) + 512, [65024, 1]) in got


def img_map(prog, ctx, fmt):
    def f(server):
        opts = "driver=nbd,server.type=unix,server.path=%s,x-dirty-bitmap=%s" % (server.sock, ctx)
        if fmt:
            opts = "driver=raw,file." + opts.replace(",", ",file.")
        r = run([prog, "map", "--output=json", "--image-opts", opts])
        h = run([prog, "map", "--image-opts", opts])
        norm = lambda s: s.replace(server.sock, "SOCK").replace("vdisk-img", "qemu-img")
        return r.returncode, norm(r.stdout), norm(r.stderr), norm(h.stdout)
    return f


@pytest.mark.parametrize("fmt", [None, "raw"])
def test_img_map_x_dirty_bitmap(tmp_path, pair, fmt):
    """qemu-img map and vdisk-img map with x-dirty-bitmap, each against
    both servers: four identical outputs (dirty shows as data: false,
    present: false)."""
    img = image(tmp_path)
    p = pair("-f", "qcow2", "-B", "b1", "-B", "b2", img)
    for ctx in ["qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b2", "qemu:dirty-bitmap:nope",
                "base:allocation"]:
        q = p.same(img_map("qemu-img", ctx, fmt))
        v = p.same(img_map(VDISK_IMG, ctx, fmt))
        assert v == q
    assert '"present": false' in p.same(img_map(VDISK_IMG, "qemu:dirty-bitmap:b1", fmt))[1]


# ---- writes through the export ----

WRITES = [("pwrite", 0, 4096), ("pwrite", 9 << 20, 200000), ("zero", 40 << 20, 3 << 20),
          ("trim", 50 << 20, 1 << 20), ("pwrite", (64 << 20) - 512, 512),
          ("zero", 12 << 20, 1000)]


def write_through(server):
    import nbd
    h = nbd.NBD()
    h.add_meta_context("qemu:dirty-bitmap:b1")
    h.connect_uri(server.uri())
    for op, off, n in WRITES:
        if op == "pwrite":
            h.pwrite(b"\x5a" * n, off)
        elif op == "zero":
            h.zero(n, off)
        else:
            h.trim(n, off)
    h.flush()
    out = []
    h.block_status(h.get_size(), 0,
                   lambda ctx, off, ents, err: out.append((ctx, off, list(ents))) or 0)
    h.shutdown()
    return out


def test_same_dirty_ranges_after_writes(tmp_path):
    """The same writes through vdisk-nbd and qemu-nbd (each on its copy of
    one image): the live bitmap shows the same dirty ranges, and so does
    the stored one after the servers end."""
    pytest.importorskip("nbd")
    img = image(tmp_path)
    twin = tmp_path / "q.qcow2"
    shutil.copy(img, twin)
    live = []
    for i, (prog, path) in enumerate([(VDISK_NBD, img), (QEMU_NBD, twin)]):
        s = Server(prog, ["-t", "-f", "qcow2", "--discard=unmap", "-B", "b1", "-B", "b2", path],
                   sock=str(tmp_path / ("w%d" % i)))
        try:
            live.append(write_through(s))
        finally:
            assert s.stop() == 0, s.stderr
    assert live[0] == live[1]
    for name in ["b1", "b2", "b3"]:
        assert dirty_map(img, name) == dirty_map(twin, name), name
    assert qimg("check", img).returncode == 0


# ---- extended headers ----

def test_block_status_ext_bitmap(tmp_path):
    """Extended headers: the bitmap's extents as BLOCK_STATUS_EXT with
    64-bit lengths over an 8 GiB export, merged, capped at the request,
    REQ_ONE, and the payload form naming only the bitmap's context."""
    from test_nbd_extended import CMD_BS, F_PAYLOAD_LEN, F_REQ_ONE, Client, error_of, extents
    big = 8 << 30
    img = make(tmp_path / "big.qcow2", str(big), [["--add", "b1"]])
    qio(img, "write 0 64k", "write 6G 128k")
    s = Server(VDISK_NBD, ["-t", "-f", "qcow2", "-B", "b1", img], sock=str(tmp_path / "x"))
    try:
        c = Client(s, meta=("base:allocation", "qemu:dirty-bitmap:b1"))
        bid = c.ctx["qemu:dirty-bitmap:b1"]
        got = dict(extents(ch) for ch in c.call(CMD_BS, 0, big))
        assert got[bid] == [(65536, 1), ((6 << 30) - 65536, 0), (131072, 1),
                            (big - (6 << 30) - 131072, 0)]
        got = dict(extents(ch) for ch in c.call(CMD_BS, 4096, (6 << 30) + 4096, F_REQ_ONE,
                                                cookie=2))
        assert got[bid] == [(61440, 1)]
        got = dict(extents(ch) for ch in c.call(CMD_BS, 65536, 5 << 30, F_REQ_ONE, cookie=3))
        assert got[bid] == [(5 << 30, 0)]
        pl = struct.pack(">QI", big - 4096, bid)
        chunks = c.call(CMD_BS, 4096, len(pl), F_PAYLOAD_LEN, payload=pl, cookie=4)
        assert len(chunks) == 1 and extents(chunks[0]) == (
            bid, [(61440, 1), ((6 << 30) - 65536, 0), (131072, 1), (big - (6 << 30) - 131072, 0)])
        assert error_of(c.call(CMD_BS, big - 4096, 8192, cookie=5)) != 0
        c.close()
    finally:
        assert s.stop() == 0, s.stderr
