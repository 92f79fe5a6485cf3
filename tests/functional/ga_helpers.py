# SPDX-License-Identifier: BSD-3-Clause
"""Helpers for the guest agent tests: start vdisk-ga and qemu-ga side by
side on unix-listen sockets under a test's tmp_path, send bytes, and read
answers up to a guest-sync-delimited fence."""
import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import BUILD

VDISK_GA = os.path.join(BUILD, "tools", "ga", "vdisk-ga")
QEMU_GA = shutil.which("qemu-ga") or (
    "/usr/sbin/qemu-ga" if os.path.exists("/usr/sbin/qemu-ga") else None)

STARTUP_TIMEOUT = 60


def needs_qemu_ga():
    if QEMU_GA is None:
        pytest.skip("qemu-ga is not installed (package qemu-guest-agent)")


def env_with_conf(conf):
    """An environment where QGA_CONF names conf (a path that may not exist)."""
    env = dict(os.environ)
    env["QGA_CONF"] = str(conf)
    return env


class Agent:
    """One agent process on a unix-listen socket in its own directory."""

    def __init__(self, binary, workdir, extra=(), conf=None):
        self.binary, self.dir = binary, workdir
        os.makedirs(workdir, exist_ok=True)
        self.sock = os.path.join(workdir, "ga.sock")
        self.log = os.path.join(workdir, "ga.log")
        conf = conf or os.path.join(workdir, "none.conf")
        args = [binary, "-m", "unix-listen", "-p", self.sock, "-t", workdir]
        args += list(extra)
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf,
                                     env=env_with_conf(conf))
        self.conn = None
        self.fence = 0
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                self.connect()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("agent %s did not start: %s" % (
                        binary, open(self.log).read()))
                time.sleep(0.02)

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.sock)
        except OSError:
            s.close()
            raise
        s.settimeout(30)
        self.conn = s

    def reconnect(self):
        self.conn.close()
        self.connect()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.conn.sendall(data)

    def fenced(self, data=b""):
        """Send data then 0xFF and guest-sync-delimited; the bytes answered
        before the fence's answer."""
        self.fence += 1
        marker = b'\xff{"return": %d}\n' % self.fence
        if isinstance(data, str):
            data = data.encode()
        self.send(data + b'\xff{"execute":"guest-sync-delimited",'
                  b'"arguments":{"id":%d}}' % self.fence)
        buf = b""
        while not buf.endswith(marker):
            chunk = self.conn.recv(1 << 20)
            if not chunk:
                raise AssertionError("agent closed the connection: %r" % buf[-500:])
            buf += chunk
        return buf[:-len(marker)]

    def cmd(self, execute, arguments=None, **extra):
        """One command as JSON; the decoded answer."""
        req = {"execute": execute}
        if arguments is not None:
            req["arguments"] = arguments
        req.update(extra)
        out = self.fenced(json.dumps(req))
        return json.loads(out.split(b"\n")[0])

    def stop(self, grace=30):
        """SIGTERM, then SIGKILL after grace seconds; the exit status."""
        if self.conn:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        return self.proc.returncode


# The 0xFF + "stray" error a fence leaves when it interrupts a token.
STRAY_FENCE = re.compile(rb'JSON parse error, stray \'[^\n]*')


def mask(data):
    """Mask what legitimately differs between the agents: times, pids,
    version strings."""
    data = re.sub(rb'"version": "[^"]*"', b'"version": "V"', data)
    data = re.sub(rb'"return": \d{15,}', b'"return": T', data)
    data = re.sub(rb'"pid": \d+', b'"pid": P', data)
    return data


def fsinfo_by_mountpoint(agent):
    """guest-get-fsinfo as {mountpoint: entry}, usage masked (it moves)."""
    out = {}
    for fs in agent.cmd("guest-get-fsinfo")["return"]:
        for k in ("used-bytes", "total-bytes"):
            if k in fs:
                fs[k] = "N"
        out[fs["mountpoint"]] = fs
    return out


@pytest.fixture
def agents(tmp_path):
    """Start (vdisk-ga, qemu-ga) with the same options; stop them after."""
    needs_qemu_ga()
    started = []

    def start(extra=(), conf=None):
        v = Agent(VDISK_GA, str(tmp_path / ("v%d" % len(started))), extra, conf)
        started.append(v)
        q = Agent(QEMU_GA, str(tmp_path / ("q%d" % len(started))), extra, conf)
        started.append(q)
        return v, q

    yield start
    # SIGTERM ends vdisk-ga cleanly (and a sanitizer build finds no leak).
    # qemu-ga 7.2 was seen to stay up after SIGTERM on a loaded machine
    # until stop() killed it (three tests of one make check waited 30 s
    # each): its exit is not judged, so it gets 3 s.
    codes = [(a.stop(30 if a.binary == VDISK_GA else 3), a) for a in started]
    for code, a in codes:
        if a.binary == VDISK_GA:
            assert code == 0, open(a.log).read()[-3000:]
