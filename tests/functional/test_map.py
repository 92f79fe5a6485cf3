# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img map on sparse raw images: merged ranges in human and JSON
form, --start-offset/--max-length, errors; compared with qemu-img."""
import json

import pytest

from conftest import vimg, write_pattern
from test_cli import differential

MiB = 1 << 20


@pytest.fixture
def sparse(tmp_path):
    """10 MiB raw image: data at 1 MiB (8 KiB) and 3.125 MiB (192 KiB), and
    at the very end (64 KiB), holes elsewhere."""
    img = tmp_path / "s.raw"
    with open(img, "wb") as f:
        f.truncate(10 * MiB)
    write_pattern(img, MiB, 8192, 0x78)
    write_pattern(img, 3276800, 196608, 0x55)
    write_pattern(img, 10 * MiB - 65536, 65536, 0x33)
    return img


def entries(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_json_ranges(sparse):
    e = entries(vimg("map", "-f", "raw", "--output=json", sparse))
    assert [(x["start"], x["length"], x["data"], x["zero"]) for x in e] == [
        (0, MiB, False, True),
        (MiB, 8192, True, False),
        (MiB + 8192, 3276800 - MiB - 8192, False, True),
        (3276800, 196608, True, False),
        (3276800 + 196608, 10 * MiB - 65536 - 3276800 - 196608, False, True),
        (10 * MiB - 65536, 65536, True, False),
    ]
    assert all(x["depth"] == 0 and x["present"] for x in e)
    data = [x for x in e if x["data"]]
    assert all(x["offset"] == x["start"] for x in data)


def test_json_layout(sparse):
    p = vimg("map", "-f", "raw", "--output=json", "--max-length=4096", sparse)
    assert p.stdout.startswith('[{ "start": 0, "length": 4096, "depth": 0, '
                               '"present": true, "zero": true, "data": false')
    assert p.stdout.endswith("}]\n")


def test_human_lists_data_only(sparse):
    p = vimg("map", "-f", "raw", sparse)
    assert p.returncode == 0
    assert p.stdout.splitlines() == [
        "Offset          Length          Mapped to       File",
        "0x100000        0x2000          0x100000        %s" % sparse,
        "0x320000        0x30000         0x320000        %s" % sparse,
        "0x9f0000        0x10000         0x9f0000        %s" % sparse,
    ]


def test_start_and_max_length(sparse):
    e = entries(vimg("map", "-f", "raw", "--output=json",
                     "--start-offset=1050000", "--max-length", "100", sparse))
    assert e == [{"start": 1050000, "length": 100, "depth": 0, "present": True,
                  "zero": False, "data": True, "offset": 1050000}]


def test_empty_range_prints_one_entry(sparse):
    e = entries(vimg("map", "-f", "raw", "--output=json",
                     "--start-offset=20M", sparse))
    assert e == [{"start": 20 * MiB, "length": 0, "depth": 0, "present": False,
                  "zero": False, "data": False}]
    p = vimg("map", "-f", "raw", "--max-length=0", sparse)
    assert p.stdout == "Offset          Length          Mapped to       File\n"


def test_bad_offsets(sparse):
    p = vimg("map", "--start-offset=abc", sparse)
    assert p.returncode == 1
    assert p.stderr == (
        "vdisk-img: Invalid start offset specified. You may use k, M, G, T, P "
        "or E suffixes for\nvdisk-img: kilobytes, megabytes, gigabytes, "
        "terabytes, petabytes and exabytes.\n")
    p = vimg("map", "--max-length=8E", sparse)
    assert p.stderr == ("vdisk-img: Invalid max length specified. Must be "
                        "between 0 and 9223372036854775807.\n")


@pytest.mark.parametrize("args", [
    [], ["-f", "raw"], ["--start-offset=1M"], ["--max-length=3M"],
    ["--start-offset=1050000", "--max-length", "100"],
    ["--start-offset=4k", "--max-length=4k"], ["--max-length=0"],
    ["--start-offset=10M"], ["--start-offset=64M"], ["-U"],
])
def test_differential_human(needs_qemu, sparse, args):
    differential("map", *args, sparse)


@pytest.mark.parametrize("args", [[], ["--max-length=3M"]])
def test_differential_json_hole_at_end(needs_qemu, tmp_path, args):
    img = tmp_path / "h.raw"
    with open(img, "wb") as f:
        f.truncate(4 * MiB)
    write_pattern(img, MiB, 4096, 1)
    differential("map", "--output=json", *args, img)


@pytest.mark.parametrize("args", [
    [], ["--start-offset=1M", "--max-length=3M"],
    ["--start-offset=1050000", "--max-length", "100"],
    ["--start-offset=10M"], ["--start-offset=3M", "--max-length=1"],
])
def test_differential_json(needs_qemu, sparse, args):
    differential("map", "--output=json", *args, sparse)


def test_differential_all_data(needs_qemu, tmp_path):
    img = tmp_path / "full.raw"
    img.write_bytes(b"\1" * (2 * MiB))
    differential("map", img)
    differential("map", "--output=json", img)


def test_differential_image_opts(needs_qemu, sparse):
    differential("map", "--image-opts", "driver=raw,file.filename=%s" % sparse)


@pytest.mark.parametrize("args", [
    ["--start-offset=abc"], ["--start-offset=-1"], ["--max-length=1x"],
    ["--max-length=8E"], ["--start-offset=8E"], ["--output=xml"],
])
def test_differential_errors(needs_qemu, sparse, args):
    p = differential("map", *args, sparse)
    assert p.returncode == 1


def test_differential_missing(needs_qemu, tmp_path):
    differential("map", tmp_path / "nope")
