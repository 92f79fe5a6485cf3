# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-nbd -c/-d (the kernel's NBD client, /dev/nbdX) compared with
qemu-nbd 7.2: the messages and exit codes of both where no device is
needed; then, with real devices, attach, I/O through the device, detach
and the errors, each done by both programs on the same image.  The device
tests run on this machine when its kernel has NBD devices (or `modprobe
nbd` makes them), else in the test guest (guest.py) booted under QEMU."""
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time

import pytest

from nbd_helpers import ENV, VDISK_NBD, run

QEMU_NBD = shutil.which("qemu-nbd")
pytestmark = [
    pytest.mark.skipif(not os.path.exists(VDISK_NBD), reason="vdisk-nbd not built"),
    pytest.mark.skipif(QEMU_NBD is None, reason="qemu-nbd is not installed"),
]


@pytest.fixture
def img(tmp_path):
    """A 4 MiB raw image: 0x5a in the first MiB."""
    p = tmp_path / "d.img"
    with open(p, "wb") as f:
        f.write(b"\x5a" * (1 << 20))
        f.truncate(4 << 20)
    return p


def same(args, timeout=20):
    """Run both programs with args: (vdisk result, qemu stderr with names
    swapped); the exit codes must match."""
    v = run([VDISK_NBD] + args, timeout=timeout)
    q = run([QEMU_NBD] + args, timeout=timeout)
    assert v.returncode == q.returncode, (v.stderr, q.stderr)
    return v, q.stderr.replace(QEMU_NBD, VDISK_NBD).replace("qemu-nbd:", "vdisk-nbd:")


@pytest.mark.parametrize("what", ["file", "nosuch"])
def test_disconnect_same_as_qemu_nbd(tmp_path, what):
    dev = tmp_path / "plain"
    if what == "file":
        dev.write_bytes(b"")               # not a device: the ioctls fail
    else:
        dev = tmp_path / "nosuch"
    v, qerr = same(["-d", dev])
    q = run([QEMU_NBD, "-d", dev])
    assert v.stderr == qerr and v.stdout == q.stdout
    if what == "file":
        assert v.returncode == 0 and v.stdout == "%s disconnected\n" % dev


@pytest.mark.parametrize("what", ["nosuch-device", "not-a-device", "not-a-device-v",
                                  "nosuch-image"])
def test_connect_errors_same_as_qemu_nbd(tmp_path, img, what):
    dev = tmp_path / "plain"
    dev.write_bytes(b"")
    args = {
        "nosuch-device": ["-c", tmp_path / "nbd99", "-f", "raw", img],
        "not-a-device": ["-c", dev, "-f", "raw", img],
        "not-a-device-v": ["-v", "-c", dev, "-f", "raw", img],
        "nosuch-image": ["-c", dev, "-f", "raw", tmp_path / "nosuch.img"],
    }[what]
    v, qerr = same(args)
    assert v.returncode == 1
    if "blk_new_open" in qerr:
        assert v.stderr.split(":")[:2] == qerr.split(":")[:2]
    else:
        assert v.stderr == qerr


# ---- with the kernel's NBD client ----
# Every step is a shell command run where the devices are (this machine or
# the guest, whose view of tmp_path is the host's), so both places run the
# same test.

def nbd_devices():
    """Free /dev/nbdN devices, loading the module if we may; or a reason."""
    if not os.path.exists("/dev/nbd0"):
        if os.geteuid() != 0:
            return None, "no /dev/nbd0 and not root to modprobe nbd"
        modprobe = shutil.which("modprobe") or shutil.which("/sbin/modprobe")
        if not modprobe:
            return None, "no /dev/nbd0 and no modprobe to load the nbd module"
        p = subprocess.run([modprobe, "nbd"], capture_output=True, text=True)
        wait_for(lambda: os.path.exists("/dev/nbd0"), 2)
        if not os.path.exists("/dev/nbd0"):
            return None, "no /dev/nbd0 and `modprobe nbd` failed: %s" % (
                p.stderr.strip() or "exit %d" % p.returncode)
    if not os.access("/dev/nbd0", os.R_OK | os.W_OK):
        return None, "no access to /dev/nbd0"
    free = ["/dev/nbd%d" % i for i in range(16)
            if os.path.exists("/dev/nbd%d" % i)
            and not os.path.exists("/sys/block/nbd%d/pid" % i)]
    return (free, None) if free else (None, "every /dev/nbdN is in use")


def wait_for(cond, limit=10):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return True
        time.sleep(0.05)
    return False


class HostJob:
    """A command started on this machine (Job's interface in guest.py)."""

    def __init__(self, script):
        self.args = script
        self.err = tempfile.NamedTemporaryFile("w+")
        self.proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, env=ENV)

    def stderr_so_far(self):
        with open(self.err.name) as f:
            return f.read()

    def wait(self, limit=None):
        out, _ = self.proc.communicate(timeout=limit)
        p = subprocess.CompletedProcess(self.args, self.proc.returncode, out,
                                        self.stderr_so_far())
        self.err.close()
        return p


class Host:
    """This machine's kernel (Guest's interface in guest.py)."""
    slow = 1

    def spawn(self, script, timeout=60):
        return HostJob(script)

    def run(self, script, timeout=60):
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              env=ENV, timeout=timeout)


@pytest.fixture
def kernel(request):
    """Where the device tests run: here if this kernel has NBD devices,
    else in the session's guest."""
    devs, why = nbd_devices()
    if devs:
        return Host()
    print("no NBD devices here (%s): the kernel tests run in the guest" % why)
    return request.getfixturevalue("guest")


def sh(*args):
    return " ".join(shlex.quote(str(a)) for a in args)


def until(m, cond, limit=10):
    """A shell loop that ends (true) once cond holds, or fails after limit
    seconds (scaled to the machine's speed)."""
    return ("i=0; until %s; do i=$((i+1)); [ $i -gt %d ] && exit 1; sleep 0.05; done"
            % (cond, limit * 20 * m.slow))


def free_device(m):
    r = m.run("for i in $(seq 0 15); do d=/dev/nbd$i; "
              "[ -b $d ] && [ ! -e /sys/block/nbd$i/pid ] && echo $d && break; done")
    if not r.stdout.strip():
        pytest.skip("every /dev/nbdN is in use")
    return r.stdout.strip()


def make_image(d):
    """A 4 MiB raw image in folder d: 0x5a in the first MiB."""
    d.mkdir(exist_ok=True)
    p = d / "d.img"
    with open(p, "wb") as f:
        f.write(b"\x5a" * (1 << 20))
        f.truncate(4 << 20)
    return p


def md5(data):
    return hashlib.md5(data).hexdigest() + "  -\n"


def names(text, prog, work):
    """text with the program's name and the test's folder made neutral."""
    for name in (prog, os.path.basename(prog)):
        text = text.replace(name, "PROG")
    return text.replace(str(work), "WORK")


def detach(m, prog, dev, pid=None):
    """prog -d dev; make sure the process that served dev (pid, if known)
    is gone and the device is free again."""
    d = m.run(sh(prog, "-d", dev), 20)
    if pid and m.run(until(m, "[ ! -e /proc/%d ]" % pid)).returncode != 0:
        m.run("kill -9 %d" % pid)
    m.run(until(m, "[ ! -e /sys/block/%s/pid ]" % os.path.basename(dev)))
    return d


def attach_io_detach(m, prog, dev, work):
    """-c with a pid file, read and O_DIRECT-write through the device, -d:
    what an observer sees, to compare between the two programs."""
    img, pidf, pattern = make_image(work), work / "pid", work / "a5"
    pattern.write_bytes(b"\xa5" * 65536)
    name, pid, o = os.path.basename(dev), None, {}
    c = m.run(sh(prog, "-c", dev, "-f", "raw", "--pid-file", pidf, img), 20)
    o["connect"] = (c.returncode, c.stdout, names(c.stderr, prog, work))
    if c.returncode != 0:
        return o
    try:
        r = m.run(until(m, '[ "$(cat /sys/block/%s/size)" = 8192 ]' % name)
                  + "; cat /sys/block/%s/size" % name)
        o["size"] = r.stdout.split()
        m.run(until(m, "[ -s %s ]" % shlex.quote(str(pidf))))
        pid = int(pidf.read_text())
        # The device names the thread in NBD_DO_IT (qemu-nbd's is not its
        # main thread): one of the pid file's process.
        o["pid-served"] = m.run("[ -e /proc/%d/task/$(cat /sys/block/%s/pid) ]"
                                % (pid, name)).returncode == 0
        o["read"] = m.run("head -c 1048576 %s | md5sum; dd if=%s bs=1048576 skip=1 "
                          "count=1 2>/dev/null | md5sum" % (dev, dev)).stdout
        w = m.run(sh("dd", "if=%s" % pattern, "of=%s" % dev, "bs=65536", "seek=32",
                     "count=1", "oflag=direct", "conv=fsync"))
        o["write"] = w.returncode
    finally:
        d = detach(m, prog, dev, pid)
    o["disconnect"] = (d.returncode, d.stdout, names(d.stderr, prog, work))
    o["exited"] = pid is not None and m.run(until(m, "[ ! -e /proc/%d ]" % pid)).returncode == 0
    o["pid-file-left"] = pidf.exists()
    with open(img, "rb") as f:
        f.seek(2 << 20)
        o["written"] = f.read(65536) == b"\xa5" * 65536
    return o


@pytest.mark.xdist_group("guest")
def test_kernel_connect_io_disconnect(tmp_path, kernel):
    dev = free_device(kernel)
    q = attach_io_detach(kernel, QEMU_NBD, dev, tmp_path / "q")
    v = attach_io_detach(kernel, VDISK_NBD, dev, tmp_path / "v")
    assert v == {
        "connect": (0, "", ""),                 # detached, as qemu-nbd
        "size": ["8192"], "pid-served": True,
        "read": md5(b"\x5a" * (1 << 20)) + md5(b"\0" * (1 << 20)),
        "write": 0,
        "disconnect": (0, "%s disconnected\n" % dev, ""),
        "exited": True, "pid-file-left": False, "written": True,
    }
    # vdisk-nbd removes its pid file at exit (its man page says so);
    # qemu-nbd 7.2 leaves it.
    assert q.pop("pid-file-left") and v.pop("pid-file-left") is False
    assert v == q


def attach_verbose_read_only(m, prog, dev, work):
    """-v -r -c in the foreground until -d: what an observer sees."""
    img, name, o = make_image(work), os.path.basename(dev), {}
    job = m.spawn(sh(prog, "-v", "-r", "-c", dev, "-f", "raw", img), 60)
    try:
        wait_for(lambda: "\n" in job.stderr_so_far(), 20)
        o["first-line"] = names(job.stderr_so_far().split("\n")[0], prog, work)
        r = m.run(until(m, '[ "$(cat /sys/block/%s/size)" = 8192 ]' % name)
                  + "; cat /sys/block/%s/ro" % name)
        o["read-only"] = r.stdout.strip()
        o["write"] = m.run("dd if=/dev/zero of=%s bs=4096 count=1 oflag=direct "
                           "2>/dev/null" % dev).returncode
    finally:
        d = detach(m, prog, dev)
        try:
            r = job.wait(30 * m.slow)
        except subprocess.TimeoutExpired:
            m.run("kill -9 $(cat /sys/block/%s/pid)" % name)
            r = job.wait(30 * m.slow)
    o["disconnect"] = (d.returncode, d.stdout, names(d.stderr, prog, work))
    o["exit"] = r.returncode
    return o


@pytest.mark.xdist_group("guest")
def test_kernel_connect_verbose_read_only(tmp_path, kernel):
    dev = free_device(kernel)
    q = attach_verbose_read_only(kernel, QEMU_NBD, dev, tmp_path / "q")
    v = attach_verbose_read_only(kernel, VDISK_NBD, dev, tmp_path / "v")
    assert v == {
        "first-line": "NBD device %s is now connected to WORK/d.img" % dev,
        "read-only": "1", "write": 1,
        "disconnect": (0, "%s disconnected\n" % dev, ""), "exit": 0,
    }
    assert v == q


def errors(m, prog, dev, work, what):
    """One failing (or idle) use of a device: (exit status, stdout, stderr)."""
    img = make_image(work)
    holder = None
    if what == "busy":                  # the device already serves an image
        other = make_image(work / "other")
        holder = m.run(sh(VDISK_NBD, "-c", dev, "-f", "raw", other), 20)
        assert holder.returncode == 0, holder.stderr
    try:
        args = {
            "busy": ["-c", dev, "-f", "raw", img],
            "nosuch-image": ["-c", dev, "-f", "raw", work / "nosuch.img"],
            "idle-disconnect": ["-d", dev],
        }[what]
        r = m.run(sh(prog, *args), 20)
    finally:
        if holder:
            detach(m, VDISK_NBD, dev)
    return r.returncode, r.stdout, names(r.stderr, prog, work)


@pytest.mark.xdist_group("guest")
@pytest.mark.parametrize("what", ["busy", "nosuch-image", "idle-disconnect"])
def test_kernel_errors_same_as_qemu_nbd(tmp_path, kernel, what):
    dev = free_device(kernel)
    q = errors(kernel, QEMU_NBD, dev, tmp_path / "q", what)
    v = errors(kernel, VDISK_NBD, dev, tmp_path / "v", what)
    assert v[0] == q[0] and v[1] == q[1]
    if "blk_new_open" in q[2]:
        assert v[2].split(":")[:2] == q[2].split(":")[:2]
    else:
        assert v[2] == q[2]
