# SPDX-License-Identifier: BSD-3-Clause
"""Differencing vdi images read with their parent, which vdisk finds by UUID
among the .vdi files of the image's directory (qemu-img 7.2 refuses them).
The children are built by diffimg.py over parents qemu-img made; what a
child must read is built in Python (the parent's bytes with the child's
blocks over them) and judged byte for byte, by vdisk-img compare and, after
a convert to qcow2, by qemu-img compare.  Hostile chains (loops, a missing
or changed parent, a larger parent, two candidates) end with a clear
error under a memory and CPU limit."""
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
SIZE = 6 * M
LIMIT = ["prlimit", "--as=1073741824", "--cpu=20"]


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("vdi")


def make_parent(path, size=SIZE, writes=(("0x11", 0, 3 * M), ("0x12", 4 * M + 4096, 8192))):
    qimg("create", "-q", "-f", "vdi", path, size, check=True)
    args = [QEMU_IO, "-f", "vdi"]
    for pat, off, ln in writes:
        args += ["-c", "write -P %s %d %d" % (pat, off, ln)]
    run(args + [str(path)], check=True)


def raw_of(img, out, *opts):
    p = vimg("convert", *opts, "-O", "raw", img, out)
    assert p.returncode == 0, p.stderr
    return d.read(out)


def sha(path):
    return hashlib.sha256(d.read(path)).hexdigest()


CHILD_BLOCKS = {0: d.pattern_block(1), 2: "zero", 4: d.pattern_block(4)}


@pytest.fixture
def chain(tmp_path):
    """p.vdi (qemu-img) and c.vdi over it; returns (dir, expected bytes)."""
    make_parent(tmp_path / "p.vdi")
    d.make_vdi_child(tmp_path / "p.vdi", tmp_path / "c.vdi", CHILD_BLOCKS)
    praw = raw_of(tmp_path / "p.vdi", tmp_path / "p.raw")
    return tmp_path, d.vdi_expected(praw, CHILD_BLOCKS, SIZE)


def test_read_through_parent(chain):
    tmp, exp = chain
    assert raw_of(tmp / "c.vdi", tmp / "c.raw") == exp
    (tmp / "exp.raw").write_bytes(exp)
    p = vimg("compare", "-f", "vdi", "-F", "raw", tmp / "c.vdi", tmp / "exp.raw")
    assert p.returncode == 0 and "Images are identical." in p.stdout, p.stdout + p.stderr
    p = vimg("convert", "-O", "qcow2", tmp / "c.vdi", tmp / "c.qcow2")
    assert p.returncode == 0, p.stderr
    p = qimg("compare", "-f", "qcow2", "-F", "raw", tmp / "c.qcow2", tmp / "exp.raw")
    assert p.returncode == 0, p.stdout + p.stderr


def test_info_names_parent(chain):
    tmp, _ = chain
    p = vimg("info", tmp / "c.vdi")
    assert p.returncode == 0, p.stderr
    assert "backing file: p.vdi (actual path: %s)" % (tmp / "p.vdi") in p.stdout, p.stdout
    assert "backing file format: vdi" in p.stdout
    assert "image type: differencing" in p.stdout
    j = json.loads(vimg("info", "--output=json", tmp / "c.vdi").stdout)
    assert j["backing-filename"] == "p.vdi" and j["backing-filename-format"] == "vdi"
    data = j["format-specific"]["data"]
    assert data["image-type"] == "differencing"
    link = d.vdi_uuids(tmp / "c.vdi")[2]
    assert data["parent-uuid"].replace("-", "") == (link[3::-1] + link[5:3:-1] + link[7:5:-1]
                                                    + link[8:]).hex()
    chain_j = json.loads(vimg("info", "--output=json", "--backing-chain",
                              tmp / "c.vdi").stdout)
    assert [os.path.basename(i["filename"]) for i in chain_j] == ["c.vdi", "p.vdi"]
    assert "backing-filename" not in chain_j[1]


def test_map_through_chain(chain):
    tmp, _ = chain
    p = vimg("map", "--output=json", tmp / "c.vdi")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    by_start = {e["start"]: e for e in m}
    assert by_start[0]["depth"] == 0 and by_start[0]["data"]
    assert by_start[M]["depth"] == 1 and by_start[M]["data"]        # parent's block
    assert by_start[2 * M]["depth"] == 0 and by_start[2 * M]["zero"]
    assert by_start[4 * M]["depth"] == 0 and by_start[4 * M]["data"]
    assert sum(e["length"] for e in m) == SIZE


def test_qemu_refuses_child(chain):
    """The documented difference: qemu-img 7.2 refuses the child."""
    tmp, _ = chain
    p = qimg("info", tmp / "c.vdi")
    assert p.returncode == 1 and "non-NULL link UUID" in p.stderr


def test_chain_of_three(chain):
    tmp, exp = chain
    g_blocks = {1: d.pattern_block(7), 4: "zero"}
    d.make_vdi_child(tmp / "c.vdi", tmp / "g.vdi", g_blocks)
    assert raw_of(tmp / "g.vdi", tmp / "g.raw") == d.vdi_expected(exp, g_blocks, SIZE)
    chain_j = json.loads(vimg("info", "--output=json", "--backing-chain",
                              tmp / "g.vdi").stdout)
    assert [os.path.basename(i["filename"]) for i in chain_j] == ["g.vdi", "c.vdi", "p.vdi"]
    m = json.loads(vimg("map", "--output=json", tmp / "g.vdi").stdout)
    depth = {e["start"]: e["depth"] for e in m}
    assert depth[0] == 1 and depth[M] == 0 and depth[3 * M] == 2


def vio(img, *ops):
    args = [VDISK_IO, "-f", "vdi", str(img)]
    for op in ops:
        args += op.split() + ["--"]
    p = run(args)
    assert p.returncode == 0, p.stderr


def test_writes_copy_on_write(chain):
    """Writes allocate the block with the rest copied from the parent; the
    parent is untouched; re-reading gives the overlay."""
    tmp, exp = chain
    before = sha(tmp / "p.vdi")
    exp = bytearray(exp)
    ops = [("0x55", M + 1000, 3000),          # never written: from the parent
           ("0x56", 2 * M + 512, 512),         # zero block
           ("0x57", 5 * M - 10, 20),           # crosses into a never-written block
           ("0x58", 100, 4096),                # allocated in the child
           ("0x59", 3 * M, M)]                 # a whole never-written block
    for pat, off, ln in ops:
        vio(tmp / "c.vdi", "write %s %d %d" % (pat, off, ln))
        exp[off:off + ln] = bytes([int(pat, 16)]) * ln
    assert raw_of(tmp / "c.vdi", tmp / "c.raw") == bytes(exp)
    assert sha(tmp / "p.vdi") == before
    p = vimg("check", tmp / "c.vdi")
    assert p.returncode == 0, p.stdout + p.stderr


def test_missing_parent_info_shows_uuid(tmp_path):
    make_parent(tmp_path / "p.vdi")
    d.make_vdi_child(tmp_path / "p.vdi", tmp_path / "c.vdi", {}, link=uuid.uuid4().bytes)
    p = vimg("info", tmp_path / "c.vdi")
    assert p.returncode == 0 and "parent uuid:" in p.stdout and "backing file" not in p.stdout


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


def hostile_self(tmp):
    u = uuid.uuid4().bytes
    d.make_vdi_child(tmp / "p.vdi", tmp / "c.vdi", {}, link=u, image_uuid=u)


def hostile_cycle(tmp):
    a, b = uuid.uuid4().bytes, uuid.uuid4().bytes
    d.make_vdi_child(tmp / "p.vdi", tmp / "c.vdi", {}, image_uuid=a, link=b,
                     parent_modify=bytes(16))
    d.make_vdi_child(tmp / "p.vdi", tmp / "b.vdi", {}, image_uuid=b, link=a,
                     parent_modify=bytes(16))


def hostile_missing(tmp):
    d.make_vdi_child(tmp / "p.vdi", tmp / "c.vdi", {},
                     link=bytes.fromhex("00112233445566778899aabbccddeeff"))


def hostile_modified(tmp):
    d.make_vdi_child(tmp / "p.vdi", tmp / "c.vdi", {}, parent_modify=uuid.uuid4().bytes)


def hostile_larger_parent(tmp):
    d.make_vdi_child(tmp / "p.vdi", tmp / "c.vdi", {}, size=SIZE - M)


def hostile_two_parents(tmp):
    d.make_vdi_child(tmp / "p.vdi", tmp / "c.vdi", {})
    shutil.copy(tmp / "p.vdi", tmp / "p-copy.vdi")


def hostile_symlink_parent(tmp):
    """The parent is reachable only through a symbolic link: not followed."""
    os.mkdir(tmp / "elsewhere")
    os.rename(tmp / "p.vdi", tmp / "elsewhere" / "p.vdi")
    os.symlink(tmp / "elsewhere" / "p.vdi", tmp / "p.vdi")
    d.make_vdi_child(tmp / "elsewhere" / "p.vdi", tmp / "c.vdi", {})


HOSTILE = {
    "self": (hostile_self, "names itself as its parent"),
    "cycle": (hostile_cycle, "form a loop"),
    "missing": (hostile_missing, "(UUID 33221100-5544-7766-8899-aabbccddeeff) is not among "
                                 "the .vdi files"),
    "modified": (hostile_modified, "has changed since the child was made"),
    "larger_parent": (hostile_larger_parent, "is larger than its child"),
    "two_parents": (hostile_two_parents, "is ambiguous"),
    "symlink_parent": (hostile_symlink_parent, "is not among the .vdi files"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile(tmp_path, kind):
    make_parent(tmp_path / "p.vdi")
    build, msg = HOSTILE[kind]
    build(tmp_path)
    for rc, args in ((1, ["convert", "-O", "raw", tmp_path / "c.vdi", tmp_path / "o.raw"]),
                     (1, ["map", tmp_path / "c.vdi"]),
                     (2, ["compare", tmp_path / "c.vdi", tmp_path / "p.vdi"])):
        p = limited(*args)
        assert p.returncode == rc and msg in p.stderr, (args, p.stderr)


def test_smaller_parent_reads_zeroes_past_its_end(tmp_path):
    """A parent smaller than the child (a child resized after it was made)
    reads as zeroes past its end."""
    make_parent(tmp_path / "p.vdi", size=3 * M, writes=(("0x11", 0, 3 * M),))
    d.make_vdi_child(tmp_path / "p.vdi", tmp_path / "c.vdi", {4: d.pattern_block(4)},
                     size=SIZE)
    exp = d.vdi_expected(b"\x11" * 3 * M, {4: d.pattern_block(4)}, SIZE)
    assert raw_of(tmp_path / "c.vdi", tmp_path / "c.raw") == exp


def test_directory_scan_is_bounded(tmp_path):
    """Thousands of entries (empty .vdi files, other names) are looked at
    no further than the cap; the open ends quickly either way."""
    make_parent(tmp_path / "p.vdi")
    d.make_vdi_child(tmp_path / "p.vdi", tmp_path / "c.vdi", {})
    for i in range(4200):
        open(tmp_path / ("junk%04d.vdi" % i), "wb").close()
    p = limited("convert", "-O", "raw", tmp_path / "c.vdi", tmp_path / "o.raw")
    assert p.returncode == 0 or "is not among the .vdi files" in p.stderr, p.stderr


def test_parent_name_with_colon_is_a_file(tmp_path):
    """A parent file named like a protocol ("nbd:...") is opened as a file."""
    parent = tmp_path / "nbd:localhost:1.vdi"
    make_parent(parent)
    d.make_vdi_child(parent, tmp_path / "c.vdi", {})
    praw = raw_of(parent, tmp_path / "p.raw", "-f", "vdi")
    assert raw_of(tmp_path / "c.vdi", tmp_path / "c.raw") == praw


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_writes_against_model(tmp_path, seed):
    """Random writes and zero writes (any offset and length, across blocks) to a child
    whose blocks are data, zero or never written, judged against the
    Python model; the parent stays as it was."""
    import random
    rnd = random.Random(seed)
    make_parent(tmp_path / "p.vdi")
    d.make_vdi_child(tmp_path / "p.vdi", tmp_path / "c.vdi", CHILD_BLOCKS)
    before = sha(tmp_path / "p.vdi")
    exp = bytearray(d.vdi_expected(raw_of(tmp_path / "p.vdi", tmp_path / "p.raw"),
                                   CHILD_BLOCKS, SIZE))
    ops = []
    for i in range(24):
        off = rnd.randrange(SIZE - 1)
        ln = rnd.randint(1, min(SIZE - off, rnd.choice([512, 5000, 70000, M + 3])))
        if rnd.random() < 0.25:
            ops.append("zero %d %d" % (off, ln))
            exp[off:off + ln] = bytes(ln)
        else:
            ops.append("write 0x%02x %d %d" % (0x60 + i, off, ln))
            exp[off:off + ln] = bytes([0x60 + i]) * ln
    vio(tmp_path / "c.vdi", *ops)
    assert raw_of(tmp_path / "c.vdi", tmp_path / "c.raw") == bytes(exp)
    assert sha(tmp_path / "p.vdi") == before
