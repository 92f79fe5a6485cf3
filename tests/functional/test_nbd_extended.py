# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-nbd with NBD_OPT_EXTENDED_HEADERS: negotiation and its ordering
rules, 32-byte requests with 64-bit lengths and NBD_CMD_FLAG_PAYLOAD_LEN,
32-byte replies for every command (never a simple reply), block status as
NBD_REPLY_TYPE_BLOCK_STATUS_EXT and its payload form, and malformed
extended requests, each answered as the spec says while the server keeps
serving other clients.  vdisk-img (which asks for extended headers) works
through a recording proxy that shows the extended traffic; libnbd's tools,
which may predate extended headers, still work in compact mode."""
import json
import os
import shutil
import socket
import struct
import threading

import pytest

from conftest import vimg
from nbd_helpers import (VDISK_NBD, Server, closed, greet, read_rep, recv_exact, run,
                         send_opt)

pytestmark = pytest.mark.skipif(not os.path.exists(VDISK_NBD), reason="vdisk-nbd not built")
needs = lambda prog: pytest.mark.skipif(shutil.which(prog) is None,
                                        reason="%s is not installed" % prog)

OPT_EXPORT_NAME, OPT_ABORT, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 5, 6, 7
OPT_STRUCTURED, OPT_SET_META, OPT_EXTENDED = 8, 10, 11
REP_ACK, REP_INFO, REP_META = 1, 3, 4
ERR = 1 << 31
ERR_INVALID, ERR_EXT_HEADER_REQD = ERR | 3, ERR | 10
INFO_EXPORT = 0

REQ_MAGIC, EXT_REQ_MAGIC = 0x25609513, 0x21e41c71
SIMPLE_MAGIC, STRUCT_MAGIC, EXT_MAGIC = 0x67446698, 0x668e33ef, 0x6e8a278c
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZERO, CMD_BS = range(8)
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO, F_PAYLOAD_LEN = (1 << i for i in range(6))
FLAG_SEND_DF, FLAG_BLOCK_STAT_PAYLOAD = 1 << 7, 1 << 12
DONE = 1
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT = 0, 1, 2, 5, 6
T_ERROR = (1 << 15) | 1
EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW = 1, 5, 22, 28, 75
STATE_HOLE, STATE_ZERO = 1, 2

SIZE = 64 << 20
BIG = 8 << 30                      # export for lengths beyond 32 bits


def pattern(off, n):
    """The bytes of the data region of the test image at off."""
    return bytes((off + i) * 7 % 251 for i in range(n))


@pytest.fixture
def img(tmp_path):
    """64 MiB raw: 1 MiB of pattern at 0, 64 KiB of 0x02 at 8 MiB, holes."""
    p = tmp_path / "d.img"
    with open(p, "wb") as f:
        f.truncate(SIZE)
        f.write(pattern(0, 1 << 20))
        f.seek(8 << 20)
        f.write(b"\2" * (64 << 10))
    return p


@pytest.fixture
def serve(tmp_path):
    """serve(*args): vdisk-nbd on a Unix socket, stopped (cleanly) at exit."""
    servers = []

    def start(*args):
        s = Server(VDISK_NBD, list(args), sock=str(tmp_path / ("s%d" % len(servers))))
        servers.append(s)
        return s
    yield start
    for s in servers:
        assert s.stop() == 0, s.stderr


# ---- a raw extended-headers client ----

class Client:
    """One connection speaking extended headers (or compact ones)."""

    def __init__(self, server, extended=True, structured=False, meta=("base:allocation",),
                 name=b""):
        self.s = server.connect()
        self.s.settimeout(20)
        greet(self.s)
        self.extended = extended
        if structured:
            assert self.opt(OPT_STRUCTURED)[0][1] == REP_ACK
        if extended:
            assert self.opt(OPT_EXTENDED)[0][1] == REP_ACK
        self.ctx = {}
        if meta:
            q = b"".join(struct.pack(">I", len(m)) + m.encode() for m in meta)
            reps = self.opt(OPT_SET_META, struct.pack(">I", len(name)) + name +
                            struct.pack(">I", len(meta)) + q)
            for _, typ, data in reps[:-1]:
                assert typ == REP_META
                self.ctx[data[4:].decode()] = struct.unpack(">I", data[:4])[0]
        reps = self.opt(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        assert reps[-1][1] == REP_ACK, reps
        info = [d for _, t, d in reps if t == REP_INFO and d[:2] == b"\0\0"][0]
        self.size, self.flags = struct.unpack(">QH", info[2:])

    def opt(self, opt, data=b""):
        """Send an option, return its replies up to the final one."""
        send_opt(self.s, opt, data)
        reps = []
        while True:
            reps.append(read_rep(self.s))
            if reps[-1][1] not in (REP_INFO, REP_META):
                return reps

    def send(self, typ, off=0, length=0, flags=0, cookie=1, payload=b"", magic=None):
        if self.extended:
            h = struct.pack(">IHHQQQ", magic or EXT_REQ_MAGIC, flags, typ, cookie, off, length)
        else:
            h = struct.pack(">IHHQQI", magic or REQ_MAGIC, flags, typ, cookie, off, length)
        self.s.sendall(h + payload)

    def chunk(self):
        """One extended reply chunk: (flags, type, cookie, offset, payload)."""
        magic, fl, typ, cookie, off, ln = struct.unpack(">IHHQQQ", recv_exact(self.s, 32))
        assert magic == EXT_MAGIC, hex(magic)
        return fl, typ, cookie, off, recv_exact(self.s, ln)

    def reply(self):
        """Every chunk of one reply, up to the one flagged DONE."""
        chunks = []
        while not chunks or not chunks[-1][0] & DONE:
            chunks.append(self.chunk())
        return chunks

    def call(self, typ, off=0, length=0, flags=0, cookie=1, payload=b""):
        self.send(typ, off, length, flags, cookie, payload)
        chunks = self.reply()
        for c in chunks:
            assert c[2] == cookie and c[3] == off
        return chunks

    def read(self, off, length, flags=0):
        data = bytearray(length)
        chunks = self.call(CMD_READ, off, length, flags)
        for _, typ, _, _, p in chunks:
            if typ == T_DATA:
                o = struct.unpack(">Q", p[:8])[0] - off
                data[o:o + len(p) - 8] = p[8:]
            elif typ == T_HOLE:
                assert struct.unpack(">QI", p)[1] > 0
            else:
                raise AssertionError("read answered with chunk type %d: %r" % (typ, p))
        return bytes(data)

    def close(self):
        self.send(CMD_DISC)
        assert closed(self.s)
        self.s.close()


def error_of(chunks):
    """The errno of a reply that ends with an error chunk, 0 for success."""
    fl, typ, _, _, p = chunks[-1]
    if typ == T_ERROR:
        err, ml = struct.unpack(">IH", p[:6])
        assert len(p) == 6 + ml
        return err
    assert typ == T_NONE and p == b"" or typ in (T_DATA, T_HOLE, T_BS_EXT)
    return 0


def extents(chunk):
    """(context id, [(length, flags)]) of a BLOCK_STATUS_EXT chunk."""
    fl, typ, _, _, p = chunk
    assert typ == T_BS_EXT
    ctx, n = struct.unpack(">II", p[:8])
    assert n > 0 and len(p) == 8 + 16 * n
    return ctx, [struct.unpack(">QQ", p[8 + 16 * i:24 + 16 * i]) for i in range(n)]


def still_serves(server):
    c = Client(server)
    assert c.read(0, 4096) == pattern(0, 4096)
    c.close()


# ---- negotiation ----

def test_negotiation_order(serve, img):
    server = serve("-f", "raw", "-t", "-e", "4", img)
    # Extended headers after structured replies: both acknowledged.
    c = Client(server, structured=True)
    assert c.flags & FLAG_SEND_DF and c.flags & FLAG_BLOCK_STAT_PAYLOAD
    c.close()
    s = server.connect()
    greet(s)
    send_opt(s, OPT_EXTENDED, b"x")                 # a payload is invalid
    assert read_rep(s)[1] == ERR_INVALID
    send_opt(s, OPT_EXTENDED)
    assert read_rep(s)[1] == REP_ACK
    send_opt(s, OPT_EXTENDED)                       # once is enough
    assert read_rep(s)[1] == ERR_INVALID
    send_opt(s, OPT_STRUCTURED)                     # no going back to 20-byte chunks
    assert read_rep(s)[1] == ERR_EXT_HEADER_REQD
    send_opt(s, OPT_ABORT)
    assert read_rep(s)[1] == REP_ACK
    s.close()


def read_infos(s):
    reps = []
    while not reps or reps[-1][1] == REP_INFO:
        reps.append(read_rep(s))
    return reps


def export_flags(reps):
    return [struct.unpack(">QH", d[2:])[1] for _, t, d in reps
            if t == REP_INFO and d[:2] == b"\0\0"][0]


def test_flags_follow_negotiation(serve, img):
    server = serve("-f", "raw", "-t", "-e", "4", img)
    s = server.connect()
    greet(s)
    send_opt(s, OPT_INFO, struct.pack(">IH", 0, 0))
    f = export_flags(read_infos(s))
    assert not f & (FLAG_SEND_DF | FLAG_BLOCK_STAT_PAYLOAD)
    send_opt(s, OPT_EXTENDED)
    assert read_rep(s)[1] == REP_ACK
    send_opt(s, OPT_INFO, struct.pack(">IH", 0, 0))
    f = export_flags(read_infos(s))
    assert f & FLAG_SEND_DF and not f & FLAG_BLOCK_STAT_PAYLOAD
    m = b"base:allocation"
    send_opt(s, OPT_SET_META, struct.pack(">II", 0, 1) + struct.pack(">I", len(m)) + m)
    assert read_rep(s)[1] == REP_META and read_rep(s)[1] == REP_ACK
    send_opt(s, OPT_INFO, struct.pack(">IH", 0, 0))
    assert export_flags(read_infos(s)) & FLAG_BLOCK_STAT_PAYLOAD
    send_opt(s, OPT_ABORT)
    assert read_rep(s)[1] == REP_ACK
    s.close()


def test_export_name_after_extended_is_refused(serve, img):
    """The spec forbids NBD_OPT_EXPORT_NAME after extended headers; it can
    only be refused by hanging up."""
    server = serve("-f", "raw", "-t", "-e", "4", img)
    s = server.connect()
    greet(s)
    send_opt(s, OPT_EXTENDED)
    assert read_rep(s)[1] == REP_ACK
    send_opt(s, OPT_EXPORT_NAME, b"")
    assert closed(s)
    s.close()
    still_serves(server)


def test_compact_after_starttls_refusal(serve, img):
    """Extended headers survive a refused STARTTLS (no TLS configured)."""
    server = serve("-f", "raw", "-t", "-e", "4", img)
    s = server.connect()
    greet(s)
    send_opt(s, OPT_EXTENDED)
    assert read_rep(s)[1] == REP_ACK
    send_opt(s, OPT_STARTTLS)
    assert read_rep(s)[1] & ERR
    send_opt(s, OPT_STRUCTURED)
    assert read_rep(s)[1] == ERR_EXT_HEADER_REQD
    s.close()


# ---- transmission ----

def test_every_reply_is_extended(serve, img, tmp_path):
    server = serve("-f", "raw", "-t", "-e", "4", img)
    c = Client(server)
    assert c.size == SIZE
    assert c.read(0, 4096) == pattern(0, 4096)
    assert c.read(4096, 1) == pattern(4096, 1)
    # A sparse read: data and hole chunks, each with the request's offset.
    got = c.read((8 << 20) - 65536, 256 << 10)
    assert got == b"\0" * 65536 + b"\2" * 65536 + b"\0" * (128 << 10)
    # DF: one data chunk.
    chunks = c.call(CMD_READ, (8 << 20) - 65536, 256 << 10, F_DF)
    assert len(chunks) == 1 and chunks[0][1] == T_DATA
    # A read of nothing: a NONE chunk, never a simple reply.
    assert c.call(CMD_READ, 0, 0) == [(DONE, T_NONE, 1, 0, b"")]
    # Writes carry NBD_CMD_FLAG_PAYLOAD_LEN.
    data = os.urandom(12345)
    assert c.call(CMD_WRITE, 100000, len(data), F_PAYLOAD_LEN, payload=data) == \
        [(DONE, T_NONE, 1, 100000, b"")]
    assert c.read(100000, len(data)) == data
    assert c.call(CMD_WRITE, 200000, 4096, F_PAYLOAD_LEN | F_FUA,
                  payload=b"\3" * 4096)[-1][:2] == (DONE, T_NONE)
    for typ, off, ln, fl in [(CMD_FLUSH, 0, 0, 0), (CMD_TRIM, 1 << 20, 1 << 20, 0),
                             (CMD_ZERO, 0, 4096, F_NO_HOLE), (CMD_ZERO, 4096, 4096, F_FUA),
                             (CMD_CACHE, 0, 1 << 20, 0)]:
        assert c.call(typ, off, ln, fl, cookie=typ + 100) == [(DONE, T_NONE, typ + 100, off, b"")]
    assert c.read(0, 8192) == b"\0" * 8192
    c.close()
    with open(img, "rb") as f:
        f.seek(100000)
        assert f.read(len(data)) == data


def test_pipelined_requests_keep_their_cookies(serve, img):
    server = serve("-f", "raw", "-t", "-e", "4", img)
    c = Client(server)
    want = {}
    for i in range(64):
        off = (i * 37 % 256) * 4096
        c.send(CMD_READ, off, 4096, cookie=1000 + i)
        want[1000 + i] = off
    c.send(CMD_FLUSH, cookie=5)
    seen = {}
    while len(seen) < 65:
        fl, typ, cookie, off, p = c.chunk()
        if cookie == 5:
            assert (fl, typ, off) == (DONE, T_NONE, 0)
        else:
            assert off == want[cookie] and typ == T_DATA
            assert p[8:] == pattern(off, 4096) if off < (1 << 20) else p[8:] == bytes(4096)
        seen[cookie] = True
    c.close()


def test_block_status_ext(serve, img):
    server = serve("-f", "raw", "-t", "-e", "4", "-A", img)
    c = Client(server, meta=("base:allocation", "qemu:allocation-depth"))
    assert set(c.ctx) == {"base:allocation", "qemu:allocation-depth"}
    chunks = c.call(CMD_BS, 0, SIZE)
    assert [error_of(chunks)] == [0] and len(chunks) == 2
    got = dict(extents(ch) for ch in chunks)
    base = got[c.ctx["base:allocation"]]
    assert sum(l for l, _ in base) == SIZE
    pos = 0
    for l, st in base:
        assert st >> 32 == 0
        if pos < (1 << 20) or (8 << 20) <= pos < (8 << 20) + 65536:
            assert st & STATE_HOLE == 0
        pos += l
    # REQ_ONE: one extent, within the request.
    chunks = c.call(CMD_BS, 4096, 8192, F_REQ_ONE)
    for ch in chunks:
        assert extents(ch)[1] == [(8192, 0)] or extents(ch)[1][0][0] <= 8192
    # The payload form: only the contexts named, with the effect length
    # from the payload.
    bid = c.ctx["base:allocation"]
    pl = struct.pack(">QI", 65536, bid)
    chunks = c.call(CMD_BS, 0, len(pl), F_PAYLOAD_LEN, payload=pl)
    assert len(chunks) == 1 and extents(chunks[0]) == (bid, [(65536, 0)])
    for bad in [struct.pack(">QII", 65536, bid, bid),      # duplicate id
                struct.pack(">QI", 65536, 77),             # unknown id
                struct.pack(">Q", 65536),                  # no id
                struct.pack(">QIII", 65536, 0, 1, 2),      # too many
                struct.pack(">QH", 65536, 0)]:             # not whole ids
        chunks = c.call(CMD_BS, 0, len(bad), F_PAYLOAD_LEN, payload=bad, cookie=9)
        assert error_of(chunks) == EINVAL
    assert c.read(0, 16) == pattern(0, 16)           # still in step
    c.close()


def test_lengths_beyond_32_bits(serve, tmp_path):
    """64-bit effect lengths: one WRITE_ZEROES, TRIM, CACHE and BLOCK_STATUS
    over more than 4 GiB, and extents longer than 4 GiB."""
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(BIG)
        f.write(b"\5" * 4096)
    server = serve("-f", "raw", "-t", "-e", "4", big)
    c = Client(server)
    assert c.size == BIG
    chunks = c.call(CMD_BS, 0, BIG)
    ctx, ext = extents(chunks[0])
    assert ext[0] == (4096, 0) and sum(l for l, _ in ext) == BIG
    assert max(l for l, _ in ext) > 1 << 32
    n = (5 << 30) + 4096
    assert error_of(c.call(CMD_ZERO, 4096, n, cookie=2)) == 0
    assert error_of(c.call(CMD_TRIM, 4096, n, cookie=3)) == 0
    assert error_of(c.call(CMD_CACHE, BIG - (1 << 20), 1 << 20, cookie=4)) == 0
    assert error_of(c.call(CMD_BS, BIG - 4096, 1 << 40, cookie=5)) == EINVAL
    assert c.read(0, 4096) == b"\5" * 4096
    c.close()


# ---- malformed extended requests ----

@pytest.mark.parametrize("case", [
    "read_count_64bit", "read_beyond_end", "write_beyond_end", "offset_overflow",
    "unknown_flag", "payload_on_read", "payload_on_flush", "unknown_command",
    "bs_without_context", "write_readonly",
])
def test_bad_requests_are_answered(serve, img, case):
    ro = case == "write_readonly"
    server = serve("-f", "raw", "-t", "-e", "4", *(["-r"] if ro else []), img)
    c = Client(server, meta=() if case == "bs_without_context" else ("base:allocation",))
    if case == "read_count_64bit":
        chunks, want = c.call(CMD_READ, 0, 1 << 33), EOVERFLOW
    elif case == "read_beyond_end":
        chunks, want = c.call(CMD_READ, SIZE - 4096, 8192), EINVAL
    elif case == "write_beyond_end":
        chunks, want = c.call(CMD_WRITE, SIZE - 4, 8, F_PAYLOAD_LEN, payload=b"x" * 8), ENOSPC
    elif case == "offset_overflow":
        chunks, want = c.call(CMD_ZERO, (1 << 64) - 4096, 1 << 20), ENOSPC
    elif case == "unknown_flag":
        chunks, want = c.call(CMD_READ, 0, 4096, 1 << 9), EINVAL
    elif case == "payload_on_read":
        # The payload is consumed, then the request fails.
        chunks, want = c.call(CMD_READ, 0, 100, F_PAYLOAD_LEN, payload=b"p" * 100), EINVAL
    elif case == "payload_on_flush":
        chunks, want = c.call(CMD_FLUSH, 0, 70000, F_PAYLOAD_LEN, payload=b"p" * 70000), EINVAL
    elif case == "unknown_command":
        chunks, want = c.call(99, 0, 0), EINVAL
    elif case == "bs_without_context":
        chunks, want = c.call(CMD_BS, 0, 4096), EINVAL
    elif case == "write_readonly":
        chunks, want = c.call(CMD_WRITE, 0, 4, F_PAYLOAD_LEN, payload=b"abcd"), EPERM
    assert len(chunks) == 1 and error_of(chunks) == want
    # The same connection goes on.
    assert c.read(0, 4096) == pattern(0, 4096)
    c.close()
    still_serves(server)


def test_write_without_payload_flag(serve, img):
    """A WRITE without NBD_CMD_FLAG_PAYLOAD_LEN breaks the spec; vdisk-nbd
    reads its data as the compact form would, so the stream stays in step."""
    server = serve("-f", "raw", "-t", "-e", "4", img)
    c = Client(server)
    assert c.call(CMD_WRITE, 8192, 4, payload=b"wxyz") == [(DONE, T_NONE, 1, 8192, b"")]
    assert c.read(8192, 4) == b"wxyz"
    c.close()


@pytest.mark.parametrize("case", ["compact_magic", "bad_magic", "huge_payload",
                                  "huge_write", "extended_magic_in_compact"])
def test_fatal_requests_drop_only_that_client(serve, img, case):
    """Requests that leave the stream undecodable (a header of the other
    form, an unknown magic) or a payload over 32 MiB end the connection."""
    server = serve("-f", "raw", "-t", "-e", "4", img)
    other = Client(server)
    c = Client(server, extended=case != "extended_magic_in_compact", structured=True)
    if case == "compact_magic":
        c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, 1, 0, 4096))
    elif case == "bad_magic":
        c.send(CMD_READ, 0, 4096, magic=0x12345678)
    elif case == "huge_payload":
        c.send(CMD_BS, 0, (32 << 20) + 1, F_PAYLOAD_LEN)
    elif case == "huge_write":
        c.send(CMD_WRITE, 0, 1 << 40, F_PAYLOAD_LEN, payload=b"x" * 4096)
    elif case == "extended_magic_in_compact":
        c.s.sendall(struct.pack(">IHHQQQ", EXT_REQ_MAGIC, 0, CMD_READ, 1, 0, 4096))
    assert closed(c.s)
    c.s.close()
    assert other.read(0, 4096) == pattern(0, 4096)
    other.close()
    still_serves(server)


def test_max_payload_write_is_accepted(serve, img):
    server = serve("-f", "raw", "-t", "-e", "4", img)
    c = Client(server)
    data = os.urandom(32 << 20)
    assert error_of(c.call(CMD_WRITE, 0, len(data), F_PAYLOAD_LEN, payload=data)) == 0
    got = c.read(0, 32 << 20)
    assert got == data
    c.close()


# ---- vdisk-img through a recording proxy ----

class Proxy:
    """Forward connections on path to the server, recording both ways."""

    def __init__(self, path, server):
        self.server, self.conns, self.pumps = server, [], []
        self.ls = socket.socket(socket.AF_UNIX)
        self.ls.bind(path)
        self.ls.listen(16)
        self.path = path
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.ls.accept()
            except OSError:
                return
            b = self.server.connect()
            rec = [bytearray(), bytearray()]
            self.conns.append(rec)
            for args in ((a, b, rec[0]), (b, a, rec[1])):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                self.pumps.append(t)
                t.start()

    @staticmethod
    def _pump(src, dst, rec):
        try:
            while True:
                d = src.recv(1 << 20)
                if not d:
                    break
                rec += d
                dst.sendall(d)
        except OSError:
            pass
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def traffic(self):
        """The recorded connections, once every one has ended (a client
        that exited may have bytes still on their way through a pump)."""
        for t in list(self.pumps):
            t.join(60)
            assert not t.is_alive(), "a proxied connection did not end"
        return self.conns

    def close(self):
        self.ls.close()

    def uri(self):
        return "nbd+unix:///?socket=%s" % self.path


def client_traffic(c2s):
    """Options a client sent and (magic, flags, type) of its requests."""
    opts, reqs, pos = [], [], 4
    while True:
        magic, opt, ln = struct.unpack(">QII", c2s[pos:pos + 16])
        opts.append(opt)
        pos += 16 + ln
        if opt in (OPT_GO, OPT_EXPORT_NAME, OPT_ABORT):
            break
    while pos < len(c2s):
        magic, fl, typ = struct.unpack(">IHH", c2s[pos:pos + 8])
        ext = magic == EXT_REQ_MAGIC
        ln = struct.unpack(">Q" if ext else ">I", c2s[pos + 24:pos + (32 if ext else 28)])[0]
        pos += 32 if ext else 28
        reqs.append((magic, fl, typ))
        if typ == CMD_WRITE or fl & F_PAYLOAD_LEN:
            pos += ln
    return opts, reqs


def reply_magics(s2c):
    """Magics of the transmission replies a server sent (after GO's ACK)."""
    pos = 18
    while True:
        magic, opt, typ, ln = struct.unpack(">QIII", s2c[pos:pos + 20])
        pos += 20 + ln
        if opt == OPT_GO and typ == REP_ACK:
            break
    magics = set()
    while pos < len(s2c):
        magic = struct.unpack(">I", s2c[pos:pos + 4])[0]
        assert magic == EXT_MAGIC, hex(magic)
        magics.add(magic)
        pos += 32 + struct.unpack(">Q", s2c[pos + 24:pos + 32])[0]
    return magics


@pytest.fixture
def proxied(serve, tmp_path):
    proxies = []

    def start(*args):
        p = Proxy(str(tmp_path / ("p%d" % len(proxies))), serve(*args))
        proxies.append(p)
        return p
    yield start
    for p in proxies:
        p.close()


def test_vdisk_img_uses_extended_headers(proxied, img, tmp_path):
    p = proxied("-f", "raw", "-t", "-e", "8", img)
    info = vimg("info", "--output=json", p.uri())
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == SIZE
    m = vimg("map", "--output=json", p.uri())
    assert m.returncode == 0, m.stderr
    assert [(e["start"], e["length"], e["data"]) for e in json.loads(m.stdout)] == \
        [(e["start"], e["length"], e["data"])
         for e in json.loads(vimg("map", "--output=json", "-f", "raw", img).stdout)]
    out = tmp_path / "out.raw"
    r = vimg("convert", "-O", "raw", p.uri(), out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == img.read_bytes()
    r = vimg("compare", "-f", "raw", "-F", "raw", img, p.uri())
    assert r.returncode == 0, r.stdout + r.stderr
    # Write: a converted image of new data onto the export, then compare.
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(SIZE)
        f.seek(3 << 20)
        f.write(os.urandom(1 << 20))
    r = vimg("convert", "-n", "-f", "raw", "-O", "raw", src, p.uri())
    assert r.returncode == 0, r.stderr
    assert img.read_bytes() == src.read_bytes()
    r = vimg("compare", "-f", "raw", src, p.uri())
    assert r.returncode == 0, r.stdout + r.stderr
    conns = p.traffic()
    assert conns
    writes = 0
    for c2s, s2c in conns:
        opts, reqs = client_traffic(bytes(c2s))
        assert OPT_EXTENDED in opts and OPT_STRUCTURED not in opts
        assert reqs and all(m == EXT_REQ_MAGIC for m, _, _ in reqs)
        assert reqs[-1][2] == CMD_DISC
        assert reply_magics(bytes(s2c)) <= {EXT_MAGIC}
        writes += sum(1 for _, _, t in reqs if t == CMD_WRITE)
    assert writes


def test_vdisk_img_writes_flag_their_payload(proxied, img, tmp_path):
    p = proxied("-f", "raw", "-t", "-e", "8", img)
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(1 << 20))
    r = vimg("dd", "-f", "raw", "-O", "raw", "if=%s" % src, "of=%s" % p.uri(), "bs=64k")
    if r.returncode:
        r = vimg("convert", "-n", "-f", "raw", "-O", "raw", src, p.uri())
    assert r.returncode == 0, r.stderr
    flags = [fl for c2s, _ in p.traffic() for _, fl, t in client_traffic(bytes(c2s))[1]
             if t == CMD_WRITE]
    assert flags and all(fl & F_PAYLOAD_LEN for fl in flags)


# ---- libnbd's tools (compact headers when they predate extended ones) ----

@needs("nbdinfo")
def test_nbdinfo(serve, img):
    server = serve("-f", "raw", "-t", "-e", "4", img)
    r = run(["nbdinfo", "--json", server.uri()])
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["exports"][0]["export-size"] == SIZE
    r = run(["nbdinfo", "--map", server.uri()])
    assert r.returncode == 0, r.stderr
    lines = [l.split() for l in r.stdout.splitlines()]
    assert lines[0][:2] == ["0", str(1 << 20)] and lines[0][2] == "0"


@needs("nbdsh")
def test_nbdsh(serve, img):
    server = serve("-f", "raw", "-t", "-e", "4", img)
    script = """
import os
ext = getattr(h, "set_request_extended_headers", None)
if ext:
    ext(True)
h.add_meta_context("base:allocation")
h.connect_uri(%r)
mode = getattr(h, "get_extended_headers_negotiated", lambda: False)()
assert h.pread(4096, 0) == bytes((i * 7) %% 251 for i in range(4096))
d = os.urandom(65536)
h.pwrite(d, 1 << 20)
assert h.pread(65536, 1 << 20) == d
h.zero(65536, 1 << 20)
assert h.pread(65536, 1 << 20) == bytes(65536)
seen = []
h.block_status(1 << 21, 0, lambda ctx, off, ents, err: seen.append((ctx, list(ents))))
assert seen and seen[0][0] == "base:allocation"
h.flush()
h.shutdown()
print("extended" if mode else "compact")
""" % server.uri()
    r = run(["nbdsh", "-c", script])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("extended", "compact")
