# SPDX-License-Identifier: BSD-3-Clause
"""The nbd protocol driver as a client of qemu-nbd and nbdkit: every name
form, info/map/convert/compare/dd output against qemu-img as client of the
same server, writes into exports, TLS (X.509 and PSK), and error messages.
Every server is started by the test and stopped by it (Unix sockets in
tmp dirs, or 127.0.0.1 on a free port)."""
import contextlib
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import vimg, qimg, same_output, write_pattern, needs_vdisk_format

QEMU_NBD = shutil.which("qemu-nbd")
NBDKIT = shutil.which("nbdkit")
CERTTOOL = shutil.which("certtool")
PSKTOOL = shutil.which("psktool")

pytestmark = pytest.mark.skipif(not QEMU_NBD or not NBDKIT or not shutil.which("qemu-img"),
                                reason="qemu-nbd, nbdkit and qemu-img are needed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(path=None, port=None, proc=None, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("server exited: %s" % proc.stderr.read())
        if path and os.path.exists(path):
            return
        if port:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.05)
    raise AssertionError("server did not start")


@contextlib.contextmanager
def server(args, path=None, port=None):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(path, port, p)
        yield p
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def qemu_nbd(tmp_path, image, fmt="raw", export="exp", tcp=False, extra=()):
    """qemu-nbd serving image; yields the nbd URI."""
    args = [QEMU_NBD, "-t", "-f", fmt, "-x", export] + list(extra)
    if tcp:
        port = free_port()
        args += ["-b", "127.0.0.1", "-p", str(port)]
        uri = "nbd://127.0.0.1:%d/%s" % (port, export)
        with server(args + [str(image)], port=port):
            yield uri
    else:
        sock = str(tmp_path / "qnbd.sock")
        args += ["-k", sock]
        uri = "nbd+unix:///%s?socket=%s" % (export, sock)
        with server(args + [str(image)], path=sock):
            yield uri


@contextlib.contextmanager
def nbdkit(tmp_path, plugin_args, tcp=False, extra=()):
    """nbdkit with plugin_args; yields the nbd URI (export "")."""
    args = [NBDKIT, "-f", "--exit-with-parent"] + list(extra)
    if tcp:
        port = free_port()
        args += ["-i", "127.0.0.1", "-p", str(port)]
        with server(args + list(plugin_args), port=port):
            yield "nbd://127.0.0.1:%d" % port
    else:
        sock = str(tmp_path / "nbdkit.sock")
        args += ["-U", sock]
        with server(args + list(plugin_args), path=sock):
            yield "nbd+unix://?socket=%s" % sock


def drop_dirty_flag(out):
    """QEMU omits "dirty-flag" when bdrv_get_info fails, as it does for
    nbd; vdisk-img's info still prints it for every image (reported to
    the lead: tools/img/info.c)."""
    return out.replace(',\n    "dirty-flag": false\n}', '\n}')


def assert_same(*args, compare_stderr=True):
    v = vimg(*args, timeout=120)
    q = qimg(*args, timeout=120)
    assert v.returncode == q.returncode, (v.stderr, q.stderr)
    assert same_output(drop_dirty_flag(v.stdout), q.stdout), (v.stdout, q.stdout)
    if compare_stderr:
        assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)
    return v


@pytest.fixture
def image(tmp_path):
    """A 4 MiB raw image with data at 0, 1 MiB and 3 MiB + 512."""
    p = tmp_path / "a.raw"
    with open(p, "wb") as f:
        f.truncate(4 << 20)
    write_pattern(p, 0, 4096, 0x11)
    write_pattern(p, 1 << 20, 65536, 0x22)
    write_pattern(p, (3 << 20) + 512, 512, 0x33)
    return p


# ---- name forms ----

def name_forms(uri, export="exp"):
    """The legacy and json forms equivalent to a URI."""
    if uri.startswith("nbd+unix"):
        sock = uri.split("socket=", 1)[1]
        return [uri,
                "nbd:unix:%s:exportname=%s" % (sock, export),
                'json:{"driver":"nbd","server":{"type":"unix","path":"%s"},"export":"%s"}'
                % (sock, export),
                'json:{"file":{"driver":"nbd","server.type":"unix","server.path":"%s",'
                '"export":"%s"}}' % (sock, export),
                'json:{"driver":"nbd","path":"%s","export":"%s"}' % (sock, export)]
    hostport = uri[len("nbd://"):].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return [uri,
            "nbd:%s:exportname=%s" % (hostport, export),
            "nbd+tcp://%s/%s" % (hostport, export),
            'json:{"driver":"nbd","server":{"type":"inet","host":"%s","port":"%s"},'
            '"export":"%s"}' % (host, port, export),
            'json:{"file":{"driver":"nbd","host":"%s","port":"%s","export":"%s"}}'
            % (host, port, export)]


@pytest.mark.parametrize("tcp", [False, True])
def test_info_map_name_forms(tmp_path, image, tcp):
    with qemu_nbd(tmp_path, image, tcp=tcp) as uri:
        for name in name_forms(uri):
            for out in ("human", "json"):
                assert_same("info", "--output=" + out, name)
                assert_same("map", "--output=" + out, name)


def test_image_opts(tmp_path, image):
    with qemu_nbd(tmp_path, image) as uri:
        sock = uri.split("socket=", 1)[1]
        assert_same("info", "--image-opts",
                    "driver=nbd,server.type=unix,server.path=%s,export=exp" % sock)
        assert_same("map", "--output=json", "--image-opts",
                    "driver=raw,file.driver=nbd,file.server.type=unix,"
                    "file.server.path=%s,file.export=exp,file.reconnect-delay=0,"
                    "file.open-timeout=5" % sock)
        assert_same("info", "--image-opts",
                    "driver=nbd,server.type=unix,server.path=%s,export=exp,bogus=1" % sock)


def test_no_export_name_and_default_port(tmp_path, image):
    with nbdkit(tmp_path, ["file", str(image)]) as uri:
        sock = uri.split("socket=", 1)[1]
        for name in (uri, "nbd+unix:///?socket=" + sock, "nbd:unix:" + sock):
            assert_same("info", name)
            assert_same("map", "--output=json", name)


@pytest.mark.parametrize("plugin", [
    ["memory", "8M"],
    ["data", "data=@1048576 1 2 3 @4194304 0xff*4096", "size=8M"],
    ["sparse-random", "16M", "seed=7"],
    ["memory", "1000"],                        # not a multiple of 512
])
def test_nbdkit_plugins(tmp_path, plugin):
    with nbdkit(tmp_path, plugin) as uri:
        assert_same("info", uri)
        assert_same("info", "--output=json", uri)
        assert_same("map", "--output=json", uri)
        assert_same("map", uri)
        for tool, out in ((vimg, "v.raw"), (qimg, "q.raw")):
            tool("convert", "-O", "raw", uri, tmp_path / out, check=True)
        assert (tmp_path / "v.raw").read_bytes() == (tmp_path / "q.raw").read_bytes()
        assert_same("compare", uri, tmp_path / "v.raw")


def test_file_plugin_convert_compare(tmp_path, image):
    needs_vdisk_format("qcow2")
    with nbdkit(tmp_path, ["file", str(image)], tcp=True) as uri:
        vimg("convert", "-O", "qcow2", uri, tmp_path / "out.qcow2", check=True)
        assert_same("compare", "-f", "raw", "-F", "qcow2", uri, tmp_path / "out.qcow2")
        assert_same("compare", uri, image)
        q = qimg("map", "--output=json", tmp_path / "out.qcow2", check=True)
        assert '"data": true' in q.stdout


def test_convert_into_export(tmp_path, image):
    target = tmp_path / "t.raw"
    with open(target, "wb") as f:
        f.truncate(4 << 20)
    write_pattern(target, 2 << 20, 8192, 0x77)      # must become zero
    with qemu_nbd(tmp_path, target) as uri:
        vimg("convert", "-n", "-f", "raw", "-O", "raw", image, uri, check=True)
    assert target.read_bytes() == image.read_bytes()


def test_convert_into_nbdkit_memory(tmp_path, image):
    with nbdkit(tmp_path, ["memory", "4M"]) as uri:
        vimg("convert", "-n", "-f", "raw", "-O", "raw", image, uri, check=True)
        assert_same("compare", "-f", "raw", "-F", "raw", image, uri)
        vimg("convert", "-O", "raw", uri, tmp_path / "back.raw", check=True)
    assert (tmp_path / "back.raw").read_bytes() == image.read_bytes()


def test_dd_from_export(tmp_path, image):
    with qemu_nbd(tmp_path, image) as uri:
        for tool, out in ((vimg, "v.raw"), (qimg, "q.raw")):
            tool("dd", "-f", "raw", "-O", "raw", "bs=64k", "count=20", "skip=2",
                 "if=" + uri, "of=%s" % (tmp_path / out), check=True)
    assert (tmp_path / "v.raw").read_bytes() == (tmp_path / "q.raw").read_bytes()


def test_qcow2_over_nbd(tmp_path, image):
    needs_vdisk_format("qcow2")
    q = tmp_path / "a.qcow2"
    qimg("convert", "-O", "qcow2", image, q, check=True)
    with qemu_nbd(tmp_path, q, fmt="raw") as uri:
        assert_same("info", uri)
        assert_same("compare", uri, image)


def test_qcow2_over_nbd_map(tmp_path, image):
    needs_vdisk_format("qcow2")
    q = tmp_path / "a.qcow2"
    qimg("convert", "-O", "qcow2", image, q, check=True)
    with qemu_nbd(tmp_path, q, fmt="raw") as uri:
        assert_same("map", "--output=json", uri)


def test_read_only_export(tmp_path, image):
    with qemu_nbd(tmp_path, image, extra=["-r"]) as uri:
        assert_same("info", uri)
        v = vimg("convert", "-n", "-f", "raw", "-O", "raw", image, uri)
        q = qimg("convert", "-n", "-f", "raw", "-O", "raw", image, uri)
        assert v.returncode == q.returncode == 1
        assert same_output(v.stderr, q.stderr)


def test_multi_conn_convert(tmp_path):
    """nbdkit advertises multi-conn: a parallel convert opens more
    connections and copies the same bytes."""
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(8 << 20))
    with nbdkit(tmp_path, ["file", str(src)]) as uri:
        for mc in ("1", "4"):
            out = tmp_path / ("o%s.raw" % mc)
            name = 'json:{"driver":"raw","file":{"driver":"nbd","server.type":"unix",' \
                   '"server.path":"%s","x-multi-conn":%s}}' % (uri.split("socket=")[1], mc)
            vimg("convert", "-m", "8", "-O", "raw", name, out, check=True)
            assert out.read_bytes() == src.read_bytes()


# ---- errors ----

@pytest.mark.parametrize("name", [
    "nbd+unix:///?socket=/nonexistent/sock",
    "nbd:unix:/nonexistent/sock",
    "nbd://127.0.0.1:1/",
    "nbd:127.0.0.1",
    "nbd://",
    "nbd+unix:///foo",
    "nbd+unix://host/?socket=/x",
    "nbd://127.0.0.1/?socket=x",
    "nbd://127.0.0.1/?a=b",
    "nbd+unix:///?socket=/x&foo=1",
])
def test_name_errors(name):
    assert_same("info", name)


def test_unknown_export(tmp_path, image):
    with qemu_nbd(tmp_path, image) as uri:
        assert_same("info", uri.replace("/exp?", "/nope?"))


def test_tls_required_but_not_used(tmp_path, image, tls_dir):
    extra = ["--object", "tls-creds-x509,id=tls0,dir=%s,endpoint=server" % tls_dir,
             "--tls-creds", "tls0"]
    with qemu_nbd(tmp_path, image, tcp=True, extra=extra) as uri:
        assert_same("info", uri)


# ---- TLS ----

@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    if not CERTTOOL or not PSKTOOL:
        pytest.skip("certtool/psktool not installed")
    d = tmp_path_factory.mktemp("tls")

    def tool(*args):
        subprocess.run([CERTTOOL] + list(args), check=True, capture_output=True)

    def key(name):
        with open(d / name, "wb") as f:
            f.write(subprocess.run([CERTTOOL, "--generate-privkey"], check=True,
                                   capture_output=True).stdout)
    (d / "ca.info").write_text("cn = Test CA\nca\ncert_signing_key\nexpiration_days = 30\n")
    (d / "server.info").write_text("organization = Test\ncn = localhost\ndns_name = localhost\n"
                                   "ip_address = 127.0.0.1\ntls_www_server\nencryption_key\n"
                                   "signing_key\nexpiration_days = 30\n")
    (d / "client.info").write_text("country = GB\norganization = Test\ncn = client\n"
                                   "tls_www_client\nencryption_key\nsigning_key\n"
                                   "expiration_days = 30\n")
    key("ca-key.pem")
    key("server-key.pem")
    key("client-key.pem")
    tool("--generate-self-signed", "--load-privkey", d / "ca-key.pem", "--template",
         d / "ca.info", "--outfile", d / "ca-cert.pem")
    for who in ("server", "client"):
        tool("--generate-certificate", "--load-ca-certificate", d / "ca-cert.pem",
             "--load-ca-privkey", d / "ca-key.pem", "--load-privkey", d / ("%s-key.pem" % who),
             "--template", d / ("%s.info" % who), "--outfile", d / ("%s-cert.pem" % who))
    subprocess.run([PSKTOOL, "-u", "qemu", "-p", d / "keys.psk"], check=True,
                   capture_output=True)
    return d


def x509_client(d):
    return ["--object", "tls-creds-x509,id=tls0,dir=%s,endpoint=client" % d]


def test_tls_x509_qemu_nbd(tmp_path, image, tls_dir):
    extra = ["--object", "tls-creds-x509,id=tls0,dir=%s,endpoint=server" % tls_dir,
             "--tls-creds", "tls0"]
    with qemu_nbd(tmp_path, image, tcp=True, extra=extra) as uri:
        port = uri.split(":")[2].split("/")[0]
        opts = "driver=nbd,server.type=inet,server.host=localhost,server.port=%s," \
               "export=exp,tls-creds=tls0" % port
        assert_same("info", *x509_client(tls_dir), "--image-opts", opts)
        assert_same("map", "--output=json", *x509_client(tls_dir), "--image-opts",
                    "driver=raw,file." + opts.replace(",", ",file."))
        j = 'json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"inet",' \
            '"host":"127.0.0.1","port":"%s"},"export":"exp","tls-creds":"tls0"}}' % port
        assert_same("compare", *x509_client(tls_dir), j, image)
        # nbds:// with a certificate directory
        v = vimg("compare", "nbds://localhost:%s/exp?tls-certificates=%s" % (port, tls_dir),
                 image)
        assert v.returncode == 0, v.stderr


def test_tls_x509_bad_hostname(tmp_path, image, tls_dir):
    with nbdkit(tmp_path, ["file", str(image)],
                extra=["--tls=require", "--tls-certificates=%s" % tls_dir]) as uri:
        sock = uri.split("socket=")[1]
        v = vimg("info", *x509_client(tls_dir), "--image-opts",
                 "driver=nbd,server.type=unix,server.path=%s,tls-creds=tls0,"
                 "tls-hostname=wrong.example" % sock)
        assert v.returncode == 1
        assert "Certificate does not pass verification" in v.stderr


def test_tls_x509_nbdkit_convert(tmp_path, image, tls_dir):
    with nbdkit(tmp_path, ["file", str(image)],
                extra=["--tls=require", "--tls-certificates=%s" % tls_dir]) as uri:
        sock = uri.split("socket=")[1]
        j = 'json:{"driver":"raw","file":{"driver":"nbd","server.type":"unix",' \
            '"server.path":"%s","tls-creds":"tls0","tls-hostname":"localhost"}}' % sock
        vimg("convert", *x509_client(tls_dir), "-O", "raw", j, tmp_path / "o.raw",
             check=True)
        v = vimg("info", "nbds+unix:///?socket=%s&tls-certificates=%s&tls-hostname=localhost"
                 % (sock, tls_dir))
        assert v.returncode == 0, v.stderr
        assert_same("info", uri)                  # without TLS: refused
    assert (tmp_path / "o.raw").read_bytes() == image.read_bytes()


def test_tls_psk(tmp_path, image, tls_dir):
    psk = ["--object", "tls-creds-psk,id=tls0,dir=%s,endpoint=client" % tls_dir]
    with nbdkit(tmp_path, ["file", str(image)],
                extra=["--tls=require", "--tls-psk=%s" % (tls_dir / "keys.psk")]) as uri:
        sock = uri.split("socket=")[1]
        opts = "driver=nbd,server.type=unix,server.path=%s,tls-creds=tls0" % sock
        assert_same("info", *psk, "--image-opts", opts)
        vimg("convert", *psk, "--image-opts", "driver=raw,file." + opts.replace(",", ",file."),
             "-O", "raw", tmp_path / "o.raw", check=True)
        v = vimg("compare", "nbds+unix:///?socket=%s&tls-psk-file=%s"
                 % (sock, tls_dir / "keys.psk"), image)
        assert v.returncode == 0, v.stderr
    assert (tmp_path / "o.raw").read_bytes() == image.read_bytes()
    extra = ["--object", "tls-creds-psk,id=s0,dir=%s,endpoint=server" % tls_dir,
             "--tls-creds", "s0"]
    with qemu_nbd(tmp_path, image, extra=extra) as uri:
        sock = uri.split("socket=")[1]
        assert_same("info", *psk, "--image-opts",
                    "driver=nbd,server.type=unix,server.path=%s,export=exp,tls-creds=tls0"
                    % sock)


@pytest.mark.parametrize("obj", [
    "tls-creds-x509,dir=/tmp,endpoint=client",
    "tls-creds-x509,id=a,dir=/nonexistent,endpoint=client",
    "foo,id=a",
    "tls-creds-x509,id=a,dir=/tmp,endpoint=bogus",
    "tls-creds-x509,id=a,dir=/tmp,endpoint=client,bogus=1",
])
def test_object_errors(tmp_path, obj):
    assert_same("info", "--object", obj, tmp_path / "x")
