# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img create: the Formatting line, -o merging and help, sizes,
backing options for raw and every error, compared with qemu-img (each run
in its own empty directory)."""
import os
import subprocess

import pytest

from filemap import allocated_bytes
from conftest import VDISK_IMG, vimg
from test_cli import differential


def fresh(d):
    """setup() for differential: remove whatever the last run created."""
    def clean():
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
    return clean


def test_create_raw(tmp_path):
    img = tmp_path / "a.raw"
    p = vimg("create", "-f", "raw", img, "1G")
    assert p.returncode == 0
    assert p.stdout == "Formatting '%s', fmt=raw size=1073741824\n" % img
    assert os.path.getsize(img) == 1 << 30


def test_create_quiet_and_default_format(tmp_path):
    img = tmp_path / "b.raw"
    p = vimg("create", "-q", img, "1.5M")
    assert p.returncode == 0 and p.stdout == ""
    assert os.path.getsize(img) == 1572864


def test_create_options_printed_in_order(tmp_path):
    img = tmp_path / "c.raw"
    p = vimg("create", "-f", "raw", "-o", "preallocation=full", "-o", "nocow=on",
             img, "1M")
    assert p.stdout == ("Formatting '%s', fmt=raw size=1048576 nocow=on "
                        "preallocation=full\n" % img)
    assert allocated_bytes(img) >= 1 << 20


def test_create_size_from_option(tmp_path):
    img = tmp_path / "d.raw"
    p = vimg("create", "-f", "raw", "-o", "size=1M,size=2M", img)
    assert p.stdout == "Formatting '%s', fmt=raw size=2097152\n" % img
    assert os.path.getsize(img) == 2 << 20


def test_help_options():
    p = vimg("create", "-f", "raw", "-o", "help")
    assert p.returncode == 0
    assert p.stdout.startswith("Supported raw options:\n  size=<size>")


@pytest.mark.parametrize("args,msg", [
    (["x.raw"], "x.raw: Image creation needs a size parameter"),
    (["x.raw", "1x"], "Invalid image size specified. You may use k, M, G, T, "
                      "P or E suffixes for"),
    (["x.raw", "8E"], "Invalid image size specified. Must be between 0 and "
                      "9223372036854775807."),
    (["-b", "y.raw", "x.raw", "1M"],
     "x.raw: Backing file not supported for file format 'raw'"),
    (["-f", "foo", "x.raw", "1M"], "x.raw: Unknown file format 'foo'"),
    (["-o", "foo=bar", "x.raw", "1M"], "x.raw: Invalid parameter 'foo'"),
    (["-o", "size=1M", "x.raw", "2M"],
     "x.raw: The image size must be specified only once"),
])
def test_errors(tmp_path, args, msg):
    p = subprocess.run([VDISK_IMG, "create"] + args, capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.startswith("vdisk-img: %s\n" % msg)
    assert not (tmp_path / "x.raw").exists()


@pytest.mark.parametrize("args", [
    ["-f", "raw", "a.raw", "1G"], ["a.raw", "1.5k"], ["a.raw", "100"],
    ["a.raw", "513b"], ["-q", "a.raw", "1M"], ["a.raw"], ["a.raw", "1x"],
    ["a.raw", "--", "-1"], ["a.raw", "8E"], ["a.raw", "99999999999999999999999"],
    ["-f", "raw", "a.raw", "1G", "2G"], ["-b", "b.raw", "a.raw", "1G"],
    ["-f", "raw", "-b", "b.raw", "-F", "raw", "a.raw"], ["-F", "raw", "a.raw", "1M"],
    ["-u", "-f", "raw", "-b", "b.raw", "-F", "raw", "a.raw", "1M"],
    ["-f", "raw", "-o", "help"], ["-f", "raw", "-o", "?"], ["-o", "help"],
    ["-f", "raw", "-o", "help", "a.raw", "1G"], ["-f", "raw", "-o", "preallocation=off,help"],
    ["-f", "foo", "-o", "help"], ["-f", "foo", "a.raw", "1M"], ["-f", "raw,foo", "a.raw", "1M"],
    ["-f", "raw", "-o", "preallocation=off", "a.raw", "1G"],
    ["-f", "raw", "-o", "preallocation=falloc", "a.raw", "1M"],
    ["-f", "raw", "-o", "nocow=on,extent_size_hint=1M", "a.raw", "1G"],
    ["-f", "raw", "-o", "extent_size_hint=0,preallocation=off", "a.raw", "1M"],
    ["-f", "raw", "-o", "size=1M", "a.raw"], ["-f", "raw", "-o", "size=1M", "a.raw", "2M"],
    ["-f", "raw", "-o", "foo=bar", "a.raw", "2M"], ["-f", "raw", "-o", "preallocation=bad", "a.raw", "2M"],
    ["-f", "raw", "-o", "preallocation=metadata", "a.raw", "2M"],
    ["-f", "raw", "-o", "preallocation=off", "-o", "preallocation=full", "a.raw", "2M"],
    ["-f", "raw", "-o", "size=abc", "a.raw"], ["-f", "raw", "-o", "nocow=foo", "a.raw", "1M"],
    ["-f", "raw", "-o", "extent_size_hint=1x", "a.raw", "1M"],
    ["-f", "raw", "-o", "preallocation=off,,x", "a.raw", "1M"], ["-o", ",,", "a.raw", "1M"],
    ["-o", "", "a.raw", "1M"], ["-o", "a,", "a.raw", "1M"], ["-o", "a,,", "a.raw", "1M"],
    ["-f", "raw", "-o", "=x", "a.raw", "1M"], [], ["-f", "raw", "-o", "foo=bar"],
    ["--object", "secret,id=s,data=x", "a.raw", "1M"], ["a.raw", "1M", "-o", "preallocation=off"],
    ["-f", "raw", "-o", "help", "a.raw", "1M", "x"], ["-f", "raw", "a.raw", "1x", "2"],
    ["-Z", "a.raw", "1M"],
])
def test_differential(needs_qemu, tmp_path, args):
    differential("create", *args, cwd=tmp_path, setup=fresh(tmp_path))


def test_differential_unaligned_size(needs_qemu, tmp_path):
    """QEMU rounds raw sizes up to 512 bytes on disk but prints the size given."""
    differential("create", "a.raw", "100", cwd=tmp_path, setup=fresh(tmp_path))
    assert os.path.getsize(tmp_path / "a.raw") == 512
    differential("info", "a.raw", cwd=tmp_path)


def test_differential_too_large(needs_qemu, tmp_path):
    differential("create", "a.raw", "1E", cwd=tmp_path, setup=fresh(tmp_path))


def test_differential_file_help(needs_qemu, tmp_path):
    differential("create", "-f", "raw", "-o", "help", tmp_path / "x.raw")
