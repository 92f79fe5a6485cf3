# SPDX-License-Identifier: BSD-3-Clause
"""Helpers of the persistent-bitmap tests: images with bitmaps made by
qemu-img, and the dirty bits of a bitmap as qemu reads them (qemu-nbd -B
exports it, nbdinfo --map lists it)."""
import json
import os
import re
import shutil

import pytest

from conftest import qimg, run

NBDINFO = shutil.which("nbdinfo")
QEMU_NBD = shutil.which("qemu-nbd")


def needs_map():
    if NBDINFO is None or QEMU_NBD is None:
        pytest.skip("nbdinfo or qemu-nbd is not installed")


def dirty_map(img, name):
    """[(offset, length, dirty)] of bitmap name, as qemu reads it."""
    needs_map()
    p = run([NBDINFO, "--map=qemu:dirty-bitmap:" + name, "--", "[", QEMU_NBD, "-r",
             "-f", "qcow2", "-B", name, str(img), "]"], check=True)
    out = []
    for line in p.stdout.splitlines():
        f = line.split()
        out.append((int(f[0]), int(f[1]), f[2] == "1"))
    return out


def bitmaps(img):
    """The bitmap list qemu-img info shows."""
    info = json.loads(qimg("info", "--output=json", "-U", img, check=True).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


def norm(text, *imgs):
    """Output with node names (#blockNNN), program names and the image
    names made comparable."""
    text = re.sub(r"#block\d+", "#block", text).replace("vdisk-img", "qemu-img")
    for i, img in enumerate(imgs):
        text = text.replace(str(img), "IMG%d" % i)
    return text


def make(path, size="64M", cmds=(), opts=None):
    """A qcow2 image with bitmaps added by qemu-img: cmds are lists of
    arguments of qemu-img bitmap (without the file and name order:
    [*options, name])."""
    args = ["create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    qimg(*args, path, size, check=True)
    for c in cmds:
        qimg("bitmap", *c[:-1], path, c[-1], check=True)
    return path


def twin(tmp_path, cmds, size="64M", opts=None):
    """Two identical images (vdisk's and qemu's), made by qemu-img."""
    a = make(tmp_path / "v.qcow2", size, cmds, opts)
    b = tmp_path / "q.qcow2"
    shutil.copy(a, b)
    return a, b


def same_bits(a, b, names):
    for n in names:
        assert dirty_map(a, n) == dirty_map(b, n), n


def file_size(p):
    return os.path.getsize(p)
