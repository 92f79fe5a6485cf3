# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-pool's fs pools on loop devices over files: build runs mkfs (after
a blkid probe unless --overwrite), start mounts, destroy unmounts.  A
session libvirtd cannot mount, so these are checked on their own."""
import json
import os
import shutil
import subprocess

import pytest

from pool_helpers import VDISK_POOL

FS_XML = """<pool type='fs'>
  <name>{name}</name>
  <source>
    <device path='{dev}'/>
    <format type='{fmt}'/>
  </source>
  <target>
    <path>{target}</path>
  </target>
</pool>
"""


def mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


@pytest.fixture
def loopdev(tmp_path):
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup")
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    p = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("no loop device: " + p.stderr.strip())
    dev = p.stdout.strip()
    yield dev
    target = str(tmp_path / "mnt")
    if mounted(target):
        subprocess.run(["umount", target])
    subprocess.run(["losetup", "-d", dev])


def vpool(tmp_path, *args):
    env = dict(os.environ, VDISK_POOL_CONFIG_DIR=str(tmp_path / "cfg"),
               VDISK_POOL_RUN_DIR=str(tmp_path / "run"))
    return subprocess.run([VDISK_POOL] + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=120)


def ok(p, out=None):
    assert p.returncode == 0, p.stderr
    if out is not None:
        assert p.stdout == out + "\n\n"


def define(tmp_path, dev, fmt="ext4", name="f"):
    xml = tmp_path / "f.xml"
    xml.write_text(FS_XML.format(name=name, dev=dev, fmt=fmt, target=tmp_path / "mnt"))
    ok(vpool(tmp_path, "pool-define", xml))


def test_fs_pool_lifecycle(tmp_path, loopdev):
    target = str(tmp_path / "mnt")
    define(tmp_path, loopdev)
    ok(vpool(tmp_path, "pool-build", "f"), "Pool f built")
    p = vpool(tmp_path, "pool-build", "f", "--no-overwrite")
    assert p.returncode == 1 and p.stderr == (
        "error: Failed to build pool f\nerror: Requested operation is not valid: "
        "Device '%s' already formatted using 'ext4'\n" % loopdev)
    ok(vpool(tmp_path, "pool-build", "f", "--overwrite"), "Pool f built")
    ok(vpool(tmp_path, "pool-start", "f"), "Pool f started")
    assert mounted(target)
    if shutil.which("virt-xml-validate"):
        out = tmp_path / "dump.xml"
        out.write_text(vpool(tmp_path, "pool-dumpxml", "f").stdout)
        for f in (out, tmp_path / "cfg" / "f.xml", tmp_path / "run" / "f.xml"):
            r = subprocess.run(["virt-xml-validate", str(f), "storagepool"],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
    ok(vpool(tmp_path, "vol-create-as", "f", "v.qcow2", "8M", "--format", "qcow2"))
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      os.path.join(target, "v.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 8 << 20
    ok(vpool(tmp_path, "pool-destroy", "f"), "Pool f destroyed")
    assert not mounted(target)
    assert not os.path.exists(os.path.join(target, "v.qcow2"))
    ok(vpool(tmp_path, "pool-start", "f"))
    p = vpool(tmp_path, "vol-list", "f")
    assert "v.qcow2" in p.stdout
    ok(vpool(tmp_path, "pool-destroy", "f"))
    ok(vpool(tmp_path, "pool-undefine", "f"))


def test_fs_pool_other_format_needs_overwrite(tmp_path, loopdev):
    subprocess.run(["mkfs.ext2", "-q", "-F", loopdev], check=True)
    define(tmp_path, loopdev, fmt="ext4")
    p = vpool(tmp_path, "pool-build", "f")
    assert p.returncode == 1 and p.stderr == (
        "error: Failed to build pool f\nerror: Requested operation is not valid: Format of "
        "device '%s' does not match the expected format 'ext4', forced overwrite is "
        "necessary\n" % loopdev)
    ok(vpool(tmp_path, "pool-build", "f", "--overwrite"))
    ok(vpool(tmp_path, "pool-start", "f"))
    ok(vpool(tmp_path, "pool-destroy", "f"))


def test_fs_pool_mount_fails(tmp_path, loopdev):
    """A file system mkfs makes but this kernel cannot mount (vfat here)."""
    with open("/proc/filesystems") as f:
        if "vfat" in f.read() or not shutil.which("mkfs.vfat"):
            pytest.skip("needs mkfs.vfat and a kernel without vfat")
    define(tmp_path, loopdev, fmt="vfat")
    ok(vpool(tmp_path, "pool-build", "f"))
    p = vpool(tmp_path, "pool-start", "f")
    assert p.returncode == 1
    assert p.stderr.startswith("error: Failed to start pool f\nerror: internal error: "
                               "Child process (mount -t vfat ")
    assert "inactive" in vpool(tmp_path, "pool-info", "f").stdout


def test_fs_pool_failures(tmp_path, loopdev):
    define(tmp_path, loopdev, fmt="ext4")
    p = vpool(tmp_path, "pool-start", "f")        # nothing to mount yet
    assert p.returncode == 1
    assert p.stderr.startswith("error: Failed to start pool f\nerror: ")
    assert "mount" in p.stderr
    p = vpool(tmp_path, "pool-build", "f", "--overwrite", "--no-overwrite")
    assert p.returncode == 1
    ok(vpool(tmp_path, "pool-undefine", "f"))
    define(tmp_path, str(tmp_path / "missing"), name="g")
    p = vpool(tmp_path, "pool-start", "g")
    assert p.returncode == 1 and "cannot access source device" in p.stderr
    p = vpool(tmp_path, "pool-info", "g")
    assert "inactive" in p.stdout


def test_fs_pool_full(tmp_path, loopdev):
    """Volumes that do not fit fail and leave nothing listed."""
    define(tmp_path, loopdev)
    ok(vpool(tmp_path, "pool-build", "f"))
    ok(vpool(tmp_path, "pool-start", "f"))
    before = vpool(tmp_path, "vol-list", "f").stdout
    p = vpool(tmp_path, "vol-create-as", "f", "big.raw", "200M")
    assert p.returncode == 1
    assert p.stderr.startswith("error: Failed to create vol big.raw\nerror: ")
    p = vpool(tmp_path, "vol-clone", "--pool", "f", "nonexist", "x")
    assert p.returncode == 1
    assert vpool(tmp_path, "vol-list", "f").stdout == before
    ok(vpool(tmp_path, "vol-create-as", "f", "u.raw", "1M", "--allocation", "0"))
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(b"\1" * (80 << 20))
    p = vpool(tmp_path, "vol-upload", "--pool", "f", "u.raw", big)
    assert p.returncode == 1
    assert p.stderr.startswith("error: cannot upload to volume u.raw\n")
    ok(vpool(tmp_path, "pool-destroy", "f"))


def test_autostart_command(tmp_path):
    xml = tmp_path / "p.xml"
    for n in ("a", "b"):
        xml.write_text("<pool type='dir'><name>%s</name><target><path>%s</path></target>"
                       "</pool>" % (n, tmp_path / n))
        ok(vpool(tmp_path, "pool-define", xml))
        ok(vpool(tmp_path, "pool-build", n))
    ok(vpool(tmp_path, "pool-autostart", "b"), "Pool b marked as autostarted")
    ok(vpool(tmp_path, "autostart"), "Pool b started")
    p = vpool(tmp_path, "autostart")            # nothing left to start
    assert (p.returncode, p.stdout, p.stderr) == (0, "\n", "")
    p = vpool(tmp_path, "pool-list", "--all", "--name")
    assert p.stdout == "%-20s\n%-20s\n\n" % ("a", "b")
    assert vpool(tmp_path, "pool-list", "--name").stdout == "%-20s\n\n" % "b"
    ok(vpool(tmp_path, "pool-destroy", "b"))
    os.rmdir(tmp_path / "b")
    p = vpool(tmp_path, "autostart")
    assert p.returncode == 1
    assert p.stderr.startswith("error: Failed to autostart storage pool 'b'\n")


def test_uris(tmp_path):
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "c"), XDG_RUNTIME_DIR=str(tmp_path / "r"))
    env.pop("VDISK_POOL_CONFIG_DIR", None)
    env.pop("VDISK_POOL_RUN_DIR", None)
    xml = tmp_path / "p.xml"
    xml.write_text("<pool type='dir'><name>s</name><target><path>/x</path></target></pool>")
    p = subprocess.run([VDISK_POOL, "-c", "vdisk:///session", "pool-define", xml], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert os.path.exists(tmp_path / "c" / "vdisk" / "storage" / "s.xml")
    p = subprocess.run([VDISK_POOL, "-c", "foo:///bar", "pool-list"], env=env,
                       capture_output=True, text=True)
    assert (p.returncode, p.stdout, p.stderr) == (
        1, "\n", "error: failed to connect to the hypervisor\n"
        "error: no connection driver available for foo:///bar\n")
