# SPDX-License-Identifier: BSD-3-Clause
"""A throw-away one-node Ceph cluster on loopback for the rbd tests and the
rbd bench: one monitor and one OSD on memstore (no manager unless asked:
without one, pool statistics and quotas are not tracked), cephx on, a pool
"rbd" initialised for rbd.  Everything lives in a temporary directory; the
monitor's two ports are picked free.  Readiness is a real object written
and removed (cluster status commands may block without a manager).

Daemons run in their own session so that a signal sent to the test's
process group does not take them down; stop() ends them (SIGTERM, then
SIGKILL) and an atexit hook does it if the caller could not."""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

CEPH_MON = shutil.which("ceph-mon", path="/usr/bin:/usr/sbin")
CEPH_OSD = shutil.which("ceph-osd", path="/usr/bin:/usr/sbin")
CEPH_MGR = shutil.which("ceph-mgr", path="/usr/bin:/usr/sbin")
CEPH = shutil.which("ceph", path="/usr/bin:/usr/sbin")
RADOS = shutil.which("rados", path="/usr/bin:/usr/sbin")
RBD = shutil.which("rbd", path="/usr/bin:/usr/sbin")
AUTHTOOL = shutil.which("ceph-authtool", path="/usr/bin:/usr/sbin")
MONMAPTOOL = shutil.which("monmaptool", path="/usr/bin:/usr/sbin")


def missing_programs():
    """Why a cluster cannot start here ("" when it can)."""
    need = {"ceph-mon": CEPH_MON, "ceph-osd": CEPH_OSD, "ceph": CEPH, "rados": RADOS,
            "rbd": RBD, "ceph-authtool": AUTHTOOL, "monmaptool": MONMAPTOOL}
    gone = [k for k, v in need.items() if not v]
    return "missing: " + ", ".join(gone) if gone else ""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


CONF = """[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.asok
pid file = {d}/run/$cluster-$name.pid
log file = {d}/log/$cluster-$name.log
crash dir = {d}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
auth allow insecure global id reclaim = false
mon data avail warn = 1
mon data avail crit = 0
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
[mon]
mon data = {d}/mon/$cluster-$id
mon cluster log file = {d}/log/cluster.log
[mgr]
mgr data = {d}/mgr/$cluster-$id
keyring = {d}/mgr/$cluster-$id/keyring
mgr initial modules =
[osd]
osd data = {d}/osd/$cluster-$id
keyring = {d}/osd/$cluster-$id/keyring
osd objectstore = memstore
memstore device bytes = {device_bytes}
osd op num shards = 1
osd op num threads per shard = 2
osd max object name len = 256
osd max object namespace len = 64
"""


class StartError(RuntimeError):
    pass


class Ceph:
    """A cluster in directory d; .conf is its configuration file (the
    client.admin key is in the keyring it names)."""

    def __init__(self, d, pool="rbd", with_mgr=False, device_bytes=3 << 30):
        self.dir = d
        self.pool = pool
        self.procs = {}
        for sub in ("mon/ceph-a", "osd/ceph-0", "mgr/ceph-x", "run", "log", "crash"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        self.conf = os.path.join(d, "ceph.conf")
        self.keyring = os.path.join(d, "keyring")
        self.env = dict(os.environ, CEPH_CONF=self.conf)
        atexit.register(self.stop)
        try:
            self._start(with_mgr, device_bytes)
        except BaseException:
            self.stop()
            raise

    # -- helpers --
    def cli(self, *args, timeout=30, check=True):
        """Run a ceph tool against the cluster."""
        p = subprocess.run(list(args), capture_output=True, text=True, env=self.env,
                           timeout=timeout)
        if check and p.returncode:
            raise StartError("%s failed: %s" % (" ".join(args), p.stderr.strip()[-500:]))
        return p

    def _daemon(self, name, args):
        log = open(os.path.join(self.dir, "log", name + ".stdout"), "w")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        log.close()

    def _wait(self, what, test, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise StartError("%s exited with %d while waiting for %s"
                                     % (name, p.returncode, what))
            try:
                if test():
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.2)
        raise StartError("timed out waiting for " + what)

    def key(self, name="client.admin"):
        """The base64 key of an entity."""
        return self.cli(AUTHTOOL, self.keyring, "-n", name, "-p").stdout.strip()

    # -- start --
    def _start(self, with_mgr, device_bytes):
        d = self.dir
        fsid = str(uuid.uuid4())
        self.v2, self.v1 = free_port(), free_port()
        with open(self.conf, "w") as f:
            f.write(CONF.format(fsid=fsid, v2=self.v2, v1=self.v1, d=d,
                                device_bytes=device_bytes))
        kr = self.keyring
        self.cli(AUTHTOOL, "--create-keyring", kr, "--gen-key", "-n", "mon.",
                 "--cap", "mon", "allow *")
        self.cli(AUTHTOOL, kr, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
                 "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *")
        self.cli(AUTHTOOL, kr, "--gen-key", "-n", "client.fxuser", "--cap", "mon",
                 "profile rbd", "--cap", "osd", "profile rbd pool=" + self.pool)
        monmap = os.path.join(d, "monmap")
        self.cli(MONMAPTOOL, "--create", "--clobber", "--fsid", fsid, "--addv", "a",
                 "[v2:127.0.0.1:%d,v1:127.0.0.1:%d]" % (self.v2, self.v1), monmap)
        self.cli(CEPH_MON, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", kr)
        self._daemon("mon", [CEPH_MON, "-f", "-i", "a"])
        self._wait("the monitor",
                   lambda: self.cli(CEPH, "mon", "stat", timeout=10, check=False).returncode == 0,
                   60)
        if with_mgr:
            self.start_mgr()
        osd_id = self.cli(CEPH, "osd", "create").stdout.strip()
        okr = os.path.join(d, "osd", "ceph-%s" % osd_id, "keyring")
        self.cli(CEPH, "auth", "get-or-create", "osd." + osd_id, "mon", "allow profile osd",
                 "osd", "allow *", "mgr", "allow profile osd", "-o", okr)
        self.cli(CEPH_OSD, "-i", osd_id, "--mkfs", "--osd-uuid", str(uuid.uuid4()), timeout=60)
        self._daemon("osd", [CEPH_OSD, "-f", "-i", osd_id])
        self._wait("the OSD", lambda: " 1 up" in self.cli(CEPH, "osd", "stat", timeout=10,
                                                          check=False).stdout, 60)
        self.make_pool(self.pool)

    def start_mgr(self):
        mkr = os.path.join(self.dir, "mgr", "ceph-x", "keyring")
        self.cli(CEPH, "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd",
                 "allow *", "mds", "allow *", "-o", mkr)
        self._daemon("mgr", [CEPH_MGR, "-f", "-i", "x"])

    def make_pool(self, pool):
        """A pool initialised for rbd, ready when an object can be written."""
        self.cli(CEPH, "osd", "pool", "create", pool, "8", "8")
        self.cli(CEPH, "osd", "pool", "application", "enable", pool, "rbd")
        probe = os.path.join(self.dir, "probe")
        with open(probe, "w") as f:
            f.write("probe\n")

        def ready():
            if self.cli(RADOS, "-p", pool, "put", "vd-probe", probe, timeout=10,
                        check=False).returncode:
                return False
            self.cli(RADOS, "-p", pool, "rm", "vd-probe", timeout=10, check=False)
            return True
        self._wait("pool " + pool, ready, 60)
        self.cli(RBD, "pool", "init", pool, timeout=60)

    # -- names --
    def name(self, image, pool=None, extra=""):
        """rbd:pool/image:conf=... for qemu-img and vdisk-img."""
        return "rbd:%s/%s:conf=%s%s" % (pool or self.pool, image, self.conf, extra)

    def rbd(self, *args, timeout=60):
        return self.cli(RBD, "-p", self.pool, *args, timeout=timeout)

    # -- stop --
    def kill(self, *names):
        """SIGKILL some daemons now (fault tests)."""
        for n in names:
            p = self.procs.get(n)
            if p and p.poll() is None:
                p.kill()
                p.wait()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + 1   # memstore keeps nothing worth a clean stop
        for p in self.procs.values():
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
