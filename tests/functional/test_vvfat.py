# SPDX-License-Identifier: BSD-3-Clause
"""vvfat: a host directory as a FAT disk, against qemu-img 7.2 and the FAT
tools.  The disk vdisk-img converts from a directory passes fsck.fat -n,
and mtools lists and extracts the same tree as the directory and as
qemu-img's disk of the same directory; sizes, partition table, boot sector,
info and map are qemu-img's.  With rw, a client of vdisk-nbd changes the
file system (mtools on a copy, the changed sectors written back through
libnbd) and the changes land in the directory; writes that cannot be
mapped are refused.  Hostile trees end with a clear error or a warning."""
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import QEMU_IMG, VDISK_IMG
from nbd_helpers import VDISK_NBD, Server
from roformat_helpers import PRLIMIT, SANITIZED, both, same_result

MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C.UTF-8")
FSCK = shutil.which("fsck.fat")
MCOPY = shutil.which("mcopy")
K = 1024
CLUSTER = 8 * K


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if not FSCK or not MCOPY:
        pytest.skip("dosfstools and mtools are needed")


def run(*args, cwd=None, env=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          errors="replace", cwd=cwd, env=env, timeout=300)


def make_tree(root, seed=1):
    """Nested directories; long, mixed-case, non-ASCII and colliding names;
    empty, one-cluster, exact-cluster and multi-cluster files."""
    rnd = random.Random(seed)
    root.mkdir()
    (root / "sub" / "deeper" / "deepest").mkdir(parents=True)
    (root / "Empty Dir").mkdir()
    files = {
        "README": b"top\n",
        "lower.txt": b"lower case name\n",
        "UPPER.TXT": b"UPPER CASE NAME\n",
        "A Long File Name with spaces.text": b"long\n",
        ".hidden": b"dot file\n",
        "a.b.c.d": b"dots\n",
        "caf\u00e9 \u65e5\u672c.txt": "non-ascii\n".encode(),
        "empty": b"",
        "exact.bin": rnd.randbytes(CLUSTER),
        "multi.bin": rnd.randbytes(5 * CLUSTER + 123),
        "sub/inner.txt": b"inner\n",
        "sub/deeper/x": rnd.randbytes(3000),
        "sub/deeper/deepest/y.dat": rnd.randbytes(20000),
    }
    for i in range(12):
        files["sub/collide_name_%02d.txt" % i] = b"%d\n" % i
    for name, data in files.items():
        (root / name).write_bytes(data)


def mtools_extract(img, offset, out):
    """Every file of the disk through mcopy; returns mdir's listing."""
    out.mkdir()
    target = "%s@@%d" % (img, offset)
    p = run("mcopy", "-s", "-n", "-m", "-i", target, "::/*", str(out) + "/", env=MTOOLS_ENV)
    assert p.returncode == 0, p.stderr
    p = run("mdir", "-/", "-a", "-i", target, "::/", env=MTOOLS_ENV)
    assert p.returncode == 0, p.stderr
    return p.stdout


def tree_of(root):
    """{relative path: bytes or None for a directory}."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirs:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out


def fsck(img, offset, tmp):
    part = tmp / "part.raw"
    with open(img, "rb") as src, open(part, "wb") as dst:
        src.seek(offset)
        shutil.copyfileobj(src, dst, 1 << 20)
    p = run(FSCK, "-n", part)
    part.unlink()
    return p


def partition_offset(img):
    with open(img, "rb") as f:
        mbr = f.read(512)
    if mbr[0:3] == b"\xeb\x3e\x90":
        return 0
    return int.from_bytes(mbr[0x1c6:0x1ca], "little") * 512


VARIANTS = {"hd16": "", "floppy": "floppy:", "hd12": "12:", "floppy12": "floppy:12:",
            "hd32": "32:"}
if SANITIZED:
    VARIANTS = {k: VARIANTS[k] for k in ("hd16", "floppy12", "hd32")}


@pytest.mark.parametrize("opts", list(VARIANTS.values()), ids=list(VARIANTS))
def test_convert_reads_like_qemu(tmp_path, opts):
    """convert fat:DIR: qemu-img's size, MBR and boot sector; fsck.fat -n
    passes; mtools extracts the directory's tree, as from qemu-img's disk."""
    make_tree(tmp_path / "d")
    if opts.startswith("floppy"):
        shutil.rmtree(tmp_path / "d" / "sub")
        (tmp_path / "d" / "multi.bin").unlink()
    want = tree_of(tmp_path / "d")
    name = "fat:%sd" % opts
    q = run(QEMU_IMG, "convert", "-O", "raw", name, "q.raw", cwd=tmp_path)
    v = run(VDISK_IMG, "convert", "-O", "raw", name, "out.raw", cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    assert (v.returncode, v.stdout, v.stderr) == (0, "", "")
    vimg, qimg = tmp_path / "out.raw", tmp_path / "q.raw"
    assert vimg.stat().st_size == qimg.stat().st_size
    off = partition_offset(qimg)
    # FAT32: qemu-img 7.2 writes a FAT16 boot sector over a FAT32 layout
    # (fsck.fat and mtools reject it); vdisk writes a real FAT32 file
    # system (4 KiB clusters), with qemu-img's size and partition table
    fat32 = opts == "32:"
    with open(vimg, "rb") as a, open(qimg, "rb") as b:
        n = off if fat32 else off + 512
        assert a.read(n) == b.read(n)
    p = fsck(vimg, off, tmp_path)
    assert p.returncode == 0 and "uninitialized" not in p.stdout, p.stdout + p.stderr
    listing_v = mtools_extract(vimg, off, tmp_path / "vout")
    assert tree_of(tmp_path / "vout") == want
    assert "QEMU VVFAT" in listing_v
    if not fat32:
        listing_q = mtools_extract(qimg, off, tmp_path / "qout")
        assert tree_of(tmp_path / "qout") == want
        assert "QEMU VVFAT" in listing_q


def test_info_map_like_qemu(tmp_path):
    """info and map, human and JSON, for each way of naming the disk."""
    make_tree(tmp_path / "d")
    names = [
        ["fat:d"], ["-f", "vvfat", "fat:d"], ["fat:floppy:12:d"],
        ['json:{"driver": "vvfat", "dir": "d", "label": "MYDISK"}'],
        ['json:{"driver": "vvfat", "dir": "d", "fat-type": 12, "floppy": true}'],
    ]
    for name in names:
        for cmd in (["info"], ["info", "--output=json"], ["map"], ["map", "--output=json"]):
            same_result(*both(*(cmd + name), cwd=tmp_path))
    # --image-opts: the same disk (QEMU's name keeps "on" as a string, vdisk
    # prints the boolean as from json:)
    v = run(VDISK_IMG, "info", "--output=json", "--image-opts", "driver=vvfat,dir=d,floppy=on",
            cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["virtual-size"] == 2949120


def test_label_and_options(tmp_path):
    """label= sets the boot sector and root label; option errors as qemu-img."""
    make_tree(tmp_path / "d")
    for name in ['json:{"driver": "vvfat", "dir": "d", "label": "ABCDEFGHIJKL"}',
                 'json:{"driver": "vvfat", "dir": "d", "fat-type": 15}',
                 'json:{"driver": "vvfat"}',
                 'json:{"driver": "vvfat", "dir": "d", "bogus": 1}',
                 "fat:nonexistent", "fat:d/README", "fat:rw:d"]:
        same_result(*both("info", name, cwd=tmp_path))
    lbl = 'json:{"driver": "vvfat", "dir": "d", "label": "MYDISK", "floppy": true}'
    same_result(*both("convert", "-O", "raw", lbl, "l.raw", cwd=tmp_path))
    # the form fat:label=...: is vdisk's own (QEMU has no such token)
    v = run(VDISK_IMG, "convert", "-O", "raw", "fat:floppy:label=MYDISK:d", "m.raw", cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    assert (tmp_path / "m.raw").read_bytes() == (tmp_path / "l.raw").read_bytes()
    with open(tmp_path / "l.raw", "rb") as f:
        f.seek(43)
        assert f.read(11) == b"MYDISK     "
    v = run(VDISK_IMG, "info", "--output=json", "fat:fat-type=12:d", cwd=tmp_path)
    q = run(QEMU_IMG, "info", "--output=json", "fat:12:d", cwd=tmp_path)
    assert v.returncode == 0 and q.returncode == 0
    assert json.loads(v.stdout)["virtual-size"] == json.loads(q.stdout)["virtual-size"]


def test_capacity_and_root_limits(tmp_path):
    """Too much data and too many root entries: errors, as qemu-img fails."""
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / "huge", "wb") as f:
        f.truncate(600 << 20)
    same_result(*both("info", "fat:big", cwd=tmp_path))
    (tmp_path / "many").mkdir()
    for i in range(300):
        (tmp_path / "many" / ("file_number_%d.txt" % i)).write_bytes(b"")
    q, v = both("info", "fat:many", cwd=tmp_path)
    assert q.returncode == v.returncode == 1
    assert "Could not read directory many" in v.stderr


def convert_hostile(tmp_path, name="d"):
    """convert under the memory and CPU limits of the hostile tests."""
    args = [VDISK_IMG, "convert", "-O", "raw", "fat:" + name, "h.raw"]
    env = dict(os.environ)
    if SANITIZED:
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=1024"
    elif PRLIMIT:
        args = [PRLIMIT, "--as=%d" % (1 << 30), "--cpu=20", "--"] + args
    return run(*args, cwd=tmp_path, env=env)


def test_hostile_huge_directory(tmp_path):
    """More entries than a FAT directory holds: a clear error."""
    sub = tmp_path / "d" / "sub"
    sub.mkdir(parents=True)
    for i in range(3200):         # 21 entries each with their long names
        (sub / ("%05d" % i + "n" * 250)).write_bytes(b"")
    p = convert_hostile(tmp_path)
    assert p.returncode == 1, p.stderr
    assert "more than FAT allows" in p.stderr


def test_hostile_deep_tree(tmp_path):
    """A tree deeper than the bound: a clear error, no crash."""
    d = tmp_path / "d"
    d.mkdir()
    fd = os.open(str(d), os.O_RDONLY)
    try:
        for i in range(200):
            os.mkdir("x", dir_fd=fd)
            nfd = os.open("x", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    p = convert_hostile(tmp_path)
    assert p.returncode == 1
    assert "deeper than" in p.stderr or "too long" in p.stderr


def test_hostile_file_over_fat_limit(tmp_path):
    """A file over 4 GiB - 1: refused with FAT's limit named."""
    (tmp_path / "d").mkdir()
    with open(tmp_path / "d" / "over4g", "wb") as f:
        f.truncate(5 << 30)
    p = convert_hostile(tmp_path)
    assert p.returncode == 1
    assert "larger than FAT allows" in p.stderr


def test_hostile_symlinks_and_names(tmp_path):
    """Links out of the directory and names a FAT name cannot hold are
    skipped with a warning; links inside are followed; loops end."""
    make_tree(tmp_path / "d")
    want = tree_of(tmp_path / "d")
    (tmp_path / "secret").write_bytes(b"outside\n")
    os.symlink(str(tmp_path / "secret"), tmp_path / "d" / "out_link")
    os.symlink("../..", tmp_path / "d" / "sub" / "up_link")
    os.symlink(".", tmp_path / "d" / "loop")
    os.symlink("README", tmp_path / "d" / "in_link")
    (tmp_path / "d" / "bad:name").write_bytes(b"x")
    os.mkfifo(tmp_path / "d" / "fifo")
    with open(os.path.join(bytes(tmp_path / "d"), b"bad\xffutf8"), "wb") as f:
        f.write(b"x")
    p = convert_hostile(tmp_path)
    assert p.returncode == 0, p.stderr
    for what in ("out_link", "up_link", "loop", "bad:name", "fifo"):
        assert what in p.stderr
    off = 63 * 512
    assert fsck(tmp_path / "h.raw", off, tmp_path).returncode == 0
    mtools_extract(tmp_path / "h.raw", off, tmp_path / "out")
    want["in_link"] = want["README"]
    assert tree_of(tmp_path / "out") == want


# ---- rw through vdisk-nbd ----

def mapped(path):
    """A disk copy's bytes, mapped rather than read (a FAT32 disk is 504
    MiB, mostly never written: no memory is filled for its holes)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def copy_sparse(src, dst):
    """cp with the source's holes kept as holes."""
    p = run("cp", "--sparse=always", str(src), str(dst))
    assert p.returncode == 0, p.stderr


def nbd_copy(uri, path):
    p = run("nbdcopy", uri, path)
    assert p.returncode == 0, p.stderr


def write_back(uri, before, after, flush=True):
    """Write the sectors that differ between two copies through libnbd;
    returns the error text of the first failure (or None)."""
    code = r"""
import nbd, sys
import mmap
def mapped(path):
    with open(path, 'rb') as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
a = mapped(sys.argv[2]); b = mapped(sys.argv[3])
h = nbd.NBD(); h.connect_uri(sys.argv[1])
M = 1 << 20
try:
    for big in range(0, len(a), M):
        if a[big:big + M] == b[big:big + M]:
            continue
        for off in range(big, min(big + M, len(a)), 512):
            if a[off:off + 512] != b[off:off + 512]:
                h.pwrite(b[off:off + 512], off)
    if sys.argv[4] == '1':
        h.flush()
except nbd.Error as e:
    print(e.string); sys.exit(3)
finally:
    try:
        h.shutdown()
    except nbd.Error:
        pass                        # the server is gone (the kill tests)
"""
    p = subprocess.run(["/usr/bin/python3", "-c", code, uri, str(before), str(after),
                        "1" if flush else "0"], capture_output=True, text=True, timeout=300)
    assert p.returncode in (0, 3), p.stderr
    return p.stdout if p.returncode == 3 else None


def same_disk(a, b, tmp):
    """Two disk copies hold the same file system: the same sectors up to
    the first cluster, the same files (free clusters may differ: the data
    of deleted files is not kept)."""
    x, y = mapped(a), mapped(b)
    assert len(x) == len(y)
    spf = int.from_bytes(x[63 * 512 + 22:63 * 512 + 24], "little")
    meta = (63 + 1 + 2 * spf + 32) * 512
    if x[:meta] != y[:meta]:
        off = next(o for o in range(0, meta, 512) if x[o:o + 512] != y[o:o + 512])
        assert x[off:off + 512] == y[off:off + 512], "sector %d differs" % (off // 512)
    for n, img in enumerate((a, b)):
        out = tmp / ("same%d" % n)
        shutil.rmtree(out, ignore_errors=True)
        mtools_extract(img, 63 * 512, out)
    assert tree_of(tmp / "same0") == tree_of(tmp / "same1")


def mtool(img, *args):
    p = run(*args[:1], "-i", "%s@@%d" % (img, 63 * 512), *args[1:], env=MTOOLS_ENV)
    assert p.returncode == 0, (args, p.stderr)


@pytest.fixture
def rw_server(tmp_path, request):
    make_tree(tmp_path / "d")
    srv = Server(VDISK_NBD, ["-t", "-f", "vvfat", "fat:rw:%s%s" % (request.param, tmp_path / "d")],
                 sock=str(tmp_path / "s.sock"))
    yield srv
    assert srv.stop() == 0, srv.stderr


# FAT32 is a 504 MiB disk: copied whole twice, too slow under the sanitizers
@pytest.mark.parametrize("rw_server", ["12:"] + ([] if SANITIZED else ["32:"]), indirect=True)
def test_rw_changes_land_in_directory(tmp_path, rw_server):
    """New, changed, renamed and deleted files and directories made by a
    FAT client appear in the directory; the export reads as the client
    wrote it; a second round of changes works on the result."""
    uri, d = rw_server.uri(), tmp_path / "d"
    nbd_copy(uri, tmp_path / "c0.raw")
    copy_sparse(tmp_path / "c0.raw", tmp_path / "c1.raw")
    c1 = tmp_path / "c1.raw"
    new_data = random.Random(5).randbytes(3 * CLUSTER + 7)
    (tmp_path / "new.bin").write_bytes(new_data)
    (tmp_path / "small.txt").write_bytes(b"changed contents\n")
    os.utime(tmp_path / "new.bin", (1600000000, 1600000000))
    mtool(c1, "mcopy", "-m", tmp_path / "new.bin", "::/New File.bin")
    mtool(c1, "mcopy", "-o", tmp_path / "small.txt", "::/README")
    mtool(c1, "mdel", "::/lower.txt")
    mtool(c1, "mren", "::/UPPER.TXT", "::/Renamed Upper.txt")
    mtool(c1, "mmd", "::/newdir")
    mtool(c1, "mcopy", tmp_path / "small.txt", "::/newdir/inside.txt")
    mtool(c1, "mdeltree", "::/sub/deeper")
    mtool(c1, "mren", "::/Empty Dir", "::/Renamed Dir")
    assert write_back(uri, tmp_path / "c0.raw", c1) is None
    want = tree_of(d)                 # build the expectation by hand
    got = tree_of(d)
    assert got.get("New File.bin") == new_data
    # the entry's modification time (FAT keeps 2-second steps)
    assert abs(os.stat(d / "New File.bin").st_mtime - 1600000000) <= 2
    assert got["README"] == b"changed contents\n"
    assert "lower.txt" not in got and "UPPER.TXT" not in got
    assert got["Renamed Upper.txt"] == b"UPPER CASE NAME\n"
    assert got["newdir/inside.txt"] == b"changed contents\n"
    assert not any(k.startswith("sub/deeper") for k in got)
    assert "Renamed Dir" in got and "Empty Dir" not in got
    assert got["multi.bin"] and got["sub/inner.txt"] == b"inner\n"
    assert not [k for k in got if ".vdisk-vvfat" in k]
    nbd_copy(uri, tmp_path / "c2.raw")
    same_disk(tmp_path / "c2.raw", c1, tmp_path)
    # second round on the committed state: move a file into a directory,
    # grow a file, delete a directory with files
    copy_sparse(tmp_path / "c2.raw", tmp_path / "c3.raw")
    c3 = tmp_path / "c3.raw"
    mtool(c3, "mmove", "::/multi.bin", "::/newdir/multi.bin")
    (tmp_path / "grown.bin").write_bytes(new_data * 3)
    mtool(c3, "mcopy", "-o", tmp_path / "grown.bin", "::/exact.bin")
    mtool(c3, "mdeltree", "::/sub")
    assert write_back(uri, tmp_path / "c2.raw", c3) is None
    got2 = tree_of(d)
    # mmove keeps only the short name (MULTI.BIN, no long name entry)
    assert got2["newdir/MULTI.BIN"] == want["multi.bin"] and "multi.bin" not in got2
    assert got2["exact.bin"] == new_data * 3
    assert not any(k.startswith("sub") for k in got2)
    nbd_copy(uri, tmp_path / "c4.raw")
    same_disk(tmp_path / "c4.raw", c3, tmp_path)
    assert fsck(tmp_path / "c4.raw", 63 * 512, tmp_path).returncode == 0


@pytest.mark.parametrize("rw_server", ["12:"], indirect=True)
def test_rw_unmappable_writes_refused(tmp_path, rw_server):
    """A write that changes the boot sector fails; a FAT the guest broke
    (a cross-linked chain) makes the flush fail and leaves the directory
    as it was; fixing it makes the next flush succeed."""
    uri, d = rw_server.uri(), tmp_path / "d"
    before = tree_of(d)
    nbd_copy(uri, tmp_path / "c0.raw")
    c0 = (tmp_path / "c0.raw").read_bytes()
    bad = bytearray(c0)
    bad[63 * 512 + 3:63 * 512 + 11] = b"EVILOEM!"
    (tmp_path / "boot.raw").write_bytes(bad)
    err = write_back(uri, tmp_path / "c0.raw", tmp_path / "boot.raw")
    assert err and "not permitted" in err.lower()
    assert tree_of(d) == before
    # cross-link: README's entry points at UPPER.TXT's clusters
    spf = int.from_bytes(c0[63 * 512 + 22:63 * 512 + 24], "little")
    root = (63 + 1 + 2 * spf) * 512
    bad = bytearray(c0)
    ents = {bytes(bad[o:o + 11]): o for o in range(root, root + 512 * 32, 32)}
    readme, upper = ents[b"README     "], ents[b"UPPER   TXT"]
    bad[readme + 26:readme + 28] = bad[upper + 26:upper + 28]
    (tmp_path / "x.raw").write_bytes(bad)
    err = write_back(uri, tmp_path / "c0.raw", tmp_path / "x.raw")
    assert err and "flush" in err
    assert tree_of(d) == before
    assert write_back(uri, tmp_path / "x.raw", tmp_path / "c0.raw") is None
    assert tree_of(d) == before


def test_rw_needs_writable(tmp_path):
    """Without rw a writable open is refused as by qemu-img."""
    make_tree(tmp_path / "d")
    same_result(*both("resize", "fat:d", "1G", cwd=tmp_path))
    p = run(VDISK_NBD, "-k", tmp_path / "s.sock", "fat:d")
    assert p.returncode == 1 and "Image is read-only" in p.stderr


# ---- rw edge cases: renames, moves, sizes, and host errors mid-commit ----

def guest_edit(tmp_path, uri, *cmds, name="e"):
    """Copy the export, run mtools commands on the copy, write the changed
    sectors back and flush; returns (error text or None, copy before,
    copy after)."""
    before, after = tmp_path / (name + "0.raw"), tmp_path / (name + "1.raw")
    nbd_copy(uri, before)
    copy_sparse(before, after)
    for cmd in cmds:
        mtool(after, *cmd)
    return write_back(uri, before, after), before, after


def host_is_image(d, img, tmp_path):
    """The host directory holds what mtools reads from the image, and no
    temporary name of the commit."""
    out = tmp_path / "x"
    shutil.rmtree(out, ignore_errors=True)
    mtools_extract(img, 63 * 512, out)
    host = tree_of(d)
    assert not [k for k in host if ".vdisk-vvfat" in k], sorted(host)
    assert host == tree_of(out), (sorted(host), sorted(tree_of(out)))
    return host


@pytest.mark.parametrize("rw_server", ["12:"], indirect=True)
def test_rw_renames_into_each_other(tmp_path, rw_server):
    """A swap (a <-> b through a third name), a chain (b -> c, a -> b), a
    case-only rename and a rename over a deleted file all land."""
    d = tmp_path / "d"
    old = tree_of(d)
    err, _, img = guest_edit(
        tmp_path, rw_server.uri(),
        ("mren", "::/sub/collide_name_00.txt", "::/sub/t"),
        ("mren", "::/sub/collide_name_01.txt", "::/sub/collide_name_00.txt"),
        ("mren", "::/sub/t", "::/sub/collide_name_01.txt"),
        ("mdel", "::/sub/collide_name_04.txt"),
        ("mren", "::/sub/collide_name_03.txt", "::/sub/collide_name_04.txt"),
        ("mren", "::/sub/collide_name_02.txt", "::/sub/collide_name_03.txt"),
        ("mren", "::/A Long File Name with spaces.text", "::/x"),
        ("mren", "::/x", "::/a long FILE name with SPACES.text"),
        ("mdel", "::/empty"), ("mren", "::/a.b.c.d", "::/empty"))
    assert err is None, err
    got = host_is_image(d, img, tmp_path)
    assert got["sub/collide_name_00.txt"] == old["sub/collide_name_01.txt"] == b"1\n"
    assert got["sub/collide_name_01.txt"] == b"0\n"
    assert got["sub/collide_name_04.txt"] == b"3\n" and got["sub/collide_name_03.txt"] == b"2\n"
    assert "sub/collide_name_02.txt" not in got
    assert got["a long FILE name with SPACES.text"] == b"long\n"
    assert "A Long File Name with spaces.text" not in got
    # mren to an 8.3 name writes only the short entry (upper case)
    assert got["EMPTY"] == b"dots\n" and "empty" not in got and "a.b.c.d" not in got


LONG = "A very long file name " + "x" * 180 + " end.txt"


@pytest.mark.parametrize("rw_server", ["12:"], indirect=True)
def test_rw_directories_and_long_names(tmp_path, rw_server):
    """A directory moved into another (with its files), a directory renamed
    to a long name, a non-empty tree deleted, a file with a 200-character
    name created and another renamed to one."""
    d = tmp_path / "d"
    old = tree_of(d)
    (tmp_path / "long.txt").write_bytes(b"long name data\n" * 700)
    err, _, img = guest_edit(
        tmp_path, rw_server.uri(),
        ("mmove", "::/sub/deeper", "::/Empty Dir/deeper"),
        ("mren", "::/Empty Dir", "::/Now a directory with a rather long name indeed"),
        ("mcopy", tmp_path / "long.txt", "::/" + LONG),
        ("mren", "::/README", "::/R" + "e" * 150 + "adme"),
        ("mdeltree", "::/sub"))
    assert err is None, err
    got = host_is_image(d, img, tmp_path)
    top = "Now a directory with a rather long name indeed/DEEPER/"   # mmove: short name
    assert got[top + "x"] == old["sub/deeper/x"]
    assert got[top + "deepest/y.dat"] == old["sub/deeper/deepest/y.dat"]
    assert not [k for k in got if k.startswith(("sub", "Empty Dir"))]
    assert got[LONG] == b"long name data\n" * 700
    assert got["R" + "e" * 150 + "adme"] == old["README"] and "README" not in got


@pytest.mark.parametrize("rw_server", ["12:"], indirect=True)
def test_rw_truncate_and_grow(tmp_path, rw_server):
    """Files truncated to 0, grown past their cluster chain (and onto
    clusters other files freed), shrunk to part of a cluster."""
    d = tmp_path / "d"
    (tmp_path / "zero").write_bytes(b"")
    grown = random.Random(8).randbytes(9 * CLUSTER + 5)
    (tmp_path / "grown").write_bytes(grown)
    (tmp_path / "small").write_bytes(b"s" * 100)
    err, _, img = guest_edit(
        tmp_path, rw_server.uri(),
        ("mdel", "::/multi.bin"),
        ("mcopy", "-o", tmp_path / "zero", "::/exact.bin"),
        ("mcopy", "-o", tmp_path / "grown", "::/README"),
        ("mcopy", "-o", tmp_path / "small", "::/sub/deeper/deepest/y.dat"))
    assert err is None, err
    got = host_is_image(d, img, tmp_path)
    assert got["exact.bin"] == b"" and got["README"] == grown
    assert got["sub/deeper/deepest/y.dat"] == b"s" * 100 and "multi.bin" not in got


def chattr(path, flag):
    p = run("chattr", flag, path)
    if p.returncode:
        pytest.skip("chattr %s is not supported here: %s" % (flag, p.stderr.strip()))


@pytest.mark.parametrize("rw_server", ["12:"], indirect=True)
def test_rw_host_error_undone(tmp_path, rw_server):
    """A host error midway (a directory the host will not change: the
    immutable flag, which holds even for root) fails the flush with the
    error; the moves and deletions done before it are undone, no temporary
    name stays; once the host allows it, the next flush applies it all."""
    d, uri = tmp_path / "d", rw_server.uri()
    old = tree_of(d)
    (tmp_path / "n.txt").write_bytes(b"new\n" * 3000)
    chattr(d / "sub" / "deeper", "+i")
    try:
        err, _, img = guest_edit(
            tmp_path, uri,
            ("mren", "::/UPPER.TXT", "::/Moved Upper.txt"),
            ("mdel", "::/lower.txt"),
            ("mdeltree", "::/Empty Dir"),
            ("mcopy", tmp_path / "n.txt", "::/New.txt"),
            ("mmove", "::/sub/inner.txt", "::/sub/deeper/inner.txt"))
        assert err and "flush" in err and "Operation not permitted" in err, err
        assert tree_of(d) == old
    finally:
        chattr(d / "sub" / "deeper", "-i")
    assert write_back(uri, img, img) is None         # a flush: the commit again
    got = host_is_image(d, img, tmp_path)
    assert got["Moved Upper.txt"] == old["UPPER.TXT"] and got["New.txt"] == b"new\n" * 3000
    assert got["sub/deeper/INNER.TXT"] == b"inner\n" and "lower.txt" not in got


@pytest.mark.parametrize("rw_server", ["12:"], indirect=True)
def test_rw_host_file_vanished(tmp_path, rw_server):
    """A file the guest renamed vanishes on the host before the flush: the
    flush fails, the guest's other changes are not half applied (nothing
    deleted, no new file), no temporary name stays."""
    d, uri = tmp_path / "d", rw_server.uri()
    (tmp_path / "n.txt").write_bytes(b"n\n")
    before, after = tmp_path / "v0.raw", tmp_path / "v1.raw"
    nbd_copy(uri, before)
    copy_sparse(before, after)
    mtool(after, "mdel", "::/lower.txt")
    mtool(after, "mcopy", tmp_path / "n.txt", "::/new.txt")
    mtool(after, "mren", "::/sub/inner.txt", "::/inner moved.txt")
    (d / "sub" / "inner.txt").unlink()
    old = tree_of(d)
    err = write_back(uri, before, after)
    # NBD carries only a few errno values: ENOENT reaches the client as EINVAL
    assert err and "flush" in err and "Invalid argument" in err, err
    assert tree_of(d) == old
    # the guest puts its disk back: nothing left to apply, the flush works
    assert write_back(uri, after, before) is None
    assert tree_of(d) == old


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs holding the tree (needs root to mount)."""
    m = tmp_path / "m"
    m.mkdir()
    p = run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", m)
    if p.returncode:
        pytest.skip("cannot mount a tmpfs: %s" % p.stderr.strip())
    try:
        make_tree(m / "d")
        yield m / "d"
    finally:
        run("umount", "-l", m)


def test_rw_host_out_of_space(tmp_path, small_fs):
    """A new file larger than the host's free space: the flush fails with
    ENOSPC, the rename and deletion the guest made are undone, no partial
    or temporary file stays; the guest deleting the file again lets the
    next flush succeed."""
    d = small_fs
    srv = Server(VDISK_NBD, ["-t", "-f", "vvfat", "fat:rw:12:%s" % d],
                 sock=str(tmp_path / "s.sock"))
    try:
        old = tree_of(d)
        (tmp_path / "big").write_bytes(random.Random(3).randbytes(2 << 20))
        err, before, img = guest_edit(
            tmp_path, srv.uri(),
            ("mren", "::/README", "::/README.old"), ("mdel", "::/lower.txt"),
            ("mcopy", tmp_path / "big", "::/big.bin"))
        assert err and "flush" in err and "No space left on device" in err, err
        assert tree_of(d) == old
        mtool(img, "mdel", "::/big.bin")
        assert write_back(srv.uri(), before, img) is None
        got = host_is_image(d, img, tmp_path)
        assert got["README.OLD"] == old["README"] and "lower.txt" not in got
    finally:
        assert srv.stop() == 0, srv.stderr


@pytest.mark.parametrize("rw_server", ["12:"], indirect=True)
def test_rw_never_replaces_host_files(tmp_path, rw_server):
    """A file made on the host after the disk was scanned, at the name the
    guest gives a new file: the flush fails and the host file is kept, as
    is everything else."""
    d, uri = tmp_path / "d", rw_server.uri()
    (tmp_path / "n.txt").write_bytes(b"from the guest\n")
    before, after = tmp_path / "h0.raw", tmp_path / "h1.raw"
    nbd_copy(uri, before)
    copy_sparse(before, after)
    mtool(after, "mcopy", tmp_path / "n.txt", "::/Brand New.txt")
    mtool(after, "mdel", "::/lower.txt")
    (d / "Brand New.txt").write_bytes(b"from the host\n")
    old = tree_of(d)
    err = write_back(uri, before, after)
    assert err and "flush" in err, err
    assert tree_of(d) == old and old["Brand New.txt"] == b"from the host\n"
    assert write_back(uri, after, before) is None
    assert tree_of(d) == old


STRACE = shutil.which("strace")
# The guest's changes of the kill tests: a rename, deletions (a file, an
# empty directory, a tree), a new file, a new directory with a file, a
# file moved into another directory and a changed file.
# (The new directory comes first: made after the deletions it would take
# a freed directory's first cluster and be matched with it, a rename.)
KILL_EDITS = (("mmd", "::/newdir"), ("mren", "::/UPPER.TXT", "::/Moved Upper.txt"),
              ("mdel", "::/lower.txt"), ("mdeltree", "::/Empty Dir"),
              ("mdeltree", "::/sub/deeper"), ("mmove", "::/sub/inner.txt", "::/newdir/inner.txt"))


def traced(pid):
    """Are all the threads of process pid traced?"""
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/status" % (pid, t)) as f:
                if "TracerPid:\t0\n" in f.read():
                    return False
    except OSError:
        return False
    return True


def killed_commit(tmp_path, d, name, syscall, when):
    """Serve d rw; the guest makes KILL_EDITS; strace, attached before the
    guest writes them back and flushes, kills the server at the when-th
    call of syscall by the thread that makes it.  Returns (killed, the
    image as the guest wrote it)."""
    srv = Server(VDISK_NBD, ["-t", "-f", "vvfat", "fat:rw:12:%s" % d],
                 sock=str(tmp_path / (name + ".sock")))
    tracer = None
    try:
        (tmp_path / "n.txt").write_bytes(b"new file\n" * 2000)
        (tmp_path / "r.txt").write_bytes(b"changed\n")
        before, img = tmp_path / (name + "0.raw"), tmp_path / (name + "1.raw")
        nbd_copy(srv.uri(), before)
        copy_sparse(before, img)
        for cmd in (("mcopy", tmp_path / "n.txt", "::/New.txt"),
                    ("mcopy", "-o", tmp_path / "r.txt", "::/README")) + KILL_EDITS:
            mtool(img, *cmd)
        tracer = subprocess.Popen(
            [STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + syscall,
             "-e", "inject=%s:signal=KILL:when=%d" % (syscall, when), "-p", str(srv.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(400):
            if traced(srv.proc.pid) or tracer.poll() is not None:
                break
            time.sleep(0.025)
        assert traced(srv.proc.pid), tracer.stderr.read() if tracer.poll() is not None else ""
        err = write_back(srv.uri(), before, img)
        killed = srv.proc.poll() is not None or err is not None
    finally:
        if tracer and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)       # detach
            try:
                tracer.wait(10)
            except subprocess.TimeoutExpired:
                # strace can miss the exit of a server whose threads end
                # while it detaches (it then waits for ever); killing the
                # tracer detaches it too.
                tracer.kill()
                tracer.wait(60)
        srv.stop()
    return killed, img


def reopen_rw(tmp_path, d):
    """Open d rw once (which recovers an interrupted commit) and close it."""
    srv = Server(VDISK_NBD, ["-t", "-f", "vvfat", "fat:rw:12:%s" % d],
                 sock=str(tmp_path / "re.sock"))
    assert srv.stop() == 0, srv.stderr


@pytest.mark.skipif(not STRACE, reason="strace is needed to kill at a chosen system call")
def test_rw_killed_mid_commit(tmp_path):
    """The server killed at each step of a commit (before each rename and
    new directory, after the commit point, amid the removal of the deleted
    objects, before the journal goes): the next rw open leaves the
    directory exactly as it was, or exactly as the guest wrote it once the
    commit point was passed, with no temporary name and no journal left;
    a read-only open leaves it alone and says so."""
    pristine = tmp_path / "pristine"
    make_tree(pristine)
    old = tree_of(pristine)
    renames = [("renameat2", n) for n in range(1, 40, 3 if SANITIZED else 1)]
    after = [("utimensat", 1), ("rmdir", 1), ("rmdir", 2), ("unlinkat", 1)]
    seen = {"before": 0, "after": 0}

    def case(i, syscall, when):
        """False when the commit ran to its end without a kill."""
        d = tmp_path / ("d%d" % i)
        shutil.copytree(pristine, d, symlinks=True)
        killed, img = killed_commit(tmp_path, d, "k%d" % i, syscall, when)
        if not killed:
            host_is_image(d, img, tmp_path)
            shutil.rmtree(d)
            return False
        assert (d / ".vdisk-vvfat-journal").exists(), (syscall, when, sorted(tree_of(d)))
        p = run(VDISK_IMG, "info", "fat:%s" % d)
        assert p.returncode == 0 and "unfinished commit" in p.stderr, p.stderr
        assert (d / ".vdisk-vvfat-journal").exists()
        reopen_rw(tmp_path, d)
        assert not (d / ".vdisk-vvfat-journal").exists()
        if (syscall, when) in after:
            host_is_image(d, img, tmp_path)
            seen["after"] += 1
        else:
            assert tree_of(d) == old, (syscall, when)
            seen["before"] += 1
        shutil.rmtree(d)
        return True

    for i, (syscall, when) in enumerate(renames):
        if not case(i, syscall, when):
            break
    else:
        raise AssertionError("the commit makes more renames than the test expects")
    for i, (syscall, when) in enumerate([("mkdir", 1)] + after, start=100):
        assert case(i, syscall, when), (syscall, when)
    assert seen["before"] >= (4 if SANITIZED else 10) and seen["after"] == len(after), seen
