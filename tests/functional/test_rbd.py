# SPDX-License-Identifier: BSD-3-Clause
"""The rbd protocol driver against a real one-node Ceph cluster (monitor and
OSD on memstore, tests/functional/ceph_server.py) started on loopback once
per test session (per xdist worker): info, map, convert, compare, create
and resize against qemu-img 7.2 (qemu-block-extra's rbd driver) on the same
images, snapshots read-only, QEMU's messages for bad names, missing pools,
images and namespaces, refused keys and unreachable monitors, vdisk-nbd
serving an image that lives in the cluster, and a cluster killed in the
middle of a convert."""
import json
import os
import signal
import shutil
import subprocess
import time

import pytest

from conftest import vimg, vimg_traced, qimg, same_output, QEMU_IMG, VDISK_IMG
import ceph_server



def _have_rbd_driver():
    return "rbd" in vimg("--help").stdout.split("Supported formats:")[-1].split()


pytestmark = [
    pytest.mark.skipif(not QEMU_IMG or not shutil.which("qemu-io"),
                       reason="qemu-img and qemu-io are needed"),
    pytest.mark.skipif(bool(ceph_server.missing_programs()),
                       reason="Ceph cannot start: " + ceph_server.missing_programs()),
    # Their time is the cluster's (one per worker) and qemu-img's: once per
    # make check, in the sanitized pass (conftest.py).
    pytest.mark.once,
]


@pytest.fixture(scope="session")
def rbd_driver():
    if not _have_rbd_driver():
        pytest.skip("vdisk-img was built without librbd")


@pytest.fixture(scope="session")
def ceph(tmp_path_factory, rbd_driver):
    d = str(tmp_path_factory.mktemp("ceph"))
    try:
        c = ceph_server.Ceph(d)
    except (ceph_server.StartError, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip("the Ceph cluster did not start: %s" % e)
    yield c
    c.stop()


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A raw image with data, zeroes and unwritten objects (4 MiB objects:
    some fully, some partly written), and the same as qcow2."""
    d = tmp_path_factory.mktemp("rbd-images")
    raw, qcow2 = str(d / "disk.raw"), str(d / "disk.qcow2")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "raw", raw, "24M"], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 192k",
                    "-c", "write -P 0xa5 5M 1536k", "-c", "write -P 0x11 16M 4M",
                    "-c", "write -P 0x22 23M 4k", raw],
                   check=True, capture_output=True)
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    return {"raw": raw, "qcow2": qcow2}


@pytest.fixture(scope="session")
def stored(ceph, images):
    """The images put into the pool by qemu-img: name per format."""
    out = {}
    for fmt, path in images.items():
        name = ceph.name("disk-" + fmt)
        subprocess.run([QEMU_IMG, "convert", "-f", fmt, "-O", fmt, path, name],
                       check=True, capture_output=True)
        out[fmt] = name
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def json_form(ceph, image, fmt, with_servers):
    """The image named by a json: object with the driver's keys."""
    f = {"driver": "rbd", "pool": ceph.pool, "image": image, "conf": ceph.conf}
    if with_servers:
        f["user"] = "admin"
        f["server"] = [{"host": "127.0.0.1", "port": str(ceph.v1)}]
    return "json:" + json.dumps({"driver": fmt, "file": f})


def both(*args, timeout=60):
    return vimg(*args, timeout=timeout), qimg(*args, timeout=timeout)


def same(*args, timeout=60):
    v, q = both(*args, timeout=timeout)
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    assert v.stdout == q.stdout
    return v


NAME_FORMS = ["rbd", "json", "json-servers"]


def name_of(ceph, stored, fmt, form):
    if form == "rbd":
        return stored[fmt]
    return json_form(ceph, "disk-" + fmt, fmt, form == "json-servers")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("form", NAME_FORMS)
@pytest.mark.parametrize("out", ["human", "json"])
def test_info_same_as_qemu(ceph, stored, fmt, form, out):
    same("info", "--output=" + out, name_of(ceph, stored, fmt, form))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("out", ["human", "json"])
def test_map_same_as_qemu(ceph, stored, fmt, out):
    """Block status through the object map (fast-diff): whole objects."""
    v = same("map", "--output=" + out, stored[fmt])
    if fmt == "raw" and out == "json":
        assert '"data": false' in v.stdout and '"data": true' in v.stdout


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_from_rbd(ceph, stored, images, tmp_path, fmt):
    out, ref = str(tmp_path / "v.raw"), str(tmp_path / "q.raw")
    v, q = vimg("convert", "-f", fmt, "-O", "raw", stored[fmt], out), \
        qimg("convert", "-f", fmt, "-O", "raw", stored[fmt], ref)
    assert (v.returncode, q.returncode) == (0, 0), v.stderr + q.stderr
    assert read(out) == read(ref) == read(images["raw"])


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_to_rbd(ceph, images, tmp_path, fmt):
    """vdisk-img creates the target on the pool; qemu-img reads it back, and
    its info matches that of the same image qemu-img made."""
    vname, qname = ceph.name("conv-v-" + fmt), ceph.name("conv-q-" + fmt)
    v = vimg("convert", "-f", "raw", "-O", fmt, images["raw"], vname, timeout=120)
    assert v.returncode == 0, v.stderr
    q = qimg("convert", "-f", "raw", "-O", fmt, images["raw"], qname, timeout=120)
    assert q.returncode == 0, q.stderr
    c = qimg("compare", "-f", "raw", "-F", fmt, images["raw"], vname)
    assert c.returncode == 0, c.stdout + c.stderr
    vi, qi = qimg("info", vname).stdout, qimg("info", qname).stdout
    assert vi.replace("conv-v-", "conv-q-") == qi
    qm, vm = qimg("map", "--output=json", qname).stdout, qimg("map", "--output=json", vname).stdout
    if fmt == "raw":
        assert vm == qm


@pytest.mark.parametrize("extra", [":rbd_disable_zero_copy_writes=true", ":rbd_cache=true"])
def test_convert_to_rbd_librbd_copying(ceph, images, extra):
    """Write data goes to librbd without a copy of vdisk's own by default;
    a name may make librbd copy it instead (its own setting, or its cache),
    and the image is the same."""
    name = ceph.name("conv-copy" + str(len(extra)), extra=extra)
    for fmt in ("raw", "qcow2"):
        v = vimg("convert", "-f", "raw", "-O", fmt, images["raw"], name, timeout=120)
        assert v.returncode == 0, v.stderr
        c = qimg("compare", "-f", "raw", "-F", fmt, images["raw"], name)
        assert c.returncode == 0, c.stdout + c.stderr
        ceph.rbd("rm", "conv-copy" + str(len(extra)), timeout=120)


def mon_connects(ceph, tmp_path, *args):
    """Run vdisk-img under strace: its result and how many sockets it
    connected to the monitor's ports."""
    log = tmp_path / "connects"
    p = vimg_traced(log, "connect", *args, timeout=120)
    ports = "htons(%d)" % ceph.v2, "htons(%d)" % ceph.v1
    with open(log) as f:
        n = sum(1 for line in f if any(port in line for port in ports))
    return p, n


@pytest.mark.skipif(not shutil.which("strace"), reason="strace is needed")
def test_convert_to_rbd_connects_once(ceph, images, tmp_path):
    """Creating the target and opening it share one cluster connection: a
    convert to rbd talks to the monitor as often as an info does."""
    name = ceph.name("conv-once")
    p, info = mon_connects(ceph, tmp_path, "info", ceph.name("conv-once-missing"))
    assert p.returncode == 1 and "error reading header" in p.stderr, p.stderr
    p, conv = mon_connects(ceph, tmp_path, "convert", "-f", "raw", "-O", "raw",
                           images["raw"], name)
    assert p.returncode == 0, p.stderr
    assert info >= 1
    assert conv == info
    c = qimg("compare", "-f", "raw", "-F", "raw", images["raw"], name)
    assert c.returncode == 0, c.stdout + c.stderr


def test_compare(ceph, stored, images):
    v, q = both("compare", stored["raw"], stored["qcow2"])
    assert (v.returncode, v.stdout) == (q.returncode, q.stdout) == (0, "Images are identical.\n")
    v, q = both("compare", "-f", "raw", stored["raw"], images["raw"])
    assert (v.returncode, v.stdout) == (q.returncode, q.stdout)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_create_same_as_qemu(ceph, fmt):
    for opts in ([[], ["-o", "cluster_size=1M"]] if fmt == "raw" else [[]]):
        tag = "%s-%d" % (fmt, len(opts))
        v = vimg("create", "-f", fmt, *opts, ceph.name("cr-v-" + tag), "40M")
        q = qimg("create", "-f", fmt, *opts, ceph.name("cr-q-" + tag), "40M")
        assert (v.returncode, q.returncode) == (0, 0), v.stderr + q.stderr
        assert same_output(v.stdout.replace("cr-v-", "cr-q-"), q.stdout)
        for out in ("human", "json"):
            vi = qimg("info", "--output=" + out, ceph.name("cr-v-" + tag)).stdout
            qi = qimg("info", "--output=" + out, ceph.name("cr-q-" + tag)).stdout
            assert vi.replace("cr-v-", "cr-q-") == qi
        # the existing image is refused as QEMU does
        v, q = both("create", "-f", fmt, ceph.name("cr-v-" + tag), "40M")
        assert v.returncode == q.returncode == 1
        assert same_output(v.stderr.splitlines()[-1],
                           q.stderr.splitlines()[-1].replace("cr-q-", "cr-v-").replace(
                               "'rbd:rbd/cr-q-", "'rbd:rbd/cr-v-")) or \
            "File exists" in v.stderr, (v.stderr, q.stderr)


def test_write_discard_zeroes_resize(ceph, images, tmp_path):
    """Writes through vdisk-img dd and resize, read back by qemu-img."""
    name = ceph.name("rw")
    v = vimg("dd", "-O", "raw", "if=" + images["raw"], "of=" + name, "bs=1M", "count=8")
    assert v.returncode == 0, v.stderr
    v = vimg("resize", "-f", "raw", name, "12M")
    assert v.returncode == 0, v.stderr
    assert "virtual size: 12 MiB" in qimg("info", name).stdout
    out = str(tmp_path / "out.raw")
    assert qimg("convert", "-O", "raw", name, out).returncode == 0
    data = read(out)
    assert data[:8 << 20] == read(images["raw"])[:8 << 20]
    assert data[8 << 20:] == bytes(4 << 20)
    v = vimg("resize", "-f", "raw", "--shrink", name, "4M")
    assert v.returncode == 0, v.stderr
    assert "virtual size: 4 MiB" in qimg("info", name).stdout


def test_qcow2_on_rbd_written_by_vdisk(ceph, images, tmp_path):
    """A qcow2 image on rbd that vdisk grows (truncate) and fills: qemu-img
    check finds nothing wrong and reads the same data."""
    name = ceph.name("q2w")
    assert vimg("create", "-f", "qcow2", name, "24M").returncode == 0
    v = vimg("convert", "-n", "-f", "raw", "-O", "qcow2", images["raw"], name)
    assert v.returncode == 0, v.stderr
    c = qimg("check", name)
    assert c.returncode == 0, c.stdout + c.stderr
    assert qimg("compare", "-F", "qcow2", images["raw"], name).returncode == 0


def test_snapshot_read_only(ceph, images, tmp_path):
    name = ceph.name("snapimg")
    assert qimg("convert", "-O", "raw", images["raw"], name).returncode == 0
    ceph.rbd("snap", "create", "snapimg@s1")
    assert subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", name],
                          capture_output=True).returncode == 0
    snap = "rbd:%s/snapimg@s1:conf=%s" % (ceph.pool, ceph.conf)
    for out in ("human", "json"):
        same("info", "--output=" + out, snap)
        same("info", "--output=" + out, name)   # lists the snapshot
    same("snapshot", "-l", name)
    out = str(tmp_path / "s.raw")
    assert vimg("convert", "-O", "raw", snap, out).returncode == 0
    assert read(out) == read(images["raw"])
    v, q = both("resize", "-f", "raw", snap, "64M")
    assert v.returncode == q.returncode == 1
    assert same_output(v.stderr.splitlines()[-1], q.stderr.splitlines()[-1])


def test_namespace(ceph, images, tmp_path):
    ceph.rbd("namespace", "create", "--namespace", "ns1")
    name = "rbd:%s/ns1/nsimg:conf=%s" % (ceph.pool, ceph.conf)
    v = vimg("convert", "-O", "raw", images["raw"], name)
    assert v.returncode == 0, v.stderr
    same("info", name)
    assert "nsimg" in ceph.rbd("ls", "--namespace", "ns1").stdout
    out = str(tmp_path / "ns.raw")
    assert vimg("convert", "-O", "raw", name, out).returncode == 0
    assert read(out) == read(images["raw"])
    same_error(["info", "rbd:%s/nons/x:conf=%s" % (ceph.pool, ceph.conf)])


def test_user_and_key_secret(ceph, stored):
    """client.fxuser (profile rbd) by id= and by user/key-secret; a wrong key
    refused with qemu-img's message."""
    img = "disk-raw"
    same("info", ceph.name(img, extra=":id=fxuser"))
    good = ceph.key("client.fxuser")
    for key, ok in ((good, True), ("AQBvf2ZlAAAAABAAcbGn0uTnA6A+3zkYbUTH5A==", False)):
        args = ["info", "--object", "secret,id=k0,format=base64,data=" + key,
                "json:" + json.dumps({"driver": "raw", "file": {
                    "driver": "rbd", "pool": ceph.pool, "image": img, "conf": ceph.conf,
                    "user": "fxuser", "key-secret": "k0",
                    "auth-client-required": ["cephx"]}})]
        if ok:
            same(*args)
        else:
            same_error(args + [], timeout=90)


def last_line(text):
    return text.splitlines()[-1] if text else ""


def same_error(args, timeout=60):
    v, q = both(*args, timeout=timeout)
    assert q.returncode != 0
    assert v.returncode == q.returncode, v.stderr
    assert same_output(last_line(v.stderr), last_line(q.stderr)), (v.stderr, q.stderr)
    return v


def test_missing_image_pool_and_bad_names(ceph):
    c = ceph.conf
    for name in ("rbd:%s/nope:conf=%s" % (ceph.pool, c),
                 "rbd:nopool/nope:conf=" + c,
                 "rbd:rbd",
                 "rbd:rbd/x:conf",
                 "rbd:rbd/x:conf=/nonexistent/ceph.conf",
                 "rbd:rbd/disk-raw:conf=%s:no_such_option=1" % c):
        same_error(["info", name])


@pytest.mark.parametrize("name", [
    r"rbd:p\/x/i\:m@s\@n:conf=a\:b:id=u\=v:k\:1=v\:2",
    "rbd:p/ns/img@snap:id=admin:mon_host=127.0.0.1\\:1",
    "rbd:pool/image@",
    "rbd:/image",
    "rbd:p/i:a=b:c",
    r"rbd:p/ima\/x",
    r"rbd:p\/x/i\=key\@n:id=u",
])
def test_name_parsing_like_qemu(rbd_driver, name):
    """Names that cannot reach a cluster (a missing conf file): vdisk fails
    the way QEMU does."""
    same_error(["info", name + ":conf=/nonexistent.conf"])


def test_unreachable_monitor(ceph, tmp_path):
    """No monitor on the port: vdisk fails when the mount timeout (10 s by
    default, 2 s in this configuration file) expires."""
    port = ceph_server.free_port()
    conf = str(tmp_path / "ceph.conf")
    with open(ceph.conf) as f, open(conf, "w") as g:
        g.write(f.read().replace("[global]\n", "[global]\nclient mount timeout = 2\n"))
    name = "json:" + json.dumps({"driver": "raw", "file": {
        "driver": "rbd", "pool": "rbd", "image": "x", "conf": conf,
        "server": [{"host": "127.0.0.1", "port": str(port)}]}})
    t = time.monotonic()
    v = vimg("info", name, timeout=60)
    assert v.returncode == 1
    assert "error connecting" in v.stderr, v.stderr
    assert time.monotonic() - t < 30


@pytest.mark.skipif(not shutil.which("nbdcopy", path="/usr/bin"), reason="nbdcopy is needed")
def test_nbd_export_of_rbd_image(ceph, stored, images, tmp_path):
    import nbd_helpers
    sock = str(tmp_path / "nbd.sock")
    srv = nbd_helpers.Server(nbd_helpers.VDISK_NBD, ["-r", "-f", "qcow2", stored["qcow2"]],
                             sock=sock)
    try:
        out = str(tmp_path / "out.raw")
        r = nbd_helpers.run(["nbdcopy", srv.uri(), out])
        assert r.returncode == 0, r.stderr
    finally:
        srv.stop()
    assert read(out) == read(images["raw"])


def test_parallel_convert_many_objects(ceph, tmp_path):
    """A convert with many objects in flight both ways keeps every byte."""
    src = str(tmp_path / "src.raw")
    size = 64 << 20
    with open(src, "wb") as f:
        f.write(os.urandom(size))
    name = ceph.name("par")
    v = vimg("convert", "-m", "16", "-W", "-O", "raw", src, name, timeout=120)
    assert v.returncode == 0, v.stderr
    out = str(tmp_path / "back.raw")
    v = vimg("convert", "-m", "16", "-O", "raw", name, out, timeout=120)
    assert v.returncode == 0, v.stderr
    assert read(out) == read(src)


def _until_objects(c, p, n):
    """Wait until the pool holds n data objects (or p ended, or 30 s)."""
    end = time.monotonic() + 30
    while time.monotonic() < end and p.poll() is None:
        objs = c.cli(ceph_server.RADOS, "-p", c.pool, "ls", check=False).stdout
        if objs.count("rbd_data.") >= n:
            return


@pytest.mark.once      # the cluster's time: once per make check (conftest.py)
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_cluster_killed_mid_convert(tmp_path_factory, rbd_driver, tmp_path, how):
    """Its own cluster, killed while vdisk-img writes a qcow2 image to it: a
    clear error and exit status 1, within the request bound of the OSD
    timeout given in the name (twice it, plus 10 s).  Stopped (SIGSTOP)
    instead, the OSD keeps the connection and never answers, while one
    vdisk-img writes a raw image and another reads one: the writes are
    given up while librbd still holds their data, which it sends from the
    copy's own buffers, so those outlive the copy (util/iobuf.h); the
    reads, which land in the copy's buffers, fail when librados gives them
    up."""
    d = str(tmp_path_factory.mktemp("ceph-kill"))
    try:
        c = ceph_server.Ceph(d, device_bytes=1 << 30)
    except (ceph_server.StartError, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip("the Ceph cluster did not start: %s" % e)
    fmt = "qcow2" if how == "kill" else "raw"
    procs = {}
    try:
        src = str(tmp_path / "src.raw")
        with open(src, "wb") as f:
            f.write(os.urandom(48 << 20))
        name = c.name("victim", extra=":rados_osd_op_timeout=3:rados_mon_op_timeout=3")
        if how == "stop":
            stored = c.name("stored", extra=":rados_osd_op_timeout=3:rados_mon_op_timeout=3")
            assert vimg("convert", "-O", "raw", src, stored, timeout=120).returncode == 0
            procs["reading"] = subprocess.Popen(
                [VDISK_IMG, "convert", "-r", "4M", "-f", "raw", "-O", "raw", stored,
                 str(tmp_path / "out.raw")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert vimg("create", "-f", fmt, name, "48M").returncode == 0
        procs["writing"] = subprocess.Popen(
            [VDISK_IMG, "convert", "-n", "-r", "8M", "-O", fmt, src, name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # stop once the writer has stored data objects (8 MiB/s: ~6 s; the
        # reader takes ~12 s)
        _until_objects(c, procs["writing"], 15 if how == "stop" else 3)
        for p in procs.values():
            assert p.poll() is None, "convert ended before the cluster was stopped"
        if how == "kill":
            c.kill("osd", "mon")
        else:
            c.procs["osd"].send_signal(signal.SIGSTOP)
        for what, p in procs.items():
            out, err = p.communicate(timeout=90)
            # The exit status the tool chose: the process ends before
            # librados's static objects (and a leak checker) meet the dead
            # cluster's threads.
            assert p.returncode == 1, err
            assert "error while %s" % what in err and "timed out" in err, err
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        c.stop()


def test_nbd_writes_discard_zeroes_flush(ceph, tmp_path):
    """vdisk-nbd serving a raw rbd image for writing: writes, write-zeroes
    (with and without unmap), trims and flushes from an NBD client land in
    the cluster; qemu-img reads the result and maps trimmed objects as
    holes."""
    nbd = pytest.importorskip("nbd")
    import nbd_helpers
    name = ceph.name("nbdw")
    assert qimg("create", "-f", "raw", name, "16M").returncode == 0
    sock = str(tmp_path / "w.sock")
    srv = nbd_helpers.Server(nbd_helpers.VDISK_NBD, ["-f", "raw", "--discard=unmap", name],
                             sock=sock, probe=False)
    expect = bytearray(16 << 20)
    try:
        h = nbd.NBD()
        h.connect_unix(sock)
        h.pwrite(b"\x5a" * (12 << 20), 0)
        expect[0:12 << 20] = b"\x5a" * (12 << 20)
        h.zero(1 << 20, 1 << 20)
        h.zero(65536, 3 << 20, nbd.CMD_FLAG_NO_HOLE)
        h.trim(4 << 20, 4 << 20)          # one whole object
        for a, b in ((1 << 20, 2 << 20), (3 << 20, (3 << 20) + 65536), (4 << 20, 8 << 20)):
            expect[a:b] = bytes(b - a)
        h.pwrite(b"\xa5" * 4096, 15 << 20)
        expect[15 << 20:(15 << 20) + 4096] = b"\xa5" * 4096
        h.flush()
        assert h.pread(16 << 20, 0) == bytes(expect)
        h.shutdown()
    finally:
        srv.stop()
    out = str(tmp_path / "out.raw")
    assert qimg("convert", "-O", "raw", name, out).returncode == 0
    assert read(out) == bytes(expect)
    m = json.loads(qimg("map", "--output=json", name).stdout)
    assert any(e["start"] <= 4 << 20 < e["start"] + e["length"] and not e["data"] for e in m), m


def _pool_flags(c):
    dump = json.loads(c.cli(ceph_server.CEPH, "osd", "dump", "--format", "json").stdout)
    return next(p["flags_names"] for p in dump["pools"] if p["pool_name"] == c.pool)


def _wait_flag(c, present, timeout=90):
    """Wait until the pool's full_quota flag is (not) set; the monitor
    sets it from the manager's statistics, a few seconds late."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ("full_quota" in _pool_flags(c).split(",")) == present:
            return
        time.sleep(0.5)
    pytest.fail("full_quota flag %s after %d s" % ("not set" if present else "still set", timeout))


@pytest.mark.once      # the cluster's time: once per make check (conftest.py)
def test_full_pool(tmp_path_factory, rbd_driver, tmp_path):
    """A pool whose quota is reached: Ceph holds writes to it until the
    flag clears (qemu-img then waits forever).  vdisk-img's create, its
    open for writing (which registers a watch) and an NBD client's write to
    an image vdisk-nbd opened before the pool filled all end with "Disk
    quota exceeded" within the OSD timeout given in the name, leave no
    image behind, and work again once the quota is lifted.  Its own cluster
    with a manager (quotas are enforced from the manager's statistics)."""
    nbd = pytest.importorskip("nbd")
    import nbd_helpers
    d = str(tmp_path_factory.mktemp("ceph-full"))
    try:
        c = ceph_server.Ceph(d, with_mgr=True, device_bytes=1 << 30)
    except (ceph_server.StartError, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip("the Ceph cluster did not start: %s" % e)
    fast = ":rados_osd_op_timeout=3:rados_mon_op_timeout=10"
    srv = None
    try:
        c.rbd("create", "--size", "8M", "pre")
        c.rbd("create", "--size", "8M", "served")
        sock = str(tmp_path / "full.sock")
        srv = nbd_helpers.Server(nbd_helpers.VDISK_NBD, ["-f", "raw", c.name("served", extra=fast)],
                                 sock=sock, probe=False)
        h = nbd.NBD()
        h.connect_unix(sock)
        h.pwrite(b"\x11" * 65536, 0)
        h.flush()
        c.cli(ceph_server.CEPH, "osd", "pool", "set-quota", c.pool, "max_bytes", str(16 << 20))
        filler = str(tmp_path / "filler")
        with open(filler, "wb") as f:
            f.write(os.urandom(24 << 20))
        c.cli(ceph_server.RADOS, "-p", c.pool, "put", "filler", filler, timeout=60)
        _wait_flag(c, True)
        src = str(tmp_path / "src.raw")
        with open(src, "wb") as f:
            f.write(os.urandom(4 << 20))

        v = vimg("create", "-f", "raw", c.name("new", extra=fast), "8M", timeout=120)
        assert v.returncode == 1
        assert "error rbd create: Disk quota exceeded" in v.stderr, v.stderr
        v = vimg("convert", "-n", "-O", "raw", src, c.name("pre", extra=fast), timeout=120)
        assert v.returncode == 1
        assert "Disk quota exceeded" in v.stderr, v.stderr
        with pytest.raises(nbd.Error) as e:
            h.pwrite(b"\x22" * 65536, 1 << 20)
        assert "No space left on device" in str(e.value), e.value
        h.shutdown()
        assert "new" not in c.rbd("ls").stdout.split()

        c.cli(ceph_server.CEPH, "osd", "pool", "set-quota", c.pool, "max_bytes", "0")
        _wait_flag(c, False)
        v = vimg("convert", "-n", "-O", "raw", src, c.name("pre", extra=fast), timeout=120)
        assert v.returncode == 0, v.stderr
        out = str(tmp_path / "back.raw")
        assert vimg("convert", "-O", "raw", c.name("pre"), out).returncode == 0
        assert read(out)[:4 << 20] == read(src)
    finally:
        if srv:
            srv.stop()
        c.stop()
