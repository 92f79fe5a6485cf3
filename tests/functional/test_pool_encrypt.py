# SPDX-License-Identifier: BSD-3-Clause
"""Secrets and LUKS volumes: virsh's secret-* commands and volumes with
<encryption format='luks'> (raw: a LUKS file; qcow2: LUKS inside qcow2),
against a session libvirtd (pool_helpers.py) doing the same, and the
volumes opened by qemu-img with the secret's passphrase.  Each LUKS volume
costs seconds of PBKDF2 (qemu-img's 2 s iteration time, as libvirt gets
it), so only two are made on each side, and each is opened once by
qemu-img (with the right passphrase: a wrong one is the luks tests')."""
import os
import pty
import re
import select
import subprocess
import termios
import time

import pytest

from pool_helpers import VDISK_POOL, peer, mask  # noqa: F401

# Their time is PBKDF2's, on both sides: run once, in the sanitized pass
# of make check (conftest.py).
pytestmark = pytest.mark.once

# The daemon and its secrets live as long as the session: each test's
# uuids, usages and pool names are its own (from its scratch directory).

SECRET_XML = """<secret ephemeral='no' private='{priv}'>
  <description>my &amp; disk</description>
  <uuid>{uuid}</uuid>
  <usage type='{type}'>
    <{elem}>{id}</{elem}>
  </usage>
</secret>
"""

VOL_XML = """<volume>
  <name>{name}</name>
  <capacity>1048576</capacity>
  <target>
    <format type='{fmt}'/>
    {enc}
  </target>
</volume>
"""

ENC = ("<encryption format='luks'><secret type='passphrase' uuid='%s'/></encryption>")


def mask_alloc(text):
    """Host blocks a file takes: not comparable."""
    text = re.sub(r"<allocation unit='bytes'>\d+</", "<allocation unit='bytes'>N</", text)
    return re.sub(r"^Allocation:( +).*$", r"Allocation:\1N", text, flags=re.M)


class Sides:
    """The same commands for virsh and vdisk-pool; files under DIR/l and
    DIR/v, written '@' in arguments."""

    def __init__(self, peer):
        self.peer = peer
        self.dir = peer.scratch()
        self.tag = os.path.basename(self.dir)
        self.pool = "p" + self.tag

    def uuid(self, n):
        return "%s-0000-4000-8000-%012d" % (self.tag, n)

    def run(self, side, args):
        fn = self.peer.virsh if side == "l" else self.peer.vpool
        root = os.path.join(self.dir, side)
        for _ in range(12):
            p = fn(*[a.replace("@", root) for a in args])
            # qemu-img (which libvirt runs) fails its PBKDF2 timing now and
            # then (with sha1 several times in a row): that failure only is
            # run again
            if "Unable to get accurate CPU usage" not in p.stderr:
                break
        return (p.returncode, mask_alloc(mask(p.stdout, (root, "@"))),
                mask(p.stderr, (root, "@")))

    def both(self, *args):
        return [self.run(side, args) for side in ("l", "v")]

    def same(self, *args):
        virsh, vdisk = self.both(*args)
        assert vdisk == virsh, "%s\nvirsh: %r\nvdisk: %r" % (args, virsh, vdisk)
        return vdisk

    def file(self, name, text):
        """The same file on both sides (with '@' for the side's root)."""
        for side in ("l", "v"):
            root = os.path.join(self.dir, side)
            self.peer.write(os.path.join(root, name), text.replace("@", root))
        return "@/" + name


def test_secret_commands_same_as_virsh(peer):
    s = Sides(peer)
    UUID, UUID2, UUID3 = s.uuid(1), s.uuid(2), s.uuid(3)
    f1 = s.file("s1.xml", SECRET_XML.format(priv="yes", uuid=UUID, type="volume",
                                            elem="volume", id="@/luks1"))
    f2 = s.file("s2.xml", SECRET_XML.format(priv="no", uuid=UUID3, type="ceph",
                                            elem="name", id="client.admin" + s.tag))
    f3 = s.file("s3.xml", "<secret><uuid>%s</uuid></secret>\n" % UUID2)
    plain = s.file("plain", "hello\n")
    b64 = s.file("b64", "aGVsbG8K\n")
    for args in (
            ["secret-define", f1], ["secret-define", f1], ["secret-define", f2],
            ["secret-define", f3], ["secret-dumpxml", UUID2], ["secret-get-value", UUID2],
            ["secret-set-value", UUID, "--base64", "c2VjcmV0"],
            ["secret-set-value", UUID2, "--file", plain, "--plain"],
            ["secret-get-value", UUID2], ["secret-get-value", UUID2, "--plain"],
            ["secret-set-value", UUID2, b64.replace("b64", "x"), "--file", b64],
            ["secret-set-value", "--secret", UUID2, "--file", b64],
            ["secret-get-value", UUID2, "--plain"],
            ["secret-set-value", UUID2, "!!notb64"], ["secret-get-value", UUID2],
            ["secret-get-value", UUID],
            ["secret-dumpxml", UUID], ["secret-dumpxml", "nosuch"],
            ["secret-undefine", UUID2], ["secret-undefine", UUID2]):
        s.same(*args)
    for args in (["secret-list"], ["secret-list", "--private"], ["secret-list", "--no-private"],
                 ["secret-list", "--ephemeral"], ["secret-list", "--no-ephemeral"]):
        virsh, vdisk = s.both(*args)
        assert mine(s, virsh) == mine(s, vdisk)
    # the value is readable by its owner only
    sec = os.path.join(peer.d("vcfg"), "secrets")
    assert os.stat(sec).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(sec, UUID + ".base64")).st_mode & 0o777 == 0o600
    for u in (UUID, UUID3):
        s.same("secret-undefine", u)
    assert not os.path.exists(os.path.join(sec, UUID + ".base64"))


def mine(s, result):
    """The lines of a secret-list result that are this test's secrets."""
    return [line for line in result[1].splitlines() if s.tag in line]


@pytest.mark.parametrize("text", [
    "<secret><uuid>bad</uuid></secret>\n",
    "<secret><usage type='volume'/></secret>\n",
    "<secret><usage type='ceph'><volume>x</volume></usage></secret>\n",
    "<notsecret/>\n",
    "<secret ephemeral='yes'><usage type='volume'><volume>@/luks1</volume></usage></secret>\n",
    "<secret><uuid>UUID</uuid><usage type='volume'><volume>/other</volume></usage></secret>\n",
    "<secret private='yes'><uuid>UUID</uuid><usage type='volume'><volume>@/luks1</volume>"
    "</usage></secret>\n",
    "<secret ephemeral='yes'><uuid>UUID</uuid><usage type='volume'><volume>@/luks1</volume>"
    "</usage></secret>\n",
])
def test_secret_define_errors_same_as_virsh(peer, text):
    s = Sides(peer)
    s.same("secret-define", s.file("taken.xml", SECRET_XML.format(
        priv="no", uuid=s.uuid(1), type="volume", elem="volume", id="@/luks1")))
    s.same("secret-define", s.file("bad.xml", text.replace("UUID", s.uuid(1))))
    s.same("secret-undefine", s.uuid(1))


def test_secret_without_uuid_gets_one(peer):
    s = Sides(peer)
    f = s.file("s.xml", "<secret ephemeral='no' private='no'><usage type='tls'>"
                        "<name>t%s</name></usage></secret>" % s.tag)
    virsh, vdisk = s.both("secret-define", f)
    assert virsh == vdisk == (0, "Secret UUID created\n\n", "")
    virsh, vdisk = s.both("secret-list")
    assert mine(s, virsh) == mine(s, vdisk) == [" UUID   tls t" + s.tag]


def echo_on(fd):
    """Does the terminal of pty master fd echo (True when it is gone)?"""
    try:
        return bool(termios.tcgetattr(fd)[3] & termios.ECHO)
    except termios.error:
        return True


def on_tty(argv, env, typed):
    """Run argv on a new terminal (a pty, its controlling terminal); type
    typed once it prompts (a ':' shown) and has turned echo off.  (exit
    status, what the terminal shows), without the polkit notice virsh
    prints on a terminal here."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    shown, sent, end = b"", False, time.monotonic() + 60
    while time.monotonic() < end:
        if select.select([fd], [], [], 1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:         # the other end is closed: EIO
                chunk = b""
            if not chunk:
                break
            shown += chunk
        # typed once echo is off: getpass flushes what comes before
        if not sent and b":" in shown and not echo_on(fd):
            os.write(fd, typed)
            sent = True
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    text = shown.decode().replace("\r\n", "\n")
    return os.waitstatus_to_exitcode(status), re.sub(r"^Authorization not available.*\n", "",
                                                     text)


@pytest.mark.parametrize("typed,opts", [
    (b"hunter2 & x\n", []),
    (b"\n", []),                      # nothing typed: refused, the old value stays
    (b"", ["--base64", "eA=="]),
    (b"", ["--plain"]),
    (b"", ["--file", "/nonexistent"]),
])
def test_secret_set_value_interactive_same_as_virsh(peer, typed, opts):
    """secret-set-value --interactive on a terminal: virsh's prompt, the
    value read with echo off (the newline it ends with dropped, taken as
    plain bytes), the same messages and value; and from stdin when there
    is no terminal."""
    s = Sides(peer)
    u = s.uuid(1)
    s.same("secret-define", s.file("s.xml", "<secret><uuid>%s</uuid></secret>" % u))
    s.same("secret-set-value", u, "b2xk")
    got = []
    for base, env in ((["virsh", "-c", "qemu:///session"], peer.env),
                      ([VDISK_POOL], peer.venv)):
        got.append(on_tty(peer.prefix() + base + ["secret-set-value", u, "--interactive"] +
                          opts, env, typed))
    assert got[0] == got[1]
    value = s.same("secret-get-value", u)[1]
    if opts:
        assert got[1][0] == 1 and "mutually exclusive" in got[1][1]
    elif typed == b"\n":
        assert got[1] == (1, "Enter new value for secret:\nerror: Failed to set secret "
                             "value\nerror: value in virSecretSetValue must not be NULL\n\n")
        assert value == "b2xk\n"
    else:
        # the typed value is not echoed
        assert got[1] == (0, "Enter new value for secret:\nSecret value set\n\n")
        assert value == "aHVudGVyMiAmIHg=\n"
    # no terminal: read from stdin, no newline after the prompt
    outs = [f(*["secret-set-value", u, "--interactive"], input="from stdin\n",
              start_new_session=True) for f in (peer.virsh, peer.vpool)]
    assert [(p.returncode, p.stdout, p.stderr) for p in outs] == [
        (o.returncode, o.stdout, o.stderr) for o in outs[:1]] * 2
    if not opts:
        assert outs[1].stdout == "Enter new value for secret:Secret value set\n\n"
        assert s.same("secret-get-value", u)[1] == "ZnJvbSBzdGRpbg==\n"
    s.same("secret-undefine", u)


def qemu_open(path, fmt, passphrase, tmp):
    """qemu-img reads the volume's guest data with the passphrase."""
    key = "encrypt.key-secret" if fmt == "qcow2" else "key-secret"
    return subprocess.run(
        ["qemu-img", "convert", "--object", "secret,id=k,data=" + passphrase, "--image-opts",
         "driver=%s,%s=k,file.filename=%s" % ("qcow2" if fmt == "qcow2" else "luks", key, path),
         "-O", "raw", str(tmp)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_luks_volume_same_as_virsh(peer, fmt, tmp_path):
    s = Sides(peer)
    p = s.pool
    s.same("secret-define", s.file("s.xml", SECRET_XML.format(
        priv="yes", uuid=s.uuid(1), type="volume", elem="volume", id="@/p/e")))
    s.same("secret-set-value", s.uuid(1), "c2VjcmV0")
    s.same("pool-create-as", p, "dir", "--target", "@/p", "--build")
    enc = ENC % s.uuid(1)
    if fmt == "raw":
        # the raw volume with a cipher and IV generator of its own
        enc = enc.replace("</encryption>", "<cipher name='twofish' size='128' mode='cbc' "
                          "hash='sha1'/><ivgen name='essiv' hash='sha256'/></encryption>")
    vol = s.file("vol.xml", VOL_XML.format(name="e", fmt=fmt, enc=enc))
    s.same("vol-create", p, vol)
    dump = s.same("vol-dumpxml", "e", "--pool", p)[1]
    assert ("<secret type='passphrase' uuid='UUID'/>" in dump and
            "<format type='%s'/>" % fmt in dump)
    if fmt == "raw":
        assert ("<cipher name='twofish' size='128' mode='cbc' hash='sha1'/>\n"
                "      <ivgen name='essiv' hash='sha256'/>\n") in dump
        info = subprocess.run(["qemu-img", "info", "--output=json",
                               os.path.join(s.dir, "v", "p", "e")],
                              capture_output=True, text=True, check=True).stdout
        for k, val in (("cipher-alg", "twofish-128"), ("cipher-mode", "cbc"),
                       ("hash-alg", "sha1"), ("ivgen-alg", "essiv"),
                       ("ivgen-hash-alg", "sha256")):
            assert '"%s": "%s"' % (k, val) in info
    s.same("vol-info", "e", "--pool", p)
    s.same("vol-list", p, "--details")
    if fmt == "raw":
        # through the LUKS layer (the payload grows), not the file
        s.same("vol-resize", "e", "2M", "--pool", p)
        s.same("vol-info", "e", "--pool", p, "--bytes")
    s.same("pool-refresh", p)
    # the secret found again by its usage, the volume's path
    dump = s.same("vol-dumpxml", "e", "--pool", p)[1]
    assert "<secret type='passphrase' uuid='UUID'/>" in dump
    s.same("secret-undefine", s.uuid(1))
    s.same("pool-refresh", p)
    dump = s.same("vol-dumpxml", "e", "--pool", p)[1]
    assert "<encryption format='luks'>\n    </encryption>\n" in dump
    s.same("vol-info", "e", "--pool", p)
    s.same("pool-destroy", p)
    path = os.path.join(s.dir, "v", "p", "e")
    p = qemu_open(path, fmt, "secret", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    data = (tmp_path / "out").read_bytes()
    size = (2 if fmt == "raw" else 1) << 20
    assert len(data) == size
    if fmt == "qcow2":
        assert data == bytes(size)         # no cluster allocated yet
    else:
        assert data != bytes(size)         # sectors never written decrypt to noise


@pytest.mark.parametrize("enc", [
    ENC % "UUID",
    "<encryption format='luks'/>",
    "<encryption format='luks'><secret type='passphrase' uuid='UUID'/>"
    "<secret type='passphrase' uuid='UUID'/></encryption>",
])
def test_encryption_errors_same_as_virsh(peer, enc):
    s = Sides(peer)
    s.same("pool-create-as", s.pool, "dir", "--target", "@/p", "--build")
    s.same("vol-create", s.pool, s.file("vol.xml", VOL_XML.format(
        name="e", fmt="raw", enc=enc.replace("UUID", s.uuid(9)))))
    s.same("vol-list", s.pool)
    s.same("pool-destroy", s.pool)


def test_secret_without_value(peer):
    s = Sides(peer)
    s.same("secret-define", s.file("s.xml", SECRET_XML.format(
        priv="no", uuid=s.uuid(1), type="volume", elem="volume", id="@/y")))
    s.same("pool-create-as", s.pool, "dir", "--target", "@/p", "--build")
    s.same("vol-create", s.pool, s.file("vol.xml", VOL_XML.format(
        name="e", fmt="raw", enc=ENC % s.uuid(1))))
    s.same("pool-destroy", s.pool)
    s.same("secret-undefine", s.uuid(1))


def test_encrypted_copies_same_as_virsh(peer, tmp_path):
    """vol-create-from a plain volume into a LUKS one, vol-clone of a LUKS
    volume (the clone keeps its source's secret), vol-create-from a LUKS
    raw volume into LUKS in qcow2 with another secret and from that into
    a plain volume: the same outputs as virsh, and every copy decrypts
    (qemu-img with the secret's passphrase) to the plain source."""
    s = Sides(peer)
    p = s.pool
    s.same("secret-define", s.file("s1.xml", SECRET_XML.format(
        priv="no", uuid=s.uuid(1), type="volume", elem="volume", id="@/p/e")))
    s.same("secret-define", s.file("s2.xml", SECRET_XML.format(
        priv="no", uuid=s.uuid(2), type="volume", elem="volume", id="@/p/q")))
    s.same("secret-set-value", s.uuid(1), "c2VjcmV0")
    s.same("secret-set-value", s.uuid(2), "b3RoZXI=")
    s.same("pool-create-as", p, "dir", "--target", "@/p", "--build")
    data = os.urandom(1 << 20)
    for side in ("l", "v"):
        path = os.path.join(s.dir, side, "p", "plain")
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, 65534, 65534)
    s.same("pool-refresh", p)
    e = s.file("e.xml", VOL_XML.format(name="e", fmt="raw", enc=ENC % s.uuid(1)))
    q = s.file("q.xml", VOL_XML.format(name="q", fmt="qcow2", enc=ENC % s.uuid(2)))
    pl = s.file("pl.xml", VOL_XML.format(name="pl", fmt="raw", enc=""))
    s.same("vol-create-from", p, e, "plain", "--inputpool", p)
    s.same("vol-clone", "e", "ec", "--pool", p)
    s.same("vol-create-from", p, q, "ec", "--inputpool", p)
    s.same("vol-create-from", p, pl, "q", "--inputpool", p)
    for v in ("ec", "q"):
        dump = s.same("vol-dumpxml", v, "--pool", p)[1]
        assert "<secret type='passphrase' uuid='UUID'/>" in dump
    s.same("vol-list", p, "--details")
    # the clone's secret is its source's: found by usage no more
    s.same("pool-refresh", p)
    assert "<secret " not in s.same("vol-dumpxml", "ec", "--pool", p)[1]
    s.same("pool-destroy", p)
    for side in ("l", "v"):
        with open(os.path.join(s.dir, side, "p", "pl"), "rb") as f:
            assert f.read() == data
    v = os.path.join(s.dir, "v", "p")
    for name, fmt, key in (("ec", "raw", "secret"), ("q", "qcow2", "other")):
        r = qemu_open(os.path.join(v, name), fmt, key, tmp_path / name)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / name).read_bytes() == data
    for u in (1, 2):
        s.same("secret-undefine", s.uuid(u))
