# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img measure: --size and file sources, -O/-o checks, human and JSON
output and every argument error, compared with qemu-img."""
import json

import pytest

from conftest import vimg, write_pattern
from test_cli import differential


@pytest.fixture
def src(tmp_path):
    img = tmp_path / "s.raw"
    with open(img, "wb") as f:
        f.truncate(10 << 20)
    write_pattern(img, 1 << 20, 65536, 7)
    return img


def test_size_human():
    p = vimg("measure", "--size", "1G")
    assert p.returncode == 0
    assert p.stdout == ("required size: 1073741824\n"
                        "fully allocated size: 1073741824\n")


def test_size_json():
    p = vimg("measure", "--size", "1G", "-O", "raw", "--output=json")
    assert p.returncode == 0
    assert p.stdout == ('{\n    "required": 1073741824,\n'
                        '    "fully-allocated": 1073741824\n}\n')
    assert json.loads(p.stdout)["fully-allocated"] == 1 << 30


def test_file(src):
    p = vimg("measure", "-f", "raw", src)
    assert p.returncode == 0
    assert p.stdout.splitlines()[1] == "fully allocated size: 10485760"


@pytest.mark.parametrize("args,msg", [
    ([], "Either --size N or one filename must be specified."),
    (["--size", "1x"], "Invalid image size specified. You may use k, M, G, T, P "
                       "or E suffixes for"),
    (["-O", "foo", "--size", "1G"], "Unknown file format 'foo'"),
    (["-O", "raw", "-o", "foo=bar", "--size", "1G"], "Invalid parameter 'foo'"),
    (["-f", "raw", "--size", "1G"],
     "--image-opts, -f, and -l require a filename argument."),
    (["-o", ",,", "--size", "1G"], "Invalid option list: ,,"),
    (["--output=foo", "--size", "1G"],
     "--output must be used with human or json as argument."),
])
def test_errors(args, msg):
    p = vimg("measure", *args)
    assert p.returncode == 1
    assert p.stderr.startswith("vdisk-img: " + msg + "\n")


@pytest.mark.parametrize("args", [
    ["--size", "1G"], ["--size", "1G", "-O", "raw"], ["--size", "0"],
    ["--size", "1G", "-O", "raw", "--output=json"],
    ["--size", "1G", "--size", "2G"], ["--size", "1G", "-o", "size=2G"],
    ["--size", "1G", "-O", "raw", "-o", "preallocation=full,nocow=on"],
    ["--size", "1G", "-O", "raw", "-o", "preallocation=bad"],
    ["--size", "1x"], ["--size", "-1"], ["--size", "8E"], ["-O", "foo", "--size", "1G"],
    ["-O", "raw", "-o", "foo=bar", "--size", "1G"], ["-O", "raw", "-o", "help"],
    ["-O", "raw", "-o", "help", "--size", "1G"], ["-O", "file", "--size", "1G"],
    ["-O", "raw", "-o", "size=abc", "--size", "1G"], ["-o", ",,", "--size", "1G"],
    ["-o", "", "--size", "1G"], ["--output=foo", "--size", "1G"], [],
    ["-f", "raw", "--size", "1G"], ["--image-opts"], ["-l", "x"], ["-O", "foo"],
])
def test_differential_size(needs_qemu, args):
    differential("measure", *args)


@pytest.mark.parametrize("args", [
    [], ["-f", "raw"], ["--output=json"], ["-O", "raw", "--output", "json"],
    ["-U", "-f", "raw"], ["--size", "1G"], ["-l", "snap"], ["-O", "foo"],
    ["-O", "raw", "-o", "foo=bar"], ["-f", "raw", "--image-opts"],
])
def test_differential_file(needs_qemu, src, args):
    differential("measure", *args, src)


def test_differential_other_forms(needs_qemu, src, tmp_path):
    differential("measure", "--image-opts", "driver=raw,file.filename=%s" % src)
    differential("measure", src, src)
    differential("measure", "-O", "raw", tmp_path / "nope")
