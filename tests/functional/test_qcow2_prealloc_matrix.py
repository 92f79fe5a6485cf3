# SPDX-License-Identifier: BSD-3-Clause
"""qcow2 images of every cluster size and refcount width against
qemu-img 7.2: for each cluster_size x refcount_bits x preallocation,
vdisk-img create, convert (of a small raw image with data) and resize
(growing a qcow2 image made by qemu-img) make an image that qemu-img
check finds clean (no errors, no leaks) and that is laid out as
qemu-img's image from the same command: the same map (host offsets
too), the same info but for the disk size, the same file length, and
the same bytes where the map has data (so the same content).  Most
images are the very file qemu-img writes (the same bytes and holes);
qemu-img's reports are asked for only of the others.

Small clusters with wide refcounts have a refcount block every few
clusters (64 with 512-byte clusters and 64-bit refcounts) and their
refcount table grows at these sizes; the sizes are not multiples of the
larger cluster sizes, so partial clusters are covered too."""
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from chain_helpers import identical
from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format

CLUSTER_SIZES = [512 << i for i in range(13)]           # 512 .. 2M
REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64]
PREALLOC = ["off", "metadata", "falloc", "full"]
TOOLS = {"vdisk": VDISK_IMG, "qemu": QEMU_IMG}
IMG = "img.qcow2"
M = 1 << 20
CREATE_SIZE = 3 * M + 1536          # 96 L2 tables of 512-byte clusters
SOURCE = (2 * M + 1536, [(0, 65536, 1), (700 * 1024, 20480, 2), (1536 * 1024, 4096, 3),
                         (2 * M, 1536, 4)])
BASE = (1000448, [(0, 1024, 5), (1000448 - 4096, 4096, 6)])
RESIZE_TO = CREATE_SIZE
WORKERS = 8                         # mostly waiting for flushes


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("qcow2")


def run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def write_raw(path, spec):
    """A raw image of spec's size with (offset, length, byte) data."""
    size, extents = spec
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length, byte in extents:
            f.seek(off)
            f.write(bytes([byte]) * length)


def make(kind, exe, d, opts, prealloc, inputs):
    """Run one tool's command of kind in directory d; the result."""
    full = "%s,preallocation=%s" % (opts, prealloc)
    if kind == "create":
        args = ["create", "-q", "-f", "qcow2", "-o", full, IMG, str(CREATE_SIZE)]
    elif kind == "convert":
        args = ["convert", "-f", "raw", "-O", "qcow2", "-o", full, str(inputs / "src.raw"), IMG]
    else:
        shutil.copyfile(inputs / ("base-%s.qcow2" % opts), d / IMG)
        args = ["resize", "-q", "-f", "qcow2", "--preallocation=" + prealloc, IMG,
                str(RESIZE_TO)]
    return run([exe] + args, d)


def no_disk_size(out):
    return "\n".join(l for l in out.splitlines() if not l.startswith("disk size:"))


def reports(d):
    """What qemu-img says of the image in d."""
    return {"map": run([QEMU_IMG, "map", "--output=json", "-f", "qcow2", IMG], d).stdout,
            "info": no_disk_size(run([QEMU_IMG, "info", "-f", "qcow2", IMG], d).stdout),
            "file length": os.path.getsize(d / IMG)}


def same_data(map_json, a, b):
    """Do files a and b hold the same bytes where the map (the same for
    both) has guest data?  Then both images read the same."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for e in json.loads(map_json):
            if not e["data"] or "offset" not in e:
                continue
            fa.seek(e["offset"])
            fb.seek(e["offset"])
            if fa.read(e["length"]) != fb.read(e["length"]):
                return False
    return True


def differences(kind, work, inputs, cs, rb, prealloc):
    """Why vdisk's image of one combination is not qemu-img's (empty when
    it is), each reason naming the combination."""
    name = "%s cluster_size=%d refcount_bits=%d preallocation=%s" % (kind, cs, rb, prealloc)
    opts = "cluster_size=%d,refcount_bits=%d" % (cs, rb)
    dirs, outs = {}, {}
    for tool, exe in TOOLS.items():
        dirs[tool] = work / ("%s-%d-%d-%s" % (tool, cs, rb, prealloc))
        dirs[tool].mkdir()
        p = make(kind, exe, dirs[tool], opts, prealloc, inputs)
        if p.returncode != 0:
            return ["%s: %s failed: %s" % (name, tool, p.stderr.strip())]
    if identical(dirs["vdisk"] / IMG, dirs["qemu"] / IMG):
        # The same bytes and holes: qemu-img reports the same of both, and
        # its own image is clean.
        for d in dirs.values():
            shutil.rmtree(d)
        return []
    for tool in TOOLS:
        outs[tool] = reports(dirs[tool])
    bad = []
    p = run([QEMU_IMG, "check", "-f", "qcow2", IMG], dirs["vdisk"])
    if p.returncode != 0:
        bad.append("%s: qemu-img check of vdisk's image (exit %d):\n%s"
                   % (name, p.returncode, p.stdout + p.stderr))
    for what in ("map", "info", "file length"):
        if outs["vdisk"][what] != outs["qemu"][what]:
            bad.append("%s: %s differs\nvdisk: %s\nqemu:  %s"
                       % (name, what, outs["vdisk"][what], outs["qemu"][what]))
    if not bad and not same_data(outs["vdisk"]["map"], dirs["vdisk"] / IMG, dirs["qemu"] / IMG):
        bad.append("%s: content differs" % name)
    if not bad:
        for d in dirs.values():
            shutil.rmtree(d)
    return bad


def prepare(kind, work, cs):
    """The inputs of kind: the raw source of convert, or the bases of
    resize (one per refcount width, made by qemu-img with data in its
    first and its partial last cluster)."""
    inputs = work / "inputs"
    inputs.mkdir()
    if kind == "convert":
        write_raw(inputs / "src.raw", SOURCE)
    if kind == "resize":
        write_raw(inputs / "base.raw", BASE)
        for rb in REFCOUNT_BITS:
            opts = "cluster_size=%d,refcount_bits=%d" % (cs, rb)
            p = run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", "-o", opts, "base.raw",
                     "base-%s.qcow2" % opts], inputs)
            assert p.returncode == 0, p.stderr
    return inputs


@pytest.mark.parametrize("cs", CLUSTER_SIZES)
@pytest.mark.parametrize("kind", ["create", "convert", "resize"])
def test_prealloc_matrix(tmp_path, kind, cs):
    """Every refcount width and preallocation mode of one cluster size
    (in a directory of the file system the other tests use: whether a
    zeroed range reads as data in the map depends on it)."""
    work = tmp_path
    inputs = prepare(kind, work, cs)
    combos = [(rb, pa) for rb in REFCOUNT_BITS for pa in PREALLOC]
    with ThreadPoolExecutor(WORKERS) as pool:
        found = pool.map(lambda c: differences(kind, work, inputs, cs, *c), combos)
        bad = [b for f in found for b in f]
    assert not bad, "\n\n".join(bad[:6]) + ("\n(%d in all)" % len(bad))
