# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-nbd -c/-d (the kernel's NBD client, /dev/nbdX) compared with
qemu-nbd 7.2: the messages and exit codes of both where no device is
needed, and, when the kernel has NBD devices (or `modprobe nbd` makes
them), a real attach, I/O through the device, and detach.  Without
devices that test is skipped with the reason."""
import os
import shutil
import subprocess
import time

import pytest

from nbd_helpers import VDISK_NBD, run

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


@pytest.fixture
def device():
    devs, why = nbd_devices()
    if not devs:
        print("skipping the kernel -c/-d test: " + why)
        pytest.skip(why)
    return devs[0]


def wait_for(cond, limit=10):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return True
        time.sleep(0.05)
    return False


def device_size(dev):
    name = os.path.basename(dev)
    with open("/sys/block/%s/size" % name) as f:
        return int(f.read()) * 512


def serving_pid(dev):
    """The pid running NBD_DO_IT on dev, or None."""
    try:
        with open("/sys/block/%s/pid" % os.path.basename(dev)) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def detach(dev):
    """-d, and make sure the process that served dev is gone."""
    pid = serving_pid(dev)
    r = run([VDISK_NBD, "-d", dev], timeout=20)
    if pid and not wait_for(lambda: not os.path.exists("/proc/%d" % pid)):
        os.kill(pid, 9)
    return r


def test_kernel_connect_io_disconnect(tmp_path, img, device):
    pidf = tmp_path / "pid"
    c = run([VDISK_NBD, "-c", device, "-f", "raw", "--pid-file", pidf, img], timeout=20)
    try:
        assert c.returncode == 0 and c.stderr == ""        # detached, as qemu-nbd
        assert wait_for(lambda: device_size(device) == 4 << 20)
        pid = int(open(pidf).read())
        assert serving_pid(device) == pid
        with open(device, "rb") as f:
            assert f.read(1 << 20) == b"\x5a" * (1 << 20)
            assert f.read(1 << 20) == b"\0" * (1 << 20)
        fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
        try:
            import mmap
            buf = mmap.mmap(-1, 65536)
            buf.write(b"\xa5" * 65536)
            os.pwrite(fd, buf, 2 << 20)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        d = detach(device)
    assert d.returncode == 0 and d.stdout == "%s disconnected\n" % device
    assert wait_for(lambda: not os.path.exists("/proc/%d" % pid))
    assert not os.path.exists(pidf)
    with open(img, "rb") as f:
        f.seek(2 << 20)
        assert f.read(65536) == b"\xa5" * 65536


def test_kernel_connect_verbose_read_only(tmp_path, img, device):
    p = subprocess.Popen([VDISK_NBD, "-v", "-r", "-c", device, "-f", "raw", str(img)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        assert line == "NBD device %s is now connected to %s\n" % (device, img)
        assert wait_for(lambda: device_size(device) == 4 << 20)
        with open("/sys/block/%s/ro" % os.path.basename(device)) as f:
            assert f.read().strip() == "1"
    finally:
        detach(device)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert p.returncode == 0
