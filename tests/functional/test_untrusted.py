# SPDX-License-Identifier: BSD-3-Clause
"""Untrusted-image mode (--untrusted, VDISK_UNTRUSTED): every way an image
can make the tool read another host file works by default, as with
qemu-img (the attack of OSSA-2024-001), and is refused in untrusted mode,
with the option and with the environment variable; a -f format its bytes
contradict is refused; tables sized by the header are capped; plain images
give the same results in both modes, in vdisk-img and in vdisk-nbd."""
import json
import os
import shutil
import struct
import subprocess

import pytest

from conftest import VDISK_IMG, run, vimg
from nbd_helpers import VDISK_NBD, ENV, Server

SECRET = b"HOST-SECRET!"        # 12 bytes; the file is this repeated
UNTRUSTED_ENV = dict(os.environ, VDISK_UNTRUSTED="1")

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img is not installed")


def qimg(*args):
    p = run(["qemu-img"] + [str(a) for a in args])
    assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def secret(tmp_path):
    """A host file the images below must not be able to read: 1 MiB."""
    p = tmp_path / "host-secret"
    p.write_bytes(SECRET * ((1 << 20) // len(SECRET)) + b"\0" * ((1 << 20) % len(SECRET)))
    return p


def convert(tmp_path, src, *opts, env=None):
    """vdisk-img convert src to raw with opts; (process, output bytes)."""
    out = tmp_path / "out.raw"
    if out.exists():
        out.unlink()
    p = vimg("convert", *opts, "-O", "raw", src, out, env=env)
    return p, out.read_bytes() if p.returncode == 0 else b""


def assert_leaks_then_refused(tmp_path, src, ref, *opts):
    """By default converting src copies the secret (qemu-img's behaviour);
    --untrusted (before or after the command) and VDISK_UNTRUSTED=1 refuse
    it with a message naming ref."""
    p, data = convert(tmp_path, src, *opts)
    assert p.returncode == 0, p.stderr
    assert SECRET in data
    for mode in (["--untrusted"], None, "global"):
        if mode == "global":
            out = tmp_path / "out.raw"
            p = vimg("--untrusted", "convert", *opts, "-O", "raw", src, out)
        elif mode is None:
            p, data = convert(tmp_path, src, *opts, env=UNTRUSTED_ENV)
        else:
            p, data = convert(tmp_path, src, *opts, *mode)
        assert p.returncode == 1
        assert "refused in untrusted mode" in p.stderr, p.stderr
        assert str(ref) in p.stderr, p.stderr
        assert p.stdout == ""


# ---- qcow2 backing files ----

@needs_qemu_img
@pytest.mark.parametrize("kind", ["relative", "absolute", "json", "file:"])
def test_qcow2_backing_refused(tmp_path, secret, kind):
    name = {"relative": secret.name, "absolute": str(secret),
            "json": 'json:{"driver":"raw","file":{"driver":"file","filename":"%s"}}'
                    % secret,
            "file:": "file:%s" % secret}[kind]
    img = tmp_path / "evil.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "raw", img, "1M")
    assert_leaks_then_refused(tmp_path, img, name)
    p = vimg("info", "--untrusted", img)
    assert p.returncode == 1 and "backing file" in p.stderr
    if kind == "json":
        assert "(a json: name)" in p.stderr
    if kind == "file:":
        assert "(protocol prefix 'file:')" in p.stderr


@needs_qemu_img
def test_qcow2_backing_over_nbd_refused(tmp_path, secret):
    sock = str(tmp_path / "s")
    srv = Server(VDISK_NBD, ["-f", "raw", "-r", "-t", secret], sock=sock)
    try:
        name = "nbd:unix:%s" % sock
        img = tmp_path / "evil.qcow2"
        qimg("create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "raw", img, "1M")
        assert_leaks_then_refused(tmp_path, img, name)
        p = vimg("info", "--untrusted", img)
        assert "(protocol prefix 'nbd:')" in p.stderr
    finally:
        srv.stop()


@needs_qemu_img
def test_qcow2_data_file_refused(tmp_path, secret):
    img, df = tmp_path / "evil.qcow2", tmp_path / "data"
    qimg("create", "-q", "-f", "qcow2", "-o",
         "data_file=%s,data_file_raw=on,preallocation=metadata" % df, img, "1M")
    shutil.copy(secret, df)        # the name could be any host file
    assert_leaks_then_refused(tmp_path, img, df)
    p = vimg("info", "--untrusted", img)
    assert p.returncode == 1 and "Could not open data file" in p.stderr


# ---- vmdk extents and parents ----

def descriptor(tmp_path, create_type, extents):
    p = tmp_path / "evil.vmdk"
    p.write_text("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                 'createType="%s"\n\n%s\nddb.virtualHWVersion = "4"\n'
                 % (create_type, "".join(l + "\n" for l in extents)))
    return p


def test_vmdk_flat_extent_naming_host_file_refused(tmp_path, secret):
    img = descriptor(tmp_path, "monolithicFlat", ['RW 2048 FLAT "%s" 0' % secret])
    assert_leaks_then_refused(tmp_path, img, secret)


@pytest.mark.parametrize("target", ["missing", "device", "proc"])
def test_vmdk_extent_refusal_tells_nothing_about_the_path(tmp_path, target):
    """The refusal comes before the extent's path is looked at: a missing
    file, a device and a /proc file get the same refusal (no probing of the
    host's files through error messages)."""
    name = {"missing": str(tmp_path / "no" / "such"), "device": "/dev/null",
            "proc": "/proc/self/environ"}[target]
    img = descriptor(tmp_path, "monolithicFlat", ['RW 2048 FLAT "%s" 0' % name])
    p = vimg("--untrusted", "info", "-f", "vmdk", img)
    assert p.returncode == 1 and p.stdout == ""
    assert "refused in untrusted mode" in p.stderr, p.stderr
    assert p.stderr.strip().endswith("'%s': refused in untrusted mode" % name), p.stderr


def test_vmdk_two_gb_max_extent_refused(tmp_path, secret):
    img = descriptor(tmp_path, "twoGbMaxExtentFlat",
                     ['RW 1024 FLAT "%s" 0' % secret, 'RW 1024 FLAT "%s" 1024' % secret])
    assert_leaks_then_refused(tmp_path, img, secret)


@needs_qemu_img
@pytest.mark.parametrize("sub", ["twoGbMaxExtentSparse", "monolithicFlat"])
def test_vmdk_descriptor_with_other_files_refused(tmp_path, sub):
    """Even well-formed images made by qemu-img: their extents are other files."""
    img = tmp_path / "d.vmdk"
    qimg("create", "-q", "-f", "vmdk", "-o", "subformat=" + sub, img, "4M")
    assert vimg("info", img).returncode == 0
    for args, env in ((["--untrusted"], None), ([], UNTRUSTED_ENV)):
        p = vimg("info", *args, img, env=env)
        assert p.returncode == 1
        assert "vmdk image '%s' references file '%s/d-" % (img, tmp_path) in p.stderr
        assert "refused in untrusted mode" in p.stderr


@needs_qemu_img
def test_vmdk_sparse_header_hiding_a_descriptor_refused(tmp_path, secret):
    """A KDMV header of capacity 0 sends the reader to a descriptor inside
    it, which may name any file: it looks like monolithicSparse but is not.
    qemu-img leaks the file (vdisk-img 7.2-compat reading fails on its CID
    by default); untrusted mode refuses it."""
    img = tmp_path / "kd.vmdk"
    head = b"KDMV" + struct.pack("<IIQQQQ", 1, 3, 0, 128, 1, 20)
    desc = ('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
            'createType="monolithicFlat"\n\nRW 2048 FLAT "%s" 0\n' % secret).encode()
    img.write_bytes(head.ljust(512, b"\0") + desc.ljust(20 * 512, b"\0"))
    out = tmp_path / "q.raw"
    qimg("convert", "-O", "raw", img, out)
    assert SECRET in out.read_bytes()
    for args, env in ((["--untrusted"], None), ([], UNTRUSTED_ENV)):
        p, _ = convert(tmp_path, img, *args, env=env)
        assert p.returncode == 1
        assert "references file '%s': refused in untrusted mode" % secret in p.stderr


@needs_qemu_img
def test_vmdk_parent_file_name_hint_refused(tmp_path, secret):
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    qimg("convert", "-f", "raw", "-O", "vmdk", secret, base)
    qimg("create", "-q", "-f", "vmdk", "-b", base.name, "-F", "vmdk", child, "1M")
    assert 'parentFileNameHint="base.vmdk"' in child.read_bytes().decode("latin-1")
    assert_leaks_then_refused(tmp_path, child, "backing file 'base.vmdk'")


# ---- the format given must be the one the bytes say ----

@needs_qemu_img
@pytest.mark.parametrize("fmt,given", [("qcow2", "raw"), ("vmdk", "raw"),
                                       ("qcow2", "vmdk"), ("vdi", "vpc")])
def test_format_mismatch_refused(tmp_path, fmt, given):
    img = tmp_path / ("x." + fmt)
    qimg("create", "-q", "-f", fmt, img, "1M")
    default = vimg("info", "-f", given, img)
    assert default.returncode == (0 if given == "raw" else 1)
    for args, env in ((["--untrusted"], None), ([], UNTRUSTED_ENV)):
        p = vimg("info", *args, "-f", given, img, env=env)
        assert p.returncode == 1
        assert ("'%s' was given as format '%s' but its contents are '%s': format "
                "mismatch refused in untrusted mode" % (img, given, fmt)) in p.stderr
    p = vimg("info", "--untrusted", "-f", fmt, img)      # the right -f is fine
    assert p.returncode == 0, p.stderr


def test_vmdk_descriptor_given_as_raw_refused(tmp_path, secret):
    img = descriptor(tmp_path, "monolithicFlat", ['RW 2048 FLAT "%s" 0' % secret])
    p = vimg("convert", "--untrusted", "-f", "raw", "-O", "raw", img, tmp_path / "o")
    assert p.returncode == 1 and "format mismatch" in p.stderr


# ---- caps on tables sized by the header ----

@needs_qemu_img
def test_huge_l1_table_refused_within_cap(tmp_path):
    """An L1 table of 32 MiB (QEMU's own limit) lies past the end of a tiny
    file: opened by default, refused in untrusted mode before allocation."""
    img = tmp_path / "huge.qcow2"
    qimg("create", "-q", "-f", "qcow2", img, "1M")
    with open(img, "r+b") as f:
        f.seek(36)
        f.write(struct.pack(">I", 4 << 20))
    limit, base = ["prlimit", "--as=1073741824", "--"], dict(os.environ)
    if os.environ.get("VDISK_SANITIZED"):
        # ASan's shadow memory needs more address space: cap through ASan.
        limit = []
        base["ASAN_OPTIONS"] = base.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=1024"
    p = run(limit + [VDISK_IMG, "info", img], env=base)
    assert p.returncode == 0, p.stderr
    for env in (base, dict(base, VDISK_UNTRUSTED="1")):
        args = [] if "VDISK_UNTRUSTED" in env else ["--untrusted"]
        p = run(limit + [VDISK_IMG, "info"] + args + [str(img)], env=env)
        assert p.returncode == 1
        assert ("qcow2 L1 table needs 33554432 bytes, over the 16 MiB cap on image "
                "tables: refused in untrusted mode") in p.stderr


@needs_qemu_img
def test_vdi_block_map_over_cap_refused(tmp_path):
    """A 5 TiB vdi has a 20 MiB block map: over the cap, so refused."""
    img = tmp_path / "big.vdi"
    qimg("create", "-q", "-f", "vdi", img, "5T")
    assert vimg("info", img).returncode == 0
    p = vimg("info", "--untrusted", img)
    assert p.returncode == 1
    assert "vdi block map needs 20971520 bytes, over the 16 MiB cap" in p.stderr


# ---- plain images: same results in both modes ----

PLAIN = [("raw", []), ("qcow2", []), ("vmdk", ["-o", "subformat=monolithicSparse"]),
         ("vmdk", ["-o", "subformat=streamOptimized"]), ("vdi", []), ("vpc", [])]


@pytest.fixture
def source(tmp_path):
    """4 MiB of guest data: a pattern at 0 and at 3 MiB, zeroes between."""
    p = tmp_path / "src.raw"
    with open(p, "wb") as f:
        f.write(bytes(range(256)) * 256)
        f.seek(3 << 20)
        f.write(b"\xa5" * (1 << 20))
    return p


def plain_image(tmp_path, source, fmt, opts):
    img = tmp_path / ("plain." + fmt)
    p = vimg("convert", "-f", "raw", "-O", fmt, *opts, source, img)
    assert p.returncode == 0, p.stderr
    return img


@pytest.mark.parametrize("fmt,opts", PLAIN, ids=[f + "".join(o[1:]) for f, o in PLAIN])
def test_plain_images_same_in_untrusted_mode(tmp_path, source, fmt, opts):
    img = plain_image(tmp_path, source, fmt, opts)
    p, want = convert(tmp_path, img)       # vpc rounds the size to its geometry
    assert p.returncode == 0 and want[:4 << 20] == source.read_bytes()
    for args in ([], ["-f", fmt]):
        for extra, env in (([], None), (["--untrusted"], None), ([], UNTRUSTED_ENV)):
            p, data = convert(tmp_path, img, *args, *extra, env=env)
            assert p.returncode == 0, p.stderr
            assert data == want
    for cmd in (["info", "--output=json"], ["check"], ["map", "--output=json"]):
        a = vimg(*cmd, "-f", fmt, img)
        b = vimg(*cmd, "--untrusted", "-f", fmt, img)
        c = vimg(*cmd, img, env=UNTRUSTED_ENV)
        assert a.returncode == b.returncode == c.returncode
        assert a.stdout == b.stdout == c.stdout, cmd
    sock = str(tmp_path / "s")
    srv = Server(VDISK_NBD, ["--untrusted", "-f", fmt, "-r", "-t", img], sock=sock)
    try:
        out = tmp_path / "nbd.raw"
        p = run(["nbdcopy", "nbd+unix:///?socket=" + sock, str(out)], env=ENV)
        assert p.returncode == 0, p.stderr
        assert out.read_bytes() == want
    finally:
        srv.stop()


def test_every_image_command_accepts_untrusted(tmp_path, source):
    img = plain_image(tmp_path, source, "qcow2", [])
    other = plain_image(tmp_path, source, "vdi", [])
    cmds = [["info"], ["info", "-U"], ["check"], ["map"], ["measure", "-O", "qcow2"],
            ["compare", other], ["snapshot", "-l"], ["bench", "-c", "4"],
            ["dd", "if=%s" % img, "of=%s" % (tmp_path / "dd.raw"), "-O", "raw"],
            ["convert", "-O", "raw", img], ["amend", "-o", "lazy_refcounts=on"],
            ["resize", img, "8M"], ["commit"], ["rebase", "-u", "-b", ""]]
    for cmd in cmds:
        args = cmd + ([] if cmd[0] in ("dd", "resize") else [img])
        if cmd[0] == "convert":
            args.append(tmp_path / "c.raw")
        a = vimg(*args)
        b = vimg(cmd[0], "--untrusted", *args[1:])
        assert a.returncode == b.returncode, (cmd, a.stderr, b.stderr)
        assert "refused" not in b.stderr and "unrecognized" not in b.stderr, cmd


def test_untrusted_after_double_dash_is_a_file_name(tmp_path):
    p = vimg("info", "--", "--untrusted")
    assert p.returncode == 1 and "Could not open '--untrusted'" in p.stderr


def test_user_json_name_and_targets_are_trusted(tmp_path, source):
    """json: and options on the command line are the user's, as are the
    images a command writes (convert -B names a backing file)."""
    img = plain_image(tmp_path, source, "qcow2", [])
    j = 'json:{"driver":"qcow2","file":{"driver":"file","filename":"%s"}}' % img
    assert vimg("info", "--untrusted", j).returncode == 0
    out = tmp_path / "overlay.qcow2"
    p = vimg("convert", "--untrusted", "-B", img, "-F", "qcow2", "-O", "qcow2", img, out)
    assert p.returncode == 0, p.stderr
    assert vimg("info", "--untrusted", out).returncode == 1


@pytest.mark.parametrize("val,refused", [("1", True), ("yes", True), ("0", False),
                                         ("", False)])
def test_env_values(tmp_path, secret, val, refused):
    img = descriptor(tmp_path, "monolithicFlat", ['RW 2048 FLAT "%s" 0' % secret])
    p = vimg("info", img, env=dict(os.environ, VDISK_UNTRUSTED=val))
    assert p.returncode == (1 if refused else 0)


# ---- vdisk-nbd ----

@pytest.mark.parametrize("how", ["option", "env"])
def test_nbd_server_refuses(tmp_path, secret, how):
    img = descriptor(tmp_path, "monolithicFlat", ['RW 2048 FLAT "%s" 0' % secret])
    args = [VDISK_NBD, "-k", str(tmp_path / "s"), "-r", img]
    env = dict(ENV, VDISK_UNTRUSTED="1") if how == "env" else ENV
    if how == "option":
        args.insert(1, "--untrusted")
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                       timeout=30)
    assert p.returncode == 1
    assert "references file '%s': refused in untrusted mode" % secret in p.stderr
    p = subprocess.run([VDISK_NBD, "--untrusted", "-k", str(tmp_path / "s"), "-f", "raw",
                        "-r", str(img)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "format mismatch" in p.stderr


def test_nbd_snapshot_mode_checks_the_image(tmp_path, source, secret):
    """-s puts a temporary overlay of ours on the image: the image is still
    checked, the overlay's own backing reference is not refused."""
    img = plain_image(tmp_path, source, "qcow2", [])
    sock = str(tmp_path / "s")
    srv = Server(VDISK_NBD, ["--untrusted", "-s", "-t", img], sock=sock)
    try:
        out = tmp_path / "nbd.raw"
        p = run(["nbdcopy", "nbd+unix:///?socket=" + sock, str(out)], env=ENV)
        assert p.returncode == 0, p.stderr
        assert out.read_bytes() == source.read_bytes()
    finally:
        srv.stop()
    evil = descriptor(tmp_path, "monolithicFlat", ['RW 2048 FLAT "%s" 0' % secret])
    p = subprocess.run([VDISK_NBD, "--untrusted", "-s", "-k", sock, str(evil)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "refused in untrusted mode" in p.stderr


@needs_qemu_img
def test_refusal_message_shows_no_control_characters(tmp_path):
    img = tmp_path / "esc.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", "a\x1b[31mred\nline", "-F", "raw",
         img, "1M")
    p = vimg("info", "--untrusted", img)
    assert p.returncode == 1
    assert "references backing file 'a?[31mred?line': refused" in p.stderr
    assert "\x1b" not in p.stderr and p.stderr.count("\n") == 1


# ---- differencing vdi, vpc and vhdx: the parent is another file ----

def secret_parent(tmp_path, secret, fmt, *opts):
    """The secret as an image of format fmt (the parent a child names)."""
    parent = tmp_path / ("parent." + fmt)
    qimg("convert", "-q", "-f", "raw", "-O", fmt, *opts, secret, parent)
    return parent


@needs_qemu_img
def test_vdi_differencing_parent_refused(tmp_path, secret):
    import diffimg
    parent = secret_parent(tmp_path, secret, "vdi")
    child = tmp_path / "child.vdi"
    diffimg.make_vdi_child(parent, child, {})
    assert_leaks_then_refused(tmp_path, child, child)


@needs_qemu_img
def test_vpc_differencing_parent_refused(tmp_path, secret):
    import diffimg
    parent = secret_parent(tmp_path, secret, "vpc")
    child = tmp_path / "child.vhd"
    diffimg.make_vhd_child(parent, child, {})
    assert_leaks_then_refused(tmp_path, child, parent.name)


@needs_qemu_img
def test_vhdx_differencing_parent_refused(tmp_path, secret):
    import vhdx_gen
    parent = secret_parent(tmp_path, secret, "vhdx")
    child = tmp_path / "child.vhdx"
    qimg("create", "-q", "-f", "vhdx", "-o", "block_state_zero=off", child, "1M")
    vhdx_gen.make_differencing(str(child), parent.name)
    assert_leaks_then_refused(tmp_path, child, parent.name)
