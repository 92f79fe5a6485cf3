"""Protocol drivers with heavy client libraries, the libxml2 parser of
parallels' DiskDescriptor.xml, the decompressors only some images need
(libbz2, liblzma, liblz4) and the ciphers, hashes and TLS (libgcrypt,
nettle, gnutls) are modules: libvdisk itself needs none of those
libraries, a local image maps no module, and a name with the module's
prefix (or a descriptor, or a block that needs the decompressor) loads
it."""
import json
import os
import shutil
import subprocess

import pytest

import cloop_gen as cg
import dmg_gen as g
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


# libxml2 (and the ICU and libstdc++ it pulls in) is mapped only by the
# module vdisk-xml.so, for parallels' DiskDescriptor.xml; libbz2, liblzma
# and liblz4 only by vdisk-codec.so.
XML_LIBS = ("libxml2", "libicu", "libstdc++")
CODEC_LIBS = ("libbz2", "liblzma", "liblz4")
DATA = bytes(range(256)) * 256
DESCRIPTOR = """<?xml version='1.0' encoding='UTF-8'?>
<Parallels_disk_image Version="1.0">
  <Disk_Parameters><Disk_size>128</Disk_size></Disk_Parameters>
  <StorageData><Storage><Start>0</Start><End>128</End>
    <Image><GUID>{1}</GUID><Type>Plain</Type><File>disk.hds</File></Image>
  </Storage></StorageData>
  <Snapshots><Shot><GUID>{1}</GUID><ParentGUID>{0}</ParentGUID></Shot></Snapshots>
</Parallels_disk_image>
"""


def descriptor_disk(d):
    """A DiskDescriptor.xml in d over one plain 64 KiB image; its data."""
    (d / "disk.hds").write_bytes(DATA)
    (d / "DiskDescriptor.xml").write_text(DESCRIPTOR)
    return DATA


def dmg(d, name, kinds):
    """A dmg of DATA in d with chunks of the given kinds."""
    (d / name).write_bytes(g.udif([g.chunks_for(DATA, kinds)]))
    return d / name


def build_options():
    with open(os.path.join(BUILD, "meson-info", "intro-buildoptions.json")) as f:
        return {o["name"]: o["value"] for o in json.load(f)}


def test_libvdisk_and_vdisk_img_need_no_xml_or_codec_library():
    # Sanitized builds link libstdc++ on purpose (lib/meson.build).
    sanitized = "address" in str(build_options().get("b_sanitize", ""))
    unwanted = (XML_LIBS[:2] if sanitized else XML_LIBS) + CODEC_LIBS
    img = os.path.realpath(VDISK_IMG)
    for path in (libvdisk(), img):
        libs = needed(path)
        assert libs and not [n for n in libs if n.startswith(unwanted)], (path, libs)
    out = subprocess.run(["ldd", img], capture_output=True, text=True, check=True).stdout
    assert "libvdisk" in out, out
    assert not [l for l in out.splitlines() if l.strip().startswith(unwanted)], out


def test_common_images_load_no_xml_or_codec_module(tmp_path):
    # dmg's XML property list is read without libxml2, its zlib chunks
    # without the codec module; so are cloop's zlib blocks.
    dmg(tmp_path, "a.dmg", [g.ZLIB, g.RAW])
    (tmp_path / "a.cloop").write_bytes(cg.pack(DATA, 16384, [cg.ZLIB, cg.NONE])[0])
    assert vimg("create", "-q", "-f", "qcow2", tmp_path / "a.qcow2", "1M").returncode == 0
    for name in ("a.qcow2", "a.dmg", "a.cloop"):
        r, objs = loaded_objects("convert", "-O", "raw", tmp_path / name, tmp_path / "out.raw")
        assert r.returncode == 0, r.stderr
        assert objs, "LD_DEBUG printed nothing"
        assert not [o for o in objs if "vdisk-xml" in o or "vdisk-codec" in o or
                    "libxml2" in o or "libbz2" in o or "liblz" in o], (name, objs)
        if name != "a.qcow2":
            assert (tmp_path / "out.raw").read_bytes() == DATA, name


def test_bzip2_and_xz_blocks_load_codec_module(tmp_path):
    dmg(tmp_path, "a.dmg", [g.BZIP2])
    (tmp_path / "a.cloop").write_bytes(cg.pack(DATA, 16384, [cg.XZ, cg.LZ4])[0])
    for name in ("a.dmg", "a.cloop"):
        r, objs = loaded_objects("convert", "-O", "raw", tmp_path / name, tmp_path / "out.raw")
        assert r.returncode == 0, r.stderr
        assert [o for o in objs if "vdisk-codec.so" in o], objs
        assert (tmp_path / "out.raw").read_bytes() == DATA, name


def test_descriptor_loads_xml_module(tmp_path):
    data = descriptor_disk(tmp_path)
    r, objs = loaded_objects("convert", "-f", "parallels", "-O", "raw",
                             tmp_path / "DiskDescriptor.xml", tmp_path / "out.raw")
    assert r.returncode == 0, r.stderr
    assert [o for o in objs if "vdisk-xml.so" in o], objs
    assert (tmp_path / "out.raw").read_bytes() == data


def installed_module_dir():
    opts = build_options()
    return os.path.join(opts["prefix"], opts["libdir"], "vdisk")


def test_missing_modules_are_errors(tmp_path):
    """libvdisk without its modules directory beside it, VDISK_MODULE_DIR
    naming an empty one: a descriptor fails to open and a bzip2 chunk to
    read, with the module named; other images still open and read."""
    for m in ("vdisk-xml.so", "vdisk-codec.so"):
        if os.path.exists(os.path.join(installed_module_dir(), m)):
            pytest.skip("%s is installed" % m)
    lib, empty = tmp_path / "lib", tmp_path / "empty"
    lib.mkdir()
    empty.mkdir()
    shutil.copy(os.path.join(LIB, "libvdisk.so.0"), lib)
    descriptor_disk(tmp_path)
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib), VDISK_MODULE_DIR=str(empty))
    r = subprocess.run([VDISK_IMG, "info", "-f", "parallels", "DiskDescriptor.xml"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 1, r
    assert r.stderr == ("vdisk-img: Could not open 'DiskDescriptor.xml': parallels: cannot "
                        "parse DiskDescriptor.xml: the module vdisk-xml.so is not installed "
                        "(looked in %s, %s/modules, %s/vdisk, %s)\n"
                        % (empty, lib, lib, installed_module_dir())), r.stderr
    r = subprocess.run([VDISK_IMG, "info", "-f", "raw", "disk.hds"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "virtual size: 64 KiB" in r.stdout, r
    # As qemu-img without its dmg-bzip2 module: a warning at open, then
    # I/O errors.
    dmg(tmp_path, "bz.dmg", [g.BZIP2])
    r = subprocess.run([VDISK_IMG, "convert", "bz.dmg", "out.raw"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 1, r
    assert r.stderr == ("vdisk-img: warning: dmg-bzip2 module is missing, accessing bzip2 "
                        "compressed blocks will result in I/O errors\n"
                        "vdisk-img: error while reading at byte 0: Input/output error\n"), r
    (tmp_path / "xz.cloop").write_bytes(cg.pack(DATA, 16384, [cg.XZ])[0])
    r = subprocess.run([VDISK_IMG, "convert", "xz.cloop", "out.raw"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 1, r
    assert r.stderr.startswith("vdisk-img: warning: cloop: the image has xz-compressed blocks "
                               "and there is no xz decompressor"), r
    dmg(tmp_path, "z.dmg", [g.ZLIB])
    r = subprocess.run([VDISK_IMG, "convert", "-O", "raw", "z.dmg", "out.raw"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and (tmp_path / "out.raw").read_bytes() == DATA, r


# libgcrypt, nettle and gnutls (and the dozen objects gnutls pulls in) are
# mapped only by vdisk-crypto.so: encrypted images, secrets in base64 and
# NBD over TLS load it.
CRYPTO_LIBS = ("libgnutls", "libgcrypt", "libnettle", "libhogweed")
VDISK_NBD = os.path.join(BUILD, "tools", "nbd", "vdisk-nbd")
SECRET = ["--object", "secret,id=s,data=pw"]


def luks_image(d):
    """A LUKS image of DATA in d, made by vdisk-img (fast key slot)."""
    (d / "plain.raw").write_bytes(DATA)
    r = vimg("convert", "-q", "-O", "luks", *SECRET, "-o", "key-secret=s,iter-time=10",
             d / "plain.raw", d / "a.luks")
    assert r.returncode == 0, r.stderr
    return "driver=luks,key-secret=s,file.filename=%s" % (d / "a.luks")


def test_libvdisk_and_tools_need_no_crypto_library():
    for path in (libvdisk(), os.path.realpath(VDISK_IMG), os.path.realpath(VDISK_NBD)):
        libs = needed(path)
        assert libs and not [n for n in libs if n.startswith(CRYPTO_LIBS)], (path, libs)
    mod = os.path.join(LIB, "modules", "vdisk-crypto.so")
    assert [n for n in needed(mod) if n.startswith("libgcrypt")], needed(mod)


def test_plain_images_load_no_crypto_module(tmp_path):
    assert vimg("create", "-q", "-f", "qcow2", tmp_path / "a.qcow2", "1M").returncode == 0
    luks_image(tmp_path)
    for args in (["convert", "-O", "raw", tmp_path / "a.qcow2", tmp_path / "out.raw"],
                 ["info", tmp_path / "a.luks"], ["check", tmp_path / "a.qcow2"]):
        r, objs = loaded_objects(*args)
        assert r.returncode == 0, r.stderr
        assert objs, "LD_DEBUG printed nothing"
        assert not [o for o in objs if "vdisk-crypto" in o or
                    any(lib in o for lib in CRYPTO_LIBS)], (args, objs)


def test_encrypted_image_loads_crypto_module(tmp_path):
    opts = luks_image(tmp_path)
    r, objs = loaded_objects("convert", *SECRET, "--image-opts", opts, "-O", "raw",
                             tmp_path / "out.raw")
    assert r.returncode == 0, r.stderr
    assert [o for o in objs if "vdisk-crypto.so" in o], objs
    assert [o for o in objs if "libgcrypt" in o], objs
    assert (tmp_path / "out.raw").read_bytes() == DATA
    assert (tmp_path / "a.luks").read_bytes().find(DATA[:4096]) < 0


def test_missing_crypto_module_is_an_error(tmp_path):
    if os.path.exists(os.path.join(installed_module_dir(), "vdisk-crypto.so")):
        pytest.skip("vdisk-crypto.so is installed")
    opts = luks_image(tmp_path)
    lib, empty = tmp_path / "lib", tmp_path / "empty"
    lib.mkdir()
    empty.mkdir()
    shutil.copy(os.path.join(LIB, "libvdisk.so.0"), lib)
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib), VDISK_MODULE_DIR=str(empty))
    missing = ("the module vdisk-crypto.so is not installed (looked in %s, %s/modules, "
               "%s/vdisk, %s)" % (empty, lib, lib, installed_module_dir()))
    r = subprocess.run([VDISK_IMG, "convert", *SECRET, "--image-opts", opts, "-O", "raw",
                        "out.raw"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=60)
    assert r.returncode == 1, r
    assert r.stderr == "vdisk-img: Could not open '%s': %s\n" % (opts, missing), r.stderr
    assert not (tmp_path / "out.raw").exists()
    r = subprocess.run([VDISK_IMG, "convert", "-O", "qcow2", "plain.raw", "b.qcow2"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r
    r = vimg("compare", tmp_path / "plain.raw", tmp_path / "b.qcow2")
    assert r.returncode == 0, r.stdout
