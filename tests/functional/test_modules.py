"""Protocol drivers with heavy client libraries are modules: libvdisk
itself needs none of those libraries, a local image maps no module, and a
name with the module's prefix loads it."""
import os
import subprocess

import pytest

from conftest import BUILD, VDISK_IMG, vimg

LIB = os.path.join(BUILD, "lib")
HEAVY = ("libcurl", "libssh", "libiscsi", "librbd", "librados", "libgfapi")


def needed(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("[")[1].rstrip("]") for line in out.splitlines()
            if "(NEEDED)" in line]


def libvdisk():
    path = os.path.realpath(os.path.join(LIB, "libvdisk.so"))
    assert os.path.isfile(path), "libvdisk not built"
    return path


def loaded_objects(*args):
    """Shared objects the dynamic loader opened while vdisk-img ran."""
    env = dict(os.environ, LD_DEBUG="files")
    r = subprocess.run([VDISK_IMG] + [str(a) for a in args], capture_output=True,
                       text=True, env=env, timeout=60)
    return r, [line for line in r.stderr.splitlines() if "file=" in line]


def test_libvdisk_needs_no_network_client_library():
    libs = needed(libvdisk())
    assert libs, "readelf found no NEEDED entries"
    assert not [n for n in libs if n.startswith(HEAVY)], libs


def test_local_image_loads_no_module(tmp_path):
    img = tmp_path / "a.raw"
    img.write_bytes(b"\0" * 65536)
    r, objs = loaded_objects("info", img)
    assert r.returncode == 0, r.stderr
    assert objs, "LD_DEBUG printed nothing"
    assert not [o for o in objs if "vdisk-curl" in o or "libcurl" in o], objs


@pytest.mark.skipif(not os.path.exists(os.path.join(LIB, "modules", "vdisk-curl.so")),
                    reason="built without libcurl")
def test_http_name_loads_curl_module():
    # Port 1 on loopback refuses the connection: the module loads, the open fails.
    r, objs = loaded_objects("info", "http://127.0.0.1:1/x.img")
    assert r.returncode == 1
    assert [o for o in objs if "vdisk-curl.so" in o], objs
    assert "Unknown protocol" not in r.stderr


def test_help_lists_module_drivers():
    r = vimg("--help")
    formats = [l for l in r.stdout.splitlines() if l.startswith("Supported formats:")]
    assert formats
    names = formats[0].split()[2:]
    if os.path.exists(os.path.join(LIB, "modules", "vdisk-curl.so")):
        assert {"http", "https", "ftp", "ftps"} <= set(names), names
    assert {"file", "nbd", "qcow2", "raw"} <= set(names), names


@pytest.mark.skipif(not os.path.exists(os.path.join(LIB, "modules", "vdisk-ssh.so")),
                    reason="built without libssh")
def test_ssh_name_loads_ssh_module():
    # Port 1 on loopback refuses the connection: the module loads, the open fails.
    r, objs = loaded_objects("info", "ssh://127.0.0.1:1/x.img?host_key_check=no")
    assert r.returncode == 1
    assert [o for o in objs if "vdisk-ssh.so" in o], objs
    assert "Failed to connect to '127.0.0.1:1'" in r.stderr
    r, objs = loaded_objects("info", os.path.join(BUILD, "meson-info", "intro-buildoptions.json"))
    assert not [o for o in objs if "vdisk-ssh" in o or "libssh" in o], objs
@pytest.mark.skipif(not os.path.exists(os.path.join(LIB, "modules", "vdisk-rbd.so")),
                    reason="built without librbd")
def test_rbd_name_loads_rbd_module(tmp_path):
    # A missing configuration file: the module loads, the open fails.
    r, objs = loaded_objects("info", "rbd:pool/img:conf=%s" % (tmp_path / "none.conf"))
    assert [o for o in objs if "vdisk-rbd.so" in o], objs
    assert "error reading conf file" in r.stderr, r.stderr
    r, objs = loaded_objects("info", tmp_path / "none.raw")
    assert not [o for o in objs if "vdisk-rbd" in o or "librbd" in o], objs
@pytest.mark.skipif(not os.path.exists(os.path.join(LIB, "modules", "vdisk-gluster.so")),
                    reason="built without libgfapi")
def test_gluster_name_loads_gluster_module():
    # A URL without a path: the module loads and refuses it.
    r, objs = loaded_objects("info", "gluster://127.0.0.1/vol")
    assert [o for o in objs if "vdisk-gluster.so" in o], objs
    assert "invalid URI gluster://127.0.0.1/vol" in r.stderr
