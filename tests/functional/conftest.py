# SPDX-License-Identifier: BSD-3-Clause
"""Shared fixtures for the CLI and interop tests.

VDISK_BUILDDIR names the meson build directory whose programs are tested
(default: build/ at the top of the tree)."""
import os
import shutil
import subprocess
import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VDISK_BUILDDIR", os.path.join(TOP, "build"))
VDISK_IMG = os.path.join(BUILD, "tools", "img", "vdisk-img")
QEMU_IMG = shutil.which("qemu-img")


def run(args, check=False, input=None, env=None, timeout=300):
    """Run a command, return CompletedProcess with text stdout/stderr."""
    p = subprocess.run(args, capture_output=True, text=True, input=input,
                       env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (args, p.returncode, p.stderr))
    return p


def vimg(*args, **kw):
    return run([VDISK_IMG] + [str(a) for a in args], **kw)


def qimg(*args, **kw):
    return run([QEMU_IMG] + [str(a) for a in args], **kw)


def same_output(vout, qout):
    """vdisk-img prints its own name where qemu-img prints 'qemu-img'."""
    return vout == qout.replace("qemu-img", "vdisk-img")


_formats = None


def vdisk_formats():
    """The formats vdisk-img --help lists as supported."""
    global _formats
    if _formats is None:
        out = vimg("--help").stdout
        line = [l for l in out.splitlines() if l.startswith("Supported formats:")]
        _formats = set(line[0].split(":", 1)[1].split()) if line else set()
    return _formats


def needs_vdisk_format(fmt):
    if fmt not in vdisk_formats():
        pytest.skip("vdisk has no %s driver yet" % fmt)


@pytest.fixture
def needs_qemu():
    if QEMU_IMG is None:
        pytest.skip("qemu-img is not installed")


def write_pattern(path, off, length, byte):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes([byte]) * length)


# The session's Linux guest under QEMU, for kernel features this machine
# lacks (guest.py).
from guest import guest  # noqa: E402,F401
