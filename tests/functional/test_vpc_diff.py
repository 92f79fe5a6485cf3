# SPDX-License-Identifier: BSD-3-Clause
"""Differencing VHDs (disk type 4) read with their parent, which the
dynamic header names by parent locators and its Unicode name (qemu-img 7.2
opens them without a parent).  Children are built by diffimg.py over
parents qemu-img made; what a child must read is built in Python (the
parent's bytes with the child's present sectors over them) and judged byte
for byte, by vdisk-img compare and, after a convert to qcow2, by qemu-img
compare.  Hostile locators and chains end with a clear error under a memory
and CPU limit."""
import hashlib
import json
import os
import shutil
import uuid

import pytest

from conftest import BUILD, VDISK_IMG, qimg, run, vimg, needs_vdisk_format
import diffimg as d

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
M = d.M
LIMIT = ["prlimit", "--as=1073741824", "--cpu=20"]
SECTORS = {0: b"\x21" * 512, 5: b"\x22" * 512, 4096: b"\x23" * 512, 4097: b"\x24" * 512,
           15000: b"\x25" * 512}


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("vpc")


def make_parent(path):
    qimg("create", "-q", "-f", "vpc", path, "10M", check=True)
    run([QEMU_IO, "-f", "vpc", "-c", "write -P 0x11 0 5M", "-c", "write -P 0x12 7M 4096",
         str(path)], check=True)


def raw_of(img, out):
    p = vimg("convert", "-O", "raw", img, out)
    assert p.returncode == 0, p.stderr
    return d.read(out)


def sha(path):
    return hashlib.sha256(d.read(path)).hexdigest()


def utf16le(s):
    return s.encode("utf-16-le")


@pytest.fixture
def chain(tmp_path):
    """p.vhd (qemu-img) and c.vhd over it; returns (dir, expected bytes)."""
    make_parent(tmp_path / "p.vhd")
    d.make_vhd_child(tmp_path / "p.vhd", tmp_path / "c.vhd", SECTORS)
    praw = raw_of(tmp_path / "p.vhd", tmp_path / "p.raw")
    return tmp_path, d.vhd_expected(praw, SECTORS, len(praw))


def test_read_through_parent(chain):
    tmp, exp = chain
    assert raw_of(tmp / "c.vhd", tmp / "c.raw") == exp
    (tmp / "exp.raw").write_bytes(exp)
    p = vimg("compare", "-f", "vpc", "-F", "raw", tmp / "c.vhd", tmp / "exp.raw")
    assert p.returncode == 0 and "Images are identical." in p.stdout, p.stdout + p.stderr
    p = vimg("convert", "-O", "qcow2", tmp / "c.vhd", tmp / "c.qcow2")
    assert p.returncode == 0, p.stderr
    p = qimg("compare", "-f", "qcow2", "-F", "raw", tmp / "c.qcow2", tmp / "exp.raw")
    assert p.returncode == 0, p.stdout + p.stderr


def test_info_names_parent(chain):
    tmp, _ = chain
    p = vimg("info", tmp / "c.vhd")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "backing file: p.vhd (actual path: %s)" % (tmp / "p.vhd") in p.stdout, p.stdout
    assert "backing file format: vpc" in p.stdout
    assert "disk type: differencing" in p.stdout and "parent name: p.vhd" in p.stdout
    j = json.loads(vimg("info", "--output=json", tmp / "c.vhd").stdout)
    assert j["backing-filename"] == "p.vhd"
    puid = d.vhd_footer_of(tmp / "p.vhd")[68:84].hex()
    assert j["format-specific"]["data"]["parent-uuid"].replace("-", "") == puid
    chain_j = json.loads(vimg("info", "--output=json", "--backing-chain",
                              tmp / "c.vhd").stdout)
    assert [os.path.basename(i["filename"]) for i in chain_j] == ["c.vhd", "p.vhd"]


def test_map_through_chain(chain):
    tmp, exp = chain
    m = json.loads(vimg("map", "--output=json", tmp / "c.vhd").stdout)
    assert sum(e["length"] for e in m) == len(exp)
    for e in m:
        in_child = any(e["start"] <= s * 512 < e["start"] + e["length"] for s in SECTORS)
        assert e["depth"] == (0 if in_child else 1), e
        if in_child:
            assert all(s * 512 >= e["start"] and (s + 1) * 512 <= e["start"] + e["length"]
                       for s in range(e["start"] // 512, (e["start"] + e["length"]) // 512)
                       if s in SECTORS) and e["data"]


def test_qemu_reads_child_without_parent(chain):
    """The documented difference: qemu-img 7.2 opens the child as a dynamic
    image with no backing file."""
    tmp, _ = chain
    j = json.loads(qimg("info", "--output=json", tmp / "c.vhd").stdout)
    assert "backing-filename" not in j


def test_chain_of_three(chain):
    tmp, exp = chain
    g = {1: b"\x31" * 512, 4096: b"\x32" * 512, 20000: b"\x33" * 512}
    d.make_vhd_child(tmp / "c.vhd", tmp / "g.vhd", g)
    assert raw_of(tmp / "g.vhd", tmp / "g.raw") == d.vhd_expected(exp, g, len(exp))
    chain_j = json.loads(vimg("info", "--output=json", "--backing-chain",
                              tmp / "g.vhd").stdout)
    assert [os.path.basename(i["filename"]) for i in chain_j] == ["g.vhd", "c.vhd", "p.vhd"]
    m = json.loads(vimg("map", "--output=json", tmp / "g.vhd").stdout)
    depth = {e["start"]: e["depth"] for e in m}
    assert depth[0] == 1 and depth[512] == 0 and depth[1024] == 2 and depth[2560] == 1


@pytest.mark.parametrize("how", ["relative_subdir", "relative_dotdot", "absolute_only",
                                 "relative_missing_absolute_ok", "name_only", "macx_url"])
def test_locator_preference(tmp_path, how):
    sub = tmp_path / "sub dir"
    os.mkdir(sub)
    if how == "relative_dotdot":
        parent, child = tmp_path / "p.vhd", sub / "c.vhd"
    else:
        parent, child = sub / "p a.vhd", tmp_path / "c.vhd"
    make_parent(parent)
    locs, name = {
        "relative_subdir": ([(d.W2RU, utf16le(".\\sub dir\\p a.vhd"))], "gone.vhd"),
        "relative_dotdot": ([(d.W2RU, utf16le("..\\p.vhd"))], "gone.vhd"),
        "absolute_only": ([(d.W2KU, utf16le(str(parent)))], "gone.vhd"),
        "relative_missing_absolute_ok": ([(d.W2RU, utf16le(".\\gone.vhd")),
                                          (d.W2KU, utf16le(str(parent)))], "gone.vhd"),
        "name_only": ([], None),
        "macx_url": ([(d.MACX, ("file://" + str(parent).replace(" ", "%20")).encode())],
                     "gone.vhd"),
    }[how]
    if how == "name_only":
        shutil.move(parent, tmp_path / "p a.vhd")
        parent = tmp_path / "p a.vhd"
        name = "p a.vhd"
    d.make_vhd_child(parent, child, SECTORS, locators=locs, unicode_name=name)
    praw = raw_of(parent, tmp_path / "p.raw")
    assert raw_of(child, tmp_path / "c.raw") == d.vhd_expected(praw, SECTORS, len(praw))
    j = json.loads(vimg("info", "--output=json", child).stdout)
    assert os.path.realpath(j["full-backing-filename"]) == os.path.realpath(parent)


def vio(img, *ops):
    args = [VDISK_IO, "-f", "vpc", str(img)]
    for op in ops:
        args += op.split() + ["--"]
    p = run(args)
    assert p.returncode == 0, p.stderr


def test_writes_copy_on_write(chain):
    """First writes to a block copy the parent's sectors into it and set
    the whole bitmap; the parent is untouched; re-reading gives the
    overlay, also after reopening."""
    tmp, exp = chain
    before = sha(tmp / "p.vhd")
    exp = bytearray(exp)
    ops = [("0x55", 3 * M + 1000, 3000),     # unwritten block: allocated, copied
           ("0x56", 2 * M + 700, 100),        # block with some present sectors
           ("0x57", 100, 10),                 # inside a present sector
           ("0x58", 4 * M - 10, 20)]          # across two blocks
    for pat, off, ln in ops:
        vio(tmp / "c.vhd", "write %s %d %d" % (pat, off, ln))
        exp[off:off + ln] = bytes([int(pat, 16)]) * ln
    assert raw_of(tmp / "c.vhd", tmp / "c.raw") == bytes(exp)
    assert sha(tmp / "p.vhd") == before
    # the copies are in the child's file: qemu-img, which reads the child
    # without its parent, reads the three written blocks the same
    q = qimg("convert", "-O", "raw", tmp / "c.vhd", tmp / "q.raw")
    assert q.returncode == 0, q.stderr
    assert d.read(tmp / "q.raw")[:6 * M] == bytes(exp[:6 * M])
    # the written blocks no longer depend on the parent
    m = json.loads(vimg("map", "--output=json", tmp / "c.vhd").stdout)
    for e in m:
        if e["start"] <= 3 * M < e["start"] + e["length"]:
            assert e["depth"] == 0


def test_time_stamp_mismatch_warns(tmp_path):
    make_parent(tmp_path / "p.vhd")
    d.make_vhd_child(tmp_path / "p.vhd", tmp_path / "c.vhd", SECTORS, parent_ts=12345)
    p = vimg("convert", "-O", "raw", tmp_path / "c.vhd", tmp_path / "c.raw")
    assert p.returncode == 0 and "warning: vpc: the parent" in p.stderr, p.stderr


def test_missing_parent_info_names_it(tmp_path):
    """info (which opens no backing file) names the preferred locator."""
    make_parent(tmp_path / "p.vhd")
    d.make_vhd_child(tmp_path / "p.vhd", tmp_path / "c.vhd", {})
    os.remove(tmp_path / "p.vhd")
    p = vimg("info", tmp_path / "c.vhd")
    assert p.returncode == 0 and "backing file: p.vhd" in p.stdout, p.stdout + p.stderr


def limited(*args):
    """vdisk-img under prlimit (1 GiB of address space, 20 s of CPU);
    sanitized builds (VDISK_SANITIZED) cap allocations through ASan."""
    env = dict(os.environ)
    prefix = LIMIT
    if os.environ.get("VDISK_SANITIZED"):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=1024"
        prefix = []
    return run(prefix + [VDISK_IMG] + [str(a) for a in args], timeout=60, env=env)


def child_with(**kw):
    def build(tmp):
        d.make_vhd_child(tmp / "p.vhd", tmp / "c.vhd", SECTORS, **kw)
    return build


def hostile_cycle(tmp):
    a, b = uuid.uuid4().bytes, uuid.uuid4().bytes
    d.make_vhd_child(tmp / "p.vhd", tmp / "c.vhd", {}, locators=[(d.W2RU, utf16le("b.vhd"))],
                     parent_uuid=b, child_uuid=a, unicode_name="b.vhd")
    d.make_vhd_child(tmp / "p.vhd", tmp / "b.vhd", {}, locators=[(d.W2RU, utf16le("c.vhd"))],
                     parent_uuid=a, child_uuid=b, unicode_name="c.vhd")


def hostile_self(tmp):
    d.make_vhd_child(tmp / "p.vhd", tmp / "c.vhd", {}, locators=[(d.W2RU, utf16le("c.vhd"))])


def hostile_bigger_parent(tmp):
    d.make_vhd_child(tmp / "p.vhd", tmp / "c.vhd", {}, size=4 * M)


def set_locator(off, length, code=b"W2ru"):
    def change(h):
        h[576:600] = bytes(24)
        h[576:580] = code
        h[584:588] = length.to_bytes(4, "big")
        h[592:600] = off.to_bytes(8, "big")
    return change


HOSTILE = {
    "missing": (child_with(locators=[(d.W2RU, utf16le(".\\gone.vhd")),
                                     (d.W2KU, utf16le("/nonexistent/gone.vhd"))],
                           unicode_name="gone2.vhd"),
                "the parent of", "was not found (tried 'gone.vhd', '/nonexistent/gone.vhd', "
                                 "'gone2.vhd')"),
    "uuid_mismatch": (child_with(parent_uuid=uuid.uuid4().bytes),
                      "is not the image", "its UUID differs"),
    "locator_past_eof": (child_with(header_extra=set_locator(1 << 40, 100)),
                         "parent locator 0", "lies beyond the end of the file"),
    "locator_huge": (child_with(header_extra=set_locator(4096, 0xffffffff)),
                     "parent locator 0 is 4294967295 bytes long", ""),
    "locator_on_header": (child_with(header_extra=set_locator(600, 100)),
                          "parent locator 0 at 0x258", "overlaps the image's metadata"),
    "locator_on_bat": (child_with(header_extra=set_locator(1536, 8)),
                       "parent locator 0", "overlaps the image's metadata"),
    "locators_overlap": (child_with(locators=[(d.W2RU, b"a\0b\0", 4096, 4, 1),
                                              (d.W2KU, b"c\0d\0", 4098, 4, 1)],
                                    unicode_name="p.vhd"),
                         "parent locators 0 and 1 overlap", ""),
    "proc": (child_with(locators=[(d.W2KU, utf16le("/proc/self/environ"))]),
             "'/proc/self/environ'", "is a kernel file"),
    "device": (child_with(locators=[(d.W2KU, utf16le("/dev/zero"))]),
               "'/dev/zero'", "is not a regular file"),
    "self": (hostile_self, "names itself as its parent", ""),
    "cycle": (hostile_cycle, "creates an infinite loop", ""),
    "bigger_parent": (hostile_bigger_parent, "is larger than its child", ""),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile(tmp_path, kind):
    make_parent(tmp_path / "p.vhd")
    build, msg, msg2 = HOSTILE[kind]
    build(tmp_path)
    for rc, args in ((1, ["convert", "-O", "raw", tmp_path / "c.vhd", tmp_path / "o.raw"]),
                     (1, ["map", tmp_path / "c.vhd"]),
                     (2, ["compare", tmp_path / "c.vhd", tmp_path / "p.vhd"])):
        p = limited(*args)
        assert p.returncode == rc and msg in p.stderr and msg2 in p.stderr, (args, p.stderr)


def test_type4_without_parent_name_reads_as_qemu(tmp_path):
    """A type-4 image whose header names no parent (no locator, empty
    name) is read as QEMU 7.2 reads it: dynamic, no backing file."""
    make_parent(tmp_path / "p.vhd")
    d.make_vhd_child(tmp_path / "p.vhd", tmp_path / "c.vhd", SECTORS, locators=[],
                     unicode_name="")
    q = qimg("convert", "-O", "raw", tmp_path / "c.vhd", tmp_path / "q.raw")
    assert q.returncode == 0
    assert raw_of(tmp_path / "c.vhd", tmp_path / "v.raw") == d.read(tmp_path / "q.raw")
    assert "backing file" not in vimg("info", tmp_path / "c.vhd").stdout


def test_backing_loop_refused_for_any_format(tmp_path):
    """The core refuses a backing file that is an image above it (qemu-img
    7.2 recurses until it runs out of resources): two qcow2 images naming
    each other."""
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qimg("create", "-q", "-f", "qcow2", b, "1M", check=True)
    qimg("create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", a, check=True)
    qimg("rebase", "-u", "-b", a, "-F", "qcow2", b, check=True)
    p = limited("convert", "-O", "raw", a, tmp_path / "o.raw")
    assert p.returncode == 1 and "creates an infinite loop" in p.stderr, p.stderr


def test_parent_name_with_colon_is_a_file(tmp_path):
    """A relative locator that looks like a protocol ("nbd:...") names a
    file beside the child."""
    parent = tmp_path / "nbd:localhost:2.vhd"
    make_parent(parent)
    d.make_vhd_child(parent, tmp_path / "c.vhd", SECTORS,
                     locators=[(d.W2RU, utf16le("nbd:localhost:2.vhd"))])
    praw = raw_of(parent, tmp_path / "p.raw")
    assert raw_of(tmp_path / "c.vhd", tmp_path / "c.raw") == \
        d.vhd_expected(praw, SECTORS, len(praw))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_writes_against_model(tmp_path, seed):
    """Random writes and zero writes (any offset and length, across blocks and sectors)
    to a child with partly present blocks, judged against the Python
    model; the parent stays as it was."""
    import random
    rnd = random.Random(seed)
    make_parent(tmp_path / "p.vhd")
    d.make_vhd_child(tmp_path / "p.vhd", tmp_path / "c.vhd", SECTORS)
    before = sha(tmp_path / "p.vhd")
    praw = raw_of(tmp_path / "p.vhd", tmp_path / "p.raw")
    size = len(praw)
    exp = bytearray(d.vhd_expected(praw, SECTORS, size))
    ops = []
    for i in range(24):
        off = rnd.randrange(size - 1)
        ln = rnd.randint(1, min(size - off, rnd.choice([100, 512, 5000, 70000, 2 * M + 3])))
        if rnd.random() < 0.25:
            ops.append("zero %d %d" % (off, ln))
            exp[off:off + ln] = bytes(ln)
        else:
            ops.append("write 0x%02x %d %d" % (0x60 + i, off, ln))
            exp[off:off + ln] = bytes([0x60 + i]) * ln
    vio(tmp_path / "c.vhd", *ops)
    assert raw_of(tmp_path / "c.vhd", tmp_path / "c.raw") == bytes(exp)
    assert sha(tmp_path / "p.vhd") == before
