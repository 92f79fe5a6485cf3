# SPDX-License-Identifier: BSD-3-Clause
"""The http, https, ftp and ftps protocol drivers against real servers
(nginx, vsftpd) started on loopback for the session: info, map, convert and
compare against qemu-img 7.2 (qemu-block-extra's curl driver) on the same
URLs, QEMU's messages for refused opens, and hostile or flaky web servers
(a small Python server) for retries and answer checks.  QEMU 7.2 hangs on
ftps here, so ftps is checked against the data and against qemu-img's
output over plain ftp."""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import vimg, vimg_traced, qimg, same_output, QEMU_IMG
from http_server import Nginx, Vsftpd, FaultServer, NGINX, VSFTPD, OPENSSL

SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))


def _have_curl_driver():
    return "http" in vimg("--help").stdout.split("Supported formats:")[-1].split()


pytestmark = [
    pytest.mark.skipif(not QEMU_IMG or not shutil.which("qemu-io"),
                       reason="qemu-img and qemu-io are needed"),
    pytest.mark.skipif(not (os.access(NGINX, os.X_OK) and os.access(VSFTPD, os.X_OK) and OPENSSL),
                       reason="nginx, vsftpd and openssl are needed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="vsftpd needs root to start"),
]


@pytest.fixture(scope="session")
def curl_driver():
    if not _have_curl_driver():
        pytest.skip("vdisk-img was built without libcurl")


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A raw image with data, zeroes and holes, and the same as qcow2."""
    d = tmp_path_factory.mktemp("curl-images")
    raw, qcow2 = str(d / "disk.raw"), str(d / "disk.qcow2")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "raw", raw, "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 192k",
                    "-c", "write -P 0xa5 1M 1536k", "-c", "write -P 0x11 3M 4k", raw],
                   check=True, capture_output=True)
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    return {"raw": raw, "qcow2": qcow2}


@pytest.fixture(scope="session")
def web(tmp_path_factory, images):
    d = str(tmp_path_factory.mktemp("nginx"))
    s = Nginx(d)
    for fmt, path in images.items():
        s.put("disk." + fmt, path)
    for sub in ("norange", "auth", "cookie"):
        s.put(sub + "/disk.raw", images["raw"])
    yield s
    s.stop()


@pytest.fixture(scope="session")
def web_debian(tmp_path_factory, images):
    """nginx set up as Debian's nginx.conf does (a worker per processor,
    sendfile): the benchmark's server."""
    s = Nginx(str(tmp_path_factory.mktemp("nginx-debian")), debian_defaults=True)
    s.put("disk.qcow2", images["qcow2"])
    yield s
    s.stop()


@pytest.fixture(scope="session")
def ftp(tmp_path_factory, images):
    d = str(tmp_path_factory.mktemp("vsftpd"))
    s = Vsftpd(d)
    for fmt, path in images.items():
        s.put("disk." + fmt, path)
    yield s
    s.stop()


def name_for(proto, web, ftp, fmt):
    """The name qemu-img and vdisk-img are given for the image on proto."""
    if proto == "http":
        return web.url("disk." + fmt)
    if proto == "ftp":
        return ftp.url("disk." + fmt)
    url = web.url("disk." + fmt, tls=True) if proto == "https" else ftp.url("disk." + fmt, True)
    return json.dumps({"file.driver": proto, "file.url": url, "file.sslverify": "off"})


def json_name(name):
    return "json:" + name if name.startswith("{") else name


def qref(*args, timeout=60):
    """qemu-img as the reference.  Its curl driver (socket-action interface)
    now and then stalls on an FTP transfer until its 5 s timeout: such a
    run is repeated (up to three times), as it says nothing of vdisk."""
    for _ in range(3):
        q = qimg(*args, timeout=timeout)
        if q.returncode == 0 or "Operation timed out" not in q.stderr:
            break
    return q


PROTOS = ["http", "https", "ftp"]
FMTS = ["raw", "qcow2"]


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("out", ["human", "json"])
def test_info_same_as_qemu(curl_driver, web, ftp, proto, fmt, out):
    name = json_name(name_for(proto, web, ftp, fmt))
    v = vimg("info", "--output=" + out, name, timeout=60)
    q = qref("info", "--output=" + out, name)
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("out", ["human", "json"])
def test_map_same_as_qemu(curl_driver, web, ftp, proto, fmt, out):
    name = json_name(name_for(proto, web, ftp, fmt))
    v = vimg("map", "--output=" + out, name, timeout=60)
    q = qref("map", "--output=" + out, name)
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("proto", PROTOS)
def test_convert_same_as_qemu(curl_driver, web, ftp, images, tmp_path, proto, fmt):
    name = json_name(name_for(proto, web, ftp, fmt))
    vout, qout = str(tmp_path / "v.raw"), str(tmp_path / "q.raw")
    v = vimg("convert", "-O", "raw", name, vout, timeout=120)
    # qemu-img 7.2 can hang on parallel http reads here: one request at a time.
    q = qref("convert", "-m", "1", "-O", "raw", name, qout, timeout=120)
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout
    assert read(vout) == read(qout) == read(images["raw"])


@pytest.mark.parametrize("fmt", FMTS)
def test_ftps(curl_driver, web, ftp, images, tmp_path, fmt):
    """ftps (implicit TLS) reads, checked against the data and against
    qemu-img's info over plain ftp of the same file."""
    url = ftp.url("disk." + fmt, tls=True)
    name = json_name(name_for("ftps", web, ftp, fmt))
    out = str(tmp_path / "out.raw")
    v = vimg("convert", "-O", "raw", name, out, timeout=120)
    assert v.returncode == 0, v.stderr
    assert read(out) == read(images["raw"])
    v = vimg("info", "--output=json", name, timeout=60)
    q = qref("info", "--output=json", ftp.url("disk." + fmt))
    assert v.returncode == 0 and q.returncode == 0, v.stderr + q.stderr
    expect = json.loads(q.stdout)
    expect["filename"] = json.dumps({"driver": fmt, "file": {"url": url, "driver": "ftps",
                                                               "sslverify": "off"}})
    expect["filename"] = "json:" + expect["filename"]
    assert json.loads(v.stdout) == expect
    v = vimg("compare", name, images[fmt], timeout=60)
    assert v.returncode == 0 and v.stdout == "Images are identical.\n", v.stderr


def test_compare_across_protocols(curl_driver, web, ftp, images):
    v = vimg("compare", web.url("disk.raw"), ftp.url("disk.qcow2"), timeout=60)
    q = qref("compare", web.url("disk.raw"), ftp.url("disk.qcow2"))
    assert (v.returncode, v.stdout) == (q.returncode, q.stdout) == (0, "Images are identical.\n")


def last_line(text):
    """The last line, without libcurl's elapsed time ("after 3 ms")."""
    return re.sub(r"after \d+ ms", "after N ms", text.splitlines()[-1])


def same_error(args, timeout=60):
    """Both fail with the same last line and status (qemu-img may print
    GLib warnings first)."""
    v = vimg(*args, timeout=timeout)
    q = qimg(*args, timeout=timeout)
    assert q.returncode != 0
    assert v.returncode == q.returncode, v.stderr
    assert same_output(last_line(v.stderr), last_line(q.stderr)), (v.stderr, q.stderr)
    return v


def test_no_range_support_refused(curl_driver, web):
    v = same_error(["info", web.url("norange/disk.raw")])
    assert "Server does not support 'range' (byte ranges)." in v.stderr


def test_missing_file(curl_driver, web, ftp):
    same_error(["info", web.url("missing.raw")])
    same_error(["info", ftp.url("missing.raw")])


def test_https_certificate_verified(curl_driver, web):
    v = same_error(["info", web.url("disk.raw", tls=True)])
    assert "certificate" in v.stderr


def test_unreachable_server(curl_driver):
    from http_server import free_port
    same_error(["info", "http://127.0.0.1:%d/disk.raw" % free_port()])


@pytest.mark.parametrize("cmd", [["resize", "-f", "raw", "{}", "8M"],
                                 ["snapshot", "-c", "s1", "{}"]])
def test_writes_refused(curl_driver, web, cmd):
    url = web.url("disk.raw" if cmd[0] == "resize" else "disk.qcow2")
    v = same_error([url if a == "{}" else a for a in cmd])
    assert "curl driver does not support writes" in v.stderr


@pytest.mark.parametrize("opts", [
    "readahead=100", "timeout=10001", "", "cookie=a,cookie-secret=b",
    "password-secret=nosuch", "bogus=1", "sslverify=maybe",
])
def test_option_errors(curl_driver, web, opts):
    spec = "driver=http" + ("," + opts if opts else "")
    if opts != "":
        spec += ",url=" + web.url("disk.raw")
    same_error(["info", "--image-opts", spec])


def test_url_scheme_must_match_driver(curl_driver, web):
    same_error(["info", "--image-opts", "driver=ftp,url=" + web.url("disk.raw")])


def test_name_with_strong_options(curl_driver, web):
    """Options QEMU does not take as implied by the URL make a json: name
    in QEMU's key order; readahead and timeout do not."""
    url = web.url("disk.raw")
    for spec in ["driver=raw,file.driver=http,file.url=%s,file.readahead=64k,file.timeout=9",
                 "driver=raw,file.driver=http,file.url=%s,file.cookie=a=b,file.username=u,"
                 "file.password-secret=pw,file.proxy-username=p,file.sslverify=on",
                 "driver=http,url=%s,cookie-secret=pw"]:
        args = ["info", "--object", "secret,id=pw,data=c2VjcmV0", "--image-opts", spec % url]
        v, q = vimg(*args, timeout=60), qimg(*args, timeout=60)
        assert q.returncode == 0, q.stderr
        assert v.returncode == 0, v.stderr
        assert v.stdout == q.stdout


# ---- a scripted web server: retries, hostile answers ----

@pytest.fixture
def data():
    return bytes((i * 7 + i // 4096) & 0xff for i in range(3 << 20))


def convert(url, tmp_path, *extra, timeout=120):
    out = str(tmp_path / "out.raw")
    return vimg("convert", *extra, "-f", "raw", "-O", "raw", url, out, timeout=timeout), out


@pytest.mark.parametrize("faults", [
    {"GET": [(2, "drop")]},
    {"GET": [(2, "503")]},
    {"GET": [(1, "drop"), (2, "503"), (3, "drop"), (4, "short")]},
])
def test_retry_mid_convert(curl_driver, tmp_path, data, faults):
    s = FaultServer(data, faults)
    try:
        v, out = convert(s.url(), tmp_path)
        assert v.returncode == 0, v.stderr
        assert read(out) == data
    finally:
        s.stop()


def test_parallel_requests(curl_driver, tmp_path, data):
    """A convert has several range requests in flight at once."""
    s = FaultServer(data, gather=2)
    try:
        v, out = convert(s.url(), tmp_path)
        assert v.returncode == 0, v.stderr
        assert read(out) == data
        assert s.max_inflight >= 2
    finally:
        s.stop()


def test_receives_in_large_pieces(curl_driver, web, images, tmp_path):
    """libcurl receives into a 128 KiB buffer, not its default 16 KiB (a
    receive and a poll per 16 KiB cost a convert from nginx a third of its
    time): the receives of a convert ask for up to 128 KiB (less when
    less of the answer is left; 64 bytes drain libcurl's wake-up socket)."""
    log, out = tmp_path / "strace.log", tmp_path / "out.raw"
    p = vimg_traced(log, "recvfrom", "convert", "-f", "raw", "-O", "raw", web.url("disk.raw"),
                    out, timeout=120)
    assert p.returncode == 0, p.stderr
    assert read(out) == read(images["raw"])
    sizes = [int(m) for m in re.findall(r"recvfrom\(\d+, [^,]*, (\d+),", log.read_text())]
    assert sizes and max(sizes) == 128 << 10, sorted(set(sizes))


@pytest.mark.parametrize("kind", ["503", "drop", "wrong-range", "short", "long",
                                  "no-range", "redirect"])
def test_hostile_answers(curl_driver, tmp_path, data, kind):
    """A server that keeps answering wrong: convert fails as qemu-img does
    on a read error, nothing hangs."""
    s = FaultServer(data, {"GET": [(2, "always:" + kind)]})
    try:
        v, _ = convert(s.url(), tmp_path, timeout=90)
        assert v.returncode == 1, v.stderr
        assert v.stderr.startswith("vdisk-img: error while reading at byte "), v.stderr
        assert v.stderr.endswith(": Input/output error\n"), v.stderr
    finally:
        s.stop()


def test_redirect_loop_at_open(curl_driver, data):
    s = FaultServer(data, {"HEAD": [(1, "always:redirect")]})
    try:
        v = vimg("info", s.url(), timeout=60)
        assert v.returncode == 1
        assert "Could not open" in v.stderr and "redirects" in v.stderr, v.stderr
    finally:
        s.stop()


def test_no_size_refused(curl_driver, data):
    s = FaultServer(data, length=-1)
    try:
        v = vimg("info", s.url(), timeout=60)
        assert v.returncode == 1
        assert v.stderr.endswith("CURL: Error opening file: Server didn't report file size.\n")
    finally:
        s.stop()


def test_huge_content_length(curl_driver, tmp_path, data):
    """A size far beyond the body: info reports it, reads past the body fail
    cleanly."""
    s = FaultServer(data, length=1 << 60)
    try:
        v = vimg("info", "--output=json", s.url(), timeout=60)
        assert v.returncode == 0, v.stderr
        assert json.loads(v.stdout)["virtual-size"] == 1 << 60
        local = tmp_path / "data.raw"
        local.write_bytes(data)
        v = vimg("compare", "-f", "raw", "-F", "raw", s.url(), str(local), timeout=90)
        assert v.returncode == 4, v.stdout + v.stderr
        assert "Input/output error" in v.stderr, v.stderr
    finally:
        s.stop()


@pytest.mark.parametrize("proto", ["http", "ftp"])
def test_nbd_export_of_http_image(curl_driver, web, ftp, images, tmp_path, proto):
    """vdisk-nbd serves a qcow2 image that lives on a web or FTP server;
    nbdcopy reads the guest data back."""
    import nbd_helpers
    if not shutil.which("nbdcopy", path="/usr/bin"):
        pytest.skip("nbdcopy is not installed")
    sock = str(tmp_path / "nbd.sock")
    srv = nbd_helpers.Server(nbd_helpers.VDISK_NBD,
                             ["-r", "-f", "qcow2", name_for(proto, web, ftp, "qcow2")],
                             sock=sock)
    try:
        out = str(tmp_path / "out.raw")
        r = nbd_helpers.run(["nbdcopy", srv.uri(), out])
        assert r.returncode == 0, r.stderr
    finally:
        srv.stop()
    assert read(out) == read(images["raw"])


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_create_refused(curl_driver, web, ftp, fmt):
    """create and convert onto a read-only protocol: qemu-img's refusal."""
    for url in (web.url("new." + fmt), ftp.url("new." + fmt)):
        v = vimg("create", "-f", fmt, url, "1M", timeout=60)
        q = qimg("create", "-f", fmt, url, "1M", timeout=60)
        assert (v.returncode, v.stdout) == (q.returncode, q.stdout) == (1, "")
        assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)


def test_stalled_server_times_out(curl_driver, tmp_path, data):
    """A server that stops sending mid-answer: the read fails after the
    timeout (1 s here, no retries) instead of hanging."""
    s = FaultServer(data, {"GET": [(2, "always:stall")]})
    try:
        name = "json:" + json.dumps({"driver": "raw", "file.driver": "http", "file.url": s.url(),
                                     "file.timeout": "1", "file.x-retries": "0"})
        v, _ = convert(name, tmp_path, timeout=60)
        assert v.returncode == 1, v.stderr
        assert "error while reading at byte" in v.stderr, v.stderr
    finally:
        s.stop()


@pytest.mark.parametrize("proto", ["http", "http-debian", "https", "ftps"])
def test_repeated_parallel_converts(curl_driver, web, web_debian, ftp, images, tmp_path, proto):
    """Parallel converts (-m 8) done again and again never hang and always
    give the data.  qemu-img 7.2's hang over http: now and then from the
    tests' nginx, in 7 of 7 benchmark runs from nginx as Debian sets it up
    (bench/net/http)."""
    if proto == "http-debian":
        name = web_debian.url("disk.qcow2")
    else:
        name = json_name(name_for(proto, web, ftp, "qcow2"))
    out = str(tmp_path / "out.raw")
    runs = {"http": 12, "http-debian": 12, "https": 6, "ftps": 3}[proto]
    for _ in range(3 if SANITIZED else runs):
        v = vimg("convert", "-m", "8", "-O", "raw", name, out, timeout=60)
        assert v.returncode == 0, v.stderr
        assert read(out) == read(images["raw"])


@pytest.mark.parametrize("opts,ok", [
    ("url={auth},username=user,password-secret=good", True),
    ("url={auth},username=user,password-secret=bad", False),
    ("url={auth}", False),
    ("url={cookie},cookie=session=abc", True),
    ("url={cookie},cookie-secret=cookie", True),
    ("url={cookie},cookie=session=xyz", False),
])
def test_credentials(curl_driver, web, opts, ok):
    """Basic authentication and cookies, secrets from --object secret:
    the same image name, or the same refusal, as qemu-img."""
    spec = "driver=http," + opts.format(auth=web.url("auth/disk.raw"),
                                        cookie=web.url("cookie/disk.raw"))
    args = ["info", "--object", "secret,id=good,data=secret",
            "--object", "secret,id=bad,data=wrong",
            "--object", "secret,id=cookie,data=c2Vzc2lvbj1hYmM=,format=base64",
            "--image-opts", spec]
    if not ok:
        v = same_error(args)
        assert "The requested URL returned error: 40" in v.stderr
        return
    v, q = vimg(*args, timeout=60), qimg(*args, timeout=60)
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout
