# SPDX-License-Identifier: BSD-3-Clause
"""Helpers for the vdisk-nbd tests: start servers (vdisk-nbd, qemu-nbd) on a
Unix socket or a free 127.0.0.1 port and always stop them; raw-socket
handshake pieces."""
import os
import signal
import socket
import struct
import subprocess
import time

from conftest import BUILD

VDISK_NBD = os.path.join(BUILD, "tools", "nbd", "vdisk-nbd")
# libnbd's tools and python module are Debian's, under /usr/bin/python3.
ENV = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))

NBD_MAGIC = 0x4e42444d41474943
OPTS_MAGIC = 0x49484156454f5054
REP_MAGIC = 0x3e889045565a9


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A server process; stop() sends SIGTERM and waits."""

    def __init__(self, prog, args, sock=None, port=None, probe=True):
        self.sock, self.port = sock, port
        addr = ["-k", sock] if sock else ["-b", "127.0.0.1", "-p", str(port)]
        self.proc = subprocess.Popen([prog] + addr + [str(a) for a in args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self._wait_ready(probe)

    def _wait_ready(self, probe):
        """Connect until it works; without probe (a connection would count
        as the server's one client), wait for the socket file."""
        for _ in range(200):
            if self.proc.poll() is not None:
                raise AssertionError("server exited: %s" % self.proc.stderr.read())
            if not probe:
                if os.path.exists(self.sock):
                    return
                time.sleep(0.025)
                continue
            try:
                self.connect().close()
                return
            except OSError:
                time.sleep(0.025)
        self.stop()
        raise AssertionError("server did not start")

    def connect(self):
        if self.sock:
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.sock)
        else:
            s = socket.create_connection(("127.0.0.1", self.port))
        return s

    def uri(self, name=""):
        if self.sock:
            return "nbd+unix:///%s?socket=%s" % (name, self.sock)
        return "nbd://127.0.0.1:%d/%s" % (self.port, name)

    def addr_args(self):
        return ["-k", self.sock] if self.sock else ["-b", "127.0.0.1", "-p", str(self.port)]

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop on SIGTERM")
        out, err = self.proc.communicate()
        self.stderr = err
        return self.proc.returncode


def run(args, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          env=ENV, **kw)


# ---- raw protocol pieces ----

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += d
    return buf


def greet(s, flags=3):
    g = recv_exact(s, 18)
    magic, opts, hflags = struct.unpack(">QQH", g)
    assert magic == NBD_MAGIC and opts == OPTS_MAGIC
    s.sendall(struct.pack(">I", flags))
    return hflags


def send_opt(s, opt, data=b"", length=None):
    s.sendall(struct.pack(">QII", OPTS_MAGIC, opt,
                          len(data) if length is None else length) + data)


def read_rep(s):
    magic, opt, typ, length = struct.unpack(">QIII", recv_exact(s, 20))
    assert magic == REP_MAGIC
    return opt, typ, recv_exact(s, length)


def closed(s, timeout=5):
    """True when the peer closes the connection (reads EOF)."""
    s.settimeout(timeout)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
