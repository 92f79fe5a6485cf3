# SPDX-License-Identifier: BSD-3-Clause
"""A real iSCSI target (tgtd from Debian's tgt) on loopback for the iscsi
protocol tests and bench.

tgtd runs in user space (no kernel module), on a free port with its own
management socket (named after the port).  Targets:
  IQN:noauth  no authentication; LUN 1 512-byte blocks, LUN 2 4096-byte
              blocks, LUN 3 thin provisioned (512), LUN 4 spare for tests
              that write (all sparse files of LUN_SIZE in the directory);
  IQN:chap    CHAP user/password USER/PASSWORD, mutual CHAP account
              TUSER/TPASSWORD; LUN 1.
tgtd ignores SIGTERM while it has targets: stop() deletes them first and
kills it if it still does not exit."""
import os
import random
import shutil
import signal
import socket
import subprocess
import time

TGTD = shutil.which("tgtd") or "/usr/sbin/tgtd"
TGTADM = shutil.which("tgtadm") or "/usr/sbin/tgtadm"
IQN = "iqn.2024-01.org.example.vdisk"
USER, PASSWORD = "vduser", "vdsecret12345"
TUSER, TPASSWORD = "vdtarget", "tgtsecret12345"
LUN_SIZE = 64 << 20
START_ATTEMPTS = 5


def available():
    """None when tgtd can run here, else the reason it cannot."""
    if not (os.access(TGTD, os.X_OK) and os.access(TGTADM, os.X_OK)):
        return "tgtd and tgtadm (Debian package tgt) are needed"
    if os.geteuid() != 0:
        return "tgtd needs root (its management socket lives in /var/run/tgtd)"
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Tgtd:
    """tgtd on a free port with the targets above, files under d."""

    def __init__(self, d, lun_size=LUN_SIZE, luns=None):
        self.dir = d
        self.lun_size = lun_size
        self.proc = None
        err = None
        for _ in range(START_ATTEMPTS):
            try:
                self._start(luns)
                return
            except RuntimeError as e:
                err = e
                self.stop()
        raise RuntimeError("tgtd did not start: %s" % err)

    def adm(self, *args, check=True):
        r = subprocess.run([TGTADM, "-C", str(self.ctl), "--lld", "iscsi"] + list(args),
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode:
            raise RuntimeError("tgtadm %s: %s" % (" ".join(args), r.stderr.strip()))
        return r

    def lun_path(self, target, lun):
        return os.path.join(self.dir, "%s-%d.img" % (target, lun))

    def _add_lun(self, tid, target, lun, block_size=512, thin=False):
        path = self.lun_path(target, lun)
        with open(path, "wb") as f:
            f.truncate(self.lun_size)
        args = ["--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", str(lun),
                "--backing-store", path]
        if block_size != 512:
            args += ["--blocksize", str(block_size)]
        self.adm(*args)
        if thin:
            self.adm("--mode", "logicalunit", "--op", "update", "--tid", str(tid),
                     "--lun", str(lun), "--params", "thin_provisioning=1")

    def _start(self, luns):
        self.port = free_port()
        os.makedirs("/var/run/tgtd", exist_ok=True)
        # The management socket's number (tgtd takes 0..32767): one no other
        # tgtd uses now (a taken one makes this tgtd exit: another try).
        self.ctl = random.randrange(1000, 32000)
        while os.path.exists("/var/run/tgtd/socket.%d" % self.ctl):
            self.ctl = random.randrange(1000, 32000)
        self.log = open(os.path.join(self.dir, "tgtd-%d.log" % self.port), "wb")
        self.proc = subprocess.Popen(
            [TGTD, "-f", "-C", str(self.ctl), "--iscsi", "portal=127.0.0.1:%d" % self.port],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 20
        while self.adm("--mode", "target", "--op", "show", check=False).returncode:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("tgtd exited or did not answer (port %d)" % self.port)
            time.sleep(0.05)
        self.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname",
                 IQN + ":noauth")
        for lun, bs, thin in luns if luns is not None else [(1, 512, False), (2, 4096, False), (3, 512, True),
                                      (4, 512, False)]:
            self._add_lun(1, "noauth", lun, bs, thin)
        self.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
        self.adm("--mode", "target", "--op", "new", "--tid", "2", "--targetname", IQN + ":chap")
        self._add_lun(2, "chap", 1)
        self.adm("--mode", "target", "--op", "bind", "--tid", "2", "--initiator-address", "ALL")
        self.adm("--mode", "account", "--op", "new", "--user", USER, "--password", PASSWORD)
        self.adm("--mode", "account", "--op", "bind", "--tid", "2", "--user", USER)
        self.adm("--mode", "account", "--op", "new", "--user", TUSER, "--password", TPASSWORD)
        self.adm("--mode", "account", "--op", "bind", "--tid", "2", "--user", TUSER,
                 "--outgoing")
        end = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("tgtd does not listen on %d" % self.port)
                time.sleep(0.05)

    def add_file_lun(self, lun, path, readonly=True, thin=False):
        """A LUN of target noauth backed by an existing file."""
        self.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", str(lun),
                 "--backing-store", path)
        for param, on in (("readonly", readonly), ("thin_provisioning", thin)):
            if on:
                self.adm("--mode", "logicalunit", "--op", "update", "--tid", "1",
                         "--lun", str(lun), "--params", param + "=1")

    def url(self, lun=1, target="noauth", user=None, password=None):
        cred = ""
        if user:
            cred = user + ("%" + password if password is not None else "") + "@"
        return "iscsi://%s127.0.0.1:%d/%s:%s/%d" % (cred, self.port, IQN, target, lun)

    def chap_url(self, lun=1):
        return self.url(lun, "chap", USER, PASSWORD)

    def clear(self, target, lun):
        """Zero a LUN's backing file (between tests that write to it)."""
        with open(self.lun_path(target, lun), "r+b") as f:
            f.truncate(0)
            f.truncate(self.lun_size)

    def kill(self):
        """SIGKILL tgtd (a server dying mid-transfer)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.adm("--op", "update", "--mode", "sys", "--name", "State", "-v", "offline",
                     check=False)
            for tid in ("1", "2"):
                self.adm("--mode", "target", "--op", "delete", "--force", "--tid", tid,
                         check=False)
            self.adm("--mode", "system", "--op", "delete", check=False)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        for p in ("/var/run/tgtd/socket.%d" % self.ctl, "/var/run/tgtd/socket.%d.lock" % self.ctl):
            try:
                os.unlink(p)
            except OSError:
                pass
        self.proc = None
