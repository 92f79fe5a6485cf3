# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-nbd against hostile clients: malformed handshakes over raw sockets,
out-of-range, oversized, unknown and badly flagged requests through libnbd
with strict mode off, and TLS policy.  Each case is answered as the NBD
spec says and the server keeps serving another client."""
import os
import shutil
import socket
import ssl
import struct
import subprocess

import pytest

from nbd_helpers import (VDISK_NBD, Server, closed, greet, read_rep, recv_exact,
                         run, send_opt)

pytestmark = pytest.mark.skipif(not os.path.exists(VDISK_NBD), reason="vdisk-nbd not built")

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED = 8, 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_TLS_REQD, ERR_UNKNOWN, ERR_TOO_BIG = \
    ERR | 1, ERR | 2, ERR | 3, ERR | 5, ERR | 6, ERR | 9


@pytest.fixture
def server(tmp_path):
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
        f.write(b"\1" * 4096)
    s = Server(VDISK_NBD, ["-f", "raw", "-t", "-e", "4", img], sock=str(tmp_path / "s"))
    yield s
    assert s.stop() == 0


def still_serves(server):
    import nbd
    h = nbd.NBD()
    h.connect_uri(server.uri())
    assert h.pread(4, 0) == b"\1" * 4
    h.shutdown()


def opened(server):
    s = server.connect()
    greet(s)
    return s


def go_payload(name=b"", infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + \
        b"".join(struct.pack(">H", i) for i in infos)


@pytest.mark.parametrize("case", [
    "name_len_ffffffff", "name_len_past_payload", "info_count_mismatch",
    "unknown_export", "meta_before_structured", "unknown_option",
    "list_with_payload", "structured_twice", "extended_with_payload", "starttls_without_tls",
    "meta_query_overflow",
])
def test_bad_options_are_answered(server, case):
    s = opened(server)
    if case == "name_len_ffffffff":
        send_opt(s, OPT_GO, struct.pack(">I", 0xffffffff) + b"\0\0")
        expect = ERR_INVALID
    elif case == "name_len_past_payload":
        send_opt(s, OPT_INFO, struct.pack(">I", 100) + b"ab\0\0")
        expect = ERR_INVALID
    elif case == "info_count_mismatch":
        send_opt(s, OPT_GO, struct.pack(">IH", 0, 5) + b"\0\1")
        expect = ERR_INVALID
    elif case == "unknown_export":
        send_opt(s, OPT_GO, go_payload(b"nosuch"))
        expect = ERR_UNKNOWN
    elif case == "meta_before_structured":
        send_opt(s, OPT_SET_META, struct.pack(">II", 0, 0))
        expect = ERR_INVALID
    elif case == "unknown_option":
        send_opt(s, 0x1234, b"xyz")
        expect = ERR_UNSUP
    elif case == "list_with_payload":
        send_opt(s, OPT_LIST, b"x")
        expect = ERR_INVALID
    elif case == "structured_twice":
        send_opt(s, OPT_STRUCTURED)
        assert read_rep(s)[1] == REP_ACK
        send_opt(s, OPT_STRUCTURED)
        expect = ERR_INVALID
    elif case == "extended_with_payload":
        send_opt(s, OPT_EXTENDED, b"x")
        expect = ERR_INVALID
    elif case == "starttls_without_tls":
        send_opt(s, OPT_STARTTLS)
        expect = ERR_POLICY
    elif case == "meta_query_overflow":
        send_opt(s, OPT_STRUCTURED)
        read_rep(s)
        send_opt(s, OPT_LIST_META, struct.pack(">III", 0, 1, 0xfffffff0) + b"base:")
        expect = ERR_INVALID
    assert read_rep(s)[1] == expect
    # The same connection still negotiates.
    send_opt(s, OPT_LIST)
    assert read_rep(s)[1] == REP_SERVER and read_rep(s)[1] == REP_ACK
    send_opt(s, OPT_ABORT)
    assert read_rep(s)[1] == REP_ACK
    s.close()
    still_serves(server)


@pytest.mark.parametrize("case", ["export_name_too_long", "huge_option", "bad_magic",
                                  "bad_client_flags", "export_name_unknown",
                                  "vanish_mid_option"])
def test_fatal_handshakes_drop_only_that_client(server, case):
    s = server.connect()
    if case == "bad_client_flags":
        recv_exact(s, 18)
        s.sendall(struct.pack(">I", 0x80))
    else:
        greet(s)
    if case == "export_name_too_long":
        send_opt(s, OPT_EXPORT_NAME, b"a" * 5000)
    elif case == "huge_option":
        send_opt(s, 0x99, b"", length=0xffffffff)
    elif case == "bad_magic":
        s.sendall(b"X" * 16)
    elif case == "export_name_unknown":
        send_opt(s, OPT_EXPORT_NAME, b"nosuch")
    elif case == "vanish_mid_option":
        send_opt(s, OPT_GO, b"\0\0", length=100)
        s.close()
        still_serves(server)
        return
    assert closed(s)
    s.close()
    still_serves(server)


def test_too_big_option_is_skipped(server):
    s = opened(server)
    send_opt(s, OPT_GO, b"\0" * (2 << 20))
    assert read_rep(s)[1] == ERR_TOO_BIG
    send_opt(s, OPT_ABORT)
    assert read_rep(s)[1] == REP_ACK
    s.close()


def transmission(server, structured=False):
    """A raw connection in transmission via EXPORT_NAME."""
    s = opened(server)
    if structured:
        send_opt(s, OPT_STRUCTURED)
        assert read_rep(s)[1] == REP_ACK
    send_opt(s, OPT_EXPORT_NAME, b"")
    size, flags = struct.unpack(">QH", recv_exact(s, 10))
    assert size == 1 << 20
    return s


def request(s, typ, off, length, flags=0, cookie=7, payload=b""):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, typ, cookie, off, length) + payload)


def simple_reply(s):
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    assert magic == 0x67446698
    return err, cookie


@pytest.mark.parametrize("typ,off,length,flags,err", [
    (99, 0, 0, 0, 22),                 # unknown command
    (0, 1 << 20, 512, 0, 22),          # read past the end
    (0, 2 ** 64 - 512, 1024, 0, 22),   # offset + length overflows
    (0, 0, 33 << 20, 0, 22),           # read over the maximum payload
    (0, 0, 512, 1 << 3, 22),           # REQ_ONE on a read
    (0, 0, 512, 1 << 2, 22),           # DF without structured replies
    (4, 1 << 20, 512, 0, 22),          # trim past the end
    (6, 1 << 20, 512, 0, 28),          # write zeroes past the end: ENOSPC
    (7, 0, 512, 0, 22),                # block status without contexts
    (3, 0, 0, 1 << 1, 22),             # NO_HOLE on a flush
])
def test_bad_requests_simple(server, typ, off, length, flags, err):
    s = transmission(server)
    request(s, typ, off, length, flags)
    assert simple_reply(s) == (err, 7)
    request(s, 0, 0, 4, cookie=8)           # the connection goes on
    assert simple_reply(s) == (0, 8) and recv_exact(s, 4) == b"\1" * 4
    request(s, 2, 0, 0)
    assert closed(s)


def test_oversized_write_payload_is_skipped(server):
    s = transmission(server)
    n = (32 << 20) + 512
    request(s, 1, 0, n)
    s.sendall(b"\0" * n)
    assert simple_reply(s) == (22, 7)
    request(s, 1, 1 << 20, 512, cookie=9, payload=b"x" * 512)   # past the end
    assert simple_reply(s) == (28, 9)
    request(s, 0, 0, 4, cookie=8)
    assert simple_reply(s) == (0, 8) and recv_exact(s, 4) == b"\1" * 4
    s.close()


def test_structured_errors_and_holes(server):
    s = transmission(server, structured=True)
    request(s, 0, 1 << 20, 512)
    magic, flags, typ, cookie, length = struct.unpack(">IHHQI", recv_exact(s, 20))
    assert magic == 0x668e33ef and flags & 1 and typ == 0x8001
    assert struct.unpack(">I", recv_exact(s, length)[:4])[0] == 22
    request(s, 0, 0, 64 << 10, cookie=3)
    chunks = []
    while True:
        magic, flags, typ, cookie, length = struct.unpack(">IHHQI", recv_exact(s, 20))
        body = recv_exact(s, length)
        chunks.append((typ, struct.unpack(">Q", body[:8])[0], length))
        if flags & 1:
            break
    assert chunks == [(1, 0, 8 + 4096), (2, 4096, 12)]
    s.close()


def test_vanishing_and_flooding_clients(server):
    for _ in range(3):   # requests in flight, then gone
        s = transmission(server)
        for i in range(64):
            request(s, 0, 0, 65536, cookie=i)
        s.close()
    s = transmission(server)  # a write whose payload never comes
    request(s, 1, 0, 65536, payload=b"x" * 100)
    s.close()
    still_serves(server)


def test_libnbd_strict_mode_off(server):
    import nbd
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(server.uri())
    h.set_strict_mode(0)
    cases = [
        (lambda: h.pread(512, 1 << 20), "EINVAL"),
        (lambda: h.pwrite(b"x" * 512, (1 << 20) - 256), "ENOSPC"),
        (lambda: h.pread(33 << 20, 0), "EOVERFLOW"),
        (lambda: h.trim(512, 1 << 20), "EINVAL"),
        (lambda: h.block_status(512, 1 << 20, lambda *a: 0), "EINVAL"),
        (lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_REQ_ONE), "EINVAL"),
        (lambda: h.flush(flags=nbd.CMD_FLAG_NO_HOLE), "EINVAL"),
    ]
    for fn, err in cases:
        with pytest.raises(nbd.Error) as e:
            fn()
        assert e.value.errno == err
    assert h.pread(3, 4095) == b"\1\0\0"           # unaligned is fine
    h.pwrite(b"abc", 4097)
    assert h.pread(5, 4096) == b"\0abc\0"
    h.shutdown()


# ---- TLS ----

def make_x509(d):
    certtool = shutil.which("certtool")
    if not certtool:
        pytest.skip("certtool (gnutls-bin) is not installed")
    def tool(*args):
        p = subprocess.run([certtool] + list(args), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    os.makedirs(d, exist_ok=True)
    tool("--generate-privkey", "--outfile", d + "/ca-key.pem")
    open(d + "/ca.info", "w").write("cn = vdisk test CA\nca\ncert_signing_key\n")
    tool("--generate-self-signed", "--load-privkey", d + "/ca-key.pem",
         "--template", d + "/ca.info", "--outfile", d + "/ca-cert.pem")
    for who, extra in (("server", "tls_www_server\ndns_name = localhost\nip_address = 127.0.0.1\n"),
                       ("client", "tls_www_client\n")):
        tool("--generate-privkey", "--outfile", "%s/%s-key.pem" % (d, who))
        open(d + "/%s.info" % who, "w").write(
            "cn = %s\norganization = vdisk\nencryption_key\nsigning_key\n%s" % (who, extra))
        tool("--generate-certificate", "--load-privkey", "%s/%s-key.pem" % (d, who),
             "--load-ca-certificate", d + "/ca-cert.pem", "--load-ca-privkey",
             d + "/ca-key.pem", "--template", d + "/%s.info" % who,
             "--outfile", "%s/%s-cert.pem" % (d, who))


@pytest.fixture
def tls_server(tmp_path):
    d = str(tmp_path / "pki")
    make_x509(d)
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    s = Server(VDISK_NBD, ["--object", "tls-creds-x509,id=t0,endpoint=server,dir=" + d,
                           "--tls-creds", "t0", "-f", "raw", "-t", "-e", "4", img],
               sock=str(tmp_path / "s"))
    s.pki = d
    yield s
    assert s.stop() == 0


def test_tls_required_before_starttls(tls_server):
    s = opened(tls_server)
    for opt in (OPT_LIST, OPT_GO, OPT_STRUCTURED, 0x77):
        send_opt(s, opt, go_payload() if opt == OPT_GO else b"")
        assert read_rep(s)[1] == ERR_TLS_REQD
    send_opt(s, OPT_EXPORT_NAME, b"")
    assert closed(s)


def test_tls_second_starttls_and_reset(tls_server):
    s = opened(tls_server)
    send_opt(s, OPT_STARTTLS)
    assert read_rep(s)[1] == REP_ACK
    ctx = ssl.create_default_context(cafile=tls_server.pki + "/ca-cert.pem")
    ctx.load_cert_chain(tls_server.pki + "/client-cert.pem", tls_server.pki + "/client-key.pem")
    t = ctx.wrap_socket(s, server_hostname="localhost")
    send_opt(t, OPT_STARTTLS)
    assert read_rep(t)[1] == ERR_INVALID
    send_opt(t, OPT_LIST)
    assert read_rep(t)[1] == REP_SERVER and read_rep(t)[1] == REP_ACK
    send_opt(t, OPT_ABORT)
    t.close()


def test_tls_clients(tls_server, tmp_path):
    d = tls_server.pki
    cdir = str(tmp_path / "cpki")
    os.makedirs(cdir)
    for f in ("ca-cert.pem", "client-cert.pem", "client-key.pem"):
        shutil.copy(os.path.join(d, f), cdir)
    obj = "tls-creds-x509,id=c0,endpoint=client,dir=" + cdir
    for prog in (VDISK_NBD, "qemu-nbd"):   # x509 needs a host name to check
        p = run([prog, "-L", "-k", tls_server.sock, "--object", obj, "--tls-creds", "c0"])
        assert p.returncode == 1 and "No hostname for certificate validation" in p.stderr
    host = ["--tls-hostname", "localhost"]
    p = run([VDISK_NBD, "-L", "-k", tls_server.sock, "--object", obj, "--tls-creds", "c0"] + host)
    q = run(["qemu-nbd", "-L", "-k", tls_server.sock, "--object", obj, "--tls-creds", "c0"] + host)
    assert p.returncode == 0 and q.returncode == 0 and p.stdout == q.stdout, p.stderr + q.stderr
    uri = "nbds+unix:///?socket=%s&tls-certificates=%s" % (tls_server.sock, cdir)
    p = run(["nbdinfo", "--size", uri])
    assert p.returncode == 0 and p.stdout.strip() == str(1 << 20), p.stderr
    # Without a client certificate the handshake fails, and others go on.
    nocert = str(tmp_path / "nocert")
    os.makedirs(nocert)
    shutil.copy(os.path.join(d, "ca-cert.pem"), nocert)
    p = run(["nbdinfo", "--size", "nbds+unix:///?socket=%s&tls-certificates=%s"
             % (tls_server.sock, nocert)])
    assert p.returncode != 0
    p = run(["nbdinfo", "--size", uri])
    assert p.returncode == 0


def test_tls_psk_and_authz(tmp_path):
    d = str(tmp_path / "psk")
    os.makedirs(d)
    open(d + "/keys.psk", "w").write("alice:%s\nbob:%s\n" % (os.urandom(32).hex(),
                                                            os.urandom(32).hex()))
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    s = Server(VDISK_NBD, ["--object", "tls-creds-psk,id=t0,endpoint=server,dir=" + d,
                           "--object", "authz-simple,id=a0,identity=alice",
                           "--tls-creds", "t0", "--tls-authz", "a0",
                           "-f", "raw", "-t", "-e", "4", img], sock=str(tmp_path / "s"))
    try:
        for user, ok in (("alice", True), ("bob", False)):
            p = run(["nbdinfo", "--size", "nbds+unix://%s@/?socket=%s&tls-psk-file=%s/keys.psk"
                     % (user, s.sock, d)])
            assert (p.returncode == 0) == ok, p.stderr
            obj = "tls-creds-psk,id=c0,endpoint=client,dir=%s,username=%s" % (d, user)
            p = run([VDISK_NBD, "-L", "-k", s.sock, "--object", obj, "--tls-creds", "c0"])
            assert (p.returncode == 0) == ok, p.stderr
    finally:
        assert s.stop() == 0
