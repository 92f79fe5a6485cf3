# SPDX-License-Identifier: BSD-3-Clause
"""The file/host_device protocols, the raw format (offset/size windows),
null-co and the blkdebug filter, driven through vdisk-img and compared with
qemu-img on the same images."""
import json
import os
import shutil
import subprocess

import pytest

from filemap import allocated_bytes
from conftest import needs_vdisk_format, qimg, run, same_output, vimg, write_pattern

MiB = 1 << 20


def jname(obj):
    """A json: image name."""
    return "json:" + json.dumps(obj, separators=(",", ":"))


def window(path, offset=None, size=None):
    """json: name of a raw offset/size window into path."""
    o = {"driver": "raw", "file": {"driver": "file", "filename": str(path)}}
    if offset is not None:
        o["offset"] = offset
    if size is not None:
        o["size"] = size
    return jname(o)


def both(*args):
    """Run the same command with vdisk-img and qemu-img."""
    return vimg(*args), qimg(*args)


def assert_same(v, q):
    """Same exit status and output, modulo the program name."""
    assert v.returncode == q.returncode, (v.stderr, q.stderr)
    assert same_output(v.stdout, q.stdout), (v.stdout, q.stdout)
    assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)


@pytest.fixture
def patterned(tmp_path):
    """A 4 MiB raw file: 1 MiB of 0x11, a hole, 1 MiB of 0x33 at 3 MiB."""
    p = tmp_path / "pat.raw"
    with open(p, "wb") as f:
        f.truncate(4 * MiB)
    write_pattern(p, 0, MiB, 0x11)
    write_pattern(p, 3 * MiB, MiB, 0x33)
    return p


# ---- create: options, help, preallocation ----

def test_create_help_raw(needs_qemu):
    assert_same(*both("create", "-f", "raw", "-o", "help"))


def test_create_help_raw_with_file(needs_qemu, tmp_path):
    assert_same(*both("create", "-f", "raw", "-o", "help", tmp_path / "x.raw"))


def test_create_help_file(needs_qemu):
    assert_same(*both("create", "-f", "file", "-o", "help"))


@pytest.mark.parametrize("mode", ["off", "falloc", "full"])
def test_preallocation(needs_qemu, tmp_path, mode):
    v, q = tmp_path / "v.raw", tmp_path / "q.raw"
    r = vimg("create", "-f", "raw", "-o", "preallocation=" + mode, v, "1000000")
    assert r.returncode == 0, r.stderr
    qimg("create", "-f", "raw", "-o", "preallocation=" + mode, q, "1000000", check=True)
    sv, sq = os.stat(v), os.stat(q)
    # The size is rounded up to a sector, as qemu-img does.
    assert sv.st_size == sq.st_size == 1000448
    if mode == "off":
        # Only the first block is allocated (for O_DIRECT alignment probing).
        assert allocated_bytes(v) <= 64 * 1024
    else:
        assert allocated_bytes(v) >= sv.st_size
    assert_same(*both("compare", "-f", "raw", "-F", "raw", v, q))


@pytest.mark.parametrize("opt,msg", [
    ("preallocation=metadata", "Unsupported preallocation mode: metadata"),
    ("preallocation=bogus", "invalid parameter value: bogus"),
    ("extent_size_hint=5000000000", "Extent size hint is too large"),
])
def test_create_bad_options(needs_qemu, tmp_path, opt, msg):
    v = vimg("create", "-f", "raw", "-o", opt, tmp_path / "x.raw", "1M")
    q = qimg("create", "-f", "raw", "-o", opt, tmp_path / "y.raw", "1M")
    assert v.returncode == q.returncode == 1
    assert msg in v.stderr and msg in q.stderr


def test_create_nocow_and_extent_hint(tmp_path):
    # Unsupported on most file systems: silently ignored, as qemu-img.
    p = tmp_path / "x.raw"
    r = vimg("create", "-f", "raw", "-o", "nocow=on,extent_size_hint=4M", p, "1M")
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(p) == MiB


def test_resize_preallocation(needs_qemu, tmp_path):
    p = tmp_path / "x.raw"
    vimg("create", "-f", "raw", p, "1M", check=True)
    r = vimg("resize", "-f", "raw", "--preallocation=full", p, "4M")
    assert r.returncode == 0, r.stderr
    st = os.stat(p)
    assert st.st_size == 4 * MiB and allocated_bytes(p) >= 3 * MiB
    assert_same(*both("resize", "-f", "raw", "--shrink", "--preallocation=falloc",
                      p, "1M"))


# ---- measure ----

@pytest.mark.parametrize("size", ["1G", "1000", "0"])
def test_measure_size(needs_qemu, size):
    for fmt in ("human", "json"):
        assert_same(*both("measure", "-O", "raw", "--output=" + fmt, "--size", size))


def test_measure_from_image(needs_qemu, tmp_path):
    needs_vdisk_format("qcow2")
    q = tmp_path / "src.qcow2"
    qimg("create", "-f", "qcow2", q, "5M", check=True)
    assert_same(*both("measure", "-O", "raw", "-f", "qcow2", q))


# ---- the file protocol ----

def test_info_and_map_match(needs_qemu, patterned):
    for cmd in (["info", "-f", "raw"], ["map", "-f", "raw", "--output=json"],
                ["map", "-f", "raw"]):
        assert_same(*both(*cmd, patterned))


@pytest.mark.parametrize("opts,msg", [
    ("file.aio=native", "aio=native was specified, but it requires cache.direct=on"),
    ("file.aio=bogus", "invalid parameter value: bogus"),
    ("file.locking=maybe", "invalid parameter value: maybe"),
    ("discard=bogus", "Invalid discard option"),
])
def test_file_bad_open_options(needs_qemu, patterned, opts, msg):
    name = "driver=raw,file.driver=file,file.filename=%s,%s" % (patterned, opts)
    assert_same(*both("info", "--image-opts", name))
    assert msg in vimg("info", "--image-opts", name).stderr


def test_file_aio_accepted(patterned):
    for aio in ("threads", "io_uring"):
        name = "driver=raw,file.filename=%s,file.aio=%s" % (patterned, aio)
        r = vimg("info", "--image-opts", name)
        assert r.returncode == 0, r.stderr
    name = "driver=raw,file.filename=%s,file.aio=native,cache.direct=on" % patterned
    r = vimg("info", "--image-opts", name)
    assert r.returncode == 0, r.stderr


def test_missing_file(needs_qemu, tmp_path):
    assert_same(*both("info", tmp_path / "nonexistent"))


def test_file_driver_needs_regular_file(needs_qemu, tmp_path):
    name = jname({"driver": "raw", "file": {"driver": "file", "filename": str(tmp_path)}})
    assert_same(*both("info", name))


def test_host_device_needs_device(needs_qemu, patterned):
    name = jname({"driver": "raw", "file": {"driver": "host_device",
                                             "filename": str(patterned)}})
    assert_same(*both("info", name))


def test_cache_none(needs_qemu, tmp_path, patterned):
    """O_DIRECT (cache=none): alignment is probed; unaligned requests are
    bounced by the core."""
    out = tmp_path / "out.raw"
    r = vimg("convert", "-t", "none", "-T", "none", "-f", "raw", "-O", "raw",
             patterned, out)
    assert r.returncode == 0, r.stderr
    assert_same(*both("compare", "-f", "raw", "-F", "raw", patterned, out))
    name = "driver=raw,file.filename=%s,cache.direct=on" % patterned
    v = vimg("map", "--output=json", "--image-opts", name)
    q = qimg("map", "--output=json", "--image-opts", name)
    assert_same(v, q)


def test_cache_none_unaligned_file(needs_qemu, tmp_path):
    """A file whose size is not a multiple of the O_DIRECT alignment."""
    p = tmp_path / "odd.raw"
    with open(p, "wb") as f:
        f.write(b"\x5a" * 5000)
    out = tmp_path / "out.raw"
    r = vimg("convert", "-T", "none", "-f", "raw", "-O", "raw", p, out)
    assert r.returncode == 0, r.stderr
    with open(out, "rb") as f:
        data = f.read()
    assert data[:5000] == b"\x5a" * 5000 and not data[5000:].strip(b"\0")


# ---- raw offset/size windows ----

@pytest.mark.parametrize("offset,size", [
    (None, None), (4096, None), (1000, None), (MiB, 2 * MiB), (3 * MiB, MiB),
    (512, 8192), (4 * MiB, None),
])
def test_raw_window_info(needs_qemu, patterned, offset, size):
    name = window(patterned, offset, size)
    v = vimg("info", "--output=json", name)
    q = qimg("info", "--output=json", name)
    assert v.returncode == 0 and q.returncode == 0, (v.stderr, q.stderr)
    assert json.loads(v.stdout)["virtual-size"] == json.loads(q.stdout)["virtual-size"]


@pytest.mark.parametrize("offset,size", [
    (512, 1000), (512, 4 * MiB), (5 * MiB, None), (2**64 - 1, 512),
])
def test_raw_window_errors(needs_qemu, patterned, offset, size):
    assert_same(*both("info", window(patterned, offset, size)))


@pytest.mark.parametrize("offset,size", [(MiB - 4096, 8192), (3 * MiB, MiB), (0, 2 * MiB)])
def test_raw_window_map(needs_qemu, patterned, offset, size):
    assert_same(*both("map", "--output=json", window(patterned, offset, size)))


@pytest.mark.parametrize("offset,size", [(MiB - 4096, 8192), (3 * MiB + 512, 512 * 3)])
def test_raw_window_data(needs_qemu, tmp_path, patterned, offset, size):
    """Converting a window copies exactly those bytes of the file."""
    out = tmp_path / "out.raw"
    r = vimg("convert", "-O", "raw", window(patterned, offset, size), out)
    assert r.returncode == 0, r.stderr
    with open(patterned, "rb") as f:
        f.seek(offset)
        want = f.read(size)
    with open(out, "rb") as f:
        assert f.read() == want
    # qemu-img reads the window the same way.
    assert qimg("compare", window(patterned, offset, size), "-F", "raw",
                out).returncode == 0


def test_raw_window_write(needs_qemu, tmp_path, patterned):
    """Writing through a window lands at offset in the file, nowhere else."""
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(b"\x77" * 8192)
    r = vimg("convert", "-n", "-f", "raw", src, window(patterned, 2 * MiB, 8192))
    assert r.returncode == 0, r.stderr
    with open(patterned, "rb") as f:
        data = f.read()
    assert data[2 * MiB:2 * MiB + 8192] == b"\x77" * 8192
    assert data[:MiB] == b"\x11" * MiB
    assert not data[MiB:2 * MiB].strip(b"\0")
    assert not data[2 * MiB + 8192:3 * MiB].strip(b"\0")


def test_raw_window_cannot_resize(needs_qemu, patterned):
    v = vimg("resize", window(patterned, 0, MiB), "2M")
    q = qimg("resize", window(patterned, 0, MiB), "2M")
    assert v.returncode == q.returncode != 0
    assert "Cannot resize fixed-size raw disks" in v.stderr


# ---- block devices (loop) ----

@pytest.fixture
def loopdev(tmp_path):
    """A 16 MiB loop device over a temporary file."""
    losetup = shutil.which("losetup")
    if not losetup:
        pytest.skip("losetup is not installed")
    backing = tmp_path / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(16 * MiB)
    write_pattern(backing, MiB, MiB, 0x42)
    p = run([losetup, "-f", "--show", str(backing)])
    if p.returncode != 0:
        pytest.skip("no loop device available: " + p.stderr.strip())
    dev = p.stdout.strip()
    yield dev
    run([losetup, "-d", dev])


def test_loop_info_map(needs_qemu, loopdev):
    for cmd in (["info", "-f", "raw"], ["info", "-f", "raw", "--output=json"],
                ["map", "-f", "raw", "--output=json"]):
        assert_same(*both(*cmd, loopdev))


def test_loop_host_device_prefix(needs_qemu, loopdev):
    assert_same(*both("info", "-f", "raw", "host_device:" + loopdev))


def test_loop_file_driver_refused(needs_qemu, loopdev):
    name = jname({"driver": "raw", "file": {"driver": "file", "filename": loopdev}})
    assert_same(*both("info", name))


def test_loop_create(needs_qemu, loopdev):
    assert_same(*both("create", "-f", "raw", loopdev, "100M"))
    assert_same(*both("create", "-f", "raw", loopdev, "1M"))
    v = vimg("create", "-f", "raw", "-o", "preallocation=full", loopdev, "1M")
    assert v.returncode != 0


def test_loop_resize(needs_qemu, loopdev):
    assert_same(*both("resize", "-f", "raw", loopdev, "32M"))


def test_loop_convert_roundtrip(needs_qemu, tmp_path, loopdev):
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(16 * MiB)
    write_pattern(src, 5 * MiB, 3 * MiB, 0x99)
    for t in ("writeback", "none"):
        r = vimg("convert", "-n", "-t", t, "-f", "raw", "-O", "raw", src, loopdev)
        assert r.returncode == 0, r.stderr
        assert qimg("compare", "-f", "raw", "-F", "raw", src, loopdev).returncode == 0


# ---- null-co ----

@pytest.mark.parametrize("name", [
    "null-co://", "null-aio://", "null-co://x",
    jname({"driver": "null-co", "size": 1000}),
    jname({"driver": "null-co", "size": "1M", "read-zeroes": True, "latency-ns": 10}),
    jname({"driver": "null-co", "bogus": 1}),
])
def test_null_info(needs_qemu, name):
    v, q = both("info", name)
    if name.startswith("json:") and q.returncode == 0:
        # Known difference: qemu-img re-prints a json: name that cannot be
        # reduced to a file name in its own key order; vdisk prints the
        # protocol's name.  Everything after the image line must match.
        assert v.returncode == 0, v.stderr
        assert v.stdout.split("\n")[1:] == q.stdout.split("\n")[1:]
        return
    assert_same(v, q)


@pytest.mark.parametrize("rz", [True, False])
def test_null_map(needs_qemu, rz):
    name = jname({"driver": "null-co", "size": 65536, "read-zeroes": rz})
    assert_same(*both("map", "--output=json", name))


# ---- blkdebug ----

def blkdebug_target(path, rules, fmt="raw"):
    return jname({"driver": fmt, "file": {
        "driver": "blkdebug", "inject-error": rules,
        "image": {"driver": "file", "filename": str(path)}}})


@pytest.fixture
def copy_pair(tmp_path):
    src, dst = tmp_path / "src.raw", tmp_path / "dst.raw"
    with open(src, "wb") as f:
        f.write(b"\x01" * (256 * 1024))
    with open(dst, "wb") as f:
        f.truncate(256 * 1024)
    return src, dst


@pytest.mark.parametrize("err,text", [(28, "No space left on device"),
                                      (5, "Input/output error")])
def test_blkdebug_write_error(needs_qemu, copy_pair, err, text):
    src, dst = copy_pair
    tgt = blkdebug_target(dst, [{"event": "write_aio", "errno": err}])
    v = vimg("convert", "-n", "-f", "raw", "-O", "raw", src, tgt)
    q = qimg("convert", "-n", "-f", "raw", "-O", "raw", src, tgt)
    assert q.returncode == 1
    assert v.returncode == 1
    assert text in v.stderr
    assert "error while writing" in v.stderr
    assert v.stderr.count("\n") == 1, v.stderr      # one clear line


def test_blkdebug_event_none(needs_qemu, copy_pair):
    """event=none arms the rule at open: the first write fails."""
    src, dst = copy_pair
    tgt = blkdebug_target(dst, [{"event": "none", "iotype": "write"}])
    v = vimg("convert", "-n", "-f", "raw", "-O", "raw", src, tgt)
    assert v.returncode == 1 and "Input/output error" in v.stderr


def test_blkdebug_read_error(needs_qemu, tmp_path, copy_pair):
    src, _ = copy_pair
    name = jname({"driver": "raw", "file": {
        "driver": "blkdebug", "inject-error": [{"event": "read_aio", "errno": 5}],
        "image": {"driver": "file", "filename": str(src)}}})
    v = vimg("convert", "-O", "raw", name, tmp_path / "out.raw")
    assert v.returncode == 1 and "Input/output error" in v.stderr


def test_blkdebug_once_and_nth(copy_pair):
    """once: only one request fails; with nth=1000 nothing matches."""
    src, dst = copy_pair
    tgt = blkdebug_target(dst, [{"event": "write_aio", "errno": 28, "nth": 1000}])
    r = vimg("convert", "-n", "-f", "raw", "-O", "raw", src, tgt)
    assert r.returncode == 0, r.stderr


def test_blkdebug_config_file(needs_qemu, tmp_path, copy_pair):
    src, dst = copy_pair
    conf = tmp_path / "bd.conf"
    conf.write_text('# fail writes\n[inject-error]\nevent = "write_aio"\n'
                    'errno = "28"\n')
    tgt = "blkdebug:%s:%s" % (conf, dst)
    v = vimg("convert", "-n", "-f", "raw", "-O", "raw", src, tgt)
    q = qimg("convert", "-n", "-f", "raw", "-O", "raw", src, tgt)
    assert v.returncode == q.returncode == 1
    assert "No space left on device" in v.stderr


def test_blkdebug_passthrough(needs_qemu, copy_pair):
    src, dst = copy_pair
    assert_same(*both("info", "-f", "raw", "blkdebug::%s" % src))
    r = vimg("convert", "-n", "-f", "raw", "-O", "raw", src, "blkdebug::%s" % dst)
    assert r.returncode == 0, r.stderr
    assert qimg("compare", "-f", "raw", "-F", "raw", src, dst).returncode == 0


@pytest.mark.parametrize("rules", [
    [{"event": "bogus"}], [{"errno": 5}], [{"event": "none", "iotype": "sideways"}],
])
def test_blkdebug_bad_rules(needs_qemu, copy_pair, rules):
    src, _ = copy_pair
    v, q = both("info", blkdebug_target(src, rules))
    assert v.returncode == q.returncode == 1
    assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)


def test_blkdebug_bad_names(needs_qemu, copy_pair):
    src, _ = copy_pair
    assert_same(*both("info", "blkdebug:%s" % src))
    assert_same(*both("info", "blkdebug:/nonexistent.conf:%s" % src))
