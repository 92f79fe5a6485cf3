# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-nbd as a server: what clients see compared with qemu-nbd 7.2 on the
same image, interop with qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh and
libnbd, and the command line's messages.  Every server started here is
stopped by the test that started it."""
import json
import os
import shutil
import subprocess

import pytest

from nbd_helpers import VDISK_NBD, ENV, Server, free_port, run

QEMU_NBD = shutil.which("qemu-nbd")
pytestmark = pytest.mark.skipif(not os.path.exists(VDISK_NBD), reason="vdisk-nbd not built")
needs = lambda prog: pytest.mark.skipif(shutil.which(prog) is None,
                                        reason="%s is not installed" % prog)


@pytest.fixture
def img(tmp_path):
    """A 64 MiB raw image: 1 MiB of 0x01 at 0, 64 KiB of 0x02 at 8 MiB."""
    p = tmp_path / "d.img"
    with open(p, "wb") as f:
        f.truncate(64 << 20)
        f.write(b"\1" * (1 << 20))
        f.seek(8 << 20)
        f.write(b"\2" * (64 << 10))
    return p


@pytest.fixture
def serve(tmp_path):
    """serve(prog, *args): start a server on a Unix socket; stopped at exit."""
    servers = []

    def start(prog, *args, tcp=False, probe=True):
        n = len(servers)
        if tcp:
            s = Server(prog, args, port=free_port())
        else:
            s = Server(prog, args, sock=str(tmp_path / ("s%d" % n)), probe=probe)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def vserve(serve, *args, **kw):
    return serve(VDISK_NBD, *args, **kw)


def test_help_and_version():
    p = run([VDISK_NBD, "--help"])
    assert p.returncode == 0 and "--export-name" in p.stdout
    p = run([VDISK_NBD, "--version"])
    assert p.returncode == 0 and p.stdout.startswith("vdisk-nbd ")


@needs("qemu-nbd")
@pytest.mark.parametrize("args", [
    [], ["-r"], ["-x", "foo", "-D", "a description"], ["-A"], ["-e", "3"],
    ["-r", "-A", "-e", "2", "-x", "x"],
])
def test_list_same_as_qemu_nbd(serve, img, args):
    """qemu-nbd -L prints the same for vdisk-nbd as for qemu-nbd, and
    vdisk-nbd -L prints the same as qemu-nbd -L."""
    v = vserve(serve, "-f", "raw", "-t", *args, img)
    q = serve(QEMU_NBD, "-f", "raw", "-t", *args, img)
    qv = run([QEMU_NBD, "-L", "-k", v.sock])
    qq = run([QEMU_NBD, "-L", "-k", q.sock])
    vv = run([VDISK_NBD, "-L", "-k", v.sock])
    vq = run([VDISK_NBD, "-L", "-k", q.sock])
    assert qv.returncode == 0 and qv.stdout == qq.stdout
    assert vv.stdout == qq.stdout and vq.stdout == qq.stdout


@needs("nbdinfo")
def test_nbdinfo_json_same_as_qemu_nbd(serve, img):
    v = vserve(serve, "-f", "raw", "-t", "-A", "-x", "e", img)
    q = serve(QEMU_NBD, "-f", "raw", "-t", "-A", "-x", "e", img)
    def info(s):
        p = run(["nbdinfo", "--json", s.uri("e")])
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        for e in d["exports"]:
            e.pop("uri")
        return d
    assert info(v) == info(q)


@needs("nbdinfo")
@pytest.mark.parametrize("ctx", ["base:allocation", "qemu:allocation-depth"])
def test_nbdinfo_map_same_as_qemu_nbd(serve, img, ctx):
    v = vserve(serve, "-f", "raw", "-t", "-A", img)
    q = serve(QEMU_NBD, "-f", "raw", "-t", "-A", img)
    mv = run(["nbdinfo", "--map=" + ctx, v.uri()])
    mq = run(["nbdinfo", "--map=" + ctx, q.uri()])
    assert mv.returncode == 0 and mv.stdout == mq.stdout


@needs("qemu-img")
def test_qemu_img_info_map_convert(serve, img, tmp_path):
    v = vserve(serve, "-f", "raw", "-t", img)
    q = serve(QEMU_NBD, "-f", "raw", "-t", img)
    for cmd in (["map", "--output=json"], ["info", "--output=json"]):
        a = run(["qemu-img"] + cmd + [v.uri()])
        b = run(["qemu-img"] + cmd + [q.uri()])
        assert a.returncode == 0, a.stderr
        assert a.stdout.replace(v.sock, "S") == b.stdout.replace(q.sock, "S")
    out = tmp_path / "out.img"
    assert run(["qemu-img", "convert", "-O", "raw", v.uri(), out]).returncode == 0
    assert run(["cmp", img, out]).returncode == 0


@needs("qemu-img")
def test_write_with_qemu_img_and_qemu_io(serve, img, tmp_path):
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(64 << 20))
    v = vserve(serve, "-f", "raw", "-t", img)
    p = run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, v.uri()])
    assert p.returncode == 0, p.stderr
    p = run(["qemu-io", "-f", "raw", "-c", "write -P 0x55 -f 4096 4096",
             "-c", "write -z 1M 1M", "-c", "discard 2M 1M", "-c", "flush", v.uri()])
    assert p.returncode == 0 and "error" not in p.stdout, p.stdout + p.stderr
    assert v.stop() == 0
    data = open(img, "rb").read()
    ref = bytearray(open(src, "rb").read())
    ref[4096:8192] = b"\x55" * 4096
    ref[1 << 20:2 << 20] = bytes(1 << 20)
    assert data[:2 << 20] == bytes(ref[:2 << 20]) and data[3 << 20:] == bytes(ref[3 << 20:])


@needs("nbdcopy")
def test_nbdcopy_both_ways(serve, img, tmp_path):
    v = vserve(serve, "-f", "raw", "-t", "-e", "4", img)
    out = tmp_path / "copy.img"
    p = run(["nbdcopy", v.uri(), str(out)])
    assert p.returncode == 0, p.stderr
    assert run(["cmp", img, out]).returncode == 0
    src = tmp_path / "rnd.img"
    with open(src, "wb") as f:
        f.write(os.urandom(16 << 20) + bytes(48 << 20))
    p = run(["nbdcopy", str(src), v.uri()])
    assert p.returncode == 0, p.stderr
    assert v.stop() == 0
    assert run(["cmp", img, src]).returncode == 0


NBDSH_SCRIPT = r'''
import nbd, errno, os
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(URI)
assert h.can_fua() and h.can_zero() and h.can_trim() and h.can_cache() and h.can_df()
buf = os.urandom(1 << 20)
cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(buf)), i << 20,
                        flags=nbd.CMD_FLAG_FUA) for i in range(16)]
while any(not h.aio_command_completed(c) for c in cookies if True) if False else h.aio_in_flight() > 0:
    h.poll(-1)
for i in range(16):
    assert h.pread(1 << 20, i << 20) == buf
h.zero(1 << 20, 0, flags=nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 0) == bytes(4096)
h.zero(1 << 20, 1 << 20, flags=nbd.CMD_FLAG_FAST_ZERO) if h.can_fast_zero() else None
h.trim(1 << 20, 2 << 20)
h.cache(1 << 20, 0)
h.flush()
seen = []
h.block_status(64 << 20, 0, lambda ctx, off, ents, err: seen.append(list(ents)),
               flags=nbd.CMD_FLAG_REQ_ONE)
assert len(seen) == 1 and len(seen[0]) == 2
chunks = []
h.pread_structured(65536, 0, lambda sub, off, st, err: chunks.append((off, st, len(sub))),
                   flags=nbd.CMD_FLAG_DF)
assert chunks == [(0, nbd.READ_DATA, 65536)], chunks
h.shutdown()
print("OK")
'''


@needs("nbdsh")
def test_nbdsh_script(serve, img):
    v = vserve(serve, "-f", "raw", "-t", img)
    p = run(["nbdsh", "-c", "URI = %r" % v.uri(), "-c", NBDSH_SCRIPT])
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr


def test_read_only_refuses_writes(serve, img):
    import nbd
    v = vserve(serve, "-f", "raw", "-r", "-t", img)
    h = nbd.NBD()
    h.connect_uri(v.uri())
    assert h.is_read_only() and not h.can_multi_conn()
    h.set_strict_mode(0)
    with pytest.raises(nbd.Error) as e:
        h.pwrite(b"x" * 512, 0)
    assert e.value.errno == "EPERM"
    assert h.pread(512, 0) == b"\1" * 512
    h.shutdown()


def test_tcp_and_multi_conn(serve, img):
    import nbd
    v = vserve(serve, "-f", "raw", "-t", "-e", "2", img, tcp=True)
    hs = [nbd.NBD() for _ in range(2)]
    for h in hs:
        h.connect_uri(v.uri())
        assert h.can_multi_conn()
    assert hs[0].pread(4, 8 << 20) == b"\2" * 4 and hs[1].pread(4, 0) == b"\1" * 4
    for h in hs:
        h.shutdown()


@needs("fio")
def test_fio_nbd_engine(serve, img):
    v = vserve(serve, "-f", "raw", "-t", img)
    p = run(["fio", "--name=t", "--ioengine=nbd", "--uri=" + v.uri(), "--rw=randrw",
             "--bs=4k", "--iodepth=16", "--size=16M", "--runtime=2", "--time_based",
             "--output-format=json"])
    assert p.returncode == 0, p.stderr
    job = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0 and job["read"]["io_bytes"] > 0


def test_sigterm_with_idle_clients(serve, img):
    v = vserve(serve, "-f", "raw", "-t", "-e", "3", img)
    import nbd
    hs = []
    for _ in range(2):
        h = nbd.NBD()
        h.connect_uri(v.uri())
        hs.append(h)
    idle = v.connect()       # stalled in the handshake
    assert v.stop(timeout=5) == 0
    idle.close()
    assert not os.path.exists(v.sock)


def test_exits_after_last_client_without_persistent(serve, img):
    v = vserve(serve, "-f", "raw", img, probe=False)
    import nbd
    h = nbd.NBD()
    h.connect_uri(v.uri())
    h.shutdown()
    del h
    v.proc.wait(5)
    assert v.proc.returncode == 0


def test_offset_window(serve, img):
    import nbd
    v = vserve(serve, "-f", "raw", "-t", "-o", str(8 << 20), img)
    h = nbd.NBD()
    h.connect_uri(v.uri())
    assert h.get_size() == 56 << 20 and h.pread(4, 0) == b"\2" * 4
    h.shutdown()


def _mbr(parts):
    mbr = bytearray(512)
    for i, (typ, start, count) in enumerate(parts):
        e = 446 + 16 * i
        mbr[e + 4] = typ
        mbr[e + 8:e + 12] = start.to_bytes(4, "little")
        mbr[e + 12:e + 16] = count.to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    return mbr


def test_partition_mbr_and_gpt(serve, tmp_path):
    import nbd
    p = tmp_path / "p.img"
    with open(p, "wb") as f:
        f.truncate(16 << 20)
        f.write(_mbr([(0x83, 2048, 4096), (0x83, 8192, 8192)]))
        f.seek(8192 * 512)
        f.write(b"P2")
    v = vserve(serve, "-f", "raw", "-t", "-P", "2", p)
    h = nbd.NBD()
    h.connect_uri(v.uri())
    assert h.get_size() == 8192 * 512 and h.pread(2, 0) == b"P2"
    h.shutdown()
    g = tmp_path / "g.img"
    with open(g, "wb") as f:
        f.truncate(16 << 20)
        f.write(_mbr([(0xee, 1, 32767)]))
        hdr = bytearray(512)
        hdr[0:8] = b"EFI PART"
        hdr[72:80] = (2).to_bytes(8, "little")
        hdr[80:84] = (128).to_bytes(4, "little")
        hdr[84:88] = (128).to_bytes(4, "little")
        f.write(hdr)
        ent = bytearray(128)
        ent[0:16] = b"\x01" * 16
        ent[32:40] = (4096).to_bytes(8, "little")
        ent[40:48] = (6143).to_bytes(8, "little")
        f.write(ent)
        f.seek(4096 * 512)
        f.write(b"G1")
    v = vserve(serve, "-f", "raw", "-t", "-P", "1", g)
    h = nbd.NBD()
    h.connect_uri(v.uri())
    assert h.get_size() == 2048 * 512 and h.pread(2, 0) == b"G1"
    h.shutdown()
    bad = run([VDISK_NBD, "-k", str(tmp_path / "x"), "-f", "raw", "-P", "3", p])
    assert bad.returncode == 1 and "partition 3" in bad.stderr


@needs("qemu-nbd")
@pytest.mark.parametrize("args", [
    [], ["a", "b"], ["-e", "abc", "IMG"], ["-e", "-1", "IMG"], ["-o", "abc", "IMG"],
    ["--cache=bad", "IMG"], ["--aio=bad", "IMG"], ["--discard=bad", "IMG"],
    ["--detect-zeroes=bad", "IMG"], ["--detect-zeroes=unmap", "IMG"],
    ["-L", "IMG"], ["-L", "-x", "a"], ["--tls-authz=a", "IMG"],
    ["--tls-creds=nosuch", "IMG"], ["--object", "foo,id=x", "IMG"],
    ["-f", "raw", "-B", "bm", "IMG"], ["-f", "raw", "-l", "snap", "IMG"],
    ["-x", "a" * 5000, "IMG"], ["-D", "d" * 5000, "IMG"], ["-f", "raw", "NOSUCH"],
])
def test_cli_errors_same_as_qemu_nbd(tmp_path, img, args):
    args = [str(img) if a == "IMG" else str(tmp_path / "nosuch") if a == "NOSUCH"
            else a for a in args]
    sock = ["-k", str(tmp_path / "s")]
    v = run([VDISK_NBD] + sock + args, timeout=10)
    q = run([QEMU_NBD] + sock + args, timeout=10)
    assert v.returncode == q.returncode == 1
    qerr = q.stderr.replace(QEMU_NBD, VDISK_NBD).replace("qemu-nbd:", "vdisk-nbd:")
    if "blk_new_open" in qerr:
        assert v.stderr.split(":")[:2] == qerr.split(":")[:2]
    else:
        assert v.stderr == qerr


def test_pid_file_and_fork(tmp_path, img):
    import time
    pid = tmp_path / "pid"
    sock = tmp_path / "s"
    p = run([VDISK_NBD, "--fork", "--pid-file", pid, "-k", sock, "-t", "-f", "raw", img],
            timeout=10)
    n = int(open(pid).read()) if os.path.exists(pid) else None
    try:
        assert p.returncode == 0 and os.path.exists(sock) and n
    finally:
        if n:
            os.kill(n, 15)
    for _ in range(200):
        if not os.path.exists(pid):
            break
        time.sleep(0.025)
    assert not os.path.exists(pid) and not os.path.exists(sock)


def test_manpage_names_every_help_option():
    import re
    from conftest import TOP
    man = open(os.path.join(TOP, "docs", "vdisk-nbd.8")).read().replace("\\-", "-")
    man = re.sub(r"\\f[BIRP]", "", man)
    helptext = run([VDISK_NBD, "--help"]).stdout
    opts = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", helptext))
    missing = [o for o in sorted(opts) if o not in man]
    assert not missing


def test_snapshot_writes_are_discarded(serve, img):
    import nbd
    before = open(img, "rb").read()
    v = vserve(serve, "-s", "-f", "raw", "-t", img)
    h = nbd.NBD()
    h.connect_uri(v.uri())
    h.pwrite(b"\x77" * 65536, 0)
    assert h.pread(65536, 0) == b"\x77" * 65536
    h.shutdown()
    assert v.stop() == 0
    assert open(img, "rb").read() == before
