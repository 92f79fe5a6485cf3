# SPDX-License-Identifier: BSD-3-Clause
"""The nbd driver against a scripted server in this process: old and
unusual servers it must work with (oldstyle, plain newstyle without GO,
simple replies, extended headers), and hostile ones it must refuse with a
clear error, a nonzero exit and no hang (bad magics, oversized lengths,
chunks outside their request, truncated replies, stalls)."""
import os
import socket
import struct
import threading

import pytest

from conftest import vimg

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
OLDMAGIC = 0x00420281861253
REPMAGIC = 0x3e889045565a9
REQ_MAGIC, EXT_REQ_MAGIC = 0x25609513, 0x21e41c71
SIMPLE, STRUCT, EXT = 0x67446698, 0x668e33ef, 0x6e8a278c
OPT_EXPORT_NAME, OPT_GO, OPT_STRUCTURED, OPT_META, OPT_EXT = 1, 7, 8, 10, 11
REP_ACK, REP_INFO, REP_META, ERR_UNSUP = 1, 3, 4, (1 << 31) | 1
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_BS = 0, 1, 2, 3, 7
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT, T_ERROR = 0, 1, 2, 5, 6, (1 << 15) | 1
DONE = 1
FLAGS = 1 | 4 | 8          # HAS_FLAGS, SEND_FLUSH, SEND_FUA
SIZE = 1 << 20


def pattern(off, n):
    """Deterministic export contents."""
    return bytes((i * 7 + (i >> 9)) & 0xff for i in range(off, off + n))


def recvn(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b


class Server:
    """One connection at a time on a Unix socket, handled by a scenario:
    a callable(conn) that plays the server."""

    def __init__(self, path, scenario):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(4)
        self.scenario = scenario
        self.stop = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(c,), daemon=True).start()

    def one(self, c):
        try:
            self.scenario(c)
        except (EOFError, OSError):
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Conn:
    """Server side of the protocol, with knobs for misbehaving."""

    def __init__(self, c, structured=True, ext=False, meta=True, size=SIZE,
                 flags=FLAGS, block_size=None, go=True, fixed=True):
        self.c, self.structured, self.ext, self.meta = c, structured, ext, meta
        self.size, self.flags, self.block_size, self.go, self.fixed = \
            size, flags, block_size, go, fixed

    def send(self, b):
        self.c.sendall(b)

    def opt_reply(self, opt, rtype, data=b""):
        self.send(struct.pack(">QIII", REPMAGIC, opt, rtype, len(data)) + data)

    def handshake(self):
        self.send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3 if self.fixed else 0))
        cflags, = struct.unpack(">I", recvn(self.c, 4))
        while True:
            _, opt, ln = struct.unpack(">QII", recvn(self.c, 16))
            data = recvn(self.c, ln)
            if opt == OPT_EXPORT_NAME:
                self.structured = self.ext = False if not self.fixed else self.structured
                zeroes = b"" if cflags & 2 else b"\0" * 124
                self.send(struct.pack(">QH", self.size, self.flags) + zeroes)
                return
            if opt == OPT_EXT:
                self.opt_reply(opt, REP_ACK if self.ext else ERR_UNSUP)
            elif opt == OPT_STRUCTURED:
                self.opt_reply(opt, REP_ACK if self.structured else ERR_UNSUP)
            elif opt == OPT_META and self.meta:
                self.opt_reply(opt, REP_META, struct.pack(">I", 1) + b"base:allocation")
                self.opt_reply(opt, REP_ACK)
            elif opt == OPT_GO and self.go:
                self.go_reply()
                return
            else:
                self.opt_reply(opt, ERR_UNSUP)

    def go_reply(self):
        self.opt_reply(OPT_GO, REP_INFO, struct.pack(">HQH", 0, self.size, self.flags))
        if self.block_size:
            self.opt_reply(OPT_GO, REP_INFO, struct.pack(">HIII", 3, *self.block_size))
        self.opt_reply(OPT_GO, REP_ACK)

    def request(self):
        if self.ext:
            magic, fl, typ, cookie, off, ln = struct.unpack(">IHHQQQ", recvn(self.c, 32))
            assert magic == EXT_REQ_MAGIC
        else:
            magic, fl, typ, cookie, off, ln = struct.unpack(">IHHQQI", recvn(self.c, 28))
            assert magic == REQ_MAGIC
        payload = recvn(self.c, ln) if typ == CMD_WRITE else b""
        return typ, fl, cookie, off, ln, payload

    def simple(self, cookie, err=0, data=b""):
        self.send(struct.pack(">IIQ", SIMPLE, err, cookie) + data)

    def chunk(self, cookie, typ, payload, flags=DONE, length=None, off=0):
        ln = len(payload) if length is None else length
        if self.ext:
            self.send(struct.pack(">IHHQQQ", EXT, flags, typ, cookie, off, ln) + payload)
        else:
            self.send(struct.pack(">IHHQI", STRUCT, flags, typ, cookie, ln) + payload)

    def good_reply(self, typ, cookie, off, ln):
        """A correct reply to a request."""
        if typ == CMD_READ:
            if not self.structured:
                self.simple(cookie, 0, pattern(off, ln))
            else:
                self.chunk(cookie, T_DATA, struct.pack(">Q", off) + pattern(off, ln))
        elif typ == CMD_BS:
            if self.ext:
                self.chunk(cookie, T_BS_EXT, struct.pack(">IIQQ", 1, 1, ln, 0))
            else:
                self.chunk(cookie, T_BS, struct.pack(">III", 1, ln, 0))
        else:
            self.simple(cookie) if not self.ext else self.chunk(cookie, T_NONE, b"")

    def serve(self, on_read=None, on_bs=None):
        """Answer requests until DISC; on_read/on_bs may misbehave."""
        while True:
            typ, fl, cookie, off, ln, _ = self.request()
            if typ == CMD_DISC:
                return
            if typ == CMD_READ and on_read:
                on_read(self, cookie, off, ln)
            elif typ == CMD_BS and on_bs:
                on_bs(self, cookie, off, ln)
            else:
                self.good_reply(typ, cookie, off, ln)


def hang(conn):
    """Hold the connection open until the client gives up."""
    try:
        while conn.c.recv(4096):
            pass
    except OSError:
        pass


@pytest.fixture
def served(tmp_path):
    """served(scenario) -> json name of the export on a scripted server."""
    servers = []

    def start(scenario, extra=""):
        path = str(tmp_path / ("s%d.sock" % len(servers)))
        servers.append(Server(path, scenario))
        return ('json:{"driver":"raw","file":{"driver":"nbd","server.type":"unix",'
                '"server.path":"%s"%s}}' % (path, extra))
    yield start
    for s in servers:
        s.close()


def convert(name, tmp_path):
    return vimg("convert", "-O", "raw", name, tmp_path / "out.raw", timeout=60)


def expect_error(name, tmp_path, message):
    p = convert(name, tmp_path)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert message in p.stderr, p.stderr


# ---- servers that must work ----

@pytest.mark.parametrize("kw", [
    dict(),                                     # structured replies
    dict(structured=False, meta=False),         # simple replies only
    dict(ext=True),                             # extended headers
    dict(go=False, structured=False, meta=False),   # no NBD_OPT_GO
    dict(fixed=False),                          # plain newstyle
    dict(block_size=(512, 4096, 65536)),
])
def test_good_servers(served, tmp_path, kw):
    def scenario(c):
        conn = Conn(c, **kw)
        conn.handshake()
        conn.serve()
    p = convert(served(scenario), tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out.raw").read_bytes() == pattern(0, SIZE)


def test_oldstyle_server(served, tmp_path):
    def scenario(c):
        c.sendall(struct.pack(">QQQI", NBDMAGIC, OLDMAGIC, SIZE, FLAGS) + b"\0" * 124)
        conn = Conn(c, structured=False)
        conn.serve()
    p = convert(served(scenario), tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out.raw").read_bytes() == pattern(0, SIZE)


def test_holes_and_block_status(served, tmp_path):
    """Hole chunks read as zeroes; extents reach map."""
    def on_read(conn, cookie, off, ln):        # 32 KiB data, 32 KiB hole, ...
        pieces = []
        pos = off
        while pos < off + ln:
            n = min(32768 - pos % 32768, off + ln - pos)
            if (pos >> 15) % 2 == 0:
                pieces.append((T_DATA, struct.pack(">Q", pos) + pattern(pos, n)))
            else:
                pieces.append((T_HOLE, struct.pack(">QI", pos, n)))
            pos += n
        pieces.reverse()                       # any order is allowed
        for i, (t, payload) in enumerate(pieces):
            conn.chunk(cookie, t, payload, flags=DONE if i == len(pieces) - 1 else 0)

    def on_bs(conn, cookie, off, ln):          # 64 KiB data, 64 KiB hole, ...
        state = 0 if (off >> 16) % 2 == 0 else 3
        conn.chunk(cookie, T_BS, struct.pack(">IIIII", 1, 65536 - off % 65536, state,
                                             65536, 3 - state))

    def scenario(c):
        conn = Conn(c)
        conn.handshake()
        conn.serve(on_read, on_bs)
    name = served(scenario)
    p = vimg("map", "--output=json", name, timeout=60)
    assert p.returncode == 0, p.stderr
    assert '"start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, ' \
           '"data": true' in p.stdout
    assert '"start": 65536, "length": 65536, "depth": 0, "present": true, "zero": true, ' \
           '"data": false' in p.stdout
    assert p.stdout.count("\n") == 16
    p = convert(name, tmp_path)
    assert p.returncode == 0, p.stderr
    want = b"".join(pattern(o, 32768) + bytes(32768) if (o >> 16) % 2 == 0 else bytes(65536)
                    for o in range(0, SIZE, 65536))
    assert (tmp_path / "out.raw").read_bytes() == want


# ---- servers that must be refused ----

def handshake_scenario(send):
    def scenario(c):
        send(c)
        hang(Conn(c))
    return scenario


@pytest.mark.parametrize("send,message", [
    (lambda c: c.sendall(b"NOTNBD!!" + b"\0" * 8), "unexpected magic"),
    (lambda c: c.sendall(struct.pack(">Q", NBDMAGIC)), "closed the connection"),
    (lambda c: c.sendall(struct.pack(">QQ", NBDMAGIC, 1234)), "unexpected second magic"),
])
def test_bad_greeting(served, tmp_path, send, message):
    def scenario(c):
        send(c)
        c.shutdown(socket.SHUT_WR)
        hang(Conn(c))
    expect_error(served(scenario), tmp_path, message)


def test_huge_option_reply(served, tmp_path):
    def scenario(c):
        conn = Conn(c)
        conn.send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
        recvn(c, 4)
        _, opt, ln = struct.unpack(">QII", recvn(c, 16))
        recvn(c, ln)
        conn.send(struct.pack(">QIII", REPMAGIC, opt, REP_ACK, 0xffffffff))
        hang(conn)
    expect_error(served(scenario), tmp_path, "option reply of 4294967295 bytes")


def test_wrong_option_in_reply(served, tmp_path):
    def scenario(c):
        conn = Conn(c)
        conn.send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
        recvn(c, 4)
        _, opt, ln = struct.unpack(">QII", recvn(c, 16))
        recvn(c, ln)
        conn.opt_reply(opt + 1, REP_ACK)
        hang(conn)
    expect_error(served(scenario), tmp_path, "while option 11 was pending")


@pytest.mark.parametrize("kw,message", [
    (dict(block_size=(3, 4096, 65536)), "invalid minimum block size 3"),
    (dict(block_size=(512, 4096, 100)), "invalid maximum block size 100"),
    (dict(size=1 << 63), "too large"),
])
def test_bad_export_info(served, tmp_path, kw, message):
    def scenario(c):
        conn = Conn(c, **kw)
        conn.handshake()
        hang(conn)
    expect_error(served(scenario), tmp_path, message)


def test_handshake_stall(served, tmp_path):
    def scenario(c):
        c.sendall(struct.pack(">Q", NBDMAGIC))
        hang(Conn(c))
    expect_error(served(scenario, ',"open-timeout":2'), tmp_path, "Timed out")


def bad_read(action, message, extra=""):
    return action, message, extra


# The tools print only strerror() for read errors (as qemu-img does): a
# protocol violation shows as EPROTO, a closed connection as ECONNRESET.
READ_ATTACKS = [
    bad_read(lambda conn, ck, off, ln: conn.send(struct.pack(">IIQ", 0xdeadbeef, 0, ck)),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck + 1000, T_DATA, struct.pack(">Q", off)),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_DATA, struct.pack(">Q", off + ln) + b"x"),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_DATA, struct.pack(">Q", off),
                                                  length=0xffffffff),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_HOLE, struct.pack(">QI", off, 0xffffffff)),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_HOLE, struct.pack(">QI", off, 1),
                                                  length=100),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: (conn.chunk(ck, T_DATA, struct.pack(">Q", off),
                                                   length=8 + ln),
                                        conn.send(b"x" * 100), conn.c.shutdown(socket.SHUT_WR)),
             "Connection reset by peer"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_DATA, struct.pack(">Q", off) + b"x" * 10),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.simple(ck, 0, pattern(off, ln)),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_ERROR, struct.pack(">IH", 5, 5000)),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_ERROR, struct.pack(">IH", 0, 0)),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_ERROR, struct.pack(">IH", 5, 3) + b"bad"),
             "Input/output error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, 77, b"", length=0xffffffff),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.chunk(ck, T_BS, struct.pack(">III", 1, 512, 0)),
             "Protocol error"),
    bad_read(lambda conn, ck, off, ln: conn.send(struct.pack(">IHHQI", STRUCT, DONE, T_DATA, ck,
                                                             ln + 8)[:10]),
             "Connection timed out", ',"x-io-timeout":2'),
]


@pytest.mark.parametrize("action,message,extra", READ_ATTACKS)
def test_hostile_read(served, tmp_path, action, message, extra):
    def scenario(c):
        conn = Conn(c)
        conn.handshake()
        conn.serve(on_read=lambda *a: (action(*a), hang(a[0])))
    expect_error(served(scenario, extra), tmp_path, message)


@pytest.mark.parametrize("action,message", [
    (lambda conn, ck, off, ln: conn.chunk(ck, T_BS, struct.pack(">III", 1, 0, 0)),
     "Protocol error"),
    (lambda conn, ck, off, ln: conn.chunk(ck, T_BS, struct.pack(">III", 9, ln, 0)),
     "Protocol error"),
    (lambda conn, ck, off, ln: conn.chunk(ck, T_BS, struct.pack(">IIII", 1, ln, 0, 1)),
     "Protocol error"),
    (lambda conn, ck, off, ln: conn.chunk(ck, T_BS, struct.pack(">I", 1), length=0x7ffffff0),
     "Protocol error"),
    (lambda conn, ck, off, ln: conn.chunk(ck, T_NONE, b""),
     "Protocol error"),
])
def test_hostile_block_status(served, tmp_path, action, message):
    def scenario(c):
        conn = Conn(c)
        conn.handshake()
        conn.serve(on_bs=lambda *a: (action(*a), hang(a[0])))
    p = vimg("map", served(scenario), timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert message in p.stderr, p.stderr


def test_server_error_on_read(served, tmp_path):
    def scenario(c):
        conn = Conn(c, structured=False, meta=False)
        conn.handshake()
        conn.serve(on_read=lambda conn, ck, off, ln: conn.simple(ck, 5))
    expect_error(served(scenario), tmp_path, "Input/output error")


def test_read_after_server_disappears(served, tmp_path):
    def scenario(c):
        conn = Conn(c)
        conn.handshake()
        conn.request()
        c.shutdown(socket.SHUT_RDWR)
    expect_error(served(scenario), tmp_path, "Connection reset by peer")
