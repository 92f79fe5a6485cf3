# SPDX-License-Identifier: BSD-3-Clause
"""Image locking interop with QEMU: vdisk takes the same OFD lock bytes as
QEMU's file-posix driver (100+perm held, 200+perm not shared), so each
refuses what the other holds, with QEMU's messages.

A small C helper built against libvdisk holds an image open (optionally
with the permissions of a metadata format such as qcow2); qemu-nbd holds
images from the QEMU side."""
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import BUILD, TOP, needs_vdisk_format, qimg, run, vimg

QEMU_NBD = shutil.which("qemu-nbd")
QEMU_IO = shutil.which("qemu-io")



@pytest.fixture(scope="session")
def helper():
    """The lock-holding helper meson builds beside the unit tests."""
    exe = os.path.join(BUILD, "tests", "unit", "lock-holder")
    if not os.path.exists(exe):
        pytest.skip("%s is not built" % exe)
    return exe


class Holder:
    """A process holding an image open until stopped."""

    def __init__(self, args):
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if line.strip() != "ready":
            err = self.p.stderr.read()
            self.p.wait()
            raise AssertionError("holder failed: %s" % err)

    def stop(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


@pytest.fixture
def hold(helper):
    """hold(*flags, path): keep path open in the vdisk helper."""
    holders = []

    def start(*args):
        h = Holder([helper] + [str(a) for a in args])
        holders.append(h)
        return h
    yield start
    for h in holders:
        if h.p.poll() is None:
            h.stop()


@pytest.fixture
def nbd(tmp_path):
    """nbd(fmt, path, *opts): serve path with qemu-nbd on a unix socket in
    tmp_path until the test ends."""
    if QEMU_NBD is None:
        pytest.skip("qemu-nbd is not installed")
    procs = []

    def start(fmt, path, *opts):
        sock = str(tmp_path / ("nbd%d.sock" % len(procs)))
        p = subprocess.Popen([QEMU_NBD, "-f", fmt, "-k", sock] + list(opts) + [str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        for _ in range(200):
            if os.path.exists(sock):
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(sock)
                    s.close()
                    return p
                except OSError:
                    s.close()
            if p.poll() is not None:
                raise AssertionError("qemu-nbd failed: " + p.stderr.read())
            time.sleep(0.05)
        raise AssertionError("qemu-nbd did not start")
    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=30)


def lock_bytes(path):
    """The lock bytes held on path by anyone, from /proc/locks."""
    ino = os.stat(path).st_ino
    out = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if fields[1] == "->":
                fields = fields[:1] + fields[2:]
            if fields[1] != "OFDLCK" or int(fields[5].split(":")[2]) != ino:
                continue
            start, end = int(fields[6]), int(fields[7])
            out.update(range(start, end + 1))
    return sorted(out)


def qemu_io_bytes(path, *opts):
    """Lock bytes qemu-io takes with opts (for comparison)."""
    p = subprocess.Popen([QEMU_IO] + list(opts) + [str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p.stdin.write("help\n")
        p.stdin.flush()
        p.stdout.readline()
        return lock_bytes(path)
    finally:
        p.stdin.close()
        p.wait(timeout=30)


@pytest.fixture
def raw_img(tmp_path):
    p = tmp_path / "img.raw"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p


@pytest.fixture
def qcow2_img(tmp_path, needs_qemu):
    p = tmp_path / "img.qcow2"
    qimg("create", "-f", "qcow2", p, "1M", check=True)
    return p


HINT = "Is another process using the image [%s]?"


# ---- the bytes themselves ----

@pytest.mark.parametrize("vflags,qflags", [
    ([], ["-r", "-f", "raw"]),
    (["-w"], ["-f", "raw"]),
    (["-U"], ["-r", "-U", "-f", "raw"]),
])
def test_same_bytes_as_qemu_io(needs_qemu, hold, raw_img, vflags, qflags):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    want = qemu_io_bytes(raw_img, *qflags)
    h = hold(*vflags, raw_img)
    assert lock_bytes(raw_img) == want
    h.stop()
    assert lock_bytes(raw_img) == []


def test_metadata_bytes_as_qcow2(needs_qemu, hold, qcow2_img):
    """vd_file_lock_for_metadata takes what qemu-io takes on a qcow2 file."""
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    for vflags, qflags in ((["-w", "-m"], ["-f", "qcow2"]),
                           (["-m"], ["-r", "-f", "qcow2"])):
        want = qemu_io_bytes(qcow2_img, *qflags)
        h = hold(*vflags, qcow2_img)
        assert lock_bytes(qcow2_img) == want
        h.stop()


def test_no_lock_takes_nothing(hold, raw_img):
    hold("-w", "-n", raw_img)
    assert lock_bytes(raw_img) == []


def test_locking_off_option(nbd, qcow2_img):
    needs_vdisk_format("qcow2")
    nbd("qcow2", qcow2_img)
    name = "driver=qcow2,file.filename=%s,file.locking=off" % qcow2_img
    r = vimg("info", "--image-opts", name)
    assert r.returncode == 0, r.stderr


# ---- QEMU holds, vdisk is refused ----

def test_vdisk_refused_by_qemu_nbd_qcow2(needs_qemu, nbd, qcow2_img):
    needs_vdisk_format("qcow2")
    nbd("qcow2", qcow2_img)
    v = vimg("info", qcow2_img)
    q = qimg("info", qcow2_img)
    assert v.returncode == q.returncode == 1
    assert v.stderr == q.stderr.replace("qemu-img", "vdisk-img")
    assert 'Failed to get shared "write" lock' in v.stderr
    assert HINT % qcow2_img in v.stderr


def test_vdisk_force_share_opens(needs_qemu, nbd, qcow2_img):
    needs_vdisk_format("qcow2")
    nbd("qcow2", qcow2_img)
    r = vimg("info", "-U", qcow2_img)
    assert r.returncode == 0, r.stderr


def test_vdisk_raw_shares_like_qemu(needs_qemu, nbd, raw_img):
    """A raw image served read-write by qemu-nbd can still be inspected
    (qemu-img info works too: raw shares write)."""
    nbd("raw", raw_img)
    assert vimg("info", "-f", "raw", raw_img).returncode == 0
    assert qimg("info", "-f", "raw", raw_img).returncode == 0


def test_vdisk_resize_refused(needs_qemu, nbd, raw_img):
    """qemu-nbd does not share resize."""
    nbd("raw", raw_img)
    v = vimg("resize", "-f", "raw", raw_img, "2M")
    assert v.returncode == 1
    assert 'Failed to get "resize" lock' in v.stderr and HINT % raw_img in v.stderr
    assert os.path.getsize(raw_img) == 1 << 20


def test_vdisk_create_refused(needs_qemu, nbd, raw_img):
    nbd("raw", raw_img)
    v = vimg("create", "-f", "raw", raw_img, "2M")
    q = qimg("create", "-f", "raw", raw_img, "2M")
    assert v.returncode == q.returncode == 1
    assert 'Failed to get "resize" lock' in v.stderr and HINT % raw_img in v.stderr
    assert os.path.getsize(raw_img) == 1 << 20


# ---- vdisk holds, QEMU is refused ----

def test_qemu_refused_by_vdisk_writer(needs_qemu, hold, raw_img):
    hold("-w", "-m", raw_img)
    q = qimg("info", "-f", "qcow2", raw_img)
    assert q.returncode == 1 and 'Failed to get shared "write" lock' in q.stderr
    if QEMU_IO:
        q = run([QEMU_IO, "-f", "raw", "-c", "write 0 512", str(raw_img)])
        assert 'Failed to get "write" lock' in q.stderr
    q = qimg("resize", "-f", "raw", raw_img, "2M")
    assert q.returncode == 1 and 'Failed to get "write" lock' in q.stderr
    # -U still works for QEMU against vdisk's locks.
    assert qimg("info", "-U", "-f", "raw", raw_img).returncode == 0


def test_qemu_refused_by_vdisk_reader(needs_qemu, hold, qcow2_img):
    """A vdisk reader of a qcow2 file does not share write."""
    hold("-m", qcow2_img)
    q = run([QEMU_IO, "-f", "qcow2", "-c", "write 0 512", str(qcow2_img)])
    assert 'Failed to get "write" lock' in q.stderr
    assert qimg("info", qcow2_img).returncode == 0


def test_qemu_writes_after_vdisk_closes(needs_qemu, hold, raw_img):
    h = hold("-w", "-m", raw_img)
    h.stop()
    assert qimg("resize", "-f", "raw", raw_img, "2M").returncode == 0
