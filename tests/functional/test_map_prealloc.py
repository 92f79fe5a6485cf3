# SPDX-License-Identifier: BSD-3-Clause
"""Preallocated images against qemu-img 7.2: raw files and qcow2 images
(with and without an external data file) that vdisk-img create
preallocates are allocated as QEMU allocates them (same length, same
blocks), and map (JSON and human) and info print what qemu-img prints,
each tool reading either tool's image."""
import os
import subprocess

import pytest

from filemap import allocation as file_allocation
from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format

TOOLS = {"v": VDISK_IMG, "q": QEMU_IMG}
REPORTS = (("map", "--output=json"), ("map",), ("info",), ("info", "--output=json"))
DATA_OPTS = ["", "data_file_raw=on", "preallocation=metadata", "preallocation=falloc",
             "preallocation=full", "data_file_raw=on,preallocation=falloc",
             "data_file_raw=on,preallocation=full"]
# 3M is cluster aligned; 1000448 (512-aligned) ends inside a cluster.
SIZES = ["3M", "1000448"]


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    pass


def create(tmp_path, fmt, opts, size, img):
    """Create img with each tool in a directory of its own (data_file names
    are relative); returns {tool: directory}."""
    dirs = {}
    for t, exe in TOOLS.items():
        d = tmp_path / t
        d.mkdir()
        p = subprocess.run([exe, "create", "-q", "-f", fmt, "-o", opts, img, size], cwd=d,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        dirs[t] = d
    return dirs


def allocation(path):
    """Length and allocated ranges (not st_blocks: that counts the file
    system's extent metadata too)."""
    return file_allocation(path)


def no_disk_size(out):
    return "\n".join(l for l in out.splitlines()
                     if "disk size" not in l and "actual-size" not in l)


def reports(dirs, img, fmt):
    """{(report, reader, image's creator): output} for every report."""
    outs = {}
    for args in REPORTS:
        for reader, exe in TOOLS.items():
            for creator, d in dirs.items():
                p = subprocess.run([exe] + list(args) + ["-f", fmt, img], cwd=d,
                                   capture_output=True, text=True)
                assert p.returncode == 0, p.stderr
                outs[(args, reader, creator)] = p.stdout
    return outs


def mismatches(outs, report, filt=lambda o: o, cross=True):
    """(reader, creator) pairs whose output of report differs from
    qemu-img's on the same image, or with cross, on QEMU's image."""
    return sorted((r, c) for (a, r, c), o in outs.items()
                  if a == report and filt(o) != filt(outs[(report, "q", "q" if cross else c)]))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("prealloc", ["off", "falloc", "full"])
def test_raw_prealloc(tmp_path, prealloc, size):
    """Fallocated ranges read as zero (SEEK_HOLE treats unwritten extents
    as holes), written ones as data, in both tools."""
    needs_vdisk_format("raw")
    dirs = create(tmp_path, "raw", "preallocation=" + prealloc, size, "img.raw")
    assert allocation(dirs["v"] / "img.raw") == allocation(dirs["q"] / "img.raw")
    outs = reports(dirs, "img.raw", "raw")
    for rep in REPORTS:
        assert mismatches(outs, rep) == [], (rep, outs)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("opts", DATA_OPTS)
def test_data_file_prealloc(tmp_path, opts, size):
    """The external data file is created empty and grown by the
    preallocation (data_file_raw implies metadata), after the
    copy-on-write tail of an unaligned end, exactly as QEMU does."""
    needs_vdisk_format("qcow2")
    dirs = create(tmp_path, "qcow2", ",".join(filter(None, ["data_file=d.raw", opts])), size,
                  "img.qcow2")
    for f in ("img.qcow2", "d.raw"):
        assert allocation(dirs["v"] / f) == allocation(dirs["q"] / f), f
    raw = reports(dirs, "d.raw", "raw")
    for rep in REPORTS:
        assert mismatches(raw, rep) == [], (rep, raw)
    outs = reports(dirs, "img.qcow2", "qcow2")
    for rep in REPORTS:
        bad = mismatches(outs, rep, no_disk_size if rep[0] == "info" else lambda o: o)
        assert bad == [], (rep, outs)
    # disk size too: the image file only, not the data file (as QEMU 7.2)
    assert mismatches(outs, ("info",)) == [], outs


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("prealloc", ["metadata", "falloc", "full"])
def test_qcow2_prealloc(tmp_path, prealloc, size):
    """Preallocation in the image file itself: same length always; same
    blocks (metadata: the zeroed copy-on-write tail of an unaligned end)."""
    needs_vdisk_format("qcow2")
    dirs = create(tmp_path, "qcow2", "preallocation=" + prealloc, size, "img.qcow2")
    va, qa = allocation(dirs["v"] / "img.qcow2"), allocation(dirs["q"] / "img.qcow2")
    assert va == qa
    outs = reports(dirs, "img.qcow2", "qcow2")
    for rep in REPORTS:
        bad = mismatches(outs, rep, no_disk_size if rep[0] == "info" else lambda o: o,
                         cross=True)
        assert bad == [], (rep, outs)
