# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-pool -c vdisk+ssh://: the command runs on the other end of an ssh
connection (an sshd on loopback, ssh_server.py), the remote side being the
build's vdisk-pool on vdisk:///session.  Each output is compared with the
same command run there directly; upload and download stream the data over
the connection."""
import os
import random
import subprocess

import pytest

import ssh_server
from pool_helpers import VDISK_POOL

pytestmark = [
    pytest.mark.skipif(ssh_server.available() is not None,
                       reason=str(ssh_server.available())),
    pytest.mark.skipif(not os.path.exists(VDISK_POOL), reason="vdisk-pool is not built"),
    pytest.mark.once,      # ssh's time more than vdisk-pool's (conftest.py)
]

# Names the remote shell would split, expand or run if they were not quoted.
ODD_NAMES = ["a b", "it's", 'q"uote', "$(touch PWNED)", "back\\slash", "--dash", "semi;colon"]


class Remote:
    """The sshd, a wrapper that runs vdisk-pool on its own state directories,
    and the two ways of calling it."""

    def __init__(self, srv, d):
        self.srv = srv
        self.dir = d
        self.pool_dir = os.path.join(d, "pool")
        self.wrapper = os.path.join(d, "remote vdisk-pool")
        env = "".join("export %s='%s'\n" % (k, os.environ[k])
                      for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")
                      if k in os.environ)
        with open(self.wrapper, "w") as f:
            f.write("#!/bin/sh\ncd '%s' || exit 1\n%s"
                    "export VDISK_POOL_CONFIG_DIR='%s/cfg' VDISK_POOL_RUN_DIR='%s/run'\n"
                    "exec '%s' \"$@\"\n" % (d, env, d, d, VDISK_POOL))
        os.chmod(self.wrapper, 0o755)

    def uri(self, port=None, **extra):
        q = {"keyfile": self.srv.key, "known_hosts": self.srv.known_hosts,
             "binary": self.wrapper.replace(" ", "%20")}
        q.update(extra)
        return "vdisk+ssh://%s@127.0.0.1:%d/session?%s" % (
            self.srv.user, port or self.srv.port, "&".join("%s=%s" % kv for kv in q.items()))

    def remote(self, *args, uri=None, **kw):
        env = self.srv.env(agent=False)
        return subprocess.run([VDISK_POOL, "-c", uri or self.uri()] + [str(a) for a in args],
                              env=env, capture_output=True, timeout=60, **kw)

    def local(self, *args, **kw):
        return subprocess.run([self.wrapper, "-c", "vdisk:///session"] +
                              [str(a) for a in args], capture_output=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def rem(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sshpool"))
    srv = ssh_server.Sshd(d)
    r = Remote(srv, d)
    yield r
    srv.stop()


def ok(p):
    assert p.returncode == 0, p.stderr
    return p


def same(rem, *args):
    """The command gives the same result through ssh as run directly."""
    a, b = rem.remote(*args), rem.local(*args)
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args
    return a


@pytest.fixture(scope="module")
def pool(rem):
    ok(rem.remote("pool-define-as", "rp", "dir", "--target", rem.pool_dir))
    ok(rem.remote("pool-build", "rp"))
    ok(rem.remote("pool-start", "rp"))
    return "rp"


def test_commands_same_as_direct(rem, pool):
    ok(rem.remote("vol-create-as", pool, "v1", "10M", "--format", "qcow2"))
    for args in (["pool-list", "--all", "--details"], ["pool-info", pool],
                 ["pool-dumpxml", pool], ["vol-list", pool, "--details"],
                 ["vol-info", "v1", "--pool", pool], ["vol-dumpxml", "--pool", pool, "v1"],
                 ["vol-path", "v1", "--pool", pool], ["pool-capabilities"]):
        assert same(rem, *args).stdout


def test_xml_files_are_read_on_this_side(rem, pool, tmp_path):
    """pool-define and vol-create send the local file (a relative name the
    remote's working directory does not have)."""
    (tmp_path / "def.xml").write_text(
        "<pool type='dir'><name>rx</name><target><path>%s</path></target></pool>"
        % (tmp_path / "rx"))
    (tmp_path / "vol.xml").write_text("<volume><name>fromxml</name>"
                                      "<capacity>65536</capacity></volume>")
    p = ok(rem.remote("pool-define", "def.xml", cwd=tmp_path))
    assert p.stdout == b"Pool rx defined from def.xml\n\n"
    ok(rem.remote("pool-undefine", "rx"))
    p = ok(rem.remote("vol-create", pool, "vol.xml", cwd=tmp_path))
    assert p.stdout == b"Vol fromxml created from vol.xml\n\n"
    assert os.path.getsize(os.path.join(rem.pool_dir, "fromxml")) == 65536
    p = rem.remote("pool-define", "missing.xml", cwd=tmp_path)
    assert p.returncode == 1 and p.stderr == (
        b"error: Failed to open file 'missing.xml': No such file or directory\n")


def test_odd_names_arrive_unchanged(rem, pool):
    for name in ODD_NAMES:
        p = ok(rem.remote("vol-create-as", pool, "--name=" + name, "1M"))
        assert p.stdout == b"Vol %s created\n\n" % name.encode()
        assert os.path.isfile(os.path.join(rem.pool_dir, name))
        assert same(rem, "vol-info", "--vol=" + name, "--pool", pool).stdout.startswith(
            b"Name:           %s\n" % name.encode())
    assert not os.path.exists(os.path.join(rem.dir, "PWNED"))


def test_failing_command_status_and_message(rem, pool):
    p = same(rem, "vol-info", "nosuch", "--pool", pool)
    assert p.returncode == 1 and b"no storage vol with matching path 'nosuch'" in p.stderr
    p = same(rem, "pool-start", pool)
    assert p.returncode == 1 and b"is already active" in p.stderr


def data(n, holes=True):
    rnd = random.Random(n)
    b = bytearray(rnd.randbytes(n))
    if holes:
        b[n // 4:n // 2] = bytes(n // 2 - n // 4)
    return bytes(b)


@pytest.mark.parametrize("sparse", [[], ["--sparse"]])
def test_upload_download_round_trip(rem, pool, tmp_path, sparse):
    vol = "up%d" % len(sparse)
    content = data(3 << 20)
    src = tmp_path / "src"
    src.write_bytes(content)
    ok(rem.remote("vol-create-as", pool, vol, "4M"))
    p = ok(rem.remote("vol-upload", vol, src, "--pool", pool, "--offset", "4096", *sparse))
    assert p.stdout == b"\n" and p.stderr == b""
    expect = bytes(4096) + content
    if not sparse:
        expect += bytes((4 << 20) - len(expect))
    with open(os.path.join(rem.pool_dir, vol), "rb") as f:
        assert f.read() == expect
    back = tmp_path / "back"
    p = ok(rem.remote("vol-download", vol, back, "--pool", pool, *sparse))
    assert p.stdout == b"\n" and back.read_bytes() == expect
    # --offset and --length of download, compared with a direct download
    part, direct = tmp_path / "part", tmp_path / "direct"
    ok(rem.remote("vol-download", "--pool", pool, vol, part, "--offset", "1000",
                  "--length", "100000", *sparse))
    ok(rem.local("vol-download", "--pool", pool, vol, direct, "--offset", "1000",
                 "--length", "100000", *sparse))
    assert part.read_bytes() == direct.read_bytes() == expect[1000:101000]


def test_upload_length_refuses_the_rest(rem, pool, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(data(200000, holes=False))
    ok(rem.remote("vol-create-as", pool, "short", "1M"))
    a = rem.remote("vol-upload", "short", src, "--pool", pool, "--length", "1000")
    b = rem.local("vol-upload", "short", src, "--pool", pool, "--length", "1000")
    assert a.returncode == b.returncode == 1
    assert a.stderr == b.stderr == (b"error: cannot send data to volume short\n"
                                    b"error: cannot write to stream: No space left on device\n")
    with open(os.path.join(rem.pool_dir, "short"), "rb") as f:
        assert f.read(1000) == src.read_bytes()[:1000]


def test_failed_download_leaves_no_file(rem, pool, tmp_path):
    out = tmp_path / "none"
    p = rem.remote("vol-download", "nosuch", out, "--pool", pool)
    assert p.returncode == 1 and b"no storage vol with matching path" in p.stderr
    assert not out.exists()


def test_upload_missing_local_file(rem, pool, tmp_path):
    p = rem.remote("vol-upload", "v1", tmp_path / "missing", "--pool", pool)
    assert p.returncode == 1
    assert p.stderr == b"error: cannot read %s\n" % str(tmp_path / "missing").encode()


def test_dead_host(rem):
    p = rem.remote("pool-list", uri=rem.uri(port=ssh_server.free_port()))
    assert p.returncode == 1 and p.stdout == b"\n"
    assert b"Connection refused" in p.stderr
    assert p.stderr.endswith(b"error: failed to connect to the hypervisor\n"
                             b"error: cannot reach the remote vdisk-pool on 127.0.0.1\n")


def test_refused_key(rem):
    p = rem.remote("pool-list", uri=rem.uri(keyfile=rem.srv.dir + "/host_key"))
    assert p.returncode == 1 and b"failed to connect to the hypervisor" in p.stderr


def test_no_verify_and_known_hosts(rem, pool, tmp_path):
    """Without the host key, BatchMode refuses the host; no_verify=1 lets ssh
    take it (into the known_hosts file given, not the user's)."""
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    p = rem.remote("pool-list", uri=rem.uri(known_hosts=kh))
    assert p.returncode == 1 and b"Host key verification failed" in p.stderr
    p = rem.remote("pool-list", "--all", uri=rem.uri(known_hosts=kh, no_verify="1"))
    assert p.returncode == 0 and b" rp " in p.stdout
    assert rem.srv.host_key_pub[1] in kh.read_text()


def test_ssh_command_line(rem, tmp_path):
    """command= names the ssh program; its arguments are libvirt's, the
    remote command one shell-quoted string."""
    log = tmp_path / "args"
    fake = tmp_path / "fake-ssh"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '%%s\\n' \"$a\"; done > '%s'\n"
                    "exit 0\n" % log)
    fake.chmod(0o755)
    uri = ("vdisk+ssh://u%%40x@host.example:2222/system?keyfile=/k%%20f&no_verify=1"
           "&command=%s&binary=/opt/vp" % fake)
    p = subprocess.run([VDISK_POOL, "-c", uri, "vol-info", "--pool", "p", "it's"],
                       capture_output=True, timeout=30)
    assert p.returncode == 0 and p.stdout == b""
    assert log.read_text().split("\n")[:-1] == [
        "-p", "2222", "-l", "u@x", "-i", "/k f", "-T", "-e", "none", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "--", "host.example",
        "'/opt/vp' '-c' 'vdisk:///system' 'vol-info' '--vol' 'it'\\''s' '--pool' 'p'"]


def test_missing_remote_binary(rem):
    p = rem.remote("pool-list", uri=rem.uri(binary="/nonexistent/vdisk-pool"))
    assert p.returncode == 127 or p.returncode == 1
    assert b"/nonexistent/vdisk-pool" in p.stderr


@pytest.mark.parametrize("uri,msg", [
    ("vdisk+ssh:///session", "no host in URI"),
    ("vdisk+ssh://h", "no connection driver available for vdisk+ssh://h"),
    ("vdisk+ssh://-oProxyCommand=touch%20x/session", "invalid host in URI"),
    ("vdisk+ssh://-l@h/session", "invalid user name in URI"),
    ("vdisk+ssh://h:99999/session", "invalid port in URI"),
    ("vdisk+ssh://h:/session", "invalid port in URI"),
    ("vdisk+ssh://h/other", "no connection driver available for vdisk+ssh://h/other"),
    ("vdisk+ssh://h/session?bogus=1", "unsupported URI parameter 'bogus'"),
    ("vdisk+ssh://h/session?keyfile=%zz", "invalid escape in URI parameter"),
    ("vdisk+ssh://[::1/session", "malformed host in URI"),
])
def test_bad_uris(uri, msg):
    p = subprocess.run([VDISK_POOL, "-c", uri, "pool-list"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 1
    assert p.stderr.startswith("error: failed to connect to the hypervisor\nerror: " + msg)
    assert p.stdout == "\n"
