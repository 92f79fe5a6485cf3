# SPDX-License-Identifier: BSD-3-Clause
"""ESX vmdk extents judged by QEMU 7.2: vmfs descriptors (VMFS flat
extents), VMDK3 "COWD" sparse extents (vmfsSparse, standalone or named by
a descriptor, as deltas over a parent) and seSparse extents, generated at
run time by vmdk_gen.py.  qemu-img and vdisk-img must convert them to the
same raw bytes and print the same info, map and check; COWD extents take
writes as QEMU's do (same extent bytes), seSparse refuses read-write opens
with QEMU's message; each header check QEMU makes answers with its
message, and hostile variants fail cleanly."""
import json
import os
import shutil
import struct
import subprocess

import pytest

import vmdk_gen as g
from conftest import BUILD, QEMU_IMG, VDISK_IMG, same_output, needs_vdisk_format

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
TIMEOUT = 60
K, M = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("vmdk")


def sh(args, cwd, prog=QEMU_IMG, limited=False):
    pre = ["prlimit", "--as=1073741824", "--cpu=20", "--"] if limited and \
        not os.environ.get("VDISK_SANITIZED") else []
    return subprocess.run(pre + [prog] + [str(a) for a in args], capture_output=True,
                          text=True, cwd=cwd, timeout=TIMEOUT)


def assert_same_run(q, v):
    assert same_output(v.stdout, q.stdout), (q.stdout, v.stdout)
    assert same_output(v.stderr, q.stderr), (q.stderr, v.stderr)
    assert v.returncode == q.returncode, (q.returncode, v.returncode, v.stderr)


def assert_judged_same(d, name):
    """convert -O raw byte-identical; info (both outputs), map, check."""
    for args in (["info", "--output=json", name], ["info", name],
                 ["map", "--output=json", name], ["map", name], ["check", name],
                 ["info", "--backing-chain", name]):
        assert_same_run(sh(args, d), sh(args, d, VDISK_IMG))
    q = sh(["convert", "-O", "raw", name, "q.raw"], d)
    v = sh(["convert", "-O", "raw", name, "v.raw"], d, VDISK_IMG)
    assert_same_run(q, v)
    if q.returncode == 0:
        assert open(d / "q.raw", "rb").read() == open(d / "v.raw", "rb").read()


def pattern(byte, n):
    return bytes([byte]) * n


COWD_CAP = 2 * 4096 * 16 + 1000          # three grain tables, the last partial
COWD_GRAINS = {0: pattern(0x11, 8192), 1: pattern(0x22, 100), 4096: pattern(0x33, 8192),
               8200: pattern(0x44, 8192)}
SE_CAP = 3 * 32768 + 40                  # four grain tables, the last partial
SE_GRAINS = {0: pattern(0x55, 4096), 3: pattern(0x66, 4096), 4096: pattern(0x77, 10),
             8193: pattern(0x88, 4096), 12288: pattern(0x99, 4096)}


def cowd_desc(d, name="c.vmdk", **kw):
    return g.write_image(d, name, "vmfsSparse", "VMFSSPARSE",
                         g.cowd(COWD_CAP, 16, COWD_GRAINS, **kw), COWD_CAP)


def se_desc(d, name="s.vmdk", ext_kw=None, **kw):
    return g.write_image(d, name, "seSparse", "SESPARSE",
                         g.sesparse(SE_CAP, SE_GRAINS, zero=[5, 6, 4100], unmapped=[7],
                                    **(ext_kw or {})), SE_CAP, **kw)


def test_cowd_descriptor(tmp_path):
    cowd_desc(tmp_path)
    assert_judged_same(tmp_path, "c.vmdk")


def test_cowd_missing_table_and_granularity(tmp_path):
    grains = {0: pattern(0x21, 512), 4096 * 2 + 5: pattern(0x22, 512)}
    open(tmp_path / "e.vmdk", "wb").write(g.cowd(4096 * 3, 1, grains, gt_missing=(1,)))
    open(tmp_path / "c.vmdk", "w").write(g.desc("vmfsSparse",
                                                [(4096 * 3, "VMFSSPARSE", "e.vmdk")]))
    assert_judged_same(tmp_path, "c.vmdk")


def test_cowd_standalone(tmp_path):
    open(tmp_path / "c.vmdk", "wb").write(
        g.cowd(COWD_CAP, 16, COWD_GRAINS, text_at_0x200="CID=abcd\nparentCID=ffffffff\n"))
    assert_judged_same(tmp_path, "c.vmdk")


def test_cowd_standalone_without_cids(tmp_path):
    """QEMU reads the CIDs at 0x200 of a lone COWD file: none, no open."""
    open(tmp_path / "c.vmdk", "wb").write(g.cowd(COWD_CAP, 16, COWD_GRAINS))
    assert_judged_same(tmp_path, "c.vmdk")


def test_sesparse(tmp_path):
    se_desc(tmp_path)
    assert_judged_same(tmp_path, "s.vmdk")


def test_sesparse_missing_table(tmp_path):
    se_desc(tmp_path, ext_kw={"gt_missing": (1,)})
    assert_judged_same(tmp_path, "s.vmdk")


def test_mixed_extents(tmp_path):
    """A vmfs descriptor naming a VMFS flat extent, a COWD and an seSparse
    extent one after another (QEMU takes any mix of types)."""
    # a sparse extent that ends inside a grain makes QEMU answer (and read)
    # up to the grain's end, into the next extent: not followed here, so
    # the middle extent is a whole number of grains (README, differences)
    cap = COWD_CAP + 8
    open(tmp_path / "flat.bin", "wb").write(pattern(0x31, 3 * M))
    open(tmp_path / "c.bin", "wb").write(g.cowd(cap, 16, COWD_GRAINS))
    open(tmp_path / "s.bin", "wb").write(g.sesparse(SE_CAP, SE_GRAINS, zero=[2]))
    open(tmp_path / "m.vmdk", "w").write(g.desc("vmfs", [
        (2048, "VMFS", "flat.bin"), (cap, "VMFSSPARSE", "c.bin"),
        (SE_CAP, "SESPARSE", "s.bin")]))
    # seSparse makes the whole image read-only: info/map/convert only
    assert_judged_same(tmp_path, "m.vmdk")


@pytest.mark.parametrize("ctype", ["vmfs", "vmfsThin"])
def test_vmfs_flat(tmp_path, ctype):
    """vmfs descriptors read like flat ones (QEMU refuses vmfsThin)."""
    data = bytearray(os.urandom(3 * M))
    data[M:2 * M] = bytes(M)
    open(tmp_path / "f.bin", "wb").write(data)
    open(tmp_path / "v.vmdk", "w").write(g.desc(ctype, [(6144, "VMFS", "f.bin")]))
    assert_judged_same(tmp_path, "v.vmdk")


def test_cowd_delta_over_parent(tmp_path):
    """An ESX snapshot: a vmfsSparse delta whose parent is a vmdk."""
    d = tmp_path
    sh(["create", "-q", "-f", "vmdk", "base.vmdk", str(COWD_CAP * 512)], d)
    subprocess.run([QEMU_IO, "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x5b 40M 64k",
                    "base.vmdk"], cwd=d, check=True, capture_output=True)
    cid = json.loads(sh(["info", "--output=json", "base.vmdk"], d).stdout)
    pcid = cid["format-specific"]["data"]["cid"]
    g.write_image(d, "delta.vmdk", "vmfsSparse", "VMFSSPARSE",
                  g.cowd(COWD_CAP, 16, COWD_GRAINS), COWD_CAP, parent_cid=pcid,
                  extra='parentFileNameHint="base.vmdk"\n')
    assert_judged_same(d, "delta.vmdk")


COWD_WRITES = ["write -P 0x99 4096 8192", "write -P 0x98 100000 30000",
               "write -P 0x97 33554000 1000", "write -z 65536 8192"]


@pytest.mark.parametrize("standalone", [False, True])
def test_cowd_writes_as_qemu(tmp_path, standalone):
    """Writes into COWD extents: the same extent bytes as QEMU's."""
    files = {}
    for side in ("q", "v"):
        d = tmp_path / side
        d.mkdir()
        if standalone:
            open(d / "c.vmdk", "wb").write(g.cowd(COWD_CAP, 16, COWD_GRAINS,
                                                  text_at_0x200="CID=1\nparentCID=ffffffff\n"))
            files[side] = d / "c.vmdk"
        else:
            cowd_desc(d)
            files[side] = d / "c-ext.vmdk"
    args = [QEMU_IO, "-f", "vmdk"]
    for c in COWD_WRITES:
        args += ["-c", c]
    subprocess.run(args + ["c.vmdk"], cwd=tmp_path / "q", check=True, capture_output=True)
    vargs = [VDISK_IO, "-f", "vmdk", "c.vmdk"]
    for c in COWD_WRITES:
        w = c.split()
        vargs += (["write", w[2], w[3], w[4]] if w[1] == "-P" else ["zero", w[2], w[3]]) + ["--"]
    p = subprocess.run(vargs, cwd=tmp_path / "v", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    q, v = open(files["q"], "rb").read(), open(files["v"], "rb").read()
    if standalone:                 # the CID at 0x200 is random
        q, v = q[:0x200] + q[0x400:], v[:0x200] + v[0x400:]
    assert q == v
    p = sh(["compare", tmp_path / "q" / "c.vmdk", tmp_path / "v" / "c.vmdk"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("args", [
    ["resize", "s.vmdk", "+1M"],
    ["commit", "s.vmdk"],
    ["check", "-r", "all", "s.vmdk"],
    ["rebase", "-u", "-b", "", "s.vmdk"],
    ["convert", "-n", "-O", "vmdk", "r.raw", "s.vmdk"],
])
def test_sesparse_write_refused(tmp_path, args):
    se_desc(tmp_path)
    open(tmp_path / "r.raw", "wb").write(bytes(SE_CAP * 512))
    assert_same_run(sh(args, tmp_path), sh(args, tmp_path, VDISK_IMG))


def test_sesparse_io_refused(tmp_path):
    se_desc(tmp_path)
    q = subprocess.run([QEMU_IO, "-c", "write 0 512", "s.vmdk"], cwd=tmp_path,
                       capture_output=True, text=True)
    v = subprocess.run([VDISK_IO, "-f", "vmdk", "s.vmdk", "write", "0x1", "0", "512", "--"],
                       cwd=tmp_path, capture_output=True, text=True)
    msg = "No write support for seSparse images available"
    assert q.returncode and msg in q.stderr + q.stdout
    assert v.returncode and msg in v.stderr


SE_HEADER_CASES = {
    "magic": ({"header": {"magic": 0xcafebabf}}, "Bad const header magic"),
    "version": ({"header": {"version": 0x100000001}}, "Unsupported version"),
    "grain_size": ({"header": {"grain_size": 16}}, "Unsupported grain size: 16"),
    "gt_size": ({"header": {"grain_table_size": 32}}, "Unsupported grain table size"),
    "flags": ({"header": {"flags": 1}}, "Unsupported flags"),
    "reserved": ({"header": {"reserved3": 7}}, "Unsupported reserved bits"),
    "vol_magic": ({"volatile": {"magic": 1}}, "Bad volatile header magic"),
    "dirty": ({"volatile": {"replay_journal": 1}},
              "Image is dirty, Replaying journal not supported"),
}


@pytest.mark.parametrize("kind", sorted(SE_HEADER_CASES))
def test_sesparse_header_checks(tmp_path, kind):
    kw, msg = SE_HEADER_CASES[kind]
    g.write_image(tmp_path, "s.vmdk", "seSparse", "SESPARSE",
                  g.sesparse(SE_CAP, SE_GRAINS, **kw), SE_CAP)
    q, v = sh(["info", "s.vmdk"], tmp_path), sh(["info", "s.vmdk"], tmp_path, VDISK_IMG)
    assert msg in q.stderr, q.stderr
    assert_same_run(q, v)


def se_pad(p):
    """Non-zero padding in the constant header."""
    with open(p, "r+b") as f:
        f.seek(500)
        f.write(b"\1")


def se_vol_pad(p):
    with open(p, "r+b") as f:
        f.seek(512 + 100)
        f.write(b"\1")


@pytest.mark.parametrize("poke,msg", [
    (se_pad, "Unsupported non-zero const header padding"),
    (se_vol_pad, "Unsupported non-zero volatile header padding"),
])
def test_sesparse_padding(tmp_path, poke, msg):
    se_desc(tmp_path)
    poke(tmp_path / "s-ext.vmdk")
    q, v = sh(["info", "s.vmdk"], tmp_path), sh(["info", "s.vmdk"], tmp_path, VDISK_IMG)
    assert msg in q.stderr
    assert_same_run(q, v)


# ---- hostile COWD / seSparse extents: a clear error, never a crash ----

def cowd_field(off, v):
    def f(d):
        cowd_desc(d)
        with open(d / "c-ext.vmdk", "r+b") as fh:
            fh.seek(off)
            fh.write(struct.pack("<I", v))
        return "c.vmdk"
    return f


def se_gen(**kw):
    def f(d):
        g.write_image(d, "s.vmdk", "seSparse", "SESPARSE", g.sesparse(SE_CAP, SE_GRAINS, **kw),
                      SE_CAP)
        return "s.vmdk"
    return f


def se_header(**fields):
    return se_gen(header=fields)


HOSTILE = {
    # COWD: header at 4: version, flags, sectors, granularity, gd sector, gd entries
    "cowd_granularity_zero": cowd_field(16, 0),
    "cowd_granularity_not_pow2": cowd_field(16, 12),
    "cowd_granularity_huge": cowd_field(16, 0x40000000),
    "cowd_gd_past_eof": cowd_field(20, 0x7fffffff),
    "cowd_gd_in_header": cowd_field(20, 0),
    "cowd_gd_huge": cowd_field(24, 0xffffffff),
    "cowd_capacity_huge": cowd_field(12, 0xffffffff),
    "cowd_gt_past_eof": lambda d: (cowd_desc(d), _poke(d / "c-ext.vmdk", 4 * 512,
                                                       struct.pack("<I", 0x7fffff00)),
                                   "c.vmdk")[-1],
    "cowd_grain_past_eof": lambda d: (cowd_desc(d), _poke(d / "c-ext.vmdk", 5 * 512,
                                                          struct.pack("<I", 0x7fffff00)),
                                      "c.vmdk")[-1],
    "cowd_grain_in_header": lambda d: (cowd_desc(d), _poke(d / "c-ext.vmdk", 5 * 512,
                                                           struct.pack("<I", 0)),
                                       _poke(d / "c-ext.vmdk", 5 * 512 + 8,
                                             struct.pack("<I", 0)),
                                       _poke(d / "c-ext.vmdk", 5 * 512 + 12,
                                             struct.pack("<I", 0)),
                                       _poke(d / "c-ext.vmdk", 5 * 512 + 4,
                                             struct.pack("<I", 0)), "c.vmdk")[-1],
    "cowd_truncated": lambda d: (cowd_desc(d), os.truncate(d / "c-ext.vmdk", 30),
                                 "c.vmdk")[-1],
    "se_gd_huge": se_header(grain_dir_size=1 << 40),
    "se_gd_past_eof": se_header(grain_dir_offset=1 << 40),
    "se_gd_offset_wraps": se_header(grain_dir_offset=(1 << 64) - 1),
    "se_vol_past_eof": se_header(volatile_header_offset=1 << 50),
    "se_vol_wraps": se_header(volatile_header_offset=(1 << 64) - 1),
    "se_gt_base_huge": se_header(grain_tables_offset=(1 << 64) - 8),
    "se_grains_base_huge": se_header(grains_offset=(1 << 64) - 8),
    "se_grains_past_eof": se_header(grains_offset=1 << 31),
    "se_capacity_huge": se_header(capacity=(1 << 63) - 1),
    "se_bad_entry_type": se_gen(bad_entries={1: 0x7000000000000000}),
    "se_bad_unalloc": se_gen(bad_entries={1: 0x5}),
    "se_grain_index_huge": se_gen(bad_entries={1: 0x3fffffffffffffff}),
    "se_grain_in_header": se_gen(bad_entries={1: 0x3000000000000000},
                                 header={"grains_offset": 0}),
    "se_truncated": lambda d: (se_desc(d), os.truncate(d / "s-ext.vmdk", 100), "s.vmdk")[-1],
}


def _poke(p, off, data):
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(data)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_esx(tmp_path, kind):
    name = HOSTILE[kind](tmp_path)
    for args in (["info", name], ["map", name], ["check", name],
                 ["convert", "-O", "raw", name, "out.raw"]):
        v = sh(args, tmp_path, VDISK_IMG, limited=True)
        assert 0 <= v.returncode < 64, (args, v.stderr)
        assert "Sanitizer" not in v.stderr and "runtime error" not in v.stderr, v.stderr
        if v.returncode:
            assert v.stderr.strip()
    if name == "c.vmdk":
        w = sh(["-f", "vmdk", name, "write", "0x99", "0", "8192", "--"], tmp_path, VDISK_IO,
               limited=True)
        assert 0 <= w.returncode < 64, w.stderr
    for f in os.listdir(tmp_path):         # the image files did not balloon
        if f != "out.raw":
            assert os.path.getsize(tmp_path / f) < 1 << 34


@pytest.mark.parametrize("kind,cmd", [
    ("se_vol_wraps", "info"), ("se_gd_offset_wraps", "info"), ("se_capacity_huge", "info"),
    ("se_bad_entry_type", "check"), ("se_bad_unalloc", "check"),
    ("cowd_capacity_huge", "check"),
])
def test_hostile_esx_as_qemu(tmp_path, kind, cmd):
    """Where qemu-img fails cleanly on a hostile extent, vdisk says the same."""
    name = HOSTILE[kind](tmp_path)
    q, v = sh([cmd, name], tmp_path), sh([cmd, name], tmp_path, VDISK_IMG, limited=True)
    assert q.returncode, q.stdout
    assert_same_run(q, v)
