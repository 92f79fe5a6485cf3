# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img info: human and JSON output, options and errors, checked
against fixed expectations and against qemu-img on the same images."""
import json
import subprocess

import pytest

from conftest import qimg, vimg, write_pattern
from test_cli import differential


@pytest.fixture
def raw1g(tmp_path):
    """A sparse 1 GiB raw image with some data in it."""
    img = tmp_path / "a.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    write_pattern(img, 0, 4096, 0x11)
    return img


def test_human(raw1g):
    p = vimg("info", "-f", "raw", raw1g)
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0] == "image: %s" % raw1g
    assert lines[1] == "file format: raw"
    assert lines[2] == "virtual size: 1 GiB (1073741824 bytes)"
    assert lines[3] == "disk size: 4 KiB"
    assert len(lines) == 4


def test_json(raw1g):
    p = vimg("info", "--output=json", raw1g)
    assert p.returncode == 0
    d = json.loads(p.stdout)
    assert list(d) == ["virtual-size", "filename", "format", "actual-size",
                       "dirty-flag"]
    assert d["virtual-size"] == 1 << 30
    assert d["format"] == "raw"
    assert d["actual-size"] == 4096
    assert d["dirty-flag"] is False
    assert p.stdout.startswith('{\n    "virtual-size": 1073741824,\n')
    assert p.stdout.endswith("\n}\n")


def test_backing_chain_json_is_a_list(raw1g):
    p = vimg("info", "--backing-chain", "--output", "json", raw1g)
    d = json.loads(p.stdout)
    assert isinstance(d, list) and len(d) == 1
    assert d[0]["filename"] == str(raw1g)


def test_force_share_and_image_opts(raw1g):
    a = vimg("info", "-U", "-f", "raw", raw1g)
    b = vimg("info", "--image-opts", "driver=raw,file.filename=%s" % raw1g)
    c = vimg("info", "--force-share", "--image-opts",
             "driver=raw,file.driver=file,file.filename=%s" % raw1g)
    assert a.returncode == b.returncode == c.returncode == 0
    assert a.stdout == b.stdout == c.stdout


def test_bad_output(raw1g):
    p = vimg("info", "--output=xml", raw1g)
    assert p.returncode == 1
    assert p.stderr == ("vdisk-img: --output must be used with human or json "
                        "as argument.\n")


@pytest.mark.parametrize("args", [
    [], ["-f", "raw"], ["--output=json"], ["--output", "human"],
    ["--backing-chain"], ["--backing-chain", "--output=json"], ["-U"],
    ["--outp=json"], ["-f", "file"], ["--output=json", "-f", "file"],
])
def test_differential(needs_qemu, raw1g, args):
    differential("info", *args, raw1g)


@pytest.mark.parametrize("size", [0, 512, 1 << 20, 3 << 30, 1536 * 1024])
def test_differential_sizes(needs_qemu, tmp_path, size):
    img = tmp_path / "s.raw"
    with open(img, "wb") as f:
        f.truncate(size)
    differential("info", img)
    differential("info", "--output=json", img)


def test_differential_unaligned_size(needs_qemu, tmp_path):
    img = tmp_path / "odd.raw"
    with open(img, "wb") as f:
        f.truncate(5000)
    differential("info", img)


def test_differential_created_by_qemu(needs_qemu, tmp_path):
    img = tmp_path / "q.raw"
    qimg("create", "-q", "-f", "raw", "-o", "preallocation=full", img, "3M",
         check=True)
    differential("info", "--output=json", img)
    differential("info", img)


@pytest.mark.parametrize("args", [
    ["--output=xml"], ["-f", "qcow3"], ["--image-opts"],
    ["--output=foo", "-f", "raw", "--image-opts"],
])
def test_differential_errors(needs_qemu, raw1g, args):
    p = differential("info", *args, raw1g)
    assert p.returncode == 1


def test_image_opts_bare_word(needs_qemu, raw1g):
    p = differential("info", "--image-opts", "a.raw")
    assert "Cannot find device='a.raw' nor node-name='a.raw'" in p.stderr


def test_image_opts_missing_file(needs_qemu, tmp_path):
    p = differential("info", "--image-opts",
                     "driver=raw,file.filename=%s" % (tmp_path / "nope"))
    assert p.returncode == 1


def test_two_files(needs_qemu, raw1g):
    p = differential("info", raw1g, raw1g)
    assert "Expecting one image file name" in p.stderr


def test_locked_image_is_readable(needs_qemu, tmp_path, raw1g):
    """An image held open for writing by qemu-nbd can still be inspected."""
    sock = tmp_path / "nbd.sock"
    try:
        srv = subprocess.Popen(["qemu-nbd", "-f", "raw", "-k", str(sock), str(raw1g)],
                               stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        pytest.skip("qemu-nbd is not installed")
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        if not sock.exists():
            pytest.skip("qemu-nbd did not start")
        differential("info", raw1g)
        differential("info", "-U", "--output=json", raw1g)
    finally:
        srv.terminate()
        srv.wait()
