# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img map against qemu-img map 7.2, human and JSON, on the same
images: preallocated qcow2 (metadata/falloc/full, with and without
extended L2 and an external data file), images qemu-io wrote partly
(unaligned, zero and discarding writes), backing chains and raw images
with holes.  Both tools run in the image's directory with relative names,
so the file names they print are the same."""
import os
import shutil
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format

QEMU_IO = shutil.which("qemu-io")
TOOLS = {"v": VDISK_IMG, "q": QEMU_IMG}
OUTPUTS = (["--output=json"], ["--output=human"], [])
MB = 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")


def tool(exe, d, *args):
    """Run exe with args in directory d."""
    return subprocess.run([exe] + [str(a) for a in args], cwd=d, capture_output=True,
                          text=True, timeout=120)


def create(d, creator, fmt, img, size, opts="", backing=None):
    """Create img in d with creator ("v" or "q")."""
    args = ["create", "-q", "-f", fmt]
    if opts:
        args += ["-o", opts]
    if backing:
        args += ["-b", backing[0], "-F", backing[1]]
    p = tool(TOOLS[creator], d, *args, img, size)
    assert p.returncode == 0, p.stderr


def qio(d, img, fmt, *cmds):
    args = ["-f", fmt]
    for c in cmds:
        args += ["-c", c]
    p = tool(QEMU_IO, d, *args, img)
    assert p.returncode == 0 and "error" not in p.stdout.lower(), p.stdout + p.stderr


def assert_same_map(d, img, fmt, extra=()):
    """Every form of map prints the same in both tools (the program name
    aside in error messages)."""
    for out in OUTPUTS:
        args = ["map", "-f", fmt] + out + list(extra) + [img]
        v, q = tool(VDISK_IMG, d, *args), tool(QEMU_IMG, d, *args)
        assert (v.returncode, v.stdout) == (q.returncode, q.stdout), (args, v, q)
        assert v.stderr.replace("vdisk-img", "qemu-img") == q.stderr, (args, v, q)


# ---- preallocated qcow2 ----

DATA = {"none": "", "data_file": "data_file=d.raw",
        "data_file_raw": "data_file=d.raw,data_file_raw=on"}


@pytest.mark.parametrize("creator", ["q", "v"])
@pytest.mark.parametrize("size", ["3M", "1000448"])
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("ext_l2", [False, True])
@pytest.mark.parametrize("prealloc", ["metadata", "falloc", "full"])
def test_preallocated(tmp_path, prealloc, ext_l2, data, size, creator):
    """Preallocated clusters (zero-flagged subclusters with extended L2
    keep their offset), read by both tools whichever tool made them."""
    needs_vdisk_format("qcow2")
    opts = ",".join(filter(None, ["preallocation=" + prealloc,
                                  "extended_l2=on" if ext_l2 else "", DATA[data]]))
    create(tmp_path, creator, "qcow2", "img.qcow2", size, opts)
    assert_same_map(tmp_path, "img.qcow2", "qcow2")


@pytest.mark.parametrize("ext_l2", [False, True])
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("prealloc", ["metadata", "falloc"])
def test_preallocated_written(tmp_path, prealloc, data, ext_l2):
    """Preallocated images qemu-io then writes partly: the image still
    looks preallocated, so zeroes under data clusters show."""
    needs_vdisk_format("qcow2")
    opts = ",".join(filter(None, ["preallocation=" + prealloc,
                                  "extended_l2=on" if ext_l2 else "", DATA[data]]))
    create(tmp_path, "q", "qcow2", "img.qcow2", "4M", opts)
    qio(tmp_path, "img.qcow2", "qcow2", "write -P 0x11 1000 70000", "write -z 262144 65536",
        "write -P 0 393216 4096", "discard 1M 128k", "write -P 0x22 3000000 5000")
    assert_same_map(tmp_path, "img.qcow2", "qcow2")


# ---- images qemu-io writes partly ----

WRITES = {
    "unaligned": ["write -P 0x11 1000 70000", "write -P 0x22 200000 1",
                  "write -P 0x33 3000000 5000"],
    "zero": ["write -P 0x11 0 1M", "write -z 131072 65536", "write -z -u 262144 131072",
             "write -z 5000 3000", "write -z 2M 100000"],
    "discard": ["write -P 0x11 0 2M", "discard 65536 65536", "discard 300000 200000",
                "discard 1M 4096"],
    "zero_data": ["write -P 0 0 256k", "write -P 0x44 1M 64k", "write -P 0 1M 4096"],
    "mixed": ["write -P 0x11 1000 70000", "write -z 131072 65536",
              "write -z -u 200000 300000", "discard 1048576 131072",
              "write -P 0x33 2100000 5000", "write -P 0x44 3145728 4096"],
}
QCOW2_OPTS = ["", "compat=0.10", "cluster_size=4k", "cluster_size=512", "extended_l2=on",
              "extended_l2=on,cluster_size=16k", "data_file=d.raw",
              "data_file=d.raw,data_file_raw=on", "lazy_refcounts=on"]


@pytest.mark.parametrize("ops", list(WRITES))
@pytest.mark.parametrize("opts", QCOW2_OPTS)
def test_written_qcow2(tmp_path, opts, ops):
    """A partly written new cluster (its unwritten tail a hole of the
    file) is plain data unless the image looks preallocated."""
    needs_vdisk_format("qcow2")
    create(tmp_path, "q", "qcow2", "img.qcow2", "4M", opts)
    qio(tmp_path, "img.qcow2", "qcow2", *WRITES[ops])
    assert_same_map(tmp_path, "img.qcow2", "qcow2")
    assert_same_map(tmp_path, "img.qcow2", "qcow2", ["--start-offset=70000",
                                                     "--max-length=1000000"])


def test_compressed(tmp_path):
    """Compressed clusters: JSON without offset; the human form refuses."""
    needs_vdisk_format("qcow2")
    create(tmp_path, "q", "qcow2", "img.qcow2", "4M")
    qio(tmp_path, "img.qcow2", "qcow2", "write -P 0x11 0 64k",
        "write -c -P 0x22 1M 128k", "write -c -P 0 2M 64k")
    assert_same_map(tmp_path, "img.qcow2", "qcow2")


@pytest.mark.parametrize("ops", list(WRITES))
def test_written_raw(tmp_path, ops):
    needs_vdisk_format("raw")
    create(tmp_path, "q", "raw", "img.raw", "4M")
    qio(tmp_path, "img.raw", "raw", *WRITES[ops])
    assert_same_map(tmp_path, "img.raw", "raw")


# ---- backing chains ----

@pytest.mark.parametrize("top_opts", ["", "extended_l2=on", "cluster_size=4k",
                                      "extended_l2=on,preallocation=metadata",
                                      "extended_l2=on,preallocation=falloc", "data_file=t.raw"])
@pytest.mark.parametrize("base_fmt", ["qcow2", "raw"])
def test_chain(tmp_path, base_fmt, top_opts):
    """Ranges of each layer, zeroes hiding the backing file, and the part
    of a longer top beyond a short backing file."""
    needs_vdisk_format("qcow2")
    needs_vdisk_format(base_fmt)
    base = "base." + base_fmt
    create(tmp_path, "q", base_fmt, base, "3M")
    qio(tmp_path, base, base_fmt, "write -P 0xab 0 1M", "write -P 0xac 1500000 700000")
    create(tmp_path, "q", "qcow2", "top.qcow2", "5M", top_opts, (base, base_fmt))
    qio(tmp_path, "top.qcow2", "qcow2", "write -P 0xcd 1000 3000", "write -z 512k 64k",
        "discard 2M 256k", "write -P 0xef 4M 5000")
    assert_same_map(tmp_path, "top.qcow2", "qcow2")


def test_chain_three_layers(tmp_path):
    needs_vdisk_format("qcow2")
    create(tmp_path, "q", "qcow2", "a.qcow2", "2M")
    qio(tmp_path, "a.qcow2", "qcow2", "write -P 1 0 2M")
    create(tmp_path, "q", "qcow2", "b.qcow2", "3M", "extended_l2=on", ("a.qcow2", "qcow2"))
    qio(tmp_path, "b.qcow2", "qcow2", "write -P 2 100000 50000", "write -z 1M 64k")
    create(tmp_path, "q", "qcow2", "c.qcow2", "4M", "", ("b.qcow2", "qcow2"))
    qio(tmp_path, "c.qcow2", "qcow2", "write -P 3 0 4096", "discard 1M 64k",
        "write -P 4 3500000 1000")
    assert_same_map(tmp_path, "c.qcow2", "qcow2")


# ---- raw images with holes ----

@pytest.mark.parametrize("prealloc", ["off", "falloc", "full"])
@pytest.mark.parametrize("size", ["3M", "1000448"])
def test_raw_holes(tmp_path, prealloc, size):
    needs_vdisk_format("raw")
    create(tmp_path, "q", "raw", "img.raw", size, "preallocation=" + prealloc)
    with open(os.path.join(tmp_path, "img.raw"), "r+b") as f:
        f.seek(4096)
        f.write(b"\x11" * 8192)
        f.seek(500000)
        f.write(b"\x00" * 70000)
        f.seek(900000)
        f.write(b"\x22" * 10)
    assert_same_map(tmp_path, "img.raw", "raw")
