# SPDX-License-Identifier: BSD-3-Clause
"""What the crash-safety tests of every format share: the events a driver
names, the scratch directory fixture, the workload runner (vdisk-crashload)
and the random workloads it runs.  The judging is crash_replay's."""
import glob
import os
import pathlib
import re
import shutil
import tempfile

import pytest

from conftest import BUILD, TOP, run

LOAD = os.path.join(BUILD, "tests", "helpers", "vdisk-crashload")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
EIO, ENOSPC = 5, 28


def driver_events(subdir, extra=()):
    """Every event name the sources under lib/format/SUBDIR emit with
    vd_event, plus those the regular expressions in extra find."""
    names = set()
    for f in glob.glob(os.path.join(TOP, "lib", "format", subdir, "*.c")):
        text = open(f).read()
        for pattern in (r'vd_event\([^;]*?"([a-z0-9_]+)"\)',) + tuple(extra):
            names.update(re.findall(pattern, text))
    return sorted(names)


@pytest.fixture
def work(tmp_path):
    """A scratch directory in memory when /dev/shm has room (these tests
    write hundreds of images; the disk may be busy), else tmp_path;
    VDISK_CRASH_KEEP=1 keeps it."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize < (1 << 30):
            raise OSError
        d = tempfile.mkdtemp(prefix="vdisk-crash-", dir="/dev/shm")
    except OSError:
        yield tmp_path
        return
    try:
        yield pathlib.Path(d)
    finally:
        if not os.environ.get("VDISK_CRASH_KEEP"):     # keep to debug
            shutil.rmtree(d, ignore_errors=True)


def progress(out):
    """(last op started, last op flushed) from vdisk-crashload's output."""
    started = flushed = 0
    for line in out.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == "start":
            started = int(f[1])
        elif len(f) == 2 and f[0] == "flushed":
            flushed = int(f[1])
    return started, flushed


def load(name, script, first=1, timeout=120, fmt=None):
    """Run vdisk-crashload on image name (format fmt, else probed);
    (process, last op started, last op flushed)."""
    argv = [LOAD] + (["-f", fmt] if fmt else []) + ["-k", str(first), name, str(script)]
    p = run(argv, timeout=timeout)
    return (p,) + progress(p.stdout)


def script_file(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def rand_ops(rng, n, size, maxlen, flush_every=6, kinds=("write",)):
    """n random sector-aligned operations in [0, size), flushes between."""
    ops = []
    for _ in range(n):
        ln = rng.randrange(1, maxlen // 512 + 1) * 512
        off = rng.randrange(0, (size - ln) // 512 + 1) * 512
        kind = rng.choice(kinds)
        ops.append("%s %d %d" % (kind, off, ln))
        if rng.randrange(flush_every) == 0:
            ops.append("flush")
    return ops


def json_name(fmt, img, log=None, rule=None):
    """json: name of img as fmt, through blkdebug (rule) and record (log)."""
    import json
    node = {"driver": "file", "filename": str(img)}
    if rule:
        node = {"driver": "blkdebug", "inject-error": [rule], "image": node}
    if log:
        node = {"driver": "record", "log": str(log), "image": node}
    return "json:" + json.dumps({"driver": fmt, "file": node})
