# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img's global command line: --help, --version, -T, unknown commands
and options, and the differential helper the other test files share."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, qimg, run, same_output, vimg


def differential(*args, cwd=None, setup=None):
    """Run qemu-img and vdisk-img with the same arguments (in cwd, after
    setup() each time when given) and assert identical stdout, stderr (up
    to the program name) and exit code.  Returns vdisk-img's result."""
    if QEMU_IMG is None:
        pytest.skip("qemu-img is not installed")
    results = []
    for prog in (QEMU_IMG, VDISK_IMG):
        if setup:
            setup()
        p = subprocess.run([prog] + [str(a) for a in args], capture_output=True,
                           text=True, cwd=cwd, timeout=300)
        results.append(p)
    q, v = results
    assert same_output(v.stdout, q.stdout), (args, q.stdout, v.stdout)
    assert same_output(v.stderr, q.stderr), (args, q.stderr, v.stderr)
    assert v.returncode == q.returncode, (args, q.returncode, v.returncode)
    return v


def nobody_prefix():
    """Command prefix running as an unprivileged user, or None."""
    if os.getuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_help_lists_commands_and_formats():
    p = vimg("--help")
    assert p.returncode == 0
    for cmd in ("amend", "bench", "bitmap", "check", "commit", "compare",
                "convert", "create", "dd", "info", "map", "measure",
                "snapshot", "rebase", "resize"):
        assert "\n  %s " % cmd in p.stdout
    fmts = [l for l in p.stdout.splitlines() if l.startswith("Supported formats:")]
    assert len(fmts) == 1
    names = fmts[0].split()[2:]
    assert "raw" in names and "file" in names
    assert names == sorted(names)


def test_help_short_and_per_command():
    full = vimg("--help").stdout
    assert vimg("-h").stdout == full
    for cmd in ("info", "map", "check", "create", "measure", "snapshot"):
        p = vimg(cmd, "-h")
        assert p.returncode == 0 and p.stdout == full


def test_help_synopses_match_qemu(needs_qemu):
    ours = vimg("--help").stdout.splitlines()
    theirs = qimg("--help").stdout.splitlines()
    start = theirs.index("Command syntax:")
    end = theirs.index("", start)
    for line in theirs[start:end]:
        assert line in ours


def test_version():
    p = vimg("--version")
    assert p.returncode == 0
    assert p.stdout.startswith("vdisk-img version 0.1.0\n")
    assert len(p.stdout.splitlines()) == 2
    assert vimg("-V").stdout == p.stdout


def test_no_arguments(needs_qemu):
    p = differential()
    assert p.stderr == ("vdisk-img: Not enough arguments\n"
                        "Try 'vdisk-img --help' for more information\n")
    assert p.returncode == 1


def test_unknown_command(needs_qemu):
    p = differential("frobnicate")
    assert p.stderr.startswith("vdisk-img: Command not found: frobnicate\n")
    assert p.returncode == 1


@pytest.mark.parametrize("opt", ["-x", "--bogus", "-q"])
def test_unknown_global_option(needs_qemu, opt):
    p = differential(opt, "info", "x")
    assert "unrecognized option '%s'" % opt in p.stderr


def test_trace_is_accepted(tmp_path):
    img = tmp_path / "t.raw"
    img.write_bytes(b"\0" * 4096)
    p = vimg("-T", "foo", "info", "-f", "raw", img)
    assert p.returncode == 0
    assert p.stdout.startswith("image: %s\n" % img)
    assert vimg("--trace", "enable=x", "info", "-f", "raw", img).returncode == 0


@pytest.mark.parametrize("args", [
    ["info", "--output"], ["info", "-f"], ["info", "--backing-chain=1", "x"],
    ["map", "--bogus", "x"], ["check", "-Z", "x"], ["create", "-Z"],
    ["resize", "-U", "x", "1M"], ["snapshot", "-f", "raw", "-l", "x"],
    ["commit", "-U", "x"], ["bitmap", "-q", "--add", "x", "b"],
    ["snapshot", "-c"],
])
def test_option_errors(needs_qemu, args):
    p = differential(*args)
    assert p.returncode == 1
    assert "Try 'vdisk-img --help' for more information" in p.stderr


@pytest.mark.parametrize("cmd", ["info", "map", "check", "snapshot", "commit",
                                 "rebase"])
def test_missing_file_name(needs_qemu, cmd):
    p = differential(cmd)
    assert p.returncode == 1
    assert "Expecting one image file name" in p.stderr


@pytest.mark.parametrize("cmd", ["info", "map", "check", "measure"])
def test_image_opts_excludes_format(needs_qemu, tmp_path, cmd):
    img = tmp_path / "a.raw"
    img.write_bytes(b"\0" * 65536)
    p = differential(cmd, "-f", "raw", "--image-opts", img)
    assert p.stderr == "vdisk-img: --image-opts and --format are mutually exclusive\n"


def test_missing_image(needs_qemu, tmp_path):
    p = differential("info", tmp_path / "nope")
    assert p.stderr == ("vdisk-img: Could not open '{0}': Could not open '{0}': "
                        "No such file or directory\n".format(tmp_path / "nope"))


def test_permission_denied(needs_qemu, tmp_path):
    prefix = nobody_prefix()
    if prefix is None:
        pytest.skip("cannot drop privileges")
    os.chmod(tmp_path, 0o755)
    img = tmp_path / "np.raw"
    img.write_bytes(b"\0" * 4096)
    os.chmod(img, 0)
    q = run(prefix + [QEMU_IMG, "info", str(img)])
    v = run(prefix + [VDISK_IMG, "info", str(img)])
    if "Permission denied" not in q.stderr:
        pytest.skip("the unprivileged user can read the file")
    assert same_output(v.stderr, q.stderr)
    assert v.returncode == q.returncode == 1


UNSUPPORTED = [
    ["amend", "-o", "size=2M", "IMG"], ["amend", "-f", "raw", "-o", "size=2M", "IMG"],
    ["amend", "-f", "raw", "-o", "help", "IMG"], ["amend", "-f", "raw", "-o", "help"],
    ["amend", "-o", "help"], ["amend", "-f", "raw", "IMG"], ["amend", "-f", "foo", "-o", "help"],
    ["amend", "-f", "raw", "-t", "bad", "-o", "size=2M", "IMG"], ["amend", "-o", ",,", "IMG"],
    ["amend", "-f", "raw", "--image-opts", "-o", "size=1", "IMG"],
    ["snapshot", "-l", "IMG"], ["snapshot", "-c", "s1", "IMG"], ["snapshot", "-a", "s1", "IMG"],
    ["snapshot", "-d", "s1", "IMG"], ["snapshot", "IMG"], ["snapshot", "-l", "-c", "s1", "IMG"],
    ["snapshot", "-U", "-l", "IMG"], ["snapshot", "-U", "-c", "s1", "IMG"],
    ["snapshot", "-l", "IMG", "x"], ["snapshot", "--image-opts", "-l", "IMG"],
    ["commit", "IMG"], ["commit", "-f", "raw", "-b", "x", "IMG"], ["commit", "-f", "raw", "-d", "-p", "IMG"],
    ["commit", "-f", "raw", "-t", "bad", "IMG"], ["commit", "-f", "raw", "-r", "1x", "IMG"],
    ["commit", "-f", "raw", "-r", "1M", "-q", "IMG"], ["commit", "-f", "raw", "--image-opts", "IMG"],
    ["rebase", "IMG"], ["rebase", "-f", "raw", "-b", "OTHER", "IMG"],
    ["rebase", "-f", "raw", "-u", "-b", "OTHER", "IMG"], ["rebase", "-f", "raw", "-u", "-b", "", "IMG"],
    ["rebase", "-f", "raw", "-F", "raw", "-b", "OTHER", "IMG"], ["rebase", "-f", "raw", "-T", "bad", "-b", "OTHER", "IMG"],
    ["rebase", "-f", "raw", "-b", "nope", "IMG"], ["rebase", "-f", "raw", "-u", "-F", "foo", "-b", "nope", "IMG"],
    ["rebase", "-f", "raw", "-b", "o.raw", "IMG"], ["rebase", "-u", "IMG"],
    ["rebase", "-p", "-f", "raw", "-u", "-b", "OTHER", "IMG"], ["rebase", "-f", "raw", "-b", "OTHER", "IMG", "x"],
    ["bitmap", "-f", "raw", "--remove", "IMG", "b0"], ["bitmap", "-f", "raw", "--merge", "b1", "IMG", "b0"],
    ["bitmap", "-f", "raw", "--add", "-g", "1x", "IMG", "b0"], ["bitmap", "-f", "raw", "--remove", "-g", "64k", "IMG", "b0"],
    ["bitmap", "-f", "raw", "-b", "OTHER", "--add", "IMG", "b0"], ["bitmap", "-f", "raw", "--add", "IMG"],
    ["bitmap", "-F", "raw", "--add", "-f", "raw", "IMG", "b0"], ["bitmap", "IMG", "b0"],
    ["bitmap", "--merge", "b1", "--add", "-f", "raw", "IMG", "b0"], ["bitmap", "-f", "raw", "--add", "--image-opts", "IMG", "b0"],
]


@pytest.mark.parametrize("args", UNSUPPORTED, ids=[" ".join(a) for a in UNSUPPORTED])
def test_differential_unsupported(needs_qemu, tmp_path, args):
    img = tmp_path / "r.raw"
    other = tmp_path / "o.raw"
    other.write_bytes(b"\0" * 65536)

    def setup():
        img.write_bytes(b"\0" * 65536)
    args = [str(img) if a == "IMG" else str(other) if a == "OTHER" else a for a in args]
    p = differential(*args, setup=setup)
    assert p.returncode in (0, 1)


def test_bitmap_add_refused(tmp_path):
    img = tmp_path / "r.raw"
    img.write_bytes(b"\0" * 65536)
    p = vimg("bitmap", "-f", "raw", "--add", img, "b0")
    assert p.returncode == 1
    assert re.match(r"vdisk-img: Operation add on bitmap b0 failed: Can't store "
                    r"persistent bitmaps to #block\d+: Operation not supported\n$",
                    p.stderr)


UNKNOWN_PROTOCOL = [
    ["info", "zz:x"], ["info", "gluster+foo://h/v/i"], ["info", ":x"], ["check", "zz:x"],
    ["map", "zz:x"], ["compare", "zz:x", "yy:z"], ["create", "-f", "qcow2", "zz:x", "1M"],
    ["create", "-f", "qcow2", "-o", "help", "zz:x"], ["convert", "-O", "raw", "SRC", "zz:x"],
    ["convert", "-O", "qcow2", "-o", "help", "SRC", "zz:x"],
    ["dd", "-O", "raw", "if=SRC", "of=zz:x"],
    ["create", "-f", "qcow2", "-b", "zz:y", "-F", "raw", "new.qcow2", "1M"],
]


@pytest.mark.parametrize("args", UNKNOWN_PROTOCOL, ids=[" ".join(a) for a in UNKNOWN_PROTOCOL])
def test_unknown_protocol(needs_qemu, tmp_path, args):
    """A colon before any slash makes a protocol prefix: one no driver has
    is an error, as in qemu-img, and no file of that name is made; ./a:b
    names the file."""
    src = tmp_path / "src.raw"
    src.write_bytes(b"x" * 4096)
    args = [a.replace("SRC", str(src)) for a in args]
    p = differential(*args, cwd=tmp_path)
    assert p.returncode != 0 and "Unknown protocol '" in p.stderr, p.stderr
    assert not [f for f in os.listdir(tmp_path) if ":" in f or f == "new.qcow2"]


def test_colon_file_after_dot_slash(needs_qemu, tmp_path):
    """./a:b is a file name: created, read and converted like any other."""
    differential("create", "-q", "-f", "qcow2", "./a:b", "1M", cwd=tmp_path)
    p = differential("info", "--output=json", "./a:b", cwd=tmp_path)
    assert '"format": "qcow2"' in p.stdout
