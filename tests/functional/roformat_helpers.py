# SPDX-License-Identifier: BSD-3-Clause
"""What the tests of the read-only formats (cloop, bochs, dmg) share: the
same command through qemu-img and vdisk-img, the differential checks every
image gets (contents, info, map, compare) and the writing commands both
must refuse, and running a hostile image under a memory and CPU limit."""
import os
import shutil
import subprocess

from conftest import QEMU_IMG, VDISK_IMG, same_output

PRLIMIT = shutil.which("prlimit")
MEM_LIMIT = 1 << 30
CPU_LIMIT = 20
SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))


def run(prog, *args, cwd=None):
    return subprocess.run([prog] + [str(a) for a in args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def both(*args, cwd=None):
    """The same command through qemu-img and vdisk-img."""
    return run(QEMU_IMG, *args, cwd=cwd), run(VDISK_IMG, *args, cwd=cwd)


def qemu_stderr(q):
    """qemu-img's stderr without the lines Debian's build prints for the
    block modules it lacks (dmg-bz2, dmg-lzfse): vdisk has no modules."""
    return "".join(l for l in q.stderr.splitlines(True) if not l.startswith("qemu: module "))


def same_result(q, v):
    assert same_output(v.stdout, q.stdout), (q.stdout, v.stdout)
    assert same_output(v.stderr, qemu_stderr(q)), (q.stderr, v.stderr)
    assert v.returncode == q.returncode, (q.returncode, v.returncode, v.stderr)


def same_inspection(d, name, fmt):
    """info and map (human and JSON), with and without -f, as qemu-img."""
    for args in (["info", name], ["info", "--output=json", name],
                 ["info", "-f", fmt, name], ["map", "-f", fmt, name],
                 ["map", "--output=json", "-f", fmt, name]):
        same_result(*both(*args, cwd=d))


def same_contents(d, name, fmt, expect=None):
    """convert -O raw gives the same bytes through both (and expect, when
    given); compare agrees; returns the bytes."""
    q, v = both("convert", "-f", fmt, "-O", "raw", name, "q.raw", cwd=d)
    same_result(q, v)
    v = run(VDISK_IMG, "convert", "-f", fmt, "-O", "raw", name, "v.raw", cwd=d)
    assert v.returncode == 0, v.stderr
    data = (d / "v.raw").read_bytes()
    assert data == (d / "q.raw").read_bytes()
    if expect is not None:
        assert data == expect
    same_result(*both("compare", "-f", fmt, "-F", "raw", name, "q.raw", cwd=d))
    return data


# Commands that open for writing or create: refused by both alike.
WRITERS = [
    ["resize", "{img}", "+1M"],
    ["commit", "{img}"],
    ["amend", "-o", "size=1M", "-f", "{fmt}", "{img}"],
    ["snapshot", "-c", "s1", "{img}"],
    ["check", "-r", "all", "{img}"],
    ["check", "{img}"],
    ["create", "-f", "{fmt}", "new.img", "1M"],
    ["convert", "-O", "{fmt}", "{img}", "new.img"],
    ["dd", "-O", "{fmt}", "if={img}", "of=new.img"],
    ["rebase", "-u", "-b", "", "{img}"],
    ["bitmap", "--add", "{img}", "b0"],
]


def same_refusals(d, name, fmt):
    """Every writing command fails as in qemu-img, the image unchanged."""
    before = (d / name).read_bytes()
    for w in WRITERS:
        args = [a.format(img=name, fmt=fmt) for a in w]
        q, v = both(*args, cwd=d)
        same_result(q, v)
        assert q.returncode != 0
    assert (d / name).read_bytes() == before
    assert not (d / "new.img").exists()


def limited(args, cwd):
    """Run under a 1 GiB address-space and 20 s CPU limit (prlimit).
    AddressSanitizer reserves more address space than that, so sanitized
    builds cap single allocations through ASan instead."""
    env = dict(os.environ)
    if SANITIZED:
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":allocator_may_return_null=1:max_allocation_size_mb=%d" % (MEM_LIMIT >> 20)
    elif PRLIMIT:
        args = [PRLIMIT, "--as=%d" % MEM_LIMIT, "--cpu=%d" % CPU_LIMIT, "--"] + args
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env=env)


def hostile_convert(d, name, fmt):
    """vdisk-img convert of a hostile image, limited: a clean failure
    (status 1, one message) or success, never a crash."""
    v = limited([VDISK_IMG, "convert", "-f", fmt, "-O", "raw", name, "out.raw"], d)
    assert v.returncode in (0, 1), (v.returncode, v.stderr)
    assert "Sanitizer" not in v.stderr and "runtime error" not in v.stderr, v.stderr
    return v
