# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-ga against qemu-ga 7.2 on the wire: the same bytes in give the
same answers out (after masking times, pids and the version), for good
commands, bad JSON, unknown commands, wrong arguments, oversize input, a
client that goes away mid-command, and a serial line with garbage on it."""
import json
import os
import pty
import re
import select
import subprocess
import termios
import tty

import pytest

from ga_helpers import (QEMU_GA, VDISK_GA, agents, env_with_conf, mask,  # noqa: F401
                        fsinfo_by_mountpoint, needs_qemu_ga)

SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))

# One request (or a run of bytes) per line; each is followed by a fence.
REQUESTS = [
    b'{"execute":"guest-ping"}',
    b'{"execute":"guest-sync","arguments":{"id":123}}',
    b'{"execute":"guest-sync-delimited","arguments":{"id":-5}}',
    b"{'execute':'guest-ping'}",
    b'{"execute":"nope"}',
    b'{"execute":"guest-sync"}',
    b'{"execute":"guest-sync","arguments":{"id":"x"}}',
    b'{"execute":"guest-sync","arguments":{"id":1.5}}',
    b'{"execute":"guest-sync","arguments":{"id":1,"z":2}}',
    b'[]', b'{}', b'"x"', b'1 2 3 null true', b'%d', b']]]', b'}',
    b'{"execute":1}',
    b'garbage {"execute":"guest-ping","arguments":[]}',
    b'{"execute":"guest-ping","id":7}',
    b'{"execute":"guest-ping","id":{"a":[1,"x"]}}',
    b'{"execute":"guest-ping","foo":7}',
    b'{"execute":"guest-ping"} {"execute":"guest-ping"}',
    b'{"execute":"guest-ping",}',
    b'\xff{"execute":"guest-ping"}',
    b'{"execute":"guest-info"}',
    b'{"execute":"guest-get-devices"}',
    b'{"execute":"guest-ping","arguments":{"a":1}}',
    b'{"execute":"guest-fsfreeze-status"}',
    b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[1]}}',
    b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":"x"}}',
    b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0}]}}',
    b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0,"online":true,"x":1}]}}',
    b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[3]}}',
    b'{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[{"phys-index":-1}]}}',
    b'{"execute":"guest-set-user-password","arguments":{"username":"u","password":1}}',
    b'{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"u"}}',
    b'{"execute":"guest-exec","arguments":{"path":"/bin/true","capture-output":"yes"}}',
    b'{"execute":"guest-shutdown","arguments":{"mode":7}}',
    b'{"execute":"guest-ping", "execute":"guest-info"}',
    b'{"execute":"guest-sync","arguments":{"id":18446744073709551615}}',
    b'{"execute":"guest-sync","arguments":{"id":-9223372036854775808}}',
    b'{"execute":"guest-sync","arguments":{"id":1e400}}',
    b'{"execute":"guest-sync","arguments":{"id":01}}',
    b'{"execute":"guest-sync","arguments":{"id":-}}',
    b'{"execute":"guest-sync","arguments":{"id":tru}}',
    b'{"execute":"guest-sync","arguments":{"id":True}}',
    b'{"execute":"\\u00e9\\ud83d\\ude00"}',
    b'{"execute":"x\\u0000y"}',
    b'{"execute":"\\x"}',
    b'{"execute":"a\x01b"}',
    b'{"execute":"\xc3\xa9\xe2"}',
    b"{'execute':'it''s'}",
    b'{"a":1,"b":2,"c":3,"execute":"guest-ping"}',
    b'{"execute":"guest-ping"}}',
    b'{"execute":"guest-ping"]',
    b'{"execute":"guest-get-host-name"}',
    b'{"execute":"guest-get-timezone"}',
    b'{"execute":"guest-get-osinfo"}',
    b'{"execute":"guest-get-users"}',
    b'{"execute":"guest-get-vcpus"}',
    b'{"execute":"guest-get-time","arguments":{"x":1}}',
    # Only times the kernel refuses whatever the agent does with them (a
    # negative clock): a test must never move this machine's clock.
    b'{"execute":"guest-set-time","arguments":{"time":-5}}',
    b'{"execute":"guest-set-time","arguments":{"time":-31500000000000000}}',
    b'{"execute":"guest-set-time","arguments":{"time":"x"}}',
    # Users that do not exist or have no home: nothing is written.
    b'{"execute":"guest-ssh-get-authorized-keys","arguments":{"username":"nosuchuserx"}}',
    b'{"execute":"guest-ssh-get-authorized-keys","arguments":{"username":"nobody"}}',
    b'{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nobody","keys":["a\\nb"]}}',
    b'{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nosuchuserx","keys":["#a"]}}',
    b'{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nosuchuserx",'
    b'"keys":["a"],"reset":true}}',
    b'{"execute":"guest-ssh-remove-authorized-keys","arguments":{"username":"nosuchuserx","keys":[]}}',
    # Passwords only for a user that does not exist.
    b'{"execute":"guest-set-user-password","arguments":{"username":"nosuchuserx",'
    b'"password":"!!","crypted":false}}',
    b'{"execute":"guest-set-user-password","arguments":{"username":"nosuchuserx",'
    b'"password":"YWJj","crypted":false}}',
    b'{"execute":"guest-set-user-password","arguments":{"username":"nosuchuserx",'
    b'"password":"YQpi","crypted":true}}',
    b'{"execute":"guest-set-user-password","arguments":{"username":"nosuch:x",'
    b'"password":"YWJj","crypted":false}}',
    # Never a valid mode: the machine would go down.
    b'{"execute":"guest-shutdown","arguments":{"mode":"bogus"}}',
    b'{"execute":"guest-shutdown","arguments":{"mode":1}}',
]


def compare(v, q, items):
    """Send each item to both agents; the list of differences."""
    bad = []
    for item in items:
        a, b = mask(v.fenced(item)), mask(q.fenced(item))
        if a != b:
            i = next(k for k in range(min(len(a), len(b)) + 1) if a[k:k + 1] != b[k:k + 1])
            bad.append((item[:120], a[max(0, i - 200):i + 200], b[max(0, i - 200):i + 200]))
    return bad


def test_requests(agents):
    v, q = agents()
    assert compare(v, q, REQUESTS) == []


def test_blocked_commands(agents):
    v, q = agents(["-b", "guest-ping,guest-file-open", "-b", "nonexistent"])
    assert compare(v, q, [b'{"execute":"guest-info"}', b'{"execute":"guest-ping"}',
                          b'{"execute":"guest-file-open","arguments":{}}']) == []
    info = v.cmd("guest-info")["return"]["supported_commands"]
    assert {"enabled": False, "name": "guest-ping", "success-response": True} in info


def test_files(agents, tmp_path):
    """Open/write/seek/read/flush/close on files under tmp_path; handles are
    numbered the same way."""
    v, q = agents()
    items = []
    for i, mode in enumerate(["w+", "r", "a", "rb+", "q", "wb"]):
        path = str(tmp_path / ("f%d" % (i % 3)))
        items.append(json.dumps({"execute": "guest-file-open",
                                 "arguments": {"path": path, "mode": mode}}).encode())
    items.append(b'{"execute":"guest-file-open","arguments":{"path":"/nonexistent/x"}}')
    for h in (1000, 1001, 1002, 5):
        for args in ({"buf-b64": "aGVsbG8="}, {"buf-b64": "aGVsbG8", "count": 3},
                     {"buf-b64": "!!"}, {"buf-b64": "aGk=", "count": 9}):
            items.append(json.dumps({"execute": "guest-file-write", "arguments":
                                     dict(args, handle=h)}).encode())
        for whence in ("set", "cur", "end", 0, 2, 9, "bad"):
            items.append(json.dumps({"execute": "guest-file-seek", "arguments":
                                     {"handle": h, "offset": 0, "whence": whence}}).encode())
        for count in (None, 0, 2, -1, 48 << 20, (48 << 20) + 1):
            args = {"handle": h} if count is None else {"handle": h, "count": count}
            items.append(json.dumps({"execute": "guest-file-read",
                                     "arguments": args}).encode())
        items.append(json.dumps({"execute": "guest-file-flush",
                                 "arguments": {"handle": h}}).encode())
        items.append(json.dumps({"execute": "guest-file-close",
                                 "arguments": {"handle": h}}).encode())
    assert compare(v, q, items) == []
    with open(os.path.join(v.dir, "qga.state")) as a, open(os.path.join(q.dir, "qga.state")) as b:
        assert a.read() == b.read()


def test_oversize_and_deep(agents):
    """Huge strings, deep nesting past the limit, many tokens: the same
    errors, and both agents still answer."""
    v, q = agents()
    n = 1 << 16 if SANITIZED else 1 << 20
    items = [b'{"execute":"guest-ping","arguments":{"x":"' + b"a" * n + b'"}}',
             b'[' * 1100 + b']' * 1100,
             b'{"execute":"guest-sync","arguments":{"id":' + b"9" * 5000 + b'}}',
             b'[' + b'1,' * (n // 8) + b'1]',
             b'{"execute":"' + b'x' * 70000 + b'"}']
    assert compare(v, q, items) == []


def test_message_size_limits(agents):
    """QMP bounds a message at 64 MiB of tokens, not below: a 20 MiB
    request is parsed and answered, a 70 MiB one gets the size error and
    the rest of its bytes are lexed on as qemu-ga lexes them (a long bad
    keyword quoted up to QEMU's 1024-byte message cut)."""
    v, q = agents()
    items = [b'{"execute":"guest-ping","arguments":{"x":"' + b"a" * (20 << 20) + b'"}}',
             b'{"execute":"guest-ping","arguments":{"x":"' + b"a" * (70 << 20) + b'"}}',
             b'{"execute":"guest-ping","arguments":{"x":' + b"b" * 3000 + b'}}']
    assert compare(v, q, items) == []


def test_disconnect_mid_command(agents):
    """A client leaves after half a request; the next client's requests see
    the same state."""
    v, q = agents()
    for a in (v, q):
        a.send(b'{"execute":"guest-sync","argu')
        a.reconnect()
    assert compare(v, q, [b'{"execute":"guest-ping"}', b'{"execute":"guest-ping"}']) == []
    for a in (v, q):
        a.fenced(b'{"execute":"guest-ping"}')   # answered before leaving:
        a.send(b'{"exec')                       # a write to a closed peer races
        a.reconnect()
    assert compare(v, q, [b'{"execute":"guest-ping"}']) == []


class SerialAgent:
    """An agent on -m isa-serial over a pseudo-terminal pair."""

    def __init__(self, binary, workdir):
        os.makedirs(workdir, exist_ok=True)
        self.master, slave = pty.openpty()
        tty.setraw(self.master)
        attrs = termios.tcgetattr(slave)
        name = os.ttyname(slave)
        self.log = open(os.path.join(workdir, "log"), "w")
        self.proc = subprocess.Popen(
            [binary, "-m", "isa-serial", "-p", name, "-t", workdir],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            env=env_with_conf(os.path.join(workdir, "none.conf")))
        self.slave = slave
        del attrs

    def sync(self, data, ident):
        """Send data, then 0xFF and guest-sync-delimited(ident) until the
        agent answers it; what came before the answer."""
        marker = b'\xff{"return": %d}\n' % ident
        buf = b""
        os.write(self.master, data)
        while not buf.endswith(marker):
            os.write(self.master, b'\xff{"execute":"guest-sync-delimited",'
                     b'"arguments":{"id":%d}}' % ident)
            r, _, _ = select.select([self.master], [], [], 2)
            while r:
                buf += os.read(self.master, 65536)
                if buf.endswith(marker):
                    break
                r, _, _ = select.select([self.master], [], [], 0.5)
            if self.proc.poll() is not None:
                raise AssertionError("agent exited")
        # Answers to repeated fences before the agent was ready are dropped.
        return buf[:-len(marker)].split(b'\xff{"return": %d}\n' % ident)[-1]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        os.close(self.master)
        os.close(self.slave)
        self.log.close()


def test_resync_over_serial_line(tmp_path):
    """Garbage and half requests, then 0xFF + guest-sync-delimited: the agent
    drops the partial input and answers as qemu-ga does."""
    needs_qemu_ga()
    v = SerialAgent(VDISK_GA, str(tmp_path / "v"))
    q = SerialAgent(QEMU_GA, str(tmp_path / "q"))
    try:
        for a in (v, q):
            a.sync(b"", 1)
        for i, junk in enumerate([b'{"execute":"guest-pi', b'\x00\x01garbage',
                                  b'[[[{"a":', b'"unterminated', b'{"execute":"guest-ping"}',
                                  b"{'execute':'guest-info'", b'\xfe\xfe}}}']):
            a, b = v.sync(junk, 100 + i), q.sync(junk, 100 + i)
            assert mask(a) == mask(b), junk
    finally:
        v.stop()
        q.stop()


EXEC_CASES = [
    {"path": "/bin/echo", "arg": ["hi", "there"], "capture-output": True},
    {"path": "echo", "arg": ["hi"], "capture-output": True},
    {"path": "/bin/sh", "arg": ["-c", "echo out; echo err >&2; exit 3"], "capture-output": True},
    {"path": "/bin/sh", "arg": ["-c", "echo out; kill -9 $$"], "capture-output": True},
    {"path": "/bin/sh", "arg": ["-c", "echo out; exit 1"]},
    {"path": "/bin/cat", "input-data": "aGVsbG8=", "capture-output": True},
    {"path": "/bin/cat", "capture-output": True},
    {"path": "/bin/sh", "arg": ["-c", "env; ls /proc/self/fd | wc -l"], "env": ["A=1", "B=2"],
     "capture-output": True},
    {"path": "/bin/sh", "arg": ["-c", "head -c 200000 /dev/zero; head -c 70000 >&2 /dev/zero"],
     "capture-output": True},
    {"path": "/bin/cat", "input-data": "eA==" * 50000, "capture-output": True},
    {"path": "/nonexistent"},
    {"path": "/etc/passwd"},
    {"path": "/bin/cat", "input-data": "!!"},
]


def run_exec(agent, args):
    """guest-exec, then guest-exec-status until exited, then once more."""
    r = agent.cmd("guest-exec", args)
    out = [r]
    if "return" in r:
        pid = r["return"]["pid"]
        while True:
            s = agent.cmd("guest-exec-status", {"pid": pid})
            if s.get("return", {}).get("exited") is not False:
                break
        out += [s, agent.cmd("guest-exec-status", {"pid": pid})]
        r["return"]["pid"] = "P"
    return out


def test_exec(agents):
    v, q = agents()
    for args in EXEC_CASES:
        assert run_exec(v, args) == run_exec(q, args), args
    assert v.cmd("guest-exec-status", {"pid": 1}) == q.cmd("guest-exec-status", {"pid": 1})


def test_sys_commands(agents):
    """vCPUs, memory blocks and the statistics (counters masked: they move);
    nothing is taken offline: only no-op and failing requests are sent."""
    v, q = agents()
    items = [
        b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[]}}',
        b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":99999,"online":true}]}}',
        b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0,"online":true}]}}',
        b'{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[]}}',
        b'{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":'
        b'[{"phys-index":999999999,"online":true}]}}',
        b'{"execute":"guest-get-memory-block-info"}',
        b'{"execute":"guest-get-memory-blocks"}',
    ]
    assert compare(v, q, items) == []
    for item in (b'{"execute":"guest-get-cpustats"}', b'{"execute":"guest-get-diskstats"}'):
        # devices may come and go meanwhile (loop devices): the first two
        a, b = v.fenced(item), q.fenced(item)
        a, b = [re.sub(rb": \d+", b": N", x).split(b"}, {")[:2] for x in (a, b)]
        assert a == b


def test_network_interfaces(agents):
    v, q = agents()
    item = b'{"execute":"guest-network-get-interfaces"}'
    a, b = [re.sub(rb'("[rt]x-[a-z]+": )\d+', rb"\1N", x.fenced(item)) for x in (v, q)]
    assert a == b
    assert b'"name": "lo"' in a


def test_fsinfo(agents):
    """The file systems both agents saw (others may mount meanwhile)."""
    v, q = agents()
    a, b = fsinfo_by_mountpoint(v), fsinfo_by_mountpoint(q)
    common = sorted(set(a) & set(b))
    assert common
    assert [a[m] for m in common] == [b[m] for m in common]


def test_disks(agents):
    """guest-get-disks: the devices both agents saw, in the same order."""
    v, q = agents()
    a, b = [x.cmd("guest-get-disks")["return"] for x in (v, q)]
    names = set(d["name"] for d in a) & set(d["name"] for d in b)
    assert names
    assert [d for d in a if d["name"] in names] == [d for d in b if d["name"] in names]


def test_verbose_log(agents):
    """-v: the same debug lines (times, version and whether EOF was seen
    before the signal masked)."""
    v, q = agents(["-v", "-b", "guest-ping"])
    logs = []
    for a in (v, q):
        a.fenced(b'{"execute":"guest-ping"}garbage{')
        a.stop()
        with open(a.log, "rb") as f:
            text = f.read()
        text = re.sub(rb"(?m)^\d+\.\d+: ", b"", text)
        text = re.sub(rb"Guest agent version .* started", b"V", text)
        logs.append(text.replace(b"debug: received EOF\n", b""))
    # qemu-ga 7.2 does not always log its SIGTERM (a make check saw its log
    # end before the line; see agents()): vdisk-ga's line is checked, and
    # compared with qemu-ga's only when qemu-ga wrote it.
    quit_line = b"debug: received signal num 15, quitting\n"
    assert logs[0].endswith(quit_line), logs[0][-300:]
    if not logs[1].endswith(quit_line):
        logs[0] = logs[0][:-len(quit_line)]
    assert logs[0] == logs[1]
