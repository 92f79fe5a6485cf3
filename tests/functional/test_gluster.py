# SPDX-License-Identifier: BSD-3-Clause
"""The gluster protocol driver against a real glusterd with a one-brick
volume on loopback: info, map, convert both ways, compare and create
against qemu-img 7.2 (qemu-block-extra's gluster driver) on the same
volume, the URL and JSON forms, QEMU's messages for bad names, missing
volumes and files, a brick killed in the middle of a convert, and vdisk-nbd
serving an image that lives on the volume.

Every qemu-img run over gluster takes ten seconds or more (libgfapi's
teardown), so the reference runs are started together once per module
(the ref fixture) and the tests compare against their results."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import vimg, qimg, same_output, QEMU_IMG, VDISK_IMG
import gluster_server

SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))
QEMU_TIMEOUT = 120
# libgfapi's log lines; qemu-img writes its messages in pieces, so one may
# land in the middle of a message line.
LOGLINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ [+-]\d{4}\] [A-Z] \[[^\n]*\n")


def _have_driver():
    return "gluster" in vimg("--help").stdout.split("Supported formats:")[-1].split()


pytestmark = [
    pytest.mark.xdist_group("gluster"),
    # Their time is glusterd's and qemu-img's: once per make check, in the
    # sanitized pass (conftest.py).
    pytest.mark.once,
    pytest.mark.skipif(not QEMU_IMG or not shutil.which("qemu-io"),
                       reason="qemu-img and qemu-io are needed"),
]


@pytest.fixture(scope="session")
def gluster():
    if not _have_driver():
        pytest.skip("vdisk-img was built without libgfapi (libglusterfs-dev)")
    try:
        s = gluster_server.Shared()
    except gluster_server.Unavailable as e:
        pytest.skip("glusterd cannot start: %s" % e)
    yield s
    s.release()


@pytest.fixture(scope="module", autouse=True)
def sanitizer_preload():
    """Under ASan, libtirpc must be loaded when the program starts: ASan's
    xdr_* interceptors look the real functions up once, at start, and
    libgfapi's libtirpc only comes later with the gluster module (then its
    xdr calls jump to address 0).  OpenSSL state libgfapi loses is not
    reported (gluster-lsan.supp)."""
    if not SANITIZED:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        pre = os.environ.get("LD_PRELOAD")
        mp.setenv("LD_PRELOAD", "libtirpc.so.3" + (" " + pre if pre else ""))
        mp.setenv("ASAN_OPTIONS", os.environ.get("ASAN_OPTIONS", "") +
                  ":verify_asan_link_order=0")
        supp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gluster-lsan.supp")
        lsan = os.environ.get("LSAN_OPTIONS")
        mp.setenv("LSAN_OPTIONS", (lsan + ":" if lsan else "") + "suppressions=" + supp +
                   ":print_suppressions=0")
        yield


def strip_logs(text):
    """Without libgfapi's own log lines (qemu-img lets them through)."""
    return LOGLINE.sub("", text)


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A raw image with data, zeroes and holes, and the same as qcow2."""
    d = tmp_path_factory.mktemp("gluster-images")
    raw, qcow2 = str(d / "disk.raw"), str(d / "disk.qcow2")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "raw", raw, "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 192k",
                    "-c", "write -P 0xa5 1M 1536k", "-c", "write -P 0x11 3M 4k", raw],
                   check=True, capture_output=True)
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    return {"raw": raw, "qcow2": qcow2, "dir": str(d)}


class Ref:
    """qemu-img runs started together; .get(key) waits for one."""

    def __init__(self):
        self.procs = {}
        self.done = {}

    def start(self, key, *args):
        self.procs[key] = subprocess.Popen([QEMU_IMG] + [str(a) for a in args],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)

    def get(self, key):
        if key not in self.done:
            p = self.procs[key]
            try:
                out, err = p.communicate(timeout=QEMU_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            self.done[key] = subprocess.CompletedProcess(p.args, p.returncode, out,
                                                         strip_logs(err))
        return self.done[key]

    def finish(self):
        for key in list(self.procs):
            self.get(key)


def uniq(name):
    """A file name no other test process uses on the shared volume."""
    return "%d-%s" % (os.getpid(), name)


def json_form(gluster, path, fmt):
    return "json:" + json.dumps({"driver": fmt, "file": {
        "driver": "gluster", "volume": gluster.volume, "path": path,
        "server": [{"type": "tcp", "host": "127.0.0.1", "port": "24007"}]}},
        separators=(",", ":"))


def unix_form(gluster, path):
    return "gluster+unix:///%s/%s?socket=%s" % (gluster.volume, path, gluster.server.sock)


@pytest.fixture(scope="module")
def names(gluster, images):
    """The test images, put on the volume by vdisk-img and checked by
    qemu-img in the ref runs."""
    n = {fmt: uniq("disk." + fmt) for fmt in ("raw", "qcow2")}
    for fmt in ("raw", "qcow2"):
        r = vimg("convert", "-f", fmt, "-O", fmt, images[fmt], gluster.url(n[fmt]),
                 timeout=120)
        assert r.returncode == 0, r.stderr
        r = vimg("convert", "-f", "raw", "-O", fmt, images["raw"],
                 gluster.url(uniq("vdisk-made." + fmt)), timeout=120)
        assert r.returncode == 0, r.stderr
        # qemu-img's convert target, made here: with -n qemu-img opens it
        # once (one libgfapi teardown, not two)
        r = vimg("create", "-f", fmt, gluster.url(uniq("qemu-made." + fmt)), "4M")
        assert r.returncode == 0, r.stderr
    return n


@pytest.fixture(scope="module")
def ref(gluster, images, names):
    """Every qemu-img reference run of this module, started at once."""
    rf = Ref()
    u = {fmt: gluster.url(names[fmt]) for fmt in names}
    for fmt in ("raw", "qcow2"):
        for out in ("human", "json"):
            rf.start(("info", fmt, out), "info", "--output=" + out, u[fmt])
            rf.start(("map", fmt, out), "map", "--output=" + out, u[fmt])
        rf.start(("compare", fmt), "compare", images["raw"], u[fmt])
    rf.start(("info-json-form",), "info", json_form(gluster, names["raw"], "raw"))
    rf.start(("info-unix",), "info", unix_form(gluster, names["qcow2"]))
    rf.start(("convert-from",), "convert", "-O", "raw", u["qcow2"],
             os.path.join(images["dir"], "from-qemu.raw"))
    for fmt in ("raw", "qcow2"):
        rf.start(("convert-to", fmt), "convert", "-n", "-f", "raw", "-O", fmt, images["raw"],
                 gluster.url(uniq("qemu-made." + fmt)))
        rf.start(("compare-vdisk-made", fmt), "compare", "-f", "raw", "-F", fmt,
                 images["raw"], gluster.url(uniq("vdisk-made." + fmt)))
    # raw: qemu-img opens what it created only for other formats
    rf.start(("create",), "create", "-f", "raw", "-o", "preallocation=falloc",
             gluster.url(uniq("qemu-created.raw")), "32M")
    rf.start(("missing-file",), "info", gluster.url(uniq("missing.qcow2")))
    rf.start(("missing-file-json",), "info", json_form(gluster, uniq("missing.raw"), "raw"))
    yield rf
    rf.finish()


@pytest.mark.parametrize("out", ["human", "json"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_info_same_as_qemu(gluster, names, ref, fmt, out):
    v = vimg("info", "--output=" + out, gluster.url(names[fmt]), timeout=60)
    q = ref.get(("info", fmt, out))
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout


@pytest.mark.parametrize("out", ["human", "json"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_map_same_as_qemu(gluster, names, ref, fmt, out):
    v = vimg("map", "--output=" + out, gluster.url(names[fmt]), timeout=60)
    q = ref.get(("map", fmt, out))
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout


def test_info_json_form_same_as_qemu(gluster, names, ref):
    """The json: name with the server list, re-serialised as QEMU does."""
    v = vimg("info", json_form(gluster, names["raw"], "raw"), timeout=60)
    q = ref.get(("info-json-form",))
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout
    assert v.stdout.startswith('image: json:{"driver": "raw", "file": {"server.0.host"')


def test_info_unix_socket_same_as_qemu(gluster, names, ref):
    v = vimg("info", unix_form(gluster, names["qcow2"]), timeout=60)
    q = ref.get(("info-unix",))
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_compare_same_as_qemu(gluster, images, names, ref, fmt):
    v = vimg("compare", images["raw"], gluster.url(names[fmt]), timeout=60)
    q = ref.get(("compare", fmt))
    assert (v.returncode, v.stdout) == (q.returncode, q.stdout) == (0, "Images are identical.\n")


def test_convert_from_gluster(gluster, images, names, ref, tmp_path):
    out = str(tmp_path / "from-vdisk.raw")
    v = vimg("convert", "-O", "raw", gluster.url(names["qcow2"]), out, timeout=120)
    assert v.returncode == 0, v.stderr
    q = ref.get(("convert-from",))
    assert q.returncode == 0, q.stderr
    assert read(out) == read(os.path.join(images["dir"], "from-qemu.raw")) == \
        read(images["raw"])


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_to_gluster(gluster, images, names, ref, fmt):
    """vdisk-img (in the names fixture) and qemu-img each write the image to
    the volume; each reads the other's back as the source."""
    mine = gluster.url(uniq("vdisk-made." + fmt))
    q = ref.get(("convert-to", fmt))
    assert q.returncode == 0, q.stderr
    theirs = gluster.url(uniq("qemu-made." + fmt))
    for target in (mine, theirs):
        r = vimg("compare", "-f", "raw", "-F", fmt, images["raw"], target, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    q2 = ref.get(("compare-vdisk-made", fmt))
    assert q2.returncode == 0, q2.stdout + q2.stderr
    a = vimg("info", "--output=json", mine).stdout
    b = vimg("info", "--output=json", theirs).stdout
    assert json.loads(a)["virtual-size"] == json.loads(b)["virtual-size"]
    assert json.loads(a)["format"] == json.loads(b)["format"] == fmt


def test_create_same_as_qemu(gluster, ref):
    url = gluster.url(uniq("vdisk-created.raw"))
    v = vimg("create", "-f", "raw", "-o", "preallocation=falloc", url, "32M", timeout=60)
    q = ref.get(("create",))
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert same_output(v.stdout, q.stdout.replace("qemu-created", "vdisk-created"))
    theirs = gluster.url(uniq("qemu-created.raw"))
    a = json.loads(vimg("info", "--output=json", url).stdout)
    b = json.loads(vimg("info", "--output=json", theirs).stdout)
    for d in (a, b):
        del d["actual-size"], d["filename"]
    assert a == b


@pytest.mark.parametrize("prealloc", ["off", "falloc", "full"])
def test_create_raw_preallocation(gluster, prealloc):
    url = gluster.url(uniq("pre-%s.raw" % prealloc))
    v = vimg("create", "-f", "raw", "-o", "preallocation=" + prealloc, url, "3M",
             timeout=60)
    assert v.returncode == 0, v.stderr
    assert os.path.getsize(os.path.join(gluster.server.brick_dir(gluster.volume),
                                        uniq("pre-%s.raw" % prealloc))) == 3 << 20


def test_write_resize_discard(gluster, tmp_path):
    """Writes, zeroes, discard and resize through the driver, checked by
    reading the brick's copy of the file."""
    name = uniq("rw.raw")
    url = gluster.url(name)
    assert vimg("create", "-f", "raw", url, "2M").returncode == 0
    local = tmp_path / "pat.raw"
    local.write_bytes(b"\x77" * (1 << 20) + b"\0" * (1 << 20))
    r = vimg("convert", "-n", "-f", "raw", "-O", "raw", str(local), url, timeout=60)
    assert r.returncode == 0, r.stderr
    r = vimg("resize", "-f", "raw", url, "3M", timeout=60)
    assert r.returncode == 0, r.stderr
    brick = os.path.join(gluster.server.brick_dir(gluster.volume), name)
    data = read(brick)
    assert data == b"\x77" * (1 << 20) + b"\0" * (2 << 20)
    r = vimg("compare", "-s", "-f", "raw", "-F", "raw", str(local), url, timeout=60)
    assert r.returncode == 1, r.stdout    # strict: the sizes differ
    r = vimg("resize", "-f", "raw", "--shrink", url, "2M", timeout=60)
    assert r.returncode == 0, r.stderr
    assert read(brick) == read(str(local))


def last_line(text):
    return strip_logs(text).strip().splitlines()[-1]


def same_error(args, q=None):
    """Both fail with the same messages and status."""
    v = vimg(*args, timeout=60)
    if q is None:
        q = qimg(*args, timeout=QEMU_TIMEOUT)
        q = subprocess.CompletedProcess(q.args, q.returncode, q.stdout, strip_logs(q.stderr))
    assert q.returncode != 0
    assert v.returncode == q.returncode, v.stderr
    assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)
    return v


def test_missing_file(gluster, ref):
    same_error(["info", gluster.url(uniq("missing.qcow2"))], ref.get(("missing-file",)))


def test_missing_file_json(gluster, ref):
    same_error(["info", json_form(gluster, uniq("missing.raw"), "raw")],
               ref.get(("missing-file-json",)))


def test_missing_volume(gluster):
    v = same_error(["info", gluster.url("x.raw", volume="novolume")])
    assert "Gluster connection for volume novolume, path x.raw failed to connect" in v.stderr


def test_unreachable_server(gluster):
    v = same_error(["info", "gluster://127.0.0.1:1/%s/x.raw" % gluster.volume])
    assert "hint: failed on host 127.0.0.1 and port 1 " in v.stderr


BAD_NAMES = [
    "gluster://127.0.0.1/vol",
    "gluster://127.0.0.1/vol/",
    "gluster://127.0.0.1//x",
    "gluster://127.0.0.1:99999/vol/x",
    "gluster://127.0.0.1/vol/x?socket=/s",
    "gluster+unix:///vol/x",
    "gluster+unix://127.0.0.1/vol/x?socket=/s",
    "gluster+unix:///vol/x?sock=/s",
    "gluster+unix:///vol/x?socket=/s&a=b",
]

JSON_SERVER = {"type": "tcp", "host": "127.0.0.1", "port": "1"}
BAD_JSON = [
    {"path": "x"},
    {"volume": "v"},
    {"volume": "v", "path": "x"},
    {"volume": "v", "path": "x", "server": []},
    {"volume": "v", "path": "x", "server": [{"host": "h"}]},
    {"volume": "v", "path": "x", "server": [{"type": "foo", "host": "h"}]},
    {"volume": "v", "path": "x", "server": [{"type": "rdma", "host": "h"}]},
    {"volume": "v", "path": "x", "server": [{"type": "tcp"}]},
    {"volume": "v", "path": "x", "server": [{"type": "tcp", "host": "h"}]},
    {"volume": "v", "path": "x", "server": [{"type": "unix"}]},
    {"volume": "v", "path": "x", "server": [dict(JSON_SERVER, port="abc")]},
    {"volume": "v", "path": "x", "server": [dict(JSON_SERVER, port="70000")]},
    {"volume": "v", "path": "x", "server": [dict(JSON_SERVER, to="5")]},
    {"volume": "v", "path": "x", "server": [dict(JSON_SERVER, ipv4="on")]},
    {"volume": "v", "path": "x", "debug": "x", "server": [JSON_SERVER]},
    {"volume": "v", "path": "x", "server": [JSON_SERVER, {"type": "unix", "path": "/s"}]},
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_url(gluster, name):
    same_error(["info", name])


@pytest.mark.parametrize("opts", BAD_JSON, ids=range(len(BAD_JSON)))
def test_bad_json(gluster, opts):
    same_error(["info", "json:" + json.dumps(dict(opts, driver="gluster"))])


def test_rdma_falls_back_to_tcp(gluster, names):
    r = vimg("info", "gluster+rdma://127.0.0.1/%s/%s" % (gluster.volume, names["raw"]))
    assert r.returncode == 0, r.stderr
    assert r.stderr == "vdisk-img: warning: rdma feature is not supported, falling back to tcp\n"


def test_nbd_export_of_gluster_image(gluster, images, names, tmp_path):
    """vdisk-nbd serves a qcow2 image that lives on the volume; nbdcopy
    reads the guest data back."""
    import nbd_helpers
    if not shutil.which("nbdcopy", path="/usr/bin"):
        pytest.skip("nbdcopy is not installed")
    sock = str(tmp_path / "nbd.sock")
    srv = nbd_helpers.Server(nbd_helpers.VDISK_NBD,
                             ["-r", "-f", "qcow2", gluster.url(names["qcow2"])], sock=sock)
    try:
        out = str(tmp_path / "out.raw")
        r = nbd_helpers.run(["nbdcopy", srv.uri(), out])
        assert r.returncode == 0, r.stderr
    finally:
        srv.stop()
    assert read(out) == read(images["raw"])


@pytest.fixture
def fault_volume(gluster):
    """A volume of its own, whose brick a test may kill."""
    vol = "vdfault%d" % os.getpid()
    try:
        gluster.server.create_volume(vol)
    except (RuntimeError, gluster_server.Unavailable) as e:
        gluster.server.delete_volume(vol)
        pytest.skip("cannot create a second volume: %s" % e)
    yield vol
    gluster.server.delete_volume(vol)


def brick_killed_mid_convert(gluster, fault_volume, tmp_path):
    """The brick dies while a compressing convert writes to it: vdisk-img
    ends with an error and a nonzero status, in bounded time."""
    src = tmp_path / "random.raw"
    size = (32 if SANITIZED else 96) << 20
    with open(src, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    name = "target.qcow2"
    target = os.path.join(gluster.server.brick_dir(fault_volume), name)
    brick = gluster.server.brick_pid(fault_volume)     # asked now: the CLI is slow
    p = subprocess.Popen([VDISK_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2", str(src),
                          gluster.url(name, volume=fault_volume)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and p.poll() is None:
            if os.path.exists(target) and os.path.getsize(target) > (256 << 10):
                break
            time.sleep(0.01)
        assert p.poll() is None, "the convert ended before the brick could be killed"
        os.kill(brick, signal.SIGKILL)
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1, err
    assert err.startswith("vdisk-img: "), err
    assert "error" in err.lower() or "failed" in err.lower(), err


def json_timeout_form(gluster, volume, path, seconds):
    return "json:" + json.dumps({"driver": "raw", "file": {
        "driver": "gluster", "volume": volume, "path": path, "x-timeout": str(seconds),
        "server": [{"type": "tcp", "host": "127.0.0.1", "port": "24007"}]}})


@pytest.mark.once      # the bricks' time: once per make check (conftest.py)
def test_brick_faults(gluster, fault_volume, tmp_path):
    """A brick that stops answering (SIGSTOP) ends reads and new
    connections after the x-timeout, not never; once it answers again, it
    is killed in the middle of a convert (one volume for both: making one
    takes seconds)."""
    import nbd_helpers
    if not shutil.which("nbdcopy", path="/usr/bin"):
        pytest.skip("nbdcopy is not installed")
    data = tmp_path / "data.raw"
    data.write_bytes(os.urandom(16 << 20))      # data nbdcopy must read
    r = vimg("convert", "-f", "raw", "-O", "raw", str(data),
             gluster.url("img.raw", volume=fault_volume), timeout=120)
    assert r.returncode == 0, r.stderr
    name = json_timeout_form(gluster, fault_volume, "img.raw", 5)
    srv = nbd_helpers.Server(nbd_helpers.VDISK_NBD, ["-r", "-f", "raw", name],
                             sock=str(tmp_path / "nbd.sock"))
    brick = gluster.server.brick_pid(fault_volume)
    os.kill(brick, signal.SIGSTOP)
    try:
        start = time.monotonic()
        r = nbd_helpers.run(["nbdcopy", srv.uri(), str(tmp_path / "out.raw")])
        assert r.returncode != 0
        assert time.monotonic() - start < 90
        start = time.monotonic()
        r = vimg("info", name, timeout=90)
        assert r.returncode == 1
        assert "failed to connect (timed out)" in r.stderr, r.stderr
        assert time.monotonic() - start < 60
    finally:
        os.kill(brick, signal.SIGCONT)
        srv.stop()
    brick_killed_mid_convert(gluster, fault_volume, tmp_path)
