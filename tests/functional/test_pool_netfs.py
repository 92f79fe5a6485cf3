# SPDX-License-Identifier: BSD-3-Clause
"""netfs pools: the definition against libvirt (define, dumpxml, info, list,
build and the errors of a bad source, on an inactive pool: a session
libvirtd cannot mount), and a glusterfs pool mounted for real (FUSE) on a
volume of the glusterd the tests start on loopback (gluster_server.py):
start mounts host:/volume on the target, volumes are files on the gluster
brick, destroy unmounts.  nfs and cifs need kernel file systems this
machine may not have: those tests skip then, saying so."""
import os
import shutil
import subprocess
import uuid

import pytest

import gluster_server
from pool_helpers import peer, mask, VDISK_POOL  # noqa: F401

NETFS_XML = """<pool type='netfs'>
  <name>{name}</name>
  <source>
    <host name='{host}'/>
    <dir path='{dir}'/>
    {extra}
  </source>
  <target>
    <path>{target}</path>
  </target>
</pool>
"""


def mounts(path):
    """(source, fstype) of the mount on path, or None."""
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if mnt == path:
                return dev, fstype
    return None


def kernel_has(fs):
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == fs for line in f if line.strip())


class Pair:
    def __init__(self, peer):
        self.peer = peer
        self.dir = peer.scratch()

    def run(self, side, args):
        fn = self.peer.virsh if side == "l" else self.peer.vpool
        root = os.path.join(self.dir, side)
        p = fn(*[a.replace("@", root) for a in args])
        return p.returncode, mask(p.stdout, (root, "@")), mask(p.stderr, (root, "@"))

    def same(self, *args):
        virsh, vdisk = (self.run(s, args) for s in ("l", "v"))
        assert vdisk == virsh, "%s\nvirsh: %r\nvdisk: %r" % (args, virsh, vdisk)
        return vdisk

    def xml(self, name, text):
        for side in ("l", "v"):
            root = os.path.join(self.dir, side)
            self.peer.write(os.path.join(root, name), text.replace("@", root))
        return "@/" + name


@pytest.mark.parametrize("fmt,extra", [
    ("glusterfs", ""), ("nfs", "<protocol ver='4'/>"), ("cifs", ""), ("auto", ""),
])
def test_inactive_netfs_pool_same_as_virsh(peer, fmt, extra):
    pr = Pair(peer)
    name = "n" + os.path.basename(pr.dir)
    xml = NETFS_XML.format(name=name, host="h" + name, dir="/export", target="@/mnt",
                           extra="<format type='%s'/>%s" % (fmt, extra))
    pr.same("pool-define", pr.xml("n.xml", xml))
    pr.same("pool-dumpxml", name)
    pr.same("pool-dumpxml", "--inactive", name)
    pr.same("pool-info", name)
    pr.same("pool-list", "--all", "--type", "netfs", "--name")
    pr.same("pool-build", name)
    assert os.path.isdir(os.path.join(pr.dir, "v", "mnt"))
    pr.same("pool-undefine", name)


@pytest.mark.parametrize("source", [
    "<host name='h'/>",
    "<dir path='/e'/>",
    "<host name='h'/><dir path='/e'/><format type='xfs'/>",
    "<host name='h'/><dir path='/e'/><format type='glusterfs'/><protocol ver='4'/>",
])
def test_bad_netfs_source_same_as_virsh(peer, source):
    pr = Pair(peer)
    xml = ("<pool type='netfs'><name>bad%s</name><source>%s</source>"
           "<target><path>/x</path></target></pool>" % (os.path.basename(pr.dir), source))
    pr.same("pool-define", pr.xml("bad.xml", xml))


def test_same_source_twice_same_as_virsh(peer):
    pr = Pair(peer)
    tag = os.path.basename(pr.dir)
    for n in ("a", "b"):
        pr.same("pool-define", pr.xml(n + ".xml", NETFS_XML.format(
            name=n + tag, host="h" + tag, dir="/e", target="@/" + n,
            extra="<format type='nfs'/>")))
    pr.same("pool-undefine", "a" + tag)


def test_define_as_netfs_same_as_virsh(peer):
    pr = Pair(peer)
    name = "d" + os.path.basename(pr.dir)
    pr.same("pool-define-as", name, "netfs", "--source-host", "h" + name, "--source-path",
            "/vol", "--source-format", "nfs", "--source-protocol-ver", "3", "--target", "@/m")
    pr.same("pool-dumpxml", name)
    pr.same("pool-undefine", name)


def vpool(tmp_path, *args):
    env = dict(os.environ, VDISK_POOL_CONFIG_DIR=str(tmp_path / "cfg"),
               VDISK_POOL_RUN_DIR=str(tmp_path / "run"))
    return subprocess.run([VDISK_POOL] + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=120)


def ok(p, out=None):
    assert p.returncode == 0, p.stderr
    if out is not None:
        assert p.stdout == out + "\n\n"
    return p


@pytest.fixture(scope="module")
def gluster_volume():
    """A gluster volume of its own (other tests use the shared one)."""
    if os.geteuid() != 0 or not shutil.which("mount.glusterfs", path="/usr/sbin:/sbin"):
        pytest.skip("needs root and mount.glusterfs")
    if not os.path.exists("/dev/fuse") or not kernel_has("fuse"):
        pytest.skip("needs FUSE (/dev/fuse)")
    try:
        s = gluster_server.Shared()
    except gluster_server.Unavailable as e:
        pytest.skip("glusterd cannot start: %s" % e)
    vol = "vdpool" + uuid.uuid4().hex[:6]
    try:
        brick = s.server.create_volume(vol)
        yield gluster_server.brick_host(), vol, brick
    finally:
        s.server.delete_volume(vol)
        s.release()


def test_glusterfs_pool_mounted(tmp_path, gluster_volume):
    host, vol, brick = gluster_volume
    target = str(tmp_path / "mnt")
    (tmp_path / "g.xml").write_text(NETFS_XML.format(
        name="g", host=host, dir="/" + vol, target=target,
        extra="<format type='glusterfs'/>"))
    ok(vpool(tmp_path, "pool-define", tmp_path / "g.xml"))
    ok(vpool(tmp_path, "pool-build", "g"), "Pool g built")
    try:
        ok(vpool(tmp_path, "pool-start", "g"), "Pool g started")
        assert mounts(target) == ("%s:/%s" % (host, vol), "fuse.glusterfs")
        ok(vpool(tmp_path, "vol-create-as", "g", "a.qcow2", "8M", "--format", "qcow2"),
           "Vol a.qcow2 created")
        ok(vpool(tmp_path, "vol-create-as", "g", "b.raw", "1M"), "Vol b.raw created")
        # the volumes are files on the gluster brick
        assert sorted(n for n in os.listdir(brick) if not n.startswith(".")) == \
            ["a.qcow2", "b.raw"]
        info = subprocess.run(["qemu-img", "info", "--output=json",
                               os.path.join(target, "a.qcow2")],
                              capture_output=True, text=True, check=True)
        assert '"format": "qcow2"' in info.stdout and '"virtual-size": 8388608' in info.stdout
        ok(vpool(tmp_path, "pool-refresh", "g"))
        lst = ok(vpool(tmp_path, "vol-list", "g")).stdout
        assert "a.qcow2" in lst and "b.raw" in lst
        ok(vpool(tmp_path, "pool-destroy", "g"), "Pool g destroyed")
        assert mounts(target) is None
        assert os.listdir(target) == []
        ok(vpool(tmp_path, "pool-start", "g"), "Pool g started")
        assert "a.qcow2" in ok(vpool(tmp_path, "vol-list", "g")).stdout
        ok(vpool(tmp_path, "vol-delete", "a.qcow2", "--pool", "g"))
        assert not os.path.exists(os.path.join(brick, "a.qcow2"))
        ok(vpool(tmp_path, "pool-destroy", "g"), "Pool g destroyed")
    finally:
        if mounts(target):
            subprocess.run(["umount", target])


def test_glusterfs_pool_bad_volume(tmp_path, gluster_volume):
    host = gluster_volume[0]
    target = str(tmp_path / "mnt")
    (tmp_path / "g.xml").write_text(NETFS_XML.format(
        name="g", host=host, dir="/nosuchvolume", target=target,
        extra="<format type='glusterfs'/>"))
    ok(vpool(tmp_path, "pool-define", tmp_path / "g.xml"))
    ok(vpool(tmp_path, "pool-build", "g"))
    try:
        p = vpool(tmp_path, "pool-start", "g")
        assert p.returncode == 1 and p.stderr.startswith(
            "error: Failed to start pool g\nerror: internal error: Child process (mount -t "
            "glusterfs %s:/nosuchvolume %s -o direct-io-mode=1) unexpected exit status"
            % (host, target))
        assert mounts(target) is None
        assert "inactive" in ok(vpool(tmp_path, "pool-info", "g")).stdout
    finally:
        if mounts(target):
            subprocess.run(["umount", target])


def test_failed_mount_left_mounted_is_undone(tmp_path):
    """A mount helper that fails but leaves its file system mounted (as
    mount.glusterfs can, when its own unmount races its daemon): the start
    fails with the mount's error and nothing stays mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mount").write_text("#!/bin/sh\n%s -t tmpfs vdtest \"$4\" || exit 99\nexit 32\n"
                                % shutil.which("mount"))
    (fake / "mount").chmod(0o755)
    target = str(tmp_path / "mnt")
    (tmp_path / "g.xml").write_text(NETFS_XML.format(
        name="g", host="localhost", dir="/v", target=target,
        extra="<format type='glusterfs'/>"))
    ok(vpool(tmp_path, "pool-define", tmp_path / "g.xml"))
    ok(vpool(tmp_path, "pool-build", "g"))
    env = dict(os.environ, VDISK_POOL_CONFIG_DIR=str(tmp_path / "cfg"),
               VDISK_POOL_RUN_DIR=str(tmp_path / "run"),
               PATH="%s:%s" % (fake, os.environ.get("PATH", "")))
    try:
        p = subprocess.run([VDISK_POOL, "pool-start", "g"], env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 1 and p.stderr.startswith(
            "error: Failed to start pool g\nerror: internal error: Child process (mount -t "
            "glusterfs localhost:/v %s -o direct-io-mode=1) unexpected exit status 32"
            % target), p.stderr
        assert mounts(target) is None
        assert "inactive" in ok(vpool(tmp_path, "pool-info", "g")).stdout
    finally:
        if mounts(target):
            subprocess.run(["umount", target])


@pytest.mark.parametrize("fs", ["nfs", "cifs"])
def test_kernel_network_fs(tmp_path, fs):
    if not kernel_has(fs) and subprocess.run(["modprobe", "-n", fs],
                                             capture_output=True).returncode != 0:
        pytest.skip("this kernel has no %s file system (module not available): "
                    "%s pools cannot be mounted here" % (fs, fs))
    pytest.skip("an %s server is not started by these tests" % fs)
