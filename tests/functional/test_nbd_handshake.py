# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-nbd and qemu-nbd 7.2 side by side on clients that never finish the
handshake: both drop a client that stalls for 10 seconds (qemu-nbd 7.2 has
no option to change that limit, so one test waits it out, for both servers
at once), both print the same message for each way a negotiation fails,
and without -t neither exits because such a client left."""
import os
import shutil
import struct
import time

import pytest

from nbd_helpers import VDISK_NBD, Server, recv_exact, run

QEMU_NBD = shutil.which("qemu-nbd")
pytestmark = [
    pytest.mark.skipif(not os.path.exists(VDISK_NBD), reason="vdisk-nbd not built"),
    pytest.mark.skipif(QEMU_NBD is None, reason="qemu-nbd is not installed"),
]


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "d.img"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p


@pytest.fixture
def pair(tmp_path, img):
    """Both servers, without -t, on Unix sockets; stopped at exit."""
    servers = [Server(prog, ["-f", "raw", img], sock=str(tmp_path / name), probe=False)
               for prog, name in ((VDISK_NBD, "v"), (QEMU_NBD, "q"))]
    yield servers
    for s in servers:
        s.stop()


def message(server):
    """What the server printed, with its name taken out."""
    return server.stderr.replace("qemu-nbd:", "vdisk-nbd:").strip()


def wait_eof(s, limit):
    """Seconds until the peer closes s (None if it does not within limit)."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except OSError:
        return None
    return time.monotonic() - t0


@pytest.mark.once      # 10 s waited out: once per make check (conftest.py)
def test_stalled_handshake_dropped_after_10s(pair):
    socks = [s.connect() for s in pair]
    for s in socks:
        recv_exact(s, 18)                  # the greeting, then nothing
    t0 = time.monotonic()
    waited = [wait_eof(s, 15) for s in socks]
    assert all(w is not None for w in waited), waited
    total = time.monotonic() - t0
    assert total >= 9, waited              # (each closed within wait_eof's limit)
    time.sleep(0.3)
    for s in socks:
        s.close()
    assert all(srv.proc.poll() is None for srv in pair)   # still serving
    for srv in pair:
        srv.stop()
    assert message(pair[0]) == message(pair[1])
    assert "Failed to read flags: Unexpected end-of-file" in message(pair[0])


FLAGS = struct.pack(">I", 3)
MAGIC = struct.pack(">Q", 0x49484156454f5054)


@pytest.mark.parametrize("sent", [
    b"",                                   # gone before the flags
    struct.pack(">I", 0x80),               # unknown client flags
    FLAGS,                                 # gone before the first option
    FLAGS + MAGIC,                         # gone inside the option header
    FLAGS + MAGIC + struct.pack(">I", 1),
    FLAGS + b"X" * 16,                     # bad option magic
], ids=["no-flags", "bad-flags", "no-option", "no-opt-number", "no-opt-length",
        "bad-magic"])
def test_failed_negotiation_same_message_and_server_stays(pair, sent):
    for srv in pair:
        s = srv.connect()
        recv_exact(s, 18)
        s.sendall(sent)
        time.sleep(0.2)
        s.close()
    time.sleep(0.3)
    assert all(srv.proc.poll() is None for srv in pair)
    for srv in pair:
        srv.stop()
    assert message(pair[0]) == message(pair[1])
    assert message(pair[0]).startswith("vdisk-nbd: option negotiation failed: ")


def test_list_does_not_end_server_but_a_client_does(pair):
    for srv in pair:
        assert run(["nbdinfo", "--list", srv.uri()]).returncode == 0
    time.sleep(0.3)
    assert all(srv.proc.poll() is None for srv in pair)
    for srv in pair:
        assert run(["nbdinfo", srv.uri()]).returncode == 0
    for srv in pair:
        srv.proc.wait(5)
        assert srv.proc.returncode == 0
