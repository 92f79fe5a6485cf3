# SPDX-License-Identifier: BSD-3-Clause
"""glusterd with one-brick volumes on loopback for the gluster protocol tests
and bench.

glusterd's management port is fixed (24007: brick processes fetch their
volume file there), so one glusterd serves a whole test session, shared by
the pytest-xdist workers: a lock file and a list of the processes using it
(in the system's temporary directory) decide who starts it and who stops it
(the last user).  Its state lives in a temporary directory; brick logs and
sockets go where glusterfs puts them (/var/log/glusterfs, /var/run/gluster).
The brick host must be a name (gluster refuses "localhost" and addresses)
that resolves to 127.0.0.1: this machine's host name, or the tests skip."""
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
GLUSTERD = shutil.which("glusterd", path=SBIN)
GLUSTER = shutil.which("gluster", path=SBIN)
MGMT_PORT = 24007
VOLUME = "vdtest"
SHARED = os.path.join(tempfile.gettempdir(), "vdisk-test-glusterd")
START_TIMEOUT = 120


class Unavailable(Exception):
    """glusterd cannot run here; the message says why."""


def brick_host():
    """A host name resolving to 127.0.0.1, or None."""
    name = socket.gethostname()
    try:
        if name not in ("localhost",) and socket.gethostbyname(name) == "127.0.0.1":
            return name
    except OSError:
        pass
    return None


def alive(pid):
    """Is pid a live (not zombie) process?"""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def kill_wait(pid, timeout=15):
    """SIGTERM, then SIGKILL if pid has not gone after timeout seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end and alive(pid):
            time.sleep(0.05)
        if not alive(pid):
            return


class Glusterd:
    """A glusterd with state in directory d (started unless attach)."""

    def __init__(self, d, attach=False):
        self.dir = d
        self.sock = os.path.join(d, "run", "glusterd.socket")
        self.host = brick_host()
        self.pidfile = os.path.join(d, "glusterd.pid")
        if not attach:
            self._start()
        with open(self.pidfile) as f:
            self.pid = int(f.read().split()[0])

    def cli(self, *args, timeout=120, check=True):
        r = subprocess.run([GLUSTER, "--mode=script", "--glusterd-sock=" + self.sock,
                            "--log-file=" + os.path.join(self.dir, "logs", "cli.log")]
                           + list(args), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("gluster %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def _start(self):
        for sub in ("state", "run", "logs"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        vol = os.path.join(self.dir, "glusterd.vol")
        with open(vol, "w") as f:
            f.write("volume management\n"
                    "    type mgmt/glusterd\n"
                    "    option working-directory %s/state\n"
                    "    option run-directory %s/run\n"
                    "    option glusterd-sockfile %s\n"
                    "    option transport-type socket\n"
                    "    option transport.socket.bind-address 127.0.0.1\n"
                    "    option transport.socket.listen-port %d\n"
                    "    option transport.address-family inet\n"
                    "    option ping-timeout 0\n"
                    "    option event-threads 1\n"
                    "end-volume\n" % (self.dir, self.dir, self.sock, MGMT_PORT))
        log = open(os.path.join(self.dir, "logs", "glusterd.stdout"), "w")
        proc = subprocess.Popen([GLUSTERD, "-N", "-f", vol, "-p", self.pidfile,
                                 "-l", os.path.join(self.dir, "logs", "glusterd.log")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        with open(self.pidfile, "w") as f:
            f.write("%d\n" % proc.pid)
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise Unavailable("glusterd exited with %d (see %s/logs)" %
                                  (proc.returncode, self.dir))
            try:
                if self.cli("peer", "status", timeout=30, check=False).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass        # a loaded machine: ask again
            time.sleep(0.1)
        kill_wait(proc.pid)
        raise Unavailable("glusterd did not answer in %d s" % START_TIMEOUT)

    def brick_dir(self, volume):
        return os.path.join(self.dir, "bricks", volume)

    def create_volume(self, volume):
        """Create and start a one-brick volume; returns its brick directory."""
        brick = self.brick_dir(volume)
        os.makedirs(brick, exist_ok=True)
        self.cli("volume", "create", volume, "transport", "tcp",
                 "%s:%s" % (self.host, brick), "force")
        # libgfapi clients connect from unprivileged ports
        self.cli("volume", "set", volume, "server.allow-insecure", "on")
        self.cli("volume", "start", volume)
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.brick_pid(volume):
                return brick
            time.sleep(0.1)
        raise Unavailable("the brick of %s did not come online" % volume)

    def brick_pid(self, volume):
        """The pid of the volume's online brick process, or None."""
        try:
            r = self.cli("volume", "status", volume, "--xml", check=False, timeout=60)
        except subprocess.TimeoutExpired:
            return None
        m = re.search(r"<node>.*?<status>1</status>.*?<pid>(\d+)</pid>", r.stdout, re.S)
        return int(m.group(1)) if m and int(m.group(1)) > 0 else None

    def delete_volume(self, volume):
        self.cli("volume", "stop", volume, "force", check=False)
        self.cli("volume", "delete", volume, check=False)
        shutil.rmtree(self.brick_dir(volume), ignore_errors=True)

    def stop(self):
        self.cli("volume", "stop", VOLUME, "force", check=False, timeout=30)
        for root, _, files in os.walk(self.dir):
            for name in files:
                if name.endswith(".pid") and root != self.dir:
                    try:
                        with open(os.path.join(root, name)) as f:
                            kill_wait(int(f.read().split()[0]))
                    except (OSError, ValueError, IndexError):
                        pass
        kill_wait(self.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_usable():
    if not GLUSTERD or not GLUSTER:
        raise Unavailable("glusterd is not installed (glusterfs-server)")
    if os.geteuid() != 0:
        raise Unavailable("glusterd needs root")
    if not brick_host():
        raise Unavailable("no host name resolves to 127.0.0.1 (gluster needs one for "
                          "the brick)")


class Shared:
    """Use the session's glusterd (started by the first user, stopped by the
    last); .server is the Glusterd, .volume the test volume."""

    def __init__(self):
        _check_usable()
        os.makedirs(SHARED, exist_ok=True)
        self.lockfile = os.path.join(SHARED, "lock")
        self.statefile = os.path.join(SHARED, "state.json")
        self.volume = VOLUME
        with self._locked():
            st = self._read()
            users = [p for p in st.get("users", []) if alive(p)]
            server = None
            if st.get("dir") and alive(st.get("pid", 0)):
                server = Glusterd(st["dir"], attach=True)
            else:
                if port_open(MGMT_PORT):
                    raise Unavailable("port %d is taken (another glusterd runs)" % MGMT_PORT)
                d = tempfile.mkdtemp(prefix="vdisk-glusterd-")
                try:
                    server = Glusterd(d)
                    server.create_volume(VOLUME)
                except BaseException:
                    if os.path.exists(os.path.join(d, "glusterd.pid")):
                        Glusterd(d, attach=True).stop()
                    shutil.rmtree(d, ignore_errors=True)
                    raise
                users = []
            users.append(os.getpid())
            self._write({"dir": server.dir, "pid": server.pid, "users": users})
        self.server = server

    def _locked(self):
        lockfile = self.lockfile

        class Lock:
            def __enter__(self):
                self.f = open(lockfile, "a")
                fcntl.flock(self.f, fcntl.LOCK_EX)

            def __exit__(self, *exc):
                fcntl.flock(self.f, fcntl.LOCK_UN)
                self.f.close()
        return Lock()

    def _read(self):
        try:
            with open(self.statefile) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write(self, st):
        with open(self.statefile + ".tmp", "w") as f:
            json.dump(st, f)
        os.replace(self.statefile + ".tmp", self.statefile)

    def release(self):
        with self._locked():
            st = self._read()
            users = [p for p in st.get("users", []) if alive(p) and p != os.getpid()]
            if users:
                st["users"] = users
                self._write(st)
                return
            self.server.stop()
            try:
                os.unlink(self.statefile)
            except OSError:
                pass

    def url(self, path, volume=None, host="127.0.0.1"):
        return "gluster://%s/%s/%s" % (host, volume or self.volume, path)
