# SPDX-License-Identifier: BSD-3-Clause
"""--object secret with vdisk-nbd where qemu-nbd 7.2 uses one: the password
of an encrypted x509 server key (tls-creds-x509 passwordid=), given as
data=, as base64 and as file=; both servers refuse to start without it
or with a wrong id."""
import base64
import os
import shutil
import subprocess

import pytest

from nbd_helpers import VDISK_NBD, Server, run
from test_nbd_server_hostile import make_x509

QEMU_NBD = shutil.which("qemu-nbd")
pytestmark = [
    pytest.mark.skipif(not os.path.exists(VDISK_NBD), reason="vdisk-nbd not built"),
    pytest.mark.skipif(QEMU_NBD is None, reason="qemu-nbd is not installed"),
]
PASSWORD = "s3cret pw"


@pytest.fixture
def pki(tmp_path):
    """x509 files whose server key is encrypted with PASSWORD; the client
    side (CA, client cert and key) in pki + "-client"."""
    d = str(tmp_path / "pki")
    make_x509(d)
    key = os.path.join(d, "server-key.pem")
    p = subprocess.run(["certtool", "--to-p8", "--load-privkey", key, "--password",
                        PASSWORD, "--outfile", key + ".enc"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    os.replace(key + ".enc", key)
    cdir = d + "-client"
    os.makedirs(cdir)
    for f in ("ca-cert.pem", "client-cert.pem", "client-key.pem"):
        shutil.copy(os.path.join(d, f), cdir)
    return d


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "d.img"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p


def server_args(pki, img, secret):
    creds = "tls-creds-x509,id=t0,endpoint=server,dir=%s" % pki
    args = []
    if secret:
        args += ["--object", secret]
        creds += ",passwordid=sec0"
    return args + ["--object", creds, "--tls-creds", "t0", "-f", "raw", "-t", img]


@pytest.mark.parametrize("how", ["data", "base64", "file"])
def test_encrypted_server_key_with_secret(tmp_path, pki, img, how):
    if how == "data":
        secret = "secret,id=sec0,data=" + PASSWORD
    elif how == "base64":
        secret = "secret,id=sec0,format=base64,data=" + base64.b64encode(
            PASSWORD.encode()).decode()
    else:
        f = tmp_path / "pw"
        f.write_text(PASSWORD)
        secret = "secret,id=sec0,file=%s" % f
    uri = "nbds+unix:///?socket=%s&tls-certificates=%s"
    for prog, name in ((VDISK_NBD, "v"), (QEMU_NBD, "q")):
        sock = str(tmp_path / name)
        s = Server(prog, server_args(pki, img, secret), sock=sock)
        try:
            p = run(["nbdinfo", "--size", uri % (sock, pki + "-client")])
            assert p.returncode == 0 and p.stdout.strip() == str(1 << 20), (prog, p.stderr)
        finally:
            assert s.stop() == 0


@pytest.mark.parametrize("secret", [None, "secret,id=other,data=x"],
                         ids=["no-secret", "wrong-id"])
def test_encrypted_server_key_refused_without_secret(tmp_path, pki, img, secret):
    args = ["-k", str(tmp_path / "s")] + server_args(pki, img, secret)
    v = run([VDISK_NBD] + args, timeout=10)
    q = run([QEMU_NBD] + args, timeout=10)
    assert v.returncode == q.returncode == 1
    assert v.stderr == q.stderr.replace("qemu-nbd:", "vdisk-nbd:")
