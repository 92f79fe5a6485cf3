# SPDX-License-Identifier: BSD-3-Clause
"""A private libvirt for the vdisk-pool tests: an unprivileged session
libvirtd run as the 'nobody' uid with its XDG directories in a scratch
directory, one per test process (each xdist worker has its own), stopped at
the end of the session.  virsh and vdisk-pool both run as that uid, so the
owners and modes they report can be compared."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import BUILD

VDISK_POOL = os.path.join(BUILD, "tools", "pool", "vdisk-pool")
UID = 65534
LIBVIRTD = shutil.which("libvirtd") or "/usr/sbin/libvirtd"


def _chown_tree(path):
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), UID, UID)
    os.chown(path, UID, UID)


class Peer:
    """The scratch directory, the daemon and the two command runners."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="vdpool-")
        os.chmod(self.base, 0o755)
        for d in ("run", "cfg", "cache", "home", "vcfg", "vrun", "t"):
            os.mkdir(os.path.join(self.base, d))
        _chown_tree(self.base)
        self.env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": self.d("home"), "XDG_RUNTIME_DIR": self.d("run"),
            "XDG_CONFIG_HOME": self.d("cfg"), "XDG_CACHE_HOME": self.d("cache"),
            "LC_ALL": "C",
        }
        self.venv = dict(self.env, VDISK_POOL_CONFIG_DIR=self.d("vcfg"),
                         VDISK_POOL_RUN_DIR=self.d("vrun"))
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                self.venv[k] = os.environ[k]
        self.log = open(os.path.join(self.base, "libvirtd.log"), "w")
        self.proc = subprocess.Popen(
            self.prefix() + [LIBVIRTD, "--timeout", "0"], env=self.env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_socket()

    def d(self, *parts):
        return os.path.join(self.base, *parts)

    @staticmethod
    def prefix():
        return ["setpriv", "--reuid=%d" % UID, "--regid=%d" % UID, "--clear-groups"]

    def _wait_socket(self):
        sock = self.d("run", "libvirt", "libvirt-sock")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("libvirtd exited: %s" % open(self.log.name).read())
            if os.path.exists(sock):
                p = self.virsh("uri")
                if p.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("libvirtd did not come up")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def virsh(self, *args, **kw):
        return subprocess.run(self.prefix() + ["virsh", "-c", "qemu:///session"] +
                              [str(a) for a in args], env=self.env,
                              capture_output=True, text=True, timeout=120, **kw)

    def vpool(self, *args, env=None, **kw):
        return subprocess.run(self.prefix() + [VDISK_POOL] + [str(a) for a in args],
                              env=env or self.venv, capture_output=True, text=True,
                              timeout=120, **kw)

    def scratch(self):
        """A fresh directory both sides may write, with 'l' and 'v' under it."""
        p = self.d("t", uuid.uuid4().hex[:8])
        for s in ("", "l", "v"):
            os.mkdir(os.path.join(p, s))
            os.chown(os.path.join(p, s), UID, UID)
        return p

    def write(self, path, text):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)


def peer_available():
    return (os.geteuid() == 0 and shutil.which("virsh") and os.path.exists(LIBVIRTD)
            and shutil.which("setpriv"))


@pytest.fixture(scope="session")
def peer():
    if not peer_available():
        pytest.skip("needs root, setpriv, virsh and libvirtd")
    if not os.path.exists(VDISK_POOL):
        pytest.skip("vdisk-pool is not built")
    p = Peer()
    yield p
    p.stop()


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"<(atime|mtime|ctime)>[0-9.]+</")
_POOLSIZE = re.compile(r"<(capacity|allocation|available) unit='bytes'>\d+</")


def mask(text, *pairs):
    """Replace uuids and timestamps, then each (old, new) pair."""
    text = _UUID.sub("UUID", text)
    text = _TIME.sub(r"<\1>T</", text)
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def mask_pool_sizes(text):
    """A pool's sizes follow the host file system: not comparable."""
    text = _POOLSIZE.sub(r"<\1 unit='bytes'>N</", text)
    text = re.sub(r"^(Capacity|Allocation|Available):( +).*$", r"\1:\2N", text,
                  flags=re.M)
    return text
