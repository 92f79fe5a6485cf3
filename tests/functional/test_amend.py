# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img amend against qemu-img 7.2, differentially: an image (with
its backing file, if any) is built once, copied into two directories, and
qemu-img amend runs on one copy, vdisk-img amend on the other, with the
same options.  Both must exit the same and print the same; afterwards the
two images pass qemu-img check alike, and info --output=json, map
--output=json and the guest content (the active layer and each snapshot)
agree.

Covered: every option qcow2 amends (compat both ways, lazy_refcounts,
refcount_bits, size, backing_file/backing_fmt, data_file,
data_file_raw), refusals (create-only options, encryption, bad values,
what a v2 image cannot hold), images with data, zero clusters (with and
without a backing file), compressed clusters and snapshots, -p, -q, -f,
-t, --image-opts, --force, -o help and other formats."""
import json
import os
import shutil
import subprocess

import pytest

from chain_helpers import identical, template
from conftest import QEMU_IMG, TOP, VDISK_IMG as _VDISK_IMG, needs_vdisk_format, same_output

QEMU_IO = shutil.which("qemu-io")
VDISK_IMG = os.path.abspath(_VDISK_IMG)
TIMEOUT = 120
MASKED_KEYS = {"date-sec", "date-nsec"}


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def run_in(d, prog, *args):
    return subprocess.run([prog] + [str(a) for a in args], cwd=d, capture_output=True,
                          text=True, timeout=TIMEOUT)


def qio(d, img, *cmds):
    args = ["-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    p = run_in(d, QEMU_IO, *args, img)
    assert p.returncode == 0 and "failed" not in p.stdout + p.stderr, p.stdout + p.stderr


def masked(obj):
    if isinstance(obj, dict):
        return {k: masked(v) for k, v in obj.items() if k not in MASKED_KEYS}
    if isinstance(obj, list):
        return [masked(v) for v in obj]
    return obj


DATA = ["write -P 1 0 1M", "write -z 1M 1M", "write -c -P 3 4M 64k",
        "write -P 5 8M 64k", "write -z 8M 64k", "discard 2M 64k",
        "write -z -u 12M 128k", "write -P 6 40M 96k"]


def build(d, create_opts="", backing=False, cmds=DATA, snapshot=False, after=()):
    """Make img.qcow2 (64 MiB) in d, with a backing file base.qcow2."""
    if backing:
        assert run_in(d, QEMU_IMG, "create", "-q", "-f", "qcow2", "base.qcow2",
                      "64M").returncode == 0
        qio(d, "base.qcow2", "write -P 7 0 16M", "write -P 8 32M 16M")
    args = ["create", "-q", "-f", "qcow2"]
    if create_opts:
        args += ["-o", create_opts]
    if backing:
        args += ["-b", "base.qcow2", "-F", "qcow2"]
    p = run_in(d, QEMU_IMG, *(args + ["img.qcow2", "64M"]))
    assert p.returncode == 0, p.stderr
    if cmds:
        qio(d, "img.qcow2", *cmds)
    if snapshot:
        assert run_in(d, QEMU_IMG, "snapshot", "-c", "s1", "img.qcow2").returncode == 0
        if after:
            qio(d, "img.qcow2", *after)


def pair(tmp_path, **kw):
    """Two copies (q, v) of the image build(**kw) makes, built once per
    worker.  The copies are dense (holes written as zeros), as the tests
    were written against: with the holes kept, a compat downgrade leaves
    a hole under a zeroed cluster where QEMU's leaves it allocated, and
    qemu-img map tells the two apart."""
    base = template(tmp_path, "amend", sorted(kw.items()), lambda d: build(d, **kw))
    q, v = tmp_path / "q", tmp_path / "v"
    shutil.copytree(base, q)
    shutil.copytree(base, v)
    return q, v


def info(d, img="img.qcow2"):
    p = run_in(d, QEMU_IMG, "info", "--output=json", "-U", img)
    return masked(json.loads(p.stdout)) if p.returncode == 0 else p.stderr


def same_info(q, v):
    """info agrees; the host's block count may differ by its own metadata
    (an extent tree block) for files with the same data and holes."""
    iq, iv = info(q), info(v)
    if isinstance(iq, dict) and isinstance(iv, dict):
        aq, av = iq.pop("actual-size", 0), iv.pop("actual-size", 0)
        assert abs(aq - av) <= 8192, (aq, av)
    assert iv == iq


def content(d, tmp, tag, snap=None):
    out = str(tmp / ("%s.%s.raw" % (tag, snap or "active")))
    args = ["convert", "-U", "-O", "raw"] + (["-l", snap] if snap else [])
    p = run_in(d, QEMU_IMG, *(args + ["img.qcow2", out]))
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def same_folders(q, v):
    """Do folders q and v hold the same files, each the same bytes and
    holes?"""
    names = sorted(os.listdir(q))
    return names == sorted(os.listdir(v)) and all(
        identical(os.path.join(q, n), os.path.join(v, n)) for n in names)


def same_images(q, v, tmp_path, snaps=()):
    """Both amended copies agree in check, info, map and content (at once
    when both folders hold the very same files)."""
    if same_folders(q, v):
        return
    cq = run_in(q, QEMU_IMG, "check", "img.qcow2")
    cv = run_in(v, QEMU_IMG, "check", "img.qcow2")
    if cq.returncode == 2 and cv.returncode == 0:
        # QEMU's downgrade sets OFLAG_COPIED from the L2 table's refcount,
        # wrongly for a preallocated zero cluster a snapshot shares: vdisk
        # sets it from the cluster's own (intended difference).
        assert all("OFLAG_COPIED data cluster" in l for l in cq.stderr.splitlines()
                   if l.startswith("ERROR")), cq.stderr
    else:
        assert cv.returncode == cq.returncode, cv.stdout + cv.stderr
        assert cv.stdout.replace(str(v), str(q)) == cq.stdout
    same_info(q, v)
    if cq.returncode not in (0, 2):
        return
    mq = run_in(q, QEMU_IMG, "map", "--output=json", "img.qcow2")
    mv = run_in(v, QEMU_IMG, "map", "--output=json", "img.qcow2")
    assert mv.stdout == mq.stdout
    for s in (None,) + tuple(snaps):
        assert content(v, tmp_path, "v", s) == content(q, tmp_path, "q", s)


def amend_both(q, v, *args, img="img.qcow2"):
    pq = run_in(q, QEMU_IMG, "amend", *(list(args) + ([img] if img else [])))
    pv = run_in(v, VDISK_IMG, "amend", *(list(args) + ([img] if img else [])))
    assert pv.returncode == pq.returncode, (pv.stderr, pq.stderr)
    assert same_output(pv.stderr, pq.stderr), (pv.stderr, pq.stderr)
    assert pv.stdout == pq.stdout, (pv.stdout, pq.stdout)
    return pq.returncode


# (create options, backing, snapshot, amend -o)
CASES = [
    ("", False, False, "compat=0.10"),
    ("", True, False, "compat=0.10"),
    ("", False, True, "compat=0.10"),
    ("", True, True, "compat=0.10"),
    ("compat=0.10", False, False, "compat=1.1"),
    ("compat=0.10", True, True, "compat=1.1"),
    ("compat=0.10", False, False, "compat=v3,lazy_refcounts=on"),
    ("compat=0.10", False, False, "lazy_refcounts=on"),
    ("compat=0.10", False, False, "refcount_bits=8"),
    ("compat=0.10", False, False, "refcount_bits=16"),
    ("", False, False, "compat=v2"),
    ("", False, False, "lazy_refcounts=on"),
    ("lazy_refcounts=on", False, False, "lazy_refcounts=off"),
    ("lazy_refcounts=on", False, False, "compat=0.10"),
    ("lazy_refcounts=on", False, False, "compat=0.10,lazy_refcounts=on"),
    ("", False, False, "compat=0.10,refcount_bits=8"),
    ("", False, False, "compat=0.42"),
    ("", False, False, "refcount_bits=3"),
    ("", False, False, "refcount_bits=128"),
    ("", False, False, "refcount_bits=0"),
    ("", False, False, "refcount_bits=x"),
    ("", False, False, "lazy_refcounts=maybe"),
    ("", False, False, "size=128M"),
    ("", False, False, "size=32M"),
    ("", False, False, "size=96M,compat=0.10"),
    ("", True, False, "backing_file=base.qcow2"),
    ("", True, False, "backing_file=base.qcow2,backing_fmt=qcow2"),
    ("", True, False, "backing_fmt=qcow2,compat=0.10"),
    ("", True, False, "backing_file=other.qcow2,backing_fmt=qcow2"),
    ("", True, False, "compat=0.10,backing_file=base.qcow2,backing_fmt=qcow2"),
    ("", False, False, "backing_file=base.qcow2"),
    ("", False, False, "data_file=x.raw"),
    ("", False, False, "data_file_raw=on"),
    ("", False, False, "data_file_raw=off"),
    ("", False, False, "cluster_size=4k"),
    ("", False, False, "encrypt.format=luks"),
    ("", False, False, "encrypt.keyslot=1"),
    ("", False, False, "encryption=on"),
    ("", False, False, "foo=bar"),
    ("extended_l2=on", False, False, "compat=0.10"),
    ("refcount_bits=8", False, False, "compat=0.10"),
    ("refcount_bits=8", False, False, "compat=0.10,refcount_bits=16"),
    ("refcount_bits=8", False, True, "refcount_bits=16,compat=0.10"),
    ("", False, True, "refcount_bits=1"),
    ("", False, True, "refcount_bits=2"),
    ("refcount_bits=64", False, True, "refcount_bits=4"),
    ("", True, False, "refcount_bits=64,lazy_refcounts=on"),
    ("compat=0.10", False, True, "refcount_bits=4"),
    ("compression_type=zstd", False, False, "compat=0.10"),
    ("data_file=d.raw", False, False, "compat=0.10"),
    ("data_file=d.raw", False, False, "data_file=d.raw"),
    ("data_file=d.raw,data_file_raw=on", False, False, "data_file_raw=off"),
    ("data_file=d.raw,data_file_raw=on", False, False, "data_file_raw=on"),
    ("data_file=d.raw", False, False, "data_file_raw=on"),
]


def case_cmds(create_opts):
    if "extended_l2" in create_opts or "data_file" in create_opts:
        return ["write -P 1 0 1M", "write -z 1M 1M", "write -P 5 8M 64k"]
    return DATA


@pytest.mark.parametrize("create_opts,backing,snapshot,opts", CASES)
def test_amend_option(tmp_path, create_opts, backing, snapshot, opts):
    q, v = pair(tmp_path, create_opts=create_opts, backing=backing,
                cmds=case_cmds(create_opts), snapshot=snapshot,
                after=["write -P 9 0 64k", "write -z 64k 64k", "write -z 16M 1M"])
    amend_both(q, v, "-o", opts)
    same_images(q, v, tmp_path, ("s1",) if snapshot else ())


BITS = [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("old", BITS)
@pytest.mark.parametrize("new", BITS)
def test_refcount_bits(tmp_path, old, new):
    # 4 KiB clusters: qemu-img walks every refcount the table could hold,
    # which takes it a minute for narrow refcounts with 64 KiB clusters.
    q, v = pair(tmp_path, create_opts="refcount_bits=%d,cluster_size=4k" % old)
    # Narrow widths cannot hold the refcount of a host cluster that
    # several compressed clusters share: both refuse alike.
    amend_both(q, v, "-o", "refcount_bits=%d" % new)
    same_images(q, v, tmp_path)


@pytest.mark.parametrize("opts", ["refcount_bits=64", "refcount_bits=1",
                                  "refcount_bits=8", "refcount_bits=32"])
def test_refcount_bits_many_blocks(tmp_path, opts):
    """512-byte clusters: many refcount blocks, a table of several clusters."""
    cmds = ["write -P %d %dk 3k" % (i % 250 + 1, i * 37) for i in range(300)]
    q, v = pair(tmp_path, create_opts="cluster_size=512", cmds=cmds, snapshot=True,
                after=["write -P 9 0 64k"])
    assert amend_both(q, v, "-o", opts) in (0, 1)
    same_images(q, v, tmp_path, ("s1",))


def test_zstd_compressed_refused(tmp_path):
    q, v = pair(tmp_path, create_opts="compression_type=zstd",
                cmds=["write -c -P 3 0 64k", "write -z 1M 64k"])
    assert amend_both(q, v, "-o", "compat=0.10") == 1
    same_images(q, v, tmp_path)


def test_snapshot_of_other_size_refused(tmp_path):
    q, v = pair(tmp_path, snapshot=True)
    for d in (q, v):
        assert run_in(d, QEMU_IMG, "resize", "-q", "img.qcow2", "128M").returncode == 0
    assert amend_both(q, v, "-o", "compat=0.10") == 1
    same_images(q, v, tmp_path, ("s1",))


@pytest.mark.parametrize("backing", [False, True])
def test_compat_round_trip(tmp_path, backing):
    """1.1 -> 0.10 -> 1.1 with zero clusters, with and without backing."""
    q, v = pair(tmp_path, backing=backing)
    for opts in ("compat=0.10", "compat=1.1", "compat=0.10"):
        assert amend_both(q, v, "-o", opts) == 0
        same_images(q, v, tmp_path)


def test_dirty_lazy_image(tmp_path):
    """A dirty image (lazy refcounts, not closed) is repaired at open."""
    q, v = pair(tmp_path, create_opts="lazy_refcounts=on",
                cmds=["write -P 1 0 1M", "write -z 1M 1M"])
    for d in (q, v):
        run_in(d, QEMU_IO, "-c", "write -P 2 2M 64k", "-c", "abort", "img.qcow2")
        assert info(d)["dirty-flag"], info(d)
    assert amend_both(q, v, "-o", "compat=0.10") == 0
    same_images(q, v, tmp_path)


@pytest.mark.parametrize("args", [
    ["-p", "-o", "compat=0.10"], ["-p", "-o", "lazy_refcounts=on"],
    ["-q", "-p", "-o", "compat=0.10"], ["-f", "qcow2", "-o", "compat=0.10"],
    ["-f", "raw", "-o", "compat=0.10"], ["-t", "none", "-o", "compat=0.10"],
    ["-t", "bogus", "-o", "compat=0.10"], ["--force", "-o", "lazy_refcounts=on"],
    ["-o", "compat=0.10", "-o", "lazy_refcounts=off"],
    ["-o", "help"], ["-o", "?"], ["-f", "qcow2", "-o", "help"],
])
def test_cli(tmp_path, args):
    q, v = pair(tmp_path, cmds=["write -P 1 0 1M", "write -z 1M 1M"])
    amend_both(q, v, *args)
    same_images(q, v, tmp_path)


def test_compat_upgrade_progress(tmp_path):
    q, v = pair(tmp_path, create_opts="compat=0.10",
                cmds=["write -P 1 0 1M"])
    assert amend_both(q, v, "-p", "-o", "compat=1.1") == 0


def test_image_opts(tmp_path):
    q, v = pair(tmp_path, cmds=["write -P 1 0 1M", "write -z 1M 1M"])
    spec = "driver=qcow2,file.driver=file,file.filename=img.qcow2"
    assert amend_both(q, v, "--image-opts", "-o", "compat=0.10", img=spec) == 0
    same_images(q, v, tmp_path)
    assert amend_both(q, v, "--image-opts", "-f", "qcow2", "-o", "compat=1.1",
                      img=spec) == 1


@pytest.mark.parametrize("args", [
    ["-f", "qcow2", "-o", "help"], ["-f", "qcow2", "-o", "?"], ["-f", "raw", "-o", "help"],
    ["-f", "nope", "-o", "help"], ["-o", "compat=0.10"], ["-f", "qcow2"], [],
    ["-o", "compat=0.10", "a", "b"],
])
def test_cli_no_image(tmp_path, args):
    q, v = tmp_path / "q", tmp_path / "v"
    q.mkdir()
    v.mkdir()
    amend_both(q, v, *args, img=None)


@pytest.mark.parametrize("fmt", ["raw", "vmdk", "vdi", "vpc"])
def test_other_formats(tmp_path, fmt):
    needs_vdisk_format(fmt)
    q, v = tmp_path / "q", tmp_path / "v"
    for d in (q, v):
        d.mkdir()
        assert run_in(d, QEMU_IMG, "create", "-q", "-f", fmt, "img", "1M").returncode == 0
    amend_both(q, v, "-f", fmt, "-o", "size=2M", img="img")
    amend_both(q, v, "-f", fmt, "-o", "help", img="img")


# ---- crash safety: fault injection and crash replay ----

import random as _random
import re as _re
import crash_replay as cr

EIO, ENOSPC = 5, 28
CRASH = {
    # name: (create options, qemu-io commands, amend options)
    "refcount_narrow": ("cluster_size=4k", ["write -P 1 0 1M", "write -z 1M 1M",
                                            "write -P 2 3M 256k"], "refcount_bits=4"),
    "refcount_wide": ("cluster_size=512,refcount_bits=8",
                      ["write -P 1 0 512k", "write -z 512k 64k", "write -P 2 1M 128k"],
                      "refcount_bits=64"),
    "downgrade": ("cluster_size=4k", ["write -P 1 0 1M", "write -z 1M 64k",
                                      "write -z 2M 1M", "write -P 3 3M 64k",
                                      "write -z 3M 4k"], "compat=0.10"),
    "downgrade_backing": ("cluster_size=4k", ["write -P 1 0 256k", "write -z 256k 256k",
                                              "write -z -u 2M 64k"], "compat=0.10"),
}


def amend_events():
    names = set()
    for f in ("amend.c", "amend_refcount.c"):
        text = open(os.path.join(TOP, "lib", "format", "qcow2", f)).read()
        names.update(_re.findall(r'vd_event\([^;]*?"(amend_[a-z0-9_]+)"\)', text))
    return sorted(names)


def crash_base(tmp_path, name):
    """The image before the amend (img.qcow2, with base.qcow2 for the
    backing case) and the raw guest content it must keep."""
    opts, cmds, _ = CRASH[name]
    backing = name.endswith("_backing")
    d = tmp_path / "orig"
    d.mkdir()
    build(d, create_opts=opts, backing=backing, cmds=cmds)
    return d


def crash_json(img, log=None, rule=None):
    node = {"driver": "file", "filename": str(img)}
    if rule:
        node = {"driver": "blkdebug", "inject-error": [rule], "image": node}
    if log:
        node = {"driver": "record", "log": str(log), "image": node}
    return "json:" + json.dumps({"driver": "qcow2", "file": node})


def judge_crashed(img, orig):
    """Problems with an image after a failed or interrupted amend: it must
    check clean or with leaks only (repaired by check -r all), and read as
    the original."""
    d = os.path.dirname(str(img))
    c = run_in(d, QEMU_IMG, "check", str(img))
    if c.returncode not in (0, 3):
        return ["%s: check %d: %s" % (img, c.returncode, c.stdout + c.stderr)]
    if c.returncode == 3:
        r = run_in(d, QEMU_IMG, "check", "-r", "all", str(img))
        c = run_in(d, QEMU_IMG, "check", str(img))
        if c.returncode != 0:
            return ["%s: not repaired: %s" % (img, r.stdout + c.stdout)]
    p = run_in(d, QEMU_IMG, "compare", "-q", str(orig), str(img))
    if p.returncode != 0:
        return ["%s: data differs (%d) %s" % (img, p.returncode, p.stderr)]
    return []


def fresh_copy(src, d, name):
    d.mkdir(exist_ok=True)
    for f in os.listdir(src):
        if f != "img.qcow2":
            shutil.copyfile(src / f, d / f)
    shutil.copyfile(src / "img.qcow2", d / name)
    return d / name


@pytest.mark.parametrize("name", sorted(CRASH))
def test_amend_fault_injection(tmp_path, name):
    """Every amend_* event fails with EIO and ENOSPC, once and always:
    amend fails with a message (or, for a failure after the switch,
    completes), and the image checks clean or repairable with its data."""
    orig = crash_base(tmp_path, name)
    opts = CRASH[name][2]
    events = amend_events()
    probs, failed = [], 0
    for ev in events:
        for err in (EIO, ENOSPC):
            for once in (True, False):
                tag = "%s-%d-%d" % (ev, err, once)
                img = fresh_copy(orig, tmp_path / "w", tag + ".qcow2")
                rule = {"event": ev, "errno": err, "once": once}
                p = run_in(img.parent, VDISK_IMG, "amend", "-o", opts,
                           crash_json(img, rule=rule))
                if p.returncode not in (0, 1) or "Sanitizer" in p.stderr:
                    probs.append("%s: died %d %s" % (tag, p.returncode, p.stderr))
                if p.returncode == 1:
                    failed += 1
                    if not p.stderr.startswith("vdisk-img: "):
                        probs.append("%s: no message: %r" % (tag, p.stderr))
                probs += judge_crashed(img, orig / "img.qcow2")
    assert not probs, "\n".join(probs[:20])
    assert failed, "no injected error reached amend"


@pytest.mark.parametrize("name", sorted(CRASH))
def test_amend_crash_replay(tmp_path, name):
    """Power loss at sampled writes of a recorded amend: the image opens,
    checks clean or repairable, and reads as before."""
    orig = crash_base(tmp_path, name)
    w = tmp_path / "w"
    img = fresh_copy(orig, w, "rec.qcow2")
    base = img.read_bytes()
    log = tmp_path / "rec.log"
    p = run_in(w, VDISK_IMG, "amend", "-o", CRASH[name][2], crash_json(img, log=log))
    assert p.returncode == 0, p.stderr
    rp = cr.Replay(str(log), base)
    assert rp.flush_at
    rng = _random.Random(1)
    probs = []
    for cut, v, data, _, _ in rp.images(rp.cuts(60, rng), ("drop", "random", "keep"), rng):
        path = w / ("cut%d-%s.qcow2" % (cut, v))
        cr.write_image(path, data)
        found = judge_crashed(path, orig / "img.qcow2")
        probs += ["cut %d/%d %s: %s" % (cut, len(rp.recs), v, f) for f in found]
        if not found:
            os.unlink(path)
    assert not probs, "\n".join(probs[:20])
