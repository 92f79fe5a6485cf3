# SPDX-License-Identifier: BSD-3-Clause
"""The ssh protocol driver against a real OpenSSH server started on loopback
for the session (ssh_server.py): info, map, convert to and from, compare,
create and resize against qemu-img 7.2 (qemu-block-extra's ssh driver) on
the same names; QEMU's messages for bad URLs and options, host keys that do
not match, refused keys and missing files; sshd killed in the middle of a
convert; vdisk-nbd serving an image that lives on the server."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import run, VDISK_IMG, QEMU_IMG, same_output
import ssh_server



def _have_ssh_driver():
    out = run([VDISK_IMG, "--help"]).stdout
    return "ssh" in out.split("Supported formats:")[-1].split()


pytestmark = [
    pytest.mark.skipif(not QEMU_IMG or not shutil.which("qemu-io"),
                       reason="qemu-img and qemu-io are needed"),
    pytest.mark.skipif(ssh_server.available() is not None,
                       reason=str(ssh_server.available())),
    # Their time is sshd's and qemu-img's: once per make check, in the
    # sanitized pass (conftest.py).
    pytest.mark.once,
]


@pytest.fixture(scope="session")
def ssh_driver():
    if not _have_ssh_driver():
        pytest.skip("vdisk-img was built without libssh")


@pytest.fixture(scope="session")
def srv(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sshd"))
    try:
        s = ssh_server.Sshd(d)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.skip("sshd cannot start here: %s" % e)
    # A raw image with data, zeroes and holes, and the same as qcow2.
    raw, qcow2 = s.path("disk.raw"), s.path("disk.qcow2")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "raw", raw, "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 192k",
                    "-c", "write -P 0xa5 1M 1536k", "-c", "write -P 0x11 3M 4k", raw],
                   check=True, capture_output=True)
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    yield s
    s.stop()


def vimg(srv, *args, agent=True, **kw):
    return run([VDISK_IMG] + [str(a) for a in args], env=srv.env(agent), **kw)


def qimg(srv, *args, agent=True, **kw):
    return run([QEMU_IMG] + [str(a) for a in args], env=srv.env(agent), **kw)


def both(srv, *args, **kw):
    return vimg(srv, *args, **kw), qimg(srv, *args, **kw)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def names(srv, file):
    """The ways to name one image on the server, for both tools."""
    p = srv.path(file)
    server = {"host": "127.0.0.1", "port": str(srv.port)}
    return {
        "url": srv.url(file),
        "url-sha256": srv.url(file, "sha256:" + srv.fingerprint["sha256"]),
        "json-hash": "json:" + json.dumps({"file": {
            "driver": "ssh", "server": server, "path": p,
            "host-key-check": {"mode": "hash", "type": "sha1",
                               "hash": srv.fingerprint["sha1"]}}}),
        "json-legacy": "json:" + json.dumps({"file": {
            "driver": "ssh", "host": "127.0.0.1", "port": srv.port, "path": p,
            "user": srv.user, "host_key_check": "md5:" + srv.fingerprint["md5"]}}),
    }


NAME_KINDS = ["url", "url-sha256", "json-hash", "json-legacy"]


def same(v, q):
    assert v.returncode == q.returncode, (v.stderr, q.stderr)
    assert same_output(v.stdout, q.stdout), (v.stdout, q.stdout)
    assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("kind", NAME_KINDS)
@pytest.mark.parametrize("out", ["human", "json"])
def test_info_same_as_qemu(ssh_driver, srv, kind, fmt, out):
    name = names(srv, "disk." + fmt)[kind]
    args = ["info", "--output=" + out] + (["-f", fmt] if kind == "url" else []) + [name]
    v, q = both(srv, *args)
    assert q.returncode == 0, q.stderr
    same(v, q)


def test_image_opts_info(ssh_driver, srv):
    o = ("driver=qcow2,file.driver=ssh,file.server.host=127.0.0.1,file.server.port=%d,"
         "file.path=%s,file.host-key-check.mode=none" % (srv.port, srv.path("disk.qcow2")))
    v, q = both(srv, "info", "--image-opts", o)
    assert q.returncode == 0, q.stderr
    same(v, q)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("out", ["human", "json"])
def test_map_same_as_qemu(ssh_driver, srv, fmt, out):
    v, q = both(srv, "map", "-f", fmt, "--output=" + out, srv.url("disk." + fmt))
    assert q.returncode == 0, q.stderr
    same(v, q)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_from_ssh(ssh_driver, srv, tmp_path, fmt):
    vo, qo = str(tmp_path / "v.raw"), str(tmp_path / "q.raw")
    v = vimg(srv, "convert", "-f", fmt, "-O", "raw", srv.url("disk." + fmt), vo)
    q = qimg(srv, "convert", "-f", fmt, "-O", "raw", srv.url("disk." + fmt), qo)
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert read(vo) == read(qo) == read(srv.path("disk.raw"))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_to_ssh(ssh_driver, srv, fmt):
    """convert onto the server (create over ssh, then writes); qemu-img
    reads the result back and finds the same guest data."""
    src = srv.path("disk.raw")
    for tool, t in (("v", vimg), ("q", qimg)):
        r = t(srv, "convert", "-f", "raw", "-O", fmt, src, srv.url("conv-%s.%s" % (tool, fmt)))
        assert r.returncode == 0, r.stderr
    for tool in ("v", "q"):
        c = qimg(srv, "compare", "-f", "raw", "-F", fmt, src, srv.url("conv-%s.%s" % (tool, fmt)))
        assert c.returncode == 0, c.stdout + c.stderr
    if fmt == "raw":
        assert read(srv.path("conv-v.raw")) == read(src)
    ck = vimg(srv, "check", "-f", fmt, srv.url("conv-v." + fmt)) if fmt == "qcow2" else None
    assert ck is None or ck.returncode == 0, ck.stdout + ck.stderr


def test_compare_same_as_qemu(ssh_driver, srv):
    v, q = both(srv, "compare", "-f", "raw", "-F", "qcow2", srv.url("disk.raw"),
                srv.url("disk.qcow2"))
    assert q.returncode == 0, q.stdout + q.stderr
    same(v, q)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_create_same_as_qemu(ssh_driver, srv, fmt):
    out = {}
    for tool, t in (("v", vimg), ("q", qimg)):
        r = t(srv, "create", "-f", fmt, srv.url("new-%s.%s" % (tool, fmt)), "10M")
        assert r.returncode == 0, r.stderr
        out[tool] = r.stdout.replace("new-%s." % tool, "new.")
    assert same_output(out["v"], out["q"])
    assert os.path.getsize(srv.path("new-v." + fmt)) == os.path.getsize(srv.path("new-q." + fmt))
    if fmt == "qcow2":
        assert read(srv.path("new-v.qcow2")) == read(srv.path("new-q.qcow2"))
    else:
        assert read(srv.path("new-v.raw")) == bytes(10 << 20)


@pytest.mark.parametrize("args", [
    ["-o", "preallocation=full"],
    ["-o", "help"],
])
def test_create_options_same_as_qemu(ssh_driver, srv, args):
    v, q = both(srv, "create", "-f", "raw", *args, srv.url("opt.raw"), "1M")
    same(v, q)


def test_resize_same_as_qemu(ssh_driver, srv):
    for tool in ("v", "q"):
        shutil.copy(srv.path("disk.raw"), srv.path("rs-%s.raw" % tool))
    cases = [["6M"], ["--shrink", "2M"], ["--preallocation=full", "8M"], ["+1M"]]
    for c in cases:
        v = vimg(srv, "resize", "-f", "raw", srv.url("rs-v.raw"), *c)
        q = qimg(srv, "resize", "-f", "raw", srv.url("rs-q.raw"), *c)
        assert v.returncode == q.returncode, (c, v.stderr, q.stderr)
        assert same_output(v.stdout, q.stdout), c
        assert same_output(v.stderr.replace("rs-v", "rs-q"), q.stderr), (c, v.stderr, q.stderr)
    assert read(srv.path("rs-v.raw")) == read(srv.path("rs-q.raw"))
    assert os.path.getsize(srv.path("rs-v.raw")) == 7 << 20


def last_line(text):
    return text.strip().splitlines()[-1] if text.strip() else ""


def same_error(srv, *args, agent=True):
    v = vimg(srv, *args, agent=agent, timeout=60)
    q = qimg(srv, *args, agent=agent, timeout=60)
    assert q.returncode != 0, q.stdout
    assert v.returncode == q.returncode, v.stderr
    assert same_output(last_line(v.stderr), last_line(q.stderr)), (v.stderr, q.stderr)
    return v


def test_missing_file(ssh_driver, srv):
    v = same_error(srv, "info", srv.url("nope.raw"))
    assert "No such file" in v.stderr


@pytest.mark.parametrize("hkc", ["md5:00", "sha1:0011", "sha256:ab", "yes", "maybe",
                                 "sha512:00", "md5:"])
def test_wrong_host_key(ssh_driver, srv, hkc):
    """A host key check that does not match (the fingerprint of another
    key, or none in the user's known_hosts) is refused before logging in."""
    same_error(srv, "info", "-f", "raw", srv.url("disk.raw", hkc))


def test_host_key_check_case_and_colons(ssh_driver, srv):
    fp = srv.fingerprint["sha256"].upper()
    fp = ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))
    v, q = both(srv, "info", "-f", "raw", srv.url("disk.raw", "sha256:" + fp))
    assert q.returncode == 0, q.stderr
    same(v, q)


def test_refused_key(ssh_driver, srv):
    """No agent: nothing to log in with; another user: the key is refused."""
    same_error(srv, "info", "-f", "raw", srv.url("disk.raw"), agent=False)
    url = srv.url("disk.raw").replace(srv.user + "@", "nobody@")
    same_error(srv, "info", "-f", "raw", url)


def test_unreachable_server(ssh_driver, srv):
    port = ssh_server.free_port()
    same_error(srv, "info", "-f", "raw", "ssh://127.0.0.1:%d/x?host_key_check=no" % port)


@pytest.mark.parametrize("url", [
    "ssh:///x", "ssh://host", "ssh:x", "ssh://h:99999/x", "ssh://h:abc/x",
])
def test_bad_urls(ssh_driver, srv, url):
    same_error(srv, "info", url)


@pytest.mark.parametrize("file", [
    {"server": {"host": "127.0.0.1"}, "path": "/x", "host_key_check": "no"},
    {"server": {"host": "127.0.0.1", "port": "abc"}, "path": "/x"},
    {"server": {"port": "22"}, "path": "/x"},
    {"server": {"host": "127.0.0.1", "port": "22"}},
    {"path": "/x"},
    {"server": {"host": "127.0.0.1", "port": "22"}, "path": "/x",
     "host-key-check": {"mode": "hash", "type": "sha256"}},
    {"server": {"host": "127.0.0.1", "port": "22"}, "path": "/x",
     "host-key-check": {"mode": "hash", "hash": "00"}},
    {"server": {"host": "127.0.0.1", "port": "22"}, "path": "/x",
     "host-key-check": {"mode": "hash", "type": "sha512", "hash": "00"}},
    {"server": {"host": "127.0.0.1", "port": "22"}, "path": "/x",
     "host-key-check": {"mode": "bogus"}},
    {"server": {"host": "127.0.0.1", "port": "22"}, "path": "/x", "foo": "1"},
])
def test_option_errors(ssh_driver, srv, file):
    same_error(srv, "info", "json:" + json.dumps({"driver": "raw", "file": dict(file, driver="ssh")}))


def known_hosts_opts(srv, path, kh):
    return ("json:" + json.dumps({"driver": "raw", "file": {
        "driver": "ssh", "server": {"host": "127.0.0.1", "port": str(srv.port)},
        "path": srv.path(path), "x-known-hosts": kh}}))


def test_known_hosts_file(ssh_driver, srv, tmp_path):
    """x-known-hosts names the file (QEMU always uses libssh's default):
    the right key opens; another key for the host is refused as an attack."""
    v = vimg(srv, "info", known_hosts_opts(srv, "disk.raw", srv.known_hosts))
    assert v.returncode == 0, v.stderr
    other = str(tmp_path / "other_key")
    ssh_server.keygen(other)
    kh = str(tmp_path / "known_hosts")
    with open(other + ".pub") as f, open(kh, "w") as out:
        out.write("[127.0.0.1]:%d %s\n" % (srv.port, " ".join(f.read().split()[:2])))
    v = vimg(srv, "info", known_hosts_opts(srv, "disk.raw", kh))
    assert v.returncode == 1
    assert "does not match the one in known_hosts; this may be a possible attack" in v.stderr
    assert "SHA256:" in v.stderr


def test_identity_file(ssh_driver, srv):
    """x-identity-file logs in with a key file when there is no agent."""
    name = "json:" + json.dumps({"driver": "raw", "file": {
        "driver": "ssh", "server": {"host": "127.0.0.1", "port": str(srv.port)},
        "path": srv.path("disk.raw"), "host_key_check": "no", "x-identity-file": srv.key}})
    v = vimg(srv, "info", name, agent=False)
    assert v.returncode == 0, v.stderr


@pytest.mark.parametrize("conns", ["1", "4"])
def test_parallel_connections_data(ssh_driver, srv, tmp_path, conns):
    """Reads spread over several connections give the same bytes."""
    src = srv.path("big.raw")
    if not os.path.exists(src):
        with open(src + ".tmp", "wb") as f:
            for i in range(24):
                f.write(bytes([i * 7 % 256]) * (1 << 20))
                f.write(os.urandom(4096))
        os.rename(src + ".tmp", src)
    name = "json:" + json.dumps({"driver": "raw", "file": {
        "driver": "ssh", "server": {"host": "127.0.0.1", "port": str(srv.port)},
        "path": src, "host_key_check": "no", "x-connections": conns}})
    out = str(tmp_path / "out.raw")
    v = vimg(srv, "convert", "-O", "raw", name, out)
    assert v.returncode == 0, v.stderr
    assert read(out) == read(src)


def test_server_killed_mid_convert(ssh_driver, tmp_path_factory, tmp_path):
    """sshd and its sessions killed while convert reads: a clear error and
    a nonzero exit, no hang."""
    d = str(tmp_path_factory.mktemp("sshd-kill"))
    try:
        s = ssh_server.Sshd(d)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.skip("sshd cannot start here: %s" % e)
    try:
        src = s.path("src.raw")
        with open(src, "wb") as f:
            f.truncate(64 << 20)
        out = str(tmp_path / "out.qcow2")
        p = subprocess.Popen([VDISK_IMG, "convert", "-r", "4M", "-f", "raw", "-O", "qcow2",
                              s.url("src.raw"), out], env=s.env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        end = time.monotonic() + 60
        while not (os.path.exists(out) and os.path.getsize(out) > 0):
            assert p.poll() is None and time.monotonic() < end, p.stderr.read()
            time.sleep(0.02)
        s.kill_sessions()
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1, err
        assert "error while reading" in err or "ssh:" in err, err
    finally:
        s.stop()


def test_nbd_export_of_ssh_image(ssh_driver, srv, tmp_path):
    """vdisk-nbd serves a qcow2 image that lives on the server; nbdcopy
    reads the guest data back."""
    import nbd_helpers
    if not shutil.which("nbdcopy", path="/usr/bin"):
        pytest.skip("nbdcopy is not installed")
    sock = str(tmp_path / "nbd.sock")
    os.environ["SSH_AUTH_SOCK"] = srv.agent_sock
    try:
        s = nbd_helpers.Server(nbd_helpers.VDISK_NBD,
                               ["-r", "-f", "qcow2", srv.url("disk.qcow2")], sock=sock)
    finally:
        os.environ.pop("SSH_AUTH_SOCK", None)
    try:
        out = str(tmp_path / "out.raw")
        r = nbd_helpers.run(["nbdcopy", s.uri(), out])
        assert r.returncode == 0, r.stderr
    finally:
        s.stop()
    assert read(out) == read(srv.path("disk.raw"))


def test_stalled_server_times_out(ssh_driver, tmp_path_factory):
    """A server that accepts the connection and then says nothing (sshd
    stopped): the open fails after x-timeout seconds instead of hanging."""
    d = str(tmp_path_factory.mktemp("sshd-stall"))
    try:
        s = ssh_server.Sshd(d)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.skip("sshd cannot start here: %s" % e)
    name = "json:" + json.dumps({"driver": "raw", "file": {
        "driver": "ssh", "server": {"host": "127.0.0.1", "port": str(s.port)},
        "path": s.path("x.raw"), "host_key_check": "no", "x-timeout": "1"}})
    try:
        os.kill(s.sshd.pid, signal.SIGSTOP)
        v = run([VDISK_IMG, "info", name], env=s.env(), timeout=60)
        assert v.returncode == 1, v.stderr
        assert "Timeout connecting to 127.0.0.1" in v.stderr, v.stderr
    finally:
        os.kill(s.sshd.pid, signal.SIGCONT)
        s.stop()


def test_server_killed_mid_convert_to_ssh(ssh_driver, tmp_path_factory, tmp_path):
    """sshd and its sessions killed while convert writes to the server: a
    clear error naming the write and a nonzero exit, no hang; the target
    left behind is not a complete copy (it fails compare).  The convert is
    rate-limited (8 s in all) so the kill lands mid-copy."""
    d = str(tmp_path_factory.mktemp("sshd-kill-w"))
    try:
        s = ssh_server.Sshd(d)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.skip("sshd cannot start here: %s" % e)
    try:
        src = str(tmp_path / "src.raw")
        with open(src, "wb") as f:
            f.write(os.urandom(32 << 20))
        dst = s.path("dst.raw")
        p = subprocess.Popen([VDISK_IMG, "convert", "-r", "4M", "-f", "raw", "-O", "raw",
                              src, s.url("dst.raw")], env=s.env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with open(src, "rb") as f:
            head = f.read(4096)

        def written():   # the first data has landed (the target was created whole)
            try:
                with open(dst, "rb") as f:
                    return f.read(4096) == head
            except OSError:
                return False
        end = time.monotonic() + 60
        while not written():
            assert p.poll() is None and time.monotonic() < end, p.stderr.read()
            time.sleep(0.02)
        s.kill_sessions()
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1, err
        assert "error while writing" in err, err
        c = subprocess.run([QEMU_IMG, "compare", "-f", "raw", "-F", "raw", src, dst],
                           capture_output=True, text=True)
        assert c.returncode != 0, c.stdout
    finally:
        s.stop()
